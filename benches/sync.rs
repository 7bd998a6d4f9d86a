//! Commune node sync over a slow link. A station's `yba` on SQLite (the node) and the central
//! `yba` on PostgreSQL each get 10,000 new resources with `yba import` (per side 500 Patients,
//! managed by the station's Organization `tram-a`, and 9,500 vital-sign Observations of them; all
//! with UUID ids; `tram-a` itself, the same on both sides). Then the node runs `yba sync --once`
//! (pull from the central, push its own) through a TCP proxy in this process that models the
//! link: 1 Mbit/s each way (a token bucket, 16 KB burst) and 200 ms one-way delay each way, as
//! `tc netem delay 200ms rate 1mbit` on each side would (400 ms round trip; a new connection
//! costs a round trip for its handshake).
//!
//! Measured: the round's wall time, and the bytes each way at the TCP payload level (HTTP
//! headers included; TCP/IP headers and ACKs not), against the reference: the gzip size (flate2,
//! default level) of the NDJSON of the resources that had to cross, per side. Target: wire
//! bytes ≤ 1.2× the reference. Then a second round with nothing new, and a check that both
//! databases hold the same 20,001 resources, equal (but for `meta`) to what was generated.
//!
//!     cargo bench --bench sync [-- --resources 10000 --patients 500 --rate 125000 --delay-ms 200
//!                                  --burst 16384 --timeout 900 --keep]
//!     cargo bench --bench sync -- --proxy-test [--mb 1]   # the link alone, `yba serve` behind it
//!
//! `--resources` and `--patients` are per side; `--rate` is bytes per second each way;
//! `--keep` leaves the temporary directory (the node's database, the NDJSON) and the PostgreSQL
//! schema in place and prints where they are. YBA_BENCH_POSTGRES_URL overrides
//! postgres://postgres@127.0.0.1:5432/test; RUST_LOG is passed to the `yba` processes (default
//! `warn`), whose stderr is this one's.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Flags, Rng};
use diesel::{Connection, RunQueryDsl};
use link::{ThrottledLink, Wire};
use serde_json::{Value, json};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const CITIZEN_ID: &str = "http://fhir.ehealth.gov.vn/core/sid/citizen_id";
const ORG: &str = "Organization/tram-a";
const CLIENT_ID: &str = "station-a";
/// The types the bench writes (and counts).
const TYPES: [&str; 3] = ["Organization", "Patient", "Observation"];
/// The target: bytes on the wire at most this many times the gzipped resources.
const TARGET: f64 = 1.2;

struct Args {
    resources: usize,
    patients: usize,
    rate: u64,
    delay: Duration,
    burst: u64,
    timeout: Duration,
    keep: bool,
    proxy_test: bool,
    mb: f64,
}

fn args() -> Args {
    let f = Flags::parse();
    let resources = f.num("resources", 10_000usize).max(1);
    Args {
        resources,
        patients: f.num("patients", 500usize).clamp(1, resources),
        rate: f.num("rate", 125_000u64).max(1),
        delay: Duration::from_millis(f.num("delay-ms", 200u64)),
        burst: f.num("burst", 16_384u64).max(1),
        timeout: Duration::from_secs(f.num("timeout", 900u64)),
        keep: f.on("keep"),
        proxy_test: f.on("proxy-test"),
        mb: f.num("mb", 1.0f64),
    }
}

/// The throttled link: a TCP proxy that forwards to one upstream address and, each way, lets
/// through at most `rate` bytes a second (a token bucket shared by all connections, as one link
/// is) and delivers every chunk `delay` after it went through the bucket, in order. A new
/// connection starts relaying two delays after it is accepted (the handshake's round trip).
/// Reusable: copy the module.
mod link {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// The most a single read takes off a socket: the grain of the token bucket.
    const CHUNK: usize = 4096;

    /// Bytes through the link so far (TCP payload), and connections opened.
    #[derive(Default)]
    pub struct Counters {
        up: AtomicU64,
        down: AtomicU64,
        connections: AtomicU64,
    }

    impl Counters {
        pub fn get(&self) -> Wire {
            Wire {
                up: self.up.load(Relaxed),
                down: self.down.load(Relaxed),
                connections: self.connections.load(Relaxed),
            }
        }
    }

