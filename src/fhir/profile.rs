//! Validation against profiles: StructureDefinitions (their differential, or the snapshot when
//! there is no differential) compiled into a tree of element rules, and a walk of the instance
//! that checks each rule where it applies.
//!
//! What is checked: cardinality (`min`/`max`, also of slices), the types of choice elements,
//! `fixed[x]` and `pattern[x]` values, slicing by value discriminators (`identifier.system`,
//! `extension.url`; open or closed), extensions against their own profiles, and `required` and
//! `extensible` bindings to ValueSets the server holds (ours in `fhir-profiles/vn`, or loaded at
//! run time). The structure of the resource itself (element names, JSON types, R4 cardinality)
//! is `validate`'s work and has already passed. FHIRPath `constraint`s are not evaluated.
//!
//! Every issue carries the FHIRPath of the element and the profile it comes from, as HAPI's
//! validator words them ("minimum required = 1, but only found 0").

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::outcome::Issue;
use super::schema::Primitive;

/// How a binding constrains codes (R4 `binding-strength`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strength {
    Required,
    Extensible,
}

/// The rules of one element of a profile (or of one slice of it), with those of its children.
#[derive(Debug, Default)]
struct Node {
    /// The element id (`Patient.identifier:citizenId`), for messages.
    id: String,
    /// The element's name in the instance (`identifier`, `value[x]`).
    name: String,
    min: Option<usize>,
    /// None: unbounded (`*`) or unconstrained.
    max: Option<usize>,
    /// Allowed types (for a choice element, which `value[x]` variants may appear).
    types: Vec<String>,
    /// Profiles each value must meet (an extension's definition).
    type_profiles: Vec<String>,
    fixed: Option<Value>,
    pattern: Option<Value>,
    binding: Option<(Strength, String)>,
    slicing: Option<Slicing>,
    slices: Vec<(String, Node)>,
    children: Vec<Node>,
}

#[derive(Debug)]
struct Slicing {
    /// Paths of the `value` (or `pattern`) discriminators, relative to the sliced element.
    paths: Vec<String>,
    closed: bool,
}

/// A compiled profile.
#[derive(Debug)]
pub struct Profile {
    pub url: String,
    /// The type it constrains (`Patient`, `Extension`).
    pub ty: String,
    root: Node,
}

/// A ValueSet as far as validation needs it: what it includes.
#[derive(Debug, Clone)]
struct ValueSet {
    includes: Vec<Include>,
}

#[derive(Debug, Clone)]
struct Include {
    system: Option<String>,
    /// The listed codes; None: the whole system.
    codes: Option<HashSet<String>>,
}

/// The profiles, ValueSets and CodeSystems the server validates with.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    profiles: HashMap<String, Arc<Profile>>,
    value_sets: HashMap<String, Arc<ValueSet>>,
    /// CodeSystem url → its codes (complete systems only).
    code_systems: HashMap<String, Arc<HashSet<String>>>,
}

impl Registry {
    /// The profile with this canonical URL (`url` or `url|version`).
    pub fn profile(&self, url: &str) -> Option<&Arc<Profile>> {
        self.profiles.get(url.split('|').next().unwrap_or(url))
    }

    /// The canonical URLs of the profiles that constrain `ty`.
    pub fn profiles_of<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = &'a str> {
        self.profiles
            .values()
            .filter(move |p| p.ty == ty)
            .map(|p| p.url.as_str())
    }

    /// Learns a conformance resource: a StructureDefinition (a constraint of a resource or data
    /// type), a ValueSet or a CodeSystem; other resources are ignored. Returns the canonical URL
    /// it was filed under.
    pub fn learn(&mut self, r: &Value) -> Result<Option<String>, String> {
        let url = r.get("url").and_then(Value::as_str);
        match (r.get("resourceType").and_then(Value::as_str), url) {
            (Some("StructureDefinition"), Some(url)) => {
                let p = compile(r)?;
                self.profiles.insert(url.to_string(), Arc::new(p));
            }
            (Some("ValueSet"), Some(url)) => {
                self.value_sets
                    .insert(url.to_string(), Arc::new(value_set(r)));
            }
            (Some("CodeSystem"), Some(url)) => {
                let mut codes = HashSet::new();
                collect_codes(r.get("concept"), &mut codes);
                self.code_systems.insert(url.to_string(), Arc::new(codes));
            }
            _ => return Ok(None),
        }
        Ok(url.map(str::to_string))
    }

    /// Forgets the conformance resource filed under `url`.
    pub fn forget(&mut self, url: &str) {
        self.profiles.remove(url);
        self.value_sets.remove(url);
        self.code_systems.remove(url);
    }

    /// Validates the resource `value` (at FHIRPath `at`) against the profile `url`.
    pub fn validate(&self, url: &str, value: &Value, at: &str) -> Vec<Issue> {
        let Some(p) = self.profile(url) else {
            return vec![
                Issue::error(
                    "not-found",
                    format!("the profile {url} is not known to this server"),
                )
                .at(at),
            ];
        };
        let mut run = Run {
            reg: self,
            url: &p.url,
            issues: Vec::new(),
            depth: 0,
        };
        let ty = value.get("resourceType").and_then(Value::as_str);
        if let Some(ty) = ty
            && ty != p.ty
        {
            run.issues.push(
                Issue::error(
                    "invalid",
                    format!("the profile {url} constrains {}, not {ty}", p.ty),
                )
                .at(at),
            );
            return run.issues;
        }
        run.node(&p.root, &[(value, at.to_string())]);
        run.issues
    }
}

