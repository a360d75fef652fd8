//! The `OpenShell` service over the in-memory state: request validation,
//! lifecycle timers, and streams.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use breakwater_wire::openshell::v1::open_shell_server::OpenShell;
use breakwater_wire::{datamodel as dm, sandbox as sb, v1};
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::errors::{conflict, invalid, precondition, sandbox_only};
use crate::faults::{Faults, ProvisioningMode};
use crate::state::{
    self, LOG_RING, SandboxRec, State, apply_merge, default_policy, locked_section_change, now, policy_hash, uuid,
    validate_policy, with_rule, without_rule,
};

type Res<T> = Result<Response<T>, Status>;
type BoxStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Gateway-wide setting keys OpenShell 0.1 knows.
pub const SETTING_KEYS: &[&str] =
    &["providers_v2_enabled", "proposal_approval_mode", "ocsf_json_enabled", "agent_policy_proposals_enabled"];

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Lifecycle timing knobs.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// PROVISIONING → READY.
    pub ready_delay: Duration,
    /// STOPPING → STOPPED, STARTING → READY, DELETING → gone.
    pub transition_delay: Duration,
    /// PENDING → LOADED for a new policy revision.
    pub policy_load_delay: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            ready_delay: Duration::from_secs(2),
            transition_delay: Duration::from_millis(500),
            policy_load_delay: Duration::from_millis(300),
        }
    }
}

/// Something watchers may want to hear about.
#[derive(Clone, Debug)]
pub(crate) enum SimEvent {
    Payload {
        sandbox_id: String,
        // Boxed: a full sandbox snapshot dwarfs the other variants.
        payload: Box<v1::sandbox_stream_event::Payload>,
    },
    /// The sandbox no longer exists: its watch streams end.
    Gone { sandbox_id: String },
    /// The simulated gateway restarted: every stream ends.
    Reset,
}

pub(crate) struct Inner {
    pub state: Mutex<State>,
    pub faults: Arc<Faults>,
    pub events: broadcast::Sender<SimEvent>,
    pub timing: Timing,
    pub advertise_host: String,
    pub port: u16,
    pub shutdown: CancellationToken,
}

/// What a lifecycle timer does when it fires.
#[derive(Clone, Copy, Debug)]
enum Transition {
    BecomeReady,
    FailProvisioning,
    Stopped,
    Deleted,
    LoadPolicy(u32),
}

/// The shape of a stop or a start.
struct PowerStep {
    method: &'static str,
    from: v1::SandboxPhase,
    already: [v1::SandboxPhase; 2],
    through: (v1::SandboxPhase, &'static str, &'static str),
    then: Transition,
    refusal: (&'static str, &'static str),
}

#[derive(Clone)]
pub(crate) struct SimService(pub Arc<Inner>);

fn lock(inner: &Inner) -> std::sync::MutexGuard<'_, State> {
    // A panicking handler must not wedge the whole simulator.
    inner.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn workspace(state: &State, sel: Option<&dm::WorkspaceSelector>) -> Result<String, Status> {
    match sel.and_then(|s| s.selection.as_ref()) {
        None => Err(invalid("workspace_scope", "workspace_scope is required (use {workspace: \"default\"})")),
        Some(dm::workspace_selector::Selection::AllWorkspaces(_)) => {
            Err(invalid("workspace_scope", "all_workspaces is only valid for list calls"))
        }
        Some(dm::workspace_selector::Selection::Workspace(ws)) => {
            if state.workspaces.contains_key(ws) {
                Ok(ws.clone())
            } else {
                Err(Status::not_found(format!("workspace {ws:?} not found")))
            }
        }
    }
}

/// `None` means every workspace.
fn list_scope(state: &State, sel: Option<&dm::WorkspaceSelector>) -> Result<Option<String>, Status> {
    match sel.and_then(|s| s.selection.as_ref()) {
        Some(dm::workspace_selector::Selection::AllWorkspaces(_)) => Ok(None),
        _ => workspace(state, sel).map(Some),
    }
}

fn valid_name(field: &str, name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(field, "must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'"))
    }
}

fn parse_selector(raw: &str) -> Result<Vec<(String, String)>, Status> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| invalid("label_selector", &format!("{p:?} is not key=value")))
        })
        .collect()
}

fn page_bounds(page_size: i32, token: &str) -> Result<(usize, usize), Status> {
    let size = match usize::try_from(page_size) {
        Ok(0) | Err(_) => DEFAULT_PAGE,
        Ok(n) => n.min(MAX_PAGE),
    };
    let offset = if token.is_empty() {
        0
    } else {
        token
            .strip_prefix("p")
            .and_then(|t| usize::from_str_radix(t, 16).ok())
            .ok_or_else(|| invalid("page_token", "unknown page token"))?
    };
    Ok((offset, size))
}

fn next_token(offset: usize, size: usize, total: usize) -> String {
    match offset.checked_add(size) {
        Some(next) if next < total => format!("p{next:x}"),
        _ => String::new(),
    }
}

fn level_rank(level: &str) -> u8 {
    match level.to_ascii_lowercase().as_str() {
        "trace" => 0,
        "debug" => 1,
        "warn" | "warning" => 3,
        "error" => 4,
        // "info" and anything unknown: a line we cannot rank is not hidden.
        _ => 2,
    }
}

fn redacted(p: &dm::Provider) -> dm::Provider {
    let mut p = p.clone();
    for v in p.credentials.values_mut() {
        "REDACTED".clone_into(v);
    }
    p
}

fn check_setting(key: &str, value: Option<&sb::SettingValue>) -> Result<(), Status> {
    use sb::setting_value::Value;
    if !SETTING_KEYS.contains(&key) {
        return Err(invalid(
            "setting_key",
            &format!("unknown setting {key:?}; valid keys: {}", SETTING_KEYS.join(", ")),
        ));
    }
    let Some(value) = value.and_then(|v| v.value.as_ref()) else { return Ok(()) };
    match (key, value) {
        ("proposal_approval_mode", Value::StringValue(s)) if s == "manual" || s == "auto" => Ok(()),
        ("proposal_approval_mode", _) => {
            Err(invalid("setting_value", "proposal_approval_mode is \"manual\" or \"auto\""))
        }
        (_, Value::BoolValue(_)) => Ok(()),
        _ => Err(invalid("setting_value", &format!("{key} is a boolean setting"))),
    }
}

fn security_notes(host: &str, port: u32) -> String {
    let mut notes = Vec::new();
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        let private = match ip {
            std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
            std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
        };
        if private {
            notes.push(format!("{host} is a private address: allowing it opens the internal network (allowed_ips)"));
        }
    }
    if matches!(port, 5432 | 3306 | 6379 | 27017 | 9200 | 1433) {
        notes.push(format!("port {port} is a well-known database port"));
    }
    notes.join("; ")
}

impl SimService {
    async fn enter(&self, method: &str, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        self.0.faults.enter(method, metadata).await
    }

    fn emit(&self, sandbox_id: &str, payload: v1::sandbox_stream_event::Payload) {
        // No receivers is normal: nobody is watching.
        let _ = self.0.events.send(SimEvent::Payload { sandbox_id: sandbox_id.to_owned(), payload: Box::new(payload) });
    }

    fn emit_sandbox(&self, rec: &SandboxRec) {
        self.emit(rec.id(), v1::sandbox_stream_event::Payload::Sandbox(rec.sandbox.clone()));
    }

    fn log(&self, rec: &mut SandboxRec, level: &str, source: &str, message: String) {
        let line = rec.push_log(level, source, "openshell_sim", message);
        self.emit(&line.sandbox_id.clone(), v1::sandbox_stream_event::Payload::Log(line));
    }

    fn platform_event(&self, rec: &SandboxRec, kind: &str, reason: &str, message: &str) {
        self.emit(
            rec.id(),
            v1::sandbox_stream_event::Payload::Event(v1::PlatformEvent {
                source: "gateway".into(),
                r#type: kind.into(),
                reason: reason.into(),
                message: message.into(),
                metadata: HashMap::new(),
                event_time: Some(now()),
            }),
        );
    }