    /// A reading of [`Counters`]: `up` is client to upstream, `down` upstream to client.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Wire {
        pub up: u64,
        pub down: u64,
        pub connections: u64,
    }

    impl std::ops::Sub for Wire {
        type Output = Wire;
        fn sub(self, o: Wire) -> Wire {
            Wire {
                up: self.up - o.up,
                down: self.down - o.down,
                connections: self.connections - o.connections,
            }
        }
    }

    /// A token bucket that lends: a taker that finds it short waits until its debt is paid,
    /// and takers after it queue behind that debt, so the rate holds across connections.
    struct Bucket {
        rate: f64,
        burst: f64,
        state: Mutex<(f64, Instant)>,
    }

    impl Bucket {
        fn new(rate: u64, burst: u64) -> Bucket {
            Bucket {
                rate: rate as f64,
                burst: burst as f64,
                state: Mutex::new((burst as f64, Instant::now())),
            }
        }

        /// Waits until `n` bytes may go.
        async fn take(&self, n: usize) {
            let wait = {
                let mut s = self.state.lock().unwrap();
                let now = Instant::now();
                let tokens = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate)
                    .min(self.burst)
                    - n as f64;
                *s = (tokens, now);
                if tokens < 0.0 {
                    Duration::from_secs_f64(-tokens / self.rate)
                } else {
                    Duration::ZERO
                }
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    pub struct ThrottledLink;

    impl ThrottledLink {
        /// Listens on a free port of 127.0.0.1 and forwards to `upstream`; returns the address
        /// to connect to and the link's counters. Runs until the runtime stops.
        pub async fn start(
            upstream: SocketAddr,
            rate_bytes_per_s: u64,
            delay: Duration,
            burst: u64,
        ) -> std::io::Result<(SocketAddr, Arc<Counters>)> {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let counters = Arc::new(Counters::default());
            let up = Arc::new(Bucket::new(rate_bytes_per_s, burst));
            let down = Arc::new(Bucket::new(rate_bytes_per_s, burst));
            let c = counters.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    c.connections.fetch_add(1, Relaxed);
                    let (c, up, down) = (c.clone(), up.clone(), down.clone());
                    tokio::spawn(async move {
                        // SYN, SYN-ACK: the client's first bytes leave a round trip later.
                        tokio::time::sleep(delay * 2).await;
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        client.set_nodelay(true).ok();
                        server.set_nodelay(true).ok();
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let c2 = c.clone();
                        let to_server = tokio::spawn(async move {
                            pump(cr, sw, &up, delay, |n| c2.up.fetch_add(n, Relaxed)).await
                        });
                        pump(sr, cw, &down, delay, |n| c.down.fetch_add(n, Relaxed)).await;
                        let _ = to_server.await;
                    });
                }
            });
            Ok((addr, counters))
        }
    }

    /// One direction of one connection: reads, waits for the bucket, counts, and hands the
    /// chunk to a writer that delivers it `delay` later (chunks keep their order).
    async fn pump(
        mut from: OwnedReadHalf,
        mut to: OwnedWriteHalf,
        bucket: &Bucket,
        delay: Duration,
        count: impl Fn(u64) -> u64,
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let writer = tokio::spawn(async move {
            while let Some((due, chunk)) = rx.recv().await {
                tokio::time::sleep_until(due.into()).await;
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = to.shutdown().await;
        });
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            bucket.take(n).await;
            count(n as u64);
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
        drop(tx);
        let _ = writer.await;
    }
}

// ---------------------------------------------------------------------------------------------
// The data.

const FAMILIES: [&str; 10] = [
    "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng",
];
const MEN: [&str; 6] = [
    "Văn An",
    "Văn Bình",
    "Minh Cường",
    "Đức Dũng",
    "Quốc Huy",
    "Hữu Phúc",
];
const WOMEN: [&str; 6] = [
    "Thị Hoa",
    "Thị Lan",
    "Thị Mai",
    "Ngọc Anh",
    "Thu Hà",
    "Kim Liên",
];

/// The station, the same on both sides.
fn organization() -> Value {
    json!({"resourceType": "Organization", "id": "tram-a", "active": true,
        "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov", "display": "Healthcare Provider"}]}],
        "name": "Trạm Y tế xã A",
        "telecom": [{"system": "phone", "value": "02343812345", "use": "work"}],
        "address": [{"use": "work", "line": ["1 Lê Lợi"], "city": "Huế", "district": "Phú Hội", "country": "VN"}]})
}

