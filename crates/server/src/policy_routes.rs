//! `/api/gateways/{gw}/sandboxes/{name}/policy…` and `/api/policies/presets…`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use breakwater_domain::SandboxName;
use breakwater_domain::policy::{NetworkRule, Policy, PolicyRevision};
use breakwater_domain::policy_yaml::PolicyDiff;
use breakwater_domain::presets::Preset;
use breakwater_domain::registry::GatewayName;
use breakwater_services::policy::{ApplyMode, PathAccess, PresetPreview};
use breakwater_services::{ApplyOutcome, PolicyView, WriteOutcome, WriteStatus};
use serde::{Deserialize, Serialize};

use crate::extract::{Caller, QueryPairs};
use crate::gateway_routes::gateway_name;
use axum::http::Method;

use crate::access::{OPERATOR, Routes, VIEWER};
use crate::{ApiError, ApiResult, AppState};

pub(crate) fn routes() -> Routes {
    let p = "/api/gateways/{gw}/sandboxes/{name}/policy";
    // Policy documents may be up to 4 MiB of YAML, sent inside JSON.
    let big =
        |mr: axum::routing::MethodRouter<AppState>| mr.layer(axum::extract::DefaultBodyLimit::max(POLICY_BODY_LIMIT));
    Routes::new()
        .get(p, VIEWER, get_policy)
        .method(Method::PUT, p, OPERATOR, big(put(put_policy)))
        .get(format!("{p}/effective"), VIEWER, effective)
        .get(format!("{p}/export"), VIEWER, export)
        .method(Method::POST, format!("{p}/apply"), OPERATOR, big(post(apply)))
        .get(format!("{p}/revisions"), VIEWER, revisions)
        .get(format!("{p}/diff"), VIEWER, diff)
        .post(format!("{p}/network-rules"), OPERATOR, add_rule)
        .delete(format!("{p}/network-rules/{{key}}"), OPERATOR, delete_rule)
        .post(format!("{p}/filesystem"), OPERATOR, add_path)
        .delete(format!("{p}/filesystem"), OPERATOR, delete_path)
        .put(format!("{p}/process"), OPERATOR, put_process)
        .post(format!("{p}/presets/{{preset}}"), OPERATOR, apply_preset)
        .get(format!("{p}/presets/{{preset}}/preview"), VIEWER, preview_preset)
        .get("/api/policies/presets", VIEWER, list_presets)
        .get("/api/policies/presets/{preset}", VIEWER, get_preset)
}

/// Policy routes take larger bodies than the rest of the API.
const POLICY_BODY_LIMIT: usize = 6 * 1024 * 1024;

fn target(gw: &str, name: &str) -> ApiResult<(GatewayName, SandboxName)> {
    let sandbox = SandboxName::parse(name).map_err(|e| ApiError::bad_request("name", e.to_string()))?;
    Ok((gateway_name(gw)?, sandbox))
}

/// ShoreGuard's `PolicyResponse` envelope (`active_version`, `revision`,
/// `policy`) plus flat fields of ours.
#[derive(Serialize)]
struct PolicyResponse {
    active_version: u32,
    revision: RevisionSummary,
    policy: Policy,
    version: u32,
    policy_hash: String,
    status: breakwater_domain::policy::PolicyStatus,
    source: breakwater_domain::policy::PolicySource,
    settings: std::collections::BTreeMap<String, breakwater_domain::policy::SettingValue>,
}

#[derive(Serialize)]
struct RevisionSummary {
    version: u32,
    policy_hash: String,
    status: breakwater_domain::policy::PolicyStatus,
    load_error: String,
}

impl From<PolicyView> for PolicyResponse {
    fn from(v: PolicyView) -> Self {
        Self {
            active_version: v.active_version,
            revision: RevisionSummary {
                version: v.version,
                policy_hash: v.policy_hash.clone(),
                status: v.status,
                load_error: v.load_error,
            },
            policy: v.policy,
            version: v.version,
            policy_hash: v.policy_hash,
            status: v.status,
            source: v.source,
            settings: v.settings,
        }
    }
}

/// A write's outcome plus the policy as it now stands.
#[derive(Serialize)]
struct WriteResponse {
    result: WriteStatus,
    diff: PolicyDiff,
    text_diff: String,
    #[serde(flatten)]
    policy: PolicyResponse,
}

async fn written(
    state: &AppState,
    gw: &GatewayName,
    sb: &SandboxName,
    out: WriteOutcome,
) -> ApiResult<Json<WriteResponse>> {
    let view = state.policies.get(gw, sb).await?;
    Ok(Json(WriteResponse { result: out.status, diff: out.diff, text_diff: out.text_diff, policy: view.into() }))
}

