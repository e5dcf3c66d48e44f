//! Attacks on the real binary (DESIGN.md §2.2, §2.6): a compromised app forging its source
//! address, and a WAN attacker replaying captured tunnel datagrams and injecting garbage. Each
//! test checks what arrived at the listeners (nothing of the attacker's), what the gateways
//! counted (every forged packet, under the right reason) and that the tunnel still works after.

#![cfg(test)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use dataplane::engine::{DropReason, Drops, EngineStats};
use netns_tests::{
    Capture, Gateway, Sink, in_ns, ipv4_udp, payload, send_raw_ipv4, tcp_transfer, udp_send,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tenant_drops(stats: &EngineStats, tenant: &str) -> Drops {
    stats
        .tenants
        .iter()
        .find(|t| t.name == tenant)
        .map(|t| t.counters.drops)
        .unwrap_or_else(|| panic!("no tenant {tenant}"))
}

/// Packets delivered to a tenant's apps (rx) on a gateway.
fn delivered(gw: &Gateway, tenant: &str) -> u64 {
    let s = gw.status();
    s.engine
        .tenants
        .iter()
        .find(|t| t.name == tenant)
        .map(|t| t.counters.rx.packets)
        .unwrap_or(0)
}

fn delta(before: &Drops, after: &Drops, reason: DropReason) -> u64 {
    after.get(reason) - before.get(reason)
}

const CLOUD_UDP: &str = "10.20.100.1:6000";

#[test]
fn forged_app_sources_are_dropped_and_counted() {
    let Some(w) = common::world("spoof") else {
        return;
    };
    let lab = &w.lab;
    let acme_app = lab.ns_name("acme-app");
    let acme_cloud = lab.ns_name("acme-cloud");
    let globex_cloud = lab.ns_name("globex-cloud");
    let acme_sink = Sink::new(&acme_cloud, sa(CLOUD_UDP));
    let globex_sink = Sink::new(&globex_cloud, sa(CLOUD_UDP));
    let cloud = SocketAddrV4::new(Ipv4Addr::new(10, 20, 100, 1), 6000);

    let edge0 = w.edge.status().engine;
    let acme_rx0 = delivered(&w.dc, "acme");
    let globex_rx0 = delivered(&w.dc, "globex");

    // Raw IPv4/UDP packets from inside acme's app with sources that are not its own: a
    // neighbour's address, an address of acme's cloud side, the cloud itself, the edge host,
    // one outside acme's space. All to an allowed port, so only the source is wrong.
    let forged_sources = [
        Ipv4Addr::new(10, 20, 1, 11),
        Ipv4Addr::new(10, 20, 100, 7),
        Ipv4Addr::new(10, 20, 100, 1),
        Ipv4Addr::new(192, 168, 50, 1),
        Ipv4Addr::new(10, 21, 0, 1),
    ];
    let mut forged = Vec::new();
    for (i, src) in forged_sources.iter().enumerate() {
        for j in 0..5 {
            forged.push(ipv4_udp(
                SocketAddrV4::new(*src, 40000 + j),
                cloud,
                &payload(100, (i * 10) as u64 + u64::from(j)),
            ));
        }
    }
    let sent = send_raw_ipv4(&acme_app, &forged)
        .unwrap_or_else(|e| panic!("raw socket in acme's app namespace: {e}"));
    assert_eq!(sent, forged.len());

    // The ordinary way: a second address on the interface, and ping and UDP from it.
    lab.sh_ok(&acme_app, "ip addr add 10.20.1.11/32 dev corridor0");
    let out = lab.sh(
        &acme_app,
        "ping -n -c 3 -i 0.2 -W 1 -I 10.20.1.11 10.20.100.1",
    );
    assert!(
        !out.status.success(),
        "ping from the forged address 10.20.1.11 got answers:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let sock = in_ns(&acme_app, || UdpSocket::bind("10.20.1.11:0")).unwrap();
    for i in 0..3 {
        sock.send_to(&payload(100, 1000 + i), cloud).unwrap();
    }
    let forged_total = forged.len() as u64 + 3 + 3;

    // Control: the same raw path with acme's real source does arrive.
    let genuine: Vec<Vec<u8>> = (0..5)
        .map(|j| {
            ipv4_udp(
                SocketAddrV4::new(Ipv4Addr::new(10, 20, 1, 10), 41000 + j),
                cloud,
                &payload(100, 5000 + u64::from(j)),
            )
        })
        .collect();
    send_raw_ipv4(&acme_app, &genuine).unwrap();
    let got = acme_sink.wait_for(Duration::from_secs(5), |c| c.udp_datagrams >= 5);
    std::thread::sleep(Duration::from_millis(500));
    let got_after = acme_sink.counts();
    assert_eq!(got, got_after, "late arrivals at acme's cloud");
    assert_eq!(
        (got.udp_datagrams, got.udp_bytes),
        (5, 500),
        "acme's cloud received exactly the 5 genuine datagrams, none of the {forged_total} forged"
    );
    assert!(
        globex_sink.counts().is_empty(),
        "globex's cloud received {:?}",
        globex_sink.counts()
    );
    assert_eq!(
        delivered(&w.dc, "acme") - acme_rx0,
        5,
        "dc-1 delivered for acme"
    );
    assert_eq!(
        delivered(&w.dc, "globex"),
        globex_rx0,
        "dc-1 delivered for globex"
    );

    let edge1 = w.edge.status().engine;
    let (a0, a1) = (tenant_drops(&edge0, "acme"), tenant_drops(&edge1, "acme"));
    eprintln!("spoof: edge-1 acme drops before {a0:?}, after {a1:?}");
    assert_eq!(
        delta(&a0, &a1, DropReason::SpoofedSource),
        forged_total,
        "edge-1 counts every forged packet as spoofed_source for acme"
    );
    assert_eq!(
        tenant_drops(&edge0, "globex"),
        tenant_drops(&edge1, "globex"),
        "nothing counted under globex"
    );
}

/// The standard world plus an attacker on the WAN (192.168.60.2, a link to the dc namespace,
/// routed through it), with a capture of the WAN running in the dc namespace from before the
/// first handshake.
struct AttackWorld {
    lab: netns_tests::Lab,
    edge: Gateway,
    dc: Gateway,
    attacker: String,
    capture: Option<Capture>,
}

fn attack_world(test: &str) -> Option<AttackWorld> {
    let mut lab = netns_tests::Lab::new(test)?;
    let edge_ns = lab.ns("edge");
    let dc_ns = lab.ns("dc");
    let attacker = lab.ns("attacker");
    for app in ["acme-app", "globex-app", "acme-cloud", "globex-cloud"] {
        lab.ns(app);
    }
    lab.link(&edge_ns, "192.168.50.1/24", &dc_ns, "192.168.50.2/24");
    lab.link(&dc_ns, "192.168.60.1/24", &attacker, "192.168.60.2/24");
    lab.sh_ok(&attacker, "ip route add default via 192.168.60.1");
    let policy = lab.policy(&[
        ("gateways.toml", common::GATEWAYS),
        ("tenants/acme.toml", common::ACME),
        ("tenants/globex.toml", common::GLOBEX),
    ]);
    let capture = Some(Capture::start(&dc_ns));
    let dc = lab.gateway(&dc_ns, "dc-1", "0.0.0.0:51820", &policy);
    let edge = lab.gateway(&edge_ns, "edge-1", "0.0.0.0:51820", &policy);
    Some(AttackWorld {
        lab,
        edge,
        dc,
        attacker,
        capture,
    })
}

/// Drops on a gateway: per tenant and unattributed.
#[derive(Debug)]
struct AllDrops {
    acme: Drops,
    globex: Drops,
    unattributed: Drops,
    udp_rx: u64,
}

fn all_drops(gw: &Gateway) -> AllDrops {
    let s = gw.status();
    AllDrops {
        acme: tenant_drops(&s.engine, "acme"),
        globex: tenant_drops(&s.engine, "globex"),
        unattributed: s.engine.unattributed,
        udp_rx: s.io.udp_rx,
    }
}

fn total(d: &AllDrops) -> u64 {
    d.acme.total() + d.globex.total() + d.unattributed.total()
}

fn edge_endpoint(dc: &Gateway, tenant: &str) -> Option<SocketAddr> {
    dc.status()
        .engine
        .tenants
        .iter()
        .find(|t| t.name == tenant)
        .and_then(|t| t.peers.iter().find(|p| p.name == "edge-1"))
        .and_then(|p| p.endpoint)
}

/// The 32-bit little-endian receiver index of a WireGuard message of type 2, 3 or 4.
fn receiver_index(msg: &[u8]) -> Option<u32> {
    match msg.first() {
        Some(2) => msg.get(8..12),
        Some(3 | 4) => msg.get(4..8),
        _ => None,
    }
    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The WireGuard datagrams in one captured UDP payload. The gateways send with UDP GSO, and on a
/// veth a GSO batch arrives whole: one payload holding several datagrams of `gso_size` bytes
/// (the last may be shorter). On a real wire they would be separate; split them as the wire
/// would. Each datagram starts with a message type 1..=4 and three zero bytes, which random
/// ciphertext does at a given offset with probability 2^-32.
fn wire_datagrams(payload: &[u8]) -> Vec<Vec<u8>> {
    let is_header = |at: usize| {
        payload
            .get(at..at + 4)
            .is_some_and(|h| (1..=4).contains(&h[0]) && h[1..] == [0, 0, 0])
    };
    let whole = || vec![payload.to_vec()];
    if !is_header(0) {
        return whole();
    }
    // Fixed-size messages first (an initiation batch is a multiple of 148 bytes, ...).
    let fixed = match payload[0] {
        1 => Some(148),
        2 => Some(92),
        3 => Some(64),
        _ => None,
    };
    let sizes: Vec<usize> = match fixed {
        Some(n) => vec![n],
        None => (2..payload.len() / 16).map(|k| k * 16).collect(),
    };
    for g in sizes {
        if g >= payload.len() {
            break;
        }
        if (0..payload.len()).step_by(g).all(is_header) {
            return payload.chunks(g).map(<[u8]>::to_vec).collect();
        }
    }
    whole()
}

#[test]
fn wan_replays_and_garbage_deliver_nothing_and_are_counted() {
    let Some(mut w) = attack_world("wanatk") else {
        return;
    };
    let lab = &w.lab;
    let acme_app = lab.ns_name("acme-app");
    let acme_cloud = lab.ns_name("acme-cloud");
    let globex_app = lab.ns_name("globex-app");
    let globex_cloud = lab.ns_name("globex-cloud");
    let dc_wan = sa("192.168.50.2:51820");
    let acme_sink = Sink::new(&acme_cloud, sa(CLOUD_UDP));
    let globex_sink = Sink::new(&globex_cloud, sa(CLOUD_UDP));

    // Real traffic for the attacker to record: 20 datagrams of acme, a ping of globex.
    udp_send(&acme_app, sa(CLOUD_UDP), &payload(300, 1), 20).unwrap();
    let got = acme_sink.wait_for(Duration::from_secs(5), |c| c.udp_datagrams >= 20);
    assert_eq!(
        got.udp_datagrams, 20,
        "control: acme's datagrams arrive: {got:?}"
    );
    assert!(
        lab.ping(&globex_app, "10.20.100.1", 2),
        "control: globex ping"
    );
    std::thread::sleep(Duration::from_millis(300));
    let recorded: Vec<Vec<u8>> = w
        .capture
        .take()
        .map(Capture::finish)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| {
            SocketAddr::V4(c.dst) == dc_wan && *c.src.ip() == Ipv4Addr::new(192, 168, 50, 1)
        })
        .flat_map(|c| wire_datagrams(&c.payload))
        .collect();
    let of_type = |t: u8| recorded.iter().filter(|m| m.first() == Some(&t)).count();
    let (inits, data) = (of_type(1), of_type(4));
    eprintln!(
        "wan attack: recorded {} datagrams to dc-1 ({inits} initiations, {data} data)",
        recorded.len()
    );
    assert!(inits >= 2, "the capture holds both tenants' initiations");
    assert!(data >= 22, "the capture holds the data packets");
    let live: Vec<u32> = recorded.iter().filter_map(|m| receiver_index(m)).collect();
    let acme_index = {
        // The receiver index of acme's session: the one of the 300-byte datagrams' packets.
        recorded
            .iter()
            .filter(|m| m.first() == Some(&4) && m.len() > 300)
            .find_map(|m| receiver_index(m))
            .expect("acme's data packets in the capture")
    };
    let acme_endpoint = edge_endpoint(&w.dc, "acme");
    let globex_endpoint = edge_endpoint(&w.dc, "globex");
    assert_eq!(acme_endpoint, Some(sa("192.168.50.1:51820")));
    let heard_acme = acme_sink.counts();
    let heard_globex = globex_sink.counts();
    let rx_acme = delivered(&w.dc, "acme");
    let rx_globex = delivered(&w.dc, "globex");
    let nothing_new = |phase: &str| {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            acme_sink.counts(),
            heard_acme,
            "{phase}: acme's cloud heard more"
        );
        assert_eq!(
            globex_sink.counts(),
            heard_globex,
            "{phase}: globex's cloud heard more"
        );
        assert_eq!(
            delivered(&w.dc, "acme"),
            rx_acme,
            "{phase}: dc-1 delivered for acme"
        );
        assert_eq!(
            delivered(&w.dc, "globex"),
            rx_globex,
            "{phase}: dc-1 delivered for globex"
        );
        assert_eq!(
            edge_endpoint(&w.dc, "acme"),
            acme_endpoint,
            "{phase}: acme roamed"
        );
        assert_eq!(
            edge_endpoint(&w.dc, "globex"),
            globex_endpoint,
            "{phase}: globex roamed"
        );
    };

    // --- 1. Replays: from the attacker's own address, then with the recorded source forged. ---
    let before = all_drops(&w.dc);
    let attacker = in_ns(&w.attacker, || UdpSocket::bind("192.168.60.2:40000")).unwrap();
    for m in &recorded {
        attacker.send_to(m, dc_wan).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let spoofed: Vec<Vec<u8>> = recorded
        .iter()
        .map(|m| {
            ipv4_udp(
                SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 1), 51820),
                SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 2), 51820),
                m,
            )
        })
        .collect();
    send_raw_ipv4(&w.attacker, &spoofed).unwrap();
    nothing_new("replay");
    let after = all_drops(&w.dc);
    eprintln!("wan attack: replays: dc-1 drops before {before:?}\n  after {after:?}");
    let replayed = 2 * recorded.len() as u64;
    assert!(
        after.udp_rx - before.udp_rx >= replayed,
        "dc-1 received the {replayed} replayed datagrams (udp_rx {} -> {})",
        before.udp_rx,
        after.udp_rx
    );
    let replay_drops = delta(&before.acme, &after.acme, DropReason::Replay)
        + delta(&before.globex, &after.globex, DropReason::Replay);
    assert_eq!(
        replay_drops,
        2 * data as u64,
        "dc-1 counts each replayed data packet as replay"
    );
    // A replayed initiation: refused (its timestamp is not newer), or answered with a cookie.
    let refused_inits = [DropReason::HandshakeFailed, DropReason::HandshakeUnderLoad]
        .iter()
        .map(|r| delta(&before.acme, &after.acme, *r) + delta(&before.globex, &after.globex, *r))
        .sum::<u64>();
    assert_eq!(refused_inits, 2 * inits as u64, "replayed initiations");
    assert_eq!(
        total(&after) - total(&before),
        replayed,
        "one counted drop per replayed datagram"
    );

    // --- 2. Garbage from the attacker's address. ---
    let before = all_drops(&w.dc);
    let mut seed = 10_000u64;
    let mut rand = |len: usize| {
        seed += 1;
        payload(len, seed)
    };
    let mut malformed: Vec<Vec<u8>> = Vec::new();
    for len in [1, 3, 15, 31, 77, 149, 600, 1400] {
        let mut m = rand(len);
        m[0] = 0xff; // no WireGuard type
        malformed.push(m);
    }
    for (t, len) in [
        (4u8, 16usize),
        (4, 31),
        (1, 100),
        (1, 147),
        (2, 91),
        (3, 63),
        (2, 93),
    ] {
        let mut m = rand(len);
        m[..4].copy_from_slice(&[t, 0, 0, 0]); // truncated or overlong headers
        malformed.push(m);
    }
    let mut unknown_identity = Vec::new();
    for _ in 0..5 {
        let mut m = rand(148);
        m[..4].copy_from_slice(&[1, 0, 0, 0]);
        unknown_identity.push(m);
    }
    let mut unknown_index = Vec::new();
    let mut idx = 0x00ab_cd00u32;
    while unknown_index.len() < 30 {
        idx = idx.wrapping_mul(2_654_435_761).wrapping_add(0x1234_5677);
        if live.iter().any(|l| l >> 8 == idx >> 8) {
            continue;
        }
        let (t, len, at) = match unknown_index.len() % 6 {
            0 => (2u8, 92usize, 8usize),
            1 => (3, 64, 4),
            _ => (4, 32 + unknown_index.len() * 7, 4),
        };
        let mut m = rand(len);
        m[..4].copy_from_slice(&[t, 0, 0, 0]);
        m[at..at + 4].copy_from_slice(&idx.to_le_bytes());
        unknown_index.push(m);
    }
    let mut forged_data = Vec::new();
    for i in 0..10u64 {
        // acme's live session, a counter far ahead, random "ciphertext".
        let mut m = rand(32 + 100);
        m[..4].copy_from_slice(&[4, 0, 0, 0]);
        m[4..8].copy_from_slice(&acme_index.to_le_bytes());
        m[8..16].copy_from_slice(&((1u64 << 40) + i).to_le_bytes());
        forged_data.push(m);
    }
    for m in malformed
        .iter()
        .chain(&unknown_identity)
        .chain(&unknown_index)
        .chain(&forged_data)
    {
        attacker.send_to(m, dc_wan).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    nothing_new("garbage");
    let after = all_drops(&w.dc);
    eprintln!("wan attack: garbage: dc-1 drops before {before:?}\n  after {after:?}");
    let u = |r| delta(&before.unattributed, &after.unattributed, r);
    assert_eq!(
        u(DropReason::MalformedDatagram),
        malformed.len() as u64,
        "malformed_datagram"
    );
    assert_eq!(
        u(DropReason::UnknownIdentity),
        unknown_identity.len() as u64,
        "unknown_identity"
    );
    assert_eq!(
        u(DropReason::UnknownIndex),
        unknown_index.len() as u64,
        "unknown_index"
    );
    assert_eq!(
        delta(&before.acme, &after.acme, DropReason::DecryptFailed),
        forged_data.len() as u64,
        "decrypt_failed on acme"
    );
    let sent =
        (malformed.len() + unknown_identity.len() + unknown_index.len() + forged_data.len()) as u64;
    assert_eq!(
        total(&after) - total(&before),
        sent,
        "one counted drop per datagram"
    );

    // --- 3. The tunnels still work, from the same endpoints. ---
    let _alive = (w.edge.status(), w.dc.status());
    drop(acme_sink);
    tcp_transfer(
        &acme_app,
        &acme_cloud,
        sa("10.20.100.1:5001"),
        1 << 20,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("acme after the attack: {e}"));
    tcp_transfer(
        &globex_app,
        &globex_cloud,
        sa("10.20.100.1:7000"),
        1 << 20,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("globex after the attack: {e}"));
    assert_eq!(
        edge_endpoint(&w.dc, "acme"),
        acme_endpoint,
        "acme's endpoint after"
    );
}
