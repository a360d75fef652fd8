//! Import from the OpenShell CLI's config directory (cases G03, G04) and the
//! local gateway lifecycle, driven through stand-in `docker` and `openshell`
//! executables that record their arguments (no Docker engine runs here).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_domain::SandboxName;
use breakwater_domain::registry::{AuditFilter, GatewayName, GatewayStatus};
use breakwater_domain::sandbox::NewSandbox;
use breakwater_gateway::Gateway;
use breakwater_services::{
    Actor, AuditService, CreateLocalGateway, GatewayService, LocalError, LocalGatewayManager, LocalTools, ServiceError,
};
use breakwater_store::Store;
use breakwater_store::testing::sqlite;
use openshell_sim::{Sim, SimConfig, SimPki};

fn name(raw: &str) -> GatewayName {
    GatewayName::parse(raw).unwrap()
}

fn services(store: &Arc<dyn Store>) -> (GatewayService, AuditService) {
    let audit = AuditService::new(store.clone());
    (GatewayService::new(store.clone(), audit.clone()), audit)
}

/// Writes `<dir>/gateways/<gw>/` as the OpenShell CLI does.
fn write_cli_gateway(dir: &Path, gw: &str, endpoint: &str, pki: &SimPki) {
    let entry = dir.join("gateways").join(gw);
    std::fs::create_dir_all(entry.join("mtls")).unwrap();
    let meta = serde_json::json!({"name": gw, "gateway_endpoint": format!("https://{endpoint}"), "is_remote": false, "gpu": false});
    std::fs::write(entry.join("metadata.json"), meta.to_string()).unwrap();
    let client = pki.client.as_ref().unwrap();
    std::fs::write(entry.join("mtls/ca.crt"), &pki.ca_pem).unwrap();
    std::fs::write(entry.join("mtls/tls.crt"), &client.cert_pem).unwrap();
    std::fs::write(entry.join("mtls/tls.key"), &client.key_pem).unwrap();
}

async fn audit_count(audit: &AuditService) -> u64 {
    audit.list(&AuditFilter::default(), 1000, 0).await.unwrap().1
}

