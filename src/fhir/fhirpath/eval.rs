//! Evaluation of a checked AST against a JSON resource.

use std::borrow::Cow;
use std::cell::Cell;
use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::fhir::schema::{Primitive, R4, TypeRef};

use super::decimal::Decimal;
use super::parser::{Ast, BinOp, Func, Kind, RegexFn, compile_regex};
use super::temporal::{CalUnit, Precision, Temporal, calendar_unit};
use super::types::{is_fhir_type, is_resource_type_name, type_info};
use super::{Env, Item, Node};

/// An error: byte offset in the expression and message.
pub(crate) type Error = (usize, String);
type R<'a> = Result<Vec<Item<'a>>, Error>;

/// The JSON `null` that primitives with only extensions point to.
static NULL: Value = Value::Null;

/// The work one evaluation may do, in steps (an AST node evaluated, an item produced, two
/// items compared). Expressions are untrusted (`_filter`); search extraction uses far less.
const MAX_WORK: u64 = 2_000_000;

/// The longest string an operation may produce.
const MAX_STRING: usize = 1 << 20;

struct Ctx<'a, 'e> {
    resource: &'a Value,
    context: &'e [Item<'a>],
    env: &'e Env<'a>,
    now: Cell<Option<Temporal>>,
    /// Steps left before the evaluation is abandoned.
    budget: Cell<u64>,
}

/// The iteration variables in force.
#[derive(Clone, Copy)]
struct Scope<'s, 'a> {
    this: &'s [Item<'a>],
    index: Option<usize>,
    total: Option<&'s [Item<'a>]>,
}

pub(crate) fn evaluate<'a>(ast: &'a Ast, resource: &'a Value, env: &Env<'a>) -> R<'a> {
    let root = [Item::Node(Node::resource(resource))];
    let context: &[Item<'a>] = match &env.context {
        Some(c) => c,
        None => &root,
    };
    let ctx = Ctx {
        resource,
        context,
        env,
        now: Cell::new(None),
        budget: Cell::new(MAX_WORK),
    };
    let scope = Scope {
        this: context,
        index: None,
        total: None,
    };
    ctx.eval(ast, scope)
}

fn err<T>(pos: usize, msg: impl Into<String>) -> Result<T, Error> {
    Err((pos, msg.into()))
}

/// A plain view of an item's value, for operators.
#[derive(Debug, Clone, Copy)]
enum Val<'x> {
    Empty,
    Bool(bool),
    Int(i64),
    Dec(Decimal),
    Str(&'x str),
    Date(Temporal),
    DateTime(Temporal),
    Time(Temporal),
    Qty(Decimal, &'x str),
    Complex(&'x Value),
    Other,
}

fn kind_name(v: &Val<'_>) -> &'static str {
    match v {
        Val::Empty => "empty",
        Val::Bool(_) => "Boolean",
        Val::Int(_) => "Integer",
        Val::Dec(_) => "Decimal",
        Val::Str(_) => "String",
        Val::Date(_) => "Date",
        Val::DateTime(_) => "DateTime",
        Val::Time(_) => "Time",
        Val::Qty(..) => "Quantity",
        Val::Complex(_) => "complex element",
        Val::Other => "value",
    }
}

fn number_val(v: &Value, decimal: bool) -> Val<'_> {
    match v {
        Value::Number(n) => {
            if !decimal && let Some(i) = n.as_i64() {
                return Val::Int(i);
            }
            match Decimal::parse(&n.to_string()) {
                Some(d) => Val::Dec(d),
                None => Val::Other,
            }
        }
        Value::String(s) => Val::Str(s),
        Value::Null => Val::Empty,
        _ => Val::Other,
    }
}

fn is_quantity_key(k: &str) -> bool {
    matches!(
        k,
        "Quantity" | "Age" | "Distance" | "Duration" | "Count" | "SimpleQuantity" | "MoneyQuantity"
    )
}

fn val<'x>(item: &'x Item<'_>) -> Val<'x> {
    match item {
        Item::Node(n) => match n.ty {
            TypeRef::Primitive(p) => match (p, n.value) {
                (_, Value::Null) => Val::Empty,
                (Primitive::Boolean, Value::Bool(b)) => Val::Bool(*b),
                (Primitive::Integer | Primitive::UnsignedInt | Primitive::PositiveInt, v) => {
                    number_val(v, false)
                }
                (Primitive::Decimal, v) => number_val(v, true),
                (Primitive::Date, Value::String(s)) => match Temporal::parse_date_time(s) {
                    Some((t, false)) => Val::Date(t),
                    Some((t, true)) => Val::DateTime(t),
                    None => Val::Str(s),
                },
                (Primitive::DateTime | Primitive::Instant, Value::String(s)) => {
                    match Temporal::parse_date_time(s) {
                        Some((t, _)) => Val::DateTime(t),
                        None => Val::Str(s),
                    }
                }
                (Primitive::Time, Value::String(s)) => match Temporal::parse_time(s) {
                    Some(t) => Val::Time(t),
                    None => Val::Str(s),
                },
                (_, Value::String(s)) => Val::Str(s),
                (_, Value::Bool(b)) => Val::Bool(*b),
                (_, v @ Value::Number(_)) => number_val(v, false),
                _ => Val::Other,
            },
            TypeRef::Complex(k) if is_quantity_key(k) => {
                let value = n.value.get("value").map(|v| number_val(v, true));
                let unit = n
                    .value
                    .get("code")
                    .and_then(Value::as_str)
                    .or_else(|| n.value.get("unit").and_then(Value::as_str))
                    .unwrap_or("1");
                match value {
                    Some(Val::Dec(d)) => Val::Qty(d, unit),
                    _ => Val::Complex(n.value),
                }
            }
            _ => Val::Complex(n.value),
        },
        Item::Boolean(b) => Val::Bool(*b),
        Item::Integer(i) => Val::Int(*i),
        Item::Decimal(d) => Val::Dec(*d),
        Item::String(s) => Val::Str(s),
        Item::Date(t) => Val::Date(*t),
        Item::DateTime(t) => Val::DateTime(*t),
        Item::Time(t) => Val::Time(*t),
        Item::Quantity(d, u) => Val::Qty(*d, u),
        Item::Resolved(_) | Item::TypeInfo(..) => Val::Other,
    }
}

fn val_to_item<'a>(v: Val<'_>) -> Option<Item<'a>> {
    Some(match v {
        Val::Bool(b) => Item::Boolean(b),
        Val::Int(i) => Item::Integer(i),
        Val::Dec(d) => Item::Decimal(d),
        Val::Str(s) => Item::String(Cow::Owned(s.to_string())),
        Val::Date(t) => Item::Date(t),
        Val::DateTime(t) => Item::DateTime(t),
        Val::Time(t) => Item::Time(t),
        Val::Qty(d, u) => Item::Quantity(d, Cow::Owned(u.to_string())),
        _ => return None,
    })
}

/// The text of a string item or string-like primitive node, borrowed from the resource or
/// the expression where possible.
fn str_of<'a>(item: &Item<'a>) -> Option<Cow<'a, str>> {
    match item {
        Item::String(s) => Some(s.clone()),
        Item::Node(n) => match (n.ty, n.value) {
            (TypeRef::Primitive(p), Value::String(s)) if !matches!(p, Primitive::Boolean) => {
                Some(Cow::Borrowed(s.as_str()))
            }
            _ => None,
        },
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Units

/// A unit's canonical form for comparison: calendar keywords of a week or less equal the UCUM
/// codes; years and months stay distinct from `a` and `mo`.
fn canon_unit(u: &str) -> &str {
    match u {
        "year" | "years" => "year",
        "month" | "months" => "month",
        "week" | "weeks" => "wk",
        "day" | "days" => "d",
        "hour" | "hours" => "h",
        "minute" | "minutes" => "min",
        "second" | "seconds" => "s",
        "millisecond" | "milliseconds" => "ms",
        other => other,
    }
}

/// A few UCUM units as (base unit, factor), enough to compare `1 'g'` with `1000 'mg'`.
fn ucum_factor(u: &str) -> Option<(&'static str, Decimal)> {
    let time = |n: i64| Some(("s", Decimal::from_i64(n)));
    match u {
        "s" => return time(1),
        "min" => return time(60),
        "h" => return time(3600),
        "d" => return time(86_400),
        "wk" => return time(604_800),
        "ms" => return Some(("s", Decimal::new(1, 3))),
        "1" => return Some(("1", Decimal::from_i64(1))),
        "[in_i]" => return Some(("m", Decimal::new(254, 4))),
        "[ft_i]" => return Some(("m", Decimal::new(3048, 4))),
        "[lb_av]" => return Some(("g", Decimal::new(45_359_237, 5))),
        "[oz_av]" => return Some(("g", Decimal::new(28_349_523_125, 9))),
        "%" => return Some(("1", Decimal::new(1, 2))),
        _ => {}
    }
    for base in ["g", "m", "L", "l"] {
        if let Some(prefix) = u.strip_suffix(base) {
            let f = match prefix {
                "" => Decimal::from_i64(1),
                "k" => Decimal::from_i64(1000),
                "h" => Decimal::from_i64(100),
                "d" => Decimal::new(1, 1),
                "c" => Decimal::new(1, 2),
                "m" => Decimal::new(1, 3),
                "u" | "\u{3bc}" => Decimal::new(1, 6),
                "n" => Decimal::new(1, 9),
                "p" => Decimal::new(1, 12),
                _ => continue,
            };
            let b = if base == "l" { "L" } else { base };
            let b: &'static str = match b {
                "g" => "g",
                "m" => "m",
                _ => "L",
            };
            return Some((b, f));
        }
    }
    None
}

/// Both quantities in one unit, if they are comparable.
fn align_quantities(a: Decimal, ua: &str, b: Decimal, ub: &str) -> Option<(Decimal, Decimal)> {
    let (ca, cb) = (canon_unit(ua), canon_unit(ub));
    if ca == cb {
        return Some((a, b));
    }
    let twelve = Decimal::from_i64(12);
    match (ca, cb) {
        ("year", "month") => return Some((a.checked_mul(twelve)?, b)),
        ("month", "year") => return Some((a, b.checked_mul(twelve)?)),
        _ => {}
    }
    let (ba, fa) = ucum_factor(ca)?;
    let (bb, fb) = ucum_factor(cb)?;
    if ba != bb {
        return None;
    }
    Some((a.checked_mul(fa)?, b.checked_mul(fb)?))
}

// ---------------------------------------------------------------------------------------------
// Equality, equivalence, ordering

fn temporal_eq(a: &Temporal, b: &Temporal) -> Option<bool> {
    a.compare(b).map(|o| o == Ordering::Equal)
}

