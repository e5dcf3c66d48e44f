//! A bad WAN: 5% loss in each direction and 50 ms of delay in each direction, on the path
//! between the gateways. A 20 MB TCP transfer through the tunnel still arrives intact (checked
//! by hash) in reasonable time.
//!
//! This kernel has no netem. The delay is a delaying UDP relay; the loss is nftables in the
//! relay's namespace, on what the relay sends: there each datagram is its own packet. (The
//! gateways send with UDP GSO, and a GSO batch crosses a veth whole, so a rule where the
//! gateways send, or where the relay receives, would drop whole batches instead of 5% of the
//! datagrams.)
//!
//! The sending app uses BBR. With a loss-based congestion control (reno, cubic) TCP itself
//! cannot go fast here: at 5% random loss and a 100 ms round trip its window stays at a few
//! segments (Mathis: rate ≈ MSS/RTT·1.2/√p ≈ 0.6 Mbit/s; reno measured 0.5 Mbit/s, 20 MB in
//! almost six minutes) whatever the tunnel does. BBR paces by measured bandwidth and delay, so
//! the transfer shows what the tunnel carries: every byte, in seconds.
//!
//! edge (edge-1, 192.168.51.1) — relay (192.168.51.2:51820 | 192.168.52.1) — dc (dc-1,
//! 192.168.52.2:51820). edge-1 knows dc-1 at the relay's address; dc-1 learns edge-1's address
//! (the relay's back side) from authenticated packets, as it would behind a NAT.

#![cfg(test)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use netns_tests::{DelayRelay, Lab, require_tool, set_congestion_control, tcp_transfer_configured};

const GATEWAYS_VIA_RELAY: &str = r#"
[[gateway]]
name = "edge-1"
keys = { acme = "@key(edge-1,acme)", globex = "@key(edge-1,globex)" }

[[gateway]]
name = "dc-1"
endpoint = "192.168.51.2:51820"
keys = { acme = "@key(dc-1,acme)", globex = "@key(dc-1,globex)" }
"#;

const LOSS_PERCENT: u32 = 5;
const DELAY: Duration = Duration::from_millis(50);
const SIZE: usize = 20 << 20;

/// Drops `LOSS_PERCENT`% of the datagrams the relay namespace `ns` sends toward dc-1 and toward
/// edge-1, counting each direction (matched by destination address: both ends use port 51820).
fn lossy(lab: &Lab, ns: &str) {
    let rule = |m: &str| {
        format!(
            "nft add rule inet lossy out {m} numgen random mod 100 lt {LOSS_PERCENT} counter drop"
        )
    };
    lab.sh_ok(
        ns,
        &format!(
            "nft add table inet lossy && \
             nft add chain inet lossy out '{{ type filter hook output priority 0; }}' && \
             {} && {}",
            rule("ip daddr 192.168.52.2 udp dport 51820"),
            rule("ip daddr 192.168.51.1 udp sport 51820")
        ),
    );
}

