//! Search requests: the URL's parameters parsed against the registry into typed criteria
//! (`store::Filter`) and result parameters (`_count`, `_include`, `_total`, ...), with the
//! problems found (R4 §3.1.1: unknown parameters and bad values are refused with
//! `Prefer: handling=strict`, ignored and left out of the `self` link by default).

use crate::error::{Error, Result};
use crate::fhir::datetime::parse_date_time;
use crate::fhir::outcome::Issue;
use crate::fhir::schema::R4;
use base64::Engine as _;

use crate::store::{Cond, Filter, IndexTable, Prefix, SortBy, SortKey, SortValue};

use super::normalize::normalize;
use super::registry::{ParamType, SearchParam, registry};

/// The most `_count` may ask for; larger values are cut to it.
pub const MAX_COUNT: i64 = 1000;
/// The page size without `_count`.
pub const DEFAULT_COUNT: i64 = 20;
/// How many resources `_include`/`_revinclude` add to one page at most.
pub const MAX_INCLUDED: i64 = 1000;
/// How many rounds `:iterate` runs at most.
pub const MAX_ITERATIONS: usize = 4;

/// `_total` (R4 §3.1.1.8.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Estimate,
    Accurate,
}

/// `_summary` (R4 §3.1.1.8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
    Count,
    False,
}

/// `_include` / `_revinclude`: `Source:param[:Target]`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The type holding the reference (`*` as None).
    pub source: Option<&'static str>,
    /// The reference parameter (`*` as None).
    pub param: Option<String>,
    pub target: Option<&'static str>,
    pub iterate: bool,
}

/// A parsed search.
#[derive(Debug, Clone)]
pub struct SearchSpec {
    pub types: Vec<String>,
    pub filters: Vec<Filter>,
    pub count: i64,
    pub after: Option<i64>,
    pub before: Option<i64>,
    /// `_sort` keys, and the cursor of a sorted page.
    pub sort: Vec<SortKey>,
    pub sort_after: Option<(Vec<SortValue>, i64)>,
    /// The cursor of a sorted page before a row (a `previous` link).
    pub sort_before: Option<(Vec<SortValue>, i64)>,
    pub total: Total,
    pub summary: Summary,
    pub elements: Option<Vec<String>>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    /// Includes are kept to resources outside this compartment (Patient/$everything adds
    /// what the record refers to, never another patient's resources).
    pub include_outside: Option<&'static str>,
    /// The parameters that took effect, for the `self` and paging links.
    pub used: Vec<(String, String)>,
    /// Parameters ignored (lenient handling), reported in an OperationOutcome entry.
    pub ignored: Vec<Issue>,
}

/// The `_after` value of a sorted page: each sort value (`n` null, `i` integer, `f` the bits
/// of a float, `t` base64url text) and the primary key, joined by `.`.
pub fn encode_cursor(values: &[SortValue], pk: i64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut out = String::from("s");
    for v in values {
        match v {
            SortValue::Null => out.push('n'),
            SortValue::Int(i) => out.push_str(&format!("i{i}")),
            SortValue::Float(f) => out.push_str(&format!("f{:x}", f.to_bits())),
            SortValue::Text(t) => {
                out.push('t');
                out.push_str(&b64.encode(t));
            }
        }
        out.push('.');
    }
    out.push_str(&pk.to_string());
    out
}

fn decode_cursor(v: &str) -> Option<(Vec<SortValue>, i64)> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts: Vec<&str> = v.strip_prefix('s')?.split('.').collect();
    let pk = parts.pop()?.parse().ok()?;
    let mut values = Vec::new();
    for p in parts {
        let (tag, rest) = p.split_at_checked(1)?;
        values.push(match tag {
            "n" => SortValue::Null,
            "i" => SortValue::Int(rest.parse().ok()?),
            "f" => SortValue::Float(f64::from_bits(u64::from_str_radix(rest, 16).ok()?)),
            "t" => SortValue::Text(String::from_utf8(b64.decode(rest).ok()?).ok()?),
            _ => return None,
        });
    }
    Some((values, pk))
}

