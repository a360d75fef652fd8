//! The fixture shared by the service tests that need a sandbox: a real
//! simulated gateway over mTLS, a SQLite store, and sandbox `agent-1`
//! running with a starter policy.
#![allow(dead_code)] // each test file uses a different part

use std::time::Duration;

use breakwater_domain::policy::{NetworkBinary, NetworkEndpoint, NetworkRule, Policy, PolicyStatus, ProcessPolicy};
use breakwater_domain::presets::built_in;
use breakwater_domain::registry::GatewayName;
use breakwater_domain::sandbox::{NewSandbox, SandboxPhase};
use breakwater_domain::{SandboxName, Secret, WorkspaceName};
use breakwater_gateway::Gateway;
use breakwater_services::{Actor, AuditService, EventBus, GatewayService, PolicyService, RegisterGateway};
use breakwater_store::testing::{TestStore, sqlite};
use openshell_sim::{Sim, SimConfig};

pub struct Fixture {
    pub sim: Sim,
    pub store: TestStore,
    pub gateways: GatewayService,
    pub policies: PolicyService,
    pub events: EventBus,
    pub gw: GatewayName,
    pub sandbox: SandboxName,
}

pub fn starter() -> Policy {
    let mut p = Policy::default();
    p.network_policies.insert(
        "github".into(),
        NetworkRule {
            name: "github".into(),
            endpoints: vec![NetworkEndpoint { host: "api.github.com".into(), port: 443, ..Default::default() }],
            binaries: vec![NetworkBinary { path: "/usr/bin/git".into() }],
        },
    );
    p.process = Some(ProcessPolicy { run_as_user: "sandbox".into(), run_as_group: "sandbox".into() });
    p
}

pub fn rule(host: &str) -> NetworkRule {
    NetworkRule {
        name: String::new(),
        endpoints: vec![NetworkEndpoint { host: host.into(), port: 443, ..Default::default() }],
        binaries: vec![NetworkBinary { path: "/usr/bin/curl".into() }],
    }
}

pub async fn fixture() -> Fixture {
    let sim = Sim::start(SimConfig::for_tests().unwrap()).await.unwrap();
    let store = sqlite().await;
    let audit = AuditService::new(store.store.clone());
    let gateways = GatewayService::new(store.store.clone(), audit);
    let pki = sim.pki().unwrap();
    let client = pki.client.as_ref().unwrap();
    gateways
        .register(
            &Actor::system(),
            RegisterGateway {
                name: "gw".into(),
                endpoint: sim.endpoint(),
                ca_cert: Some(pki.ca_pem.clone()),
                client_cert: Some(client.cert_pem.clone()),
                client_key: Some(Secret::new(client.key_pem.clone())),
                ..RegisterGateway::default()
            },
        )
        .await
        .unwrap();
    let gw = GatewayName::parse("gw").unwrap();
    let sandbox = SandboxName::parse("agent-1").unwrap();
    let new = NewSandbox { name: Some(sandbox.clone()), policy: Some(starter()), ..NewSandbox::default() };
    gateways.with_gateway(&gw, |c| async move { c.create_sandbox(&new).await }).await.unwrap();
    let events = EventBus::default();
    let policies = PolicyService::new(gateways.clone(), events.clone(), built_in());
    let f = Fixture { sim, store, gateways, policies, events, gw, sandbox };
    f.wait_ready().await;
    f.wait_loaded().await;
    f
}

impl Fixture {
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            let sb = self.sandbox.clone();
            let s = self
                .gateways
                .with_gateway(&self.gw, |c| async move { c.get_sandbox(&WorkspaceName::default(), &sb).await })
                .await
                .unwrap();
            if s.phase == SandboxPhase::Ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("sandbox never became ready");
    }

    pub async fn wait_loaded(&self) {
        for _ in 0..200 {
            if self.policies.get(&self.gw, &self.sandbox).await.unwrap().status == PolicyStatus::Loaded {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("policy never loaded");
    }

    pub async fn revision_count(&self) -> usize {
        self.policies.revisions(&self.gw, &self.sandbox, 200, 0).await.unwrap().0.len()
    }
}

pub fn admin() -> Actor {
    Actor::local_admin(Some("127.0.0.1".into()))
}
