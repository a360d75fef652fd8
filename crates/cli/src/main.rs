//! `breakwater`: the Breakwater command line.
//!
//! `serve` runs the control plane; `demo` runs it with a simulated gateway
//! and a small live fleet; `config show` prints the effective configuration.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use breakwater_domain::access::Role;
use breakwater_domain::policy::{NetworkBinary, NetworkEndpoint, NetworkRule, Policy};
use breakwater_domain::registry::GatewayName;
use breakwater_domain::sandbox::NewSandbox;
use breakwater_domain::{Labels, SandboxName, Secret, sanitize};
use breakwater_gateway::Gateway;
use breakwater_server::{AppState, AuthMode, HostGuard};
use breakwater_services::{
    Actor, ApprovalService, AuditService, EventBus, GatewayService, IdentityService, IdentitySettings,
    LocalGatewayManager, LocalTools, MonitorSettings, OidcConfig, OidcService, OidcSettings, OperationService,
    PolicyService, ProviderService, RegisterGateway, SandboxService,
};
use breakwater_store::{PgStore, SecretCipher, SqliteStore, Store};
use clap::{Args, Parser, Subcommand, ValueEnum};
use openshell_sim::{Sim, SimConfig, SimPki, SimTls, Timing};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "breakwater", version, about = "A control plane for NVIDIA OpenShell gateways")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Breakwater server.
    Serve(ServerArgs),
    /// Run Breakwater with a simulated OpenShell gateway and a small live
    /// fleet (SQLite in a temporary directory unless --data-dir is given).
    Demo(ServerArgs),
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Users, on the database directly (bootstrap and recovery; the server
    /// may be running).
    User {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Service principals and their API keys, on the database directly.
    Token {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user. The password comes from BREAKWATER_USER_PASSWORD or,
    /// without it, the first line of standard input.
    Create {
        email: String,
        #[arg(long, default_value = "viewer")]
        role: String,
        #[arg(long, env = "BREAKWATER_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// List users.
    List,
    /// Delete a user (the last admin cannot go).
    Delete { email: String },
    /// Change a user's global role.
    SetRole { email: String, role: String },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a service principal; its API key is printed once.
    Create {
        name: String,
        #[arg(long, default_value = "viewer")]
        role: String,
        /// The key stops working after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List service principals (never their keys).
    List,
    /// Delete a service principal; its key stops working at once.
    Revoke { name: String },
    /// Issue a new key; the old one stops working at once.
    Rotate { name: String },
}

#[derive(Debug, Subcommand)]
// Parsed once per run: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum ConfigCommand {
    /// Print the effective configuration (flags, environment, defaults), secrets redacted.
    Show(ServerArgs),
    /// Re-encrypt every stored secret with a new server key. Stop the
    /// server(s) first; afterwards only the new key opens the database.
    RotateKey {
        #[command(flatten)]
        store: StoreArgs,
        /// The new key (base64 of 32 bytes); a fresh one is generated if absent.
        #[arg(long, env = "BREAKWATER_NEW_SECRET_KEY", hide_env_values = true)]
        new_key: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where Breakwater keeps its state.
#[derive(Clone, Debug, Args)]
struct StoreArgs {
    /// Where the SQLite database and the secret key file live
    /// (default for serve: the user's data directory, e.g. ~/.local/share/breakwater;
    /// for demo: a temporary directory removed on exit).
    #[arg(long, env = "BREAKWATER_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL instead of the embedded SQLite: postgres://user@host/db.
    #[arg(long, env = "BREAKWATER_DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,
    /// Base64 32-byte key that encrypts stored secrets (default: a key file in the data directory).
    #[arg(long, env = "BREAKWATER_SECRET_KEY", hide_env_values = true, global = true)]
    secret_key: Option<String>,
}

impl StoreArgs {
    fn data_dir(&self, demo: Option<&tempfile::TempDir>) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        if let Some(t) = demo {
            return Ok(t.path().to_owned());
        }
        let base = dirs::data_dir().context("no user data directory on this system; pass --data-dir")?;
        Ok(base.join("breakwater"))
    }
}

#[derive(Clone, Debug, Args)]
// Command-line switches are independent on/off flags, not states.
#[allow(clippy::struct_excessive_bools)]
struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "BREAKWATER_BIND", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port to listen on.
    #[arg(long, short, env = "BREAKWATER_PORT", default_value_t = 8888)]
    port: u16,
    #[command(flatten)]
    store: StoreArgs,
    /// Seconds between gateway health sweeps.
    #[arg(long, env = "BREAKWATER_MONITOR_INTERVAL", default_value_t = 30)]
    monitor_interval: u64,
    /// How long one health probe may take: `1`, `1.5`, `800ms`, `3s`. Raise it for
    /// gateways far away (a first connection needs several round trips).
    #[arg(long, env = "BREAKWATER_PROBE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    probe_timeout: Duration,
    /// Health probes in flight at once.
    #[arg(long, env = "BREAKWATER_PROBE_CONCURRENCY", default_value_t = 256)]
    probe_concurrency: usize,
    /// Log format.
    #[arg(long, env = "BREAKWATER_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// The OpenShell CLI's config directory, read by /api/gateway/import-filesystem
    /// and after /api/gateway/create (default: $XDG_CONFIG_HOME/openshell or ~/.config/openshell).
    #[arg(long, env = "BREAKWATER_OPENSHELL_CONFIG_DIR")]
    openshell_config_dir: Option<PathBuf>,
    /// Delete audit entries older than this many days, once a day (0 keeps them forever).
    #[arg(long, env = "BREAKWATER_AUDIT_RETENTION_DAYS", default_value_t = 0)]
    audit_retention_days: u32,
    /// This replica's name among those sharing a PostgreSQL database; keep
    /// it the same across restarts (default: host name and port; `local` on
    /// SQLite, which one process uses at a time).
    #[arg(long, env = "BREAKWATER_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Local mode: no sign-in, every request acts as `local-admin`. For one
    /// person on this machine; refused on a non-loopback --bind unless
    /// --force-no-auth (`demo` always runs this way).
    #[arg(long, env = "BREAKWATER_NO_AUTH")]
    no_auth: bool,
    /// Allow --no-auth on a network address. Anyone who can reach the port
    /// is an admin.
    #[arg(long)]
    force_no_auth: bool,
    /// Mark the session cookie `Secure` (when clients reach Breakwater over
    /// HTTPS, e.g. through a TLS-terminating proxy).
    #[arg(long, env = "BREAKWATER_SECURE_COOKIES")]
    secure_cookies: bool,
    /// Send `Strict-Transport-Security` (only behind HTTPS).
    #[arg(long, env = "BREAKWATER_HSTS")]
    hsts: bool,
    /// Let anyone create an account (a viewer) with POST /api/auth/register.
    #[arg(long, env = "BREAKWATER_ALLOW_REGISTRATION")]
    allow_registration: bool,
    /// With --admin-password: create this admin at start when no user exists.
    #[arg(long, env = "BREAKWATER_ADMIN_EMAIL")]
    admin_email: Option<String>,
    #[arg(long, env = "BREAKWATER_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// A proxy (address or CIDR block) whose X-Forwarded-For names the
    /// client; repeatable. Other senders' forwarding headers are ignored.
    #[arg(long = "trusted-proxy", env = "BREAKWATER_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<String>,
    /// Requests per minute from one client address (probes exempt; 0: no limit).
    #[arg(long, env = "BREAKWATER_RATE_LIMIT", default_value_t = 1200)]
    rate_limit: u32,
    /// A host name clients use to reach this server (repeatable). Requests
    /// naming another Host are refused, which stops DNS-rebinding attacks.
    /// Loopback names are always allowed on a loopback bind.
    #[arg(long = "allowed-host", env = "BREAKWATER_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// A web origin whose pages may call the API from a browser
    /// (repeatable, e.g. `https://ops.example.com`). Off unless given.
    #[arg(long = "cors-origin", env = "BREAKWATER_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Sign-in with OIDC providers: a JSON file with `public_url` and
    /// `providers` (client secrets come from the file or variable each names).
    #[arg(long, env = "BREAKWATER_OIDC_CONFIG")]
    oidc_config: Option<PathBuf>,
    /// A directory of site-specific policy presets (`*.yaml`, same format as
    /// the built-in ones; a file named like a built-in replaces it).
    #[arg(long, env = "BREAKWATER_PRESETS_DIR")]
    presets_dir: Option<PathBuf>,
}

impl ServerArgs {
    fn data_dir(&self, demo: Option<&tempfile::TempDir>) -> anyhow::Result<PathBuf> {
        self.store.data_dir(demo)
    }

    fn local_tools(&self) -> LocalTools {
        let mut tools = LocalTools::default();
        if let Some(dir) = &self.openshell_config_dir {
            tools.openshell_config_dir = Some(dir.clone());
        }
        tools
    }

    fn instance_id(&self) -> String {
        if let Some(id) = &self.instance_id {
            return id.clone();
        }
        if self.store.database_url.is_none() {
            return "local".to_owned();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("{host}:{}", self.port)
    }

    fn host_guard(&self) -> anyhow::Result<HostGuard> {
        let origins = self
            .cors_origins
            .iter()
            .map(|o| breakwater_server::parse_cors_origin(o).map_err(|e| anyhow::anyhow!("--cors-origin: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(self.host_names().with_cors_origins(origins))
    }

    fn host_names(&self) -> HostGuard {
        if self.bind.is_loopback() {
            HostGuard::loopback(&self.allowed_hosts)
        } else if self.allowed_hosts.is_empty() {
            // Bound to a network address without names: any Host (say so in the log).
            HostGuard::any()
        } else {
            let mut names = self.allowed_hosts.clone();
            names.push(self.bind.to_string());
            HostGuard::only(&names)
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.instance_id.as_ref().is_some_and(|i| i.is_empty() || i.len() > 200 || i.chars().any(char::is_control)) {
            bail!("--instance-id must be 1-200 printable characters");
        }
        if self.no_auth && !self.bind.is_loopback() && !self.force_no_auth {
            bail!(
                "--no-auth on {} would make anyone who can reach the port an admin; bind to 127.0.0.1, \
                 or add --force-no-auth if that is really what you want",
                self.bind
            );
        }
        breakwater_server::limits::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| anyhow::anyhow!("--trusted-proxy: {e}"))?;
        if self.admin_password.is_some() != self.admin_email.is_some() {
            bail!("BREAKWATER_ADMIN_EMAIL and BREAKWATER_ADMIN_PASSWORD go together");
        }
        if self.audit_retention_days > AuditService::MAX_RETENTION_DAYS {
            bail!("--audit-retention-days must be at most {}", AuditService::MAX_RETENTION_DAYS);
        }
        if let Some(key) = &self.store.secret_key {
            SecretCipher::from_base64(key).context("--secret-key / BREAKWATER_SECRET_KEY")?;
        }
        self.monitor()?;
        Ok(())
    }

    /// The OIDC providers, read (with their secrets) from `--oidc-config`.
    fn oidc(&self) -> anyhow::Result<Option<OidcConfig>> {
        let Some(path) = &self.oidc_config else { return Ok(None) };
        let config = OidcConfig::load(path, |var| std::env::var(var).ok()).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Some(config))
    }

    fn monitor(&self) -> anyhow::Result<MonitorSettings> {
        if self.monitor_interval == 0 {
            bail!("--monitor-interval must be at least 1 second");
        }
        if self.probe_timeout < Duration::from_millis(50) || self.probe_timeout > Duration::from_secs(60) {
            bail!("--probe-timeout must be between 50ms and 60s");
        }
        if self.probe_concurrency == 0 || self.probe_concurrency > 4096 {
            bail!("--probe-concurrency must be 1 to 4096");
        }
        Ok(MonitorSettings {
            interval: Duration::from_secs(self.monitor_interval),
            probe_timeout: self.probe_timeout,
            concurrency: self.probe_concurrency,
        })
    }
}

/// glibc returns memory to the kernel as soon as more than 128 KiB sits free
/// at the top of the heap, and serves blocks over 128 KiB with fresh
/// mappings; a page of 1,000 sandboxes allocates and frees a few such
/// buffers, so every request paid ~1 ms of page faults (docs/benchmarks.md).
/// glibc raises both thresholds when a large mapped block is freed: one
/// 4 MiB allocation, never touched (so never resident), does that once
/// without `mallopt` (which would need unsafe code): blocks up to 4 MiB then
/// come from the heap, which keeps up to 8 MiB free before trimming. (The
/// threshold follows the largest block freed, so keep this small: it is
/// also how much memory a quiet server may hold on to.) Other allocators
/// ignore it.
fn raise_malloc_thresholds() {
    drop(std::hint::black_box(Vec::<u8>::with_capacity(4 << 20)));
}

fn init_logs(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into())
        // axum traces each rejected body's serde error, which quotes the
        // offending value: a misplaced credential would land in the log.
        // Our own problem responses say the same without the value.
        .add_directive("axum::rejection=off".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            init_logs(args.log_format);
            raise_malloc_thresholds();
            serve(args, None).await
        }
        Command::Demo(args) => {
            init_logs(args.log_format);
            raise_malloc_thresholds();
            demo(args).await
        }
        Command::Config { command: ConfigCommand::Show(args) } => config_show(&args),
        Command::Config { command: ConfigCommand::RotateKey { store, new_key } } => rotate_key(&store, new_key).await,
        Command::User { store, command } => user_command(&store, command).await,
        Command::Token { store, command } => token_command(&store, command).await,
    };
    if let Err(e) = result {
        eprintln!("breakwater: error: {e:#}");
        std::process::exit(1);
    }
}

/// `1`, `1.5` (seconds), `800ms`, `3s`.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, scale) = if let Some(ms) = raw.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = raw.strip_suffix('s') {
        (s, 1.0)
    } else {
        (raw, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("{raw:?} is not a duration (e.g. 1s, 1.5, 800ms)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{raw:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

fn redact_url(url: &str) -> String {
    // Query parameters can carry a password too (…?password=x).
    let (url, query) = match url.split_once('?') {
        Some((base, q)) => {
            let q: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword") => {
                        format!("{k}=REDACTED")
                    }
                    _ => kv.to_owned(),
                })
                .collect();
            (base, format!("?{}", q.join("&")))
        }
        None => (url, String::new()),
    };
    if !url.contains("://") {
        // A key=value DSN: show nothing that could be a secret.
        return "REDACTED (not a URL)".into();
    }
    // postgres://user:password@host/db → postgres://user:REDACTED@host/db
    let base = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:REDACTED{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    };
    format!("{base}{query}")
}

fn config_show(args: &ServerArgs) -> anyhow::Result<()> {
    args.check()?;
    let data_dir = args.data_dir(None)?;
    let shown = serde_json::json!({
        "bind": args.bind.to_string(),
        "port": args.port,
        "data_dir": data_dir,
        "database": match &args.store.database_url {
            Some(url) => redact_url(url),
            None => format!("sqlite://{}", data_dir.join("breakwater.db").display()),
        },
        "secret_key": match &args.store.secret_key {
            Some(_) => "REDACTED (from --secret-key / BREAKWATER_SECRET_KEY)".to_owned(),
            None => format!("key file {}", data_dir.join("secret.key").display()),
        },
        "monitor_interval_seconds": args.monitor_interval,
        "probe_timeout_ms": args.probe_timeout.as_millis(),
        "probe_concurrency": args.probe_concurrency,
        "presets_dir": args.presets_dir,
        "allowed_hosts": args.allowed_hosts,
        "cors_origins": args.cors_origins,
        "log_format": format!("{:?}", args.log_format).to_lowercase(),
        "openshell_config_dir": args.local_tools().openshell_config_dir,
        "audit_retention_days": args.audit_retention_days,
        "instance_id": args.instance_id(),
        "auth": if args.no_auth { "local mode (--no-auth): every request acts as local-admin" } else { "sign-in required (users, sessions, API keys)" },
        "secure_cookies": args.secure_cookies,
        "hsts": args.hsts,
        "registration": args.allow_registration,
        "trusted_proxies": args.trusted_proxies,
        "rate_limit_per_minute": args.rate_limit,
        "admin_bootstrap": args.admin_email.as_ref().map(|e| format!("{e} (password REDACTED)")),
        "oidc": args.oidc()?.map(|c| c.redacted()),
    });
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}

async fn rotate_key(store: &StoreArgs, new_key: Option<String>) -> anyhow::Result<()> {
    let data_dir = store.data_dir(None)?;
    let key_file = data_dir.join("secret.key");
    if store.secret_key.is_none() && !key_file.exists() {
        bail!("no key file at {} and no --secret-key: nothing to rotate", key_file.display());
    }
    let new_key = new_key.unwrap_or_else(SecretCipher::generate_key);
    let new = SecretCipher::from_base64(&new_key).context("--new-key")?;
    // A running server keeps the old key in memory: rotate with it stopped.
    let _lock = if store.database_url.is_none() { Some(lock_data_dir(&data_dir)?) } else { None };
    let db = open_store(store, &data_dir).await?;
    let n = db.rotate_key(&new).await.map_err(|e| anyhow::anyhow!("re-encrypting: {e}"))?;
    if store.secret_key.is_some() {
        eprintln!("re-encrypted {n} secrets. Start every replica with this BREAKWATER_SECRET_KEY (shown once):");
        println!("{new_key}");
        return Ok(());
    }
    // The database already needs the new key: replace the file atomically,
    // and if that fails, still hand the key to the operator.
    let tmp = data_dir.join("secret.key.new");
    let written = (|| -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        std::io::Write::write_all(&mut opts.open(&tmp)?, new_key.as_bytes())?;
        std::fs::rename(&tmp, &key_file)
    })();
    if let Err(e) = written {
        eprintln!("re-encrypted {n} secrets, but writing {} failed: {e}", key_file.display());
        eprintln!("the database now needs this key; save it as BREAKWATER_SECRET_KEY:");
        println!("{new_key}");
        bail!("the key file was not replaced");
    }
    println!("re-encrypted {n} secrets; the new key is in {}", key_file.display());
    Ok(())
}

/// The identity service over the configured database, for commands run
/// by an operator at the console.
async fn identity_at(store: &StoreArgs) -> anyhow::Result<(IdentityService, Actor)> {
    let data_dir = store.data_dir(None)?;
    let db = open_store(store, &data_dir).await?;
    let audit = AuditService::new(db.clone());
    let who = std::env::var("USER").unwrap_or_else(|_| "console".into());
    let actor = Actor { name: format!("cli:{}", sanitize(&who, 64)), role: "admin".into(), client_ip: None };
    Ok((IdentityService::new(db, audit, IdentitySettings::default()), actor))
}

fn role_arg(raw: &str) -> anyhow::Result<Role> {
    Role::parse(raw).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn user_command(store: &StoreArgs, command: UserCommand) -> anyhow::Result<()> {
    let (ids, actor) = identity_at(store).await?;
    let find = |users: Vec<breakwater_domain::access::User>, email: &str| {
        let email = email.trim().to_lowercase();
        users.into_iter().find(|u| u.email == email).with_context(|| format!("no user {email}"))
    };
    let fail = |e: breakwater_services::ServiceError| anyhow::anyhow!("{e}");
    match command {
        UserCommand::Create { email, role, password } => {
            let password = if let Some(p) = password {
                p
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            };
            let user =
                ids.create_user(&actor, &email, role_arg(&role)?, Some(&Secret::new(password))).await.map_err(fail)?;
            println!("created {} ({})", user.email, user.role);
        }
        UserCommand::List => {
            for u in ids.users().await.map_err(fail)? {
                let state = if u.active { "active" } else { "inactive" };
                println!("{:<40} {:<9} {state} {}", u.email, u.role.as_str(), u.id);
            }
        }
        UserCommand::Delete { email } => {
            let user = find(ids.users().await.map_err(fail)?, &email)?;
            ids.delete_user(&actor, &user.id).await.map_err(fail)?;
            println!("deleted {}", user.email);
        }
        UserCommand::SetRole { email, role } => {
            let user = find(ids.users().await.map_err(fail)?, &email)?;
            let user = ids.set_role(&actor, &user.id, role_arg(&role)?).await.map_err(fail)?;
            println!("{} is now {}", user.email, user.role);
        }
    }
    Ok(())
}

async fn token_command(store: &StoreArgs, command: TokenCommand) -> anyhow::Result<()> {
    let (ids, actor) = identity_at(store).await?;
    let fail = |e: breakwater_services::ServiceError| anyhow::anyhow!("{e}");
    let find = |sps: Vec<breakwater_domain::access::ServicePrincipal>, name: &str| {
        sps.into_iter().find(|s| s.name == name).with_context(|| format!("no service principal {name}"))
    };
    match command {
        TokenCommand::Create { name, role, expires_in_days } => {
            let expires = expires_in_days.map(|d| chrono::Utc::now() + chrono::Duration::days(i64::from(d)));
            let issued = ids.create_service_principal(&actor, &name, role_arg(&role)?, expires).await.map_err(fail)?;
            eprintln!("service principal {name} ({role}): the key below is shown once and cannot be read back");
            println!("{}", issued.secret.expose());
        }
        TokenCommand::List => {
            for sp in ids.service_principals().await.map_err(fail)? {
                let expires = sp.expires_at.map_or_else(|| "never".to_owned(), |e| e.to_rfc3339());
                let used = sp.last_used_at.map_or_else(|| "never".to_owned(), |e| e.to_rfc3339());
                println!(
                    "{:<24} {:<9} {}…  expires {expires}  last used {used}",
                    sp.name,
                    sp.role.as_str(),
                    sp.key_prefix
                );
            }
        }
        TokenCommand::Revoke { name } => {
            let sp = find(ids.service_principals().await.map_err(fail)?, &name)?;
            ids.delete_service_principal(&actor, &sp.id).await.map_err(fail)?;
            println!("revoked {name}");
        }
        TokenCommand::Rotate { name } => {
            let sp = find(ids.service_principals().await.map_err(fail)?, &name)?;
            let issued = ids.rotate_service_principal(&actor, &sp.id).await.map_err(fail)?;
            eprintln!("new key for {name} (the old one no longer works); shown once:");
            println!("{}", issued.secret.expose());
        }
    }
    Ok(())
}

struct Running {
    state: AppState,
    stop: CancellationToken,
    monitor: tokio::task::JoinHandle<()>,
    /// Held while serving from an embedded database (released on exit).
    _lock: Option<std::fs::File>,
}

/// One server per SQLite data directory: a second one would fail the first
/// one's operations as orphans at its start and race it on every write.
/// Several replicas share PostgreSQL instead. The lock is the kernel's
/// (`flock`), so a killed server leaves none behind.
fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("breakwater.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let by = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
            bail!(
                "another breakwater server is using {}{by}; stop it, or give this one its own --data-dir \
                 (several replicas need PostgreSQL: --database-url)",
                data_dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

async fn open_store(args: &StoreArgs, data_dir: &std::path::Path) -> anyhow::Result<Arc<dyn Store>> {
    let cipher = match &args.secret_key {
        Some(key) => SecretCipher::from_base64(key).context("BREAKWATER_SECRET_KEY / --secret-key")?,
        None => SecretCipher::from_key_file(&data_dir.join("secret.key"))?,
    };
    Ok(match &args.database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Arc::new(PgStore::connect(url, cipher).await.with_context(|| format!("connecting to {}", redact_url(url)))?)
        }
        Some(url) => {
            bail!("--database-url {} is not a postgres:// URL (omit it for the embedded SQLite)", redact_url(url))
        }
        None => {
            let path = data_dir.join("breakwater.db");
            Arc::new(SqliteStore::open(&path, cipher).await.with_context(|| format!("opening {}", path.display()))?)
        }
    })
}

async fn start(args: &ServerArgs, data_dir: &std::path::Path) -> anyhow::Result<Running> {
    let lock = if args.store.database_url.is_none() { Some(lock_data_dir(data_dir)?) } else { None };
    let store = open_store(&args.store, data_dir).await?;
    let audit = AuditService::new(store.clone());
    let gateways = GatewayService::new(store.clone(), audit.clone());
    let monitor_settings = args.monitor()?;
    let stop = CancellationToken::new();
    let monitor = gateways.spawn_monitor(monitor_settings, stop.clone());
    if args.audit_retention_days > 0 {
        // Stops with the monitor's token; nothing waits on it at shutdown.
        let _retention = audit.spawn_retention(args.audit_retention_days, Duration::from_secs(24 * 3600), stop.clone());
    }
    let local = LocalGatewayManager::new(gateways.clone(), args.local_tools());
    let presets =
        breakwater_services::policy::load_presets(args.presets_dir.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let events = EventBus::default();
    let policies = PolicyService::new(gateways.clone(), events.clone(), presets);
    let approvals = ApprovalService::new(gateways.clone(), policies.clone(), events.clone());
    // Operations a previous process left active can never finish: say so.
    let operations =
        OperationService::new(store.clone(), audit.clone()).with_events(events).with_instance(&args.instance_id());
    let sandboxes = SandboxService::new(gateways.clone(), operations.clone(), policies.clone());
    let providers = ProviderService::new(gateways.clone());
    operations.recover_orphans().await.map_err(|e| anyhow::anyhow!("recovering operations: {e}"))?;
    // Stops with the monitor's token, like retention.
    let _housekeeping = operations.spawn_housekeeping(Duration::from_secs(300), stop.clone());
    if !args.bind.is_loopback() && args.allowed_hosts.is_empty() {
        tracing::warn!(bind = %args.bind, "listening beyond loopback without --allowed-host: any Host header is accepted");
    }
    let identity = IdentityService::new(store.clone(), audit.clone(), IdentitySettings::default());
    let auth = if args.no_auth {
        AuthMode::Local
    } else {
        if let (Some(email), Some(password)) = (&args.admin_email, &args.admin_password) {
            if identity.needs_setup().await.map_err(|e| anyhow::anyhow!("reading users: {e}"))? {
                identity
                    .create_user(&Actor::system(), email, Role::Admin, Some(&Secret::new(password.clone())))
                    .await
                    .map_err(|e| anyhow::anyhow!("BREAKWATER_ADMIN_EMAIL / BREAKWATER_ADMIN_PASSWORD: {e}"))?;
                println!("created the first admin, {email}");
            }
        } else if identity.needs_setup().await.map_err(|e| anyhow::anyhow!("reading users: {e}"))? {
            println!(
                "no user yet: create the first admin with POST /api/auth/setup {{email, password}}, \
                 or start with BREAKWATER_ADMIN_EMAIL and BREAKWATER_ADMIN_PASSWORD"
            );
        }
        AuthMode::Enabled { secure_cookies: args.secure_cookies }
    };
    let oidc = OidcService::new(
        store.clone(),
        identity.clone(),
        audit.clone(),
        args.oidc()?.unwrap_or_default(),
        OidcSettings::default(),
    )
    .map_err(|e| anyhow::anyhow!("--oidc-config: {e}"))?;
    let state = AppState {
        store,
        gateways,
        audit,
        local,
        policies,
        approvals,
        operations,
        sandboxes,
        providers,
        identity,
        oidc,
        auth,
        routes: breakwater_server::RouteTable::default(),
        hsts: args.hsts,
        registration: args.allow_registration,
        trusted_proxies: breakwater_server::limits::TrustedProxies::parse(&args.trusted_proxies)
            .map_err(|e| anyhow::anyhow!("--trusted-proxy: {e}"))?,
        rate_limiter: breakwater_server::limits::RateLimiter::new(args.rate_limit),
        host_guard: args.host_guard()?,
        list_cache: Arc::default(),
        monitor: monitor_settings,
        started: Instant::now(),
        closing: tokio_util::sync::CancellationToken::new(),
    };
    Ok(Running { state, stop, monitor, _lock: lock })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Binds first, so a taken port fails before any database or key file is
/// created.
async fn listen(args: &ServerArgs) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = SocketAddr::new(args.bind, args.port);
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => " (the port is in use: pass --port)",
            std::io::ErrorKind::AddrNotAvailable => " (no interface has that address: check --bind)",
            std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges: pass --port)",
            _ => "",
        };
        anyhow::anyhow!("cannot listen on {addr}: {e}{hint}")
    })
}

