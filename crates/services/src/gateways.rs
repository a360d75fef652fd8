//! The gateway registry and the connections to registered gateways.
//!
//! Connections are cached per gateway and dialled once for all concurrent
//! callers. After a failed dial a gateway is in backoff (5 s doubling to 60 s,
//! jittered): calls inside the window fail at once instead of piling up on a
//! dead address. A background monitor probes every gateway on an interval
//! with a deadline per probe and bounded concurrency, so one dead gateway
//! never delays the others; request paths never probe.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use breakwater_domain::gateway::ComputeDriver;
use breakwater_domain::policy::{ConfigChange, GATEWAY_SETTING_KEYS, GatewaySettings, SettingValue};
use breakwater_domain::registry::{
    AuthMode, FieldPatch, GatewayHealth, GatewayMetadataPatch, GatewayName, GatewayRecord, GatewayStatus,
};
use breakwater_domain::{LabelSelector, Labels, Secret, WorkspaceName};
use breakwater_gateway::{
    ClientIdentity, ConnectionConfig, Gateway, GatewayAddress, GatewayError, GrpcGateway, RetryPolicy, Timeouts,
    Transport,
};
use breakwater_store::{NewGateway, Store};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::Rng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::certs::{check_ca, check_client, parse_cert};
use crate::{Actor, AuditService, Result, ServiceError};

/// A registration request as it arrives (unvalidated).
#[derive(Clone, Debug, Default)]
pub struct RegisterGateway {
    pub name: String,
    pub endpoint: String,
    pub scheme: Option<String>,
    pub auth_mode: Option<String>,
    pub skip_server_verification: bool,
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<Secret>,
    /// For gateways behind OIDC: sent as `authorization: Bearer …`.
    pub bearer_token: Option<Secret>,
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Where the registration came from when not the API (e.g. `import`),
    /// for the audit trail.
    pub origin: Option<String>,
}

/// Outcome of a live connection test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectionTest {
    pub success: bool,
    pub latency_ms: u64,
    pub version: Option<String>,
    /// Stable error code (`tls_untrusted`, `gateway_unreachable`, ...).
    pub error_code: Option<String>,
    /// What is wrong and what to do, already safe to show.
    pub error: Option<String>,
}

/// A gateway with live facts, for `GET /api/gateway/{name}/info`.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayInfoView {
    pub record: GatewayRecord,
    pub compute_drivers: Vec<ComputeDriver>,
    pub client_cert_expires_at: Option<DateTime<Utc>>,
    pub warnings: Vec<String>,
}

/// Health monitor knobs.
#[derive(Clone, Copy, Debug)]
pub struct MonitorSettings {
    pub interval: Duration,
    pub probe_timeout: Duration,
    pub concurrency: usize,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        // A probe of a connected gateway is one RPC on an open connection
        // (milliseconds); a gateway that accepts TCP but never answers holds
        // its slot for the whole timeout. 1 s and 256 slots keep a sweep of a
        // thousand gateways, a tenth of them dead, under 2 s (scripts/bench).
        Self { interval: Duration::from_secs(30), probe_timeout: Duration::from_secs(1), concurrency: 256 }
    }
}

/// Per-gateway reconnect backoff.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_secs(5), max: Duration::from_secs(60) }
    }
}

/// Names that would collide with `/api/gateway/<word>` routes.
const RESERVED_NAMES: &[&str] = &["list", "register", "create", "diagnostics", "import-filesystem"];

/// Client certificates closer than this to expiry raise a warning.
const EXPIRY_WARNING: chrono::Duration = chrono::Duration::days(14);

#[derive(Default)]
struct SlotState {
    client: Option<GrpcGateway>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<GatewayError>,
}

#[derive(Default)]
struct Slot {
    // An async mutex held across the dial: that is the single flight.
    state: tokio::sync::Mutex<SlotState>,
}

struct Inner {
    store: Arc<dyn Store>,
    audit: AuditService,
    slots: Mutex<HashMap<GatewayName, Arc<Slot>>>,
    backoff: Backoff,
    timeouts: Timeouts,
    dials: AtomicU64,
    last_sweep: AtomicI64,
    /// The whole registry as last read, for listing without a query per
    /// request. Dropped on every local change; re-read when older than
    /// `SNAPSHOT_TTL` so that changes made by other replicas show too.
    snapshot: tokio::sync::RwLock<Option<Snapshot>>,
    generation: AtomicU64,
}

