//! S13 end to end: the real `breakwater serve` is killed with SIGKILL while
//! ten sandbox creates run, then started again on the same data directory.
//! No operation may be left pending or running. Also: one server per
//! SQLite data directory.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use openshell_sim::{ProvisioningMode, Sim, SimConfig};
use serde_json::{Value, json};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start(data: &Path, port: u16, http: &reqwest::Client) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--port", &port.to_string(), "--monitor-interval", "60", "--no-auth"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("breakwater starts");
    let server = Server(child);
    for _ in 0..200 {
        if http.get(format!("http://127.0.0.1:{port}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("breakwater did not come up on port {port}");
}

async fn count(http: &reqwest::Client, base: &str, status: &str) -> u64 {
    let r = http.get(format!("{base}/api/operations?status={status}")).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    body["total"].as_u64().unwrap_or_else(|| panic!("{body}"))
}

#[tokio::test]
async fn s13_sigkill_during_ten_creates_then_restart_leaves_none_pending_or_running() {
    let sim = Sim::start(SimConfig::for_tests().unwrap()).await.unwrap();
    // The creates wait for a READY that never comes: they are mid-flight when the kill lands.
    sim.faults().set_provisioning(ProvisioningMode::Hang);
    let pki = sim.pki().unwrap();
    let client = pki.client.as_ref().unwrap();
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");

    let mut server = start(data.path(), port, &http).await;
    let register = json!({
        "name": "gw", "endpoint": sim.endpoint(),
        "ca_cert": pki.ca_pem, "client_cert": client.cert_pem, "client_key": client.key_pem,
    });
    let r = http.post(format!("{base}/api/gateway/register")).json(&register).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    for i in 0..10 {
        let r = http
            .post(format!("{base}/api/gateways/gw/sandboxes"))
            .json(&json!({"name": format!("s13-{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    for _ in 0..200 {
        if count(&http, &base, "running").await == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&http, &base, "running").await, 10, "all ten are under way");

    // SIGKILL: no shutdown path runs.
    server.0.kill().unwrap();
    server.0.wait().unwrap();

    let _server = start(data.path(), port, &http).await;
    for status in ["pending", "running", "cancelling"] {
        assert_eq!(count(&http, &base, status).await, 0, "{status}");
    }
    let r = http.get(format!("{base}/api/operations?status=failed")).send().await.unwrap();
    let failed: Value = r.json().await.unwrap();
    let ops = failed["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 10, "{failed}");
    assert!(ops.iter().all(|o| o["error_code"] == "orphaned"), "{failed}");
    // No operation holds the names any more: a second create is refused
    // only because the gateway made the sandbox, not as "in progress".
    let r =
        http.post(format!("{base}/api/gateways/gw/sandboxes")).json(&json!({"name": "s13-0"})).send().await.unwrap();
    let again: Value = r.json().await.unwrap();
    assert_ne!(again["code"], "PRECONDITION_FAILED", "{again}");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_second_server_on_the_same_sqlite_directory_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let first = start(data.path(), free_port(), &http).await;
    let second = Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--port", &free_port().to_string(), "--no-auth"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another breakwater server is using"), "{err}");
    assert!(err.contains(&format!("pid {}", first.0.id())), "names the holder: {err}");
    drop(first);
}
