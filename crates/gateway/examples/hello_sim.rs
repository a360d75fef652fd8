//! Creates a sandbox on an in-process `openshell-sim`, waits for READY
//! through WatchSandbox, runs `echo hi` and prints the result.
//!
//!     cargo run -p breakwater-gateway --example hello_sim

use breakwater_domain::sandbox::{ExecRequest, NewSandbox, SandboxPhase, WatchEvent, WatchOptions};
use breakwater_domain::{SandboxName, Secret, WorkspaceName};
use breakwater_gateway::{ConnectionConfig, EXEC_OUTPUT_CAP, Gateway, GatewayAddress, GrpcGateway};
use futures::StreamExt;
use openshell_sim::{Sim, SimConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sim = Sim::start(SimConfig::for_tests()?).await?;
    let pki = sim.pki().expect("mTLS");
    let client = pki.client.as_ref().expect("client certificate");
    let gw = GrpcGateway::connect(ConnectionConfig::mtls(
        GatewayAddress::parse(&sim.endpoint())?,
        pki.ca_pem.clone().into_bytes(),
        client.cert_pem.clone().into_bytes(),
        Secret::new(client.key_pem.clone()),
    ))
    .await?;
    println!("connected to {} over mTLS", sim.endpoint());

    let (ws, name) = (WorkspaceName::default(), SandboxName::parse("hello")?);
    let created = gw.create_sandbox(&NewSandbox { name: Some(name.clone()), ..Default::default() }).await?;
    println!("created {} ({}), phase {}", created.name, created.id, created.phase);

    let mut watch = gw.watch_sandbox(&ws, &name, &WatchOptions { follow_status: true, ..Default::default() }).await?;
    while let Some(event) = watch.next().await {
        if let WatchEvent::Sandbox(sb) = event? {
            println!("phase: {}", sb.status_summary());
            if sb.phase == SandboxPhase::Ready {
                break;
            }
        }
    }
    drop(watch);

    let out = gw
        .exec(
            &ws,
            &name,
            &ExecRequest { command: vec!["echo".into(), "hi".into()], ..Default::default() },
            EXEC_OUTPUT_CAP,
        )
        .await?;
    print!("exec stdout: {}", out.stdout);
    println!("exit code: {}", out.exit_code);
    anyhow::ensure!(out.stdout == "hi\n" && out.exit_code == 0, "unexpected exec result");
    sim.shutdown().await;
    Ok(())
}
