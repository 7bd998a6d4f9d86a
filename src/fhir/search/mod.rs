//! FHIR search (R4 §3.1.1): parameters as data, index rows extracted on write, and searches run
//! as one statement over the index tables with includes in a second.
//!
//! - `registry`: the SearchParameter definitions, compiled per resource type.
//! - `extract`: index rows of a resource.
//! - `normalize`: case and diacritics folding of strings.
//! - `query`: the URL's parameters parsed into criteria.

pub mod extract;
pub mod normalize;
pub mod query;
pub mod registry;

use serde_json::{Map, Value};

use crate::error::Result;
use crate::fhir::schema::R4;
use crate::store::{Found, SearchQuery, Store};

pub use query::{Include, SearchSpec, Summary, Total};

/// A page of search results.
#[derive(Debug, Default)]
pub struct SearchPage {
    pub matches: Vec<Found>,
    pub included: Vec<Found>,
    pub total: Option<i64>,
    /// `_after` of the next page, `_before` of the previous one.
    pub next: Option<String>,
    pub previous: Option<String>,
}

/// Runs a search: one page of matches, its total when asked for (or known for free), and the
/// resources `_include` and `_revinclude` add.
pub async fn run(store: &Store, spec: SearchSpec) -> Result<SearchPage> {
    store
        .read(move |s| {
            let count_only = spec.summary == Summary::Count || spec.count == 0;
            let q = SearchQuery {
                types: spec.types.clone(),
                filters: spec.filters.clone(),
                after: spec.after,
                before: spec.before,
                limit: spec.count + 1,
                sort: spec.sort.clone(),
                sort_after: spec.sort_after.clone(),
                sort_before: spec.sort_before.clone(),
            };
            let mut page = SearchPage::default();
            if !count_only {
                let mut rows = s.search(&q)?;
                let more = rows.len() as i64 > spec.count;
                let backward = (spec.before.is_some() && spec.after.is_none())
                    || (spec.sort_before.is_some() && spec.sort_after.is_none());
                if more {
                    if backward {
                        rows.remove(0);
                    } else {
                        rows.truncate(spec.count as usize);
                    }
                }
                let first_page = spec.after.is_none()
                    && spec.before.is_none()
                    && spec.sort_after.is_none()
                    && spec.sort_before.is_none();
                if !spec.sort.is_empty() {
                    // A sorted page's cursors carry the sort keys of its last (next) and
                    // first (previous) rows.
                    if (more || backward)
                        && let Some(last) = rows.last()
                    {
                        let values = s.sort_values(last.pk, &spec.sort)?;
                        page.next = Some(query::encode_cursor(&values, last.pk));
                    }
                    if ((backward && more) || (!backward && !first_page))
                        && let Some(first) = rows.first()
                    {
                        let values = s.sort_values(first.pk, &spec.sort)?;
                        page.previous = Some(query::encode_cursor(&values, first.pk));
                    }
                } else {
                    if more || backward {
                        page.next = rows.last().map(|r| r.pk.to_string());
                    }
                    if (backward && more) || (!backward && !first_page) {
                        page.previous = rows.first().map(|r| r.pk.to_string());
                    }
                }
                // A first page that holds every match tells the total for free.
                if first_page && !more {
                    page.total = Some(rows.len() as i64);
                }
                page.matches = rows;
            }
            if page.total.is_none() && (count_only || spec.total != Total::None) {
                page.total = Some(s.search_count(&SearchQuery {
                    after: None,
                    before: None,
                    sort: Vec::new(),
                    sort_after: None,
                    sort_before: None,
                    ..q
                })?);
            }
            if !page.matches.is_empty() {
                page.included = includes(s, &spec, &page.matches)?;
            }
            Ok(page)
        })
        .await
}

