//! SFU benchmark (issue 8, part 4): N rooms × 3 participants, each publishing synthetic RTP
//! (VP8 video ~1.5 Mbit/s: 1,200-byte packets at ~156 packets/s in 30 frames/s, the marker bit
//! on each frame's last packet, a keyframe a second; Opus audio 48 kbit/s: 120-byte packets
//! at 50/s) and receiving the other two's, through **yba** (the release `yba serve` in its
//! own process, SQLite in a temporary folder, auth on) and through **Janus** (the Debian
//! package's `janus`, VideoRoom plugin, its own process, HTTP transport on loopback), in the
//! same run, with the same client stack (webrtc-rs 0.21) in this process.
//!
//! Every packet carries its stream, a counter and its send time (monotonic nanoseconds of
//! this process) at byte 12 of its payload (after a VP8 payload descriptor and frame header),
//! so each receiver measures one-way latency and loss. Figures are taken over a steady window
//! after a warm-up:
//!
//! - loss: packets received ÷ packets sent × subscribers, for packets sent in the window;
//! - CPU per forwarded packet: the server process's utime+stime (`/proc/<pid>/stat`) over the
//!   window ÷ packets received by subscribers in the window;
//! - latency added by the server: publisher → subscriber one-way latency through the SFU,
//!   minus the same measured on a direct webrtc-rs peer-to-peer mesh of the same rooms (same
//!   client stack, no server) in the same run (`--sfu p2p` runs it alone);
//! - memory per participant: (server RSS with the rooms up − RSS idle) ÷ participants;
//! - this process's own CPU (it competes for the same cores) is printed beside.
//!
//! ```sh
//! cargo bench --bench sfu -- --sfu both --rooms 30
//! cargo bench --bench sfu -- --sfu yba --rooms 10,20,30,40     # steps, rooms added in place
//! cargo bench --bench sfu -- --sfu janus --ramp                # +10 rooms until loss ≥ 1%
//!     [--warmup 10] [--seconds 20] [--max-rooms 80] [--step 10] [--no-baseline]
//!     [--janus-event-loops 0]
//! ```
//!
//! `--sfu both` (the default) runs the baseline, yba and Janus one after the other. Janus
//! comes from `apt-get install janus` (`/usr/bin/janus`, plugins in
//! `/usr/lib/x86_64-linux-gnu/janus`); without it, only yba runs. The Janus configuration is
//! `benches/janus/*.jcfg`, copied to a temporary folder.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
    Registry, SettingEngineBuilder, register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

use common::{Flags, rss_kb};

const PASSWORD: &str = "a-long-bench-password-for-everyone";
const PARTICIPANTS: usize = 3;
/// How long any one signaling step may take.
const WAIT: Duration = Duration::from_secs(30);
/// Marks a benchmark payload (at byte 12).
const MAGIC: u32 = 0x5942_4131;
const AUDIO: usize = 0;
const VIDEO: usize = 1;
const VIDEO_BYTES: usize = 1200;
const AUDIO_BYTES: usize = 120;

// ── Measurement ─────────────────────────────────────────────────────────────────────────────

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

const SHARDS: usize = 64;

