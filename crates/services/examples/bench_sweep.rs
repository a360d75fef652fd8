//! One health sweep over a large fleet: 1,000 registered gateways served by a
//! few `openshell-sim` processes, of which 10 % point at TCP listeners that
//! accept but never answer (the monitor's worst case). Run through
//! `scripts/bench` (release build); see docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p breakwater-services --example bench_sweep -- \
//!     [--gateways 1000] [--sims 4] [--blackhole-percent 10] \
//!     [--settings default,1000:256] [--sim-bin target/release/openshell-sim]
//! ```
//!
//! `--settings` lists monitor configurations to time, each `default` (what
//! `MonitorSettings::default()` says) or `PROBE_TIMEOUT_MS:CONCURRENCY`. Each
//! configuration gets a fresh `GatewayService` over the same registry and
//! sweeps twice: cold (no cached connections) and warm (right after).
//!
//! The simulators run as separate `openshell-sim` processes: `--sim-bin`, or
//! the binary next to this example's directory (`target/release/openshell-sim`).
//! Without one they run inside this process. Lines starting with `RESULT` are
//! for `scripts/bench`.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_domain::LabelSelector;
use breakwater_domain::Secret;
use breakwater_domain::registry::GatewayStatus;
use breakwater_gateway::Timeouts;
use breakwater_services::gateways::Backoff;
use breakwater_services::{Actor, AuditService, GatewayService, MonitorSettings, RegisterGateway};
use breakwater_store::{SecretCipher, SqliteStore, Store};
use futures::StreamExt;
use openshell_sim::{Sim, SimConfig, SimPki, SimTls, Timing};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

struct Options {
    gateways: usize,
    sims: usize,
    blackhole_percent: usize,
    settings: Vec<(String, MonitorSettings)>,
    sim_bin: Option<PathBuf>,
}

fn parse_settings(raw: &str) -> BoxResult<Vec<(String, MonitorSettings)>> {
    raw.split(',')
        .map(|item| {
            if item == "default" {
                return Ok(("default".to_owned(), MonitorSettings::default()));
            }
            let (timeout, concurrency) = item
                .split_once(':')
                .ok_or_else(|| format!("--settings item {item:?} is not TIMEOUT_MS:CONCURRENCY"))?;
            let settings = MonitorSettings {
                probe_timeout: Duration::from_millis(timeout.parse()?),
                concurrency: concurrency.parse()?,
                ..MonitorSettings::default()
            };
            Ok((item.to_owned(), settings))
        })
        .collect()
}

fn parse_options() -> BoxResult<Options> {
    let mut opts =
        Options { gateways: 1000, sims: 4, blackhole_percent: 10, settings: parse_settings("default")?, sim_bin: None };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--gateways" => opts.gateways = value()?.parse()?,
            "--sims" => opts.sims = value()?.parse()?,
            "--blackhole-percent" => opts.blackhole_percent = value()?.parse()?,
            "--settings" => opts.settings = parse_settings(&value()?)?,
            "--sim-bin" => opts.sim_bin = Some(value()?.into()),
            other => return Err(format!("unknown argument {other:?} (see the header of bench_sweep.rs)").into()),
        }
    }
    if opts.sims == 0 || opts.gateways == 0 || opts.blackhole_percent > 100 {
        return Err("--sims and --gateways must be at least 1, --blackhole-percent at most 100".into());
    }
    if opts.sim_bin.is_none() {
        // target/release/examples/bench_sweep -> target/release/openshell-sim
        let beside = std::env::current_exe()?.parent().and_then(Path::parent).map(|d| d.join("openshell-sim"));
        opts.sim_bin = beside.filter(|p| p.is_file());
    }
    Ok(opts)
}

/// The simulators: child processes (killed on drop) or in-process servers.
enum Sims {
    Processes(Vec<(tokio::process::Child, BufReader<tokio::process::ChildStdout>)>),
    InProcess(Vec<Sim>),
}

/// Starts `n` simulators sharing one PKI; returns them, their endpoints and the PKI.
async fn start_sims(n: usize, bin: Option<&Path>, tls_dir: &Path) -> BoxResult<(Sims, Vec<String>, SimPki)> {
    let mut endpoints = Vec::new();
    let Some(bin) = bin else {
        let pki = SimPki::mint(&[])?;
        let mut sims = Vec::new();
        for _ in 0..n {
            let sim = Sim::start(SimConfig {
                listen: "127.0.0.1:0".parse()?,
                tls: SimTls::Mtls(pki.clone()),
                timing: Timing::default(),
                version: openshell_sim::DEFAULT_VERSION.into(),
                advertise_host: None,
            })
            .await?;
            endpoints.push(sim.endpoint());
            sims.push(sim);
        }
        return Ok((Sims::InProcess(sims), endpoints, pki));
    };
    let mut children = Vec::new();
    // One after the other: the first mints the certificates, the rest load them.
    for _ in 0..n {
        let mut child = tokio::process::Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--tls-dir"])
            .arg(tls_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), out.read_line(&mut line)).await??;
        // "openshell-sim VERSION listening on HOST:PORT (mTLS)"
        let endpoint = line
            .split_once(" listening on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .ok_or_else(|| format!("{} did not say where it listens: {line:?}", bin.display()))?;
        endpoints.push(endpoint.to_owned());
        // Keep the pipe open: the simulator prints more and must not hit EPIPE.
        children.push((child, out));
    }
    let pki = SimPki::load_or_mint(tls_dir, &[])?;
    Ok((Sims::Processes(children), endpoints, pki))
}

/// A listener that accepts connections and never answers on them.
async fn blackhole() -> BoxResult<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    Ok(addr.to_string())
}

