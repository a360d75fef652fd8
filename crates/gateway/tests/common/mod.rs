//! A simulated gateway per test, and a client configured for it.
#![allow(dead_code)]

use std::time::Duration;

use breakwater_domain::sandbox::{NewSandbox, Sandbox, SandboxPhase, WatchEvent, WatchOptions};
use breakwater_domain::{SandboxName, Secret, WorkspaceName};
use breakwater_gateway::{ConnectionConfig, Gateway, GatewayAddress, GrpcGateway, RetryPolicy};
use futures::StreamExt;
use openshell_sim::{Sim, SimConfig};

pub struct TestGateway {
    pub sim: Sim,
    pub gw: GrpcGateway,
}

/// mTLS config for `sim` using its minted client certificate.
pub fn mtls_config(sim: &Sim) -> ConnectionConfig {
    let pki = sim.pki().expect("sim serves TLS");
    let client = pki.client.as_ref().expect("minted client pair");
    let mut config = ConnectionConfig::mtls(
        GatewayAddress::parse(&sim.endpoint()).unwrap(),
        pki.ca_pem.clone().into_bytes(),
        client.cert_pem.clone().into_bytes(),
        Secret::new(client.key_pem.clone()),
    );
    config.retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        budget: Duration::from_secs(5),
    };
    config.timeouts.connect = Duration::from_secs(3);
    config.timeouts.call = Duration::from_secs(10);
    config
}

pub async fn spawn() -> TestGateway {
    let sim = Sim::start(SimConfig::for_tests().unwrap()).await.unwrap();
    let gw = GrpcGateway::connect(mtls_config(&sim)).await.expect("client connects to the sim over mTLS");
    TestGateway { sim, gw }
}

pub fn ws() -> WorkspaceName {
    WorkspaceName::default()
}

pub fn name(s: &str) -> SandboxName {
    SandboxName::parse(s).unwrap()
}

impl TestGateway {
    pub async fn create(&self, n: &str) -> Sandbox {
        self.gw.create_sandbox(&NewSandbox { name: Some(name(n)), ..Default::default() }).await.expect("create sandbox")
    }

    /// Creates a sandbox and waits for READY through WatchSandbox.
    pub async fn create_ready(&self, n: &str) -> Sandbox {
        self.create(n).await;
        self.wait_phase(n, SandboxPhase::Ready).await
    }

    pub async fn wait_phase(&self, n: &str, phase: SandboxPhase) -> Sandbox {
        let opts = WatchOptions { follow_status: true, ..Default::default() };
        let mut stream = self.gw.watch_sandbox(&ws(), &name(n), &opts).await.expect("watch");
        let fut = async {
            while let Some(ev) = stream.next().await {
                if let WatchEvent::Sandbox(sb) = ev.expect("watch event")
                    && sb.phase == phase
                {
                    return *sb;
                }
            }
            panic!("watch ended before {n} reached {phase}");
        };
        tokio::time::timeout(Duration::from_secs(10), fut).await.unwrap_or_else(|_| panic!("{n} never reached {phase}"))
    }
}