/// `=` on two single items; `None` when the result is unknown (dates of different precision).
fn item_eq(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    if let (Item::Node(x), Item::Node(y)) = (a, b)
        && std::ptr::eq(x.value, y.value)
        && !x.value.is_null()
    {
        return Some(true);
    }
    match (val(a), val(b)) {
        (Val::Empty, _) | (_, Val::Empty) => None,
        (Val::Bool(x), Val::Bool(y)) => Some(x == y),
        (Val::Int(x), Val::Int(y)) => Some(x == y),
        (Val::Int(x), Val::Dec(y)) | (Val::Dec(y), Val::Int(x)) => {
            Some(Decimal::from_i64(x).cmp_value(y) == Ordering::Equal)
        }
        (Val::Dec(x), Val::Dec(y)) => Some(x.cmp_value(y) == Ordering::Equal),
        (Val::Str(x), Val::Str(y)) => Some(x == y),
        (Val::Date(x) | Val::DateTime(x), Val::Date(y) | Val::DateTime(y)) => temporal_eq(&x, &y),
        (Val::Time(x), Val::Time(y)) => temporal_eq(&x, &y),
        (Val::Qty(x, ux), Val::Qty(y, uy)) => match align_quantities(x, ux, y, uy) {
            Some((x, y)) => Some(x.cmp_value(y) == Ordering::Equal),
            None => {
                // Calendar years/months against UCUM `a`/`mo` are not comparable.
                let cal = |u: &str| matches!(canon_unit(u), "year" | "month" | "a" | "mo");
                if cal(ux) && cal(uy) {
                    None
                } else {
                    Some(false)
                }
            }
        },
        (Val::Complex(x), Val::Complex(y)) => Some(json_eq(x, y)),
        (Val::Other, Val::Other) => match (a, b) {
            (Item::Resolved(x), Item::Resolved(y)) => Some(x == y),
            (Item::TypeInfo(a1, b1), Item::TypeInfo(a2, b2)) => Some(a1 == a2 && b1 == b2),
            _ => Some(false),
        },
        _ => Some(false),
    }
}

/// Structural equality of JSON, with numbers compared by value.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_eq(v, w))
        }
        (Value::Number(x), Value::Number(y)) => {
            match (
                Decimal::parse(&x.to_string()),
                Decimal::parse(&y.to_string()),
            ) {
                (Some(p), Some(q)) => p.cmp_value(q) == Ordering::Equal,
                _ => x == y,
            }
        }
        _ => a == b,
    }
}

fn normalize_ws(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn dec_equiv(x: Decimal, y: Decimal) -> bool {
    let s = x.scale().min(y.scale());
    match (x.rescale(s), y.rescale(s)) {
        (Some(p), Some(q)) => p.cmp_value(q) == Ordering::Equal,
        _ => false,
    }
}

/// `~` on two single items.
fn item_equiv(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (val(a), val(b)) {
        (Val::Empty, Val::Empty) => true,
        (Val::Str(x), Val::Str(y)) => normalize_ws(x) == normalize_ws(y),
        (Val::Dec(x), Val::Dec(y)) => dec_equiv(x, y),
        (Val::Dec(x), Val::Int(i)) | (Val::Int(i), Val::Dec(x)) => {
            dec_equiv(x, Decimal::from_i64(i))
        }
        (Val::Qty(x, ux), Val::Qty(y, uy)) => {
            fn cal(u: &str) -> &str {
                match canon_unit(u) {
                    "year" => "a",
                    "month" => "mo",
                    o => o,
                }
            }
            match align_quantities(x, cal(ux), y, cal(uy)) {
                // Equal at the precision of the less precise value.
                Some((p, q)) => {
                    let s = x.scale().min(y.scale());
                    dec_equiv(p.rescale(s).unwrap_or(p), q.rescale(s).unwrap_or(q))
                }
                None => false,
            }
        }
        (Val::Complex(x), Val::Complex(y)) => json_eq(x, y),
        _ => item_eq(a, b).unwrap_or(false),
    }
}

/// Ordering of two single items; `Ok(None)` when unknown, an error when not comparable.
fn item_cmp(a: &Item<'_>, b: &Item<'_>) -> Result<Option<Ordering>, String> {
    let (x, y) = (val(a), val(b));
    Ok(match (x, y) {
        (Val::Empty, _) | (_, Val::Empty) => None,
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(&y)),
        (Val::Int(x), Val::Dec(y)) => Some(Decimal::from_i64(x).cmp_value(y)),
        (Val::Dec(x), Val::Int(y)) => Some(x.cmp_value(Decimal::from_i64(y))),
        (Val::Dec(x), Val::Dec(y)) => Some(x.cmp_value(y)),
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        (Val::Date(x) | Val::DateTime(x), Val::Date(y) | Val::DateTime(y)) => x.compare(&y),
        (Val::Time(x), Val::Time(y)) => x.compare(&y),
        (Val::Qty(p, up), Val::Qty(q, uq)) => match align_quantities(p, up, q, uq) {
            Some((p, q)) => Some(p.cmp_value(q)),
            None => return Err(format!("cannot compare quantities in '{up}' and '{uq}'")),
        },
        (x, y) => {
            return Err(format!(
                "cannot compare {} with {}",
                kind_name(&x),
                kind_name(&y)
            ));
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Collections

fn contains_item(coll: &[Item<'_>], item: &Item<'_>) -> bool {
    coll.iter().any(|x| item_eq(x, item) == Some(true))
}

/// Identity for nodes (the same element), equality for values: how `repeat` avoids cycles.
fn same_item(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (a, b) {
        (Item::Node(x), Item::Node(y)) => {
            std::ptr::eq(x.value, y.value)
                && x.ext.map(|e| e as *const Value) == y.ext.map(|e| e as *const Value)
        }
        (Item::Node(_), _) | (_, Item::Node(_)) => false,
        _ => item_eq(a, b) == Some(true),
    }
}

fn single<'x, 'a>(coll: &'x [Item<'a>], pos: usize) -> Result<Option<&'x Item<'a>>, Error> {
    match coll {
        [] => Ok(None),
        [x] => Ok(Some(x)),
        _ => err(
            pos,
            format!("expected a single item, got a collection of {}", coll.len()),
        ),
    }
}

/// Singleton evaluation as a Boolean: empty is unknown; a single non-Boolean item is true.
fn to_bool(coll: &[Item<'_>], pos: usize) -> Result<Option<bool>, Error> {
    match single(coll, pos)? {
        None => Ok(None),
        Some(it) => Ok(match val(it) {
            Val::Bool(b) => Some(b),
            Val::Empty => None,
            _ => Some(true),
        }),
    }
}

fn bool_item<'a>(b: Option<bool>) -> Vec<Item<'a>> {
    match b {
        Some(b) => vec![Item::Boolean(b)],
        None => Vec::new(),
    }
}

fn one<'a>(item: Item<'a>) -> Vec<Item<'a>> {
    vec![item]
}

// ---------------------------------------------------------------------------------------------
// Navigation

/// `"_" + prop` without allocating (FHIR element names are short).
fn companion<'a>(obj: &'a Map<String, Value>, prop: &str) -> Option<&'a Value> {
    let mut buf = [0u8; 96];
    let n = prop.len();
    if n + 1 > buf.len() {
        return obj.get(&format!("_{prop}"));
    }
    buf[0] = b'_';
    buf[1..=n].copy_from_slice(prop.as_bytes());
    let key = std::str::from_utf8(&buf[..=n]).ok()?;
    obj.get(key).filter(|v| !v.is_null())
}

fn make_node<'a>(value: &'a Value, ty: TypeRef, ext: Option<&'a Value>) -> Item<'a> {
    match ty {
        TypeRef::Resource => Item::Node(Node::resource(value)),
        _ => Item::Node(Node { value, ty, ext }),
    }
}

/// Pushes the nodes of JSON property `prop` of `obj`, typed `ty`.
fn push_prop<'a>(obj: &'a Map<String, Value>, prop: &str, ty: TypeRef, out: &mut Vec<Item<'a>>) {
    let comp = match ty {
        TypeRef::Primitive(_) => companion(obj, prop),
        _ => None,
    };
    let ext_at = |i: usize| -> Option<&'a Value> {
        comp.and_then(Value::as_array)
            .and_then(|a| a.get(i))
            .filter(|v| !v.is_null())
    };
    match obj.get(prop) {
        Some(Value::Array(arr)) => {
            for (i, v) in arr.iter().enumerate() {
                let e = ext_at(i);
                if v.is_null() && e.is_none() {
                    continue;
                }
                out.push(make_node(v, ty, e));
            }
            // Extensions beyond the values (values array shorter than the companion).
            if let Some(Value::Array(ca)) = comp {
                for e in ca.iter().skip(arr.len()).filter(|e| !e.is_null()) {
                    out.push(make_node(&NULL, ty, Some(e)));
                }
            }
        }
        Some(Value::Null) | None => match comp {
            Some(Value::Array(ca)) => {
                for e in ca.iter().filter(|e| !e.is_null()) {
                    out.push(make_node(&NULL, ty, Some(e)));
                }
            }
            Some(e) => out.push(make_node(&NULL, ty, Some(e))),
            None => {}
        },
        Some(v) => out.push(make_node(v, ty, comp)),
    }
}

/// A guess at the type of JSON outside the schema (unknown resource types).
fn guess_type(v: &Value) -> TypeRef {
    match v {
        Value::Bool(_) => TypeRef::Primitive(Primitive::Boolean),
        Value::Number(n) if n.is_i64() => TypeRef::Primitive(Primitive::Integer),
        Value::Number(_) => TypeRef::Primitive(Primitive::Decimal),
        Value::String(_) => TypeRef::Primitive(Primitive::String),
        Value::Object(o) if o.contains_key("resourceType") => TypeRef::Resource,
        Value::Array(a) => a.first().map_or(TypeRef::Complex("Element"), guess_type),
        _ => TypeRef::Complex("Element"),
    }
}

