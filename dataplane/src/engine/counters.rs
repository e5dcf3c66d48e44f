//! Drop reasons and counters: every drop has a reason, every reason a counter (DESIGN.md §2.6).

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $name:ident => $label:literal,)*) => {
        /// Why a packet or datagram was dropped. Copy, no allocation: attackers set the rate.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DropReason { $($(#[doc = $doc])* $name,)* }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// Number of reasons.
            pub const COUNT: usize = Self::ALL.len();

            /// Stable snake_case name, used in status output and metrics.
            pub fn label(self) -> &'static str {
                match self { $(DropReason::$name => $label,)* }
            }
        }
    };
}

drop_reasons! {
    /// An app packet or decrypted packet that is not a well-formed IP packet.
    Malformed => "malformed",
    /// A fragment: the policy cannot see its ports.
    Fragment => "fragment",
    /// Link-local or multicast traffic (neighbour discovery, MLD, broadcasts): interface
    /// chatter that never crosses a tunnel, counted apart so it does not look like an attack.
    LinkLocal => "link_local",
    /// Source address not among the sending endpoint's (app side) or the peer's (WAN side).
    SpoofedSource => "spoofed_source",
    /// Destination not in the tenant's table (or not deliverable from where it came).
    NoRoute => "no_route",
    /// No rule allows the flow and it is not a reply to a tracked one.
    PolicyDenied => "policy_denied",
    /// The tenant's connection table is full.
    ConntrackFull => "conntrack_full",
    /// The peer's address is not known yet (it dials in and has not).
    PeerUnreachable => "peer_unreachable",
    /// Waiting for a handshake, and the peer's queue (256 packets) is full.
    QueueFull => "handshake_queue_full",
    /// Packets that waited for a handshake that never completed (the attempt timed out).
    HandshakeTimeout => "handshake_timeout",
    /// The packet does not fit the buffers.
    TooLarge => "too_large",
    /// The app port is not (or no longer) configured.
    UnknownPort => "unknown_port",
    /// A datagram that is not WireGuard.
    MalformedDatagram => "malformed_datagram",
    /// A handshake initiation whose mac1 matches none of this gateway's identities.
    UnknownIdentity => "unknown_identity",
    /// A handshake from a static key that is not a peer of the tenant.
    UnknownPeer => "unknown_peer",
    /// A datagram whose receiver index names no session here.
    UnknownIndex => "unknown_index",
    /// A handshake message that did not verify.
    HandshakeFailed => "handshake_failed",
    /// Under load: answered with a cookie instead of a handshake.
    HandshakeUnderLoad => "handshake_under_load",
    /// A data packet already received (replay) or too old.
    Replay => "replay",
    /// A data packet that failed authentication.
    DecryptFailed => "decrypt_failed",
    /// A data packet for a session that expired or does not exist any more.
    NoSession => "no_session",
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Drop counters indexed by reason.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Drops([u64; DropReason::COUNT]);

impl Default for Drops {
    fn default() -> Self {
        Drops([0; DropReason::COUNT])
    }
}

impl Drops {
    /// Counts one drop.
    pub fn count(&mut self, reason: DropReason) {
        let slot = &mut self.0[reason as usize];
        *slot = slot.saturating_add(1);
    }

    /// Drops for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    /// Adds another set of counters (another worker's, for status).
    pub fn add(&mut self, other: &Drops) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The non-zero counters, by label.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
    }
}

impl fmt::Debug for Drops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.nonzero()).finish()
    }
}

impl Serialize for Drops {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        for (reason, n) in self.nonzero() {
            map.serialize_entry(reason.label(), &n)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Drops {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, u64>::deserialize(d)?;
        let mut drops = Drops::default();
        for (label, n) in map {
            // Reasons this build does not know (a newer gateway) are ignored, not fatal.
            if let Some(r) = DropReason::ALL.iter().find(|r| r.label() == label) {
                drops.0[*r as usize] = n;
            }
        }
        Ok(drops)
    }
}

/// Packets and bytes in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Packets.
    pub packets: u64,
    /// Bytes of IP packets (inner, before encryption).
    pub bytes: u64,
}

impl Traffic {
    pub(crate) fn add(&mut self, bytes: usize) {
        self.packets = self.packets.saturating_add(1);
        self.bytes = self.bytes.saturating_add(bytes as u64);
    }
}

/// Counters of one tenant, or one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Toward the WAN (app packets encrypted and sent; at the tenant level also hairpinned).
    pub tx: Traffic,
    /// From the WAN (decrypted and delivered to an app).
    pub rx: Traffic,
    /// Drops by reason.
    pub drops: Drops,
}
