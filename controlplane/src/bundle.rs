//! Bundles: what the controller tells one gateway to run. Signed by the controller (ed25519),
//! sealed to the gateway (X25519 + ChaCha20-Poly1305), versioned; the gateway verifies the
//! signature against the pinned controller key, refuses any version not newer than the one it
//! applied, then opens it. The same bytes are kept on disk as the last good bundle.
//!
//! Wire format (all integers big-endian):
//!
//! ```text
//! header     = "CORRIDOR-BUNDLE-1"        17 bytes of magic (the 1 is the format version)
//!              version                   u64
//!              issued_at                 u64
//!              gateway name length       u8, 1..=255, then the name (UTF-8)
//!              signer                    32: the controller's ed25519 public key
//!              ephemeral                 32: a fresh X25519 public key, one per bundle
//!              nonce                     12
//! ciphertext = ChaCha20-Poly1305(key, nonce, aad = header, JSON of BundleContent)
//!              key = SHA-256("corridor bundle v1" || DH(ephemeral, seal) || ephemeral || seal)
//! signature  = ed25519 over header || ciphertext   64, the last bytes
//! ```
//!
//! The header carries in clear what the gateway must check before spending a Diffie-Hellman on
//! the bundle (who signed it, which version, for whom); the AEAD binds it too, and the content
//! repeats gateway, version and issued_at, which must agree with it.

use serde::{Deserialize, Serialize};

use sha2::Digest as _;
use zeroize::Zeroizing;

use crate::compile::PublicPlan;
use crate::identity::{SealKey, SigningIdentity, fingerprint, verify};

/// The content of a bundle (serialized as JSON inside the sealed box).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleContent {
    /// The gateway it is for.
    pub gateway: String,
    /// Its version: the controller's store revision it was compiled from (strictly increasing).
    pub version: u64,
    /// Unix seconds when it was made.
    pub issued_at: u64,
    /// The key-rotation generation the controller asks of this gateway: when greater than the
    /// last one the gateway carried out, it makes new tenant keys and registers them.
    pub rotate: u64,
    /// The tenants, their peers (public keys, preshared keys), routes, policy and interfaces.
    pub plan: PublicPlan,
}

/// Why a bundle was refused. Each has a counter on the gateway ([`BundleError::reason`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Truncated, wrong magic, bad lengths, undecodable content.
    #[error("malformed bundle: {0}")]
    Malformed(String),
    /// Signed by a key other than the pinned controller key.
    #[error("bundle signed by {found}, not by the pinned controller key {expected}")]
    WrongSigner {
        /// Fingerprint of the key named in the bundle.
        found: String,
        /// Fingerprint of the pinned key.
        expected: String,
    },
    /// The signature does not verify: the bundle was altered.
    #[error("bundle signature does not verify: it was altered in transit or on disk")]
    BadSignature,
    /// Not newer than the one applied (a replay or a rollback).
    #[error(
        "bundle version {version} is not newer than the applied version {applied}: replay refused"
    )]
    NotNewer {
        /// The bundle's version.
        version: u64,
        /// The applied version.
        applied: u64,
    },
    /// It could not be opened with this gateway's sealing key.
    #[error("bundle is not sealed to this gateway's key")]
    Unsealable,
    /// Sealed and signed, but for another gateway (or its header and content disagree).
    #[error("bundle is for gateway \"{0}\", not this one")]
    WrongGateway(String),
}

impl BundleError {
    /// The counter label: `malformed`, `wrong_signer`, `bad_signature`, `replay`,
    /// `unsealable`, `wrong_gateway`.
    pub fn reason(&self) -> &'static str {
        match self {
            BundleError::Malformed(_) => "malformed",
            BundleError::WrongSigner { .. } => "wrong_signer",
            BundleError::BadSignature => "bad_signature",
            BundleError::NotNewer { .. } => "replay",
            BundleError::Unsealable => "unsealable",
            BundleError::WrongGateway(_) => "wrong_gateway",
        }
    }
}

