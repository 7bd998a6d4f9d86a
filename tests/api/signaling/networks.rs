//! Consultations where commune stations actually are (issue 8): behind firewalls that let no
//! UDP through (ICE-TCP to the relay, or TURN through coturn with relay candidates only), on
//! weak mobile links (10% loss, 300 ms each way), receivers that ask for less video (audio
//! first), and simulcast publishers whose layers each receiver gets as it asked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use webrtc::peer_connection::{RTCConfigurationBuilder, RTCIceServer, RTCIceTransportPolicy};

use super::*;

crate::on_both_databases!(@with crate::helpers::with_auth;
    a_station_without_udp_reaches_the_relay_over_tcp,
    the_call_survives_a_weak_mobile_link,
    a_collapsing_link_keeps_the_audio_and_drops_the_video,
    a_bad_uplink_costs_no_one_else_their_video,
    a_receiver_can_ask_for_audio_only_and_back,
    each_receiver_gets_the_simulcast_layer_it_asked_for,
);

/// On a server that hands out coturn credentials.
mod turn {
    use super::a_station_allowed_only_relay_candidates_gets_through_turn;
    crate::on_both_databases!(@with crate::signaling::networks::with_turn;
        a_station_allowed_only_relay_candidates_gets_through_turn,
    );
}

const TURN_SECRET: &str = "test-only-turn-secret";

/// Auth on; TURN on a loopback port of its own (the test starts coturn there) with the shared
/// secret coturn checks credentials by.
fn with_turn(c: &mut yba::config::Config) {
    crate::helpers::with_auth(c);
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port();
    c.ice_servers = vec![format!("turn:127.0.0.1:{port}?transport=udp")];
    c.turn_secret = Some(TURN_SECRET.parse().expect("a secret"));
}

/// The doctor in the call, sending.
async fn doctor_publishing(app: &TestApp, c: &Call) -> Peer {
    let mut dr = Peer::new(DR).await;
    dr.join(app, &c.id, &c.dr).await;
    dr.publish().await;
    assert_eq!(dr.offer().await["type"], "answer");
    dr
}

/// The station, joined (however it is connected), is admitted by the doctor and sends.
async fn admitted_and_publishing(dr: &mut Peer, yt: &mut Peer) {
    dr.next("participant-waiting").await;
    dr.send(json!({"type": "admit", "participant": YT}));
    yt.next("admitted").await;
    yt.publish().await;
    assert_eq!(yt.offer().await["type"], "answer");
}

/// Audio and video both ways.
async fn both_see_and_hear(dr: &Peer, yt: &Peer) {
    for kind in ["audio", "video"] {
        yt.receives(&stream_of(DR), kind, ENOUGH).await;
        dr.receives(&stream_of(YT), kind, ENOUGH).await;
    }
}

// ── Firewalls ────────────────────────────────────────────────────────────────────────────

/// A station whose network lets no UDP out: ICE-TCP to the relay's passive candidates.
async fn a_station_without_udp_reaches_the_relay_over_tcp(app: TestApp) {
    let c = call(&app, true).await;
    let mut dr = doctor_publishing(&app, &c).await;
    let tcp_only = Device {
        tcp_only: true,
        ..Device::default()
    };
    let mut yt = Peer::on(YT, tcp_only, None).await;
    yt.join(&app, &c.id, &c.yt).await;
    admitted_and_publishing(&mut dr, &mut yt).await;
    both_see_and_hear(&dr, &yt).await;
    let gathered = lock(&yt.gathered).clone();
    assert!(
        !gathered.is_empty() && gathered.iter().all(|c| c.contains(" tcp ")),
        "the station had only TCP: {gathered:?}"
    );
    yt.assert_no_errors();
    dr.assert_no_errors();
}

