//! The media relay gives back everything a participant held when they leave: connections,
//! tracks, tasks, UDP ports and the process's sockets, over many join/leave cycles (issue 7:
//! "no leaks after 1,000 join/leave cycles"), on both databases.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCSessionDescription,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

use crate::auth::user_token;
use crate::consultations::{api, ask, station_world};
use crate::helpers::TestApp;

crate::on_both_databases!(@with super::quick_to_empty;
    a_thousand_joins_and_leaves_leave_nothing_behind,
);

mod limits {
    use super::{a_full_room_and_a_full_node_turn_newcomers_away, small_node};
    crate::on_both_databases!(@with super::small_node;
        a_full_room_and_a_full_node_turn_newcomers_away,
    );
}

/// Auth on; rooms of one participant, and one room per node.
fn small_node(c: &mut yba::config::Config) {
    crate::helpers::with_auth(c);
    c.room_max_participants = 1;
    c.max_rooms = 1;
}

/// Auth on, and an empty room dropped after a second (so that it too is seen to go).
fn quick_to_empty(c: &mut yba::config::Config) {
    crate::helpers::with_auth(c);
    c.room_empty_timeout = 1;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An accepted, started consultation; its id.
pub(crate) async fn held_consultation(app: &TestApp, dr: &str) -> String {
    let yt = user_token(app, "yt.binh").await;
    let r = api(app, &yt, Method::POST, "", Some(&ask("Patient/pa"))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let accept = json!({"doctor": "Practitioner/dr-an"});
    let r = api(
        app,
        dr,
        Method::POST,
        &format!("/{id}/accept"),
        Some(&accept),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api(app, dr, Method::POST, &format!("/{id}/start"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    id
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("a frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).expect("JSON");
        }
    }
}

async fn until(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == ty {
            return v;
        }
        assert_ne!(v["type"], "error", "waiting for {ty}: {v}");
    }
}

struct Quiet;

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Quiet {}

/// A socket entered into a consultation's call as `token`'s user; the `joined` message.
async fn enter(app: &TestApp, token: &str, id: &str) -> (Ws, Value) {
    let r = api(app, token, Method::POST, &format!("/{id}/join"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let join_token = r.json()["token"].as_str().unwrap().to_string();
    let url = format!("ws://{}/api/consultations/{id}/signal", app.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("socket");
    let join = json!({"type": "join", "token": join_token}).to_string();
    ws.send(Message::text(join)).await.unwrap();
    let first = next_json(&mut ws).await;
    (ws, first)
}

/// The close frame's code, once the server closes.
async fn closed_with(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Close(c)))) => return c.map(|c| u16::from(c.code)),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

async fn a_full_room_and_a_full_node_turn_newcomers_away(app: TestApp) {
    station_world(&app).await;
    let dr = user_token(&app, "dr.an").await;
    let yt = user_token(&app, "yt.binh").await;
    let id = held_consultation(&app, &dr).await;
    let (_doctor, joined) = enter(&app, &dr, &id).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    // The room holds one participant: the station worker is turned away, and told why.
    let (mut ws, refused) = enter(&app, &yt, &id).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "room-full", "{refused}");
    assert_eq!(closed_with(&mut ws).await, Some(4009));
    // The node holds one room: another consultation's call cannot open.
    let other = held_consultation(&app, &dr).await;
    let (mut ws, refused) = enter(&app, &dr, &other).await;
    assert_eq!(refused["code"], "room-full", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("node"),
        "{refused}"
    );
    assert_eq!(closed_with(&mut ws).await, Some(4009));
}

/// One cycle: a join token, the socket, an offer answered by the server, then leave.
async fn cycle(app: &TestApp, dr: &str, id: &str) {
    let r = api(app, dr, Method::POST, &format!("/{id}/join"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r.json()["token"].as_str().unwrap().to_string();
    let url = format!("ws://{}/api/consultations/{id}/signal", app.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("socket");
    let join = json!({"type": "join", "token": token}).to_string();
    ws.send(Message::text(join)).await.unwrap();
    let joined = until(&mut ws, "joined").await;
    assert_eq!(joined["admitted"], true, "{joined}");
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(media)
        .with_handler(Arc::new(Quiet))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await
        .unwrap();
    let recv = RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Recvonly,
        ..Default::default()
    };
    pc.add_transceiver_from_kind(
        rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video,
        Some(recv),
    )
    .await
    .unwrap();
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer).await.unwrap();
    let offer = pc.local_description().await.unwrap();
    let msg = json!({"type": "offer", "sdp": offer}).to_string();
    ws.send(Message::text(msg)).await.unwrap();
    let answer = until(&mut ws, "answer").await;
    let answer: RTCSessionDescription = serde_json::from_value(answer["sdp"].clone()).unwrap();
    pc.set_remote_description(answer).await.unwrap();
    ws.send(Message::text(json!({"type": "leave"}).to_string()))
        .await
        .unwrap();
    // The server closes the socket once the participant is out of the room.
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(_) = m {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server closes the socket after leave");
    pc.close().await.unwrap();
}

/// The relay's gauges, from `/metrics`.
async fn gauges(app: &TestApp) -> Vec<(String, f64)> {
    let text = app
        .client
        .get(format!("http://{}/metrics", app.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("yba_rtc_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

async fn a_thousand_joins_and_leaves_leave_nothing_behind(app: TestApp) {
    station_world(&app).await;
    let dr = user_token(&app, "dr.an").await;
    let id = held_consultation(&app, &dr).await;
    // A first cycle warms up what is made once (the relay's runtime, codec tables).
    cycle(&app, &dr, &id).await;
    let fds = open_fds();
    let cycles: usize = std::env::var("YBA_TEST_CALL_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1000);
    for _ in 0..cycles {
        cycle(&app, &dr, &id).await;
    }
    // Everything a participant held is given back (tasks end as their tracks close).
    let mut left = Vec::new();
    for _ in 0..200 {
        left = gauges(&app).await;
        if !left.is_empty() && left.iter().all(|(_, v)| *v == 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !left.is_empty() && left.iter().all(|(_, v)| *v == 0.0),
        "after {cycles} cycles the relay still holds {left:?}"
    );
    // Sockets: other tests share this process, so allow their noise, not one per cycle.
    let now = open_fds();
    assert!(
        now < fds + 64,
        "open descriptors grew from {fds} to {now} over {cycles} cycles"
    );
}
