//! The FHIR R4 RESTful interactions (R4 §3.1.0) over the store, for every resource type alike.
//!
//! Writes run in one database transaction each, with optimistic locking: a version stops being
//! current only if it still is (`Session::retire`), so of two concurrent updates of the same
//! version exactly one wins. The loser is retried from a fresh read, unless the client pinned the
//! version with `If-Match`, in which case it gets 412.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::condition::Condition;
use super::conformance::{Conformance, DEFINING_TYPES, Rules};
use super::datetime::{format_instant, now_millis};
use super::format::to_stored_json;
use super::identity;
use super::outcome::Issue;
use super::validate;
use super::vn_rules::CITIZEN_ID;
use crate::error::{Error, Result};
use crate::store::{HistoryQuery, IndexRows, Method, NewVersion, Session, Store, VersionRow};

/// How many times a write that lost a race is retried before answering 409.
const MAX_ATTEMPTS: usize = 5;

/// One stored version of a resource.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The row of the version (0 when not read back from the store).
    pub pk: i64,
    pub ty: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    pub deleted: bool,
    pub method: Method,
    /// The FHIR JSON of the version (empty for a deletion).
    pub body: String,
}

impl From<VersionRow> for Stored {
    fn from(r: VersionRow) -> Self {
        Stored {
            pk: r.pk,
            ty: r.res_type,
            id: r.res_id,
            version: r.version,
            last_updated: r.last_updated,
            deleted: r.deleted,
            method: Method::from_code(r.method),
            body: r.body,
        }
    }
}

/// The result of a write: the version it produced and whether a resource came into being.
#[derive(Debug, Clone)]
pub struct Written {
    pub stored: Stored,
    /// True when the write created the resource (201), false when it updated it or, for a
    /// conditional create, found it already there (200).
    pub created: bool,
}

/// The access policy's say in writes (implemented by `auth::policy`). Both run inside the
/// write's database transaction, so they see what the transaction wrote so far, and a refusal
/// rolls it all back.
pub trait Gate: Send + Sync {
    /// Before `ty/id` is changed or deleted: may its current version be touched?
    fn before_change(&self, s: &mut Session<'_>, ty: &str, id: &str) -> Result<()>;
    /// After the writes of a transaction (all of them, so that an encounter written in the same
    /// Bundle counts): may these versions stand? `created` is false for a conditional create that
    /// found an existing resource (which the response would reveal).
    fn after_write(&self, s: &mut Session<'_>, written: &[Change<'_>]) -> Result<()>;
    /// Whether the caller may see `ty/id` at all: a conditional update or delete treats what
    /// they may not see as absent, so that its answer says nothing about it.
    fn sees(&self, s: &mut Session<'_>, ty: &str, id: &str) -> Result<bool>;
}

/// The matches of a conditional update or delete the caller may see (all without a gate).
pub(crate) fn visible_matches(
    gate: Option<&dyn Gate>,
    s: &mut Session<'_>,
    ty: &str,
    ids: Vec<String>,
) -> Result<Vec<String>> {
    let Some(g) = gate else { return Ok(ids) };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if g.sees(s, ty, &id)? {
            out.push(id);
        }
    }
    Ok(out)
}

/// A version a [`Gate`] is asked about.
pub struct Change<'a> {
    pub ty: &'a str,
    pub id: &'a str,
    pub body: &'a str,
    pub created: bool,
}

/// The FHIR record store: interactions over a [`Store`].
#[derive(Clone)]
pub struct Fhir {
    store: Store,
    conformance: Arc<Conformance>,
    gate: Option<Arc<dyn Gate>>,
}

impl Fhir {
    pub fn new(store: Store, rules: Rules) -> Fhir {
        Fhir {
            store,
            conformance: Conformance::new(rules),
            gate: None,
        }
    }

    /// This store as seen through an access policy: every write it makes is put to `gate`.
    pub fn gated(&self, gate: Arc<dyn Gate>) -> Fhir {
        Fhir {
            gate: Some(gate),
            ..self.clone()
        }
    }

