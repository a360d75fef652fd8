//! Protobuf ⇄ domain mapping: the only place that knows both worlds.
//!
//! Inbound values are untrusted: text that may reach a user is sanitised,
//! and fields that something will act on (SSH host, port, token) are checked
//! against strict charsets before they leave this module.

use std::collections::BTreeMap;

use breakwater_domain::approval::{ApproveAllResult, DraftChunk, DraftHistoryEntry, DraftPolicy};
use breakwater_domain::gateway::{
    ComputeDriver, CurrentUser, GatewayInfo, Health, ServiceStatus, Workspace, WorkspacePhase,
};
use breakwater_domain::policy::{
    AccessPreset, ConfigUpdateResult, CredentialBinding, EnforcementMode, FilesystemPolicy, GatewaySettings,
    GraphqlOperation, L7Match, L7Rule, LandlockPolicy, McpOptions, MiddlewareEndpoints, NetworkBinary, NetworkEndpoint,
    NetworkMiddleware, NetworkRule, Policy, PolicyMergeOp, PolicyRevision, PolicySource, PolicyStatus, ProcessPolicy,
    QueryMatcher, SandboxConfig, SettingValue, TlsMode,
};
use breakwater_domain::provider::{ProfileCredential, Provider, ProviderAttachment, ProviderProfile};
use breakwater_domain::sandbox::{
    DeletionOutcome, DraftPolicyUpdate, ExecEvent, LogLine, PlatformEvent, Sandbox, SandboxCondition, SandboxPhase,
    SshSession, WatchEvent,
};
use breakwater_domain::{Secret, WorkspaceName};
use breakwater_wire::{datamodel as dm, sandbox as sb, v1};
use chrono::{DateTime, Utc};

use crate::error::upstream_text;
use crate::{GatewayError, WorkspaceScope};

// ---------------------------------------------------------------- helpers

pub(crate) fn scope(ws: &WorkspaceName) -> Option<dm::WorkspaceSelector> {
    Some(dm::WorkspaceSelector { selection: Some(dm::workspace_selector::Selection::Workspace(ws.to_string())) })
}

pub(crate) fn scope_of(s: &WorkspaceScope) -> Option<dm::WorkspaceSelector> {
    match s {
        WorkspaceScope::One(ws) => scope(ws),
        WorkspaceScope::All => Some(dm::WorkspaceSelector {
            selection: Some(dm::workspace_selector::Selection::AllWorkspaces(dm::AllWorkspaces {})),
        }),
    }
}

