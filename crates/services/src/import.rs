//! Import of gateways the OpenShell CLI already knows about, from its config
//! directory: `<dir>/gateways/<name>/metadata.json` plus
//! `<dir>/gateways/<name>/mtls/{ca.crt,tls.crt,tls.key}`.
//!
//! One bad entry never aborts the run: it is reported by name. Re-running is
//! harmless (unchanged gateways are left alone), and a gateway whose
//! certificates differ from what is registered is refused, never silently
//! overwritten: certificates decide whom we trust.

use std::path::{Path, PathBuf};

use breakwater_domain::Secret;
use breakwater_domain::registry::{GatewayName, GatewayRecord};
use futures::StreamExt;
use serde::Serialize;

use crate::certs::{MAX_PEM_BYTES, parse_cert};
use crate::{Actor, GatewayService, RegisterGateway, Result, ServiceError};

/// `metadata.json` is a handful of fields; anything this big is not one.
const MAX_METADATA_BYTES: u64 = 64 * 1024;
/// More entries than this is not a CLI config directory.
const MAX_ENTRIES: usize = 10_000;

/// The OpenShell CLI's config directory: `$XDG_CONFIG_HOME/openshell`, else
/// `~/.config/openshell`.
#[must_use]
pub fn default_openshell_config_dir() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join("openshell"));
    }
    std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config").join("openshell"))
}

/// One entry that was not imported, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImportProblem {
    pub name: String,
    pub reason: String,
}

/// What an import run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub directory: String,
    /// Newly registered.
    pub imported: Vec<String>,
    /// Already registered with the same endpoint and certificates.
    pub unchanged: Vec<String>,
    /// Registered already, but the files differ: left alone, with the difference.
    pub conflicts: Vec<ImportProblem>,
    /// Entries that could not be read or are invalid.
    pub skipped: Vec<ImportProblem>,
}

/// A gateway as found on disk, ready to register.
struct Candidate {
    registration: RegisterGateway,
    ca_sha256: Option<String>,
    client_sha256: Option<String>,
}

fn problem(name: &str, reason: impl Into<String>) -> ImportProblem {
    ImportProblem { name: name.to_owned(), reason: reason.into() }
}

/// Reads a file only if it is small enough; `Ok(None)` when absent.
fn read_capped(path: &Path, cap: u64) -> Result<Option<String>, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", file_label(path))),
    };
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", file_label(path)));
    }
    if meta.len() > cap {
        return Err(format!("{} is larger than {} KiB", file_label(path), cap / 1024));
    }
    std::fs::read_to_string(path).map(Some).map_err(|e| format!("cannot read {}: {e}", file_label(path)))
}

/// `mtls/ca.crt` rather than a whole path: the report goes to API clients.
fn file_label(path: &Path) -> String {
    let mut parts: Vec<_> = path.iter().rev().take(2).map(|p| p.to_string_lossy().into_owned()).collect();
    parts.reverse();
    parts.join("/")
}

/// `https://host:port[/...]` → (scheme, `host:port`).
fn split_endpoint(raw: &str) -> Result<(String, String), String> {
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| format!("gateway_endpoint {raw:?} is not a URL (expected https://host:port)"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        other => return Err(format!("gateway_endpoint scheme {other:?} is not http or https")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("gateway_endpoint {raw:?} has no host"));
    }
    let has_port = if authority.starts_with('[') { authority.contains("]:") } else { authority.contains(':') };
    let endpoint = if has_port { authority.to_owned() } else { format!("{authority}:{default_port}") };
    Ok((scheme, endpoint))
}

fn read_candidate(entry: &Path, name: &str) -> Result<Candidate, String> {
    let raw =
        read_capped(&entry.join("metadata.json"), MAX_METADATA_BYTES)?.ok_or_else(|| "no metadata.json".to_owned())?;
    let meta: serde_json::Value =
        serde_json::from_str(&raw).map_err(|e| format!("metadata.json is not valid JSON ({e})"))?;
    let meta = meta.as_object().ok_or_else(|| "metadata.json is not a JSON object".to_owned())?;
    let endpoint_url = meta
        .get("gateway_endpoint")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| "metadata.json has no gateway_endpoint".to_owned())?;
    let (scheme, endpoint) = split_endpoint(endpoint_url)?;
    // The form the registry stores, so that re-imports compare equal.
    let endpoint = breakwater_gateway::GatewayAddress::parse(&endpoint)
        .map_err(|e| format!("gateway_endpoint {endpoint_url:?}: {e}"))?
        .authority();

    let mtls = entry.join("mtls");
    let cap = MAX_PEM_BYTES as u64;
    let ca = read_capped(&mtls.join("ca.crt"), cap)?;
    let cert = read_capped(&mtls.join("tls.crt"), cap)?;
    let key = read_capped(&mtls.join("tls.key"), cap)?;
    let auth_mode = match (scheme.as_str(), &cert, &key) {
        ("http", ..) => "none",
        (_, Some(_), Some(_)) => "mtls",
        (_, None, None) => "tls",
        _ => return Err("mtls/ holds only one of tls.crt and tls.key".into()),
    };
    if let Some(declared) = meta.get("auth_mode").and_then(serde_json::Value::as_str)
        && !matches!(declared, "mtls" | "tls" | "none" | "plaintext")
    {
        return Err(format!("auth_mode {declared:?} is not supported by Breakwater (mtls, tls or plaintext)"));
    }
    let fingerprint = |field: &str, pem: &Option<String>| {
        pem.as_deref().map(|p| parse_cert(field, p).map(|f| f.sha256).map_err(|e| e.to_string())).transpose()
    };
    let ca_sha256 = fingerprint("ca_cert", &ca)?;
    let client_sha256 = fingerprint("client_cert", &cert)?;

    let mut metadata = std::collections::BTreeMap::new();
    for key in ["gpu", "is_remote", "remote_host"] {
        if let Some(v) = meta.get(key).filter(|v| !v.is_null()) {
            metadata.insert(key.to_owned(), v.clone());
        }
    }
    metadata.insert("source".into(), serde_json::Value::String("openshell-cli".into()));
    Ok(Candidate {
        registration: RegisterGateway {
            name: name.to_owned(),
            endpoint,
            scheme: Some(scheme),
            auth_mode: Some(auth_mode.to_owned()),
            ca_cert: ca,
            client_cert: cert,
            client_key: key.map(Secret::new),
            metadata,
            origin: Some("import".into()),
            ..RegisterGateway::default()
        },
        ca_sha256,
        client_sha256,
    })
}

