//! One error type for everything a gateway call can do wrong, classified so a
//! user can act on it. Upstream text is sanitised before it is stored here:
//! everything in a `GatewayError` may be shown to a user.

use std::error::Error as StdError;
use std::time::Duration;

use breakwater_domain::sanitize;
use breakwater_wire::google::rpc;
use prost::Message;
use tonic::Code;

/// Cap for upstream text we pass on.
pub(crate) const MAX_UPSTREAM_CHARS: usize = 300;

/// What is wrong with a certificate in the TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateProblem {
    /// The gateway's certificate is expired or not yet valid.
    ServerExpired,
    /// The gateway's certificate does not name the host we dialled.
    WrongHost,
    /// The gateway refused our client certificate as expired.
    ClientExpired,
    /// The gateway refused our client certificate (unknown CA, missing, revoked).
    ClientRejected,
}

/// A request field the gateway refused, from `google.rpc.BadRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GatewayError {
    #[error("gateway unreachable: {message}")]
    Unreachable { message: String },
    #[error(
        "gateway certificate is not trusted by the configured CA ({message}); if the gateway was re-created, unregister it and register or import it again with its new CA bundle"
    )]
    TlsUntrusted { message: String },
    #[error("{}", describe_certificate(*problem, message))]
    TlsCertificate { problem: CertificateProblem, message: String },
    #[error("the gateway did not accept our credentials: {message}")]
    Unauthenticated { message: String },
    #[error("permission denied by the gateway: {message}")]
    PermissionDenied { message: String },
    #[error("not found: {message}")]
    NotFound { message: String },
    #[error("already exists: {message}")]
    AlreadyExists { message: String },
    #[error("precondition failed: {message}")]
    FailedPrecondition { message: String, reason: Option<String> },
    #[error("conflict: the resource changed since it was read ({message}); re-read and retry")]
    Conflict { message: String },
    #[error("invalid argument: {message}")]
    InvalidArgument { message: String, violations: Vec<FieldViolation> },
    #[error(
        "the gateway does not implement {method}: it speaks a different OpenShell protocol version (Breakwater needs 0.1)"
    )]
    Unimplemented { method: String },
    #[error("the gateway did not answer in time ({message})")]
    DeadlineExceeded { message: String },
    #[error("the gateway is overloaded: {message}")]
    ResourceExhausted { message: String, retry_after: Option<Duration> },
    #[error("the gateway sent a response Breakwater refuses to use: {message}")]
    InvalidResponse { message: String },
    #[error("the call was cancelled")]
    Cancelled,
    #[error("gateway error: {message}")]
    Internal { message: String },
    #[error("invalid connection settings: {message}")]
    Config { message: String },
}

fn describe_certificate(problem: CertificateProblem, message: &str) -> String {
    match problem {
        CertificateProblem::ServerExpired => {
            format!("the gateway's TLS certificate is expired or not yet valid ({message})")
        }
        CertificateProblem::WrongHost => {
            format!(
                "the gateway's TLS certificate does not match the endpoint host ({message}); check the endpoint address"
            )
        }
        CertificateProblem::ClientExpired => {
            format!(
                "the gateway rejected our client certificate as expired ({message}); issue a new client certificate"
            )
        }
        CertificateProblem::ClientRejected => {
            format!("the gateway rejected our client certificate ({message}); check the client certificate and key")
        }
    }
}