/// What every sender and receiver of a run adds to: the window (send times, ns), packets
/// owed to subscribers and packets received, per kind, and one-way latencies (µs).
struct Meter {
    from: AtomicU64,
    until: AtomicU64,
    generated: [AtomicU64; 2],
    owed: [AtomicU64; 2],
    received: [AtomicU64; 2],
    /// Packets that arrived but were sent before the window or after it.
    outside: AtomicU64,
    latency: Vec<Mutex<Vec<u32>>>,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            from: AtomicU64::new(u64::MAX),
            until: AtomicU64::new(u64::MAX),
            generated: Default::default(),
            owed: Default::default(),
            received: Default::default(),
            outside: AtomicU64::new(0),
            latency: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.from.load(Ordering::Relaxed) && t < self.until.load(Ordering::Relaxed)
    }

    /// Opens a window `secs` long from now (for packets sent in it), clearing the counts.
    fn open(&self, secs: u64) {
        for k in 0..2 {
            self.generated[k].store(0, Ordering::SeqCst);
            self.owed[k].store(0, Ordering::SeqCst);
            self.received[k].store(0, Ordering::SeqCst);
        }
        self.outside.store(0, Ordering::SeqCst);
        for s in &self.latency {
            lock(s).clear();
        }
        let now = now_ns();
        self.until
            .store(now + secs * 1_000_000_000, Ordering::SeqCst);
        self.from.store(now, Ordering::SeqCst);
    }

    fn sent(&self, kind: usize, t: u64, subscribers: u64) {
        if self.in_window(t) {
            self.generated[kind].fetch_add(1, Ordering::Relaxed);
            self.owed[kind].fetch_add(subscribers, Ordering::Relaxed);
        }
    }

    /// A packet that reached a subscriber.
    fn arrived(&self, payload: &[u8]) {
        let now = now_ns();
        let Some(h) = payload.get(12..36) else {
            return;
        };
        if u32::from_be_bytes(h[0..4].try_into().expect("4 bytes")) != MAGIC {
            return;
        }
        let key = u32::from_be_bytes(h[4..8].try_into().expect("4 bytes"));
        let (kind, stream) = ((key & 1) as usize, key >> 1);
        let t = u64::from_be_bytes(h[16..24].try_into().expect("8 bytes"));
        if !self.in_window(t) {
            self.outside.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.received[kind].fetch_add(1, Ordering::Relaxed);
        let us = (now.saturating_sub(t) / 1000).min(u64::from(u32::MAX)) as u32;
        lock(&self.latency[stream as usize % SHARDS]).push(us);
    }

    fn latencies(&self) -> Vec<u32> {
        let mut all = Vec::new();
        for s in &self.latency {
            all.extend_from_slice(&lock(s));
        }
        all.sort_unstable();
        all
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

/// A process's CPU time so far (utime + stime), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count)
}

// ── A webrtc-rs participant's peer connection ───────────────────────────────────────────────

struct Handler {
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    state: watch::Sender<RTCPeerConnectionState>,
    meter: Arc<Meter>,
    tracks: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(c) = event.candidate.to_json() {
            let _ = self.candidates.send(c);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.tracks.fetch_add(1, Ordering::SeqCst);
        let meter = Arc::clone(&self.meter);
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(p) => meter.arrived(&p.payload),
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

/// One peer connection of this process, its local candidates as they come, its state, and how
/// many remote tracks reached it.
struct Pc {
    pc: Arc<dyn PeerConnection>,
    candidates: Option<mpsc::UnboundedReceiver<RTCIceCandidateInit>>,
    state: watch::Receiver<RTCPeerConnectionState>,
    tracks: Arc<AtomicU64>,
}

impl Pc {
    async fn new(meter: &Arc<Meter>, ip: std::net::IpAddr) -> Pc {
        let (tx, rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let tracks = Arc::new(AtomicU64::new(0));
        let handler = Arc::new(Handler {
            candidates: tx,
            state: state_tx,
            meter: Arc::clone(meter),
            tracks: Arc::clone(&tracks),
        });
        let mut media = MediaEngine::default();
        media.register_default_codecs().expect("codecs register");
        let registry =
            register_default_interceptors(Registry::new(), &mut media).expect("interceptors");
        // Loopback candidates, as the server's own connections on 127.0.0.1 gather them.
        let settings = SettingEngineBuilder::new().with_include_loopback_candidate(true);
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_setting_engine(settings.build())
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(vec![format!("{ip}:0")])
            .build()
            .await
            .expect("peer connection builds");
        Pc {
            pc: Arc::new(pc),
            candidates: Some(rx),
            state,
            tracks,
        }
    }

    /// Adds an Opus and a VP8 track; what a sender needs to write on them.
    async fn add_media(&self) -> [Outlet; 2] {
        let mut out = Vec::new();
        for (kind, name, mime) in [
            (RtpCodecKind::Audio, "audio", "audio/opus"),
            (RtpCodecKind::Video, "video", "video/VP8"),
        ] {
            let ssrc = rand_u32();
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                format!("bench-{ssrc}"),
                format!("{name}-{ssrc}"),
                name.to_string(),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: RTCRtpCodec::default(),
                    ..Default::default()
                }],
            )));
            let sender = self
                .pc
                .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                .await
                .expect("track added");
            out.push(Outlet {
                track,
                sender,
                ssrc,
                mime,
                pt: 0,
            });
        }
        let video = out.pop().expect("a video outlet");
        let audio = out.pop().expect("an audio outlet");
        [audio, video]
    }

    async fn connected(&mut self, who: &str) {
        let ok = tokio::time::timeout(
            WAIT,
            self.state
                .wait_for(|s| *s == RTCPeerConnectionState::Connected),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(
            ok,
            "{who}: the peer connection did not connect ({:?})",
            *self.state.borrow()
        );
    }

    async fn offer(&self) -> RTCSessionDescription {
        let offer = self.pc.create_offer(None).await.expect("offer created");
        self.pc
            .set_local_description(offer)
            .await
            .expect("offer set");
        self.pc.local_description().await.expect("local offer")
    }

    async fn answer(&self, offer: RTCSessionDescription) -> RTCSessionDescription {
        self.pc
            .set_remote_description(offer)
            .await
            .expect("remote offer set");
        let answer = self.pc.create_answer(None).await.expect("answer created");
        self.pc
            .set_local_description(answer)
            .await
            .expect("answer set");
        self.pc.local_description().await.expect("local answer")
    }
}

/// A local track and what writing RTP on it takes.
struct Outlet {
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    mime: &'static str,
    pt: u8,
}

impl Outlet {
    /// Looks up the negotiated payload type.
    async fn negotiated(&mut self) {
        for _ in 0..100 {
            let pt = self.sender.get_parameters().await.ok().and_then(|p| {
                p.rtp_parameters
                    .codecs
                    .iter()
                    .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(self.mime))
                    .map(|c| c.payload_type)
            });
            if let Some(pt) = pt {
                self.pt = pt;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {} payload type was negotiated", self.mime);
    }
}

fn rand_u32() -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]).max(1)
}

/// A payload of `len` bytes: a VP8 payload descriptor and frame header (video) or an Opus TOC
/// byte (audio), then the magic, stream, counter and send time at byte 12.
fn payload(len: usize, kind: usize, stream: u32, n: u64, t: u64, head: [u8; 12]) -> Bytes {
    let mut b = BytesMut::with_capacity(len);
    b.put_slice(&head);
    b.put_u32(MAGIC);
    b.put_u32((stream << 1) | kind as u32);
    b.put_u64(n);
    b.put_u64(t);
    b.resize(len, 0xa5);
    b.freeze()
}

