//! Load benchmark of the FHIR API: create, read and update throughput and latency at 32
//! concurrent clients, transaction ingest of patient bundles, and, in the same run, the raw rate
//! at which the same database accepts plain INSERTs of the same rows (the physical limit).
//!
//! The server is the real `yba` binary in its own process; this process is the load generator
//! (one thread, raw HTTP/1.1 keep-alive connections) and, for the baseline, a direct database
//! client. Everything shares the machine, as the targets in BENCHMARKS.md require.
//!
//!     cargo bench --bench load -- --db sqlite
//!     cargo bench --bench load -- --db postgres [--seconds 10] [--clients 32]

mod common;

use std::time::{Duration, Instant};

use common::{Conn, Rng, Stats, rss_kb, run};

use diesel::{Connection, RunQueryDsl};
use serde_json::{Value, json};
use tokio::net::TcpStream;

struct Args {
    db: String,
    seconds: u64,
    clients: usize,
    ingest_clients: usize,
    bundles: usize,
    phases: String,
}

fn args() -> Args {
    let f = common::Flags::parse();
    Args {
        db: f.text("db", "sqlite"),
        seconds: f.num("seconds", 10),
        clients: f.num("clients", 32),
        ingest_clients: f.num("ingest-clients", 4),
        bundles: f.num("bundles", 60),
        phases: f.text("phases", "create,read,update,ingest"),
    }
}

/// Person `n`. Distinct `n` (below 120 million) are distinct people, each with a citizen ID of
/// their own (the server keeps one record per citizen) whose birth year and sex agree with the
/// record (the server checks them).
fn patient(n: u64) -> Value {
    let female = (n / 60_000_000) % 2 == 1;
    let yy = 40 + (n / 1_000_000) % 60;
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "http://fhir.ehealth.gov.vn/core/sid/citizen_id", "value": format!("001{}{yy:02}{:06}", u8::from(female), n % 1_000_000)}],
        "active": true,
        "name": [{"use": "official", "family": "Nguyễn", "given": ["Văn", format!("An{n}")]}],
        "telecom": [{"system": "phone", "value": format!("09{:08}", n % 100_000_000), "use": "mobile"}],
        "gender": if female { "female" } else { "male" },
        "birthDate": format!("19{yy:02}-{:02}-{:02}", 1 + n % 12, 1 + n % 28),
        "address": [{"use": "home", "line": ["12 Lê Lợi"], "city": "Huế", "district": "Phú Hội", "country": "VN"}]
    })
}

/// A patient's record as a transaction: the patient, encounters, observations, conditions and
/// prescriptions, linked by urn:uuid (between 100 and 300 entries).
fn patient_bundle(n: u64, rng: &mut Rng) -> (Value, usize) {
    let size = 100 + rng.below(201);
    let pid = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let mut entries = vec![
        json!({"fullUrl": pid, "resource": patient(n), "request": {"method": "POST", "url": "Patient"}}),
    ];
    let mut enc = pid.clone();
    while entries.len() < size {
        let i = entries.len();
        let full = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let day = format!("2025-{:02}-{:02}", 1 + i % 12, 1 + i % 28);
        let resource = match i % 10 {
            0 => {
                enc = full.clone();
                json!({"resourceType": "Encounter", "status": "finished",
                       "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                       "subject": {"reference": pid}, "period": {"start": format!("{day}T08:00:00+07:00"), "end": format!("{day}T08:30:00+07:00")}})
            }
            1 => {
                json!({"resourceType": "Condition", "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10", "display": "Tăng huyết áp vô căn"}]},
                        "subject": {"reference": pid}, "encounter": {"reference": enc}, "recordedDate": day})
            }
            2 => json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                        "medicationCodeableConcept": {"text": "Amlodipin 5mg"}, "subject": {"reference": pid}, "encounter": {"reference": enc},
                        "authoredOn": day, "dosageInstruction": [{"text": "1 viên/ngày, uống buổi sáng"}]}),
            _ => json!({"resourceType": "Observation", "status": "final",
                        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}]},
                        "subject": {"reference": pid}, "encounter": {"reference": enc}, "effectiveDateTime": format!("{day}T08:10:00+07:00"),
                        "valueQuantity": {"value": 110 + rng.below(50), "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}),
        };
        let ty = resource["resourceType"].as_str().unwrap().to_string();
        entries.push(json!({"fullUrl": full, "resource": resource, "request": {"method": "POST", "url": ty}}));
    }
    (
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        size,
    )
}

