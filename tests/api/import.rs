//! Bulk import: `yba import` of folders of NDJSON and Bundles beside a running server, read back
//! through the API; a broken file, a re-run, an import killed half-way.

use serde_json::{Value, json};

use crate::helpers::{TestApp, patient};

fn observation(id: &str, subject: &str, value: f64) -> Value {
    json!({
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

fn with_id(mut v: Value, id: &str) -> Value {
    v["id"] = json!(id);
    v
}

fn ndjson(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// `yba import` with `args` against the app's database: (succeeded, stdout and stderr).
async fn yba_import(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_yba"))
        .arg("import")
        .args(args)
        .env("DATABASE_URL", &app.db_url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("yba import runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn count(app: &TestApp, ty: &str) -> u64 {
    let r = app.get(&format!("{ty}?_summary=count")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["total"].as_u64().expect("a total")
}

async fn a_folder_with_a_broken_file_goes_in_but_its_broken_lines(app: TestApp) {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    std::fs::write(
        d.join("patients.ndjson"),
        ndjson(&[
            with_id(patient("001090000601"), "p1").to_string(),
            with_id(patient("001090000602"), "p2").to_string(),
        ]),
    )
    .unwrap();
    let broken = [
        observation("o1", "Patient/p1", 72.0).to_string(),
        observation("o2", "Patient/p1", 75.0).to_string(),
        json!({"resourceType": "Observation", "id": "o3", "status": "final",
               "code": {"text": "pulse"}, "colour": "red"})
        .to_string(),
        observation("o4", "Patient/p2", 80.0).to_string(),
        "{\"resourceType\": \"Observation\", \"id\": \"o5\",".to_string(),
        String::new(),
        observation("o6", "Patient/p2", 82.0).to_string(),
    ];
    std::fs::create_dir(d.join("ward")).unwrap();
    std::fs::write(d.join("ward/observations.ndjson"), ndjson(&broken)).unwrap();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b5e1c1e-0000-4000-8000-000000000001", "resource": patient("001090000603"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "urn:uuid:0b5e1c1e-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "Encounter"}}
    ]});
    std::fs::write(d.join("admission.json"), bundle.to_string()).unwrap();
    std::fs::write(d.join("README.txt"), "not FHIR").unwrap();
    let errors = d.join("errors.out");
    let folder = d.to_str().unwrap();

    let (ok, out) = yba_import(&app, &[folder, "--errors", errors.to_str().unwrap()]).await;
    assert!(!ok, "broken lines make the import fail: {out}");
    assert!(out.contains("observations.ndjson:3"), "{out}");
    assert!(
        out.contains("Observation.colour"),
        "the line's OperationOutcome says where: {out}"
    );
    assert!(out.contains("observations.ndjson:5"), "{out}");
    assert!(
        out.contains("README.txt"),
        "the file left alone is named: {out}"
    );
    assert!(
        out.contains("8 resources written"),
        "2 Patients, 4 Observations and the Bundle's 2 resources: {out}"
    );
    let reported: Vec<Value> = std::fs::read_to_string(&errors)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reported.len(), 2, "{reported:?}");
    assert_eq!(reported[0]["line"], 3);
    assert_eq!(reported[0]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(
        reported[0]["outcome"]["issue"][0]["expression"][0],
        "Observation.colour"
    );
    assert_eq!(reported[1]["line"], 5);

    assert_eq!(count(&app, "Patient").await, 3);
    assert_eq!(count(&app, "Observation").await, 4);
    assert_eq!(count(&app, "Encounter").await, 1);
    let o1 = app.get("Observation/o1").await;
    assert_eq!(o1.status, 200, "{}", o1.body);
    assert_eq!(o1.json()["subject"]["reference"], "Patient/p1");
    assert_eq!(o1.json()["meta"]["versionId"], "1");
    let found = app.get("Observation?subject=Patient/p2").await.json();
    assert_eq!(
        found["entry"].as_array().map(Vec::len),
        Some(2),
        "indexed: {found}"
    );
    assert_eq!(app.get("Observation/o3").await.status, 404);

    // Run again: nothing new is written, the Bundle is not run twice.
    let (ok, out) = yba_import(&app, &[folder]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("0 resources written"), "{out}");
    assert!(out.contains("6 already in and unchanged"), "{out}");
    assert!(out.contains("1 Bundles imported before"), "{out}");
    assert_eq!(count(&app, "Patient").await, 3);
    assert_eq!(count(&app, "Encounter").await, 1);
    assert_eq!(app.get("Observation/o1/_history").await.json()["total"], 1);

    // The broken lines mended and one value changed: exactly those go in.
    let mut mended = broken.to_vec();
    mended[0] = observation("o1", "Patient/p1", 90.0).to_string();
    mended[2] = observation("o3", "Patient/p1", 70.0).to_string();
    mended[4] = observation("o5", "Patient/p2", 71.0).to_string();
    std::fs::write(d.join("ward/observations.ndjson"), ndjson(&mended)).unwrap();
    let (ok, out) = yba_import(&app, &[folder]).await;
    assert!(ok, "{out}");
    assert!(out.contains("3 resources written"), "{out}");
    let o1 = app.get("Observation/o1").await.json();
    assert_eq!(o1["meta"]["versionId"], "2");
    assert_eq!(o1["valueQuantity"]["value"].as_f64(), Some(90.0));
    assert_eq!(count(&app, "Observation").await, 6);
}

async fn an_import_killed_half_way_resumes_without_loss_or_duplicates(app: TestApp) {
    const N: usize = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("observations.ndjson");
    let mut lines = vec![with_id(patient("001090000611"), "p1").to_string()];
    lines.extend((0..N).map(|i| observation(&format!("o{i}"), "Patient/p1", i as f64).to_string()));
    std::fs::write(&file, ndjson(&lines)).unwrap();
    let path = file.to_str().unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_yba"))
        .args(["import", path, "--workers", "2", "--batch", "100"])
        .env("DATABASE_URL", &app.db_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("yba import starts");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    while count(&app, "Observation").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing went in");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().await.expect("killed");
    let before = count(&app, "Observation").await;
    assert!(
        before > 0 && (before as usize) < N,
        "killed half-way: {before} of {N}"
    );

    let (ok, out) = yba_import(&app, &[path, "--workers", "2"]).await;
    assert!(ok, "{out}");
    let patient_in = count(&app, "Patient").await;
    assert_eq!(patient_in, 1);
    assert_eq!(count(&app, "Observation").await, N as u64, "nothing lost");
    // Every resource was either written now or found in, unchanged: none twice.
    let written = out
        .split(" resources written")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("a written count");
    let unchanged = out
        .split(" already in and unchanged")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("an unchanged count");
    assert_eq!(written + unchanged, N as u64 + 1, "{out}");
    assert!(unchanged >= before, "{out}");
    for i in [0, N / 2, N - 1] {
        let h = app.get(&format!("Observation/o{i}/_history")).await.json();
        assert_eq!(h["total"], 1, "one version of o{i}: {h}");
    }
}

crate::on_both_databases!(
    a_folder_with_a_broken_file_goes_in_but_its_broken_lines,
    an_import_killed_half_way_resumes_without_loss_or_duplicates,
);
