//! Search benchmark: a generated population of patients with realistic clinical records
//! (≈ 500 resources each: encounters, vital-sign observations, conditions, prescriptions,
//! procedures, reports, immunizations) ingested as transactions with every index written, then
//! a mix of searches at 16 concurrent clients, `$everything` of a patient with 1,000 resources,
//! and `_total=accurate` over the whole observation table.
//!
//!     cargo bench --bench search -- --db sqlite   [--patients 1000] [--seconds 5] [--clients 16]
//!     cargo bench --bench search -- --db postgres
//!
//! The server is the real `yba` binary in its own process; the load generator is this process,
//! on the same machine.

mod common;

use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{Conn, Rng, anon_kb, rss_kb, run};
use diesel::{Connection, RunQueryDsl};
use serde_json::{Value, json};
use tokio::net::TcpStream;

const CCCD: &str = "http://fhir.ehealth.gov.vn/core/sid/citizen_id";
const FAMILIES: [&str; 16] = [
    "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ",
    "Hồ", "Ngô", "Dương", "Lý",
];
const GIVEN: [&str; 12] = [
    "Văn", "Thị", "Minh", "Hữu", "Ngọc", "Đức", "Thu", "Quang", "Thanh", "Anh", "Hoa", "Bình",
];
const CITIES: [&str; 6] = [
    "Hà Nội",
    "Huế",
    "Đà Nẵng",
    "Cần Thơ",
    "Hải Phòng",
    "Thành phố Hồ Chí Minh",
];
/// Vital signs: LOINC code, unit, base value, spread.
const VITALS: [(&str, &str, u64, usize); 5] = [
    ("8480-6", "mm[Hg]", 100, 70),
    ("8462-4", "mm[Hg]", 60, 40),
    ("8867-4", "/min", 55, 60),
    ("29463-7", "kg", 40, 50),
    ("2339-0", "mg/dL", 70, 150),
];
const ICD10: [&str; 8] = ["I10", "E11", "J45", "K21", "M54", "N18", "E78", "J44"];

struct Args {
    db: String,
    patients: usize,
    seconds: u64,
    clients: usize,
    /// Keep the database after the run (to study its plans), and say where it is.
    keep: bool,
}

fn args() -> Args {
    let f = common::Flags::parse();
    Args {
        db: f.text("db", "sqlite"),
        patients: f.num("patients", 1000),
        seconds: f.num("seconds", 5),
        clients: f.num("clients", 16),
        keep: f.on("keep"),
    }
}

/// Patient `n`'s citizen ID: a province, the century-and-sex digit and the birth year that
/// agree with the generated gender and birth date (the server checks them), and `n` itself.
fn cccd(n: usize) -> String {
    format!(
        "0{:02}{}{:02}{:06}",
        1 + n % 96,
        n % 2,
        (30 + n % 70) % 100,
        n % 1_000_000
    )
}

