//! `/api/gateways/{gw}/providers…`: provider CRUD, types, inference
//! providers, community sandboxes, provider profiles, attachments.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use breakwater_domain::provider::{Provider, ProviderAttachment, ProviderProfile};
use breakwater_domain::{ProviderName, Secret};
use breakwater_services::providers::{
    COMMUNITY_SANDBOXES, CommunitySandbox, InferenceProvider, ProviderInput, ProviderTypeView,
};
use serde::{Deserialize, Serialize};

use crate::access::{OPERATOR, Routes, VIEWER};
use crate::extract::{Caller, QueryPairs};
use crate::gateway_routes::gateway_name;
use crate::{ApiError, ApiResult, AppState};

pub(crate) fn routes() -> Routes {
    Routes::new()
        .get("/api/gateways/{gw}/providers", VIEWER, list)
        .post("/api/gateways/{gw}/providers", OPERATOR, create)
        .get("/api/gateways/{gw}/providers/types", VIEWER, types)
        .get("/api/gateways/{gw}/providers/inference-providers", VIEWER, inference_providers)
        .get("/api/gateways/{gw}/providers/community-sandboxes", VIEWER, community_sandboxes)
        .get("/api/gateways/{gw}/provider-profiles", VIEWER, profiles)
        .get("/api/gateways/{gw}/provider-profiles/{id}", VIEWER, profile)
        .delete("/api/gateways/{gw}/provider-profiles/{id}", OPERATOR, delete_profile)
        .get("/api/gateways/{gw}/providers/{name}", VIEWER, get_one)
        .put("/api/gateways/{gw}/providers/{name}", OPERATOR, update)
        .delete("/api/gateways/{gw}/providers/{name}", OPERATOR, delete)
        .get("/api/gateways/{gw}/inference", VIEWER, inference)
        .put("/api/gateways/{gw}/inference", OPERATOR, set_inference)
        .get("/api/gateways/{gw}/sandboxes/{name}/providers", VIEWER, sandbox_providers)
        .post("/api/gateways/{gw}/sandboxes/{name}/providers", OPERATOR, attach)
        .delete("/api/gateways/{gw}/sandboxes/{name}/providers/{provider}", OPERATOR, detach)
}

fn provider(raw: &str) -> ApiResult<ProviderName> {
    ProviderName::parse(raw).map_err(|e| ApiError::bad_request("name", e.to_string()))
}

#[derive(Serialize)]
struct ProviderList {
    items: Vec<Provider>,
    total: usize,
    limit: u32,
    offset: u32,
    has_more: bool,
}

async fn list(State(state): State<AppState>, Path(gw): Path<String>, q: QueryPairs) -> ApiResult<Json<ProviderList>> {
    let limit = q.u32("limit", 100, 1000)?.max(1);
    let offset = q.u32("offset", 0, u32::MAX)?;
    let (items, total) = state.providers.list(&gateway_name(&gw)?, limit, offset).await?;
    let has_more = offset as usize + items.len() < total;
    Ok(Json(ProviderList { items, total, limit, offset, has_more }))
}

/// The gateway's own provider profiles first, then the built-in types it
/// has none for (each says its `source`).
async fn types(State(state): State<AppState>, Path(gw): Path<String>) -> ApiResult<Json<Vec<ProviderTypeView>>> {
    Ok(Json(state.providers.types(&gateway_name(&gw)?).await?))
}

async fn inference_providers(
    State(state): State<AppState>,
    Path(gw): Path<String>,
) -> ApiResult<Json<Vec<InferenceProvider>>> {
    Ok(Json(state.providers.inference_providers(&gateway_name(&gw)?).await?))
}

async fn community_sandboxes(
    State(state): State<AppState>,
    Path(gw): Path<String>,
) -> ApiResult<Json<&'static [CommunitySandbox]>> {
    state.gateways.get(&gateway_name(&gw)?).await?;
    Ok(Json(COMMUNITY_SANDBOXES))
}

#[derive(Serialize)]
struct ProfileList {
    items: Vec<ProviderProfile>,
    total: usize,
    limit: u32,
    offset: u32,
}

