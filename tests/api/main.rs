//! Integration tests: the real server over HTTP, on SQLite always and on PostgreSQL when it is
//! reachable (required in CI). One test binary, so it links once.

mod helpers;

mod access;
mod auth;
mod browser;
mod bundles;
mod calls;
mod conditional;
mod consultations;
mod crud;
mod errors;
mod examples;
mod export;
mod formats;
mod history;
mod identity;
mod import;
mod mpi;
mod ops;
mod prescribing;
mod profiles;
mod search;
mod signaling;
mod subscriptions;
mod sync;
mod vn;
