//! E-prescriptions (issue 6) through HTTP with auth on, on both databases: issuing with the
//! legal checks, immutability, replacement, cancellation, lookup by code, partial dispensing,
//! expiry, and twenty pharmacies racing for one prescription.

use reqwest::Method;
use serde_json::{Value, json};

use crate::auth::{as_user, system_token, token_request, user_token, world};
use crate::helpers::TestApp;
use yba::auth::service::{self, NewClient};

crate::on_both_databases!(@with crate::helpers::with_auth;
    prescriptions_are_issued_within_the_law,
    issued_prescriptions_are_immutable_replaced_and_cancelled,
    pharmacies_dispense_within_what_was_prescribed,
    twenty_pharmacies_dispense_one_prescription_once,
);

mod expiring {
    use super::expired_prescriptions_are_not_dispensed;
    crate::on_both_databases!(@with crate::prescribing::expire_at_once;
        expired_prescriptions_are_not_dispensed,
    );
}

/// Auth on; prescriptions valid for dispensing for no time at all.
pub fn expire_at_once(c: &mut yba::config::Config) {
    crate::helpers::with_auth(c);
    c.prescription_valid_days = 0;
}

const SID_CODE: &str = "http://fhir.ehealth.gov.vn/core/sid/provider-code";
const SID_LICENCE: &str = "http://fhir.ehealth.gov.vn/core/sid/provider-medical-license-number";
const RX: &str = "https://yba.vn/fhir/sid/prescription-code";

/// The auth world, with A's hospital a central one with a facility code and Dr An licensed.
async fn rx_world(app: &TestApp) {
    world(app).await;
    let fhir = yba::fhir::Fhir::new(app.store.clone().unwrap(), Default::default());
    fhir.update(
        "Organization",
        "org-a".into(),
        json!({"resourceType": "Organization", "id": "org-a", "name": "Bệnh viện A",
            "identifier": [{"system": SID_CODE, "value": "01001"}],
            "type": [{"coding": [{"system": "https://yba.vn/fhir/CodeSystem/facility-level", "code": "central"}]}]}),
        None,
    )
    .await
    .unwrap();
    fhir.update(
        "Practitioner",
        "dr-an".into(),
        json!({"resourceType": "Practitioner", "id": "dr-an", "name": [{"family": "Trần", "given": ["An"]}],
            "identifier": [{"system": SID_LICENCE, "value": "000123/BYT-CCHN"}]}),
        None,
    )
    .await
    .unwrap();
}

/// A line for patient A by Dr An: `days` of supply, `qty` units, of an ATC-coded medicine.
fn line(atc: &str, name: &str, days: u32, qty: u32, icd: &str) -> Value {
    json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "groupIdentifier": {"system": RX},
        "subject": {"reference": "Patient/pa"},
        "encounter": {"reference": "Encounter/ea"},
        "requester": {"reference": "Practitioner/dr-an"},
        "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": icd}]}],
        "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": atc, "display": name}], "text": name},
        "dosageInstruction": [{"text": "1 viên x 2 lần/ngày", "route": {"text": "uống"},
            "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "viên"}}]}],
        "dispenseRequest": {"quantity": {"value": qty, "unit": "viên"},
            "expectedSupplyDuration": {"value": days, "unit": "ngày", "system": "http://unitsofmeasure.org", "code": "d"}}})
}

fn bundle(lines: &[Value]) -> Value {
    json!({"resourceType": "Bundle", "type": "collection",
        "entry": lines.iter().map(|l| json!({"resource": l})).collect::<Vec<_>>()})
}

/// `$prescribe`, answered as it may be.
async fn try_prescribe(app: &TestApp, token: &str, lines: &[Value]) -> crate::helpers::Resp {
    as_user(
        app,
        token,
        Method::POST,
        "MedicationRequest/$prescribe",
        Some(&bundle(lines)),
    )
    .await
}

