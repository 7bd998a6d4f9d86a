//! Teleconsultation video through the server (`docs/signaling.md`): real WebRTC peers
//! (webrtc-rs) that join a consultation's call on its signaling WebSocket, publish synthetic
//! Opus and VP8 RTP, and check what the relay hands the others; with auth on, on both
//! databases.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
    Registry, register_default_interceptors,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender};

use crate::auth::{CCCD_A, as_user, user_token};
use crate::consultations::{api, ask, station_world};
use crate::helpers::TestApp;

crate::on_both_databases!(@with crate::helpers::with_auth;
    three_participants_hear_and_see_each_other,
    an_observer_receives_but_cannot_publish,
    the_patient_waits_until_the_doctor_admits_them,
    a_dropped_participant_resumes_and_keeps_receiving,
    ending_the_consultation_closes_every_connection,
    bad_messages_get_an_error_and_the_room_carries_on,
    a_muted_track_is_not_relayed_and_resumes_in_sequence,
    keyframe_requests_reach_the_publisher,
);

mod networks;

/// On a server whose join tokens live one second (plus the 5 s leeway).
mod short_tokens {
    use super::uninvited_users_and_expired_tokens_are_refused;
    crate::on_both_databases!(@with crate::signaling::short_join_tokens;
        uninvited_users_and_expired_tokens_are_refused,
    );
}

/// On a server that keeps a dropped participant's place two seconds.
mod short_grace {
    use super::a_participant_who_does_not_come_back_is_gone_after_the_grace;
    crate::on_both_databases!(@with crate::signaling::short_signal_grace;
        a_participant_who_does_not_come_back_is_gone_after_the_grace,
    );
}

fn short_join_tokens(c: &mut yba::config::Config) {
    crate::helpers::with_auth(c);
    c.join_token_ttl = 1;
}

fn short_signal_grace(c: &mut yba::config::Config) {
    crate::helpers::with_auth(c);
    c.signal_grace = 2;
}

/// How long any one event may take (tests run in parallel on small machines).
const WAIT: Duration = Duration::from_secs(20);
/// Packets each peer must see from each other's audio and from their video.
const ENOUGH: usize = 30;

const DR: &str = "Practitioner/dr-an";
const YT: &str = "Practitioner/yt-binh";
const PA: &str = "Patient/pa";
const SV: &str = "Practitioner/sv-hoa";

// ── The consultation, through REST ───────────────────────────────────────────────────────

/// An accepted consultation and everyone's access token.
struct Call {
    id: String,
    dr: String,
    yt: String,
    pa: String,
    sv: String,
}

