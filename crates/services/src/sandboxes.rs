//! Sandboxes on registered gateways: listing, reading, exec and logs.
//! (Creation with presets, deletion, SSH sessions and the rest of the
//! lifecycle arrive with the rest of issue 5.)

use std::collections::BTreeMap;
use std::time::Duration;

use breakwater_domain::operation::{Operation, OperationError};
use breakwater_domain::policy::Policy;
use breakwater_domain::registry::GatewayName;
use breakwater_domain::sandbox::{
    DeletionOutcome, ExecOutput, ExecRequest, LogQuery, NewSandbox, Sandbox, SandboxDeletion, SandboxLogs,
    SandboxPhase, SshSession, WatchEvent, WatchOptions, split_command,
};
use breakwater_domain::{LabelSelector, Labels, SandboxName, Secret, WorkspaceName};
use breakwater_gateway::{Gateway, WorkspaceScope};
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::{Actor, GatewayService, NewOperation, OperationService, PolicyService, Result, ServiceError};

/// An exec without `timeout_seconds` gets this much.
pub const EXEC_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// And may ask for at most this much.
pub const EXEC_MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Each of stdout and stderr is cut at this size.
pub const EXEC_OUTPUT_CAP: usize = 1024 * 1024;

/// A command as clients send it: an argument vector, or one string split
/// the way a shell splits words (no expansion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Argv(Vec<String>),
    Line(String),
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecInput {
    pub command: Command,
    pub workdir: Option<String>,
    pub env: BTreeMap<String, String>,
    pub timeout_seconds: Option<u64>,
}

/// Which log lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogFilter {
    pub lines: Option<u32>,
    pub since: Option<DateTime<Utc>>,
    pub sources: Vec<String>,
    pub min_level: Option<String>,
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

fn invalid(field: &str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid { field: field.into(), message: message.into() }
}

/// A sandbox to create.
#[derive(Clone, Debug, Default)]
pub struct CreateSandbox {
    pub name: String,
    pub image: Option<String>,
    pub providers: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub policy: Option<Policy>,
    pub presets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// Sandboxes. Cheap to clone.
#[derive(Clone)]
pub struct SandboxService {
    gateways: GatewayService,
    operations: OperationService,
    policies: PolicyService,
    ready_deadline: Duration,
}

impl SandboxService {
    #[must_use]
    pub fn new(gateways: GatewayService, operations: OperationService, policies: PolicyService) -> Self {
        Self { gateways, operations, policies, ready_deadline: Duration::from_secs(180) }
    }

    /// How long a create waits for READY (180 s unless changed).
    #[must_use]
    pub fn with_ready_deadline(mut self, deadline: Duration) -> Self {
        self.ready_deadline = deadline;
        self
    }

    /// Starts creating a sandbox as an operation: create, wait for READY on
    /// the watch stream, then apply the presets in order (progress after
    /// each). A preset that fails does not lose the sandbox: the result says
    /// which failed and why. The same idempotency key gives the same
    /// operation; a name with an operation in progress is a conflict.
    pub async fn create(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        input: CreateSandbox,
        idempotency_key: Option<&str>,
    ) -> Result<Operation> {
        let name = SandboxName::parse(&input.name)?;
        let labels = Labels::parse(input.labels.clone())?;
        for preset in &input.presets {
            self.policies.preset(preset)?;
        }
        let mut policy = input.policy.clone();
        if let Some(p) = policy.as_mut() {
            p.normalise();
            p.validate().map_err(|v| invalid("policy", v.to_string()))?;
        }
        self.gateways.get(gw).await?;
        let (op, created) = self
            .operations
            .create_tracked(
                actor,
                NewOperation {
                    gateway: Some(gw.as_str()),
                    resource_type: "sandbox",
                    resource_name: name.as_str(),
                    action: "create",
                    idempotency_key: idempotency_key.map(|k| ("POST /api/gateways/{gw}/sandboxes", k)),
                },
            )
            .await?;
        if !created {
            return Ok(op);
        }
        self.gateways
            .audit()
            .log(
                actor,
                "sandbox.create",
                "sandbox",
                name.as_str(),
                Some(gw.as_str()),
                serde_json::json!({"operation": op.id, "image": input.image, "presets": input.presets, "providers": input.providers}),
            )
            .await;
        let new = NewSandbox {
            name: Some(name.clone()),
            workspace: WorkspaceName::default(),
            labels,
            image: input.image.clone().unwrap_or_default(),
            environment: input.environment.clone(),
            providers: input.providers.clone(),
            policy,
            command: Vec::new(),
        };
        let (this, actor, gw) = (self.clone(), actor.clone(), gw.clone());
        let id = op.id.clone();
        let _task =
            self.operations.spawn(&op, async move { this.run_create(&actor, &gw, &id, new, input.presets).await });
        Ok(op)
    }

