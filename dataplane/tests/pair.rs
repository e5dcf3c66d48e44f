//! Two and three engines back to back: what passes, what does not, and where it is counted.
//!
//! Sender-side enforcement is shown with honest configs; receiver-side enforcement with a
//! "compromised" sending gateway whose config was widened behind the operator's back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use dataplane::config::Protocol;
use dataplane::engine::DropReason;
use dataplane::sim::{TenantSpec, Topology, World};

mod common;
use common::*;

const EDGE: usize = 0;
const DC: usize = 1;
const DC2: usize = 2;

/// edge-1 dials out; dc-1 has a public endpoint. One tenant, v4 and v6.
fn two() -> Topology {
    Topology {
        gateways: vec![
            ("edge-1".into(), None),
            ("dc-1".into(), Some(addr("192.0.2.1:51820"))),
        ],
        tenants: vec![
            TenantSpec::new("acme", 2)
                .endpoint("app", EDGE, &["10.20.1.10/32", "fd20:1::10/128"])
                .endpoint("cloud", DC, &["10.20.100.0/24", "fd20:100::/64"])
                .allow("app", "cloud", Protocol::Tcp, &[(443, 443)])
                .allow("app", "cloud", Protocol::Udp, &[(53, 53), (5000, 5010)])
                .allow("app", "cloud", Protocol::Icmp, &[]),
        ],
    }
}

fn world(topo: &Topology) -> World {
    let mut w = topo.world().unwrap();
    w.run();
    w
}

fn assert_no_unattributed(w: &World) {
    for n in 0..w.nodes.len() {
        assert_eq!(
            unattributed(w, n).total(),
            0,
            "node {n}: {:?}",
            unattributed(w, n)
        );
    }
}

#[test]
fn two_gateways_allowed_flows_and_replies_pass() {
    let mut w = world(&two());
    let app = port(&w, EDGE, "acme", "app");
    let cloud = port(&w, DC, "acme", "cloud");
    // The dial-out edge said hello at apply: both ends have a session already.
    assert!(pstats(&w, EDGE, "acme", "dc-1").last_handshake.is_some());
    assert!(pstats(&w, DC, "acme", "edge-1").last_handshake.is_some());

    let flows: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (
            tcp("10.20.1.10", "10.20.100.1", 40000, 443, b"GET /"),
            tcp("10.20.100.1", "10.20.1.10", 443, 40000, b"200 OK"),
        ),
        (
            udp("10.20.1.10", "10.20.100.53", 33333, 53, b"query"),
            udp("10.20.100.53", "10.20.1.10", 53, 33333, b"answer"),
        ),
        (
            udp("10.20.1.10", "10.20.100.9", 1234, 5010, b"telemetry"),
            udp("10.20.100.9", "10.20.1.10", 5010, 1234, b"ack"),
        ),
        (
            ping("10.20.1.10", "10.20.100.1", 7),
            pong("10.20.100.1", "10.20.1.10", 7),
        ),
        (
            tcp("fd20:1::10", "fd20:100::1", 40000, 443, b"GET / v6"),
            tcp("fd20:100::1", "fd20:1::10", 443, 40000, b"200 OK v6"),
        ),
        (
            udp("fd20:1::10", "fd20:100::35", 40001, 53, b"AAAA?"),
            udp("fd20:100::35", "fd20:1::10", 53, 40001, b"AAAA!"),
        ),
        (
            packet("fd20:1::10", "fd20:100::1", 58, 128, 9, b"ping6"),
            packet("fd20:100::1", "fd20:1::10", 58, 129, 9, b"pong6"),
        ),
    ];
    let mut bytes_out = 0;
    let mut bytes_back = 0;
    for (out, back) in &flows {
        send_expect(&mut w, EDGE, app, out, DC, cloud);
        send_expect(&mut w, DC, cloud, back, EDGE, app);
        bytes_out += out.len() as u64;
        bytes_back += back.len() as u64;
    }
    let n = flows.len() as u64;

    let edge = tstats(&w, EDGE, "acme");
    assert_eq!(
        (edge.counters.tx.packets, edge.counters.tx.bytes),
        (n, bytes_out)
    );
    assert_eq!(
        (edge.counters.rx.packets, edge.counters.rx.bytes),
        (n, bytes_back)
    );
    assert_eq!(edge.counters.drops.total(), 0, "{:?}", edge.counters.drops);
    let dc = tstats(&w, DC, "acme");
    assert_eq!(
        (dc.counters.rx.packets, dc.counters.rx.bytes),
        (n, bytes_out)
    );
    assert_eq!(
        (dc.counters.tx.packets, dc.counters.tx.bytes),
        (n, bytes_back)
    );
    assert_eq!(dc.counters.drops.total(), 0, "{:?}", dc.counters.drops);
    // Peer counters add up to the tenant's (one peer each side).
    assert_eq!(pstats(&w, EDGE, "acme", "dc-1").counters, edge.counters);
    assert_eq!(pstats(&w, DC, "acme", "edge-1").counters, dc.counters);
    // Every flow is tracked at both ends.
    assert_eq!(edge.connections, flows.len());
    assert_eq!(dc.connections, flows.len());
    assert_no_unattributed(&w);
}

