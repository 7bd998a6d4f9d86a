//! Search through HTTP: each parameter type with its modifiers and prefixes, chains, `_has`,
//! includes, paging, and Vietnamese names.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::TestApp;

/// The ids of a searchset's matches, sorted.
fn ids(bundle: &Value) -> Vec<String> {
    let mut out: Vec<String> = bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

async fn search(app: &TestApp, query: &str) -> Value {
    let r = app.get(query).await;
    assert_eq!(r.status, 200, "{query}: {}", r.body);
    let b = r.json();
    assert_eq!(b["type"], "searchset");
    b
}

async fn put(app: &TestApp, v: Value) {
    let path = format!(
        "{}/{}",
        v["resourceType"].as_str().unwrap(),
        v["id"].as_str().unwrap()
    );
    let r = app.put_json(&path, &v).await;
    assert!(r.status == 201 || r.status == 200, "{path}: {}", r.body);
}

/// A small population: three patients, a practitioner, an organization, observations.
async fn population(app: &TestApp) {
    put(
        app,
        json!({"resourceType": "Organization", "id": "bvbm", "name": "Bệnh viện Bạch Mai",
        "identifier": [{"system": "urn:vn:facility", "value": "01001"}]}),
    )
    .await;
    put(app, json!({"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Trần", "given": ["Thị", "Hoa"]}]})).await;
    put(app, json!({"resourceType": "Patient", "id": "an", "active": true, "gender": "male",
        "birthDate": "1990-04-30",
        "identifier": [{"system": "urn:cccd", "value": "001090000001",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NI"}]}}],
        "name": [{"family": "Nguyễn", "given": ["Văn", "An"]}],
        "address": [{"city": "Hà Nội", "line": ["12 Phố Huế"]}],
        "telecom": [{"system": "phone", "value": "0912345678"}],
        "managingOrganization": {"reference": "Organization/bvbm"},
        "generalPractitioner": [{"reference": "Practitioner/dr1"}]})).await;
    put(
        app,
        json!({"resourceType": "Patient", "id": "binh", "active": false, "gender": "female",
        "birthDate": "1985-12",
        "identifier": [{"system": "urn:cccd", "value": "079185000002"}],
        "name": [{"family": "Lê", "given": ["Thị", "Bình"]}],
        "address": [{"city": "Thành phố Hồ Chí Minh"}]}),
    )
    .await;
    put(
        app,
        json!({"resourceType": "Patient", "id": "duc", "gender": "male",
        "birthDate": "2001-01-15",
        "name": [{"family": "Đặng", "given": ["Đức"]}]}),
    )
    .await;
    for (id, patient, code, value, when) in [
        ("o1", "an", "8480-6", 141.0, "2024-03-01T08:00:00+07:00"),
        ("o2", "an", "8480-6", 118.5, "2024-06-01T08:00:00+07:00"),
        ("o3", "binh", "8480-6", 125.0, "2023-01-10T09:30:00Z"),
        ("o4", "binh", "29463-7", 55.0, "2024-06-02T10:00:00Z"),
    ] {
        put(app, json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": if code == "8480-6" {"Huyết áp tâm thu"} else {"Cân nặng"}},
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": if code == "8480-6" {"mmHg"} else {"kg"},
                "system": "http://unitsofmeasure.org", "code": if code == "8480-6" {"mm[Hg]"} else {"kg"}}})).await;
    }
}

async fn string_search_folds_vietnamese_diacritics(app: TestApp) {
    population(&app).await;
    assert_eq!(ids(&search(&app, "Patient?name=nguyen").await), ["an"]);
    assert_eq!(ids(&search(&app, "Patient?name=NGUY").await), ["an"]);
    assert_eq!(ids(&search(&app, "Patient?family=dang").await), ["duc"]);
    assert_eq!(ids(&search(&app, "Patient?given=duc").await), ["duc"]);
    assert_eq!(ids(&search(&app, "Patient?given=thi").await), ["binh"]);
    assert_eq!(ids(&search(&app, "Patient?name=Nguyễn").await), ["an"]);
    // :exact is exact, accents and case included.
    assert_eq!(
        ids(&search(&app, "Patient?family:exact=Nguyễn").await),
        ["an"]
    );
    assert!(ids(&search(&app, "Patient?family:exact=Nguyen").await).is_empty());
    assert!(ids(&search(&app, "Patient?family:exact=nguyễn").await).is_empty());
    // :contains matches inside the value.
    assert_eq!(
        ids(&search(&app, "Patient?address-city:contains=chi minh").await),
        ["binh"]
    );
    assert_eq!(ids(&search(&app, "Patient?address=ha noi").await), ["an"]);
    // Comma is OR, repetition is AND.
    assert_eq!(
        ids(&search(&app, "Patient?family=le,dang").await),
        ["binh", "duc"]
    );
    assert!(ids(&search(&app, "Patient?family=le&family=dang").await).is_empty());
    assert!(ids(&search(&app, "Patient?name=tran").await).is_empty());
}

