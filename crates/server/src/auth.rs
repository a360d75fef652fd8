//! Authentication and authorization middleware, and security headers.
//!
//! `authenticate` (outermost) decides who is calling: everyone is
//! `local-admin` in local mode; otherwise an API key in
//! `Authorization: Bearer`, or the session cookie. A failed lookup refuses
//! the request (503), it never lets it through. `authorize` (on matched
//! routes) checks the route's least role from the route table against the
//! caller's role, on the route's gateway where there is one, and refuses a
//! cookie-authenticated write whose `Origin` is missing (a browser always
//! sends it on cross-origin writes; the host guard refuses a wrong one).

use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use breakwater_domain::Secret;
use breakwater_services::{Actor, Authenticated};

use crate::access::{Access, RouteSpec};
use crate::limits::ClientIp;
use crate::{ApiError, AppState};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "bw_session";

/// How the server authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// `--no-auth`: every request is `local-admin` (loopback only, unless forced).
    Local,
    /// Users, sessions and API keys. `secure_cookies` marks the session
    /// cookie `Secure` (behind TLS or a TLS-terminating proxy).
    Enabled { secure_cookies: bool },
}

/// How the caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Local,
    Cookie,
    Bearer,
}

/// The caller, once known; in the request's extensions.
#[derive(Clone, Debug)]
pub struct Identified {
    pub who: Authenticated,
    pub via: Via,
}

fn cookie(req: &Request<Body>, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn bearer(req: &Request<Body>) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

fn unavailable(e: &breakwater_services::ServiceError) -> Response {
    tracing::error!(error = %e, "identity lookup failed; refusing the request");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "AUTH_UNAVAILABLE",
        "who you are could not be checked (the database is unavailable); try again",
    )
    .into_response()
}

pub(crate) async fn authenticate(State(state): State<AppState>, mut req: Request<Body>, next: Next) -> Response {
    let identified = match &state.auth {
        AuthMode::Local => Some(Identified { who: Authenticated::local_admin(), via: Via::Local }),
        AuthMode::Enabled { .. } => {
            if let Some(token) = bearer(&req) {
                match state.identity.authenticate_key(&Secret::new(token)).await {
                    Ok(Some(who)) => Some(Identified { who, via: Via::Bearer }),
                    Ok(None) => {
                        return ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            "UNAUTHENTICATED",
                            "the API key is unknown, revoked or expired",
                        )
                        .into_response();
                    }
                    Err(e) => return unavailable(&e),
                }
            } else if let Some(token) = cookie(&req, SESSION_COOKIE) {
                match state.identity.authenticate_session(&Secret::new(token)).await {
                    Ok(who) => who.map(|who| Identified { who, via: Via::Cookie }),
                    Err(e) => return unavailable(&e),
                }
            } else {
                None
            }
        }
    };
    if let Some(i) = identified {
        req.extensions_mut().insert(i);
    }
    next.run(req).await
}

/// The gateway a route is about (`/api/gateways/{gw}/…`, `/ws/{gw}/…`).
fn gateway_of<'a>(spec: &RouteSpec, path: &'a str) -> Option<&'a str> {
    if !spec.gateway_scoped() {
        return None;
    }
    let skip = if spec.path.starts_with("/ws/") { 2 } else { 3 };
    path.split('/').nth(skip)
}

fn writes(req: &Request<Body>) -> bool {
    let upgrade = req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    upgrade || !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
}

pub(crate) async fn authorize(State(state): State<AppState>, req: Request<Body>, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
    let Some(spec) = state.routes.find(req.method(), &matched).cloned() else {
        if state.routes.has_path(&matched) {
            // A method the path does not offer: the router answers 405.
            return next.run(req).await;
        }
        // Every route is registered with a role; one without is refused, not opened.
        tracing::error!(method = %req.method(), path = %matched, "route without a declared role");
        return ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", "this route has no access rule").into_response();
    };
    let Access::Role(needed) = spec.access else { return next.run(req).await };
    let Some(identified) = req.extensions().get::<Identified>().cloned() else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "sign in (POST /api/auth/login) or send an API key (Authorization: Bearer bw_...)",
        )
        .into_response();
    };
    if identified.via == Via::Cookie && writes(&req) && req.headers().get(header::ORIGIN).is_none() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "CSRF_REFUSED",
            "a change made with a session cookie must come from this site's pages (the Origin header is missing)",
        )
        .into_response();
    }
    let path = req.uri().path().to_owned();
    let gateway = gateway_of(&spec, &path);
    let role = identified.who.role(gateway);
    if role.is_none_or(|r| r < needed) {
        let ip = req.extensions().get::<ClientIp>().map(|c| c.0.to_string());
        let actor = identified.who.actor(gateway, ip);
        let detail = serde_json::json!({"method": req.method().as_str(), "route": spec.path, "needed": needed});
        state.audit.log(&actor, "access.forbidden", "route", &spec.path, gateway, detail).await;
        let have = role.map_or("no role", |r| r.as_str());
        let scope = gateway.map_or_else(String::new, |g| format!(" on gateway {}", breakwater_domain::sanitize(g, 64)));
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "INSUFFICIENT_ROLE",
            format!("this needs the {needed} role{scope}; you have {have}. Ask an admin to change your role"),
        )
        .into_response();
    }
    next.run(req).await
}

/// The caller as the audit trail records them (anonymous on public routes).
pub(crate) fn actor_of(parts: &axum::http::request::Parts) -> Actor {
    let ip = parts.extensions.get::<ClientIp>().map(|c| c.0.to_string());
    let Some(identified) = parts.extensions.get::<Identified>() else {
        return Actor { name: "anonymous".into(), role: "none".into(), client_ip: ip };
    };
    let matched = parts.extensions.get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or_default();
    let scoped = matched.starts_with("/api/gateways/{gw}") || matched.starts_with("/ws/{gw}");
    let gateway =
        scoped.then(|| parts.uri.path().split('/').nth(if matched.starts_with("/ws/") { 2 } else { 3 })).flatten();
    identified.who.actor(gateway, ip)
}

/// Headers every response carries: no inline script, no framing, no MIME
/// sniffing, no referrer leaks; HSTS when asked for.
pub(crate) async fn security_headers(State(state): State<AppState>, req: Request<Body>, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if state.hsts {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000; includeSubDomains"));
    }
    resp
}
