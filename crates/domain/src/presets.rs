//! Policy presets: named policy fragments (the endpoints a package
//! registry or a SaaS API needs) merged into a sandbox's policy.
//!
//! The built-in library is compiled in from `presets/*.yaml`; a site can add
//! its own files of the same format (the services layer reads them).
//!
//! Merging: network rules are added under their keys, and a key the policy
//! already has with a different rule is a conflict unless the caller asked
//! to overwrite; filesystem paths are unioned; process and landlock settings
//! apply only when a sandbox is created (they cannot change on a live one).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::{FilesystemPolicy, Policy};
use crate::policy_check::Violations;
use crate::policy_yaml::PolicyDocError;

/// A named policy fragment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    pub description: String,
    pub policy: Policy,
}

/// Why a preset file was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PresetError {
    #[error(transparent)]
    Document(#[from] PolicyDocError),
    #[error("preset name {0:?} must be 1-63 lower-case letters, digits or '-'")]
    Name(String),
    #[error("preset {name}: {violations}")]
    Invalid { name: String, violations: Violations },
}

impl Preset {
    /// Parses and validates a preset file.
    pub fn from_yaml(text: &str) -> Result<Self, PresetError> {
        if text.len() > crate::policy_yaml::MAX_POLICY_YAML_BYTES {
            return Err(PolicyDocError::TooLarge.into());
        }
        let mut o = serde_saphyr::Options::default();
        o.alias_limits.max_total_replayed_events = 10_000;
        let mut preset: Self = serde_saphyr::from_str_with_options(text, o)
            .map_err(|e| PolicyDocError::Syntax(crate::sanitize(&e.to_string(), 500)))?;
        let name_ok = !preset.name.is_empty()
            && preset.name.len() <= 63
            && preset.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(PresetError::Name(preset.name));
        }
        preset.policy.normalise();
        preset
            .policy
            .validate()
            .map_err(|violations| PresetError::Invalid { name: preset.name.clone(), violations })?;
        Ok(preset)
    }
}

const BUILT_IN: &[&str] = &[
    include_str!("../presets/apt.yaml"),
    include_str!("../presets/discord.yaml"),
    include_str!("../presets/docker.yaml"),
    include_str!("../presets/github.yaml"),
    include_str!("../presets/huggingface.yaml"),
    include_str!("../presets/jira.yaml"),
    include_str!("../presets/npm.yaml"),
    include_str!("../presets/openclaw.yaml"),
    include_str!("../presets/outlook.yaml"),
    include_str!("../presets/pypi.yaml"),
    include_str!("../presets/slack.yaml"),
    include_str!("../presets/telegram.yaml"),
];

/// The presets compiled into Breakwater, ordered by name.
#[must_use]
pub fn built_in() -> Vec<Preset> {
    // The files are ours and tested; a broken one fails `built_ins_parse`.
    let mut all: Vec<Preset> = BUILT_IN.iter().filter_map(|t| Preset::from_yaml(t).ok()).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// What merging a preset did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MergeOutcome {
    pub rules_added: Vec<String>,
    pub rules_replaced: Vec<String>,
    /// Already present with exactly the preset's content.
    pub rules_unchanged: Vec<String>,
    pub paths_added: Vec<String>,
}

impl MergeOutcome {
    #[must_use]
    pub fn changed(&self) -> bool {
        !self.rules_added.is_empty() || !self.rules_replaced.is_empty() || !self.paths_added.is_empty()
    }
}

/// Rule keys the policy already has with different content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("the policy already has different rules named {}; pass overwrite to replace them", keys.join(", "))]
pub struct MergeConflict {
    pub keys: Vec<String>,
}

fn union(into: &mut Vec<String>, from: &[String], added: &mut Vec<String>) {
    for p in from {
        if !into.contains(p) {
            into.push(p.clone());
            added.push(p.clone());
        }
    }
}

impl Policy {
    /// Merges `preset` into a live sandbox's policy (network rules and
    /// filesystem paths; process and landlock are left alone).
    pub fn merge_preset(&mut self, preset: &Preset, overwrite: bool) -> Result<MergeOutcome, MergeConflict> {
        self.merge(&preset.policy, overwrite, false)
    }

    /// As [`Policy::merge_preset`] for a sandbox being created: process and
    /// landlock settings from the preset apply too (the preset's win when
    /// both set them).
    pub fn merge_preset_at_creation(
        &mut self,
        preset: &Preset,
        overwrite: bool,
    ) -> Result<MergeOutcome, MergeConflict> {
        self.merge(&preset.policy, overwrite, true)
    }

