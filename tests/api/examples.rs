//! Every official R4 example the server accepts comes back without loss: as JSON, and after a
//! JSON → XML → JSON round trip through the API. The examples it refuses are listed, with the
//! reason, in `tests/data/refused-r4-examples.txt`: a change in either set fails the test.

use std::collections::BTreeMap;
use std::path::Path;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::TestApp;

const EXAMPLES: &str = "../shared/fhir/r4-examples/instances";

/// The content a client gave, without what the server owns (`meta.versionId`, `lastUpdated`).
fn content(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            v.as_object_mut().unwrap().remove("meta");
        }
    }
    v
}

async fn round_trip(app: &TestApp, original: &Value) -> Result<(), String> {
    let ty = original["resourceType"].as_str().unwrap();
    let id = original["id"].as_str().ok_or("no id")?;
    let path = format!("{ty}/{id}");
    let put = app
        .send(
            app.request(Method::PUT, &path)
                .header("content-type", "application/fhir+json")
                .body(original.to_string()),
        )
        .await;
    if put.status >= 300 {
        let oo = put.json();
        return Err(format!(
            "refused {}: {}",
            put.status,
            oo["issue"][0]["diagnostics"].as_str().unwrap_or("")
        ));
    }
    let stored = content(app.get(&path).await.json());
    if stored != content(original.clone()) {
        return Err(format!("JSON differs after storing:\n{stored}\n{original}"));
    }
    let xml = app
        .send(
            app.request(Method::GET, &path)
                .header("accept", "application/fhir+xml"),
        )
        .await;
    assert_eq!(xml.status, 200, "{path} as XML: {}", xml.body);
    let back = app
        .send(
            app.request(Method::PUT, &path)
                .header("content-type", "application/fhir+xml")
                .header("accept", "application/fhir+json")
                .body(xml.body.clone()),
        )
        .await;
    if back.status != 200 {
        return Err(format!(
            "LOSS: its own XML was refused ({}): {}\n{}",
            back.status, back.body, xml.body
        ));
    }
    let again = content(app.get(&path).await.json());
    if again != content(original.clone()) {
        return Err(format!(
            "LOSS: JSON differs after XML:\n{again}\n{original}"
        ));
    }
    Ok(())
}

async fn official_examples_round_trip_without_loss(app: TestApp) {
    let dir = Path::new(EXAMPLES);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("../shared/fhir/r4-examples is present")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() > 700, "examples found: {}", files.len());
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    let mut lost = Vec::new();
    let mut accepted = 0;
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let original: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
        match round_trip(&app, &original).await {
            Ok(()) => accepted += 1,
            Err(e) if e.starts_with("LOSS") || e.starts_with("JSON differs") => {
                lost.push(format!("{name}: {e}"))
            }
            Err(e) => {
                refused.insert(name, e);
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} examples lost content:\n{}",
        lost.len(),
        lost.join("\n\n")
    );
    let expected: BTreeMap<String, String> = include_str!("../data/refused-r4-examples.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, why) = l.split_once(' ').unwrap_or((l, ""));
            (name.to_string(), why.trim().to_string())
        })
        .collect();
    let got: Vec<&String> = refused.keys().collect();
    let want: Vec<&String> = expected.keys().collect();
    assert_eq!(
        got,
        want,
        "refused examples changed; now refused:\n{}",
        refused
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "{accepted} of {} official examples round-trip; {} refused as listed",
        files.len(),
        refused.len()
    );
}

crate::on_both_databases!(
    @with crate::helpers::international;official_examples_round_trip_without_loss);