/// Issues through `$prescribe`; the code and the line ids.
async fn prescribe(app: &TestApp, token: &str, lines: &[Value]) -> (String, Vec<String>) {
    let r = try_prescribe(app, token, lines).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let mut ids = Vec::new();
    let mut code = String::new();
    for e in v["entry"].as_array().unwrap() {
        assert_eq!(e["response"]["status"], "201 Created", "{e}");
        let res = &e["resource"];
        if res["resourceType"] == "MedicationRequest" {
            ids.push(res["id"].as_str().unwrap().to_string());
            code = res["groupIdentifier"]["value"]
                .as_str()
                .unwrap()
                .to_string();
        }
    }
    (code, ids)
}

fn dispense(request_id: &str, qty: u32) -> Value {
    json!({"resourceType": "MedicationDispense", "status": "completed",
        "subject": {"reference": "Patient/pa"},
        "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "C08CA01"}], "text": "Amlodipin 5mg"},
        "authorizingPrescription": [{"reference": format!("MedicationRequest/{request_id}")}],
        "quantity": {"value": qty, "unit": "viên"}})
}

async fn status(app: &TestApp, token: &str, code: &str) -> Value {
    let r = as_user(
        app,
        token,
        Method::GET,
        &format!("MedicationRequest/$status?code={code}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn param<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {p}"))
}

fn dispensed(p: &Value) -> f64 {
    param(p, "line")["part"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "dispensed")
        .unwrap()["valueDecimal"]
        .as_f64()
        .unwrap()
}

