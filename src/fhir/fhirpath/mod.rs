//! A FHIRPath (N1, with the FHIR R4 model) engine over JSON resources.
//!
//! Expressions are compiled once with [`parse`] and evaluated many times with
//! [`Expr::evaluate`] against a resource as `serde_json::Value`. Evaluation borrows from the
//! resource: elements come back as [`Item::Node`]s pointing into the JSON, each carrying its FHIR
//! type from the R4 element table (`schema::R4`), which search-parameter extraction relies on
//! (a `Period` and a `dateTime` index differently).
//!
//! ```ignore
//! let expr = fhirpath::parse("Patient.name.where(use = 'official').family")?;
//! for item in expr.evaluate(&resource)? {
//!     if let fhirpath::Item::Node(node) = item { /* node.value, node.ty */ }
//! }
//! ```
//!
//! Model rules:
//! - The root's type comes from `resourceType`; so do nodes typed `Resource` (`contained`,
//!   `Bundle.entry.resource`, `Parameters.parameter.resource`).
//! - An identifier that names the type of its input or a supertype (`Patient` or `Resource` in
//!   `Patient.name`, `Resource.id`) yields the input itself; naming another resource type yields
//!   nothing, so `Patient.name | Practitioner.name` on a Patient gives the patient's names only.
//! - `value` on an element with `valueQuantity` yields that node, typed `Quantity`.
//! - A primitive's `_name` sibling (id and extensions) is attached to its node as
//!   [`Node::ext`]; a primitive that has only the sibling yields a node whose value is JSON
//!   `null` (FHIRPath: an element without a value).
//! - `resolve()` needs no database: on a Reference (or a uri/canonical) it yields the contained
//!   resource for `#id`, the entry of the enclosing Bundle whose `fullUrl` matches, or else an
//!   [`Item::Resolved`] marker typed from the reference (`Patient/1`, `http://x/Patient/1`,
//!   `Patient/1/_history/2`, or the Reference's `type`), so `where(resolve() is Patient)` works.
//! - `is` follows the FHIR type hierarchy (`code` is a `string`, `Age` is a `Quantity`); `as`
//!   and `ofType` match primitives exactly. As in HAPI's search extraction, a `Quantity` matches
//!   its profiles (`value as Age`), and `as` on a collection filters it instead of failing.
//! - `memberOf`, `subsumes`, `subsumedBy` need a terminology server and return empty;
//!   `conformsTo` knows only the core resource profiles (another URL is an error).
//! - `|` removes duplicates by FHIRPath equality (`1.0 'g'` equals `1.00 'g'`); the same
//!   element reached twice is one item.
//! - Beyond N1: `trim`, `split`, `join`, `encode`/`decode`, `escape`/`unescape`,
//!   `lowBoundary`/`highBoundary`, `precision`, `comparable`, `sort`, `matchesFull`,
//!   `lastIndexOf`, long literals (`1L`). Not done: static type checking of paths
//!   (`name.given1` is empty, not an error), UCUM beyond simple metric and time units.
//!
//! Functions' non-iterating arguments are evaluated in the caller's scope (`$this` is the
//! outer focus); `where`, `select`, `all`, `exists`, `repeat`, `aggregate`, `sort` evaluate
//! theirs per input item with `$this` / `$index` (`$total`) set.
//!
//! Limits (expressions are untrusted): the AST is at most [`MAX_DEPTH`] deep and sub-expressions
//! nest at most [`MAX_NESTING`] deep, so parsing and evaluation fit in a 1 MiB stack even in
//! debug builds; an evaluation does a bounded amount of work and builds strings of at most
//! 1 MiB, failing with an [`EvalError`] beyond that. Nothing panics on any input.

mod decimal;
mod eval;
mod lexer;
mod parser;
mod temporal;
mod types;

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use crate::fhir::schema::{R4, TypeRef};

pub use decimal::Decimal;
pub use parser::{MAX_DEPTH, MAX_NESTING};
pub use temporal::{Precision, Temporal};

/// A compiled FHIRPath expression.
#[derive(Debug, Clone)]
pub struct Expr {
    ast: parser::Ast,
    src: String,
}

/// Compiles an expression. Function names, arities, type names and literals are checked here.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let ast = parser::parse(src)?;
    Ok(Expr {
        ast,
        src: src.to_string(),
    })
}

