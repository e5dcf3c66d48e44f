//! Shared setup for corridor's benches: worlds of two gateways with an established session,
//! worlds built to scale (many rules, routes, sessions, tenants), and the split of a TCP
//! super-packet into MTU-sized segments.

pub mod fleet;

use std::net::SocketAddr;

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use dataplane::config::{
    EndpointConfig, EngineConfig, Location, PeerConfig, Protocol, TenantConfig,
};
use dataplane::engine::{AppOutcome, PortId};
use dataplane::sim::{TenantSpec, Topology, World, ip_packet};
use dataplane::{Engine, SecretKey};

/// The app's address (on edge-1) in every bench world.
pub const APP: [u8; 4] = [10, 20, 1, 10];
/// The destination's address (behind dc-1) in every bench world.
pub const CLOUD: [u8; 4] = [10, 20, 100, 1];
/// Where dc-1 listens.
pub const DC_ADDR: ([u8; 4], u16) = ([192, 0, 2, 1], 51820);
/// The MTU the super-packet is split for (corridor's default interface MTU).
pub const MTU: usize = 1420;

/// A two-gateway world (edge-1 dials out, dc-1 listens) with one tenant whose session is up.
pub fn established_pair() -> (World, PortId, PortId) {
    let tenant = TenantSpec::new("acme", 2)
        .endpoint("app", 0, &["10.20.1.10/32"])
        .endpoint("cloud", 1, &["10.20.100.0/24"])
        .allow("app", "cloud", Protocol::Udp, &[(9000, 9100)])
        .allow("app", "cloud", Protocol::Tcp, &[(443, 443)]);
    let first = udp_packet(APP, CLOUD, 40000, 9000, 64);
    established(&topology(vec![tenant]), "acme", &first)
}

/// edge-1 (dials out) and dc-1 (listens at [`DC_ADDR`]) serving `tenants`.
pub fn topology(tenants: Vec<TenantSpec>) -> Topology {
    Topology {
        gateways: vec![
            ("edge-1".into(), None),
            ("dc-1".into(), Some(DC_ADDR.into())),
        ],
        tenants,
    }
}

/// The world of `topo` with `tenant`'s session up: `first` (an allowed packet from "app" on
/// edge-1) completed the handshake. Returns the world and the ports "app" (edge-1) and
/// "cloud" (dc-1).
pub fn established(topo: &Topology, tenant: &str, first: &[u8]) -> (World, PortId, PortId) {
    let world = topo
        .world()
        .unwrap_or_else(|e| unreachable!("bench topology: {e}"));
    establish(world, tenant, first)
}

/// Completes the handshake of `tenant` in `world` with `first` (see [`established`]).
pub fn establish(mut world: World, tenant: &str, first: &[u8]) -> (World, PortId, PortId) {
    world.run();
    let app = world.nodes[0].engine.port(tenant, "app");
    let cloud = world.nodes[1].engine.port(tenant, "cloud");
    let (Some(app), Some(cloud)) = (app, cloud) else {
        unreachable!("bench topology has both ports")
    };
    let _ = world.send_app(0, app, first);
    world.run();
    let delivered = world.take_delivered();
    assert_eq!(
        delivered.len(),
        1,
        "the first packet completes the handshake"
    );
    (world, app, cloud)
}

/// A world like [`topology`]'s whose dc-1 also has `extra` more peers of the same tenant
/// (keys of gateways that never connect): its session map then holds `1 + extra` sessions.
pub fn world_with_extra_peers(topo: &Topology, extra: usize) -> World {
    let mut dc = topo.compile(1);
    if let Some(t) = dc.tenants.first_mut() {
        t.peers.extend((0..extra).map(|i| PeerConfig {
            name: format!("idle-{i}"),
            public_key: SecretKey::generate().public_key(),
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            roaming: true,
        }));
    }
    let mut world = World::new();
    let edge: SocketAddr = ([100, 64, 0, 0], 40000).into();
    let added = world
        .add("edge-1", edge, &topo.compile(0))
        .and_then(|_| world.add("dc-1", DC_ADDR.into(), &dc));
    if let Err(e) = added {
        unreachable!("bench config: {e}");
    }
    world
}

/// An engine serving `tenants` tenants (`t0`, `t1`, ...), each with one local app and no
/// peers: what a gateway's mac1 scan walks through.
pub fn engine_with_tenants(tenants: usize) -> Engine {
    let config = EngineConfig {
        tenants: (0..tenants)
            .map(|i| TenantConfig {
                name: format!("t{i}"),
                private_key: SecretKey::generate(),
                endpoints: vec![EndpointConfig {
                    name: "app".into(),
                    location: Location::Local,
                    prefixes: vec![ip_network::IpNetwork::from(std::net::Ipv4Addr::from(APP))],
                }],
                peers: Vec::new(),
                rules: Vec::new(),
                conntrack_limit: 16,
            })
            .collect(),
    };
    let mut engine = Engine::new();
    if let Err(e) = engine.apply(&config, std::time::Instant::now()) {
        unreachable!("bench config: {e}");
    }
    engine
}