struct Snapshot {
    taken: Instant,
    generation: u64,
    records: Arc<Vec<GatewayRecord>>,
}

/// How stale a listing may be when another replica changed the registry.
const SNAPSHOT_TTL: Duration = Duration::from_secs(1);

/// Registry plus connections. Cheap to clone.
#[derive(Clone)]
pub struct GatewayService(Arc<Inner>);

fn invalid(field: &str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid { field: field.into(), message: message.into() }
}

fn not_found(name: &GatewayName) -> ServiceError {
    ServiceError::NotFound { what: format!("gateway {name}") }
}

/// Labels and description as a PATCH sets them (gateways and sandboxes).
pub(crate) fn check_metadata_patch(patch: &GatewayMetadataPatch) -> Result<()> {
    if let FieldPatch::Set(labels) = &patch.labels {
        Labels::parse(labels.clone())?;
    }
    if let FieldPatch::Set(d) = &patch.description {
        check_description(Some(d))?;
    }
    Ok(())
}

pub(crate) fn check_description(d: Option<&str>) -> Result<()> {
    match d {
        Some(d) if d.chars().count() > 1000 => Err(invalid("description", "at most 1000 characters")),
        Some(d) if d.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\t')) => {
            Err(invalid("description", "may not contain control characters other than newline and tab"))
        }
        _ => Ok(()),
    }
}

/// Metadata is free-form but small, and text every database can store.
fn check_metadata(m: &BTreeMap<String, serde_json::Value>) -> Result<()> {
    let text = serde_json::to_string(m).unwrap_or_default();
    if text.len() > 16 * 1024 {
        return Err(invalid("metadata", "at most 16 KiB of JSON"));
    }
    // serde_json writes NUL as \u0000, which PostgreSQL's jsonb refuses.
    if text.contains("\\u0000") {
        return Err(invalid("metadata", "may not contain NUL characters"));
    }
    Ok(())
}

/// How to reach a registered gateway.
fn connection_config(rec: &GatewayRecord, timeouts: Timeouts) -> Result<ConnectionConfig> {
    let address = GatewayAddress::parse(&rec.endpoint).map_err(|e| invalid("endpoint", e.to_string()))?;
    let transport = match rec.auth_mode {
        AuthMode::None => Transport::Plaintext,
        AuthMode::Tls => Transport::Tls {
            ca_pem: rec.ca_cert.clone().map(String::into_bytes),
            client: None,
            skip_server_verification: rec.skip_server_verification,
        },
        AuthMode::Mtls => {
            let (Some(cert), Some(key)) = (&rec.client_cert, &rec.client_key) else {
                return Err(invalid("client_cert", "an mTLS gateway needs a client certificate and key"));
            };
            Transport::Tls {
                ca_pem: rec.ca_cert.clone().map(String::into_bytes),
                client: Some(ClientIdentity { cert_pem: cert.clone().into_bytes(), key_pem: key.clone() }),
                skip_server_verification: rec.skip_server_verification,
            }
        }
    };
    Ok(ConnectionConfig {
        address,
        transport,
        bearer_token: rec.bearer_token.clone(),
        timeouts,
        retry: RetryPolicy::default(),
    })
}

/// Health answers anyone; an authenticated call shows whether our
/// credentials (client certificate, bearer token) are accepted. Only a
/// refusal counts: a gateway without the call is still healthy.
async fn check_credentials(client: &GrpcGateway) -> Result<(), GatewayError> {
    match client.current_user().await {
        Err(e @ (GatewayError::Unauthenticated { .. } | GatewayError::PermissionDenied { .. })) => Err(e),
        _ => Ok(()),
    }
}

impl GatewayService {
    #[must_use]
    pub fn new(store: Arc<dyn Store>, audit: AuditService) -> Self {
        Self::with_settings(store, audit, Backoff::default(), Timeouts::default())
    }

