//! Access tokens: short-lived JWTs (HS256) signed with a key from the environment, named by
//! `kid` so that keys rotate without signing anyone out; refresh tokens: opaque random strings
//! kept only as SHA-256 digests; client assertions of SMART Backend Services (`private_key_jwt`,
//! RS384 or ES384 with the client's registered public key).

use std::collections::HashMap;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// The signing keys: the first signs, all verify (the others are the ones rotating out).
pub struct Keys {
    signing: (String, EncodingKey),
    verifying: HashMap<String, DecodingKey>,
    /// True when no key was configured and one was made up for this process.
    pub ephemeral: bool,
}

/// Shortest key accepted (HS256 wants at least the hash's 256 bits).
const MIN_KEY_BYTES: usize = 32;

impl Keys {
    /// Parses `kid:base64-secret[,kid:base64-secret...]` (standard or URL-safe base64; the
    /// first key signs). `None` makes an ephemeral key: tokens die with the process.
    pub fn parse(spec: Option<&str>) -> Result<Keys, String> {
        let Some(spec) = spec.map(str::trim).filter(|s| !s.is_empty()) else {
            let secret = random_bytes(48);
            let kid = format!("ephemeral-{}", &random_token()[..8]);
            let mut verifying = HashMap::new();
            verifying.insert(kid.clone(), DecodingKey::from_secret(&secret));
            return Ok(Keys {
                signing: (kid, EncodingKey::from_secret(&secret)),
                verifying,
                ephemeral: true,
            });
        };
        let mut signing = None;
        let mut verifying = HashMap::new();
        for part in spec.split(',') {
            let (kid, secret) = part.trim().split_once(':').ok_or_else(|| {
                "YBA_TOKEN_KEYS must be kid:base64-secret pairs separated by commas".to_string()
            })?;
            let kid = kid.trim();
            let secret = decode_base64(secret.trim())
                .ok_or_else(|| format!("the token key '{kid}' is not base64"))?;
            if kid.is_empty() || secret.len() < MIN_KEY_BYTES {
                return Err(format!(
                    "the token key '{kid}' must have a name and at least {MIN_KEY_BYTES} bytes"
                ));
            }
            if verifying.contains_key(kid) {
                return Err(format!("the token key '{kid}' is given twice"));
            }
            verifying.insert(kid.to_string(), DecodingKey::from_secret(&secret));
            if signing.is_none() {
                signing = Some((kid.to_string(), EncodingKey::from_secret(&secret)));
            }
        }
        let signing = signing.ok_or("YBA_TOKEN_KEYS names no key")?;
        Ok(Keys {
            signing,
            verifying,
            ephemeral: false,
        })
    }

    /// Signs claims with the current key.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, String> {
        self.sign_claims(claims)
    }

    /// Signs any claims with the current key (access tokens, consultation join tokens).
    pub fn sign_claims<T: Serialize>(&self, claims: &T) -> Result<String, String> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing.0.clone());
        jsonwebtoken::encode(&header, claims, &self.signing.1).map_err(|e| e.to_string())
    }

    /// Verifies an access token: a known `kid`, a good signature, not expired, ours.
    pub fn verify(&self, token: &str, issuer: &str) -> Result<AccessClaims, TokenError> {
        self.verify_claims(token, issuer, AUDIENCE)
    }

    /// Verifies a token of this server for `audience`: a known `kid`, a good signature, not
    /// expired (5 s of leeway), with `exp`, `iss`, `aud` and `sub`.
    pub fn verify_claims<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<T, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Forged);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|k| self.verifying.get(k))
            .ok_or(TokenError::Forged)?;
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        v.set_issuer(&[issuer]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<T>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidSignature
                | jsonwebtoken::errors::ErrorKind::InvalidIssuer
                | jsonwebtoken::errors::ErrorKind::InvalidAudience => TokenError::Forged,
                _ => TokenError::Malformed,
            })
    }
}

/// The audience of our access tokens: this server's FHIR API.
pub const AUDIENCE: &str = "yba-fhir";

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    Expired,
    Forged,
    Revoked,
}

impl TokenError {
    pub fn describe(self) -> &'static str {
        match self {
            TokenError::Malformed => "the access token is not a token of this server",
            TokenError::Expired => "the access token has expired",
            TokenError::Forged => "the access token's signature is not valid",
            TokenError::Revoked => "the access token has been revoked",
        }
    }
}

/// What an access token carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The username, or the client id of a system.
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    /// The sign-in session the token belongs to (revoking it ends the token).
    pub sid: String,
    pub scope: String,
    /// `patient`, `practitioner`, `pharmacist`, `admin` or `system`.
    pub role: String,
    pub client_id: String,
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// `Organization/x`, for those who act for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The patient in context (the signed-in patient), as a bare id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
}