pub(crate) fn time(ts: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let ts = ts?;
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

pub(crate) fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

// By value so it slots into `.map(text)` over owned proto strings.
#[allow(clippy::needless_pass_by_value)]
fn text(s: String) -> String {
    // Nearly every string a gateway sends is short printable ASCII: kept
    // as it is, without a copy (a list of 1,000 sandboxes maps ~20,000).
    let plain = s.len() <= crate::error::MAX_UPSTREAM_CHARS
        && s.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !s.starts_with(' ')
        && !s.ends_with(' ');
    if plain { s } else { upstream_text(&s) }
}

fn map_text(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().map(|(k, v)| (text(k), text(v))).collect()
}

pub(crate) fn deletion(raw: i32) -> DeletionOutcome {
    match v1::DeletionOutcome::try_from(raw) {
        Ok(v1::DeletionOutcome::Completed) => DeletionOutcome::Completed,
        Ok(v1::DeletionOutcome::Accepted) => DeletionOutcome::Accepted,
        Ok(v1::DeletionOutcome::AlreadyAbsent) => DeletionOutcome::AlreadyAbsent,
        _ => DeletionOutcome::Unspecified,
    }
}

fn missing(what: &str) -> GatewayError {
    GatewayError::InvalidResponse { message: format!("the response has no {what}") }
}

// ---------------------------------------------------------------- gateway facts

fn service_status(raw: i32) -> ServiceStatus {
    match v1::ServiceStatus::try_from(raw) {
        Ok(v1::ServiceStatus::Healthy) => ServiceStatus::Healthy,
        Ok(v1::ServiceStatus::Degraded) => ServiceStatus::Degraded,
        Ok(v1::ServiceStatus::Unhealthy) => ServiceStatus::Unhealthy,
        _ => ServiceStatus::Unspecified,
    }
}

pub(crate) fn health(r: v1::HealthResponse) -> Health {
    Health { status: service_status(r.status), version: text(r.version) }
}

pub(crate) fn gateway_info(r: v1::GetGatewayInfoResponse) -> GatewayInfo {
    GatewayInfo {
        status: service_status(r.status),
        version: text(r.gateway_version),
        compute_drivers: r
            .compute_drivers
            .into_iter()
            .map(|d| {
                let caps = d.capabilities.unwrap_or_default();
                ComputeDriver {
                    name: text(d.name),
                    driver_name: text(caps.driver_name),
                    driver_version: text(caps.driver_version),
                }
            })
            .collect(),
    }
}

pub(crate) fn current_user(r: v1::GetCurrentUserResponse) -> CurrentUser {
    CurrentUser {
        subject: text(r.subject),
        display_name: text(r.display_name),
        roles: r.roles.into_iter().map(text).collect(),
        scopes: r.scopes.into_iter().map(text).collect(),
        identity_provider: text(r.identity_provider),
    }
}

pub(crate) fn workspace(w: dm::Workspace) -> Workspace {
    let meta = w.metadata.unwrap_or_default();
    let phase = match w.status.map(|s| dm::WorkspacePhase::try_from(s.phase)) {
        Some(Ok(dm::WorkspacePhase::Active)) => WorkspacePhase::Active,
        Some(Ok(dm::WorkspacePhase::Terminating)) => WorkspacePhase::Terminating,
        _ => WorkspacePhase::Unspecified,
    };
    Workspace {
        id: text(meta.id),
        name: text(meta.name),
        labels: map_text(meta.labels),
        phase,
        created_at: time(meta.created_time),
    }
}

// ---------------------------------------------------------------- sandboxes

fn phase(raw: i32) -> SandboxPhase {
    use v1::SandboxPhase as P;
    match P::try_from(raw) {
        Ok(P::Provisioning) => SandboxPhase::Provisioning,
        Ok(P::Ready) => SandboxPhase::Ready,
        Ok(P::Error) => SandboxPhase::Error,
        Ok(P::Deleting) => SandboxPhase::Deleting,
        Ok(P::Unknown) => SandboxPhase::Unknown,
        Ok(P::Stopping) => SandboxPhase::Stopping,
        Ok(P::Stopped) => SandboxPhase::Stopped,
        Ok(P::Starting) => SandboxPhase::Starting,
        Ok(P::Completed) => SandboxPhase::Completed,
        _ => SandboxPhase::Unspecified,
    }
}

pub(crate) fn sandbox(s: v1::Sandbox) -> Sandbox {
    let meta = s.metadata.unwrap_or_default();
    let spec = s.spec.unwrap_or_default();
    let status = s.status.unwrap_or_default();
    Sandbox {
        id: text(meta.id),
        name: text(meta.name),
        workspace: text(meta.workspace),
        labels: map_text(meta.labels),
        resource_version: meta.resource_version,
        created_at: time(meta.created_time),
        deleted_at: time(meta.deletion_time),
        phase: phase(status.phase),
        conditions: status
            .conditions
            .into_iter()
            .map(|c| SandboxCondition {
                kind: text(c.r#type),
                status: text(c.status),
                reason: text(c.reason),
                message: text(c.message),
                transition_time: time(c.transition_time),
            })
            .collect(),
        current_policy_version: status.current_policy_version,
        exit_code: status.exit_code,
        restart_count: status.restart_count,
        image: spec.template.map(|t| text(t.image)).unwrap_or_default(),
        providers: spec.providers.iter().cloned().map(text).collect(),
        host_key_fingerprint: text(s.host_key_fingerprint),
        gpu: spec.resource_requirements.is_some_and(|r| r.gpu.is_some()),
        description: None,
    }
}

pub(crate) fn sandbox_response(r: v1::SandboxResponse) -> Result<Sandbox, GatewayError> {
    r.sandbox.map(sandbox).ok_or_else(|| missing("sandbox"))
}

pub(crate) fn log_line(l: v1::SandboxLogLine) -> LogLine {
    LogLine {
        sandbox_id: text(l.sandbox_id),
        time: time(l.event_time),
        level: text(l.level),
        target: text(l.target),
        // Messages are long by nature; sanitise (no CR/LF injection) but allow more.
        message: breakwater_domain::sanitize(&l.message, 8192),
        source: text(l.source),
        fields: map_text(l.fields),
    }
}

pub(crate) fn watch_event(e: v1::SandboxStreamEvent) -> Option<WatchEvent> {
    use v1::sandbox_stream_event::Payload;
    Some(match e.payload? {
        Payload::Sandbox(s) => WatchEvent::Sandbox(Box::new(sandbox(s))),
        Payload::Log(l) => WatchEvent::Log(log_line(l)),
        Payload::Event(ev) => WatchEvent::Event(PlatformEvent {
            time: time(ev.event_time),
            source: text(ev.source),
            kind: text(ev.r#type),
            reason: text(ev.reason),
            message: text(ev.message),
        }),
        Payload::Warning(w) => WatchEvent::Warning(text(w.message)),
        Payload::DraftPolicyUpdate(d) => WatchEvent::DraftPolicy(DraftPolicyUpdate {
            draft_version: d.draft_version,
            new_chunks: d.new_chunks,
            total_pending: d.total_pending,
            summary: text(d.summary),
        }),
    })
}

pub(crate) fn exec_event(e: v1::ExecSandboxEvent) -> Option<ExecEvent> {
    use v1::exec_sandbox_event::Payload;
    Some(match e.payload? {
        Payload::Stdout(o) => ExecEvent::Stdout(o.data),
        Payload::Stderr(o) => ExecEvent::Stderr(o.data),
        Payload::Exit(x) => ExecEvent::Exit(x.exit_code),
    })
}

/// Hosts we will hand to an SSH client: a DNS name or an IP literal, nothing
/// that a shell or `ssh -o` could interpret (case S11).
fn valid_ssh_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
            }))
}

