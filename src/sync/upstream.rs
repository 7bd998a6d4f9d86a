//! The node's HTTP client of its upstream FHIR server: SMART Backend Services sign-in with the
//! station's client credentials, gzip both ways (zstd answers preferred), and a count of the
//! bytes that went over.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use reqwest::header::{
    ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap,
};
use serde_json::Value;

/// Where upstream is and who the node is there.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// Upstream's FHIR base, e.g. `https://ehr.soyte.vn/fhir`.
    pub base: String,
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("base", &self.base)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Why a request upstream did not get an answer to act on.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No answer: the link is down, or upstream is (retry later).
    #[error("upstream cannot be reached: {0}")]
    Down(String),
    /// Upstream answered, but not as a FHIR server would (retry later).
    #[error("upstream answered {status}: {message}")]
    Upstream { status: u16, message: String },
    /// Upstream refused the node's credentials.
    #[error("upstream refused the station's credentials: {0}")]
    Credentials(String),
}

/// An answer: status, ETag, and the body as JSON (Null when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// Upstream's clock when it answered (its `Date` header), in ms.
    pub date: Option<i64>,
}

impl Answer {
    /// The diagnostics of an OperationOutcome answer, for a conflict record.
    pub fn diagnostics(&self) -> String {
        let issues = self.body.get("issue").and_then(Value::as_array);
        let text: Vec<String> = issues
            .into_iter()
            .flatten()
            .map(|i| {
                let d = i.get("diagnostics").and_then(Value::as_str).unwrap_or("");
                match i
                    .get("expression")
                    .and_then(Value::as_array)
                    .and_then(|e| e.first())
                    .and_then(Value::as_str)
                {
                    Some(at) => format!("{d} (at {at})"),
                    None => d.to_string(),
                }
            })
            .collect();
        if text.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {}: {}", self.status, text.join("; "))
        }
    }
}

pub struct Upstream {
    config: UpstreamConfig,
    http: reqwest::Client,
    token: Mutex<Option<(String, Instant)>>,
    sent: AtomicU64,
    received: AtomicU64,
}

