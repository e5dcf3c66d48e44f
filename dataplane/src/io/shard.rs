//! One worker of the gateway's packet runtime: a set of tenants with their app interfaces,
//! their engine (sessions, tables, connection tracking) and a WAN socket, driven by one poll.
//!
//! With one worker (the default on a one-core box, and `workers = 1`), the only shard runs on
//! the runtime's own thread and its socket is the gateway's WAN socket, exactly as before
//! sharding. With more, each shard runs on a thread of its own and owns a disjoint set of
//! tenants, so a flow, which belongs to one tenant, is only ever handled by one thread in
//! order. The WAN sockets form a reuseport group whose program ([`super::steer`]) has the
//! kernel hand each datagram to the socket of the worker whose engine allocated its receiver
//! index: data travels without any hop between threads.
//!
//! What may still arrive at the wrong worker goes to the right one through its inbox (a
//! channel and a waker), in batches: handshake initiations (they carry no index, the kernel
//! spreads them by hash; their tenant is found by mac1), and segments of a GRO super-datagram
//! that the kernel put together from datagrams of several workers' sessions (all GRO segments
//! are delivered to the socket chosen for the first one). The I/O counter `udp_rx_handed_over`
//! counts them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tun_rs::{IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};

use super::heal::{self, Probe, Watch};
use super::netns::NetnsId;
use super::runtime::{
    GatewayPlan, InterfaceState, InterfaceStatus, IoCounters, MissingNetns, TUN_BASE,
};
use super::summary::{DropSummary, SUMMARY_EVERY};
use super::tun::{self, InterfaceSpec};
use super::wan::{Sent, TxBatch, Wan};
use super::{IoError, steer};
use crate::engine::{
    AppOutcome, ApplyReport, Engine, EngineStats, MAX_PACKET, Mac1Identity, OVERHEAD, PortId,
    WanOutcome,
};

/// The shard's WAN socket.
pub(crate) const UDP: Token = Token(0);
/// The shard's inbox (commands, datagrams passed on by other workers).
pub(crate) const INBOX: Token = Token(5);

/// Which worker serves which tenant identity, for handshake initiations (they name no session,
/// only the tenant's identity by their mac1). Replaced as a whole with each plan.
pub(crate) type Identities = Arc<Vec<(Mac1Identity, u8)>>;

/// A datagram one worker received for another: where from, and its bytes.
pub(crate) type Passed = Vec<(SocketAddr, Vec<u8>)>;

/// What a worker is asked (by the runtime, or by another worker for [`Command::Datagrams`]).
#[derive(Debug)]
pub(crate) enum Command {
    /// Phase 1 of applying a plan: create this worker's new interfaces and check the namespaces
    /// of changed ones; answer [`Reply::Prepared`]. Nothing is applied yet.
    Prepare(Box<GatewayPlan>),
    /// Phase 2: apply what was prepared (the plan was checked as a whole beforehand, so the
    /// engine takes it); answer [`Reply::Committed`].
    Commit(Identities),
    /// Another worker refused its share: drop what was prepared (removing the new interfaces).
    Abort,
    /// Answer [`Reply::Status`].
    Status,
    /// Datagrams that arrived at another worker's socket.
    Datagrams(Passed),
    /// Stop: the thread ends and its interfaces are removed.
    Stop,
}

/// A worker's answer to the runtime.
#[derive(Debug)]
pub(crate) enum Reply {
    Prepared(Result<(), IoError>),
    Committed(Result<ApplyReport, IoError>),
    Status(Box<ShardStatus>),
}

/// One worker's part of the status report.
#[derive(Debug)]
pub(crate) struct ShardStatus {
    pub(crate) interfaces: Vec<InterfaceStatus>,
    pub(crate) engine: EngineStats,
    pub(crate) io: IoCounters,
}

/// Datagrams passed on to one worker and not yet taken by it, at most. Beyond this the sender
/// drops and counts (`udp_rx_handover_failed`): junk from the WAN that the kernel coalesced
/// across workers must not queue without bound while the owner is busy.
pub(crate) const HANDOVER_LIMIT: usize = 16_384;

