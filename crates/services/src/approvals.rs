//! The approval inbox: draft policy chunks the gateway proposes after an
//! agent was denied, and the human decisions on them.
//!
//! Approving needs the chunk's current review token, which goes stale on
//! any policy change; a stale token is re-read once. Under an approval
//! workflow a decision is a vote: below quorum it is recorded and tallied,
//! the vote that reaches quorum approves upstream exactly once (the store's
//! outcome claim decides which of two racing votes acts), and one rejection
//! rejects. `wait_loaded` follows the sandbox's watch stream until the new
//! policy version is loaded, up to a cap.

use std::time::Duration;

use breakwater_domain::approval::{
    ApprovalWorkflow, ChunkAction, Decision, DraftChunk, DraftHistoryEntry, DraftPolicy, Vote,
};
use breakwater_domain::policy::{NetworkRule, Policy, PolicyStatus};
use breakwater_domain::registry::GatewayName;
use breakwater_domain::sandbox::{WatchEvent, WatchOptions};
use breakwater_domain::{SandboxName, WorkspaceName};
use breakwater_gateway::{Gateway, GatewayError};
use chrono::Utc;
use futures::StreamExt;
use serde::Serialize;

use crate::events::{Event, EventBus};
use crate::policy::ApplyMode;
use crate::{Actor, GatewayService, PolicyService, Result, ServiceError, WriteOutcome, WriteStatus};
use sha2::Digest as _;

/// Roles a workflow may name.
pub const ROLES: &[&str] = &["viewer", "operator", "admin"];

/// What an approval did.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ApproveOutcome {
    /// Approved upstream now.
    Approved { chunk: Box<DraftChunk>, policy_version: u32, policy_hash: String, loaded: Option<bool> },
    /// It already was (a second click, or another approver was first).
    AlreadyApproved { chunk: Box<DraftChunk> },
    /// Recorded under a workflow; more votes are needed.
    VoteRecorded { tally: Tally },
}

/// Votes on one chunk against its workflow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub chunk_id: String,
    pub required_approvals: u32,
    pub approvals: u32,
    pub rejections: u32,
    pub votes_needed: u32,
    /// `pending`, `approved` or `rejected`.
    pub outcome: String,
    /// Still pending longer than the workflow's escalation timeout since
    /// the first vote.
    pub escalated: bool,
    pub votes: Vec<Vote>,
}

/// What a GitOps apply did under (or without) a workflow.
#[derive(Clone, Debug, PartialEq)]
pub enum ApplyOutcome {
    Written(WriteOutcome),
    /// More approvers must apply the same document.
    VoteRecorded {
        tally: Tally,
        diff: Box<WriteOutcome>,
    },
}

/// `approve-all` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BulkOutcome {
    pub approved: u32,
    pub skipped: u32,
    /// Chunks that only got a vote (workflow below quorum).
    pub voted: u32,
    pub policy_version: u32,
    pub policy_hash: String,
    pub loaded: Option<bool>,
}

/// One event of a chunk's history, with who caused it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    #[serde(flatten)]
    pub event: DraftHistoryEntry,
    /// The Breakwater user who did it, or `gateway` for the gateway's own
    /// doing (a proposal, an automatic approval).
    pub actor: String,
}

/// What a workflow asks for (see [`ApprovalWorkflow`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkflowSettings {
    pub required_approvals: u32,
    pub required_roles: Vec<String>,
    pub distinct_actors: bool,
    pub escalation_timeout_minutes: Option<u32>,
}

/// The approval inbox. Cheap to clone.
#[derive(Clone)]
pub struct ApprovalService {
    gateways: GatewayService,
    policies: PolicyService,
    events: EventBus,
    wait_cap: Duration,
    /// Chunks already announced (pending, escalated), so each event goes
    /// out once per process.
    announced: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

fn ws() -> WorkspaceName {
    WorkspaceName::default()
}

/// A chunk that is not (or no longer) in the draft: a conflict with what
/// the caller last saw, not a bad URL.
fn gone(chunk_id: &str) -> ServiceError {
    let shown = breakwater_domain::sanitize(chunk_id, 64);
    conflict(format!(
        "chunk {shown} is not in the draft: the gateway withdrew, replaced or cleared it; reload the inbox"
    ))
}

fn conflict(message: impl Into<String>) -> ServiceError {
    ServiceError::Precondition { message: message.into() }
}

impl ApprovalService {
    #[must_use]
    pub fn new(gateways: GatewayService, policies: PolicyService, events: EventBus) -> Self {
        Self { gateways, policies, events, wait_cap: Duration::from_secs(30), announced: std::sync::Arc::default() }
    }

