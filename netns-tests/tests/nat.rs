//! The edge gateway behind a masquerading NAT, as on a cellular or DSL uplink.
//!
//! ```text
//! acme-app ─ edge (edge-1, 172.16.0.2) ─ nat (172.16.0.1 | 192.168.50.100, masquerade) ─ dc (dc-1, 192.168.50.2:51820) ─ acme-cloud
//! ```
//!
//! The nat namespace forwards inside → WAN with `masquerade` and lets back only what conntrack
//! knows (no port forwarding); dc has no route to 172.16.0.0/24 at all. edge-1 has no `endpoint`
//! in gateways.toml, so it dials out and sends a keepalive every 25 s (the default).
//!
//! What the idle part proves: the NAT's UDP timeouts are set to 30 s (both the unreplied and the
//! "stream" timeout, so a mapping that saw replies lives 30 s after its last packet, not the
//! kernel's default 120 s). Then nothing is sent for 40 s. A plain UDP flow through the same NAT,
//! idle over the same 40 s, loses its mapping (a datagram from the dc side no longer reaches the
//! edge: the timeout is real); corridor's mapping is still in the NAT's conntrack table at every
//! sample, is seen refreshed, and a packet that only the dc side sends (the cloud writing on an
//! idle TCP connection, with the app silent) still reaches the app. Only the keepalives can
//! have held that mapping.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use netns_tests::{Lab, in_ns, require_tool, tcp_transfer, wait_for};

const NAT_PUBLIC: &str = "192.168.50.100";
const NAT_UDP_TIMEOUT: u64 = 30;
const IDLE: Duration = Duration::from_secs(40);

/// One UDP entry of the nat namespace's conntrack table: (seconds left, the whole line).
fn conntrack_udp(lab: &Lab, ns: &str, needle: &[&str]) -> Option<(u64, String)> {
    let table = lab.sh_ok(ns, "cat /proc/net/nf_conntrack");
    table
        .lines()
        .find(|l| l.contains(" udp ") && needle.iter().all(|n| l.contains(n)))
        .map(|l| {
            let left = l
                .split_whitespace()
                .nth(4)
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            (left, l.to_owned())
        })
}