/// The magic at the start of every bundle.
const MAGIC: &[u8; 17] = b"CORRIDOR-BUNDLE-1";
/// Label of the sealing key derivation.
const KDF_LABEL: &[u8] = b"corridor bundle v1";
/// Label of the preshared key derivation.
const PSK_LABEL: &[u8] = b"corridor psk v1\0";
const SIGNATURE_LEN: usize = 64;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The clear-text header of a bundle.
struct Header<'a> {
    version: u64,
    issued_at: u64,
    gateway: &'a str,
    signer: [u8; 32],
    ephemeral: [u8; 32],
    nonce: [u8; NONCE_LEN],
}

impl Header<'_> {
    fn encode(&self) -> Result<Vec<u8>, BundleError> {
        let name_len = u8::try_from(self.gateway.len())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                BundleError::Malformed(format!(
                    "gateway name of {} bytes (1 to 255 fit in a bundle)",
                    self.gateway.len()
                ))
            })?;
        let mut out = Vec::with_capacity(MAGIC.len() + 17 + self.gateway.len() + 76);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out.push(name_len);
        out.extend_from_slice(self.gateway.as_bytes());
        out.extend_from_slice(&self.signer);
        out.extend_from_slice(&self.ephemeral);
        out.extend_from_slice(&self.nonce);
        Ok(out)
    }
}

/// Reads bytes off the front of a slice; every read checks the length (no input panics).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], BundleError> {
        if self.0.len() < n {
            return Err(BundleError::Malformed(format!("truncated in the {what}")));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], BundleError> {
        let bytes = self.take(N, what)?;
        <[u8; N]>::try_from(bytes)
            .map_err(|_| BundleError::Malformed(format!("truncated in the {what}")))
    }
}

/// A bundle split into its parts (lengths checked, nothing verified yet).
struct Parsed<'a> {
    header: Header<'a>,
    /// The header's bytes: signed, and the AEAD's associated data.
    header_bytes: &'a [u8],
    ciphertext: &'a [u8],
    /// `header_bytes || ciphertext`, what the signature covers.
    signed: &'a [u8],
    signature: &'a [u8],
}

fn parse(bytes: &[u8]) -> Result<Parsed<'_>, BundleError> {
    let mut r = Reader(bytes);
    if r.take(MAGIC.len(), "magic")? != MAGIC {
        return Err(BundleError::Malformed(
            "not a corridor bundle (wrong magic)".to_owned(),
        ));
    }
    let version = u64::from_be_bytes(r.array("version")?);
    let issued_at = u64::from_be_bytes(r.array("issue time")?);
    let [name_len] = r.array::<1>("gateway name length")?;
    if name_len == 0 {
        return Err(BundleError::Malformed("empty gateway name".to_owned()));
    }
    let gateway = std::str::from_utf8(r.take(usize::from(name_len), "gateway name")?)
        .map_err(|_| BundleError::Malformed("gateway name is not UTF-8".to_owned()))?;
    let signer = r.array("signer key")?;
    let ephemeral = r.array("ephemeral key")?;
    let nonce = r.array("nonce")?;
    let header_len = bytes.len() - r.0.len();
    let body_len =
        r.0.len()
            .checked_sub(SIGNATURE_LEN)
            .filter(|&n| n >= TAG_LEN)
            .ok_or_else(|| BundleError::Malformed("truncated in the sealed content".to_owned()))?;
    let (signed, signature) = bytes.split_at(header_len + body_len);
    let (header_bytes, ciphertext) = signed.split_at(header_len);
    Ok(Parsed {
        header: Header {
            version,
            issued_at,
            gateway,
            signer,
            ephemeral,
            nonce,
        },
        header_bytes,
        ciphertext,
        signed,
        signature,
    })
}