/// How to reach a worker from another thread.
#[derive(Debug, Clone)]
pub(crate) struct Mailbox {
    pub(crate) commands: Sender<Command>,
    pub(crate) waker: Arc<Waker>,
    /// Datagrams in flight to this worker (see [`HANDOVER_LIMIT`]).
    pub(crate) in_flight: Arc<AtomicUsize>,
}

impl Mailbox {
    /// Sends and wakes; false if the worker is gone.
    pub(crate) fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok() && self.waker.wake().is_ok()
    }

    /// Passes datagrams on, unless that would queue more than [`HANDOVER_LIMIT`] for this
    /// worker; false if not sent (full, or the worker is gone).
    fn pass(&self, datagrams: Passed) -> bool {
        let n = datagrams.len();
        if self.in_flight.fetch_add(n, Ordering::Relaxed) + n > HANDOVER_LIMIT {
            self.in_flight.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        let sent = self.send(Command::Datagrams(datagrams));
        if !sent {
            self.in_flight.fetch_sub(n, Ordering::Relaxed);
        }
        sent
    }
}

pub(crate) struct Iface {
    pub(crate) spec: InterfaceSpec,
    /// `None` while missing.
    pub(crate) device: Option<SyncDevice>,
    pub(crate) watch: Watch,
}

/// What phase 1 of an apply made: the new interfaces, and the changed ones to rebuild.
pub(crate) struct Prepared {
    plan: GatewayPlan,
    fresh: Vec<Iface>,
    changed: Vec<InterfaceSpec>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("fresh", &self.fresh.len())
            .field("changed", &self.changed.len())
            .finish_non_exhaustive()
    }
}

/// One worker: its tenants' interfaces and engine, its WAN socket, its poll.
pub(crate) struct Shard {
    pub(crate) id: u8,
    pub(crate) workers: u8,
    pub(crate) engine: Engine,
    pub(crate) poll: Poll,
    pub(crate) wan: Wan,
    tx: TxBatch,
    pub(crate) ifaces: HashMap<PortId, Iface>,
    obuf: Vec<u8>,
    fast: FastBuffers,
    pub(crate) io: IoCounters,
    missing_netns: MissingNetns,
    nsfs_dev: Option<u64>,
    next_housekeeping: Instant,
    next_summary: Instant,
    summary: DropSummary,
    /// Which worker serves which tenant identity (only read with more than one worker).
    identities: Identities,
    inbox: Receiver<Command>,
    /// Datagrams passed to this worker and not yet taken (its [`Mailbox::in_flight`]).
    in_flight: Arc<AtomicUsize>,
    /// Every worker's mailbox, by worker number (this one's own included, unused).
    mailboxes: Vec<Mailbox>,
    /// Datagrams of this batch for other workers, by worker number.
    pass: Vec<Passed>,
    prepared: Option<Prepared>,
    /// Where answers to the runtime go (worker threads only).
    replies: Option<Sender<Reply>>,
    stop: bool,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("worker", &self.id)
            .field("workers", &self.workers)
            .field("interfaces", &self.ifaces.len())
            .finish_non_exhaustive()
    }
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> IoError {
    move |source| IoError::Os { what, source }
}