impl GatewayError {
    /// A stable machine-readable code for APIs and metrics.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "gateway_unreachable",
            Self::TlsUntrusted { .. } => "tls_untrusted",
            Self::TlsCertificate { problem: CertificateProblem::ServerExpired, .. } => "tls_server_certificate_expired",
            Self::TlsCertificate { problem: CertificateProblem::WrongHost, .. } => "tls_wrong_host",
            Self::TlsCertificate { problem: CertificateProblem::ClientExpired, .. } => "tls_client_certificate_expired",
            Self::TlsCertificate { problem: CertificateProblem::ClientRejected, .. } => "tls_client_rejected",
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::PermissionDenied { .. } => "permission_denied",
            Self::NotFound { .. } => "not_found",
            Self::AlreadyExists { .. } => "already_exists",
            Self::FailedPrecondition { .. } => "failed_precondition",
            Self::Conflict { .. } => "conflict",
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::Unimplemented { .. } => "unimplemented",
            Self::DeadlineExceeded { .. } => "deadline_exceeded",
            Self::ResourceExhausted { .. } => "resource_exhausted",
            Self::InvalidResponse { .. } => "invalid_response",
            Self::Cancelled => "cancelled",
            Self::Internal { .. } => "internal",
            Self::Config { .. } => "invalid_config",
        }
    }

    /// Transient failures worth another attempt (if the call is idempotent).
    /// A resource-version conflict is ABORTED on the wire but retrying the same
    /// request cannot succeed, so it is not retryable here.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::DeadlineExceeded { .. } | Self::ResourceExhausted { .. })
            || matches!(self, Self::FailedPrecondition { reason: Some(r), .. } if r == "ABORTED")
    }

    /// Whether the gateway itself cannot be reached or trusted (as opposed to
    /// refusing one request): what a health monitor records as "down".
    #[must_use]
    pub fn is_connection_failure(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::TlsUntrusted { .. } | Self::TlsCertificate { .. })
    }

    pub(crate) fn from_status(method: &str, status: &tonic::Status) -> Self {
        tracing::debug!(method, code = ?status.code(), upstream = %status.message(), "gateway call failed");
        if let Some(tls) = classify_transport_chain(status) {
            return tls;
        }
        let details = Details::decode(status.details());
        let message = upstream_text(status.message());
        match status.code() {
            Code::Unavailable => Self::Unreachable { message },
            Code::Unauthenticated => Self::Unauthenticated { message },
            Code::PermissionDenied => Self::PermissionDenied { message },
            Code::NotFound => Self::NotFound { message },
            Code::AlreadyExists => Self::AlreadyExists { message },
            Code::FailedPrecondition if details.is_conflict() || mentions_resource_version(&message) => {
                Self::Conflict { message }
            }
            Code::FailedPrecondition => Self::FailedPrecondition { message, reason: details.reason },
            // ABORTED is the gateway's optimistic-concurrency failure.
            Code::Aborted if details.is_conflict() || mentions_resource_version(&message) => Self::Conflict { message },
            Code::Aborted => Self::FailedPrecondition { message, reason: Some("ABORTED".to_owned()) },
            Code::InvalidArgument | Code::OutOfRange => {
                Self::InvalidArgument { message, violations: details.violations }
            }
            Code::Unimplemented => Self::Unimplemented { method: method.to_owned() },
            Code::DeadlineExceeded => Self::DeadlineExceeded { message },
            Code::ResourceExhausted => Self::ResourceExhausted { message, retry_after: details.retry_after },
            Code::Cancelled => Self::Cancelled,
            _ => Self::Internal { message },
        }
    }

    pub(crate) fn from_transport(err: &tonic::transport::Error) -> Self {
        classify_chain(err).unwrap_or_else(|| Self::Unreachable { message: upstream_text(&chain_text(err)) })
    }
}

fn mentions_resource_version(message: &str) -> bool {
    message.to_ascii_lowercase().contains("resource version")
}

/// Strips control characters and caps length: the gateway's text may reach a
/// browser or a terminal.
pub(crate) fn upstream_text(raw: &str) -> String {
    sanitize(raw.trim(), MAX_UPSTREAM_CHARS)
}

fn chain_text(err: &dyn StdError) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

fn classify_transport_chain(status: &tonic::Status) -> Option<GatewayError> {
    let source = StdError::source(status)?;
    classify_chain(source).or_else(|| classify_alert_text(&chain_text(source))).or_else(|| {
        // A transport failure surfaced as a status without a TLS cause is the
        // connection going away: say "unreachable", not "unknown".
        Some(GatewayError::Unreachable { message: upstream_text(&chain_text(source)) })
            .filter(|_| matches!(status.code(), Code::Unavailable | Code::Unknown))
    })
}

/// Finds a rustls or I/O cause in an error chain and names it.
fn classify_chain(err: &(dyn StdError + 'static)) -> Option<GatewayError> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(classify_rustls(tls));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(classify_rustls(tls));
        }
        cur = e.source();
    }
    None
}

/// A TLS alert that arrives after the handshake (TLS 1.3 checks the client
/// certificate only then) reaches us through h2, which keeps its text but
/// not the rustls error itself. The text is rustls' own `Display` form.
fn classify_alert_text(text: &str) -> Option<GatewayError> {
    use rustls::AlertDescription as A;
    let alert = text.split("received fatal alert: ").nth(1)?.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
    let known = [
        A::CertificateExpired,
        A::BadCertificate,
        A::UnknownCA,
        A::CertificateRequired,
        A::CertificateRevoked,
        A::UnsupportedCertificate,
        A::AccessDenied,
    ];
    let description = known.into_iter().find(|a| format!("{a:?}") == alert)?;
    Some(classify_rustls(&rustls::Error::AlertReceived(description)))
}

