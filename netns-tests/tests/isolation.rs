//! Tenant isolation on the real binary (DESIGN.md §2.1, §2.3): in the standard world, acme's app
//! reaches nothing but its own cloud — not globex's destination (same address, other tenant),
//! not globex's app on the same gateway, not the gateways' own addresses, not the WAN — first
//! as corridor sets its namespace up, then as a compromised app that routes everything into its
//! corridor interface. Every refused packet is counted on edge-1 under acme; listeners on every
//! target prove, by staying silent, that nothing arrived (and, by hearing a control, that they
//! would have noticed).

#![cfg(test)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use dataplane::engine::{DropReason, Drops};
use netns_tests::{Gateway, Sink, SinkCounts, tcp_send, tcp_transfer, udp_send};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A tenant's drop counters on a gateway.
fn drops(gw: &Gateway, tenant: &str) -> Drops {
    gw.status()
        .engine
        .tenants
        .iter()
        .find(|t| t.name == tenant)
        .map(|t| t.counters.drops)
        .unwrap_or_else(|| panic!("{}: no tenant {tenant}", gw.name))
}

/// Packets a tenant sent to the WAN and received from it, on a gateway.
fn traffic(gw: &Gateway, tenant: &str) -> (u64, u64) {
    let s = gw.status();
    let t = s.engine.tenants.iter().find(|t| t.name == tenant).unwrap();
    (t.counters.tx.packets, t.counters.rx.packets)
}

/// The drops an app's attempts can cause (interface chatter such as link-local left out).
fn refusals(d: &Drops) -> [u64; 4] {
    [
        d.get(DropReason::NoRoute),
        d.get(DropReason::PolicyDenied),
        d.get(DropReason::SpoofedSource),
        d.get(DropReason::PeerUnreachable),
    ]
}

fn grew(before: &Drops, after: &Drops, reason: DropReason) -> u64 {
    after.get(reason) - before.get(reason)
}

/// One try of each kind from `ns` at `target` (a TCP connection and three UDP datagrams);
/// `Ok` if the TCP connection was established.
fn try_reach(ns: &str, target: SocketAddr) -> Result<(), std::io::Error> {
    let tcp = tcp_send(ns, target, b"let me in", Duration::from_millis(1500));
    let _ = udp_send(ns, target, b"let me in", 3);
    tcp
}

