//! The policy's YAML form (OpenShell's policy file format), its canonical
//! form and fingerprint, and diffs between two policies.
//!
//! YAML input is untrusted: it is size-capped and alias expansion is
//! bounded, so a few kilobytes cannot expand into gigabytes ("billion
//! laughs"). The canonical form is the policy re-emitted from the typed
//! model: keys sorted (maps are `BTreeMap`s), defaults omitted, so two
//! policies that mean the same thing print the same.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::policy::{NetworkRule, Policy};

/// Larger policy files are refused before parsing.
pub const MAX_POLICY_YAML_BYTES: usize = 4 * 1024 * 1024;

/// What can be wrong with a policy document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyDocError {
    #[error("policy YAML is larger than {} MiB", MAX_POLICY_YAML_BYTES / (1024 * 1024))]
    TooLarge,
    #[error("policy YAML is not valid: {0}")]
    Syntax(String),
}

fn options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    // A real policy uses a handful of aliases, if any. These bounds make an
    // alias bomb fail in microseconds instead of expanding.
    o.alias_limits.max_total_replayed_events = 10_000;
    o.alias_limits.max_replay_stack_depth = 16;
    o.alias_limits.max_alias_expansions_per_anchor = 100;
    o
}

impl Policy {
    /// Parses a policy file. The `filesystem_policy` key fills the
    /// filesystem section; unknown keys are errors (a typo must not
    /// silently drop a restriction).
    pub fn from_yaml(text: &str) -> Result<Self, PolicyDocError> {
        if text.len() > MAX_POLICY_YAML_BYTES {
            return Err(PolicyDocError::TooLarge);
        }
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str_with_options(text, options()).map_err(|e| {
            // The parser's report can quote the input at length; keep it short.
            PolicyDocError::Syntax(crate::sanitize(&e.to_string(), 500))
        })
    }

    /// The canonical YAML: deterministic, `filesystem_policy` as the key.
    #[must_use]
    pub fn to_yaml(&self) -> String {
        // Serialising plain data cannot fail; an empty string would show it.
        serde_saphyr::to_string(self).unwrap_or_default()
    }

    /// SHA-256 of the canonical JSON form: equal for policies that mean the
    /// same, whatever their YAML layout. (Not the gateway's policy hash,
    /// which the gateway computes over its own encoding.)
    #[must_use]
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }
}

/// How one named rule differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleChange {
    pub name: String,
    /// `host:port` endpoints only in the new rule.
    pub endpoints_added: Vec<String>,
    pub endpoints_removed: Vec<String>,
    /// Endpoints present in both whose settings (rules, access, ...) differ.
    pub endpoints_changed: Vec<String>,
    pub binaries_added: Vec<String>,
    pub binaries_removed: Vec<String>,
}

/// Paths added to and removed from one filesystem list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PathChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// A structural diff: what a reviewer needs to see, section by section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
// One flag per section a reviewer checks; an enum set would read worse in JSON.
#[allow(clippy::struct_excessive_bools)]
pub struct PolicyDiff {
    pub rules_added: Vec<String>,
    pub rules_removed: Vec<String>,
    pub rules_changed: Vec<RuleChange>,
    pub read_only: PathChanges,
    pub read_write: PathChanges,
    pub include_workdir_changed: bool,
    pub landlock_changed: bool,
    pub process_changed: bool,
    pub middlewares_changed: bool,
}

impl PolicyDiff {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Sections that may not change on a running sandbox, if this diff
    /// touches them.
    #[must_use]
    pub fn fixed_sections_touched(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.read_only.added.is_empty()
            || !self.read_only.removed.is_empty()
            || !self.read_write.added.is_empty()
            || !self.read_write.removed.is_empty()
            || self.include_workdir_changed
        {
            out.push("filesystem_policy");
        }
        if self.landlock_changed {
            out.push("landlock");
        }
        if self.process_changed {
            out.push("process");
        }
        out
    }
}

fn endpoint_keys(rule: &NetworkRule) -> Vec<String> {
    rule.endpoints.iter().map(|e| format!("{}:{}", e.host, e.port)).collect()
}

fn set_diff(old: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    let a: BTreeSet<&String> = old.iter().collect();
    let b: BTreeSet<&String> = new.iter().collect();
    (b.difference(&a).map(|s| (*s).clone()).collect(), a.difference(&b).map(|s| (*s).clone()).collect())
}

