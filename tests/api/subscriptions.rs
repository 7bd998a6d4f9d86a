//! Subscriptions through HTTP: a rest-hook receiver in the test hears matching writes only, in
//! order, with its secret header, and again after its endpoint failed; a websocket subscriber is
//! pinged; two servers sharing one PostgreSQL deliver each notification once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::TestApp;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Heard {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
}

/// A rest-hook endpoint: an HTTP/1.1 server that records what it is sent and answers 200, or
/// 500 while `fail` is above zero (counting down).
pub struct Receiver {
    pub url: String,
    pub heard: Arc<Mutex<Vec<Heard>>>,
    pub fail: Arc<Mutex<u32>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let heard: Arc<Mutex<Vec<Heard>>> = Arc::default();
        let fail: Arc<Mutex<u32>> = Arc::default();
        let (h, f) = (heard.clone(), fail.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (h, f) = (h.clone(), f.clone());
                tokio::spawn(async move {
                    let mut conn = BufReader::new(conn);
                    loop {
                        let mut line = String::new();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut parts = line.split_whitespace();
                        let method = parts.next().unwrap_or("").to_string();
                        let path = parts.next().unwrap_or("").to_string();
                        let (mut length, mut authorization) = (0usize, None);
                        loop {
                            let mut header = String::new();
                            if conn.read_line(&mut header).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let header = header.trim_end();
                            if header.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = header.split_once(':') {
                                match k.to_ascii_lowercase().as_str() {
                                    "content-length" => length = v.trim().parse().unwrap_or(0),
                                    "authorization" => authorization = Some(v.trim().to_string()),
                                    _ => {}
                                }
                            }
                        }
                        let mut body = vec![0u8; length];
                        if conn.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let failing = {
                            let mut f = f.lock().unwrap();
                            let failing = *f > 0;
                            *f = f.saturating_sub(1);
                            failing
                        };
                        h.lock().unwrap().push(Heard {
                            method,
                            path,
                            authorization,
                            body: String::from_utf8_lossy(&body).into_owned(),
                        });
                        let status = if failing {
                            "500 Internal Server Error"
                        } else {
                            "200 OK"
                        };
                        let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                        if conn.get_mut().write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver { url, heard, fail }
    }

    /// Waits until `n` successful deliveries (2xx answers) were heard, and returns everything.
    pub async fn wait_for(&self, paths: usize) -> Vec<Heard> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let heard = self.heard.lock().unwrap().clone();
            let distinct = {
                let mut p: Vec<&str> = heard.iter().map(|h| h.path.as_str()).collect();
                p.dedup();
                p.len()
            };
            if distinct >= paths {
                return heard;
            }
            assert!(Instant::now() < deadline, "heard only {heard:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn encounter(id: &str, status: &str, org: &str) -> Value {
    json!({"resourceType": "Encounter", "id": id, "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
        "serviceProvider": {"reference": format!("Organization/{org}")}})
}

/// Creates a Subscription and waits until the server has activated it.
async fn subscribe(app: &TestApp, sub: Value) -> String {
    let r = app.post_json("Subscription", &sub).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get(&format!("Subscription/{id}")).await.json()["status"] != "active" {
        assert!(
            Instant::now() < deadline,
            "the Subscription was not activated"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    id
}

fn rest_hook(criteria: &str, endpoint: &str) -> Value {
    json!({"resourceType": "Subscription", "status": "requested",
        "reason": "the station hears of its consultations", "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                    "header": ["Authorization: Bearer station-secret"]}})
}

async fn a_rest_hook_hears_matching_writes_only(app: TestApp) {
    // What the server cannot run is refused on write, at its place.
    let bad = app
        .post_json(
            "Subscription",
            &rest_hook("Encounter?colour=red", "http://127.0.0.1:9/x"),
        )
        .await;
    let outcome = bad.assert_outcome(400);
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "Subscription.criteria"
    );

    let receiver = Receiver::start().await;
    let sub = subscribe(
        &app,
        rest_hook(
            "Encounter?status=finished&service-provider=Organization/org-a",
            &receiver.url,
        ),
    )
    .await;
    for e in [
        encounter("e1", "finished", "org-a"),
        encounter("e2", "in-progress", "org-a"),
        encounter("e3", "finished", "org-b"),
    ] {
        let r = app
            .put_json(&format!("Encounter/{}", e["id"].as_str().unwrap()), &e)
            .await;
        assert!(r.status == 201, "{}", r.body);
    }
    let r = app
        .put_json("Encounter/e2", &encounter("e2", "finished", "org-a"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let heard = receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heard_all = receiver.heard.lock().unwrap().clone();
    assert_eq!(heard_all.len(), 2, "matching writes only: {heard:?}");
    assert_eq!(heard[0].path, "/hook/Encounter/e1");
    assert_eq!(heard[1].path, "/hook/Encounter/e2");
    assert!(heard.iter().all(|h| h.method == "PUT"));
    assert!(
        heard
            .iter()
            .all(|h| h.authorization.as_deref() == Some("Bearer station-secret"))
    );
    let body: Value = serde_json::from_str(&heard[1].body).unwrap();
    assert_eq!(body["status"], "finished");
    assert_eq!(body["meta"]["versionId"], "2", "the version that matched");

    // The endpoint fails twice: retried, in order, and the Subscription says so.
    *receiver.fail.lock().unwrap() = 2;
    for id in ["e4", "e5"] {
        let r = app
            .put_json(
                &format!("Encounter/{id}"),
                &encounter(id, "finished", "org-a"),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let heard = receiver.wait_for(4).await;
    let paths: Vec<&str> = heard.iter().map(|h| h.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/hook/Encounter/e1",
            "/hook/Encounter/e2",
            "/hook/Encounter/e4",
            "/hook/Encounter/e4",
            "/hook/Encounter/e4",
            "/hook/Encounter/e5"
        ],
        "e4 until it is taken, then e5"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = app.get(&format!("Subscription/{sub}")).await.json();
        let count = s["extension"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|e| e["url"] == yba::fhir::subscription::ERROR_COUNT)
            })
            .and_then(|e| e["valueUnsignedInt"].as_u64());
        if s["status"] == "active" && count == Some(2) {
            assert!(s.get("error").is_none(), "{s}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Subscription shows no errors: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // While it failed, it said why.
    let history = app
        .get(&format!("Subscription/{sub}/_history"))
        .await
        .json();
    assert!(
        history["entry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["resource"]["status"] == "error"
                && e["resource"]["error"]
                    .as_str()
                    .is_some_and(|m| m.contains("500"))),
        "{history}"
    );
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message (control frames skipped).
async fn text(ws: &mut Socket) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("not text: {other:?}"),
        }
    }
}

async fn a_websocket_subscriber_is_pinged(app: TestApp) {
    let sub = subscribe(
        &app,
        json!({"resourceType": "Subscription", "status": "requested", "reason": "live",
            "criteria": "Observation?code=8867-4", "channel": {"type": "websocket"}}),
    )
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/fhir/websocket", app.addr))
        .await
        .expect("socket");
    ws.send(Message::text(format!("bind {sub}"))).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), text(&mut ws))
        .await
        .expect("bound");
    assert_eq!(reply, format!("bound {sub}"));
    let obs = |id: &str, code: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}})
    };
    app.put_json("Observation/w1", &obs("w1", "8480-6")).await;
    app.put_json("Observation/w2", &obs("w2", "8867-4")).await;
    let ping = tokio::time::timeout(Duration::from_secs(10), text(&mut ws))
        .await
        .expect("pinged");
    assert_eq!(ping, format!("ping {sub}"));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), text(&mut ws))
            .await
            .is_err(),
        "one ping for one matching write"
    );
}