async fn token_search_matches_system_and_code(app: TestApp) {
    population(&app).await;
    assert_eq!(
        ids(&search(&app, "Patient?gender=male").await),
        ["an", "duc"]
    );
    assert_eq!(
        ids(&search(&app, "Patient?gender:not=male").await),
        ["binh"]
    );
    assert_eq!(
        ids(&search(&app, "Patient?identifier=urn:cccd|001090000001").await),
        ["an"]
    );
    assert_eq!(
        ids(&search(&app, "Patient?identifier=001090000001").await),
        ["an"]
    );
    assert!(ids(&search(&app, "Patient?identifier=urn:other|001090000001").await).is_empty());
    assert_eq!(
        ids(&search(&app, "Patient?identifier=urn:cccd|").await),
        ["an", "binh"]
    );
    assert_eq!(ids(&search(&app, "Patient?active=true").await), ["an"]);
    assert_eq!(ids(&search(&app, "Patient?phone=0912345678").await), ["an"]);
    assert_eq!(
        ids(&search(&app, "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|NI|001090000001").await),
        ["an"]
    );
    assert_eq!(
        ids(&search(&app, "Observation?code=http://loinc.org|8480-6").await),
        ["o1", "o2", "o3"]
    );
    assert_eq!(
        ids(&search(&app, "Observation?code:text=can nang").await),
        ["o4"]
    );
    // :missing.
    assert_eq!(
        ids(&search(&app, "Patient?identifier:missing=true").await),
        ["duc"]
    );
    assert_eq!(
        ids(&search(&app, "Patient?identifier:missing=false").await),
        ["an", "binh"]
    );
    // _id.
    assert_eq!(
        ids(&search(&app, "Patient?_id=an,duc").await),
        ["an", "duc"]
    );
}

async fn date_search_honours_prefixes_and_precision(app: TestApp) {
    population(&app).await;
    assert_eq!(ids(&search(&app, "Patient?birthdate=1990").await), ["an"]);
    assert_eq!(
        ids(&search(&app, "Patient?birthdate=1990-04-30").await),
        ["an"]
    );
    assert!(ids(&search(&app, "Patient?birthdate=1990-05").await).is_empty());
    assert_eq!(
        ids(&search(&app, "Patient?birthdate=gt1989").await),
        ["an", "duc"]
    );
    assert_eq!(
        ids(&search(&app, "Patient?birthdate=lt1990").await),
        ["binh"]
    );
    assert_eq!(
        ids(&search(&app, "Patient?birthdate=ge1990-04-30").await),
        ["an", "duc"]
    );
    assert_eq!(
        ids(&search(&app, "Patient?birthdate=le1985-12-31").await),
        ["binh"]
    );
    assert_eq!(
        ids(&search(&app, "Patient?birthdate=ne1990").await),
        ["binh", "duc"]
    );
    assert_eq!(
        ids(&search(&app, "Patient?birthdate=sa2000").await),
        ["duc"]
    );
    assert_eq!(
        ids(&search(&app, "Patient?birthdate=eb1990").await),
        ["binh"]
    );
    // A month-precision birth date is within its year, and not on one of its days.
    assert_eq!(ids(&search(&app, "Patient?birthdate=1985").await), ["binh"]);
    assert!(ids(&search(&app, "Patient?birthdate=1985-12-01").await).is_empty());
    // Timezones: 08:00+07:00 is 01:00Z.
    assert_eq!(
        ids(&search(&app, "Observation?date=2024-03-01T01:00:00Z").await),
        ["o1"]
    );
    assert_eq!(
        ids(&search(&app, "Observation?date=ge2024-06-01&date=lt2024-06-03").await),
        ["o2", "o4"]
    );
    // A range of two conditions: AND.
    assert_eq!(
        ids(&search(&app, "Observation?date=ge2023&date=lt2024").await),
        ["o3"]
    );
    // Periods: narrow ones (a visit) and wide ones (an admission of weeks, an open one).
    for (id, start, end) in [
        (
            "visit",
            "2024-03-01T08:00:00+07:00",
            Some("2024-03-01T11:00:00+07:00"),
        ),
        (
            "earlier",
            "2024-02-01T08:00:00+07:00",
            Some("2024-02-01T09:00:00+07:00"),
        ),
        ("admission", "2024-01-15", Some("2024-03-10")),
        ("ongoing", "2020-05-01", None),
        ("later", "2024-03-05", Some("2024-03-06")),
    ] {
        let mut period = json!({"start": start});
        if let Some(e) = end {
            period["end"] = json!(e);
        }
        put(
            &app,
            json!({"resourceType": "Encounter", "id": id, "status": "finished",
            "class": {"code": "AMB"}, "period": period}),
        )
        .await;
    }
    let mut on_the_day = ids(&search(&app, "Encounter?date=ge2024-03-01&date=lt2024-03-02").await);
    on_the_day.sort();
    assert_eq!(on_the_day, ["admission", "ongoing", "visit"]);
    let mut after = ids(&search(&app, "Encounter?date=gt2024-03-02").await);
    after.sort();
    assert_eq!(after, ["admission", "later", "ongoing"]);
    assert_eq!(
        ids(&search(&app, "Encounter?date=2024-03-01").await),
        ["visit"]
    );
}