/// Parameters of the HTTP layer, not of the search.
const HTTP_PARAMS: &[&str] = &["_format", "_pretty"];

/// Splits a value on commas not escaped with a backslash (R4 §3.1.1.5.7: `\,` is a comma in
/// a value, `\$` and `\|` likewise in composites and tokens).
pub fn split_or(value: &str) -> Vec<String> {
    split_escaped(value, ',')
}

fn split_escaped(value: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) if n == sep => cur.push(n),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            },
            c if c == sep => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Removes the escapes of `\,` `\$` `\|` `\\` from a single value.
fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(n) = chars.clone().next()
            && matches!(n, ',' | '$' | '|' | '\\')
        {
            out.push(n);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

/// Splits `system|code` at the first unescaped `|`.
fn split_pipe(v: &str) -> (Option<String>, String) {
    let parts = split_escaped(v, '|');
    if parts.len() >= 2 {
        let code = parts[1..].join("|");
        (Some(unescape(&parts[0])), unescape(&code))
    } else {
        (None, unescape(v))
    }
}

fn bad(name: &str, msg: impl Into<String>) -> Issue {
    Issue::error("invalid", msg).at(name.to_string())
}

/// Splits an ordered value into its prefix and the rest (`ge2020` → Ge, `2020`).
fn prefix(v: &str) -> (Prefix, &str) {
    let p = match v.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, v),
    };
    (p, &v[2..])
}

/// A number and its implicit precision range (R4 §3.1.1.4.2: `100` means [99.5, 100.5)).
fn number_range(s: &str) -> Option<(f64, f64, f64)> {
    let value: f64 = s.parse().ok()?;
    if !value.is_finite() || s.is_empty() || s.contains(['x', 'X', 'n', 'N', 'i', 'I']) {
        return None;
    }
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
    let half = 0.5 * 10f64.powi(exp - decimals);
    Some((value, value - half, value + half))
}

fn date_range(s: &str) -> Option<(i64, i64)> {
    if let Ok(d) = parse_date_time(s) {
        return Some(d.range());
    }
    // A search dateTime without a timezone is taken as UTC.
    if s.len() > 10 && !s.ends_with('Z') && !s[10..].contains(['+', '-']) {
        return parse_date_time(&format!("{s}Z")).ok().map(|d| d.range());
    }
    None
}

