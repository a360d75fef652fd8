//! The gateway registry's records: what Breakwater knows about each gateway
//! it manages, and the audit trail of changes.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{DomainError, Secret};

/// A registered gateway's name: `[a-zA-Z0-9][a-zA-Z0-9._-]*`, at most 253
/// characters (ShoreGuard's rule, kept so existing clients' names stay valid).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct GatewayName(String);

impl GatewayName {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let bad = |reason: &str| DomainError::InvalidName {
            kind: "gateway name",
            value: crate::sanitize(raw, 80),
            reason: reason.to_owned(),
        };
        let mut chars = raw.chars();
        match chars.next() {
            None => return Err(bad("must not be empty")),
            Some(c) if !c.is_ascii_alphanumeric() => return Err(bad("must start with a letter or digit")),
            _ => {}
        }
        if raw.len() > 253 {
            return Err(bad("must be at most 253 characters"));
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return Err(bad("may contain only letters, digits, '.', '_' and '-'"));
        }
        Ok(Self(raw.to_owned()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GatewayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for GatewayName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// How Breakwater authenticates to a gateway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// TLS with a client certificate (OpenShell's default).
    #[default]
    Mtls,
    /// TLS, server-authenticated only.
    Tls,
    /// No TLS (explicit opt-in, `scheme: http`).
    None,
}

impl AuthMode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mtls => "mtls",
            Self::Tls => "tls",
            Self::None => "none",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        match raw {
            "mtls" => Ok(Self::Mtls),
            "tls" => Ok(Self::Tls),
            "none" | "insecure" | "plaintext" => Ok(Self::None),
            other => Err(DomainError::InvalidField {
                field: "auth_mode",
                reason: format!("{:?} is not one of mtls, tls, none", crate::sanitize(other, 40)),
            }),
        }
    }
}

/// Connection state as last observed (never probed per request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayStatus {
    /// Registered, never checked yet.
    #[default]
    Unknown,
    Connected,
    Unreachable,
    /// Reachable but refusing us: TLS or credentials problem, or version skew.
    Error,
}

impl GatewayStatus {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Connected => "connected",
            Self::Unreachable => "unreachable",
            Self::Error => "error",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        match raw {
            "unknown" => Ok(Self::Unknown),
            "connected" => Ok(Self::Connected),
            "unreachable" => Ok(Self::Unreachable),
            "error" => Ok(Self::Error),
            other => Err(DomainError::InvalidField { field: "status", reason: format!("unknown status {other:?}") }),
        }
    }
}

/// The result of the newest health check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayHealth {
    pub status: GatewayStatus,
    /// Stable code of the last error (`tls_untrusted`, `gateway_unreachable`...).
    pub error_code: Option<String>,
    /// Human-readable, already sanitised.
    pub error: Option<String>,
    pub version: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
    /// Last time the gateway answered.
    pub last_seen: Option<DateTime<Utc>>,
}

/// Everything stored about a gateway. `client_key` is decrypted only for
/// connecting; it never leaves the service layer.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayRecord {
    pub name: GatewayName,
    pub endpoint: String,
    pub scheme: String,
    pub auth_mode: AuthMode,
    pub skip_server_verification: bool,
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<Secret>,
    /// Sent as `authorization: Bearer …` on every call, when the gateway
    /// wants one (OIDC-fronted gateways).
    pub bearer_token: Option<Secret>,
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub health: GatewayHealth,
    pub registered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One field of a PATCH body: absent keeps it, `null` clears it, a value sets it.
/// Serialised (for the audit trail) as `"keep"`, `"clear"` or `{"set": value}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldPatch<T> {
    #[default]
    Keep,
    Clear,
    Set(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for FieldPatch<T> {
    /// Only called when the field is present (use with `#[serde(default)]`),
    /// so `null` here means "clear".
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<T>::deserialize(d)?.map_or(Self::Clear, Self::Set))
    }
}

