//! Policy validation: reject what an OpenShell gateway rejects, with a
//! message naming the field, before anything is sent. Nothing more is
//! rejected than the gateway would, so a policy that works today keeps
//! working through Breakwater.
//!
//! [`Policy::normalise`] runs first and fixes what has one obvious fix
//! (letter case and a trailing dot in host names, a rule's missing name).

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::policy::{AccessPreset, NetworkEndpoint, Policy};

/// More rules than this is not a policy anyone can review.
pub const MAX_NETWORK_RULES: usize = 10_000;
/// Endpoints or binaries in one rule.
pub const MAX_PER_RULE: usize = 1_000;
/// Rule keys are names a reviewer reads.
const MAX_KEY_LEN: usize = 128;

/// The gateway reserves rule keys with this prefix for rules it derives
/// from providers.
pub const RESERVED_RULE_PREFIX: &str = "_provider_";

/// One thing wrong with a policy, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// A path into the policy, e.g. `network_policies.github.endpoints[0].host`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every violation found, in document order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct Violations(pub Vec<Violation>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => f.write_str("no violations"),
            [one] => write!(f, "{one}"),
            [first, rest @ ..] => write!(f, "{first} (and {} more)", rest.len()),
        }
    }
}

struct Checker(Vec<Violation>);

impl Checker {
    fn bad(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Violation { field: field.into(), message: message.into() });
    }
}

/// A normalised host name (lower case, no trailing dot), or why not.
///
/// Wildcards: `*` within the leftmost label (`*.example.com`,
/// `*-api.example.com`) and `**` as the whole leftmost label
/// (`**.example.com`, any depth). A wildcard must leave at least two fixed
/// labels, so it cannot cover a whole top-level domain (`*.com`).
pub fn normalise_host(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("must not be empty".into());
    }
    let host = trimmed.strip_suffix('.').unwrap_or(trimmed).to_ascii_lowercase();
    // `[::1]` is how people write IPv6 literals; the gateway wants the address.
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) if inner.parse::<std::net::Ipv6Addr>().is_ok() => inner.to_owned(),
        _ => host,
    };
    if host.is_empty() || host.ends_with('.') {
        return Err(format!("{raw:?} is not a host name"));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(host);
    }
    if host.len() > 253 {
        return Err("a host name has at most 253 characters".into());
    }
    let labels: Vec<&str> = host.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if label.is_empty() {
            return Err(format!("{raw:?} has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*' || b == b'_') {
            return Err(format!("{raw:?} may contain only letters, digits, '-', '_', '.' and wildcards"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("{raw:?}: a label may not start or end with '-'"));
        }
        if label.contains('*') {
            if i != 0 {
                return Err(format!("{raw:?}: a wildcard may appear only in the leftmost label"));
            }
            if label.contains("**") && *label != "**" {
                return Err(format!("{raw:?}: '**' must be a whole label (e.g. **.example.com)"));
            }
        }
    }
    let numeric = |l: &&str| l.bytes().all(|b| b.is_ascii_digit());
    if labels.iter().all(numeric) {
        return Err(format!("{raw:?} looks like an IPv4 address but is not one"));
    }
    if labels.len() > 1 && labels[0].contains('*') && labels[1..].iter().all(numeric) {
        return Err(format!("{raw:?}: wildcards apply to names, not to IP addresses; use allowed_ips for ranges"));
    }
    if labels[0].contains('*') {
        if labels.len() == 1 {
            return Err(format!("{raw:?} would match every host; name the domain (e.g. *.example.com)"));
        }
        if labels.len() < 3 {
            return Err(format!(
                "{raw:?}: a wildcard may not cover a whole top-level domain; name the domain (e.g. *.example{})",
                host.strip_prefix(labels[0]).unwrap_or_default()
            ));
        }
    }
    Ok(host)
}

fn valid_rule_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a rule name must not be empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("a rule name has at most {MAX_KEY_LEN} characters"));
    }
    if key.starts_with(RESERVED_RULE_PREFIX) {
        return Err(format!("the prefix {RESERVED_RULE_PREFIX:?} is reserved for the gateway's provider rules"));
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        return Err("a rule name may contain only letters, digits, '_', '-' and '.'".into());
    }
    Ok(())
}

