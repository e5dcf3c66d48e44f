//! The gateway's event loop: one thread, one poll, every TUN device and the WAN socket in it.
//!
//! Each readiness event is drained to `WouldBlock`, each packet goes straight through the engine
//! and out again: no channel, no task hop, no allocation per packet. Signals arrive through the
//! same poll: SIGHUP reloads (atomically: a refused plan changes nothing), SIGTERM and SIGINT
//! stop; dropping the runtime closes the TUN devices, which removes the interfaces.
//!
//! Besides packets, the loop keeps a one-second housekeeping tick (see [`super::heal`]: app
//! namespaces that went away and came back), serves the control socket and, if configured, the
//! metrics listener ([`super::metrics`]), and logs a drop summary ([`super::summary`]) instead
//! of anything per packet.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use serde::{Deserialize, Serialize};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::os::unix::net::{UnixListener, UnixStream};
use tun_rs::{IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};

use super::heal::{self, Probe, Watch};
use super::metrics;
use super::netns::NetnsId;
use super::summary::{DropSummary, SUMMARY_EVERY};
use super::tun::{self, InterfaceSpec};
use super::wan::{Sent, TxBatch, Wan};
use super::{IoError, control};
use crate::config::EngineConfig;
use crate::engine::{
    AppOutcome, ApplyReport, Engine, EngineStats, MAX_PACKET, OVERHEAD, PortId, WanOutcome,
};

const UDP: Token = Token(0);
const SIGNALS: Token = Token(1);
const CONTROL: Token = Token(2);
const METRICS: Token = Token(3);
const TUN_BASE: usize = 1 << 20;
// Token ranges fit a 32-bit usize (armv7): ports below 1 << 26, control clients cycle through
// 1 << 26 ids, metrics clients through 1 << 20 above HTTP_BASE.
const CONN_BASE: usize = 1 << 26;
const HTTP_BASE: usize = 1 << 27;
const WAKE: Token = Token(4);

/// Where the running gateway's plans come from: the policy directory (standalone, re-read on
/// SIGHUP) or the controller agent (bundles arrive on another thread, which wakes the loop
/// through [`Runtime::waker`]). The loop asks for a plan on SIGHUP and on each wakeup, and
/// reports whether the engine took it, so that the source keeps only what was applied.
pub trait PlanSource {
    /// A new plan to apply, if there is one. `hup`: asked because of SIGHUP (standalone
    /// sources re-read their files; others may re-apply what they have).
    fn next_plan(&mut self, hup: bool) -> Option<Result<GatewayPlan, String>>;
    /// What became of the last plan `next_plan` gave: applied, or refused and why.
    fn applied(&mut self, outcome: Result<(), String>);
    /// The controller's part of `corridor status`, if plans come from a controller.
    fn controller_status(&self) -> Option<ControllerStatus> {
        None
    }
}

/// A [`PlanSource`] from a closure called on SIGHUP (standalone mode).
impl<F: FnMut() -> Result<GatewayPlan, String>> PlanSource for F {
    fn next_plan(&mut self, hup: bool) -> Option<Result<GatewayPlan, String>> {
        hup.then(self)
    }
    fn applied(&mut self, _outcome: Result<(), String>) {}
}

/// The control channel as `corridor status` shows it (filled by the controller agent).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ControllerStatus {
    /// The controller URL of the last successful contact.
    pub url: Option<String>,
    /// Whether the agent is connected (its last request succeeded).
    pub connected: bool,
    /// Seconds since the last successful contact.
    pub last_contact_secs: Option<u64>,
    /// Version of the bundle applied.
    pub bundle_version: Option<u64>,
    /// Bundles applied (from the controller, or from disk at start).
    pub bundles_applied: u64,
    /// Bundles refused, per reason (`bad_signature`, `wrong_signer`, `replay`, `unsealable`,
    /// `malformed`, `wrong_gateway`, `unverifiable`, `apply_failed`).
    pub bundles_refused: std::collections::BTreeMap<String, u64>,
    /// Key rotations carried out.
    pub rotations: u64,
    /// The last error (contacting the controller, or a refused bundle).
    pub last_error: Option<String>,
}

/// What to do at start (and on reload) about an app whose namespace does not exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MissingNetns {
    /// Refuse: the gateway does not start (a reload is refused).
    #[default]
    Fail,
    /// Go on without that app's interface, and create it when the namespace appears.
    Wait,
}