/// Narrows a search to the compartment of `owner_ty/id` (R4 §3.1.0.4.1): the resources its
/// CompartmentDefinition links to the owner, and the owner itself. For `Patient/$everything`
/// (no `_type`) the page also includes what those resources refer to, outside every patient's
/// compartment: practitioners, organizations, medications, never another patient.
pub fn within_compartment(
    spec: &mut SearchSpec,
    owner_ty: &str,
    id: &str,
    everything: bool,
) -> Result<()> {
    use crate::error::Error;
    use crate::fhir::compartment;
    if !compartment::is_compartment(owner_ty) {
        return Err(Error::invalid(
            "not-supported",
            format!(
                "{owner_ty} is not a compartment (R4 defines Patient, Encounter, RelatedPerson, Practitioner and Device)"
            ),
        ));
    }
    if !everything
        && let [t] = spec.types.as_slice()
        && !compartment::holds(owner_ty, t)
    {
        return Err(Error::invalid(
            "not-supported",
            format!("{t} resources are not in the {owner_ty} compartment"),
        ));
    }
    if everything && spec.types.is_empty() {
        spec.includes.push(Include {
            source: None,
            param: None,
            target: None,
            iterate: false,
        });
        spec.include_outside = Some("Patient");
    }
    let links = compartment::links(owner_ty, &spec.types);
    spec.filters.push(crate::store::Filter::Compartment {
        ty: owner_ty.to_string(),
        id: id.to_string(),
        links,
    });
    Ok(())
}

fn target_of(f: &Found) -> String {
    format!("{}/{}", f.res_type, f.res_id)
}

/// The resources `_include` and `_revinclude` add to a page (`:iterate` repeats them on what
/// was added, a few rounds at most).
fn includes(
    s: &mut crate::store::Session<'_>,
    spec: &SearchSpec,
    matches: &[Found],
) -> Result<Vec<Found>> {
    if spec.includes.is_empty() && spec.revincludes.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen: std::collections::HashSet<i64> = matches.iter().map(|m| m.pk).collect();
    let mut out: Vec<Found> = Vec::new();
    let mut frontier: Vec<Found> = matches.to_vec();
    for round in 0..=query::MAX_ITERATIONS {
        let mut added: Vec<Found> = Vec::new();
        for inc in spec.includes.iter().filter(|i| round == 0 || i.iterate) {
            let pks: Vec<i64> = frontier
                .iter()
                .filter(|f| inc.source.is_none_or(|t| t == f.res_type))
                .map(|f| f.pk)
                .collect();
            let mut targets: Vec<String> = s
                .references_from(&pks, inc.param.as_deref())?
                .into_iter()
                .map(|(_, t)| t)
                .filter(|t| match t.split_once('/') {
                    Some((ty, id)) => {
                        R4.resource_type(ty).is_some()
                            && !id.contains('/')
                            && inc.target.is_none_or(|want| want == ty)
                            && spec
                                .include_outside
                                .is_none_or(|c| !crate::fhir::compartment::holds(c, ty))
                    }
                    None => false,
                })
                .collect();
            targets.sort();
            targets.dedup();
            for f in s.fetch_targets(&targets)? {
                if seen.insert(f.pk) {
                    added.push(f);
                }
            }
        }
        for inc in spec.revincludes.iter().filter(|i| round == 0 || i.iterate) {
            let targets: Vec<String> = frontier.iter().map(target_of).collect();
            let sources: Vec<&str> = match inc.source {
                Some(t) => vec![t],
                None => Vec::new(),
            };
            for src in sources {
                for f in s.referencing(src, inc.param.as_deref(), &targets, query::MAX_INCLUDED)? {
                    if seen.insert(f.pk) {
                        added.push(f);
                    }
                }
            }
        }
        if added.is_empty() || out.len() as i64 >= query::MAX_INCLUDED {
            break;
        }
        out.extend(added.iter().cloned());
        frontier = added;
        if !spec
            .includes
            .iter()
            .chain(&spec.revincludes)
            .any(|i| i.iterate)
        {
            break;
        }
    }
    out.truncate(query::MAX_INCLUDED as usize);
    Ok(out)
}

/// The body of a match under `_summary` / `_elements` (R4 §3.1.1.8.4-5): None when it is
/// returned whole.
pub fn shape(body: &str, ty: &str, spec: &SearchSpec) -> Option<String> {
    shape_with(body, ty, spec.elements.as_deref(), spec.summary)
}

