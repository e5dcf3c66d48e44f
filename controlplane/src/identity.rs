//! Control-channel identities: the controller's ed25519 signing key (signs bundles, is pinned by
//! gateways at enrollment, and is the key of the controller's TLS certificate), each gateway's
//! ed25519 signing key (authenticates its requests) and each gateway's X25519 sealing key
//! (bundles are sealed to it). All are born where they are used and written 0600.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::Digest as _;
use zeroize::Zeroizing;

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
        SigningIdentity(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
    }
    /// The 32-byte ed25519 public key.
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        self.0.sign(message).to_bytes()
    }
    /// [`fingerprint`] of the public key.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public())
    }
    /// PKCS#8 DER of the key (rcgen makes the controller's TLS certificate from it).
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        match self.0.to_pkcs8_der() {
            Ok(doc) => doc.as_bytes().to_vec(),
            // Encoding a 32-byte seed into a fixed ASN.1 structure has no failure case in
            // practice; an empty document makes rcgen report the problem rather than us panic.
            Err(_) => Vec::new(),
        }
    }
    /// A 32-byte secret derived from this key for one purpose (domain-separated hash); the
    /// controller derives preshared keys from `derive_secret("corridor psk v1")`.
    ///
    /// SHA-256 over `"corridor-derive-v1\0" || len(purpose) as u64 BE || purpose || seed`: the
    /// length prefix keeps two purposes from ever hashing the same bytes, and the secret says
    /// nothing about the seed or about secrets of other purposes.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        let seed = Zeroizing::new(self.0.to_bytes());
        let mut h = sha2::Sha256::new();
        h.update(b"corridor-derive-v1\0");
        h.update((purpose.len() as u64).to_be_bytes());
        h.update(purpose.as_bytes());
        h.update(seed.as_slice());
        h.finalize().into()
    }
    /// Reads a key file (base64 of the 32-byte seed, one line).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let seed = read_key(path, "an ed25519 signing key")?;
        Ok(SigningIdentity(ed25519_dalek::SigningKey::from_bytes(
            &seed,
        )))
    }
    /// Writes a key file, mode 0600 (parent directory created 0700 if missing).
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        write_key(path, &Zeroizing::new(self.0.to_bytes()))
    }
}

impl SealKey {
    /// A fresh key from the OS's randomness.
    pub fn generate() -> Self {
        SealKey(x25519_dalek::StaticSecret::random_from_rng(
            rand_core::OsRng,
        ))
    }
    /// The X25519 public key bundles are sealed to.
    pub fn public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.0).to_bytes()
    }
    /// Reads a key file (base64, one line).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let secret = read_key(path, "an X25519 sealing key")?;
        Ok(SealKey(x25519_dalek::StaticSecret::from(*secret)))
    }
    /// Writes a key file, mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        write_key(path, &Zeroizing::new(self.0.to_bytes()))
    }
}

/// Verifies an ed25519 signature (strict verification).
///
/// Strict: rejects small-order keys and non-canonical signatures, so one message has one valid
/// signature per key and a weak key cannot make a signature verify for anything.
pub fn verify(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public) else {
        return false;
    };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(message, &signature).is_ok()
}

/// A public key's fingerprint as people and tokens carry it: `"ed25519:" + base64url-nopad(SHA-256(key))`
/// (51 characters: the prefix and 43 of base64).
pub fn fingerprint(public: &[u8; 32]) -> String {
    let digest = sha2::Sha256::digest(public);
    format!(
        "ed25519:{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a one-line base64 32-byte key; warns when group or others may read the file.
fn read_key(path: &Path, what: &str) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    let meta = fs::metadata(path).map_err(io_error(path))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", mode & 0o777),
            "private key file is accessible by group or others; run chmod 600 on it"
        );
    }
    let text = Zeroizing::new(fs::read(path).map_err(io_error(path))?);
    let malformed = |detail: String| IdentityError::Malformed {
        path: path.to_path_buf(),
        message: format!(
            "not {what} ({detail}); it must hold one line of base64 of 32 bytes, as corridor wrote \
             it; restore the file from a backup, or delete it to make a new key (the new key must \
             then be pinned or enrolled again)"
        ),
    };
    let trimmed = text.trim_ascii();
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .map_err(|_| malformed("not valid base64".to_owned()))?,
    );
    let key = <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| malformed(format!("decodes to {} bytes, a key has 32", bytes.len())))?;
    Ok(Zeroizing::new(key))
}

