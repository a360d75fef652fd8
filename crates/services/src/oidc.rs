//! Sign-in with OpenID Connect providers: authorization code with PKCE.
//!
//! The flow is split in two calls so that any replica can take either half:
//! [`OidcService::begin`] records the sign-in in the store (state and browser
//! binding as digests, the PKCE verifier sealed) and answers the provider's
//! authorization URL; [`OidcService::complete`] takes that record (once),
//! exchanges the code, validates the ID token and opens a session through
//! [`IdentityService`], the same path password sign-in uses.
//!
//! Linking policy: an identity is the pair (provider, subject). A new pair
//! gets a new account, and only if no account has its email yet; an existing
//! account, with a password or linked elsewhere, is never taken over, because
//! whoever controls an email claim at some provider would otherwise own it.
//!
//! This module is the one place services speak HTTP: outbound, to the
//! identity providers an operator configured.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use breakwater_domain::access::{Email, OidcLogin, Role, User};
use breakwater_domain::{Secret, sanitize};
use breakwater_store::Store;
use chrono::Utc;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::identity::{Issued, digest, random_token};
use crate::{Actor, AuditService, IdentityService, Result, ServiceError};

/// Where providers send the browser back, under the configured public URL.
pub const CALLBACK_PATH: &str = "/api/auth/oidc/callback";
/// Largest discovery, JWKS or token answer we read.
const MAX_BODY: usize = 256 * 1024;

/// Why a sign-in with a provider failed. The server turns each into its own
/// problem code; the audit trail records [`SignInFailure::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignInFailure {
    /// Unknown, used, expired, or started in another browser.
    StateInvalid,
    /// The provider refused the code, or the ID token failed a check.
    TokenInvalid,
    ProviderUnknown,
    /// Discovery, JWKS or the token endpoint could not be used.
    ProviderUnavailable,
    /// The provider sent the browser back with an error (e.g. the person declined).
    ProviderDenied,
    EmailMissing,
    EmailUnverified,
    /// An account not linked to this identity already has its email.
    AccountExists,
    UserInactive,
    /// No role mapping matches and the provider has no default role.
    NotAllowed,
}

impl SignInFailure {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StateInvalid => "state_invalid",
            Self::TokenInvalid => "token_invalid",
            Self::ProviderUnknown => "provider_unknown",
            Self::ProviderUnavailable => "provider_unavailable",
            Self::ProviderDenied => "provider_denied",
            Self::EmailMissing => "email_missing",
            Self::EmailUnverified => "email_unverified",
            Self::AccountExists => "account_exists",
            Self::UserInactive => "user_inactive",
            Self::NotAllowed => "not_allowed",
        }
    }
}

fn fail(reason: SignInFailure, message: impl Into<String>) -> ServiceError {
    ServiceError::SignIn { reason, message: message.into() }
}

/// How Breakwater authenticates itself at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    ClientSecretBasic,
    ClientSecretPost,
    /// A public client: PKCE only.
    None,
}

/// One configured identity provider.
#[derive(Clone, Debug)]
pub struct OidcProviderConfig {
    /// Short name in URLs and in the user link (`[a-z0-9][a-z0-9_-]*`).
    pub name: String,
    pub display_name: String,
    /// Exactly as the provider's discovery document and tokens state it.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub client_auth: ClientAuth,
    /// Scopes asked for beyond `openid email profile`.
    pub scopes: Vec<String>,
    /// The claim holding group or role names (a string or a list of strings).
    pub role_claim: Option<String>,
    /// Claim value to role; the highest match wins.
    pub role_mapping: BTreeMap<String, Role>,
    /// The role when nothing matches; `None` refuses such identities, so
    /// a provider shared with other organisations lets in only the people
    /// its groups name.
    pub default_role: Option<Role>,
}

/// Everything OIDC sign-in needs from the configuration.
#[derive(Clone, Debug, Default)]
pub struct OidcConfig {
    /// The URL people reach Breakwater at (`https://bw.example.com`); the
    /// callback is this plus [`CALLBACK_PATH`].
    pub public_url: String,
    pub providers: Vec<OidcProviderConfig>,
}

/// The configuration file's shape. Secrets are never in it, only where to
/// read them from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    public_url: String,
    #[serde(default)]
    providers: Vec<FileProvider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    name: String,
    display_name: Option<String>,
    issuer: String,
    client_id: String,
    client_secret_file: Option<String>,
    client_secret_env: Option<String>,
    client_auth: Option<ClientAuth>,
    #[serde(default)]
    scopes: Vec<String>,
    role_claim: Option<String>,
    #[serde(default)]
    role_mapping: BTreeMap<String, Role>,
    default_role: Option<Role>,
}

