//! The audit trail: one FHIR `AuditEvent` (R4, after the IHE Basic Audit Log Patterns) for every
//! read, search, write, sign-in, token issue, break-glass and denial: who, for which client and
//! organization, about which patients, what, when, from where, and how it ended. The events are
//! stored as resources, so `AuditEvent?patient=...&date=...` is an ordinary search; no API
//! interaction may write, change or delete them (the policy refuses it for everyone).
//!
//! Events are written off the request path, in batches, by one writer thread; a search of
//! AuditEvents first waits for every event recorded before it, so the trail a caller reads is
//! never behind the requests they made. On shutdown the writer drains what is queued.

use serde_json::{Value, json};

use super::Principal;
use crate::fhir::datetime::{format_instant, now_millis};
use crate::fhir::interactions::{new_id, prepare_own};
use crate::store::{Method, NewVersion, Store};

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const REST: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const CLIENT_SYSTEM: &str = "https://yba.vn/fhir/sid/oauth-client";
const USER_SYSTEM: &str = "https://yba.vn/fhir/sid/username";

/// How an audited action ended (AuditEvent.outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused: the request was the caller's mistake or not allowed.
    Refused,
    /// The server failed.
    Failed,
}

impl Outcome {
    pub fn of_status(status: u16) -> Outcome {
        match status {
            0..=399 => Outcome::Success,
            400..=499 => Outcome::Refused,
            _ => Outcome::Failed,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::Refused => "4",
            Outcome::Failed => "8",
        }
    }
}

/// One audited action.
#[derive(Debug, Default)]
pub struct Record<'a> {
    /// `C`, `R`, `U`, `D` or `E` (execute: search, operations, sign-in).
    pub action: &'a str,
    /// The FHIR interaction (`read`, `search-type`, `create`...) or `login` / `token`.
    pub interaction: &'a str,
    pub principal: Option<&'a Principal>,
    /// The username tried at a sign-in that failed (staff accounts only: never a citizen ID).
    pub attempted: Option<&'a str>,
    pub status: u16,
    /// Why it was refused, when it was.
    pub detail: Option<String>,
    pub patients: &'a [String],
    /// `Type/id` of what was read or written (the first few).
    pub resources: &'a [String],
    /// The query of a search (as sent).
    pub query: Option<&'a str>,
    pub consents: &'a [String],
    pub break_glass: bool,
    pub address: Option<&'a str>,
}

/// The most resources named in one event (the patients are always all named).
pub const MAX_RESOURCES: usize = 20;

