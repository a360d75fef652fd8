//! The test harness shared by the server's HTTP tests: a real server on a
//! loopback port, real stores, real simulated gateways.
#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use breakwater_server::AppState;
use breakwater_services::{AuditService, GatewayService, LocalGatewayManager, LocalTools, MonitorSettings};
use breakwater_store::testing::TestStore;
use openshell_sim::{Sim, SimConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub store: TestStore,
    pub stop: CancellationToken,
    /// The server's own operation service (changes made here wake its long polls).
    pub operations: breakwater_services::OperationService,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn spawn_app(store: TestStore, monitor_interval: Duration) -> TestApp {
    spawn_app_with(store, monitor_interval, LocalTools::default()).await
}

pub async fn spawn_app_with(store: TestStore, monitor_interval: Duration, tools: LocalTools) -> TestApp {
    spawn_app_full(store, monitor_interval, tools, breakwater_server::AuthMode::Local).await
}

/// A server that requires sign-in.
pub async fn spawn_app_auth(store: TestStore) -> TestApp {
    let auth = breakwater_server::AuthMode::Enabled { secure_cookies: false };
    spawn_app_full(store, Duration::from_secs(60), LocalTools::default(), auth).await
}

pub async fn spawn_app_full(
    store: TestStore,
    monitor_interval: Duration,
    tools: LocalTools,
    auth: breakwater_server::AuthMode,
) -> TestApp {
    spawn_app_limited(store, monitor_interval, tools, auth, 0, &[]).await
}

/// With a per-address rate limit and trusted proxies.
pub async fn spawn_app_limited(
    store: TestStore,
    monitor_interval: Duration,
    tools: LocalTools,
    auth: breakwater_server::AuthMode,
    rate_limit: u32,
    trusted_proxies: &[&str],
) -> TestApp {
    spawn_app_inner(store, monitor_interval, tools, auth, rate_limit, trusted_proxies, None).await
}

/// The OIDC configuration of a test server, made once its address is known
/// (the providers' redirect URI is under it).
pub type OidcSetup = Box<dyn FnOnce(&str) -> (breakwater_services::OidcConfig, breakwater_services::OidcSettings)>;

/// A server that requires sign-in and offers the OIDC providers `oidc` makes.
pub async fn spawn_app_oidc(store: TestStore, oidc: OidcSetup) -> TestApp {
    let auth = breakwater_server::AuthMode::Enabled { secure_cookies: false };
    spawn_app_inner(store, Duration::from_secs(60), LocalTools::default(), auth, 0, &[], Some(oidc)).await
}

async fn spawn_app_inner(
    store: TestStore,
    monitor_interval: Duration,
    tools: LocalTools,
    auth: breakwater_server::AuthMode,
    rate_limit: u32,
    trusted_proxies: &[&str],
    oidc: Option<OidcSetup>,
) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let audit = AuditService::new(store.store.clone());
    let gateways = GatewayService::new(store.store.clone(), audit.clone());
    let monitor =
        MonitorSettings { interval: monitor_interval, probe_timeout: Duration::from_secs(2), concurrency: 16 };
    let stop = CancellationToken::new();
    let _monitor = gateways.spawn_monitor(monitor, stop.clone());
    let local = LocalGatewayManager::new(gateways.clone(), tools);
    let events = breakwater_services::EventBus::default();
    let operations =
        breakwater_services::OperationService::new(store.store.clone(), AuditService::new(store.store.clone()))
            .with_events(events.clone());
    let policies = breakwater_services::PolicyService::new(
        gateways.clone(),
        events.clone(),
        breakwater_domain::presets::built_in(),
    );
    let approvals = breakwater_services::ApprovalService::new(gateways.clone(), policies.clone(), events)
        .with_wait_cap(Duration::from_secs(2));
    let sandboxes = breakwater_services::SandboxService::new(gateways.clone(), operations.clone(), policies.clone())
        .with_ready_deadline(Duration::from_secs(2))
        .with_live_settings(breakwater_services::sandboxes::LiveSettings {
            queue: 64,
            heartbeat: Duration::from_millis(300),
            retry: Duration::from_millis(200),
            log_tail: 50,
        });
    let providers = breakwater_services::ProviderService::new(gateways.clone());
    let identity = breakwater_services::IdentityService::new(
        store.store.clone(),
        AuditService::new(store.store.clone()),
        breakwater_services::IdentitySettings::for_tests(),
    );
    let (oidc_config, oidc_settings) = oidc.map(|make| make(&base)).unwrap_or_default();
    let oidc = breakwater_services::OidcService::new(
        store.store.clone(),
        identity.clone(),
        audit.clone(),
        oidc_config,
        oidc_settings,
    )
    .unwrap();
    let state = AppState {
        store: store.store.clone(),
        gateways,
        audit,
        local,
        policies,
        approvals,
        operations: operations.clone(),
        sandboxes,
        providers,
        identity,
        oidc,
        auth,
        routes: breakwater_server::RouteTable::default(),
        hsts: false,
        registration: false,
        trusted_proxies: breakwater_server::limits::TrustedProxies::parse(
            &trusted_proxies.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap(),
        rate_limiter: breakwater_server::limits::RateLimiter::new(rate_limit),
        host_guard: breakwater_server::HostGuard::loopback(&[]),
        list_cache: std::sync::Arc::default(),
        monitor,
        started: Instant::now(),
        closing: tokio_util::sync::CancellationToken::new(),
    };
    let shutdown = stop.clone();
    tokio::spawn(async move {
        breakwater_server::serve(listener, state, async move { shutdown.cancelled().await }).await.unwrap();
    });
    TestApp { base, http: reqwest::Client::new(), store, stop, operations }
}

pub async fn sim() -> Sim {
    Sim::start(SimConfig::for_tests().unwrap()).await.unwrap()
}

pub fn register_body(name: &str, sim: &Sim, labels: &Value) -> Value {
    let pki = sim.pki().unwrap();
    let client = pki.client.as_ref().unwrap();
    json!({
        "name": name,
        "endpoint": sim.endpoint(),
        "ca_cert": pki.ca_pem,
        "client_cert": client.cert_pem,
        "client_key": client.key_pem,
        "metadata": {"runtime": "docker"},
        "description": "a simulated gateway",
        "labels": labels,
    })
}

impl TestApp {
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.post(format!("{}{path}", self.base)).json(body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.patch(format!("{}{path}", self.base)).json(body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.http.delete(format!("{}{path}", self.base)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn status_of(&self, name: &str) -> String {
        let (_, body) = self.get(&format!("/api/gateway/{name}/info")).await;
        body["status"].as_str().unwrap_or_default().to_owned()
    }
}

/// The policy routes of the sandbox `setup` creates.
pub const P: &str = "/api/gateways/gw/sandboxes/agent-1/policy";

/// A server with gateway `gw` registered and sandbox `agent-1` running a
/// starter policy (loaded).
pub async fn setup() -> (TestApp, Sim) {
    let app = spawn_app(breakwater_store::testing::sqlite().await, Duration::from_secs(60)).await;
    let s = sim().await;
    let (status, _) = app.post("/api/gateway/register", &register_body("gw", &s, &json!({}))).await;
    assert_eq!(status, 201);
    // A sandbox with a starter policy, created straight on the gateway
    // (sandbox routes arrive with their own issue).
    let policy = json!({
        "network_policies": {"github": {"name": "github", "endpoints": [{"host": "api.github.com", "port": 443}], "binaries": [{"path": "/usr/bin/git"}]}},
        "process": {"run_as_user": "sandbox", "run_as_group": "sandbox"}
    });
    create_sandbox(&s, &policy).await;
    for _ in 0..200 {
        let (_, p) = app.get(P).await;
        if p["status"] == "LOADED" {
            return (app, s);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the starter policy never loaded");
}

pub async fn create_sandbox(s: &Sim, policy: &Value) {
    use breakwater_gateway::Gateway;
    let pki = s.pki().unwrap();
    let client = pki.client.as_ref().unwrap();
    let gw = breakwater_gateway::GrpcGateway::connect(breakwater_gateway::ConnectionConfig::mtls(
        breakwater_gateway::GatewayAddress::parse(&s.endpoint()).unwrap(),
        pki.ca_pem.as_bytes().to_vec(),
        client.cert_pem.as_bytes().to_vec(),
        breakwater_domain::Secret::new(client.key_pem.clone()),
    ))
    .await
    .unwrap();
    let new = breakwater_domain::sandbox::NewSandbox {
        name: Some(breakwater_domain::SandboxName::parse("agent-1").unwrap()),
        policy: Some(serde_json::from_value(policy.clone()).unwrap()),
        ..Default::default()
    };
    gw.create_sandbox(&new).await.unwrap();
    for _ in 0..200 {
        let sb =
            gw.get_sandbox(&breakwater_domain::WorkspaceName::default(), new.name.as_ref().unwrap()).await.unwrap();
        if sb.phase == breakwater_domain::sandbox::SandboxPhase::Ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Follows an operation (long polls) until it ends.
pub async fn finished(app: &TestApp, id: &str) -> Value {
    for _ in 0..40 {
        let (_, op) = app.get(&format!("/api/operations/{id}?wait=2")).await;
        if op["status"] == "succeeded" || op["status"] == "failed" {
            return op;
        }
    }
    panic!("operation {id} never ended");
}
