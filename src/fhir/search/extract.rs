//! Index rows of a resource: every search parameter of its type evaluated on its JSON, each
//! value turned into the rows of its parameter type (R4 §3.1.1.4 says which element types each
//! search parameter type indexes, and how).

use serde_json::Value;

use crate::fhir::datetime::{parse_date_time, parse_time};
use crate::fhir::fhirpath::{Env, Item};
use crate::fhir::schema::{Primitive, TypeRef};
use crate::store::{
    CompositeRow, DateRow, IndexRows, NumberRow, QuantityRow, ReferenceRow, StringRow, TokenRow,
    UriRow,
};

use super::normalize::{normalize, truncate};
use super::registry::{ParamType, Registry, SearchParam, registry};

/// The index rows of a resource of type `ty`, under the process-wide registry.
pub fn index_rows(ty: &str, resource: &Value) -> IndexRows {
    index_rows_with(&registry(), ty, resource)
}

/// The index rows of a resource under a given registry. Values that cannot be indexed (a date
/// that does not parse, a reference to a contained resource) are skipped: validation has
/// already refused what is invalid, and an index never fails a write.
pub fn index_rows_with(reg: &Registry, ty: &str, resource: &Value) -> IndexRows {
    let mut rows = IndexRows::default();
    let Some(params) = reg.for_type(ty) else {
        return rows;
    };
    for p in &params.indexed {
        let Some(expr) = &p.expr else { continue };
        let Ok(items) = expr.evaluate(resource) else {
            continue;
        };
        if p.ty == ParamType::Composite {
            composite(p, resource, &items, &mut rows);
            continue;
        }
        for item in &items {
            add(p, item, &mut rows);
        }
    }
    dedup(&mut rows);
    rows
}