/// coturn on loopback (TURN REST shared secret), stopped when dropped.
struct Coturn {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Coturn {
    /// Started on `port`; None (test skipped) where coturn is not installed, except in CI,
    /// where it must be (`.ci/run` installs it).
    async fn start(port: u16) -> Option<Coturn> {
        let installed = std::process::Command::new("turnserver")
            .arg("--help")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "coturn (turnserver) is required in CI: apt-get install coturn"
            );
            eprintln!("skipped: coturn is not installed (apt-get install coturn)");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let relays = 40_000 + (port % 400) * 50;
        let arg = |k: &str, v: &dyn std::fmt::Display| format!("--{k}={v}");
        let child = tokio::process::Command::new("turnserver")
            .args([
                "-n".to_string(),
                arg("listening-ip", &"127.0.0.1"),
                arg("listening-port", &port),
                arg("relay-ip", &"127.0.0.1"),
                arg("min-port", &relays),
                arg("max-port", &(relays + 49)),
                "--use-auth-secret".into(),
                arg("static-auth-secret", &TURN_SECRET),
                arg("realm", &"yba.test"),
                // The relay's own address is a loopback one here, as the server's is.
                "--allow-loopback-peers".into(),
                "--no-cli".into(),
                "--no-tls".into(),
                "--no-dtls".into(),
                "--fingerprint".into(),
                arg("userdb", &dir.path().join("turndb").display()),
                arg("pidfile", &dir.path().join("turn.pid").display()),
                arg("log-file", &dir.path().join("turn.log").display()),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("turnserver starts");
        // Listening once its port is taken.
        let deadline = tokio::time::Instant::now() + WAIT;
        while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "coturn did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Coturn {
            _child: child,
            _dir: dir,
        })
    }
}

/// A station behind a firewall that lets nothing through but its TURN server: with only relay
/// candidates allowed, the call still goes, through coturn, on the credentials yba minted.
async fn a_station_allowed_only_relay_candidates_gets_through_turn(app: TestApp) {
    let c = call(&app, true).await;
    let mut dr = doctor_publishing(&app, &c).await;
    let mut yt = Peer::new(YT).await;
    let joined = yt.join(&app, &c.id, &c.yt).await;
    // The TURN server with credentials for this participant: `expiry:participant`.
    let turn = joined["iceServers"]
        .as_array()
        .and_then(|s| {
            s.iter().find(|s| {
                s["urls"][0]
                    .as_str()
                    .is_some_and(|u| u.starts_with("turn:"))
            })
        })
        .unwrap_or_else(|| panic!("no TURN server in {joined}"))
        .clone();
    let url = turn["urls"][0].as_str().unwrap().to_string();
    let username = turn["username"]
        .as_str()
        .expect("a TURN username")
        .to_string();
    let (expiry, who) = username.split_once(':').expect("expiry:participant");
    assert_eq!(who, YT);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expiry.parse::<u64>().unwrap() > now, "{username}");
    let port: u16 = url
        .trim_start_matches("turn:127.0.0.1:")
        .split('?')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a loopback TURN URL: {url}"));
    let Some(_coturn) = Coturn::start(port).await else {
        return;
    };
    let relay_only = RTCConfigurationBuilder::new()
        .with_ice_servers(vec![RTCIceServer {
            urls: vec![url],
            username,
            credential: turn["credential"].as_str().unwrap().to_string(),
        }])
        .with_ice_transport_policy(RTCIceTransportPolicy::Relay)
        .build();
    yt.pc
        .set_configuration(relay_only)
        .await
        .expect("relay-only configuration");
    admitted_and_publishing(&mut dr, &mut yt).await;
    both_see_and_hear(&dr, &yt).await;
    let gathered = lock(&yt.gathered).clone();
    assert!(
        !gathered.is_empty() && gathered.iter().all(|c| c.contains(" typ relay")),
        "the station had only relay candidates: {gathered:?}"
    );
    yt.assert_no_errors();
    dr.assert_no_errors();
}

// ── Weak links ───────────────────────────────────────────────────────────────────────────

