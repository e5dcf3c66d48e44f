//! One-time enrollment tokens: `corridor controller token --gateway NAME` issues one; `corridor
//! gateway enroll --token T` redeems it. The token carries the gateway's name, its expiry, the
//! controller's key fingerprint (which the gateway pins) and a 32-byte random secret; the
//! controller stores only the secret's hash, and the store redeems a token at most once.
//!
//! Text form: `corridor1.` + base64url-nopad of compact JSON `{"i":id,"g":gateway,"e":expires_at,
//! "c":controller fingerprint,"s":base64url-nopad secret}`. Decoding accepts only the canonical
//! form (it re-encodes and compares), so a token altered anywhere either fails to parse or is a
//! different token, whose secret hash the store does not know.

use base64::Engine as _;
use rand_core::RngCore as _;
use sha2::Digest as _;

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

/// The text form's prefix (the `1` is the format version).
const PREFIX: &str = "corridor1.";

/// The JSON inside the text form; short keys keep the token short enough to paste.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    i: String,
    g: String,
    e: u64,
    c: String,
    s: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

impl Token {
    /// Issues a fresh token for `gateway`, valid `ttl_secs` from `now` (unix seconds).
    pub fn issue(gateway: &str, ttl_secs: u64, now: u64, controller: &str) -> (Token, TokenRecord) {
        let mut id = [0u8; 8];
        rand_core::OsRng.fill_bytes(&mut id);
        let mut secret = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut secret);
        let token = Token {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            gateway: gateway.to_owned(),
            expires_at: now.saturating_add(ttl_secs),
            controller: controller.to_owned(),
            secret,
        };
        let record = TokenRecord {
            id: token.id.clone(),
            gateway: token.gateway.clone(),
            secret_hash: secret_hash(&token.secret),
            expires_at: token.expires_at,
            used_at: None,
        };
        (token, record)
    }
    /// The text form.
    pub fn encode(&self) -> String {
        let wire = Wire {
            i: self.id.clone(),
            g: self.gateway.clone(),
            e: self.expires_at,
            c: self.controller.clone(),
            s: b64().encode(self.secret),
        };
        // Serializing a struct of strings and an integer cannot fail; an empty payload would
        // only make the token refused on decode.
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        format!("{PREFIX}{}", b64().encode(json))
    }
    /// Parses the text form (surrounding whitespace ignored).
    pub fn decode(text: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        let body = text.strip_prefix(PREFIX).ok_or(TokenError::Malformed(
            "it does not start with \"corridor1.\"",
        ))?;
        let json = b64()
            .decode(body)
            .map_err(|_| TokenError::Malformed("not base64url after \"corridor1.\""))?;
        let wire: Wire = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("its content is not a token's"))?;
        if wire.i.len() != 16
            || !wire
                .i
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(TokenError::Malformed("bad id"));
        }
        if wire.g.is_empty() {
            return Err(TokenError::Malformed("no gateway name"));
        }
        if !wire.c.starts_with("ed25519:") {
            return Err(TokenError::Malformed("bad controller fingerprint"));
        }
        let secret = b64()
            .decode(&wire.s)
            .ok()
            .and_then(|s| <[u8; 32]>::try_from(s.as_slice()).ok())
            .ok_or(TokenError::Malformed("bad secret"))?;
        let token = Token {
            id: wire.i,
            gateway: wire.g,
            expires_at: wire.e,
            controller: wire.c,
            secret,
        };
        // One token, one text: anything that parses but is not what `encode` writes was altered.
        if token.encode() != text {
            return Err(TokenError::Malformed("not in canonical form"));
        }
        Ok(token)
    }
}

/// SHA-256 of a token secret (what the store compares).
pub fn secret_hash(secret: &[u8; 32]) -> [u8; 32] {
    sha2::Sha256::digest(secret).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "ed25519:Zmh6rfhivXdsj8GLjp-OIAiXFIVu4jOzkCpZHQ1fKSU";

    #[test]
    fn issue_and_round_trip() {
        let (token, record) = Token::issue("gw-a", 3600, 1_000, FP);
        assert_eq!(token.id.len(), 16);
        assert_eq!(token.expires_at, 4_600);
        assert_eq!(record.id, token.id);
        assert_eq!(record.gateway, "gw-a");
        assert_eq!(record.expires_at, 4_600);
        assert_eq!(record.used_at, None);
        assert_eq!(record.secret_hash, secret_hash(&token.secret));
        let text = token.encode();
        assert!(text.starts_with("corridor1."));
        assert_eq!(Token::decode(&text).unwrap(), token);
        let (other, _) = Token::issue("gw-a", 3600, 1_000, FP);
        assert_ne!(other.id, token.id);
        assert_ne!(other.secret, token.secret);
    }

    #[test]
    fn whitespace_is_trimmed() {
        let (token, _) = Token::issue("gw-a", 60, 0, FP);
        let text = format!("  \n{}\r\n\t", token.encode());
        assert_eq!(Token::decode(&text).unwrap(), token);
    }

    #[test]
    fn debug_hides_secret() {
        let (token, _) = Token::issue("gw-a", 60, 0, FP);
        let debug = format!("{token:?}");
        assert!(!debug.contains(&b64().encode(token.secret)));
        assert!(!debug.contains(&format!("{:?}", token.secret)));
    }

    #[test]
    fn garbage_is_malformed() {
        for text in [
            "",
            "corridor1.",
            "corridor2.abc",
            "corridor1.!!!",
            "corridor1.e30",
            "hello",
        ] {
            assert!(
                matches!(Token::decode(text), Err(TokenError::Malformed(_))),
                "{text}"
            );
        }
        let bad_json = format!("{PREFIX}{}", b64().encode(br#"{"i":"0123456789abcdef"}"#));
        assert!(Token::decode(&bad_json).is_err());
    }

    #[test]
    fn tampering_never_yields_the_same_token() {
        let (token, _) = Token::issue("gw-a", 60, 0, FP);
        let text = token.encode();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.= ";
        for i in 0..text.len() {
            for c in alphabet.chars() {
                if text[i..].starts_with(c) {
                    continue;
                }
                let mut t = text.clone();
                t.replace_range(i..i + 1, &c.to_string());
                match Token::decode(&t) {
                    Err(TokenError::Malformed(_)) => {}
                    // A change that still parses is another token: the store does not know its
                    // secret hash (or its id), so it is refused there.
                    Ok(other) => assert_ne!(other, token, "{t}"),
                }
            }
        }
        // Truncated.
        for n in 0..text.len() {
            if let Ok(other) = Token::decode(&text[..n]) {
                assert_ne!(other, token);
            }
        }
    }
}