/// Removes repeated rows (two elements with the same value index once).
fn dedup(rows: &mut IndexRows) {
    rows.strings.sort();
    rows.strings.dedup();
    rows.tokens.sort();
    rows.tokens.dedup();
    rows.references.sort();
    rows.references.dedup();
    rows.dates.sort();
    rows.dates.dedup();
    rows.uris.sort();
    rows.uris.dedup();
    rows.numbers.sort_by(|a, b| {
        (a.param, a.value)
            .partial_cmp(&(b.param, b.value))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    rows.numbers.dedup();
    rows.quantities.dedup();
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn strs<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a str> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// The decimal a JSON number or numeric string holds.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.to_string().parse().ok(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn add(p: &SearchParam, item: &Item<'_>, rows: &mut IndexRows) {
    let (value, ty) = match item {
        Item::Node(n) => (n.value, n.ty),
        // Computed values index only as tokens (a boolean from `exists()`, a string).
        Item::Boolean(b) => {
            if p.ty == ParamType::Token {
                token(rows, p.code, "", if *b { "true" } else { "false" });
            }
            return;
        }
        Item::String(s) => {
            match p.ty {
                ParamType::Token => token(rows, p.code, "", s),
                ParamType::String => push_string(rows, p.code, s),
                _ => {}
            }
            return;
        }
        _ => return,
    };
    match p.ty {
        ParamType::String => string(p, value, ty, rows),
        ParamType::Token => token_of(p, value, ty, rows),
        ParamType::Reference => reference(p, value, ty, rows),
        ParamType::Date => date(p.code, value, ty, &mut rows.dates),
        ParamType::Number => {
            if let Some(n) = number(value) {
                rows.numbers.push(NumberRow {
                    param: p.code,
                    value: n,
                });
            }
        }
        ParamType::Quantity => quantity(p.code, value, ty, rows),
        ParamType::Uri => {
            if let Some(s) = value.as_str() {
                rows.uris.push(UriRow {
                    param: p.code,
                    uri: s.to_string(),
                });
            }
        }
        ParamType::Composite | ParamType::Special => {}
    }
}

fn push_string(rows: &mut IndexRows, param: &'static str, s: &str) {
    let norm = normalize(s);
    if norm.is_empty() {
        return;
    }
    rows.strings.push(StringRow {
        param,
        norm,
        exact: truncate(s.to_string()),
    });
}

/// String parameters index primitives as they are and the parts of names and addresses.
fn string(p: &SearchParam, v: &Value, ty: TypeRef, rows: &mut IndexRows) {
    match ty {
        TypeRef::Primitive(_) => {
            if let Some(s) = v.as_str() {
                push_string(rows, p.code, s);
            }
        }
        TypeRef::Complex("HumanName") => {
            for k in ["family", "text"] {
                if let Some(s) = str_of(v, k) {
                    push_string(rows, p.code, s);
                }
            }
            for k in ["given", "prefix", "suffix"] {
                for s in strs(v, k) {
                    push_string(rows, p.code, s);
                }
            }
        }
        TypeRef::Complex("Address") => {
            for s in strs(v, "line") {
                push_string(rows, p.code, s);
            }
            for k in ["city", "district", "state", "postalCode", "country", "text"] {
                if let Some(s) = str_of(v, k) {
                    push_string(rows, p.code, s);
                }
            }
        }
        TypeRef::Complex(_) => {
            // Other complex types index their string-valued children (Annotation.text, ...).
            if let Some(obj) = v.as_object() {
                for (k, child) in obj {
                    if k != "id"
                        && let Some(s) = child.as_str()
                    {
                        push_string(rows, p.code, s);
                    }
                }
            }
        }
        TypeRef::Resource => {}
    }
}

fn token(rows: &mut IndexRows, param: &'static str, system: &str, code: &str) {
    rows.tokens.push(TokenRow {
        param,
        system: system.to_string(),
        code: code.to_string(),
    });
}

fn coding(p: &SearchParam, c: &Value, rows: &mut IndexRows) {
    if let Some(code) = str_of(c, "code") {
        token(rows, p.code, str_of(c, "system").unwrap_or(""), code);
    }
    if let Some(d) = str_of(c, "display") {
        push_string(rows, p.text_param, d);
    }
}

/// Token parameters (R4 §3.1.1.4.10): codes with their systems, identifiers, contact points,
/// and primitives (code, boolean, id, string, uri) without a system.
fn token_of(p: &SearchParam, v: &Value, ty: TypeRef, rows: &mut IndexRows) {
    match ty {
        TypeRef::Primitive(Primitive::Boolean) => {
            if let Some(b) = v.as_bool() {
                token(rows, p.code, "", if b { "true" } else { "false" });
            }
        }
        TypeRef::Primitive(_) => {
            if let Some(s) = v.as_str() {
                token(rows, p.code, "", s);
            }
        }
        TypeRef::Complex("Coding") => coding(p, v, rows),
        TypeRef::Complex("CodeableConcept") => {
            for c in v
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                coding(p, c, rows);
            }
            if let Some(t) = str_of(v, "text") {
                push_string(rows, p.text_param, t);
            }
        }
        TypeRef::Complex("Identifier") => {
            let Some(value) = str_of(v, "value") else {
                return;
            };
            token(rows, p.code, str_of(v, "system").unwrap_or(""), value);
            if let Some(t) = v.get("type") {
                for c in t
                    .get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(code) = str_of(c, "code") {
                        // `identifier:of-type=system|code|value` (R4 §3.1.1.5.7).
                        token(
                            rows,
                            p.of_type_param,
                            str_of(c, "system").unwrap_or(""),
                            &format!("{code}|{value}"),
                        );
                    }
                }
                if let Some(text) = str_of(t, "text") {
                    push_string(rows, p.text_param, text);
                }
            }
        }
        TypeRef::Complex("ContactPoint") => {
            if let Some(value) = str_of(v, "value") {
                token(rows, p.code, str_of(v, "system").unwrap_or(""), value);
            }
        }
        TypeRef::Complex("Quantity" | "Age" | "Duration" | "Distance" | "Count") => {
            if let Some(code) = str_of(v, "code") {
                token(rows, p.code, str_of(v, "system").unwrap_or(""), code);
            }
        }
        _ => {}
    }
}

