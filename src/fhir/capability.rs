//! The CapabilityStatement (`GET /fhir/metadata`), generated from what this server implements:
//! when an interaction is added, it is added here, and the tests read it back.

use serde_json::{Value, json};

use super::datetime::{format_instant, now_millis};
use super::schema::R4;

/// Interactions every resource type supports.
const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// The CapabilityStatement of this server at `base`, as FHIR JSON.
pub fn capability_statement(base: &str) -> Value {
    let resources: Vec<Value> = R4
        .resource_types()
        .iter()
        .map(|ty| {
            json!({
                "type": ty,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{ty}"),
                "interaction": TYPE_INTERACTIONS.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "full-support",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "logical"],
                "searchParam": [
                    {"name": "_id", "type": "token", "documentation": "The logical id of the resource"},
                    {"name": "identifier", "type": "token",
                     "documentation": "The resource's business identifier (system|value, |value or value); other search parameters arrive with full search"}
                ]
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": format_instant(now_millis()),
        "publisher": "yba",
        "kind": "instance",
        "software": {"name": "yba", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "yba FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml", "json", "xml"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "documentation": "Unsupported search parameters are refused with 400 and an OperationOutcome; _text, _content, _tag, _profile, _security, _source, _lastUpdated and the full search arrive with the search issue.",
            "resource": resources,
            "interaction": [
                {"code": "transaction"},
                {"code": "batch"},
                {"code": "history-system"}
            ]
        }]
    })
}
