//! Settings, from command-line flags or the environment (flags win). Secrets never have
//! defaults here: they come from the environment only.

use std::net::SocketAddr;

/// How `yba serve` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Where records live: `sqlite://path/to/file.db` (the embedded default) or
    /// `postgres://user@host/db` (production).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/yba.db")]
    pub database_url: String,

    /// Address to listen on, `host:port`.
    #[arg(long, env = "YBA_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// The public FHIR base URL (e.g. `https://ehr.example.vn/fhir`). Without it, each request's
    /// own scheme and host are used.
    #[arg(long, env = "YBA_BASE_URL")]
    pub base_url: Option<String>,

    /// Largest request body accepted, in bytes (`16M`, `512K` and `1G` are understood).
    #[arg(long, env = "YBA_MAX_BODY", default_value = "32M", value_parser = parse_size)]
    pub max_body: usize,

    /// Database connections in the pool.
    #[arg(long, env = "YBA_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,

    /// SQLite `synchronous` mode: `full` (every commit survives power loss) or `normal`.
    #[arg(long, env = "YBA_SQLITE_SYNCHRONOUS", default_value = "full")]
    pub sqlite_synchronous: String,

    /// HTTP worker threads (default: one per CPU core).
    #[arg(long, env = "YBA_WORKERS")]
    pub workers: Option<usize>,

    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "YBA_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,

    /// Longest a search statement may run on PostgreSQL before the search is refused as too
    /// costly: `10s`, `500ms`, or seconds (`10`); `0`: no limit.
    #[arg(long = "search-timeout", env = "YBA_SEARCH_TIMEOUT", default_value = "10s", value_parser = parse_millis)]
    pub search_timeout_ms: u64,

    /// Profiles every resource of a type must meet on write, as `Type=profile-url` pairs separated
    /// by commas; `none` for no compulsory profile.
    #[arg(long = "always-profile", env = "YBA_ALWAYS_PROFILE",
          default_value = "Patient=https://yba.vn/fhir/StructureDefinition/vn-patient",
          value_parser = parse_always_profile)]
    pub always_profile: AlwaysProfile,

    /// Legacy imports: a citizen ID that disagrees with the Patient's birth date or gender is
    /// accepted with a warning instead of refused.
    #[arg(long, env = "YBA_LENIENT_CITIZEN_ID", default_value_t = false)]
    pub lenient_citizen_id: bool,

    /// URL prefixes `$import` may fetch NDJSON from, separated by commas (none: `$import` takes
    /// uploads only), e.g. `https://his.bv-a.vn/export/`.
    #[arg(long = "import-allow", env = "YBA_IMPORT_ALLOW", value_delimiter = ',')]
    pub import_allow: Vec<String>,

    /// `off` turns sign-in, scopes, the access policy and the audit trail off: for local
    /// development only, never with real records.
    #[arg(long, env = "YBA_AUTH", default_value = "on", value_parser = parse_on_off)]
    pub auth: bool,

    /// Keys that sign access tokens, `kid:base64-secret` (at least 32 bytes) separated by commas;
    /// the first signs, the others still verify (rotation). Unset: a key made up at start, so
    /// tokens end with the process.
    #[arg(long = "token-keys", env = "YBA_TOKEN_KEYS", hide_env_values = true)]
    pub token_keys: Option<Secret>,

    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "YBA_ACCESS_TOKEN_TTL", default_value_t = 300)]
    pub access_token_ttl: u64,

    /// Lifetime of a person's sign-in (their refresh tokens), in seconds.
    #[arg(long, env = "YBA_SESSION_TTL", default_value_t = 8 * 3600)]
    pub session_ttl: u64,

    /// Requests a second each signed-in party (a person, a hospital system) may make on
    /// average, with bursts of twice that; beyond it, 429 with Retry-After. 0: no limit.
    #[arg(long, env = "YBA_RATE_LIMIT", default_value_t = 1000)]
    pub rate_limit: u32,

    /// Days an e-prescription may be dispensed after issue (TT 26/2025/TT-BYT Điều 12 khoản 9
    /// điểm b: 5). After that it is expired for dispensing.
    #[arg(long, env = "YBA_PRESCRIPTION_VALID_DAYS", default_value_t = crate::prescribing::DEFAULT_VALID_DAYS)]
    pub prescription_valid_days: i64,

    /// Seconds a join token (for a consultation's signaling socket) lives.
    #[arg(long, env = "YBA_JOIN_TOKEN_TTL", default_value_t = crate::telehealth::join::TTL)]
    pub join_token_ttl: u64,

    /// The address the media relay's host candidates are on: an interface address, or
    /// `0.0.0.0` for every interface.
    #[arg(long, env = "YBA_RTC_IP", default_value = "0.0.0.0")]
    pub rtc_ip: std::net::IpAddr,

    /// UDP ports the media relay may use, `first-last` (one per participant); unset: any.
    #[arg(long, env = "YBA_RTC_UDP_PORTS", value_parser = parse_port_range)]
    pub rtc_udp_ports: Option<(u16, u16)>,

    /// ICE-TCP: the relay also takes media over TCP on the same port numbers (passive
    /// candidates, RFC 6544), for stations whose firewall lets no UDP through.
    #[arg(long, env = "YBA_RTC_TCP", default_value_t = true, action = clap::ArgAction::Set)]
    pub rtc_tcp: bool,

    /// The public address to advertise behind a 1:1 NAT (instead of the private one).
    #[arg(long, env = "YBA_RTC_PUBLIC_IP")]
    pub rtc_public_ip: Option<std::net::IpAddr>,

    /// STUN/TURN servers handed to participants, comma-separated (`stun:host:3478`,
    /// `turn:host:3478?transport=udp`, `turns:host:443?transport=tcp`).
    #[arg(long, env = "YBA_ICE_SERVERS", value_delimiter = ',')]
    pub ice_servers: Vec<String>,

    /// coturn's `static-auth-secret`: TURN credentials are minted per join from it.
    #[arg(long, env = "YBA_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<Secret>,

    /// Participants a consultation's room holds at most.
    #[arg(long, env = "YBA_ROOM_MAX_PARTICIPANTS", default_value_t = 6)]
    pub room_max_participants: usize,

    /// Rooms this node holds at most.
    #[arg(long, env = "YBA_MAX_ROOMS", default_value_t = 100)]
    pub max_rooms: usize,

    /// Seconds a room with nobody in it is kept.
    #[arg(long, env = "YBA_ROOM_EMPTY_TIMEOUT", default_value_t = 300)]
    pub room_empty_timeout: u64,

    /// Seconds a participant whose socket dropped keeps its place (and its media) to resume.
    #[arg(long, env = "YBA_SIGNAL_GRACE", default_value_t = 30)]
    pub signal_grace: u64,

    /// Seconds a signaling socket may stay silent before it counts as dropped.
    #[arg(long, env = "YBA_SIGNAL_IDLE", default_value_t = 30)]
    pub signal_idle: u64,

    /// Browser origins allowed to call the API (CORS), separated by commas; none by default.
    #[arg(long, env = "YBA_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Take the caller's address from `X-Forwarded-For` (behind a TLS-terminating proxy you run).
    #[arg(long, env = "YBA_TRUST_FORWARDED", default_value_t = false)]
    pub trust_forwarded: bool,

    /// Commune node: the FHIR base of the upstream server (the provincial or central yba) this
    /// one syncs with, e.g. `https://ehr.soyte.vn/fhir`. Unset: not a node.
    #[arg(long, env = "YBA_UPSTREAM")]
    pub upstream: Option<String>,

    /// The station's OAuth client id at upstream (a hospital system of the station's
    /// organization, `system/*.cruds`).
    #[arg(long, env = "YBA_UPSTREAM_CLIENT_ID")]
    pub upstream_client_id: Option<String>,

    /// The station's client secret at upstream (environment only).
    #[arg(skip = std::env::var("YBA_UPSTREAM_CLIENT_SECRET").ok().map(Secret))]
    pub upstream_client_secret: Option<Secret>,

    /// Time between sync rounds while the link is up: `30s`, `500ms`, or seconds.
    #[arg(long = "sync-interval", env = "YBA_SYNC_INTERVAL", default_value = "30s", value_parser = parse_millis)]
    pub sync_interval_ms: u64,

    /// Log one line per request (method, route, status, time; never query strings or bodies).
    #[arg(long, env = "YBA_ACCESS_LOG", default_value_t = false)]
    pub access_log: bool,
}