/// The station asks about the patient and the doctor accepts (and, if `start`, starts it).
async fn call(app: &TestApp, start: bool) -> Call {
    station_world(app).await;
    let c = Call {
        id: String::new(),
        dr: user_token(app, "dr.an").await,
        yt: user_token(app, "yt.binh").await,
        pa: user_token(app, CCCD_A).await,
        sv: user_token(app, "sv.hoa").await,
    };
    let r = api(app, &c.yt, Method::POST, "", Some(&ask(PA))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = api(
        app,
        &c.dr,
        Method::POST,
        &format!("/{id}/accept"),
        Some(&json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    if start {
        let r = api(app, &c.dr, Method::POST, &format!("/{id}/start"), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    Call { id, ..c }
}

/// The doctor invites the patient and/or an observer.
async fn invite(app: &TestApp, c: &Call, who: Value) {
    let r = api(
        app,
        &c.dr,
        Method::POST,
        &format!("/{}/invite", c.id),
        Some(&who),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A join token for the holder of `access`.
async fn join_token(app: &TestApp, id: &str, access: &str) -> String {
    let r = api(app, access, Method::POST, &format!("/{id}/join"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["token"].as_str().unwrap().to_string()
}

fn signal_url(app: &TestApp, id: &str) -> String {
    format!("ws://{}/api/consultations/{id}/signal", app.addr)
}

/// A participant's MediaStream id in the room.
fn stream_of(participant: &str) -> String {
    participant.replace('/', "-")
}

// ── A participant: one peer connection, the signaling socket that drives it ────────────────

/// The socket's sending side, and the local candidates held back while a description is
/// being sent (so that a candidate never reaches the server before the SDP it belongs to).
#[derive(Default)]
struct Link {
    out: Option<mpsc::UnboundedSender<Message>>,
    open: bool,
    held: Vec<Value>,
}

impl Link {
    fn send(&mut self, v: &Value) {
        if let Some(out) = &self.out {
            let _ = out.send(Message::text(v.to_string()));
        }
    }

    fn candidate(&mut self, v: Value) {
        if self.open {
            self.send(&v);
        } else {
            self.held.push(v);
        }
    }

    /// Sends a description, then the candidates gathered meanwhile.
    fn release(&mut self, description: &Value) {
        self.send(description);
        for c in std::mem::take(&mut self.held) {
            self.send(&c);
        }
        self.open = true;
    }
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A track received from the room: whose (its MediaStream id), what, and its packets.
#[derive(Clone)]
struct Received {
    stream: String,
    kind: &'static str,
    /// The codec it arrived in (`video/VP8`, `video/H264`...).
    mime: String,
    /// The track (to send keyframe requests back on).
    track: Arc<dyn TrackRemote>,
    /// Sequence number and payload of each packet, in arrival order.
    packets: Vec<(u16, Bytes)>,
}

struct Handler {
    link: Shared<Link>,
    tracks: Shared<Vec<Shared<Received>>>,
    state: watch::Sender<RTCPeerConnectionState>,
    /// The peer's own candidates, as gathered.
    gathered: Shared<Vec<String>>,
    /// Keep them to itself (the server finds it through a `Route`).
    quiet: bool,
    /// ICE connection states, in order (to say where a connection got stuck).
    ice: Shared<Vec<String>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(c) = event.candidate.to_json() {
            lock(&self.gathered).push(c.candidate.clone());
            if !self.quiet {
                lock(&self.link).candidate(json!({"type": "candidate", "candidate": c}));
            }
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }

    async fn on_ice_connection_state_change(
        &self,
        state: webrtc::peer_connection::RTCIceConnectionState,
    ) {
        lock(&self.ice).push(state.to_string());
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let ssrc = track.ssrcs().await.first().copied().unwrap_or_default();
        let mime = track
            .codec(ssrc)
            .await
            .map(|c| c.mime_type)
            .unwrap_or_default();
        let received = Arc::new(Mutex::new(Received {
            stream: track.stream_id().await,
            kind: kind_name(track.kind().await),
            mime,
            track: Arc::clone(&track),
            packets: Vec::new(),
        }));
        lock(&self.tracks).push(Arc::clone(&received));
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(p) => lock(&received)
                        .packets
                        .push((p.header.sequence_number, p.payload)),
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

fn kind_name(kind: RtpCodecKind) -> &'static str {
    if kind == RtpCodecKind::Audio {
        "audio"
    } else {
        "video"
    }
}

/// A data channel and the text messages that came on it.
struct Chat {
    channel: Arc<dyn DataChannel>,
    open: watch::Receiver<bool>,
    heard: mpsc::UnboundedReceiver<String>,
}

/// Counts the keyframe requests (PLI, FIR) that reach a peer, passing every packet on.
struct KeyframeRequests {
    seen: Arc<std::sync::atomic::AtomicUsize>,
    read: VecDeque<rtc::interceptor::TaggedPacket>,
    write: VecDeque<rtc::interceptor::TaggedPacket>,
}

impl rtc::sansio::Protocol<rtc::interceptor::TaggedPacket, rtc::interceptor::TaggedPacket, ()>
    for KeyframeRequests
{
    type Rout = rtc::interceptor::TaggedPacket;
    type Wout = rtc::interceptor::TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = std::time::Instant;

    fn handle_read(&mut self, msg: rtc::interceptor::TaggedPacket) -> Result<(), Self::Error> {
        use rtc::rtcp::payload_feedbacks::{
            full_intra_request::FullIntraRequest, picture_loss_indication::PictureLossIndication,
        };
        if let rtc::interceptor::Packet::Rtcp(packets) = &msg.message.packet {
            let n = packets
                .iter()
                .filter(|p| {
                    let any = p.as_any();
                    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                })
                .count();
            self.seen.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: rtc::interceptor::TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl rtc::interceptor::Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _: &rtc::interceptor::StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &rtc::interceptor::StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &rtc::interceptor::StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &rtc::interceptor::StreamInfo) {}
}

const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

/// How a peer connection is made.
#[derive(Clone, Copy, Default)]
struct Device {
    /// ICE over TCP only (a network that lets no UDP through).
    tcp_only: bool,
    /// Sends simulcast (registers the MID and RID header extensions).
    simulcast: bool,
}

async fn new_peer_connection(
    handler: Arc<dyn PeerConnectionEventHandler>,
    keyframe_requests: Arc<std::sync::atomic::AtomicUsize>,
    device: Device,
) -> Arc<dyn PeerConnection> {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    if device.simulcast {
        for uri in [MID_URI, RID_URI] {
            media
                .register_header_extension(
                    rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                        uri: uri.to_owned(),
                    },
                    RtpCodecKind::Video,
                    None,
                )
                .expect("header extension");
        }
    }
    let registry = register_default_interceptors(Registry::new(), &mut media)
        .expect("interceptors")
        .with(
            rtc::interceptor::Slot::from(14_000),
            KeyframeRequests {
                seen: keyframe_requests,
                read: VecDeque::new(),
                write: VecDeque::new(),
            },
        );
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(if device.tcp_only {
            Vec::new()
        } else {
            vec!["127.0.0.1:0".to_string()]
        })
        .with_tcp_addrs(if device.tcp_only {
            vec!["127.0.0.1:0".to_string()]
        } else {
            Vec::new()
        })
        .build()
        .await
        .expect("peer connection");
    Arc::new(pc)
}

struct Peer {
    /// `Practitioner/dr-an`.
    who: &'static str,
    pc: Arc<dyn PeerConnection>,
    link: Shared<Link>,
    tracks: Shared<Vec<Shared<Received>>>,
    state: watch::Receiver<RTCPeerConnectionState>,
    /// Server messages (all but candidates) from the current socket, and those read but not
    /// yet asked for.
    events: mpsc::UnboundedReceiver<Value>,
    backlog: VecDeque<Value>,
    socket: Vec<JoinHandle<()>>,
    chat: Option<Chat>,
    sending: Vec<JoinHandle<()>>,
    /// Keyframe requests (PLI, FIR) that reached this peer.
    keyframe_requests: Arc<std::sync::atomic::AtomicUsize>,
    /// Its own ICE candidates.
    gathered: Shared<Vec<String>>,
    /// The way to the server, when not direct.
    route: Option<Arc<dyn Route>>,
    ice: Shared<Vec<String>>,
}

/// A way to the server other than the direct one: the server's candidates are rewritten to
/// it (None: dropped), and the peer's own are not sent (the server finds it by its checks).
trait Route: Send + Sync {
    fn candidate(&self, candidate: &str) -> Option<String>;
}

/// Rewrites the candidate lines of an SDP by `route`.
fn routed_sdp(route: &dyn Route, sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive("\r\n") {
        match line.strip_prefix("a=") {
            Some(c) if c.starts_with("candidate:") => {
                if let Some(c) = route.candidate(c.trim_end()) {
                    out.push_str("a=");
                    out.push_str(&c);
                    out.push_str("\r\n");
                }
            }
            _ => out.push_str(line),
        }
    }
    out
}

impl Drop for Peer {
    fn drop(&mut self) {
        for t in self.socket.iter().chain(&self.sending) {
            t.abort();
        }
        let pc = Arc::clone(&self.pc);
        tokio::spawn(async move {
            let _ = pc.close().await;
        });
    }
}

impl Peer {
    async fn new(who: &'static str) -> Peer {
        Peer::on(who, Device::default(), None).await
    }

    /// A peer on `device`, reaching the server by `route` (None: directly).
    async fn on(who: &'static str, device: Device, route: Option<Arc<dyn Route>>) -> Peer {
        let link = Shared::default();
        let tracks = Shared::default();
        let gathered = Shared::default();
        let ice = Shared::default();
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let handler = Arc::new(Handler {
            link: Arc::clone(&link),
            tracks: Arc::clone(&tracks),
            state: state_tx,
            gathered: Arc::clone(&gathered),
            quiet: route.is_some(),
            ice: Arc::clone(&ice),
        });
        let keyframe_requests = Arc::default();
        Peer {
            who,
            pc: new_peer_connection(handler, Arc::clone(&keyframe_requests), device).await,
            keyframe_requests,
            gathered,
            ice,
            route,
            link,
            tracks,
            state,
            events: mpsc::unbounded_channel().1,
            backlog: VecDeque::new(),
            socket: Vec::new(),
            chat: None,
            sending: Vec::new(),
        }
    }

    /// Opens a signaling socket and sends `join` with `token`; the first answer.
    async fn connect(&mut self, app: &TestApp, id: &str, token: &str) -> Value {
        self.drop_socket();
        let (ws, _) = tokio_tungstenite::connect_async(signal_url(app, id))
            .await
            .expect("the signaling socket opens");
        let (mut sink, mut stream) = ws.split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let (events_tx, events) = mpsc::unbounded_channel();
        self.events = events;
        self.backlog.clear();
        lock(&self.link).out = Some(out);
        self.socket.push(tokio::spawn(async move {
            while let Some(m) = outgoing.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        }));
        let pc = Arc::clone(&self.pc);
        let link = Arc::clone(&self.link);
        let route = self.route.clone();
        self.socket.push(tokio::spawn(async move {
            let mut early = Vec::new();
            let closed = loop {
                let text = match stream.next().await {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(frame))) => {
                        break json!(frame.map(|f| u16::from(f.code)));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break Value::Null,
                };
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|_| json!({"type": "__not-json", "text": text.as_str()}));
                if let Err(e) = pump(&pc, &link, &v, &mut early, route.as_deref()).await {
                    let _ = events_tx.send(json!({"type": "__pump-error", "message": e, "on": v}));
                }
                if v["type"] != "candidate" {
                    let _ = events_tx.send(v);
                }
            };
            let _ = events_tx.send(json!({"type": "__closed", "code": closed}));
        }));
        lock(&self.link).send(&json!({"type": "join", "token": token}));
        self.next_any().await
    }

    /// Joins with a fresh join token for the holder of `access`; the `joined` message.
    async fn join(&mut self, app: &TestApp, id: &str, access: &str) -> Value {
        let token = join_token(app, id, access).await;
        let joined = self.connect(app, id, &token).await;
        assert_eq!(joined["type"], "joined", "{}: {joined}", self.who);
        assert_eq!(joined["participant"], self.who, "{joined}");
        assert_eq!(joined["stream"], stream_of(self.who), "{joined}");
        joined
    }

    /// Drops the socket without a word (no `leave`, no close frame): a lost network.
    fn drop_socket(&mut self) {
        for t in self.socket.drain(..) {
            t.abort();
        }
        lock(&self.link).out = None;
    }

    fn send(&self, v: Value) {
        lock(&self.link).send(&v);
    }

    fn send_raw(&self, m: Message) {
        if let Some(out) = &lock(&self.link).out {
            let _ = out.send(m);
        }
    }

    /// The next server message, whatever it is.
    async fn next_any(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(v)) => v,
            _ => panic!("{}: no message from the server in time", self.who),
        }
    }

    /// The next server message of type `ty` (others are kept for later).
    async fn next(&mut self, ty: &str) -> Value {
        self.within(WAIT, ty)
            .await
            .unwrap_or_else(|| panic!("{}: no '{ty}' in time; got {:?}", self.who, self.backlog))
    }

    /// The next message of type `ty` within `d`, if any.
    async fn within(&mut self, d: Duration, ty: &str) -> Option<Value> {
        if let Some(i) = self.backlog.iter().position(|v| v["type"] == ty) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(v)) if v["type"] == ty => return Some(v),
                Ok(Some(v)) => self.backlog.push_back(v),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The next `error`, which must have `code`.
    async fn error(&mut self, code: &str) -> Value {
        let e = self.next("error").await;
        assert_eq!(e["code"], code, "{}: {e}", self.who);
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        e
    }

    /// Fails if the server refused anything of this participant's or the peer connection
    /// refused a description or candidate of the server's.
    fn assert_no_errors(&mut self) {
        while let Ok(v) = self.events.try_recv() {
            self.backlog.push_back(v);
        }
        let bad: Vec<_> = self
            .backlog
            .iter()
            .filter(|v| v["type"] == "error" || v["type"] == "__pump-error")
            .collect();
        assert!(bad.is_empty(), "{}: {bad:?}", self.who);
    }

    /// Adds a microphone (Opus), a camera (VP8) and a chat channel, sending synthetic RTP whose
    /// payloads say whose and which packet they are.
    async fn publish(&mut self) {
        self.publish_with("video/VP8", "").await;
    }

    /// The same with a camera of another codec (`video/H264` and its fmtp).
    async fn publish_with(&mut self, video: &'static str, fmtp: &'static str) {
        for (kind, mime, clock, fmtp) in [
            (RtpCodecKind::Audio, "audio/opus", 48_000, ""),
            (RtpCodecKind::Video, video, 90_000, fmtp),
        ] {
            let ssrc = random_u32();
            // A stream id of the device's own: the room must relabel it with the participant's.
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                "local-camera".to_string(),
                format!("{}-{}", kind_name(kind), ssrc),
                kind_name(kind).to_string(),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    // No codec on the track: its m-line then offers every codec this device
                    // receives, as a browser's does (a codec here would narrow it to that one,
                    // and the relay, which does not transcode, could not send it others').
                    // What it sends in is chosen by the payload type `send_rtp` writes.
                    codec: RTCRtpCodec::default(),
                    ..Default::default()
                }],
            )));
            let sender = self
                .pc
                .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                .await
                .expect("track added");
            let stream = stream_of(self.who);
            self.sending.push(tokio::spawn(send_rtp(
                track,
                sender,
                stream,
                kind,
                ssrc,
                (mime, fmtp, clock),
            )));
        }
        self.open_chat().await;
    }

    /// Receive-only audio and video (an observer), and a chat channel.
    async fn receive_only(&mut self) {
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            let init = RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            };
            self.pc
                .add_transceiver_from_kind(kind, Some(init))
                .await
                .expect("transceiver added");
        }
        self.open_chat().await;
    }

    async fn open_chat(&mut self) {
        let channel = self
            .pc
            .create_data_channel("chat", None)
            .await
            .expect("data channel");
        let (open_tx, open) = watch::channel(false);
        let (heard_tx, heard) = mpsc::unbounded_channel();
        let events = Arc::clone(&channel);
        self.sending.push(tokio::spawn(async move {
            while let Some(e) = events.poll().await {
                match e {
                    DataChannelEvent::OnOpen => {
                        let _ = open_tx.send(true);
                    }
                    DataChannelEvent::OnMessage(m) => {
                        let _ = heard_tx.send(String::from_utf8_lossy(&m.data).into_owned());
                    }
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
        }));
        self.chat = Some(Chat {
            channel,
            open,
            heard,
        });
    }

    /// Offers this peer's tracks; the server's `answer` (already applied) or its `error`.
    async fn offer(&mut self) -> Value {
        let offer = make_offer(&self.pc).await;
        lock(&self.link).release(&json!({"type": "offer", "sdp": offer}));
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(v)) if v["type"] == "answer" || v["type"] == "error" => return v,
                Ok(Some(v)) => self.backlog.push_back(v),
                _ => panic!(
                    "{}: no answer to the offer; got {:?}",
                    self.who, self.backlog
                ),
            }
        }
    }

    /// Waits until the chat channel is open.
    async fn chat_open(&mut self) {
        let chat = self.chat.as_mut().expect("a chat channel");
        tokio::time::timeout(WAIT, chat.open.wait_for(|o| *o))
            .await
            .unwrap_or_else(|_| panic!("{}: the data channel did not open", self.who))
            .expect("open state");
    }

    async fn say(&self, text: &str) {
        let chat = self.chat.as_ref().expect("a chat channel");
        chat.channel
            .send_text(text)
            .await
            .expect("sent on the data channel");
    }

    /// The next message relayed on the chat channel, as JSON.
    async fn heard(&mut self) -> Value {
        let chat = self.chat.as_mut().expect("a chat channel");
        let text = tokio::time::timeout(WAIT, chat.heard.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: nothing came on the data channel", self.who))
            .expect("data channel open");
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("relayed text is JSON: {text}"))
    }

    /// Everything received from `stream`'s `kind` track so far (None: no such track yet).
    fn received(&self, stream: &str, kind: &str) -> Option<Received> {
        let tracks = lock(&self.tracks);
        let mut found = tracks
            .iter()
            .map(|t| lock(t).clone())
            .filter(|t| t.stream == stream && t.kind == kind);
        let first = found.next()?;
        assert!(
            found.next().is_none(),
            "{}: two {kind} tracks from {stream}",
            self.who
        );
        Some(first)
    }

    fn count(&self, stream: &str, kind: &str) -> usize {
        self.received(stream, kind).map_or(0, |r| r.packets.len())
    }

    /// Waits until `stream`'s `kind` track brought at least `n` packets, then checks them: in
    /// order, intact, and from whom the track says.
    async fn receives(&self, stream: &str, kind: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT + WAIT;
        while self.count(stream, kind) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: {} of {n} {kind} packets from {stream}; tracks: {:?}",
                self.who,
                self.count(stream, kind),
                self.streams()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        check_packets(&self.received(stream, kind).unwrap());
    }

    /// Waits for `ENOUGH` more packets from `stream`'s `kind` track, and checks them all.
    async fn keeps_receiving(&self, stream: &str, kind: &str) {
        self.receives(stream, kind, self.count(stream, kind) + ENOUGH)
            .await;
    }

    /// (stream, kind) of every track received.
    /// The codec a stream's track of `kind` arrived in.
    fn codec_of(&self, stream: &str, kind: &str) -> String {
        lock(&self.tracks)
            .iter()
            .map(|t| lock(t))
            .find(|t| t.stream == stream && t.kind == kind)
            .map(|t| t.mime.clone())
            .unwrap_or_default()
    }

    /// Asks, on the track of `stream`'s `kind` it receives, for a keyframe (PLI).
    async fn ask_keyframe(&self, stream: &str, kind: &str) {
        let track = lock(&self.tracks)
            .iter()
            .map(|t| lock(t))
            .find(|t| t.stream == stream && t.kind == kind)
            .map(|t| Arc::clone(&t.track))
            .expect("a track of that stream");
        let ssrc = track.ssrcs().await.first().copied().expect("an SSRC");
        let pli = rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        track
            .write_rtcp(vec![Box::new(pli)])
            .await
            .expect("PLI sent");
    }

    fn keyframe_requests(&self) -> usize {
        self.keyframe_requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until more than `than` keyframe requests reached this peer.
    async fn keyframe_requested(&self, than: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.keyframe_requests() <= than {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no keyframe request came (still {than})",
                self.who
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn streams(&self) -> Vec<(String, &'static str)> {
        lock(&self.tracks)
            .iter()
            .map(|t| {
                let t = lock(t);
                (t.stream.clone(), t.kind)
            })
            .collect()
    }

    /// Waits until the peer connection is in a state `pred` accepts.
    async fn state_becomes(&mut self, what: &str, pred: impl Fn(&RTCPeerConnectionState) -> bool) {
        let reached = tokio::time::timeout(WAIT + WAIT, self.state.wait_for(pred))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            reached,
            "{}: the connection did not become {what}: {:?} (ICE: {:?})",
            self.who,
            *self.state.borrow(),
            lock(&self.ice)
        );
    }

    async fn connected(&mut self) {
        self.state_becomes("connected", |s| *s == RTCPeerConnectionState::Connected)
            .await;
    }
}

/// Handles what the server sends that concerns the peer connection: its offers are answered
/// at once, its answers and candidates applied (candidates that came before any remote
/// description wait for one).
async fn pump(
    pc: &Arc<dyn PeerConnection>,
    link: &Shared<Link>,
    v: &Value,
    early: &mut Vec<RTCIceCandidateInit>,
    route: Option<&dyn Route>,
) -> Result<(), String> {
    let sdp = || {
        let mut d = serde_json::from_value::<RTCSessionDescription>(v["sdp"].clone())
            .map_err(|e| e.to_string())?;
        if let Some(route) = route {
            d.sdp = routed_sdp(route, &d.sdp);
        }
        Ok::<_, String>(d)
    };
    match v["type"].as_str() {
        Some("offer") => {
            lock(link).open = false;
            pc.set_remote_description(sdp()?)
                .await
                .map_err(|e| e.to_string())?;
            add_early(pc, early).await?;
            let answer = pc.create_answer(None).await.map_err(|e| e.to_string())?;
            pc.set_local_description(answer)
                .await
                .map_err(|e| e.to_string())?;
            let local = pc.local_description().await.ok_or("no local description")?;
            lock(link).release(&json!({"type": "answer", "sdp": local}));
        }
        Some("answer") => {
            pc.set_remote_description(sdp()?)
                .await
                .map_err(|e| e.to_string())?;
            add_early(pc, early).await?;
        }
        Some("candidate") => {
            let mut c: RTCIceCandidateInit =
                serde_json::from_value(v["candidate"].clone()).map_err(|e| e.to_string())?;
            if let Some(route) = route {
                match route.candidate(&c.candidate) {
                    Some(routed) => c.candidate = routed,
                    None => return Ok(()),
                }
            }
            if pc.remote_description().await.is_none() {
                early.push(c);
            } else {
                pc.add_ice_candidate(c).await.map_err(|e| e.to_string())?;
            }
        }
        _ => {}
    }
    Ok(())
}

async fn add_early(
    pc: &Arc<dyn PeerConnection>,
    early: &mut Vec<RTCIceCandidateInit>,
) -> Result<(), String> {
    for c in early.drain(..) {
        pc.add_ice_candidate(c).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Creates and sets a local offer (the caller sends it).
async fn make_offer(pc: &Arc<dyn PeerConnection>) -> RTCSessionDescription {
    let offer = pc.create_offer(None).await.expect("offer created");
    pc.set_local_description(offer).await.expect("offer set");
    pc.local_description().await.expect("local description")
}

/// An offer that sends audio and video, from a throwaway peer connection.
async fn sending_offer(who: &'static str) -> Value {
    let mut p = Peer::new(who).await;
    p.publish().await;
    let offer = make_offer(&p.pc).await;
    json!({"type": "offer", "sdp": offer})
}

fn random_u32() -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]).max(1)
}

