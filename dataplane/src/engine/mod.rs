//! The sans-IO engine: feed it app packets, WAN datagrams and the time; it answers with what to
//! send where, or why it dropped.
//!
//! Tenant isolation is structural: an app packet enters through a port, the port names exactly
//! one tenant, and only that tenant's table, policy and sessions are consulted. A WAN datagram
//! finds its session by receiver index (data) or its identity by mac1 (handshake initiation);
//! a session belongs to one tenant, and what it decrypts is only ever written to that tenant's
//! ports. No code path looks up a session or port of one tenant from another's.
//!
//! Buffers belong to the caller: results say how many bytes of `out` to send or deliver.

mod conntrack;
mod counters;
mod packet;
mod policy;
mod table;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ip_network::IpNetwork;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};

pub use conntrack::{ICMP_IDLE, TCP_IDLE, UDP_IDLE};
pub use counters::{Counters, DropReason, Drops, Traffic};

use crate::config::{EngineConfig, Location, SecretKey, TenantConfig, encode_key};
use conntrack::Conntrack;
use packet::{Flow, ParseError};
use policy::Policy;
use table::{EndpointIdx, RouteTable};

/// How often boringtun's timers are driven (handshake retries, keepalives, rekeys).
pub const TICK: Duration = Duration::from_millis(250);
/// How often idle connection-tracking entries are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Handshake initiations per second per tenant identity before cookies are demanded.
pub const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Smallest output buffer the engine accepts: the largest handshake message is 148 bytes.
pub const MIN_OUT: usize = 148;
/// WireGuard's per-packet overhead (header and tag).
pub const OVERHEAD: usize = 32;
/// Packets a peer may hold while its handshake is pending (boringtun's own queue depth).
pub const MAX_QUEUED: usize = 256;
/// Largest inner packet (IP's own limit).
pub const MAX_PACKET: usize = 65_535;
/// How long a retiring session (see [`ApplyReport::sessions_retiring`]) still decrypts after
/// its replacement completed a handshake, if no data has arrived on the replacement: packets
/// the peer sent on the old session just before it switched may still be on the way.
pub const RETIRE_GRACE: Duration = Duration::from_secs(10);
/// Hard end of a retiring session, counted from the apply that retired it: long enough for
/// the other gateway of the pair to apply the same rotation and for boringtun to retry the
/// handshake (every 5 s), short enough that an old key is not trusted for long.
pub const RETIRE_DEADLINE: Duration = Duration::from_secs(90);
/// WireGuard's REJECT-AFTER-TIME: a session older than this is never used (a retiring session
/// is never rekeyed, so it simply ends then).
const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);

/// Identifies an app's interface ("port"): stable across [`Engine::apply`] for the same
/// (tenant, endpoint), so the I/O layer can keep its file descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortId(pub u32);

/// A datagram to send: `out[..len]` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Destination on the WAN.
    pub to: SocketAddr,
    /// Bytes of `out` to send.
    pub len: usize,
}

/// What to do with an app packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum AppOutcome {
    /// Send `out[..len]` on the WAN.
    Send(Transmit),
    /// Write `out[..len]` to another local port of the same tenant.
    Deliver {
        /// The port.
        port: PortId,
        /// Bytes of `out`.
        len: usize,
    },
    /// Queued until the session's handshake completes (see [`Engine::poll_transmit`]); if
    /// `Some`, a handshake initiation is in `out` and must be sent.
    Pending(Option<Transmit>),
    /// Dropped and counted.
    Drop(DropReason),
}

/// What to do with a WAN datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum WanOutcome {
    /// Write `out[..len]` to the app's port.
    Deliver {
        /// The port.
        port: PortId,
        /// Bytes of `out`.
        len: usize,
    },
    /// Send `out[..len]` back on the WAN (handshake response, cookie, keepalive).
    Reply(Transmit),
    /// Handled; nothing to send (keepalive, cookie accepted).
    Consumed,
    /// Dropped and counted.
    Drop(DropReason),
}

/// Why a configuration was refused. Nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Two tenants with one name.
    #[error("tenant {0:?} appears twice")]
    DuplicateTenant(String),
    /// Two tenants with one private key would share an identity (and a mac1).
    #[error("tenants {0:?} and {1:?} use the same private key; every tenant needs its own")]
    SharedKey(String, String),
    /// Two endpoints of a tenant with one name.
    #[error("tenant {tenant:?}: endpoint {endpoint:?} appears twice")]
    DuplicateEndpoint {
        /// Tenant.
        tenant: String,
        /// Endpoint.
        endpoint: String,
    },
    /// Two peers of a tenant with one public key.
    #[error("tenant {tenant:?}: peers {first:?} and {second:?} have the same public key")]
    DuplicatePeer {
        /// Tenant.
        tenant: String,
        /// One peer.
        first: String,
        /// The other.
        second: String,
    },
    /// A peer whose key is the tenant's own.
    #[error("tenant {tenant:?}: peer {peer:?} has this gateway's own public key")]
    PeerIsSelf {
        /// Tenant.
        tenant: String,
        /// Peer.
        peer: String,
    },
    /// An index that points nowhere.
    #[error("tenant {tenant:?}: {what} refers to a missing entry")]
    BadIndex {
        /// Tenant.
        tenant: String,
        /// What held the index.
        what: String,
    },
    /// A rule with no endpoint on this gateway: nothing here could enforce it.
    #[error("tenant {tenant:?}: rule {rule} has no endpoint on this gateway")]
    RuleNotLocal {
        /// Tenant.
        tenant: String,
        /// Rule index.
        rule: usize,
    },
    /// A port range that is empty, or ports on a protocol without ports.
    #[error("tenant {tenant:?}: rule {rule} has invalid ports")]
    BadPorts {
        /// Tenant.
        tenant: String,
        /// Rule index.
        rule: usize,
    },
    /// Two endpoints claim overlapping prefixes.
    #[error(
        "tenant {tenant:?}: {first} of {first_endpoint:?} overlaps {second} of {second_endpoint:?}"
    )]
    Overlap {
        /// Tenant.
        tenant: String,
        /// One endpoint.
        first_endpoint: String,
        /// Its prefix.
        first: IpNetwork,
        /// The other endpoint.
        second_endpoint: String,
        /// Its prefix.
        second: IpNetwork,
    },
    /// Zero connection-tracking entries would deny every reply.
    #[error("tenant {0:?}: conntrack limit must be at least 1")]
    ConntrackLimit(String),
    /// More tenants, endpoints or peers than the engine indexes.
    #[error("too many {0} (at most 65535)")]
    TooMany(&'static str),
}