    #[must_use]
    pub fn with_settings(store: Arc<dyn Store>, audit: AuditService, backoff: Backoff, timeouts: Timeouts) -> Self {
        Self(Arc::new(Inner {
            store,
            audit,
            slots: Mutex::new(HashMap::new()),
            backoff,
            timeouts,
            dials: AtomicU64::new(0),
            last_sweep: AtomicI64::new(0),
            snapshot: tokio::sync::RwLock::new(None),
            generation: AtomicU64::new(1),
        }))
    }

    /// Connection attempts made so far (for tests and metrics).
    #[must_use]
    pub fn dial_count(&self) -> u64 {
        self.0.dials.load(Ordering::Relaxed)
    }

    /// When the health monitor last finished a sweep.
    #[must_use]
    pub fn last_sweep(&self) -> Option<DateTime<Utc>> {
        match self.0.last_sweep.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }

    pub(crate) fn audit(&self) -> &AuditService {
        &self.0.audit
    }

    /// Drops the cached connection and any backoff, e.g. after a local
    /// gateway was stopped or restarted.
    pub fn forget_connection(&self, name: &GatewayName) {
        self.0.slots.lock().expect("slots lock").remove(name);
    }

    fn slot(&self, name: &GatewayName) -> Arc<Slot> {
        self.0.slots.lock().expect("slots lock").entry(name.clone()).or_default().clone()
    }

    fn backoff_for(&self, failures: u32) -> Duration {
        let exp = self.0.backoff.initial.saturating_mul(1 << failures.saturating_sub(1).min(16));
        let base = exp.min(self.0.backoff.max);
        // ±20 % so a fleet that failed together does not retry together.
        base.mul_f64(rand::rng().random_range(0.8..=1.2))
    }

    // ------------------------------------------------------------ registry