/// What a reviewer should know before allowing `rule`, computed by
/// Breakwater itself (the gateway's own notes can be stale after an edit):
/// private or loopback addresses, and well-known database ports.
#[must_use]
pub fn security_concerns(rule: &crate::policy::NetworkRule) -> Vec<String> {
    let mut out = Vec::new();
    let private = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    for e in &rule.endpoints {
        let host = e.host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_ok_and(private) || host == "localhost" {
            out.push(format!("{} is a private or loopback address", e.host));
        }
        for ip in &e.allowed_ips {
            let addr = ip.split('/').next().unwrap_or_default();
            if addr.parse::<IpAddr>().is_ok_and(private) {
                out.push(format!("allowed_ips {ip} opens a private range"));
            }
        }
        for port in std::iter::once(e.port).chain(e.ports.iter().copied()) {
            if matches!(port, 22 | 1433 | 3306 | 5432 | 6379 | 9200 | 11211 | 27017) {
                out.push(format!("port {port} is a well-known database or remote-access port"));
            }
        }
    }
    out
}

fn valid_cidr(raw: &str) -> bool {
    let (ip, prefix) = match raw.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (raw, None),
    };
    let Ok(ip) = ip.parse::<IpAddr>() else { return false };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max))
}

fn has_l7(e: &NetworkEndpoint) -> bool {
    !e.rules.is_empty()
        || !e.deny_rules.is_empty()
        || e.access != AccessPreset::Unspecified
        || !e.graphql_persisted_queries.is_empty()
        || !e.persisted_queries.is_empty()
        || e.mcp.is_some()
}

fn check_endpoint(c: &mut Checker, at: &str, e: &NetworkEndpoint) {
    if let Err(m) = normalise_host(&e.host) {
        c.bad(format!("{at}.host"), m);
    }
    if e.port > 65_535 {
        c.bad(format!("{at}.port"), "must be 1-65535");
    }
    for (i, p) in e.ports.iter().enumerate() {
        if *p == 0 || *p > 65_535 {
            c.bad(format!("{at}.ports[{i}]"), "must be 1-65535");
        }
    }
    if !e.protocol.is_empty() && !e.protocol.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        c.bad(format!("{at}.protocol"), format!("{:?} is not a protocol name (rest, tcp, grpc, ...)", e.protocol));
    }
    if e.protocol == "tcp" {
        if e.port == 0 && e.ports.is_empty() {
            c.bad(format!("{at}.port"), "a tcp endpoint needs a port");
        }
        if has_l7(e) {
            c.bad(
                format!("{at}.protocol"),
                "protocol tcp carries no HTTP, so rules, deny_rules, access, mcp and graphql settings cannot apply",
            );
        }
    }
    if e.access != AccessPreset::Unspecified && !e.rules.is_empty() {
        c.bad(format!("{at}.access"), "access and rules are mutually exclusive: use a preset or explicit rules");
    }
    for (i, r) in e.rules.iter().enumerate() {
        let path = &r.allow.path;
        if !path.is_empty() && !path.starts_with('/') && !path.starts_with('*') {
            c.bad(format!("{at}.rules[{i}].allow.path"), "must start with '/' (globs: /**, /v1/*)");
        }
        let method = &r.allow.method;
        if !(method.is_empty() || method == "*" || method.bytes().all(|b| b.is_ascii_uppercase())) {
            c.bad(format!("{at}.rules[{i}].allow.method"), "an HTTP method in upper case (GET, POST, ...) or *");
        }
    }
    for (i, ip) in e.allowed_ips.iter().enumerate() {
        if !valid_cidr(ip) {
            c.bad(format!("{at}.allowed_ips[{i}]"), format!("{ip:?} is not an IP address or CIDR range"));
        }
    }
}

fn check_path(c: &mut Checker, at: String, path: &str) {
    if !path.starts_with('/') {
        c.bad(at, format!("{path:?} is not an absolute path"));
    } else if path.contains('\0') || path.split('/').any(|seg| seg == "..") {
        c.bad(at, format!("{path:?} may not contain '..' or NUL"));
    }
}