impl Shard {
    /// A worker around its (bound) WAN socket, serving nothing yet; returns it with the
    /// mailbox that reaches it.
    pub(crate) fn new(
        id: u8,
        workers: u8,
        socket: std::net::UdpSocket,
        missing_netns: MissingNetns,
    ) -> Result<(Self, Mailbox), IoError> {
        let wan = Wan::new(socket).map_err(os("setting up the WAN socket"))?;
        let tx = TxBatch::new(wan.max_gso_segments());
        let poll = Poll::new().map_err(os("creating the event loop"))?;
        poll.registry()
            .register(
                &mut SourceFd(&wan.socket().as_raw_fd()),
                UDP,
                Interest::READABLE,
            )
            .map_err(os("registering the WAN socket"))?;
        let waker =
            Arc::new(Waker::new(poll.registry(), INBOX).map_err(os("creating a worker's waker"))?);
        let (commands, inbox) = std::sync::mpsc::channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let shard = crate::engine::IndexShard::new(id, workers).ok_or(IoError::Os {
            what: "numbering the workers",
            source: std::io::Error::other(format!("worker {id} of {workers}")),
        })?;
        let now = Instant::now();
        let this = Shard {
            id,
            workers,
            engine: Engine::with_shard(shard),
            poll,
            wan,
            tx,
            ifaces: HashMap::new(),
            obuf: vec![0; MAX_PACKET + OVERHEAD],
            fast: FastBuffers::new(),
            io: IoCounters::default(),
            missing_netns,
            nsfs_dev: heal::nsfs_dev(),
            next_housekeeping: now + heal::CHECK_EVERY,
            next_summary: now + SUMMARY_EVERY,
            summary: DropSummary::default(),
            identities: Arc::default(),
            inbox,
            in_flight: Arc::clone(&in_flight),
            mailboxes: Vec::new(),
            pass: (0..workers).map(|_| Vec::new()).collect(),
            prepared: None,
            replies: None,
            stop: false,
        };
        Ok((
            this,
            Mailbox {
                commands,
                waker,
                in_flight,
            },
        ))
    }

    /// Every worker's mailbox, so that this one can pass datagrams on.
    pub(crate) fn connect(&mut self, mailboxes: Vec<Mailbox>) {
        self.mailboxes = mailboxes;
    }