impl Record<'_> {
    pub fn to_value(&self) -> Value {
        let login = matches!(self.interaction, "login" | "token");
        let mut ev = json!({
            "resourceType": "AuditEvent",
            "type": if login {
                json!({"system": DCM, "code": "110114", "display": "User Authentication"})
            } else {
                json!({"system": REST, "code": "rest", "display": "RESTful Operation"})
            },
            "subtype": [if login {
                json!({"system": DCM, "code": "110122", "display": "Login"})
            } else {
                json!({"system": INTERACTION, "code": self.interaction})
            }],
            "action": self.action,
            "recorded": format_instant(now_millis()),
            "outcome": Outcome::of_status(self.status).code(),
            "source": {
                "observer": {"display": "yba"},
                "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]
            }
        });
        let o = ev.as_object_mut().expect("a JSON object");
        let mut desc = self.detail.clone().unwrap_or_default();
        if self.status >= 400 {
            desc = format!("{} {desc}", self.status).trim().to_string();
        }
        if !desc.is_empty() {
            o.insert("outcomeDesc".into(), Value::String(desc));
        }
        if self.break_glass {
            o.insert(
                "purposeOfEvent".into(),
                json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT", "display": "Emergency Treatment"}], "text": "break-glass"}]),
            );
            o.insert(
                "meta".into(),
                json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "BTG", "display": "break the glass"}]}),
            );
        }
        let mut agents = Vec::new();
        let network = self.address.map(|a| json!({"address": a, "type": "2"}));
        match self.principal {
            Some(p) => {
                let mut person = json!({
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
                    "requestor": true,
                    "role": [{"text": p.role.name()}],
                });
                let po = person.as_object_mut().expect("a JSON object");
                match &p.fhir_user {
                    Some(f) => po.insert("who".into(), json!({"reference": f})),
                    None => po.insert(
                        "who".into(),
                        json!({"identifier": {"system": CLIENT_SYSTEM, "value": p.client_id}}),
                    ),
                };
                if let Some(n) = &network {
                    po.insert("network".into(), n.clone());
                }
                let mut policy: Vec<String> = self
                    .consents
                    .iter()
                    .map(|c| format!("Consent/{c}"))
                    .collect();
                if let Some(reason) = p.break_glass.as_deref().filter(|_| self.break_glass) {
                    po.insert("purposeOfUse".into(), json!([{"text": reason}]));
                    policy.push("break-glass".into());
                }
                if !policy.is_empty() {
                    po.insert("policy".into(), json!(policy));
                }
                agents.push(person);
                if p.fhir_user.is_some() {
                    agents.push(json!({
                        "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
                        "who": {"identifier": {"system": CLIENT_SYSTEM, "value": p.client_id}},
                        "requestor": false
                    }));
                }
                if let Some(org) = &p.organization {
                    agents.push(json!({
                        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "datacollector", "display": "data collector"}]},
                        "who": {"reference": org},
                        "requestor": false
                    }));
                }
            }
            None => {
                let mut anon = json!({"requestor": true});
                let ao = anon.as_object_mut().expect("a JSON object");
                if let Some(u) = self.attempted {
                    ao.insert("altId".into(), Value::String(u.to_string()));
                    ao.insert(
                        "who".into(),
                        json!({"identifier": {"system": USER_SYSTEM, "value": u}}),
                    );
                }
                if let Some(n) = &network {
                    ao.insert("network".into(), n.clone());
                }
                agents.push(anon);
            }
        }
        o.insert("agent".into(), Value::Array(agents));
        let mut entities: Vec<Value> = self
            .patients
            .iter()
            .map(|p| {
                json!({
                    "what": {"reference": format!("Patient/{p}")},
                    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}
                })
            })
            .collect();
        for r in self.resources.iter().take(MAX_RESOURCES) {
            if r.starts_with("Patient/") && self.patients.iter().any(|p| r[8..] == **p) {
                continue;
            }
            entities.push(json!({
                "what": {"reference": r},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"}
            }));
        }
        if let Some(q) = self.query {
            use base64::Engine;
            entities.push(json!({
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
                "query": base64::engine::general_purpose::STANDARD.encode(q.as_bytes())
            }));
        }
        if !entities.is_empty() {
            o.insert("entity".into(), Value::Array(entities));
        }
        ev
    }
}

enum Msg {
    Event(Value),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The handle requests record events through.
#[derive(Clone)]
pub struct Audit {
    tx: tokio::sync::mpsc::Sender<Msg>,
}

/// Events written per database transaction at most.
const BATCH: usize = 256;
/// Events waiting to be written at most. When the writer falls this far behind, requests wait
/// for it: every access is recorded, and a backlog neither grows without bound in memory nor
/// leaves more than this many events unwritten at a crash.
const QUEUE: usize = 4 * BATCH;

impl Audit {
    /// Starts the writer thread; it stops when every handle is dropped, after writing what is
    /// queued.
    pub fn start(store: Store) -> std::io::Result<(Audit, std::thread::JoinHandle<()>)> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(QUEUE);
        let handle = std::thread::Builder::new()
            .name("yba-audit".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("the audit writer cannot start: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    while let Some(first) = rx.recv().await {
                        let mut events = Vec::new();
                        let mut flushes = Vec::new();
                        let mut next = Some(first);
                        while let Some(m) = next.take() {
                            match m {
                                Msg::Event(v) => events.push(v),
                                Msg::Flush(f) => flushes.push(f),
                            }
                            if events.len() < BATCH {
                                next = rx.try_recv().ok();
                            }
                        }
                        if !events.is_empty() {
                            write(&store, events).await;
                        }
                        for f in flushes {
                            let _ = f.send(());
                        }
                    }
                });
            })?;
        Ok((Audit { tx }, handle))
    }

    /// Queues an event, waiting while the queue is full.
    pub async fn record(&self, r: &Record<'_>) {
        let event = r.to_value();
        if self.tx.send(Msg::Event(event)).await.is_err() {
            tracing::error!("the audit writer has stopped: an audit event was not recorded");
        }
    }

    /// Waits until every event queued before now is stored.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Writes a batch in one transaction, retrying a few times before giving up (and saying so in
