//! R4 Subscriptions: criteria as a search, `rest-hook` and `websocket` channels, notifications
//! after commit, at least once, in order per Subscription.
//!
//! One process at a time holds the matcher's lease (a row in the database, so several processes
//! sharing one PostgreSQL elect one without a broker). It reads the change sequence past its
//! cursor — committed versions only: on PostgreSQL below the oldest transaction still running —
//! runs each active Subscription's criteria over the changed resources of its type, and queues a
//! notification per match in the same transaction that moves the cursor on. Each Subscription's
//! queue is then delivered in order by a task of its own: the head is deleted only once its
//! endpoint took it; a failure is retried with back-off, and shows on the Subscription as
//! `status = error`, its `error` text and an error count (an extension).
//!
//! A version is matched as it is current when the matcher reads it, a few milliseconds after
//! its commit; one already replaced by then is left to its successor. Deletions notify nobody.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use super::interactions::Fhir;
use super::schema::R4;
use super::search::{self, query};
use crate::error::{Error, Result};
use crate::store::{ChangeRow, QueuedRow, Store};

/// The extension that counts a Subscription's failed deliveries.
pub const ERROR_COUNT: &str = "https://yba.vn/fhir/StructureDefinition/subscription-error-count";

/// Changes read at a time.
const BATCH: i64 = 500;
/// How long the matcher waits for a write before looking anyway (another process's writes).
const POLL: Duration = Duration::from_millis(100);
/// The matcher's lease, and how often a process without it tries to take it.
const LEASE_MS: i64 = 5_000;
const STANDBY: Duration = Duration::from_millis(1_000);
/// Back-off of failed deliveries: doubling from the first, up to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long an endpoint has to answer.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    RestHook,
    WebSocket,
}

/// A Subscription as the dispatcher uses it.
#[derive(Debug, Clone)]
struct Sub {
    id: String,
    status: String,
    ty: &'static str,
    pairs: Vec<(String, String)>,
    channel: Channel,
    endpoint: String,
    payload: bool,
    headers: Vec<(String, String)>,
}

/// Parses a Subscription's criteria: its type and search parameters.
fn criteria(value: &Value) -> Result<(&'static str, Vec<(String, String)>)> {
    let c = value.get("criteria").and_then(Value::as_str).unwrap_or("");
    let (ty, q) = c.split_once('?').unwrap_or((c, ""));
    let ty = R4.resource_type(ty).ok_or_else(|| {
        Error::invalid_at(
            "value",
            format!(
                "the criteria '{c}' do not start with a resource type (Encounter?status=finished)"
            ),
            "Subscription.criteria",
        )
    })?;
    let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    if let Some((p, _)) = pairs.iter().find(|(p, _)| {
        matches!(
            p.as_str(),
            "_sort" | "_count" | "_include" | "_revinclude" | "_summary" | "_elements" | "_total"
        )
    }) {
        return Err(Error::invalid_at(
            "value",
            format!("the criteria are a search's criteria: {p} has no place in them"),
            "Subscription.criteria",
        ));
    }
    query::parse(Some(ty), &pairs, true).map_err(|e| match e {
        Error::Invalid(issues) => Error::Invalid(
            issues
                .into_iter()
                .map(|i| i.at("Subscription.criteria"))
                .collect(),
        ),
        e => e,
    })?;
    Ok((ty, pairs))
}

/// What a Subscription must be to be written: criteria this server can run, a channel it has.
pub fn check(value: &Value) -> Result<()> {
    criteria(value)?;
    let channel = &value["channel"];
    match channel["type"].as_str() {
        Some("rest-hook") => {
            let endpoint = channel["endpoint"].as_str().unwrap_or("");
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(Error::invalid_at(
                    "required",
                    "a rest-hook needs an http(s) endpoint",
                    "Subscription.channel.endpoint",
                ));
            }
        }
        Some("websocket") => {}
        Some(other) => {
            return Err(Error::invalid_at(
                "not-supported",
                format!("the channel type {other} is not supported: rest-hook and websocket are"),
                "Subscription.channel.type",
            ));
        }
        None => {}
    }
    if let Some(p) = channel["payload"].as_str()
        && !matches!(p, "application/fhir+json" | "application/json")
    {
        return Err(Error::invalid_at(
            "not-supported",
            format!("the payload {p} is not supported: application/fhir+json is"),
            "Subscription.channel.payload",
        ));
    }
    for (i, h) in channel["header"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if h.as_str().and_then(|h| h.split_once(':')).is_none() {
            return Err(Error::invalid_at(
                "value",
                "a header is `Name: value`",
                format!("Subscription.channel.header[{i}]"),
            ));
        }
    }
    Ok(())
}

