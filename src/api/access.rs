//! The edge of the access policy: the bearer token of each FHIR request becomes a [`Guard`],
//! every request leaves an audit record, and what a handler is about to return passes the
//! policy first.

use std::sync::Arc;

use actix_web::HttpRequest;
use actix_web::http::header;
use serde_json::Value;

use super::Interaction;
use super::error::ApiError;
use super::negotiate::Ctx;
use crate::auth::Principal;
use crate::auth::audit::{Audit, Record};
use crate::auth::policy::Guard;
use crate::auth::ratelimit::RateLimit;
use crate::auth::scopes::Perm;
use crate::auth::service::Tokens;
use crate::error::Error;
use crate::fhir::Format;
use crate::store::Store;

/// Sign-in and audit, when the server runs with auth (the default).
pub struct AuthState {
    pub tokens: Tokens,
    pub audit: Audit,
    pub trust_forwarded: bool,
    pub limits: Option<RateLimit>,
}

/// The header a practitioner sends, with a reason, to reach a record outside their care.
pub const BREAK_GLASS: &str = "x-break-glass";

/// The answer to a caller over their rate limit: 429, and when to come back.
pub fn throttled(wait: std::time::Duration, format: Format) -> actix_web::HttpResponse {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let e = ApiError::new(
        429,
        "throttled",
        format!("too many requests from this caller; try again in {secs} s"),
        format,
    );
    let mut r = actix_web::ResponseError::error_response(&e);
    if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

impl AuthState {
    /// Takes one request from the caller's allowance (a system by client id, a person by
    /// username).
    pub fn limit(&self, p: &Principal) -> Result<(), std::time::Duration> {
        let Some(l) = &self.limits else {
            return Ok(());
        };
        if p.role == crate::auth::Role::System {
            l.take(&format!("client:{}", p.client_id))
        } else {
            l.take(&format!("user:{}", p.subject))
        }
    }

    /// The caller's network address.
    pub fn address(&self, req: &HttpRequest) -> Option<String> {
        if self.trust_forwarded
            && let Some(f) = req
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            && let Some(first) = f.split(',').next().map(str::trim).filter(|s| !s.is_empty())
        {
            return Some(first.to_string());
        }
        req.peer_addr().map(|a| a.ip().to_string())
    }

    /// The guard of the request's bearer token; 401 without a valid one.
    pub async fn guard(&self, req: &HttpRequest, ctx: &Ctx) -> Result<Arc<Guard>, ApiError> {
        let unauthorized = |m: &str| {
            let mut e = ApiError::from_error(Error::Unauthorized(m.to_string()), ctx.format);
            e.status = actix_web::http::StatusCode::UNAUTHORIZED;
            e
        };
        let Some(auth) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(unauthorized(
                "this request needs an access token: send Authorization: Bearer <token> (see /.well-known/smart-configuration)",
            ));
        };
        let Some(token) = auth
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
        else {
            return Err(unauthorized(
                "the Authorization header must be 'Bearer <token>'",
            ));
        };
        let issuer = issuer_of(ctx);
        let mut principal = self
            .tokens
            .authenticate(token, &issuer)
            .await
            .map_err(|e| unauthorized(e.describe()))?;
        principal.address = self.address(req);
        principal.break_glass = req
            .headers()
            .get(BREAK_GLASS)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| r.chars().take(500).collect());
        Ok(Arc::new(Guard::new(principal)))
    }

    /// Records what a FHIR request did.
    pub async fn record(
        &self,
        req: &HttpRequest,
        interaction: Interaction,
        guard: Option<&Guard>,
        status: u16,
        detail: Option<String>,
    ) {
        let touched = guard.map(|g| g.touched()).unwrap_or_default();
        let address = self.address(req);
        let query = (interaction == Interaction::Search)
            .then(|| req.query_string())
            .filter(|q| !q.is_empty());
        self.audit
            .record(&Record {
                action: action_of(interaction),
                interaction: interaction.name(),
                principal: guard.map(|g| &g.principal),
                attempted: None,
                status,
                detail,
                patients: &touched.patients,
                resources: &touched.resources,
                query,
                consents: &touched.consents,
                break_glass: touched.break_glass,
                address: address.as_deref(),
            })
            .await;
    }
}