/// A syntax or semantic error in an expression, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the expression.
    pub offset: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    pub message: String,
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl ParseError {
    pub(crate) fn new(src: &str, offset: usize, message: impl Into<String>) -> ParseError {
        let (line, column) = line_col(src, offset);
        ParseError {
            offset,
            line,
            column,
            message: message.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FHIRPath syntax error at line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// An error while evaluating (a non-singleton where one item is required, incompatible
/// operands, an unknown `%variable`...), with the position of the failing sub-expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    /// Byte offset in the expression.
    pub offset: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FHIRPath evaluation error at line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for EvalError {}

/// An element of the resource, with its FHIR type.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// The JSON value: an object for complex types and resources, a string / number / boolean
    /// for primitives, or `null` for a primitive that has only extensions.
    pub value: &'a Value,
    /// The FHIR type. `TypeRef::Resource` only for a resource whose `resourceType` is unknown.
    pub ty: TypeRef,
    /// For primitives: the `_name` sibling object (its `id` and `extension`), if any.
    pub ext: Option<&'a Value>,
}

impl<'a> Node<'a> {
    /// A node for a resource, typed from its `resourceType`.
    pub fn resource(value: &'a Value) -> Node<'a> {
        let ty = value
            .get("resourceType")
            .and_then(Value::as_str)
            .and_then(|rt| R4.resource_type(rt))
            .map_or(TypeRef::Resource, TypeRef::Complex);
        Node {
            value,
            ty,
            ext: None,
        }
    }

    /// A node of a known type.
    pub fn new(value: &'a Value, ty: TypeRef) -> Node<'a> {
        if ty == TypeRef::Resource {
            return Node::resource(value);
        }
        Node {
            value,
            ty,
            ext: None,
        }
    }
}

/// One item of a FHIRPath collection.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    /// An element of the resource.
    Node(Node<'a>),
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(Cow<'a, str>),
    Date(Temporal),
    DateTime(Temporal),
    Time(Temporal),
    /// A System quantity: value and unit (a UCUM code or a calendar keyword such as `days`).
    Quantity(Decimal, Cow<'a, str>),
    /// What `resolve()` gives for a reference outside the resource: only its type is known.
    Resolved(&'static str),
    /// What `type()` gives: namespace and name.
    TypeInfo(&'static str, &'static str),
}

impl<'a> Item<'a> {
    /// The node, if the item is one.
    pub fn as_node(&self) -> Option<&Node<'a>> {
        match self {
            Item::Node(n) => Some(n),
            _ => None,
        }
    }

    /// The item's text if it is a string or a string-like FHIR primitive (`code`, `uri`...).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Item::String(s) => Some(s),
            Item::Node(n) => match n.ty {
                TypeRef::Primitive(_) => n.value.as_str(),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The FHIRPath `toString()` form of an item (`2015-02-04`, `4 'mg'`, `true`); nodes of
/// complex types print as their JSON.
impl fmt::Display for Item<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Node(n) => match n.value {
                Value::String(s) => f.write_str(s),
                Value::Null => Ok(()),
                v => write!(f, "{v}"),
            },
            Item::Boolean(b) => write!(f, "{b}"),
            Item::Integer(i) => write!(f, "{i}"),
            Item::Decimal(d) => write!(f, "{d}"),
            Item::String(s) => f.write_str(s),
            Item::Date(t) => t.fmt_date(f),
            Item::DateTime(t) => t.fmt_date_time(f),
            Item::Time(t) => {
                t.fmt_time(f)?;
                t.fmt_tz(f)
            }
            Item::Quantity(v, u) => {
                if temporal::calendar_unit(u).is_some() && u.len() >= 3 && u != "min" {
                    write!(f, "{v} {u}")
                } else {
                    write!(f, "{v} '{u}'")
                }
            }
            Item::Resolved(t) => f.write_str(t),
            Item::TypeInfo(ns, n) => write!(f, "{ns}.{n}"),
        }
    }
}

/// Evaluation settings beyond the resource: the starting node and `%variables`.
#[derive(Debug, Default, Clone)]
pub struct Env<'a> {
    context: Option<Vec<Item<'a>>>,
    vars: Vec<(String, Vec<Item<'a>>)>,
}

impl<'a> Env<'a> {
    /// Default settings: the expression starts at the resource.
    pub fn new() -> Env<'a> {
        Env::default()
    }

    /// Starts the expression at `context` (also `%context`) instead of the resource.
    pub fn with_context(mut self, context: Vec<Item<'a>>) -> Env<'a> {
        self.context = Some(context);
        self
    }

    /// Defines `%name`. Built-in names (`%resource`, `%ucum`...) can be overridden.
    pub fn with_var(mut self, name: &str, value: Vec<Item<'a>>) -> Env<'a> {
        self.vars.push((name.to_string(), value));
        self
    }
}

impl Expr {
    /// The expression's source text.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// Evaluates against a resource (also `%resource` and `%context`).
    pub fn evaluate<'a>(&'a self, resource: &'a Value) -> Result<Vec<Item<'a>>, EvalError> {
        self.evaluate_with(resource, &Env::new())
    }

    /// Evaluates with settings (a starting node, `%variables`).
    pub fn evaluate_with<'a>(
        &'a self,
        resource: &'a Value,
        env: &Env<'a>,
    ) -> Result<Vec<Item<'a>>, EvalError> {
        eval::evaluate(&self.ast, resource, env).map_err(|(offset, message)| {
            let (line, column) = line_col(&self.src, offset);
            EvalError {
                offset,
                line,
                column,
                message,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::schema::Primitive;
    use serde_json::json;

    fn eval<'a>(expr: &'a Expr, res: &'a Value) -> Vec<Item<'a>> {
        expr.evaluate(res).expect("evaluates")
    }

    /// The results as strings (FHIRPath `toString()` form).
    fn strings(src: &str, res: &Value) -> Vec<String> {
        let expr = parse(src).expect("parses");
        eval(&expr, res).iter().map(|i| i.to_string()).collect()
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "birthDate": "1974-12-25",
            "_birthDate": {"extension": [{"url": "http://x/time", "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
            "name": [
                {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
                {"use": "usual", "given": ["Jim"], "_given": [{"extension": [{"url": "http://x/nick", "valueBoolean": true}]}]}
            ],
            "active": true,
            "deceasedBoolean": false,
            "contained": [{"resourceType": "Organization", "id": "org1", "name": "Acme"}],
            "managingOrganization": {"reference": "#org1"},
            "generalPractitioner": [
                {"reference": "Practitioner/1"},
                {"reference": "http://example.org/fhir/Patient/2/_history/3"},
                {"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", "type": "RelatedPerson"}
            ]
        })
    }

    #[test]
    fn compiled_expressions_are_shareable() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Expr>();
        shareable::<ParseError>();
        shareable::<EvalError>();
    }

    #[test]
    fn parse_errors_have_positions() {
        let e = parse("Patient.name.where(").expect_err("incomplete");
        assert_eq!((e.line, e.column), (1, 20));
        let e = parse("Patient..name").expect_err("double dot");
        assert_eq!(e.column, 9, "{e}");
        let e = parse("name.foo(1)").expect_err("unknown function");
        assert_eq!(e.column, 6);
        assert!(e.message.contains("unknown function 'foo'"));
        let e = parse("name.where()").expect_err("arity");
        assert!(e.message.contains("where() takes 1 argument"), "{e}");
        let e = parse("'abc").expect_err("unterminated");
        assert_eq!(e.column, 1);
        let e = parse("1 +\n  @2020-13-01").expect_err("bad date");
        assert_eq!((e.line, e.column), (2, 3));
        let e = parse("x is Foo").expect_err("unknown type");
        assert!(e.message.contains("unknown type 'Foo'"));
        assert!(parse("x /* open").is_err());
        assert!(parse("$foo").is_err());
        assert!(parse("a and").is_err());
        assert!(parse("@T10:00Z").is_err());
        assert!(e.to_string().starts_with("FHIRPath syntax error at line 1"));
    }

    #[test]
    fn grammar() {
        let r = json!({"resourceType": "Basic"});
        assert_eq!(strings("1 + 2 * 3 - 4 / 2", &r), ["5"]);
        assert_eq!(strings("7 div 2 | 7 mod 2 | -(3)", &r), ["3", "1", "-3"]);
        assert_eq!(strings("'a' & {} & 'b'", &r), ["ab"]);
        assert_eq!(strings(r"'it\'s \u0041\n'.length()", &r), ["7"]);
        assert_eq!(strings("`div`.exists()", &r), ["false"]);
        assert_eq!(strings("(1 | 2 | 3)[1]", &r), ["2"]);
        assert_eq!(
            strings("4 'mg' = 4 'mg' and 1 year > 11 months", &r),
            ["true"]
        );
        assert_eq!(strings("@2020-01-01 < @2020-01-02T10:00", &r), ["true"]);
        assert_eq!(strings("@2020-01 = @2020-01-01", &r), Vec::<String>::new());
        assert_eq!(strings("@T10:30 < @T11", &r), ["true"]);
        assert_eq!(strings("@T10:30 < @T10", &r), Vec::<String>::new());
        assert_eq!(strings("@T10:30:00 > @T10:29:59.999", &r), ["true"]);
        assert_eq!(
            strings("1 is Integer and 1.0 is Decimal and 'x' is String", &r),
            ["true"]
        );
        assert_eq!(
            strings("2 in (1 | 2) and (1 | 2) contains 3", &r),
            ["false"]
        );
        assert_eq!(strings("true implies {}", &r), Vec::<String>::new());
        assert_eq!(strings("false implies {}", &r), ["true"]);
        assert_eq!(strings("{} and false", &r), ["false"]);
        assert_eq!(strings("{} or true", &r), ["true"]);
        assert_eq!(strings("true xor {}", &r), Vec::<String>::new());
        assert_eq!(strings("{} = 1", &r), Vec::<String>::new());
        assert_eq!(strings("'a' ~ 'A' and 1.0 ~ 1.04", &r), ["true"]);
        assert_eq!(
            strings("(1 | 2 | 3).aggregate($this + $total, 0)", &r),
            ["6"]
        );
        assert_eq!(strings("(10 | 20).select($index)", &r), ["0", "1"]);
        assert_eq!(strings("%ucum", &r), ["http://unitsofmeasure.org"]);
        assert_eq!(strings("%`vs-x`", &r), ["http://hl7.org/fhir/ValueSet/x"]);
        assert_eq!(strings("iif(1 > 2, 'a', 'b')", &r), ["b"]);
        assert_eq!(
            strings(
                "'abc'.matches('^a.c$') and 'abc'.replaceMatches('b', 'x') = 'axc'",
                &r
            ),
            ["true"]
        );
        let e = parse("(1 | 2) > 1").expect("parses");
        assert!(e.evaluate(&r).is_err(), "comparison of a collection");
        let e = parse("%nope").expect("parses");
        let err = e.evaluate(&r).expect_err("undefined variable");
        assert_eq!(err.column, 1);
    }

    #[test]
    fn type_names_filter_the_context() {
        let p = patient();
        assert_eq!(
            strings("Patient.name.family | Practitioner.name.family", &p),
            ["Chalmers"]
        );
        assert_eq!(strings("Observation.status", &p), Vec::<String>::new());
        assert_eq!(strings("Resource.id | DomainResource.id", &p), ["p1"]);
        assert_eq!(strings("Resource.meta.exists()", &p), ["false"]);
        assert_eq!(strings("name.given", &p), ["Peter", "James", "Jim"]);
        assert_eq!(
            strings("Patient.name.where(use = 'usual').given", &p),
            ["Jim"]
        );
        assert_eq!(
            strings("Patient.name.given.first() | Patient.name.given.last()", &p),
            ["Peter", "Jim"]
        );
    }

    #[test]
    fn nodes_carry_types() {
        let p = patient();
        let expr = parse("Patient.birthDate | Patient.deceased | Patient.id | Patient.name")
            .expect("parses");
        let items = eval(&expr, &p);
        let tys: Vec<TypeRef> = items
            .iter()
            .filter_map(|i| i.as_node())
            .map(|n| n.ty)
            .collect();
        assert_eq!(
            tys,
            [
                TypeRef::Primitive(Primitive::Date),
                TypeRef::Primitive(Primitive::Boolean),
                TypeRef::Primitive(Primitive::Id),
                TypeRef::Complex("HumanName"),
                TypeRef::Complex("HumanName"),
            ]
        );
        let obs: Value = serde_json::from_str(
            r#"{"resourceType": "Observation", "status": "final",
            "valueQuantity": {"value": 1.50, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}"#,
        )
        .expect("json");
        let expr = parse("Observation.value").expect("parses");
        let items = eval(&expr, &obs);
        assert_eq!(items.len(), 1);
        assert_eq!(
            items[0].as_node().map(|n| n.ty),
            Some(TypeRef::Complex("Quantity"))
        );
        assert_eq!(
            strings("(Observation.value as Quantity).value", &obs),
            ["1.50"]
        );
        assert_eq!(strings("(Observation.value as Age).unit", &obs), ["mg"]);
        assert_eq!(
            strings("Observation.value.ofType(Period)", &obs),
            Vec::<String>::new()
        );
        assert_eq!(strings("Observation.value is Quantity", &obs), ["true"]);
        assert_eq!(
            strings(
                "Observation.value > 1 'mg' and Observation.value < 1 'g'",
                &obs
            ),
            ["true"]
        );
        assert_eq!(
            strings(
                "Observation.status is code and Observation.status is string",
                &obs
            ),
            ["true"]
        );
        assert_eq!(
            strings("Observation.status.as(string)", &obs),
            Vec::<String>::new()
        );
        assert_eq!(strings("Observation.status.is(FHIR.code)", &obs), ["true"]);
    }

    #[test]
    fn resources_inside_resources_take_their_type() {
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "id": "a", "gender": "male"}},
            {"resource": {"resourceType": "Observation", "id": "b", "status": "final",
                          "subject": {"reference": "urn:uuid:1"}}}
        ]});
        assert_eq!(
            strings("Bundle.entry.resource.ofType(Patient).gender", &bundle),
            ["male"]
        );
        assert_eq!(
            strings(
                "Bundle.entry.resource.where($this is Observation).status",
                &bundle
            ),
            ["final"]
        );
        assert_eq!(
            strings("Bundle.entry[0].resource.type().name", &bundle),
            ["Patient"]
        );
        // A reference to another entry of the Bundle resolves to it.
        assert_eq!(
            strings(
                "Bundle.entry.resource.ofType(Observation).subject.resolve().gender",
                &bundle
            ),
            ["male"]
        );
    }

    #[test]
    fn resolve_without_a_database() {
        let p = patient();
        assert_eq!(
            strings("Patient.managingOrganization.resolve().name", &p),
            ["Acme"]
        );
        assert_eq!(
            strings(
                "Patient.managingOrganization.where(resolve() is Organization).reference",
                &p
            ),
            ["#org1"]
        );
        assert_eq!(
            strings(
                "Patient.generalPractitioner.where(resolve() is Practitioner).reference",
                &p
            ),
            ["Practitioner/1"]
        );
        assert_eq!(
            strings(
                "Patient.generalPractitioner.where(resolve() is Patient).reference",
                &p
            ),
            ["http://example.org/fhir/Patient/2/_history/3"]
        );
        assert_eq!(
            strings(
                "Patient.generalPractitioner.where(resolve() is RelatedPerson).exists()",
                &p
            ),
            ["true"]
        );
        assert_eq!(
            strings("Patient.generalPractitioner.resolve().count()", &p),
            ["3"]
        );
    }

    #[test]
    fn primitive_extensions() {
        let p = patient();
        assert_eq!(
            strings("Patient.birthDate.extension('http://x/time').value", &p),
            ["1974-12-25T14:35:45-05:00"]
        );
        assert_eq!(
            strings("Patient.name.given.extension('http://x/nick').value", &p),
            ["true"]
        );
        assert_eq!(
            strings(
                "Patient.birthDate.hasValue() and Patient.active.hasValue()",
                &p
            ),
            ["true"]
        );
        let only_ext = json!({"resourceType": "Patient",
            "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}});
        assert_eq!(strings("Patient.birthDate.exists()", &only_ext), ["true"]);
        assert_eq!(
            strings("Patient.birthDate.hasValue()", &only_ext),
            ["false"]
        );
        assert_eq!(
            strings("Patient.birthDate = @2000", &only_ext),
            Vec::<String>::new()
        );
        let expr = parse("Patient.birthDate").expect("parses");
        let items = eval(&expr, &only_ext);
        assert!(items[0].as_node().is_some_and(|n| n.value.is_null()));
    }

    #[test]
    fn functions() {
        let p = patient();
        assert_eq!(strings("Patient.name.given.count()", &p), ["3"]);
        assert_eq!(
            strings("Patient.name.exists(use = 'maiden')", &p),
            ["false"]
        );
        assert_eq!(strings("Patient.name.all(given.exists())", &p), ["true"]);
        assert_eq!(strings("Patient.name.given.distinct().count()", &p), ["3"]);
        assert_eq!(strings("Patient.name.given.skip(1).take(1)", &p), ["James"]);
        assert_eq!(
            strings("Patient.name.given.first().startsWith('Pe')", &p),
            ["true"]
        );
        assert_eq!(
            strings("Patient.name.given.first().substring(1, 2).upper()", &p),
            ["ET"]
        );
        assert_eq!(
            strings(
                "Patient.deceased.exists() and Patient.deceased != false",
                &p
            ),
            ["false"]
        );
        assert_eq!(strings("Patient.children().count() > 5", &p), ["true"]);
        assert_eq!(
            strings("Patient.descendants().ofType(HumanName).count()", &p),
            ["2"]
        );
        assert_eq!(
            strings("Patient.name.family.trace('x').not()", &p),
            ["false"]
        );
        assert_eq!(strings("Patient.birthDate + 1 year", &p), ["1975-12-25"]);
        assert_eq!(strings("'1.5'.toDecimal() + 1", &p), ["2.5"]);
        assert_eq!(strings("Patient.active.toString() & '!'", &p), ["true!"]);
        assert_eq!(
            strings("Patient.name.select(given.first()).join(',')", &p),
            ["Peter,Jim"]
        );
        assert_eq!(
            strings("Patient.name.given.memberOf('http://x')", &p),
            Vec::<String>::new()
        );
        assert_eq!(
            strings(
                "Patient.conformsTo('http://hl7.org/fhir/StructureDefinition/Patient')",
                &p
            ),
            ["true"]
        );
        assert_eq!(
            strings(
                "Patient.name.sort(-given.first()).select(given.first())",
                &p
            ),
            ["Peter", "Jim"]
        );
        assert_eq!(
            strings("Patient.name.sort(given.first()).select(given.first())", &p),
            ["Jim", "Peter"]
        );
    }

    #[test]
    fn context_and_variables() {
        let p = patient();
        let names = parse("Patient.name").expect("parses");
        let name_items = eval(&names, &p);
        let given =
            parse("given.first() & '/' & %resource.id & '/' & %x.toString()").expect("parses");
        let env = Env::new()
            .with_context(vec![name_items[1].clone()])
            .with_var("x", vec![Item::Integer(7)]);
        let r = given.evaluate_with(&p, &env).expect("evaluates");
        assert_eq!(
            r.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            ["Jim/p1/7"]
        );
    }

    #[test]
    fn deep_or_hostile_input_is_rejected_without_panicking() {
        let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
        assert!(parse(&deep).is_err());
        let long = vec!["1"; 20_000].join(" + ");
        assert!(parse(&long).is_err());
        let neg = format!("{}1", "-".repeat(10_000));
        assert!(parse(&neg).is_err());
        let chain = vec!["a"; 20_000].join(".");
        assert!(parse(&chain).is_err());
        let union = vec!["a"; 2_000].join(" | ");
        assert!(parse(&union).is_ok(), "long unions are flat");
        for src in [
            "",
            "(",
            ")",
            "'",
            "`",
            "@",
            "@T",
            "%",
            "$",
            "1..2",
            "a[",
            "a[]",
            "{",
            "}",
            "a.(b)",
            "é",
            "1e",
            "@2020-",
            "@2020T25",
            "a is",
            "a as 1",
            "f(,)",
            "'\\u12'",
            "9999999999999999999999",
            "1.0000000000000000000000000000000000000000001",
            "ofType()",
            "is(1)",
        ] {
            let _ = parse(src);
        }
        let r = json!({"resourceType": "Basic"});
        for src in [
            "9223372036854775807 + 1",
            "-9223372036854775807 - 2",
            "9223372036854775807 * 2",
            "1 / 0",
            "1 div 0",
            "1 mod 0",
            "1.5 / 0.0",
            "'abc'.substring(-1)",
            "'abc'.substring(1, -5)",
            "@9999-12-31 + 1 day",
            "@0001-01-01 - 1 year",
            "(1 | 2).repeat($this + 1).count()",
            "'x'.matches('(')",
            "'x'.replaceMatches('a{1000000}', 'b')",
            "1.0000000000000000000001 * 1000000000000000000000000000",
            "(2).power(100000)",
            "1e0.toString()",
        ] {
            if let Ok(e) = parse(src) {
                let _ = e.evaluate(&r);
            }
        }
    }
}
