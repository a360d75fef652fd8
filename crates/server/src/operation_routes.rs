//! `/api/operations…`: list, get (with `?wait=N` long polling), an SSE
//! stream of progress, and cancel.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use breakwater_domain::operation::{Operation, OperationStatus};
use futures::{Stream, StreamExt as _};
use serde::Serialize;

use crate::access::{OPERATOR, Routes, VIEWER};
use crate::extract::QueryPairs;
use crate::{ApiError, ApiResult, AppState};

/// Longest `?wait=` honoured, in seconds.
const MAX_WAIT: u32 = 60;

pub(crate) fn routes() -> Routes {
    Routes::new()
        .get("/api/operations", VIEWER, list)
        .get("/api/operations/{id}", VIEWER, get_one)
        .get("/api/operations/{id}/stream", VIEWER, stream)
        .post("/api/operations/{id}/cancel", OPERATOR, cancel)
}

#[derive(Serialize)]
struct OperationList {
    /// `operations`, not `items`: the name ShoreGuard's clients read.
    operations: Vec<Operation>,
    total: u64,
    limit: u32,
    offset: u32,
    has_more: bool,
    counts: std::collections::BTreeMap<&'static str, u64>,
}

async fn list(State(state): State<AppState>, q: QueryPairs) -> ApiResult<Json<OperationList>> {
    let status = match q.get("status").filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => Some(OperationStatus::parse(raw).ok_or_else(|| {
            ApiError::bad_request("status", "one of pending, running, cancelling, succeeded, failed")
        })?),
    };
    let resource_type = q.get("resource_type").filter(|s| !s.is_empty());
    let limit = q.u32("limit", 50, 200)?.max(1);
    let offset = q.u32("offset", 0, u32::MAX)?;
    let (operations, total) = state.operations.list(status, resource_type, limit, offset).await?;
    let counts = state.operations.status_counts().await?.into_iter().map(|(s, n)| (s.as_str(), n)).collect();
    let has_more = u64::from(offset) + u64::try_from(operations.len()).unwrap_or(u64::MAX) < total;
    Ok(Json(OperationList { operations, total, limit, offset, has_more, counts }))
}

/// `?wait=N` (seconds, at most 60): answers as soon as the operation changes
/// or ends, or after N seconds with it as it is.
async fn get_one(State(state): State<AppState>, Path(id): Path<String>, q: QueryPairs) -> ApiResult<Json<Operation>> {
    let op = state.operations.get(&id).await?;
    let wait = q.u32("wait", 0, MAX_WAIT)?;
    if wait == 0 || !op.status.is_active() {
        return Ok(Json(op));
    }
    Ok(Json(state.operations.wait_for_change(&id, Some(&op), Duration::from_secs(u64::from(wait))).await?))
}

/// Server-sent events: the operation now, then each change, until it ends.
async fn stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let first = state.operations.get(&id).await?;
    let ops = state.operations.clone();
    // The state now, at once; then each change; the stream ends after the
    // terminal state.
    let events = futures::stream::unfold((first, true), move |(last, first_time)| {
        let ops = ops.clone();
        let id = id.clone();
        async move {
            let op = if first_time {
                last
            } else if last.status.is_active() {
                ops.wait_for_change(&id, Some(&last), Duration::from_secs(30)).await.ok()?
            } else {
                return None;
            };
            let event = Event::default().event("operation").json_data(&op).unwrap_or_default();
            Some((Ok(event), (op, false)))
        }
    });
    // Ends at shutdown, so a watching client does not hold the server open.
    Ok(Sse::new(events.take_until(state.closing.clone().cancelled_owned())).keep_alive(KeepAlive::default()))
}

async fn cancel(
    State(state): State<AppState>,
    crate::extract::Caller(actor): crate::extract::Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Operation>> {
    Ok(Json(state.operations.cancel_by(&actor, &id).await?))
}
