//! One citizen, one record: no two active Patients share a citizen ID, whether they arrive one by
//! one, conditionally, in transactions, or from two hospitals at the same moment.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, patient};

const CCCD: &str = "http://fhir.ehealth.gov.vn/core/sid/citizen_id";

/// The ids of the live Patients that carry a citizen ID.
async fn holders(app: &TestApp, cccd: &str) -> Vec<String> {
    let r = app
        .get(&format!("Patient?identifier={CCCD}%7C{cccd}&_count=100"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn a_second_record_of_a_citizen_is_refused(app: TestApp) {
    let first = app.create(&patient("001090000201")).await;
    let first_id = first["id"].as_str().unwrap();
    // The same person again, with a hospital's record number first.
    let mut again = patient("001090000201");
    again["identifier"] = json!([
        {"system": "http://benhvien-a.vn/mrn", "value": "A-77"},
        {"system": CCCD, "value": "001090000201"}
    ]);
    let r = app.post_json("Patient", &again).await;
    let o = r.assert_outcome(409);
    let issue = &o["issue"][0];
    assert_eq!(issue["code"], "duplicate", "{o}");
    assert_eq!(issue["expression"][0], "Patient.identifier[1]", "{o}");
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains(&format!("Patient/{first_id}")),
        "{o}"
    );
    assert_eq!(holders(&app, "001090000201").await, [first_id]);

    // Another person cannot be given the citizen ID by an update either.
    let other = app.create(&patient("001090000202")).await;
    let mut changed = other.clone();
    changed["identifier"][0]["value"] = json!("001090000201");
    let r = app
        .put_json(
            &format!("Patient/{}", other["id"].as_str().unwrap()),
            &changed,
        )
        .await;
    r.assert_outcome(409);
    // Updating the holder itself is fine.
    let mut renamed = first.clone();
    renamed["name"][0]["family"] = json!("Lê");
    let r = app.put_json(&format!("Patient/{first_id}"), &renamed).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn a_conditional_create_of_a_known_citizen_returns_the_record(app: TestApp) {
    let first = app.create(&patient("001090000203")).await;
    // The hospital's condition is on its own record number, which is new here; the citizen ID
    // says it is the same person.
    let mut body = patient("001090000203");
    body["identifier"]
        .as_array_mut()
        .unwrap()
        .push(json!({"system": "http://benhvien-b.vn/mrn", "value": "B-1"}));
    let r = app
        .send(
            app.request(Method::POST, "Patient")
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", "identifier=http://benhvien-b.vn/mrn|B-1")
                .body(body.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], first["id"]);
    assert_eq!(app.version_count("Patient").await, 1);
}

async fn an_inactive_record_does_not_hold_the_citizen_id(app: TestApp) {
    let old = app.create(&patient("001090000204")).await;
    let old_id = old["id"].as_str().unwrap().to_string();
    let mut retired = old.clone();
    retired["active"] = json!(false);
    assert_eq!(
        app.put_json(&format!("Patient/{old_id}"), &retired)
            .await
            .status,
        200
    );
    let new = app.create(&patient("001090000204")).await;
    // Re-activating the old record would make two.
    let mut back = retired.clone();
    back["active"] = json!(true);
    app.put_json(&format!("Patient/{old_id}"), &back)
        .await
        .assert_outcome(409);
    let mut both = holders(&app, "001090000204").await;
    both.sort();
    let mut expected = vec![old_id, new["id"].as_str().unwrap().to_string()];
    expected.sort();
    assert_eq!(both, expected);
}

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn post(full_url: &str, resource: Value, if_none_exist: Option<&str>) -> Value {
    let mut request = json!({"method": "POST", "url": resource["resourceType"]});
    if let Some(c) = if_none_exist {
        request["ifNoneExist"] = json!(c);
    }
    json!({"fullUrl": full_url, "resource": resource, "request": request})
}

async fn a_transaction_with_the_same_citizen_twice_is_refused_whole(app: TestApp) {
    let bundle = transaction(vec![
        post(
            "urn:uuid:7d1c0c5e-0000-4000-8000-000000000001",
            patient("001090000205"),
            None,
        ),
        post(
            "urn:uuid:7d1c0c5e-0000-4000-8000-000000000002",
            patient("001090000205"),
            None,
        ),
    ]);
    let r = app.post_json("", &bundle).await;
    let o = r.assert_outcome(409);
    assert_eq!(
        o["issue"][0]["expression"][0], "Bundle.entry[1].resource.identifier[0]",
        "{o}"
    );
    assert!(holders(&app, "001090000205").await.is_empty());

    // A plain create in a transaction of a citizen who has a record is refused, and the
    // transaction leaves nothing behind.
    app.create(&patient("001090000206")).await;
    let bundle = transaction(vec![
        post(
            "urn:uuid:7d1c0c5e-0000-4000-8000-000000000003",
            patient("001090000207"),
            None,
        ),
        post(
            "urn:uuid:7d1c0c5e-0000-4000-8000-000000000004",
            patient("001090000206"),
            None,
        ),
    ]);
    app.post_json("", &bundle).await.assert_outcome(409);
    assert!(holders(&app, "001090000207").await.is_empty());
}

/// A hospital's push: each person conditionally on the citizen ID, with an encounter that
/// refers to them by fullUrl.
fn hospital_push(hospital: &str, people: &[&str]) -> Value {
    let mut entries = Vec::new();
    for (i, cccd) in people.iter().enumerate() {
        let full = format!("urn:uuid:00000000-0000-4000-8000-{hospital}{i:08}");
        entries.push(post(
            &full,
            patient(cccd),
            Some(&format!("identifier={CCCD}|{cccd}")),
        ));
        entries.push(post(
            &format!("urn:uuid:00000000-0000-4000-9000-{hospital}{i:08}"),
            json!({"resourceType": "Encounter", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": full}}),
            None,
        ));
    }
    transaction(entries)
}

async fn concurrent_hospital_pushes_make_one_record_per_citizen(app: TestApp) {
    let people = ["001090000301", "001090000302", "001090000303"];
    // Two rounds of eight hospitals at once, so that pushes overlap both while no record exists
    // and after one does.
    for round in 0..2 {
        let mut tasks = Vec::new();
        for h in 0..8 {
            let mut order = people.to_vec();
            if h % 2 == 1 {
                order.reverse();
            }
            let body = hospital_push(&format!("{round}{h:03}"), &order).to_string();
            let req = app
                .request(Method::POST, "")
                .header("content-type", "application/fhir+json")
                .body(body);
            tasks.push(tokio::spawn(async move {
                let r = req.send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }));
        }
        for t in tasks {
            let (status, body) = t.await.unwrap();
            assert_eq!(status, 200, "{body}");
        }
    }
    for cccd in people {
        assert_eq!(holders(&app, cccd).await.len(), 1, "{cccd}");
    }
    assert_eq!(app.version_count("Patient").await, 3);
    assert_eq!(app.version_count("Encounter").await, 48);
    // Every encounter refers to the one record of its person.
    let r = app
        .get(&format!(
            "Encounter?subject.identifier={CCCD}%7C001090000302&_count=100"
        ))
        .await;
    assert_eq!(r.json()["total"], 16, "{}", r.body);
}

async fn concurrent_plain_creates_of_one_citizen_leave_one(app: TestApp) {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let req = app
            .request(Method::POST, "Patient")
            .header("content-type", "application/fhir+json")
            .body(patient("001090000304").to_string());
        tasks.push(tokio::spawn(async move {
            req.send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
    assert_eq!(holders(&app, "001090000304").await.len(), 1);
}

crate::on_both_databases!(
    a_second_record_of_a_citizen_is_refused,
    a_conditional_create_of_a_known_citizen_returns_the_record,
    an_inactive_record_does_not_hold_the_citizen_id,
    a_transaction_with_the_same_citizen_twice_is_refused_whole,
    concurrent_hospital_pushes_make_one_record_per_citizen,
    concurrent_plain_creates_of_one_citizen_leave_one,
);
