//! The R4 element table: which elements each type has, their types and cardinality.
//!
//! Loaded once from `fhir-profiles/r4/elements.json`, a compact extract of the official R4
//! StructureDefinitions (see `fhir-profiles/tools/extract_r4_elements.py`). Validation, reference
//! rewriting and (later) search-parameter extraction all walk resources with it, so no code is
//! written per resource type.

use std::collections::HashMap;
use std::sync::LazyLock;

use rustc_hash::FxHashMap;

use serde::Deserialize;

static ELEMENTS_JSON: &str = include_str!("../../fhir-profiles/r4/elements.json");

/// The process-wide R4 schema, parsed on first use.
pub static R4: LazyLock<Schema> = LazyLock::new(|| Schema::load(ELEMENTS_JSON));

/// A FHIR primitive type. Each has its own lexical rules (see `fhir::primitive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    Boolean,
    Integer,
    UnsignedInt,
    PositiveInt,
    Decimal,
    String,
    Code,
    Id,
    Markdown,
    Uri,
    Url,
    Canonical,
    Oid,
    Uuid,
    Base64Binary,
    Date,
    DateTime,
    Instant,
    Time,
    Xhtml,
}

impl Primitive {
    /// The primitive type of a FHIR type code (`dateTime`), if it is one.
    pub fn from_code(code: &str) -> Option<Primitive> {
        Some(match code {
            "boolean" => Primitive::Boolean,
            "integer" => Primitive::Integer,
            "unsignedInt" => Primitive::UnsignedInt,
            "positiveInt" => Primitive::PositiveInt,
            "decimal" => Primitive::Decimal,
            "string" => Primitive::String,
            "code" => Primitive::Code,
            "id" => Primitive::Id,
            "markdown" => Primitive::Markdown,
            "uri" => Primitive::Uri,
            "url" => Primitive::Url,
            "canonical" => Primitive::Canonical,
            "oid" => Primitive::Oid,
            "uuid" => Primitive::Uuid,
            "base64Binary" => Primitive::Base64Binary,
            "date" => Primitive::Date,
            "dateTime" => Primitive::DateTime,
            "instant" => Primitive::Instant,
            "time" => Primitive::Time,
            "xhtml" => Primitive::Xhtml,
            _ => return None,
        })
    }

    /// The FHIR name of the type, as used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Primitive::Boolean => "boolean",
            Primitive::Integer => "integer",
            Primitive::UnsignedInt => "unsignedInt",
            Primitive::PositiveInt => "positiveInt",
            Primitive::Decimal => "decimal",
            Primitive::String => "string",
            Primitive::Code => "code",
            Primitive::Id => "id",
            Primitive::Markdown => "markdown",
            Primitive::Uri => "uri",
            Primitive::Url => "url",
            Primitive::Canonical => "canonical",
            Primitive::Oid => "oid",
            Primitive::Uuid => "uuid",
            Primitive::Base64Binary => "base64Binary",
            Primitive::Date => "date",
            Primitive::DateTime => "dateTime",
            Primitive::Instant => "instant",
            Primitive::Time => "time",
            Primitive::Xhtml => "xhtml",
        }
    }

    /// Whether the value may hold a link that a transaction rewrites (FHIR R4 §3.1.0.11.2:
    /// references, and elements of type uri, url, oid, uuid, canonical).
    pub fn is_uri_like(self) -> bool {
        matches!(
            self,
            Primitive::Uri
                | Primitive::Url
                | Primitive::Canonical
                | Primitive::Oid
                | Primitive::Uuid
        )
    }
}

/// What an element holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeRef {
    Primitive(Primitive),
    /// A complex type or backbone element, by its key in the schema (`HumanName`, `Patient.contact`).
    Complex(&'static str),
    /// Any resource (`contained`, `Bundle.entry.resource`): the JSON object says which.
    Resource,
}

/// One JSON property a type may have. Choice elements (`value[x]`) have one entry per type.
#[derive(Debug, Clone)]
pub struct Element {
    /// The element's name as FHIRPath sees it (`value` for `valueQuantity`).
    pub name: &'static str,
    pub ty: TypeRef,
    pub many: bool,
    pub summary: bool,
}

