//! Control-channel identities: the controller's ed25519 signing key (signs bundles, is pinned by
//! gateways at enrollment, and is the key of the controller's TLS certificate), each gateway's
//! ed25519 signing key (authenticates its requests) and each gateway's X25519 sealing key
//! (bundles are sealed to it). All are born where they are used and written 0600.
//!
//! CONTRACT (skeleton by the lead; implementer: helper B). Keep these names and signatures.

use std::path::{Path, PathBuf};

/// An ed25519 signing key: the controller's, or a gateway's control-channel key.
pub struct SigningIdentity(pub(crate) ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningIdentity({})", fingerprint(&self.public()))
    }
}

/// An X25519 key that bundles are sealed to (one per gateway).
pub struct SealKey(pub(crate) x25519_dalek::StaticSecret);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// A key file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The content is not a key of the expected kind.
    #[error("{}: {message}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

impl SigningIdentity {
    /// A fresh key from the OS's randomness.
    pub fn generate() -> Self {
        unimplemented!()
    }
    /// The 32-byte ed25519 public key.
    pub fn public(&self) -> [u8; 32] {
        unimplemented!()
    }
    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let _ = message;
        unimplemented!()
    }
    /// [`fingerprint`] of the public key.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public())
    }
    /// PKCS#8 DER of the key (rcgen makes the controller's TLS certificate from it).
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        unimplemented!()
    }
    /// A 32-byte secret derived from this key for one purpose (domain-separated hash); the
    /// controller derives preshared keys from `derive_secret("corridor psk v1")`.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        let _ = purpose;
        unimplemented!()
    }
    /// Reads a key file (base64 of the 32-byte seed, one line).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let _ = path;
        unimplemented!()
    }
    /// Writes a key file, mode 0600 (parent directory created 0700 if missing).
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let _ = path;
        unimplemented!()
    }
}

impl SealKey {
    /// A fresh key from the OS's randomness.
    pub fn generate() -> Self {
        unimplemented!()
    }
    /// The X25519 public key bundles are sealed to.
    pub fn public(&self) -> [u8; 32] {
        unimplemented!()
    }
    /// Reads a key file (base64, one line).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let _ = path;
        unimplemented!()
    }
    /// Writes a key file, mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let _ = path;
        unimplemented!()
    }
}

/// Verifies an ed25519 signature (strict verification).
pub fn verify(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let _ = (public, message, signature);
    unimplemented!()
}

/// A public key's fingerprint as people and tokens carry it: `"ed25519:" + base64url-nopad(SHA-256(key))`
/// (50 characters).
pub fn fingerprint(public: &[u8; 32]) -> String {
    let _ = public;
    unimplemented!()
}
