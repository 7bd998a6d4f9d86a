//! Transactions (all or nothing, urn:uuid resolution, processing order) and batches.

use base64::Engine;
use serde_json::{Value, json};

use crate::helpers::{TestApp, patient};

const CCCD: &str = "http://fhir.ehealth.gov.vn/core/sid/citizen_id";

fn entry(full_url: &str, resource: Value, method: &str, url: &str) -> Value {
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": method, "url": url}})
}

fn observation(subject: &str, code: &str, value: f64) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
    })
}

async fn transaction_resolves_urn_uuid_references(app: TestApp) {
    let pid = "urn:uuid:5a1d0c1e-8a33-4c59-9d2a-3f6b0d3f6c01";
    let enc = "urn:uuid:5a1d0c1e-8a33-4c59-9d2a-3f6b0d3f6c02";
    let mut e = json!({"resourceType": "Encounter", "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"}, "subject": {"reference": pid}});
    e["text"] = json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"{pid}\">bệnh nhân</a></div>")});
    let mut obs = observation(pid, "8480-6", 120.0);
    obs["encounter"] = json!({"reference": enc});
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry(enc, e, "POST", "Encounter"),
            entry("urn:uuid:5a1d0c1e-8a33-4c59-9d2a-3f6b0d3f6c03", obs, "POST", "Observation"),
            entry(pid, patient("001090000400"), "POST", "Patient"),
        ]
    });
    let r = app.post_json("", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let resp = r.json();
    assert_eq!(resp["type"], "transaction-response");
    let entries = resp["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    let loc = |i: usize| {
        entries[i]["response"]["location"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (i, ty) in [(0, "Encounter/"), (1, "Observation/"), (2, "Patient/")] {
        assert_eq!(entries[i]["response"]["status"], "201 Created");
        assert!(loc(i).starts_with(ty), "{}", loc(i));
        assert!(loc(i).ends_with("/_history/1"));
    }
    let patient_ref = loc(2).trim_end_matches("/_history/1").to_string();
    let encounter_ref = loc(0).trim_end_matches("/_history/1").to_string();
    let o = app.get(loc(1).trim_end_matches("/_history/1")).await.json();
    assert_eq!(o["subject"]["reference"], patient_ref.as_str());
    assert_eq!(o["encounter"]["reference"], encounter_ref.as_str());
    let enc_read = app.get(&encounter_ref).await.json();
    assert_eq!(enc_read["subject"]["reference"], patient_ref.as_str());
    assert!(
        enc_read["text"]["div"]
            .as_str()
            .unwrap()
            .contains(&patient_ref),
        "narrative links are rewritten too"
    );
    // Every resource of one transaction shares one lastUpdated.
    assert_eq!(o["meta"]["lastUpdated"], enc_read["meta"]["lastUpdated"]);
}

async fn a_failing_entry_rolls_back_the_whole_transaction(app: TestApp) {
    let existing = app.create(&patient("001090000401")).await;
    let id = existing["id"].as_str().unwrap().to_string();
    let mut changed = existing.clone();
    changed["gender"] = json!("other");
    let pid = "urn:uuid:0b8f6a8e-3b1c-4f7a-9c11-6a2f1d0e0001";
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry(pid, patient("001090000402"), "POST", "Patient"),
            entry("urn:uuid:0b8f6a8e-3b1c-4f7a-9c11-6a2f1d0e0002", observation(pid, "8480-6", 130.0), "POST", "Observation"),
            {"resource": changed, "request": {"method": "PUT", "url": format!("Patient/{id}"), "ifMatch": "W/\"9\""}},
            {"request": {"method": "DELETE", "url": format!("Patient/{id}")}},
        ]
    });
    // The DELETE and PUT touch the same patient: refused before anything runs.
    let r = app.post_json("", &bundle).await;
    let oo = r.assert_outcome(400);
    assert!(
        oo["issue"][0]["expression"][0]
            .as_str()
            .unwrap()
            .starts_with("Bundle.entry["),
        "{oo}"
    );

    // Without the DELETE, the stale If-Match of entry 2 fails after the POSTs ran: all undone.
    let mut b2 = bundle.clone();
    b2["entry"].as_array_mut().unwrap().pop();
    let r = app.post_json("", &b2).await;
    let oo = r.assert_outcome(412);
    let d = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(d.contains("Bundle.entry[2]"), "{d}");
    assert_eq!(oo["issue"][0]["expression"][0], "Bundle.entry[2]");
    assert_eq!(
        app.version_count("Patient").await,
        1,
        "the POSTed patient was rolled back"
    );
    assert_eq!(app.version_count("Observation").await, 0);
    assert_eq!(
        app.get(&format!("Patient/{id}")).await.json()["gender"],
        "male"
    );
    assert_eq!(
        app.get("Patient?identifier=001090000402").await.json()["total"],
        0
    );

    // An invalid resource deep in the bundle: 400 naming its place; nothing stored.
    let mut bad = observation(pid, "8480-6", 130.0);
    bad["effectiveDateTime"] = json!("hôm qua");
    let b3 = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(pid, patient("001090000403"), "POST", "Patient"),
        entry("urn:uuid:0b8f6a8e-3b1c-4f7a-9c11-6a2f1d0e0003", bad, "POST", "Observation"),
    ]});
    let r = app.post_json("", &b3).await;
    r.assert_outcome(400);
    assert!(
        r.issue_expressions()
            .contains(&"Bundle.entry[1].resource.effective.ofType(dateTime)".to_string()),
        "{}",
        r.body
    );
    assert_eq!(app.version_count("Patient").await, 1);
}

