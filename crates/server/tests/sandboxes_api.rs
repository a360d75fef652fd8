//! The sandbox routes over real HTTP against a simulated gateway: list,
//! get, exec (cases S03, S04) and logs (S10).

mod common;

use common::setup;
use serde_json::json;

const S: &str = "/api/gateways/gw/sandboxes";

#[tokio::test]
async fn list_and_get() {
    let (app, s) = setup().await;
    let (status, list) = app.get(S).await;
    assert_eq!(status, 200, "{list}");
    assert!(list["items"].as_array().unwrap().iter().any(|sb| sb["name"] == "agent-1"), "{list}");
    assert_eq!(list["has_more"], false);
    let (status, page) = app.get(&format!("{S}?limit=1&label=nope:x")).await;
    assert_eq!(status, 200);
    assert!(page["items"].as_array().unwrap().is_empty());
    let (status, sb) = app.get(&format!("{S}/agent-1")).await;
    assert_eq!((status, sb["phase"].as_str()), (200, Some("ready")), "{sb}");
    let (status, config) = app.get(&format!("{S}/agent-1/config")).await;
    assert_eq!(status, 200, "{config}");
    assert!(config["policy"]["network_policies"]["github"].is_object(), "{config}");
    assert_eq!(config["version"], 1);
    assert_eq!(app.get(&format!("{S}/nope/config")).await.0, 404);
    assert_eq!(app.get(&format!("{S}/nope")).await.0, 404);
    assert_eq!(app.get(&format!("{S}/Bad_Name")).await.0, 400);
    assert_eq!(app.get("/api/gateways/missing/sandboxes").await.0, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn exec_runs_argv_and_shell_strings_and_s03_s04_refuse_bad_input() {
    let (app, s) = setup().await;
    let (status, out) = app.post(&format!("{S}/agent-1/exec"), &json!({"command": ["echo", "hi"]})).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!((out["stdout"].as_str(), out["exit_code"].as_i64()), (Some("hi\n"), Some(0)));
    // S03: no timeout_seconds: the default applies; one above the maximum is refused.
    let (status, out) = app.post(&format!("{S}/agent-1/exec"), &json!({"command": "echo 'a b'"})).await;
    assert_eq!((status, out["stdout"].as_str()), (200, Some("a b\n")), "{out}");
    let (status, body) =
        app.post(&format!("{S}/agent-1/exec"), &json!({"command": "true", "timeout_seconds": 99_999})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["field"], "timeout_seconds");
    // S04: unbalanced quoting says so.
    let (status, body) = app.post(&format!("{S}/agent-1/exec"), &json!({"command": "echo \"hi"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("unbalanced double quote"), "{body}");
    let (status, out) = app.post(&format!("{S}/agent-1/exec"), &json!({"command": ["false"]})).await;
    assert_eq!((status, out["exit_code"].as_i64()), (200, Some(1)));
    let (_, audit) = app.get("/api/audit?action=sandbox.exec").await;
    assert_eq!(audit["total"], 3, "{audit}");
    s.shutdown().await;
}

#[tokio::test]
async fn s10_logs_at_min_level_warn_are_exactly_the_warn_and_error_lines() {
    let (app, s) = setup().await;
    app.post(&format!("{S}/agent-1/exec"), &json!({"command": ["true"]})).await;
    s.inject_denial("default", "agent-1", "pypi.org", 443, "/usr/bin/pip").unwrap();
    // A policy the supervisor refuses to load: an error line.
    s.faults().set_reject_hosts(vec!["blocked.example.com".into()]);
    let rule = json!({"key": "b", "rule": {"endpoints": [{"host": "blocked.example.com", "port": 443}]}});
    assert_eq!(app.post(&format!("{}/policy/network-rules", S.to_owned() + "/agent-1"), &rule).await.0, 200);
    let mut all = serde_json::Value::Null;
    for _ in 0..100 {
        all = app.get(&format!("{S}/agent-1/logs")).await.1;
        if all.as_array().unwrap().iter().any(|l| l["level"] == "error") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let rank = |l: &str| ["trace", "debug", "info", "warn", "error"].iter().position(|x| *x == l).unwrap();
    let expected: Vec<_> =
        all.as_array().unwrap().iter().filter(|l| rank(l["level"].as_str().unwrap()) >= 3).cloned().collect();
    assert!(expected.iter().any(|l| l["level"] == "warn") && expected.iter().any(|l| l["level"] == "error"), "{all}");
    assert!(all.as_array().unwrap().len() > expected.len(), "there were lower lines to drop");
    let (status, warn) = app.get(&format!("{S}/agent-1/logs?min_level=warn")).await;
    assert_eq!(status, 200);
    assert_eq!(warn.as_array().unwrap(), &expected);
    assert_eq!(app.get(&format!("{S}/agent-1/logs?min_level=loud")).await.0, 400);
    let (_, gateway_only) = app.get(&format!("{S}/agent-1/logs?source=gateway")).await;
    assert!(gateway_only.as_array().unwrap().iter().all(|l| l["source"] == "gateway"));
    let (status, none) = app.get(&format!("{S}/agent-1/logs?since_ms=4102444800000")).await;
    assert_eq!(status, 200);
    assert!(none.as_array().unwrap().is_empty(), "nothing after 2100: {none}");
    s.shutdown().await;
}

#[tokio::test]
async fn ssh_sessions_s11_stop_start_and_s05_delete() {
    let (app, s) = setup().await;
    let (status, session) = app.post(&format!("{S}/agent-1/ssh"), &json!({})).await;
    assert_eq!(status, 201, "{session}");
    let token = session["token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty() && session["gateway_port"].as_u64().unwrap() > 0);
    let (_, audit) = app.get("/api/audit?action=sandbox.ssh.create").await;
    assert_eq!(audit["total"], 1);
    assert!(!audit.to_string().contains(&token), "the token never reaches the audit trail");
    // Another sandbox's path cannot end this sandbox's session.
    s.seed_sandboxes("default", 1).await.unwrap();
    let r =
        app.http.delete(format!("{}{S}/sim-0000/ssh", app.base)).json(&json!({"token": token})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r =
        app.http.delete(format!("{}{S}/agent-1/ssh", app.base)).json(&json!({"token": token})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, audit) = app.get("/api/audit?action=sandbox.ssh.revoke").await;
    assert_eq!(audit["total"], 1, "the refused one changed nothing: {audit}");
    assert_eq!(audit["entries"][0]["resource_id"], "agent-1", "{audit}");
    assert_eq!(audit["entries"][0]["detail"]["issued_here"], true, "{audit}");
    // S11: a gateway handing out a host that could inject SSH options is refused.
    s.faults().set_ssh_host_override(Some("evil;ProxyCommand=sh".into()));
    let (status, body) = app.post(&format!("{S}/agent-1/ssh"), &json!({})).await;
    assert_eq!(status, 502, "{body}");
    assert!(!body.to_string().contains("ProxyCommand=sh\""), "{body}");
    s.faults().set_ssh_host_override(None);

    let (status, stopped) = app.post(&format!("{S}/agent-1/stop"), &json!({})).await;
    assert_eq!(status, 200, "{stopped}");
    for _ in 0..200 {
        if app.get(&format!("{S}/agent-1")).await.1["phase"] == "stopped" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (status, body) = app.post(&format!("{S}/agent-1/start"), &json!({})).await;
    assert_eq!(status, 200, "{body}");

    // S05: after a delete, listing shows it deleting (or gone), never ready again.
    let (status, del) = app.delete(&format!("{S}/agent-1")).await;
    assert_eq!(status, 200, "{del}");
    for _ in 0..20 {
        let (_, list) = app.get(S).await;
        if let Some(sb) = list["items"].as_array().unwrap().iter().find(|sb| sb["name"] == "agent-1") {
            assert_ne!(sb["phase"], "ready", "{sb}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    s.shutdown().await;
}

#[tokio::test]
async fn metadata_patch_merges_into_get_and_list_filters_on_it_and_delete_forgets_it() {
    let (app, s) = setup().await;
    s.seed_sandboxes("default", 3).await.unwrap();
    let (status, sb) =
        app.patch(&format!("{S}/agent-1"), &json!({"description": "the build agent", "labels": {"team": "ml"}})).await;
    assert_eq!(status, 200, "{sb}");
    assert_eq!((sb["description"].as_str(), sb["labels"]["team"].as_str()), (Some("the build agent"), Some("ml")));
    let (_, got) = app.get(&format!("{S}/agent-1")).await;
    assert_eq!(got["description"], "the build agent", "{got}");
    // The label filter runs over the merged view: exactly the labelled one.
    let (status, ml) = app.get(&format!("{S}?label=team:ml")).await;
    assert_eq!(status, 200, "{ml}");
    let names: Vec<_> = ml["items"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["agent-1"]);
    // Repeated filters AND together.
    let (status, two) = app.patch(&format!("{S}/sim-0001"), &json!({"labels": {"team": "ml", "env": "prod"}})).await;
    assert_eq!(status, 200, "{two}");
    let (_, both) = app.get(&format!("{S}?label=team:ml&label=env:prod")).await;
    let names: Vec<_> = both["items"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["sim-0001"], "{both}");
    assert_eq!(app.get(&format!("{S}?label=team:ml&label=team:ops")).await.0, 400);
    app.patch(&format!("{S}/sim-0001"), &json!({"labels": null})).await;
    let (_, page) = app.get(&format!("{S}?limit=2&offset=1")).await;
    assert_eq!((page["items"].as_array().unwrap().len(), page["has_more"].as_bool()), (2, Some(true)), "{page}");
    assert_eq!(page["total"], 4, "clients paginate by total: {page}");
    assert_eq!(ml["total"], 1);
    // Absent keeps; null clears (labels become empty, not the gateway's).
    let (_, kept) = app.patch(&format!("{S}/agent-1"), &json!({"labels": null})).await;
    assert_eq!(kept["description"], "the build agent");
    assert_eq!(kept["labels"], json!({}));
    let (_, cleared) = app.patch(&format!("{S}/agent-1"), &json!({"description": null})).await;
    assert!(cleared["description"].is_null(), "{cleared}");
    // Refused at the edge, with the field named.
    let (status, body) = app.patch(&format!("{S}/agent-1"), &json!({"labels": {"Bad Key": "x"}})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app.patch(&format!("{S}/agent-1"), &json!({"description": "x".repeat(1001)})).await;
    assert_eq!((status, body["errors"][0]["field"].as_str()), (400, Some("description")), "{body}");
    assert_eq!(app.patch(&format!("{S}/nope"), &json!({"description": "x"})).await.0, 404);
    let (_, audit) = app.get("/api/audit?action=sandbox.update_metadata").await;
    assert_eq!(audit["total"], 5, "one entry per change: {audit}");
    assert_eq!(audit["entries"][0]["actor"], "local-admin");

    app.patch(&format!("{S}/agent-1"), &json!({"description": "again"})).await;
    assert_eq!(app.delete(&format!("{S}/agent-1")).await.0, 200);
    assert!(
        app.store.store.get_sandbox_metadata("gw", "agent-1").await.unwrap().is_none(),
        "delete forgets our metadata"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn s02_exec_returns_at_the_exit_code_whether_the_stream_closes_at_once_or_lingers() {
    let (app, s) = setup().await;
    let exec = format!("{S}/agent-1/exec");
    // The sim closes the stream right after the output and exit code.
    let started = std::time::Instant::now();
    let (status, out) = app.post(&exec, &json!({"command": ["echo", "hi"]})).await;
    assert_eq!((status, out["stdout"].as_str(), out["exit_code"].as_i64()), (200, Some("hi\n"), Some(0)), "{out}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    // A gateway that keeps the stream open after the exit code must not hold the call.
    s.faults().set_exec_linger(std::time::Duration::from_secs(30));
    let started = std::time::Instant::now();
    let (status, out) = app.post(&exec, &json!({"command": ["exit", "7"]})).await;
    assert_eq!((status, out["exit_code"].as_i64()), (200, Some(7)), "{out}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    s.shutdown().await;
}

#[tokio::test]
async fn a_long_exec_runs_as_an_operation_whose_result_is_the_output() {
    let (app, s) = setup().await;
    let exec = format!("{S}/agent-1/exec");
    // Allowed to run longer than the synchronous limit: an operation.
    let (status, op) = app.post(&exec, &json!({"command": "echo 'long job'", "timeout_seconds": 600})).await;
    assert_eq!(status, 202, "{op}");
    assert_eq!(op["resource_type"], "sandbox_exec");
    assert!(op["resource_name"].as_str().unwrap().starts_with("agent-1/"), "{op}");
    let done = common::finished(&app, op["operation_id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        (done["result"]["stdout"].as_str(), done["result"]["exit_code"].as_i64()),
        (Some("long job\n"), Some(0))
    );
    // Two at once on one sandbox are fine: each exec is its own resource.
    let a = app.post(&exec, &json!({"command": ["sleep", "0.3"], "timeout_seconds": 900})).await.1;
    let b = app.post(&exec, &json!({"command": ["sleep", "0.3"], "timeout_seconds": 900})).await.1;
    assert_ne!(a["operation_id"], b["operation_id"]);
    for op in [a, b] {
        assert_eq!(common::finished(&app, op["operation_id"].as_str().unwrap()).await["status"], "succeeded");
    }
    // `Prefer: respond-async` asks for an operation whatever the timeout.
    let r = app
        .http
        .post(format!("{}{exec}", app.base))
        .header("prefer", "respond-async")
        .json(&json!({"command": ["true"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert!(r.headers()["location"].to_str().unwrap().starts_with("/api/operations/"));
    // Refusals come before any operation exists.
    let (status, body) = app.post(&exec, &json!({"command": "echo \"hi", "timeout_seconds": 600})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(app.post(&format!("{S}/nope/exec"), &json!({"command": ["true"], "timeout_seconds": 600})).await.0, 404);
    let (_, audit) = app.get("/api/audit?action=sandbox.exec").await;
    assert_eq!(audit["total"], 4, "one entry per exec: {audit}");
    assert!(audit["entries"][0]["detail"]["operation"].is_string(), "{audit}");
    assert_eq!(audit["entries"][0]["client_ip"], "127.0.0.1", "the caller's address, taken when the request came");
    s.shutdown().await;
}

#[tokio::test]
async fn windows_across_the_gateways_pages_have_the_right_items_and_totals() {
    let (app, s) = setup().await;
    s.seed_sandboxes("default", 1100).await.unwrap();
    let names = |page: &serde_json::Value| -> Vec<String> {
        page["items"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
    };
    let (status, all) = app.get(&format!("{S}?limit=1000")).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!((names(&all).len(), all["total"].as_u64(), all["has_more"].as_bool()), (1000, Some(1101), Some(true)));
    let (_, tail) = app.get(&format!("{S}?limit=200&offset=1000")).await;
    assert_eq!((names(&tail).len(), tail["has_more"].as_bool()), (101, Some(false)));
    // A window across the boundary of the gateway's pages of 500 is the
    // same run of names as in the whole list.
    let (_, across) = app.get(&format!("{S}?limit=100&offset=450")).await;
    assert_eq!(names(&across), names(&all)[450..550].to_vec());
    let (_, beyond) = app.get(&format!("{S}?offset=5000")).await;
    assert_eq!((names(&beyond).len(), beyond["total"].as_u64()), (0, Some(1101)), "{beyond}");
    assert_eq!(app.get("/api/gateways/nope/sandboxes").await.0, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn a_short_exec_with_an_idempotency_key_runs_once_as_an_operation() {
    let (app, s) = setup().await;
    let send = || {
        app.http
            .post(format!("{}{S}/agent-1/exec", app.base))
            .header("idempotency-key", "exec-once-1")
            .json(&json!({"command": ["echo", "once"]}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 202, "a key makes it findable again");
    let first: serde_json::Value = first.json().await.unwrap();
    let again: serde_json::Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(first["operation_id"], again["operation_id"], "the retry is the same run");
    let done = common::finished(&app, first["operation_id"].as_str().unwrap()).await;
    assert_eq!(done["result"]["stdout"], "once\n", "{done}");
    s.shutdown().await;
}
