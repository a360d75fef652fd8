//! `/api/gateways/{gw}/sandboxes/{name}/approvals…`, the approval workflow
//! and the policy pin.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use breakwater_domain::SandboxName;
use breakwater_domain::approval::{ApprovalWorkflow, DraftChunk, DraftPolicy, PolicyPin};
use breakwater_domain::policy::NetworkRule;
use breakwater_domain::registry::GatewayName;
use breakwater_services::{ApproveOutcome, BulkOutcome, HistoryEntry, Tally, WorkflowSettings};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::{ADMIN, OPERATOR, Routes, VIEWER};
use crate::extract::{Caller, QueryPairs};
use crate::gateway_routes::gateway_name;
use crate::{ApiError, ApiResult, AppState};

pub(crate) fn routes() -> Routes {
    let a = "/api/gateways/{gw}/sandboxes/{name}/approvals";
    let w = "/api/gateways/{gw}/sandboxes/{name}/approval-workflow";
    let pin_path = "/api/gateways/{gw}/sandboxes/{name}/policy/pin";
    Routes::new()
        .get(a, VIEWER, draft)
        .get(format!("{a}/pending"), VIEWER, pending)
        .get(format!("{a}/history"), VIEWER, history)
        .post(format!("{a}/approve-all"), OPERATOR, approve_all)
        .post(format!("{a}/clear"), OPERATOR, clear)
        .post(format!("{a}/{{chunk}}/approve"), OPERATOR, approve)
        .post(format!("{a}/{{chunk}}/reject"), OPERATOR, reject)
        .post(format!("{a}/{{chunk}}/edit"), OPERATOR, edit)
        .post(format!("{a}/{{chunk}}/undo"), OPERATOR, undo)
        .get(format!("{a}/{{chunk}}/decisions"), VIEWER, decisions)
        .get(w, OPERATOR, get_workflow)
        .put(w, ADMIN, put_workflow)
        .delete(w, ADMIN, delete_workflow)
        .get(pin_path, VIEWER, get_pin)
        .post(pin_path, OPERATOR, pin)
        .delete(pin_path, OPERATOR, unpin)
}

fn target(gw: &str, name: &str) -> ApiResult<(GatewayName, SandboxName)> {
    let sandbox = SandboxName::parse(name).map_err(|e| ApiError::bad_request("name", e.to_string()))?;
    Ok((gateway_name(gw)?, sandbox))
}

type Params = Path<(String, String)>;
type ChunkParams = Path<(String, String, String)>;

async fn draft(State(state): State<AppState>, Path((gw, name)): Params, q: QueryPairs) -> ApiResult<Json<DraftPolicy>> {
    let (gw, sb) = target(&gw, &name)?;
    let filter = q.get("status_filter").or_else(|| q.get("status")).filter(|s| !s.is_empty());
    Ok(Json(state.approvals.draft(&gw, &sb, filter).await?))
}

async fn pending(State(state): State<AppState>, Path((gw, name)): Params) -> ApiResult<Json<Vec<DraftChunk>>> {
    let (gw, sb) = target(&gw, &name)?;
    Ok(Json(state.approvals.pending(&gw, &sb).await?))
}

async fn history(State(state): State<AppState>, Path((gw, name)): Params) -> ApiResult<Json<Vec<HistoryEntry>>> {
    let (gw, sb) = target(&gw, &name)?;
    Ok(Json(state.approvals.history(&gw, &sb).await?))
}