/// Publishes one participant's audio and video on every outlet pair (one pair per peer
/// connection it sends on), for as long as the task lives. `subscribers`: how many receive
/// each packet.
fn spawn_senders(
    outlets: Vec<[Outlet; 2]>,
    stream: u32,
    subscribers: u64,
    meter: &Arc<Meter>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut audio = Vec::new();
    let mut video = Vec::new();
    for [a, v] in outlets {
        audio.push(a);
        video.push(v);
    }
    let m = Arc::clone(meter);
    let audio_task = tokio::spawn(async move {
        // Start at a random phase so that the rooms do not all send at the same instant.
        tokio::time::sleep(Duration::from_micros(u64::from(rand_u32() % 20_000))).await;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut n, mut seq, mut ts) = (0u64, rand_u32() as u16, rand_u32());
        loop {
            tick.tick().await;
            let t = now_ns();
            // An Opus TOC byte (SILK-only 20 ms frame, mono) and nothing else special.
            let mut head = [0u8; 12];
            head[0] = 0x78;
            let body = payload(AUDIO_BYTES, AUDIO, stream, n, t, head);
            m.sent(AUDIO, t, subscribers);
            for o in &audio {
                let p = rtp::Packet {
                    header: rtp::header::Header {
                        version: 2,
                        payload_type: o.pt,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc: o.ssrc,
                        marker: n == 0,
                        ..Default::default()
                    },
                    payload: body.clone(),
                };
                let _ = o.track.write_rtp(p).await;
            }
            n += 1;
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(960);
        }
    });
    let m = Arc::clone(meter);
    let video_task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_micros(u64::from(rand_u32() % 33_333))).await;
        let mut tick = tokio::time::interval(Duration::from_micros(33_333));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut n, mut frame, mut seq, mut ts) = (0u64, 0u64, rand_u32() as u16, rand_u32());
        loop {
            tick.tick().await;
            // 26 packets each 5 frames: 156 packets/s of 1,200 bytes, ~1.5 Mbit/s.
            let packets = if frame.is_multiple_of(5) { 6 } else { 5 };
            let key = frame.is_multiple_of(30);
            for i in 0..packets {
                let t = now_ns();
                let mut head = [0u8; 12];
                if i == 0 {
                    // VP8 payload descriptor: S=1, partition 0; then the frame header: P=0
                    // for a keyframe (with its start code and 640×480), P=1 otherwise.
                    head[0] = 0x10;
                    if key {
                        head[1..11].copy_from_slice(&[
                            0x50, 0x2f, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01,
                        ]);
                    } else {
                        head[1..4].copy_from_slice(&[0x51, 0x2f, 0x00]);
                    }
                }
                let body = payload(VIDEO_BYTES, VIDEO, stream, n, t, head);
                m.sent(VIDEO, t, subscribers);
                for o in &video {
                    let p = rtp::Packet {
                        header: rtp::header::Header {
                            version: 2,
                            payload_type: o.pt,
                            sequence_number: seq,
                            timestamp: ts,
                            ssrc: o.ssrc,
                            marker: i == packets - 1,
                            ..Default::default()
                        },
                        payload: body.clone(),
                    };
                    let _ = o.track.write_rtp(p).await;
                }
                n += 1;
                seq = seq.wrapping_add(1);
            }
            frame += 1;
            ts = ts.wrapping_add(3000);
        }
    });
    vec![audio_task, video_task]
}

/// Everything a room keeps alive: peer connections, tasks.
#[derive(Default)]
struct Held {
    pcs: Vec<Arc<dyn PeerConnection>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Held {
    async fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        for pc in self.pcs {
            let _ = pc.close().await;
        }
    }
}

// ── Baseline: a direct webrtc-rs mesh ───────────────────────────────────────────────────────

/// Forwards `from`'s candidates to `to` once `to` has a remote description.
fn forward_candidates(
    mut from: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    to: Arc<dyn PeerConnection>,
    ready: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ready = ready;
        let _ = ready.wait_for(|r| *r).await;
        while let Some(c) = from.recv().await {
            let _ = to.add_ice_candidate(c).await;
        }
    })
}

/// A room of three whose members send straight to one another: three peer connection pairs,
/// each member's media on both of its connections.
async fn p2p_room(room: usize, meter: &Arc<Meter>) -> Held {
    let mut held = Held::default();
    let mut outlets: Vec<Vec<[Outlet; 2]>> = (0..PARTICIPANTS).map(|_| Vec::new()).collect();
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let mut a = Pc::new(meter, LOOPBACK).await;
        let mut b = Pc::new(meter, LOOPBACK).await;
        let oa = a.add_media().await;
        let ob = b.add_media().await;
        let (a_ready_tx, a_ready) = watch::channel(false);
        let (b_ready_tx, b_ready) = watch::channel(false);
        held.tasks.push(forward_candidates(
            a.candidates.take().expect("candidates"),
            Arc::clone(&b.pc),
            b_ready,
        ));
        held.tasks.push(forward_candidates(
            b.candidates.take().expect("candidates"),
            Arc::clone(&a.pc),
            a_ready,
        ));
        let offer = a.offer().await;
        let answer = b.answer(offer).await;
        let _ = b_ready_tx.send(true);
        a.pc.set_remote_description(answer)
            .await
            .expect("answer set");
        let _ = a_ready_tx.send(true);
        a.connected(&format!("p2p room {room} {i}→{j}")).await;
        b.connected(&format!("p2p room {room} {j}→{i}")).await;
        outlets[i].push(oa);
        outlets[j].push(ob);
        held.pcs.push(a.pc);
        held.pcs.push(b.pc);
    }
    for (p, mut os) in outlets.into_iter().enumerate() {
        for pair in &mut os {
            for o in pair.iter_mut() {
                o.negotiated().await;
            }
        }
        held.tasks
            .extend(spawn_senders(os, stream_key(room, p), 2, meter));
    }
    held
}

fn stream_key(room: usize, participant: usize) -> u32 {
    (room * PARTICIPANTS + participant) as u32
}

// ── yba ─────────────────────────────────────────────────────────────────────────────────────

struct Yba {
    process: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
    next_room: usize,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn wait_port(addr: &str) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}

fn patient() -> Value {
    json!({"resourceType": "Patient", "id": "pa",
        "identifier": [{"system": "http://fhir.ehealth.gov.vn/core/sid/citizen_id", "value": "001090000501"}],
        "name": [{"family": "Nguyễn", "given": ["Văn", "An"]}],
        "gender": "male", "birthDate": "1990-04-30"})
}

