//! Handlers of the FHIR REST interactions at type and instance level (R4 §3.1.0).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HttpDate};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;

use super::access::{found, read_visible, readable, scope};
use super::error::{ApiError, outcome_response};
use super::negotiate::{Ctx, Return, body_format, etag_header};
use super::{AppState, Interaction};
use crate::auth::scopes::Perm;
use crate::error::Error;
use crate::fhir::bundle_out::{EntryOut, bundle_json};
use crate::fhir::condition::Condition;
use crate::fhir::datetime;
use crate::fhir::format::{parse_resource, render};
use crate::fhir::outcome::Issue;
use crate::fhir::schema::R4;
use crate::fhir::{Stored, Written};
use crate::store::{HistoryQuery, HistoryScope, Method};

type Reply = Result<HttpResponse, ApiError>;

/// The resource type named in the URL, or 404.
pub fn resource_type(name: &str, ctx: &Ctx) -> Result<&'static str, ApiError> {
    R4.resource_type(name).ok_or_else(|| {
        ApiError::new(
            404,
            "not-supported",
            format!("'{name}' is not a FHIR R4 resource type"),
            ctx.format,
        )
    })
}

/// Reads a request body up to the configured limit; larger bodies are 413, unread.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    ctx: &Ctx,
) -> Result<web::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            "too-costly",
            format!("the request body is larger than the limit of {limit} bytes"),
            ctx.format,
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(8192).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                400,
                "structure",
                format!("cannot read the request body: {e}"),
                ctx.format,
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.as_bytes())
    {
        None => Ok(body.freeze()),
        Some(e) if e.eq_ignore_ascii_case(b"identity") => Ok(body.freeze()),
        // A commune node gzips what it pushes over a slow link.
        Some(e) if e.eq_ignore_ascii_case(b"gzip") => {
            use std::io::Read;
            let mut out = Vec::with_capacity(body.len() * 4);
            flate2::read::GzDecoder::new(&body[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    ApiError::new(
                        400,
                        "structure",
                        format!("the gzipped request body does not inflate: {e}"),
                        ctx.format,
                    )
                })?;
            if out.len() > limit {
                return Err(too_large());
            }
            Ok(out.into())
        }
        Some(other) => Err(ApiError::new(
            415,
            "not-supported",
            format!(
                "Content-Encoding '{}' is not supported (gzip is)",
                String::from_utf8_lossy(other)
            ),
            ctx.format,
        )),
    }
}

/// Parses and validates a resource body, checking its type against the URL's.
fn parse_body(
    req: &HttpRequest,
    body: &[u8],
    ty: &str,
    ctx: &Ctx,
) -> Result<serde_json::Value, ApiError> {
    let fmt = body_format(req, body, ctx.format)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            400,
            "required",
            "the request has no body: send a resource",
            ctx.format,
        ));
    }
    let (value, body_ty) =
        parse_resource(body, fmt).map_err(|issues| ctx.error(Error::Invalid(issues)))?;
    if body_ty != ty {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            issues: vec![
                Issue::error(
                    "invalid",
                    format!("the body is a {body_ty}, but the URL is for {ty}"),
                )
                .at(format!("{body_ty}.resourceType")),
            ],
            format: ctx.format,
        });
    }
    Ok(value)
}