async fn transaction_processes_deletes_first_and_reads_last(app: TestApp) {
    let old = app.create(&patient("001090000404")).await;
    let old_id = old["id"].as_str().unwrap().to_string();
    let mut put = patient("001090000405");
    put["id"] = json!("fixed-id-405");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Patient/fixed-id-405"}},
        {"fullUrl": "Patient/fixed-id-405", "resource": put, "request": {"method": "PUT", "url": "Patient/fixed-id-405"}},
        {"request": {"method": "DELETE", "url": format!("Patient/{old_id}")}},
        {"request": {"method": "GET", "url": "Patient?identifier=001090000405"}},
    ]});
    let r = app.post_json("", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = r.json()["entry"].clone();
    assert_eq!(e[0]["response"]["status"], "200 OK");
    assert_eq!(
        e[0]["resource"]["id"], "fixed-id-405",
        "GET runs after the PUT"
    );
    assert_eq!(e[1]["response"]["status"], "201 Created");
    assert_eq!(e[2]["response"]["status"], "204 No Content");
    assert_eq!(e[3]["resource"]["total"], 1);
    app.get(&format!("Patient/{old_id}"))
        .await
        .assert_outcome(410);
}

async fn transaction_conditional_create_reuses_the_existing_patient(app: TestApp) {
    let existing = app.create(&patient("001090000406")).await;
    let pid = "urn:uuid:7c3e1b52-2d4e-4a8b-9f01-000000000406";
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": pid, "resource": patient("001090000406"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={CCCD}|001090000406")}},
        entry("urn:uuid:7c3e1b52-2d4e-4a8b-9f01-000000000407", observation(pid, "8462-4", 80.0), "POST", "Observation"),
        entry("urn:uuid:7c3e1b52-2d4e-4a8b-9f01-000000000408", observation("Patient?identifier=001090000406", "8867-4", 70.0), "POST", "Observation"),
    ]});
    let r = app.post_json("", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = r.json()["entry"].clone();
    assert_eq!(e[0]["response"]["status"], "200 OK");
    let expect = format!("Patient/{}", existing["id"].as_str().unwrap());
    for i in [1, 2] {
        let loc = e[i]["response"]["location"]
            .as_str()
            .unwrap()
            .trim_end_matches("/_history/1")
            .to_string();
        assert_eq!(
            app.get(&loc).await.json()["subject"]["reference"],
            expect.as_str()
        );
    }
    assert_eq!(app.version_count("Patient").await, 1);
    // A conditional reference that matches nothing fails the transaction.
    let bad = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry("urn:uuid:7c3e1b52-2d4e-4a8b-9f01-000000000409", observation("Patient?identifier=nobody", "8867-4", 70.0), "POST", "Observation"),
    ]});
    app.post_json("", &bad).await.assert_outcome(412);
    assert_eq!(app.version_count("Observation").await, 2);
}

