//! The gateway's packet runtime: signals, the control socket, metrics and plans in one place,
//! packets in one or more workers ([`super::shard`]).
//!
//! Each worker drains each readiness event to `WouldBlock`, and each packet goes straight
//! through its engine and out again: no channel, no task hop, no lock, no allocation per
//! packet. With `workers = 1` the one worker runs on this thread in the same poll as everything
//! else. With more, each runs on its own thread with its own tenants and WAN socket (the kernel
//! steers datagrams to it, [`super::steer`]), and this thread keeps worker 0 besides the
//! coordination.
//!
//! Signals arrive through the poll: SIGHUP reloads (atomically: a refused plan changes nothing,
//! on any worker), SIGTERM and SIGINT stop; dropping the runtime stops the workers and closes
//! the TUN devices, which removes the interfaces.
//!
//! Besides packets, each worker keeps a one-second housekeeping tick (see [`super::heal`]: app
//! namespaces that went away and came back) and logs a drop summary of its tenants
//! ([`super::summary`]) instead of anything per packet; this thread serves the control socket
//! and, if configured, the metrics listener ([`super::metrics`]), both aggregated over the
//! workers.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use serde::{Deserialize, Serialize};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::os::unix::net::{UnixListener, UnixStream};

use super::metrics;
use super::shard::{Command, Identities, Mailbox, Reply, Shard, ShardStatus};
use super::tun::InterfaceSpec;
use super::{IoError, control, steer};
use crate::config::EngineConfig;
use crate::engine::{ApplyReport, Engine, EngineStats, Mac1Identity};

const SIGNALS: Token = Token(1);
const CONTROL: Token = Token(2);
const METRICS: Token = Token(3);
pub(crate) const TUN_BASE: usize = 1 << 20;
// Token ranges fit a 32-bit usize (armv7): ports below 1 << 26, control clients cycle through
// 1 << 26 ids, metrics clients through 1 << 20 above HTTP_BASE.
pub(crate) const CONN_BASE: usize = 1 << 26;
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
    /// How many worker threads carry packets.
    pub workers: Workers,
}

/// How many worker threads carry packets; each serves a disjoint set of tenants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Workers {
    /// One per online CPU, but no more than the tenants the gateway starts with (if it starts
    /// with none, as a controller-mode gateway may, one per CPU), and at most [`MAX_WORKERS`].
    #[default]
    Auto,
    /// Exactly this many (at least 1, at most [`MAX_WORKERS`]). 1 runs everything on one
    /// thread, as corridor did before it had workers.
    Count(u8),
}

/// The most workers a gateway runs.
pub const MAX_WORKERS: u8 = 64;

impl Workers {
    /// The number of workers for a gateway that starts with `tenants` tenants.
    pub fn resolve(self, tenants: usize) -> u8 {
        let n = match self {
            Workers::Count(n) => usize::from(n),
            Workers::Auto => {
                let cpus = std::thread::available_parallelism().map_or(1, usize::from);
                if tenants == 0 {
                    cpus
                } else {
                    cpus.min(tenants)
                }
            }
        };
        n.clamp(1, usize::from(MAX_WORKERS)) as u8
    }
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
    /// Datagrams received by one worker and handed to the worker that serves their tenant:
    /// handshake initiations (the kernel spreads them by hash), and segments of a UDP GRO
    /// batch that the kernel assembled from datagrams of several workers' sessions. Always 0
    /// with one worker.
    pub udp_rx_handed_over: u64,
    /// Datagrams that could not be handed over: the other worker already had 16,384 waiting
    /// (a flood the kernel coalesced across workers), or it is gone.
    pub udp_rx_handover_failed: u64,
}

