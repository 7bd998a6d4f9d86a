//! Compartments (R4 §3.1.0.4.1): which resources belong to a patient's (or an encounter's,
//! practitioner's, related person's, device's) compartment, from the official
//! CompartmentDefinition resources (`fhir-profiles/r4/compartments.json`, extracted by
//! `fhir-profiles/tools/extract_r4_compartments.py`).
//!
//! A resource is in `Patient/123`'s compartment when one of the search parameters its type
//! lists there points at `Patient/123` (an Observation through `subject` or `performer`, a
//! MedicationRequest through `subject`, ...), and `Patient/123` is in its own. A resource that
//! merely mentions the patient elsewhere is not.

use std::collections::BTreeMap;
use std::sync::OnceLock;

static COMPARTMENTS_JSON: &str = include_str!("../../fhir-profiles/r4/compartments.json");

#[derive(serde::Deserialize)]
struct Table {
    compartments: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

fn table() -> &'static BTreeMap<String, BTreeMap<String, Vec<String>>> {
    static TABLE: OnceLock<BTreeMap<String, BTreeMap<String, Vec<String>>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t: Table =
            serde_json::from_str(COMPARTMENTS_JSON).expect("compartments.json is valid");
        // `{def}` means the compartment's own resource, which is in it by identity.
        for types in t.compartments.values_mut() {
            for params in types.values_mut() {
                params.retain(|p| !p.starts_with('{'));
            }
            types.retain(|_, params| !params.is_empty());
        }
        t.compartments
    })
}

/// Whether `ty` names a compartment (Patient, Encounter, RelatedPerson, Practitioner, Device).
pub fn is_compartment(ty: &str) -> bool {
    table().contains_key(ty)
}

/// The resource types in `compartment` with the parameters that link each to its owner,
/// narrowed to `types` (all of them when `types` is empty).
pub fn links(compartment: &str, types: &[String]) -> Vec<(String, Vec<String>)> {
    let Some(members) = table().get(compartment) else {
        return Vec::new();
    };
    members
        .iter()
        .filter(|(ty, _)| types.is_empty() || types.iter().any(|t| t == *ty))
        .map(|(ty, params)| (ty.clone(), params.clone()))
        .collect()
}

/// Whether resources of `ty` can be in `compartment` (the owner's own type always can).
pub fn holds(compartment: &str, ty: &str) -> bool {
    compartment == ty || table().get(compartment).is_some_and(|m| m.contains_key(ty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_compartment_follows_the_definition() {
        let obs = links("Patient", &["Observation".to_string()]);
        assert_eq!(
            obs,
            [(
                "Observation".to_string(),
                vec!["subject".to_string(), "performer".to_string()]
            )]
        );
        assert!(holds("Patient", "MedicationRequest"));
        assert!(holds("Patient", "Patient"));
        assert!(!holds("Patient", "Practitioner"));
        assert!(!holds("Patient", "Organization"));
        assert!(links("Patient", &[]).len() > 60);
        assert!(is_compartment("Encounter"));
        assert!(!is_compartment("Observation"));
    }
}