fn rule_change(name: &str, old: &NetworkRule, new: &NetworkRule) -> RuleChange {
    let (endpoints_added, endpoints_removed) = set_diff(&endpoint_keys(old), &endpoint_keys(new));
    let endpoints_changed = new
        .endpoints
        .iter()
        .filter_map(|n| {
            let o = old.endpoints.iter().find(|o| o.host == n.host && o.port == n.port)?;
            (o != n).then(|| format!("{}:{}", n.host, n.port))
        })
        .collect();
    let paths = |r: &NetworkRule| r.binaries.iter().map(|b| b.path.clone()).collect::<Vec<_>>();
    let (binaries_added, binaries_removed) = set_diff(&paths(old), &paths(new));
    RuleChange {
        name: name.to_owned(),
        endpoints_added,
        endpoints_removed,
        endpoints_changed,
        binaries_added,
        binaries_removed,
    }
}

/// What changes from `old` to `new`.
#[must_use]
pub fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    let mut d = PolicyDiff::default();
    for (name, rule) in &new.network_policies {
        match old.network_policies.get(name) {
            None => d.rules_added.push(name.clone()),
            Some(o) if o != rule => d.rules_changed.push(rule_change(name, o, rule)),
            Some(_) => {}
        }
    }
    d.rules_removed = old.network_policies.keys().filter(|k| !new.network_policies.contains_key(*k)).cloned().collect();
    let fs_old = old.filesystem.clone().unwrap_or_default();
    let fs_new = new.filesystem.clone().unwrap_or_default();
    let (added, removed) = set_diff(&fs_old.read_only, &fs_new.read_only);
    d.read_only = PathChanges { added, removed };
    let (added, removed) = set_diff(&fs_old.read_write, &fs_new.read_write);
    d.read_write = PathChanges { added, removed };
    d.include_workdir_changed = fs_old.include_workdir != fs_new.include_workdir;
    d.landlock_changed = old.landlock.clone().unwrap_or_default() != new.landlock.clone().unwrap_or_default();
    d.process_changed = old.process.clone().unwrap_or_default() != new.process.clone().unwrap_or_default();
    d.middlewares_changed = old.network_middlewares != new.network_middlewares;
    d
}

/// A unified diff of the two canonical YAML forms (empty when equal).
#[must_use]
pub fn text_diff(old: &Policy, new: &Policy, old_label: &str, new_label: &str) -> String {
    let (a, b) = (old.to_yaml(), new.to_yaml());
    if a == b {
        return String::new();
    }
    let mut out = String::new();
    let text = similar::TextDiff::from_lines(&a, &b);
    let _ = write!(out, "{}", text.unified_diff().context_radius(3).header(old_label, new_label));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{FilesystemPolicy, NetworkBinary, NetworkEndpoint, ProcessPolicy};

    const SAMPLE: &str = r"
version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /lib]
  read_write: [/tmp]
landlock:
  compatibility: best_effort
process:
  run_as_user: sandbox
  run_as_group: sandbox
