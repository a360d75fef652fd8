//! `Gateway` over tonic.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use breakwater_domain::approval::{ApproveAllResult, DraftHistoryEntry, DraftPolicy, PolicyVersionRef};
use breakwater_domain::gateway::{CurrentUser, GatewayInfo, Health, Workspace};
use breakwater_domain::policy::{
    ConfigChange, ConfigUpdateResult, GatewaySettings, NetworkRule, PolicyRevision, SandboxConfig,
};
use breakwater_domain::provider::{Provider, ProviderAttachment, ProviderProfile, ProviderSpec};
use breakwater_domain::sandbox::{
    DeletionOutcome, ExecEvent, ExecRequest, LogQuery, NewSandbox, Sandbox, SandboxDeletion, SandboxLogs, SshSession,
    WatchEvent, WatchOptions,
};
use breakwater_domain::{LabelSelector, Labels, Page, PageRequest, ProviderName, SandboxName, Secret, WorkspaceName};
use breakwater_wire::openshell::v1::open_shell_client::OpenShellClient;
use breakwater_wire::{datamodel as dm, sandbox as sb, v1};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::config::{ConnectionConfig, Transport};
use crate::connector::{TlsDialer, client_config};
use crate::mapping::{self as map, scope, scope_of};
use crate::retry::{Idempotency, with_retry};
use crate::{FieldViolation, Gateway, GatewayError, PolicyStatusReport, Result, WorkspaceScope};

type Client = OpenShellClient<Channel>;

/// Longest exec the client will ask for; longer work belongs in a job, not
/// an exec stream.
const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A connection to one gateway. Cheap to clone: clones share the HTTP/2
/// connection.
#[derive(Clone)]
pub struct GrpcGateway {
    client: Client,
    config: Arc<ConnectionConfig>,
}

