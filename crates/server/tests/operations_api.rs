//! `/api/operations…` over real HTTP: list with filters and counts, long
//! polling that wakes on change, the SSE progress stream, cancel.

mod common;

use std::time::{Duration, Instant};

use breakwater_services::{Actor, NewOperation};
use common::spawn_app;

fn new_op(name: &str) -> NewOperation<'_> {
    NewOperation {
        gateway: Some("gw"),
        resource_type: "sandbox",
        resource_name: name,
        action: "create",
        idempotency_key: None,
    }
}

#[tokio::test]
async fn list_get_wait_stream_and_cancel() {
    let app = spawn_app(breakwater_store::testing::sqlite().await, Duration::from_secs(60)).await;
    let ops = app.operations.clone();
    let actor = Actor::local_admin(None);
    let op = ops.create(&actor, new_op("agent-1")).await.unwrap();

    let (status, list) = app.get("/api/operations?status=pending&resource_type=sandbox").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 1);
    assert_eq!(list["operations"][0]["id"], op.id.as_str(), "ShoreGuard's clients read `operations`: {list}");
    assert_eq!(list["counts"]["pending"], 1);
    assert_eq!(list["has_more"], false);
    assert_eq!(app.get("/api/operations?status=sleeping").await.0, 400);
    assert_eq!(app.get("/api/operations/nope").await.0, 404);

    // A long poll answers when the operation changes, not when the wait ends.
    let id = op.id.clone();
    let worker = ops.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        worker.start(&id).await.unwrap();
    });
    let started = Instant::now();
    let (status, got) = app.get(&format!("/api/operations/{}?wait=10", op.id)).await;
    assert_eq!(status, 200);
    assert_eq!(got["status"], "running");
    assert!(started.elapsed() < Duration::from_secs(5), "woke on the change: {:?}", started.elapsed());

    // The SSE stream: the state now, each change, then the end.
    let id = op.id.clone();
    let worker = ops.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        worker.progress(&id, 50, "half way").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        worker.complete(&id, serde_json::json!({"ok": true})).await.unwrap();
    });
    let body = app
        .http
        .get(format!("{}/api/operations/{}/stream", app.base, op.id))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<serde_json::Value> =
        body.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(events.len() >= 2, "{body}");
    assert!(events.iter().any(|e| e["progress"] == 50 && e["message"] == "half way"), "{body}");
    assert_eq!(events.last().unwrap()["status"], "succeeded");

    // Cancel: an active one ends cancelled (no task here), a finished one is 409.
    let other = ops.create(&actor, new_op("agent-2")).await.unwrap();
    let (status, cancelled) = app.post(&format!("/api/operations/{}/cancel", other.id), &serde_json::json!({})).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!((cancelled["status"].as_str(), cancelled["error_code"].as_str()), (Some("failed"), Some("cancelled")));
    assert_eq!(app.post(&format!("/api/operations/{}/cancel", other.id), &serde_json::json!({})).await.0, 409);
    let (_, audit) = app.get("/api/audit?action=operation.cancel").await;
    assert_eq!(audit["total"], 1);
}

#[tokio::test]
async fn a_shutdown_ends_open_operation_streams_instead_of_waiting_for_them() {
    let app = spawn_app(breakwater_store::testing::sqlite().await, Duration::from_secs(60)).await;
    let op = app.operations.create(&Actor::local_admin(None), new_op("never-ends")).await.unwrap();
    let mut response = app.http.get(format!("{}/api/operations/{}/stream", app.base, op.id)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("never-ends"), "the state comes first");
    app.stop.cancel();
    // The body ends soon after, though the operation is still pending.
    tokio::time::timeout(Duration::from_secs(5), async { while response.chunk().await.unwrap().is_some() {} })
        .await
        .expect("the stream ended with the shutdown");
}
