//! `/api/gateways/{gw}/sandboxes…`: create (an operation), list, get,
//! metadata, delete, stop/start, SSH sessions, exec, logs.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use breakwater_domain::operation::Operation;
use breakwater_domain::registry::GatewayMetadataPatch;
use breakwater_domain::sandbox::{LogLine, Sandbox, SandboxLogs};
use breakwater_services::sandboxes::{Command, CreateSandbox, ExecInput, ExecStarted, LogFilter};
use serde::{Deserialize, Serialize};

use crate::access::{OPERATOR, Routes, VIEWER};
use crate::extract::{Caller, IdempotentJson, QueryPairs};
use crate::gateway_routes::gateway_name;
use crate::{ApiError, ApiResult, AppState};

pub(crate) fn routes() -> Routes {
    Routes::new()
        .get("/api/gateways/{gw}/sandboxes", VIEWER, list)
        .post("/api/gateways/{gw}/sandboxes", OPERATOR, create)
        .get("/api/gateways/{gw}/sandboxes/{name}", VIEWER, get_one)
        .patch("/api/gateways/{gw}/sandboxes/{name}", OPERATOR, patch)
        .delete("/api/gateways/{gw}/sandboxes/{name}", OPERATOR, delete)
        .get("/api/gateways/{gw}/sandboxes/{name}/config", VIEWER, config)
        .post("/api/gateways/{gw}/sandboxes/{name}/stop", OPERATOR, stop)
        .post("/api/gateways/{gw}/sandboxes/{name}/start", OPERATOR, start)
        .post("/api/gateways/{gw}/sandboxes/{name}/ssh", OPERATOR, ssh)
        .delete("/api/gateways/{gw}/sandboxes/{name}/ssh", OPERATOR, revoke_ssh)
        .post("/api/gateways/{gw}/sandboxes/{name}/exec", OPERATOR, exec)
        .get("/api/gateways/{gw}/sandboxes/{name}/logs", VIEWER, logs)
        .get("/api/sandbox-templates", VIEWER, templates)
        .get("/api/sandbox-templates/{name}", VIEWER, template)
}

#[derive(Serialize)]
struct TemplateSummary {
    name: &'static str,
    category: &'static str,
    description: &'static str,
    image: Option<&'static str>,
    gpu: bool,
    presets: &'static [String],
}

async fn templates(State(state): State<AppState>) -> Json<Vec<TemplateSummary>> {
    Json(
        state
            .sandboxes
            .templates()
            .iter()
            .map(|t| TemplateSummary {
                name: &t.name,
                category: &t.category,
                description: &t.description,
                image: t.image.as_deref(),
                gpu: t.gpu,
                presets: &t.presets,
            })
            .collect(),
    )
}

async fn template(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<&'static breakwater_domain::templates::SandboxTemplate>> {
    Ok(Json(state.sandboxes.template(&name)?))
}

fn sandbox(raw: &str) -> ApiResult<breakwater_domain::SandboxName> {
    breakwater_domain::SandboxName::parse(raw).map_err(|e| ApiError::bad_request("name", e.to_string()))
}

/// Sandboxes as comma-separated JSON objects.
fn encode_items(items: &[Sandbox]) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(items.len() * 640);
    for (i, sandbox) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, sandbox)?;
    }
    Ok(out)
}

