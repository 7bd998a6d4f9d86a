//! The teleconsultation workflow (issue 7, part 1) through HTTP with auth on, on both
//! databases: a commune station asks, the hospital accepts or declines, the doctor holds and
//! ends it, and it is all in the patient's record, seen only by those who may.

use reqwest::Method;
use serde_json::{Value, json};

use crate::auth::{CCCD_A, CCCD_B, PB, PW, as_user, system_token, user_token, world};
use crate::helpers::TestApp;
use yba::auth::Role;
use yba::auth::service::{self, NewUser};

crate::on_both_databases!(@with crate::helpers::with_auth;
    a_station_consults_a_hospital_and_it_lands_in_the_record,
    requests_are_answered_only_by_the_hospital_asked,
);

/// The auth world plus commune station C, where the patient was seen, and its health worker.
pub(crate) async fn station_world(app: &TestApp) {
    world(app).await;
    let store = app.store.clone().unwrap();
    let fhir = yba::fhir::Fhir::new(store.clone(), Default::default());
    fhir.update(
        "Organization",
        "tram-c".into(),
        json!({"resourceType": "Organization", "id": "tram-c", "name": "Trạm y tế xã C"}),
        None,
    )
    .await
    .unwrap();
    for (ty, id, v) in [
        (
            "Practitioner",
            "yt-binh",
            json!({"resourceType": "Practitioner", "id": "yt-binh", "name": [{"family": "Lê", "given": ["Bình"]}]}),
        ),
        (
            "Practitioner",
            "dr-an",
            json!({"resourceType": "Practitioner", "id": "dr-an", "name": [{"family": "Trần", "given": ["An"]}]}),
        ),
        (
            "Encounter",
            "ec",
            json!({"resourceType": "Encounter", "id": "ec", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/pa"}, "serviceProvider": {"reference": "Organization/tram-c"}}),
        ),
    ] {
        fhir.update(ty, id.into(), v, None).await.unwrap();
    }
    fhir.update(
        "Practitioner",
        "sv-hoa".into(),
        json!({"resourceType": "Practitioner", "id": "sv-hoa", "name": [{"family": "Hoa"}]}),
        None,
    )
    .await
    .unwrap();
    // The station's health worker; a resident of the hospital who may observe.
    for (user, practitioner, org) in [
        ("yt.binh", "Practitioner/yt-binh", "Organization/tram-c"),
        ("sv.hoa", "Practitioner/sv-hoa", "Organization/org-a"),
    ] {
        service::create_user(
            &store,
            NewUser {
                username: user.into(),
                role: Role::Practitioner,
                fhir_user: Some(practitioner.into()),
                organization: Some(org.into()),
            },
            PW,
        )
        .await
        .unwrap();
    }
}

pub(crate) fn ask(patient: &str) -> Value {
    json!({"patient": patient, "hospital": "Organization/org-a",
        "reason": "Đau ngực, điện tâm đồ bất thường", "specialty": "Tim mạch",
        "urgency": "urgent", "start": "2026-11-25T09:00:00+07:00", "minutes": 30})
}

pub(crate) async fn api(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> crate::helpers::Resp {
    let mut req = app
        .request(method, &format!("/api/consultations{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    app.send(req).await
}

fn ids(list: &Value) -> Vec<String> {
    list["consultations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

async fn a_station_consults_a_hospital_and_it_lands_in_the_record(app: TestApp) {
    station_world(&app).await;
    let yt = user_token(&app, "yt.binh").await;
    let dr = user_token(&app, "dr.an").await;
    let pa = user_token(&app, CCCD_A).await;
    // The station asks.
    let r = api(&app, &yt, Method::POST, "", Some(&ask("Patient/pa"))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let c = r.json();
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(c["state"], "requested");
    assert_eq!(c["station"], "Organization/tram-c");
    assert_eq!(c["hospital"], "Organization/org-a");
    assert_eq!(c["patient"], "Patient/pa");
    // Bad requests say what is wrong, and write nothing.
    for (bad, says) in [
        (
            json!({"patient": "Patient/pa", "hospital": "Organization/org-a", "reason": "", "start": "2026-11-25T09:00:00+07:00"}),
            "clinical question",
        ),
        (
            json!({"patient": "Patient/pa", "hospital": "Organization/org-a", "reason": "x", "urgency": "soon", "start": "2026-11-25T09:00:00+07:00"}),
            "urgency",
        ),
        (
            json!({"patient": "Patient/pa", "hospital": "Organization/org-a", "reason": "x", "start": "tomorrow"}),
            "start",
        ),
        (
            json!({"patient": "Patient/pa", "hospital": "Organization/org-a", "reason": "x", "start": "2026-11-25T09:00:00+07:00", "color": "red"}),
            "color",
        ),
    ] {
        let r = api(&app, &yt, Method::POST, "", Some(&bad)).await;
        r.assert_outcome(400);
        assert!(r.body.contains(says), "{says}: {}", r.body);
    }
    // A station asks only about patients it may already see, of hospitals that exist.
    api(
        &app,
        &yt,
        Method::POST,
        "",
        Some(&ask(&format!("Patient/{PB}"))),
    )
    .await
    .assert_outcome(404);
    let mut nowhere = ask("Patient/pa");
    nowhere["hospital"] = json!("Organization/no-such-hospital");
    api(&app, &yt, Method::POST, "", Some(&nowhere))
        .await
        .assert_outcome(404);
    // Patients do not ask for consultations.
    api(&app, &pa, Method::POST, "", Some(&ask("Patient/pa")))
        .await
        .assert_outcome(403);
    // Listings: the station's, the hospital's (by state and day).
    let r = api(&app, &yt, Method::GET, "?station=Organization/tram-c", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ids(&r.json()), vec![id.as_str()]);
    let r = api(
        &app,
        &dr,
        Method::GET,
        "?hospital=Organization/org-a&state=requested&date=2026-11-25",
        None,
    )
    .await;
    assert_eq!(ids(&r.json()), vec![id.as_str()], "{}", r.body);
    let r = api(
        &app,
        &dr,
        Method::GET,
        "?hospital=Organization/org-a&state=accepted",
        None,
    )
    .await;
    assert!(ids(&r.json()).is_empty(), "{}", r.body);
    api(&app, &dr, Method::GET, "", None)
        .await
        .assert_outcome(400);
    // The hospital accepts, its doctor taking it; only once.
    let r = api(
        &app,
        &dr,
        Method::POST,
        &format!("/{id}/accept"),
        Some(&json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "accepted");
    assert_eq!(r.json()["doctor"], "Practitioner/dr-an");
    api(
        &app,
        &dr,
        Method::POST,
        &format!("/{id}/accept"),
        Some(&json!({})),
    )
    .await
    .assert_outcome(409);
    let r = api(
        &app,
        &dr,
        Method::GET,
        "?doctor=Practitioner/dr-an&state=accepted",
        None,
    )
    .await;
    assert_eq!(ids(&r.json()), vec![id.as_str()], "{}", r.body);
    // Who may enter the room, and as what.
    let room = format!("/{id}/join");
    let r = api(&app, &dr, Method::POST, &room, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["role"], "moderator");
    assert_eq!(r.json()["participant"], "Practitioner/dr-an");
    let token = r.json()["token"].as_str().unwrap().to_string();
    assert_eq!(
        api(&app, &yt, Method::POST, &room, None).await.json()["role"],
        "publisher"
    );
    api(&app, &pa, Method::POST, &room, None)
        .await
        .assert_outcome(403);
    let pb = user_token(&app, CCCD_B).await;
    api(&app, &pb, Method::POST, &room, None)
        .await
        .assert_outcome(404);
    let sv = user_token(&app, "sv.hoa").await;
    api(&app, &sv, Method::POST, &room, None)
        .await
        .assert_outcome(403);
    // Only the doctor invites; the patient and an observer then join.
    let invite = json!({"patient": true, "observer": "Practitioner/sv-hoa"});
    api(
        &app,
        &yt,
        Method::POST,
        &format!("/{id}/invite"),
        Some(&invite),
    )
    .await
    .assert_outcome(403);
    let r = api(
        &app,
        &dr,
        Method::POST,
        &format!("/{id}/invite"),
        Some(&invite),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        api(&app, &pa, Method::POST, &room, None).await.json()["role"],
        "publisher"
    );
    assert_eq!(
        api(&app, &sv, Method::POST, &room, None).await.json()["role"],
        "subscriber"
    );
    // A join token is not an access token.
    let r = as_user(&app, &token, Method::GET, "Patient/pa", None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    // Only the doctor holds it; it cannot end before it starts.
    api(&app, &yt, Method::POST, &format!("/{id}/start"), None)
        .await
        .assert_outcome(403);
    let end = json!({"conclusion": "Nghi nhồi máu cơ tim: chuyển tuyến ngay", "outcome": "refer"});
    api(&app, &dr, Method::POST, &format!("/{id}/end"), Some(&end))
        .await
        .assert_outcome(409);
    let r = api(&app, &dr, Method::POST, &format!("/{id}/start"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "in-progress");
    let encounter = r.json()["encounter"].as_str().unwrap().to_string();
    let e = as_user(&app, &dr, Method::GET, &encounter, None)
        .await
        .json();
    assert_eq!(e["status"], "in-progress");
    assert_eq!(e["class"]["code"], "VR");
    // A conclusion is required.
    api(
        &app,
        &dr,
        Method::POST,
        &format!("/{id}/end"),
        Some(&json!({"conclusion": " ", "outcome": "refer"})),
    )
    .await
    .assert_outcome(400);
    let r = api(&app, &dr, Method::POST, &format!("/{id}/end"), Some(&end)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = r.json();
    assert_eq!(done["state"], "finished");
    // In the patient's record: the finished virtual encounter, the conclusion, the referral.
    let e = as_user(&app, &pa, Method::GET, &encounter, None)
        .await
        .json();
    assert_eq!(e["status"], "finished");
    assert!(e["period"]["end"].is_string(), "{e}");
    let ci = as_user(
        &app,
        &pa,
        Method::GET,
        done["conclusion"].as_str().unwrap(),
        None,
    )
    .await
    .json();
    assert_eq!(ci["summary"], "Nghi nhồi máu cơ tim: chuyển tuyến ngay");
    assert_eq!(ci["encounter"]["reference"], encounter.as_str());
    let referral = as_user(
        &app,
        &pa,
        Method::GET,
        done["referral"].as_str().unwrap(),
        None,
    )
    .await
    .json();
    assert_eq!(referral["performer"][0]["reference"], "Organization/org-a");
    let r = as_user(
        &app,
        &pa,
        Method::GET,
        "Encounter?class=VR&status=finished",
        None,
    )
    .await;
    assert_eq!(r.json()["total"], 1, "{}", r.body);
    assert!(
        r.body.contains(&encounter.replace("Encounter/", "")),
        "{}",
        r.body
    );
    // The patient sees their consultation; another patient does not.
    assert_eq!(
        api(&app, &pa, Method::GET, &format!("/{id}"), None)
            .await
            .status,
        200
    );
    let pb = user_token(&app, CCCD_B).await;
    api(&app, &pb, Method::GET, &format!("/{id}"), None)
        .await
        .assert_outcome(404);
    let r = api(&app, &pb, Method::GET, "?patient=Patient/pa", None).await;
    assert!(ids(&r.json()).is_empty(), "{}", r.body);
}

async fn requests_are_answered_only_by_the_hospital_asked(app: TestApp) {
    station_world(&app).await;
    let yt = user_token(&app, "yt.binh").await;
    let sys = system_token(&app, "system/*.cruds").await;
    let r = api(&app, &yt, Method::POST, "", Some(&ask("Patient/pa"))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    // No room before the hospital accepts.
    api(&app, &yt, Method::POST, &format!("/{id}/join"), None)
        .await
        .assert_outcome(409);
    // The station cannot answer its own request.
    api(
        &app,
        &yt,
        Method::POST,
        &format!("/{id}/decline"),
        Some(&json!({"reason": "x"})),
    )
    .await
    .assert_outcome(403);
    // The hospital's system declines, with a reason.
    api(
        &app,
        &sys,
        Method::POST,
        &format!("/{id}/decline"),
        Some(&json!({"reason": ""})),
    )
    .await
    .assert_outcome(400);
    let r = api(
        &app,
        &sys,
        Method::POST,
        &format!("/{id}/decline"),
        Some(&json!({"reason": "Không có bác sĩ tim mạch trực"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "declined");
    assert_eq!(r.json()["declined"], "Không có bác sĩ tim mạch trực");
    // A declined consultation is not held.
    api(
        &app,
        &sys,
        Method::POST,
        &format!("/{id}/accept"),
        Some(&json!({"doctor": "Practitioner/dr-an"})),
    )
    .await
    .assert_outcome(409);
    // Unknown consultations and actions.
    api(
        &app,
        &sys,
        Method::POST,
        "/no-such-id/accept",
        Some(&json!({})),
    )
    .await
    .assert_outcome(404);
    api(&app, &sys, Method::POST, &format!("/{id}/dance"), None)
        .await
        .assert_outcome(404);
    // An Appointment that is not a teleconsultation is not one.
    let appt = json!({"resourceType": "Appointment", "status": "proposed",
        "participant": [{"actor": {"reference": "Patient/pa"}, "status": "accepted"}]});
    let made = as_user(&app, &sys, Method::POST, "Appointment", Some(&appt)).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let other = made.json()["id"].as_str().unwrap().to_string();
    api(&app, &sys, Method::GET, &format!("/{other}"), None)
        .await
        .assert_outcome(404);
}
