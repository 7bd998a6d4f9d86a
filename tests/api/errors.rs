//! A client's mistake gets a 4xx with an OperationOutcome that says what and where, and never
//! changes stored data.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, patient, spawn_postgres_with, spawn_sqlite_with};

async fn post_raw(app: &TestApp, path: &str, ct: &str, body: &str) -> crate::helpers::Resp {
    app.send(
        app.request(Method::POST, path)
            .header("content-type", ct)
            .body(body.to_string()),
    )
    .await
}

async fn malformed_json_is_400_with_its_position(app: TestApp) {
    let r = post_raw(
        &app,
        "Patient",
        "application/fhir+json",
        "{\"resourceType\": \"Patient\", \"active\": tru}",
    )
    .await;
    let oo = r.assert_outcome(400);
    let d = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(d.contains("line 1"), "{d}");
    post_raw(
        &app,
        "Patient",
        "application/fhir+json",
        "{\"resourceType\": \"Patient\"",
    )
    .await
    .assert_outcome(400);
    post_raw(&app, "Patient", "application/fhir+json", "")
        .await
        .assert_outcome(400);
    post_raw(&app, "Patient", "application/fhir+json", "[1,2]")
        .await
        .assert_outcome(400);
    assert_eq!(app.version_count("Patient").await, 0);
}

async fn each_problem_is_named_at_its_fhirpath(app: TestApp) {
    let body = json!({
        "resourceType": "Patient",
        "birthDate": "not-a-date",
        "active": "yes",
        "gender": ["male"],
        "name": [{"family": "Trần", "given": ["Thị", 7]}],
        "telecom": [{"system": "phone", "value": "0901234567", "rank": 0}],
        "nickname": "Bé",
        "deceasedDateTime": "2024-02-30T10:00:00+07:00",
        "contained": [{"resourceType": "Organization", "id": "o1", "active": 1}]
    });
    let r = app.post_json("Patient", &body).await;
    r.assert_outcome(400);
    let at = r.issue_expressions();
    for want in [
        "Patient.birthDate",
        "Patient.active",
        "Patient.gender",
        "Patient.name[0].given[1]",
        "Patient.telecom[0].rank",
        "Patient.nickname",
        "Patient.deceased.ofType(dateTime)",
        "Patient.contained[0].active",
    ] {
        assert!(at.iter().any(|a| a == want), "{want} not in {at:?}");
    }
    assert_eq!(app.version_count("Patient").await, 0);
}

async fn required_elements_and_choice_types_are_enforced(app: TestApp) {
    let obs = json!({"resourceType": "Observation", "code": {"text": "Mạch"}, "valueQuantity": {"value": 72}, "valueString": "72"});
    let r = app.post_json("Observation", &obs).await;
    r.assert_outcome(400);
    let at = r.issue_expressions();
    assert!(at.contains(&"Observation.status".to_string()), "{at:?}");
    assert!(at.contains(&"Observation.value".to_string()), "{at:?}");
    let ok = json!({"resourceType": "Observation", "status": "final", "code": {"text": "Mạch"}, "valueQuantity": {"value": 72.0, "unit": "/min"}});
    assert_eq!(app.post_json("Observation", &ok).await.status, 201);
}

async fn the_body_must_match_the_url(app: TestApp) {
    // resourceType differs from the URL's type.
    let r = app.post_json("Observation", &patient("001090000011")).await;
    assert_eq!(
        r.assert_outcome(400)["issue"][0]["expression"][0],
        "Patient.resourceType"
    );
    // Update: the body's id differs from the URL's, or is missing.
    let mut p = patient("001090000011");
    p["id"] = json!("a");
    assert_eq!(
        app.put_json("Patient/b", &p).await.assert_outcome(400)["issue"][0]["expression"][0],
        "Patient.id"
    );
    assert_eq!(
        app.put_json("Patient/b", &patient("001090000011"))
            .await
            .assert_outcome(400)["issue"][0]["expression"][0],
        "Patient.id"
    );
    // An id that is not a valid FHIR id.
    let mut bad = patient("001090000011");
    bad["id"] = json!("has space");
    app.put_json("Patient/has%20space", &bad)
        .await
        .assert_outcome(400);
    // Not a resource type at all.
    post_raw(
        &app,
        "Patient",
        "application/fhir+json",
        "{\"resourceType\": \"Patientt\"}",
    )
    .await
    .assert_outcome(400);
    assert_eq!(app.version_count("Patient").await, 0);
}

