//! Sandboxes on registered gateways: create with presets (as an
//! operation), list and read with Breakwater's own metadata laid over the
//! gateway's answer, exec, logs, SSH sessions and the rest of the lifecycle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use breakwater_domain::operation::{Operation, OperationError};
use breakwater_domain::policy::{Policy, PolicyRevision, PolicyStatus, SandboxConfig};
use breakwater_domain::registry::GatewayName;
use breakwater_domain::registry::{FieldPatch, GatewayMetadataPatch};
use breakwater_domain::sandbox::{
    DeletionOutcome, ExecOutput, ExecRequest, LogQuery, NewSandbox, Sandbox, SandboxDeletion, SandboxLogs,
    SandboxMetadata, SandboxPhase, SshSession, WatchEvent, WatchOptions, split_command,
};
use breakwater_domain::templates::{self, SandboxTemplate};
use breakwater_domain::{
    LabelSelector, Labels, PageRequest, ProviderName, SandboxName, Secret, WorkspaceName, sanitize,
};
use breakwater_gateway::{Gateway, WorkspaceScope};
use breakwater_store::SshSessionRecord;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::events::Event;
use crate::{
    Actor, GatewayService, IdempotencyKey, NewOperation, OperationService, PolicyService, Result, ServiceError,
};

mod live;
pub use live::{LiveEnd, LiveFeed, LiveFrame, LiveSettings};

/// An exec without `timeout_seconds` gets this much.
pub const EXEC_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// And may ask for at most this much.
pub const EXEC_MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Each of stdout and stderr is cut at this size.
pub const EXEC_OUTPUT_CAP: usize = 1024 * 1024;
/// An exec allowed to run longer than this runs as an operation.
pub const EXEC_SYNC_MAX: Duration = Duration::from_secs(120);

/// How an exec request was taken on.
#[derive(Debug)]
pub enum ExecStarted {
    /// It ran within the request.
    Done(ExecOutput),
    /// It runs as this operation; its result is the output.
    Operation(Box<Operation>),
}

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

/// Arguments of one exec, in all.
const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// How much of a command an audit entry keeps.
const AUDITED_COMMAND_CHARS: usize = 2_000;
const MAX_ENV_VARS: usize = 128;
const MAX_ENV_BYTES: usize = 64 * 1024;

/// Environment variable names as a shell can set them; values bounded.
fn check_environment(field: &str, env: &BTreeMap<String, String>) -> Result<()> {
    if env.len() > MAX_ENV_VARS {
        return Err(invalid(field, format!("at most {MAX_ENV_VARS} variables")));
    }
    for name in env.keys() {
        let mut chars = name.chars();
        let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && name.len() <= 256;
        if !ok {
            return Err(invalid(
                field,
                format!(
                    "{:?} is not a variable name (letters, digits and '_', not starting with a digit)",
                    sanitize(name, 64)
                ),
            ));
        }
    }
    if env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > MAX_ENV_BYTES {
        return Err(invalid(field, format!("at most {} KiB of names and values", MAX_ENV_BYTES / 1024)));
    }
    if env.values().any(|v| v.contains('\0')) {
        return Err(invalid(field, "values may not contain NUL characters"));
    }
    Ok(())
}

/// The command as an audit entry keeps it: whole when short, else cut with
/// a note of how long it was.
fn audited_command(argv: &[String]) -> serde_json::Value {
    let total: usize = argv.iter().map(|a| a.chars().count()).sum();
    if total <= AUDITED_COMMAND_CHARS {
        return serde_json::json!(argv);
    }
    let mut left = AUDITED_COMMAND_CHARS;
    let kept: Vec<String> = argv
        .iter()
        .map_while(|a| {
            (left > 0).then(|| {
                let part: String = a.chars().take(left).collect();
                left -= part.chars().count();
                part
            })
        })
        .collect();
    serde_json::json!({"argv": kept, "truncated_from_chars": total})
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
    /// `None`: the template's (if any); `Some(vec![])`: none at all.
    pub providers: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    pub policy: Option<Policy>,
    pub presets: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub description: Option<String>,
    /// `None`: the template's choice (if any), else no GPU.
    pub gpu: Option<bool>,
    pub log_level: Option<String>,
    /// A built-in template whose defaults fill what this request leaves out.
    pub template: Option<String>,
}

