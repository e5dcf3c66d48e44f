//! `corridor status`: what a running gateway is doing, per tenant and per peer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use controlplane::gateway_config::{
    DEFAULT_CONTROL_SOCKET, DEFAULT_PATH, GatewayConfig, GatewayConfigError,
};
use dataplane::engine::{DropReason, Drops, PeerStats};
use dataplane::io::{
    ControlRequest, InterfaceState, InterfaceStatus, REJECT_AFTER_TIME, StatusReport, query_control,
};

/// Arguments of `corridor status`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The gateway's control socket (default: the one its configuration names).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The gateway's configuration file, to find its control socket
    /// [default: /etc/corridor/gateway.toml, else /run/corridor/control.sock].
    #[arg(long, conflicts_with = "socket")]
    config: Option<PathBuf>,
    /// Print the gateway's JSON report as it is, for scripts.
    #[arg(long)]
    json: bool,
    /// Refresh until Ctrl-C: in place on a terminal, else one report after the other.
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 2,
        requires = "watch",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    interval: u64,
}

/// The control socket to ask, and how it was found (for messages).
fn socket_path(args: &StatusArgs) -> Result<(PathBuf, String)> {
    if let Some(s) = &args.socket {
        return Ok((s.clone(), "from --socket".to_owned()));
    }
    if let Some(config) = &args.config {
        // Asked for explicitly: a configuration that does not load is an error.
        let c = GatewayConfig::load(config)?;
        return Ok((c.control_socket, format!("from {}", config.display())));
    }
    match GatewayConfig::load(Path::new(DEFAULT_PATH)) {
        Ok(c) => Ok((c.control_socket, format!("from {DEFAULT_PATH}"))),
        Err(GatewayConfigError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok((
                PathBuf::from(DEFAULT_CONTROL_SOCKET),
                format!("the default; there is no {DEFAULT_PATH}"),
            ))
        }
        Err(e) => Ok((
            PathBuf::from(DEFAULT_CONTROL_SOCKET),
            format!("the default, as {DEFAULT_PATH} does not load: {e}"),
        )),
    }
}

/// Why the gateway could not be asked, and what to do about it.
fn unreachable(path: &Path, how: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let at = format!("{} ({how})", path.display());
    let elsewhere = "If the gateway uses another control socket, pass --config <its gateway.toml> or --socket <PATH>.";
    match e.kind() {
        ErrorKind::NotFound => format!(
            "no gateway control socket at {at}. Is the gateway running (`corridor gateway run --config FILE`)? {elsewhere}"
        ),
        ErrorKind::ConnectionRefused => format!(
            "nothing answers on {at}: the gateway that created it is not running any more. Start it (`corridor gateway run --config FILE`). {elsewhere}"
        ),
        ErrorKind::PermissionDenied => format!(
            "not allowed to ask the gateway at {at}: {e}. Only root (or the gateway's own user) may: run `sudo corridor status`"
        ),
        _ => format!("cannot ask the gateway at {at}: {e}. {elsewhere}"),
    }
}

