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