/// Parses one value of a parameter into a condition.
fn value_cond(
    p: &SearchParam,
    modifier: Option<&str>,
    name: &str,
    raw: &str,
) -> std::result::Result<Cond, Issue> {
    match p.ty {
        ParamType::String => {
            let norm = normalize(raw);
            Ok(match modifier {
                Some("exact") => Cond::StringExact {
                    norm,
                    exact: unescape(raw),
                },
                Some("contains") => Cond::StringContains(norm),
                _ => Cond::StringStarts(norm),
            })
        }
        ParamType::Token => {
            let (system, code) = split_pipe(raw);
            Ok(match (system, code) {
                (Some(s), c) if c.is_empty() => Cond::Token {
                    system: Some(s),
                    code: None,
                },
                (s, c) => Cond::Token {
                    system: s,
                    code: Some(c),
                },
            })
        }
        ParamType::Reference => reference_cond(p, modifier, name, raw),
        ParamType::Date => {
            let (pre, rest) = prefix(raw);
            let (low, high) = date_range(rest).ok_or_else(|| {
                bad(
                    name,
                    format!(
                        "'{raw}' is not a date: give [prefix]YYYY[-MM[-DD[Thh:mm[:ss][zone]]]]"
                    ),
                )
            })?;
            Ok(Cond::Date {
                prefix: pre,
                low,
                high,
            })
        }
        ParamType::Number => {
            let (pre, rest) = prefix(raw);
            let (value, low, high) =
                number_range(rest).ok_or_else(|| bad(name, format!("'{raw}' is not a number")))?;
            Ok(Cond::Number {
                prefix: pre,
                value,
                low,
                high,
            })
        }
        ParamType::Quantity => {
            let (pre, rest) = prefix(raw);
            let parts = split_escaped(rest, '|');
            let (value, low, high) = number_range(&parts[0]).ok_or_else(|| {
                bad(
                    name,
                    format!("'{raw}' is not a quantity: give [prefix]number[|system|code]"),
                )
            })?;
            let (system, code) = match parts.len() {
                1 => (None, None),
                3 => (
                    Some(unescape(&parts[1])).filter(|s| !s.is_empty()),
                    Some(unescape(&parts[2])).filter(|s| !s.is_empty()),
                ),
                _ => {
                    return Err(bad(
                        name,
                        format!("'{raw}' is not a quantity: give [prefix]number[|system|code]"),
                    ));
                }
            };
            Ok(Cond::Quantity {
                prefix: pre,
                value,
                low,
                high,
                system,
                code,
            })
        }
        ParamType::Uri => Ok(match modifier {
            Some("below") => Cond::UriBelow(unescape(raw)),
            Some("above") => {
                let v = unescape(raw);
                let mut list = vec![v.clone()];
                let mut cut = v.as_str();
                while let Some(i) = cut.rfind('/') {
                    cut = &cut[..i];
                    if cut.ends_with('/') || cut.ends_with(':') || cut.is_empty() {
                        break;
                    }
                    list.push(cut.to_string());
                }
                Cond::UriAbove(list)
            }
            _ => Cond::UriEq(unescape(raw)),
        }),
        ParamType::Composite => {
            let parts = split_escaped(raw, '$');
            if parts.len() != 2 || p.components.len() != 2 {
                return Err(bad(
                    name,
                    format!("'{raw}' is not a composite value: give first$second"),
                ));
            }
            let (system1, code1) = split_pipe(&parts[0]);
            let probe = p.with_type(p.components[1].ty);
            let second = value_cond(&probe, None, name, &parts[1])?;
            Ok(Cond::Composite {
                system1,
                code1,
                second: Box::new(second),
            })
        }
        ParamType::Special => Err(Issue::error(
            "not-supported",
            format!("search parameter '{}' is not supported", p.code),
        )
        .at(name.to_string())),
    }
}

fn reference_cond(
    p: &SearchParam,
    modifier: Option<&str>,
    name: &str,
    raw: &str,
) -> std::result::Result<Cond, Issue> {
    let v = unescape(raw);
    let v = match v.find("/_history/") {
        Some(i) => v[..i].to_string(),
        None => v,
    };
    if let Some(t) = modifier {
        // `subject:Patient=123`.
        return Ok(Cond::Reference(vec![if v.contains('/') {
            v
        } else {
            format!("{t}/{v}")
        }]));
    }
    if v.contains("://") || v.starts_with("urn:") {
        // An absolute URL or canonical, as written.
        return Ok(Cond::Reference(vec![v]));
    }
    match v.split_once('/') {
        Some((ty, id)) if R4.resource_type(ty).is_some() && !id.is_empty() && !id.contains('/') => {
            Ok(Cond::Reference(vec![v]))
        }
        Some(_) => Err(bad(
            name,
            format!("'{raw}' is not a reference: give Type/id, id or a URL"),
        )),
        // A bare id: any of the parameter's target types.
        None => {
            let targets: Vec<String> = if p.targets.is_empty() {
                R4.resource_types()
                    .iter()
                    .map(|t| format!("{t}/{v}"))
                    .collect()
            } else {
                p.targets.iter().map(|t| format!("{t}/{v}")).collect()
            };
            Ok(Cond::Reference(targets))
        }
    }
}