/// [`shape`] by `_elements` and `_summary` themselves (history takes `_elements` too).
pub fn shape_with(
    body: &str,
    ty: &str,
    elements: Option<&[String]>,
    summary: Summary,
) -> Option<String> {
    let keep: Box<dyn Fn(&str) -> bool> = match (elements, summary) {
        (Some(list), _) => {
            let names: Vec<String> = list
                .iter()
                .map(|e| e.strip_prefix(&format!("{ty}.")).unwrap_or(e).to_string())
                .collect();
            Box::new(move |k: &str| names.iter().any(|n| n == k))
        }
        (None, Summary::True) => {
            let def = R4.type_def(ty)?;
            Box::new(move |k: &str| def.elements.get(k).is_some_and(|e| e.summary))
        }
        (None, Summary::Text) => {
            let def = R4.type_def(ty)?;
            Box::new(move |k: &str| {
                k == "text" || def.required.iter().any(|(_, props)| props.contains(&k))
            })
        }
        (None, Summary::Data) => Box::new(|k: &str| k != "text"),
        _ => return None,
    };
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(body) else {
        return None;
    };
    let mut out = Map::new();
    for (k, v) in obj {
        let always = matches!(k.as_str(), "resourceType" | "id" | "meta");
        let base = k.strip_prefix('_').unwrap_or(&k);
        if always || keep(base) {
            out.insert(k, v);
        }
    }
    // R4 §3.1.1.8.4: a summarised resource is marked SUBSETTED.
    let meta = out
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = meta {
        let tags = m.entry("tag").or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(t) = tags {
            t.push(serde_json::json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED"
            }));
        }
    }
    serde_json::to_string(&Value::Object(out)).ok()
}

/// The `yba_meta` key holding the fingerprint of the definitions the index was written with.
pub const FINGERPRINT_KEY: &str = "search_params";

/// Whether the index rows were written under the current definitions (false: run `yba
/// reindex`). An empty database takes the current fingerprint.
pub async fn index_is_current(store: &Store) -> Result<bool> {
    let fp = store
        .read(|s| Ok::<_, crate::error::Error>((s.meta(FINGERPRINT_KEY)?, s.count_current()?)))
        .await?;
    match fp {
        (Some(fp), _) => Ok(fp == registry::registry().fingerprint),
        (None, 0) => {
            store
                .write(|s| {
                    Ok::<_, crate::error::Error>(
                        s.set_meta(FINGERPRINT_KEY, &registry::registry().fingerprint)?,
                    )
                })
                .await?;
            Ok(true)
        }
        (None, _) => Ok(false),
    }
}

/// Rebuilds every index row from the stored resources, in batches of one transaction each;
/// `progress` hears (done, total) after each batch. Safe to run beside a serving server: each
/// batch replaces the rows of its resources, and a resource updated meanwhile is re-indexed
/// by its own write.
pub async fn reindex(store: &Store, progress: &dyn Fn(u64, u64)) -> Result<u64> {
    const BATCH: i64 = 500;
    let total = store
        .read(|s| Ok::<_, crate::error::Error>(s.count_current()?))
        .await? as u64;
    let mut after = 0i64;
    let mut done = 0u64;
    loop {
        // Read and re-index in one transaction, so that a version retired meanwhile is never
        // given rows.
        let (last, n) = store
            .write(move |s| {
                let rows = s.current_after(after, BATCH)?;
                let mut batch = Vec::with_capacity(rows.len());
                for r in &rows {
                    s.drop_index_rows(r.pk)?;
                    let value: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
                    batch.push((
                        r.pk,
                        r.res_type.as_str(),
                        extract::index_rows(&r.res_type, &value),
                    ));
                }
                s.insert_index_rows(batch.iter().map(|(pk, ty, ix)| (*pk, *ty, ix)))?;
                Ok::<_, crate::error::Error>((rows.last().map(|r| r.pk), rows.len() as u64))
            })
            .await?;
        let Some(last) = last else { break };
        after = last;
        done += n;
        progress(done, total);
    }
    store
        .write(|s| {
            Ok::<_, crate::error::Error>(
                s.set_meta(FINGERPRINT_KEY, &registry::registry().fingerprint)?,
            )
        })
        .await?;
    Ok(done)
}

/// The server's own SearchParameter resources (current, not deleted).
pub async fn custom_params(store: &Store) -> Result<Vec<Value>> {
    store
        .read(|s| {
            let rows = s.search(&SearchQuery::unsorted(
                vec!["SearchParameter".into()],
                Vec::new(),
                10_000,
            ))?;
            Ok(rows
                .iter()
                .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
                .filter(|v| {
                    v.get("status").and_then(Value::as_str) != Some("retired")
                        && v.get("expression").is_some()
                })
                .collect())
        })
        .await
}

/// Puts the server's own SearchParameter resources in force beside the R4 definitions.
pub async fn load_custom_params(store: &Store) -> Result<usize> {
    let custom = custom_params(store).await?;
    registry::install(&custom)
        .map_err(|e| crate::error::Error::invalid("invalid", format!("search parameters: {e}")))?;
    Ok(custom.len())
}