/// The issuer of our tokens: the FHIR base URL.
pub fn issuer_of(ctx: &Ctx) -> String {
    ctx.base().to_string()
}

fn action_of(i: Interaction) -> &'static str {
    match i {
        Interaction::Create => "C",
        Interaction::Update | Interaction::Patch => "U",
        Interaction::Delete => "D",
        Interaction::Read
        | Interaction::Vread
        | Interaction::HistoryInstance
        | Interaction::HistoryType
        | Interaction::HistorySystem => "R",
        _ => "E",
    }
}

/// The scope check of an interaction, when the request is guarded.
pub fn scope(ctx: &Ctx, ty: &str, perm: Perm) -> Result<(), ApiError> {
    match &ctx.guard {
        Some(g) => g.scope(ty, perm).map_err(|e| ctx.error(e)),
        None => Ok(()),
    }
}

/// Which of `items` (type, body) the caller may read (all, when unguarded).
pub async fn readable(
    store: &Store,
    guard: Option<&Arc<Guard>>,
    items: Vec<(String, String)>,
) -> Result<Vec<bool>, Error> {
    let Some(g) = guard else {
        return Ok(vec![true; items.len()]);
    };
    let g = g.clone();
    store
        .read(move |s| {
            items
                .iter()
                .map(|(ty, body)| {
                    let scoped = g.scope(ty, Perm::Read).is_ok();
                    Ok(scoped && g.may_read(s, ty, body)?)
                })
                .collect::<Result<Vec<bool>, Error>>()
        })
        .await
}

/// Runs a search and keeps, of its matches and included resources, what the caller may read;
/// the total is dropped when something was withheld (it would count what they may not see).
pub async fn search_readable(
    store: &Store,
    guard: Option<&Arc<Guard>>,
    spec: crate::fhir::search::SearchSpec,
) -> Result<crate::fhir::search::SearchPage, Error> {
    let mut page = crate::fhir::search::run(store, spec).await?;
    if guard.is_none() {
        return Ok(page);
    }
    let items: Vec<(String, String)> = page
        .matches
        .iter()
        .chain(page.included.iter())
        .map(|f| (f.res_type.clone(), f.body.clone()))
        .collect();
    let ok = readable(store, guard, items).await?;
    let (matches_ok, included_ok) = ok.split_at(page.matches.len());
    let before = page.matches.len();
    let mut keep = matches_ok.iter();
    page.matches
        .retain(|_| keep.next().copied().unwrap_or(false));
    let mut keep = included_ok.iter();
    page.included
        .retain(|_| keep.next().copied().unwrap_or(false));
    if page.matches.len() != before {
        page.total = None;
    }
    Ok(page)
}

/// One resource the caller asked for by id: 404 if they may not see it (its existence is not
/// theirs to learn either).
pub async fn must_read(
    store: &Store,
    ctx: &Ctx,
    ty: &str,
    id: &str,
    body: &str,
) -> Result<(), ApiError> {
    let ok = readable(
        store,
        ctx.guard.as_ref(),
        vec![(ty.to_string(), body.to_string())],
    )
    .await
    .map_err(|e| ctx.error(e))?;
    if ok.first().copied().unwrap_or(false) {
        Ok(())
    } else {
        Err(ctx.error(Error::NotFound(format!("{ty}/{id} is not known"))))
    }
}