/// The table of a parameter type's rows (for `:missing`).
fn table_of(ty: ParamType) -> Option<IndexTable> {
    Some(match ty {
        ParamType::String => IndexTable::String,
        ParamType::Token => IndexTable::Token,
        ParamType::Reference => IndexTable::Reference,
        ParamType::Date => IndexTable::Date,
        ParamType::Number => IndexTable::Number,
        ParamType::Quantity => IndexTable::Quantity,
        ParamType::Uri => IndexTable::Uri,
        ParamType::Composite => IndexTable::Composite,
        ParamType::Special => return None,
    })
}

fn modifier_ok(ty: ParamType, code: &str, modifier: &str) -> bool {
    match (ty, modifier) {
        (_, "missing") => true,
        (ParamType::String, "exact" | "contains") => true,
        (ParamType::Token, "not" | "text") => true,
        (ParamType::Token, "of-type") => code == "identifier",
        (ParamType::Reference, "identifier") => true,
        (ParamType::Reference, m) => R4.resource_type(m).is_some(),
        (ParamType::Uri, "above" | "below") => true,
        _ => false,
    }
}

/// Parses one criterion `name=value` against resource type `ty`.
pub fn criterion(ty: &str, name: &str, value: &str) -> std::result::Result<Filter, Issue> {
    criterion_depth(ty, name, value, 0)
}

