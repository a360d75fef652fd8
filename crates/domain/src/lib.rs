//! Breakwater's domain: validated names, sandboxes, policies, draft chunks,
//! providers and gateway facts as plain Rust types. No I/O and no protobuf:
//! the gateway crate maps the wire onto these types, and everything above it
//! speaks only these.
#![forbid(unsafe_code)]

pub mod access;
pub mod approval;
pub mod gateway;
pub mod labels;
pub mod names;
pub mod operation;
pub mod page;
pub mod policy;
pub mod policy_check;
pub mod policy_yaml;
pub mod presets;
pub mod provider;
pub mod registry;
pub mod sandbox;
pub mod secret;
pub mod templates;
pub mod timefmt;

pub use labels::{LabelSelector, Labels};
pub use names::{ProviderName, SandboxName, WorkspaceName};
pub use page::{Page, PageRequest};
pub use registry::GatewayName;
pub use secret::Secret;

/// Everything that can be wrong with a domain value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidName { kind: &'static str, value: String, reason: String },
    #[error("invalid label {key:?}: {reason}")]
    InvalidLabel { key: String, reason: String },
    #[error("invalid label selector {selector:?}: {reason}")]
    InvalidSelector { selector: String, reason: String },
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
}

/// Makes untrusted text safe to show: control characters (including CR/LF,
/// which could forge log lines or SSE events) become spaces, and the result is
/// capped at `max_chars` characters with an ellipsis.
#[must_use]
pub fn sanitize(raw: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(max_chars + 3));
    for (i, c) in raw.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn sanitize_strips_control_characters_and_caps_length() {
        assert_eq!(super::sanitize("a\r\ndata: x\u{7}", 100), "a  data: x ");
        assert_eq!(super::sanitize("abcdef", 3), "abc…");
    }
}
