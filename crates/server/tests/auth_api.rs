//! Sign-in and access control over real HTTP: the RBAC matrix over every
//! route of the router's own table, CSRF for cookie sessions (U01), a
//! failed identity lookup (U03), sign-in redirects (U05), expired keys
//! (U06), the last admin (U07), demotion on the next request (U08), logout,
//! security headers and the audit entries of all of it.

mod common;

use std::time::Duration;

use breakwater_domain::access::Role;
use breakwater_server::access::Access;
use common::{TestApp, register_body, sim, spawn_app_full};
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN_EMAIL: &str = "admin@example.com";
const PASSWORD: &str = "a long enough passphrase";

async fn app() -> (TestApp, tempfile::TempDir) {
    // No docker or openshell to find, and no real OpenShell config to read.
    let empty = tempfile::tempdir().unwrap();
    let tools = breakwater_services::LocalTools {
        search_path: Some(empty.path().as_os_str().to_owned()),
        openshell_config_dir: Some(empty.path().to_owned()),
        probe_timeout: Duration::from_secs(2),
        action_timeout: Duration::from_secs(2),
        create_timeout: Duration::from_secs(2),
    };
    let auth = breakwater_server::AuthMode::Enabled { secure_cookies: false };
    let app = spawn_app_full(breakwater_store::testing::sqlite().await, Duration::from_secs(60), tools, auth).await;
    (app, empty)
}

/// A client that keeps cookies and sends this site's Origin, as a browser would.
fn browser(app: &TestApp) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("origin", app.base.parse().unwrap());
    reqwest::Client::builder().cookie_store(true).default_headers(headers).build().unwrap()
}

