//! The seam between Breakwater and OpenShell gateways.
//!
//! [`Gateway`] is a domain-typed view of the OpenShell 0.1 control-plane API;
//! [`GrpcGateway`] implements it over tonic. Protobuf types stay inside this
//! crate (see `mapping`), so nothing above it depends on the wire format.
#![forbid(unsafe_code)]

mod client;
pub mod config;
mod connector;
mod error;
mod mapping;
mod retry;

use async_trait::async_trait;
use breakwater_domain::approval::{ApproveAllResult, DraftHistoryEntry, DraftPolicy, PolicyVersionRef};
use breakwater_domain::gateway::{CurrentUser, GatewayInfo, Health, Workspace};
use breakwater_domain::policy::{
    ConfigChange, ConfigUpdateResult, GatewaySettings, NetworkRule, PolicyRevision, SandboxConfig,
};
use breakwater_domain::provider::{Provider, ProviderAttachment, ProviderProfile, ProviderSpec};
use breakwater_domain::sandbox::{
    DeletionOutcome, ExecEvent, ExecOutput, ExecRequest, LogQuery, NewSandbox, Sandbox, SandboxDeletion, SandboxLogs,
    SshSession, WatchEvent, WatchOptions,
};
use breakwater_domain::{LabelSelector, Labels, Page, PageRequest, ProviderName, SandboxName, Secret, WorkspaceName};
use futures::StreamExt;
use futures::stream::BoxStream;

pub use client::GrpcGateway;
pub use config::{ClientIdentity, ConnectionConfig, GatewayAddress, RetryPolicy, Timeouts, Transport};
pub use error::{CertificateProblem, FieldViolation, GatewayError};

pub type Result<T, E = GatewayError> = std::result::Result<T, E>;

/// Which workspaces a list covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkspaceScope {
    One(WorkspaceName),
    All,
}

impl Default for WorkspaceScope {
    fn default() -> Self {
        Self::One(WorkspaceName::default())
    }
}

/// Status of one policy revision plus the version that is active now.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyStatusReport {
    pub revision: PolicyRevision,
    pub active_version: u32,
}

/// Default cap for collected exec output (each of stdout and stderr).
pub const EXEC_OUTPUT_CAP: usize = 1024 * 1024;

/// A domain-typed OpenShell 0.1 gateway.
///
/// Every mutation that the protocol lets carry a `request_id` gets a fresh one
/// per logical call, so the implementation may retry it safely.
#[async_trait]
pub trait Gateway: Send + Sync {
    // --- gateway facts -------------------------------------------------
    async fn health(&self) -> Result<Health>;
    async fn gateway_info(&self) -> Result<GatewayInfo>;
    async fn current_user(&self) -> Result<CurrentUser>;