impl IoCounters {
    /// Adds another worker's counters.
    pub fn add(&mut self, o: &IoCounters) {
        self.udp_rx += o.udp_rx;
        self.udp_tx += o.udp_tx;
        self.udp_tx_dropped += o.udp_tx_dropped;
        self.udp_tx_errors += o.udp_tx_errors;
        self.tun_rx += o.tun_rx;
        self.tun_tx += o.tun_tx;
        self.tun_tx_errors += o.tun_tx_errors;
        self.interface_errors += o.interface_errors;
        self.tun_tx_no_interface += o.tun_tx_no_interface;
        self.udp_rx_handed_over += o.udp_rx_handed_over;
        self.udp_rx_handover_failed += o.udp_rx_handover_failed;
    }
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
    /// The worker threads: which tenants each serves and its own I/O counters (their sum is
    /// `io`). One entry with one worker.
    #[serde(default)]
    pub workers: Vec<WorkerStatus>,
}

/// One worker thread, for status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct WorkerStatus {
    /// Its number (0 runs on the main thread).
    pub worker: u8,
    /// The tenants it serves.
    pub tenants: Vec<String>,
    /// Its I/O counters.
    pub io: IoCounters,
    /// False if it did not answer in time (its counters are then missing from the totals).
    pub answered: bool,
}

/// A worker on a thread of its own: how to reach it, and where its answers come.
#[derive(Debug)]
struct Worker {
    mailbox: Mailbox,
    replies: Receiver<Reply>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long a worker may take to prepare or apply its share of a plan (creating interfaces
/// runs `ip` in the apps' namespaces), and to answer a status request.
const APPLY_WAIT: Duration = Duration::from_secs(60);
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// A running gateway.
pub struct Runtime {
    cfg: RuntimeConfig,
    /// Worker 0: on this thread, in this poll.
    shard: Shard,
    /// Workers 1 and up.
    others: Vec<Worker>,
    /// Which worker serves which tenant: kept across reloads (so that no session moves), a
    /// new tenant goes to the worker with the fewest.
    assignment: HashMap<String, u8>,
    /// The tenants in the order of the last plan (status lists them so).
    order: Vec<String>,
    control: Option<UnixListener>,
    conns: HashMap<usize, (UnixStream, Vec<u8>)>,
    next_conn: usize,
    signals: Signals,
    waker: Arc<mio::Waker>,
    controller: Option<ControllerStatus>,
    started: Instant,
    reloads: u64,
    reload_failures: u64,
    last_reload_error: Option<String>,
    configs_applied: u64,
    metrics: Option<metrics::Server>,
    next_housekeeping: Instant,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("gateway", &self.cfg.gateway)
            .field("listen", &self.cfg.listen)
            .field("workers", &(self.others.len() + 1))
            .finish_non_exhaustive()
    }
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> IoError {
    move |source| IoError::Os { what, source }
}

fn gone(what: &'static str, worker: usize) -> IoError {
    IoError::Os {
        what,
        source: std::io::Error::other(format!("worker {worker} did not answer")),
    }
}

impl Runtime {
    /// Binds the WAN socket (with several workers, one per worker in a steered reuseport
    /// group), starts the workers, creates every interface and applies the configuration: all
    /// of it or, on error, none of it (what was created is removed again).
    pub fn start(cfg: RuntimeConfig, plan: GatewayPlan) -> Result<Self, IoError> {
        let workers = cfg.workers.resolve(plan.engine.tenants.len());
        let sockets = if workers == 1 {
            vec![UdpSocket::bind(cfg.listen).map_err(|source| IoError::Bind {
                addr: cfg.listen,
                source,
            })?]
        } else {
            steer::bind_group(cfg.listen, workers)?
        };
        let mut shards = Vec::with_capacity(sockets.len());
        let mut mailboxes = Vec::with_capacity(sockets.len());
        for (id, socket) in sockets.into_iter().enumerate() {
            let (shard, mailbox) = Shard::new(id as u8, workers, socket, cfg.missing_netns)?;
            shards.push(shard);
            mailboxes.push(mailbox);
        }
        for shard in &mut shards {
            shard.connect(mailboxes.clone());
        }
        let mut shards = shards.into_iter();
        let Some(shard) = shards.next() else {
            return Err(gone("starting the workers", 0));
        };
        let mut others = Vec::new();
        for (worker, mailbox) in shards.zip(mailboxes.into_iter().skip(1)) {
            let (tx, replies) = std::sync::mpsc::channel();
            let thread = worker.spawn(tx)?;
            others.push(Worker {
                mailbox,
                replies,
                thread: Some(thread),
            });
        }
        let poll = &shard.poll;
        let mut signals =
            Signals::new([SIGHUP, SIGINT, SIGTERM]).map_err(os("installing signal handlers"))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(os("registering signals"))?;
        let waker = Arc::new(
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
            shard,
            others,
            assignment: HashMap::new(),
            order: Vec::new(),
            control,
            conns: HashMap::new(),
            next_conn: 0,
            signals,
            waker,
            controller: None,
            started: now,
            reloads: 0,
            reload_failures: 0,
            last_reload_error: None,
            configs_applied: 0,
            metrics,
            next_housekeeping: now + super::heal::CHECK_EVERY,
        };
        if workers > 1 {
            tracing::info!(
                workers,
                "packet workers: one thread and one WAN socket each"
            );
        }
        rt.apply(plan)?;
        let interface_errors = rt.status().io.interface_errors;
        if interface_errors > 0 {
            return Err(IoError::Os {
                what: "creating the app interfaces",
                source: std::io::Error::other("see the errors above"),
            });
        }
        rt.shard.flush();
        Ok(rt)
    }

    /// The WAN socket's local address (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, IoError> {
        self.shard
            .wan
            .socket()
            .local_addr()
            .map_err(os("reading the WAN address"))
    }

    /// The metrics listener's address, if metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(metrics::Server::local_addr)
    }

