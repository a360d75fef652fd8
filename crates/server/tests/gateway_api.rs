//! The gateway registry over real HTTP, against real simulated gateways
//! over mTLS, on SQLite and on PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use breakwater_services::LocalTools;
use breakwater_store::testing::both;
use common::{register_body, sim, spawn_app, spawn_app_with};
use openshell_sim::SimPki;
use serde_json::{Value, json};

#[tokio::test]
async fn register_list_filter_conflict_and_unregister() {
    for store in both().await {
        let backend = store.backend;
        let app = spawn_app(store, Duration::from_secs(60)).await;
        let (a, b) = (sim().await, sim().await);
        let (status, body) =
            app.post("/api/gateway/register", &register_body("alpha", &a, &json!({"env": "prod"}))).await;
        assert_eq!(status, 201, "{backend}: {body}");
        assert_eq!(body["status"], "connected", "{backend}");
        assert_eq!(body["version"], openshell_sim::DEFAULT_VERSION);
        assert_eq!(body["connection"]["success"], true);
        assert_eq!(
            (body["has_client_key"].as_bool(), body.get("client_key")),
            (Some(true), None),
            "keys are never echoed"
        );
        let (status, _) = app.post("/api/gateway/register", &register_body("beta", &b, &json!({"env": "dev"}))).await;
        assert_eq!(status, 201);

        let (status, body) = app.post("/api/gateway/register", &register_body("alpha", &a, &json!({}))).await;
        assert_eq!(status, 409, "{backend}: registering a name twice: {body}");
        assert_eq!(body["code"], "CONFLICT");

        let (_, all) = app.get("/api/gateway/list").await;
        assert_eq!(all["total"], 2);
        let (_, prod) = app.get("/api/gateway/list?label=env:prod").await;
        assert_eq!(prod["items"].as_array().unwrap().len(), 1, "{backend}: {prod}");
        assert_eq!(prod["items"][0]["name"], "alpha");
        let (status, _) = app.get("/api/gateway/list?label=nocolon").await;
        assert_eq!(status, 400);

        let (status, patched) =
            app.patch("/api/gateway/alpha", &json!({"description": null, "labels": {"env": "staging"}})).await;
        assert_eq!(status, 200, "{patched}");
        assert_eq!(patched["description"], Value::Null);
        assert_eq!(patched["labels"]["env"], "staging");
        let (_, kept) = app.patch("/api/gateway/alpha", &json!({})).await;
        assert_eq!(kept["labels"]["env"], "staging", "absent keeps");

        let (status, _) = app.delete("/api/gateway/beta").await;
        assert_eq!(status, 200);
        let (status, body) = app.delete("/api/gateway/beta").await;
        assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")));
    }
}

#[tokio::test]
async fn g02_a_wrong_ca_registers_but_status_and_test_connection_say_why() {
    for store in both().await {
        let app = spawn_app(store, Duration::from_secs(60)).await;
        let s = sim().await;
        let mut body = register_body("wrong-ca", &s, &json!({}));
        body["ca_cert"] = json!(SimPki::mint(&[]).unwrap().ca_pem);
        let (status, body) = app.post("/api/gateway/register", &body).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["status"], "error");
        assert_eq!(body["error_code"], "tls_untrusted");
        let (status, test) = app.post("/api/gateway/wrong-ca/test-connection", &json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(test["success"], false);
        assert!(test["error"].as_str().unwrap().contains("not trusted"), "{test}");
        assert!(test["error"].as_str().unwrap().contains("CA bundle"), "says what to do: {test}");
    }
}

