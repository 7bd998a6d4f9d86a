//! Conditional create, update and delete by identifier; the identifier search behind them.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, patient};

const CCCD: &str = "http://fhir.ehealth.gov.vn/core/sid/citizen_id";

async fn conditional_create(
    app: &TestApp,
    body: &serde_json::Value,
    condition: &str,
) -> crate::helpers::Resp {
    app.send(
        app.request(Method::POST, "Patient")
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", condition)
            .body(body.to_string()),
    )
    .await
}

async fn conditional_create_does_not_duplicate_a_citizen(app: TestApp) {
    let cond = format!("identifier={CCCD}|001090000100");
    let first = conditional_create(&app, &patient("001090000100"), &cond).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let second = conditional_create(&app, &patient("001090000100"), &cond).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.json()["id"], first.json()["id"]);
    assert_eq!(second.json()["meta"]["versionId"], "1");
    // Value without system, and `?` prefix, are understood.
    let third =
        conditional_create(&app, &patient("001090000100"), "?identifier=001090000100").await;
    assert_eq!(third.status, 200);
    assert_eq!(app.version_count("Patient").await, 1);
}

async fn concurrent_conditional_creates_make_one_patient(app: TestApp) {
    let cond = format!("identifier={CCCD}|001090000101");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let req = app
            .request(Method::POST, "Patient")
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", cond.clone())
            .body(patient("001090000101").to_string());
        tasks.push(tokio::spawn(async move {
            req.send().await.unwrap().status().as_u16()
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            201 => created += 1,
            200 => {}
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(app.version_count("Patient").await, 1);
}

async fn two_matches_fail_a_conditional_create(app: TestApp) {
    // Two children with the same number at two hospitals.
    let mut a = patient("001090000102");
    a["identifier"][0]["system"] = json!("http://hospital-a.vn/mrn");
    a["birthDate"] = json!("2016-05-01");
    app.create(&a).await;
    let mut b = patient("001090000102");
    b["identifier"][0]["system"] = json!("http://hospital-b.vn/mrn");
    b["birthDate"] = json!("2016-05-01");
    app.create(&b).await;
    conditional_create(&app, &patient("001090000102"), "identifier=001090000102")
        .await
        .assert_outcome(412);
    assert_eq!(app.version_count("Patient").await, 2);
}

async fn conditional_update_creates_or_updates_the_match(app: TestApp) {
    let url = format!("Patient?identifier={CCCD}%7C001090000103");
    let r = app.put_json(&url, &patient("001090000103")).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let mut changed = patient("001090000103");
    changed["gender"] = json!("other");
    let r = app.put_json(&url, &changed).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], id.as_str());
    assert_eq!(r.json()["meta"]["versionId"], "2");
    // A body id that is not the match's is refused.
    changed["id"] = json!("someone-else");
    app.put_json(&url, &changed).await.assert_outcome(400);
    // Two matches: 412.
    // A child known by a hospital number equal to that citizen ID.
    let mut twin = patient("001090000103");
    twin["identifier"][0]["system"] = json!("http://other");
    twin["birthDate"] = json!("2016-05-01");
    app.create(&twin).await;
    app.put_json("Patient?identifier=001090000103", &patient("001090000103"))
        .await
        .assert_outcome(412);
}

async fn conditional_delete_removes_the_match(app: TestApp) {
    let p = app.create(&patient("001090000104")).await;
    let r = app
        .delete(&format!("Patient?identifier={CCCD}%7C001090000104"))
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    app.get(&format!("Patient/{}", p["id"].as_str().unwrap()))
        .await
        .assert_outcome(410);
    // No match: nothing happens.
    assert_eq!(app.delete("Patient?identifier=999").await.status, 204);
    // No criteria at all: refused.
    app.delete("Patient").await.assert_outcome(400);
}

async fn identifier_search_finds_live_resources(app: TestApp) {
    let p = app.create(&patient("001090000105")).await;
    app.create(&patient("001090000106")).await;
    let b = app
        .get(&format!("Patient?identifier={CCCD}%7C001090000105"))
        .await;
    assert_eq!(b.status, 200, "{}", b.body);
    let b = b.json();
    assert_eq!(b["type"], "searchset");
    assert_eq!(b["total"], 1);
    assert_eq!(b["entry"][0]["resource"]["id"], p["id"]);
    assert_eq!(b["entry"][0]["search"]["mode"], "match");
    assert_eq!(
        app.get("Patient?identifier=001090000105,001090000106")
            .await
            .json()["total"],
        2
    );
    let by_id = app
        .get(&format!("Patient?_id={}", p["id"].as_str().unwrap()))
        .await
        .json();
    assert_eq!(by_id["total"], 1);
    app.delete(&format!("Patient/{}", p["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        app.get("Patient?identifier=001090000105").await.json()["total"],
        0
    );
    // An update that drops an identifier drops it from the index.
    let q = app.create(&patient("001090000107")).await;
    let mut q2 = q.clone();
    q2["identifier"][0]["value"] = json!("001090000108");
    app.put_json(&format!("Patient/{}", q["id"].as_str().unwrap()), &q2)
        .await;
    assert_eq!(
        app.get("Patient?identifier=001090000107").await.json()["total"],
        0
    );
    assert_eq!(
        app.get("Patient?identifier=001090000108").await.json()["total"],
        1
    );
}

crate::on_both_databases!(
    conditional_create_does_not_duplicate_a_citizen,
    concurrent_conditional_creates_make_one_patient,
    two_matches_fail_a_conditional_create,
    conditional_update_creates_or_updates_the_match,
    conditional_delete_removes_the_match,
    identifier_search_finds_live_resources,
);