fn collect_codes(concepts: Option<&Value>, out: &mut HashSet<String>) {
    for c in concepts.and_then(Value::as_array).into_iter().flatten() {
        if let Some(code) = c.get("code").and_then(Value::as_str) {
            out.insert(code.to_string());
        }
        collect_codes(c.get("concept"), out);
    }
}

fn value_set(r: &Value) -> ValueSet {
    let mut includes = Vec::new();
    let listed = r
        .pointer("/compose/include")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for inc in listed {
        let codes = inc.get("concept").and_then(Value::as_array).map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("code").and_then(Value::as_str).map(str::to_string))
                .collect()
        });
        includes.push(Include {
            system: inc
                .get("system")
                .and_then(Value::as_str)
                .map(str::to_string),
            codes,
        });
    }
    // An expansion, when there is one, lists the codes outright.
    for c in r
        .pointer("/expansion/contains")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(code) = c.get("code").and_then(Value::as_str) {
            includes.push(Include {
                system: c.get("system").and_then(Value::as_str).map(str::to_string),
                codes: Some(std::iter::once(code.to_string()).collect()),
            });
        }
    }
    ValueSet { includes }
}

/// Compiles a StructureDefinition's elements into a rule tree.
fn compile(sd: &Value) -> Result<Profile, String> {
    let url = sd
        .get("url")
        .and_then(Value::as_str)
        .ok_or("a StructureDefinition needs a url")?;
    let ty = sd
        .get("type")
        .and_then(Value::as_str)
        .ok_or("a StructureDefinition needs a type")?;
    let elements = sd
        .pointer("/differential/element")
        .or_else(|| sd.pointer("/snapshot/element"))
        .and_then(Value::as_array)
        .ok_or("a StructureDefinition needs a differential or a snapshot")?;
    let mut root = Node {
        name: ty.to_string(),
        ..Node::default()
    };
    for (i, e) in elements.iter().enumerate() {
        let id = e
            .get("id")
            .or_else(|| e.get("path"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("element {i} has neither id nor path"))?;
        let mut segments = id.split('.');
        if segments.next() != Some(ty) {
            return Err(format!("element '{id}' is not within {ty}"));
        }
        let mut node = &mut root;
        for seg in segments {
            let (name, slice) = match seg.split_once(':') {
                Some((n, s)) => (n, Some(s)),
                None => (seg, None),
            };
            let pos = match node.children.iter().position(|c| c.name == name) {
                Some(p) => p,
                None => {
                    node.children.push(Node {
                        name: name.to_string(),
                        ..Node::default()
                    });
                    node.children.len() - 1
                }
            };
            node = &mut node.children[pos];
            if let Some(slice) = slice {
                let pos = match node.slices.iter().position(|(s, _)| s == slice) {
                    Some(p) => p,
                    None => {
                        node.slices.push((
                            slice.to_string(),
                            Node {
                                name: name.to_string(),
                                ..Node::default()
                            },
                        ));
                        node.slices.len() - 1
                    }
                };
                node = &mut node.slices[pos].1;
            }
        }
        node.id = id.to_string();
        apply(node, e)?;
    }
    Ok(Profile {
        url: url.to_string(),
        ty: ty.to_string(),
        root,
    })
}

/// Copies what an ElementDefinition says onto its rule node.
fn apply(node: &mut Node, e: &Value) -> Result<(), String> {
    if let Some(min) = e.get("min").and_then(Value::as_u64) {
        node.min = Some(min as usize);
    }
    match e.get("max").and_then(Value::as_str) {
        Some("*") | None => {}
        Some(n) => {
            node.max = Some(
                n.parse()
                    .map_err(|_| format!("max '{n}' is neither a number nor *"))?,
            )
        }
    }
    if let Some(types) = e.get("type").and_then(Value::as_array) {
        for t in types {
            if let Some(code) = t.get("code").and_then(Value::as_str) {
                node.types.push(code.to_string());
            }
            for p in t
                .get("profile")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(p) = p.as_str() {
                    node.type_profiles.push(p.to_string());
                }
            }
        }
    }
    if let Value::Object(o) = e {
        for (k, v) in o {
            if k.starts_with("fixed") {
                node.fixed = Some(v.clone());
            } else if k.starts_with("pattern") {
                node.pattern = Some(v.clone());
            }
        }
    }
    if let Some(b) = e.get("binding") {
        let strength = match b.get("strength").and_then(Value::as_str) {
            Some("required") => Some(Strength::Required),
            Some("extensible") => Some(Strength::Extensible),
            _ => None,
        };
        if let (Some(s), Some(vs)) = (strength, b.get("valueSet").and_then(Value::as_str)) {
            node.binding = Some((s, vs.split('|').next().unwrap_or(vs).to_string()));
        }
    }
    if let Some(s) = e.get("slicing") {
        let paths = s
            .get("discriminator")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|d| {
                matches!(
                    d.get("type").and_then(Value::as_str),
                    Some("value" | "pattern")
                )
            })
            .filter_map(|d| d.get("path").and_then(Value::as_str).map(str::to_string))
            .collect();
        node.slicing = Some(Slicing {
            paths,
            closed: s.get("rules").and_then(Value::as_str) == Some("closed"),
        });
    }
    Ok(())
}