/// A row of the raw baseline: type, id, body.
type RawRowOwned = (String, String, String);

diesel::table! {
    raw_ingest (pk) {
        pk -> BigInt,
        res_type -> Text,
        res_id -> Text,
        body -> Text,
    }
}

#[derive(diesel::Insertable)]
#[diesel(table_name = raw_ingest)]
struct RawRow<'a> {
    res_type: &'a str,
    res_id: &'a str,
    body: &'a str,
}

/// A second baseline on PostgreSQL: the same rows as multi-row INSERTs (500 rows a statement),
/// which is how yba writes a transaction there. Plain per-row INSERTs pay a round trip a row.
fn raw_multi_row_inserts(
    url: &str,
    bundles: &[Vec<(String, String, String)>],
    threads: usize,
) -> (usize, Duration) {
    let mut c = diesel::PgConnection::establish(url).expect("baseline connects");
    diesel::sql_query("DROP TABLE IF EXISTS raw_ingest")
        .execute(&mut c)
        .unwrap();
    diesel::sql_query("CREATE TABLE raw_ingest (pk BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, res_type TEXT NOT NULL, res_id TEXT NOT NULL, body TEXT NOT NULL)")
        .execute(&mut c)
        .unwrap();
    let rows: usize = bundles.iter().map(Vec::len).sum();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut c = diesel::PgConnection::establish(url).expect("baseline connects");
                for b in bundles.iter().skip(t).step_by(threads) {
                    let rows: Vec<RawRow<'_>> = b
                        .iter()
                        .map(|(ty, id, body)| RawRow {
                            res_type: ty,
                            res_id: id,
                            body,
                        })
                        .collect();
                    c.transaction::<_, diesel::result::Error, _>(|c| {
                        for chunk in rows.chunks(500) {
                            diesel::insert_into(raw_ingest::table)
                                .values(chunk)
                                .execute(c)?;
                        }
                        Ok(())
                    })
                    .expect("baseline insert");
                }
            });
        }
    });
    (rows, start.elapsed())
}

/// The baseline: the same rows (one per resource, as the server stores it), one transaction per
/// bundle, one plain INSERT per row, straight into the database with no server in between.
fn raw_inserts(
    url: &str,
    bundles: &[Vec<(String, String, String)>],
    threads: usize,
    postgres: bool,
) -> (usize, Duration) {
    let ddl = if postgres {
        "CREATE TABLE raw_ingest (pk BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, res_type TEXT NOT NULL, res_id TEXT NOT NULL, body TEXT NOT NULL)"
    } else {
        "CREATE TABLE raw_ingest (pk INTEGER PRIMARY KEY, res_type TEXT NOT NULL, res_id TEXT NOT NULL, body TEXT NOT NULL)"
    };
    let insert = if postgres {
        "INSERT INTO raw_ingest (res_type, res_id, body) VALUES ($1, $2, $3)"
    } else {
        "INSERT INTO raw_ingest (res_type, res_id, body) VALUES (?, ?, ?)"
    };
    let mut c = yba::store::Db::establish(url).expect("baseline connects");
    diesel::sql_query(ddl)
        .execute(&mut c)
        .expect("baseline table");
    let rows: usize = bundles.iter().map(Vec::len).sum();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut c = yba::store::Db::establish(url).expect("baseline connects");
                if !postgres {
                    diesel::sql_query("PRAGMA journal_mode = WAL")
                        .execute(&mut c)
                        .ok();
                    diesel::sql_query("PRAGMA busy_timeout = 10000")
                        .execute(&mut c)
                        .ok();
                    diesel::sql_query("PRAGMA synchronous = FULL")
                        .execute(&mut c)
                        .ok();
                }
                for b in bundles.iter().skip(t).step_by(threads) {
                    c.transaction::<_, diesel::result::Error, _>(|c| {
                        for (ty, id, body) in b {
                            diesel::sql_query(insert)
                                .bind::<diesel::sql_types::Text, _>(ty)
                                .bind::<diesel::sql_types::Text, _>(id)
                                .bind::<diesel::sql_types::Text, _>(body)
                                .execute(c)?;
                        }
                        Ok(())
                    })
                    .expect("baseline insert");
                }
            });
        }
    });
    (rows, start.elapsed())
}