/// A mobile link, in the test: each datagram is lost with the probability of its direction
/// (up to the server, down from it; changeable during the call) and arrives `delay` later, in
/// order. One relay per server address it stands in front of.
struct WeakLink {
    /// f64 bits: up, down.
    loss: [Arc<AtomicU64>; 2],
    delay: Duration,
    relays: Mutex<HashMap<SocketAddr, SocketAddr>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    seed: AtomicU64,
}

impl Drop for WeakLink {
    fn drop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

impl WeakLink {
    fn new(loss: f64, delay: Duration) -> Arc<WeakLink> {
        let bits = || Arc::new(AtomicU64::new(loss.to_bits()));
        Arc::new(WeakLink {
            loss: [bits(), bits()],
            delay,
            relays: Mutex::default(),
            tasks: Mutex::default(),
            seed: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        })
    }

    /// From now on, datagrams to the server are lost with probability `loss`.
    fn set_up_loss(&self, loss: f64) {
        self.loss[0].store(loss.to_bits(), Ordering::Relaxed);
    }

    /// From now on, datagrams from the server are lost with probability `loss`.
    fn set_down_loss(&self, loss: f64) {
        self.loss[1].store(loss.to_bits(), Ordering::Relaxed);
    }

    /// The address that stands for `server` on this link.
    fn relay_to(&self, server: SocketAddr) -> SocketAddr {
        if let Some(a) = lock(&self.relays).get(&server) {
            return *a;
        }
        let bind = || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
            s.set_nonblocking(true).expect("non-blocking");
            Arc::new(tokio::net::UdpSocket::from_std(s).expect("a tokio socket"))
        };
        let (near, far) = (bind(), bind());
        let addr = near.local_addr().expect("address");
        let client: Shared<Option<SocketAddr>> = Shared::default();
        let seed = self.seed.fetch_add(0x1234_5678_9ABC, Ordering::Relaxed);
        let (up, down) = (
            self.delayed(Arc::clone(&far), Arc::new(Mutex::new(Some(server)))),
            self.delayed(Arc::clone(&near), Arc::clone(&client)),
        );
        let [up_loss, down_loss] = self.loss.clone();
        let mut tasks = lock(&self.tasks);
        let (near_in, client_in) = (Arc::clone(&near), Arc::clone(&client));
        tasks.push(tokio::spawn(async move {
            let mut rng = seed;
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = near_in.recv_from(&mut buf).await {
                *lock(&client_in) = Some(from);
                if !lost(&mut rng, &up_loss) {
                    let _ = up.send(Bytes::copy_from_slice(&buf[..n]));
                }
            }
        }));
        tasks.push(tokio::spawn(async move {
            let mut rng = seed ^ 0xDEAD_BEEF;
            let mut buf = vec![0u8; 2048];
            while let Ok((n, _)) = far.recv_from(&mut buf).await {
                if !lost(&mut rng, &down_loss) {
                    let _ = down.send(Bytes::copy_from_slice(&buf[..n]));
                }
            }
        }));
        lock(&self.relays).insert(server, addr);
        addr
    }

    /// A sender that delivers, `delay` after each was handed to it, in order, from `socket` to
    /// the address `to` holds then.
    fn delayed(
        &self,
        socket: Arc<tokio::net::UdpSocket>,
        to: Shared<Option<SocketAddr>>,
    ) -> mpsc::UnboundedSender<Bytes> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let (delay, (due_tx, mut due_rx)) = (self.delay, mpsc::unbounded_channel());
        // Stamped on arrival, sent when due: a fixed delay keeps the order.
        lock(&self.tasks).push(tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                let _ = due_tx.send((tokio::time::Instant::now() + delay, b));
            }
        }));
        lock(&self.tasks).push(tokio::spawn(async move {
            while let Some((due, b)) = due_rx.recv().await {
                tokio::time::sleep_until(due).await;
                let dest = *lock(&to);
                if let Some(dest) = dest {
                    let _ = socket.send_to(&b, dest).await;
                }
            }
        }));
        tx
    }
}

/// xorshift64: whether this datagram is lost.
fn lost(state: &mut u64, loss: &AtomicU64) -> bool {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let draw = (*state >> 11) as f64 / (1u64 << 53) as f64;
    draw < f64::from_bits(loss.load(Ordering::Relaxed))
}

