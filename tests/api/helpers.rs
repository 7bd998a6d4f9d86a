//! One server per test, on a fresh database: an SQLite file in a temporary directory, or a
//! PostgreSQL schema of its own (so runs never collide). `TestApp` methods speak HTTP to it.

use std::sync::atomic::{AtomicBool, Ordering};

use diesel::{Connection, PgConnection, RunQueryDsl};
use reqwest::{Method, header::HeaderMap};
use serde_json::Value;

use yba::config::Config;

/// The PostgreSQL server tests use (database `test` on the local server unless told otherwise).
pub fn postgres_url() -> String {
    std::env::var("YBA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    /// Its DATABASE_URL (for the `yba` commands a test runs beside it).
    pub db_url: String,
    /// The in-process server, or (for what is process-wide) the `yba` process.
    handle: Option<actix_web::dev::ServerHandle>,
    /// The in-process server's store (to create accounts as the `yba user` command does).
    pub store: Option<yba::store::Store>,
    _child: Option<tokio::process::Child>,
    _dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The FHIRPath expressions of an OperationOutcome's issues.
    pub fn issue_expressions(&self) -> Vec<String> {
        let v = self.json();
        assert_eq!(
            v["resourceType"], "OperationOutcome",
            "expected an OperationOutcome: {}",
            self.body
        );
        v["issue"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["expression"][0].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts an OperationOutcome with this status.
    pub fn assert_outcome(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{}", self.body);
        assert!(
            v["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{}",
            self.body
        );
        v
    }
}

static PG_CHECKED: AtomicBool = AtomicBool::new(false);

/// A server on SQLite.
pub async fn spawn_sqlite_with(tune: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("yba.db").display());
    let mut config = Config::local(url);
    // The FHIR suites run open (YBA_AUTH=off); the auth suites turn it on with `with_auth`.
    config.auth = false;
    tune(&mut config);
    start(config, Some(dir), None).await
}

/// A server on PostgreSQL, in a schema of its own; None (test skipped) when PostgreSQL is not
/// reachable, except in CI, where it must be.
pub async fn spawn_postgres_with(tune: impl FnOnce(&mut Config)) -> Option<TestApp> {
    let (url, schema) = postgres_schema().await?;
    let mut config = Config::local(url);
    // The FHIR suites run open (YBA_AUTH=off); the auth suites turn it on with `with_auth`.
    config.auth = false;
    tune(&mut config);
    Some(start(config, None, Some(schema)).await)
}

/// Another server, tuned, on the same PostgreSQL schema as `app` (which keeps the schema).
pub async fn spawn_postgres_beside(app: &TestApp, tune: impl FnOnce(&mut Config)) -> TestApp {
    let schema = app.schema.clone().expect("a PostgreSQL test app");
    let url = postgres_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut config = Config::local(format!("{url}{sep}options=-csearch_path%3D{schema}"));
    // The FHIR suites run open (YBA_AUTH=off); the auth suites turn it on with `with_auth`.
    config.auth = false;
    tune(&mut config);
    start(config, None, None).await
}

/// A fresh PostgreSQL schema: its connection URL and name; None (test skipped) when PostgreSQL
/// is not reachable, except in CI, where it must be.
async fn postgres_schema() -> Option<(String, String)> {
    let url = postgres_url();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let created = tokio::task::spawn_blocking({
        let (url, schema) = (url.clone(), schema.clone());
        move || -> Result<(), String> {
            let mut c = PgConnection::establish(&url).map_err(|e| e.to_string())?;
            diesel::sql_query(format!("CREATE SCHEMA {schema}"))
                .execute(&mut c)
                .map_err(|e| e.to_string())?;
            Ok(())
        }
    })
    .await
    .expect("join");
    if let Err(e) = created {
        if std::env::var_os("CI").is_some() {
            panic!("PostgreSQL at {url} is required in CI: {e}");
        }
        if !PG_CHECKED.swap(true, Ordering::Relaxed) {
            eprintln!("PostgreSQL not reachable ({e}): PostgreSQL tests are skipped");
        }
        return None;
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    Some((
        format!("{url}{sep}options=-csearch_path%3D{schema}"),
        schema,
    ))
}

/// The real `yba serve` in a process of its own, for behaviour that is process-wide (the
/// search parameter registry): on SQLite, or on PostgreSQL (None when it is not reachable).
pub async fn spawn_process(postgres: bool) -> Option<TestApp> {
    use tokio::io::AsyncBufReadExt;
    let (url, dir, schema) = if postgres {
        let (url, schema) = postgres_schema().await?;
        (url, None, Some(schema))
    } else {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("yba.db").display());
        (url, Some(dir), None)
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_yba"))
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("YBA_BIND", "127.0.0.1:0")
        .env("YBA_AUTH", "off")
        .env("YBA_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("yba starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr: std::net::SocketAddr = loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .expect("server logs its address in time")
            .expect("log line")
            .expect("server is running");
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(a) = v["fields"]["addr"].as_str() {
            break a.parse().expect("address");
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(TestApp {
        addr,
        base: format!("http://{addr}/fhir"),
        client: reqwest::Client::new(),
        db_url: url,
        handle: None,
        store: None,
        _child: Some(child),
        _dir: dir,
        schema,
    })
}

async fn start(config: Config, dir: Option<tempfile::TempDir>, schema: Option<String>) -> TestApp {
    let db_url = config.database_url.clone();
    let config = Config {
        workers: Some(1),
        db_pool: 4,
        ..config
    };
    let running = tokio::task::spawn_blocking(move || yba::api::start(&config))
        .await
        .expect("join")
        .expect("server starts");
    let handle = running.server.handle();
    let store = running.store.clone();
    tokio::spawn(running.server);
    let addr = running.addr;
    TestApp {
        addr,
        base: format!("http://{addr}/fhir"),
        // Idle connections are dropped before the server's 5 s keep-alive closes them, so a
        // request never goes out on a connection the server is closing (hyper IncompleteMessage).
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(std::time::Duration::from_secs(2))
            .build()
            .expect("client"),
        db_url,
        handle: Some(handle),
        store: Some(store),
        _child: None,
        _dir: dir,
        schema,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // stop() sends the command at once; its future only waits for completion.
        if let Some(h) = &self.handle {
            drop(h.stop(false));
        }
        if let Some(schema) = self.schema.take() {
            let url = postgres_url();
            // Dropped in a thread of its own: the server's connections close first.
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                if let Ok(mut c) = PgConnection::establish(&url) {
                    let _ = diesel::sql_query(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&mut c);
                }
            });
        }
    }
}

impl TestApp {
    /// Stops the in-process server (as a process stops), keeping its database.
    pub async fn stop(&self) {
        if let Some(h) = &self.handle {
            h.stop(false).await;
        }
    }

    /// A request to a path under the FHIR base (`Patient/1`) or, with a leading `/`, the server.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with('/') {
            format!("http://{}{path}", self.addr)
        } else if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{path}", self.base)
        };
        self.client.request(method, url)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let r = req.send().await.expect("request sent");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.expect("body read");
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.send(
            self.request(Method::POST, path)
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Resp {
        self.send(
            self.request(Method::PUT, path)
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// Creates a resource and returns it as stored.
    pub async fn create(&self, resource: &Value) -> Value {
        let ty = resource["resourceType"].as_str().expect("resourceType");
        let r = self.post_json(ty, resource).await;
        assert_eq!(r.status, 201, "create failed: {}", r.body);
        r.json()
    }

    /// How many versions of a type the server holds (its type history, in all).
    pub async fn version_count(&self, ty: &str) -> usize {
        let r = self.get(&format!("{ty}/_history?_count=1000")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["entry"].as_array().map_or(0, Vec::len)
    }
}

/// Generates, for each listed `async fn(TestApp)`, one test on SQLite and one on PostgreSQL;
/// `@with tune;` first runs them on servers whose `Config` `tune` adjusts.
#[macro_export]
macro_rules! on_both_databases {
    (@with $tune:path; $($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::spawn_sqlite_with($tune).await).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::helpers::spawn_postgres_with($tune).await {
                        super::$name(app).await
                    }
                }
            )*
        }
    };
    ($($name:ident),* $(,)?) => {
        $crate::on_both_databases!(@with $crate::helpers::as_shipped; $($name),*);
    };
}

/// The server as it ships: VN Patient compulsory for Patients.
pub fn as_shipped(_: &mut Config) {}

/// Sign-in, the access policy and the audit trail on, as shipped.
pub fn with_auth(c: &mut Config) {
    c.auth = true;
}

/// A server for data from anywhere (the official R4 examples, synthetic search populations):
/// no profile is compulsory. The structure of R4 and the identifier rules still hold.
pub fn international(c: &mut Config) {
    c.always_profile = yba::config::AlwaysProfile(Vec::new());
}

/// A Vietnamese patient with a citizen ID.
pub fn patient(cccd: &str) -> Value {
    serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{"system": "http://fhir.ehealth.gov.vn/core/sid/citizen_id", "value": cccd}],
        "name": [{"family": "Nguyễn", "given": ["Văn", "An"]}],
        "gender": "male",
        "birthDate": "1990-04-30"
    })
}
