//! A throwaway PKI for the simulator and for tests: a CA, a server
//! certificate for loopback names, and client certificates.

use std::path::Path;

use anyhow::Context as _;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Certificate validity window.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew) until `days` from now.
    #[must_use]
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self { not_before: now - Duration::hours(1), not_after: now + Duration::days(days) }
    }

    /// Expired yesterday.
    #[must_use]
    pub fn expired() -> Self {
        let now = OffsetDateTime::now_utc();
        Self { not_before: now - Duration::days(30), not_after: now - Duration::days(1) }
    }
}

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority that can issue server and client certificates.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

impl CertAuthority {
    pub fn new(common_name: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let v = Validity::days(3650);
        params.not_before = v.not_before;
        params.not_after = v.not_after;
        let cert = params.self_signed(&key)?;
        Ok(Self { issuer: Issuer::new(params, key), cert_pem: cert.pem() })
    }

    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate valid for `sans` (DNS names or IP literals).
    pub fn issue_server(&self, sans: &[String], validity: Validity) -> Result<CertPair, rcgen::Error> {
        let mut params = CertificateParams::new(sans.to_vec())?;
        params.distinguished_name.push(DnType::CommonName, "openshell-sim");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, validity)
    }

    /// A client certificate whose CN is the caller's identity.
    pub fn issue_client(&self, common_name: &str, validity: Validity) -> Result<CertPair, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, validity)
    }

    fn issue(&self, mut params: CertificateParams, validity: Validity) -> Result<CertPair, rcgen::Error> {
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Everything a TLS-serving simulator and its client need.
#[derive(Clone, Debug)]
pub struct SimPki {
    pub ca_pem: String,
    pub server: CertPair,
    /// Present when we minted the PKI; absent when loaded without a client pair.
    pub client: Option<CertPair>,
}

/// Names every simulator certificate covers, plus the caller's extras.
#[must_use]
pub fn default_sans(extra: &[String]) -> Vec<String> {
    let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    for s in extra {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    sans
}

impl SimPki {
    /// Mints a new CA, server certificate (for `sans`) and client certificate.
    /// Each SAN must be a DNS name or an IP literal.
    pub fn mint(sans: &[String]) -> Result<Self, rcgen::Error> {
        for san in sans {
            let dns_ok = !san.is_empty()
                && san.len() <= 253
                && san
                    .split('.')
                    .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*'));
            if san.parse::<std::net::IpAddr>().is_err() && !dns_ok {
                return Err(rcgen::Error::InvalidNameType);
            }
        }
        let ca = CertAuthority::new("openshell-sim CA")?;
        let server = ca.issue_server(&default_sans(sans), Validity::days(365))?;
        let client = ca.issue_client("openshell-client", Validity::days(365))?;
        Ok(Self { ca_pem: ca.cert_pem().to_owned(), server, client: Some(client) })
    }

    /// Uses `ca.crt`, `server.crt`, `server.key` (and `client.*` if present)
    /// from `dir` when they exist; mints and writes all five into an empty
    /// directory. A partial set is refused rather than overwritten: those
    /// may be someone's own certificates.
    pub fn load_or_mint(dir: &Path, sans: &[String]) -> anyhow::Result<Self> {
        const NEEDED: [&str; 3] = ["ca.crt", "server.crt", "server.key"];
        let present: Vec<&str> = NEEDED.iter().copied().filter(|f| dir.join(f).exists()).collect();
        if present.is_empty() {
            for f in ["client.crt", "client.key"] {
                anyhow::ensure!(
                    !dir.join(f).exists(),
                    "{} has {f} but no CA or server certificate; remove it to mint a new set",
                    dir.display()
                );
            }
            let pki = Self::mint(sans)?;
            pki.write(dir)?;
            return Ok(pki);
        }
        let missing: Vec<&str> = NEEDED.iter().copied().filter(|f| !present.contains(f)).collect();
        anyhow::ensure!(
            missing.is_empty(),
            "{} has {} but not {}: add the missing files, or empty the directory to mint a new set",
            dir.display(),
            present.join(", "),
            missing.join(", ")
        );
        let read = |name: &str| -> anyhow::Result<String> {
            let text = std::fs::read_to_string(dir.join(name)).with_context(|| format!("reading {name}"))?;
            check_pem(&text, name, dir)?;
            Ok(text)
        };
        let client = match (dir.join("client.crt").exists(), dir.join("client.key").exists()) {
            (true, true) => Some(CertPair { cert_pem: read("client.crt")?, key_pem: read("client.key")? }),
            (false, false) => None,
            _ => anyhow::bail!("{} has only one of client.crt and client.key", dir.display()),
        };
        Ok(Self {
            ca_pem: read("ca.crt")?,
            server: CertPair { cert_pem: read("server.crt")?, key_pem: read("server.key")? },
            client,
        })
    }

    /// Writes the PEM files; private keys get mode 0600.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        write_file(&dir.join("ca.crt"), &self.ca_pem, false)?;
        write_file(&dir.join("server.crt"), &self.server.cert_pem, false)?;
        write_file(&dir.join("server.key"), &self.server.key_pem, true)?;
        if let Some(client) = &self.client {
            write_file(&dir.join("client.crt"), &client.cert_pem, false)?;
            write_file(&dir.join("client.key"), &client.key_pem, true)?;
        }
        Ok(())
    }
}

/// A certificate file must hold a certificate, a key file a private key.
fn check_pem(text: &str, name: &str, dir: &Path) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    // Our own fixed file names: "server.key", "client.key", "*.crt".
    let is_key = Path::new(name).extension().is_some_and(|e| e == "key");
    let ok = if is_key {
        PrivateKeyDer::from_pem_slice(text.as_bytes()).is_ok()
    } else {
        CertificateDer::pem_slice_iter(text.as_bytes()).next().is_some_and(|c| c.is_ok())
    };
    anyhow::ensure!(
        ok,
        "{}/{name} is not a valid PEM {}; fix it, or empty the directory to mint a new set",
        dir.display(),
        if is_key { "private key" } else { "certificate" }
    );
    Ok(())
}

fn write_file(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())
}
