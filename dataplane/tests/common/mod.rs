//! Packet builders shared by the engine's integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::{IpAddr, SocketAddr};

use dataplane::sim::{TenantSpec, Topology};

/// The edge gateway's node in [`edge_dc`] worlds.
pub(crate) const EDGE: usize = 0;
/// The data-centre gateway's node in [`edge_dc`] worlds.
pub(crate) const DC: usize = 1;

/// edge-1 (dials out) and dc-1 (listens at 192.0.2.1:51820) serving `tenants`.
pub(crate) fn edge_dc(tenants: Vec<TenantSpec>) -> Topology {
    Topology {
        gateways: vec![
            ("edge-1".into(), None),
            ("dc-1".into(), Some(addr("192.0.2.1:51820"))),
        ],
        tenants,
    }
}

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// IPv4/IPv6 packet with a transport header; for ICMP `sport` is the type and `dport` the id.
pub(crate) fn packet(
    src: &str,
    dst: &str,
    proto: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    dataplane::sim::ip_packet(ip(src), ip(dst), proto, sport, dport, payload)
        .expect("one address family")
}

pub(crate) fn tcp(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    packet(src, dst, 6, sport, dport, payload)
}

pub(crate) fn udp(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    packet(src, dst, 17, sport, dport, payload)
}

pub(crate) fn ping(src: &str, dst: &str, id: u16) -> Vec<u8> {
    packet(src, dst, 1, 8, id, b"ping")
}

pub(crate) fn pong(src: &str, dst: &str, id: u16) -> Vec<u8> {
    packet(src, dst, 1, 0, id, b"ping")
}

use dataplane::engine::{AppOutcome, DropReason, Drops, PeerStats, PortId, TenantStats};
use dataplane::sim::{Delivery, World};

/// The stats of one tenant on one node.
pub(crate) fn tstats(w: &World, node: usize, tenant: &str) -> TenantStats {
    w.nodes[node]
        .engine
        .stats()
        .tenants
        .into_iter()
        .find(|t| t.name == tenant)
        .unwrap_or_else(|| panic!("node {node} has no tenant {tenant:?}"))
}

/// The stats of one peer of one tenant on one node.
pub(crate) fn pstats(w: &World, node: usize, tenant: &str, peer: &str) -> PeerStats {
    tstats(w, node, tenant)
        .peers
        .into_iter()
        .find(|p| p.name == peer)
        .unwrap_or_else(|| panic!("node {node} tenant {tenant:?} has no peer {peer:?}"))
}

/// Drops of one reason in one tenant on one node.
pub(crate) fn drops(w: &World, node: usize, tenant: &str, reason: DropReason) -> u64 {
    tstats(w, node, tenant).counters.drops.get(reason)
}

/// Drops on one node that belong to no tenant.
pub(crate) fn unattributed(w: &World, node: usize) -> Drops {
    w.nodes[node].engine.stats().unattributed
}

/// Every drop on one node, attributed or not.
pub(crate) fn all_drops(w: &World, node: usize) -> u64 {
    let s = w.nodes[node].engine.stats();
    s.unattributed.total()
        + s.tenants
            .iter()
            .map(|t| t.counters.drops.total())
            .sum::<u64>()
}

/// The port of (tenant, endpoint) on a node.
pub(crate) fn port(w: &World, node: usize, tenant: &str, endpoint: &str) -> PortId {
    w.nodes[node]
        .engine
        .port(tenant, endpoint)
        .unwrap_or_else(|| panic!("node {node} has no port for {tenant}/{endpoint}"))
}

/// Sends an app packet that must be accepted by the sending engine, runs the wire and returns
/// what got delivered anywhere.
pub(crate) fn send(w: &mut World, node: usize, port: PortId, packet: &[u8]) -> Vec<Delivery> {
    let o = w.send_app(node, port, packet);
    assert!(
        matches!(
            o,
            AppOutcome::Send(_) | AppOutcome::Pending(_) | AppOutcome::Deliver { .. }
        ),
        "node {node} refused an app packet: {o:?}"
    );
    w.run();
    w.take_delivered()
}

/// Sends an app packet that must arrive, byte for byte, at exactly (to_node, to_port).
pub(crate) fn send_expect(
    w: &mut World,
    node: usize,
    port: PortId,
    packet: &[u8],
    to_node: usize,
    to_port: PortId,
) {
    let d = send(w, node, port, packet);
    assert_eq!(d.len(), 1, "expected exactly one delivery, got {d:?}");
    assert_eq!(
        (d[0].node, d[0].port),
        (to_node, to_port),
        "delivered to the wrong place"
    );
    assert_eq!(d[0].packet, packet, "payload changed in transit");
}

/// Sends an app packet that the sending engine must drop for `reason`; nothing may go on
/// the wire or be delivered.
pub(crate) fn send_refused(
    w: &mut World,
    node: usize,
    port: PortId,
    packet: &[u8],
    reason: DropReason,
) {
    let sent = w.sent;
    let o = w.send_app(node, port, packet);
    assert_eq!(o, AppOutcome::Drop(reason), "node {node}");
    w.run();
    assert_eq!(w.sent, sent, "a refused packet produced wire traffic");
    assert!(w.take_delivered().is_empty());
}

/// Sends an app packet that the sender accepts and the wire carries, but that nobody delivers.
pub(crate) fn send_undelivered(w: &mut World, node: usize, port: PortId, packet: &[u8]) {
    let d = send(w, node, port, packet);
    assert!(d.is_empty(), "must not be delivered: {d:?}");
}

/// WireGuard message type of a datagram (1 init, 2 response, 3 cookie, 4 data).
pub(crate) fn msg_type(data: &[u8]) -> u32 {
    data.get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// Whether a handshake message's mac1 is keyed by `public` (i.e. it is addressed to `public`).
pub(crate) fn mac1_for(public: &[u8; 32], datagram: &[u8]) -> bool {
    use blake2::digest::{FixedOutput, KeyInit, Update};
    use blake2::{Blake2s256, Blake2sMac, Digest};
    let mut h = Blake2s256::new();
    Digest::update(&mut h, b"mac1----");
    Digest::update(&mut h, public);
    let key: [u8; 32] = h.finalize().into();
    let Some(split) = datagram.len().checked_sub(32) else {
        return false;
    };
    let (msg, macs) = datagram.split_at(split);
    let mut mac = <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(&key)
        .expect("key length");
    Update::update(&mut mac, msg);
    let computed: [u8; 16] = mac.finalize_fixed().into();
    macs[..16] == computed[..]
}
