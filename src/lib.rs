//! yba — an electronic health record server for Vietnam: FHIR R4 over HTTP, on SQLite or PostgreSQL.
//!
//! # Layout
//! - [`api`]: the HTTP edge (actix-web): routing, content negotiation, FHIR REST interactions,
//!   health and metrics endpoints. The only module that knows HTTP.
//! - [`fhir`]: FHIR semantics without HTTP or SQL: the R4 element table, strict parsing and
//!   validation with FHIRPath locations, JSON/XML through fhirbolt, the interactions (create,
//!   update, history, ...), Bundle processing, OperationOutcome, the CapabilityStatement.
//! - [`store`]: the only module that knows SQL (diesel): SQLite and PostgreSQL, migrations, the
//!   versioned resource table and its indexes.
//! - [`vn`]: Vietnamese identifiers as validated types (citizen ID, health-insurance card,
//!   facility code), each rule with its legal source.
//! - [`sync`]: a commune node's sync with its upstream server (push, pull, conflicts).
//! - [`config`], [`error`], [`telemetry`]: settings from flags and environment, the error type
//!   every layer returns, logs and metrics.
//!
//! Dependencies point down: `api` → `fhir` → `store`.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod fhir;
pub mod prescribing;
pub mod store;
pub mod sync;
pub mod telehealth;
pub mod telemetry;
pub mod vn;

/// A builder of clients for the server's own outgoing HTTP(S) (`$import` inputs, Subscription
/// notifications): rustls on the `ring` provider, installed once, and the system's trust store.
pub fn http_client() -> reqwest::ClientBuilder {
    install_tls();
    reqwest::Client::builder()
}

/// Installs rustls's `ring` provider for the process (once; a provider installed already is as
/// good). Every reqwest client in the process needs one, the server's own and any beside it.
pub fn install_tls() {
    static TLS: std::sync::Once = std::sync::Once::new();
    TLS.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
