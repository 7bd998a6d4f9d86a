//! How much video a receiver gets: what they asked for (`quality` message), capped by what
//! their link is seen to carry (the loss their receiver reports give). Audio first: audio is
//! always relayed; video is shed a step at a time when the link loses packets, down to none,
//! and given back a step at a time once it has been clean for a while.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Video quality, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// Audio only.
    Off = 0,
    /// The lowest simulcast layer the publisher sends.
    Low = 1,
    /// The best layer.
    High = 2,
}

impl Quality {
    fn from_u8(v: u8) -> Quality {
        match v {
            0 => Quality::Off,
            1 => Quality::Low,
            _ => Quality::High,
        }
    }

    fn up(self) -> Quality {
        Quality::from_u8(self as u8 + 1)
    }

    pub fn name(self) -> &'static str {
        match self {
            Quality::Off => "off",
            Quality::Low => "low",
            Quality::High => "high",
        }
    }
}

/// Loss (of 256, as RTCP reports it) above which video steps down to the lowest layer.
const LOSSY: u8 = 26; // 10%
/// Above which video stops (audio only).
const UNUSABLE: u8 = 64; // 25%
/// Below which the link counts as clean.
const CLEAN: u8 = 13; // 5%
/// How long the link must stay clean before video steps up again.
const RECOVERY: Duration = Duration::from_secs(5);

/// A receiver's downlink.
pub struct Downlink {
    /// The receiver's peer connection is up (ICE and DTLS done): what is sent before is lost
    /// (there are no SRTP keys yet to send it with).
    connected: AtomicBool,
    /// The effective quality, read per packet.
    effective: AtomicU8,
    state: Mutex<State>,
}

struct State {
    asked: Quality,
    /// What the link carries, by its loss.
    cap: Quality,
    clean_since: Option<Instant>,
}

impl Default for Downlink {
    fn default() -> Self {
        Downlink {
            connected: AtomicBool::new(false),
            effective: AtomicU8::new(Quality::High as u8),
            state: Mutex::new(State {
                asked: Quality::High,
                cap: Quality::High,
                clean_since: None,
            }),
        }
    }
}

impl Downlink {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The receiver's peer connection came up (true) or is gone for good (false).
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    pub fn effective(&self) -> Quality {
        Quality::from_u8(self.effective.load(Ordering::Relaxed))
    }

    /// The receiver asks for `q`; the new effective quality, if it changed.
    pub fn ask(&self, q: Quality) -> Option<Quality> {
        self.change(|s| s.asked = q)
    }

    /// A receiver report's fraction lost (of 256) at `now`; the new effective quality, if it
    /// changed.
    pub fn report(&self, fraction_lost: u8, now: Instant) -> Option<Quality> {
        self.change(|s| {
            if fraction_lost > UNUSABLE {
                s.cap = Quality::Off;
                s.clean_since = None;
            } else if fraction_lost > LOSSY {
                s.cap = s.cap.min(Quality::Low);
                s.clean_since = None;
            } else if fraction_lost < CLEAN {
                match s.clean_since {
                    None => s.clean_since = Some(now),
                    Some(t) if now.duration_since(t) >= RECOVERY && s.cap < Quality::High => {
                        s.cap = s.cap.up();
                        s.clean_since = Some(now);
                    }
                    Some(_) => {}
                }
            } else {
                s.clean_since = None;
            }
        })
    }

    /// The cap, for what is reported to the receiver.
    pub fn limited_by_link(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.cap < s.asked
    }

    fn change(&self, f: impl FnOnce(&mut State)) -> Option<Quality> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = s.asked.min(s.cap);
        f(&mut s);
        let after = s.asked.min(s.cap);
        self.effective.store(after as u8, Ordering::Relaxed);
        (after != before).then_some(after)
    }
}

/// What a receiver's reports say its own link lost. The loss a receiver reports counts every
/// sequence number it never got, and the relay numbers a leg on from the publisher's numbers:
/// what was lost before the relay (on the publisher's uplink, or shed by the relay when it fell
/// behind) shows up as loss in every receiver's reports too. Those numbers, never sent on the
/// leg, are taken off, so that one bad uplink does not cost every receiver its video.
#[derive(Debug, Default)]
pub struct LinkLoss {
    /// The highest sequence number sent on the leg.
    highest: Option<u16>,
    /// Numbers below it that were never sent (oldest first).
    holes: VecDeque<u16>,
    /// The previous report's extended highest sequence number and cumulative loss.
    last_report: Option<(u32, u32)>,
}

/// Holes remembered at most (a receiver reports every second or so).
const MAX_HOLES: usize = 1024;