impl std::fmt::Debug for GrpcGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcGateway").field("address", &self.config.address).finish_non_exhaustive()
    }
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl GrpcGateway {
    /// Dials now and reports a classified error if the gateway cannot be
    /// reached or trusted.
    pub async fn connect(config: ConnectionConfig) -> Result<Self> {
        let endpoint = Self::endpoint(&config)?;
        let channel = match &config.transport {
            Transport::Plaintext => endpoint.connect().await,
            Transport::Tls { ca_pem, client, skip_server_verification } => {
                let tls = client_config(ca_pem.as_deref(), client.as_ref(), *skip_server_verification)?;
                let dialer = TlsDialer::new(tls, config.address.clone(), config.timeouts.connect)?;
                endpoint.connect_with_connector(dialer).await
            }
        }
        .map_err(|e| GatewayError::from_transport(&e))?;
        Ok(Self::with_channel(channel, config))
    }

    /// Builds the client without dialling; the first call connects.
    pub fn connect_lazy(config: ConnectionConfig) -> Result<Self> {
        let endpoint = Self::endpoint(&config)?;
        let channel = match &config.transport {
            Transport::Plaintext => endpoint.connect_lazy(),
            Transport::Tls { ca_pem, client, skip_server_verification } => {
                let tls = client_config(ca_pem.as_deref(), client.as_ref(), *skip_server_verification)?;
                let dialer = TlsDialer::new(tls, config.address.clone(), config.timeouts.connect)?;
                endpoint.connect_with_connector_lazy(dialer)
            }
        };
        Ok(Self::with_channel(channel, config))
    }

    fn endpoint(config: &ConnectionConfig) -> Result<Endpoint> {
        // The URI only names the authority: with TLS our dialer does the
        // handshake, so tonic must not try its own (hence http://).
        Endpoint::from_shared(format!("http://{}", config.address.authority()))
            .map_err(|e| GatewayError::Config { message: e.to_string() })
            .map(|e| {
                e.connect_timeout(config.timeouts.connect)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true)
            })
    }

    fn with_channel(channel: Channel, config: ConnectionConfig) -> Self {
        // Gateways may send large lists (thousands of sandboxes per page).
        let client = OpenShellClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        Self { client, config: Arc::new(config) }
    }

    /// The address this client talks to.
    #[must_use]
    pub fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    fn request<T>(&self, message: T, deadline: Duration) -> Result<tonic::Request<T>> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(deadline);
        if let Some(token) = &self.config.bearer_token {
            let value = format!("Bearer {}", token.expose())
                .parse()
                .map_err(|_| GatewayError::Config { message: "bearer token contains invalid characters".into() })?;
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }

    /// One unary call with deadline, classification and (when safe) retries.
    async fn unary<Req, Resp, Fut>(
        &self,
        method: &'static str,
        idempotency: Idempotency,
        message: Req,
        call: fn(Client, tonic::Request<Req>) -> Fut,
    ) -> Result<Resp>
    where
        Req: Clone + Send,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>> + Send,
    {
        let deadline = self.config.timeouts.call;
        with_retry(&self.config.retry, idempotency, method, || {
            let client = self.client.clone();
            let req = self.request(message.clone(), deadline);
            async move {
                let req = req?;
                let until = Instant::now() + deadline;
                match tokio::time::timeout_at(until, call(client, req)).await {
                    Ok(Ok(resp)) => Ok(resp.into_inner()),
                    Ok(Err(status)) => Err(status_error(method, &status, until)),
                    Err(_) => Err(GatewayError::DeadlineExceeded { message: format!("{method} after {deadline:?}") }),
                }
            }
        })
        .await
    }

    /// Opens a server stream. Opening is not retried (exec is not idempotent
    /// and a watch is re-opened by its owner); each item is bounded by the
    /// stream's overall deadline.
    async fn stream<Req, Item, Out, Fut>(
        &self,
        method: &'static str,
        message: Req,
        deadline: Duration,
        call: fn(Client, tonic::Request<Req>) -> Fut,
        convert: fn(Item) -> Option<Out>,
        is_last: fn(&Out) -> bool,
    ) -> Result<BoxStream<'static, Result<Out>>>
    where
        Req: Send,
        Item: Send + 'static,
        Out: Send + 'static,
        Fut: Future<Output = std::result::Result<tonic::Response<tonic::Streaming<Item>>, tonic::Status>> + Send,
    {
        let until = Instant::now() + deadline;
        let req = self.request(message, deadline)?;
        let streaming = match tokio::time::timeout_at(until, call(self.client.clone(), req)).await {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => return Err(status_error(method, &status, until)),
            Err(_) => {
                return Err(GatewayError::DeadlineExceeded { message: format!("{method} did not start in time") });
            }
        };
        // State: Some(stream) while open; None once we have ended it. Dropping
        // the returned stream drops `Streaming`, which resets the HTTP/2
        // stream, so the gateway sees the cancellation.
        let s = futures::stream::unfold(Some(streaming), move |state| async move {
            let mut streaming = state?;
            loop {
                match tokio::time::timeout_at(until, streaming.message()).await {
                    Err(_) => {
                        let err = GatewayError::DeadlineExceeded { message: format!("{method} exceeded {deadline:?}") };
                        return Some((Err(err), None));
                    }
                    Ok(Err(status)) => return Some((Err(status_error(method, &status, until)), None)),
                    Ok(Ok(None)) => return None,
                    Ok(Ok(Some(item))) => {
                        // Unknown payloads (a newer gateway) are skipped, not fatal.
                        let Some(out) = convert(item) else { continue };
                        let next = if is_last(&out) { None } else { Some(streaming) };
                        return Some((Ok(out), next));
                    }
                }
            }
        });
        Ok(s.boxed())
    }
}

/// tonic enforces the `grpc-timeout` we send by cancelling the call; when
/// that wins the race against our own timer it is still a missed deadline.
fn status_error(method: &'static str, status: &tonic::Status, until: Instant) -> GatewayError {
    if status.code() == tonic::Code::Cancelled && Instant::now() >= until {
        return GatewayError::DeadlineExceeded { message: format!("{method} did not finish in time") };
    }
    GatewayError::from_status(method, status)
}

fn page_size(p: &PageRequest) -> i32 {
    i32::try_from(p.page_size).unwrap_or(i32::MAX)
}

#[async_trait]
impl Gateway for GrpcGateway {
    async fn health(&self) -> Result<Health> {
        self.unary("Health", Idempotency::Read, v1::HealthRequest {}, |mut c, r| async move { c.health(r).await })
            .await
            .map(map::health)
    }

