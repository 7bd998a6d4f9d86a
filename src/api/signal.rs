//! `GET /api/consultations/{id}/signal`: the consultation's signaling WebSocket
//! (`docs/signaling.md`). This file only moves frames: the join token is checked here, the
//! consultation's state read from the record, and everything else is `telehealth::room`'s, run
//! on the media relay's runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use serde_json::Value;
use tokio::sync::mpsc;

use super::AppState;
use crate::fhir::datetime::now_millis;
use crate::telehealth::join::{self, JoinClaims};
use crate::telehealth::room::{self, Out, Participant, Refusal, Room};
use crate::telehealth::signal::{self, Incoming, Next};

/// How long a socket may take to send `join`.
const JOIN_WITHIN: Duration = Duration::from_secs(10);
/// How often the server pings.
const PING_EVERY: Duration = Duration::from_secs(10);
/// The largest message taken (an SDP with many tracks is a few tens of kB).
const MAX_MESSAGE: usize = 256 * 1024;

pub async fn signal(
    req: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(MAX_MESSAGE)
        .aggregate_continuations()
        .max_continuation_size(MAX_MESSAGE);
    let address = state.auth.as_ref().and_then(|a| a.address(&req));
    actix_web::rt::spawn(run(path.into_inner(), session, stream, state, address));
    Ok(response)
}

async fn send(session: &mut Session, v: &Value) -> bool {
    session.text(v.to_string()).await.is_ok()
}

async fn refuse(mut session: Session, r: &Refusal) {
    let _ = send(&mut session, &r.to_value()).await;
    let _ = session
        .close(Some(CloseReason {
            code: CloseCode::Other(r.close_code()),
            description: Some(r.code.to_string()),
        }))
        .await;
}

/// The first message: `join` with a valid token for this consultation, while it is held.
async fn admit(
    id: &str,
    stream: &mut actix_ws::AggregatedMessageStream,
    state: &AppState,
) -> Result<JoinClaims, Refusal> {
    let first = tokio::time::timeout(JOIN_WITHIN, stream.recv())
        .await
        .map_err(|_| Refusal::new("unauthorized", "send join with your token first"))?;
    let token = match first {
        Some(Ok(AggregatedMessage::Text(t))) => match signal::parse(&t)? {
            Incoming::Join { token } => token,
            _ => {
                return Err(Refusal::new(
                    "unauthorized",
                    "the first message is join, with your join token",
                ));
            }
        },
        _ => {
            return Err(Refusal::new(
                "unauthorized",
                "the first message is join, with your join token",
            ));
        }
    };
    let claims = join::verify(&state.join_keys, join::ISSUER, &token, id)
        .map_err(|m| Refusal::new("unauthorized", m))?;
    let appointment = match state.fhir.read("Appointment", id.to_string()).await {
        Ok(stored) => serde_json::from_str::<Value>(&stored.body).ok(),
        Err(_) => None,
    };
    let held = appointment.as_ref().map(crate::telehealth::state_of);
    match held {
        Some("accepted" | "in-progress") => Ok(claims),
        Some(s) => Err(Refusal::new(
            "closed",
            format!("the consultation is {s}: its call is closed"),
        )),
        None => Err(Refusal::new("closed", "no such consultation")),
    }
}

