//! Prometheus metrics: the text exposition format (0.0.4) of a status report, and a tiny
//! HTTP/1.0 server for `GET /metrics` that lives in the gateway's event loop.
//!
//! The server is opt-in (`metrics = "127.0.0.1:9477"` in gateway.toml) and meant for loopback:
//! it has no authentication, and the metrics name tenants and peers. It never blocks: sockets
//! are non-blocking, a request is at most [`MAX_REQUEST`] bytes, a client gets [`CLIENT_TIMEOUT`]
//! to ask and read its answer, and at most [`MAX_CLIENTS`] are served at once.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use super::runtime::{InterfaceState, StatusReport};
use super::{IoError, REJECT_AFTER_TIME};
use crate::engine::{DropReason, Drops, PeerStats};

/// Largest request accepted (request line and headers).
pub const MAX_REQUEST: usize = 8192;
/// Clients served at once; more are turned away.
pub const MAX_CLIENTS: usize = 16;
/// Time a client has to send its request and read the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a peer has a usable session: a handshake younger than WireGuard's
/// REJECT_AFTER_TIME (180 s). Older sessions send and accept nothing.
pub fn has_session(p: &PeerStats) -> bool {
    p.last_handshake.is_some_and(|d| d < REJECT_AFTER_TIME)
}

/// A label value, escaped (backslash, double quote, newline).
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

struct Out(String);

impl Out {
    /// `# HELP` and `# TYPE` of one family (HELP texts here have no backslash or newline).
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn drops(&mut self, name: &str, labels: &[(&str, &str)], drops: &Drops, zeros: bool) {
        for reason in DropReason::ALL {
            let n = drops.get(*reason);
            if n > 0 || zeros {
                let mut l = labels.to_vec();
                l.push(("reason", reason.label()));
                self.sample(name, &l, n);
            }
        }
    }
}

