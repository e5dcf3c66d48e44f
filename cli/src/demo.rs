//! `corridor demo`: the example policy, compiled for both of its gateways, running in memory.
//!
//! Two real engines (the same code a gateway runs) joined by a virtual WAN: real WireGuard
//! handshakes and encryption, real policy and routing; only the interfaces and the UDP socket
//! are simulated. Every step states what must happen and checks it, so the demo fails loudly
//! (non-zero exit) if corridor ever stops doing its job.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use controlplane::compile::compile_gateway;
use controlplane::keys::load_gateway_keys;
use controlplane::policy::Policy;
use dataplane::engine::{AppOutcome, DropReason, EngineStats};
use dataplane::sim::{World, ip_packet};

/// Arguments of `corridor demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Policy directory to run (it must define gateways edge-1 and dc-1, as the example does).
    #[arg(long, default_value = "configs/policy")]
    policy: PathBuf,
    /// Directory holding one key directory per gateway (`<KEYS>/<gateway>/<tenant>.key`).
    #[arg(long, default_value = "configs/keys")]
    keys: PathBuf,
    /// Run the two gateways' engines in memory (no root needed) instead of in namespaces.
    #[arg(long)]
    in_memory: bool,
}

const EDGE: usize = 0;
const DC: usize = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

struct Demo {
    world: World,
    failures: usize,
}

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
}

/// What a step expects.
enum Expect<'a> {
    /// Delivered to (node, tenant, endpoint).
    Delivered(usize, &'a str, &'a str),
    /// Dropped at the sending gateway for this reason.
    Dropped(DropReason),
}

impl Demo {
    fn port(&self, node: usize, tenant: &str, endpoint: &str) -> Result<dataplane::engine::PortId> {
        self.world.nodes[node]
            .engine
            .port(tenant, endpoint)
            .with_context(|| {
                format!("the policy has no endpoint {tenant}/{endpoint} on this gateway")
            })
    }

    #[expect(clippy::print_stdout, reason = "the demo's output is its purpose")]
    fn step(
        &mut self,
        what: &str,
        node: usize,
        (tenant, endpoint): (&str, &str),
        (src, dst): (&str, &str),
        (proto, sport, dport): (u8, u16, u16),
        expect: Expect<'_>,
    ) -> Result<()> {
        let port = self.port(node, tenant, endpoint)?;
        let packet = ip_packet(
            a(src).into(),
            a(dst).into(),
            proto,
            sport,
            dport,
            what.as_bytes(),
        )
        .context("the demo's addresses are all IPv4")?;
        let outcome = self.world.send_app(node, port, &packet);
        self.world.run();
        let delivered = self.world.take_delivered();
        let gw = |n: usize| self.world.nodes[n].name.clone();
        let port_name = |n: usize, p: dataplane::engine::PortId| {
            self.world.nodes[n]
                .engine
                .ports()
                .find(|(id, _, _)| *id == p)
                .map(|(_, t, e)| format!("{t}/{e}"))
                .unwrap_or_else(|| format!("port {}", p.0))
        };
        let (ok, seen) = match (&expect, outcome) {
            (Expect::Dropped(want), AppOutcome::Drop(got)) => (
                *want == got && delivered.is_empty(),
                format!("dropped at {}: {got}", gw(node)),
            ),
            (_, AppOutcome::Drop(got)) => (false, format!("dropped at {}: {got}", gw(node))),
            (Expect::Delivered(n, t, e), _) => {
                let want = self.port(*n, t, e)?;
                let hit = delivered
                    .iter()
                    .any(|d| d.node == *n && d.port == want && d.packet == packet);
                (
                    hit && delivered.len() == 1,
                    match delivered.first() {
                        Some(d) => {
                            format!(
                                "delivered to {} on {}",
                                port_name(d.node, d.port),
                                gw(d.node)
                            )
                        }
                        None => "not delivered".to_owned(),
                    },
                )
            }
            (Expect::Dropped(_), _) => (
                false,
                format!("not dropped at the sender; {} deliveries", delivered.len()),
            ),
        };
        let want = match expect {
            Expect::Delivered(n, t, e) => format!("reaches {t}/{e} on {}", gw(n)),
            Expect::Dropped(r) => format!("dropped ({r})"),
        };
        println!(
            "  {} {what}\n      {src} -> {dst}: {seen}{}",
            if ok { "ok  " } else { "FAIL" },
            if ok {
                String::new()
            } else {
                format!(" (expected: {want})")
            }
        );
        if !ok {
            self.failures += 1;
        }
        Ok(())
    }
}

#[expect(clippy::print_stdout, reason = "the demo's output is its purpose")]
fn print_stats(name: &str, stats: &EngineStats) {
    use crate::status_cmd::drops;
    for t in &stats.tenants {
        for p in &t.peers {
            println!(
                "  {name:<7} {:<7} peer {:<10} sent {:>2} pkts  received {:>2} pkts  handshake {}  drops: {}",
                t.name,
                p.name,
                p.counters.tx.packets,
                p.counters.rx.packets,
                if p.last_handshake.is_some() {
                    "yes"
                } else {
                    "no "
                },
                drops(&p.counters.drops)
            );
        }
        println!(
            "  {name:<7} {:<7} all drops of the tenant: {}",
            t.name,
            drops(&t.counters.drops)
        );
    }
}

