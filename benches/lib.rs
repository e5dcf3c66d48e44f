//! Shared setup for corridor's benches: a two-gateway world with an established session.

use dataplane::config::Protocol;
use dataplane::engine::{AppOutcome, PortId};
use dataplane::sim::{TenantSpec, Topology, World, ip_packet};

/// A two-gateway world (edge-1 dials out, dc-1 listens) with one tenant whose session is up.
pub fn established_pair() -> (World, PortId, PortId) {
    let topo = Topology {
        gateways: vec![
            ("edge-1".into(), None),
            ("dc-1".into(), Some(([192, 0, 2, 1], 51820).into())),
        ],
        tenants: vec![
            TenantSpec::new("acme", 2)
                .endpoint("app", 0, &["10.20.1.10/32"])
                .endpoint("cloud", 1, &["10.20.100.0/24"])
                .allow("app", "cloud", Protocol::Udp, &[(9000, 9100)]),
        ],
    };
    let mut world = topo
        .world()
        .unwrap_or_else(|e| unreachable!("bench topology: {e}"));
    world.run();
    let app = world.nodes[0].engine.port("acme", "app");
    let cloud = world.nodes[1].engine.port("acme", "cloud");
    let (Some(app), Some(cloud)) = (app, cloud) else {
        unreachable!("bench topology has both ports")
    };
    // One packet to complete the handshake.
    let first = udp_packet([10, 20, 1, 10], [10, 20, 100, 1], 40000, 9000, 64);
    let _ = world.send_app(0, app, &first);
    world.run();
    let _ = world.take_delivered();
    (world, app, cloud)
}

/// An IPv4/UDP packet of `len` bytes in total (at least 28).
pub fn udp_packet(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let payload = vec![0u8; len.saturating_sub(28)];
    ip_packet(src.into(), dst.into(), 17, sport, dport, &payload).unwrap_or_default()
}

/// True when the outcome is an encrypted datagram ready to send.
pub fn is_send(o: &AppOutcome) -> bool {
    matches!(o, AppOutcome::Send(_))
}