async fn send(c: &reqwest::Client, method: Method, url: &str, bearer: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = c.request(method, url).json(body);
    if let Some(key) = bearer {
        req = req.bearer_auth(key);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Sets up the first admin and signs in; returns the signed-in browser.
async fn admin_browser(app: &TestApp) -> reqwest::Client {
    let b = browser(app);
    let (status, body) = send(
        &b,
        Method::POST,
        &format!("{}/api/auth/setup", app.base),
        None,
        &json!({"email": ADMIN_EMAIL, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    b
}

/// A service principal with `role`; returns its key.
async fn key(app: &TestApp, admin: &reqwest::Client, name: &str, role: &str) -> String {
    let url = format!("{}/api/auth/service-principals", app.base);
    let (status, sp) = send(admin, Method::POST, &url, None, &json!({"name": name, "role": role})).await;
    assert_eq!(status, 201, "{sp}");
    sp["key"].as_str().unwrap().to_owned()
}

/// (who, client, API key, role on a gateway route (true) or elsewhere (false))
type Principal<'a> = (&'a str, &'a reqwest::Client, Option<&'a str>, fn(bool) -> Option<Role>);

fn concrete(path: &str) -> String {
    let gateway_admin = path.starts_with("/api/gateway/");
    path.replace("{gw}", "gw")
        .replace("{sandbox}", "agent-1")
        .replace("{name}", if gateway_admin { "nope" } else { "agent-1" })
        .split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn rbac_matrix_over_every_route_in_the_router() {
    let (app, _tools) = app().await;
    let s = sim().await;
    let admin = admin_browser(&app).await;
    let (status, _) = send(
        &admin,
        Method::POST,
        &format!("{}/api/gateway/register", app.base),
        None,
        &register_body("gw", &s, &json!({})),
    )
    .await;
    assert_eq!(status, 201);
    common::create_sandbox(&s, &json!({})).await;
    let viewer = key(&app, &admin, "viewer", "viewer").await;
    let operator = key(&app, &admin, "operator", "operator").await;
    let admin_key = key(&app, &admin, "admin", "admin").await;
    // A global admin demoted to viewer on gateway `gw` by an override, signed in with a session.
    let (status, demoted) = send(
        &admin,
        Method::POST,
        &format!("{}/api/auth/users", app.base),
        None,
        &json!({"email": "demoted@example.com", "role": "admin", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 201, "{demoted}");
    let id = demoted["id"].as_str().unwrap();
    let url = format!("{}/api/auth/users/{id}/gateway-roles/gw", app.base);
    assert_eq!(send(&admin, Method::PUT, &url, None, &json!({"role": "viewer"})).await.0, 200);
    let demoted_browser = browser(&app);
    let login = format!("{}/api/auth/login", app.base);
    let creds = json!({"email": "demoted@example.com", "password": PASSWORD});
    assert_eq!(send(&demoted_browser, Method::POST, &login, None, &creds).await.0, 200);

    let anonymous = reqwest::Client::new();
    let table = breakwater_server::routes().build().1.all();
    assert!(table.len() > 100, "the whole API is in the table: {}", table.len());
    let principals: [Principal; 5] = [
        ("anonymous", &anonymous, None, |_| None),
        ("viewer", &anonymous, Some(&viewer), |_| Some(Role::Viewer)),
        ("operator", &anonymous, Some(&operator), |_| Some(Role::Operator)),
        ("demoted", &demoted_browser, None, |on_gw| Some(if on_gw { Role::Viewer } else { Role::Admin })),
        ("admin", &anonymous, Some(&admin_key), |_| Some(Role::Admin)),
    ];
    let mut checked = 0;
    for (who, client, bearer, role_of) in principals {
        for route in &table {
            // Sign-out would end the session the rest of the walk uses.
            if route.path == "/api/auth/logout" {
                continue;
            }
            let url = format!("{}{}", app.base, concrete(&route.path));
            let (status, body) = send(client, route.method.clone(), &url, bearer, &json!({})).await;
            let code = body["code"].as_str().unwrap_or("");
            let denied = matches!(code, "UNAUTHENTICATED" | "INSUFFICIENT_ROLE");
            let expected_denied = match route.access {
                Access::Public => false,
                Access::Role(needed) => role_of(route.gateway_scoped()).is_none_or(|r| r < needed),
            };
            assert_eq!(
                denied, expected_denied,
                "{who} {} {} → {status} {body} (access {:?})",
                route.method, route.path, route.access
            );
            if denied {
                let want = if bearer.is_none() && who == "anonymous" { 401 } else { 403 };
                assert_eq!(status, want, "{who} {} {}", route.method, route.path);
            }
            checked += 1;
        }
    }
    assert!(checked > 500, "{checked}");
    s.shutdown().await;
}

#[tokio::test]
async fn u01_a_cookie_write_needs_this_sites_origin_a_bearer_write_does_not() {
    let (app, _tools) = app().await;
    let admin = admin_browser(&app).await;
    let url = format!("{}/api/auth/service-principals", app.base);
    // The same session cookie, sent from another site's page.
    let (status, body) = send(&admin, Method::GET, &format!("{}/api/auth/check", app.base), None, &json!({})).await;
    assert_eq!((status, body["email"].as_str()), (200, Some(ADMIN_EMAIL)), "{body}");
    let r = admin.post(&url).header("origin", "https://evil.example").json(&json!({"name": "x"})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "U01");
    // No Origin at all on a cookie write: refused too.
    let jar_only = {
        let r = admin.get(format!("{}/api/auth/check", app.base)).send().await.unwrap();
        r.status()
    };
    assert_eq!(jar_only.as_u16(), 200);
    let key = key(&app, &admin, "ci", "admin").await;
    // With a bearer key, no Origin is needed.
    let (status, body) =
        send(&reqwest::Client::new(), Method::POST, &url, Some(&key), &json!({"name": "by-key"})).await;
    assert_eq!(status, 201, "{body}");
    let r = app
        .http
        .post(&url)
        .bearer_auth(&key)
        .header("origin", "https://evil.example")
        .json(&json!({"name": "evil"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "a bearer request from a foreign page is still a foreign write");
}

#[tokio::test]
async fn a_cookie_write_without_origin_is_refused() {
    let (app, _tools) = app().await;
    let admin = admin_browser(&app).await;
    // A client holding the cookie but sending no Origin (not a browser page of ours).
    let cookie = {
        let r = app
            .http
            .post(format!("{}/api/auth/login", app.base))
            .json(&json!({"email": ADMIN_EMAIL, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned()
    };
    drop(admin);
    let r = app
        .http
        .post(format!("{}/api/auth/service-principals", app.base))
        .header("cookie", &cookie)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "CSRF_REFUSED", "{body}");
    // Reads need no Origin.
    let r = app.http.get(format!("{}/api/auth/users", app.base)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn u03_a_failed_identity_lookup_refuses_with_503_never_allows() {
    let (app, _tools) = app().await;
    let admin = admin_browser(&app).await;
    let key = key(&app, &admin, "ci", "admin").await;
    app.store.raw_execute("DROP TABLE sessions").await;
    app.store.raw_execute("DROP TABLE service_principals").await;
    let (status, body) = send(&admin, Method::GET, &format!("{}/api/auth/users", app.base), None, &json!({})).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("AUTH_UNAVAILABLE")), "{body}");
    let (status, _) = send(&app.http, Method::GET, &format!("{}/api/audit", app.base), Some(&key), &json!({})).await;
    assert_eq!(status, 503);
    let r = app.http.get(format!("{}/api/audit", app.base)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "5", "a 503 says when to come back");
}

#[tokio::test]
async fn u05_u06_u07_u08_and_logout() {
    let (app, _tools) = app().await;
    let admin = admin_browser(&app).await;
    // U05: only a local path is followed after sign-in.
    let b = browser(&app);
    for (next, want) in [
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/gateways", "/gateways"),
    ] {
        let url = format!("{}/api/auth/login?next={}", app.base, urlencode(next));
        let (status, body) =
            send(&b, Method::POST, &url, None, &json!({"email": ADMIN_EMAIL, "password": PASSWORD})).await;
        assert_eq!((status, body["redirect"].as_str()), (200, Some(want)), "{next}: {body}");
    }
    // U06: an expired key is refused with 401.
    let url = format!("{}/api/auth/service-principals", app.base);
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(500)).to_rfc3339();
    let (_, sp) =
        send(&admin, Method::POST, &url, None, &json!({"name": "brief", "role": "admin", "expires_at": soon})).await;
    let brief = sp["key"].as_str().unwrap().to_owned();
    assert_eq!(send(&app.http, Method::GET, &format!("{}/api/audit", app.base), Some(&brief), &json!({})).await.0, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, body) =
        send(&app.http, Method::GET, &format!("{}/api/audit", app.base), Some(&brief), &json!({})).await;
    assert_eq!(status, 401, "U06: {body}");

    // U07: the last admin cannot demote themself.
    let (_, users) = send(&admin, Method::GET, &format!("{}/api/auth/users", app.base), None, &json!({})).await;
    let me = users.as_array().unwrap().iter().find(|u| u["email"] == ADMIN_EMAIL).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) =
        send(&admin, Method::PATCH, &format!("{}/api/auth/users/{me}", app.base), None, &json!({"role": "viewer"}))
            .await;
    assert_eq!(status, 409, "U07: {body}");
    let (status, _) =
        send(&admin, Method::DELETE, &format!("{}/api/auth/users/{me}", app.base), None, &json!({})).await;
    assert_eq!(status, 409);

    // U08: an operator demoted while signed in is refused on the next write.
    let (_, op) = send(
        &admin,
        Method::POST,
        &format!("{}/api/auth/users", app.base),
        None,
        &json!({"email": "op@example.com", "role": "operator", "password": PASSWORD}),
    )
    .await;
    let op_id = op["id"].as_str().unwrap().to_owned();
    let op_browser = browser(&app);
    let creds = json!({"email": "op@example.com", "password": PASSWORD});
    assert_eq!(send(&op_browser, Method::POST, &format!("{}/api/auth/login", app.base), None, &creds).await.0, 200);
    let write = format!("{}/api/operations/nope/cancel", app.base);
    assert_eq!(
        send(&op_browser, Method::POST, &write, None, &json!({})).await.0,
        404,
        "allowed: the operation is unknown"
    );
    let (status, _) =
        send(&admin, Method::PATCH, &format!("{}/api/auth/users/{op_id}", app.base), None, &json!({"role": "viewer"}))
            .await;
    assert_eq!(status, 200);
    let (status, body) = send(&op_browser, Method::POST, &write, None, &json!({})).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("INSUFFICIENT_ROLE")), "U08: {body}");

    // Logout ends the session on the server, not only in the browser.
    let check = format!("{}/api/auth/check", app.base);
    let cookie_before = op_browser.get(&check).send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(cookie_before["authenticated"], true);
    assert_eq!(
        send(&op_browser, Method::POST, &format!("{}/api/auth/logout", app.base), None, &json!({})).await.0,
        200
    );
    assert_eq!(op_browser.get(&check).send().await.unwrap().json::<Value>().await.unwrap()["authenticated"], false);

    // Every response carries the security headers.
    let r = app.http.get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");

    // Attributed in the audit trail: sign-ins, failures, role changes, refusals.
    let (_, audit) = send(&admin, Method::GET, &format!("{}/api/audit?limit=200", app.base), None, &json!({})).await;
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["auth.setup", "auth.login", "user.set_role", "access.forbidden", "service_principal.create"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

#[tokio::test]
async fn setup_once_then_sign_in_and_bad_passwords_answer_alike() {
    let (app, _tools) = app().await;
    let check = format!("{}/api/auth/check", app.base);
    let (_, before) = send(&app.http, Method::GET, &check, None, &json!({})).await;
    assert_eq!(
        (before["needs_setup"].as_bool(), before["auth_enabled"].as_bool()),
        (Some(true), Some(true)),
        "{before}"
    );
    let (status, _) = send(&app.http, Method::GET, &format!("{}/api/gateway/list", app.base), None, &json!({})).await;
    assert_eq!(status, 401, "nothing is open before sign-in");
    let admin = admin_browser(&app).await;
    let (status, again) = send(
        &app.http,
        Method::POST,
        &format!("{}/api/auth/setup", app.base),
        None,
        &json!({"email": "late@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 409, "{again}");
    let login = format!("{}/api/auth/login", app.base);
    let unknown =
        send(&app.http, Method::POST, &login, None, &json!({"email": "who@example.com", "password": "x".repeat(20)}))
            .await;
    let wrong =
        send(&app.http, Method::POST, &login, None, &json!({"email": ADMIN_EMAIL, "password": "x".repeat(20)})).await;
    assert_eq!(unknown.0, 401);
    assert_eq!((unknown.0, &unknown.1["detail"]), (wrong.0, &wrong.1["detail"]), "U04: same status and body");
    let (_, me) = send(&admin, Method::GET, &check, None, &json!({})).await;
    assert_eq!((me["role"].as_str(), me["needs_setup"].as_bool()), (Some("admin"), Some(false)));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The router's table agrees with the contract: every contract route we
/// serve has the contract's least role (our own additions are listed in
/// docs/server.md).
#[test]
fn every_route_has_the_least_role_the_contract_gives_it() {
    let contract: std::collections::HashMap<(String, String), String> = include_str!("contract_roles.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            let (m, p, r) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            ((m.to_owned(), p.to_owned()), r.to_owned())
        })
        .collect();
    let normalise =
        |p: &str| p.split('/').map(|s| if s.starts_with('{') { "{}" } else { s }).collect::<Vec<_>>().join("/");
    let mut compared = 0;
    for route in breakwater_server::routes().build().1.all() {
        let key = (route.method.to_string(), normalise(&route.path));
        let Some(want) = contract.get(&key) else { continue };
        let have = match route.access {
            Access::Public => "public".to_owned(),
            Access::Role(r) => r.as_str().to_owned(),
        };
        assert_eq!(&have, want, "{} {}", route.method, route.path);
        compared += 1;
    }
    assert!(compared > 90, "most of the contract is served: {compared}");
}

#[tokio::test]
async fn one_address_is_rate_limited_probes_are_not_and_forwarding_headers_need_a_trusted_proxy() {
    let tools = breakwater_services::LocalTools::default();
    let app = common::spawn_app_limited(
        breakwater_store::testing::sqlite().await,
        Duration::from_secs(60),
        tools,
        breakwater_server::AuthMode::Local,
        30,
        &[],
    )
    .await;
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    let r = app
        .http
        .patch(format!("{}/api/gateway/nope", app.base))
        .header("x-forwarded-for", "203.0.113.9")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let mut limited = None;
    for i in 0..40 {
        let r = app.http.get(format!("{}/api/gateway/list", app.base)).send().await.unwrap();
        if r.status().as_u16() == 429 {
            limited = Some((i, r.headers()["retry-after"].to_str().unwrap().to_owned()));
            break;
        }
    }
    let (at, retry) = limited.expect("the 31st request in a minute is refused");
    assert!(at >= 28, "the bucket holds 30: refused at {at}");
    assert!(retry.parse::<u64>().unwrap() >= 1);
    for _ in 0..50 {
        assert_eq!(app.http.get(format!("{}/healthz", app.base)).send().await.unwrap().status().as_u16(), 200);
    }

    // Behind a trusted proxy, the forwarded client is the one limited and recorded.
    let proxied = common::spawn_app_limited(
        breakwater_store::testing::sqlite().await,
        Duration::from_secs(60),
        breakwater_services::LocalTools::default(),
        breakwater_server::AuthMode::Local,
        0,
        &["127.0.0.1"],
    )
    .await;
    let r = proxied
        .http
        .post(format!("{}/api/audit/cleanup", proxied.base))
        .header("x-forwarded-for", "198.51.100.4, 127.0.0.1")
        .json(&json!({"older_than_days": 3650}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, audit) = proxied.get("/api/audit?action=audit.cleanup").await;
    assert_eq!(audit["entries"][0]["client_ip"], "198.51.100.4", "{audit}");
}

#[tokio::test]
async fn groups_grant_roles_to_their_members_globally_and_per_gateway() {
    let (app, _tools) = app().await;
    let admin = admin_browser(&app).await;
    let api = |p: &str| format!("{}{p}", app.base);
    let (_, user) = send(
        &admin,
        Method::POST,
        &api("/api/auth/users"),
        None,
        &json!({"email": "member@example.com", "role": "viewer", "password": PASSWORD}),
    )
    .await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let member = browser(&app);
    let creds = json!({"email": "member@example.com", "password": PASSWORD});
    assert_eq!(send(&member, Method::POST, &api("/api/auth/login"), None, &creds).await.0, 200);
    let global_write = api("/api/operations/nope/cancel");
    let gateway_write = api("/api/gateways/gw/sandboxes/agent-1/stop");
    let code = |r: (u16, Value)| r.1["code"].as_str().unwrap_or("").to_owned();
    assert_eq!(code(send(&member, Method::POST, &global_write, None, &json!({})).await), "INSUFFICIENT_ROLE");

    let (status, group) =
        send(&admin, Method::POST, &api("/api/auth/groups"), None, &json!({"name": "sre", "role": "operator"})).await;
    assert_eq!(status, 201, "{group}");
    let gid = group["id"].as_str().unwrap().to_owned();
    let (status, _) = send(
        &admin,
        Method::POST,
        &api(&format!("/api/auth/groups/{gid}/members")),
        None,
        &json!({"user_id": user_id}),
    )
    .await;
    assert_eq!(status, 201);
    // Now an operator everywhere, at the next request.
    assert_ne!(code(send(&member, Method::POST, &global_write, None, &json!({})).await), "INSUFFICIENT_ROLE");
    assert_ne!(code(send(&member, Method::POST, &gateway_write, None, &json!({})).await), "INSUFFICIENT_ROLE");
    // The group's role on gateway gw beats its global role there.
    let url = api(&format!("/api/auth/groups/{gid}/gateway-roles/gw"));
    assert_eq!(send(&admin, Method::PUT, &url, None, &json!({"role": "viewer"})).await.0, 200);
    assert_eq!(code(send(&member, Method::POST, &gateway_write, None, &json!({})).await), "INSUFFICIENT_ROLE");
    assert_ne!(code(send(&member, Method::POST, &global_write, None, &json!({})).await), "INSUFFICIENT_ROLE");
    // The member's own override beats the group's gateway role.
    let own = api(&format!("/api/auth/users/{user_id}/gateway-roles/gw"));
    assert_eq!(send(&admin, Method::PUT, &own, None, &json!({"role": "admin"})).await.0, 200);
    assert_ne!(code(send(&member, Method::POST, &gateway_write, None, &json!({})).await), "INSUFFICIENT_ROLE");

    let (_, detail) = send(&admin, Method::GET, &api(&format!("/api/auth/groups/{gid}")), None, &json!({})).await;
    assert_eq!(detail["members"][0]["email"], "member@example.com", "{detail}");
    assert_eq!(detail["gateway_roles"][0]["role"], "viewer");
    let (status, _) =
        send(&admin, Method::POST, &api("/api/auth/groups"), None, &json!({"name": "sre", "role": "viewer"})).await;
    assert_eq!(status, 409, "group names are unique");
    let (status, updated) =
        send(&admin, Method::PUT, &api(&format!("/api/auth/groups/{gid}")), None, &json!({"role": null})).await;
    assert_eq!((status, updated["role"].is_null()), (200, true), "{updated}");
    assert_eq!(code(send(&member, Method::POST, &global_write, None, &json!({})).await), "INSUFFICIENT_ROLE");
    assert_eq!(send(&admin, Method::DELETE, &api(&format!("/api/auth/groups/{gid}")), None, &json!({})).await.0, 200);
    assert_eq!(send(&admin, Method::GET, &api(&format!("/api/auth/groups/{gid}")), None, &json!({})).await.0, 404);
    let (_, audit) = send(&admin, Method::GET, &api("/api/audit?limit=200"), None, &json!({})).await;
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["group.create", "group.add_member", "group.update", "group.delete", "access.gateway_role"] {
        assert!(actions.contains(&a), "{a}");
    }
}

#[tokio::test]
async fn an_invite_is_used_once_and_registration_is_off_by_default() {
    let (app, _tools) = app().await;
    let admin = admin_browser(&app).await;
    let api = |p: &str| format!("{}{p}", app.base);
    let (status, created) = send(
        &admin,
        Method::POST,
        &api("/api/auth/users"),
        None,
        &json!({"email": "new@example.com", "role": "operator"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let token = created["invite_token"].as_str().unwrap().to_owned();
    // Until the invite is used, the account has no password to guess.
    let creds = json!({"email": "new@example.com", "password": PASSWORD});
    assert_eq!(send(&app.http, Method::POST, &api("/api/auth/login"), None, &creds).await.0, 401);
    let b = browser(&app);
    let (status, body) =
        send(&b, Method::POST, &api("/api/auth/accept-invite"), None, &json!({"token": token, "password": PASSWORD}))
            .await;
    assert_eq!((status, body["role"].as_str()), (200, Some("operator")), "{body}");
    let (_, me) = send(&b, Method::GET, &api("/api/auth/check"), None, &json!({})).await;
    assert_eq!(me["email"], "new@example.com", "signed in by the invite: {me}");
    let (status, again) = send(
        &app.http,
        Method::POST,
        &api("/api/auth/accept-invite"),
        None,
        &json!({"token": token, "password": "another long passphrase"}),
    )
    .await;
    assert_eq!(status, 401, "one use only: {again}");
    assert_eq!(send(&app.http, Method::POST, &api("/api/auth/login"), None, &creds).await.0, 200);
    let (status, body) = send(
        &app.http,
        Method::POST,
        &api("/api/auth/register"),
        None,
        &json!({"email": "walkin@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("REGISTRATION_DISABLED")), "{body}");
    let (_, check) = send(&app.http, Method::GET, &api("/api/auth/check"), None, &json!({})).await;
    assert_eq!(check["registration_enabled"], false);
}

#[tokio::test]
async fn behind_tls_a_plain_http_page_on_the_same_host_may_not_write() {
    let app = spawn_app_full(
        breakwater_store::testing::sqlite().await,
        Duration::from_secs(60),
        breakwater_services::LocalTools::default(),
        breakwater_server::AuthMode::Enabled { secure_cookies: true },
    )
    .await;
    let authority = app.base.trim_start_matches("http://").to_owned();
    let post = |origin: String| {
        app.http
            .post(format!("{}/api/auth/login", app.base))
            .header("origin", origin)
            .json(&json!({"email": "x@example.com", "password": "not it at all"}))
            .send()
    };
    let plain: Value = post(format!("http://{authority}")).await.unwrap().json().await.unwrap();
    assert_eq!(plain["code"], "CROSS_ORIGIN_REFUSED", "{plain}");
    let tls = post(format!("https://{authority}")).await.unwrap();
    assert_ne!(tls.status(), 403, "an https page on this host passes the Origin check");
}