async fn profiles(
    State(state): State<AppState>,
    Path(gw): Path<String>,
    q: QueryPairs,
) -> ApiResult<Json<ProfileList>> {
    let limit = q.u32("limit", 100, 1000)?.max(1);
    let offset = q.u32("offset", 0, u32::MAX)?;
    let (items, total) = state.providers.list_profiles(&gateway_name(&gw)?, limit, offset).await?;
    Ok(Json(ProfileList { items, total, limit, offset }))
}

async fn profile(
    State(state): State<AppState>,
    Path((gw, id)): Path<(String, String)>,
) -> ApiResult<Json<ProviderProfile>> {
    Ok(Json(state.providers.get_profile(&gateway_name(&gw)?, &id).await?))
}

async fn delete_profile(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, id)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let outcome = state.providers.delete_profile(&actor, &gateway_name(&gw)?, &id).await?;
    Ok(Json(serde_json::json!({"deleted": true, "id": id, "outcome": outcome})))
}

async fn get_one(State(state): State<AppState>, Path((gw, name)): Path<(String, String)>) -> ApiResult<Json<Provider>> {
    Ok(Json(state.providers.get(&gateway_name(&gw)?, &provider(&name)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderBody {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    api_key: Option<String>,
    #[serde(default)]
    credentials: BTreeMap<String, String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

impl ProviderBody {
    fn input(self) -> ProviderInput {
        ProviderInput {
            kind: self.kind,
            api_key: self.api_key.filter(|k| !k.is_empty()).map(Secret::new),
            credentials: self.credentials.into_iter().map(|(k, v)| (k, Secret::new(v))).collect(),
            config: self.config,
        }
    }
}

fn sandbox(raw: &str) -> ApiResult<breakwater_domain::SandboxName> {
    breakwater_domain::SandboxName::parse(raw).map_err(|e| ApiError::bad_request("name", e.to_string()))
}

async fn sandbox_providers(
    State(state): State<AppState>,
    Path((gw, name)): Path<(String, String)>,
) -> ApiResult<Json<Vec<Provider>>> {
    Ok(Json(state.providers.sandbox_providers(&gateway_name(&gw)?, &sandbox(&name)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    provider_name: String,
}

async fn attach(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
    Json(body): Json<AttachBody>,
) -> ApiResult<Json<ProviderAttachment>> {
    let p = provider(&body.provider_name)?;
    Ok(Json(state.providers.set_attached(&actor, &gateway_name(&gw)?, &sandbox(&name)?, &p, true).await?))
}

async fn detach(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name, p)): Path<(String, String, String)>,
) -> ApiResult<Json<ProviderAttachment>> {
    let p = provider(&p)?;
    Ok(Json(state.providers.set_attached(&actor, &gateway_name(&gw)?, &sandbox(&name)?, &p, false).await?))
}

async fn inference(State(state): State<AppState>, Path(gw): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(state.providers.inference(&gateway_name(&gw)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the fields a route would need; 0.1 gateways offer none
struct InferenceBody {
    provider_name: String,
    model_id: String,
    verify: Option<bool>,
    timeout_secs: Option<u64>,
    route_name: Option<String>,
}

async fn set_inference(
    State(state): State<AppState>,
    Path(gw): Path<String>,
    Json(body): Json<InferenceBody>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(state.providers.set_inference(&gateway_name(&gw)?, &body.provider_name).await?))
}

async fn create(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(gw): Path<String>,
    Json(body): Json<ProviderBody>,
) -> ApiResult<(StatusCode, Json<Provider>)> {
    let name = provider(body.name.as_deref().ok_or_else(|| ApiError::bad_request("name", "name is required"))?)?;
    let p = state.providers.create(&actor, &gateway_name(&gw)?, &name, body.input()).await?;
    Ok((StatusCode::CREATED, Json(p)))
}

async fn update(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
    Json(body): Json<ProviderBody>,
) -> ApiResult<Json<Provider>> {
    Ok(Json(state.providers.update(&actor, &gateway_name(&gw)?, &provider(&name)?, body.input()).await?))
}

async fn delete(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    state.providers.delete(&actor, &gateway_name(&gw)?, &provider(&name)?).await?;
    Ok(Json(serde_json::json!({"deleted": true, "name": name})))
}
