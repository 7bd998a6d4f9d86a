//! A commune node: this server on its own SQLite at a station, syncing with an upstream FHIR
//! server (the provincial or central yba) whenever the link is up.
//!
//! Everything goes through ordinary FHIR interactions, so that the node could sync with any R4
//! server that offers them:
//! - **Pull** reads upstream's system `_history?_since=` (upstream's access policy narrows it to
//!   what the station's organization may see: its patients' records, the directory), page by
//!   page, and writes each version here unless the node has it already. The cursor is kept at
//!   the newest version read, or upstream's clock less [`OVERLAP`] if that is earlier, so that a
//!   transaction committing late upstream is never skipped.
//! - **Push** reads the node's own change sequence past its cursor (the outbox: versions written
//!   here, not those pulled) and sends each changed resource's current version up in transaction
//!   Bundles: `PUT` under its own id (UUIDs, made here) with `If-Match` on the upstream version it
//!   was last synced at, `DELETE` for a deletion. A re-sent batch changes nothing: upstream makes
//!   no new version of content it has, and a 412 on content upstream has already is no conflict.
//! - **Conflicts**: a resource changed on both sides while apart keeps upstream's version (it
//!   becomes current here); the node's stays in the node's history and is listed in
//!   `sync_conflict` for the station to review. A version upstream refuses is listed there too.
//!   A Patient made here for a citizen upstream already has a record for is merged into it: the
//!   node's records about the patient point at upstream's Patient, and the merge is listed.
//! - Every link and cursor is written in the transaction that writes the local versions it is
//!   about, so a round killed at any point resumes without loss or duplication.

pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::error::Error;
use crate::fhir::datetime::{format_instant, now_millis, parse_instant};
use crate::fhir::interactions::{Fhir, citizen_holder, delete_in, update_in};
use crate::store::{Link, Method, Session};
use upstream::{LinkError, Upstream, UpstreamConfig};

/// How far behind upstream's clock the pull cursor stays: longer than any transaction upstream.
pub const OVERLAP: i64 = 30_000;

/// Types the node neither pushes nor pulls: each server's own audit trail and Subscriptions.
const LOCAL_ONLY: &[&str] = &["AuditEvent", "Subscription"];

/// The types a node pulls (`_type` of upstream's history): patients' records, the directory
/// and the definitions (not upstream's own audit trail or Subscriptions).
fn synced_types() -> &'static [&'static str] {
    static TYPES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    TYPES.get_or_init(|| {
        let mut t: Vec<&'static str> = crate::fhir::compartment::links("Patient", &[])
            .into_iter()
            .filter_map(|(ty, _)| crate::fhir::schema::R4.resource_type(&ty))
            .chain(["Patient", "Binary", "Group"])
            .chain(crate::auth::policy::DIRECTORY.iter().copied())
            .chain(crate::auth::policy::DEFINITIONS.iter().copied())
            .filter(|ty| !LOCAL_ONLY.contains(ty))
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    })
}

/// What one round did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Round {
    pub started: String,
    pub seconds: f64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Upstream versions written here.
    pub pulled: u64,
    /// Local versions upstream took.
    pub pushed: u64,
    /// Versions either side had already (not written again).
    pub unchanged: u64,
    /// Conflicts recorded in this round.
    pub conflicts: u64,
    /// JSON bytes of the resources pushed.
    #[serde(skip)]
    pub pushed_bytes: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("{0}")]
    Local(#[from] Error),
}

/// Batch sizes, from what the link has carried.
struct Pace {
    /// Resources a push Bundle carries.
    push: usize,
    /// `_count` of a pull page.
    pull: usize,
}

/// Pushed resources this large on average (JSON bytes) make the next pull list upstream's
/// history (`_elements=id`, about 40 gzipped bytes a version) and fetch only what the node
/// lacks; smaller ones cost less to download again than to list and fetch.
const LIST_FROM: u64 = 2048;

/// Resource bytes a push Bundle carries at most (a large attachment goes on its own; what
/// follows it waits for the next Bundle).
const MAX_BATCH_BYTES: usize = 4 << 20;

/// How long a request should take at the link's measured speed.
const REQUEST_SECONDS: f64 = 4.0;

impl Pace {
    /// Sizes the next batch so that it takes about [`REQUEST_SECONDS`] at the speed the last
    /// one went (`n` resources, `bytes` over the wire, in `secs`).
    fn next(current: usize, n: usize, bytes: u64, secs: f64) -> usize {
        if n == 0 || secs <= 0.0 {
            return current;
        }
        let per_item = bytes as f64 / n as f64;
        let rate = bytes as f64 / secs;
        let want = (rate * REQUEST_SECONDS / per_item.max(1.0)) as usize;
        // At most double at a time; between 20 and 1,000 (upstream's largest page).
        want.clamp(current / 2, current * 2).clamp(20, 1000)
    }
}

