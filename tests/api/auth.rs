//! Sign-in, scopes, the access policy, the audit trail and consent (issue 5), through HTTP with
//! auth on as shipped, on both databases.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp, patient};
use yba::auth::Role;
use yba::auth::service::{self, NewClient, NewUser};

pub(crate) const PW: &str = "correct horse battery staple";
pub(crate) const CCCD_A: &str = "001090000501";
pub(crate) const CCCD_B: &str = "079090000502";
/// B's ids: no response to A may contain them.
pub(crate) const PB: &str = "bbbb-patient";
pub(crate) const OB: &str = "bbbb-observation";
pub(crate) const CLIENT_SECRET: &str = "a-long-client-secret-of-the-his-at-org-a";

crate::on_both_databases!(@with crate::helpers::with_auth;
    idor_sweep_finds_nothing_of_another_patient,
    tokens_expire_revoke_rotate_and_cannot_be_forged,
    failed_sign_ins_back_off_alike_for_unknown_accounts,
    practitioners_see_their_patients_and_break_glass_is_audited,
    consent_grants_and_withdraws_access,
    scopes_bind_transactions_and_includes,
    hospital_systems_write_for_their_own_patients,
);

/// Two patients, one hospital caring for A, accounts and a client.
pub(crate) async fn world(app: &TestApp) {
    let store = app.store.clone().expect("in-process server");
    let fhir = yba::fhir::Fhir::new(store.clone(), Default::default());
    let put = |ty: &'static str, id: &str, v: Value| {
        let fhir = fhir.clone();
        let id = id.to_string();
        async move {
            fhir.update(ty, id, v, None).await.expect("seeded");
        }
    };
    put(
        "Organization",
        "org-a",
        json!({"resourceType": "Organization", "id": "org-a", "name": "Bệnh viện A"}),
    )
    .await;
    put(
        "Organization",
        "org-b",
        json!({"resourceType": "Organization", "id": "org-b", "name": "Bệnh viện B"}),
    )
    .await;
    let mut pa = patient(CCCD_A);
    pa["id"] = json!("pa");
    put("Patient", "pa", pa).await;
    let mut pb = patient(CCCD_B);
    pb["id"] = json!(PB);
    pb["name"] = json!([{"family": "Bùi", "given": ["Bích"]}]);
    put("Patient", PB, pb).await;
    put("Encounter", "ea", json!({"resourceType": "Encounter", "id": "ea", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/pa"}, "serviceProvider": {"reference": "Organization/org-a"}})).await;
    put("Encounter", "bbbb-encounter", json!({"resourceType": "Encounter", "id": "bbbb-encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{PB}")}, "serviceProvider": {"reference": "Organization/org-b"}})).await;
    put("Observation", "oa", observation("oa", "pa")).await;
    put("Observation", OB, observation(OB, PB)).await;
    for (id, patient, code) in [("mra", "pa", "RX-A"), ("bbbb-medreq", PB, "RX-B")] {
        put("MedicationRequest", id, json!({"resourceType": "MedicationRequest", "id": id,
            "identifier": [{"system": "https://donthuocquocgia.vn/prescription", "value": code}],
            "status": "active", "intent": "order", "medicationCodeableConcept": {"text": "Amlodipin 5mg"},
            "subject": {"reference": format!("Patient/{patient}")}})).await;
    }
    let users = [
        (CCCD_A, Role::Patient, Some("Patient/pa"), None),
        (CCCD_B, Role::Patient, Some("Patient/bbbb-patient"), None),
        (
            "dr.an",
            Role::Practitioner,
            Some("Practitioner/dr-an"),
            Some("Organization/org-a"),
        ),
        ("admin1", Role::Admin, None, None),
        (
            "ds.chi",
            Role::Pharmacist,
            Some("Practitioner/ds-chi"),
            Some("Organization/pharmacy-c"),
        ),
    ];
    for (u, role, fu, org) in users {
        service::create_user(
            &store,
            NewUser {
                username: u.into(),
                role,
                fhir_user: fu.map(str::to_string),
                organization: org.map(str::to_string),
            },
            PW,
        )
        .await
        .expect("user created");
    }
    service::create_client(
        &store,
        NewClient {
            client_id: "his-a".into(),
            name: "HIS of A".into(),
            organization: "Organization/org-a".into(),
            scopes: "system/*.cruds".into(),
            secret: Some(CLIENT_SECRET.into()),
            public_key: None,
        },
    )
    .await
    .expect("client created");
}