fn classify_rustls(err: &rustls::Error) -> GatewayError {
    use rustls::{AlertDescription as A, CertificateError as C};
    let message = upstream_text(&err.to_string());
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
                GatewayError::TlsCertificate { problem: CertificateProblem::ServerExpired, message }
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                GatewayError::TlsCertificate { problem: CertificateProblem::WrongHost, message }
            }
            _ => GatewayError::TlsUntrusted { message },
        },
        rustls::Error::AlertReceived(A::CertificateExpired) => {
            GatewayError::TlsCertificate { problem: CertificateProblem::ClientExpired, message }
        }
        rustls::Error::AlertReceived(
            A::BadCertificate
            | A::UnknownCA
            | A::CertificateRequired
            | A::CertificateRevoked
            | A::UnsupportedCertificate,
        ) => GatewayError::TlsCertificate { problem: CertificateProblem::ClientRejected, message },
        _ => GatewayError::Unreachable { message: format!("TLS handshake failed: {message}") },
    }
}

/// The useful parts of `grpc-status-details-bin`.
#[derive(Default)]
struct Details {
    reason: Option<String>,
    violations: Vec<FieldViolation>,
    retry_after: Option<Duration>,
}

impl Details {
    fn decode(bytes: &[u8]) -> Self {
        let mut out = Self::default();
        let Ok(status) = rpc::Status::decode(bytes) else {
            return out;
        };
        for any in status.details {
            match any.type_url.as_str() {
                rpc::ERROR_INFO_TYPE => {
                    if let Ok(info) = rpc::ErrorInfo::decode(any.value.as_slice()) {
                        out.reason = Some(upstream_text(&info.reason));
                    }
                }
                rpc::BAD_REQUEST_TYPE => {
                    if let Ok(bad) = rpc::BadRequest::decode(any.value.as_slice()) {
                        out.violations = bad
                            .field_violations
                            .into_iter()
                            .take(20)
                            .map(|v| FieldViolation {
                                field: upstream_text(&v.field),
                                description: upstream_text(&v.description),
                            })
                            .collect();
                    }
                }
                rpc::RETRY_INFO_TYPE => {
                    if let Ok(retry) = rpc::RetryInfo::decode(any.value.as_slice()) {
                        out.retry_after = retry
                            .retry_delay
                            .and_then(|d| Duration::try_from(d).ok())
                            .map(|d| d.min(Duration::from_secs(60)));
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn is_conflict(&self) -> bool {
        self.reason.as_deref().is_some_and(|r| r.contains("CONFLICT") || r.contains("RESOURCE_VERSION"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with_details(code: Code, message: &str, details: Vec<prost_types::Any>) -> tonic::Status {
        let body = rpc::Status { code: code as i32, message: message.to_owned(), details }.encode_to_vec();
        tonic::Status::with_details(code, message, body.into())
    }

    #[test]
    fn unimplemented_names_the_protocol_version() {
        let err = GatewayError::from_status("ListSandboxes", &tonic::Status::unimplemented(""));
        assert_eq!(err.code(), "unimplemented");
        assert!(err.to_string().contains("different OpenShell protocol version"), "{err}");
    }

    #[test]
    fn upstream_text_is_sanitised_and_capped() {
        let raw = format!("bad\r\ndata: injected{}", "x".repeat(1000));
        let err = GatewayError::from_status("X", &tonic::Status::not_found(raw));
        let text = err.to_string();
        assert!(!text.contains('\n') && !text.contains('\r'));
        assert!(text.len() < 400, "{}", text.len());
    }

    #[test]
    fn decodes_bad_request_violations_and_error_info() {
        let bad = rpc::BadRequest {
            field_violations: vec![rpc::bad_request::FieldViolation {
                field: "spec.policy".into(),
                description: "host *.com too broad".into(),
                reason: String::new(),
            }],
        };
        let any = prost_types::Any { type_url: rpc::BAD_REQUEST_TYPE.into(), value: bad.encode_to_vec() };
        let err = GatewayError::from_status("X", &status_with_details(Code::InvalidArgument, "invalid", vec![any]));
        let GatewayError::InvalidArgument { violations, .. } = err else { panic!("{err:?}") };
        assert_eq!(violations[0].field, "spec.policy");

        let info = rpc::ErrorInfo {
            reason: "RESOURCE_VERSION_CONFLICT".into(),
            domain: "openshell.nvidia.com".into(),
            metadata: std::collections::HashMap::default(),
        };
        let any = prost_types::Any { type_url: rpc::ERROR_INFO_TYPE.into(), value: info.encode_to_vec() };
        let err = GatewayError::from_status("X", &status_with_details(Code::Aborted, "stale", vec![any]));
        assert_eq!(err.code(), "conflict");
        assert!(!err.is_retryable());
    }

    #[test]
    fn retryable_codes() {
        for (code, retry) in [
            (Code::Unavailable, true),
            (Code::DeadlineExceeded, true),
            (Code::ResourceExhausted, true),
            (Code::Aborted, true),
            (Code::Internal, false),
            (Code::InvalidArgument, false),
            (Code::NotFound, false),
        ] {
            let err = GatewayError::from_status("X", &tonic::Status::new(code, "x"));
            assert_eq!(err.is_retryable(), retry, "{code:?}");
        }
    }
}