    /// How long `wait_loaded` waits at most (30 s unless changed).
    #[must_use]
    pub fn with_wait_cap(mut self, cap: Duration) -> Self {
        self.wait_cap = cap;
        self
    }

    // ------------------------------------------------------------ reads

    pub async fn draft(&self, gw: &GatewayName, sb: &SandboxName, status: Option<&str>) -> Result<DraftPolicy> {
        let filter = status.unwrap_or("").to_owned();
        let draft = self.gateways.with_gateway(gw, |c| async move { c.draft_policy(&ws(), sb, &filter).await }).await?;
        for chunk in draft.chunks.iter().filter(|c| c.status == "pending") {
            if self.first_time(&format!("pending/{gw}/{sb}/{}", chunk.id)) {
                self.events.publish(Event::ApprovalPending {
                    gateway: gw.to_string(),
                    sandbox: sb.to_string(),
                    chunk_id: chunk.id.clone(),
                });
            }
        }
        Ok(draft)
    }

    /// True the first time `key` is seen by this process.
    fn first_time(&self, key: &str) -> bool {
        let mut seen = self.announced.lock().expect("announced lock");
        // A long-lived server forgets old announcements rather than grow.
        if seen.len() > 100_000 {
            seen.clear();
        }
        seen.insert(key.to_owned())
    }

    pub async fn pending(&self, gw: &GatewayName, sb: &SandboxName) -> Result<Vec<DraftChunk>> {
        Ok(self.draft(gw, sb, Some("pending")).await?.chunks)
    }

    async fn chunk(&self, gw: &GatewayName, sb: &SandboxName, chunk_id: &str) -> Result<Option<DraftChunk>> {
        Ok(self.draft(gw, sb, None).await?.chunks.into_iter().find(|c| c.id == chunk_id))
    }

    /// The gateway's history, each event attributed to the person who
    /// caused it through Breakwater, or to the gateway.
    pub async fn history(&self, gw: &GatewayName, sb: &SandboxName) -> Result<Vec<HistoryEntry>> {
        let events = self.gateways.with_gateway(gw, |c| async move { c.draft_history(&ws(), sb).await }).await?;
        let mut actions = self.gateways.store().chunk_actions(gw.as_str(), sb.as_str()).await?;
        Ok(events
            .into_iter()
            .map(|event| {
                // Each human action explains at most one gateway event.
                let found = actions.iter().position(|a| a.chunk_id == event.chunk_id && a.action == event.event_type);
                let actor = found.map_or_else(|| "gateway".to_owned(), |i| actions.remove(i).actor);
                HistoryEntry { event, actor }
            })
            .collect())
    }

    // ------------------------------------------------------------ workflows

    pub async fn workflow(&self, gw: &GatewayName, sb: &SandboxName) -> Result<Option<ApprovalWorkflow>> {
        Ok(self.gateways.store().get_workflow(gw.as_str(), sb.as_str()).await?)
    }

    pub async fn set_workflow(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        settings: WorkflowSettings,
    ) -> Result<ApprovalWorkflow> {
        let WorkflowSettings { required_approvals, required_roles, distinct_actors, escalation_timeout_minutes } =
            settings;
        // A workflow for a sandbox that does not exist protects nothing.
        self.gateways.with_gateway(gw, |c| async move { c.get_sandbox(&ws(), sb).await }).await?;
        if !(1..=20).contains(&required_approvals) {
            return Err(ServiceError::Invalid { field: "required_approvals".into(), message: "1 to 20".into() });
        }
        if let Some(bad) = required_roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
            return Err(ServiceError::Invalid {
                field: "required_roles".into(),
                message: format!("unknown role {bad:?}; roles are {}", ROLES.join(", ")),
            });
        }
        if escalation_timeout_minutes.is_some_and(|m| m == 0 || m > 10_080) {
            return Err(ServiceError::Invalid {
                field: "escalation_timeout_minutes".into(),
                message: "1 to 10080 (a week)".into(),
            });
        }
        let wf = ApprovalWorkflow {
            gateway: gw.to_string(),
            sandbox: sb.to_string(),
            required_approvals,
            required_roles,
            distinct_actors,
            escalation_timeout_minutes,
            updated_by: actor.name.clone(),
            updated_at: Utc::now(),
        };
        self.gateways.store().put_workflow(&wf).await?;
        self.gateways
            .audit()
            .log(
                actor,
                "approval.workflow.set",
                "approval_workflow",
                sb.as_str(),
                Some(gw.as_str()),
                serde_json::json!(wf),
            )
            .await;
        Ok(wf)
    }