async fn list(
    State(state): State<AppState>,
    Path(gw): Path<String>,
    q: QueryPairs,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    use std::io::Write as _;
    let gw = gateway_name(&gw)?;
    let selector = q.label_selector()?;
    let limit = q.u32("limit", 100, 1000)?.max(1);
    let offset = q.u32("offset", 0, u32::MAX)?;
    let mut pages = state.sandboxes.list_pages(&gw, &selector, limit, offset).await?;
    // Each chunk is encoded while the service fetches the gateway's next
    // page; the body is sized up front (a page of 1,000 is half a megabyte,
    // which a growing buffer would copy a dozen times). The shape is
    // `{items, total, limit, offset, has_more}`.
    let encode_failed = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "could not encode the sandbox list");
        ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "could not encode the list")
    };
    let mut body = Vec::with_capacity(256 + limit.min(1000) as usize * 640);
    body.extend_from_slice(b"{\"items\":[");
    let mut shown = 0usize;
    while let Some(chunk) = pages.next().await {
        let mut chunk = chunk?;
        // A big chunk is encoded in two halves at once: the last one cannot
        // overlap a fetch, and the other core is idle by then.
        let tail = (chunk.len() >= 200).then(|| chunk.split_off(chunk.len() / 2));
        let tail_len = tail.as_ref().map_or(0, Vec::len);
        let tail = tail.map(|t| tokio::task::spawn_blocking(move || encode_items(&t)));
        for sandbox in &chunk {
            if shown > 0 {
                body.push(b',');
            }
            serde_json::to_writer(&mut body, sandbox).map_err(|e| encode_failed(&e))?;
            shown += 1;
        }
        if let Some(tail) = tail {
            let bytes = tail.await.map_err(|e| encode_failed(&e))?.map_err(|e| encode_failed(&e))?;
            body.push(b',');
            body.extend_from_slice(&bytes);
            shown += tail_len;
        }
    }
    let total = pages.total();
    let has_more = offset as usize + shown < total;
    write!(body, "],\"total\":{total},\"limit\":{limit},\"offset\":{offset},\"has_more\":{has_more}}}")
        .map_err(|e| encode_failed(&e))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    image: Option<String>,
    providers: Option<Vec<String>>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    policy: Option<breakwater_domain::policy::Policy>,
    #[serde(default)]
    presets: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    gpu: Option<bool>,
    description: Option<String>,
    log_level: Option<String>,
    /// A sandbox template whose defaults fill what the body leaves out.
    template: Option<String>,
    // Accepted for ShoreGuard clients; Breakwater runs no create hooks.
    #[serde(default)]
    #[allow(dead_code)]
    skip_hooks: bool,
}

/// 202 with the operation to follow (`Location`, `Retry-After`).
async fn create(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(gw): Path<String>,
    IdempotentJson { body, key }: IdempotentJson<CreateBody>,
) -> ApiResult<axum::response::Response> {
    let input = CreateSandbox {
        name: body.name,
        image: body.image,
        providers: body.providers,
        environment: body.environment,
        policy: body.policy,
        presets: body.presets,
        labels: body.labels,
        description: body.description,
        gpu: body.gpu,
        log_level: body.log_level,
        template: body.template,
    };
    let op = state.sandboxes.create(&actor, &gateway_name(&gw)?, input, key.as_ref()).await?;
    Ok(accepted(&op))
}

/// 202 with the operation to follow (`Location`, `Retry-After`).
fn accepted(op: &Operation) -> axum::response::Response {
    use axum::response::IntoResponse;
    let location = format!("/api/operations/{}", op.id);
    let body = serde_json::json!({
        "operation_id": op.id,
        "status": op.status.as_str(),
        "resource_type": op.resource_type,
        "resource_name": op.resource_name,
    });
    (
        axum::http::StatusCode::ACCEPTED,
        [
            (axum::http::header::LOCATION, HeaderValue::from_str(&location).unwrap_or(HeaderValue::from_static("/"))),
            (axum::http::header::RETRY_AFTER, HeaderValue::from_static("2")),
        ],
        Json(body),
    )
        .into_response()
}

async fn get_one(State(state): State<AppState>, Path((gw, name)): Path<(String, String)>) -> ApiResult<Json<Sandbox>> {
    Ok(Json(state.sandboxes.get(&gateway_name(&gw)?, &sandbox(&name)?).await?))
}

async fn config(
    State(state): State<AppState>,
    Path((gw, name)): Path<(String, String)>,
) -> ApiResult<Json<breakwater_domain::policy::SandboxConfig>> {
    Ok(Json(state.sandboxes.config(&gateway_name(&gw)?, &sandbox(&name)?).await?))
}

/// Absent keeps, `null` clears.
async fn patch(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
    Json(patch): Json<GatewayMetadataPatch>,
) -> ApiResult<Json<Sandbox>> {
    Ok(Json(state.sandboxes.update_metadata(&actor, &gateway_name(&gw)?, &sandbox(&name)?, &patch).await?))
}

async fn delete(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let out = state.sandboxes.delete(&actor, &gateway_name(&gw)?, &sandbox(&name)?).await?;
    Ok(Json(serde_json::json!({"deleted": true, "name": name, "id": out.sandbox_id, "outcome": out.outcome})))
}

async fn stop(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
) -> ApiResult<Json<Sandbox>> {
    Ok(Json(state.sandboxes.stop(&actor, &gateway_name(&gw)?, &sandbox(&name)?).await?))
}

