//! Bundles: what the controller tells one gateway to run. Signed by the controller (ed25519),
//! sealed to the gateway (X25519 + ChaCha20-Poly1305), versioned; the gateway verifies the
//! signature against the pinned controller key, refuses any version not newer than the one it
//! applied, then opens it. The same bytes are kept on disk as the last good bundle.
//!
//! CONTRACT (skeleton by the lead; implementer: helper B). Keep these names and signatures.

use serde::{Deserialize, Serialize};

use crate::compile::PublicPlan;
use crate::identity::{SealKey, SigningIdentity};

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
    #[error("bundle version {version} is not newer than the applied version {applied}: replay refused")]
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

/// Signs and seals `content` for the gateway whose sealing public key is `seal_public`.
pub fn seal(
    content: &BundleContent,
    controller: &SigningIdentity,
    seal_public: &[u8; 32],
) -> Result<Vec<u8>, BundleError> {
    let _ = (content, controller, seal_public);
    unimplemented!()
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
    let _ = (bytes, pinned, seal_key, gateway, applied);
    unimplemented!()
}

/// The preshared key of the pair (gateway `a` at key generation `gen_a`, gateway `b` at `gen_b`)
/// in `tenant`: derived from the controller's PSK secret, the same whichever side asks (order
/// independent), and new whenever either side's keys rotate. Replicas sharing the controller
/// key agree on it without storing it.
pub fn derive_psk(
    psk_secret: &[u8; 32],
    tenant: &str,
    a: (&str, u64),
    b: (&str, u64),
) -> dataplane::SecretKey {
    let _ = (psk_secret, tenant, a, b);
    unimplemented!()
}
