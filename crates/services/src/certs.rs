//! Checks on PEM material handed to us at registration, before we store it.

use chrono::{DateTime, Utc};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::{Result, ServiceError};

/// Certificates and keys larger than this are not PEM anyone meant to send.
pub(crate) const MAX_PEM_BYTES: usize = 64 * 1024;

fn invalid(field: &str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid { field: field.into(), message: message.into() }
}

/// What we learn from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CertFacts {
    pub not_after: DateTime<Utc>,
    pub is_ca: bool,
    pub sha256: String,
    pub subject: String,
}

pub(crate) fn parse_cert(field: &str, pem: &str) -> Result<CertFacts> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(invalid(field, "larger than 64 KiB"));
    }
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| invalid(field, "no PEM certificate found"))?
        .map_err(|e| invalid(field, format!("not valid PEM: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| invalid(field, format!("not a valid X.509 certificate: {e}")))?;
    let not_after = DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        .ok_or_else(|| invalid(field, "certificate has an impossible expiry date"))?;
    Ok(CertFacts {
        not_after,
        is_ca: cert.is_ca(),
        sha256: hex::encode(Sha256::digest(der.as_ref())),
        subject: cert.subject().to_string(),
    })
}

/// A CA bundle must parse and not be expired.
pub(crate) fn check_ca(pem: &str) -> Result<CertFacts> {
    let facts = parse_cert("ca_cert", pem)?;
    if facts.not_after < Utc::now() {
        return Err(invalid("ca_cert", format!("the CA certificate expired on {}", facts.not_after.to_rfc3339())));
    }
    Ok(facts)
}

/// A client certificate must parse, not be expired, and come with a key.
pub(crate) fn check_client(cert_pem: &str, key_pem: &str) -> Result<CertFacts> {
    let facts = parse_cert("client_cert", cert_pem)?;
    if facts.not_after < Utc::now() {
        return Err(invalid(
            "client_cert",
            format!("the client certificate expired on {}; issue a new one", facts.not_after.to_rfc3339()),
        ));
    }
    if key_pem.len() > MAX_PEM_BYTES {
        return Err(invalid("client_key", "larger than 64 KiB"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| invalid("client_key", "not a PEM private key (PKCS#8, PKCS#1 or SEC1)"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| invalid("client_key", "not a usable private key (RSA, ECDSA P-256/P-384 or Ed25519)"))?;
    let cert = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .and_then(std::result::Result::ok)
        .ok_or_else(|| invalid("client_cert", "no PEM certificate found"))?;
    rustls::sign::CertifiedKey::new(vec![cert], signing)
        .keys_match()
        .map_err(|_| invalid("client_key", "this key does not belong to client_cert (their public keys differ)"))?;
    Ok(facts)
}
