//! A stock WireGuard peer (wireguard-go, configured with `wg`) as a tenant's destination.
//!
//! ```text
//! acme-app ─ edge (edge-1, 192.168.60.1) ─ hub (wireguard-go, 192.168.60.7:51820; 10.20.200.1) ─ srv (10.20.201.2)
//! ```
//!
//! The policy declares the hub as `wireguard = { public-key, endpoint }` with `routes` for the
//! server network behind it; the hub knows edge-1 only by its public key and the app's address
//! (allowed-ips 10.20.1.10/32) and learns edge-1's address from its handshake.
//!
//! wireguard-go creates its UAPI socket at the global path /var/run/wireguard/IF.sock, so each
//! lab uses an interface name of its own.
#![cfg(test)]

use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dataplane::engine::DropReason;
use netns_tests::{Gateway, Lab, in_ns, require_tool, tcp_reaches, tcp_transfer, wait_for};

const GATEWAYS: &str = r#"
[[gateway]]
name = "edge-1"
keys = { acme = "@key(edge-1,acme)" }
"#;

const ACME: &str = r#"
name = "acme"
address-space = ["10.20.0.0/16"]

[[endpoint]]
name = "acme-app"
gateway = "edge-1"
netns = "@ns(acme-app)"
addresses = ["10.20.1.10/32"]

[[endpoint]]
name = "hub"
wireguard = { public-key = "@key(hub,acme)", endpoint = "192.168.60.7:51820" }
addresses = ["10.20.200.1/32"]
routes = ["10.20.201.0/24"]

[[allow]]
from = "acme-app"
to = "hub"
protocol = "tcp"
ports = ["5000-5100"]

[[allow]]
from = "acme-app"
to = "hub"
protocol = "icmp"
"#;

struct Stock {
    lab: Lab,
    edge: Gateway,
    /// The wireguard-go interface in the hub namespace.
    wg_if: String,
    hub_ns: String,
    srv_ns: String,
    app_ns: String,
    /// edge-1's public key for acme (the hub's peer).
    edge_key: String,
}

impl Stock {
    /// `wg VERB <hub interface> ARGS` (the UAPI socket is global; run it in the hub anyway).
    /// The interface is placed by position, never substituted into the text: a base64 key
    /// in ARGS may contain any letters.
    fn wg(&self, verb: &str, args: &str) -> String {
        self.lab
            .sh_ok(&self.hub_ns, &format!("wg {verb} {} {args}", self.wg_if))
    }

