//! Sandbox policies: read, edit, replace, presets, revisions, diffs, and
//! GitOps export/apply.
//!
//! Every write reads the sandbox first and sends the gateway its
//! `resource_version` (optimistic concurrency); a conflict re-reads and
//! tries once more. A write that would not change the policy is a no-op
//! success. Network-only changes go as merge operations (removals before
//! additions) so that a concurrent approval touching another rule is not
//! overwritten; anything else replaces the policy. Filesystem, landlock and
//! process settings are fixed once a sandbox runs: a replace that omits them
//! keeps the current ones, and one that changes them is refused naming the
//! section.

use std::path::Path;
use std::sync::Arc;

use breakwater_domain::approval::PolicyPin;
use breakwater_domain::policy::{
    ConfigChange, FilesystemPolicy, LandlockPolicy, NetworkRule, Policy, PolicyMergeOp, PolicyRevision, PolicySource,
    PolicyStatus, ProcessPolicy, SettingValue,
};
use breakwater_domain::policy_yaml::{PolicyDiff, diff, text_diff};
use breakwater_domain::presets::{MergeOutcome, Preset, built_in};
use breakwater_domain::registry::GatewayName;
use breakwater_domain::{SandboxName, WorkspaceName};
use breakwater_gateway::{Gateway, GatewayError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::{Event, EventBus};
use crate::{Actor, GatewayService, Result, ServiceError};

/// The active policy of a sandbox and what is known about it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyView {
    pub gateway: String,
    pub sandbox: String,
    pub policy: Policy,
    /// Version of the policy as configured (the newest revision).
    pub version: u32,
    pub policy_hash: String,
    /// Load state of that newest revision.
    pub status: PolicyStatus,
    pub load_error: String,
    /// The newest revision the sandbox has loaded.
    pub active_version: u32,
    pub source: PolicySource,
    pub settings: std::collections::BTreeMap<String, SettingValue>,
}

/// What a write did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteStatus {
    /// The gateway has a new revision.
    Applied,
    /// The policy already says this; nothing was sent.
    UpToDate,
    /// Nothing was sent: this is what would change.
    DryRun,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WriteOutcome {
    pub status: WriteStatus,
    pub version: u32,
    pub policy_hash: String,
    pub diff: PolicyDiff,
    /// Unified diff of the canonical YAML.
    pub text_diff: String,
}

/// How an applied document combines with the current policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyMode {
    #[default]
    Replace,
    Merge,
}

/// `GET …/policy/export`: metadata plus the policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportDoc {
    pub metadata: ExportMetadata,
    pub policy: Policy,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportMetadata {
    pub gateway: String,
    pub sandbox: String,
    pub version: u32,
    pub policy_hash: String,
    pub exported_at: DateTime<Utc>,
}

/// A preset's effect on one sandbox, without applying it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PresetPreview {
    pub preset: String,
    pub merge: MergeOutcome,
    pub diff: PolicyDiff,
    pub text_diff: String,
    /// Rule keys that differ and would need `overwrite`.
    pub conflicts: Vec<String>,
}

/// Access for a filesystem path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathAccess {
    #[serde(alias = "ro")]
    ReadOnly,
    #[serde(alias = "rw")]
    ReadWrite,
}

/// Policies of sandboxes on registered gateways. Cheap to clone.
#[derive(Clone)]
pub struct PolicyService {
    gateways: GatewayService,
    events: EventBus,
    presets: Arc<Vec<Preset>>,
}

fn precondition(message: impl Into<String>) -> ServiceError {
    ServiceError::Precondition { message: message.into() }
}

fn invalid_policy(v: &breakwater_domain::policy_check::Violations) -> ServiceError {
    let first = v.0.first();
    ServiceError::Invalid {
        field: first.map_or_else(|| "policy".to_owned(), |f| f.field.clone()),
        message: v.to_string(),
    }
}