    /// Wakes the event loop from another thread: it then asks its [`PlanSource`] for a plan.
    pub fn waker(&self) -> Arc<mio::Waker> {
        self.waker.clone()
    }

    /// How many workers carry packets.
    pub fn workers(&self) -> usize {
        self.others.len() + 1
    }

    /// The status report, over all workers.
    pub fn status(&self) -> StatusReport {
        for w in &self.others {
            // A stale answer (of a request that timed out) must not pass for this one.
            while w.replies.try_recv().is_ok() {}
            w.mailbox.send(Command::Status);
        }
        let mut parts: Vec<(u8, Option<ShardStatus>)> = vec![(0, Some(self.shard.status()))];
        let deadline = Instant::now() + STATUS_WAIT;
        for (i, w) in self.others.iter().enumerate() {
            let wait = deadline.saturating_duration_since(Instant::now());
            let part = match w.replies.recv_timeout(wait) {
                Ok(Reply::Status(s)) => Some(*s),
                _ => {
                    tracing::warn!(worker = i + 1, "a worker did not answer the status request");
                    None
                }
            };
            parts.push(((i + 1) as u8, part));
        }
        let mut interfaces = Vec::new();
        let mut tenants = Vec::new();
        let mut unattributed = crate::engine::Drops::default();
        let mut io = IoCounters::default();
        let mut workers = Vec::with_capacity(parts.len());
        for (worker, part) in parts {
            let Some(part) = part else {
                workers.push(WorkerStatus {
                    worker,
                    ..WorkerStatus::default()
                });
                continue;
            };
            io.add(&part.io);
            unattributed.add(&part.engine.unattributed);
            let mut names: Vec<String> =
                part.engine.tenants.iter().map(|t| t.name.clone()).collect();
            names.sort_by_key(|n| self.position(n));
            workers.push(WorkerStatus {
                worker,
                tenants: names,
                io: part.io,
                answered: true,
            });
            interfaces.extend(part.interfaces);
            tenants.extend(part.engine.tenants);
        }
        tenants.sort_by_key(|t| self.position(&t.name));
        interfaces.sort_by(|a, b| (&a.tenant, &a.endpoint).cmp(&(&b.tenant, &b.endpoint)));
        StatusReport {
            gateway: self.cfg.gateway.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            listen: self.cfg.listen,
            interfaces,
            engine: EngineStats {
                tenants,
                unattributed,
            },
            io,
            reloads: self.reloads,
            reload_failures: self.reload_failures,
            last_reload_error: self.last_reload_error.clone(),
            configs_applied: self.configs_applied,
            controller: self.controller.clone(),
            workers,
        }
    }