    /// Runs `t` on the sandbox after `delay`, unless it changed meanwhile.
    fn schedule(&self, key: (String, String), generation: u64, delay: Duration, t: Transition) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = this.0.shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            this.fire(&key, generation, t);
        });
    }

    fn fire(&self, key: &(String, String), generation: u64, t: Transition) {
        let mut st = lock(&self.0);
        let Some(rec) = st.sandboxes.get_mut(key) else {
            return;
        };
        // Policy loads are not tied to lifecycle generations.
        if !matches!(t, Transition::LoadPolicy(_)) && rec.generation != generation {
            return;
        }
        match t {
            Transition::BecomeReady => {
                rec.set_phase(v1::SandboxPhase::Ready, ("True", "DependenciesReady", "sandbox supervisor connected"));
                let latest = rec.latest().version;
                self.log(rec, "info", "gateway", "supervisor connected; sandbox is ready".into());
                self.platform_event(rec, "Normal", "SupervisorConnected", "sandbox supervisor connected");
                self.load_policy(rec, latest);
                let rv = st.next_version();
                let rec = st.sandboxes.get_mut(key).expect("present above");
                rec.meta_mut().resource_version = rv;
                self.emit_sandbox(rec);
            }
            Transition::FailProvisioning => {
                rec.set_phase(
                    v1::SandboxPhase::Error,
                    ("False", "ProvisioningFailed", "image pull failed: simulated provisioning failure"),
                );
                self.log(rec, "error", "gateway", "provisioning failed (simulated)".into());
                self.emit_sandbox(rec);
            }
            Transition::Stopped => {
                rec.set_phase(v1::SandboxPhase::Stopped, ("False", "Stopped", "sandbox stopped"));
                self.log(rec, "info", "gateway", "sandbox stopped".into());
                self.emit_sandbox(rec);
            }
            Transition::Deleted => {
                let id = rec.id().to_owned();
                st.sandboxes.remove(key);
                st.ssh_sessions.retain(|_, sid| *sid != id);
                let _ = self.0.events.send(SimEvent::Gone { sandbox_id: id });
            }
            Transition::LoadPolicy(version) => {
                if rec.phase() == v1::SandboxPhase::Ready {
                    self.load_policy(rec, version);
                    self.emit_sandbox(rec);
                }
            }
        }
    }

    /// PENDING → LOADED (or FAILED for a rejected host); older revisions
    /// become SUPERSEDED once a newer one loads.
    fn load_policy(&self, rec: &mut SandboxRec, version: u32) {
        if self.0.faults.holding_policy_loads() {
            return;
        }
        let reject = self.0.faults.reject_hosts();
        let Some(idx) = rec.revisions.iter().position(|r| r.version == version) else {
            return;
        };
        if rec.revisions[idx].status != v1::PolicyStatus::Pending as i32 {
            return;
        }
        let bad_host = rec.revisions[idx].policy.as_ref().and_then(|p| {
            p.network_policies
                .values()
                .flat_map(|r| &r.endpoints)
                .find(|e| reject.contains(&e.host))
                .map(|e| e.host.clone())
        });
        if let Some(host) = bad_host {
            let rev = &mut rec.revisions[idx];
            rev.status = v1::PolicyStatus::Failed as i32;
            rev.load_error = format!("supervisor rejected the policy: endpoint {host} cannot be enforced (simulated)");
            self.log(rec, "error", "sandbox", format!("policy version {version} failed to load"));
            return;
        }
        for (i, r) in rec.revisions.iter_mut().enumerate() {
            if i == idx {
                r.status = v1::PolicyStatus::Loaded as i32;
                r.loaded_time = Some(now());
            } else if r.version < version
                && (r.status == v1::PolicyStatus::Loaded as i32 || r.status == v1::PolicyStatus::Pending as i32)
            {
                r.status = v1::PolicyStatus::Superseded as i32;
            }
        }
        rec.status_mut().current_policy_version = version;
        self.log(rec, "info", "sandbox", format!("policy version {version} loaded"));
    }

    /// Records `policy` as a new revision unless its hash equals the newest
    /// one. Returns (version, hash).
    fn commit_policy(&self, st: &mut State, key: &(String, String), mut policy: sb::SandboxPolicy) -> (u32, String) {
        let rv = st.next_version();
        let rec = st.sandboxes.get_mut(key).expect("caller checked the sandbox exists");
        let hash = policy_hash(&policy);
        let latest = rec.latest();
        if latest.policy_hash == hash && latest.status != v1::PolicyStatus::Failed as i32 {
            return (latest.version, hash);
        }
        let version = latest.version + 1;
        policy.version = version;
        rec.revisions.push(v1::SandboxPolicyRevision {
            version,
            policy_hash: hash.clone(),
            status: v1::PolicyStatus::Pending as i32,
            load_error: String::new(),
            policy: Some(policy),
            provenance: HashMap::new(),
            created_time: Some(now()),
            loaded_time: None,
        });
        rec.config_revision += 1;
        rec.meta_mut().resource_version = rv;
        rec.refresh_review_tokens();
        self.log(rec, "info", "gateway", format!("policy version {version} submitted"));
        let generation = rec.generation;
        self.emit_sandbox(rec);
        self.schedule(key.clone(), generation, self.0.timing.policy_load_delay, Transition::LoadPolicy(version));
        (version, hash)
    }

    fn draft_notice(&self, rec: &SandboxRec, new_chunks: u32, summary: String) {
        let total_pending = rec.chunks.iter().filter(|c| c.status == "pending").count() as u32;
        self.emit(
            rec.id(),
            v1::sandbox_stream_event::Payload::DraftPolicyUpdate(v1::DraftPolicyUpdate {
                draft_version: rec.draft_version,
                new_chunks,
                total_pending,
                summary,
            }),
        );
    }

    /// Turns a denied connection into a pending draft chunk (or bumps the hit
    /// count of the chunk that already proposes it). Returns the chunk id.
    pub(crate) fn inject_log(&self, ws: &str, sandbox: &str, level: &str, message: &str) -> Result<(), Status> {
        let mut st = lock(&self.0);
        let rec = st.sandbox_mut(ws, sandbox)?;
        self.log(rec, level, "sandbox", message.to_owned());
        Ok(())
    }

    pub(crate) fn inject_denial(
        &self,
        ws: &str,
        sandbox: &str,
        host: &str,
        port: u32,
        binary: &str,
    ) -> Result<String, Status> {
        let key = (ws.to_owned(), sandbox.to_owned());
        let auto = {
            let st = lock(&self.0);
            st.gateway_settings.get("proposal_approval_mode").and_then(|v| v.value.clone())
                == Some(sb::setting_value::Value::StringValue("auto".into()))
        };
        let mut st = lock(&self.0);
        let rec = st.sandbox_mut(ws, sandbox)?;
        self.log(rec, "warn", "sandbox", format!("denied connection to {host}:{port} from {binary}"));
        if let Some(c) = rec.chunks.iter_mut().find(|c| {
            c.status == "pending"
                && c.binary == binary
                && c.proposed_rule
                    .as_ref()
                    .is_some_and(|r| r.endpoints.iter().any(|e| e.host == host && e.port == port))
        }) {
            c.hit_count += 1;
            c.last_seen_time = Some(now());
            let id = c.id.clone();
            rec.draft_version += 1;
            self.draft_notice(rec, 0, format!("{host}:{port} denied again"));
            return Ok(id);
        }
        let rule_name = format!("allow_{}_{port}", host.replace(['.', '-', '*'], "_"));
        let rule = sb::NetworkPolicyRule {
            name: rule_name.clone(),
            endpoints: vec![sb::NetworkEndpoint { host: host.into(), port, ..Default::default() }],
            binaries: vec![sb::NetworkBinary { path: binary.into() }],
        };
        let current = rec.latest().policy.clone().unwrap_or_default();
        let candidate = with_rule(&current, &rule);
        let id = uuid();
        let notes = security_notes(host, port);
        rec.chunks.push(v1::PolicyChunk {
            id: id.clone(),
            status: "pending".into(),
            rule_name: rule_name.clone(),
            proposed_rule: Some(rule),
            rationale: format!("{binary} tried to reach {host}:{port}, which the current policy denies."),
            security_notes: notes.clone(),
            confidence: if notes.is_empty() { 0.9 } else { 0.5 },
            stage: "proposed".into(),
            hit_count: 1,
            binary: binary.into(),
            validation_result: "valid".into(),
            review_token: uuid(),
            current_effective_policy_hash: policy_hash(&current),
            candidate_effective_policy_hash: policy_hash(&candidate),
            current_effective_policy: Some(current),
            candidate_effective_policy: Some(candidate),
            created_time: Some(now()),
            first_seen_time: Some(now()),
            last_seen_time: Some(now()),
            ..Default::default()
        });
        rec.draft_version += 1;
        rec.history("proposed", format!("proposed {rule_name} for {host}:{port}"), &id);
        self.draft_notice(rec, 1, format!("new proposal for {host}:{port}"));
        if auto && notes.is_empty() {
            // The gateway decides by itself; history says so.
            self.approve_locked(
                &mut st,
                &key,
                &id,
                None,
                "auto-approved by the gateway (proposal_approval_mode=auto)",
            )?;
        }
        Ok(id)
    }

    /// Approves one pending chunk. `token: None` skips the review-token
    /// check (only the gateway's own auto mode does that).
    fn approve_locked(
        &self,
        st: &mut State,
        key: &(String, String),
        chunk_id: &str,
        token: Option<&str>,
        how: &str,
    ) -> Result<(u32, String), Status> {
        let rec = st.sandboxes.get_mut(key).ok_or_else(|| Status::not_found("sandbox not found"))?;
        let chunk = rec
            .chunks
            .iter()
            .find(|c| c.id == chunk_id)
            .ok_or_else(|| Status::not_found(format!("chunk {chunk_id} not found")))?;
        if chunk.status != "pending" {
            return Err(precondition(
                "CHUNK_NOT_PENDING",
                &format!("chunk {chunk_id} is {}, not pending", chunk.status),
            ));
        }
        if let Some(t) = token {
            if t.is_empty() {
                return Err(invalid("review_token", "review_token is required"));
            }
            if t != chunk.review_token {
                return Err(precondition(
                    "STALE_REVIEW_TOKEN",
                    "review token is stale: the policy changed since the draft was read; re-read the draft",
                ));
            }
        }
        let rule = chunk.proposed_rule.clone().unwrap_or_default();
        let policy = with_rule(&rec.latest().policy.clone().unwrap_or_default(), &rule);
        let (version, hash) = self.commit_policy(st, key, policy);
        let rec = st.sandboxes.get_mut(key).expect("checked above");
        if let Some(c) = rec.chunks.iter_mut().find(|c| c.id == chunk_id) {
            "approved".clone_into(&mut c.status);
            c.decided_time = Some(now());
        }
        rec.draft_version += 1;
        rec.history("approved", format!("{how}; policy version {version}"), chunk_id);
        self.draft_notice(rec, 0, format!("chunk {chunk_id} approved"));
        Ok((version, hash))
    }

    /// Stop or start: from one phase, through a transitional one, to the
    /// next on a timer. Repeating it while already on the way is a no-op.
    fn power(
        &self,
        step: &PowerStep,
        scope: Option<&dm::WorkspaceSelector>,
        name: &str,
        request_id: &str,
    ) -> Result<v1::SandboxResponse, Status> {
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::SandboxResponse>(step.method, request_id) {
            return Ok(done);
        }
        let ws = workspace(&st, scope)?;
        let rec = st.sandbox_mut(&ws, name)?;
        let phase = rec.phase();
        if step.already.contains(&phase) {
            return Ok(Self::sandbox_response(rec));
        }
        if phase != step.from {
            let (reason, rule) = step.refusal;
            return Err(precondition(reason, &format!("sandbox is {}, {rule}", phase.as_str_name())));
        }
        let (through, reason, message) = step.through;
        rec.set_phase(through, ("False", reason, message));
        self.emit_sandbox(rec);
        let generation = rec.generation;
        let resp = Self::sandbox_response(rec);
        st.remember(step.method, request_id, &resp);
        self.schedule((ws, name.to_owned()), generation, self.0.timing.transition_delay, step.then);
        Ok(resp)
    }

    fn sandbox_response(rec: &SandboxRec) -> v1::SandboxResponse {
        v1::SandboxResponse { sandbox: Some(rec.sandbox.clone()), service_urls: HashMap::new() }
    }
}