/// A change to description and labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayMetadataPatch {
    #[serde(default)]
    pub description: FieldPatch<String>,
    #[serde(default)]
    pub labels: FieldPatch<BTreeMap<String, String>>,
}

/// One entry of the append-only audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub id: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub role: String,
    pub client_ip: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub gateway: Option<String>,
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// An audit entry before the store numbers and chains it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewAuditEntry {
    pub actor: String,
    pub role: String,
    pub client_ip: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub gateway: Option<String>,
    pub detail: serde_json::Value,
}

/// Filters for listing and exporting the audit trail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub gateway: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl AuditEntry {
    /// What was recorded, without the chain's bookkeeping (what the MAC covers
    /// together with `seq`, `id`, `at` and `prev_hash`).
    #[must_use]
    pub fn content(&self) -> NewAuditEntry {
        NewAuditEntry {
            actor: self.actor.clone(),
            role: self.role.clone(),
            client_ip: self.client_ip.clone(),
            action: self.action.clone(),
            resource_type: self.resource_type.clone(),
            resource_id: self.resource_id.clone(),
            gateway: self.gateway.clone(),
            detail: self.detail.clone(),
        }
    }
}

impl NewAuditEntry {
    /// The entry as stored: numbered, timed and chained.
    #[must_use]
    pub fn chained(self, seq: i64, id: String, at: DateTime<Utc>, prev_hash: String, hash: String) -> AuditEntry {
        AuditEntry {
            seq,
            id,
            at,
            actor: self.actor,
            role: self.role,
            client_ip: self.client_ip,
            action: self.action,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            gateway: self.gateway,
            detail: self.detail,
            prev_hash,
            hash,
        }
    }
}

/// The MAC that chains an entry to its predecessor: HMAC-SHA256 under a key
/// derived from the server's secret key. Any change to any field of any
/// entry changes every MAC after it, and without the key nobody with write
/// access to the database can recompute a consistent chain.
#[must_use]
pub fn audit_hash(key: &[u8], seq: i64, e: &NewAuditEntry, id: &str, at: DateTime<Utc>, prev_hash: &str) -> String {
    use hmac::{Hmac, Mac};
    // HMAC takes keys of any length; this cannot fail.
    let mut h = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in [
        seq.to_string().as_str(),
        id,
        &at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        &e.actor,
        &e.role,
        e.client_ip.as_deref().unwrap_or(""),
        &e.action,
        &e.resource_type,
        &e.resource_id,
        e.gateway.as_deref().unwrap_or(""),
        // serde_json maps are ordered by key, so this text is canonical.
        &e.detail.to_string(),
        prev_hash,
    ] {
        h.update(part.as_bytes());
        h.update(&[0x1f]);
    }
    hex::encode(h.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_follow_the_shoreguard_rule() {
        for ok in ["demo", "gw-1", "prod.eu_west", "A1"] {
            assert!(GatewayName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", &"x".repeat(254)] {
            assert!(GatewayName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn audit_hash_depends_on_every_field() {
        let e = NewAuditEntry {
            actor: "a".into(),
            role: "admin".into(),
            client_ip: None,
            action: "gateway.register".into(),
            resource_type: "gateway".into(),
            resource_id: "gw".into(),
            gateway: Some("gw".into()),
            detail: serde_json::json!({"b": 1, "a": 2}),
        };
        let at = Utc::now();
        let h = audit_hash(b"k", 1, &e, "id", at, "prev");
        assert_eq!(h, audit_hash(b"k", 1, &e, "id", at, "prev"));
        assert_ne!(h, audit_hash(b"k", 2, &e, "id", at, "prev"));
        assert_ne!(h, audit_hash(b"other key", 1, &e, "id", at, "prev"), "keyed");
        let mut changed = e.clone();
        changed.actor = "b".into();
        assert_ne!(h, audit_hash(b"k", 1, &changed, "id", at, "prev"));
    }
}
