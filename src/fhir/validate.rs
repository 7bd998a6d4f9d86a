//! Structural validation of a resource in FHIR JSON against the R4 element table.
//!
//! Every element is checked: known name, array or single value, JSON type, the primitive's lexical
//! form, required elements, one variant per choice. Each problem names its place as a FHIRPath
//! expression (`Patient.name[0].given[1]`), which fhirbolt's own errors do not. The walk reuses
//! one path buffer, so a valid resource costs no allocation beyond the issue list.

use serde_json::{Map, Value};

use super::outcome::Issue;
use super::primitive;
use super::schema::{Element, Primitive, R4, Schema, TypeDef, TypeRef};

/// The most problems reported for one resource; the rest are summarised.
const MAX_ISSUES: usize = 50;

/// Validates a resource. Returns its type name, or every problem found.
pub fn resource(value: &Value) -> Result<&'static str, Vec<Issue>> {
    let mut v = Walker {
        schema: &R4,
        issues: Vec::new(),
        path: String::with_capacity(64),
    };
    let ty = v.resource(value);
    match ty {
        Some(t) if v.issues.is_empty() => Ok(t),
        _ => {
            if v.issues.is_empty() {
                v.issues
                    .push(Issue::error("structure", "not a FHIR resource"));
            }
            Err(v.issues)
        }
    }
}

struct Walker<'s> {
    schema: &'s Schema,
    issues: Vec<Issue>,
    path: String,
}

