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
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
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
use super::room::{Live, Stats};

/// Builds a participant's peer connection, bound to `addr`.
pub async fn peer_connection(
    ice: &IceSettings,
    addr: SocketAddr,
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> webrtc::error::Result<Arc<dyn PeerConnection>> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?
        .with(Slot::from(14_000), KeyframeRequests::default());
    let mut settings = SettingEngineBuilder::new();
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
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// Hands keyframe requests (PLI, FIR) from receivers to the application, which relays them
/// to the publisher; every other packet passes untouched.
#[derive(Default)]
struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

fn is_keyframe_request(p: &dyn rtc::rtcp::Packet) -> bool {
    let any = p.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| is_keyframe_request(p.as_ref()))
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

/// A track a participant sends into the room.
pub struct Publication {
    /// The participant (`Practitioner/7`).
    pub owner: String,
    /// Their MediaStream id in the room.
    pub stream: String,
    pub kind: RtpCodecKind,
    codec: RTCRtpCodec,
    media_ssrc: u32,
    remote: Arc<dyn TrackRemote>,
    /// Who receives it (a snapshot swapped on change, read per packet without a lock held).
    subscribers: Mutex<Arc<Vec<Arc<Downtrack>>>>,
    /// Not relayed while muted.
    pub muted: AtomicBool,
    last_keyframe_request: Mutex<Option<Instant>>,
    _live: Live,
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
    _live: Live,
}

/// Keyframe requests relayed at most this often per publication.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

impl Publication {
    /// The publication of a track that just arrived, or None if it has no stream yet.
    pub async fn of(
        owner: &str,
        stream: &str,
        remote: Arc<dyn TrackRemote>,
        live: Live,
    ) -> Option<Self> {
        let media_ssrc = *remote.ssrcs().await.first()?;
        let codec = remote.codec(media_ssrc).await?;
        Some(Publication {
            owner: owner.to_string(),
            stream: stream.to_string(),
            kind: remote.kind().await,
            codec,
            media_ssrc,
            remote,
            subscribers: Mutex::new(Arc::new(Vec::new())),
            muted: AtomicBool::new(false),
            last_keyframe_request: Mutex::new(None),
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
        let mut g = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = g.iter().cloned().collect();
        v.push(d);
        *g = Arc::new(v);
    }

    /// Drops the legs to `subscriber`; what was dropped.
    pub fn unsubscribe(&self, subscriber: &str) -> Vec<Arc<Downtrack>> {
        let mut g = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        let (gone, kept): (Vec<_>, Vec<_>) =
            g.iter().cloned().partition(|d| d.subscriber == subscriber);
        *g = Arc::new(kept);
        gone
    }

    /// Everyone's legs (when the publication goes).
    pub fn all_subscribers(&self) -> Arc<Vec<Arc<Downtrack>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn subscribed(&self, subscriber: &str) -> bool {
        self.all_subscribers()
            .iter()
            .any(|d| d.subscriber == subscriber)
    }

    /// Asks the publisher for a keyframe (at most every half second).
    pub async fn request_keyframe(&self) {
        if self.kind != RtpCodecKind::Video {
            return;
        }
        {
            let mut last = self
                .last_keyframe_request
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < KEYFRAME_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: self.media_ssrc,
        };
        let _ = self.remote.write_rtcp(vec![Box::new(pli)]).await;
    }

    /// Relays the publisher's packets until its track ends.
    pub async fn forward(self: Arc<Self>) {
        // Packets dropped while muted, taken off later sequence numbers so each leg's stays
        // continuous (receivers would otherwise ask again and again for what never comes).
        let mut dropped: u16 = 0;
        while let Some(event) = self.remote.poll().await {
            let mut packet = match event {
                TrackRemoteEvent::OnRtpPacket(p) => p,
                TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError => break,
                _ => continue,
            };
            // Repair streams (RTX) are recovered on this hop, not relayed.
            if packet.header.ssrc != self.media_ssrc {
                continue;
            }
            if self.muted.load(Ordering::Relaxed) {
                dropped = dropped.wrapping_add(1);
                continue;
            }
            packet.header.sequence_number = packet.header.sequence_number.wrapping_sub(dropped);
            packet.header.extension = false;
            packet.header.extensions.clear();
            packet.header.extensions_padding = 0;
            let legs = self.all_subscribers();
            for leg in legs.iter() {
                let Some(pt) = leg.payload_type() else {
                    continue;
                };
                let mut p = packet.clone();
                p.header.ssrc = leg.ssrc;
                p.header.payload_type = pt;
                let _ = leg.local.write_rtp(p).await;
            }
        }
    }
}

impl Downtrack {
    pub fn new(
        subscriber: &str,
        local: Arc<TrackLocalStaticRTP>,
        ssrc: u32,
        sender: Arc<dyn RtpSender>,
        live: Live,
    ) -> Downtrack {
        Downtrack {
            subscriber: subscriber.to_string(),
            local,
            sender,
            ssrc,
            payload_type: AtomicU16::new(u16::MAX),
            ready: AtomicBool::new(false),
            _live: live,
        }
    }

    fn payload_type(&self) -> Option<u8> {
        if !self.ready.load(Ordering::Relaxed) {
            return None;
        }
        u8::try_from(self.payload_type.load(Ordering::Relaxed)).ok()
    }

    /// After the receiver answered: learns the leg's payload type, starts relaying keyframe
    /// requests back to the publisher, and asks it for a keyframe. Once per leg.
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
        // Holds the leg only weakly: the task ends with the leg's track (unbound, poll ends).
        let (local, publication) = (Arc::clone(&self.local), Arc::clone(publication));
        stats.spawn(async move {
            publication.request_keyframe().await;
            while let Some(TrackLocalEvent::OnRtcpPacket(packets)) = local.poll().await {
                if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                    publication.request_keyframe().await;
                }
            }
        });
    }
}

fn rand_ssrc() -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]).max(1)
}