fn criterion_depth(
    ty: &str,
    name: &str,
    value: &str,
    depth: usize,
) -> std::result::Result<Filter, Issue> {
    let reg = registry();
    if depth > 4 {
        return Err(bad(name, "chains and _has nest at most 4 levels"));
    }
    if value.is_empty() {
        return Err(bad(name, format!("search parameter '{name}' has no value")));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        // `_has:Observation:patient:code=x`.
        let mut parts = rest.splitn(3, ':');
        let (Some(src), Some(param), Some(inner)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                name,
                "_has takes _has:Type:reference-parameter:parameter",
            ));
        };
        let Some(src) = R4.resource_type(src) else {
            return Err(bad(name, format!("'{src}' is not a resource type")));
        };
        match reg.param(src, param) {
            Some(p) if p.ty == ParamType::Reference => {}
            _ => {
                return Err(bad(
                    name,
                    format!("'{param}' is not a reference parameter of {src}"),
                ));
            }
        }
        let inner = criterion_depth(src, inner, value, depth + 1)?;
        return Ok(Filter::Has {
            source_type: src.to_string(),
            param: param.to_string(),
            filters: vec![inner],
        });
    }
    // A chain: `subject:Patient.name`, `subject.name`.
    if let Some((head, rest)) = name.split_once('.') {
        let (code, target) = match head.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (head, None),
        };
        let Some(p) = reg.param(ty, code) else {
            return Err(unknown(ty, code, name));
        };
        if p.ty != ParamType::Reference {
            return Err(bad(
                name,
                format!("'{code}' is not a reference parameter: it cannot be chained"),
            ));
        }
        let inner_code = rest.split(['.', ':']).next().unwrap_or(rest);
        let types: Vec<&'static str> = match target {
            Some(t) => match R4.resource_type(t) {
                Some(t) => vec![t],
                None => return Err(bad(name, format!("'{t}' is not a resource type"))),
            },
            None => p
                .targets
                .iter()
                .copied()
                .filter(|t| reg.param(t, inner_code).is_some())
                .collect(),
        };
        let Some(first) = types.first() else {
            return Err(bad(
                name,
                format!("no target type of '{code}' has a parameter '{inner_code}'"),
            ));
        };
        let inner = criterion_depth(first, rest, value, depth + 1)?;
        return Ok(Filter::Chain {
            param: code.to_string(),
            types: types.iter().map(|t| t.to_string()).collect(),
            filters: vec![inner],
        });
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    if code == "_id" && modifier.is_none() {
        return Ok(Filter::Id(
            split_or(value).iter().map(|v| unescape(v)).collect(),
        ));
    }
    let Some(p) = reg.param(ty, code) else {
        return Err(unknown(ty, code, name));
    };
    if code == "_lastUpdated" && modifier.is_none() {
        let mut conds = Vec::new();
        for v in split_or(value) {
            let (pre, rest) = prefix(&v);
            let (low, high) =
                date_range(rest).ok_or_else(|| bad(name, format!("'{v}' is not a date")))?;
            conds.push(Cond::Date {
                prefix: pre,
                low,
                high,
            });
        }
        return Ok(Filter::LastUpdated(conds));
    }
    if let Some(m) = modifier
        && !modifier_ok(p.ty, code, m)
    {
        return Err(Issue::error(
            "not-supported",
            format!(
                "modifier ':{m}' is not supported on {} parameter '{code}'",
                p.ty.name()
            ),
        )
        .at(name.to_string()));
    }
    if p.ty == ParamType::Special || p.expr.is_none() && p.ty != ParamType::Composite {
        return Err(Issue::error(
            "not-supported",
            format!("search parameter '{code}' is not supported"),
        )
        .at(name.to_string()));
    }
    match modifier {
        Some("missing") => {
            let missing = match value {
                "true" => true,
                "false" => false,
                _ => return Err(bad(name, ":missing takes true or false")),
            };
            let table =
                table_of(p.ty).ok_or_else(|| bad(name, ":missing is not supported here"))?;
            return Ok(Filter::Missing {
                param: code.to_string(),
                table,
                missing,
            });
        }
        Some("text") => {
            let conds = split_or(value)
                .iter()
                .map(|v| Cond::StringStarts(normalize(v)))
                .collect();
            return Ok(Filter::Any {
                param: p.text_param.to_string(),
                conds,
            });
        }
        Some("identifier") => {
            let conds = split_or(value)
                .iter()
                .map(|v| {
                    let (system, code) = split_pipe(v);
                    Cond::Token {
                        system,
                        code: Some(code),
                    }
                })
                .collect();
            return Ok(Filter::Any {
                param: p.identifier_param.to_string(),
                conds,
            });
        }
        Some("of-type") => {
            let mut conds = Vec::new();
            for v in split_or(value) {
                let parts = split_escaped(&v, '|');
                if parts.len() != 3 {
                    return Err(bad(name, ":of-type takes system|code|value"));
                }
                conds.push(Cond::Token {
                    system: Some(unescape(&parts[0])),
                    code: Some(format!("{}|{}", unescape(&parts[1]), unescape(&parts[2]))),
                });
            }
            return Ok(Filter::Any {
                param: p.of_type_param.to_string(),
                conds,
            });
        }
        _ => {}
    }
    let mut conds = Vec::new();
    for v in split_or(value) {
        if v.is_empty() {
            continue;
        }
        conds.push(value_cond(p, modifier, name, &v)?);
    }
    if conds.is_empty() {
        return Err(bad(name, format!("search parameter '{name}' has no value")));
    }
    Ok(if modifier == Some("not") {
        Filter::None {
            param: code.to_string(),
            conds,
        }
    } else {
        Filter::Any {
            param: code.to_string(),
            conds,
        }
    })
}

fn unknown(ty: &str, code: &str, name: &str) -> Issue {
    Issue::error(
        "not-supported",
        format!(
            "'{code}' is not a search parameter of {ty} (see /fhir/metadata for those supported)"
        ),
    )
    .at(name.to_string())
}

