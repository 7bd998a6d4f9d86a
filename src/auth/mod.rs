//! Who may see what (issue 5): accounts and OAuth clients, SMART scopes, tokens, the access
//! policy every FHIR interaction passes through, and the audit trail.
//!
//! - `password`: argon2id hashes and password rules.
//! - `scopes`: SMART v2 scopes.
//! - `token`: signed access tokens with rotating keys, refresh tokens, client assertions.
//! - `throttle`: login back-off per account and per address.
//! - `service`: accounts, clients, the token grants and token checks.
//! - `policy`: the access policy (the one place that decides who reads and writes what).
//! - `audit`: the append-only trail, kept as FHIR AuditEvents.

pub mod audit;
pub mod password;
pub mod policy;
pub mod ratelimit;
pub mod scopes;
pub mod service;
pub mod throttle;
pub mod token;

use scopes::{Context, Scopes};

/// What a signed-in party is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Patient,
    Practitioner,
    Pharmacist,
    Admin,
    /// A hospital system (an OAuth client acting for its organization).
    System,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "patient" => Role::Patient,
            "practitioner" => Role::Practitioner,
            "pharmacist" => Role::Pharmacist,
            "admin" => Role::Admin,
            "system" => Role::System,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Practitioner => "practitioner",
            Role::Pharmacist => "pharmacist",
            Role::Admin => "admin",
            Role::System => "system",
        }
    }

    /// The scope context this role's tokens use.
    pub fn context(self) -> Context {
        match self {
            Role::Patient => Context::Patient,
            Role::System => Context::System,
            _ => Context::User,
        }
    }

    /// The most a person of this role may be granted.
    pub fn ceiling(self) -> Scopes {
        Scopes::parse(match self {
            Role::Patient => {
                "openid fhirUser launch/patient offline_access online_access patient/*.rs patient/Consent.cruds"
            }
            Role::Practitioner | Role::Admin => {
                "openid fhirUser offline_access online_access user/*.cruds"
            }
            Role::Pharmacist => {
                "openid fhirUser offline_access online_access user/*.rs user/MedicationDispense.cruds"
            }
            Role::System => "system/*.cruds",
        })
    }
}

/// The party behind a request, from its access token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub role: Role,
    /// The username, or a system's client id.
    pub subject: String,
    pub client_id: String,
    /// `Patient/1`, `Practitioner/7`...
    pub fhir_user: Option<String>,
    /// `Organization/9`, for those acting for one.
    pub organization: Option<String>,
    /// The signed-in patient's id.
    pub patient: Option<String>,
    pub scopes: Scopes,
    /// The sign-in session.
    pub sid: String,
    /// A break-glass reason, when the request claims an emergency.
    pub break_glass: Option<String>,
    /// The caller's network address.
    pub address: Option<String>,
}

impl Principal {
    /// Builds the principal of verified token claims.
    pub fn from_claims(c: token::AccessClaims) -> Option<Principal> {
        let role = Role::parse(&c.role)?;
        Some(Principal {
            role,
            scopes: Scopes::parse(&c.scope),
            subject: c.sub,
            client_id: c.client_id,
            fhir_user: c.fhir_user,
            organization: c.org,
            patient: c.patient,
            sid: c.sid,
            break_glass: None,
            address: None,
        })
    }
}
