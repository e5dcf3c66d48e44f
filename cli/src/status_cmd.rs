//! `corridor status`: what a running gateway is doing, per tenant and per peer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use controlplane::gateway_config::{DEFAULT_CONTROL_SOCKET, DEFAULT_PATH, GatewayConfig};
use dataplane::engine::Drops;
use dataplane::io::{ControlRequest, StatusReport, query_control};

/// Arguments of `corridor status`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The gateway's control socket (default: the one its configuration names).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The gateway's configuration file, to find its control socket.
    #[arg(long, default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// Print the raw JSON report, for scripts.
    #[arg(long)]
    json: bool,
}

fn socket_path(args: &StatusArgs) -> PathBuf {
    if let Some(s) = &args.socket {
        return s.clone();
    }
    GatewayConfig::load(&args.config)
        .map(|c| c.control_socket)
        .unwrap_or_else(|_| PathBuf::from(DEFAULT_CONTROL_SOCKET))
}

fn drops(d: &Drops) -> String {
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

fn ago(d: Option<Duration>) -> String {
    match d {
        None => "never".to_owned(),
        Some(d) => format!("{}s ago", d.as_secs()),
    }
}

pub(crate) fn run(args: StatusArgs) -> Result<ExitCode> {
    let path = socket_path(&args);
    let answer = query_control(&path, ControlRequest::Status).with_context(|| {
        format!(
            "cannot reach a gateway at {} (is it running? only root may ask)",
            path.display()
        )
    })?;
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
        "gateway {} (corridor {}), up {}s, WAN {}, reloads {} ok / {} refused",
        r.gateway, r.version, r.uptime_secs, r.listen, r.reloads, r.reload_failures
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
