//! Creating sandboxes as operations over real HTTP: presets applied with
//! progress, idempotency keys (S07), one active create per name but not
//! across gateways (S06), and a create that never gets ready (S01).

mod common;

use std::time::Duration;

use common::{finished, register_body, setup};
use serde_json::{Value, json};

const S: &str = "/api/gateways/gw/sandboxes";

#[tokio::test]
async fn create_with_two_presets_runs_as_an_operation() {
    let (app, s) = setup().await;
    let r = app
        .http
        .post(format!("{}{S}", app.base))
        .json(&json!({"name": "agent-2", "presets": ["pypi", "npm"], "labels": {"team": "ml"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    let id = body["operation_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/operations/{id}"));
    let op = finished(&app, &id).await;
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(op["progress"], 100);
    assert_eq!(op["result"]["presets"]["pypi"]["status"], "applied", "{op}");
    assert_eq!(op["result"]["presets"]["npm"]["status"], "applied");
    let (_, policy) = app.get(&format!("{S}/agent-2/policy")).await;
    assert!(
        policy["policy"]["network_policies"]["pypi"].is_object()
            && policy["policy"]["network_policies"]["npm"].is_object()
    );
    let (status, unknown) = app.post(S, &json!({"name": "x", "presets": ["nope"]})).await;
    assert_eq!(status, 400, "unknown presets are refused first: {unknown}");
    let detail = unknown["detail"].as_str().unwrap();
    assert!(detail.contains("\"nope\"") && detail.contains("pypi"), "names the known presets: {detail}");
    assert_eq!(app.post(S, &json!({"name": "Bad_Name"})).await.0, 400);
    s.shutdown().await;
}

#[tokio::test]
async fn s07_one_idempotency_key_sent_twice_at_once_gives_one_operation() {
    let (app, s) = setup().await;
    let send = || {
        app.http
            .post(format!("{}{S}", app.base))
            .header("idempotency-key", "create-agent-7")
            .json(&json!({"name": "agent-7"}))
            .send()
    };
    let (a, b) = tokio::join!(send(), send());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (202, 202));
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(a["operation_id"], b["operation_id"]);
    assert_eq!(finished(&app, a["operation_id"].as_str().unwrap()).await["status"], "succeeded");
    s.shutdown().await;
}

#[tokio::test]
async fn s01_a_sandbox_that_never_gets_ready_fails_with_timeout_and_blocks_a_second_create_meanwhile() {
    let (app, s) = setup().await;
    s.faults().set_provisioning(openshell_sim::ProvisioningMode::Hang);
    let (status, body) = app.post(S, &json!({"name": "stuck"})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["operation_id"].as_str().unwrap().to_owned();
    let (status, again) = app.post(S, &json!({"name": "stuck"})).await;
    assert_eq!(status, 409, "one create per name at a time: {again}");
    assert!(again["detail"].as_str().unwrap().contains(&id), "{again}");
    let op = finished(&app, &id).await;
    assert_eq!((op["status"].as_str(), op["error_code"].as_str()), (Some("failed"), Some("timeout")), "{op}");
    let message = op["error"].as_str().unwrap();
    assert!(message.contains("provisioning"), "names the last phase: {message}");
    s.shutdown().await;
}

#[tokio::test]
async fn s06_the_same_name_on_two_gateways_at_once_is_not_blocked() {
    let (app, s) = setup().await;
    let other = common::sim().await;
    assert_eq!(app.post("/api/gateway/register", &register_body("gw2", &other, &json!({}))).await.0, 201);
    let twin = json!({"name": "twin"});
    let (a, b) = tokio::join!(app.post(S, &twin), app.post("/api/gateways/gw2/sandboxes", &twin));
    assert_eq!((a.0, b.0), (202, 202), "{a:?} {b:?}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    s.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn create_keeps_the_description() {
    let (app, s) = setup().await;
    let (status, op) = app.post(S, &json!({"name": "described", "description": "for the demo"})).await;
    assert_eq!(status, 202, "{op}");
    assert_eq!(finished(&app, op["operation_id"].as_str().unwrap()).await["status"], "succeeded");
    let (_, sb) = app.get(&format!("{S}/described")).await;
    assert_eq!(sb["description"], "for the demo", "{sb}");
    let (status, body) = app.post(S, &json!({"name": "too-long", "description": "x".repeat(1001)})).await;
    assert_eq!(status, 400, "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn templates_are_listed_and_a_create_from_one_gets_its_defaults() {
    let (app, s) = setup().await;
    let (status, list) = app.get("/api/sandbox-templates").await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<_> = list.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["data-science", "openclaw", "secure-coding", "web-dev"]);
    let (status, ds) = app.get("/api/sandbox-templates/data-science").await;
    assert_eq!(status, 200, "{ds}");
    assert_eq!(ds["environment"]["CUDA_VISIBLE_DEVICES"], "all");
    assert_eq!(app.get("/api/sandbox-templates/nope").await.0, 404);
    let (status, bad) = app.get("/api/sandbox-templates/..%2Fetc").await;
    assert_eq!(status, 400, "{bad}");

    // data-science names the nvidia provider: the gateway must have it,
    // which is said before anything starts.
    let (status, missing) = app.post(S, &json!({"name": "ds-0", "template": "data-science"})).await;
    assert_eq!(status, 400, "{missing}");
    let detail = missing["detail"].as_str().unwrap();
    assert!(detail.contains("\"nvidia\"") && detail.contains("data-science"), "{detail}");
    // An explicit "no providers, no GPU" stands against the template.
    let (status, op) =
        app.post(S, &json!({"name": "ds-plain", "template": "data-science", "providers": [], "gpu": false})).await;
    assert_eq!(status, 202, "{op}");
    assert_eq!(finished(&app, op["operation_id"].as_str().unwrap()).await["status"], "succeeded");
    let (_, plain) = app.get(&format!("{S}/ds-plain")).await;
    assert_eq!((plain["gpu"].clone(), plain["providers"].clone()), (json!(false), json!([])), "{plain}");
    let provider = json!({"name": "nvidia", "type": "nvidia", "api_key": "nvapi-test"});
    assert_eq!(app.post("/api/gateways/gw/providers", &provider).await.0, 201);
    let body = json!({"name": "ds-1", "template": "data-science", "presets": ["github", "pypi"]});
    let (status, op) = app.post(S, &body).await;
    assert_eq!(status, 202, "{op}");
    let done = finished(&app, op["operation_id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The template's presets first, then the request's (no repeats).
    let presets: Vec<_> = done["result"]["presets"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(presets.len(), 4, "{done}");
    assert!(done["result"]["presets_failed"].as_array().unwrap().is_empty(), "{done}");
    let (_, sb) = app.get(&format!("{S}/ds-1")).await;
    assert_eq!(sb["gpu"], true, "{sb}");
    assert_eq!(sb["image"], "ghcr.io/nvidia/openshell-community/sandboxes/ollama:latest");
    assert_eq!(sb["providers"], json!(["nvidia"]));
    let (_, policy) = app.get(&format!("{S}/ds-1/policy")).await;
    for key in ["pypi", "huggingface", "docker", "github"] {
        assert!(policy["policy"]["network_policies"][key].is_object(), "{key} applied: {policy}");
    }
    // A request's own image wins over the template's.
    let (status, op) = app.post(S, &json!({"name": "oc-1", "template": "openclaw", "image": "mine:1"})).await;
    assert_eq!(status, 202, "{op}");
    assert_eq!(finished(&app, op["operation_id"].as_str().unwrap()).await["status"], "succeeded");
    assert_eq!(app.get(&format!("{S}/oc-1")).await.1["image"], "mine:1");
    let (status, body) = app.post(S, &json!({"name": "x", "template": "nope"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("data-science"), "lists the templates: {body}");
    let (status, body) = app.post(S, &json!({"name": "x", "log_level": "loud"})).await;
    assert_eq!(status, 400, "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn create_refuses_too_many_labels_and_bad_environment_names() {
    let (app, s) = setup().await;
    let labels: serde_json::Map<String, Value> = (0..21).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (status, body) = app.post(S, &json!({"name": "many", "labels": labels})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("at most 20 labels"), "{body}");
    for bad in ["1ABC", "A-B", "", "A B"] {
        let (status, body) = app.post(S, &json!({"name": "env", "environment": {bad: "x"}})).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
    }
    let (status, body) = app.post(S, &json!({"name": "env", "environment": {"BIG": "x".repeat(70 * 1024)}})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(app.post(S, &json!({"name": "env", "environment": {"_OK_1": "x"}})).await.0, 202);
    s.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_is_scoped_to_the_gateway_and_bound_to_the_body() {
    let (app, s) = setup().await;
    let other = common::sim().await;
    assert_eq!(app.post("/api/gateway/register", &register_body("gw2", &other, &json!({}))).await.0, 201);
    let send = |path: &'static str, body: Value, key: String| {
        let request = app.http.post(format!("{}{path}", app.base)).header("idempotency-key", key).json(&body);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let key = || "key-1".to_owned();
    let (status, first) = send(S, json!({"name": "idem", "labels": {"a": "1"}}), key()).await;
    assert_eq!(status, 202, "{first}");
    let id = first["operation_id"].as_str().unwrap().to_owned();
    // The same request again, keys in another order: the same operation,
    // even once the sandbox exists.
    assert_eq!(finished(&app, &id).await["status"], "succeeded");
    let (status, again) = send(S, json!({"labels": {"a": "1"}, "name": "idem"}), key()).await;
    assert_eq!((status, again["operation_id"].as_str()), (202, Some(id.as_str())), "{again}");
    // The same key with another body is refused and names the first one.
    let (status, reused) = send(S, json!({"name": "idem-2"}), key()).await;
    assert_eq!(status, 422, "{reused}");
    assert_eq!(reused["code"], "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(reused["operation_id"], id.as_str());
    // The same key on another gateway's route is another request.
    let (status, elsewhere) = send("/api/gateways/gw2/sandboxes", json!({"name": "idem"}), key()).await;
    assert_eq!(status, 202, "{elsewhere}");
    assert_ne!(elsewhere["operation_id"], id.as_str());
    // A key that is not a short token is refused up front.
    let (status, long) = send(S, json!({"name": "idem-3"}), "k".repeat(256)).await;
    assert_eq!(status, 400, "{long}");
    let (status, spaced) = send(S, json!({"name": "idem-3"}), "two words".to_owned()).await;
    assert_eq!(status, 400, "{spaced}");
    s.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn a_preset_whose_revision_does_not_load_is_reported_failed_and_the_sandbox_stays() {
    let (app, s) = setup().await;
    s.faults().set_reject_hosts(vec!["registry.npmjs.org".to_owned()]);
    let (status, op) = app.post(S, &json!({"name": "half", "presets": ["pypi", "npm"]})).await;
    assert_eq!(status, 202, "{op}");
    let done = finished(&app, op["operation_id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "the sandbox is there: {done}");
    assert_eq!(done["result"]["presets"]["pypi"]["status"], "applied", "{done}");
    assert_eq!(done["result"]["presets"]["npm"]["status"], "failed", "{done}");
    let why = done["result"]["presets"]["npm"]["error"].as_str().unwrap();
    assert!(why.contains("did not load") && why.contains("registry.npmjs.org"), "{why}");
    assert_eq!(done["result"]["presets_failed"], json!(["npm"]));
    assert_eq!(app.get(&format!("{S}/half")).await.0, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn creating_an_existing_name_is_a_conflict_that_leaves_its_description_alone() {
    let (app, s) = setup().await;
    let (_, op) = app.post(S, &json!({"name": "taken", "description": "the original"})).await;
    assert_eq!(finished(&app, op["operation_id"].as_str().unwrap()).await["status"], "succeeded");
    let (status, again) = app.post(S, &json!({"name": "taken", "description": "an impostor"})).await;
    assert_eq!(status, 409, "{again}");
    assert!(again["detail"].as_str().unwrap().contains("taken"), "{again}");
    let (_, sb) = app.get(&format!("{S}/taken")).await;
    assert_eq!(sb["description"], "the original");
    s.shutdown().await;
}