/// One patient's record as a transaction of `size` entries.
fn record(n: usize, size: usize, rng: &mut Rng) -> Value {
    let pid = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let patient = json!({"resourceType": "Patient",
        "identifier": [{"system": CCCD, "value": cccd(n)}],
        "name": [{"family": FAMILIES[n % 16], "given": [GIVEN[n % 12], GIVEN[(n / 12) % 12]]}],
        "gender": if n.is_multiple_of(2) { "male" } else { "female" },
        "birthDate": format!("19{:02}-{:02}-{:02}", 30 + n % 70, 1 + n % 12, 1 + n % 28),
        "address": [{"city": CITIES[n % 6], "country": "VN"}]});
    let mut entries = vec![
        json!({"fullUrl": pid, "resource": patient, "request": {"method": "POST", "url": "Patient"}}),
    ];
    let mut enc = pid.clone();
    while entries.len() < size {
        let i = entries.len();
        let full = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let day = format!(
            "20{:02}-{:02}-{:02}",
            20 + i % 6,
            1 + (i / 7) % 12,
            1 + i % 28
        );
        let when = format!("{day}T{:02}:{:02}:00+07:00", 7 + i % 10, i % 60);
        let subject = json!({"reference": pid});
        let resource = match i % 100 {
            0..=4 => {
                enc = full.clone();
                json!({"resourceType": "Encounter", "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": subject, "period": {"start": when, "end": format!("{day}T18:00:00+07:00")}})
            }
            5..=6 => json!({"resourceType": "Condition",
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": ICD10[(n + i) % 8]}]},
                "subject": subject, "encounter": {"reference": enc}, "recordedDate": day}),
            7..=18 => {
                json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "C08CA01"}], "text": "Amlodipin 5mg"},
                "subject": subject, "encounter": {"reference": enc}, "authoredOn": day,
                "dosageInstruction": [{"text": "1 viên/ngày"}]})
            }
            19..=22 => json!({"resourceType": "Procedure", "status": "completed",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "71388002"}]},
                "subject": subject, "encounter": {"reference": enc}, "performedDateTime": when}),
            23..=27 => json!({"resourceType": "DiagnosticReport", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8"}]},
                "subject": subject, "encounter": {"reference": enc}, "effectiveDateTime": when, "issued": format!("{day}T19:00:00+07:00")}),
            28..=29 => json!({"resourceType": "Immunization", "status": "completed",
                "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "207"}]},
                "patient": subject, "occurrenceDateTime": when}),
            _ => {
                let (code, unit, base, spread) = VITALS[i % 5];
                json!({"resourceType": "Observation", "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "subject": subject, "encounter": {"reference": enc}, "effectiveDateTime": when,
                    "valueQuantity": {"value": base + rng.below(spread) as u64, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
            }
        };
        let ty = resource["resourceType"]
            .as_str()
            .unwrap_or("Basic")
            .to_string();
        entries.push(json!({"fullUrl": full, "resource": resource, "request": {"method": "POST", "url": ty}}));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// A query value percent-encoded (a request line is ASCII).
fn encode(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// One request's latency, `n` times in a row on one connection (for the slow single queries).
async fn repeat(conn: &mut Conn, path: &str, n: usize) -> (f64, f64, usize) {
    let mut lat = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        let (s, body) = conn.call("GET", path, None).await;
        assert_eq!(s, 200, "{path}: {}", String::from_utf8_lossy(&body));
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = body.len();
    }
    lat.sort_by(f64::total_cmp);
    (lat[lat.len() / 2], lat[lat.len() - 1], bytes)
}

fn main() {
    let a = args();
    let postgres = a.db.starts_with("postgres");
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = std::env::var("YBA_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let server_url = if postgres {
        let mut c = diesel::PgConnection::establish(&pg).expect("PostgreSQL reachable");
        diesel::sql_query(format!("CREATE SCHEMA {schema}"))
            .execute(&mut c)
            .expect("schema");
        format!("{pg}?options=-csearch_path%3D{schema}")
    } else {
        format!("sqlite://{}", dir.path().join("yba.db").display())
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
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
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        for _ in 0..200 {
            if TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Ingest: one bundle per patient, 4 clients; patient 0 has 1,000 resources.
        let mut rng = Rng(7);
        let bundles: Vec<(usize, Vec<u8>)> = (0..a.patients)
            .map(|n| {
                let size = if n == 0 { 1000 } else { 450 + rng.below(101) };
                (size, record(n, size, &mut rng).to_string().into_bytes())
            })
            .collect();
        let total: usize = bundles.iter().map(|b| b.0).sum();
        let bundles = Rc::new(bundles);
        let ids = Rc::new(std::cell::RefCell::new(vec![String::new(); a.patients]));
        let next = Rc::new(std::cell::Cell::new(0usize));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (bundles, ids, next, addr) = (bundles.clone(), ids.clone(), next.clone(), addr.clone());
            tasks.push(tokio::task::spawn_local(async move {
                let mut conn = Conn::open(&addr).await;
                loop {
                    let i = next.get();
                    if i >= bundles.len() {
                        break;
                    }
                    next.set(i + 1);
                    let (s, body) = conn.call("POST", "/fhir", Some(&bundles[i].1)).await;
                    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
                    let v: Value = serde_json::from_slice(&body).expect("response bundle");
                    let loc = v["entry"][0]["response"]["location"].as_str().unwrap_or("");
                    ids.borrow_mut()[i] = loc.split('/').nth(1).unwrap_or("").to_string();
                }
            }));
        }
        for t in tasks {
            t.await.expect("ingest task");
        }
        let ingest_secs = start.elapsed().as_secs_f64();
        let ids: Rc<Vec<String>> = Rc::new(ids.borrow().clone());
        println!("\n## {} — {} patients, {} resources", if postgres { "PostgreSQL" } else { "SQLite" }, a.patients, total);
        println!("ingest with every index written (4 clients, one transaction per patient): {:.0} resources/s ({:.1} s)", total as f64 / ingest_secs, ingest_secs);
        if postgres {
            // What autovacuum does after a bulk load (it is off on some machines, this one's
            // included): statistics for the planner, and the visibility map that lets index
            // scans skip the table.
            let t = Instant::now();
            let mut c = diesel::PgConnection::establish(&pg).expect("PostgreSQL reachable");
            let tables = ["resource_version", "ix_token", "ix_string", "ix_reference", "ix_date", "ix_number", "ix_quantity", "ix_uri", "ix_composite"];
            let list: Vec<String> = tables.iter().map(|t| format!("{schema}.{t}")).collect();
            diesel::sql_query(format!("VACUUM ANALYZE {}", list.join(", "))).execute(&mut c).expect("vacuum analyze");
            // And a checkpoint, so that writing back the load does not land in the middle of
            // the searches.
            diesel::sql_query("CHECKPOINT").execute(&mut c).expect("checkpoint");
            println!("VACUUM ANALYZE and CHECKPOINT after the load (as autovacuum and the checkpointer would): {:.1} s", t.elapsed().as_secs_f64());
        }

        type Make = Rc<dyn Fn(&mut Rng) -> String>;
        let n = a.patients;
        let pick = move |rng: &mut Rng| rng.below(n);
        let mixes: Vec<(&str, &str, Make)> = vec![
            ("token", "Patient?identifier=<cccd>", Rc::new(move |r| format!("/fhir/Patient?identifier={CCCD}|{}", cccd(pick(r))))),
            ("token", "Condition?code=icd-10|<code>&_count=20", Rc::new(move |r| format!("/fhir/Condition?code=http://hl7.org/fhir/sid/icd-10|{}&_count=20", ICD10[r.below(8)]))),
            ("date", "Patient?birthdate=<day>", Rc::new(move |r| { let k = pick(r); format!("/fhir/Patient?birthdate=19{:02}-{:02}-{:02}", 30 + k % 70, 1 + k % 12, 1 + k % 28) })),
                        // A day on which encounters took place: one per patient (every record's encounters
            // fall on the same days), so the first page of 20 is cut from about 1,000 matches.
            ("date", "Encounter?date=ge<d>&date=lt<d+1>&_count=20 (≈1,000 matches)", Rc::new(move |r| {
                let i = 100 * (1 + r.below(4)) + r.below(5);
                let day = |i: usize, plus: usize| format!("20{:02}-{:02}-{:02}", 20 + i % 6, 1 + (i / 7) % 12, 1 + i % 28 + plus);
                format!("/fhir/Encounter?date=ge{}&date=lt{}&_count=20", day(i, 0), day(i, 1))
            })),
            ("reference", "Observation?subject=Patient/<id>&_count=50", { let ids = ids.clone(); Rc::new(move |r| format!("/fhir/Observation?subject=Patient/{}&_count=50", ids[pick(r)])) }),
            ("string", "Patient?family=<family>&given=<given>", Rc::new(move |r| format!("/fhir/Patient?family={}&given={}", encode(FAMILIES[r.below(16)]), encode(GIVEN[r.below(12)])))),
            ("quantity", "Observation?subject=<id>&value-quantity=gt150", { let ids = ids.clone(); Rc::new(move |r| format!("/fhir/Observation?subject=Patient/{}&value-quantity=gt150", ids[pick(r)])) }),
            ("composite", "Observation?subject=<id>&code-value-quantity=loinc|8480-6$gt160", { let ids = ids.clone(); Rc::new(move |r| format!("/fhir/Observation?subject=Patient/{}&code-value-quantity=http://loinc.org|8480-6$gt160", ids[pick(r)])) }),
            ("chained", "Observation?subject:Patient.identifier=<cccd>&code=loinc|8480-6", Rc::new(move |r| format!("/fhir/Observation?subject:Patient.identifier={CCCD}|{}&code=http://loinc.org|8480-6&_count=20", cccd(pick(r))))),
            ("_include", "MedicationRequest?subject=<id>&_include=MedicationRequest:subject", { let ids = ids.clone(); Rc::new(move |r| format!("/fhir/MedicationRequest?subject=Patient/{}&_include=MedicationRequest:subject&_count=20", ids[pick(r)])) }),
        ];
        println!("\n{} clients, {} s each", a.clients, a.seconds);
        println!("| kind | search | req/s | p50 ms | p99 ms | errors |");
        println!("|---|---|---:|---:|---:|---:|");
        for (kind, label, make) in mixes {
            let make = make.clone();
            let mut s = run(label, &addr, a.clients, a.seconds, move |_, rng| ("GET", make(rng), None, 200)).await;
            let (p50, p99) = (s.pct(0.5), s.pct(0.99));
            println!("| {kind} | `{label}` | {:.0} | {p50:.2} | {p99:.2} | {} |", s.rate(), s.errors);
        }
        let mut conn = Conn::open(&addr).await;
        let (p50, max, bytes) = repeat(&mut conn, &format!("/fhir/Patient/{}/$everything?_count=1000", ids[0]), 20).await;
        println!("\n`Patient/<id>/$everything?_count=1000` (1,000 resources, {} kB), 20 runs: p50 {p50:.1} ms, max {max:.1} ms", bytes / 1024);
        let (p50, max, _) = repeat(&mut conn, "/fhir/Observation?_summary=count", 10).await;
        println!("`Observation?_summary=count` (every observation counted), 10 runs: p50 {p50:.1} ms, max {max:.1} ms");
        let (p50, max, _) = repeat(&mut conn, "/fhir/Observation?status=final&_total=accurate&_count=10", 10).await;
        println!("`Observation?status=final&_total=accurate&_count=10`, 10 runs: p50 {p50:.1} ms, max {max:.1} ms");
        println!(
            "server after the run: RSS {:.1} MB, of which its own (anonymous) memory {:.1} MB",
            rss_kb(server.id()) as f64 / 1024.0,
            anon_kb(server.id()) as f64 / 1024.0
        );
    });
    let _ = server.kill();
    let _ = server.wait();
    if a.keep {
        if postgres {
            println!("kept: schema {schema} in {pg}");
        } else {
            println!("kept: {}", dir.keep().join("yba.db").display());
        }
        return;
    }
    if postgres && let Ok(mut c) = diesel::PgConnection::establish(&pg) {
        let _ = diesel::sql_query(format!("DROP SCHEMA {schema} CASCADE")).execute(&mut c);
    }
}