fn valid_token(token: &str) -> bool {
    (8..=512).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.=~+/".contains(&b))
}

pub(crate) fn ssh_session(r: v1::CreateSshSessionResponse) -> Result<SshSession, GatewayError> {
    let bad = |what: &str| GatewayError::InvalidResponse { message: format!("SSH session has an invalid {what}") };
    if !valid_ssh_host(&r.gateway_host) {
        return Err(bad("host"));
    }
    let port = u16::try_from(r.gateway_port).ok().filter(|p| *p != 0).ok_or_else(|| bad("port"))?;
    if !valid_token(&r.token) {
        return Err(bad("token"));
    }
    let scheme = if r.gateway_scheme.is_empty() { "ssh".to_owned() } else { r.gateway_scheme };
    if !scheme.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'+' || b == b'-')
        || scheme.len() > 16
    {
        return Err(bad("scheme"));
    }
    if !r.host_key_fingerprint.bytes().all(|b| b.is_ascii_graphic()) || r.host_key_fingerprint.len() > 256 {
        return Err(bad("host key fingerprint"));
    }
    if !r.sandbox_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || r.sandbox_id.len() > 128 {
        return Err(bad("sandbox id"));
    }
    Ok(SshSession {
        sandbox_id: r.sandbox_id,
        token: Secret::new(r.token),
        gateway_host: r.gateway_host,
        gateway_port: port,
        gateway_scheme: scheme,
        host_key_fingerprint: r.host_key_fingerprint,
        expires_at: time(r.expiration_time),
    })
}

// ---------------------------------------------------------------- policy

fn tls_from(raw: i32) -> TlsMode {
    match sb::NetworkTlsMode::try_from(raw) {
        Ok(sb::NetworkTlsMode::Skip) => TlsMode::Skip,
        Ok(sb::NetworkTlsMode::Terminate) => TlsMode::Terminate,
        Ok(sb::NetworkTlsMode::Passthrough) => TlsMode::Passthrough,
        _ => TlsMode::Unspecified,
    }
}

fn tls_to(m: TlsMode) -> i32 {
    (match m {
        TlsMode::Unspecified => sb::NetworkTlsMode::Unspecified,
        TlsMode::Skip => sb::NetworkTlsMode::Skip,
        TlsMode::Terminate => sb::NetworkTlsMode::Terminate,
        TlsMode::Passthrough => sb::NetworkTlsMode::Passthrough,
    }) as i32
}

fn enforcement_from(raw: i32) -> EnforcementMode {
    match sb::NetworkEnforcementMode::try_from(raw) {
        Ok(sb::NetworkEnforcementMode::Enforce) => EnforcementMode::Enforce,
        Ok(sb::NetworkEnforcementMode::Audit) => EnforcementMode::Audit,
        _ => EnforcementMode::Unspecified,
    }
}

fn enforcement_to(m: EnforcementMode) -> i32 {
    (match m {
        EnforcementMode::Unspecified => sb::NetworkEnforcementMode::Unspecified,
        EnforcementMode::Enforce => sb::NetworkEnforcementMode::Enforce,
        EnforcementMode::Audit => sb::NetworkEnforcementMode::Audit,
    }) as i32
}

fn access_from(raw: i32) -> AccessPreset {
    match sb::NetworkAccessPreset::try_from(raw) {
        Ok(sb::NetworkAccessPreset::ReadOnly) => AccessPreset::ReadOnly,
        Ok(sb::NetworkAccessPreset::ReadWrite) => AccessPreset::ReadWrite,
        Ok(sb::NetworkAccessPreset::Full) => AccessPreset::Full,
        _ => AccessPreset::Unspecified,
    }
}

fn access_to(m: AccessPreset) -> i32 {
    (match m {
        AccessPreset::Unspecified => sb::NetworkAccessPreset::Unspecified,
        AccessPreset::ReadOnly => sb::NetworkAccessPreset::ReadOnly,
        AccessPreset::ReadWrite => sb::NetworkAccessPreset::ReadWrite,
        AccessPreset::Full => sb::NetworkAccessPreset::Full,
    }) as i32
}

fn matchers_from(m: std::collections::HashMap<String, sb::L7QueryMatcher>) -> BTreeMap<String, QueryMatcher> {
    m.into_iter().map(|(k, v)| (k, QueryMatcher { glob: v.glob, any: v.any })).collect()
}

fn matchers_to(m: &BTreeMap<String, QueryMatcher>) -> std::collections::HashMap<String, sb::L7QueryMatcher> {
    m.iter().map(|(k, v)| (k.clone(), sb::L7QueryMatcher { glob: v.glob.clone(), any: v.any.clone() })).collect()
}

fn l7_allow_from(a: sb::L7Allow) -> L7Match {
    L7Match {
        method: a.method,
        path: a.path,
        command: a.command,
        query: matchers_from(a.query),
        operation_type: a.operation_type,
        operation_name: a.operation_name,
        fields: a.fields,
        params: matchers_from(a.params),
    }
}

