//! OIDC sign-in over real HTTP: the real router against a small identity
//! provider in this file (discovery, JWKS, an authorize endpoint that checks
//! the PKCE parameters, a token endpoint that checks the verifier, the client
//! secret and the redirect URI, and signs RS256 ID tokens). Each check the
//! server makes on a callback has a test named after it.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use breakwater_domain::access::Role;
use breakwater_domain::registry::AuditFilter;
use breakwater_services::oidc::{ClientAuth, OidcProviderConfig};
use breakwater_services::{OidcConfig, OidcSettings};
use common::TestApp;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::Digest as _;

/// Two fixed test keys (2048-bit RSA, made for this file and used nowhere else).
const KEY_1: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEA7VMfsOOcCxbHhJJwM+FzPcWlsNYPRYufkM47o0QCTjTwKiPe
W7LCqGxClifsdmhf0Eb1afSgnSjYrG8aWd+TdsEaiuOVI3it8bP1CuydpW5ay0L1
KTtViNOOfgr3YexxlZU5O3D/vHpiZvXeO5zU3Zj6XJuyX/PIqoxKhjjc/UzmMMel
StAnC8E41XU8fR6Frou5QQqb4eD29X2gk1rw2bMj0YBdiDSH7fcmwcMJytJj9w2D
i9q51QK6sBEVFDrn7vPnIF/jcEk3TL4y0Pq/L6fR/PESCEPLLzNPs004mw/1nDRv
JXTleZ3k8jRYn8TSvXfC1UjCVfMicXm+K0+EfwIDAQABAoIBACJXYus/zwwJEc9B
5BvocGVB58X8/ly75YJuCqcyEiYATGMXVE0Z7Z0IKA0pCHM3Net3jnpJ5xaWxd5o
fVGqo+C39KqgYAEFV3ZK6hct7L9MMWCJodwuNSRa00WzOd+LoqwDLzLww7DMV4I6
lcaJMoGWagljO56IMkNWOvp32VKLD3YZLaxd/W/e47pwPN7Q6CT/TMUt7xsbnyQ1
iz9VDDB4orhRF6/HoJUbpIrlmCzdOphLxyyDSIPkfDenhtEL0imC29MWQtcDzBMA
Lg4E/bv//JoAeHCQAogZpXrTlPVk5+q2GF5v5huRAzC6RO83n0/fAA3/qTHcqXTb
rfaL7hECgYEA9/dqgcRusAkHe9PqkN1OENUvu7H7oAfl3e/NO0cyXVPRDlF5fe/X
H4Erb6qCA7L5QH4CGdQg3IqMJej+ctePjWHyFys4bxUhPjVeRqcyVrt/eYkFtqHO
guG8pmRS7sQBay0Ghqg9XieoSXc58UP8RGQWbZQvsMsi8XijNHMEPV0CgYEA9QNy
c+jUoTK7OY9Ro+SxXlsloR2t/jeGYkEmIBhpH+P7hFCTPvP3rpdnxaviHg1WGk60
76hc2UzGly91lW0QDCPhSuk89lijLvy7qHkZ4n9E2oy5vy5MBd/lZ7LUW47pnNGs
e/lU2SDsu46gfAOs9AHIazytr/Ey+XKkwWm0z4sCgYBBRWRIwk8skUPiCXdOKKLa
9XL6IjCNAGc2k1/fga81N9HoxfOH/fEPfu3TF/vfQ2Yu3rxo1hjMVL/tXrZTvoAw
BB84kAzr2JEGkf+981bh07sLX9EcMN1uQENrPS9DYF7LOm/kVDbLKP84T2T2KCIo
UnxA3efrzpzlGQ9EyB3OlQKBgHpD/hlZVsIaTtOqcVMYDGrJkT2VUf5KNwVQ/XWG
uO7xFdIxY0lG9ZJqe55o562XeiAmpqPxoGPPrEpFpKeshRWJ0iNPwNwt30DTXdH0
nLYqTHHDR+3fbJCB6jiVRONrrahT+X7kLTMs+vWddvhr3SLmwNzCqunhs05Hp2/d
EB2BAoGBAMEjRH1F9gfhuSXgunOcZ/3AdwKEmdcnNSBWdty3WK/D496tHkJwllXd
lbvrYl3C9Iyh1/O93qxfvUGP9XvhrEfvh6s758+0RhYaM4Iukt63EJeoyT3X7HY9
5+6KPE5NN0pNyfuxmvgiH3Uf4l9a7+ReE/8xWgIoE0hzjO05EoZV
-----END RSA PRIVATE KEY-----";
const KEY_2: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEpQIBAAKCAQEAyKgVcIJpK3yQIu+d0rNs87Urc+E82dcSFAaDXBRKhr+Dy6GU
0F1HSH/V1q8biRl9Hq+fK4ZKAL8vCc92fFuVMWT6NMvBOA8gqSxW4t457Bgpjb14
jGZFL4Uq7H2ypGzaWzij0lTbSXavC6vpb8mZTVYUam7NoYLNP6AR9OsV3mVXLwHP
NEnQmY5tOwNt1XxUlkeXTzc+Sv6dkl+H4LtZ0U+qwd3c/xerotEEos0SHDf0Z+x0
8LzOmxcLv2gmkOTWusZXqM9YwSMJnupspMQq2BbXISYi0cDEy0Ey8rxx0wNLahvZ
930ijDTK8JkPhVSVcnjAT/El7tZh+le4Mt9XewIDAQABAoIBAAHGmwn33X5pB82H
WVo4BErT26KW57b11E8hD6CM/Wvb3gq7T1nYuXzGxNm1iwTXmOfgngQAmD8RchUg
JOhM1zEst5ooA3m/iIZ2wf4YAWM5g4ShnKOBdDNLdmnJYv9Zh0UvZyPBZH9t8Xak
+tfmbNjmXh/jAybexXo+rGoCepsRPoPtPT8X4ca9ZKzu4bnYrq6wUoy/4KzwwTAM
nwO+7xQI1TT/aqMjXb/LrlDhIdjyDa2FyW1iq0qxGgLHKQWnTiqUGYlKfZLQtjre
PulOfiqEkzLwlKBO1r/Nvf2E1yN/qVZrjnBXEQ0YcJNlYReSg0cYGp2IV5eHJLUt
RQSg9yECgYEA7qZJvH6KSCcPFWqjJL2b3LpvYgRELCUqF1DuZf4PiaKtvLfxhiSS
kgKevuJc36JeVJQ2i/9wCsxh1tIUitQWvWxL8rEv8C7aX+NPhX8bAXkl/C+dpyqw
WnlRFVumD8LICM/0vNNRDENy0cWLDSbmFThl13u+JExTRVkiDRvxLWcCgYEA1z6s
9lCdmrX0IA5dWKlaDjSPRnmMCrmAmxZFaFgZy1dHVyltYhWpyMgsCz4Il/V65N6K
PEmIfloClFFxtdxwmx+TD5vN0CkcEFF2zqCgkRccPELYH3QZqLZbBTL4FDsiLH9G
g5ZEMLIH2zoU2xuEMdW2WRmDuU5TVsAdv3AYpM0CgYEA001i3kXAVFBZF6Janw5P
ManVMxkJ73hcg1aCLsY7pabnY8AOVrKNIEC3o9WzW8Nc+FBe16gs4TLDsjxCOgW9
uKxptpHSGzyw19PhNhcrpytISbkzQq8WhJUECQAj0bKqALt4O7Ry/4O85yWcj+GQ
ONu9uIR0/5ig5jccYjUKXyMCgYEAqfXmk3SijjhgtTNCiDDpWFAuViLB7vH9V/il
A7iVXZfkUDH5Gjsq3s0Y4iOwm3UN/kyu8N3LdqHSaZVJ6aVQEV1EPU30nQrpCwWY
f54cS5TpCbhqeaOuYybjBl7xvt/WozY40szDuYPKalQZhc3be5JaM07PUXJEojp/
AtwbyX0CgYEAsM0rfJs/734QC+b2gGw3HPzn8sHGIDwNvR0mm64Uglu1QR2ibu+H
Boq72IvofVqKRwgflxE9Y8BXnx3U0FTfX6H44GehiTZm9tnVw+F5LhLQXmUmEZd6
14aeugu7QAvvb+cE4Q8joVvfwQQEeAVBNsMafcqk1i2pzy+5iClP/y0=
-----END RSA PRIVATE KEY-----";

