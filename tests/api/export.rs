//! Bulk Data `$export` (system, Patient, Group) and `$import`, through HTTP: asynchronous
//! kick-off, status polling, NDJSON files, deletion; and a patient who may export only their own
//! record.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::auth::{CCCD_A, CCCD_B, OB, PB, as_user, user_token, world};
use crate::helpers::{Resp, TestApp};

fn observation(id: &str, subject: &str, code: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": 72, "unit": "/min"}
    })
}

fn put_entry(resource: Value) -> Value {
    let url = format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    );
    json!({"resource": resource, "request": {"method": "PUT", "url": url}})
}

/// A kick-off or poll, with the caller's token when there is one.
async fn call(app: &TestApp, token: Option<&str>, method: Method, path: &str) -> Resp {
    let mut req = app
        .request(method, path)
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    app.send(req).await
}

/// Kicks an export off and waits for its manifest.
async fn export(app: &TestApp, token: Option<&str>, path: &str) -> Value {
    let r = call(app, token, Method::GET, path).await;
    assert_eq!(r.status, 202, "{path}: {}", r.body);
    let status = r
        .header("content-location")
        .expect("Content-Location")
        .to_string();
    poll(app, token, &status).await
}

async fn poll(app: &TestApp, token: Option<&str>, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let mut req = app.client.get(status);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = app.send(req).await;
        match r.status {
            200 => return r.json(),
            202 => assert!(r.header("x-progress").is_some(), "202 tells progress"),
            other => panic!("status {other}: {}", r.body),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Every output file of a manifest, downloaded: (type, resources).
async fn files(app: &TestApp, token: Option<&str>, manifest: &Value) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for o in manifest["output"].as_array().expect("output") {
        let mut req = app.client.get(o["url"].as_str().expect("url"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = app.send(req).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("application/fhir+ndjson"));
        let resources: Vec<Value> = r
            .body
            .lines()
            .map(|l| serde_json::from_str(l).expect("one resource a line"))
            .collect();
        assert_eq!(
            resources.len() as u64,
            o["count"].as_u64().unwrap(),
            "the manifest's count"
        );
        out.push((o["type"].as_str().unwrap().to_string(), resources));
    }
    out
}

fn ids(files: &[(String, Vec<Value>)], ty: &str) -> Vec<String> {
    files
        .iter()
        .filter(|(t, _)| t == ty)
        .flat_map(|(_, rs)| rs.iter())
        .map(|r| {
            assert_eq!(r["resourceType"], ty);
            r["id"].as_str().unwrap().to_string()
        })
        .collect()
}

async fn a_system_export_holds_every_resource_once(app: TestApp) {
    const N: usize = 1_250;
    let mut entries = vec![
        put_entry(json!({"resourceType": "Patient", "id": "p1", "gender": "female"})),
        put_entry(json!({"resourceType": "Patient", "id": "p2", "gender": "male"})),
        put_entry(json!({"resourceType": "Patient", "id": "p3", "gender": "male"})),
    ];
    for i in 0..N {
        let code = if i % 125 == 0 { "8480-6" } else { "8867-4" };
        let subject = format!("Patient/p{}", 1 + i % 3);
        entries.push(put_entry(observation(&format!("o{i}"), &subject, code)));
    }
    for chunk in entries.chunks(300) {
        let r = app
            .post_json(
                "",
                &json!({"resourceType": "Bundle", "type": "transaction", "entry": chunk}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = app
        .post_json(
            "Group",
            &json!({"resourceType": "Group", "type": "person", "actual": true,
                "member": [{"entity": {"reference": "Patient/p1"}}, {"entity": {"reference": "Patient/p2"}}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let group = r.json()["id"].as_str().unwrap().to_string();

    // Asynchronous only, and every parameter checked before anything starts.
    let r = app.get("$export").await;
    r.assert_outcome(400);
    for bad in [
        "$export?_type=Nonsense",
        "$export?_typeFilter=Observation%3Ffoo%3Dbar",
        "$export?_since=yesterday",
        "$export?_outputFormat=text/csv",
        "Patient/$export?_type=Organization",
    ] {
        call(&app, None, Method::GET, bad).await.assert_outcome(400);
    }

    let manifest = export(&app, None, "$export?_type=Patient,Observation").await;
    assert_eq!(manifest["requiresAccessToken"], false);
    assert!(
        manifest["request"]
            .as_str()
            .unwrap()
            .ends_with("$export?_type=Patient,Observation")
    );
    assert!(manifest["transactionTime"].is_string());
    let got = files(&app, None, &manifest).await;
    let mut patients = ids(&got, "Patient");
    patients.sort();
    assert_eq!(patients, ["p1", "p2", "p3"]);
    let observations = ids(&got, "Observation");
    assert_eq!(observations.len(), N, "every Observation");
    let unique: HashSet<&String> = observations.iter().collect();
    assert_eq!(unique.len(), N, "each once");
    assert!((0..N).all(|i| unique.contains(&format!("o{i}"))));

    // _since: what changed since then; _typeFilter: a search within a type.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut o7 = observation("o7", "Patient/p2", "8867-4");
    o7["status"] = json!("amended");
    let changed = app.put_json("Observation/o7", &o7).await.json();
    assert_eq!(
        changed["meta"]["versionId"], "2",
        "a real change: {changed}"
    );
    let since = changed["meta"]["lastUpdated"].as_str().unwrap().to_string();
    let since: String = form_urlencoded::byte_serialize(since.as_bytes()).collect();
    let m = export(
        &app,
        None,
        &format!("$export?_type=Observation&_since={since}"),
    )
    .await;
    assert_eq!(ids(&files(&app, None, &m).await, "Observation"), ["o7"]);
    let m = export(
        &app,
        None,
        "$export?_type=Observation&_typeFilter=Observation%3Fcode%3D8480-6",
    )
    .await;
    let mut filtered = ids(&files(&app, None, &m).await, "Observation");
    filtered.sort();
    let mut want: Vec<String> = (0..N).step_by(125).map(|i| format!("o{i}")).collect();
    want.sort();
    assert_eq!(filtered, want);

    // A Group: its members' records only.
    let m = export(
        &app,
        None,
        &format!("Group/{group}/$export?_type=Patient,Observation"),
    )
    .await;
    let got = files(&app, None, &m).await;
    let mut members = ids(&got, "Patient");
    members.sort();
    assert_eq!(members, ["p1", "p2"]);
    let obs = ids(&got, "Observation");
    assert_eq!(obs.len(), N - N / 3, "p1's and p2's observations, not p3's");
    assert!(!obs.contains(&"o2".to_string()), "o2 is p3's");

    // Deleting a job deletes its files.
    let r = call(&app, None, Method::GET, "Patient/$export").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let status = r.header("content-location").unwrap().to_string();
    let done = poll(&app, None, &status).await;
    let url = done["output"][0]["url"].as_str().unwrap().to_string();
    let r = app.send(app.client.delete(&status)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(app.send(app.client.get(&status)).await.status, 404);
    assert_eq!(app.send(app.client.get(&url)).await.status, 404);
}

async fn a_patient_exports_only_their_own_record(app: TestApp) {
    world(&app).await;
    let a = user_token(&app, CCCD_A).await;
    let b = user_token(&app, CCCD_B).await;
    call(&app, Some(&a), Method::GET, "$export")
        .await
        .assert_outcome(403);
    let r = call(&app, Some(&a), Method::GET, "Patient/$export").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let status = r.header("content-location").unwrap().to_string();
    // Another patient cannot see the job, nor its files.
    let other = app.send(app.client.get(&status).bearer_auth(&b)).await;
    assert_eq!(other.status, 404, "{}", other.body);
    let manifest = poll(&app, Some(&a), &status).await;
    assert_eq!(manifest["requiresAccessToken"], true);
    let got = files(&app, Some(&a), &manifest).await;
    assert_eq!(ids(&got, "Patient"), ["pa"]);
    assert_eq!(ids(&got, "Observation"), ["oa"]);
    assert_eq!(ids(&got, "Encounter"), ["ea"]);
    assert_eq!(ids(&got, "MedicationRequest"), ["mra"]);
    for (_, rs) in &got {
        for r in rs {
            let text = r.to_string();
            assert!(
                !text.contains(PB) && !text.contains(OB) && !text.contains("bbbb"),
                "nothing of B's: {text}"
            );
        }
    }
    let url = manifest["output"][0]["url"].as_str().unwrap();
    assert_eq!(app.send(app.client.get(url)).await.status, 401);
    assert_eq!(
        app.send(app.client.get(url).bearer_auth(&b)).await.status,
        404
    );
    // The kick-off is in A's audit trail.
    let trail = as_user(&app, &a, Method::GET, "AuditEvent?_count=100", None).await;
    assert!(trail.body.contains("$export"), "{}", trail.body);
}

async fn an_import_job_takes_ndjson_and_reports_broken_lines(app: TestApp) {
    let lines = [
        json!({"resourceType": "Patient", "id": "ip1", "gender": "female"}).to_string(),
        observation("io1", "Patient/ip1", "8867-4").to_string(),
        "{\"resourceType\": \"Observation\"".to_string(),
        observation("io2", "Patient/ip1", "8867-4").to_string(),
    ];
    let upload = |body: String| {
        app.request(Method::POST, "$import")
            .header("content-type", "application/fhir+ndjson")
            .header("prefer", "respond-async")
            .body(body)
    };
    let r = app.send(upload(lines.join("\n"))).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let status = r.header("content-location").unwrap().to_string();
    let manifest = poll(&app, None, &status).await;
    assert_eq!(manifest["output"][0]["count"], 3, "{manifest}");
    let errors = manifest["error"][0]["url"].as_str().expect("an error file");
    let r = app.send(app.client.get(errors)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let outcomes: Vec<Value> = r
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0]["resourceType"], "OperationOutcome");
    assert!(
        outcomes[0]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .starts_with("upload:3: "),
        "{}",
        outcomes[0]
    );
    assert_eq!(app.get("Observation/io2").await.status, 200);
    // Sent again: nothing new.
    let r = app.send(upload(lines.join("\n"))).await;
    let manifest = poll(&app, None, r.header("content-location").unwrap()).await;
    assert_eq!(manifest["output"][0]["count"], 0);
    assert_eq!(manifest["unchanged"], 3);
    // Inputs by URL only from the allow-list; not asynchronous: refused.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
        {"name": "input", "part": [{"name": "type", "valueCode": "Patient"},
                                     {"name": "url", "valueUri": "http://elsewhere.example/p.ndjson"}]}]});
    let r = app
        .send(
            app.request(Method::POST, "$import")
                .header("content-type", "application/fhir+json")
                .header("prefer", "respond-async")
                .body(params.to_string()),
        )
        .await;
    r.assert_outcome(403);
    let r = app
        .send(
            app.request(Method::POST, "$import")
                .header("content-type", "application/fhir+ndjson")
                .body(lines[0].clone()),
        )
        .await;
    r.assert_outcome(400);
}

async fn an_export_moves_into_another_server_by_import(app: TestApp) {
    let mut entries = vec![put_entry(
        json!({"resourceType": "Patient", "id": "m1", "gender": "female"}),
    )];
    for i in 0..30 {
        entries.push(put_entry(observation(
            &format!("mo{i}"),
            "Patient/m1",
            "8867-4",
        )));
    }
    let r = app
        .post_json(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let manifest = export(&app, None, "$export?_type=Patient,Observation").await;

    // The second server may fetch from the first.
    let allow = app.base.clone();
    let tune = move |c: &mut yba::config::Config| {
        crate::helpers::international(c);
        c.import_allow = vec![allow];
    };
    let second = if app.db_url.starts_with("postgres") {
        crate::helpers::spawn_postgres_with(tune)
            .await
            .expect("PostgreSQL")
    } else {
        crate::helpers::spawn_sqlite_with(tune).await
    };
    let mut params = vec![json!({"name": "inputFormat", "valueCode": "application/fhir+ndjson"})];
    for o in manifest["output"].as_array().unwrap() {
        params.push(json!({"name": "input", "part": [
            {"name": "type", "valueCode": o["type"]},
            {"name": "url", "valueUri": o["url"]}]}));
    }
    let r = second
        .send(
            second
                .request(Method::POST, "$import")
                .header("content-type", "application/fhir+json")
                .header("prefer", "respond-async")
                .body(json!({"resourceType": "Parameters", "parameter": params}).to_string()),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let done = poll(&second, None, r.header("content-location").unwrap()).await;
    assert_eq!(done["output"][0]["count"], 31, "{done}");
    assert_eq!(done["error"], json!([]), "{done}");
    let r = second
        .get("Observation?subject=Patient/m1&_summary=count")
        .await;
    assert_eq!(r.json()["total"], 30, "{}", r.body);
    let copied = second.get("Observation/mo29").await;
    assert_eq!(copied.status, 200, "{}", copied.body);
    assert_eq!(copied.json()["subject"]["reference"], "Patient/m1");
}

crate::on_both_databases!(@with crate::helpers::international;
    a_system_export_holds_every_resource_once,
    an_import_job_takes_ndjson_and_reports_broken_lines,
    an_export_moves_into_another_server_by_import,
);

mod with_auth {
    use super::a_patient_exports_only_their_own_record;
    crate::on_both_databases!(@with crate::helpers::with_auth;
        a_patient_exports_only_their_own_record,
    );
}