/// What an [`Engine::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Sessions carried over untouched (same tenant key, peer key, preshared key, keepalive).
    pub sessions_kept: usize,
    /// Sessions created.
    pub sessions_new: usize,
    /// Sessions ended.
    pub sessions_dropped: usize,
    /// Sessions kept alive as *retiring* because the key material of their peer slot changed
    /// (the tenant's private key, or the peer's public or preshared key, same tenant and peer
    /// name): make-before-break. The two gateways of a pair apply a rotation seconds apart and
    /// no handshake can complete until both have, so the old session keeps decrypting (and
    /// encrypting, until the new one is up) for that slot only, and ends once the new session
    /// has carried data, [`RETIRE_GRACE`] after its handshake, or [`RETIRE_DEADLINE`] after
    /// the apply. A retiring session never answers or starts a handshake. Peers removed from
    /// the config are never retired: revocation cuts off at once.
    pub sessions_retiring: usize,
    /// Ports that appeared: (port, tenant, endpoint).
    pub ports_added: Vec<(PortId, String, String)>,
    /// Ports that went away.
    pub ports_removed: Vec<(PortId, String, String)>,
}

/// Counters of one peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStats {
    /// Peer name.
    pub name: String,
    /// Its public key (base64).
    pub public_key: String,
    /// Where it is reached now.
    pub endpoint: Option<SocketAddr>,
    /// Time since the last completed handshake.
    pub last_handshake: Option<Duration>,
    /// Traffic and drops.
    pub counters: Counters,
}

/// Counters of one tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantStats {
    /// Tenant name.
    pub name: String,
    /// This gateway's public key for the tenant (base64).
    pub public_key: String,
    /// Traffic and drops of the whole tenant.
    pub counters: Counters,
    /// Tracked connections.
    pub connections: usize,
    /// Per peer.
    pub peers: Vec<PeerStats>,
}

/// A snapshot of every counter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineStats {
    /// Per tenant.
    pub tenants: Vec<TenantStats>,
    /// Drops that belong to no tenant (garbage, unknown index, unknown identity).
    pub unattributed: Drops,
}

struct Peer {
    name: String,
    public_key: [u8; 32],
    preshared_key: Option<SecretKey>,
    keepalive: Option<u16>,
    roaming: bool,
    configured_endpoint: Option<SocketAddr>,
    endpoint: Option<SocketAddr>,
    tunn: Box<Tunn>,
    index: u32,
    counters: Counters,
    /// Packets in boringtun's queue, waiting for the handshake.
    queued: usize,
    /// The session this peer slot had before its key material changed, still accepted for a
    /// while (see [`ApplyReport::sessions_retiring`]). At most one per slot.
    retiring: Option<Box<Retiring>>,
}

/// A peer slot's previous session after a key rotation: same tenant, same peer slot, its own
/// receiver index. Only data packets reach it; it never handshakes.
struct Retiring {
    tunn: Box<Tunn>,
    index: u32,
    /// [`RETIRE_DEADLINE`] after the apply that retired it.
    deadline: Instant,
    /// When the replacement session was first seen established.
    new_session_at: Option<Instant>,
    /// The replacement session has decrypted a data packet (or keepalive): the peer has
    /// switched, so the old session can go.
    new_rx: bool,
}

impl Retiring {
    /// Whether it still has a session fit to encrypt with.
    fn usable(&self) -> bool {
        self.tunn
            .time_since_last_handshake()
            .is_some_and(|age| age < REJECT_AFTER_TIME)
    }

    fn due(&self, now: Instant) -> bool {
        self.new_rx || now >= self.next_deadline() || !self.usable()
    }

    fn next_deadline(&self) -> Instant {
        match self.new_session_at {
            Some(t) => self.deadline.min(t + RETIRE_GRACE),
            None => self.deadline,
        }
    }
}

/// Where a receiver index leads: a peer slot of a tenant, and whether to its retiring session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    tenant: u16,
    peer: u16,
    retiring: bool,
}

impl Peer {
    /// Sessions this peer slot holds: its own and a retiring one.
    fn sessions(&self) -> usize {
        1 + usize::from(self.retiring.is_some())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Local(PortId),
    Peer(u16),
}

struct Endpoint {
    name: String,
    place: Place,
}

struct Tenant {
    name: String,
    secret: StaticSecret,
    public: PublicKey,
    mac1_key: [u8; 32],
    rate_limiter: Arc<RateLimiter>,
    endpoints: Vec<Endpoint>,
    peers: Vec<Peer>,
    peer_by_key: HashMap<[u8; 32], u16>,
    table: RouteTable,
    policy: Policy,
    conntrack: Conntrack,
    counters: Counters,
}

/// The packet engine of one gateway.
pub struct Engine {
    tenants: Vec<Tenant>,
    /// PortId.0 → (tenant, endpoint).
    ports: Vec<Option<(u16, EndpointIdx)>>,
    port_names: HashMap<(String, String), PortId>,
    next_port: u32,
    /// Receiver index >> 8 → (tenant, peer, retiring).
    sessions: HashMap<u32, Slot>,
    pending: VecDeque<(SocketAddr, Vec<u8>)>,
    unattributed: Drops,
    next_tick: Option<Instant>,
    /// Earliest moment a retiring session may have to end.
    next_retire: Option<Instant>,
    next_sweep: Option<Instant>,
    scratch: Vec<u8>,
    /// Which receiver indices this engine hands out (see [`IndexShard`]).
    shard: IndexShard,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("tenants", &self.tenants.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

fn mac1_key(public: &PublicKey) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, b"mac1----");
    Digest::update(&mut h, public.as_bytes());
    h.finalize().into()
}

fn mac1_matches(key: &[u8; 32], datagram: &[u8]) -> bool {
    let Some(split) = datagram.len().checked_sub(32) else {
        return false;
    };
    let (msg, macs) = datagram.split_at(split);
    let Ok(mut mac) = <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(key)
    else {
        return false;
    };
    Update::update(&mut mac, msg);
    let computed: [u8; 16] = mac.finalize_fixed().into();
    macs.get(..16) == Some(&computed[..])
}

fn wg_drop(e: &WireGuardError) -> DropReason {
    match e {
        WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => DropReason::Replay,
        WireGuardError::InvalidAeadTag => DropReason::DecryptFailed,
        WireGuardError::NoCurrentSession | WireGuardError::ConnectionExpired => {
            DropReason::NoSession
        }
        WireGuardError::InvalidPacket => DropReason::Malformed,
        WireGuardError::DestinationBufferTooSmall => DropReason::TooLarge,
        WireGuardError::UnderLoad => DropReason::HandshakeUnderLoad,
        WireGuardError::IncorrectPacketLength | WireGuardError::WrongPacketType => {
            DropReason::MalformedDatagram
        }
        _ => DropReason::HandshakeFailed,
    }
}

fn parse_drop(e: ParseError) -> DropReason {
    match e {
        ParseError::Malformed => DropReason::Malformed,
        ParseError::Fragment => DropReason::Fragment,
    }
}

impl Engine {
    /// An engine serving nothing; [`Engine::apply`] a config to start.
    pub fn new() -> Self {
        Engine {
            tenants: Vec::new(),
            ports: Vec::new(),
            port_names: HashMap::new(),
            next_port: 0,
            sessions: HashMap::new(),
            pending: VecDeque::new(),
            unattributed: Drops::default(),
            next_tick: None,
            next_retire: None,
            next_sweep: None,
            scratch: vec![0; MAX_PACKET + OVERHEAD],
            shard: IndexShard::WHOLE,
        }
    }

