//! Breakwater's sandbox routes against the gateway they wrap: a running
//! `breakwater serve` with one registered `openshell-sim` (seeded with
//! sandboxes, certificates in its `--tls-dir`). Run through `scripts/bench`
//! (release build); see docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p breakwater --example bench_sandboxes -- \
//!     --base http://127.0.0.1:PORT --gateway NAME --endpoint 127.0.0.1:SIM_PORT \
//!     --tls-dir SIM_TLS_DIR --ready-delay-ms 300 [--sandboxes 1000] [--pairs 300] [--creates 20]
//! ```
//!
//! 1. `GET /api/gateways/{gw}/sandboxes?limit=N` over HTTP against the raw
//!    `ListSandboxes` pages that request wraps (pages of 500 until the token
//!    is empty, as `SandboxService::list` fetches them), sent straight to the
//!    simulator over an open mTLS connection. The two alternate, so load
//!    from anything else on the machine lands on both alike.
//! 2. `POST /api/gateways/{gw}/sandboxes` until the long poll on its
//!    operation says `succeeded`, minus the simulator's ready delay.
//!
//! The output also shows, for scale, how long `serde_json` takes here to
//! encode the same sandboxes: the main work the route adds to the RPCs.
//! The sandboxes are listed before any are created, so the listing sees the
//! seeded set only. Lines starting with `RESULT` are for `scripts/bench`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use breakwater_domain::sandbox::Sandbox;
use breakwater_domain::{LabelSelector, PageRequest, Secret};
use breakwater_gateway::{ConnectionConfig, Gateway, GatewayAddress, GrpcGateway, WorkspaceScope};
use serde_json::{Value, json};

/// The page size `SandboxService::list` asks the gateway for.
const SERVICE_PAGE: u32 = 500;

struct Options {
    base: String,
    gateway: String,
    endpoint: String,
    tls_dir: PathBuf,
    ready_delay: Duration,
    sandboxes: usize,
    pairs: usize,
    warmup: usize,
    creates: usize,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut base = None;
    let mut gateway = None;
    let mut endpoint = None;
    let mut tls_dir = None;
    let mut ready_delay = None;
    let (mut sandboxes, mut pairs, mut warmup, mut creates) = (1000, 300, 20, 20);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--base" => base = Some(value()?.trim_end_matches('/').to_owned()),
            "--gateway" => gateway = Some(value()?),
            "--endpoint" => endpoint = Some(value()?),
            "--tls-dir" => tls_dir = Some(PathBuf::from(value()?)),
            "--ready-delay-ms" => ready_delay = Some(Duration::from_millis(value()?.parse()?)),
            "--sandboxes" => sandboxes = value()?.parse()?,
            "--pairs" => pairs = value()?.parse()?,
            "--warmup" => warmup = value()?.parse()?,
            "--creates" => creates = value()?.parse()?,
            other => bail!("unknown argument {other:?} (see the header of bench_sandboxes.rs)"),
        }
    }
    let missing = |what: &str| format!("{what} is required (see the header of bench_sandboxes.rs)");
    ensure!((1..=1000).contains(&sandboxes), "--sandboxes must be 1 to 1000 (the route's largest limit)");
    ensure!(pairs > 0 && creates > 0, "--pairs and --creates must be at least 1");
    Ok(Options {
        base: base.with_context(|| missing("--base"))?,
        gateway: gateway.with_context(|| missing("--gateway"))?,
        endpoint: endpoint.with_context(|| missing("--endpoint"))?,
        tls_dir: tls_dir.with_context(|| missing("--tls-dir"))?,
        // Required: the overhead is what is left after it, so a guess would skew it.
        ready_delay: ready_delay.with_context(|| missing("--ready-delay-ms (the simulator's)"))?,
        sandboxes,
        pairs,
        warmup,
        creates,
    })
}

/// `per_mille` of 1000: 500 is the median, 990 the 99th percentile
/// (the same nearest-rank rule as bench_sim).
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort();
    v
}

/// What `SandboxService::list` asks of the gateway for a window from offset
/// 0 that holds every sandbox, gathered in one vector the way it does.
async fn raw_list(gw: &GrpcGateway) -> anyhow::Result<(Duration, Vec<Sandbox>)> {
    let t = Instant::now();
    let mut all = Vec::new();
    let mut page = PageRequest::first(SERVICE_PAGE);
    loop {
        let got = gw.list_sandboxes(&WorkspaceScope::All, &LabelSelector::default(), &page).await?;
        all.extend(got.items);
        if got.next_page_token.is_empty() {
            return Ok((t.elapsed(), all));
        }
        page.page_token = got.next_page_token;
    }
}