async fn start(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
) -> ApiResult<Json<Sandbox>> {
    Ok(Json(state.sandboxes.start(&actor, &gateway_name(&gw)?, &sandbox(&name)?).await?))
}

/// The session once, with its token: 201.
#[derive(Serialize)]
struct SshResponse {
    sandbox_id: String,
    token: String,
    gateway_host: String,
    gateway_port: u16,
    gateway_scheme: String,
    host_key_fingerprint: String,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn ssh(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
) -> ApiResult<(axum::http::StatusCode, Json<SshResponse>)> {
    let s = state.sandboxes.ssh_session(&actor, &gateway_name(&gw)?, &sandbox(&name)?).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(SshResponse {
            sandbox_id: s.sandbox_id,
            token: s.token.expose().to_owned(),
            gateway_host: s.gateway_host,
            gateway_port: s.gateway_port,
            gateway_scheme: s.gateway_scheme,
            host_key_fingerprint: s.host_key_fingerprint,
            expires_at: s.expires_at,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    token: String,
}

async fn revoke_ssh(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
    Json(body): Json<RevokeBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let token = breakwater_domain::Secret::new(body.token);
    let out = state.sandboxes.revoke_ssh_session(&actor, &gateway_name(&gw)?, &sandbox(&name)?, &token).await?;
    Ok(Json(serde_json::json!({"revoked": true, "outcome": out})))
}

/// `command` is a list of arguments or one string split like a shell would.
#[derive(Deserialize)]
#[serde(untagged)]
enum CommandBody {
    Argv(Vec<String>),
    Line(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    command: CommandBody,
    workdir: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout_seconds: Option<u64>,
    /// Accepted for ShoreGuard clients; output is always collected.
    #[serde(default)]
    #[allow(dead_code)]
    tty: bool,
}

/// 200 with the output when the command may run at most
/// `EXEC_SYNC_MAX`; else, or with `Prefer: respond-async`, 202 with an
/// operation whose result is the output.
async fn exec(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((gw, name)): Path<(String, String)>,
    headers: HeaderMap,
    IdempotentJson { body, key }: IdempotentJson<ExecBody>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let input = ExecInput {
        command: match body.command {
            CommandBody::Argv(v) => Command::Argv(v),
            CommandBody::Line(s) => Command::Line(s),
        },
        workdir: body.workdir,
        env: body.env,
        timeout_seconds: body.timeout_seconds,
    };
    let prefer_async = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("respond-async")));
    let started = state
        .sandboxes
        .exec_or_start(&actor, &gateway_name(&gw)?, &sandbox(&name)?, input, prefer_async, key.as_ref())
        .await?;
    Ok(match started {
        ExecStarted::Done(out) => Json(out).into_response(),
        ExecStarted::Operation(op) => accepted(&op),
    })
}

/// A bare list, as ShoreGuard's clients read it; the gateway's buffer size
/// rides in `X-Buffer-Total`.
async fn logs(
    State(state): State<AppState>,
    Path((gw, name)): Path<(String, String)>,
    q: QueryPairs,
) -> ApiResult<(HeaderMap, Json<Vec<LogLine>>)> {
    let since = match q.get("since_ms").filter(|v| !v.is_empty()) {
        Some(raw) => {
            let ms: i64 = raw.parse().map_err(|_| ApiError::bad_request("since_ms", "milliseconds since the epoch"))?;
            Some(
                chrono::DateTime::from_timestamp_millis(ms)
                    .ok_or_else(|| ApiError::bad_request("since_ms", "out of range"))?,
            )
        }
        None => q.time("since")?,
    };
    let filter = LogFilter {
        lines: q.get("lines").map(|_| q.u32("lines", 0, 10_000)).transpose()?,
        since,
        sources: q.all("source").chain(q.all("sources")).flat_map(|s| s.split(',')).map(str::to_owned).collect(),
        min_level: q.get("min_level").filter(|l| !l.is_empty()).map(str::to_owned),
    };
    let SandboxLogs { lines, buffer_total } =
        state.sandboxes.logs(&gateway_name(&gw)?, &sandbox(&name)?, filter).await?;
    let mut headers = HeaderMap::new();
    headers.insert("x-buffer-total", HeaderValue::from(buffer_total));
    Ok((headers, Json(lines)))
}