/// Writes a key file atomically: a temporary file created 0600 in the same directory (never
/// readable by others, not even briefly), synced, then renamed over `path`.
fn write_key(path: &Path, key: &[u8; 32]) -> Result<(), IdentityError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error(dir))?;
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&tmp)(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    let mut text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key));
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let id = SigningIdentity::generate();
        let sig = id.sign(b"hello");
        assert!(verify(&id.public(), b"hello", &sig));
        assert!(!verify(&id.public(), b"hellO", &sig));
        let mut bad = sig;
        bad[3] ^= 1;
        assert!(!verify(&id.public(), b"hello", &bad));
        assert!(!verify(&id.public(), b"hello", &sig[..63]));
        let other = SigningIdentity::generate();
        assert!(!verify(&other.public(), b"hello", &sig));
        // A small-order key (the identity point) is refused even with a "signature" for it.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert!(!verify(&identity_point, b"hello", &[0u8; 64]));
    }

    #[test]
    fn fingerprint_format() {
        let id = SigningIdentity::generate();
        let f = id.fingerprint();
        assert_eq!(f.len(), 51);
        assert!(f.starts_with("ed25519:"));
        assert_eq!(f, fingerprint(&id.public()));
        assert_ne!(f, SigningIdentity::generate().fingerprint());
        // Known answer: SHA-256 of 32 zero bytes.
        assert_eq!(
            fingerprint(&[0u8; 32]),
            "ed25519:Zmh6rfhivXdsj8GLjp-OIAiXFIVu4jOzkCpZHQ1fKSU"
        );
    }

    #[test]
    fn derive_secret_is_domain_separated_and_stable() {
        let id = SigningIdentity::generate();
        let a = id.derive_secret("corridor psk v1");
        assert_eq!(a, id.derive_secret("corridor psk v1"));
        assert_ne!(a, id.derive_secret("corridor psk v2"));
        assert_ne!(
            a,
            SigningIdentity::generate().derive_secret("corridor psk v1")
        );
        assert_ne!(a, id.0.to_bytes());
    }

    #[test]
    fn debug_hides_private_keys() {
        let id = SigningIdentity::generate();
        let seed = base64::engine::general_purpose::STANDARD.encode(id.0.to_bytes());
        let text = format!("{id:?}");
        assert!(!text.contains(&seed));
        assert!(text.contains(&id.fingerprint()));
        let seal = SealKey::generate();
        let secret = base64::engine::general_purpose::STANDARD.encode(seal.0.to_bytes());
        assert!(!format!("{seal:?}").contains(&secret));
    }

    #[test]
    fn pkcs8_round_trip() {
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        let id = SigningIdentity::generate();
        let der = id.to_pkcs8_der();
        let back = ed25519_dalek::SigningKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(back.verifying_key().to_bytes(), id.public());
    }

    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let keydir = dir.path().join("new").join("keys");
        let path = keydir.join("controller.key");
        let id = SigningIdentity::generate();
        id.save(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&keydir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(!keydir.join("controller.key.tmp").exists());
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert_eq!(SigningIdentity::load(&path).unwrap().public(), id.public());
        // Saving again replaces the file.
        let id2 = SigningIdentity::generate();
        id2.save(&path).unwrap();
        assert_eq!(SigningIdentity::load(&path).unwrap().public(), id2.public());

        let seal_path = keydir.join("seal.key");
        let seal = SealKey::generate();
        seal.save(&seal_path).unwrap();
        assert_eq!(
            fs::metadata(&seal_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(SealKey::load(&seal_path).unwrap().public(), seal.public());
    }

    #[test]
    fn load_refuses_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, "AAAA\n").unwrap();
        match SigningIdentity::load(&path) {
            Err(IdentityError::Malformed { path: p, message }) => {
                assert_eq!(p, path);
                assert!(message.contains("3 bytes"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        fs::write(&path, "not base64!\n").unwrap();
        assert!(matches!(
            SealKey::load(&path),
            Err(IdentityError::Malformed { .. })
        ));
        let err = SigningIdentity::load(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, IdentityError::Io { .. }));
        assert!(err.to_string().contains("missing"));
    }
}