#[test]
fn edge_behind_masquerading_nat() {
    require_tool("nft", "nftables");
    let Some(mut lab) = Lab::new("nat") else {
        return;
    };
    let edge_ns = lab.ns("edge");
    let nat_ns = lab.ns("nat");
    let dc_ns = lab.ns("dc");
    for app in ["acme-app", "globex-app", "acme-cloud", "globex-cloud"] {
        lab.ns(app);
    }
    let inside = lab.link(&edge_ns, "172.16.0.2/24", &nat_ns, "172.16.0.1/24");
    let wan = lab.link(
        &nat_ns,
        &format!("{NAT_PUBLIC}/24"),
        &dc_ns,
        "192.168.50.2/24",
    );
    lab.sh_ok(&edge_ns, "ip route add default via 172.16.0.1");
    let rules = lab.write(
        "nat.nft",
        &format!(
            r#"table ip corridor_nat {{
    chain nat_postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{wan}" masquerade
    }}
    chain filter_forward {{
        type filter hook forward priority filter; policy drop;
        iifname "{inside}" oifname "{wan}" accept
        iifname "{wan}" ct state established,related accept
        iifname "{wan}" counter drop
    }}
}}
"#
        ),
    );
    lab.sh_ok(&nat_ns, &format!("nft -f {}", rules.display()));
    // Loading the nat table loaded conntrack: its knobs exist now (and are per namespace).
    lab.sh_ok(
        &nat_ns,
        &format!(
            "echo 1 > /proc/sys/net/ipv4/ip_forward && \
             echo {NAT_UDP_TIMEOUT} > /proc/sys/net/netfilter/nf_conntrack_udp_timeout && \
             echo {NAT_UDP_TIMEOUT} > /proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream"
        ),
    );

    // The dc side cannot reach the edge's private address: only the NAT connects them.
    assert!(
        !lab.sh(&dc_ns, "ping -n -c 1 -W 1 172.16.0.2")
            .status
            .success(),
        "dc reaches the edge's private address directly: the NAT topology is wrong"
    );

    let policy = lab.policy(&[
        ("gateways.toml", common::GATEWAYS),
        ("tenants/acme.toml", common::ACME),
        ("tenants/globex.toml", common::GLOBEX),
    ]);
    let dc = lab.gateway(&dc_ns, "dc-1", "0.0.0.0:51820", &policy);
    let edge = lab.gateway(&edge_ns, "edge-1", "0.0.0.0:51820", &policy);
    let acme_app = lab.ns_name("acme-app");
    let acme_cloud = lab.ns_name("acme-cloud");
    let globex_app = lab.ns_name("globex-app");

    // The apps get through the NAT and get their replies.
    assert!(
        lab.ping(&acme_app, "10.20.100.1", 3),
        "acme ping through the NAT\nedge:\n{}\ndc:\n{}",
        edge.log(),
        dc.log()
    );
    assert!(
        lab.ping(&globex_app, "10.20.100.1", 3),
        "globex ping through the NAT"
    );
    tcp_transfer(
        &acme_app,
        &acme_cloud,
        "10.20.100.1:5001".parse().unwrap(),
        2 << 20,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("acme tcp through the NAT: {e}"));

    // dc-1 knows edge-1 by the NAT's public address (it was never configured anywhere).
    for tenant in ["acme", "globex"] {
        let peer = dc
            .peer(tenant, "edge-1")
            .unwrap_or_else(|| panic!("dc-1 has no peer edge-1 in {tenant}"));
        let ep = peer
            .endpoint
            .unwrap_or_else(|| panic!("dc-1 has no endpoint for edge-1 in {tenant}: {peer:?}"));
        assert_eq!(
            ep.ip().to_string(),
            NAT_PUBLIC,
            "dc-1 sees edge-1 ({tenant}) at {ep}, not at the NAT's public address"
        );
        assert!(peer.last_handshake.is_some(), "{tenant}: {peer:?}");
    }
    let public = dc.peer("acme", "edge-1").unwrap().endpoint.unwrap();
    let corridor_entry = [
        "src=172.16.0.2".to_owned(),
        "sport=51820".to_owned(),
        "dport=51820".to_owned(),
        format!("dst={NAT_PUBLIC}"),
        format!("dport={}", public.port()),
    ];
    let corridor_entry: Vec<&str> = corridor_entry.iter().map(String::as_str).collect();
    let (left, line) = conntrack_udp(&lab, &nat_ns, &corridor_entry).unwrap_or_else(|| {
        panic!(
            "no conntrack entry for corridor in the NAT:\n{}",
            lab.sh_ok(&nat_ns, "cat /proc/net/nf_conntrack")
        )
    });
    assert!(
        left <= NAT_UDP_TIMEOUT,
        "the NAT timeout is not set: {line}"
    );

    // An idle TCP connection through corridor: the cloud will write on it after the idle time.
    let listener = in_ns(&acme_cloud, || TcpListener::bind("10.20.100.1:5002")).unwrap();
    let mut app_conn = in_ns(&acme_app, || {
        TcpStream::connect_timeout(&"10.20.100.1:5002".parse().unwrap(), Duration::from_secs(5))
    })
    .expect("acme app connects to its cloud through the NAT");
    let (mut cloud_conn, _) = listener.accept().unwrap();
    app_conn.write_all(b"hello").unwrap();
    let mut five = [0u8; 5];
    cloud_conn.read_exact(&mut five).unwrap();
    assert_eq!(&five, b"hello");

    // The control: a plain UDP flow through the same NAT, with a reply (so its entry is an
    // established "stream" one, as corridor's is).
    let plain_server = in_ns(&dc_ns, || UdpSocket::bind("192.168.50.2:9999")).unwrap();
    let plain_client = in_ns(&edge_ns, || UdpSocket::bind("172.16.0.2:40000")).unwrap();
    plain_server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    plain_client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    plain_client
        .send_to(b"out", "192.168.50.2:9999".parse::<SocketAddr>().unwrap())
        .unwrap();
    let mut buf = [0u8; 64];
    let (_, plain_public) = plain_server
        .recv_from(&mut buf)
        .expect("a plain UDP datagram crosses the NAT");
    assert_eq!(plain_public.ip().to_string(), NAT_PUBLIC);
    plain_server.send_to(b"back", plain_public).unwrap();
    let (n, _) = plain_client
        .recv_from(&mut buf)
        .expect("the plain UDP reply comes back through the fresh mapping");
    assert_eq!(&buf[..n], b"back");

    // Idle. Sample the NAT's table every second.
    let edge_tx0 = edge.status().io.udp_tx;
    let dc_tx0 = dc.status().io.udp_tx;
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut plain_gone_after = None;
    while start.elapsed() < IDLE {
        std::thread::sleep(Duration::from_secs(1));
        let entry = conntrack_udp(&lab, &nat_ns, &corridor_entry).map(|(left, _)| left);
        samples.push((start.elapsed().as_secs(), entry));
        if plain_gone_after.is_none()
            && conntrack_udp(&lab, &nat_ns, &["sport=40000", "dport=9999"]).is_none()
        {
            plain_gone_after = Some(start.elapsed());
        }
    }
    let edge_sent = edge.status().io.udp_tx - edge_tx0;
    let dc_sent = dc.status().io.udp_tx - dc_tx0;
    eprintln!(
        "idle {IDLE:?}: edge-1 sent {edge_sent} datagrams, dc-1 sent {dc_sent}; the plain flow's entry went after {plain_gone_after:?}; corridor's entry (s, seconds left): {samples:?}"
    );

    // The NAT's timeout is real: the plain flow's mapping went, and its late datagram from the
    // dc side no longer reaches the edge.
    assert!(
        plain_gone_after.is_some(),
        "the plain UDP flow's NAT entry outlived {IDLE:?}: the NAT timeout does not work, this test proves nothing"
    );
    plain_server.send_to(b"late", plain_public).unwrap();
    assert!(
        plain_client.recv_from(&mut buf).is_err(),
        "a datagram reached the edge through an expired NAT mapping (inbound is not filtered)"
    );

    // corridor's mapping stayed at every sample, and was refreshed by what edge-1 sent.
    assert!(
        samples.iter().all(|(_, e)| e.is_some()),
        "corridor's NAT mapping disappeared while idle: {samples:?}"
    );
    assert!(
        samples.windows(2).any(|w| w[1].1 > w[0].1),
        "corridor's NAT mapping was never refreshed while idle: {samples:?}"
    );
    assert!(
        edge_sent >= 1,
        "edge-1 sent nothing in {IDLE:?} of idleness (no keepalive)"
    );

    // A packet only the dc side sends still reaches the app after the idle time: the cloud
    // writes on the idle connection; the app has sent nothing since before the idle time.
    cloud_conn.write_all(b"late reply").unwrap();
    app_conn
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut late = [0u8; 10];
    app_conn.read_exact(&mut late).unwrap_or_else(|e| {
        panic!(
            "the cloud's write did not reach the app after {IDLE:?} idle: {e}\nNAT table:\n{}\nedge:\n{}",
            lab.sh_ok(&nat_ns, "cat /proc/net/nf_conntrack"),
            edge.log()
        )
    });
    assert_eq!(&late, b"late reply");

    // Still the same public address, and traffic still flows both ways.
    assert_eq!(dc.peer("acme", "edge-1").unwrap().endpoint, Some(public));
    assert!(
        wait_for(Duration::from_secs(5), || lab
            .ping(&acme_app, "10.20.100.1", 2)
            .then_some(()))
        .is_some(),
        "acme ping after the idle time"
    );
}
