//! Configuration changes while traffic flows: what is not changed is not touched.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::time::Duration;

use dataplane::SecretKey;
use dataplane::config::{EndpointConfig, Location, Protocol};
use dataplane::engine::{AppOutcome, ConfigError, DropReason, PortId};
use dataplane::sim::{TenantSpec, World};

mod common;
use common::*;

fn alpha() -> TenantSpec {
    TenantSpec::new("alpha", 2)
        .endpoint("app", EDGE, &["10.0.0.10/32", "fd00::10/128"])
        .endpoint("svc", DC, &["10.1.0.0/24", "fd01::/64"])
        .allow("app", "svc", Protocol::Tcp, &[(443, 443)])
        .allow("app", "svc", Protocol::Udp, &[(53, 53)])
}

fn beta() -> TenantSpec {
    // Same addresses as alpha: a reload must not confuse them either.
    TenantSpec::new("beta", 2)
        .endpoint("app", EDGE, &["10.0.0.10/32"])
        .endpoint("svc", DC, &["10.1.0.0/24"])
        .allow("app", "svc", Protocol::Tcp, &[(443, 443)])
}

/// alpha's steady stream: a request edge → dc and its answer, each checked on arrival.
struct Stream {
    app: PortId,
    svc: PortId,
    n: u16,
}

impl Stream {
    fn new(w: &World) -> Self {
        Stream {
            app: port(w, EDGE, "alpha", "app"),
            svc: port(w, DC, "alpha", "svc"),
            n: 0,
        }
    }

    fn req(&self) -> Vec<u8> {
        tcp(
            "10.0.0.10",
            "10.1.0.1",
            40000 + self.n,
            443,
            &self.n.to_be_bytes(),
        )
    }

    fn resp(&self) -> Vec<u8> {
        tcp(
            "10.1.0.1",
            "10.0.0.10",
            443,
            40000 + self.n,
            &self.n.to_be_bytes(),
        )
    }

    /// One round trip, checked.
    fn step(&mut self, w: &mut World) {
        let (req, resp) = (self.req(), self.resp());
        send_expect(w, EDGE, self.app, &req, DC, self.svc);
        send_expect(w, DC, self.svc, &resp, EDGE, self.app);
        self.n += 1;
    }

    /// A round trip whose request is still on the wire when `between` runs.
    fn step_across(&mut self, w: &mut World, between: impl FnOnce(&mut World)) {
        let req = self.req();
        let o = w.send_app(EDGE, self.app, &req);
        assert!(matches!(o, AppOutcome::Send(_)), "{o:?}");
        between(w);
        w.run();
        let d = w.take_delivered();
        assert_eq!(d.len(), 1, "in-flight request lost across the apply");
        assert_eq!((d[0].node, d[0].port, &d[0].packet), (DC, self.svc, &req));
        let resp = self.resp();
        send_expect(w, DC, self.svc, &resp, EDGE, self.app);
        self.n += 1;
    }
}

/// Handshake messages for alpha's identities (either end) captured since `mark`.
fn alpha_handshakes(w: &World, mark: usize) -> usize {
    let keys = [
        w.nodes[EDGE].engine.public_key("alpha").unwrap(),
        w.nodes[DC].engine.public_key("alpha").unwrap(),
    ];
    w.captured[mark..]
        .iter()
        .filter(|d| matches!(msg_type(&d.data), 1 | 2))
        .filter(|d| keys.iter().any(|k| mac1_for(k, &d.data)))
        .count()
}

fn handshakes_of(w: &World, mark: usize, tenant: &str) -> usize {
    let keys = [
        w.nodes[EDGE].engine.public_key(tenant).unwrap(),
        w.nodes[DC].engine.public_key(tenant).unwrap(),
    ];
    w.captured[mark..]
        .iter()
        .filter(|d| matches!(msg_type(&d.data), 1 | 2))
        .filter(|d| keys.iter().any(|k| mac1_for(k, &d.data)))
        .count()
}

/// Establishes the world, lets two seconds pass (so a fresh handshake would show), starts
/// capturing; returns alpha's handshake ages at both ends.
fn settle(w: &mut World) -> (Duration, Duration) {
    w.run();
    w.advance(Duration::from_secs(2));
    w.capture = true;
    let e = pstats(w, EDGE, "alpha", "dc-1").last_handshake.unwrap();
    let d = pstats(w, DC, "alpha", "edge-1").last_handshake.unwrap();
    assert!(e >= Duration::from_secs(2) && d >= Duration::from_secs(2));
    (e, d)
}

