//! What sign-in, the access policy and the audit trail cost: the same reads, searches and
//! writes against the real `yba` binary with auth off, then with auth on as shipped (a hospital
//! system's token and a patient's token), the rate at which tokens are issued, and how far the
//! audit trail lags behind the requests it records.
//!
//!     cargo bench --bench auth -- --db sqlite|postgres [--seconds 10] [--clients 32]

mod common;

use std::time::{Duration, Instant};

use common::{Conn, Stats, anon_kb, rss_kb, run_as};

use diesel::{Connection, RunQueryDsl};
use serde_json::{Value, json};
use tokio::net::TcpStream;

const ORG: &str = "Organization/bench-hospital";
const PASSWORD: &str = "bench password of a patient";

struct Args {
    db: String,
    seconds: u64,
    clients: usize,
    patients: usize,
}

fn args() -> Args {
    let f = common::Flags::parse();
    Args {
        db: f.text("db", "sqlite"),
        seconds: f.num("seconds", 10),
        clients: f.num("clients", 32),
        patients: f.num("patients", 500),
    }
}

fn patient(n: u64) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "http://fhir.ehealth.gov.vn/core/sid/citizen_id", "value": format!("0010{:02}{:06}", 40 + n / 1_000_000 % 60, n % 1_000_000)}],
        "name": [{"family": "Trần", "given": [format!("Bình{n}")]}],
        "gender": "male",
        "birthDate": format!("19{:02}-03-0{}", 40 + n / 1_000_000 % 60, 1 + n % 9),
        "managingOrganization": {"reference": ORG}
    })
}

fn observation(patient: &str, v: usize) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": "2026-11-20T08:00:00+07:00",
        "valueQuantity": {"value": 60 + v % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})
}

