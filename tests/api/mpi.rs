//! `Patient/$match` and `Patient/$merge` through HTTP.

use serde_json::{Value, json};

use crate::helpers::{TestApp, patient};

const CCCD: &str = "http://fhir.ehealth.gov.vn/core/sid/citizen_id";
const BHYT: &str = "http://fhir.ehealth.gov.vn/core/sid/insurance_number";
const GRADE: &str = "http://hl7.org/fhir/StructureDefinition/match-grade";

fn match_params(p: Value, extra: Vec<Value>) -> Value {
    let mut parameter = vec![json!({"name": "resource", "resource": p})];
    parameter.extend(extra);
    json!({"resourceType": "Parameters", "parameter": parameter})
}

/// `(id, grade, score)` of each match, in order.
async fn matches(app: &TestApp, params: &Value) -> Vec<(String, String, f64)> {
    let r = app.post_json("Patient/$match", params).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let b = r.json();
    assert_eq!(b["type"], "searchset");
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["search"]["extension"][0]["url"], GRADE);
            (
                e["resource"]["id"].as_str().unwrap().to_string(),
                e["search"]["extension"][0]["valueCode"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                e["search"]["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

async fn match_grades_identifiers_and_demographics(app: TestApp) {
    let mut an = patient("001090000501");
    an["identifier"]
        .as_array_mut()
        .unwrap()
        .push(json!({"system": BHYT, "value": "DN4010123456789"}));
    an["address"] = json!([{"city": "Hà Nội", "district": "Hoàn Kiếm"}]);
    let an = app.create(&an).await;
    // Someone else with the same name and birthday, in another city.
    let mut other = patient("079090000502");
    other["address"] = json!([{"city": "Thành phố Hồ Chí Minh"}]);
    let other = app.create(&other).await;

    // By citizen ID: certain.
    let by_cccd = json!({"resourceType": "Patient", "identifier": [{"system": CCCD, "value": "001090000501"}]});
    assert_eq!(
        matches(&app, &match_params(by_cccd, vec![])).await,
        [(id(&an), "certain".to_string(), 1.0)]
    );
    // By health-insurance card: certain.
    let by_card = json!({"resourceType": "Patient", "identifier": [{"system": BHYT, "value": "DN4010123456789"}]});
    assert_eq!(
        matches(&app, &match_params(by_card, vec![])).await,
        [(id(&an), "certain".to_string(), 1.0)]
    );
    // Name (without diacritics), birth date, gender and the district: probable for An;
    // the namesake elsewhere is only possible.
    let demo = json!({"resourceType": "Patient", "name": [{"family": "Nguyen", "given": ["Van", "An"]}],
        "gender": "male", "birthDate": "1990-04-30", "address": [{"text": "Hoan Kiem"}]});
    let got = matches(&app, &match_params(demo.clone(), vec![])).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_str()),
        (id(&an).as_str(), "probable")
    );
    assert_eq!(
        (got[1].0.as_str(), got[1].1.as_str()),
        (id(&other).as_str(), "possible")
    );
    assert!(got[0].2 > got[1].2);
    // onlyCertainMatches leaves them out.
    let only = match_params(
        demo.clone(),
        vec![json!({"name": "onlyCertainMatches", "valueBoolean": true})],
    );
    assert!(matches(&app, &only).await.is_empty());
    // A different citizen ID is certainly not the person, whatever the demographics.
    let mut not_an = demo.clone();
    not_an["identifier"] = json!([{"system": CCCD, "value": "001090000599"}]);
    assert!(
        matches(&app, &match_params(not_an, vec![]))
            .await
            .is_empty()
    );
    // count bounds the answer.
    let one = match_params(demo, vec![json!({"name": "count", "valueInteger": 1})]);
    assert_eq!(matches(&app, &one).await.len(), 1);
    // No Patient to match: 400.
    app.post_json("Patient/$match", &json!({"resourceType": "Parameters"}))
        .await
        .assert_outcome(400);
}

fn merge_params(source: &str, target: &str, preview: bool) -> Value {
    json!({"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": {"reference": format!("Patient/{source}")}},
        {"name": "target-patient", "valueReference": {"reference": format!("Patient/{target}")}},
        {"name": "preview", "valueBoolean": preview}]})
}