fn http_date(ms: i64) -> HttpDate {
    HttpDate::from(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// A response carrying a stored version, shaped by `Prefer: return=`.
fn resource_response(
    status: StatusCode,
    s: Stored,
    ctx: &Ctx,
    location: bool,
    what: &str,
) -> Reply {
    let mut b = HttpResponse::build(status);
    b.insert_header((header::ETAG, format!("W/\"{}\"", s.version)))
        .insert_header((header::LAST_MODIFIED, http_date(s.last_updated)));
    if location {
        b.insert_header((
            header::LOCATION,
            format!("{}/{}/{}/_history/{}", ctx.base(), s.ty, s.id, s.version),
        ));
    }
    match ctx.prefer.unwrap_or(Return::Representation) {
        Return::Minimal => Ok(b.finish()),
        Return::OperationOutcome => {
            let msg = format!("{what}: {}/{} version {}", s.ty, s.id, s.version);
            let mut r = outcome_response(status, &[Issue::information(msg)], ctx.format);
            for (k, v) in b.finish().headers() {
                r.headers_mut().insert(k.clone(), v.clone());
            }
            Ok(r)
        }
        Return::Representation => {
            let body = render(s.body, ctx.format, ctx.pretty)
                .map_err(|i| ctx.error(Error::Invalid(vec![i])))?;
            Ok(b.content_type(ctx.format.mime()).body(body))
        }
    }
}

fn written_response(w: Written, ctx: &Ctx, what: &str) -> Reply {
    let (status, what) = if w.created {
        (StatusCode::CREATED, "created")
    } else {
        (StatusCode::OK, what)
    };
    resource_response(status, w.stored, ctx, w.created, what)
}

/// The record store as the caller may use it: through their access policy when guarded.
/// (Always inside the e-prescription rules: see [`super::prescriptions::fhir_issuing`].)
pub fn fhir_for(state: &AppState, ctx: &Ctx) -> crate::fhir::Fhir {
    super::prescriptions::fhir_issuing(state, ctx, Vec::new())
}

/// `GET [type]/[id]`, with `If-None-Match` and `If-Modified-Since` (304).
pub async fn read(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Read, |ctx| async {
            let ctx = ctx;
            let (ty, id) = path.into_inner();
            let ty = resource_type(&ty, &ctx)?;
            scope(&ctx, ty, Perm::Read)?;
            let if_none_match = etag_header(&req, "if-none-match", ctx.format)?;
            let stored = read_visible(&state.fhir, &ctx, ty, &id).await?;
            if not_modified(&req, &stored, if_none_match) {
                return Ok(HttpResponse::NotModified()
                    .insert_header((header::ETAG, format!("W/\"{}\"", stored.version)))
                    .insert_header((header::LAST_MODIFIED, http_date(stored.last_updated)))
                    .finish());
            }
            // Prefer: return= concerns writes; a read always returns the resource.
            let mut ctx = ctx;
            ctx.prefer = None;
            resource_response(StatusCode::OK, stored, &ctx, false, "")
        })
        .await
}

fn not_modified(req: &HttpRequest, s: &Stored, if_none_match: Option<i64>) -> bool {
    if let Some(v) = if_none_match {
        return v == 0 || v == s.version;
    }
    let since = req
        .headers()
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<HttpDate>().ok());
    match since {
        // HTTP dates have whole seconds: compare at that precision.
        Some(d) => SystemTime::from(d)
            .duration_since(UNIX_EPOCH)
            .is_ok_and(|d| s.last_updated / 1000 <= d.as_secs() as i64),
        None => false,
    }
}

/// `GET [type]/[id]/_history/[vid]`.
pub async fn vread(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Vread, |ctx| async {
            let ctx = ctx;
            let (ty, id, vid) = path.into_inner();
            let ty = resource_type(&ty, &ctx)?;
            let version = vid.parse::<i64>().map_err(|_| {
                ApiError::new(
                    404,
                    "not-found",
                    format!("'{vid}' is not a version of this server (versions are 1, 2, ...)"),
                    ctx.format,
                )
            })?;
            scope(&ctx, ty, Perm::Read)?;
            let result = state.fhir.vread(ty, id.clone(), version).await;
            let stored = found(&state.fhir, &ctx, ty, &id, result).await?;
            // Prefer: return= concerns writes; a read always returns the resource.
            let mut ctx = ctx;
            ctx.prefer = None;
            resource_response(StatusCode::OK, stored, &ctx, false, "")
        })
        .await
}

/// `POST [type]`, with `If-None-Exist` for conditional create.
pub async fn create(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Create, |ctx| async {
            let ctx = ctx;
            let ty = resource_type(&path, &ctx)?;
            scope(&ctx, ty, Perm::Create)?;
            let condition = match req
                .headers()
                .get("if-none-exist")
                .and_then(|v| v.to_str().ok())
            {
                Some(q) => Some(
                    Condition::parse(
                        q.trim_start_matches('?')
                            .split_once('?')
                            .map_or(q.trim_start_matches('?'), |(_, q)| q),
                    )
                    .map_err(|e| ctx.error(e))?,
                ),
                None => None,
            };
            let body = read_body(&req, payload, state.max_body, &ctx).await?;
            let mut value = parse_body(&req, &body, ty, &ctx)?;
            // An e-prescription line is issued (checked, given its code) on the way in.
            let mut codes = Vec::new();
            if ty == "MedicationRequest" && crate::prescribing::is_line(&value) {
                let mut one = [serde_json::json!({ "resource": value.take() })];
                codes = super::prescriptions::issue_entries(
                    &state,
                    &ctx,
                    &mut one,
                    &|_| "MedicationRequest".into(),
                    false,
                )
                .await?;
                value = one[0]["resource"].take();
            }
            let w = super::prescriptions::fhir_issuing(&state, &ctx, codes)
                .create(ty, value, condition)
                .await
                .map_err(|e| ctx.error(e))?;
            written_response(w, &ctx, "found by If-None-Exist")
        })
        .await
}