impl Route for WeakLink {
    /// `candidate:<foundation> <component> <transport> <priority> <address> <port> typ ...`:
    /// UDP candidates go through the link; the others (TCP) are not reachable on it.
    fn candidate(&self, c: &str) -> Option<String> {
        let mut f: Vec<String> = c.split(' ').map(str::to_string).collect();
        if f.len() < 8 || !f[2].eq_ignore_ascii_case("udp") {
            return None;
        }
        let server: SocketAddr = format!("{}:{}", f[4], f[5]).parse().ok()?;
        let relay = self.relay_to(server);
        f[4] = relay.ip().to_string();
        f[5] = relay.port().to_string();
        Some(f.join(" "))
    }
}

/// The station on a bad 3G link (10% of datagrams lost each way, 300 ms each way) with the
/// doctor on a good one: the call connects, and audio keeps flowing both ways.
async fn the_call_survives_a_weak_mobile_link(app: TestApp) {
    let c = call(&app, true).await;
    let mut dr = doctor_publishing(&app, &c).await;
    let link = WeakLink::new(0.10, Duration::from_millis(300));
    let mut yt = Peer::on(YT, Device::default(), Some(link as Arc<dyn Route>)).await;
    yt.join(&app, &c.id, &c.yt).await;
    admitted_and_publishing(&mut dr, &mut yt).await;
    yt.connected().await;
    // Audio both ways, second after second, for ten seconds: each second brings most of the
    // 50 packets sent in it.
    let (from_dr, from_yt) = (stream_of(DR), stream_of(YT));
    yt.receives(&from_dr, "audio", 1).await;
    dr.receives(&from_yt, "audio", 1).await;
    let start = (yt.count(&from_dr, "audio"), dr.count(&from_yt, "audio"));
    let mut last = start;
    for second in 1..=10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = (yt.count(&from_dr, "audio"), dr.count(&from_yt, "audio"));
        assert!(
            now.0 > last.0 + 20 && now.1 > last.1 + 20,
            "audio stalled in second {second}: station got {} then {}, doctor {} then {}",
            last.0,
            now.0,
            last.1,
            now.1
        );
        last = now;
    }
    // About 90% of 500 packets each way (10% lost on the link; audio is not retransmitted).
    for (got, who) in [
        (last.0 - start.0, "the station"),
        (last.1 - start.1, "the doctor"),
    ] {
        assert!(got >= 380, "{who} got {got} of ~500 audio packets");
    }
    for (p, from) in [(&yt, &from_dr), (&dr, &from_yt)] {
        check_packets(&p.received(from, "audio").unwrap());
        assert!(p.count(from, "video") > 0, "{}: no video at all", p.who);
    }
    dr.assert_no_errors();
}

/// The doctor and the station in a call, publishing, the station on a link of its own (clean
/// for now, 20 ms each way) that the test then degrades.
async fn station_on_a_clean_link(app: &TestApp) -> (Peer, Peer, Arc<WeakLink>) {
    let c = call(app, true).await;
    let mut dr = doctor_publishing(app, &c).await;
    let link = WeakLink::new(0.0, Duration::from_millis(20));
    let mut yt = Peer::on(
        YT,
        Device::default(),
        Some(Arc::clone(&link) as Arc<dyn Route>),
    )
    .await;
    yt.join(app, &c.id, &c.yt).await;
    admitted_and_publishing(&mut dr, &mut yt).await;
    (dr, yt, link)
}

