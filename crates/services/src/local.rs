//! Gateways on this machine, driven through the `docker` and `openshell`
//! CLIs: diagnostics, start, stop, restart, create and destroy.
//!
//! The CLIs are found on a search path (the process `PATH` unless told
//! otherwise), every run has a timeout and is killed when it expires, and a
//! missing tool is an error that says what to install rather than a crash.
//! A local gateway runs in the container `openshell-cluster-<name>`; the CLI
//! writes its connection details under its config directory, which is how a
//! newly created gateway gets registered (see [`crate::import`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use breakwater_domain::registry::GatewayName;
use breakwater_domain::{LabelSelector, PageRequest, WorkspaceName, sanitize};
use breakwater_gateway::{Gateway, WorkspaceScope};
use serde::Serialize;

use crate::{Actor, GatewayService, Result, ServiceError};

/// Output we keep from a CLI run (and show, sanitised).
const MAX_OUTPUT: usize = 4096;

/// Where the CLIs are and how long they may take.
#[derive(Clone, Debug)]
pub struct LocalTools {
    /// Directories searched for `docker`, `openshell` and `id`; `None` = `$PATH`.
    pub search_path: Option<OsString>,
    /// The OpenShell CLI's config directory (for registering created gateways).
    pub openshell_config_dir: Option<PathBuf>,
    /// Quick queries (`docker info`, `docker inspect`, `--version`).
    pub probe_timeout: Duration,
    /// `docker start` / `docker stop`, `openshell gateway destroy`.
    pub action_timeout: Duration,
    /// `openshell gateway start`: pulls images and boots a cluster.
    pub create_timeout: Duration,
}

impl Default for LocalTools {
    fn default() -> Self {
        Self {
            search_path: None,
            openshell_config_dir: crate::import::default_openshell_config_dir(),
            probe_timeout: Duration::from_secs(5),
            action_timeout: Duration::from_secs(60),
            create_timeout: Duration::from_secs(600),
        }
    }
}

/// What a local CLI run failed with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    #[error("the {tool} CLI was not found on PATH; {hint}")]
    ToolMissing { tool: &'static str, hint: &'static str },
    #[error("`{command}` did not finish within {seconds} s and was stopped")]
    Timeout { command: String, seconds: u64 },
    #[error("`{command}` failed: {message}")]
    CommandFailed { command: String, message: String },
    #[error("the Docker daemon is not usable: {message}")]
    DockerUnavailable { message: String },
}

/// Facts about this machine's ability to run local gateways.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
// Mirrors the diagnostics ShoreGuard clients read, one flag per fact.
#[allow(clippy::struct_excessive_bools)]
pub struct Diagnostics {
    pub docker_installed: bool,
    pub docker_daemon_running: bool,
    pub docker_accessible: bool,
    pub docker_version: Option<String>,
    pub docker_error: Option<String>,
    pub openshell_installed: bool,
    pub openshell_version: Option<String>,
    pub user: String,
    pub user_groups: Vec<String>,
    pub in_docker_group: bool,
    /// What to do next, in words, when something above is missing.
    pub advice: Vec<String>,
}

/// Outcome of a lifecycle action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalActionResult {
    pub success: bool,
    pub gateway: String,
    pub action: &'static str,
    /// What happened, for people.
    pub output: String,
    /// Set when the gateway is registered and was tested after the action.
    pub connected: Option<bool>,
}

/// `docker create` options for a new local gateway.
#[derive(Clone, Debug, Default)]
pub struct CreateLocalGateway {
    pub name: String,
    pub port: Option<u16>,
    pub remote_host: Option<String>,
    pub gpu: bool,
}

struct RunOutput {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn cap(s: &str) -> String {
    sanitize(s.trim(), MAX_OUTPUT)
}

/// Local gateway lifecycle. Cheap to clone.
#[derive(Clone)]
pub struct LocalGatewayManager {
    gateways: GatewayService,
    tools: LocalTools,
}

const DOCKER_HINT: &str = "install Docker (https://docs.docker.com/engine/install/) to run gateways on this machine";
const OPENSHELL_HINT: &str = "install the OpenShell CLI (https://docs.nvidia.com/openshell/latest/) and put `openshell` on PATH to manage local gateways";

fn container(name: &GatewayName) -> String {
    format!("openshell-cluster-{name}")
}

impl LocalGatewayManager {
    #[must_use]
    pub fn new(gateways: GatewayService, tools: LocalTools) -> Self {
        Self { gateways, tools }
    }

