//! Accounts and clients (for the `yba user` and `yba client` commands), the OAuth 2.0 grants of
//! `POST /auth/token` and the check of each request's access token.

use std::time::{Duration, Instant};

use super::scopes::Scopes;
use super::throttle::Throttle;
use super::token::{self, AUDIENCE, AccessClaims, Keys, TokenError};
use super::{Principal, Role, password};
use crate::fhir::datetime::now_millis;
use crate::store::{ClientRow, Refresh, SessionRow, Store, StoreError, UserRow};

/// A new account.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub role: Role,
    pub fhir_user: Option<String>,
    pub organization: Option<String>,
}

/// A new OAuth client (a hospital system).
#[derive(Debug, Clone)]
pub struct NewClient {
    pub client_id: String,
    pub name: String,
    pub organization: String,
    pub scopes: String,
    /// A secret for `client_secret_basic`/`client_secret_post`; with `public_key`, both work.
    pub secret: Option<String>,
    /// A PEM public key for `private_key_jwt`.
    pub public_key: Option<String>,
}

fn reference_of(s: &str, ty: &str) -> Result<(), String> {
    match s.split_once('/') {
        Some((t, id)) if t == ty && crate::fhir::interactions::check_id(id).is_ok() => Ok(()),
        _ => Err(format!("'{s}' is not a reference like {ty}/123")),
    }
}

/// Adds an account. A patient's username is their citizen ID, and their `fhir_user` their
/// Patient record; staff name their FHIR resource and their organization.
pub async fn create_user(store: &Store, u: NewUser, pw: &str) -> Result<(), String> {
    match u.role {
        Role::Patient => {
            crate::vn::Cccd::parse(&u.username)
                .map_err(|e| format!("a patient signs in with their citizen ID: {e}"))?;
            reference_of(u.fhir_user.as_deref().unwrap_or(""), "Patient")?;
        }
        Role::Practitioner | Role::Pharmacist => {
            let fu = u.fhir_user.as_deref().unwrap_or("");
            if reference_of(fu, "Practitioner").is_err() {
                reference_of(fu, "PractitionerRole").map_err(|_| {
                    format!("'{fu}' is not a Practitioner/… or PractitionerRole/… reference")
                })?;
            }
            reference_of(u.organization.as_deref().unwrap_or(""), "Organization")?;
        }
        Role::Admin => {}
        Role::System => return Err("systems are OAuth clients: use `yba client create`".into()),
    }
    if u.username.is_empty()
        || u.username.len() > 128
        || u.username.chars().any(char::is_whitespace)
    {
        return Err("a username is 1 to 128 characters without spaces".into());
    }
    password::check_rules(pw, &u.username)?;
    let hash = password::hash(pw)?;
    let row = UserRow {
        username: u.username.clone(),
        role: u.role.name().to_string(),
        fhir_user: u.fhir_user,
        organization: u.organization,
        password_hash: hash,
        disabled: false,
        created: now_millis(),
    };
    let added = store
        .write(move |s| s.insert_user(&row))
        .await
        .map_err(|e| e.to_string())?;
    if added {
        Ok(())
    } else {
        Err(format!("the username '{}' is taken", u.username))
    }
}

/// Sets a new password (ending the account's sessions).
pub async fn reset_password(store: &Store, username: &str, pw: &str) -> Result<(), String> {
    password::check_rules(pw, username)?;
    let hash = password::hash(pw)?;
    let name = username.to_string();
    let found = store
        .write(move |s| s.set_password(&name, &hash))
        .await
        .map_err(|e| e.to_string())?;
    found
        .then_some(())
        .ok_or_else(|| format!("there is no user '{username}'"))
}

/// Disables (or re-enables) an account; disabling ends its sessions at once.
pub async fn set_user_disabled(
    store: &Store,
    username: &str,
    disabled: bool,
) -> Result<(), String> {
    let name = username.to_string();
    let found = store
        .write(move |s| s.set_user_disabled(&name, disabled))
        .await
        .map_err(|e| e.to_string())?;
    found
        .then_some(())
        .ok_or_else(|| format!("there is no user '{username}'"))
}

