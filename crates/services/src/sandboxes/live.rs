//! A sandbox's live view: the gateway's watch stream (status, logs,
//! platform events, draft-policy notices) merged with Breakwater's own news
//! about the sandbox (policy, approvals, operations), for WebSocket clients.
//!
//! Each reader gets a bounded queue. A reader that falls so far behind that
//! its queue fills is dropped rather than buffered without bound: one slow
//! browser tab must not grow the server's memory. The watch stream is
//! re-opened after a pause when the gateway ends or breaks it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use breakwater_domain::registry::GatewayName;
use breakwater_domain::sandbox::{DraftPolicyUpdate, LogLine, Sandbox, WatchEvent, WatchOptions};
use breakwater_domain::{SandboxName, WorkspaceName, sanitize};
use breakwater_gateway::Gateway;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;

use super::SandboxService;
use crate::Result;
use crate::events::Event;

/// One message to a live client: `{"type": ..., "data": ...}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum LiveFrame {
    Status(Box<Sandbox>),
    Log(LogLine),
    /// A platform event from the gateway (`source` is the gateway's), or
    /// news from Breakwater itself (`source: "breakwater"`, `event` holds it).
    Event(serde_json::Value),
    DraftPolicyUpdate(DraftPolicyUpdate),
    Error {
        message: String,
    },
    Heartbeat {
        at: DateTime<Utc>,
    },
}

/// Queue size, heartbeat and reconnect pause for live views.
#[derive(Clone, Copy, Debug)]
pub struct LiveSettings {
    /// Frames a reader may fall behind before it is dropped.
    pub queue: usize,
    pub heartbeat: Duration,
    /// Pause before re-opening a watch stream the gateway ended or broke.
    pub retry: Duration,
    /// Log lines replayed when a view opens.
    pub log_tail: u32,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self { queue: 256, heartbeat: Duration::from_secs(15), retry: Duration::from_secs(2), log_tail: 50 }
    }
}

/// Why a live feed ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveEnd {
    /// The reader fell behind and its queue filled.
    Overflowed,
    /// The sandbox was deleted (or is gone from the gateway).
    SandboxGone,
    /// Anything else (the server is stopping, the reader left).
    Other,
}

const END_OTHER: u8 = 0;
const END_OVERFLOWED: u8 = 1;
const END_GONE: u8 = 2;

