//! The policy routes over real HTTP against a simulated gateway: each
//! route's success and error statuses, and the policy cases that show at
//! the API (P01 400, P09 409, P11 up_to_date, P14 501, P15 empty diff).

mod common;

use common::{P, TestApp, setup};
use serde_json::{Value, json};

impl TestApp {
    async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.put(format!("{}{path}", self.base)).json(body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn read_routes_answer_with_the_shoreguard_envelope() {
    let (app, s) = setup().await;
    let (status, p) = app.get(P).await;
    assert_eq!(status, 200);
    assert!(p["policy"]["network_policies"]["github"].is_object(), "{p}");
    assert_eq!(p["revision"]["status"], "LOADED");
    assert_eq!(p["active_version"], p["revision"]["version"]);
    let (status, e) = app.get(&format!("{P}/effective")).await;
    assert_eq!(status, 200);
    assert_eq!(e["policy"], p["policy"]);
    let (status, _) = app.get("/api/gateways/gw/sandboxes/nope/policy").await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/api/gateways/missing/sandboxes/agent-1/policy").await;
    assert_eq!(status, 404);
    let (status, body) = app.get("/api/gateways/gw/sandboxes/Bad_Name/policy").await;
    assert_eq!(status, 400, "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn rule_and_path_edits_and_their_errors() {
    let (app, s) = setup().await;
    let rule = json!({"key": "pypi", "rule": {"endpoints": [{"host": "pypi.org", "port": 443}], "binaries": [{"path": "/usr/bin/pip"}]}});
    let (status, body) = app.post(&format!("{P}/network-rules"), &rule).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "applied");
    assert_eq!(body["diff"]["rules_added"], json!(["pypi"]));
    assert!(body["policy"]["network_policies"]["pypi"].is_object());
    let (_, again) = app.post(&format!("{P}/network-rules"), &rule).await;
    assert_eq!(again["result"], "up_to_date");

    // P01 at the API: 400 naming the host, nothing sent.
    let wide = json!({"key": "wide", "rule": {"endpoints": [{"host": "*.com", "port": 443}]}});
    let (status, body) = app.post(&format!("{P}/network-rules"), &wide).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["field"], "network_policies.wide.endpoints[0].host");
    // P08: the reserved prefix.
    let reserved = json!({"key": "_provider_x", "rule": {"endpoints": [{"host": "x.example.com", "port": 443}]}});
    assert_eq!(app.post(&format!("{P}/network-rules"), &reserved).await.0, 400);

    let (status, body) = app.delete(&format!("{P}/network-rules/pypi")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["diff"]["rules_removed"], json!(["pypi"]));
    assert_eq!(app.delete(&format!("{P}/network-rules/pypi")).await.0, 404);

    // P09: filesystem and process cannot change on a running sandbox.
    let (status, body) = app.post(&format!("{P}/filesystem"), &json!({"path": "/data", "access": "ro"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("filesystem_policy section"), "{body}");
    let (status, body) = app.put(&format!("{P}/process"), &json!({"run_as_user": "root"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("process section"));
    let (status, _) = app.post(&format!("{P}/filesystem"), &json!({"path": "/data", "access": "sideways"})).await;
    assert_eq!(status, 422);
    let (status, _) = app.delete(&format!("{P}/filesystem")).await;
    assert_eq!(status, 400, "?path is required");
    s.shutdown().await;
}

#[tokio::test]
async fn p09_a_full_replace_that_omits_process_keeps_it() {
    let (app, s) = setup().await;
    let (status, body) = app
        .put(P, &json!({"network_policies": {"npm": {"endpoints": [{"host": "registry.npmjs.org", "port": 443}]}}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policy"]["process"]["run_as_user"], "sandbox");
    assert_eq!(body["diff"]["rules_removed"], json!(["github"]));
    let (status, _) = app.put(P, &json!({"policy": {"netwrk_policies": {}}})).await;
    assert_eq!(status, 400, "unknown policy keys are refused");
    s.shutdown().await;
}

#[tokio::test]
async fn p11_export_then_apply_unchanged_is_up_to_date_and_a_stale_etag_is_409() {
    let (app, s) = setup().await;
    let (status, export) = app.get(&format!("{P}/export")).await;
    assert_eq!(status, 200);
    let yaml = export["yaml"].as_str().unwrap().to_owned();
    assert!(yaml.contains("metadata:") && yaml.contains("policy:"), "{yaml}");
    assert_eq!(export["sandbox"], "agent-1");
    let (status, r) = app.post(&format!("{P}/apply"), &json!({"yaml": yaml})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "up_to_date");

    let edited = yaml.replace("api.github.com", "uploads.github.com");
    let (status, r) = app.post(&format!("{P}/apply"), &json!({"yaml": edited, "dry_run": true})).await;
    assert_eq!(status, 200);
    assert_eq!(r["status"], "dry_run");
    let (status, r) = app.post(&format!("{P}/apply"), &json!({"yaml": edited})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "applied");
    assert_eq!(r["current_hash"], export["policy_hash"]);
    let new_hash = r["applied_version"].as_str().unwrap().to_owned();
    // The original export's embedded hash is stale now: 409 with the current one.
    let (status, r) = app.post(&format!("{P}/apply"), &json!({"yaml": yaml})).await;
    assert_eq!(status, 409, "{r}");
    assert_eq!(r["code"], "VERSION_MISMATCH");
    assert_eq!(r["current_hash"], new_hash);
    assert_eq!(r["expected_version"], export["policy_hash"]);
    let (status, r) = app.post(&format!("{P}/apply"), &json!({"yaml": "network_policies: [oops"})).await;
    assert_eq!(status, 400, "{r}");
    let bare = "network_policies:\n  slack:\n    endpoints: [{host: slack.com, port: 443}]\n";
    let (status, r) = app.post(&format!("{P}/apply"), &json!({"yaml": bare, "mode": "merge"})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["diff"]["rules_added"], json!(["slack"]));
    s.shutdown().await;
}

#[tokio::test]
async fn p15_revisions_and_diffs() {
    let (app, s) = setup().await;
    let v1 = app.get(P).await.1["version"].as_u64().unwrap();
    app.post(
        &format!("{P}/network-rules"),
        &json!({"key": "a", "rule": {"endpoints": [{"host": "a.example.com", "port": 443}]}}),
    )
    .await;
    let r = app.http.get(format!("{}{P}/revisions?limit=1", app.base)).send().await.unwrap();
    assert_eq!(r.headers()["x-has-more"], "true");
    let page: Value = r.json().await.unwrap();
    assert_eq!(page.as_array().unwrap().len(), 1);
    let newest = page[0]["version"].as_u64().unwrap();
    assert!(newest > v1);

    let (status, d) = app.get(&format!("{P}/diff?version_a={newest}&version_b={newest}")).await;
    assert_eq!(status, 200);
    assert_eq!(d["identical"], true);
    assert_eq!(d["text_diff"], "");
    let (_, d) = app.get(&format!("{P}/diff?version_a={v1}&version_b={newest}")).await;
    assert_eq!(d["diff"]["rules_added"], json!(["a"]));
    assert_eq!(app.get(&format!("{P}/diff?version_a=1")).await.0, 400);
    assert_eq!(app.get(&format!("{P}/diff?version_a=1&version_b=999")).await.0, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn presets_list_get_preview_and_apply() {
    let (app, s) = setup().await;
    let (status, list) = app.get("/api/policies/presets").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 12);
    assert!(list.as_array().unwrap().iter().any(|p| p["name"] == "pypi" && p["description"] == "Python Package Index"));
    let (status, preset) = app.get("/api/policies/presets/github").await;
    assert_eq!(status, 200);
    assert_eq!(preset["policy"]["network_policies"]["github"]["endpoints"][0]["host"], "github.com");
    assert_eq!(app.get("/api/policies/presets/nope").await.0, 404);

    let (status, preview) = app.get(&format!("{P}/presets/pypi/preview")).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["merge"]["rules_added"], json!(["pypi"]));
    let (status, applied) = app.post(&format!("{P}/presets/pypi"), &json!({})).await;
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["diff"], preview["diff"], "the preview matched the result");
    assert!(applied["policy"]["network_policies"]["pypi"].is_object());
    assert_eq!(app.post(&format!("{P}/presets/nope"), &json!({})).await.0, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn p14_a_gateway_without_the_call_is_501() {
    let (app, s) = setup().await;
    s.faults().fail_next(Some("UpdateConfig"), openshell_sim::parse_code("unimplemented").unwrap());
    let (status, body) = app
        .post(
            &format!("{P}/network-rules"),
            &json!({"key": "x", "rule": {"endpoints": [{"host": "x.example.com", "port": 443}]}}),
        )
        .await;
    assert_eq!(status, 501, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("version"), "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn review_findings_replace_guards_protocols_and_foreign_exports() {
    let (app, s) = setup().await;
    for body in [json!([]), json!({}), json!({"policy": {}})] {
        let (status, r) = app.put(P, &body).await;
        assert_eq!(status, 400, "{body}: {r}");
    }
    let (status, r) = app.put(P, &json!({"network_policies": {}})).await;
    assert_eq!(status, 200, "an explicit empty rule set is a real replace: {r}");
    // `TCP` is tcp: L7 rules on it are refused whatever the spelling.
    let rule = json!({"key": "db", "rule": {"endpoints": [{"host": "db.example.com", "protocol": " TCP", "port": 22, "rules": [{"allow": {"method": "GET", "path": "/"}}]}]}});
    let (status, r) = app.post(&format!("{P}/network-rules"), &rule).await;
    assert_eq!(status, 400, "{r}");
    let bogus =
        json!({"key": "b", "rule": {"endpoints": [{"host": "b.example.com", "protocol": "tcp/ip", "port": 1}]}});
    assert_eq!(app.post(&format!("{P}/network-rules"), &bogus).await.0, 400);
    // Another sandbox's export is refused here.
    let (_, export) = app.get(&format!("{P}/export")).await;
    let foreign = export["yaml"].as_str().unwrap().replace("sandbox: agent-1", "sandbox: agent-2");
    let (status, r) = app.post(&format!("{P}/apply"), &json!({"yaml": foreign, "dry_run": true})).await;
    assert_eq!(status, 400, "{r}");
    assert!(r["detail"].as_str().unwrap().contains("agent-2"), "{r}");
    // Policies larger than the general 1 MiB body limit are accepted here.
    let mut rules = serde_json::Map::new();
    for i in 0..9000 {
        rules.insert(format!("r{i}"), json!({"endpoints": [{"host": format!("h{i}.example.com"), "port": 443}]}));
    }
    let (status, r) = app.put(P, &json!({"network_policies": rules})).await;
    assert_ne!(status, 413, "{r}");
    s.shutdown().await;
}