const CLIENT_ID: &str = "bw-client";
const CLIENT_SECRET: &str = "the-client-secret-7f3a9c";
const ADMIN_EMAIL: &str = "admin@example.com";
const PASSWORD: &str = "a long enough passphrase";

/// What the next ID token gets wrong, one check at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tweak {
    None,
    WrongNonce,
    WrongIssuer,
    WrongAudience,
    Expired,
    /// No `iat` claim.
    NoIssuedAt,
    /// Signed with a key other than the one its `kid` names.
    BadSignature,
    /// The authorize endpoint records another challenge than the one sent,
    /// as if it had been swapped in transit: the verifier cannot match it.
    OtherChallenge,
}

struct Pending {
    challenge: String,
    nonce: String,
    redirect_uri: String,
}

struct IdpState {
    issuer: String,
    /// The key tokens are signed with, and its `kid`.
    signing: (String, &'static str),
    /// The keys the JWKS publishes.
    published: Vec<(String, &'static str)>,
    codes: HashMap<String, Pending>,
    /// Claims of the next token beyond iss/aud/exp/iat/nonce.
    claims: Value,
    tweak: Tweak,
    jwks_fetches: u32,
    /// Token requests whose verifier matched the challenge.
    verified: u32,
}

#[derive(Clone)]
struct Idp {
    base: String,
    state: Arc<Mutex<IdpState>>,
}

fn jwk(kid: &str, pem: &str) -> Value {
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap()).unwrap();
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("sig");
    jwk
}

fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

async fn discovery(State(idp): State<Idp>) -> Response {
    let issuer = idp.state.lock().unwrap().issuer.clone();
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{}/authorize", idp.base),
        "token_endpoint": format!("{}/token", idp.base),
        "jwks_uri": format!("{}/jwks", idp.base),
        "code_challenge_methods_supported": ["S256"],
    }))
    .into_response()
}

