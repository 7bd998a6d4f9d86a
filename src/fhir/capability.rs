//! The CapabilityStatement (`GET /fhir/metadata`), generated from what this server implements:
//! when an interaction is added, it is added here, and the tests read it back.

use serde_json::{Value, json};

use super::conformance::Conformance;
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

/// The CapabilityStatement of this server at `base`, as FHIR JSON: `conformance` says which
/// profiles are compulsory (`profile`) and which the server can check (`supportedProfile`).
pub fn capability_statement(base: &str, conformance: &Conformance) -> Value {
    let registry = conformance.registry();
    let resources: Vec<Value> = R4
        .resource_types()
        .iter()
        .map(|ty| {
            let profile = conformance
                .compulsory(ty)
                .map_or_else(|| format!("http://hl7.org/fhir/StructureDefinition/{ty}"), str::to_string);
            let mut supported: Vec<&str> = registry.profiles_of(ty).collect();
            supported.sort_unstable();
            let mut r = json!({
                "type": ty,
                "profile": profile,
                "interaction": TYPE_INTERACTIONS.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "full-support",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "logical"],
                "searchParam": search_params(ty),
                "searchInclude": ["*", format!("{ty}:*")],
                "searchRevInclude": ["*"],
            });
            if !supported.is_empty() {
                r["supportedProfile"] = json!(supported);
            }
            let mut ops = vec![json!({
                "name": "validate",
                "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"
            })];
            if *ty == "Patient" {
                ops.extend([
                    json!({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"}),
                    json!({"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}),
                    json!({"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match"}),
                    json!({"name": "merge", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-merge"}),
                ]);
            }
            if *ty == "Group" {
                ops.push(json!({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}));
            }
            if *ty == "MedicationRequest" {
                // The e-prescription operations (`crate::prescribing`).
                ops.extend(["prescribe", "cancel", "status", "national-export"].map(|op| {
                    json!({"name": op, "definition": format!("https://yba.vn/fhir/OperationDefinition/MedicationRequest-{op}")})
                }));
            }
            r["operation"] = json!(ops);
            r
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
        "patchFormat": ["application/json-patch+json", "application/fhir+json", "application/fhir+xml"],
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "rest": [{
            "mode": "server",
            // R4 Subscriptions: where the websocket channel binds.
            "extension": [{
                "url": "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket",
                "valueUri": format!("{}/websocket", base.replacen("http", "ws", 1))
            }],
            "documentation": "Search: every R4 search parameter listed per resource, with modifiers :missing (all), :exact :contains (string), :not :text :of-type (token; of-type on identifier), :Type :identifier (reference), :above :below (uri); prefixes eq ne gt lt ge le sa eb ap on date, number and quantity; chains, _has, _include/_revinclude (with :iterate), _sort (several keys, - for descending, missing values last), _count with next and previous links, _total, _summary, _elements, _type at system level, Patient/[id]/$everything (the compartment and the non-patient resources it refers to) and compartment searches ([compartment]/[id]/[type]) as the R4 CompartmentDefinitions define them. On PostgreSQL a search statement that runs past YBA_SEARCH_TIMEOUT is stopped with a too-costly OperationOutcome. Not supported: _text, _content, _query, _list, _filter (ignored, or refused with Prefer: handling=strict), :in/:not-in/:above/:below on tokens, Location near. Unknown parameters are ignored and reported in an OperationOutcome entry unless Prefer: handling=strict.",
            "resource": resources,
            "compartment": [
                "http://hl7.org/fhir/CompartmentDefinition/patient",
                "http://hl7.org/fhir/CompartmentDefinition/encounter",
                "http://hl7.org/fhir/CompartmentDefinition/relatedPerson",
                "http://hl7.org/fhir/CompartmentDefinition/practitioner",
                "http://hl7.org/fhir/CompartmentDefinition/device"
            ],
            "searchParam": [
                {"name": "_id", "type": "token"},
                {"name": "_lastUpdated", "type": "date"},
                {"name": "_type", "type": "token"}
            ],
            "operation": [
                {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
                {"name": "import", "definition": "https://yba.vn/fhir/OperationDefinition/import"}
            ],
            "interaction": [
                {"code": "search-system"},
                {"code": "transaction"},
                {"code": "batch"},
                {"code": "history-system"}
            ]
        }]
    })
}

/// The search parameters of a type that work, as CapabilityStatement entries.
fn search_params(ty: &str) -> Vec<Value> {
    use super::search::registry::{ParamType, registry};
    let reg = registry();
    let Some(params) = reg.for_type(ty) else {
        return Vec::new();
    };
    let mut list: Vec<Value> = params
        .by_code
        .values()
        .filter(|p| {
            p.ty != ParamType::Special
                && (p.expr.is_some() || p.code == "_id" || p.code == "_lastUpdated")
        })
        .map(|p| json!({"name": p.code, "definition": p.url, "type": p.ty.name()}))
        .collect();
    list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    list
}