async fn http_errors_are_outcomes_too(app: TestApp) {
    // Unknown resource type: 404.
    app.get("Patientt/1").await.assert_outcome(404);
    app.post_json("NotAType", &json!({"resourceType": "NotAType"}))
        .await
        .assert_outcome(404);
    // Wrong method: 405.
    app.send(app.request(Method::PATCH, "Patient"))
        .await
        .assert_outcome(405);
    app.send(app.request(Method::DELETE, "metadata"))
        .await
        .assert_outcome(405);
    app.send(app.request(Method::POST, "Patient/1/_history"))
        .await
        .assert_outcome(405);
    // Unsupported media type: 415.
    post_raw(&app, "Patient", "text/plain", "hello")
        .await
        .assert_outcome(415);
    post_raw(&app, "Patient", "application/x-www-form-urlencoded", "a=b")
        .await
        .assert_outcome(415);
    // Nothing acceptable: 406; unknown _format: 406.
    app.send(
        app.request(Method::GET, "metadata")
            .header("accept", "application/pdf"),
    )
    .await
    .assert_outcome(406);
    app.get("metadata?_format=yaml").await.assert_outcome(406);
    // Nothing served outside the FHIR base.
    app.get("/nothing-here").await.assert_outcome(404);
    // Bad version id and bad history parameters.
    app.get("Patient/x/_history/abc").await.assert_outcome(404);
    app.get("Patient/_history?_since=yesterday")
        .await
        .assert_outcome(400);
    app.get("Patient/_history?_count=-1")
        .await
        .assert_outcome(400);
    app.get("Patient/_history?colour=blue")
        .await
        .assert_outcome(400);
    // An unknown search parameter with strict handling, and conditional criteria it cannot
    // evaluate (conditions are always strict: ignoring a criterion would match too much).
    app.send(
        app.request(Method::GET, "Patient?colour=blue")
            .header("prefer", "handling=strict"),
    )
    .await
    .assert_outcome(400);
    let c = app
        .send(
            app.request(Method::POST, "Patient")
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", "colour=blue")
                .body(patient("001090000012").to_string()),
        )
        .await;
    c.assert_outcome(400);
    assert_eq!(app.version_count("Patient").await, 0);
}

async fn xml_problems_are_located_too(app: TestApp) {
    let cases = [
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><foo value=\"x\"/></Patient>",
            "Patient.foo",
        ),
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><birthDate value=\"30/04/1990\"/></Patient>",
            "Patient.birthDate",
        ),
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"yes\"/></Patient>",
            "Patient.active",
        ),
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><name><given value=\"a\"/><bogus/></name></Patient>",
            "Patient.name[0].bogus",
        ),
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"/><active value=\"false\"/></Patient>",
            "Patient.active",
        ),
    ];
    for (xml, at) in cases {
        let r = app
            .send(
                app.request(Method::POST, "Patient")
                    .header("content-type", "application/fhir+xml")
                    .header("accept", "application/fhir+json")
                    .body(xml),
            )
            .await;
        r.assert_outcome(400);
        assert!(
            r.issue_expressions().iter().any(|e| e == at),
            "{at} in {}",
            r.body
        );
    }
    // Malformed XML, and an unclosed root: 400, answered in XML when no Accept is given.
    for xml in [
        "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"/>",
        "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"></Patient>",
        "not xml at all <",
    ] {
        let r = app
            .send(
                app.request(Method::POST, "Patient")
                    .header("content-type", "application/fhir+xml")
                    .body(xml),
            )
            .await;
        assert_eq!(r.status, 400, "{xml}: {}", r.body);
        assert!(r.body.contains("<OperationOutcome"), "{}", r.body);
    }
    assert_eq!(app.version_count("Patient").await, 0);
}

crate::on_both_databases!(
    malformed_json_is_400_with_its_position,
    each_problem_is_named_at_its_fhirpath,
    required_elements_and_choice_types_are_enforced,
    the_body_must_match_the_url,
    http_errors_are_outcomes_too,
    xml_problems_are_located_too,
);

async fn oversized_bodies_are_413_and_unread(app: TestApp) {
    let mut p = patient("001090000013");
    p["name"][0]["text"] = json!("x".repeat(5000));
    app.post_json("Patient", &p).await.assert_outcome(413);
    // Also without a Content-Length (a chunked body).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(p.to_string().into_bytes())];
    let stream = futures_util::stream::iter(chunks);
    let r = app
        .send(
            app.request(Method::POST, "Patient")
                .header("content-type", "application/fhir+json")
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await;
    r.assert_outcome(413);
    assert_eq!(app.version_count("Patient").await, 0);
    assert_eq!(
        app.post_json("Patient", &patient("001090000013"))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn oversized_bodies_are_413_on_sqlite() {
    oversized_bodies_are_413_and_unread(spawn_sqlite_with(|c| c.max_body = 4096).await).await;
}

#[tokio::test]
async fn oversized_bodies_are_413_on_postgres() {
    if let Some(app) = spawn_postgres_with(|c| c.max_body = 4096).await {
        oversized_bodies_are_413_and_unread(app).await;
    }
}