/// Reads site presets from `dir` (`*.yaml`); a built-in of the same name is
/// replaced. A bad file is an error naming it: presets are configuration.
pub fn load_presets(dir: Option<&Path>) -> Result<Vec<Preset>> {
    let mut all = built_in();
    let Some(dir) = dir else { return Ok(all) };
    let bad = |m: String| ServiceError::Invalid { field: "presets_dir".into(), message: m };
    let entries = std::fs::read_dir(dir).map_err(|e| bad(format!("cannot read {}: {e}", dir.display())))?;
    let mut paths: Vec<_> = entries
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let preset = Preset::from_yaml(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        all.retain(|p| p.name != preset.name);
        all.push(preset);
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

/// Merge operations that turn `old`'s network rules into `new`'s:
/// removals first, then additions. `None` when other sections differ.
fn merge_ops(old: &Policy, new: &Policy) -> Option<Vec<PolicyMergeOp>> {
    let same_rest = old.filesystem.clone().unwrap_or_default() == new.filesystem.clone().unwrap_or_default()
        && old.landlock.clone().unwrap_or_default() == new.landlock.clone().unwrap_or_default()
        && old.process.clone().unwrap_or_default() == new.process.clone().unwrap_or_default()
        && old.network_middlewares == new.network_middlewares;
    if !same_rest {
        return None;
    }
    let mut removals = Vec::new();
    let mut additions = Vec::new();
    for (key, rule) in &old.network_policies {
        match new.network_policies.get(key) {
            None => removals.push(PolicyMergeOp::RemoveRule { rule_name: key.clone() }),
            // The gateway merges an added rule into an existing one; a
            // changed rule is replaced by removing it first.
            Some(n) if n != rule => {
                removals.push(PolicyMergeOp::RemoveRule { rule_name: key.clone() });
                additions.push(PolicyMergeOp::AddRule { rule_name: key.clone(), rule: n.clone() });
            }
            Some(_) => {}
        }
    }
    for (key, rule) in &new.network_policies {
        if !old.network_policies.contains_key(key) {
            additions.push(PolicyMergeOp::AddRule { rule_name: key.clone(), rule: rule.clone() });
        }
    }
    removals.extend(additions);
    Some(removals)
}

/// The current state a write starts from.
struct Current {
    policy: Policy,
    version: u32,
    policy_hash: String,
    resource_version: u64,
}

impl PolicyService {
    #[must_use]
    pub fn new(gateways: GatewayService, events: EventBus, presets: Vec<Preset>) -> Self {
        Self { gateways, events, presets: Arc::new(presets) }
    }

    /// The bus policy and approval news goes to (sandbox news joins it).
    pub(crate) fn events(&self) -> &EventBus {
        &self.events
    }

    fn ws() -> WorkspaceName {
        WorkspaceName::default()
    }

    // ------------------------------------------------------------ reads

    /// The newest revision's policy (it may still be loading: see `status`
    /// and `active_version`) with the sandbox's effective settings.
    pub async fn get(&self, gw: &GatewayName, sandbox: &SandboxName) -> Result<PolicyView> {
        let ws = Self::ws();
        let (config, status) = self
            .gateways
            .with_gateway(gw, |c| async move {
                let config = c.sandbox_config(&ws, sandbox).await?;
                let status = c.policy_status(&ws, sandbox, None).await?;
                Ok((config, status))
            })
            .await?;
        Ok(PolicyView {
            gateway: gw.to_string(),
            sandbox: sandbox.to_string(),
            policy: status.revision.policy.unwrap_or_default(),
            version: status.revision.version,
            policy_hash: status.revision.policy_hash,
            status: status.revision.status,
            load_error: status.revision.load_error,
            active_version: status.active_version,
            source: config.policy_source,
            settings: config.settings,
        })
    }

    /// The policy the sandbox enforces now (the last loaded revision).
    pub async fn effective(&self, gw: &GatewayName, sandbox: &SandboxName) -> Result<PolicyView> {
        let ws = Self::ws();
        let config = self.gateways.with_gateway(gw, |c| async move { c.sandbox_config(&ws, sandbox).await }).await?;
        Ok(PolicyView {
            gateway: gw.to_string(),
            sandbox: sandbox.to_string(),
            policy: config.policy.unwrap_or_default(),
            version: config.version,
            policy_hash: config.policy_hash,
            status: PolicyStatus::Loaded,
            load_error: String::new(),
            active_version: config.version,
            source: config.policy_source,
            settings: config.settings,
        })
    }

    /// One revision, with its policy.
    pub async fn version(&self, gw: &GatewayName, sandbox: &SandboxName, version: u32) -> Result<PolicyRevision> {
        if version == 0 {
            return Err(ServiceError::Invalid { field: "version".into(), message: "versions start at 1".into() });
        }
        let ws = Self::ws();
        let report = self
            .gateways
            .with_gateway(gw, |c| async move { c.policy_status(&ws, sandbox, Some(version)).await })
            .await?;
        Ok(report.revision)
    }

    /// Revisions, newest first, `offset`/`limit` over the gateway's pages.
    pub async fn revisions(
        &self,
        gw: &GatewayName,
        sandbox: &SandboxName,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<PolicyRevision>, bool)> {
        crate::window(limit.clamp(1, 200) as usize, offset as usize, 100, |p| async move {
            let ws = Self::ws();
            self.gateways.with_gateway(gw, |c| async move { c.list_policy_revisions(&ws, sandbox, &p).await }).await
        })
        .await
    }

    /// What changed from revision `a` to revision `b`.
    pub async fn diff_revisions(
        &self,
        gw: &GatewayName,
        sandbox: &SandboxName,
        a: u32,
        b: u32,
    ) -> Result<(PolicyDiff, String)> {
        let old = self.version(gw, sandbox, a).await?.policy.unwrap_or_default();
        let new = if a == b { old.clone() } else { self.version(gw, sandbox, b).await?.policy.unwrap_or_default() };
        Ok((diff(&old, &new), text_diff(&old, &new, &format!("version {a}"), &format!("version {b}"))))
    }

    pub async fn export(&self, gw: &GatewayName, sandbox: &SandboxName) -> Result<(ExportDoc, String)> {
        let view = self.get(gw, sandbox).await?;
        let doc = ExportDoc {
            metadata: ExportMetadata {
                gateway: view.gateway,
                sandbox: view.sandbox,
                version: view.version,
                policy_hash: view.policy_hash,
                exported_at: Utc::now(),
            },
            policy: view.policy,
        };
        let yaml = serde_saphyr::to_string(&doc).unwrap_or_default();
        Ok((doc, yaml))
    }

    #[must_use]
    pub fn presets(&self) -> &[Preset] {
        &self.presets
    }

    pub fn preset(&self, name: &str) -> Result<&Preset> {
        self.presets
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ServiceError::NotFound { what: format!("preset {name:?}") })
    }

    pub async fn preview_preset(&self, gw: &GatewayName, sandbox: &SandboxName, name: &str) -> Result<PresetPreview> {
        let preset = self.preset(name)?.clone();
        let current = self.current(gw, sandbox).await?;
        let mut next = current.policy.clone();
        let conflicts = match next.clone().merge_preset(&preset, false) {
            Ok(_) => Vec::new(),
            Err(c) => c.keys,
        };
        let merge = next.merge_preset(&preset, true).unwrap_or_default();
        Ok(PresetPreview {
            preset: preset.name.clone(),
            diff: diff(&current.policy, &next),
            text_diff: text_diff(&current.policy, &next, "current", &format!("with preset {}", preset.name)),
            merge,
            conflicts,
        })
    }

    // ------------------------------------------------------------ pins

    /// The pin on a sandbox's policy, if one is in force. An expired pin is
    /// removed when it is next read, so expiry needs no scheduler.
    pub async fn active_pin(&self, gw: &GatewayName, sandbox: &SandboxName) -> Result<Option<PolicyPin>> {
        let store = self.gateways.store();
        match store.get_pin(gw.as_str(), sandbox.as_str()).await? {
            Some(pin) if pin.is_active(Utc::now()) => Ok(Some(pin)),
            Some(_) => {
                store.delete_pin(gw.as_str(), sandbox.as_str()).await?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// `Locked` (423) while a pin is in force.
    pub async fn check_pin(&self, gw: &GatewayName, sandbox: &SandboxName) -> Result<()> {
        match self.active_pin(gw, sandbox).await? {
            Some(pin) => Err(ServiceError::Locked { pin: Box::new(pin) }),
            None => Ok(()),
        }
    }

    /// Pins the sandbox at its active (loaded) policy version.
    pub async fn pin(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sandbox: &SandboxName,
        reason: Option<String>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<PolicyPin> {
        if expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(ServiceError::Invalid { field: "expires_at".into(), message: "must be in the future".into() });
        }
        if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
            return Err(ServiceError::Invalid { field: "reason".into(), message: "at most 500 characters".into() });
        }
        let view = self.get(gw, sandbox).await?;
        let pin = PolicyPin {
            gateway: gw.to_string(),
            sandbox: sandbox.to_string(),
            version: view.active_version,
            pinned_by: actor.name.clone(),
            reason,
            pinned_at: Utc::now(),
            expires_at,
        };
        self.gateways.store().put_pin(&pin).await?;
        self.gateways
            .audit()
            .log(actor, "policy.pin", "sandbox_policy", sandbox.as_str(), Some(gw.as_str()), serde_json::json!(pin))
            .await;
        Ok(pin)
    }

    pub async fn unpin(&self, actor: &Actor, gw: &GatewayName, sandbox: &SandboxName) -> Result<()> {
        if self.active_pin(gw, sandbox).await?.is_none() {
            return Err(ServiceError::NotFound { what: format!("pin on {gw}/{sandbox}") });
        }
        self.gateways.store().delete_pin(gw.as_str(), sandbox.as_str()).await?;
        self.gateways
            .audit()
            .log(actor, "policy.unpin", "sandbox_policy", sandbox.as_str(), Some(gw.as_str()), serde_json::json!({}))
            .await;
        Ok(())
    }

    // ------------------------------------------------------------ writes

    /// The newest revision (what the gateway merges against), which may
    /// still be loading, and the sandbox's resource version.
    async fn current(&self, gw: &GatewayName, sandbox: &SandboxName) -> Result<Current> {
        let ws = Self::ws();
        let (sbx, status) = self
            .gateways
            .with_gateway(gw, |c| async move {
                let sbx = c.get_sandbox(&ws, sandbox).await?;
                let status = c.policy_status(&ws, sandbox, None).await?;
                Ok((sbx, status))
            })
            .await?;
        Ok(Current {
            policy: status.revision.policy.unwrap_or_default(),
            version: status.revision.version,
            policy_hash: status.revision.policy_hash,
            resource_version: sbx.resource_version,
        })
    }

    /// Validates `new`, keeps the fixed sections a live sandbox cannot
    /// change, and returns the policy to send.
    fn prepare(current: &Policy, mut new: Policy) -> Result<Policy> {
        new.normalise();
        new.validate().map_err(|v| invalid_policy(&v))?;
        if new.filesystem.is_none() {
            new.filesystem.clone_from(&current.filesystem);
        }
        if new.landlock.is_none() {
            new.landlock.clone_from(&current.landlock);
        }
        if new.process.is_none() {
            new.process.clone_from(&current.process);
        }
        if new.version == 0 {
            new.version = current.version;
        }
        let fixed = diff(current, &new).fixed_sections_touched();
        if let Some(section) = fixed.first() {
            return Err(precondition(format!(
                "the {section} section cannot change on a running sandbox; recreate the sandbox with the new policy to change it"
            )));
        }
        Ok(new)
    }

    /// The one write path: compute the new policy from the current one,
    /// send it with optimistic concurrency, retry once on a conflict.
    async fn write<F>(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sandbox: &SandboxName,
        action: &str,
        dry_run: bool,
        edit: F,
    ) -> Result<WriteOutcome>
    where
        F: Fn(&Policy) -> Result<Policy>,
    {
        if !dry_run {
            self.check_pin(gw, sandbox).await?;
            // Under a workflow, changes are proposals others vote on; a direct
            // edit would let one person bypass them. (GitOps apply reaches
            // here only once its proposal has quorum.)
            if action != "policy.apply"
                && self.gateways.store().get_workflow(gw.as_str(), sandbox.as_str()).await?.is_some()
            {
                return Err(precondition(format!(
                    "{gw}/{sandbox} has an approval workflow: propose the change with POST …/policy/apply \
                     (approvers apply the same document), or remove the workflow first"
                )));
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.current(gw, sandbox).await?;
            let new = Self::prepare(&current.policy, edit(&current.policy)?)?;
            let d = diff(&current.policy, &new);
            let mut comparable = new.clone();
            comparable.version = current.policy.version;
            let ops = merge_ops(&current.policy, &new);
            // Equal, or different only in ways that mean the same (an empty
            // section against none): nothing to send.
            if comparable.fingerprint() == current.policy.fingerprint() || ops.as_ref().is_some_and(Vec::is_empty) {
                return Ok(WriteOutcome {
                    status: WriteStatus::UpToDate,
                    version: current.version,
                    policy_hash: current.policy_hash,
                    diff: d,
                    text_diff: String::new(),
                });
            }
            let text = text_diff(&current.policy, &new, &format!("version {}", current.version), "proposed");
            if dry_run {
                return Ok(WriteOutcome {
                    status: WriteStatus::DryRun,
                    version: current.version,
                    policy_hash: current.policy_hash,
                    diff: d,
                    text_diff: text,
                });
            }
            let change = match ops {
                Some(ops) => ConfigChange::Merge(ops),
                None => ConfigChange::ReplacePolicy(new.clone()),
            };
            let ws = Self::ws();
            let rv = current.resource_version;
            let sent = self
                .gateways
                .with_gateway(gw, |c| async move { c.update_config(&ws, Some(sandbox), &change, Some(rv)).await })
                .await;
            match sent {
                Ok(result) => {
                    self.gateways
                        .audit()
                        .log(
                            actor,
                            action,
                            "sandbox_policy",
                            sandbox.as_str(),
                            Some(gw.as_str()),
                            serde_json::json!({
                                "from_version": current.version,
                                "to_version": result.version,
                                "policy_hash": result.policy_hash,
                                "diff": d,
                            }),
                        )
                        .await;
                    self.events.publish(Event::PolicyUpdated {
                        gateway: gw.to_string(),
                        sandbox: sandbox.to_string(),
                        version: result.version,
                        policy_hash: result.policy_hash.clone(),
                    });
                    return Ok(WriteOutcome {
                        status: WriteStatus::Applied,
                        version: result.version,
                        policy_hash: result.policy_hash,
                        diff: d,
                        text_diff: text,
                    });
                }
                Err(ServiceError::Gateway(GatewayError::Conflict { .. })) if attempt == 1 => {
                    tracing::info!(gateway = %gw, %sandbox, "policy changed underneath; re-reading once");
                }
                Err(ServiceError::Gateway(GatewayError::FailedPrecondition { message, .. })) => {
                    return Err(precondition(message));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Full replace (`PUT …/policy`).
    pub async fn update(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sandbox: &SandboxName,
        policy: Policy,
    ) -> Result<WriteOutcome> {
        self.write(actor, gw, sandbox, "policy.update", false, |_| Ok(policy.clone())).await
    }

    pub async fn apply_preset(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sandbox: &SandboxName,
        name: &str,
        overwrite: bool,
    ) -> Result<WriteOutcome> {
        let preset = self.preset(name)?.clone();
        self.write(actor, gw, sandbox, "policy.preset.apply", false, |p| {
            let mut next = p.clone();
            next.merge_preset(&preset, overwrite).map_err(|c| precondition(c.to_string()))?;
            Ok(next)
        })
        .await
    }

    pub async fn add_network_rule(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sandbox: &SandboxName,
        key: &str,
        mut rule: NetworkRule,
    ) -> Result<WriteOutcome> {
        if rule.name.is_empty() {
            key.clone_into(&mut rule.name);
        }
        self.write(actor, gw, sandbox, "policy.network_rule.add", false, |p| {
            let mut next = p.clone();
            next.network_policies.insert(key.to_owned(), rule.clone());
            Ok(next)
        })
        .await
    }

    pub async fn delete_network_rule(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sandbox: &SandboxName,
        key: &str,
    ) -> Result<WriteOutcome> {
        self.write(actor, gw, sandbox, "policy.network_rule.delete", false, |p| {
            let mut next = p.clone();
            if next.network_policies.remove(key).is_none() {
                return Err(ServiceError::NotFound { what: format!("network rule {key:?}") });
            }
            Ok(next)
        })
        .await
    }

    pub async fn add_filesystem_path(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sandbox: &SandboxName,
        path: &str,
        access: PathAccess,
    ) -> Result<WriteOutcome> {
        self.write(actor, gw, sandbox, "policy.filesystem.add", false, |p| {
            let mut next = p.clone();
            let fs = next.filesystem.get_or_insert_with(FilesystemPolicy::default);
            let list = match access {
                PathAccess::ReadOnly => &mut fs.read_only,
                PathAccess::ReadWrite => &mut fs.read_write,
            };
            if !list.iter().any(|x| x == path) {
                list.push(path.to_owned());
            }
            Ok(next)
        })
        .await
    }

    pub async fn delete_filesystem_path(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sandbox: &SandboxName,
        path: &str,
    ) -> Result<WriteOutcome> {
        self.write(actor, gw, sandbox, "policy.filesystem.delete", false, |p| {
            let mut next = p.clone();
            let fs = next.filesystem.get_or_insert_with(FilesystemPolicy::default);
            let before = fs.read_only.len() + fs.read_write.len();
            fs.read_only.retain(|x| x != path);
            fs.read_write.retain(|x| x != path);
            if fs.read_only.len() + fs.read_write.len() == before {
                return Err(ServiceError::NotFound { what: format!("filesystem path {path:?}") });
            }
            Ok(next)
        })
        .await
    }

    /// Changes the given process fields (absent ones are kept) and the
    /// landlock compatibility. Only a sandbox still provisioning accepts it.
    pub async fn update_process(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sandbox: &SandboxName,
        run_as_user: Option<String>,
        run_as_group: Option<String>,
        landlock_compatibility: Option<String>,
    ) -> Result<WriteOutcome> {
        self.write(actor, gw, sandbox, "policy.process.update", false, |p| {
            let mut next = p.clone();
            let process = next.process.get_or_insert_with(ProcessPolicy::default);
            if let Some(u) = &run_as_user {
                process.run_as_user.clone_from(u);
            }
            if let Some(g) = &run_as_group {
                process.run_as_group.clone_from(g);
            }
            if let Some(c) = &landlock_compatibility {
                next.landlock = Some(LandlockPolicy { compatibility: c.clone() });
            }
            Ok(next)
        })
        .await
    }

    /// GitOps apply: `yaml` is an export document or a bare policy.
    /// `expected` (a version number or a policy hash) must match the
    /// current policy, else 409 with the current hash.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_document(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sandbox: &SandboxName,
        yaml: &str,
        mode: ApplyMode,
        dry_run: bool,
        expected: Option<&str>,
    ) -> Result<WriteOutcome> {
        let (doc, meta) = parse_document(yaml)?;
        // An export names its sandbox: applying it to another is a mistake.
        for (key, mine) in [("gateway", gw.as_str()), ("sandbox", sandbox.as_str())] {
            if let Some(theirs) = meta.as_ref().and_then(|m| m.get(key)).and_then(serde_json::Value::as_str)
                && theirs != mine
            {
                return Err(ServiceError::Invalid {
                    field: "yaml".into(),
                    message: format!(
                        "this document was exported from {key} {theirs:?}, not {mine:?}; remove its metadata block to apply it here on purpose"
                    ),
                });
            }
        }
        let doc_hash =
            meta.as_ref().and_then(|m| m.get("policy_hash")).and_then(serde_json::Value::as_str).map(str::to_owned);
        // An exported document carries the hash it was exported at: applying
        // it is guarded by that etag unless the caller gives another.
        let expected = expected.filter(|e| !e.is_empty()).or(doc_hash.as_deref());
        if let Some(expected) = expected {
            let current = self.current(gw, sandbox).await?;
            let matches = expected.parse::<u32>().map_or(expected == current.policy_hash, |v| v == current.version);
            if !matches {
                return Err(ServiceError::StaleVersion {
                    expected: expected.to_owned(),
                    message: format!(
                        "the policy is at version {} (hash {}), not {expected}; export it again and re-apply your change",
                        current.version, current.policy_hash
                    ),
                    current_version: current.version,
                    current_hash: current.policy_hash,
                });
            }
        }
        self.write(actor, gw, sandbox, "policy.apply", dry_run, |p| match mode {
            ApplyMode::Replace => Ok(doc.clone()),
            ApplyMode::Merge => {
                let mut next = p.clone();
                for (k, r) in &doc.network_policies {
                    next.network_policies.insert(k.clone(), r.clone());
                }
                if let Some(fs) = &doc.filesystem {
                    let mine = next.filesystem.get_or_insert_with(FilesystemPolicy::default);
                    for x in &fs.read_only {
                        if !mine.read_only.contains(x) {
                            mine.read_only.push(x.clone());
                        }
                    }
                    for x in &fs.read_write {
                        if !mine.read_write.contains(x) {
                            mine.read_write.push(x.clone());
                        }
                    }
                }
                Ok(next)
            }
        })
        .await
    }
}

/// An export document (`metadata` + `policy`, with the exported hash) or a
/// bare policy.
fn parse_document(yaml: &str) -> Result<(Policy, Option<serde_json::Value>)> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        metadata: Option<serde_json::Value>,
        policy: Policy,
    }
    let bad = |m: String| ServiceError::Invalid { field: "yaml".into(), message: m };
    if yaml.len() > breakwater_domain::policy_yaml::MAX_POLICY_YAML_BYTES {
        return Err(bad("larger than 4 MiB".into()));
    }
    let looks_like_export = yaml.lines().any(|l| l.starts_with("policy:"));
    if looks_like_export {
        let mut o = serde_saphyr::Options::default();
        o.alias_limits.max_total_replayed_events = 10_000;
        o.alias_limits.max_alias_expansions_per_anchor = 100;
        let doc: Doc = serde_saphyr::from_str_with_options(yaml, o)
            .map_err(|e| bad(breakwater_domain::sanitize(&e.to_string(), 500)))?;
        return Ok((doc.policy, doc.metadata));
    }
    Ok((Policy::from_yaml(yaml).map_err(|e| bad(e.to_string()))?, None))
}
