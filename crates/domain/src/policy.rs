//! The sandbox policy model: what an agent may reach, read and run.
//!
//! Field names follow OpenShell's policy YAML (`filesystem_policy` is the
//! YAML key of the `filesystem` section), so a policy file deserialises
//! straight into these types. Validation and diffing build on this model.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A whole sandbox policy. Every field of the gateway's policy message has a
/// home here, so reading a policy and writing it back never loosens it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub version: u32,
    #[serde(default, rename = "filesystem_policy", alias = "filesystem", skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock: Option<LandlockPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessPolicy>,
    /// Keyed by rule name.
    #[serde(default)]
    pub network_policies: BTreeMap<String, NetworkRule>,
    /// Keyed by middleware name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub network_middlewares: BTreeMap<String, NetworkMiddleware>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemPolicy {
    #[serde(default)]
    pub include_workdir: bool,
    #[serde(default)]
    pub read_only: Vec<String>,
    #[serde(default)]
    pub read_write: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandlockPolicy {
    #[serde(default)]
    pub compatibility: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessPolicy {
    #[serde(default)]
    pub run_as_user: String,
    #[serde(default)]
    pub run_as_group: String,
}

/// A named network rule: endpoints the listed binaries may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRule {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<NetworkEndpoint>,
    #[serde(default)]
    pub binaries: Vec<NetworkBinary>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkBinary {
    pub path: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    #[default]
    Unspecified,
    Skip,
    Terminate,
    Passthrough,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnforcementMode {
    #[default]
    Unspecified,
    Enforce,
    Audit,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessPreset {
    #[default]
    Unspecified,
    ReadOnly,
    ReadWrite,
    Full,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// One reachable endpoint of a network rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
// Independent switches of the gateway's endpoint message.
#[allow(clippy::struct_excessive_bools)]
pub struct NetworkEndpoint {
    pub host: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub port: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u32>,
    /// `rest`, `tcp`, `grpc`, ... (empty: gateway default).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub tls: TlsMode,
    #[serde(default, skip_serializing_if = "is_default")]
    pub enforcement: EnforcementMode,
    #[serde(default, skip_serializing_if = "is_default")]
    pub access: AccessPreset,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<L7Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_rules: Vec<L7Match>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub allow_encoded_slash: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub persisted_queries: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub graphql_persisted_queries: BTreeMap<String, GraphqlOperation>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub graphql_max_body_bytes: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub websocket_credential_rewrite: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub request_body_credential_rewrite: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub advisor_proposed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_signing: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signing_service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signing_region: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub json_rpc_max_body_bytes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpOptions>,
    /// Provider whose credential the gateway injects on this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_binding: Option<CredentialBinding>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub allow_uninspected_credentials: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub provider_credentialed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_grant_owner: String,
}

/// An L7 allow rule (`rules: [{allow: {method, path}}]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L7Rule {
    pub allow: L7Match,
}

/// What an L7 allow or deny rule matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L7Match {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, QueryMatcher>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, QueryMatcher>,
}

/// Matches one query or parameter value: a glob, or any of a list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryMatcher {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub glob: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlOperation {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict_tool_names: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_all_known_mcp_methods: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialBinding {
    pub provider: String,
}

/// A network middleware (request/response hook) and where it applies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkMiddleware {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub middleware: String,
    /// Middleware-specific settings, kept as the gateway's free-form JSON.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub config: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub on_error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<MiddlewareEndpoints>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub order: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MiddlewareEndpoints {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// Load state of a policy revision on the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyStatus {
    Unspecified,
    Pending,
    Loaded,
    Failed,
    Superseded,
}

/// One revision of a sandbox's policy as the gateway records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyRevision {
    pub version: u32,
    pub policy_hash: String,
    pub status: PolicyStatus,
    pub load_error: String,
    pub created_at: Option<DateTime<Utc>>,
    pub loaded_at: Option<DateTime<Utc>>,
    pub policy: Option<Policy>,
}

/// A typed gateway or sandbox setting value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    Bool(bool),
    Int(i64),
    String(String),
}

/// Where a sandbox's effective policy comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicySource {
    Unspecified,
    Sandbox,
    Global,
}

/// A sandbox's active configuration: its policy plus effective settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxConfig {
    pub policy: Option<Policy>,
    pub version: u32,
    pub policy_hash: String,
    pub settings: BTreeMap<String, SettingValue>,
    pub config_revision: u64,
    pub policy_source: PolicySource,
}

/// Gateway-wide settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewaySettings {
    pub settings: BTreeMap<String, SettingValue>,
    pub settings_revision: u64,
}

/// An incremental policy change. The gateway applies a list of these
/// atomically, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PolicyMergeOp {
    AddRule { rule_name: String, rule: NetworkRule },
    RemoveRule { rule_name: String },
    RemoveEndpoint { rule_name: String, host: String, port: u32 },
    RemoveBinary { rule_name: String, binary_path: String },
}

/// What `UpdateConfig` changes.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigChange {
    /// Replace the whole policy.
    ReplacePolicy(Policy),
    /// Apply merge operations to the current policy.
    Merge(Vec<PolicyMergeOp>),
    /// Set one setting (gateway-wide when `global`).
    SetSetting { key: String, value: SettingValue, global: bool },
    /// Delete one setting (gateway-wide when `global`).
    DeleteSetting { key: String, global: bool },
}

/// The gateway's answer to a config update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigUpdateResult {
    pub version: u32,
    pub policy_hash: String,
    pub settings_revision: u64,
    pub deleted: bool,
}

/// Gateway-wide settings OpenShell 0.1 knows; anything else is refused.
pub const GATEWAY_SETTING_KEYS: &[&str] =
    &["providers_v2_enabled", "proposal_approval_mode", "ocsf_json_enabled", "agent_policy_proposals_enabled"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystem_policy_key_maps_to_filesystem_field() {
        let json = r#"{"version":1,"filesystem_policy":{"include_workdir":true,"read_only":["/usr"]}}"#;
        let p: Policy = serde_json::from_str(json).unwrap();
        assert_eq!(p.filesystem.as_ref().unwrap().read_only, vec!["/usr".to_owned()]);
        let back = serde_json::to_string(&p).unwrap();
        assert!(back.contains("\"filesystem_policy\""), "{back}");
    }

    #[test]
    fn access_presets_use_kebab_case() {
        let e: NetworkEndpoint =
            serde_json::from_str(r#"{"host":"api.github.com","port":443,"access":"read-only","tls":"terminate"}"#)
                .unwrap();
        assert_eq!(e.access, AccessPreset::ReadOnly);
        assert_eq!(e.tls, TlsMode::Terminate);
    }
}
