//! Roles and how a principal's role on a gateway is decided.
//!
//! Roles are ordered: viewer < operator < admin. A principal (a user or a
//! service principal) has a global role and may have per-gateway
//! overrides; groups it belongs to carry a global role and per-gateway
//! roles too. The precedence, for gateway `gw`:
//!
//! 1. the principal's own override for `gw`, if any, wins outright (it may
//!    lower the role: an admin can be a viewer on one gateway);
//! 2. otherwise the highest of its groups' roles for `gw`, if any;
//! 3. otherwise the highest of its global role and its groups' global roles.
//!
//! For routes that are not about one gateway, step 3 alone applies.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::DomainError;

/// What a principal may do. `Ord` follows privilege.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            _ => Err(DomainError::InvalidField {
                field: "role",
                reason: format!("{:?} is not one of viewer, operator, admin", crate::sanitize(raw, 32)),
            }),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A group's grants, as role resolution needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupGrant {
    pub global: Option<Role>,
    /// Gateway name → role.
    pub gateways: BTreeMap<String, Role>,
}

/// Everything that decides one principal's roles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// `None` for a principal with no global role of its own (it then
    /// relies on its groups; with none it has no access).
    pub global: Option<Role>,
    /// The principal's own per-gateway overrides.
    pub gateways: BTreeMap<String, Role>,
    pub groups: Vec<GroupGrant>,
}

impl Grants {
    /// The role for routes not about one gateway.
    #[must_use]
    pub fn global_role(&self) -> Option<Role> {
        self.groups.iter().filter_map(|g| g.global).chain(self.global).max()
    }

    /// The role on gateway `gw` (see the module documentation).
    #[must_use]
    pub fn role_on(&self, gw: &str) -> Option<Role> {
        if let Some(own) = self.gateways.get(gw) {
            return Some(*own);
        }
        if let Some(group) = self.groups.iter().filter_map(|g| g.gateways.get(gw).copied()).max() {
            return Some(group);
        }
        self.global_role()
    }
}

/// An email address as an account name: trimmed and lower-cased, so one
/// mailbox is one account however it is typed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let e = raw.trim().to_lowercase();
        let bad = |reason: &str| DomainError::InvalidField { field: "email", reason: reason.to_owned() };
        if e.is_empty() || e.len() > 254 {
            return Err(bad("an email address of at most 254 characters"));
        }
        let Some((local, domain)) = e.rsplit_once('@') else { return Err(bad("an email address needs an '@'")) };
        if local.is_empty() || domain.is_empty() || !domain.contains('.') || domain.starts_with('.') {
            return Err(bad("an email address looks like name@example.com"));
        }
        if e.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("an email address has no spaces or control characters"));
        }
        Ok(Self(e))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A person who signs in. The password hash never leaves the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub email: String,
    pub role: Role,
    pub active: bool,
    /// Set while the account is locked after repeated failed logins.
    pub locked_until: Option<DateTime<Utc>>,
    pub failed_logins: u32,
    /// The identity provider a single-sign-on account is linked to.
    pub oidc_provider: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A non-human caller with an API key (`Authorization: Bearer bw_...`).
/// Only a digest of the key is stored, plus a prefix to recognise it by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePrincipal {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub key_prefix: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// A named set of users sharing roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub name: String,
    /// `None`: the group grants nothing globally (only per gateway).
    pub role: Option<Role>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Who a per-gateway role belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    User,
    ServicePrincipal,
    Group,
}

impl PrincipalKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::ServicePrincipal => "service_principal",
            Self::Group => "group",
        }
    }
}

/// A browser session, found by the digest of its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user_id: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A sign-in with an identity provider between the redirect to it and the
/// callback. Kept in the store (not in one process) so any replica can take
/// the callback; the `state` and the browser binding are stored as digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcLogin {
    /// SHA-256 (hex) of the `state` parameter.
    pub state_hash: String,
    pub provider: String,
    /// SHA-256 (hex) of the random value in the browser's short-lived cookie.
    pub browser_hash: String,
    pub nonce: String,
    /// The PKCE verifier: a secret until the code is exchanged.
    pub code_verifier: crate::Secret,
    /// Where the browser goes after signing in (a checked local path).
    pub next: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateways(pairs: &[(&str, Role)]) -> BTreeMap<String, Role> {
        pairs.iter().map(|(g, r)| ((*g).to_owned(), *r)).collect()
    }

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!(Role::parse(" Admin ").unwrap(), Role::Admin);
        assert!(Role::parse("root").is_err());
    }

    #[test]
    fn u02_own_override_beats_a_group_admin_on_that_gateway_only() {
        // Global operator, in a group with global admin, own override viewer on gw1.
        let g = Grants {
            global: Some(Role::Operator),
            gateways: gateways(&[("gw1", Role::Viewer)]),
            groups: vec![GroupGrant { global: Some(Role::Admin), gateways: BTreeMap::new() }],
        };
        assert_eq!(g.role_on("gw1"), Some(Role::Viewer));
        assert_eq!(g.role_on("gw2"), Some(Role::Admin));
        assert_eq!(g.global_role(), Some(Role::Admin));
    }

    #[test]
    fn group_gateway_roles_come_before_global_ones_and_the_highest_group_wins() {
        let g = Grants {
            global: Some(Role::Admin),
            gateways: BTreeMap::new(),
            groups: vec![
                GroupGrant { global: None, gateways: gateways(&[("gw", Role::Viewer)]) },
                GroupGrant { global: None, gateways: gateways(&[("gw", Role::Operator)]) },
            ],
        };
        assert_eq!(g.role_on("gw"), Some(Role::Operator), "a group's gateway role is more specific than global");
        assert_eq!(g.role_on("other"), Some(Role::Admin));
        assert_eq!(Grants::default().role_on("gw"), None, "no grants, no access");
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(Email::parse("  Alice@Example.COM ").unwrap().as_str(), "alice@example.com");
        for bad in ["", "alice", "@example.com", "alice@", "alice@localhost", "a b@example.com", "a@.com"] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }
}
