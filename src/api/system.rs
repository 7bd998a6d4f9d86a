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
            let json = capability_statement(ctx.base()).to_string();
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
