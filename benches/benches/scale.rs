//! The engine at scale: lookups that grow with the configuration, each beside a baseline of
//! the same path on a minimal configuration, so the difference is the cost of the size.
//!
//! - `policy_10k_rules`: a tenant with 10,000 rules, either all between one pair of endpoints
//!   (the worst case: the pair's rules are scanned in order) or 100 destinations × 100 ports
//!   (a pair lookup, then 100 rules). A packet allowed by the pair's last rule goes all the way
//!   (policy, conntrack, encrypt); a denied one scans every rule of its pair and is dropped
//!   before encryption.
//! - `routing_100k_prefixes`: the remote endpoint has 100,000 routes (/28s); a packet to one in
//!   the middle (route, policy, encrypt), and one to a gap between them (source and
//!   destination lookups, then dropped as `no_route`).
//! - `demux_10k_sessions`: the receiving gateway holds 10,000 sessions (one tenant, 10,000
//!   peers); a data datagram of one of them is decrypted and delivered, and one naming no
//!   session is dropped as `unknown_index` (the index lookup alone).
//! - `mac1_identity_1k_tenants`: one gateway serving 1,000 tenants, each its own WireGuard
//!   identity. A handshake initiation names no session, so the engine computes its mac1
//!   against each tenant's key until one matches (DESIGN.md §3). See `mac1` below for what
//!   exactly is measured.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use corridor_benches::{
    APP, CLOUD, data_datagram, engine_with_tenants, establish, established, established_pair,
    initiation_for, tcp_packet, topology, world_with_extra_peers,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::config::Protocol;
use dataplane::engine::{AppOutcome, DropReason, PortId, WanOutcome};
use dataplane::sim::{TenantSpec, World};
use ip_network::{IpNetwork, Ipv4Network};

/// Measures `packet` through `handle_app_packet` of edge-1 and checks the outcome first.
fn bench_app(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    world: &mut World,
    app: PortId,
    packet: &[u8],
    expect_send: bool,
) {
    let now = world.now();
    let engine = &mut world.nodes[0].engine;
    let mut out = vec![0u8; 65_600];
    let first = engine.handle_app_packet(app, packet, now, &mut out);
    assert_eq!(
        matches!(first, AppOutcome::Send(_)),
        expect_send,
        "{name}: {first:?}"
    );
    g.bench_function(name, |b| {
        b.iter(|| black_box(engine.handle_app_packet(app, black_box(packet), now, &mut out)))
    });
}