fn invalid(field: &str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid { field: field.into(), message: message.into() }
}

/// `https`, or `http` to a loopback address (tests and local providers);
/// parsed, not matched as text, and never with user info
/// (`http://localhost:1@evil.example/` names evil.example).
fn secure_url(raw: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(raw) else { return false };
    if !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    match url.scheme() {
        "https" => url.host_str().is_some(),
        "http" => is_loopback(&url),
        _ => false,
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
}

impl OidcConfig {
    /// Reads the JSON configuration file; client secrets come from the file
    /// or environment variable each provider names (`env` looks one up).
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid("oidc_config", format!("cannot read {}: {e}", path.display())))?;
        let file: FileConfig = serde_json::from_str(&text).map_err(|e| {
            invalid("oidc_config", format!("{} is not a valid OIDC configuration: {e}", path.display()))
        })?;
        let mut providers = Vec::new();
        for p in file.providers {
            let client_secret = match (&p.client_secret_file, &p.client_secret_env) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "client_secret",
                        format!("{}: name a secret file or a variable, not both", p.name),
                    ));
                }
                (Some(f), None) => Some(Secret::new(
                    std::fs::read_to_string(f)
                        .map_err(|e| invalid("client_secret_file", format!("{}: cannot read {f}: {e}", p.name)))?
                        .trim()
                        .to_owned(),
                )),
                (None, Some(var)) => Some(Secret::new(env(var).ok_or_else(|| {
                    invalid("client_secret_env", format!("{}: the variable {var} is not set", p.name))
                })?)),
                (None, None) => None,
            };
            let client_auth = p.client_auth.unwrap_or(if client_secret.is_some() {
                ClientAuth::ClientSecretBasic
            } else {
                ClientAuth::None
            });
            providers.push(OidcProviderConfig {
                display_name: p.display_name.unwrap_or_else(|| p.name.clone()),
                name: p.name,
                issuer: p.issuer,
                client_id: p.client_id,
                client_secret,
                client_auth,
                scopes: p.scopes,
                role_claim: p.role_claim,
                role_mapping: p.role_mapping,
                default_role: p.default_role,
            });
        }
        let config = Self { public_url: file.public_url, providers };
        config.validate()?;
        Ok(config)
    }

    /// Checks names, URLs and that each client can authenticate as configured.
    pub fn validate(&self) -> Result<()> {
        if !self.providers.is_empty() && !secure_url(&self.public_url) {
            return Err(invalid("public_url", "an https:// URL (http:// only for localhost)"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.providers {
            let name_ok = !p.name.is_empty()
                && p.name.len() <= 63
                && p.name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && p.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(invalid("name", format!("{:?}: 1-63 of a-z, 0-9, '-', '_'", p.name)));
            }
            if !seen.insert(p.name.as_str()) {
                return Err(invalid("name", format!("provider {} is configured twice", p.name)));
            }
            if !secure_url(&p.issuer) {
                return Err(invalid("issuer", format!("{}: an https:// URL (http:// only for localhost)", p.name)));
            }
            if p.client_id.is_empty() {
                return Err(invalid("client_id", format!("{}: required", p.name)));
            }
            if p.client_auth != ClientAuth::None && p.client_secret.is_none() {
                return Err(invalid("client_secret", format!("{}: {:?} needs a client secret", p.name, p.client_auth)));
            }
        }
        Ok(())
    }

    /// The configuration as `config show` prints it: secrets never, only
    /// whether there is one.
    #[must_use]
    pub fn redacted(&self) -> serde_json::Value {
        serde_json::json!({
            "public_url": self.public_url,
            "providers": self.providers.iter().map(|p| serde_json::json!({
                "name": p.name,
                "display_name": p.display_name,
                "issuer": p.issuer,
                "client_id": p.client_id,
                "client_secret": p.client_secret.as_ref().map(|_| "REDACTED"),
                "client_auth": p.client_auth,
                "scopes": p.scopes,
                "role_claim": p.role_claim,
                "role_mapping": p.role_mapping,
                "default_role": p.default_role,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Lifetimes and limits of the flow.
#[derive(Clone, Debug)]
pub struct OidcSettings {
    /// How long a started sign-in may take to come back.
    pub state_ttl: Duration,
    /// How long a discovery document and a JWKS are trusted.
    pub discovery_ttl: Duration,
    /// A token with an unknown key refetches the JWKS at most this often,
    /// so forged `kid`s cannot make us hammer the provider.
    pub jwks_refetch_min: Duration,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Deadline of each call to a provider.
    pub http_timeout: Duration,
}

impl Default for OidcSettings {
    fn default() -> Self {
        Self {
            state_ttl: Duration::from_secs(10 * 60),
            discovery_ttl: Duration::from_secs(3600),
            jwks_refetch_min: Duration::from_secs(30),
            leeway: Duration::from_secs(60),
            http_timeout: Duration::from_secs(10),
        }
    }
}

/// A provider as the sign-in page lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OidcProviderInfo {
    pub name: String,
    pub display_name: String,
    /// Relative: `/api/auth/oidc/login/{name}`.
    pub login_url: String,
}

/// The first half's answer: where to send the browser, and the value for the
/// short-lived cookie that binds the sign-in to this browser.
#[derive(Debug)]
pub struct OidcStart {
    pub location: String,
    pub browser_token: Secret,
}

/// What the provider sent the browser back with.
#[derive(Debug, Default)]
pub struct OidcCallback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug)]
pub struct OidcSignedIn {
    pub session: Issued<User>,
    /// The local path the sign-in was started for.
    pub next: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
}

#[derive(Clone, Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Default)]
struct Cache {
    discovery: Option<(Discovery, Instant)>,
    jwks: Option<(JwkSet, Instant)>,
}

struct Provider {
    config: OidcProviderConfig,
    /// Held across a fetch, so concurrent sign-ins share one request.
    cache: tokio::sync::Mutex<Cache>,
}

/// OIDC sign-in against the configured providers. Cheap to clone.
#[derive(Clone)]
pub struct OidcService(Arc<Inner>);

struct Inner {
    store: Arc<dyn Store>,
    identity: IdentityService,
    audit: AuditService,
    public_url: String,
    providers: Vec<Provider>,
    settings: OidcSettings,
    /// Built at the first sign-in: loading the system's root certificates
    /// costs tens of milliseconds and a few megabytes, which a server
    /// without OIDC (or before anyone signs in) should not pay at start.
    http: tokio::sync::OnceCell<reqwest::Client>,
}

#[derive(Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    aud: serde_json::Value,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// Signature algorithms accepted on ID tokens: public-key ones only (an
/// HMAC token would be keyed with the client secret, and `none` is no
/// signature at all).
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

fn sha256_b64(value: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(value.as_bytes()))
}

/// Only a short, plain error code from a provider reaches a message.
fn provider_code(raw: &str) -> String {
    let code: String = raw.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
    if code.is_empty() { "unspecified".into() } else { code }
}

fn unavailable(p: &OidcProviderConfig, what: &str) -> ServiceError {
    fail(
        SignInFailure::ProviderUnavailable,
        format!("the identity provider {} is unavailable ({what}); try again later", p.name),
    )
}

impl OidcService {
    /// Checks the configuration; nothing is fetched until someone signs in.
    pub fn new(
        store: Arc<dyn Store>,
        identity: IdentityService,
        audit: AuditService,
        config: OidcConfig,
        settings: OidcSettings,
    ) -> Result<Self> {
        config.validate()?;
        let providers = config
            .providers
            .into_iter()
            .map(|config| Provider { config, cache: tokio::sync::Mutex::default() })
            .collect();
        Ok(Self(Arc::new(Inner {
            store,
            identity,
            audit,
            public_url: config.public_url.trim_end_matches('/').to_owned(),
            providers,
            settings,
            http: tokio::sync::OnceCell::new(),
        })))
    }

    async fn http(&self) -> Result<&reqwest::Client> {
        self.0
            .http
            .get_or_try_init(|| async {
                reqwest::Client::builder()
                    .timeout(self.0.settings.http_timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("breakwater/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| invalid("oidc", format!("cannot build the HTTP client: {e}")))
            })
            .await
    }

    /// No providers: every sign-in with one is refused as unknown.
    #[must_use]
    pub fn disabled(store: Arc<dyn Store>, identity: IdentityService, audit: AuditService) -> Self {
        Self::new(store, identity, audit, OidcConfig::default(), OidcSettings::default())
            .expect("an empty configuration is valid")
    }

    #[must_use]
    pub fn providers(&self) -> Vec<OidcProviderInfo> {
        self.0
            .providers
            .iter()
            .map(|p| OidcProviderInfo {
                name: p.config.name.clone(),
                display_name: p.config.display_name.clone(),
                login_url: format!("/api/auth/oidc/login/{}", p.config.name),
            })
            .collect()
    }

    /// How long a started sign-in stays usable (the binding cookie's lifetime).
    #[must_use]
    pub fn state_ttl(&self) -> Duration {
        self.0.settings.state_ttl
    }

    fn provider(&self, name: &str) -> Result<&Provider> {
        self.0.providers.iter().find(|p| p.config.name == name).ok_or_else(|| {
            fail(SignInFailure::ProviderUnknown, format!("no identity provider named {:?}", sanitize(name, 63)))
        })
    }

    fn redirect_uri(&self) -> String {
        format!("{}{CALLBACK_PATH}", self.0.public_url)
    }

    /// Starts a sign-in: records it and answers the provider's authorization
    /// URL. `next` must already be a checked local path.
    pub async fn begin(&self, provider: &str, next: &str) -> Result<OidcStart> {
        let p = self.provider(provider)?;
        let discovery = self.discovery(p).await?;
        let state = random_token("");
        let nonce = random_token("");
        let verifier = random_token("");
        let browser = random_token("");
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(self.0.settings.state_ttl).unwrap_or(chrono::Duration::minutes(10));
        self.0
            .store
            .insert_oidc_login(&OidcLogin {
                state_hash: digest(&state),
                provider: p.config.name.clone(),
                browser_hash: digest(&browser),
                nonce: nonce.clone(),
                code_verifier: Secret::new(verifier.clone()),
                next: next.to_owned(),
                created_at: now,
                expires_at: now + ttl,
            })
            .await?;
        let mut scopes = vec!["openid".to_owned(), "email".to_owned(), "profile".to_owned()];
        for s in &p.config.scopes {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &p.config.client_id)
            .append_pair("redirect_uri", &self.redirect_uri())
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &sha256_b64(&verifier))
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if discovery.authorization_endpoint.contains('?') { '&' } else { '?' };
        Ok(OidcStart {
            location: format!("{}{sep}{query}", discovery.authorization_endpoint),
            browser_token: Secret::new(browser),
        })
    }

    /// Finishes a sign-in: the state is taken (once), the code exchanged,
    /// the ID token checked, the user found or created and their role set
    /// from the mapping, then a session opened. Failures are audited with
    /// their reason.
    pub async fn complete(
        &self,
        callback: OidcCallback,
        browser_token: Option<&Secret>,
        client_ip: Option<String>,
    ) -> Result<OidcSignedIn> {
        let mut provider_name = None;
        let result = self.complete_inner(callback, browser_token, client_ip.clone(), &mut provider_name).await;
        if let Err(ServiceError::SignIn { reason, .. }) = &result {
            let name = provider_name.as_deref().map_or_else(|| "oidc".to_owned(), |n| format!("oidc:{n}"));
            let actor = Actor { name, role: "none".into(), client_ip };
            self.0
                .audit
                .log(
                    &actor,
                    "auth.login_failed",
                    "user",
                    "-",
                    None,
                    serde_json::json!({"method": "oidc", "provider": provider_name, "reason": reason.as_str()}),
                )
                .await;
        }
        result
    }

    async fn complete_inner(
        &self,
        callback: OidcCallback,
        browser_token: Option<&Secret>,
        client_ip: Option<String>,
        provider_name: &mut Option<String>,
    ) -> Result<OidcSignedIn> {
        let spent =
            || fail(SignInFailure::StateInvalid, "this sign-in is unknown, already used or expired; start it again");
        let state = callback.state.as_deref().filter(|s| !s.is_empty()).ok_or_else(spent)?;
        // Taken before anything else, so a state is spent even by a failure.
        let login = self.0.store.take_oidc_login(&digest(state), Utc::now()).await?.ok_or_else(spent)?;
        *provider_name = Some(login.provider.clone());
        if browser_token.is_none_or(|b| digest(b.expose()) != login.browser_hash) {
            return Err(fail(
                SignInFailure::StateInvalid,
                "this sign-in was started in another browser (or its cookie is gone); start it again here",
            ));
        }
        if let Some(error) = callback.error.as_deref() {
            return Err(fail(
                SignInFailure::ProviderDenied,
                format!("the identity provider did not sign you in ({})", provider_code(error)),
            ));
        }
        let code = callback
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| fail(SignInFailure::TokenInvalid, "the provider sent no authorization code"))?;
        let p = self.provider(&login.provider)?;
        let discovery = self.discovery(p).await?;
        let id_token = self.exchange(p, &discovery, code, &login.code_verifier).await?;
        let claims = self.validate(p, &discovery, &id_token, &login.nonce).await?;
        let user = self.link(p, &claims, client_ip.clone()).await?;
        let details = serde_json::json!({"method": "oidc", "provider": p.config.name});
        let session = self.0.identity.open_session(user, client_ip, details).await?;
        Ok(OidcSignedIn { session, next: login.next })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        p: &OidcProviderConfig,
        what: &str,
        url: &str,
    ) -> Result<T> {
        let resp = self.http().await?.get(url).header("accept", "application/json").send().await.map_err(|e| {
            tracing::warn!(provider = %p.name, error = %e, "{what} request failed");
            unavailable(p, &format!("{what}: {}", if e.is_timeout() { "timed out" } else { "not reachable" }))
        })?;
        if !resp.status().is_success() {
            return Err(unavailable(p, &format!("{what} answered {}", resp.status().as_u16())));
        }
        let body = read_body(resp).await.map_err(|m| unavailable(p, &format!("{what}: {m}")))?;
        serde_json::from_slice(&body).map_err(|_| unavailable(p, &format!("{what}: not the expected JSON")))
    }

    async fn discovery(&self, p: &Provider) -> Result<Discovery> {
        let mut cache = p.cache.lock().await;
        if let Some((d, at)) = &cache.discovery
            && at.elapsed() < self.0.settings.discovery_ttl
        {
            return Ok(d.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", p.config.issuer.trim_end_matches('/'));
        let d: Discovery = self.get_json(&p.config, "discovery", &url).await?;
        if d.issuer.trim_end_matches('/') != p.config.issuer.trim_end_matches('/') {
            return Err(unavailable(&p.config, "its discovery document names another issuer"));
        }
        // A loopback endpoint only from a loopback issuer: a discovery
        // document must not aim our client secret at this machine's services.
        let issuer_local = reqwest::Url::parse(&p.config.issuer).is_ok_and(|u| is_loopback(&u));
        for endpoint in [&d.authorization_endpoint, &d.token_endpoint, &d.jwks_uri] {
            let local = reqwest::Url::parse(endpoint).is_ok_and(|u| is_loopback(&u));
            if !secure_url(endpoint) || (local && !issuer_local) {
                return Err(unavailable(&p.config, "its discovery document names an endpoint that is not https"));
            }
        }
        cache.discovery = Some((d.clone(), Instant::now()));
        Ok(d)
    }

    /// The code for the ID token, proving possession of the PKCE verifier.
    async fn exchange(&self, p: &Provider, d: &Discovery, code: &str, verifier: &Secret) -> Result<String> {
        let c = &p.config;
        let redirect_uri = self.redirect_uri();
        let secret = c.client_secret.as_ref().map_or("", |s| s.expose());
        // Built before any await: the serializer is not `Send`.
        let (body, basic) = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", &redirect_uri)
                .append_pair("code_verifier", verifier.expose());
            let mut basic = None;
            match c.client_auth {
                ClientAuth::ClientSecretBasic => {
                    // RFC 6749 §2.3.1: both parts form-encoded before base64.
                    let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
                    let pair = format!("{}:{}", enc(&c.client_id), enc(secret));
                    basic = Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)));
                }
                ClientAuth::ClientSecretPost => {
                    form.append_pair("client_id", &c.client_id).append_pair("client_secret", secret);
                }
                ClientAuth::None => {
                    form.append_pair("client_id", &c.client_id);
                }
            }
            (form.finish(), basic)
        };
        let mut req = self.http().await?.post(&d.token_endpoint).header("accept", "application/json");
        if let Some(b) = basic {
            req = req.header("authorization", b);
        }
        let resp =
            req.header("content-type", "application/x-www-form-urlencoded").body(body).send().await.map_err(|e| {
                tracing::warn!(provider = %c.name, error = %e, "token request failed");
                unavailable(
                    c,
                    if e.is_timeout() { "token endpoint: timed out" } else { "token endpoint: not reachable" },
                )
            })?;
        let status = resp.status();
        let body = read_body(resp).await.map_err(|m| unavailable(c, &format!("token endpoint: {m}")))?;
        if status.is_client_error() {
            let code = serde_json::from_slice::<TokenError>(&body)
                .map_or_else(|_| "unspecified".into(), |e| provider_code(&e.error));
            return Err(fail(
                SignInFailure::TokenInvalid,
                format!("the identity provider refused the authorization code ({code}); start the sign-in again"),
            ));
        }
        if !status.is_success() {
            return Err(unavailable(c, &format!("token endpoint answered {}", status.as_u16())));
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|_| unavailable(c, "token endpoint: not the expected JSON"))?;
        answer.id_token.ok_or_else(|| fail(SignInFailure::TokenInvalid, "the identity provider sent no ID token"))
    }

    /// The provider's key for a token: from the cached JWKS, refetched
    /// (rate-limited) when the `kid` is new, which is how key rotation looks.
    async fn key_for(&self, p: &Provider, d: &Discovery, kid: Option<&str>, alg: Algorithm) -> Result<Jwk> {
        let mut cache = p.cache.lock().await;
        let fresh = cache.jwks.as_ref().is_some_and(|(_, at)| at.elapsed() < self.0.settings.discovery_ttl);
        if !fresh {
            cache.jwks = Some((self.get_json(&p.config, "JWKS", &d.jwks_uri).await?, Instant::now()));
        }
        if let Some((set, at)) = &cache.jwks {
            if let Some(k) = pick(set, kid, alg) {
                return Ok(k);
            }
            if !fresh || at.elapsed() < self.0.settings.jwks_refetch_min {
                return Err(unknown_key(kid));
            }
        }
        let set: JwkSet = self.get_json(&p.config, "JWKS", &d.jwks_uri).await?;
        let found = pick(&set, kid, alg);
        cache.jwks = Some((set, Instant::now()));
        found.ok_or_else(|| unknown_key(kid))
    }

    async fn validate(&self, p: &Provider, d: &Discovery, token: &str, nonce: &str) -> Result<IdClaims> {
        let bad = |m: &str| fail(SignInFailure::TokenInvalid, format!("the ID token {m}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("is not a signed JWT"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(bad(&format!("is signed with {:?}, which is not accepted", header.alg)));
        }
        let jwk = self.key_for(p, d, header.kid.as_deref(), header.alg).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| bad("names a key that cannot be used"))?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&d.issuer]);
        v.set_audience(&[&p.config.client_id]);
        v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        v.leeway = self.0.settings.leeway.as_secs();
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<IdClaims>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            bad(match e.kind() {
                K::InvalidSignature => "signature does not verify",
                K::ExpiredSignature => "has expired",
                K::ImmatureSignature => "is not valid yet",
                K::InvalidIssuer => "was issued by another issuer",
                K::InvalidAudience => "is not meant for this client",
                K::MissingRequiredClaim(_) => "lacks a required claim",
                _ => "is malformed",
            })
        })?;
        let claims = data.claims;
        // jsonwebtoken does not enforce `iat` as required; we do.
        if claims.iat.is_none() {
            return Err(bad("lacks a required claim (iat)"));
        }
        let latest =
            Utc::now().timestamp().saturating_add(i64::try_from(self.0.settings.leeway.as_secs()).unwrap_or(0));
        if claims.iat.is_some_and(|iat| iat > latest) {
            return Err(bad("was issued in the future"));
        }
        if claims.azp.as_deref().is_some_and(|azp| azp != p.config.client_id) {
            return Err(bad("was issued to another client (azp)"));
        }
        let audiences = claims.aud.as_array().map_or(1, Vec::len);
        if audiences > 1 && claims.azp.is_none() {
            return Err(bad("has several audiences and no azp"));
        }
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(bad("does not carry this sign-in's nonce"));
        }
        if claims.sub.is_empty() || claims.sub.len() > 255 {
            return Err(bad("has no usable subject"));
        }
        Ok(claims)
    }

    /// The role the mapping gives these claims: the highest match, else the
    /// default (`None`: no role, the sign-in is refused).
    fn mapped_role(p: &OidcProviderConfig, claims: &IdClaims) -> Option<Role> {
        let values: Vec<&str> = match p.role_claim.as_deref().and_then(|c| claims.rest.get(c)) {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(items)) => items.iter().filter_map(serde_json::Value::as_str).collect(),
            _ => Vec::new(),
        };
        values.iter().filter_map(|v| p.role_mapping.get(*v).copied()).max().or(p.default_role)
    }

    /// Finds the user linked to (provider, subject), or creates one. The
    /// mapped role is applied on every sign-in, so the provider's groups stay
    /// the source of truth (removal from a group demotes at the next sign-in).
    async fn link(&self, p: &Provider, claims: &IdClaims, client_ip: Option<String>) -> Result<User> {
        let c = &p.config;
        let Some(role) = Self::mapped_role(c, claims) else {
            return Err(fail(
                SignInFailure::NotAllowed,
                format!(
                    "{} vouches for this person, but none of their groups is mapped to a Breakwater role and no \
                     default_role is set; ask an admin to map one of their groups",
                    c.name
                ),
            ));
        };
        let system = Actor { name: format!("oidc:{}", c.name), role: "system".into(), client_ip };
        let user = match self.0.store.user_by_oidc(&c.name, &claims.sub).await? {
            Some(user) => user,
            None => self.create(c, claims, role, &system).await?,
        };
        if !user.active {
            return Err(fail(
                SignInFailure::UserInactive,
                format!("the account {} is deactivated; ask an admin to reactivate it", user.email),
            ));
        }
        if user.role == role {
            return Ok(user);
        }
        match self.0.identity.keeps_an_admin(&user, role, true).await {
            Ok(()) => {}
            // Anything else (the database) fails the sign-in, not the rule.
            Err(e) if !matches!(e, ServiceError::Precondition { .. }) => return Err(e),
            Err(e) => {
                // The last admin keeps the role: a group change at the provider
                // must not leave Breakwater without anyone to administer it.
                tracing::warn!(user = %user.email, error = %e, "role mapping would remove the last admin; role kept");
                self.0
                    .audit
                    .log(
                        &system,
                        "user.role_mapping_skipped",
                        "user",
                        &user.id,
                        None,
                        serde_json::json!({"email": user.email, "from": user.role, "to": role, "reason": "last_admin"}),
                    )
                    .await;
                return Ok(user);
            }
        }
        let mut user = user;
        let from = user.role;
        user.role = role;
        user.updated_at = Utc::now();
        // Only the role, and only if nobody changed it (or deactivated the
        // account) since it was read: a sign-in must not undo an admin.
        if !self.0.store.set_user_role_if(&user.id, from, role, user.updated_at).await? {
            return Err(fail(
                SignInFailure::UserInactive,
                format!("the account {} changed while signing in; sign in again", user.email),
            ));
        }
        self.0
            .audit
            .log(
                &system,
                "user.set_role",
                "user",
                &user.id,
                None,
                serde_json::json!({"email": user.email, "from": from, "to": role, "by": "oidc_role_mapping", "provider": c.name}),
            )
            .await;
        Ok(user)
    }

    async fn create(&self, c: &OidcProviderConfig, claims: &IdClaims, role: Role, system: &Actor) -> Result<User> {
        let raw = claims.email.as_deref().ok_or_else(|| {
            fail(
                SignInFailure::EmailMissing,
                format!("{} sent no email address; Breakwater needs one (scope \"email\")", c.name),
            )
        })?;
        let email = Email::parse(raw).map_err(|_| {
            fail(SignInFailure::EmailMissing, format!("{} sent an email address that is not usable", c.name))
        })?;
        let unverified = matches!(&claims.email_verified, Some(serde_json::Value::Bool(false)))
            || matches!(&claims.email_verified, Some(serde_json::Value::String(s)) if s == "false");
        if unverified {
            return Err(fail(
                SignInFailure::EmailUnverified,
                format!("{} says the address {email} is not verified; verify it there, then sign in again", c.name),
            ));
        }
        let taken = || {
            fail(
                SignInFailure::AccountExists,
                format!(
                    "an account for {email} exists already and is not linked to {}; Breakwater never links accounts by \
                     email. An admin can delete that account (DELETE /api/auth/users/{{id}}) so that the next sign-in \
                     with {} creates a linked one",
                    c.name, c.name
                ),
            )
        };
        if self.0.store.user_by_email(email.as_str()).await?.is_some() {
            return Err(taken());
        }
        let mut user = IdentityService::new_user(&email, role);
        user.oidc_provider = Some(c.name.clone());
        match self.0.store.insert_oidc_user(&user, &claims.sub).await {
            Ok(()) => {}
            Err(breakwater_store::StoreError::Conflict(_)) => {
                // A concurrent first sign-in of the same identity won the
                // insert; anything else holding the email is refused.
                return self.0.store.user_by_oidc(&c.name, &claims.sub).await?.ok_or_else(taken);
            }
            Err(e) => return Err(e.into()),
        }
        self.0
            .audit
            .log(
                system,
                "user.create",
                "user",
                &user.id,
                None,
                serde_json::json!({"email": user.email, "role": role, "via": "oidc", "provider": c.name}),
            )
            .await;
        Ok(user)
    }
}