impl Config {
    /// The settings for a server on `database_url` listening on an ephemeral local port.
    pub fn local(database_url: impl Into<String>) -> Config {
        Config {
            database_url: database_url.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            max_body: 32 * 1024 * 1024,
            db_pool: 8,
            sqlite_synchronous: "full".into(),
            workers: Some(2),
            shutdown_timeout: 30,
            search_timeout_ms: 10_000,
            access_log: false,
            always_profile: AlwaysProfile(crate::fhir::conformance::Rules::default().always),
            lenient_citizen_id: false,
            import_allow: Vec::new(),
            auth: true,
            token_keys: None,
            access_token_ttl: 300,
            session_ttl: 8 * 3600,
            cors_origins: Vec::new(),
            rate_limit: 1000,
            join_token_ttl: crate::telehealth::join::TTL,
            rtc_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            rtc_udp_ports: None,
            rtc_tcp: true,
            rtc_public_ip: None,
            ice_servers: Vec::new(),
            turn_secret: None,
            room_max_participants: 6,
            max_rooms: 100,
            room_empty_timeout: 300,
            signal_grace: 30,
            signal_idle: 30,
            prescription_valid_days: crate::prescribing::DEFAULT_VALID_DAYS,
            trust_forwarded: false,
            upstream: None,
            upstream_client_id: None,
            upstream_client_secret: None,
            sync_interval_ms: 30_000,
        }
    }

