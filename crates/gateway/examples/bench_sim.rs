//! Latency and footprint figures for the client and simulator over mTLS.
//! Run through `scripts/bench` (release build).

use std::time::{Duration, Instant};

use breakwater_domain::{LabelSelector, PageRequest, SandboxName, Secret, WorkspaceName};
use breakwater_gateway::{ConnectionConfig, Gateway, GatewayAddress, GrpcGateway, WorkspaceScope};
use openshell_sim::{Sim, SimConfig};

/// `per_mille` of 1000: 500 is the median, 990 the 99th percentile.
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn measure<F, Fut>(label: &str, n: usize, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "{label:<40} n={n:<6} p50={:>8.3?} p99={:>8.3?} max={:>8.3?}",
        percentile(&samples, 500),
        percentile(&samples, 990),
        samples[n - 1]
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base_rss = rss_mib();
    let sim = Sim::start(SimConfig::for_tests()?).await?;
    let pki = sim.pki().expect("mTLS");
    let client = pki.client.as_ref().expect("client pair");
    let gw = GrpcGateway::connect(ConnectionConfig::mtls(
        GatewayAddress::parse(&sim.endpoint())?,
        pki.ca_pem.clone().into_bytes(),
        client.cert_pem.clone().into_bytes(),
        Secret::new(client.key_pem.clone()),
    ))
    .await?;

    let t = Instant::now();
    sim.seed_sandboxes("default", 10_000).await?;
    println!("seed 10,000 sandboxes in the sim               {:>8.3?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("process RSS with 10,000 sandboxes (sim+client) {:>8.1} MiB (start {base_rss:.1} MiB)", rss_mib());

    measure("Health over mTLS", 2000, || async {
        gw.health().await.unwrap();
    })
    .await;
    let ws = WorkspaceName::default();
    let name = SandboxName::parse("sim-5000")?;
    measure("GetSandbox over mTLS", 2000, || async {
        gw.get_sandbox(&ws, &name).await.unwrap();
    })
    .await;
    measure("ListSandboxes page of 100", 500, || async {
        gw.list_sandboxes(&WorkspaceScope::default(), &LabelSelector::default(), &PageRequest::first(100))
            .await
            .unwrap();
    })
    .await;
    let t = Instant::now();
    let mut page = PageRequest::first(1000);
    let mut total = 0;
    loop {
        let p = gw.list_sandboxes(&WorkspaceScope::default(), &LabelSelector::default(), &page).await?;
        total += p.items.len();
        if p.is_last() {
            break;
        }
        page.page_token = p.next_page_token;
    }
    println!("list all {total} sandboxes (pages of 1000)     {:>8.3?}", t.elapsed());

    let concurrent = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move { gw.health().await.is_ok() }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await?);
    }
    println!("100 concurrent Health calls on one connection  {:>8.3?} ({ok} ok)", concurrent.elapsed());
    sim.shutdown().await;
    Ok(())
}