/// Several processes on one PostgreSQL: one matches and delivers (PostgreSQL only: SQLite is
/// one process's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_postgres_deliver_once() {
    let Some(app) = crate::helpers::spawn_postgres_with(crate::helpers::international).await else {
        return;
    };
    let other = crate::helpers::spawn_postgres_beside(&app, crate::helpers::international).await;
    let receiver = Receiver::start().await;
    subscribe(&app, rest_hook("Encounter?status=finished", &receiver.url)).await;
    // A websocket subscriber on each server: pinged wherever the notification is delivered.
    let live = subscribe(
        &app,
        json!({"resourceType": "Subscription", "status": "requested", "reason": "live",
            "criteria": "Encounter?status=finished", "channel": {"type": "websocket"}}),
    )
    .await;
    let mut sockets = Vec::new();
    for server in [&app, &other] {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/fhir/websocket", server.addr))
                .await
                .expect("socket");
        ws.send(Message::text(format!("bind {live}")))
            .await
            .unwrap();
        assert_eq!(text(&mut ws).await, format!("bound {live}"));
        sockets.push(ws);
    }
    for i in 0..10 {
        let server = if i % 2 == 0 { &app } else { &other };
        let id = format!("m{i}");
        let r = server
            .put_json(
                &format!("Encounter/{id}"),
                &encounter(&id, "finished", "org-a"),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    receiver.wait_for(10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heard = receiver.heard.lock().unwrap().clone();
    let paths: Vec<&str> = heard.iter().map(|h| h.path.as_str()).collect();
    let want: Vec<String> = (0..10).map(|i| format!("/hook/Encounter/m{i}")).collect();
    assert_eq!(paths, want, "each once, in the order written");
    for ws in &mut sockets {
        for _ in 0..10 {
            let ping = tokio::time::timeout(Duration::from_secs(10), text(ws))
                .await
                .expect("pinged");
            assert_eq!(ping, format!("ping {live}"));
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), text(ws))
                .await
                .is_err(),
            "one ping a write"
        );
    }
}

crate::on_both_databases!(@with crate::helpers::international;
    a_rest_hook_hears_matching_writes_only,
    a_websocket_subscriber_is_pinged,
);