/// The `Type/id` a literal reference names, if it names a resource by type and id (relative,
/// absolute, or versioned); None for contained (`#x`) and other references.
pub fn local_target(reference: &str) -> Option<String> {
    let r = match reference.find("/_history/") {
        Some(i) => &reference[..i],
        None => reference,
    };
    let mut parts = r.rsplitn(3, '/');
    let id = parts.next()?;
    let ty = parts.next()?;
    let rest = parts.next();
    let is_type = crate::fhir::schema::R4.resource_type(ty).is_some();
    if !is_type || id.is_empty() {
        return None;
    }
    match rest {
        // Relative `Type/id`.
        None => Some(format!("{ty}/{id}")),
        // Absolute: kept as written (another server's resource, or ours under its full URL).
        Some(_) => None,
    }
}

fn reference(p: &SearchParam, v: &Value, ty: TypeRef, rows: &mut IndexRows) {
    match ty {
        TypeRef::Complex("Reference") => {
            if let Some(r) = str_of(v, "reference") {
                if r.starts_with('#') {
                    // A contained resource is searched through its container; not indexed.
                } else {
                    let target = local_target(r).unwrap_or_else(|| match r.find("/_history/") {
                        Some(i) => r[..i].to_string(),
                        None => r.to_string(),
                    });
                    rows.references.push(ReferenceRow {
                        param: p.code,
                        target,
                    });
                }
            }
            if let Some(id) = v.get("identifier")
                && let Some(value) = str_of(id, "value")
            {
                token(
                    rows,
                    p.identifier_param,
                    str_of(id, "system").unwrap_or(""),
                    value,
                );
            }
        }
        // canonical and uri references: the URL as written (a `|version` suffix kept, and
        // also without it so that a search without the version finds it).
        TypeRef::Primitive(_) => {
            if let Some(s) = v.as_str() {
                rows.references.push(ReferenceRow {
                    param: p.code,
                    target: s.to_string(),
                });
                if let Some((url, _)) = s.split_once('|') {
                    rows.references.push(ReferenceRow {
                        param: p.code,
                        target: url.to_string(),
                    });
                }
            }
        }
        // `resolve()` yields the resource a reference points at; for search, its own id.
        TypeRef::Resource => {
            if let (Some(t), Some(id)) = (str_of(v, "resourceType"), str_of(v, "id")) {
                rows.references.push(ReferenceRow {
                    param: p.code,
                    target: format!("{t}/{id}"),
                });
            }
        }
        TypeRef::Complex(_) => {}
    }
}

/// The instant range of a date-like primitive.
fn primitive_range(v: &Value) -> Option<(i64, i64)> {
    let s = v.as_str()?;
    parse_date_time(s).ok().map(|d| d.range())
}

/// Date parameters: date, dateTime, instant, Period, Timing (its events) as `[low, high)`.
fn date(param: &'static str, v: &Value, ty: TypeRef, out: &mut Vec<DateRow>) {
    let mut push = |low: i64, high: i64| out.push(DateRow { param, low, high });
    match ty {
        TypeRef::Primitive(Primitive::Time) => {
            // A time of day is not an instant; nothing in R4's definitions searches one.
            let _ = v.as_str().map(parse_time);
        }
        TypeRef::Primitive(_) => {
            if let Some((l, h)) = primitive_range(v) {
                push(l, h);
            }
        }
        TypeRef::Complex("Period") => {
            let low = v.get("start").and_then(primitive_range).map(|r| r.0);
            let high = v.get("end").and_then(primitive_range).map(|r| r.1);
            if low.is_some() || high.is_some() {
                push(low.unwrap_or(i64::MIN), high.unwrap_or(i64::MAX));
            }
        }
        TypeRef::Complex("Timing") => {
            let ranges: Vec<(i64, i64)> = v
                .get("event")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(primitive_range)
                .collect();
            if let (Some(l), Some(h)) = (
                ranges.iter().map(|r| r.0).min(),
                ranges.iter().map(|r| r.1).max(),
            ) {
                push(l, h);
            }
            if let Some(bp) = v.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                date(param, bp, TypeRef::Complex("Period"), out);
            }
        }
        _ => {}
    }
}