/// The type key of a node for schema lookups; `None` for primitives.
fn type_key(n: &Node<'_>) -> Option<&'static str> {
    match n.ty {
        TypeRef::Complex(k) => Some(k),
        TypeRef::Resource => Some("DomainResource"),
        TypeRef::Primitive(_) => None,
    }
}

/// Children of `item` named `name` (as FHIRPath names them: `value` for `valueQuantity`).
fn navigate<'a>(item: &Item<'a>, name: &str, out: &mut Vec<Item<'a>>) {
    let n = match item {
        Item::Node(n) => n,
        Item::TypeInfo(ns, nm) => {
            match name {
                "namespace" => out.push(Item::String(Cow::Borrowed(ns))),
                "name" => out.push(Item::String(Cow::Borrowed(nm))),
                _ => {}
            }
            return;
        }
        _ => return,
    };
    let obj = match n.value {
        Value::Object(o) => o,
        _ => {
            // A primitive: only its id and extensions, from the `_name` sibling.
            if let Some(Value::Object(e)) = n.ext {
                match name {
                    "extension" => push_prop(e, "extension", TypeRef::Complex("Extension"), out),
                    "id" => push_prop(e, "id", TypeRef::Primitive(Primitive::String), out),
                    _ => {}
                }
            }
            return;
        }
    };
    let def = type_key(n).and_then(|k| R4.type_def(k));
    let Some(def) = def.filter(|_| n.ty != TypeRef::Resource) else {
        // Untyped: plain JSON lookup.
        if let Some(v) = obj.get(name) {
            let ty = guess_type(v);
            push_prop(obj, name, ty, out);
        }
        return;
    };
    if let Some(el) = def.elements.get(name)
        && el.name == name
    {
        push_prop(obj, name, el.ty, out);
        return;
    }
    for (base, props) in &def.choices {
        if *base == name {
            for prop in props {
                if obj.contains_key(*prop) || companion(obj, prop).is_some() {
                    if let Some(el) = def.elements.get(prop) {
                        push_prop(obj, prop, el.ty, out);
                    }
                    return;
                }
            }
            return;
        }
    }
}

/// All children of `item`, in JSON order.
fn children<'a>(item: &Item<'a>, out: &mut Vec<Item<'a>>) {
    let Item::Node(n) = item else { return };
    let obj = match n.value {
        Value::Object(o) => o,
        _ => {
            if let Some(Value::Object(e)) = n.ext {
                push_prop(e, "extension", TypeRef::Complex("Extension"), out);
            }
            return;
        }
    };
    let def = type_key(n)
        .and_then(|k| R4.type_def(k))
        .filter(|_| n.ty != TypeRef::Resource);
    for (key, v) in obj {
        if key == "resourceType" || key == "fhir_comments" {
            continue;
        }
        if let Some(base) = key.strip_prefix('_') {
            // A companion: only on its own when the value is absent.
            if obj.contains_key(base) {
                continue;
            }
            if let Some(el) = def.and_then(|d| d.elements.get(base)) {
                push_prop(obj, base, el.ty, out);
            }
            continue;
        }
        let ty = match def {
            Some(d) => match d.elements.get(key.as_str()) {
                Some(el) => el.ty,
                None => continue,
            },
            None => guess_type(v),
        };
        push_prop(obj, key, ty, out);
    }
}

// ---------------------------------------------------------------------------------------------
// resolve()

fn reference_type(reference: &str) -> Option<&'static str> {
    let r = reference.split(['?', '#']).next().unwrap_or(reference);
    let segs: Vec<&str> = r.split('/').collect();
    let at = match segs.iter().rposition(|s| *s == "_history") {
        Some(h) => h.checked_sub(2)?,
        None => segs.len().checked_sub(2)?,
    };
    R4.resource_type(segs.get(at)?)
}

// ---------------------------------------------------------------------------------------------
// Conversions

fn parse_bool_str(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(true),
        "false" | "f" | "no" | "n" | "0" | "0.0" => Some(false),
        _ => None,
    }
}

fn parse_int_str(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_dec_str(s: &str) -> Option<Decimal> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let ok = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        return None;
    }
    Decimal::parse(s)
}

/// Parses `4.5 'mg'`, `4 days`, `4.5`.
fn parse_quantity_str(s: &str) -> Option<(Decimal, String)> {
    let s = s.trim();
    let (num, rest) = match s.find(' ') {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    let d = parse_dec_str(num)?;
    if rest.is_empty() {
        return Some((d, "1".to_string()));
    }
    if let Some(u) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return Some((d, u.to_string()));
    }
    if calendar_unit(rest).is_some() && rest.len() >= 3 && rest != "min" {
        return Some((d, rest.to_string()));
    }
    None
}

fn to_string_val(it: &Item<'_>) -> Option<String> {
    match val(it) {
        Val::Empty | Val::Complex(_) | Val::Other => None,
        Val::Str(s) => Some(s.to_string()),
        _ => {
            let item = val_to_item(val(it))?;
            Some(item.to_string())
        }
    }
}

fn to_decimal_val(it: &Item<'_>) -> Option<Decimal> {
    match val(it) {
        Val::Int(i) => Some(Decimal::from_i64(i)),
        Val::Dec(d) => Some(d),
        Val::Str(s) => parse_dec_str(s),
        Val::Bool(b) => Some(Decimal::from_i64(b as i64)),
        _ => None,
    }
}

fn to_integer_val(it: &Item<'_>) -> Option<i64> {
    match val(it) {
        Val::Int(i) => Some(i),
        Val::Str(s) => parse_int_str(s),
        Val::Bool(b) => Some(b as i64),
        _ => None,
    }
}

fn to_bool_val(it: &Item<'_>) -> Option<bool> {
    match val(it) {
        Val::Bool(b) => Some(b),
        Val::Int(1) => Some(true),
        Val::Int(0) => Some(false),
        Val::Dec(d) => {
            if d.cmp_value(Decimal::from_i64(1)) == Ordering::Equal {
                Some(true)
            } else if d.is_zero() {
                Some(false)
            } else {
                None
            }
        }
        Val::Str(s) => parse_bool_str(s),
        _ => None,
    }
}

fn to_quantity_val(it: &Item<'_>) -> Option<(Decimal, String)> {
    match val(it) {
        Val::Int(i) => Some((Decimal::from_i64(i), "1".into())),
        Val::Dec(d) => Some((d, "1".into())),
        Val::Qty(d, u) => Some((d, u.to_string())),
        Val::Str(s) => parse_quantity_str(s),
        Val::Bool(b) => Some((Decimal::from_i64(b as i64), "1".into())),
        _ => None,
    }
}

fn to_datetime_val(it: &Item<'_>) -> Option<Temporal> {
    match val(it) {
        Val::Date(t) | Val::DateTime(t) => Some(t),
        Val::Str(s) => Temporal::parse_date_time(s).map(|(t, _)| t),
        _ => None,
    }
}

fn to_date_val(it: &Item<'_>) -> Option<Temporal> {
    to_datetime_val(it).map(|t| t.truncated(Precision::Day))
}

