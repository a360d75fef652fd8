//! Labels and label selectors (`key=value[,key=value]`, all pairs must match).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::DomainError;

const MAX_KEY: usize = 63;
/// ShoreGuard's limit, kept so its clients' labels stay valid.
const MAX_VALUE: usize = 253;
/// Labels on one object.
pub const MAX_LABELS: usize = 20;

fn check_label(key: &str, value: &str) -> Result<(), DomainError> {
    let bad = |reason: &str| DomainError::InvalidLabel { key: crate::sanitize(key, 80), reason: reason.into() };
    let key_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    let value_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(bad("key must be 1 to 63 characters"));
    }
    if !key.chars().all(key_ok) {
        return Err(bad("key may contain only letters, digits, '-', '_', '.' and '/'"));
    }
    if value.len() > MAX_VALUE {
        return Err(bad("value must be at most 253 characters"));
    }
    if !value.chars().all(value_ok) {
        return Err(bad("value may contain only letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// A validated set of labels, ordered by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub fn parse<I, K, V>(pairs: I) -> Result<Self, DomainError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            let (k, v) = (k.into(), v.into());
            check_label(&k, &v)?;
            map.insert(k, v);
        }
        if map.len() > MAX_LABELS {
            return Err(DomainError::InvalidField {
                field: "labels",
                reason: format!("at most {MAX_LABELS} labels ({} given)", map.len()),
            });
        }
        Ok(Self(map))
    }

    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    #[must_use]
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    #[must_use]
    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        Self::parse(map).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod limits {
    use super::*;

    #[test]
    fn at_most_twenty_labels_with_values_up_to_253() {
        let twenty = (0..20).map(|i| (format!("k{i}"), "v".repeat(253)));
        assert_eq!(Labels::parse(twenty).unwrap().as_map().len(), 20);
        let err = Labels::parse((0..21).map(|i| (format!("k{i}"), "v"))).unwrap_err().to_string();
        assert_eq!(err, "invalid labels: at most 20 labels (21 given)");
        assert!(Labels::parse([("k", "v".repeat(254))]).unwrap_err().to_string().contains("253"));
    }
}

/// A conjunction of `key=value` requirements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(BTreeMap<String, String>);

impl LabelSelector {
    /// Parses `key=value[,key=value]`; an empty string selects everything.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let mut map = BTreeMap::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(DomainError::InvalidSelector {
                    selector: crate::sanitize(raw, 200),
                    reason: format!("{part:?} is not key=value"),
                });
            };
            let (k, v) = (k.trim(), v.trim());
            check_label(k, v).map_err(|e| DomainError::InvalidSelector {
                selector: crate::sanitize(raw, 200),
                reason: e.to_string(),
            })?;
            map.insert(k.to_owned(), v.to_owned());
        }
        Ok(Self(map))
    }

    /// The required `(key, value)` pairs, ordered by key.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    #[must_use]
    pub fn from_labels(labels: &Labels) -> Self {
        Self(labels.0.clone())
    }

    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_requires_every_pair() {
        let sel = LabelSelector::parse("team=ml, env=prod").unwrap();
        let mut labels = BTreeMap::new();
        labels.insert("team".to_owned(), "ml".to_owned());
        assert!(!sel.matches(&labels));
        labels.insert("env".to_owned(), "prod".to_owned());
        assert!(sel.matches(&labels));
        assert_eq!(sel.to_string(), "env=prod,team=ml");
        assert!(LabelSelector::parse("").unwrap().matches(&BTreeMap::new()));
    }

    #[test]
    fn selector_rejects_garbage() {
        assert!(LabelSelector::parse("team").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
    }

    #[test]
    fn labels_reject_bad_keys() {
        assert!(Labels::parse([("ok", "v")]).is_ok());
        assert!(Labels::parse([("", "v")]).is_err());
        assert!(Labels::parse([("k", "has space")]).is_err());
    }
}
