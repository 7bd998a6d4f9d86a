//! The search parameters the server knows, as data: the official R4 SearchParameter definitions
//! (`fhir-profiles/r4/search-parameters.json`, extracted by
//! `fhir-profiles/tools/extract_r4_search_params.py`), each FHIRPath expression compiled once per
//! resource type into the extraction plan that runs on every write.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use rustc_hash::FxHashMap;
use serde::Deserialize;

use crate::fhir::fhirpath::{self, Expr};
use crate::fhir::schema::R4;

static SEARCH_PARAMETERS_JSON: &str =
    include_str!("../../../fhir-profiles/r4/search-parameters.json");

/// The server's own built-in SearchParameters (`group-identifier` of e-prescriptions...).
static VN_SEARCH_PARAMETERS_JSON: &str =
    include_str!("../../../fhir-profiles/vn/search-parameters.json");

/// The built-in definitions followed by `custom` (which may replace them by URL).
fn with_builtins(custom: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut all: Vec<serde_json::Value> =
        serde_json::from_str(VN_SEARCH_PARAMETERS_JSON).unwrap_or_default();
    all.extend(custom.iter().cloned());
    all
}

/// The registry in force: the R4 definitions, plus the server's own SearchParameter resources
/// once [`install`]ed (at start, and by `$reindex` / `yba reindex`).
static CURRENT: LazyLock<RwLock<Arc<Registry>>> = LazyLock::new(|| {
    RwLock::new(Arc::new(
        Registry::load(SEARCH_PARAMETERS_JSON, &with_builtins(&[]))
            .expect("search-parameters.json loads"),
    ))
});