/// `PUT [type]/[id]`: update, or create with the client's id; `If-Match` for optimistic locking.
pub async fn update(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Update, |ctx| async {
            let ctx = ctx;
            let (ty, id) = path.into_inner();
            let ty = resource_type(&ty, &ctx)?;
            scope(&ctx, ty, Perm::Update)?;
            let if_match = etag_header(&req, "if-match", ctx.format)?;
            let body = read_body(&req, payload, state.max_body, &ctx).await?;
            let value = parse_body(&req, &body, ty, &ctx)?;
            let w = fhir_for(&state, &ctx)
                .update(ty, id, value, if_match)
                .await
                .map_err(|e| ctx.error(e))?;
            written_response(w, &ctx, "updated")
        })
        .await
}

/// `PUT [type]?criteria`: conditional update.
pub async fn conditional_update(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Update, |ctx| async {
            let ctx = ctx;
            let ty = resource_type(&path, &ctx)?;
            scope(&ctx, ty, Perm::Update)?;
            let condition = criteria(&req, &ctx)?;
            let if_match = etag_header(&req, "if-match", ctx.format)?;
            let body = read_body(&req, payload, state.max_body, &ctx).await?;
            let value = parse_body(&req, &body, ty, &ctx)?;
            let w = fhir_for(&state, &ctx)
                .conditional_update(ty, condition, value, if_match)
                .await
                .map_err(|e| ctx.error(e))?;
            written_response(w, &ctx, "updated")
        })
        .await
}

/// The search criteria of a conditional interaction: the query string without `_format` etc.
fn criteria(req: &HttpRequest, ctx: &Ctx) -> Result<Condition, ApiError> {
    let q: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
        .collect();
    if q.is_empty() {
        return Err(ApiError::new(
            400,
            "required",
            "a conditional interaction needs search criteria in the URL",
            ctx.format,
        ));
    }
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(q)
        .finish();
    Condition::parse(&query).map_err(|e| ctx.error(e))
}

/// `PATCH [type]/[id]` with a JSON Patch body.
pub async fn patch(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    state.reply(&req, Interaction::Patch, |ctx| async {
        let ctx = ctx;
        let (ty, id) = path.into_inner();
        let ty = resource_type(&ty, &ctx)?;
        scope(&ctx, ty, Perm::Update)?;
        let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let ct = ct.trim().to_ascii_lowercase();
        let if_match = etag_header(&req, "if-match", ctx.format)?;
        let body = read_body(&req, payload, state.max_body, &ctx).await?;
        let patch = if ct.starts_with("application/json-patch+json") {
            crate::fhir::Patch::Json(serde_json::from_slice(&body)
                .map_err(|e| ApiError::new(400, "structure", format!("the body is not a JSON Patch document: {e}"), ctx.format))?)
        } else if ct.starts_with("application/fhir+json") || ct.starts_with("application/fhir+xml")
            || ct.starts_with("application/json") || ct.starts_with("application/xml")
        {
            crate::fhir::Patch::FhirPath(parse_body(&req, &body, "Parameters", &ctx)?)
        } else {
            return Err(ApiError::new(
                415,
                "not-supported",
                format!("PATCH takes a JSON Patch (application/json-patch+json) or a FHIRPath Patch Parameters resource (application/fhir+json or +xml), not '{ct}'"),
                ctx.format,
            ));
        };
        let w = fhir_for(&state, &ctx).patch(ty, id, patch, if_match).await.map_err(|e| ctx.error(e))?;
        written_response(w, &ctx, "patched")
    })
    .await
}

