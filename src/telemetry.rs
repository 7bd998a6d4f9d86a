//! Logs (tracing, human or JSON) and metrics (Prometheus text at `/metrics`).
//!
//! Logs never carry personal data: requests are logged by route pattern, not by URL, so query
//! strings (which may hold a citizen ID) and bodies stay out.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

/// Sets up logging: `RUST_LOG` filters (default `info`), `YBA_LOG_FORMAT=json` for JSON lines.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // webrtc-rs's connection driver logs each RTP packet it cannot hand on (a relay falling
        // behind) at ERROR with the packet's payload: consultation media in the log (Decree
        // 356/2025), and under overload the formatting deepens the overload. Off, whatever
        // RUST_LOG says.
        .add_directive(
            "webrtc::peer_connection::driver=off"
                .parse()
                .unwrap_or_else(|_| unreachable!("a valid directive")),
        );
    let json = std::env::var("YBA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Makes glibc's allocator give large blocks back to the system when they are freed.
///
/// glibc serves blocks above a threshold with `mmap` and unmaps them on `free`, but it raises
/// that threshold each time such a block is freed (up to 32 MiB), after which blocks that size
/// come from the heap arenas and stay with the process. A password check fills 19 MiB and the
/// audit writer builds batches of hundreds of events: measured after the auth benchmark on
/// SQLite, the server held 357 MB of its own memory, 134 MB after `malloc_trim`; with the
/// threshold fixed at 1 MiB, 127 MB (BENCHMARKS.md, issue 5). Fixing it is what
/// `MALLOC_MMAP_THRESHOLD_` does; an explicit setting in the environment wins.
pub fn settle_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called before any thread
        // starts, and an unsupported value is refused (returns 0), not undefined.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    }
}

/// Request counts and latencies by FHIR interaction. The label sets are resolved once, up
/// front: recording a request is a few atomic additions, no map lookup.
pub struct Metrics {
    registry: Registry,
    /// Per interaction: a counter per status class (1xx..5xx), and the latency histogram.
    by_interaction: Vec<([IntCounter; 5], Histogram)>,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Metrics {
    /// Metrics for the given interactions (indexed as `observe` takes them).
    pub fn new(interactions: &[&str]) -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "yba_http_requests_total",
                "HTTP requests by interaction and status class",
            ),
            &["interaction", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "yba_http_request_duration_seconds",
                "HTTP request latency by interaction",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["interaction"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(latency.clone()))
            .expect("unique metric");
        let by_interaction = interactions
            .iter()
            .map(|i| {
                let counters = CLASSES.map(|c| requests.with_label_values(&[*i, c]));
                (counters, latency.with_label_values(&[*i]))
            })
            .collect();
        Metrics {
            registry,
            by_interaction,
        }
    }

    pub fn observe(&self, interaction: usize, status: u16, elapsed: Duration) {
        if let Some((counters, latency)) = self.by_interaction.get(interaction) {
            let class = (usize::from(status / 100)).clamp(1, 5) - 1;
            counters[class].inc();
            latency.observe(elapsed.as_secs_f64());
        }
    }

    /// The Prometheus text exposition of all metrics.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
