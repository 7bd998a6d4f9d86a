//! Rooms: who is in a consultation's call, who waits to be admitted, who sends and receives
//! what, and negotiating each participant's peer connection. One room per consultation on this
//! node; rooms live in memory (a call does not outlive the node that holds it).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

use super::ice::{IceSettings, Ports};
use super::join::{JoinClaims, JoinRole};
use super::quality::{Downlink, Quality};
use super::sfu::{self, Downtrack, Publication, QualityChanged};

/// What goes out on a participant's socket.
#[derive(Debug)]
pub enum Out {
    Msg(Value),
    /// Close the socket with this code and reason.
    Close(u16, String),
}

pub type Outbox = UnboundedSender<Out>;

/// Why a request from a participant was refused: an `error` message.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    pub fn to_value(&self) -> Value {
        json!({"type": "error", "code": self.code, "message": self.message})
    }

    /// The HTTP status the refusal would be (for the audit trail).
    pub fn status(&self) -> u16 {
        match self.code {
            "unauthorized" => 401,
            "forbidden" => 403,
            _ => 409,
        }
    }

    /// The WebSocket close code when a refused `join` ends the socket: 4000 + the status's
    /// last two digits (4001, 4003, 4009), as is customary for application close codes.
    pub fn close_code(&self) -> u16 {
        3600 + self.status()
    }
}

type Refused<T = ()> = Result<T, Refusal>;

/// Limits and timings.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_participants: usize,
    pub max_rooms: usize,
    pub empty_timeout: Duration,
    pub grace: Duration,
}

/// The runtime the media relay runs on: its own threads, so that relaying never waits on an
/// HTTP worker (and the process-wide one outlives any one server, as in the tests).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("yba-sfu")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the media relay's runtime: {e}"))
    })
}

/// What the relay holds now, counted by guards that give back on drop (so a leak shows as a
/// count that does not come back down).
#[derive(Debug, Default)]
pub struct Stats {
    pub participants: AtomicUsize,
    pub connections: AtomicUsize,
    pub publications: AtomicUsize,
    pub legs: AtomicUsize,
    pub tasks: AtomicUsize,
}

/// One counted thing, for as long as it lives.
pub struct Live(Arc<Stats>, fn(&Stats) -> &AtomicUsize);

impl Live {
    pub fn new(stats: &Arc<Stats>, which: fn(&Stats) -> &AtomicUsize) -> Live {
        which(stats).fetch_add(1, Ordering::SeqCst);
        Live(Arc::clone(stats), which)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::SeqCst);
    }
}

impl Stats {
    /// Spawns a relay task, counted until it ends.
    pub fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(self: &Arc<Self>, f: F) {
        let live = Live::new(self, |s| &s.tasks);
        tokio::spawn(async move {
            let _live = live;
            f.await;
        });
    }

    /// Prometheus text.
    pub fn render(&self, rooms: usize, ports: usize) -> String {
        let g = |a: &AtomicUsize| a.load(Ordering::SeqCst);
        format!(
            "# HELP yba_rtc_rooms Consultation calls open on this node.\n# TYPE yba_rtc_rooms gauge\nyba_rtc_rooms {rooms}\n\
             # HELP yba_rtc_participants Participants in calls.\n# TYPE yba_rtc_participants gauge\nyba_rtc_participants {}\n\
             # HELP yba_rtc_connections Peer connections the relay holds.\n# TYPE yba_rtc_connections gauge\nyba_rtc_connections {}\n\
             # HELP yba_rtc_tracks Tracks relayed in (publications) and out (legs).\n# TYPE yba_rtc_tracks gauge\nyba_rtc_tracks{{direction=\"in\"}} {}\nyba_rtc_tracks{{direction=\"out\"}} {}\n\
             # HELP yba_rtc_tasks Relay tasks running.\n# TYPE yba_rtc_tasks gauge\nyba_rtc_tasks {}\n\
             # HELP yba_rtc_ports UDP ports the relay holds.\n# TYPE yba_rtc_ports gauge\nyba_rtc_ports {ports}\n",
            g(&self.participants),
            g(&self.connections),
            g(&self.publications),
            g(&self.legs),
            g(&self.tasks),
        )
    }
}

