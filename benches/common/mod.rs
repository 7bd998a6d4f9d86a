//! What the benchmarks share: a raw HTTP/1.1 client, a small random generator, latency
//! statistics, a closed-loop load runner, and the server process's RSS.
#![allow(dead_code)]

use std::io::Write as _;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A keep-alive HTTP/1.1 connection with just enough protocol for this benchmark.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Header lines sent with every request (each ending in CRLF), e.g. a bearer token.
    extra: String,
}

impl Conn {
    pub async fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).ok();
        Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            extra: String::new(),
        }
    }

    /// Sends `Authorization: Bearer <token>` with every later request.
    pub fn bearer(&mut self, token: &str) {
        self.extra = format!("Authorization: Bearer {token}\r\n");
    }

    pub async fn call(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Vec<u8>) {
        self.send(method, path, "application/fhir+json", body).await
    }

    /// A request whose body is of `content_type`.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
    ) -> (u16, Vec<u8>) {
        let mut req = Vec::with_capacity(256 + body.map_or(0, <[u8]>::len));
        write!(
            req,
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nAccept: application/fhir+json\r\n{}",
            self.extra
        )
        .unwrap();
        if let Some(b) = body {
            write!(
                req,
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                b.len()
            )
            .unwrap();
        }
        req.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            req.extend_from_slice(b);
        }
        self.stream.write_all(&req).await.expect("write");
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            let n = self.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head[9..12].parse().expect("status");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap_or(0));
        while self.buf.len() < head_end + len {
            let n = self.stream.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        (status, self.buf[head_end..head_end + len].to_vec())
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// A small xorshift generator: the benchmark needs spread, not cryptography.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub struct Stats {
    pub label: String,
    pub n: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub lat_us: Vec<u64>,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        self.n as f64 / self.elapsed.as_secs_f64()
    }
    pub fn pct(&mut self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        self.lat_us.sort_unstable();
        let i = ((self.lat_us.len() as f64 * p).ceil() as usize).clamp(1, self.lat_us.len()) - 1;
        self.lat_us[i] as f64 / 1000.0
    }
}

/// Runs `clients` connections for `secs`; each call picks its request from `make`.
pub async fn run<F>(label: &str, addr: &str, clients: usize, secs: u64, make: F) -> Stats
where
    F: Fn(usize, &mut Rng) -> (&'static str, String, Option<Vec<u8>>, u16) + Clone + 'static,
{
    run_as(label, addr, None, clients, secs, make).await
}

/// [`run`] with every request carrying a bearer token.
pub async fn run_as<F>(
    label: &str,
    addr: &str,
    token: Option<&str>,
    clients: usize,
    secs: u64,
    make: F,
) -> Stats
where
    F: Fn(usize, &mut Rng) -> (&'static str, String, Option<Vec<u8>>, u16) + Clone + 'static,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addr = addr.to_string();
        let make = make.clone();
        let token = token.map(str::to_string);
        tasks.push(tokio::task::spawn_local(async move {
            let mut conn = Conn::open(&addr).await;
            if let Some(t) = &token {
                conn.bearer(t);
            }
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((c as u64 + 1) * 0x2545_f491_4f6c_dd1d));
            let (mut lat, mut errors) = (Vec::new(), 0usize);
            while Instant::now() < deadline {
                let (m, path, body, want) = make(c, &mut rng);
                let t = Instant::now();
                let (status, _) = conn.call(m, &path, body.as_deref()).await;
                lat.push(t.elapsed().as_micros() as u64);
                if status != want {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    Stats {
        label: label.into(),
        n: all.len(),
        errors,
        elapsed: start.elapsed(),
        lat_us: all,
    }
}

pub fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// The process's own (anonymous) memory in kB: RSS without the file pages it maps. SQLite's
/// memory-mapped reads map the database once per connection, and VmRSS counts a shared file
/// page once per mapping; RssAnon is what the process itself allocated.
#[allow(dead_code)]
pub fn anon_kb(pid: u32) -> u64 {
    status_kb(pid, "RssAnon:")
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS:`, `RssAnon:`, `VmHWM:`).
#[allow(dead_code)]
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The command line of a bench: `--name value` pairs and bare `--switch`es.
pub struct Flags(Vec<(String, Option<String>)>);

impl Flags {
    pub fn parse() -> Flags {
        let mut out = Vec::new();
        let mut it = std::env::args().skip(1).peekable();
        while let Some(k) = it.next() {
            let Some(name) = k.strip_prefix("--") else {
                continue;
            };
            let value = it.next_if(|v| !v.starts_with("--"));
            out.push((name.to_string(), value));
        }
        Flags(out)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// `--name value`, or `default`.
    pub fn text(&self, name: &str, default: &str) -> String {
        self.value(name).unwrap_or(default).to_string()
    }

    /// `--name number`, or `default` (also when it does not parse).
    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        self.value(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Whether `--name` was given.
    pub fn on(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}