/// Non-zero drop counters as `reason=n ...`, or "none".
pub(crate) fn drops(d: &Drops) -> String {
    let v: Vec<String> = d.nonzero().map(|(r, n)| format!("{r}={n}")).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(" ")
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// A duration for people: `42s`, `3m 7s`, `2h 5m`, `3d 4h`.
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

fn ago(d: Option<Duration>) -> String {
    match d {
        None => "never".to_owned(),
        Some(d) => format!("{} ago", duration(d)),
    }
}

pub(crate) fn run(args: StatusArgs) -> Result<ExitCode> {
    let (path, how) = socket_path(&args)?;
    if args.watch {
        return watch(&args, &path, &how);
    }
    print(&once(&args, &path, &how)?);
    Ok(ExitCode::SUCCESS)
}

/// One report, as text (or JSON with --json).
fn once(args: &StatusArgs, path: &Path, how: &str) -> Result<String> {
    let answer = query_control(path, ControlRequest::Status)
        .map_err(|e| anyhow!(unreachable(path, how, &e)))?;
    if args.json {
        return Ok(answer.trim_end().to_owned());
    }
    let report: StatusReport = serde_json::from_str(&answer)
        .with_context(|| format!("the gateway answered something unexpected: {answer}"))?;
    Ok(render(&report))
}

/// ANSI: cursor home, clear the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// `--watch`: a report every `--interval` until SIGINT or SIGTERM, which end it with success.
/// A gateway that stops answering is said in place of the report, and watched on.
fn watch(args: &StatusArgs, path: &Path, how: &str) -> Result<ExitCode> {
    use std::io::IsTerminal as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the Ctrl-C handler")?;
    }
    let terminal = std::io::stdout().is_terminal();
    let interval = Duration::from_secs(args.interval);
    while !stop.load(Ordering::SeqCst) {
        let block = once(args, path, how).unwrap_or_else(|e| format!("error: {e:#}"));
        print(&watch_frame(&block, args.interval, terminal, args.json));
        let until = std::time::Instant::now() + interval;
        while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if terminal {
        print("");
    }
    Ok(ExitCode::SUCCESS)
}

/// One refresh of `--watch`: on a terminal, the screen is cleared and a header says how to
/// stop; otherwise reports follow each other (JSON: one line each; text: a blank line apart).
fn watch_frame(block: &str, interval: u64, terminal: bool, json: bool) -> String {
    if terminal {
        format!("{CLEAR}every {interval}s, Ctrl-C to stop\n\n{block}")
    } else if json {
        block.to_owned()
    } else {
        format!("{block}\n")
    }
}

#[expect(
    clippy::print_stdout,
    reason = "printing the status is the command's job"
)]
fn print(text: &str) {
    println!("{text}");
}

/// Why a peer may be silent, from its counters: empty when nothing looks wrong.
pub(crate) fn peer_hints(p: &PeerStats) -> Vec<String> {
    let mut hints = Vec::new();
    let c = &p.counters;
    match p.last_handshake {
        None if p.endpoint.is_none() => hints.push(
            "no handshake yet: its address is unknown until it dials in (is it running? does it know this gateway's endpoint?)"
                .to_owned(),
        ),
        None => hints.push(
            "no handshake yet (if traffic waits: the peer's address, its keys and the WAN in between)"
                .to_owned(),
        ),
        Some(d) if d >= REJECT_AFTER_TIME => hints.push(format!(
            "handshake {} ago: stale, no session (normal while idle: traffic starts a new handshake)",
            duration(d)
        )),
        Some(_) => {}
    }
    if c.tx.packets > 0 && c.rx.packets == 0 {
        hints.push(format!(
            "sending but no reply: {} packets sent, none received (one-way traffic, or the other side drops them: check its status)",
            c.tx.packets
        ));
    }
    let denied = c.drops.get(DropReason::PolicyDenied);
    if denied > 0 && denied * 2 > c.drops.total() {
        hints.push(format!(
            "policy drops: {denied} of its {} drops are policy_denied (flows no [[allow]] rule allows, on one side or the other)",
            c.drops.total()
        ));
    }
    hints
}

/// One interface's line.
fn interface_line(i: &InterfaceStatus) -> String {
    let mut line = format!(
        "  {}/{}  netns {}  {}",
        i.tenant, i.endpoint, i.netns, i.ifname
    );
    if i.state == InterfaceState::Missing {
        line.push_str("  MISSING");
        if let Some(secs) = i.missing_secs {
            line.push_str(&format!(" for {}", duration(Duration::from_secs(secs))));
        }
        if let Some(p) = &i.problem {
            line.push_str(&format!(": {p}"));
        }
    }
    if i.netns_losses > 0 || i.recoveries > 0 {
        line.push_str(&format!(
            "  (lost {}, recovered {})",
            i.netns_losses, i.recoveries
        ));
    }
    if i.missing_drops > 0 {
        line.push_str(&format!(
            "  {} packets dropped while missing",
            i.missing_drops
        ));
    }
    line
}

