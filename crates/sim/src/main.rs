//! `openshell-sim`: run a simulated OpenShell 0.1 gateway.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use openshell_sim::{ProvisioningMode, Sim, SimConfig, SimPki, SimTls, Timing, parse_code};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TlsMode {
    /// TLS that requires a client certificate (the OpenShell default).
    Mtls,
    /// Server-authenticated TLS only.
    Tls,
    /// No TLS at all.
    Plaintext,
}

/// A simulated OpenShell 0.1 gateway: the real wire protocol over mTLS with
/// in-memory sandboxes, policies, draft chunks, logs, exec and providers.
/// It never runs host commands.
#[derive(Debug, Parser)]
#[command(name = "openshell-sim", version)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory for ca.crt, server.crt, server.key, client.crt, client.key.
    /// Existing files are used; missing ones are minted (keys with mode 0600).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Transport security.
    #[arg(long, value_enum, default_value = "mtls")]
    tls_mode: TlsMode,
    /// Extra subject alternative name for the minted server certificate
    /// (localhost, 127.0.0.1 and ::1 are always included). Repeatable.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Version string reported by Health and GetGatewayInfo.
    #[arg(long = "gateway-version", default_value = openshell_sim::DEFAULT_VERSION)]
    gateway_version: String,
    /// Milliseconds a new sandbox stays PROVISIONING before READY.
    #[arg(long, default_value_t = 2000)]
    ready_delay_ms: u64,
    /// Milliseconds for STOPPING, STARTING and DELETING.
    #[arg(long, default_value_t = 500)]
    transition_delay_ms: u64,
    /// Milliseconds before a new policy revision goes from PENDING to LOADED.
    #[arg(long, default_value_t = 300)]
    policy_load_delay_ms: u64,
    /// How new sandboxes behave: normal, fail (go to ERROR), hang (stay PROVISIONING).
    #[arg(long, default_value = "normal")]
    provision: ProvisioningMode,
    /// Latency added to every RPC, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fail a fraction of RPCs with a gRPC code, e.g. `unavailable=0.1`. Repeatable.
    #[arg(long = "fail-rate", value_parser = parse_rate)]
    fail_rates: Vec<(tonic::Code, f64)>,
    /// A policy revision naming this host fails to load (FAILED). Repeatable.
    #[arg(long = "reject-host")]
    reject_hosts: Vec<String>,
    /// Every N seconds, deny one READY sandbox a host, producing a draft chunk.
    #[arg(long)]
    deny_every: Option<f64>,
    /// Create this many sandboxes at start (named sim-0000, sim-0001, ...).
    #[arg(long, default_value_t = 0)]
    seed_sandboxes: usize,
    /// Require `authorization: Bearer TOKEN` on every call but Health (like a
    /// gateway with OIDC configured).
    #[arg(long, env = "OPENSHELL_SIM_BEARER_TOKEN", hide_env_values = true)]
    bearer_token: Option<String>,
    /// Host handed out in SSH sessions (default: the listen IP).
    #[arg(long)]
    advertise_host: Option<String>,
}

fn parse_rate(raw: &str) -> Result<(tonic::Code, f64), String> {
    let (code, rate) = raw.split_once('=').ok_or("expected CODE=RATE, e.g. unavailable=0.1")?;
    let rate: f64 = rate.parse().map_err(|_| format!("{rate:?} is not a number"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err("rate must be between 0 and 1".into());
    }
    Ok((parse_code(code)?, rate))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("openshell-sim: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    for san in &args.sans {
        let dns = !san.is_empty()
            && san.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if san.parse::<std::net::IpAddr>().is_err() && !dns {
            bail!("--san {san:?} is neither a DNS name nor an IP address");
        }
    }
    let tls = match args.tls_mode {
        TlsMode::Plaintext if args.tls_dir.is_some() => {
            bail!("--tls-dir is not used with --tls-mode plaintext; drop one of them")
        }
        TlsMode::Plaintext => SimTls::Plaintext,
        mode => {
            let Some(dir) = &args.tls_dir else {
                bail!(
                    "--tls-mode {} needs --tls-dir DIR (certificates are written there, or read if present)",
                    format!("{mode:?}").to_lowercase()
                );
            };
            if !args.sans.is_empty() && dir.join("server.crt").exists() {
                eprintln!(
                    "openshell-sim: warning: --san is ignored: {} already has a server certificate (empty it to mint one with these names)",
                    dir.display()
                );
            }
            let pki = SimPki::load_or_mint(dir, &args.sans)
                .with_context(|| format!("preparing certificates in {}", dir.display()))?;
            if matches!(mode, TlsMode::Mtls) { SimTls::Mtls(pki) } else { SimTls::Tls(pki) }
        }
    };
    let config = SimConfig {
        listen: args.listen,
        tls,
        timing: Timing {
            ready_delay: Duration::from_millis(args.ready_delay_ms),
            transition_delay: Duration::from_millis(args.transition_delay_ms),
            policy_load_delay: Duration::from_millis(args.policy_load_delay_ms),
        },
        version: args.gateway_version.clone(),
        advertise_host: args.advertise_host.clone(),
    };
    let sim = Sim::start(config).await?;
    let faults = sim.faults();
    faults.set_provisioning(args.provision);
    faults.set_latency(Duration::from_millis(args.latency_ms));
    for (code, rate) in &args.fail_rates {
        faults.set_failure_rate(*code, *rate);
    }
    faults.set_reject_hosts(args.reject_hosts.clone());
    faults.require_bearer(args.bearer_token.clone());
    if args.seed_sandboxes > 0 {
        sim.seed_sandboxes("default", args.seed_sandboxes).await?;
        eprintln!("seeded {} sandboxes", args.seed_sandboxes);
    }
    if let Some(secs) = args.deny_every {
        if !(0.01..=86_400.0).contains(&secs) {
            bail!("--deny-every takes seconds between 0.01 and 86400");
        }
        sim.start_denial_generator(Duration::from_secs_f64(secs));
    }
    let mode = match args.tls_mode {
        TlsMode::Mtls => "mTLS",
        TlsMode::Tls => "TLS",
        TlsMode::Plaintext => "plaintext",
    };
    println!("openshell-sim {} listening on {} ({mode})", args.gateway_version, sim.endpoint());
    if let Some(dir) = &args.tls_dir {
        println!("certificates: {}", dir.display());
    }
    wait_for_signal().await;
    eprintln!("openshell-sim: shutting down");
    sim.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