impl Yba {
    /// Seeds a fresh SQLite database (hospital, station, patient, and for each of `rooms`
    /// rooms a doctor and two station health workers with accounts), then starts the server.
    async fn start(rooms: usize) -> Yba {
        use yba::auth::Role;
        use yba::auth::service::{NewUser, create_user};
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("yba.db").display());
        let config = yba::config::Config::local(url.clone());
        yba::store::migrate(&config.store()).expect("migrations run");
        {
            let store = yba::store::Store::open(&config.store()).expect("store opens");
            let fhir = yba::fhir::Fhir::new(store.clone(), Default::default());
            let mut seed = vec![
                (
                    "Organization",
                    "org-a".to_string(),
                    json!({"resourceType": "Organization", "id": "org-a", "name": "Bệnh viện A"}),
                ),
                (
                    "Organization",
                    "tram-c".to_string(),
                    json!({"resourceType": "Organization", "id": "tram-c", "name": "Trạm y tế xã C"}),
                ),
                ("Patient", "pa".to_string(), patient()),
                (
                    "Encounter",
                    "ec".to_string(),
                    json!({"resourceType": "Encounter", "id": "ec", "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": "Patient/pa"}, "serviceProvider": {"reference": "Organization/tram-c"}}),
                ),
            ];
            for r in 0..rooms {
                for who in people(r) {
                    let id = who.trim_start_matches("Practitioner/").to_string();
                    seed.push((
                        "Practitioner",
                        id.clone(),
                        json!({"resourceType": "Practitioner", "id": id, "name": [{"family": "Bench", "given": [id]}]}),
                    ));
                }
            }
            for (ty, id, v) in seed {
                fhir.update(ty, id, v, None).await.expect("seeded");
            }
            let mut creating = Vec::new();
            for r in 0..rooms {
                for (p, who) in people(r).into_iter().enumerate() {
                    let store = store.clone();
                    let org = if p == 0 { "org-a" } else { "tram-c" };
                    creating.push(tokio::spawn(async move {
                        create_user(
                            &store,
                            NewUser {
                                username: username(&who),
                                role: Role::Practitioner,
                                fhir_user: Some(who.clone()),
                                organization: Some(format!("Organization/{org}")),
                            },
                            PASSWORD,
                        )
                        .await
                        .expect("account created");
                    }));
                }
            }
            for c in creating {
                c.await.expect("account task");
            }
        }
        let addr = format!("127.0.0.1:{}", free_port());
        let process = std::process::Command::new(env!("CARGO_BIN_EXE_yba"))
            .arg("serve")
            .env("DATABASE_URL", &url)
            .env("YBA_BIND", &addr)
            .env("YBA_AUTH", "on")
            .env(
                "YBA_TOKEN_KEYS",
                "bench:YmVuY2gta2V5LW9mLWF0LWxlYXN0LTMyLWJ5dGVzLWxvbmctLS0tLS0=",
            )
            .env("YBA_ACCESS_TOKEN_TTL", "3600")
            .env("YBA_RATE_LIMIT", "0")
            .env("YBA_RTC_IP", "127.0.0.1")
            .env("YBA_MAX_ROOMS", (rooms + 10).to_string())
            .env("RUST_LOG", "warn")
            .stderr(std::fs::File::create(dir.path().join("yba.log")).expect("log file"))
            .spawn()
            .expect("yba starts");
        wait_port(&addr).await;
        Yba {
            process,
            addr,
            _dir: dir,
            http: reqwest::Client::new(),
            next_room: 0,
        }
    }

    async fn call(&self, token: &str, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("http://{}{path}", self.addr))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("yba answers");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn sign_in(&self, who: &str) -> String {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "password"),
                ("username", &username(who)),
                ("password", PASSWORD),
                ("scope", ""),
            ])
            .finish();
        let r = self
            .http
            .post(format!("http://{}/auth/token", self.addr))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("yba answers");
        let v: Value = r.json().await.expect("token JSON");
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{who} signs in: {v}"))
            .to_string()
    }

    /// One more room: the station asks, the doctor accepts, and all three enter and publish.
    async fn room(&mut self, meter: &Arc<Meter>) -> Held {
        let r = self.next_room;
        self.next_room += 1;
        let who = people(r);
        let mut tokens = Vec::new();
        for w in &who {
            tokens.push(self.sign_in(w).await);
        }
        let ask = json!({"patient": "Patient/pa", "hospital": "Organization/org-a",
            "reason": "Đau ngực", "specialty": "Tim mạch", "urgency": "urgent",
            "start": "2026-11-25T09:00:00+07:00", "minutes": 30});
        let c = self
            .call(&tokens[1], reqwest::Method::POST, "/api/consultations", ask)
            .await;
        let id = c["id"].as_str().expect("consultation id").to_string();
        self.call(
            &tokens[0],
            reqwest::Method::POST,
            &format!("/api/consultations/{id}/accept"),
            json!({}),
        )
        .await;
        let mut held = Held::default();
        let mut members: Vec<YbaPeer> = Vec::new();
        for (p, w) in who.iter().enumerate() {
            let join = self
                .call(
                    &tokens[p],
                    reqwest::Method::POST,
                    &format!("/api/consultations/{id}/join"),
                    Value::Null,
                )
                .await;
            let token = join["token"].as_str().expect("join token").to_string();
            let mut peer = YbaPeer::connect(&self.addr, &id, &token, meter, w).await;
            let joined = peer.next("joined").await;
            if joined["admitted"] != true {
                members[0].send(json!({"type": "admit", "participant": w}));
                peer.next("admitted").await;
            }
            let mut outlets = peer.pc.add_media().await;
            peer.offer().await;
            peer.pc.connected(w).await;
            for o in outlets.iter_mut() {
                o.negotiated().await;
            }
            held.tasks
                .extend(spawn_senders(vec![outlets], stream_key(r, p), 2, meter));
            members.push(peer);
        }
        // Everyone receives both others' audio and video.
        for m in &members {
            let deadline = Instant::now() + WAIT;
            while m.pc.tracks.load(Ordering::SeqCst) < 4 {
                assert!(
                    Instant::now() < deadline,
                    "{}: {} of 4 tracks arrived",
                    m.who,
                    m.pc.tracks.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for m in members {
            held.pcs.push(Arc::clone(&m.pc.pc));
            held.tasks.extend(m.tasks);
        }
        held
    }
}

impl Drop for Yba {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Room `r`'s doctor and two station health workers.
fn people(r: usize) -> [String; 3] {
    [
        format!("Practitioner/bs-{r}"),
        format!("Practitioner/yt-{r}-a"),
        format!("Practitioner/yt-{r}-b"),
    ]
}

fn username(who: &str) -> String {
    who.trim_start_matches("Practitioner/").replace('-', ".")
}

/// Local candidates held back until the description they belong to is sent.
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

    fn release(&mut self, description: &Value) {
        self.send(description);
        for c in std::mem::take(&mut self.held) {
            self.send(&c);
        }
        self.open = true;
    }
}

/// A participant in a yba room: its peer connection and signaling socket.
struct YbaPeer {
    who: String,
    pc: Pc,
    link: Arc<Mutex<Link>>,
    events: mpsc::UnboundedReceiver<Value>,
    backlog: Vec<Value>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl YbaPeer {
    async fn connect(addr: &str, id: &str, token: &str, meter: &Arc<Meter>, who: &str) -> YbaPeer {
        let mut pc = Pc::new(meter, LOOPBACK).await;
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/api/consultations/{id}/signal"))
                .await
                .expect("the signaling socket opens");
        let (mut sink, mut stream) = ws.split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let link = Arc::new(Mutex::new(Link {
            out: Some(out),
            ..Default::default()
        }));
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut tasks = vec![tokio::spawn(async move {
            while let Some(m) = outgoing.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        })];
        let mut candidates = pc.candidates.take().expect("candidates");
        let l = Arc::clone(&link);
        tasks.push(tokio::spawn(async move {
            while let Some(c) = candidates.recv().await {
                let v = json!({"type": "candidate", "candidate": c});
                let mut l = lock(&l);
                if l.open {
                    l.send(&v);
                } else {
                    l.held.push(v);
                }
            }
        }));
        let l = Arc::clone(&link);
        tasks.push(tokio::spawn(async move {
            // Not at once: `join` must be the socket's first message.
            let period = Duration::from_secs(10);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tick.tick().await;
                lock(&l).send(&json!({"type": "ping"}));
            }
        }));
        let p = Arc::clone(&pc.pc);
        let l = Arc::clone(&link);
        let name = who.to_string();
        tasks.push(tokio::spawn(async move {
            let mut early: Vec<RTCIceCandidateInit> = Vec::new();
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(text) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                match v["type"].as_str() {
                    Some("offer") => {
                        lock(&l).open = false;
                        let sdp: RTCSessionDescription =
                            serde_json::from_value(v["sdp"].clone()).expect("an SDP");
                        p.set_remote_description(sdp)
                            .await
                            .expect("server offer set");
                        for c in early.drain(..) {
                            let _ = p.add_ice_candidate(c).await;
                        }
                        let answer = p.create_answer(None).await.expect("answer");
                        p.set_local_description(answer).await.expect("answer set");
                        let local = p.local_description().await.expect("local answer");
                        lock(&l).release(&json!({"type": "answer", "sdp": local}));
                    }
                    Some("answer") => {
                        let sdp: RTCSessionDescription =
                            serde_json::from_value(v["sdp"].clone()).expect("an SDP");
                        p.set_remote_description(sdp)
                            .await
                            .expect("server answer set");
                        for c in early.drain(..) {
                            let _ = p.add_ice_candidate(c).await;
                        }
                    }
                    Some("candidate") => {
                        let Ok(c) =
                            serde_json::from_value::<RTCIceCandidateInit>(v["candidate"].clone())
                        else {
                            continue;
                        };
                        if p.remote_description().await.is_none() {
                            early.push(c);
                        } else {
                            let _ = p.add_ice_candidate(c).await;
                        }
                        continue;
                    }
                    Some("error") => eprintln!("{name}: {v}"),
                    _ => {}
                }
                let _ = events_tx.send(v);
            }
        }));
        lock(&link).send(&json!({"type": "join", "token": token}));
        YbaPeer {
            who: who.to_string(),
            pc,
            link,
            events,
            backlog: Vec::new(),
            tasks,
        }
    }

    fn send(&self, v: Value) {
        lock(&self.link).send(&v);
    }

    async fn next(&mut self, ty: &str) -> Value {
        if let Some(i) = self.backlog.iter().position(|v| v["type"] == ty) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(v)) if v["type"] == ty => return v,
                Ok(Some(v)) => self.backlog.push(v),
                _ => panic!("{}: no '{ty}' in time; got {:?}", self.who, self.backlog),
            }
        }
    }

    async fn offer(&mut self) {
        let offer = self.pc.offer().await;
        lock(&self.link).release(&json!({"type": "offer", "sdp": offer}));
        let a = self.next("answer").await;
        assert_eq!(a["type"], "answer", "{}: {a}", self.who);
    }
}