async fn jwks(State(idp): State<Idp>) -> Response {
    let mut st = idp.state.lock().unwrap();
    st.jwks_fetches += 1;
    let keys: Vec<Value> = st.published.iter().map(|(kid, pem)| jwk(kid, pem)).collect();
    axum::Json(json!({"keys": keys})).into_response()
}

fn bad(what: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_request", "error_description": what})))
        .into_response()
}

/// Checks what a real provider checks, then sends the browser back at once.
async fn authorize(State(idp): State<Idp>, Query(q): Query<HashMap<String, String>>) -> Response {
    let param = |k: &str| q.get(k).cloned().unwrap_or_default();
    if param("response_type") != "code" || param("client_id") != CLIENT_ID {
        return bad("response_type or client_id");
    }
    if param("code_challenge_method") != "S256" || param("code_challenge").len() != 43 {
        return bad("PKCE S256 is required");
    }
    if !param("scope").split(' ').any(|s| s == "openid") || param("state").is_empty() || param("nonce").is_empty() {
        return bad("scope, state and nonce");
    }
    let code = uuid::Uuid::new_v4().to_string();
    let mut st = idp.state.lock().unwrap();
    let challenge = if st.tweak == Tweak::OtherChallenge { s256("another verifier") } else { param("code_challenge") };
    st.codes.insert(code.clone(), Pending { challenge, nonce: param("nonce"), redirect_uri: param("redirect_uri") });
    let back = format!(
        "{}?code={code}&state={}",
        param("redirect_uri"),
        form_urlencoded::byte_serialize(param("state").as_bytes()).collect::<String>()
    );
    (StatusCode::FOUND, [(header::LOCATION, back)]).into_response()
}

