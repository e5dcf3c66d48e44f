//! Key rotation while traffic flows: make-before-break.
//!
//! The two gateways of a pair apply a rotated key seconds apart; until both have, no new
//! handshake can complete. The old session retires instead of ending, so not one app packet
//! is lost, and it ends once the new session carries data (or at its deadline). Revocation
//! (a peer or tenant removed) still cuts off at once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::time::Duration;

use dataplane::SecretKey;
use dataplane::config::{EndpointConfig, EngineConfig, Location, PortRange, Protocol, RuleConfig};
use dataplane::engine::{
    AppOutcome, ApplyReport, DropReason, PortId, RETIRE_DEADLINE, TICK, WanOutcome,
};
use dataplane::sim::{Datagram, TenantSpec, Topology, World};

mod common;
use common::*;

/// Virtual time between two rounds of traffic.
const ROUND: Duration = Duration::from_millis(10);

fn alpha() -> TenantSpec {
    TenantSpec::new("alpha", 2)
        .endpoint("app", EDGE, &["10.0.0.10/32"])
        .endpoint("svc", DC, &["10.1.0.0/24"])
        .allow("app", "svc", Protocol::Udp, &[(5000, 5000)])
        .allow("svc", "app", Protocol::Udp, &[(6000, 6000)])
}

fn beta() -> TenantSpec {
    TenantSpec::new("beta", 2)
        .endpoint("db", EDGE, &["10.9.0.10/32"])
        .endpoint("svc", DC, &["10.1.0.0/24"])
        .allow("db", "svc", Protocol::Udp, &[(5000, 5000)])
}

fn with_psk(mut c: EngineConfig, tenant: &str, psk: &SecretKey) -> EngineConfig {
    for t in c.tenants.iter_mut().filter(|t| t.name == tenant) {
        for p in &mut t.peers {
            p.preshared_key = Some(psk.clone());
        }
    }
    c
}

fn retiring(w: &World, node: usize) -> usize {
    w.nodes[node].engine.retiring().count()
}

/// The address the dial-out edge has on the virtual WAN.
fn edge_addr(w: &World) -> std::net::SocketAddr {
    w.nodes[EDGE].addr
}

/// alpha's traffic: one datagram each way per round, every one accounted for.
struct Traffic {
    app: PortId,
    svc: PortId,
    up: u32,
    down: u32,
    got_up: Vec<u32>,
    got_down: Vec<u32>,
}