// ── Janus ───────────────────────────────────────────────────────────────────────────────────

struct Janus {
    process: std::process::Child,
    _dir: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
    session: u64,
    routes: Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>>,
    poller: tokio::task::JoinHandle<()>,
    next_room: usize,
}

const JANUS: &str = "/usr/bin/janus";
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
/// The address Janus and its clients use: libnice gathers no loopback candidates, so the
/// machine's own (non-loopback) address, which the kernel routes through loopback all the same.
static JANUS_IP: OnceLock<std::net::IpAddr> = OnceLock::new();

fn own_ip() -> std::net::IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("8.8.8.8:53")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(LOOPBACK)
}

impl Janus {
    fn installed() -> bool {
        std::path::Path::new(JANUS).exists()
    }

    async fn start(event_loops: usize) -> Janus {
        let dir = tempfile::Builder::new()
            .prefix("sfu-bench-janus")
            .disable_cleanup(std::env::var_os("SFU_BENCH_KEEP").is_some())
            .tempdir()
            .expect("temporary folder");
        let port = free_port();
        let templates = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/janus");
        for f in [
            "janus.jcfg",
            "janus.transport.http.jcfg",
            "janus.plugin.videoroom.jcfg",
        ] {
            let text = std::fs::read_to_string(format!("{templates}/{f}"))
                .expect("Janus configuration template");
            let loops = if event_loops > 0 {
                format!("event_loops = {event_loops}")
            } else {
                String::new()
            };
            let ip = *JANUS_IP.get_or_init(own_ip);
            let text = text
                .replace("@IP@", &ip.to_string())
                .replace("@CONFIGS@", &dir.path().display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@EVENT_LOOPS@", &loops);
            std::fs::write(dir.path().join(f), text).expect("Janus configuration written");
        }
        let log = std::fs::File::create(dir.path().join("janus.log")).expect("log file");
        let process = std::process::Command::new(JANUS)
            .arg("-F")
            .arg(dir.path())
            .arg("-C")
            .arg(dir.path().join("janus.jcfg"))
            .arg("-o")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("janus starts");
        let addr = format!("127.0.0.1:{port}");
        wait_port(&addr).await;
        let base = format!("http://{addr}/janus");
        let http = reqwest::Client::new();
        let v = post(&http, &base, json!({"janus": "create"})).await;
        let session = v["data"]["id"].as_u64().expect("a Janus session");
        let routes: Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>> = Arc::default();
        let r = Arc::clone(&routes);
        let url = format!("{base}/{session}?maxev=50");
        let h = http.clone();
        let poller = tokio::spawn(async move {
            loop {
                let Ok(resp) = h.get(&url).send().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(v) = resp.json::<Value>().await else {
                    continue;
                };
                let events = match v {
                    Value::Array(a) => a,
                    one => vec![one],
                };
                for e in events {
                    if let Some(sender) = e["sender"].as_u64()
                        && let Some(tx) = lock(&r).get(&sender)
                    {
                        let _ = tx.send(e);
                    }
                }
            }
        });
        Janus {
            process,
            _dir: dir,
            base,
            http,
            session,
            routes,
            poller,
            next_room: 0,
        }
    }

    /// A new VideoRoom handle and its events.
    async fn attach(&self) -> JanusHandle {
        let v = post(
            &self.http,
            &format!("{}/{}", self.base, self.session),
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
        )
        .await;
        let id = v["data"]["id"].as_u64().expect("a Janus handle");
        let (tx, events) = mpsc::unbounded_channel();
        lock(&self.routes).insert(id, tx);
        JanusHandle {
            url: format!("{}/{}/{id}", self.base, self.session),
            http: self.http.clone(),
            events,
        }
    }

    /// One more room: three publishers, then each subscribes to the other two on one
    /// connection (Janus's multistream subscriber).
    async fn room(&mut self, meter: &Arc<Meter>) -> Held {
        let r = self.next_room;
        self.next_room += 1;
        let room = 1000 + r as u64;
        let mut admin = self.attach().await;
        let created = admin
            .message(
                json!({"request": "create", "room": room, "publishers": PARTICIPANTS,
                   "audiocodec": "opus", "videocodec": "vp8", "bitrate": 0}),
                None,
            )
            .await;
        assert_eq!(
            created["plugindata"]["data"]["videoroom"], "created",
            "{created}"
        );
        let mut held = Held::default();
        let mut feeds = Vec::new();
        for p in 0..PARTICIPANTS {
            let mut h = self.attach().await;
            let joined = h
                .request(
                    json!({"request": "join", "ptype": "publisher", "room": room,
                       "display": format!("bench-{r}-{p}")}),
                    None,
                    "joined",
                )
                .await;
            let feed = joined["plugindata"]["data"]["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("a publisher id: {joined}"));
            feeds.push(feed);
            let mut pc = Pc::new(meter, JANUS_IP.get().copied().unwrap_or(LOOPBACK)).await;
            let mut outlets = pc.add_media().await;
            let offer = pc.offer().await;
            let answered = h
                .request(json!({"request": "publish"}), Some(json!(offer)), "jsep")
                .await;
            let answer: RTCSessionDescription = serde_json::from_value(answered["jsep"].clone())
                .unwrap_or_else(|_| panic!("Janus answers the publisher: {answered}"));
            pc.pc
                .set_remote_description(answer)
                .await
                .expect("Janus answer set");
            held.tasks.push(h.trickle(
                pc.candidates.take().expect("candidates"),
                Arc::clone(&pc.pc),
            ));
            let candidates: Vec<&str> = answered["jsep"]["sdp"]
                .as_str()
                .unwrap_or("")
                .lines()
                .filter(|l| l.starts_with("a=candidate"))
                .collect();
            pc.connected(&format!(
                "janus room {r} publisher {p} (Janus's candidates {candidates:?}; its log {})",
                self._dir.path().join("janus.log").display()
            ))
            .await;
            for o in outlets.iter_mut() {
                o.negotiated().await;
            }
            held.tasks
                .extend(spawn_senders(vec![outlets], stream_key(r, p), 2, meter));
            held.pcs.push(Arc::clone(&pc.pc));
            held.tasks.push(h.drain());
        }
        let mut subs = Vec::new();
        for p in 0..PARTICIPANTS {
            let mut h = self.attach().await;
            let streams: Vec<Value> = feeds
                .iter()
                .enumerate()
                .filter(|(q, _)| *q != p)
                .map(|(_, f)| json!({"feed": f}))
                .collect();
            // A feed whose connection Janus has not yet seen come up is "No such feed" (428)
            // for a moment: ask again.
            let mut tries = 0;
            let attached = loop {
                let asked = h
                    .try_request(
                        json!({"request": "join", "ptype": "subscriber", "room": room,
                           "streams": streams}),
                        None,
                        "attached",
                    )
                    .await;
                match asked {
                    Ok(a) => break a,
                    Err(e) if tries < 50 && e["plugindata"]["data"]["error_code"] == 428 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("Janus refused a subscriber of room {room}: {e}"),
                }
            };
            let offer: RTCSessionDescription = serde_json::from_value(attached["jsep"].clone())
                .unwrap_or_else(|_| panic!("Janus offers the subscriber: {attached}"));
            let mut pc = Pc::new(meter, JANUS_IP.get().copied().unwrap_or(LOOPBACK)).await;
            let answer = pc.answer(offer).await;
            let started = h
                .request(json!({"request": "start"}), Some(json!(answer)), "event")
                .await;
            assert!(
                started["plugindata"]["data"]["started"] == "ok",
                "subscriber start: {started}"
            );
            held.tasks.push(h.trickle(
                pc.candidates.take().expect("candidates"),
                Arc::clone(&pc.pc),
            ));
            pc.connected(&format!("janus room {r} subscriber {p}"))
                .await;
            subs.push(pc);
            held.tasks.push(h.drain());
        }
        for pc in &subs {
            let deadline = Instant::now() + WAIT;
            while pc.tracks.load(Ordering::SeqCst) < 4 {
                assert!(
                    Instant::now() < deadline,
                    "janus room {r}: {} of 4 tracks arrived",
                    pc.tracks.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for pc in subs {
            held.pcs.push(pc.pc);
        }
        held.tasks.push(admin.drain());
        held
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        self.poller.abort();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn transaction() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn post(http: &reqwest::Client, url: &str, mut body: Value) -> Value {
    body["transaction"] = json!(transaction());
    let r = http
        .post(url)
        .body(body.to_string())
        .send()
        .await
        .expect("Janus answers");
    let v: Value = r.json().await.expect("Janus JSON");
    assert!(
        v["janus"] == "success" || v["janus"] == "ack",
        "Janus refused {body}: {v}"
    );
    v
}

struct JanusHandle {
    url: String,
    http: reqwest::Client,
    events: mpsc::UnboundedReceiver<Value>,
}

impl JanusHandle {
    /// A synchronous plugin request: its answer.
    async fn message(&mut self, body: Value, jsep: Option<Value>) -> Value {
        let mut m = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        post(&self.http, &self.url, m).await
    }

    /// An asynchronous plugin request: the plugin's event that answers it, the first whose
    /// `videoroom` is `want` (or, for `want` = "jsep", that carries a JSEP); notices about the
    /// room's other publishers may come first.
    async fn request(&mut self, body: Value, jsep: Option<Value>, want: &str) -> Value {
        self.try_request(body.clone(), jsep, want)
            .await
            .unwrap_or_else(|e| panic!("Janus refused {body}: {e}"))
    }

    /// [`Self::request`], with the plugin's refusal as an error.
    async fn try_request(
        &mut self,
        body: Value,
        jsep: Option<Value>,
        want: &str,
    ) -> Result<Value, Value> {
        let v = self.message(body.clone(), jsep).await;
        if v["janus"] == "success" {
            return Ok(v);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) if e["janus"] == "event" => {
                    let data = &e["plugindata"]["data"];
                    if !data["error"].is_null() {
                        return Err(e);
                    }
                    let answers = if want == "jsep" {
                        !e["jsep"].is_null()
                    } else {
                        data["videoroom"] == want
                    };
                    if answers {
                        return Ok(e);
                    }
                }
                Ok(Some(_)) => {}
                _ => panic!("Janus did not answer {body}"),
            }
        }
    }

    /// Sends the peer connection's candidates to Janus, and adds those Janus trickles.
    fn trickle(
        &mut self,
        mut candidates: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
        _pc: Arc<dyn PeerConnection>,
    ) -> tokio::task::JoinHandle<()> {
        let (http, url) = (self.http.clone(), self.url.clone());
        tokio::spawn(async move {
            while let Some(c) = candidates.recv().await {
                let mut body = json!({"janus": "trickle", "candidate": c});
                body["transaction"] = json!(transaction());
                let _ = http.post(&url).body(body.to_string()).send().await;
            }
        })
    }

    /// Reads and drops the handle's later events (webrtcup, media, slowlink...).
    fn drain(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(e) = self.events.recv().await {
                if e["janus"] == "hangup" || e["janus"] == "detached" {
                    eprintln!("janus: {e}");
                }
            }
        })
    }
}

// ── Runs ────────────────────────────────────────────────────────────────────────────────────

enum Target {
    P2p,
    Yba(Yba),
    Janus(Janus),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::P2p => "p2p",
            Target::Yba(_) => "yba",
            Target::Janus(_) => "janus",
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Target::P2p => None,
            Target::Yba(y) => Some(y.process.id()),
            Target::Janus(j) => Some(j.process.id()),
        }
    }

    async fn room(&mut self, r: usize, meter: &Arc<Meter>) -> Held {
        match self {
            Target::P2p => p2p_room(r, meter).await,
            Target::Yba(y) => y.room(meter).await,
            Target::Janus(j) => j.room(meter).await,
        }
    }
}

/// One step's figures.
struct Step {
    sfu: &'static str,
    rooms: usize,
    sent_pps: f64,
    forwarded_pps: f64,
    loss: [f64; 2],
    loss_all: f64,
    cpu_us_per_packet: f64,
    sfu_cpu: f64,
    gen_cpu: f64,
    p50: f64,
    p99: f64,
    max: f64,
    rss_mb: f64,
    kb_per_participant: f64,
    threads: usize,
}

impl Step {
    fn print_header() {
        println!(
            "| sfu | rooms | sent pkt/s | forwarded pkt/s | loss audio % | loss video % | loss % | SFU CPU µs/pkt | SFU CPU % (of 1 core) | generator CPU % | latency p50 ms | p99 ms | max ms | SFU RSS MB | kB/participant | SFU threads |"
        );
        println!(
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
    }

    fn print(&self) {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.0} | {} |",
            self.sfu,
            self.rooms,
            self.sent_pps,
            self.forwarded_pps,
            self.loss[0],
            self.loss[1],
            self.loss_all,
            self.cpu_us_per_packet,
            self.sfu_cpu,
            self.gen_cpu,
            self.p50,
            self.p99,
            self.max,
            self.rss_mb,
            self.kb_per_participant,
            self.threads
        );
    }
}

