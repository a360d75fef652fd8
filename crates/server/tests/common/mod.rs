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
    let audit = AuditService::new(store.store.clone());
    let gateways = GatewayService::new(store.store.clone(), audit.clone());
    let monitor =
        MonitorSettings { interval: monitor_interval, probe_timeout: Duration::from_secs(2), concurrency: 16 };
    let stop = CancellationToken::new();
    let _monitor = gateways.spawn_monitor(monitor, stop.clone());
    let local = LocalGatewayManager::new(gateways.clone(), tools);
    let gateways_for_policies = gateways.clone();
    let state = AppState {
        store: store.store.clone(),
        gateways,
        audit,
        local,
        policies: breakwater_services::PolicyService::new(
            gateways_for_policies,
            breakwater_services::EventBus::default(),
            breakwater_domain::presets::built_in(),
        ),
        host_guard: breakwater_server::HostGuard::loopback(&[]),
        monitor,
        started: Instant::now(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let shutdown = stop.clone();
    tokio::spawn(async move {
        breakwater_server::serve(listener, state, async move { shutdown.cancelled().await }).await.unwrap();
    });
    TestApp { base: format!("http://{addr}"), http: reqwest::Client::new(), store, stop }
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
