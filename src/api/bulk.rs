//! FHIR Bulk Data (Bulk Data Access IG 2.0): `$export` at system, Patient and Group level, and
//! `$import` of NDJSON, as asynchronous jobs.
//!
//! A kick-off (`Prefer: respond-async`) is checked whole — types, `_since`, `_typeFilter`, the
//! caller's right to what they ask — then answered 202 with `Content-Location`, the job's status
//! URL. The job row lives in the database, so any process sharing it answers polls; its work
//! runs in the process that accepted it. An export reads a page of a search at a time through
//! the caller's access policy and stores it as a part of its output, so neither the export nor a
//! download ever holds more than a page. A patient exports only their own record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::access::{forbidden, read_visible, search_readable};
use super::error::ApiError;
use super::rest::read_body;
use super::{AppState, Interaction};
use crate::auth::policy::Guard;
use crate::auth::scopes::Perm;
use crate::auth::{Principal, Role};
use crate::error::Error;
use crate::fhir::compartment;
use crate::fhir::datetime::{format_instant, now_millis};
use crate::fhir::import;
use crate::fhir::schema::R4;
use crate::fhir::search::{query, within_compartment};
use crate::store::{JobRow, Store, StoreError};

/// Resources per page read and per part stored.
const PAGE: i64 = 1000;

/// A job not heard of for this long was left by a process that stopped.
const STALE_MS: i64 = 10 * 60 * 1000;

/// How long a finished job's manifest and files are kept (unless deleted sooner).
const KEEP_MS: i64 = 24 * 3600 * 1000;

fn respond_async(req: &HttpRequest) -> bool {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// Who owns the jobs a caller starts (`anonymous` when the server runs without auth).
fn owner(ctx: &super::negotiate::Ctx) -> String {
    ctx.guard
        .as_ref()
        .map_or_else(|| "anonymous".to_string(), |g| g.principal.subject.clone())
}

fn status_url(base: &str, id: &str) -> String {
    format!("{base}/$bulk-status/{id}")
}

fn accepted(base: &str, id: &str) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header(("Content-Location", status_url(base, id)))
        .finish()
}

fn bad(ctx: &super::negotiate::Ctx, code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(400, code, msg, ctx.format)
}

/// What an export reads.
#[derive(Debug, Clone)]
enum Level {
    System,
    Patients,
    Group(String),
}

#[derive(Debug, Clone)]
struct ExportPlan {
    types: Vec<&'static str>,
    /// `_typeFilter` searches by type.
    filters: Vec<(&'static str, Vec<(String, String)>)>,
    since: Option<String>,
    /// The patients whose compartments are read; None: no compartment restriction.
    patients: Option<Vec<String>>,
}

impl ExportPlan {
    /// The search parameters of one page of `ty`.
    fn pairs(&self, ty: &str) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self
            .filters
            .iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        if let Some(s) = &self.since {
            pairs.push(("_lastUpdated".into(), format!("ge{s}")));
        }
        pairs.push(("_count".into(), PAGE.to_string()));
        pairs
    }
}

/// `GET|POST /fhir/$export`.
pub async fn export_system(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    kickoff(req, state, Level::System).await
}

/// `GET|POST /fhir/Patient/$export`.
pub async fn export_patients(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    kickoff(req, state, Level::Patients).await
}

/// `GET|POST /fhir/Group/{id}/$export`.
pub async fn export_group(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    kickoff(req, state, Level::Group(path.into_inner())).await
}