    async fn gateway_info(&self) -> Result<GatewayInfo> {
        self.unary("GetGatewayInfo", Idempotency::Read, v1::GetGatewayInfoRequest {}, |mut c, r| async move {
            c.get_gateway_info(r).await
        })
        .await
        .map(map::gateway_info)
    }

    async fn current_user(&self) -> Result<CurrentUser> {
        self.unary("GetCurrentUser", Idempotency::Read, v1::GetCurrentUserRequest {}, |mut c, r| async move {
            c.get_current_user(r).await
        })
        .await
        .map(map::current_user)
    }

    async fn list_sandboxes(
        &self,
        scope: &WorkspaceScope,
        selector: &LabelSelector,
        page: &PageRequest,
    ) -> Result<Page<Sandbox>> {
        let req = v1::ListSandboxesRequest {
            page_size: page_size(page),
            page_token: page.page_token.clone(),
            label_selector: selector.to_string(),
            workspace_scope: scope_of(scope),
        };
        let resp = self
            .unary("ListSandboxes", Idempotency::Read, req, |mut c, r| async move { c.list_sandboxes(r).await })
            .await?;
        Ok(Page {
            items: resp.sandboxes.into_iter().map(map::sandbox).collect(),
            next_page_token: resp.next_page_token,
        })
    }