    async fn run_create(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        op: &str,
        new: NewSandbox,
        presets: Vec<String>,
    ) -> std::result::Result<serde_json::Value, (OperationError, String)> {
        let gateway_failure = |e: ServiceError| match e {
            ServiceError::Gateway(g) if g.is_connection_failure() => {
                (OperationError::GatewayUnavailable, g.to_string())
            }
            other => (OperationError::Gateway, other.to_string()),
        };
        let name = new.name.clone().unwrap_or_else(|| SandboxName::parse("unnamed").expect("a valid name"));
        let created = self
            .gateways
            .with_gateway(gw, |c| async move { c.create_sandbox(&new).await })
            .await
            .map_err(gateway_failure)?;
        let _ = self.operations.progress(op, 10, "created; waiting for the sandbox to be ready").await;
        self.wait_ready(gw, &name).await?;
        let _ = self.operations.progress(op, 40, "ready").await;
        let mut statuses = serde_json::Map::new();
        let n = presets.len().max(1);
        for (i, preset) in presets.iter().enumerate() {
            let status = match self.policies.apply_preset(actor, gw, &name, preset, false).await {
                Ok(out) => serde_json::json!({"status": "applied", "result": out.status, "version": out.version}),
                Err(e) => serde_json::json!({"status": "failed", "error": e.to_string()}),
            };
            statuses.insert(preset.clone(), status);
            let percent = u8::try_from(40 + 60 * (i + 1) / n).unwrap_or(100);
            let _ = self.operations.progress(op, percent, &format!("preset {preset} done")).await;
        }
        let failed: Vec<&String> = statuses.iter().filter(|(_, v)| v["status"] == "failed").map(|(k, _)| k).collect();
        Ok(serde_json::json!({
            "sandbox": name.as_str(),
            "id": created.id,
            "presets": statuses,
            "presets_failed": failed,
        }))
    }