async fn run(
    id: String,
    mut session: Session,
    mut stream: actix_ws::AggregatedMessageStream,
    state: web::Data<AppState>,
    address: Option<String>,
) {
    let claims = match admit(&id, &mut stream, &state).await {
        Ok(c) => c,
        Err(r) => {
            audit(&state, &id, None, address.as_deref(), Some(&r)).await;
            return refuse(session, &r).await;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let rooms = Arc::clone(&state.rooms);
    let entered = room::runtime()
        .spawn({
            let (rooms, claims) = (Arc::clone(&rooms), claims.clone());
            async move {
                let now = u64::try_from(now_millis() / 1000).unwrap_or(0);
                let (room, me, resumed) = rooms.enter(&claims, tx)?;
                // This socket's generation, before another socket could take the place.
                let generation = me.generation();
                let ice = rooms.ice.servers_for(&me.id, now, 12 * 3600);
                room.welcome(&me, resumed, ice).await;
                Ok::<_, Refusal>((room, me, generation))
            }
        })
        .await;
    let (room, me, generation) = match entered {
        Ok(Ok(x)) => x,
        Ok(Err(r)) => {
            audit(&state, &id, Some(&claims), address.as_deref(), Some(&r)).await;
            return refuse(session, &r).await;
        }
        Err(_) => return refuse(session, &Refusal::new("closed", "the room failed")).await,
    };
    audit(&state, &id, Some(&claims), address.as_deref(), None).await;
    let idle = Duration::from_secs(state.signal_idle.max(1));
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut left = false;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Msg(v)) => {
                    if !send(&mut session, &v).await { break; }
                }
                Some(Out::Close(code, reason)) => {
                    let _ = session.close(Some(CloseReason {
                        code: if code == 1000 { CloseCode::Normal } else { CloseCode::Other(code) },
                        description: Some(reason),
                    })).await;
                    return;
                }
                None => break,
            },
            msg = stream.recv() => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(AggregatedMessage::Text(t))) => {
                        if on_text(&room, &me, generation, &t).await == Next::Left {
                            left = true;
                            break;
                        }
                    }
                    Some(Ok(AggregatedMessage::Binary(_))) => {
                        me.send(Refusal::new("bad-message", "messages are JSON text frames").to_value());
                    }
                    Some(Ok(AggregatedMessage::Ping(b))) => {
                        if session.pong(&b).await.is_err() { break; }
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {}
                    Some(Ok(AggregatedMessage::Close(_))) | Some(Err(_)) | None => break,
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > idle || session.ping(b"").await.is_err() {
                    break;
                }
            }
        }
    }
    if !left {
        let (room, me) = (Arc::clone(&room), Arc::clone(&me));
        room::runtime().spawn(async move { room.dropped(&me, generation) });
    }
    let _ = session.close(None).await;
}

/// One text frame from an entered participant; refusals go back as `error`.
async fn on_text(room: &Arc<Room>, me: &Arc<Participant>, generation: u64, text: &str) -> Next {
    let msg = match signal::parse(text) {
        Ok(m) => m,
        Err(r) => {
            me.send(r.to_value());
            return Next::Continue;
        }
    };
    let (room, me) = (Arc::clone(room), Arc::clone(me));
    let done = room::runtime()
        .spawn(async move {
            let r = signal::handle(&room, &me, generation, msg).await;
            if let Err(refusal) = &r {
                me.send(refusal.to_value());
            }
            r.unwrap_or(Next::Continue)
        })
        .await;
    done.unwrap_or(Next::Continue)
}

/// Entering a call is audited like any access to the record: who, which consultation, and
/// whether they were let in (refusals with the reason).
async fn audit(
    state: &AppState,
    id: &str,
    claims: Option<&JoinClaims>,
    address: Option<&str>,
    refused: Option<&Refusal>,
) {
    let Some(auth) = &state.auth else { return };
    let principal = claims.map(|c| {
        let patient = c.sub.strip_prefix("Patient/").map(str::to_string);
        crate::auth::Principal {
            role: if patient.is_some() {
                crate::auth::Role::Patient
            } else {
                crate::auth::Role::Practitioner
            },
            subject: c.sub.clone(),
            client_id: join::AUDIENCE.to_string(),
            fhir_user: Some(c.sub.clone()),
            organization: None,
            patient,
            scopes: Default::default(),
            sid: c.jti.clone(),
            break_glass: None,
            address: address.map(str::to_string),
        }
    });
    let status = refused.map_or(200, Refusal::status);
    auth.audit
        .record(&crate::auth::audit::Record {
            action: "E",
            interaction: "signal-join",
            principal: principal.as_ref(),
            status,
            detail: refused.map(|r| r.message.clone()),
            resources: &[format!("Appointment/{id}")],
            address,
            ..Default::default()
        })
        .await;
}