    pub(crate) fn gate(&self) -> Option<&dyn Gate> {
        self.gate.as_deref()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The profiles and rules resources are checked against on write.
    pub fn conformance(&self) -> &Arc<Conformance> {
        &self.conformance
    }

    /// The checks a resource about to be written must pass beyond its R4 structure.
    pub(crate) fn admit(&self, ty: &str, value: &Value, at: &str) -> Result<()> {
        if ty == "Subscription" {
            super::subscription::check(value)?;
        }
        self.conformance.check_definition(ty, value, at)?;
        self.conformance.admit(ty, value, at)
    }

    /// After a write: a StructureDefinition, ValueSet or CodeSystem is in force at once.
    pub(crate) fn learn(&self, w: &Stored) {
        if DEFINING_TYPES.contains(&w.ty.as_str()) {
            self.conformance
                .learn(&w.ty, &w.id, (!w.deleted).then_some(w.body.as_str()));
        }
    }

    /// `read`: the current version; 404 if unknown, 410 if deleted.
    pub async fn read(&self, ty: &'static str, id: String) -> Result<Stored> {
        let row = self
            .store
            .read_point(move |s| Ok::<_, Error>(s.current(ty, &id)?))
            .await?;
        match row {
            Some(r) if r.deleted => Err(Error::Gone(format!("{ty}/{} was deleted", r.res_id))),
            Some(r) => Ok(r.into()),
            None => Err(not_found(ty)),
        }
    }

    /// `vread`: one version. A deletion's version answers 410.
    pub async fn vread(&self, ty: &'static str, id: String, version: i64) -> Result<Stored> {
        let row = self
            .store
            .read_point(move |s| Ok::<_, Error>(s.version(ty, &id, version)?))
            .await?;
        match row {
            Some(r) if r.deleted => Err(Error::Gone(format!(
                "version {version} of {ty}/{} is a deletion",
                r.res_id
            ))),
            Some(r) => Ok(r.into()),
            None => Err(Error::NotFound(format!(
                "{ty} version {version} is not known"
            ))),
        }
    }

    /// `create`: a new resource with a server-assigned id. With a condition (`If-None-Exist`),
    /// an existing match is returned instead (200), and more than one match is 412.
    pub async fn create(
        &self,
        ty: &'static str,
        value: Value,
        condition: Option<Condition>,
    ) -> Result<Written> {
        self.admit(ty, &value, ty)?;
        let id = new_id();
        let now = now_millis();
        let (body, tokens) = prepare(value, ty, &id, 1, now, ty)?;
        let gate = self.gate.clone();
        let written: Written = self
            .store
            .write(move |s| -> Result<Written> {
                let mut settled = Vec::new();
                if let Some(c) = &condition {
                    // One citizen, one record: a conditional create of a person who already
                    // has a record is given that record.
                    let existing = match conditional_match(s, gate.as_deref(), ty, c)? {
                        Some(e) => Some(e),
                        None => citizen_holder(s, ty, &tokens)?,
                    };
                    if let Some(existing) = existing {
                        let w = Written {
                            stored: existing,
                            created: false,
                        };
                        check_written(gate.as_deref(), s, &w)?;
                        return Ok(w);
                    }
                    // Checked just now, under their locks: the insert need not look again.
                    settled = identity::claims(ty, &tokens)
                        .into_iter()
                        .map(str::to_string)
                        .collect();
                }
                let stored = insert(s, ty, id, 1, Method::Create, now, body, tokens, &settled)?;
                let w = Written {
                    stored,
                    created: true,
                };
                check_written(gate.as_deref(), s, &w)?;
                Ok(w)
            })
            .await?;
        self.learn(&written.stored);
        Ok(written)
    }

    /// `update` (and create-on-update with a client id). `if_match` pins the expected version.
    pub async fn update(
        &self,
        ty: &'static str,
        id: String,
        value: Value,
        if_match: Option<i64>,
    ) -> Result<Written> {
        check_body_id(&value, ty, &id)?;
        self.admit(ty, &value, ty)?;
        let written = retry(|| {
            let (id, value, gate) = (id.clone(), value.clone(), self.gate.clone());
            self.store
                .write(move |s| gated_update(gate.as_deref(), s, ty, &id, value, if_match))
        })
        .await?;
        self.learn(&written.stored);
        Ok(written)
    }

    /// Conditional update: the resource that meets `condition` is updated; none → created
    /// (with the body's id, if it has one); more than one → 412.
    pub async fn conditional_update(
        &self,
        ty: &'static str,
        condition: Condition,
        value: Value,
        if_match: Option<i64>,
    ) -> Result<Written> {
        self.admit(ty, &value, ty)?;
        let written = retry(|| {
            let (condition, value, gate) = (condition.clone(), value.clone(), self.gate.clone());
            self.store.write(move |s| {
                s.lock_condition(condition.lock_key(ty))?;
                let ids = condition.matches(s, ty, 2)?;
                let ids = visible_matches(gate.as_deref(), s, ty, ids)?;
                let body_id = value.get("id").and_then(Value::as_str).map(str::to_string);
                let id = match (ids.as_slice(), body_id) {
                    ([], Some(b)) => b,
                    ([], None) => new_id(),
                    ([one], Some(b)) if *one != b => {
                        return Err(Error::invalid_at(
                            "invalid",
                            format!("the body's id '{b}' is not the id of the matching resource"),
                            format!("{ty}.id"),
                        ));
                    }
                    ([one], _) => one.clone(),
                    _ => {
                        return Err(Error::PreconditionFailed(format!(
                            "more than one {ty} meets the condition"
                        )));
                    }
                };
                gated_update(gate.as_deref(), s, ty, &id, value, if_match)
            })
        })
        .await?;
        self.learn(&written.stored);
        Ok(written)
    }

    /// `patch` with a JSON Patch document (RFC 6902) or a FHIRPath Patch.
    pub async fn patch(
        &self,
        ty: &'static str,
        id: String,
        patch: Patch,
        if_match: Option<i64>,
    ) -> Result<Written> {
        let written = retry(|| {
            let (id, patch, fhir) = (id.clone(), patch.clone(), self.clone());
            self.store.write(move |s| {
                if let Some(g) = fhir.gate() {
                    g.before_change(s, ty, &id)?;
                }
                let w = patch_in(s, &fhir, ty, &id, &patch, if_match, now_millis())?;
                check_written(fhir.gate(), s, &w)?;
                Ok(w)
            })
        })
        .await?;
        self.learn(&written.stored);
        Ok(written)
    }

    /// `delete`: adds a tombstone version. Deleting what is absent or already deleted is fine
    /// (R4 §3.1.0.7: idempotent); the result says whether a version was added.
    pub async fn delete(&self, ty: &'static str, id: String) -> Result<Option<Stored>> {
        let gone = retry(|| {
            let (id, gate) = (id.clone(), self.gate.clone());
            self.store.write(move |s| {
                if let Some(g) = &gate {
                    g.before_change(s, ty, &id)?;
                }
                delete_in(s, ty, &id, now_millis())
            })
        })
        .await?;
        if let Some(g) = &gone {
            self.learn(g);
        }
        Ok(gone)
    }

    /// Conditional delete (single match): none → nothing happens; more than one → 412.
    pub async fn conditional_delete(
        &self,
        ty: &'static str,
        condition: Condition,
    ) -> Result<Option<Stored>> {
        let gone = retry(|| {
            let (condition, gate) = (condition.clone(), self.gate.clone());
            self.store.write(move |s| {
                let ids = condition.matches(s, ty, 2)?;
                let ids = visible_matches(gate.as_deref(), s, ty, ids)?;
                match ids.as_slice() {
                    [] => Ok(None),
                    [one] => {
                        if let Some(g) = &gate {
                            g.before_change(s, ty, one)?;
                        }
                        delete_in(s, ty, one, now_millis())
                    }
                    _ => Err(Error::PreconditionFailed(format!(
                        "more than one {ty} meets the condition: a conditional delete removes one"
                    ))),
                }
            })
        })
        .await?;
        if let Some(g) = &gone {
            self.learn(g);
        }
        Ok(gone)
    }

    /// Live resources of a type meeting a condition (the search of this issue: `_id`, `identifier`).
    pub async fn find(
        &self,
        ty: &'static str,
        condition: Condition,
        limit: i64,
    ) -> Result<Vec<Stored>> {
        self.store
            .read(move |s| {
                let ids = condition.matches(s, ty, limit)?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(r) = s.current(ty, &id)? {
                        out.push(Stored::from(r));
                    }
                }
                Ok(out)
            })
            .await
    }

