//! Forwarding (the SFU): one peer connection per participant, a [`Publication`] per track a
//! participant sends, a [`Downtrack`] per (publication, receiving participant). RTP is relayed
//! as it came (no transcoding): only the SSRC and payload type of the receiving leg are set,
//! sequence numbers are kept continuous across a mute, and header extensions (whose ids are
//! negotiated per leg) are dropped. Keyframe requests from receivers go back to the publisher;
//! lost packets are recovered hop by hop by the NACK interceptors (and RTX where negotiated).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateType, Registry, SettingEngineBuilder,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

use super::ice::IceSettings;
use super::keyframe::VideoCodec;
use super::quality::{Downlink, LinkLoss, Quality};
use super::room::{Live, Stats};

/// Builds a participant's peer connection, bound to `addr`.
pub async fn peer_connection(
    ice: &IceSettings,
    addr: SocketAddr,
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> webrtc::error::Result<Arc<dyn PeerConnection>> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    // What a publisher's simulcast layers are told apart by (RFC 8852, RFC 8843).
    for uri in [
        "urn:ietf:params:rtp-hdrext:sdes:mid",
        "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    ] {
        media.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            RtpCodecKind::Video,
            None,
        )?;
    }
    let registry = register_default_interceptors(Registry::new(), &mut media)?
        .with(Slot::from(14_000), KeyframeRequests::default());
    // Answering, the relay takes the DTLS server's part (`a=setup:passive`): the client drives
    // the handshake and its retransmissions. The other way round, on a link losing 10% of its
    // datagrams, a quarter of webrtc-rs clients' handshakes stalled after ICE had connected.
    let mut settings = SettingEngineBuilder::new().with_answering_dtls_role(RTCDtlsRole::Server);
    if let Some(ip) = ice.public_ip {
        settings = settings.with_nat_1to1_ips(vec![ip.to_string()], RTCIceCandidateType::Host);
    }
    if addr.ip().is_loopback() {
        settings = settings.with_include_loopback_candidate(true);
    }
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_setting_engine(settings.build())
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(vec![addr])
        // ICE-TCP (RFC 6544), passive, on the same port number: for stations whose firewall
        // lets no UDP through and that have no TURN server either.
        .with_tcp_addrs(if ice.tcp { vec![addr] } else { Vec::new() })
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// Hands keyframe requests (PLI, FIR) and receiver reports from receivers to the application,
/// which relays the first to the publisher and sets the receiver's video quality by the second;
/// every packet also goes on down the chain as it would anyway.
#[derive(Default)]
struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

