//! `WS /ws/{gw}/{sandbox}` over a real WebSocket: the gateway's status and
//! logs, Breakwater's own news, heartbeats, S12 (a log line that tries to
//! forge a second event arrives as one, without control characters), and
//! the refusals before any upgrade.

mod common;

use std::time::Duration;

use common::{P, TestApp, setup};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, path: &str) -> Socket {
    let url = format!("{}{path}", app.base.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url).await.expect("upgrade").0
}

/// Frames until `want` matches one (returning everything read), or panics.
async fn until(ws: &mut Socket, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(text) = msg.unwrap() {
            let frame: Value = serde_json::from_str(&text).unwrap();
            let hit = want(&frame);
            seen.push(frame);
            if hit {
                return seen;
            }
        }
    }
    panic!("no matching frame; saw {seen:?}");
}

#[tokio::test]
async fn status_logs_news_and_heartbeats_arrive_as_typed_frames() {
    let (app, s) = setup().await;
    let mut ws = connect(&app, "/ws/gw/agent-1").await;
    let first = until(&mut ws, |f| f["type"] == "status").await;
    let status = first.last().unwrap();
    assert_eq!((status["data"]["name"].as_str(), status["data"]["phase"].as_str()), (Some("agent-1"), Some("ready")));

    // S12: one log line carrying CR LF and a forged SSE field.
    s.inject_log("default", "agent-1", "info", "hello\r\ndata: injected\u{7}").unwrap();
    let frames =
        until(&mut ws, |f| f["type"] == "log" && f["data"]["message"].as_str().unwrap().contains("injected")).await;
    let line = frames.last().unwrap()["data"]["message"].as_str().unwrap().to_owned();
    assert!(!line.chars().any(char::is_control), "control characters stripped: {line:?}");
    assert!(line.starts_with("hello") && line.contains("data: injected"), "{line:?}");
    // Nothing else claims to be the injected line.
    let more = until(&mut ws, |f| f["type"] == "heartbeat").await;
    assert!(!more.iter().any(|f| f.to_string().contains("injected")), "one event, not two: {more:?}");

    // Breakwater's own news about this sandbox joins the feed.
    let rule = json!({"key": "extra", "rule": {"endpoints": [{"host": "example.org", "port": 443}]}});
    assert_eq!(app.post(&format!("{P}/network-rules"), &rule).await.0, 200);
    let news = until(&mut ws, |f| f["type"] == "event" && f["data"]["source"] == "breakwater").await.pop().unwrap();
    assert_eq!(news["data"]["event"]["type"], "policy_updated", "{news}");
    drop(ws);
    s.shutdown().await;
}

#[tokio::test]
async fn a_delete_through_breakwater_is_announced() {
    let (app, s) = setup().await;
    let mut ws = connect(&app, "/ws/gw/agent-1").await;
    until(&mut ws, |f| f["type"] == "status").await;
    assert_eq!(app.delete("/api/gateways/gw/sandboxes/agent-1").await.0, 200);
    let gone = until(&mut ws, |f| f["data"]["event"]["type"] == "sandbox_deleted").await;
    assert_eq!(gone.last().unwrap()["data"]["event"]["sandbox"], "agent-1");
    // Then the socket closes normally, saying why, instead of retrying.
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(msg) = ws.next().await {
            if let Ok(Message::Close(frame)) = msg {
                return frame;
            }
        }
        None
    })
    .await
    .expect("closed in time")
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 1000);
    assert!(close.reason.contains("deleted"), "{close:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn status_frames_carry_breakwaters_labels_and_description_like_get() {
    let (app, s) = setup().await;
    let patch = json!({"description": "kept here", "labels": {"team": "ml"}});
    assert_eq!(app.patch("/api/gateways/gw/sandboxes/agent-1", &patch).await.0, 200);
    let mut ws = connect(&app, "/ws/gw/agent-1").await;
    let status = until(&mut ws, |f| f["type"] == "status").await.pop().unwrap();
    assert_eq!(status["data"]["description"], "kept here", "{status}");
    assert_eq!(status["data"]["labels"], json!({"team": "ml"}), "{status}");
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_sandboxes_and_foreign_origins_are_refused_before_the_upgrade() {
    let (app, s) = setup().await;
    let url = |p: &str| format!("{}{p}", app.base.replace("http://", "ws://"));
    let err = tokio_tungstenite::connect_async(url("/ws/gw/nope")).await.unwrap_err();
    assert!(matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 404), "{err:?}");
    let err = tokio_tungstenite::connect_async(url("/ws/missing/agent-1")).await.unwrap_err();
    assert!(matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 404), "{err:?}");
    // Cross-site WebSocket hijacking: a page elsewhere may not open the feed.
    let mut req = url("/ws/gw/agent-1").into_client_request().unwrap();
    req.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 403), "{err:?}");
    s.shutdown().await;
}
