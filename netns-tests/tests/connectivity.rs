//! Both tenants reach their own destinations: ping, a TCP transfer checked by hash, UDP.

mod common;

use std::time::Duration;

use netns_tests::{tcp_transfer, udp_exchange};

#[test]
fn both_tenants_reach_their_destinations() {
    let Some(w) = common::world("conn") else {
        return;
    };
    let lab = &w.lab;
    let acme_app = lab.ns_name("acme-app");
    let acme_cloud = lab.ns_name("acme-cloud");
    let globex_app = lab.ns_name("globex-app");
    let globex_cloud = lab.ns_name("globex-cloud");

    assert!(
        lab.ping(&acme_app, "10.20.100.1", 3),
        "acme ping\n{}",
        w.edge.log()
    );
    assert!(lab.ping(&globex_app, "10.20.100.1", 3), "globex ping");

    tcp_transfer(
        &acme_app,
        &acme_cloud,
        "10.20.100.1:5001".parse().unwrap(),
        2 << 20,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("acme tcp: {e}"));
    tcp_transfer(
        &globex_app,
        &globex_cloud,
        "10.20.100.1:7000".parse().unwrap(),
        2 << 20,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("globex tcp: {e}"));

    let got = udp_exchange(
        &acme_app,
        &acme_cloud,
        "10.20.100.1:6000".parse().unwrap(),
        50,
        Duration::from_secs(3),
    );
    assert!(got >= 48, "acme udp: {got}/50 arrived");

    // The counters saw it, per tenant and per peer.
    let dc = w.dc.status();
    for tenant in ["acme", "globex"] {
        let t = dc.engine.tenants.iter().find(|t| t.name == tenant).unwrap();
        assert!(t.counters.rx.bytes > 2 << 20, "{tenant}: {:?}", t.counters);
        assert!(t.peers[0].last_handshake.is_some());
    }
}
