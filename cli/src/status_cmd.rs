//! `corridor status`: what a running gateway is doing, per tenant and per peer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use controlplane::gateway_config::{
    DEFAULT_CONTROL_SOCKET, DEFAULT_PATH, GatewayConfig, GatewayConfigError,
};
use dataplane::engine::Drops;
use dataplane::io::{ControlRequest, StatusReport, query_control};

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
    let answer = query_control(&path, ControlRequest::Status)
        .map_err(|e| anyhow!(unreachable(&path, &how, &e)))?;
    if args.json {
        print(answer.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let report: StatusReport = serde_json::from_str(&answer)
        .with_context(|| format!("the gateway answered something unexpected: {answer}"))?;
    print(&render(&report));
    Ok(ExitCode::SUCCESS)
}

#[expect(
    clippy::print_stdout,
    reason = "printing the status is the command's job"
)]
fn print(text: &str) {
    println!("{text}");
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
    let _ = writeln!(s, "interfaces:");
    for i in &r.interfaces {
        let _ = writeln!(
            s,
            "  {}/{}  netns {}  {}",
            i.tenant, i.endpoint, i.netns, i.ifname
        );
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
        }
        let _ = writeln!(s, "  all drops of the tenant: {}", drops(&t.counters.drops));
    }
    let _ = writeln!(s, "drops of no tenant: {}", drops(&r.engine.unattributed));
    let io = &r.io;
    let _ = write!(
        s,
        "io: wan rx {} tx {} (dropped {}, errors {}), interfaces rx {} tx {} (errors {}), interface failures {}",
        io.udp_rx,
        io.udp_tx,
        io.udp_tx_dropped,
        io.udp_tx_errors,
        io.tun_rx,
        io.tun_tx,
        io.tun_tx_errors,
        io.interface_errors
    );
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
            "  peer legacy-hub  endpoint unknown  handshake never",
            "    sent 0 pkts / 0 B  received 0 pkts / 0 B  drops: none",
            "  all drops of the tenant: spoofed_source=1 policy_denied=3",
            "drops of no tenant: malformed_datagram=1 unknown_index=5",
            "io: wan rx 16 tx 12 (dropped 0, errors 0), interfaces rx 0 tx 0 (errors 0), interface failures 0",
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