fn parse_include(
    ty: Option<&str>,
    v: &str,
    name: &str,
    iterate: bool,
) -> std::result::Result<Include, Issue> {
    let reg = registry();
    if v == "*" {
        return Ok(Include {
            source: None,
            param: None,
            target: None,
            iterate,
        });
    }
    let mut parts = v.split(':');
    let src = parts.next().unwrap_or("");
    let source = if src == "*" {
        None
    } else {
        Some(
            R4.resource_type(src)
                .ok_or_else(|| bad(name, format!("'{src}' is not a resource type")))?,
        )
    };
    let _ = ty;
    let param = match parts.next() {
        None | Some("*") => None,
        Some(code) => {
            if let Some(s) = source {
                match reg.param(s, code) {
                    Some(p) if p.ty == ParamType::Reference => {}
                    _ => {
                        return Err(bad(
                            name,
                            format!("'{code}' is not a reference parameter of {s}"),
                        ));
                    }
                }
            }
            Some(code.to_string())
        }
    };
    let target = match parts.next() {
        None => None,
        Some(t) => Some(
            R4.resource_type(t)
                .ok_or_else(|| bad(name, format!("'{t}' is not a resource type")))?,
        ),
    };
    Ok(Include {
        source,
        param,
        target,
        iterate,
    })
}

impl SearchSpec {
    /// A reference given as an absolute URL under this server's own `base`
    /// (`https://ehr.example.vn/fhir/Patient/123`) also finds the relative references
    /// (`Patient/123`) resources hold, in chains and `_has` too.
    pub fn localise(&mut self, base: &str) {
        fn walk(filters: &mut [Filter], prefix: &str) {
            for f in filters {
                match f {
                    Filter::Any { conds, .. } | Filter::None { conds, .. } => {
                        for c in conds {
                            if let Cond::Reference(targets) = c {
                                let local: Vec<String> = targets
                                    .iter()
                                    .filter_map(|t| t.strip_prefix(prefix))
                                    .filter_map(crate::fhir::search::extract::local_target)
                                    .collect();
                                targets.extend(local);
                            }
                        }
                    }
                    Filter::Chain { filters, .. } | Filter::Has { filters, .. } => {
                        walk(filters, prefix)
                    }
                    _ => {}
                }
            }
        }
        let prefix = format!("{}/", base.trim_end_matches('/'));
        walk(&mut self.filters, &prefix);
    }
}

