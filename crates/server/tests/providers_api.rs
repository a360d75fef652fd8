//! Providers over real HTTP: CRUD, the primary key mapped to the type's
//! variable, a canary credential that never comes back anywhere (responses,
//! audit, the database), and S08 (a provider in use cannot be deleted).

mod common;

use common::setup;
use serde_json::{Value, json};

const P: &str = "/api/gateways/gw/providers";
const CANARY: &str = "sk-canary-7d1f0c2e9b";

#[tokio::test]
async fn crud_keeps_the_canary_secret_everywhere() {
    let (app, s) = setup().await;
    let mut seen = Vec::new();
    let (status, created) = app.post(P, &json!({"name": "claude", "type": "anthropic", "api_key": CANARY})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["credential_keys"], json!(["ANTHROPIC_API_KEY"]), "mapped to the type's variable");
    seen.push(created);
    let (status, unknown) = app.post(P, &json!({"name": "misc", "type": "something-new", "api_key": CANARY})).await;
    assert_eq!(status, 201);
    assert_eq!(unknown["credential_keys"], json!(["API_KEY"]), "unknown types fall back to API_KEY");
    seen.push(unknown);
    let (status, dup) = app.post(P, &json!({"name": "claude", "type": "anthropic"})).await;
    assert_eq!(status, 409, "{dup}");
    assert_eq!(app.post(P, &json!({"name": "notype"})).await.0, 400);

    let r = app
        .http
        .put(format!("{}{P}/claude", app.base))
        .json(&json!({"credentials": {"EXTRA": CANARY}, "config": {"region": "eu"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let updated: Value = r.json().await.unwrap();
    let keys = updated["credential_keys"].as_array().unwrap();
    assert!(keys.contains(&json!("EXTRA")) && keys.contains(&json!("ANTHROPIC_API_KEY")), "{updated}");
    seen.push(updated);
    seen.push(app.get(&format!("{P}/claude")).await.1);
    let (_, list) = app.get(P).await;
    assert_eq!(list["total"], 2, "{list}");
    seen.push(list);
    seen.push(app.get("/api/audit").await.1);
    seen.push(app.get("/api/audit/export?format=json").await.1);
    for body in &seen {
        assert!(!body.to_string().contains(CANARY), "the credential came back: {body}");
    }
    assert!(!app.store.dump_text().await.contains(CANARY), "nor is it in Breakwater's database");
    let (_, types) = app.get(&format!("{P}/types")).await;
    assert!(
        types.as_array().unwrap().iter().any(|t| t["id"] == "github" && t["credential_variable"] == "GITHUB_TOKEN")
    );

    assert_eq!(app.delete(&format!("{P}/misc")).await.0, 200);
    assert_eq!(app.get(&format!("{P}/misc")).await.0, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn s08_a_provider_attached_to_a_sandbox_cannot_be_deleted() {
    let (app, s) = setup().await;
    assert_eq!(app.post(P, &json!({"name": "gh", "type": "github", "api_key": CANARY})).await.0, 201);
    let (status, op) = app.post("/api/gateways/gw/sandboxes", &json!({"name": "uses-gh", "providers": ["gh"]})).await;
    assert_eq!(status, 202, "{op}");
    let id = op["operation_id"].as_str().unwrap();
    for _ in 0..40 {
        let (_, o) = app.get(&format!("/api/operations/{id}?wait=2")).await;
        if o["status"] == "succeeded" {
            break;
        }
    }
    let (status, body) = app.delete(&format!("{P}/gh")).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("uses-gh"), "names the sandbox: {body}");
    s.shutdown().await;
}

#[tokio::test]
async fn s09_inference_routes_check_the_provider_then_say_0_1_gateways_have_none() {
    let (app, s) = setup().await;
    assert_eq!(app.post(P, &json!({"name": "nim", "type": "nvidia", "api_key": CANARY})).await.0, 201);
    let r = app
        .http
        .put(format!("{}/api/gateways/gw/inference", app.base))
        .json(&json!({"provider_name": "ghost", "model_id": "meta/llama-3.1-8b-instruct"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("it has: nim"), "lists the gateway's providers: {body}");
    let r = app
        .http
        .put(format!("{}/api/gateways/gw/inference", app.base))
        .json(&json!({"provider_name": "nim", "model_id": "meta/llama-3.1-8b-instruct"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 501);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unsupported_by_gateway");
    assert!(body["detail"].as_str().unwrap().contains("provider"), "{body}");
    let (status, body) = app.get("/api/gateways/gw/inference").await;
    assert_eq!((status, body["code"].as_str()), (501, Some("unsupported_by_gateway")));
    assert_eq!(app.get("/api/gateways/nope/inference").await.0, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn attach_list_and_detach_providers_on_a_sandbox() {
    let (app, s) = setup().await;
    assert_eq!(app.post(P, &json!({"name": "gh", "type": "github", "api_key": CANARY})).await.0, 201);
    let sp = "/api/gateways/gw/sandboxes/agent-1/providers";
    let (status, out) = app.post(sp, &json!({"provider_name": "gh"})).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["changed"], true);
    assert_eq!(app.post(sp, &json!({"provider_name": "gh"})).await.1["changed"], false, "already attached");
    let (status, list) = app.get(sp).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["name"], "gh");
    assert!(!list.to_string().contains(CANARY));
    assert_eq!(app.delete(&format!("{P}/gh")).await.0, 409, "in use");
    let (status, out) = app.delete(&format!("{sp}/gh")).await;
    assert_eq!((status, out["changed"].as_bool()), (200, Some(true)), "{out}");
    assert_eq!(app.delete(&format!("{P}/gh")).await.0, 200, "free to go now");
    let (_, audit) = app.get("/api/audit?resource_type=sandbox").await;
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(
        actions.contains(&"sandbox.provider.attach") && actions.contains(&"sandbox.provider.detach"),
        "{actions:?}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn the_gateways_profiles_are_preferred_and_the_built_in_table_fills_in() {
    let (app, s) = setup().await;
    // `aws` is only a gateway profile: its variable comes from the gateway.
    let (status, aws) = app.post(P, &json!({"name": "cloud", "type": "aws", "api_key": CANARY})).await;
    assert_eq!(status, 201, "{aws}");
    assert_eq!(aws["credential_keys"], json!(["AWS_ACCESS_KEY_ID"]));
    // An empty value deletes a key (the gateway's merge rule).
    let put = |body: Value| {
        let (http, url) = (app.http.clone(), format!("{}{P}/cloud", app.base));
        async move { http.put(url).json(&body).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let more = put(json!({"credentials": {"AWS_SECRET_ACCESS_KEY": CANARY}})).await;
    assert_eq!(more["credential_keys"].as_array().unwrap().len(), 2, "{more}");
    let less = put(json!({"credentials": {"AWS_SECRET_ACCESS_KEY": ""}})).await;
    assert_eq!(less["credential_keys"], json!(["AWS_ACCESS_KEY_ID"]), "{less}");

    let (status, types) = app.get(&format!("{P}/types")).await;
    assert_eq!(status, 200, "{types}");
    let find = |id: &str| types.as_array().unwrap().iter().find(|t| t["id"] == id).cloned().unwrap();
    assert_eq!(find("aws")["source"], "gateway");
    assert_eq!(find("claude")["source"], "built_in", "the table fills in what the gateway lacks");
    let (_, inference) = app.get(&format!("{P}/inference-providers")).await;
    let anthropic = inference.as_array().unwrap().iter().find(|i| i["id"] == "anthropic").unwrap();
    assert_eq!(
        (anthropic["source"].as_str(), anthropic["example_model"].as_str()),
        (Some("gateway"), Some("claude-sonnet-4-20250514"))
    );
    let (_, community) = app.get(&format!("{P}/community-sandboxes")).await;
    assert_eq!(community.as_array().unwrap().len(), 4, "{community}");
    assert_eq!(app.get("/api/gateways/missing/providers/community-sandboxes").await.0, 404);

    let profiles = "/api/gateways/gw/provider-profiles";
    let (status, page) = app.get(&format!("{profiles}?limit=2")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let total = page["total"].as_u64().unwrap();
    assert!(total > 2, "{page}");
    let (status, github) = app.get(&format!("{profiles}/github")).await;
    assert_eq!((status, github["credentials"][0]["env_vars"][0].as_str()), (200, Some("GITHUB_TOKEN")), "{github}");
    assert_eq!(app.delete(&format!("{profiles}/github")).await.0, 200);
    assert_eq!(app.get(&format!("{profiles}/github")).await.0, 404);
    assert_eq!(app.get(profiles).await.1["total"].as_u64(), Some(total - 1));
    assert_eq!(app.delete(&format!("{profiles}/github")).await.0, 404);
    assert_eq!(app.get(&format!("{profiles}/bad%20id")).await.0, 400);
    let (_, types) = app.get(&format!("{P}/types")).await;
    let github = types.as_array().unwrap().iter().find(|t| t["id"] == "github").unwrap();
    assert_eq!(github["source"], "built_in", "{github}");
    let (_, audit) = app.get("/api/audit?action=provider_profile.delete").await;
    assert_eq!(audit["total"], 1);
    s.shutdown().await;
}
