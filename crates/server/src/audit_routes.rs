//! `/api/audit`: list, export (CSV or JSON, streamed) and verify.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use breakwater_domain::registry::{AuditEntry, AuditFilter};
use breakwater_services::VerifyReport;
use futures::StreamExt;
use serde::Serialize;

use crate::access::{ADMIN, Routes};
use crate::extract::{Caller, QueryPairs};
use crate::{ApiError, ApiResult, AppState};

pub(crate) fn routes() -> Routes {
    Routes::new()
        .get("/api/audit", ADMIN, list)
        .get("/api/audit/verify", ADMIN, verify)
        .get("/api/audit/export", ADMIN, export)
        .post("/api/audit/cleanup", ADMIN, cleanup)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanupBody {
    older_than_days: u32,
}

/// Retention by hand (the server can also run it daily): deletes entries
/// older than N days and records that it did.
async fn cleanup(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Json(body): Json<CleanupBody>,
) -> ApiResult<Json<serde_json::Value>> {
    if body.older_than_days == 0 {
        return Err(ApiError::bad_request("older_than_days", "must be at least 1"));
    }
    let deleted = state.audit.cleanup(&actor, body.older_than_days).await?;
    Ok(Json(serde_json::json!({"deleted": deleted, "older_than_days": body.older_than_days})))
}

fn filter(q: &QueryPairs) -> ApiResult<AuditFilter> {
    let text = |k: &str| q.get(k).filter(|v| !v.is_empty()).map(str::to_owned);
    Ok(AuditFilter {
        actor: text("actor"),
        action: text("action"),
        resource_type: text("resource_type"),
        gateway: text("gateway"),
        since: q.time("since")?,
        until: q.time("until")?,
    })
}

#[derive(Serialize)]
struct AuditList {
    entries: Vec<AuditEntry>,
    total: u64,
    limit: u32,
    offset: u32,
}

async fn list(State(state): State<AppState>, q: QueryPairs) -> ApiResult<Json<AuditList>> {
    let f = filter(&q)?;
    let limit = q.u32("limit", 100, 1000)?.max(1);
    let offset = q.u32("offset", 0, u32::MAX)?;
    let (entries, total) = state.audit.list(&f, limit, offset).await?;
    Ok(Json(AuditList { entries, total, limit, offset }))
}

async fn verify(State(state): State<AppState>) -> ApiResult<Json<VerifyReport>> {
    Ok(Json(state.audit.verify().await?))
}

fn csv_field(s: &str) -> String {
    // Quote everything; neutralise spreadsheet formulas.
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.to_owned() };
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn csv_row(e: &AuditEntry) -> String {
    let cols = [
        e.seq.to_string(),
        e.at.to_rfc3339(),
        e.actor.clone(),
        e.role.clone(),
        e.client_ip.clone().unwrap_or_default(),
        e.action.clone(),
        e.resource_type.clone(),
        e.resource_id.clone(),
        e.gateway.clone().unwrap_or_default(),
        e.detail.to_string(),
        e.hash.clone(),
    ];
    let mut line = cols.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",");
    line.push('\n');
    line
}

async fn export(State(state): State<AppState>, q: QueryPairs) -> ApiResult<Response> {
    let f = filter(&q)?;
    let format = q.get("format").unwrap_or("json");
    let entries = state.audit.export(f);
    match format {
        "csv" => {
            let header = futures::stream::once(async {
                Ok::<_, std::io::Error>(
                    "seq,at,actor,role,client_ip,action,resource_type,resource_id,gateway,detail,hash\n".to_owned(),
                )
            });
            let rows = entries.map(|e| e.map(|e| csv_row(&e)).map_err(|e| std::io::Error::other(e.to_string())));
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (header::CONTENT_DISPOSITION, "attachment; filename=\"audit.csv\""),
                ],
                Body::from_stream(header.chain(rows)),
            )
                .into_response())
        }
        "json" => {
            // A JSON array, streamed element by element.
            let mut first = true;
            let items = entries.map(move |e| {
                let sep = if first { "" } else { "," };
                first = false;
                e.map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|e| serde_json::to_string(&e).map(|s| format!("{sep}{s}")).map_err(std::io::Error::other))
            });
            let body = futures::stream::once(async { Ok::<_, std::io::Error>("[".to_owned()) })
                .chain(items)
                .chain(futures::stream::once(async { Ok("]".to_owned()) }));
            Ok((
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CONTENT_DISPOSITION, "attachment; filename=\"audit.json\""),
                ],
                Body::from_stream(body),
            )
                .into_response())
        }
        other => Err(ApiError::bad_request("format", format!("{other:?} is not csv or json"))),
    }
}