impl LinkLoss {
    /// A packet numbered `seq` goes out on the leg.
    pub fn sent(&mut self, seq: u16) {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            return;
        };
        let ahead = seq.wrapping_sub(highest);
        if ahead == 0 {
            return;
        }
        if ahead < 0x8000 {
            // Anything skipped never reached the relay (yet).
            if usize::from(ahead) <= MAX_HOLES {
                self.holes
                    .extend((1..ahead).map(|n| highest.wrapping_add(n)));
            }
            let excess = self.holes.len().saturating_sub(MAX_HOLES);
            self.holes.drain(..excess);
            self.highest = Some(seq);
        } else if let Some(i) = self.holes.iter().position(|&h| h == seq) {
            // A late packet fills its hole.
            self.holes.remove(i);
        }
    }

    /// A reception report block for the leg (its extended highest sequence number and
    /// cumulative number lost): the fraction (of 256) lost on the link itself since the
    /// previous report; None for the first.
    pub fn report(&mut self, highest: u32, total_lost: u32) -> Option<u8> {
        let (prev_highest, prev_lost) = self.last_report.replace((highest, total_lost))?;
        let expected = highest.wrapping_sub(prev_highest);
        // The cumulative loss is a signed 24-bit number (duplicates can make it fall).
        let lost = total_lost.wrapping_sub(prev_lost) & 0x00FF_FFFF;
        let lost = if lost >= 0x0080_0000 { 0 } else { lost };
        // Holes in (prev_highest, highest] were never sent; those at or below `highest` are
        // done with.
        let (from, to) = (prev_highest as u16, highest as u16);
        let never_sent = self
            .holes
            .iter()
            .filter(|&&h| u32::from(h.wrapping_sub(from).wrapping_sub(1)) < expected)
            .count();
        self.holes.retain(|&h| {
            let ahead = h.wrapping_sub(to);
            ahead != 0 && ahead < 0x8000
        });
        if expected == 0 || expected >= 0x8000 {
            return Some(0);
        }
        let own = u64::from(lost).saturating_sub(never_sent as u64);
        Some(u8::try_from(own * 256 / u64::from(expected)).unwrap_or(u8::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_steps_video_down_and_a_clean_link_steps_it_back_up() {
        let d = Downlink::default();
        let t0 = Instant::now();
        assert_eq!(d.effective(), Quality::High);
        assert_eq!(d.report(2, t0), None);
        // 15% loss: the lowest layer.
        assert_eq!(d.report(38, t0), Some(Quality::Low));
        assert!(d.limited_by_link());
        // 40%: audio only.
        assert_eq!(d.report(102, t0), Some(Quality::Off));
        // Clean again: one step after the recovery time, the next after another.
        let s = Duration::from_secs(1);
        assert_eq!(d.report(0, t0 + s), None);
        assert_eq!(d.report(0, t0 + 3 * s), None);
        assert_eq!(d.report(0, t0 + 6 * s), Some(Quality::Low));
        assert_eq!(d.report(0, t0 + 8 * s), None);
        // A middling report restarts the clock.
        assert_eq!(d.report(20, t0 + 9 * s), None);
        assert_eq!(d.report(0, t0 + 10 * s), None);
        assert_eq!(d.report(0, t0 + 14 * s), None);
        assert_eq!(d.report(0, t0 + 15 * s), Some(Quality::High));
        assert!(!d.limited_by_link());
    }

    #[test]
    fn what_the_receiver_asked_for_is_the_ceiling() {
        let d = Downlink::default();
        let t0 = Instant::now();
        assert_eq!(d.ask(Quality::Off), Some(Quality::Off));
        // The link's recovery never gives more than was asked for.
        assert_eq!(d.report(0, t0), None);
        assert_eq!(d.report(0, t0 + Duration::from_secs(20)), None);
        assert_eq!(d.effective(), Quality::Off);
        assert_eq!(d.ask(Quality::Low), Some(Quality::Low));
        assert_eq!(d.ask(Quality::Low), None);
        // A lossy link caps it; asking for more does not lift the cap.
        assert_eq!(d.report(200, t0), Some(Quality::Off));
        assert_eq!(d.ask(Quality::High), None);
        assert!(d.limited_by_link());
    }
    #[test]
    fn loss_before_the_relay_is_not_the_receivers_link() {
        let mut l = LinkLoss::default();
        // 1000..=1099 sent but for 1010..=1029 (lost on the publisher's uplink).
        for seq in (1000u16..1100).filter(|s| !(1010..1030).contains(s)) {
            l.sent(seq);
        }
        assert_eq!(l.report(999, 0), None, "the first report is the baseline");
        // The receiver lost those 20 and 5 more of its own: 5 of 100.
        assert_eq!(l.report(1099, 25), Some(12)); // 5 × 256 ÷ 100
        // A late packet fills its hole: not counted as never sent.
        for seq in 1100u16..1150 {
            if seq != 1120 {
                l.sent(seq);
            }
        }
        l.sent(1120);
        assert_eq!(l.report(1149, 25), Some(0));
        // Nothing more sent: nothing expected, nothing lost.
        assert_eq!(l.report(1149, 25), Some(0));
        // Across the 16-bit wrap, the cycle count in the extended number.
        let mut l = LinkLoss::default();
        for seq in (65_500u16..=65_535).chain(0..64).filter(|&s| s != 3) {
            l.sent(seq);
        }
        assert_eq!(l.report(65_499, 0), None);
        assert_eq!(l.report(65_536 + 63, 1), Some(0));
        // Duplicates make the cumulative loss fall: no loss, not a huge one.
        assert_eq!(l.report(65_536 + 63, 0), Some(0));
    }
}
