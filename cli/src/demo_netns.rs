//! `corridor demo` as root: a small world of network namespaces on this machine, two real
//! gateway processes, real traffic, and the counters that prove what was dropped.
//!
//! The world is the example policy (`configs/policy`): edge-1 and dc-1 each get a namespace
//! of their own (their "hosts"), joined by a veth WAN (192.168.50.1 <-> 192.168.50.2, the
//! address gateways.toml gives dc-1); each app and each destination gets the namespace its
//! endpoint names. Everything is removed at the end, also when the demo is interrupted
//! (SIGINT/SIGTERM) or a step fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use controlplane::policy::{EndpointKind, Policy};
use dataplane::engine::DropReason;
use dataplane::io::netns::in_netns;
use dataplane::io::{ControlRequest, StatusReport, query_control};

use crate::netns_world::{NetnsWorld, interrupted, ip, os};

const EDGE_NS: &str = "corridor-demo-edge";
const DC_NS: &str = "corridor-demo-dc";
const IO_TIMEOUT: Duration = Duration::from_secs(3);

fn status(socket: &Path) -> Result<StatusReport> {
    let answer = query_control(socket, ControlRequest::Status)?;
    Ok(serde_json::from_str(&answer)?)
}

fn tenant_drops(socket: &Path, tenant: &str, reason: DropReason) -> u64 {
    status(socket).ok().map_or(0, |s| {
        s.engine
            .tenants
            .iter()
            .find(|t| t.name == tenant)
            .map_or(0, |t| t.counters.drops.get(reason))
    })
}

/// A TCP echo exchange from `client_ns` to a server it starts at `server` in `server_ns`.
fn tcp_echo(client_ns: &str, server_ns: &str, server: SocketAddr, msg: &[u8]) -> Result<Vec<u8>> {
    let listener = in_netns(server_ns, || {
        TcpListener::bind(server).map_err(os("binding the demo's server"))
    })?;
    std::thread::scope(|s| {
        let srv = s.spawn(move || -> std::io::Result<()> {
            listener.set_nonblocking(false)?;
            let (mut conn, _) = listener.accept()?;
            conn.set_read_timeout(Some(IO_TIMEOUT))?;
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf)?;
            conn.write_all(&buf[..n])
        });
        let result = in_netns(client_ns, || {
            let mut c = TcpStream::connect_timeout(&server, IO_TIMEOUT)
                .map_err(os("connecting through the tunnel"))?;
            c.set_read_timeout(Some(IO_TIMEOUT)).map_err(os("socket"))?;
            c.write_all(msg).map_err(os("sending"))?;
            let mut buf = vec![0u8; msg.len()];
            c.read_exact(&mut buf).map_err(os("reading the echo"))?;
            Ok(buf)
        });
        if result.is_err() {
            // Wake the server so the scope ends.
            let _ = in_netns(client_ns, || {
                TcpStream::connect_timeout(&server, Duration::from_millis(300))
                    .map_err(os("waking the server"))
            });
        }
        let _ = srv.join();
        result.map_err(|e| anyhow!("{e}"))
    })
}

/// Sends one UDP datagram from `client_ns` (bound to `from`, or any address) to `server` and
/// returns whether a socket listening there in `server_ns` received it.
fn udp_arrives(
    client_ns: &str,
    from: Option<SocketAddr>,
    server_ns: &str,
    server: SocketAddr,
    msg: &[u8],
) -> Result<bool> {
    let sock = in_netns(server_ns, || {
        UdpSocket::bind(server).map_err(os("binding the demo's server"))
    })?;
    sock.set_read_timeout(Some(Duration::from_millis(1500)))?;
    in_netns(client_ns, || {
        let bind = from.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let c = UdpSocket::bind(bind).map_err(os("binding the demo's client"))?;
        c.send_to(msg, server).map_err(os("sending"))?;
        Ok(())
    })?;
    let mut buf = [0u8; 2048];
    Ok(matches!(sock.recv(&mut buf), Ok(n) if &buf[..n] == msg))
}

struct Checks {
    failures: usize,
}