fn l7_deny_from(a: sb::L7DenyRule) -> L7Match {
    L7Match {
        method: a.method,
        path: a.path,
        command: a.command,
        query: matchers_from(a.query),
        operation_type: a.operation_type,
        operation_name: a.operation_name,
        fields: a.fields,
        params: matchers_from(a.params),
    }
}

fn l7_allow_to(m: &L7Match) -> sb::L7Allow {
    sb::L7Allow {
        method: m.method.clone(),
        path: m.path.clone(),
        command: m.command.clone(),
        query: matchers_to(&m.query),
        operation_type: m.operation_type.clone(),
        operation_name: m.operation_name.clone(),
        fields: m.fields.clone(),
        params: matchers_to(&m.params),
    }
}

fn l7_deny_to(m: &L7Match) -> sb::L7DenyRule {
    sb::L7DenyRule {
        method: m.method.clone(),
        path: m.path.clone(),
        command: m.command.clone(),
        query: matchers_to(&m.query),
        operation_type: m.operation_type.clone(),
        operation_name: m.operation_name.clone(),
        fields: m.fields.clone(),
        params: matchers_to(&m.params),
    }
}

fn endpoint_from(e: sb::NetworkEndpoint) -> NetworkEndpoint {
    NetworkEndpoint {
        host: e.host,
        port: e.port,
        ports: e.ports,
        protocol: e.protocol,
        tls: tls_from(e.tls),
        enforcement: enforcement_from(e.enforcement),
        access: access_from(e.access),
        rules: e.rules.into_iter().filter_map(|r| r.allow).map(|a| L7Rule { allow: l7_allow_from(a) }).collect(),
        deny_rules: e.deny_rules.into_iter().map(l7_deny_from).collect(),
        allowed_ips: e.allowed_ips,
        path: e.path,
        allow_encoded_slash: e.allow_encoded_slash,
        persisted_queries: e.persisted_queries,
        graphql_persisted_queries: e
            .graphql_persisted_queries
            .into_iter()
            .map(|(k, g)| {
                (
                    k,
                    GraphqlOperation {
                        operation_type: g.operation_type,
                        operation_name: g.operation_name,
                        fields: g.fields,
                    },
                )
            })
            .collect(),
        graphql_max_body_bytes: e.graphql_max_body_bytes,
        websocket_credential_rewrite: e.websocket_credential_rewrite,
        request_body_credential_rewrite: e.request_body_credential_rewrite,
        advisor_proposed: e.advisor_proposed,
        credential_signing: e.credential_signing,
        signing_service: e.signing_service,
        signing_region: e.signing_region,
        json_rpc_max_body_bytes: e.json_rpc_max_body_bytes,
        mcp: e.mcp.map(|m| McpOptions {
            strict_tool_names: m.strict_tool_names,
            allow_all_known_mcp_methods: m.allow_all_known_mcp_methods,
            versions: m.versions,
        }),
        credential_binding: e.credential_binding.map(|b| CredentialBinding { provider: b.provider }),
        allow_uninspected_credentials: e.allow_uninspected_credentials,
        provider_credentialed: e.provider_credentialed,
        token_grant_owner: e.token_grant_owner,
    }
}

fn endpoint_to(e: &NetworkEndpoint) -> sb::NetworkEndpoint {
    sb::NetworkEndpoint {
        host: e.host.clone(),
        port: e.port,
        protocol: e.protocol.clone(),
        tls: tls_to(e.tls),
        enforcement: enforcement_to(e.enforcement),
        access: access_to(e.access),
        rules: e.rules.iter().map(|r| sb::L7Rule { allow: Some(l7_allow_to(&r.allow)) }).collect(),
        allowed_ips: e.allowed_ips.clone(),
        ports: e.ports.clone(),
        deny_rules: e.deny_rules.iter().map(l7_deny_to).collect(),
        allow_encoded_slash: e.allow_encoded_slash,
        persisted_queries: e.persisted_queries.clone(),
        graphql_persisted_queries: e
            .graphql_persisted_queries
            .iter()
            .map(|(k, g)| {
                let op = sb::GraphqlOperation {
                    operation_type: g.operation_type.clone(),
                    operation_name: g.operation_name.clone(),
                    fields: g.fields.clone(),
                };
                (k.clone(), op)
            })
            .collect(),
        graphql_max_body_bytes: e.graphql_max_body_bytes,
        path: e.path.clone(),
        websocket_credential_rewrite: e.websocket_credential_rewrite,
        request_body_credential_rewrite: e.request_body_credential_rewrite,
        advisor_proposed: e.advisor_proposed,
        credential_signing: e.credential_signing.clone(),
        signing_service: e.signing_service.clone(),
        signing_region: e.signing_region.clone(),
        json_rpc_max_body_bytes: e.json_rpc_max_body_bytes,
        mcp: e.mcp.as_ref().map(|m| sb::McpOptions {
            strict_tool_names: m.strict_tool_names,
            allow_all_known_mcp_methods: m.allow_all_known_mcp_methods,
            versions: m.versions.clone(),
        }),
        credential_binding: e
            .credential_binding
            .as_ref()
            .map(|b| sb::NetworkCredentialBinding { provider: b.provider.clone() }),
        allow_uninspected_credentials: e.allow_uninspected_credentials,
        provider_credentialed: e.provider_credentialed,
        token_grant_owner: e.token_grant_owner.clone(),
    }
}

