//! `openshell-sim`: a simulated OpenShell 0.1 gateway.
//!
//! It speaks the real wire protocol (our `breakwater-wire` protos) over mTLS,
//! TLS or plaintext, keeps sandboxes, policies, draft chunks, logs and
//! providers in memory, and behaves the way `shared/openshell-wire/behaviour.md`
//! describes a real gateway. Tests, the demo and benchmarks run against it;
//! fault injection ([`Faults`]) lets them see how clients cope with latency,
//! errors, outages and restarts.
#![forbid(unsafe_code)]

mod errors;
mod exec;
mod faults;
mod net;
pub mod pki;
mod profiles;
mod service;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use breakwater_wire::openshell::v1::open_shell_server::OpenShellServer;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use faults::{Faults, ProvisioningMode, parse_code};
pub use pki::SimPki;
pub use service::{SETTING_KEYS, Timing};

use crate::net::{KillSwitch, KillableStream};
use crate::service::{Inner, SimService};

/// Transport security of the simulated gateway.
#[derive(Clone, Debug)]
pub enum SimTls {
    /// TLS that requires a client certificate signed by the PKI's CA.
    Mtls(SimPki),
    /// Server-authenticated TLS only.
    Tls(SimPki),
    Plaintext,
}

/// How to run a simulator.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub tls: SimTls,
    pub timing: Timing,
    /// Reported by Health and GetGatewayInfo.
    pub version: String,
    /// Host handed out in SSH sessions; defaults to the listen IP.
    pub advertise_host: Option<String>,
}

impl SimConfig {
    /// mTLS on a random loopback port with a freshly minted PKI and fast
    /// timings: what tests want.
    pub fn for_tests() -> anyhow::Result<Self> {
        Ok(Self {
            listen: "127.0.0.1:0".parse()?,
            tls: SimTls::Mtls(SimPki::mint(&[])?),
            timing: Timing {
                ready_delay: Duration::from_millis(50),
                transition_delay: Duration::from_millis(50),
                policy_load_delay: Duration::from_millis(30),
            },
            version: DEFAULT_VERSION.to_owned(),
            advertise_host: None,
        })
    }
}

/// The version string the simulator reports unless told otherwise.
pub const DEFAULT_VERSION: &str = "0.1.5-sim";