fn seq(packet: &[u8]) -> u32 {
    let b = &packet[28..32];
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Traffic {
    fn new(w: &World) -> Self {
        Traffic {
            app: port(w, EDGE, "alpha", "app"),
            svc: port(w, DC, "alpha", "svc"),
            up: 0,
            down: 0,
            got_up: Vec::new(),
            got_down: Vec::new(),
        }
    }

    fn collect(&mut self, w: &mut World) {
        for d in w.take_delivered() {
            match (d.node, d.port) {
                (DC, p) if p == self.svc => self.got_up.push(seq(&d.packet)),
                (EDGE, p) if p == self.app => self.got_down.push(seq(&d.packet)),
                _ => panic!("delivered to an unexpected place: {d:?}"),
            }
        }
    }

    /// One datagram each way, then `ROUND` of virtual time.
    fn round(&mut self, w: &mut World) {
        let up = udp("10.0.0.10", "10.1.0.1", 5555, 5000, &self.up.to_be_bytes());
        let o = w.send_app(EDGE, self.app, &up);
        assert!(
            matches!(o, AppOutcome::Send(_)),
            "edge did not send at once: {o:?}"
        );
        self.up += 1;
        let down = udp(
            "10.1.0.1",
            "10.0.0.10",
            6666,
            6000,
            &self.down.to_be_bytes(),
        );
        let o = w.send_app(DC, self.svc, &down);
        assert!(
            matches!(o, AppOutcome::Send(_)),
            "dc did not send at once: {o:?}"
        );
        self.down += 1;
        w.run();
        self.collect(w);
        w.advance(ROUND);
        self.collect(w);
    }

    fn rounds(&mut self, w: &mut World, d: Duration) {
        let n = d.as_millis() / ROUND.as_millis();
        for _ in 0..n {
            self.round(w);
        }
    }

    /// Every datagram sent so far arrived, once, in order.
    fn assert_none_lost(&self) {
        assert_eq!(self.got_up, (0..self.up).collect::<Vec<_>>(), "edge → dc");
        assert_eq!(
            self.got_down,
            (0..self.down).collect::<Vec<_>>(),
            "dc → edge"
        );
    }
}

/// Drops that would mean an app packet of alpha was lost on the way in. With `psk_changed`,
/// a handshake may fail to decrypt: the side that has not applied yet answers an initiation
/// under the old preshared key (a handshake drop, not a data one).
fn assert_no_data_drops(w: &World, psk_changed: bool) {
    for node in [EDGE, DC] {
        if !psk_changed {
            assert_eq!(drops(w, node, "alpha", DropReason::DecryptFailed), 0);
        }
        for reason in [
            DropReason::NoSession,
            DropReason::Replay,
            DropReason::SpoofedSource,
            DropReason::PolicyDenied,
            DropReason::NoRoute,
            DropReason::QueueFull,
            DropReason::HandshakeTimeout,
        ] {
            assert_eq!(
                drops(w, node, "alpha", reason),
                0,
                "node {node}: {reason:?}"
            );
        }
        assert_eq!(unattributed(w, node).get(DropReason::UnknownIndex), 0);
    }
}

/// The last data datagram `from` sent to `to` (captured).
fn last_data(w: &World, from: std::net::SocketAddr, to: std::net::SocketAddr) -> Datagram {
    w.captured
        .iter()
        .rev()
        .find(|d| d.from == from && d.to == to && msg_type(&d.data) == 4)
        .cloned()
        .expect("a captured data datagram")
}

/// An established world with steady traffic; capturing the wire.
fn established(t: &Topology) -> (World, Traffic) {
    let mut w = t.world().unwrap();
    w.run();
    w.capture = true;
    let mut tr = Traffic::new(&w);
    tr.rounds(&mut w, Duration::from_secs(1));
    tr.assert_none_lost();
    (w, tr)
}

fn assert_rotated(r: &ApplyReport) {
    assert_eq!(
        (
            r.sessions_kept,
            r.sessions_new,
            r.sessions_retiring,
            r.sessions_dropped
        ),
        (0, 1, 1, 0),
        "{r:?}"
    );
}

/// Rotates alpha (`change` on the topology), applying on `first` and `gap` later on the other
/// node, with traffic throughout; checks that nothing was lost, that a new handshake completed
/// and that the old sessions were retired.
fn rotate(
    change: impl FnOnce(&mut Topology) -> [EngineConfig; 2],
    first: usize,
    gap: Duration,
    psk_changed: bool,
) {
    let mut t = edge_dc(vec![alpha()]);
    let (mut w, mut tr) = established(&t);
    let before = w.captured.len();
    // A datagram on the old session each way, to replay after retirement.
    let old_down = last_data(&w, w.nodes[DC].addr, edge_addr(&w));
    let old_up = last_data(&w, edge_addr(&w), w.nodes[DC].addr);

    let cfgs = change(&mut t);
    let second = 1 - first;
    let r = w.apply(first, &cfgs[first]).unwrap();
    assert_rotated(&r);
    assert_eq!(retiring(&w, first), 1);
    tr.rounds(&mut w, gap);
    // Until the other side applies, the old session carries everything.
    assert_eq!(retiring(&w, first), 1);
    let r = w.apply(second, &cfgs[second]).unwrap();
    assert_rotated(&r);
    let applied = w.now();
    tr.rounds(&mut w, Duration::from_millis(500));
    // The new sessions carried data both ways: both old ones ended.
    assert_eq!((retiring(&w, EDGE), retiring(&w, DC)), (0, 0));
    tr.rounds(&mut w, Duration::from_secs(12));
    tr.assert_none_lost();
    assert_no_data_drops(&w, psk_changed);

    // A new handshake completed after the second apply, at both ends.
    let since = w.now() - applied;
    for (node, peer) in [(EDGE, "dc-1"), (DC, "edge-1")] {
        let age = pstats(&w, node, "alpha", peer).last_handshake.unwrap();
        // (boringtun stamps a handshake with the time of its last timer tick)
        assert!(
            age <= since + TICK,
            "node {node}: no new handshake ({age:?})"
        );
    }
    let handshakes = w.captured[before..]
        .iter()
        .filter(|d| msg_type(&d.data) == 2)
        .count();
    assert!(handshakes >= 1);

    // The old session's indices are free: a packet on it no longer demuxes.
    for (node, d) in [(EDGE, old_down), (DC, old_up)] {
        let unknown = unattributed(&w, node).get(DropReason::UnknownIndex);
        let o = w.deliver_datagram(&d).unwrap();
        assert_eq!(o, WanOutcome::Drop(DropReason::UnknownIndex), "node {node}");
        assert_eq!(
            unattributed(&w, node).get(DropReason::UnknownIndex),
            unknown + 1
        );
    }
    assert!(w.take_delivered().is_empty());
}

#[test]
fn rotating_the_edge_key_edge_first_loses_nothing() {
    rotate(
        |t| {
            t.tenants[0].keys[EDGE] = SecretKey::generate();
            [t.compile(EDGE), t.compile(DC)]
        },
        EDGE,
        Duration::from_millis(1500),
        false,
    );
}

#[test]
fn rotating_the_edge_key_dc_first_loses_nothing() {
    // The dc learns the edge's new key before the edge uses it.
    rotate(
        |t| {
            t.tenants[0].keys[EDGE] = SecretKey::generate();
            [t.compile(EDGE), t.compile(DC)]
        },
        DC,
        Duration::from_millis(1500),
        false,
    );
}

#[test]
fn rotating_the_dc_key_loses_nothing() {
    for first in [EDGE, DC] {
        rotate(
            |t| {
                t.tenants[0].keys[DC] = SecretKey::generate();
                [t.compile(EDGE), t.compile(DC)]
            },
            first,
            Duration::from_millis(1500),
            false,
        );
    }
}

#[test]
fn changing_the_preshared_key_loses_nothing() {
    for first in [EDGE, DC] {
        rotate(
            |t| {
                let psk = SecretKey::generate();
                [
                    with_psk(t.compile(EDGE), "alpha", &psk),
                    with_psk(t.compile(DC), "alpha", &psk),
                ]
            },
            first,
            Duration::from_secs(1),
            true,
        );
    }
}

#[test]
fn a_retiring_session_ends_at_its_deadline_if_the_other_side_never_follows() {
    let mut t = edge_dc(vec![alpha()]);
    let (mut w, mut tr) = established(&t);
    t.tenants[0].keys[EDGE] = SecretKey::generate();
    assert_rotated(&w.apply(EDGE, &t.compile(EDGE)).unwrap());
    let applied = w.now();
    // The dc never learns the new key: the old session carries everything meanwhile.
    tr.rounds(&mut w, RETIRE_DEADLINE - Duration::from_secs(1));
    tr.assert_none_lost();
    assert_eq!(retiring(&w, EDGE), 1);
    // poll_timeout accounts for the deadline.
    let next = w.nodes[EDGE].engine.poll_timeout().unwrap();
    assert!(next <= applied + RETIRE_DEADLINE);
    w.advance(Duration::from_secs(2));
    assert_eq!(retiring(&w, EDGE), 0);
    // What the dc sends on the old session is no longer accepted.
    let unknown = unattributed(&w, EDGE).get(DropReason::UnknownIndex);
    let o = w.send_app(
        DC,
        tr.svc,
        &udp("10.1.0.1", "10.0.0.10", 6666, 6000, b"late"),
    );
    assert!(matches!(o, AppOutcome::Send(_)), "{o:?}");
    w.run();
    assert!(w.take_delivered().is_empty());
    assert_eq!(
        unattributed(&w, EDGE).get(DropReason::UnknownIndex),
        unknown + 1
    );
}

#[test]
fn a_second_rotation_keeps_at_most_one_retiring_session() {
    let mut t = edge_dc(vec![alpha()]);
    let (mut w, mut tr) = established(&t);

    // Twice on the edge before the dc follows: the first new session never came up, so the
    // original one (the only one that works) stays the retiring one.
    t.tenants[0].keys[EDGE] = SecretKey::generate();
    assert_rotated(&w.apply(EDGE, &t.compile(EDGE)).unwrap());
    tr.rounds(&mut w, Duration::from_millis(500));
    t.tenants[0].keys[EDGE] = SecretKey::generate();
    let r = w.apply(EDGE, &t.compile(EDGE)).unwrap();
    assert_eq!(
        (r.sessions_new, r.sessions_retiring, r.sessions_dropped),
        (1, 1, 1)
    );
    assert_eq!(retiring(&w, EDGE), 1);
    tr.rounds(&mut w, Duration::from_millis(500));
    assert_rotated(&w.apply(DC, &t.compile(DC)).unwrap());
    tr.rounds(&mut w, Duration::from_millis(500));
    assert_eq!((retiring(&w, EDGE), retiring(&w, DC)), (0, 0));
    tr.assert_none_lost();

    // Now a rotation completes on both sides (the dc initiates the new session), but the edge
    // stays silent, so the dc's old session waits out its grace; a second rotation on the dc
    // retires the newer session and drops the older one.
    let psk = SecretKey::generate();
    assert_rotated(
        &w.apply(EDGE, &with_psk(t.compile(EDGE), "alpha", &psk))
            .unwrap(),
    );
    w.run();
    assert_rotated(
        &w.apply(DC, &with_psk(t.compile(DC), "alpha", &psk))
            .unwrap(),
    );
    w.run();
    w.advance(Duration::from_millis(100));
    assert_eq!((retiring(&w, EDGE), retiring(&w, DC)), (0, 1));
    let psk2 = SecretKey::generate();
    let r = w
        .apply(DC, &with_psk(t.compile(DC), "alpha", &psk2))
        .unwrap();
    assert_eq!(
        (r.sessions_new, r.sessions_retiring, r.sessions_dropped),
        (1, 1, 1)
    );
    assert_eq!(retiring(&w, DC), 1);
    // dc → edge still flows on the retiring session (the edge has the matching one).
    let o = w.send_app(
        DC,
        tr.svc,
        &udp("10.1.0.1", "10.0.0.10", 6666, 6000, &tr.down.to_be_bytes()),
    );
    assert!(matches!(o, AppOutcome::Send(_)), "{o:?}");
    tr.down += 1;
    w.run();
    tr.collect(&mut w);
    // The edge follows; everything flows, nothing was lost.
    assert_rotated(
        &w.apply(EDGE, &with_psk(t.compile(EDGE), "alpha", &psk2))
            .unwrap(),
    );
    tr.rounds(&mut w, Duration::from_secs(1));
    assert_eq!((retiring(&w, EDGE), retiring(&w, DC)), (0, 0));
    tr.assert_none_lost();
}

/// The edge's config with alpha's peer (and everything behind it) removed.
fn without_peer(mut c: EngineConfig) -> EngineConfig {
    for t in c.tenants.iter_mut().filter(|t| t.name == "alpha") {
        t.peers.clear();
        t.rules.clear();
        t.endpoints.retain(|e| e.location == Location::Local);
    }
    c
}

fn assert_cut_off(w: &mut World, tr: &Traffic) {
    let unknown = unattributed(w, EDGE).get(DropReason::UnknownIndex);
    let o = w.send_app(
        DC,
        tr.svc,
        &udp("10.1.0.1", "10.0.0.10", 6666, 6000, b"after"),
    );
    assert!(matches!(o, AppOutcome::Send(_)), "{o:?}");
    w.run();
    assert!(w.take_delivered().is_empty(), "a revoked session delivered");
    assert_eq!(
        unattributed(w, EDGE).get(DropReason::UnknownIndex),
        unknown + 1
    );
}

#[test]
fn removing_a_peer_ends_its_session_at_once() {
    let t = edge_dc(vec![alpha()]);
    let (mut w, tr) = established(&t);
    let r = w.apply(EDGE, &without_peer(t.compile(EDGE))).unwrap();
    assert_eq!(
        (
            r.sessions_kept,
            r.sessions_new,
            r.sessions_retiring,
            r.sessions_dropped
        ),
        (0, 0, 0, 1)
    );
    assert_eq!(retiring(&w, EDGE), 0);
    assert_cut_off(&mut w, &tr);
}

#[test]
fn removing_a_peer_mid_rotation_ends_both_sessions_at_once() {
    let mut t = edge_dc(vec![alpha()]);
    let (mut w, mut tr) = established(&t);
    let old = t.clone();
    t.tenants[0].keys[EDGE] = SecretKey::generate();
    assert_rotated(&w.apply(EDGE, &t.compile(EDGE)).unwrap());
    tr.rounds(&mut w, Duration::from_millis(200));
    tr.assert_none_lost();
    let r = w.apply(EDGE, &without_peer(t.compile(EDGE))).unwrap();
    assert_eq!((r.sessions_retiring, r.sessions_dropped), (0, 2));
    assert_eq!(retiring(&w, EDGE), 0);
    assert_cut_off(&mut w, &tr);

    // Same for a whole tenant removed mid-rotation.
    let (mut w, mut tr) = established(&old);
    let mut t = old.clone();
    t.tenants[0].keys[EDGE] = SecretKey::generate();
    assert_rotated(&w.apply(EDGE, &t.compile(EDGE)).unwrap());
    tr.rounds(&mut w, Duration::from_millis(200));
    let r = w.apply(EDGE, &EngineConfig { tenants: vec![] }).unwrap();
    assert_eq!((r.sessions_retiring, r.sessions_dropped), (0, 2));
    assert_cut_off(&mut w, &tr);
}

#[test]
fn a_retiring_session_stays_within_its_tenant() {
    let mut t = edge_dc(vec![alpha(), beta()]);
    let (mut w, mut tr) = established(&t);
    // A compromised dc: alpha's config widened to reach beta's prefix on the edge and to send
    // from addresses that are not alpha's on the dc. Its sessions are untouched by that.
    let mut bad = t.compile(DC);
    {
        let a = bad.tenants.iter_mut().find(|t| t.name == "alpha").unwrap();
        let svc = a.endpoints.iter().position(|e| e.name == "svc").unwrap();
        let app = a.endpoints.iter().position(|e| e.name == "app").unwrap();
        a.endpoints.push(EndpointConfig {
            name: "beta-db".into(),
            location: Location::Peer(0),
            prefixes: vec!["10.9.0.0/24".parse().unwrap()],
        });
        a.endpoints.push(EndpointConfig {
            name: "spoof".into(),
            location: Location::Local,
            prefixes: vec!["10.50.0.0/24".parse().unwrap()],
        });
        let n = a.endpoints.len();
        a.rules.push(RuleConfig {
            from: svc,
            to: n - 2,
            protocol: Protocol::Any,
            ports: vec![],
        });
        a.rules.push(RuleConfig {
            from: n - 1,
            to: app,
            protocol: Protocol::Udp,
            ports: vec![PortRange {
                start: 6000,
                end: 6000,
            }],
        });
    }
    assert_eq!(w.apply(DC, &bad).unwrap().sessions_kept, 2);
    let spoof = port(&w, DC, "alpha", "spoof");

    // The edge rotates alpha: the dc's session to it is now the edge's retiring one.
    t.tenants[0].keys[EDGE] = SecretKey::generate();
    let r = w.apply(EDGE, &t.compile(EDGE)).unwrap();
    assert_eq!((r.sessions_kept, r.sessions_retiring), (1, 1));
    tr.rounds(&mut w, Duration::from_millis(100));
    assert_eq!(retiring(&w, EDGE), 1);
    let beta_before = tstats(&w, EDGE, "beta").counters;

    // To beta's address on the edge: not in alpha's table there.
    let no_route = drops(&w, EDGE, "alpha", DropReason::NoRoute);
    send_undelivered(
        &mut w,
        DC,
        tr.svc,
        &udp("10.1.0.1", "10.9.0.10", 6666, 5000, b"cross"),
    );
    assert_eq!(drops(&w, EDGE, "alpha", DropReason::NoRoute), no_route + 1);
    // From an address that is not behind the dc in alpha's config on the edge.
    let spoofed = drops(&w, EDGE, "alpha", DropReason::SpoofedSource);
    send_undelivered(
        &mut w,
        DC,
        spoof,
        &udp("10.50.0.1", "10.0.0.10", 6666, 6000, b"spoof"),
    );
    assert_eq!(
        drops(&w, EDGE, "alpha", DropReason::SpoofedSource),
        spoofed + 1
    );
    // beta saw nothing of it.
    assert_eq!(tstats(&w, EDGE, "beta").counters, beta_before);
    // Both went through the retiring session, which still carries alpha's own traffic.
    assert_eq!(retiring(&w, EDGE), 1);
    tr.rounds(&mut w, Duration::from_millis(100));
    tr.assert_none_lost();
}

#[test]
fn in_flight_packets_on_the_old_session_decrypt_until_the_grace_ends() {
    let mut t = edge_dc(vec![alpha()]);
    let (mut w, tr) = established(&t);
    t.tenants[0].keys[EDGE] = SecretKey::generate();
    assert_rotated(&w.apply(EDGE, &t.compile(EDGE)).unwrap());
    w.run();
    // Three packets the edge sent on the old session, held up on the way.
    let held: Vec<Datagram> = (0..3u32)
        .map(|i| {
            let o = w.send_app(
                EDGE,
                tr.app,
                &udp(
                    "10.0.0.10",
                    "10.1.0.1",
                    5555,
                    5000,
                    &(1000 + i).to_be_bytes(),
                ),
            );
            assert!(matches!(o, AppOutcome::Send(_)), "{o:?}");
            let d = w.captured.last().unwrap().clone();
            assert_eq!(msg_type(&d.data), 4);
            assert_eq!(w.lose_wire(), 1);
            d
        })
        .collect();
    // The dc follows and initiates; the edge answers, takes the dc's keepalive on the new
    // session and ends its old one. The edge sends nothing more: the dc's old one waits.
    assert_rotated(&w.apply(DC, &t.compile(DC)).unwrap());
    w.run();
    assert_eq!((retiring(&w, EDGE), retiring(&w, DC)), (0, 1));
    let deliver = |w: &mut World, d: &Datagram| {
        let o = w.deliver_datagram(d).unwrap();
        (o, w.take_delivered())
    };
    let (o, got) = deliver(&mut w, &held[0]);
    assert!(matches!(o, WanOutcome::Deliver { .. }), "{o:?}");
    assert_eq!(got.len(), 1);
    w.advance(dataplane::engine::RETIRE_GRACE - Duration::from_millis(500));
    assert_eq!(retiring(&w, DC), 1);
    let (o, got) = deliver(&mut w, &held[1]);
    assert!(matches!(o, WanOutcome::Deliver { .. }), "{o:?}");
    assert_eq!(got.len(), 1);
    w.advance(Duration::from_secs(1));
    assert_eq!(retiring(&w, DC), 0);
    let (o, got) = deliver(&mut w, &held[2]);
    assert_eq!(o, WanOutcome::Drop(DropReason::UnknownIndex));
    assert!(got.is_empty());
}

#[test]
fn only_the_new_identity_answers_handshakes() {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};

    let mut t = edge_dc(vec![alpha()]);
    let (mut w, _tr) = established(&t);
    let old_dc = w.nodes[DC].engine.public_key("alpha").unwrap();
    t.tenants[0].keys[DC] = SecretKey::generate();
    assert_rotated(&w.apply(DC, &t.compile(DC)).unwrap());
    let new_dc = w.nodes[DC].engine.public_key("alpha").unwrap();
    assert_eq!(retiring(&w, DC), 1);
    let edge_key = StaticSecret::from(*t.tenants[0].keys[EDGE].as_bytes());
    let mut buf = vec![0u8; 256];
    let mut initiation = |to: [u8; 32]| {
        let mut tunn = Tunn::new(edge_key.clone(), PublicKey::from(to), None, None, 77, None);
        match tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no initiation"),
        }
    };
    let from = addr("198.51.100.7:1000");
    let to = w.nodes[DC].addr;
    // To the old identity: nobody is there any more (the retiring session does not answer).
    let unknown = unattributed(&w, DC).get(DropReason::UnknownIdentity);
    let o = w
        .deliver_datagram(&Datagram {
            from,
            to,
            data: initiation(old_dc),
        })
        .unwrap();
    assert_eq!(o, WanOutcome::Drop(DropReason::UnknownIdentity));
    assert_eq!(
        unattributed(&w, DC).get(DropReason::UnknownIdentity),
        unknown + 1
    );
    // To the new one: answered.
    let o = w
        .deliver_datagram(&Datagram {
            from,
            to,
            data: initiation(new_dc),
        })
        .unwrap();
    assert!(matches!(o, WanOutcome::Reply(_)), "{o:?}");
}
