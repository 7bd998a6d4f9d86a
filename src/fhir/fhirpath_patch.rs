//! FHIRPath Patch (R4 §2.40, "fhirpatch"): a `Parameters` resource whose `operation`
//! parameters add, insert, delete, replace or move elements found by FHIRPath expressions.
//!
//! Paths are evaluated on the resource as it stands before each operation; the nodes they find
//! are located in the JSON by address (the engine borrows from the document), and the change is
//! made there. The result is validated like any other write.

use serde_json::{Map, Value};

use super::fhirpath::{self, Item};
use super::schema::{R4, TypeRef};
use crate::error::{Error, Result};
use crate::fhir::outcome::Issue;

/// One step of a location in a JSON document.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

fn bad(index: usize, msg: impl Into<String>) -> Error {
    Error::Invalid(vec![
        Issue::error("invalid", msg).at(format!("Parameters.parameter[{index}]")),
    ])
}

/// Where `target` (an address inside `root`) lies in `root`.
fn locate(root: &Value, target: *const Value, path: &mut Vec<Step>) -> bool {
    if std::ptr::eq(root, target) {
        return true;
    }
    match root {
        Value::Object(m) => {
            for (k, v) in m {
                path.push(Step::Key(k.clone()));
                if locate(v, target, path) {
                    return true;
                }
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                path.push(Step::Index(i));
                if locate(v, target, path) {
                    return true;
                }
                path.pop();
            }
        }
        _ => {}
    }
    false
}

fn get_mut<'a>(root: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    let mut cur = root;
    for s in path {
        cur = match s {
            Step::Key(k) => cur.get_mut(k.as_str())?,
            Step::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// The nodes `expr` finds in `doc`: their locations and FHIR types.
fn find(doc: &Value, expr: &str, index: usize) -> Result<Vec<(Vec<Step>, TypeRef)>> {
    let compiled = fhirpath::parse(expr).map_err(|e| bad(index, format!("path '{expr}': {e}")))?;
    let items = compiled
        .evaluate(doc)
        .map_err(|e| bad(index, format!("path '{expr}': {e}")))?;
    let mut out = Vec::new();
    for item in &items {
        let Item::Node(n) = item else {
            return Err(bad(
                index,
                format!("path '{expr}' gives a computed value, not an element"),
            ));
        };
        let mut path = Vec::new();
        if !locate(doc, n.value, &mut path) {
            return Err(bad(
                index,
                format!("path '{expr}' names an element that has no value to change"),
            ));
        }
        out.push((path, n.ty));
    }
    Ok(out)
}

/// The value of an operation's `value` part: a `value[x]`, a resource, or (for an anonymous
/// type such as a backbone element) parts of its own. Returns the JSON and, for `value[x]`, the
/// type suffix (`Code`, `CodeableConcept`).
fn part_value(part: &Value) -> Option<(Value, Option<String>)> {
    let obj = part.as_object()?;
    for (k, v) in obj {
        if let Some(t) = k.strip_prefix("value")
            && !t.is_empty()
        {
            return Some((v.clone(), Some(t.to_string())));
        }
    }
    if let Some(r) = obj.get("resource") {
        return Some((r.clone(), None));
    }
    let parts = obj.get("part")?.as_array()?;
    let mut out = Map::new();
    for p in parts {
        let name = p.get("name")?.as_str()?.to_string();
        let (v, _) = part_value(p)?;
        out.insert(name, v);
    }
    Some((Value::Object(out), None))
}

/// An operation's parts by name.
struct Op<'a> {
    parts: Vec<(&'a str, &'a Value)>,
}

impl<'a> Op<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.parts.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    fn string(&self, name: &str) -> Option<&'a str> {
        let p = self.get(name)?;
        p.as_object()?
            .iter()
            .find(|(k, _)| k.starts_with("value"))
            .and_then(|(_, v)| v.as_str())
    }

    fn integer(&self, name: &str) -> Option<usize> {
        let p = self.get(name)?;
        p.as_object()?
            .iter()
            .find(|(k, _)| k.starts_with("value"))
            .and_then(|(_, v)| v.as_u64())
            .map(|n| n as usize)
    }
}