/// Where the gateway listens and answers.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The gateway's name (for status).
    pub gateway: String,
    /// The WAN socket's address: one UDP port for every tenant.
    pub listen: SocketAddr,
    /// The local control socket (`corridor status`), if any.
    pub control_socket: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere. Keep it on loopback.
    pub metrics: Option<SocketAddr>,
    /// An app whose namespace is missing at start or reload: refuse, or wait for it.
    pub missing_netns: MissingNetns,
}

/// What the gateway runs: the engine's configuration and the interfaces of local endpoints.
#[derive(Debug, Clone)]
pub struct GatewayPlan {
    /// The engine's configuration.
    pub engine: EngineConfig,
    /// One interface per local endpoint.
    pub interfaces: Vec<InterfaceSpec>,
}

/// I/O-level counters (the engine counts everything else).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct IoCounters {
    /// Datagrams received on the WAN socket.
    pub udp_rx: u64,
    /// Datagrams sent on the WAN socket.
    pub udp_tx: u64,
    /// Datagrams not sent: socket buffer full.
    pub udp_tx_dropped: u64,
    /// Datagrams not sent: other errors (unreachable, ...).
    pub udp_tx_errors: u64,
    /// Packets read from app interfaces.
    pub tun_rx: u64,
    /// Packets written to app interfaces.
    pub tun_tx: u64,
    /// Packets not written to an app interface that exists (full, down).
    pub tun_tx_errors: u64,
    /// Failed attempts to create an interface (after a reload, or when its namespace came
    /// back).
    pub interface_errors: u64,
    /// Packets for an app whose interface is missing (its namespace went away): the engine
    /// delivered them, there was nowhere to write them. Per interface in
    /// [`InterfaceStatus::missing_drops`].
    pub tun_tx_no_interface: u64,
}

/// Whether an app's interface is there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceState {
    /// It exists in the app's namespace.
    #[default]
    Up,
    /// Its namespace is gone (or not there yet), or it could not be created: see `problem`.
    Missing,
}

/// One app interface, for status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct InterfaceStatus {
    /// Tenant.
    pub tenant: String,
    /// Endpoint.
    pub endpoint: String,
    /// Namespace.
    pub netns: String,
    /// Interface name in that namespace.
    pub ifname: String,
    /// Up or missing.
    pub state: InterfaceState,
    /// Seconds it has been missing.
    pub missing_secs: Option<u64>,
    /// Why it is missing (or why re-creating it failed last).
    pub problem: Option<String>,
    /// Times it was lost: its namespace went away or was replaced, or the device failed.
    pub netns_losses: u64,
    /// Times it was created again after a loss, or late after waiting for its namespace.
    pub recoveries: u64,
    /// Packets for this app dropped while its interface was missing.
    pub missing_drops: u64,
}

/// What `corridor status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// Gateway name.
    pub gateway: String,
    /// corridor's version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// WAN socket.
    pub listen: SocketAddr,
    /// App interfaces.
    pub interfaces: Vec<InterfaceStatus>,
    /// Engine counters.
    pub engine: EngineStats,
    /// I/O counters.
    pub io: IoCounters,
    /// Successful reloads.
    pub reloads: u64,
    /// Refused reloads.
    pub reload_failures: u64,
    /// Why the last reload was refused, if it was.
    pub last_reload_error: Option<String>,
    /// Configurations applied: the one at start, then each accepted reload.
    #[serde(default)]
    pub configs_applied: u64,
    /// The control channel, when the gateway is run by a controller.
    #[serde(default)]
    pub controller: Option<ControllerStatus>,
}

struct Iface {
    spec: InterfaceSpec,
    /// `None` while missing.
    device: Option<SyncDevice>,
    watch: Watch,
}

/// A running gateway.
pub struct Runtime {
    cfg: RuntimeConfig,
    engine: Engine,
    poll: Poll,
    wan: Wan,
    tx: TxBatch,
    ifaces: HashMap<PortId, Iface>,
    control: Option<UnixListener>,
    conns: HashMap<usize, (UnixStream, Vec<u8>)>,
    next_conn: usize,
    signals: Signals,
    waker: std::sync::Arc<mio::Waker>,
    controller: Option<ControllerStatus>,
    obuf: Vec<u8>,
    fast: FastBuffers,
    io: IoCounters,
    started: Instant,
    reloads: u64,
    reload_failures: u64,
    last_reload_error: Option<String>,
    configs_applied: u64,
    metrics: Option<metrics::Server>,
    nsfs_dev: Option<u64>,
    next_housekeeping: Instant,
    next_summary: Instant,
    summary: DropSummary,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("gateway", &self.cfg.gateway)
            .field("listen", &self.cfg.listen)
            .field("interfaces", &self.ifaces.len())
            .finish_non_exhaustive()
    }
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> IoError {
    move |source| IoError::Os { what, source }
}

