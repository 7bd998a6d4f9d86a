//! The teleconsultation page, `/consult/{id}`: plain HTML, CSS and JavaScript (`src/web/`),
//! built into the binary, that use the browser's own WebRTC against the signaling socket
//! (`docs/signaling.md`). The files hold no personal data (everything comes from authenticated
//! API calls the page makes once its user signs in), so they are served without sign-in.

use std::sync::LazyLock;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest, Sha256};

/// Same-origin scripts, styles, fetches and sockets only; no inline script; the camera's and
/// the call's streams play through `srcObject`, which no source list governs.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file: its bytes, type and a validator, so that a browser revalidates cheaply.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: String,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Asset {
        let digest = Sha256::digest(body.as_bytes());
        let etag: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        Asset {
            body,
            content_type,
            etag: format!("\"{etag}\""),
        }
    }
}

static PAGE: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../web/consult.html"),
        "text/html; charset=utf-8",
    )
});
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../web/consult.js"),
        "text/javascript; charset=utf-8",
    )
});
static STYLE: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../web/consult.css"),
        "text/css; charset=utf-8",
    )
});

/// `GET /consult/{id}`: the page (the script reads the id from the address).
pub async fn page(req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    if !is_fhir_id(&id) {
        return HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("no consultation has such an id");
    }
    serve(&req, &PAGE)
}

/// `GET /consult/assets/{file}`: the page's script and style.
pub async fn asset(req: HttpRequest, file: web::Path<String>) -> HttpResponse {
    match file.as_str() {
        "consult.js" => serve(&req, &SCRIPT),
        "consult.css" => serve(&req, &STYLE),
        _ => HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("no such file"),
    }
}

/// A FHIR id (R4 `id`: 1-64 of `[A-Za-z0-9\-.]`), checked as every resource's is.
fn is_fhir_id(id: &str) -> bool {
    crate::fhir::primitive::check_text(crate::fhir::schema::Primitive::Id, id).is_ok()
}

fn serve(req: &HttpRequest, asset: &Asset) -> HttpResponse {
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == asset.etag));
    let mut resp = if fresh {
        HttpResponse::build(StatusCode::NOT_MODIFIED).finish()
    } else {
        HttpResponse::Ok()
            .content_type(asset.content_type)
            .body(asset.body)
    };
    let h = resp.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        h.insert(header::ETAG, etag);
    }
    // Revalidated on each load: a new server version must not meet yesterday's script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(self), microphone=(self), geolocation=()"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fhir_ids_name_a_page() {
        assert!(is_fhir_id("0b6f1c2e-7a1d-4f7e-9f2a-2f5d1c0e9b11"));
        assert!(!is_fhir_id(""));
        assert!(!is_fhir_id("a/b"));
        assert!(!is_fhir_id("<script>"));
        assert!(!is_fhir_id(&"a".repeat(65)));
    }

    #[test]
    fn the_page_loads_its_script_and_style_and_nothing_inline() {
        let html = PAGE.body;
        assert!(html.contains(r#"<script src="/consult/assets/consult.js" defer></script>"#));
        assert!(html.contains(r#"href="/consult/assets/consult.css""#));
        assert_eq!(html.matches("<script").count(), 1, "one script, by src");
        assert!(!html.contains("style="), "no inline style (CSP)");
        let handler = regex::Regex::new(r"\son[a-z]+\s*=").unwrap();
        assert!(!handler.is_match(html), "no inline handlers (CSP)");
    }
}