#[test]
fn two_gateways_denied_flows_are_dropped_and_counted_at_the_sender() {
    let mut w = world(&two());
    let app = port(&w, EDGE, "acme", "app");
    let cloud = port(&w, DC, "acme", "cloud");
    use DropReason::*;

    let mut fragment = udp("10.20.1.10", "10.20.100.1", 1, 53, b"frag");
    fragment[6] = 0x20; // more fragments
    let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
        (
            "wrong port",
            tcp("10.20.1.10", "10.20.100.1", 40000, 22, b"ssh"),
            PolicyDenied,
        ),
        (
            "wrong protocol",
            udp("10.20.1.10", "10.20.100.1", 40000, 443, b"quic"),
            PolicyDenied,
        ),
        (
            "port just outside range",
            udp("10.20.1.10", "10.20.100.1", 1, 5011, b"x"),
            PolicyDenied,
        ),
        (
            "port just below range",
            udp("10.20.1.10", "10.20.100.1", 1, 4999, b"x"),
            PolicyDenied,
        ),
        (
            "other protocol",
            packet("10.20.1.10", "10.20.100.1", 47, 0, 0, b"gre"),
            PolicyDenied,
        ),
        (
            "v6 wrong port",
            tcp("fd20:1::10", "fd20:100::1", 40000, 80, b"x"),
            PolicyDenied,
        ),
        (
            "spoofed neighbour",
            tcp("10.20.1.11", "10.20.100.1", 40000, 443, b"x"),
            SpoofedSource,
        ),
        (
            "spoofed as the cloud",
            tcp("10.20.100.7", "10.20.100.1", 40000, 443, b"x"),
            SpoofedSource,
        ),
        (
            "spoofed v6",
            tcp("fd20:1::11", "fd20:100::1", 40000, 443, b"x"),
            SpoofedSource,
        ),
        (
            "unknown destination",
            tcp("10.20.1.10", "10.99.0.1", 40000, 443, b"x"),
            NoRoute,
        ),
        (
            "unknown v6 destination",
            tcp("fd20:1::10", "fd99::1", 40000, 443, b"x"),
            NoRoute,
        ),
        (
            "to itself",
            tcp("10.20.1.10", "10.20.1.10", 40000, 443, b"x"),
            NoRoute,
        ),
        ("not IP", vec![0x10; 40], Malformed),
        (
            "truncated",
            tcp("10.20.1.10", "10.20.100.1", 40000, 443, b"x")[..30].to_vec(),
            Malformed,
        ),
        ("fragment", fragment, Fragment),
    ];
    for (what, pkt, reason) in &cases {
        eprintln!("case: {what}");
        send_refused(&mut w, EDGE, app, pkt, *reason);
    }
    for reason in [PolicyDenied, SpoofedSource, NoRoute, Malformed, Fragment] {
        let expected = cases.iter().filter(|c| c.2 == reason).count() as u64;
        assert_eq!(drops(&w, EDGE, "acme", reason), expected, "{reason}");
    }
    // Drops the policy attributes to a peer are counted on that peer too.
    assert_eq!(
        pstats(&w, EDGE, "acme", "dc-1")
            .counters
            .drops
            .get(PolicyDenied),
        6
    );
    let edge = tstats(&w, EDGE, "acme");
    assert_eq!(edge.counters.drops.total(), cases.len() as u64);
    assert_eq!(edge.counters.tx.packets, 0);
    assert_eq!(edge.connections, 0, "a denied flow must not be tracked");
    let dc = tstats(&w, DC, "acme");
    assert_eq!(dc.counters.rx.packets, 0);
    assert_eq!(dc.counters.drops.total(), 0);

    // Unsolicited "replies" from the destination side: no tracked flow, so denied at the dc.
    send_refused(
        &mut w,
        DC,
        cloud,
        &tcp("10.20.100.1", "10.20.1.10", 443, 40000, b"x"),
        PolicyDenied,
    );
    send_refused(
        &mut w,
        DC,
        cloud,
        &pong("10.20.100.1", "10.20.1.10", 7),
        PolicyDenied,
    );
    send_refused(
        &mut w,
        DC,
        cloud,
        &udp("fd20:100::35", "fd20:1::10", 53, 40001, b"x"),
        PolicyDenied,
    );
    // The cloud may not open flows toward the app either.
    send_refused(
        &mut w,
        DC,
        cloud,
        &tcp("10.20.100.1", "10.20.1.10", 40000, 443, b"x"),
        PolicyDenied,
    );
    send_refused(
        &mut w,
        DC,
        cloud,
        &ping("10.20.100.1", "10.20.1.10", 7),
        PolicyDenied,
    );
    assert_eq!(drops(&w, DC, "acme", PolicyDenied), 5);

    // A real flow: its reply passes, but a "reply" to another port, from another port, or of
    // another protocol does not.
    send_expect(
        &mut w,
        EDGE,
        app,
        &tcp("10.20.1.10", "10.20.100.1", 40000, 443, b"syn"),
        DC,
        cloud,
    );
    send_refused(
        &mut w,
        DC,
        cloud,
        &tcp("10.20.100.1", "10.20.1.10", 443, 40001, b"x"),
        PolicyDenied,
    );
    send_refused(
        &mut w,
        DC,
        cloud,
        &tcp("10.20.100.1", "10.20.1.10", 444, 40000, b"x"),
        PolicyDenied,
    );
    send_refused(
        &mut w,
        DC,
        cloud,
        &tcp("10.20.100.2", "10.20.1.10", 443, 40000, b"x"),
        PolicyDenied,
    );
    send_refused(
        &mut w,
        DC,
        cloud,
        &udp("10.20.100.1", "10.20.1.10", 443, 40000, b"x"),
        PolicyDenied,
    );
    send_expect(
        &mut w,
        DC,
        cloud,
        &tcp("10.20.100.1", "10.20.1.10", 443, 40000, b"ack"),
        EDGE,
        app,
    );
    assert_eq!(drops(&w, DC, "acme", PolicyDenied), 9);
    assert_eq!(tstats(&w, DC, "acme").counters.drops.total(), 9);
    assert_eq!(
        tstats(&w, EDGE, "acme").counters.drops.total(),
        cases.len() as u64
    );
    assert_eq!(tstats(&w, DC, "acme").counters.rx.packets, 1);
    assert_eq!(tstats(&w, EDGE, "acme").counters.rx.packets, 1);
    assert_no_unattributed(&w);
}

