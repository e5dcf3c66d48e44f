//! Gateways with two packet workers (`workers = 2`): each tenant is served by one worker, both
//! tenants carry traffic at once (TCP checked by hash), a numbered UDP stream arrives in order,
//! status shows both workers, and a reload keeps every tenant on its worker and its sessions.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use netns_tests::{Lab, in_ns, tcp_transfer};

#[test]
fn two_workers_carry_both_tenants_in_order() {
    let Some(mut lab) = Lab::new("workers") else {
        return;
    };
    let edge_ns = lab.ns("edge");
    let dc_ns = lab.ns("dc");
    for app in ["acme-app", "globex-app", "acme-cloud", "globex-cloud"] {
        lab.ns(app);
    }
    lab.link(&edge_ns, "192.168.50.1/24", &dc_ns, "192.168.50.2/24");
    let policy = lab.policy(&[
        ("gateways.toml", common::GATEWAYS),
        ("tenants/acme.toml", common::ACME),
        ("tenants/globex.toml", common::GLOBEX),
    ]);
    let dc = lab.gateway_with(&dc_ns, "dc-1", "0.0.0.0:51820", &policy, "workers = 2\n");
    let edge = lab.gateway_with(
        &edge_ns,
        "edge-1",
        "0.0.0.0:51820",
        &policy,
        "workers = 2\n",
    );
    let acme_app = lab.ns_name("acme-app");
    let acme_cloud = lab.ns_name("acme-cloud");
    let globex_app = lab.ns_name("globex-app");
    let globex_cloud = lab.ns_name("globex-cloud");

    // Each gateway runs two workers, one tenant each.
    for gw in [&dc, &edge] {
        let s = gw.status();
        assert_eq!(s.workers.len(), 2, "{:?}\n{}", s.workers, gw.log());
        let mut served: Vec<&str> = s
            .workers
            .iter()
            .inspect(|w| assert!(w.answered, "worker {} did not answer", w.worker))
            .flat_map(|w| {
                assert_eq!(w.tenants.len(), 1, "{:?}", s.workers);
                w.tenants.iter().map(String::as_str)
            })
            .collect();
        served.sort_unstable();
        assert_eq!(served, ["acme", "globex"]);
    }
    let before = dc.status().workers;

    assert!(
        lab.ping(&acme_app, "10.20.100.1", 3),
        "acme ping\n{}",
        edge.log()
    );
    assert!(
        lab.ping(&globex_app, "10.20.100.1", 3),
        "globex ping\n{}",
        dc.log()
    );

    // Both tenants at once, each checked by hash.
    std::thread::scope(|s| {
        let a = s.spawn(|| {
            tcp_transfer(
                &acme_app,
                &acme_cloud,
                "10.20.100.1:5001".parse().unwrap(),
                8 << 20,
                Duration::from_secs(30),
            )
        });
        let g = s.spawn(|| {
            tcp_transfer(
                &globex_app,
                &globex_cloud,
                "10.20.100.1:7000".parse().unwrap(),
                8 << 20,
                Duration::from_secs(30),
            )
        });
        a.join()
            .unwrap()
            .unwrap_or_else(|e| panic!("acme tcp: {e}"));
        g.join()
            .unwrap()
            .unwrap_or_else(|e| panic!("globex tcp: {e}"));
    });

    // A numbered UDP stream arrives in order (any loss aside).
    let (received, reordered) = udp_sequence(&acme_app, &acme_cloud, 3000);
    assert!(received >= 2900, "acme udp: {received}/3000 arrived");
    assert_eq!(reordered, 0, "acme udp: {reordered} datagrams out of order");

    let dc_status = dc.status();
    for tenant in ["acme", "globex"] {
        let t = dc_status
            .engine
            .tenants
            .iter()
            .find(|t| t.name == tenant)
            .unwrap();
        assert!(t.counters.rx.bytes > 8 << 20, "{tenant}: {:?}", t.counters);
        assert!(t.peers[0].last_handshake.is_some());
    }
    let total: u64 = dc_status.workers.iter().map(|w| w.io.udp_rx).sum();
    assert_eq!(total, dc_status.io.udp_rx);
    for w in &dc_status.workers {
        assert!(
            w.io.tun_tx > 0,
            "worker {} wrote nothing: {:?}",
            w.worker,
            w.io
        );
        eprintln!(
            "dc-1 worker {} {:?}: wan rx {} tx {}, handed over {}",
            w.worker, w.tenants, w.io.udp_rx, w.io.udp_tx, w.io.udp_rx_handed_over
        );
    }

    // A reload keeps each tenant on its worker and the sessions up.
    dc.reload();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dc.status().reloads == 0 {
        assert!(Instant::now() < deadline, "no reload\n{}", dc.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = dc.status();
    for (b, a) in before.iter().zip(&after.workers) {
        assert_eq!(b.tenants, a.tenants, "a tenant moved to another worker");
    }
    assert!(dc.log().contains("kept=2"), "{}", dc.log());
    tcp_transfer(
        &globex_app,
        &globex_cloud,
        "10.20.100.1:7000".parse().unwrap(),
        1 << 20,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("globex tcp after reload: {e}"));
}

/// Sends `count` datagrams numbered 0.. from `client_ns` to 10.20.100.1:6000 in `server_ns`;
/// returns how many arrived and how many arrived after a higher number.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: failing to set up is the test failing"
)]
fn udp_sequence(client_ns: &str, server_ns: &str, count: u32) -> (u32, u32) {
    let server = "10.20.100.1:6000";
    let sock = in_ns(server_ns, || UdpSocket::bind(server)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let client = in_ns(client_ns, || UdpSocket::bind("0.0.0.0:0")).unwrap();
    let sender = std::thread::spawn(move || {
        let mut msg = [0u8; 1000];
        for i in 0..count {
            msg[..4].copy_from_slice(&i.to_be_bytes());
            let _ = client.send_to(&msg, server);
            if i % 64 == 63 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let (mut received, mut reordered, mut last) = (0, 0, None);
    let mut buf = [0u8; 2048];
    while let Ok(n) = sock.recv(&mut buf) {
        if n < 4 {
            continue;
        }
        let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        received += 1;
        if last.is_some_and(|l| seq <= l) {
            reordered += 1;
        }
        last = Some(seq);
        if seq + 1 == count {
            break;
        }
    }
    sender.join().unwrap();
    (received, reordered)
}