    /// The upstream of a commune node; None when this server is not one.
    pub fn upstream(&self) -> Result<Option<crate::sync::upstream::UpstreamConfig>, String> {
        let Some(base) = self
            .upstream
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())
        else {
            return Ok(None);
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("YBA_UPSTREAM '{base}' is not an http(s) URL"));
        }
        let (Some(id), Some(secret)) = (&self.upstream_client_id, &self.upstream_client_secret)
        else {
            return Err(
                "YBA_UPSTREAM needs the station's client: YBA_UPSTREAM_CLIENT_ID and YBA_UPSTREAM_CLIENT_SECRET"
                    .into(),
            );
        };
        Ok(Some(crate::sync::upstream::UpstreamConfig {
            base: base.trim_end_matches('/').to_string(),
            client_id: id.clone(),
            client_secret: secret.0.clone(),
        }))
    }

    /// The conformance checks on write.
    pub fn rules(&self) -> crate::fhir::conformance::Rules {
        crate::fhir::conformance::Rules {
            always: self.always_profile.0.clone(),
            lenient_citizen_id: self.lenient_citizen_id,
        }
    }

    pub fn store(&self) -> crate::store::StoreConfig {
        crate::store::StoreConfig {
            url: self.database_url.clone(),
            pool_size: self.db_pool,
            sqlite_synchronous: self.sqlite_synchronous.clone(),
            search_timeout_ms: self.search_timeout_ms,
        }
    }
}

/// `(type, profile url)` pairs of compulsory profiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlwaysProfile(pub Vec<(String, String)>);

/// Parses `Patient=https://...,Organization=https://...` (or `none`).
pub fn parse_always_profile(s: &str) -> Result<AlwaysProfile, String> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(AlwaysProfile(Vec::new()));
    }
    s.split(',')
        .map(|pair| match pair.trim().split_once('=') {
            Some((t, url)) if crate::fhir::schema::R4.resource_type(t.trim()).is_some() => {
                Ok((t.trim().to_string(), url.trim().to_string()))
            }
            _ => Err(format!(
                "'{pair}' is not Type=profile-url with a FHIR R4 resource type"
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(AlwaysProfile)
}

/// Parses a duration into milliseconds: `250ms`, `10s`, or bare seconds (`10`).
pub fn parse_millis(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        (s, 1000)
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n.saturating_mul(mult))
        .map_err(|_| format!("'{s}' is not a duration: give 10s, 500ms or a number of seconds"))
}

/// Parses a byte size: `1048576`, `512K`, `16M`, `1G` (binary multiples).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1024),
        Some((i, 'M' | 'm')) => (&s[..i], 1024 * 1024),
        Some((i, 'G' | 'g')) => (&s[..i], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    num.trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("'{s}' is not a size like 16M"))
}

/// Parses a UDP port range `first-last`.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("'{s}' is not a port range like 50000-50999");
    let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || b < a {
        return Err(bad());
    }
    Ok((a, b))
}

/// `on`/`off` (also `true`/`false`, `1`/`0`).
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        other => Err(format!("'{other}' is neither on nor off")),
    }
}

/// A secret setting: never printed.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}
