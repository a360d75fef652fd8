//! CORS is off unless configured; `--cors-origin` lets exactly those
//! origins' pages call the API (preflights answered, writes accepted), and
//! every other origin stays refused. Against the real `breakwater serve`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn serve(extra: &[&str], data: &std::path::Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    // Owned by the guard at once, so it is reaped on every path.
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_breakwater"))
            .args(["serve", "--no-auth", "--port", &port.to_string(), "--monitor-interval", "60", "--data-dir"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        base,
    );
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("{}/healthz", server.1)).send().await.is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("breakwater did not start");
}

#[tokio::test]
async fn cors_is_off_unless_configured_and_then_only_for_those_origins() {
    let http = reqwest::Client::new();
    let preflight = |base: &str, origin: &str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}/api/gateway/register"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let write = |base: &str, origin: &str| {
        http.post(format!("{base}/api/audit/cleanup"))
            .header("origin", origin)
            .json(&serde_json::json!({"older_than_days": 30}))
            .send()
    };

    let off_dir = tempfile::tempdir().unwrap();
    let off = serve(&[], off_dir.path()).await;
    let r = preflight(&off.1, "https://ops.example.com").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"), "no CORS by default");
    assert_eq!(write(&off.1, "https://ops.example.com").await.unwrap().status(), 403);

    let on_dir = tempfile::tempdir().unwrap();
    let on = serve(&["--cors-origin", "https://ops.example.com"], on_dir.path()).await;
    let r = preflight(&on.1, "https://ops.example.com").await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], "https://ops.example.com");
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    let r = write(&on.1, "https://ops.example.com").await.unwrap();
    assert_eq!(r.status(), 200, "the configured origin may write");
    assert_eq!(r.headers()["access-control-allow-origin"], "https://ops.example.com");
    let r = preflight(&on.1, "https://evil.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    assert_eq!(write(&on.1, "https://evil.example").await.unwrap().status(), 403, "others stay out");

    let bad = Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args(["serve", "--no-auth", "--cors-origin", "ops.example.com/path", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--cors-origin"), "{}", String::from_utf8_lossy(&bad.stderr));
}