/// `DELETE [type]/[id]`.
pub async fn delete(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Delete, |ctx| async {
            let ctx = ctx;
            let (ty, id) = path.into_inner();
            let ty = resource_type(&ty, &ctx)?;
            scope(&ctx, ty, Perm::Delete)?;
            let deleted = fhir_for(&state, &ctx)
                .delete(ty, id)
                .await
                .map_err(|e| ctx.error(e))?;
            Ok(deleted_response(deleted.as_ref(), &ctx))
        })
        .await
}

/// `DELETE [type]?criteria`.
pub async fn conditional_delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Delete, |ctx| async {
            let ctx = ctx;
            let ty = resource_type(&path, &ctx)?;
            scope(&ctx, ty, Perm::Delete)?;
            let condition = criteria(&req, &ctx)?;
            let deleted = fhir_for(&state, &ctx)
                .conditional_delete(ty, condition)
                .await
                .map_err(|e| ctx.error(e))?;
            Ok(deleted_response(deleted.as_ref(), &ctx))
        })
        .await
}

fn deleted_response(deleted: Option<&Stored>, ctx: &Ctx) -> HttpResponse {
    let msg = match deleted {
        Some(d) => format!("deleted {}/{} (version {})", d.ty, d.id, d.version),
        None => "nothing to delete: no live resource matched".to_string(),
    };
    let mut r = match ctx.prefer {
        Some(Return::OperationOutcome) | Some(Return::Representation) => {
            outcome_response(StatusCode::OK, &[Issue::information(msg)], ctx.format)
        }
        _ => HttpResponse::NoContent().finish(),
    };
    if let Some(d) = deleted
        && let Ok(v) = header::HeaderValue::from_str(&format!("W/\"{}\"", d.version))
    {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// `GET [type]?...`: search (R4 §3.1.1).
pub async fn search(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let query = req.query_string().to_string();
    search_with(req, Some(path.into_inner()), query, state).await
}

/// `POST [type]/_search` with form-encoded parameters.
pub async fn search_post(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let query = form_query(&req, &body);
    search_with(req, Some(path.into_inner()), query, state).await
}

/// `GET [type]/[id]/[compartment type]?...` (R4 §3.1.0.4.1): a search within the compartment
/// of a resource; and `GET Patient/[id]/$everything` (with `_since`, `_type`, `_count`): the
/// whole record, paged.
pub async fn compartment(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (owner, id, what) = path.into_inner();
    let query = req.query_string().to_string();
    let everything = what == "$everything";
    let ty = if everything { None } else { Some(what) };
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if everything {
        // `_since` is `_lastUpdated=ge...` here; `start`/`end` (care dates) are not supported.
        for (k, v) in pairs.iter_mut() {
            if k == "_since" {
                *k = "_lastUpdated".into();
                *v = format!("ge{v}");
            }
        }
    }
    let scope = Some((owner, id, everything));
    search_in(req, ty, pairs, scope, state).await
}

/// `GET /fhir?_type=...`: search across types.
pub async fn search_system(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let query = req.query_string().to_string();
    search_with(req, None, query, state).await
}

/// `POST /fhir/_search`.
pub async fn search_system_post(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let query = form_query(&req, &body);
    search_with(req, None, query, state).await
}

/// The URL's query and a form body together (`POST _search` may use both).
fn form_query(req: &HttpRequest, body: &[u8]) -> String {
    let mut query = req.query_string().to_string();
    if let Ok(form) = std::str::from_utf8(body)
        && !form.is_empty()
    {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(form);
    }
    query
}

fn page_link(
    base: &str,
    ty: Option<&str>,
    used: &[(String, String)],
    extra: Option<(&str, &str)>,
) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in used {
        q.append_pair(k, v);
    }
    if let Some((k, v)) = extra {
        q.append_pair(k, v);
    }
    let q = q.finish();
    match ty {
        Some(t) => format!("{base}/{t}?{q}"),
        None => format!("{base}?{q}"),
    }
}

async fn search_with(
    req: HttpRequest,
    ty: Option<String>,
    query: String,
    state: web::Data<AppState>,
) -> HttpResponse {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    search_in(req, ty, pairs, None, state).await
}

/// A search, within a compartment `(type, id, $everything?)` when given.
async fn search_in(
    req: HttpRequest,
    ty: Option<String>,
    pairs: Vec<(String, String)>,
    compartment: Option<(String, String, bool)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let pairs = crate::prescribing::canonical_codes(pairs);
    state.reply(&req, Interaction::Search, |ctx| async {
        let ctx = ctx;
        let ty = match &ty {
            Some(t) => Some(resource_type(t, &ctx)?),
            None => None,
        };
        let mut spec = crate::fhir::search::query::parse(ty, &pairs, ctx.strict).map_err(|e| ctx.error(e))?;
        spec.localise(ctx.base());
        for t in &spec.types {
            scope(&ctx, t, Perm::Search)?;
        }
        if let Some(g) = &ctx.guard
            && compartment.is_none()
        {
            // (A compartment's owner must be readable first: see below.)
            g.may_search(&spec.types, &pairs).map_err(|e| ctx.error(e))?;
        }
        if let Some(auth) = &state.auth
            && spec.types.iter().any(|t| t == "AuditEvent")
        {
            // The trail a caller reads is never behind the requests they made.
            auth.audit.flush().await;
        }
        let mut link_path: Option<String> = ty.map(str::to_string);
        if let Some((owner, id, everything)) = &compartment {
            let owner_ty = resource_type(owner, &ctx)?;
            if *everything && owner_ty != "Patient" {
                return Err(ctx.error(Error::NotFound(format!("{owner_ty}/$everything is not an operation of this server (Patient/$everything is)"))));
            }
            // The owner must exist (404 / 410 otherwise), and be the caller's to see.
            read_visible(&state.fhir, &ctx, owner_ty, id).await?;
            crate::fhir::search::within_compartment(&mut spec, owner_ty, id, *everything).map_err(|e| ctx.error(e))?;
            link_path = Some(match ty {
                Some(t) => format!("{owner_ty}/{id}/{t}"),
                None => format!("{owner_ty}/{id}/$everything"),
            });
        }
        if compartment.is_none()
            && let Some(me) = ctx.guard.as_ref().filter(|g| g.principal.role == crate::auth::Role::Patient).and_then(|g| g.principal.patient.clone())
            && !spec.types.is_empty()
            && spec.types.iter().all(|t| crate::fhir::compartment::holds("Patient", t))
        {
            // A patient's search runs inside their own compartment (so pages and totals are theirs).
            crate::fhir::search::within_compartment(&mut spec, "Patient", &me, false).map_err(|e| ctx.error(e))?;
        }
        let page = super::access::search_readable(state.fhir.store(), ctx.guard.as_ref(), spec.clone()).await.map_err(|e| ctx.error(e))?;
        let base = ctx.base();
        let mut entries: Vec<EntryOut> = Vec::with_capacity(page.matches.len() + page.included.len() + 1);
        for (mode, rows) in [("match", &page.matches), ("include", &page.included)] {
            for f in rows.iter() {
                let body = crate::fhir::search::shape(&f.body, &f.res_type, &spec).unwrap_or_else(|| f.body.clone());
                entries.push(EntryOut {
                    full_url: Some(format!("{base}/{}/{}", f.res_type, f.res_id)),
                    resource: Some(body),
                    search_mode: Some(mode),
                    ..Default::default()
                });
            }
        }
        if !spec.ignored.is_empty() {
            entries.push(EntryOut {
                resource_value: Some(crate::fhir::outcome::to_value(&spec.ignored)),
                search_mode: Some("outcome"),
                ..Default::default()
            });
        }
        let lp = link_path.as_deref();
        let mut links = vec![("self", page_link(base, lp, &spec.used, None))];
        if let Some(c) = &page.next {
            links.push(("next", page_link(base, lp, &spec.used, Some(("_after", c)))));
        }
        if let Some(c) = &page.previous {
            links.push(("previous", page_link(base, lp, &spec.used, Some(("_before", c)))));
        }
        let json = bundle_json("searchset", page.total, &links, &entries);
        bundle_response(json, &ctx)
    })
    .await
}

/// A Bundle response in the negotiated format.
pub fn bundle_response(json: String, ctx: &Ctx) -> Reply {
    let body =
        render(json, ctx.format, ctx.pretty).map_err(|i| ctx.error(Error::Invalid(vec![i])))?;
    Ok(HttpResponse::Ok()
        .content_type(ctx.format.mime())
        .body(body))
}

/// `GET [type]/[id]/_history`.
pub async fn history_instance(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::HistoryInstance, |ctx| async {
            let ctx = ctx;
            let (ty, id) = path.into_inner();
            let ty = resource_type(&ty, &ctx)?;
            history(
                &req,
                &ctx,
                &state,
                HistoryScope::Instance(ty.to_string(), id.clone()),
                &format!("{ty}/{id}/_history"),
            )
            .await
        })
        .await
}