async fn token(State(idp): State<Idp>, headers: HeaderMap, Form(f): Form<HashMap<String, String>>) -> Response {
    let basic =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(basic.as_str()) {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"}))).into_response();
    }
    let field = |k: &str| f.get(k).cloned().unwrap_or_default();
    let mut st = idp.state.lock().unwrap();
    // A code is used once.
    let Some(pending) = st.codes.remove(&field("code")) else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant"}))).into_response();
    };
    if field("grant_type") != "authorization_code" || field("redirect_uri") != pending.redirect_uri {
        return bad("grant_type or redirect_uri");
    }
    if s256(&field("code_verifier")) != pending.challenge {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": "invalid_grant", "error_description": "PKCE verifier mismatch (upstream detail)"}),
            ),
        )
            .into_response();
    }
    st.verified += 1;
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": st.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300, "nonce": pending.nonce,
    });
    for (k, v) in st.claims.as_object().unwrap() {
        claims[k] = v.clone();
    }
    let (kid, mut pem) = st.signing.clone();
    match st.tweak {
        Tweak::WrongNonce => claims["nonce"] = json!("not-the-nonce"),
        Tweak::WrongIssuer => claims["iss"] = json!("https://evil.example.com"),
        Tweak::WrongAudience => claims["aud"] = json!("another-client"),
        Tweak::Expired => {
            claims["iat"] = json!(now - 3600);
            claims["exp"] = json!(now - 1800);
        }
        Tweak::NoIssuedAt => {
            claims.as_object_mut().unwrap().remove("iat");
        }
        Tweak::BadSignature => pem = if pem == KEY_1 { KEY_2 } else { KEY_1 },
        Tweak::None | Tweak::OtherChallenge => {}
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid);
    let id_token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap();
    axum::Json(json!({"access_token": "at-xyz", "token_type": "Bearer", "expires_in": 300, "id_token": id_token}))
        .into_response()
}

async fn start_idp() -> Idp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let idp = Idp {
        base: base.clone(),
        state: Arc::new(Mutex::new(IdpState {
            issuer: base,
            signing: ("k1".into(), KEY_1),
            published: vec![("k1".into(), KEY_1)],
            codes: HashMap::new(),
            claims: json!({"sub": "subject-1", "email": "alice@example.com", "email_verified": true, "groups": []}),
            tweak: Tweak::None,
            jwks_fetches: 0,
            verified: 0,
        })),
    };
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .with_state(idp.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    idp
}

impl Idp {
    fn set(&self, f: impl FnOnce(&mut IdpState)) {
        f(&mut self.state.lock().unwrap());
    }
}

fn provider(idp_base: &str) -> OidcProviderConfig {
    OidcProviderConfig {
        name: "corp".into(),
        display_name: "Corp SSO".into(),
        issuer: idp_base.to_owned(),
        client_id: CLIENT_ID.into(),
        client_secret: Some(breakwater_domain::Secret::new(CLIENT_SECRET)),
        client_auth: ClientAuth::ClientSecretBasic,
        scopes: vec!["groups".into()],
        role_claim: Some("groups".into()),
        role_mapping: [("bw-admins".to_owned(), Role::Admin), ("bw-ops".to_owned(), Role::Operator)].into(),
        default_role: Some(Role::Viewer),
    }
}

fn settings() -> OidcSettings {
    OidcSettings { jwks_refetch_min: Duration::ZERO, ..OidcSettings::default() }
}

async fn app_with(idp: &Idp, settings: OidcSettings) -> TestApp {
    let p = provider(&idp.base);
    common::spawn_app_oidc(
        breakwater_store::testing::sqlite().await,
        Box::new(move |base: &str| (OidcConfig { public_url: base.to_owned(), providers: vec![p] }, settings)),
    )
    .await
}

async fn setup() -> (TestApp, Idp) {
    let idp = start_idp().await;
    let app = app_with(&idp, settings()).await;
    (app, idp)
}

/// A browser: keeps cookies, sends this site's Origin, follows no redirect
/// (each hop is checked).
fn browser(app: &TestApp) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("origin", app.base.parse().unwrap());
    reqwest::Client::builder()
        .cookie_store(true)
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn location(r: &reqwest::Response) -> String {
    r.headers().get("location").unwrap().to_str().unwrap().to_owned()
}

