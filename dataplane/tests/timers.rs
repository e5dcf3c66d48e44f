//! Time, on the virtual clock: rekeys, keepalives, endpoint learning and roaming, and
//! connection-tracking expiry.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::time::Duration;

use dataplane::config::Protocol;
use dataplane::engine::{DropReason, ICMP_IDLE, TCP_IDLE, UDP_IDLE};
use dataplane::sim::{TenantSpec, Topology, World};

mod common;
use common::*;

const EDGE: usize = 0;
const DC: usize = 1;
const DC_ADDR: &str = "192.0.2.1:51820";
const EDGE_ADDR: &str = "100.64.0.0:40000";
const SECOND: Duration = Duration::from_secs(1);

fn topo() -> Topology {
    Topology {
        gateways: vec![
            ("edge-1".into(), None),
            ("dc-1".into(), Some(addr(DC_ADDR))),
        ],
        tenants: vec![
            TenantSpec::new("alpha", 2)
                .endpoint("app", EDGE, &["10.0.0.10/32"])
                .endpoint("svc", DC, &["10.1.0.0/24"])
                .allow("app", "svc", Protocol::Tcp, &[(443, 443)])
                .allow("app", "svc", Protocol::Udp, &[(53, 53)])
                .allow("app", "svc", Protocol::Icmp, &[]),
        ],
    }
}

fn handshake_inits(w: &World, from: usize) -> Vec<usize> {
    (from..w.captured.len())
        .filter(|&i| msg_type(&w.captured[i].data) == 1)
        .collect()
}

#[test]
fn rekeys_after_two_minutes_without_losing_a_packet() {
    let mut w = topo().world().unwrap();
    w.capture = true;
    w.run();
    let app = port(&w, EDGE, "alpha", "app");
    let svc = port(&w, DC, "alpha", "svc");
    let mark = w.captured.len();
    let mut max_age = Duration::ZERO;
    let secs = 400u16;
    for i in 0..secs {
        send_expect(
            &mut w,
            EDGE,
            app,
            &tcp("10.0.0.10", "10.1.0.1", 40000, 443, &i.to_be_bytes()),
            DC,
            svc,
        );
        send_expect(
            &mut w,
            DC,
            svc,
            &tcp("10.1.0.1", "10.0.0.10", 443, 40000, &i.to_be_bytes()),
            EDGE,
            app,
        );
        w.advance(SECOND);
        let age = pstats(&w, EDGE, "alpha", "dc-1").last_handshake.unwrap();
        max_age = max_age.max(age);
    }
    let inits = handshake_inits(&w, mark);
    // REKEY_AFTER_TIME is 120 s: a new handshake every ~2 minutes, three in 400 s.
    assert!(
        (3..=4).contains(&inits.len()),
        "{} handshakes in {secs} s",
        inits.len()
    );
    assert!(
        max_age < Duration::from_secs(130),
        "a session got {max_age:?} old"
    );
    let n = u64::from(secs);
    for node in [EDGE, DC] {
        let c = tstats(&w, node, "alpha").counters;
        assert_eq!((c.tx.packets, c.rx.packets), (n, n), "node {node}");
        assert_eq!(c.drops.total(), 0, "node {node}: {:?}", c.drops);
        assert_eq!(unattributed(&w, node).total(), 0);
    }
}

#[test]
fn rekeys_when_only_the_responder_talks() {
    let mut w = topo().world().unwrap();
    w.capture = true;
    w.run();
    let app = port(&w, EDGE, "alpha", "app");
    let svc = port(&w, DC, "alpha", "svc");
    // One request opens the flow; then only the dc (the handshake's responder) sends.
    send_expect(
        &mut w,
        EDGE,
        app,
        &udp("10.0.0.10", "10.1.0.53", 5353, 53, b"subscribe"),
        DC,
        svc,
    );
    let mark = w.captured.len();
    for i in 0..400u16 {
        send_expect(
            &mut w,
            DC,
            svc,
            &udp("10.1.0.53", "10.0.0.10", 53, 5353, &i.to_be_bytes()),
            EDGE,
            app,
        );
        w.advance(SECOND);
    }
    assert!(
        !handshake_inits(&w, mark).is_empty(),
        "the session was never renewed"
    );
    assert!(pstats(&w, DC, "alpha", "edge-1").last_handshake.unwrap() < Duration::from_secs(180));
    assert_eq!(tstats(&w, EDGE, "alpha").counters.rx.packets, 400);
    assert_eq!(tstats(&w, EDGE, "alpha").counters.drops.total(), 0);
    assert_eq!(tstats(&w, DC, "alpha").counters.drops.total(), 0);
}