/// The AEAD key of a bundle: both public keys go into the hash so the key is bound to this
/// exchange. `None` when the exchange is not contributory (a low-order public key), which
/// would make the key guessable.
fn sealing_key(
    secret: &x25519_dalek::SharedSecret,
    ephemeral: &[u8; 32],
    seal_public: &[u8; 32],
) -> Option<Zeroizing<[u8; 32]>> {
    if !secret.was_contributory() {
        return None;
    }
    let mut h = sha2::Sha256::new();
    h.update(KDF_LABEL);
    h.update(secret.as_bytes());
    h.update(ephemeral);
    h.update(seal_public);
    Some(Zeroizing::new(h.finalize().into()))
}

/// Signs and seals `content` for the gateway whose sealing public key is `seal_public`.
pub fn seal(
    content: &BundleContent,
    controller: &SigningIdentity,
    seal_public: &[u8; 32],
) -> Result<Vec<u8>, BundleError> {
    let json = Zeroizing::new(
        serde_json::to_vec(content)
            .map_err(|e| BundleError::Malformed(format!("cannot encode the content: {e}")))?,
    );
    seal_bytes(
        &content.gateway,
        content.version,
        content.issued_at,
        &json,
        controller,
        seal_public,
    )
}

/// [`seal`] of already encoded content, with the header's fields given separately.
fn seal_bytes(
    gateway: &str,
    version: u64,
    issued_at: u64,
    plaintext: &[u8],
    controller: &SigningIdentity,
    seal_public: &[u8; 32],
) -> Result<Vec<u8>, BundleError> {
    use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
    use rand_core::RngCore as _;

    let ephemeral_secret = x25519_dalek::EphemeralSecret::random_from_rng(rand_core::OsRng);
    let ephemeral = x25519_dalek::PublicKey::from(&ephemeral_secret).to_bytes();
    let shared = ephemeral_secret.diffie_hellman(&x25519_dalek::PublicKey::from(*seal_public));
    let key = sealing_key(&shared, &ephemeral, seal_public).ok_or_else(|| {
        BundleError::Malformed("the gateway's sealing key is not a usable X25519 key".to_owned())
    })?;
    let mut nonce = [0u8; NONCE_LEN];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let mut out = Header {
        version,
        issued_at,
        gateway,
        signer: controller.public(),
        ephemeral,
        nonce,
    }
    .encode()?;
    let cipher = chacha20poly1305::ChaCha20Poly1305::new(key.as_ref().into());
    let ciphertext = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plaintext,
                aad: &out,
            },
        )
        .map_err(|_| BundleError::Malformed("content too large to seal".to_owned()))?;
    out.extend_from_slice(&ciphertext);
    let signature = controller.sign(&out);
    out.extend_from_slice(&signature);
    Ok(out)
}

/// Verifies (signer = `pinned`, signature), checks the version against `applied` (`None`: nothing
/// applied yet), opens with `seal_key`, and checks that it is for `gateway`. In that order, so that
/// a forged or replayed bundle costs no Diffie-Hellman.
pub fn open(
    bytes: &[u8],
    pinned: &[u8; 32],
    seal_key: &SealKey,
    gateway: &str,
    applied: Option<u64>,
) -> Result<BundleContent, BundleError> {
    use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};

    let b = parse(bytes)?;
    let h = &b.header;
    if &h.signer != pinned {
        return Err(BundleError::WrongSigner {
            found: fingerprint(&h.signer),
            expected: fingerprint(pinned),
        });
    }
    if !verify(pinned, b.signed, b.signature) {
        return Err(BundleError::BadSignature);
    }
    if let Some(applied) = applied.filter(|&a| h.version <= a) {
        return Err(BundleError::NotNewer {
            version: h.version,
            applied,
        });
    }
    if h.gateway != gateway {
        return Err(BundleError::WrongGateway(h.gateway.to_owned()));
    }
    let shared = seal_key
        .0
        .diffie_hellman(&x25519_dalek::PublicKey::from(h.ephemeral));
    let key =
        sealing_key(&shared, &h.ephemeral, &seal_key.public()).ok_or(BundleError::Unsealable)?;
    let cipher = chacha20poly1305::ChaCha20Poly1305::new(key.as_ref().into());
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                &h.nonce.into(),
                Payload {
                    msg: b.ciphertext,
                    aad: b.header_bytes,
                },
            )
            .map_err(|_| BundleError::Unsealable)?,
    );
    let content: BundleContent = serde_json::from_slice(&plaintext)
        .map_err(|e| BundleError::Malformed(format!("undecodable content: {e}")))?;
    if content.gateway != h.gateway
        || content.version != h.version
        || content.issued_at != h.issued_at
    {
        return Err(BundleError::Malformed(
            "the content disagrees with the header (gateway, version or issue time)".to_owned(),
        ));
    }
    Ok(content)
}