/// Follows the flow to the provider and back; returns the callback URL the
/// provider sent the browser to (not yet visited).
async fn to_callback(app: &TestApp, b: &reqwest::Client) -> String {
    let r = b.get(format!("{}/api/auth/oidc/login/corp?next=/sandboxes", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    let set_cookie = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("bw_oidc=") && set_cookie.contains("HttpOnly"), "{set_cookie}");
    let at_idp = b.get(location(&r)).send().await.unwrap();
    assert_eq!(at_idp.status(), 302, "the provider accepted the request: {}", at_idp.text().await.unwrap());
    location(&at_idp)
}

/// The callback's status and body (or the redirect target on success).
async fn finish(b: &reqwest::Client, callback: &str) -> (u16, Value, String) {
    let r = b.get(callback).send().await.unwrap();
    let status = r.status().as_u16();
    let loc = r.headers().get("location").map(|l| l.to_str().unwrap().to_owned()).unwrap_or_default();
    let text = r.text().await.unwrap();
    assert!(!text.contains(CLIENT_SECRET) && !text.contains("upstream detail"), "nothing secret or upstream: {text}");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), loc)
}

async fn sign_in(app: &TestApp, b: &reqwest::Client) -> (u16, Value, String) {
    let callback = to_callback(app, b).await;
    finish(b, &callback).await
}

async fn check(app: &TestApp, b: &reqwest::Client) -> Value {
    b.get(format!("{}/api/auth/check", app.base)).send().await.unwrap().json().await.unwrap()
}

async fn audit(app: &TestApp, action: &str) -> Vec<Value> {
    let filter = AuditFilter { action: Some(action.into()), ..AuditFilter::default() };
    let (entries, _) = app.store.store.list_audit(&filter, 100, 0).await.unwrap();
    entries.into_iter().map(|e| json!({"actor": e.actor, "resource_id": e.resource_id, "detail": e.detail})).collect()
}