    pub async fn delete_workflow(&self, actor: &Actor, gw: &GatewayName, sb: &SandboxName) -> Result<()> {
        if !self.gateways.store().delete_workflow(gw.as_str(), sb.as_str()).await? {
            return Err(ServiceError::NotFound { what: format!("approval workflow of {gw}/{sb}") });
        }
        self.gateways
            .audit()
            .log(
                actor,
                "approval.workflow.delete",
                "approval_workflow",
                sb.as_str(),
                Some(gw.as_str()),
                serde_json::json!({}),
            )
            .await;
        Ok(())
    }

    pub async fn tally(&self, gw: &GatewayName, sb: &SandboxName, chunk_id: &str) -> Result<Tally> {
        let store = self.gateways.store();
        let wf = store.get_workflow(gw.as_str(), sb.as_str()).await?;
        let votes = store.votes(gw.as_str(), sb.as_str(), chunk_id).await?;
        let required = wf.as_ref().map_or(1, |w| w.required_approvals);
        let approvals =
            u32::try_from(votes.iter().filter(|v| v.decision == Decision::Approve).count()).unwrap_or(u32::MAX);
        let rejections =
            u32::try_from(votes.iter().filter(|v| v.decision == Decision::Reject).count()).unwrap_or(u32::MAX);
        let outcome = match store.outcome(gw.as_str(), sb.as_str(), chunk_id).await? {
            Some(Decision::Approve) => "approved",
            Some(Decision::Reject) => "rejected",
            None => "pending",
        };
        let waiting = votes.iter().map(|v| v.at).min().map(|first| (Utc::now() - first).num_minutes());
        let escalated = outcome == "pending"
            && matches!((wf.as_ref().and_then(|w| w.escalation_timeout_minutes), waiting), (Some(limit), Some(w)) if w >= i64::from(limit));
        if escalated && self.first_time(&format!("escalated/{gw}/{sb}/{chunk_id}")) {
            self.events.publish(Event::ApprovalEscalated {
                gateway: gw.to_string(),
                sandbox: sb.to_string(),
                chunk_id: chunk_id.to_owned(),
                waiting_minutes: waiting.unwrap_or_default(),
            });
        }
        Ok(Tally {
            chunk_id: chunk_id.to_owned(),
            required_approvals: required,
            approvals,
            rejections,
            votes_needed: required.saturating_sub(approvals),
            outcome: outcome.to_owned(),
            escalated,
            votes,
        })
    }

    async fn vote(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        wf: &ApprovalWorkflow,
        chunk_id: &str,
        (decision, reason): (Decision, Option<String>),
    ) -> Result<Tally> {
        if !wf.required_roles.is_empty() && !wf.required_roles.contains(&actor.role) {
            return Err(ServiceError::Forbidden {
                message: format!(
                    "votes on {gw}/{sb} must come from the roles {}; {} has role {}",
                    wf.required_roles.join(", "),
                    actor.name,
                    actor.role
                ),
            });
        }
        let vote = Vote {
            chunk_id: chunk_id.to_owned(),
            actor: actor.name.clone(),
            role: actor.role.clone(),
            decision,
            reason,
            at: Utc::now(),
        };
        self.gateways.store().put_vote(gw.as_str(), sb.as_str(), &vote).await?;
        self.gateways
            .audit()
            .log(
                actor,
                "approval.vote",
                "draft_chunk",
                chunk_id,
                Some(gw.as_str()),
                serde_json::json!({"sandbox": sb.as_str(), "decision": decision.as_str()}),
            )
            .await;
        self.tally(gw, sb, chunk_id).await
    }

    // ------------------------------------------------------------ decisions