async fn merge_moves_references_and_is_audited(app: TestApp) {
    // A child registered at birth by the hospital, and later again with the citizen ID.
    let born = app
        .create(
            &json!({"resourceType": "Patient", "name": [{"family": "Đỗ", "given": ["Minh"]}],
            "gender": "male", "birthDate": "2021-06-01",
            "identifier": [{"system": "http://benhvien-a.vn/mrn", "value": "S-991"}]}),
        )
        .await;
    let mut later = patient("001221000503");
    later["birthDate"] = json!("2021-06-01");
    later["name"] = json!([{"family": "Đỗ", "given": ["Minh"]}]);
    let later = app.create(&later).await;
    let (src, tgt) = (id(&born), id(&later));
    let enc = app
        .create(&json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": format!("Patient/{src}")}}))
        .await;
    let obs = app
        .create(
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "cân nặng"},
            "subject": {"reference": format!("Patient/{src}")},
            "encounter": {"reference": format!("Encounter/{}", id(&enc))},
            "valueQuantity": {"value": 3.2, "unit": "kg"}}),
        )
        .await;

    // Preview: nothing changes.
    let r = app
        .post_json("Patient/$merge", &merge_params(&src, &tgt, true))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("would move 2 references"), "{}", r.body);
    let e = app.get(&format!("Encounter/{}", id(&enc))).await.json();
    assert_eq!(e["subject"]["reference"], format!("Patient/{src}"));

    let r = app
        .post_json("Patient/$merge", &merge_params(&src, &tgt, false))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let out = r.json();
    let result = &out["parameter"][2]["resource"];
    assert_eq!(result["id"], tgt.as_str());
    // The target carries the hospital number and a link back to the source.
    assert!(
        result["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["value"] == "S-991"),
        "{result}"
    );
    assert_eq!(result["link"][0]["type"], "replaces");
    assert_eq!(
        result["link"][0]["other"]["reference"],
        format!("Patient/{src}")
    );
    // The source stepped down.
    let s = app.get(&format!("Patient/{src}")).await.json();
    assert_eq!(s["active"], false);
    assert_eq!(s["link"][0]["type"], "replaced-by");
    assert_eq!(s["link"][0]["other"]["reference"], format!("Patient/{tgt}"));
    // References moved (and only the patient's: the observation's encounter is untouched).
    let e = app.get(&format!("Encounter/{}", id(&enc))).await.json();
    assert_eq!(e["subject"]["reference"], format!("Patient/{tgt}"));
    let o = app.get(&format!("Observation/{}", id(&obs))).await.json();
    assert_eq!(o["subject"]["reference"], format!("Patient/{tgt}"));
    assert_eq!(
        o["encounter"]["reference"],
        format!("Encounter/{}", id(&enc))
    );
    let everything = app.get(&format!("Patient/{tgt}/$everything")).await.json();
    let types: Vec<&str> = everything["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"Encounter") && types.contains(&"Observation"),
        "{types:?}"
    );
    // Audited.
    let audit = app
        .get(&format!("AuditEvent?entity=Patient/{src}"))
        .await
        .json();
    assert_eq!(audit["total"], 1, "{audit}");
    assert_eq!(audit["entry"][0]["resource"]["subtype"][0]["code"], "merge");
    // The source was merged: again is a conflict; the match skips it.
    app.post_json("Patient/$merge", &merge_params(&src, &tgt, false))
        .await
        .assert_outcome(409);
    let demo = json!({"resourceType": "Patient", "name": [{"family": "Do", "given": ["Minh"]}],
        "birthDate": "2021-06-01"});
    let got = matches(&app, &match_params(demo, vec![])).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, tgt);
}

async fn merge_refuses_two_people_and_unknown_records(app: TestApp) {
    let a = app.create(&patient("001090000504")).await;
    let mut b = patient("001090000505");
    b["name"] = json!([{"family": "Khác"}]);
    let b = app.create(&b).await;
    let o = app
        .post_json("Patient/$merge", &merge_params(&id(&a), &id(&b), false))
        .await
        .assert_outcome(409);
    assert!(
        o["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("different citizen IDs"),
        "{o}"
    );
    app.post_json("Patient/$merge", &merge_params(&id(&a), "nobody", false))
        .await
        .assert_outcome(404);
    app.post_json("Patient/$merge", &merge_params(&id(&a), &id(&a), false))
        .await
        .assert_outcome(400);
    // By identifier.
    let by_ident = json!({"resourceType": "Parameters", "parameter": [
        {"name": "source-patient-identifier", "valueIdentifier": {"system": CCCD, "value": "001090000599"}},
        {"name": "target-patient", "valueReference": {"reference": format!("Patient/{}", id(&b))}}]});
    app.post_json("Patient/$merge", &by_ident)
        .await
        .assert_outcome(404);
    // Nothing changed.
    assert_eq!(
        app.get(&format!("Patient/{}", id(&a))).await.json()["meta"]["versionId"],
        "1"
    );
}

async fn merge_by_identifier_and_match_by_passport(app: TestApp) {
    const PASSPORT: &str = "http://fhir.ehealth.gov.vn/core/sid/passport_number";
    // A foreigner registered twice: once with the passport, once by a hospital number.
    let with_passport = app
        .create(
            &json!({"resourceType": "Patient", "name": [{"family": "Smith", "given": ["Anna"]}],
            "gender": "female", "birthDate": "1980-02-03",
            "identifier": [{"system": PASSPORT, "value": "C1234567"}]}),
        )
        .await;
    let by_mrn = app
        .create(
            &json!({"resourceType": "Patient", "name": [{"family": "Smith", "given": ["Anna"]}],
            "gender": "female", "birthDate": "1980-02-03",
            "identifier": [{"system": PASSPORT, "value": "C7654321"},
                           {"system": "http://benhvien-c.vn/mrn", "value": "F-12"}]}),
        )
        .await;
    let probe = json!({"resourceType": "Patient", "identifier": [{"system": PASSPORT, "value": "C1234567"}]});
    assert_eq!(
        matches(&app, &match_params(probe, vec![])).await,
        [(id(&with_passport), "certain".to_string(), 1.0)]
    );
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "source-patient-identifier", "valueIdentifier": {"system": "http://benhvien-c.vn/mrn", "value": "F-12"}},
        {"name": "target-patient", "valueReference": {"reference": format!("Patient/{}", id(&with_passport))}}]});
    let r = app.post_json("Patient/$merge", &params).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let source = app.get(&format!("Patient/{}", id(&by_mrn))).await.json();
    assert_eq!(source["link"][0]["type"], "replaced-by");
    let target = &r.json()["parameter"][2]["resource"];
    let values: Vec<&str> = target["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["C1234567", "C7654321", "F-12"]);
}

crate::on_both_databases!(
    merge_by_identifier_and_match_by_passport,
    match_grades_identifiers_and_demographics,
    merge_moves_references_and_is_audited,
    merge_refuses_two_people_and_unknown_records,
);
