#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use dataplane::config::Protocol;
use dataplane::engine::{AppOutcome, DropReason};
use dataplane::sim::{TenantSpec, Topology};

mod common;
use common::*;

#[test]
fn smoke_tcp_round_trip() {
    let topo = Topology {
        gateways: vec![
            ("edge-1".into(), None),
            ("dc-1".into(), Some(addr("192.0.2.1:51820"))),
        ],
        tenants: vec![
            TenantSpec::new("acme", 2)
                .endpoint("app", 0, &["10.20.1.10/32"])
                .endpoint("cloud", 1, &["10.20.100.1/32", "10.20.100.0/24"])
                .allow("app", "cloud", Protocol::Tcp, &[(443, 443)]),
        ],
    };
    let mut w = topo.world().unwrap();
    w.run();
    let app = w.nodes[0].engine.port("acme", "app").unwrap();
    let cloud = w.nodes[1].engine.port("acme", "cloud").unwrap();
    let syn = tcp("10.20.1.10", "10.20.100.1", 40000, 443, b"hello");
    let o = w.send_app(0, app, &syn);
    assert!(
        matches!(o, AppOutcome::Send(_) | AppOutcome::Pending(_)),
        "{o:?}"
    );
    w.run();
    let d = w.take_delivered();
    assert_eq!(d.len(), 1, "{:?}", w.nodes[1].engine.stats());
    assert_eq!(d[0].node, 1);
    assert_eq!(d[0].port, cloud);
    assert_eq!(d[0].packet, syn);
    let reply = tcp("10.20.100.1", "10.20.1.10", 443, 40000, b"world");
    assert!(matches!(w.send_app(1, cloud, &reply), AppOutcome::Send(_)));
    w.run();
    let d = w.take_delivered();
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].node, d[0].port), (0, app));
    // Wrong port.
    let bad = tcp("10.20.1.10", "10.20.100.1", 40001, 22, b"x");
    assert_eq!(
        w.send_app(0, app, &bad),
        AppOutcome::Drop(DropReason::PolicyDenied)
    );
}
