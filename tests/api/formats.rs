//! JSON and XML in and out: content negotiation and a lossless round trip between them.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, patient};

async fn xml_in_json_out_and_back(app: TestApp) {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <identifier><system value="http://fhir.ehealth.gov.vn/core/sid/citizen_id"/><value value="001188000500"/></identifier>
  <name><family value="Lê"/><given value="Thị"/><given value="Hồng"/></name>
  <gender value="female"/>
  <birthDate value="1988-08-08"><extension url="http://hl7.org/fhir/StructureDefinition/patient-birthTime"><valueDateTime value="1988-08-08T06:30:00+07:00"/></extension></birthDate>
</Patient>"#;
    let r = app
        .send(
            app.request(Method::POST, "Patient")
                .header("content-type", "application/fhir+xml")
                .body(xml),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/fhir+xml"),
        "answers in the request's format"
    );
    assert!(r.body.contains("<family value=\"Lê\"/>"), "{}", r.body);
    let id = r
        .header("location")
        .unwrap()
        .split('/')
        .rev()
        .nth(2)
        .unwrap()
        .to_string();
    let j = app.get(&format!("Patient/{id}")).await.json();
    assert_eq!(j["name"][0]["given"], json!(["Thị", "Hồng"]));
    assert_eq!(
        j["_birthDate"]["extension"][0]["valueDateTime"],
        "1988-08-08T06:30:00+07:00"
    );
    // _format and Accept choose XML.
    for req in [
        app.request(Method::GET, &format!("Patient/{id}?_format=xml")),
        app.request(
            Method::GET,
            &format!("Patient/{id}?_format=application/fhir%2Bxml"),
        ),
        app.request(Method::GET, &format!("Patient/{id}"))
            .header("accept", "application/fhir+xml"),
        app.request(Method::GET, &format!("Patient/{id}"))
            .header("accept", "text/html;q=0.9, application/xml;q=0.8"),
    ] {
        let x = app.send(req).await;
        assert_eq!(x.status, 200);
        assert!(
            x.header("content-type")
                .unwrap()
                .starts_with("application/fhir+xml")
        );
        assert!(
            x.body.contains("<Patient xmlns=\"http://hl7.org/fhir\">"),
            "{}",
            x.body
        );
    }
    // The XML read back, updated as XML, reads back as the same JSON.
    let x = app
        .send(
            app.request(Method::GET, &format!("Patient/{id}"))
                .header("accept", "application/fhir+xml"),
        )
        .await;
    let r = app
        .send(
            app.request(Method::PUT, &format!("Patient/{id}"))
                .header("content-type", "application/fhir+xml")
                .header("accept", "application/fhir+json")
                .body(x.body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut j2 = r.json();
    let mut j1 = j.clone();
    j1["meta"] = json!(null);
    j2["meta"] = json!(null);
    assert_eq!(j1, j2);
}

async fn pretty_json_on_request(app: TestApp) {
    let p = app.create(&patient("001090000501")).await;
    let r = app
        .get(&format!(
            "Patient/{}?_pretty=true",
            p["id"].as_str().unwrap()
        ))
        .await;
    assert!(r.body.contains("\n  \"resourceType\""), "{}", r.body);
    assert_eq!(r.json(), p);
}

async fn metadata_is_a_capability_statement_of_all_types(app: TestApp) {
    let r = app.get("metadata").await;
    assert_eq!(r.status, 200);
    let cs = r.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    assert_eq!(resources.len(), 146, "every R4 resource type");
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let codes: Vec<&str> = patient["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    for c in [
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
    ] {
        assert!(codes.contains(&c), "{c}");
    }
    assert_eq!(patient["conditionalCreate"], true);
    // VN Patient is compulsory; the operations are listed.
    assert_eq!(
        patient["profile"],
        "https://yba.vn/fhir/StructureDefinition/vn-patient"
    );
    let ops: Vec<&str> = patient["operation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["validate", "export", "everything", "match", "merge"]);
    // Bulk Data at system level, and where Subscriptions' websockets bind.
    let sys_ops: Vec<&str> = cs["rest"][0]["operation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(sys_ops, ["export", "import"]);
    assert!(
        cs["rest"][0]["extension"][0]["valueUri"]
            .as_str()
            .is_some_and(|u| u.starts_with("ws://") && u.ends_with("/fhir/websocket")),
        "{}",
        cs["rest"][0]
    );
    let org = resources
        .iter()
        .find(|r| r["type"] == "Organization")
        .unwrap();
    assert_eq!(
        org["supportedProfile"],
        serde_json::json!(["https://yba.vn/fhir/StructureDefinition/vn-organization"])
    );
    let sys: Vec<&str> = cs["rest"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        sys,
        vec!["search-system", "transaction", "batch", "history-system"]
    );
    // Search parameters are listed from the definitions, per type.
    let params: Vec<&str> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "_id",
        "_lastUpdated",
        "name",
        "birthdate",
        "identifier",
        "general-practitioner",
    ] {
        assert!(params.contains(&p), "{p}");
    }
    let x = app.get("metadata?_format=xml").await;
    assert!(x.body.contains("<CapabilityStatement"), "{}", x.body);
}

crate::on_both_databases!(
    xml_in_json_out_and_back,
    pretty_json_on_request,
    metadata_is_a_capability_statement_of_all_types,
);