    /// History at instance, type or system level, newest first. Also returns the total at
    /// instance level (cheap there; left out elsewhere).
    pub async fn history(&self, query: HistoryQuery) -> Result<(Vec<Stored>, Option<i64>)> {
        self.store
            .read(move |s| {
                let rows = s.history(&query)?;
                let total = match &query.scope {
                    crate::store::HistoryScope::Instance(t, id)
                        if query.since.is_none() && query.at.is_none() =>
                    {
                        let n = s.count_instance_history(t, id)?;
                        if n == 0 {
                            return Err(Error::NotFound(format!("{t}/{id} is not known")));
                        }
                        Some(n)
                    }
                    _ => None,
                };
                Ok((rows.into_iter().map(Stored::from).collect(), total))
            })
            .await
    }
}

/// An update under the access policy: the version replaced and the one written must both be
/// the caller's to touch.
fn gated_update(
    gate: Option<&dyn Gate>,
    s: &mut Session<'_>,
    ty: &'static str,
    id: &str,
    value: Value,
    if_match: Option<i64>,
) -> Result<Written> {
    if let Some(g) = gate {
        g.before_change(s, ty, id)?;
    }
    let w = update_in(s, ty, id, value, if_match, Method::Update, now_millis())?;
    check_written(gate, s, &w)?;
    Ok(w)
}