async fn kickoff(req: HttpRequest, state: web::Data<AppState>, level: Level) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            if !respond_async(&req) {
                return Err(bad(
                    &ctx,
                    "required",
                    "a Bulk Data export runs asynchronously: send Prefer: respond-async",
                ));
            }
            let pairs: Vec<(String, String)> =
                form_urlencoded::parse(req.query_string().as_bytes())
                    .into_owned()
                    .collect();
            let mut plan = plan(&ctx, &level, &pairs)?;
            let principal = ctx.guard.as_ref().map(|g| g.principal.clone());
            match (&principal, &level) {
                (Some(p), Level::System) if !matches!(p.role, Role::Admin | Role::System) => {
                    return Err(forbidden(
                        "a system-level export is for administrators and hospital systems; use Patient/$export",
                        ctx.format,
                    ));
                }
                (Some(p), Level::Group(_)) if p.role == Role::Patient => {
                    return Err(forbidden(
                        "a patient exports their own record: use Patient/$export",
                        ctx.format,
                    ));
                }
                (Some(p), Level::Patients) if p.role == Role::Patient => {
                    let me = p.patient.clone().ok_or_else(|| {
                        forbidden("this account is linked to no Patient record", ctx.format)
                    })?;
                    plan.patients = Some(vec![me]);
                }
                _ => {}
            }
            if let Level::Group(id) = &level {
                let group = read_visible(&state.fhir, &ctx, "Group", id).await?;
                plan.patients = Some(group_patients(&group.body));
            }
            if let (Some(g), Some(ps)) = (&ctx.guard, &plan.patients) {
                for p in ps {
                    g.note_patient(p);
                }
            }
            let base = ctx.base().to_string();
            let job = new_job(&state, &ctx, &req, "export").await?;
            let store = state.fhir.store().clone();
            let requires_token = state.auth.is_some();
            let id = job.id.clone();
            actix_web::rt::spawn(async move {
                let result = export(&store, &job, &plan, principal, &base, requires_token).await;
                finish(&store, &job.id, result).await;
            });
            Ok(accepted(ctx.base(), &id))
        })
        .await
}

/// Records a new job of `kind` for the caller, queued.
async fn new_job(
    state: &AppState,
    ctx: &super::negotiate::Ctx,
    req: &HttpRequest,
    kind: &str,
) -> Result<JobRow, ApiError> {
    let now = now_millis();
    let job = JobRow {
        id: uuid::Uuid::new_v4().to_string(),
        kind: kind.into(),
        owner: owner(ctx),
        status: "queued".into(),
        request: request_url(ctx.base(), req),
        progress: "queued".into(),
        created: now,
        updated: now,
        result: None,
    };
    let row = job.clone();
    let fail = stale_outcome();
    state
        .fhir
        .store()
        .write(move |s| {
            // Housekeeping with each new job: jobs left running by a process that stopped are
            // failed, finished ones past their keeping are deleted.
            s.fail_stale_jobs(now - STALE_MS, &fail, now)?;
            s.purge_jobs(now - KEEP_MS)?;
            Ok::<_, Error>(s.insert_job(&row)?)
        })
        .await
        .map_err(|e| ctx.error(e))?;
    Ok(job)
}

/// The request URL as the manifest repeats it.
fn request_url(base: &str, req: &HttpRequest) -> String {
    let path = req.path().strip_prefix("/fhir").unwrap_or(req.path());
    match req.query_string() {
        "" => format!("{base}{path}"),
        q => format!("{base}{path}?{q}"),
    }
}