/// Person `k` of `side` (0 central, 1 node): born in Thừa Thiên Huế (046), with a citizen ID
/// that agrees with their birth year and sex and that no one else on either side holds.
fn patient(id: &str, side: u64, k: u64) -> Value {
    let female = k % 2 == 1;
    let yy = 40 + (k * 7) % 60;
    let serial = side * 500_000 + k % 500_000;
    let family = FAMILIES[(k / 2 % 10) as usize];
    let given = if female { WOMEN } else { MEN }[(k / 20 % 6) as usize];
    let given: Vec<&str> = given.split(' ').collect();
    json!({
        "resourceType": "Patient", "id": id,
        "identifier": [{"system": CITIZEN_ID, "value": format!("046{}{yy:02}{serial:06}", u8::from(female))}],
        "active": true,
        "name": [{"use": "official", "family": family, "given": given}],
        "telecom": [{"system": "phone", "value": format!("09{:08}", (side * 50_000_000 + k * 7_919) % 100_000_000), "use": "mobile"}],
        "gender": if female { "female" } else { "male" },
        "birthDate": format!("19{yy:02}-{:02}-{:02}", 1 + k % 12, 1 + k % 28),
        "address": [{"use": "home", "line": [format!("{} Lê Lợi", 1 + k % 200)], "city": "Huế", "district": "Phú Hội", "country": "VN"}],
        "managingOrganization": {"reference": ORG}
    })
}

/// Vital signs: LOINC code, display, UCUM unit, base value, spread.
const VITALS: [(&str, &str, &str, u64, usize); 5] = [
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 70),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 40),
    ("8867-4", "Heart rate", "/min", 55, 60),
    ("29463-7", "Body weight", "kg", 40, 50),
    ("8310-5", "Body temperature", "Cel", 36, 4),
];

/// Observation `o` of the patient `subject`.
fn observation(id: &str, subject: &str, o: u64, rng: &mut Rng) -> Value {
    let (code, display, unit, base, spread) = VITALS[(o % 5) as usize];
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": {"reference": format!("Patient/{subject}")},
        "effectiveDateTime": format!("2026-{:02}-{:02}T{:02}:{:02}:00+07:00", 1 + o % 11, 1 + rng.below(28), 7 + rng.below(10), rng.below(60)),
        "performer": [{"reference": ORG}],
        "valueQuantity": {"value": base + rng.below(spread) as u64, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
}

/// The new resources of one side: `patients` Patients, then Observations of them, `resources`
/// in all.
fn generate(side: u64, resources: usize, patients: usize) -> Vec<Value> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (side + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let ids: Vec<String> = (0..patients)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let mut out: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(k, id)| patient(id, side, k as u64))
        .collect();
    for o in 0..(resources - patients) as u64 {
        let id = uuid::Uuid::new_v4().to_string();
        let subject = &ids[o as usize % patients];
        out.push(observation(&id, subject, o, &mut rng));
    }
    out
}

fn ndjson(resources: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in resources {
        serde_json::to_writer(&mut out, r).expect("JSON");
        out.push(b'\n');
    }
    out
}

fn gzip_len(data: &[u8]) -> u64 {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip").len() as u64
}