fn cli(url: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_yba"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("YBA_PASSWORD", PASSWORD)
        .env("RUST_LOG", "warn")
        .output()
        .expect("yba runs");
    assert!(
        out.status.success(),
        "yba {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn token(conn: &mut Conn, form: &[(&str, &str)]) -> String {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let (s, b) = conn
        .send(
            "POST",
            "/auth/token",
            "application/x-www-form-urlencoded",
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let v: Value = serde_json::from_slice(&b).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// AuditEvents stored so far, straight from the database.
fn audit_count(url: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c = yba::store::Db::establish(url).expect("database reachable");
    diesel::sql_query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM resource_version WHERE res_type = 'AuditEvent'",
    )
    .get_result::<N>(&mut c)
    .map(|r| r.n)
    .unwrap_or(-1)
}

struct Run {
    results: Vec<Stats>,
    requests: usize,
    audit_at_end: i64,
    audit_lag: Duration,
    audit_final: i64,
    idle_rss: u64,
    busy_rss: u64,
    busy_anon: u64,
}

/// One server, seeded, then every phase. `auth` selects the shipped configuration.
fn one_server(a: &Args, auth: bool, server_url: &str) -> Run {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    // Migrate and register the hospital system's client before the server starts.
    let _ = cli(server_url, &["migrate"]);
    let secret = if auth {
        let out = cli(
            server_url,
            &[
                "client",
                "create",
                "--client-id",
                "bench-his",
                "--name",
                "Bench HIS",
                "--organization",
                ORG,
            ],
        );
        out.lines().last().unwrap_or("").trim().to_string()
    } else {
        String::new()
    };
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_yba"))
        .arg("serve")
        .env("DATABASE_URL", server_url)
        .env("YBA_BIND", &addr)
        .env("YBA_AUTH", if auth { "on" } else { "off" })
        .env(
            "YBA_TOKEN_KEYS",
            "bench:YmVuY2gta2V5LW9mLWF0LWxlYXN0LTMyLWJ5dGVzLWxvbmctLS0tLS0=",
        )
        .env("YBA_ACCESS_TOKEN_TTL", "3600")
        // One token drives all the load here: the per-caller limit would measure itself.
        .env("YBA_RATE_LIMIT", "0")
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("yba starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let run = local.block_on(&rt, async {
        for _ in 0..200 {
            if TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle_rss = rss_kb(server.id());
        let mut conn = Conn::open(&addr).await;
        let system = if auth {
            let t = token(
                &mut conn,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", "bench-his"),
                    ("client_secret", &secret),
                    ("scope", "system/*.cruds"),
                ],
            )
            .await;
            conn.bearer(&t);
            Some(t)
        } else {
            None
        };
        // The hospital's patients, a few observations each.
        let mut ids = Vec::new();
        for i in 0..a.patients as u64 {
            let (s, body) = conn
                .call(
                    "POST",
                    "/fhir/Patient",
                    Some(patient(i).to_string().as_bytes()),
                )
                .await;
            assert_eq!(s, 201, "{}", String::from_utf8_lossy(&body));
            let v: Value = serde_json::from_slice(&body).unwrap();
            let id = v["id"].as_str().unwrap().to_string();
            for k in 0..5 {
                let (s, body) = conn
                    .call(
                        "POST",
                        "/fhir/Observation",
                        Some(observation(&id, k).to_string().as_bytes()),
                    )
                    .await;
                assert_eq!(s, 201, "{}", String::from_utf8_lossy(&body));
            }
            ids.push(id);
        }
        // One of them signs in as a patient.
        let me = ids[0].clone();
        let patient_token = if auth {
            let cccd = patient(0)["identifier"][0]["value"]
                .as_str()
                .unwrap()
                .to_string();
            let fhir_user = format!("Patient/{me}");
            let _ = cli(
                server_url,
                &[
                    "user",
                    "create",
                    "--username",
                    &cccd,
                    "--role",
                    "patient",
                    "--fhir-user",
                    &fhir_user,
                ],
            );
            let mut c = Conn::open(&addr).await;
            Some(
                token(
                    &mut c,
                    &[
                        ("grant_type", "password"),
                        ("username", &cccd),
                        ("password", PASSWORD),
                        ("scope", "patient/*.rs"),
                    ],
                )
                .await,
            )
        } else {
            None
        };
        let ids = std::rc::Rc::new(ids);
        let who = if auth { "hospital system" } else { "auth off" };
        let (secs, clients) = (a.seconds, a.clients);
        let sys = system.as_deref();
        let mut results = Vec::new();
        let read_ids = ids.clone();
        results.push(
            run_as(
                &format!("read Patient/id ({who})"),
                &addr,
                sys,
                clients,
                secs,
                move |_, rng| {
                    (
                        "GET",
                        format!("/fhir/Patient/{}", read_ids[rng.below(read_ids.len())]),
                        None,
                        200,
                    )
                },
            )
            .await,
        );
        let search_ids = ids.clone();
        results.push(
            run_as(
                &format!("search Observation?patient= (5 hits, {who})"),
                &addr,
                sys,
                clients,
                secs,
                move |_, rng| {
                    (
                        "GET",
                        format!(
                            "/fhir/Observation?patient={}",
                            search_ids[rng.below(search_ids.len())]
                        ),
                        None,
                        200,
                    )
                },
            )
            .await,
        );
        let write_ids = ids.clone();
        results.push(
            run_as(
                &format!("create Observation ({who})"),
                &addr,
                sys,
                clients,
                secs,
                move |_, rng| {
                    let i = rng.below(write_ids.len());
                    (
                        "POST",
                        "/fhir/Observation".into(),
                        Some(observation(&write_ids[i], i).to_string().into_bytes()),
                        201,
                    )
                },
            )
            .await,
        );
        let me_read = me.clone();
        let pat = patient_token.as_deref().or(sys);
        let pwho = if auth {
            "patient, own record"
        } else {
            "auth off"
        };
        results.push(
            run_as(
                &format!("read own Patient ({pwho})"),
                &addr,
                pat,
                clients,
                secs,
                move |_, _| ("GET", format!("/fhir/Patient/{me_read}"), None, 200),
            )
            .await,
        );
        let path = if auth {
            "/fhir/Observation".to_string()
        } else {
            format!("/fhir/Observation?patient={me}")
        };
        results.push(
            run_as(
                &format!("search own Observations ({pwho})"),
                &addr,
                pat,
                clients,
                secs,
                move |_, _| ("GET", path.clone(), None, 200),
            )
            .await,
        );
        if auth {
            // Token issue: the client's secret is an argon2id hash, so each grant costs one.
            let body: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("grant_type", "client_credentials"),
                    ("client_id", "bench-his"),
                    ("client_secret", secret.as_str()),
                    ("scope", "system/*.rs"),
                ])
                .finish();
            let start = Instant::now();
            let deadline = start + Duration::from_secs(secs.min(5));
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let (addr, body) = (addr.clone(), body.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    let mut c = Conn::open(&addr).await;
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let (s, _) = c
                            .send(
                                "POST",
                                "/auth/token",
                                "application/x-www-form-urlencoded",
                                Some(body.as_bytes()),
                            )
                            .await;
                        assert_eq!(s, 200);
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    lat
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await.unwrap());
            }
            results.push(Stats {
                label: "token (client_credentials, secret), 4 clients".into(),
                n: lat.len(),
                errors: 0,
                elapsed: start.elapsed(),
                lat_us: lat,
            });
        }
        let requests: usize = results.iter().map(|s| s.n).sum();
        let audit_at_end = audit_count(server_url);
        let busy_rss = rss_kb(server.id());
        let busy_anon = anon_kb(server.id());
        // `YBA_BENCH_HOLD=<seconds>`: keep the server up that long after the run, to inspect
        // its memory (`gdb -p <pid>`, `heaptrack -p <pid>`).
        if let Some(hold) = std::env::var("YBA_BENCH_HOLD")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            eprintln!("holding server pid {} for {hold} s", server.id());
            tokio::time::sleep(Duration::from_secs(hold)).await;
        }
        // How long until the trail has caught up with everything asked of the server.
        let waited = Instant::now();
        let mut audit_final = audit_at_end;
        if auth {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let n = audit_count(server_url);
                if n == audit_final && n > 0 {
                    break;
                }
                audit_final = n;
                if waited.elapsed() > Duration::from_secs(600) {
                    break;
                }
            }
        }
        Run {
            results,
            requests,
            audit_at_end,
            audit_lag: waited.elapsed().saturating_sub(Duration::from_millis(200)),
            audit_final,
            idle_rss,
            busy_rss,
            busy_anon,
        }
    });
    let _ = server.kill();
    let _ = server.wait();
    run
}