/// The Patients a Group lists (`member.entity`).
fn group_patients(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let mut out: Vec<String> = v["member"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["entity"]["reference"].as_str())
                .filter_map(|r| r.strip_prefix("Patient/"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// Checks the kick-off's parameters into a plan.
fn plan(
    ctx: &super::negotiate::Ctx,
    level: &Level,
    pairs: &[(String, String)],
) -> Result<ExportPlan, ApiError> {
    let in_scope = |t: &str| match level {
        Level::System => true,
        _ => compartment::holds("Patient", t),
    };
    // A type named in a parameter: a bad one is a bad request (not a missing resource).
    let type_named = |t: &str| {
        R4.resource_type(t).ok_or_else(|| {
            bad(
                ctx,
                "value",
                format!("'{t}' is not a FHIR R4 resource type"),
            )
        })
    };
    let mut types: Vec<&'static str> = Vec::new();
    let mut since = None;
    let mut filters: Vec<(&'static str, Vec<(String, String)>)> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "_type" => {
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    let t = type_named(t)?;
                    if !in_scope(t) {
                        return Err(bad(
                            ctx,
                            "not-supported",
                            format!("{t} resources are not in the Patient compartment"),
                        ));
                    }
                    if !types.contains(&t) {
                        types.push(t);
                    }
                }
            }
            "_since" => {
                crate::fhir::datetime::parse_instant(v)
                    .map_err(|_| bad(ctx, "value", format!("_since '{v}' is not an instant")))?;
                since = Some(v.clone());
            }
            "_typeFilter" => {
                let (t, q) = v.split_once('?').ok_or_else(|| {
                    bad(
                        ctx,
                        "value",
                        format!("_typeFilter '{v}' is not a search like Observation?status=final"),
                    )
                })?;
                let t = type_named(t)?;
                if filters.iter().any(|(f, _)| *f == t) {
                    return Err(bad(
                        ctx,
                        "not-supported",
                        format!("one _typeFilter per type is supported; {t} has two"),
                    ));
                }
                let fp: Vec<(String, String)> =
                    form_urlencoded::parse(q.as_bytes()).into_owned().collect();
                if let Some((p, _)) = fp.iter().find(|(p, _)| {
                    p.starts_with('_')
                        && !matches!(
                            p.as_str(),
                            "_id" | "_lastUpdated" | "_tag" | "_profile" | "_security"
                        )
                }) {
                    return Err(bad(
                        ctx,
                        "not-supported",
                        format!("_typeFilter takes search criteria, not the result parameter {p}"),
                    ));
                }
                query::parse(Some(t), &fp, true).map_err(|e| ctx.error(e))?;
                filters.push((t, fp));
            }
            "_outputFormat" => {
                if !matches!(
                    v.as_str(),
                    "application/fhir+ndjson" | "application/ndjson" | "ndjson"
                ) {
                    return Err(bad(
                        ctx,
                        "not-supported",
                        format!("_outputFormat '{v}' is not supported: application/fhir+ndjson is"),
                    ));
                }
            }
            "_format" | "_pretty" => {}
            other => {
                return Err(bad(
                    ctx,
                    "not-supported",
                    format!("the export parameter {other} is not supported"),
                ));
            }
        }
    }
    let explicit = !types.is_empty();
    if !explicit {
        types = R4
            .resource_types()
            .iter()
            .copied()
            .filter(|t| in_scope(t))
            .collect();
    }
    if let Some((t, _)) = filters.iter().find(|(t, _)| !types.contains(t)) {
        return Err(bad(
            ctx,
            "value",
            format!("_typeFilter names {t}, which the export does not include"),
        ));
    }
    if let Some(g) = &ctx.guard {
        if explicit {
            for t in &types {
                g.scope(t, Perm::Search).map_err(|e| ctx.error(e))?;
            }
        } else {
            // All types: those the token may search.
            types.retain(|t| g.scope(t, Perm::Search).is_ok());
        }
    }
    Ok(ExportPlan {
        types,
        filters,
        since,
        patients: None,
    })
}

/// What a job ended with: its manifest, or why it failed; None when it was deleted meanwhile.
type Outcome = Result<Option<Value>, Error>;

async fn export(
    store: &Store,
    job: &JobRow,
    plan: &ExportPlan,
    principal: Option<Principal>,
    base: &str,
    requires_token: bool,
) -> Outcome {
    let mut seq = 0i64;
    let mut output = Vec::new();
    let mut done = 0u64;
    let one = [None];
    let patients: Vec<Option<&str>> = match &plan.patients {
        Some(ps) => ps.iter().map(|p| Some(p.as_str())).collect(),
        None => one.to_vec(),
    };
    for ty in &plan.types {
        let mut count = 0i64;
        let pairs = plan.pairs(ty);
        for patient in &patients {
            let mut after: Option<i64> = None;
            loop {
                let mut spec = query::parse(Some(ty), &pairs, true)?;
                spec.localise(base);
                spec.after = after;
                if let Some(p) = patient {
                    within_compartment(&mut spec, "Patient", p, true)?;
                }
                // A guard a page: its notes of what was read are dropped with it.
                let guard = principal.clone().map(|p| Arc::new(Guard::new(p)));
                let page = search_readable(store, guard.as_ref(), spec).await?;
                if !page.matches.is_empty() {
                    let mut body =
                        String::with_capacity(page.matches.iter().map(|f| f.body.len() + 1).sum());
                    for f in &page.matches {
                        body.push_str(&f.body);
                        body.push('\n');
                    }
                    let n = page.matches.len() as i64;
                    seq += 1;
                    let (id, t, s) = (job.id.clone(), ty.to_string(), seq);
                    store
                        .write(move |x| Ok::<_, Error>(x.insert_part(&id, s, &t, n, &body)?))
                        .await?;
                    count += n;
                    done += n as u64;
                }
                if !progress(
                    store,
                    &job.id,
                    &format!("{done} resources exported; now {ty}"),
                )
                .await?
                {
                    return Ok(None);
                }
                match page.next.as_deref().and_then(|c| c.parse::<i64>().ok()) {
                    Some(pk) => after = Some(pk),
                    None => break,
                }
            }
        }
        if count > 0 {
            output.push(json!({
                "type": ty,
                "url": format!("{base}/$bulk-file/{}/{ty}", job.id),
                "count": count,
            }));
        }
    }
    Ok(Some(json!({
        "transactionTime": format_instant(job.created),
        "request": job.request,
        "requiresAccessToken": requires_token,
        "output": output,
        "error": [],
    })))
}