/// `Practitioner-dr-an/video/000123|` and padding: who sent it, what, and which packet.
fn payload(stream: &str, kind: &str, n: u32) -> Bytes {
    let mut p = format!("{stream}/{kind}/{n:06}|").into_bytes();
    p.resize(p.len() + 64, b'x');
    Bytes::from(p)
}

/// Reads a payload back: (stream, kind, counter).
fn parse_payload(p: &[u8]) -> (String, String, u32) {
    let text = String::from_utf8_lossy(p);
    let (head, pad) = text
        .split_once('|')
        .unwrap_or_else(|| panic!("payload mangled: {text}"));
    assert!(
        pad.len() == 64 && pad.bytes().all(|b| b == b'x'),
        "payload mangled: {text}"
    );
    let mut parts = head.split('/');
    let (Some(s), Some(k), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("payload mangled: {text}");
    };
    (s.to_string(), k.to_string(), n.parse().expect("counter"))
}

/// Packets of one received track: each from the track's own stream and kind, intact, in the
/// order sent, with sequence numbers that increase (wrapping) and skip no more than was lost.
fn check_packets(r: &Received) {
    let mut last: Option<(u16, u32)> = None;
    for (seq, p) in &r.packets {
        let (stream, kind, n) = parse_payload(p);
        assert_eq!(
            (stream.as_str(), kind.as_str()),
            (r.stream.as_str(), r.kind),
            "a packet on the wrong track"
        );
        if let Some((last_seq, last_n)) = last {
            let sent = n.wrapping_sub(last_n);
            let numbered = seq.wrapping_sub(last_seq);
            assert!(
                n > last_n && (1..0x8000).contains(&numbered) && u32::from(numbered) <= sent,
                "{} {}: packet {n} (seq {seq}) after packet {last_n} (seq {last_seq})",
                r.stream,
                r.kind
            );
        }
        last = Some((*seq, n));
    }
}