/// How deep extension profiles may nest (a profile that uses itself stops here).
const MAX_DEPTH: usize = 8;

struct Run<'a> {
    reg: &'a Registry,
    url: &'a str,
    issues: Vec<Issue>,
    depth: usize,
}

/// One value of an element in the instance, with its FHIRPath location.
type Item<'v> = (&'v Value, String);

impl<'a> Run<'a> {
    fn error(&mut self, code: &'static str, msg: String, at: &str) {
        self.issues
            .push(Issue::error(code, format!("{msg} (from {})", self.url)).at(at));
    }

    fn warning(&mut self, code: &'static str, msg: String, at: &str) {
        self.issues.push(
            Issue::error(code, format!("{msg} (from {})", self.url))
                .warning()
                .at(at),
        );
    }

    /// Checks `node`'s own rules on each of its values, then its children's within them.
    fn node(&mut self, node: &Node, items: &[Item<'_>]) {
        for (v, at) in items {
            self.value_rules(node, v, at);
        }
        for child in &node.children {
            let mut all: Vec<Item<'_>> = Vec::new();
            let mut by_slice: Vec<Vec<Item<'_>>> = vec![Vec::new(); child.slices.len()];
            for (parent, at) in items {
                let Value::Object(obj) = parent else { continue };
                let found = children(obj, &child.name, at);
                self.cardinality(child, found.len(), at);
                if let Some(t) = self.choice_types(child, obj) {
                    let allowed = child.types.join(", ");
                    self.error(
                        "structure",
                        format!(
                            "{}: the type {t} is not allowed here; allowed: {allowed}",
                            child.name
                        ),
                        at,
                    );
                }
                if !child.slices.is_empty() {
                    let mut counts = vec![0usize; child.slices.len()];
                    for item in &found {
                        match self.slice_of(child, item.0) {
                            Some(s) => {
                                counts[s] += 1;
                                by_slice[s].push(item.clone());
                            }
                            None if child.slicing.as_ref().is_some_and(|s| s.closed) => {
                                self.error(
                                    "structure",
                                    format!(
                                        "{}: this value matches none of the slices, and the \
                                         slicing is closed",
                                        child.name
                                    ),
                                    &item.1,
                                );
                            }
                            None => {}
                        }
                    }
                    for (s, (_, snode)) in child.slices.iter().enumerate() {
                        self.cardinality(snode, counts[s], at);
                    }
                }
                all.extend(found);
            }
            // A choice element's rules apply to the variant present.
            self.node(child, &all);
            for (s, (_, snode)) in child.slices.iter().enumerate() {
                self.node(snode, &by_slice[s]);
            }
        }
    }

    fn cardinality(&mut self, node: &Node, n: usize, at: &str) {
        let label = &node.id;
        if let Some(min) = node.min
            && n < min
        {
            self.error(
                "required",
                format!("{label}: minimum required = {min}, but only found {n}"),
                &format!("{at}.{}", node.name.trim_end_matches("[x]")),
            );
        }
        if let Some(max) = node.max
            && n > max
        {
            self.error(
                "structure",
                format!("{label}: maximum allowed = {max}, but found {n}"),
                &format!("{at}.{}", node.name.trim_end_matches("[x]")),
            );
        }
    }

    /// For a choice element restricted to some types, the type of a variant present that is not
    /// one of them.
    fn choice_types(&self, node: &Node, obj: &Map<String, Value>) -> Option<String> {
        let stem = node.name.strip_suffix("[x]")?;
        if node.types.is_empty() {
            return None;
        }
        obj.keys()
            .filter_map(|k| k.strip_prefix(stem))
            .filter(|t| t.starts_with(|c: char| c.is_ascii_uppercase()))
            .find(|t| !node.types.iter().any(|a| a.eq_ignore_ascii_case(t)))
            .map(str::to_string)
    }

    /// Which slice of `node` the value `v` belongs to, by the discriminators.
    fn slice_of(&self, node: &Node, v: &Value) -> Option<usize> {
        let paths: Vec<&str> = match &node.slicing {
            Some(s) if !s.paths.is_empty() => s.paths.iter().map(String::as_str).collect(),
            // Extensions are sliced by url even where the profile does not say so.
            _ if node.name == "extension" || node.name == "modifierExtension" => vec!["url"],
            _ => return None,
        };
        node.slices.iter().position(|(_, s)| {
            paths.iter().all(|p| match self.expected(s, p) {
                Some(want) => at_path(v, p).is_some_and(|got| contains(got, &want)),
                None => true,
            })
        })
    }

    /// The value a slice fixes at a discriminator path: the fixed or pattern value of the child
    /// there, or, for an extension's `url`, the url of its profile.
    fn expected(&self, slice: &Node, path: &str) -> Option<Value> {
        let mut node = slice;
        for seg in path.split('.') {
            match node.children.iter().find(|c| c.name == seg) {
                Some(c) => node = c,
                None => {
                    return (path == "url")
                        .then(|| {
                            slice
                                .type_profiles
                                .first()
                                .map(|p| Value::String(p.clone()))
                        })
                        .flatten();
                }
            }
        }
        node.fixed.clone().or_else(|| node.pattern.clone())
    }

    /// The rules on one value: fixed and pattern values, the binding, and profiles it must meet.
    fn value_rules(&mut self, node: &Node, v: &Value, at: &str) {
        if let Some(f) = &node.fixed
            && v != f
        {
            self.error(
                "value",
                format!("the value must be exactly {f}, but is {v}"),
                at,
            );
        }
        if let Some(p) = &node.pattern
            && !contains(v, p)
        {
            self.error("value", format!("the value must match the pattern {p}"), at);
        }
        if let Some((strength, vs)) = &node.binding {
            self.binding(*strength, vs, v, at);
        }
        if !node.type_profiles.is_empty() && self.depth < MAX_DEPTH {
            for url in &node.type_profiles {
                let Some(p) = self.reg.profile(url) else {
                    self.warning(
                        "not-found",
                        format!("the profile {url} is not known; not checked"),
                        at,
                    );
                    continue;
                };
                let mut inner = Run {
                    reg: self.reg,
                    url: &p.url,
                    issues: Vec::new(),
                    depth: self.depth + 1,
                };
                inner.node(&p.root, &[(v, at.to_string())]);
                self.issues.extend(inner.issues);
            }
        }
    }

    fn binding(&mut self, strength: Strength, url: &str, v: &Value, at: &str) {
        let Some(vs) = self.reg.value_sets.get(url).cloned() else {
            self.warning(
                "not-found",
                format!("the ValueSet {url} is not known to this server; the code is not checked"),
                at,
            );
            return;
        };
        // A code, a Coding, or a CodeableConcept (any of whose codings will do).
        let codings: Vec<(Option<&str>, &str)> = match v {
            Value::String(code) => vec![(None, code.as_str())],
            Value::Object(o) if o.contains_key("coding") => o["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    Some((
                        c.get("system").and_then(Value::as_str),
                        c.get("code").and_then(Value::as_str)?,
                    ))
                })
                .collect(),
            Value::Object(o) => o
                .get("code")
                .and_then(Value::as_str)
                .map(|code| (o.get("system").and_then(Value::as_str), code))
                .into_iter()
                .collect(),
            _ => return,
        };
        if codings.is_empty() {
            // A CodeableConcept with text only: allowed for extensible bindings.
            if strength == Strength::Required {
                self.error(
                    "code-invalid",
                    format!("no code is given, but the binding to {url} is required"),
                    at,
                );
            }
            return;
        }
        if codings.iter().any(|(s, c)| self.in_value_set(&vs, *s, c)) {
            return;
        }
        let shown: Vec<String> = codings
            .iter()
            .map(|(s, c)| match s {
                Some(s) => format!("{s}#{c}"),
                None => (*c).to_string(),
            })
            .collect();
        let msg = format!(
            "the code {} is not in the value set {url}",
            shown.join(", ")
        );
        match strength {
            Strength::Required => self.error("code-invalid", msg, at),
            Strength::Extensible => self.warning("code-invalid", msg, at),
        }
    }

    fn in_value_set(&self, vs: &ValueSet, system: Option<&str>, code: &str) -> bool {
        vs.includes.iter().any(|inc| {
            if let (Some(want), Some(got)) = (&inc.system, system)
                && want != got
            {
                return false;
            }
            match (&inc.codes, &inc.system) {
                (Some(codes), _) => codes.contains(code),
                (None, Some(sys)) => self
                    .reg
                    .code_systems
                    .get(sys)
                    .is_some_and(|cs| cs.contains(code)),
                (None, None) => false,
            }
        })
    }
}