/// The preshared key of the pair (gateway `a` at key generation `gen_a`, gateway `b` at `gen_b`)
/// in `tenant`: derived from the controller's PSK secret, the same whichever side asks (order
/// independent), and new whenever either side's keys rotate. Replicas sharing the controller
/// key agree on it without storing it.
///
/// Keyed BLAKE2s-256 (key: `psk_secret`) over `"corridor psk v1\0"`, then the tenant and the
/// two (name, generation) pairs sorted, each string with a u32 length prefix and each
/// generation a u64, so that no two inputs encode alike.
pub fn derive_psk(
    psk_secret: &[u8; 32],
    tenant: &str,
    a: (&str, u64),
    b: (&str, u64),
) -> dataplane::SecretKey {
    use blake2::digest::Mac as _;

    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let mut mac = <blake2::Blake2sMac256 as blake2::digest::KeyInit>::new(psk_secret.into());
    let put_str = |mac: &mut blake2::Blake2sMac256, s: &str| {
        // Names are short; a length beyond u32 cannot occur, and saturating keeps it distinct.
        mac.update(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
        mac.update(s.as_bytes());
    };
    mac.update(PSK_LABEL);
    put_str(&mut mac, tenant);
    for (name, generation) in [first, second] {
        put_str(&mut mac, name);
        mac.update(&generation.to_be_bytes());
    }
    dataplane::SecretKey::from_bytes(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use dataplane::config::{EndpointConfig, Location, PeerConfig};

    use super::*;
    use crate::compile::PublicTenant;

    fn content(gateway: &str, version: u64) -> BundleContent {
        BundleContent {
            gateway: gateway.to_owned(),
            version,
            issued_at: 1_700_000_000,
            rotate: 2,
            plan: PublicPlan {
                tenants: vec![PublicTenant {
                    name: "acme".to_owned(),
                    own_key: Some([7; 32]),
                    endpoints: vec![EndpointConfig {
                        name: "cloud".to_owned(),
                        location: Location::Peer(0),
                        prefixes: vec!["10.20.100.0/24".parse().unwrap()],
                    }],
                    peers: vec![PeerConfig {
                        name: "dc-1".to_owned(),
                        public_key: [8; 32],
                        preshared_key: Some(dataplane::SecretKey::from_bytes([9; 32])),
                        endpoint: Some("192.168.50.2:51820".parse().unwrap()),
                        persistent_keepalive: Some(25),
                        roaming: false,
                    }],
                    rules: Vec::new(),
                    conntrack_limit: 100,
                }],
                interfaces: Vec::new(),
            },
        }
    }

    struct World {
        controller: SigningIdentity,
        seal: SealKey,
    }

    fn world() -> World {
        World {
            controller: SigningIdentity::generate(),
            seal: SealKey::generate(),
        }
    }

    #[test]
    fn round_trip() {
        let w = world();
        let c = content("edge-1", 5);
        let bytes = seal(&c, &w.controller, &w.seal.public()).unwrap();
        let pinned = w.controller.public();
        assert_eq!(open(&bytes, &pinned, &w.seal, "edge-1", None).unwrap(), c);
        assert_eq!(
            open(&bytes, &pinned, &w.seal, "edge-1", Some(4)).unwrap(),
            c
        );
        // Two seals of the same content differ (fresh ephemeral key and nonce).
        assert_ne!(bytes, seal(&c, &w.controller, &w.seal.public()).unwrap());
        // The private preshared key is not readable in the sealed bytes.
        let psk_text = dataplane::SecretKey::from_bytes([9; 32]).to_base64();
        assert!(
            !bytes
                .windows(psk_text.len())
                .any(|win| win == psk_text.as_bytes())
        );
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let w = world();
        let bytes = seal(&content("edge-1", 5), &w.controller, &w.seal.public()).unwrap();
        let pinned = w.controller.public();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let err = open(&b, &pinned, &w.seal, "edge-1", None).unwrap_err();
                let expected: &[&str] = if i < MAGIC.len() {
                    &["malformed"]
                } else if i == MAGIC.len() + 16 {
                    // The name length: the parse fails, or the fields after it shift (the
                    // signer read is another key, or the signature fails).
                    &["malformed", "wrong_signer", "bad_signature"]
                } else if i < MAGIC.len() + 17 + 6 {
                    // The name: no longer UTF-8, or not what was signed.
                    &["malformed", "bad_signature"]
                } else if (MAGIC.len() + 17 + 6..MAGIC.len() + 17 + 6 + 32).contains(&i) {
                    &["wrong_signer"]
                } else {
                    &["bad_signature"]
                };
                assert!(
                    expected.contains(&err.reason()),
                    "byte {i} bit {bit}: {err}"
                );
            }
        }
    }

    #[test]
    fn truncated_and_random_input_is_malformed_or_refused() {
        let w = world();
        let bytes = seal(&content("edge-1", 5), &w.controller, &w.seal.public()).unwrap();
        let pinned = w.controller.public();
        for n in 0..bytes.len() {
            assert!(open(&bytes[..n], &pinned, &w.seal, "edge-1", None).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(open(&longer, &pinned, &w.seal, "edge-1", None).is_err());
        assert_eq!(
            open(&[], &pinned, &w.seal, "edge-1", None)
                .unwrap_err()
                .reason(),
            "malformed"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_open(data in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let w = world();
            proptest::prop_assert!(open(&data, &w.controller.public(), &w.seal, "edge-1", None).is_err());
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&data);
            proptest::prop_assert!(open(&with_magic, &w.controller.public(), &w.seal, "edge-1", None).is_err());
        }
    }

    #[test]
    fn another_controller_is_wrong_signer() {
        let w = world();
        let intruder = SigningIdentity::generate();
        let bytes = seal(&content("edge-1", 5), &intruder, &w.seal.public()).unwrap();
        let err = open(&bytes, &w.controller.public(), &w.seal, "edge-1", None).unwrap_err();
        assert_eq!(
            err,
            BundleError::WrongSigner {
                found: intruder.fingerprint(),
                expected: w.controller.fingerprint(),
            }
        );
    }

    #[test]
    fn pinned_header_with_another_signature_is_bad_signature() {
        let w = world();
        let intruder = SigningIdentity::generate();
        // The intruder seals its own content, claims the pinned key in the header and signs.
        let mut bytes = seal(&content("edge-1", 9), &intruder, &w.seal.public()).unwrap();
        let signer_at = MAGIC.len() + 17 + "edge-1".len();
        bytes[signer_at..signer_at + 32].copy_from_slice(&w.controller.public());
        let body = bytes.len() - SIGNATURE_LEN;
        let signature = intruder.sign(&bytes[..body]);
        bytes[body..].copy_from_slice(&signature);
        let err = open(&bytes, &w.controller.public(), &w.seal, "edge-1", None).unwrap_err();
        assert_eq!(err, BundleError::BadSignature);
    }

    #[test]
    fn old_or_equal_version_is_not_newer() {
        let w = world();
        let bytes = seal(&content("edge-1", 5), &w.controller, &w.seal.public()).unwrap();
        let pinned = w.controller.public();
        for applied in [5, 6, u64::MAX] {
            assert_eq!(
                open(&bytes, &pinned, &w.seal, "edge-1", Some(applied)).unwrap_err(),
                BundleError::NotNewer {
                    version: 5,
                    applied
                }
            );
        }
        // Checked before the gateway and before opening.
        let other = SealKey::generate();
        assert_eq!(
            open(&bytes, &pinned, &other, "gw-x", Some(5))
                .unwrap_err()
                .reason(),
            "replay"
        );
    }

    #[test]
    fn another_gateways_bundle_is_refused() {
        let w = world();
        let pinned = w.controller.public();
        // Sealed to our key but for another gateway.
        let bytes = seal(&content("dc-1", 5), &w.controller, &w.seal.public()).unwrap();
        assert_eq!(
            open(&bytes, &pinned, &w.seal, "edge-1", None).unwrap_err(),
            BundleError::WrongGateway("dc-1".to_owned())
        );
        // For our name but sealed to another gateway's key.
        let other = SealKey::generate();
        let bytes = seal(&content("edge-1", 5), &w.controller, &other.public()).unwrap();
        assert_eq!(
            open(&bytes, &pinned, &w.seal, "edge-1", None).unwrap_err(),
            BundleError::Unsealable
        );
    }

    #[test]
    fn content_must_agree_with_header() {
        let w = world();
        let pinned = w.controller.public();
        let json = serde_json::to_vec(&content("edge-1", 5)).unwrap();
        for (gateway, version, issued_at) in [
            ("edge-1", 6, 1_700_000_000),
            ("edge-1", 5, 1),
            ("edge-2", 5, 1_700_000_000),
        ] {
            let bytes = seal_bytes(
                gateway,
                version,
                issued_at,
                &json,
                &w.controller,
                &w.seal.public(),
            )
            .unwrap();
            let err = open(&bytes, &pinned, &w.seal, gateway, None).unwrap_err();
            assert_eq!(err.reason(), "malformed", "{err}");
        }
        let bytes = seal_bytes(
            "edge-1",
            5,
            1_700_000_000,
            b"{not json",
            &w.controller,
            &w.seal.public(),
        )
        .unwrap();
        let err = open(&bytes, &pinned, &w.seal, "edge-1", None).unwrap_err();
        assert_eq!(err.reason(), "malformed");
    }

    #[test]
    fn unusable_names_and_keys_are_refused_when_sealing() {
        let w = world();
        let long = "g".repeat(256);
        assert!(seal(&content(&long, 1), &w.controller, &w.seal.public()).is_err());
        assert!(seal(&content("", 1), &w.controller, &w.seal.public()).is_err());
        // A low-order point (zero) gives an all-zero shared secret.
        assert!(seal(&content("edge-1", 1), &w.controller, &[0; 32]).is_err());
    }

    #[test]
    fn derive_psk_is_symmetric_and_changes_with_inputs() {
        let secret = [3u8; 32];
        let k = derive_psk(&secret, "acme", ("edge-1", 1), ("dc-1", 4));
        assert_eq!(k, derive_psk(&secret, "acme", ("dc-1", 4), ("edge-1", 1)));
        for other in [
            derive_psk(&secret, "acme", ("edge-1", 2), ("dc-1", 4)),
            derive_psk(&secret, "acme", ("edge-1", 1), ("dc-1", 5)),
            derive_psk(&secret, "globex", ("edge-1", 1), ("dc-1", 4)),
            derive_psk(&secret, "acme", ("edge-2", 1), ("dc-1", 4)),
            derive_psk(&[4u8; 32], "acme", ("edge-1", 1), ("dc-1", 4)),
            // Generations swapped between the two gateways.
            derive_psk(&secret, "acme", ("edge-1", 4), ("dc-1", 1)),
        ] {
            assert_ne!(k, other);
        }
    }
}