/// The node's sync: one round at a time, by the loop or by hand.
pub struct Node {
    fhir: Fhir,
    up: Upstream,
    interval: Duration,
    pace: Mutex<Pace>,
    running: tokio::sync::Mutex<()>,
    live: Mutex<Live>,
    wake: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct Live {
    failures: u32,
    next_attempt: Option<i64>,
}

impl Node {
    pub fn new(fhir: Fhir, config: UpstreamConfig, interval: Duration) -> Result<Node, String> {
        Ok(Node {
            fhir,
            up: Upstream::new(config).map_err(|e| e.to_string())?,
            interval,
            pace: Mutex::new(Pace {
                push: 200,
                pull: 1000,
            }),
            running: tokio::sync::Mutex::new(()),
            live: Mutex::new(Live::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Runs rounds while the node is in use (until the server holding it stops): every
    /// `interval` while they succeed, after a growing, jittered pause while they fail (1 s
    /// doubling to 5 min).
    pub fn spawn(node: &Arc<Node>) {
        let weak = Arc::downgrade(node);
        tokio::spawn(async move {
            loop {
                let Some(node) = weak.upgrade() else { return };
                let round = node.round().await;
                let pause = if round.ok {
                    node.interval
                } else {
                    let failures = node.live.lock().map(|l| l.failures).unwrap_or(1);
                    backoff(failures)
                };
                if let Ok(mut l) = node.live.lock() {
                    l.next_attempt = Some(now_millis() + pause.as_millis() as i64);
                }
                let wake = node.wake.clone();
                drop(node);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = wake.notified() => {}
                }
            }
        });
    }

    /// Asks the loop for a round now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// One round: pull, then push. Recorded as the last round.
    pub async fn round(&self) -> Round {
        let _one = self.running.lock().await;
        let (s0, r0) = self.up.bytes();
        let t0 = Instant::now();
        let mut r = Round {
            started: format_instant(now_millis()),
            ..Round::default()
        };
        let result = match self.pull(&mut r).await {
            Ok(()) => self.push(&mut r).await,
            Err(e) => Err(e),
        };
        let (s1, r1) = self.up.bytes();
        r.bytes_sent = s1 - s0;
        r.bytes_received = r1 - r0;
        r.seconds = t0.elapsed().as_secs_f64();
        r.ok = result.is_ok();
        if let Err(e) = result {
            tracing::warn!(error = %e, "sync round failed");
            r.error = Some(e.to_string());
        }
        if let Ok(mut l) = self.live.lock() {
            l.failures = if r.ok { 0 } else { l.failures + 1 };
        }
        let json = serde_json::to_string(&r).unwrap_or_default();
        let saved = self
            .fhir
            .store()
            .write(move |s| s.sync_set("round", None, None, Some(&json)))
            .await;
        if let Err(e) = saved {
            tracing::warn!(error = %e, "cannot record the sync round");
        }
        r
    }

    /// What `/api/sync/status` shows.
    pub async fn status(&self) -> crate::error::Result<Value> {
        let (failures, next) = self
            .live
            .lock()
            .map(|l| (l.failures, l.next_attempt))
            .unwrap_or_default();
        let upstream = self.up.base().to_string();
        let (last, queue, open, conflicts, pull) = self
            .fhir
            .store()
            .read(|s| {
                let last = s.sync_get("round")?.and_then(|(_, _, v)| v);
                let cursor = push_cursor(s)?;
                let pull = s.sync_get("pull")?.and_then(|(_, _, v)| v);
                Ok::<_, Error>((
                    last,
                    s.unpushed(cursor)?,
                    s.open_conflicts()?,
                    s.conflicts(true, 100)?,
                    pull,
                ))
            })
            .await?;
        let last: Value = last
            .and_then(|l| serde_json::from_str(&l).ok())
            .unwrap_or(Value::Null);
        Ok(json!({
            "upstream": upstream,
            "online": last.get("ok").and_then(Value::as_bool).unwrap_or(false),
            "lastRound": last,
            "failuresInARow": failures,
            "nextAttempt": next.map(format_instant),
            "queue": queue,
            "pulledUpTo": pull,
            "openConflicts": open,
            "conflicts": conflicts.iter().map(conflict_json).collect::<Vec<_>>(),
        }))
    }

    /// Marks a conflict reviewed: false if no open conflict has that number.
    pub async fn resolve(&self, seq: i64) -> crate::error::Result<bool> {
        self.fhir
            .store()
            .write(move |s| Ok::<_, Error>(s.resolve_conflict(seq, now_millis())?))
            .await
    }

    // --- pull ---------------------------------------------------------------------------

    async fn pull(&self, r: &mut Round) -> Result<(), SyncError> {
        let since: Option<i64> = self
            .fhir
            .store()
            .read(|s| Ok::<_, Error>(s.sync_get("pull")?.and_then(|(_, _, v)| v)))
            .await?
            .and_then(|v| parse_instant(&v).ok())
            .map(|d| d.range().0);
        // After a push, upstream's history holds the node's own versions: list it first
        // (`_elements=id`) and fetch only what the node does not have.
        let listing = self
            .fhir
            .store()
            .read(|s| Ok::<_, Error>(s.sync_get("echo")?.and_then(|(_, _, v)| v).is_some()))
            .await?;
        let count = self.pace.lock().map(|p| p.pull).unwrap_or(200);
        let mut url = format!("_history?_count={count}");
        if let Some(t) = since {
            url.push_str("&_since=");
            url.push_str(&format_instant(t).replace('+', "%2B"));
        }
        if listing {
            url.push_str("&_elements=id");
        }
        url.push_str("&_type=");
        url.push_str(&synced_types().join(","));
        let mut newest: Option<i64> = None;
        let mut upstream_now: Option<i64> = None;
        loop {
            let t = Instant::now();
            let (_, before) = self.up.bytes();
            let a = self.up.get(&url).await?;
            if a.status != 200 {
                return Err(LinkError::Upstream {
                    status: a.status,
                    message: format!("history: {}", a.diagnostics()),
                }
                .into());
            }
            upstream_now = upstream_now.or(a.date);
            let mut page = pulled_entries(&a.body);
            for e in &page {
                newest = Some(newest.map_or(e.last_modified, |n| n.max(e.last_modified)));
            }
            if page.iter().any(|p| p.subsetted) {
                page = self.complete(page).await?;
            }
            let (_, after) = self.up.bytes();
            if let Ok(mut p) = self.pace.lock() {
                p.pull = Pace::next(
                    p.pull,
                    page.len(),
                    after - before,
                    t.elapsed().as_secs_f64(),
                );
            }
            let (pulled, unchanged, conflicts) = self
                .fhir
                .store()
                .write(move |s| apply_pulled(s, &page, now_millis()))
                .await?;
            r.pulled += pulled;
            r.unchanged += unchanged;
            r.conflicts += conflicts;
            match next_link(&a.body) {
                Some(next) => url = next,
                None => break,
            }
        }
        // Up to the newest version read (a round with nothing new reads nothing again), but
        // never past upstream's clock less OVERLAP (a transaction still committing upstream
        // has versions older than that).
        let cursor = match (newest, upstream_now, since) {
            (Some(n), Some(now), _) => Some((n + 1).min(now - OVERLAP)),
            (Some(n), None, _) => Some(n + 1 - OVERLAP),
            (None, _, s) => s,
        };
        let cursor = cursor.map(|c| format_instant(c.max(since.unwrap_or(i64::MIN))));
        self.fhir
            .store()
            .write(move |s| {
                if let Some(v) = &cursor {
                    s.sync_set("pull", None, None, Some(v))?;
                }
                s.sync_set("echo", None, None, None)?;
                Ok::<_, Error>(())
            })
            .await?;
        Ok(())
    }

    /// A listed page with the bodies of the versions the node does not have yet (fetched by
    /// `_id`, type by type); versions it has stay as listed (they are skipped), and one gone
    /// upstream meanwhile is left to its deletion.
    async fn complete(&self, page: Vec<Pulled>) -> Result<Vec<Pulled>, SyncError> {
        let keys: Vec<(String, String, i64)> = page
            .iter()
            .filter(|p| p.subsetted)
            .map(|p| (p.ty.clone(), p.id.clone(), p.version))
            .collect();
        let missing: Vec<(String, String)> = self
            .fhir
            .store()
            .read(move |s| {
                let mut out = Vec::new();
                for (ty, id, version) in keys {
                    if s.link(&ty, &id)?
                        .is_none_or(|l| l.upstream_version < version)
                    {
                        out.push((ty, id));
                    }
                }
                Ok::<_, Error>(out)
            })
            .await?;
        let mut by_type: HashMap<String, Vec<String>> = HashMap::new();
        for (ty, id) in missing {
            by_type.entry(ty).or_default().push(id);
        }
        let mut fetched: HashMap<(String, String), Pulled> = HashMap::new();
        for (ty, ids) in by_type {
            for chunk in ids.chunks(1000) {
                let form = form_urlencoded::Serializer::new(String::new())
                    .append_pair("_id", &chunk.join(","))
                    .append_pair("_count", &chunk.len().to_string())
                    .finish();
                let a = self.up.search(&ty, form).await?;
                if a.status != 200 {
                    return Err(LinkError::Upstream {
                        status: a.status,
                        message: format!("search: {}", a.diagnostics()),
                    }
                    .into());
                }
                for e in a
                    .body
                    .get("entry")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(p) = e.get("resource").and_then(Pulled::from_resource) {
                        fetched.insert((p.ty.clone(), p.id.clone()), p);
                    }
                }
            }
        }
        // What is held already stays listed only (and is skipped as such), as does what went
        // upstream meanwhile (its deletion follows).
        Ok(page
            .into_iter()
            .map(|p| match p.subsetted {
                true => fetched.remove(&(p.ty.clone(), p.id.clone())).unwrap_or(p),
                false => p,
            })
            .collect())
    }

    // --- push ---------------------------------------------------------------------------

    async fn push(&self, r: &mut Round) -> Result<(), SyncError> {
        let mut merged = Vec::new();
        let before = r.pushed;
        let mut result = self.push_all(r, &mut merged).await;
        if result.is_ok() {
            result = self.retry_refused(r).await;
        }
        // Upstream's records of merged patients, readable now that the station's records
        // about them went up.
        for id in merged {
            let got = self.up.get(&format!("Patient/{id}")).await?;
            if got.status == 200
                && let Some(p) = Pulled::from_resource(&got.body)
            {
                self.apply(p, r).await?;
            }
        }
        if r.pushed > before && r.pushed_bytes / (r.pushed - before) >= LIST_FROM {
            // Upstream's history now holds the node's own (large) versions: the next pull
            // lists first rather than download them again.
            self.fhir
                .store()
                .write(|s| Ok::<_, Error>(s.sync_set("echo", None, None, Some("1"))?))
                .await?;
        }
        result
    }

    async fn push_all(&self, r: &mut Round, merged: &mut Vec<String>) -> Result<(), SyncError> {
        loop {
            let want = self.pace.lock().map(|p| p.push).unwrap_or(100);
            let batch = self.fhir.store().read(move |s| outbox(s, want)).await?;
            let Some(batch) = batch else { return Ok(()) };
            if batch.items.is_empty() {
                // Only versions upstream has: move past them.
                let c = batch.cursor;
                self.fhir
                    .store()
                    .write(move |s| set_push_cursor(s, c))
                    .await?;
                continue;
            }
            let t = Instant::now();
            let (before, _) = self.up.bytes();
            let bundle = transaction(&batch.items);
            let a = self.up.post_bundle(&bundle).await?;
            let (after, _) = self.up.bytes();
            if let Ok(mut p) = self.pace.lock() {
                p.push = Pace::next(
                    p.push,
                    batch.items.len(),
                    after - before,
                    t.elapsed().as_secs_f64(),
                );
            }
            if a.status == 200 {
                let done = taken(&batch.items, &a.body);
                r.pushed += done.len() as u64;
                r.pushed_bytes += body_bytes(&batch.items);
                self.settle(done, Some(batch.cursor), Vec::new()).await?;
                continue;
            }
            // The transaction failed as a whole: each resource on its own, to find which;
            // Patients first, so that a merge retargets the records about them before they go.
            let mut items: Vec<&Outgoing> = batch.items.iter().collect();
            items.sort_by_key(|i| i.ty != "Patient");
            for item in items {
                self.push_one(item, r, merged).await?;
            }
            let c = batch.cursor;
            self.fhir
                .store()
                .write(move |s| set_push_cursor(s, c))
                .await?;
        }
    }

    /// Records in one transaction what upstream took: the links of the versions, where the
    /// push has got to, and the refusals it settled.
    async fn settle(
        &self,
        done: Vec<(String, String, Link)>,
        cursor: Option<(i64, i64)>,
        resolved: Vec<i64>,
    ) -> Result<(), Error> {
        self.fhir
            .store()
            .write(move |s| {
                for (ty, id, link) in &done {
                    s.set_link(ty, id, *link)?;
                }
                for seq in &resolved {
                    s.resolve_conflict(*seq, now_millis())?;
                }
                match cursor {
                    Some(c) => set_push_cursor(s, c),
                    None => Ok(()),
                }
            })
            .await
    }

    /// Writes one upstream version here, counting it in the round.
    async fn apply(&self, p: Pulled, r: &mut Round) -> Result<(), Error> {
        let (pulled, unchanged, conflicts) = self
            .fhir
            .store()
            .write(move |s| apply_pulled(s, std::slice::from_ref(&p), now_millis()))
            .await?;
        r.pulled += pulled;
        r.unchanged += unchanged;
        r.conflicts += conflicts;
        Ok(())
    }

    /// Sends again what upstream refused before (a record whose patient went up later, or
    /// whom the station was given care of since): what upstream now takes is settled, the rest
    /// stays listed.
    async fn retry_refused(&self, r: &mut Round) -> Result<(), SyncError> {
        let items: Vec<(i64, Outgoing)> = self
            .fhir
            .store()
            .read(|s| {
                let mut out = Vec::new();
                for c in s.conflicts(true, 1000)? {
                    if c.kind != "refused" {
                        continue;
                    }
                    let Some(row) = s.current(&c.res_type, &c.res_id)? else {
                        continue;
                    };
                    if row.version != c.local_version {
                        continue; // edited since: the new version went its own way
                    }
                    let link = s.link(&c.res_type, &c.res_id)?;
                    out.push((
                        c.seq,
                        Outgoing {
                            ty: c.res_type,
                            id: c.res_id,
                            version: row.version,
                            body: (!row.deleted).then_some(row.body),
                            link,
                        },
                    ));
                }
                Ok::<_, Error>(out)
            })
            .await?;
        if items.is_empty() {
            return Ok(());
        }
        let all: Vec<Outgoing> = items.iter().map(|(_, i)| i.clone()).collect();
        let a = self.up.post_bundle(&transaction(&all)).await?;
        let groups: Vec<Vec<(i64, Outgoing)>> = if a.status == 200 {
            vec![items]
        } else {
            items.into_iter().map(|i| vec![i]).collect()
        };
        let mut first = Some(a);
        for group in groups {
            let outgoing: Vec<Outgoing> = group.iter().map(|(_, i)| i.clone()).collect();
            let a = match first.take() {
                Some(a) if a.status == 200 => a,
                _ => self.up.post_bundle(&transaction(&outgoing)).await?,
            };
            if a.status != 200 {
                continue;
            }
            let done = taken(&outgoing, &a.body);
            r.pushed += done.len() as u64;
            let seqs = group.iter().map(|(seq, _)| *seq).collect();
            self.settle(done, None, seqs).await?;
        }
        Ok(())
    }

    /// Pushes one resource, and settles a refusal: a conflict, or a merge of a Patient into the
    /// one upstream holds for the same citizen.
    async fn push_one(
        &self,
        item: &Outgoing,
        r: &mut Round,
        merged: &mut Vec<String>,
    ) -> Result<(), SyncError> {
        let (ty, id) = (item.ty.clone(), item.id.clone());
        let now_at = self
            .fhir
            .store()
            .read(move |s| Ok::<_, Error>(s.current(&ty, &id)?.map(|c| c.version)))
            .await?;
        if now_at.is_some_and(|v| v > item.version) {
            return Ok(()); // changed since (by a merge): its new version is in the outbox
        }
        let a = self
            .up
            .post_bundle(&transaction(std::slice::from_ref(item)))
            .await?;
        if a.status == 200 {
            let done = taken(std::slice::from_ref(item), &a.body);
            r.pushed += done.len() as u64;
            r.pushed_bytes += body_bytes(std::slice::from_ref(item));
            self.settle(done, None, Vec::new()).await?;
            return Ok(());
        }
        let refusal = a.diagnostics();
        if a.status == 412 || (a.status == 409 && item.link.is_some()) {
            // Upstream changed it meanwhile (or deleted it): upstream's version wins.
            let now = self.up.get(&format!("{}/{}", item.ty, item.id)).await?;
            let pulled = match now.status {
                200 => Pulled::from_resource(&now.body),
                410 | 404 => item.link.map(|l| Pulled {
                    ty: item.ty.clone(),
                    id: item.id.clone(),
                    version: l.upstream_version + 1,
                    deleted: true,
                    body: None,
                    last_modified: 0,
                    subsetted: false,
                }),
                _ => None,
            };
            if let Some(p) = pulled {
                self.apply(p, r).await?;
                return Ok(());
            }
        }
        if item.ty == "Patient"
            && a.status == 409
            && let Some(holder) = self.citizen_record(item).await?
            && holder != item.id
        {
            let (from, into) = (item.id.clone(), holder.clone());
            self.fhir
                .store()
                .write(move |s| merge_patient(s, &from, &into, now_millis()))
                .await?;
            r.conflicts += 1;
            merged.push(holder);
            return Ok(());
        }
        // Refused: the station has to look at it (an edit makes a new version, pushed anew).
        let (ty, id, version, up) = (
            item.ty.clone(),
            item.id.clone(),
            item.version,
            item.link.map(|l| l.upstream_version),
        );
        self.fhir
            .store()
            .write(move |s| {
                s.add_conflict(&ty, &id, version, up, "refused", &refusal, now_millis())?;
                Ok::<_, Error>(())
            })
            .await?;
        r.conflicts += 1;
        Ok(())
    }

    /// Gives the node's Patient and the node's records about them to upstream's record of the
    /// same citizen: one transaction of a conditional create by citizen ID (`urn:uuid:` of the
    /// node's id) with those records pointing at it, as any FHIR client links to an existing
    /// record (upstream lets the station see that record once the station's encounter is with
    /// it). Returns upstream's id, or None if upstream refused.
    async fn citizen_record(&self, item: &Outgoing) -> Result<Option<String>, SyncError> {
        let Some(Ok(mut patient)) = item.body.as_deref().map(serde_json::from_str::<Value>) else {
            return Ok(None);
        };
        let Some(cccd) = crate::fhir::identifier_value(&patient, crate::fhir::vn_rules::CITIZEN_ID)
            .map(str::to_string)
        else {
            return Ok(None);
        };
        let condition = form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "identifier",
                &format!("{}|{cccd}", crate::fhir::vn_rules::CITIZEN_ID),
            )
            .finish();
        if let Some(o) = patient.as_object_mut() {
            o.remove("id");
            o.remove("meta");
        }
        let (old, full) = (
            format!("Patient/{}", item.id),
            format!("urn:uuid:{}", item.id),
        );
        let about = {
            let (old, full) = (old.clone(), full.clone());
            self.fhir
                .store()
                .read(move |s| {
                    let mut out = Vec::new();
                    for (ty, id) in s.referrers(&old)? {
                        if LOCAL_ONLY.contains(&ty.as_str()) {
                            continue;
                        }
                        let Some(row) = s.current(&ty, &id)? else {
                            continue;
                        };
                        if let (false, Ok(mut v)) =
                            (row.deleted, serde_json::from_str::<Value>(&row.body))
                        {
                            retarget(&mut v, &old, &full);
                            out.push(json!({
                                "resource": v,
                                "request": {"method": "PUT", "url": format!("{ty}/{id}")}
                            }));
                        }
                    }
                    Ok::<_, Error>(out)
                })
                .await?
        };
        let mut entries = vec![json!({
            "fullUrl": full,
            "resource": patient,
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": condition}
        })];
        entries.extend(about);
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let a = self.up.post_bundle(&bundle).await?;
        if a.status != 200 {
            return Ok(None);
        }
        Ok(a.body
            .pointer("/entry/0/response/location")
            .and_then(Value::as_str)
            .and_then(|l| l.split("/_history").next())
            .and_then(|l| l.rsplit('/').next())
            .map(str::to_string))
    }
}

/// The pause after `failures` failed rounds in a row: 1 s doubling to 5 min, ± 25 % at random
/// so that a thousand stations coming back together do not knock together.
fn backoff(failures: u32) -> Duration {
    let base = 1000u64
        .saturating_mul(1 << failures.saturating_sub(1).min(9))
        .min(300_000);
    let r = (uuid::Uuid::new_v4().as_u128() % 1000) as u64; // 0..1000
    Duration::from_millis(base * (750 + r / 2) / 1000)
}

fn conflict_json(c: &crate::store::ConflictRow) -> Value {
    json!({
        "id": c.seq,
        "resource": format!("{}/{}", c.res_type, c.res_id),
        "kind": c.kind,
        "detail": c.detail,
        "nodeVersion": format!("{}/{}/_history/{}", c.res_type, c.res_id, c.local_version),
        "upstreamVersion": c.upstream_version,
        "at": format_instant(c.at),
        "resolved": c.resolved.map(format_instant),
    })
}

// --- the outbox ---------------------------------------------------------------------------

/// A local version to push.
#[derive(Debug, Clone)]
struct Outgoing {
    ty: String,
    id: String,
    version: i64,
    /// None: a deletion.
    body: Option<String>,
    link: Option<Link>,
}

struct Batch {
    items: Vec<Outgoing>,
    /// The change sequence up to which this batch settles the outbox.
    cursor: (i64, i64),
}

fn push_cursor(s: &mut Session<'_>) -> crate::error::Result<(i64, i64)> {
    Ok(match s.sync_get("push")? {
        Some((Some(t), Some(p), _)) => (t, p),
        _ => (0, 0),
    })
}

fn set_push_cursor(s: &mut Session<'_>, (t, p): (i64, i64)) -> crate::error::Result<()> {
    Ok(s.sync_set("push", Some(t), Some(p), None)?)
}

/// The next resources changed here that upstream does not have, up to `want` of them, each at
/// its current version; None when the outbox is empty.
fn outbox(s: &mut Session<'_>, want: usize) -> crate::error::Result<Option<Batch>> {
    let cursor = push_cursor(s)?;
    let bound = s.change_bound()?;
    let rows = s.changes_after(cursor, bound, (want * 4) as i64)?;
    let Some(last) = rows.last() else {
        return Ok(None);
    };
    let mut end = (last.txid, last.pk);
    let mut picked: Vec<(String, String)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for row in &rows {
        if LOCAL_ONLY.contains(&row.res_type.as_str()) {
            continue;
        }
        if seen.insert((row.res_type.clone(), row.res_id.clone())) {
            if picked.len() == want {
                // Stop before the first change of one resource too many.
                end = (row.txid, row.pk - 1);
                break;
            }
            picked.push((row.res_type.clone(), row.res_id.clone()));
        }
    }
    let mut by_type: HashMap<&str, Vec<&str>> = HashMap::new();
    for (ty, id) in &picked {
        by_type.entry(ty).or_default().push(id);
    }
    let mut current = HashMap::new();
    let mut links = HashMap::new();
    for (ty, ids) in by_type {
        for row in s.current_rows(ty, &ids)? {
            current.insert((row.res_type.clone(), row.res_id.clone()), row);
        }
        for (id, l) in s.links(ty, &ids)? {
            links.insert((ty.to_string(), id), l);
        }
    }
    let mut items = Vec::with_capacity(picked.len());
    let mut bytes = 0;
    for key in picked {
        if bytes >= MAX_BATCH_BYTES {
            // The rest waits for the next batch: restart from its first change.
            if let Some(first) = rows
                .iter()
                .find(|r| r.res_type == key.0 && r.res_id == key.1)
            {
                end = (first.txid, first.pk - 1);
            }
            break;
        }
        let Some(row) = current.remove(&key) else {
            continue;
        };
        let link = links.get(&key).copied();
        if link.is_some_and(|l| l.local_version >= row.version) {
            continue; // pulled, or pushed already
        }
        if row.deleted && link.is_none() {
            continue; // made and deleted here: upstream never had it
        }
        bytes += row.body.len();
        items.push(Outgoing {
            ty: key.0,
            id: key.1,
            version: row.version,
            body: (!row.deleted).then_some(row.body),
            link,
        });
    }
    Ok(Some(Batch { items, cursor: end }))
}

/// The JSON bytes of the resources among `items`.
fn body_bytes(items: &[Outgoing]) -> u64 {
    items
        .iter()
        .map(|i| i.body.as_ref().map_or(0, String::len) as u64)
        .sum()
}

/// A transaction Bundle of local versions.
fn transaction(items: &[Outgoing]) -> Value {
    let entries: Vec<Value> = items
        .iter()
        .map(|i| {
            let url = format!("{}/{}", i.ty, i.id);
            let mut request = json!({
                "method": if i.body.is_some() { "PUT" } else { "DELETE" },
                "url": url,
            });
            if let Some(l) = i.link {
                request["ifMatch"] = Value::String(format!("W/\"{}\"", l.upstream_version));
            }
            let mut e = json!({ "request": request });
            if let Some(b) = &i.body {
                e["resource"] = serde_json::from_str(b).unwrap_or(Value::Null);
            }
            e
        })
        .collect();
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries })
}