/// Registers a hospital system.
pub async fn create_client(store: &Store, c: NewClient) -> Result<(), String> {
    if c.client_id.is_empty()
        || c.client_id.len() > 128
        || !c
            .client_id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-._".contains(ch))
    {
        return Err("a client id is 1 to 128 letters, digits, '-', '.' or '_'".into());
    }
    reference_of(&c.organization, "Organization")?;
    let scopes = Scopes::parse(&c.scopes);
    if scopes.resources.is_empty()
        || scopes
            .resources
            .iter()
            .any(|s| s.context != super::scopes::Context::System)
    {
        return Err(
            "a client's scopes are system/ scopes, like system/*.cruds or system/Observation.cr"
                .into(),
        );
    }
    if c.secret.is_none() && c.public_key.is_none() {
        return Err("a client needs a secret or a public key to authenticate with".into());
    }
    if let Some(pem) = &c.public_key {
        token::check_public_key(pem)?;
    }
    let secret_hash = match &c.secret {
        Some(s) if s.len() < 32 => return Err("a client secret has at least 32 characters".into()),
        Some(s) => Some(password::hash(s)?),
        None => None,
    };
    let row = ClientRow {
        client_id: c.client_id.clone(),
        name: c.name,
        organization: Some(c.organization),
        secret_hash,
        public_key: c.public_key,
        scopes: scopes.to_string(),
        disabled: false,
        created: now_millis(),
    };
    let added = store
        .write(move |s| s.insert_client(&row))
        .await
        .map_err(|e| e.to_string())?;
    if added {
        Ok(())
    } else {
        Err(format!("the client id '{}' is taken", c.client_id))
    }
}

/// An OAuth error answer (RFC 6749 §5.2).
#[derive(Debug, Clone)]
pub struct GrantError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
    pub retry_after: Option<Duration>,
}

impl GrantError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> GrantError {
        GrantError {
            status,
            error,
            description: description.into(),
            retry_after: None,
        }
    }
}

impl From<StoreError> for GrantError {
    fn from(e: StoreError) -> Self {
        tracing::error!("token endpoint: {e}");
        GrantError::new(
            503,
            "temporarily_unavailable",
            "the server cannot issue tokens right now",
        )
    }
}

/// A token response (RFC 6749 §5.1, with SMART's `patient`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Issued {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// Who was signed in (for the audit trail; not sent).
    #[serde(skip)]
    pub principal: Option<Principal>,
}

/// How a client proved who it is.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    Secret {
        client_id: String,
        secret: String,
    },
    Assertion {
        client_id: Option<String>,
        assertion: String,
    },
}

/// The token service: keys, lifetimes and login throttling.
pub struct Tokens {
    pub store: Store,
    pub keys: Keys,
    pub throttle: Throttle,
    pub access_ttl: Duration,
    pub session_ttl: Duration,
}

/// The client id of people signing in without naming an app.
pub const DEFAULT_APP: &str = "yba-app";

impl Tokens {
    /// `grant_type=password`: a person signs in. Unknown accounts, wrong passwords and disabled
    /// accounts get the same answer after the same work.
    pub async fn password_grant(
        &self,
        username: &str,
        pw: &str,
        scope: &str,
        client_id: Option<&str>,
        address: &str,
        issuer: &str,
    ) -> Result<Issued, GrantError> {
        let keys = [format!("acct:{username}"), format!("addr:{address}")];
        let keys: [&str; 2] = [&keys[0], &keys[1]];
        if let Some(wait) = self.throttle.wait(&keys, Instant::now()) {
            return Err(GrantError {
                retry_after: Some(wait),
                ..GrantError::new(
                    429,
                    "invalid_grant",
                    format!(
                        "too many failed sign-ins: try again in {} seconds",
                        wait.as_secs().max(1)
                    ),
                )
            });
        }
        let name = username.to_string();
        let user = self.store.read(move |s| s.user(&name)).await?;
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        let given = pw.to_string();
        let matched = password::verify_async(stored, given).await;
        let user = match user {
            Some(u) if matched && !u.disabled => u,
            _ => {
                self.throttle.failed(&keys, Instant::now());
                return Err(GrantError::new(
                    400,
                    "invalid_grant",
                    "the username or password is wrong",
                ));
            }
        };
        self.throttle.succeeded(&keys);
        let Some(role) = Role::parse(&user.role) else {
            return Err(GrantError::new(
                400,
                "invalid_grant",
                "the account has no usable role",
            ));
        };
        let granted = Scopes::grant(&Scopes::parse(scope), &role.ceiling());
        if granted.resources.is_empty() {
            return Err(GrantError::new(
                400,
                "invalid_scope",
                format!(
                    "none of the scopes asked for can be granted to a {}",
                    role.name()
                ),
            ));
        }
        let patient = patient_in_context(role, user.fhir_user.as_deref());
        let claims = Claims {
            sub: user.username,
            role,
            client_id: client_id.unwrap_or(DEFAULT_APP).to_string(),
            fhir_user: user.fhir_user,
            org: user.organization,
            patient,
            scopes: granted,
        };
        self.issue(claims, true, issuer).await
    }