async fn get_policy(
    State(state): State<AppState>,
    Path((gw, name)): Path<(String, String)>,
) -> ApiResult<Json<PolicyResponse>> {
    let (gw, sb) = target(&gw, &name)?;
    Ok(Json(state.policies.get(&gw, &sb).await?.into()))
}

async fn effective(
    State(state): State<AppState>,
    Path((gw, name)): Path<(String, String)>,
) -> ApiResult<Json<PolicyResponse>> {
    let (gw, sb) = target(&gw, &name)?;
    Ok(Json(state.policies.effective(&gw, &sb).await?.into()))
}

async fn put_policy(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
    Json(body): Json<serde_json::Value>,
) -> ApiResult<Json<WriteResponse>> {
    let (gw, sb) = target(&gw, &name)?;
    // ShoreGuard clients send the policy itself or `{"policy": {...}}`.
    let doc = match body {
        serde_json::Value::Object(mut m) if m.len() == 1 && m.contains_key("policy") => {
            m.remove("policy").unwrap_or_default()
        }
        other => other,
    };
    // A full replace removes whatever it does not name: it must at least
    // name the network rules (`{}` for none), so a stray `{}` or `[]` cannot
    // wipe a sandbox's policy.
    if !doc.as_object().is_some_and(|m| m.contains_key("network_policies")) {
        return Err(ApiError::bad_request(
            "network_policies",
            "a full replace must be a policy object with network_policies (use {} to remove every rule)",
        ));
    }
    let policy: Policy = serde_json::from_value(doc).map_err(|e| ApiError::bad_request("policy", e.to_string()))?;
    let out = state.policies.update(&actor, &gw, &sb, policy).await?;
    written(&state, &gw, &sb, out).await
}

#[derive(Serialize)]
struct ExportResponse {
    yaml: String,
    gateway: String,
    sandbox: String,
    version: u32,
    policy_hash: String,
}