    /// The chunk as it is now: `Ok` when pending, `Err` when already
    /// approved; anything else (rejected, gone) is a conflict.
    async fn approvable(
        &self,
        gw: &GatewayName,
        sb: &SandboxName,
        chunk_id: &str,
    ) -> Result<std::result::Result<DraftChunk, DraftChunk>> {
        let chunk = self.chunk(gw, sb, chunk_id).await?.ok_or_else(|| gone(chunk_id))?;
        match chunk.status.as_str() {
            "pending" => Ok(Ok(chunk)),
            "approved" => Ok(Err(chunk)),
            other => Err(conflict(format!("chunk {chunk_id} is {other}, not pending; it cannot be approved"))),
        }
    }

    /// Approves a chunk (or votes for it under a workflow).
    pub async fn approve(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        chunk_id: &str,
        wait_loaded: bool,
    ) -> Result<ApproveOutcome> {
        self.policies.check_pin(gw, sb).await?;
        if let Some(wf) = self.workflow(gw, sb).await? {
            // A vote needs a pending chunk; without a workflow `approve_upstream`
            // does this same read itself, so it is not done twice.
            let chunk = match self.approvable(gw, sb, chunk_id).await? {
                Ok(pending) => pending,
                Err(approved) => return Ok(ApproveOutcome::AlreadyApproved { chunk: Box::new(approved) }),
            };
            let tally = self.vote(actor, gw, sb, &wf, chunk_id, (Decision::Approve, None)).await?;
            if tally.approvals < wf.required_approvals {
                return Ok(ApproveOutcome::VoteRecorded { tally });
            }
            // Quorum: the one vote that claims the outcome acts upstream.
            if !self.gateways.store().claim_outcome(gw.as_str(), sb.as_str(), chunk_id, Decision::Approve).await? {
                let chunk = self.chunk(gw, sb, chunk_id).await?.unwrap_or(chunk);
                return Ok(ApproveOutcome::AlreadyApproved { chunk: Box::new(chunk) });
            }
            match self.approve_upstream(actor, gw, sb, chunk_id, wait_loaded).await {
                Ok(o) => Ok(o),
                Err(e) => {
                    // Let a later vote try again.
                    let _ = self.gateways.store().release_outcome(gw.as_str(), sb.as_str(), chunk_id).await;
                    Err(e)
                }
            }
        } else {
            self.approve_upstream(actor, gw, sb, chunk_id, wait_loaded).await
        }
    }

    async fn approve_upstream(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        chunk_id: &str,
        wait_loaded: bool,
    ) -> Result<ApproveOutcome> {
        let mut attempt = 0;
        let (version, rule) = loop {
            attempt += 1;
            let chunk = match self.approvable(gw, sb, chunk_id).await? {
                Ok(pending) => pending,
                Err(approved) => return Ok(ApproveOutcome::AlreadyApproved { chunk: Box::new(approved) }),
            };
            let token = chunk.review_token.clone();
            let sent = self
                .gateways
                .with_gateway(gw, |c| async move { c.approve_chunk(&ws(), sb, chunk_id, &token).await })
                .await;
            match sent {
                Ok(v) => break (v, chunk.proposed_rule),
                // The policy changed since the draft was read: its token is stale.
                Err(ServiceError::Gateway(GatewayError::FailedPrecondition { .. })) if attempt == 1 => {}
                Err(ServiceError::Gateway(GatewayError::FailedPrecondition { message, .. })) => {
                    return Err(conflict(format!(
                        "chunk {chunk_id} changed again while approving ({message}); reload the inbox and retry"
                    )));
                }
                Err(e) => return Err(e),
            }
        };
        let detail = serde_json::json!({
            "sandbox": sb.as_str(),
            "rule": rule,
            "policy_version": version.policy_version,
            "policy_hash": version.policy_hash,
        });
        self.after_decision_with(actor, gw, sb, chunk_id, "approved", detail).await;
        self.events.publish(Event::ApprovalApproved {
            gateway: gw.to_string(),
            sandbox: sb.to_string(),
            chunk_id: chunk_id.to_owned(),
            actor: actor.name.clone(),
        });
        let loaded = if wait_loaded { Some(self.wait_loaded(gw, sb, version.policy_version).await?) } else { None };
        let chunk = self.chunk(gw, sb, chunk_id).await?.ok_or_else(|| conflict(format!("chunk {chunk_id} is gone")))?;
        Ok(ApproveOutcome::Approved {
            chunk: Box::new(chunk),
            policy_version: version.policy_version,
            policy_hash: version.policy_hash,
            loaded,
        })
    }