    async fn get_sandbox(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<Sandbox> {
        let req = v1::GetSandboxRequest { name: name.to_string(), workspace_scope: scope(ws) };
        let resp =
            self.unary("GetSandbox", Idempotency::Read, req, |mut c, r| async move { c.get_sandbox(r).await }).await?;
        map::sandbox_response(resp)
    }

    async fn create_sandbox(&self, new: &NewSandbox) -> Result<Sandbox> {
        let spec = v1::SandboxSpec {
            environment: new.environment.clone().into_iter().collect(),
            template: (!new.image.is_empty())
                .then(|| v1::SandboxTemplate { image: new.image.clone(), ..Default::default() }),
            policy: new.policy.as_ref().map(map::policy_to),
            providers: new.providers.clone(),
            command: new.command.clone(),
            log_level: new.log_level.clone(),
            resource_requirements: new
                .gpu
                .then_some(v1::ResourceRequirements { gpu: Some(v1::GpuResourceRequirements { count: None }) }),
            ..Default::default()
        };
        let req = v1::CreateSandboxRequest {
            spec: Some(spec),
            name: new.name.as_ref().map(ToString::to_string).unwrap_or_default(),
            labels: new.labels.as_map().clone().into_iter().collect(),
            workspace_scope: scope(&new.workspace),
            request_id: request_id(),
            ..Default::default()
        };
        let resp = self
            .unary("CreateSandbox", Idempotency::Keyed, req, |mut c, r| async move { c.create_sandbox(r).await })
            .await?;
        map::sandbox_response(resp)
    }

    async fn delete_sandbox(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        allow_missing: bool,
    ) -> Result<SandboxDeletion> {
        let req = v1::DeleteSandboxRequest {
            name: name.to_string(),
            workspace_scope: scope(ws),
            allow_missing,
            request_id: request_id(),
        };
        let resp = self
            .unary("DeleteSandbox", Idempotency::Keyed, req, |mut c, r| async move { c.delete_sandbox(r).await })
            .await?;
        Ok(SandboxDeletion { outcome: map::deletion(resp.outcome), sandbox_id: resp.sandbox_id })
    }

    async fn stop_sandbox(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<Sandbox> {
        let req =
            v1::StopSandboxRequest { name: name.to_string(), workspace_scope: scope(ws), request_id: request_id() };
        let resp = self
            .unary("StopSandbox", Idempotency::Keyed, req, |mut c, r| async move { c.stop_sandbox(r).await })
            .await?;
        map::sandbox_response(resp)
    }

    async fn start_sandbox(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<Sandbox> {
        let req =
            v1::StartSandboxRequest { name: name.to_string(), workspace_scope: scope(ws), request_id: request_id() };
        let resp = self
            .unary("StartSandbox", Idempotency::Keyed, req, |mut c, r| async move { c.start_sandbox(r).await })
            .await?;
        map::sandbox_response(resp)
    }

    async fn watch_sandbox(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        options: &WatchOptions,
    ) -> Result<BoxStream<'static, Result<WatchEvent>>> {
        let req = v1::WatchSandboxRequest {
            sandbox: name.to_string(),
            follow_status: options.follow_status,
            follow_logs: options.follow_logs,
            follow_events: options.follow_events,
            log_tail_lines: options.log_tail_lines,
            stop_on_terminal: options.stop_on_terminal,
            workspace_scope: scope(ws),
            ..Default::default()
        };
        self.stream(
            "WatchSandbox",
            req,
            self.config.timeouts.watch,
            |mut c, r| async move { c.watch_sandbox(r).await },
            map::watch_event,
            |_| false,
        )
        .await
    }

    async fn exec_stream(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        request: &ExecRequest,
    ) -> Result<BoxStream<'static, Result<ExecEvent>>> {
        if request.command.is_empty() {
            return Err(GatewayError::InvalidArgument {
                message: "exec needs a command".into(),
                violations: vec![FieldViolation { field: "command".into(), description: "must not be empty".into() }],
            });
        }
        if request.timeout.is_some_and(|t| t > MAX_EXEC_TIMEOUT) {
            return Err(GatewayError::InvalidArgument {
                message: format!("exec timeout may be at most {} hours", MAX_EXEC_TIMEOUT.as_secs() / 3600),
                violations: vec![FieldViolation { field: "timeout".into(), description: "too long".into() }],
            });
        }
        // The command may run up to its own timeout; give the stream slack
        // for session setup and teardown on top.
        let deadline = request
            .timeout
            .map_or(self.config.timeouts.exec, |t| (t + Duration::from_secs(10)).max(self.config.timeouts.call));
        let req = v1::ExecSandboxRequest {
            sandbox: name.to_string(),
            command: request.command.clone(),
            workdir: request.workdir.clone(),
            environment: request.environment.clone().into_iter().collect(),
            stdin: request.stdin.clone(),
            workspace_scope: scope(ws),
            request_id: request_id(),
            execution_timeout: request
                .timeout
                .map(|t| prost_types::Duration { seconds: t.as_secs() as i64, nanos: t.subsec_nanos() as i32 }),
            ..Default::default()
        };
        self.stream(
            "ExecSandbox",
            req,
            deadline,
            |mut c, r| async move { c.exec_sandbox(r).await },
            map::exec_event,
            |e| matches!(e, ExecEvent::Exit(_)),
        )
        .await
    }

    async fn sandbox_logs(&self, ws: &WorkspaceName, name: &SandboxName, query: &LogQuery) -> Result<SandboxLogs> {
        let req = v1::GetSandboxLogsRequest {
            sandbox: name.to_string(),
            lines: query.lines,
            sources: query.sources.clone(),
            min_level: query.min_level.clone(),
            workspace_scope: scope(ws),
            since_time: query.since.map(map::timestamp),
        };
        let resp = self
            .unary("GetSandboxLogs", Idempotency::Read, req, |mut c, r| async move { c.get_sandbox_logs(r).await })
            .await?;
        Ok(SandboxLogs { lines: resp.logs.into_iter().map(map::log_line).collect(), buffer_total: resp.buffer_total })
    }

    async fn create_ssh_session(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<SshSession> {
        let req = v1::CreateSshSessionRequest { sandbox: name.to_string(), workspace_scope: scope(ws) };
        // No request_id in this message: a retry could mint a second session.
        let resp =
            self.unary("CreateSshSession", Idempotency::Unsafe, req, |mut c, r| async move {
                c.create_ssh_session(r).await
            })
            .await?;
        map::ssh_session(resp)
    }

    async fn revoke_ssh_session(&self, token: &Secret, allow_missing: bool) -> Result<DeletionOutcome> {
        let req = v1::RevokeSshSessionRequest { token: token.expose().to_owned(), allow_missing };
        // Revoking twice is harmless with allow_missing, but without it a
        // retry would report NotFound for a revoke that succeeded.
        let idem = if allow_missing { Idempotency::Read } else { Idempotency::Unsafe };
        let resp =
            self.unary("RevokeSshSession", idem, req, |mut c, r| async move { c.revoke_ssh_session(r).await }).await?;
        Ok(map::deletion(resp.outcome))
    }

    async fn list_providers(&self, ws: &WorkspaceName, page: &PageRequest) -> Result<Page<Provider>> {
        let req = v1::ListProvidersRequest {
            page_size: page_size(page),
            page_token: page.page_token.clone(),
            workspace_scope: scope(ws),
            label_selector: String::new(),
        };
        let resp = self
            .unary("ListProviders", Idempotency::Read, req, |mut c, r| async move { c.list_providers(r).await })
            .await?;
        Ok(Page {
            items: resp.providers.into_iter().map(map::provider).collect(),
            next_page_token: resp.next_page_token,
        })
    }

    async fn get_provider(&self, ws: &WorkspaceName, name: &ProviderName) -> Result<Provider> {
        let req = v1::GetProviderRequest { name: name.to_string(), workspace_scope: scope(ws) };
        let resp = self
            .unary("GetProvider", Idempotency::Read, req, |mut c, r| async move { c.get_provider(r).await })
            .await?;
        map::provider_response(resp)
    }

    async fn create_provider(&self, ws: &WorkspaceName, spec: &ProviderSpec) -> Result<Provider> {
        let req = v1::CreateProviderRequest {
            provider: Some(provider_message(spec)),
            workspace_scope: scope(ws),
            request_id: request_id(),
        };
        let resp = self
            .unary("CreateProvider", Idempotency::Keyed, req, |mut c, r| async move { c.create_provider(r).await })
            .await?;
        map::provider_response(resp)
    }

    async fn update_provider(&self, ws: &WorkspaceName, spec: &ProviderSpec) -> Result<Provider> {
        let req = v1::UpdateProviderRequest {
            provider: Some(provider_message(spec)),
            workspace_scope: scope(ws),
            request_id: request_id(),
            ..Default::default()
        };
        let resp = self
            .unary("UpdateProvider", Idempotency::Keyed, req, |mut c, r| async move { c.update_provider(r).await })
            .await?;
        map::provider_response(resp)
    }

    async fn delete_provider(
        &self,
        ws: &WorkspaceName,
        name: &ProviderName,
        allow_missing: bool,
    ) -> Result<DeletionOutcome> {
        let req = v1::DeleteProviderRequest {
            name: name.to_string(),
            workspace_scope: scope(ws),
            allow_missing,
            request_id: request_id(),
        };
        let resp = self
            .unary("DeleteProvider", Idempotency::Keyed, req, |mut c, r| async move { c.delete_provider(r).await })
            .await?;
        Ok(map::deletion(resp.outcome))
    }

    async fn delete_provider_profile(&self, ws: &WorkspaceName, id: &str) -> Result<DeletionOutcome> {
        let req = v1::DeleteProviderProfileRequest {
            id: id.to_owned(),
            workspace_scope: scope(ws),
            allow_missing: false,
            request_id: request_id(),
        };
        let resp = self
            .unary("DeleteProviderProfile", Idempotency::Keyed, req, |mut c, r| async move {
                c.delete_provider_profile(r).await
            })
            .await?;
        Ok(map::deletion(resp.outcome))
    }

    async fn list_provider_profiles(&self, ws: &WorkspaceName, page: &PageRequest) -> Result<Page<ProviderProfile>> {
        let req = v1::ListProviderProfilesRequest {
            page_size: page_size(page),
            page_token: page.page_token.clone(),
            workspace_scope: scope(ws),
        };
        let resp = self
            .unary("ListProviderProfiles", Idempotency::Read, req, |mut c, r| async move {
                c.list_provider_profiles(r).await
            })
            .await?;
        Ok(Page { items: resp.profiles.into_iter().map(map::profile).collect(), next_page_token: resp.next_page_token })
    }

    async fn get_provider_profile(&self, ws: &WorkspaceName, id: &str) -> Result<ProviderProfile> {
        let req = v1::GetProviderProfileRequest { id: id.to_owned(), workspace_scope: scope(ws) };
        let resp =
            self.unary("GetProviderProfile", Idempotency::Read, req, |mut c, r| async move {
                c.get_provider_profile(r).await
            })
            .await?;
        resp.profile.map(map::profile).ok_or_else(|| GatewayError::InvalidResponse { message: "no profile".into() })
    }

    async fn list_sandbox_providers(
        &self,
        ws: &WorkspaceName,
        sandbox: &SandboxName,
        page: &PageRequest,
    ) -> Result<Page<Provider>> {
        let req = v1::ListSandboxProvidersRequest {
            sandbox: sandbox.to_string(),
            workspace_scope: scope(ws),
            page_size: page_size(page),
            page_token: page.page_token.clone(),
        };
        let resp = self
            .unary("ListSandboxProviders", Idempotency::Read, req, |mut c, r| async move {
                c.list_sandbox_providers(r).await
            })
            .await?;
        Ok(Page {
            items: resp.providers.into_iter().map(map::provider).collect(),
            next_page_token: resp.next_page_token,
        })
    }

    async fn attach_provider(
        &self,
        ws: &WorkspaceName,
        sandbox: &SandboxName,
        provider: &ProviderName,
    ) -> Result<ProviderAttachment> {
        let req = v1::AttachSandboxProviderRequest {
            sandbox: sandbox.to_string(),
            provider: provider.to_string(),
            workspace_scope: scope(ws),
            request_id: request_id(),
            ..Default::default()
        };
        let resp = self
            .unary("AttachSandboxProvider", Idempotency::Keyed, req, |mut c, r| async move {
                c.attach_sandbox_provider(r).await
            })
            .await?;
        Ok(map::attachment(resp.sandbox, resp.attached))
    }

    async fn detach_provider(
        &self,
        ws: &WorkspaceName,
        sandbox: &SandboxName,
        provider: &ProviderName,
    ) -> Result<ProviderAttachment> {
        let req = v1::DetachSandboxProviderRequest {
            sandbox: sandbox.to_string(),
            provider: provider.to_string(),
            workspace_scope: scope(ws),
            request_id: request_id(),
            ..Default::default()
        };
        let resp = self
            .unary("DetachSandboxProvider", Idempotency::Keyed, req, |mut c, r| async move {
                c.detach_sandbox_provider(r).await
            })
            .await?;
        Ok(map::attachment(resp.sandbox, resp.detached))
    }

    async fn sandbox_config(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<SandboxConfig> {
        let req = sb::GetSandboxConfigRequest { name: name.to_string(), workspace_scope: scope(ws) };
        self.unary("GetSandboxConfig", Idempotency::Read, req, |mut c, r| async move { c.get_sandbox_config(r).await })
            .await
            .map(map::sandbox_config)
    }

    async fn gateway_settings(&self) -> Result<GatewaySettings> {
        self.unary("GetGatewayConfig", Idempotency::Read, sb::GetGatewayConfigRequest {}, |mut c, r| async move {
            c.get_gateway_config(r).await
        })
        .await
        .map(map::gateway_settings)
    }

    async fn update_config(
        &self,
        ws: &WorkspaceName,
        sandbox: Option<&SandboxName>,
        change: &ConfigChange,
        expected_resource_version: Option<u64>,
    ) -> Result<ConfigUpdateResult> {
        let mut req = v1::UpdateConfigRequest {
            sandbox: sandbox.map(ToString::to_string).unwrap_or_default(),
            expected_resource_version: expected_resource_version.unwrap_or(0),
            workspace_scope: scope(ws),
            request_id: request_id(),
            ..Default::default()
        };
        match change {
            ConfigChange::ReplacePolicy(p) => req.policy = Some(map::policy_to(p)),
            // Sent in the caller's order: the gateway applies them in sequence,
            // and only the caller knows which order it means.
            ConfigChange::Merge(ops) => req.merge_operations = ops.iter().map(map::merge_op_to).collect(),
            ConfigChange::SetSetting { key, value, global } => {
                req.setting_key.clone_from(key);
                req.setting_value = Some(map::setting_to(value));
                req.global = *global;
            }
            ConfigChange::DeleteSetting { key, global } => {
                req.setting_key.clone_from(key);
                req.delete_setting = true;
                req.global = *global;
            }
        }
        self.unary("UpdateConfig", Idempotency::Keyed, req, |mut c, r| async move { c.update_config(r).await })
            .await
            .map(map::config_update)
    }

    async fn policy_status(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        version: Option<u32>,
    ) -> Result<PolicyStatusReport> {
        let req = v1::GetSandboxPolicyStatusRequest {
            sandbox: name.to_string(),
            version: version.unwrap_or(0),
            global: false,
            workspace_scope: scope(ws),
        };
        let resp = self
            .unary("GetSandboxPolicyStatus", Idempotency::Read, req, |mut c, r| async move {
                c.get_sandbox_policy_status(r).await
            })
            .await?;
        let revision = resp
            .revision
            .map(map::revision)
            .ok_or_else(|| GatewayError::InvalidResponse { message: "no revision".into() })?;
        Ok(PolicyStatusReport { revision, active_version: resp.active_version })
    }

    async fn list_policy_revisions(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        page: &PageRequest,
    ) -> Result<Page<PolicyRevision>> {
        let req = v1::ListSandboxPoliciesRequest {
            sandbox: name.to_string(),
            page_size: page_size(page),
            page_token: page.page_token.clone(),
            global: false,
            workspace_scope: scope(ws),
        };
        let resp =
            self.unary("ListSandboxPolicies", Idempotency::Read, req, |mut c, r| async move {
                c.list_sandbox_policies(r).await
            })
            .await?;
        Ok(Page {
            items: resp.revisions.into_iter().map(map::revision).collect(),
            next_page_token: resp.next_page_token,
        })
    }

    async fn draft_policy(&self, ws: &WorkspaceName, name: &SandboxName, status_filter: &str) -> Result<DraftPolicy> {
        let req = v1::GetDraftPolicyRequest {
            sandbox: name.to_string(),
            status_filter: status_filter.to_owned(),
            workspace_scope: scope(ws),
        };
        self.unary("GetDraftPolicy", Idempotency::Read, req, |mut c, r| async move { c.get_draft_policy(r).await })
            .await
            .map(map::draft)
    }

    async fn approve_chunk(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        chunk_id: &str,
        review_token: &str,
    ) -> Result<PolicyVersionRef> {
        let req = v1::ApproveDraftChunkRequest {
            sandbox: name.to_string(),
            chunk_id: chunk_id.to_owned(),
            workspace_scope: scope(ws),
            review_token: review_token.to_owned(),
            request_id: request_id(),
        };
        let resp =
            self.unary("ApproveDraftChunk", Idempotency::Keyed, req, |mut c, r| async move {
                c.approve_draft_chunk(r).await
            })
            .await?;
        Ok(PolicyVersionRef { policy_version: resp.policy_version, policy_hash: resp.policy_hash })
    }

    async fn reject_chunk(&self, ws: &WorkspaceName, name: &SandboxName, chunk_id: &str, reason: &str) -> Result<()> {
        let req = v1::RejectDraftChunkRequest {
            sandbox: name.to_string(),
            chunk_id: chunk_id.to_owned(),
            reason: reason.to_owned(),
            workspace_scope: scope(ws),
            request_id: request_id(),
        };
        self.unary("RejectDraftChunk", Idempotency::Keyed, req, |mut c, r| async move { c.reject_draft_chunk(r).await })
            .await
            .map(|_| ())
    }

    async fn approve_all_chunks(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        include_security_flagged: bool,
    ) -> Result<ApproveAllResult> {
        let req = v1::ApproveAllDraftChunksRequest {
            sandbox: name.to_string(),
            include_security_flagged,
            approvals: vec![],
            workspace_scope: scope(ws),
            request_id: request_id(),
        };
        self.unary("ApproveAllDraftChunks", Idempotency::Keyed, req, |mut c, r| async move {
            c.approve_all_draft_chunks(r).await
        })
        .await
        .map(map::approve_all)
    }

    async fn edit_chunk(
        &self,
        ws: &WorkspaceName,
        name: &SandboxName,
        chunk_id: &str,
        rule: &NetworkRule,
    ) -> Result<()> {
        let req = v1::EditDraftChunkRequest {
            sandbox: name.to_string(),
            chunk_id: chunk_id.to_owned(),
            proposed_rule: Some(map::rule_to(rule)),
            workspace_scope: scope(ws),
            request_id: request_id(),
        };
        self.unary("EditDraftChunk", Idempotency::Keyed, req, |mut c, r| async move { c.edit_draft_chunk(r).await })
            .await
            .map(|_| ())
    }

    async fn undo_chunk(&self, ws: &WorkspaceName, name: &SandboxName, chunk_id: &str) -> Result<PolicyVersionRef> {
        let req = v1::UndoDraftChunkRequest {
            sandbox: name.to_string(),
            chunk_id: chunk_id.to_owned(),
            workspace_scope: scope(ws),
            request_id: request_id(),
        };
        let resp = self
            .unary("UndoDraftChunk", Idempotency::Keyed, req, |mut c, r| async move { c.undo_draft_chunk(r).await })
            .await?;
        Ok(PolicyVersionRef { policy_version: resp.policy_version, policy_hash: resp.policy_hash })
    }

    async fn clear_chunks(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<u32> {
        let req = v1::ClearDraftChunksRequest {
            sandbox: name.to_string(),
            workspace_scope: scope(ws),
            request_id: request_id(),
        };
        self.unary("ClearDraftChunks", Idempotency::Keyed, req, |mut c, r| async move { c.clear_draft_chunks(r).await })
            .await
            .map(|r| r.chunks_cleared)
    }

    async fn draft_history(&self, ws: &WorkspaceName, name: &SandboxName) -> Result<Vec<DraftHistoryEntry>> {
        let req = v1::GetDraftHistoryRequest { sandbox: name.to_string(), workspace_scope: scope(ws) };
        self.unary("GetDraftHistory", Idempotency::Read, req, |mut c, r| async move { c.get_draft_history(r).await })
            .await
            .map(|r| r.entries.into_iter().map(map::history).collect())
    }

    async fn list_workspaces(&self, page: &PageRequest) -> Result<Page<Workspace>> {
        let req = v1::ListWorkspacesRequest {
            page_size: page_size(page),
            page_token: page.page_token.clone(),
            label_selector: String::new(),
        };
        let resp = self
            .unary("ListWorkspaces", Idempotency::Read, req, |mut c, r| async move { c.list_workspaces(r).await })
            .await?;
        Ok(Page {
            items: resp.workspaces.into_iter().map(map::workspace).collect(),
            next_page_token: resp.next_page_token,
        })
    }

    async fn get_workspace(&self, name: &WorkspaceName) -> Result<Workspace> {
        let req = v1::GetWorkspaceRequest { name: name.to_string() };
        let resp = self
            .unary("GetWorkspace", Idempotency::Read, req, |mut c, r| async move { c.get_workspace(r).await })
            .await?;
        resp.workspace
            .map(map::workspace)
            .ok_or_else(|| GatewayError::InvalidResponse { message: "no workspace".into() })
    }

    async fn create_workspace(&self, name: &WorkspaceName, labels: &Labels) -> Result<Workspace> {
        let req = v1::CreateWorkspaceRequest {
            name: name.to_string(),
            labels: labels.as_map().clone().into_iter().collect(),
            request_id: request_id(),
        };
        let resp = self
            .unary("CreateWorkspace", Idempotency::Keyed, req, |mut c, r| async move { c.create_workspace(r).await })
            .await?;
        resp.workspace
            .map(map::workspace)
            .ok_or_else(|| GatewayError::InvalidResponse { message: "no workspace".into() })
    }

    async fn delete_workspace(&self, name: &WorkspaceName, allow_missing: bool) -> Result<DeletionOutcome> {
        let req = v1::DeleteWorkspaceRequest { name: name.to_string(), allow_missing, request_id: request_id() };
        let resp = self
            .unary("DeleteWorkspace", Idempotency::Keyed, req, |mut c, r| async move { c.delete_workspace(r).await })
            .await?;
        Ok(map::deletion(resp.outcome))
    }
}

fn provider_message(spec: &ProviderSpec) -> dm::Provider {
    dm::Provider {
        metadata: Some(dm::ObjectMeta { name: spec.name.to_string(), ..Default::default() }),
        r#type: spec.kind.clone(),
        credentials: spec.credentials.iter().map(|(k, v)| (k.clone(), v.expose().to_owned())).collect(),
        config: spec.config.clone().into_iter().collect(),
        ..Default::default()
    }
}
