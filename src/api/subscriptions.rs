//! `GET /fhir/websocket`: the R4 websocket channel of Subscriptions. The client sends
//! `bind <Subscription id>`, is answered `bound <id>`, and is then sent `ping <id>` for each
//! notification (R4 §Subscription, websocket channel). With auth on, `bind` needs an
//! administrator's access token on the upgrade request; a client that cannot send one (a
//! browser) asks `Subscription/[id]/$get-ws-binding-token` for a two-minute token bound to the
//! Subscription and sends `bind-with-token <token>` (the R4B/R5 backport's way).

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

/// The audience of websocket binding tokens (never accepted as anything else).
const AUDIENCE: &str = "yba-subscription";
/// Seconds a binding token lives.
const TOKEN_TTL: u64 = 120;

/// What a binding token carries: the Subscription it binds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BindClaims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    exp: u64,
    jti: String,
}

pub async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    // Without auth anyone may bind by id; with it, an administrator's token does, and anyone
    // else needs a binding token.
    let mut by_id = state.auth.is_none();
    if let Some(auth) = &state.auth
        && req
            .headers()
            .contains_key(actix_web::http::header::AUTHORIZATION)
    {
        let ctx = Ctx::new(&req, state.base_url.as_ref())?;
        let guard = auth.guard(&req, &ctx).await?;
        if guard.principal.role != Role::Admin {
            return Ok(actix_web::ResponseError::error_response(
                &super::access::forbidden(
                    "a Subscription's websocket is bound by an administrator, or with a binding token",
                    ctx.format,
                ),
            ));
        }
        by_id = true;
    }
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream.max_frame_size(4096).aggregate_continuations();
    actix_web::rt::spawn(run(session, stream, state, by_id));
    Ok(response)
}

/// `GET|POST /fhir/Subscription/{id}/$get-ws-binding-token`: a token that binds a websocket to
/// this Subscription for two minutes.
pub async fn binding_token(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    state
        .reply(&req, super::Interaction::Operations, |ctx| async {
            let ctx = ctx;
            let id = path.into_inner();
            let sub = super::access::read_visible(&state.fhir, &ctx, "Subscription", &id).await?;
            let v: serde_json::Value = serde_json::from_str(&sub.body).unwrap_or_default();
            if v["channel"]["type"] != "websocket" {
                return Err(ctx.error(crate::error::Error::invalid(
                    "invalid",
                    format!("Subscription/{id} has no websocket channel"),
                )));
            }
            let now = crate::fhir::datetime::now_millis() as u64 / 1000;
            let claims = BindClaims {
                iss: crate::telehealth::join::ISSUER.into(),
                aud: AUDIENCE.into(),
                sub: id.clone(),
                iat: now,
                exp: now + TOKEN_TTL,
                jti: crate::auth::token::random_token(),
            };
            let token = state.join_keys.sign_claims(&claims).map_err(|e| {
                ctx.error(crate::error::Error::invalid("exception", e))
            })?;
            let ws = format!("{}/websocket", ctx.base().replacen("http", "ws", 1));
            let out = serde_json::json!({"resourceType": "Parameters", "parameter": [
                {"name": "token", "valueString": token},
                {"name": "expiration", "valueDateTime": crate::fhir::datetime::format_instant(((now + TOKEN_TTL) * 1000) as i64)},
                {"name": "subscription", "valueString": id},
                {"name": "websocket-url", "valueUrl": ws}
            ]});
            super::rest::bundle_response(out.to_string(), &ctx)
        })
        .await
}

async fn run(
    mut session: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    state: web::Data<AppState>,
    by_id: bool,
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
                    Some(("bind", id)) if by_id => bind(&state, id.trim(), &tx).await,
                    Some(("bind", _)) => {
                        "error binding by id needs an administrator's token: send bind-with-token <token> ($get-ws-binding-token)".to_string()
                    }
                    Some(("bind-with-token", token)) => {
                        match state.join_keys.verify_claims::<BindClaims>(
                            token.trim(),
                            crate::telehealth::join::ISSUER,
                            AUDIENCE,
                        ) {
                            Ok(c) => bind(&state, &c.sub, &tx).await,
                            Err(_) => "error the binding token is not valid".to_string(),
                        }
                    }
                    _ => "error the message is not 'bind-with-token <token>' or 'bind <Subscription id>'".to_string(),
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