    /// An engine whose sessions get receiver indices of `shard` only, so that the I/O layer
    /// (which may run one engine per thread) can tell the owner of a datagram from its
    /// header alone. [`Engine::new`] is the engine of a whole gateway.
    pub fn with_shard(shard: IndexShard) -> Self {
        Engine {
            shard,
            ..Engine::new()
        }
    }

    /// The port of an app endpoint, by tenant and endpoint name.
    pub fn port(&self, tenant: &str, endpoint: &str) -> Option<PortId> {
        self.port_names
            .get(&(tenant.to_owned(), endpoint.to_owned()))
            .copied()
    }

    /// Every port with its tenant and endpoint name.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, &str, &str)> {
        self.ports.iter().enumerate().filter_map(|(i, slot)| {
            let (t, e) = (*slot)?;
            let tenant = self.tenants.get(usize::from(t))?;
            let ep = tenant.endpoints.get(usize::from(e))?;
            Some((PortId(i as u32), tenant.name.as_str(), ep.name.as_str()))
        })
    }

    /// This gateway's public key for a tenant.
    pub fn public_key(&self, tenant: &str) -> Option<[u8; 32]> {
        self.tenants
            .iter()
            .find(|t| t.name == tenant)
            .map(|t| t.public.to_bytes())
    }

    /// Whether [`Engine::apply`] would take `config`, touching nothing. Any subset of the
    /// tenants of a config that passes passes too: the I/O layer checks a whole plan once
    /// before it hands each thread's engine its share, so that a refusal changes nothing
    /// anywhere.
    pub fn check(config: &EngineConfig) -> Result<(), ConfigError> {
        Self::validate(config).map(drop)
    }

    fn validate(config: &EngineConfig) -> Result<Vec<TenantPlan>, ConfigError> {
        let plans = config
            .tenants
            .iter()
            .map(plan_tenant)
            .collect::<Result<Vec<_>, _>>()?;
        if plans.len() > usize::from(u16::MAX) {
            return Err(ConfigError::TooMany("tenants"));
        }
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut seen_keys: HashMap<[u8; 32], &str> = HashMap::new();
        for t in &config.tenants {
            if !seen.insert(&t.name) {
                return Err(ConfigError::DuplicateTenant(t.name.clone()));
            }
            if let Some(other) = seen_keys.insert(*t.private_key.as_bytes(), &t.name) {
                return Err(ConfigError::SharedKey(other.to_owned(), t.name.clone()));
            }
        }
        Ok(plans)
    }

    /// Replaces the configuration, atomically: either all of it applies or none. Sessions whose
    /// tenant key, peer key, preshared key and keepalive are unchanged survive with their
    /// counters and learned endpoint; tracked connections survive where the new policy still
    /// allows them. A peer (same tenant, same peer name) whose key material changed gets a new
    /// session, and its old one *retires* rather than ends, so a key rotation loses no traffic
    /// (see [`ApplyReport::sessions_retiring`]); a peer or tenant that is gone ends at once.
    pub fn apply(
        &mut self,
        config: &EngineConfig,
        now: Instant,
    ) -> Result<ApplyReport, ConfigError> {
        // Phase 1: validate and build everything that can fail, touching nothing.
        let plans = Self::validate(config)?;

        // Phase 2: infallible from here on.
        let mut report = ApplyReport::default();
        let mut old: HashMap<String, Tenant> = self
            .tenants
            .drain(..)
            .map(|t| (t.name.clone(), t))
            .collect();
        let old_ports = std::mem::take(&mut self.port_names);
        let mut new_tenants = Vec::with_capacity(plans.len());
        let mut new_port_names = HashMap::new();
        let mut new_ports: Vec<Option<(u16, EndpointIdx)>> = Vec::new();
        let mut used_indices: HashMap<u32, Slot> = HashMap::new();

        for (ti, (plan, cfg)) in plans.into_iter().zip(&config.tenants).enumerate() {
            let ti = ti as u16;
            let mut prev = old.remove(&cfg.name);
            let same_key = prev
                .as_ref()
                .is_some_and(|p| p.secret.to_bytes() == *cfg.private_key.as_bytes());
            let secret = StaticSecret::from(*cfg.private_key.as_bytes());
            let public = PublicKey::from(&secret);

            // A new tenant key is a new identity (new rate limiter and mac1), but the same
            // tenant: its counters and tracked connections carry over, and its peers' sessions
            // retire rather than end (make-before-break).
            let (rate_limiter, counters, mut conntrack, old_peers) = match prev.take() {
                Some(p) => (
                    if same_key {
                        p.rate_limiter
                    } else {
                        Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT))
                    },
                    p.counters,
                    p.conntrack,
                    p.peers,
                ),
                None => (
                    Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
                    Counters::default(),
                    Conntrack::new(cfg.conntrack_limit),
                    Vec::new(),
                ),
            };
            conntrack.set_limit(cfg.conntrack_limit);