    /// Validates and stores a gateway, then tries to connect and reports how
    /// that went. A failed connection does not fail the registration.
    pub async fn register(&self, actor: &Actor, input: RegisterGateway) -> Result<(GatewayRecord, ConnectionTest)> {
        let name = GatewayName::parse(&input.name)?;
        if RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(name.as_str())) {
            return Err(invalid("name", format!("\"{name}\" is reserved: /api/gateway/{name} is an API path")));
        }
        if input.endpoint.len() > 300 {
            return Err(invalid("endpoint", "at most 300 characters"));
        }
        let address = GatewayAddress::parse(&input.endpoint).map_err(|e| invalid("endpoint", e.to_string()))?;
        // A scheme written into the endpoint must agree with `scheme`.
        let url_scheme = input.endpoint.trim().split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let implied = match url_scheme.as_deref() {
            None => None,
            Some("https" | "grpcs") => Some("https"),
            Some("http" | "grpc") => Some("http"),
            Some(other) => return Err(invalid("endpoint", format!("unknown scheme {other:?}; use host:port"))),
        };
        if let (Some(i), Some(s)) = (implied, input.scheme.as_deref())
            && i != s
        {
            return Err(invalid("scheme", format!("the endpoint says {i}:// but scheme is {s}")));
        }
        let scheme = input.scheme.clone().or_else(|| implied.map(str::to_owned)).unwrap_or_else(|| "https".into());
        if scheme != "https" && scheme != "http" {
            return Err(invalid("scheme", "must be https or http"));
        }
        let auth_mode = match input.auth_mode.as_deref() {
            Some(raw) => AuthMode::parse(raw)?,
            None if scheme == "http" => AuthMode::None,
            None => AuthMode::Mtls,
        };
        if (auth_mode == AuthMode::None) != (scheme == "http") {
            return Err(invalid("auth_mode", "plaintext (auth_mode none) goes with scheme http, TLS with https"));
        }
        // At most 20, among the rest of the label rules.
        let labels = Labels::parse(input.labels.clone())?.into_map();
        check_description(input.description.as_deref())?;
        check_metadata(&input.metadata)?;
        let ca = input.ca_cert.as_deref().map(check_ca).transpose()?;
        let client = match (auth_mode, &input.client_cert, &input.client_key) {
            (AuthMode::Mtls, Some(cert), Some(key)) => Some(check_client(cert, key.expose())?),
            (AuthMode::Mtls, _, _) => {
                return Err(invalid("client_cert", "auth_mode mtls needs client_cert and client_key (PEM)"));
            }
            (AuthMode::None, Some(_), _) | (AuthMode::None, _, Some(_)) => {
                return Err(invalid("client_cert", "a plaintext (http) gateway takes no client certificate or key"));
            }
            (_, Some(_), _) | (_, _, Some(_)) => {
                return Err(invalid("client_cert", "a client certificate is only used with auth_mode mtls"));
            }
            _ => None,
        };
        if auth_mode != AuthMode::None && ca.is_none() && !input.skip_server_verification {
            tracing::info!(gateway = %name, "no CA given: the system roots will be trusted");
        }
        let record = self
            .0
            .store
            .insert_gateway(&NewGateway {
                name: name.clone(),
                endpoint: address.authority(),
                scheme,
                auth_mode,
                skip_server_verification: input.skip_server_verification,
                ca_cert: input.ca_cert,
                client_cert: input.client_cert,
                client_key: input.client_key,
                bearer_token: input.bearer_token,
                metadata: input.metadata,
                description: input.description,
                labels,
            })
            .await
            .map_err(|e| match ServiceError::from(e) {
                ServiceError::Conflict { .. } => ServiceError::Conflict { what: format!("gateway {name}") },
                other => other,
            })?;
        self.0
            .audit
            .log(
                actor,
                "gateway.register",
                "gateway",
                name.as_str(),
                Some(name.as_str()),
                serde_json::json!({
                    "endpoint": record.endpoint,
                    "auth_mode": record.auth_mode.as_str(),
                    "ca_sha256": ca.map(|c| c.sha256),
                    "client_cert_sha256": client.map(|c| c.sha256),
                    "labels": record.labels,
                    "origin": input.origin,
                }),
            )
            .await;
        let test = self.test_connection(&name).await?;
        self.invalidate();
        let record = self.get(&name).await?;
        Ok((record, test))
    }

    pub async fn unregister(&self, actor: &Actor, name: &GatewayName) -> Result<()> {
        if !self.0.store.delete_gateway(name).await? {
            return Err(not_found(name));
        }
        // Dropping the client closes its connection.
        self.0.slots.lock().expect("slots lock").remove(name);
        self.invalidate();
        self.0
            .audit
            .log(actor, "gateway.unregister", "gateway", name.as_str(), Some(name.as_str()), serde_json::json!({}))
            .await;
        Ok(())
    }

    pub async fn get(&self, name: &GatewayName) -> Result<GatewayRecord> {
        self.0.store.get_gateway(name).await?.ok_or_else(|| not_found(name))
    }

    /// Every registered gateway, straight from the store, in pages.
    async fn read_all(&self) -> Result<Vec<GatewayRecord>> {
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let (page, total) = self.0.store.list_gateways(&LabelSelector::default(), 1000, offset).await?;
            offset += u32::try_from(page.len()).unwrap_or(u32::MAX);
            all.extend(page);
            if u64::from(offset) >= total || offset == 0 {
                return Ok(all);
            }
        }
    }

    /// Forgets the registry snapshot: the next listing reads the store.
    pub(crate) fn invalidate(&self) {
        self.0.generation.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.0.snapshot.try_write() {
            *s = None;
        }
    }

    /// Every registered gateway, ordered by name, from a snapshot at most
    /// `SNAPSHOT_TTL` old, with the snapshot's generation (changes whenever
    /// the content may have).
    pub async fn registry(&self) -> Result<(u64, Arc<Vec<GatewayRecord>>)> {
        let generation = self.0.generation.load(Ordering::Relaxed);
        if let Some(s) = self.0.snapshot.read().await.as_ref()
            && s.generation == generation
            && s.taken.elapsed() < SNAPSHOT_TTL
        {
            return Ok((s.generation, s.records.clone()));
        }
        let mut guard = self.0.snapshot.write().await;
        // Someone else refreshed while we waited for the lock.
        if let Some(s) = guard.as_ref()
            && s.generation == self.0.generation.load(Ordering::Relaxed)
            && s.taken.elapsed() < SNAPSHOT_TTL
        {
            return Ok((s.generation, s.records.clone()));
        }
        let all = self.read_all().await?;
        let generation = self.0.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let records = Arc::new(all);
        *guard = Some(Snapshot { taken: Instant::now(), generation, records: records.clone() });
        Ok((generation, records))
    }

    /// Cached status only: listing never probes a gateway.
    pub async fn list(&self, selector: &LabelSelector, limit: u32, offset: u32) -> Result<(Vec<GatewayRecord>, u64)> {
        self.list_where(selector, None, limit, offset).await
    }

    fn page(matching: Vec<&GatewayRecord>, limit: u32, offset: u32) -> (Vec<GatewayRecord>, u64) {
        let total = matching.len() as u64;
        let page = matching.into_iter().skip(offset as usize).take(limit.clamp(1, 1000) as usize).cloned().collect();
        (page, total)
    }

    async fn list_where(
        &self,
        selector: &LabelSelector,
        runtime: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<GatewayRecord>, u64)> {
        let (_, all) = self.registry().await?;
        let matching = all
            .iter()
            .filter(|g| selector.matches(&g.labels))
            .filter(|g| runtime.is_none_or(|r| g.metadata.get("runtime").and_then(|v| v.as_str()) == Some(r)))
            .collect();
        Ok(Self::page(matching, limit, offset))
    }

    /// As [`GatewayService::list`], also filtered by `metadata.runtime`; the
    /// page and the total count only matching gateways.
    pub async fn list_by_runtime(
        &self,
        selector: &LabelSelector,
        runtime: &str,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<GatewayRecord>, u64)> {
        self.list_where(selector, Some(runtime), limit, offset).await
    }

    pub async fn update_metadata(
        &self,
        actor: &Actor,
        name: &GatewayName,
        patch: GatewayMetadataPatch,
    ) -> Result<GatewayRecord> {
        check_metadata_patch(&patch)?;
        if patch == GatewayMetadataPatch::default() {
            // Nothing to change: no write, no audit entry.
            return self.get(name).await;
        }
        let record =
            self.0.store.update_gateway_metadata(name, &patch).await.map_err(|e| match ServiceError::from(e) {
                ServiceError::NotFound { .. } => not_found(name),
                other => other,
            })?;
        self.invalidate();
        self.0
            .audit
            .log(
                actor,
                "gateway.update_metadata",
                "gateway",
                name.as_str(),
                Some(name.as_str()),
                serde_json::json!({"description": patch.description, "labels": patch.labels}),
            )
            .await;
        Ok(record)
    }

    // ------------------------------------------------------------ connections

    /// The connected client for `name`: cached, or dialled once for all
    /// concurrent callers. Inside the backoff window after a failure this
    /// fails at once with the last error.
    pub async fn client(&self, name: &GatewayName) -> Result<GrpcGateway> {
        let slot = self.slot(name);
        let mut st = slot.state.lock().await;
        if let Some(client) = &st.client {
            return Ok(client.clone());
        }
        if let Some(at) = st.retry_at {
            let now = Instant::now();
            if now < at {
                let wait = (at - now).as_secs().max(1);
                let last = st.last_error.as_ref().map_or_else(String::new, |e| format!(": {e}"));
                return Err(GatewayError::Unreachable {
                    message: format!("gateway {name} is not connected; next attempt in {wait}s{last}"),
                }
                .into());
            }
        }
        let record = self.get(name).await?;
        let config = connection_config(&record, self.0.timeouts)?;
        self.0.dials.fetch_add(1, Ordering::Relaxed);
        match GrpcGateway::connect(config).await {
            Ok(client) => {
                *st = SlotState { client: Some(client.clone()), ..SlotState::default() };
                Ok(client)
            }
            Err(e) => {
                st.failures += 1;
                st.retry_at = Some(Instant::now() + self.backoff_for(st.failures));
                st.last_error = Some(e.clone());
                Err(e.into())
            }
        }
    }

    /// Runs `f` with the gateway's client; a connection failure drops the
    /// cached client and starts the backoff window.
    pub async fn with_gateway<T, F, Fut>(&self, name: &GatewayName, f: F) -> Result<T>
    where
        F: FnOnce(GrpcGateway) -> Fut,
        Fut: std::future::Future<Output = Result<T, GatewayError>>,
    {
        let client = self.client(name).await?;
        match f(client).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_connection_failure() {
                    self.note_failure(name, &e).await;
                }
                Err(e.into())
            }
        }
    }

    async fn note_failure(&self, name: &GatewayName, err: &GatewayError) {
        let slot = self.slot(name);
        let mut st = slot.state.lock().await;
        st.client = None;
        st.failures += 1;
        st.retry_at = Some(Instant::now() + self.backoff_for(st.failures));
        st.last_error = Some(err.clone());
    }

    /// Dials afresh, calls Health, records the outcome and, on success, keeps
    /// the connection and clears any backoff.
    pub async fn test_connection(&self, name: &GatewayName) -> Result<ConnectionTest> {
        let record = self.get(name).await?;
        let (test, client) = self.probe(&record, self.0.timeouts.connect, None).await;
        let slot = self.slot(name);
        let mut st = slot.state.lock().await;
        *st = match client {
            Ok(c) => SlotState { client: Some(c), ..SlotState::default() },
            Err(e) => SlotState {
                failures: 1,
                retry_at: Some(Instant::now() + self.backoff_for(1)),
                last_error: Some(e),
                client: None,
            },
        };
        drop(st);
        self.invalidate();
        Ok(test)
    }

    /// One health probe, bounded by `deadline`, recorded in the store. With a
    /// cached client the probe is one Health call on the open connection
    /// (tonic re-dials a broken one by itself); without, a fresh dial.
    async fn probe(
        &self,
        record: &GatewayRecord,
        deadline: Duration,
        cached: Option<GrpcGateway>,
    ) -> (ConnectionTest, Result<GrpcGateway, GatewayError>) {
        let started = Instant::now();
        let attempt = async {
            if let Some(client) = cached {
                let health = client.health().await?;
                check_credentials(&client).await?;
                return Ok((client, health));
            }
            let mut timeouts = self.0.timeouts;
            timeouts.connect = deadline;
            timeouts.call = deadline;
            let mut config =
                connection_config(record, timeouts).map_err(|e| GatewayError::Config { message: e.to_string() })?;
            config.retry = RetryPolicy::none();
            self.0.dials.fetch_add(1, Ordering::Relaxed);
            let client = GrpcGateway::connect(config).await?;
            let health = client.health().await?;
            check_credentials(&client).await?;
            Ok::<_, GatewayError>((client, health))
        };
        let outcome = match tokio::time::timeout(deadline, attempt).await {
            Ok(r) => r,
            Err(_) => Err(GatewayError::DeadlineExceeded { message: format!("no answer within {deadline:?}") }),
        };
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let now = Utc::now();
        let (test, health, client) = match outcome {
            Ok((client, health)) => (
                ConnectionTest {
                    success: true,
                    latency_ms,
                    version: Some(health.version.clone()),
                    error_code: None,
                    error: None,
                },
                GatewayHealth {
                    status: GatewayStatus::Connected,
                    error_code: None,
                    error: None,
                    version: Some(health.version),
                    checked_at: Some(now),
                    last_seen: Some(now),
                },
                Ok(client),
            ),
            Err(e) => {
                let status = if matches!(e, GatewayError::Unreachable { .. } | GatewayError::DeadlineExceeded { .. }) {
                    GatewayStatus::Unreachable
                } else {
                    GatewayStatus::Error
                };
                (
                    ConnectionTest {
                        success: false,
                        latency_ms,
                        version: None,
                        error_code: Some(e.code().to_owned()),
                        error: Some(e.to_string()),
                    },
                    GatewayHealth {
                        status,
                        error_code: Some(e.code().to_owned()),
                        error: Some(e.to_string()),
                        version: None,
                        checked_at: Some(now),
                        last_seen: None,
                    },
                    Err(e),
                )
            }
        };
        if let Err(e) = self.0.store.update_gateway_health(&record.name, &health).await {
            tracing::warn!(gateway = %record.name, error = %e, "could not record gateway health");
        }
        (test, client)
    }

    /// Probes every registered gateway once, concurrently.
    pub async fn sweep(&self, settings: MonitorSettings) -> Result<usize> {
        let all = self.read_all().await?;
        let n = all.len();
        futures::stream::iter(all)
            .for_each_concurrent(settings.concurrency.max(1), |record| async move {
                let slot = self.slot(&record.name);
                // A slot locked by a caller's dial: probe on our own rather than wait for it.
                let cached = slot.state.try_lock().ok().and_then(|st| st.client.clone());
                let (_, client) = self.probe(&record, settings.probe_timeout, cached).await;
                let mut st = slot.state.lock().await;
                match client {
                    // A healthy gateway leaves backoff; keep a connection we already had.
                    Ok(c) => {
                        if st.client.is_none() {
                            *st = SlotState { client: Some(c), ..SlotState::default() };
                        } else {
                            st.failures = 0;
                            st.retry_at = None;
                        }
                    }
                    Err(e) => {
                        st.client = None;
                        st.last_error = Some(e);
                    }
                }
            })
            .await;
        self.0.last_sweep.store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        // Statuses changed: listings show them from now on (once per sweep,
        // not once per probe, so a sweep does not make every listing re-read).
        self.invalidate();
        Ok(n)
    }

    /// Runs [`GatewayService::sweep`] every interval until `stop` is cancelled.
    #[must_use]
    pub fn spawn_monitor(&self, settings: MonitorSettings, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(settings.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = this.sweep(settings).await {
                    tracing::warn!(error = %e, "gateway health sweep failed");
                }
            }
        })
    }

    // ------------------------------------------------------------ live facts

    /// The record plus live facts; when the gateway cannot be reached the
    /// record still comes back, with the cached status saying why.
    pub async fn info(&self, name: &GatewayName) -> Result<GatewayInfoView> {
        let record = self.get(name).await?;
        let mut warnings = Vec::new();
        let client_cert_expires_at = match record.client_cert.as_deref().map(|c| parse_cert("client_cert", c)) {
            Some(Ok(facts)) => {
                let left = facts.not_after - Utc::now();
                if left < chrono::Duration::zero() {
                    warnings.push(format!("the client certificate expired on {}", facts.not_after.to_rfc3339()));
                } else if left < EXPIRY_WARNING {
                    warnings.push(format!(
                        "the client certificate expires in {} day(s), on {}; issue a new one",
                        // Rounded up: a certificate minted "for 3 days" says 3, not 2.
                        (left.num_hours() + 23) / 24,
                        facts.not_after.to_rfc3339()
                    ));
                }
                Some(facts.not_after)
            }
            _ => None,
        };
        let compute_drivers = match self.with_gateway(name, |gw| async move { gw.gateway_info().await }).await {
            Ok(info) => info.compute_drivers,
            Err(e) => {
                warnings.push(format!("live information unavailable: {e}"));
                Vec::new()
            }
        };
        let record = self.get(name).await?;
        Ok(GatewayInfoView { record, compute_drivers, client_cert_expires_at, warnings })
    }

    /// Gateway-wide settings, read live.
    pub async fn settings(&self, name: &GatewayName) -> Result<GatewaySettings> {
        self.with_gateway(name, |gw| async move { gw.gateway_settings().await }).await
    }

    fn check_setting_key(key: &str) -> Result<()> {
        if GATEWAY_SETTING_KEYS.contains(&key) {
            Ok(())
        } else {
            Err(invalid("key", format!("unknown setting {key:?}; valid keys: {}", GATEWAY_SETTING_KEYS.join(", "))))
        }
    }

    pub async fn set_setting(
        &self,
        actor: &Actor,
        name: &GatewayName,
        key: &str,
        value: SettingValue,
    ) -> Result<GatewaySettings> {
        Self::check_setting_key(key)?;
        let change = ConfigChange::SetSetting { key: key.to_owned(), value: value.clone(), global: true };
        let ws = WorkspaceName::default();
        self.with_gateway(name, |gw| async move { gw.update_config(&ws, None, &change, None).await }).await?;
        self.0
            .audit
            .log(
                actor,
                "gateway.setting.set",
                "gateway_setting",
                key,
                Some(name.as_str()),
                serde_json::json!({"value": value}),
            )
            .await;
        self.settings(name).await
    }

    pub async fn delete_setting(&self, actor: &Actor, name: &GatewayName, key: &str) -> Result<GatewaySettings> {
        Self::check_setting_key(key)?;
        let change = ConfigChange::DeleteSetting { key: key.to_owned(), global: true };
        let ws = WorkspaceName::default();
        self.with_gateway(name, |gw| async move { gw.update_config(&ws, None, &change, None).await }).await?;
        self.0
            .audit
            .log(actor, "gateway.setting.delete", "gateway_setting", key, Some(name.as_str()), serde_json::json!({}))
            .await;
        self.settings(name).await
    }
}
