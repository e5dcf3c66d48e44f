//! The engine's configuration: what one gateway needs to know, already resolved.
//!
//! The operator never writes this: the control plane compiles it from the policy files (or a
//! bundle) for one gateway. Everything here is plain data so that a config can be built in tests
//! by hand, compared, and diffed against the running one by [`crate::Engine::apply`].

use std::fmt;
use std::net::SocketAddr;

use ip_network::IpNetwork;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Everything one gateway serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineConfig {
    /// The tenants this gateway serves, each with its own identity, table and policy.
    pub tenants: Vec<TenantConfig>,
}

/// One tenant as seen from one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// The tenant's name, unique on the gateway.
    pub name: String,
    /// This gateway's WireGuard static key for this tenant: one per (gateway, tenant) pair.
    pub private_key: SecretKey,
    /// Every endpoint of the tenant this gateway deals with, local ones and those behind peers.
    /// Their prefixes must not overlap: together they are the tenant's routing table.
    pub endpoints: Vec<EndpointConfig>,
    /// The WireGuard peers of this tenant: other gateways, or stock WireGuard peers.
    pub peers: Vec<PeerConfig>,
    /// Allowed flows; everything else is denied. Each rule has at least one local side.
    pub rules: Vec<RuleConfig>,
    /// Upper bound on tracked connections for this tenant, so no tenant can exhaust another's.
    pub conntrack_limit: usize,
}

/// Default per-tenant connection tracking bound.
pub const DEFAULT_CONNTRACK_LIMIT: usize = 16_384;

/// An endpoint: an app on this gateway (local), or something behind a peer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointConfig {
    /// The endpoint's name, unique within the tenant.
    pub name: String,
    /// Where packets for this endpoint go.
    pub location: Location,
    /// The endpoint's addresses and the routes behind it: valid sources of its packets and the
    /// destinations it receives.
    pub prefixes: Vec<IpNetwork>,
}

/// Where an endpoint lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Location {
    /// On this gateway: it gets an interface (a port) of its own.
    Local,
    /// Behind the peer with this index in [`TenantConfig::peers`].
    Peer(usize),
}

/// A WireGuard peer of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerConfig {
    /// A name for status and logs (the remote gateway, or the stock peer's endpoint name).
    pub name: String,
    /// The peer's static public key for this tenant.
    pub public_key: [u8; 32],
    /// Optional preshared key for this pair (handed out by the controller).
    pub preshared_key: Option<SecretKey>,
    /// Where to reach the peer; `None` when it only dials out (we learn it from its packets).
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive in seconds: set when we sit behind NAT and must hold the mapping.
    pub persistent_keepalive: Option<u16>,
    /// Follow the peer to a new address after an authenticated packet from there.
    pub roaming: bool,
}

/// One allowed flow between two endpoints of the tenant (indices into `endpoints`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleConfig {
    /// The endpoint that may open the flow.
    pub from: usize,
    /// The endpoint it may open it to.
    pub to: usize,
    /// Which protocol.
    pub protocol: Protocol,
    /// Destination port ranges (inclusive); empty means all ports. Only for TCP and UDP.
    pub ports: Vec<PortRange>,
}

/// The protocols a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP and ICMPv6 echo.
    Icmp,
    /// Any IP protocol.
    Any,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Any => "any",
        })
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port (inclusive).
    pub end: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

/// A 32-byte secret (private or preshared key): wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(bytes)
    }

    /// A fresh random key from the OS.
    pub fn generate() -> Self {
        use rand_core::RngCore;
        let mut bytes = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut bytes);
        // Clamp like `wg genkey` does, so the stored form equals the effective scalar.
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        SecretKey(bytes)
    }

    /// The raw bytes; handle with care.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The X25519 public key of this private key.
    pub fn public_key(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(self.0)).to_bytes()
    }

    /// Parses the base64 form used in key files (as `wg genkey` writes it).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(SecretKey)
    }

    /// The base64 form used in key files.
    pub fn to_base64(&self) -> String {
        encode_key(&self.0)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Why a base64 key did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64 at all.
    #[error("not valid base64")]
    Base64,
    /// Base64, but not 32 bytes.
    #[error("decodes to {0} bytes, a key has 32")]
    Length(usize),
}

/// Decodes a base64 32-byte key (WireGuard's textual form).
pub fn decode_key(text: &str) -> Result<[u8; 32], KeyError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| KeyError::Base64)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

/// Encodes a 32-byte key as base64 (WireGuard's textual form).
pub fn encode_key(key: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Serialized as the base64 text of key files (inside sealed bundles only: never logged).
impl serde::Serialize for SecretKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for SecretKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        SecretKey::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip_and_redaction() {
        let key = SecretKey::generate();
        let text = key.to_base64();
        assert_eq!(SecretKey::from_base64(&text).unwrap(), key);
        assert!(!format!("{key:?}").contains(&text));
        assert_eq!(decode_key("AAAA"), Err(KeyError::Length(3)));
        assert_eq!(decode_key("not base64!"), Err(KeyError::Base64));
    }

    #[test]
    fn generated_key_is_clamped() {
        let key = SecretKey::generate();
        let b = key.as_bytes();
        assert_eq!(b[0] & 7, 0);
        assert_eq!(b[31] & 0x80, 0);
        assert_eq!(b[31] & 0x40, 0x40);
    }
}
