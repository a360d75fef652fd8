//! The one place errors become HTTP: RFC 9457 problem+json with a stable
//! `code`. Upstream gRPC text never reaches the body unsanitised, and
//! internal errors get a generic detail (the cause goes to the log).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use breakwater_gateway::GatewayError;
use breakwater_services::{LocalError, ServiceError, SignInFailure};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// Problem-specific members (e.g. `current_hash` on a stale apply).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    message: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    #[must_use]
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), errors: Vec::new(), extra: serde_json::Map::new() }
    }

    #[must_use]
    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "VALIDATION_ERROR",
            detail: message.clone(),
            errors: vec![FieldError { field: field.to_owned(), message }],
            extra: serde_json::Map::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = Problem {
            kind: format!("https://breakwater.dev/problems/{}", self.code.to_ascii_lowercase().replace('_', "-")),
            title,
            status: self.status.as_u16(),
            detail: &self.detail,
            message: &self.detail,
            code: self.code,
            errors: &self.errors,
            extra: &self.extra,
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        // Tells well-behaved clients when to come back: the throttle's own
        // figure, else a few seconds for a gateway or database that is away.
        if matches!(self.status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
            let after = self.extra.get("retry_after").and_then(serde_json::Value::as_u64).unwrap_or(5);
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after));
        }
        resp
    }
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        let (status, code) = match &e {
            GatewayError::Unreachable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "GATEWAY_NOT_CONNECTED"),
            GatewayError::TlsUntrusted { .. } | GatewayError::TlsCertificate { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "GATEWAY_TLS_ERROR")
            }
            GatewayError::Unauthenticated { .. } => (StatusCode::BAD_GATEWAY, "GATEWAY_UNAUTHENTICATED"),
            GatewayError::PermissionDenied { .. } => (StatusCode::FORBIDDEN, "GATEWAY_PERMISSION_DENIED"),
            GatewayError::NotFound { .. } => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            GatewayError::AlreadyExists { .. } => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
            GatewayError::FailedPrecondition { .. } => (StatusCode::CONFLICT, "FAILED_PRECONDITION"),
            GatewayError::Conflict { .. } => (StatusCode::CONFLICT, "CONFLICT"),
            GatewayError::InvalidArgument { .. } => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            GatewayError::Unimplemented { .. } => (StatusCode::NOT_IMPLEMENTED, "NOT_IMPLEMENTED"),
            GatewayError::DeadlineExceeded { .. } => (StatusCode::GATEWAY_TIMEOUT, "TIMEOUT"),
            GatewayError::ResourceExhausted { .. } => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
            GatewayError::InvalidResponse { .. } => (StatusCode::BAD_GATEWAY, "INVALID_GATEWAY_RESPONSE"),
            GatewayError::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "CANCELLED"),
            GatewayError::Config { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "GATEWAY_CONFIG_INVALID"),
            GatewayError::Internal { .. } => {
                tracing::warn!(error = %e, "gateway internal error");
                return Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "the gateway failed internally");
            }
        };
        let mut err = Self::new(status, code, e.to_string());
        if let GatewayError::InvalidArgument { violations, .. } = &e {
            err.errors = violations
                .iter()
                .map(|v| FieldError { field: v.field.clone(), message: v.description.clone() })
                .collect();
        }
        err
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound { what } => {
                Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("{what} not found"))
            }
            ServiceError::Conflict { what } => {
                Self::new(StatusCode::CONFLICT, "CONFLICT", format!("{what} already exists"))
            }
            ServiceError::Invalid { field, message } => Self::bad_request(&field, message),
            ServiceError::Gateway(g) => g.into(),
            ServiceError::Precondition { message } => Self::new(StatusCode::CONFLICT, "PRECONDITION_FAILED", message),
            ServiceError::Locked { pin } => {
                let mut err = Self::new(StatusCode::LOCKED, "POLICY_PINNED", pin.refusal());
                err.extra.insert("pinned_by".into(), pin.pinned_by.clone().into());
                err.extra.insert("pinned_version".into(), pin.version.into());
                err.extra.insert("reason".into(), pin.reason.clone().into());
                err.extra.insert("expires_at".into(), serde_json::json!(pin.expires_at));
                err
            }
            ServiceError::Timeout { message } => Self::new(StatusCode::GATEWAY_TIMEOUT, "TIMEOUT", message),
            ServiceError::Forbidden { message } => Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message),
            ServiceError::Unsupported { message } => {
                Self::new(StatusCode::NOT_IMPLEMENTED, "unsupported_by_gateway", message)
            }
            ServiceError::StaleVersion { message, expected, current_version, current_hash } => {
                let mut err = Self::new(StatusCode::CONFLICT, "VERSION_MISMATCH", message);
                // ShoreGuard's `policy apply` clients read `current_hash` and
                // `expected_version`; `status` stays the HTTP status (RFC 9457).
                err.extra.insert("expected_version".into(), expected.into());
                err.extra.insert("current_version".into(), current_version.into());
                err.extra.insert("current_hash".into(), current_hash.into());
                err
            }
            ServiceError::Local(l) => {
                let (status, code) = match &l {
                    LocalError::ToolMissing { .. } => (StatusCode::SERVICE_UNAVAILABLE, "LOCAL_TOOL_MISSING"),
                    LocalError::DockerUnavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "DOCKER_UNAVAILABLE"),
                    LocalError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "LOCAL_COMMAND_TIMEOUT"),
                    LocalError::CommandFailed { .. } => (StatusCode::BAD_GATEWAY, "LOCAL_COMMAND_FAILED"),
                };
                Self::new(status, code, l.to_string())
            }
            ServiceError::Unauthenticated { message } => {
                Self::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message)
            }
            ServiceError::IdempotencyKeyReused { ref operation_id } => {
                let mut err = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED", e.to_string());
                err.extra.insert("operation_id".into(), operation_id.clone().into());
                err
            }
            ServiceError::Throttled { message, retry_after } => {
                let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", message);
                e.extra.insert("retry_after".into(), retry_after.into());
                e
            }
            ServiceError::SignIn { reason, message } => {
                let (status, code) = match reason {
                    SignInFailure::StateInvalid => (StatusCode::BAD_REQUEST, "OIDC_STATE_INVALID"),
                    SignInFailure::TokenInvalid => (StatusCode::UNAUTHORIZED, "OIDC_TOKEN_INVALID"),
                    SignInFailure::ProviderUnknown => (StatusCode::NOT_FOUND, "OIDC_PROVIDER_UNKNOWN"),
                    SignInFailure::ProviderUnavailable => (StatusCode::BAD_GATEWAY, "OIDC_PROVIDER_UNAVAILABLE"),
                    SignInFailure::ProviderDenied => (StatusCode::UNAUTHORIZED, "OIDC_PROVIDER_DENIED"),
                    SignInFailure::EmailMissing => (StatusCode::FORBIDDEN, "OIDC_EMAIL_MISSING"),
                    SignInFailure::EmailUnverified => (StatusCode::FORBIDDEN, "OIDC_EMAIL_UNVERIFIED"),
                    SignInFailure::AccountExists => (StatusCode::CONFLICT, "OIDC_ACCOUNT_EXISTS"),
                    SignInFailure::UserInactive => (StatusCode::FORBIDDEN, "OIDC_USER_INACTIVE"),
                    SignInFailure::NotAllowed => (StatusCode::FORBIDDEN, "OIDC_NOT_ALLOWED"),
                };
                Self::new(status, code, message)
            }
            ServiceError::Store(s) => {
                tracing::error!(error = %s, "storage failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "STORAGE_UNAVAILABLE",
                    "the database is unavailable; try again",
                )
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