/// The first admin, with a password, signed in.
async fn admin(app: &TestApp) -> reqwest::Client {
    let b = browser(app);
    let r = b
        .post(format!("{}/api/auth/setup", app.base))
        .json(&json!({"email": ADMIN_EMAIL, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    b
}

#[tokio::test]
async fn providers_are_listed_for_the_sign_in_page() {
    let (app, _idp) = setup().await;
    let (status, list) = app.get("/api/auth/oidc/providers").await;
    assert_eq!(status, 200);
    assert_eq!(list, json!([{"name": "corp", "display_name": "Corp SSO", "login_url": "/api/auth/oidc/login/corp"}]));
    let (_, c) = app.get("/api/auth/check").await;
    assert_eq!(c["oidc_providers"], list);
}

#[tokio::test]
async fn the_login_redirect_carries_pkce_state_nonce_and_scopes() {
    let (app, idp) = setup().await;
    let b = browser(&app);
    let r = b.get(format!("{}/api/auth/oidc/login/corp", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let to = reqwest::Url::parse(&location(&r)).unwrap();
    assert_eq!(format!("{}://{}", to.scheme(), to.authority()), idp.base);
    let q: HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["redirect_uri"], format!("{}/api/auth/oidc/callback", app.base));
    assert_eq!(q["scope"], "openid email profile groups");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(q["state"].len() >= 32 && q["nonce"].len() >= 32 && q["state"] != q["nonce"]);
    assert!(!location(&r).contains(CLIENT_SECRET));
}

#[tokio::test]
async fn happy_path_creates_a_user_linked_by_provider_and_subject_and_a_second_sign_in_reuses_it() {
    let (app, idp) = setup().await;
    let b = browser(&app);
    let (status, body, next) = sign_in(&app, &b).await;
    assert_eq!((status, next.as_str()), (302, "/sandboxes"), "{body}");
    let me = check(&app, &b).await;
    assert_eq!((me["authenticated"].clone(), me["email"].clone()), (json!(true), json!("alice@example.com")));
    assert_eq!(me["role"], "viewer", "the default role");
    let user = app.store.store.user_by_oidc("corp", "subject-1").await.unwrap().expect("linked by (provider, subject)");
    assert_eq!(user.oidc_provider.as_deref(), Some("corp"));
    assert_eq!(idp.state.lock().unwrap().verified, 1, "the provider checked the PKCE verifier");

    // Signing in again, from another browser, is the same user.
    let other = browser(&app);
    assert_eq!(sign_in(&app, &other).await.0, 302);
    assert_eq!(check(&app, &other).await["email"], "alice@example.com");
    assert_eq!(app.store.store.list_users().await.unwrap().len(), 1);

    let created = audit(&app, "user.create").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["detail"]["via"], "oidc");
    assert_eq!(created[0]["actor"], "oidc:corp");
    let logins = audit(&app, "auth.login").await;
    assert_eq!(logins.len(), 2);
    assert!(logins.iter().all(|l| l["detail"]["method"] == "oidc" && l["resource_id"] == json!(user.id)));

    // The session is a normal one: sign-out ends it.
    let r = b.post(format!("{}/api/auth/logout", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(check(&app, &b).await["authenticated"], false);
}

#[tokio::test]
async fn groups_map_to_roles_highest_wins_and_removal_demotes_at_the_next_sign_in() {
    let (app, idp) = setup().await;
    let _admin = admin(&app).await; // so that demoting the OIDC admin leaves an admin
    let b = browser(&app);
    idp.set(|s| s.claims["groups"] = json!(["bw-ops", "bw-admins", "unrelated"]));
    assert_eq!(sign_in(&app, &b).await.0, 302);
    assert_eq!(check(&app, &b).await["role"], "admin");

    idp.set(|s| s.claims["groups"] = json!(["bw-ops"]));
    assert_eq!(sign_in(&app, &b).await.0, 302);
    assert_eq!(check(&app, &b).await["role"], "operator", "removed from bw-admins: demoted");

    idp.set(|s| s.claims["groups"] = json!([]));
    assert_eq!(sign_in(&app, &b).await.0, 302);
    assert_eq!(check(&app, &b).await["role"], "viewer", "no group: the default role");

    let changes = audit(&app, "user.set_role").await;
    let pairs: Vec<(Value, Value)> =
        changes.iter().map(|c| (c["detail"]["from"].clone(), c["detail"]["to"].clone())).collect();
    assert!(pairs.contains(&(json!("admin"), json!("operator"))), "{changes:?}");
    assert!(pairs.contains(&(json!("operator"), json!("viewer"))), "{changes:?}");
    assert!(changes.iter().all(|c| c["detail"]["by"] == "oidc_role_mapping"));
}

#[tokio::test]
async fn a_wrong_state_a_replayed_state_and_another_browser_are_refused() {
    let (app, _idp) = setup().await;
    let b = browser(&app);
    let callback = to_callback(&app, &b).await;
    let (status, body, _) = finish(&b, &format!("{}/api/auth/oidc/callback?code=x&state=forged", app.base)).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("OIDC_STATE_INVALID")), "{body}");

    // Another browser (no binding cookie) cannot use this state, and its
    // attempt spends it.
    let (status, body, _) = finish(&browser(&app), &callback).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("OIDC_STATE_INVALID")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("another browser"));
    let (status, _, _) = finish(&b, &callback).await;
    assert_eq!(status, 400, "spent by the failed attempt");

    // Replaying a successful callback is refused.
    let callback = to_callback(&app, &b).await;
    assert_eq!(finish(&b, &callback).await.0, 302);
    let b2 = browser(&app);
    let _ = to_callback(&app, &b2).await; // a fresh binding cookie in b2 changes nothing
    let (status, body, _) = finish(&b, &callback).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("OIDC_STATE_INVALID")), "replay: {body}");
    let failures = audit(&app, "auth.login_failed").await;
    assert!(failures.iter().all(|f| f["detail"]["reason"] == "state_invalid" && f["detail"]["method"] == "oidc"));
    assert_eq!(failures.len(), 4);
}

async fn refused_with(tweak: Tweak, code: &str, message_part: &str) {
    let (app, idp) = setup().await;
    idp.set(|s| s.tweak = tweak);
    let b = browser(&app);
    let (status, body, _) = sign_in(&app, &b).await;
    assert_eq!(body["code"], code, "{tweak:?}: {body}");
    assert_eq!(status, 401, "{tweak:?}");
    assert!(body["message"].as_str().unwrap().contains(message_part), "{tweak:?}: {body}");
    assert_eq!(check(&app, &b).await["authenticated"], false);
    assert!(app.store.store.list_users().await.unwrap().is_empty(), "{tweak:?}: no user was created");
    let failures = audit(&app, "auth.login_failed").await;
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["detail"]["reason"], "token_invalid");
    assert_eq!(failures[0]["actor"], "oidc:corp");
}

