//! Transaction and batch Bundles (R4 §3.1.0.11).
//!
//! A transaction is all or nothing: every entry runs inside one database transaction, in the
//! order the specification sets (DELETE, POST, PUT/PATCH, then GET), with `urn:uuid:` and other
//! fullUrls resolved to the ids the server assigns and every link to them rewritten. The first
//! failing entry rolls everything back and the OperationOutcome names it. A batch runs each entry
//! on its own and reports each entry's status.

use std::collections::{HashMap, HashSet};

use base64::Engine;
use serde_json::Value;

use super::bundle_out::{EntryOut, ResponseOut, bundle_json};
use super::condition::Condition;
use super::conformance::DEFINING_TYPES;
use super::datetime::now_millis;
use super::identity;
use super::interactions::{
    Change, Fhir, Gate, Patch, Stored, Written, check_id, citizen_holder, conditional_match,
    delete_in, new_id, patch_in, prepare, retry, update_in,
};
use super::links::{LinkKind, for_each_link};
use super::outcome::{self, Issue};
use super::schema::R4;
use crate::error::{Error, Result};
use crate::store::{Method, NewVersion, Session};

/// How the response should look.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    /// The server's FHIR base URL, for fullUrls.
    pub base: String,
    /// `Prefer: return=representation`: include each written resource in its entry.
    pub representation: bool,
    /// An import mark to set in the transaction's own database transaction (see
    /// `fhir::import`): the transaction fails if it is set already, so a Bundle goes in once.
    pub once: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