fn parse_sub(id: &str, body: &str) -> Option<Sub> {
    let v: Value = serde_json::from_str(body).ok()?;
    let (ty, pairs) = criteria(&v).ok()?;
    let channel = &v["channel"];
    let channel_type = match channel["type"].as_str()? {
        "rest-hook" => Channel::RestHook,
        "websocket" => Channel::WebSocket,
        _ => return None,
    };
    let headers = channel["header"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|h| h.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Sub {
        id: id.to_string(),
        status: v["status"].as_str().unwrap_or("").to_string(),
        ty,
        pairs,
        channel: channel_type,
        endpoint: channel["endpoint"].as_str().unwrap_or("").to_string(),
        payload: channel["payload"].as_str().is_some(),
        headers,
    })
}

fn error_count(v: &Value) -> u64 {
    v["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == ERROR_COUNT)
        .and_then(|e| e["valueUnsignedInt"].as_u64())
        .unwrap_or(0)
}

/// The websocket bindings of this process: `ping <id>` goes to every socket bound to `<id>`.
#[derive(Default)]
pub struct Hub {
    sockets: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<String>>>>,
}

impl Hub {
    /// Binds a socket (its sender) to a Subscription: it is sent `ping <id>` per notification,
    /// until it is dropped.
    pub fn bind(&self, id: &str, socket: mpsc::UnboundedSender<String>) {
        self.lock().entry(id.to_string()).or_default().push(socket);
    }

    fn ping(&self, id: &str) -> usize {
        let mut sockets = self.lock();
        let Some(list) = sockets.get_mut(id) else {
            return 0;
        };
        list.retain(|s| s.send(format!("ping {id}")).is_ok());
        list.len()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Vec<mpsc::UnboundedSender<String>>>> {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// On PostgreSQL, a thread that listens for the websocket notifications of whichever process
/// delivers them, and pings this process's sockets.
fn listen(store: Store, hub: Weak<Hub>) {
    let spawned = std::thread::Builder::new()
        .name("yba-sub-listen".into())
        .spawn(move || {
            store.listen(
                || hub.strong_count() > 0,
                |id| {
                    if let Some(h) = hub.upgrade() {
                        h.ping(id);
                    }
                },
            )
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "the Subscription listener cannot start");
    }
}

/// Starts the dispatcher in a thread of its own (and, on PostgreSQL, the listener); they stop
/// once `hub` is dropped (with the server's state, when the server stops).
pub fn spawn(fhir: Fhir, hub: Weak<Hub>) {
    if fhir.store().backend() == crate::store::Backend::Postgres {
        listen(fhir.store().clone(), hub.clone());
    }
    let spawned = std::thread::Builder::new()
        .name("yba-subscriptions".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "the Subscription dispatcher cannot start");
                    return;
                }
            };
            rt.block_on(Dispatcher::new(fhir, hub).run());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "the Subscription dispatcher cannot start");
    }
}

struct Worker {
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

struct Dispatcher {
    fhir: Fhir,
    hub: Weak<Hub>,
    me: String,
    subs: Arc<RwLock<HashMap<String, Sub>>>,
    workers: HashMap<String, Worker>,
    client: reqwest::Client,
    /// How far the change sequence was read (while the lease is held).
    cursor: Option<(i64, i64)>,
}

impl Dispatcher {
    fn new(fhir: Fhir, hub: Weak<Hub>) -> Dispatcher {
        Dispatcher {
            fhir,
            hub,
            me: uuid::Uuid::new_v4().to_string(),
            subs: Arc::default(),
            workers: HashMap::new(),
            cursor: None,
            client: crate::http_client()
                .timeout(DELIVERY_TIMEOUT)
                .build()
                .unwrap_or_else(|e| {
                    // No system trust store: plain HTTP still goes out, HTTPS fails per delivery.
                    tracing::warn!(error = %e, "Subscriptions: HTTPS is unavailable");
                    crate::http_client()
                        .timeout(DELIVERY_TIMEOUT)
                        .tls_backend_preconfigured(
                            rustls::ClientConfig::builder()
                                .with_root_certificates(rustls::RootCertStore::empty())
                                .with_no_client_auth(),
                        )
                        .build()
                        .unwrap_or_else(|_| reqwest::Client::new())
                }),
        }
    }