fn policy(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy_10k_rules");
    g.throughput(Throughput::Elements(1));
    let last_port = 19_999;
    let allowed = tcp_packet(APP, CLOUD, 40000, last_port, 64);
    let denied = tcp_packet(APP, CLOUD, 40000, 80, 64);

    // Baseline: one rule.
    let one = TenantSpec::new("acme", 2)
        .endpoint("app", 0, &["10.20.1.10/32"])
        .endpoint("cloud", 1, &["10.20.100.0/24"])
        .allow("app", "cloud", Protocol::Tcp, &[(last_port, last_port)]);
    let (mut w, app, _) = established(&topology(vec![one]), "acme", &allowed);
    bench_app(&mut g, "1_rule/allowed", &mut w, app, &allowed, true);
    bench_app(&mut g, "1_rule/denied", &mut w, app, &denied, false);
    drop(w);

    // 10,000 rules between app and cloud, one port each; the packet matches the last.
    let mut pair = TenantSpec::new("acme", 2)
        .endpoint("app", 0, &["10.20.1.10/32"])
        .endpoint("cloud", 1, &["10.20.100.0/24"]);
    for port in 10_000..=last_port {
        pair = pair.allow("app", "cloud", Protocol::Tcp, &[(port, port)]);
    }
    let (mut w, app, _) = established(&topology(vec![pair]), "acme", &allowed);
    bench_app(&mut g, "one_pair/last_rule", &mut w, app, &allowed, true);
    bench_app(&mut g, "one_pair/denied", &mut w, app, &denied, false);
    drop(w);

    // 100 destinations × 100 ports; the packet goes to the last destination's last port.
    let mut spread = TenantSpec::new("acme", 2).endpoint("app", 0, &["10.20.1.10/32"]);
    for d in 0..99 {
        spread = spread.endpoint(&format!("cloud-{d}"), 1, &[&format!("10.21.{d}.0/24")]);
    }
    spread = spread.endpoint("cloud", 1, &["10.20.100.0/24"]);
    let names: Vec<String> = (0..99)
        .map(|d| format!("cloud-{d}"))
        .chain(["cloud".into()])
        .collect();
    for name in &names {
        for port in (last_port - 99)..=last_port {
            spread = spread.allow("app", name, Protocol::Tcp, &[(port, port)]);
        }
    }
    assert_eq!(spread.rules.len(), 10_000);
    let (mut w, app, _) = established(&topology(vec![spread]), "acme", &allowed);
    bench_app(&mut g, "100x100/last_rule", &mut w, app, &allowed, true);
    bench_app(&mut g, "100x100/denied", &mut w, app, &denied, false);
    g.finish();
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing_100k_prefixes");
    g.throughput(Throughput::Elements(1));
    // /28s every 32 addresses from 10.64.0.0: prefix i covers base + 32 i .. + 15, and
    // base + 32 i + 16 .. + 31 is a gap no endpoint has.
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
    let routes: Vec<IpNetwork> = (0..100_000u32)
        .filter_map(|i| Ipv4Network::new(Ipv4Addr::from(base + 32 * i), 28).ok())
        .map(IpNetwork::from)
        .collect();
    assert_eq!(routes.len(), 100_000);
    let hit_dst = Ipv4Addr::from(base + 32 * 50_000 + 1).octets();
    let gap_dst = Ipv4Addr::from(base + 32 * 50_000 + 20).octets();
    let hit = tcp_packet(APP, hit_dst, 40000, 443, 64);
    let gap = tcp_packet(APP, gap_dst, 40000, 443, 64);

    let (mut w, app, _) = established_pair();
    bench_app(
        &mut g,
        "1_prefix/hit",
        &mut w,
        app,
        &tcp_packet(APP, CLOUD, 40000, 443, 64),
        true,
    );
    bench_app(&mut g, "1_prefix/no_route", &mut w, app, &gap, false);
    drop(w);

    let mut big = TenantSpec::new("acme", 2)
        .endpoint("app", 0, &["10.20.1.10/32"])
        .allow("app", "cloud", Protocol::Tcp, &[(443, 443)]);
    big.endpoints.push(("cloud".into(), 1, routes));
    let (mut w, app, _) = established(&topology(vec![big]), "acme", &hit);
    bench_app(&mut g, "100k_prefixes/hit", &mut w, app, &hit, true);
    bench_app(&mut g, "100k_prefixes/no_route", &mut w, app, &gap, false);
    g.finish();
}

/// Data datagrams for `world`'s established session, decrypted at dc-1.
fn bench_wan(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    world: &mut World,
    app: PortId,
) {
    let packet = tcp_packet(APP, CLOUD, 40000, 443, 64);
    let now = world.now();
    let from = world.nodes[0].addr;
    let (edge, dc) = world.nodes.split_at_mut(1);
    let (edge, dc) = (&mut edge[0].engine, &mut dc[0].engine);
    let mut enc = vec![0u8; 65_600];
    let mut out = vec![0u8; 65_600];
    // Each datagram is accepted once (replay protection): every iteration decrypts a freshly
    // encrypted one; the encryption is setup, not measured.
    g.bench_function(format!("{name}/deliver"), |b| {
        b.iter_batched_ref(
            || match edge.handle_app_packet(app, &packet, now, &mut enc) {
                AppOutcome::Send(t) => enc[..t.len].to_vec(),
                other => unreachable!("bench session is up: {other:?}"),
            },
            |d| {
                let o = dc.handle_wan_datagram(from, black_box(d), now, &mut out);
                black_box(matches!(o, WanOutcome::Deliver { .. }))
            },
            BatchSize::SmallInput,
        )
    });
    // An index that names no session here (24-bit indices are random: find a free one).
    let unknown = (1..)
        .map(|i: u32| data_datagram(i << 8, 64))
        .find(|d| {
            dc.handle_wan_datagram(from, d, now, &mut out)
                == WanOutcome::Drop(DropReason::UnknownIndex)
        })
        .unwrap_or_default();
    g.bench_function(format!("{name}/unknown_index"), |b| {
        b.iter(|| black_box(dc.handle_wan_datagram(from, black_box(&unknown), now, &mut out)))
    });
}