fn is_keyframe_request(p: &dyn rtc::rtcp::Packet) -> bool {
    let any = p.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// What the relay reads of a receiver's feedback: keyframe requests and receiver reports.
fn for_the_relay(p: &dyn rtc::rtcp::Packet) -> bool {
    is_keyframe_request(p) || p.as_any().is::<ReceiverReport>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| for_the_relay(p.as_ref()))
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// A track a participant sends into the room: one stream, or several of one source at
/// different qualities (simulcast layers, each its own SSRC and RID).
pub struct Publication {
    /// The participant (`Practitioner/7`).
    pub owner: String,
    /// Their MediaStream id in the room.
    pub stream: String,
    pub kind: RtpCodecKind,
    codec: RTCRtpCodec,
    video: VideoCodec,
    /// The layers, lowest first (a snapshot swapped when one appears).
    layers: Mutex<Arc<Vec<Layer>>>,
    remote: Arc<dyn TrackRemote>,
    /// Who receives it (a snapshot swapped on change, read per packet without a lock held).
    subscribers: Mutex<Arc<Vec<Arc<Downtrack>>>>,
    /// Not relayed while muted.
    pub muted: AtomicBool,
    /// When a keyframe was last asked for, per layer SSRC.
    keyframe_requests: Mutex<Vec<(u32, Instant)>>,
    _live: Live,
}

/// One simulcast layer (or the only stream).
#[derive(Debug, Clone, Copy)]
struct Layer {
    ssrc: u32,
    rank: u8,
}

/// A layer's rank from its RID: the names browsers and SFUs use for low, middle and full.
fn rank(rid: Option<&str>) -> u8 {
    match rid.map(str::to_ascii_lowercase).as_deref() {
        Some("q" | "l" | "low" | "0") => 0,
        Some("f" | "hi" | "high" | "full" | "2") => 2,
        _ => 1,
    }
}

/// A publication's way to one receiving participant.
pub struct Downtrack {
    /// The receiving participant.
    pub subscriber: String,
    pub local: Arc<TrackLocalStaticRTP>,
    pub sender: Arc<dyn RtpSender>,
    ssrc: u32,
    /// The payload type negotiated on this leg (`u16::MAX` until negotiated).
    payload_type: AtomicU16,
    /// Negotiated: packets go out and keyframe requests come back.
    ready: AtomicBool,
    /// The receiver's link: how much video it takes.
    downlink: Arc<Downlink>,
    /// Tells the receiver its link changed the quality it gets.
    on_quality: QualityChanged,
    numbering: Arc<Mutex<Numbering>>,
    _live: Live,
}

/// Called with the new quality when a receiver's reports change what its link takes.
pub type QualityChanged = Arc<dyn Fn(Quality) + Send + Sync>;

/// A leg's own sequence numbers and timestamps: continuous for the receiver whatever is held
/// back (muted, video off) and across switches from one layer to another.
#[derive(Default)]
struct Numbering {
    /// The layer (SSRC) being relayed now, if any.
    current: Option<u32>,
    /// The layer the last relayed packet came from.
    last_layer: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    /// The last sequence number and timestamp sent, and when.
    last: Option<(u16, u32, Instant)>,
    /// Packets were held back since: number on from the last one sent.
    gap: bool,
    /// Which numbers went out, for telling the receiver's own loss from the publisher's.
    loss: LinkLoss,
}

impl Numbering {
    /// Whether a packet of layer `from` goes out on this leg, whose receiver should now get
    /// `target` (None: nothing); its sequence number and timestamp there, and whether the
    /// target layer needs a keyframe to start.
    fn pass(
        &mut self,
        from: u32,
        target: Option<u32>,
        keyframe: bool,
        (seq, ts): (u16, u32),
        clock_rate: u32,
        now: Instant,
    ) -> (Option<(u16, u32)>, bool) {
        let Some(target) = target else {
            self.current = None;
            self.gap = true;
            return (None, false);
        };
        if from != target {
            // The layer being relayed goes on until the target starts, at its keyframe.
            let out = (self.current == Some(from)).then(|| self.out(from, seq, ts, now));
            return (out, self.current != Some(target));
        }
        if self.current == Some(from) {
            return (Some(self.out(from, seq, ts, now)), false);
        }
        // Replacing another layer mid-stream: only at a keyframe (a decoder cannot start
        // anywhere else). Starting or resuming: at once, with a keyframe asked for.
        if self.current.is_some() && !keyframe {
            return (None, true);
        }
        if self.last_layer.is_some_and(|l| l != from) {
            self.rebase(seq, ts, clock_rate, now);
        }
        self.current = Some(from);
        (Some(self.out(from, seq, ts, now)), !keyframe)
    }

    fn out(&mut self, from: u32, seq: u16, ts: u32, now: Instant) -> (u16, u32) {
        if std::mem::take(&mut self.gap)
            && let Some((last_seq, ..)) = self.last
        {
            self.seq_offset = last_seq.wrapping_add(1).wrapping_sub(seq);
        }
        let out = (
            seq.wrapping_add(self.seq_offset),
            ts.wrapping_add(self.ts_offset),
        );
        let newer = self
            .last
            .is_none_or(|(last, ..)| out.0.wrapping_sub(last).wrapping_sub(1) < 0x8000);
        if newer {
            self.last = Some((out.0, out.1, now));
        }
        self.loss.sent(out.0);
        self.last_layer = Some(from);
        out
    }

    /// Another layer (another SSRC, its own numbering and clock offset) takes over: it goes on
    /// from the last packet sent, its timestamps advanced by the time since.
    fn rebase(&mut self, seq: u16, ts: u32, clock_rate: u32, now: Instant) {
        self.gap = false;
        let Some((last_seq, last_ts, at)) = self.last else {
            return;
        };
        let elapsed = now.duration_since(at).as_micros() * u128::from(clock_rate) / 1_000_000;
        let step = u32::try_from(elapsed).unwrap_or(u32::MAX).max(1);
        self.seq_offset = last_seq.wrapping_add(1).wrapping_sub(seq);
        self.ts_offset = last_ts.wrapping_add(step).wrapping_sub(ts);
    }
}

/// Keyframe requests relayed at most this often per layer.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

impl Publication {
    /// The publication of a track that just arrived, or None if it has no stream yet.
    pub async fn of(
        owner: &str,
        stream: &str,
        remote: Arc<dyn TrackRemote>,
        live: Live,
    ) -> Option<Self> {
        let (media_ssrc, rid) = match remote.ssrcs().await.first() {
            Some(&ssrc) => (ssrc, remote.rid(ssrc).await),
            // Simulcast layers are signalled by RID, not SSRC: known at their first packet.
            None => loop {
                match remote.poll().await? {
                    TrackRemoteEvent::OnOpen(init) => break (init.ssrc, init.rid),
                    TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError => return None,
                    _ => {}
                }
            },
        };
        let codec = remote.codec(media_ssrc).await?;
        let first = Layer {
            ssrc: media_ssrc,
            rank: rank(rid.as_deref()),
        };
        Some(Publication {
            owner: owner.to_string(),
            stream: stream.to_string(),
            kind: remote.kind().await,
            video: VideoCodec::of(&codec.mime_type),
            codec,
            layers: Mutex::new(Arc::new(vec![first])),
            remote,
            subscribers: Mutex::new(Arc::new(Vec::new())),
            muted: AtomicBool::new(false),
            keyframe_requests: Mutex::new(Vec::new()),
            _live: live,
        })
    }

    /// `audio` or `video`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            RtpCodecKind::Audio => "audio",
            _ => "video",
        }
    }

    /// A new leg to `subscriber`: the local track to add to their peer connection.
    pub fn track_for(&self) -> (Arc<TrackLocalStaticRTP>, u32) {
        let ssrc = rand_ssrc();
        let track = MediaStreamTrack::new(
            self.stream.clone(),
            format!("{}-{}-{ssrc}", self.stream, self.kind_name()),
            format!("{} {}", self.stream, self.kind_name()),
            self.kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: self.codec.clone(),
                ..Default::default()
            }],
        );
        (Arc::new(TrackLocalStaticRTP::new(track)), ssrc)
    }

    pub fn subscribe(&self, d: Arc<Downtrack>) {
        let mut g = lock(&self.subscribers);
        let mut v: Vec<_> = g.iter().cloned().collect();
        v.push(d);
        *g = Arc::new(v);
    }

    /// Drops the legs to `subscriber`; what was dropped.
    pub fn unsubscribe(&self, subscriber: &str) -> Vec<Arc<Downtrack>> {
        let mut g = lock(&self.subscribers);
        let (gone, kept): (Vec<_>, Vec<_>) =
            g.iter().cloned().partition(|d| d.subscriber == subscriber);
        *g = Arc::new(kept);
        gone
    }

    /// Everyone's legs (when the publication goes).
    pub fn all_subscribers(&self) -> Arc<Vec<Arc<Downtrack>>> {
        lock(&self.subscribers).clone()
    }

    pub fn subscribed(&self, subscriber: &str) -> bool {
        self.all_subscribers()
            .iter()
            .any(|d| d.subscriber == subscriber)
    }

    fn layers(&self) -> Arc<Vec<Layer>> {
        Arc::clone(&lock(&self.layers))
    }

    /// A simulcast layer's first packet arrived.
    fn add_layer(&self, ssrc: u32, rid: Option<&str>) {
        let mut g = lock(&self.layers);
        if g.iter().any(|l| l.ssrc == ssrc) {
            return;
        }
        // A stream without a RID is the track's only one (another SSRC is a repair stream).
        let Some(rid) = rid else { return };
        let mut v: Vec<_> = g.iter().copied().collect();
        v.push(Layer {
            ssrc,
            rank: rank(Some(rid)),
        });
        v.sort_by_key(|l| l.rank);
        *g = Arc::new(v);
    }

    /// The layer `leg`'s receiver should get now (None: nothing).
    fn target(&self, layers: &[Layer], leg: &Downtrack) -> Option<u32> {
        if self.muted.load(Ordering::Relaxed) {
            return None;
        }
        if self.kind != RtpCodecKind::Video {
            return layers.first().map(|l| l.ssrc);
        }
        match leg.downlink.effective() {
            Quality::Off => None,
            Quality::Low => layers.first().map(|l| l.ssrc),
            Quality::High => layers.last().map(|l| l.ssrc),
        }
    }

    /// Asks the publisher for a keyframe: on the best layer, or on `ssrc` (at most every half
    /// second per layer).
    pub async fn request_keyframe(&self) {
        if let Some(best) = self.layers().last() {
            self.request_keyframe_of(best.ssrc).await;
        }
    }

    async fn request_keyframe_of(&self, ssrc: u32) {
        if self.kind != RtpCodecKind::Video {
            return;
        }
        {
            let mut asked = lock(&self.keyframe_requests);
            let now = Instant::now();
            match asked.iter_mut().find(|(s, _)| *s == ssrc) {
                Some((_, t)) if now.duration_since(*t) < KEYFRAME_INTERVAL => return,
                Some((_, t)) => *t = now,
                None => asked.push((ssrc, now)),
            }
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        let _ = self.remote.write_rtcp(vec![Box::new(pli)]).await;
    }

    /// Relays the publisher's packets until its track ends: each leg gets the layer its
    /// receiver should have, numbered as one continuous stream.
    pub async fn forward(self: Arc<Self>) {
        let clock_rate = self.codec.clock_rate;
        let mut layers = self.layers();
        while let Some(event) = self.remote.poll().await {
            let mut packet = match event {
                TrackRemoteEvent::OnRtpPacket(p) => p,
                TrackRemoteEvent::OnOpen(init) => {
                    self.add_layer(init.ssrc, init.rid.as_deref());
                    layers = self.layers();
                    continue;
                }
                TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError => break,
                _ => continue,
            };
            let from = packet.header.ssrc;
            // Repair streams (RTX) are recovered on this hop, not relayed.
            if !layers.iter().any(|l| l.ssrc == from) {
                continue;
            }
            let keyframe = self.video.starts_keyframe(&packet.payload);
            let numbers = (packet.header.sequence_number, packet.header.timestamp);
            packet.header.extension = false;
            packet.header.extensions.clear();
            packet.header.extensions_padding = 0;
            let now = Instant::now();
            let legs = self.all_subscribers();
            for leg in legs.iter() {
                let target = self.target(&layers, leg);
                let (out, wants_keyframe) =
                    lock(&leg.numbering).pass(from, target, keyframe, numbers, clock_rate, now);
                if let Some(ssrc) = target.filter(|_| wants_keyframe) {
                    self.request_keyframe_of(ssrc).await;
                }
                let (Some((seq, ts)), Some(pt)) = (out, leg.payload_type()) else {
                    continue;
                };
                let mut p = packet.clone();
                p.header.ssrc = leg.ssrc;
                p.header.payload_type = pt;
                p.header.sequence_number = seq;
                p.header.timestamp = ts;
                let _ = leg.local.write_rtp(p).await;
            }
        }
    }
}