/// Every room on this node.
pub struct Rooms {
    pub stats: Arc<Stats>,
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// Consultations whose call ended: their rooms do not open again.
    ended: Mutex<HashSet<String>>,
    pub limits: Limits,
    pub ice: IceSettings,
    ports: Ports,
}

impl Rooms {
    pub fn new(limits: Limits, ice: IceSettings) -> Arc<Rooms> {
        Arc::new(Rooms {
            stats: Arc::default(),
            rooms: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashSet::new()),
            ports: Ports::new(ice.ports),
            limits,
            ice,
        })
    }

    /// Rooms open now.
    pub fn count(&self) -> usize {
        lock(&self.rooms).len()
    }

    /// Ports the relay holds now.
    pub fn ports_in_use(&self) -> usize {
        self.ports.in_use()
    }

    /// Enters `claims.sub` into the consultation's room (opened if need be): the room, the
    /// participant, and whether it resumed an earlier connection.
    pub fn enter(
        self: &Arc<Self>,
        claims: &JoinClaims,
        out: Outbox,
    ) -> Refused<(Arc<Room>, Arc<Participant>, bool)> {
        if lock(&self.ended).contains(&claims.cid) {
            return Err(Refusal::new("closed", "this consultation's call has ended"));
        }
        // Entering under the rooms' lock: an empty room is never dropped while someone enters.
        let mut rooms = lock(&self.rooms);
        let room = match rooms.get(&claims.cid) {
            Some(r) => Arc::clone(r),
            None => {
                if rooms.len() >= self.limits.max_rooms {
                    return Err(Refusal::new(
                        "room-full",
                        "this node holds as many calls as it may: try again later",
                    ));
                }
                let r = Arc::new(Room {
                    stats: Arc::clone(&self.stats),
                    id: claims.cid.clone(),
                    rooms: Arc::downgrade(self),
                    participants: Mutex::new(Vec::new()),
                    publications: Mutex::new(Vec::new()),
                    removed: Mutex::new(HashSet::new()),
                    ended: AtomicBool::new(false),
                    emptied: AtomicU64::new(0),
                    timer: AtomicBool::new(false),
                    wiring: tokio::sync::Mutex::new(()),
                });
                rooms.insert(claims.cid.clone(), Arc::clone(&r));
                r
            }
        };
        let entered = room.admit_entry(claims, out, self.limits.max_participants);
        drop(rooms);
        match entered {
            Ok((p, resumed)) => Ok((room, p, resumed)),
            Err(refused) => {
                // A room opened for a refused entry must not stay open for nobody.
                if lock(&room.participants).is_empty() {
                    room.empty_timer();
                }
                Err(refused)
            }
        }
    }

    /// Ends a consultation's call: everyone is told and disconnected; the room does not open
    /// again.
    pub async fn end(&self, id: &str, reason: &str) {
        lock(&self.ended).insert(id.to_string());
        let room = lock(&self.rooms).remove(id);
        if let Some(room) = room {
            room.end(reason).await;
        }
    }

    fn forget_if_empty(&self, room: &Arc<Room>, generation: u64) {
        let mut rooms = lock(&self.rooms);
        if room.emptied.load(Ordering::SeqCst) == generation
            && lock(&room.participants).is_empty()
            && rooms.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room))
        {
            rooms.remove(&room.id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One consultation's call.
pub struct Room {
    pub id: String,
    stats: Arc<Stats>,
    rooms: Weak<Rooms>,
    participants: Mutex<Vec<Arc<Participant>>>,
    publications: Mutex<Vec<Arc<Publication>>>,
    /// Removed by the doctor: not let in again while the room lasts.
    removed: Mutex<HashSet<String>>,
    ended: AtomicBool,
    /// Bumped each time the room empties or fills (so a stale empty-room timer does nothing).
    emptied: AtomicU64,
    /// An empty-room timer is running.
    timer: AtomicBool,
    /// Serialises adding and dropping legs (so no leg is added twice or after its end).
    wiring: tokio::sync::Mutex<()>,
}

/// Someone in a room.
pub struct Participant {
    /// `Practitioner/7`, `Patient/3`.
    pub id: String,
    /// Their MediaStream id (`/` is not allowed in one).
    pub stream: String,
    pub role: JoinRole,
    admitted: AtomicBool,
    link: Mutex<Link>,
    pc: Mutex<Option<(Arc<dyn PeerConnection>, Live)>>,
    port: Mutex<Option<u16>>,
    negotiation: tokio::sync::Mutex<Negotiation>,
    /// What they receive.
    legs: Mutex<Vec<(Arc<Publication>, Arc<Downtrack>)>>,
    data: Mutex<Option<Arc<dyn DataChannel>>>,
    audio_muted: AtomicBool,
    video_muted: AtomicBool,
    /// How much video they take (asked for, and what their link carries).
    downlink: Arc<Downlink>,
    gone: AtomicBool,
    _live: Live,
}

#[derive(Default)]
struct Link {
    out: Option<Outbox>,
    generation: u64,
}

#[derive(Default)]
struct Negotiation {
    /// The server's offer awaits the client's answer.
    offering: bool,
    /// Something changed meanwhile: offer again after the answer.
    again: bool,
}

impl Participant {
    /// Sends a message on their socket, if they have one now.
    pub fn send(&self, v: Value) {
        if let Some(out) = &lock(&self.link).out {
            let _ = out.send(Out::Msg(v));
        }
    }

    fn close(&self, code: u16, reason: &str) {
        if let Some(out) = lock(&self.link).out.take() {
            let _ = out.send(Out::Close(code, reason.to_string()));
        }
    }

    /// The socket generation now (each new socket takes the next).
    pub fn generation(&self) -> u64 {
        lock(&self.link).generation
    }

    fn connected(&self) -> bool {
        lock(&self.link).out.is_some()
    }

    pub fn admitted(&self) -> bool {
        self.admitted.load(Ordering::SeqCst)
    }

    fn pc(&self) -> Option<Arc<dyn PeerConnection>> {
        lock(&self.pc).as_ref().map(|(pc, _)| Arc::clone(pc))
    }

    fn muted(&self, kind: &str) -> &AtomicBool {
        if kind == "audio" {
            &self.audio_muted
        } else {
            &self.video_muted
        }
    }

    /// The video quality they get now, and why.
    fn quality_event(&self, q: Quality) -> Value {
        json!({"type": "quality", "video": q.name(),
            "limitedByLink": self.downlink.limited_by_link()})
    }

    fn describe(&self) -> Value {
        json!({"participant": self.id, "stream": self.stream, "role": self.role,
            "admitted": self.admitted(), "audioMuted": self.audio_muted.load(Ordering::Relaxed),
            "videoMuted": self.video_muted.load(Ordering::Relaxed)})
    }
}

/// A participant's MediaStream id: their reference with `/` made `-`.
pub fn stream_of(participant: &str) -> String {
    participant
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Whether an offer would send audio or video (an observer's may not).
pub fn sends_media(desc: &RTCSessionDescription) -> Refused<bool> {
    let parsed = desc
        .unmarshal()
        .map_err(|e| Refusal::new("bad-message", format!("the SDP does not parse: {e}")))?;
    Ok(parsed.media_descriptions.iter().any(|m| {
        let media = m.media_name.media.as_str();
        let rejected = m.media_name.port.value == 0;
        let receives_only = ["recvonly", "inactive"]
            .iter()
            .any(|a| m.attribute(a).is_some());
        matches!(media, "audio" | "video") && !rejected && !receives_only
    }))
}

impl Room {
    fn participant(&self, id: &str) -> Option<Arc<Participant>> {
        lock(&self.participants)
            .iter()
            .find(|p| p.id == id)
            .cloned()
    }

    fn others(&self, me: &str) -> Vec<Arc<Participant>> {
        lock(&self.participants)
            .iter()
            .filter(|p| p.id != me)
            .cloned()
            .collect()
    }

    /// Tells every admitted participant but `except`.
    fn broadcast(&self, except: &str, v: &Value) {
        for p in self.others(except).iter().filter(|p| p.admitted()) {
            p.send(v.clone());
        }
    }

    fn tell_moderators(&self, v: &Value) {
        for p in lock(&self.participants)
            .iter()
            .filter(|p| p.role == JoinRole::Moderator)
        {
            p.send(v.clone());
        }
    }

    fn admit_entry(
        &self,
        claims: &JoinClaims,
        out: Outbox,
        max: usize,
    ) -> Refused<(Arc<Participant>, bool)> {
        if self.ended.load(Ordering::SeqCst) {
            return Err(Refusal::new("closed", "this consultation's call has ended"));
        }
        if lock(&self.removed).contains(&claims.sub) {
            return Err(Refusal::new(
                "forbidden",
                "the doctor removed this participant from the call",
            ));
        }
        let mut ps = lock(&self.participants);
        if let Some(p) = ps.iter().find(|p| p.id == claims.sub) {
            let mut link = lock(&p.link);
            if let Some(old) = link.out.replace(out) {
                let replaced = Refusal::new("replaced", "another connection took this place");
                let _ = old.send(Out::Msg(replaced.to_value()));
                let _ = old.send(Out::Close(4000, "replaced".into()));
            }
            link.generation += 1;
            return Ok((Arc::clone(p), true));
        }
        if ps.len() >= max {
            return Err(Refusal::new(
                "room-full",
                format!("the call already has {max} participants"),
            ));
        }
        let p = Arc::new(Participant {
            id: claims.sub.clone(),
            stream: stream_of(&claims.sub),
            role: claims.role,
            admitted: AtomicBool::new(claims.role != JoinRole::Publisher),
            link: Mutex::new(Link {
                out: Some(out),
                generation: 1,
            }),
            pc: Mutex::new(None),
            port: Mutex::new(None),
            negotiation: tokio::sync::Mutex::new(Negotiation::default()),
            legs: Mutex::new(Vec::new()),
            data: Mutex::new(None),
            audio_muted: AtomicBool::new(false),
            video_muted: AtomicBool::new(false),
            downlink: Arc::default(),
            gone: AtomicBool::new(false),
            _live: Live::new(&self.stats, |s| &s.participants),
        });
        ps.push(Arc::clone(&p));
        self.emptied.fetch_add(1, Ordering::SeqCst);
        Ok((p, false))
    }

    /// After entering: `joined` to them, and the room told; on resume, an ICE restart.
    pub async fn welcome(self: &Arc<Self>, me: &Arc<Participant>, resumed: bool, ice: Value) {
        let participants: Vec<Value> = self.others(&me.id).iter().map(|p| p.describe()).collect();
        me.send(
            json!({"type": "joined", "participant": me.id, "stream": me.stream,
            "role": me.role, "admitted": me.admitted(), "resumed": resumed,
            "iceServers": ice, "participants": participants}),
        );
        if resumed {
            if let Some(pc) = me.pc() {
                {
                    let mut n = me.negotiation.lock().await;
                    n.offering = false;
                    n.again = false;
                }
                if pc.restart_ice().await.is_ok() {
                    self.renegotiate(me).await;
                }
            }
            return;
        }
        if me.admitted() {
            self.broadcast(&me.id, &self.joined_event(me));
        } else {
            self.tell_moderators(&waiting_event(me));
        }
        if me.role == JoinRole::Moderator {
            for p in self.others(&me.id).iter().filter(|p| !p.admitted()) {
                me.send(waiting_event(p));
            }
        }
    }

    fn joined_event(&self, p: &Participant) -> Value {
        json!({"type": "participant-joined", "participant": p.id, "stream": p.stream, "role": p.role})
    }

    /// The doctor lets a waiting participant in.
    pub fn admit(&self, by: &Participant, who: &str) -> Refused {
        moderator(by)?;
        let p = self.participant(who).ok_or_else(|| not_here(who))?;
        if !p.admitted.swap(true, Ordering::SeqCst) {
            p.send(json!({"type": "admitted"}));
            self.broadcast(&p.id, &self.joined_event(&p));
        }
        Ok(())
    }

    /// The participant's peer connection, made on their first offer.
    async fn peer_connection(
        self: &Arc<Self>,
        me: &Arc<Participant>,
    ) -> Refused<Arc<dyn PeerConnection>> {
        if let Some(pc) = me.pc() {
            return Ok(pc);
        }
        let rooms = self.rooms.upgrade().ok_or_else(gone)?;
        let handler: Arc<dyn PeerConnectionEventHandler> = Arc::new(Events {
            room: Arc::downgrade(self),
            me: Arc::downgrade(me),
        });
        let mut last = String::from("no UDP port is free for media");
        let addrs = rooms.ports.offer(rooms.ice.ip, 8);
        let mut made = None;
        for addr in &addrs {
            if made.is_some() {
                rooms.ports.release(addr.port());
                continue;
            }
            match sfu::peer_connection(&rooms.ice, *addr, Arc::clone(&handler)).await {
                Ok(pc) => made = Some((pc, addr.port())),
                Err(e) => {
                    rooms.ports.release(addr.port());
                    last = format!("the media relay cannot open a connection: {e}");
                }
            }
        }
        let (pc, port) = made.ok_or_else(|| Refusal::new("negotiation-failed", last))?;
        *lock(&me.port) = Some(port);
        *lock(&me.pc) = Some((Arc::clone(&pc), Live::new(&self.stats, |s| &s.connections)));
        if me.gone.load(Ordering::SeqCst) {
            self.release(me).await;
            return Err(gone());
        }
        Ok(pc)
    }

    /// A client's offer: answered; then they get everyone else's tracks.
    pub async fn offer(
        self: &Arc<Self>,
        me: &Arc<Participant>,
        sdp: RTCSessionDescription,
    ) -> Refused {
        if !me.admitted() {
            return Err(Refusal::new(
                "not-admitted",
                "wait until the doctor admits you before starting media",
            ));
        }
        if me.role == JoinRole::Subscriber && sends_media(&sdp)? {
            return Err(Refusal::new(
                "forbidden",
                "observers receive only: offer recvonly audio and video",
            ));
        }
        {
            let mut n = me.negotiation.lock().await;
            if n.offering {
                return Err(Refusal::new(
                    "glare",
                    "the server's offer awaits your answer: answer it, then offer again",
                ));
            }
            let pc = self.peer_connection(me).await?;
            pc.set_remote_description(sdp).await.map_err(failed)?;
            let answer = pc.create_answer(None).await.map_err(failed)?;
            pc.set_local_description(answer).await.map_err(failed)?;
            let local = pc.local_description().await.ok_or_else(gone)?;
            me.send(json!({"type": "answer", "sdp": local}));
            n.again = false;
        }
        self.legs_negotiated(me).await;
        self.subscribe_all(me).await;
        Ok(())
    }

    /// A client's answer to the server's offer.
    pub async fn answer(
        self: &Arc<Self>,
        me: &Arc<Participant>,
        sdp: RTCSessionDescription,
    ) -> Refused {
        let again = {
            let mut n = me.negotiation.lock().await;
            if !n.offering {
                return Err(Refusal::new(
                    "bad-message",
                    "no offer of the server's awaits an answer",
                ));
            }
            let pc = me.pc().ok_or_else(gone)?;
            n.offering = false;
            pc.set_remote_description(sdp).await.map_err(failed)?;
            std::mem::take(&mut n.again)
        };
        self.legs_negotiated(me).await;
        if again {
            self.renegotiate(me).await;
        }
        Ok(())
    }

    pub async fn candidate(
        &self,
        me: &Participant,
        c: webrtc::peer_connection::RTCIceCandidateInit,
    ) -> Refused {
        let pc = me
            .pc()
            .ok_or_else(|| Refusal::new("not-admitted", "send candidates after your offer"))?;
        pc.add_ice_candidate(c).await.map_err(failed)
    }

    async fn legs_negotiated(&self, me: &Participant) {
        let legs = lock(&me.legs).clone();
        for (publication, leg) in &legs {
            leg.negotiated(publication, &self.stats).await;
        }
    }

    /// The server offers what changed (or marks it for the next offer).
    async fn renegotiate(&self, me: &Arc<Participant>) {
        let Some(pc) = me.pc() else { return };
        let mut n = me.negotiation.lock().await;
        if n.offering || !me.connected() {
            n.again = true;
            return;
        }
        let offered = async {
            let offer = pc.create_offer(None).await?;
            pc.set_local_description(offer).await?;
            Ok::<_, webrtc::error::Error>(pc.local_description().await)
        }
        .await;
        match offered {
            Ok(Some(local)) => {
                n.offering = true;
                n.again = false;
                me.send(json!({"type": "offer", "sdp": local}));
            }
            Ok(None) => {}
            Err(e) => me.send(failed(e).to_value()),
        }
    }

    /// Gives `me` a leg of every publication of the others it does not have yet.
    async fn subscribe_all(self: &Arc<Self>, me: &Arc<Participant>) {
        let added = {
            let _w = self.wiring.lock().await;
            let pubs: Vec<_> = lock(&self.publications)
                .iter()
                .filter(|p| p.owner != me.id && !p.subscribed(&me.id))
                .cloned()
                .collect();
            let mut added = false;
            for p in &pubs {
                added |= self.attach(me, p).await;
            }
            added
        };
        if added {
            self.renegotiate(me).await;
        }
    }

    async fn attach(&self, me: &Arc<Participant>, publication: &Arc<Publication>) -> bool {
        let Some(pc) = me.pc() else { return false };
        if !me.admitted() || me.gone.load(Ordering::SeqCst) {
            return false;
        }
        let (track, ssrc) = publication.track_for();
        // A transceiver of its own, send-only: reusing one the client offered would inherit
        // its direction (a client's send-only camera could not receive on it).
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            ..Default::default()
        };
        // Fails when the receiver's connection did not negotiate the codec: it is not sent
        // what it could not decode (the relay does not transcode).
        let Ok(transceiver) = pc
            .add_transceiver_from_track(Arc::clone(&track) as Arc<dyn TrackLocal>, Some(init))
            .await
        else {
            return false;
        };
        let Ok(Some(sender)) = transceiver.sender().await else {
            return false;
        };
        let live = Live::new(&self.stats, |s| &s.legs);
        let who = Arc::downgrade(me);
        let on_quality: QualityChanged = Arc::new(move |q| {
            if let Some(me) = who.upgrade() {
                me.send(me.quality_event(q));
            }
        });
        let downlink = (Arc::clone(&me.downlink), on_quality);
        let leg = Arc::new(Downtrack::new(
            &me.id,
            (track, ssrc),
            sender,
            downlink,
            live,
        ));
        publication.subscribe(Arc::clone(&leg));
        lock(&me.legs).push((Arc::clone(publication), leg));
        true
    }

    /// A track arrived from `me`: relayed to everyone admitted.
    async fn publish(self: &Arc<Self>, me: &Arc<Participant>, remote: Arc<dyn TrackRemote>) {
        if me.role == JoinRole::Subscriber || me.gone.load(Ordering::SeqCst) {
            return;
        }
        let live = Live::new(&self.stats, |s| &s.publications);
        let Some(publication) = Publication::of(&me.id, &me.stream, remote, live).await else {
            return;
        };
        let publication = Arc::new(publication);
        publication.muted.store(
            me.muted(publication.kind_name()).load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.stats.spawn(Arc::clone(&publication).forward());
        let mut touched = Vec::new();
        {
            let _w = self.wiring.lock().await;
            lock(&self.publications).push(Arc::clone(&publication));
            for other in self.others(&me.id) {
                if !publication.subscribed(&other.id) && self.attach(&other, &publication).await {
                    touched.push(other);
                }
            }
        }
        for other in touched {
            self.renegotiate(&other).await;
        }
    }

    /// Mutes or unmutes: oneself, or (muting only) anyone by the doctor.
    pub fn mute(&self, by: &Participant, who: Option<&str>, kind: &str, muted: bool) -> Refused {
        let target = match who {
            Some(w) if w != by.id => {
                moderator(by)?;
                if !muted {
                    return Err(Refusal::new(
                        "forbidden",
                        "nobody unmutes another participant: ask them to unmute",
                    ));
                }
                self.participant(w).ok_or_else(|| not_here(w))?
            }
            _ => self.participant(&by.id).ok_or_else(gone)?,
        };
        target.muted(kind).store(muted, Ordering::Relaxed);
        for p in lock(&self.publications)
            .iter()
            .filter(|p| p.owner == target.id && p.kind_name() == kind)
        {
            p.muted.store(muted, Ordering::Relaxed);
        }
        let event = json!({"type": "muted", "participant": target.id, "kind": kind,
            "muted": muted, "by": by.id});
        self.broadcast("", &event);
        Ok(())
    }

    /// A receiver asks for less (or more) video: `off` is audio only. Answered with the quality
    /// they get now (their link may carry less than they asked for).
    pub fn quality(&self, me: &Participant, asked: Quality) {
        me.downlink.ask(asked);
        me.send(me.quality_event(me.downlink.effective()));
    }

    /// The doctor removes someone: they are told, disconnected, and kept out.
    pub async fn remove(self: &Arc<Self>, by: &Participant, who: &str) -> Refused {
        moderator(by)?;
        if who == by.id {
            return Err(Refusal::new(
                "bad-message",
                "leave instead of removing yourself",
            ));
        }
        let p = self.participant(who).ok_or_else(|| not_here(who))?;
        lock(&self.removed).insert(p.id.clone());
        p.send(json!({"type": "removed", "by": by.id}));
        p.close(4003, "removed");
        self.leave(&p, "removed").await;
        Ok(())
    }

    /// The doctor ends the call.
    pub async fn end_by(self: &Arc<Self>, by: &Participant) -> Refused {
        moderator(by)?;
        if let Some(rooms) = self.rooms.upgrade() {
            rooms.end(&self.id, "the doctor ended the call").await;
        }
        Ok(())
    }

    async fn end(&self, reason: &str) {
        self.ended.store(true, Ordering::SeqCst);
        let everyone: Vec<_> = std::mem::take(&mut *lock(&self.participants));
        for p in &everyone {
            p.gone.store(true, Ordering::SeqCst);
            p.send(json!({"type": "ended", "reason": reason}));
            p.close(1000, "ended");
        }
        lock(&self.publications).clear();
        for p in &everyone {
            lock(&p.legs).clear();
            self.release(p).await;
        }
    }

    /// Their socket dropped: they keep their place for the grace period.
    pub fn dropped(self: &Arc<Self>, me: &Arc<Participant>, generation: u64) {
        {
            let mut link = lock(&me.link);
            if link.generation != generation {
                return;
            }
            link.out = None;
        }
        let Some(rooms) = self.rooms.upgrade() else {
            return;
        };
        let (room, me) = (Arc::clone(self), Arc::clone(me));
        self.stats.spawn(async move {
            tokio::time::sleep(rooms.limits.grace).await;
            let still = {
                let link = lock(&me.link);
                link.generation == generation && link.out.is_none()
            };
            if still {
                room.leave(&me, "timeout").await;
            }
        });
    }

    /// `me` is gone: their tracks leave everyone's connection, their connection closes.
    pub async fn leave(self: &Arc<Self>, me: &Arc<Participant>, reason: &str) {
        if me.gone.swap(true, Ordering::SeqCst) {
            return;
        }
        lock(&me.link).out = None;
        lock(&self.participants).retain(|p| !Arc::ptr_eq(p, me));
        let mut touched: Vec<Arc<Participant>> = Vec::new();
        {
            let _w = self.wiring.lock().await;
            let mine: Vec<_> = {
                let mut pubs = lock(&self.publications);
                let (mine, rest) = pubs.drain(..).partition(|p| p.owner == me.id);
                *pubs = rest;
                mine
            };
            for publication in &mine {
                for leg in publication.all_subscribers().iter() {
                    let Some(other) = self.participant(&leg.subscriber) else {
                        continue;
                    };
                    lock(&other.legs).retain(|(_, l)| !Arc::ptr_eq(l, leg));
                    if let Some(pc) = other.pc() {
                        let _ = pc.remove_track(&leg.sender).await;
                    }
                    if !touched.iter().any(|t| Arc::ptr_eq(t, &other)) {
                        touched.push(other);
                    }
                }
            }
            for (publication, _) in std::mem::take(&mut *lock(&me.legs)) {
                publication.unsubscribe(&me.id);
            }
        }
        self.release(me).await;
        for other in &touched {
            self.renegotiate(other).await;
        }
        let event = json!({"type": "participant-left", "participant": me.id, "reason": reason});
        if me.admitted() {
            self.broadcast(&me.id, &event);
        } else {
            self.tell_moderators(&event);
        }
        if lock(&self.participants).is_empty() {
            self.empty_timer();
        }
    }

    /// Drops the room once it has been empty for the timeout (one timer per room at most).
    fn empty_timer(self: &Arc<Self>) {
        let Some(rooms) = self.rooms.upgrade() else {
            return;
        };
        self.emptied.fetch_add(1, Ordering::SeqCst);
        if self.timer.swap(true, Ordering::SeqCst) {
            return;
        }
        let room = Arc::clone(self);
        self.stats.spawn(async move {
            loop {
                let generation = room.emptied.load(Ordering::SeqCst);
                tokio::time::sleep(rooms.limits.empty_timeout).await;
                let again = room.emptied.load(Ordering::SeqCst) != generation
                    && lock(&room.participants).is_empty();
                if !again {
                    room.timer.store(false, Ordering::SeqCst);
                    rooms.forget_if_empty(&room, generation);
                    return;
                }
            }
        });
    }

    /// Closes their connection and gives back its port.
    async fn release(&self, me: &Participant) {
        let pc = lock(&me.pc).take();
        if let Some((pc, _live)) = pc {
            let _ = pc.close().await;
        }
        lock(&me.data).take();
        if let (Some(port), Some(rooms)) = (lock(&me.port).take(), self.rooms.upgrade()) {
            rooms.ports.release(port);
        }
    }

    /// A data channel message from `me`, relayed to every other admitted participant's.
    async fn relay(&self, me: &Participant, is_text: bool, data: bytes::BytesMut) {
        if me.role == JoinRole::Subscriber {
            return;
        }
        let text = if is_text {
            let t = String::from_utf8_lossy(&data);
            Some(json!({"from": me.id, "text": t}).to_string())
        } else {
            None
        };
        for other in self.others(&me.id).iter().filter(|p| p.admitted()) {
            let dc = lock(&other.data).clone();
            let Some(dc) = dc else { continue };
            let _ = match &text {
                Some(t) => dc.send_text(t).await,
                None => dc.send(data.clone()).await,
            };
        }
    }
}

fn waiting_event(p: &Participant) -> Value {
    json!({"type": "participant-waiting", "participant": p.id, "role": p.role})
}

fn moderator(p: &Participant) -> Refused {
    if p.role == JoinRole::Moderator {
        Ok(())
    } else {
        Err(Refusal::new("forbidden", "only the doctor may do that"))
    }
}

fn not_here(who: &str) -> Refusal {
    Refusal::new("bad-message", format!("{who} is not in this call"))
}

fn gone() -> Refusal {
    Refusal::new("closed", "this participant has left the call")
}

fn failed(e: webrtc::error::Error) -> Refusal {
    Refusal::new("negotiation-failed", e.to_string())
}

/// A participant's peer connection events.
struct Events {
    room: Weak<Room>,
    me: Weak<Participant>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let (Some(me), Ok(mut c)) = (self.me.upgrade(), event.candidate.to_json()) {
            // The core leaves sdpMid empty, which matches no m-line: a browser would drop the
            // candidate (W3C addIceCandidate). All media is bundled on the first m-line.
            if c.sdp_mid.as_deref().is_none_or(str::is_empty) {
                c.sdp_mid = None;
                c.sdp_mline_index = Some(0);
            }
            me.send(json!({"type": "candidate", "candidate": c}));
        }
    }

    /// Media goes out to a receiver once its connection is up; then each publisher it
    /// receives is asked for a keyframe (one asked for at negotiation could not be sent on).
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let (Some(room), Some(me)) = (self.room.upgrade(), self.me.upgrade()) else {
            return;
        };
        match state {
            RTCPeerConnectionState::Connected if !me.downlink.connected() => {
                me.downlink.set_connected(true);
                let legs = lock(&me.legs).clone();
                room.stats.spawn(async move {
                    for (publication, _) in legs {
                        publication.request_keyframe().await;
                    }
                });
            }
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                me.downlink.set_connected(false);
            }
            _ => {}
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let (Some(room), Some(me)) = (self.room.upgrade(), self.me.upgrade()) else {
            return;
        };
        // Not on the connection's own event loop: publishing waits on other connections.
        let stats = Arc::clone(&room.stats);
        stats.spawn(async move { room.publish(&me, track).await });
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let (Some(room), Some(me)) = (self.room.upgrade(), self.me.upgrade()) else {
            return;
        };
        *lock(&me.data) = Some(Arc::clone(&dc));
        let stats = Arc::clone(&room.stats);
        stats.spawn(async move {
            while let Some(event) = dc.poll().await {
                match event {
                    DataChannelEvent::OnMessage(m) => room.relay(&me, m.is_string, m.data).await,
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
        });
    }
}