            let mut old_peers: Vec<Option<Peer>> = old_peers.into_iter().map(Some).collect();
            let by_name: HashMap<String, usize> = old_peers
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((p.as_ref()?.name.clone(), i)))
                .collect();
            let by_key: HashMap<[u8; 32], usize> = old_peers
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((p.as_ref()?.public_key, i)))
                .collect();
            // First every session that survives untouched (matched by key, as a rename keeps
            // the session), then the rotated ones (matched by name).
            let mut kept: Vec<Option<Peer>> = cfg
                .peers
                .iter()
                .map(|pc| {
                    if !same_key {
                        return None;
                    }
                    let slot = old_peers.get_mut(*by_key.get(&pc.public_key)?)?;
                    let unchanged = slot.as_ref().is_some_and(|p| {
                        p.preshared_key == pc.preshared_key
                            && p.keepalive == pc.persistent_keepalive
                    });
                    if unchanged { slot.take() } else { None }
                })
                .collect();

            let mut peers = Vec::with_capacity(cfg.peers.len());
            for (pi, pc) in cfg.peers.iter().enumerate() {
                let slot = |retiring| Slot {
                    tenant: ti,
                    peer: pi as u16,
                    retiring,
                };
                let peer = match kept.get_mut(pi).and_then(Option::take) {
                    Some(mut p) => {
                        report.sessions_kept += 1;
                        p.name.clone_from(&pc.name);
                        p.roaming = pc.roaming;
                        if p.configured_endpoint != pc.endpoint {
                            p.endpoint = pc.endpoint.or(p.endpoint);
                        }
                        p.configured_endpoint = pc.endpoint;
                        p
                    }
                    None => {
                        report.sessions_new += 1;
                        let index = fresh_index(self.shard, &used_indices, &self.sessions);
                        let mut tunn = Box::new(Tunn::new(
                            secret.clone(),
                            PublicKey::from(pc.public_key),
                            pc.preshared_key.as_ref().map(|k| *k.as_bytes()),
                            pc.persistent_keepalive,
                            index,
                            None,
                        ));
                        // Same peer name, new key material: the old session retires.
                        let rotated = by_name
                            .get(&pc.name)
                            .and_then(|&i| old_peers.get_mut(i)?.take());
                        let mut endpoint = pc.endpoint;
                        let mut counters = Counters::default();
                        let mut retiring = None;
                        // A rotated peer, or one we must keep a NAT mapping to: say hello now
                        // rather than at the first packet or keepalive.
                        let hello = match rotated {
                            Some(old) => {
                                if old.configured_endpoint == pc.endpoint {
                                    endpoint = old.endpoint;
                                } else {
                                    endpoint = pc.endpoint.or(old.endpoint);
                                }
                                counters = old.counters;
                                retiring = retire(old, now, &mut report);
                                true
                            }
                            None => pc.persistent_keepalive.is_some(),
                        };
                        if hello
                            && let Some(to) = endpoint
                            && let TunnResult::WriteToNetwork(init) =
                                tunn.format_handshake_initiation(&mut self.scratch, false)
                        {
                            self.pending.push_back((to, init.to_vec()));
                        }
                        Peer {
                            name: pc.name.clone(),
                            public_key: pc.public_key,
                            preshared_key: pc.preshared_key.clone(),
                            keepalive: pc.persistent_keepalive,
                            roaming: pc.roaming,
                            configured_endpoint: pc.endpoint,
                            endpoint,
                            tunn,
                            index,
                            counters,
                            queued: 0,
                            retiring,
                        }
                    }
                };
                used_indices.insert(peer.index, slot(false));
                if let Some(r) = &peer.retiring {
                    used_indices.insert(r.index, slot(true));
                    self.next_retire = Some(
                        self.next_retire
                            .map_or(r.next_deadline(), |t| t.min(r.next_deadline())),
                    );
                }
                peers.push(peer);
            }
            report.sessions_dropped += old_peers
                .iter()
                .flatten()
                .map(Peer::sessions)
                .sum::<usize>();

            let mut endpoints = Vec::with_capacity(cfg.endpoints.len());
            for (ei, ec) in cfg.endpoints.iter().enumerate() {
                let place = match ec.location {
                    Location::Peer(p) => Place::Peer(p as u16),
                    Location::Local => {
                        let key = (cfg.name.clone(), ec.name.clone());
                        let id = match old_ports.get(&key) {
                            Some(id) => *id,
                            None => {
                                let id = PortId(self.next_port);
                                self.next_port += 1;
                                report
                                    .ports_added
                                    .push((id, cfg.name.clone(), ec.name.clone()));
                                id
                            }
                        };
                        let slot = id.0 as usize;
                        if new_ports.len() <= slot {
                            new_ports.resize(slot + 1, None);
                        }
                        new_ports[slot] = Some((ti, ei as EndpointIdx));
                        new_port_names.insert(key, id);
                        Place::Local(id)
                    }
                };
                endpoints.push(Endpoint {
                    name: ec.name.clone(),
                    place,
                });
            }

            // Connections survive only where the new table and policy still allow them.
            conntrack.retain(|k| {
                match (
                    plan.table.lookup(k.opener()),
                    plan.table.lookup(k.responder()),
                ) {
                    (Some(a), Some(b)) => plan.policy.allows(a, b, &k.as_flow()),
                    _ => false,
                }
            });

            new_tenants.push(Tenant {
                name: cfg.name.clone(),
                mac1_key: mac1_key(&public),
                secret,
                public,
                rate_limiter,
                endpoints,
                peers,
                peer_by_key: plan.peer_by_key,
                table: plan.table,
                policy: plan.policy,
                conntrack,
                counters,
            });
        }
        for t in old.values() {
            report.sessions_dropped += t.peers.iter().map(Peer::sessions).sum::<usize>();
        }
        for (key, id) in old_ports {
            if !new_port_names.contains_key(&key) {
                report.ports_removed.push((id, key.0, key.1));
            }
        }
        self.tenants = new_tenants;
        self.ports = new_ports;
        self.port_names = new_port_names;
        self.sessions = used_indices;
        self.next_tick.get_or_insert(now);
        report.ports_added.sort();
        report.ports_removed.sort();
        tracing::info!(
            tenants = self.tenants.len(),
            kept = report.sessions_kept,
            new = report.sessions_new,
            dropped = report.sessions_dropped,
            retiring = report.sessions_retiring,
            "configuration applied"
        );
        Ok(report)
    }

    /// An IP packet read from an app's interface. On `Send`, `out[..len]` is the datagram.
    /// `out` must hold at least `packet.len() + OVERHEAD` and `MIN_OUT` bytes.
    pub fn handle_app_packet(
        &mut self,
        port: PortId,
        packet: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> AppOutcome {
        let Some(Some((ti, from_ep))) = self.ports.get(port.0 as usize).copied() else {
            self.unattributed.count(DropReason::UnknownPort);
            return AppOutcome::Drop(DropReason::UnknownPort);
        };
        let Some(tenant) = self.tenants.get_mut(usize::from(ti)) else {
            self.unattributed.count(DropReason::UnknownPort);
            return AppOutcome::Drop(DropReason::UnknownPort);
        };
        match tenant.outbound(
            from_ep,
            packet,
            now,
            out,
            &mut self.scratch,
            &mut self.pending,
        ) {
            Ok(outcome) => outcome,
            Err((reason, peer)) => {
                tenant.counters.drops.count(reason);
                if let Some(p) = peer.and_then(|p| tenant.peers.get_mut(usize::from(p))) {
                    p.counters.drops.count(reason);
                }
                AppOutcome::Drop(reason)
            }
        }
    }

    /// A UDP datagram received on the WAN socket from `from`.
    /// `out` must hold at least `datagram.len()` and `MIN_OUT` bytes.
    pub fn handle_wan_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> WanOutcome {
        if out.len() < datagram.len().max(MIN_OUT) {
            self.unattributed.count(DropReason::TooLarge);
            return WanOutcome::Drop(DropReason::TooLarge);
        }
        let parsed = match Tunn::parse_incoming_packet(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.unattributed.count(DropReason::MalformedDatagram);
                return WanOutcome::Drop(DropReason::MalformedDatagram);
            }
        };
        let (ti, pi, retiring) = match parsed {
            Packet::HandshakeInit(ref init) => {
                // The initiation names no index: find the identity it is meant for by mac1,
                // cheaply, before any Diffie-Hellman is spent.
                let Some(ti) = self
                    .tenants
                    .iter()
                    .position(|t| mac1_matches(&t.mac1_key, datagram))
                else {
                    self.unattributed.count(DropReason::UnknownIdentity);
                    return WanOutcome::Drop(DropReason::UnknownIdentity);
                };
                let tenant = &mut self.tenants[ti];
                let mut cookie = [0u8; 64];
                match tenant
                    .rate_limiter
                    .verify_packet(Some(from.ip()), datagram, &mut cookie)
                {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(reply)) => {
                        let len = reply.len();
                        out[..len].copy_from_slice(reply);
                        tenant.counters.drops.count(DropReason::HandshakeUnderLoad);
                        return WanOutcome::Reply(Transmit { to: from, len });
                    }
                    Err(_) => {
                        tenant.counters.drops.count(DropReason::HandshakeFailed);
                        return WanOutcome::Drop(DropReason::HandshakeFailed);
                    }
                }
                let Ok(half) = parse_handshake_anon(&tenant.secret, &tenant.public, init) else {
                    tenant.counters.drops.count(DropReason::HandshakeFailed);
                    return WanOutcome::Drop(DropReason::HandshakeFailed);
                };
                let Some(pi) = tenant.peer_by_key.get(&half.peer_static_public).copied() else {
                    tenant.counters.drops.count(DropReason::UnknownPeer);
                    return WanOutcome::Drop(DropReason::UnknownPeer);
                };
                (ti, usize::from(pi), false)
            }
            // A retiring session takes data only: it has no handshake to answer or complete
            // (a response or cookie for it is as good as one for an unknown index).
            Packet::HandshakeResponse(ref p) => match self.sessions.get(&(p.receiver_idx >> 8)) {
                Some(s) if !s.retiring => (usize::from(s.tenant), usize::from(s.peer), false),
                _ => {
                    self.unattributed.count(DropReason::UnknownIndex);
                    return WanOutcome::Drop(DropReason::UnknownIndex);
                }
            },
            Packet::PacketCookieReply(ref p) => match self.sessions.get(&(p.receiver_idx >> 8)) {
                Some(s) if !s.retiring => (usize::from(s.tenant), usize::from(s.peer), false),
                _ => {
                    self.unattributed.count(DropReason::UnknownIndex);
                    return WanOutcome::Drop(DropReason::UnknownIndex);
                }
            },
            Packet::PacketData(ref p) => match self.sessions.get(&(p.receiver_idx >> 8)) {
                Some(s) => (usize::from(s.tenant), usize::from(s.peer), s.retiring),
                None => {
                    self.unattributed.count(DropReason::UnknownIndex);
                    return WanOutcome::Drop(DropReason::UnknownIndex);
                }
            },
        };
        let Some(tenant) = self.tenants.get_mut(ti) else {
            self.unattributed.count(DropReason::UnknownIndex);
            return WanOutcome::Drop(DropReason::UnknownIndex);
        };
        let result = tenant.inbound(
            pi,
            retiring,
            from,
            datagram,
            now,
            out,
            &mut self.pending,
            &mut self.scratch,
        );
        // A rotation in progress: note when the new session came up, and end the old one as
        // soon as the new one has carried data (the peer has switched).
        if !retiring
            && let Some(peer) = tenant.peers.get_mut(pi)
            && let Some(r) = peer.retiring.as_mut()
        {
            if r.new_session_at.is_none() && peer.tunn.time_since_last_handshake().is_some() {
                r.new_session_at = Some(now);
                let due = r.next_deadline();
                self.next_retire = Some(self.next_retire.map_or(due, |t| t.min(due)));
            }
            if r.new_rx {
                tracing::debug!(tenant = %tenant.name, peer = %peer.name, "retired session ended");
                self.sessions.remove(&r.index);
                peer.retiring = None;
            }
        }
        match result {
            Ok(outcome) => outcome,
            Err(reason) => {
                tenant.counters.drops.count(reason);
                if let Some(p) = tenant.peers.get_mut(pi) {
                    p.counters.drops.count(reason);
                }
                WanOutcome::Drop(reason)
            }
        }
    }

    /// Next queued datagram (handshake retries, keepalives, packets released by a completed
    /// handshake), copied into `out`. Call until `None` after every other call.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<Transmit> {
        loop {
            let (to, data) = self.pending.pop_front()?;
            if let Some(dst) = out.get_mut(..data.len()) {
                dst.copy_from_slice(&data);
                return Some(Transmit {
                    to,
                    len: data.len(),
                });
            }
            self.unattributed.count(DropReason::TooLarge);
        }
    }

    /// When [`Engine::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_tick, self.next_retire) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Drives timers: handshake retries, keepalives, rekeys, session expiry, rate-limiter
    /// resets and connection-tracking expiry. Output goes to [`Engine::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_tick.is_some_and(|t| now < t) {
            if self.next_retire.is_some_and(|t| now >= t) {
                self.end_retiring(now);
            }
            return;
        }
        self.next_tick = Some(now + TICK);
        let sweep = self.next_sweep.is_none_or(|t| now >= t);
        if sweep {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
        for tenant in &mut self.tenants {
            tenant.rate_limiter.reset_count();
            if sweep {
                tenant.conntrack.sweep(now);
            }
            for peer in &mut tenant.peers {
                match peer.tunn.update_timers(&mut self.scratch) {
                    TunnResult::WriteToNetwork(data) => {
                        if let Some(to) = peer.endpoint {
                            self.pending.push_back((to, data.to_vec()));
                        }
                    }
                    TunnResult::Err(WireGuardError::ConnectionExpired) => {
                        tracing::debug!(tenant = %tenant.name, peer = %peer.name, "session expired");
                        // boringtun dropped whatever waited for the handshake.
                        for _ in 0..std::mem::take(&mut peer.queued) {
                            tenant.counters.drops.count(DropReason::HandshakeTimeout);
                            peer.counters.drops.count(DropReason::HandshakeTimeout);
                        }
                    }
                    _ => {}
                }
            }
        }
        self.end_retiring(now);
    }

    /// Ends the retiring sessions that are due, frees their receiver indices, and sets when
    /// to look again.
    fn end_retiring(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        for tenant in &mut self.tenants {
            for peer in &mut tenant.peers {
                let Some(r) = peer.retiring.as_mut() else {
                    continue;
                };
                if r.new_session_at.is_none() && peer.tunn.time_since_last_handshake().is_some() {
                    r.new_session_at = Some(now);
                }
                if r.due(now) {
                    tracing::debug!(tenant = %tenant.name, peer = %peer.name, "retired session ended");
                    self.sessions.remove(&r.index);
                    peer.retiring = None;
                } else {
                    let due = r.next_deadline();
                    next = Some(next.map_or(due, |t| t.min(due)));
                }
            }
        }
        self.next_retire = next;
    }

    /// Retiring sessions (see [`ApplyReport::sessions_retiring`]): (tenant, peer) of every
    /// peer slot that still accepts its previous session.
    pub fn retiring(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tenants.iter().flat_map(|t| {
            t.peers
                .iter()
                .filter(|p| p.retiring.is_some())
                .map(|p| (t.name.as_str(), p.name.as_str()))
        })
    }

    /// Every counter, for status and metrics.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            tenants: self
                .tenants
                .iter()
                .map(|t| TenantStats {
                    name: t.name.clone(),
                    public_key: encode_key(t.public.as_bytes()),
                    counters: t.counters,
                    connections: t.conntrack.len(),
                    peers: t
                        .peers
                        .iter()
                        .map(|p| PeerStats {
                            name: p.name.clone(),
                            public_key: encode_key(&p.public_key),
                            endpoint: p.endpoint,
                            last_handshake: p.tunn.time_since_last_handshake(),
                            counters: p.counters,
                        })
                        .collect(),
                })
                .collect(),
            unattributed: self.unattributed,
        }
    }
}