/// Requests larger than this go gzipped.
const GZIP_FROM: usize = 512;

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Upstream, LinkError> {
        let http = crate::http_client()
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| LinkError::Down(e.to_string()))?;
        Ok(Upstream {
            config,
            http,
            token: Mutex::new(None),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        })
    }

    pub fn base(&self) -> &str {
        self.config.base.trim_end_matches('/')
    }

    /// Bytes sent and received so far (bodies as they went over, gzipped or not, and headers).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    /// A fresh access token (the cached one while it has 30 s left).
    async fn token(&self) -> Result<String, LinkError> {
        if let Ok(t) = self.token.lock()
            && let Some((tok, until)) = t.as_ref()
            && *until > Instant::now()
        {
            return Ok(tok.clone());
        }
        let conf = self
            .send(
                self.http
                    .get(format!("{}/.well-known/smart-configuration", self.base())),
                None,
            )
            .await?;
        let endpoint = conf
            .body
            .get("token_endpoint")
            .and_then(Value::as_str)
            .ok_or_else(|| LinkError::Upstream {
                status: conf.status,
                message: "no token_endpoint in its SMART configuration".into(),
            })?
            .to_string();
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("scope", "system/*.cruds")
            .finish();
        let answer = self
            .send(
                self.http
                    .post(endpoint)
                    .basic_auth(&self.config.client_id, Some(&self.config.client_secret))
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.clone()),
                Some(form.len()),
            )
            .await?;
        let token = answer.body.get("access_token").and_then(Value::as_str);
        let Some(token) = token.filter(|_| answer.status == 200) else {
            return Err(LinkError::Credentials(answer.diagnostics()));
        };
        let ttl = answer
            .body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(60);
        let until = Instant::now() + Duration::from_secs(ttl.saturating_sub(30).max(5));
        if let Ok(mut t) = self.token.lock() {
            *t = Some((token.to_string(), until));
        }
        Ok(token.to_string())
    }

    /// `GET [base]/[path]` (or an absolute URL upstream gave, such as a `next` link).
    pub async fn get(&self, path_or_url: &str) -> Result<Answer, LinkError> {
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}/{}", self.base(), path_or_url)
        };
        self.authorised(|tok| self.http.get(&url).header(AUTHORIZATION, tok), None)
            .await
    }

    /// `POST [base]` of a Bundle (gzipped).
    pub async fn post_bundle(&self, bundle: &Value) -> Result<Answer, LinkError> {
        let raw = serde_json::to_vec(bundle).map_err(|e| LinkError::Down(e.to_string()))?;
        self.post("", "application/fhir+json", raw).await
    }

    /// `POST [base]/[type]/_search` of a form (gzipped).
    pub async fn search(&self, ty: &str, form: String) -> Result<Answer, LinkError> {
        self.post(
            &format!("{ty}/_search"),
            "application/x-www-form-urlencoded",
            form.into_bytes(),
        )
        .await
    }

    async fn post(
        &self,
        path: &str,
        content_type: &'static str,
        raw: Vec<u8>,
    ) -> Result<Answer, LinkError> {
        let (body, gz) = if raw.len() >= GZIP_FROM {
            let mut enc = GzEncoder::new(Vec::with_capacity(raw.len() / 4), Compression::default());
            enc.write_all(&raw)
                .and_then(|_| enc.finish())
                .map(|b| (b, true))
                .map_err(|e| LinkError::Down(e.to_string()))?
        } else {
            (raw, false)
        };
        let body = bytes::Bytes::from(body);
        let len = body.len();
        let url = if path.is_empty() {
            self.base().to_string()
        } else {
            format!("{}/{path}", self.base())
        };
        self.authorised(
            |tok| {
                let mut r = self
                    .http
                    .post(&url)
                    .header(AUTHORIZATION, tok)
                    .header(CONTENT_TYPE, content_type)
                    .body(body.clone());
                if gz {
                    r = r.header(CONTENT_ENCODING, "gzip");
                }
                r
            },
            Some(len),
        )
        .await
    }

    /// Sends with the access token, once more with a new one if upstream says it ran out.
    async fn authorised(
        &self,
        request: impl Fn(String) -> reqwest::RequestBuilder,
        body_len: Option<usize>,
    ) -> Result<Answer, LinkError> {
        let tok = self.token().await?;
        let answer = self
            .send(request(format!("Bearer {tok}")), body_len)
            .await?;
        if answer.status != 401 {
            return Ok(answer);
        }
        if let Ok(mut t) = self.token.lock() {
            *t = None;
        }
        let tok = self.token().await?;
        let answer = self
            .send(request(format!("Bearer {tok}")), body_len)
            .await?;
        if answer.status == 401 {
            return Err(LinkError::Credentials(answer.diagnostics()));
        }
        Ok(answer)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        body_len: Option<usize>,
    ) -> Result<Answer, LinkError> {
        let request = request
            .header(ACCEPT, "application/fhir+json, application/json")
            // actix-web answers zstd at level 3 and gzip at its fastest: zstd is the smaller.
            .header(ACCEPT_ENCODING, "zstd, gzip;q=0.8")
            .build()
            .map_err(|e| LinkError::Down(e.to_string()))?;
        let out = header_bytes(request.headers()) + request.url().as_str().len() as u64 + 16;
        self.sent
            .fetch_add(out + body_len.unwrap_or(0) as u64, Ordering::Relaxed);
        let res = self
            .http
            .execute(request)
            .await
            .map_err(|e| LinkError::Down(e.to_string()))?;
        let status = res.status().as_u16();
        let encoding = res
            .headers()
            .get(CONTENT_ENCODING)
            .map(|v| v.as_bytes().to_ascii_lowercase());
        let head = header_bytes(res.headers()) + 16;
        let date = res
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64);
        let raw = res
            .bytes()
            .await
            .map_err(|e| LinkError::Down(e.to_string()))?;
        self.received
            .fetch_add(head + raw.len() as u64, Ordering::Relaxed);
        let plain = match encoding.as_deref() {
            Some(b"gzip") => {
                let mut out = Vec::with_capacity(raw.len() * 4);
                GzDecoder::new(&raw[..])
                    .read_to_end(&mut out)
                    .map_err(|e| {
                        LinkError::Down(format!("a gzipped answer did not inflate: {e}"))
                    })?;
                out
            }
            Some(b"zstd") => zstd::stream::decode_all(&raw[..])
                .map_err(|e| LinkError::Down(format!("a zstd answer did not decompress: {e}")))?,
            _ => raw.to_vec(),
        };
        let body = if plain.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&plain).unwrap_or(Value::Null)
        };
        if status >= 500 || status == 429 {
            let a = Answer { status, body, date };
            return Err(LinkError::Upstream {
                status,
                message: a.diagnostics(),
            });
        }
        Ok(Answer { status, body, date })
    }
}

fn header_bytes(h: &HeaderMap) -> u64 {
    h.iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum()
}