    fn merge(&mut self, fragment: &Policy, overwrite: bool, creating: bool) -> Result<MergeOutcome, MergeConflict> {
        let conflicts: Vec<String> = fragment
            .network_policies
            .iter()
            .filter(|(k, rule)| self.network_policies.get(*k).is_some_and(|mine| mine != *rule))
            .map(|(k, _)| k.clone())
            .collect();
        if !conflicts.is_empty() && !overwrite {
            return Err(MergeConflict { keys: conflicts });
        }
        let mut out = MergeOutcome::default();
        let rules: BTreeMap<_, _> = fragment.network_policies.clone();
        for (key, rule) in rules {
            match self.network_policies.insert(key.clone(), rule.clone()) {
                None => out.rules_added.push(key),
                Some(old) if old == rule => out.rules_unchanged.push(key),
                Some(_) => out.rules_replaced.push(key),
            }
        }
        if let Some(fs) = &fragment.filesystem {
            let mine = self.filesystem.get_or_insert_with(FilesystemPolicy::default);
            union(&mut mine.read_only, &fs.read_only, &mut out.paths_added);
            union(&mut mine.read_write, &fs.read_write, &mut out.paths_added);
            if creating {
                mine.include_workdir |= fs.include_workdir;
            }
        }
        if creating {
            if fragment.process.is_some() {
                self.process.clone_from(&fragment.process);
            }
            if fragment.landlock.is_some() {
                self.landlock.clone_from(&fragment.landlock);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(name: &str) -> Preset {
        built_in().into_iter().find(|p| p.name == name).unwrap()
    }

    #[test]
    fn built_ins_parse_and_validate() {
        for text in BUILT_IN {
            let p = Preset::from_yaml(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert!(!p.description.is_empty());
        }
        let names: Vec<_> = built_in().into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "apt",
                "discord",
                "docker",
                "github",
                "huggingface",
                "jira",
                "npm",
                "openclaw",
                "outlook",
                "pypi",
                "slack",
                "telegram"
            ]
        );
    }

    #[test]
    fn preset_endpoints_match_the_reference() {
        let gh = preset("github");
        let rule = &gh.policy.network_policies["github"];
        let hosts: Vec<_> = rule.endpoints.iter().map(|e| e.host.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "github.com",
                "api.github.com",
                "codeload.github.com",
                "raw.githubusercontent.com",
                "objects.githubusercontent.com"
            ]
        );
        assert_eq!(rule.endpoints[0].rules[1].allow.path, "/**/git-upload-pack");
        let tg = &preset("telegram").policy.network_policies["telegram"].endpoints[0];
        assert_eq!(tg.rules[0].allow.path, "/bot*/**");
        let oc = preset("openclaw");
        assert_eq!(oc.policy.process.as_ref().unwrap().run_as_user, "node");
        assert_eq!(oc.policy.network_policies["openclaw_gateway"].endpoints[0].port, 18789);
    }

    #[test]
    fn merging_adds_rules_unions_paths_and_reports_conflicts() {
        let mut policy = Policy::default();
        let out = policy.merge_preset(&preset("pypi"), false).unwrap();
        assert_eq!(out.rules_added, vec!["pypi"]);
        let again = policy.merge_preset(&preset("pypi"), false).unwrap();
        assert!(!again.changed() && again.rules_unchanged == vec!["pypi"]);

        policy.network_policies.get_mut("pypi").unwrap().endpoints.truncate(1);
        let err = policy.merge_preset(&preset("pypi"), false).unwrap_err();
        assert_eq!(err.keys, vec!["pypi"]);
        let out = policy.merge_preset(&preset("pypi"), true).unwrap();
        assert_eq!(out.rules_replaced, vec!["pypi"]);

        let out = policy.merge_preset(&preset("openclaw"), false).unwrap();
        assert!(out.paths_added.contains(&"/tmp".to_owned()));
        assert!(policy.process.is_none(), "process is fixed on a live sandbox");
        let mut fresh = Policy::default();
        fresh.merge_preset_at_creation(&preset("openclaw"), false).unwrap();
        assert_eq!(fresh.process.unwrap().run_as_group, "node");
    }

    #[test]
    fn bad_preset_files_say_why() {
        assert!(matches!(Preset::from_yaml("name: Bad_Name\ndescription: x\npolicy: {}\n"), Err(PresetError::Name(_))));
        let wild = "name: wild\ndescription: x\npolicy:\n  network_policies:\n    w:\n      endpoints: [{host: '*.com', port: 443}]\n";
        let err = Preset::from_yaml(wild).unwrap_err();
        assert!(err.to_string().contains("top-level domain"), "{err}");
    }
}
