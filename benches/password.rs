//! The cost of a password check: argon2id with the parameters of `yba::auth::password` (OWASP's
//! m = 19 MiB, t = 2, p = 1), hashing and verifying, one thread and both cores at once.
//!
//! `cargo bench --bench password -- [--rounds N]`

use std::time::Instant;

use yba::auth::password::{LANES, MEMORY_KIB, PASSES, hash, verify};

fn main() {
    let mut rounds = 50usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--rounds"
            && let Some(n) = args.next().and_then(|n| n.parse().ok())
        {
            rounds = n;
        }
    }
    println!("argon2id m={MEMORY_KIB} KiB, t={PASSES}, p={LANES}; {rounds} rounds");
    let stored = hash("mùa thu Hà Nội 1990").expect("hashes");
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        assert!(verify(Some(&stored), "mùa thu Hà Nội 1990"));
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "verify, one thread: p50 {:.1} ms, p99 {:.1} ms",
        times[rounds / 2],
        times[(rounds * 99 / 100).min(rounds - 1)]
    );
    let t = Instant::now();
    for _ in 0..rounds {
        assert!(!verify(None, "mùa thu Hà Nội 1990"));
    }
    println!(
        "unknown account (dummy hash), one thread: mean {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0 / rounds as f64
    );
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..rounds {
                    assert!(verify(Some(&stored), "mùa thu Hà Nội 1990"));
                }
            });
        }
    });
    let per_s = (threads * rounds) as f64 / t.elapsed().as_secs_f64();
    println!("verify on {threads} threads: {per_s:.0} checks/s");
}