/// The metrics of a status report in the text exposition format 0.0.4. Every family has its
/// HELP and TYPE; per-tenant and unattributed drops are given for every reason (zeros included,
/// so that rates work from the start), per-peer drops only when non-zero.
pub fn render(r: &StatusReport) -> String {
    let mut o = Out(String::with_capacity(4096));
    let tenants = &r.engine.tenants;

    o.family(
        "corridor_build_info",
        "gauge",
        "The gateway's name and corridor's version (always 1).",
    );
    o.sample(
        "corridor_build_info",
        &[("gateway", &r.gateway), ("version", &r.version)],
        1,
    );
    o.family(
        "corridor_uptime_seconds",
        "gauge",
        "Seconds since the gateway started.",
    );
    o.sample("corridor_uptime_seconds", &[], r.uptime_secs);
    o.family(
        "corridor_config_applied_total",
        "counter",
        "Configurations applied: the one at start, then every accepted reload (the running configuration's version).",
    );
    o.sample("corridor_config_applied_total", &[], r.configs_applied);
    if let Some(c) = &r.controller {
        o.family(
            "corridor_controller_connected",
            "gauge",
            "1 when the last request to the controller succeeded.",
        );
        o.sample("corridor_controller_connected", &[], u64::from(c.connected));
        o.family(
            "corridor_bundle_version",
            "gauge",
            "Version of the controller bundle applied (0: none yet).",
        );
        o.sample(
            "corridor_bundle_version",
            &[],
            c.bundle_version.unwrap_or(0),
        );
        o.family(
            "corridor_bundles_applied_total",
            "counter",
            "Controller bundles applied.",
        );
        o.sample("corridor_bundles_applied_total", &[], c.bundles_applied);
        o.family(
            "corridor_bundles_refused_total",
            "counter",
            "Controller bundles refused, by reason (bad_signature, wrong_signer, replay, unsealable, malformed, wrong_gateway, apply_failed).",
        );
        for (reason, n) in &c.bundles_refused {
            o.sample("corridor_bundles_refused_total", &[("reason", reason)], *n);
        }
        o.family(
            "corridor_key_rotations_total",
            "counter",
            "Tenant key rotations this gateway carried out.",
        );
        o.sample("corridor_key_rotations_total", &[], c.rotations);
    }
    o.family(
        "corridor_reloads_total",
        "counter",
        "Reloads (SIGHUP) by result: ok (applied) or refused (the running configuration stayed).",
    );
    o.sample("corridor_reloads_total", &[("result", "ok")], r.reloads);
    o.sample(
        "corridor_reloads_total",
        &[("result", "refused")],
        r.reload_failures,
    );
    o.family(
        "corridor_last_reload_ok",
        "gauge",
        "1 unless the last reload was refused (see corridor status for why).",
    );
    o.sample(
        "corridor_last_reload_ok",
        &[],
        u8::from(r.last_reload_error.is_none()),
    );

    o.family(
        "corridor_tenant_packets_total",
        "counter",
        "Inner IP packets of a tenant: tx toward the WAN (and hairpinned), rx delivered from the WAN.",
    );
    for t in tenants {
        for (dir, traffic) in [("tx", t.counters.tx), ("rx", t.counters.rx)] {
            let l = [("tenant", t.name.as_str()), ("direction", dir)];
            o.sample("corridor_tenant_packets_total", &l, traffic.packets);
        }
    }
    o.family(
        "corridor_tenant_bytes_total",
        "counter",
        "Bytes of inner IP packets of a tenant, by direction.",
    );
    for t in tenants {
        for (dir, traffic) in [("tx", t.counters.tx), ("rx", t.counters.rx)] {
            let l = [("tenant", t.name.as_str()), ("direction", dir)];
            o.sample("corridor_tenant_bytes_total", &l, traffic.bytes);
        }
    }
    o.family(
        "corridor_tenant_drops_total",
        "counter",
        "Packets and datagrams of a tenant dropped, by reason (see the README's drop reasons).",
    );
    for t in tenants {
        o.drops(
            "corridor_tenant_drops_total",
            &[("tenant", &t.name)],
            &t.counters.drops,
            true,
        );
    }
    o.family(
        "corridor_tenant_connections",
        "gauge",
        "Connections tracked for a tenant's policy (replies to allowed flows).",
    );
    for t in tenants {
        o.sample(
            "corridor_tenant_connections",
            &[("tenant", &t.name)],
            t.connections,
        );
    }
    o.family(
        "corridor_tenant_peers",
        "gauge",
        "Peers of a tenant on this gateway.",
    );
    for t in tenants {
        o.sample(
            "corridor_tenant_peers",
            &[("tenant", &t.name)],
            t.peers.len(),
        );
    }
    o.family(
        "corridor_tenant_sessions",
        "gauge",
        "Peers of a tenant with a live session (a handshake less than 180 s ago).",
    );
    for t in tenants {
        let live = t.peers.iter().filter(|p| has_session(p)).count();
        o.sample("corridor_tenant_sessions", &[("tenant", &t.name)], live);
    }

    o.family(
        "corridor_peer_packets_total",
        "counter",
        "Inner IP packets exchanged with a peer: tx sent to it, rx received from it.",
    );
    for t in tenants {
        for p in &t.peers {
            for (dir, traffic) in [("tx", p.counters.tx), ("rx", p.counters.rx)] {
                let l = [
                    ("tenant", t.name.as_str()),
                    ("peer", &p.name),
                    ("direction", dir),
                ];
                o.sample("corridor_peer_packets_total", &l, traffic.packets);
            }
        }
    }
    o.family(
        "corridor_peer_bytes_total",
        "counter",
        "Bytes of inner IP packets exchanged with a peer, by direction.",
    );
    for t in tenants {
        for p in &t.peers {
            for (dir, traffic) in [("tx", p.counters.tx), ("rx", p.counters.rx)] {
                let l = [
                    ("tenant", t.name.as_str()),
                    ("peer", &p.name),
                    ("direction", dir),
                ];
                o.sample("corridor_peer_bytes_total", &l, traffic.bytes);
            }
        }
    }
    o.family(
        "corridor_peer_drops_total",
        "counter",
        "Drops blamed on one peer, by reason (only reasons that occurred).",
    );
    for t in tenants {
        for p in &t.peers {
            let l = [("tenant", t.name.as_str()), ("peer", p.name.as_str())];
            o.drops("corridor_peer_drops_total", &l, &p.counters.drops, false);
        }
    }
    o.family(
        "corridor_peer_handshake_age_seconds",
        "gauge",
        "Seconds since the last completed handshake with a peer (absent when there was none).",
    );
    for t in tenants {
        for p in &t.peers {
            if let Some(d) = p.last_handshake {
                let l = [("tenant", t.name.as_str()), ("peer", p.name.as_str())];
                o.sample(
                    "corridor_peer_handshake_age_seconds",
                    &l,
                    format_args!("{:.3}", d.as_secs_f64()),
                );
            }
        }
    }
    o.family(
        "corridor_peer_session_up",
        "gauge",
        "1 when the peer has a live session (a handshake less than 180 s ago), else 0.",
    );
    for t in tenants {
        for p in &t.peers {
            let l = [("tenant", t.name.as_str()), ("peer", p.name.as_str())];
            o.sample("corridor_peer_session_up", &l, u8::from(has_session(p)));
        }
    }

    o.family(
        "corridor_unattributed_drops_total",
        "counter",
        "Drops that belong to no tenant (datagrams naming no session or identity here), by reason.",
    );
    o.drops(
        "corridor_unattributed_drops_total",
        &[],
        &r.engine.unattributed,
        true,
    );

    o.family(
        "corridor_interface_up",
        "gauge",
        "1 while an app's interface exists in its namespace, 0 while it is missing.",
    );
    for i in &r.interfaces {
        let l = [
            ("tenant", i.tenant.as_str()),
            ("endpoint", i.endpoint.as_str()),
            ("netns", i.netns.as_str()),
            ("ifname", i.ifname.as_str()),
        ];
        o.sample(
            "corridor_interface_up",
            &l,
            u8::from(i.state == InterfaceState::Up),
        );
    }
    for (name, help, get) in [
        (
            "corridor_interface_netns_losses_total",
            "Times an app's interface was lost: its namespace went away or was replaced, or the device failed.",
            (|i| i.netns_losses) as fn(&super::InterfaceStatus) -> u64,
        ),
        (
            "corridor_interface_recoveries_total",
            "Times an app's interface was created again after a loss (or late, after waiting for its namespace).",
            |i| i.recoveries,
        ),
        (
            "corridor_interface_missing_drops_total",
            "Packets for an app dropped because its interface was missing.",
            |i| i.missing_drops,
        ),
    ] {
        o.family(name, "counter", help);
        for i in &r.interfaces {
            let l = [
                ("tenant", i.tenant.as_str()),
                ("endpoint", i.endpoint.as_str()),
            ];
            o.sample(name, &l, get(i));
        }
    }

    let io = &r.io;
    o.family(
        "corridor_wan_datagrams_total",
        "counter",
        "UDP datagrams on the WAN socket: rx received, tx sent.",
    );
    o.sample(
        "corridor_wan_datagrams_total",
        &[("direction", "rx")],
        io.udp_rx,
    );
    o.sample(
        "corridor_wan_datagrams_total",
        &[("direction", "tx")],
        io.udp_tx,
    );
    o.family(
        "corridor_wan_send_failures_total",
        "counter",
        "Datagrams not sent on the WAN: buffer_full (socket buffer) or error (unreachable, ...).",
    );
    o.sample(
        "corridor_wan_send_failures_total",
        &[("cause", "buffer_full")],
        io.udp_tx_dropped,
    );
    o.sample(
        "corridor_wan_send_failures_total",
        &[("cause", "error")],
        io.udp_tx_errors,
    );
    o.family(
        "corridor_interface_packets_total",
        "counter",
        "Packets on the app interfaces, all together: rx read from apps, tx written to apps.",
    );
    o.sample(
        "corridor_interface_packets_total",
        &[("direction", "rx")],
        io.tun_rx,
    );
    o.sample(
        "corridor_interface_packets_total",
        &[("direction", "tx")],
        io.tun_tx,
    );
    o.family(
        "corridor_interface_write_errors_total",
        "counter",
        "Packets not written to an app interface that exists (full, or down).",
    );
    o.sample(
        "corridor_interface_write_errors_total",
        &[],
        io.tun_tx_errors,
    );
    o.family(
        "corridor_interface_failures_total",
        "counter",
        "Failed attempts to create an app interface (after a reload, or when its namespace came back).",
    );
    o.sample(
        "corridor_interface_failures_total",
        &[],
        io.interface_errors,
    );
    o.family(
        "corridor_workers",
        "gauge",
        "Packet worker threads (gateway.toml `workers`).",
    );
    o.sample("corridor_workers", &[], r.workers.len().max(1) as u64);
    o.family(
        "corridor_wan_handed_over_total",
        "counter",
        "Datagrams a worker received for another worker's tenant and handed over (handshake initiations, mixed GRO batches).",
    );
    o.sample("corridor_wan_handed_over_total", &[], io.udp_rx_handed_over);
    o.family(
        "corridor_wan_handover_dropped_total",
        "counter",
        "Datagrams a worker could not hand over: the owner already had 16,384 waiting (a flood), or it was gone.",
    );
    o.sample(
        "corridor_wan_handover_dropped_total",
        &[],
        io.udp_rx_handover_failed,
    );
    o.0
}

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// `GET /metrics`.
    Metrics,
    /// Anything else that is HTTP.
    NotFound,
    /// Too long, or not HTTP.
    Bad,
}