    async fn after_decision(&self, actor: &Actor, gw: &GatewayName, sb: &SandboxName, chunk_id: &str, action: &str) {
        self.after_decision_with(actor, gw, sb, chunk_id, action, serde_json::json!({"sandbox": sb.as_str()})).await;
    }

    async fn after_decision_with(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        chunk_id: &str,
        action: &str,
        detail: serde_json::Value,
    ) {
        let record = ChunkAction {
            chunk_id: chunk_id.to_owned(),
            action: action.to_owned(),
            actor: actor.name.clone(),
            at: Utc::now(),
        };
        if let Err(e) = self.gateways.store().record_chunk_action(gw.as_str(), sb.as_str(), &record).await {
            tracing::warn!(error = %e, "could not record the chunk action");
        }
        self.gateways
            .audit()
            .log(actor, &format!("approval.{action}"), "draft_chunk", chunk_id, Some(gw.as_str()), detail)
            .await;
    }

    /// Follows the watch stream until `version` is loaded (true), failed
    /// (an error naming the load error) or the cap passes (504 naming the
    /// last seen status).
    async fn wait_loaded(&self, gw: &GatewayName, sb: &SandboxName, version: u32) -> Result<bool> {
        let options = WatchOptions { follow_status: true, ..WatchOptions::default() };
        let mut stream =
            self.gateways.with_gateway(gw, |c| async move { c.watch_sandbox(&ws(), sb, &options).await }).await?;
        let deadline = tokio::time::Instant::now() + self.wait_cap;
        loop {
            // Checked first too: the load may have happened before we watched.
            let status = self
                .gateways
                .with_gateway(gw, |c| async move { c.policy_status(&ws(), sb, Some(version)).await })
                .await?
                .revision;
            let last = status.status;
            match status.status {
                PolicyStatus::Loaded | PolicyStatus::Superseded => return Ok(true),
                PolicyStatus::Failed => {
                    return Err(conflict(format!("policy version {version} failed to load: {}", status.load_error)));
                }
                _ => {}
            }
            // Wait for the next sandbox update (a load emits one).
            let next = tokio::time::timeout_at(deadline, async {
                while let Some(ev) = stream.next().await {
                    if matches!(ev, Ok(WatchEvent::Sandbox(_)) | Err(_)) {
                        return true;
                    }
                }
                false
            })
            .await;
            if next != Ok(true) {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ServiceError::Timeout {
                        message: format!(
                            "policy version {version} was not loaded within {} s; its last seen status is {last:?}",
                            self.wait_cap.as_secs()
                        ),
                    });
                }
                // The stream ended early (gateway restart): poll until the cap.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Rejects a chunk; under a workflow one rejection decides.
    pub async fn reject(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        chunk_id: &str,
        reason: &str,
    ) -> Result<DraftChunk> {
        let chunk = self.chunk(gw, sb, chunk_id).await?.ok_or_else(|| gone(chunk_id))?;
        if chunk.status == "rejected" {
            return Ok(chunk);
        }
        if chunk.status != "pending" {
            return Err(conflict(format!("chunk {chunk_id} is {}, not pending; it cannot be rejected", chunk.status)));
        }
        if let Some(wf) = self.workflow(gw, sb).await? {
            self.vote(actor, gw, sb, &wf, chunk_id, (Decision::Reject, Some(reason.to_owned()))).await?;
            if !self.gateways.store().claim_outcome(gw.as_str(), sb.as_str(), chunk_id, Decision::Reject).await? {
                return self
                    .chunk(gw, sb, chunk_id)
                    .await?
                    .ok_or_else(|| conflict(format!("chunk {chunk_id} is gone")));
            }
        }
        let reason_owned = reason.to_owned();
        self.gateways
            .with_gateway(gw, |c| async move { c.reject_chunk(&ws(), sb, chunk_id, &reason_owned).await })
            .await?;
        let detail = serde_json::json!({"sandbox": sb.as_str(), "reason": reason});
        self.after_decision_with(actor, gw, sb, chunk_id, "rejected", detail).await;
        self.events.publish(Event::ApprovalRejected {
            gateway: gw.to_string(),
            sandbox: sb.to_string(),
            chunk_id: chunk_id.to_owned(),
            actor: actor.name.clone(),
        });
        self.chunk(gw, sb, chunk_id).await?.ok_or_else(|| conflict(format!("chunk {chunk_id} is gone")))
    }

    /// Approves every pending chunk, skipping security-flagged ones unless
    /// asked. Under a workflow each chunk gets a vote instead.
    pub async fn approve_all(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        include_security_flagged: bool,
        wait_loaded: bool,
    ) -> Result<BulkOutcome> {
        self.policies.check_pin(gw, sb).await?;
        if self.workflow(gw, sb).await?.is_some() {
            let mut out = BulkOutcome {
                approved: 0,
                skipped: 0,
                voted: 0,
                policy_version: 0,
                policy_hash: String::new(),
                loaded: None,
            };
            for chunk in self.pending(gw, sb).await? {
                if chunk.is_security_flagged() && !include_security_flagged {
                    out.skipped += 1;
                    continue;
                }
                match self.approve(actor, gw, sb, &chunk.id, false).await? {
                    ApproveOutcome::Approved { policy_version, policy_hash, .. } => {
                        out.approved += 1;
                        out.policy_version = policy_version;
                        out.policy_hash = policy_hash;
                    }
                    ApproveOutcome::AlreadyApproved { .. } => out.approved += 1,
                    ApproveOutcome::VoteRecorded { .. } => out.voted += 1,
                }
            }
            if wait_loaded && out.policy_version > 0 {
                out.loaded = Some(self.wait_loaded(gw, sb, out.policy_version).await?);
            }
            return Ok(out);
        }
        let all = self.pending(gw, sb).await?;
        let pending: Vec<String> =
            all.iter().filter(|c| include_security_flagged || !c.is_security_flagged()).map(|c| c.id.clone()).collect();
        let gateway_would =
            all.iter().filter(|c| include_security_flagged || c.security_notes.trim().is_empty()).count();
        if gateway_would != pending.len() {
            // Breakwater flags a chunk the gateway does not (an edited rule,
            // say): approve the selection one by one instead of in bulk.
            let mut out = BulkOutcome {
                approved: 0,
                skipped: u32::try_from(all.len() - pending.len()).unwrap_or(u32::MAX),
                voted: 0,
                policy_version: 0,
                policy_hash: String::new(),
                loaded: None,
            };
            for id in &pending {
                if let ApproveOutcome::Approved { policy_version, policy_hash, .. } =
                    self.approve_upstream(actor, gw, sb, id, false).await?
                {
                    out.approved += 1;
                    out.policy_version = policy_version;
                    out.policy_hash = policy_hash;
                }
            }
            if wait_loaded && out.policy_version > 0 {
                out.loaded = Some(self.wait_loaded(gw, sb, out.policy_version).await?);
            }
            return Ok(out);
        }
        let result = self
            .gateways
            .with_gateway(gw, |c| async move { c.approve_all_chunks(&ws(), sb, include_security_flagged).await })
            .await?;
        for id in &pending {
            self.after_decision(actor, gw, sb, id, "approved").await;
        }
        let loaded = if wait_loaded && result.chunks_approved > 0 {
            Some(self.wait_loaded(gw, sb, result.policy_version).await?)
        } else {
            None
        };
        Ok(BulkOutcome {
            approved: result.chunks_approved,
            skipped: result.chunks_skipped,
            voted: 0,
            policy_version: result.policy_version,
            policy_hash: result.policy_hash,
            loaded,
        })
    }

    /// Replaces a pending chunk's proposed rule; validated like any rule
    /// before the gateway sees it.
    pub async fn edit(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        chunk_id: &str,
        rule: NetworkRule,
    ) -> Result<()> {
        let chunk = self.chunk(gw, sb, chunk_id).await?.ok_or_else(|| gone(chunk_id))?;
        if chunk.status != "pending" {
            return Err(conflict(format!("chunk {chunk_id} is {}; only pending chunks can be edited", chunk.status)));
        }
        let bad = |message: String| ServiceError::Invalid { field: "proposed_rule".into(), message };
        if rule.endpoints.is_empty() {
            return Err(bad("a proposed rule needs at least one endpoint".into()));
        }
        // The rule keeps its name unless the edit gives another.
        let key = if rule.name.is_empty() { chunk.rule_name.clone() } else { rule.name.clone() };
        let mut check = Policy::default();
        check.network_policies.insert(key.clone(), NetworkRule { name: key.clone(), ..rule });
        check.normalise();
        check.validate().map_err(|v| ServiceError::Invalid {
            field: v.0.first().map_or_else(
                || "proposed_rule".into(),
                |f| f.field.replacen(&format!("network_policies.{key}"), "proposed_rule", 1),
            ),
            message: v.to_string(),
        })?;
        let rule = check.network_policies.remove(&key).ok_or_else(|| bad("empty rule".into()))?;
        let detail = serde_json::json!({"sandbox": sb.as_str(), "rule": rule});
        self.gateways.with_gateway(gw, |c| async move { c.edit_chunk(&ws(), sb, chunk_id, &rule).await }).await?;
        self.after_decision_with(actor, gw, sb, chunk_id, "edited", detail).await;
        Ok(())
    }

    /// Reverts an approved chunk: a new revision with the previous hash.
    pub async fn undo(&self, actor: &Actor, gw: &GatewayName, sb: &SandboxName, chunk_id: &str) -> Result<DraftChunk> {
        self.policies.check_pin(gw, sb).await?;
        self.gateways.with_gateway(gw, |c| async move { c.undo_chunk(&ws(), sb, chunk_id).await }).await?;
        // A later approval of the same chunk must be able to claim again.
        let _ = self.gateways.store().release_outcome(gw.as_str(), sb.as_str(), chunk_id).await;
        self.after_decision(actor, gw, sb, chunk_id, "undone").await;
        self.chunk(gw, sb, chunk_id).await?.ok_or_else(|| conflict(format!("chunk {chunk_id} is gone")))
    }

    /// GitOps apply, gated by the sandbox's workflow when it has one: the
    /// document becomes a proposal (named after its content) that approvers
    /// vote on by applying the same YAML; the vote that reaches quorum
    /// applies it, once. Dry runs and no-op applies never need votes.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_document(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        yaml: &str,
        mode: ApplyMode,
        dry_run: bool,
        expected: Option<&str>,
    ) -> Result<ApplyOutcome> {
        let Some(wf) = self.workflow(gw, sb).await? else {
            return Ok(ApplyOutcome::Written(
                self.policies.apply_document(actor, gw, sb, yaml, mode, dry_run, expected).await?,
            ));
        };
        // What would change, and does it at all?
        let preview = self.policies.apply_document(actor, gw, sb, yaml, mode, true, expected).await?;
        if dry_run || preview.status == WriteStatus::UpToDate {
            return Ok(ApplyOutcome::Written(preview));
        }
        self.policies.check_pin(gw, sb).await?;
        let digest = hex::encode(sha2::Sha256::digest(yaml.as_bytes()));
        let proposal = format!("policy.apply:{}", &digest[..16]);
        let tally = self.vote(actor, gw, sb, &wf, &proposal, (Decision::Approve, None)).await?;
        if tally.approvals < wf.required_approvals {
            return Ok(ApplyOutcome::VoteRecorded { tally, diff: Box::new(preview) });
        }
        if !self.gateways.store().claim_outcome(gw.as_str(), sb.as_str(), &proposal, Decision::Approve).await? {
            return Ok(ApplyOutcome::VoteRecorded { tally, diff: Box::new(preview) });
        }
        match self.policies.apply_document(actor, gw, sb, yaml, mode, false, expected).await {
            Ok(w) => Ok(ApplyOutcome::Written(w)),
            Err(e) => {
                let _ = self.gateways.store().release_outcome(gw.as_str(), sb.as_str(), &proposal).await;
                Err(e)
            }
        }
    }

    pub async fn clear(&self, actor: &Actor, gw: &GatewayName, sb: &SandboxName) -> Result<u32> {
        let pending = self.pending(gw, sb).await?;
        let n = self.gateways.with_gateway(gw, |c| async move { c.clear_chunks(&ws(), sb).await }).await?;
        // So that history credits the clear to this person, per chunk and as a whole.
        let now = Utc::now();
        let ids = pending.iter().map(|c| c.id.clone()).chain(std::iter::once(String::new()));
        for chunk_id in ids {
            let record = ChunkAction { chunk_id, action: "cleared".into(), actor: actor.name.clone(), at: now };
            if let Err(e) = self.gateways.store().record_chunk_action(gw.as_str(), sb.as_str(), &record).await {
                tracing::warn!(error = %e, "could not record the clear");
            }
        }
        self.gateways
            .audit()
            .log(
                actor,
                "approval.cleared",
                "sandbox",
                sb.as_str(),
                Some(gw.as_str()),
                serde_json::json!({"cleared": n}),
            )
            .await;
        Ok(n)
    }
}