#[tokio::test]
async fn g03_a_corrupt_metadata_json_is_reported_by_name_and_the_others_import() {
    let sim = Sim::start(SimConfig::for_tests().unwrap()).await.unwrap();
    let pki = sim.pki().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    write_cli_gateway(dir.path(), "alpha", &sim.endpoint(), &pki);
    write_cli_gateway(dir.path(), "broken", &sim.endpoint(), &pki);
    std::fs::write(dir.path().join("gateways/broken/metadata.json"), "{\"gateway_endpoint\": ").unwrap();
    write_cli_gateway(dir.path(), "gamma", &sim.endpoint(), &pki);
    // A key file far beyond any real PEM is skipped without being read whole.
    write_cli_gateway(dir.path(), "huge", &sim.endpoint(), &pki);
    std::fs::write(dir.path().join("gateways/huge/mtls/tls.key"), vec![b'A'; 200 * 1024]).unwrap();
    std::fs::create_dir_all(dir.path().join("gateways/-bad-name")).unwrap();

    let store = sqlite().await;
    let (svc, _) = services(&store.store);
    let report = svc.import_openshell_config(&Actor::system(), dir.path()).await.unwrap();
    assert_eq!(report.imported, vec!["alpha", "gamma"]);
    let skipped: Vec<_> = report.skipped.iter().map(|p| (p.name.as_str(), p.reason.as_str())).collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert_eq!(skipped[0].0, "-bad-name");
    assert_eq!(skipped[1].0, "broken");
    assert!(skipped[1].1.contains("metadata.json is not valid JSON"), "{skipped:?}");
    assert_eq!(skipped[2].0, "huge");
    assert!(skipped[2].1.contains("mtls/tls.key is larger than 64 KiB"), "{skipped:?}");
    for gw in ["alpha", "gamma"] {
        let rec = svc.get(&name(gw)).await.unwrap();
        assert_eq!(rec.health.status, GatewayStatus::Connected, "{gw}");
        assert_eq!(rec.metadata["source"], "openshell-cli");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn g04_re_import_changes_nothing_and_changed_certificates_are_refused() {
    let sim = Sim::start(SimConfig::for_tests().unwrap()).await.unwrap();
    let pki = sim.pki().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    write_cli_gateway(dir.path(), "alpha", &sim.endpoint(), &pki);
    write_cli_gateway(dir.path(), "beta", &sim.endpoint(), &pki);

    let store = sqlite().await;
    let (svc, audit) = services(&store.store);
    let first = svc.import_openshell_config(&Actor::system(), dir.path()).await.unwrap();
    assert_eq!(first.imported, vec!["alpha", "beta"]);
    let entries = audit_count(&audit).await;
    let alpha_before = svc.get(&name("alpha")).await.unwrap();

    let second = svc.import_openshell_config(&Actor::system(), dir.path()).await.unwrap();
    assert!(second.imported.is_empty() && second.conflicts.is_empty() && second.skipped.is_empty(), "{second:?}");
    assert_eq!(second.unchanged, vec!["alpha", "beta"]);
    assert_eq!(audit_count(&audit).await, entries, "a run that changes nothing writes nothing");

    // The gateway was re-created: new CA and client certificate on disk.
    let fresh = SimPki::mint(&[]).unwrap();
    write_cli_gateway(dir.path(), "alpha", &sim.endpoint(), &fresh);
    let third = svc.import_openshell_config(&Actor::system(), dir.path()).await.unwrap();
    assert!(third.imported.is_empty());
    assert_eq!(third.unchanged, vec!["beta"]);
    assert_eq!(third.conflicts.len(), 1);
    assert_eq!(third.conflicts[0].name, "alpha");
    let reason = &third.conflicts[0].reason;
    assert!(reason.contains("CA certificate sha256") && reason.contains("client certificate sha256"), "{reason}");
    assert!(reason.contains("not replaced"), "{reason}");
    let alpha_after = svc.get(&name("alpha")).await.unwrap();
    assert_eq!(alpha_after.ca_cert, alpha_before.ca_cert, "the stored CA is untouched");
    assert_eq!(alpha_after.client_cert, alpha_before.client_cert);
    sim.shutdown().await;
}

#[tokio::test]
async fn importing_a_directory_that_does_not_exist_imports_nothing() {
    let store = sqlite().await;
    let (svc, _) = services(&store.store);
    let dir = tempfile::tempdir().unwrap();
    let report = svc.import_openshell_config(&Actor::system(), &dir.path().join("nope")).await.unwrap();
    assert!(report.imported.is_empty() && report.skipped.is_empty());
}

// ---------------------------------------------------------------- local

/// A directory of stand-in executables plus the state they keep.
struct StandIns {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    state: PathBuf,
}

const DOCKER: &str = r#"#!/bin/sh
S="__STATE__"
echo "docker $*" >> "$S/calls.log"
case "$1" in
  info)
    if [ -f "$S/daemon-down" ]; then
      echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2
      exit 1
    fi
    echo "28.2.2-standin" ;;
  inspect)
    if [ -f "$S/containers/$4" ]; then cat "$S/containers/$4"; else echo "Error: No such object: $4" >&2; exit 1; fi ;;
  start|stop)
    if [ -f "$S/slow" ]; then sleep 30; fi
    if [ "$1" = start ]; then echo running > "$S/containers/$2"; else echo exited > "$S/containers/$2"; fi
    echo "$2" ;;
  *) echo "docker: unknown command $1" >&2; exit 2 ;;
esac
"#;

const OPENSHELL: &str = r#"#!/bin/sh
S="__STATE__"
echo "openshell $*" >> "$S/calls.log"
if [ "$1" = "--version" ]; then echo "openshell 0.1.5"; exit 0; fi
if [ "$1" = gateway ] && [ "$2" = start ]; then
  shift 2
  while [ $# -gt 0 ]; do
    case "$1" in --name) name="$2"; shift 2 ;; *) shift ;; esac
  done
  if [ -f "$S/fail-start" ]; then echo "Error: image pull failed: toomanyrequests" >&2; exit 1; fi
  d="$S/config/gateways/$name"
  mkdir -p "$d/mtls"
  cp "$S/pki/ca.crt" "$S/pki/tls.crt" "$S/pki/tls.key" "$d/mtls/"
  printf '{"name":"%s","gateway_endpoint":"https://%s","is_remote":false}' "$name" "$(cat "$S/sim-endpoint")" > "$d/metadata.json"
  echo running > "$S/containers/openshell-cluster-$name"
  echo "Gateway $name is ready"
  exit 0