fn unknown_key(kid: Option<&str>) -> ServiceError {
    fail(
        SignInFailure::TokenInvalid,
        format!(
            "the ID token is signed with a key the provider does not publish (kid {})",
            kid.map_or_else(|| "absent".to_owned(), |k| format!("{:?}", sanitize(k, 64)))
        ),
    )
}

/// The signing key for `kid` (or, without one, the first key of the
/// algorithm's family) that may be used with `alg`.
fn pick(set: &JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<Jwk> {
    let usable = |k: &&Jwk| {
        let family_ok = match &k.algorithm {
            AlgorithmParameters::RSA(_) => {
                matches!(
                    alg,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                )
            }
            AlgorithmParameters::EllipticCurve(_) => matches!(alg, Algorithm::ES256 | Algorithm::ES384),
            _ => false,
        };
        let use_ok = !matches!(k.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature);
        let alg_ok = k.common.key_algorithm.is_none_or(|a| a.to_string() == format!("{alg:?}"));
        family_ok && use_ok && alg_ok
    };
    match kid {
        Some(kid) => set.keys.iter().filter(|k| k.common.key_id.as_deref() == Some(kid)).find(usable).cloned(),
        None => set.keys.iter().find(usable).cloned(),
    }
}

async fn read_body(resp: reqwest::Response) -> std::result::Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err("answer too large".into());
    }
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|_| "answer cut short".to_owned())? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err("answer too large".into());
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_accepted() {
        assert!(secure_url("https://idp.example.com"));
        assert!(secure_url("http://127.0.0.1:8080/realms/x"));
        assert!(secure_url("http://localhost/x"));
        assert!(!secure_url("http://idp.example.com"));
        assert!(!secure_url("http://127.0.0.1.evil.example/x"));
        assert!(!secure_url("ftp://x"));
        assert!(!secure_url("http://localhost:1@evil.example/token"), "user info hides the real host");
        assert!(!secure_url("https://user:pw@idp.example.com/"));
        assert!(secure_url("http://[::1]:9000/x"));
    }

    #[test]
    fn the_highest_mapped_role_wins_else_the_default() {
        let p = OidcProviderConfig {
            name: "corp".into(),
            display_name: "Corp".into(),
            issuer: "https://idp.example.com".into(),
            client_id: "bw".into(),
            client_secret: None,
            client_auth: ClientAuth::None,
            scopes: vec![],
            role_claim: Some("groups".into()),
            role_mapping: [("ops".to_owned(), Role::Operator), ("admins".to_owned(), Role::Admin)].into(),
            default_role: Some(Role::Viewer),
        };
        let claims = |v: serde_json::Value| IdClaims {
            sub: "s".into(),
            aud: serde_json::Value::Null,
            iat: None,
            nonce: None,
            azp: None,
            email: None,
            email_verified: None,
            rest: serde_json::json!({"groups": v}).as_object().unwrap().clone(),
        };
        assert_eq!(OidcService::mapped_role(&p, &claims(serde_json::json!(["ops", "admins"]))), Some(Role::Admin));
        assert_eq!(OidcService::mapped_role(&p, &claims(serde_json::json!("ops"))), Some(Role::Operator));
        assert_eq!(OidcService::mapped_role(&p, &claims(serde_json::json!(["other"]))), Some(Role::Viewer));
        assert_eq!(OidcService::mapped_role(&p, &claims(serde_json::json!(42))), Some(Role::Viewer));
        let closed = OidcProviderConfig { default_role: None, ..p.clone() };
        assert_eq!(OidcService::mapped_role(&closed, &claims(serde_json::json!(["other"]))), None);
    }

    #[test]
    fn a_config_file_names_where_secrets_are_never_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oidc.json");
        let cfg = serde_json::json!({"public_url": "https://bw.example.com", "providers": [
            {"name": "corp", "issuer": "https://idp.example.com", "client_id": "bw", "client_secret_env": "CORP_SECRET",
             "role_claim": "groups", "role_mapping": {"bw-admins": "admin"}}]});
        std::fs::write(&path, cfg.to_string()).unwrap();
        let loaded = OidcConfig::load(&path, |v| (v == "CORP_SECRET").then(|| "s3cr3t-value".to_owned())).unwrap();
        let p = &loaded.providers[0];
        assert_eq!(
            (p.client_auth, p.default_role, p.display_name.as_str()),
            (ClientAuth::ClientSecretBasic, None, "corp"),
            "no default role unless one is set"
        );
        assert!(!loaded.redacted().to_string().contains("s3cr3t-value"));
        assert!(OidcConfig::load(&path, |_| None).is_err(), "a named variable that is unset is an error");
        let inline = serde_json::json!({"public_url": "https://bw.example.com", "providers": [
            {"name": "corp", "issuer": "https://idp.example.com", "client_id": "bw", "client_secret": "x"}]});
        std::fs::write(&path, inline.to_string()).unwrap();
        assert!(OidcConfig::load(&path, |_| None).is_err(), "an inline secret is refused");
    }
}