    /// Runs this worker on its own thread until [`Command::Stop`] (or until the runtime is
    /// gone); its interfaces go with it.
    pub(crate) fn spawn(
        mut self,
        replies: Sender<Reply>,
    ) -> Result<std::thread::JoinHandle<()>, IoError> {
        self.replies = Some(replies);
        std::thread::Builder::new()
            .name(format!("corridor-w{}", self.id))
            .spawn(move || self.run())
            .map_err(os("starting a worker thread"))
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        tracing::debug!(worker = self.id, "worker running");
        while !self.stop {
            let now = Instant::now();
            let timeout = Some(self.next_wake().saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.id, "waiting for events failed: {e}; stopping");
                break;
            }
            for event in events.iter() {
                self.event(event.token());
            }
            self.tick(Instant::now());
        }
        tracing::debug!(worker = self.id, "worker stopped");
    }

    /// When [`Shard::tick`] wants to run next.
    pub(crate) fn next_wake(&self) -> Instant {
        self.engine
            .poll_timeout()
            .map_or(self.next_housekeeping, |t| t.min(self.next_housekeeping))
    }

    /// Handles a readiness event of this shard's sources; false if the token is not one.
    pub(crate) fn event(&mut self, token: Token) -> bool {
        match token {
            UDP => self.drain_udp(),
            INBOX => self.drain_inbox(),
            Token(t) if (TUN_BASE..super::runtime::CONN_BASE).contains(&t) => {
                if let Ok(port) = u32::try_from(t - TUN_BASE) {
                    self.drain_tun(PortId(port));
                }
            }
            Token(_) => return false,
        }
        true
    }

    /// After each round of events: the engine's timers, housekeeping once a second, and what
    /// is left to send.
    pub(crate) fn tick(&mut self, now: Instant) {
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
        }
        if now >= self.next_housekeeping {
            self.housekeeping(now);
        }
        self.flush();
    }

    /// Once a second: namespaces that went away or came back, and now and then the drop
    /// summary of this worker's tenants.
    fn housekeeping(&mut self, now: Instant) {
        self.next_housekeeping = now + heal::CHECK_EVERY;
        self.heal(now);
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

    /// This worker's part of the status.
    pub(crate) fn status(&self) -> ShardStatus {
        let now = Instant::now();
        let interfaces = self
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
        ShardStatus {
            interfaces,
            engine: self.engine.stats(),
            io: self.io,
        }
    }

    /// Commands and passed datagrams.
    fn drain_inbox(&mut self) {
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                Command::Datagrams(datagrams) => {
                    self.in_flight.fetch_sub(datagrams.len(), Ordering::Relaxed);
                    let now = Instant::now();
                    for (from, datagram) in &datagrams {
                        through_engine(
                            &mut self.engine,
                            &mut self.fast,
                            &mut self.tx,
                            &self.wan,
                            *from,
                            datagram,
                            now,
                        );
                    }
                    self.flush();
                }
                Command::Prepare(plan) => {
                    let result = self.prepare(*plan).map(|p| {
                        self.prepared = Some(p);
                    });
                    self.reply(Reply::Prepared(result));
                }
                Command::Commit(identities) => {
                    let result = match self.prepared.take() {
                        Some(p) => self.commit(p, identities),
                        None => Err(IoError::Os {
                            what: "applying a plan",
                            source: std::io::Error::other("nothing was prepared"),
                        }),
                    };
                    self.flush();
                    self.reply(Reply::Committed(result));
                }
                Command::Abort => self.prepared = None,
                Command::Status => self.reply(Reply::Status(Box::new(self.status()))),
                Command::Stop => self.stop = true,
            }
        }
    }

    fn reply(&self, reply: Reply) {
        if let Some(r) = &self.replies {
            let _ = r.send(reply);
        }
    }

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

    /// Applies a plan: [`Shard::prepare`], then [`Shard::commit`]. All of it or, on error,
    /// nothing.
    pub(crate) fn apply(&mut self, plan: GatewayPlan) -> Result<ApplyReport, IoError> {
        let prepared = self.prepare(plan)?;
        let identities = self.identities.clone();
        self.commit(prepared, identities)
    }

    /// Phase 1 of applying a plan: new interfaces first (a failure aborts with nothing
    /// changed: what was created is dropped with the error), and the namespaces of changed
    /// ones must be there. With `missing-netns = "wait"`, a new app whose namespace does not
    /// exist is no failure: it waits (see [`Shard::heal`]).
    pub(crate) fn prepare(&mut self, plan: GatewayPlan) -> Result<Prepared, IoError> {
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
                    if self.missing_netns != MissingNetns::Wait && old.netns != spec.netns {
                        drop(super::netns::open_netns(&spec.netns)?);
                    }
                    changed.push(spec.clone());
                }
                Some(_) => {}
            }
        }
        Ok(Prepared {
            plan,
            fresh,
            changed,
        })
    }

    /// Phase 2: the engine (a refusal aborts, and dropping `prepared` removes the interfaces
    /// it created), then the interfaces that went away or changed.
    pub(crate) fn commit(
        &mut self,
        prepared: Prepared,
        identities: Identities,
    ) -> Result<ApplyReport, IoError> {
        let now = Instant::now();
        let Prepared {
            plan,
            fresh,
            changed,
        } = prepared;
        let report = self.engine.apply(&plan.engine, now)?;
        self.identities = identities;
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
                if self.missing_netns == MissingNetns::Wait
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
                    if self.workers > 1 {
                        // Two byte reads; only initiations cost a mac1 check per identity.
                        let owner = steer::owner(datagram, self.workers).unwrap_or_else(|| {
                            identity_owner(&self.identities, datagram).unwrap_or(self.id)
                        });
                        if owner != self.id
                            && let Some(pass) = self.pass.get_mut(usize::from(owner))
                        {
                            self.io.udp_rx_handed_over += 1;
                            pass.push((from, datagram.to_vec()));
                            continue;
                        }
                    }
                    through_engine(
                        &mut self.engine,
                        &mut self.fast,
                        &mut self.tx,
                        &self.wan,
                        from,
                        datagram,
                        now,
                    );
                }
            }
            self.pass_on();
            // Each batch leaves before the next is read (its writes coalesce together); the
            // event loop flushes once more after all events.
            self.flush();
        }
    }

    /// Hands what this batch received for other workers to them, one message per worker.
    fn pass_on(&mut self) {
        for (worker, pass) in self.pass.iter_mut().enumerate() {
            if pass.is_empty() {
                continue;
            }
            let datagrams = std::mem::take(pass);
            let n = datagrams.len() as u64;
            match self.mailboxes.get(worker) {
                Some(m) if m.pass(datagrams) => {}
                _ => self.io.udp_rx_handover_failed += n,
            }
        }
    }

    /// Sends what the engine queued, the pending GSO batch, and the pending interface writes.
    pub(crate) fn flush(&mut self) {
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
}