async fn quantity_and_composite_search(app: TestApp) {
    population(&app).await;
    assert_eq!(
        ids(&search(&app, "Observation?value-quantity=gt140").await),
        ["o1"]
    );
    assert_eq!(
        ids(&search(&app, "Observation?value-quantity=141").await),
        ["o1"]
    );
    assert_eq!(
        ids(&search(
            &app,
            "Observation?value-quantity=118.5|http://unitsofmeasure.org|mm[Hg]"
        )
        .await),
        ["o2"]
    );
    assert!(
        ids(&search(
            &app,
            "Observation?value-quantity=118.5|http://unitsofmeasure.org|kg"
        )
        .await)
        .is_empty()
    );
    assert_eq!(
        ids(&search(&app, "Observation?value-quantity=le60||kg").await),
        ["o4"]
    );
    assert_eq!(
        ids(&search(&app, "Observation?value-quantity=ap120").await),
        ["o2", "o3"]
    );
    assert_eq!(
        ids(&search(
            &app,
            "Observation?code-value-quantity=http://loinc.org|8480-6$gt130"
        )
        .await),
        ["o1"]
    );
    assert!(
        ids(&search(
            &app,
            "Observation?code-value-quantity=http://loinc.org|29463-7$gt130"
        )
        .await)
        .is_empty()
    );
}

async fn reference_chain_and_has_search(app: TestApp) {
    population(&app).await;
    assert_eq!(
        ids(&search(&app, "Observation?subject=Patient/an").await),
        ["o1", "o2"]
    );
    assert_eq!(
        ids(&search(&app, "Observation?patient=binh").await),
        ["o3", "o4"]
    );
    assert_eq!(
        ids(&search(&app, "Observation?subject:Patient=binh").await),
        ["o3", "o4"]
    );
    // Another server's Patient/an is not ours.
    assert!(
        ids(&search(
            &app,
            "Observation?subject=http://elsewhere.org/fhir/Patient/an"
        )
        .await)
        .is_empty()
    );
    // This server's own Patient/an, named by its full URL.
    let own = format!("Observation?subject={}/Patient/an", app.base);
    assert_eq!(ids(&search(&app, &own).await), ["o1", "o2"]);
    assert_eq!(
        ids(&search(&app, "Patient?general-practitioner=Practitioner/dr1").await),
        ["an"]
    );
    // Chained, and two levels deep.
    assert_eq!(
        ids(&search(&app, "Observation?subject:Patient.name=le").await),
        ["o3", "o4"]
    );
    assert_eq!(
        ids(&search(&app, "Observation?patient.identifier=001090000001").await),
        ["o1", "o2"]
    );
    assert_eq!(
        ids(&search(
            &app,
            "Observation?subject:Patient.organization.name=benh vien bach"
        )
        .await),
        ["o1", "o2"]
    );
    // Reverse chain: patients with a weight observation.
    assert_eq!(
        ids(&search(&app, "Patient?_has:Observation:patient:code=29463-7").await),
        ["binh"]
    );
    assert_eq!(
        ids(&search(
            &app,
            "Patient?_has:Observation:subject:value-quantity=gt130"
        )
        .await),
        ["an"]
    );
}