/// The links a transaction-response sets: each entry's local version is upstream's version in
/// its ETag.
fn taken(items: &[Outgoing], response: &Value) -> Vec<(String, String, Link)> {
    let entries = response
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    items
        .iter()
        .zip(entries)
        .map(|(i, e)| {
            let up = e
                .pointer("/response/etag")
                .and_then(Value::as_str)
                .and_then(crate::fhir::bundle::parse_etag)
                .or_else(|| i.link.map(|l| l.upstream_version))
                .unwrap_or(0);
            (
                i.ty.clone(),
                i.id.clone(),
                Link {
                    local_version: i.version,
                    upstream_version: up,
                },
            )
        })
        .collect()
}

// --- applying upstream's versions ----------------------------------------------------------

/// A version read from upstream.
#[derive(Debug, Clone)]
struct Pulled {
    ty: String,
    id: String,
    version: i64,
    deleted: bool,
    body: Option<Value>,
    last_modified: i64,
    /// Listed only (`_elements`): the body is to be fetched.
    subsetted: bool,
}

impl Pulled {
    fn from_resource(r: &Value) -> Option<Pulled> {
        let subsetted = r
            .pointer("/meta/tag")
            .and_then(Value::as_array)
            .is_some_and(|t| {
                t.iter()
                    .any(|t| t.get("code").and_then(Value::as_str) == Some("SUBSETTED"))
            });
        Some(Pulled {
            ty: r.get("resourceType")?.as_str()?.to_string(),
            id: r.get("id")?.as_str()?.to_string(),
            version: r.pointer("/meta/versionId")?.as_str()?.parse().ok()?,
            deleted: false,
            body: (!subsetted).then(|| r.clone()),
            last_modified: 0,
            subsetted,
        })
    }
}