/// Writes a packet every 20 ms with the negotiated payload type, starting just short of the
/// sequence number wrap.
async fn send_rtp(
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    stream: String,
    kind: RtpCodecKind,
    ssrc: u32,
    (mime, fmtp, clock): (&'static str, &'static str, u32),
) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut payload_type = None;
    let (mut n, mut seq, mut ts) = (0u32, u16::MAX - 20, random_u32());
    loop {
        tick.tick().await;
        if payload_type.is_none() {
            payload_type = sender.get_parameters().await.ok().and_then(|p| {
                p.rtp_parameters
                    .codecs
                    .iter()
                    .find(|c| {
                        c.rtp_codec.mime_type.eq_ignore_ascii_case(mime)
                            && (fmtp.is_empty() || c.rtp_codec.sdp_fmtp_line == fmtp)
                    })
                    .map(|c| c.payload_type)
            });
        }
        let Some(pt) = payload_type else { continue };
        let packet = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                marker: kind == RtpCodecKind::Video,
                payload_type: pt,
                sequence_number: seq,
                timestamp: ts,
                ssrc,
                ..Default::default()
            },
            payload: payload(&stream, kind_name(kind), n),
        };
        if track.write_rtp(packet).await.is_ok() {
            n += 1;
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(clock / 50);
        }
    }
}

