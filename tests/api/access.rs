//! The authorisation matrix (issue 5): every role × interaction × own/other patient, through
//! HTTP with auth on, on both databases; and the sign-in paths the other suite leaves out
//! (private_key_jwt, token expiry, rate limits), consent by security label, deletions.

use reqwest::Method;
use serde_json::{Value, json};

use crate::auth::{
    CCCD_A, CLIENT_SECRET, OB, PB, as_user, ids_in_bundle, login, observation, system_token,
    token_request, user_token, world,
};
use crate::helpers::{TestApp, patient};
use yba::auth::service::{self, NewClient};

crate::on_both_databases!(@with crate::helpers::with_auth;
    every_role_gets_what_the_policy_says,
    conditional_writes_and_merges_see_only_what_the_caller_may,
    consent_withholds_labelled_results,
    deletions_are_gone_only_to_those_who_could_see_them,
    private_key_jwt_signs_in_a_hospital_system,
);

mod short_lived {
    use super::tokens_expire_and_busy_callers_are_slowed;
    crate::on_both_databases!(@with crate::access::tight;
        tokens_expire_and_busy_callers_are_slowed,
    );
}

/// Auth on, access tokens of one second, ten requests a second per caller.
fn tight(c: &mut yba::config::Config) {
    c.auth = true;
    c.access_token_ttl = 1;
    c.rate_limit = 10;
}

/// The five kinds of caller.
struct Callers {
    patient: String,
    doctor: String,
    pharmacist: String,
    admin: String,
    system: String,
}

impl Callers {
    async fn of(app: &TestApp) -> Callers {
        Callers {
            patient: user_token(app, CCCD_A).await,
            doctor: user_token(app, "dr.an").await,
            pharmacist: user_token(app, "ds.chi").await,
            admin: user_token(app, "admin1").await,
            system: system_token(app, "system/*.cruds").await,
        }
    }