async fn prescriptions_are_issued_within_the_law(app: TestApp) {
    rx_world(&app).await;
    let dr = user_token(&app, "dr.an").await;
    // An ordinary prescription of 30 days passes; its code is the facility's, 7 random
    // characters and 'c'.
    let (code, ids) = prescribe(
        &app,
        &dr,
        &[line("C08CA01", "Amlodipin 5mg", 30, 30, "J06.9")],
    )
    .await;
    assert_eq!(code.len(), 14, "{code}");
    assert!(code.starts_with("01001") && code.ends_with("-c"), "{code}");
    assert_eq!(ids.len(), 1);
    // Each rule with a failing case: 422 with an issue citing the circular, nothing written.
    let count = || async {
        as_user(
            &app,
            &dr,
            Method::GET,
            "MedicationRequest?patient=pa&_summary=count",
            None,
        )
        .await
        .json()["total"]
            .as_i64()
            .unwrap()
    };
    let before = count().await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            line("C08CA01", "Amlodipin 5mg", 31, 31, "J06.9"),
            "at most 30 days",
            "expectedSupplyDuration",
        ),
        (
            line("C08CA01", "Amlodipin 5mg", 91, 91, "I10"),
            "at most 90 days",
            "expectedSupplyDuration",
        ),
        (
            line("N02AA01", "Morphin 10mg", 8, 8, "S72.0"),
            "at most 7 days",
            "expectedSupplyDuration",
        ),
        (
            line("N05BA01", "Diazepam 5mg", 11, 11, "F41.1"),
            "at most 10 days",
            "expectedSupplyDuration",
        ),
        (
            line("N02AA01", "Morphin 10mg", 20, 20, "C34.1"),
            "phases",
            "dispenseInterval",
        ),
    ];
    for (l, says, at) in cases {
        let r = try_prescribe(&app, &dr, &[l]).await;
        let oo = r.assert_outcome(422);
        assert!(
            r.body.contains(says) && r.body.contains("TT 26/2025/TT-BYT"),
            "{says}: {}",
            r.body
        );
        assert!(
            oo["issue"][0]["expression"][0]
                .as_str()
                .unwrap()
                .contains(at),
            "{}",
            r.body
        );
    }
    assert_eq!(count().await, before);
    // The passing side of the same rules.
    prescribe(
        &app,
        &dr,
        &[line("C08CA01", "Amlodipin 5mg", 90, 90, "I10")],
    )
    .await;
    let (n, _) = prescribe(
        &app,
        &dr,
        &[line("N02AA01", "Morphin 10mg", 7, 14, "S72.0")],
    )
    .await;
    assert!(n.ends_with("-n"), "{n}");
    let (h, _) = prescribe(
        &app,
        &dr,
        &[line("N05BA01", "Diazepam 5mg", 10, 10, "F41.1")],
    )
    .await;
    assert!(h.ends_with("-h"), "{h}");
    let mut phased = line("N02AA01", "Morphin 10mg", 30, 60, "C34.1");
    phased["dispenseRequest"]["dispenseInterval"] =
        json!({"value": 10, "unit": "ngày", "code": "d"});
    prescribe(&app, &dr, &[phased]).await;
    // Ordinary and narcotic lines of one visit: two prescriptions, two codes.
    let r = try_prescribe(
        &app,
        &dr,
        &[
            line("C08CA01", "Amlodipin 5mg", 5, 5, "S72.0"),
            line("N02AA01", "Morphin 10mg", 5, 10, "S72.0"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let codes: std::collections::HashSet<String> = r.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["resource"]["groupIdentifier"]["value"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(codes.len(), 2, "{codes:?}");
    // Required fields: a line without route, quantity or diagnosis, each named.
    let mut bare = line("C08CA01", "Amlodipin 5mg", 5, 5, "J06.9");
    bare["dosageInstruction"][0]
        .as_object_mut()
        .unwrap()
        .remove("route");
    bare["dispenseRequest"]
        .as_object_mut()
        .unwrap()
        .remove("quantity");
    bare.as_object_mut().unwrap().remove("reasonCode");
    bare["medicationCodeableConcept"] =
        json!({"coding": [{"system": "http://www.whocc.no/atc", "code": "C08CA01"}]});
    let r = try_prescribe(&app, &dr, &[bare]).await;
    r.assert_outcome(422);
    for what in ["route", "quantity", "ICD-10", "by name and strength"] {
        assert!(r.body.contains(what), "{what}: {}", r.body);
    }
    // A prescriber without a licence, a patient without a valid ID.
    let fhir = yba::fhir::Fhir::new(app.store.clone().unwrap(), Default::default());
    fhir.update(
        "Practitioner",
        "dr-nolicence".into(),
        json!({"resourceType": "Practitioner", "id": "dr-nolicence"}),
        None,
    )
    .await
    .unwrap();
    let mut l = line("C08CA01", "Amlodipin 5mg", 5, 5, "J06.9");
    l["requester"] = json!({"reference": "Practitioner/dr-nolicence"});
    let sys = system_token(&app, "system/*.cruds").await;
    let r = try_prescribe(&app, &sys, &[l]).await;
    r.assert_outcome(422);
    assert!(r.body.contains("licence"), "{}", r.body);
    // A doctor signs only their own prescriptions.
    let mut l = line("C08CA01", "Amlodipin 5mg", 5, 5, "J06.9");
    l["requester"] = json!({"reference": "Practitioner/dr-nolicence"});
    try_prescribe(&app, &dr, &[l]).await.assert_outcome(403);
    // A line's groupIdentifier is the prescription code: a hospital's own group id is refused.
    let mut l = line("C08CA01", "Amlodipin 5mg", 5, 5, "J06.9");
    l["groupIdentifier"] = json!({"system": "https://emr.bva.vn/order-group", "value": "G-7"});
    let r = try_prescribe(&app, &dr, &[l]).await;
    r.assert_outcome(422);
    assert!(r.body.contains("carry your own identifier"), "{}", r.body);
    // The server assigns codes.
    let mut l = line("C08CA01", "Amlodipin 5mg", 5, 5, "J06.9");
    l["groupIdentifier"]["value"] = json!("01001AAAAAAA-c");
    let r = as_user(&app, &dr, Method::POST, "MedicationRequest", Some(&l)).await;
    r.assert_outcome(422);
    // A plain POST and a transaction issue too.
    let r = as_user(
        &app,
        &dr,
        Method::POST,
        "MedicationRequest",
        Some(&line("C08CA01", "Amlodipin 5mg", 5, 5, "J06.9")),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        r.json()["groupIdentifier"]["value"]
            .as_str()
            .unwrap()
            .starts_with("01001")
    );
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": line("C08CA01", "Amlodipin 5mg", 5, 5, "J06.9"), "request": {"method": "POST", "url": "MedicationRequest"}}]});
    let r = as_user(&app, &sys, Method::POST, "", Some(&tx)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Narcotics only where there are inpatient beds: not at a commune station.
    fhir.update("Organization", "tram-c".into(),
        json!({"resourceType": "Organization", "id": "tram-c", "name": "Trạm y tế xã C",
            "identifier": [{"system": SID_CODE, "value": "01999"}],
            "type": [{"coding": [{"system": "https://yba.vn/fhir/CodeSystem/facility-level", "code": "commune"}]}]}),
        None).await.unwrap();
    service::create_client(
        app.store.as_ref().unwrap(),
        NewClient {
            client_id: "his-c".into(),
            name: "Trạm C".into(),
            organization: "Organization/tram-c".into(),
            scopes: "system/*.cruds".into(),
            secret: Some(crate::auth::CLIENT_SECRET.into()),
            public_key: None,
        },
    )
    .await
    .unwrap();
    let r = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "his-c"),
            ("client_secret", crate::auth::CLIENT_SECRET),
            ("scope", "system/*.cruds"),
        ],
    )
    .await;
    let tram = r.json()["access_token"].as_str().unwrap().to_string();
    let r = try_prescribe(
        &app,
        &tram,
        &[line("N02AA01", "Morphin 10mg", 5, 10, "S72.0")],
    )
    .await;
    r.assert_outcome(422);
    assert!(r.body.contains("inpatient beds"), "{}", r.body);
    // A patient with neither a citizen ID nor a passport gets no e-prescription.
    fhir.update("Patient", "p-noid".into(),
        json!({"resourceType": "Patient", "id": "p-noid", "name": [{"family": "Lê", "given": ["Bé"]}],
            "gender": "female", "birthDate": "2025-06-01"}), None).await.unwrap();
    fhir.update("Encounter", "e-noid".into(), json!({"resourceType": "Encounter", "id": "e-noid", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p-noid"}, "serviceProvider": {"reference": "Organization/org-a"}}), None).await.unwrap();
    let mut l = line("C08CA01", "Amlodipin 5mg", 5, 5, "J06.9");
    l["subject"] = json!({"reference": "Patient/p-noid"});
    l["encounter"] = json!({"reference": "Encounter/e-noid"});
    let r = try_prescribe(&app, &dr, &[l]).await;
    r.assert_outcome(422);
    assert!(r.body.contains("citizen ID or a passport"), "{}", r.body);
    // A patient whose record the doctor may not see: refused without a word about them.
    let mut l = line("C08CA01", "Amlodipin 5mg", 5, 5, "J06.9");
    l["subject"] = json!({"reference": format!("Patient/{}", crate::auth::PB)});
    l.as_object_mut().unwrap().remove("encounter");
    let r = try_prescribe(&app, &dr, &[l]).await;
    assert!(matches!(r.status, 403 | 404), "{}", r.body);
    assert!(!r.body.contains("citizen"), "{}", r.body);
    // Patients and pharmacists do not prescribe.
    let pt = user_token(&app, crate::auth::CCCD_A).await;
    try_prescribe(&app, &pt, &[line("C08CA01", "A", 5, 5, "J06.9")])
        .await
        .assert_outcome(403);
    // A pharmacist finds the first prescription by its code, in either case, and lists none.
    let ds = user_token(&app, "ds.chi").await;
    as_user(&app, &ds, Method::GET, "MedicationRequest?patient=pa", None)
        .await
        .assert_outcome(403);
    let lower = code.to_ascii_lowercase();
    let r = as_user(
        &app,
        &ds,
        Method::GET,
        &format!("MedicationRequest?group-identifier={lower}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["total"], 1, "{}", r.body);
    // The national layout.
    let r = as_user(
        &app,
        &dr,
        Method::GET,
        &format!("MedicationRequest/$national-export?code={code}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["ma_don_thuoc"], code.as_str());
    assert_eq!(v["loai_don_thuoc"], "c");
    assert_eq!(v["ma_dinh_danh_y_te"], crate::auth::CCCD_A);
    assert_eq!(v["chan_doan"][0]["ma_chan_doan"], "J06.9");
    // Not for pharmacies: it carries the patient's identity.
    as_user(
        &app,
        &ds,
        Method::GET,
        &format!("MedicationRequest/$national-export?code={code}"),
        None,
    )
    .await
    .assert_outcome(403);
    // B's patient sees nothing of A's prescription.
    let pb = user_token(&app, crate::auth::CCCD_B).await;
    as_user(
        &app,
        &pb,
        Method::GET,
        &format!("MedicationRequest/$status?code={code}"),
        None,
    )
    .await
    .assert_outcome(404);
    as_user(
        &app,
        &pb,
        Method::GET,
        &format!("MedicationRequest/{}", ids[0]),
        None,
    )
    .await
    .assert_outcome(404);
    // A sees their own.
    let st = status(&app, &pt, &code).await;
    assert_eq!(param(&st, "status")["valueCode"], "active");
}

async fn issued_prescriptions_are_immutable_replaced_and_cancelled(app: TestApp) {
    rx_world(&app).await;
    let dr = user_token(&app, "dr.an").await;
    let (code, ids) = prescribe(
        &app,
        &dr,
        &[line("C08CA01", "Amlodipin 5mg", 10, 10, "I10")],
    )
    .await;
    // No update, patch or delete of an issued line.
    let cur = as_user(
        &app,
        &dr,
        Method::GET,
        &format!("MedicationRequest/{}", ids[0]),
        None,
    )
    .await
    .json();
    let mut changed = cur.clone();
    changed["dispenseRequest"]["quantity"]["value"] = json!(100);
    let r = as_user(
        &app,
        &dr,
        Method::PUT,
        &format!("MedicationRequest/{}", ids[0]),
        Some(&changed),
    )
    .await;
    r.assert_outcome(422);
    assert!(r.body.contains("immutable"), "{}", r.body);
    as_user(
        &app,
        &dr,
        Method::DELETE,
        &format!("MedicationRequest/{}", ids[0]),
        None,
    )
    .await
    .assert_outcome(422);
    // An EMR that sends the same line twice with If-None-Exist gets the first one back.
    let mut l = line("C08CA01", "Amlodipin 5mg", 5, 5, "J06.9");
    l["identifier"] = json!([{"system": "https://emr.bva.vn/rx-line", "value": "L-1"}]);
    let post = |l: Value| {
        let req = app
            .request(Method::POST, "MedicationRequest")
            .bearer_auth(&dr)
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", "identifier=https://emr.bva.vn/rx-line|L-1")
            .body(l.to_string());
        app.send(req)
    };
    let first = post(l.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = post(l).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(first.json()["id"], again.json()["id"]);
    assert_eq!(
        first.json()["groupIdentifier"],
        again.json()["groupIdentifier"]
    );
    // A correction replaces it: the old one is cancelled in the same transaction.
    let mut fixed = line("C08CA01", "Amlodipin 5mg", 20, 20, "I10");
    fixed["priorPrescription"] = json!({"reference": format!("MedicationRequest/{}", ids[0])});
    let (new_code, _) = prescribe(&app, &dr, &[fixed.clone()]).await;
    assert_ne!(new_code, code);
    let st = status(&app, &dr, &code).await;
    assert_eq!(param(&st, "status")["valueCode"], "replaced");
    assert_eq!(param(&st, "replacedBy")["valueString"], new_code.as_str());
    let old = as_user(
        &app,
        &dr,
        Method::GET,
        &format!("MedicationRequest/{}", ids[0]),
        None,
    )
    .await
    .json();
    assert_eq!(old["status"], "cancelled");
    // A replaced prescription is not replaced twice, nor dispensed.
    let r = try_prescribe(&app, &dr, &[fixed]).await;
    r.assert_outcome(422);
    let ds = user_token(&app, "ds.chi").await;
    as_user(
        &app,
        &ds,
        Method::POST,
        "MedicationDispense",
        Some(&dispense(&ids[0], 1)),
    )
    .await
    .assert_outcome(422);
    // Cancel: a reason is required; the prescriber cancels; then nothing is dispensed.
    let cancel = |reason: Option<&str>| {
        let mut p = vec![json!({"name": "code", "valueString": new_code})];
        if let Some(r) = reason {
            p.push(json!({"name": "reason", "valueString": r}));
        }
        json!({"resourceType": "Parameters", "parameter": p})
    };
    as_user(
        &app,
        &dr,
        Method::POST,
        "MedicationRequest/$cancel",
        Some(&cancel(None)),
    )
    .await
    .assert_outcome(400);
    as_user(
        &app,
        &ds,
        Method::POST,
        "MedicationRequest/$cancel",
        Some(&cancel(Some("x"))),
    )
    .await
    .assert_outcome(403);
    let r = as_user(
        &app,
        &dr,
        Method::POST,
        "MedicationRequest/$cancel",
        Some(&cancel(Some("sai liều"))),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let st = status(&app, &dr, &new_code).await;
    assert_eq!(param(&st, "status")["valueCode"], "cancelled");
    assert_eq!(param(&st, "reason")["valueString"], "sai liều");
    as_user(
        &app,
        &dr,
        Method::POST,
        "MedicationRequest/$cancel",
        Some(&cancel(Some("again"))),
    )
    .await
    .assert_outcome(422);
}

async fn pharmacies_dispense_within_what_was_prescribed(app: TestApp) {
    rx_world(&app).await;
    let dr = user_token(&app, "dr.an").await;
    let ds = user_token(&app, "ds.chi").await;
    let (code, ids) = prescribe(
        &app,
        &dr,
        &[line("C08CA01", "Amlodipin 5mg", 10, 10, "I10")],
    )
    .await;
    // Partial dispensing: 4, then 6; then nothing more.
    let r = as_user(
        &app,
        &ds,
        Method::POST,
        "MedicationDispense",
        Some(&dispense(&ids[0], 4)),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(dispensed(&status(&app, &ds, &code).await), 4.0);
    as_user(
        &app,
        &ds,
        Method::POST,
        "MedicationDispense",
        Some(&dispense(&ids[0], 7)),
    )
    .await
    .assert_outcome(409);
    let r = as_user(
        &app,
        &ds,
        Method::POST,
        "MedicationDispense",
        Some(&dispense(&ids[0], 6)),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let st = status(&app, &dr, &code).await;
    assert_eq!(dispensed(&st), 10.0);
    assert_eq!(param(&st, "status")["valueCode"], "completed");
    // The line itself says so in the record.
    let mr = as_user(
        &app,
        &dr,
        Method::GET,
        &format!("MedicationRequest/{}", ids[0]),
        None,
    )
    .await;
    assert_eq!(mr.json()["status"], "completed", "{}", mr.body);
    as_user(
        &app,
        &ds,
        Method::POST,
        "MedicationDispense",
        Some(&dispense(&ids[0], 1)),
    )
    .await
    .assert_outcome(409);
    // A substitution is recorded, or refused.
    let (_, ids2) = prescribe(
        &app,
        &dr,
        &[line("C08CA01", "Amlodipin 5mg", 10, 10, "I10")],
    )
    .await;
    let mut other = dispense(&ids2[0], 2);
    other["medicationCodeableConcept"] = json!({"coding": [{"system": "http://www.whocc.no/atc", "code": "C08CA02"}], "text": "Felodipin"});
    as_user(&app, &ds, Method::POST, "MedicationDispense", Some(&other))
        .await
        .assert_outcome(422);
    other["substitution"] = json!({"wasSubstituted": true, "reason": [{"text": "hết thuốc"}]});
    let r = as_user(&app, &ds, Method::POST, "MedicationDispense", Some(&other)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    // Quantities count in the prescription's unit.
    let mut boxes = dispense(&ids2[0], 1);
    boxes["quantity"] = json!({"value": 1, "unit": "hộp"});
    let refused = as_user(&app, &ds, Method::POST, "MedicationDispense", Some(&boxes)).await;
    refused.assert_outcome(422);
    assert!(refused.body.contains("unit"), "{}", refused.body);
    // A prescription dispensed in part is not replaced (the dispensed part would be prescribed
    // twice): it is cancelled and a new one issued.
    let mut fixed = line("C08CA01", "Amlodipin 5mg", 10, 10, "I10");
    fixed["priorPrescription"] = json!({"reference": format!("MedicationRequest/{}", ids2[0])});
    let refused = try_prescribe(&app, &dr, &[fixed]).await;
    refused.assert_outcome(422);
    assert!(
        refused.body.contains("dispensed in part"),
        "{}",
        refused.body
    );
    // A dispense stands: no change, no delete.
    let id = r.json()["id"].as_str().unwrap().to_string();
    as_user(
        &app,
        &ds,
        Method::DELETE,
        &format!("MedicationDispense/{id}"),
        None,
    )
    .await
    .assert_outcome(422);
    // The patient sees what was dispensed.
    let pt = user_token(&app, crate::auth::CCCD_A).await;
    let r = as_user(
        &app,
        &pt,
        Method::GET,
        &format!(
            "MedicationDispense?prescription=MedicationRequest/{}",
            ids[0]
        ),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["entry"].as_array().map_or(0, Vec::len),
        2,
        "{}",
        r.body
    );
}

/// Twenty pharmacies posting the same dispense at once: each answer's status and body.
async fn race(app: &TestApp, token: &str, body: &Value) -> Vec<(u16, String)> {
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let req = app
                .request(Method::POST, "MedicationDispense")
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .body(body.to_string());
            tokio::spawn(async move {
                let r = req.send().await.expect("sent");
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("joined"));
    }
    out
}

async fn twenty_pharmacies_dispense_one_prescription_once(app: TestApp) {
    rx_world(&app).await;
    let dr = user_token(&app, "dr.an").await;
    let ds = user_token(&app, "ds.chi").await;
    let (code, ids) = prescribe(
        &app,
        &dr,
        &[line("C08CA01", "Amlodipin 5mg", 10, 10, "I10")],
    )
    .await;
    // Twenty dispenses of the whole quantity at the same instant: exactly one succeeds.
    let body = dispense(&ids[0], 10);
    let mut ok = 0;
    for (status, text) in race(&app, &ds, &body).await {
        match status {
            201 => ok += 1,
            409 => assert!(text.contains("OperationOutcome"), "{text}"),
            s => panic!("{s}: {text}"),
        }
    }
    assert_eq!(ok, 1);
    let st = status(&app, &dr, &code).await;
    assert_eq!(dispensed(&st), 10.0);
    // And twenty of 1 unit on a prescription of 10: exactly ten succeed.
    let (code, ids) = prescribe(
        &app,
        &dr,
        &[line("C08CA01", "Amlodipin 5mg", 10, 10, "I10")],
    )
    .await;
    let body = dispense(&ids[0], 1);
    let ok = race(&app, &ds, &body)
        .await
        .iter()
        .filter(|(s, _)| *s == 201)
        .count();
    assert_eq!(ok, 10);
    assert_eq!(dispensed(&status(&app, &dr, &code).await), 10.0);
    // Twenty of 3 units on a prescription of 10: three succeed, and the last unit stays (the
    // prescription is still active: only what is left decides).
    let (code, ids) = prescribe(
        &app,
        &dr,
        &[line("C08CA01", "Amlodipin 5mg", 10, 10, "I10")],
    )
    .await;
    let ok = race(&app, &ds, &dispense(&ids[0], 3))
        .await
        .iter()
        .filter(|(s, _)| *s == 201)
        .count();
    assert_eq!(ok, 3);
    let st = status(&app, &dr, &code).await;
    assert_eq!(dispensed(&st), 9.0);
    assert_eq!(param(&st, "status")["valueCode"], "active");
}

async fn expired_prescriptions_are_not_dispensed(app: TestApp) {
    rx_world(&app).await;
    let dr = user_token(&app, "dr.an").await;
    let ds = user_token(&app, "ds.chi").await;
    let (code, ids) = prescribe(
        &app,
        &dr,
        &[line("C08CA01", "Amlodipin 5mg", 10, 10, "I10")],
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = as_user(
        &app,
        &ds,
        Method::POST,
        "MedicationDispense",
        Some(&dispense(&ids[0], 1)),
    )
    .await;
    r.assert_outcome(422);
    assert!(r.body.contains("expired"), "{}", r.body);
    assert_eq!(
        param(&status(&app, &ds, &code).await, "status")["valueCode"],
        "expired"
    );
}
