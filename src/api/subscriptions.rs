//! `GET /fhir/websocket`: the R4 websocket channel of Subscriptions. The client sends
//! `bind <Subscription id>`, is answered `bound <id>`, and is then sent `ping <id>` for each
//! notification (R4 §Subscription, websocket channel). With auth on, the upgrade request carries
//! an administrator's access token (a Subscription is theirs to read).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::AggregatedMessage;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::AppState;
use super::negotiate::Ctx;
use crate::auth::Role;

/// How often the server pings an idle socket.
const PING_EVERY: Duration = Duration::from_secs(30);

pub async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    if let Some(auth) = &state.auth {
        let ctx = Ctx::new(&req, state.base_url.as_ref())?;
        let guard = auth.guard(&req, &ctx).await?;
        if guard.principal.role != Role::Admin {
            return Ok(actix_web::ResponseError::error_response(
                &super::access::forbidden(
                    "a Subscription's websocket is bound by an administrator",
                    ctx.format,
                ),
            ));
        }
    }
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream.max_frame_size(4096).aggregate_continuations();
    actix_web::rt::spawn(run(session, stream, state));
    Ok(response)
}

async fn run(
    mut session: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    state: web::Data<AppState>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let mut ping = actix_web::rt::time::interval_at(
        actix_web::rt::time::Instant::now() + PING_EVERY,
        PING_EVERY,
    );
    loop {
        tokio::select! {
            msg = stream.next() => {
                let text = match msg {
                    Some(Ok(AggregatedMessage::Text(t))) => t.to_string(),
                    Some(Ok(AggregatedMessage::Ping(p))) => {
                        if session.pong(&p).await.is_err() { break }
                        continue;
                    }
                    Some(Ok(AggregatedMessage::Pong(_) | AggregatedMessage::Binary(_))) => continue,
                    _ => break,
                };
                let reply = match text.trim().split_once(' ') {
                    Some(("bind", id)) => bind(&state, id.trim(), &tx).await,
                    _ => "error the message is not 'bind <Subscription id>'".to_string(),
                };
                if session.text(reply).await.is_err() {
                    break;
                }
            }
            Some(n) = rx.recv() => {
                if session.text(n).await.is_err() {
                    break;
                }
            }
            _ = ping.tick() => {
                if session.ping(b"").await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = session.close(None).await;
}

/// `bound <id>`, or why not.
async fn bind(state: &AppState, id: &str, tx: &mpsc::UnboundedSender<String>) -> String {
    match state.fhir.read("Subscription", id.to_string()).await {
        Ok(s) => {
            let v: serde_json::Value = serde_json::from_str(&s.body).unwrap_or_default();
            if v["channel"]["type"] != "websocket" {
                return format!("error Subscription/{id} has no websocket channel");
            }
            state.subscriptions.bind(id, tx.clone());
            format!("bound {id}")
        }
        Err(_) => format!("error no Subscription/{id}"),
    }
}
