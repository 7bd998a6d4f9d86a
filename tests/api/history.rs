//! History at instance, type and system level: order, paging, `_since`, `_at`, `_elements`, `_type`.

use serde_json::{Value, json};

use crate::helpers::{TestApp, patient};

fn ids_and_versions(bundle: &Value) -> Vec<(String, String)> {
    bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let url = e["fullUrl"].as_str().unwrap();
                    let id = url.rsplit('/').next().unwrap().to_string();
                    let v = e["response"]["etag"].as_str().unwrap().to_string();
                    (id, v)
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn history_pages_through_every_version_once(app: TestApp) {
    let mut expected = Vec::new();
    for i in 0..7 {
        let p = app.create(&patient(&format!("0010900002{i:02}"))).await;
        expected.push(p["id"].as_str().unwrap().to_string());
    }
    let org = app
        .create(&json!({"resourceType": "Organization", "name": "Trạm y tế xã"}))
        .await;
    let mut seen = Vec::new();
    let mut url = "Patient/_history?_count=3".to_string();
    let mut pages = 0;
    loop {
        let page = app.get(&url).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let b = page.json();
        assert_eq!(b["type"], "history");
        seen.extend(ids_and_versions(&b).into_iter().map(|(id, _)| id));
        pages += 1;
        let next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        match next {
            Some(n) => {
                url = n
                    .strip_prefix(&format!("{}/", app.base))
                    .unwrap()
                    .to_string()
            }
            None => break,
        }
        assert!(pages < 10);
    }
    expected.reverse();
    assert_eq!(seen, expected, "newest first, each once");
    // System history holds the organization too.
    let all = app.get("_history").await.json();
    let ids: Vec<String> = ids_and_versions(&all)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), 8);
    assert_eq!(ids[0], org["id"].as_str().unwrap());
}

async fn since_and_at_select_versions_by_time(app: TestApp) {
    let p = app.create(&patient("001090000300")).await;
    let id = p["id"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let mut p2 = p.clone();
    p2["gender"] = json!("other");
    let v2 = app.put_json(&format!("Patient/{id}"), &p2).await.json();
    let t2 = v2["meta"]["lastUpdated"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let mut p3 = p2.clone();
    p3["name"][0]["family"] = json!("Trần");
    let v3 = app.put_json(&format!("Patient/{id}"), &p3).await.json();
    let t3 = v3["meta"]["lastUpdated"].as_str().unwrap().to_string();

    let since = app
        .get(&format!(
            "Patient/{id}/_history?_since={}",
            t2.replace('+', "%2B")
        ))
        .await
        .json();
    let versions: Vec<String> = ids_and_versions(&since)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(versions, vec!["W/\"3\"", "W/\"2\""]);

    // At t2 exactly, version 2 was current (and version 1 ended then).
    let at = app
        .get(&format!("Patient/{id}/_history?_at={t2}"))
        .await
        .json();
    let versions: Vec<String> = ids_and_versions(&at).into_iter().map(|(_, v)| v).collect();
    assert!(
        versions.contains(&"W/\"2\"".to_string()) && !versions.contains(&"W/\"3\"".to_string()),
        "{versions:?}"
    );
    let at3 = app
        .get(&format!("Patient/{id}/_history?_at={t3}"))
        .await
        .json();
    let versions: Vec<String> = ids_and_versions(&at3).into_iter().map(|(_, v)| v).collect();
    assert_eq!(versions, vec!["W/\"3\""]);
    // A whole year: every version.
    let year = &t3[..4];
    let all = app
        .get(&format!("Patient/{id}/_history?_at={year}"))
        .await
        .json();
    assert_eq!(all["entry"].as_array().unwrap().len(), 3);
    // Before anything existed: none.
    let none = app
        .get(&format!("Patient/{id}/_history?_at=2001"))
        .await
        .json();
    assert!(none.get("entry").is_none());
}

async fn history_of_an_unknown_resource_is_404(app: TestApp) {
    app.get("Patient/nobody/_history").await.assert_outcome(404);
}

/// `_elements=id` lists the versions without their content (how a commune node asks what
/// changed before fetching only what it lacks); deletions are listed as such.
async fn elements_list_versions_without_their_content(app: TestApp) {
    let p = app.create(&patient("001090000310")).await;
    let id = p["id"].as_str().unwrap().to_string();
    assert_eq!(app.delete(&format!("Patient/{id}")).await.status, 204);
    let h = app.get("_history?_elements=id&_count=1").await;
    assert_eq!(h.status, 200, "{}", h.body);
    let b = h.json();
    assert_eq!(b["entry"][0]["request"]["method"], "DELETE", "{b}");
    assert!(b["entry"][0].get("resource").is_none(), "{b}");
    let next = b["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap();
    assert!(
        next["url"].as_str().unwrap().contains("_elements=id"),
        "{b}"
    );
    let h = app
        .get(&format!("Patient/{id}/_history?_elements=id"))
        .await
        .json();
    let v1 = &h["entry"][1]["resource"];
    assert_eq!(v1["id"], id.as_str());
    assert_eq!(v1["meta"]["versionId"], "1");
    assert_eq!(v1["meta"]["tag"][0]["code"], "SUBSETTED", "{v1}");
    assert!(
        v1.get("identifier").is_none() && v1.get("name").is_none(),
        "{v1}"
    );
    // `_type` (R5) narrows system history to some types.
    app.create(&json!({"resourceType": "Organization", "name": "Trạm y tế xã"}))
        .await;
    let h = app.get("_history?_type=Organization,Location").await.json();
    let types: Vec<&str> = h["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Organization"], "{h}");
    app.get("_history?_type=Nope").await.assert_outcome(400);
}

crate::on_both_databases!(
    elements_list_versions_without_their_content,
    history_pages_through_every_version_once,
    since_and_at_select_versions_by_time,
    history_of_an_unknown_resource_is_404,
);