/// Parses a request once its head is complete (`None` until then).
pub(crate) fn parse_request(buf: &[u8]) -> Option<Request> {
    let complete = buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n");
    if !complete {
        return (buf.len() > MAX_REQUEST).then_some(Request::Bad);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Some(Request::Bad);
    };
    if !version.starts_with("HTTP/") || parts.next().is_some() {
        return Some(Request::Bad);
    }
    let path = target.split('?').next().unwrap_or("");
    Some(if method == "GET" && path == "/metrics" {
        Request::Metrics
    } else {
        Request::NotFound
    })
}

/// The whole HTTP/1.0 response.
pub(crate) fn response(request: Request, metrics: impl FnOnce() -> String) -> Vec<u8> {
    let (status, ctype, body) = match request {
        Request::Metrics => ("200 OK", CONTENT_TYPE, metrics()),
        Request::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: corridor serves GET /metrics only\n".to_owned(),
        ),
        Request::Bad => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_owned(),
        ),
    };
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

struct Client {
    stream: TcpStream,
    since: Instant,
    request: Vec<u8>,
    /// The answer, once there is one, and how much of it went out.
    answer: Option<(Vec<u8>, usize)>,
}

/// The metrics listener and its clients.
pub(crate) struct Server {
    listener: TcpListener,
    clients: HashMap<usize, Client>,
    next: usize,
    token_base: usize,
}