/// One datagram through the engine: a decrypted packet is kept for its port's next write, a
/// reply joins the send batch.
fn through_engine(
    engine: &mut Engine,
    fast: &mut FastBuffers,
    tx: &mut TxBatch,
    wan: &Wan,
    from: SocketAddr,
    datagram: &[u8],
    now: Instant,
) {
    let out = fast.take_buffer(datagram.len());
    match engine.handle_wan_datagram(from, datagram, now, &mut out[VIRTIO_NET_HDR_LEN..]) {
        WanOutcome::Deliver { port, len } => {
            fast.keep_buffer(port, VIRTIO_NET_HDR_LEN + len);
        }
        WanOutcome::Reply(t) => {
            let start = VIRTIO_NET_HDR_LEN;
            let reply = &fast.current[start..start + t.len];
            tx.push(wan, t.to, reply, &mut fast.sent);
        }
        WanOutcome::Consumed | WanOutcome::Drop(_) => {}
    }
}

/// The worker serving the tenant a handshake initiation is meant for, by its mac1; `None` for
/// anything else, or an initiation for no tenant of this gateway.
fn identity_owner(identities: &[(Mac1Identity, u8)], datagram: &[u8]) -> Option<u8> {
    if datagram.first() != Some(&1) {
        return None;
    }
    identities
        .iter()
        .find(|(identity, _)| identity.matches(datagram))
        .map(|(_, worker)| *worker)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox() -> (Mailbox, Receiver<Command>, Poll) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), INBOX).unwrap());
        let (commands, inbox) = std::sync::mpsc::channel();
        let mailbox = Mailbox {
            commands,
            waker,
            in_flight: Arc::new(AtomicUsize::new(0)),
        };
        (mailbox, inbox, poll)
    }

    fn datagrams(n: usize) -> Passed {
        let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        (0..n).map(|_| (from, vec![4; 32])).collect()
    }

    #[test]
    fn handover_is_bounded_and_counts_in_flight() {
        let (mailbox, inbox, _poll) = mailbox();
        assert!(mailbox.pass(datagrams(HANDOVER_LIMIT - 10)));
        // 11 more would exceed the limit: refused whole, nothing counted for it.
        assert!(!mailbox.pass(datagrams(11)));
        assert_eq!(
            mailbox.in_flight.load(Ordering::Relaxed),
            HANDOVER_LIMIT - 10
        );
        assert!(mailbox.pass(datagrams(10)));
        assert!(!mailbox.pass(datagrams(1)));
        // The owner takes what waits (as drain_inbox does): room again.
        let mut taken = 0;
        while let Ok(Command::Datagrams(d)) = inbox.try_recv() {
            mailbox.in_flight.fetch_sub(d.len(), Ordering::Relaxed);
            taken += d.len();
        }
        assert_eq!(taken, HANDOVER_LIMIT);
        assert!(mailbox.pass(datagrams(1)));
    }

    #[test]
    fn handover_to_a_gone_worker_fails() {
        let (mailbox, inbox, _poll) = mailbox();
        drop(inbox);
        assert!(!mailbox.pass(datagrams(1)));
        assert_eq!(mailbox.in_flight.load(Ordering::Relaxed), 0);
    }
}