impl Runtime {
    /// Binds the WAN socket, creates every interface and applies the configuration: all of it
    /// or, on error, none of it (what was created is removed again).
    pub fn start(cfg: RuntimeConfig, plan: GatewayPlan) -> Result<Self, IoError> {
        let std_udp = UdpSocket::bind(cfg.listen).map_err(|source| IoError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let wan = Wan::new(std_udp).map_err(os("setting up the WAN socket"))?;
        let tx = TxBatch::new(wan.max_gso_segments());
        let poll = Poll::new().map_err(os("creating the event loop"))?;
        poll.registry()
            .register(
                &mut SourceFd(&wan.socket().as_raw_fd()),
                UDP,
                Interest::READABLE,
            )
            .map_err(os("registering the WAN socket"))?;
        let mut signals =
            Signals::new([SIGHUP, SIGTERM, SIGINT]).map_err(os("installing signal handlers"))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(os("registering signals"))?;
        let waker = std::sync::Arc::new(
            mio::Waker::new(poll.registry(), WAKE).map_err(os("creating the loop's waker"))?,
        );
        let control = match &cfg.control_socket {
            Some(path) => {
                let l = control::bind(path)?;
                poll.registry()
                    .register(&mut SourceFd(&l.as_raw_fd()), CONTROL, Interest::READABLE)
                    .map_err(os("registering the control socket"))?;
                Some(l)
            }
            None => None,
        };
        let metrics = match cfg.metrics {
            Some(addr) => {
                if !addr.ip().is_loopback() {
                    tracing::warn!(
                        %addr,
                        "metrics are served on a non-loopback address without authentication: they name tenants and peers; prefer 127.0.0.1 and a local scraper or proxy"
                    );
                }
                Some(metrics::Server::bind(
                    addr,
                    poll.registry(),
                    METRICS,
                    HTTP_BASE,
                )?)
            }
            None => None,
        };
        let now = Instant::now();
        let mut rt = Runtime {
            cfg,
            engine: Engine::new(),
            poll,
            wan,
            tx,
            ifaces: HashMap::new(),
            control,
            conns: HashMap::new(),
            next_conn: 0,
            signals,
            waker,
            controller: None,
            obuf: vec![0; MAX_PACKET + OVERHEAD],
            fast: FastBuffers::new(),
            io: IoCounters::default(),
            started: now,
            reloads: 0,
            reload_failures: 0,
            last_reload_error: None,
            configs_applied: 0,
            metrics,
            nsfs_dev: heal::nsfs_dev(),
            next_housekeeping: now + heal::CHECK_EVERY,
            next_summary: now + SUMMARY_EVERY,
            summary: DropSummary::default(),
        };
        rt.apply(plan)?;
        if rt.io.interface_errors > 0 {
            return Err(IoError::Os {
                what: "creating the app interfaces",
                source: std::io::Error::other("see the errors above"),
            });
        }
        rt.flush();
        Ok(rt)
    }

    /// The WAN socket's local address (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, IoError> {
        self.wan
            .socket()
            .local_addr()
            .map_err(os("reading the WAN address"))
    }