/// The registry in force.
pub fn registry() -> Arc<Registry> {
    match CURRENT.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Puts a registry in force: the R4 definitions plus `custom` SearchParameter resources.
pub fn install(custom: &[serde_json::Value]) -> Result<(), LoadError> {
    let reg = Registry::load(SEARCH_PARAMETERS_JSON, &with_builtins(custom))?;
    match CURRENT.write() {
        Ok(mut g) => *g = Arc::new(reg),
        Err(poisoned) => *poisoned.into_inner() = Arc::new(reg),
    }
    Ok(())
}

/// The type of a search parameter (R4 §3.1.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    fn parse(s: &str) -> Option<ParamType> {
        Some(match s {
            "number" => ParamType::Number,
            "date" => ParamType::Date,
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "composite" => ParamType::Composite,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            "special" => ParamType::Special,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }
}

/// One component of a composite parameter: the component parameter's code and type, and its
/// expression relative to the composite's element.
#[derive(Debug)]
pub struct Component {
    pub code: &'static str,
    pub ty: ParamType,
    pub expr: Expr,
}

/// A search parameter as it applies to one resource type.
#[derive(Debug)]
pub struct SearchParam {
    pub code: &'static str,
    pub url: &'static str,
    pub ty: ParamType,
    /// The expression, restricted to the branches for this resource type.
    pub expression: String,
    /// Compiled `expression`; None for parameters the server does not index (special ones).
    pub expr: Option<Expr>,
    /// Reference parameters: the resource types they may point at.
    pub targets: Vec<&'static str>,
    pub components: Vec<Component>,
    /// Derived row names: `code:text` (token display text), `code:identifier` (reference
    /// identifiers), `code:of-type` (identifier type and value).
    pub text_param: &'static str,
    pub identifier_param: &'static str,
    pub of_type_param: &'static str,
}

impl SearchParam {
    /// The same parameter read as another type (a composite's component): values are parsed
    /// and indexed by `ty`, under this parameter's code.
    pub fn with_type(&self, ty: ParamType) -> SearchParam {
        SearchParam {
            code: self.code,
            url: self.url,
            ty,
            expression: String::new(),
            expr: None,
            targets: self.targets.clone(),
            components: Vec::new(),
            text_param: self.text_param,
            identifier_param: self.identifier_param,
            of_type_param: self.of_type_param,
        }
    }
}

/// The parameters of one resource type.
#[derive(Debug, Default)]
pub struct TypeParams {
    pub by_code: FxHashMap<&'static str, Arc<SearchParam>>,
    /// The parameters indexed on write, in a fixed order.
    pub indexed: Vec<Arc<SearchParam>>,
}

/// All search parameters, by resource type.
#[derive(Debug, Default)]
pub struct Registry {
    types: FxHashMap<&'static str, TypeParams>,
    /// A fingerprint of the definitions: index rows written under another one are stale.
    pub fingerprint: String,
}

#[derive(Deserialize)]
struct RawFile {
    params: Vec<RawParam>,
}

#[derive(Deserialize)]
struct RawParam {
    url: String,
    code: String,
    base: Vec<String>,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<RawComponent>,
}

#[derive(Deserialize)]
struct RawComponent {
    #[serde(default)]
    code: Option<String>,
    /// A SearchParameter resource names its component by `definition` (a canonical URL).
    #[serde(default)]
    definition: Option<String>,
    expression: String,
}

/// Why the definitions could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("search parameter definitions are not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("search parameter {url}: {message}")]
    Param { url: String, message: String },
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Splits a FHIRPath union at its top-level `|` (outside parentheses, brackets and quotes).
fn split_union(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    let mut quote: Option<u8> = None;
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) => {
                if c == b'\\' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                b'\'' | b'`' | b'"' => quote = Some(c),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                b'|' if depth == 0 => {
                    out.push(expr[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    out.push(expr[start..].trim());
    out
}

/// The resource type a union branch starts from (`Patient` in `Patient.name` or
/// `(Observation.value as Quantity)`), if it starts from one.
fn branch_root(branch: &str) -> Option<&str> {
    let b = branch.trim_start_matches('(').trim_start();
    let end = b
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(b.len());
    let root = &b[..end];
    let is_type =
        root == "Resource" || root == "DomainResource" || R4.resource_type(root).is_some();
    is_type.then_some(root)
}

/// The branches of `expression` that apply to `ty`, joined again.
fn restrict(expression: &str, ty: &str) -> String {
    let branches: Vec<&str> = split_union(expression)
        .into_iter()
        .filter(|b| match branch_root(b) {
            Some(root) => root == ty || root == "Resource" || root == "DomainResource",
            None => true,
        })
        .collect();
    branches.join(" | ")
}

impl Registry {
    /// Loads and compiles definitions (the official file, or it extended with the server's own).
    pub fn load(json: &str, custom: &[serde_json::Value]) -> Result<Registry, LoadError> {
        let mut raw: RawFile = serde_json::from_str(json)?;
        let mut custom_text = String::new();
        for c in custom {
            // A SearchParameter resource has the same fields as the extracted table.
            let p: RawParam = serde_json::from_value(c.clone()).map_err(|e| LoadError::Param {
                url: c
                    .get("url")
                    .and_then(|u| u.as_str())
                    .unwrap_or("?")
                    .to_string(),
                message: format!("not a usable SearchParameter: {e}"),
            })?;
            custom_text.push_str(&c.to_string());
            // The server's own definition of a URL replaces the official one.
            raw.params.retain(|o| o.url != p.url);
            raw.params.push(p);
        }
        let by_url: HashMap<String, String> = raw
            .params
            .iter()
            .map(|p| (p.url.clone(), p.code.clone()))
            .collect();
        for p in &mut raw.params {
            for c in &mut p.component {
                if c.code.is_none()
                    && let Some(d) = &c.definition
                {
                    c.code = by_url.get(d).cloned();
                }
            }
        }
        let mut fp = crate::store::fnv1a(&[json.as_bytes(), custom_text.as_bytes()]) as u64;
        fp ^= 0x005e_a6c4_u64; // bump when extraction itself changes
        let mut reg = Registry {
            types: FxHashMap::default(),
            fingerprint: format!("{fp:016x}"),
        };
        let codes_by_base: HashMap<(&str, &str), &RawParam> = raw
            .params
            .iter()
            .flat_map(|p| {
                p.base
                    .iter()
                    .map(move |b| ((b.as_str(), p.code.as_str()), p))
            })
            .collect();
        for p in &raw.params {
            let Some(ty) = ParamType::parse(&p.ty) else {
                return Err(LoadError::Param {
                    url: p.url.clone(),
                    message: format!("unknown type {}", p.ty),
                });
            };
            let types: Vec<&'static str> = if p
                .base
                .iter()
                .any(|b| b == "Resource" || b == "DomainResource")
            {
                R4.resource_types()
                    .iter()
                    .copied()
                    .filter(|t| {
                        p.base.iter().any(|b| b == "Resource")
                            || !matches!(*t, "Binary" | "Bundle" | "Parameters")
                    })
                    .collect()
            } else {
                p.base.iter().filter_map(|b| R4.resource_type(b)).collect()
            };
            let code: &'static str = leak(p.code.clone());
            let url: &'static str = leak(p.url.clone());
            let targets: Vec<&'static str> = p
                .target
                .iter()
                .filter_map(|t| R4.resource_type(t))
                .collect();
            for t in types {
                let expression = p
                    .expression
                    .as_deref()
                    .map(|e| restrict(e, t))
                    .unwrap_or_default();
                let expr = if expression.is_empty() || ty == ParamType::Special {
                    None
                } else {
                    Some(fhirpath::parse(&expression).map_err(|e| LoadError::Param {
                        url: p.url.clone(),
                        message: format!("expression {expression:?} for {t}: {e}"),
                    })?)
                };
                let mut components = Vec::new();
                for c in &p.component {
                    let Some(ccode) = &c.code else { continue };
                    let cty = codes_by_base
                        .get(&(t, ccode.as_str()))
                        .and_then(|cp| ParamType::parse(&cp.ty))
                        .unwrap_or(ParamType::Token);
                    let cexpr = fhirpath::parse(&c.expression).map_err(|e| LoadError::Param {
                        url: p.url.clone(),
                        message: format!("component {:?}: {e}", c.expression),
                    })?;
                    components.push(Component {
                        code: leak(ccode.clone()),
                        ty: cty,
                        expr: cexpr,
                    });
                }
                let param = Arc::new(SearchParam {
                    code,
                    url,
                    ty,
                    expression,
                    expr,
                    targets: targets.clone(),
                    components,
                    text_param: leak(format!("{code}:text")),
                    identifier_param: leak(format!("{code}:identifier")),
                    of_type_param: leak(format!("{code}:of-type")),
                });
                let entry = reg.types.entry(t).or_default();
                // `_id` and `_lastUpdated` are columns of every version; no rows needed.
                if param.expr.is_some() && code != "_id" && code != "_lastUpdated" {
                    entry.indexed.push(param.clone());
                }
                entry.by_code.insert(code, param);
            }
        }
        Ok(reg)
    }

    /// The parameters of a resource type (empty for an unknown type).
    pub fn for_type(&self, ty: &str) -> Option<&TypeParams> {
        self.types.get(ty)
    }

    /// One parameter of a resource type.
    pub fn param(&self, ty: &str, code: &str) -> Option<&Arc<SearchParam>> {
        self.types.get(ty)?.by_code.get(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unions_split_at_top_level_only() {
        assert_eq!(
            split_union("Patient.name | Practitioner.name.where(use = 'a|b') | (X.y | X.z)"),
            vec![
                "Patient.name",
                "Practitioner.name.where(use = 'a|b')",
                "(X.y | X.z)"
            ]
        );
    }

    #[test]
    fn expressions_keep_only_the_types_branches() {
        assert_eq!(
            restrict(
                "AllergyIntolerance.patient | Observation.subject.where(resolve() is Patient)",
                "Observation"
            ),
            "Observation.subject.where(resolve() is Patient)"
        );
        assert_eq!(
            restrict("Resource.meta.tag", "Patient"),
            "Resource.meta.tag"
        );
    }

    #[test]
    fn every_definition_compiles() {
        let reg = registry();
        let patient = reg.for_type("Patient").unwrap();
        for code in [
            "name",
            "family",
            "birthdate",
            "identifier",
            "gender",
            "general-practitioner",
            "_id",
            "_lastUpdated",
        ] {
            assert!(patient.by_code.contains_key(code), "Patient?{code}");
        }
        let obs = reg.for_type("Observation").unwrap();
        let cvq = &obs.by_code["code-value-quantity"];
        assert_eq!(cvq.ty, ParamType::Composite);
        assert_eq!(cvq.components.len(), 2);
        assert_eq!(cvq.components[1].ty, ParamType::Quantity);
        assert_eq!(obs.by_code["subject"].ty, ParamType::Reference);
    }
}