/// A socket that says `first` and must be refused: the `error` and the close code.
async fn refused(app: &TestApp, id: &str, first: Message) -> (Value, Option<u16>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(signal_url(app, id))
        .await
        .expect("the signaling socket opens");
    ws.send(first).await.expect("sent");
    let mut error = Value::Null;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                assert_eq!(
                    v["type"], "error",
                    "only an error before the socket closes: {v}"
                );
                error = v;
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                return (error, frame.map(|f| u16::from(f.code)));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return (error, None),
            Err(_) => panic!("the socket was not closed; last error {error}"),
        }
    }
}

fn join_message(token: &str) -> Message {
    Message::text(json!({"type": "join", "token": token}).to_string())
}

/// Doctor and station in the call, both sending and receiving; the station admitted.
async fn doctor_and_station(app: &TestApp, c: &Call) -> (Peer, Peer) {
    let mut dr = Peer::new(DR).await;
    dr.join(app, &c.id, &c.dr).await;
    dr.publish().await;
    assert_eq!(dr.offer().await["type"], "answer");
    let mut yt = Peer::new(YT).await;
    yt.join(app, &c.id, &c.yt).await;
    dr.next("participant-waiting").await;
    dr.send(json!({"type": "admit", "participant": YT}));
    yt.next("admitted").await;
    yt.publish().await;
    assert_eq!(yt.offer().await["type"], "answer");
    yt.receives(&stream_of(DR), "video", ENOUGH).await;
    dr.receives(&stream_of(YT), "video", ENOUGH).await;
    (dr, yt)
}

// ── The stories ────────────────────────────────────────────────────────────────────────

/// Constrained baseline, as phones send it.
const H264_FMTP: &str = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