    /// Follows the watch stream until READY; a terminal phase or the
    /// deadline ends it with the last phase and condition message.
    async fn wait_ready(
        &self,
        gw: &GatewayName,
        sb: &SandboxName,
    ) -> std::result::Result<(), (OperationError, String)> {
        let ws = WorkspaceName::default();
        let options = WatchOptions { follow_status: true, ..WatchOptions::default() };
        let mut stream = self
            .gateways
            .with_gateway(gw, |c| async move { c.watch_sandbox(&ws, sb, &options).await })
            .await
            .map_err(|e| (OperationError::Gateway, e.to_string()))?;
        let mut last = String::from("unknown");
        let deadline = tokio::time::Instant::now() + self.ready_deadline;
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => {
                    return Err((
                        OperationError::Timeout,
                        format!("not ready after {} s; last seen: {last}", self.ready_deadline.as_secs()),
                    ));
                }
                Ok(None) => {
                    return Err((OperationError::Gateway, format!("the watch stream ended; last seen: {last}")));
                }
                Ok(Some(Err(e))) => return Err((OperationError::Gateway, e.to_string())),
                Ok(Some(Ok(WatchEvent::Sandbox(s)))) => {
                    last = s.status_summary();
                    match s.phase {
                        SandboxPhase::Ready => return Ok(()),
                        SandboxPhase::Error | SandboxPhase::Deleting | SandboxPhase::Completed => {
                            return Err((OperationError::Gateway, format!("the sandbox did not start: {last}")));
                        }
                        _ => {}
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// One page (`limit` from `offset`) over the gateway's own pages, and
    /// whether more follow.
    pub async fn list(
        &self,
        gw: &GatewayName,
        selector: &LabelSelector,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<Sandbox>, bool)> {
        crate::window(limit.clamp(1, 1000) as usize, offset as usize, 500, |p| async move {
            self.gateways
                .with_gateway(gw, |c| async move { c.list_sandboxes(&WorkspaceScope::All, selector, &p).await })
                .await
        })
        .await
    }

    pub async fn get(&self, gw: &GatewayName, sb: &SandboxName) -> Result<Sandbox> {
        let ws = WorkspaceName::default();
        self.gateways.with_gateway(gw, |c| async move { c.get_sandbox(&ws, sb).await }).await
    }

    /// Runs a command and collects its output (each stream capped).
    pub async fn exec(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        input: ExecInput,
    ) -> Result<ExecOutput> {
        let argv = match input.command {
            Command::Argv(v) if v.is_empty() || v[0].is_empty() => {
                return Err(invalid("command", "the command is empty"));
            }
            Command::Argv(v) => v,
            Command::Line(line) => split_command(&line).map_err(|m| invalid("command", m))?,
        };
        let timeout = match input.timeout_seconds {
            None => EXEC_DEFAULT_TIMEOUT,
            Some(0) => return Err(invalid("timeout_seconds", "must be at least 1")),
            Some(s) if Duration::from_secs(s) > EXEC_MAX_TIMEOUT => {
                return Err(invalid(
                    "timeout_seconds",
                    format!("at most {} seconds; run longer work as a background process", EXEC_MAX_TIMEOUT.as_secs()),
                ));
            }
            Some(s) => Duration::from_secs(s),
        };
        let request = ExecRequest {
            command: argv.clone(),
            workdir: input.workdir.unwrap_or_default(),
            environment: input.env.clone(),
            stdin: Vec::new(),
            timeout: Some(timeout),
        };
        let ws = WorkspaceName::default();
        let out =
            self.gateways.with_gateway(gw, |c| async move { c.exec(&ws, sb, &request, EXEC_OUTPUT_CAP).await }).await?;
        // The command is recorded; environment values may be secrets, so only their names.
        self.gateways
            .audit()
            .log(
                actor,
                "sandbox.exec",
                "sandbox",
                sb.as_str(),
                Some(gw.as_str()),
                serde_json::json!({
                    "command": argv,
                    "env": input.env.keys().collect::<Vec<_>>(),
                    "exit_code": out.exit_code,
                }),
            )
            .await;
        Ok(out)
    }

    async fn audit(&self, actor: &Actor, action: &str, gw: &GatewayName, sb: &SandboxName, detail: serde_json::Value) {
        self.gateways.audit().log(actor, action, "sandbox", sb.as_str(), Some(gw.as_str()), detail).await;
    }

    /// Deletes the sandbox; the outcome says whether it is gone or going.
    pub async fn delete(&self, actor: &Actor, gw: &GatewayName, sb: &SandboxName) -> Result<SandboxDeletion> {
        let ws = WorkspaceName::default();
        let out = self.gateways.with_gateway(gw, |c| async move { c.delete_sandbox(&ws, sb, false).await }).await?;
        self.audit(actor, "sandbox.delete", gw, sb, serde_json::json!({"outcome": out.outcome, "id": out.sandbox_id}))
            .await;
        Ok(out)
    }

    pub async fn stop(&self, actor: &Actor, gw: &GatewayName, sb: &SandboxName) -> Result<Sandbox> {
        let ws = WorkspaceName::default();
        let out = self.gateways.with_gateway(gw, |c| async move { c.stop_sandbox(&ws, sb).await }).await?;
        self.audit(actor, "sandbox.stop", gw, sb, serde_json::json!({})).await;
        Ok(out)
    }

    pub async fn start(&self, actor: &Actor, gw: &GatewayName, sb: &SandboxName) -> Result<Sandbox> {
        let ws = WorkspaceName::default();
        let out = self.gateways.with_gateway(gw, |c| async move { c.start_sandbox(&ws, sb).await }).await?;
        self.audit(actor, "sandbox.start", gw, sb, serde_json::json!({})).await;
        Ok(out)
    }

    /// An SSH session into the sandbox. The gateway's answer is checked by
    /// the client (host, port and token charsets) before anyone uses it; the
    /// token goes back to the caller once and never into the audit trail.
    pub async fn ssh_session(&self, actor: &Actor, gw: &GatewayName, sb: &SandboxName) -> Result<SshSession> {
        let ws = WorkspaceName::default();
        let session = self.gateways.with_gateway(gw, |c| async move { c.create_ssh_session(&ws, sb).await }).await?;
        let detail = serde_json::json!({
            "host": session.gateway_host,
            "port": session.gateway_port,
            "expires_at": session.expires_at,
        });
        self.audit(actor, "sandbox.ssh.create", gw, sb, detail).await;
        Ok(session)
    }

    pub async fn revoke_ssh_session(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        token: &Secret,
    ) -> Result<DeletionOutcome> {
        let out = self.gateways.with_gateway(gw, |c| async move { c.revoke_ssh_session(token, false).await }).await?;
        self.audit(actor, "sandbox.ssh.revoke", gw, sb, serde_json::json!({})).await;
        Ok(out)
    }

    pub async fn logs(&self, gw: &GatewayName, sb: &SandboxName, filter: LogFilter) -> Result<SandboxLogs> {
        let min_level = match filter.min_level.as_deref().map(str::to_ascii_lowercase) {
            None => String::new(),
            Some(l) if l == "warning" => "warn".to_owned(),
            Some(l) if LEVELS.contains(&l.as_str()) => l,
            Some(l) => return Err(invalid("min_level", format!("{l:?} is not one of {}", LEVELS.join(", ")))),
        };
        let query = LogQuery {
            lines: filter.lines.unwrap_or(0).min(10_000),
            since: filter.since,
            sources: filter.sources,
            min_level,
        };
        let ws = WorkspaceName::default();
        self.gateways.with_gateway(gw, |c| async move { c.sandbox_logs(&ws, sb, &query).await }).await
    }
}
