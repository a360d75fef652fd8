//! Internal events: what changed, for whoever listens (webhooks, live UI
//! updates). Publishing never blocks and never fails: with no listener, or
//! a listener too slow to keep up, events are dropped for that listener.

use serde::Serialize;
use tokio::sync::broadcast;

/// Something happened that others may want to react to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    PolicyUpdated {
        gateway: String,
        sandbox: String,
        version: u32,
        policy_hash: String,
    },
    ApprovalPending {
        gateway: String,
        sandbox: String,
        chunk_id: String,
    },
    /// A chunk under a workflow has waited for votes longer than the
    /// workflow's escalation timeout.
    ApprovalEscalated {
        gateway: String,
        sandbox: String,
        chunk_id: String,
        waiting_minutes: i64,
    },
    ApprovalApproved {
        gateway: String,
        sandbox: String,
        chunk_id: String,
        actor: String,
    },
    ApprovalRejected {
        gateway: String,
        sandbox: String,
        chunk_id: String,
        actor: String,
    },
    /// A create operation finished with the sandbox ready.
    SandboxCreated {
        gateway: String,
        sandbox: String,
    },
    SandboxDeleted {
        gateway: String,
        sandbox: String,
    },
    /// An operation changed status or progress.
    OperationChanged {
        id: String,
        gateway: Option<String>,
        resource_type: String,
        resource_name: String,
        status: String,
        progress: u8,
        message: Option<String>,
    },
}

impl Event {
    /// Whether this is news about sandbox `sandbox` on gateway `gateway`.
    #[must_use]
    pub fn concerns(&self, gateway: &str, sandbox: &str) -> bool {
        match self {
            Self::PolicyUpdated { gateway: g, sandbox: s, .. }
            | Self::ApprovalPending { gateway: g, sandbox: s, .. }
            | Self::ApprovalEscalated { gateway: g, sandbox: s, .. }
            | Self::ApprovalApproved { gateway: g, sandbox: s, .. }
            | Self::ApprovalRejected { gateway: g, sandbox: s, .. }
            | Self::SandboxCreated { gateway: g, sandbox: s }
            | Self::SandboxDeleted { gateway: g, sandbox: s } => g == gateway && s == sandbox,
            Self::OperationChanged { gateway: g, resource_type, resource_name, .. } => {
                g.as_deref() == Some(gateway)
                    && match resource_type.as_str() {
                        "sandbox" => resource_name == sandbox,
                        // Long execs are named `{sandbox}/{id}`.
                        "sandbox_exec" => resource_name.strip_prefix(sandbox).is_some_and(|rest| rest.starts_with('/')),
                        _ => false,
                    }
            }
        }
    }
}

/// A broadcast channel of [`Event`]s. Cheap to clone.
#[derive(Clone)]
pub struct EventBus(broadcast::Sender<Event>);

impl Default for EventBus {
    fn default() -> Self {
        Self(broadcast::channel(1024).0)
    }
}

impl EventBus {
    pub fn publish(&self, event: Event) {
        // No receivers is fine: nobody is listening yet.
        let _ = self.0.send(event);
    }

    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }
}