fi
if [ "$1" = gateway ] && [ "$2" = destroy ]; then
  rm -rf "$S/config/gateways/$4" "$S/containers/openshell-cluster-$4"
  echo "Gateway $4 destroyed"
  exit 0
fi
echo "openshell: unknown command" >&2
exit 2
"#;

impl StandIns {
    fn new(sim: &Sim) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let state = dir.path().join("state");
        for d in [&bin, &state.join("containers"), &state.join("config"), &state.join("pki")] {
            std::fs::create_dir_all(d).unwrap();
        }
        for (tool, text) in [("docker", DOCKER), ("openshell", OPENSHELL)] {
            let path = bin.join(tool);
            std::fs::write(&path, text.replace("__STATE__", &state.display().to_string())).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let pki = sim.pki().unwrap();
        let client = pki.client.as_ref().unwrap();
        std::fs::write(state.join("pki/ca.crt"), &pki.ca_pem).unwrap();
        std::fs::write(state.join("pki/tls.crt"), &client.cert_pem).unwrap();
        std::fs::write(state.join("pki/tls.key"), &client.key_pem).unwrap();
        std::fs::write(state.join("sim-endpoint"), sim.endpoint()).unwrap();
        Self { _dir: dir, bin, state }
    }

    fn tools(&self) -> LocalTools {
        LocalTools {
            // Stand-ins first; the system directories for sh, cat, sleep, id.
            search_path: Some(format!("{}:/usr/bin:/bin", self.bin.display()).into()),
            openshell_config_dir: Some(self.state.join("config")),
            probe_timeout: Duration::from_secs(5),
            action_timeout: Duration::from_secs(5),
            create_timeout: Duration::from_secs(10),
        }
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.join("calls.log")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    fn set_container(&self, gw: &str, status: &str) {
        std::fs::write(self.state.join(format!("containers/openshell-cluster-{gw}")), status).unwrap();
    }

    fn flag(&self, flag: &str) {
        std::fs::write(self.state.join(flag), "").unwrap();
    }
}

struct Fixture {
    sim: Sim,
    standins: StandIns,
    _store: breakwater_store::testing::TestStore,
    gateways: GatewayService,
    audit: AuditService,
    local: LocalGatewayManager,
}

async fn fixture() -> Fixture {
    let sim = Sim::start(SimConfig::for_tests().unwrap()).await.unwrap();
    let standins = StandIns::new(&sim);
    let store = sqlite().await;
    let (gateways, audit) = services(&store.store);
    let local = LocalGatewayManager::new(gateways.clone(), standins.tools());
    Fixture { sim, standins, _store: store, gateways, audit, local }
}

#[tokio::test]
async fn diagnostics_without_any_tool_say_what_to_install() {
    let (gateways, _) = services(&sqlite().await.store);
    let empty = tempfile::tempdir().unwrap();
    let tools = LocalTools { search_path: Some(empty.path().as_os_str().to_owned()), ..LocalTools::default() };
    let d = LocalGatewayManager::new(gateways, tools).diagnostics().await;
    assert!(!d.docker_installed && !d.docker_daemon_running && !d.openshell_installed);
    assert_eq!(d.advice.len(), 2, "{:?}", d.advice);
    assert!(d.advice[0].contains("install Docker"));
    assert!(d.advice[1].contains("install the OpenShell CLI"));
}

#[tokio::test]
async fn diagnostics_report_versions_and_a_stopped_daemon() {
    let f = fixture().await;
    let d = f.local.diagnostics().await;
    assert!(d.docker_installed && d.docker_daemon_running && d.docker_accessible);
    assert_eq!(d.docker_version.as_deref(), Some("28.2.2-standin"));
    assert_eq!(d.openshell_version.as_deref(), Some("openshell 0.1.5"));
    assert!(d.advice.is_empty(), "{:?}", d.advice);
    assert!(!d.user_groups.is_empty(), "id -Gn ran");
    assert_ne!(d.user, "unknown", "from $USER or id -un");

    f.standins.flag("daemon-down");
    let d = f.local.diagnostics().await;
    assert!(d.docker_installed && !d.docker_daemon_running);
    assert_eq!(d.docker_error.as_deref(), Some("the Docker daemon is not running"));
    assert!(d.advice.iter().any(|a| a.contains("systemctl start docker")), "{:?}", d.advice);
    // Lifecycle actions refuse with the same advice.
    let err = f.local.start(&Actor::system(), &name("gw")).await.unwrap_err();
    assert!(matches!(&err, ServiceError::Local(LocalError::DockerUnavailable { .. })), "{err:?}");
    assert!(err.to_string().contains("start it first"), "{err}");
    f.sim.shutdown().await;
}

#[tokio::test]
async fn create_runs_the_cli_then_registers_the_gateway_it_wrote() {
    let f = fixture().await;
    let input = CreateLocalGateway { name: "dev".into(), port: Some(18123), remote_host: None, gpu: true };
    let result = f.local.create(&Actor::local_admin(None), input).await.unwrap();
    assert!(result.success);
    assert_eq!(result.connected, Some(true), "{result:?}");
    assert!(
        f.standins.calls().contains(&"openshell gateway start --name dev --port 18123 --gpu".to_owned()),
        "{:?}",
        f.standins.calls()
    );
    let rec = f.gateways.get(&name("dev")).await.unwrap();
    assert_eq!(rec.health.status, GatewayStatus::Connected);
    let (entries, _) = f.audit.list(&AuditFilter::default(), 100, 0).await.unwrap();
    let actions: Vec<_> = entries.iter().map(|e| e.action.as_str()).collect();
    assert!(actions.contains(&"gateway.local.create") && actions.contains(&"gateway.register"), "{actions:?}");

    // The name is taken now.
    let again = CreateLocalGateway { name: "dev".into(), ..CreateLocalGateway::default() };
    assert!(matches!(f.local.create(&Actor::system(), again).await, Err(ServiceError::Conflict { .. })));
    f.sim.shutdown().await;
}

#[tokio::test]
async fn a_failing_cli_is_an_error_with_its_message_and_is_audited() {
    let f = fixture().await;
    f.standins.flag("fail-start");
    let input = CreateLocalGateway { name: "dev".into(), port: Some(18124), ..CreateLocalGateway::default() };
    let err = f.local.create(&Actor::system(), input).await.unwrap_err();
    match &err {
        ServiceError::Local(LocalError::CommandFailed { message, .. }) => {
            assert!(message.contains("toomanyrequests"), "{message}");
        }
        other => panic!("expected a failed command, got {other:?}"),
    }
    let (entries, _) = f.audit.list(&AuditFilter::default(), 100, 0).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].action, "gateway.local.create");
    assert_eq!(entries[0].detail["success"], false);
    assert!(f.gateways.get(&name("dev")).await.is_err(), "nothing registered");
    f.sim.shutdown().await;
}