    /// The metrics listener's address, if metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(metrics::Server::local_addr)
    }

    /// Wakes the event loop from another thread: it then asks its [`PlanSource`] for a plan.
    pub fn waker(&self) -> std::sync::Arc<mio::Waker> {
        self.waker.clone()
    }

    /// The status report.
    pub fn status(&self) -> StatusReport {
        let now = Instant::now();
        let mut interfaces: Vec<InterfaceStatus> = self
            .ifaces
            .values()
            .map(|i| InterfaceStatus {
                tenant: i.spec.tenant.clone(),
                endpoint: i.spec.endpoint.clone(),
                netns: i.spec.netns.clone(),
                ifname: i.spec.ifname.clone(),
                state: if i.device.is_some() {
                    InterfaceState::Up
                } else {
                    InterfaceState::Missing
                },
                missing_secs: i
                    .watch
                    .missing_since
                    .map(|t| now.saturating_duration_since(t).as_secs()),
                problem: i.watch.problem.clone(),
                netns_losses: i.watch.losses,
                recoveries: i.watch.recoveries,
                missing_drops: i.watch.dropped,
            })
            .collect();
        interfaces.sort_by(|a, b| (&a.tenant, &a.endpoint).cmp(&(&b.tenant, &b.endpoint)));
        StatusReport {
            gateway: self.cfg.gateway.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            listen: self.cfg.listen,
            interfaces,
            engine: self.engine.stats(),
            io: self.io,
            reloads: self.reloads,
            reload_failures: self.reload_failures,
            last_reload_error: self.last_reload_error.clone(),
            configs_applied: self.configs_applied,
            controller: self.controller.clone(),
        }
    }

    /// Runs until SIGTERM or SIGINT. On SIGHUP and on each wakeup, `source` may give a new
    /// plan; an error (or a plan the engine refuses) is logged and the running configuration
    /// stays.
    pub fn run(&mut self, source: &mut dyn PlanSource) -> Result<(), IoError> {
        let mut events = Events::with_capacity(256);
        self.controller = source.controller_status();
        loop {
            let now = Instant::now();
            let wake = self
                .engine
                .poll_timeout()
                .map_or(self.next_housekeeping, |t| t.min(self.next_housekeeping));
            let timeout = Some(wake.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(os("waiting for events")(e));
            }
            for event in events.iter() {
                match event.token() {
                    UDP => self.drain_udp(),
                    SIGNALS => {
                        let signals: Vec<i32> = self.signals.pending().collect();
                        for signal in signals {
                            if signal == SIGHUP {
                                self.reload(source, true);
                            } else {
                                tracing::info!(signal, "stopping: removing the app interfaces");
                                return Ok(());
                            }
                        }
                    }
                    CONTROL => self.accept(),
                    WAKE => self.reload(source, false),
                    METRICS => {
                        if let Some(server) = self.metrics.as_mut() {
                            server.accept(self.poll.registry(), Instant::now());
                        }
                    }
                    Token(t) if t >= HTTP_BASE => self.serve_metrics(Token(t)),
                    Token(t) if t >= CONN_BASE => self.serve(t - CONN_BASE),
                    Token(t) if t >= TUN_BASE => {
                        if let Ok(port) = u32::try_from(t - TUN_BASE) {
                            self.drain_tun(PortId(port));
                        }
                    }
                    Token(_) => {}
                }
            }
            let now = Instant::now();
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.engine.handle_timeout(now);
            }
            if now >= self.next_housekeeping {
                self.housekeeping(now);
                self.controller = source.controller_status();
            }
            self.flush();
        }
    }

    /// Once a second: namespaces that went away or came back, slow metrics clients, and now
    /// and then the drop summary.
    fn housekeeping(&mut self, now: Instant) {
        self.next_housekeeping = now + heal::CHECK_EVERY;
        self.heal(now);
        if let Some(server) = self.metrics.as_mut() {
            server.sweep(now, self.poll.registry());
        }
        if now >= self.next_summary {
            self.next_summary = now + SUMMARY_EVERY;
            let every = SUMMARY_EVERY.as_secs();
            for (tenant, drops) in self.summary.update(&self.engine.stats()) {
                match tenant {
                    Some(tenant) => {
                        tracing::info!(%tenant, %drops, "drops in the last {every}s");
                    }
                    None => tracing::info!(%drops, "drops of no tenant in the last {every}s"),
                }
            }
        }
    }

    /// Checks every app's namespace: an interface whose namespace went away (or was replaced)
    /// is dropped; a missing one is created when its namespace is there.
    fn heal(&mut self, now: Instant) {
        let ports: Vec<PortId> = self.ifaces.keys().copied().collect();
        for port in ports {
            let Some(iface) = self.ifaces.get(&port) else {
                continue;
            };
            let probe = heal::probe(&iface.spec.netns, self.nsfs_dev);
            if iface.device.is_some() {
                match &probe {
                    Probe::Present(id) if Some(*id) == iface.watch.id => continue,
                    Probe::Present(id) => {
                        let why = format!("the namespace was replaced by another ({id})");
                        self.lose(port, why, now);
                    }
                    Probe::Gone(why) => self.lose(port, why.clone(), now),
                }
            }
            let Some(iface) = self.ifaces.get(&port) else {
                continue;
            };
            if let Probe::Present(id) = probe
                && iface.watch.due(id, now)
                && heal::may_return(&iface.spec.netns)
            {
                self.recreate(port, id, now);
            }
        }
    }

    /// The interface of `port` is lost: its device is dropped (freeing what is left of the old
    /// namespace), logged once.
    fn lose(&mut self, port: PortId, why: String, now: Instant) {
        let Some(iface) = self.ifaces.get_mut(&port) else {
            return;
        };
        let Some(device) = iface.device.take() else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&raw_fd(&device)));
        drop(device);
        let then = if heal::may_return(&iface.spec.netns) {
            "it is created again when the namespace is back"
        } else {
            "a process's namespace is not followed to another process: update the policy's netns and reload"
        };
        tracing::warn!(
            tenant = %iface.spec.tenant,
            endpoint = %iface.spec.endpoint,
            netns = %iface.spec.netns,
            ifname = %iface.spec.ifname,
            "interface lost: {why}; {then}"
        );
        iface.watch.lost(why, now);
    }

    /// Creates the missing interface of `port` in the namespace `id` that answers now.
    fn recreate(&mut self, port: PortId, id: NetnsId, now: Instant) {
        let Some(iface) = self.ifaces.get_mut(&port) else {
            return;
        };
        match tun::create(&iface.spec) {
            Ok((device, created_in)) => {
                let missing = iface.watch.recovered(created_in, now);
                iface.device = Some(device);
                tracing::info!(
                    tenant = %iface.spec.tenant,
                    endpoint = %iface.spec.endpoint,
                    netns = %iface.spec.netns,
                    "the namespace is there ({created_in}): interface created again after {:.1}s missing",
                    missing.as_secs_f64()
                );
                self.watch_device(port);
            }
            Err(e) => {
                self.io.interface_errors += 1;
                let why = format!("creating the interface failed: {e}");
                let (tenant, endpoint) = (iface.spec.tenant.clone(), iface.spec.endpoint.clone());
                if iface.watch.failed(id, why, now) {
                    tracing::error!(%tenant, %endpoint, "{e}; trying again later");
                } else {
                    tracing::debug!(%tenant, %endpoint, "{e}; trying again later");
                }
            }
        }
    }

    fn reload(&mut self, source: &mut dyn PlanSource, hup: bool) {
        if hup {
            tracing::info!("SIGHUP: reloading");
        }
        let Some(next) = source.next_plan(hup) else {
            self.controller = source.controller_status();
            return;
        };
        let result = next.and_then(|plan| self.apply(plan).map_err(|e| e.to_string()));
        source.applied(result.as_ref().map(|_| ()).map_err(Clone::clone));
        self.controller = source.controller_status();
        match result {
            Ok(report) => {
                self.reloads += 1;
                self.last_reload_error = None;
                tracing::info!(
                    kept = report.sessions_kept,
                    new = report.sessions_new,
                    dropped = report.sessions_dropped,
                    interfaces_added = report.ports_added.len(),
                    interfaces_removed = report.ports_removed.len(),
                    "reloaded"
                );
            }
            Err(e) => {
                self.reload_failures += 1;
                tracing::error!("reload refused, the running configuration stays: {e}");
                self.last_reload_error = Some(e);
            }
        }
        self.flush();
    }

    /// Applies a plan: new interfaces first (a failure aborts with nothing changed), then the
    /// engine (a refusal aborts and removes what was just created), then the interfaces that
    /// went away or changed. With `missing-netns = "wait"`, a new app whose namespace does not
    /// exist is no failure: it waits (see [`Runtime::heal`]).
    fn apply(&mut self, plan: GatewayPlan) -> Result<ApplyReport, IoError> {
        let now = Instant::now();
        let running: HashMap<(&str, &str), &InterfaceSpec> = self
            .ifaces
            .values()
            .map(|i| ((i.spec.tenant.as_str(), i.spec.endpoint.as_str()), &i.spec))
            .collect();
        let mut fresh = Vec::new();
        let mut changed = Vec::new();
        for spec in &plan.interfaces {
            match running.get(&(spec.tenant.as_str(), spec.endpoint.as_str())) {
                None => fresh.push(self.create_or_wait(spec, now)?),
                Some(old) if *old != spec => {
                    // A changed interface is rebuilt after the engine takes the plan; its new
                    // namespace must be there now, or the reload is refused with nothing
                    // changed (unless missing-netns = "wait").
                    if self.cfg.missing_netns != MissingNetns::Wait && old.netns != spec.netns {
                        drop(super::netns::open_netns(&spec.netns)?);
                    }
                    changed.push(spec.clone());
                }
                Some(_) => {}
            }
        }
        let report = self.engine.apply(&plan.engine, now)?;
        self.configs_applied += 1;
        for (port, tenant, endpoint) in &report.ports_removed {
            if let Some(iface) = self.ifaces.remove(port) {
                self.unwatch(iface);
                tracing::info!(%tenant, %endpoint, "interface removed");
            }
        }
        for spec in changed {
            let Some(port) = self.engine.port(&spec.tenant, &spec.endpoint) else {
                continue;
            };
            let counters = self.ifaces.remove(&port).map(|old| {
                let watch = old.watch.clone();
                self.unwatch(old);
                watch
            });
            let mut iface = match tun::create(&spec) {
                Ok((device, id)) => Iface {
                    spec,
                    device: Some(device),
                    watch: Watch::up(id, now),
                },
                Err(e) => {
                    self.io.interface_errors += 1;
                    tracing::error!(
                        tenant = %spec.tenant,
                        endpoint = %spec.endpoint,
                        "{e}; trying again when its namespace changes, or later"
                    );
                    let why = format!("creating the interface failed: {e}");
                    Iface {
                        spec,
                        device: None,
                        watch: Watch::missing(why, now),
                    }
                }
            };
            if let Some(old) = counters {
                iface.watch.carry(&old);
            }
            self.install(port, iface);
        }
        for iface in fresh {
            match self.engine.port(&iface.spec.tenant, &iface.spec.endpoint) {
                Some(port) => self.install(port, iface),
                None => tracing::warn!(
                    tenant = %iface.spec.tenant,
                    endpoint = %iface.spec.endpoint,
                    "an interface was planned for an endpoint the engine does not serve"
                ),
            }
        }
        for (port, tenant, endpoint) in self.engine.ports() {
            if !self.ifaces.contains_key(&port) {
                tracing::warn!(%tenant, %endpoint, "no interface for this endpoint");
            }
        }
        Ok(report)
    }

    /// Creates a new app's interface; with `missing-netns = "wait"`, a namespace that does not
    /// exist gives a missing interface instead of an error.
    fn create_or_wait(&self, spec: &InterfaceSpec, now: Instant) -> Result<Iface, IoError> {
        match tun::create(spec) {
            Ok((device, id)) => Ok(Iface {
                spec: spec.clone(),
                device: Some(device),
                watch: Watch::up(id, now),
            }),
            Err(IoError::Netns { path, source, .. })
                if self.cfg.missing_netns == MissingNetns::Wait
                    && source.kind() == std::io::ErrorKind::NotFound =>
            {
                let then = if heal::may_return(&spec.netns) {
                    "waiting for it (missing-netns = \"wait\")"
                } else {
                    "a process path is not waited for: update the policy's netns and reload"
                };
                tracing::warn!(
                    tenant = %spec.tenant,
                    endpoint = %spec.endpoint,
                    netns = %spec.netns,
                    "the app's namespace does not exist ({} is missing); {then}",
                    path.display()
                );
                Ok(Iface {
                    spec: spec.clone(),
                    device: None,
                    watch: Watch::missing(
                        format!("waiting for the namespace ({} is missing)", path.display()),
                        now,
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Stops watching an interface and drops it (which removes it from its namespace).
    fn unwatch(&mut self, iface: Iface) {
        if let Some(device) = &iface.device {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&raw_fd(device)));
        }
        drop(iface);
    }

    /// Takes an interface in (up or missing) and watches its device, if any.
    fn install(&mut self, port: PortId, iface: Iface) {
        if iface.device.is_some() {
            tracing::info!(
                tenant = %iface.spec.tenant,
                endpoint = %iface.spec.endpoint,
                netns = %iface.spec.netns,
                ifname = %iface.spec.ifname,
                "interface up"
            );
        }
        self.ifaces.insert(port, iface);
        self.watch_device(port);
    }

    /// Registers the device of `port` with the poll and reads what already waits.
    fn watch_device(&mut self, port: PortId) {
        let Some(iface) = self.ifaces.get_mut(&port) else {
            return;
        };
        let Some(device) = &iface.device else {
            return;
        };
        let token = Token(TUN_BASE + port.0 as usize);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&raw_fd(device)), token, Interest::READABLE)
        {
            self.io.interface_errors += 1;
            tracing::error!(ifname = %iface.spec.ifname, "cannot watch the interface: {e}");
            iface.device = None;
            iface
                .watch
                .lost(format!("cannot watch the interface: {e}"), Instant::now());
            return;
        }
        // Packets may already be waiting (edge-triggered readiness).
        self.drain_tun(port);
    }

    /// Reads everything the app's interface has: with offload, one read may be a 64 KB
    /// super-packet that arrives here split into MTU-sized packets. Each goes through the engine;
    /// the datagrams leave in GSO batches.
    fn drain_tun(&mut self, port: PortId) {
        while let Some(device) = self.ifaces.get(&port).and_then(|i| i.device.as_ref()) {
            let f = &mut self.fast;
            let n = match device.recv_multiple(&mut f.tun_raw, &mut f.tun_pkts, &mut f.tun_sizes, 0)
            {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The device is gone under us (deleted in its namespace): start over.
                    let why = format!("reading the interface failed: {e}");
                    self.lose(port, why, Instant::now());
                    break;
                }
            };
            let now = Instant::now();
            for i in 0..n {
                self.io.tun_rx += 1;
                let f = &self.fast;
                let len = f.tun_sizes[i].min(f.tun_pkts[i].len());
                match self.engine.handle_app_packet(
                    port,
                    &f.tun_pkts[i][..len],
                    now,
                    &mut self.obuf,
                ) {
                    AppOutcome::Send(t) | AppOutcome::Pending(Some(t)) => {
                        self.tx
                            .push(&self.wan, t.to, &self.obuf[..t.len], &mut self.fast.sent);
                    }
                    AppOutcome::Deliver { port, len } => {
                        let packet = &self.obuf[..len];
                        self.fast.queue_tun(port, packet);
                    }
                    AppOutcome::Pending(None) | AppOutcome::Drop(_) => {}
                }
            }
        }
        self.flush();
    }

    /// Reads everything the WAN socket has, in batches (recvmmsg, GRO); decrypted packets are
    /// written to the apps' interfaces in batches too (coalesced into super-packets).
    fn drain_udp(&mut self) {
        loop {
            let n = match self.wan.recv() {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // ICMP errors of earlier sends surface here (e.g. connection refused): go on.
                Err(_) => continue,
            };
            let now = Instant::now();
            for i in 0..n {
                let (from, datagrams) = self.wan.received(i);
                for datagram in datagrams {
                    self.io.udp_rx += 1;
                    let out = self.fast.take_buffer(datagram.len());
                    match self.engine.handle_wan_datagram(
                        from,
                        datagram,
                        now,
                        &mut out[VIRTIO_NET_HDR_LEN..],
                    ) {
                        WanOutcome::Deliver { port, len } => {
                            self.fast.keep_buffer(port, VIRTIO_NET_HDR_LEN + len);
                        }
                        WanOutcome::Reply(t) => {
                            let start = VIRTIO_NET_HDR_LEN;
                            let reply = &self.fast.current[start..start + t.len];
                            self.tx.push(&self.wan, t.to, reply, &mut self.fast.sent);
                        }
                        WanOutcome::Consumed | WanOutcome::Drop(_) => {}
                    }
                }
            }
            // Each batch leaves before the next is read (its writes coalesce together); the
            // event loop flushes once more after all events.
            self.flush();
        }
    }

    /// Sends what the engine queued, the pending GSO batch, and the pending interface writes.
    fn flush(&mut self) {
        while let Some(t) = self.engine.poll_transmit(&mut self.obuf) {
            self.tx
                .push(&self.wan, t.to, &self.obuf[..t.len], &mut self.fast.sent);
        }
        self.tx.flush(&self.wan, &mut self.fast.sent);
        let sent = std::mem::take(&mut self.fast.sent);
        self.io.udp_tx += sent.ok;
        self.io.udp_tx_dropped += sent.full;
        self.io.udp_tx_errors += sent.failed;
        let fast = &mut self.fast;
        for (port, bufs) in fast.tun_out.iter_mut() {
            if bufs.is_empty() {
                continue;
            }
            let count = bufs.len() as u64;
            match self.ifaces.get_mut(port) {
                Some(Iface {
                    device: Some(device),
                    ..
                }) => {
                    // Runs of one TCP flow go out as super-packets (one write, one pass
                    // through the app's TCP stack); everything else as it came.
                    super::gro::coalesce(bufs, &mut fast.write);
                    let mut failed = false;
                    for &i in &fast.write {
                        failed |= device.send(&bufs[i]).is_err();
                    }
                    if failed {
                        self.io.tun_tx_errors += count;
                    } else {
                        self.io.tun_tx += count;
                    }
                }
                // Its namespace went away: the port and the sessions stay, the packets cannot.
                Some(iface) => {
                    iface.watch.dropped += count;
                    self.io.tun_tx_no_interface += count;
                }
                None => self.io.tun_tx_no_interface += count,
            }
            for mut b in bufs.drain(..) {
                b.clear();
                fast.pool.push(b);
            }
        }
    }

    /// A metrics client is ready: read its request, or write (more of) its answer.
    fn serve_metrics(&mut self, token: Token) {
        let Some(server) = self.metrics.as_mut() else {
            return;
        };
        let Some(id) = server.client(token) else {
            return;
        };
        let metrics::Progress::Asked(request) = server.ready(id, self.poll.registry()) else {
            return;
        };
        let answer = metrics::response(request, || metrics::render(&self.status()));
        if let Some(server) = self.metrics.as_mut() {
            server.answer(id, answer, self.poll.registry());
        }
    }

    fn accept(&mut self) {
        let Some(listener) = &self.control else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let id = self.next_conn;
                    self.next_conn = (self.next_conn + 1) % (HTTP_BASE - CONN_BASE);
                    if stream.set_nonblocking(true).is_ok()
                        && self
                            .poll
                            .registry()
                            .register(
                                &mut SourceFd(&stream.as_raw_fd()),
                                Token(CONN_BASE + id),
                                Interest::READABLE,
                            )
                            .is_ok()
                    {
                        self.conns.insert(id, (stream, Vec::new()));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    fn serve(&mut self, id: usize) {
        use std::io::{Read, Write};
        let Some((stream, buf)) = self.conns.get_mut(&id) else {
            return;
        };
        let mut chunk = [0u8; 512];
        let done = loop {
            match stream.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.contains(&b'\n') || buf.len() > 4096 {
                        break true;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break true,
            }
        };
        if !done {
            return;
        }
        let Some((std_stream, buf)) = self.conns.remove(&id) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&std_stream.as_raw_fd()));
        if !control::authorized(&std_stream) {
            tracing::warn!("control socket: refused a client that is neither root nor us");
            return;
        }
        let line = String::from_utf8_lossy(&buf);
        let answer = match control::ControlRequest::parse(&line) {
            Some(control::ControlRequest::Status) => serde_json::to_string(&self.status())
                .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode the status: {e}\"}}")),
            None => "{\"error\":\"unknown request; try `status`\"}".to_owned(),
        };
        let mut s = std_stream;
        let _ = s.set_nonblocking(false);
        let _ = s.set_write_timeout(Some(std::time::Duration::from_secs(1)));
        let _ = s.write_all(answer.as_bytes());
        let _ = s.write_all(b"\n");
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(path) = &self.cfg.control_socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn raw_fd(device: &SyncDevice) -> std::os::fd::RawFd {
    device.as_raw_fd()
}