#[derive(Debug, Clone)]
enum Target {
    Type(&'static str),
    Instance(&'static str, String),
    Version(&'static str, String, i64),
    /// `Type?criteria`: a conditional write or a search.
    Query(&'static str, String),
}

impl Target {
    fn ty(&self) -> &'static str {
        match self {
            Target::Type(t)
            | Target::Instance(t, _)
            | Target::Version(t, _, _)
            | Target::Query(t, _) => t,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    index: usize,
    verb: Verb,
    url: String,
    target: Target,
    full_url: Option<String>,
    resource: Option<Value>,
    if_match: Option<i64>,
    if_none_exist: Option<Condition>,
}

/// Processes a transaction or batch Bundle; returns the response Bundle as FHIR JSON.
/// `reparse` gives the request's Bundle afresh: a transaction that lost a race to a concurrent
/// write is retried from it (links rewritten in the first attempt must not leak into the next).
pub async fn process<F>(
    fhir: &Fhir,
    bundle: Value,
    reparse: F,
    opts: &BundleOptions,
) -> Result<String>
where
    F: Fn() -> Result<Value>,
{
    let kind = bundle
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match kind.as_str() {
        "transaction" => {
            let entries = parse_entries(bundle, &opts.base)
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            check_unique(&entries)?;
            // Profiles and identifier rules, before the database is touched.
            let mut defines = false;
            for e in &entries {
                if let (Verb::Post | Verb::Put, Some(r)) = (e.verb, &e.resource) {
                    let ty = e.target.ty();
                    defines |= DEFINING_TYPES.contains(&ty);
                    fhir.admit(ty, r, &at(e.index, ".resource"))
                        .map_err(|err| entry_error(e.index, err))?;
                }
            }
            let mut first = Some(entries);
            let out = retry(|| {
                let entries = match first.take() {
                    Some(e) => Ok(e),
                    None => {
                        reparse().and_then(|b| parse_entries(b, &opts.base).into_iter().collect())
                    }
                };
                let opts = opts.clone();
                let fhir = fhir.clone();
                async move {
                    let mut entries: Vec<Entry> = entries?;
                    let now = now_millis();
                    // Plain transactions (the usual ingest) are planned here, off the writer.
                    let planned = if plannable_offline(&mut entries) {
                        plan(&mut entries, &mut Lookup::Offline, &opts, now)?
                    } else {
                        None
                    };
                    fhir.store()
                        .clone()
                        .write(move |s| run_transaction(s, &fhir, entries, planned, &opts, now))
                        .await
                }
            })
            .await?;
            if defines {
                fhir.conformance().load_stored(fhir.store()).await?;
            }
            Ok(bundle_json("transaction-response", None, &[], &out))
        }
        "batch" => {
            let out = batch(fhir, parse_entries(bundle, &opts.base), opts).await;
            Ok(bundle_json("batch-response", None, &[], &out))
        }
        other => Err(Error::invalid_at(
            "invalid",
            format!(
                "a Bundle posted to the base URL must be a transaction or a batch, not '{other}'"
            ),
            "Bundle.type",
        )),
    }
}

fn at(index: usize, rest: &str) -> String {
    format!("Bundle.entry[{index}]{rest}")
}

fn entry_error(index: usize, e: Error) -> Error {
    match e {
        Error::Entry { .. } => e,
        e => Error::Entry {
            index,
            source: Box::new(e),
        },
    }
}

/// Reads each entry's request, taking its resource. An entry that cannot be understood is an
/// error at its index.
fn parse_entries(bundle: Value, base: &str) -> Vec<Result<Entry>> {
    let items = match bundle {
        Value::Object(mut o) => match o.remove("entry") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, e)| parse_entry(i, e, base))
        .collect()
}

fn parse_entry(index: usize, mut e: Value, base: &str) -> Result<Entry> {
    let resource = e.as_object_mut().and_then(|o| o.remove("resource"));
    let request = e.get("request").ok_or_else(|| {
        Error::invalid_at(
            "required",
            "the entry has no request",
            at(index, ".request"),
        )
    })?;
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let verb = match method {
        "GET" => Verb::Get,
        "HEAD" => Verb::Head,
        "POST" => Verb::Post,
        "PUT" => Verb::Put,
        "PATCH" => Verb::Patch,
        "DELETE" => Verb::Delete,
        _ => {
            return Err(Error::invalid_at(
                "value",
                format!("unknown method '{method}'"),
                at(index, ".request.method"),
            ));
        }
    };
    let raw_url = request.get("url").and_then(Value::as_str).unwrap_or("");
    let url = raw_url
        .strip_prefix(base)
        .map(|u| u.trim_start_matches('/'))
        .unwrap_or(raw_url)
        .to_string();
    let target = parse_target(&url, verb)
        .map_err(|m| Error::invalid_at("value", m, at(index, ".request.url")))?;
    let needs_resource = matches!(verb, Verb::Post | Verb::Put | Verb::Patch);
    match (&resource, needs_resource) {
        (None, true) => {
            return Err(Error::invalid_at(
                "required",
                format!("a {method} entry needs a resource"),
                at(index, ".resource"),
            ));
        }
        (Some(r), true) if verb != Verb::Patch => {
            let rt = r.get("resourceType").and_then(Value::as_str).unwrap_or("");
            if rt != target.ty() {
                return Err(Error::invalid_at(
                    "invalid",
                    format!(
                        "the resource is a {rt} but the request URL is for {}",
                        target.ty()
                    ),
                    at(index, ".resource"),
                ));
            }
        }
        _ => {}
    }
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(s) => Some(parse_etag(s).ok_or_else(|| {
            Error::invalid_at(
                "value",
                format!("ifMatch '{s}' is not an ETag like W/\"1\""),
                at(index, ".request.ifMatch"),
            )
        })?),
        None => None,
    };
    let if_none_exist = match request.get("ifNoneExist").and_then(Value::as_str) {
        Some(q) => {
            Some(Condition::parse(q.trim_start_matches('?')).map_err(|e| entry_error(index, e))?)
        }
        None => None,
    };
    Ok(Entry {
        index,
        verb,
        url,
        target,
        full_url: e.get("fullUrl").and_then(Value::as_str).map(str::to_string),
        resource,
        if_match,
        if_none_exist,
    })
}

/// Parses `W/"3"` or `"3"` (or a bare `3`) into a version number.
pub fn parse_etag(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    let s = s.trim_matches('"');
    s.parse().ok().filter(|v| *v > 0)
}

fn parse_target(url: &str, verb: Verb) -> std::result::Result<Target, String> {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let ty_name = parts.first().copied().unwrap_or("");
    let ty = R4
        .resource_type(ty_name)
        .ok_or_else(|| format!("'{ty_name}' in '{url}' is not a resource type"))?;
    let target = match (parts.as_slice(), query) {
        ([_], Some(q)) => Target::Query(ty, q.to_string()),
        ([_], None) => Target::Type(ty),
        ([_, id], _) => Target::Instance(ty, id.to_string()),
        ([_, id, "_history", v], _) => Target::Version(
            ty,
            id.to_string(),
            v.parse()
                .map_err(|_| format!("'{v}' is not a version number"))?,
        ),
        _ => return Err(format!("cannot process the URL '{url}'")),
    };
    let ok = match verb {
        Verb::Post => matches!(target, Target::Type(_) | Target::Query(..)),
        Verb::Put | Verb::Patch | Verb::Delete => {
            matches!(target, Target::Instance(..) | Target::Query(..))
        }
        Verb::Get | Verb::Head => true,
    };
    if ok {
        Ok(target)
    } else {
        Err(format!("{verb:?} cannot be applied to '{url}'"))
    }
}

/// R4 §3.1.0.11.2: a resource may be the subject of only one entry of a transaction.
fn check_unique(entries: &[Entry]) -> Result<()> {
    let mut seen = HashSet::new();
    for e in entries {
        if let (Verb::Put | Verb::Patch | Verb::Delete, Target::Instance(t, id)) =
            (e.verb, &e.target)
            && !seen.insert((*t, id.as_str()))
        {
            return Err(Error::invalid_at(
                "duplicate",
                format!("{t}/{id} is the subject of more than one entry of the transaction"),
                at(e.index, ".request.url"),
            ));
        }
    }
    Ok(())
}

/// Where a transaction's plan looks up what it needs: nowhere yet (before the database
/// transaction, so the CPU work of rewriting and serialising runs outside the writer), or the
/// database (inside it, for conditional creates, updates and references).
enum Lookup<'a, 'c> {
    Offline,
    Db(&'a mut Session<'c>, Option<&'a dyn Gate>),
}

impl Lookup<'_, '_> {
    /// Runs a query, or None when offline (the plan then waits for the database).
    fn need<T>(&mut self, f: impl FnOnce(&mut Session<'_>) -> Result<T>) -> Result<Option<T>> {
        self.need_gated(|s, _| f(s))
    }

    /// [`Lookup::need`] for a query that hides what the access policy's caller may not see.
    fn need_gated<T>(
        &mut self,
        f: impl FnOnce(&mut Session<'_>, Option<&dyn Gate>) -> Result<T>,
    ) -> Result<Option<T>> {
        match self {
            Lookup::Offline => Ok(None),
            Lookup::Db(s, g) => f(s, *g).map(Some),
        }
    }
}

/// A new resource of a transaction, ready to insert.
struct NewResource {
    index: usize,
    ty: &'static str,
    id: String,
    body: String,
    tokens: crate::store::IndexRows,
}

/// What a transaction writes, worked out before the writes: the id of every POST and PUT entry,
/// links rewritten, new resources serialised, and the answers of conditional creates that
/// matched an existing resource.
struct Plan {
    out: Vec<Option<EntryOut>>,
    put_ids: HashMap<usize, String>,
    creates: Vec<NewResource>,
    /// What conditional creates found instead of creating.
    found: Vec<Stored>,
}

/// Plans a transaction; None when it needs the database and `look` is offline.
fn plan(
    entries: &mut [Entry],
    look: &mut Lookup<'_, '_>,
    opts: &BundleOptions,
    now: i64,
) -> Result<Option<Plan>> {
    // Every lock the plan takes is taken first, in key order: two transactions that test the
    // same conditions (or claim the same citizens) in different orders would otherwise deadlock.
    let mut keys = Vec::new();
    // The index rows of conditionally created Patients, for their citizen IDs.
    let mut patients: HashMap<usize, crate::store::IndexRows> = HashMap::new();
    for e in entries.iter() {
        let ty = e.target.ty();
        match (&e.verb, &e.if_none_exist, &e.target) {
            (Verb::Post, Some(c), _) => {
                keys.push(c.lock_key(ty));
                if let (true, Some(r)) = (ty == "Patient", e.resource.as_ref()) {
                    let rows = super::search::extract::index_rows(ty, r);
                    keys.extend(
                        identity::claims(ty, &rows)
                            .into_iter()
                            .map(identity::lock_key),
                    );
                    patients.insert(e.index, rows);
                }
            }
            (Verb::Put | Verb::Patch, _, Target::Query(_, q)) => {
                if let Ok(c) = Condition::parse(q) {
                    keys.push(c.lock_key(ty));
                }
            }
            _ => {}
        }
    }
    if !keys.is_empty() && look.need(|s| Ok(s.lock_keys(&mut keys)?))?.is_none() {
        return Ok(None);
    }
    let mut out: Vec<Option<EntryOut>> = (0..entries.len()).map(|_| None).collect();
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut creates: Vec<(usize, String)> = Vec::new();
    let mut found_existing: Vec<Stored> = Vec::new();
    for e in entries.iter_mut().filter(|e| e.verb == Verb::Post) {
        let ty = e.target.ty();
        if let Some(c) = &e.if_none_exist {
            // The resource that meets the condition or, one citizen one record, the record the
            // person already has.
            let rows = patients.get(&e.index);
            let Some(found) = look
                .need_gated(|s, gate| match conditional_match(s, gate, ty, c)? {
                    Some(m) => Ok(Some(m)),
                    None => match rows {
                        Some(rows) => citizen_holder(s, ty, rows),
                        None => Ok(None),
                    },
                })
                .map_err(|err| entry_error(e.index, err))?
            else {
                return Ok(None);
            };
            if let Some(existing) = found {
                map_full_url(&mut ids, e.full_url.as_deref(), ty, &existing.id);
                found_existing.push(existing.clone());
                out[e.index] = Some(written_entry(
                    &Written {
                        stored: existing,
                        created: false,
                    },
                    opts,
                    true,
                ));
                e.resource = None;
                continue;
            }
        }
        let id = new_id();
        map_full_url(&mut ids, e.full_url.as_deref(), ty, &id);
        creates.push((e.index, id));
    }
    let mut put_ids: HashMap<usize, String> = HashMap::new();
    for e in entries
        .iter()
        .filter(|e| e.verb == Verb::Put || e.verb == Verb::Patch)
    {
        let ty = e.target.ty();
        let id = match &e.target {
            Target::Instance(_, id) => id.clone(),
            Target::Query(_, q) => {
                let c = Condition::parse(q).map_err(|err| entry_error(e.index, err))?;
                // What the caller may not see is absent, as in a plain conditional update.
                let Some(found) = look
                    .need_gated(|s, gate| {
                        let ids = c.matches(s, ty, 2)?;
                        super::interactions::visible_matches(gate, s, ty, ids)
                    })
                    .map_err(|err| entry_error(e.index, err))?
                else {
                    return Ok(None);
                };
                match found.as_slice() {
                    [] if e.verb == Verb::Put => e
                        .resource
                        .as_ref()
                        .and_then(|r| r.get("id"))
                        .and_then(Value::as_str)
                        .map_or_else(new_id, str::to_string),
                    [one] => one.clone(),
                    [] => {
                        return Err(entry_error(
                            e.index,
                            Error::NotFound(format!("no {ty} meets '{q}'")),
                        ));
                    }
                    _ => {
                        return Err(entry_error(
                            e.index,
                            Error::PreconditionFailed(format!("more than one {ty} meets '{q}'")),
                        ));
                    }
                }
            }
            _ => continue,
        };
        map_full_url(&mut ids, e.full_url.as_deref(), ty, &id);
        put_ids.insert(e.index, id);
    }
    for e in entries
        .iter_mut()
        .filter(|e| matches!(e.verb, Verb::Post | Verb::Put))
    {
        if let Some(r) = e.resource.as_mut()
            && !rewrite_links(look, r, &ids).map_err(|err| entry_error(e.index, err))?
        {
            return Ok(None);
        }
    }
    let mut prepared = Vec::with_capacity(creates.len());
    for (index, id) in creates {
        let e = &mut entries[index];
        let ty = e.target.ty();
        let value = e.resource.take().unwrap_or(Value::Null);
        let (body, tokens) = prepare(value, ty, &id, 1, now, &at(index, ".resource"))
            .map_err(|err| entry_error(index, err))?;
        prepared.push(NewResource {
            index,
            ty,
            id,
            body,
            tokens,
        });
    }
    Ok(Some(Plan {
        out,
        put_ids,
        creates: prepared,
        found: found_existing,
    }))
}

/// Whether a transaction can be planned before the database: no conditional interactions and
/// no conditional references. (Checked up front: a plan abandoned half-way would leave links
/// rewritten to ids that the second plan does not use.)
fn plannable_offline(entries: &mut [Entry]) -> bool {
    entries.iter_mut().all(|e| {
        if matches!(e.verb, Verb::Get | Verb::Head) {
            return true;
        }
        if e.if_none_exist.is_some() || matches!(e.target, Target::Query(..)) {
            return false;
        }
        let mut conditional = false;
        if let Some(r) = e.resource.as_mut() {
            for_each_link(r, &mut |kind, link| {
                conditional |= kind == LinkKind::Reference && is_conditional_reference(link);
            });
        }
        !conditional
    })
}

fn run_transaction(
    s: &mut Session<'_>,
    fhir: &Fhir,
    mut entries: Vec<Entry>,
    planned: Option<Plan>,
    opts: &BundleOptions,
    now: i64,
) -> Result<Vec<EntryOut>> {
    if let Some(key) = &opts.once
        && !s.mark(key, now)?
    {
        return Err(Error::Conflict(
            "this Bundle has been imported already".into(),
        ));
    }
    // 1. DELETE.
    let mut deleted = Vec::new();
    for e in entries.iter().filter(|e| e.verb == Verb::Delete) {
        deleted.push((
            e.index,
            delete_entry(s, fhir.gate(), e, now).map_err(|err| entry_error(e.index, err))?,
        ));
    }
    // 2. Ids, links and new resources, seeing the deletes.
    let plan = match planned {
        Some(p) => p,
        None => match plan(&mut entries, &mut Lookup::Db(s, fhir.gate()), opts, now)? {
            Some(p) => p,
            None => {
                return Err(Error::invalid(
                    "exception",
                    "the transaction could not be planned",
                ));
            }
        },
    };
    let Plan {
        mut out,
        put_ids,
        creates,
        found,
    } = plan;
    // What the access policy is asked about once everything is written.
    let mut changed: Vec<Written> = found
        .into_iter()
        .map(|stored| Written {
            stored,
            created: false,
        })
        .collect();
    for (index, r) in deleted {
        out[index] = Some(r);
    }
    // 3. POST: one multi-row insert for all creates, none of them a second record of a citizen.
    let claims: Vec<_> = creates
        .iter()
        .map(|c| identity::Claim {
            ty: c.ty,
            id: &c.id,
            rows: &c.tokens,
            body: &c.body,
            entry: Some(c.index),
            settled: &[],
        })
        .collect();
    if let Some(h) = identity::holders(s, &claims)? {
        let index = creates[h.claim].index;
        return Err(entry_error(
            index,
            identity::duplicate(&claims[h.claim], &h),
        ));
    }
    drop(claims);
    let txid = s.txid();
    let rows: Vec<_> = creates
        .iter()
        .map(|c| {
            let v = NewVersion {
                res_type: c.ty,
                res_id: &c.id,
                version: 1,
                is_current: true,
                deleted: false,
                method: Method::Create as i16,
                txid,
                last_updated: now,
                body: &c.body,
            };
            (v, c.tokens.clone())
        })
        .collect();
    s.insert(&rows)?;
    drop(rows);
    for c in creates {
        let stored = Stored {
            pk: 0,
            ty: c.ty.to_string(),
            id: c.id,
            version: 1,
            last_updated: now,
            deleted: false,
            method: Method::Create,
            body: c.body,
        };
        let w = Written {
            stored,
            created: true,
        };
        out[c.index] = Some(written_entry(&w, opts, false));
        if fhir.gate().is_some() {
            changed.push(w);
        }
    }

    // 5. PUT and PATCH.
    for e in entries
        .iter_mut()
        .filter(|e| matches!(e.verb, Verb::Put | Verb::Patch))
    {
        let ty = e.target.ty();
        let Some(id) = put_ids.get(&e.index).cloned() else {
            continue;
        };
        let value = e.resource.take().unwrap_or(Value::Null);
        if let Some(g) = fhir.gate() {
            g.before_change(s, ty, &id)
                .map_err(|err| entry_error(e.index, err))?;
        }
        let written = match e.verb {
            Verb::Put => put_entry(s, ty, &id, value, e.if_match, now, e.index),
            _ => json_patch_of(&value, e.index)
                .and_then(|p| patch_in(s, fhir, ty, &id, &p, e.if_match, now)),
        }
        .map_err(|err| entry_error(e.index, err))?;
        out[e.index] = Some(written_entry(&written, opts, false));
        if fhir.gate().is_some() {
            changed.push(written);
        }
    }
    if let Some(g) = fhir.gate() {
        let changes: Vec<Change<'_>> = changed
            .iter()
            .filter(|w| !w.stored.deleted)
            .map(|w| Change {
                ty: &w.stored.ty,
                id: &w.stored.id,
                body: &w.stored.body,
                created: w.created,
            })
            .collect();
        g.after_write(s, &changes)?;
    }

    // 6. GET and HEAD, seeing the writes above.
    for e in entries
        .iter()
        .filter(|e| matches!(e.verb, Verb::Get | Verb::Head))
    {
        out[e.index] = Some(read_entry(s, e, &opts.base).map_err(|err| entry_error(e.index, err))?);
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}

#[allow(clippy::too_many_arguments)]
fn put_entry(
    s: &mut Session<'_>,
    ty: &str,
    id: &str,
    mut value: Value,
    if_match: Option<i64>,
    now: i64,
    index: usize,
) -> Result<Written> {
    match value.get("id").and_then(Value::as_str) {
        Some(b) if b != id => {
            return Err(Error::invalid_at(
                "invalid",
                format!("the resource's id '{b}' does not match the id in the request URL '{id}'"),
                at(index, ".resource.id"),
            ));
        }
        Some(_) => {}
        None => {
            if let Value::Object(o) = &mut value {
                o.insert("id".into(), Value::String(id.to_string()));
            }
        }
    }
    check_id(id)?;
    update_in(s, ty, id, value, if_match, Method::Update, now)
}

/// A PATCH entry carries a FHIRPath Patch (a Parameters resource) or its JSON Patch in a
/// Binary (R4 §3.1.0.11: "the resource is a Binary").
fn json_patch_of(resource: &Value, index: usize) -> Result<Patch> {
    let bad = |m: &str| Error::invalid_at("invalid", m.to_string(), at(index, ".resource"));
    match resource.get("resourceType").and_then(Value::as_str) {
        Some("Parameters") => return Ok(Patch::FhirPath(resource.clone())),
        Some("Binary") => {}
        _ => {
            return Err(bad(
                "a PATCH entry's resource must be a Parameters (FHIRPath Patch) or a Binary holding a JSON Patch",
            ));
        }
    }
    let data = resource
        .get("data")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("the Binary has no data"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.split_whitespace().collect::<String>())
        .map_err(|_| bad("the Binary's data is not base64"))?;
    serde_json::from_slice(&bytes)
        .map(Patch::Json)
        .map_err(|e| bad(&format!("the Binary does not hold a JSON Patch: {e}")))
}

fn delete_entry(
    s: &mut Session<'_>,
    gate: Option<&dyn Gate>,
    e: &Entry,
    now: i64,
) -> Result<EntryOut> {
    let ty = e.target.ty();
    let delete = |s: &mut Session<'_>, id: &str| {
        if let Some(g) = gate {
            g.before_change(s, ty, id)?;
        }
        delete_in(s, ty, id, now)
    };
    let deleted = match &e.target {
        Target::Instance(_, id) => delete(s, id)?,
        Target::Query(_, q) => {
            let c = Condition::parse(q)?;
            let ids = c.matches(s, ty, 2)?;
            match super::interactions::visible_matches(gate, s, ty, ids)?.as_slice() {
                [] => None,
                [one] => delete(s, one)?,
                _ => {
                    return Err(Error::PreconditionFailed(format!(
                        "more than one {ty} meets '{q}'"
                    )));
                }
            }
        }
        _ => {
            return Err(Error::invalid(
                "invalid",
                "DELETE needs Type/id or Type?criteria",
            ));
        }
    };
    let response = match deleted {
        Some(d) => ResponseOut {
            status: "204 No Content".into(),
            etag: Some(format!("W/\"{}\"", d.version)),
            last_modified: Some(d.last_updated),
            ..Default::default()
        },
        None => ResponseOut {
            status: "204 No Content".into(),
            ..Default::default()
        },
    };
    Ok(EntryOut {
        response: Some(response),
        ..Default::default()
    })
}

fn read_entry(s: &mut Session<'_>, e: &Entry, base: &str) -> Result<EntryOut> {
    let resource_entry = |st: Stored| EntryOut {
        full_url: Some(format!("{base}/{}/{}", st.ty, st.id)),
        response: Some(ResponseOut {
            status: "200 OK".into(),
            etag: Some(format!("W/\"{}\"", st.version)),
            last_modified: Some(st.last_updated),
            ..Default::default()
        }),
        resource: (e.verb == Verb::Get).then_some(st.body),
        ..Default::default()
    };
    match &e.target {
        Target::Instance(ty, id) => match s.current(ty, id)? {
            Some(r) if r.deleted => Err(Error::Gone(format!("{ty}/{id} was deleted"))),
            Some(r) => Ok(resource_entry(r.into())),
            None => Err(Error::NotFound(format!("{ty}/{id} is not known"))),
        },
        Target::Version(ty, id, v) => match s.version(ty, id, *v)? {
            Some(r) if r.deleted => Err(Error::Gone(format!(
                "version {v} of {ty}/{id} is a deletion"
            ))),
            Some(r) => Ok(resource_entry(r.into())),
            None => Err(Error::NotFound(format!(
                "version {v} of {ty}/{id} is not known"
            ))),
        },
        Target::Query(ty, q) => {
            let c = Condition::parse(q)?;
            let ids = c.matches(s, ty, 1000)?;
            let mut found = Vec::new();
            for id in ids {
                if let Some(r) = s.current(ty, &id)? {
                    found.push(EntryOut {
                        full_url: Some(format!("{base}/{ty}/{id}")),
                        resource: Some(r.body),
                        search_mode: Some("match"),
                        ..Default::default()
                    });
                }
            }
            let json = bundle_json("searchset", Some(found.len() as i64), &[], &found);
            Ok(EntryOut {
                resource: Some(json),
                response: Some(ResponseOut {
                    status: "200 OK".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }
        Target::Type(ty) => Err(Error::NotImplemented(format!(
            "searching {ty} without criteria arrives with search; give identifier or _id"
        ))),
    }
}

/// Records the id an entry's fullUrl stands for, in every form a link may use.
fn map_full_url(ids: &mut HashMap<String, String>, full_url: Option<&str>, ty: &str, id: &str) {
    let Some(full) = full_url else { return };
    let target = format!("{ty}/{id}");
    if !full.starts_with("urn:") {
        // An absolute URL `.../Type/oldid`: links may also use the relative `Type/oldid`.
        let parts: Vec<&str> = full.rsplitn(3, '/').collect();
        if parts.len() == 3 && parts[1] == ty {
            ids.insert(format!("{}/{}", parts[1], parts[0]), target.clone());
        }
    }
    ids.insert(full.to_string(), target);
}

/// Rewrites links to other entries, and resolves conditional references (`Patient?identifier=..`).
/// Returns false when a conditional reference needs the database and `look` is offline.
fn rewrite_links(
    look: &mut Lookup<'_, '_>,
    resource: &mut Value,
    ids: &HashMap<String, String>,
) -> Result<bool> {
    let mut conditional: Vec<String> = Vec::new();
    for_each_link(resource, &mut |kind, link| match kind {
        LinkKind::Reference | LinkKind::Uri => {
            if let Some(new) = ids.get(link.as_str()) {
                *link = new.clone();
            } else if kind == LinkKind::Reference && is_conditional_reference(link) {
                conditional.push(link.clone());
            }
        }
        LinkKind::Xhtml => {
            if link.contains("urn:uuid:") {
                for (from, to) in ids.iter().filter(|(k, _)| k.starts_with("urn:uuid:")) {
                    if link.contains(from.as_str()) {
                        *link = link.replace(from.as_str(), to);
                    }
                }
            }
        }
    });
    if conditional.is_empty() {
        return Ok(true);
    }
    let mut resolved: HashMap<String, String> = HashMap::new();
    for link in conditional {
        let (ty_name, q) = link.split_once('?').unwrap_or((&link, ""));
        let ty = R4.resource_type(ty_name).ok_or_else(|| {
            Error::invalid("invalid", format!("'{ty_name}' is not a resource type"))
        })?;
        let condition = Condition::parse(q)?;
        let Some(found) = look.need(|s| condition.matches(s, ty, 2))? else {
            return Ok(false);
        };
        match found.as_slice() {
            [one] => {
                resolved.insert(link.clone(), format!("{ty}/{one}"));
            }
            [] => {
                return Err(Error::PreconditionFailed(format!(
                    "the conditional reference '{link}' matches nothing"
                )));
            }
            _ => {
                return Err(Error::PreconditionFailed(format!(
                    "the conditional reference '{link}' matches more than one {ty}"
                )));
            }
        }
    }
    for_each_link(resource, &mut |kind, link| {
        if kind == LinkKind::Reference
            && let Some(new) = resolved.get(link.as_str())
        {
            *link = new.clone();
        }
    });
    Ok(true)
}

fn is_conditional_reference(link: &str) -> bool {
    match link.split_once('?') {
        Some((ty, _)) => !ty.contains('/') && R4.resource_type(ty).is_some(),
        None => false,
    }
}

fn written_entry(w: &Written, opts: &BundleOptions, existing: bool) -> EntryOut {
    let st = &w.stored;
    let status = if w.created && !existing {
        "201 Created"
    } else {
        "200 OK"
    };
    EntryOut {
        full_url: Some(format!("{}/{}/{}", opts.base, st.ty, st.id)),
        resource: opts.representation.then(|| st.body.clone()),
        response: Some(ResponseOut {
            status: status.into(),
            location: Some(format!("{}/{}/_history/{}", st.ty, st.id, st.version)),
            etag: Some(format!("W/\"{}\"", st.version)),
            last_modified: Some(st.last_updated),
            outcome: None,
        }),
        ..Default::default()
    }
}

/// A batch: each entry on its own, each with its own status; a failure fails only its entry.
async fn batch(fhir: &Fhir, entries: Vec<Result<Entry>>, opts: &BundleOptions) -> Vec<EntryOut> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let result = match entry {
            Ok(e) => batch_entry(fhir, e, opts).await,
            Err(err) => Err(err),
        };
        out.push(match result {
            Ok(o) => o,
            Err(err) => failed_entry(&err),
        });
    }
    out
}

async fn batch_entry(fhir: &Fhir, e: Entry, opts: &BundleOptions) -> Result<EntryOut> {
    let ty = e.target.ty();
    let index = e.index;
    match (e.verb, e.target.clone()) {
        (Verb::Post, _) => {
            let value = e.resource.unwrap_or(Value::Null);
            let w = fhir.create(ty, value, e.if_none_exist).await?;
            Ok(written_entry(&w, opts, !w.created))
        }
        (Verb::Put, Target::Instance(_, id)) => {
            let mut value = e.resource.unwrap_or(Value::Null);
            if value.get("id").is_none()
                && let Value::Object(o) = &mut value
            {
                o.insert("id".into(), Value::String(id.clone()));
            }
            Ok(written_entry(
                &fhir.update(ty, id, value, e.if_match).await?,
                opts,
                false,
            ))
        }
        (Verb::Put, Target::Query(_, q)) => {
            let w = fhir
                .conditional_update(
                    ty,
                    Condition::parse(&q)?,
                    e.resource.unwrap_or(Value::Null),
                    e.if_match,
                )
                .await?;
            Ok(written_entry(&w, opts, false))
        }
        (Verb::Patch, Target::Instance(_, id)) => {
            let p = json_patch_of(e.resource.as_ref().unwrap_or(&Value::Null), index)?;
            Ok(written_entry(
                &fhir.patch(ty, id, p, e.if_match).await?,
                opts,
                false,
            ))
        }
        (Verb::Delete, _) | (Verb::Get | Verb::Head, _) => {
            let base = opts.base.clone();
            let fhir = fhir.clone();
            fhir.store()
                .clone()
                .write(move |s| match e.verb {
                    Verb::Delete => delete_entry(s, fhir.gate(), &e, now_millis()),
                    _ => read_entry(s, &e, &base),
                })
                .await
        }
        _ => Err(Error::invalid(
            "invalid",
            format!("cannot process {:?} {}", e.verb, e.url),
        )),
    }
}

/// The response of a failed batch entry: its status and an OperationOutcome.
fn failed_entry(err: &Error) -> EntryOut {
    let (status, issues) = status_and_issues(err);
    EntryOut {
        response: Some(ResponseOut {
            status,
            outcome: Some(outcome::to_value(&issues)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The HTTP status line and issues of an error, as a Bundle entry reports them.
pub fn status_and_issues(err: &Error) -> (String, Vec<Issue>) {
    let code = err.root().status();
    let reason = match code {
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        422 => "Unprocessable Entity",
        401 => "Unauthorized",
        403 => "Forbidden",
        501 => "Not Implemented",
        _ => "Internal Server Error",
    };
    (format!("{code} {reason}"), err.issues())
}