#[tokio::test]
async fn start_stop_restart_use_the_container_and_retest_the_connection() {
    let f = fixture().await;
    write_cli_gateway(&f.standins.state.join("config"), "gw", &f.sim.endpoint(), f.sim.pki().unwrap());
    f.gateways.import_openshell_config(&Actor::system(), &f.standins.state.join("config")).await.unwrap();

    f.standins.set_container("gw", "exited");
    let r = f.local.start(&Actor::system(), &name("gw")).await.unwrap();
    assert_eq!(r.output, "container openshell-cluster-gw started");
    assert_eq!(r.connected, Some(true));
    let r = f.local.start(&Actor::system(), &name("gw")).await.unwrap();
    assert_eq!(r.output, "the gateway is already running");

    let r = f.local.stop(&Actor::system(), &name("gw")).await.unwrap();
    assert_eq!(r.output, "container openshell-cluster-gw stopped");
    let r = f.local.stop(&Actor::system(), &name("gw")).await.unwrap();
    assert_eq!(r.output, "the gateway is already stopped");

    let r = f.local.restart(&Actor::system(), &name("gw")).await.unwrap();
    assert!(r.output.ends_with("container openshell-cluster-gw started"), "{}", r.output);

    // No container at all: the OpenShell CLI starts one.
    let r = f.local.start(&Actor::system(), &name("other")).await.unwrap();
    assert_eq!(r.connected, None, "not registered, nothing to test");
    let calls = f.standins.calls();
    for want in [
        "docker start openshell-cluster-gw",
        "docker stop openshell-cluster-gw",
        "docker inspect -f {{.State.Status}} openshell-cluster-gw",
        "openshell gateway start --name other",
    ] {
        assert!(calls.iter().any(|c| c == want), "{want} missing from {calls:?}");
    }
    let (entries, _) = f
        .audit
        .list(&AuditFilter { action: Some("gateway.local.stop".into()), ..AuditFilter::default() }, 100, 0)
        .await
        .unwrap();
    assert_eq!(entries.len(), 2, "one entry per stop");
    f.sim.shutdown().await;
}