/// The versions of a history Bundle.
fn pulled_entries(bundle: &Value) -> Vec<Pulled> {
    let entries = bundle.get("entry").and_then(Value::as_array);
    entries
        .into_iter()
        .flatten()
        .filter_map(|e| {
            // When upstream wrote it (for the cursor): the entry's, else the resource's.
            let last_modified = e
                .pointer("/response/lastModified")
                .or_else(|| e.pointer("/resource/meta/lastUpdated"))
                .and_then(Value::as_str)
                .and_then(|t| parse_instant(t).ok())
                .map(|d| d.range().0)
                .unwrap_or(0);
            let method = e.pointer("/request/method").and_then(Value::as_str);
            if let Some(r) = e.get("resource") {
                let mut p = Pulled::from_resource(r)?;
                p.last_modified = last_modified;
                return Some(p);
            }
            if method != Some("DELETE") {
                return None;
            }
            let url = e.pointer("/request/url").and_then(Value::as_str)?;
            let (ty, id) = url.split_once('/')?;
            let version = e
                .pointer("/response/etag")
                .and_then(Value::as_str)
                .and_then(crate::fhir::bundle::parse_etag)?;
            Some(Pulled {
                ty: ty.to_string(),
                id: id.to_string(),
                version,
                deleted: true,
                body: None,
                last_modified,
                subsetted: false,
            })
        })
        .filter(|p| !LOCAL_ONLY.contains(&p.ty.as_str()))
        .collect()
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle
        .get("link")?
        .as_array()?
        .iter()
        .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))?
        .get("url")?
        .as_str()
        .map(str::to_string)
}

