//! The HTTP edge (actix-web): routes, negotiation, FHIR REST handlers, operations endpoints.
//!
//! - `negotiate`: `_format`, `Accept`, `Content-Type`, `Prefer`, ETags.
//! - `rest`: instance- and type-level interactions.
//! - `system`: `metadata`, transaction/batch, system history.
//! - `ops`: `/healthz`, `/readyz`, `/metrics`.
//! - `error`: errors as OperationOutcome responses.
//! - `page`: the teleconsultation page (`/consult/{id}`) and its script and style.

pub mod access;
pub mod bulk;
pub mod consultations;
pub mod error;
pub mod negotiate;
pub mod oauth;
pub mod operations;
pub mod ops;
pub mod page;
pub mod prescriptions;
pub mod rest;
pub mod signal;
pub mod subscriptions;
pub mod sync;
pub mod system;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

use crate::config::Config;
use crate::fhir::{Fhir, Format};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use error::{ApiError, outcome_response};
use negotiate::Ctx;

/// What a request did, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Read,
    Vread,
    Create,
    Update,
    Patch,
    Delete,
    Search,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    Transaction,
    Capabilities,
    Operations,
    Unknown,
}

impl Interaction {
    pub const ALL: [Interaction; 14] = [
        Interaction::Read,
        Interaction::Vread,
        Interaction::Create,
        Interaction::Update,
        Interaction::Patch,
        Interaction::Delete,
        Interaction::Search,
        Interaction::HistoryInstance,
        Interaction::HistoryType,
        Interaction::HistorySystem,
        Interaction::Transaction,
        Interaction::Capabilities,
        Interaction::Operations,
        Interaction::Unknown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Create => "create",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
            Interaction::Search => "search-type",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Transaction => "transaction-batch",
            Interaction::Capabilities => "capabilities",
            Interaction::Operations => "ops",
            Interaction::Unknown => "unknown",
        }
    }
}

/// Shared by all handlers.
pub struct AppState {
    pub fhir: Fhir,
    pub metrics: Arc<Metrics>,
    pub max_body: usize,
    pub base_url: Option<Arc<str>>,
    /// Sign-in, tokens and the audit trail; `None` when the server runs with `YBA_AUTH=off`.
    pub auth: Option<access::AuthState>,
    /// Days an e-prescription may be dispensed after issue.
    pub rx_valid_days: i64,
    /// The keys consultation join tokens are signed with (`YBA_TOKEN_KEYS`, or made up at
    /// start), with or without auth.
    pub join_keys: Arc<crate::auth::token::Keys>,
    /// Seconds a join token lives.
    pub join_ttl: u64,
    /// The consultations' calls on this node.
    pub rooms: Arc<crate::telehealth::room::Rooms>,
    /// Seconds a signaling socket may stay silent.
    pub signal_idle: u64,
    /// URL prefixes `$import` may fetch from.
    pub import_allow: Vec<String>,
    /// The websocket bindings of Subscriptions in this process (the dispatcher stops when the
    /// state is dropped, with the server).
    pub subscriptions: Arc<crate::fhir::subscription::Hub>,
    /// A commune node's sync with its upstream (None: not a node).
    pub sync: Option<Arc<crate::sync::Node>>,
}

impl AppState {
    /// Negotiates the response shape, runs the handler, and tags the response with its
    /// interaction for the metrics middleware.
    pub async fn reply<F, Fut>(
        &self,
        req: &HttpRequest,
        interaction: Interaction,
        handler: F,
    ) -> HttpResponse
    where
        F: FnOnce(Ctx) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        let mut resp = match Ctx::new(req, self.base_url.as_ref()) {
            Ok(mut ctx) => match &self.auth {
                // The capability statement is public (SMART clients read it before signing in).
                Some(auth) if interaction != Interaction::Capabilities => {
                    match auth.guard(req, &ctx).await {
                        Ok(guard) => {
                            let format = ctx.format;
                            ctx.guard = Some(guard.clone());
                            let outcome = match auth.limit(&guard.principal) {
                                Ok(()) => handler(ctx).await,
                                Err(wait) => Ok(access::throttled(wait, format)),
                            };
                            let (r, detail) = match outcome {
                                Ok(r) => (r, None),
                                Err(e) => {
                                    let detail = e.issues.first().map(|i| i.diagnostics.clone());
                                    (actix_web::ResponseError::error_response(&e), detail)
                                }
                            };
                            auth.record(
                                req,
                                interaction,
                                Some(&guard),
                                r.status().as_u16(),
                                detail,
                            )
                            .await;
                            r
                        }
                        Err(e) => {
                            auth.record(
                                req,
                                interaction,
                                None,
                                401,
                                e.issues.first().map(|i| i.diagnostics.clone()),
                            )
                            .await;
                            let mut r = actix_web::ResponseError::error_response(&e);
                            r.headers_mut().insert(
                                actix_web::http::header::WWW_AUTHENTICATE,
                                actix_web::http::header::HeaderValue::from_static(
                                    "Bearer realm=\"yba\", error=\"invalid_token\"",
                                ),
                            );
                            r
                        }
                    }
                }
                _ => match handler(ctx).await {
                    Ok(r) => r,
                    Err(e) => actix_web::ResponseError::error_response(&e),
                },
            },
            Err(e) => actix_web::ResponseError::error_response(&e),
        };
        resp.extensions_mut().insert(interaction);
        resp
    }
}