/// Records progress; false when the job was deleted (the work stops).
async fn progress(store: &Store, id: &str, text: &str) -> Result<bool, Error> {
    let (id, text) = (id.to_string(), text.to_string());
    store
        .write(move |s| Ok::<_, Error>(s.job_progress(&id, &text, now_millis())?))
        .await
}

async fn finish(store: &Store, id: &str, result: Outcome) {
    let (status, body) = match result {
        Ok(Some(manifest)) => ("done", manifest.to_string()),
        Ok(None) => return,
        Err(e) => {
            if e.status() >= 500 {
                tracing::error!(job = id, error = %e, "a bulk job failed");
            }
            (
                "failed",
                crate::fhir::outcome::to_value(&e.issues()).to_string(),
            )
        }
    };
    let id = id.to_string();
    let r = store
        .write(move |s| Ok::<_, Error>(s.finish_job(&id, status, &body, now_millis())?))
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "a bulk job's end could not be recorded");
    }
}

/// The outcome of a job whose process stopped before it finished.
fn stale_outcome() -> String {
    crate::fhir::outcome::to_value(&[crate::fhir::outcome::Issue::error(
        "incomplete",
        "the server running this job stopped before it finished; start it again",
    )])
    .to_string()
}

/// The job `id` if the caller may see it (its owner, or an administrator).
async fn owned_job(
    state: &AppState,
    ctx: &super::negotiate::Ctx,
    id: &str,
) -> Result<JobRow, ApiError> {
    let key = id.to_string();
    let mut job = state
        .fhir
        .store()
        .read_point(move |s| Ok::<_, Error>(s.job(&key)?))
        .await
        .map_err(|e| ctx.error(e))?;
    // A job its process left running is told as failed (and recorded so at the next kick-off).
    if let Some(j) = &mut job
        && matches!(j.status.as_str(), "queued" | "running")
        && j.updated < now_millis() - STALE_MS
    {
        j.status = "failed".into();
        j.result = Some(stale_outcome());
    }
    let mine = |j: &JobRow| match &ctx.guard {
        None => true,
        Some(g) => g.principal.role == Role::Admin || g.principal.subject == j.owner,
    };
    match job {
        Some(j) if mine(&j) => Ok(j),
        _ => Err(ctx.error(Error::NotFound(format!("no bulk job {id} of yours")))),
    }
}

/// `GET /fhir/$bulk-status/{id}`: 202 with `X-Progress` while the job runs, 200 with its
/// manifest when done, the failure's OperationOutcome when it failed.
pub async fn status(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let job = owned_job(&state, &ctx, &path).await?;
            Ok(match job.status.as_str() {
                "done" => HttpResponse::Ok()
                    .content_type("application/json")
                    .insert_header(("Expires", "0"))
                    .body(job.result.unwrap_or_default()),
                "failed" => HttpResponse::InternalServerError()
                    .content_type("application/fhir+json")
                    .body(job.result.unwrap_or_default()),
                _ => HttpResponse::Accepted()
                    .insert_header(("X-Progress", job.progress))
                    .insert_header(("Retry-After", "1"))
                    .finish(),
            })
        })
        .await
}

/// `DELETE /fhir/$bulk-status/{id}`: stops the job and deletes its output (202).
pub async fn cancel(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let job = owned_job(&state, &ctx, &path).await?;
            state
                .fhir
                .store()
                .write(move |s| Ok::<_, Error>(s.delete_job(&job.id)?))
                .await
                .map_err(|e| ctx.error(e))?;
            Ok(HttpResponse::Accepted().finish())
        })
        .await
}

/// `GET /fhir/$bulk-file/{id}/{type}`: a finished job's NDJSON of one type, streamed a part at a
/// time.
pub async fn file(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let (id, ty) = path.into_inner();
            let job = owned_job(&state, &ctx, &id).await?;
            if job.status != "done" {
                return Err(ctx.error(Error::NotFound(format!("bulk job {id} has no output yet"))));
            }
            let store = state.fhir.store().clone();
            let stream = futures_util::stream::unfold(Some(0i64), move |after| {
                let (store, id, ty) = (store.clone(), id.clone(), ty.clone());
                async move {
                    let after = after?;
                    let next = store.read(move |s| s.next_part(&id, &ty, after)).await;
                    match next {
                        Ok(Some((seq, body))) => Some((Ok(web::Bytes::from(body)), Some(seq))),
                        Ok(None) => None,
                        Err(e) => {
                            tracing::error!(error = %e, "a bulk file could not be read");
                            Some((Err::<web::Bytes, StoreError>(e), None))
                        }
                    }
                }
            });
            Ok(HttpResponse::Ok()
                .content_type("application/fhir+ndjson")
                .streaming(stream))
        })
        .await
}