/// Datagrams dropped so far by [`lossy`] in `ns`: (toward dc-1, toward edge-1).
fn lost(lab: &Lab, ns: &str) -> (u64, u64) {
    let out = lab.sh_ok(ns, "nft list chain inet lossy out");
    let count = |m: &str| -> u64 {
        out.lines()
            .find(|l| l.contains(m))
            .and_then(|l| {
                l.split_whitespace()
                    .skip_while(|w| *w != "packets")
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no counter for {m} in:\n{out}"))
    };
    (count("192.168.52.2"), count("192.168.51.1"))
}

#[test]
fn twenty_megabytes_cross_a_lossy_slow_wan_intact() {
    let Some(mut lab) = Lab::new("lossy") else {
        return;
    };
    require_tool("nft", "nftables");
    let edge_ns = lab.ns("edge");
    let relay_ns = lab.ns("relay");
    let dc_ns = lab.ns("dc");
    for app in ["acme-app", "globex-app", "acme-cloud", "globex-cloud"] {
        lab.ns(app);
    }
    lab.link(&edge_ns, "192.168.51.1/24", &relay_ns, "192.168.51.2/24");
    lab.link(&relay_ns, "192.168.52.1/24", &dc_ns, "192.168.52.2/24");
    let relay = DelayRelay::start(
        &relay_ns,
        "192.168.51.2:51820".parse().unwrap(),
        "192.168.52.1:40000".parse().unwrap(),
        "192.168.52.2:51820".parse().unwrap(),
        DELAY,
    );
    lossy(&lab, &relay_ns);
    let policy = lab.policy(&[
        ("gateways.toml", GATEWAYS_VIA_RELAY),
        ("tenants/acme.toml", common::ACME),
        ("tenants/globex.toml", common::GLOBEX),
    ]);
    let dc = lab.gateway(&dc_ns, "dc-1", "0.0.0.0:51820", &policy);
    let edge = lab.gateway(&edge_ns, "edge-1", "0.0.0.0:51820", &policy);
    let acme_app = lab.ns_name("acme-app");
    let acme_cloud = lab.ns_name("acme-cloud");

    // The WAN really is slow: the round trip through the tunnel takes two relay delays.
    let out = lab.sh(&acme_app, "ping -n -c 10 -i 0.2 -W 2 10.20.100.1");
    let text = String::from_utf8_lossy(&out.stdout);
    let min_rtt: f64 = text
        .split("= ")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no ping through the tunnel:\n{text}\n{}", edge.log()));
    assert!(
        min_rtt >= 2.0 * DELAY.as_secs_f64() * 1000.0,
        "the relay delays: min rtt {min_rtt} ms"
    );
    let start = Instant::now();
    let result = tcp_transfer_configured(
        &acme_app,
        &acme_cloud,
        "10.20.100.1:5001".parse::<SocketAddr>().unwrap(),
        SIZE,
        Duration::from_secs(120),
        |conn| set_congestion_control(conn, "bbr"),
    );
    let took = start.elapsed();
    let (lost_up, lost_down) = lost(&lab, &relay_ns);
    let relayed = [
        relay.relayed[0].load(Ordering::Relaxed),
        relay.relayed[1].load(Ordering::Relaxed),
    ];
    eprintln!(
        "lossy wan: {} MB in {:.1} s = {:.2} Mbit/s (tcp bbr, min rtt {min_rtt} ms); \
         datagrams relayed edge->dc {}, dc->edge {}; lost by nftables edge->dc {lost_up}, dc->edge {lost_down}",
        SIZE >> 20,
        took.as_secs_f64(),
        SIZE as f64 * 8.0 / took.as_secs_f64() / 1e6,
        relayed[0],
        relayed[1],
    );
    result.unwrap_or_else(|e| {
        panic!(
            "20 MB over the lossy WAN: {e}\nedge-1: {:?}\ndc-1: {:?}",
            edge.status().engine,
            dc.status().engine
        )
    });
    // The loss was real, in both directions, at about the configured rate (within a factor 2).
    for (dir, lost, relayed) in [
        ("edge->dc", lost_up, relayed[0]),
        ("dc->edge", lost_down, relayed[1]),
    ] {
        let sent = lost + relayed;
        assert!(
            lost * 100 * 2 >= sent * u64::from(LOSS_PERCENT)
                && lost * 100 <= 2 * sent * u64::from(LOSS_PERCENT),
            "{dir}: {lost} of {sent} datagrams lost, not about {LOSS_PERCENT}%"
        );
    }
    assert!(
        took < Duration::from_secs(120),
        "the transfer took {took:?}"
    );
    let rx = dc
        .status()
        .engine
        .tenants
        .iter()
        .find(|t| t.name == "acme")
        .map(|t| t.counters.rx.bytes)
        .unwrap_or(0);
    assert!(rx >= SIZE as u64, "dc-1 counted {rx} bytes for acme");
}