/// The values of the element `name` of `obj` (for `value[x]`, of whichever variant is present),
/// each with its FHIRPath location under `at`. A primitive that has only its `_name` extension
/// counts as present.
fn children<'v>(obj: &'v Map<String, Value>, name: &str, at: &str) -> Vec<Item<'v>> {
    let mut out = Vec::new();
    let mut push = |key: &str, v: &'v Value| match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                out.push((x, format!("{at}.{key}[{i}]")));
            }
        }
        v => out.push((v, format!("{at}.{key}"))),
    };
    if let Some(stem) = name.strip_suffix("[x]") {
        for (k, v) in obj {
            if let Some(t) = k.strip_prefix(stem)
                && t.starts_with(|c: char| c.is_ascii_uppercase())
            {
                // As `validate` names choices: `value.ofType(Coding)`, `value.ofType(string)`.
                let mut ty = t.to_string();
                let lower = format!("{}{}", t[..1].to_ascii_lowercase(), &t[1..]);
                if Primitive::from_code(&lower).is_some() {
                    ty = lower;
                }
                push(&format!("{stem}.ofType({ty})"), v);
            }
        }
    } else if let Some(v) = obj.get(name) {
        push(name, v);
    } else if let Some(v) = obj.get(&format!("_{name}")) {
        push(name, v);
    }
    out
}

