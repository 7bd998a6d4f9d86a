//! Content negotiation and the request headers FHIR gives meaning to (R4 §3.1.0.1).

use actix_web::HttpRequest;
use actix_web::http::header;

use super::error::ApiError;
use crate::fhir::Format;

/// What `Prefer: return=` asks for (R4 §3.1.0.1.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

/// The negotiated shape of a response.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub format: Format,
    pub pretty: bool,
    /// `Prefer: return=...`, if given.
    pub prefer: Option<Return>,
    /// `Prefer: handling=strict`: refuse unknown search parameters and bad values (the
    /// default, `handling=lenient`, ignores them).
    pub strict: bool,
    /// The access policy for this request's caller; `None` when the server runs without auth.
    pub guard: Option<std::sync::Arc<crate::auth::policy::Guard>>,
    req: HttpRequest,
    configured_base: Option<std::sync::Arc<str>>,
    base: std::cell::OnceCell<String>,
}

impl Ctx {
    /// Negotiates from `_format`, `Accept`, the body's `Content-Type`, `_pretty` and `Prefer`.
    pub fn new(req: &HttpRequest, base_url: Option<&std::sync::Arc<str>>) -> Result<Ctx, ApiError> {
        let query = req.query_string();
        let mut format_param = None;
        let mut pretty = false;
        if query.contains("_format") || query.contains("_pretty") {
            for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                match k.as_ref() {
                    "_format" => format_param = Some(v.into_owned()),
                    "_pretty" => pretty = v == "true",
                    _ => {}
                }
            }
        }
        let format = match format_param {
            Some(f) => Format::from_mime(&f).ok_or_else(|| {
                ApiError::new(
                    406,
                    "not-supported",
                    format!("_format '{f}' is not supported: use json or xml"),
                    Format::Json,
                )
            })?,
            None => accept_format(req)?,
        };
        let (prefer, strict) = prefer(req);
        Ok(Ctx {
            format,
            pretty,
            prefer,
            strict,
            guard: None,
            req: req.clone(),
            configured_base: base_url.cloned(),
            base: std::cell::OnceCell::new(),
        })
    }

    /// The FHIR base URL: configured, or this request's scheme and host (worked out only when a
    /// response needs it: reads do not).
    pub fn base(&self) -> &str {
        self.base
            .get_or_init(|| base(&self.req, self.configured_base.as_deref()))
    }

    pub fn error(&self, e: crate::error::Error) -> ApiError {
        ApiError::from_error(e, self.format)
    }
}

/// The response format from `Accept`; with no preference, the request body's format, else JSON.
fn accept_format(req: &HttpRequest) -> Result<Format, ApiError> {
    let body_format = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Format::from_mime)
        .unwrap_or(Format::Json);
    let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(body_format);
    };
    let mut wildcard = false;
    let mut best: Option<(f32, Format)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let mime = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        // NDJSON (Bulk Data files) is answered, and its errors told, in JSON.
        let mime = match mime {
            "application/fhir+ndjson" | "application/ndjson" | "application/x-ndjson" => "json",
            m => m,
        };
        if let Some(f) = Format::from_mime(mime) {
            if best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, f));
            }
        } else if mime == "*/*" || mime == "application/*" || mime.is_empty() {
            wildcard = true;
        }
    }
    match best {
        Some((_, f)) => Ok(f),
        None if wildcard => Ok(body_format),
        None => Err(ApiError::new(
            406,
            "not-supported",
            format!(
                "cannot answer in any of '{accept}': use application/fhir+json or application/fhir+xml"
            ),
            Format::Json,
        )),
    }
}

fn prefer(req: &HttpRequest) -> (Option<Return>, bool) {
    let mut ret = None;
    let mut strict = false;
    for v in req
        .headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
    {
        for part in v.split([',', ';']) {
            match part.trim().replace(' ', "").as_str() {
                "return=minimal" => ret = Some(Return::Minimal),
                "return=representation" => ret = Some(Return::Representation),
                "return=OperationOutcome" => ret = Some(Return::OperationOutcome),
                "handling=strict" => strict = true,
                "handling=lenient" => strict = false,
                _ => {}
            }
        }
    }
    (ret, strict)
}

/// The FHIR base URL: configured, or this request's scheme and host.
fn base(req: &HttpRequest, configured: Option<&str>) -> String {
    match configured {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => {
            let info = req.connection_info();
            format!("{}://{}/fhir", info.scheme(), info.host())
        }
    }
}

/// The format of a request body from its `Content-Type`. A body without one is sniffed (a
/// leading `<` is XML); a media type that is not FHIR is 415.
pub fn body_format(req: &HttpRequest, body: &[u8], answer: Format) -> Result<Format, ApiError> {
    match req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        None => Ok(match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'<') => Format::Xml,
            _ => Format::Json,
        }),
        Some(ct) => Format::from_mime(ct).ok_or_else(|| {
            ApiError::new(
                415,
                "not-supported",
                format!("Content-Type '{ct}' is not supported: send application/fhir+json or application/fhir+xml"),
                answer,
            )
        }),
    }
}

/// A version number from `If-Match` / `If-None-Match` (`W/"3"`).
pub fn etag_header(req: &HttpRequest, name: &str, fmt: Format) -> Result<Option<i64>, ApiError> {
    match req.headers().get(name).and_then(|v| v.to_str().ok()) {
        None => Ok(None),
        Some("*") if name.eq_ignore_ascii_case("if-none-match") => Ok(Some(0)),
        Some(v) => crate::fhir::bundle::parse_etag(v).map(Some).ok_or_else(|| {
            ApiError::new(
                400,
                "value",
                format!("{name} '{v}' is not an ETag like W/\"1\""),
                fmt,
            )
        }),
    }
}
