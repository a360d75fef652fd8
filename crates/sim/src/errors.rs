//! Errors the way OpenShell sends them: a status plus `google.rpc` details
//! in `grpc-status-details-bin`.

use breakwater_wire::google::rpc;
use prost::Message;
use tonic::{Code, Status};

const DOMAIN: &str = "openshell.nvidia.com";

fn with_details(code: Code, message: &str, details: Vec<prost_types::Any>) -> Status {
    let body = rpc::Status { code: code as i32, message: message.to_owned(), details }.encode_to_vec();
    Status::with_details(code, message.to_owned(), body.into())
}

fn error_info(reason: &str) -> prost_types::Any {
    let info =
        rpc::ErrorInfo { reason: reason.into(), domain: DOMAIN.into(), metadata: std::collections::HashMap::default() };
    prost_types::Any { type_url: rpc::ERROR_INFO_TYPE.into(), value: info.encode_to_vec() }
}

/// INVALID_ARGUMENT naming the offending field.
pub(crate) fn invalid(field: &str, description: &str) -> Status {
    let bad = rpc::BadRequest {
        field_violations: vec![rpc::bad_request::FieldViolation {
            field: field.into(),
            description: description.into(),
            reason: String::new(),
        }],
    };
    let any = prost_types::Any { type_url: rpc::BAD_REQUEST_TYPE.into(), value: bad.encode_to_vec() };
    with_details(Code::InvalidArgument, &format!("{field}: {description}"), vec![any, error_info("INVALID_ARGUMENT")])
}

/// FAILED_PRECONDITION with a machine-readable reason.
pub(crate) fn precondition(reason: &str, message: &str) -> Status {
    with_details(Code::FailedPrecondition, message, vec![error_info(reason)])
}

/// The optimistic-concurrency failure: the caller's resource version is stale.
pub(crate) fn conflict(expected: u64, actual: u64) -> Status {
    with_details(
        Code::Aborted,
        &format!("resource version conflict: expected {expected}, current is {actual}"),
        vec![error_info("RESOURCE_VERSION_CONFLICT")],
    )
}

pub(crate) fn sandbox_only() -> Status {
    Status::permission_denied("this method requires a sandbox principal")
}