/// A fresh 24-bit session index of `shard`, unique in this engine (and so on this gateway:
/// the indices of different shards differ in their low bits).
fn fresh_index(shard: IndexShard, taken: &HashMap<u32, Slot>, old: &HashMap<u32, Slot>) -> u32 {
    loop {
        let i = shard.place(rand_core::OsRng.next_u32() & 0x00ff_ffff);
        if !taken.contains_key(&i) && !old.contains_key(&i) {
            return i;
        }
    }
}

/// The share of the receiver-index space one engine allocates from, when a gateway runs one
/// engine per thread ("worker").
///
/// boringtun puts `index << 8 | n` on the wire (`n` counts the session's handshakes), so the
/// index's low byte is the wire index's second byte (byte 5 of a data or cookie message, byte 9
/// of a handshake response, little-endian). An engine of worker `w` out of `n` hands out only
/// indices whose low byte is `w` modulo `n`: a reuseport socket filter can then steer a
/// datagram to its worker with one byte load and one modulo, and [`IndexShard::owner`] says
/// the same in Rust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexShard {
    worker: u8,
    workers: u8,
}

impl IndexShard {
    /// The whole index space: one engine serves the gateway.
    pub const WHOLE: IndexShard = IndexShard {
        worker: 0,
        workers: 1,
    };