impl Checks {
    #[expect(clippy::print_stdout, reason = "the demo's output is its purpose")]
    fn check(&mut self, ok: bool, what: &str, detail: &str) {
        println!(
            "  {} {what}\n      {detail}",
            if ok { "ok  " } else { "FAIL" }
        );
        if !ok {
            self.failures += 1;
        }
    }
}

fn netns_of<'a>(policy: &'a Policy, tenant: &str, endpoint: &str) -> Result<&'a str> {
    iface_of(policy, tenant, endpoint).map(|(ns, _)| ns)
}

fn iface_of<'a>(policy: &'a Policy, tenant: &str, endpoint: &str) -> Result<(&'a str, &'a str)> {
    let ep = policy
        .tenant(tenant)
        .and_then(|t| t.endpoints.iter().find(|e| e.name == endpoint))
        .with_context(|| format!("the demo needs endpoint {tenant}/{endpoint} in the policy"))?;
    match &ep.kind {
        EndpointKind::Gateway {
            netns, interface, ..
        } => Ok((netns, interface)),
        EndpointKind::WireGuard(_) => bail!("{tenant}/{endpoint} is not on a corridor gateway"),
    }
}

/// Runs the namespace demo.
#[expect(clippy::print_stdout, reason = "the demo's output is its purpose")]
pub(crate) fn run(policy_dir: &Path, keys: &Path) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let policy = Policy::load(policy_dir).map_err(|e| anyhow!("{}:\n{e}", policy_dir.display()))?;
    let dc_endpoint = policy
        .gateway("dc-1")
        .and_then(|g| g.endpoint)
        .context("the demo needs gateway dc-1 with an endpoint in gateways.toml")?;
    let mut world = NetnsWorld::new("demo")?;
    let dir = world.dir.clone();

    println!("corridor demo: building a world of network namespaces on this machine");
    world.add_ns(EDGE_NS)?;
    world.add_ns(DC_NS)?;
    let apps = [
        ("acme", "meter-app"),
        ("globex", "scada-app"),
        ("acme", "acme-cloud"),
        ("globex", "globex-cloud"),
    ];
    for (t, e) in apps {
        world.add_ns(netns_of(&policy, t, e)?)?;
    }
    ip(&[
        "link", "add", "wan0", "netns", EDGE_NS, "type", "veth", "peer", "name", "wan0", "netns",
        DC_NS,
    ])?;
    let dc_ip = dc_endpoint.ip().to_string();
    let edge_ip = "192.168.50.1";
    ip(&[
        "-n",
        EDGE_NS,
        "addr",
        "add",
        &format!("{edge_ip}/24"),
        "dev",
        "wan0",
    ])?;
    ip(&[
        "-n",
        DC_NS,
        "addr",
        "add",
        &format!("{dc_ip}/24"),
        "dev",
        "wan0",
    ])?;
    ip(&["-n", EDGE_NS, "link", "set", "wan0", "up"])?;
    ip(&["-n", DC_NS, "link", "set", "wan0", "up"])?;
    println!("  WAN: {EDGE_NS} {edge_ip} <-> {DC_NS} {dc_ip} (veth)");

    let mut sockets = Vec::new();
    for (gw, ns) in [("dc-1", DC_NS), ("edge-1", EDGE_NS)] {
        let socket = dir.join(format!("{gw}.sock"));
        let config = dir.join(format!("{gw}.toml"));
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        std::fs::write(
            &config,
            format!(
                "name = \"{gw}\"\nkey-dir = \"{}\"\nlisten = \"0.0.0.0:{}\"\ncontrol-socket = \"{}\"\npolicy = \"{}\"\n",
                abs(&keys.join(gw)).display(),
                dc_endpoint.port(),
                socket.display(),
                abs(policy_dir).display()
            ),
        )?;
        world.start_gateway(gw, ns, &config, &socket, &stop)?;
        println!("  gateway {gw} running in {ns}");
        sockets.push(socket);
    }
    let (dc_sock, edge_sock) = (&sockets[0], &sockets[1]);
    let ns = |t, e| netns_of(&policy, t, e);
    let mut checks = Checks { failures: 0 };

    println!(
        "\nEach app reaches its own dedicated destination (real TCP and UDP through the tunnel):"
    );
    let cloud: SocketAddr = "10.20.100.1:443".parse()?;
    let msg = b"meter reading 42 from acme";
    let echo = tcp_echo(
        ns("acme", "meter-app")?,
        ns("acme", "acme-cloud")?,
        cloud,
        msg,
    );
    checks.check(
        matches!(&echo, Ok(e) if e == msg),
        "acme's meter app -> acme's cloud, TCP 443, and the echo back",
        &match &echo {
            Ok(_) => format!("10.20.1.10 -> {cloud}: echoed {} bytes", msg.len()),
            Err(e) => format!("{e:#}"),
        },
    );
    let coap: SocketAddr = "10.20.100.1:5683".parse()?;
    let ok = udp_arrives(
        ns("globex", "scada-app")?,
        None,
        ns("globex", "globex-cloud")?,
        coap,
        b"globex telemetry",
    )?;
    checks.check(
        ok,
        "globex's SCADA app -> globex's cloud, UDP 5683: same addresses as acme, its own tenant",
        &format!(
            "10.20.1.10 -> {coap}: {}",
            if ok {
                "received by globex-cloud"
            } else {
                "lost"
            }
        ),
    );

    interrupted(&stop)?;
    println!("\nAnd nothing else:");
    let before = tenant_drops(edge_sock, "acme", DropReason::PolicyDenied);
    let arrived = udp_arrives(
        ns("acme", "meter-app")?,
        None,
        ns("globex", "globex-cloud")?,
        coap,
        b"acme probing",
    )?;
    let after = tenant_drops(edge_sock, "acme", DropReason::PolicyDenied);
    checks.check(
        !arrived && after > before,
        "acme's app tries globex's CoAP service at the same address",
        &format!(
            "dropped at edge-1 (acme policy_denied {before} -> {after}); globex-cloud received {}",
            if arrived { "it!" } else { "nothing" }
        ),
    );
    // A compromised app gives itself another address and sends from it.
    let (meter, ifname) = iface_of(&policy, "acme", "meter-app")?;
    ip(&["-n", meter, "addr", "add", "10.20.1.11/32", "dev", ifname])?;
    let before = tenant_drops(edge_sock, "acme", DropReason::SpoofedSource);
    let arrived = udp_arrives(
        meter,
        Some("10.20.1.11:40000".parse()?),
        ns("acme", "acme-cloud")?,
        "10.20.100.1:443".parse()?,
        b"forged",
    )?;
    let after = tenant_drops(edge_sock, "acme", DropReason::SpoofedSource);
    checks.check(
        !arrived && after > before,
        "acme's app forges a source address (10.20.1.11, not its own)",
        &format!("dropped at edge-1 (acme spoofed_source {before} -> {after}); acme-cloud received nothing"),
    );
    let before = tenant_drops(dc_sock, "acme", DropReason::PolicyDenied);
    let arrived = udp_arrives(
        ns("acme", "acme-cloud")?,
        Some("10.20.100.1:40001".parse()?),
        meter,
        "10.20.1.10:9999".parse()?,
        b"unsolicited",
    )?;
    let after = tenant_drops(dc_sock, "acme", DropReason::PolicyDenied);
    checks.check(
        !arrived && after > before,
        "acme's cloud opens a flow to the app (no rule allows that direction)",
        &format!("dropped at dc-1 (acme policy_denied {before} -> {after})"),
    );

    interrupted(&stop)?;
    println!("\ncorridor status of each gateway:");
    for socket in [edge_sock, dc_sock] {
        let report = status(socket)?;
        for line in crate::status_cmd::render(&report).lines() {
            println!("  {line}");
        }
        println!();
    }
    drop(world);
    println!("Removed the namespaces and stopped the gateways.");
    if checks.failures > 0 {
        println!("{} step(s) did not behave as expected", checks.failures);
        return Ok(ExitCode::FAILURE);
    }
    println!("All steps behaved as the policy says.");
    Ok(ExitCode::SUCCESS)
}
