//! Bulk Data and notifications, against the real `yba serve` in its own process:
//! - `$export` of a large population (loaded first with `yba import`): resources/s of the job,
//!   of the download, and the server's memory before and at its peak;
//! - Subscription rest-hook latency: from a write's commit (its response) to the receiver in
//!   this process hearing of it, at a steady rate of matching writes.
//!
//!     cargo bench --bench bulk -- --db sqlite|postgres [--resources 1000000] [--notifications 1000] [--rate 50]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Flags, status_kb};
use diesel::{Connection, RunQueryDsl};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    // reqwest is built without a TLS provider of its own: the process installs ring first.
    yba::install_tls();
    let f = Flags::parse();
    let db = f.text("db", "sqlite");
    let n: usize = f.num("resources", 1_000_000);
    let notifications: usize = f.num("notifications", 1_000);
    let rate: u64 = f.num("rate", 50);
    let postgres = db == "postgres";
    let dir = tempfile::tempdir().expect("temp dir");
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let url = if postgres {
        let mut c = diesel::PgConnection::establish(PG).expect("PostgreSQL reachable");
        diesel::sql_query(format!("CREATE SCHEMA {schema}"))
            .execute(&mut c)
            .expect("schema");
        format!("{PG}?options=-csearch_path%3D{schema}")
    } else {
        format!("sqlite://{}", dir.path().join("yba.db").display())
    };
    println!(
        "machine: {} cores; database: {db}; {n} resources; {notifications} notifications at {rate}/s",
        std::thread::available_parallelism().map_or(0, |c| c.get())
    );

    // The population: 1,000 patients, the rest their observations.
    let file = dir.path().join("population.ndjson");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file).expect("file"));
        for p in 0..1000.min(n) {
            let v = json!({"resourceType": "Patient", "id": format!("p-{p}"), "gender": if p % 2 == 0 { "female" } else { "male" }, "birthDate": "1970-01-01"});
            writeln!(w, "{v}").expect("write");
        }
        for i in 0..n.saturating_sub(1000) {
            let v = json!({"resourceType": "Observation", "id": format!("o-{i}"), "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
                "subject": {"reference": format!("Patient/p-{}", i % 1000)},
                "effectiveDateTime": format!("2025-{:02}-{:02}T08:00:00+07:00", 1 + i % 12, 1 + i % 28),
                "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}});
            writeln!(w, "{v}").expect("write");
        }
    }
    let t = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_yba"))
        .args(["import", file.to_str().expect("path")])
        .env("DATABASE_URL", &url)
        .env("YBA_ALWAYS_PROFILE", "none")
        .env("RUST_LOG", "warn")
        .output()
        .expect("yba import runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    println!(
        "loaded with yba import in {:.1} s: {}",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).trim()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let addr = format!("127.0.0.1:{port}");
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_yba"))
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("YBA_BIND", &addr)
        .env("YBA_AUTH", "off")
        .env("YBA_ALWAYS_PROFILE", "none")
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("yba starts");
    let pid = server.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let base = format!("http://{addr}/fhir");
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client.get(format!("{base}/metadata")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        export(&client, &base, pid, n).await;
        latency(&client, &base, notifications, rate).await;
    });
    let _ = server.kill();
    let _ = server.wait();
    if postgres && let Ok(mut c) = diesel::PgConnection::establish(PG) {
        let _ = diesel::sql_query(format!("DROP SCHEMA {schema} CASCADE")).execute(&mut c);
    }
}

