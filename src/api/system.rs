//! System-level interactions: the CapabilityStatement and transaction/batch Bundles.

use actix_web::{HttpRequest, HttpResponse, web};

use super::error::ApiError;
use super::negotiate::{Return, body_format};
use super::rest::{bundle_response, read_body};
use super::{AppState, Interaction};
use crate::error::Error;
use crate::fhir::bundle::{self, BundleOptions};
use crate::fhir::capability::capability_statement;
use crate::fhir::format::parse_resource;

/// `GET /fhir/metadata`.
pub async fn metadata(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    state
        .reply(&req, Interaction::Capabilities, |ctx| async {
            let ctx = ctx;
            let json = capability_statement(ctx.base(), state.fhir.conformance()).to_string();
            bundle_response(json, &ctx)
        })
        .await
}

/// `POST /fhir` with a transaction or batch Bundle.
pub async fn transaction(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Transaction, |ctx| async {
            let ctx = ctx;
            let body = read_body(&req, payload, state.max_body, &ctx).await?;
            let fmt = body_format(&req, &body, ctx.format)?;
            let (value, ty) =
                parse_resource(&body, fmt).map_err(|i| ctx.error(Error::Invalid(i)))?;
            if ty != "Bundle" {
                return Err(ApiError::new(
                    400,
                    "invalid",
                    format!("POST to the base URL takes a Bundle, not a {ty}"),
                    ctx.format,
                ));
            }
            let opts = BundleOptions {
                base: ctx.base().to_string(),
                representation: ctx.prefer == Some(Return::Representation),
                once: None,
            };
            if let Some(g) = &ctx.guard {
                bundle_scopes(g, &value, ctx.base()).map_err(|e| ctx.error(e))?;
            }
            let mut value = value;
            // E-prescription lines are issued (checked, given their codes) on the way in; a
            // retry then starts from the issued Bundle, not the posted one.
            let mut codes = Vec::new();
            if value.get("type").and_then(serde_json::Value::as_str) == Some("transaction")
                && let Some(serde_json::Value::Array(entries)) = value.get_mut("entry")
            {
                codes = super::prescriptions::issue_entries(
                    &state,
                    &ctx,
                    entries,
                    &|i| format!("Bundle.entry[{i}].resource"),
                    false,
                )
                .await?;
            }
            let issued = (!codes.is_empty()).then(|| value.clone());
            let reparse = || match &issued {
                Some(v) => Ok(v.clone()),
                None => parse_resource(&body, fmt)
                    .map(|(v, _)| v)
                    .map_err(Error::Invalid),
            };
            let fhir = super::prescriptions::fhir_issuing(&state, &ctx, codes);
            let json = bundle::process(&fhir, value, reparse, &opts)
                .await
                .map_err(|e| ctx.error(e))?;
            let json = super::access::redact_bundle(state.fhir.store(), ctx.guard.as_ref(), json)
                .await
                .map_err(|e| ctx.error(e))?;
            bundle_response(json, &ctx)
        })
        .await
}

/// `POST /fhir/$reindex`: puts the server's own SearchParameter resources in force and rebuilds
/// the search index under them (as `yba reindex` does), then says how many resources it indexed.
pub async fn reindex(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            if ctx
                .guard
                .as_ref()
                .is_some_and(|g| g.principal.role != crate::auth::Role::Admin)
            {
                return Err(super::access::forbidden(
                    "only an administrator may reindex",
                    ctx.format,
                ));
            }
            let store = state.fhir.store();
            let custom = crate::fhir::search::load_custom_params(store)
                .await
                .map_err(|e| ctx.error(e))?;
            let n = crate::fhir::search::reindex(store, &|_, _| {})
                .await
                .map_err(|e| ctx.error(e))?;
            let out = serde_json::json!({"resourceType": "Parameters", "parameter": [
                {"name": "indexed", "valueInteger": n},
                {"name": "customSearchParameters", "valueInteger": custom}
            ]});
            bundle_response(out.to_string(), &ctx)
        })
        .await
}

/// The scopes every entry of a Bundle needs, checked before anything runs: one entry beyond the
/// token's scopes refuses the whole Bundle (403, naming the entry).
fn bundle_scopes(
    g: &crate::auth::policy::Guard,
    bundle: &serde_json::Value,
    base: &str,
) -> Result<(), Error> {
    use crate::auth::scopes::Perm;
    let Some(entries) = bundle.get("entry").and_then(serde_json::Value::as_array) else {
        return Ok(());
    };
    for (i, e) in entries.iter().enumerate() {
        let method = e
            .pointer("/request/method")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        let url = e
            .pointer("/request/url")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        let url = url
            .strip_prefix(base)
            .map(|u| u.trim_start_matches('/'))
            .unwrap_or(url);
        let (path, query) = url
            .split_once('?')
            .map_or((url, None), |(p, q)| (p, Some(q)));
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let Some(ty) = segments.next() else { continue };
        let instance = segments.next().is_some();
        let perm = match method {
            "GET" | "HEAD" if instance => Perm::Read,
            "GET" | "HEAD" => Perm::Search,
            "POST" => Perm::Create,
            "PUT" | "PATCH" => Perm::Update,
            "DELETE" => Perm::Delete,
            _ => continue,
        };
        let entry = |err| Error::Entry {
            index: i,
            source: Box::new(err),
        };
        g.scope(ty, perm).map_err(entry)?;
        if perm == Perm::Search {
            let pairs: Vec<(String, String)> =
                form_urlencoded::parse(query.unwrap_or("").as_bytes())
                    .into_owned()
                    .collect();
            g.may_search(&[ty.to_string()], &pairs).map_err(entry)?;
        }
        // A conditional write searches as well.
        if query.is_some() && perm != Perm::Search {
            g.scope(ty, Perm::Search).map_err(entry)?;
        }
    }
    Ok(())
}