    /// `grant_type=client_credentials`: a hospital system, by secret or signed assertion.
    pub async fn client_credentials(
        &self,
        auth: ClientAuth,
        scope: &str,
        issuer: &str,
        token_urls: &[String],
    ) -> Result<Issued, GrantError> {
        let invalid = || {
            GrantError::new(
                401,
                "invalid_client",
                "the client is unknown or did not authenticate",
            )
        };
        let client_id = match &auth {
            ClientAuth::Secret { client_id, .. } => client_id.clone(),
            ClientAuth::Assertion {
                client_id,
                assertion,
            } => {
                // The client is the assertion's subject (checked against its key below).
                let unverified =
                    jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(assertion)
                        .ok()
                        .and_then(|v| v.get("sub").and_then(|s| s.as_str()).map(str::to_string));
                match (client_id, unverified) {
                    (Some(c), Some(s)) if *c == s => s,
                    (None, Some(s)) => s,
                    _ => return Err(invalid()),
                }
            }
        };
        let id = client_id.clone();
        let client = self.store.read(move |s| s.client(&id)).await?;
        let ok = match (&auth, &client) {
            (ClientAuth::Secret { secret, .. }, c) => {
                let stored = c.as_ref().and_then(|c| c.secret_hash.clone());
                let given = secret.clone();
                password::verify_async(stored, given).await
            }
            (ClientAuth::Assertion { assertion, .. }, Some(c)) => match &c.public_key {
                Some(pem) => {
                    match token::verify_assertion(assertion, pem, &client_id, token_urls) {
                        Ok((jti, exp)) => {
                            let (cid, now) = (client_id.clone(), now_millis());
                            let fresh = self
                                .store
                                .write(move |s| {
                                    s.record_assertion(&cid, &jti, exp as i64 * 1000, now)
                                })
                                .await?;
                            if !fresh {
                                // RFC 7523 §3.2: an assertion that is not valid (here:
                                // replayed) fails client authentication.
                                return Err(GrantError::new(
                                    401,
                                    "invalid_client",
                                    "the client assertion was used before",
                                ));
                            }
                            true
                        }
                        Err(e) => return Err(GrantError::new(401, "invalid_client", e.0)),
                    }
                }
                None => false,
            },
            _ => false,
        };
        let client = match client {
            Some(c) if ok && !c.disabled => c,
            _ => return Err(invalid()),
        };
        let granted = Scopes::grant(&Scopes::parse(scope), &Scopes::parse(&client.scopes));
        if granted.resources.is_empty() {
            return Err(GrantError::new(
                400,
                "invalid_scope",
                "none of the scopes asked for is registered for this client",
            ));
        }
        let claims = Claims {
            sub: client.client_id.clone(),
            role: Role::System,
            client_id: client.client_id,
            fhir_user: None,
            org: client.organization,
            patient: None,
            scopes: granted,
        };
        self.issue(claims, false, issuer).await
    }

