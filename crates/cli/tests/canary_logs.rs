//! A provider credential never reaches Breakwater's logs, even at the most
//! verbose level: the real server, its real log output, grepped.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use openshell_sim::{Sim, SimConfig};
use serde_json::json;

const CANARY: &str = "sk-canary-logs-93e1b7";

#[tokio::test]
async fn a_provider_credential_never_appears_in_a_log_line() {
    let sim = Sim::start(SimConfig::for_tests().unwrap()).await.unwrap();
    let pki = sim.pki().unwrap();
    let client = pki.client.as_ref().unwrap();
    let data = tempfile::tempdir().unwrap();
    // A file, not a pipe: trace output would fill a pipe nobody reads yet and
    // block the server.
    let log_path = data.path().join("server.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args(["serve", "--no-auth", "--port", &port.to_string(), "--monitor-interval", "60", "--data-dir"])
        .arg(data.path())
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let register = json!({
        "name": "gw", "endpoint": sim.endpoint(),
        "ca_cert": pki.ca_pem, "client_cert": client.cert_pem, "client_key": client.key_pem,
    });
    assert_eq!(http.post(format!("{base}/api/gateway/register")).json(&register).send().await.unwrap().status(), 201);
    let providers = format!("{base}/api/gateways/gw/providers");
    let created = http
        .post(&providers)
        .json(&json!({"name": "claude", "type": "anthropic", "api_key": CANARY}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let updated =
        http.put(format!("{providers}/claude")).json(&json!({"credentials": {"EXTRA": CANARY}})).send().await.unwrap();
    assert_eq!(updated.status(), 200);
    // A refused request with the canary in it, too.
    let refused =
        http.post(&providers).json(&json!({"name": "Bad Name", "type": "x", "api_key": CANARY})).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(!refused.text().await.unwrap().contains(CANARY));
    // A credential in the wrong shape: the schema error names the type only.
    let misplaced = http.put(format!("{providers}/claude")).json(&json!({"credentials": CANARY})).send().await.unwrap();
    assert_eq!(misplaced.status(), 422);
    let text = misplaced.text().await.unwrap();
    assert!(text.contains("credentials") && !text.contains(CANARY), "{text}");
    http.delete(format!("{providers}/claude")).send().await.unwrap();

    server.kill().unwrap();
    server.wait().unwrap();
    let mut logs = String::new();
    std::fs::File::open(&log_path).unwrap().read_to_string(&mut logs).unwrap();
    assert!(logs.contains("request"), "the log was captured: {} bytes", logs.len());
    let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(CANARY)).collect();
    assert!(leaks.is_empty(), "the credential is in the log: {leaks:#?}");
    sim.shutdown().await;
}