/// `google.protobuf.Struct` ⇄ JSON, for middleware configuration.
fn json_from_value(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(json_from_struct(s)),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.into_iter().map(json_from_value).collect()),
    }
}

fn json_from_struct(s: prost_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields.into_iter().map(|(k, v)| (k, json_from_value(v))).collect()
}

fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => {
            Kind::ListValue(prost_types::ListValue { values: a.iter().map(json_to_value).collect() })
        }
        serde_json::Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn json_to_struct(o: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct { fields: o.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect() }
}

fn middleware_from(m: sb::NetworkMiddlewareConfig) -> NetworkMiddleware {
    NetworkMiddleware {
        name: m.name,
        middleware: m.middleware,
        config: m.config.map(json_from_struct).unwrap_or_default(),
        on_error: m.on_error,
        endpoints: m.endpoints.map(|e| MiddlewareEndpoints { include: e.include, exclude: e.exclude }),
        order: m.order,
    }
}

fn middleware_to(m: &NetworkMiddleware) -> sb::NetworkMiddlewareConfig {
    sb::NetworkMiddlewareConfig {
        name: m.name.clone(),
        middleware: m.middleware.clone(),
        config: (!m.config.is_empty()).then(|| json_to_struct(&m.config)),
        on_error: m.on_error.clone(),
        endpoints: m
            .endpoints
            .as_ref()
            .map(|e| sb::MiddlewareEndpointSelector { include: e.include.clone(), exclude: e.exclude.clone() }),
        order: m.order,
    }
}

pub(crate) fn rule_from(r: sb::NetworkPolicyRule) -> NetworkRule {
    NetworkRule {
        name: r.name,
        endpoints: r.endpoints.into_iter().map(endpoint_from).collect(),
        binaries: r.binaries.into_iter().map(|b| NetworkBinary { path: b.path }).collect(),
    }
}

pub(crate) fn rule_to(r: &NetworkRule) -> sb::NetworkPolicyRule {
    sb::NetworkPolicyRule {
        name: r.name.clone(),
        endpoints: r.endpoints.iter().map(endpoint_to).collect(),
        binaries: r.binaries.iter().map(|b| sb::NetworkBinary { path: b.path.clone() }).collect(),
    }
}

pub(crate) fn policy_from(p: sb::SandboxPolicy) -> Policy {
    Policy {
        version: p.version,
        filesystem: p.filesystem.map(|f| FilesystemPolicy {
            include_workdir: f.include_workdir,
            read_only: f.read_only,
            read_write: f.read_write,
        }),
        landlock: p.landlock.map(|l| LandlockPolicy { compatibility: l.compatibility }),
        process: p.process.map(|p| ProcessPolicy { run_as_user: p.run_as_user, run_as_group: p.run_as_group }),
        network_policies: p.network_policies.into_iter().map(|(k, v)| (k, rule_from(v))).collect(),
        network_middlewares: p.network_middlewares.into_iter().map(|(k, v)| (k, middleware_from(v))).collect(),
    }
}

pub(crate) fn policy_to(p: &Policy) -> sb::SandboxPolicy {
    sb::SandboxPolicy {
        version: p.version,
        filesystem: p.filesystem.as_ref().map(|f| sb::FilesystemPolicy {
            include_workdir: f.include_workdir,
            read_only: f.read_only.clone(),
            read_write: f.read_write.clone(),
        }),
        landlock: p.landlock.as_ref().map(|l| sb::LandlockPolicy { compatibility: l.compatibility.clone() }),
        process: p
            .process
            .as_ref()
            .map(|p| sb::ProcessPolicy { run_as_user: p.run_as_user.clone(), run_as_group: p.run_as_group.clone() }),
        network_policies: p.network_policies.iter().map(|(k, v)| (k.clone(), rule_to(v))).collect(),
        network_middlewares: p.network_middlewares.iter().map(|(k, v)| (k.clone(), middleware_to(v))).collect(),
    }
}

pub(crate) fn merge_op_to(op: &PolicyMergeOp) -> v1::PolicyMergeOperation {
    use v1::policy_merge_operation::Operation;
    let operation = match op {
        PolicyMergeOp::AddRule { rule_name, rule } => {
            Operation::AddRule(v1::AddNetworkRule { rule_name: rule_name.clone(), rule: Some(rule_to(rule)) })
        }
        PolicyMergeOp::RemoveRule { rule_name } => {
            Operation::RemoveRule(v1::RemoveNetworkRule { rule_name: rule_name.clone() })
        }
        PolicyMergeOp::RemoveEndpoint { rule_name, host, port } => {
            Operation::RemoveEndpoint(v1::RemoveNetworkEndpoint {
                rule_name: rule_name.clone(),
                host: host.clone(),
                port: *port,
            })
        }
        PolicyMergeOp::RemoveBinary { rule_name, binary_path } => Operation::RemoveBinary(v1::RemoveNetworkBinary {
            rule_name: rule_name.clone(),
            binary_path: binary_path.clone(),
        }),
    };
    v1::PolicyMergeOperation { operation: Some(operation) }
}