fn assert_alpha_untouched(w: &World, mark: usize, ages: (Duration, Duration), stream: &Stream) {
    assert_eq!(alpha_handshakes(w, mark), 0, "alpha handshook again");
    // No virtual time passed since `settle`: an unchanged session has the same age.
    assert_eq!(
        pstats(w, EDGE, "alpha", "dc-1").last_handshake,
        Some(ages.0)
    );
    assert_eq!(
        pstats(w, DC, "alpha", "edge-1").last_handshake,
        Some(ages.1)
    );
    let n = u64::from(stream.n);
    let e = tstats(w, EDGE, "alpha").counters;
    let d = tstats(w, DC, "alpha").counters;
    assert_eq!((e.tx.packets, e.rx.packets), (n, n));
    assert_eq!((d.tx.packets, d.rx.packets), (n, n));
    assert_eq!(e.drops.total() + d.drops.total(), 0);
    assert_eq!(
        port(w, EDGE, "alpha", "app"),
        stream.app,
        "alpha's port id changed"
    );
    assert_eq!(
        port(w, DC, "alpha", "svc"),
        stream.svc,
        "alpha's port id changed"
    );
}

#[test]
fn adding_a_tenant_leaves_an_established_one_untouched() {
    let before = edge_dc(vec![alpha()]);
    let mut w = before.world().unwrap();
    let ages = settle(&mut w);
    let mark = w.captured.len();
    let mut s = Stream::new(&w);
    for _ in 0..10 {
        s.step(&mut w);
    }

    // beta goes first in the list, so alpha's position (and internal index) changes too.
    let mut after = before.clone();
    after.tenants.insert(0, beta());
    s.step_across(&mut w, |w| {
        let r = w.apply(DC, &after.compile(DC)).unwrap();
        assert_eq!(
            (r.sessions_kept, r.sessions_new, r.sessions_dropped),
            (1, 1, 0)
        );
        assert_eq!(r.ports_added.len(), 1);
        assert!(r.ports_removed.is_empty());
    });
    // Between the two applies (the gateways disagree about beta), alpha flows on.
    for _ in 0..5 {
        s.step(&mut w);
    }
    s.step_across(&mut w, |w| {
        let r = w.apply(EDGE, &after.compile(EDGE)).unwrap();
        assert_eq!(
            (r.sessions_kept, r.sessions_new, r.sessions_dropped),
            (1, 1, 0)
        );
    });
    for _ in 0..10 {
        s.step(&mut w);
    }
    // beta works (it handshook: the detector sees beta's handshakes, just not alpha's).
    let b_app = port(&w, EDGE, "beta", "app");
    let b_svc = port(&w, DC, "beta", "svc");
    send_expect(
        &mut w,
        EDGE,
        b_app,
        &tcp("10.0.0.10", "10.1.0.1", 1, 443, b"beta"),
        DC,
        b_svc,
    );
    assert!(handshakes_of(&w, mark, "beta") >= 2);
    assert_alpha_untouched(&w, mark, ages, &s);
}

