//! A commune node's sync, for the station: `GET /api/sync/status` (the last round, the push
//! queue, the open conflicts), `POST /api/sync/run` (a round now), and
//! `POST /api/sync/conflicts/{id}/resolve` (a conflict reviewed).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::consultations::json_reply as reply;
use super::error::ApiError;
use super::negotiate::Ctx;
use super::{AppState, Interaction};
use crate::auth::Role;
use crate::error::Error;

/// The node, for the station's staff (its practitioners and administrators): the status names
/// records and what went wrong with them.
fn node<'s>(state: &'s AppState, ctx: &Ctx) -> Result<&'s crate::sync::Node, ApiError> {
    if let Some(g) = &ctx.guard
        && !matches!(g.principal.role, Role::Admin | Role::Practitioner)
    {
        return Err(ctx.error(Error::Forbidden(
            "the sync status is for the station's practitioners and administrators".into(),
        )));
    }
    state.sync.as_deref().ok_or_else(|| {
        ctx.error(Error::NotFound(
            "this server is not a commune node: it has no upstream (YBA_UPSTREAM)".into(),
        ))
    })
}

/// `GET /api/sync/status`.
pub async fn status(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let v = node(&state, &ctx)?
                .status()
                .await
                .map_err(|e| ctx.error(e))?;
            Ok(reply(StatusCode::OK, &v))
        })
        .await
}

/// `POST /api/sync/run`: one round now; answers with it.
pub async fn run(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let round = node(&state, &ctx)?.round().await;
            let v = serde_json::to_value(&round).unwrap_or_default();
            Ok(reply(StatusCode::OK, &v))
        })
        .await
}

/// `POST /api/sync/conflicts/{id}/resolve`: the station has reviewed a conflict.
pub async fn resolve(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let n = node(&state, &ctx)?;
            let seq: i64 = path.parse().map_err(|_| {
                ctx.error(Error::invalid(
                    "value",
                    format!("'{}' is not a conflict number", path.as_str()),
                ))
            })?;
            if !n.resolve(seq).await.map_err(|e| ctx.error(e))? {
                return Err(ctx.error(Error::NotFound(format!("there is no open conflict {seq}"))));
            }
            Ok(reply(
                StatusCode::OK,
                &json!({ "id": seq, "resolved": true }),
            ))
        })
        .await
}