/// Reused buffers of the batched paths: nothing is allocated per packet once warm.
struct FastBuffers {
    /// One raw read from a TUN device (virtio header + up to 64 KB).
    tun_raw: Vec<u8>,
    /// The packets a raw read was split into.
    tun_pkts: Vec<Vec<u8>>,
    tun_sizes: Vec<usize>,
    /// Decrypted packets waiting to be written, per port (virtio header room in front).
    tun_out: Vec<(PortId, Vec<Vec<u8>>)>,
    /// The buffer being filled by the engine (not yet kept for a port).
    current: Vec<u8>,
    pool: Vec<Vec<u8>>,
    /// Which of a port's buffers to write after coalescing.
    write: Vec<usize>,
    sent: Sent,
}

/// Largest packet a TUN read yields after splitting: the interface MTU is at most 9000.
const TUN_PACKET: usize = 9216;

impl FastBuffers {
    fn new() -> Self {
        FastBuffers {
            tun_raw: vec![0; VIRTIO_NET_HDR_LEN + MAX_PACKET],
            tun_pkts: (0..IDEAL_BATCH_SIZE).map(|_| vec![0; TUN_PACKET]).collect(),
            tun_sizes: vec![0; IDEAL_BATCH_SIZE],
            tun_out: Vec::new(),
            current: Vec::new(),
            pool: Vec::new(),
            write: Vec::with_capacity(IDEAL_BATCH_SIZE),
            sent: Sent::default(),
        }
    }