/// the log, without the events' content).
async fn write(store: &Store, events: Vec<Value>) {
    let now = now_millis();
    let mut prepared = Vec::with_capacity(events.len());
    for ev in events {
        let id = new_id();
        match prepare_own(ev, "AuditEvent", &id, now) {
            Ok((body, rows)) => prepared.push((id, body, rows)),
            Err(_) => tracing::error!("an audit event could not be prepared"),
        }
    }
    let prepared = std::sync::Arc::new(prepared);
    for attempt in 1..=5u32 {
        let batch = prepared.clone();
        let result = store
            .write(move |s| {
                let txid = s.txid();
                let rows: Vec<_> = batch
                    .iter()
                    .map(|(id, body, rows)| {
                        (
                            NewVersion {
                                res_type: "AuditEvent",
                                res_id: id,
                                version: 1,
                                is_current: true,
                                deleted: false,
                                method: Method::Create as i16,
                                txid,
                                last_updated: now,
                                body,
                            },
                            rows.clone(),
                        )
                    })
                    .collect();
                s.insert(&rows).map(|_| ())
            })
            .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(
                    attempt,
                    count = prepared.len(),
                    "audit events not written yet: {e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)))
                    .await;
            }
        }
    }
    tracing::error!(
        count = prepared.len(),
        "audit events were lost after five attempts"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scopes::Scopes;
    use crate::auth::{Principal, Role};

    /// The events are stored without going through the R4 model on each write: every shape of
    /// them must fit it.
    #[test]
    fn every_kind_of_event_fits_the_r4_model() {
        let principal = Principal {
            role: Role::Practitioner,
            subject: "dr.an".into(),
            client_id: "yba-app".into(),
            fhir_user: Some("Practitioner/dr-an".into()),
            organization: Some("Organization/org-a".into()),
            patient: None,
            scopes: Scopes::parse("user/*.rs"),
            sid: "s1".into(),
            break_glass: Some("unconscious".into()),
            address: Some("10.0.0.1".into()),
        };
        let patients = vec!["pa".to_string()];
        let resources = vec!["Observation/oa".to_string()];
        let consents = vec!["Consent/c1".to_string()];
        let records = [
            Record {
                action: "R",
                interaction: "read",
                principal: Some(&principal),
                status: 200,
                patients: &patients,
                resources: &resources,
                consents: &consents,
                break_glass: true,
                address: Some("10.0.0.1"),
                ..Default::default()
            },
            Record {
                action: "E",
                interaction: "search-type",
                principal: Some(&principal),
                status: 403,
                detail: Some("refused".into()),
                query: Some("Observation?patient=pa"),
                ..Default::default()
            },
            Record {
                action: "E",
                interaction: "login",
                attempted: Some("admin1"),
                status: 400,
                ..Default::default()
            },
        ];
        for r in &records {
            let (body, rows) = prepare_own(r.to_value(), "AuditEvent", "a1", 0).unwrap();
            let v: Value = serde_json::from_str(&body).unwrap();
            crate::fhir::format::to_stored_json(v, "AuditEvent")
                .unwrap_or_else(|e| panic!("{} does not fit R4: {e:?}", r.interaction));
            assert!(!rows.dates.is_empty(), "indexed by date");
        }
    }
}