/// Parses a search of `ty` (None: all types, with `_type`). Problems refuse the search when
/// `strict`, else they are left out and listed in `ignored`.
pub fn parse(
    ty: Option<&'static str>,
    pairs: &[(String, String)],
    strict: bool,
) -> Result<SearchSpec> {
    let reg = registry();
    let mut spec = SearchSpec {
        types: ty.map(|t| vec![t.to_string()]).unwrap_or_default(),
        filters: Vec::new(),
        count: DEFAULT_COUNT,
        after: None,
        before: None,
        sort: Vec::new(),
        sort_after: None,
        sort_before: None,
        total: Total::None,
        summary: Summary::False,
        elements: None,
        includes: Vec::new(),
        revincludes: Vec::new(),
        include_outside: None,
        used: Vec::new(),
        ignored: Vec::new(),
    };
    let mut problems: Vec<Issue> = Vec::new();
    // `_type` first: the other parameters are checked against the types it names.
    if ty.is_none() {
        for (k, v) in pairs.iter().filter(|(k, _)| k == "_type") {
            for t in split_or(v) {
                match R4.resource_type(&t) {
                    Some(t) => spec.types.push(t.to_string()),
                    None => problems.push(bad(k, format!("'{t}' is not a resource type"))),
                }
            }
            spec.used.push((k.clone(), v.clone()));
        }
    }
    for (k, v) in pairs {
        let k = k.as_str();
        if HTTP_PARAMS.contains(&k) || (ty.is_none() && k == "_type") {
            continue;
        }
        let result: std::result::Result<(), Issue> = (|| {
            match k {
                "_count" => {
                    let n = v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                        bad(
                            k,
                            format!("_count '{v}' is not a non-negative whole number"),
                        )
                    })?;
                    spec.count = n.min(MAX_COUNT);
                }
                "_after" | "_before" => {
                    let not_ours = || {
                        bad(
                            k,
                            format!("'{v}' is not a page position from a link of this server"),
                        )
                    };
                    match v.parse::<i64>() {
                        Ok(pk) if k == "_after" => spec.after = Some(pk),
                        Ok(pk) => spec.before = Some(pk),
                        Err(_) if k == "_after" => {
                            spec.sort_after = Some(decode_cursor(v).ok_or_else(not_ours)?)
                        }
                        Err(_) => spec.sort_before = Some(decode_cursor(v).ok_or_else(not_ours)?),
                    }
                    return Ok(());
                }
                "_sort" => {
                    let Some(t) = ty else {
                        return Err(bad(k, "_sort needs a resource type"));
                    };
                    for key in v.split(',').filter(|s| !s.is_empty()) {
                        let (desc, code) = match key.strip_prefix('-') {
                            Some(c) => (true, c),
                            None => (false, key),
                        };
                        let by = match code {
                            "_id" => SortBy::Id,
                            "_lastUpdated" => SortBy::LastUpdated,
                            _ => {
                                let p = reg.param(t, code).ok_or_else(|| unknown(t, code, k))?;
                                let table = table_of(p.ty)
                                    .filter(|_| p.expr.is_some())
                                    .ok_or_else(|| bad(k, format!("cannot sort by '{code}'")))?;
                                SortBy::Index {
                                    table,
                                    param: code.to_string(),
                                }
                            }
                        };
                        spec.sort.push(SortKey { by, desc });
                    }
                }
                "_total" => {
                    spec.total = match v.as_str() {
                        "none" => Total::None,
                        "estimate" => Total::Estimate,
                        "accurate" => Total::Accurate,
                        _ => return Err(bad(k, "_total takes none, estimate or accurate")),
                    }
                }
                "_summary" => {
                    spec.summary = match v.as_str() {
                        "true" => Summary::True,
                        "text" => Summary::Text,
                        "data" => Summary::Data,
                        "count" => Summary::Count,
                        "false" => Summary::False,
                        _ => return Err(bad(k, "_summary takes true, text, data, count or false")),
                    }
                }
                "_elements" => {
                    spec.elements =
                        Some(split_or(v).into_iter().filter(|e| !e.is_empty()).collect());
                }
                "_include" | "_include:iterate" | "_include:recurse" => {
                    spec.includes
                        .push(parse_include(ty, v, k, k != "_include")?);
                }
                "_revinclude" | "_revinclude:iterate" | "_revinclude:recurse" => {
                    spec.revincludes
                        .push(parse_include(ty, v, k, k != "_revinclude")?);
                }
                _ => {
                    let filter = match ty {
                        Some(t) => criterion(t, k, v)?,
                        None => {
                            // System level: only parameters every searched type has.
                            let types: Vec<String> = if spec.types.is_empty() {
                                vec!["Resource".into()]
                            } else {
                                spec.types.clone()
                            };
                            let mut f = None;
                            for t in &types {
                                let t = if t == "Resource" {
                                    "Patient"
                                } else {
                                    t.as_str()
                                };
                                f = Some(criterion(t, k, v)?);
                            }
                            match f {
                                Some(f) => f,
                                None => return Err(bad(k, "no type to search")),
                            }
                        }
                    };
                    spec.filters.push(filter);
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if k != "_after" && k != "_before" {
                    spec.used.push((k.to_string(), v.clone()));
                }
            }
            Err(issue) => problems.push(issue),
        }
    }
    if let Some((values, _)) = &spec.sort_after
        && values.len() != spec.sort.len()
    {
        spec.sort_after = None;
    }
    if let Some((values, _)) = &spec.sort_before
        && values.len() != spec.sort.len()
    {
        spec.sort_before = None;
    }
    if !problems.is_empty() {
        if strict {
            return Err(Error::Invalid(problems));
        }
        spec.ignored = problems.into_iter().map(|i| i.warning()).collect();
    }
    Ok(spec)
}
