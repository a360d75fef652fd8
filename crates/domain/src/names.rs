//! Validated names. Each type can only be built through `parse`, so code that
//! holds one never re-checks it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::DomainError;

/// Longest name OpenShell accepts for sandboxes, providers and workspaces
/// (a DNS label, because names become Kubernetes object names on some drivers).
const MAX_NAME_LEN: usize = 63;

fn check_dns_label(kind: &'static str, raw: &str) -> Result<(), DomainError> {
    let invalid =
        |reason: &str| DomainError::InvalidName { kind, value: crate::sanitize(raw, 80), reason: reason.to_owned() };
    if raw.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if raw.len() > MAX_NAME_LEN {
        return Err(invalid("must be at most 63 characters"));
    }
    if !raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(invalid("may contain only lowercase letters, digits and '-'"));
    }
    if raw.starts_with('-') || raw.ends_with('-') {
        return Err(invalid("must start and end with a letter or digit"));
    }
    Ok(())
}

macro_rules! dns_name {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Accepts a DNS label: 1–63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
            pub fn parse(raw: &str) -> Result<Self, DomainError> {
                check_dns_label($kind, raw)?;
                Ok(Self(raw.to_owned()))
            }

            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

dns_name!(
    /// A sandbox's name, unique within a workspace of one gateway.
    SandboxName,
    "sandbox name"
);
dns_name!(
    /// A provider's name, unique within a workspace of one gateway.
    ProviderName,
    "provider name"
);
dns_name!(
    /// An OpenShell workspace. Every gateway has `default`.
    WorkspaceName,
    "workspace name"
);

impl WorkspaceName {
    /// The workspace every gateway creates at start.
    #[must_use]
    pub fn default_workspace() -> Self {
        Self("default".to_owned())
    }
}

impl Default for WorkspaceName {
    fn default() -> Self {
        Self::default_workspace()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "dev-box-1", "0abc", &"x".repeat(63)] {
            assert_eq!(SandboxName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_bad_names_with_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("Upper", "lowercase"),
            ("-lead", "start and end"),
            ("trail-", "start and end"),
            ("a_b", "lowercase"),
            ("a.b", "lowercase"),
        ] {
            let err = SandboxName::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(SandboxName::parse(&"x".repeat(64)).unwrap_err().to_string().contains("63"));
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<SandboxName>("\"ok-name\"").is_ok());
        assert!(serde_json::from_str::<SandboxName>("\"Bad Name\"").is_err());
    }
}