fn policy_status(raw: i32) -> PolicyStatus {
    match v1::PolicyStatus::try_from(raw) {
        Ok(v1::PolicyStatus::Pending) => PolicyStatus::Pending,
        Ok(v1::PolicyStatus::Loaded) => PolicyStatus::Loaded,
        Ok(v1::PolicyStatus::Failed) => PolicyStatus::Failed,
        Ok(v1::PolicyStatus::Superseded) => PolicyStatus::Superseded,
        _ => PolicyStatus::Unspecified,
    }
}

pub(crate) fn revision(r: v1::SandboxPolicyRevision) -> PolicyRevision {
    PolicyRevision {
        version: r.version,
        policy_hash: text(r.policy_hash),
        status: policy_status(r.status),
        load_error: text(r.load_error),
        created_at: time(r.created_time),
        loaded_at: time(r.loaded_time),
        policy: r.policy.map(policy_from),
    }
}

pub(crate) fn setting_from(v: sb::SettingValue) -> Option<SettingValue> {
    use sb::setting_value::Value;
    Some(match v.value? {
        Value::StringValue(s) => SettingValue::String(text(s)),
        Value::BoolValue(b) => SettingValue::Bool(b),
        Value::IntValue(i) => SettingValue::Int(i),
        // No gateway setting is binary today; show it rather than drop it.
        Value::BytesValue(b) => SettingValue::String(format!("<{} bytes>", b.len())),
    })
}

pub(crate) fn setting_to(v: &SettingValue) -> sb::SettingValue {
    use sb::setting_value::Value;
    sb::SettingValue {
        value: Some(match v {
            SettingValue::String(s) => Value::StringValue(s.clone()),
            SettingValue::Bool(b) => Value::BoolValue(*b),
            SettingValue::Int(i) => Value::IntValue(*i),
        }),
    }
}

pub(crate) fn sandbox_config(r: sb::GetSandboxConfigResponse) -> SandboxConfig {
    SandboxConfig {
        policy: r.policy.map(policy_from),
        version: r.version,
        policy_hash: text(r.policy_hash),
        settings: r.settings.into_iter().filter_map(|(k, v)| Some((text(k), setting_from(v.value?)?))).collect(),
        config_revision: r.config_revision,
        policy_source: match sb::PolicySource::try_from(r.policy_source) {
            Ok(sb::PolicySource::Sandbox) => PolicySource::Sandbox,
            Ok(sb::PolicySource::Global) => PolicySource::Global,
            _ => PolicySource::Unspecified,
        },
    }
}

pub(crate) fn gateway_settings(r: sb::GetGatewayConfigResponse) -> GatewaySettings {
    GatewaySettings {
        settings: r.settings.into_iter().filter_map(|(k, v)| Some((text(k), setting_from(v)?))).collect(),
        settings_revision: r.settings_revision,
    }
}

pub(crate) fn config_update(r: v1::UpdateConfigResponse) -> ConfigUpdateResult {
    ConfigUpdateResult {
        version: r.version,
        policy_hash: text(r.policy_hash),
        settings_revision: r.settings_revision,
        deleted: r.deleted,
    }
}

// ---------------------------------------------------------------- drafts

pub(crate) fn chunk(c: v1::PolicyChunk) -> DraftChunk {
    DraftChunk {
        id: text(c.id),
        status: text(c.status),
        rule_name: text(c.rule_name),
        proposed_rule: c.proposed_rule.map(rule_from),
        rationale: breakwater_domain::sanitize(&c.rationale, 4096),
        security_notes: breakwater_domain::sanitize(&c.security_notes, 4096),
        confidence: c.confidence,
        hit_count: c.hit_count,
        binary: text(c.binary),
        stage: text(c.stage),
        validation_result: text(c.validation_result),
        rejection_reason: text(c.rejection_reason),
        application_error: text(c.application_error),
        review_token: c.review_token,
        current_effective_policy_hash: text(c.current_effective_policy_hash),
        candidate_effective_policy_hash: text(c.candidate_effective_policy_hash),
        current_effective_policy: c.current_effective_policy.map(policy_from),
        candidate_effective_policy: c.candidate_effective_policy.map(policy_from),
        created_at: time(c.created_time),
        decided_at: time(c.decided_time),
        first_seen: time(c.first_seen_time),
        last_seen: time(c.last_seen_time),
    }
}

pub(crate) fn draft(r: v1::GetDraftPolicyResponse) -> DraftPolicy {
    DraftPolicy {
        chunks: r.chunks.into_iter().map(chunk).collect(),
        rolling_summary: breakwater_domain::sanitize(&r.rolling_summary, 8192),
        draft_version: r.draft_version,
        last_analyzed_at: time(r.last_analyzed_time),
    }
}

