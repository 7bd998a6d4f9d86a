//! FHIR semantics, without HTTP and without SQL.
//!
//! - `schema`: the R4 element table (from the official StructureDefinitions).
//! - `primitive`, `datetime`: lexical rules of primitive types; dates as instant ranges.
//! - `validate`: strict structural validation with FHIRPath locations.
//! - `format`: JSON and XML through fhirbolt; `xml_check` locates problems in XML.
//! - `links`: references and uri values inside a resource.
//! - `condition`: criteria of conditional interactions.
//! - `interactions`: create, read, update, patch, delete, history.
//! - `fhirpath`: the FHIRPath engine; `fhirpath_patch`: FHIRPath Patch.
//! - `search`: search parameters, index extraction, search requests.
//! - `bundle`, `bundle_out`: transaction and batch processing; response Bundles.
//! - `capability`: the CapabilityStatement.
//! - `outcome`: OperationOutcome.

pub mod bundle;
pub mod bundle_out;
pub mod capability;
pub mod compartment;
pub mod condition;
pub mod conformance;
pub mod datetime;
pub mod fhirpath;
pub mod fhirpath_patch;
pub mod format;
pub mod identity;
pub mod import;
pub mod interactions;
pub mod links;
pub mod mpi;
pub mod outcome;
pub mod primitive;
pub mod profile;
pub mod schema;
pub mod search;
pub mod subscription;
pub mod validate;
pub mod vn_rules;
pub mod xml_check;

pub use format::Format;
pub use interactions::{Fhir, Patch, Stored, Written};

/// The `(system, code)` pairs of a CodeableConcept.
pub fn codings(concept: &serde_json::Value) -> impl Iterator<Item = (&str, &str)> {
    concept
        .get("coding")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c.get("system")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or(""),
                c.get("code")?.as_str()?,
            ))
        })
}

/// The value of a resource's first `identifier` in `system`.
pub fn identifier_value<'a>(resource: &'a serde_json::Value, system: &str) -> Option<&'a str> {
    resource
        .get("identifier")?
        .as_array()?
        .iter()
        .find(|i| i.get("system").and_then(serde_json::Value::as_str) == Some(system))?
        .get("value")?
        .as_str()
}