    fn position(&self, tenant: &str) -> usize {
        self.order
            .iter()
            .position(|t| t == tenant)
            .unwrap_or(usize::MAX)
    }

    /// Runs until SIGTERM or SIGINT. On SIGHUP and on each wakeup, `source` may give a new
    /// plan; an error (or a plan the engine refuses) is logged and the running configuration
    /// stays.
    pub fn run(&mut self, source: &mut dyn PlanSource) -> Result<(), IoError> {
        let mut events = Events::with_capacity(256);
        self.controller = source.controller_status();
        loop {
            let now = Instant::now();
            let wake = self.shard.next_wake().min(self.next_housekeeping);
            let timeout = Some(wake.saturating_duration_since(now));
            if let Err(e) = self.shard.poll.poll(&mut events, timeout) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(os("waiting for events")(e));
            }
            for event in events.iter() {
                let token = event.token();
                if self.shard.event(token) {
                    continue;
                }
                match token {
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
                            server.accept(self.shard.poll.registry(), Instant::now());
                        }
                    }
                    Token(t) if t >= HTTP_BASE => self.serve_metrics(Token(t)),
                    Token(t) if t >= CONN_BASE => self.serve(t - CONN_BASE),
                    Token(_) => {}
                }
            }
            let now = Instant::now();
            if now >= self.next_housekeeping {
                self.next_housekeeping = now + super::heal::CHECK_EVERY;
                if let Some(server) = self.metrics.as_mut() {
                    server.sweep(now, self.shard.poll.registry());
                }
                self.controller = source.controller_status();
            }
            self.shard.tick(now);
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
        self.shard.flush();
    }

    /// Applies a plan on every worker, atomically from the outside: the whole engine
    /// configuration is checked first ([`Engine::check`]; each worker's share, a subset, then
    /// passes too), every worker prepares its share (creates its new interfaces; any failure
    /// aborts them all, removing what was created), and only then do all commit. Each tenant
    /// stays with the worker that served it, so a reload moves no session; a new tenant goes
    /// to the worker serving the fewest.
    fn apply(&mut self, plan: GatewayPlan) -> Result<ApplyReport, IoError> {
        let order: Vec<String> = plan.engine.tenants.iter().map(|t| t.name.clone()).collect();
        if self.others.is_empty() {
            let report = self.shard.apply(plan)?;
            self.order = order;
            self.configs_applied += 1;
            return Ok(report);
        }
        Engine::check(&plan.engine)?;
        let n = self.workers();
        let mut next: HashMap<String, u8> = HashMap::new();
        let mut load = vec![0usize; n];
        for t in &plan.engine.tenants {
            if let Some(&w) = self.assignment.get(&t.name)
                && usize::from(w) < n
            {
                next.insert(t.name.clone(), w);
                load[usize::from(w)] += 1;
            }
        }
        for t in &plan.engine.tenants {
            if next.contains_key(&t.name) {
                continue;
            }
            let (w, _) = load
                .iter()
                .enumerate()
                .min_by_key(|(w, l)| (**l, *w))
                .unwrap_or((0, &0));
            load[w] += 1;
            next.insert(t.name.clone(), w as u8);
        }
        let worker_of = |tenant: &str| next.get(tenant).copied().unwrap_or(0);
        let identities: Identities = Arc::new(
            plan.engine
                .tenants
                .iter()
                .map(|t| (Mac1Identity::of(&t.private_key), worker_of(&t.name)))
                .collect(),
        );
        let mut shares: Vec<GatewayPlan> = (0..n)
            .map(|_| GatewayPlan {
                engine: EngineConfig::default(),
                interfaces: Vec::new(),
            })
            .collect();
        for t in plan.engine.tenants {
            let w = usize::from(worker_of(&t.name));
            shares[w].engine.tenants.push(t);
        }
        for i in plan.interfaces {
            let w = usize::from(worker_of(&i.tenant));
            shares[w].interfaces.push(i);
        }

        // Phase 1: every worker prepares its share.
        let mut shares = shares.into_iter();
        let own = shares.next().unwrap_or(GatewayPlan {
            engine: EngineConfig::default(),
            interfaces: Vec::new(),
        });
        for (w, share) in self.others.iter().zip(shares) {
            while w.replies.try_recv().is_ok() {}
            w.mailbox.send(Command::Prepare(Box::new(share)));
        }
        let mine = self.shard.prepare(own);
        let mut refusal = mine.as_ref().err().map(ToString::to_string);
        let mut first_error = None;
        for (i, w) in self.others.iter().enumerate() {
            let result = match w.replies.recv_timeout(APPLY_WAIT) {
                Ok(Reply::Prepared(r)) => r,
                Ok(_) | Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    Err(gone("preparing a plan", i + 1))
                }
            };
            if let Err(e) = result
                && first_error.is_none()
            {
                refusal.get_or_insert_with(|| e.to_string());
                first_error = Some(e);
            }
        }
        let mine = match (mine, first_error) {
            (Err(e), _) | (Ok(_), Some(e)) => {
                for w in &self.others {
                    w.mailbox.send(Command::Abort);
                }
                tracing::debug!(
                    refusal = refusal.as_deref().unwrap_or(""),
                    "a worker refused its share: nothing applied"
                );
                return Err(e);
            }
            (Ok(p), None) => p,
        };

        // Phase 2: all commit. The engine configuration was checked as a whole, so no worker
        // refuses now; if one did, the plan would be half applied, and the log says so.
        for w in &self.others {
            w.mailbox.send(Command::Commit(identities.clone()));
        }
        let mut total = ApplyReport::default();
        let mut failed: Option<IoError> = None;
        let mut merge = |r: Result<ApplyReport, IoError>, worker: usize| match r {
            Ok(r) => {
                total.sessions_kept += r.sessions_kept;
                total.sessions_new += r.sessions_new;
                total.sessions_dropped += r.sessions_dropped;
                total.sessions_retiring += r.sessions_retiring;
                total.ports_added.extend(r.ports_added);
                total.ports_removed.extend(r.ports_removed);
            }
            Err(e) => {
                tracing::error!(
                    worker,
                    "a worker refused a plan that was checked as a whole: the plan is only partly applied; {e}"
                );
                failed.get_or_insert(e);
            }
        };
        merge(self.shard.commit(mine, identities), 0);
        for (i, w) in self.others.iter().enumerate() {
            let r = match w.replies.recv_timeout(APPLY_WAIT) {
                Ok(Reply::Committed(r)) => r,
                _ => Err(gone("applying a plan", i + 1)),
            };
            merge(r, i + 1);
        }
        self.assignment = next;
        self.order = order;
        self.configs_applied += 1;
        match failed {
            Some(e) => Err(e),
            None => Ok(total),
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
        let metrics::Progress::Asked(request) = server.ready(id, self.shard.poll.registry()) else {
            return;
        };
        let answer = metrics::response(request, || metrics::render(&self.status()));
        if let Some(server) = self.metrics.as_mut() {
            server.answer(id, answer, self.shard.poll.registry());
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
                            .shard
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
            .shard
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
    /// Stops the workers and waits for them: each removes its interfaces as it ends.
    fn drop(&mut self) {
        for w in &self.others {
            w.mailbox.send(Command::Stop);
        }
        for w in &mut self.others {
            if let Some(thread) = w.thread.take()
                && thread.join().is_err()
            {
                tracing::error!("a worker thread panicked");
            }
        }
        if let Some(path) = &self.cfg.control_socket {
            let _ = std::fs::remove_file(path);
        }
    }
}