impl Downtrack {
    pub fn new(
        subscriber: &str,
        (local, ssrc): (Arc<TrackLocalStaticRTP>, u32),
        sender: Arc<dyn RtpSender>,
        (downlink, on_quality): (Arc<Downlink>, QualityChanged),
        live: Live,
    ) -> Downtrack {
        Downtrack {
            subscriber: subscriber.to_string(),
            local,
            sender,
            ssrc,
            payload_type: AtomicU16::new(u16::MAX),
            ready: AtomicBool::new(false),
            downlink,
            on_quality,
            numbering: Arc::default(),
            _live: live,
        }
    }

    fn payload_type(&self) -> Option<u8> {
        if !self.ready.load(Ordering::Relaxed) || !self.downlink.connected() {
            return None;
        }
        u8::try_from(self.payload_type.load(Ordering::Relaxed)).ok()
    }

    /// After the receiver answered: learns the leg's payload type, starts reading the
    /// receiver's feedback (keyframe requests go back to the publisher, receiver reports set
    /// the video quality its link takes), and asks the publisher for a keyframe if media can
    /// reach the receiver already. Once per leg.
    pub async fn negotiated(self: &Arc<Self>, publication: &Arc<Publication>, stats: &Arc<Stats>) {
        let Ok(params) = self.sender.get_parameters().await else {
            return;
        };
        let codecs = &params.rtp_parameters.codecs;
        let want = &publication.codec;
        let same_mime = |c: &&rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters| {
            c.rtp_codec.mime_type.eq_ignore_ascii_case(&want.mime_type)
        };
        let found = codecs
            .iter()
            .filter(same_mime)
            .find(|c| c.rtp_codec.sdp_fmtp_line == want.sdp_fmtp_line)
            .or_else(|| codecs.iter().find(same_mime));
        let Some(codec) = found else {
            return;
        };
        self.payload_type
            .store(u16::from(codec.payload_type), Ordering::Relaxed);
        if self.ready.swap(true, Ordering::Relaxed) {
            return;
        }
        // The task holds the leg's parts, not the leg: it ends with the leg's track (unbound,
        // poll ends).
        let (local, publication) = (Arc::clone(&self.local), Arc::clone(publication));
        let (downlink, on_quality, ssrc) = (
            Arc::clone(&self.downlink),
            Arc::clone(&self.on_quality),
            self.ssrc,
        );
        let numbering = Arc::clone(&self.numbering);
        stats.spawn(async move {
            // A keyframe to start on. Before the receiver's connection is up nothing reaches
            // it, and the half-second limit would swallow the request made once it is: that
            // one is asked for then (`room::Events::on_connection_state_change`).
            if downlink.connected() {
                publication.request_keyframe().await;
            }
            while let Some(TrackLocalEvent::OnRtcpPacket(packets)) = local.poll().await {
                if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                    // Of the layer this receiver gets.
                    let current = lock(&numbering).current;
                    match current {
                        Some(layer) => publication.request_keyframe_of(layer).await,
                        None => publication.request_keyframe().await,
                    }
                }
                for (highest, total_lost) in
                    packets.iter().filter_map(|p| reception(p.as_ref(), ssrc))
                {
                    let Some(lost) = lock(&numbering).loss.report(highest, total_lost) else {
                        continue;
                    };
                    if let Some(q) = downlink.report(lost, Instant::now()) {
                        on_quality(q);
                    }
                }
            }
        });
    }
}

/// What a receiver report says of `ssrc`: the extended highest sequence number received and
/// the cumulative number lost.
fn reception(p: &dyn rtc::rtcp::Packet, ssrc: u32) -> Option<(u32, u32)> {
    let rr = p.as_any().downcast_ref::<ReceiverReport>()?;
    rr.reports
        .iter()
        .find(|r| r.ssrc == ssrc)
        .map(|r| (r.last_sequence_number, r.total_lost))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn rand_ssrc() -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]).max(1)
}