/// Runs the demo: in namespaces as root, else (or with `--in-memory`) in memory.
#[expect(clippy::print_stdout, reason = "the demo's output is its purpose")]
pub(crate) fn run(args: DemoArgs) -> Result<ExitCode> {
    #[cfg(target_os = "linux")]
    if !args.in_memory {
        if nix::unistd::geteuid().is_root() {
            return crate::demo_netns::run(&args.policy, &args.keys);
        }
        println!(
            "Not root: the namespace demo needs root (sudo corridor demo). Running the same policy in memory instead.\n"
        );
    }
    run_in_memory(&args)
}

/// The in-memory demo.
#[expect(clippy::print_stdout, reason = "the demo's output is its purpose")]
fn run_in_memory(args: &DemoArgs) -> Result<ExitCode> {
    let policy = Policy::load(&args.policy)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("loading {}", args.policy.display()))?;
    let mut world = World::new();
    for (name, fallback) in [
        ("edge-1", "192.168.50.1:51820"),
        ("dc-1", "192.168.50.2:51820"),
    ] {
        let keys = load_gateway_keys(&args.keys.join(name), &policy, name)
            .with_context(|| format!("loading the keys of {name}"))?;
        let plan = compile_gateway(&policy, name, &keys)?;
        let addr: SocketAddr = match policy.gateway(name).and_then(|g| g.endpoint) {
            Some(endpoint) => endpoint,
            None => fallback.parse()?,
        };
        world
            .add(name, addr, &plan.engine)
            .with_context(|| format!("applying the configuration of {name}"))?;
    }
    if world.nodes.len() != 2 {
        bail!("the demo needs gateways edge-1 and dc-1");
    }
    println!(
        "corridor demo, in memory: {} compiled for two gateways",
        args.policy.display()
    );
    println!(
        "  edge-1 (dials out, {}) <-> dc-1 ({}), one WireGuard session per tenant",
        world.nodes[EDGE].addr, world.nodes[DC].addr
    );
    println!("  tenants acme and globex both use 10.20.0.0/16: each has its own table\n");
    world.run();
    let mut demo = Demo { world, failures: 0 };

    println!("Each app reaches its own dedicated destination:");
    demo.step(
        "acme's meter app opens HTTPS to acme's cloud",
        EDGE,
        ("acme", "meter-app"),
        ("10.20.1.10", "10.20.100.1"),
        (TCP, 40000, 443),
        Expect::Delivered(DC, "acme", "acme-cloud"),
    )?;
    demo.step(
        "acme's cloud answers (a reply of the tracked flow)",
        DC,
        ("acme", "acme-cloud"),
        ("10.20.100.1", "10.20.1.10"),
        (TCP, 443, 40000),
        Expect::Delivered(EDGE, "acme", "meter-app"),
    )?;
    demo.step(
        "globex's SCADA app sends CoAP telemetry: same addresses, other tenant",
        EDGE,
        ("globex", "scada-app"),
        ("10.20.1.10", "10.20.100.1"),
        (UDP, 40000, 5683),
        Expect::Delivered(DC, "globex", "globex-cloud"),
    )?;
    demo.step(
        "acme's meter app pings its cloud",
        EDGE,
        ("acme", "meter-app"),
        ("10.20.1.10", "10.20.100.1"),
        (ICMP, 8, 7),
        Expect::Delivered(DC, "acme", "acme-cloud"),
    )?;

    println!("\nAnd nothing else:");
    demo.step(
        "acme's app tries globex's CoAP port at the same address",
        EDGE,
        ("acme", "meter-app"),
        ("10.20.1.10", "10.20.100.1"),
        (UDP, 40001, 5683),
        Expect::Dropped(DropReason::PolicyDenied),
    )?;
    demo.step(
        "acme's app tries globex's legacy hub",
        EDGE,
        ("acme", "meter-app"),
        ("10.20.1.10", "10.20.200.1"),
        (TCP, 40002, 502),
        Expect::Dropped(DropReason::NoRoute),
    )?;
    demo.step(
        "acme's app forges another source address",
        EDGE,
        ("acme", "meter-app"),
        ("10.20.1.11", "10.20.100.1"),
        (TCP, 40003, 443),
        Expect::Dropped(DropReason::SpoofedSource),
    )?;
    demo.step(
        "acme's cloud opens a connection to the app (no rule allows it)",
        DC,
        ("acme", "acme-cloud"),
        ("10.20.100.1", "10.20.1.10"),
        (TCP, 443, 41000),
        Expect::Dropped(DropReason::PolicyDenied),
    )?;

    println!("\nCounters (every drop has a reason):");
    for node in &demo.world.nodes {
        print_stats(&node.name, &node.engine.stats());
    }
    if demo.failures > 0 {
        println!("\n{} step(s) did not behave as expected", demo.failures);
        return Ok(ExitCode::FAILURE);
    }
    println!("\nAll steps behaved as the policy says.");
    Ok(ExitCode::SUCCESS)
}
