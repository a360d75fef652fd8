//! Request hygiene that comes before any handler: which Host names this
//! server answers to (DNS rebinding), cross-origin writes (CSRF from a
//! browser tab), and well-formed request ids.
//!
//! Until sign-in exists every request acts as `local-admin`, so a web page
//! the operator happens to visit must not be able to drive the API through
//! their browser. Browsers always send `Origin` on cross-origin writes, and a
//! rebinding attack shows up as an unknown `Host`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{ApiError, AppState};

/// Which `Host` names requests may use.
#[derive(Clone, Debug)]
pub struct HostGuard {
    /// Lower-case host names (no port); empty means any host.
    allowed: Vec<String>,
    /// Web origins (`https://app.example.com`) whose pages may call the
    /// API (CORS, cookie writes included); none unless configured.
    cors_origins: Vec<String>,
}

/// Checks a configured CORS origin: `scheme://host[:port]`, nothing more.
pub fn parse_cors_origin(raw: &str) -> Result<String, String> {
    let origin = raw.trim().trim_end_matches('/').to_ascii_lowercase();
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!("{raw:?} is not an origin like https://app.example.com"));
    };
    let host_ok =
        !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !matches!(scheme, "http" | "https") || !host_ok {
        return Err(format!("{raw:?} is not an origin like https://app.example.com (scheme, host, optional port)"));
    }
    Ok(origin)
}

impl HostGuard {
    /// Any Host header (a server bound to all interfaces with no names given).
    #[must_use]
    pub fn any() -> Self {
        Self { allowed: Vec::new(), cors_origins: Vec::new() }
    }

    /// Loopback names plus `extra`.
    #[must_use]
    pub fn loopback(extra: &[String]) -> Self {
        let mut allowed: Vec<String> = ["localhost", "127.0.0.1", "[::1]", "::1"].map(str::to_owned).to_vec();
        allowed.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
        Self { allowed, cors_origins: Vec::new() }
    }

    /// Exactly these names.
    #[must_use]
    pub fn only(names: &[String]) -> Self {
        Self { allowed: names.iter().map(|h| h.to_ascii_lowercase()).collect(), cors_origins: Vec::new() }
    }

    /// Also lets pages from these origins (checked with
    /// [`parse_cors_origin`]) call the API from the browser.
    #[must_use]
    pub fn with_cors_origins(mut self, origins: Vec<String>) -> Self {
        self.cors_origins = origins;
        self
    }

    #[must_use]
    pub fn cors_origins(&self) -> &[String] {
        &self.cors_origins
    }

    fn permits(&self, host: &str) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|a| a == host)
    }

    fn names(&self) -> String {
        self.allowed.join(", ")
    }
}

/// `host[:port]` → host, lower case, IPv6 kept in brackets.
fn host_only(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if a.starts_with('[') {
        return a.split_once(']').map_or(a.clone(), |(h, _)| format!("{h}]"));
    }
    a.rsplit_once(':').map_or(a.clone(), |(h, _)| h.to_owned())
}

fn safe_method(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

pub(crate) async fn guard(State(state): State<AppState>, mut req: Request<Body>, next: Next) -> Response {
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default();
    if !state.host_guard.permits(&host_only(&authority)) {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "HOST_NOT_ALLOWED",
            format!("this server answers to {}; add the name you used with --allowed-host", state.host_guard.names()),
        )
        .into_response();
    }
    // A WebSocket upgrade is a GET, but a page elsewhere opening one would
    // read the stream with the user's authority: treat it like a write.
    let upgrade = req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if (upgrade || !safe_method(req.method()))
        && let Some(origin) = req.headers().get(header::ORIGIN)
    {
        let origin = origin.to_str().unwrap_or("null");
        let origin_authority = origin.split_once("://").map_or("", |(_, rest)| rest);
        let configured = state.host_guard.cors_origins.iter().any(|o| o.eq_ignore_ascii_case(origin));
        // Behind TLS the page must be too: a plain-http page on the same host
        // (which anyone on the network can write) would otherwise pass, and
        // some browsers send the session cookie across schemes.
        let secure = matches!(state.auth, crate::AuthMode::Enabled { secure_cookies: true });
        let scheme_ok = !secure || origin.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        let same_site = scheme_ok && origin_authority.eq_ignore_ascii_case(&authority);
        if !(configured || same_site) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "CROSS_ORIGIN_REFUSED",
                "a web page from another origin may not change anything here",
            )
            .into_response();
        }
    }
    // A request id we echo and log must be short and plain.
    let bad_id = req.headers().get("x-request-id").is_some_and(|v| {
        v.len() > 128 || !v.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if bad_id {
        req.headers_mut().remove("x-request-id");
    }
    next.run(req).await
}

/// Problem codes for errors axum produces itself (bad JSON, wrong method...).
pub(crate) fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "BAD_REQUEST",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
        StatusCode::UNPROCESSABLE_ENTITY => "VALIDATION_ERROR",
        s if s.is_server_error() => "INTERNAL_ERROR",
        _ => "BAD_REQUEST",
    }
}

/// What a framework rejection says, minus Rust type names.
pub(crate) fn detail_for(status: StatusCode, body: &str) -> String {
    let text = body
        .trim()
        .trim_start_matches("Failed to deserialize the JSON body into the target type: ")
        .trim_start_matches("Failed to parse the request body as JSON: ");
    // serde's "expected struct FooBody with N elements" names our types.
    let text = text.split(", expected struct").next().unwrap_or(text);
    // A value in the wrong place may be a credential: say its type only.
    let text = &without_string_values(text);
    match status {
        StatusCode::METHOD_NOT_ALLOWED => "this method is not allowed on this path".to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => format!("request body larger than {} KiB", crate::BODY_LIMIT / 1024),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "send the body as JSON (content-type: application/json)".to_owned(),
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_owned(),
        _ => breakwater_domain::sanitize(text, 300),
    }
}

/// serde quotes a misplaced string as `string "value"` (Rust debug
/// escaping); keeps `string` and drops the value.
fn without_string_values(text: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at + MARK.len() - 2]);
        let mut escaped = false;
        let end = rest[at + MARK.len()..].char_indices().find_map(|(i, c)| {
            let closes = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            closes.then_some(i)
        });
        match end {
            Some(i) => rest = &rest[at + MARK.len() + i + 1..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

pub(crate) fn is_problem(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v: &HeaderValue| v.as_bytes().starts_with(b"application/problem+json"))
}

#[cfg(test)]
mod tests {
    use super::without_string_values;

    #[test]
    fn misplaced_string_values_are_not_echoed() {
        assert_eq!(
            without_string_values(
                r#"credentials: invalid type: string "sk-\"secret", expected a map at line 1 column 9"#
            ),
            "credentials: invalid type: string, expected a map at line 1 column 9"
        );
        assert_eq!(without_string_values("missing field `name`"), "missing field `name`");
        assert_eq!(without_string_values(r#"a string "unterminated"#), "a string");
    }
}