impl Walker<'_> {
    fn issue(&mut self, code: &'static str, msg: String) {
        if self.issues.len() < MAX_ISSUES {
            let at = if self.path.is_empty() {
                None
            } else {
                Some(self.path.clone())
            };
            self.issues.push(Issue {
                expression: at,
                ..Issue::error(code, msg)
            });
        }
    }

    /// Appends `.name` (or `name` at the root) to the path; returns the length to truncate back to.
    fn push(&mut self, name: &str) -> usize {
        let len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(name);
        len
    }

    fn push_index(&mut self, i: usize) -> usize {
        let len = self.path.len();
        use std::fmt::Write;
        let _ = write!(self.path, "[{i}]");
        len
    }

    fn resource(&mut self, value: &Value) -> Option<&'static str> {
        let Value::Object(obj) = value else {
            self.issue(
                "structure",
                format!(
                    "a resource must be a JSON object, found {}",
                    primitive::kind(value)
                ),
            );
            return None;
        };
        let name = match obj.get("resourceType") {
            Some(Value::String(s)) => s,
            Some(other) => {
                self.issue(
                    "structure",
                    format!(
                        "resourceType must be a string, found {}",
                        primitive::kind(other)
                    ),
                );
                return None;
            }
            None => {
                self.issue(
                    "required",
                    "resourceType is missing: a resource names its type".to_string(),
                );
                return None;
            }
        };
        let Some(ty) = self.schema.resource_type(name) else {
            self.issue(
                "not-supported",
                format!("'{name}' is not a FHIR R4 resource type"),
            );
            return None;
        };
        let def = self.schema.type_def(ty)?;
        let mark = self.push(ty);
        self.object(obj, def, true);
        self.vn_rules(obj);
        // A contained resource's own path is kept (`Patient.contained[0]`), not its type name.
        self.path.truncate(mark);
        Some(ty)
    }

    fn object(&mut self, obj: &Map<String, Value>, def: &TypeDef, is_resource: bool) {
        if obj.is_empty() {
            self.issue(
                "structure",
                "empty objects are not allowed in FHIR JSON".to_string(),
            );
            return;
        }
        for (key, value) in obj {
            if is_resource && key == "resourceType" {
                continue;
            }
            if let Some(base) = key.strip_prefix('_') {
                self.companion(obj, base, value, def);
                continue;
            }
            match def.elements.get(key.as_str()) {
                Some(el) => {
                    // Only repeating primitives need their `_` companion (to allow nulls).
                    let companion = if el.many && matches!(el.ty, TypeRef::Primitive(_)) {
                        obj.get(&format!("_{key}"))
                    } else {
                        None
                    };
                    self.element(key, el, value, companion)
                }
                None => {
                    let mark = self.push(key);
                    self.issue("structure", format!("unknown element '{key}'"));
                    self.path.truncate(mark);
                }
            }
        }
        for (name, props) in &def.required {
            let present = props.iter().any(|p| obj.contains_key(*p))
                || props.iter().any(|p| {
                    matches!(
                        def.elements.get(p).map(|e| e.ty),
                        Some(TypeRef::Primitive(_))
                    ) && obj.contains_key(&format!("_{p}"))
                });
            if !present {
                let mark = self.push(name);
                self.issue("required", format!("required element '{name}' is missing"));
                self.path.truncate(mark);
            }
        }
        for (name, props) in &def.choices {
            let n = props.iter().filter(|p| obj.contains_key(**p)).count();
            if n > 1 {
                let mark = self.push(name);
                self.issue(
                    "structure",
                    format!("only one type of {name}[x] may be given, found {n}"),
                );
                self.path.truncate(mark);
            }
        }
    }

    /// `_name`: the id and extensions of a primitive element.
    fn companion(&mut self, obj: &Map<String, Value>, base: &str, value: &Value, def: &TypeDef) {
        let mark = self.push(base);
        match def.elements.get(base) {
            Some(el) if matches!(el.ty, TypeRef::Primitive(_)) => {
                let element_def = self.schema.type_def("Element");
                match (value, el.many) {
                    (Value::Array(items), true) => {
                        if let Some(Value::Array(vals)) = obj.get(base)
                            && vals.len() != items.len()
                        {
                            self.issue(
                                "structure",
                                format!("_{base} must have as many items as {base}"),
                            );
                        }
                        for (i, item) in items.iter().enumerate() {
                            let m = self.push_index(i);
                            match (item, element_def) {
                                (Value::Null, _) => {}
                                (Value::Object(o), Some(d)) => self.object(o, d, false),
                                _ => self.issue(
                                    "structure",
                                    format!(
                                        "expected an object or null, found {}",
                                        primitive::kind(item)
                                    ),
                                ),
                            }
                            self.path.truncate(m);
                        }
                    }
                    (Value::Object(o), false) => {
                        if let Some(d) = element_def {
                            self.object(o, d, false);
                        }
                    }
                    _ => self.issue(
                        "structure",
                        format!(
                            "_{base} has the wrong shape: found {}",
                            primitive::kind(value)
                        ),
                    ),
                }
            }
            _ => self.issue("structure", format!("unknown element '_{base}'")),
        }
        self.path.truncate(mark);
    }

    /// Appends an element's FHIRPath: its name, and `.ofType(T)` for a choice variant.
    fn push_element(&mut self, key: &str, el: &Element) -> usize {
        let mark = self.push(el.name);
        if key.len() > el.name.len() {
            let suffix = &key[el.name.len()..];
            self.path.push_str(".ofType(");
            if matches!(el.ty, TypeRef::Primitive(_)) {
                let mut c = suffix.chars();
                if let Some(f) = c.next() {
                    self.path.push(f.to_ascii_lowercase());
                    self.path.push_str(c.as_str());
                }
            } else {
                self.path.push_str(suffix);
            }
            self.path.push(')');
        }
        mark
    }

    fn element(&mut self, key: &str, el: &Element, value: &Value, companion: Option<&Value>) {
        let mark = self.push_element(key, el);
        match (value, el.many) {
            (Value::Array(items), true) => {
                if items.is_empty() {
                    self.issue(
                        "structure",
                        "empty arrays are not allowed in FHIR JSON".to_string(),
                    );
                }
                let comp = match companion {
                    Some(Value::Array(c)) => Some(c),
                    _ => None,
                };
                for (i, item) in items.iter().enumerate() {
                    let m = self.push_index(i);
                    if item.is_null() && matches!(el.ty, TypeRef::Primitive(_)) {
                        let has_ext = comp.and_then(|c| c.get(i)).is_some_and(|c| !c.is_null());
                        if !has_ext {
                            self.issue(
                                "structure",
                                "null is only allowed where _ gives the item an id or extension"
                                    .to_string(),
                            );
                        }
                    } else {
                        self.value(el.ty, item);
                    }
                    self.path.truncate(m);
                }
            }
            (Value::Array(_), false) => {
                self.issue(
                    "structure",
                    format!("'{key}' is a single element, not an array"),
                );
            }
            (_, true) => {
                self.issue(
                    "structure",
                    format!(
                        "'{key}' repeats: it must be an array, found {}",
                        primitive::kind(value)
                    ),
                );
            }
            (_, false) => self.value(el.ty, value),
        }
        self.path.truncate(mark);
    }

    fn value(&mut self, ty: TypeRef, value: &Value) {
        match ty {
            TypeRef::Primitive(p) => {
                if let Err(problem) = primitive::check(p, value) {
                    let code = if matches!(value, Value::Object(_) | Value::Array(_) | Value::Null)
                    {
                        "structure"
                    } else {
                        "value"
                    };
                    self.issue(code, problem);
                } else if p == Primitive::String {
                    // Strings over 1 MB are not allowed (R4 §2.24.0.1).
                    if value.as_str().is_some_and(|s| s.len() > 1024 * 1024) {
                        self.issue("too-long", "string longer than 1 MB".to_string());
                    }
                }
            }
            TypeRef::Complex(key) => match (value, self.schema.type_def(key)) {
                (Value::Object(o), Some(def)) => self.object(o, def, false),
                (_, Some(_)) => self.issue(
                    "structure",
                    format!(
                        "expected an object ({key}), found {}",
                        primitive::kind(value)
                    ),
                ),
                (_, None) => self.issue("exception", format!("no definition of type {key}")),
            },
            TypeRef::Resource => {
                let _ = self.resource_in_place(value);
            }
        }
    }

    /// A resource inside another (contained, Bundle.entry.resource): walked with the current path.
    fn resource_in_place(&mut self, value: &Value) -> Option<&'static str> {
        let Value::Object(obj) = value else {
            self.issue(
                "structure",
                format!("expected a resource, found {}", primitive::kind(value)),
            );
            return None;
        };
        let name = match obj.get("resourceType") {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                self.issue(
                    "required",
                    "resourceType is missing or not a string".to_string(),
                );
                return None;
            }
        };
        let Some(ty) = self.schema.resource_type(name) else {
            self.issue(
                "not-supported",
                format!("'{name}' is not a FHIR R4 resource type"),
            );
            return None;
        };
        let def = self.schema.type_def(ty)?;
        self.object(obj, def, true);
        self.vn_rules(obj);
        Some(ty)
    }

    /// The Vietnamese identifier rules of the resource at the current path.
    fn vn_rules(&mut self, obj: &Map<String, Value>) {
        for issue in super::vn_rules::check(obj, &self.path) {
            if self.issues.len() < MAX_ISSUES {
                self.issues.push(issue);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(v: Value) -> Vec<(String, String)> {
        match resource(&v) {
            Ok(_) => vec![],
            Err(issues) => issues
                .into_iter()
                .map(|i| (i.expression.unwrap_or_default(), i.diagnostics))
                .collect(),
        }
    }

    #[test]
    fn a_valid_patient_passes() {
        let p = json!({"resourceType": "Patient", "id": "a1", "name": [{"family": "Nguyễn", "given": ["Văn", "A"]}],
                       "birthDate": "1990-05-01", "deceasedBoolean": false,
                       "_birthDate": {"extension": [{"url": "http://x", "valueDateTime": "1990-05-01T10:00:00+07:00"}]},
                       "contained": [{"resourceType": "Organization", "id": "o", "name": "Bệnh viện"}]});
        assert_eq!(resource(&p), Ok("Patient"));
    }

    #[test]
    fn problems_name_their_fhirpath_location() {
        let p = json!({"resourceType": "Patient", "birthDate": "not-a-date", "name": [{"given": ["A", 3]}],
                       "foo": 1, "active": "yes", "gender": ["male"],
                       "contained": [{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "1"}}]});
        let got = problems(p);
        let at: Vec<&str> = got.iter().map(|(a, _)| a.as_str()).collect();
        for want in [
            "Patient.birthDate",
            "Patient.name[0].given[1]",
            "Patient.foo",
            "Patient.active",
            "Patient.gender",
            "Patient.contained[0].value.ofType(Quantity).value",
        ] {
            assert!(at.contains(&want), "{want} missing from {got:?}");
        }
    }

    #[test]
    fn required_elements_and_choices_are_checked() {
        let o = json!({"resourceType": "Observation", "code": {"text": "x"}, "valueString": "a", "valueBoolean": true});
        let got = problems(o);
        assert!(
            got.iter()
                .any(|(a, m)| a == "Observation.status" && m.contains("required")),
            "{got:?}"
        );
        assert!(got.iter().any(|(a, _)| a == "Observation.value"), "{got:?}");
    }
}