async fn count_statuses(store: &dyn Store) -> BoxResult<BTreeMap<&'static str, usize>> {
    let mut counts = BTreeMap::new();
    let mut offset = 0;
    loop {
        let (page, total) = store.list_gateways(&LabelSelector::default(), 1000, offset).await?;
        offset += u32::try_from(page.len())?;
        for g in &page {
            *counts.entry(g.health.status.as_str()).or_insert(0) += 1;
        }
        if page.is_empty() || u64::from(offset) >= total {
            return Ok(counts);
        }
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let opts = parse_options()?;
    let tmp = tempfile::tempdir()?;
    let tls_dir = tmp.path().join("sim-tls");
    let (sims, sim_endpoints, pki) = start_sims(opts.sims, opts.sim_bin.as_deref(), &tls_dir).await?;
    let client = pki.client.clone().ok_or("the simulator PKI has no client certificate")?;
    let where_ = match &sims {
        Sims::Processes(_) => "separate openshell-sim processes",
        Sims::InProcess(_) => "in this process (no openshell-sim binary found; pass --sim-bin)",
    };
    println!("{} simulators, {where_}: {}", opts.sims, sim_endpoints.join(", "));

    let n_black = opts.gateways * opts.blackhole_percent / 100;
    let mut holes = Vec::new();
    for _ in 0..n_black.clamp(0, 10) {
        holes.push(blackhole().await?);
    }
    // Spread the black holes evenly through the (name-ordered) sweep.
    let every = opts.gateways.checked_div(n_black).unwrap_or(usize::MAX);
    let endpoint_of = |i: usize| -> (String, bool) {
        if i % every == every - 1 && i / every < n_black {
            (holes[(i / every) % holes.len()].clone(), true)
        } else {
            (sim_endpoints[i % sim_endpoints.len()].clone(), false)
        }
    };

    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&tmp.path().join("breakwater.db"), SecretCipher::from_base64(&SecretCipher::generate_key())?)
            .await?,
    );
    let audit = AuditService::new(store.clone());

    // Register through the service (a live connection test each). A short
    // connect deadline keeps the black holes from stretching this out; the
    // registering service and its cached connections are dropped afterwards.
    let t = Instant::now();
    {
        let registrar = GatewayService::with_settings(
            store.clone(),
            audit.clone(),
            Backoff::default(),
            Timeouts { connect: Duration::from_secs(1), ..Timeouts::default() },
        );
        let actor = Actor::system();
        let results: Vec<_> = futures::stream::iter(0..opts.gateways)
            .map(|i| {
                let (endpoint, is_hole) = endpoint_of(i);
                let input = RegisterGateway {
                    name: format!("gw-{i:05}"),
                    endpoint,
                    ca_cert: Some(pki.ca_pem.clone()),
                    client_cert: Some(client.cert_pem.clone()),
                    client_key: Some(Secret::new(client.key_pem.clone())),
                    labels: [("bench".to_owned(), if is_hole { "blackhole" } else { "sim" }.to_owned())].into(),
                    ..RegisterGateway::default()
                };
                let (registrar, actor) = (&registrar, &actor);
                async move { (is_hole, registrar.register(actor, input).await) }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        for (is_hole, result) in results {
            let (record, test) = result?;
            if test.success == is_hole {
                return Err(format!("registering {}: expected success={}, got {test:?}", record.name, !is_hole).into());
            }
        }
    }
    println!(
        "registered {} gateways ({} healthy on {} sims, {n_black} black holes on {} listeners) in {:.1?}",
        opts.gateways,
        opts.gateways - n_black,
        opts.sims,
        holes.len(),
        t.elapsed()
    );
    println!("RESULT gateways {}", opts.gateways);
    println!("RESULT blackholes {n_black}");
    println!("RESULT sims {}", opts.sims);

    for (label, settings) in &opts.settings {
        let service = GatewayService::new(store.clone(), audit.clone());
        let mut figures = Vec::new();
        for phase in ["cold", "warm"] {
            let dials = service.dial_count();
            let t = Instant::now();
            let n = service.sweep(*settings).await?;
            let took = t.elapsed();
            let dials = service.dial_count() - dials;
            let counts = count_statuses(store.as_ref()).await?;
            let connected = counts.get(GatewayStatus::Connected.as_str()).copied().unwrap_or(0);
            let unreachable = counts.get(GatewayStatus::Unreachable.as_str()).copied().unwrap_or(0);
            println!(
                "sweep {phase:<4} probe_timeout={:?} concurrency={}: {n} gateways in {took:.3?} ({dials} dials; \
                 {connected} connected, {unreachable} unreachable, all: {counts:?})",
                settings.probe_timeout, settings.concurrency
            );
            if connected != opts.gateways - n_black || unreachable != n_black {
                return Err(format!(
                    "after the {phase} sweep ({label}) expected {} connected and {n_black} unreachable, got {counts:?}",
                    opts.gateways - n_black
                )
                .into());
            }
            figures.push(took);
        }
        println!(
            "RESULT sweep {label} {} {} {:.3} {:.3}",
            settings.probe_timeout.as_millis(),
            settings.concurrency,
            figures[0].as_secs_f64(),
            figures[1].as_secs_f64()
        );
    }
    println!(
        "process RSS (service, store, black holes{}) {:.1} MiB",
        if matches!(sims, Sims::InProcess(_)) { ", sims" } else { "" },
        rss_mib()
    );

    match sims {
        Sims::InProcess(sims) => {
            for sim in sims {
                sim.shutdown().await;
            }
        }
        Sims::Processes(children) => {
            for (mut child, _) in children {
                child.kill().await?;
            }
        }
    }
    Ok(())
}