fn main() {
    let a = args();
    let postgres = a.db.starts_with("postgres");
    let dir = tempfile::tempdir().unwrap();
    let pg = std::env::var("YBA_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schemas = [
        format!("bench_{}", uuid::Uuid::new_v4().simple()),
        format!("bench_{}", uuid::Uuid::new_v4().simple()),
    ];
    let url = |i: usize| {
        if postgres {
            let mut c = diesel::PgConnection::establish(&pg).expect("PostgreSQL reachable");
            diesel::sql_query(format!("CREATE SCHEMA {}", schemas[i]))
                .execute(&mut c)
                .unwrap();
            format!("{pg}?options=-csearch_path%3D{}", schemas[i])
        } else {
            format!(
                "sqlite://{}",
                dir.path().join(format!("yba{i}.db")).display()
            )
        }
    };
    let off = one_server(&a, false, &url(0));
    let on = one_server(&a, true, &url(1));
    println!(
        "\n## {} — {} s per phase, {} clients, {} patients × 5 observations",
        if postgres { "PostgreSQL" } else { "SQLite" },
        a.seconds,
        a.clients,
        a.patients
    );
    println!("| interaction | requests | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in [&off, &on] {
        for s in &r.results {
            let mut s = Stats {
                label: s.label.clone(),
                n: s.n,
                errors: s.errors,
                elapsed: s.elapsed,
                lat_us: s.lat_us.clone(),
            };
            let (p50, p99) = (s.pct(0.50), s.pct(0.99));
            println!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {} |",
                s.label,
                s.n,
                s.rate(),
                p50,
                p99,
                s.errors
            );
        }
    }
    println!();
    println!(
        "auth on: {} requests measured; AuditEvents stored when the last phase ended: {}; {:.1} s later the trail stopped growing at {} (seeding and sign-in add their own events)",
        on.requests,
        on.audit_at_end,
        on.audit_lag.as_secs_f64(),
        on.audit_final
    );
    println!(
        "server RSS: auth off idle {:.1} MB, after {:.1} MB (own memory {:.1} MB); auth on idle {:.1} MB, after {:.1} MB (own memory {:.1} MB)",
        off.idle_rss as f64 / 1024.0,
        off.busy_rss as f64 / 1024.0,
        off.busy_anon as f64 / 1024.0,
        on.idle_rss as f64 / 1024.0,
        on.busy_rss as f64 / 1024.0,
        on.busy_anon as f64 / 1024.0
    );
    if postgres && let Ok(mut c) = diesel::PgConnection::establish(&pg) {
        for s in &schemas {
            let _ = diesel::sql_query(format!("DROP SCHEMA {s} CASCADE")).execute(&mut c);
        }
    }
}