/// Puts one written version to the gate.
pub(crate) fn check_written(
    gate: Option<&dyn Gate>,
    s: &mut Session<'_>,
    w: &Written,
) -> Result<()> {
    match gate {
        Some(g) if !w.stored.deleted => g.after_write(
            s,
            &[Change {
                ty: &w.stored.ty,
                id: &w.stored.id,
                body: &w.stored.body,
                created: w.created,
            }],
        ),
        _ => Ok(()),
    }
}

/// Retries a write that lost a race to a concurrent one.
pub(crate) async fn retry<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut n = 0;
    loop {
        n += 1;
        match attempt().await {
            Err(e) if e.is_conflict() && n < MAX_ATTEMPTS => continue,
            Err(e) if e.is_conflict() => {
                return Err(Error::Conflict(format!(
                    "the resource was changed concurrently {MAX_ATTEMPTS} times; try again ({e})"
                )));
            }
            r => return r,
        }
    }
}

/// A new server-assigned id: a UUID, so that ids made on a commune node never collide with the
/// central server's.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn not_found(ty: &str) -> Error {
    Error::NotFound(format!("this {ty} is not known"))
}

/// R4 §3.1.0.4: an update's body has an id equal to the id in the URL.
pub fn check_body_id(value: &Value, ty: &str, id: &str) -> Result<()> {
    match value.get("id").and_then(Value::as_str) {
        Some(b) if b == id => Ok(()),
        Some(b) => Err(Error::invalid_at(
            "invalid",
            format!("the resource's id '{b}' does not match the id in the URL '{id}'"),
            format!("{ty}.id"),
        )),
        None => Err(Error::invalid_at(
            "required",
            "an update's body must carry the resource's id",
            format!("{ty}.id"),
        )),
    }
}

/// Checks a client-chosen id against the `id` type (R4: `[A-Za-z0-9\-\.]{1,64}`).
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "value",
            format!("'{id}' is not a valid resource id (1-64 of A-Z a-z 0-9 - .)"),
        ))
    }
}

/// Sets the server's `id` and `meta` on a resource and renders the JSON to store, with its
/// search index rows. `location` names the resource in error messages.
pub(crate) fn prepare(
    mut value: Value,
    ty: &str,
    id: &str,
    version: i64,
    now: i64,
    location: &str,
) -> Result<(String, IndexRows)> {
    if !value.is_object() {
        return Err(Error::invalid(
            "structure",
            "a resource must be a JSON object",
        ));
    }
    stamp(&mut value, id, version, now);
    let rows = crate::fhir::search::extract::index_rows(ty, &value);
    let body = to_stored_json(value, location)?;
    Ok((body, rows))
}