#[test]
fn dial_out_keepalives_and_endpoint_learning() {
    let mut w = topo().world().unwrap();
    w.capture = true;
    // Before the edge's first hello arrives the dc cannot know where it is.
    assert_eq!(pstats(&w, DC, "alpha", "edge-1").endpoint, None);
    let svc = port(&w, DC, "alpha", "svc");
    let app = port(&w, EDGE, "alpha", "app");
    w.run();
    assert_eq!(
        pstats(&w, DC, "alpha", "edge-1").endpoint,
        Some(addr(EDGE_ADDR))
    );
    assert_eq!(
        pstats(&w, EDGE, "alpha", "dc-1").endpoint,
        Some(addr(DC_ADDR))
    );
    // A TCP flow (idle limit 30 min) opened now and answered after a long silence.
    send_expect(
        &mut w,
        EDGE,
        app,
        &tcp("10.0.0.10", "10.1.0.1", 40000, 443, b"open"),
        DC,
        svc,
    );

    // Idle for 10 minutes: the edge keeps the NAT mapping warm every 25 s.
    let mut last_from_edge = w.now();
    let mut worst_gap = Duration::ZERO;
    let mut seen = w.captured.len();
    for _ in 0..(600 * 4) {
        w.advance(Duration::from_millis(250));
        if w.captured[seen..]
            .iter()
            .any(|d| d.from == addr(EDGE_ADDR) && d.to == addr(DC_ADDR))
        {
            worst_gap = worst_gap.max(w.now() - last_from_edge);
            last_from_edge = w.now();
        }
        seen = w.captured.len();
    }
    worst_gap = worst_gap.max(w.now() - last_from_edge);
    assert!(
        worst_gap <= Duration::from_secs(26),
        "the edge went quiet for {worst_gap:?}"
    );
    assert!(
        w.take_delivered().is_empty(),
        "keepalives are not delivered"
    );
    assert_eq!(tstats(&w, DC, "alpha").counters.drops.total(), 0);
    assert_eq!(unattributed(&w, DC).total(), 0);
    // The dc can still answer the old flow: it knows where the edge is.
    send_expect(
        &mut w,
        DC,
        svc,
        &tcp("10.1.0.1", "10.0.0.10", 443, 40000, b"late"),
        EDGE,
        app,
    );
}

fn move_edge(w: &mut World, to: &str) {
    w.nodes[EDGE].addr = addr(to);
}

#[test]
fn dc_follows_the_edge_when_it_moves() {
    let mut w = topo().world().unwrap();
    w.run();
    let app = port(&w, EDGE, "alpha", "app");
    let svc = port(&w, DC, "alpha", "svc");
    send_expect(
        &mut w,
        EDGE,
        app,
        &tcp("10.0.0.10", "10.1.0.1", 40000, 443, b"1"),
        DC,
        svc,
    );

    // New WAN address (a new cellular session). Until the edge speaks, the dc answers the
    // old address, and that is lost.
    move_edge(&mut w, "100.64.9.9:41000");
    let lost = w.lost;
    send_undelivered(
        &mut w,
        DC,
        svc,
        &tcp("10.1.0.1", "10.0.0.10", 443, 40000, b"to old"),
    );
    assert_eq!(w.lost, lost + 1);
    // One authenticated packet from the new address and the dc follows.
    send_expect(
        &mut w,
        EDGE,
        app,
        &tcp("10.0.0.10", "10.1.0.1", 40000, 443, b"2"),
        DC,
        svc,
    );
    assert_eq!(
        pstats(&w, DC, "alpha", "edge-1").endpoint,
        Some(addr("100.64.9.9:41000"))
    );
    send_expect(
        &mut w,
        DC,
        svc,
        &tcp("10.1.0.1", "10.0.0.10", 443, 40000, b"to new"),
        EDGE,
        app,
    );

    // Moving again, silently: the next persistent keepalive is enough.
    move_edge(&mut w, "100.64.7.7:42000");
    w.advance(Duration::from_secs(26));
    assert_eq!(
        pstats(&w, DC, "alpha", "edge-1").endpoint,
        Some(addr("100.64.7.7:42000"))
    );
    send_expect(
        &mut w,
        DC,
        svc,
        &tcp("10.1.0.1", "10.0.0.10", 443, 40000, b"again"),
        EDGE,
        app,
    );
    assert_eq!(tstats(&w, DC, "alpha").counters.drops.total(), 0);
    assert_eq!(tstats(&w, EDGE, "alpha").counters.drops.total(), 0);
}

#[test]
fn roaming_off_pins_the_learned_endpoint() {
    let t = topo();
    let mut w = t.world().unwrap();
    w.run();
    let mut cfg = t.compile(DC);
    for p in &mut cfg.tenants[0].peers {
        p.roaming = false;
    }
    assert_eq!(w.apply(DC, &cfg).unwrap().sessions_kept, 1);
    let app = port(&w, EDGE, "alpha", "app");
    let svc = port(&w, DC, "alpha", "svc");
    move_edge(&mut w, "100.64.9.9:41000");
    // The edge's packets are still accepted (they are authenticated)...
    send_expect(
        &mut w,
        EDGE,
        app,
        &tcp("10.0.0.10", "10.1.0.1", 40000, 443, b"1"),
        DC,
        svc,
    );
    // ...but the dc keeps answering where it first learned the edge to be.
    assert_eq!(
        pstats(&w, DC, "alpha", "edge-1").endpoint,
        Some(addr(EDGE_ADDR))
    );
    let lost = w.lost;
    send_undelivered(
        &mut w,
        DC,
        svc,
        &tcp("10.1.0.1", "10.0.0.10", 443, 40000, b"x"),
    );
    assert_eq!(w.lost, lost + 1);
}