/// Writes upstream's versions here (those the node does not have yet), in one transaction with
/// their links; a resource the node changed too keeps upstream's version and records the
/// node's as a conflict. Returns (written, unchanged, conflicts).
fn apply_pulled(
    s: &mut Session<'_>,
    page: &[Pulled],
    now: i64,
) -> crate::error::Result<(u64, u64, u64)> {
    let (mut written, mut unchanged, mut conflicts) = (0, 0, 0);
    for p in page {
        let link = s.link(&p.ty, &p.id)?;
        if link.is_some_and(|l| l.upstream_version >= p.version) {
            unchanged += 1;
            continue;
        }
        if p.body.is_none() && !p.deleted {
            continue; // listed, not fetched: gone upstream meanwhile (its deletion follows)
        }
        let local = s.current(&p.ty, &p.id)?;
        // The node's own change that upstream has not seen: a version past the link, or a
        // live resource of that id never synced.
        let mine = match (&local, link) {
            (Some(c), Some(l)) => c.version > l.local_version,
            (Some(c), None) => !c.deleted,
            (None, _) => false,
        };
        let local_version = local.as_ref().map(|c| c.version).unwrap_or(0);
        let stored = match &p.body {
            None => delete_in(s, &p.ty, &p.id, now)?.map(|d| d.version),
            Some(body) => {
                if p.ty == "Patient" {
                    let rows = crate::fhir::search::extract::index_rows("Patient", body);
                    if let Some(holder) = citizen_holder(s, "Patient", &rows)?
                        && holder.id != p.id
                    {
                        merge_patient(s, &holder.id, &p.id, now)?;
                        conflicts += 1;
                    }
                }
                let w = update_in(s, &p.ty, &p.id, body.clone(), None, Method::Update, now)?;
                Some(w.stored.version)
            }
        };
        let new_local = stored.unwrap_or(local_version);
        if new_local == local_version && local.is_some() {
            unchanged += 1; // same content (or already deleted)
        } else {
            written += 1;
        }
        if mine && new_local != local_version {
            let kind = if p.deleted {
                "deleted-upstream"
            } else {
                "both-changed"
            };
            let detail = format!(
                "changed here (version {local_version}) and upstream (version {}) while apart; upstream's version is current, the node's is {}/{}/_history/{local_version}",
                p.version, p.ty, p.id
            );
            s.add_conflict(
                &p.ty,
                &p.id,
                local_version,
                Some(p.version),
                kind,
                &detail,
                now,
            )?;
            conflicts += 1;
        }
        s.set_link(
            &p.ty,
            &p.id,
            Link {
                local_version: new_local,
                upstream_version: p.version,
            },
        )?;
    }
    Ok((written, unchanged, conflicts))
}

