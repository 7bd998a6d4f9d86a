//! A commune node (SQLite) and its central server (PostgreSQL, and SQLite) in one test, with a
//! link between them the test can cut: a day's records made offline reach the central server
//! once and only once, the station sees what the hospital wrote meanwhile, a record changed on
//! both sides is a visible conflict with both versions kept, a citizen registered on both sides
//! ends as one record, and a sync killed half-way resumes without loss or duplication.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::helpers::{Resp, TestApp, patient, spawn_sqlite_with};

const SECRET: &str = "the-station-client-secret-of-tram-a-long";
const CLIENT: &str = "tram-a-sync";
const CCCD_SYSTEM: &str = "http://fhir.ehealth.gov.vn/core/sid/citizen_id";

/// The link between node and central: a TCP proxy that can be cut (open connections are
/// dropped, new ones refused) and restored, and slowed to `rate` bytes a second each way.
struct Link {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    /// Bytes a second each way (0: unlimited).
    rate: Arc<AtomicU64>,
}

impl Link {
    async fn start(target: SocketAddr) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let rate = Arc::new(AtomicU64::new(0));
        let (generation, watcher) = watch::channel(0u64);
        let (u, r) = (up.clone(), rate.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    drop(conn);
                    continue;
                }
                let mut cut = watcher.clone();
                cut.mark_unchanged();
                let rate = r.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = conn.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pipe(cr, sw, rate.clone()) => {}
                        _ = pipe(sr, cw, rate) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Link {
            addr,
            up,
            generation,
            rate,
        }
    }

    fn base(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let r = rate.load(Ordering::Relaxed);
        if r > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / r as f64)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The central server's directory, its station client, and a patient of the station's with
/// two observations (as the hospital registered them before the station's node came).
async fn seed_central(central: &TestApp) {
    use yba::auth::service::{self, NewClient};
    let store = central.store.clone().expect("in-process server");
    let fhir = yba::fhir::Fhir::new(store.clone(), Default::default());
    for (id, name) in [("tram-a", "Trạm Y tế xã A"), ("bv-tinh", "Bệnh viện tỉnh")] {
        fhir.update(
            "Organization",
            id.into(),
            json!({"resourceType": "Organization", "id": id, "name": name}),
            None,
        )
        .await
        .expect("seeded");
    }
    let mut p1 = patient("001090000701");
    p1["id"] = json!("p1");
    p1["managingOrganization"] = json!({"reference": "Organization/tram-a"});
    fhir.update("Patient", "p1".into(), p1, None)
        .await
        .expect("seeded");
    for id in ["o1", "o2"] {
        fhir.update(
            "Observation",
            id.into(),
            observation(id, "Patient/p1", 70.0),
            None,
        )
        .await
        .expect("seeded");
    }
    service::create_client(
        &store,
        NewClient {
            client_id: CLIENT.into(),
            name: "Trạm Y tế xã A (node)".into(),
            organization: "Organization/tram-a".into(),
            scopes: "system/*.cruds".into(),
            secret: Some(SECRET.into()),
            public_key: None,
        },
    )
    .await
    .expect("client created");
}