/// Applies a FHIRPath Patch `Parameters` resource to `doc`.
pub fn apply(doc: &mut Value, patch: &Value) -> Result<()> {
    if patch.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(Error::invalid(
            "invalid",
            "a FHIRPath Patch is a Parameters resource",
        ));
    }
    let params = patch
        .get("parameter")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::invalid("invalid", "the Parameters has no operation"))?;
    for (i, p) in params.iter().enumerate() {
        if p.get("name").and_then(Value::as_str) != Some("operation") {
            return Err(bad(
                i,
                "every parameter of a FHIRPath Patch is an 'operation'",
            ));
        }
        let parts: Vec<(&str, &Value)> = p
            .get("part")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|part| Some((part.get("name")?.as_str()?, part)))
            .collect();
        let op = Op { parts };
        let kind = op
            .string("type")
            .ok_or_else(|| bad(i, "the operation has no type"))?;
        let path = op
            .string("path")
            .ok_or_else(|| bad(i, "the operation has no path"))?;
        match kind {
            "add" => add(doc, &op, path, i)?,
            "insert" => insert(doc, &op, path, i)?,
            "delete" => delete(doc, path, i)?,
            "replace" => replace(doc, &op, path, i)?,
            "move" => move_op(doc, &op, path, i)?,
            other => return Err(bad(i, format!("unknown operation type '{other}'"))),
        }
    }
    Ok(())
}

fn one(found: Vec<(Vec<Step>, TypeRef)>, path: &str, i: usize) -> Result<(Vec<Step>, TypeRef)> {
    let n = found.len();
    let mut it = found.into_iter();
    match (it.next(), n) {
        (Some(f), 1) => Ok(f),
        (_, 0) => Err(bad(i, format!("path '{path}' matches nothing"))),
        _ => Err(bad(
            i,
            format!("path '{path}' matches {n} elements; it must match one"),
        )),
    }
}

fn value_of(op: &Op<'_>, i: usize) -> Result<(Value, Option<String>)> {
    op.get("value")
        .and_then(part_value)
        .ok_or_else(|| bad(i, "the operation has no value"))
}

fn add(doc: &mut Value, op: &Op<'_>, path: &str, i: usize) -> Result<()> {
    let name = op
        .string("name")
        .ok_or_else(|| bad(i, "add needs a name"))?;
    let (value, ty) = value_of(op, i)?;
    let (loc, parent_ty) = one(find(doc, path, i)?, path, i)?;
    let def = match parent_ty {
        TypeRef::Complex(k) => R4.type_def(k),
        _ => None,
    }
    .ok_or_else(|| bad(i, format!("'{path}' cannot have children")))?;
    // A choice element is named by its value's type (`value` + `Quantity`).
    let prop = match (def.elements.contains_key(name), &ty) {
        (true, _) => name.to_string(),
        (false, Some(t)) => {
            let mut c = t.chars();
            let cap = c
                .next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default();
            format!("{name}{cap}")
        }
        (false, None) => name.to_string(),
    };
    let Some(el) = def.elements.get(prop.as_str()) else {
        return Err(bad(i, format!("'{name}' is not an element of '{path}'")));
    };
    let many = el.many;
    let target = get_mut(doc, &loc)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| bad(i, format!("'{path}' is not an element with children")))?;
    if many {
        match target
            .entry(prop)
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(a) => a.push(value),
            _ => return Err(bad(i, format!("'{name}' is not a list"))),
        }
    } else {
        if target.contains_key(&prop) {
            return Err(bad(i, format!("'{name}' already has a value: use replace")));
        }
        target.insert(prop, value);
    }
    Ok(())
}

/// The list holding the elements at `found` (all must share it).
fn list_of(found: &[(Vec<Step>, TypeRef)], path: &str, i: usize) -> Result<Vec<Step>> {
    let mut parent: Option<Vec<Step>> = None;
    for (loc, _) in found {
        let Some((Step::Index(_), rest)) = loc.split_last() else {
            return Err(bad(i, format!("'{path}' is not a list")));
        };
        match &parent {
            None => parent = Some(rest.to_vec()),
            Some(p) if p == rest => {}
            Some(_) => return Err(bad(i, format!("'{path}' spans more than one list"))),
        }
    }
    parent.ok_or_else(|| bad(i, format!("path '{path}' matches nothing")))
}

fn insert(doc: &mut Value, op: &Op<'_>, path: &str, i: usize) -> Result<()> {
    let (value, _) = value_of(op, i)?;
    let at = op
        .integer("index")
        .ok_or_else(|| bad(i, "insert needs an index"))?;
    let found = find(doc, path, i)?;
    let list = list_of(&found, path, i)?;
    let arr = get_mut(doc, &list)
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad(i, format!("'{path}' is not a list")))?;
    if at > arr.len() {
        return Err(bad(
            i,
            format!(
                "index {at} is past the end of '{path}' ({} elements)",
                arr.len()
            ),
        ));
    }
    arr.insert(at, value);
    Ok(())
}