/// Claims of a SMART Backend Services client assertion.
#[derive(Debug, Deserialize)]
struct Assertion {
    jti: String,
    exp: u64,
}

/// Why a client assertion was refused (described to the client, not more precisely than this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionError(pub String);

/// Verifies a client assertion (RS384 or ES384) against the client's PEM public key: issuer
/// and subject the client, audience the token endpoint, at most five minutes of life. Returns
/// the `jti` and expiry (seconds) for replay checks.
pub fn verify_assertion(
    token: &str,
    public_key_pem: &str,
    client_id: &str,
    token_urls: &[String],
) -> Result<(String, u64), AssertionError> {
    let bad = |m: &str| AssertionError(m.to_string());
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| bad("the client assertion is not a JWT"))?;
    let key = match header.alg {
        Algorithm::RS384 => DecodingKey::from_rsa_pem(public_key_pem.as_bytes()),
        Algorithm::ES384 => DecodingKey::from_ec_pem(public_key_pem.as_bytes()),
        _ => return Err(bad("client assertions must be signed with RS384 or ES384")),
    }
    .map_err(|_| bad("the client's registered key does not fit the assertion's algorithm"))?;
    let mut v = Validation::new(header.alg);
    v.leeway = 5;
    v.set_issuer(&[client_id]);
    v.sub = Some(client_id.to_string());
    v.set_audience(token_urls);
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud", "jti"]);
    let data = jsonwebtoken::decode::<Assertion>(token, &key, &v)
        .map_err(|_| bad("the client assertion is not valid (signature, iss, sub, aud or exp)"))?;
    let now = jsonwebtoken::get_current_timestamp();
    if data.claims.exp > now + 300 {
        return Err(bad("a client assertion may live at most five minutes"));
    }
    Ok((data.claims.jti, data.claims.exp))
}

/// Checks that a PEM is a public key a client assertion can be verified with.
pub fn check_public_key(pem: &str) -> Result<(), String> {
    if DecodingKey::from_rsa_pem(pem.as_bytes()).is_ok()
        || DecodingKey::from_ec_pem(pem.as_bytes()).is_ok()
    {
        Ok(())
    } else {
        Err("the public key must be an RSA or EC (P-384) public key in PEM".into())
    }
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    STANDARD
        .decode(s)
        .or_else(|_| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')))
        .ok()
}

/// Random bytes from the operating system (two v4 UUIDs per 32 bytes, 244 random bits).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    out.truncate(n);
    out
}

/// An unguessable token (refresh tokens, session ids, secrets): 256 bits, URL-safe.
pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(32))
}

/// How a refresh token is kept: its SHA-256, hex (the token itself has 256 random bits, so a
/// slow hash adds nothing).
pub fn digest(token: &str) -> String {
    let d = sha2::Sha256::digest(token.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> AccessClaims {
        AccessClaims {
            iss: "https://ehr.example.vn".into(),
            aud: AUDIENCE.into(),
            sub: "079085001234".into(),
            iat: exp - 300,
            exp,
            jti: "j".into(),
            sid: "s".into(),
            scope: "patient/*.rs".into(),
            role: "patient".into(),
            client_id: "app".into(),
            fhir_user: Some("Patient/p1".into()),
            org: None,
            patient: Some("p1".into()),
        }
    }

    #[test]
    fn tokens_verify_across_a_key_rotation_and_not_after() {
        let old = "k1:".to_string() + &base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let new = "k2:".to_string() + &base64::engine::general_purpose::STANDARD.encode([2u8; 32]);
        let before = Keys::parse(Some(&old)).unwrap();
        let during = Keys::parse(Some(&format!("{new},{old}"))).unwrap();
        let after = Keys::parse(Some(&new)).unwrap();
        let iss = "https://ehr.example.vn";
        let c = claims(jsonwebtoken::get_current_timestamp() + 300);
        let t = before.sign(&c).unwrap();
        assert_eq!(during.verify(&t, iss).unwrap(), c);
        assert_eq!(after.verify(&t, iss), Err(TokenError::Forged));
        assert_eq!(during.verify(&t, "https://other"), Err(TokenError::Forged));
        let t2 = during.sign(&c).unwrap();
        assert_eq!(after.verify(&t2, iss).unwrap(), c);
        let expired = before
            .sign(&claims(jsonwebtoken::get_current_timestamp() - 60))
            .unwrap();
        assert_eq!(before.verify(&expired, iss), Err(TokenError::Expired));
        assert_eq!(
            before.verify("not.a.token", iss),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn weak_or_malformed_keys_are_refused() {
        assert!(Keys::parse(Some("k1:c2hvcnQ=")).is_err());
        assert!(Keys::parse(Some("no-colon")).is_err());
        assert!(Keys::parse(None).unwrap().ephemeral);
    }
}