/// A live view being fed. Dropping it stops the feeding task.
pub struct LiveFeed {
    rx: mpsc::Receiver<LiveFrame>,
    end: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl LiveFeed {
    /// The next frame; `None` once the feed ended (see [`LiveFeed::end`]).
    pub async fn next(&mut self) -> Option<LiveFrame> {
        self.rx.recv().await
    }

    /// Why the feed ended (meaningful once `next` gave `None`).
    #[must_use]
    pub fn end(&self) -> LiveEnd {
        match self.end.load(Ordering::SeqCst) {
            END_OVERFLOWED => LiveEnd::Overflowed,
            END_GONE => LiveEnd::SandboxGone,
            _ => LiveEnd::Other,
        }
    }
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn frame(event: WatchEvent) -> LiveFrame {
    match event {
        WatchEvent::Sandbox(s) => LiveFrame::Status(s),
        WatchEvent::Log(l) => LiveFrame::Log(l),
        WatchEvent::Event(e) => LiveFrame::Event(serde_json::json!({
            "source": sanitize(&e.source, 64),
            "kind": sanitize(&e.kind, 64),
            "reason": sanitize(&e.reason, 256),
            "message": sanitize(&e.message, 2048),
            "time": e.time,
        })),
        WatchEvent::Warning(w) => LiveFrame::Event(serde_json::json!({
            "source": "gateway",
            "kind": "Warning",
            "message": sanitize(&w, 2048),
        })),
        WatchEvent::DraftPolicy(mut d) => {
            d.summary = sanitize(&d.summary, 2048);
            LiveFrame::DraftPolicyUpdate(d)
        }
    }
}

impl SandboxService {
    /// Opens a live view of a sandbox (404 when it does not exist).
    pub async fn live(&self, gw: &GatewayName, sb: &SandboxName) -> Result<LiveFeed> {
        self.get(gw, sb).await?;
        let (tx, rx) = mpsc::channel(self.live.queue.max(1));
        // Subscribed before the task starts, so news from now on is not missed.
        let bus = self.policies.events().subscribe();
        let end = Arc::new(AtomicU8::new(END_OTHER));
        let task = tokio::spawn(self.clone().pump(gw.clone(), sb.clone(), tx, bus, end.clone()));
        Ok(LiveFeed { rx, end, task })
    }

    async fn pump(
        self,
        gw: GatewayName,
        sb: SandboxName,
        tx: mpsc::Sender<LiveFrame>,
        mut bus: tokio::sync::broadcast::Receiver<Event>,
        end: Arc<AtomicU8>,
    ) {
        let send = |f: LiveFrame| match tx.try_send(f) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                end.store(END_OVERFLOWED, Ordering::SeqCst);
                false
            }
            Err(TrySendError::Closed(_)) => false,
        };
        let gone = || end.store(END_GONE, Ordering::SeqCst);
        let settings = self.live;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + settings.heartbeat, settings.heartbeat);
        let mut stream: Option<BoxStream<'static, breakwater_gateway::Result<WatchEvent>>> = None;
        let mut reconnect_at = Instant::now();
        let mut log_tail = settings.log_tail;
        loop {
            if stream.is_none() && Instant::now() >= reconnect_at {
                let options = WatchOptions {
                    follow_status: true,
                    follow_logs: true,
                    follow_events: true,
                    log_tail_lines: log_tail,
                    stop_on_terminal: false,
                };
                let (ws, sb) = (WorkspaceName::default(), &sb);
                let opened =
                    self.gateways.with_gateway(&gw, |c| async move { c.watch_sandbox(&ws, sb, &options).await }).await;
                match opened {
                    Ok(s) => {
                        stream = Some(s);
                        // A reconnect must not replay lines the reader has seen.
                        log_tail = 0;
                    }
                    // Deleted while watched: nothing more will come.
                    Err(crate::ServiceError::Gateway(breakwater_gateway::GatewayError::NotFound { .. })) => {
                        gone();
                        return;
                    }
                    Err(e) => {
                        reconnect_at = Instant::now() + settings.retry;
                        if !send(LiveFrame::Error { message: format!("watching the sandbox failed: {e}; retrying") }) {
                            return;
                        }
                    }
                }
            }
            tokio::select! {
                item = async {
                    match stream.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let ok = match item {
                        // Status as GET shows it: with the labels and
                        // description Breakwater keeps.
                        Some(Ok(WatchEvent::Sandbox(mut status))) => {
                            if let Ok(Some(m)) =
                                self.gateways.store().get_sandbox_metadata(gw.as_str(), sb.as_str()).await
                            {
                                m.apply_to(&mut status);
                            }
                            send(LiveFrame::Status(status))
                        }
                        Some(Ok(event)) => send(frame(event)),
                        Some(Err(e)) => {
                            stream = None;
                            reconnect_at = Instant::now() + settings.retry;
                            send(LiveFrame::Error { message: format!("the watch stream broke: {e}; reconnecting") })
                        }
                        None => {
                            stream = None;
                            reconnect_at = Instant::now() + settings.retry;
                            send(LiveFrame::Error { message: "the gateway ended the watch stream; reconnecting".into() })
                        }
                    };
                    if !ok {
                        return;
                    }
                }
                () = tokio::time::sleep_until(reconnect_at), if stream.is_none() => {}
                news = bus.recv() => match news {
                    Ok(e) if e.concerns(gw.as_str(), sb.as_str()) => {
                        let deleted = matches!(e, Event::SandboxDeleted { .. });
                        if !send(LiveFrame::Event(serde_json::json!({"source": "breakwater", "event": e}))) {
                            return;
                        }
                        if deleted {
                            gone();
                            return;
                        }
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                _ = heartbeat.tick() => {
                    if !send(LiveFrame::Heartbeat { at: Utc::now() }) {
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    }
}
