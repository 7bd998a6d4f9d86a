//! create, read, vread, update, patch, delete; ETags, preconditions, Prefer.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, patient};

async fn hospital_creates_a_patient_and_reads_it_back(app: TestApp) {
    let mut body = patient("001090000001");
    body["id"] = json!("client-chosen");
    body["meta"] =
        json!({"versionId": "77", "lastUpdated": "2001-01-01T00:00:00Z", "tag": [{"code": "t"}]});
    let r = app.post_json("Patient", &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_string();
    assert_ne!(id, "client-chosen", "create ignores a client id");
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "server ids are UUIDs: {id}"
    );
    assert_eq!(created["meta"]["versionId"], "1");
    assert_ne!(created["meta"]["lastUpdated"], "2001-01-01T00:00:00Z");
    assert_eq!(created["meta"]["tag"][0]["code"], "t", "other meta is kept");
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert!(r.header("last-modified").is_some());
    assert_eq!(
        r.header("location"),
        Some(format!("{}/Patient/{id}/_history/1", app.base).as_str())
    );
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/fhir+json")
    );

    let read = app.get(&format!("Patient/{id}")).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json(), created);
    assert_eq!(read.header("etag"), Some("W/\"1\""));
    assert_eq!(read.json()["name"][0]["family"], "Nguyễn");
}

async fn reading_an_unknown_patient_is_404(app: TestApp) {
    app.get("Patient/does-not-exist").await.assert_outcome(404);
    app.get("Patient/does-not-exist/_history/1")
        .await
        .assert_outcome(404);
}

async fn update_makes_a_new_version_and_vread_keeps_the_old(app: TestApp) {
    let created = app.create(&patient("001090000002")).await;
    let id = created["id"].as_str().unwrap();
    let mut changed = created.clone();
    changed["birthDate"] = json!("1990-01-01");
    let r = app.put_json(&format!("Patient/{id}"), &changed).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["meta"]["versionId"], "2");
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    let v1 = app.get(&format!("Patient/{id}/_history/1")).await;
    assert_eq!(v1.status, 200);
    assert_eq!(v1.json()["birthDate"], "1990-04-30");
    assert_eq!(v1.header("etag"), Some("W/\"1\""));
    let v2 = app.get(&format!("Patient/{id}")).await;
    assert_eq!(v2.json()["birthDate"], "1990-01-01");
    app.get(&format!("Patient/{id}/_history/3"))
        .await
        .assert_outcome(404);
}

async fn update_with_a_client_id_creates_then_updates(app: TestApp) {
    let mut p = patient("001090000003");
    p["id"] = json!("bn-cho-ray-123");
    let r = app.put_json("Patient/bn-cho-ray-123", &p).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["id"], "bn-cho-ray-123");
    assert!(
        r.header("location")
            .unwrap()
            .ends_with("/Patient/bn-cho-ray-123/_history/1")
    );
    // The same content again makes no new version (as in HAPI FHIR): a retried PUT, or a
    // commune node's re-sent push, changes nothing.
    let again = app.put_json("Patient/bn-cho-ray-123", &p).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["meta"]["versionId"], "1");
    assert_eq!(again.header("etag"), Some("W/\"1\""));
    p["name"][0]["family"] = json!("Trần");
    let changed = app.put_json("Patient/bn-cho-ray-123", &p).await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.json()["meta"]["versionId"], "2");
    assert_eq!(changed.json()["name"][0]["family"], "Trần");
    let h = app.get("Patient/bn-cho-ray-123/_history").await.json();
    assert_eq!(h["total"], 2, "{h}");
}

async fn deleted_patient_is_gone_but_its_history_remains(app: TestApp) {
    let created = app.create(&patient("001090000004")).await;
    let id = created["id"].as_str().unwrap().to_string();
    let d = app.delete(&format!("Patient/{id}")).await;
    assert_eq!(d.status, 204, "{}", d.body);
    assert_eq!(d.header("etag"), Some("W/\"2\""));
    app.get(&format!("Patient/{id}")).await.assert_outcome(410);
    app.get(&format!("Patient/{id}/_history/2"))
        .await
        .assert_outcome(410);
    assert_eq!(
        app.get(&format!("Patient/{id}/_history/1")).await.status,
        200
    );
    // Deleting again changes nothing.
    assert_eq!(app.delete(&format!("Patient/{id}")).await.status, 204);
    let h = app.get(&format!("Patient/{id}/_history")).await.json();
    assert_eq!(h["total"], 2);
    assert_eq!(h["entry"][0]["request"]["method"], "DELETE");
    assert!(h["entry"][0].get("resource").is_none());
    // An update brings it back as version 3.
    let back = app.put_json(&format!("Patient/{id}"), &created).await;
    assert_eq!(back.status, 201, "{}", back.body);
    assert_eq!(back.json()["meta"]["versionId"], "3");
    assert_eq!(app.get(&format!("Patient/{id}")).await.status, 200);
    // Deleting what never existed is not an error (R4 §3.1.0.7).
    assert_eq!(app.delete("Patient/never-was").await.status, 204);
}