    /// Worker `worker` of `workers` (1 to 255 workers). `None` if out of range.
    pub fn new(worker: u8, workers: u8) -> Option<Self> {
        (workers >= 1 && worker < workers).then_some(IndexShard { worker, workers })
    }

    /// Which worker this shard is.
    pub fn worker(self) -> u8 {
        self.worker
    }

    /// How many workers share the index space.
    pub fn workers(self) -> u8 {
        self.workers
    }

    /// The worker that allocated a session index (the 24-bit value given to boringtun).
    pub fn index_owner(index: u32, workers: u8) -> u8 {
        ((index & 0xff) % u32::from(workers.max(1))) as u8
    }

    /// The worker that owns a WAN datagram, by the receiver index in its header: data (type 4)
    /// and cookie replies (type 3) at bytes 4..8, handshake responses (type 2) at 8..12.
    /// `None` for an initiation (type 1, no receiver index: find its tenant by mac1) and for
    /// anything too short or of another type.
    pub fn owner(datagram: &[u8], workers: u8) -> Option<u8> {
        let at = match datagram.first()? {
            3 | 4 => 4,
            2 => 8,
            _ => return None,
        };
        let wire: [u8; 4] = datagram.get(at..at + 4)?.try_into().ok()?;
        Some(Self::index_owner(u32::from_le_bytes(wire) >> 8, workers))
    }

    /// `raw` (24 bits) moved into this shard: its low byte replaced by the nearest value below
    /// it that belongs to this worker.
    pub(crate) fn place(self, raw: u32) -> u32 {
        let n = u32::from(self.workers.max(1));
        let low = raw & 0xff;
        let mut owned = low - low % n + u32::from(self.worker);
        if owned > 0xff {
            owned -= n;
        }
        (raw & 0x00ff_ff00) | owned
    }
}

/// A tenant identity's mac1 key (keyed by the tenant's public key): which tenant a handshake
/// initiation is meant for, found before any Diffie-Hellman is spent. The I/O layer uses it
/// to pass an initiation to the thread that serves the tenant.
#[derive(Clone, PartialEq, Eq)]
pub struct Mac1Identity([u8; 32]);

impl std::fmt::Debug for Mac1Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mac1Identity(..)")
    }
}

impl Mac1Identity {
    /// The identity of a tenant's private key.
    pub fn of(private_key: &SecretKey) -> Self {
        let secret = StaticSecret::from(*private_key.as_bytes());
        Mac1Identity(mac1_key(&PublicKey::from(&secret)))
    }

    /// Whether `datagram` (a handshake initiation) carries a valid mac1 for this identity.
    pub fn matches(&self, datagram: &[u8]) -> bool {
        mac1_matches(&self.0, datagram)
    }
}

/// The old peer of a slot whose key material changed: its session retires if it has one fit
/// for use. If it has none (its own handshake never completed), the session retiring before it,
/// if any, is still the slot's only working one and stays (with its original deadline);
/// otherwise at most one retiring session per slot: the newest.
fn retire(old: Peer, now: Instant, report: &mut ApplyReport) -> Option<Box<Retiring>> {
    let Peer {
        tunn,
        index,
        retiring: previous,
        ..
    } = old;
    let candidate = Box::new(Retiring {
        tunn,
        index,
        deadline: now + RETIRE_DEADLINE,
        new_session_at: None,
        new_rx: false,
    });
    if candidate.usable() {
        report.sessions_retiring += 1;
        report.sessions_dropped += usize::from(previous.is_some());
        return Some(candidate);
    }
    report.sessions_dropped += 1;
    match previous {
        Some(mut p) if p.usable() => {
            // It waits for the new replacement now.
            p.new_session_at = None;
            p.new_rx = false;
            report.sessions_retiring += 1;
            Some(p)
        }
        Some(_) => {
            report.sessions_dropped += 1;
            None
        }
        None => None,
    }
}

/// Sends what waited in a peer's queue for its handshake, counting each packet as it leaves.
fn release_queue(
    peer: &mut Peer,
    tenant: &mut Counters,
    scratch: &mut [u8],
    pending: &mut VecDeque<(SocketAddr, Vec<u8>)>,
) {
    let Some(to) = peer.endpoint else {
        return;
    };
    while let TunnResult::WriteToNetwork(data) = peer.tunn.decapsulate(None, &[], scratch) {
        pending.push_back((to, data.to_vec()));
        if data.first() != Some(&4) {
            // No session after all: boringtun put the packet back and asked for a handshake.
            break;
        }
        let inner = data.len().saturating_sub(OVERHEAD);
        tenant.tx.add(inner);
        peer.counters.tx.add(inner);
        peer.queued = peer.queued.saturating_sub(1);
    }
}

/// What phase 1 of apply builds for one tenant.
struct TenantPlan {
    table: RouteTable,
    policy: Policy,
    peer_by_key: HashMap<[u8; 32], u16>,
}