impl CreateSandbox {
    /// Fills what the request left out from the template: image, providers
    /// and GPU (when the request does not say; an explicit `[]` or `false`
    /// stands), environment (the request's values win), and presets (the
    /// template's first, then the request's).
    fn with_template(mut self, t: &SandboxTemplate) -> Self {
        if self.image.as_deref().is_none_or(str::is_empty) {
            self.image.clone_from(&t.image);
        }
        if self.providers.is_none() {
            self.providers = Some(t.providers.clone());
        }
        for (k, v) in &t.environment {
            self.environment.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if self.gpu.is_none() {
            self.gpu = Some(t.gpu);
        }
        let mut presets = t.presets.clone();
        for p in self.presets {
            if !presets.contains(&p) {
                presets.push(p);
            }
        }
        self.presets = presets;
        self
    }
}

/// Page size asked of the gateway when listing.
const LIST_PAGE: u32 = 500;

fn metadata_by_name(rows: Vec<SandboxMetadata>) -> BTreeMap<String, SandboxMetadata> {
    rows.into_iter().map(|m| (m.sandbox.clone(), m)).collect()
}

fn merged(metadata: &BTreeMap<String, SandboxMetadata>, mut s: Sandbox) -> Sandbox {
    if let Some(m) = metadata.get(&s.name) {
        m.apply_to(&mut s);
    }
    s
}

/// A sandbox list arriving in chunks (see [`SandboxService::list_pages`]).
/// Dropping it stops the fetching.
pub struct SandboxPages {
    rx: mpsc::Receiver<Result<Vec<Sandbox>>>,
    total: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SandboxPages {
    /// The next chunk of the window; `None` once the list is complete.
    pub async fn next(&mut self) -> Option<Result<Vec<Sandbox>>> {
        self.rx.recv().await
    }

    /// How many sandboxes match in all (once `next` gave `None`).
    #[must_use]
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

impl Drop for SandboxPages {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Sandboxes. Cheap to clone.
#[derive(Clone)]
pub struct SandboxService {
    gateways: GatewayService,
    operations: OperationService,
    policies: PolicyService,
    ready_deadline: Duration,
    live: LiveSettings,
}

impl SandboxService {
    #[must_use]
    pub fn new(gateways: GatewayService, operations: OperationService, policies: PolicyService) -> Self {
        Self { gateways, operations, policies, ready_deadline: Duration::from_secs(180), live: LiveSettings::default() }
    }

    /// Queue size, heartbeat and reconnect pause for live views.
    #[must_use]
    pub fn with_live_settings(mut self, live: LiveSettings) -> Self {
        self.live = live;
        self
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
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<Operation> {
        let input = match input.template.clone() {
            Some(t) => input.with_template(Self::template_for_create(&t)?),
            None => input,
        };
        let name = SandboxName::parse(&input.name)?;
        let labels = Labels::parse(input.labels.clone())?;
        check_environment("environment", &input.environment)?;
        crate::gateways::check_description(input.description.as_deref())?;
        if let Some(level) = input.log_level.as_deref().filter(|l| !LEVELS.contains(l)) {
            return Err(invalid("log_level", format!("{:?} is not one of {}", sanitize(level, 32), LEVELS.join(", "))));
        }
        for preset in &input.presets {
            if self.policies.preset(preset).is_err() {
                let known: Vec<&str> = self.policies.presets().iter().map(|p| p.name.as_str()).collect();
                return Err(invalid("presets", format!("no preset {preset:?}; there are: {}", known.join(", "))));
            }
        }
        let mut policy = input.policy.clone();
        if let Some(p) = policy.as_mut() {
            p.normalise();
            p.validate().map_err(|v| invalid("policy", v.to_string()))?;
        }
        self.gateways.get(gw).await?;
        let route = format!("POST /api/gateways/{gw}/sandboxes");
        // A retry of a request that was answered: the same operation, even
        // though the sandbox exists by now.
        if let Some(key) = idempotency_key
            && let Some(op) = self.operations.get_by_idempotency_key(actor, &route, key).await?
        {
            return Ok(op);
        }
        // Said now rather than as a failed operation: the common mistake.
        // (Two creates racing past this still meet the gateway's refusal.)
        let (ws, sb) = (WorkspaceName::default(), &name);
        match self.gateways.with_gateway(gw, |c| async move { c.get_sandbox(&ws, sb).await }).await {
            Ok(_) => {
                return Err(match self.operations.active(Some(gw.as_str()), "sandbox", name.as_str()).await? {
                    Some(op) => ServiceError::Precondition {
                        message: format!(
                            "sandbox {name} already has an operation in progress ({}, {}); wait for it or cancel it",
                            op.id,
                            op.status.as_str()
                        ),
                    },
                    None => ServiceError::Conflict { what: format!("sandbox {name} on gateway {gw}") },
                });
            }
            Err(ServiceError::Gateway(breakwater_gateway::GatewayError::NotFound { .. })) => {}
            Err(e) => return Err(e),
        }
        // A template's provider the gateway lacks would otherwise surface
        // as a failed operation after the fact.
        for provider in input.providers.iter().flatten() {
            let parsed = ProviderName::parse(provider)?;
            let (ws, p) = (WorkspaceName::default(), &parsed);
            match self.gateways.with_gateway(gw, |c| async move { c.get_provider(&ws, p).await }).await {
                Ok(_) => {}
                Err(ServiceError::Gateway(breakwater_gateway::GatewayError::NotFound { .. })) => {
                    let from = input.template.as_deref().map(|t| format!(" (from template {t})")).unwrap_or_default();
                    return Err(invalid(
                        "providers",
                        format!(
                            "gateway {gw} has no provider {provider:?}{from}; create it first \
                             (POST /api/gateways/{gw}/providers) or pass \"providers\": []"
                        ),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        let (op, created) = self
            .operations
            .create_tracked(
                actor,
                NewOperation {
                    gateway: Some(gw.as_str()),
                    resource_type: "sandbox",
                    resource_name: name.as_str(),
                    action: "create",
                    idempotency_key: idempotency_key.map(|k| (route.as_str(), k)),
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
                serde_json::json!({
                    "operation": op.id,
                    "template": input.template,
                    "image": input.image,
                    "presets": input.presets,
                    "providers": input.providers,
                    "gpu": input.gpu,
                }),
            )
            .await;
        let new = NewSandbox {
            name: Some(name.clone()),
            workspace: WorkspaceName::default(),
            labels,
            image: input.image.clone().unwrap_or_default(),
            environment: input.environment.clone(),
            providers: input.providers.clone().unwrap_or_default(),
            policy,
            command: Vec::new(),
            gpu: input.gpu.unwrap_or(false),
            log_level: input.log_level.clone().unwrap_or_default(),
        };
        let (this, actor, gw) = (self.clone(), actor.clone(), gw.clone());
        let id = op.id.clone();
        let _task = self
            .operations
            .spawn(&op, async move { this.run_create(&actor, &gw, &id, new, input.presets, input.description).await });
        Ok(op)
    }

    /// The built-in templates.
    #[must_use]
    pub fn templates(&self) -> &'static [SandboxTemplate] {
        templates::built_in()
    }

    pub fn template(&self, name: &str) -> Result<&'static SandboxTemplate> {
        templates::find(name)?.ok_or_else(|| ServiceError::NotFound { what: format!("sandbox template {name}") })
    }

    fn template_for_create(name: &str) -> Result<&'static SandboxTemplate> {
        templates::find(name)?.ok_or_else(|| {
            let known: Vec<&str> = templates::built_in().iter().map(|t| t.name.as_str()).collect();
            invalid("template", format!("no template {name:?}; there are: {}", known.join(", ")))
        })
    }

    async fn run_create(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        op: &str,
        new: NewSandbox,
        presets: Vec<String>,
        description: Option<String>,
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
        // Only now: a create the gateway refused (say, the name is taken)
        // must not touch what we keep about an existing sandbox.
        if let Some(description) = description {
            let meta = SandboxMetadata {
                gateway: gw.as_str().to_owned(),
                sandbox: name.as_str().to_owned(),
                description: Some(description),
                labels: None,
                updated_by: actor.name.clone(),
                updated_at: Utc::now(),
            };
            if let Err(e) = self.gateways.store().put_sandbox_metadata(&meta).await {
                tracing::warn!(sandbox = %name, error = %e, "could not keep the sandbox's description");
            }
        }
        let _ = self.operations.progress(op, 10, "created; waiting for the sandbox to be ready").await;
        let deadline = tokio::time::Instant::now() + self.ready_deadline;
        self.wait_ready(gw, &name, deadline).await?;
        let mut statuses = serde_json::Map::new();
        if !presets.is_empty() {
            let _ = self.operations.progress(op, 40, "ready; waiting for the initial policy to load").await;
            // A preset merged over a policy the gateway is still enriching
            // would race it; start from the loaded one.
            if let Err(message) = self.wait_policy_settled(gw, &name, None, deadline).await {
                return Err((OperationError::Timeout, message));
            }
        }
        let n = presets.len().max(1);
        for (i, preset) in presets.iter().enumerate() {
            let status = match self.policies.apply_preset(actor, gw, &name, preset, false).await {
                Ok(out) if out.status == crate::policy::WriteStatus::Applied => {
                    match self.wait_policy_settled(gw, &name, Some(out.version), deadline).await {
                        Ok(Some(rev)) if rev.status == PolicyStatus::Failed => serde_json::json!({
                            "status": "failed", "version": out.version,
                            "error": format!("policy version {} did not load: {}", out.version, rev.load_error),
                        }),
                        Ok(_) => serde_json::json!({"status": "applied", "result": out.status, "version": out.version}),
                        Err(message) => {
                            serde_json::json!({"status": "failed", "version": out.version, "error": message})
                        }
                    }
                }
                Ok(out) => serde_json::json!({"status": "applied", "result": out.status, "version": out.version}),
                Err(e) => serde_json::json!({"status": "failed", "error": e.to_string()}),
            };
            let failed = status["status"] == "failed";
            statuses.insert(preset.clone(), status);
            let percent = u8::try_from(40 + 60 * (i + 1) / n).unwrap_or(100);
            let verb = if failed { "failed" } else { "applied" };
            let _ = self.operations.progress(op, percent, &format!("preset {preset} {verb}")).await;
        }
        self.policies
            .events()
            .publish(Event::SandboxCreated { gateway: gw.as_str().to_owned(), sandbox: name.as_str().to_owned() });
        let failed: Vec<&String> = statuses.iter().filter(|(_, v)| v["status"] == "failed").map(|(k, _)| k).collect();
        Ok(serde_json::json!({
            "sandbox": name.as_str(),
            "id": created.id,
            "presets": statuses,
            "presets_failed": failed,
        }))
    }

    /// Polls the gateway until a policy revision (`None`: the newest) is no
    /// longer pending, with a backoff from 20 ms to 250 ms. A sandbox
    /// without a policy has nothing to wait for.
    async fn wait_policy_settled(
        &self,
        gw: &GatewayName,
        sb: &SandboxName,
        version: Option<u32>,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<Option<PolicyRevision>, String> {
        let ws = WorkspaceName::default();
        let mut pause = Duration::from_millis(20);
        let mut last;
        loop {
            let ws = &ws;
            match self.gateways.with_gateway(gw, |c| async move { c.policy_status(ws, sb, version).await }).await {
                Ok(report) if report.revision.status != PolicyStatus::Pending => return Ok(Some(report.revision)),
                Ok(report) => last = format!("version {} pending", report.revision.version),
                Err(ServiceError::Gateway(breakwater_gateway::GatewayError::NotFound { .. })) if version.is_none() => {
                    return Ok(None);
                }
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() + pause > deadline {
                let which = version.map_or_else(|| "the initial policy".to_owned(), |v| format!("policy version {v}"));
                return Err(format!("{which} did not load in time; last seen: {last}"));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Follows the watch stream until READY; a terminal phase or the
    /// deadline ends it with the last phase and condition message.
    async fn wait_ready(
        &self,
        gw: &GatewayName,
        sb: &SandboxName,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<(), (OperationError, String)> {
        let ws = WorkspaceName::default();
        let options = WatchOptions { follow_status: true, ..WatchOptions::default() };
        let mut stream = self
            .gateways
            .with_gateway(gw, |c| async move { c.watch_sandbox(&ws, sb, &options).await })
            .await
            .map_err(|e| (OperationError::Gateway, e.to_string()))?;
        let mut last = String::from("unknown");
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

    /// One page (`limit` from `offset`) of the gateway's sandboxes, with
    /// Breakwater's metadata laid over each, and how many match in all (the
    /// gateway's pages are walked to count them, as clients paginate by
    /// `total`). Labels set here replace the gateway's, so while any exist
    /// on this gateway a label filter runs over the merged view rather than
    /// at the gateway.
    pub async fn list(
        &self,
        gw: &GatewayName,
        selector: &LabelSelector,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<Sandbox>, usize)> {
        let mut pages = self.list_pages(gw, selector, limit, offset).await?;
        let mut items = Vec::new();
        while let Some(chunk) = pages.next().await {
            items.extend(chunk?);
        }
        Ok((items, pages.total()))
    }

    /// [`SandboxService::list`] as it arrives: the window's sandboxes in
    /// chunks, one per gateway page, while the next page is being fetched,
    /// so a caller encoding a chunk overlaps the gateway's next answer.
    pub async fn list_pages(
        &self,
        gw: &GatewayName,
        selector: &LabelSelector,
        limit: u32,
        offset: u32,
    ) -> Result<SandboxPages> {
        let (limit, offset) = (limit.clamp(1, 1000) as usize, offset as usize);
        let (tx, rx) = mpsc::channel(1);
        let total = Arc::new(AtomicUsize::new(0));
        if !selector.is_empty() {
            let (items, count) = self.list_selected(gw, selector, limit, offset).await?;
            total.store(count, Ordering::SeqCst);
            let _ = tx.try_send(Ok(items));
            return Ok(SandboxPages { rx, total, task: None });
        }
        let (this, gw, done) = (self.clone(), gw.clone(), total.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = this.pump_pages(&gw, limit, offset, &tx, &done).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(SandboxPages { rx, total, task: Some(task) })
    }

    async fn fetch_page(
        &self,
        gw: &GatewayName,
        upstream: &LabelSelector,
        page: PageRequest,
    ) -> Result<breakwater_domain::Page<Sandbox>> {
        let page = &page;
        self.gateways
            .with_gateway(gw, |c| async move { c.list_sandboxes(&WorkspaceScope::All, upstream, page).await })
            .await
    }

    /// Without a selector: the store and the gateway's first page are asked
    /// at once, then each page is merged and handed on as the next is
    /// fetched.
    async fn pump_pages(
        &self,
        gw: &GatewayName,
        limit: usize,
        offset: usize,
        tx: &mpsc::Sender<Result<Vec<Sandbox>>>,
        total: &AtomicUsize,
    ) -> Result<()> {
        let none = LabelSelector::default();
        let (rows, mut page) = tokio::try_join!(
            async { self.gateways.store().list_sandbox_metadata(gw.as_str()).await.map_err(ServiceError::from) },
            self.fetch_page(gw, &none, PageRequest::first(LIST_PAGE)),
        )?;
        let metadata = metadata_by_name(rows);
        let mut seen = 0usize;
        loop {
            let next_token = std::mem::take(&mut page.next_page_token);
            let chunk: Vec<Sandbox> = page
                .items
                .into_iter()
                .filter_map(|s| {
                    let at = seen;
                    seen += 1;
                    (at >= offset && at < offset + limit).then(|| merged(&metadata, s))
                })
                .collect();
            if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                return Ok(());
            }
            if next_token.is_empty() {
                break;
            }
            page = self.fetch_page(gw, &none, PageRequest { page_size: LIST_PAGE, page_token: next_token }).await?;
        }
        total.store(seen, Ordering::SeqCst);
        Ok(())
    }

    /// With a selector the store decides whether the gateway may filter
    /// (our labels replace the gateway's).
    async fn list_selected(
        &self,
        gw: &GatewayName,
        selector: &LabelSelector,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<Sandbox>, usize)> {
        let metadata = metadata_by_name(self.gateways.store().list_sandbox_metadata(gw.as_str()).await?);
        let local_filter = metadata.values().any(|m| m.labels.is_some());
        let upstream = if local_filter { LabelSelector::default() } else { selector.clone() };
        let upstream = &upstream;
        let (all, _) = crate::window(usize::MAX, 0, LIST_PAGE, |p| self.fetch_page(gw, upstream, p)).await?;
        let matching: Vec<Sandbox> = all
            .into_iter()
            .map(|s| merged(&metadata, s))
            .filter(|s| !local_filter || selector.matches(&s.labels))
            .collect();
        let total = matching.len();
        Ok((matching.into_iter().skip(offset).take(limit).collect(), total))
    }

    pub async fn get(&self, gw: &GatewayName, sb: &SandboxName) -> Result<Sandbox> {
        let ws = WorkspaceName::default();
        let mut sandbox = self.gateways.with_gateway(gw, |c| async move { c.get_sandbox(&ws, sb).await }).await?;
        if let Some(m) = self.gateways.store().get_sandbox_metadata(gw.as_str(), sb.as_str()).await? {
            m.apply_to(&mut sandbox);
        }
        Ok(sandbox)
    }

    /// What the sandbox's supervisor is told: the effective policy with its
    /// version and hash, and the settings in force.
    pub async fn config(&self, gw: &GatewayName, sb: &SandboxName) -> Result<SandboxConfig> {
        let ws = WorkspaceName::default();
        self.gateways.with_gateway(gw, |c| async move { c.sandbox_config(&ws, sb).await }).await
    }

    /// Sets or clears the description and labels Breakwater keeps (absent
    /// keeps, `null` clears). Cleared labels are empty, not the gateway's.
    pub async fn update_metadata(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        patch: &GatewayMetadataPatch,
    ) -> Result<Sandbox> {
        crate::gateways::check_metadata_patch(patch)?;
        let mut sandbox = self.get(gw, sb).await?;
        if *patch == GatewayMetadataPatch::default() {
            return Ok(sandbox);
        }
        let store = self.gateways.store();
        let mut m = store.get_sandbox_metadata(gw.as_str(), sb.as_str()).await?.unwrap_or_else(|| SandboxMetadata {
            gateway: gw.as_str().to_owned(),
            sandbox: sb.as_str().to_owned(),
            description: None,
            labels: None,
            updated_by: String::new(),
            updated_at: Utc::now(),
        });
        match &patch.description {
            FieldPatch::Keep => {}
            FieldPatch::Clear => m.description = None,
            FieldPatch::Set(d) => m.description = Some(d.clone()),
        }
        match &patch.labels {
            FieldPatch::Keep => {}
            FieldPatch::Clear => m.labels = Some(BTreeMap::new()),
            FieldPatch::Set(l) => m.labels = Some(l.clone()),
        }
        m.updated_by.clone_from(&actor.name);
        m.updated_at = Utc::now();
        store.put_sandbox_metadata(&m).await?;
        self.audit(
            actor,
            "sandbox.update_metadata",
            gw,
            sb,
            serde_json::json!({"description": patch.description, "labels": patch.labels}),
        )
        .await;
        m.apply_to(&mut sandbox);
        Ok(sandbox)
    }

    /// Runs a command and collects its output (each stream capped).
    pub async fn exec(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        input: ExecInput,
    ) -> Result<ExecOutput> {
        let request = Self::exec_request(input)?;
        self.run_exec(actor, gw, sb, request, true).await
    }

    /// Runs a command in the caller's request when it is short, or as an
    /// operation when it may run long (`timeout_seconds` above
    /// [`EXEC_SYNC_MAX`]) or the caller asked for one.
    pub async fn exec_or_start(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        input: ExecInput,
        prefer_operation: bool,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<ExecStarted> {
        let request = Self::exec_request(input)?;
        // A retry-safe exec needs an operation to find again: with an
        // Idempotency-Key even a short exec runs as one.
        if !prefer_operation && idempotency_key.is_none() && request.timeout.is_some_and(|t| t <= EXEC_SYNC_MAX) {
            return Ok(ExecStarted::Done(self.run_exec(actor, gw, sb, request, true).await?));
        }
        self.get(gw, sb).await?;
        // Each long exec is its own resource, so several may run at once.
        let resource = format!("{sb}/{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let route = format!("POST /api/gateways/{gw}/sandboxes/{sb}/exec");
        let (op, created) = self
            .operations
            .create_tracked(
                actor,
                NewOperation {
                    gateway: Some(gw.as_str()),
                    resource_type: "sandbox_exec",
                    resource_name: &resource,
                    action: "exec",
                    idempotency_key: idempotency_key.map(|k| (route.as_str(), k)),
                },
            )
            .await?;
        if created {
            // Recorded when it starts: whoever started it is known even if
            // the server dies before it ends. The exit code is in the result.
            let detail = serde_json::json!({
                "command": audited_command(&request.command),
                "env": request.environment.keys().collect::<Vec<_>>(),
                "operation": op.id,
            });
            self.audit(actor, "sandbox.exec", gw, sb, detail).await;
            let (this, actor, gw, sb, id) = (self.clone(), actor.clone(), gw.clone(), sb.clone(), op.id.clone());
            let _task = self.operations.spawn(&op, async move {
                let _ = this.operations.progress(&id, 10, "running").await;
                match this.run_exec(&actor, &gw, &sb, request, false).await {
                    Ok(out) => serde_json::to_value(out).map_err(|e| (OperationError::Internal, e.to_string())),
                    Err(ServiceError::Gateway(g)) if g.is_connection_failure() => {
                        Err((OperationError::GatewayUnavailable, g.to_string()))
                    }
                    Err(e) => Err((OperationError::Gateway, e.to_string())),
                }
            });
        }
        Ok(ExecStarted::Operation(Box::new(op)))
    }

    fn exec_request(input: ExecInput) -> Result<ExecRequest> {
        let argv = match input.command {
            Command::Argv(v) if v.is_empty() || v[0].is_empty() => {
                return Err(invalid("command", "the command is empty"));
            }
            Command::Argv(v) => v,
            Command::Line(line) => split_command(&line).map_err(|m| invalid("command", m))?,
        };
        if argv.iter().map(String::len).sum::<usize>() > MAX_COMMAND_BYTES {
            return Err(invalid("command", format!("at most {} KiB of arguments", MAX_COMMAND_BYTES / 1024)));
        }
        check_environment("env", &input.env)?;
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
        Ok(ExecRequest {
            command: argv,
            workdir: input.workdir.unwrap_or_default(),
            environment: input.env,
            stdin: Vec::new(),
            timeout: Some(timeout),
        })
    }

    async fn run_exec(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        request: ExecRequest,
        audit: bool,
    ) -> Result<ExecOutput> {
        let ws = WorkspaceName::default();
        let request = &request;
        let out =
            self.gateways.with_gateway(gw, |c| async move { c.exec(&ws, sb, request, EXEC_OUTPUT_CAP).await }).await?;
        if audit {
            // The command is recorded; environment values may be secrets, so only their names.
            let detail = serde_json::json!({
                "command": audited_command(&request.command),
                "env": request.environment.keys().collect::<Vec<_>>(),
                "exit_code": out.exit_code,
            });
            self.audit(actor, "sandbox.exec", gw, sb, detail).await;
        }
        Ok(out)
    }

    async fn audit(&self, actor: &Actor, action: &str, gw: &GatewayName, sb: &SandboxName, detail: serde_json::Value) {
        self.gateways.audit().log(actor, action, "sandbox", sb.as_str(), Some(gw.as_str()), detail).await;
    }

    /// Deletes the sandbox; the outcome says whether it is gone or going.
    pub async fn delete(&self, actor: &Actor, gw: &GatewayName, sb: &SandboxName) -> Result<SandboxDeletion> {
        let ws = WorkspaceName::default();
        let out = self.gateways.with_gateway(gw, |c| async move { c.delete_sandbox(&ws, sb, false).await }).await?;
        self.gateways.store().delete_sandbox_metadata(gw.as_str(), sb.as_str()).await?;
        self.policies
            .events()
            .publish(Event::SandboxDeleted { gateway: gw.as_str().to_owned(), sandbox: sb.as_str().to_owned() });
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
        let store = self.gateways.store();
        let record = SshSessionRecord {
            token_digest: crate::identity::digest(session.token.expose()),
            gateway: gw.as_str().to_owned(),
            sandbox: sb.as_str().to_owned(),
            created_by: actor.name.clone(),
            created_at: Utc::now(),
            expires_at: session.expires_at,
        };
        // Remembered so a revoke can be checked against its sandbox; a
        // failure here only loses that check for this token.
        if let Err(e) = store.record_ssh_session(&record).await {
            tracing::warn!(sandbox = %sb, error = %e, "could not remember the SSH session");
        }
        let _ = store.delete_expired_ssh_sessions(Utc::now() - chrono::Duration::hours(1)).await;
        Ok(session)
    }

    /// Revokes a session. A token Breakwater issued for another sandbox (or
    /// gateway) is refused as unknown here, so one sandbox's path cannot end
    /// another's session; a token issued elsewhere (the OpenShell CLI) is
    /// passed on, and the audit entry says it was not issued here.
    pub async fn revoke_ssh_session(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        token: &Secret,
    ) -> Result<DeletionOutcome> {
        let store = self.gateways.store();
        let token_digest = crate::identity::digest(token.expose());
        let issued = store.get_ssh_session(&token_digest).await?;
        if let Some(r) = &issued
            && (r.gateway != gw.as_str() || r.sandbox != sb.as_str())
        {
            return Err(ServiceError::NotFound { what: format!("SSH session for sandbox {sb} with this token") });
        }
        let out = self.gateways.with_gateway(gw, |c| async move { c.revoke_ssh_session(token, false).await }).await?;
        if issued.is_some() {
            let _ = store.delete_ssh_session(&token_digest).await;
        }
        let detail = serde_json::json!({"issued_here": issued.is_some(), "outcome": out});
        self.audit(actor, "sandbox.ssh.revoke", gw, sb, detail).await;
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