#[test]
fn altering_another_tenant_leaves_an_established_one_untouched() {
    let mut t = edge_dc(vec![alpha(), beta()]);
    let mut w = t.world().unwrap();
    let ages = settle(&mut w);
    let mark = w.captured.len();
    let mut s = Stream::new(&w);
    let b_app = port(&w, EDGE, "beta", "app");
    s.step(&mut w);

    type Change = fn(&mut TenantSpec);
    let changes: [(&str, Change, bool); 4] = [
        (
            "new rule",
            |b| {
                *b = b
                    .clone()
                    .allow("app", "svc", Protocol::Udp, &[(5432, 5432)])
            },
            true,
        ),
        (
            "new endpoint",
            |b| {
                *b = b.clone().endpoint("db", DC, &["10.9.0.0/24"]).allow(
                    "app",
                    "db",
                    Protocol::Udp,
                    &[(5432, 5432)],
                )
            },
            true,
        ),
        (
            "rotated dc key",
            |b| b.keys[DC] = SecretKey::generate(),
            false,
        ),
        (
            "rotated edge key",
            |b| b.keys[EDGE] = SecretKey::generate(),
            false,
        ),
    ];
    for (what, change, beta_kept) in changes {
        eprintln!("change: {what}");
        change(&mut t.tenants[1]);
        let kept = if beta_kept { 2 } else { 1 };
        s.step_across(&mut w, |w| {
            let r = w.apply(DC, &t.compile(DC)).unwrap();
            assert_eq!(r.sessions_kept, kept, "{what}");
        });
        s.step(&mut w);
        s.step_across(&mut w, |w| {
            let r = w.apply(EDGE, &t.compile(EDGE)).unwrap();
            assert_eq!(r.sessions_kept, kept, "{what}");
        });
        s.step(&mut w);
        // beta works with its new config.
        let b_svc = port(&w, DC, "beta", "svc");
        assert_eq!(port(&w, EDGE, "beta", "app"), b_app);
        send_expect(
            &mut w,
            EDGE,
            b_app,
            &tcp("10.0.0.10", "10.1.0.1", 2, 443, b"b"),
            DC,
            b_svc,
        );
        if let Some(db) = w.nodes[DC].engine.port("beta", "db") {
            send_expect(
                &mut w,
                EDGE,
                b_app,
                &udp("10.0.0.10", "10.9.0.1", 3, 5432, b"db"),
                DC,
                db,
            );
        }
        if what == "new rule" {
            send_expect(
                &mut w,
                EDGE,
                b_app,
                &udp("10.0.0.10", "10.1.0.1", 3, 5432, b"r"),
                DC,
                b_svc,
            );
        }
    }
    // The rotations made beta handshake again; alpha never did.
    let all = w.captured[mark..]
        .iter()
        .filter(|d| matches!(msg_type(&d.data), 1 | 2))
        .count();
    assert!(all >= 4, "{all}");
    assert_alpha_untouched(&w, mark, ages, &s);
}

#[test]
fn a_refused_config_changes_nothing() {
    let t = edge_dc(vec![alpha(), beta()]);
    let mut w = t.world().unwrap();
    let ages = settle(&mut w);
    let mark = w.captured.len();
    let mut s = Stream::new(&w);
    for _ in 0..3 {
        s.step(&mut w);
    }
    // A tracked flow whose reply is still to come.
    send_expect(
        &mut w,
        EDGE,
        s.app,
        &udp("10.0.0.10", "10.1.0.53", 5353, 53, b"q"),
        DC,
        s.svc,
    );

    let good = t.compile(DC);
    let overlap = {
        let mut c = good.clone();
        c.tenants[0].endpoints.push(EndpointConfig {
            name: "shadow".into(),
            location: Location::Local,
            prefixes: vec!["10.1.0.128/25".parse().unwrap()],
        });
        c
    };
    let dup_tenant = {
        let mut c = good.clone();
        c.tenants[1].name = "alpha".into();
        c
    };
    let shared_key = {
        let mut c = good.clone();
        c.tenants[1].private_key = c.tenants[0].private_key.clone();
        c
    };
    let self_peer = {
        let mut c = good.clone();
        c.tenants[1].peers[0].public_key = c.tenants[1].private_key.public_key();
        c
    };
    let bad_ports = {
        let mut c = good.clone();
        c.tenants[0].rules[0].ports = vec![dataplane::config::PortRange { start: 9, end: 1 }];
        c
    };
    let no_conntrack = {
        let mut c = good.clone();
        c.tenants[1].conntrack_limit = 0;
        c
    };
    let stats = |w: &World| {
        let n = &w.nodes[DC].engine;
        (
            format!("{:?}", n.stats()),
            n.ports()
                .map(|(p, t, e)| format!("{p:?}{t}{e}"))
                .collect::<Vec<_>>(),
        )
    };
    let snapshot = stats(&w);
    let sent = w.sent;
    for (what, cfg) in [
        ("overlap", overlap),
        ("duplicate tenant", dup_tenant),
        ("shared key", shared_key),
        ("peer is self", self_peer),
        ("bad ports", bad_ports),
        ("conntrack 0", no_conntrack),
    ] {
        let err = w.apply(DC, &cfg).unwrap_err();
        match what {
            "overlap" => assert!(matches!(err, ConfigError::Overlap { .. }), "{err}"),
            "duplicate tenant" => assert!(matches!(err, ConfigError::DuplicateTenant(_)), "{err}"),
            "shared key" => assert!(matches!(err, ConfigError::SharedKey(..)), "{err}"),
            "peer is self" => assert!(matches!(err, ConfigError::PeerIsSelf { .. }), "{err}"),
            "bad ports" => assert!(matches!(err, ConfigError::BadPorts { .. }), "{err}"),
            _ => assert!(matches!(err, ConfigError::ConntrackLimit(_)), "{err}"),
        }
        assert_eq!(stats(&w), snapshot, "{what}: the engine changed");
        assert_eq!(w.sent, sent, "{what}: something was sent");
    }
    // The tracked flow survived: its reply passes. And the stream goes on.
    send_expect(
        &mut w,
        DC,
        s.svc,
        &udp("10.1.0.53", "10.0.0.10", 53, 5353, b"a"),
        EDGE,
        s.app,
    );
    // (the extra UDP pair is not part of the stream's tally)
    let e = tstats(&w, EDGE, "alpha").counters;
    assert_eq!(
        (e.tx.packets, e.rx.packets),
        (u64::from(s.n) + 1, u64::from(s.n) + 1)
    );
    for _ in 0..3 {
        s.step(&mut w);
    }
    assert_eq!(alpha_handshakes(&w, mark), 0);
    assert_eq!(
        pstats(&w, DC, "alpha", "edge-1").last_handshake,
        Some(ages.1)
    );
    // The good config still applies, and keeps every session.
    assert_eq!(w.apply(DC, &good).unwrap().sessions_kept, 2);
}