fn main() {
    let a = args();
    let postgres = a.db.starts_with("postgres");
    let dir = tempfile::tempdir().unwrap();
    let pg = std::env::var("YBA_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let (server_url, raw_url) = if postgres {
        let mut c = diesel::PgConnection::establish(&pg).expect("PostgreSQL reachable");
        diesel::sql_query(format!("CREATE SCHEMA {schema}"))
            .execute(&mut c)
            .unwrap();
        diesel::sql_query(format!("CREATE SCHEMA {schema}_raw"))
            .execute(&mut c)
            .unwrap();
        (
            format!("{pg}?options=-csearch_path%3D{schema}"),
            format!("{pg}?options=-csearch_path%3D{schema}_raw"),
        )
    } else {
        (
            format!("sqlite://{}", dir.path().join("yba.db").display()),
            format!("{}", dir.path().join("raw.db").display()),
        )
    };

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_yba"))
        .arg("serve")
        .env("DATABASE_URL", &server_url)
        .env("YBA_BIND", &addr)
        // The FHIR path alone (sign-in and audit have their own measurements).
        .env("YBA_AUTH", "off")
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("yba starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        for _ in 0..200 {
            if TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_rss = rss_kb(server.id());

        let mut results: Vec<Stats> = Vec::new();
        let phase = |p: &str| a.phases.split(',').any(|x| x == p);
        println!("server pid {} (idle RSS {} kB)", server.id(), idle_rss);
        // Create.
        if phase("create") {
        let next = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let create = run("create (POST Patient)", &addr, a.clients, a.seconds, move |_, _| {
            // A new person each time: a second record of a citizen would be refused (409).
            let body = patient(next.replace(next.get() + 1)).to_string().into_bytes();
            ("POST", "/fhir/Patient".into(), Some(body), 201)
        })
        .await;
        results.push(create);
        }
        // Ids to read and update.
        let mut conn = Conn::open(&addr).await;
        let mut ids = Vec::new();
        for i in 0..2000u64 {
            let (s, body) = conn.call("POST", "/fhir/Patient", Some(patient(50_000_000 + i).to_string().as_bytes())).await;
            assert_eq!(s, 201);
            let v: Value = serde_json::from_slice(&body).unwrap();
            ids.push(v["id"].as_str().unwrap().to_string());
        }
        let ids = std::rc::Rc::new(ids);
        let read_ids = ids.clone();
        if phase("read") {
        results.push(
            run("read (GET Patient/id)", &addr, a.clients, a.seconds, move |_, rng| {
                ("GET", format!("/fhir/Patient/{}", read_ids[rng.below(read_ids.len())]), None, 200)
            })
            .await,
        );
        }
        let upd_ids = ids.clone();
        if phase("update") {
        results.push(
            run("update (PUT Patient/id)", &addr, a.clients, a.seconds, move |_, rng| {
                let i = rng.below(upd_ids.len());
                let id = &upd_ids[i];
                // The same person, so the citizen ID stays theirs; the new version differs.
                let mut p = patient(50_000_000 + i as u64);
                p["telecom"][0]["value"] = json!(format!("09{:08}", rng.below(100_000_000)));
                p["id"] = json!(id);
                ("PUT", format!("/fhir/Patient/{id}"), Some(p.to_string().into_bytes()), 200)
            })
            .await,
        );
        }

        // Transaction ingest.
        let mut rng = Rng(42);
        let bundles: Vec<(Vec<u8>, usize, Vec<RawRowOwned>)> = (0..a.bundles)
            .map(|i| {
                let (b, size) = patient_bundle(100_000_000 + i as u64, &mut rng);
                let rows = b["entry"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        let r = &e["resource"];
                        (r["resourceType"].as_str().unwrap().to_string(), uuid::Uuid::new_v4().to_string(), r.to_string())
                    })
                    .collect();
                (b.to_string().into_bytes(), size, rows)
            })
            .collect();
        let resources: usize = bundles.iter().map(|b| b.1).sum();
        let bundles = std::rc::Rc::new(bundles);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..a.ingest_clients {
            let (addr, bundles) = (addr.clone(), bundles.clone());
            let n = a.ingest_clients;
            tasks.push(tokio::task::spawn_local(async move {
                let mut conn = Conn::open(&addr).await;
                let mut lat = Vec::new();
                for b in bundles.iter().skip(c).step_by(n) {
                    let t = Instant::now();
                    let (s, body) = conn.call("POST", "/fhir", Some(&b.0)).await;
                    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body[..body.len().min(500)]));
                    lat.push(t.elapsed().as_micros() as u64);
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let ingest_time = start.elapsed();
        let ingest_rate = resources as f64 / ingest_time.as_secs_f64();
        let mut ingest = Stats { label: format!("transaction ingest ({} bundles, {resources} resources, {} clients)", a.bundles, a.ingest_clients), n: lat.len(), errors: 0, elapsed: ingest_time, lat_us: lat };

        let raw_url_multi = raw_url.clone();
        let rows: Vec<Vec<(String, String, String)>> = bundles.iter().map(|b| b.2.clone()).collect();
        let raw_threads = if postgres { a.ingest_clients } else { 1 };
        let (raw_n, raw_time) = tokio::task::spawn_blocking(move || {
            let raw_url = raw_url.clone();
            raw_inserts(&raw_url, &rows, raw_threads, postgres)
        })
        .await
        .unwrap();
        let raw_rate = raw_n as f64 / raw_time.as_secs_f64();
        let multi = if postgres {
            let url = raw_url_multi.clone();
            let rows: Vec<Vec<(String, String, String)>> = bundles.iter().map(|b| b.2.clone()).collect();
            let threads = a.ingest_clients;
            let (n, t) = tokio::task::spawn_blocking(move || raw_multi_row_inserts(&url, &rows, threads)).await.unwrap();
            Some(n as f64 / t.as_secs_f64())
        } else {
            None
        };
        let busy_rss = rss_kb(server.id());

        println!("\n## {} — {} s per phase, {} clients", if postgres { "PostgreSQL" } else { "SQLite" }, a.seconds, a.clients);
        println!("| interaction | requests | req/s | p50 ms | p99 ms | errors |");
        println!("|---|---:|---:|---:|---:|---:|");
        for mut s in results {
            let (p50, p99) = (s.pct(0.50), s.pct(0.99));
            println!("| {} | {} | {:.0} | {:.2} | {:.2} | {} |", s.label, s.n, s.rate(), p50, p99, s.errors);
        }
        let (p50, p99) = (ingest.pct(0.5), ingest.pct(0.99));
        println!("| {} | {} | {:.1} bundles/s | {:.1} | {:.1} | 0 |", ingest.label, ingest.n, ingest.rate(), p50, p99);
        println!();
        println!("| ingest | resources/s |");
        println!("|---|---:|");
        println!("| yba transaction ingest | {ingest_rate:.0} |");
        println!("| raw INSERT of the same rows ({raw_threads} connection(s), one transaction per bundle) | {raw_rate:.0} |");
        println!("| yba / raw per-row INSERTs | {:.0}% |", 100.0 * ingest_rate / raw_rate);
        if let Some(m) = multi {
            println!("| raw multi-row INSERTs of the same rows ({} connections, 500 rows a statement) | {m:.0} |", a.ingest_clients);
            println!("| yba / raw multi-row INSERTs | {:.0}% |", 100.0 * ingest_rate / m);
        }
        println!();
        println!("server RSS: idle {:.1} MB, after the run {:.1} MB", idle_rss as f64 / 1024.0, busy_rss as f64 / 1024.0);
    });
    let _ = server.kill();
    let _ = server.wait();
    if postgres && let Ok(mut c) = diesel::PgConnection::establish(&pg) {
        let _ = diesel::sql_query(format!("DROP SCHEMA {schema} CASCADE")).execute(&mut c);
        let _ = diesel::sql_query(format!("DROP SCHEMA {schema}_raw CASCADE")).execute(&mut c);
    }
}
