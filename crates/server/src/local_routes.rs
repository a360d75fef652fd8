//! `/api/gateway/diagnostics`, local lifecycle and `/api/gateway/import-filesystem`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use breakwater_services::{CreateLocalGateway, Diagnostics, ImportReport, LocalActionResult};
use serde::Deserialize;

use crate::access::{ADMIN, OPERATOR, Routes};
use crate::extract::{Caller, QueryPairs};
use crate::gateway_routes::gateway_name;
use crate::{ApiError, ApiResult, AppState};

pub(crate) fn routes() -> Routes {
    Routes::new()
        .get("/api/gateway/diagnostics", OPERATOR, diagnostics)
        .post("/api/gateway/import-filesystem", ADMIN, import_filesystem)
        .post("/api/gateway/create", ADMIN, create)
        .post("/api/gateway/{name}/start", ADMIN, start)
        .post("/api/gateway/{name}/stop", ADMIN, stop)
        .post("/api/gateway/{name}/restart", ADMIN, restart)
        .post("/api/gateway/{name}/destroy", ADMIN, destroy)
}

async fn diagnostics(State(state): State<AppState>) -> Json<Diagnostics> {
    Json(state.local.diagnostics().await)
}

async fn import_filesystem(State(state): State<AppState>, Caller(actor): Caller) -> ApiResult<Json<ImportReport>> {
    // Only the configured directory: a path from the request would let a
    // caller make the server read arbitrary files.
    let dir = state.local.tools().openshell_config_dir.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "NO_OPENSHELL_CONFIG_DIR",
            "no OpenShell CLI config directory is configured; start Breakwater with --openshell-config-dir",
        )
    })?;
    Ok(Json(state.gateways.import_openshell_config(&actor, &dir).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    port: Option<u16>,
    remote_host: Option<String>,
    #[serde(default)]
    gpu: bool,
}

async fn create(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Json(body): Json<CreateBody>,
) -> ApiResult<(StatusCode, Json<LocalActionResult>)> {
    let input = CreateLocalGateway { name: body.name, port: body.port, remote_host: body.remote_host, gpu: body.gpu };
    Ok((StatusCode::CREATED, Json(state.local.create(&actor, input).await?)))
}

async fn start(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<LocalActionResult>> {
    Ok(Json(state.local.start(&actor, &gateway_name(&name)?).await?))
}

async fn stop(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<LocalActionResult>> {
    Ok(Json(state.local.stop(&actor, &gateway_name(&name)?).await?))
}

async fn restart(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<LocalActionResult>> {
    Ok(Json(state.local.restart(&actor, &gateway_name(&name)?).await?))
}

async fn destroy(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(name): Path<String>,
    q: QueryPairs,
) -> ApiResult<Json<LocalActionResult>> {
    let force = q.bool("force")?;
    Ok(Json(state.local.destroy(&actor, &gateway_name(&name)?, force).await?))
}