#[test]
fn removing_a_rule_kills_replies_to_its_flows() {
    let t = edge_dc(vec![alpha()]);
    let mut w = t.world().unwrap();
    w.run();
    let s = Stream::new(&w);
    let tcp_req = tcp("10.0.0.10", "10.1.0.1", 40000, 443, b"req");
    let tcp_resp = tcp("10.1.0.1", "10.0.0.10", 443, 40000, b"resp");
    let udp_req = udp("10.0.0.10", "10.1.0.53", 5353, 53, b"q");
    let udp_resp = udp("10.1.0.53", "10.0.0.10", 53, 5353, b"a");
    send_expect(&mut w, EDGE, s.app, &tcp_req, DC, s.svc);
    send_expect(&mut w, EDGE, s.app, &udp_req, DC, s.svc);
    send_expect(&mut w, DC, s.svc, &tcp_resp, EDGE, s.app);
    send_expect(&mut w, DC, s.svc, &udp_resp, EDGE, s.app);
    assert_eq!(tstats(&w, EDGE, "alpha").connections, 2);
    assert_eq!(tstats(&w, DC, "alpha").connections, 2);

    // TCP 443 is no longer allowed. The edge learns first.
    let mut narrower = t.clone();
    narrower.tenants[0].rules.retain(|r| r.2 != Protocol::Tcp);
    assert_eq!(
        w.apply(EDGE, &narrower.compile(EDGE))
            .unwrap()
            .sessions_kept,
        1
    );
    assert_eq!(tstats(&w, EDGE, "alpha").connections, 1);
    // The dc still tracks the flow and sends the reply; the edge refuses it.
    send_undelivered(&mut w, DC, s.svc, &tcp_resp);
    assert_eq!(drops(&w, EDGE, "alpha", DropReason::PolicyDenied), 1);
    // UDP is still allowed, and its tracked flow still answers.
    send_expect(&mut w, DC, s.svc, &udp_resp, EDGE, s.app);

    // Now the dc: the reply dies at the sender.
    assert_eq!(w.apply(DC, &narrower.compile(DC)).unwrap().sessions_kept, 1);
    assert_eq!(tstats(&w, DC, "alpha").connections, 1);
    send_refused(&mut w, DC, s.svc, &tcp_resp, DropReason::PolicyDenied);
    send_refused(&mut w, EDGE, s.app, &tcp_req, DropReason::PolicyDenied);
    send_expect(&mut w, DC, s.svc, &udp_resp, EDGE, s.app);
    send_expect(&mut w, EDGE, s.app, &udp_req, DC, s.svc);

    // Putting the rule back does not resurrect the old flow: a new request is needed.
    assert_eq!(w.apply(DC, &t.compile(DC)).unwrap().sessions_kept, 1);
    assert_eq!(w.apply(EDGE, &t.compile(EDGE)).unwrap().sessions_kept, 1);
    send_refused(&mut w, DC, s.svc, &tcp_resp, DropReason::PolicyDenied);
    send_expect(&mut w, EDGE, s.app, &tcp_req, DC, s.svc);
    send_expect(&mut w, DC, s.svc, &tcp_resp, EDGE, s.app);
    assert_eq!(drops(&w, DC, "alpha", DropReason::PolicyDenied), 2);
    assert_eq!(drops(&w, EDGE, "alpha", DropReason::PolicyDenied), 2);
}