/// What the runtime has to do for a client.
pub(crate) enum Progress {
    /// Nothing (waiting, or done).
    Idle,
    /// The client asked; call [`Server::answer`] with the response.
    Asked(Request),
}

impl Server {
    /// Binds `addr` and registers the listener under `token`; clients get tokens from
    /// `token_base` on.
    pub(crate) fn bind(
        addr: SocketAddr,
        registry: &Registry,
        token: Token,
        token_base: usize,
    ) -> Result<Self, IoError> {
        let mut listener =
            TcpListener::bind(addr).map_err(|source| IoError::Bind { addr, source })?;
        registry
            .register(&mut listener, token, Interest::READABLE)
            .map_err(|source| IoError::Os {
                what: "registering the metrics listener",
                source,
            })?;
        Ok(Server {
            listener,
            clients: HashMap::new(),
            next: 0,
            token_base,
        })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Accepts every waiting client (beyond [`MAX_CLIENTS`], they are closed at once).
    pub(crate) fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS {
                        continue;
                    }
                    let id = self.next;
                    self.next = self.next.wrapping_add(1);
                    let token = Token(self.token_base + id % (1 << 20));
                    if registry
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_ok()
                    {
                        self.clients.insert(
                            id % (1 << 20),
                            Client {
                                stream,
                                since: now,
                                request: Vec::new(),
                                answer: None,
                            },
                        );
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Whether `token` is one of this server's clients; its id.
    pub(crate) fn client(&self, token: Token) -> Option<usize> {
        token
            .0
            .checked_sub(self.token_base)
            .filter(|id| *id < (1 << 20))
    }

    /// Reads what a client sent, or writes what it waits for.
    pub(crate) fn ready(&mut self, id: usize, registry: &Registry) -> Progress {
        let Some(c) = self.clients.get_mut(&id) else {
            return Progress::Idle;
        };
        if c.answer.is_some() {
            self.write(id, registry);
            return Progress::Idle;
        }
        let mut chunk = [0u8; 1024];
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    // Closed before asking anything complete.
                    let request = parse_request(&c.request).unwrap_or(Request::Bad);
                    return Progress::Asked(request);
                }
                Ok(n) => {
                    c.request.extend_from_slice(&chunk[..n]);
                    if let Some(request) = parse_request(&c.request) {
                        return Progress::Asked(request);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Progress::Idle,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(id, registry);
                    return Progress::Idle;
                }
            }
        }
    }

