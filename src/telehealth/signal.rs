//! The signaling protocol (`docs/signaling.md`): the messages a participant sends, read
//! strictly enough to say what is wrong, and what each does to the room.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use webrtc::peer_connection::{RTCIceCandidateInit, RTCSdpType, RTCSessionDescription};

use super::quality::Quality;
use super::room::{Participant, Refusal, Room};

/// A message from a participant.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Incoming {
    Join {
        token: String,
    },
    Offer {
        sdp: RTCSessionDescription,
    },
    Answer {
        sdp: RTCSessionDescription,
    },
    Candidate {
        candidate: RTCIceCandidateInit,
    },
    Mute {
        #[serde(default)]
        participant: Option<String>,
        kind: Kind,
        muted: bool,
    },
    Admit {
        participant: String,
    },
    Remove {
        participant: String,
    },
    /// How much video to receive: `high`, `low` or `off` (audio only).
    Quality {
        video: Quality,
    },
    End,
    Leave,
    Ping,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Audio,
    Video,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
        }
    }
}

const TYPES: &str =
    "join, offer, answer, candidate, mute, quality, admit, remove, end, leave, ping";

/// Reads one text frame; a `bad-message` refusal that says what is wrong.
pub fn parse(text: &str) -> Result<Incoming, Refusal> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Refusal::new("bad-message", format!("not JSON: {e}")))?;
    let Some(ty) = v.get("type").and_then(Value::as_str) else {
        return Err(Refusal::new(
            "bad-message",
            format!("a message is an object with a type ({TYPES})"),
        ));
    };
    let ty = ty.to_string();
    serde_json::from_value::<Incoming>(v).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("unknown variant") {
            Refusal::new(
                "bad-message",
                format!("unknown message type '{ty}' (known: {TYPES})"),
            )
        } else {
            Refusal::new("bad-message", format!("'{ty}': {msg}"))
        }
    })
}

/// What the socket should do after a message.
#[derive(Debug, PartialEq)]
pub enum Next {
    Continue,
    /// The participant left for good.
    Left,
}

/// Handles one message from an entered participant, on their socket of `generation`.
pub async fn handle(
    room: &Arc<Room>,
    me: &Arc<Participant>,
    generation: u64,
    msg: Incoming,
) -> Result<Next, Refusal> {
    match msg {
        Incoming::Join { .. } => {
            return Err(Refusal::new("bad-message", "already joined"));
        }
        Incoming::Offer { sdp } => {
            expect(&sdp, RTCSdpType::Offer)?;
            room.offer(me, sdp).await?;
        }
        Incoming::Answer { sdp } => {
            expect(&sdp, RTCSdpType::Answer)?;
            room.answer(me, sdp).await?;
        }
        Incoming::Candidate { candidate } => room.candidate(me, candidate).await?,
        Incoming::Mute {
            participant,
            kind,
            muted,
        } => room.mute(me, participant.as_deref(), kind.name(), muted)?,
        Incoming::Quality { video } => room.quality(me, video),
        Incoming::Admit { participant } => room.admit(me, &participant)?,
        Incoming::Remove { participant } => room.remove(me, &participant).await?,
        Incoming::End => room.end_by(me).await?,
        Incoming::Leave => {
            // From a socket a newer one replaced, leaving would end the newer one's place.
            if me.generation() == generation {
                room.leave(me, "left").await;
            }
            return Ok(Next::Left);
        }
        Incoming::Ping => me.send(json!({"type": "pong"})),
    }
    Ok(Next::Continue)
}

fn expect(sdp: &RTCSessionDescription, want: RTCSdpType) -> Result<(), Refusal> {
    if sdp.sdp_type != want {
        return Err(Refusal::new(
            "bad-message",
            format!("sdp.type must be {want} here, not {}", sdp.sdp_type),
        ));
    }
    sdp.unmarshal()
        .map(|_| ())
        .map_err(|e| Refusal::new("bad-message", format!("the SDP does not parse: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_messages_say_what_is_wrong() {
        let code = |t: &str| parse(t).err().map(|r| (r.code, r.message));
        let (c, m) = code("{").unwrap();
        assert_eq!(c, "bad-message");
        assert!(m.starts_with("not JSON"), "{m}");
        assert!(code(r#"{"no":"type"}"#).unwrap().1.contains("type"));
        assert!(
            code(r#"{"type":"dance"}"#)
                .unwrap()
                .1
                .contains("unknown message type 'dance'")
        );
        assert!(
            code(r#"{"type":"admit"}"#)
                .unwrap()
                .1
                .contains("participant")
        );
        assert!(code(r#"{"type":"mute","kind":"smell","muted":true}"#).is_some());
        assert!(matches!(parse(r#"{"type":"ping"}"#), Ok(Incoming::Ping)));
        assert!(matches!(
            parse(r#"{"type":"quality","video":"off"}"#),
            Ok(Incoming::Quality {
                video: Quality::Off
            })
        ));
        assert!(code(r#"{"type":"quality","video":"4k"}"#).is_some());
        assert!(matches!(parse(r#"{"type":"end"}"#), Ok(Incoming::End)));
        assert!(matches!(
            parse(r#"{"type":"offer","sdp":{"type":"offer","sdp":"v=0"}}"#),
            Ok(Incoming::Offer { .. })
        ));
        assert!(matches!(
            parse(
                r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0"}}"#
            ),
            Ok(Incoming::Candidate { .. })
        ));
    }
}