/// `POST /fhir/$import`: NDJSON in the body (`Content-Type: application/fhir+ndjson`), or a
/// `Parameters` resource naming NDJSON files by URL (each on the server's allow-list,
/// `YBA_IMPORT_ALLOW`). Runs as a job, through the engine of `yba import`.
pub async fn import(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            if let Some(g) = &ctx.guard {
                let p = &g.principal;
                let allowed = p.role == Role::Admin
                    || (p.role == Role::System
                        && R4.resource_types().iter().all(|t| {
                            g.scope(t, Perm::Create).is_ok() && g.scope(t, Perm::Update).is_ok()
                        }));
                if !allowed {
                    return Err(forbidden(
                        "a bulk import is for administrators and hospital systems allowed to create and update every type",
                        ctx.format,
                    ));
                }
            }
            if !respond_async(&req) {
                return Err(bad(
                    &ctx,
                    "required",
                    "a Bulk Data import runs asynchronously: send Prefer: respond-async",
                ));
            }
            let body = read_body(&req, payload, state.max_body, &ctx).await?;
            let ndjson = req
                .headers()
                .get(actix_web::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.contains("ndjson"));
            let inputs = if ndjson {
                vec![Input::Upload(body)]
            } else {
                import_inputs(&ctx, &body, &state.import_allow)?
            };
            let base = ctx.base().to_string();
            let job = new_job(&state, &ctx, &req, "import").await?;
            let fhir = state.fhir.clone();
            let requires_token = state.auth.is_some();
            let id = job.id.clone();
            actix_web::rt::spawn(async move {
                let result = run_import(&fhir, &job, inputs, &base, requires_token).await;
                finish(fhir.store(), &job.id, result).await;
            });
            Ok(accepted(ctx.base(), &id))
        })
        .await
}

enum Input {
    Upload(web::Bytes),
    Url(String),
}