/// Merges the node's Patient `from` into `into` (upstream's record of the same citizen): the
/// node's records about `from` point at `into`, `from` is deleted here, and the merge is listed
/// for the station.
fn merge_patient(
    s: &mut Session<'_>,
    from: &str,
    into: &str,
    now: i64,
) -> crate::error::Result<()> {
    let (old, new) = (format!("Patient/{from}"), format!("Patient/{into}"));
    for (ty, id) in s.referrers(&old)? {
        let Some(row) = s.current(&ty, &id)? else {
            continue;
        };
        if row.deleted {
            continue;
        }
        let Ok(mut value) = serde_json::from_str::<Value>(&row.body) else {
            continue;
        };
        retarget(&mut value, &old, &new);
        update_in(s, &ty, &id, value, None, Method::Update, now)?;
    }
    let version = s.current("Patient", from)?.map(|r| r.version).unwrap_or(0);
    delete_in(s, "Patient", from, now)?;
    s.add_conflict(
        "Patient",
        from,
        version,
        None,
        "same-citizen",
        &format!(
            "upstream holds {new} for this citizen ID: the node's records point at it now; the node's Patient is {old}/_history/{version}"
        ),
        now,
    )?;
    Ok(())
}

/// Replaces every `reference` to `old` by `new`.
fn retarget(v: &mut Value, old: &str, new: &str) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "reference" && x.as_str() == Some(old) {
                    *x = Value::String(new.to_string());
                } else {
                    retarget(x, old, new);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| retarget(x, old, new)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_five_minutes_with_jitter() {
        for _ in 0..50 {
            let b = backoff(1).as_millis();
            assert!((750..=1250).contains(&b), "{b}");
            let b = backoff(30).as_millis();
            assert!((225_000..=375_000).contains(&b), "{b}");
        }
    }

    #[test]
    fn batches_follow_the_link() {
        // 100 resources of 1 kB in 8 s: 12.5 kB/s, 4 s is 50 resources.
        assert_eq!(Pace::next(100, 100, 100_000, 8.0), 50);
        // A fast link doubles at most, up to 1,000.
        assert_eq!(Pace::next(100, 100, 100_000, 0.01), 200);
        assert_eq!(Pace::next(800, 800, 800_000, 0.01), 1000);
    }

    #[test]
    fn references_are_retargeted_everywhere() {
        let mut v = json!({"subject": {"reference": "Patient/a"}, "x": [{"reference": "Patient/a"}, {"reference": "Patient/b"}]});
        retarget(&mut v, "Patient/a", "Patient/c");
        assert_eq!(v["subject"]["reference"], "Patient/c");
        assert_eq!(v["x"][0]["reference"], "Patient/c");
        assert_eq!(v["x"][1]["reference"], "Patient/b");
    }
}