#[test]
fn receiver_enforces_policy_against_a_widened_sender() {
    let topo = two();
    let mut w = world(&topo);
    let app = port(&w, EDGE, "acme", "app");
    let cloud = port(&w, DC, "acme", "cloud");

    // The edge is compromised: its config now lets the app reach any TCP/UDP port and the
    // cloud side answer anything. Same keys, so the session survives.
    let mut wide = topo.clone();
    wide.tenants[0] = wide.tenants[0]
        .clone()
        .allow("app", "cloud", Protocol::Any, &[])
        .allow("cloud", "app", Protocol::Any, &[]);
    let report = w.apply(EDGE, &wide.compile(EDGE)).unwrap();
    assert_eq!(report.sessions_kept, 1);

    let sneaky = [
        tcp("10.20.1.10", "10.20.100.1", 40000, 22, b"ssh"),
        udp("10.20.1.10", "10.20.100.1", 40000, 443, b"quic"),
        packet("10.20.1.10", "10.20.100.1", 47, 0, 0, b"gre"),
        tcp("fd20:1::10", "fd20:100::1", 40000, 8080, b"v6"),
    ];
    for p in &sneaky {
        send_undelivered(&mut w, EDGE, app, p);
    }
    assert_eq!(drops(&w, DC, "acme", DropReason::PolicyDenied), 4);
    assert_eq!(
        pstats(&w, DC, "acme", "edge-1")
            .counters
            .drops
            .get(DropReason::PolicyDenied),
        4
    );
    assert_eq!(tstats(&w, DC, "acme").counters.rx.packets, 0);
    assert_eq!(
        tstats(&w, DC, "acme").connections,
        0,
        "denied flows are not tracked"
    );
    // The compromised edge happily sent them.
    assert_eq!(tstats(&w, EDGE, "acme").counters.tx.packets, 4);
    assert_eq!(tstats(&w, EDGE, "acme").counters.drops.total(), 0);
    // What the real policy allows still passes.
    send_expect(
        &mut w,
        EDGE,
        app,
        &tcp("10.20.1.10", "10.20.100.1", 40000, 443, b"ok"),
        DC,
        cloud,
    );

    // Now the dc is the compromised one: it lets the cloud open flows to the app. The honest
    // edge (back on the real config) refuses them.
    w.apply(EDGE, &topo.compile(EDGE)).unwrap();
    w.apply(DC, &wide.compile(DC)).unwrap();
    send_undelivered(
        &mut w,
        DC,
        cloud,
        &tcp("10.20.100.1", "10.20.1.10", 40000, 22, b"x"),
    );
    send_undelivered(&mut w, DC, cloud, &ping("10.20.100.1", "10.20.1.10", 3));
    send_undelivered(
        &mut w,
        DC,
        cloud,
        &tcp("10.20.100.1", "10.20.1.10", 443, 40001, b"x"),
    );
    assert_eq!(drops(&w, EDGE, "acme", DropReason::PolicyDenied), 3);
    assert_eq!(
        pstats(&w, EDGE, "acme", "dc-1")
            .counters
            .drops
            .get(DropReason::PolicyDenied),
        3
    );
    assert_eq!(tstats(&w, EDGE, "acme").counters.rx.packets, 0);
    assert_no_unattributed(&w);
}