pub(crate) fn approve_all(r: v1::ApproveAllDraftChunksResponse) -> ApproveAllResult {
    ApproveAllResult {
        policy_version: r.policy_version,
        policy_hash: text(r.policy_hash),
        chunks_approved: r.chunks_approved,
        chunks_skipped: r.chunks_skipped,
    }
}

pub(crate) fn history(e: v1::DraftHistoryEntry) -> DraftHistoryEntry {
    DraftHistoryEntry {
        time: time(e.event_time),
        event_type: text(e.event_type),
        description: text(e.description),
        chunk_id: text(e.chunk_id),
    }
}

// ---------------------------------------------------------------- providers

pub(crate) fn provider(p: dm::Provider) -> Provider {
    let meta = p.metadata.unwrap_or_default();
    let mut credential_keys: Vec<String> = p.credentials.into_keys().map(text).collect();
    credential_keys.sort();
    Provider {
        id: text(meta.id),
        name: text(meta.name),
        kind: text(p.r#type),
        credential_keys,
        config: map_text(p.config),
        labels: map_text(meta.labels),
        resource_version: meta.resource_version,
    }
}

pub(crate) fn provider_response(r: v1::ProviderResponse) -> Result<Provider, GatewayError> {
    r.provider.map(provider).ok_or_else(|| missing("provider"))
}

pub(crate) fn attachment(sandbox: Option<v1::Sandbox>, changed: bool) -> ProviderAttachment {
    let providers = sandbox.and_then(|s| s.spec).map(|s| s.providers).unwrap_or_default();
    ProviderAttachment { sandbox_providers: providers.into_iter().map(text).collect(), changed }
}

pub(crate) fn profile(p: v1::ProviderProfile) -> ProviderProfile {
    let category = v1::ProviderProfileCategory::try_from(p.category)
        .map(|c| c.as_str_name().trim_start_matches("PROVIDER_PROFILE_CATEGORY_").to_ascii_lowercase())
        .unwrap_or_default();
    ProviderProfile {
        id: text(p.id),
        display_name: text(p.display_name),
        description: text(p.description),
        category,
        credentials: p
            .credentials
            .into_iter()
            .map(|c| ProfileCredential {
                name: text(c.name),
                description: text(c.description),
                env_vars: c.env_vars.into_iter().map(text).collect(),
                required: c.required,
            })
            .collect(),
        endpoints: p.endpoints.into_iter().map(endpoint_from).collect(),
        binaries: p.binaries.into_iter().map(|b| NetworkBinary { path: b.path }).collect(),
        inference_capable: p.inference_capable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_keeps_plain_strings_and_cleans_the_rest() {
        assert_eq!(text("sandbox-1".into()), "sandbox-1");
        assert_eq!(text(" padded ".into()), "padded");
        assert_eq!(text("a\r\ndata: x".into()), "a  data: x");
        assert_eq!(text("a\u{85}b".into()), "a b", "a C1 control is not plain");
        assert_eq!(text("é".repeat(400)).chars().count(), 301, "capped in characters");
        assert_eq!(text("x".repeat(400)).chars().count(), 301);
    }

    fn ssh(host: &str, token: &str) -> v1::CreateSshSessionResponse {
        v1::CreateSshSessionResponse {
            sandbox_id: "3f0c5d5e-0000-4000-8000-000000000001".into(),
            token: token.into(),
            gateway_host: host.into(),
            gateway_port: 2222,
            gateway_scheme: "ssh".into(),
            host_key_fingerprint: "SHA256:abc".into(),
            expiration_time: None,
        }
    }

    #[test]
    fn s11_ssh_host_with_shell_metacharacters_is_rejected() {
        let err = ssh_session(ssh("evil;ProxyCommand=sh", "0f8fad5b-d9cb-469f-a165-70867728950e")).unwrap_err();
        assert_eq!(err.code(), "invalid_response");
        assert!(err.to_string().contains("host"));
        for bad in ["-oProxyCommand=x", "a b", "", "host\n"] {
            assert!(ssh_session(ssh(bad, "0f8fad5b-d9cb-469f-a165-70867728950e")).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ssh_session_accepts_names_ips_and_uuid_tokens() {
        for host in ["gw.example.com", "127.0.0.1", "::1", "localhost"] {
            let s = ssh_session(ssh(host, "0f8fad5b-d9cb-469f-a165-70867728950e")).unwrap();
            assert_eq!(s.gateway_host, host);
        }
        assert!(ssh_session(ssh("gw", "short")).is_err());
        assert!(ssh_session(ssh("gw", "tok en with spaces")).is_err());
    }

    /// Every field of the wire policy set to a non-default value.
    fn full_wire_policy() -> sb::SandboxPolicy {
        let matcher = |g: &str| sb::L7QueryMatcher { glob: g.into(), any: vec!["a".into(), "b".into()] };
        let allow = sb::L7Allow {
            method: "GET".into(),
            path: "/repos/**".into(),
            command: "SELECT".into(),
            query: [("per_page".to_owned(), matcher("1*"))].into_iter().collect(),
            operation_type: "query".into(),
            operation_name: "Viewer".into(),
            fields: vec!["login".into()],
            params: [("id".to_owned(), matcher("*"))].into_iter().collect(),
        };
        let deny = sb::L7DenyRule {
            method: "DELETE".into(),
            path: "/admin".into(),
            command: "DROP".into(),
            query: [("force".to_owned(), matcher("true"))].into_iter().collect(),
            operation_type: "mutation".into(),
            operation_name: "Nuke".into(),
            fields: vec!["all".into()],
            params: [("x".to_owned(), matcher("y"))].into_iter().collect(),
        };
        let endpoint = sb::NetworkEndpoint {
            host: "api.github.com".into(),
            port: 443,
            protocol: "rest".into(),
            tls: sb::NetworkTlsMode::Terminate as i32,
            enforcement: sb::NetworkEnforcementMode::Audit as i32,
            access: sb::NetworkAccessPreset::Unspecified as i32,
            rules: vec![sb::L7Rule { allow: Some(allow) }],
            allowed_ips: vec!["10.0.0.0/8".into()],
            ports: vec![443, 8443],
            deny_rules: vec![deny],
            allow_encoded_slash: true,
            persisted_queries: "strict".into(),
            graphql_persisted_queries: [(
                "abc".to_owned(),
                sb::GraphqlOperation {
                    operation_type: "query".into(),
                    operation_name: "Q".into(),
                    fields: vec!["f".into()],
                },
            )]
            .into_iter()
            .collect(),
            graphql_max_body_bytes: 1024,
            path: "/graphql".into(),
            websocket_credential_rewrite: true,
            request_body_credential_rewrite: true,
            advisor_proposed: true,
            credential_signing: "sigv4".into(),
            signing_service: "s3".into(),
            signing_region: "us-east-1".into(),
            json_rpc_max_body_bytes: 2048,
            mcp: Some(sb::McpOptions {
                strict_tool_names: Some(false),
                allow_all_known_mcp_methods: Some(true),
                versions: vec!["2025-06-18".into()],
            }),
            credential_binding: Some(sb::NetworkCredentialBinding { provider: "github".into() }),
            allow_uninspected_credentials: true,
            provider_credentialed: true,
            token_grant_owner: "owner".into(),
        };
        let config = prost_types::Struct {
            fields: [
                ("limit".to_owned(), prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(3.0)) }),
                (
                    "tags".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::ListValue(prost_types::ListValue {
                            values: vec![prost_types::Value {
                                kind: Some(prost_types::value::Kind::StringValue("x".into())),
                            }],
                        })),
                    },
                ),
            ]
            .into_iter()
            .collect(),
        };
        sb::SandboxPolicy {
            version: 4,
            filesystem: Some(sb::FilesystemPolicy {
                include_workdir: true,
                read_only: vec!["/usr".into()],
                read_write: vec!["/tmp".into()],
            }),
            landlock: Some(sb::LandlockPolicy { compatibility: "hard_requirement".into() }),
            process: Some(sb::ProcessPolicy { run_as_user: "agent".into(), run_as_group: "agent".into() }),
            network_policies: [(
                "github".to_owned(),
                sb::NetworkPolicyRule {
                    name: "github".into(),
                    endpoints: vec![endpoint],
                    binaries: vec![sb::NetworkBinary { path: "/usr/bin/gh".into() }],
                },
            )]
            .into_iter()
            .collect(),
            network_middlewares: [(
                "redact".to_owned(),
                sb::NetworkMiddlewareConfig {
                    name: "redact".into(),
                    middleware: "pii-redactor".into(),
                    config: Some(config),
                    on_error: "fail_closed".into(),
                    endpoints: Some(sb::MiddlewareEndpointSelector {
                        include: vec!["github".into()],
                        exclude: vec!["none".into()],
                    }),
                    order: 2,
                },
            )]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn reading_and_writing_back_a_policy_loses_nothing() {
        // A policy read from a gateway and written back must not be looser
        // than before: every field survives the trip through the domain model.
        let wire = full_wire_policy();
        assert_eq!(policy_to(&policy_from(wire.clone())), wire);
    }

    #[test]
    fn policy_round_trips_through_proto() {
        let yaml_like = Policy {
            version: 2,
            filesystem: Some(FilesystemPolicy {
                include_workdir: true,
                read_only: vec!["/usr".into()],
                read_write: vec![],
            }),
            landlock: Some(LandlockPolicy { compatibility: "best_effort".into() }),
            process: Some(ProcessPolicy { run_as_user: "sandbox".into(), run_as_group: "sandbox".into() }),
            network_policies: [(
                "github".to_owned(),
                NetworkRule {
                    name: "github".into(),
                    endpoints: vec![NetworkEndpoint {
                        host: "api.github.com".into(),
                        port: 443,
                        protocol: "rest".into(),
                        tls: TlsMode::Terminate,
                        access: AccessPreset::ReadOnly,
                        ..Default::default()
                    }],
                    binaries: vec![NetworkBinary { path: "/usr/bin/git".into() }],
                },
            )]
            .into_iter()
            .collect(),
            network_middlewares: BTreeMap::new(),
        };
        assert_eq!(policy_from(policy_to(&yaml_like)), yaml_like);
    }
}