fn observation(id: &str, subject: &str, value: f64) -> Value {
    json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

/// The station's node, on SQLite, open to the test (its own sign-in is tested elsewhere), its
/// rounds run by the test.
async fn start_node(link: &Link) -> TestApp {
    let base = link.base();
    spawn_sqlite_with(move |c| {
        c.auth = false;
        c.upstream = Some(base);
        c.upstream_client_id = Some(CLIENT.into());
        c.upstream_client_secret = Some(yba::config::Secret(SECRET.into()));
        c.sync_interval_ms = 3_600_000;
    })
    .await
}

/// One round on the node, by its API.
async fn round(node: &TestApp) -> Value {
    let r = node.send(node.request(Method::POST, "/api/sync/run")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

async fn status(node: &TestApp) -> Value {
    let r = node.get("/api/sync/status").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The station's client's token at central.
async fn station_token(central: &TestApp) -> String {
    let r = central
        .send(
            central
                .request(Method::POST, "/auth/token")
                .basic_auth(CLIENT, Some(SECRET))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials&scope=system%2F*.cruds"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["access_token"].as_str().unwrap().to_string()
}

/// A GET at central (`path` under its FHIR base) as the station's client.
async fn as_station(central: &TestApp, token: &str, path: &str) -> Resp {
    central
        .send(central.request(Method::GET, path).bearer_auth(token))
        .await
}

/// A resource without what each server stamps on it.
fn content(mut v: Value) -> Value {
    if let Some(m) = v.get_mut("meta").and_then(Value::as_object_mut) {
        m.remove("versionId");
        m.remove("lastUpdated");
        if m.is_empty() {
            v.as_object_mut().unwrap().remove("meta");
        }
    }
    v
}

/// Every (type, id) → content a search lists, following `next` links.
async fn all(app: &TestApp, token: Option<&str>, path: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut url = format!("{}/{path}", app.base);
    loop {
        let mut req = app.client.get(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = app.send(req).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let b = r.json();
        for e in b["entry"].as_array().into_iter().flatten() {
            let Some(res) = e.get("resource").cloned() else {
                continue; // a deletion in a history
            };
            let key = format!(
                "{}/{}",
                res["resourceType"].as_str().unwrap(),
                res["id"].as_str().unwrap()
            );
            out.push((key, content(res)));
        }
        match b["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        {
            Some(n) => url = n["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

async fn a_day_offline_reaches_central_once_and_the_station_sees_the_hospital(central: TestApp) {
    seed_central(&central).await;
    let link = Link::start(central.addr).await;
    let node = start_node(&link).await;

    // First contact: the station's patient comes down with its record and the directory.
    // (The node's own loop runs a round as it starts: this one may find nothing new.)
    let r = round(&node).await;
    assert_eq!(r["ok"], true, "{r}");
    for path in [
        "Patient/p1",
        "Observation/o1",
        "Observation/o2",
        "Organization/tram-a",
    ] {
        assert_eq!(node.get(path).await.status, 200, "{path}");
    }
    let st = status(&node).await;
    assert_eq!(st["online"], true, "{st}");
    assert_eq!(st["queue"], 0, "{st}");

    // The link goes down; the station works on.
    link.cut();
    let mut n1 = patient("001090000702");
    n1["managingOrganization"] = json!({"reference": "Organization/tram-a"});
    let n1 = node.create(&n1).await;
    let n1_id = n1["id"].as_str().unwrap().to_string();
    assert!(
        uuid::Uuid::parse_str(&n1_id).is_ok(),
        "node ids are UUIDs: {n1_id}"
    );
    let e1 = node
        .create(&json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{n1_id}")},
            "serviceProvider": {"reference": "Organization/tram-a"}}))
        .await;
    let mut made = vec![
        format!("Patient/{n1_id}"),
        format!("Encounter/{}", e1["id"].as_str().unwrap()),
    ];
    for (i, subject) in [
        &format!("Patient/{n1_id}"),
        &format!("Patient/{n1_id}"),
        &format!("Patient/{n1_id}"),
        &"Patient/p1".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let mut o = observation("x", subject, 80.0 + i as f64);
        o.as_object_mut().unwrap().remove("id");
        let o = node.create(&o).await;
        made.push(format!("Observation/{}", o["id"].as_str().unwrap()));
    }
    // The station corrects p1's phone while the hospital changes p1's address.
    let mut p1_here = node.get("Patient/p1").await.json();
    p1_here["telecom"] = json!([{"system": "phone", "value": "0912000001"}]);
    let r = node.put_json("Patient/p1", &p1_here).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // And deletes a mistaken observation the hospital made.
    assert_eq!(node.delete("Observation/o1").await.status, 204);
    let node_version = r.json()["meta"]["versionId"].as_str().unwrap().to_string();

    let r = round(&node).await;
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("cannot be reached"),
        "{r}"
    );
    let st = status(&node).await;
    assert_eq!(st["online"], false, "{st}");
    assert_eq!(st["queue"], 8, "6 records made, 1 changed, 1 deleted: {st}");

    // Meanwhile at the hospital.
    let store = central.store.clone().unwrap();
    let hospital = yba::fhir::Fhir::new(store, Default::default());
    let mut p1_there = hospital.read("Patient", "p1".into()).await.unwrap();
    let mut p1v: Value = serde_json::from_str(&p1_there.body).unwrap();
    p1v["address"] = json!([{"city": "Hà Nội"}]);
    p1_there = hospital
        .update("Patient", "p1".into(), p1v, None)
        .await
        .unwrap()
        .stored;
    hospital
        .update(
            "Observation",
            "o3".into(),
            observation("o3", "Patient/p1", 90.0),
            None,
        )
        .await
        .unwrap();
    hospital.delete("Observation", "o2".into()).await.unwrap();

    // The link is back.
    link.restore();
    let r = round(&node).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["pushed"], 7, "{r}");
    assert_eq!(r["conflicts"], 1, "{r}");

    // Central has all of it, once, as the station wrote it.
    let token = station_token(&central).await;
    for key in &made {
        let here = content(node.get(key).await.json());
        let there = as_station(&central, &token, key).await;
        assert_eq!(there.status, 200, "{key}: {}", there.body);
        assert_eq!(content(there.json()), here, "{key}");
    }
    let by_cccd = as_station(
        &central,
        &token,
        &format!("Patient?identifier={CCCD_SYSTEM}|001090000702&_summary=count"),
    )
    .await;
    assert_eq!(by_cccd.json()["total"], 1, "{}", by_cccd.body);

    // The station's deletion is upstream too.
    let o1 = as_station(&central, &token, "Observation/o1").await;
    assert_eq!(o1.status, 410, "{}", o1.body);
    // The station sees what the hospital wrote: the new observation, the deletion.
    assert_eq!(node.get("Observation/o3").await.status, 200);
    assert_eq!(node.get("Observation/o2").await.status, 410);
    // p1 was changed on both sides: the hospital's version is current on both, the station's
    // is kept and listed.
    let p1_node = node.get("Patient/p1").await.json();
    assert_eq!(
        content(p1_node.clone()),
        content(serde_json::from_str(&p1_there.body).unwrap())
    );
    assert!(p1_node.get("telecom").is_none(), "{p1_node}");
    let st = status(&node).await;
    assert_eq!(st["openConflicts"], 1, "{st}");
    assert_eq!(st["queue"], 0, "{st}");
    let c = &st["conflicts"][0];
    assert_eq!(c["resource"], "Patient/p1", "{st}");
    assert_eq!(c["kind"], "both-changed", "{st}");
    let kept = node.get(c["nodeVersion"].as_str().unwrap()).await;
    assert_eq!(kept.status, 200, "{}", kept.body);
    assert_eq!(kept.json()["meta"]["versionId"], node_version.as_str());
    assert_eq!(kept.json()["telecom"][0]["value"], "0912000001");

    // Nothing is sent twice: another round moves nothing and writes nothing.
    let r = round(&node).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        (
            r["pushed"].as_u64(),
            r["pulled"].as_u64(),
            r["conflicts"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{r}"
    );

    // Both sides hold the same records with the same content.
    for ty in ["Patient", "Encounter", "Observation"] {
        let here = all(&node, None, &format!("{ty}?_count=100")).await;
        let there = all(&central, Some(&token), &format!("{ty}?_count=100")).await;
        assert_eq!(here, there, "{ty}");
    }
    // One version for each record the station made (a re-sent push makes none).
    let h = as_station(
        &central,
        &token,
        &format!(
            "Observation/{}/_history",
            made[2].split('/').nth(1).unwrap()
        ),
    )
    .await;
    assert_eq!(h.json()["total"], 1, "{}", h.body);

    // The station reviews the conflict.
    let id = c["id"].as_i64().unwrap();
    let r = node
        .send(node.request(Method::POST, &format!("/api/sync/conflicts/{id}/resolve")))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(status(&node).await["openConflicts"], 0);
    let r = node
        .send(node.request(Method::POST, &format!("/api/sync/conflicts/{id}/resolve")))
        .await;
    r.assert_outcome(404);
}

async fn a_citizen_registered_on_both_sides_ends_as_one_record(central: TestApp) {
    seed_central(&central).await;
    // The provincial hospital has this citizen's record; the station cannot see it yet.
    let store = central.store.clone().unwrap();
    let hospital = yba::fhir::Fhir::new(store, Default::default());
    let mut c = patient("001090000703");
    c["id"] = json!("c-at-hospital");
    c["managingOrganization"] = json!({"reference": "Organization/bv-tinh"});
    hospital
        .update("Patient", "c-at-hospital".into(), c, None)
        .await
        .unwrap();

    let link = Link::start(central.addr).await;
    let node = start_node(&link).await;
    link.cut();
    // Offline, the station registers the citizen anew and sees them.
    let mut l = patient("001090000703");
    l["managingOrganization"] = json!({"reference": "Organization/tram-a"});
    let l = node.create(&l).await;
    let l_id = l["id"].as_str().unwrap().to_string();
    let e = node
        .create(&json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{l_id}")},
            "serviceProvider": {"reference": "Organization/tram-a"}}))
        .await;
    let e_id = e["id"].as_str().unwrap().to_string();
    link.restore();
    let r = round(&node).await;
    assert_eq!(r["ok"], true, "{r}");

    // One record of the citizen upstream; the encounter is about it.
    let token = station_token(&central).await;
    let n = as_station(
        &central,
        &token,
        &format!("Patient?identifier={CCCD_SYSTEM}|001090000703&_summary=count"),
    )
    .await;
    assert_eq!(n.json()["total"], 1, "{}", n.body);
    let enc = as_station(&central, &token, &format!("Encounter/{e_id}")).await;
    assert_eq!(enc.status, 200, "{}", enc.body);
    assert_eq!(enc.json()["subject"]["reference"], "Patient/c-at-hospital");
    // At the node too: the station's encounter points at the hospital's record, which the
    // station now holds; its own registration is gone and listed.
    assert_eq!(
        node.get(&format!("Encounter/{e_id}")).await.json()["subject"]["reference"],
        "Patient/c-at-hospital"
    );
    assert_eq!(node.get("Patient/c-at-hospital").await.status, 200);
    assert_eq!(node.get(&format!("Patient/{l_id}")).await.status, 410);
    let st = status(&node).await;
    let kinds: Vec<&str> = st["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["same-citizen"], "{st}");
    assert_eq!(st["queue"], 0, "{st}");
    // And nothing more moves.
    let r = round(&node).await;
    assert_eq!(
        (r["pushed"].as_u64(), r["conflicts"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
}

/// `yba sync --once` on the node's database, through `link`.
fn sync_command(node_db: &str, link: &Link) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_yba"));
    c.args(["sync", "--once"])
        .env("DATABASE_URL", node_db)
        .env("YBA_UPSTREAM", link.base())
        .env("YBA_UPSTREAM_CLIENT_ID", CLIENT)
        .env("YBA_UPSTREAM_CLIENT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    c
}

async fn a_sync_killed_half_way_resumes_without_loss_or_duplication(central: TestApp) {
    const N: usize = 600;
    seed_central(&central).await;
    let link = Link::start(central.addr).await;
    // The node's records, made with `yba import` into its database.
    let dir = tempfile::tempdir().unwrap();
    let node_db = format!("sqlite://{}", dir.path().join("node.db").display());
    let pid = uuid::Uuid::new_v4().to_string();
    let mut p = patient("001090000704");
    p["id"] = json!(pid);
    p["managingOrganization"] = json!({"reference": "Organization/tram-a"});
    let mut lines = vec![p.to_string()];
    for i in 0..N {
        lines.push(
            observation(
                &uuid::Uuid::new_v4().to_string(),
                &format!("Patient/{pid}"),
                i as f64,
            )
            .to_string(),
        );
    }
    let file = dir.path().join("day.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_yba"))
        .arg("import")
        .arg(&file)
        .env("DATABASE_URL", &node_db)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A slow link, and the sync killed once part of the day is up.
    link.rate.store(60_000, Ordering::Relaxed);
    let token = station_token(&central).await;
    let count = |token: String| {
        let central = &central;
        let pid = pid.clone();
        async move {
            let r = as_station(
                central,
                &token,
                &format!("Observation?subject=Patient/{pid}&_summary=count"),
            )
            .await;
            r.json()["total"].as_u64().unwrap_or(0)
        }
    };
    let mut child = sync_command(&node_db, &link).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut up = 0;
    while Instant::now() < deadline {
        up = count(token.clone()).await;
        if up > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert!(
        up > 0 && (up as usize) < N,
        "killed with {up} of {N} up: slow the link further"
    );

    // Run again, at full speed: the rest goes up, nothing twice.
    link.rate.store(0, Ordering::Relaxed);
    let out = sync_command(&node_db, &link).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(r["conflicts"], 0, "{r}");
    assert_eq!(count(token.clone()).await as usize, N);
    // Each once, at one version.
    let h = all(&central, Some(&token), "Observation/_history?_count=1000").await;
    let ours: Vec<_> = h
        .iter()
        .filter(|(_, v)| v["subject"]["reference"] == format!("Patient/{pid}"))
        .collect();
    assert_eq!(ours.len(), N, "one version of each in central's history");
    // A third round moves nothing.
    let out = sync_command(&node_db, &link).output().await.unwrap();
    let r: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(
        (r["pushed"].as_u64(), r["pulled"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
}

/// The status is the station staff's, and only a node has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_needs_sign_in_and_a_node() {
    let link = Link::start("127.0.0.1:9".parse().unwrap()).await;
    let base = link.base();
    let node = spawn_sqlite_with(move |c| {
        c.auth = true;
        c.upstream = Some(base);
        c.upstream_client_id = Some(CLIENT.into());
        c.upstream_client_secret = Some(yba::config::Secret(SECRET.into()));
    })
    .await;
    node.get("/api/sync/status").await.assert_outcome(401);
    node.send(node.request(Method::POST, "/api/sync/run"))
        .await
        .assert_outcome(401);
    let plain = spawn_sqlite_with(|_| {}).await;
    let r = plain.get("/api/sync/status").await.assert_outcome(404);
    assert!(
        r["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("YBA_UPSTREAM")
    );
}

crate::on_both_databases!(@with crate::helpers::with_auth;
    a_day_offline_reaches_central_once_and_the_station_sees_the_hospital,
    a_citizen_registered_on_both_sides_ends_as_one_record,
    a_sync_killed_half_way_resumes_without_loss_or_duplication,
);