impl Policy {
    /// Fixes what has one obvious fix: host names to lower case without a
    /// trailing dot (a trailing dot is never sent as is), and a rule's
    /// empty `name` to its key. Hosts that cannot be fixed are left for
    /// [`Policy::validate`] to report.
    pub fn normalise(&mut self) {
        for (key, rule) in &mut self.network_policies {
            if rule.name.is_empty() {
                rule.name.clone_from(key);
            }
            for e in &mut rule.endpoints {
                if let Ok(h) = normalise_host(&e.host) {
                    e.host = h;
                }
                // `TCP` and ` tcp` mean tcp: the tcp rules must not be sidestepped by spelling.
                e.protocol = e.protocol.trim().to_ascii_lowercase();
            }
        }
    }

    /// Every violation, or `Ok`. Run [`Policy::normalise`] first.
    pub fn validate(&self) -> Result<(), Violations> {
        let mut c = Checker(Vec::new());
        if self.network_policies.len() > MAX_NETWORK_RULES {
            c.bad("network_policies", format!("{} rules; at most {MAX_NETWORK_RULES}", self.network_policies.len()));
            return Err(Violations(c.0));
        }
        for (key, rule) in &self.network_policies {
            let at = format!("network_policies.{key}");
            if let Err(m) = valid_rule_key(key) {
                c.bad(at.clone(), m);
            }
            if rule.endpoints.len() > MAX_PER_RULE || rule.binaries.len() > MAX_PER_RULE {
                c.bad(at.clone(), format!("at most {MAX_PER_RULE} endpoints and {MAX_PER_RULE} binaries per rule"));
                continue;
            }
            for (i, e) in rule.endpoints.iter().enumerate() {
                check_endpoint(&mut c, &format!("{at}.endpoints[{i}]"), e);
            }
            for (i, b) in rule.binaries.iter().enumerate() {
                if b.path.trim().is_empty() || b.path.chars().any(char::is_control) {
                    c.bad(format!("{at}.binaries[{i}].path"), "must be a non-empty path");
                }
            }
        }
        if let Some(fs) = &self.filesystem {
            for (i, p) in fs.read_only.iter().enumerate() {
                check_path(&mut c, format!("filesystem_policy.read_only[{i}]"), p);
            }
            for (i, p) in fs.read_write.iter().enumerate() {
                check_path(&mut c, format!("filesystem_policy.read_write[{i}]"), p);
            }
        }
        if let Some(l) = &self.landlock
            && !matches!(l.compatibility.as_str(), "" | "best_effort" | "hard_requirement")
        {
            c.bad("landlock.compatibility", "must be best_effort or hard_requirement");
        }
        if let Some(p) = &self.process {
            for (field, v) in [("process.run_as_user", &p.run_as_user), ("process.run_as_group", &p.run_as_group)] {
                if !v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) || v.len() > 32 {
                    c.bad(field, "a user or group name (letters, digits, '_', '-', '.'), at most 32 characters");
                }
            }
        }
        if c.0.is_empty() { Ok(()) } else { Err(Violations(c.0)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{L7Match, L7Rule, NetworkBinary, NetworkRule};

    fn policy_with(key: &str, endpoint: NetworkEndpoint) -> Policy {
        let mut p = Policy::default();
        p.network_policies.insert(
            key.into(),
            NetworkRule {
                name: key.into(),
                endpoints: vec![endpoint],
                binaries: vec![NetworkBinary { path: "/usr/bin/curl".into() }],
            },
        );
        p
    }

    fn host(h: &str) -> NetworkEndpoint {
        NetworkEndpoint { host: h.into(), port: 443, ..NetworkEndpoint::default() }
    }

    fn first_violation(p: &Policy) -> Violation {
        p.validate().unwrap_err().0.remove(0)
    }

    #[test]
    fn p01_a_wildcard_over_a_whole_tld_is_rejected_naming_the_host() {
        let v = first_violation(&policy_with("r", host("*.com")));
        assert_eq!(v.field, "network_policies.r.endpoints[0].host");
        assert!(v.message.contains("\"*.com\"") && v.message.contains("top-level domain"), "{v}");
        assert!(policy_with("r", host("**.io")).validate().is_err());
    }

    #[test]
    fn p02_a_bare_wildcard_is_rejected() {
        for h in ["*", "**"] {
            let v = first_violation(&policy_with("r", host(h)));
            assert!(v.message.contains("every host"), "{h}: {v}");
        }
    }

    #[test]
    fn p03_a_wildcard_inside_a_label_is_accepted() {
        assert_eq!(policy_with("r", host("*-aiplatform.googleapis.com")).validate(), Ok(()));
    }

    #[test]
    fn p04_a_double_star_label_is_accepted() {
        assert_eq!(policy_with("r", host("**.example.com")).validate(), Ok(()));
        assert!(policy_with("r", host("a**.example.com")).validate().is_err());
        assert!(policy_with("r", host("api.*.example.com")).validate().is_err());
    }

    #[test]
    fn p05_a_trailing_dot_is_normalised_before_anything_is_sent() {
        let mut p = policy_with("r", host("MCP.Example.com."));
        p.normalise();
        assert_eq!(p.network_policies["r"].endpoints[0].host, "mcp.example.com");
        assert_eq!(p.validate(), Ok(()));
        assert!(normalise_host("example.com..").is_err(), "two dots have no obvious fix");
    }

    #[test]
    fn p06_tcp_with_l7_rules_or_without_a_port_is_rejected_naming_the_field() {
        let mut e = host("db.example.com");
        e.protocol = "tcp".into();
        e.rules = vec![L7Rule { allow: L7Match { method: "GET".into(), path: "/**".into(), ..L7Match::default() } }];
        let v = first_violation(&policy_with("r", e));
        assert_eq!(v.field, "network_policies.r.endpoints[0].protocol");

        let mut e = host("db.example.com");
        e.protocol = "tcp".into();
        e.port = 0;
        let v = first_violation(&policy_with("r", e));
        assert_eq!(v.field, "network_policies.r.endpoints[0].port");
        assert!(v.message.contains("needs a port"));
    }

    #[test]
    fn p07_access_and_rules_are_mutually_exclusive() {
        let mut e = host("api.github.com");
        e.access = AccessPreset::Full;
        e.rules = vec![L7Rule { allow: L7Match { method: "GET".into(), path: "/**".into(), ..L7Match::default() } }];
        let v = first_violation(&policy_with("r", e));
        assert_eq!(v.field, "network_policies.r.endpoints[0].access");
        assert!(v.message.contains("mutually exclusive"));
    }

    #[test]
    fn p08_the_provider_prefix_is_reserved() {
        let v = first_violation(&policy_with("_provider_github", host("api.github.com")));
        assert_eq!(v.field, "network_policies._provider_github");
        assert!(v.message.contains("reserved"));
    }

    #[test]
    fn malformed_names_and_wildcards_over_addresses_are_refused() {
        for bad in ["-dash.example.com", "dash-.example.com", "999.999.999.999", "*.0.0.1", "*.10.0.0.1"] {
            assert!(normalise_host(bad).is_err(), "{bad}");
        }
        assert_eq!(normalise_host("[::1]").unwrap(), "::1");
        assert_eq!(normalise_host("10.0.0.1").unwrap(), "10.0.0.1");
    }

    #[test]
    fn ip_hosts_cidrs_and_paths() {
        assert_eq!(policy_with("r", host("127.0.0.1")).validate(), Ok(()));
        let mut e = host("db.internal.example");
        e.allowed_ips = vec!["10.0.0.0/8".into(), "fd00::/8".into(), "10.0.0.0/33".into()];
        let v = first_violation(&policy_with("r", e));
        assert_eq!(v.field, "network_policies.r.endpoints[0].allowed_ips[2]");
        let mut p = policy_with("r", host("a.example.com"));
        p.filesystem = Some(crate::policy::FilesystemPolicy {
            read_only: vec!["relative/path".into(), "/ok".into(), "/a/../etc".into()],
            ..Default::default()
        });
        let all = p.validate().unwrap_err().0;
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].field, "filesystem_policy.read_only[0]");
        assert_eq!(all[1].field, "filesystem_policy.read_only[2]");
    }
}