fn demux(c: &mut Criterion) {
    let mut g = c.benchmark_group("demux_10k_sessions");
    g.throughput(Throughput::Elements(1));
    let (mut w, app, _) = established_pair();
    bench_wan(&mut g, "1_session", &mut w, app);
    drop(w);

    let tenant = TenantSpec::new("acme", 2)
        .endpoint("app", 0, &["10.20.1.10/32"])
        .endpoint("cloud", 1, &["10.20.100.0/24"])
        .allow("app", "cloud", Protocol::Tcp, &[(443, 443)]);
    let topo = topology(vec![tenant]);
    let world = world_with_extra_peers(&topo, 9_999);
    let first = tcp_packet(APP, CLOUD, 40000, 443, 64);
    let (mut w, app, _) = establish(world, "acme", &first);
    let sessions: usize = w.nodes[1]
        .engine
        .stats()
        .tenants
        .iter()
        .map(|t| t.peers.len())
        .sum();
    assert_eq!(sessions, 10_000);
    bench_wan(&mut g, "10k_sessions", &mut w, app);
    g.finish();
}

/// What is measured: `handle_wan_datagram` of a 148-byte handshake initiation, up to the
/// identity match and a little beyond. The datagram's mac1 is valid for one tenant's public
/// key (or for none) and the rest is junk, so no session is ever created and the engine's
/// state does not change between iterations:
///
/// - `none`: mac1 matches no tenant: one keyed BLAKE2s per tenant, then `unknown_identity`.
///   This is the scan alone, and what a flood of garbage initiations costs.
/// - `last`: mac1 matches the last of the tenants: the scan, then that tenant's rate limiter
///   verifies mac1 again. Within its first 100 initiations of each second it lets the packet
///   through to one X25519 (boringtun's `parse_handshake_anon`), whose AEAD then fails
///   (`handshake_failed`); beyond that it is under load and answers with a cookie reply
///   (`handshake_under_load`). A bench sends far more than 100 per second, so the figure is
///   dominated by the flood path: scan + cookie. The outcome mix is printed at the end.
/// - `1_tenant/match`: the same datagram on a gateway with one tenant: the difference to
///   `1000_tenants/last` is the 999 extra mac1 computations.
fn mac1(c: &mut Criterion) {
    let mut g = c.benchmark_group("mac1_identity_1k_tenants");
    g.throughput(Throughput::Elements(1));
    let from: SocketAddr = ([198, 51, 100, 7], 51820).into();
    let mut out = vec![0u8; 2048];
    for (tenants, which) in [(1usize, "match"), (1000, "last"), (1000, "none")] {
        let mut engine = engine_with_tenants(tenants);
        let target = format!("t{}", tenants - 1);
        let public = engine.public_key(&target);
        let init = initiation_for(
            if which == "none" {
                None
            } else {
                public.as_ref()
            },
            7,
        );
        let now = std::time::Instant::now();
        let mut failed = 0u64;
        let mut cookie = 0u64;
        let mut unknown = 0u64;
        let label = if tenants == 1 {
            "1_tenant"
        } else {
            "1000_tenants"
        };
        g.bench_function(format!("{label}/{which}"), |b| {
            b.iter(|| {
                let o = engine.handle_wan_datagram(from, black_box(&init), now, &mut out);
                match o {
                    WanOutcome::Drop(DropReason::HandshakeFailed) => failed += 1,
                    WanOutcome::Reply(_) => cookie += 1,
                    WanOutcome::Drop(DropReason::UnknownIdentity) => unknown += 1,
                    _ => {}
                }
                black_box(o)
            })
        });
        eprintln!(
            "mac1_identity {label}/{which}: {failed} handshake_failed (mac1 ok, X25519, AEAD failed), {cookie} cookie replies (under load), {unknown} unknown_identity"
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        // HTML plots (plotters) cost more time than the measurements; `target/criterion` keeps the data.
        .without_plots()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2));
    targets = policy, routing, demux, mac1
}
criterion_main!(benches);