#[tokio::test]
async fn a_wrong_nonce_is_refused() {
    refused_with(Tweak::WrongNonce, "OIDC_TOKEN_INVALID", "nonce").await;
}

#[tokio::test]
async fn a_wrong_issuer_is_refused() {
    refused_with(Tweak::WrongIssuer, "OIDC_TOKEN_INVALID", "another issuer").await;
}

#[tokio::test]
async fn a_wrong_audience_is_refused() {
    refused_with(Tweak::WrongAudience, "OIDC_TOKEN_INVALID", "not meant for this client").await;
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    refused_with(Tweak::Expired, "OIDC_TOKEN_INVALID", "expired").await;
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    refused_with(Tweak::BadSignature, "OIDC_TOKEN_INVALID", "signature").await;
}

#[tokio::test]
async fn the_pkce_verifier_is_checked_by_the_provider() {
    // The provider holds another challenge than the one Breakwater sent, so
    // only a verifier that is really sent and really checked can fail here.
    refused_with(Tweak::OtherChallenge, "OIDC_TOKEN_INVALID", "invalid_grant").await;
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_so_a_rotated_key_works() {
    let (app, idp) = setup().await;
    let b = browser(&app);
    assert_eq!(sign_in(&app, &b).await.0, 302);
    assert_eq!(idp.state.lock().unwrap().jwks_fetches, 1);
    idp.set(|s| {
        s.signing = ("k2".into(), KEY_2);
        s.published = vec![("k2".into(), KEY_2)];
    });
    let (status, body, _) = sign_in(&app, &browser(&app)).await;
    assert_eq!(status, 302, "{body}");
    assert_eq!(idp.state.lock().unwrap().jwks_fetches, 2, "refetched once for the new kid");
    // A kid nobody publishes is refused (after the one allowed refetch).
    idp.set(|s| s.signing = ("k9".into(), KEY_2));
    let (status, body, _) = sign_in(&app, &browser(&app)).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("OIDC_TOKEN_INVALID")), "{body}");
}

#[tokio::test]
async fn jwks_refetches_for_unknown_kids_are_rate_limited() {
    let idp = start_idp().await;
    let app =
        app_with(&idp, OidcSettings { jwks_refetch_min: Duration::from_secs(3600), ..OidcSettings::default() }).await;
    assert_eq!(sign_in(&app, &browser(&app)).await.0, 302);
    idp.set(|s| s.signing = ("forged".into(), KEY_2));
    for _ in 0..3 {
        let (status, body, _) = sign_in(&app, &browser(&app)).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("OIDC_TOKEN_INVALID")));
    }
    assert_eq!(idp.state.lock().unwrap().jwks_fetches, 1, "unknown kids do not make us hammer the provider");
}

#[tokio::test]
async fn an_inactive_user_is_refused() {
    let (app, _idp) = setup().await;
    let admin = admin(&app).await;
    assert_eq!(sign_in(&app, &browser(&app)).await.0, 302);
    let user = app.store.store.user_by_oidc("corp", "subject-1").await.unwrap().unwrap();
    let r = admin
        .patch(format!("{}/api/auth/users/{}", app.base, user.id))
        .json(&json!({"active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b = browser(&app);
    let (status, body, _) = sign_in(&app, &b).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("OIDC_USER_INACTIVE")), "{body}");
    assert_eq!(check(&app, &b).await["authenticated"], false);
    assert_eq!(audit(&app, "auth.login_failed").await[0]["detail"]["reason"], "user_inactive");
}

#[tokio::test]
async fn an_existing_password_account_with_the_same_email_is_not_taken_over() {
    let (app, idp) = setup().await;
    let _admin = admin(&app).await;
    idp.set(|s| {
        s.claims["email"] = json!(ADMIN_EMAIL);
        s.claims["groups"] = json!(["bw-admins"]);
    });
    let b = browser(&app);
    let (status, body, _) = sign_in(&app, &b).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("OIDC_ACCOUNT_EXISTS")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("never links accounts by email"));
    assert_eq!(check(&app, &b).await["authenticated"], false);
    let (admin_user, hash) = app.store.store.user_by_email(ADMIN_EMAIL).await.unwrap().unwrap();
    assert!(admin_user.oidc_provider.is_none() && hash.is_some(), "the password account is untouched");
    assert!(app.store.store.user_by_oidc("corp", "subject-1").await.unwrap().is_none());

    // An address the provider says is unverified never gets an account.
    idp.set(|s| {
        s.claims["email"] = json!("new@example.com");
        s.claims["email_verified"] = json!(false);
    });
    let (status, body, _) = sign_in(&app, &browser(&app)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("OIDC_EMAIL_UNVERIFIED")), "{body}");
    idp.set(|s| {
        s.claims.as_object_mut().unwrap().remove("email");
    });
    let (status, body, _) = sign_in(&app, &browser(&app)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("OIDC_EMAIL_MISSING")), "{body}");
    let reasons: Vec<Value> =
        audit(&app, "auth.login_failed").await.iter().map(|f| f["detail"]["reason"].clone()).collect();
    for r in ["account_exists", "email_unverified", "email_missing"] {
        assert!(reasons.contains(&json!(r)), "{reasons:?}");
    }
}