#[tokio::test]
async fn bad_registrations_are_400_with_the_field() {
    let app = spawn_app(breakwater_store::testing::sqlite().await, Duration::from_secs(60)).await;
    let s = sim().await;
    for (patch, field) in [
        (json!({"name": "-bad"}), "gateway_name"),
        (json!({"endpoint": "no-port"}), "endpoint"),
        (json!({"ca_cert": "not pem"}), "ca_cert"),
        (json!({"client_key": "garbage"}), "client_key"),
        (json!({"client_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}), "client_key"),
        // A real key, but not the certificate's.
        (json!({"client_key": SimPki::mint(&[]).unwrap().client.unwrap().key_pem}), "client_key"),
        (json!({"auth_mode": "kerberos"}), "auth_mode"),
        (json!({"name": "Diagnostics"}), "name"),
        (json!({"endpoint": "http://127.0.0.1:1", "scheme": "https"}), "scheme"),
        (json!({"endpoint": "http://127.0.0.1:1"}), "client_cert"),
        (json!({"metadata": {"a": "x\u{0}y"}}), "metadata"),
        (json!({"description": "nul\u{0}byte"}), "description"),
    ] {
        let mut body = register_body("x", &s, &json!({}));
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, resp) = app.post("/api/gateway/register", &body).await;
        assert_eq!(status, 400, "{patch}: {resp}");
        assert_eq!(resp["errors"][0]["field"], field, "{resp}");
        assert!(resp["request_id"].is_string(), "problem+json carries the request id");
    }
}

#[tokio::test]
async fn a_dead_gateway_turns_unreachable_and_comes_back_by_itself() {
    for store in both().await {
        let backend = store.backend;
        let app = spawn_app(store, Duration::from_millis(300)).await;
        let s = sim().await;
        app.post("/api/gateway/register", &register_body("flaky", &s, &json!({}))).await;
        assert_eq!(app.status_of("flaky").await, "connected");
        s.set_outage(true);
        let started = Instant::now();
        // Listing never probes: it stays fast while the gateway is down.
        let (_, _) = app.get("/api/gateway/list").await;
        assert!(started.elapsed() < Duration::from_millis(500));
        let mut status = String::new();
        for _ in 0..40 {
            let (_, list) = app.get("/api/gateway/list").await;
            status = list["items"][0]["status"].as_str().unwrap().to_owned();
            if status == "unreachable" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, "unreachable", "{backend}");
        s.set_outage(false);
        for _ in 0..40 {
            let (_, list) = app.get("/api/gateway/list").await;
            status = list["items"][0]["status"].as_str().unwrap().to_owned();
            if status == "connected" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, "connected", "{backend}: recovers without a restart");
    }
}

#[tokio::test]
async fn g09_an_unknown_setting_key_is_400_listing_the_valid_ones() {
    let app = spawn_app(breakwater_store::testing::sqlite().await, Duration::from_secs(60)).await;
    let s = sim().await;
    app.post("/api/gateway/register", &register_body("gw", &s, &json!({}))).await;
    // G09: a key that does not exist is refused before reaching the gateway.
    let r = app
        .http
        .put(format!("{}/api/gateway/gw/settings/ocsf_logging_enabled", app.base))
        .json(&json!({"value": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("ocsf_json_enabled"), "{body}");
    let r = app
        .http
        .put(format!("{}/api/gateway/gw/settings/ocsf_json_enabled", app.base))
        .json(&json!({"value": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, settings) = app.get("/api/gateway/gw/settings").await;
    assert_eq!(settings["settings"]["ocsf_json_enabled"], true);
    let (status, _) = app.delete("/api/gateway/gw/settings/ocsf_json_enabled").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_mutation_is_audited_once_and_tampering_shows() {
    for store in both().await {
        let backend = store.backend;
        let app = spawn_app(store, Duration::from_secs(60)).await;
        let s = sim().await;
        app.post("/api/gateway/register", &register_body("audited", &s, &json!({}))).await;
        app.patch("/api/gateway/audited", &json!({"description": "new"})).await;
        app.http
            .put(format!("{}/api/gateway/audited/settings/ocsf_json_enabled", app.base))
            .json(&json!({"value": true}))
            .send()
            .await
            .unwrap();
        app.delete("/api/gateway/audited/settings/ocsf_json_enabled").await;
        app.delete("/api/gateway/audited").await;
        // Reads and failed writes leave no entries.
        app.get("/api/gateway/list").await;
        app.post("/api/gateway/register", &json!({"name": "-", "endpoint": "x"})).await;

        let (_, audit) = app.get("/api/audit").await;
        let actions: Vec<&str> =
            audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert_eq!(
            actions,
            [
                "gateway.unregister",
                "gateway.setting.delete",
                "gateway.setting.set",
                "gateway.update_metadata",
                "gateway.register"
            ],
            "{backend}"
        );
        let entry = &audit["entries"][4];
        assert_eq!((entry["actor"].as_str(), entry["gateway"].as_str()), (Some("local-admin"), Some("audited")));
        assert_eq!(entry["client_ip"], "127.0.0.1");
        assert!(!audit.to_string().contains("PRIVATE KEY"), "{backend}: no secret in the audit trail");
        let (_, filtered) = app.get("/api/audit?action=gateway.register").await;
        assert_eq!(filtered["total"], 1);

        let (_, verify) = app.get("/api/audit/verify").await;
        assert_eq!(verify["ok"], true, "{backend}: {verify}");
        assert_eq!(verify["checked"], 5);

        let csv = app
            .http
            .get(format!("{}/api/audit/export?format=csv", app.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(csv.lines().count(), 6, "{backend}: header and five rows\n{csv}");
        let json_export: Value = app
            .http
            .get(format!("{}/api/audit/export?format=json", app.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(json_export.as_array().unwrap().len(), 5);

        // Someone edits a row by hand (having dropped the append-only guard).
        let drop_guard = if backend == "sqlite" {
            "DROP TRIGGER audit_log_no_update"
        } else {
            "DROP TRIGGER audit_log_no_update ON audit_log"
        };
        app.store.raw_execute(drop_guard).await;
        app.store.raw_execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3").await;
        let (_, verify) = app.get("/api/audit/verify").await;
        assert_eq!(verify["ok"], false, "{backend}");
        assert_eq!(verify["first_bad_seq"], 3, "{backend}: {verify}");
        app.store.raw_execute("UPDATE audit_log SET actor = 'local-admin' WHERE seq = 3").await;
        let (_, verify) = app.get("/api/audit/verify").await;
        assert_eq!(verify["ok"], true, "{backend}: restored: {verify}");

        // Deleting the newest entries shows too: the chain head remembers.
        app.store.raw_execute("DELETE FROM audit_log WHERE seq >= 4").await;
        let (_, verify) = app.get("/api/audit/verify").await;
        assert_eq!(verify["ok"], false, "{backend}: {verify}");
        assert_eq!(verify["first_bad_seq"], 4, "{backend}: {verify}");
        assert!(verify["reason"].as_str().unwrap().contains("newest entries were deleted"), "{verify}");
        app.store.raw_execute("DELETE FROM audit_log").await;
        let (_, verify) = app.get("/api/audit/verify").await;
        assert_eq!((verify["ok"].as_bool(), verify["first_bad_seq"].as_i64()), (Some(false), Some(1)), "{verify}");
    }
}

#[tokio::test]
async fn the_chain_cannot_be_recomputed_without_the_server_key() {
    let app = spawn_app(breakwater_store::testing::sqlite().await, Duration::from_secs(60)).await;
    let s = sim().await;
    app.post("/api/gateway/register", &register_body("gw", &s, &json!({}))).await;
    app.patch("/api/gateway/gw", &json!({"description": "x"})).await;
    // A forger with database access rewrites entry 1 and recomputes the
    // chain with the public algorithm but without the server's key.
    let (_, audit) = app.get("/api/audit").await;
    let entries: Vec<breakwater_domain::registry::AuditEntry> =
        serde_json::from_value(audit["entries"].clone()).unwrap();
    let mut prev = "genesis".to_owned();
    app.store.raw_execute("DROP TRIGGER audit_log_no_update").await;
    for e in entries.iter().rev() {
        let forged = breakwater_domain::registry::NewAuditEntry { actor: "mallory".into(), ..e.content() };
        let hash = breakwater_domain::registry::audit_hash(b"guessed key", e.seq, &forged, &e.id, e.at, &prev);
        app.store
            .raw_execute(&format!(
                "UPDATE audit_log SET actor = 'mallory', prev_hash = '{prev}', hash = '{hash}' WHERE seq = {}",
                e.seq
            ))
            .await;
        prev = hash;
    }
    app.store.raw_execute(&format!("UPDATE audit_chain SET head_hash = '{prev}' WHERE id = 1")).await;
    let (_, verify) = app.get("/api/audit/verify").await;
    assert_eq!(verify["ok"], false, "{verify}");
    assert_eq!(verify["first_bad_seq"], 1, "{verify}");
}

#[tokio::test]
async fn browsers_on_other_origins_and_rebound_hosts_are_refused() {
    let app = spawn_app(breakwater_store::testing::sqlite().await, Duration::from_secs(60)).await;
    let r = app
        .http
        .post(format!("{}/api/gateway/import-filesystem", app.base))
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "CROSS_ORIGIN_REFUSED");
    // Same origin is fine (the UI will send one).
    let same = app.base.clone();
    let r = app
        .http
        .post(format!("{same}/api/audit/cleanup"))
        .header("origin", &same)
        .json(&json!({"older_than_days": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // DNS rebinding: the page's name points at us, the Host header gives it away.
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    let r = app
        .http
        .get(format!("{}/api/gateway/list", app.base))
        .header("host", format!("evil.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 421);
    let r = app
        .http
        .get(format!("{}/api/gateway/list", app.base))
        .header("host", format!("localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn framework_errors_are_problem_json_too() {
    let app = spawn_app(breakwater_store::testing::sqlite().await, Duration::from_secs(60)).await;
    let url = format!("{}/api/gateway/register", app.base);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (app.http.post(&url).header("content-type", "application/json").body("{not json"), 400, "BAD_REQUEST"),
        (app.http.post(&url).body("{}"), 415, "UNSUPPORTED_MEDIA_TYPE"),
        (app.http.post(&url).json(&json!({"name": "x"})), 422, "VALIDATION_ERROR"),
        (app.http.post(&url).json(&json!({"name": "x", "endpoint": "a:1", "bogus": 1})), 422, "VALIDATION_ERROR"),
        (app.http.get(&url), 405, "METHOD_NOT_ALLOWED"),
        (
            app.http.post(&url).header("content-type", "application/json").body(vec![b' '; 2 * 1024 * 1024]),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        (app.http.get(format!("{}/api/gateway/%FF/info", app.base)), 400, "BAD_REQUEST"),
        (
            app.http.patch(format!("{}/api/gateway/x", app.base)).json(&json!({"endpoint": "1.2.3.4:1"})),
            422,
            "VALIDATION_ERROR",
        ),
        (
            app.http.post(format!("{}/api/audit/cleanup", app.base)).json(&json!({"older_than_days": 100_000_000})),
            400,
            "VALIDATION_ERROR",
        ),
    ];
    for (req, status, code) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["request_id"], id);
        assert!(!body["detail"].as_str().unwrap().contains("RegisterBody"), "no Rust type names: {body}");
    }
    // An absurd request id is replaced, not echoed.
    let r =
        app.http.get(format!("{}/healthz", app.base)).header("x-request-id", "x".repeat(5000)).send().await.unwrap();
    assert!(r.headers()["x-request-id"].len() <= 64);
}

#[tokio::test]
async fn a_gateway_that_wants_a_bearer_token_is_not_shown_as_healthy_without_one() {
    let app = spawn_app(breakwater_store::testing::sqlite().await, Duration::from_secs(60)).await;
    let s = sim().await;
    s.faults().require_bearer(Some("s3cret".into()));
    let (status, body) = app.post("/api/gateway/register", &register_body("oidc", &s, &json!({}))).await;
    assert_eq!(status, 201);
    assert_eq!(body["status"], "error", "{body}");
    assert_eq!(body["error_code"], "unauthenticated", "{body}");
    let mut with_token = register_body("oidc2", &s, &json!({}));
    with_token["bearer_token"] = json!("s3cret");
    let (status, body) = app.post("/api/gateway/register", &with_token).await;
    assert_eq!(status, 201);
    assert_eq!(body["status"], "connected", "{body}");
    assert_eq!(body["has_bearer_token"], true);
    assert!(!body.to_string().contains("s3cret"), "never shown back");
    assert_eq!(app.get("/api/gateway/oidc2/settings").await.0, 200);
    let (_, audit) = app.get("/api/audit").await;
    assert!(!audit.to_string().contains("s3cret"));
}

#[tokio::test]
async fn the_runtime_filter_pages_and_counts_only_matches() {
    let app = spawn_app(breakwater_store::testing::sqlite().await, Duration::from_secs(60)).await;
    let s = sim().await;
    for i in 0..3 {
        let mut body = register_body(&format!("a{i}"), &s, &json!({}));
        body["metadata"] = json!({"runtime": if i == 1 { "kubernetes" } else { "docker" }});
        app.post("/api/gateway/register", &body).await;
    }
    let (_, page) = app.get("/api/gateway/list?runtime=kubernetes&limit=1").await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["name"], "a1");
    let (_, page) = app.get("/api/gateway/list?runtime=docker&limit=1&offset=1").await;
    assert_eq!((page["total"].as_u64(), page["items"][0]["name"].as_str()), (Some(2), Some("a2")));
    let (_, page) = app.get("/api/gateway/list?limit=0").await;
    assert_eq!(page["limit"], 1, "the limit actually used");
}

#[tokio::test]
async fn the_database_never_holds_a_private_key_in_clear() {
    for store in both().await {
        let backend = store.backend;
        let app = spawn_app(store, Duration::from_secs(60)).await;
        let s = sim().await;
        let (status, _) = app.post("/api/gateway/register", &register_body("secret", &s, &json!({}))).await;
        assert_eq!(status, 201);
        let dump = app.store.dump_text().await;
        assert!(dump.contains("BEGIN CERTIFICATE"), "{backend}: the dump is real (certificates are public)");
        assert!(!dump.contains("PRIVATE KEY"), "{backend}: no PEM private key in the database");
    }
}

#[tokio::test]
async fn health_endpoints() {
    let app = spawn_app(breakwater_store::testing::sqlite().await, Duration::from_secs(60)).await;
    assert_eq!(app.get("/healthz").await.0, 200);
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let (_, version) = app.get("/version").await;
    assert_eq!(version["openshell_protocol"], "0.1");
    let r = app.http.get(format!("{}/no/such/route", app.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["request_id"], id);
}

#[tokio::test]
async fn g05_a_gateway_answering_unimplemented_is_501_naming_the_version() {
    let app = spawn_app(breakwater_store::testing::sqlite().await, Duration::from_secs(60)).await;
    let s = sim().await;
    app.post("/api/gateway/register", &register_body("old", &s, &json!({}))).await;
    s.faults().fail_next(Some("GetGatewayConfig"), openshell_sim::parse_code("unimplemented").unwrap());
    let (status, body) = app.get("/api/gateway/old/config").await;
    assert_eq!(status, 501, "{body}");
    assert_eq!(body["code"], "NOT_IMPLEMENTED");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("version"), "says the gateway's version lacks the call: {detail}");
    // The next call is unaffected.
    assert_eq!(app.get("/api/gateway/old/config").await.0, 200);
}

#[tokio::test]
async fn import_filesystem_local_lifecycle_and_audit_cleanup_over_http() {
    let s = sim().await;
    let pki = s.pki().unwrap();
    let client = pki.client.as_ref().unwrap();
    let config = tempfile::tempdir().unwrap();
    let entry = config.path().join("gateways/from-cli");
    std::fs::create_dir_all(entry.join("mtls")).unwrap();
    std::fs::write(
        entry.join("metadata.json"),
        json!({"gateway_endpoint": format!("https://{}", s.endpoint())}).to_string(),
    )
    .unwrap();
    std::fs::write(entry.join("mtls/ca.crt"), &pki.ca_pem).unwrap();
    std::fs::write(entry.join("mtls/tls.crt"), &client.cert_pem).unwrap();
    std::fs::write(entry.join("mtls/tls.key"), &client.key_pem).unwrap();
    std::fs::create_dir_all(config.path().join("gateways/empty")).unwrap();
    // No tools at all on the search path.
    let bin = tempfile::tempdir().unwrap();
    let tools = LocalTools {
        search_path: Some(bin.path().as_os_str().to_owned()),
        openshell_config_dir: Some(config.path().to_owned()),
        ..LocalTools::default()
    };
    let app = spawn_app_with(breakwater_store::testing::sqlite().await, Duration::from_secs(60), tools).await;

    let (status, report) = app.post("/api/gateway/import-filesystem", &json!({})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["imported"], json!(["from-cli"]));
    assert_eq!(report["skipped"][0]["name"], "empty");
    assert_eq!(app.status_of("from-cli").await, "connected");

    let (status, diag) = app.get("/api/gateway/diagnostics").await;
    assert_eq!(status, 200);
    assert_eq!(diag["docker_installed"], false);
    assert_eq!(diag["openshell_installed"], false);

    let (status, body) = app.post("/api/gateway/from-cli/start", &json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "LOCAL_TOOL_MISSING");
    assert!(body["detail"].as_str().unwrap().contains("docker CLI was not found"), "{body}");
    let (status, body) = app.post("/api/gateway/create", &json!({"name": "x", "port": 0})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app.post("/api/gateway/register", &register_body("diagnostics", &s, &json!({}))).await;
    assert_eq!(status, 400, "a name that is an API path is refused: {body}");

    let (status, body) = app.post("/api/audit/cleanup", &json!({"older_than_days": 0})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app.post("/api/audit/cleanup", &json!({"older_than_days": 30})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], 0);
    let (_, verify) = app.get("/api/audit/verify").await;
    assert_eq!(verify["ok"], true, "{verify}");
    let (_, audit) = app.get("/api/audit?action=audit.cleanup").await;
    assert_eq!(audit["total"], 1, "{audit}");
}