fn peer_subject(req: &Request<impl Sized>) -> Option<String> {
    let certs = req.peer_certs()?;
    let first = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(first.as_ref()).ok()?;
    cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned)
}

#[tonic::async_trait]
impl OpenShell for SimService {
    async fn health(&self, r: Request<v1::HealthRequest>) -> Res<v1::HealthResponse> {
        self.enter("Health", r.metadata()).await?;
        Ok(Response::new(v1::HealthResponse {
            status: v1::ServiceStatus::Healthy as i32,
            version: self.0.faults.version(),
        }))
    }

    async fn get_current_user(&self, r: Request<v1::GetCurrentUserRequest>) -> Res<v1::GetCurrentUserResponse> {
        self.enter("GetCurrentUser", r.metadata()).await?;
        let (subject, idp) = match peer_subject(&r) {
            Some(cn) => (cn, "mtls"),
            None => ("anonymous".to_owned(), "none"),
        };
        Ok(Response::new(v1::GetCurrentUserResponse {
            display_name: subject.clone(),
            subject,
            roles: vec!["openshell-user".into()],
            scopes: vec![],
            identity_provider: idp.into(),
        }))
    }

    async fn get_gateway_info(&self, r: Request<v1::GetGatewayInfoRequest>) -> Res<v1::GetGatewayInfoResponse> {
        self.enter("GetGatewayInfo", r.metadata()).await?;
        Ok(Response::new(v1::GetGatewayInfoResponse {
            status: v1::ServiceStatus::Healthy as i32,
            gateway_version: self.0.faults.version(),
            compute_drivers: vec![v1::ComputeDriverInfo {
                name: "sim".into(),
                capabilities: Some(v1::ComputeDriverCapabilities {
                    driver_name: "openshell-sim".into(),
                    driver_version: env!("CARGO_PKG_VERSION").into(),
                    resource_capabilities: None,
                }),
            }],
            extensions: vec![],
        }))
    }