fn to_time_val(it: &Item<'_>) -> Option<Temporal> {
    match val(it) {
        Val::Time(t) => Some(t),
        Val::Str(s) => Temporal::parse_time(s),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Arithmetic

fn dec_item<'a>(d: Option<Decimal>, pos: usize) -> R<'a> {
    match d {
        Some(d) => Ok(one(Item::Decimal(d))),
        None => err(pos, "decimal overflow"),
    }
}

fn int_result<'a>(v: Option<i64>, pos: usize) -> R<'a> {
    match v {
        Some(i) => Ok(one(Item::Integer(i))),
        None => err(pos, "integer overflow"),
    }
}

fn as_dec(v: Val<'_>) -> Option<Decimal> {
    match v {
        Val::Int(i) => Some(Decimal::from_i64(i)),
        Val::Dec(d) => Some(d),
        _ => None,
    }
}

fn add_temporal(
    t: Temporal,
    q: Decimal,
    unit: &str,
    neg: bool,
) -> Result<Option<Temporal>, String> {
    // UCUM `a` and `mo` are not calendar durations (their length is an average).
    if calendar_unit(unit).is_none() || unit == "a" || unit == "mo" {
        return Err(format!("cannot add '{unit}' to a date/time"));
    }
    // Only whole units are added.
    let q = q.truncate_to(0);
    let q = if neg { q.negated() } else { q };
    Ok(t.add_duration(q.to_f64(), unit))
}

fn arith<'a>(op: BinOp, a: &Item<'a>, b: &Item<'a>, pos: usize) -> R<'a> {
    let (x, y) = (val(a), val(b));
    if matches!(x, Val::Empty) || matches!(y, Val::Empty) {
        return Ok(Vec::new());
    }
    let mismatch = || {
        err(
            pos,
            format!(
                "operator cannot be applied to {} and {}",
                kind_name(&x),
                kind_name(&y)
            ),
        )
    };
    match op {
        BinOp::Add | BinOp::Sub => {
            let neg = op == BinOp::Sub;
            match (x, y) {
                (Val::Int(p), Val::Int(q)) => int_result(
                    if neg {
                        p.checked_sub(q)
                    } else {
                        p.checked_add(q)
                    },
                    pos,
                ),
                (Val::Int(_) | Val::Dec(_), Val::Int(_) | Val::Dec(_)) => {
                    let (p, q) = (as_dec(x), as_dec(y));
                    let (Some(p), Some(q)) = (p, q) else {
                        return mismatch();
                    };
                    dec_item(
                        if neg {
                            p.checked_sub(q)
                        } else {
                            p.checked_add(q)
                        },
                        pos,
                    )
                }
                (Val::Str(p), Val::Str(q)) if !neg => {
                    if p.len() + q.len() > MAX_STRING {
                        return err(pos, "string result too long");
                    }
                    Ok(one(Item::String(Cow::Owned(format!("{p}{q}")))))
                }
                (Val::Qty(p, up), Val::Qty(q, uq)) => {
                    if canon_unit(up) == canon_unit(uq) {
                        let r = if neg {
                            p.checked_sub(q)
                        } else {
                            p.checked_add(q)
                        };
                        match r {
                            Some(r) => Ok(one(Item::Quantity(r, Cow::Owned(up.to_string())))),
                            None => err(pos, "decimal overflow"),
                        }
                    } else if let Some((p2, q2)) = align_quantities(p, up, q, uq) {
                        // Result in the unit of the smaller magnitude (the finer unit).
                        let r = if neg {
                            p2.checked_sub(q2)
                        } else {
                            p2.checked_add(q2)
                        };
                        let (base, _) = ucum_factor(canon_unit(up)).unwrap_or(("1", p));
                        match r {
                            Some(r) => Ok(one(Item::Quantity(r, Cow::Owned(base.to_string())))),
                            None => err(pos, "decimal overflow"),
                        }
                    } else {
                        err(pos, format!("cannot add quantities in '{up}' and '{uq}'"))
                    }
                }
                (Val::Date(t), Val::Qty(q, u)) => match add_temporal(t, q, u, neg) {
                    Ok(r) => Ok(r.map(Item::Date).into_iter().collect()),
                    Err(m) => err(pos, m),
                },
                (Val::DateTime(t), Val::Qty(q, u)) => match add_temporal(t, q, u, neg) {
                    Ok(r) => Ok(r.map(Item::DateTime).into_iter().collect()),
                    Err(m) => err(pos, m),
                },
                (Val::Time(t), Val::Qty(q, u)) => {
                    if matches!(
                        calendar_unit(u),
                        Some(CalUnit::Year | CalUnit::Month | CalUnit::Week | CalUnit::Day)
                    ) {
                        return err(pos, format!("cannot add '{u}' to a time"));
                    }
                    match add_temporal(t, q, u, neg) {
                        Ok(r) => Ok(r.map(Item::Time).into_iter().collect()),
                        Err(m) => err(pos, m),
                    }
                }
                _ => mismatch(),
            }
        }
        BinOp::Mul => match (x, y) {
            (Val::Int(p), Val::Int(q)) => int_result(p.checked_mul(q), pos),
            (Val::Int(_) | Val::Dec(_), Val::Int(_) | Val::Dec(_)) => {
                match (as_dec(x), as_dec(y)) {
                    (Some(p), Some(q)) => dec_item(p.checked_mul(q), pos),
                    _ => mismatch(),
                }
            }
            (Val::Qty(p, u), Val::Int(_) | Val::Dec(_))
            | (Val::Int(_) | Val::Dec(_), Val::Qty(p, u)) => {
                let n = as_dec(if matches!(x, Val::Qty(..)) { y } else { x });
                match n.and_then(|n| p.checked_mul(n)) {
                    Some(r) => Ok(one(Item::Quantity(r, Cow::Owned(u.to_string())))),
                    None => err(pos, "decimal overflow"),
                }
            }
            (Val::Qty(p, up), Val::Qty(q, uq)) => {
                let unit = match (up, uq) {
                    ("1", u) | (u, "1") => u.to_string(),
                    _ => format!("{up}.{uq}"),
                };
                match p.checked_mul(q) {
                    Some(r) => Ok(one(Item::Quantity(r, Cow::Owned(unit)))),
                    None => err(pos, "decimal overflow"),
                }
            }
            _ => mismatch(),
        },
        BinOp::Div => match (x, y) {
            (Val::Int(_) | Val::Dec(_), Val::Int(_) | Val::Dec(_)) => {
                match (as_dec(x), as_dec(y)) {
                    (Some(_), Some(q)) if q.is_zero() => Ok(Vec::new()),
                    (Some(p), Some(q)) => dec_item(p.checked_div(q), pos),
                    _ => mismatch(),
                }
            }
            (Val::Qty(p, u), Val::Int(_) | Val::Dec(_)) => match as_dec(y) {
                Some(q) if q.is_zero() => Ok(Vec::new()),
                Some(q) => match p.checked_div(q) {
                    Some(r) => Ok(one(Item::Quantity(r, Cow::Owned(u.to_string())))),
                    None => err(pos, "decimal overflow"),
                },
                None => mismatch(),
            },
            (Val::Qty(p, up), Val::Qty(q, uq)) => {
                if q.is_zero() {
                    return Ok(Vec::new());
                }
                let unit = if canon_unit(up) == canon_unit(uq) {
                    "1".to_string()
                } else if uq == "1" {
                    up.to_string()
                } else {
                    format!("{up}/{uq}")
                };
                match p.checked_div(q) {
                    Some(r) => Ok(one(Item::Quantity(r, Cow::Owned(unit)))),
                    None => err(pos, "decimal overflow"),
                }
            }
            _ => mismatch(),
        },
        BinOp::IntDiv | BinOp::Mod => match (x, y) {
            (Val::Int(p), Val::Int(q)) => {
                if q == 0 {
                    return Ok(Vec::new());
                }
                let r = if op == BinOp::IntDiv {
                    p.checked_div(q)
                } else {
                    p.checked_rem(q)
                };
                int_result(r, pos)
            }
            (Val::Int(_) | Val::Dec(_), Val::Int(_) | Val::Dec(_)) => {
                let (Some(p), Some(q)) = (as_dec(x), as_dec(y)) else {
                    return mismatch();
                };
                if q.is_zero() {
                    return Ok(Vec::new());
                }
                if op == BinOp::IntDiv {
                    match p.div_trunc(q).and_then(Decimal::to_i64) {
                        Some(i) => Ok(one(Item::Integer(i))),
                        None => err(pos, "integer overflow"),
                    }
                } else {
                    dec_item(p.checked_rem(q), pos)
                }
            }
            _ => mismatch(),
        },
        _ => mismatch(),
    }
}

// ---------------------------------------------------------------------------------------------
// Math helpers

fn math_f64<'a>(it: &Item<'a>, pos: usize, f: impl Fn(f64) -> f64) -> R<'a> {
    let Some(d) = as_dec(val(it)) else {
        return err(pos, "expected a number");
    };
    let r = f(d.to_f64());
    Ok(Decimal::from_f64(r)
        .map(Item::Decimal)
        .into_iter()
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Encoding helpers

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn html_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted
        .get(1..quoted.len().saturating_sub(1))
        .unwrap_or("")
        .to_string()
}

fn json_unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// The evaluator

impl<'a, 'e> Ctx<'a, 'e> {
    /// Spends `n` steps of the evaluation's budget.
    fn charge(&self, n: usize, pos: usize) -> Result<(), Error> {
        let left = self.budget.get();
        let n = n as u64;
        if n > left {
            self.budget.set(0);
            return err(pos, "evaluation exceeded its work limit");
        }
        self.budget.set(left - n);
        Ok(())
    }

    /// `coll` contains an item equal to `item`.
    fn contains(&self, coll: &[Item<'_>], item: &Item<'_>, pos: usize) -> Result<bool, Error> {
        self.charge(coll.len(), pos)?;
        Ok(contains_item(coll, item))
    }

    /// Items without duplicates (by `=`), in order.
    fn distinct(&self, items: Vec<Item<'a>>, pos: usize) -> R<'a> {
        let mut out: Vec<Item<'a>> = Vec::with_capacity(items.len());
        for it in items {
            if !self.contains(&out, &it, pos)? {
                out.push(it);
            }
        }
        Ok(out)
    }

    /// A string result, if not too long.
    fn string(&self, s: String, pos: usize) -> R<'a> {
        if s.len() > MAX_STRING {
            return err(pos, "string result too long");
        }
        self.charge(s.len() / 64, pos)?;
        Ok(one(Item::String(Cow::Owned(s))))
    }

    fn eval(&self, ast: &'a Ast, sc: Scope<'_, 'a>) -> R<'a> {
        let pos = ast.pos;
        self.charge(1, pos)?;
        match &ast.kind {
            Kind::Empty => Ok(Vec::new()),
            Kind::Bool(b) => Ok(one(Item::Boolean(*b))),
            Kind::Str(s) => Ok(one(Item::String(Cow::Borrowed(s)))),
            Kind::Int(i) => Ok(one(Item::Integer(*i))),
            Kind::Dec(d) => Ok(one(Item::Decimal(*d))),
            Kind::Date(t) => Ok(one(Item::Date(*t))),
            Kind::DateTime(t) => Ok(one(Item::DateTime(*t))),
            Kind::Time(t) => Ok(one(Item::Time(*t))),
            Kind::Quantity(d, u) => Ok(one(Item::Quantity(*d, Cow::Borrowed(u)))),
            Kind::This => {
                self.charge(sc.this.len(), pos)?;
                Ok(sc.this.to_vec())
            }
            Kind::Index => match sc.index {
                Some(i) => Ok(one(Item::Integer(i as i64))),
                None => err(pos, "$index is only defined inside an iterating function"),
            },
            Kind::Total => match sc.total {
                Some(t) => {
                    self.charge(t.len(), pos)?;
                    Ok(t.to_vec())
                }
                None => err(pos, "$total is only defined inside aggregate()"),
            },
            Kind::Const(name) => self.constant(name, pos),
            Kind::Member(target, name) => self.member(target.as_deref(), name, sc),
            Kind::Call(target, func, args) => {
                let owned;
                let input: &[Item<'a>] = match target {
                    Some(t) => {
                        owned = self.eval(t, sc)?;
                        &owned
                    }
                    None => sc.this,
                };
                self.call(func, args, input, sc, pos)
            }
            Kind::Indexer(target, index) => self.indexer(target, index, sc),
            Kind::Neg(inner) => {
                let v = self.eval(inner, sc)?;
                negate(&v, pos)
            }
            Kind::Union(items) => self.union(items, sc, pos),
            Kind::Binary(op, l, r) => self.binary(*op, l, r, sc, pos),
        }
    }

    fn member(&self, target: Option<&'a Ast>, name: &str, sc: Scope<'_, 'a>) -> R<'a> {
        let owned;
        let input: &[Item<'a>] = match target {
            Some(t) => {
                owned = self.eval(t, sc)?;
                &owned
            }
            None => sc.this,
        };
        let mut out = Vec::new();
        // A type name as the first step of a path filters the input by type.
        let type_filter = target.is_none() && name.starts_with(|c: char| c.is_ascii_uppercase());
        for item in input {
            if type_filter {
                if matches!(item, Item::Node(_)) && is_fhir_type(item, name) {
                    out.push(item.clone());
                    continue;
                }
                if is_resource_type_name(name) {
                    continue;
                }
            }
            navigate(item, name, &mut out);
        }
        Ok(out)
    }

    fn indexer(&self, target: &'a Ast, index: &'a Ast, sc: Scope<'_, 'a>) -> R<'a> {
        let coll = self.eval(target, sc)?;
        let idx = self.eval(index, sc)?;
        let Some(i) = single(&idx, index.pos)? else {
            return Ok(Vec::new());
        };
        match val(i) {
            Val::Int(i) => Ok(usize::try_from(i)
                .ok()
                .and_then(|i| coll.into_iter().nth(i))
                .into_iter()
                .collect()),
            _ => err(index.pos, "index must be an integer"),
        }
    }

    fn union(&self, items: &'a [Ast], sc: Scope<'_, 'a>, pos: usize) -> R<'a> {
        let mut out: Vec<Item<'a>> = Vec::new();
        for a in items {
            for it in self.eval(a, sc)? {
                if !self.contains(&out, &it, pos)? {
                    out.push(it);
                }
            }
        }
        Ok(out)
    }

    fn constant(&self, name: &str, pos: usize) -> R<'a> {
        if let Some((_, v)) = self.env.vars.iter().rev().find(|(n, _)| n == name) {
            self.charge(v.len(), pos)?;
            return Ok(v.clone());
        }
        let s = |v: &'static str| Ok(one(Item::String(Cow::Borrowed(v))));
        match name {
            "resource" | "rootResource" => Ok(one(Item::Node(Node::resource(self.resource)))),
            "context" => {
                self.charge(self.context.len(), pos)?;
                Ok(self.context.to_vec())
            }
            "ucum" => s("http://unitsofmeasure.org"),
            "sct" => s("http://snomed.info/sct"),
            "loinc" => s("http://loinc.org"),
            _ => {
                if let Some(vs) = name.strip_prefix("vs-") {
                    return Ok(one(Item::String(Cow::Owned(format!(
                        "http://hl7.org/fhir/ValueSet/{vs}"
                    )))));
                }
                if let Some(ext) = name.strip_prefix("ext-") {
                    return Ok(one(Item::String(Cow::Owned(format!(
                        "http://hl7.org/fhir/StructureDefinition/{ext}"
                    )))));
                }
                err(pos, format!("undefined variable %{name}"))
            }
        }
    }

    fn binary(&self, op: BinOp, l: &'a Ast, r: &'a Ast, sc: Scope<'_, 'a>, pos: usize) -> R<'a> {
        match op {
            BinOp::And => {
                let a = to_bool(&self.eval(l, sc)?, l.pos)?;
                if a == Some(false) {
                    return Ok(bool_item(Some(false)));
                }
                let b = to_bool(&self.eval(r, sc)?, r.pos)?;
                Ok(bool_item(match (a, b) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                }))
            }
            BinOp::Or => {
                let a = to_bool(&self.eval(l, sc)?, l.pos)?;
                if a == Some(true) {
                    return Ok(bool_item(Some(true)));
                }
                let b = to_bool(&self.eval(r, sc)?, r.pos)?;
                Ok(bool_item(match (a, b) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                }))
            }
            BinOp::Xor => {
                let a = to_bool(&self.eval(l, sc)?, l.pos)?;
                let b = to_bool(&self.eval(r, sc)?, r.pos)?;
                Ok(bool_item(match (a, b) {
                    (Some(x), Some(y)) => Some(x != y),
                    _ => None,
                }))
            }
            BinOp::Implies => {
                let a = to_bool(&self.eval(l, sc)?, l.pos)?;
                if a == Some(false) {
                    return Ok(bool_item(Some(true)));
                }
                let b = to_bool(&self.eval(r, sc)?, r.pos)?;
                Ok(bool_item(match (a, b) {
                    (_, Some(true)) => Some(true),
                    (Some(true), b) => b,
                    _ => None,
                }))
            }
            _ => {
                let a = self.eval(l, sc)?;
                let b = self.eval(r, sc)?;
                self.binary_values(op, &a, &b, l.pos, r.pos, pos)
            }
        }
    }

    #[inline(never)]
    fn binary_values(
        &self,
        op: BinOp,
        a: &[Item<'a>],
        b: &[Item<'a>],
        lpos: usize,
        rpos: usize,
        pos: usize,
    ) -> R<'a> {
        match op {
            BinOp::Eq | BinOp::Ne => {
                if a.is_empty() || b.is_empty() {
                    return Ok(Vec::new());
                }
                let mut r = Some(a.len() == b.len());
                if r == Some(true) {
                    for (x, y) in a.iter().zip(b) {
                        match item_eq(x, y) {
                            Some(true) => {}
                            Some(false) => {
                                r = Some(false);
                                break;
                            }
                            None => r = None,
                        }
                    }
                }
                Ok(bool_item(if op == BinOp::Ne { r.map(|v| !v) } else { r }))
            }
            BinOp::Equiv | BinOp::NotEquiv => {
                let r = a.len() == b.len() && {
                    let mut used = vec![false; b.len()];
                    a.iter().all(|x| {
                        match b
                            .iter()
                            .enumerate()
                            .position(|(i, y)| !used[i] && item_equiv(x, y))
                        {
                            Some(i) => {
                                used[i] = true;
                                true
                            }
                            None => false,
                        }
                    })
                };
                Ok(one(Item::Boolean(if op == BinOp::NotEquiv {
                    !r
                } else {
                    r
                })))
            }
            BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
                let (Some(x), Some(y)) = (single(a, lpos)?, single(b, rpos)?) else {
                    return Ok(Vec::new());
                };
                let o = item_cmp(x, y).map_err(|m| (pos, m))?;
                Ok(bool_item(o.map(|o| match op {
                    BinOp::Lt => o == Ordering::Less,
                    BinOp::Gt => o == Ordering::Greater,
                    BinOp::Le => o != Ordering::Greater,
                    _ => o != Ordering::Less,
                })))
            }
            BinOp::In | BinOp::Contains => {
                let (elem, coll, epos) = if op == BinOp::In {
                    (a, b, lpos)
                } else {
                    (b, a, rpos)
                };
                let Some(x) = single(elem, epos)? else {
                    return Ok(Vec::new());
                };
                Ok(one(Item::Boolean(self.contains(coll, x, pos)?)))
            }
            BinOp::Concat => {
                let x = single(a, lpos)?.map(str_or_string).transpose();
                let y = single(b, rpos)?.map(str_or_string).transpose();
                match (x, y) {
                    (Ok(x), Ok(y)) => {
                        let (x, y) = (x.unwrap_or_default(), y.unwrap_or_default());
                        if x.len() + y.len() > MAX_STRING {
                            return err(pos, "string result too long");
                        }
                        self.string(x + &y, pos)
                    }
                    _ => err(pos, "& expects strings"),
                }
            }
            _ => {
                let (Some(x), Some(y)) = (single(a, lpos)?, single(b, rpos)?) else {
                    return Ok(Vec::new());
                };
                arith(op, x, y, pos)
            }
        }
    }

    /// Evaluates `expr` once per input item, with `$this` and `$index` set.
    fn each<F>(
        &self,
        expr: &'a Ast,
        input: &[Item<'a>],
        sc: Scope<'_, 'a>,
        mut f: F,
    ) -> Result<(), Error>
    where
        F: FnMut(usize, &Item<'a>, Vec<Item<'a>>) -> Result<bool, Error>,
    {
        for (i, item) in input.iter().enumerate() {
            let inner = Scope {
                this: std::slice::from_ref(item),
                index: Some(i),
                total: sc.total,
            };
            let r = self.eval(expr, inner)?;
            if !f(i, item, r)? {
                break;
            }
        }
        Ok(())
    }

    fn now(&self) -> Temporal {
        match self.now.get() {
            Some(t) => t,
            None => {
                let t = Temporal::now();
                self.now.set(Some(t));
                t
            }
        }
    }

    fn input_string(&self, input: &[Item<'a>], pos: usize) -> Result<Option<Cow<'a, str>>, Error> {
        match single(input, pos)? {
            None => Ok(None),
            Some(it) => match str_of(it) {
                Some(s) => Ok(Some(s)),
                None => match val(it) {
                    Val::Empty => Ok(None),
                    v => err(pos, format!("expected a string, got {}", kind_name(&v))),
                },
            },
        }
    }

    fn call(
        &self,
        func: &'a Func,
        args: &'a [Ast],
        input: &[Item<'a>],
        sc: Scope<'_, 'a>,
        pos: usize,
    ) -> R<'a> {
        use Func as F;
        match func {
            F::Exists | F::All | F::Where | F::Select | F::Repeat | F::Iif | F::Aggregate => {
                self.call_iterating(func, args, input, sc, pos)
            }
            F::Sort => self.sort(input, args, sc, pos),
            _ => {
                // Plain arguments are evaluated first, so the large function below is never on
                // the recursion path.
                let mut argv = Vec::with_capacity(args.len());
                for a in args {
                    argv.push(self.eval(a, sc)?);
                }
                self.call_plain(func, args, &argv, input, pos)
            }
        }
    }

    /// Evaluates an optional argument in the caller's scope.
    fn eval_opt(&self, a: Option<&'a Ast>, sc: Scope<'_, 'a>) -> R<'a> {
        match a {
            Some(a) => self.eval(a, sc),
            None => Ok(Vec::new()),
        }
    }

    /// Functions whose arguments are evaluated per input item (`where`, `select`...).
    #[inline(never)]
    fn call_iterating(
        &self,
        func: &'a Func,
        args: &'a [Ast],
        input: &[Item<'a>],
        sc: Scope<'_, 'a>,
        pos: usize,
    ) -> R<'a> {
        use Func as F;
        match func {
            F::Exists => {
                if let Some(a) = args.first() {
                    let mut found = false;
                    self.each(a, input, sc, |_, _, r| {
                        if to_bool(&r, a.pos)? == Some(true) {
                            found = true;
                            return Ok(false);
                        }
                        Ok(true)
                    })?;
                    Ok(one(Item::Boolean(found)))
                } else {
                    Ok(one(Item::Boolean(!input.is_empty())))
                }
            }
            F::All => {
                let a = &args[0];
                let mut all = true;
                self.each(a, input, sc, |_, _, r| {
                    if to_bool(&r, a.pos)? != Some(true) {
                        all = false;
                        return Ok(false);
                    }
                    Ok(true)
                })?;
                Ok(one(Item::Boolean(all)))
            }
            F::Where => {
                let a = &args[0];
                let mut out = Vec::new();
                self.each(a, input, sc, |_, item, r| {
                    if to_bool(&r, a.pos)? == Some(true) {
                        out.push(item.clone());
                    }
                    Ok(true)
                })?;
                Ok(out)
            }
            F::Select => {
                let mut out = Vec::new();
                self.each(&args[0], input, sc, |_, _, r| {
                    out.extend(r);
                    Ok(true)
                })?;
                Ok(out)
            }
            F::Repeat => {
                let a = &args[0];
                let mut out: Vec<Item<'a>> = Vec::new();
                let mut frontier = input.to_vec();
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    self.each(a, &frontier, sc, |_, _, r| {
                        for it in r {
                            self.charge(out.len(), pos)?;
                            if !out.iter().any(|o| same_item(o, &it)) {
                                out.push(it.clone());
                                next.push(it);
                            }
                        }
                        Ok(true)
                    })?;
                    frontier = next;
                }
                Ok(out)
            }
            F::Iif => {
                if input.len() > 1 {
                    return err(pos, "iif() expects a single input item");
                }
                let inner = if args.is_empty() {
                    sc
                } else {
                    Scope {
                        this: if input.is_empty() { sc.this } else { input },
                        index: sc.index,
                        total: sc.total,
                    }
                };
                let c = self.eval(&args[0], inner)?;
                let cond = match single(&c, args[0].pos)? {
                    None => None,
                    Some(it) => match val(it) {
                        Val::Bool(b) => Some(b),
                        Val::Empty => None,
                        _ => return err(args[0].pos, "iif() criterion must be a Boolean"),
                    },
                };
                if cond == Some(true) {
                    self.eval(&args[1], inner)
                } else if let Some(o) = args.get(2) {
                    self.eval(o, inner)
                } else {
                    Ok(Vec::new())
                }
            }
            F::Aggregate => {
                let mut total = self.eval_opt(args.get(1), sc)?;
                for (i, item) in input.iter().enumerate() {
                    let inner = Scope {
                        this: std::slice::from_ref(item),
                        index: Some(i),
                        total: Some(&total),
                    };
                    let next = self.eval(&args[0], inner)?;
                    total = next;
                }
                Ok(total)
            }
            _ => err(pos, "internal error: not an iterating function"),
        }
    }

    /// Functions with plain (already evaluated) arguments.
    #[inline(never)]
    fn call_plain(
        &self,
        func: &'a Func,
        args: &'a [Ast],
        argv: &[Vec<Item<'a>>],
        input: &[Item<'a>],
        pos: usize,
    ) -> R<'a> {
        use Func as F;
        let string_fn = |f: &dyn Fn(&str) -> Item<'a>| -> R<'a> {
            match self.input_string(input, pos)? {
                Some(s) => Ok(one(f(&s))),
                None => Ok(Vec::new()),
            }
        };
        match func {
            F::Empty => Ok(one(Item::Boolean(input.is_empty()))),
            F::AllTrue | F::AnyTrue | F::AllFalse | F::AnyFalse => {
                let mut bools = Vec::with_capacity(input.len());
                for it in input {
                    match val(it) {
                        Val::Bool(b) => bools.push(b),
                        _ => return err(pos, "expected a collection of Booleans"),
                    }
                }
                let r = match func {
                    F::AllTrue => bools.iter().all(|b| *b),
                    F::AnyTrue => bools.iter().any(|b| *b),
                    F::AllFalse => bools.iter().all(|b| !*b),
                    _ => bools.iter().any(|b| !*b),
                };
                Ok(one(Item::Boolean(r)))
            }
            F::SubsetOf | F::SupersetOf => {
                let other = arg_coll(argv, 0);
                let (small, big) = if matches!(func, F::SubsetOf) {
                    (input, other)
                } else {
                    (other, input)
                };
                self.charge(small.len().saturating_mul(big.len()), pos)?;
                Ok(one(Item::Boolean(
                    small.iter().all(|x| contains_item(big, x)),
                )))
            }
            F::Count => Ok(one(Item::Integer(input.len() as i64))),
            F::Distinct => self.distinct(input.to_vec(), pos),
            F::IsDistinct => Ok(one(Item::Boolean(
                self.distinct(input.to_vec(), pos)?.len() == input.len(),
            ))),
            F::Single => match single(input, pos)? {
                Some(x) => Ok(one(x.clone())),
                None => Ok(Vec::new()),
            },
            F::First => Ok(input.first().cloned().into_iter().collect()),
            F::Last => Ok(input.last().cloned().into_iter().collect()),
            F::Tail => Ok(input.iter().skip(1).cloned().collect()),
            F::Skip | F::Take => {
                let Some(n) = arg_int(argv, args, 0)? else {
                    return Ok(Vec::new());
                };
                let n = usize::try_from(n.max(0)).unwrap_or(0);
                Ok(if matches!(func, F::Skip) {
                    input.iter().skip(n).cloned().collect()
                } else {
                    input.iter().take(n).cloned().collect()
                })
            }
            F::Intersect => {
                let other = arg_coll(argv, 0);
                self.charge(input.len().saturating_mul(other.len()), pos)?;
                let common = input
                    .iter()
                    .filter(|x| contains_item(other, x))
                    .cloned()
                    .collect();
                self.distinct(common, pos)
            }
            F::Exclude => {
                let other = arg_coll(argv, 0);
                self.charge(input.len().saturating_mul(other.len()), pos)?;
                Ok(input
                    .iter()
                    .filter(|x| !contains_item(other, x))
                    .cloned()
                    .collect())
            }
            F::Union => {
                let mut all = input.to_vec();
                all.extend_from_slice(arg_coll(argv, 0));
                self.distinct(all, pos)
            }
            F::Combine => {
                let mut all = input.to_vec();
                all.extend_from_slice(arg_coll(argv, 0));
                Ok(all)
            }
            F::ToBoolean | F::ConvertsToBoolean => {
                self.convert(input, pos, matches!(func, F::ConvertsToBoolean), |it| {
                    to_bool_val(it).map(Item::Boolean)
                })
            }
            F::ToInteger | F::ConvertsToInteger | F::ToLong | F::ConvertsToLong => self.convert(
                input,
                pos,
                matches!(func, F::ConvertsToInteger | F::ConvertsToLong),
                |it| to_integer_val(it).map(Item::Integer),
            ),
            F::ToDecimal | F::ConvertsToDecimal => {
                self.convert(input, pos, matches!(func, F::ConvertsToDecimal), |it| {
                    to_decimal_val(it).map(Item::Decimal)
                })
            }
            F::ToStr | F::ConvertsToString => {
                self.convert(input, pos, matches!(func, F::ConvertsToString), |it| {
                    to_string_val(it).map(|s| Item::String(Cow::Owned(s)))
                })
            }
            F::ToDate | F::ConvertsToDate => {
                self.convert(input, pos, matches!(func, F::ConvertsToDate), |it| {
                    to_date_val(it).map(Item::Date)
                })
            }
            F::ToDateTime | F::ConvertsToDateTime => {
                self.convert(input, pos, matches!(func, F::ConvertsToDateTime), |it| {
                    to_datetime_val(it).map(Item::DateTime)
                })
            }
            F::ToTime | F::ConvertsToTime => {
                self.convert(input, pos, matches!(func, F::ConvertsToTime), |it| {
                    to_time_val(it).map(Item::Time)
                })
            }
            F::ToQuantity | F::ConvertsToQuantity => {
                let unit = arg_string(argv, args, 0)?;
                self.convert(input, pos, matches!(func, F::ConvertsToQuantity), |it| {
                    let (d, u) = to_quantity_val(it)?;
                    match &unit {
                        None => Some(Item::Quantity(d, Cow::Owned(u))),
                        Some(target) => {
                            let (v, one_unit) =
                                align_quantities(d, &u, Decimal::from_i64(1), target)?;
                            let r = v.checked_div(one_unit)?;
                            Some(Item::Quantity(r, Cow::Owned(target.to_string())))
                        }
                    }
                })
            }
            F::IndexOf | F::LastIndexOf => {
                let Some(s) = self.input_string(input, pos)? else {
                    return Ok(Vec::new());
                };
                let Some(sub) = arg_string(argv, args, 0)? else {
                    return Ok(Vec::new());
                };
                let found = if matches!(func, F::IndexOf) {
                    s.find(sub.as_ref())
                } else {
                    s.rfind(sub.as_ref())
                };
                let idx = found.map_or(-1, |b| s[..b].chars().count() as i64);
                Ok(one(Item::Integer(idx)))
            }
            F::Substring => {
                let Some(s) = self.input_string(input, pos)? else {
                    return Ok(Vec::new());
                };
                let Some(start) = arg_int(argv, args, 0)? else {
                    return Ok(Vec::new());
                };
                let len = arg_int(argv, args, 1)?;
                let n = s.chars().count() as i64;
                if start < 0 || start >= n {
                    return Ok(Vec::new());
                }
                let take = len.unwrap_or(n).max(0);
                let r: String = s
                    .chars()
                    .skip(start as usize)
                    .take(usize::try_from(take).unwrap_or(usize::MAX))
                    .collect();
                Ok(one(Item::String(Cow::Owned(r))))
            }
            F::StartsWith | F::EndsWith | F::Contains => {
                let Some(s) = self.input_string(input, pos)? else {
                    return Ok(Vec::new());
                };
                let Some(sub) = arg_string(argv, args, 0)? else {
                    return Ok(Vec::new());
                };
                let r = match func {
                    F::StartsWith => s.starts_with(sub.as_ref()),
                    F::EndsWith => s.ends_with(sub.as_ref()),
                    _ => s.contains(sub.as_ref()),
                };
                Ok(one(Item::Boolean(r)))
            }
            F::Upper => string_fn(&|s| Item::String(Cow::Owned(s.to_uppercase()))),
            F::Lower => string_fn(&|s| Item::String(Cow::Owned(s.to_lowercase()))),
            F::Trim => string_fn(&|s| Item::String(Cow::Owned(s.trim().to_string()))),
            F::Length => string_fn(&|s| Item::Integer(s.chars().count() as i64)),
            F::ToChars => match self.input_string(input, pos)? {
                Some(s) => Ok(s
                    .chars()
                    .map(|c| Item::String(Cow::Owned(c.to_string())))
                    .collect()),
                None => Ok(Vec::new()),
            },
            F::Replace => {
                let Some(s) = self.input_string(input, pos)? else {
                    return Ok(Vec::new());
                };
                let (Some(pat), Some(rep)) =
                    (arg_string(argv, args, 0)?, arg_string(argv, args, 1)?)
                else {
                    return Ok(Vec::new());
                };
                // The longest possible result, checked before building it.
                let matches = if pat.is_empty() {
                    s.chars().count() + 1
                } else {
                    s.len() / pat.len()
                };
                if matches.saturating_mul(rep.len()).saturating_add(s.len()) > MAX_STRING {
                    return err(pos, "string result too long");
                }
                let r = if pat.is_empty() {
                    let mut o = String::from(rep.as_ref());
                    for c in s.chars() {
                        o.push(c);
                        o.push_str(&rep);
                    }
                    o
                } else {
                    s.replace(pat.as_ref(), &rep)
                };
                self.string(r, pos)
            }
            F::Regex(rf, compiled) => {
                let Some(s) = self.input_string(input, pos)? else {
                    return Ok(Vec::new());
                };
                let dynamic;
                let re = match compiled {
                    Some(r) => r.as_ref(),
                    None => {
                        let Some(p) = arg_string(argv, args, 0)? else {
                            return Ok(Vec::new());
                        };
                        dynamic = compile_regex(&p, *rf).map_err(|m| {
                            (args[0].pos, format!("invalid regular expression: {m}"))
                        })?;
                        &dynamic
                    }
                };
                match rf {
                    RegexFn::Matches | RegexFn::MatchesFull => {
                        Ok(one(Item::Boolean(re.is_match(&s))))
                    }
                    RegexFn::ReplaceMatches => {
                        let Some(rep) = arg_string(argv, args, 1)? else {
                            return Ok(Vec::new());
                        };
                        if re.as_str().is_empty() {
                            return Ok(one(Item::String(s)));
                        }
                        let worst = (s.len() + 1)
                            .saturating_mul(rep.len())
                            .saturating_add(s.len());
                        if worst > MAX_STRING {
                            // Count the matches before replacing (linear time).
                            let n = re.find_iter(&s).count();
                            if n.saturating_mul(rep.len()).saturating_add(s.len()) > MAX_STRING {
                                return err(pos, "string result too long");
                            }
                        }
                        let r = re.replace_all(&s, rep.as_ref()).into_owned();
                        self.string(r, pos)
                    }
                }
            }
            F::Split => {
                let Some(s) = self.input_string(input, pos)? else {
                    return Ok(Vec::new());
                };
                let Some(sep) = arg_string(argv, args, 0)? else {
                    return Ok(Vec::new());
                };
                if sep.is_empty() {
                    return Ok(s
                        .chars()
                        .map(|c| Item::String(Cow::Owned(c.to_string())))
                        .collect());
                }
                Ok(s.split(sep.as_ref())
                    .map(|p| Item::String(Cow::Owned(p.to_string())))
                    .collect())
            }
            F::Join => {
                let sep = arg_string(argv, args, 0)?.unwrap_or(Cow::Borrowed(""));
                let mut parts = Vec::with_capacity(input.len());
                for it in input {
                    match str_of(it) {
                        Some(s) => parts.push(s),
                        None => return err(pos, "join() expects strings"),
                    }
                }
                let total = parts.iter().map(|p| p.len() + sep.len()).sum::<usize>();
                if total > MAX_STRING {
                    return err(pos, "string result too long");
                }
                self.string(parts.join(&sep), pos)
            }
            F::Encode | F::Decode | F::Escape | F::Unescape => {
                use base64::Engine;
                let Some(s) = self.input_string(input, pos)? else {
                    return Ok(Vec::new());
                };
                let Some(fmt) = arg_string(argv, args, 0)? else {
                    return Ok(Vec::new());
                };
                let b64 = base64::engine::general_purpose::STANDARD;
                let b64url = base64::engine::general_purpose::URL_SAFE;
                let r: Option<String> = match (func, fmt.as_ref()) {
                    (F::Encode, "base64") => Some(b64.encode(s.as_bytes())),
                    (F::Encode, "urlbase64") => Some(b64url.encode(s.as_bytes())),
                    (F::Encode, "hex") => Some(hex_encode(s.as_bytes())),
                    (F::Decode, "base64") => b64
                        .decode(s.as_bytes())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok()),
                    (F::Decode, "urlbase64") => b64url
                        .decode(s.as_bytes())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok()),
                    (F::Decode, "hex") => hex_decode(&s).and_then(|b| String::from_utf8(b).ok()),
                    (F::Escape, "html") => Some(html_escape(&s)),
                    (F::Escape, "json") => Some(json_escape(&s)),
                    (F::Unescape, "html") => Some(html_unescape(&s)),
                    (F::Unescape, "json") => json_unescape(&s),
                    _ => return err(args[0].pos, format!("unknown format '{fmt}'")),
                };
                match r {
                    Some(r) => self.string(r, pos),
                    None => Ok(Vec::new()),
                }
            }
            F::Abs => match single(input, pos)? {
                None => Ok(Vec::new()),
                Some(it) => match val(it) {
                    Val::Int(i) => int_result(i.checked_abs(), pos),
                    Val::Dec(d) => Ok(one(Item::Decimal(d.abs()))),
                    Val::Qty(d, u) => Ok(one(Item::Quantity(d.abs(), Cow::Owned(u.to_string())))),
                    _ => err(pos, "abs() expects a number"),
                },
            },
            F::Ceiling | F::Floor | F::Truncate => match single(input, pos)? {
                None => Ok(Vec::new()),
                Some(it) => match val(it) {
                    Val::Int(i) => Ok(one(Item::Integer(i))),
                    Val::Dec(d) => {
                        let r = match func {
                            F::Ceiling => d.ceiling(),
                            F::Floor => d.floor(),
                            _ => d.truncate_to(0),
                        };
                        match r.to_i64() {
                            Some(i) => Ok(one(Item::Integer(i))),
                            None => err(pos, "integer overflow"),
                        }
                    }
                    _ => err(pos, "expected a number"),
                },
            },
            F::Round => {
                let Some(it) = single(input, pos)? else {
                    return Ok(Vec::new());
                };
                let prec = arg_int(argv, args, 0)?.unwrap_or(0);
                if prec < 0 {
                    return err(pos, "round() precision must not be negative");
                }
                let Some(d) = as_dec(val(it)) else {
                    return err(pos, "round() expects a number");
                };
                dec_item(d.rescale(prec.min(28) as u32), pos)
            }
            F::Exp | F::Ln | F::Sqrt => {
                let Some(it) = single(input, pos)? else {
                    return Ok(Vec::new());
                };
                math_f64(it, pos, |x| match func {
                    F::Exp => x.exp(),
                    F::Ln => x.ln(),
                    _ => x.sqrt(),
                })
            }
            F::Log | F::Power => {
                let Some(it) = single(input, pos)? else {
                    return Ok(Vec::new());
                };
                let Some(arg) = arg_single(argv, args, 0)? else {
                    return Ok(Vec::new());
                };
                let Some(b) = as_dec(val(&arg)) else {
                    return err(args[0].pos, "expected a number");
                };
                if let (F::Power, Val::Int(base), Val::Int(e)) = (func, val(it), val(&arg)) {
                    if e < 0 {
                        return math_f64(it, pos, |x| x.powf(e as f64));
                    }
                    return int_result(
                        u32::try_from(e).ok().and_then(|e| base.checked_pow(e)),
                        pos,
                    );
                }
                let b = b.to_f64();
                math_f64(it, pos, |x| {
                    if matches!(func, F::Log) {
                        x.log(b)
                    } else {
                        x.powf(b)
                    }
                })
            }
            F::Children => {
                let mut out = Vec::new();
                for it in input {
                    children(it, &mut out);
                }
                self.charge(out.len(), pos)?;
                Ok(out)
            }
            F::Descendants => {
                let mut out = Vec::new();
                let mut frontier: Vec<Item<'a>> = Vec::new();
                for it in input {
                    children(it, &mut frontier);
                }
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    for it in &frontier {
                        children(it, &mut next);
                    }
                    self.charge(frontier.len(), pos)?;
                    out.append(&mut frontier);
                    frontier = next;
                }
                Ok(out)
            }
            F::Trace => Ok(input.to_vec()),
            F::Now => Ok(one(Item::DateTime(self.now()))),
            F::Today => Ok(one(Item::Date(self.now().truncated(Precision::Day)))),
            F::TimeOfDay => {
                let mut t = self.now();
                t.year = 0;
                t.month = 0;
                t.day = 0;
                t.tz = None;
                Ok(one(Item::Time(t)))
            }
            F::Not => Ok(bool_item(to_bool(input, pos)?.map(|b| !b))),
            F::Type => Ok(input
                .iter()
                .map(|it| {
                    let (ns, n) = type_info(it);
                    Item::TypeInfo(ns, n)
                })
                .collect()),
            F::Is(ts) => match single(input, pos)? {
                None => Ok(Vec::new()),
                Some(it) => Ok(one(Item::Boolean(ts.matches(it, false)))),
            },
            F::As(ts) | F::OfType(ts) => Ok(input
                .iter()
                .filter(|it| ts.matches(it, true))
                .cloned()
                .collect()),
            F::Extension => {
                let Some(url) = arg_string(argv, args, 0)? else {
                    return Ok(Vec::new());
                };
                let mut out = Vec::new();
                let mut exts = Vec::new();
                for it in input {
                    exts.clear();
                    navigate(it, "extension", &mut exts);
                    for e in &exts {
                        if let Item::Node(n) = e
                            && n.value.get("url").and_then(Value::as_str) == Some(url.as_ref())
                        {
                            out.push(e.clone());
                        }
                    }
                }
                Ok(out)
            }
            F::HasValue => Ok(one(Item::Boolean(match input {
                [Item::Node(n)] => matches!(n.ty, TypeRef::Primitive(_)) && !n.value.is_null(),
                _ => false,
            }))),
            F::GetValue => match input {
                [
                    it @ Item::Node(Node {
                        ty: TypeRef::Primitive(_),
                        ..
                    }),
                ] => Ok(val_to_item_borrowed(it).into_iter().collect()),
                _ => Ok(Vec::new()),
            },
            F::Resolve => {
                let mut out = Vec::new();
                for it in input {
                    self.resolve(it, &mut out);
                }
                Ok(out)
            }
            F::MemberOf | F::Subsumes | F::SubsumedBy => Ok(Vec::new()),
            F::ConformsTo => {
                // Only the core resource profiles are known.
                let Some(url) = arg_string(argv, args, 0)? else {
                    return Ok(Vec::new());
                };
                let name = url
                    .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
                    .and_then(|n| R4.resource_type(n));
                let Some(name) = name else {
                    return err(pos, format!("cannot resolve the profile '{url}'"));
                };
                Ok(input
                    .iter()
                    .map(|it| Item::Boolean(type_info(it).1 == name))
                    .collect())
            }
            F::HtmlChecks | F::HtmlChecks2 => Ok(one(Item::Boolean(true))),
            F::LowBoundary | F::HighBoundary => {
                let Some(it) = single(input, pos)? else {
                    return Ok(Vec::new());
                };
                let prec = arg_int(argv, args, 0)?;
                Ok(boundary(it, prec, matches!(func, F::HighBoundary))
                    .into_iter()
                    .collect())
            }
            F::Precision => {
                let Some(it) = single(input, pos)? else {
                    return Ok(Vec::new());
                };
                let p = match val(it) {
                    Val::Dec(d) => Some(d.scale() as i64),
                    Val::Int(_) => Some(0),
                    Val::Date(t) | Val::DateTime(t) => Some(date_digits(&t)),
                    Val::Time(t) => Some(time_digits(&t)),
                    _ => None,
                };
                Ok(p.map(Item::Integer).into_iter().collect())
            }
            F::Comparable => {
                let Some(it) = single(input, pos)? else {
                    return Ok(Vec::new());
                };
                let Some(other) = arg_single(argv, args, 0)? else {
                    return Ok(Vec::new());
                };
                match (val(it), val(&other)) {
                    (Val::Qty(a, ua), Val::Qty(b, ub)) => {
                        Ok(one(Item::Boolean(align_quantities(a, ua, b, ub).is_some())))
                    }
                    _ => err(pos, "comparable() expects quantities"),
                }
            }

            F::Exists
            | F::All
            | F::Where
            | F::Select
            | F::Repeat
            | F::Iif
            | F::Aggregate
            | F::Sort => err(pos, "internal error: an iterating function"),
        }
    }

    fn convert(
        &self,
        input: &[Item<'a>],
        pos: usize,
        test: bool,
        f: impl Fn(&Item<'a>) -> Option<Item<'a>>,
    ) -> R<'a> {
        let Some(it) = single(input, pos)? else {
            return Ok(Vec::new());
        };
        let r = f(it);
        if test {
            Ok(one(Item::Boolean(r.is_some())))
        } else {
            Ok(r.into_iter().collect())
        }
    }

    fn resolve(&self, it: &Item<'a>, out: &mut Vec<Item<'a>>) {
        let Item::Node(n) = it else { return };
        let (reference, ty_hint) = match (n.ty, n.value) {
            (TypeRef::Complex("Reference"), Value::Object(o)) => (
                o.get("reference").and_then(Value::as_str),
                o.get("type").and_then(Value::as_str),
            ),
            (TypeRef::Primitive(_), Value::String(s)) => (Some(s.as_str()), None),
            _ => return,
        };
        if let Some(r) = reference {
            if let Some(id) = r.strip_prefix('#') {
                if let Some(Value::Array(contained)) = self.resource.get("contained") {
                    for c in contained {
                        if c.get("id").and_then(Value::as_str) == Some(id) {
                            out.push(Item::Node(Node::resource(c)));
                            return;
                        }
                    }
                }
                return;
            }
            // A Bundle entry with this fullUrl.
            if self.resource.get("resourceType").and_then(Value::as_str) == Some("Bundle")
                && let Some(Value::Array(entries)) = self.resource.get("entry")
            {
                for e in entries {
                    if e.get("fullUrl").and_then(Value::as_str) == Some(r)
                        && let Some(res) = e.get("resource")
                    {
                        out.push(Item::Node(Node::resource(res)));
                        return;
                    }
                }
            }
            if let Some(t) = reference_type(r) {
                out.push(Item::Resolved(t));
                return;
            }
        }
        if let Some(t) = ty_hint {
            let name = t.rsplit('/').next().unwrap_or(t);
            if let Some(rt) = R4.resource_type(name) {
                out.push(Item::Resolved(rt));
            }
        }
    }

    fn sort(&self, input: &[Item<'a>], args: &'a [Ast], sc: Scope<'_, 'a>, pos: usize) -> R<'a> {
        // Keys per item: (value, descending).
        let mut keyed: Vec<(Vec<Option<Item<'a>>>, Item<'a>)> = Vec::with_capacity(input.len());
        for (i, item) in input.iter().enumerate() {
            let mut keys = Vec::with_capacity(args.len().max(1));
            if args.is_empty() {
                keys.push(Some(item.clone()));
            }
            for a in args {
                let expr = match &a.kind {
                    Kind::Neg(inner) => inner.as_ref(),
                    _ => a,
                };
                let inner = Scope {
                    this: std::slice::from_ref(item),
                    index: Some(i),
                    total: sc.total,
                };
                let r = self.eval(expr, inner)?;
                keys.push(single(&r, a.pos)?.cloned());
            }
            keyed.push((keys, item.clone()));
        }
        let desc: Vec<bool> = if args.is_empty() {
            vec![false]
        } else {
            args.iter()
                .map(|a| matches!(a.kind, Kind::Neg(_)))
                .collect()
        };
        let mut failure = None;
        keyed.sort_by(|(ka, _), (kb, _)| {
            for (i, (x, y)) in ka.iter().zip(kb).enumerate() {
                // Empty keys sort first in either direction.
                let o = match (x, y) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Less,
                    (Some(_), None) => Ordering::Greater,
                    (Some(x), Some(y)) => {
                        let o = match item_cmp(x, y) {
                            Ok(o) => o.unwrap_or(Ordering::Equal),
                            Err(m) => {
                                failure = Some(m);
                                Ordering::Equal
                            }
                        };
                        if desc.get(i).copied().unwrap_or(false) {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
        if let Some(m) = failure {
            return err(pos, m);
        }
        Ok(keyed.into_iter().map(|(_, it)| it).collect())
    }
}

/// A plain argument's collection (empty when absent).
fn arg_coll<'x, 'a>(argv: &'x [Vec<Item<'a>>], i: usize) -> &'x [Item<'a>] {
    argv.get(i).map_or(&[], Vec::as_slice)
}

fn arg_single<'a>(
    argv: &[Vec<Item<'a>>],
    args: &[Ast],
    i: usize,
) -> Result<Option<Item<'a>>, Error> {
    let pos = args.get(i).map_or(0, |a| a.pos);
    Ok(single(arg_coll(argv, i), pos)?.cloned())
}

fn arg_string<'a>(
    argv: &[Vec<Item<'a>>],
    args: &[Ast],
    i: usize,
) -> Result<Option<Cow<'a, str>>, Error> {
    let pos = args.get(i).map_or(0, |a| a.pos);
    match arg_single(argv, args, i)? {
        None => Ok(None),
        Some(it) => match str_of(&it) {
            Some(s) => Ok(Some(s)),
            None => err(pos, "expected a string argument"),
        },
    }
}

fn arg_int(argv: &[Vec<Item<'_>>], args: &[Ast], i: usize) -> Result<Option<i64>, Error> {
    let pos = args.get(i).map_or(0, |a| a.pos);
    match arg_single(argv, args, i)? {
        None => Ok(None),
        Some(it) => match val(&it) {
            Val::Int(n) => Ok(Some(n)),
            _ => err(pos, "expected an integer argument"),
        },
    }
}

fn negate<'a>(v: &[Item<'a>], pos: usize) -> R<'a> {
    let Some(it) = single(v, pos)? else {
        return Ok(Vec::new());
    };
    match val(it) {
        Val::Int(i) => int_result(i.checked_neg(), pos),
        Val::Dec(d) => Ok(one(Item::Decimal(d.negated()))),
        Val::Qty(d, u) => Ok(one(Item::Quantity(d.negated(), Cow::Owned(u.to_string())))),
        Val::Empty => Ok(Vec::new()),
        other => err(pos, format!("cannot negate {}", kind_name(&other))),
    }
}

fn str_or_string(it: &Item<'_>) -> Result<String, ()> {
    match val(it) {
        Val::Str(s) => Ok(s.to_string()),
        Val::Empty => Ok(String::new()),
        _ => Err(()),
    }
}

/// A primitive node's value as a System item, borrowing strings.
fn val_to_item_borrowed<'a>(it: &Item<'a>) -> Option<Item<'a>> {
    if let Item::Node(Node {
        value: Value::String(s),
        ty: TypeRef::Primitive(p),
        ..
    }) = it
        && !matches!(
            p,
            Primitive::Date | Primitive::DateTime | Primitive::Instant | Primitive::Time
        )
    {
        return Some(Item::String(Cow::Borrowed(s.as_str())));
    }
    val_to_item(val(it))
}