/// Records each request's interaction, status and latency; logs it when asked to.
async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let start = Instant::now();
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let access_log = req.app_data::<web::Data<AccessLog>>().is_some_and(|a| a.0);
    let method = access_log.then(|| req.method().clone());
    let res = next.call(req).await?;
    let interaction = res
        .response()
        .extensions()
        .get::<Interaction>()
        .copied()
        .unwrap_or(Interaction::Unknown);
    let status = res.status().as_u16();
    if let Some(m) = metrics {
        m.observe(interaction as usize, status, start.elapsed());
    }
    if let Some(method) = method {
        // The route pattern, never the path: ids are pseudonymous but queries may hold personal data.
        let route = res.request().match_pattern().unwrap_or_default();
        tracing::info!(%method, route, status, interaction = interaction.name(), micros = start.elapsed().as_micros() as u64, "request");
    }
    Ok(res)
}

struct AccessLog(bool);

/// Routes of the application (also used by tests that build the app in-process).
pub fn routes(cfg: &mut web::ServiceConfig) {
    use web::{delete, get, head, patch, post, put, resource};
    cfg.service(resource("/healthz").route(get().to(ops::healthz)))
        .service(resource("/auth/token").route(post().to(oauth::token)))
        .service(resource("/auth/revoke").route(post().to(oauth::revoke)))
        .service(resource("/consult/assets/{file}").route(get().to(page::asset)))
        .service(resource("/consult/{id}").route(get().to(page::page)))
        .service(
            resource("/api/consultations")
                .route(post().to(consultations::ask))
                .route(get().to(consultations::list))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            resource("/api/consultations/{id}")
                .route(get().to(consultations::show))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            resource("/api/consultations/{id}/signal")
                .route(get().to(signal::signal))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            resource("/api/consultations/{id}/{action}")
                .route(post().to(consultations::act))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            resource("/.well-known/smart-configuration")
                .route(get().to(oauth::smart_configuration)),
        )
        .service(resource("/api/sync/status").route(get().to(sync::status)))
        .service(resource("/api/sync/run").route(post().to(sync::run)))
        .service(resource("/api/sync/conflicts/{id}/resolve").route(post().to(sync::resolve)))
        .service(resource("/readyz").route(get().to(ops::readyz)))
        .service(resource("/metrics").route(get().to(ops::metrics)))
        .service(
            web::scope("/fhir")
                .service(
                    resource("/.well-known/smart-configuration")
                        .route(get().to(oauth::smart_configuration)),
                )
                .service(
                    resource("/metadata")
                        .route(get().to(system::metadata))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/_history")
                        .route(get().to(rest::history_system))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/{type}/_history")
                        .route(get().to(rest::history_type))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/Subscription/{id}/$get-ws-binding-token")
                        .route(get().to(subscriptions::binding_token))
                        .route(post().to(subscriptions::binding_token))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/websocket")
                        .route(get().to(subscriptions::websocket))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/$export")
                        .route(get().to(bulk::export_system))
                        .route(post().to(bulk::export_system))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/Patient/$export")
                        .route(get().to(bulk::export_patients))
                        .route(post().to(bulk::export_patients))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/Group/{id}/$export")
                        .route(get().to(bulk::export_group))
                        .route(post().to(bulk::export_group))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/$import")
                        .route(post().to(bulk::import))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/$bulk-status/{id}")
                        .route(get().to(bulk::status))
                        .route(delete().to(bulk::cancel))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/$bulk-file/{id}/{type}")
                        .route(get().to(bulk::file))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/$reindex")
                        .route(post().to(system::reindex))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/_search")
                        .route(get().to(rest::search_system))
                        .route(post().to(rest::search_system_post))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/{type}/_search")
                        .route(post().to(rest::search_post))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/{type}/$validate")
                        .route(post().to(operations::validate_type))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/MedicationRequest/$prescribe")
                        .route(post().to(prescriptions::prescribe))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/MedicationRequest/$cancel")
                        .route(post().to(prescriptions::cancel))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/MedicationRequest/$status")
                        .route(get().to(prescriptions::status))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/MedicationRequest/$national-export")
                        .route(get().to(prescriptions::national_export))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/Patient/$match")
                        .route(post().to(operations::match_patient))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/Patient/$merge")
                        .route(post().to(operations::merge))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/{type}/{id}/$validate")
                        .route(post().to(operations::validate_instance))
                        .route(get().to(operations::validate_instance))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/{type}/{id}/_history/{vid}")
                        .route(get().to(rest::vread))
                        .route(head().to(rest::vread))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/{type}/{id}/_history")
                        .route(get().to(rest::history_instance))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/{type}/{id}/{compartment}")
                        .route(get().to(rest::compartment))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/{type}/{id}")
                        .route(get().to(rest::read))
                        .route(head().to(rest::read))
                        .route(put().to(rest::update))
                        .route(patch().to(rest::patch))
                        .route(delete().to(rest::delete))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/{type}")
                        .route(get().to(rest::search))
                        .route(post().to(rest::create))
                        .route(put().to(rest::conditional_update))
                        .route(delete().to(rest::conditional_delete))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("")
                        .route(get().to(rest::search_system))
                        .route(post().to(system::transaction))
                        .default_service(web::to(method_not_allowed)),
                )
                .service(
                    resource("/")
                        .route(get().to(rest::search_system))
                        .route(post().to(system::transaction))
                        .default_service(web::to(method_not_allowed)),
                ),
        )
        .default_service(web::to(not_found));
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let msg = format!(
        "{} is not allowed on {}",
        req.method(),
        req.match_pattern()
            .unwrap_or_else(|| req.path().to_string())
    );
    outcome_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &[crate::fhir::outcome::Issue::error("not-supported", msg)],
        Format::Json,
    )
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    let msg = format!(
        "nothing is served at {}: the FHIR base is /fhir",
        req.path()
    );
    outcome_response(
        StatusCode::NOT_FOUND,
        &[crate::fhir::outcome::Issue::error("not-found", msg)],
        Format::Json,
    )
}

