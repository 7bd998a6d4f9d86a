//! The error every layer returns. `api::error` is the one place that turns it into an HTTP status
//! and an OperationOutcome.

use crate::fhir::outcome::Issue;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request or resource is malformed (400): each issue says what and where.
    #[error("invalid request")]
    Invalid(Vec<Issue>),
    /// No such resource or type (404).
    #[error("{0}")]
    NotFound(String),
    /// The resource was deleted (410).
    #[error("{0}")]
    Gone(String),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The write would make a second record of something that must have one (409), such as a
    /// second active Patient with the same citizen ID; the issues point at the existing record.
    #[error("duplicate record")]
    Duplicate(Vec<Issue>),
    /// A well-formed request that breaks a business rule (422), such as an e-prescription over
    /// the legal duration: one issue per rule broken, citing it.
    #[error("business rule broken")]
    Unprocessable(Vec<Issue>),
    /// A precondition (`If-Match`, a conditional match count) failed (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// The access policy or the token's scopes do not allow it (403).
    #[error("{0}")]
    Forbidden(String),
    /// No valid access token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid request the server does not implement (501).
    #[error("{0}")]
    NotImplemented(String),
    /// One entry of a transaction failed; the whole transaction was rolled back.
    #[error("entry {index}: {source}")]
    Entry { index: usize, source: Box<Error> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// A 400 with one issue.
    pub fn invalid(code: &'static str, msg: impl Into<String>) -> Error {
        Error::Invalid(vec![Issue::error(code, msg)])
    }

    /// A 400 with one issue at a FHIRPath location.
    pub fn invalid_at(code: &'static str, msg: impl Into<String>, at: impl Into<String>) -> Error {
        Error::Invalid(vec![Issue::error(code, msg).at(at)])
    }

    /// Whether a retry of the whole operation may succeed (a concurrent write won).
    pub fn is_conflict(&self) -> bool {
        match self {
            Error::Store(StoreError::Conflict) => true,
            Error::Entry { source, .. } => source.is_conflict(),
            _ => false,
        }
    }

    /// The HTTP status of the error (R4 §3.1.0.1.7 and the interaction pages).
    pub fn status(&self) -> u16 {
        match self {
            Error::Invalid(_) => 400,
            Error::NotFound(_) => 404,
            Error::Gone(_) => 410,
            Error::Conflict(_) | Error::Duplicate(_) => 409,
            Error::Unprocessable(_) => 422,
            Error::PreconditionFailed(_) => 412,
            Error::NotImplemented(_) => 501,
            Error::Forbidden(_) => 403,
            Error::Unauthorized(_) => 401,
            Error::Entry { source, .. } => source.status(),
            Error::Store(StoreError::Conflict) => 409,
            Error::Store(StoreError::Unavailable(_)) => 503,
            Error::Store(StoreError::TooCostly(_)) => 400,
            Error::Store(_) => 500,
        }
    }

    /// The issues of the OperationOutcome that reports the error. Server faults say little:
    /// their detail goes to the log, not to the client.
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            Error::Invalid(issues) | Error::Duplicate(issues) | Error::Unprocessable(issues) => {
                issues.clone()
            }
            Error::NotFound(m) => vec![Issue::error("not-found", m.clone())],
            Error::Gone(m) => vec![Issue::error("deleted", m.clone())],
            Error::Conflict(m) => vec![Issue::error("conflict", m.clone())],
            Error::PreconditionFailed(m) => vec![Issue::error("conflict", m.clone())],
            Error::NotImplemented(m) => vec![Issue::error("not-supported", m.clone())],
            Error::Forbidden(m) => vec![Issue::error("forbidden", m.clone())],
            Error::Unauthorized(m) => vec![Issue::error("login", m.clone())],
            Error::Entry { index, source } => source
                .issues()
                .into_iter()
                .map(|mut i| {
                    i.diagnostics = format!("Bundle.entry[{index}]: {}", i.diagnostics);
                    if i.expression.is_none() {
                        i.expression = Some(format!("Bundle.entry[{index}]"));
                    }
                    i
                })
                .collect(),
            Error::Store(StoreError::Conflict) => {
                vec![Issue::error(
                    "conflict",
                    "a concurrent write changed the same resource; try again",
                )]
            }
            Error::Store(StoreError::Unavailable(_)) => {
                vec![Issue::error(
                    "transient",
                    "the database is unavailable; try again later",
                )]
            }
            Error::Store(StoreError::TooCostly(ms)) => vec![Issue::error(
                "too-costly",
                format!(
                    "the search ran longer than the server's limit ({ms} ms) and was stopped; \
                     narrow it with more selective criteria"
                ),
            )],
            Error::Store(_) => vec![Issue::error(
                "exception",
                "internal error: the database failed",
            )],
        }
    }

    /// The innermost error (inside transaction entry wrappers).
    pub fn root(&self) -> &Error {
        match self {
            Error::Entry { source, .. } => source.root(),
            e => e,
        }
    }
}

impl From<Vec<Issue>> for Error {
    fn from(issues: Vec<Issue>) -> Self {
        Error::Invalid(issues)
    }
}

impl From<Issue> for Error {
    fn from(issue: Issue) -> Self {
        Error::Invalid(vec![issue])
    }
}

pub type Result<T> = std::result::Result<T, Error>;
