//! Breakwater's HTTP server: the REST API with ShoreGuard's paths, health
//! endpoints, and problem+json errors.
//!
//! Handlers stay thin: extract, call one service function, map the result.
//! Business rules live in `breakwater-services`.
#![forbid(unsafe_code)]

pub mod access;
mod approval_routes;
mod audit_routes;
pub mod auth;
mod auth_routes;
mod error;
mod extract;
mod gateway_routes;
mod guard;
pub mod limits;
mod live_routes;
mod local_routes;
mod operation_routes;
mod policy_routes;
mod provider_routes;
mod sandbox_routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use breakwater_services::{
    ApprovalService, AuditService, GatewayService, IdentityService, LocalGatewayManager, MonitorSettings, OidcService,
    OperationService, PolicyService, ProviderService, SandboxService,
};
use breakwater_store::Store;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};

pub use access::{RouteSpec, RouteTable, Routes};
pub use auth::AuthMode;
pub use error::{ApiError, ApiResult};
pub use gateway_routes::ListCache;
pub use guard::{HostGuard, parse_cors_origin};

/// Largest request body we read (PEM bundles are the biggest legitimate ones).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Everything handlers need.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub gateways: GatewayService,
    pub audit: AuditService,
    pub local: LocalGatewayManager,
    pub policies: PolicyService,
    pub approvals: ApprovalService,
    pub operations: OperationService,
    pub sandboxes: SandboxService,
    pub providers: ProviderService,
    pub identity: IdentityService,
    /// Sign-in with the configured OIDC providers (none: `OidcService::disabled`).
    pub oidc: OidcService,
    pub auth: AuthMode,
    /// Every route with its least role (filled in by [`router`]).
    pub routes: RouteTable,
    /// Send `Strict-Transport-Security` (behind TLS only).
    pub hsts: bool,
    /// `POST /api/auth/register` creates viewers (off unless asked for).
    pub registration: bool,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: limits::TrustedProxies,
    pub rate_limiter: Arc<limits::RateLimiter>,
    pub host_guard: HostGuard,
    /// Serialised `GET /api/gateway/list` pages (see `gateway_routes::ListCache`).
    pub list_cache: Arc<gateway_routes::ListCache>,
    pub monitor: MonitorSettings,
    pub started: Instant,
    /// Fired when the server starts to shut down: long-lived responses
    /// (operation streams, live sockets) end so the graceful shutdown is
    /// not held open by them.
    pub closing: tokio_util::sync::CancellationToken,
}

/// Every route with its least role.
#[must_use]
pub fn routes() -> Routes {
    use access::PUBLIC;
    Routes::new()
        .get("/healthz", PUBLIC, healthz)
        .get("/readyz", PUBLIC, readyz)
        .get("/version", PUBLIC, version)
        .merge(gateway_routes::routes())
        .merge(local_routes::routes())
        .merge(policy_routes::routes())
        .merge(approval_routes::routes())
        .merge(operation_routes::routes())
        .merge(sandbox_routes::routes())
        .merge(provider_routes::routes())
        .merge(audit_routes::routes())
        .merge(live_routes::routes())
        .merge(auth_routes::routes())
}

/// The whole HTTP surface. Layers, outermost first: security headers, body
/// limit, host/origin guard, client address and rate limit, authentication, request ids and problem
/// bodies, routing, then authorization against the route table.
pub fn router(mut state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let (api, table) = routes().build();
    state.routes = table;
    api.route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authorize))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") })
        .layer(axum::middleware::from_fn(problem_request_id))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(axum::middleware::from_fn_with_state(state.clone(), limits::limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::security_headers))
        .layer(cors(state.host_guard.cors_origins()))
        .with_state(state)
}

/// CORS for the configured origins only (none: no CORS headers at all, so
/// browsers keep other sites' pages out). Preflights are answered here,
/// before authentication; the real request is authenticated as any other.
fn cors(origins: &[String]) -> tower::util::Either<tower_http::cors::CorsLayer, tower::layer::util::Identity> {
    use axum::http::{Method, header};
    if origins.is_empty() {
        return tower::util::Either::Right(tower::layer::util::Identity::new());
    }
    let list: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    tower::util::Either::Left(
        tower_http::cors::CorsLayer::new()
            .allow_origin(tower_http::cors::AllowOrigin::list(list))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("prefer"),
            ])
            .expose_headers([header::LOCATION, header::RETRY_AFTER, HeaderName::from_static("x-request-id")])
            .allow_credentials(true)
            .max_age(Duration::from_secs(600)),
    )
}

/// Logs each request under its id (so log lines and responses correlate),
/// turns the framework's own plain-text errors into problem+json, and adds
/// the request id to every problem body, so a user can quote it.
async fn problem_request_id(req: Request<Body>, next: Next) -> Response {
    use tracing::Instrument as _;
    let id = req.extensions().get::<RequestId>().and_then(|r| r.header_value().to_str().ok()).map(str::to_owned);
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let span = tracing::info_span!("request", request_id = id.as_deref().unwrap_or("-"));
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        let status = resp.status().as_u16();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::warn!(%method, %path, status, ms, "request failed");
        } else {
            tracing::debug!(%method, %path, status, ms, "request");
        }
    });
    let status = resp.status();
    if (status.is_client_error() || status.is_server_error()) && !guard::is_problem(&resp) {
        let (_, body) = resp.into_parts();
        let text = axum::body::to_bytes(body, BODY_LIMIT).await.unwrap_or_default();
        let detail = guard::detail_for(status, &String::from_utf8_lossy(&text));
        resp = ApiError::new(status, guard::code_for(status), detail).into_response();
    }
    let Some(id) = id.filter(|_| guard::is_problem(&resp)) else { return resp };
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "error body too large").into_response();
    };
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert("request_id".into(), serde_json::Value::String(id));
            serde_json::to_vec(&map).unwrap_or_else(|_| bytes.to_vec())
        }
        _ => bytes.to_vec(),
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "name": "breakwater",
        "openshell_protocol": "0.1",
    }))
}

/// Ready when the database answers quickly and the health monitor is alive.
async fn readyz(State(state): State<AppState>) -> Response {
    let db = tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await;
    let (db_ok, db_detail) = match db {
        Ok(Ok(())) => (true, "ok".to_owned()),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (false, "no answer within 2 s".to_owned()),
    };
    // The monitor sweeps every interval; three missed sweeps mean it is stuck.
    let grace = state.monitor.interval * 3 + state.monitor.probe_timeout;
    let monitor_ok = match state.gateways.last_sweep() {
        Some(at) => (chrono::Utc::now() - at).to_std().is_ok_and(|age| age < grace),
        None => state.started.elapsed() < grace,
    };
    let ok = db_ok && monitor_ok;
    let body = serde_json::json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": {
            "database": {"status": if db_ok { "ok" } else { "failing" }, "detail": db_detail},
            "health_monitor": {"status": if monitor_ok { "ok" } else { "stalled" }},
        },
    });
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = state.closing.clone();
    axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.cancel();
        })
        .await
}