/// The value at a simple dotted path (`system`, `url`, `type.coding`) under `v`.
fn at_path<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(v, |v, seg| v.get(seg))
}

/// Whether `v` has everything `pattern` has (R4 pattern[x] semantics: objects by their
/// properties, arrays by each pattern element having a match, primitives by equality).
fn contains(v: &Value, pattern: &Value) -> bool {
    match (v, pattern) {
        (Value::Object(o), Value::Object(p)) => p
            .iter()
            .all(|(k, pv)| o.get(k).is_some_and(|ov| contains(ov, pv))),
        (Value::Array(a), Value::Array(p)) => p.iter().all(|pv| a.iter().any(|x| contains(x, pv))),
        (Value::Array(a), p) => a.iter().any(|x| contains(x, p)),
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> Registry {
        let mut r = Registry::default();
        for bundle in [
            include_str!("../../fhir-profiles/vn/profiles.json"),
            include_str!("../../fhir-profiles/vn/terminology.json"),
        ] {
            let b: Value = serde_json::from_str(bundle).expect("JSON");
            for e in b["entry"].as_array().expect("entries") {
                r.learn(&e["resource"]).expect("compiles");
            }
        }
        r
    }

    const VN_PATIENT: &str = "https://yba.vn/fhir/StructureDefinition/vn-patient";

    fn exprs(issues: &[Issue]) -> Vec<(&str, &str)> {
        issues
            .iter()
            .map(|i| (i.expression.as_deref().unwrap_or(""), i.code))
            .collect()
    }

    #[test]
    fn our_profiles_and_terminology_are_valid_r4_and_compile() {
        for bundle in [
            include_str!("../../fhir-profiles/vn/profiles.json"),
            include_str!("../../fhir-profiles/vn/terminology.json"),
        ] {
            let b: Value = serde_json::from_str(bundle).expect("JSON");
            assert_eq!(super::super::validate::resource(&b), Ok("Bundle"));
        }
        let r = registry();
        assert_eq!(r.profiles.len(), 9);
        assert_eq!(
            r.code_systems["https://yba.vn/fhir/CodeSystem/drug-class"].len(),
            6
        );
        assert_eq!(
            r.code_systems["https://yba.vn/fhir/CodeSystem/vn-province"].len(),
            63
        );
    }

    #[test]
    fn cardinality_slices_and_bindings() {
        let r = registry();
        let ok = json!({"resourceType": "Patient",
            "identifier": [{"system": "http://fhir.ehealth.gov.vn/core/sid/citizen_id", "value": "001303012345"}],
            "name": [{"family": "Trần"}], "gender": "female", "birthDate": "2003-07-15",
            "address": [{"extension": [{"url": "https://yba.vn/fhir/StructureDefinition/administrative-address",
                "extension": [{"url": "province", "valueCoding": {"system": "https://yba.vn/fhir/CodeSystem/vn-province", "code": "001"}}]}]}]});
        assert_eq!(exprs(&r.validate(VN_PATIENT, &ok, "Patient")), []);

        let bad = json!({"resourceType": "Patient",
            "identifier": [{"system": "http://fhir.ehealth.gov.vn/core/sid/citizen_id", "value": "001303012345"},
                           {"system": "http://fhir.ehealth.gov.vn/core/sid/citizen_id", "value": "001303012346"}],
            "gender": "female",
            "address": [{"extension": [{"url": "https://yba.vn/fhir/StructureDefinition/administrative-address",
                "extension": [{"url": "province", "valueCoding": {"system": "https://yba.vn/fhir/CodeSystem/vn-province", "code": "003"}}]}]}]});
        assert_eq!(
            exprs(&r.validate(VN_PATIENT, &bad, "Patient")),
            [
                ("Patient.identifier", "structure"),
                ("Patient.name", "required"),
                ("Patient.birthDate", "required"),
                (
                    "Patient.address[0].extension[0].extension[0].value.ofType(Coding)",
                    "code-invalid"
                ),
            ]
        );
    }

    #[test]
    fn a_snapshot_serves_when_there_is_no_differential() {
        let mut r = Registry::default();
        let sd = json!({"resourceType": "StructureDefinition", "url": "urn:x:snap", "type": "Patient",
            "snapshot": {"element": [
                {"id": "Patient", "path": "Patient", "min": 0, "max": "*"},
                {"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1, "max": "1"},
                {"id": "Patient.gender", "path": "Patient.gender", "min": 0, "max": "1",
                 "binding": {"strength": "required", "valueSet": "urn:x:vs|1.0"}}]}});
        r.learn(&sd).expect("compiles");
        r.learn(&json!({"resourceType": "ValueSet", "url": "urn:x:vs",
            "compose": {"include": [{"system": "http://hl7.org/fhir/administrative-gender",
                "concept": [{"code": "female"}, {"code": "male"}]}]}}))
            .expect("learns");
        let p = json!({"resourceType": "Patient", "gender": "unknown"});
        assert_eq!(
            exprs(&r.validate("urn:x:snap", &p, "Patient")),
            [
                ("Patient.birthDate", "required"),
                ("Patient.gender", "code-invalid")
            ]
        );
        // A profile of another type, or an element outside its type, is refused.
        assert!(
            r.validate(
                "urn:x:snap",
                &json!({"resourceType": "Observation"}),
                "Observation"
            )[0]
            .code
                == "invalid"
        );
        let bad = json!({"resourceType": "StructureDefinition", "url": "urn:x:bad", "type": "Patient",
            "differential": {"element": [{"id": "Observation.code", "min": 1}]}});
        assert!(r.learn(&bad).is_err());
    }

    #[test]
    fn patterns_are_subsets() {
        assert!(contains(
            &json!({"coding": [{"system": "s", "code": "a", "display": "A"}], "text": "t"}),
            &json!({"coding": [{"system": "s", "code": "a"}]})
        ));
        assert!(!contains(
            &json!({"coding": [{"system": "s", "code": "b"}]}),
            &json!({"coding": [{"system": "s", "code": "a"}]})
        ));
    }
}