async fn stale_if_match_is_refused_and_changes_nothing(app: TestApp) {
    let created = app.create(&patient("001090000005")).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("Patient/{id}");
    let mut p = created.clone();
    p["gender"] = json!("other");
    let ok = app
        .send(
            app.request(Method::PUT, &path)
                .header("content-type", "application/fhir+json")
                .header("if-match", "W/\"1\"")
                .body(p.to_string()),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    p["gender"] = json!("other");
    let stale = app
        .send(
            app.request(Method::PUT, &path)
                .header("content-type", "application/fhir+json")
                .header("if-match", "W/\"1\"")
                .body(p.to_string()),
        )
        .await;
    stale.assert_outcome(412);
    assert_eq!(app.get(&path).await.json()["gender"], "other");
    let bad = app
        .send(
            app.request(Method::PUT, &path)
                .header("content-type", "application/fhir+json")
                .header("if-match", "yesterday")
                .body(p.to_string()),
        )
        .await;
    bad.assert_outcome(400);
}

async fn of_concurrent_updates_with_the_same_if_match_exactly_one_wins(app: TestApp) {
    let created = app.create(&patient("001090000006")).await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut p = created.clone();
        p["name"][0]["given"] = json!([format!("Writer{i}")]);
        let req = app
            .request(Method::PUT, &format!("Patient/{id}"))
            .header("content-type", "application/fhir+json")
            .header("if-match", "W/\"1\"")
            .body(p.to_string());
        tasks.push(tokio::spawn(async move {
            req.send().await.map(|r| r.status().as_u16())
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 412).count(),
        11,
        "{statuses:?}"
    );
    let now = app.get(&format!("Patient/{id}")).await.json();
    assert_eq!(now["meta"]["versionId"], "2");
}

async fn concurrent_updates_without_if_match_all_land_in_order(app: TestApp) {
    let created = app.create(&patient("001090000007")).await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut p = created.clone();
        p["name"][0]["given"] = json!([format!("Writer{i}")]);
        let req = app
            .request(Method::PUT, &format!("Patient/{id}"))
            .header("content-type", "application/fhir+json")
            .body(p.to_string());
        tasks.push(tokio::spawn(async move {
            req.send().await.map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    let h = app.get(&format!("Patient/{id}/_history")).await.json();
    assert_eq!(h["total"], 11);
    let versions: Vec<String> = h["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["resource"]["meta"]["versionId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let expected: Vec<String> = (1..=11).rev().map(|v| v.to_string()).collect();
    assert_eq!(versions, expected);
}

async fn conditional_reads_answer_304(app: TestApp) {
    let created = app.create(&patient("001090000008")).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    let r = app
        .send(
            app.request(Method::GET, &path)
                .header("if-none-match", "W/\"1\""),
        )
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = app
        .send(
            app.request(Method::GET, &path)
                .header("if-none-match", "W/\"7\""),
        )
        .await;
    assert_eq!(r.status, 200);
    let lm = app
        .get(&path)
        .await
        .header("last-modified")
        .unwrap()
        .to_string();
    let r = app
        .send(
            app.request(Method::GET, &path)
                .header("if-modified-since", lm),
        )
        .await;
    assert_eq!(r.status, 304);
    let r = app
        .send(
            app.request(Method::GET, &path)
                .header("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT"),
        )
        .await;
    assert_eq!(r.status, 200);
}

async fn prefer_return_shapes_the_response(app: TestApp) {
    // Three people: one citizen has one record.
    let p = patient("001090000009");
    let minimal = app
        .send(
            app.request(Method::POST, "Patient")
                .header("content-type", "application/fhir+json")
                .header("prefer", "return=minimal")
                .body(p.to_string()),
        )
        .await;
    assert_eq!(minimal.status, 201);
    assert!(minimal.body.is_empty());
    assert!(minimal.header("location").is_some());
    let oo = app
        .send(
            app.request(Method::POST, "Patient")
                .header("content-type", "application/fhir+json")
                .header("prefer", "return=OperationOutcome")
                .body(patient("001090000019").to_string()),
        )
        .await;
    assert_eq!(oo.status, 201);
    assert_eq!(oo.json()["resourceType"], "OperationOutcome");
    assert_eq!(oo.json()["issue"][0]["severity"], "information");
    assert!(oo.header("etag").is_some());
    let rep = app
        .send(
            app.request(Method::POST, "Patient")
                .header("content-type", "application/fhir+json")
                .header("prefer", "return=representation")
                .body(patient("001090000029").to_string()),
        )
        .await;
    assert_eq!(rep.json()["resourceType"], "Patient");
}

async fn json_patch_changes_one_element(app: TestApp) {
    let created = app.create(&patient("001090000010")).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    let patch = json!([{"op": "replace", "path": "/birthDate", "value": "1990-12-31"}, {"op": "add", "path": "/active", "value": true}]);
    let r = app
        .send(
            app.request(Method::PATCH, &path)
                .header("content-type", "application/json-patch+json")
                .body(patch.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["birthDate"], "1990-12-31");
    assert_eq!(v["active"], true);
    assert_eq!(v["meta"]["versionId"], "2");
    assert_eq!(v["name"], created["name"]);
    let h = app.get(&format!("{path}/_history")).await.json();
    assert_eq!(h["entry"][0]["request"]["method"], "PATCH");

    // A patch that leaves an invalid resource is refused and stores nothing.
    let bad = json!([{"op": "replace", "path": "/birthDate", "value": "31/12/1985"}]);
    let r = app
        .send(
            app.request(Method::PATCH, &path)
                .header("content-type", "application/json-patch+json")
                .body(bad.to_string()),
        )
        .await;
    assert_eq!(
        r.assert_outcome(400)["issue"][0]["expression"][0],
        "Patient.birthDate"
    );
    // A patch that does not apply is refused.
    let miss = json!([{"op": "remove", "path": "/telecom/5"}]);
    app.send(
        app.request(Method::PATCH, &path)
            .header("content-type", "application/json-patch+json")
            .body(miss.to_string()),
    )
    .await
    .assert_outcome(400);
    // Stale If-Match.
    let stale = app
        .send(
            app.request(Method::PATCH, &path)
                .header("content-type", "application/json-patch+json")
                .header("if-match", "W/\"1\"")
                .body(patch.to_string()),
        )
        .await;
    stale.assert_outcome(412);
    // Not a JSON Patch media type.
    let wrong = app
        .send(
            app.request(Method::PATCH, &path)
                .header("content-type", "text/plain")
                .body(patch.to_string()),
        )
        .await;
    wrong.assert_outcome(415);
    assert_eq!(app.get(&path).await.json()["meta"]["versionId"], "2");
    app.send(
        app.request(Method::PATCH, "Patient/nobody")
            .header("content-type", "application/json-patch+json")
            .body(patch.to_string()),
    )
    .await
    .assert_outcome(404);
}

async fn fhirpath_patch_changes_elements_found_by_path(app: TestApp) {
    let created = app.create(&patient("001090000011")).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    let op = |parts: serde_json::Value| json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]});
    let patch = json!({"resourceType": "Parameters", "parameter": [
        {"name": "operation", "part": [{"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.birthDate"}, {"name": "value", "valueDate": "1990-12-31"}]},
        {"name": "operation", "part": [{"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient.name[0]"}, {"name": "name", "valueString": "given"},
            {"name": "value", "valueString": "Bình"}]},
        {"name": "operation", "part": [{"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "telecom"},
            {"name": "value", "part": [{"name": "system", "valueCode": "phone"}, {"name": "value", "valueString": "0912000111"}]}]}
    ]});
    let r = app
        .send(
            app.request(Method::PATCH, &path)
                .header("content-type", "application/fhir+json")
                .body(patch.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["birthDate"], "1990-12-31");
    assert_eq!(v["name"][0]["given"], json!(["Văn", "An", "Bình"]));
    assert_eq!(v["telecom"][0]["value"], "0912000111");
    assert_eq!(v["meta"]["versionId"], "2");
    // The patched resource is searchable by its new values.
    let found = app.get("Patient?phone=0912000111").await.json();
    assert_eq!(found["entry"][0]["resource"]["id"], created["id"]);
    // A path that matches several elements, or a value that makes the resource invalid, is
    // refused and changes nothing.
    for bad in [
        op(
            json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.name.given"},
            {"name": "value", "valueString": "X"}]),
        ),
        op(
            json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"},
            {"name": "value", "valueString": "31/12/1985"}]),
        ),
    ] {
        app.send(
            app.request(Method::PATCH, &path)
                .header("content-type", "application/fhir+json")
                .body(bad.to_string()),
        )
        .await
        .assert_outcome(400);
    }
    assert_eq!(app.get(&path).await.json()["meta"]["versionId"], "2");
}

crate::on_both_databases!(
    fhirpath_patch_changes_elements_found_by_path,
    hospital_creates_a_patient_and_reads_it_back,
    reading_an_unknown_patient_is_404,
    update_makes_a_new_version_and_vread_keeps_the_old,
    update_with_a_client_id_creates_then_updates,
    deleted_patient_is_gone_but_its_history_remains,
    stale_if_match_is_refused_and_changes_nothing,
    of_concurrent_updates_with_the_same_if_match_exactly_one_wins,
    concurrent_updates_without_if_match_all_land_in_order,
    conditional_reads_answer_304,
    prefer_return_shapes_the_response,
    json_patch_changes_one_element,
);