/// The input URLs of an import's `Parameters` (`input.url`), each on the allow-list.
fn import_inputs(
    ctx: &super::negotiate::Ctx,
    body: &[u8],
    allow: &[String],
) -> Result<Vec<Input>, ApiError> {
    let (v, ty) = crate::fhir::format::parse_resource(body, ctx.format)
        .map_err(|i| ctx.error(Error::Invalid(i)))?;
    if ty != "Parameters" {
        return Err(bad(
            ctx,
            "invalid",
            format!(
                "$import takes NDJSON (Content-Type: application/fhir+ndjson) or a Parameters resource, not a {ty}"
            ),
        ));
    }
    let mut out = Vec::new();
    for (i, p) in v["parameter"].as_array().into_iter().flatten().enumerate() {
        match p["name"].as_str() {
            Some("inputFormat") => {
                let f = p["valueCode"]
                    .as_str()
                    .or(p["valueString"].as_str())
                    .unwrap_or("");
                if f != "application/fhir+ndjson" {
                    return Err(bad(
                        ctx,
                        "not-supported",
                        format!("inputFormat '{f}': only application/fhir+ndjson is imported"),
                    )
                    .at(format!("Parameters.parameter[{i}]")));
                }
            }
            Some("input") => {
                let parts = p["part"].as_array().map_or(&[][..], Vec::as_slice);
                let url = parts
                    .iter()
                    .find(|q| q["name"] == "url")
                    .and_then(|q| q["valueUri"].as_str().or(q["valueUrl"].as_str()))
                    .ok_or_else(|| {
                        bad(ctx, "required", "an input needs a url part")
                            .at(format!("Parameters.parameter[{i}].part"))
                    })?;
                if !allow.iter().any(|a| url.starts_with(a.as_str())) {
                    return Err(ApiError::new(
                        403,
                        "forbidden",
                        format!(
                            "{url} is not on this server's import allow-list (YBA_IMPORT_ALLOW)"
                        ),
                        ctx.format,
                    )
                    .at(format!("Parameters.parameter[{i}]")));
                }
                out.push(Input::Url(url.to_string()));
            }
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(bad(ctx, "required", "the Parameters name no input"));
    }
    Ok(out)
}

/// An import job's progress, written to its row about once a second.
struct JobProgress {
    total: AtomicU64,
    done: AtomicU64,
    cancelled: AtomicBool,
}

impl import::Progress for JobProgress {
    fn total(&self, units: u64) {
        self.total.store(units, Ordering::Relaxed);
    }
    fn advance(&self, units: u64) {
        self.done.fetch_add(units, Ordering::Relaxed);
    }
    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

async fn run_import(
    fhir: &crate::fhir::Fhir,
    job: &JobRow,
    inputs: Vec<Input>,
    base: &str,
    requires_token: bool,
) -> Outcome {
    let store = fhir.store();
    let dir = std::env::temp_dir().join(format!("yba-import-{}", job.id));
    let mut sources = Vec::new();
    let mut fetch_failures = Vec::new();
    for (i, input) in inputs.into_iter().enumerate() {
        match input {
            Input::Upload(data) => sources.push(import::Source::Ndjson {
                name: "upload".into(),
                data,
            }),
            Input::Url(url) => {
                if !progress(store, &job.id, &format!("fetching {url}")).await? {
                    return Ok(None);
                }
                let path = dir.join(format!("{i}.ndjson"));
                match fetch(&url, &path).await {
                    Ok(()) => sources.push(import::Source::Path(path)),
                    Err(msg) => fetch_failures.push(import::Failure {
                        source: url,
                        line: None,
                        issues: vec![crate::fhir::outcome::Issue::error("exception", msg)],
                    }),
                }
            }
        }
    }
    let p = Arc::new(JobProgress {
        total: AtomicU64::new(0),
        done: AtomicU64::new(0),
        cancelled: AtomicBool::new(false),
    });
    let ticker = {
        let (p, store, id) = (p.clone(), store.clone(), job.id.clone());
        actix_web::rt::spawn(async move {
            loop {
                actix_web::rt::time::sleep(Duration::from_secs(1)).await;
                let text = format!(
                    "{} of {} resources",
                    p.done.load(Ordering::Relaxed),
                    p.total.load(Ordering::Relaxed)
                );
                if let Ok(false) = progress(&store, &id, &text).await {
                    p.cancelled.store(true, Ordering::Relaxed);
                }
            }
        })
    };
    let opts = import::Options {
        base: base.to_string(),
        ..import::Options::default()
    };
    let result = import::run(fhir, sources, &opts, p.clone()).await;
    ticker.abort();
    let _ = std::fs::remove_dir_all(&dir);
    if p.cancelled.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let mut report = result?;
    report.failures.splice(0..0, fetch_failures);
    // The failures, as NDJSON OperationOutcomes, a page a part.
    for (i, page) in report.failures.chunks(PAGE as usize).enumerate() {
        let seq = i as i64 + 1;
        let mut body = String::new();
        for f in page {
            let mut issues = f.issues.clone();
            for i in &mut issues {
                i.diagnostics = match f.line {
                    Some(l) => format!("{}:{l}: {}", f.source, i.diagnostics),
                    None => format!("{}: {}", f.source, i.diagnostics),
                };
            }
            body.push_str(&crate::fhir::outcome::to_value(&issues).to_string());
            body.push('\n');
        }
        let (id, n) = (job.id.clone(), page.len() as i64);
        store
            .write(move |s| {
                Ok::<_, Error>(s.insert_part(&id, seq, "OperationOutcome", n, &body)?)
            })
            .await?;
    }
    let errors: Vec<Value> = if report.failures.is_empty() {
        Vec::new()
    } else {
        vec![json!({
            "type": "OperationOutcome",
            "url": format!("{base}/$bulk-file/{}/OperationOutcome", job.id),
            "count": report.failures.len(),
        })]
    };
    Ok(Some(json!({
        "transactionTime": format_instant(job.created),
        "request": job.request,
        "requiresAccessToken": requires_token,
        "output": [{"type": "Resource", "count": report.written}],
        "unchanged": report.unchanged,
        "bundles": report.bundles,
        "error": errors,
    })))
}

/// Downloads an input to a file, a chunk at a time.
async fn fetch(url: &str, path: &std::path::Path) -> Result<(), String> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("cannot make a temporary folder: {e}"))?;
    }
    let client = crate::http_client()
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("fetching {url} answered {}", resp.status()));
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("cannot write a temporary file: {e}"))?;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("fetching {url} failed: {e}"))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot write a temporary file: {e}"))?;
    }
    file.flush()
        .await
        .map_err(|e| format!("cannot write a temporary file: {e}"))
}