/// A running simulated gateway. Dropping it does not stop it; call
/// [`Sim::shutdown`].
pub struct Sim {
    addr: SocketAddr,
    tls: SimTls,
    service: SimService,
    faults: Arc<Faults>,
    kill: KillSwitch,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Sim {
    /// Binds, then serves in the background.
    pub async fn start(config: SimConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen).await.with_context(|| {
            format!("cannot listen on {} (is the port in use? pick another, or port 0 for any free one)", config.listen)
        })?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Faults::new(&config.version));
        let shutdown = CancellationToken::new();
        let (events, _) = broadcast::channel(4096);
        let service = SimService(Arc::new(Inner {
            state: std::sync::Mutex::new(state::State::new()),
            faults: faults.clone(),
            events,
            timing: config.timing,
            // Listening on every interface says nothing about which address a
            // client can reach; loopback is the only safe guess (see --advertise-host).
            advertise_host: config.advertise_host.clone().unwrap_or_else(|| {
                if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() }
            }),
            port: addr.port(),
            shutdown: shutdown.clone(),
        }));
        let kill: KillSwitch = Arc::new(std::sync::Mutex::new(CancellationToken::new()));

        let mut builder = Server::builder().http2_keepalive_interval(Some(Duration::from_secs(30))).tcp_nodelay(true);
        match &config.tls {
            SimTls::Mtls(pki) => {
                builder = builder.tls_config(
                    ServerTlsConfig::new()
                        .identity(Identity::from_pem(&pki.server.cert_pem, &pki.server.key_pem))
                        .client_ca_root(Certificate::from_pem(&pki.ca_pem)),
                )?;
            }
            SimTls::Tls(pki) => {
                builder = builder.tls_config(
                    ServerTlsConfig::new().identity(Identity::from_pem(&pki.server.cert_pem, &pki.server.key_pem)),
                )?;
            }
            SimTls::Plaintext => {}
        }
        let incoming = {
            let faults = faults.clone();
            let kill = kill.clone();
            futures::stream::unfold(listener, move |listener| {
                let faults = faults.clone();
                let kill = kill.clone();
                async move {
                    loop {
                        let (tcp, _) = match listener.accept().await {
                            Ok(conn) => conn,
                            Err(e) => return Some((Err(e), listener)),
                        };
                        // Our own incoming stream bypasses the builder's
                        // tcp_nodelay; without it, small responses wait on
                        // Nagle and delayed ACKs (~40 ms each).
                        let _ = tcp.set_nodelay(true);
                        if faults.refusing() {
                            drop(tcp); // simulated outage: close at once
                            continue;
                        }
                        let token = kill.lock().expect("kill switch lock").clone();
                        return Some((Ok::<_, std::io::Error>(KillableStream::new(tcp, &token)), listener));
                    }
                }
            })
            .boxed()
        };
        let svc = OpenShellServer::new(service.clone())
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            if let Err(e) = builder.add_service(svc).serve_with_incoming_shutdown(incoming, stop.cancelled()).await {
                tracing::error!(error = %e, "openshell-sim server stopped");
            }
        });
        Ok(Self { addr, tls: config.tls, service, faults, kill, shutdown, server })
    }

    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port` to dial (IPv6 bracketed). A wildcard listen address is
    /// dialled on loopback, which the minted server certificate covers.
    #[must_use]
    pub fn endpoint(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        addr.to_string()
    }

    #[must_use]
    pub fn tls(&self) -> &SimTls {
        &self.tls
    }

    /// The PKI when serving TLS or mTLS.
    #[must_use]
    pub fn pki(&self) -> Option<&SimPki> {
        match &self.tls {
            SimTls::Mtls(p) | SimTls::Tls(p) => Some(p),
            SimTls::Plaintext => None,
        }
    }

    #[must_use]
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Simulates the gateway going down (`true`): open connections are cut
    /// and new ones closed at once. `false` brings it back.
    pub fn set_outage(&self, down: bool) {
        self.faults.set_refuse_connections(down);
        let mut token = self.kill.lock().expect("kill switch lock");
        if down {
            token.cancel();
        } else if token.is_cancelled() {
            *token = CancellationToken::new();
        }
    }

    /// A restart: every sandbox, provider, setting and stream is gone, and
    /// open connections are cut, like a gateway process that was replaced.
    pub fn restart(&self) {
        self.service.reset();
        self.set_outage(true);
        self.set_outage(false);
    }

    /// An agent in `sandbox` was denied `host:port`: becomes (or bumps) a
    /// pending draft chunk. Returns the chunk id.
    pub fn inject_denial(
        &self,
        workspace: &str,
        sandbox: &str,
        host: &str,
        port: u32,
        binary: &str,
    ) -> anyhow::Result<String> {
        self.service
            .inject_denial(workspace, sandbox, host, port, binary)
            .map_err(|s| anyhow::anyhow!("{}", s.message()))
    }

    /// A line in the sandbox's log, as if the sandbox wrote it (the text is
    /// kept as given, control characters included).
    pub fn inject_log(&self, workspace: &str, sandbox: &str, level: &str, message: &str) -> anyhow::Result<()> {
        self.service.inject_log(workspace, sandbox, level, message).map_err(|s| anyhow::anyhow!("{}", s.message()))
    }

    /// Creates `n` sandboxes named `sim-0000`, `sim-0001`, ... through the
    /// service itself, so they behave exactly like created ones.
    pub async fn seed_sandboxes(&self, workspace: &str, n: usize) -> anyhow::Result<()> {
        use breakwater_wire::openshell::v1::open_shell_server::OpenShell;
        use breakwater_wire::{datamodel as dm, v1};
        for i in 0..n {
            let req = v1::CreateSandboxRequest {
                name: format!("sim-{i:04}"),
                workspace_scope: Some(dm::WorkspaceSelector {
                    selection: Some(dm::workspace_selector::Selection::Workspace(workspace.to_owned())),
                }),
                ..Default::default()
            };
            self.service
                .create_sandbox(tonic::Request::new(req))
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        }
        Ok(())
    }

    /// Open WatchSandbox streams (each holds one event subscription).
    #[must_use]
    pub fn active_watchers(&self) -> usize {
        self.service.0.events.receiver_count()
    }

    /// Number of sandboxes in all workspaces.
    #[must_use]
    pub fn sandbox_count(&self) -> usize {
        self.service.with_state(|s| s.sandboxes.len())
    }

    /// Every `interval`, one READY sandbox is denied a host from a fixed list
    /// (some of them security-sensitive), producing a steady trickle of draft
    /// chunks for demos.
    pub fn start_denial_generator(&self, interval: Duration) {
        const TARGETS: &[(&str, u32, &str)] = &[
            ("pypi.org", 443, "/usr/bin/pip"),
            ("files.pythonhosted.org", 443, "/usr/bin/pip"),
            ("registry.npmjs.org", 443, "/usr/bin/npm"),
            ("api.github.com", 443, "/usr/bin/git"),
            ("huggingface.co", 443, "/usr/bin/python3"),
            ("db.internal.example.com", 5432, "/usr/bin/psql"),
            ("10.0.0.12", 6379, "/usr/bin/redis-cli"),
        ];
        let service = self.service.clone();
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            let mut n = 0usize;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let ready = service.ready_sandboxes();
                if ready.is_empty() {
                    continue;
                }
                let (ws, name) = &ready[n % ready.len()];
                let (host, port, binary) = TARGETS[n % TARGETS.len()];
                n += 1;
                if let Err(e) = service.inject_denial(ws, name, host, port, binary) {
                    tracing::debug!(error = %e.message(), "denial generator skipped a sandbox");
                }
            }
        });
    }

    /// Stops serving and ends every stream and timer.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.set_outage(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
    }
}
