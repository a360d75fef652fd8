//! Sandbox templates: named defaults for a new sandbox (image, GPU,
//! providers, environment, presets), compiled in from `templates/*.yaml`.
//! A create request that names a template gets these defaults; fields it
//! sets itself win.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::DomainError;

/// Defaults for a new sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxTemplate {
    pub name: String,
    pub category: String,
    pub description: String,
    /// `None`: the gateway's default image.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub gpu: bool,
    #[serde(default)]
    pub providers: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Applied in this order after the sandbox is ready.
    #[serde(default)]
    pub presets: Vec<String>,
}

const BUILT_IN: &[&str] = &[
    include_str!("../templates/data-science.yaml"),
    include_str!("../templates/openclaw.yaml"),
    include_str!("../templates/secure-coding.yaml"),
    include_str!("../templates/web-dev.yaml"),
];

static TEMPLATES: LazyLock<Vec<SandboxTemplate>> = LazyLock::new(|| {
    BUILT_IN
        .iter()
        .map(|text| serde_saphyr::from_str(text).expect("built-in templates parse (a unit test checks)"))
        .collect()
});

/// Every built-in template, by name.
#[must_use]
pub fn built_in() -> &'static [SandboxTemplate] {
    &TEMPLATES
}

/// The template called `name`: a malformed name (a path, `..`, odd
/// characters) is an error, an unknown one is `None`.
pub fn find(name: &str) -> Result<Option<&'static SandboxTemplate>, DomainError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(DomainError::InvalidName {
            kind: "template name",
            value: crate::sanitize(name, 64),
            reason: "1-63 lower-case letters, digits, '-' or '_' (no paths)".into(),
        });
    }
    Ok(built_in().iter().find(|t| t.name == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses_and_names_only_built_in_presets() {
        let names: Vec<&str> = built_in().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["data-science", "openclaw", "secure-coding", "web-dev"]);
        let presets = crate::presets::built_in();
        for t in built_in() {
            for p in &t.presets {
                assert!(presets.iter().any(|b| &b.name == p), "template {} names unknown preset {p}", t.name);
            }
        }
        let ds = find("data-science").unwrap().unwrap();
        assert!(ds.gpu);
        assert_eq!(ds.providers, ["nvidia"]);
        assert_eq!(ds.environment["CUDA_VISIBLE_DEVICES"], "all");
        assert_eq!(ds.presets, ["pypi", "huggingface", "docker"]);
        assert_eq!(find("web-dev").unwrap().unwrap().image, None, "the gateway's default image");
    }

    #[test]
    fn paths_and_dot_dot_are_refused_and_unknown_names_are_none() {
        for bad in ["../etc/passwd", "a/b", "..", "a\\b", "", "Web-Dev"] {
            assert!(find(bad).is_err(), "{bad:?}");
        }
        assert_eq!(find("nope").unwrap(), None);
    }
}