    /// `(name, token)` in the order of the matrix's columns.
    fn all(&self) -> [(&'static str, &str); 5] {
        [
            ("patient", &self.patient),
            ("practitioner", &self.doctor),
            ("pharmacist", &self.pharmacist),
            ("admin", &self.admin),
            ("system", &self.system),
        ]
    }
}

/// One row of the matrix: a request and the status each caller must get (patient,
/// practitioner, pharmacist, admin, system).
struct Row {
    method: Method,
    path: String,
    body: Option<Value>,
    want: [u16; 5],
}

fn row(method: Method, path: impl Into<String>, body: Option<Value>, want: [u16; 5]) -> Row {
    Row {
        method,
        path: path.into(),
        body,
        want,
    }
}

fn match_count(v: &Value) -> usize {
    v["entry"].as_array().map_or(0, |a| {
        a.iter().filter(|e| e["search"]["mode"] == "match").count()
    })
}

async fn every_role_gets_what_the_policy_says(app: TestApp) {
    world(&app).await;
    let store = app.store.clone().unwrap();
    let fhir = yba::fhir::Fhir::new(store, Default::default());
    for id in ["del-1", "del-2"] {
        fhir.update("Observation", id.into(), observation(id, "pa"), None)
            .await
            .unwrap();
    }
    let c = Callers::of(&app).await;
    let patch = json!([{"op": "replace", "path": "/valueQuantity/value", "value": 80}]);
    let value_set = |n: u32| json!({"resourceType": "ValueSet", "status": "draft", "url": format!("https://yba.example/vs/{n}")});
    let org = json!({"resourceType": "Organization", "name": "Trạm y tế xã"});
    let dispense = json!({"resourceType": "MedicationDispense", "status": "completed",
        "medicationCodeableConcept": {"text": "Amlodipin 5mg"},
        "subject": {"reference": "Patient/pa"},
        "authorizingPrescription": [{"reference": "MedicationRequest/mra"}]});
    let med_request = json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"text": "Amlodipin 5mg"}, "subject": {"reference": "Patient/pa"}});
    //                          patient practitioner pharmacist admin system
    let rows = vec![
        // Reads of own and other records.
        row(Method::GET, "Patient/pa", None, [200, 200, 404, 404, 200]),
        row(Method::GET, format!("Patient/{PB}"), None, [404; 5]),
        row(
            Method::GET,
            "Observation/oa",
            None,
            [200, 200, 404, 404, 200],
        ),
        row(Method::GET, format!("Observation/{OB}"), None, [404; 5]),
        row(
            Method::GET,
            "Observation/oa/_history/1",
            None,
            [200, 200, 404, 404, 200],
        ),
        row(
            Method::GET,
            format!("Observation/{OB}/_history/1"),
            None,
            [404; 5],
        ),
        row(
            Method::GET,
            "Observation/oa/_history",
            None,
            [200, 200, 404, 404, 200],
        ),
        row(
            Method::GET,
            format!("Observation/{OB}/_history"),
            None,
            [404; 5],
        ),
        row(
            Method::GET,
            "Patient/pa/$everything",
            None,
            [200, 200, 404, 404, 200],
        ),
        row(
            Method::GET,
            format!("Patient/{PB}/$everything"),
            None,
            [404; 5],
        ),
        row(
            Method::GET,
            "Patient/pa/Observation",
            None,
            [200, 200, 404, 404, 200],
        ),
        // Writes: a patient writes nothing clinical (their scopes say so first), a pharmacist
        // only dispenses, an administrator no clinical record.
        row(
            Method::POST,
            "Observation",
            Some(observation("n", "pa")),
            [403, 201, 403, 403, 201],
        ),
        row(
            Method::POST,
            "Observation",
            Some(observation("n", PB)),
            [403; 5],
        ),
        row(
            Method::PUT,
            "Observation/oa",
            Some(observation("oa", "pa")),
            [403, 200, 403, 404, 200],
        ),
        row(
            Method::PUT,
            format!("Observation/{OB}"),
            Some(observation(OB, PB)),
            [403, 404, 403, 404, 404],
        ),
        row(
            Method::PATCH,
            "Observation/oa",
            Some(patch.clone()),
            [403, 200, 403, 404, 200],
        ),
        row(
            Method::PATCH,
            format!("Observation/{OB}"),
            Some(patch.clone()),
            [403, 404, 403, 404, 404],
        ),
        // (Once the practitioner has deleted it, deleting it again is a no-op for anyone: R4's
        // delete is idempotent, and says nothing of what was there.)
        row(
            Method::DELETE,
            "Observation/del-1",
            None,
            [403, 204, 403, 204, 204],
        ),
        row(
            Method::DELETE,
            format!("Observation/{OB}"),
            None,
            [403, 404, 403, 404, 404],
        ),
        // Prescriptions: a pharmacist looks one up by its code, never lists them.
        row(
            Method::GET,
            "MedicationRequest?identifier=RX-B",
            None,
            [200, 200, 200, 200, 200],
        ),
        row(
            Method::GET,
            "MedicationRequest",
            None,
            [200, 200, 403, 200, 200],
        ),
        row(
            Method::GET,
            "MedicationRequest/mra",
            None,
            [200, 200, 200, 404, 200],
        ),
        row(
            Method::POST,
            "MedicationDispense",
            Some(dispense),
            [403, 201, 201, 403, 201],
        ),
        row(
            Method::POST,
            "MedicationRequest",
            Some(med_request),
            [403, 201, 403, 403, 201],
        ),
        // Directory and definitions: everyone reads them; definitions are the admin's.
        row(
            Method::POST,
            "Organization",
            Some(org),
            [403, 201, 403, 201, 201],
        ),
        row(Method::GET, "Organization/org-a", None, [200; 5]),
        row(
            Method::POST,
            "ValueSet",
            Some(value_set(1)),
            [403, 403, 403, 201, 403],
        ),
        row(Method::GET, "ValueSet", None, [200; 5]),
        // The server's own operations.
        row(Method::POST, "$reindex", None, [403, 403, 403, 200, 403]),
        row(Method::DELETE, "AuditEvent?outcome=0", None, [403; 5]),
    ];
    // The hospital's system deletes a record of a patient in its care.
    let del = as_user(&app, &c.system, Method::DELETE, "Observation/del-2", None).await;
    assert_eq!(del.status, 204, "{}", del.body);
    assert_eq!(
        as_user(&app, &c.doctor, Method::GET, "Observation/del-2", None)
            .await
            .status,
        410
    );
    let mut wrong = Vec::new();
    for r in &rows {
        for (i, (who, tok)) in c.all().into_iter().enumerate() {
            let mut req = app.request(r.method.clone(), &r.path).bearer_auth(tok);
            if let Some(b) = &r.body {
                let ct = if r.method == Method::PATCH {
                    "application/json-patch+json"
                } else {
                    "application/fhir+json"
                };
                req = req.header("content-type", ct).body(b.to_string());
            }
            let resp = app.send(req).await;
            if resp.status != r.want[i] {
                wrong.push(format!(
                    "{} {} as {who}: {} (want {}) {}",
                    r.method,
                    r.path,
                    resp.status,
                    r.want[i],
                    &resp.body[..resp.body.len().min(300)]
                ));
            }
            if resp.status >= 400 && resp.status != 404 {
                // Every refusal is an OperationOutcome saying why.
                if resp.json()["resourceType"] != "OperationOutcome" {
                    wrong.push(format!(
                        "{} {} as {who}: no OperationOutcome",
                        r.method, r.path
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // What each caller's searches find (a search answers 200; the policy decides its content).
    //                                   patient practitioner pharmacist admin system
    let searches: [(&str, [usize; 5]); 6] = [
        ("Observation?patient=pa", [1, 1, 0, 0, 1]),
        ("Observation?patient=bbbb-patient", [0; 5]),
        ("Observation?code=8867-4", [1, 1, 0, 0, 1]),
        ("MedicationRequest?identifier=RX-B", [0, 0, 1, 0, 0]),
        ("MedicationRequest?identifier=RX-A", [1, 1, 1, 0, 1]),
        ("Patient?identifier=001090000501", [1, 1, 0, 0, 1]),
    ];
    for (path, want) in searches {
        for (i, (who, tok)) in c.all().into_iter().enumerate() {
            let r = as_user(&app, tok, Method::GET, path, None).await;
            assert_eq!(r.status, 200, "{path} as {who}: {}", r.body);
            // Observations created by the matrix above (n) count for those who wrote them.
            let found: Vec<String> = ids_in_bundle(&r.json())
                .into_iter()
                .filter(|id| !id.starts_with("Observation/") || id == "Observation/oa")
                .collect();
            let n = if path.starts_with("Observation") {
                found.len()
            } else {
                match_count(&r.json())
            };
            assert_eq!(n, want[i], "{path} as {who}: {}", r.body);
        }
    }
    // B's records are untouched by all of it.
    let ob = fhir.read("Observation", OB.into()).await.unwrap();
    assert_eq!(ob.version, 1);
    // Audit: each caller's requests are in the trail, under their own name.
    let trail = as_user(
        &app,
        &c.admin,
        Method::GET,
        "AuditEvent?agent=Practitioner/ds-chi&_count=200",
        None,
    )
    .await;
    assert!(match_count(&trail.json()) >= rows.len(), "{}", trail.body);
}

async fn conditional_writes_and_merges_see_only_what_the_caller_may(app: TestApp) {
    world(&app).await;
    let store = app.store.clone().unwrap();
    let fhir = yba::fhir::Fhir::new(store, Default::default());
    let dr = user_token(&app, "dr.an").await;
    let sys = system_token(&app, "system/*.cruds").await;
    // A conditional delete that matches only B's observation deletes nothing, and says so
    // exactly as when nothing matches.
    for tok in [&dr, &sys] {
        let r = as_user(
            &app,
            tok,
            Method::DELETE,
            &format!("Observation?subject=Patient/{PB}"),
            None,
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.body);
        let none = as_user(
            &app,
            tok,
            Method::DELETE,
            "Observation?code=no-such-code",
            None,
        )
        .await;
        assert_eq!(none.status, r.status);
    }
    // Inside a transaction too.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": format!("Observation?subject=Patient/{PB}")}}]});
    let r = as_user(&app, &dr, Method::POST, "", Some(&tx)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains(OB), "{}", r.body);
    assert_eq!(
        fhir.read("Observation", OB.into()).await.unwrap().version,
        1
    );
    // A conditional update whose condition matches only B's observation does not touch it: the
    // caller's body becomes a record of its own.
    let mut body = observation("", "pa");
    body.as_object_mut().unwrap().remove("id");
    let r = as_user(
        &app,
        &dr,
        Method::PUT,
        &format!("Observation?subject=Patient/{PB}"),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(!r.body.contains(OB) && !r.body.contains(PB), "{}", r.body);
    let ob = fhir.read("Observation", OB.into()).await.unwrap();
    assert_eq!(ob.version, 1);
    // The same inside a transaction.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": body, "request": {"method": "PUT", "url": format!("Observation?subject=Patient/{PB}")}}]});
    let r = as_user(&app, &dr, Method::POST, "", Some(&tx)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("201 Created"), "{}", r.body);
    assert!(!r.body.contains(OB) && !r.body.contains(PB), "{}", r.body);
    assert_eq!(
        fhir.read("Observation", OB.into()).await.unwrap().version,
        1
    );
    // A conditional create whose condition matches only B's observation creates (201) rather
    // than answering with B's (200), plainly and in a transaction.
    let cond = format!("subject=Patient/{PB}");
    let r = app
        .send(
            app.request(Method::POST, "Observation")
                .bearer_auth(&dr)
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", &cond)
                .body(body.to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(!r.body.contains(OB) && !r.body.contains(PB), "{}", r.body);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": body, "request": {"method": "POST", "url": "Observation", "ifNoneExist": cond}}]});
    let r = as_user(&app, &dr, Method::POST, "", Some(&tx)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("201 Created"), "{}", r.body);
    assert!(!r.body.contains(OB) && !r.body.contains(PB), "{}", r.body);
    // The caller's own match is still found (200, no second copy).
    let mine = format!(
        "subject=Patient/pa&code=8867-4&_id={}",
        r.json()["entry"][0]["response"]["location"]
            .as_str()
            .unwrap()
            .split('/')
            .nth(1)
            .unwrap()
    );
    let again = app
        .send(
            app.request(Method::POST, "Observation")
                .bearer_auth(&dr)
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", &mine)
                .body(body.to_string()),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    // $merge: B's record is not the hospital's to merge, by reference or by citizen ID, and the
    // refusal names no id of B's.
    let by_identifier = json!({"resourceType": "Parameters", "parameter": [
        {"name": "source-patient-identifier", "valueIdentifier": {"system": "http://fhir.ehealth.gov.vn/core/sid/citizen_id", "value": crate::auth::CCCD_B}},
        {"name": "target-patient", "valueReference": {"reference": "Patient/pa"}}]});
    let r = as_user(
        &app,
        &sys,
        Method::POST,
        "Patient/$merge",
        Some(&by_identifier),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(!r.body.contains(PB), "{}", r.body);
    // A duplicate the hospital registered itself is merged into its patient.
    // (Registered by a passport number, before A's citizen ID was known.)
    let mut dup = patient(CCCD_A);
    dup["identifier"] = json!([{"system": "http://fhir.ehealth.gov.vn/core/sid/passport_number", "value": "C1234567"}]);
    dup["managingOrganization"] = json!({"reference": "Organization/org-a"});
    let made = as_user(&app, &sys, Method::POST, "Patient", Some(&dup)).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let dup_id = made.json()["id"].as_str().unwrap().to_string();
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": {"reference": format!("Patient/{dup_id}")}},
        {"name": "target-patient", "valueReference": {"reference": "Patient/pa"}}]});
    let patient_tok = user_token(&app, CCCD_A).await;
    as_user(
        &app,
        &patient_tok,
        Method::POST,
        "Patient/$merge",
        Some(&params),
    )
    .await
    .assert_outcome(403);
    let r = as_user(&app, &sys, Method::POST, "Patient/$merge", Some(&params)).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn consent_withholds_labelled_results(app: TestApp) {
    world(&app).await;
    let store = app.store.clone().unwrap();
    let fhir = yba::fhir::Fhir::new(store, Default::default());
    // A's HIV result carries the HIV sensitivity label.
    let mut hiv = observation("oa-hiv", "pa");
    hiv["code"] = json!({"coding": [{"system": "http://loinc.org", "code": "75622-1", "display": "HIV 1 and 2 tests"}]});
    hiv["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}]});
    fhir.update("Observation", "oa-hiv".into(), hiv, None)
        .await
        .unwrap();
    let dr = user_token(&app, "dr.an").await;
    let a = user_token(&app, CCCD_A).await;
    assert_eq!(
        as_user(&app, &dr, Method::GET, "Observation/oa-hiv", None)
            .await
            .status,
        200
    );
    // A withholds HIV-labelled results from the hospital that cares for them.
    let consent = json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/pa"},
        "provision": {"type": "deny",
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]}, "reference": {"reference": "Organization/org-a"}}],
            "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}]}});
    let made = as_user(&app, &a, Method::POST, "Consent", Some(&consent)).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let cid = made.json()["id"].as_str().unwrap().to_string();
    // The labelled result is gone from reads, searches and $everything; the rest stays.
    assert_eq!(
        as_user(&app, &dr, Method::GET, "Observation/oa-hiv", None)
            .await
            .status,
        404
    );
    assert_eq!(
        as_user(&app, &dr, Method::GET, "Observation/oa", None)
            .await
            .status,
        200
    );
    let all = as_user(&app, &dr, Method::GET, "Patient/pa/$everything", None).await;
    let ids = ids_in_bundle(&all.json());
    assert!(ids.contains(&"Observation/oa".to_string()), "{ids:?}");
    assert!(!ids.contains(&"Observation/oa-hiv".to_string()), "{ids:?}");
    // The patient still sees their own result; the withholding cites the consent in the trail.
    assert_eq!(
        as_user(&app, &a, Method::GET, "Observation/oa-hiv", None)
            .await
            .status,
        200
    );
    let admin = user_token(&app, "admin1").await;
    let trail = as_user(
        &app,
        &admin,
        Method::GET,
        "AuditEvent?agent=Practitioner/dr-an&outcome=4&_count=100",
        None,
    )
    .await;
    assert!(
        trail.body.contains(&format!("Consent/{cid}")),
        "{}",
        trail.body
    );
    // Break-glass overrides it, flagged.
    let r = app
        .send(
            app.request(Method::GET, "Observation/oa-hiv")
                .bearer_auth(&dr)
                .header(
                    "x-break-glass",
                    "suspected seroconversion, patient unconscious",
                ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn deletions_are_gone_only_to_those_who_could_see_them(app: TestApp) {
    world(&app).await;
    let store = app.store.clone().unwrap();
    let fhir = yba::fhir::Fhir::new(store, Default::default());
    fhir.delete("Observation", OB.into()).await.unwrap();
    fhir.delete("Observation", "oa".into()).await.unwrap();
    let a = user_token(&app, CCCD_A).await;
    let dr = user_token(&app, "dr.an").await;
    // Their own deleted observation is 410 to those who could read it.
    for tok in [&a, &dr] {
        assert_eq!(
            as_user(&app, tok, Method::GET, "Observation/oa", None)
                .await
                .status,
            410
        );
    }
    // B's is not known to them at all, read or vread, just like an id that never existed.
    for path in [
        format!("Observation/{OB}"),
        format!("Observation/{OB}/_history/2"),
        "Observation/never-was".to_string(),
    ] {
        for tok in [&a, &dr] {
            let r = as_user(&app, tok, Method::GET, &path, None).await;
            assert_eq!(r.status, 404, "{path}: {}", r.body);
        }
    }
    // And no deletion of B's shows in the histories they can list.
    for path in ["Observation/_history", "_history"] {
        let r = as_user(&app, &dr, Method::GET, path, None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.body.contains(OB), "{path}: {}", r.body);
    }
}

async fn private_key_jwt_signs_in_a_hospital_system(app: TestApp) {
    use p384::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    world(&app).await;
    let key = |seed: &str| {
        use sha2::Digest;
        let bytes = sha2::Sha384::digest(format!("{seed}{}", uuid::Uuid::new_v4()));
        p384::SecretKey::from_slice(&bytes).expect("a P-384 key")
    };
    let registered = key("registered");
    let other = key("other");
    let public = registered
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    service::create_client(
        app.store.as_ref().unwrap(),
        NewClient {
            client_id: "his-key".into(),
            name: "HIS signing with a key".into(),
            organization: "Organization/org-a".into(),
            scopes: "system/*.rs".into(),
            secret: None,
            public_key: Some(public),
        },
    )
    .await
    .unwrap();
    let token_url = format!("http://{}/auth/token", app.addr);
    let assertion = |k: &p384::SecretKey, aud: &str, jti: &str| {
        let pem = k.to_pkcs8_pem(LineEnding::LF).unwrap();
        let enc = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384),
            &json!({"iss": "his-key", "sub": "his-key", "aud": aud, "exp": now + 120, "jti": jti}),
            &enc,
        )
        .unwrap()
    };
    let grant = |a: String| {
        let app = &app;
        async move {
            token_request(
                app,
                &[
                    ("grant_type", "client_credentials"),
                    ("scope", "system/Patient.rs"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &a),
                ],
            )
            .await
        }
    };
    let good = assertion(&registered, &token_url, "jti-1");
    let r = grant(good.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["scope"], "system/Patient.rs");
    let tok = r.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        as_user(&app, &tok, Method::GET, "Patient/pa", None)
            .await
            .status,
        200
    );
    // Replayed, signed by another key, or meant for another server: refused.
    for (bad, why) in [
        (good, "replayed"),
        (assertion(&other, &token_url, "jti-2"), "wrong key"),
        (
            assertion(&registered, "https://elsewhere.example/token", "jti-3"),
            "wrong audience",
        ),
    ] {
        let r = grant(bad).await;
        assert_eq!(r.status, 401, "{why}: {}", r.body);
        assert_eq!(r.json()["error"], "invalid_client", "{why}");
    }
    // A secret does not sign in a client registered with a key.
    let r = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "his-key"),
            ("client_secret", CLIENT_SECRET),
        ],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
}

async fn tokens_expire_and_busy_callers_are_slowed(app: TestApp) {
    world(&app).await;
    let t = login(&app, CCCD_A, "").await;
    assert_eq!(t["expires_in"], 1);
    let tok = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        as_user(&app, &tok, Method::GET, "Patient/pa", None)
            .await
            .status,
        200
    );
    // Past its life (and the five seconds of clock skew allowed), the token is refused; the
    // refresh token still gets a new one.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let r = as_user(&app, &tok, Method::GET, "Patient/pa", None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("expired"), "{}", r.body);
    let r = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", t["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let fresh = r.json()["access_token"].as_str().unwrap().to_string();
    // Ten requests a second with bursts of twenty: the burst passes, then 429 and Retry-After.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..25 {
        let r = as_user(&app, &fresh, Method::GET, "Patient/pa", None).await;
        if r.status == 429 {
            retry_after = r.header("retry-after").map(str::to_string);
            assert_eq!(r.json()["issue"][0]["code"], "throttled", "{}", r.body);
        }
        statuses.push(r.status);
    }
    assert!(statuses[..20].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(statuses[20..].contains(&429), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Another caller is not slowed by the first.
    let dr = user_token(&app, "dr.an").await;
    assert_eq!(
        as_user(&app, &dr, Method::GET, "Patient/pa", None)
            .await
            .status,
        200
    );
}
