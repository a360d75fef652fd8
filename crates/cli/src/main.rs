//! `breakwater`: the Breakwater command line.
//!
//! Today it carries `demo`, which runs a simulated OpenShell gateway in
//! process and walks a sandbox through its lifecycle over real mTLS. The
//! server, REST client and TUI subcommands arrive with their issues.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use breakwater_domain::sandbox::{ExecRequest, NewSandbox, SandboxPhase, WatchEvent, WatchOptions};
use breakwater_domain::{SandboxName, Secret, WorkspaceName};
use breakwater_gateway::{ConnectionConfig, EXEC_OUTPUT_CAP, Gateway, GatewayAddress, GrpcGateway};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use openshell_sim::{Sim, SimConfig, SimPki, SimTls, Timing};

#[derive(Debug, Parser)]
#[command(name = "breakwater", version, about = "A control plane for NVIDIA OpenShell gateways")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a simulated OpenShell gateway and walk a sandbox through create,
    /// ready, exec and a draft-policy proposal; then keep the gateway running.
    Demo {
        /// Where the demo gateway listens.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: std::net::SocketAddr,
        /// Where its certificates go (default: a directory under the system temp dir).
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// Exit after the walkthrough instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Demo { listen, tls_dir, once } => demo(listen, tls_dir, once).await,
    };
    if let Err(e) = result {
        eprintln!("breakwater: error: {e:#}");
        std::process::exit(1);
    }
}

async fn demo(listen: std::net::SocketAddr, tls_dir: Option<PathBuf>, once: bool) -> anyhow::Result<()> {
    let dir = tls_dir.unwrap_or_else(|| std::env::temp_dir().join("breakwater-demo-tls"));
    let pki =
        SimPki::load_or_mint(&dir, &[]).with_context(|| format!("preparing certificates in {}", dir.display()))?;
    let client = pki.client.clone().context("the demo needs client.crt and client.key in the TLS directory")?;
    let sim = Sim::start(SimConfig {
        listen,
        tls: SimTls::Mtls(pki.clone()),
        timing: Timing { ready_delay: Duration::from_millis(800), ..Timing::default() },
        version: openshell_sim::DEFAULT_VERSION.into(),
        advertise_host: None,
    })
    .await
    .with_context(|| format!("starting the demo gateway on {listen}"))?;
    println!("simulated OpenShell gateway on {} (mTLS, certificates in {})", sim.endpoint(), dir.display());

    let gw = GrpcGateway::connect(ConnectionConfig::mtls(
        GatewayAddress::parse(&sim.endpoint())?,
        pki.ca_pem.into_bytes(),
        client.cert_pem.into_bytes(),
        Secret::new(client.key_pem),
    ))
    .await?;
    let health = gw.health().await?;
    println!("gateway health: {:?}, version {}", health.status, health.version);

    let ws = WorkspaceName::default();
    let name = SandboxName::parse("demo")?;
    gw.create_sandbox(&NewSandbox { name: Some(name.clone()), ..Default::default() }).await?;
    println!("created sandbox {name}");
    let mut watch = gw.watch_sandbox(&ws, &name, &WatchOptions { follow_status: true, ..Default::default() }).await?;
    while let Some(event) = watch.next().await {
        if let WatchEvent::Sandbox(sb) = event? {
            println!("  {}", sb.status_summary());
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
    println!("exec `echo hi` -> {:?} (exit {})", out.stdout, out.exit_code);

    sim.inject_denial("default", "demo", "pypi.org", 443, "/usr/bin/pip")?;
    let draft = gw.draft_policy(&ws, &name, "pending").await?;
    for chunk in &draft.chunks {
        println!(
            "draft proposal {}: {} (binary {}, {} hit(s))",
            chunk.id, chunk.rule_name, chunk.binary, chunk.hit_count
        );
    }
    if once {
        sim.shutdown().await;
        return Ok(());
    }
    sim.start_denial_generator(Duration::from_secs(20));
    println!("\nThe gateway keeps running (a new denial every 20 s). Point an OpenShell client at it:");
    println!(
        "  endpoint {}  ca {d}/ca.crt  cert {d}/client.crt  key {d}/client.key",
        sim.endpoint(),
        d = dir.display()
    );
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
