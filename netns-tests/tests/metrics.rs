//! `/metrics` on real gateways: the numbers move with the traffic (at least by what was sent),
//! a policy drop shows up under its reason, the other tenant's counters do not move, reloads
//! are counted, anything but `GET /metrics` is a 404, and a client that never finishes its
//! request blocks neither scrapes nor packets.

mod common;
mod observe;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use netns_tests::{in_ns, udp_exchange, udp_send};
use observe::{METRICS, http, scrape, until, world_with};

const EXTRA: &str = "metrics = \"127.0.0.1:9477\"\n";

#[test]
fn metrics_follow_the_traffic() {
    let started = Instant::now();
    let Some(w) = world_with("metrics", EXTRA, EXTRA, &[]) else {
        return;
    };
    let lab = &w.lab;
    let acme_app = lab.ns_name("acme-app");
    let acme_cloud = lab.ns_name("acme-cloud");
    assert!(lab.ping(&acme_app, "10.20.100.1", 2), "{}", w.edge.log());
    assert!(
        w.edge
            .log()
            .contains("metrics=http://127.0.0.1:9477/metrics"),
        "{}",
        w.edge.log()
    );

    let dc0 = scrape(&w.dc);
    let edge0 = scrape(&w.edge);
    for m in [&dc0, &edge0] {
        assert_eq!(m.must("corridor_config_applied_total", ""), 1.0);
        assert_eq!(m.must("corridor_last_reload_ok", ""), 1.0);
        assert_eq!(m.must("corridor_tenant_peers", "tenant=\"acme\""), 1.0);
    }
    // The ping made a session on both sides.
    let age = dc0.must(
        "corridor_peer_handshake_age_seconds",
        "tenant=\"acme\",peer=\"edge-1\"",
    );
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(
        dc0.must(
            "corridor_peer_session_up",
            "tenant=\"acme\",peer=\"edge-1\""
        ),
        1.0
    );
    assert_eq!(dc0.must("corridor_tenant_sessions", "tenant=\"acme\""), 1.0);
    assert_eq!(
        dc0.must(
            "corridor_interface_up",
            &format!(
                "tenant=\"acme\",endpoint=\"acme-cloud\",netns=\"{acme_cloud}\",ifname=\"corridor0\""
            )
        ),
        1.0
    );

    // 100 datagrams of 200 bytes: 228-byte IP packets.
    let sent = 100.0;
    let got = udp_exchange(
        &acme_app,
        &acme_cloud,
        "10.20.100.1:6000".parse().unwrap(),
        100,
        Duration::from_secs(3),
    ) as f64;
    assert!(got >= 95.0, "{got}/100 arrived");
    let dc1 = scrape(&w.dc);
    let edge1 = scrape(&w.edge);
    let delta = |a: &observe::Metrics, b: &observe::Metrics, name: &str, labels: &str| {
        b.must(name, labels) - a.must(name, labels)
    };
    let rx = |dir| format!("tenant=\"acme\",peer=\"edge-1\",direction=\"{dir}\"");
    let tx = |dir| format!("tenant=\"acme\",peer=\"dc-1\",direction=\"{dir}\"");
    // The sender's side counted every datagram it sent, the receiver's every one that arrived.
    assert!(delta(&edge0, &edge1, "corridor_peer_packets_total", &tx("tx")) >= sent);
    assert!(delta(&edge0, &edge1, "corridor_peer_bytes_total", &tx("tx")) >= sent * 228.0);
    assert!(
        delta(
            &edge0,
            &edge1,
            "corridor_tenant_packets_total",
            "tenant=\"acme\",direction=\"tx\""
        ) >= sent
    );
    assert!(delta(&dc0, &dc1, "corridor_peer_packets_total", &rx("rx")) >= got);
    assert!(delta(&dc0, &dc1, "corridor_peer_bytes_total", &rx("rx")) >= got * 228.0);
    assert!(
        delta(
            &dc0,
            &dc1,
            "corridor_tenant_bytes_total",
            "tenant=\"acme\",direction=\"rx\""
        ) >= got * 228.0
    );
    // The I/O counters: read from the app on edge-1, sent on the WAN; received, written on dc-1.
    let dir = |d| format!("direction=\"{d}\"");
    assert!(
        delta(
            &edge0,
            &edge1,
            "corridor_interface_packets_total",
            &dir("rx")
        ) >= sent
    );
    assert!(delta(&edge0, &edge1, "corridor_wan_datagrams_total", &dir("tx")) >= sent);
    assert!(delta(&dc0, &dc1, "corridor_wan_datagrams_total", &dir("rx")) >= got);
    assert!(delta(&dc0, &dc1, "corridor_interface_packets_total", &dir("tx")) >= got);
    // The other tenant did not move.
    for (m0, m1) in [(&dc0, &dc1), (&edge0, &edge1)] {
        for d in ["tx", "rx"] {
            let l = format!("tenant=\"globex\",direction=\"{d}\"");
            assert_eq!(delta(m0, m1, "corridor_tenant_packets_total", &l), 0.0);
        }
    }

    // A flow no rule allows (UDP 6001) is dropped at the sender, under policy_denied.
    let denied = "tenant=\"acme\",reason=\"policy_denied\"";
    udp_send(&acme_app, "10.20.100.1:6001".parse().unwrap(), b"no", 20).unwrap();
    let edge2 = scrape(&w.edge);
    assert!(
        delta(&edge1, &edge2, "corridor_tenant_drops_total", denied) >= 20.0,
        "{}",
        edge2.0
    );
    assert_eq!(
        delta(
            &edge1,
            &edge2,
            "corridor_tenant_drops_total",
            "tenant=\"globex\",reason=\"policy_denied\""
        ),
        0.0
    );

    // A client that never finishes its request holds no one up.
    let addr: SocketAddr = METRICS.parse().unwrap();
    let mut slow = in_ns(&w.dc_ns, || TcpStream::connect(addr)).unwrap();
    slow.write_all(b"GET /metr").unwrap();
    let t = Instant::now();
    let dc3 = scrape(&w.dc);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(lab.ping(&acme_app, "10.20.100.1", 2));
    drop(slow);
    assert!(dc3.0.contains("# TYPE corridor_peer_bytes_total counter\n"));

    // Anything else is a 404; garbage a 400.
    let (head, _) = http(&w.dc_ns, METRICS, "GET / HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.0 404 Not Found\r\n"), "{head}");
    let (head, _) = http(&w.dc_ns, METRICS, "POST /metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.0 404 "), "{head}");
    let (head, _) = http(&w.dc_ns, METRICS, "hello\r\n\r\n");
    assert!(head.starts_with("HTTP/1.0 400 "), "{head}");
    let (head, _) = http(&w.dc_ns, METRICS, "GET /metrics HTTP/1.0\r\n\r\n");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{head}"
    );

    // A reload is a new configuration.
    w.dc.reload();
    let reloaded = until(Duration::from_secs(5), || {
        scrape(&w.dc).get("corridor_config_applied_total", "") == Some(2.0)
    });
    assert!(reloaded.is_some(), "{}", w.dc.log());
    let dc4 = scrape(&w.dc);
    assert_eq!(dc4.must("corridor_reloads_total", "result=\"ok\""), 1.0);
    assert_eq!(
        dc4.must("corridor_reloads_total", "result=\"refused\""),
        0.0
    );
    eprintln!("metrics test: {:.1}s", started.elapsed().as_secs_f64());
}
