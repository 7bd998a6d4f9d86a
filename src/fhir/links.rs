//! Links inside a resource: references, uri-typed values and narrative, found through the R4
//! element table. A transaction rewrites them (R4 §3.1.0.11.2); the store indexes identifiers.

use serde_json::Value;

use super::schema::{Primitive, R4, TypeDef, TypeRef};

/// What kind of value a link was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// `Reference.reference`.
    Reference,
    /// An element of type uri, url, canonical, oid or uuid.
    Uri,
    /// Narrative XHTML (`href` and `src` attributes may hold links).
    Xhtml,
}

/// Calls `f` on every link of a resource (and of its contained resources), mutably.
pub fn for_each_link(resource: &mut Value, f: &mut dyn FnMut(LinkKind, &mut String)) {
    let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
        return;
    };
    if let Some(def) = R4.type_def(ty) {
        walk_object(resource, def, false, f);
    }
}

fn walk_object(
    obj: &mut Value,
    def: &TypeDef,
    is_reference: bool,
    f: &mut dyn FnMut(LinkKind, &mut String),
) {
    let Value::Object(map) = obj else { return };
    for (key, value) in map.iter_mut() {
        let Some(el) = def.elements.get(key.as_str()) else {
            continue;
        };
        let items: &mut [Value] = match value {
            Value::Array(a) => a.as_mut_slice(),
            v => std::slice::from_mut(v),
        };
        for item in items {
            match el.ty {
                TypeRef::Primitive(p) => {
                    let kind = if is_reference && key == "reference" {
                        LinkKind::Reference
                    } else if p.is_uri_like() {
                        LinkKind::Uri
                    } else if p == Primitive::Xhtml {
                        LinkKind::Xhtml
                    } else {
                        continue;
                    };
                    if let Value::String(s) = item {
                        f(kind, s);
                    }
                }
                TypeRef::Complex(k) => {
                    if let Some(d) = R4.type_def(k) {
                        walk_object(item, d, k == "Reference", f);
                    }
                }
                TypeRef::Resource => for_each_link(item, f),
            }
        }
    }
}

/// Calls `f` on every narrative (`xhtml`) value with its FHIRPath (`Bundle.entry[0].resource.text.div`),
/// in the same form `xml_check` names them.
pub fn for_each_xhtml(resource: &mut Value, f: &mut dyn FnMut(&str, &mut String)) {
    let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
        return;
    };
    let ty = ty.to_string();
    if let Some(def) = R4.type_def(&ty) {
        let mut path = ty;
        xhtml_in(resource, def, &mut path, f);
    }
}

fn xhtml_in(
    obj: &mut Value,
    def: &TypeDef,
    path: &mut String,
    f: &mut dyn FnMut(&str, &mut String),
) {
    let Value::Object(map) = obj else { return };
    for (key, value) in map.iter_mut() {
        let Some(el) = def.elements.get(key.as_str()) else {
            continue;
        };
        let is_xhtml = el.ty == TypeRef::Primitive(Primitive::Xhtml);
        let descends = matches!(el.ty, TypeRef::Complex(_) | TypeRef::Resource);
        if !is_xhtml && !descends {
            continue;
        }
        let mark = path.len();
        path.push('.');
        path.push_str(el.name);
        if key.len() > el.name.len() {
            path.push_str(&format!(".ofType({})", &key[el.name.len()..]));
        }
        let base = path.len();
        let items: &mut [Value] = match value {
            Value::Array(a) => a.as_mut_slice(),
            v => std::slice::from_mut(v),
        };
        for (i, item) in items.iter_mut().enumerate() {
            path.truncate(base);
            if el.many {
                path.push_str(&format!("[{i}]"));
            }
            match el.ty {
                TypeRef::Primitive(_) => {
                    if let Value::String(s) = item {
                        f(path, s);
                    }
                }
                TypeRef::Complex(k) => {
                    if let Some(d) = R4.type_def(k) {
                        xhtml_in(item, d, path, f);
                    }
                }
                TypeRef::Resource => {
                    let ty = item
                        .get("resourceType")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    if let Some(d) = R4.type_def(&ty) {
                        xhtml_in(item, d, path, f);
                    }
                }
            }
        }
        path.truncate(mark);
    }
}
