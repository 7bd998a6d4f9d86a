//! Health, readiness, metrics, and a graceful stop.

use crate::helpers::{TestApp, patient};

async fn health_readiness_and_metrics(app: TestApp) {
    let h = app.get("/healthz").await;
    assert_eq!(h.status, 200);
    let r = app.get("/readyz").await;
    assert_eq!(r.status, 200);
    let p = app.create(&patient("001090000600")).await;
    app.get(&format!("Patient/{}", p["id"].as_str().unwrap()))
        .await;
    app.get("Patient/nobody").await;
    let m = app.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.body
            .contains("yba_http_requests_total{interaction=\"read\",status=\"2xx\"} 1"),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("yba_http_requests_total{interaction=\"read\",status=\"4xx\"} 1"),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("yba_http_requests_total{interaction=\"create\",status=\"2xx\"} 1"),
        "{}",
        m.body
    );
    assert!(
        m.body
            .contains("yba_http_request_duration_seconds_bucket{interaction=\"read\""),
        "{}",
        m.body
    );
}

crate::on_both_databases!(health_readiness_and_metrics);

/// SIGTERM lets a request in flight finish (its body still arriving), then the server exits 0.
#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_yba"))
        .arg("serve")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("yba.db").display()),
        )
        .env("YBA_BIND", "127.0.0.1:0")
        .env("YBA_AUTH", "off")
        .env("YBA_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("yba starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("server logs its address in time")
            .unwrap()
            .expect("server is running");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(a) = v["fields"]["addr"].as_str() {
            break a.to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let body = patient("001090000601").to_string();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(first).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    conn.write_all(rest).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&response).contains("\"resourceType\":\"Patient\"") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    drop(conn);
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