struct Args {
    sfus: Vec<String>,
    rooms: Vec<usize>,
    ramp: bool,
    step: usize,
    max_rooms: usize,
    warmup: u64,
    seconds: u64,
    baseline: bool,
    janus_event_loops: usize,
}

fn args() -> Args {
    let f = Flags::parse();
    let sfu = f.text("sfu", "both");
    let mut sfus: Vec<String> = match sfu.as_str() {
        "both" | "all" => vec!["yba".into(), "janus".into()],
        s => s.split(',').map(str::to_string).collect(),
    };
    let baseline = !f.on("no-baseline") && !sfus.iter().any(|s| s == "p2p");
    if baseline {
        sfus.insert(0, "p2p".into());
    }
    let ramp = f.on("ramp");
    let step = f.num("step", 10);
    let rooms = f
        .text("rooms", if ramp { "" } else { "30" })
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    Args {
        sfus,
        rooms,
        ramp,
        step,
        max_rooms: f.num("max-rooms", 80),
        warmup: f.num("warmup", 10),
        seconds: f.num("seconds", 20),
        baseline,
        janus_event_loops: f.num("janus-event-loops", 0),
    }
}

/// Runs one target through its steps (rooms added in place); its figures.
async fn run_target(name: &str, a: &Args) -> Vec<Step> {
    let steps: Vec<usize> = if a.ramp {
        (1..)
            .map(|i| i * a.step)
            .take_while(|n| *n <= a.max_rooms)
            .collect()
    } else {
        a.rooms.clone()
    };
    let most = steps.iter().copied().max().unwrap_or(0);
    let meter = Arc::new(Meter::new());
    let mut target = match name {
        "p2p" => Target::P2p,
        "yba" => Target::Yba(Yba::start(most).await),
        "janus" => Target::Janus(Janus::start(a.janus_event_loops).await),
        other => panic!("unknown --sfu {other}: yba, janus, p2p or both"),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = target.pid().map_or(0, rss_kb);
    let me = std::process::id();
    let mut held = Vec::new();
    let mut out = Vec::new();
    for n in steps {
        let t = Instant::now();
        while held.len() < n {
            let r = held.len();
            held.push(target.room(r, &meter).await);
        }
        eprintln!(
            "{name}: {n} rooms up in {:.1} s; warm-up {} s",
            t.elapsed().as_secs_f64(),
            a.warmup
        );
        tokio::time::sleep(Duration::from_secs(a.warmup)).await;
        let pid = target.pid();
        let (cpu0, gen0) = (pid.map_or(0.0, cpu_secs), cpu_secs(me));
        let t0 = Instant::now();
        meter.open(a.seconds);
        tokio::time::sleep(Duration::from_secs(a.seconds)).await;
        let (cpu1, gen1) = (pid.map_or(0.0, cpu_secs), cpu_secs(me));
        let wall = t0.elapsed().as_secs_f64();
        let rss = pid.map_or(0, rss_kb);
        let threads = pid.map_or(0, threads_of);
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        eprintln!("{name}: {n} rooms measured; load average {}", load.trim());
        // Let the packets sent at the end of the window arrive.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let owed: Vec<u64> = meter
            .owed
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect();
        let got: Vec<u64> = meter
            .received
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect();
        let generated: u64 = meter
            .generated
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum();
        let loss = |o: u64, g: u64| {
            if o == 0 {
                f64::NAN
            } else {
                100.0 * (1.0 - g as f64 / o as f64)
            }
        };
        let lat = meter.latencies();
        let forwarded: u64 = got.iter().sum();
        let participants = (n * PARTICIPANTS) as f64;
        let s = Step {
            sfu: target.name(),
            rooms: n,
            sent_pps: generated as f64 / a.seconds as f64,
            forwarded_pps: forwarded as f64 / a.seconds as f64,
            loss: [loss(owed[0], got[0]), loss(owed[1], got[1])],
            loss_all: loss(owed.iter().sum(), forwarded),
            cpu_us_per_packet: if pid.is_some() && forwarded > 0 {
                (cpu1 - cpu0) * 1e6 / forwarded as f64
            } else {
                f64::NAN
            },
            sfu_cpu: 100.0 * (cpu1 - cpu0) / wall,
            gen_cpu: 100.0 * (gen1 - gen0) / wall,
            p50: pct(&lat, 0.50),
            p99: pct(&lat, 0.99),
            max: lat.last().map_or(f64::NAN, |m| f64::from(*m) / 1000.0),
            rss_mb: rss as f64 / 1024.0,
            kb_per_participant: if pid.is_some() {
                (rss as f64 - idle_rss as f64) / participants
            } else {
                f64::NAN
            },
            threads,
        };
        s.print();
        let over = s.loss_all >= 1.0 || s.loss_all.is_nan();
        out.push(s);
        if a.ramp && over {
            eprintln!(
                "{name}: loss {:.2}% at {n} rooms: stop",
                out[out.len() - 1].loss_all
            );
            break;
        }
    }
    eprintln!("{name}: idle RSS {:.1} MB", idle_rss as f64 / 1024.0);
    for h in held {
        h.close().await;
    }
    drop(target);
    tokio::time::sleep(Duration::from_secs(2)).await;
    out
}

fn main() {
    // reqwest is built without a TLS provider of its own: the process installs ring first.
    yba::install_tls();
    let a = args();
    epoch();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut all = Vec::new();
        println!(
            "SFU bench: {} × 3 participants, warm-up {} s, window {} s, targets {:?}{}",
            if a.ramp {
                format!("ramp +{} up to {} rooms", a.step, a.max_rooms)
            } else {
                format!("{:?} rooms", a.rooms)
            },
            a.warmup,
            a.seconds,
            a.sfus,
            if a.baseline { " (p2p: the baseline)" } else { "" }
        );
        Step::print_header();
        for name in &a.sfus {
            if name == "janus" && !Janus::installed() {
                println!(
                    "janus is not installed ({JANUS} missing): `apt-get install janus` to compare; skipped"
                );
                continue;
            }
            all.extend(run_target(name, &a).await);
        }
        // Latency added by each server: its percentiles minus the baseline's at the same rooms.
        let base: HashMap<usize, (f64, f64)> = all
            .iter()
            .filter(|s| s.sfu == "p2p")
            .map(|s| (s.rooms, (s.p50, s.p99)))
            .collect();
        if !base.is_empty() {
            println!();
            println!("| sfu | rooms | added latency p50 ms | added p99 ms |");
            println!("|---|---:|---:|---:|");
            for s in all.iter().filter(|s| s.sfu != "p2p") {
                if let Some((b50, b99)) = base.get(&s.rooms) {
                    println!(
                        "| {} | {} | {:.2} | {:.2} |",
                        s.sfu,
                        s.rooms,
                        s.p50 - b50,
                        s.p99 - b99
                    );
                }
            }
        }
        println!();
        println!("All figures:");
        Step::print_header();
        for s in &all {
            s.print();
        }
    });
}