async fn export(client: &reqwest::Client, base: &str, pid: u32, n: usize) {
    let (anon0, rss0) = (status_kb(pid, "RssAnon:"), status_kb(pid, "VmRSS:"));
    let peak = Arc::new(Mutex::new((anon0, rss0)));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let (a, r) = (status_kb(pid, "RssAnon:"), status_kb(pid, "VmRSS:"));
                let mut p = peak.lock().unwrap();
                *p = (p.0.max(a), p.1.max(r));
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let t = Instant::now();
    let r = client
        .get(format!("{base}/$export?_type=Patient,Observation"))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("kick-off");
    assert_eq!(r.status().as_u16(), 202, "{:?}", r.text().await);
    let status = r.headers()["content-location"]
        .to_str()
        .expect("url")
        .to_string();
    let manifest: serde_json::Value = loop {
        let r = client.get(&status).send().await.expect("poll");
        if r.status().as_u16() == 200 {
            break r.json().await.expect("manifest");
        }
        assert_eq!(r.status().as_u16(), 202);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let job_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (mut lines, mut bytes) = (0usize, 0usize);
    for o in manifest["output"].as_array().expect("output") {
        let r = client
            .get(o["url"].as_str().expect("url"))
            .send()
            .await
            .expect("download");
        let mut body = r.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.expect("chunk");
            bytes += chunk.len();
            lines += chunk.iter().filter(|b| **b == b'\n').count();
        }
    }
    let download_secs = t.elapsed().as_secs_f64();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let (anon, rss) = *peak.lock().unwrap();
    assert_eq!(lines, n, "every resource exported once");
    println!(
        "\n## $export of {n} resources ({} MB of NDJSON)",
        bytes / 1_000_000
    );
    println!("| step | s | resources/s |");
    println!("|---|---:|---:|");
    println!(
        "| job (kick-off to manifest) | {job_secs:.1} | {:.0} |",
        n as f64 / job_secs
    );
    println!(
        "| download (streamed) | {download_secs:.1} | {:.0} |",
        n as f64 / download_secs
    );
    println!(
        "server memory: before {} MB anonymous ({} MB RSS), peak during export and download {} MB anonymous ({} MB RSS)",
        anon0 / 1024,
        rss0 / 1024,
        anon / 1024,
        rss / 1024
    );
}

/// A rest-hook receiver: when it heard each `[type]/[id]`.
async fn receiver() -> (String, Arc<Mutex<HashMap<String, Instant>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let heard: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let h = heard.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let at = Instant::now();
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if conn.read_line(&mut header).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = header.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if conn.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    h.lock().unwrap().entry(path).or_insert(at);
                    if conn
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, heard)
}

async fn latency(client: &reqwest::Client, base: &str, count: usize, rate: u64) {
    let (url, heard) = receiver().await;
    let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "bench",
        "criteria": "Encounter?status=finished",
        "channel": {"type": "rest-hook", "endpoint": url, "payload": "application/fhir+json"}});
    let r = client
        .post(format!("{base}/Subscription"))
        .header("content-type", "application/fhir+json")
        .body(sub.to_string())
        .send()
        .await
        .expect("subscribe");
    assert_eq!(r.status().as_u16(), 201);
    let id = r.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    loop {
        let s: serde_json::Value = client
            .get(format!("{base}/Subscription/{id}"))
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        if s["status"] == "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sent = Vec::with_capacity(count);
    let every = Duration::from_micros(1_000_000 / rate.max(1));
    let start = Instant::now();
    for i in 0..count {
        let due = start + every * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let e = json!({"resourceType": "Encounter", "id": format!("n-{i}"), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"}});
        let t0 = Instant::now();
        let r = client
            .put(format!("{base}/Encounter/n-{i}"))
            .header("content-type", "application/fhir+json")
            .body(e.to_string())
            .send()
            .await
            .expect("write");
        let t1 = Instant::now();
        assert_eq!(r.status().as_u16(), 201);
        sent.push((format!("/hook/Encounter/n-{i}"), t0, t1));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while heard.lock().unwrap().len() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let heard = heard.lock().unwrap().clone();
    let (mut from_commit, mut from_request) = (Vec::new(), Vec::new());
    let mut missing = 0;
    for (path, t0, t1) in &sent {
        match heard.get(path) {
            Some(at) => {
                from_commit.push(at.saturating_duration_since(*t1).as_secs_f64() * 1000.0);
                from_request.push(at.saturating_duration_since(*t0).as_secs_f64() * 1000.0);
            }
            None => missing += 1,
        }
    }
    println!("\n## Subscription rest-hook latency: {count} matching writes at {rate}/s");
    println!("| measured from | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|");
    for (label, v) in [
        ("the write's response (its commit)", &mut from_commit),
        ("the write's request", &mut from_request),
    ] {
        let max = v.iter().copied().fold(0.0, f64::max);
        println!(
            "| {label} | {:.1} | {:.1} | {max:.1} |",
            pct(v, 0.5),
            pct(v, 0.99)
        );
    }
    println!("not delivered within 60 s: {missing}");
}
