//! Long-running operations: work that outlives a request (creating a
//! sandbox with presets, a slow exec), tracked so that a client can poll it
//! and nothing is lost or left "running" when the server dies.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where an operation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    Pending,
    Running,
    Cancelling,
    Succeeded,
    Failed,
}

impl OperationStatus {
    pub const ALL: [Self; 5] = [Self::Pending, Self::Running, Self::Cancelling, Self::Succeeded, Self::Failed];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Cancelling => "cancelling",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Still going: at most one active operation per resource.
    #[must_use]
    pub fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Running | Self::Cancelling)
    }
}

/// Why an operation failed, for clients to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationError {
    Internal,
    Timeout,
    Cancelled,
    /// The server that ran it stopped before it finished.
    Orphaned,
    GatewayUnavailable,
    Gateway,
}

impl OperationError {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Internal => "internal",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Orphaned => "orphaned",
            Self::GatewayUnavailable => "gateway_unavailable",
            Self::Gateway => "gateway",
        }
    }

    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Internal, Self::Timeout, Self::Cancelled, Self::Orphaned, Self::GatewayUnavailable, Self::Gateway]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

/// One long-running operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub gateway: Option<String>,
    pub resource_type: String,
    pub resource_name: String,
    pub action: String,
    pub status: OperationStatus,
    /// 0 to 100.
    pub progress: u8,
    pub message: Option<String>,
    pub result: Option<serde_json::Value>,
    pub error_code: Option<OperationError>,
    pub error: Option<String>,
    pub actor: String,
    /// The replica whose task runs it (`None` for one no task runs).
    #[serde(default)]
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What the store keeps unique among active operations: one per
/// (gateway, resource type, resource name).
#[must_use]
pub fn active_key(gateway: Option<&str>, resource_type: &str, resource_name: &str) -> String {
    format!("{}\u{1f}{resource_type}\u{1f}{resource_name}", gateway.unwrap_or(""))
}

impl Operation {
    /// The key that makes at most one operation per resource active.
    #[must_use]
    pub fn active_key(&self) -> String {
        active_key(self.gateway.as_deref(), &self.resource_type, &self.resource_name)
    }
}
