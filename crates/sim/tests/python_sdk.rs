//! Conformance with an independent client: the official OpenShell Python SDK
//! (PyPI `openshell==0.1.5`). `scripts/test` installs it into `.venv`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use openshell_sim::{Sim, SimConfig, SimTls};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The Python that has the SDK: `$BREAKWATER_PYTHON`, else `.venv/bin/python`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("BREAKWATER_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "the OpenShell Python SDK is not installed: run scripts/test (it creates .venv), or set BREAKWATER_PYTHON"
    );
    venv
}

fn run(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(python()).args(args).output().expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python failed:\n{text}");
    text
}

#[test]
fn our_protos_match_the_sdk_descriptors_field_for_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.bin");
    std::fs::write(&path, breakwater_wire::FILE_DESCRIPTOR_SET).unwrap();
    let script = workspace_root().join("tests/conformance/compare_descriptors.py");
    let out = run(&[script.as_os_str(), path.as_os_str()]);
    assert!(out.contains("compared 263 messages"), "{out}");
    assert!(!out.contains("MISMATCH"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_drives_the_sim_over_mtls() {
    let mut config = SimConfig::for_tests().unwrap();
    config.timing.ready_delay = Duration::from_millis(300);
    let sim = Sim::start(config).await.unwrap();
    let SimTls::Mtls(pki) = sim.tls() else { panic!("mTLS expected") };
    let dir = tempfile::tempdir().unwrap();
    pki.write(dir.path()).unwrap();
    let script = workspace_root().join("tests/conformance/sdk_conformance.py");
    let endpoint = sim.endpoint();
    let dir_path = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        run(&[script.as_os_str(), std::ffi::OsStr::new(&endpoint), dir_path.as_os_str()])
    })
    .await
    .unwrap();
    assert!(out.contains("10 passed, 0 failed"), "{out}");
    sim.shutdown().await;
}