#[test]
fn acme_reaches_only_its_own_cloud() {
    let Some(w) = common::world("iso") else {
        return;
    };
    let lab = &w.lab;
    let acme_app = lab.ns_name("acme-app");
    let acme_cloud = lab.ns_name("acme-cloud");
    let globex_app = lab.ns_name("globex-app");
    let globex_cloud = lab.ns_name("globex-cloud");

    // Listeners on everything acme must not reach (and on acme's own cloud, port 7000, which
    // its policy does not allow either).
    let globex_dest = Sink::new(&globex_cloud, sa("10.20.100.1:7000"));
    let globex_dest_5001 = Sink::new(&globex_cloud, sa("10.20.100.1:5001"));
    let globex_app_sink = Sink::new(&globex_app, sa("10.20.1.10:7000"));
    let acme_cloud_7000 = Sink::new(&acme_cloud, sa("10.20.100.1:7000"));
    let edge_host = Sink::new(&w.edge_ns, sa("192.168.50.1:9000"));
    let dc_host = Sink::new(&w.dc_ns, sa("192.168.50.2:9000"));
    let wan_targets = [&edge_host, &dc_host];

    // Positive controls: each listener hears what is allowed to reach it.
    tcp_send(
        &globex_app,
        sa("10.20.100.1:7000"),
        b"hello",
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("control: globex -> its cloud :7000: {e}"));
    let c = globex_dest.wait_for(Duration::from_secs(5), |c| c.tcp_bytes == 5);
    assert_eq!(
        c.tcp_bytes, 5,
        "control: globex's server heard its own app: {c:?}"
    );
    tcp_send(
        &w.dc_ns,
        sa("192.168.50.1:9000"),
        b"hello",
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("control: dc -> edge host: {e}"));
    tcp_send(
        &w.edge_ns,
        sa("192.168.50.2:9000"),
        b"hello",
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("control: edge -> dc host: {e}"));
    udp_send(&w.dc_ns, sa("192.168.50.1:9000"), b"hello", 1).unwrap();
    udp_send(&w.edge_ns, sa("192.168.50.2:9000"), b"hello", 1).unwrap();
    for sink in wan_targets {
        let c = sink.wait_for(Duration::from_secs(5), |c| {
            c.tcp_bytes == 5 && c.udp_datagrams == 1
        });
        assert_eq!(
            (c.tcp_bytes, c.udp_datagrams),
            (5, 1),
            "control: the listener on {} hears its own network: {c:?}",
            sink.addr
        );
    }
    // And acme reaches its own cloud on an allowed port (the tunnel is up).
    tcp_transfer(
        &acme_app,
        &acme_cloud,
        sa("10.20.100.1:5001"),
        64 << 10,
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("control: acme -> its cloud :5001: {e}"));
    assert!(
        globex_dest_5001.counts().is_empty(),
        "acme's allowed transfer to 10.20.100.1:5001 reached globex's cloud: {:?}",
        globex_dest_5001.counts()
    );

    let baseline = |s: &Sink| s.counts();
    let sinks: Vec<(&str, &Sink, SinkCounts)> = vec![
        (
            "globex-cloud 10.20.100.1:7000",
            &globex_dest,
            baseline(&globex_dest),
        ),
        (
            "globex-cloud 10.20.100.1:5001",
            &globex_dest_5001,
            baseline(&globex_dest_5001),
        ),
        (
            "globex-app 10.20.1.10:7000",
            &globex_app_sink,
            baseline(&globex_app_sink),
        ),
        (
            "acme-cloud 10.20.100.1:7000",
            &acme_cloud_7000,
            baseline(&acme_cloud_7000),
        ),
        (
            "edge host 192.168.50.1:9000",
            &edge_host,
            baseline(&edge_host),
        ),
        ("dc host 192.168.50.2:9000", &dc_host, baseline(&dc_host)),
    ];
    let (globex_tx0, _) = traffic(&w.edge, "globex");
    let (_, globex_rx0) = traffic(&w.dc, "globex");
    let (acme_tx0, _) = traffic(&w.edge, "acme");
    let silent = |phase: &str| {
        std::thread::sleep(Duration::from_millis(300));
        for (name, sink, before) in &sinks {
            assert_eq!(
                sink.counts(),
                *before,
                "{phase}: something from acme arrived at {name}"
            );
        }
        // Nothing was ever encrypted under globex's session, nor decrypted from it.
        assert_eq!(
            traffic(&w.edge, "globex").0,
            globex_tx0,
            "{phase}: edge-1 sent as globex"
        );
        assert_eq!(
            traffic(&w.dc, "globex").1,
            globex_rx0,
            "{phase}: dc-1 received as globex"
        );
    };

    // --- 1. globex's destination: the same address, but acme's table and policy. ---
    let before = drops(&w.edge, "acme");
    let r = try_reach(&acme_app, sa("10.20.100.1:7000"));
    assert!(r.is_err(), "acme connected to 10.20.100.1:7000");
    let after = drops(&w.edge, "acme");
    assert!(
        grew(&before, &after, DropReason::PolicyDenied) >= 4,
        "edge-1 counts acme's SYN(s) and 3 datagrams to :7000 as policy_denied: before {before:?}, after {after:?}"
    );
    assert_eq!(
        traffic(&w.edge, "acme").0,
        acme_tx0,
        "edge-1 sent nothing for acme"
    );
    silent("acme -> 10.20.100.1:7000");

    // --- 2. as corridor set the namespace up: no route beyond acme's cloud. ---
    let before = drops(&w.edge, "acme");
    for target in [
        "192.168.50.1:9000",
        "192.168.50.2:9000",
        "198.51.100.7:9000",
    ] {
        let err = tcp_send(&acme_app, sa(target), b"x", Duration::from_secs(1))
            .expect_err("acme's app connected to a WAN address");
        assert_eq!(
            err.raw_os_error(),
            Some(nix::libc::ENETUNREACH),
            "acme -> {target}: {err}"
        );
        let err = udp_send(&acme_app, sa(target), b"x", 1)
            .expect_err("acme's app sent a datagram to a WAN address");
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENETUNREACH), "{err}");
    }
    for host in ["192.168.50.1", "192.168.50.2"] {
        assert!(!lab.ping(&acme_app, host, 1), "acme's app pings {host}");
    }
    // globex's app has acme's own address: the kernel answers it inside acme's namespace.
    assert!(try_reach(&acme_app, sa("10.20.1.10:7000")).is_err());
    assert_eq!(
        refusals(&drops(&w.edge, "acme")),
        refusals(&before),
        "nothing reached corridor (the kernel refused it)"
    );
    silent("acme's app as set up");

    // --- 3. a compromised app routes everything into corridor. ---
    lab.sh_ok(&acme_app, "ip route add default dev corridor0");
    let before = drops(&w.edge, "acme");
    let mut tries = 0u64;
    for target in [
        "192.168.50.1:9000",
        "192.168.50.2:9000",
        "198.51.100.7:9000",
    ] {
        let r = try_reach(&acme_app, sa(target));
        assert!(r.is_err(), "compromised acme connected to {target}");
        tries += 1 + 3;
    }
    for host in ["192.168.50.1", "192.168.50.2"] {
        assert!(
            !lab.ping(&acme_app, host, 2),
            "compromised acme pings {host}"
        );
        tries += 2;
    }
    let after = drops(&w.edge, "acme");
    assert!(
        grew(&before, &after, DropReason::NoRoute) >= tries,
        "edge-1 counts at least {tries} no_route drops for acme: before {before:?}, after {after:?}"
    );
    silent("compromised acme -> WAN");

    // globex's app, same gateway: acme drops its own local route to that address so that the
    // packets go into corridor. They are acme's packets to acme's own address: no route.
    lab.sh_ok(&acme_app, "ip route del local 10.20.1.10 table local");
    let before = drops(&w.edge, "acme");
    assert!(try_reach(&acme_app, sa("10.20.1.10:7000")).is_err());
    let after = drops(&w.edge, "acme");
    assert!(
        grew(&before, &after, DropReason::NoRoute) >= 4,
        "edge-1 counts acme's packets to 10.20.1.10 as no_route: before {before:?}, after {after:?}"
    );
    silent("compromised acme -> globex's app");

    // Still not globex's destination, whatever the routes say.
    let before = drops(&w.edge, "acme");
    assert!(try_reach(&acme_app, sa("10.20.100.1:7000")).is_err());
    let after = drops(&w.edge, "acme");
    assert!(grew(&before, &after, DropReason::PolicyDenied) >= 4);
    silent("compromised acme -> 10.20.100.1:7000");

    // globex, untouched by all this, still reaches its cloud.
    let heard = globex_dest.counts().tcp_bytes;
    tcp_send(
        &globex_app,
        sa("10.20.100.1:7000"),
        b"still here",
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("globex after acme's attempts: {e}"));
    let c = globex_dest.wait_for(Duration::from_secs(5), |c| c.tcp_bytes == heard + 10);
    assert_eq!(
        c.tcp_bytes,
        heard + 10,
        "globex after acme's attempts: {c:?}"
    );
    // globex never dropped anything acme did.
    let g = drops(&w.edge, "globex");
    assert_eq!(
        g.get(DropReason::NoRoute) + g.get(DropReason::PolicyDenied),
        0,
        "acme's attempts were counted under globex: {g:?}"
    );
    eprintln!(
        "isolation: edge-1 acme drops {:?}; globex drops {:?}",
        drops(&w.edge, "acme"),
        g
    );
}