    /// The hub's latest handshake with edge-1 (unix seconds; 0 = none).
    fn hub_handshake(&self) -> u64 {
        self.wg("show", "latest-handshakes")
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// What wireguard-go logged, and what `wg show` says now.
    fn hub_log(&self) -> String {
        format!(
            "{}\n{}",
            std::fs::read_to_string(self.lab.dir().join("wireguard-go.log")).unwrap_or_default(),
            self.wg("show", "")
        )
    }

    fn hub_peer(&self) -> dataplane::engine::PeerStats {
        self.edge
            .peer("acme", "hub")
            .expect("edge-1 has the stock peer hub")
    }
}

fn stock_world(test: &str) -> Option<Stock> {
    require_tool("wireguard-go", "wireguard-go");
    require_tool("wg", "wireguard-tools");
    let mut lab = Lab::new(test)?;
    let edge_ns = lab.ns("edge");
    let hub_ns = lab.ns("hub");
    let srv_ns = lab.ns("srv");
    let app_ns = lab.ns("acme-app");
    lab.link(&edge_ns, "192.168.60.1/24", &hub_ns, "192.168.60.7/24");
    lab.link(&hub_ns, "10.20.201.1/24", &srv_ns, "10.20.201.2/24");
    lab.sh_ok(&srv_ns, "ip route add default via 10.20.201.1");
    lab.sh_ok(&hub_ns, "echo 1 > /proc/sys/net/ipv4/ip_forward");

    let policy = lab.policy(&[("gateways.toml", GATEWAYS), ("tenants/acme.toml", ACME)]);
    let edge_key = lab.public_key("edge-1", "acme");

    // The stock peer: wireguard-go in the foreground (the lab stops it), then `wg set`.
    let digits: String = lab.id.chars().filter(char::is_ascii_digit).collect();
    let wg_if = format!("cwg{}", &digits[..digits.len().min(11)]);
    let sock = PathBuf::from(format!("/var/run/wireguard/{wg_if}.sock"));
    let _ = std::fs::remove_file(&sock);
    let log = lab.dir().join("wireguard-go.log");
    lab.spawn(
        &hub_ns,
        &[
            "env",
            "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
            "LOG_LEVEL=verbose",
            "wireguard-go",
            "-f",
            &wg_if,
        ],
        &log,
    );
    wait_for(Duration::from_secs(10), || sock.exists().then_some(())).unwrap_or_else(|| {
        panic!(
            "wireguard-go did not create {}:\n{}",
            sock.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let hub_key = lab.key_dir("hub").join("acme.key");
    lab.sh_ok(
        &hub_ns,
        &format!(
            "wg set {wg_if} private-key {} listen-port 51820 peer {edge_key} allowed-ips 10.20.1.10/32 && \
             ip addr add 10.20.200.1/32 dev {wg_if} && ip link set {wg_if} up && \
             ip route add 10.20.1.10/32 dev {wg_if}",
            hub_key.display()
        ),
    );

    let edge = lab.gateway(&edge_ns, "edge-1", "0.0.0.0:51820", &policy);
    Some(Stock {
        lab,
        edge,
        wg_if,
        hub_ns,
        srv_ns,
        app_ns,
        edge_key,
    })
}

#[test]
fn wireguard_go_peer_interoperates() {
    let Some(s) = stock_world("wgio") else {
        return;
    };
    let lab = &s.lab;

    // The app reaches the stock peer and the server behind it, and back.
    assert!(
        lab.ping(&s.app_ns, "10.20.201.2", 3),
        "ping to the server behind wireguard-go\nedge:\n{}\nhub:\n{}",
        s.edge.log(),
        s.wg("show", "")
    );
    assert!(
        lab.ping(&s.app_ns, "10.20.200.1", 2),
        "ping to the stock peer itself"
    );
    tcp_transfer(
        &s.app_ns,
        &s.srv_ns,
        "10.20.201.2:5001".parse().unwrap(),
        2 << 20,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("tcp to the server behind wireguard-go: {e}"));
    assert!(s.hub_handshake() > 0, "{}", s.wg("show", ""));
    let peer = s.hub_peer();
    assert!(peer.last_handshake.is_some(), "{peer:?}");
    assert!(
        peer.counters.rx.bytes > 0 && peer.counters.tx.bytes > 2 << 20,
        "{peer:?}"
    );
    assert_eq!(
        peer.endpoint,
        Some("192.168.60.7:51820".parse().unwrap()),
        "{peer:?}"
    );
    // The hub sees edge-1 where it really is.
    let endpoints = s.wg("show", "endpoints");
    assert!(
        endpoints.contains(&s.edge_key) && endpoints.contains("192.168.60.1:51820"),
        "{endpoints}"
    );
    // The policy holds against a stock peer too: a port no rule allows does not open.
    assert!(
        !tcp_reaches(
            &s.app_ns,
            &s.srv_ns,
            "10.20.201.2:22".parse().unwrap(),
            Duration::from_secs(2),
        ),
        "the app reached port 22, which no rule allows"
    );

    // Cryptokey routing: a packet from the stock peer whose inner source is not among its
    // addresses is authenticated but dropped, counted as spoofed, and never reaches the app.
    lab.sh_ok(&s.hub_ns, "ip addr add 10.20.50.5/32 dev lo");
    let spoofed_before = s.edge.tenant_drops("acme", DropReason::SpoofedSource);
    let app_sock = in_ns(&s.app_ns, || UdpSocket::bind("10.20.1.10:6001")).unwrap();
    app_sock
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let spoofer = in_ns(&s.hub_ns, || UdpSocket::bind("10.20.50.5:0")).unwrap();
    for _ in 0..5 {
        spoofer.send_to(b"spoofed", "10.20.1.10:6001").unwrap();
    }
    assert!(
        !lab.ping(&s.hub_ns, "-I 10.20.50.5 10.20.1.10", 3),
        "a ping from a spoofed source got an answer"
    );
    let mut buf = [0u8; 64];
    assert!(
        app_sock.recv_from(&mut buf).is_err(),
        "a datagram with a spoofed inner source reached the app"
    );
    let spoofed = s.edge.tenant_drops("acme", DropReason::SpoofedSource) - spoofed_before;
    assert!(
        spoofed >= 8,
        "edge-1 counted {spoofed} spoofed packets of 8 (5 udp, 3 icmp): {:?}",
        s.edge.status().engine.tenants
    );

    // Roaming: the stock peer moves to another address. Nothing unauthenticated moves edge-1's
    // idea of where it is; the first authenticated packet from the new address does.
    lab.sh_ok(
        &s.hub_ns,
        "ip addr del 192.168.60.7/24 dev l0 && ip addr add 192.168.60.8/24 dev l0",
    );
    let junk = in_ns(&s.hub_ns, || UdpSocket::bind("192.168.60.8:40000")).unwrap();
    // A "data" message (type 4) with made-up receiver index, counter and ciphertext.
    let mut fake = vec![4u8, 0, 0, 0];
    fake.extend_from_slice(&netns_tests::payload(60, 7));
    for _ in 0..3 {
        junk.send_to(&fake, "192.168.60.1:51820").unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.hub_peer().endpoint,
        Some("192.168.60.7:51820".parse().unwrap()),
        "edge-1 followed an unauthenticated datagram"
    );
    // The app's traffic now goes to the old address, where nobody is.
    assert!(!lab.ping(&s.app_ns, "10.20.201.2", 1));
    // The hub's daemon takes its new address: it binds a new port (which also makes
    // wireguard-go forget the source address it stuck to, 192.168.60.7, now gone) and speaks
    // (enabling persistent keepalive sends one at once), from 192.168.60.8:51821.
    let moved = Instant::now();
    s.wg(
        "set",
        &format!(
            "listen-port 51821 peer {} persistent-keepalive 5",
            s.edge_key
        ),
    );
    let new_ep = "192.168.60.8:51821".parse().unwrap();
    wait_for(Duration::from_secs(10), || {
        (s.hub_peer().endpoint == Some(new_ep)).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "edge-1 did not follow the stock peer to {new_ep}: {:?}\nedge-1:\n{}\nhub:\n{}",
            s.hub_peer(),
            s.edge.log(),
            s.hub_log()
        )
    });
    eprintln!("edge-1 followed the stock peer after {:?}", moved.elapsed());
    assert!(
        lab.ping(&s.app_ns, "10.20.201.2", 3),
        "ping after the stock peer moved"
    );
    tcp_transfer(
        &s.app_ns,
        &s.srv_ns,
        "10.20.201.2:5002".parse().unwrap(),
        1 << 20,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("tcp after the stock peer moved: {e}"));
}

/// WireGuard renews session keys after 120 s (REKEY_AFTER_TIME); with traffic flowing the
/// whole time, a new handshake happens and traffic goes on across it. ~2.5 minutes.
#[test]
fn wireguard_go_peer_rekeys() {
    let Some(s) = stock_world("wgrk") else {
        return;
    };
    let lab = &s.lab;
    assert!(
        lab.ping(&s.app_ns, "10.20.201.2", 2),
        "ping to the server behind wireguard-go\nedge:\n{}",
        s.edge.log()
    );
    let first_hub = s.hub_handshake();
    assert!(first_hub > 0, "{}", s.wg("show", ""));
    let first = Instant::now() - s.hub_peer().last_handshake.expect("a handshake");

    // A ping a second for 130 s (both ends send: requests one way, replies the other).
    let out = lab.sh(&s.app_ns, "ping -n -q -c 130 -i 1 -W 2 10.20.201.2");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    let received: u32 = text
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" received")?.parse().ok())
        .unwrap_or(0);

    let last_hub = s.hub_handshake();
    let last = Instant::now() - s.hub_peer().last_handshake.expect("a handshake");
    eprintln!(
        "hub handshakes: {first_hub} then {last_hub}; edge-1's: {:?} apart",
        last - first
    );
    assert!(
        last_hub > first_hub,
        "wireguard-go saw no new handshake in 130 s: {}",
        s.wg("show", "")
    );
    assert!(
        last - first > Duration::from_secs(100),
        "edge-1 saw no new handshake in 130 s"
    );
    assert!(
        received >= 127,
        "only {received} of 130 pings came back across the rekey"
    );
    // And after it, traffic of every kind still passes.
    tcp_transfer(
        &s.app_ns,
        &s.srv_ns,
        "10.20.201.2:5003".parse().unwrap(),
        2 << 20,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("tcp after the rekey: {e}"));
}
