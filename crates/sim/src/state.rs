//! The simulator's in-memory world and the rules that change it. Everything
//! here is synchronous and runs under one lock; timers and streams live in
//! `service`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use breakwater_wire::{datamodel as dm, sandbox as sb, v1};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::errors;

/// Log lines kept per sandbox, like the gateway's default ring.
pub(crate) const LOG_RING: usize = 2000;
const IDEMPOTENCY_CACHE: usize = 10_000;

pub(crate) fn now() -> prost_types::Timestamp {
    let t = chrono::Utc::now();
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

pub(crate) fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(crate) struct SandboxRec {
    pub sandbox: v1::Sandbox,
    pub revisions: Vec<v1::SandboxPolicyRevision>,
    pub settings: BTreeMap<String, sb::SettingValue>,
    pub config_revision: u64,
    pub logs: VecDeque<v1::SandboxLogLine>,
    pub chunks: Vec<v1::PolicyChunk>,
    pub draft_version: u64,
    pub history: Vec<v1::DraftHistoryEntry>,
    /// Bumped on every lifecycle change so stale timers do nothing.
    pub generation: u64,
}

impl SandboxRec {
    pub(crate) fn id(&self) -> &str {
        &self.sandbox.metadata.as_ref().expect("sandboxes always have metadata").id
    }

    pub(crate) fn meta_mut(&mut self) -> &mut dm::ObjectMeta {
        self.sandbox.metadata.get_or_insert_with(Default::default)
    }

    pub(crate) fn status_mut(&mut self) -> &mut v1::SandboxStatus {
        self.sandbox.status.get_or_insert_with(Default::default)
    }

    pub(crate) fn phase(&self) -> v1::SandboxPhase {
        self.sandbox.status.as_ref().map_or(v1::SandboxPhase::Unspecified, |s| {
            v1::SandboxPhase::try_from(s.phase).unwrap_or(v1::SandboxPhase::Unspecified)
        })
    }

    pub(crate) fn set_phase(&mut self, phase: v1::SandboxPhase, ready: (&str, &str, &str)) {
        let status = self.status_mut();
        status.phase = phase as i32;
        status.conditions = vec![v1::SandboxCondition {
            r#type: "Ready".into(),
            status: ready.0.into(),
            reason: ready.1.into(),
            message: ready.2.into(),
            transition_time: Some(now()),
        }];
        self.generation += 1;
    }

    /// The newest revision (whatever its status).
    pub(crate) fn latest(&self) -> &v1::SandboxPolicyRevision {
        self.revisions.last().expect("sandboxes always have a revision")
    }

    /// The policy in force: the newest LOADED revision, else the newest one.
    pub(crate) fn active(&self) -> &v1::SandboxPolicyRevision {
        self.revisions
            .iter()
            .rev()
            .find(|r| r.status == v1::PolicyStatus::Loaded as i32)
            .unwrap_or_else(|| self.latest())
    }

    pub(crate) fn push_log(&mut self, level: &str, source: &str, target: &str, message: String) -> v1::SandboxLogLine {
        let line = v1::SandboxLogLine {
            sandbox_id: self.id().to_owned(),
            level: level.into(),
            target: target.into(),
            message,
            source: source.into(),
            fields: HashMap::new(),
            event_time: Some(now()),
        };
        if self.logs.len() == LOG_RING {
            self.logs.pop_front();
        }
        self.logs.push_back(line.clone());
        line
    }

    /// Any change to the policy refreshes every pending chunk's candidate,
    /// so review tokens read before the change go stale.
    pub(crate) fn refresh_review_tokens(&mut self) {
        let current = self.latest().policy.clone().unwrap_or_default();
        let current_hash = policy_hash(&current);
        for c in self.chunks.iter_mut().filter(|c| c.status == "pending") {
            c.review_token = uuid();
            let candidate = c.proposed_rule.as_ref().map_or_else(|| current.clone(), |r| with_rule(&current, r));
            c.current_effective_policy_hash.clone_from(&current_hash);
            c.candidate_effective_policy_hash = policy_hash(&candidate);
            c.current_effective_policy = Some(current.clone());
            c.candidate_effective_policy = Some(candidate);
        }
    }

    pub(crate) fn history(&mut self, event_type: &str, description: String, chunk_id: &str) {
        self.history.push(v1::DraftHistoryEntry {
            event_type: event_type.into(),
            description,
            chunk_id: chunk_id.into(),
            event_time: Some(now()),
        });
    }
}

pub(crate) struct WorkspaceRec {
    pub workspace: dm::Workspace,
}

pub(crate) struct ProviderRec {
    pub provider: dm::Provider,
}

/// The whole simulated gateway.
pub(crate) struct State {
    pub workspaces: BTreeMap<String, WorkspaceRec>,
    /// Keyed by (workspace, name): listing order is stable.
    pub sandboxes: BTreeMap<(String, String), SandboxRec>,
    pub providers: BTreeMap<(String, String), ProviderRec>,
    /// Provider profiles (the built-in ones until deleted), shared by workspaces.
    pub profiles: Vec<v1::ProviderProfile>,
    /// SSH token → sandbox id.
    pub ssh_sessions: HashMap<String, String>,
    pub gateway_settings: BTreeMap<String, sb::SettingValue>,
    pub settings_revision: u64,
    pub resource_version: u64,
    /// "Method/request_id" → encoded response.
    idempotency: HashMap<String, Vec<u8>>,
    idempotency_order: VecDeque<String>,
}

impl State {
    pub(crate) fn new() -> Self {
        let mut s = Self {
            workspaces: BTreeMap::new(),
            sandboxes: BTreeMap::new(),
            providers: BTreeMap::new(),
            profiles: crate::profiles::builtin(),
            ssh_sessions: HashMap::new(),
            gateway_settings: BTreeMap::new(),
            settings_revision: 1,
            resource_version: 1,
            idempotency: HashMap::new(),
            idempotency_order: VecDeque::new(),
        };
        s.add_workspace("default", HashMap::new());
        s
    }

    pub(crate) fn next_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    pub(crate) fn add_workspace(&mut self, name: &str, labels: HashMap<String, String>) -> dm::Workspace {
        let resource_version = self.next_version();
        let ws = dm::Workspace {
            metadata: Some(dm::ObjectMeta {
                id: uuid(),
                name: name.into(),
                labels,
                resource_version,
                created_time: Some(now()),
                ..Default::default()
            }),
            status: Some(dm::WorkspaceStatus { phase: dm::WorkspacePhase::Active as i32 }),
        };
        self.workspaces.insert(name.into(), WorkspaceRec { workspace: ws.clone() });
        ws
    }

    pub(crate) fn sandbox(&self, ws: &str, name: &str) -> Result<&SandboxRec, Status> {
        self.sandboxes
            .get(&(ws.to_owned(), name.to_owned()))
            .ok_or_else(|| Status::not_found(format!("sandbox {name:?} not found in workspace {ws:?}")))
    }

    pub(crate) fn sandbox_mut(&mut self, ws: &str, name: &str) -> Result<&mut SandboxRec, Status> {
        self.sandboxes
            .get_mut(&(ws.to_owned(), name.to_owned()))
            .ok_or_else(|| Status::not_found(format!("sandbox {name:?} not found in workspace {ws:?}")))
    }

    /// The cached answer to a `method` call already performed with this
    /// request id. Keyed by method too: the same id sent to another method
    /// is a different request.
    pub(crate) fn replay<T: Message + Default>(&self, method: &str, request_id: &str) -> Option<T> {
        if request_id.is_empty() {
            return None;
        }
        self.idempotency.get(&format!("{method}/{request_id}")).and_then(|bytes| T::decode(bytes.as_slice()).ok())
    }

    pub(crate) fn remember<T: Message>(&mut self, method: &str, request_id: &str, response: &T) {
        if request_id.is_empty() {
            return;
        }
        let request_id = format!("{method}/{request_id}");
        let request_id = request_id.as_str();
        if self.idempotency_order.len() >= IDEMPOTENCY_CACHE
            && let Some(old) = self.idempotency_order.pop_front()
        {
            self.idempotency.remove(&old);
        }
        self.idempotency_order.push_back(request_id.to_owned());
        self.idempotency.insert(request_id.to_owned(), response.encode_to_vec());
    }

    /// Sandboxes that list `provider` among their providers.
    pub(crate) fn sandboxes_using(&self, ws: &str, provider: &str) -> Vec<String> {
        self.sandboxes
            .iter()
            .filter(|((w, _), rec)| {
                w == ws && rec.sandbox.spec.as_ref().is_some_and(|s| s.providers.iter().any(|p| p == provider))
            })
            .map(|((_, n), _)| n.clone())
            .collect()
    }
}

// ------------------------------------------------------------ policy rules

/// The policy a sandbox gets when created without one.
pub(crate) fn default_policy() -> sb::SandboxPolicy {
    sb::SandboxPolicy {
        version: 1,
        filesystem: Some(sb::FilesystemPolicy {
            include_workdir: true,
            read_only: vec!["/usr".into(), "/lib".into(), "/etc".into()],
            read_write: vec!["/sandbox".into(), "/tmp".into()],
        }),
        landlock: Some(sb::LandlockPolicy { compatibility: "best_effort".into() }),
        process: Some(sb::ProcessPolicy { run_as_user: "sandbox".into(), run_as_group: "sandbox".into() }),
        network_policies: HashMap::new(),
        network_middlewares: HashMap::new(),
    }
}

/// A deterministic hash of the effective policy. The version number is
/// excluded: two revisions with the same content hash the same.
pub(crate) fn policy_hash(p: &sb::SandboxPolicy) -> String {
    let mut h = Sha256::new();
    h.update(p.filesystem.as_ref().map(Message::encode_to_vec).unwrap_or_default());
    h.update([0xff]);
    h.update(p.landlock.as_ref().map(Message::encode_to_vec).unwrap_or_default());
    h.update([0xff]);
    h.update(p.process.as_ref().map(Message::encode_to_vec).unwrap_or_default());
    let rules: BTreeMap<_, _> = p.network_policies.iter().collect();
    for (name, rule) in rules {
        h.update([0xfe]);
        h.update(name.as_bytes());
        h.update([0]);
        h.update(canonical_rule(rule).encode_to_vec());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Endpoints and binaries in a stable order, so equal rules hash equally.
fn canonical_rule(rule: &sb::NetworkPolicyRule) -> sb::NetworkPolicyRule {
    let mut r = rule.clone();
    r.endpoints.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    r.binaries.sort_by(|a, b| a.path.cmp(&b.path));
    r
}

/// `policy` with `rule` merged in: endpoints and binaries not yet present
/// are appended to the rule of the same name (created if missing).
pub(crate) fn with_rule(policy: &sb::SandboxPolicy, rule: &sb::NetworkPolicyRule) -> sb::SandboxPolicy {
    let mut p = policy.clone();
    merge_rule(&mut p, &rule.name, rule);
    p
}

fn merge_rule(p: &mut sb::SandboxPolicy, name: &str, rule: &sb::NetworkPolicyRule) {
    let entry = p
        .network_policies
        .entry(name.to_owned())
        .or_insert_with(|| sb::NetworkPolicyRule { name: name.to_owned(), ..Default::default() });
    for e in &rule.endpoints {
        if !entry.endpoints.iter().any(|x| x.host == e.host && x.port == e.port) {
            entry.endpoints.push(e.clone());
        }
    }
    for b in &rule.binaries {
        if !entry.binaries.iter().any(|x| x.path == b.path) {
            entry.binaries.push(b.clone());
        }
    }
}

/// Undoes `merge_rule`: removes the rule's endpoints and binaries, and the
/// rule itself once it has no endpoints left.
pub(crate) fn without_rule(policy: &sb::SandboxPolicy, rule: &sb::NetworkPolicyRule) -> sb::SandboxPolicy {
    let mut p = policy.clone();
    if let Some(entry) = p.network_policies.get_mut(&rule.name) {
        entry.endpoints.retain(|e| !rule.endpoints.iter().any(|x| x.host == e.host && x.port == e.port));
        if entry.endpoints.is_empty() {
            p.network_policies.remove(&rule.name);
        } else {
            entry.binaries.retain(|b| !rule.binaries.iter().any(|x| x.path == b.path));
        }
    }
    p
}

/// Applies merge operations in order.
pub(crate) fn apply_merge(
    policy: &sb::SandboxPolicy,
    ops: &[v1::PolicyMergeOperation],
) -> Result<sb::SandboxPolicy, Status> {
    use v1::policy_merge_operation::Operation;
    let mut p = policy.clone();
    for (i, op) in ops.iter().enumerate() {
        let field = format!("merge_operations[{i}]");
        match op.operation.as_ref() {
            None => return Err(errors::invalid(&field, "empty merge operation")),
            Some(Operation::AddRule(add)) => {
                let rule = add.rule.clone().ok_or_else(|| errors::invalid(&field, "add_rule needs a rule"))?;
                let name = if add.rule_name.is_empty() { rule.name.clone() } else { add.rule_name.clone() };
                if name.is_empty() {
                    return Err(errors::invalid(&field, "add_rule needs a rule name"));
                }
                merge_rule(&mut p, &name, &rule);
            }
            Some(Operation::RemoveRule(r)) => {
                if p.network_policies.remove(&r.rule_name).is_none() {
                    return Err(Status::not_found(format!("network rule {:?} not found", r.rule_name)));
                }
            }
            Some(Operation::RemoveEndpoint(r)) => {
                let rule = p
                    .network_policies
                    .get_mut(&r.rule_name)
                    .ok_or_else(|| Status::not_found(format!("network rule {:?} not found", r.rule_name)))?;
                let before = rule.endpoints.len();
                rule.endpoints.retain(|e| !(e.host == r.host && (r.port == 0 || e.port == r.port)));
                if rule.endpoints.len() == before {
                    return Err(Status::not_found(format!(
                        "endpoint {}:{} not found in {:?}",
                        r.host, r.port, r.rule_name
                    )));
                }
                if rule.endpoints.is_empty() {
                    p.network_policies.remove(&r.rule_name);
                }
            }
            Some(Operation::RemoveBinary(r)) => {
                let rule = p
                    .network_policies
                    .get_mut(&r.rule_name)
                    .ok_or_else(|| Status::not_found(format!("network rule {:?} not found", r.rule_name)))?;
                rule.binaries.retain(|b| b.path != r.binary_path);
            }
            Some(Operation::AddAllowRules(a)) => {
                let target =
                    a.target.as_ref().ok_or_else(|| errors::invalid(&field, "add_allow_rules needs a target"))?;
                for e in target_endpoints(&mut p, target)? {
                    e.rules.extend(a.rules.iter().cloned());
                }
            }
            Some(Operation::AddDenyRules(d)) => {
                let target =
                    d.target.as_ref().ok_or_else(|| errors::invalid(&field, "add_deny_rules needs a target"))?;
                for e in target_endpoints(&mut p, target)? {
                    e.deny_rules.extend(d.deny_rules.iter().cloned());
                }
            }
        }
    }
    Ok(p)
}

fn target_endpoints<'a>(
    p: &'a mut sb::SandboxPolicy,
    target: &v1::L7RuleTarget,
) -> Result<Vec<&'a mut sb::NetworkEndpoint>, Status> {
    let rule = p
        .network_policies
        .get_mut(&target.rule_name)
        .ok_or_else(|| Status::not_found(format!("network rule {:?} not found", target.rule_name)))?;
    let hits: Vec<_> = rule
        .endpoints
        .iter_mut()
        .filter(|e| target.host.is_empty() || e.host == target.host)
        .filter(|e| target.ports.is_empty() || target.ports.contains(&e.port))
        .collect();
    if hits.is_empty() {
        return Err(Status::not_found(format!("no endpoint of {:?} matches the target", target.rule_name)));
    }
    Ok(hits)
}

/// Rejects what the gateway rejects (see the policy cases): whole-TLD
/// wildcards, bare wildcards, reserved rule names, L7 fields on raw TCP,
/// `access` together with `rules`.
pub(crate) fn validate_policy(p: &sb::SandboxPolicy) -> Result<(), Status> {
    for (name, rule) in &p.network_policies {
        if name.starts_with("_provider_") {
            return Err(errors::invalid(
                &format!("network_policies.{name}"),
                "rule names starting with _provider_ are reserved for the gateway",
            ));
        }
        for (i, e) in rule.endpoints.iter().enumerate() {
            let field = format!("network_policies.{name}.endpoints[{i}]");
            let host = e.host.as_str();
            if host.is_empty() {
                return Err(errors::invalid(&format!("{field}.host"), "host is required"));
            }
            let labels: Vec<&str> = host.split('.').collect();
            if labels.iter().all(|l| l.chars().all(|c| c == '*')) {
                return Err(errors::invalid(&format!("{field}.host"), &format!("host {host:?} is a bare wildcard")));
            }
            if labels.len() == 2 && labels[0].chars().all(|c| c == '*') {
                return Err(errors::invalid(
                    &format!("{field}.host"),
                    &format!("host {host:?} would cover a whole top-level domain"),
                ));
            }
            if host.ends_with('.') {
                return Err(errors::invalid(&format!("{field}.host"), &format!("host {host:?} has a trailing dot")));
            }
            let has_l7 = !e.rules.is_empty() || !e.deny_rules.is_empty();
            if e.protocol == "tcp" && has_l7 {
                return Err(errors::invalid(&format!("{field}.rules"), "protocol tcp cannot carry L7 rules"));
            }
            if e.protocol == "tcp" && e.port == 0 && e.ports.is_empty() {
                return Err(errors::invalid(&format!("{field}.port"), "protocol tcp needs a port"));
            }
            if e.access != 0 && !e.rules.is_empty() {
                return Err(errors::invalid(&format!("{field}.access"), "access and rules are mutually exclusive"));
            }
        }
    }
    Ok(())
}

/// Sections fixed at creation: a live sandbox refuses changes to them.
pub(crate) fn locked_section_change(old: &sb::SandboxPolicy, new: &sb::SandboxPolicy) -> Option<&'static str> {
    if old.filesystem != new.filesystem {
        return Some("filesystem");
    }
    if old.landlock != new.landlock {
        return Some("landlock");
    }
    if old.process != new.process {
        return Some("process");
    }
    let tcp =
        |p: &sb::SandboxPolicy| p.network_policies.values().flat_map(|r| &r.endpoints).any(|e| e.protocol == "tcp");
    if !tcp(old) && tcp(new) {
        return Some("network (first protocol: tcp endpoint)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, host: &str, port: u32) -> sb::NetworkPolicyRule {
        sb::NetworkPolicyRule {
            name: name.into(),
            endpoints: vec![sb::NetworkEndpoint { host: host.into(), port, ..Default::default() }],
            binaries: vec![sb::NetworkBinary { path: "/usr/bin/curl".into() }],
        }
    }

    #[test]
    fn hash_ignores_version_and_order() {
        let mut a = default_policy();
        a.network_policies.insert("x".into(), rule("x", "a.example.com", 443));
        a.network_policies.insert("y".into(), rule("y", "b.example.com", 443));
        let mut b = a.clone();
        b.version = 9;
        assert_eq!(policy_hash(&a), policy_hash(&b));
        b.network_policies.remove("y");
        assert_ne!(policy_hash(&a), policy_hash(&b));
    }

    #[test]
    fn undo_restores_the_hash() {
        let base = default_policy();
        let r = rule("allow_pypi", "pypi.org", 443);
        let after = with_rule(&base, &r);
        assert_ne!(policy_hash(&after), policy_hash(&base));
        assert_eq!(policy_hash(&without_rule(&after, &r)), policy_hash(&base));
    }

    #[test]
    fn validation_matches_the_gateway() {
        for (host, ok) in
            [("*.com", false), ("*", false), ("**", false), ("*-api.example.com", true), ("**.example.com", true)]
        {
            let mut p = default_policy();
            p.network_policies.insert("r".into(), rule("r", host, 443));
            assert_eq!(validate_policy(&p).is_ok(), ok, "{host}");
        }
        let mut p = default_policy();
        p.network_policies.insert("_provider_github".into(), rule("_provider_github", "api.github.com", 443));
        assert!(validate_policy(&p).is_err());
    }
}