/// One GET, timed to the last byte of the body; also the time to the
/// response head (the server serialises the whole page before sending it,
/// so that is its own time plus one round trip).
async fn breakwater_list(http: &reqwest::Client, url: &str) -> anyhow::Result<(Duration, Duration, Vec<u8>)> {
    let t = Instant::now();
    let resp = http.get(url).send().await?;
    let head = t.elapsed();
    let status = resp.status();
    let body = resp.bytes().await?;
    let took = t.elapsed();
    ensure!(status == 200, "GET {url}: HTTP {status}: {}", String::from_utf8_lossy(&body));
    Ok((took, head, body.to_vec()))
}

fn count_items(body: &[u8]) -> anyhow::Result<usize> {
    let v: Value = serde_json::from_slice(body).context("the sandbox list is not JSON")?;
    v["items"].as_array().map(Vec::len).context("the sandbox list has no items array")
}

async fn bench_list(opts: &Options, http: &reqwest::Client, gw: &GrpcGateway) -> anyhow::Result<()> {
    let url = format!("{}/api/gateways/{}/sandboxes?limit={}", opts.base, opts.gateway, opts.sandboxes);
    let (mut bw, mut bw_head, mut raw, mut encode) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut bytes, mut encoded_bytes) = (0, 0);
    for i in 0..opts.warmup + opts.pairs {
        // Alternate which goes first, so neither always follows the other's
        // cache and scheduler state.
        let ((b, head, body), (r, items)) = if i % 2 == 0 {
            let r = raw_list(gw).await?;
            (breakwater_list(http, &url).await?, r)
        } else {
            let b = breakwater_list(http, &url).await?;
            (b, raw_list(gw).await?)
        };
        let listed = count_items(&body)?;
        ensure!(listed == opts.sandboxes, "Breakwater listed {listed} sandboxes, expected {}", opts.sandboxes);
        ensure!(
            items.len() == opts.sandboxes,
            "the gateway holds {} sandboxes, expected {} (seed it with --seed-sandboxes {})",
            items.len(),
            opts.sandboxes,
            opts.sandboxes
        );
        bytes = body.len();
        // Not part of either figure: the JSON encoding the route adds,
        // redone here on the same sandboxes to show its share.
        let t = Instant::now();
        let encoded = serde_json::to_vec(&items)?;
        let encoding = t.elapsed();
        encoded_bytes = encoded.len();
        if i >= opts.warmup {
            bw.push(b);
            bw_head.push(head);
            raw.push(r);
            encode.push(encoding);
        }
    }
    let (bw, bw_head, raw, encode) = (sorted(bw), sorted(bw_head), sorted(raw), sorted(encode));
    let ratio = ms(percentile(&bw, 500)) / ms(percentile(&raw, 500));
    println!(
        "sandbox list, {} sandboxes, {} interleaved pairs after {} warm-up pairs:",
        opts.sandboxes, opts.pairs, opts.warmup
    );
    println!(
        "  Breakwater GET ?limit={} ({bytes} bytes of JSON)  p50={:>8.3?} p99={:>8.3?} max={:>8.3?}",
        opts.sandboxes,
        percentile(&bw, 500),
        percentile(&bw, 990),
        bw[bw.len() - 1]
    );
    println!(
        "    of which to the response head                 p50={:>8.3?} p99={:>8.3?}",
        percentile(&bw_head, 500),
        percentile(&bw_head, 990)
    );
    println!(
        "  raw ListSandboxes, pages of {SERVICE_PAGE} over mTLS        p50={:>8.3?} p99={:>8.3?} max={:>8.3?}",
        percentile(&raw, 500),
        percentile(&raw, 990),
        raw[raw.len() - 1]
    );
    println!("  ratio of medians (Breakwater / raw)             {ratio:.2}");
    println!(
        "  for scale: serde_json::to_vec of those sandboxes here ({encoded_bytes} bytes) p50={:>8.3?}",
        percentile(&encode, 500)
    );
    println!(
        "RESULT list {} {} {bytes} {:.3} {:.3} {:.3} {:.3} {ratio:.3}",
        opts.pairs,
        opts.sandboxes,
        ms(percentile(&bw, 500)),
        ms(percentile(&bw, 990)),
        ms(percentile(&raw, 500)),
        ms(percentile(&raw, 990)),
    );
    Ok(())
}

/// When each step of one create was first seen, from the POST.
struct CreateTimes {
    accepted: Duration,
    ready: Option<Duration>,
    succeeded: Duration,
}

