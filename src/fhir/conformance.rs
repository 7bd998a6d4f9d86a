//! What a resource must meet beyond the R4 structure to be written here: the profiles it claims
//! in `meta.profile` that the server knows, the profiles an administrator made compulsory for its
//! type (VN Patient by default), and the Vietnamese identifier rules that depend on settings (a
//! citizen ID against birth date and gender: an error, or a warning for legacy imports).
//!
//! The profiles, ValueSets and CodeSystems come from `fhir-profiles/vn` (built in) and from the
//! StructureDefinition, ValueSet and CodeSystem resources written to the server, which are in
//! force from the moment they are written (and, after a restart, once `load_stored` has run).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use super::datetime::{format_instant, now_millis};
use super::outcome::{Issue, Severity};
use super::profile::Registry;
use super::vn_rules;
use crate::error::{Error, Result};
use crate::store::{SearchQuery, Store};

/// The canonical URL of our VN Patient profile.
pub const VN_PATIENT: &str = "https://yba.vn/fhir/StructureDefinition/vn-patient";

/// Conformance resources that ship with the server.
const BUILT_IN: [&str; 2] = [
    include_str!("../../fhir-profiles/vn/profiles.json"),
    include_str!("../../fhir-profiles/vn/terminology.json"),
];

/// The types whose resources can put profiles and terminology in force.
pub const DEFINING_TYPES: [&str; 3] = ["StructureDefinition", "ValueSet", "CodeSystem"];

/// Settings of the checks.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `(type, profile url)`: every resource of the type must meet the profile.
    pub always: Vec<(String, String)>,
    /// A citizen ID that disagrees with birth date or gender is a warning, not an error.
    pub lenient_citizen_id: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            always: vec![("Patient".into(), VN_PATIENT.into())],
            lenient_citizen_id: false,
        }
    }
}

pub struct Conformance {
    rules: Rules,
    registry: RwLock<Registry>,
    /// The canonical URL each stored defining resource (`type/id`) put in force.
    stored: RwLock<HashMap<String, String>>,
}

impl Conformance {
    pub fn new(rules: Rules) -> Arc<Conformance> {
        let mut registry = Registry::default();
        for bundle in BUILT_IN {
            let b: Value = serde_json::from_str(bundle).expect("built-in profiles are JSON");
            for e in b["entry"].as_array().into_iter().flatten() {
                registry
                    .learn(&e["resource"])
                    .expect("built-in profiles compile");
            }
        }
        Arc::new(Conformance {
            rules,
            registry: RwLock::new(registry),
            stored: RwLock::new(HashMap::new()),
        })
    }

    /// Every issue of `value` (of type `ty`, at FHIRPath `at`) beyond its R4 structure: the
    /// profiles it claims, the compulsory ones of its type, `extra` (`$validate`'s `profile`),
    /// and the identifier rules. Errors and warnings alike.
    pub fn check(&self, ty: &str, value: &Value, at: &str, extra: Option<&str>) -> Vec<Issue> {
        let Some(obj) = value.as_object() else {
            return Vec::new();
        };
        let mut issues = Vec::new();
        if ty == "Patient" {
            issues.extend(vn_rules::agreement(obj, at, self.rules.lenient_citizen_id));
        }
        let registry = self.registry();
        let mut profiles: Vec<&str> = Vec::new();
        for p in value
            .pointer("/meta/profile")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            // A profile the server does not know (another IG's) is not checked, as HAPI does;
            // `$validate` says so.
            if registry.profile(p).is_some() {
                profiles.push(p);
            } else {
                issues.push(
                    Issue::error(
                        "not-supported",
                        format!("the profile {p} is not known to this server; not checked"),
                    )
                    .warning()
                    .at(format!("{at}.meta.profile")),
                );
            }
        }
        for (t, p) in &self.rules.always {
            if t == ty {
                profiles.push(p);
            }
        }
        if let Some(p) = extra {
            profiles.push(p);
        }
        profiles.sort_unstable();
        profiles.dedup();
        for p in profiles {
            issues.extend(registry.validate(p, value, at));
            if p.split('|').next() == Some(VN_PATIENT) {
                let today = &format_instant(now_millis())[..10];
                issues.extend(vn_rules::adult_identified(obj, at, today));
            }
        }
        issues
    }

    /// The profile every resource of `ty` must meet, if one is compulsory.
    pub fn compulsory(&self, ty: &str) -> Option<&str> {
        self.rules
            .always
            .iter()
            .find(|(t, _)| t == ty)
            .map(|(_, p)| p.as_str())
    }

    /// The profiles and terminology in force.
    pub fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `value` may be written: Err with the errors if it has any.
    pub fn admit(&self, ty: &str, value: &Value, at: &str) -> Result<()> {
        let issues = self.check(ty, value, at, None);
        if issues.iter().any(|i| i.severity == Severity::Error) {
            return Err(Error::Invalid(
                issues
                    .into_iter()
                    .filter(|i| i.severity == Severity::Error)
                    .collect(),
            ));
        }
        Ok(())
    }

    /// Checks a defining resource before it is written: a StructureDefinition must compile.
    pub fn check_definition(&self, ty: &str, value: &Value, at: &str) -> Result<()> {
        if ty == "StructureDefinition" {
            Registry::default().learn(value).map_err(|e| {
                Error::invalid_at(
                    "invalid",
                    format!("the StructureDefinition cannot be used: {e}"),
                    at,
                )
            })?;
        }
        Ok(())
    }

    /// Puts a written defining resource in force (or, for a deletion, out of it).
    pub fn learn(&self, ty: &str, id: &str, body: Option<&str>) {
        if !DEFINING_TYPES.contains(&ty) {
            return;
        }
        let key = format!("{ty}/{id}");
        let mut registry = self.registry.write().unwrap_or_else(|e| e.into_inner());
        let mut stored = self.stored.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = stored.remove(&key) {
            registry.forget(&old);
        }
        let Some(value) = body.and_then(|b| serde_json::from_str::<Value>(b).ok()) else {
            return;
        };
        match registry.learn(&value) {
            Ok(Some(url)) => {
                stored.insert(key, url);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(resource = %key, "not put in force: {e}"),
        }
    }

    /// Puts the stored defining resources in force (at start-up).
    pub async fn load_stored(&self, store: &Store) -> Result<usize> {
        let rows = store
            .read(|s| {
                Ok::<_, Error>(s.search(&SearchQuery::unsorted(
                    DEFINING_TYPES.iter().map(|t| t.to_string()).collect(),
                    Vec::new(),
                    100_000,
                ))?)
            })
            .await?;
        for r in &rows {
            self.learn(&r.res_type, &r.res_id, Some(&r.body));
        }
        Ok(rows.len())
    }
}
