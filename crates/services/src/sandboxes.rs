//! Sandboxes on registered gateways: listing, reading, exec and logs.
//! (Creation with presets, deletion, SSH sessions and the rest of the
//! lifecycle arrive with the rest of issue 5.)

use std::collections::BTreeMap;
use std::time::Duration;

use breakwater_domain::registry::GatewayName;
use breakwater_domain::sandbox::{
    DeletionOutcome, ExecOutput, ExecRequest, LogQuery, Sandbox, SandboxDeletion, SandboxLogs, SshSession,
    split_command,
};
use breakwater_domain::{LabelSelector, PageRequest, SandboxName, Secret, WorkspaceName};
use breakwater_gateway::{Gateway, WorkspaceScope};
use chrono::{DateTime, Utc};

use crate::{Actor, GatewayService, Result, ServiceError};

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

/// Sandboxes. Cheap to clone.
#[derive(Clone)]
pub struct SandboxService {
    gateways: GatewayService,
}

impl SandboxService {
    #[must_use]
    pub fn new(gateways: GatewayService) -> Self {
        Self { gateways }
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
        let limit = limit.clamp(1, 1000) as usize;
        let want = offset as usize + limit;
        let mut all = Vec::new();
        let mut page = PageRequest::first(500);
        loop {
            let p = page.clone();
            let got = self
                .gateways
                .with_gateway(gw, |c| async move { c.list_sandboxes(&WorkspaceScope::All, selector, &p).await })
                .await?;
            all.extend(got.items);
            if got.next_page_token.is_empty() || all.len() > want {
                let more = !got.next_page_token.is_empty() || all.len() > want;
                return Ok((all.into_iter().skip(offset as usize).take(limit).collect(), more));
            }
            page = PageRequest { page_size: 500, page_token: got.next_page_token };
        }
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
