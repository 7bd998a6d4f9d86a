//! Vietnamese identifiers on write: citizen IDs and health-insurance card codes are checked,
//! and a Patient's citizen ID must agree with its birth date and gender.

use serde_json::{Value, json};

use crate::helpers::TestApp;

const CCCD: &str = "http://fhir.ehealth.gov.vn/core/sid/citizen_id";
const BHYT: &str = "http://fhir.ehealth.gov.vn/core/sid/insurance_number";

fn patient(ids: Value, gender: &str, birth: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": ids, "gender": gender, "birthDate": birth,
        "name": [{"family": "Trần", "given": ["Thị", "Mai"]}]})
}

/// The single error of a refused Patient: its diagnostics and location.
async fn refused(app: &TestApp, body: &Value) -> (String, String) {
    assert_eq!(body["resourceType"], "Patient");
    refused_as(app, body).await
}

async fn citizen_ids_are_checked_on_write(app: TestApp) {
    // Hà Nội, 2000s female, born 2003; a valid card of a pupil (HS), level 4.
    let ok = patient(
        json!([{"system": BHYT, "value": "HS4010123456789"}, {"system": CCCD, "value": "001303012345"}]),
        "female",
        "2003-07-15",
    );
    assert_eq!(app.post_json("Patient", &ok).await.status, 201);

    let (msg, at) = refused(
        &app,
        &patient(
            json!([{"system": CCCD, "value": "0013030123"}]),
            "female",
            "2003-07-15",
        ),
    )
    .await;
    assert!(msg.contains("12 digits"), "{msg}");
    assert_eq!(at, "Patient.identifier[0].value");

    let (msg, at) = refused(&app, &patient(json!([{"system": CCCD, "value": "001303012345"}, {"system": BHYT, "value": "ZZ4010123456789"}]), "female", "2003-07-15")).await;
    assert!(msg.contains("beneficiary group"), "{msg}");
    assert_eq!(at, "Patient.identifier[1].value");
    // A citizen ID of a province outside the table (registered abroad?) is accepted.
    assert_eq!(
        app.post_json(
            "Patient",
            &patient(
                json!([{"system": CCCD, "value": "003303012345"}]),
                "female",
                "2003-07-15"
            )
        )
        .await
        .status,
        201
    );
}

async fn a_citizen_id_must_agree_with_birth_date_and_gender(app: TestApp) {
    let (msg, at) = refused(
        &app,
        &patient(
            json!([{"system": CCCD, "value": "001303012345"}]),
            "female",
            "2004-01-01",
        ),
    )
    .await;
    assert!(msg.contains("2003") && msg.contains("2004"), "{msg}");
    assert_eq!(at, "Patient.identifier[0].value");
    let (msg, _) = refused(&app, &patient(json!([{"system": "urn:other", "value": "x"}, {"system": CCCD, "value": "001303012345"}]), "male", "2003-01-01")).await;
    assert!(msg.contains("female") && msg.contains("male"), "{msg}");
    // In a transaction the entry is named, and nothing is written.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(json!([{"system": CCCD, "value": "079090000001"}]), "male", "1990-01-01"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient(json!([{"system": CCCD, "value": "079090000002"}]), "female", "1990-01-01"),
         "request": {"method": "POST", "url": "Patient"}}]});
    let r = app.post_json("", &bundle).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("Bundle.entry[1]"), "{}", r.body);
    let b = app.get("Patient?identifier=079090000001").await.json();
    assert_eq!(b["total"], 0, "{b}");
    // Other genders and partial dates are not contradicted; a date gives its year.
    assert_eq!(
        app.post_json(
            "Patient",
            &patient(
                json!([{"system": CCCD, "value": "001303012346"}]),
                "other",
                "2003"
            )
        )
        .await
        .status,
        201
    );
}

/// The single error of a refused write of any type: its diagnostics and location.
async fn refused_as(app: &TestApp, body: &Value) -> (String, String) {
    let ty = body["resourceType"].as_str().unwrap();
    let o = app.post_json(ty, body).await.assert_outcome(400);
    let issues = o["issue"].as_array().unwrap();
    assert_eq!(issues.len(), 1, "{o}");
    assert_eq!(issues[0]["code"], "value");
    (
        issues[0]["diagnostics"].as_str().unwrap().to_string(),
        issues[0]["expression"][0].as_str().unwrap().to_string(),
    )
}

async fn facility_licence_and_prescription_codes_are_checked(app: TestApp) {
    const FACILITY: &str = "http://fhir.ehealth.gov.vn/core/sid/provider-code";
    const LICENCE: &str = "http://fhir.ehealth.gov.vn/core/sid/provider-medical-license-number";
    const RX: &str = "https://yba.vn/fhir/sid/prescription-code";
    let org = |code: &str| {
        json!({"resourceType": "Organization", "name": "Bệnh viện Bạch Mai",
        "identifier": [{"system": FACILITY, "value": code}]})
    };
    assert_eq!(
        app.post_json("Organization", &org("01001")).await.status,
        201
    );
    let (msg, at) = refused_as(&app, &org("0100")).await;
    assert!(msg.contains("five letters or digits"), "{msg}");
    assert_eq!(at, "Organization.identifier[0].value");

    let doctor = |licence: &str| {
        json!({"resourceType": "Practitioner", "name": [{"family": "Lê"}],
        "identifier": [{"system": LICENCE, "value": licence}]})
    };
    assert_eq!(
        app.post_json("Practitioner", &doctor("001234/BYT-GPHN"))
            .await
            .status,
        201
    );
    let (_, at) = refused_as(&app, &doctor("0012 34/BYT")).await;
    assert_eq!(at, "Practitioner.identifier[0].value");

    let line = |code: &str| {
        json!({"resourceType": "MedicationRequest", "status": "active",
        "intent": "order", "subject": {"reference": "Patient/x"},
        "medicationCodeableConcept": {"text": "Paracetamol 500 mg"},
        "groupIdentifier": {"system": RX, "value": code}})
    };
    // A well-formed code is still not the client's to choose: the server assigns codes when
    // it issues (issue 6).
    let r = app
        .post_json("MedicationRequest", &line("25366VMA336R-c"))
        .await;
    r.assert_outcome(422);
    assert!(r.body.contains("server assigns"), "{}", r.body);
    let (msg, at) = refused_as(&app, &line("25366VMA336R-x")).await;
    assert!(msg.contains("TT 26/2025"), "{msg}");
    assert_eq!(at, "MedicationRequest.groupIdentifier.value");
}

crate::on_both_databases!(
    citizen_ids_are_checked_on_write,
    a_citizen_id_must_agree_with_birth_date_and_gender,
    facility_licence_and_prescription_codes_are_checked,
);