async fn three_participants_hear_and_see_each_other(app: TestApp) {
    let c = call(&app, true).await;
    invite(&app, &c, json!({"patient": true})).await;
    // The doctor is in at once, alone.
    let mut dr = Peer::new(DR).await;
    let joined = dr.join(&app, &c.id, &c.dr).await;
    assert_eq!(joined["role"], "moderator", "{joined}");
    assert_eq!(joined["admitted"], true, "{joined}");
    assert_eq!(joined["resumed"], false, "{joined}");
    assert!(joined["iceServers"].is_array(), "{joined}");
    assert_eq!(joined["participants"], json!([]), "{joined}");
    dr.publish().await;
    let answer = dr.offer().await;
    assert_eq!(answer["type"], "answer", "{answer}");
    assert_eq!(answer["sdp"]["type"], "answer", "{answer}");
    // The station waits until the doctor admits it.
    let mut yt = Peer::new(YT).await;
    let joined = yt.join(&app, &c.id, &c.yt).await;
    assert_eq!(joined["role"], "publisher", "{joined}");
    assert_eq!(joined["admitted"], false, "{joined}");
    let others = joined["participants"].as_array().unwrap();
    assert!(
        others
            .iter()
            .any(|p| p["participant"] == DR && p["role"] == "moderator" && p["admitted"] == true),
        "{joined}"
    );
    let waiting = dr.next("participant-waiting").await;
    assert_eq!(waiting["participant"], YT, "{waiting}");
    assert_eq!(waiting["role"], "publisher", "{waiting}");
    dr.send(json!({"type": "admit", "participant": YT}));
    yt.next("admitted").await;
    let event = dr.next("participant-joined").await;
    assert_eq!(event["participant"], YT, "{event}");
    assert_eq!(event["stream"], stream_of(YT), "{event}");
    yt.publish().await;
    assert_eq!(yt.offer().await["type"], "answer");
    // Then the patient, from home.
    let mut pa = Peer::new(PA).await;
    let joined = pa.join(&app, &c.id, &c.pa).await;
    assert_eq!(joined["admitted"], false, "{joined}");
    assert_eq!(
        joined["participants"].as_array().map(Vec::len),
        Some(2),
        "{joined}"
    );
    assert_eq!(dr.next("participant-waiting").await["participant"], PA);
    dr.send(json!({"type": "admit", "participant": PA}));
    pa.next("admitted").await;
    for p in [&mut dr, &mut yt] {
        let event = p.next("participant-joined").await;
        assert_eq!(event["participant"], PA, "{}: {event}", p.who);
        assert_eq!(event["stream"], stream_of(PA), "{event}");
        assert_eq!(event["role"], "publisher", "{event}");
    }
    // The patient's phone sends H.264: relayed as it is, as VP8 is.
    pa.publish_with("video/H264", H264_FMTP).await;
    assert_eq!(pa.offer().await["type"], "answer");
    // Everyone hears and sees both others, in order, intact, labelled with whose they are.
    for p in [&dr, &yt, &pa] {
        for other in [DR, YT, PA].into_iter().filter(|o| *o != p.who) {
            for kind in ["audio", "video"] {
                p.receives(&stream_of(other), kind, ENOUGH).await;
            }
        }
        let mut streams = p.streams();
        streams.sort();
        let mut want: Vec<_> = [DR, YT, PA]
            .into_iter()
            .filter(|o| *o != p.who)
            .flat_map(|o| [(stream_of(o), "audio"), (stream_of(o), "video")])
            .collect();
        want.sort();
        assert_eq!(streams, want, "{}: the tracks received", p.who);
    }
    // The patient's video reaches the others in H.264, everyone else's in VP8.
    for (p, vp8_from) in [(&dr, YT), (&yt, DR)] {
        let h264 = p.codec_of(&stream_of(PA), "video");
        assert!(h264.eq_ignore_ascii_case("video/H264"), "{}: {h264}", p.who);
        let vp8 = p.codec_of(&stream_of(vp8_from), "video");
        assert!(vp8.eq_ignore_ascii_case("video/VP8"), "{}: {vp8}", p.who);
    }
    // The station's health worker writes; the doctor and the patient read it, signed.
    for p in [&mut dr, &mut yt, &mut pa] {
        p.connected().await;
        p.chat_open().await;
    }
    let text = "Huyết áp 150/95, SpO2 97%";
    yt.say(text).await;
    for p in [&mut dr, &mut pa] {
        assert_eq!(
            p.heard().await,
            json!({"from": YT, "text": text}),
            "{}",
            p.who
        );
    }
    for p in [&mut dr, &mut yt, &mut pa] {
        p.assert_no_errors();
    }
}

async fn an_observer_receives_but_cannot_publish(app: TestApp) {
    let c = call(&app, true).await;
    invite(&app, &c, json!({"observer": SV})).await;
    let mut dr = Peer::new(DR).await;
    dr.join(&app, &c.id, &c.dr).await;
    dr.publish().await;
    assert_eq!(dr.offer().await["type"], "answer");
    // The resident was added by the doctor: in at once, but only to watch.
    let mut sv = Peer::new(SV).await;
    let joined = sv.join(&app, &c.id, &c.sv).await;
    assert_eq!(joined["role"], "subscriber", "{joined}");
    assert_eq!(joined["admitted"], true, "{joined}");
    let event = dr.next("participant-joined").await;
    assert_eq!(event["participant"], SV, "{event}");
    assert_eq!(event["role"], "subscriber", "{event}");
    // An offer that would send a camera is refused.
    sv.send(sending_offer(SV).await);
    sv.error("forbidden").await;
    // Receiving only, the resident sees and hears the doctor.
    sv.receive_only().await;
    let answer = sv.offer().await;
    assert_eq!(answer["type"], "answer", "{answer}");
    sv.receives(&stream_of(DR), "video", ENOUGH).await;
    sv.receives(&stream_of(DR), "audio", ENOUGH).await;
    // What the doctor says on the data channel reaches the observer; the observer's own
    // messages go nowhere.
    dr.chat_open().await;
    sv.chat_open().await;
    sv.say("observer speaking").await;
    dr.say("Bắt đầu hội chẩn").await;
    assert_eq!(
        sv.heard().await,
        json!({"from": DR, "text": "Bắt đầu hội chẩn"})
    );
    let chat = dr.chat.as_mut().unwrap();
    let leaked = tokio::time::timeout(Duration::from_secs(2), chat.heard.recv()).await;
    assert!(
        leaked.is_err(),
        "the doctor got an observer's message: {leaked:?}"
    );
    // The doctor never gets a track of the observer's.
    assert!(
        dr.streams().iter().all(|(s, _)| *s != stream_of(SV)),
        "the doctor receives the observer: {:?}",
        dr.streams()
    );
    dr.assert_no_errors();
}

async fn the_patient_waits_until_the_doctor_admits_them(app: TestApp) {
    let c = call(&app, true).await;
    invite(&app, &c, json!({"patient": true})).await;
    let mut dr = Peer::new(DR).await;
    dr.join(&app, &c.id, &c.dr).await;
    dr.publish().await;
    assert_eq!(dr.offer().await["type"], "answer");
    let mut pa = Peer::new(PA).await;
    let joined = pa.join(&app, &c.id, &c.pa).await;
    assert_eq!(joined["admitted"], false, "{joined}");
    assert_eq!(joined["role"], "publisher", "{joined}");
    assert_eq!(dr.next("participant-waiting").await["participant"], PA);
    // Waiting, no media: an offer is refused, and nothing reaches the patient.
    pa.send(sending_offer(PA).await);
    pa.error("not-admitted").await;
    // Nor may the patient act for the doctor.
    pa.send(json!({"type": "admit", "participant": PA}));
    pa.error("forbidden").await;
    // The doctor lets the patient in.
    dr.send(json!({"type": "admit", "participant": PA}));
    pa.next("admitted").await;
    assert_eq!(dr.next("participant-joined").await["participant"], PA);
    pa.publish().await;
    assert_eq!(pa.offer().await["type"], "answer");
    pa.receives(&stream_of(DR), "video", ENOUGH).await;
    pa.receives(&stream_of(DR), "audio", ENOUGH).await;
    dr.receives(&stream_of(PA), "video", ENOUGH).await;
    // Admitted, still not the doctor.
    for refused in [
        json!({"type": "admit", "participant": DR}),
        json!({"type": "remove", "participant": DR}),
        json!({"type": "mute", "participant": DR, "kind": "audio", "muted": true}),
        json!({"type": "end"}),
    ] {
        pa.send(refused.clone());
        let e = pa.error("forbidden").await;
        assert!(e["message"].is_string(), "{refused}: {e}");
    }
    // And the call carries on: the doctor is still there and heard.
    pa.keeps_receiving(&stream_of(DR), "audio").await;
    assert!(
        dr.within(Duration::from_millis(500), "ended")
            .await
            .is_none()
    );
    assert!(
        dr.within(Duration::from_millis(10), "removed")
            .await
            .is_none()
    );
    dr.assert_no_errors();
}