async fn includes_add_the_referenced_and_referencing(app: TestApp) {
    population(&app).await;
    let b = search(&app, "Observation?code=8480-6&_include=Observation:subject").await;
    assert_eq!(ids(&b), ["o1", "o2", "o3"]);
    let mut included: Vec<String> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    included.sort();
    assert_eq!(included, ["Patient/an", "Patient/binh"]);
    let b = search(&app, "Patient?_id=an&_revinclude=Observation:subject").await;
    let n_obs = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .count();
    assert_eq!(n_obs, 2);
    // :iterate follows the included patients to their organization.
    let b = search(
        &app,
        "Observation?_id=o1&_include=Observation:subject&_include:iterate=Patient:organization",
    )
    .await;
    assert!(
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["resource"]["resourceType"] == "Organization")
    );
}

async fn paging_links_walk_every_match_once(app: TestApp) {
    for i in 0..7 {
        app.create(&json!({"resourceType": "Patient", "gender": "other", "name": [{"family": format!("Phạm{i}")}]})).await;
    }
    let mut seen = Vec::new();
    let mut url = format!("{}Patient?gender=other&_count=3", "");
    let mut pages = 0;
    loop {
        let b = search(&app, &url).await;
        pages += 1;
        seen.extend(ids(&b));
        let next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        match next {
            Some(n) => {
                // Links are absolute; ask for the part after the base.
                let after_base = n.split("/fhir/").nth(1).unwrap().to_string();
                // A write between pages does not move the others.
                app.create(&json!({"resourceType": "Patient", "gender": "male"}))
                    .await;
                url = after_base;
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 7);
    let b = search(&app, "Patient?gender=other&_total=accurate&_count=2").await;
    assert_eq!(b["total"], 7);
    let b = search(&app, "Patient?gender=other&_summary=count").await;
    assert_eq!(b["total"], 7);
    assert!(b.get("entry").is_none());
}

async fn bad_searches_get_clear_answers(app: TestApp) {
    population(&app).await;
    // Lenient (default): the unknown parameter is ignored, left out of `self`, and reported.
    let b = search(&app, "Patient?nonsense=1&gender=female").await;
    assert_eq!(ids(&b), ["binh"]);
    let self_link = b["link"][0]["url"].as_str().unwrap();
    assert!(!self_link.contains("nonsense"), "{self_link}");
    assert!(
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["search"]["mode"] == "outcome")
    );
    // Strict: 400 with the parameter as the location.
    for q in [
        "Patient?nonsense=1",
        "Patient?birthdate=notadate",
        "Patient?gender:exact=male",
        "Observation?value-quantity=abc",
        "Patient?_count=-1",
    ] {
        let r = app
            .send(
                app.request(Method::GET, q)
                    .header("prefer", "handling=strict"),
            )
            .await;
        r.assert_outcome(400);
        assert!(!r.issue_expressions().is_empty(), "{q}: {}", r.body);
    }
    // A value that looks like SQL is a value.
    assert!(ids(&search(&app, "Patient?name=x'%20OR%201=1--").await).is_empty());
}

async fn conditional_update_takes_any_criteria(app: TestApp) {
    population(&app).await;
    let r = app
        .put_json(
            "Patient?family=dang&birthdate=2001",
            &json!({"resourceType": "Patient", "gender": "male", "name": [{"family": "Đặng", "given": ["Đức", "Minh"]}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], "duc");
    // Two matches: 412.
    let r = app
        .put_json("Patient?gender=male", &json!({"resourceType": "Patient"}))
        .await;
    assert_eq!(r.status, 412, "{}", r.body);
}

async fn index_follows_updates_and_deletes(app: TestApp) {
    population(&app).await;
    put(&app, json!({"resourceType": "Patient", "id": "duc", "gender": "male", "name": [{"family": "Hoàng"}]})).await;
    assert!(ids(&search(&app, "Patient?family=dang").await).is_empty());
    assert_eq!(ids(&search(&app, "Patient?family=hoang").await), ["duc"]);
    assert!(matches!(app.delete("Patient/duc").await.status, 200 | 204));
    assert!(ids(&search(&app, "Patient?family=hoang").await).is_empty());
    assert_eq!(ids(&search(&app, "Patient?gender=male").await), ["an"]);
}

async fn system_search_across_types(app: TestApp) {
    population(&app).await;
    let b = search(&app, "?_type=Patient,Practitioner&_id=an,dr1").await;
    assert_eq!(ids(&b), ["an", "dr1"]);
    let b = search(&app, "Patient?_id=an&_elements=name").await;
    let p = &b["entry"][0]["resource"];
    assert!(p.get("name").is_some() && p.get("gender").is_none());
    assert!(
        p["meta"]["tag"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["code"] == "SUBSETTED")
    );
}

async fn everything_returns_the_patients_whole_record(app: TestApp) {
    population(&app).await;
    // A Task is not in the R4 Patient compartment, whatever it points at; another patient's
    // observation that names Bình as performer is not An's.
    put(
        &app,
        json!({"resourceType": "Task", "id": "t1", "status": "requested", "intent": "order",
        "for": {"reference": "Patient/an"}}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "o5", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "Patient/binh"},
        "performer": [{"reference": "Patient/an"}]}),
    )
    .await;
    let b = search(&app, "Patient/an/$everything").await;
    let mut got: Vec<String> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    got.sort();
    // The compartment (o5 through `performer`), and what it refers to: An's organization
    // and doctor, included; never Bình, whom o5 is about.
    assert_eq!(
        got,
        [
            "Observation/o1",
            "Observation/o2",
            "Observation/o5",
            "Organization/bvbm",
            "Patient/an",
            "Practitioner/dr1"
        ]
    );
    let included: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(included.len(), 2, "{included:?}");
    assert!(!included.contains(&"Patient"));
    // `_since`: only what changed since then.
    let future = search(&app, "Patient/an/$everything?_since=2100-01-01T00:00:00Z").await;
    assert!(
        future
            .get("entry")
            .is_none_or(|e| e.as_array().unwrap().is_empty()),
        "{future}"
    );
    let past = search(
        &app,
        "Patient/an/$everything?_since=2000-01-01T00:00:00Z&_type=Observation",
    )
    .await;
    assert_eq!(ids(&past).len(), 3, "{past}");
    assert_eq!(app.get("Patient/an/Task").await.status, 400);
    assert_eq!(app.get("Observation/o1/Patient").await.status, 400);
    let b = search(&app, "Patient/an/$everything?_type=Observation&_count=1").await;
    assert_eq!(b["entry"].as_array().unwrap().len(), 1);
    assert!(b["link"].as_array().unwrap().iter().any(|l| {
        l["relation"] == "next"
            && l["url"]
                .as_str()
                .unwrap()
                .contains("Patient/an/$everything")
    }));
    // A compartment search: the patient's observations above 130.
    assert_eq!(
        ids(&search(&app, "Patient/an/Observation?value-quantity=gt130").await),
        ["o1"]
    );
    assert_eq!(app.get("Patient/nobody/$everything").await.status, 404);
}

async fn sort_orders_by_several_keys_and_pages_stably(app: TestApp) {
    population(&app).await;
    let order = |b: &Value| -> Vec<String> {
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        order(&search(&app, "Patient?_sort=birthdate").await),
        ["binh", "an", "duc"]
    );
    assert_eq!(
        order(&search(&app, "Patient?_sort=-birthdate").await),
        ["duc", "an", "binh"]
    );
    assert_eq!(
        order(&search(&app, "Patient?_sort=family").await),
        ["duc", "binh", "an"]
    );
    // Missing values last; then the second key.
    assert_eq!(
        order(&search(&app, "Patient?_sort=-active,_id").await),
        ["an", "binh", "duc"]
    );
    assert_eq!(
        order(&search(&app, "Observation?_sort=-value-quantity").await),
        ["o1", "o3", "o2", "o4"]
    );
    // Sorted paging walks every match once, forward through `next` links and back through
    // `previous` ones, with missing values (Đức's `active`) last either way.
    for (start, want) in [
        (
            "Observation?_sort=patient,-date&_count=1",
            vec!["o2", "o1", "o4", "o3"],
        ),
        (
            "Observation?_sort=-value-quantity&_count=3",
            vec!["o1", "o3", "o2", "o4"],
        ),
        (
            "Patient?_sort=-active,_id&_count=1",
            vec!["an", "binh", "duc"],
        ),
        ("Patient?_sort=active&_count=2", vec!["binh", "an", "duc"]),
    ] {
        let (forward, last) = walk(&app, start, "next").await;
        assert_eq!(forward, want, "{start}");
        let (mut backward, first) = walk(&app, &last, "previous").await;
        backward.reverse();
        assert_eq!(backward, want, "{start}, backward");
        // The first page reached backward is the first page.
        assert_eq!(
            order(&search(&app, &first).await),
            order(&search(&app, start).await)
        );
    }
}

/// Follows `rel` links from `start`: the ids of every page in the order met (each page's own
/// order reversed when walking backward, so that reversing the whole gives the search's
/// order), and the last page's URL.
async fn walk(app: &TestApp, start: &str, rel: &str) -> (Vec<String>, String) {
    let mut url = start.to_string();
    let mut seen = Vec::new();
    for _ in 0..20 {
        let b = search(app, &url).await;
        let mut page = b["entry"]
            .as_array()
            .map(|es| {
                es.iter()
                    .filter(|e| e["search"]["mode"] == "match")
                    .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if rel == "previous" {
            page.reverse();
        }
        seen.extend(page);
        let link = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == rel);
        match link {
            Some(l) => {
                url = l["url"]
                    .as_str()
                    .unwrap()
                    .split("/fhir/")
                    .nth(1)
                    .unwrap()
                    .to_string()
            }
            None => return (seen, url),
        }
    }
    panic!("{start}: more than 20 pages of {rel} links");
}

/// A hospital adds its own search parameter (ethnicity, a VN extension), reindexes, and
/// searches by it. The registry is process-wide, so the server runs in a process of its own.
#[tokio::test]
async fn own_search_parameter_works_after_reindex_on_sqlite() {
    if let Some(app) = crate::helpers::spawn_process(false).await {
        own_search_parameter_works_after_reindex(app).await
    }
}

#[tokio::test]
async fn own_search_parameter_works_after_reindex_on_postgres() {
    if let Some(app) = crate::helpers::spawn_process(true).await {
        own_search_parameter_works_after_reindex(app).await
    }
}

async fn own_search_parameter_works_after_reindex(app: TestApp) {
    const ETHNICITY: &str = "http://fhir.ehealth.gov.vn/core/StructureDefinition/ethnicity";
    for (id, code) in [("kinh", "01"), ("tay", "02")] {
        // Children (the server runs as shipped, with VN Patient compulsory).
        put(&app, json!({"resourceType": "Patient", "id": id, "name": [{"family": "Lò"}],
            "gender": "female", "birthDate": "2016-03-02",
            "extension": [{"url": ETHNICITY, "valueCoding": {"system": "urn:vn:ethnic", "code": code}}]})).await;
    }
    let strict = |q: &str| {
        app.request(Method::GET, q)
            .header("prefer", "handling=strict")
    };
    app.send(strict("Patient?ethnicity=02"))
        .await
        .assert_outcome(400);
    app.create(&json!({"resourceType": "SearchParameter", "url": "http://yba.example/SearchParameter/ethnicity",
        "name": "ethnicity", "status": "active", "description": "Dân tộc", "code": "ethnicity",
        "base": ["Patient"], "type": "token",
        "expression": format!("Patient.extension('{ETHNICITY}').value")})).await;
    let r = app.send(app.request(Method::POST, "$reindex")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app.send(strict("Patient?ethnicity=urn:vn:ethnic|02")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ids(&r.json()), ["tay"]);
    // New writes are indexed under it at once.
    put(&app, json!({"resourceType": "Patient", "id": "tay2", "name": [{"family": "Lò"}],
        "gender": "male", "birthDate": "2017-08-09",
        "extension": [{"url": ETHNICITY, "valueCoding": {"system": "urn:vn:ethnic", "code": "02"}}]})).await;
    assert_eq!(
        ids(&search(&app, "Patient?ethnicity=02").await),
        ["tay", "tay2"]
    );
}

/// Whichever criterion drives a search (a name matching twice in one patient, a code, an id,
/// a `:missing`), the pages hold each match once, the counts agree, and the other criteria
/// still hold.
async fn every_criterion_pages_and_counts_alike(app: TestApp) {
    let mut female = Vec::new();
    for i in 0..5 {
        // Both the family and the given name start with "nguyen": two index rows match.
        let p = app
            .create(&json!({"resourceType": "Patient", "gender": "female",
            "name": [{"family": "Nguyễn", "given": [format!("Nguyên{i}")]}]}))
            .await;
        female.push(p["id"].as_str().unwrap().to_string());
    }
    for _ in 0..2 {
        app.create(
            &json!({"resourceType": "Patient", "gender": "male", "name": [{"family": "Nguyễn"}]}),
        )
        .await;
    }
    app.create(&json!({"resourceType": "Patient", "name": [{"family": "Nguyễn"}]}))
        .await;
    app.create(
        &json!({"resourceType": "Patient", "gender": "female", "name": [{"family": "Trần"}]}),
    )
    .await;

    // Two names of one patient match: still one entry, on one page.
    let (seen, _) = walk(&app, "Patient?name=nguyen&_count=2", "next").await;
    assert_eq!(seen.len(), 8, "{seen:?}");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 8, "a page repeated a match: {seen:?}");

    assert_eq!(
        search(&app, "Patient?name=nguyen&_summary=count").await["total"],
        8
    );
    assert_eq!(
        search(&app, "Patient?name=nguyen&_total=accurate&_count=1").await["total"],
        8
    );
    let mut f = ids(&search(&app, "Patient?name=nguyen&gender=female").await);
    f.sort();
    let mut want = female.clone();
    want.sort();
    assert_eq!(f, want);
    assert_eq!(
        search(&app, "Patient?gender=female&name=nguyen&_summary=count").await["total"],
        5
    );
    assert_eq!(
        search(&app, "Patient?name=nguyen&gender:not=female&_summary=count").await["total"],
        3
    );
    assert_eq!(
        search(
            &app,
            "Patient?name=nguyen&gender:missing=true&_summary=count"
        )
        .await["total"],
        1
    );
    assert_eq!(
        search(
            &app,
            "Patient?gender:missing=false&name=tran&_summary=count"
        )
        .await["total"],
        1
    );
    let two = format!(
        "Patient?_id={},{}&name=nguyen&gender=female",
        female[0], female[1]
    );
    assert_eq!(ids(&search(&app, &two).await).len(), 2);
    let none = format!("Patient?_id={}&gender=male", female[0]);
    assert!(ids(&search(&app, &none).await).is_empty());
}

/// A search that runs past the time limit is stopped and refused as `too-costly` (PostgreSQL:
/// statement_timeout); the server goes on answering.
#[tokio::test]
async fn a_search_past_the_time_limit_is_too_costly_on_postgres() {
    let Some(app) = crate::helpers::spawn_postgres_with(|_| {}).await else {
        return;
    };
    let entries: Vec<Value> = (0..3000)
        .map(|i| {
            json!({"resource": {"resourceType": "Observation", "status": "final",
            "code": {"text": format!("đo lần {i}")},
            "effectiveDateTime": format!("2024-01-{:02}T08:00:00Z", 1 + i % 28),
            "valueQuantity": {"value": i, "unit": "mmHg"}},
            "request": {"method": "POST", "url": "Observation"}})
        })
        .collect();
    let r = app
        .post_json(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let slow =
        "Observation?value-quantity=ge0&code:text=do&_sort=-date,value-quantity&_total=accurate";
    assert_eq!(search(&app, slow).await["total"], 3000);

    let hurried = crate::helpers::spawn_postgres_beside(&app, |c| c.search_timeout_ms = 1).await;
    let r = hurried.get(slow).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let o = r.json();
    assert_eq!(o["resourceType"], "OperationOutcome");
    assert_eq!(o["issue"][0]["code"], "too-costly", "{o}");
    // The server goes on answering.
    for _ in 0..8 {
        assert_eq!(hurried.get("metadata").await.status, 200);
    }
}

crate::on_both_databases!(
    @with crate::helpers::international;
    every_criterion_pages_and_counts_alike,
    string_search_folds_vietnamese_diacritics,
    token_search_matches_system_and_code,
    date_search_honours_prefixes_and_precision,
    quantity_and_composite_search,
    reference_chain_and_has_search,
    includes_add_the_referenced_and_referencing,
    paging_links_walk_every_match_once,
    bad_searches_get_clear_answers,
    conditional_update_takes_any_criteria,
    index_follows_updates_and_deletes,
    system_search_across_types,
    everything_returns_the_patients_whole_record,
    sort_orders_by_several_keys_and_pages_stably,
);