/// The unit of a quantity: its code with its system, else its human unit without a system.
fn unit_of(v: &Value) -> (String, String) {
    match str_of(v, "code") {
        Some(code) => (
            str_of(v, "system").unwrap_or("").to_string(),
            code.to_string(),
        ),
        None => (String::new(), str_of(v, "unit").unwrap_or("").to_string()),
    }
}

fn quantity(param: &'static str, v: &Value, ty: TypeRef, rows: &mut IndexRows) {
    let Some(value) = v.get("value").and_then(number) else {
        // A Range indexes its bounds.
        if ty == TypeRef::Complex("Range") {
            for k in ["low", "high"] {
                if let Some(b) = v.get(k) {
                    quantity(param, b, TypeRef::Complex("Quantity"), rows);
                }
            }
        }
        return;
    };
    let (system, code) = match ty {
        TypeRef::Complex("Money") => (
            "urn:iso:std:iso:4217".to_string(),
            str_of(v, "currency").unwrap_or("").to_string(),
        ),
        _ => unit_of(v),
    };
    rows.quantities.push(QuantityRow {
        param,
        system,
        code,
        value,
    });
}

/// Composite parameters: one row per element that has every component.
fn composite(p: &SearchParam, resource: &Value, items: &[Item<'_>], rows: &mut IndexRows) {
    if p.components.len() != 2 {
        return;
    }
    for item in items {
        let Item::Node(node) = item else { continue };
        let mut first = IndexRows::default();
        let mut second = IndexRows::default();
        let c1 = &p.components[0];
        let c2 = &p.components[1];
        for (c, out) in [(c1, &mut first), (c2, &mut second)] {
            let env = Env::new().with_context(vec![Item::Node(*node)]);
            let Ok(vals) = c.expr.evaluate_with(resource, &env) else {
                continue;
            };
            let probe = p.with_type(c.ty);
            for v in &vals {
                add(&probe, v, out);
            }
        }
        for t1 in first.tokens.iter().filter(|t| t.param == p.code) {
            let base = |system2: String, code2: String| CompositeRow {
                param: p.code,
                system1: t1.system.clone(),
                code1: t1.code.clone(),
                system2,
                code2,
                value2: None,
                low2: None,
                high2: None,
            };
            for t2 in second.tokens.iter().filter(|t| t.param == p.code) {
                rows.composites
                    .push(base(t2.system.clone(), t2.code.clone()));
            }
            for q in &second.quantities {
                rows.composites.push(CompositeRow {
                    value2: Some(q.value),
                    ..base(q.system.clone(), q.code.clone())
                });
            }
            for d in &second.dates {
                rows.composites.push(CompositeRow {
                    low2: Some(d.low),
                    high2: Some(d.high),
                    ..base(String::new(), String::new())
                });
            }
            for s in second.strings.iter().filter(|s| s.param == p.code) {
                rows.composites.push(base(String::new(), s.norm.clone()));
            }
            for r in &second.references {
                rows.composites.push(base(String::new(), r.target.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(ty: &str, v: Value) -> IndexRows {
        index_rows(ty, &v)
    }

    #[test]
    fn patient_rows() {
        let r = rows(
            "Patient",
            json!({"resourceType": "Patient", "id": "p1",
                "identifier": [{"system": "urn:cccd", "value": "001090000001"}],
                "name": [{"family": "Nguyễn", "given": ["Văn", "An"]}],
                "gender": "male", "birthDate": "1990-04-30", "active": true,
                "generalPractitioner": [{"reference": "Practitioner/d1"}],
                "telecom": [{"system": "phone", "value": "0912345678"}]}),
        );
        assert!(r.tokens.contains(&TokenRow {
            param: "identifier",
            system: "urn:cccd".into(),
            code: "001090000001".into()
        }));
        assert!(
            r.tokens
                .iter()
                .any(|t| t.param == "gender" && t.code == "male")
        );
        assert!(
            r.tokens
                .iter()
                .any(|t| t.param == "active" && t.code == "true")
        );
        assert!(!r.tokens.iter().any(|t| t.param == "_id"));
        assert!(
            r.tokens
                .iter()
                .any(|t| t.param == "phone" && t.code == "0912345678")
        );
        assert!(
            r.strings
                .iter()
                .any(|s| s.param == "name" && s.norm == "nguyen" && s.exact == "Nguyễn")
        );
        assert!(
            r.strings
                .iter()
                .any(|s| s.param == "given" && s.norm == "van")
        );
        assert!(r.dates.iter().any(|d| d.param == "birthdate"));
        assert!(
            r.references
                .iter()
                .any(|x| x.param == "general-practitioner" && x.target == "Practitioner/d1")
        );
    }

    #[test]
    fn observation_rows() {
        let r = rows(
            "Observation",
            json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}]},
                "subject": {"reference": "Patient/p1"},
                "effectivePeriod": {"start": "2024-01-01T08:00:00+07:00"},
                "valueQuantity": {"value": 141.5, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}),
        );
        assert!(
            r.references
                .iter()
                .any(|x| x.param == "subject" && x.target == "Patient/p1")
        );
        assert!(
            r.references
                .iter()
                .any(|x| x.param == "patient" && x.target == "Patient/p1")
        );
        assert!(
            r.quantities
                .iter()
                .any(|q| q.param == "value-quantity" && q.value == 141.5 && q.code == "mm[Hg]")
        );
        assert!(
            r.strings
                .iter()
                .any(|s| s.param == "code:text" && s.norm == "systolic")
        );
        let d = r.dates.iter().find(|d| d.param == "date").unwrap();
        assert_eq!(d.high, i64::MAX);
        assert!(r.composites.iter().any(|c| c.param == "code-value-quantity"
            && c.code1 == "8480-6"
            && c.value2 == Some(141.5)));
    }

    #[test]
    fn local_targets() {
        assert_eq!(local_target("Patient/1").as_deref(), Some("Patient/1"));
        assert_eq!(
            local_target("Patient/1/_history/3").as_deref(),
            Some("Patient/1")
        );
        assert_eq!(local_target("http://x.org/fhir/Patient/1"), None);
        assert_eq!(local_target("urn:uuid:abc"), None);
        assert_eq!(local_target("#c1"), None);
    }
}

/// Every official R4 example indexes without a panic, and the common clinical types give rows
/// for the parameters a doctor searches by.
#[cfg(test)]
mod examples {
    use super::*;

    #[test]
    fn official_examples_index() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fhir/r4-examples/instances");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            panic!("{} is missing (it sits beside the project)", dir.display());
        };
        let mut indexed = 0;
        let mut rows = 0;
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let Some(ty) = v["resourceType"].as_str() else {
                continue;
            };
            let r = index_rows(ty, &v);
            rows += r.len();
            indexed += 1;
            if path.file_name().and_then(|f| f.to_str()) == Some("Patient-example.json") {
                assert!(
                    r.strings
                        .iter()
                        .any(|s| s.param == "family" && s.norm == "chalmers")
                );
                assert!(r.dates.iter().any(|d| d.param == "birthdate"));
                assert!(r.references.iter().any(|x| x.param == "organization"));
            }
        }
        assert!(indexed > 500, "only {indexed} examples found");
        assert!(rows > 10 * indexed, "{rows} rows for {indexed} examples");
    }
}