    /// Sends `answer` to client `id` (as much as the socket takes now; the rest when writable).
    pub(crate) fn answer(&mut self, id: usize, answer: Vec<u8>, registry: &Registry) {
        if let Some(c) = self.clients.get_mut(&id) {
            c.answer = Some((answer, 0));
            self.write(id, registry);
        }
    }

    fn write(&mut self, id: usize, registry: &Registry) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let Some((data, sent)) = &mut c.answer else {
            return;
        };
        loop {
            match c.stream.write(&data[*sent..]) {
                Ok(n) if n > 0 => {
                    *sent += n;
                    if *sent == data.len() {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = c.stream.shutdown(std::net::Shutdown::Write);
        self.close(id, registry);
    }

    fn close(&mut self, id: usize, registry: &Registry) {
        if let Some(mut c) = self.clients.remove(&id) {
            let _ = registry.deregister(&mut c.stream);
        }
    }

    /// Closes clients that took longer than [`CLIENT_TIMEOUT`].
    pub(crate) fn sweep(&mut self, now: Instant, registry: &Registry) {
        let late: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.since) > CLIENT_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.close(id, registry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Counters, EngineStats, TenantStats, Traffic};
    use crate::io::{InterfaceStatus, IoCounters};

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
        let peer = |name: &str, hs: Option<u64>, tx: u64, rx: u64| PeerStats {
            name: name.into(),
            public_key: "K=".into(),
            endpoint: None,
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
                drops: drops(&[(DropReason::PolicyDenied, 2)]),
            },
        };
        StatusReport {
            gateway: "dc-1".into(),
            version: "0.1.0".into(),
            uptime_secs: 42,
            listen: "0.0.0.0:51820".parse().unwrap(),
            interfaces: vec![InterfaceStatus {
                tenant: "acme".into(),
                endpoint: "acme-cloud".into(),
                netns: "ns \"quoted\"\\x".into(),
                ifname: "corridor0".into(),
                state: InterfaceState::Missing,
                netns_losses: 2,
                recoveries: 1,
                missing_drops: 7,
                ..InterfaceStatus::default()
            }],
            engine: EngineStats {
                tenants: vec![TenantStats {
                    name: "acme".into(),
                    public_key: "A=".into(),
                    counters: Counters {
                        tx: Traffic {
                            packets: 5,
                            bytes: 500,
                        },
                        rx: Traffic {
                            packets: 3,
                            bytes: 300,
                        },
                        drops: drops(&[(DropReason::PolicyDenied, 2)]),
                    },
                    connections: 4,
                    peers: vec![
                        peer("edge-1", Some(5), 5, 3),
                        peer("old", Some(200), 0, 0),
                        peer("new\nline", None, 0, 0),
                    ],
                }],
                unattributed: drops(&[(DropReason::UnknownIndex, 9)]),
            },
            io: IoCounters {
                udp_rx: 11,
                udp_tx: 12,
                ..IoCounters::default()
            },
            reloads: 2,
            reload_failures: 1,
            last_reload_error: Some("x".into()),
            configs_applied: 3,
            controller: None,
            workers: Vec::new(),
        }
    }

    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn renders_the_counters_with_labels() {
        let text = render(&report());
        let s = samples(&text);
        for want in [
            "corridor_build_info{gateway=\"dc-1\",version=\"0.1.0\"} 1",
            "corridor_config_applied_total 3",
            "corridor_reloads_total{result=\"ok\"} 2",
            "corridor_reloads_total{result=\"refused\"} 1",
            "corridor_last_reload_ok 0",
            "corridor_tenant_packets_total{tenant=\"acme\",direction=\"tx\"} 5",
            "corridor_tenant_bytes_total{tenant=\"acme\",direction=\"rx\"} 300",
            "corridor_tenant_drops_total{tenant=\"acme\",reason=\"policy_denied\"} 2",
            "corridor_tenant_drops_total{tenant=\"acme\",reason=\"no_session\"} 0",
            "corridor_tenant_connections{tenant=\"acme\"} 4",
            "corridor_tenant_peers{tenant=\"acme\"} 3",
            "corridor_tenant_sessions{tenant=\"acme\"} 1",
            "corridor_peer_packets_total{tenant=\"acme\",peer=\"edge-1\",direction=\"tx\"} 5",
            "corridor_peer_bytes_total{tenant=\"acme\",peer=\"edge-1\",direction=\"rx\"} 300",
            "corridor_peer_drops_total{tenant=\"acme\",peer=\"edge-1\",reason=\"policy_denied\"} 2",
            "corridor_peer_handshake_age_seconds{tenant=\"acme\",peer=\"edge-1\"} 5.000",
            "corridor_peer_handshake_age_seconds{tenant=\"acme\",peer=\"old\"} 200.000",
            "corridor_peer_session_up{tenant=\"acme\",peer=\"edge-1\"} 1",
            "corridor_peer_session_up{tenant=\"acme\",peer=\"old\"} 0",
            "corridor_peer_session_up{tenant=\"acme\",peer=\"new\\nline\"} 0",
            "corridor_unattributed_drops_total{reason=\"unknown_index\"} 9",
            "corridor_interface_up{tenant=\"acme\",endpoint=\"acme-cloud\",netns=\"ns \\\"quoted\\\"\\\\x\",ifname=\"corridor0\"} 0",
            "corridor_interface_netns_losses_total{tenant=\"acme\",endpoint=\"acme-cloud\"} 2",
            "corridor_interface_recoveries_total{tenant=\"acme\",endpoint=\"acme-cloud\"} 1",
            "corridor_interface_missing_drops_total{tenant=\"acme\",endpoint=\"acme-cloud\"} 7",
            "corridor_wan_datagrams_total{direction=\"rx\"} 11",
            "corridor_wan_send_failures_total{cause=\"buffer_full\"} 0",
            "corridor_interface_packets_total{direction=\"tx\"} 0",
            "corridor_interface_failures_total 0",
        ] {
            assert!(s.contains(&want), "missing {want}\n{text}");
        }
        // Never a handshake: no age sample. Per-peer zero drops are left out.
        assert!(!text.contains("handshake_age_seconds{tenant=\"acme\",peer=\"new"));
        assert!(!text.contains("peer=\"edge-1\",reason=\"no_session\""));
        assert_eq!(
            s.iter()
                .filter(|l| l.starts_with("corridor_tenant_drops_total{"))
                .count(),
            DropReason::COUNT
        );
    }

    #[test]
    fn every_family_is_announced_once_and_contiguous() {
        let text = render(&report());
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(seen.insert(name.clone()), "{name} announced twice");
                current = name;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                assert_eq!(it.next(), Some(current.as_str()));
                let kind = it.next().unwrap();
                assert!(["counter", "gauge"].contains(&kind), "{line}");
                assert_eq!(kind == "counter", current.ends_with("_total"), "{line}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample outside its family: {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
                assert!(name.starts_with("corridor_"));
            }
        }
    }

    #[test]
    fn a_fresh_gateway_renders() {
        let mut r = report();
        r.engine.tenants.clear();
        r.interfaces.clear();
        let text = render(&r);
        assert!(text.contains("# TYPE corridor_tenant_drops_total counter\n"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn requests() {
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\nHost: x"), None);
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Request::Metrics)
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\n\n"),
            Some(Request::Metrics)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\n\r\n"),
            Some(Request::NotFound)
        );
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Request::NotFound)
        );
        assert_eq!(parse_request(b"hello\r\n\r\n"), Some(Request::Bad));
        assert_eq!(
            parse_request(&vec![b'a'; MAX_REQUEST + 1]),
            Some(Request::Bad)
        );
        let r = String::from_utf8(response(Request::Metrics, || "m 1\n".into())).unwrap();
        assert_eq!(
            r,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: 4\r\nConnection: close\r\n\r\nm 1\n"
        );
        let r = String::from_utf8(response(Request::NotFound, || unreachable!())).unwrap();
        assert!(r.starts_with("HTTP/1.0 404 Not Found\r\n"), "{r}");
    }
}