#[tokio::test]
async fn an_unknown_or_unreachable_provider_is_a_clear_problem() {
    // A provider whose issuer nobody answers at.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let app = common::spawn_app_oidc(
        breakwater_store::testing::sqlite().await,
        Box::new(move |base: &str| {
            let config = OidcConfig { public_url: base.to_owned(), providers: vec![provider(&dead)] };
            (config, OidcSettings { http_timeout: Duration::from_secs(2), ..OidcSettings::default() })
        }),
    )
    .await;
    let b = browser(&app);
    let r = b.get(format!("{}/api/auth/oidc/login/corp", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "OIDC_PROVIDER_UNAVAILABLE", "{body}");
    assert!(body["message"].as_str().unwrap().contains("corp"));
    let r = b.get(format!("{}/api/auth/oidc/login/nope", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "OIDC_PROVIDER_UNKNOWN");
}

#[tokio::test]
async fn a_provider_error_on_the_callback_is_refused_and_next_stays_on_this_site() {
    let (app, _idp) = setup().await;
    let b = browser(&app);
    let r = b.get(format!("{}/api/auth/oidc/login/corp?next=//evil.example.com/x", app.base)).send().await.unwrap();
    let q: HashMap<String, String> = reqwest::Url::parse(&location(&r)).unwrap().query_pairs().into_owned().collect();
    let state = form_urlencoded::byte_serialize(q["state"].as_bytes()).collect::<String>();
    let url = format!("{}/api/auth/oidc/callback?error=access_denied%0Aforged&state={state}", app.base);
    let (status, body, _) = finish(&b, &url).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("OIDC_PROVIDER_DENIED")), "{body}");
    assert!(!body["message"].as_str().unwrap().contains('\n'));

    // An off-site `next` becomes `/`.
    let r = b.get(format!("{}/api/auth/oidc/login/corp?next=//evil.example.com/x", app.base)).send().await.unwrap();
    let at_idp = b.get(location(&r)).send().await.unwrap();
    let (status, _, next) = finish(&b, &location(&at_idp)).await;
    assert_eq!((status, next.as_str()), (302, "/"));
}

#[tokio::test]
async fn without_a_default_role_only_mapped_groups_get_in() {
    let idp = start_idp().await;
    let p = OidcProviderConfig { default_role: None, ..provider(&idp.base) };
    let app = common::spawn_app_oidc(
        breakwater_store::testing::sqlite().await,
        Box::new(move |base: &str| (OidcConfig { public_url: base.to_owned(), providers: vec![p] }, settings())),
    )
    .await;
    let b = browser(&app);
    idp.set(|s| s.claims["groups"] = json!(["some-other-team"]));
    let (status, body, _) = sign_in(&app, &b).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("OIDC_NOT_ALLOWED")), "{body}");
    assert!(app.store.store.list_users().await.unwrap().is_empty(), "no account made");
    idp.set(|s| s.claims["groups"] = json!(["bw-ops"]));
    assert_eq!(sign_in(&app, &b).await.0, 302);
    assert_eq!(check(&app, &b).await["role"], "operator");
}

#[tokio::test]
async fn a_token_without_iat_is_refused() {
    refused_with(Tweak::NoIssuedAt, "OIDC_TOKEN_INVALID", "iat").await;
}