fn date_digits(t: &Temporal) -> i64 {
    match t.precision {
        Precision::Year => 4,
        Precision::Month => 6,
        Precision::Day => 8,
        Precision::Hour => 10,
        Precision::Minute => 12,
        Precision::Second => 14,
        Precision::Millisecond => 17,
    }
}

fn time_digits(t: &Temporal) -> i64 {
    match t.precision {
        Precision::Hour => 2,
        Precision::Minute => 4,
        Precision::Second => 6,
        _ => 9,
    }
}

/// `lowBoundary()` / `highBoundary()` for decimals and dates.
fn boundary<'a>(it: &Item<'a>, prec: Option<i64>, high: bool) -> Option<Item<'a>> {
    match val(it) {
        Val::Dec(d) | Val::Qty(d, _) => {
            let p = prec.unwrap_or(8);
            if !(0..=28).contains(&p) {
                return None;
            }
            let p = p as u32;
            // The interval of values that round to d: d ± half a unit of its last digit.
            let half = Decimal::new(5, d.scale() + 1);
            let b = if high {
                d.checked_add(half)?
            } else {
                d.checked_sub(half)?
            };
            let r = if p >= b.scale() {
                b.rescale(p)?
            } else if high == b.is_negative() {
                b.truncate_to(p)
            } else {
                // Away from zero.
                let t = b.truncate_to(p);
                if t.cmp_value(b) == Ordering::Equal {
                    t
                } else {
                    let unit = Decimal::new(if b.is_negative() { -1 } else { 1 }, p);
                    t.checked_add(unit)?
                }
            };
            match val(it) {
                Val::Qty(_, u) => Some(Item::Quantity(r, Cow::Owned(u.to_string()))),
                _ => Some(Item::Decimal(r)),
            }
        }
        Val::Int(i) => {
            let d = Decimal::from_i64(i);
            boundary(&Item::Decimal(d), prec, high)
        }
        Val::Date(t) | Val::DateTime(t) => {
            let is_date = matches!(val(it), Val::Date(_));
            let target = match prec {
                None if is_date => Precision::Day,
                None => Precision::Millisecond,
                Some(4) => Precision::Year,
                Some(6) => Precision::Month,
                Some(8) => Precision::Day,
                Some(10) => Precision::Hour,
                Some(12) => Precision::Minute,
                Some(14) => Precision::Second,
                Some(17) => Precision::Millisecond,
                _ => return None,
            };
            let mut r = t;
            if r.precision >= target {
                return Some(if is_date {
                    Item::Date(r.truncated(target))
                } else {
                    Item::DateTime(r.truncated(target))
                });
            }
            if r.precision < Precision::Month {
                r.month = if high { 12 } else { 1 };
            }
            if r.precision < Precision::Day {
                r.day = if high {
                    super::temporal::days_in_month(r.year, r.month)
                } else {
                    1
                };
            }
            if r.precision < Precision::Hour {
                r.hour = if high { 23 } else { 0 };
            }
            if r.precision < Precision::Minute {
                r.minute = if high { 59 } else { 0 };
            }
            if r.precision < Precision::Second {
                r.second = if high { 59 } else { 0 };
            }
            if r.precision < Precision::Millisecond {
                r.nanos = if high { 999_000_000 } else { 0 };
                r.frac_digits = 3;
            }
            if target >= Precision::Hour && r.tz.is_none() {
                r.tz = Some(if high { -12 * 60 } else { 14 * 60 });
            }
            r.precision = target;
            Some(if is_date {
                Item::Date(r)
            } else {
                Item::DateTime(r)
            })
        }
        Val::Time(t) => {
            let target = match prec {
                None | Some(9) => Precision::Millisecond,
                Some(2) => Precision::Hour,
                Some(4) => Precision::Minute,
                Some(6) => Precision::Second,
                _ => return None,
            };
            let mut r = t;
            if r.precision < Precision::Minute {
                r.minute = if high { 59 } else { 0 };
            }
            if r.precision < Precision::Second {
                r.second = if high { 59 } else { 0 };
            }
            if r.precision < Precision::Millisecond {
                r.nanos = if high { 999_000_000 } else { 0 };
                r.frac_digits = 3;
            }
            r.precision = target.max(r.precision);
            Some(Item::Time(r))
        }
        _ => None,
    }
}
