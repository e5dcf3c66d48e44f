//! One-time enrollment tokens: `corridor controller token --gateway NAME` issues one; `corridor
//! gateway enroll --token T` redeems it. The token carries the gateway's name, its expiry, the
//! controller's key fingerprint (which the gateway pins) and a 32-byte random secret; the
//! controller stores only the secret's hash, and the store redeems a token at most once.
//!
//! CONTRACT (skeleton by the lead; implementer: helper B). Keep these names and signatures.

/// A token as handed to the person installing a gateway. Text form: `corridor1.<base64url>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Random id (16 hex characters): the store's key.
    pub id: String,
    /// The gateway (policy name) this token enrolls.
    pub gateway: String,
    /// Unix seconds after which it is refused.
    pub expires_at: u64,
    /// The controller's key fingerprint ([`crate::identity::fingerprint`]), pinned at enrollment.
    pub controller: String,
    /// The secret; only its hash is stored.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .field("gateway", &self.gateway)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What the store keeps of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token's id.
    pub id: String,
    /// The gateway it enrolls.
    pub gateway: String,
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
    /// Unix seconds.
    pub expires_at: u64,
    /// Unix seconds when it was redeemed; `None` while unused.
    pub used_at: Option<u64>,
}

/// A token that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a corridor token.
    #[error(
        "not a corridor enrollment token ({0}); copy the whole token that `corridor controller token` printed"
    )]
    Malformed(&'static str),
}

impl Token {
    /// Issues a fresh token for `gateway`, valid `ttl_secs` from `now` (unix seconds).
    pub fn issue(gateway: &str, ttl_secs: u64, now: u64, controller: &str) -> (Token, TokenRecord) {
        let _ = (gateway, ttl_secs, now, controller);
        unimplemented!()
    }
    /// The text form.
    pub fn encode(&self) -> String {
        unimplemented!()
    }
    /// Parses the text form (surrounding whitespace ignored).
    pub fn decode(text: &str) -> Result<Token, TokenError> {
        let _ = text;
        unimplemented!()
    }
}

/// SHA-256 of a token secret (what the store compares).
pub fn secret_hash(secret: &[u8; 32]) -> [u8; 32] {
    let _ = secret;
    unimplemented!()
}