    /// A zeroed buffer for the engine to write a packet of up to `len` bytes after the virtio
    /// header; it stays current until kept or replaced.
    fn take_buffer(&mut self, len: usize) -> &mut [u8] {
        let mut b = if self.current.capacity() > 0 {
            std::mem::take(&mut self.current)
        } else {
            self.pool.pop().unwrap_or_default()
        };
        b.clear();
        b.resize(VIRTIO_NET_HDR_LEN + len.max(crate::engine::MIN_OUT), 0);
        self.current = b;
        &mut self.current
    }

    /// Keeps the current buffer (its first `len` bytes) for writing to `port`.
    fn keep_buffer(&mut self, port: PortId, len: usize) {
        let mut b = std::mem::take(&mut self.current);
        b.truncate(len);
        self.out_for(port).push(b);
    }

    /// Queues a copy of `packet` for `port`.
    fn queue_tun(&mut self, port: PortId, packet: &[u8]) {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b.resize(VIRTIO_NET_HDR_LEN, 0);
        b.extend_from_slice(packet);
        self.out_for(port).push(b);
    }

    fn out_for(&mut self, port: PortId) -> &mut Vec<Vec<u8>> {
        let i = match self.tun_out.iter().position(|(p, _)| *p == port) {
            Some(i) => i,
            None => {
                self.tun_out
                    .push((port, Vec::with_capacity(IDEAL_BATCH_SIZE)));
                self.tun_out.len() - 1
            }
        };
        &mut self.tun_out[i].1
    }
}