network_policies:
  github:
    name: github
    endpoints:
      - host: api.github.com
        port: 443
        protocol: rest
        tls: terminate
        enforcement: enforce
        rules:
          - allow: {method: GET, path: /**}
    binaries:
      - path: /usr/bin/git
";

    #[test]
    fn p10_filesystem_policy_key_round_trips() {
        let p = Policy::from_yaml(SAMPLE).unwrap();
        assert_eq!(p.filesystem.as_ref().unwrap().read_only, vec!["/usr", "/lib"]);
        let out = p.to_yaml();
        assert!(out.contains("filesystem_policy:"), "{out}");
        assert!(!out.contains("\nfilesystem:"), "{out}");
        assert_eq!(Policy::from_yaml(&out).unwrap(), p, "round trip");
        assert_eq!(Policy::from_yaml(&out).unwrap().to_yaml(), out, "canonical form is a fixed point");
    }

    #[test]
    fn p12_an_alias_bomb_is_refused_quickly() {
        // Inside a middleware's free-form config, where any YAML is accepted:
        // 9 levels of 9 aliases would be 9^9 strings.
        let mut doc = String::from(
            "network_middlewares:\n  m:\n    name: m\n    middleware: x\n    config:\n      a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n",
        );
        for (key, prev) in
            ["b", "c", "d", "e", "f", "g", "h", "i"].into_iter().zip(["a", "b", "c", "d", "e", "f", "g", "h"])
        {
            let _ = writeln!(
                doc,
                "      {key}: &{key} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]"
            );
        }
        assert!(doc.len() < 2048, "{}", doc.len());
        let started = std::time::Instant::now();
        let err = Policy::from_yaml(&doc).unwrap_err();
        // Unbounded expansion would take minutes; the bound keeps it to
        // milliseconds (debug build, loaded CI: allow a second).
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(err.to_string().to_lowercase().contains("alias"), "{err}");
        // The same shape, small, is fine: aliases themselves are allowed.
        let small = "network_middlewares:\n  m:\n    name: m\n    middleware: x\n    config:\n      a: &a [1, 2]\n      b: [*a, *a]\n";
        let p = Policy::from_yaml(small).unwrap();
        assert_eq!(p.network_middlewares["m"].config["b"], serde_json::json!([[1, 2], [1, 2]]));
    }

    #[test]
    fn unknown_keys_and_oversized_input_are_refused() {
        let err = Policy::from_yaml("netwrk_policies: {}\n").unwrap_err();
        assert!(err.to_string().contains("netwrk_policies"), "{err}");
        assert_eq!(Policy::from_yaml(&"#".repeat(MAX_POLICY_YAML_BYTES + 1)), Err(PolicyDocError::TooLarge));
        assert_eq!(Policy::from_yaml("  \n").unwrap(), Policy::default());
    }

    #[test]
    fn fingerprints_ignore_layout() {
        let a = Policy::from_yaml(SAMPLE).unwrap();
        let b = Policy::from_yaml(&a.to_yaml()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.network_policies.get_mut("github").unwrap().binaries.push(NetworkBinary { path: "/usr/bin/gh".into() });
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn structural_diff_names_what_changed() {
        let old = Policy::from_yaml(SAMPLE).unwrap();
        let mut new = old.clone();
        let gh = new.network_policies.get_mut("github").unwrap();
        gh.endpoints.push(NetworkEndpoint { host: "codeload.github.com".into(), port: 443, ..Default::default() });
        gh.endpoints[0].rules.clear();
        gh.binaries = vec![NetworkBinary { path: "/usr/bin/gh".into() }];
        new.network_policies.insert("pypi".into(), NetworkRule { name: "pypi".into(), ..Default::default() });
        new.filesystem = Some(FilesystemPolicy {
            include_workdir: true,
            read_only: vec!["/usr".into()],
            read_write: vec!["/tmp".into()],
        });
        new.process = Some(ProcessPolicy { run_as_user: "root".into(), run_as_group: "sandbox".into() });

        let d = diff(&old, &new);
        assert_eq!(d.rules_added, vec!["pypi"]);
        assert!(d.rules_removed.is_empty());
        let c = &d.rules_changed[0];
        assert_eq!(c.endpoints_added, vec!["codeload.github.com:443"]);
        assert_eq!(c.endpoints_changed, vec!["api.github.com:443"]);
        assert_eq!(
            (c.binaries_added.clone(), c.binaries_removed.clone()),
            (vec!["/usr/bin/gh".to_owned()], vec!["/usr/bin/git".to_owned()])
        );
        assert_eq!(d.read_only.removed, vec!["/lib"]);
        assert_eq!(d.fixed_sections_touched(), vec!["filesystem_policy", "process"]);

        let text = text_diff(&old, &new, "a", "b");
        assert!(text.starts_with("--- a\n+++ b\n"), "{text}");
        assert!(text.contains("+    name: pypi") || text.contains("+  pypi:"), "{text}");
    }

    #[test]
    fn p13_five_thousand_rules_are_accepted_without_a_quadratic_walk() {
        let mut p = Policy::default();
        for i in 0..5_000 {
            let name = format!("rule-{i:04}");
            let endpoints =
                vec![NetworkEndpoint { host: format!("h{i}.example.com"), port: 443, ..Default::default() }];
            p.network_policies.insert(name.clone(), NetworkRule { name, endpoints, binaries: vec![] });
        }
        let started = std::time::Instant::now();
        let text = p.to_yaml();
        let mut back = Policy::from_yaml(&text).unwrap();
        back.normalise();
        assert_eq!(back.validate(), Ok(()));
        assert!(diff(&p, &back).is_empty());
        // Release builds take milliseconds (scripts/bench); this guards against
        // a quadratic path, which would take minutes, in a debug build.
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[test]
    fn p15_a_policy_diffed_with_itself_is_empty() {
        let p = Policy::from_yaml(SAMPLE).unwrap();
        assert!(diff(&p, &p).is_empty());
        assert_eq!(text_diff(&p, &p, "a", "b"), "");
    }
}
