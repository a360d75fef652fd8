//! Draft policy chunks: what the gateway proposes after an agent hit a
//! blocked endpoint, and the human decisions on them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::policy::{NetworkRule, Policy};

/// A proposed network rule awaiting (or past) a decision, with the context a
/// reviewer needs to decide without another lookup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DraftChunk {
    pub id: String,
    /// `pending`, `approved`, `rejected`, ...
    pub status: String,
    pub rule_name: String,
    pub proposed_rule: Option<NetworkRule>,
    pub rationale: String,
    pub security_notes: String,
    pub confidence: f32,
    pub hit_count: i32,
    pub binary: String,
    pub stage: String,
    pub validation_result: String,
    pub rejection_reason: String,
    pub application_error: String,
    /// Opaque; must accompany an approval and goes stale on any policy change.
    pub review_token: String,
    pub current_effective_policy_hash: String,
    pub candidate_effective_policy_hash: String,
    pub current_effective_policy: Option<Policy>,
    pub candidate_effective_policy: Option<Policy>,
    pub created_at: Option<DateTime<Utc>>,
    pub decided_at: Option<DateTime<Utc>>,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
}

impl DraftChunk {
    #[must_use]
    /// Flagged by the gateway, or by Breakwater's own look at the proposed
    /// rule (which also covers a rule edited after the gateway's notes).
    pub fn is_security_flagged(&self) -> bool {
        !self.security_notes.trim().is_empty()
            || self.proposed_rule.as_ref().is_some_and(|r| !crate::policy_check::security_concerns(r).is_empty())
    }
}

/// A sandbox's draft policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DraftPolicy {
    pub chunks: Vec<DraftChunk>,
    pub rolling_summary: String,
    pub draft_version: u64,
    pub last_analyzed_at: Option<DateTime<Utc>>,
}

/// Policy version after an approval or undo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersionRef {
    pub policy_version: u32,
    pub policy_hash: String,
}

/// Outcome of approving every pending chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproveAllResult {
    pub policy_version: u32,
    pub policy_hash: String,
    pub chunks_approved: u32,
    pub chunks_skipped: u32,
}

/// One event of a draft's history (`proposed`, `approved`, `rejected`, `undone`...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftHistoryEntry {
    pub time: Option<DateTime<Utc>>,
    pub event_type: String,
    pub description: String,
    pub chunk_id: String,
}

/// A sandbox's policy frozen at one version: while active, policy writes and
/// approvals are refused (423) with who pinned it and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPin {
    pub gateway: String,
    pub sandbox: String,
    pub version: u32,
    pub pinned_by: String,
    pub reason: Option<String>,
    pub pinned_at: DateTime<Utc>,
    /// After this instant the pin no longer applies (checked on read, so no
    /// scheduler is needed).
    pub expires_at: Option<DateTime<Utc>>,
}

impl PolicyPin {
    #[must_use]
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }

    /// What a refused writer is told.
    #[must_use]
    pub fn refusal(&self) -> String {
        let why = self.reason.as_deref().map_or_else(String::new, |r| format!(" ({r})"));
        let until = self.expires_at.map_or_else(String::new, |t| format!(" until {}", t.to_rfc3339()));
        format!(
            "the policy of {}/{} is pinned at version {} by {}{why}{until}; unpin it to change the policy",
            self.gateway, self.sandbox, self.version, self.pinned_by
        )
    }
}

/// How many people must agree before a chunk is approved upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalWorkflow {
    pub gateway: String,
    pub sandbox: String,
    /// 1 to 20.
    pub required_approvals: u32,
    /// Roles whose votes count; empty means any role that may approve.
    pub required_roles: Vec<String>,
    /// Votes must come from different people.
    pub distinct_actors: bool,
    /// Pending longer than this raises an escalation event.
    pub escalation_timeout_minutes: Option<u32>,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

/// One person's decision on one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }

    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "approve" => Some(Self::Approve),
            "reject" => Some(Self::Reject),
            _ => None,
        }
    }
}

/// A recorded vote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub chunk_id: String,
    pub actor: String,
    pub role: String,
    pub decision: Decision,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// A human action taken through Breakwater on a chunk, kept so the
/// gateway's history can be attributed (anything without one was the
/// gateway's own doing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkAction {
    pub chunk_id: String,
    /// `approved`, `rejected`, `undone`, `edited`, `cleared`.
    pub action: String,
    pub actor: String,
    pub at: DateTime<Utc>,
}