/// A handshake initiation (148 bytes, type 1) with arbitrary content whose mac1 is valid for
/// the identity `responder_public` (or for nobody, with `None`): it passes the mac1 scan and
/// the rate limiter and then fails to decrypt.
pub fn initiation_for(responder_public: Option<&[u8; 32]>, seed: u8) -> Vec<u8> {
    let mut msg = vec![0u8; 148];
    msg[0] = 1;
    for (i, b) in msg.iter_mut().enumerate().take(116).skip(4) {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    let key: [u8; 32] = match responder_public {
        Some(public) => {
            let mut h = Blake2s256::new();
            Digest::update(&mut h, b"mac1----");
            Digest::update(&mut h, public);
            h.finalize().into()
        }
        None => [0x5a; 32],
    };
    if let Ok(mut mac) = <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(&key)
    {
        Update::update(&mut mac, &msg[..116]);
        let tag: [u8; 16] = mac.finalize_fixed().into();
        msg[116..132].copy_from_slice(&tag);
    }
    msg
}

/// A data datagram (type 4) for receiver index `index`, with `payload` bytes of junk.
pub fn data_datagram(index: u32, payload: usize) -> Vec<u8> {
    let mut d = vec![0u8; 16 + payload.max(16)];
    d[0] = 4;
    d[4..8].copy_from_slice(&index.to_le_bytes());
    d
}

/// An IPv4/UDP packet of `len` bytes in total (at least 28).
pub fn udp_packet(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let payload = vec![0u8; len.saturating_sub(28)];
    ip_packet(src.into(), dst.into(), 17, sport, dport, &payload).unwrap_or_default()
}

/// An IPv4/TCP packet of `len` bytes in total (at least 40; at most 65,535).
pub fn tcp_packet(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let payload = vec![0xa5u8; len.clamp(40, 65_535) - 40];
    ip_packet(src.into(), dst.into(), 6, sport, dport, &payload).unwrap_or_default()
}

/// True when the outcome is an encrypted datagram ready to send.
pub fn is_send(o: &AppOutcome) -> bool {
    matches!(o, AppOutcome::Send(_))
}

/// Splits an IPv4/TCP super-packet (one header, up to 64 KB of payload, as a TUN device with
/// TSO/GSO offload hands it to userspace) into segments of at most `mtu` bytes with
/// `tun_rs::gso_split`: the very function the gateway's fast path runs inside
/// `recv_multiple` (headers copied, IP id, lengths, sequence numbers and both checksums fixed
/// up). Segment `i` is `bufs[i][..sizes[i]]`; `bufs` must hold enough buffers of `mtu` bytes.
/// Returns the number of segments; 0 if `packet` is not IPv4/TCP or does not fit.
#[cfg(target_os = "linux")]
pub fn split_superpacket(
    packet: &mut [u8],
    mtu: usize,
    bufs: &mut [Vec<u8>],
    sizes: &mut [usize],
) -> usize {
    let Some(&vihl) = packet.first() else {
        return 0;
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || packet.get(9) != Some(&6) || packet.len() < ihl + 20 {
        return 0;
    }
    let hdr_len = ihl + usize::from(packet[ihl + 12] >> 4) * 4;
    let (Ok(hdr_len16), Ok(csum_start), Ok(gso_size)) = (
        u16::try_from(hdr_len),
        u16::try_from(ihl),
        u16::try_from(mtu.saturating_sub(hdr_len)),
    ) else {
        return 0;
    };
    let hdr = tun_rs::VirtioNetHdr {
        flags: 1, // VIRTIO_NET_HDR_F_NEEDS_CSUM
        gso_type: tun_rs::VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: hdr_len16,
        gso_size,
        csum_start,
        csum_offset: 16,
    };
    tun_rs::gso_split(packet, hdr, bufs, sizes, 0, false).unwrap_or(0)
}

/// Buffers for [`split_superpacket`]: enough for a 64 KB super-packet at `mtu`.
pub fn segment_buffers(mtu: usize) -> (Vec<Vec<u8>>, Vec<usize>) {
    let n = 65_535 / mtu.saturating_sub(40).max(1) + 1;
    ((0..n).map(|_| vec![0u8; mtu]).collect(), vec![0; n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn superpacket_splits_into_mtu_sized_segments() {
        let mut sp = tcp_packet(APP, CLOUD, 40000, 443, 65_535);
        let (mut bufs, mut sizes) = segment_buffers(MTU);
        let n = split_superpacket(&mut sp, MTU, &mut bufs, &mut sizes);
        assert_eq!(n, 48);
        let mut payload = 0;
        for (i, (b, &len)) in bufs.iter().zip(&sizes).take(n).enumerate() {
            let s = &b[..len];
            assert!(len <= MTU);
            assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), len);
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq as usize, payload, "segment {i}");
            payload += len - 40;
        }
        assert_eq!(payload, 65_535 - 40);
        let mut udp = udp_packet(APP, CLOUD, 1, 2, 3000);
        assert_eq!(split_superpacket(&mut udp, MTU, &mut bufs, &mut sizes), 0);
    }

    #[test]
    fn initiation_stops_after_the_identity_match() {
        use dataplane::engine::{DropReason, WanOutcome};
        let mut engine = engine_with_tenants(3);
        let Some(public) = engine.public_key("t2") else {
            unreachable!("t2 exists")
        };
        let from: SocketAddr = ([192, 0, 2, 9], 1000).into();
        let now = std::time::Instant::now();
        let mut out = vec![0u8; 2048];
        let init = initiation_for(Some(&public), 0);
        assert_eq!(
            engine.handle_wan_datagram(from, &init, now, &mut out),
            WanOutcome::Drop(DropReason::HandshakeFailed)
        );
        let nobody = initiation_for(None, 0);
        assert_eq!(
            engine.handle_wan_datagram(from, &nobody, now, &mut out),
            WanOutcome::Drop(DropReason::UnknownIdentity)
        );
    }
}