    async fn create_sandbox(&self, r: Request<v1::CreateSandboxRequest>) -> Res<v1::SandboxResponse> {
        self.enter("CreateSandbox", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::SandboxResponse>("CreateSandbox", &req.request_id) {
            return Ok(Response::new(done));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let name = if req.name.is_empty() { format!("sandbox-{}", &uuid()[..8]) } else { req.name.clone() };
        valid_name("name", &name)?;
        let key = (ws.clone(), name.clone());
        if st.sandboxes.contains_key(&key) {
            return Err(Status::already_exists(format!("sandbox {name:?} already exists in workspace {ws:?}")));
        }
        let mut spec = req.spec.unwrap_or_default();
        for p in &spec.providers {
            if !st.providers.contains_key(&(ws.clone(), p.clone())) {
                return Err(precondition(
                    "PROVIDER_NOT_FOUND",
                    &format!("provider {p:?} not found in workspace {ws:?}"),
                ));
            }
        }
        let mut policy = spec.policy.take().unwrap_or_else(default_policy);
        validate_policy(&policy)?;
        policy.version = 1;
        spec.policy = Some(policy.clone());
        let rv = st.next_version();
        let id = uuid();
        let mut rec = SandboxRec {
            sandbox: v1::Sandbox {
                metadata: Some(dm::ObjectMeta {
                    id: id.clone(),
                    name: name.clone(),
                    labels: req.labels,
                    resource_version: rv,
                    annotations: req.annotations,
                    workspace: ws.clone(),
                    created_time: Some(now()),
                    deletion_time: None,
                }),
                spec: Some(spec),
                status: Some(v1::SandboxStatus::default()),
                host_key_fingerprint: String::new(),
                created_from_workload_template: None,
            },
            revisions: vec![v1::SandboxPolicyRevision {
                version: 1,
                policy_hash: policy_hash(&policy),
                status: v1::PolicyStatus::Pending as i32,
                policy: Some(policy),
                created_time: Some(now()),
                ..Default::default()
            }],
            settings: BTreeMap::new(),
            config_revision: 1,
            logs: std::collections::VecDeque::new(),
            chunks: vec![],
            draft_version: 0,
            history: vec![],
            generation: 0,
        };
        rec.set_phase(
            v1::SandboxPhase::Provisioning,
            ("False", "SupervisorNotConnected", "waiting for the sandbox supervisor to connect"),
        );
        rec.push_log("info", "gateway", "openshell_sim", format!("sandbox {name} created"));
        let generation = rec.generation;
        let resp = Self::sandbox_response(&rec);
        st.sandboxes.insert(key.clone(), rec);
        st.remember("CreateSandbox", &req.request_id, &resp);
        drop(st);
        match self.0.faults.provisioning() {
            ProvisioningMode::Normal => {
                self.schedule(key, generation, self.0.timing.ready_delay, Transition::BecomeReady);
            }
            ProvisioningMode::Fail => {
                self.schedule(key, generation, self.0.timing.ready_delay, Transition::FailProvisioning);
            }
            ProvisioningMode::Hang => {}
        }
        Ok(Response::new(resp))
    }

    async fn get_sandbox(&self, r: Request<v1::GetSandboxRequest>) -> Res<v1::SandboxResponse> {
        self.enter("GetSandbox", r.metadata()).await?;
        let req = r.into_inner();
        let st = lock(&self.0);
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        Ok(Response::new(Self::sandbox_response(st.sandbox(&ws, &req.name)?)))
    }

    async fn list_sandboxes(&self, r: Request<v1::ListSandboxesRequest>) -> Res<v1::ListSandboxesResponse> {
        self.enter("ListSandboxes", r.metadata()).await?;
        let req = r.into_inner();
        let st = lock(&self.0);
        let scope = list_scope(&st, req.workspace_scope.as_ref())?;
        let selector = parse_selector(&req.label_selector)?;
        let (offset, size) = page_bounds(req.page_size, &req.page_token)?;
        let matching: Vec<&SandboxRec> = st
            .sandboxes
            .iter()
            .filter(|((ws, _), _)| scope.as_ref().is_none_or(|s| s == ws))
            .filter(|(_, rec)| {
                let labels = &rec.sandbox.metadata.as_ref().expect("metadata").labels;
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .map(|(_, rec)| rec)
            .collect();
        let total = matching.len();
        let sandboxes = matching.into_iter().skip(offset).take(size).map(|r| r.sandbox.clone()).collect();
        Ok(Response::new(v1::ListSandboxesResponse { sandboxes, next_page_token: next_token(offset, size, total) }))
    }

    async fn delete_sandbox(&self, r: Request<v1::DeleteSandboxRequest>) -> Res<v1::DeleteSandboxResponse> {
        self.enter("DeleteSandbox", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::DeleteSandboxResponse>("DeleteSandbox", &req.request_id) {
            return Ok(Response::new(done));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let key = (ws.clone(), req.name.clone());
        let Some(rec) = st.sandboxes.get_mut(&key) else {
            if req.allow_missing {
                return Ok(Response::new(v1::DeleteSandboxResponse {
                    outcome: v1::DeletionOutcome::AlreadyAbsent as i32,
                    sandbox_id: String::new(),
                }));
            }
            return Err(Status::not_found(format!("sandbox {:?} not found in workspace {ws:?}", req.name)));
        };
        let id = rec.id().to_owned();
        if rec.phase() != v1::SandboxPhase::Deleting {
            rec.set_phase(v1::SandboxPhase::Deleting, ("False", "Deleting", "sandbox is being deleted"));
            rec.meta_mut().deletion_time = Some(now());
            self.log(rec, "info", "gateway", "sandbox deletion requested".into());
            self.emit_sandbox(rec);
            let generation = rec.generation;
            self.schedule(key, generation, self.0.timing.transition_delay, Transition::Deleted);
        }
        let resp = v1::DeleteSandboxResponse { outcome: v1::DeletionOutcome::Accepted as i32, sandbox_id: id };
        st.remember("DeleteSandbox", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    async fn stop_sandbox(&self, r: Request<v1::StopSandboxRequest>) -> Res<v1::SandboxResponse> {
        self.enter("StopSandbox", r.metadata()).await?;
        let req = r.into_inner();
        let step = PowerStep {
            method: "StopSandbox",
            from: v1::SandboxPhase::Ready,
            already: [v1::SandboxPhase::Stopped, v1::SandboxPhase::Stopping],
            through: (v1::SandboxPhase::Stopping, "Stopping", "sandbox is stopping"),
            then: Transition::Stopped,
            refusal: ("SANDBOX_NOT_RUNNING", "it can only be stopped when ready"),
        };
        self.power(&step, req.workspace_scope.as_ref(), &req.name, &req.request_id).map(Response::new)
    }

    async fn start_sandbox(&self, r: Request<v1::StartSandboxRequest>) -> Res<v1::SandboxResponse> {
        self.enter("StartSandbox", r.metadata()).await?;
        let req = r.into_inner();
        let step = PowerStep {
            method: "StartSandbox",
            from: v1::SandboxPhase::Stopped,
            already: [v1::SandboxPhase::Ready, v1::SandboxPhase::Starting],
            through: (v1::SandboxPhase::Starting, "Starting", "sandbox is starting"),
            then: Transition::BecomeReady,
            refusal: ("SANDBOX_NOT_STOPPED", "it can only be started when stopped"),
        };
        self.power(&step, req.workspace_scope.as_ref(), &req.name, &req.request_id).map(Response::new)
    }

    async fn create_ssh_session(&self, r: Request<v1::CreateSshSessionRequest>) -> Res<v1::CreateSshSessionResponse> {
        self.enter("CreateSshSession", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let rec = st.sandbox(&ws, &req.sandbox)?;
        if rec.phase() != v1::SandboxPhase::Ready {
            return Err(precondition("SANDBOX_NOT_READY", "sandbox is not ready"));
        }
        let id = rec.id().to_owned();
        let token = uuid();
        st.ssh_sessions.insert(token.clone(), id.clone());
        let expires = chrono::Utc::now() + chrono::Duration::hours(24);
        Ok(Response::new(v1::CreateSshSessionResponse {
            host_key_fingerprint: format!("SHA256:{}", &policy_hash(&default_policy())[7..50]),
            sandbox_id: id,
            token,
            gateway_host: self.0.faults.ssh_host_override().unwrap_or_else(|| self.0.advertise_host.clone()),
            gateway_port: u32::from(self.0.port),
            gateway_scheme: "ssh".into(),
            expiration_time: Some(prost_types::Timestamp { seconds: expires.timestamp(), nanos: 0 }),
        }))
    }

    async fn revoke_ssh_session(&self, r: Request<v1::RevokeSshSessionRequest>) -> Res<v1::RevokeSshSessionResponse> {
        self.enter("RevokeSshSession", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        let outcome = if st.ssh_sessions.remove(&req.token).is_some() {
            v1::DeletionOutcome::Completed
        } else if req.allow_missing {
            v1::DeletionOutcome::AlreadyAbsent
        } else {
            return Err(Status::not_found("SSH session not found"));
        };
        Ok(Response::new(v1::RevokeSshSessionResponse { outcome: outcome as i32 }))
    }

    async fn exec_sandbox(&self, r: Request<v1::ExecSandboxRequest>) -> Res<BoxStream<v1::ExecSandboxEvent>> {
        use v1::exec_sandbox_event::Payload;
        self.enter("ExecSandbox", r.metadata()).await?;
        let req = r.into_inner();
        if req.command.is_empty() {
            return Err(invalid("command", "command must not be empty"));
        }
        // Subscribed before the command starts: a delete during it must end it.
        let mut events = self.0.events.subscribe();
        let (sandbox_id, output) = {
            let mut st = lock(&self.0);
            let ws = workspace(&st, req.workspace_scope.as_ref())?;
            let rec = st.sandbox_mut(&ws, &req.sandbox)?;
            if rec.phase() != v1::SandboxPhase::Ready {
                return Err(precondition("SANDBOX_NOT_READY", "sandbox is not ready"));
            }
            self.log(rec, "info", "sandbox", format!("exec: {}", req.command.join(" ")));
            let env: BTreeMap<_, _> = req.environment.clone().into_iter().collect();
            (rec.id().to_owned(), crate::exec::run(&req.command, &env, &req.workdir, &req.stdin))
        };
        let limit = req.execution_timeout.and_then(|d| Duration::try_from(d).ok()).filter(|d| !d.is_zero());
        let linger = self.0.faults.exec_linger();
        let (tx, rx) = mpsc::channel(16);
        let shutdown = self.0.shutdown.clone();
        tokio::spawn(async move {
            for chunk in output.chunks {
                let payload = match chunk {
                    crate::exec::Chunk::Stdout(data) => Payload::Stdout(v1::ExecSandboxStdout { data }),
                    crate::exec::Chunk::Stderr(data) => Payload::Stderr(v1::ExecSandboxStderr { data }),
                };
                if tx.send(Ok(v1::ExecSandboxEvent { payload: Some(payload) })).await.is_err() {
                    return; // the caller went away
                }
            }
            let mut code = output.exit_code;
            if !output.sleep.is_zero() {
                let wait = limit.map_or(output.sleep, |l| l.min(output.sleep));
                let gone = async {
                    loop {
                        match events.recv().await {
                            Ok(SimEvent::Gone { sandbox_id: id }) if id == sandbox_id => return,
                            Ok(SimEvent::Reset) | Err(broadcast::error::RecvError::Closed) => return,
                            _ => {}
                        }
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => return,
                    () = gone => {
                        let _ = tx.send(Err(Status::aborted("the sandbox was deleted while the command ran"))).await;
                        return;
                    }
                }
                if limit.is_some_and(|l| l < output.sleep) {
                    let msg = b"command timed out\n".to_vec();
                    let _ = tx
                        .send(Ok(v1::ExecSandboxEvent {
                            payload: Some(Payload::Stderr(v1::ExecSandboxStderr { data: msg })),
                        }))
                        .await;
                    code = 124;
                }
            }
            let _ = tx
                .send(Ok(v1::ExecSandboxEvent {
                    payload: Some(Payload::Exit(v1::ExecSandboxExit { exit_code: code })),
                }))
                .await;
            if !linger.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(linger) => {}
                    () = tx.closed() => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_sandbox_logs(&self, r: Request<v1::GetSandboxLogsRequest>) -> Res<v1::GetSandboxLogsResponse> {
        self.enter("GetSandboxLogs", r.metadata()).await?;
        let req = r.into_inner();
        let st = lock(&self.0);
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let rec = st.sandbox(&ws, &req.sandbox)?;
        let min = if req.min_level.is_empty() { 0 } else { level_rank(&req.min_level) };
        let since = req.since_time.map(|t| (t.seconds, t.nanos));
        let mut logs: Vec<v1::SandboxLogLine> = rec
            .logs
            .iter()
            .filter(|l| level_rank(&l.level) >= min)
            .filter(|l| req.sources.is_empty() || req.sources.contains(&l.source))
            .filter(|l| since.is_none_or(|s| l.event_time.is_some_and(|t| (t.seconds, t.nanos) >= s)))
            .cloned()
            .collect();
        let lines = if req.lines == 0 { LOG_RING } else { req.lines as usize };
        if logs.len() > lines {
            logs.drain(..logs.len() - lines);
        }
        Ok(Response::new(v1::GetSandboxLogsResponse { logs, buffer_total: rec.logs.len() as u32 }))
    }

    async fn watch_sandbox(&self, r: Request<v1::WatchSandboxRequest>) -> Res<BoxStream<v1::SandboxStreamEvent>> {
        use v1::sandbox_stream_event::Payload;
        self.enter("WatchSandbox", r.metadata()).await?;
        let req = r.into_inner();
        // Subscribe before taking the snapshot so nothing falls between them.
        let mut events = self.0.events.subscribe();
        let (id, snapshot, tail) = {
            let st = lock(&self.0);
            let ws = workspace(&st, req.workspace_scope.as_ref())?;
            let rec = st.sandbox(&ws, &req.sandbox)?;
            let tail: Vec<_> = if req.follow_logs && req.log_tail_lines > 0 {
                let n = (req.log_tail_lines as usize).min(rec.logs.len());
                rec.logs.iter().skip(rec.logs.len() - n).cloned().collect()
            } else {
                vec![]
            };
            (rec.id().to_owned(), rec.sandbox.clone(), tail)
        };
        let terminal = |s: &v1::Sandbox| {
            s.status.as_ref().is_some_and(|st| {
                [v1::SandboxPhase::Error, v1::SandboxPhase::Completed, v1::SandboxPhase::Stopped]
                    .iter()
                    .any(|p| *p as i32 == st.phase)
            })
        };
        let (tx, rx) = mpsc::channel(64);
        let shutdown = self.0.shutdown.clone();
        tokio::spawn(async move {
            let mut counter = 0u64;
            let mut send = |payload: Payload| {
                counter += 1;
                v1::SandboxStreamEvent { payload: Some(payload), cursor: format!("c{counter}") }
            };
            let first_terminal = terminal(&snapshot);
            if tx.send(Ok(send(Payload::Sandbox(snapshot)))).await.is_err() {
                return;
            }
            for line in tail {
                if tx.send(Ok(send(Payload::Log(line)))).await.is_err() {
                    return;
                }
            }
            if req.stop_on_terminal && first_terminal {
                return;
            }
            loop {
                let event = tokio::select! {
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => return,
                    e = events.recv() => e,
                };
                let payload = match event {
                    Ok(SimEvent::Payload { sandbox_id, payload }) if sandbox_id == id => *payload,
                    Ok(SimEvent::Gone { sandbox_id }) if sandbox_id == id => return,
                    Ok(SimEvent::Reset) | Err(broadcast::error::RecvError::Closed) => return,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => Payload::Warning(v1::SandboxStreamWarning {
                        message: format!("{n} events were dropped because the watcher fell behind"),
                    }),
                };
                let wanted = match &payload {
                    Payload::Sandbox(_) => req.follow_status,
                    Payload::Log(l) => {
                        req.follow_logs
                            && (req.log_sources.is_empty() || req.log_sources.contains(&l.source))
                            && (req.log_min_level.is_empty() || level_rank(&l.level) >= level_rank(&req.log_min_level))
                    }
                    Payload::Event(_) => req.follow_events,
                    Payload::DraftPolicyUpdate(_) => req.follow_events || req.follow_status,
                    Payload::Warning(_) => true,
                };
                if !wanted {
                    continue;
                }
                let stop = req.stop_on_terminal && matches!(&payload, Payload::Sandbox(s) if terminal(s));
                if tx.send(Ok(send(payload))).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    // ------------------------------------------------------------ providers

    async fn create_provider(&self, r: Request<v1::CreateProviderRequest>) -> Res<v1::ProviderResponse> {
        self.enter("CreateProvider", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::ProviderResponse>("CreateProvider", &req.request_id) {
            return Ok(Response::new(done));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let mut p = req.provider.ok_or_else(|| invalid("provider", "provider is required"))?;
        let name = p.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        valid_name("provider.metadata.name", &name)?;
        if p.r#type.is_empty() {
            return Err(invalid("provider.type", "provider type is required"));
        }
        if !p.credential_handles.is_empty() {
            return Err(invalid("provider.credential_handles", "clients may not set credential handles"));
        }
        if st.providers.contains_key(&(ws.clone(), name.clone())) {
            return Err(Status::already_exists(format!("provider {name:?} already exists in workspace {ws:?}")));
        }
        let rv = st.next_version();
        let meta = p.metadata.get_or_insert_with(Default::default);
        meta.id = uuid();
        meta.workspace.clone_from(&ws);
        meta.resource_version = rv;
        meta.created_time = Some(now());
        let resp = v1::ProviderResponse { provider: Some(redacted(&p)), target_receipts: vec![], mutation_id: uuid() };
        st.providers.insert((ws, name), state::ProviderRec { provider: p });
        st.remember("CreateProvider", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    async fn get_provider(&self, r: Request<v1::GetProviderRequest>) -> Res<v1::ProviderResponse> {
        self.enter("GetProvider", r.metadata()).await?;
        let req = r.into_inner();
        let st = lock(&self.0);
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let rec = st
            .providers
            .get(&(ws.clone(), req.name.clone()))
            .ok_or_else(|| Status::not_found(format!("provider {:?} not found in workspace {ws:?}", req.name)))?;
        Ok(Response::new(v1::ProviderResponse { provider: Some(redacted(&rec.provider)), ..Default::default() }))
    }

    async fn list_providers(&self, r: Request<v1::ListProvidersRequest>) -> Res<v1::ListProvidersResponse> {
        self.enter("ListProviders", r.metadata()).await?;
        let req = r.into_inner();
        let st = lock(&self.0);
        let scope = list_scope(&st, req.workspace_scope.as_ref())?;
        let (offset, size) = page_bounds(req.page_size, &req.page_token)?;
        let all: Vec<_> = st
            .providers
            .iter()
            .filter(|((ws, _), _)| scope.as_ref().is_none_or(|s| s == ws))
            .map(|(_, p)| redacted(&p.provider))
            .collect();
        let total = all.len();
        Ok(Response::new(v1::ListProvidersResponse {
            providers: all.into_iter().skip(offset).take(size).collect(),
            next_page_token: next_token(offset, size, total),
        }))
    }

    async fn update_provider(&self, r: Request<v1::UpdateProviderRequest>) -> Res<v1::ProviderResponse> {
        self.enter("UpdateProvider", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::ProviderResponse>("UpdateProvider", &req.request_id) {
            return Ok(Response::new(done));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let update = req.provider.ok_or_else(|| invalid("provider", "provider is required"))?;
        if !update.credential_handles.is_empty() {
            return Err(invalid("provider.credential_handles", "clients may not set credential handles"));
        }
        let name = update.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let rv = st.next_version();
        let rec = st
            .providers
            .get_mut(&(ws.clone(), name.clone()))
            .ok_or_else(|| Status::not_found(format!("provider {name:?} not found in workspace {ws:?}")))?;
        // Credentials merge: an empty value deletes the key; an empty map changes nothing.
        for (k, v) in update.credentials {
            if v.is_empty() {
                rec.provider.credentials.remove(&k);
            } else {
                rec.provider.credentials.insert(k, v);
            }
        }
        for (k, v) in update.config {
            rec.provider.config.insert(k, v);
        }
        if !update.r#type.is_empty() {
            rec.provider.r#type = update.r#type;
        }
        rec.provider.metadata.get_or_insert_with(Default::default).resource_version = rv;
        let resp = v1::ProviderResponse {
            provider: Some(redacted(&rec.provider)),
            target_receipts: vec![],
            mutation_id: uuid(),
        };
        // Provider changes refresh the candidates of pending chunks.
        for s in st.sandboxes.values_mut() {
            s.refresh_review_tokens();
        }
        st.remember("UpdateProvider", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    async fn delete_provider(&self, r: Request<v1::DeleteProviderRequest>) -> Res<v1::DeleteProviderResponse> {
        self.enter("DeleteProvider", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::DeleteProviderResponse>("DeleteProvider", &req.request_id) {
            return Ok(Response::new(done));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let key = (ws.clone(), req.name.clone());
        if !st.providers.contains_key(&key) {
            if req.allow_missing {
                return Ok(Response::new(v1::DeleteProviderResponse {
                    outcome: v1::DeletionOutcome::AlreadyAbsent as i32,
                }));
            }
            return Err(Status::not_found(format!("provider {:?} not found in workspace {ws:?}", req.name)));
        }
        let users = st.sandboxes_using(&ws, &req.name);
        if !users.is_empty() {
            return Err(precondition(
                "PROVIDER_IN_USE",
                &format!("provider {:?} is attached to sandboxes: {}", req.name, users.join(", ")),
            ));
        }
        st.providers.remove(&key);
        let resp = v1::DeleteProviderResponse { outcome: v1::DeletionOutcome::Completed as i32 };
        st.remember("DeleteProvider", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    async fn list_provider_profiles(
        &self,
        r: Request<v1::ListProviderProfilesRequest>,
    ) -> Res<v1::ListProviderProfilesResponse> {
        self.enter("ListProviderProfiles", r.metadata()).await?;
        let req = r.into_inner();
        let (offset, size) = page_bounds(req.page_size, &req.page_token)?;
        let all = lock(&self.0).profiles.clone();
        let total = all.len();
        Ok(Response::new(v1::ListProviderProfilesResponse {
            profiles: all.into_iter().skip(offset).take(size).collect(),
            next_page_token: next_token(offset, size, total),
        }))
    }

    async fn get_provider_profile(
        &self,
        r: Request<v1::GetProviderProfileRequest>,
    ) -> Res<v1::ProviderProfileResponse> {
        self.enter("GetProviderProfile", r.metadata()).await?;
        let id = r.into_inner().id;
        let profile = lock(&self.0)
            .profiles
            .iter()
            .find(|p| p.id == id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("provider profile {id:?} not found")))?;
        Ok(Response::new(v1::ProviderProfileResponse { profile: Some(profile) }))
    }

    async fn delete_provider_profile(
        &self,
        r: Request<v1::DeleteProviderProfileRequest>,
    ) -> Res<v1::DeleteProviderProfileResponse> {
        self.enter("DeleteProviderProfile", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        let before = st.profiles.len();
        st.profiles.retain(|p| p.id != req.id);
        let outcome = if st.profiles.len() < before {
            v1::DeletionOutcome::Completed
        } else if req.allow_missing {
            v1::DeletionOutcome::AlreadyAbsent
        } else {
            return Err(Status::not_found(format!("provider profile {:?} not found", req.id)));
        };
        Ok(Response::new(v1::DeleteProviderProfileResponse { outcome: outcome as i32 }))
    }

    async fn list_sandbox_providers(
        &self,
        r: Request<v1::ListSandboxProvidersRequest>,
    ) -> Res<v1::ListSandboxProvidersResponse> {
        self.enter("ListSandboxProviders", r.metadata()).await?;
        let req = r.into_inner();
        let st = lock(&self.0);
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let rec = st.sandbox(&ws, &req.sandbox)?;
        let names = rec.sandbox.spec.as_ref().map(|s| s.providers.clone()).unwrap_or_default();
        let (offset, size) = page_bounds(req.page_size, &req.page_token)?;
        let all: Vec<_> = names
            .iter()
            .filter_map(|n| st.providers.get(&(ws.clone(), n.clone())))
            .map(|p| redacted(&p.provider))
            .collect();
        let total = all.len();
        Ok(Response::new(v1::ListSandboxProvidersResponse {
            providers: all.into_iter().skip(offset).take(size).collect(),
            next_page_token: next_token(offset, size, total),
        }))
    }

    async fn attach_sandbox_provider(
        &self,
        r: Request<v1::AttachSandboxProviderRequest>,
    ) -> Res<v1::AttachSandboxProviderResponse> {
        self.enter("AttachSandboxProvider", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::AttachSandboxProviderResponse>("AttachSandboxProvider", &req.request_id) {
            return Ok(Response::new(done));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        if !st.providers.contains_key(&(ws.clone(), req.provider.clone())) {
            return Err(Status::not_found(format!("provider {:?} not found in workspace {ws:?}", req.provider)));
        }
        let rv = st.next_version();
        let rec = st.sandbox_mut(&ws, &req.sandbox)?;
        let current = rec.sandbox.metadata.as_ref().map_or(0, |m| m.resource_version);
        if req.expected_resource_version != 0 && req.expected_resource_version != current {
            return Err(conflict(req.expected_resource_version, current));
        }
        let spec = rec.sandbox.spec.get_or_insert_with(Default::default);
        let attached = !spec.providers.contains(&req.provider);
        if attached {
            spec.providers.push(req.provider.clone());
            rec.meta_mut().resource_version = rv;
            rec.refresh_review_tokens();
            self.emit_sandbox(rec);
        }
        let resp = v1::AttachSandboxProviderResponse { sandbox: Some(rec.sandbox.clone()), attached, receipt: None };
        st.remember("AttachSandboxProvider", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    async fn detach_sandbox_provider(
        &self,
        r: Request<v1::DetachSandboxProviderRequest>,
    ) -> Res<v1::DetachSandboxProviderResponse> {
        self.enter("DetachSandboxProvider", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::DetachSandboxProviderResponse>("DetachSandboxProvider", &req.request_id) {
            return Ok(Response::new(done));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let rv = st.next_version();
        let rec = st.sandbox_mut(&ws, &req.sandbox)?;
        let current = rec.sandbox.metadata.as_ref().map_or(0, |m| m.resource_version);
        if req.expected_resource_version != 0 && req.expected_resource_version != current {
            return Err(conflict(req.expected_resource_version, current));
        }
        let spec = rec.sandbox.spec.get_or_insert_with(Default::default);
        let before = spec.providers.len();
        spec.providers.retain(|p| p != &req.provider);
        let detached = spec.providers.len() != before;
        if detached {
            rec.meta_mut().resource_version = rv;
            rec.refresh_review_tokens();
            self.emit_sandbox(rec);
        }
        let resp = v1::DetachSandboxProviderResponse { sandbox: Some(rec.sandbox.clone()), detached, receipt: None };
        st.remember("DetachSandboxProvider", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    // ------------------------------------------------------------ config & policy

    async fn get_sandbox_config(&self, r: Request<sb::GetSandboxConfigRequest>) -> Res<sb::GetSandboxConfigResponse> {
        self.enter("GetSandboxConfig", r.metadata()).await?;
        let req = r.into_inner();
        let st = lock(&self.0);
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let rec = st.sandbox(&ws, &req.name)?;
        let active = rec.active();
        let mut settings: HashMap<String, sb::EffectiveSetting> = st
            .gateway_settings
            .iter()
            .map(|(k, v)| {
                (k.clone(), sb::EffectiveSetting { value: Some(v.clone()), scope: sb::SettingScope::Global as i32 })
            })
            .collect();
        for (k, v) in &rec.settings {
            settings.insert(
                k.clone(),
                sb::EffectiveSetting { value: Some(v.clone()), scope: sb::SettingScope::Sandbox as i32 },
            );
        }
        Ok(Response::new(sb::GetSandboxConfigResponse {
            policy: active.policy.clone(),
            version: active.version,
            policy_hash: active.policy_hash.clone(),
            settings,
            config_revision: rec.config_revision,
            policy_source: sb::PolicySource::Sandbox as i32,
            workspace: ws,
            configuration_admitted: rec.phase() == v1::SandboxPhase::Ready,
            settings_revision: st.settings_revision,
            ..Default::default()
        }))
    }

    async fn get_gateway_config(&self, r: Request<sb::GetGatewayConfigRequest>) -> Res<sb::GetGatewayConfigResponse> {
        self.enter("GetGatewayConfig", r.metadata()).await?;
        let st = lock(&self.0);
        Ok(Response::new(sb::GetGatewayConfigResponse {
            settings: st.gateway_settings.clone().into_iter().collect(),
            settings_revision: st.settings_revision,
        }))
    }

    async fn update_config(&self, r: Request<v1::UpdateConfigRequest>) -> Res<v1::UpdateConfigResponse> {
        self.enter("UpdateConfig", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::UpdateConfigResponse>("UpdateConfig", &req.request_id) {
            return Ok(Response::new(done));
        }
        let wants_policy = req.policy.is_some() || !req.merge_operations.is_empty();
        if wants_policy && !req.setting_key.is_empty() {
            return Err(invalid("setting_key", "set either a policy change or a setting, not both"));
        }
        if req.policy.is_some() && !req.merge_operations.is_empty() {
            return Err(invalid("merge_operations", "send either a full policy or merge operations, not both"));
        }
        if req.global && !req.sandbox.is_empty() {
            return Err(invalid("global", "a global change names no sandbox"));
        }
        if !req.global && req.sandbox.is_empty() {
            return Err(invalid("sandbox", "sandbox is required unless global is set"));
        }
        if req.global {
            if wants_policy {
                return Err(precondition(
                    "GLOBAL_POLICY_UNSUPPORTED",
                    "global policies are not supported by openshell-sim",
                ));
            }
            if req.setting_key.is_empty() {
                return Err(invalid("setting_key", "a global change needs a setting_key"));
            }
            check_setting(&req.setting_key, req.setting_value.as_ref())?;
            let deleted = if req.delete_setting {
                st.gateway_settings.remove(&req.setting_key).is_some()
            } else {
                let v =
                    req.setting_value.clone().ok_or_else(|| invalid("setting_value", "setting_value is required"))?;
                st.gateway_settings.insert(req.setting_key.clone(), v);
                false
            };
            st.settings_revision += 1;
            let resp =
                v1::UpdateConfigResponse { settings_revision: st.settings_revision, deleted, ..Default::default() };
            st.remember("UpdateConfig", &req.request_id, &resp);
            return Ok(Response::new(resp));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let key = (ws.clone(), req.sandbox.clone());
        let rec = st.sandbox(&ws, &req.sandbox)?;
        let current_rv = rec.sandbox.metadata.as_ref().map_or(0, |m| m.resource_version);
        if req.expected_resource_version != 0 && req.expected_resource_version != current_rv {
            return Err(conflict(req.expected_resource_version, current_rv));
        }
        if !req.setting_key.is_empty() {
            check_setting(&req.setting_key, req.setting_value.as_ref())?;
            let rv = st.next_version();
            let rec = st.sandbox_mut(&ws, &req.sandbox)?;
            let deleted = if req.delete_setting {
                rec.settings.remove(&req.setting_key).is_some()
            } else {
                let v =
                    req.setting_value.clone().ok_or_else(|| invalid("setting_value", "setting_value is required"))?;
                rec.settings.insert(req.setting_key.clone(), v);
                false
            };
            rec.config_revision += 1;
            rec.meta_mut().resource_version = rv;
            let latest = rec.latest();
            let resp = v1::UpdateConfigResponse {
                version: latest.version,
                policy_hash: latest.policy_hash.clone(),
                settings_revision: st.settings_revision,
                deleted,
                annotations: HashMap::new(),
            };
            st.remember("UpdateConfig", &req.request_id, &resp);
            return Ok(Response::new(resp));
        }
        if !wants_policy {
            return Err(invalid("policy", "nothing to update: send a policy, merge operations or a setting"));
        }
        let base = rec.latest().policy.clone().unwrap_or_default();
        let new_policy = match &req.policy {
            Some(p) => p.clone(),
            None => apply_merge(&base, &req.merge_operations)?,
        };
        validate_policy(&new_policy)?;
        if rec.phase() != v1::SandboxPhase::Provisioning
            && let Some(section) = locked_section_change(&base, &new_policy)
        {
            return Err(precondition(
                "IMMUTABLE_POLICY_SECTION",
                &format!("the {section} section cannot change on a live sandbox; recreate the sandbox to change it"),
            ));
        }
        let (version, hash) = self.commit_policy(&mut st, &key, new_policy);
        let resp = v1::UpdateConfigResponse {
            version,
            policy_hash: hash,
            settings_revision: st.settings_revision,
            deleted: false,
            annotations: req.annotations,
        };
        st.remember("UpdateConfig", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    async fn get_sandbox_policy_status(
        &self,
        r: Request<v1::GetSandboxPolicyStatusRequest>,
    ) -> Res<v1::GetSandboxPolicyStatusResponse> {
        self.enter("GetSandboxPolicyStatus", r.metadata()).await?;
        let req = r.into_inner();
        let st = lock(&self.0);
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let rec = st.sandbox(&ws, &req.sandbox)?;
        let revision = if req.version == 0 {
            rec.latest().clone()
        } else {
            rec.revisions
                .iter()
                .find(|r| r.version == req.version)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("policy version {} not found", req.version)))?
        };
        let active_version =
            rec.revisions.iter().rev().find(|r| r.status == v1::PolicyStatus::Loaded as i32).map_or(0, |r| r.version);
        Ok(Response::new(v1::GetSandboxPolicyStatusResponse { revision: Some(revision), active_version }))
    }

    async fn list_sandbox_policies(
        &self,
        r: Request<v1::ListSandboxPoliciesRequest>,
    ) -> Res<v1::ListSandboxPoliciesResponse> {
        self.enter("ListSandboxPolicies", r.metadata()).await?;
        let req = r.into_inner();
        let st = lock(&self.0);
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let rec = st.sandbox(&ws, &req.sandbox)?;
        let (offset, size) = page_bounds(req.page_size, &req.page_token)?;
        let total = rec.revisions.len();
        Ok(Response::new(v1::ListSandboxPoliciesResponse {
            revisions: rec.revisions.iter().rev().skip(offset).take(size).cloned().collect(),
            next_page_token: next_token(offset, size, total),
        }))
    }

    // ------------------------------------------------------------ drafts

    async fn get_draft_policy(&self, r: Request<v1::GetDraftPolicyRequest>) -> Res<v1::GetDraftPolicyResponse> {
        self.enter("GetDraftPolicy", r.metadata()).await?;
        let req = r.into_inner();
        let st = lock(&self.0);
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let rec = st.sandbox(&ws, &req.sandbox)?;
        let chunks: Vec<_> = rec
            .chunks
            .iter()
            .filter(|c| req.status_filter.is_empty() || c.status == req.status_filter)
            .cloned()
            .collect();
        let pending = rec.chunks.iter().filter(|c| c.status == "pending").count();
        Ok(Response::new(v1::GetDraftPolicyResponse {
            chunks,
            rolling_summary: format!("{pending} pending proposal(s)"),
            draft_version: rec.draft_version,
            last_analyzed_time: rec.chunks.iter().filter_map(|c| c.last_seen_time).max_by_key(|t| (t.seconds, t.nanos)),
        }))
    }

    async fn approve_draft_chunk(
        &self,
        r: Request<v1::ApproveDraftChunkRequest>,
    ) -> Res<v1::ApproveDraftChunkResponse> {
        self.enter("ApproveDraftChunk", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::ApproveDraftChunkResponse>("ApproveDraftChunk", &req.request_id) {
            return Ok(Response::new(done));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        st.sandbox(&ws, &req.sandbox)?;
        let key = (ws, req.sandbox.clone());
        let (policy_version, policy_hash) =
            self.approve_locked(&mut st, &key, &req.chunk_id, Some(&req.review_token), "approved by a reviewer")?;
        let resp = v1::ApproveDraftChunkResponse { policy_version, policy_hash };
        st.remember("ApproveDraftChunk", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    async fn reject_draft_chunk(&self, r: Request<v1::RejectDraftChunkRequest>) -> Res<v1::RejectDraftChunkResponse> {
        self.enter("RejectDraftChunk", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::RejectDraftChunkResponse>("RejectDraftChunk", &req.request_id) {
            return Ok(Response::new(done));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let rec = st.sandbox_mut(&ws, &req.sandbox)?;
        let chunk = rec
            .chunks
            .iter_mut()
            .find(|c| c.id == req.chunk_id)
            .ok_or_else(|| Status::not_found(format!("chunk {} not found", req.chunk_id)))?;
        if chunk.status != "pending" {
            return Err(precondition(
                "CHUNK_NOT_PENDING",
                &format!("chunk {} is {}, not pending", req.chunk_id, chunk.status),
            ));
        }
        "rejected".clone_into(&mut chunk.status);
        chunk.rejection_reason.clone_from(&req.reason);
        chunk.decided_time = Some(now());
        rec.draft_version += 1;
        rec.history(
            "rejected",
            if req.reason.is_empty() { "rejected".into() } else { format!("rejected: {}", req.reason) },
            &req.chunk_id,
        );
        self.draft_notice(rec, 0, format!("chunk {} rejected", req.chunk_id));
        let resp = v1::RejectDraftChunkResponse {};
        st.remember("RejectDraftChunk", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    async fn approve_all_draft_chunks(
        &self,
        r: Request<v1::ApproveAllDraftChunksRequest>,
    ) -> Res<v1::ApproveAllDraftChunksResponse> {
        self.enter("ApproveAllDraftChunks", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::ApproveAllDraftChunksResponse>("ApproveAllDraftChunks", &req.request_id) {
            return Ok(Response::new(done));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let key = (ws.clone(), req.sandbox.clone());
        let rec = st.sandbox(&ws, &req.sandbox)?;
        let mut approve = Vec::new();
        let mut skipped = 0u32;
        for c in rec.chunks.iter().filter(|c| c.status == "pending") {
            if !req.approvals.is_empty() {
                match req.approvals.iter().find(|a| a.chunk_id == c.id) {
                    None => continue,
                    Some(a) if a.review_token != c.review_token => {
                        return Err(precondition(
                            "STALE_REVIEW_TOKEN",
                            &format!("review token for chunk {} is stale", c.id),
                        ));
                    }
                    Some(_) => {}
                }
            }
            if !c.security_notes.trim().is_empty() && !req.include_security_flagged {
                skipped += 1;
                continue;
            }
            approve.push((c.id.clone(), c.proposed_rule.clone().unwrap_or_default()));
        }
        let mut policy = rec.latest().policy.clone().unwrap_or_default();
        for (_, rule) in &approve {
            policy = with_rule(&policy, rule);
        }
        let (policy_version, policy_hash) = if approve.is_empty() {
            (rec.latest().version, rec.latest().policy_hash.clone())
        } else {
            self.commit_policy(&mut st, &key, policy)
        };
        let rec = st.sandbox_mut(&ws, &req.sandbox)?;
        for (id, _) in &approve {
            if let Some(c) = rec.chunks.iter_mut().find(|c| &c.id == id) {
                "approved".clone_into(&mut c.status);
                c.decided_time = Some(now());
            }
            rec.history("approved", format!("approved in bulk; policy version {policy_version}"), id);
        }
        rec.draft_version += 1;
        self.draft_notice(rec, 0, format!("{} chunk(s) approved, {skipped} skipped", approve.len()));
        let resp = v1::ApproveAllDraftChunksResponse {
            policy_version,
            policy_hash,
            chunks_approved: approve.len() as u32,
            chunks_skipped: skipped,
        };
        st.remember("ApproveAllDraftChunks", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    async fn edit_draft_chunk(&self, r: Request<v1::EditDraftChunkRequest>) -> Res<v1::EditDraftChunkResponse> {
        self.enter("EditDraftChunk", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::EditDraftChunkResponse>("EditDraftChunk", &req.request_id) {
            return Ok(Response::new(done));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let rec = st.sandbox_mut(&ws, &req.sandbox)?;
        let rule = req.proposed_rule.ok_or_else(|| invalid("proposed_rule", "proposed_rule is required"))?;
        let current = rec.latest().policy.clone().unwrap_or_default();
        let candidate = with_rule(&current, &rule);
        validate_policy(&candidate)?;
        let chunk = rec
            .chunks
            .iter_mut()
            .find(|c| c.id == req.chunk_id)
            .ok_or_else(|| Status::not_found(format!("chunk {} not found", req.chunk_id)))?;
        if chunk.status != "pending" {
            return Err(precondition(
                "CHUNK_NOT_PENDING",
                &format!("chunk {} is {}, not pending", req.chunk_id, chunk.status),
            ));
        }
        chunk.rule_name.clone_from(&rule.name);
        chunk.proposed_rule = Some(rule);
        chunk.review_token = uuid();
        chunk.candidate_effective_policy_hash = policy_hash(&candidate);
        chunk.candidate_effective_policy = Some(candidate);
        rec.draft_version += 1;
        rec.history("edited", "proposed rule edited by a reviewer".into(), &req.chunk_id);
        let resp = v1::EditDraftChunkResponse {};
        st.remember("EditDraftChunk", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    async fn undo_draft_chunk(&self, r: Request<v1::UndoDraftChunkRequest>) -> Res<v1::UndoDraftChunkResponse> {
        self.enter("UndoDraftChunk", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::UndoDraftChunkResponse>("UndoDraftChunk", &req.request_id) {
            return Ok(Response::new(done));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let key = (ws.clone(), req.sandbox.clone());
        let rec = st.sandbox(&ws, &req.sandbox)?;
        let chunk = rec
            .chunks
            .iter()
            .find(|c| c.id == req.chunk_id)
            .ok_or_else(|| Status::not_found(format!("chunk {} not found", req.chunk_id)))?;
        if chunk.status != "approved" {
            return Err(precondition(
                "CHUNK_NOT_APPROVED",
                &format!("chunk {} is {}, only approved chunks can be undone", req.chunk_id, chunk.status),
            ));
        }
        let rule = chunk.proposed_rule.clone().unwrap_or_default();
        let policy = without_rule(&rec.latest().policy.clone().unwrap_or_default(), &rule);
        let (policy_version, policy_hash) = self.commit_policy(&mut st, &key, policy);
        let rec = st.sandbox_mut(&ws, &req.sandbox)?;
        if let Some(c) = rec.chunks.iter_mut().find(|c| c.id == req.chunk_id) {
            "pending".clone_into(&mut c.status);
            c.decided_time = None;
        }
        rec.refresh_review_tokens();
        rec.draft_version += 1;
        rec.history("undone", format!("approval undone; policy version {policy_version}"), &req.chunk_id);
        let resp = v1::UndoDraftChunkResponse { policy_version, policy_hash };
        st.remember("UndoDraftChunk", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    async fn clear_draft_chunks(&self, r: Request<v1::ClearDraftChunksRequest>) -> Res<v1::ClearDraftChunksResponse> {
        self.enter("ClearDraftChunks", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::ClearDraftChunksResponse>("ClearDraftChunks", &req.request_id) {
            return Ok(Response::new(done));
        }
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        let rec = st.sandbox_mut(&ws, &req.sandbox)?;
        let before = rec.chunks.len();
        rec.chunks.retain(|c| c.status != "pending");
        let cleared = (before - rec.chunks.len()) as u32;
        if cleared > 0 {
            rec.draft_version += 1;
            rec.history("cleared", format!("{cleared} pending chunk(s) cleared"), "");
            self.draft_notice(rec, 0, format!("{cleared} chunk(s) cleared"));
        }
        let resp = v1::ClearDraftChunksResponse { chunks_cleared: cleared };
        st.remember("ClearDraftChunks", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    async fn get_draft_history(&self, r: Request<v1::GetDraftHistoryRequest>) -> Res<v1::GetDraftHistoryResponse> {
        self.enter("GetDraftHistory", r.metadata()).await?;
        let req = r.into_inner();
        let st = lock(&self.0);
        let ws = workspace(&st, req.workspace_scope.as_ref())?;
        Ok(Response::new(v1::GetDraftHistoryResponse { entries: st.sandbox(&ws, &req.sandbox)?.history.clone() }))
    }

    // ------------------------------------------------------------ workspaces

    async fn create_workspace(&self, r: Request<v1::CreateWorkspaceRequest>) -> Res<v1::CreateWorkspaceResponse> {
        self.enter("CreateWorkspace", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::CreateWorkspaceResponse>("CreateWorkspace", &req.request_id) {
            return Ok(Response::new(done));
        }
        valid_name("name", &req.name)?;
        if st.workspaces.contains_key(&req.name) {
            return Err(Status::already_exists(format!("workspace {:?} already exists", req.name)));
        }
        let ws = st.add_workspace(&req.name, req.labels);
        let resp = v1::CreateWorkspaceResponse { workspace: Some(ws) };
        st.remember("CreateWorkspace", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    async fn get_workspace(&self, r: Request<v1::GetWorkspaceRequest>) -> Res<v1::GetWorkspaceResponse> {
        self.enter("GetWorkspace", r.metadata()).await?;
        let name = r.into_inner().name;
        let st = lock(&self.0);
        let ws = st.workspaces.get(&name).ok_or_else(|| Status::not_found(format!("workspace {name:?} not found")))?;
        Ok(Response::new(v1::GetWorkspaceResponse { workspace: Some(ws.workspace.clone()) }))
    }

    async fn list_workspaces(&self, r: Request<v1::ListWorkspacesRequest>) -> Res<v1::ListWorkspacesResponse> {
        self.enter("ListWorkspaces", r.metadata()).await?;
        let req = r.into_inner();
        let st = lock(&self.0);
        let selector = parse_selector(&req.label_selector)?;
        let (offset, size) = page_bounds(req.page_size, &req.page_token)?;
        let all: Vec<_> = st
            .workspaces
            .values()
            .filter(|w| {
                let labels = &w.workspace.metadata.as_ref().expect("metadata").labels;
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .map(|w| w.workspace.clone())
            .collect();
        let total = all.len();
        Ok(Response::new(v1::ListWorkspacesResponse {
            workspaces: all.into_iter().skip(offset).take(size).collect(),
            next_page_token: next_token(offset, size, total),
        }))
    }

    async fn delete_workspace(&self, r: Request<v1::DeleteWorkspaceRequest>) -> Res<v1::DeleteWorkspaceResponse> {
        self.enter("DeleteWorkspace", r.metadata()).await?;
        let req = r.into_inner();
        let mut st = lock(&self.0);
        if let Some(done) = st.replay::<v1::DeleteWorkspaceResponse>("DeleteWorkspace", &req.request_id) {
            return Ok(Response::new(done));
        }
        if !st.workspaces.contains_key(&req.name) {
            if req.allow_missing {
                return Ok(Response::new(v1::DeleteWorkspaceResponse {
                    outcome: v1::DeletionOutcome::AlreadyAbsent as i32,
                }));
            }
            return Err(Status::not_found(format!("workspace {:?} not found", req.name)));
        }
        if req.name == "default" {
            return Err(precondition("DEFAULT_WORKSPACE", "the default workspace cannot be deleted"));
        }
        if st.sandboxes.keys().any(|(ws, _)| *ws == req.name) {
            return Err(precondition("WORKSPACE_NOT_EMPTY", &format!("workspace {:?} still has sandboxes", req.name)));
        }
        st.workspaces.remove(&req.name);
        let resp = v1::DeleteWorkspaceResponse { outcome: v1::DeletionOutcome::Completed as i32 };
        st.remember("DeleteWorkspace", &req.request_id, &resp);
        Ok(Response::new(resp))
    }

    // ------------------------------------------------------------ supervisor-only

    async fn get_provider_credentials(
        &self,
        r: Request<v1::GetProviderCredentialsRequest>,
    ) -> Res<v1::GetProviderCredentialsResponse> {
        self.enter("GetProviderCredentials", r.metadata()).await?;
        Err(Status::permission_denied("this method requires a verified operator certificate"))
    }

    async fn report_policy_status(
        &self,
        r: Request<v1::ReportPolicyStatusRequest>,
    ) -> Res<v1::ReportPolicyStatusResponse> {
        self.enter("ReportPolicyStatus", r.metadata()).await?;
        Err(sandbox_only())
    }

    async fn report_endpoint_status(
        &self,
        r: Request<v1::ReportEndpointStatusRequest>,
    ) -> Res<v1::ReportEndpointStatusResponse> {
        self.enter("ReportEndpointStatus", r.metadata()).await?;
        Err(sandbox_only())
    }

    async fn report_provider_readiness(
        &self,
        r: Request<v1::ReportProviderReadinessRequest>,
    ) -> Res<v1::ReportProviderReadinessResponse> {
        self.enter("ReportProviderReadiness", r.metadata()).await?;
        Err(sandbox_only())
    }

    async fn report_sandbox_configuration(
        &self,
        r: Request<v1::ReportSandboxConfigurationRequest>,
    ) -> Res<v1::ReportSandboxConfigurationResponse> {
        self.enter("ReportSandboxConfiguration", r.metadata()).await?;
        Err(sandbox_only())
    }

    async fn get_sandbox_provider_environment(
        &self,
        r: Request<v1::GetSandboxProviderEnvironmentRequest>,
    ) -> Res<v1::GetSandboxProviderEnvironmentResponse> {
        self.enter("GetSandboxProviderEnvironment", r.metadata()).await?;
        Err(sandbox_only())
    }

    async fn exchange_provider_subject_token(
        &self,
        r: Request<v1::ExchangeProviderSubjectTokenRequest>,
    ) -> Res<v1::ExchangeProviderSubjectTokenResponse> {
        self.enter("ExchangeProviderSubjectToken", r.metadata()).await?;
        Err(sandbox_only())
    }

    async fn push_sandbox_logs(
        &self,
        r: Request<tonic::Streaming<v1::PushSandboxLogsRequest>>,
    ) -> Res<v1::PushSandboxLogsResponse> {
        self.enter("PushSandboxLogs", r.metadata()).await?;
        Err(sandbox_only())
    }

    async fn connect_supervisor(
        &self,
        r: Request<tonic::Streaming<v1::SupervisorMessage>>,
    ) -> Res<BoxStream<v1::GatewayMessage>> {
        self.enter("ConnectSupervisor", r.metadata()).await?;
        Err(sandbox_only())
    }

    async fn report_main_process_exit(
        &self,
        r: Request<v1::ReportMainProcessExitRequest>,
    ) -> Res<v1::ReportMainProcessExitResponse> {
        self.enter("ReportMainProcessExit", r.metadata()).await?;
        Err(sandbox_only())
    }

    async fn finalize_main_process_exit(
        &self,
        r: Request<v1::FinalizeMainProcessExitRequest>,
    ) -> Res<v1::FinalizeMainProcessExitResponse> {
        self.enter("FinalizeMainProcessExit", r.metadata()).await?;
        Err(sandbox_only())
    }

    async fn relay_stream(&self, r: Request<tonic::Streaming<v1::RelayFrame>>) -> Res<BoxStream<v1::RelayFrame>> {
        self.enter("RelayStream", r.metadata()).await?;
        Err(sandbox_only())
    }

    async fn submit_policy_analysis(
        &self,
        r: Request<v1::SubmitPolicyAnalysisRequest>,
    ) -> Res<v1::SubmitPolicyAnalysisResponse> {
        self.enter("SubmitPolicyAnalysis", r.metadata()).await?;
        Err(sandbox_only())
    }

    async fn issue_sandbox_token(
        &self,
        r: Request<v1::IssueSandboxTokenRequest>,
    ) -> Res<v1::IssueSandboxTokenResponse> {
        self.enter("IssueSandboxToken", r.metadata()).await?;
        Err(sandbox_only())
    }

    async fn refresh_sandbox_token(
        &self,
        r: Request<v1::RefreshSandboxTokenRequest>,
    ) -> Res<v1::RefreshSandboxTokenResponse> {
        self.enter("RefreshSandboxToken", r.metadata()).await?;
        Err(sandbox_only())
    }
}

impl SimService {
    pub(crate) fn reset(&self) {
        let mut st = lock(&self.0);
        *st = State::new();
        let _ = self.0.events.send(SimEvent::Reset);
    }

    pub(crate) fn ready_sandboxes(&self) -> Vec<(String, String)> {
        lock(&self.0)
            .sandboxes
            .iter()
            .filter(|(_, r)| r.phase() == v1::SandboxPhase::Ready)
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub(crate) fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut lock(&self.0))
    }
}
