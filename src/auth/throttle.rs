//! Login back-off: after 5 failures in a row for an account (20 from an address), each further
//! attempt must wait, doubling from one second up to fifteen minutes. Accounts that do not exist
//! are counted the same way, so being throttled says nothing about whether an account exists.
//! The counts live in this process (a restart forgets them, and each server of several counts
//! its own): enough to make guessing passwords online useless at argon2's cost.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed to an account before back-off starts.
pub const FREE_FAILURES: u32 = 5;
/// Failures allowed from one address (a commune station's staff share one behind NAT).
pub const FREE_ADDRESS_FAILURES: u32 = 20;
/// The longest wait.
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// Counters idle this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    last: Instant,
}

#[derive(Default)]
pub struct Throttle {
    counts: Mutex<HashMap<String, Count>>,
}

impl Throttle {
    /// How long `keys` must still wait (the longest of them), if at all.
    pub fn wait(&self, keys: &[&str], now: Instant) -> Option<Duration> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .filter_map(|k| counts.get(*k).map(|c| (k, c)))
            .filter_map(|(k, c)| {
                let free = if k.starts_with("addr:") {
                    FREE_ADDRESS_FAILURES
                } else {
                    FREE_FAILURES
                };
                let wait = backoff(c.failures, free)?;
                let until = c.last + wait;
                (until > now).then(|| until - now)
            })
            .max()
    }

    pub fn failed(&self, keys: &[&str], now: Instant) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() > 100_000 {
            counts.retain(|_, c| now.duration_since(c.last) < FORGET_AFTER);
        }
        for k in keys {
            let c = counts.entry(k.to_string()).or_insert(Count {
                failures: 0,
                last: now,
            });
            c.failures = c.failures.saturating_add(1);
            c.last = now;
        }
    }

    pub fn succeeded(&self, keys: &[&str]) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            counts.remove(*k);
        }
    }
}

/// The wait after `failures` failures in a row.
fn backoff(failures: u32, free: u32) -> Option<Duration> {
    let over = failures.checked_sub(free)?;
    Some(Duration::from_secs(1u64 << over.min(20)).min(MAX_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_are_free_then_the_wait_doubles() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..4 {
            t.failed(&["acct:a"], now);
        }
        assert_eq!(t.wait(&["acct:a"], now), None);
        t.failed(&["acct:a"], now);
        assert_eq!(t.wait(&["acct:a"], now), Some(Duration::from_secs(1)));
        t.failed(&["acct:a"], now);
        assert_eq!(
            t.wait(&["acct:a", "addr:x"], now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(t.wait(&["acct:a"], now + Duration::from_secs(3)), None);
        for _ in 0..30 {
            t.failed(&["acct:a"], now);
        }
        assert_eq!(t.wait(&["acct:a"], now), Some(MAX_WAIT));
        t.succeeded(&["acct:a"]);
        assert_eq!(t.wait(&["acct:a"], now), None);
    }
}
