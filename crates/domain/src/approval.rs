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
    pub fn is_security_flagged(&self) -> bool {
        !self.security_notes.trim().is_empty()
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
