//! `breakwater user …` and `breakwater token …` against the database
//! directly, then the server honouring what they made.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn bw(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_breakwater"));
    cmd.args(args).arg("--data-dir").arg(data).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("breakwater runs")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn users_and_tokens_made_at_the_console_work_against_the_server() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let pw = [("BREAKWATER_USER_PASSWORD", "a long enough passphrase")];
    ok(&bw(d, &["user", "create", "Root@Example.com", "--role", "admin"], &pw));
    ok(&bw(d, &["user", "create", "ops@example.com", "--role", "operator"], &pw));
    let list = ok(&bw(d, &["user", "list"], &[]));
    assert!(list.contains("root@example.com") && list.contains("operator"), "{list}");
    // Errors say what is wrong and exit non-zero.
    let dup = bw(d, &["user", "create", "root@example.com"], &pw);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"), "{dup:?}");
    let demote = bw(d, &["user", "set-role", "root@example.com", "viewer"], &[]);
    assert!(!demote.status.success() && String::from_utf8_lossy(&demote.stderr).contains("last admin"), "{demote:?}");
    let bad = bw(d, &["user", "set-role", "ops@example.com", "root"], &[]);
    assert!(!bad.status.success());

    let key =
        ok(&bw(d, &["token", "create", "ci", "--role", "admin", "--expires-in-days", "30"], &[])).trim().to_owned();
    assert!(key.starts_with("bw_"), "{key}");
    let tokens = ok(&bw(d, &["token", "list"], &[]));
    assert!(tokens.contains("ci") && !tokens.contains(&key), "the list never shows a key: {tokens}");
    let db = std::fs::read(d.join("breakwater.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(&key), "only a digest is stored");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_breakwater"))
        .args(["serve", "--port", &port.to_string(), "--data-dir"])
        .arg(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/gateway/list");
    let mut status = 0;
    for _ in 0..100 {
        if let Ok(r) = http.get(&url).bearer_auth(&key).send().await {
            status = r.status().as_u16();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "the console's key works against the server");
    let rotated = ok(&bw(d, &["token", "rotate", "ci"], &[])).trim().to_owned();
    assert_eq!(http.get(&url).bearer_auth(&key).send().await.unwrap().status().as_u16(), 401, "the old key is gone");
    assert_eq!(http.get(&url).bearer_auth(&rotated).send().await.unwrap().status().as_u16(), 200);
    ok(&bw(d, &["token", "revoke", "ci"], &[]));
    assert_eq!(http.get(&url).bearer_auth(&rotated).send().await.unwrap().status().as_u16(), 401);
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn rotate_key_replaces_the_key_file_and_the_data_stays_readable() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    ok(&bw(
        d,
        &["user", "create", "root@example.com", "--role", "admin"],
        &[("BREAKWATER_USER_PASSWORD", "a long enough passphrase")],
    ));
    let before = std::fs::read_to_string(d.join("secret.key")).unwrap();
    let out = ok(&bw(d, &["config", "rotate-key"], &[]));
    assert!(out.contains("re-encrypted"), "{out}");
    let after = std::fs::read_to_string(d.join("secret.key")).unwrap();
    assert_ne!(before, after);
    assert!(!out.contains(after.trim()), "the new key is not printed when it went to the key file");
    assert!(ok(&bw(d, &["user", "list"], &[])).contains("root@example.com"), "opens with the new key");
    // The old key is refused with a clear error.
    let old = bw(d, &["user", "list"], &[("BREAKWATER_SECRET_KEY", before.trim())]);
    assert!(!old.status.success());
    assert!(String::from_utf8_lossy(&old.stderr).contains("BREAKWATER_SECRET_KEY"), "{old:?}");
}

#[test]
fn config_show_prints_no_secret() {
    let data = tempfile::tempdir().unwrap();
    let key = "q8Jb5mYk3o4xgqkQ5oN2Yv3n3x2p7z0cZsQ2YpJ8uWk=";
    let out = bw(
        data.path(),
        &["config", "show", "--database-url", "postgres://bw:hunter2-canary@db.example/bw"],
        &[
            ("BREAKWATER_SECRET_KEY", key),
            ("BREAKWATER_ADMIN_EMAIL", "root@example.com"),
            ("BREAKWATER_ADMIN_PASSWORD", "admin-canary-passphrase"),
        ],
    );
    let text = ok(&out);
    for secret in ["hunter2-canary", key, "admin-canary-passphrase"] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    assert!(text.contains("REDACTED"), "{text}");
}

#[test]
fn config_show_lists_oidc_providers_without_their_client_secrets() {
    let data = tempfile::tempdir().unwrap();
    let secret_file = data.path().join("corp.secret");
    std::fs::write(&secret_file, "file-canary-oidc-secret\n").unwrap();
    let config = data.path().join("oidc.json");
    let providers = serde_json::json!({"public_url": "https://bw.example.com", "providers": [
        {"name": "corp", "display_name": "Corp SSO", "issuer": "https://idp.example.com", "client_id": "bw",
         "client_secret_file": secret_file, "role_claim": "groups", "role_mapping": {"bw-admins": "admin"}},
        {"name": "lab", "issuer": "https://lab.example.com", "client_id": "bw-lab",
         "client_secret_env": "LAB_OIDC_SECRET", "client_auth": "client_secret_post"}]});
    std::fs::write(&config, providers.to_string()).unwrap();
    let config = config.to_str().unwrap();
    let out =
        bw(data.path(), &["config", "show", "--oidc-config", config], &[("LAB_OIDC_SECRET", "env-canary-oidc-secret")]);
    let text = ok(&out);
    for secret in ["file-canary-oidc-secret", "env-canary-oidc-secret"] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    let shown: serde_json::Value = serde_json::from_str(&text).unwrap();
    let oidc = &shown["oidc"]["providers"];
    assert_eq!(oidc[0]["name"], "corp");
    assert_eq!(oidc[0]["client_secret"], "REDACTED");
    assert_eq!(oidc[1]["client_auth"], "client_secret_post");
    // A provider whose secret variable is unset is a configuration error.
    let unset = bw(data.path(), &["config", "show", "--oidc-config", config], &[]);
    assert!(!unset.status.success());
    assert!(String::from_utf8_lossy(&unset.stderr).contains("LAB_OIDC_SECRET"), "{unset:?}");
}
