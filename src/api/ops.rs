//! Operations endpoints: liveness, readiness (the database answers), Prometheus metrics.

use actix_web::{HttpRequest, HttpResponse, web};

use super::{AppState, Interaction};

pub async fn healthz() -> HttpResponse {
    let mut r = HttpResponse::Ok().content_type("text/plain").body("ok\n");
    r.extensions_mut().insert(Interaction::Operations);
    r
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let mut r = match state.fhir.store().ping().await {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: database unreachable");
            HttpResponse::ServiceUnavailable()
                .content_type("text/plain")
                .body("database unreachable\n")
        }
    };
    r.extensions_mut().insert(Interaction::Operations);
    r
}

pub async fn metrics(_req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let mut r = HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body({
            let mut text = state.metrics.render();
            let rooms = &state.rooms;
            text.extend_from_slice(
                rooms
                    .stats
                    .render(rooms.count(), rooms.ports_in_use())
                    .as_bytes(),
            );
            text
        });
    r.extensions_mut().insert(Interaction::Operations);
    r
}
