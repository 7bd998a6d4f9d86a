//! Per-caller request rate limits: a token bucket for each signed-in party (a person by
//! username, a hospital system by client id), so that one runaway client cannot take the
//! server from everyone else. Login attempts have their own, stricter back-off
//! ([`super::throttle`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Callers a shard remembers before it forgets those whose bucket is full again.
const PRUNE_AT: usize = 4096;

/// Token buckets: `rate` requests a second on average, bursts of up to `burst`.
pub struct RateLimit {
    rate: f64,
    burst: f64,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `None` when `rate` is 0 (no limit). A burst of two seconds' worth.
    pub fn new(rate: u32) -> Option<RateLimit> {
        (rate > 0).then(|| RateLimit {
            rate: f64::from(rate),
            burst: 2.0 * f64::from(rate),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    /// Takes one request from `key`'s bucket, or says how long until one is there.
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        self.take_at(key, Instant::now())
    }

    fn take_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let shard = &self.shards[shard_of(key)];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= PRUNE_AT {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

fn shard_of(key: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let rl = RateLimit::new(10).unwrap();
        let t0 = Instant::now();
        for _ in 0..20 {
            assert!(rl.take_at("his-a", t0).is_ok());
        }
        let wait = rl.take_at("his-a", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        // Another caller is not affected.
        assert!(rl.take_at("his-b", t0).is_ok());
        // A tenth of a second later, one more request.
        let t1 = t0 + Duration::from_millis(100);
        assert!(rl.take_at("his-a", t1).is_ok());
        assert!(rl.take_at("his-a", t1).is_err());
        assert!(RateLimit::new(0).is_none());
    }
}