fn plan_tenant(cfg: &TenantConfig) -> Result<TenantPlan, ConfigError> {
    let name = || cfg.name.clone();
    if cfg.endpoints.len() > usize::from(u16::MAX) {
        return Err(ConfigError::TooMany("endpoints"));
    }
    if cfg.peers.len() > usize::from(u16::MAX) {
        return Err(ConfigError::TooMany("peers"));
    }
    if cfg.conntrack_limit == 0 {
        return Err(ConfigError::ConntrackLimit(name()));
    }
    let mut names = HashMap::new();
    for e in &cfg.endpoints {
        if names.insert(e.name.as_str(), ()).is_some() {
            return Err(ConfigError::DuplicateEndpoint {
                tenant: name(),
                endpoint: e.name.clone(),
            });
        }
        if let Location::Peer(p) = e.location
            && p >= cfg.peers.len()
        {
            return Err(ConfigError::BadIndex {
                tenant: name(),
                what: format!("endpoint {:?}", e.name),
            });
        }
    }
    let own = cfg.private_key.public_key();
    let mut peer_by_key = HashMap::new();
    for (i, p) in cfg.peers.iter().enumerate() {
        if p.public_key == own {
            return Err(ConfigError::PeerIsSelf {
                tenant: name(),
                peer: p.name.clone(),
            });
        }
        if let Some(first) = peer_by_key.insert(p.public_key, i as u16) {
            return Err(ConfigError::DuplicatePeer {
                tenant: name(),
                first: cfg.peers[usize::from(first)].name.clone(),
                second: p.name.clone(),
            });
        }
    }
    for (i, r) in cfg.rules.iter().enumerate() {
        let (Some(from), Some(to)) = (cfg.endpoints.get(r.from), cfg.endpoints.get(r.to)) else {
            return Err(ConfigError::BadIndex {
                tenant: name(),
                what: format!("rule {i}"),
            });
        };
        if from.location != Location::Local && to.location != Location::Local {
            return Err(ConfigError::RuleNotLocal {
                tenant: name(),
                rule: i,
            });
        }
        let portless = matches!(
            r.protocol,
            crate::config::Protocol::Icmp | crate::config::Protocol::Any
        );
        if r.ports.iter().any(|p| p.start > p.end) || (portless && !r.ports.is_empty()) {
            return Err(ConfigError::BadPorts {
                tenant: name(),
                rule: i,
            });
        }
    }
    let table = RouteTable::build(
        cfg.endpoints
            .iter()
            .enumerate()
            .flat_map(|(i, e)| e.prefixes.iter().map(move |p| (i as EndpointIdx, *p))),
    )
    .map_err(|o| ConfigError::Overlap {
        tenant: name(),
        first_endpoint: cfg.endpoints[usize::from(o.first.0)].name.clone(),
        first: o.first.1,
        second_endpoint: cfg.endpoints[usize::from(o.second.0)].name.clone(),
        second: o.second.1,
    })?;
    Ok(TenantPlan {
        table,
        policy: Policy::build(&cfg.rules),
        peer_by_key,
    })
}

