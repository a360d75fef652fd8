//! `WS /ws/{gw}/{sandbox}`: a sandbox's live view as `{type, data}` text
//! frames (`status`, `log`, `event`, `draft_policy_update`, `error`,
//! `heartbeat`). What goes into the feed, and when a reader is too slow, is
//! `SandboxService::live`'s business; this is the transport.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use breakwater_services::sandboxes::{LiveEnd, LiveFeed};

use crate::access::{Routes, VIEWER};
use crate::gateway_routes::gateway_name;
use crate::{ApiError, ApiResult, AppState};

/// A client whose socket takes longer than this to accept one frame is gone
/// or cannot keep up; either way the connection ends.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Close codes (RFC 6455): policy violation for a reader that fell behind,
/// internal error for a feed that ended on our side.
const CLOSE_TOO_SLOW: u16 = 1008;
const CLOSE_ENDED: u16 = 1011;
/// Normal closure: the sandbox is gone, there is nothing more to watch.
const CLOSE_NORMAL: u16 = 1000;
/// Going away: the server is stopping.
const CLOSE_GOING_AWAY: u16 = 1001;

pub(crate) fn routes() -> Routes {
    Routes::new().get("/ws/{gw}/{sandbox}", VIEWER, live)
}

async fn live(
    State(state): State<AppState>,
    Path((gw, name)): Path<(String, String)>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let gw = gateway_name(&gw)?;
    let sb =
        breakwater_domain::SandboxName::parse(&name).map_err(|e| ApiError::bad_request("sandbox", e.to_string()))?;
    // Opened before the upgrade, so an unknown sandbox is a plain 404.
    let feed = state.sandboxes.live(&gw, &sb).await?;
    // Clients only send control frames; anything big is not a client of ours.
    let closing = state.closing.clone();
    Ok(upgrade.max_message_size(64 * 1024).on_upgrade(move |socket| relay(socket, feed, closing)))
}

async fn relay(mut socket: WebSocket, mut feed: LiveFeed, closing: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = closing.cancelled() => {
                let close = Message::Close(Some(CloseFrame { code: CLOSE_GOING_AWAY, reason: "the server is stopping; reconnect".into() }));
                let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(close)).await;
                return;
            }
            frame = feed.next() => {
                let Some(frame) = frame else {
                    let (code, reason) = match feed.end() {
                        LiveEnd::Overflowed => (CLOSE_TOO_SLOW, "too slow: the live queue overflowed; reconnect"),
                        LiveEnd::SandboxGone => (CLOSE_NORMAL, "the sandbox was deleted"),
                        LiveEnd::Other => (CLOSE_ENDED, "the live feed ended"),
                    };
                    let close = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
                    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(close)).await;
                    return;
                };
                let Ok(text) = serde_json::to_string(&frame) else { continue };
                match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => return,
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_) | Ok(Message::Close(_))) => return,
                // Pings are answered by the WebSocket layer; text is ignored.
                Some(Ok(_)) => {}
            },
        }
    }
}