/// 200 with the chunk when decided, 202 with the tally when a workflow
/// still needs votes.
async fn approve(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name, chunk)): ChunkParams,
    q: QueryPairs,
) -> ApiResult<Response> {
    let (gw, sb) = target(&gw, &name)?;
    let out = state.approvals.approve(&actor, &gw, &sb, &chunk, q.bool("wait_loaded")?).await?;
    let status = if matches!(out, ApproveOutcome::VoteRecorded { .. }) { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((status, Json(out)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RejectBody {
    #[serde(default)]
    reason: String,
}

async fn reject(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name, chunk)): ChunkParams,
    body: Option<Json<RejectBody>>,
) -> ApiResult<Json<DraftChunk>> {
    let (gw, sb) = target(&gw, &name)?;
    let reason = body.map(|Json(b)| b.reason).unwrap_or_default();
    if reason.chars().count() > 1000 {
        return Err(ApiError::bad_request("reason", "at most 1000 characters"));
    }
    Ok(Json(state.approvals.reject(&actor, &gw, &sb, &chunk, &reason).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveAllBody {
    #[serde(default)]
    include_security_flagged: bool,
}

async fn approve_all(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Params,
    q: QueryPairs,
    body: Option<Json<ApproveAllBody>>,
) -> ApiResult<Json<BulkOutcome>> {
    let (gw, sb) = target(&gw, &name)?;
    let include = body.is_some_and(|Json(b)| b.include_security_flagged) || q.bool("include_security_flagged")?;
    Ok(Json(state.approvals.approve_all(&actor, &gw, &sb, include, q.bool("wait_loaded")?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditBody {
    proposed_rule: NetworkRule,
}

async fn edit(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name, chunk)): ChunkParams,
    Json(body): Json<EditBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let (gw, sb) = target(&gw, &name)?;
    state.approvals.edit(&actor, &gw, &sb, &chunk, body.proposed_rule).await?;
    Ok(Json(serde_json::json!({"message": format!("chunk {chunk} updated")})))
}

async fn undo(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name, chunk)): ChunkParams,
) -> ApiResult<Json<DraftChunk>> {
    let (gw, sb) = target(&gw, &name)?;
    Ok(Json(state.approvals.undo(&actor, &gw, &sb, &chunk).await?))
}

async fn clear(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Params,
) -> ApiResult<Json<serde_json::Value>> {
    let (gw, sb) = target(&gw, &name)?;
    let cleared = state.approvals.clear(&actor, &gw, &sb).await?;
    Ok(Json(serde_json::json!({"cleared": cleared})))
}

async fn decisions(State(state): State<AppState>, Path((gw, name, chunk)): ChunkParams) -> ApiResult<Json<Tally>> {
    let (gw, sb) = target(&gw, &name)?;
    Ok(Json(state.approvals.tally(&gw, &sb, &chunk).await?))
}

async fn get_workflow(State(state): State<AppState>, Path((gw, name)): Params) -> ApiResult<Json<ApprovalWorkflow>> {
    let (gw, sb) = target(&gw, &name)?;
    let wf = state.approvals.workflow(&gw, &sb).await?;
    wf.map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no approval workflow for this sandbox"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowBody {
    required_approvals: u32,
    #[serde(default)]
    required_roles: Vec<String>,
    #[serde(default = "yes")]
    distinct_actors: bool,
    escalation_timeout_minutes: Option<u32>,
}

fn yes() -> bool {
    true
}

async fn put_workflow(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Params,
    Json(b): Json<WorkflowBody>,
) -> ApiResult<Json<ApprovalWorkflow>> {
    let (gw, sb) = target(&gw, &name)?;
    Ok(Json(
        state
            .approvals
            .set_workflow(
                &actor,
                &gw,
                &sb,
                WorkflowSettings {
                    required_approvals: b.required_approvals,
                    required_roles: b.required_roles,
                    distinct_actors: b.distinct_actors,
                    escalation_timeout_minutes: b.escalation_timeout_minutes,
                },
            )
            .await?,
    ))
}

async fn delete_workflow(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Params,
) -> ApiResult<Json<serde_json::Value>> {
    let (gw, sb) = target(&gw, &name)?;
    state.approvals.delete_workflow(&actor, &gw, &sb).await?;
    Ok(Json(serde_json::json!({"message": "approval workflow removed"})))
}

#[derive(Serialize)]
struct PinResponse {
    #[serde(flatten)]
    pin: PolicyPin,
    active: bool,
}

async fn get_pin(State(state): State<AppState>, Path((gw, name)): Params) -> ApiResult<Json<PinResponse>> {
    let (gw, sb) = target(&gw, &name)?;
    match state.policies.active_pin(&gw, &sb).await? {
        Some(pin) => Ok(Json(PinResponse { pin, active: true })),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no active pin for this sandbox")),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PinBody {
    reason: Option<String>,
    expires_at: Option<DateTime<Utc>>,
}

async fn pin(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Params,
    body: Option<Json<PinBody>>,
) -> ApiResult<Json<PinResponse>> {
    let (gw, sb) = target(&gw, &name)?;
    let PinBody { reason, expires_at } = body.map(|Json(b)| b).unwrap_or_default();
    let pin = state.policies.pin(&actor, &gw, &sb, reason, expires_at).await?;
    Ok(Json(PinResponse { pin, active: true }))
}

async fn unpin(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Params,
) -> ApiResult<StatusCode> {
    let (gw, sb) = target(&gw, &name)?;
    state.policies.unpin(&actor, &gw, &sb).await?;
    Ok(StatusCode::NO_CONTENT)
}