pub(crate) fn observation(id: &str, patient: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 72, "unit": "/min"}})
}

pub(crate) async fn token_request(app: &TestApp, form: &[(&str, &str)]) -> Resp {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    app.send(
        app.request(Method::POST, "/auth/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body),
    )
    .await
}

pub(crate) async fn login(app: &TestApp, username: &str, scope: &str) -> Value {
    let r = token_request(
        app,
        &[
            ("grant_type", "password"),
            ("username", username),
            ("password", PW),
            ("scope", scope),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// A person's access token with the scopes their role allows.
pub(crate) async fn user_token(app: &TestApp, user: &str) -> String {
    login(app, user, "").await["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The hospital system's access token with `scope`.
pub(crate) async fn system_token(app: &TestApp, scope: &str) -> String {
    let r = token_request(
        app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "his-a"),
            ("client_secret", CLIENT_SECRET),
            ("scope", scope),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["access_token"].as_str().unwrap().to_string()
}

pub(crate) async fn as_user(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Resp {
    let mut req = app.request(method, path).bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    app.send(req).await
}

/// Whether a response holds anything of B's that the request did not itself name (an error may
/// echo the id it was asked about).
fn reveals_b(body: &str, asked: &str) -> bool {
    // A's own audit trail records what A asked (ids included): A's data, not B's.
    let mut v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if let Some(entries) = v.get_mut("entry").and_then(Value::as_array_mut) {
        entries.retain(|e| {
            !(e["resource"]["resourceType"] == "AuditEvent"
                && e["resource"]["agent"][0]["who"]["reference"] == "Patient/pa")
        });
    }
    let body = &v.to_string();
    [
        PB,
        OB,
        CCCD_B,
        "bbbb-encounter",
        "Bùi",
        "B%C3%B9i",
        "RX-B",
        "bbbb-medreq",
    ]
    .iter()
    .any(|secret| body.contains(secret) && !asked.contains(secret))
}

pub(crate) fn ids_in_bundle(v: &Value) -> Vec<String> {
    v["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some(format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str()?,
                        e["resource"]["id"].as_str()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn idor_sweep_finds_nothing_of_another_patient(app: TestApp) {
    world(&app).await;
    let t = login(&app, CCCD_A, "").await;
    assert_eq!(t["patient"], "pa");
    let tok = t["access_token"].as_str().unwrap().to_string();
    // Our own record is there.
    let own = as_user(&app, &tok, Method::GET, "Patient/pa", None).await;
    assert_eq!(own.status, 200, "{}", own.body);
    let mine = as_user(&app, &tok, Method::GET, "Observation", None).await;
    assert_eq!(ids_in_bundle(&mine.json()), ["Observation/oa"]);
    // Every shape of asking for B's data.
    let gets = [
        format!("Patient/{PB}"),
        format!("Observation/{OB}"),
        format!("Observation/{OB}/_history/1"),
        format!("Observation/{OB}/_history"),
        format!("Patient/{PB}/_history"),
        format!("Patient/{PB}/$everything"),
        format!("Patient/{PB}/Observation"),
        format!("Observation?subject=Patient/{PB}"),
        format!("Observation?patient={PB}"),
        "Observation?subject:Patient.name=B%C3%B9i".to_string(),
        format!("Patient?_id={PB}"),
        format!("Patient?identifier={CCCD_B}"),
        "Patient".to_string(),
        "Encounter?_include=Encounter:subject".to_string(),
        "Patient?_revinclude=Observation:subject".to_string(),
        "Observation?_include=Observation:subject".to_string(),
        "Observation/_history".to_string(),
        "Patient/_history".to_string(),
        "_history".to_string(),
        "?_type=Patient,Observation,Encounter".to_string(),
        format!("Observation/{OB}/$validate"),
        "Consent".to_string(),
        format!("AuditEvent?patient=Patient/{PB}"),
    ];
    for path in &gets {
        let r = as_user(&app, &tok, Method::GET, path, None).await;
        assert!(
            !reveals_b(&r.body, path),
            "GET {path} revealed B's data ({}): {}",
            r.status,
            r.body
        );
        assert!(r.status < 500, "GET {path}: {}", r.body);
    }
    for path in [format!("Patient/{PB}"), format!("Observation/{OB}")] {
        assert_eq!(
            as_user(&app, &tok, Method::GET, &path, None).await.status,
            404,
            "{path}"
        );
    }
    // Writes on B's data, and Bundles that read it.
    let writes: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::PUT,
            format!("Observation/{OB}"),
            Some(observation(OB, "pa")),
        ),
        (Method::DELETE, format!("Observation/{OB}"), None),
        (
            Method::POST,
            "Observation".into(),
            Some(observation("x", PB)),
        ),
        (
            Method::POST,
            "".into(),
            Some(json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": format!("Observation/{OB}")}},
                {"request": {"method": "GET", "url": format!("Observation?subject=Patient/{PB}")}},
                {"request": {"method": "GET", "url": format!("Patient/{PB}")}}
            ]})),
        ),
        (
            Method::POST,
            "Patient/$match".into(),
            Some(json!({"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": patient(CCCD_B)}]})),
        ),
        (
            Method::POST,
            "Consent".into(),
            Some(json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": format!("Patient/{PB}")},
            "provision": {"type": "permit", "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]}, "reference": {"reference": "Organization/org-a"}}]}})),
        ),
    ];
    for (m, path, body) in &writes {
        let r = as_user(&app, &tok, m.clone(), path, body.as_ref()).await;
        let asked = format!(
            "{path} {}",
            body.as_ref().map(Value::to_string).unwrap_or_default()
        );
        assert!(
            !reveals_b(&r.body, &asked),
            "{m} {path} revealed B's data ({}): {}",
            r.status,
            r.body
        );
        assert!(r.status < 500, "{m} {path}: {}", r.body);
    }
    // And nothing of B's changed.
    let store = app.store.clone().unwrap();
    let fhir = yba::fhir::Fhir::new(store, Default::default());
    let ob = fhir
        .read("Observation", OB.into())
        .await
        .expect("B's observation is intact");
    assert_eq!(ob.version, 1);
}

async fn tokens_expire_revoke_rotate_and_cannot_be_forged(app: TestApp) {
    world(&app).await;
    // Public: the SMART configuration and the capability statement.
    let conf = app.get("/fhir/.well-known/smart-configuration").await;
    assert_eq!(conf.status, 200);
    assert!(
        conf.json()["token_endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/auth/token")
    );
    assert_eq!(app.get("metadata").await.status, 200);
    // No token, a malformed one, a forged one.
    let none = app.get("Patient/pa").await;
    none.assert_outcome(401);
    assert!(
        none.header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    let t = login(&app, CCCD_A, "").await;
    let tok = t["access_token"].as_str().unwrap();
    assert_eq!(
        as_user(&app, "nonsense", Method::GET, "Patient/pa", None)
            .await
            .status,
        401
    );
    let mut forged = tok.to_string();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let r = as_user(&app, &forged, Method::GET, "Patient/pa", None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    // A token whose claims were edited (a patient making themselves admin) fails its signature.
    let parts: Vec<&str> = tok.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["role"] = json!("admin");
    let edited = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(
        as_user(&app, &edited, Method::GET, "AuditEvent", None)
            .await
            .status,
        401
    );
    // Refresh rotates: the new pair works, the old refresh token is spent, and presenting it
    // again ends the session (the new access token stops working too).
    let rt = t["refresh_token"].as_str().unwrap();
    let r2 = token_request(
        &app,
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    )
    .await;
    assert_eq!(r2.status, 200, "{}", r2.body);
    let t2 = r2.json();
    let tok2 = t2["access_token"].as_str().unwrap();
    assert_eq!(
        as_user(&app, tok2, Method::GET, "Patient/pa", None)
            .await
            .status,
        200
    );
    let again = token_request(
        &app,
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    )
    .await;
    assert_eq!(again.status, 400);
    assert_eq!(again.json()["error"], "invalid_grant");
    assert_eq!(
        as_user(&app, tok2, Method::GET, "Patient/pa", None)
            .await
            .status,
        401
    );
    // Revocation ends a token at once.
    let t3 = login(&app, CCCD_A, "").await;
    let tok3 = t3["access_token"].as_str().unwrap();
    assert_eq!(
        as_user(&app, tok3, Method::GET, "Patient/pa", None)
            .await
            .status,
        200
    );
    let rv = app
        .send(
            app.request(Method::POST, "/auth/revoke")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={tok3}")),
        )
        .await;
    assert_eq!(rv.status, 200);
    let after = as_user(&app, tok3, Method::GET, "Patient/pa", None).await;
    assert_eq!(after.status, 401);
    assert!(after.body.contains("revoked"), "{}", after.body);
    // Disabling the account ends its sessions.
    let t4 = login(&app, "dr.an", "").await;
    service::set_user_disabled(app.store.as_ref().unwrap(), "dr.an", true)
        .await
        .unwrap();
    assert_eq!(
        as_user(
            &app,
            t4["access_token"].as_str().unwrap(),
            Method::GET,
            "Patient/pa",
            None
        )
        .await
        .status,
        401
    );
    let r = token_request(
        &app,
        &[
            ("grant_type", "password"),
            ("username", "dr.an"),
            ("password", PW),
        ],
    )
    .await;
    assert_eq!(r.status, 400);
}

async fn failed_sign_ins_back_off_alike_for_unknown_accounts(app: TestApp) {
    world(&app).await;
    let mut answers = Vec::new();
    for user in ["admin1", "nobody-here"] {
        for _ in 0..5 {
            let r = token_request(
                &app,
                &[
                    ("grant_type", "password"),
                    ("username", user),
                    ("password", "wrong password 123"),
                ],
            )
            .await;
            assert_eq!(r.status, 400, "{}", r.body);
            answers.push(r.body);
        }
        // The sixth attempt waits, even with the right password.
        let r = token_request(
            &app,
            &[
                ("grant_type", "password"),
                ("username", user),
                ("password", PW),
            ],
        )
        .await;
        assert_eq!(r.status, 429, "{user}: {}", r.body);
        assert!(r.header("retry-after").is_some());
        answers.push(r.body.replace(|c: char| c.is_ascii_digit(), ""));
    }
    // Unknown accounts and wrong passwords get the very same answers.
    assert_eq!(answers[..6], answers[6..]);
}

async fn practitioners_see_their_patients_and_break_glass_is_audited(app: TestApp) {
    world(&app).await;
    let tok = user_token(&app, "dr.an").await;
    assert_eq!(
        as_user(&app, &tok, Method::GET, "Patient/pa", None)
            .await
            .status,
        200
    );
    assert_eq!(
        as_user(&app, &tok, Method::GET, &format!("Patient/{PB}"), None)
            .await
            .status,
        404
    );
    let obs = as_user(&app, &tok, Method::GET, "Observation", None).await;
    assert_eq!(ids_in_bundle(&obs.json()), ["Observation/oa"]);
    // Writing for a patient in their care, and for one who is not.
    let w = as_user(
        &app,
        &tok,
        Method::POST,
        "Observation",
        Some(&observation("n1", "pa")),
    )
    .await;
    assert_eq!(w.status, 201, "{}", w.body);
    let refused = as_user(
        &app,
        &tok,
        Method::POST,
        "Observation",
        Some(&observation("n2", PB)),
    )
    .await;
    refused.assert_outcome(403);
    // Break-glass: allowed, flagged, audited.
    let r = app
        .send(
            app.request(Method::GET, &format!("Patient/{PB}"))
                .bearer_auth(&tok)
                .header("x-break-glass", "unconscious patient in the emergency room"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // An admin reviews the trail; the patient sees who read their record.
    let admin = user_token(&app, "admin1").await;
    let trail = as_user(
        &app,
        &admin,
        Method::GET,
        &format!("AuditEvent?patient=Patient/{PB}&_count=100"),
        None,
    )
    .await;
    assert_eq!(trail.status, 200, "{}", trail.body);
    let events = trail.json()["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let btg: Vec<&Value> = events
        .iter()
        .filter(|e| e["resource"]["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT")
        .collect();
    assert_eq!(btg.len(), 1, "{}", trail.body);
    assert_eq!(
        btg[0]["resource"]["agent"][0]["who"]["reference"],
        "Practitioner/dr-an"
    );
    assert_eq!(btg[0]["resource"]["outcome"], "0");
    let b = user_token(&app, CCCD_B).await;
    let mine = as_user(
        &app,
        &b,
        Method::GET,
        &format!("AuditEvent?patient=Patient/{PB}"),
        None,
    )
    .await;
    assert!(mine.body.contains("Practitioner/dr-an"), "{}", mine.body);
    // The refused write is in the trail too, as a failure.
    let denials = as_user(
        &app,
        &admin,
        Method::GET,
        "AuditEvent?outcome=4&_count=100",
        None,
    )
    .await;
    assert!(
        denials.json()["entry"].as_array().is_some_and(|a| a
            .iter()
            .any(|e| e["resource"]["subtype"][0]["code"] == "create")),
        "{}",
        denials.body
    );
    // The trail is append-only, even for an administrator.
    let id = events[0]["resource"]["id"].as_str().unwrap();
    let del = as_user(
        &app,
        &admin,
        Method::DELETE,
        &format!("AuditEvent/{id}"),
        None,
    )
    .await;
    assert_eq!(del.status, 403, "{}", del.body);
    let put = as_user(
        &app,
        &admin,
        Method::PUT,
        &format!("AuditEvent/{id}"),
        Some(&events[0]["resource"]),
    )
    .await;
    assert_eq!(put.status, 403, "{}", put.body);
    // An administrator does not read clinical records.
    assert_eq!(
        as_user(&app, &admin, Method::GET, "Patient/pa", None)
            .await
            .status,
        404
    );
}

async fn consent_grants_and_withdraws_access(app: TestApp) {
    world(&app).await;
    let dr = user_token(&app, "dr.an").await;
    let b = user_token(&app, CCCD_B).await;
    assert_eq!(
        as_user(&app, &dr, Method::GET, &format!("Patient/{PB}"), None)
            .await
            .status,
        404
    );
    let mut consent = json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{PB}")},
        "provision": {"type": "permit", "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]}, "reference": {"reference": "Organization/org-a"}}]}});
    let made = as_user(&app, &b, Method::POST, "Consent", Some(&consent)).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let cid = made.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        as_user(&app, &dr, Method::GET, &format!("Patient/{PB}"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        as_user(&app, &dr, Method::GET, &format!("Observation/{OB}"), None)
            .await
            .status,
        200
    );
    // The decision cites the consent.
    let admin = user_token(&app, "admin1").await;
    let trail = as_user(
        &app,
        &admin,
        Method::GET,
        &format!("AuditEvent?patient=Patient/{PB}&agent=Practitioner/dr-an&outcome=0"),
        None,
    )
    .await;
    assert!(
        trail.body.contains(&format!("Consent/{cid}")),
        "{}",
        trail.body
    );
    // A consent withholding Observations from A's hospital, then withdrawing the grant.
    consent["id"] = json!(cid);
    consent["provision"]["provision"] = json!([{"type": "deny", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]}]);
    let upd = as_user(
        &app,
        &b,
        Method::PUT,
        &format!("Consent/{cid}"),
        Some(&consent),
    )
    .await;
    assert_eq!(upd.status, 200, "{}", upd.body);
    assert_eq!(
        as_user(&app, &dr, Method::GET, &format!("Patient/{PB}"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        as_user(&app, &dr, Method::GET, &format!("Observation/{OB}"), None)
            .await
            .status,
        404
    );
    consent["status"] = json!("inactive");
    let withdrawn = as_user(
        &app,
        &b,
        Method::PUT,
        &format!("Consent/{cid}"),
        Some(&consent),
    )
    .await;
    assert_eq!(withdrawn.status, 200, "{}", withdrawn.body);
    assert_eq!(
        as_user(&app, &dr, Method::GET, &format!("Patient/{PB}"), None)
            .await
            .status,
        404
    );
    // A patient writes nothing clinical, and no one else's consent.
    let a = user_token(&app, CCCD_A).await;
    assert_eq!(
        as_user(
            &app,
            &a,
            Method::POST,
            "Observation",
            Some(&observation("x", "pa"))
        )
        .await
        .status,
        403
    );
    let other = as_user(
        &app,
        &a,
        Method::PUT,
        &format!("Consent/{cid}"),
        Some(&consent),
    )
    .await;
    assert!(other.status == 403 || other.status == 404, "{}", other.body);
}

async fn scopes_bind_transactions_and_includes(app: TestApp) {
    world(&app).await;
    // A patient token for Observations only: their Patient is not included, nor readable.
    let t = login(&app, CCCD_A, "patient/Observation.rs").await;
    assert_eq!(t["scope"], "patient/Observation.rs");
    let tok = t["access_token"].as_str().unwrap().to_string();
    let r = as_user(
        &app,
        &tok,
        Method::GET,
        "Observation?_include=Observation:subject",
        None,
    )
    .await;
    assert_eq!(ids_in_bundle(&r.json()), ["Observation/oa"]);
    as_user(&app, &tok, Method::GET, "Patient/pa", None)
        .await
        .assert_outcome(403);
    // A system token that may only read Observations cannot sneak a write into a transaction.
    let s = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "his-a"),
            ("client_secret", CLIENT_SECRET),
            ("scope", "system/Observation.rs"),
        ],
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.body);
    let stok = s.json()["access_token"].as_str().unwrap().to_string();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Observation/oa"}},
        {"fullUrl": "urn:uuid:1", "resource": observation("t1", "pa"), "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = as_user(&app, &stok, Method::POST, "", Some(&bundle)).await;
    let v = r.assert_outcome(403);
    assert!(v.to_string().contains("Bundle.entry[1]"), "{v}");
    // Scopes asked beyond the client's registration are not granted.
    let wide = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "his-a"),
            ("client_secret", CLIENT_SECRET),
            ("scope", "user/*.cruds"),
        ],
    )
    .await;
    assert_eq!(wide.status, 400);
    assert_eq!(wide.json()["error"], "invalid_scope");
    let bad = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "his-a"),
            ("client_secret", "wrong"),
        ],
    )
    .await;
    assert_eq!(bad.status, 401);
}

async fn hospital_systems_write_for_their_own_patients(app: TestApp) {
    world(&app).await;
    let s = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "his-a"),
            ("client_secret", CLIENT_SECRET),
        ],
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert!(s.json().get("refresh_token").is_none());
    let tok = s.json()["access_token"].as_str().unwrap().to_string();
    // A new patient and their first records, in one transaction.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": patient("001090000503"), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:o", "resource": {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "urn:uuid:p"}}, "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = as_user(&app, &tok, Method::POST, "", Some(&bundle)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // An encounter at the hospital brings an existing patient into its care, in the same Bundle.
    let mut pb_obs = observation("", PB);
    pb_obs.as_object_mut().unwrap().remove("id");
    let refused = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": pb_obs, "request": {"method": "POST", "url": "Observation"}}
    ]});
    as_user(&app, &tok, Method::POST, "", Some(&refused))
        .await
        .assert_outcome(403);
    let admitted = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": pb_obs, "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Encounter", "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
            "subject": {"reference": format!("Patient/{PB}")}, "serviceProvider": {"reference": "Organization/org-a"}},
         "request": {"method": "POST", "url": "Encounter"}}
    ]});
    let r = as_user(&app, &tok, Method::POST, "", Some(&admitted)).await;
    assert_eq!(r.status, 200, "{}", r.body);
}
