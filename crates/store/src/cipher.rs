//! Encryption of secret material at rest (XChaCha20-Poly1305, random nonces).

use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};

const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    #[error("the server key must be 32 bytes, base64-encoded ({0})")]
    BadKey(String),
    #[error("cannot read or create the key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("stored secret cannot be decrypted with this server key (was BREAKWATER_SECRET_KEY changed?)")]
    Decrypt,
}

/// Encrypts and decrypts secrets with the server key.
#[derive(Clone)]
pub struct SecretCipher {
    aead: XChaCha20Poly1305,
    key: [u8; 32],
}

impl std::fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretCipher(REDACTED)")
    }
}

impl SecretCipher {
    /// From a base64-encoded 32-byte key (what `BREAKWATER_SECRET_KEY` holds).
    pub fn from_base64(key: &str) -> Result<Self, CipherError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|e| CipherError::BadKey(e.to_string()))?;
        let key: [u8; 32] =
            bytes.try_into().map_err(|b: Vec<u8>| CipherError::BadKey(format!("got {} bytes", b.len())))?;
        Ok(Self { aead: XChaCha20Poly1305::new(&key.into()), key })
    }

    /// A key for another purpose (`label`), derived so that it reveals
    /// nothing about the encryption key: HMAC-SHA256(server key, label).
    #[must_use]
    pub fn derive(&self, label: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A fresh random key, base64-encoded.
    #[must_use]
    pub fn generate_key() -> String {
        base64::engine::general_purpose::STANDARD.encode(XChaCha20Poly1305::generate_key(&mut OsRng))
    }

    /// Reads the key file, creating it (mode 0600) with a random key on first start.
    pub fn from_key_file(path: &Path) -> Result<Self, CipherError> {
        let err = |e: std::io::Error| CipherError::KeyFile { path: path.display().to_string(), reason: e.to_string() };
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(path).map_err(err)?;
            std::io::Write::write_all(&mut f, Self::generate_key().as_bytes()).map_err(err)?;
        }
        Self::from_base64(&std::fs::read_to_string(path).map_err(err)?)
    }

    pub fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, CipherError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        out.extend(self.aead.encrypt(&nonce, plain).map_err(|_| CipherError::Decrypt)?);
        Ok(out)
    }

    pub fn decrypt(&self, sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
        if sealed.len() < NONCE_LEN {
            return Err(CipherError::Decrypt);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.aead.decrypt(XNonce::from_slice(nonce), body).map_err(|_| CipherError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let c = SecretCipher::from_base64(&SecretCipher::generate_key()).unwrap();
        let sealed = c.encrypt(b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"BEGIN"));
        assert_eq!(c.decrypt(&sealed).unwrap(), b"-----BEGIN PRIVATE KEY-----");
        let other = SecretCipher::from_base64(&SecretCipher::generate_key()).unwrap();
        assert!(matches!(other.decrypt(&sealed), Err(CipherError::Decrypt)));
        assert!(SecretCipher::from_base64("c2hvcnQ=").is_err());
    }

    #[test]
    fn key_file_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let a = SecretCipher::from_key_file(&path).unwrap();
        let b = SecretCipher::from_key_file(&path).unwrap();
        assert_eq!(b.decrypt(&a.encrypt(b"x").unwrap()).unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