/// `GET [type]/_history`.
pub async fn history_type(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::HistoryType, |ctx| async {
            let ctx = ctx;
            let ty = resource_type(&path, &ctx)?;
            history(
                &req,
                &ctx,
                &state,
                HistoryScope::Type(ty.to_string()),
                &format!("{ty}/_history"),
            )
            .await
        })
        .await
}

/// `GET /_history`.
pub async fn history_system(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    state
        .reply(&req, Interaction::HistorySystem, |ctx| async {
            let ctx = ctx;
            history(&req, &ctx, &state, HistoryScope::System, "_history").await
        })
        .await
}

/// A history Bundle (R4 §3.1.0.9): newest first, `_since`, `_at`, `_count`, and a `next` link
/// that continues after the last entry (stable while new versions arrive).
async fn history(
    req: &HttpRequest,
    ctx: &Ctx,
    state: &AppState,
    scope: HistoryScope,
    path: &str,
) -> Reply {
    let bad = |m: String| ApiError::new(400, "value", m, ctx.format);
    let mut q = HistoryQuery {
        scope,
        since: None,
        at: None,
        before: None,
        limit: 50,
        types: Vec::new(),
    };
    let mut kept: Vec<(String, String)> = Vec::new();
    // `_elements` (as in search): each version cut to these, marked SUBSETTED. A commune node
    // lists upstream's changes so (`_elements=id`) and fetches only what it does not have.
    let mut elements: Option<Vec<String>> = None;
    for (k, v) in form_urlencoded::parse(req.query_string().as_bytes()) {
        match k.as_ref() {
            // System level, as R5 defines it: only these types (a commune node leaves out
            // upstream's audit trail).
            "_type" if matches!(q.scope, HistoryScope::System) => {
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if crate::fhir::schema::R4.resource_type(t).is_none() {
                        return Err(bad(format!("_type '{t}' is not a FHIR R4 resource type")));
                    }
                    q.types.push(t.to_string());
                }
                kept.push((k.into_owned(), v.into_owned()));
            }
            "_elements" => {
                elements = Some(
                    v.split(',')
                        .map(|e| e.trim().to_string())
                        .filter(|e| !e.is_empty())
                        .collect(),
                );
                kept.push((k.into_owned(), v.into_owned()));
            }
            "_count" => {
                q.limit = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(format!("_count '{v}' is not a positive number")))?
                    .min(1000);
                kept.push((k.into_owned(), v.into_owned()));
            }
            "_since" => {
                let d = datetime::parse_instant(&v).map_err(|_| {
                    bad(format!(
                        "_since '{v}' is not an instant like 2024-01-01T00:00:00Z"
                    ))
                })?;
                q.since = Some(d.range().0);
                kept.push((k.into_owned(), v.into_owned()));
            }
            "_at" => {
                let d = datetime::parse_date_time(&v)
                    .map_err(|_| bad(format!("_at '{v}' is not a date or dateTime")))?;
                q.at = Some(d.range());
                kept.push((k.into_owned(), v.into_owned()));
            }
            "_page" => {
                let (lu, pk) = v
                    .split_once('.')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .ok_or_else(|| bad(format!("_page '{v}' is not a page of this server")))?;
                q.before = Some((lu, pk));
            }
            "_format" | "_pretty" => kept.push((k.into_owned(), v.into_owned())),
            other => {
                return Err(bad(format!(
                    "'{other}' is not a parameter of history (use _count, _since, _at, _elements, and _type at system level)"
                )));
            }
        }
    }
    let limit = q.limit;
    if let Some(g) = &ctx.guard {
        match &q.scope {
            HistoryScope::Instance(t, _) | HistoryScope::Type(t) => {
                g.scope(t, Perm::Read).map_err(|e| ctx.error(e))?
            }
            HistoryScope::System => {}
        }
    }
    let instance = matches!(q.scope, HistoryScope::Instance(..));
    let (mut rows, mut total) = state.fhir.history(q).await.map_err(|e| ctx.error(e))?;
    let fetched = rows.len();
    let last_key = rows.last().map(|s| (s.last_updated, s.pk));
    if ctx.guard.is_some() {
        // A deletion is judged by the version it deleted: whoever could read that may know it
        // is gone (a commune node pulls deletions so).
        let deleted: Vec<(String, String, i64)> = rows
            .iter()
            .filter(|s| s.deleted && s.version > 1)
            .map(|s| (s.ty.clone(), s.id.clone(), s.version - 1))
            .collect();
        let mut before: std::collections::HashMap<(String, String), String> = state
            .fhir
            .store()
            .read(move |s| {
                let mut out = std::collections::HashMap::new();
                for (ty, id, v) in deleted {
                    if let Some(r) = s.version(&ty, &id, v)? {
                        out.insert((ty, id), r.body);
                    }
                }
                Ok::<_, Error>(out)
            })
            .await
            .map_err(|e| ctx.error(e))?;
        let items: Vec<(String, String)> = rows
            .iter()
            .map(|s| {
                let body = if s.deleted {
                    before
                        .remove(&(s.ty.clone(), s.id.clone()))
                        .unwrap_or_default()
                } else {
                    s.body.clone()
                };
                (s.ty.clone(), body)
            })
            .collect();
        let ok = readable(state.fhir.store(), ctx.guard.as_ref(), items)
            .await
            .map_err(|e| ctx.error(e))?;
        let any_seen = rows.iter().zip(&ok).any(|(s, ok)| *ok && !s.deleted);
        let mut i = 0;
        rows.retain(|s| {
            i += 1;
            ok[i - 1] || (s.deleted && instance && any_seen)
        });
        if instance && !any_seen && fetched > 0 {
            return Err(ctx.error(Error::NotFound("the resource is not known".into())));
        }
        if rows.len() != fetched {
            total = None;
        }
    }
    let link = |extra: Option<String>| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        s.extend_pairs(kept.iter());
        if let Some(p) = extra {
            s.append_pair("_page", &p);
        }
        let qs = s.finish();
        if qs.is_empty() {
            format!("{}/{path}", ctx.base())
        } else {
            format!("{}/{path}?{qs}", ctx.base())
        }
    };
    let mut links = vec![("self", link(None))];
    if fetched as i64 == limit
        && let Some((lu, pk)) = last_key
    {
        links.push(("next", link(Some(format!("{lu}.{pk}")))));
    }
    let entries: Vec<EntryOut> = rows
        .into_iter()
        .map(|mut s| {
            if let Some(e) = &elements
                && !s.deleted
                && let Some(cut) = crate::fhir::search::shape_with(
                    &s.body,
                    &s.ty,
                    Some(e),
                    crate::fhir::search::Summary::False,
                )
            {
                s.body = cut;
            }
            history_entry(s, ctx.base())
        })
        .collect();
    let json = bundle_json("history", total, &links, &entries);
    bundle_response(json, ctx)
}

fn history_entry(s: Stored, base: &str) -> EntryOut {
    use crate::fhir::bundle_out::ResponseOut;
    let (method, url, status) = match s.method {
        Method::Create => ("POST", s.ty.clone(), "201 Created"),
        Method::Delete => ("DELETE", format!("{}/{}", s.ty, s.id), "204 No Content"),
        Method::Patch => ("PATCH", format!("{}/{}", s.ty, s.id), "200 OK"),
        Method::Update if s.version == 1 => ("PUT", format!("{}/{}", s.ty, s.id), "201 Created"),
        Method::Update => ("PUT", format!("{}/{}", s.ty, s.id), "200 OK"),
    };
    EntryOut {
        full_url: Some(format!("{base}/{}/{}", s.ty, s.id)),
        response: Some(ResponseOut {
            status: status.into(),
            etag: Some(format!("W/\"{}\"", s.version)),
            last_modified: Some(s.last_updated),
            ..Default::default()
        }),
        request: Some((method, url)),
        resource: (!s.deleted).then_some(s.body),
        ..Default::default()
    }
}
