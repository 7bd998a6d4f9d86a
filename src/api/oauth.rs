//! OAuth 2.0 endpoints for SMART on FHIR (v2): `POST /auth/token` (password, client_credentials
//! with a secret or a signed assertion, refresh_token), `POST /auth/revoke` (RFC 7009) and
//! `/.well-known/smart-configuration`. Errors here are OAuth's JSON (RFC 6749 §5.2), not
//! OperationOutcomes: OAuth clients expect them.
#![allow(clippy::result_large_err)]

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use serde_json::json;

use super::AppState;
use super::access::AuthState;
use super::negotiate::Ctx;
use crate::auth::audit::Record;
use crate::auth::service::{ClientAuth, GrantError, Issued};

/// Largest token request read.
const MAX_FORM: usize = 64 * 1024;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn oauth_error(e: &GrantError) -> HttpResponse {
    let mut b =
        HttpResponse::build(StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST));
    b.insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"));
    if e.status == 401 {
        b.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"yba\""));
    }
    if let Some(w) = e.retry_after {
        b.insert_header((header::RETRY_AFTER, w.as_secs().max(1).to_string()));
    }
    b.json(json!({"error": e.error, "error_description": e.description}))
}

fn bad_request(msg: &str) -> HttpResponse {
    oauth_error(&GrantError {
        status: 400,
        error: "invalid_request",
        description: msg.to_string(),
        retry_after: None,
    })
}

/// The server's origin (the FHIR base without `/fhir`).
fn origin(ctx: &Ctx) -> String {
    let base = ctx.base();
    base.strip_suffix("/fhir").unwrap_or(base).to_string()
}

fn auth_state(state: &AppState) -> Result<&AuthState, HttpResponse> {
    state.auth.as_ref().ok_or_else(|| {
        HttpResponse::NotFound().json(json!({"error": "invalid_request", "error_description": "this server runs without sign-in (YBA_AUTH=off)"}))
    })
}

fn ctx_of(req: &HttpRequest, state: &AppState) -> Result<Ctx, HttpResponse> {
    Ctx::new(req, state.base_url.as_ref())
        .map_err(|_| bad_request("the request cannot be negotiated"))
}

/// `POST /auth/token`.
pub async fn token(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let auth = match auth_state(&state) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let ctx = match ctx_of(&req, &state) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if body.len() > MAX_FORM {
        return bad_request("the token request is too large");
    }
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return bad_request(
            "a token request is a form: Content-Type application/x-www-form-urlencoded",
        );
    }
    let mut form: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (k, v) in form_urlencoded::parse(&body) {
        if form.insert(k.to_string(), v.into_owned()).is_some() {
            return bad_request(&format!("the parameter '{k}' is given twice"));
        }
    }
    let get = |k: &str| form.get(k).map(String::as_str);
    let issuer = super::access::issuer_of(&ctx);
    let address = auth.address(&req).unwrap_or_default();
    let scope = get("scope").unwrap_or("");
    let (result, interaction, attempted) = match get("grant_type") {
        Some("password") => {
            let (Some(username), Some(password)) = (get("username"), get("password")) else {
                return bad_request("the password grant needs username and password");
            };
            let r = auth
                .tokens
                .password_grant(
                    username,
                    password,
                    scope,
                    get("client_id"),
                    &address,
                    &issuer,
                )
                .await;
            // A citizen ID is personal data: it is not kept for a failed sign-in.
            let attempted = crate::vn::Cccd::parse(username)
                .is_err()
                .then(|| username.to_string());
            (r, "login", attempted)
        }
        Some("client_credentials") => {
            let client = match client_auth(&req, &form) {
                Ok(c) => c,
                Err(r) => return r,
            };
            let origin = origin(&ctx);
            let urls = vec![format!("{origin}/auth/token")];
            let attempted = match &client {
                ClientAuth::Secret { client_id, .. } => Some(client_id.clone()),
                ClientAuth::Assertion { client_id, .. } => client_id.clone(),
            };
            (
                auth.tokens
                    .client_credentials(client, scope, &issuer, &urls)
                    .await,
                "token",
                attempted,
            )
        }
        Some("refresh_token") => {
            let Some(rt) = get("refresh_token") else {
                return bad_request("the refresh_token grant needs refresh_token");
            };
            (auth.tokens.refresh(rt, scope, &issuer).await, "token", None)
        }
        Some(other) => {
            return oauth_error(&GrantError {
                status: 400,
                error: "unsupported_grant_type",
                description: format!(
                    "'{other}' is not a grant of this server (password, client_credentials, refresh_token)"
                ),
                retry_after: None,
            });
        }
        None => return bad_request("grant_type is missing"),
    };
    let (status, detail, principal) = match &result {
        Ok(i) => (200, None, i.principal.as_ref()),
        Err(e) => (e.status, Some(e.description.clone()), None),
    };
    auth.audit
        .record(&Record {
            action: "E",
            interaction,
            principal,
            attempted: if principal.is_none() {
                attempted.as_deref()
            } else {
                None
            },
            status,
            detail,
            address: Some(&address),
            ..Default::default()
        })
        .await;
    match result {
        Ok(issued) => issued_response(&issued),
        Err(e) => oauth_error(&e),
    }
}