async fn serve(args: ServerArgs, prepared: Option<(Running, tokio::net::TcpListener)>) -> anyhow::Result<()> {
    args.check()?;
    let (running, listener) = if let Some(p) = prepared {
        p
    } else {
        let listener = listen(&args).await?;
        (start(&args, &args.data_dir(None)?).await?, listener)
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "breakwater listening");
    println!("Breakwater listening on http://{}", listener.local_addr()?);
    let operations = running.state.operations.clone();
    breakwater_server::serve(listener, running.state, shutdown_signal()).await?;
    running.stop.cancel();
    // Work still running ends as cancelled rather than as an orphan.
    operations.shutdown().await;
    let _ = running.monitor.await;
    tracing::info!("breakwater stopped");
    Ok(())
}

/// The policy the demo sandboxes start with.
fn starter_policy() -> Policy {
    let mut policy = Policy::default();
    policy.network_policies.insert(
        "github".into(),
        NetworkRule {
            name: "github".into(),
            endpoints: vec![NetworkEndpoint { host: "api.github.com".into(), port: 443, ..Default::default() }],
            binaries: vec![NetworkBinary { path: "/usr/bin/git".into() }],
        },
    );
    policy
}

async fn demo(mut args: ServerArgs) -> anyhow::Result<()> {
    // The demo is for one person on this machine: no sign-in.
    args.no_auth = true;
    args.check()?;
    let listener = listen(&args).await?;
    let temp = if args.store.data_dir.is_none() { Some(tempfile::tempdir()?) } else { None };
    let data_dir = args.data_dir(temp.as_ref())?;
    let pki = SimPki::mint(&[])?;
    let client = pki.client.clone().context("minted PKI has a client pair")?;
    let sim = Sim::start(SimConfig {
        listen: "127.0.0.1:0".parse()?,
        tls: SimTls::Mtls(pki.clone()),
        timing: Timing { ready_delay: Duration::from_millis(500), ..Timing::default() },
        version: openshell_sim::DEFAULT_VERSION.into(),
        advertise_host: None,
    })
    .await?;
    let running = start(&args, &data_dir).await?;
    let actor = Actor::system();
    let name = GatewayName::parse("demo")?;
    if running.state.gateways.get(&name).await.is_ok() {
        // A kept --data-dir from an earlier demo: the old sim is gone.
        running.state.gateways.unregister(&actor, &name).await?;
    }
    let (record, test) = running
        .state
        .gateways
        .register(
            &actor,
            RegisterGateway {
                name: "demo".into(),
                endpoint: sim.endpoint(),
                ca_cert: Some(pki.ca_pem.clone()),
                client_cert: Some(client.cert_pem.clone()),
                client_key: Some(Secret::new(client.key_pem.clone())),
                metadata: [("runtime".to_owned(), serde_json::json!("simulated"))].into_iter().collect(),
                description: Some("openshell-sim, started by `breakwater demo`".into()),
                labels: [("env".to_owned(), "demo".to_owned())].into_iter().collect(),
                ..RegisterGateway::default()
            },
        )
        .await?;
    if !test.success {
        bail!("the demo gateway did not answer: {}", test.error.unwrap_or_default());
    }
    for sandbox in ["agent-1", "agent-2"] {
        let new = NewSandbox {
            name: Some(SandboxName::parse(sandbox)?),
            labels: Labels::parse([("demo", "true")])?,
            policy: Some(starter_policy()),
            ..Default::default()
        };
        running.state.gateways.with_gateway(&name, |gw| async move { gw.create_sandbox(&new).await }).await?;
    }
    sim.start_denial_generator(Duration::from_secs(15));
    println!("demo gateway {} registered: {} ({})", record.name, record.endpoint, test.version.unwrap_or_default());
    println!("sandboxes agent-1 and agent-2 created; the gateway drafts a policy proposal every 15 s");
    println!("data directory: {}{}", data_dir.display(), if temp.is_some() { " (temporary)" } else { "" });
    println!("try: curl http://{}:{}/api/gateway/list", args.bind, args.port);
    let result = serve(args, Some((running, listener))).await;
    sim.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn durations_parse_with_or_without_units() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("1").unwrap(), Duration::from_secs(1));
        assert_eq!(super::parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(super::parse_duration("800ms").unwrap(), Duration::from_millis(800));
        assert_eq!(super::parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert!(super::parse_duration("soon").is_err());
        assert!(super::parse_duration("-1").is_err());
    }

    #[test]
    fn database_urls_never_show_passwords() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:REDACTED@h/db");
        assert_eq!(
            redact_url("postgres://u:pw@h/db?password=qs&sslmode=require"),
            "postgres://u:REDACTED@h/db?password=REDACTED&sslmode=require"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("host=h password=pw"), "REDACTED (not a URL)");
    }
}