/// What a read by id found, as the caller may learn it: a deletion is 410 Gone only to those
/// who could read what was deleted; to anyone else the id is simply not known (404).
pub async fn found(
    fhir: &crate::fhir::Fhir,
    ctx: &Ctx,
    ty: &str,
    id: &str,
    result: Result<crate::fhir::Stored, Error>,
) -> Result<crate::fhir::Stored, ApiError> {
    match result {
        Err(Error::Gone(m)) if ctx.guard.is_some() => {
            let (versions, _) = fhir
                .history(crate::store::HistoryQuery {
                    scope: crate::store::HistoryScope::Instance(ty.to_string(), id.to_string()),
                    since: None,
                    at: None,
                    before: None,
                    limit: 2,
                    types: Vec::new(),
                })
                .await
                .map_err(|e| ctx.error(e))?;
            match versions.iter().find(|v| !v.deleted) {
                Some(live) => {
                    must_read(fhir.store(), ctx, ty, id, &live.body).await?;
                    Err(ctx.error(Error::Gone(m)))
                }
                None => Err(ctx.error(Error::NotFound(format!("{ty}/{id} is not known")))),
            }
        }
        Err(e) => Err(ctx.error(e)),
        Ok(stored) => {
            must_read(fhir.store(), ctx, ty, id, &stored.body).await?;
            Ok(stored)
        }
    }
}

/// Reads `ty/id` as the caller may: the current version, or 404 (410 as [`found`] says).
pub async fn read_visible(
    fhir: &crate::fhir::Fhir,
    ctx: &Ctx,
    ty: &'static str,
    id: &str,
) -> Result<crate::fhir::Stored, ApiError> {
    let result = fhir.read(ty, id.to_string()).await;
    found(fhir, ctx, ty, id, result).await
}

/// Takes out of a transaction or batch response every resource the caller may not read (a GET
/// entry, or a searchset inside one), answering 404 in its place.
pub async fn redact_bundle(
    store: &Store,
    guard: Option<&Arc<Guard>>,
    json: String,
) -> Result<String, Error> {
    let Some(g) = guard else {
        return Ok(json);
    };
    let Ok(mut bundle) = serde_json::from_str::<Value>(&json) else {
        return Ok(json);
    };
    let g = g.clone();
    let bundle = store
        .read(move |s| {
            redact(s, &g, &mut bundle)?;
            Ok::<_, Error>(bundle)
        })
        .await?;
    Ok(bundle.to_string())
}

fn redact(s: &mut crate::store::Session<'_>, g: &Guard, bundle: &mut Value) -> Result<(), Error> {
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for e in entries.iter_mut() {
        let Some(r) = e.get_mut("resource") else {
            continue;
        };
        let ty = r
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if ty == "Bundle" {
            let count = |r: &Value| r.get("entry").and_then(Value::as_array).map_or(0, Vec::len);
            let before = count(r);
            redact(s, g, r)?;
            if count(r) != before
                && let Some(o) = r.as_object_mut()
            {
                o.remove("total");
            }
            continue;
        }
        if ty == "OperationOutcome" {
            continue;
        }
        let allowed = g.scope(&ty, Perm::Read).is_ok() && g.may_read(s, &ty, &r.to_string())?;
        if !allowed {
            *r = Value::Null;
            if let Some(o) = e.as_object_mut() {
                o.remove("resource");
                o.remove("fullUrl");
                o.insert(
                    "response".into(),
                    serde_json::json!({"status": "404 Not Found", "outcome": crate::fhir::outcome::to_value(&[crate::fhir::outcome::Issue::error("not-found", "not known")])}),
                );
            }
        }
    }
    // Searchset entries withheld above are dropped rather than left empty.
    if bundle.get("type").and_then(Value::as_str) == Some("searchset")
        && let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut)
    {
        entries.retain(|x| x.get("resource").is_some() || x.get("search").is_none());
    }
    Ok(())
}

/// An ApiError for a scope refusal in the given format.
pub fn forbidden(msg: impl Into<String>, format: Format) -> ApiError {
    ApiError::from_error(Error::Forbidden(msg.into()), format)
}