fn key(v: &Value) -> (String, String) {
    (
        v["resourceType"].as_str().unwrap_or_default().to_string(),
        v["id"].as_str().unwrap_or_default().to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// The processes.

fn yba() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_yba"));
    c.env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    c
}

/// Runs a `yba` command to completion; panics with its output if it fails. Returns stdout.
fn run(mut cmd: std::process::Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number before `label` in `line` (`... 10001 resources written ...`).
fn count_before(line: &str, label: &str) -> Option<u64> {
    let at = line.find(label)?;
    line[..at].split_whitespace().last()?.parse().ok()
}

fn import(url: &str, files: &[&Path], expect: usize, what: &str) -> Duration {
    let mut cmd = yba();
    cmd.arg("import").args(files).env("DATABASE_URL", url);
    let t = Instant::now();
    let out = run(cmd, what);
    let took = t.elapsed();
    let line = out
        .lines()
        .find(|l| l.starts_with("imported in"))
        .unwrap_or_else(|| panic!("{what}: no summary line:\n{out}"));
    let written = count_before(line, "resources written");
    assert_eq!(
        written,
        Some(expect as u64),
        "{what}: expected {expect} resources written:\n{out}"
    );
    took
}

/// A `yba serve`, stopped when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

async fn serve(url: &str, envs: &[(&str, &str)]) -> (Server, SocketAddr) {
    let addr = free_addr();
    let mut cmd = yba();
    cmd.arg("serve")
        .env("DATABASE_URL", url)
        .env("YBA_BIND", addr.to_string())
        .envs(envs.iter().copied());
    let mut server = Server(cmd.spawn().expect("yba serve starts"));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("yba serve exited: {status}");
        }
        assert!(Instant::now() < deadline, "yba serve not ready in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (server, addr)
}

/// Drops the bench's PostgreSQL schema when the run ends, panics included (unless kept).
struct Schema {
    server: String,
    name: String,
    keep: bool,
}

impl Drop for Schema {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Ok(mut c) = diesel::PgConnection::establish(&self.server) {
            let _ = diesel::sql_query(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
                .execute(&mut c);
        }
    }
}

/// What one `yba sync --once` did.
struct Round {
    wall: Duration,
    wire: Wire,
    /// The JSON object on its last stdout line.
    report: Option<Value>,
    ok: bool,
}

impl Round {
    /// A figure of the client's report: integers with thousands separators, seconds to 0.1.
    fn field(&self, name: &str) -> String {
        match self.report.as_ref().map(|r| &r[name]) {
            Some(Value::Null) | None => "?".into(),
            Some(Value::Number(n)) if n.is_u64() => thousands(n.as_u64().unwrap_or(0)),
            Some(Value::Number(n)) => format!("{:.1}", n.as_f64().unwrap_or(0.0)),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        }
    }

    /// The seconds the round's bytes take at the link's rate (the two directions one after
    /// the other), and about how many round trips the rest of its wall time is.
    fn latency_bound(&self, rate: u64, delay: Duration) -> (f64, f64) {
        let transfer = (self.wire.up + self.wire.down) as f64 / rate as f64;
        let rest = (self.wall.as_secs_f64() - transfer).max(0.0);
        (transfer, rest / (2.0 * delay.as_secs_f64()).max(1e-9))
    }
}

async fn sync_once(
    node_url: &str,
    upstream: &str,
    secret: &str,
    counters: &link::Counters,
    timeout: Duration,
    label: &str,
) -> Round {
    let mut cmd = tokio::process::Command::from(yba());
    cmd.args(["sync", "--once"])
        .env("DATABASE_URL", node_url)
        .env("YBA_UPSTREAM", upstream)
        .env("YBA_UPSTREAM_CLIENT_ID", CLIENT_ID)
        .env("YBA_UPSTREAM_CLIENT_SECRET", secret)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let before = counters.get();
    let t = Instant::now();
    let child = cmd.spawn().expect("yba sync starts");
    let out = tokio::time::timeout(timeout, child.wait_with_output()).await;
    let wall = t.elapsed();
    let wire = counters.get() - before;
    let out = match out {
        Ok(out) => out.expect("yba sync runs"),
        Err(_) => {
            println!("{label}: yba sync --once did not finish in {timeout:?}; killed");
            return Round {
                wall,
                wire,
                report: None,
                ok: false,
            };
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    for l in stdout.lines() {
        println!("  | {l}");
    }
    let report = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object);
    if report.is_none() {
        println!("{label}: no JSON object on the last line of yba sync's output");
    }
    if !out.status.success() {
        println!("{label}: yba sync --once failed: {}", out.status);
    }
    Round {
        wall,
        wire,
        ok: out.status.success(),
        report,
    }
}

// ---------------------------------------------------------------------------------------------
// The check.

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Text)]
    res_type: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    res_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    body: String,
}

const CURRENT: &str = "SELECT res_type, res_id, body FROM resource_version \
     WHERE is_current AND NOT deleted AND res_type IN ('Organization', 'Patient', 'Observation')";

/// The current resources of [`TYPES`], without `meta`.
fn current(rows: Vec<Row>) -> HashMap<(String, String), Value> {
    rows.into_iter()
        .map(|r| {
            let mut v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.remove("meta");
            }
            ((r.res_type, r.res_id), v)
        })
        .collect()
}

/// What one side holds against what it should.
struct Check {
    side: &'static str,
    per_type: BTreeMap<String, usize>,
    found: usize,
    missing: usize,
    extra: usize,
    changed: usize,
}

