//! Type specifiers (`is`, `as`, `ofType`) and the type of each item (`type()`).

use crate::fhir::schema::{Primitive, R4, TypeRef};

use super::Item;

/// A System (FHIRPath) type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SysType {
    Boolean,
    String,
    Integer,
    Decimal,
    Date,
    DateTime,
    Time,
    Quantity,
}

impl SysType {
    fn from_name(name: &str) -> Option<SysType> {
        Some(match name {
            "Boolean" => SysType::Boolean,
            "String" => SysType::String,
            "Integer" | "Long" => SysType::Integer,
            "Decimal" => SysType::Decimal,
            "Date" => SysType::Date,
            "DateTime" => SysType::DateTime,
            "Time" => SysType::Time,
            "Quantity" => SysType::Quantity,
            _ => return None,
        })
    }

    /// The type's name in the System namespace.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SysType::Boolean => "Boolean",
            SysType::String => "String",
            SysType::Integer => "Integer",
            SysType::Decimal => "Decimal",
            SysType::Date => "Date",
            SysType::DateTime => "DateTime",
            SysType::Time => "Time",
            SysType::Quantity => "Quantity",
        }
    }
}

/// A resolved type specifier.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TypeSpec {
    System(SysType),
    /// A FHIR primitive type (`string`, `dateTime`).
    Primitive(Primitive),
    /// A FHIR complex type, resource type, or abstract type (`Resource`, `Element`...).
    Fhir(Box<str>),
    /// A System name no value has (`System.Patient`).
    Never,
}

/// Quantity profiles of R4: elements of these types are Quantities.
const QUANTITY_PROFILES: [&str; 6] = [
    "Age",
    "Distance",
    "Duration",
    "Count",
    "SimpleQuantity",
    "MoneyQuantity",
];

const ABSTRACT: [&str; 4] = ["Resource", "DomainResource", "Element", "BackboneElement"];

/// Resources that are not DomainResources.
const NOT_DOMAIN: [&str; 3] = ["Bundle", "Binary", "Parameters"];

fn primitive_from_name(name: &str) -> Option<Primitive> {
    Primitive::from_code(name)
}

/// The primitive a FHIR primitive type is derived from, if any (R4 StructureDefinitions).
fn primitive_parent(p: Primitive) -> Option<Primitive> {
    use Primitive::*;
    match p {
        Code | Id | Markdown => Some(String),
        Url | Canonical | Oid | Uuid => Some(Uri),
        UnsignedInt | PositiveInt => Some(Integer),
        _ => None,
    }
}

fn is_fhir_type_name(name: &str) -> bool {
    ABSTRACT.contains(&name)
        || QUANTITY_PROFILES.contains(&name)
        || (!name.contains('.') && R4.type_def(name).is_some())
}

impl TypeSpec {
    /// Resolves `[namespace.]name`. Unqualified names are looked up in FHIR first, then System.
    pub(crate) fn resolve(ns: &Option<String>, name: &str) -> Result<TypeSpec, String> {
        match ns.as_deref() {
            Some("System") => {
                Ok(SysType::from_name(name).map_or(TypeSpec::Never, TypeSpec::System))
            }
            Some("FHIR") => {
                TypeSpec::fhir(name).ok_or_else(|| format!("unknown FHIR type '{name}'"))
            }
            Some(other) => Err(format!("unknown type namespace '{other}'")),
            None => TypeSpec::fhir(name)
                .or_else(|| SysType::from_name(name).map(TypeSpec::System))
                .ok_or_else(|| format!("unknown type '{name}'")),
        }
    }

    fn fhir(name: &str) -> Option<TypeSpec> {
        if let Some(p) = primitive_from_name(name) {
            return Some(TypeSpec::Primitive(p));
        }
        if is_fhir_type_name(name) {
            return Some(TypeSpec::Fhir(name.into()));
        }
        None
    }

    /// Whether `item` is of this type. `exact` (for `as` / `ofType`) does not accept FHIR
    /// primitives derived from the named one (`code` is a `string` only for `is`).
    pub(crate) fn matches(&self, item: &Item<'_>, exact: bool) -> bool {
        match self {
            TypeSpec::Never => false,
            TypeSpec::System(s) => system_type(item) == Some(*s),
            TypeSpec::Primitive(p) => match item {
                Item::Node(n) => match n.ty {
                    TypeRef::Primitive(q) => q == *p || (!exact && primitive_parent(q) == Some(*p)),
                    _ => false,
                },
                _ => false,
            },
            TypeSpec::Fhir(name) => is_fhir_type(item, name),
        }
    }
}

/// Whether `item` is of the FHIR complex, resource or abstract type `name` (or a subtype).
pub(crate) fn is_fhir_type(item: &Item<'_>, name: &str) -> bool {
    match item {
        Item::Node(n) => match n.ty {
            TypeRef::Primitive(_) => name == "Element",
            TypeRef::Complex(key) => complex_is(key, name),
            TypeRef::Resource => name == "Resource",
        },
        Item::Resolved(rt) => resource_is(rt, name),
        Item::Quantity(..) => name == "Quantity",
        _ => false,
    }
}

/// Whether `name` is a resource type or an abstract resource type (`Resource`,
/// `DomainResource`): as the first step of a path it only ever filters.
pub(crate) fn is_resource_type_name(name: &str) -> bool {
    name == "Resource" || name == "DomainResource" || R4.resource_type(name).is_some()
}

fn resource_is(rt: &str, name: &str) -> bool {
    rt == name || name == "Resource" || (name == "DomainResource" && !NOT_DOMAIN.contains(&rt))
}

fn complex_is(key: &str, name: &str) -> bool {
    if key == name {
        return true;
    }
    if key.contains('.') {
        return name == "BackboneElement" || name == "Element";
    }
    if R4.resource_type(key).is_some() {
        return resource_is(key, name);
    }
    if name == "Element" {
        return true;
    }
    // Quantity profiles are Quantities; and, as HAPI does for search extraction, a plain
    // Quantity is accepted where a profile of it is asked for (`value as Age`).
    (name == "Quantity" && QUANTITY_PROFILES.contains(&key))
        || (key == "Quantity" && QUANTITY_PROFILES.contains(&name))
}

/// The System type of a non-node item.
pub(crate) fn system_type(item: &Item<'_>) -> Option<SysType> {
    Some(match item {
        Item::Boolean(_) => SysType::Boolean,
        Item::String(_) => SysType::String,
        Item::Integer(_) => SysType::Integer,
        Item::Decimal(_) => SysType::Decimal,
        Item::Date(_) => SysType::Date,
        Item::DateTime(_) => SysType::DateTime,
        Item::Time(_) => SysType::Time,
        Item::Quantity(..) => SysType::Quantity,
        _ => return None,
    })
}

/// `(namespace, name)` of an item's type, as `type()` reports it.
pub(crate) fn type_info(item: &Item<'_>) -> (&'static str, &'static str) {
    match item {
        Item::Node(n) => match n.ty {
            TypeRef::Primitive(p) => ("FHIR", p.name()),
            TypeRef::Complex(k) if k.contains('.') => ("FHIR", "BackboneElement"),
            TypeRef::Complex(k) => ("FHIR", k),
            TypeRef::Resource => ("FHIR", "Resource"),
        },
        Item::Resolved(rt) => ("FHIR", rt),
        Item::TypeInfo(..) => ("System", "TypeInfo"),
        other => ("System", system_type(other).map_or("Any", SysType::name)),
    }
}
