//! `/api/gateway/*`: the registry of gateways (ShoreGuard's paths).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use breakwater_domain::Secret;
use breakwater_domain::policy::{GatewaySettings, SettingValue};
use breakwater_domain::registry::{GatewayMetadataPatch, GatewayName, GatewayRecord, GatewayStatus};
use breakwater_services::{ConnectionTest, GatewayInfoView, RegisterGateway};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::{ADMIN, Routes, VIEWER};
use crate::extract::{Caller, QueryPairs};
use crate::{ApiError, ApiResult, AppState};

pub(crate) fn routes() -> Routes {
    Routes::new()
        .get("/api/gateway/list", VIEWER, list)
        .post("/api/gateway/register", ADMIN, register)
        .delete("/api/gateway/{name}", ADMIN, unregister)
        .patch("/api/gateway/{name}", ADMIN, patch)
        .get("/api/gateway/{name}/info", VIEWER, info)
        .get("/api/gateway/{name}/config", VIEWER, config)
        .get("/api/gateway/{name}/settings", ADMIN, settings)
        .put("/api/gateway/{name}/settings/{key}", ADMIN, set_setting)
        .delete("/api/gateway/{name}/settings/{key}", ADMIN, delete_setting)
        .post("/api/gateway/{name}/test-connection", ADMIN, test_connection)
}

pub(crate) fn gateway_name(raw: &str) -> ApiResult<GatewayName> {
    GatewayName::parse(raw).map_err(|e| ApiError::bad_request("name", e.to_string()))
}

/// What clients read about a gateway. Certificates and keys are never echoed.
#[derive(Serialize)]
// The shape ShoreGuard clients read; each flag is a separate field there.
#[allow(clippy::struct_excessive_bools)]
pub struct GatewayResponse {
    name: String,
    endpoint: String,
    scheme: String,
    auth_mode: &'static str,
    skip_server_verification: bool,
    has_ca_cert: bool,
    has_client_cert: bool,
    has_client_key: bool,
    has_bearer_token: bool,
    metadata: BTreeMap<String, serde_json::Value>,
    runtime: Option<String>,
    status: &'static str,
    last_status: &'static str,
    connected: bool,
    version: Option<String>,
    error_code: Option<String>,
    error: Option<String>,
    description: Option<String>,
    labels: BTreeMap<String, String>,
    registered_at: DateTime<Utc>,
    last_checked: Option<DateTime<Utc>>,
    last_seen: Option<DateTime<Utc>>,
}

impl From<GatewayRecord> for GatewayResponse {
    fn from(r: GatewayRecord) -> Self {
        let last_status = match r.health.status {
            GatewayStatus::Connected => "healthy",
            GatewayStatus::Unreachable => "unreachable",
            GatewayStatus::Error => "degraded",
            GatewayStatus::Unknown => "unknown",
        };
        Self {
            runtime: r.metadata.get("runtime").and_then(|v| v.as_str()).map(str::to_owned),
            name: r.name.to_string(),
            endpoint: r.endpoint,
            scheme: r.scheme,
            auth_mode: r.auth_mode.as_str(),
            skip_server_verification: r.skip_server_verification,
            has_ca_cert: r.ca_cert.is_some(),
            has_client_cert: r.client_cert.is_some(),
            has_client_key: r.client_key.is_some(),
            has_bearer_token: r.bearer_token.is_some(),
            metadata: r.metadata,
            status: r.health.status.as_str(),
            last_status,
            connected: r.health.status == GatewayStatus::Connected,
            version: r.health.version,
            error_code: r.health.error_code,
            error: r.health.error,
            description: r.description,
            labels: r.labels,
            registered_at: r.registered_at,
            last_checked: r.health.checked_at,
            last_seen: r.health.last_seen,
        }
    }
}

#[derive(Serialize)]
struct ListResponse<T> {
    items: Vec<T>,
    total: u64,
    limit: u32,
    offset: u32,
}

/// Serialised list pages by query string, valid for one registry snapshot
/// generation: the list is the hottest read (dashboards poll it), and a page
/// of a hundred gateways is tens of kilobytes of JSON to rebuild.
#[derive(Default)]
pub struct ListCache(std::sync::Mutex<HashMap<String, (u64, bytes::Bytes)>>);

impl ListCache {
    /// Query strings kept at most; clients that vary them freely just miss.
    const MAX_ENTRIES: usize = 256;

    fn get(&self, key: &str, generation: u64) -> Option<bytes::Bytes> {
        let map = self.0.lock().expect("list cache lock");
        map.get(key).filter(|(g, _)| *g == generation).map(|(_, b)| b.clone())
    }