#[tokio::test]
async fn a_hanging_cli_is_stopped_at_its_timeout() {
    let f = fixture().await;
    let mut tools = f.standins.tools();
    tools.action_timeout = Duration::from_millis(500);
    let local = LocalGatewayManager::new(f.gateways.clone(), tools);
    f.standins.set_container("gw", "running");
    f.standins.flag("slow");
    let started = Instant::now();
    let err = local.stop(&Actor::system(), &name("gw")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(
        matches!(&err, ServiceError::Local(LocalError::Timeout { command, .. }) if command == "docker stop openshell-cluster-gw"),
        "{err:?}"
    );
    f.sim.shutdown().await;
}

#[tokio::test]
async fn destroy_refuses_while_sandboxes_remain_unless_forced() {
    let f = fixture().await;
    write_cli_gateway(&f.standins.state.join("config"), "gw", &f.sim.endpoint(), f.sim.pki().unwrap());
    f.gateways.import_openshell_config(&Actor::system(), &f.standins.state.join("config")).await.unwrap();
    let sandbox = NewSandbox { name: Some(SandboxName::parse("agent-1").unwrap()), ..NewSandbox::default() };
    f.gateways.with_gateway(&name("gw"), |gw| async move { gw.create_sandbox(&sandbox).await }).await.unwrap();

    let err = f.local.destroy(&Actor::system(), &name("gw"), false).await.unwrap_err();
    assert!(err.to_string().contains("still has 1 sandbox(es)") && err.to_string().contains("force=true"), "{err}");
    assert!(!f.standins.calls().iter().any(|c| c.starts_with("openshell gateway destroy")));

    let r = f.local.destroy(&Actor::system(), &name("gw"), true).await.unwrap();
    assert!(r.success);
    assert!(f.standins.calls().contains(&"openshell gateway destroy --name gw".to_owned()));
    assert!(f.gateways.get(&name("gw")).await.is_err(), "unregistered with it");
    let (entries, _) = f
        .audit
        .list(&AuditFilter { action: Some("gateway.local.destroy".into()), ..AuditFilter::default() }, 10, 0)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].detail["force"], true);
    f.sim.shutdown().await;
}

#[tokio::test]
async fn destroy_never_touches_a_gateway_the_cli_does_not_manage() {
    let f = fixture().await;
    // Registered directly (a remote gateway): no entry in the CLI's config dir.
    let pki = f.sim.pki().unwrap();
    let client = pki.client.as_ref().unwrap();
    f.gateways
        .register(
            &Actor::system(),
            breakwater_services::RegisterGateway {
                name: "remote".into(),
                endpoint: f.sim.endpoint(),
                ca_cert: Some(pki.ca_pem.clone()),
                client_cert: Some(client.cert_pem.clone()),
                client_key: Some(breakwater_domain::Secret::new(client.key_pem.clone())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let sandbox = NewSandbox { name: Some(SandboxName::parse("keep-me").unwrap()), ..NewSandbox::default() };
    f.gateways.with_gateway(&name("remote"), |gw| async move { gw.create_sandbox(&sandbox).await }).await.unwrap();

    let err = f.local.destroy(&Actor::system(), &name("remote"), true).await.unwrap_err();
    assert!(
        matches!(&err, ServiceError::Precondition { message } if message.contains("unregister it instead")),
        "{err:?}"
    );
    assert_eq!(f.sim.sandbox_count(), 1, "nothing deleted");
    assert!(f.gateways.get(&name("remote")).await.is_ok(), "still registered");
    assert!(!f.standins.calls().iter().any(|c| c.contains("destroy")));
    f.sim.shutdown().await;
}

#[tokio::test]
async fn a_missing_openshell_cli_is_a_clear_error() {
    let f = fixture().await;
    std::fs::remove_file(f.standins.bin.join("openshell")).unwrap();
    let tools = LocalTools { search_path: Some(f.standins.bin.as_os_str().to_owned()), ..f.standins.tools() };
    let local = LocalGatewayManager::new(f.gateways.clone(), tools);
    let err = local.destroy(&Actor::system(), &name("gw"), false).await.unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("the openshell CLI was not found on PATH; install the OpenShell CLI"), "{text}");
    f.sim.shutdown().await;
}