/// [`prepare`] for what the server itself makes (its AuditEvents): valid by construction (a
/// test holds it to the R4 model), so not taken through the model again on every write.
pub(crate) fn prepare_own(
    mut value: Value,
    ty: &str,
    id: &str,
    now: i64,
) -> Result<(String, IndexRows)> {
    stamp(&mut value, id, 1, now);
    let rows = crate::fhir::search::extract::index_rows(ty, &value);
    let body = serde_json::to_string(&value)
        .map_err(|e| Error::invalid("exception", format!("cannot serialise: {e}")))?;
    Ok((body, rows))
}

/// The server's `id`, `meta.versionId` and `meta.lastUpdated` on a resource (a JSON object).
fn stamp(value: &mut Value, id: &str, version: i64, now: i64) {
    let Value::Object(obj) = value else { return };
    obj.insert("id".into(), Value::String(id.to_string()));
    let meta = obj
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = meta {
        m.insert("versionId".into(), Value::String(version.to_string()));
        m.insert("lastUpdated".into(), Value::String(format_instant(now)));
    }
}

/// Inserts a prepared version as the current one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn insert(
    s: &mut Session<'_>,
    ty: &str,
    id: String,
    version: i64,
    method: Method,
    now: i64,
    body: String,
    tokens: IndexRows,
    settled: &[String],
) -> Result<Stored> {
    let row = NewVersion {
        res_type: ty,
        res_id: &id,
        version,
        is_current: true,
        deleted: false,
        method: method as i16,
        txid: s.txid(),
        last_updated: now,
        body: &body,
    };
    identity::check(
        s,
        &[identity::Claim {
            ty,
            id: &id,
            rows: &tokens,
            body: &body,
            entry: None,
            settled,
        }],
    )?;
    s.insert(&[(row, tokens)])?;
    Ok(Stored {
        pk: 0,
        ty: ty.to_string(),
        id,
        version,
        last_updated: now,
        deleted: false,
        method,
        body,
    })
}

/// Returns the one live resource meeting a create's condition, None if there is none.
pub(crate) fn conditional_match(
    s: &mut Session<'_>,
    gate: Option<&dyn Gate>,
    ty: &str,
    c: &Condition,
) -> Result<Option<Stored>> {
    s.lock_condition(c.lock_key(ty))?;
    let ids = c.matches(s, ty, 2)?;
    // What the caller may not see is absent to them, as for conditional updates and deletes (a
    // citizen's record is still found by its citizen ID: see `citizen_holder`).
    let ids = visible_matches(gate, s, ty, ids)?;
    match ids.as_slice() {
        [] => Ok(None),
        [one] => match s.current(ty, one)? {
            Some(r) => Ok(Some(r.into())),
            None => Ok(None),
        },
        _ => Err(Error::PreconditionFailed(format!(
            "more than one {ty} meets the If-None-Exist condition"
        ))),
    }
}

/// The live active Patient that already holds a citizen ID a new resource of `ty` with index
/// rows `rows` claims, if any (see [`identity`]); the citizen IDs are locked.
pub(crate) fn citizen_holder(
    s: &mut Session<'_>,
    ty: &str,
    rows: &IndexRows,
) -> Result<Option<Stored>> {
    let claim = identity::Claim {
        ty,
        id: "",
        rows,
        body: "",
        entry: None,
        settled: &[],
    };
    match identity::holders(s, &[claim])? {
        Some(h) => Ok(s.current(ty, &h.holder)?.map(Stored::from)),
        None => Ok(None),
    }
}