impl Check {
    fn new(
        side: &'static str,
        have: &HashMap<(String, String), Value>,
        want: &HashMap<(String, String), Value>,
    ) -> Check {
        let mut per_type = BTreeMap::new();
        for (ty, _) in have.keys() {
            *per_type.entry(ty.clone()).or_insert(0) += 1;
        }
        let mut examples = Vec::new();
        let (mut missing, mut changed) = (0, 0);
        for (k, v) in want {
            match have.get(k) {
                None => {
                    missing += 1;
                    if examples.len() < 3 {
                        examples.push(format!("missing {}/{}", k.0, k.1));
                    }
                }
                Some(h) if h != v => {
                    changed += 1;
                    if examples.len() < 6 {
                        examples.push(format!("{}/{} differs: {h} (generated: {v})", k.0, k.1));
                    }
                }
                Some(_) => {}
            }
        }
        let extra = have.keys().filter(|k| !want.contains_key(*k)).count();
        for e in examples {
            println!("  {side}: {e}");
        }
        Check {
            side,
            per_type,
            found: have.len(),
            missing,
            extra,
            changed,
        }
    }

    fn ok(&self, expected: usize) -> bool {
        self.found == expected && self.missing == 0 && self.extra == 0 && self.changed == 0
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let a = args();
    // reqwest is built without a TLS provider of its own (the server installs ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if a.proxy_test {
        rt.block_on(proxy_test(&a));
    } else {
        rt.block_on(bench(&a));
    }
}

