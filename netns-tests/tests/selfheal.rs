//! Self-heal: an app's namespace deleted and created again under load (a restarted
//! container) gets its interface back within seconds, by itself, while the other tenant never
//! notices and the tenant's sessions stay; a gateway told to wait (`missing-netns = "wait"`)
//! starts without a missing namespace and picks it up when it appears.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: failing loudly is their job"
)]

mod common;
mod observe;

use std::net::UdpSocket;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dataplane::io::{InterfaceState, InterfaceStatus};
use netns_tests::{Gateway, Lab, corridor, in_ns, spawn_in_ns};
use observe::{gateway_with, scrape, until, world_with};

const METRICS: &str = "metrics = \"127.0.0.1:9477\"\n";

fn iface(gw: &Gateway, endpoint: &str) -> InterfaceStatus {
    gw.status()
        .interfaces
        .into_iter()
        .find(|i| i.endpoint == endpoint)
        .unwrap_or_else(|| panic!("no interface for {endpoint}"))
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pings `addr` from `ns` once every 200 ms (1 s timeout each) until stopped; the results.
fn ping_loop(ns: &str, addr: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<bool>> {
    let (ns, addr) = (ns.to_owned(), addr.to_owned());
    std::thread::spawn(move || {
        let mut results = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let ok = Command::new("ip")
                .args([
                    "netns", "exec", &ns, "ping", "-n", "-q", "-c", "1", "-W", "1", &addr,
                ])
                .output()
                .is_ok_and(|o| o.status.success());
            results.push(ok);
            std::thread::sleep(Duration::from_millis(200));
        }
        results
    })
}

/// Binds `addr` in `ns` (once the interface gives the address) and waits for one datagram.
fn first_datagram(ns: &str, addr: &str, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut sock = None;
    let mut buf = [0u8; 2048];
    while start.elapsed() < timeout {
        if sock.is_none() {
            sock = in_ns(ns, || UdpSocket::bind(addr)).ok();
            if let Some(s) = &sock {
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            } else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        if let Some(s) = &sock
            && s.recv(&mut buf).is_ok()
        {
            return Some(start.elapsed());
        }
    }
    None
}

#[test]
fn a_namespace_recreated_under_load_gets_its_interface_back() {
    let started = Instant::now();
    let Some(w) = world_with("heal", METRICS, "", &[]) else {
        return;
    };
    let lab = &w.lab;
    let acme_app = lab.ns_name("acme-app");
    let acme_cloud = lab.ns_name("acme-cloud");
    let globex_app = lab.ns_name("globex-app");
    assert!(lab.ping(&acme_app, "10.20.100.1", 2), "{}", w.dc.log());
    assert!(lab.ping(&globex_app, "10.20.100.1", 2), "{}", w.dc.log());

    // Load: acme's app sends a datagram every 5 ms; globex pings all along.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        spawn_in_ns(&acme_app, move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            while !stop.load(Ordering::SeqCst) {
                let _ = s.send_to(b"load", "10.20.100.1:6000");
                sent.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let globex = ping_loop(&globex_app, "10.20.100.1", stop.clone());
    assert!(
        first_datagram(&acme_cloud, "10.20.100.1:6000", Duration::from_secs(3)).is_some(),
        "acme's load does not arrive before the test\n{}",
        w.dc.log()
    );
    let hs_before = w.dc.peer("acme", "edge-1").unwrap().last_handshake.unwrap();
    let t_before = Instant::now();

    // The container "restarts": its namespace goes away...
    ip(&["netns", "del", &acme_cloud]);
    let noticed = until(Duration::from_secs(3), || {
        iface(&w.dc, "acme-cloud").state == InterfaceState::Missing
    });
    let noticed = noticed.unwrap_or_else(|| panic!("the loss went unnoticed\n{}", w.dc.log()));
    let lost = iface(&w.dc, "acme-cloud");
    assert_eq!((lost.netns_losses, lost.recoveries), (1, 0), "{lost:?}");
    assert!(
        lost.problem
            .as_deref()
            .unwrap_or("")
            .contains("does not exist"),
        "{lost:?}"
    );
    // ... and what arrives for it meanwhile is counted, not written anywhere.
    let counted = until(Duration::from_secs(3), || {
        iface(&w.dc, "acme-cloud").missing_drops > 0
    });
    assert!(counted.is_some(), "{:?}", iface(&w.dc, "acme-cloud"));
    std::thread::sleep(Duration::from_millis(500));

    // ... and comes back, a new namespace under the same name.
    ip(&["netns", "add", &acme_cloud]);
    ip(&["-n", &acme_cloud, "link", "set", "lo", "up"]);
    let resumed = first_datagram(&acme_cloud, "10.20.100.1:6000", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("acme's traffic did not resume\n{}", w.dc.log()));
    assert!(
        resumed < Duration::from_secs(5),
        "acme's traffic resumed only after {resumed:?}"
    );
    let back = iface(&w.dc, "acme-cloud");
    assert_eq!(back.state, InterfaceState::Up, "{back:?}");
    assert_eq!((back.netns_losses, back.recoveries), (1, 1), "{back:?}");
    assert_eq!(back.problem, None);
    // Also both ways: the kernel of the new namespace answers pings.
    assert!(lab.ping(&acme_app, "10.20.100.1", 2), "{}", w.dc.log());

    // The session stayed: no handshake since (the last one only got older).
    let hs_after = w.dc.peer("acme", "edge-1").unwrap().last_handshake.unwrap();
    let elapsed = t_before.elapsed();
    assert!(
        hs_after + Duration::from_secs(1) >= hs_before + elapsed,
        "a new handshake: {hs_before:?} then {hs_after:?} after {elapsed:?}"
    );

    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    let pings = globex.join().unwrap();
    let failed = pings.iter().filter(|ok| !**ok).count();
    assert!(
        pings.len() >= 5 && failed == 0,
        "globex lost {failed} of {} pings",
        pings.len()
    );
    let other = iface(&w.dc, "globex-cloud");
    assert_eq!(
        (other.state, other.netns_losses, other.missing_drops),
        (InterfaceState::Up, 0, 0)
    );

    // The metrics say it too; the log said it once.
    let m = scrape(&w.dc);
    let l = "tenant=\"acme\",endpoint=\"acme-cloud\"";
    assert_eq!(m.must("corridor_interface_netns_losses_total", l), 1.0);
    assert_eq!(m.must("corridor_interface_recoveries_total", l), 1.0);
    assert!(m.must("corridor_interface_missing_drops_total", l) > 0.0);
    let l = "tenant=\"globex\",endpoint=\"globex-cloud\"";
    assert_eq!(m.must("corridor_interface_netns_losses_total", l), 0.0);
    let log = w.dc.log();
    assert_eq!(log.matches("interface lost").count(), 1, "{log}");
    assert_eq!(log.matches("interface created again").count(), 1, "{log}");
    eprintln!(
        "selfheal: noticed in {noticed:?}, resumed {resumed:?} after the namespace came back, {} acme datagrams, {} globex pings; {:.1}s",
        sent.load(Ordering::Relaxed),
        pings.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn missing_netns_wait_starts_without_it_and_picks_it_up() {
    let started = Instant::now();
    let Some(mut lab) = Lab::new("wait") else {
        return;
    };
    let edge_ns = lab.ns("edge");
    let dc_ns = lab.ns("dc");
    for app in ["globex-app", "acme-cloud", "globex-cloud"] {
        lab.ns(app);
    }
    lab.link(&edge_ns, "192.168.50.1/24", &dc_ns, "192.168.50.2/24");
    let policy = lab.policy(&[
        ("gateways.toml", common::GATEWAYS),
        ("tenants/acme.toml", common::ACME),
        ("tenants/globex.toml", common::GLOBEX),
    ]);
    let _dc = gateway_with(&mut lab, &dc_ns, "dc-1", "0.0.0.0:51820", &policy, "");
    let acme_app = lab.ns_name("acme-app");
    let globex_app = lab.ns_name("globex-app");

    // By default, a missing namespace is fatal, and the message says what to do.
    let socket = lab.dir().join("edge-fail.sock");
    let config = lab.gateway_config(
        "edge-fail.toml",
        "edge-1",
        "0.0.0.0:51820",
        &policy,
        &socket,
    );
    let bin = corridor().to_string_lossy().into_owned();
    let (status, out) = lab.run_until_exit(
        &edge_ns,
        &[
            &bin,
            "gateway",
            "run",
            "--config",
            &config.to_string_lossy(),
        ],
        Duration::from_secs(10),
    );
    assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{out}");
    assert!(
        out.contains(&acme_app) && out.contains("missing-netns = \"wait\""),
        "{out}"
    );

    // With "wait", it starts and serves the other tenant.
    let edge = gateway_with(
        &mut lab,
        &edge_ns,
        "edge-1",
        "0.0.0.0:51820",
        &policy,
        &format!("missing-netns = \"wait\"\n{METRICS}"),
    );
    let waiting = iface(&edge, "acme-app");
    assert_eq!(waiting.state, InterfaceState::Missing, "{waiting:?}");
    assert!(
        waiting.problem.as_deref().unwrap_or("").contains("waiting"),
        "{waiting:?}"
    );
    assert!(lab.ping(&globex_app, "10.20.100.1", 2), "{}", edge.log());
    let m = scrape(&edge);
    let prefix = lab.ns_name("");
    let up = |app: &str, tenant: &str| {
        format!(
            "tenant=\"{tenant}\",endpoint=\"{app}\",netns=\"{prefix}{app}\",ifname=\"corridor0\""
        )
    };
    assert_eq!(
        m.must("corridor_interface_up", &up("acme-app", "acme")),
        0.0
    );
    assert_eq!(
        m.must("corridor_interface_up", &up("globex-app", "globex")),
        1.0
    );

    // The namespace appears: the interface follows, and acme's traffic flows.
    lab.ns("acme-app");
    let created = until(Duration::from_secs(5), || {
        iface(&edge, "acme-app").state == InterfaceState::Up
    })
    .unwrap_or_else(|| panic!("the interface was not created\n{}", edge.log()));
    assert!(lab.ping(&acme_app, "10.20.100.1", 3), "{}", edge.log());
    let i = iface(&edge, "acme-app");
    assert_eq!((i.netns_losses, i.recoveries), (0, 1), "{i:?}");
    assert_eq!(
        scrape(&edge).must("corridor_interface_up", &up("acme-app", "acme")),
        1.0
    );

    // Someone deletes the interface inside the namespace: it comes back too.
    ip(&["-n", &acme_app, "link", "del", "corridor0"]);
    let again = until(Duration::from_secs(5), || {
        let i = iface(&edge, "acme-app");
        i.state == InterfaceState::Up && i.recoveries == 2
    })
    .unwrap_or_else(|| panic!("the deleted interface did not come back\n{}", edge.log()));
    let i = iface(&edge, "acme-app");
    assert_eq!(i.netns_losses, 1, "{i:?}");
    assert!(lab.ping(&acme_app, "10.20.100.1", 2), "{}", edge.log());
    eprintln!(
        "missing-netns wait: interface created {created:?} after the namespace appeared, re-created {again:?} after being deleted; {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