/// The process delivering notifications stops: another takes over once its lease runs out, and
/// what was written meanwhile is delivered, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_server_takes_over_when_the_deliverer_stops() {
    let Some(app) = crate::helpers::spawn_postgres_with(crate::helpers::international).await else {
        return;
    };
    // `app` started first: its matcher holds the lease.
    let other = crate::helpers::spawn_postgres_beside(&app, crate::helpers::international).await;
    let receiver = Receiver::start().await;
    subscribe(&app, rest_hook("Encounter?status=finished", &receiver.url)).await;
    let r = app
        .put_json("Encounter/f0", &encounter("f0", "finished", "org-a"))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    receiver.wait_for(1).await;
    app.stop().await;
    let stopped = Instant::now();
    for i in 1..4 {
        let id = format!("f{i}");
        let r = other
            .put_json(
                &format!("Encounter/{id}"),
                &encounter(&id, "finished", "org-a"),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    receiver.wait_for(4).await;
    // Delivered by the other server once the stopped one's lease ran out (not by the stopped one).
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "delivered {:?} after the deliverer stopped: it did not stop",
        stopped.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heard = receiver.heard.lock().unwrap().clone();
    let paths: Vec<&str> = heard.iter().map(|h| h.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/hook/Encounter/f0",
            "/hook/Encounter/f1",
            "/hook/Encounter/f2",
            "/hook/Encounter/f3"
        ]
    );
}

/// The station's case: its rest-hook hears when the hospital accepts its consultation.
async fn a_station_hears_when_its_consultation_is_accepted(app: TestApp) {
    use crate::auth::{as_user, user_token};
    use crate::consultations::{api, ask, station_world};
    use reqwest::Method;
    station_world(&app).await;
    let admin = user_token(&app, "admin1").await;
    let yt = user_token(&app, "yt.binh").await;
    let dr = user_token(&app, "dr.an").await;
    let receiver = Receiver::start().await;
    let sub = rest_hook(
        "Appointment?status=booked&based-on:ServiceRequest.requester=Organization/tram-c",
        &receiver.url,
    );
    // A Subscription carries whatever matches to its endpoint: an administrator's to make.
    as_user(&app, &yt, Method::POST, "Subscription", Some(&sub))
        .await
        .assert_outcome(403);
    let r = as_user(&app, &admin, Method::POST, "Subscription", Some(&sub)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while as_user(
        &app,
        &admin,
        Method::GET,
        &format!("Subscription/{id}"),
        None,
    )
    .await
    .json()["status"]
        != "active"
    {
        assert!(Instant::now() < deadline, "not activated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = api(&app, &yt, Method::POST, "", Some(&ask("Patient/pa"))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let consultation = r.json()["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.heard.lock().unwrap().is_empty(), "not booked yet");
    let r = api(
        &app,
        &dr,
        Method::POST,
        &format!("/{consultation}/accept"),
        Some(&json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let heard = receiver.wait_for(1).await;
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(heard[0].path, format!("/hook/Appointment/{consultation}"));
    assert_eq!(
        heard[0].authorization.as_deref(),
        Some("Bearer station-secret")
    );
    let appointment: Value = serde_json::from_str(&heard[0].body).unwrap();
    assert_eq!(appointment["status"], "booked");
}

/// With auth on, a socket binds with a token the administrator's session asked for.
async fn a_websocket_binds_with_a_token(app: TestApp) {
    use crate::auth::{as_user, user_token, world};
    use reqwest::Method;
    world(&app).await;
    let admin = user_token(&app, "admin1").await;
    let patient = user_token(&app, crate::auth::CCCD_A).await;
    let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "live",
        "criteria": "Observation?code=8867-4", "channel": {"type": "websocket"}});
    let r = as_user(&app, &admin, Method::POST, "Subscription", Some(&sub)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let path = format!("Subscription/{id}/$get-ws-binding-token");
    // Not the patient's: the Subscription is not theirs to see.
    as_user(&app, &patient, Method::GET, &path, None)
        .await
        .assert_outcome(404);
    let r = as_user(&app, &admin, Method::GET, &path, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let params = r.json();
    let token = params["parameter"][0]["valueString"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(params["parameter"][2]["valueString"], id.as_str());
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/fhir/websocket", app.addr))
        .await
        .expect("socket");
    ws.send(Message::text(format!("bind {id}"))).await.unwrap();
    assert!(
        text(&mut ws).await.starts_with("error "),
        "no binding by id without a token"
    );
    ws.send(Message::text("bind-with-token forged.token.here"))
        .await
        .unwrap();
    assert!(text(&mut ws).await.starts_with("error "));
    ws.send(Message::text(format!("bind-with-token {token}")))
        .await
        .unwrap();
    assert_eq!(text(&mut ws).await, format!("bound {id}"));
}

mod with_auth {
    use super::{
        a_station_hears_when_its_consultation_is_accepted, a_websocket_binds_with_a_token,
    };
    crate::on_both_databases!(@with crate::helpers::with_auth;
        a_station_hears_when_its_consultation_is_accepted,
        a_websocket_binds_with_a_token,
    );
}