/// The station's downlink collapses (40% lost): the relay sees it in the station's receiver
/// reports and stops its video, keeping the audio; once the link is clean again, video comes
/// back a step at a time.
async fn a_collapsing_link_keeps_the_audio_and_drops_the_video(app: TestApp) {
    let (mut dr, mut yt, link) = station_on_a_clean_link(&app).await;
    let from_dr = stream_of(DR);
    yt.receives(&from_dr, "video", ENOUGH).await;
    link.set_down_loss(0.4);
    // Down to audio only (through the lowest layer if a report straddled the change).
    let mut q = yt.next("quality").await;
    if q["video"] == "low" {
        q = yt.next("quality").await;
    }
    assert_eq!(
        (&q["video"], &q["limitedByLink"]),
        (&json!("off"), &json!(true)),
        "{q}"
    );
    // No new video (the station's repeated NACKs still bring back old packets); audio goes
    // on, what the link lets through of it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = yt.newest(&from_dr, "video");
    yt.keeps_receiving(&from_dr, "audio").await;
    assert_eq!(yt.newest(&from_dr, "video"), stopped, "video still relayed");
    link.set_down_loss(0.0);
    let q = yt.next("quality").await;
    assert_eq!(
        (&q["video"], &q["limitedByLink"]),
        (&json!("low"), &json!(true)),
        "{q}"
    );
    let q = yt.next("quality").await;
    assert_eq!(
        (&q["video"], &q["limitedByLink"]),
        (&json!("high"), &json!(false)),
        "{q}"
    );
    // New video again (retransmissions make the packets' order no test here).
    let deadline = tokio::time::Instant::now() + WAIT;
    while yt.newest(&from_dr, "video") < stopped + 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "video did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dr.assert_no_errors();
}

/// The station's uplink loses half of what it sends. The doctor gets the station's video with
/// the holes the relay could not fill, and its receiver reports count them as lost; but its
/// own link is clean, so the relay keeps its video (the loss is taken off as the relay's own
/// numbering knows it never sent those) and tells it of no limit.
async fn a_bad_uplink_costs_no_one_else_their_video(app: TestApp) {
    // The station stays in the call (its peer held, not dropped).
    let (mut dr, _yt, link) = station_on_a_clean_link(&app).await;
    let from_yt = stream_of(YT);
    dr.receives(&from_yt, "video", ENOUGH).await;
    link.set_up_loss(0.5);
    // Some seconds of receiver reports.
    assert_eq!(
        dr.within(Duration::from_secs(5), "quality").await,
        None,
        "the doctor's video was cut for the station's uplink"
    );
    // What gets through of it goes on reaching the doctor.
    dr.keeps_receiving(&from_yt, "video").await;
    dr.assert_no_errors();
}

/// On a link that cannot take video, a receiver asks for audio only: its video stops, its
/// audio goes on, what it sends is untouched; asking for video again brings it back, numbered
/// on from where it stopped.
async fn a_receiver_can_ask_for_audio_only_and_back(app: TestApp) {
    let c = call(&app, true).await;
    let (mut dr, mut yt) = doctor_and_station(&app, &c).await;
    let from_dr = stream_of(DR);
    yt.send(json!({"type": "quality", "video": "off"}));
    assert_eq!(
        yt.next("quality").await,
        json!({"type": "quality", "video": "off", "limitedByLink": false})
    );
    yt.keeps_receiving(&from_dr, "audio").await;
    let stopped = yt.count(&from_dr, "video");
    yt.keeps_receiving(&from_dr, "audio").await;
    assert_eq!(
        yt.count(&from_dr, "video"),
        stopped,
        "video still comes to a receiver that asked for audio only"
    );
    // Only what the station receives changed.
    dr.keeps_receiving(&stream_of(YT), "video").await;
    yt.send(json!({"type": "quality", "video": "high"}));
    assert_eq!(yt.next("quality").await["video"], "high");
    yt.keeps_receiving(&from_dr, "video").await;
    let video = yt.received(&from_dr, "video").unwrap();
    check_packets(&video);
    let (before, after) = (&video.packets[stopped - 1], &video.packets[stopped]);
    assert!(parse_payload(&after.1).2 > parse_payload(&before.1).2 + 10);
    assert_eq!(
        after.0,
        before.0.wrapping_add(1),
        "sequence numbers jump across the pause"
    );
    yt.send(json!({"type": "quality", "video": "4k"}));
    yt.error("bad-message").await;
    dr.assert_no_errors();
}