#[test]
fn receiver_drops_sources_a_compromised_sender_does_not_own() {
    let topo = two();
    let mut w = world(&topo);
    let app = port(&w, EDGE, "acme", "app");

    // Compromised edge #1: the app may now send from its whole /24 and from the cloud's
    // address 10.20.100.5 (the cloud endpoint shrunk to make room).
    let mut bad = topo.clone();
    bad.tenants[0].endpoints[0].2 = ["10.20.1.0/24", "10.20.100.5/32", "fd20:1::/64"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    bad.tenants[0].endpoints[1].2 = ["10.20.100.0/30", "fd20:100::/64"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(w.apply(EDGE, &bad.compile(EDGE)).unwrap().sessions_kept, 1);

    send_undelivered(
        &mut w,
        EDGE,
        app,
        &tcp("10.20.1.11", "10.20.100.1", 40000, 443, b"x"),
    );
    send_undelivered(
        &mut w,
        EDGE,
        app,
        &tcp("10.20.100.5", "10.20.100.1", 40000, 443, b"x"),
    );
    send_undelivered(
        &mut w,
        EDGE,
        app,
        &tcp("fd20:1::99", "fd20:100::1", 40000, 443, b"x"),
    );
    assert_eq!(drops(&w, DC, "acme", DropReason::SpoofedSource), 3);
    assert_eq!(
        pstats(&w, DC, "acme", "edge-1")
            .counters
            .drops
            .get(DropReason::SpoofedSource),
        3
    );
    assert_eq!(tstats(&w, DC, "acme").counters.drops.total(), 3);
    assert_eq!(tstats(&w, DC, "acme").counters.rx.packets, 0);
    assert_eq!(tstats(&w, DC, "acme").connections, 0);
    assert_eq!(tstats(&w, EDGE, "acme").counters.tx.packets, 3);
    // The genuine address still works through the compromised config.
    let cloud = port(&w, DC, "acme", "cloud");
    send_expect(
        &mut w,
        EDGE,
        app,
        &tcp("10.20.1.10", "10.20.100.1", 40000, 443, b"ok"),
        DC,
        cloud,
    );

    // Compromised edge #2: claims a destination the dc does not route for this tenant.
    let mut ghost = topo.clone();
    ghost.tenants[0] = ghost.tenants[0]
        .clone()
        .endpoint("ghost", DC, &["10.20.200.0/24"])
        .allow("app", "ghost", Protocol::Any, &[]);
    w.apply(EDGE, &ghost.compile(EDGE)).unwrap();
    send_undelivered(
        &mut w,
        EDGE,
        app,
        &tcp("10.20.1.10", "10.20.200.1", 40000, 443, b"x"),
    );
    assert_eq!(drops(&w, DC, "acme", DropReason::NoRoute), 1);
    assert_no_unattributed(&w);
}

/// edge-1 hosts two tenants with the very same addresses; alpha's cloud is on dc-1, beta's
/// on dc-2 (same prefix), and beta also has a "metrics" endpoint on dc-1.
fn three() -> Topology {
    Topology {
        gateways: vec![
            ("edge-1".into(), None),
            ("dc-1".into(), Some(addr("192.0.2.1:51820"))),
            ("dc-2".into(), Some(addr("198.51.100.7:51820"))),
        ],
        tenants: vec![
            TenantSpec::new("alpha", 3)
                .endpoint("app", EDGE, &["10.0.0.10/32", "fd00::10/128"])
                .endpoint("cloud", DC, &["10.1.0.0/24", "fd01::/64"])
                .allow("app", "cloud", Protocol::Tcp, &[(443, 443)])
                .allow("app", "cloud", Protocol::Icmp, &[]),
            TenantSpec::new("beta", 3)
                .endpoint("app", EDGE, &["10.0.0.10/32", "fd00::10/128"])
                .endpoint("cloud", DC2, &["10.1.0.0/24", "fd01::/64"])
                .endpoint("metrics", DC, &["10.2.0.0/24"])
                .allow("app", "cloud", Protocol::Udp, &[(9000, 9000)])
                .allow("app", "cloud", Protocol::Icmp, &[])
                .allow("app", "metrics", Protocol::Tcp, &[(443, 443)]),
        ],
    }
}

#[test]
fn three_gateways_overlapping_tenants_stay_apart() {
    let mut w = world(&three());
    let a_app = port(&w, EDGE, "alpha", "app");
    let b_app = port(&w, EDGE, "beta", "app");
    let a_cloud = port(&w, DC, "alpha", "cloud");
    let b_metrics = port(&w, DC, "beta", "metrics");
    let b_cloud = port(&w, DC2, "beta", "cloud");
    assert_ne!(a_app, b_app);
    assert!(
        w.nodes[DC2].engine.public_key("alpha").is_none(),
        "dc-2 does not serve alpha"
    );
    use DropReason::*;

    // The same TCP packet from both tenants: alpha's reaches alpha's cloud on dc-1, beta's is
    // denied at the edge (beta may only use UDP 9000 toward its cloud).
    let syn = tcp("10.0.0.10", "10.1.0.1", 40000, 443, b"syn");
    send_expect(&mut w, EDGE, a_app, &syn, DC, a_cloud);
    send_refused(&mut w, EDGE, b_app, &syn, PolicyDenied);
    // And the other way round for UDP 9000.
    let dgram = udp("10.0.0.10", "10.1.0.1", 5555, 9000, b"dgram");
    send_expect(&mut w, EDGE, b_app, &dgram, DC2, b_cloud);
    send_refused(&mut w, EDGE, a_app, &dgram, PolicyDenied);
    // beta's metrics on dc-1 are beta's only: alpha has no route there.
    let m = tcp("10.0.0.10", "10.2.0.1", 40002, 443, b"metrics");
    send_expect(&mut w, EDGE, b_app, &m, DC, b_metrics);
    send_refused(&mut w, EDGE, a_app, &m, NoRoute);

    // Identical pings from both tenants, identical pongs back: each lands in its own tenant.
    for (v6, id) in [(false, 77u16), (true, 78)] {
        let (ping_p, pong_p) = if v6 {
            (
                packet("fd00::10", "fd01::1", 58, 128, id, b"ping6"),
                packet("fd01::1", "fd00::10", 58, 129, id, b"pong6"),
            )
        } else {
            (
                ping("10.0.0.10", "10.1.0.1", id),
                pong("10.1.0.1", "10.0.0.10", id),
            )
        };
        send_expect(&mut w, EDGE, a_app, &ping_p, DC, a_cloud);
        send_expect(&mut w, EDGE, b_app, &ping_p, DC2, b_cloud);
        send_expect(&mut w, DC, a_cloud, &pong_p, EDGE, a_app);
        send_expect(&mut w, DC2, b_cloud, &pong_p, EDGE, b_app);
    }

    // Replies go home.
    send_expect(
        &mut w,
        DC,
        a_cloud,
        &tcp("10.1.0.1", "10.0.0.10", 443, 40000, b"synack"),
        EDGE,
        a_app,
    );
    send_expect(
        &mut w,
        DC2,
        b_cloud,
        &udp("10.1.0.1", "10.0.0.10", 9000, 5555, b"re"),
        EDGE,
        b_app,
    );
    send_expect(
        &mut w,
        DC,
        b_metrics,
        &tcp("10.2.0.1", "10.0.0.10", 443, 40002, b"m"),
        EDGE,
        b_app,
    );
    // Conntrack is per tenant: alpha's TCP flow does not let beta's cloud "reply" to it.
    send_refused(
        &mut w,
        DC2,
        b_cloud,
        &tcp("10.1.0.1", "10.0.0.10", 443, 40000, b"x"),
        PolicyDenied,
    );
    // Nor does beta's UDP flow let alpha's cloud answer it.
    send_refused(
        &mut w,
        DC,
        a_cloud,
        &udp("10.1.0.1", "10.0.0.10", 9000, 5555, b"x"),
        PolicyDenied,
    );

    // Counters, at each end.
    let ea = tstats(&w, EDGE, "alpha");
    let eb = tstats(&w, EDGE, "beta");
    assert_eq!((ea.counters.tx.packets, ea.counters.rx.packets), (3, 3));
    assert_eq!((eb.counters.tx.packets, eb.counters.rx.packets), (4, 4));
    assert_eq!(ea.counters.drops.get(PolicyDenied), 1);
    assert_eq!(ea.counters.drops.get(NoRoute), 1);
    assert_eq!(ea.counters.drops.total(), 2);
    assert_eq!(eb.counters.drops.get(PolicyDenied), 1);
    assert_eq!(eb.counters.drops.total(), 1);
    let d1a = tstats(&w, DC, "alpha");
    let d1b = tstats(&w, DC, "beta");
    let d2b = tstats(&w, DC2, "beta");
    assert_eq!((d1a.counters.rx.packets, d1a.counters.tx.packets), (3, 3));
    assert_eq!((d1b.counters.rx.packets, d1b.counters.tx.packets), (1, 1));
    assert_eq!((d2b.counters.rx.packets, d2b.counters.tx.packets), (3, 3));
    assert_eq!(d1a.counters.drops.get(PolicyDenied), 1);
    assert_eq!(d1b.counters.drops.total(), 0);
    assert_eq!(d2b.counters.drops.get(PolicyDenied), 1);
    // Per-peer counters on the edge: beta's traffic split between its two peers.
    assert_eq!(pstats(&w, EDGE, "beta", "dc-1").counters.tx.packets, 1);
    assert_eq!(pstats(&w, EDGE, "beta", "dc-2").counters.tx.packets, 3);
    assert_no_unattributed(&w);
}

#[test]
fn three_gateways_receiver_rejects_a_compromised_destination_gateway() {
    let topo = three();
    let mut w = world(&topo);
    let b_cloud = port(&w, DC2, "beta", "cloud");

    // dc-2 is compromised: beta's cloud claims 10.2.0.5 (which is beta's metrics, behind
    // dc-1) and may send anything to the app and to metrics.
    let mut bad = topo.clone();
    bad.tenants[1].endpoints[1]
        .2
        .push("10.2.0.5/32".parse().unwrap());
    bad.tenants[1] = bad.tenants[1]
        .clone()
        .allow("cloud", "app", Protocol::Any, &[])
        .allow("cloud", "metrics", Protocol::Any, &[]);
    // Compiling for dc-2 now includes metrics, which overlaps the widened cloud: shrink it
    // there and pretend it sits behind the edge, to try transit through the edge (a
    // compromised gateway can write anything).
    let mut cfg = bad.compile(DC2);
    let beta = cfg.tenants.iter_mut().find(|t| t.name == "beta").unwrap();
    let edge_peer = beta.peers.iter().position(|p| p.name == "edge-1").unwrap();
    for e in &mut beta.endpoints {
        if e.name == "metrics" {
            e.prefixes = vec!["10.2.0.128/25".parse().unwrap()];
            e.location = dataplane::config::Location::Peer(edge_peer);
        }
    }
    w.apply(DC2, &cfg).unwrap();

    // Spoofing metrics' address: the edge drops it, it did not come from dc-1.
    send_undelivered(
        &mut w,
        DC2,
        b_cloud,
        &tcp("10.2.0.5", "10.0.0.10", 443, 1, b"x"),
    );
    assert_eq!(drops(&w, EDGE, "beta", DropReason::SpoofedSource), 1);
    assert_eq!(
        pstats(&w, EDGE, "beta", "dc-2")
            .counters
            .drops
            .get(DropReason::SpoofedSource),
        1
    );
    // Opening a flow the policy does not allow: denied at the edge.
    send_undelivered(
        &mut w,
        DC2,
        b_cloud,
        &tcp("10.1.0.1", "10.0.0.10", 1, 22, b"x"),
    );
    assert_eq!(drops(&w, EDGE, "beta", DropReason::PolicyDenied), 1);
    // Transit through the edge toward metrics (behind dc-1): no route from the WAN.
    send_undelivered(
        &mut w,
        DC2,
        b_cloud,
        &tcp("10.1.0.1", "10.2.0.200", 1, 443, b"x"),
    );
    assert_eq!(drops(&w, EDGE, "beta", DropReason::NoRoute), 1);
    assert_eq!(tstats(&w, EDGE, "beta").counters.rx.packets, 0);
    assert_eq!(tstats(&w, DC, "beta").counters.rx.packets, 0);
    // alpha, with the same addresses on the same edge, saw nothing at all.
    let ea = tstats(&w, EDGE, "alpha");
    assert_eq!(ea.counters.rx.packets + ea.counters.drops.total(), 0);
    assert_no_unattributed(&w);
}
