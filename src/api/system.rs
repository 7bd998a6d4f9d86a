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
            };
            let reparse = || {
                parse_resource(&body, fmt)
                    .map(|(v, _)| v)
                    .map_err(Error::Invalid)
            };
            let json = bundle::process(&state.fhir, value, reparse, &opts)
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