// ── Simulcast ────────────────────────────────────────────────────────────────────────────

/// A VP8 payload: the descriptor (start of partition 0) and frame tag (key or delta), then
/// `rid/counter|`.
fn layer_payload(rid: &str, n: u32, key: bool) -> Bytes {
    let mut p = vec![0x10, if key { 0x00 } else { 0x01 }];
    p.extend_from_slice(format!("{rid}/{n:06}|").as_bytes());
    p.resize(p.len() + 32, b'x');
    Bytes::from(p)
}

/// (rid, counter) of a layer payload.
fn parse_layer(p: &[u8]) -> (String, u32) {
    let text = String::from_utf8_lossy(&p[2..]);
    let head = text.split('|').next().unwrap_or_default();
    let (rid, n) = head
        .split_once('/')
        .unwrap_or_else(|| panic!("a layer payload: {text}"));
    (rid.to_string(), n.parse().expect("counter"))
}

impl Peer {
    /// A camera sending three simulcast layers (`q`, `h`, `f`), each its own SSRC, a keyframe
    /// every half second, with the MID and RID header extensions a receiver tells them by.
    async fn publish_simulcast(&mut self) {
        let layers: Vec<(&'static str, u32)> =
            ["q", "h", "f"].iter().map(|r| (*r, random_u32())).collect();
        let codings = layers
            .iter()
            .map(|(rid, ssrc)| RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    rid: rid.to_string(),
                    ssrc: Some(*ssrc),
                    ..Default::default()
                },
                codec: RTCRtpCodec::default(),
                ..Default::default()
            })
            .collect();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "local-camera".to_string(),
            "video-simulcast".to_string(),
            "video".to_string(),
            RtpCodecKind::Video,
            codings,
        )));
        let sender = self
            .pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await
            .expect("simulcast track added");
        let pc = Arc::clone(&self.pc);
        self.sending.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut n = 0u32;
            let mut ts = random_u32();
            let mut seqs: Vec<u16> = layers.iter().map(|_| random_u32() as u16).collect();
            loop {
                tick.tick().await;
                let Some((pt, mid_id, rid_id, mid)) = simulcast_params(&pc, &sender).await else {
                    continue;
                };
                for (i, (rid, ssrc)) in layers.iter().enumerate() {
                    let mut header = rtp::header::Header {
                        version: 2,
                        marker: true,
                        payload_type: pt,
                        sequence_number: seqs[i],
                        timestamp: ts,
                        ssrc: *ssrc,
                        ..Default::default()
                    };
                    let _ = header.set_extension(mid_id, Bytes::from(mid.clone()));
                    let _ = header.set_extension(rid_id, Bytes::from(rid.to_string()));
                    let payload = layer_payload(rid, n, n.is_multiple_of(25));
                    if track
                        .write_rtp(rtp::Packet { header, payload })
                        .await
                        .is_ok()
                    {
                        seqs[i] = seqs[i].wrapping_add(1);
                    }
                }
                n += 1;
                ts = ts.wrapping_add(90_000 / 50);
            }
        }));
    }
}

/// The payload type of VP8, the ids of the MID and RID extensions, and the MID of a simulcast
/// sender, once negotiated.
async fn simulcast_params(
    pc: &Arc<dyn PeerConnection>,
    sender: &Arc<dyn RtpSender>,
) -> Option<(u8, u8, u8, String)> {
    let params = sender.get_parameters().await.ok()?;
    let pt = params
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/VP8"))?
        .payload_type;
    let id = |uri: &str| {
        params
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == uri)
            .and_then(|e| u8::try_from(e.id).ok())
    };
    let (mid_id, rid_id) = (id(MID_URI)?, id(RID_URI)?);
    for t in pc.get_transceivers().await {
        let Ok(Some(s)) = t.sender().await else {
            continue;
        };
        if Arc::ptr_eq(&s, sender)
            && let Ok(Some(mid)) = t.mid().await
        {
            return Some((pt, mid_id, rid_id, mid));
        }
    }
    None
}