fn sha_of(pem: Option<&str>) -> Option<String> {
    pem.and_then(|p| parse_cert("cert", p).ok()).map(|f| f.sha256)
}

fn short(sha: Option<&String>) -> String {
    sha.map_or_else(|| "none".to_owned(), |s| s.chars().take(16).collect())
}

/// Why an on-disk gateway differs from the registered one, if it does.
fn difference(existing: &GatewayRecord, found: &Candidate) -> Option<String> {
    let mut diffs = Vec::new();
    if existing.endpoint != found.registration.endpoint {
        diffs.push(format!("endpoint {} on disk, {} registered", found.registration.endpoint, existing.endpoint));
    }
    let reg_ca = sha_of(existing.ca_cert.as_deref());
    if reg_ca != found.ca_sha256 {
        diffs.push(format!(
            "CA certificate sha256 {} on disk, {} registered",
            short(found.ca_sha256.as_ref()),
            short(reg_ca.as_ref())
        ));
    }
    let reg_client = sha_of(existing.client_cert.as_deref());
    if reg_client != found.client_sha256 {
        diffs.push(format!(
            "client certificate sha256 {} on disk, {} registered",
            short(found.client_sha256.as_ref()),
            short(reg_client.as_ref())
        ));
    }
    (!diffs.is_empty()).then(|| {
        format!(
            "already registered with different settings ({}); not replaced: unregister it and import again to trust the new ones",
            diffs.join("; ")
        )
    })
}

impl GatewayService {
    /// Imports every gateway under `<config_dir>/gateways/`.
    pub async fn import_openshell_config(&self, actor: &Actor, config_dir: &Path) -> Result<ImportReport> {
        let gateways_dir = config_dir.join("gateways");
        let mut report = ImportReport { directory: gateways_dir.display().to_string(), ..ImportReport::default() };
        let read = match std::fs::read_dir(&gateways_dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
            Err(e) => {
                return Err(ServiceError::Invalid {
                    field: "directory".into(),
                    message: format!("cannot read {}: {e}", gateways_dir.display()),
                });
            }
        };
        let mut entries: Vec<PathBuf> = read
            .filter_map(std::result::Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .take(MAX_ENTRIES)
            .collect();
        entries.sort();

        let mut to_register = Vec::new();
        for entry in entries {
            let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let Ok(parsed) = GatewayName::parse(&name) else {
                report.skipped.push(problem(&name, "not a valid gateway name"));
                continue;
            };
            let candidate = match read_candidate(&entry, &name) {
                Ok(c) => c,
                Err(reason) => {
                    report.skipped.push(problem(&name, reason));
                    continue;
                }
            };
            match self.store().get_gateway(&parsed).await? {
                Some(existing) => match difference(&existing, &candidate) {
                    None => report.unchanged.push(name),
                    Some(reason) => report.conflicts.push(problem(&name, reason)),
                },
                None => to_register.push(candidate),
            }
        }

        // Registration includes a first connection test; do a few at once so
        // dead gateways in the directory do not serialise their timeouts.
        let outcomes: Vec<_> = futures::stream::iter(to_register)
            .map(|c| async move {
                let name = c.registration.name.clone();
                (name, self.register(actor, c.registration).await)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for (name, outcome) in outcomes {
            match outcome {
                Ok(_) => report.imported.push(name),
                // Another importer won the race: same as found registered.
                Err(ServiceError::Conflict { .. }) => report.unchanged.push(name),
                Err(e @ ServiceError::Store(_)) => return Err(e),
                Err(e) => report.skipped.push(problem(&name, e.to_string())),
            }
        }
        report.imported.sort();
        report.unchanged.sort();
        report.skipped.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::split_endpoint;

    #[test]
    fn endpoints_from_urls() {
        assert_eq!(split_endpoint("https://127.0.0.1:8080").unwrap(), ("https".into(), "127.0.0.1:8080".into()));
        assert_eq!(split_endpoint("https://gw.example.com/").unwrap(), ("https".into(), "gw.example.com:443".into()));
        assert_eq!(split_endpoint("http://[::1]:18080").unwrap(), ("http".into(), "[::1]:18080".into()));
        assert_eq!(split_endpoint("https://[::1]").unwrap(), ("https".into(), "[::1]:443".into()));
        assert!(split_endpoint("gw:8080").is_err());
        assert!(split_endpoint("ftp://gw:21").is_err());
        assert!(split_endpoint("https://").is_err());
    }
}