    fn put(&self, key: String, generation: u64, body: bytes::Bytes) {
        let mut map = self.0.lock().expect("list cache lock");
        if map.len() >= Self::MAX_ENTRIES {
            map.retain(|_, (g, _)| *g == generation);
            if map.len() >= Self::MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, (generation, body));
    }
}

fn json_response(body: bytes::Bytes) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

async fn list(State(state): State<AppState>, RawQuery(raw): RawQuery, q: QueryPairs) -> ApiResult<Response> {
    let key = raw.unwrap_or_default();
    let (generation, _) = state.gateways.registry().await?;
    if let Some(body) = state.list_cache.get(&key, generation) {
        return Ok(json_response(body));
    }
    let selector = q.label_selector()?;
    let limit = q.u32("limit", 100, 1000)?.max(1);
    let offset = q.u32("offset", 0, u32::MAX)?;
    let (items, total) = match q.get("runtime").filter(|r| !r.is_empty()) {
        Some(runtime) => state.gateways.list_by_runtime(&selector, runtime, limit, offset).await?,
        None => state.gateways.list(&selector, limit, offset).await?,
    };
    let items: Vec<GatewayResponse> = items.into_iter().map(GatewayResponse::from).collect();
    let body = serde_json::to_vec(&ListResponse { items, total, limit, offset })
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e.to_string()))?;
    let body = bytes::Bytes::from(body);
    state.list_cache.put(key, generation, body.clone());
    Ok(json_response(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    name: String,
    endpoint: String,
    scheme: Option<String>,
    auth_mode: Option<String>,
    #[serde(default)]
    skip_server_verification: bool,
    ca_cert: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    bearer_token: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, serde_json::Value>,
    description: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RegisterResponse {
    #[serde(flatten)]
    gateway: GatewayResponse,
    connection: ConnectionTest,
}

async fn register(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Json(body): Json<RegisterBody>,
) -> ApiResult<(StatusCode, Json<RegisterResponse>)> {
    let input = RegisterGateway {
        name: body.name,
        endpoint: body.endpoint,
        scheme: body.scheme,
        auth_mode: body.auth_mode,
        skip_server_verification: body.skip_server_verification,
        ca_cert: body.ca_cert,
        client_cert: body.client_cert,
        client_key: body.client_key.map(Secret::new),
        bearer_token: body.bearer_token.filter(|t| !t.is_empty()).map(Secret::new),
        metadata: body.metadata,
        description: body.description,
        labels: body.labels,
        origin: None,
    };
    let (record, connection) = state.gateways.register(&actor, input).await?;
    Ok((StatusCode::CREATED, Json(RegisterResponse { gateway: record.into(), connection })))
}

async fn unregister(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let name = gateway_name(&name)?;
    state.gateways.unregister(&actor, &name).await?;
    Ok(Json(serde_json::json!({"success": true, "name": name.as_str()})))
}

async fn patch(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(name): Path<String>,
    Json(patch): Json<GatewayMetadataPatch>,
) -> ApiResult<Json<GatewayResponse>> {
    let name = gateway_name(&name)?;
    Ok(Json(state.gateways.update_metadata(&actor, &name, patch).await?.into()))
}

#[derive(Serialize)]
struct InfoResponse {
    #[serde(flatten)]
    gateway: GatewayResponse,
    compute_drivers: Vec<breakwater_domain::gateway::ComputeDriver>,
    client_cert_expires_at: Option<DateTime<Utc>>,
    warnings: Vec<String>,
}

async fn info(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<InfoResponse>> {
    let GatewayInfoView { record, compute_drivers, client_cert_expires_at, warnings } =
        state.gateways.info(&gateway_name(&name)?).await?;
    Ok(Json(InfoResponse { gateway: record.into(), compute_drivers, client_cert_expires_at, warnings }))
}

async fn config(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<GatewaySettings>> {
    Ok(Json(state.gateways.settings(&gateway_name(&name)?).await?))
}

async fn settings(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<GatewaySettings>> {
    Ok(Json(state.gateways.settings(&gateway_name(&name)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingBody {
    value: SettingValue,
}

async fn set_setting(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((name, key)): Path<(String, String)>,
    Json(body): Json<SettingBody>,
) -> ApiResult<Json<GatewaySettings>> {
    Ok(Json(state.gateways.set_setting(&actor, &gateway_name(&name)?, &key, body.value).await?))
}

async fn delete_setting(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((name, key)): Path<(String, String)>,
) -> ApiResult<Json<GatewaySettings>> {
    Ok(Json(state.gateways.delete_setting(&actor, &gateway_name(&name)?, &key).await?))
}

async fn test_connection(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<ConnectionTest>> {
    Ok(Json(state.gateways.test_connection(&gateway_name(&name)?).await?))
}