async fn transaction_patch_entries_carry_json_patch_in_a_binary(app: TestApp) {
    let p = app.create(&patient("001090000410")).await;
    let id = p["id"].as_str().unwrap();
    let patch = json!([{"op": "replace", "path": "/gender", "value": "other"}]).to_string();
    let binary = json!({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": base64::engine::general_purpose::STANDARD.encode(patch)});
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": binary, "request": {"method": "PATCH", "url": format!("Patient/{id}")}}
    ]});
    let r = app.post_json("", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        app.get(&format!("Patient/{id}")).await.json()["gender"],
        "other"
    );
}

async fn batch_entries_succeed_or_fail_on_their_own(app: TestApp) {
    let mut bad = patient("001090000411");
    bad["birthDate"] = json!("30-04-1990");
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        entry("urn:uuid:1", patient("001090000412"), "POST", "Patient"),
        {"request": {"method": "GET", "url": "Patient/nobody"}},
        {"resource": patient("001090000413"), "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "DELETE", "url": "Patient/nobody"}},
    ]});
    let r = app.post_json("", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let b = r.json();
    assert_eq!(b["type"], "batch-response");
    let e = b["entry"].as_array().unwrap();
    assert_eq!(e[0]["response"]["status"], "201 Created");
    assert_eq!(e[1]["response"]["status"], "404 Not Found");
    assert_eq!(
        e[1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert!(
        e[2]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("400")
    );
    assert_eq!(e[3]["response"]["status"], "204 No Content");
    assert_eq!(app.version_count("Patient").await, 1);
    // Prefer: return=representation puts the resources in the entries.
    let r = app
        .send(app.request(reqwest::Method::POST, "").header("content-type", "application/fhir+json").header("prefer", "return=representation").body(json!({"resourceType": "Bundle", "type": "batch", "entry": [entry("urn:uuid:2", patient("001090000414"), "POST", "Patient")]}).to_string()))
        .await;
    assert_eq!(r.json()["entry"][0]["resource"]["resourceType"], "Patient");
    let _ = bad;
}

async fn only_transactions_and_batches_are_processed_at_the_base(app: TestApp) {
    let doc = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient("001090000415")}]});
    app.post_json("", &doc).await.assert_outcome(400);
    app.post_json("", &patient("001090000415"))
        .await
        .assert_outcome(400);
    // A collection Bundle is an ordinary resource at /Bundle.
    assert_eq!(app.post_json("Bundle", &doc).await.status, 201);
    let no_request = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": patient("001090000416")}]});
    let r = app.post_json("", &no_request).await;
    r.assert_outcome(400);
    assert_eq!(r.issue_expressions()[0], "Bundle.entry[0].request");
    assert_eq!(app.version_count("Patient").await, 0);
}

crate::on_both_databases!(
    transaction_resolves_urn_uuid_references,
    a_failing_entry_rolls_back_the_whole_transaction,
    transaction_processes_deletes_first_and_reads_last,
    transaction_conditional_create_reuses_the_existing_patient,
    transaction_patch_entries_carry_json_patch_in_a_binary,
    batch_entries_succeed_or_fail_on_their_own,
    only_transactions_and_batches_are_processed_at_the_base,
);