    #[must_use]
    pub fn tools(&self) -> &LocalTools {
        &self.tools
    }

    /// The executable `tool` on the search path, if any.
    fn which(&self, tool: &str) -> Option<PathBuf> {
        let path = self.tools.search_path.clone().or_else(|| std::env::var_os("PATH"))?;
        std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|p| is_executable(p))
    }

    async fn run(&self, tool: &'static str, args: &[&str], timeout: Duration) -> Result<RunOutput, LocalError> {
        let hint = if tool == "docker" { DOCKER_HINT } else { OPENSHELL_HINT };
        let exe = self.which(tool).ok_or(LocalError::ToolMissing { tool, hint })?;
        let command = format!("{tool} {}", args.join(" "));
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        if let Some(path) = &self.tools.search_path {
            // The tools' own children (docker plugins, ...) look where we looked.
            cmd.env("PATH", path);
        }
        let child = cmd.spawn().map_err(|e| LocalError::CommandFailed {
            command: command.clone(),
            message: format!("cannot start: {e}"),
        })?;
        tracing::info!(%command, "running local CLI");
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => Err(LocalError::Timeout { command, seconds: timeout.as_secs() }),
            Ok(Err(e)) => Err(LocalError::CommandFailed { command, message: e.to_string() }),
            Ok(Ok(out)) => Ok(RunOutput {
                ok: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }),
        }
    }

    /// Runs and requires success.
    async fn run_ok(&self, tool: &'static str, args: &[&str], timeout: Duration) -> Result<String, LocalError> {
        let out = self.run(tool, args, timeout).await?;
        if out.ok {
            Ok(cap(&out.stdout))
        } else {
            let message = if out.stderr.trim().is_empty() { cap(&out.stdout) } else { cap(&out.stderr) };
            Err(LocalError::CommandFailed { command: format!("{tool} {}", args.join(" ")), message })
        }
    }

    // ------------------------------------------------------------ diagnostics

    pub async fn diagnostics(&self) -> Diagnostics {
        let mut d = Diagnostics {
            user: std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into()),
            ..Diagnostics::default()
        };
        d.docker_installed = self.which("docker").is_some();
        if d.docker_installed {
            match self.run("docker", &["info", "--format", "{{.ServerVersion}}"], self.tools.probe_timeout).await {
                Ok(out) if out.ok => {
                    d.docker_daemon_running = true;
                    d.docker_accessible = true;
                    d.docker_version = Some(cap(&out.stdout));
                }
                Ok(out) => {
                    let err = out.stderr.to_ascii_lowercase();
                    d.docker_error = Some(if err.contains("permission denied") {
                        d.docker_daemon_running = true;
                        "permission denied on the Docker socket".to_owned()
                    } else if err.contains("is the docker daemon running") || err.contains("cannot connect") {
                        "the Docker daemon is not running".to_owned()
                    } else {
                        cap(&out.stderr)
                    });
                }
                Err(e) => d.docker_error = Some(e.to_string()),
            }
        } else {
            d.advice.push(DOCKER_HINT.to_owned());
        }
        if let Some(groups) = self.id(&["-Gn"]).await {
            d.user_groups = groups.split_whitespace().map(str::to_owned).collect();
            d.in_docker_group = d.user_groups.iter().any(|g| g == "docker");
        }
        if d.user == "unknown"
            && let Some(user) = self.id(&["-un"]).await
        {
            user.trim().clone_into(&mut d.user);
        }
        match d.docker_error.as_deref() {
            Some("permission denied on the Docker socket") if !d.in_docker_group => d.advice.push(format!(
                "add {} to the docker group (`sudo usermod -aG docker {}`), then log in again",
                d.user, d.user
            )),
            Some("the Docker daemon is not running") => {
                d.advice.push("start the Docker daemon (`sudo systemctl start docker`)".into());
            }
            _ => {}
        }
        d.openshell_installed = self.which("openshell").is_some();
        if d.openshell_installed {
            if let Ok(out) = self.run("openshell", &["--version"], self.tools.probe_timeout).await
                && out.ok
            {
                d.openshell_version = Some(cap(&out.stdout));
            }
        } else {
            d.advice.push(OPENSHELL_HINT.to_owned());
        }
        d
    }

    /// `id ARGS` output, when `id` exists and succeeds.
    async fn id(&self, args: &[&str]) -> Option<String> {
        let exe = self.which("id")?;
        let run = tokio::process::Command::new(exe).args(args).stdin(Stdio::null()).kill_on_drop(true).output();
        match tokio::time::timeout(self.tools.probe_timeout, run).await {
            Ok(Ok(out)) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
            _ => None,
        }
    }

    // ------------------------------------------------------------ lifecycle

    async fn require_docker(&self) -> Result<(), LocalError> {
        let out = self.run("docker", &["info", "--format", "{{.ServerVersion}}"], self.tools.probe_timeout).await?;
        if out.ok {
            return Ok(());
        }
        let err = out.stderr.to_ascii_lowercase();
        let message = if err.contains("permission denied") {
            "permission denied on the Docker socket; add this user to the docker group".to_owned()
        } else if err.contains("is the docker daemon running") || err.contains("cannot connect") {
            "the daemon is not running; start it first (`sudo systemctl start docker`)".to_owned()
        } else {
            cap(&out.stderr)
        };
        Err(LocalError::DockerUnavailable { message })
    }

    /// `running`, `exited`, ... or `None` when there is no such container.
    async fn container_status(&self, name: &GatewayName) -> Result<Option<String>, LocalError> {
        let c = container(name);
        let out = self.run("docker", &["inspect", "-f", "{{.State.Status}}", &c], self.tools.probe_timeout).await?;
        Ok(out.ok.then(|| out.stdout.trim().to_owned()))
    }

    /// After an action: when the gateway is registered, forget the old
    /// connection and test afresh.
    async fn retest(&self, name: &GatewayName) -> Result<Option<bool>> {
        self.gateways.forget_connection(name);
        if self.gateways.store().get_gateway(name).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.gateways.test_connection(name).await?.success))
    }

    async fn audited(
        &self,
        actor: &Actor,
        action: &'static str,
        name: &GatewayName,
        outcome: Result<String, LocalError>,
        detail: serde_json::Value,
    ) -> Result<String> {
        let mut detail = detail;
        if let serde_json::Value::Object(map) = &mut detail {
            map.insert("success".into(), outcome.is_ok().into());
            if let Err(e) = &outcome {
                map.insert("error".into(), e.to_string().into());
            }
        }
        self.gateways
            .audit()
            .log(actor, &format!("gateway.local.{action}"), "gateway", name.as_str(), Some(name.as_str()), detail)
            .await;
        outcome.map_err(ServiceError::Local)
    }

    async fn do_start(&self, name: &GatewayName) -> Result<String, LocalError> {
        self.require_docker().await?;
        match self.container_status(name).await?.as_deref() {
            Some("running") => Ok("the gateway is already running".into()),
            Some(_) => {
                self.run_ok("docker", &["start", &container(name)], self.tools.action_timeout).await?;
                Ok(format!("container {} started", container(name)))
            }
            None => {
                let out = self
                    .run_ok("openshell", &["gateway", "start", "--name", name.as_str()], self.tools.create_timeout)
                    .await?;
                Ok(if out.is_empty() { "gateway started by the OpenShell CLI".into() } else { out })
            }
        }
    }

    async fn do_stop(&self, name: &GatewayName) -> Result<String, LocalError> {
        self.require_docker().await?;
        match self.container_status(name).await?.as_deref() {
            Some("running" | "restarting" | "paused") => {
                self.run_ok("docker", &["stop", &container(name)], self.tools.action_timeout).await?;
                Ok(format!("container {} stopped", container(name)))
            }
            Some(_) => Ok("the gateway is already stopped".into()),
            None => Ok(format!("no container {} exists; nothing to stop", container(name))),
        }
    }

    fn result(name: &GatewayName, action: &'static str, output: String, connected: Option<bool>) -> LocalActionResult {
        LocalActionResult { success: true, gateway: name.to_string(), action, output, connected }
    }

    pub async fn start(&self, actor: &Actor, name: &GatewayName) -> Result<LocalActionResult> {
        let outcome = self.do_start(name).await;
        let output = self.audited(actor, "start", name, outcome, serde_json::json!({})).await?;
        let connected = self.retest(name).await?;
        Ok(Self::result(name, "start", output, connected))
    }

    pub async fn stop(&self, actor: &Actor, name: &GatewayName) -> Result<LocalActionResult> {
        let outcome = self.do_stop(name).await;
        let output = self.audited(actor, "stop", name, outcome, serde_json::json!({})).await?;
        self.gateways.forget_connection(name);
        Ok(Self::result(name, "stop", output, None))
    }

    pub async fn restart(&self, actor: &Actor, name: &GatewayName) -> Result<LocalActionResult> {
        let outcome = match self.do_stop(name).await {
            Ok(stopped) => self.do_start(name).await.map(|started| format!("{stopped}; {started}")),
            Err(e) => Err(e),
        };
        let output = self.audited(actor, "restart", name, outcome, serde_json::json!({})).await?;
        let connected = self.retest(name).await?;
        Ok(Self::result(name, "restart", output, connected))
    }

    /// Creates a gateway with the OpenShell CLI, then registers it from the
    /// files the CLI wrote.
    pub async fn create(&self, actor: &Actor, input: CreateLocalGateway) -> Result<LocalActionResult> {
        let name = GatewayName::parse(&input.name)?;
        if self.gateways.store().get_gateway(&name).await?.is_some() {
            return Err(ServiceError::Conflict { what: format!("gateway {name}") });
        }
        if let Some(host) = &input.remote_host {
            let ok = !host.is_empty()
                && host.len() <= 253
                && !host.starts_with('-')
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_@:[]".contains(&b));
            if !ok {
                return Err(ServiceError::Invalid {
                    field: "remote_host".into(),
                    message: "must be a host name, user@host or an IP address".into(),
                });
            }
        }
        let port = match input.port {
            Some(0) => return Err(ServiceError::Invalid { field: "port".into(), message: "must be 1-65535".into() }),
            Some(p) => {
                if let Some(other) = self.port_owner(p).await? {
                    return Err(ServiceError::Invalid {
                        field: "port".into(),
                        message: format!("port {p} is already used by gateway {other}; choose another"),
                    });
                }
                p
            }
            None => self.free_port().await?,
        };
        let port_s = port.to_string();
        let mut args = vec!["gateway", "start", "--name", name.as_str(), "--port", &port_s];
        if let Some(host) = &input.remote_host {
            args.extend(["--remote", host]);
        }
        if input.gpu {
            args.push("--gpu");
        }
        let outcome = async {
            self.require_docker().await?;
            self.run_ok("openshell", &args, self.tools.create_timeout).await
        }
        .await;
        let detail = serde_json::json!({"port": port, "remote_host": input.remote_host, "gpu": input.gpu});
        let mut output = self.audited(actor, "create", &name, outcome, detail).await?;

        let connected = match &self.tools.openshell_config_dir {
            Some(dir) => {
                let report = self.gateways.import_openshell_config(actor, dir).await?;
                if report.imported.iter().any(|n| n == name.as_str()) {
                    Some(self.gateways.get(&name).await?.health.status.as_str() == "connected")
                } else {
                    let why = report
                        .skipped
                        .iter()
                        .chain(&report.conflicts)
                        .find(|p| p.name == name.as_str())
                        .map_or_else(|| format!("nothing found under {}", report.directory), |p| p.reason.clone());
                    output = format!("{output}; not registered: {why}");
                    None
                }
            }
            None => None,
        };
        Ok(Self::result(&name, "create", output, connected))
    }

    /// Destroys a local gateway with the OpenShell CLI and unregisters it.
    ///
    /// Only gateways the CLI manages on this machine (an entry in its config
    /// directory) qualify: a remote gateway is unregistered, never destroyed.
    /// While the gateway still holds sandboxes or providers the request is
    /// refused unless `force`; nothing is deleted one by one, since the
    /// gateway takes its sandboxes with it, and nothing at all is touched
    /// before the checks pass.
    pub async fn destroy(&self, actor: &Actor, name: &GatewayName, force: bool) -> Result<LocalActionResult> {
        let outcome = self.do_destroy(name, force).await;
        let detail = serde_json::json!({"force": force});
        let output = match outcome {
            Ok(out) => self.audited(actor, "destroy", name, Ok(out), detail).await?,
            // A CLI failure is an attempted change: audited. A refusal is not.
            Err(ServiceError::Local(e)) => self.audited(actor, "destroy", name, Err(e), detail).await?,
            Err(e) => return Err(e),
        };
        self.gateways.forget_connection(name);
        if self.gateways.store().get_gateway(name).await?.is_some() {
            // The destroy entry above records the whole change.
            self.gateways.store().delete_gateway(name).await?;
            self.gateways.invalidate();
        }
        Ok(Self::result(name, "destroy", output, None))
    }

    async fn do_destroy(&self, name: &GatewayName, force: bool) -> Result<String> {
        if self.which("openshell").is_none() {
            return Err(ServiceError::Local(LocalError::ToolMissing { tool: "openshell", hint: OPENSHELL_HINT }));
        }
        let managed = self
            .tools
            .openshell_config_dir
            .as_ref()
            .is_some_and(|d| d.join("gateways").join(name.as_str()).join("metadata.json").is_file());
        if !managed {
            return Err(ServiceError::Precondition {
                message: format!(
                    "gateway {name} is not a local gateway of the OpenShell CLI on this machine (no entry in its \
                     config directory); to stop managing a remote gateway, unregister it instead"
                ),
            });
        }
        if !force && self.gateways.store().get_gateway(name).await?.is_some() {
            let inventory = self
                .gateways
                .with_gateway(name, |gw| async move {
                    let sandboxes = gw
                        .list_sandboxes(&WorkspaceScope::All, &LabelSelector::default(), &PageRequest::first(1000))
                        .await?;
                    let providers = gw.list_providers(&WorkspaceName::default(), &PageRequest::first(1000)).await?;
                    Ok((sandboxes.items.len(), providers.items.len()))
                })
                .await;
            match inventory {
                Ok((0, 0)) => {}
                Ok((sandboxes, providers)) => {
                    return Err(ServiceError::Precondition {
                        message: format!(
                            "gateway {name} still has {sandboxes} sandbox(es) and {providers} provider(s); \
                             pass force=true to destroy them with it"
                        ),
                    });
                }
                Err(e) => {
                    return Err(ServiceError::Precondition {
                        message: format!(
                            "cannot list what gateway {name} still holds ({e}); pass force=true to destroy it anyway"
                        ),
                    });
                }
            }
        }
        Ok(self
            .run_ok("openshell", &["gateway", "destroy", "--name", name.as_str()], self.tools.action_timeout)
            .await?)
    }

    /// The registered gateway on this machine using `port`, if any.
    async fn port_owner(&self, port: u16) -> Result<Option<String>> {
        let (all, _) = self.gateways.list(&LabelSelector::default(), 1000, 0).await?;
        Ok(all
            .into_iter()
            .find(|g| {
                let local = g.endpoint.starts_with("127.")
                    || g.endpoint.starts_with("localhost:")
                    || g.endpoint.starts_with("[::1]:");
                local && g.endpoint.rsplit(':').next() == Some(port.to_string().as_str())
            })
            .map(|g| g.name.to_string()))
    }

    /// The first port from 8080 that no registered local gateway uses and
    /// nothing on this machine listens on.
    async fn free_port(&self) -> Result<u16> {
        for port in 8080..8180 {
            if self.port_owner(port).await?.is_none() && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
        Err(ServiceError::Invalid { field: "port".into(), message: "no free port in 8080-8179; pass one".into() })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