/// A running server: its address and a handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub server: Server,
    pub store: Store,
    /// The record store the server answers from (for start-up work such as `load_stored`).
    pub fhir: Fhir,
    /// The audit writer: join it after the server stops, so that queued events are written.
    pub audit_writer: Option<std::thread::JoinHandle<()>>,
}

/// Opens the store (running migrations) and binds the server; the returned `Server` future
/// runs it until SIGTERM/SIGINT, then lets in-flight requests finish.
pub fn start(config: &Config) -> Result<Running, StartError> {
    let store = Store::open(&config.store())?;
    crate::install_tls();
    let fhir = Fhir::new(store.clone(), config.rules());
    let subscriptions = Arc::new(crate::fhir::subscription::Hub::default());
    crate::fhir::subscription::spawn(fhir.clone(), Arc::downgrade(&subscriptions));
    let sync = match config.upstream().map_err(StartError::Config)? {
        Some(up) => Some(Arc::new(
            crate::sync::Node::new(
                fhir.clone(),
                up,
                Duration::from_millis(config.sync_interval_ms.max(100)),
            )
            .map_err(StartError::Config)?,
        )),
        None => None,
    };
    let (auth, audit_writer) = if config.auth {
        let keys =
            crate::auth::token::Keys::parse(config.token_keys.as_ref().map(|k| k.0.as_str()))
                .map_err(StartError::Config)?;
        if keys.ephemeral {
            tracing::warn!(
                "YBA_TOKEN_KEYS is not set: access tokens are signed with a key made up now and end when the server stops"
            );
        }
        let (audit, writer) = crate::auth::audit::Audit::start(store.clone())
            .map_err(|e| StartError::Config(format!("cannot start the audit writer: {e}")))?;
        let tokens = crate::auth::service::Tokens {
            store: store.clone(),
            keys,
            throttle: Default::default(),
            access_ttl: Duration::from_secs(config.access_token_ttl.max(1)),
            session_ttl: Duration::from_secs(
                config.session_ttl.max(config.access_token_ttl).max(1),
            ),
        };
        (
            Some(access::AuthState {
                tokens,
                audit,
                trust_forwarded: config.trust_forwarded,
                limits: crate::auth::ratelimit::RateLimit::new(config.rate_limit),
            }),
            Some(writer),
        )
    } else {
        tracing::warn!(
            "YBA_AUTH=off: every record is open to every caller; never run so with real records"
        );
        (None, None)
    };
    let join_keys =
        crate::auth::token::Keys::parse(config.token_keys.as_ref().map(|k| k.0.as_str()))
            .map_err(StartError::Config)?;
    let state = web::Data::new(AppState {
        join_keys: Arc::new(join_keys),
        join_ttl: config.join_token_ttl.max(1),
        rooms: crate::telehealth::room::Rooms::new(
            crate::telehealth::room::Limits {
                max_participants: config.room_max_participants.max(1),
                max_rooms: config.max_rooms.max(1),
                empty_timeout: Duration::from_secs(config.room_empty_timeout),
                grace: Duration::from_secs(config.signal_grace),
            },
            crate::telehealth::ice::IceSettings {
                ip: config.rtc_ip,
                ports: config.rtc_udp_ports,
                tcp: config.rtc_tcp,
                public_ip: config.rtc_public_ip,
                servers: config.ice_servers.clone(),
                turn_secret: config.turn_secret.as_ref().map(|s| s.0.clone()),
            },
        ),
        signal_idle: config.signal_idle,
        fhir: fhir.clone(),
        metrics: Arc::new(Metrics::new(&Interaction::ALL.map(Interaction::name))),
        max_body: config.max_body,
        base_url: config.base_url.as_deref().map(Arc::from),
        auth,
        rx_valid_days: config.prescription_valid_days,
        subscriptions: subscriptions.clone(),
        sync: sync.clone(),
        import_allow: config
            .import_allow
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect(),
    });
    let access_log = web::Data::new(AccessLog(config.access_log));
    if let Some(node) = &sync {
        crate::sync::Node::spawn(node);
    }
    let cors_origins = config.cors_origins.clone();
    let mut server = HttpServer::new(move || {
        let mut cors = actix_cors::Cors::default()
            .allowed_methods(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
            .allowed_headers([
                actix_web::http::header::AUTHORIZATION,
                actix_web::http::header::CONTENT_TYPE,
                actix_web::http::header::ACCEPT,
                actix_web::http::header::IF_MATCH,
                actix_web::http::header::IF_NONE_MATCH,
                actix_web::http::header::HeaderName::from_static("if-none-exist"),
                actix_web::http::header::HeaderName::from_static("prefer"),
                actix_web::http::header::HeaderName::from_static(access::BREAK_GLASS),
            ])
            .expose_headers([
                actix_web::http::header::ETAG,
                actix_web::http::header::LOCATION,
                actix_web::http::header::LAST_MODIFIED,
            ])
            .max_age(3600);
        for o in &cors_origins {
            cors = cors.allowed_origin(o);
        }
        App::new()
            .app_data(state.clone())
            .app_data(access_log.clone())
            // Bodies are read by handlers with their own limit (413 as an OperationOutcome).
            .app_data(web::PayloadConfig::new(usize::MAX))
            .wrap(actix_web::middleware::from_fn(observe))
            // gzip (or brotli, zstd) for clients that ask: a commune node on a slow link.
            .wrap(actix_web::middleware::Compress::default())
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add(("X-Content-Type-Options", "nosniff"))
                    .add(("X-Frame-Options", "DENY"))
                    .add(("Referrer-Policy", "no-referrer"))
                    .add((
                        "Content-Security-Policy",
                        "default-src 'none'; frame-ancestors 'none'",
                    ))
                    .add(("Cache-Control", "no-store")),
            )
            .wrap(cors)
            .configure(routes)
    })
    .shutdown_timeout(config.shutdown_timeout)
    .client_request_timeout(Duration::from_secs(60));
    if let Some(w) = config.workers {
        server = server.workers(w.max(1));
    }
    let server = server
        .bind(config.bind)
        .map_err(|e| StartError::Bind(config.bind, e))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or(StartError::NoAddress)?;
    Ok(Running {
        addr,
        server: server.run(),
        store,
        fhir,
        audit_writer,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("the server has no address")]
    NoAddress,
    #[error("{0}")]
    Config(String),
}