/// Update inside a transaction: new version of the current one, or version 1 if there is none.
pub(crate) fn update_in(
    s: &mut Session<'_>,
    ty: &str,
    id: &str,
    value: Value,
    if_match: Option<i64>,
    method: Method,
    now: i64,
) -> Result<Written> {
    s.lock_resource(ty, id)?;
    let current = s.current(ty, id)?;
    let location = ty;
    match current {
        None => {
            if let Some(v) = if_match {
                return Err(Error::PreconditionFailed(format!(
                    "If-Match asks for version {v} of {ty}/{id}, which does not exist"
                )));
            }
            check_id(id)?;
            let (body, tokens) = prepare(value, ty, id, 1, now, location)?;
            let stored = insert(s, ty, id.to_string(), 1, method, now, body, tokens, &[])?;
            Ok(Written {
                stored,
                created: true,
            })
        }
        Some(c) => {
            if let Some(v) = if_match
                && v != c.version
            {
                return Err(Error::PreconditionFailed(format!(
                    "If-Match asks for version {v} of {ty}/{id}, but the current version is {}",
                    c.version
                )));
            }
            let version = c.version + 1;
            let (body, tokens) =
                prepare(value, ty, id, version, now.max(c.last_updated), location)?;
            // Content that is current already makes no new version (as HAPI FHIR does): a
            // retried update, or a commune node's re-sent push, changes nothing.
            if !c.deleted && super::format::same_content(&c.body, &body) {
                return Ok(Written {
                    stored: c.into(),
                    created: false,
                });
            }
            // What the Patient already claimed is not claimed anew (one citizen, one record).
            let settled = if ty == "Patient" && !c.deleted {
                identity::prior_claims(s.retire_returning(c.pk, CITIZEN_ID)?)
            } else {
                s.retire(c.pk)?;
                Vec::new()
            };
            let stored = insert(
                s,
                ty,
                id.to_string(),
                version,
                method,
                now.max(c.last_updated),
                body,
                tokens,
                &settled,
            )?;
            Ok(Written {
                stored,
                created: c.deleted,
            })
        }
    }
}

/// Delete inside a transaction. None when there was nothing live to delete.
pub(crate) fn delete_in(
    s: &mut Session<'_>,
    ty: &str,
    id: &str,
    now: i64,
) -> Result<Option<Stored>> {
    s.lock_resource(ty, id)?;
    let Some(c) = s.current_version(ty, id)? else {
        return Ok(None);
    };
    if c.deleted {
        return Ok(None);
    }
    let now = now.max(c.last_updated);
    s.retire(c.pk)?;
    let version = c.version + 1;
    let row = NewVersion {
        res_type: ty,
        res_id: id,
        version,
        is_current: true,
        deleted: true,
        method: Method::Delete as i16,
        txid: s.txid(),
        last_updated: now,
        body: "",
    };
    s.insert(&[(row, IndexRows::default())])?;
    Ok(Some(Stored {
        pk: 0,
        ty: ty.to_string(),
        id: id.to_string(),
        version,
        last_updated: now,
        deleted: true,
        method: Method::Delete,
        body: String::new(),
    }))
}

/// A patch document.
#[derive(Debug, Clone)]
pub enum Patch {
    /// RFC 6902.
    Json(json_patch::Patch),
    /// A FHIRPath Patch `Parameters` resource (R4 §2.40).
    FhirPath(Value),
}

/// A patch inside a transaction: the patched resource must still be a valid resource of the
/// same type and id.
pub(crate) fn patch_in(
    s: &mut Session<'_>,
    fhir: &Fhir,
    ty: &str,
    id: &str,
    patch: &Patch,
    if_match: Option<i64>,
    now: i64,
) -> Result<Written> {
    s.lock_resource(ty, id)?;
    let current = match s.current(ty, id)? {
        None => return Err(not_found(ty)),
        Some(r) if r.deleted => return Err(Error::Gone(format!("{ty}/{id} was deleted"))),
        Some(r) => r,
    };
    if let Some(v) = if_match
        && v != current.version
    {
        return Err(Error::PreconditionFailed(format!(
            "If-Match asks for version {v} of {ty}/{id}, but the current version is {}",
            current.version
        )));
    }
    let mut doc: Value = serde_json::from_str(&current.body).map_err(|e| {
        Error::Store(crate::store::StoreError::Unavailable(format!(
            "stored JSON unreadable: {e}"
        )))
    })?;
    match patch {
        Patch::Json(p) => json_patch::patch(&mut doc, p).map_err(|e| {
            Error::Invalid(vec![Issue::error(
                "processing",
                format!("the JSON Patch does not apply: {e}"),
            )])
        })?,
        Patch::FhirPath(p) => super::fhirpath_patch::apply(&mut doc, p)?,
    }
    validate::resource(&doc)?;
    if doc.get("resourceType").and_then(Value::as_str) != Some(ty) {
        return Err(Error::invalid_at(
            "invalid",
            "a patch may not change the resource type",
            format!("{ty}.resourceType"),
        ));
    }
    check_body_id(&doc, ty, id)?;
    fhir.admit(ty, &doc, ty)?;
    update_in(s, ty, id, doc, Some(current.version), Method::Patch, now)
}