/// The human form of a status report.
pub(crate) fn render(r: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "gateway {} (corridor {}), up {}, WAN {}, reloads {} ok / {} refused",
        r.gateway,
        r.version,
        duration(Duration::from_secs(r.uptime_secs)),
        r.listen,
        r.reloads,
        r.reload_failures
    );
    if let Some(e) = &r.last_reload_error {
        let _ = writeln!(s, "  last reload refused: {e}");
    }
    if let Some(c) = &r.controller {
        let refused: Vec<String> = c
            .bundles_refused
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "  controller {} ({}), bundle {}, {} applied, refused: {}, key rotations {}",
            c.url.as_deref().unwrap_or("-"),
            if c.connected {
                "connected"
            } else {
                "not connected"
            },
            c.bundle_version
                .map_or_else(|| "none yet".to_owned(), |v| format!("v{v}")),
            c.bundles_applied,
            if refused.is_empty() {
                "none".to_owned()
            } else {
                refused.join(", ")
            },
            c.rotations
        );
        if let Some(e) = &c.last_error {
            let _ = writeln!(s, "  controller: {e}");
        }
    }
    let _ = writeln!(s, "interfaces:");
    for i in &r.interfaces {
        let _ = writeln!(s, "{}", interface_line(i));
    }
    for t in &r.engine.tenants {
        let _ = writeln!(
            s,
            "tenant {}  (key {}, {} tracked connections)",
            t.name, t.public_key, t.connections
        );
        for p in &t.peers {
            let _ = writeln!(
                s,
                "  peer {}  endpoint {}  handshake {}\n    sent {} pkts / {}  received {} pkts / {}  drops: {}",
                p.name,
                p.endpoint
                    .map_or_else(|| "unknown".to_owned(), |e| e.to_string()),
                ago(p.last_handshake),
                p.counters.tx.packets,
                bytes(p.counters.tx.bytes),
                p.counters.rx.packets,
                bytes(p.counters.rx.bytes),
                drops(&p.counters.drops),
            );
            for hint in peer_hints(p) {
                let _ = writeln!(s, "    ! {hint}");
            }
        }
        let _ = writeln!(s, "  all drops of the tenant: {}", drops(&t.counters.drops));
    }
    let _ = writeln!(s, "drops of no tenant: {}", drops(&r.engine.unattributed));
    let io = &r.io;
    let _ = write!(
        s,
        "io: wan rx {} tx {} (dropped {}, errors {}), interfaces rx {} tx {} (errors {}, no interface {}), interface failures {}",
        io.udp_rx,
        io.udp_tx,
        io.udp_tx_dropped,
        io.udp_tx_errors,
        io.tun_rx,
        io.tun_tx,
        io.tun_tx_errors,
        io.tun_tx_no_interface,
        io.interface_errors
    );
    if r.workers.len() > 1 {
        let _ = write!(s, "\nworkers: {}", r.workers.len());
        for w in &r.workers {
            let _ = write!(
                s,
                "\n  worker {}  tenants {}  wan rx {} tx {} (handed over {}), interfaces rx {} tx {}{}",
                w.worker,
                if w.tenants.is_empty() {
                    "none".to_owned()
                } else {
                    w.tenants.join(", ")
                },
                w.io.udp_rx,
                w.io.udp_tx,
                w.io.udp_rx_handed_over,
                w.io.tun_rx,
                w.io.tun_tx,
                if w.answered { "" } else { "  (did not answer)" }
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use dataplane::engine::{Counters, DropReason, EngineStats, PeerStats, TenantStats, Traffic};
    use dataplane::io::{InterfaceStatus, IoCounters};

    use super::*;

    fn drops(reasons: &[(DropReason, u64)]) -> Drops {
        let mut d = Drops::default();
        for (r, n) in reasons {
            for _ in 0..*n {
                d.count(*r);
            }
        }
        d
    }

    fn report() -> StatusReport {
        let edge_counters = Counters {
            tx: Traffic {
                packets: 12,
                bytes: 3 << 20,
            },
            rx: Traffic {
                packets: 10,
                bytes: 2048,
            },
            drops: drops(&[(DropReason::PolicyDenied, 3)]),
        };
        StatusReport {
            gateway: "dc-1".into(),
            version: "0.1.0".into(),
            uptime_secs: 3725,
            listen: "0.0.0.0:51820".parse().unwrap(),
            interfaces: vec![InterfaceStatus {
                tenant: "acme".into(),
                endpoint: "acme-cloud".into(),
                netns: "/proc/4242/ns/net".into(),
                ifname: "corridor0".into(),
                ..InterfaceStatus::default()
            }],
            engine: EngineStats {
                tenants: vec![TenantStats {
                    name: "acme".into(),
                    public_key: "AcmeKey=".into(),
                    counters: Counters {
                        drops: drops(&[
                            (DropReason::PolicyDenied, 3),
                            (DropReason::SpoofedSource, 1),
                        ]),
                        ..edge_counters
                    },
                    connections: 2,
                    peers: vec![
                        PeerStats {
                            name: "edge-1".into(),
                            public_key: "EdgeKey=".into(),
                            endpoint: Some("192.168.60.3:40000".parse().unwrap()),
                            last_handshake: Some(Duration::from_secs(75)),
                            counters: edge_counters,
                        },
                        PeerStats {
                            name: "legacy-hub".into(),
                            public_key: "HubKey=".into(),
                            endpoint: None,
                            last_handshake: None,
                            counters: Counters::default(),
                        },
                    ],
                }],
                unattributed: drops(&[
                    (DropReason::UnknownIndex, 5),
                    (DropReason::MalformedDatagram, 1),
                ]),
            },
            io: IoCounters {
                udp_rx: 16,
                udp_tx: 12,
                ..IoCounters::default()
            },
            reloads: 2,
            reload_failures: 1,
            last_reload_error: Some("the policy is invalid".into()),
            configs_applied: 3,
            controller: None,
            workers: Vec::new(),
        }
    }

    #[test]
    fn render_shows_tenants_peers_and_drops() {
        let text = render(&report());
        let lines: Vec<&str> = text.lines().collect();
        let expected = [
            "gateway dc-1 (corridor 0.1.0), up 1h 2m, WAN 0.0.0.0:51820, reloads 2 ok / 1 refused",
            "  last reload refused: the policy is invalid",
            "interfaces:",
            "  acme/acme-cloud  netns /proc/4242/ns/net  corridor0",
            "tenant acme  (key AcmeKey=, 2 tracked connections)",
            "  peer edge-1  endpoint 192.168.60.3:40000  handshake 1m 15s ago",
            "    sent 12 pkts / 3.0 MiB  received 10 pkts / 2.0 KiB  drops: policy_denied=3",
            "    ! policy drops: 3 of its 3 drops are policy_denied (flows no [[allow]] rule allows, on one side or the other)",
            "  peer legacy-hub  endpoint unknown  handshake never",
            "    sent 0 pkts / 0 B  received 0 pkts / 0 B  drops: none",
            "    ! no handshake yet: its address is unknown until it dials in (is it running? does it know this gateway's endpoint?)",
            "  all drops of the tenant: spoofed_source=1 policy_denied=3",
            "drops of no tenant: malformed_datagram=1 unknown_index=5",
            "io: wan rx 16 tx 12 (dropped 0, errors 0), interfaces rx 0 tx 0 (errors 0, no interface 0), interface failures 0",
        ];
        assert_eq!(lines, expected, "{text}");
    }

    #[test]
    fn render_of_a_fresh_gateway() {
        let mut r = report();
        r.engine.tenants.clear();
        r.interfaces.clear();
        r.engine.unattributed = Drops::default();
        r.last_reload_error = None;
        r.uptime_secs = 5;
        let text = render(&r);
        assert!(
            text.starts_with("gateway dc-1 (corridor 0.1.0), up 5s,"),
            "{text}"
        );
        assert!(!text.contains("last reload refused"), "{text}");
        assert!(text.contains("\ndrops of no tenant: none\n"), "{text}");
    }

    fn peer(hs: Option<u64>, tx: u64, rx: u64, reasons: &[(DropReason, u64)]) -> PeerStats {
        PeerStats {
            name: "p".into(),
            public_key: "K=".into(),
            endpoint: Some("192.0.2.1:51820".parse().unwrap()),
            last_handshake: hs.map(Duration::from_secs),
            counters: Counters {
                tx: Traffic {
                    packets: tx,
                    bytes: tx * 100,
                },
                rx: Traffic {
                    packets: rx,
                    bytes: rx * 100,
                },
                drops: drops(reasons),
            },
        }
    }

    #[test]
    fn silent_peers_say_why() {
        // Healthy: nothing to say.
        assert!(peer_hints(&peer(Some(30), 10, 10, &[])).is_empty());
        assert!(peer_hints(&peer(Some(179), 0, 0, &[(DropReason::NoRoute, 5)])).is_empty());
        let h = peer_hints(&peer(None, 0, 0, &[]));
        assert_eq!(h.len(), 1);
        assert!(h[0].starts_with("no handshake yet ("), "{h:?}");
        let h = peer_hints(&peer(Some(300), 4, 4, &[]));
        assert_eq!(h.len(), 1);
        assert!(
            h[0].starts_with("handshake 5m 0s ago: stale, no session"),
            "{h:?}"
        );
        let h = peer_hints(&peer(Some(3), 7, 0, &[]));
        assert_eq!(h.len(), 1);
        assert!(
            h[0].starts_with("sending but no reply: 7 packets sent, none received"),
            "{h:?}"
        );
        // Policy drops dominate (more than half), or they do not.
        let h = peer_hints(&peer(
            Some(3),
            7,
            7,
            &[(DropReason::PolicyDenied, 3), (DropReason::Replay, 2)],
        ));
        assert_eq!(h.len(), 1);
        assert!(h[0].starts_with("policy drops: 3 of its 5 drops"), "{h:?}");
        assert!(
            peer_hints(&peer(
                Some(3),
                7,
                7,
                &[(DropReason::PolicyDenied, 2), (DropReason::Replay, 2)]
            ))
            .is_empty()
        );
        // Several at once.
        let h = peer_hints(&peer(None, 9, 0, &[(DropReason::PolicyDenied, 1)]));
        assert_eq!(h.len(), 3, "{h:?}");
    }

    #[test]
    fn missing_interfaces_say_so() {
        let mut i = InterfaceStatus {
            tenant: "acme".into(),
            endpoint: "acme-app".into(),
            netns: "acme-app".into(),
            ifname: "corridor0".into(),
            ..InterfaceStatus::default()
        };
        assert_eq!(
            interface_line(&i),
            "  acme/acme-app  netns acme-app  corridor0"
        );
        i.state = InterfaceState::Missing;
        i.missing_secs = Some(75);
        i.problem = Some("the namespace is gone (/var/run/netns/acme-app does not exist)".into());
        i.netns_losses = 2;
        i.recoveries = 1;
        i.missing_drops = 40;
        assert_eq!(
            interface_line(&i),
            "  acme/acme-app  netns acme-app  corridor0  MISSING for 1m 15s: the namespace is gone (/var/run/netns/acme-app does not exist)  (lost 2, recovered 1)  40 packets dropped while missing"
        );
        let mut r = report();
        r.interfaces = vec![i];
        assert!(render(&r).contains("  MISSING for 1m 15s: "));
    }

    #[test]
    fn watch_frames() {
        assert_eq!(
            watch_frame("gateway x", 2, true, false),
            "\x1b[H\x1b[2Jevery 2s, Ctrl-C to stop\n\ngateway x"
        );
        assert_eq!(watch_frame("gateway x", 2, false, false), "gateway x\n");
        assert_eq!(watch_frame("{}", 2, false, true), "{}");
        let args = |v: &[&str]| {
            #[derive(Debug, clap::Parser)]
            struct T {
                #[command(flatten)]
                a: StatusArgs,
            }
            <T as clap::Parser>::try_parse_from(std::iter::once("status").chain(v.iter().copied()))
                .map(|t| t.a)
        };
        let a = args(&["--watch", "--interval", "5"]).unwrap();
        assert!(a.watch && a.interval == 5);
        assert_eq!(args(&["--watch"]).unwrap().interval, 2);
        assert!(
            args(&["--interval", "5"]).is_err(),
            "--interval needs --watch"
        );
        assert!(args(&["--watch", "--interval", "0"]).is_err());
    }

    #[test]
    fn durations_for_people() {
        let d = |s| duration(Duration::from_secs(s));
        assert_eq!(
            [d(0), d(59), d(60), d(3599), d(3600), d(86399), d(90000)],
            ["0s", "59s", "1m 0s", "59m 59s", "1h 0m", "23h 59m", "1d 1h"]
        );
        assert_eq!(ago(None), "never");
        assert_eq!(ago(Some(Duration::from_millis(2500))), "2s ago");
    }

    #[test]
    fn unreachable_says_what_to_do() {
        let p = Path::new("/run/corridor/control.sock");
        let how = "the default; there is no /etc/corridor/gateway.toml";
        let m = unreachable(p, how, &std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(
            m.starts_with("no gateway control socket at /run/corridor/control.sock (the default; there is no /etc/corridor/gateway.toml). Is the gateway running"),
            "{m}"
        );
        assert!(m.contains("--config") && m.contains("--socket"), "{m}");
        let m = unreachable(
            p,
            how,
            &std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert!(m.contains("not running any more"), "{m}");
        let m = unreachable(
            p,
            how,
            &std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(m.contains("sudo corridor status"), "{m}");
    }
}