impl Peer {
    /// The newest packet (by the sender's counter) received from `stream`'s `kind` track.
    fn newest(&self, stream: &str, kind: &str) -> u32 {
        self.received(stream, kind)
            .and_then(|r| r.packets.iter().map(|(_, p)| parse_payload(p).2).max())
            .unwrap_or_default()
    }

    /// The simulcast layer the last few video packets from `stream` came from.
    fn layer_of(&self, stream: &str) -> Option<String> {
        let video = self.received(stream, "video")?;
        let (_, p) = video.packets.last()?;
        Some(parse_layer(p).0)
    }

    /// Waits until video from `stream` comes from layer `rid`.
    async fn gets_layer(&self, stream: &str, rid: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.layer_of(stream).as_deref() != Some(rid) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: video from {stream} stays at layer {:?}, not {rid}",
                self.who,
                self.layer_of(stream)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // And stays there.
        let from = self.count(stream, "video");
        while self.count(stream, "video") < from + 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let video = self.received(stream, "video").unwrap();
        for (_, p) in &video.packets[from..] {
            assert_eq!(
                parse_layer(p).0,
                rid,
                "{}: a packet of another layer",
                self.who
            );
        }
    }
}

/// The doctor's camera sends three layers. The station, on a poor link, asks for low video and
/// gets the lowest layer; the observer takes the best. Switching layers happens at a keyframe
/// and keeps each receiver's numbering continuous.
async fn each_receiver_gets_the_simulcast_layer_it_asked_for(app: TestApp) {
    let c = call(&app, true).await;
    let simulcast = Device {
        simulcast: true,
        ..Device::default()
    };
    let mut dr = Peer::on(DR, simulcast, None).await;
    dr.join(&app, &c.id, &c.dr).await;
    dr.publish_simulcast().await;
    dr.open_chat().await;
    assert_eq!(dr.offer().await["type"], "answer");
    let mut yt = Peer::new(YT).await;
    yt.join(&app, &c.id, &c.yt).await;
    dr.next("participant-waiting").await;
    dr.send(json!({"type": "admit", "participant": YT}));
    yt.next("admitted").await;
    yt.receive_only().await;
    assert_eq!(yt.offer().await["type"], "answer");
    let from_dr = stream_of(DR);
    // The best layer by default.
    yt.gets_layer(&from_dr, "f").await;
    // Low: the lowest layer, from one of its keyframes on.
    yt.send(json!({"type": "quality", "video": "low"}));
    assert_eq!(yt.next("quality").await["video"], "low");
    yt.gets_layer(&from_dr, "q").await;
    // And back.
    yt.send(json!({"type": "quality", "video": "high"}));
    assert_eq!(yt.next("quality").await["video"], "high");
    yt.gets_layer(&from_dr, "f").await;
    // (Before the first `f`, the layers were still being learnt one by one as they arrived.)
    let video = yt.received(&from_dr, "video").unwrap();
    let first_f = video
        .packets
        .iter()
        .position(|(_, p)| parse_layer(p).0 == "f")
        .expect("layer f came");
    let mut switches = 0;
    for (i, w) in video.packets.windows(2).enumerate() {
        let ((s0, p0), (s1, p1)) = (&w[0], &w[1]);
        let (l0, l1) = (parse_layer(p0), parse_layer(p1));
        assert!(
            (1..0x8000).contains(&s1.wrapping_sub(*s0)),
            "sequence numbers go back: {s0} ({l0:?}) then {s1} ({l1:?})"
        );
        if l0.0 != l1.0 {
            switches += usize::from(i >= first_f);
            assert_eq!(
                *s1,
                s0.wrapping_add(1),
                "a gap at the switch {l0:?} → {l1:?}"
            );
            assert_eq!(p1[1] & 0x01, 0, "the switch to {l1:?} is not at a keyframe");
        }
    }
    assert_eq!(switches, 2, "f → q → f");
    yt.assert_no_errors();
    dr.assert_no_errors();
}