/// The elements of one type, by JSON property name.
#[derive(Debug, Default)]
pub struct TypeDef {
    /// FxHash: lookups by element name run for every element of every write, and the keys are
    /// the specification's, not an attacker's.
    pub elements: FxHashMap<&'static str, Element>,
    /// Elements with `min >= 1`: (name, the JSON property names that satisfy it).
    pub required: Vec<(&'static str, Vec<&'static str>)>,
    /// Choice elements: name to the JSON property names of its variants.
    pub choices: Vec<(&'static str, Vec<&'static str>)>,
}

/// All types of one FHIR release.
pub struct Schema {
    types: FxHashMap<&'static str, TypeDef>,
    resources: Vec<&'static str>,
}

#[derive(Deserialize)]
struct RawSchema {
    resources: Vec<String>,
    types: HashMap<String, Vec<(String, Vec<String>, String)>>,
}

/// Leaks a string: the schema lives for the whole process, and `&'static str` keys keep lookups cheap.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

impl Schema {
    fn load(json: &str) -> Schema {
        let raw: RawSchema =
            serde_json::from_str(json).expect("fhir-profiles/r4/elements.json is valid");
        let resources: Vec<&'static str> = raw.resources.into_iter().map(leak).collect();
        let mut keys: HashMap<String, &'static str> = HashMap::new();
        for k in raw.types.keys() {
            keys.insert(k.clone(), leak(k.clone()));
        }
        let mut types = FxHashMap::default();
        for (key, elements) in &raw.types {
            let resource_root = key == "Resource"
                || key == "DomainResource"
                || resources.binary_search(&key.as_str()).is_ok();
            let mut def = TypeDef::default();
            for (name, codes, flags) in elements {
                let many = flags.contains('*');
                let summary = flags.contains('s');
                let (base, is_choice) = match name.strip_suffix("[x]") {
                    Some(b) => (b, true),
                    None => (name.as_str(), false),
                };
                let base: &'static str = leak(base.to_string());
                let mut props = Vec::new();
                for code in codes {
                    let ty = type_ref(code, &keys, key, base, resource_root);
                    let prop: &'static str = if is_choice {
                        leak(format!("{base}{}", capitalise(code)))
                    } else {
                        base
                    };
                    def.elements.insert(
                        prop,
                        Element {
                            name: base,
                            ty,
                            many,
                            summary,
                        },
                    );
                    props.push(prop);
                }
                if is_choice {
                    def.choices.push((base, props.clone()));
                }
                if flags.contains('r') {
                    def.required.push((base, props));
                }
            }
            types.insert(keys[key], def);
        }
        Schema { types, resources }
    }

    /// The definition of a type or backbone element.
    pub fn type_def(&self, key: &str) -> Option<&TypeDef> {
        self.types.get(key)
    }

    /// The canonical name of a resource type, if `name` is one (case-sensitive).
    pub fn resource_type(&self, name: &str) -> Option<&'static str> {
        self.resources
            .binary_search(&name)
            .ok()
            .map(|i| self.resources[i])
    }

    /// Every concrete resource type of the release, sorted.
    pub fn resource_types(&self) -> &[&'static str] {
        &self.resources
    }
}

fn capitalise(code: &str) -> String {
    let mut c = code.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

fn type_ref(
    code: &str,
    keys: &HashMap<String, &'static str>,
    parent: &str,
    name: &str,
    resource_root: bool,
) -> TypeRef {
    // Resource.id is typed `string` in the R4 snapshots (a known defect, fixed in R4B); the
    // specification's datatype for a resource's logical id is `id`.
    if resource_root && name == "id" {
        return TypeRef::Primitive(Primitive::Id);
    }
    if let Some(p) = Primitive::from_code(code) {
        return TypeRef::Primitive(p);
    }
    if code == "Resource" || code == "DomainResource" {
        return TypeRef::Resource;
    }
    match keys.get(code) {
        Some(k) => TypeRef::Complex(k),
        None => panic!("elements.json: unknown type {code} at {parent}.{name}"),
    }
}