fn delete(doc: &mut Value, path: &str, i: usize) -> Result<()> {
    let found = find(doc, path, i)?;
    if found.is_empty() {
        // Deleting what is not there changes nothing (as HAPI does).
        return Ok(());
    }
    let (loc, _) = one(found, path, i)?;
    let Some((last, parent)) = loc.split_last() else {
        return Err(bad(i, "a patch cannot delete the resource itself"));
    };
    let container = get_mut(doc, parent).ok_or_else(|| bad(i, "element not found"))?;
    match (last, container) {
        (Step::Index(ix), Value::Array(a)) => {
            a.remove(*ix);
            if a.is_empty()
                && let Some((Step::Key(k), grand)) = parent.split_last()
                && let Some(Value::Object(o)) = get_mut(doc, grand)
            {
                o.remove(k);
            }
        }
        (Step::Key(k), Value::Object(o)) => {
            o.remove(k);
        }
        _ => return Err(bad(i, "element not found")),
    }
    Ok(())
}

fn replace(doc: &mut Value, op: &Op<'_>, path: &str, i: usize) -> Result<()> {
    let (value, _) = value_of(op, i)?;
    let (loc, _) = one(find(doc, path, i)?, path, i)?;
    if loc.is_empty() {
        return Err(bad(i, "a patch cannot replace the resource itself"));
    }
    let slot = get_mut(doc, &loc).ok_or_else(|| bad(i, "element not found"))?;
    *slot = value;
    Ok(())
}

fn move_op(doc: &mut Value, op: &Op<'_>, path: &str, i: usize) -> Result<()> {
    let source = op
        .integer("source")
        .ok_or_else(|| bad(i, "move needs a source"))?;
    let destination = op
        .integer("destination")
        .ok_or_else(|| bad(i, "move needs a destination"))?;
    let found = find(doc, path, i)?;
    let list = list_of(&found, path, i)?;
    let arr = get_mut(doc, &list)
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad(i, format!("'{path}' is not a list")))?;
    if source >= arr.len() || destination >= arr.len() {
        return Err(bad(
            i,
            format!(
                "move {source} → {destination} is outside '{path}' ({} elements)",
                arr.len()
            ),
        ));
    }
    let v = arr.remove(source);
    arr.insert(destination, v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(parts: Value) -> Value {
        json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]})
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p", "gender": "male", "birthDate": "1990-01-01",
            "name": [{"family": "Nguyễn", "given": ["Văn"]}],
            "identifier": [{"system": "a", "value": "1"}, {"system": "b", "value": "2"}]})
    }

    #[test]
    fn replace_add_insert_delete_move() {
        let mut p = patient();
        apply(&mut p, &op(json!([{"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.birthDate"}, {"name": "value", "valueDate": "1991-02-03"}]))).unwrap();
        assert_eq!(p["birthDate"], "1991-02-03");
        apply(&mut p, &op(json!([{"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient.name[0]"}, {"name": "name", "valueString": "given"},
            {"name": "value", "valueString": "An"}]))).unwrap();
        assert_eq!(p["name"][0]["given"], json!(["Văn", "An"]));
        apply(
            &mut p,
            &op(json!([{"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "deceased"},
            {"name": "value", "valueBoolean": false}])),
        )
        .unwrap();
        assert_eq!(p["deceasedBoolean"], false);
        apply(&mut p, &op(json!([{"name": "type", "valueCode": "insert"},
            {"name": "path", "valueString": "Patient.identifier"}, {"name": "index", "valueInteger": 0},
            {"name": "value", "valueIdentifier": {"system": "c", "value": "3"}}]))).unwrap();
        assert_eq!(p["identifier"][0]["system"], "c");
        apply(&mut p, &op(json!([{"name": "type", "valueCode": "move"},
            {"name": "path", "valueString": "Patient.identifier"}, {"name": "source", "valueInteger": 0},
            {"name": "destination", "valueInteger": 2}]))).unwrap();
        assert_eq!(p["identifier"][2]["system"], "c");
        apply(
            &mut p,
            &op(json!([{"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.identifier.where(system = 'a')"}])),
        )
        .unwrap();
        assert_eq!(p["identifier"].as_array().unwrap().len(), 2);
        apply(
            &mut p,
            &op(json!([{"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.gender"}])),
        )
        .unwrap();
        assert!(p.get("gender").is_none());
        // Deleting what is absent is fine.
        apply(
            &mut p,
            &op(json!([{"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.maritalStatus"}])),
        )
        .unwrap();
    }

    #[test]
    fn bad_operations_are_refused() {
        let mut p = patient();
        for parts in [
            json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.identifier"},
                   {"name": "value", "valueString": "x"}]),
            json!([{"name": "type", "valueCode": "explode"}, {"name": "path", "valueString": "Patient"}]),
            json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
                   {"name": "name", "valueString": "nonsense"}, {"name": "value", "valueString": "x"}]),
            json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.name.("}]),
        ] {
            assert!(apply(&mut p, &op(parts)).is_err());
        }
        assert_eq!(p, patient());
    }
}