#[test]
fn tracked_connections_expire_after_their_idle_time() {
    let t = topo();
    let mut w = t.world().unwrap();
    w.run();
    let app = port(&w, EDGE, "alpha", "app");
    let svc = port(&w, DC, "alpha", "svc");
    let ping_p = ping("10.0.0.10", "10.1.0.1", 1);
    let pong_p = pong("10.1.0.1", "10.0.0.10", 1);
    let q = udp("10.0.0.10", "10.1.0.53", 5353, 53, b"q");
    let a = udp("10.1.0.53", "10.0.0.10", 53, 5353, b"a");
    let syn = tcp("10.0.0.10", "10.1.0.1", 40000, 443, b"syn");
    let ack = tcp("10.1.0.1", "10.0.0.10", 443, 40000, b"ack");
    send_expect(&mut w, EDGE, app, &ping_p, DC, svc);
    send_expect(&mut w, EDGE, app, &q, DC, svc);
    send_expect(&mut w, EDGE, app, &syn, DC, svc);
    assert_eq!(tstats(&w, DC, "alpha").connections, 3);

    // Jumps to `t` after the flows opened.
    let t0 = w.now();
    let at = |w: &mut World, t: Duration| {
        let now = w.now() - t0;
        assert!(t >= now);
        w.advance(t - now);
    };
    // Just inside ICMP's idle time the echo reply passes (and refreshes the entry); a second
    // past the refreshed idle time, it does not.
    at(&mut w, ICMP_IDLE - SECOND);
    send_expect(&mut w, DC, svc, &pong_p, EDGE, app);
    at(&mut w, 2 * ICMP_IDLE);
    send_refused(&mut w, DC, svc, &pong_p, DropReason::PolicyDenied);
    // UDP: an answer refreshes the entry, silence ends it.
    at(&mut w, UDP_IDLE - SECOND);
    send_expect(&mut w, DC, svc, &a, EDGE, app);
    at(&mut w, 2 * UDP_IDLE - 2 * SECOND);
    send_expect(&mut w, DC, svc, &a, EDGE, app);
    at(&mut w, 3 * UDP_IDLE);
    send_refused(&mut w, DC, svc, &a, DropReason::PolicyDenied);
    // TCP lasts longest, but not forever. The sweep removes expired entries at both ends.
    at(&mut w, TCP_IDLE - SECOND);
    send_expect(&mut w, DC, svc, &ack, EDGE, app);
    at(&mut w, 2 * TCP_IDLE);
    send_refused(&mut w, DC, svc, &ack, DropReason::PolicyDenied);
    w.advance(Duration::from_secs(11));
    assert_eq!(tstats(&w, DC, "alpha").connections, 0);
    assert_eq!(tstats(&w, EDGE, "alpha").connections, 0);
    assert_eq!(drops(&w, DC, "alpha", DropReason::PolicyDenied), 3);

    // The edge enforces expiry on its own: a compromised dc that lets the svc send echo
    // replies regardless gets them refused by the edge, whose entry expired too.
    let mut wide = t.clone();
    wide.tenants[0] = wide.tenants[0]
        .clone()
        .allow("svc", "app", Protocol::Icmp, &[]);
    w.apply(DC, &wide.compile(DC)).unwrap();
    send_undelivered(&mut w, DC, svc, &pong_p);
    assert_eq!(drops(&w, EDGE, "alpha", DropReason::PolicyDenied), 1);

    // After all that silence, new flows still work (new handshake and all).
    send_expect(&mut w, EDGE, app, &syn, DC, svc);
    send_expect(&mut w, DC, svc, &ack, EDGE, app);
}

/// Packets sent before the first handshake completes wait in boringtun's queue, which holds
/// 256 and silently discards the rest. Every drop should have a reason and a counter
/// (DESIGN.md §2.6), and `tx` should not count packets that never left.
#[test]
fn packets_queued_before_the_handshake_are_all_accounted_for() {
    let mut w = topo().world().unwrap();
    w.lose_wire(); // the edge's first hello is lost: the handshake stays pending
    let app = port(&w, EDGE, "alpha", "app");
    let n = 300u16;
    for i in 0..n {
        let _ = w.send_app(EDGE, app, &udp("10.0.0.10", "10.1.0.53", i, 53, b"early"));
    }
    w.lose_wire();
    w.advance(Duration::from_secs(6)); // REKEY_TIMEOUT retry: handshake, queue released
    let delivered = w.take_delivered().len() as u64;
    let edge = tstats(&w, EDGE, "alpha").counters;
    assert_eq!(delivered + edge.drops.total(), u64::from(n), "{edge:?}");
    assert_eq!(edge.tx.packets, delivered, "{edge:?}");
}