fn link_text(a: &Args) -> String {
    format!(
        "{:.2} Mbit/s each way ({} B/s token bucket, {} B burst), {} ms one-way delay each way \
         (tc netem's delay on each side: {} ms round trip, a new connection's handshake included)",
        a.rate as f64 * 8.0 / 1e6,
        a.rate,
        a.burst,
        a.delay.as_millis(),
        2 * a.delay.as_millis()
    )
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

async fn bench(a: &Args) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let dir = tempfile::tempdir().expect("a temporary directory");
    println!(
        "machine: {cores} cores; {} new resources each way ({} Patients, {} Observations per side)",
        a.resources,
        a.patients,
        a.resources - a.patients
    );
    println!("link: {}", link_text(a));

    // The data.
    let org = organization();
    let central_new = generate(0, a.resources, a.patients);
    let node_new = generate(1, a.resources, a.patients);
    let (central_nd, node_nd) = (ndjson(&central_new), ndjson(&node_new));
    let (central_gz, node_gz) = (gzip_len(&central_nd), gzip_len(&node_nd));
    let org_file = dir.path().join("organization.ndjson");
    let central_file = dir.path().join("central.ndjson");
    let node_file = dir.path().join("node.ndjson");
    std::fs::write(&org_file, ndjson(std::slice::from_ref(&org))).unwrap();
    std::fs::write(&central_file, &central_nd).unwrap();
    std::fs::write(&node_file, &node_nd).unwrap();
    println!(
        "generated: central {} B of NDJSON ({} B gzipped), node {} B ({} B gzipped)",
        thousands(central_nd.len() as u64),
        thousands(central_gz),
        thousands(node_nd.len() as u64),
        thousands(node_gz)
    );
    let mut want: HashMap<(String, String), Value> = HashMap::new();
    for v in std::iter::once(&org).chain(&central_new).chain(&node_new) {
        want.insert(key(v), v.clone());
    }
    let expected = want.len();

    // The central: PostgreSQL, a schema of its own.
    let pg = std::env::var("YBA_BENCH_POSTGRES_URL").unwrap_or_else(|_| PG.into());
    let schema_name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    {
        let mut c = diesel::PgConnection::establish(&pg).expect("PostgreSQL reachable");
        diesel::sql_query(format!("CREATE SCHEMA {schema_name}"))
            .execute(&mut c)
            .expect("CREATE SCHEMA");
    }
    let _schema = Schema {
        server: pg.clone(),
        name: schema_name.clone(),
        keep: a.keep,
    };
    let central_url = format!("{pg}?options=-csearch_path%3D{schema_name}");
    let took = import(
        &central_url,
        &[&org_file, &central_file],
        a.resources + 1,
        "yba import (central)",
    );
    println!(
        "central: PostgreSQL schema {schema_name}, {} resources imported in {:.1} s",
        a.resources + 1,
        took.as_secs_f64()
    );
    let mut cmd = yba();
    cmd.args([
        "client",
        "create",
        "--client-id",
        CLIENT_ID,
        "--name",
        "Tram A",
    ])
    .args(["--organization", ORG, "--scopes", "system/*.cruds"])
    .env("DATABASE_URL", &central_url);
    let out = run(cmd, "yba client create");
    let secret = out
        .lines()
        .skip_while(|l| !l.starts_with("client created; its secret"))
        .nth(1)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("no secret in yba client create's output:\n{out}"))
        .to_string();

    // The node: SQLite.
    let node_dir = dir.path().join("node");
    std::fs::create_dir(&node_dir).unwrap();
    let node_db = node_dir.join("node.db");
    let node_url = format!("sqlite://{}", node_db.display());
    let took = import(
        &node_url,
        &[&org_file, &node_file],
        a.resources + 1,
        "yba import (node)",
    );
    println!(
        "node: SQLite {}, {} resources imported in {:.1} s",
        node_db.display(),
        a.resources + 1,
        took.as_secs_f64()
    );

    // The central serves; the node reaches it through the link.
    let key_bytes: Vec<u8> = (0..3)
        .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
        .collect();
    let keys = {
        use base64::Engine;
        format!(
            "k1:{}",
            base64::engine::general_purpose::STANDARD.encode(key_bytes)
        )
    };
    let (server, central_addr) = serve(&central_url, &[("YBA_TOKEN_KEYS", &keys)]).await;
    let (proxy, counters) = ThrottledLink::start(central_addr, a.rate, a.delay, a.burst)
        .await
        .expect("the link starts");
    let upstream = format!("http://{proxy}/fhir");
    println!("central serves at {central_addr}; the node syncs with {upstream}\n");

    println!("round 1: yba sync --once ({} new each way)", a.resources);
    let first = sync_once(
        &node_url, &upstream, &secret, &counters, a.timeout, "round 1",
    )
    .await;
    println!(
        "round 1: {:.1} s, {} B node→central, {} B central→node, {} connection(s)\n",
        first.wall.as_secs_f64(),
        thousands(first.wire.up),
        thousands(first.wire.down),
        first.wire.connections
    );
    println!("round 2: yba sync --once (nothing new)");
    let second = sync_once(
        &node_url, &upstream, &secret, &counters, a.timeout, "round 2",
    )
    .await;
    println!(
        "round 2: {:.1} s, {} B node→central, {} B central→node, {} connection(s)\n",
        second.wall.as_secs_f64(),
        thousands(second.wire.up),
        thousands(second.wire.down),
        second.wire.connections
    );
    drop(server);

    // Both sides hold the same resources, as generated (but for meta).
    let central = {
        let mut c = diesel::PgConnection::establish(&central_url).expect("PostgreSQL reachable");
        current(
            diesel::sql_query(CURRENT)
                .load::<Row>(&mut c)
                .expect("central's resources"),
        )
    };
    let node = {
        let mut c = diesel::SqliteConnection::establish(&node_db.to_string_lossy())
            .expect("the node's database opens");
        current(
            diesel::sql_query(CURRENT)
                .load::<Row>(&mut c)
                .expect("the node's resources"),
        )
    };
    let checks = [
        Check::new("central", &central, &want),
        Check::new("node", &node, &want),
    ];
    let same = central.len() == node.len() && central.iter().all(|(k, v)| node.get(k) == Some(v));

    if a.keep {
        let kept = dir.keep();
        println!(
            "kept: {} (node database, NDJSON); PostgreSQL schema {schema_name}",
            kept.display()
        );
    }

    // The summary.
    let reference = central_gz + node_gz;
    let ratio = |wire: u64, gz: u64| wire as f64 / gz as f64;
    let verdict = |r: f64| if r <= TARGET { "met" } else { "**missed**" };
    let (up, down) = (first.wire.up, first.wire.down);
    println!(
        "\n## Commune node sync — {} new resources each way, {cores} cores",
        thousands(a.resources as u64)
    );
    println!(
        "Node `yba` on SQLite, central `yba` on PostgreSQL; link: {}. Bytes are TCP payload \
         (HTTP headers included) counted by the link proxy.\n",
        link_text(a)
    );
    println!(
        "| round | wall s | node→central B | central→node B | connections | s at link rate | ≈ round trips beyond | pulled | pushed | unchanged | conflicts | client's B sent / received | client's s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let new_each_way = format!("1: {} new each way", thousands(a.resources as u64));
    for (label, r) in [(new_each_way.as_str(), &first), ("2: nothing new", &second)] {
        let label = if r.ok {
            label.to_string()
        } else {
            format!("{label} (**failed**)")
        };
        let (transfer, trips) = r.latency_bound(a.rate, a.delay);
        println!(
            "| {label} | {:.1} | {} | {} | {} | {transfer:.1} | {trips:.0} | {} | {} | {} | {} | {} / {} | {} |",
            r.wall.as_secs_f64(),
            thousands(r.wire.up),
            thousands(r.wire.down),
            r.wire.connections,
            r.field("pulled"),
            r.field("pushed"),
            r.field("unchanged"),
            r.field("conflicts"),
            r.field("bytes_sent"),
            r.field("bytes_received"),
            r.field("seconds")
        );
    }
    println!(
        "\n| direction (round 1) | resources | NDJSON B | gzip B (reference) | wire B | wire / gzip | target ≤ {TARGET}× |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    let rows = [
        (
            "node → central (push)",
            a.resources,
            node_nd.len(),
            node_gz,
            up,
        ),
        (
            "central → node (pull)",
            a.resources,
            central_nd.len(),
            central_gz,
            down,
        ),
        (
            "total",
            2 * a.resources,
            node_nd.len() + central_nd.len(),
            reference,
            up + down,
        ),
    ];
    let mut met = first.ok;
    for (label, n, raw, gz, wire) in rows {
        let r = ratio(wire, gz);
        met &= r <= TARGET;
        println!(
            "| {label} | {} | {} | {} | {} | {r:.2} | {} |",
            thousands(n as u64),
            thousands(raw as u64),
            thousands(gz),
            thousands(wire),
            if first.ok {
                verdict(r)
            } else {
                "not measured (round 1 failed)"
            }
        );
    }
    let floor = (central_gz + node_gz) as f64 / a.rate as f64;
    println!(
        "\nFor scale: the gzipped resources alone take {floor:.1} s at the link's rate, one \
         direction after the other (pull, then push); each round trip costs {} ms. \"s at link \
         rate\" is the round's own bytes at the link's rate; \"round trips beyond\" is the rest \
         of its wall time in round trips (requests waited for one by one, handshakes, server \
         time).",
        2 * a.delay.as_millis()
    );
    for (label, r) in [("round 1", &first), ("round 2", &second)] {
        if let Some(e) = r
            .report
            .as_ref()
            .map(|r| &r["error"])
            .filter(|e| !e.is_null())
        {
            println!("{label} reported an error: {e}");
        }
    }
    println!();
    let per_type = |c: &Check| {
        TYPES
            .iter()
            .map(|t| format!("{} {t}", c.per_type.get(*t).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut all_ok = first.ok && second.ok;
    for c in &checks {
        let ok = c.ok(expected);
        all_ok &= ok;
        println!(
            "- {}: {} of {} expected resources ({}); missing {}, unexpected {}, content differs {}: **{}**",
            c.side,
            thousands(c.found as u64),
            thousands(expected as u64),
            per_type(c),
            c.missing,
            c.extra,
            c.changed,
            if ok { "OK" } else { "MISMATCH" }
        );
    }
    all_ok &= same;
    println!(
        "- central and node hold the same resources (but for meta): **{}**",
        if same { "OK" } else { "MISMATCH" }
    );
    let idle = ["pulled", "pushed"]
        .iter()
        .map(|f| second.field(f))
        .collect::<Vec<_>>();
    if idle.iter().any(|v| v != "0") {
        println!(
            "- note: round 2 reported pulled {}, pushed {} (expected 0 and 0)",
            idle[0], idle[1]
        );
    }
    println!(
        "\nverification: **{}**; bytes target (≤ {TARGET}× gzip, each way and in total): **{}**",
        if all_ok { "OK" } else { "MISMATCH" },
        if !first.ok {
            "not measured"
        } else if met {
            "met"
        } else {
            "missed"
        }
    );
}

// ---------------------------------------------------------------------------------------------
// The link alone.

async fn proxy_test(a: &Args) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("yba.db").display());
    let (_server, addr) = serve(&url, &[("YBA_AUTH", "off"), ("YBA_ALWAYS_PROFILE", "none")]).await;
    let (proxy, counters) = ThrottledLink::start(addr, a.rate, a.delay, a.burst)
        .await
        .expect("the link starts");
    println!("link: {}", link_text(a));
    println!("yba serve (SQLite, auth off) at {addr}, behind the link at {proxy}\n");
    let base = format!("http://{proxy}/fhir");
    let (d, rate, burst) = (a.delay.as_secs_f64(), a.rate as f64, a.burst as f64);
    // The time the model predicts: round trips, and the bytes beyond the burst at the rate.
    let model = |round_trips: f64, bytes: u64| {
        round_trips * 2.0 * d + (bytes as f64 - burst).max(0.0) / rate
    };
    let mut rows: Vec<(String, Wire, f64, f64, f64)> = Vec::new();
    let step = |label: &str, before: Wire, t: Instant, trips: f64, rows: &mut Vec<_>| {
        let w = counters.get() - before;
        let s = t.elapsed().as_secs_f64();
        let m = model(trips, w.up.max(w.down));
        println!(
            "{label}: {s:.2} s (model {m:.2} s), {} B up, {} B down, {} new connection(s)",
            w.up, w.down, w.connections
        );
        rows.push((label.to_string(), w, s, m, trips));
    };

    // A new connection: the handshake's round trip, then the request's.
    let c1 = reqwest::Client::new();
    let (before, t) = (counters.get(), Instant::now());
    let r = c1
        .get(format!("{base}/metadata"))
        .send()
        .await
        .expect("metadata");
    assert!(r.status().is_success());
    let meta = r.bytes().await.expect("metadata body").len();
    step(
        &format!("GET /fhir/metadata ({meta} B) on a new connection"),
        before,
        t,
        2.0,
        &mut rows,
    );
    let (before, t) = (counters.get(), Instant::now());
    let r = c1
        .get(format!("http://{proxy}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert!(r.status().is_success());
    step(
        "GET /healthz on the open connection",
        before,
        t,
        1.0,
        &mut rows,
    );

    // A large Binary up, then down.
    let n = (a.mb * 1e6 * 3.0 / 4.0) as usize;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let data: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
    let body = {
        use base64::Engine;
        json!({"resourceType": "Binary", "id": "link-test", "contentType": "application/octet-stream",
            "data": base64::engine::general_purpose::STANDARD.encode(&data)})
        .to_string()
    };
    let (before, t) = (counters.get(), Instant::now());
    let r = c1
        .put(format!("{base}/Binary/link-test"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(body.clone())
        .send()
        .await
        .expect("upload");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(status.is_success(), "upload: {status} {text}");
    step(
        &format!("PUT a Binary of {} B", body.len()),
        before,
        t,
        1.0,
        &mut rows,
    );
    let (before, t) = (counters.get(), Instant::now());
    let r = c1
        .get(format!("{base}/Binary/link-test"))
        .header("accept", "application/fhir+json")
        .send()
        .await
        .expect("download");
    assert!(r.status().is_success(), "download: {}", r.status());
    let got = r.bytes().await.expect("download body").len();
    step(&format!("GET it back ({got} B)"), before, t, 1.0, &mut rows);

    // Two downloads at once, on two open connections, share the link.
    let c2 = reqwest::Client::new();
    let _ = c2.get(format!("http://{proxy}/healthz")).send().await;
    let (before, t) = (counters.get(), Instant::now());
    let get = |c: &reqwest::Client| {
        c.get(format!("{base}/Binary/link-test"))
            .header("accept", "application/fhir+json")
            .send()
    };
    let (r1, r2) = tokio::join!(get(&c1), get(&c2));
    let (b1, b2) = tokio::join!(
        r1.expect("download 1").bytes(),
        r2.expect("download 2").bytes()
    );
    assert_eq!(b1.map(|b| b.len()).ok(), Some(got));
    assert_eq!(b2.map(|b| b.len()).ok(), Some(got));
    let w = counters.get() - before;
    let s = t.elapsed().as_secs_f64();
    let m = 2.0 * d + (w.down as f64 - burst).max(0.0) / rate;
    println!(
        "two GETs of it at once: {s:.2} s (model {m:.2} s), {} B up, {} B down",
        w.up, w.down
    );
    rows.push((
        "two GETs of it at once (two connections)".into(),
        w,
        s,
        m,
        1.0,
    ));

    println!("\n## The link alone — {}", link_text(a));
    println!(
        "| step | B up | B down | s | model s | B/s beyond the round trips (larger direction) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, w, s, m, trips) in rows {
        let big = w.up.max(w.down) as f64;
        let transfer = s - trips * 2.0 * d;
        let eff = if big > 100_000.0 && transfer > 0.0 {
            format!("{:.0}", big / transfer)
        } else {
            "–".into()
        };
        println!(
            "| {label} | {} | {} | {s:.2} | {m:.2} | {eff} |",
            thousands(w.up),
            thousands(w.down)
        );
    }
    println!(
        "\nmodel: round trips × {} ms + (bytes − {} B burst) / {} B/s",
        2 * a.delay.as_millis(),
        a.burst,
        a.rate
    );
}