async fn export(
    State(state): State<AppState>,
    Path((gw, name)): Path<(String, String)>,
) -> ApiResult<Json<ExportResponse>> {
    let (gw, sb) = target(&gw, &name)?;
    let (doc, yaml) = state.policies.export(&gw, &sb).await?;
    Ok(Json(ExportResponse {
        yaml,
        gateway: doc.metadata.gateway,
        sandbox: doc.metadata.sandbox,
        version: doc.metadata.version,
        policy_hash: doc.metadata.policy_hash,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyBody {
    yaml: String,
    #[serde(default)]
    dry_run: bool,
    expected_version: Option<serde_json::Value>,
    #[serde(default)]
    mode: ApplyMode,
}

#[derive(Serialize)]
struct ApplyResponse {
    status: WriteStatus,
    current_hash: String,
    applied_version: Option<String>,
    version: u32,
    diff: PolicyDiff,
    text_diff: String,
}

async fn apply(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
    Json(body): Json<ApplyBody>,
) -> ApiResult<Response> {
    let (gw, sb) = target(&gw, &name)?;
    // A version number or a policy hash; clients send either.
    let expected = match &body.expected_version {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(ApiError::bad_request("expected_version", "a version number or a policy hash")),
    };
    let before = state.policies.get(&gw, &sb).await?.policy_hash;
    let out = state
        .approvals
        .apply_document(&actor, &gw, &sb, &body.yaml, body.mode, body.dry_run, expected.as_deref())
        .await?;
    let out = match out {
        ApplyOutcome::Written(out) => out,
        ApplyOutcome::VoteRecorded { tally, diff } => {
            let body = serde_json::json!({
                "status": "vote_recorded",
                "current_hash": before,
                "diff": diff.diff,
                "text_diff": diff.text_diff,
                "votes_needed": tally.votes_needed,
                "votes_cast": tally.approvals,
                "chunk_id": tally.chunk_id,
            });
            return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
        }
    };
    let applied = out.status == WriteStatus::Applied;
    Ok(Json(ApplyResponse {
        current_hash: if applied { before } else { out.policy_hash.clone() },
        applied_version: applied.then(|| out.policy_hash.clone()),
        version: out.version,
        status: out.status,
        diff: out.diff,
        text_diff: out.text_diff,
    })
    .into_response())
}

async fn revisions(
    State(state): State<AppState>,
    Path((gw, name)): Path<(String, String)>,
    q: QueryPairs,
) -> ApiResult<(HeaderMap, Json<Vec<PolicyRevision>>)> {
    let (gw, sb) = target(&gw, &name)?;
    let limit = q.u32("limit", 50, 200)?.max(1);
    let offset = q.u32("offset", 0, u32::MAX)?;
    let (items, more) = state.policies.revisions(&gw, &sb, limit, offset).await?;
    let mut headers = HeaderMap::new();
    // ShoreGuard clients expect a bare list; the page state rides in a header.
    headers.insert("x-has-more", HeaderValue::from_static(if more { "true" } else { "false" }));
    Ok((headers, Json(items)))
}

#[derive(Serialize)]
struct DiffResponse {
    version_a: u32,
    version_b: u32,
    diff: PolicyDiff,
    text_diff: String,
    identical: bool,
}

async fn diff(
    State(state): State<AppState>,
    Path((gw, name)): Path<(String, String)>,
    q: QueryPairs,
) -> ApiResult<Json<DiffResponse>> {
    let (gw, sb) = target(&gw, &name)?;
    let version = |key: &str| -> ApiResult<u32> {
        match q.u32(key, 0, u32::MAX)? {
            0 => Err(ApiError::bad_request(key, format!("{key} is required (a version number from 1)"))),
            v => Ok(v),
        }
    };
    let (a, b) = (version("version_a")?, version("version_b")?);
    let (d, text_diff) = state.policies.diff_revisions(&gw, &sb, a, b).await?;
    Ok(Json(DiffResponse {
        version_a: a,
        version_b: b,
        identical: d.is_empty() && text_diff.is_empty(),
        diff: d,
        text_diff,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    key: String,
    rule: NetworkRule,
}

async fn add_rule(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
    Json(body): Json<RuleBody>,
) -> ApiResult<Json<WriteResponse>> {
    let (gw, sb) = target(&gw, &name)?;
    let out = state.policies.add_network_rule(&actor, &gw, &sb, &body.key, body.rule).await?;
    written(&state, &gw, &sb, out).await
}

async fn delete_rule(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name, key)): Path<(String, String, String)>,
) -> ApiResult<Json<WriteResponse>> {
    let (gw, sb) = target(&gw, &name)?;
    let out = state.policies.delete_network_rule(&actor, &gw, &sb, &key).await?;
    written(&state, &gw, &sb, out).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathBody {
    path: String,
    access: PathAccess,
}

async fn add_path(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
    Json(body): Json<PathBody>,
) -> ApiResult<Json<WriteResponse>> {
    let (gw, sb) = target(&gw, &name)?;
    let out = state.policies.add_filesystem_path(&actor, &gw, &sb, &body.path, body.access).await?;
    written(&state, &gw, &sb, out).await
}

async fn delete_path(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
    q: QueryPairs,
) -> ApiResult<Json<WriteResponse>> {
    let (gw, sb) = target(&gw, &name)?;
    let path =
        q.get("path").filter(|p| !p.is_empty()).ok_or_else(|| ApiError::bad_request("path", "?path= is required"))?;
    let out = state.policies.delete_filesystem_path(&actor, &gw, &sb, path).await?;
    written(&state, &gw, &sb, out).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessBody {
    run_as_user: Option<String>,
    run_as_group: Option<String>,
    landlock_compatibility: Option<String>,
}

async fn put_process(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
    Json(body): Json<ProcessBody>,
) -> ApiResult<Json<WriteResponse>> {
    let (gw, sb) = target(&gw, &name)?;
    let out = state
        .policies
        .update_process(&actor, &gw, &sb, body.run_as_user, body.run_as_group, body.landlock_compatibility)
        .await?;
    written(&state, &gw, &sb, out).await
}

async fn apply_preset(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name, preset)): Path<(String, String, String)>,
    q: QueryPairs,
) -> ApiResult<Json<WriteResponse>> {
    let (gw, sb) = target(&gw, &name)?;
    let out = state.policies.apply_preset(&actor, &gw, &sb, &preset, q.bool("overwrite")?).await?;
    written(&state, &gw, &sb, out).await
}

async fn preview_preset(
    State(state): State<AppState>,
    Path((gw, name, preset)): Path<(String, String, String)>,
) -> ApiResult<Json<PresetPreview>> {
    let (gw, sb) = target(&gw, &name)?;
    Ok(Json(state.policies.preview_preset(&gw, &sb, &preset).await?))
}

#[derive(Serialize)]
struct PresetSummary {
    name: String,
    description: String,
    rules: Vec<String>,
}

async fn list_presets(State(state): State<AppState>) -> Json<Vec<PresetSummary>> {
    Json(
        state
            .policies
            .presets()
            .iter()
            .map(|p| PresetSummary {
                name: p.name.clone(),
                description: p.description.clone(),
                rules: p.policy.network_policies.keys().cloned().collect(),
            })
            .collect(),
    )
}

async fn get_preset(State(state): State<AppState>, Path(preset): Path<String>) -> ApiResult<Json<Preset>> {
    Ok(Json(state.policies.preset(&preset)?.clone()))
}