async fn create_once(opts: &Options, http: &reqwest::Client, name: &str) -> anyhow::Result<CreateTimes> {
    let t = Instant::now();
    let url = format!("{}/api/gateways/{}/sandboxes", opts.base, opts.gateway);
    let resp = http.post(&url).json(&json!({ "name": name })).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    let accepted = t.elapsed();
    ensure!(status == 202, "POST {url}: HTTP {status}: {body}");
    let id = body["operation_id"].as_str().with_context(|| format!("no operation_id in {body}"))?.to_owned();
    let poll = format!("{}/api/operations/{id}?wait=30", opts.base);
    let mut ready = None;
    loop {
        let op: Value = http.get(&poll).send().await?.error_for_status()?.json().await?;
        match op["status"].as_str() {
            Some("succeeded") => return Ok(CreateTimes { accepted, ready, succeeded: t.elapsed() }),
            Some("failed") => bail!("creating {name} failed: {op}"),
            _ => {}
        }
        // SandboxService reports 40 % once the watch stream says READY.
        if ready.is_none() && op["progress"].as_u64().is_some_and(|p| p >= 40) {
            ready = Some(t.elapsed());
        }
        ensure!(t.elapsed() < Duration::from_secs(60), "creating {name}: not done after 60 s: {op}");
    }
}

async fn bench_create(opts: &Options, http: &reqwest::Client) -> anyhow::Result<()> {
    let (mut overhead, mut total, mut accepted, mut ready, mut after_ready) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Two unmeasured creates first: the first watch stream and the first
    // operation rows are not what later ones cost.
    for i in 0..2 + opts.creates {
        let name = format!("bench-ready-{i:03}");
        let times = create_once(opts, http, &name).await?;
        ensure!(
            times.succeeded >= opts.ready_delay,
            "{name} was ready after {:?}, before the ready delay of {:?}: does --ready-delay-ms match the simulator's?",
            times.succeeded,
            opts.ready_delay
        );
        if i < 2 {
            continue;
        }
        total.push(times.succeeded);
        overhead.push(times.succeeded.saturating_sub(opts.ready_delay));
        accepted.push(times.accepted);
        if let Some(r) = times.ready {
            ready.push(r.saturating_sub(opts.ready_delay));
            after_ready.push(times.succeeded.saturating_sub(r));
        }
    }
    let (overhead, total, accepted) = (sorted(overhead), sorted(total), sorted(accepted));
    println!(
        "create to READY, {} sandboxes one after another, simulator ready delay {:?}:",
        opts.creates, opts.ready_delay
    );
    println!(
        "  POST to operation succeeded                     p50={:>8.3?} p90={:>8.3?} max={:>8.3?}",
        percentile(&total, 500),
        percentile(&total, 900),
        total[total.len() - 1]
    );
    println!(
        "  overhead (that minus the ready delay)           p50={:>8.3?} p90={:>8.3?} max={:>8.3?}",
        percentile(&overhead, 500),
        percentile(&overhead, 900),
        overhead[overhead.len() - 1]
    );
    println!("  of which POST to 202                            p50={:>8.3?}", percentile(&accepted, 500));
    if ready.is_empty() {
        println!("  (the long poll never showed the 40 % \"ready\" step before the end)");
    } else {
        let (ready, after_ready) = (sorted(ready), sorted(after_ready));
        println!(
            "  40 % \"ready\" seen, minus the ready delay        p50={:>8.3?} ({} of {} seen)",
            percentile(&ready, 500),
            ready.len(),
            opts.creates
        );
        println!("  from \"ready\" seen to succeeded seen             p50={:>8.3?}", percentile(&after_ready, 500));
    }
    println!(
        "RESULT create {} {} {:.3} {:.3} {:.3}",
        opts.creates,
        opts.ready_delay.as_millis(),
        ms(percentile(&overhead, 500)),
        ms(percentile(&overhead, 900)),
        ms(percentile(&total, 500)),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = parse_options()?;
    let read = |file: &str| {
        let path = opts.tls_dir.join(file);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let gw = GrpcGateway::connect(ConnectionConfig::mtls(
        GatewayAddress::parse(&opts.endpoint)?,
        read("ca.crt")?,
        read("client.crt")?,
        Secret::new(String::from_utf8(read("client.key")?)?),
    ))
    .await
    .with_context(|| format!("connecting to the gateway at {}", opts.endpoint))?;
    // One keep-alive connection, like the gRPC side's open channel; no proxy
    // from the environment in between.
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build()?;
    bench_list(&opts, &http, &gw).await?;
    bench_create(&opts, &http).await?;
    Ok(())
}