async fn uninvited_users_and_expired_tokens_are_refused(app: TestApp) {
    let c = call(&app, true).await;
    // Not invited yet: the patient gets no token.
    api(&app, &c.pa, Method::POST, &format!("/{}/join", c.id), None)
        .await
        .assert_outcome(403);
    // A token that is no token, an access token, no join at all: refused and closed.
    let (e, code) = refused(&app, &c.id, join_message("not-a-token")).await;
    assert_eq!(e["code"], "unauthorized", "{e}");
    assert_eq!(code, Some(4001), "{e}");
    let (e, code) = refused(&app, &c.id, join_message(&c.dr)).await;
    assert_eq!(
        e["code"], "unauthorized",
        "an access token is not a join token: {e}"
    );
    assert_eq!(code, Some(4001));
    let (e, code) = refused(
        &app,
        &c.id,
        Message::text(sending_offer(DR).await.to_string()),
    )
    .await;
    assert_eq!(e["type"], "error", "{e}");
    assert!(code.is_some_and(|c| c >= 4000), "{e} {code:?}");
    // A token for another consultation does not open this one.
    let r = api(&app, &c.yt, Method::POST, "", Some(&ask(PA))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let other = r.json()["id"].as_str().unwrap().to_string();
    let r = api(
        &app,
        &c.dr,
        Method::POST,
        &format!("/{other}/accept"),
        Some(&json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let elsewhere = join_token(&app, &other, &c.dr).await;
    let (e, code) = refused(&app, &c.id, join_message(&elsewhere)).await;
    assert_eq!(e["code"], "unauthorized", "{e}");
    assert_eq!(code, Some(4001));
    // Tokens expire (this server's live one second, and five of leeway).
    let token = join_token(&app, &c.id, &c.yt).await;
    tokio::time::sleep(Duration::from_millis(7500)).await;
    let (e, code) = refused(&app, &c.id, join_message(&token)).await;
    assert_eq!(e["code"], "unauthorized", "{e}");
    assert!(e["message"].as_str().unwrap().contains("expired"), "{e}");
    assert_eq!(code, Some(4001));
    // A fresh one still works.
    let mut yt = Peer::new(YT).await;
    assert_eq!(yt.join(&app, &c.id, &c.yt).await["admitted"], false);
}

async fn a_dropped_participant_resumes_and_keeps_receiving(app: TestApp) {
    let c = call(&app, true).await;
    let (mut dr, mut yt) = doctor_and_station(&app, &c).await;
    let ufrag = ice_ufrag(&yt.pc.remote_description().await.unwrap());
    // The station's network drops: no leave, no close.
    yt.drop_socket();
    // The room sees nothing, and the media keeps flowing.
    assert!(
        dr.within(Duration::from_secs(3), "participant-left")
            .await
            .is_none(),
        "a dropped participant was announced gone at once"
    );
    yt.keeps_receiving(&stream_of(DR), "video").await;
    // The station comes back on a new socket: resumed, and the server restarts ICE.
    let joined = yt.join(&app, &c.id, &c.yt).await;
    assert_eq!(joined["resumed"], true, "{joined}");
    assert_eq!(joined["admitted"], true, "{joined}");
    let offer = yt.next("offer").await;
    let restarted: RTCSessionDescription = serde_json::from_value(offer["sdp"].clone()).unwrap();
    assert_ne!(
        ice_ufrag(&restarted),
        ufrag,
        "the server's offer does not restart ICE"
    );
    // Answered on the same peer connection, which keeps its tracks and keeps receiving.
    yt.keeps_receiving(&stream_of(DR), "video").await;
    yt.keeps_receiving(&stream_of(DR), "audio").await;
    dr.keeps_receiving(&stream_of(YT), "video").await;
    assert_eq!(yt.streams().len(), 2, "{:?}", yt.streams());
    // The room never saw it leave.
    assert!(
        dr.within(Duration::from_millis(10), "participant-left")
            .await
            .is_none()
    );
    yt.assert_no_errors();
    dr.assert_no_errors();
    // Another device taking the station's place replaces its socket.
    let token = join_token(&app, &c.id, &c.yt).await;
    let (mut device, _) = tokio_tungstenite::connect_async(signal_url(&app, &c.id))
        .await
        .expect("the signaling socket opens");
    device.send(join_message(&token)).await.expect("sent");
    let first = tokio::time::timeout(WAIT, device.next()).await;
    let Ok(Some(Ok(Message::Text(t)))) = first else {
        panic!("no joined: {first:?}");
    };
    let joined: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["resumed"], true, "{joined}");
    yt.error("replaced").await;
    yt.next("__closed").await;
}

async fn a_participant_who_does_not_come_back_is_gone_after_the_grace(app: TestApp) {
    let c = call(&app, true).await;
    let (mut dr, mut yt) = doctor_and_station(&app, &c).await;
    yt.drop_socket();
    let left = dr.next("participant-left").await;
    assert_eq!(left["participant"], YT, "{left}");
    assert_eq!(left["reason"], "timeout", "{left}");
    // Coming back later is a new entry: waiting for the doctor again.
    let mut again = Peer::new(YT).await;
    let joined = again.join(&app, &c.id, &c.yt).await;
    assert_eq!(joined["resumed"], false, "{joined}");
    assert_eq!(joined["admitted"], false, "{joined}");
    assert_eq!(dr.next("participant-waiting").await["participant"], YT);
}

async fn ending_the_consultation_closes_every_connection(app: TestApp) {
    let c = call(&app, true).await;
    let (mut dr, mut yt) = doctor_and_station(&app, &c).await;
    dr.connected().await;
    yt.connected().await;
    let spare = join_token(&app, &c.id, &c.yt).await;
    let end = json!({"conclusion": "Tăng huyết áp độ 2: điều trị tại trạm", "outcome": "local"});
    let r = api(
        &app,
        &c.dr,
        Method::POST,
        &format!("/{}/end", c.id),
        Some(&end),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let encounter = r.json()["encounter"]
        .as_str()
        .expect("the Encounter")
        .to_string();
    // Everyone is told, then closed, and their peer connections go down.
    for p in [&mut dr, &mut yt] {
        let ended = p.next("ended").await;
        assert!(
            ended["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{ended}"
        );
        let closed = p.next("__closed").await;
        assert_eq!(closed["code"], 1000, "{}: {closed}", p.who);
        p.state_becomes("closed, disconnected or failed", |s| {
            matches!(
                s,
                RTCPeerConnectionState::Closed
                    | RTCPeerConnectionState::Disconnected
                    | RTCPeerConnectionState::Failed
            )
        })
        .await;
    }
    let e = as_user(&app, &c.dr, Method::GET, &encounter, None).await;
    assert_eq!(e.json()["status"], "finished", "{}", e.body);
    // The room does not open again.
    api(&app, &c.yt, Method::POST, &format!("/{}/join", c.id), None)
        .await
        .assert_outcome(409);
    let (e, code) = refused(&app, &c.id, join_message(&spare)).await;
    assert_eq!(e["code"], "closed", "{e}");
    assert_eq!(code, Some(4009), "{e}");
}

async fn bad_messages_get_an_error_and_the_room_carries_on(app: TestApp) {
    let c = call(&app, true).await;
    let (mut dr, mut yt) = doctor_and_station(&app, &c).await;
    for (bad, says) in [
        (Message::text("hello?"), "JSON"),
        (Message::text(r#"{"no": "type"}"#), "type"),
        (Message::text(r#"{"type": "dance"}"#), "dance"),
        (
            Message::text(r#"{"type": "offer", "sdp": {"type": "offer", "sdp": "garbage"}}"#),
            "SDP",
        ),
        (Message::text(r#"{"type": "offer", "sdp": "v=0"}"#), "offer"),
        (
            Message::text(r#"{"type": "candidate", "candidate": {"sdpMid": "0"}}"#),
            "candidate",
        ),
        (Message::text(r#"{"type": "admit"}"#), "participant"),
        (
            Message::text(r#"{"type": "mute", "kind": "smell", "muted": true}"#),
            "mute",
        ),
        (Message::binary(vec![1u8, 2, 3]), "text"),
    ] {
        let sent = format!("{bad:?}");
        yt.send_raw(bad);
        let e = yt.error("bad-message").await;
        assert!(e["message"].as_str().unwrap().contains(says), "{sent}: {e}");
    }
    // Still in the call, still heard.
    yt.send(json!({"type": "ping"}));
    yt.next("pong").await;
    yt.keeps_receiving(&stream_of(DR), "video").await;
    dr.keeps_receiving(&stream_of(YT), "audio").await;
    dr.assert_no_errors();
}

async fn a_muted_track_is_not_relayed_and_resumes_in_sequence(app: TestApp) {
    let c = call(&app, true).await;
    let (mut dr, mut yt) = doctor_and_station(&app, &c).await;
    // The station turns its camera off: everyone is told, and its video stops coming.
    yt.send(json!({"type": "mute", "kind": "video", "muted": true}));
    for p in [&mut dr, &mut yt] {
        let m = p.next("muted").await;
        assert_eq!(
            m,
            json!({"type": "muted", "participant": YT, "kind": "video", "muted": true, "by": YT}),
            "{}",
            p.who
        );
    }
    dr.keeps_receiving(&stream_of(YT), "audio").await;
    let stopped = dr.count(&stream_of(YT), "video");
    dr.keeps_receiving(&stream_of(YT), "audio").await;
    assert_eq!(
        dr.count(&stream_of(YT), "video"),
        stopped,
        "muted video is still relayed"
    );
    // The doctor may mute the station's microphone, but not turn it back on.
    dr.send(json!({"type": "mute", "participant": YT, "kind": "audio", "muted": true}));
    let m = yt.next("muted").await;
    assert_eq!(
        (&m["kind"], &m["muted"], &m["by"]),
        (&json!("audio"), &json!(true), &json!(DR)),
        "{m}"
    );
    dr.send(json!({"type": "mute", "participant": YT, "kind": "audio", "muted": false}));
    dr.error("forbidden").await;
    // The camera back on: the video comes again, its sequence numbers taking up where they
    // stopped (no gap for the receiver to ask about).
    yt.send(json!({"type": "mute", "kind": "video", "muted": false}));
    let m = dr.next("muted").await;
    assert_eq!(
        (&m["kind"], &m["muted"]),
        (&json!("audio"), &json!(true)),
        "{m}"
    );
    let m = dr.next("muted").await;
    assert_eq!(
        (&m["kind"], &m["muted"]),
        (&json!("video"), &json!(false)),
        "{m}"
    );
    dr.keeps_receiving(&stream_of(YT), "video").await;
    let video = dr.received(&stream_of(YT), "video").unwrap();
    let (before, after) = (&video.packets[stopped - 1], &video.packets[stopped]);
    let (n_before, n_after) = (parse_payload(&before.1).2, parse_payload(&after.1).2);
    assert!(
        n_after > n_before + 10,
        "no gap in what was sent: {n_before} then {n_after}"
    );
    assert_eq!(
        after.0,
        before.0.wrapping_add(1),
        "sequence numbers jump across the mute"
    );
    dr.assert_no_errors();
}

/// The ICE username fragment of a description.
fn ice_ufrag(d: &RTCSessionDescription) -> String {
    d.sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("an ice-ufrag")
        .trim()
        .to_string()
}

/// A new receiver needs a keyframe to show anything: the relay asks the publisher for one when
/// someone starts receiving, and passes on a receiver's own requests (PLI) to the publisher.
async fn keyframe_requests_reach_the_publisher(app: TestApp) {
    let c = call(&app, true).await;
    let mut dr = Peer::new(DR).await;
    dr.join(&app, &c.id, &c.dr).await;
    dr.publish().await;
    assert_eq!(dr.offer().await["type"], "answer");
    dr.connected().await;
    // Alone, nobody receives the doctor's camera: nothing asks for a keyframe.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(dr.keyframe_requests(), 0, "a keyframe asked for nobody");
    // The station starts receiving: the doctor is asked for a keyframe.
    let mut yt = Peer::new(YT).await;
    yt.join(&app, &c.id, &c.yt).await;
    dr.next("participant-waiting").await;
    dr.send(json!({"type": "admit", "participant": YT}));
    yt.next("admitted").await;
    yt.receive_only().await;
    assert_eq!(yt.offer().await["type"], "answer");
    dr.keyframe_requested(0).await;
    yt.receives(&stream_of(DR), "video", ENOUGH).await;
    // The station's decoder lost its picture: its request reaches the doctor.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = dr.keyframe_requests();
    yt.ask_keyframe(&stream_of(DR), "video").await;
    dr.keyframe_requested(before).await;
    dr.assert_no_errors();
    yt.assert_no_errors();
}