    /// `grant_type=refresh_token`: a new access token and a new refresh token (the old one is
    /// spent; presenting it again ends the session). `scope` may narrow, never widen.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        scope: &str,
        issuer: &str,
    ) -> Result<Issued, GrantError> {
        let (digest, now) = (token::digest(refresh_token), now_millis());
        let outcome = self
            .store
            .write(move |s| s.take_refresh(&digest, now))
            .await?;
        let session = match outcome {
            Refresh::Fresh(s) => s,
            Refresh::Reused => {
                return Err(GrantError::new(
                    400,
                    "invalid_grant",
                    "the refresh token was already used: its session has been ended",
                ));
            }
            Refresh::Invalid => {
                return Err(GrantError::new(
                    400,
                    "invalid_grant",
                    "the refresh token is not valid",
                ));
            }
        };
        let sub = session.subject.clone();
        let user = self.store.read(move |s| s.user(&sub)).await?;
        let Some(user) = user.filter(|u| !u.disabled) else {
            return Err(GrantError::new(
                400,
                "invalid_grant",
                "the account is disabled",
            ));
        };
        let Some(role) = Role::parse(&user.role) else {
            return Err(GrantError::new(
                400,
                "invalid_grant",
                "the account has no usable role",
            ));
        };
        let had = Scopes::parse(&session.scopes);
        let scopes = Scopes::grant(&Scopes::parse(scope), &had);
        let patient = patient_in_context(role, user.fhir_user.as_deref());
        let claims = Claims {
            sub: user.username,
            role,
            client_id: session.client_id.clone(),
            fhir_user: user.fhir_user,
            org: user.organization,
            patient,
            scopes,
        };
        self.sign(claims, session.sid, session.expires, true, issuer)
            .await
    }

    /// `POST /auth/revoke` (RFC 7009): ends the session of a refresh or access token. Unknown
    /// tokens are not an error.
    pub async fn revoke(&self, tok: &str, issuer: &str) -> Result<(), GrantError> {
        let sid = match self.keys.verify(tok, issuer) {
            Ok(c) => Some(c.sid),
            Err(TokenError::Expired) => None,
            Err(_) => {
                let d = token::digest(tok);
                self.store.read(move |s| s.refresh_session(&d)).await?
            }
        };
        if let Some(sid) = sid {
            self.store.write(move |s| s.revoke_session(&sid)).await?;
        }
        Ok(())
    }

    /// The principal of a bearer token: signature, expiry, and a live session.
    pub async fn authenticate(&self, bearer: &str, issuer: &str) -> Result<Principal, TokenError> {
        let claims = self.keys.verify(bearer, issuer)?;
        let sid = claims.sid.clone();
        let now = now_millis();
        let live = self
            .store
            .read_point(move |s| s.session_live(&sid, now))
            .await
            .map_err(|e| {
                tracing::error!("cannot check a token's session: {e}");
                TokenError::Revoked
            })?;
        if !live {
            return Err(TokenError::Revoked);
        }
        Principal::from_claims(claims).ok_or(TokenError::Malformed)
    }

    async fn issue(&self, c: Claims, refresh: bool, issuer: &str) -> Result<Issued, GrantError> {
        let now = now_millis();
        let ttl = if refresh {
            self.session_ttl
        } else {
            self.access_ttl
        };
        let row = SessionRow {
            sid: token::random_token(),
            subject: c.sub.clone(),
            client_id: c.client_id.clone(),
            scopes: c.scopes.to_string(),
            created: now,
            expires: now + ttl.as_millis() as i64,
            revoked: false,
        };
        let (sid, expires) = (row.sid.clone(), row.expires);
        self.store.write(move |s| s.insert_session(&row)).await?;
        self.sign(c, sid, expires, refresh, issuer).await
    }

    async fn sign(
        &self,
        c: Claims,
        sid: String,
        session_expires: i64,
        refresh: bool,
        issuer: &str,
    ) -> Result<Issued, GrantError> {
        let now = jsonwebtoken::get_current_timestamp();
        let life = self
            .access_ttl
            .as_secs()
            .min(((session_expires - now_millis()).max(0) / 1000) as u64)
            .max(1);
        let claims = AccessClaims {
            iss: issuer.to_string(),
            aud: AUDIENCE.to_string(),
            sub: c.sub,
            iat: now,
            exp: now + life,
            jti: token::random_token(),
            sid: sid.clone(),
            scope: c.scopes.to_string(),
            role: c.role.name().to_string(),
            client_id: c.client_id,
            fhir_user: c.fhir_user,
            org: c.org,
            patient: c.patient,
        };
        let access_token = self.keys.sign(&claims).map_err(|e| {
            tracing::error!("cannot sign a token: {e}");
            GrantError::new(500, "server_error", "the server cannot sign tokens")
        })?;
        let refresh_token = if refresh {
            let t = token::random_token();
            let d = token::digest(&t);
            self.store
                .write(move |s| s.insert_refresh(&d, &sid, session_expires))
                .await?;
            Some(t)
        } else {
            None
        };
        let principal = Principal::from_claims(claims.clone());
        Ok(Issued {
            access_token,
            token_type: "Bearer",
            expires_in: life,
            scope: claims.scope,
            refresh_token,
            patient: claims.patient,
            fhir_user: claims.fhir_user,
            principal,
        })
    }
}

struct Claims {
    sub: String,
    role: Role,
    client_id: String,
    fhir_user: Option<String>,
    org: Option<String>,
    patient: Option<String>,
    scopes: Scopes,
}

/// The patient a token speaks for: the signed-in patient's own record.
fn patient_in_context(role: Role, fhir_user: Option<&str>) -> Option<String> {
    match role {
        Role::Patient => fhir_user
            .and_then(|f| f.strip_prefix("Patient/"))
            .map(str::to_string),
        _ => None,
    }
}