impl Tenant {
    /// App → WAN (or → another local port). Errors carry the peer to blame, if any.
    fn outbound(
        &mut self,
        from_ep: EndpointIdx,
        packet: &[u8],
        now: Instant,
        out: &mut [u8],
        scratch: &mut [u8],
        pending: &mut VecDeque<(SocketAddr, Vec<u8>)>,
    ) -> Result<AppOutcome, (DropReason, Option<u16>)> {
        let flow = packet::parse(packet).map_err(|e| (parse_drop(e), None))?;
        if packet::is_link_scoped(&flow) {
            return Err((DropReason::LinkLocal, None));
        }
        // Anti-spoofing, sender side: the source must belong to the endpoint behind this port.
        if self.table.lookup(flow.src) != Some(from_ep) {
            return Err((DropReason::SpoofedSource, None));
        }
        let to_ep = self
            .table
            .lookup(flow.dst)
            .filter(|to| *to != from_ep)
            .ok_or((DropReason::NoRoute, None))?;
        let place = self
            .endpoints
            .get(usize::from(to_ep))
            .map(|e| e.place)
            .ok_or((DropReason::NoRoute, None))?;
        let peer_idx = match place {
            Place::Peer(p) => {
                // Unsendable packets must not open tracked flows.
                let peer = self
                    .peers
                    .get(usize::from(p))
                    .ok_or((DropReason::NoRoute, None))?;
                if peer.endpoint.is_none() {
                    return Err((DropReason::PeerUnreachable, Some(p)));
                }
                if peer.queued >= MAX_QUEUED {
                    return Err((DropReason::QueueFull, Some(p)));
                }
                Some(p)
            }
            Place::Local(_) => None,
        };
        self.admit(from_ep, to_ep, &flow, now)
            .map_err(|r| (r, peer_idx))?;
        let packet = packet
            .get(..flow.len)
            .ok_or((DropReason::Malformed, None))?;
        match place {
            Place::Local(port) => {
                let dst = out
                    .get_mut(..packet.len())
                    .ok_or((DropReason::TooLarge, None))?;
                dst.copy_from_slice(packet);
                self.counters.tx.add(packet.len());
                Ok(AppOutcome::Deliver {
                    port,
                    len: packet.len(),
                })
            }
            Place::Peer(pi) => {
                let peer = self
                    .peers
                    .get_mut(usize::from(pi))
                    .ok_or((DropReason::NoRoute, None))?;
                if out.len() < (packet.len() + OVERHEAD).max(MIN_OUT) {
                    return Err((DropReason::TooLarge, Some(pi)));
                }
                let Some(to) = peer.endpoint else {
                    return Err((DropReason::PeerUnreachable, Some(pi)));
                };
                // Mid-rotation, until the new session is up, the retiring one carries the
                // traffic (same peer slot); the new one must be on its way meanwhile
                // (boringtun's timers retry it).
                let retiring = match peer.retiring.as_mut() {
                    Some(r) if peer.tunn.time_since_last_handshake().is_none() && r.usable() => {
                        if let TunnResult::WriteToNetwork(init) =
                            peer.tunn.format_handshake_initiation(scratch, false)
                        {
                            pending.push_back((to, init.to_vec()));
                        }
                        Some(&mut r.tunn)
                    }
                    _ => None,
                };
                if let Some(tunn) = retiring {
                    let len = match tunn.encapsulate(packet, out) {
                        TunnResult::WriteToNetwork(data) => data.len(),
                        TunnResult::Err(e) => return Err((wg_drop(&e), Some(pi))),
                        _ => return Err((DropReason::NoSession, Some(pi))),
                    };
                    self.counters.tx.add(packet.len());
                    peer.counters.tx.add(packet.len());
                    return Ok(AppOutcome::Send(Transmit { to, len }));
                }
                let result = match peer.tunn.encapsulate(packet, out) {
                    // With no session the packet was queued and `data` is an initiation.
                    TunnResult::WriteToNetwork(data) if data.first() == Some(&1) => {
                        peer.queued += 1;
                        return Ok(AppOutcome::Pending(Some(Transmit {
                            to,
                            len: data.len(),
                        })));
                    }
                    TunnResult::WriteToNetwork(data) => AppOutcome::Send(Transmit {
                        to,
                        len: data.len(),
                    }),
                    TunnResult::Done => {
                        peer.queued += 1;
                        return Ok(AppOutcome::Pending(None));
                    }
                    TunnResult::Err(e) => return Err((wg_drop(&e), Some(pi))),
                    TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
                        return Err((DropReason::Malformed, Some(pi)));
                    }
                };
                self.counters.tx.add(packet.len());
                peer.counters.tx.add(packet.len());
                Ok(result)
            }
        }
    }

    /// Policy, both ends: a rule allows `from → to` for this flow (and it gets tracked), or it
    /// answers a tracked flow.
    fn admit(
        &mut self,
        from: EndpointIdx,
        to: EndpointIdx,
        flow: &Flow,
        now: Instant,
    ) -> Result<(), DropReason> {
        if self.policy.allows(from, to, flow) {
            self.conntrack
                .track(flow, now)
                .map_err(|_| DropReason::ConntrackFull)
        } else if self.conntrack.is_reply(flow, now) {
            Ok(())
        } else {
            Err(DropReason::PolicyDenied)
        }
    }

    /// WAN → app, for a datagram already attributed to peer `pi` of this tenant.
    #[expect(
        clippy::too_many_arguments,
        reason = "the buffers belong to the caller"
    )]
    fn inbound(
        &mut self,
        pi: usize,
        retiring: bool,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut [u8],
        pending: &mut VecDeque<(SocketAddr, Vec<u8>)>,
        scratch: &mut [u8],
    ) -> Result<WanOutcome, DropReason> {
        let peer = self.peers.get_mut(pi).ok_or(DropReason::UnknownIndex)?;
        // The retiring session of this very peer slot, or its current one.
        let tunn = if retiring {
            &mut peer.retiring.as_mut().ok_or(DropReason::UnknownIndex)?.tunn
        } else {
            &mut peer.tunn
        };
        let result = tunn.decapsulate(Some(from.ip()), datagram, out);
        // Not every success is authenticated by the peer: a cookie reply (type 3) taken in can be
        // forged by anyone who saw our initiation, and a cookie sent out means boringtun's own
        // rate limiter answered before verifying anything (a replayed initiation does that).
        let (len, is_data, authenticated) = match result {
            TunnResult::Err(e) => return Err(wg_drop(&e)),
            // A keepalive (type 4) decrypted, or a cookie reply taken in.
            TunnResult::Done => (0, false, datagram.first() == Some(&4)),
            // A handshake answered, or a cookie demanded.
            TunnResult::WriteToNetwork(data) => (data.len(), false, data.first() != Some(&3)),
            TunnResult::WriteToTunnelV4(data, _) | TunnResult::WriteToTunnelV6(data, _) => {
                (data.len(), true, true)
            }
        };
        if !is_data && len > 0 && !authenticated {
            self.counters.drops.count(DropReason::HandshakeUnderLoad);
            peer.counters.drops.count(DropReason::HandshakeUnderLoad);
        }
        // Authenticated: the peer may have moved (roaming) or have dialled in for the first time.
        if authenticated && (peer.roaming || peer.endpoint.is_none()) {
            peer.endpoint = Some(from);
        }
        // Data on the new session of a rotated peer: the peer has switched to it.
        if !retiring
            && authenticated
            && datagram.first() == Some(&4)
            && let Some(r) = peer.retiring.as_mut()
        {
            r.new_rx = true;
        }
        if !retiring && authenticated && peer.queued > 0 {
            // A session is up: release what waited for it (tx is counted as it leaves).
            release_queue(peer, &mut self.counters, scratch, pending);
        }
        if !is_data {
            return Ok(if len == 0 {
                WanOutcome::Consumed
            } else {
                WanOutcome::Reply(Transmit { to: from, len })
            });
        }
        let pi = pi as u16;
        let packet = out.get(..len).ok_or(DropReason::Malformed)?;
        let flow = packet::parse(packet).map_err(parse_drop)?;
        // Anti-spoofing, receiver side: the inner source must lie behind this very peer.
        let from_ep = self
            .table
            .lookup(flow.src)
            .filter(|e| {
                self.endpoints
                    .get(usize::from(*e))
                    .is_some_and(|e| e.place == Place::Peer(pi))
            })
            .ok_or(DropReason::SpoofedSource)?;
        // No transit: only local ports receive from the WAN.
        let (to_ep, port) = self
            .table
            .lookup(flow.dst)
            .and_then(|e| match self.endpoints.get(usize::from(e))?.place {
                Place::Local(port) => Some((e, port)),
                Place::Peer(_) => None,
            })
            .ok_or(DropReason::NoRoute)?;
        self.admit(from_ep, to_ep, &flow, now)?;
        self.counters.rx.add(flow.len);
        if let Some(peer) = self.peers.get_mut(usize::from(pi)) {
            peer.counters.rx.add(flow.len);
        }
        Ok(WanOutcome::Deliver {
            port,
            len: flow.len,
        })
    }
}

#[cfg(test)]
mod shard_tests {
    use super::IndexShard;

    #[test]
    fn placed_indices_belong_to_their_worker_and_the_header_says_so() {
        for workers in 1..=12u8 {
            for worker in 0..workers {
                let shard = IndexShard::new(worker, workers).unwrap_or(IndexShard::WHOLE);
                for raw in [
                    0,
                    1,
                    0xff,
                    0x0012_3456,
                    0x00ff_ffff,
                    0x00ab_cdfe,
                    0x0080_0080,
                ] {
                    let index = shard.place(raw);
                    assert!(index <= 0xff_ffff);
                    assert_eq!(index & 0xff_ff00, raw & 0xff_ff00);
                    assert_eq!(IndexShard::index_owner(index, workers), worker);
                    // As boringtun puts it on the wire: index << 8 | a rotating byte.
                    let wire = (index << 8 | 0x5a).to_le_bytes();
                    let mut data = [0u8; 32];
                    data[0] = 4;
                    data[4..8].copy_from_slice(&wire);
                    assert_eq!(IndexShard::owner(&data, workers), Some(worker));
                    data[0] = 3;
                    assert_eq!(IndexShard::owner(&data, workers), Some(worker));
                    let mut response = [0u8; 92];
                    response[0] = 2;
                    response[8..12].copy_from_slice(&wire);
                    assert_eq!(IndexShard::owner(&response, workers), Some(worker));
                }
            }
        }
        assert_eq!(IndexShard::owner(&[1; 148], 2), None);
        assert_eq!(IndexShard::owner(&[4, 0, 0], 2), None);
        assert_eq!(IndexShard::new(2, 2), None);
        assert_eq!(IndexShard::new(0, 0), None);
    }
}