    fn store(&self) -> &Store {
        self.fhir.store()
    }

    async fn run(mut self) {
        let changed = self.store().changes();
        let mut lease_until = 0i64;
        let mut loaded = false;
        while self.hub.strong_count() > 0 {
            let now = crate::fhir::datetime::now_millis();
            if lease_until - now < LEASE_MS / 2 {
                // Renewing the lease also records how far the matcher read (`cursor`: kept in
                // memory between, so that reading changes that notify nobody writes nothing).
                let (me, cursor) = (self.me.clone(), self.cursor);
                let took = self
                    .store()
                    .write(move |s| {
                        if !s.take_lease(&me, now, now + LEASE_MS)? {
                            return Ok::<_, Error>(None);
                        }
                        match cursor {
                            Some(c) => s.set_cursor(c)?,
                            None => return Ok(Some(s.feed_cursor()?)),
                        }
                        Ok(cursor)
                    })
                    .await;
                match took {
                    Ok(Some(c)) => {
                        lease_until = now + LEASE_MS;
                        self.cursor = Some(c);
                    }
                    Ok(None) => {
                        lease_until = 0;
                        loaded = false;
                        self.cursor = None;
                        self.stop_workers();
                        tokio::time::sleep(STANDBY).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Subscriptions: the lease cannot be taken");
                        tokio::time::sleep(STANDBY).await;
                        continue;
                    }
                }
            }
            if !loaded {
                match self.reload().await {
                    Ok(()) => loaded = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "Subscriptions cannot be loaded");
                        tokio::time::sleep(STANDBY).await;
                        continue;
                    }
                }
            }
            match self.step().await {
                // More may be waiting: go on at once.
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "Subscriptions: the change feed cannot be read");
                    // Start again from the lease: the cursor and the Subscriptions afresh.
                    loaded = false;
                    lease_until = 0;
                    self.cursor = None;
                }
            }
            let _ = tokio::time::timeout(POLL, changed.notified()).await;
        }
        self.stop_workers();
    }

    fn stop_workers(&mut self) {
        for (_, w) in self.workers.drain() {
            w.task.abort();
        }
    }

    /// Reads the active Subscriptions, activates the requested ones, and keeps a delivery task
    /// for each.
    async fn reload(&mut self) -> Result<()> {
        let mut subs = HashMap::new();
        let mut after = None;
        // Every page of them (a province's stations may hold thousands).
        loop {
            let mut spec = query::parse(
                Some("Subscription"),
                &[
                    ("status".into(), "requested,active,error".into()),
                    ("_count".into(), query::MAX_COUNT.to_string()),
                ],
                false,
            )?;
            spec.after = after;
            let page = search::run(self.store(), spec).await?;
            for f in &page.matches {
                if let Some(sub) = parse_sub(&f.res_id, &f.body) {
                    subs.insert(sub.id.clone(), sub);
                }
            }
            match page.next.as_deref().and_then(|c| c.parse::<i64>().ok()) {
                Some(pk) => after = Some(pk),
                None => break,
            }
        }
        for sub in subs.values().filter(|s| s.status == "requested") {
            set_status(&self.fhir, &sub.id, "active", None, false).await?;
        }
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|id| !subs.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(w) = self.workers.remove(&id) {
                w.task.abort();
            }
            self.store()
                .write(move |s| Ok::<_, Error>(s.drop_queue(&id)?))
                .await?;
        }
        *self.subs.write().unwrap_or_else(|e| e.into_inner()) = subs;
        let ids: Vec<String> = self
            .subs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.worker(&id).notify_one();
        }
        Ok(())
    }

    /// The delivery task of a Subscription (started if need be); notify it of new work.
    fn worker(&mut self, id: &str) -> Arc<Notify> {
        if let Some(w) = self.workers.get(id)
            && !w.task.is_finished()
        {
            return w.wake.clone();
        }
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(deliver_queue(
            self.fhir.clone(),
            self.subs.clone(),
            self.hub.clone(),
            self.client.clone(),
            id.to_string(),
            wake.clone(),
        ));
        self.workers.insert(
            id.to_string(),
            Worker {
                wake: wake.clone(),
                task,
            },
        );
        wake
    }

    /// Matches the next changes; true if there may be more waiting. Notifications are queued in
    /// the transaction that records the cursor past them, and only while the lease is held; a
    /// new holder starts from the recorded cursor (what a predecessor read but did not record
    /// is read again: at least once).
    async fn step(&mut self) -> Result<bool> {
        let Some(cursor) = self.cursor else {
            return Ok(false);
        };
        let changes = self
            .store()
            .read(move |s| {
                let bound = s.change_bound()?;
                Ok::<_, Error>(s.changes_after(cursor, bound, BATCH)?)
            })
            .await?;
        let Some(last) = changes.last() else {
            return Ok(false);
        };
        let next = (last.txid, last.pk);
        let more = changes.len() as i64 == BATCH;
        let matched = self.matches(&changes).await?;
        let subs_changed = changes.iter().any(|c| c.res_type == "Subscription");
        if !matched.is_empty() {
            let mut woken: Vec<String> = matched.iter().map(|m| m.0.clone()).collect();
            woken.dedup();
            let me = self.me.clone();
            let now = crate::fhir::datetime::now_millis();
            let held = self
                .store()
                .write(move |s| {
                    if !s.take_lease(&me, now, now + LEASE_MS)? {
                        return Ok::<_, Error>(false);
                    }
                    s.enqueue(&matched)?;
                    s.set_cursor(next)?;
                    Ok(true)
                })
                .await?;
            if !held {
                return Err(Error::Conflict(
                    "another process took the Subscription lease".into(),
                ));
            }
            for id in woken {
                self.worker(&id).notify_one();
            }
        }
        self.cursor = Some(next);
        if subs_changed {
            self.reload().await?;
        }
        Ok(more)
    }

    /// The notifications the changes make: (subscription, type, id, version, written at).
    async fn matches(
        &self,
        changes: &[ChangeRow],
    ) -> Result<Vec<(String, String, String, i64, i64)>> {
        let subs: Vec<Sub> = self
            .subs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for sub in subs {
            let of_type: Vec<&ChangeRow> = changes
                .iter()
                .filter(|c| c.res_type == sub.ty && !c.deleted)
                .collect();
            if of_type.is_empty() {
                continue;
            }
            let mut ids: Vec<&str> = of_type.iter().map(|c| c.res_id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            let mut pairs = sub.pairs.clone();
            pairs.push(("_id".into(), ids.join(",")));
            pairs.push(("_count".into(), query::MAX_COUNT.to_string()));
            let spec = query::parse(Some(sub.ty), &pairs, false)?;
            let page = search::run(self.store(), spec).await?;
            let current: HashMap<&str, i64> = page
                .matches
                .iter()
                .map(|f| (f.res_id.as_str(), f.version))
                .collect();
            for c in of_type {
                if current.get(c.res_id.as_str()) == Some(&c.version) {
                    out.push((
                        sub.id.clone(),
                        c.res_type.clone(),
                        c.res_id.clone(),
                        c.version,
                        c.last_updated,
                    ));
                }
            }
        }
        // In change order within each Subscription (the queue's order).
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// Delivers a Subscription's queue in order, for as long as the dispatcher runs.
async fn deliver_queue(
    fhir: Fhir,
    subs: Arc<RwLock<HashMap<String, Sub>>>,
    hub: Weak<Hub>,
    client: reqwest::Client,
    id: String,
    wake: Arc<Notify>,
) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let key = id.clone();
        let head = fhir
            .store()
            .read(move |s| Ok::<_, Error>(s.queue_head(&key)?))
            .await;
        let head = match head {
            Ok(Some(h)) => h,
            Ok(None) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), wake.notified()).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Subscriptions: the queue cannot be read");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Some(sub) = subs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
        else {
            return;
        };
        match deliver(&fhir, &client, &hub, &sub, &head).await {
            Ok(()) => {
                let seq = head.seq;
                if let Err(e) = fhir
                    .store()
                    .write(move |s| Ok::<_, Error>(s.dequeue(seq)?))
                    .await
                {
                    tracing::warn!(error = %e, "Subscriptions: a delivered notification stays queued");
                }
                if sub.status == "error" {
                    let _ = set_status(&fhir, &id, "active", None, false).await;
                }
                backoff = BACKOFF_FIRST;
            }
            Err(why) => {
                tracing::info!(subscription = %id, "a notification was not delivered: {why}");
                let _ = set_status(&fhir, &id, "error", Some(&why), true).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One notification to its endpoint: the resource by PUT to `[endpoint]/[type]/[id]` when the
/// Subscription asks for a payload, else an empty POST; or `ping` to the bound websockets.
async fn deliver(
    fhir: &Fhir,
    client: &reqwest::Client,
    hub: &Weak<Hub>,
    sub: &Sub,
    n: &QueuedRow,
) -> std::result::Result<(), String> {
    match sub.channel {
        Channel::WebSocket => {
            // On PostgreSQL, every process's listener pings its own sockets (this one's too).
            let id = sub.id.clone();
            let told = fhir
                .store()
                .read(move |s| Ok::<_, Error>(s.notify_listeners(&id)?))
                .await
                .map_err(|e| format!("the listeners cannot be told: {e}"))?;
            if !told && let Some(hub) = hub.upgrade() {
                hub.ping(&sub.id);
            }
            Ok(())
        }
        Channel::RestHook => {
            let mut req = if sub.payload {
                let ty: &'static str = R4.resource_type(&n.res_type).unwrap_or("Basic");
                let body = match fhir.vread(ty, n.res_id.clone(), n.version).await {
                    Ok(v) => v.body,
                    // Deleted since: nothing to send.
                    Err(Error::Gone(_) | Error::NotFound(_)) => return Ok(()),
                    Err(e) => return Err(format!("the resource cannot be read: {e}")),
                };
                let url = format!(
                    "{}/{}/{}",
                    sub.endpoint.trim_end_matches('/'),
                    n.res_type,
                    n.res_id
                );
                client
                    .put(url)
                    .header("content-type", "application/fhir+json")
                    .body(body)
            } else {
                client.post(&sub.endpoint)
            };
            for (k, v) in &sub.headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("the endpoint answered {}", r.status())),
                Err(e) => Err(format!("the endpoint cannot be reached: {e}")),
            }
        }
    }
}

/// Sets a Subscription's status (and `error`; `failed` counts a failure) as a new version.
async fn set_status(
    fhir: &Fhir,
    id: &str,
    status: &str,
    error: Option<&str>,
    failed: bool,
) -> Result<()> {
    let current = fhir.read("Subscription", id.to_string()).await?;
    let mut v: Value = serde_json::from_str(&current.body).map_err(|e| {
        Error::invalid(
            "exception",
            format!("a stored Subscription is unreadable: {e}"),
        )
    })?;
    let count = error_count(&v) + u64::from(failed);
    if v["status"] == status && !failed {
        return Ok(());
    }
    v["status"] = json!(status);
    match error {
        Some(e) => v["error"] = json!(e),
        None => {
            if let Some(o) = v.as_object_mut() {
                o.remove("error");
            }
        }
    }
    if failed {
        let mut ext: Vec<Value> = v["extension"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["url"] != ERROR_COUNT)
            .collect();
        ext.push(json!({"url": ERROR_COUNT, "valueUnsignedInt": count}));
        v["extension"] = json!(ext);
    }
    match fhir
        .update("Subscription", id.to_string(), v, Some(current.version))
        .await
    {
        // Changed meanwhile (by its owner): the next failure or success says it again.
        Ok(_) | Err(Error::PreconditionFailed(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria_and_channels_are_checked() {
        let ok = json!({"resourceType": "Subscription", "status": "requested", "reason": "r",
            "criteria": "Encounter?status=finished&service-provider=Organization/123",
            "channel": {"type": "rest-hook", "endpoint": "http://station.example/hook",
                        "payload": "application/fhir+json", "header": ["Authorization: Bearer s3cret"]}});
        assert!(check(&ok).is_ok());
        let sub = parse_sub("s1", &ok.to_string()).expect("parsed");
        assert_eq!(sub.ty, "Encounter");
        assert_eq!(
            sub.headers,
            [("Authorization".to_string(), "Bearer s3cret".to_string())]
        );
        for (path, value) in [
            ("criteria", json!("Nothing?x=1")),
            ("criteria", json!("Encounter?colour=red")),
            ("criteria", json!("Encounter?_sort=date")),
        ] {
            let mut bad = ok.clone();
            bad[path] = value;
            let e = check(&bad).expect_err("refused");
            assert_eq!(
                e.issues()[0].expression.as_deref(),
                Some("Subscription.criteria")
            );
        }
        let mut bad = ok.clone();
        bad["channel"]["type"] = json!("email");
        assert!(check(&bad).is_err());
    }
}