fn issued_response(i: &Issued) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(i)
}

/// The client's credentials: HTTP Basic, or `client_id` + `client_secret` in the form, or a
/// signed `client_assertion`.
fn client_auth(
    req: &HttpRequest,
    form: &std::collections::HashMap<String, String>,
) -> Result<ClientAuth, HttpResponse> {
    if let Some(a) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str) != Some(ASSERTION_TYPE) {
            return Err(bad_request(&format!(
                "client_assertion_type must be {ASSERTION_TYPE}"
            )));
        }
        return Ok(ClientAuth::Assertion {
            client_id: form.get("client_id").cloned(),
            assertion: a.clone(),
        });
    }
    if let Some(basic) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let Some((id, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Err(bad_request(
                "the Basic credentials are not base64 of client_id:client_secret",
            ));
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        return Ok(ClientAuth::Secret {
            client_id: decode(id),
            secret: decode(secret),
        });
    }
    match (form.get("client_id"), form.get("client_secret")) {
        (Some(id), Some(secret)) => Ok(ClientAuth::Secret {
            client_id: id.clone(),
            secret: secret.clone(),
        }),
        _ => Err(oauth_error(&GrantError {
            status: 401,
            error: "invalid_client",
            description: "the client must authenticate (Basic, client_secret or client_assertion)"
                .into(),
            retry_after: None,
        })),
    }
}

/// `POST /auth/revoke` (RFC 7009): always 200, whether or not the token was known.
pub async fn revoke(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let auth = match auth_state(&state) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let ctx = match ctx_of(&req, &state) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if body.len() > MAX_FORM {
        return bad_request("the revocation request is too large");
    }
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    let Some(token) = token else {
        return bad_request("token is missing");
    };
    match auth
        .tokens
        .revoke(&token, &super::access::issuer_of(&ctx))
        .await
    {
        Ok(()) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
        Err(e) => oauth_error(&e),
    }
}

/// `GET [base]/.well-known/smart-configuration` (SMART App Launch 2.x §2.1).
pub async fn smart_configuration(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = match ctx_of(&req, &state) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let origin = origin(&ctx);
    HttpResponse::Ok().json(json!({
        "issuer": ctx.base(),
        "token_endpoint": format!("{origin}/auth/token"),
        "revocation_endpoint": format!("{origin}/auth/revoke"),
        "grant_types_supported": ["password", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": [
            "openid", "fhirUser", "launch/patient", "offline_access", "online_access",
            "patient/*.rs", "patient/Consent.cruds", "user/*.cruds", "system/*.cruds"
        ],
        "response_types_supported": ["token"],
        "capabilities": [
            "client-confidential-symmetric", "client-confidential-asymmetric",
            "permission-offline", "permission-online", "permission-patient", "permission-user",
            "permission-v1", "permission-v2"
        ]
    }))
}