    // --- sandboxes -----------------------------------------------------
    async fn list_sandboxes(
        &self,
        scope: &WorkspaceScope,
        selector: &LabelSelector,
        page: &PageRequest,
    ) -> Result<Page<Sandbox>>;
    async fn get_sandbox(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<Sandbox>;
    async fn create_sandbox(&self, new: &NewSandbox) -> Result<Sandbox>;
    async fn delete_sandbox(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        allow_missing: bool,
    ) -> Result<SandboxDeletion>;
    async fn stop_sandbox(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<Sandbox>;
    async fn start_sandbox(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<Sandbox>;
    /// Snapshot first, then changes, until the server ends the stream or the
    /// caller drops it.
    async fn watch_sandbox(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        options: &WatchOptions,
    ) -> Result<BoxStream<'static, Result<WatchEvent>>>;
    /// Streams stdout/stderr chunks and then one exit event.
    async fn exec_stream(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        request: &ExecRequest,
    ) -> Result<BoxStream<'static, Result<ExecEvent>>>;
    async fn sandbox_logs(&self, ws: &WorkspaceName, name: &SandboxName, query: &LogQuery) -> Result<SandboxLogs>;
    async fn create_ssh_session(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<SshSession>;
    async fn revoke_ssh_session(&self, token: &Secret, allow_missing: bool) -> Result<DeletionOutcome>;

    // --- providers -----------------------------------------------------
    async fn list_providers(&self, ws: &WorkspaceName, page: &PageRequest) -> Result<Page<Provider>>;
    async fn get_provider(&self, ws: &WorkspaceName, name: &ProviderName) -> Result<Provider>;
    async fn create_provider(&self, ws: &WorkspaceName, spec: &ProviderSpec) -> Result<Provider>;
    async fn update_provider(&self, ws: &WorkspaceName, spec: &ProviderSpec) -> Result<Provider>;
    async fn delete_provider(
        &self,
        ws: &WorkspaceName,
        name: &ProviderName,
        allow_missing: bool,
    ) -> Result<DeletionOutcome>;
    async fn list_provider_profiles(&self, ws: &WorkspaceName, page: &PageRequest) -> Result<Page<ProviderProfile>>;
    async fn get_provider_profile(&self, ws: &WorkspaceName, id: &str) -> Result<ProviderProfile>;
    async fn delete_provider_profile(&self, ws: &WorkspaceName, id: &str) -> Result<DeletionOutcome>;
    async fn list_sandbox_providers(
        &self,
        ws: &WorkspaceName,
        sandbox: &SandboxName,
        page: &PageRequest,
    ) -> Result<Page<Provider>>;
    async fn attach_provider(
        &self,
        ws: &WorkspaceName,
        sandbox: &SandboxName,
        provider: &ProviderName,
    ) -> Result<ProviderAttachment>;
    async fn detach_provider(
        &self,
        ws: &WorkspaceName,
        sandbox: &SandboxName,
        provider: &ProviderName,
    ) -> Result<ProviderAttachment>;

    // --- config, settings and policy -----------------------------------
    async fn sandbox_config(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<SandboxConfig>;
    async fn gateway_settings(&self) -> Result<GatewaySettings>;
    /// `sandbox: None` targets gateway-wide settings.
    async fn update_config(
        &self,
        ws: &WorkspaceName,
        sandbox: Option<&SandboxName>,
        change: &ConfigChange,
        expected_resource_version: Option<u64>,
    ) -> Result<ConfigUpdateResult>;
    /// `version: None` asks for the newest revision.
    async fn policy_status(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        version: Option<u32>,
    ) -> Result<PolicyStatusReport>;
    async fn list_policy_revisions(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        page: &PageRequest,
    ) -> Result<Page<PolicyRevision>>;

    // --- draft chunks --------------------------------------------------
    async fn draft_policy(&self, ws: &WorkspaceName, name: &SandboxName, status_filter: &str) -> Result<DraftPolicy>;
    async fn approve_chunk(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        chunk_id: &str,
        review_token: &str,
    ) -> Result<PolicyVersionRef>;
    async fn reject_chunk(&self, ws: &WorkspaceName, name: &SandboxName, chunk_id: &str, reason: &str) -> Result<()>;
    async fn approve_all_chunks(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        include_security_flagged: bool,
    ) -> Result<ApproveAllResult>;
    async fn edit_chunk(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        chunk_id: &str,
        rule: &NetworkRule,
    ) -> Result<()>;
    async fn undo_chunk(&self, ws: &WorkspaceName, name: &SandboxName, chunk_id: &str) -> Result<PolicyVersionRef>;
    async fn clear_chunks(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<u32>;
    async fn draft_history(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<Vec<DraftHistoryEntry>>;

    // --- workspaces ----------------------------------------------------
    async fn list_workspaces(&self, page: &PageRequest) -> Result<Page<Workspace>>;
    async fn get_workspace(&self, name: &WorkspaceName) -> Result<Workspace>;
    async fn create_workspace(&self, name: &WorkspaceName, labels: &Labels) -> Result<Workspace>;
    async fn delete_workspace(&self, name: &WorkspaceName, allow_missing: bool) -> Result<DeletionOutcome>;

    /// Runs a command and collects its output, each stream capped at
    /// `cap` bytes. Returns as soon as the exit event or end of stream
    /// arrives; a stream that ends without an exit event is an error.
    async fn exec(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        request: &ExecRequest,
        cap: usize,
    ) -> Result<ExecOutput> {
        let mut stream = self.exec_stream(ws, name, request).await?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut truncated = false;
        let mut push = |buf: &mut Vec<u8>, data: &[u8]| {
            let room = cap.saturating_sub(buf.len());
            if data.len() > room {
                truncated = true;
            }
            buf.extend_from_slice(&data[..data.len().min(room)]);
        };
        while let Some(event) = stream.next().await {
            match event? {
                ExecEvent::Stdout(d) => push(&mut out, &d),
                ExecEvent::Stderr(d) => push(&mut err, &d),
                ExecEvent::Exit(code) => {
                    return Ok(ExecOutput {
                        stdout: String::from_utf8_lossy(&out).into_owned(),
                        stderr: String::from_utf8_lossy(&err).into_owned(),
                        exit_code: code,
                        truncated,
                    });
                }
            }
        }
        Err(GatewayError::InvalidResponse { message: "exec stream ended without an exit code".into() })
    }
}
