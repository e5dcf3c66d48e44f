//! An in-memory world: several engines joined by a virtual WAN, driven by a virtual clock.
//!
//! Used by the tests (two and three gateways back to back, attackers on the wire), by the
//! benches and by `corridor demo --in-memory`. No sockets, no threads: datagrams sit in a
//! queue until [`World::run`] hands them to the engine they are addressed to.
//!
//! With the `virtual-clock` feature, [`World::advance`] also moves boringtun's clock (which
//! is thread-local), so rekeys and expiry can be tested in microseconds. Without it, only the
//! engine's notion of time moves and boringtun keeps wall-clock time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ip_network::IpNetwork;

use crate::config::{
    DEFAULT_CONNTRACK_LIMIT, EndpointConfig, EngineConfig, Location, PeerConfig, PortRange,
    Protocol, RuleConfig, SecretKey, TenantConfig,
};
use crate::engine::{
    AppOutcome, ApplyReport, ConfigError, Engine, MAX_PACKET, OVERHEAD, PortId, WanOutcome,
};

/// A datagram on the virtual WAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Sender.
    pub from: SocketAddr,
    /// Receiver.
    pub to: SocketAddr,
    /// Payload.
    pub data: Vec<u8>,
}

/// A packet an engine wrote to one of its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Which node.
    pub node: usize,
    /// Which port.
    pub port: PortId,
    /// The IP packet.
    pub packet: Vec<u8>,
}

/// One gateway in the world.
#[derive(Debug)]
pub struct Node {
    /// A name for messages.
    pub name: String,
    /// Its WAN address.
    pub addr: SocketAddr,
    /// Its engine.
    pub engine: Engine,
}

/// Several engines and the wire between them.
#[derive(Debug)]
pub struct World {
    /// The gateways.
    pub nodes: Vec<Node>,
    wire: VecDeque<Datagram>,
    /// Everything that crossed the wire, in order (for replay attacks); off unless enabled.
    pub captured: Vec<Datagram>,
    /// Record the wire into `captured`.
    pub capture: bool,
    /// Packets delivered to ports, in order.
    pub delivered: Vec<Delivery>,
    /// Datagrams addressed to nobody.
    pub lost: usize,
    /// Datagrams sent on the wire.
    pub sent: usize,
    now: Instant,
    buf: Vec<u8>,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    /// An empty world at the current instant.
    pub fn new() -> Self {
        World {
            nodes: Vec::new(),
            wire: VecDeque::new(),
            captured: Vec::new(),
            capture: false,
            delivered: Vec::new(),
            lost: 0,
            sent: 0,
            now: Instant::now(),
            buf: vec![0; MAX_PACKET + OVERHEAD],
        }
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a gateway and applies its config.
    pub fn add(
        &mut self,
        name: &str,
        addr: SocketAddr,
        config: &EngineConfig,
    ) -> Result<usize, ConfigError> {
        let mut engine = Engine::new();
        engine.apply(config, self.now)?;
        self.nodes.push(Node {
            name: name.to_owned(),
            addr,
            engine,
        });
        let i = self.nodes.len() - 1;
        self.drain(i);
        Ok(i)
    }

    /// Applies a new config to a node.
    pub fn apply(
        &mut self,
        node: usize,
        config: &EngineConfig,
    ) -> Result<ApplyReport, ConfigError> {
        let report = self.nodes[node].engine.apply(config, self.now)?;
        self.drain(node);
        Ok(report)
    }

    /// An app packet read from `port` of `node`. Datagrams go on the wire; call [`World::run`].
    pub fn send_app(&mut self, node: usize, port: PortId, packet: &[u8]) -> AppOutcome {
        let n = &mut self.nodes[node];
        let from = n.addr;
        let outcome = n
            .engine
            .handle_app_packet(port, packet, self.now, &mut self.buf);
        match outcome {
            AppOutcome::Send(t) | AppOutcome::Pending(Some(t)) => {
                let data = self.buf[..t.len].to_vec();
                self.put(from, t.to, data);
            }
            AppOutcome::Deliver { port, len } => self.delivered.push(Delivery {
                node,
                port,
                packet: self.buf[..len].to_vec(),
            }),
            AppOutcome::Pending(None) | AppOutcome::Drop(_) => {}
        }
        self.drain(node);
        outcome
    }

    /// Puts a datagram on the wire as if `from` had sent it (attackers use this too).
    pub fn put(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.sent += 1;
        let d = Datagram { from, to, data };
        if self.capture {
            self.captured.push(d.clone());
        }
        self.wire.push_back(d);
    }

    /// Hands one datagram straight to the node it is addressed to; returns what it did.
    pub fn deliver_datagram(&mut self, d: &Datagram) -> Option<WanOutcome> {
        let node = self.nodes.iter().position(|n| n.addr == d.to)?;
        let n = &mut self.nodes[node];
        let me = n.addr;
        let outcome = n
            .engine
            .handle_wan_datagram(d.from, &d.data, self.now, &mut self.buf);
        match outcome {
            WanOutcome::Deliver { port, len } => self.delivered.push(Delivery {
                node,
                port,
                packet: self.buf[..len].to_vec(),
            }),
            WanOutcome::Reply(t) => {
                let data = self.buf[..t.len].to_vec();
                self.put(me, t.to, data);
            }
            WanOutcome::Consumed | WanOutcome::Drop(_) => {}
        }
        self.drain(node);
        Some(outcome)
    }

    /// Carries datagrams until the wire is quiet (bounded, in case two engines ping-pong).
    pub fn run(&mut self) {
        for _ in 0..100_000 {
            let Some(d) = self.wire.pop_front() else {
                return;
            };
            if self.deliver_datagram(&d).is_none() {
                self.lost += 1;
            }
        }
    }

    /// Drops everything on the wire (a lossy moment).
    pub fn lose_wire(&mut self) -> usize {
        let n = self.wire.len();
        self.wire.clear();
        n
    }

    /// Moves time forward in steps of at most one engine tick, running timers and the wire.
    pub fn advance(&mut self, by: Duration) {
        let step = crate::engine::TICK;
        let mut left = by;
        while !left.is_zero() {
            let d = left.min(step);
            left -= d;
            self.now += d;
            #[cfg(feature = "virtual-clock")]
            mock_instant::MockClock::advance(d);
            for i in 0..self.nodes.len() {
                self.nodes[i].engine.handle_timeout(self.now);
                self.drain(i);
            }
            self.run();
        }
    }

    /// Takes what has been delivered so far.
    pub fn take_delivered(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.delivered)
    }

    fn drain(&mut self, node: usize) {
        let from = self.nodes[node].addr;
        while let Some(t) = self.nodes[node].engine.poll_transmit(&mut self.buf) {
            let data = self.buf[..t.len].to_vec();
            self.put(from, t.to, data);
        }
    }
}

/// A whole deployment described once, compiled per gateway: the in-memory twin of the
/// policy files, for tests and benches that must not depend on the control plane.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// Gateways: name and WAN address (`None`: dials out only).
    pub gateways: Vec<(String, Option<SocketAddr>)>,
    /// Tenants.
    pub tenants: Vec<TenantSpec>,
}

/// A tenant of a [`Topology`].
#[derive(Debug, Clone)]
pub struct TenantSpec {
    /// Name.
    pub name: String,
    /// Endpoints: name, gateway index, prefixes.
    pub endpoints: Vec<(String, usize, Vec<IpNetwork>)>,
    /// Rules: from, to (endpoint names), protocol, port ranges.
    pub rules: Vec<(String, String, Protocol, Vec<PortRange>)>,
    /// Keys per gateway index (generated when the tenant is added).
    pub keys: Vec<SecretKey>,
    /// Conntrack limit.
    pub conntrack_limit: usize,
}

impl TenantSpec {
    /// A tenant with fresh keys for `gateways` gateways.
    pub fn new(name: &str, gateways: usize) -> Self {
        TenantSpec {
            name: name.to_owned(),
            endpoints: Vec::new(),
            rules: Vec::new(),
            keys: (0..gateways).map(|_| SecretKey::generate()).collect(),
            conntrack_limit: DEFAULT_CONNTRACK_LIMIT,
        }
    }

    /// Adds an endpoint.
    pub fn endpoint(mut self, name: &str, gateway: usize, prefixes: &[&str]) -> Self {
        let prefixes = prefixes
            .iter()
            .filter_map(|p| p.parse::<IpNetwork>().ok())
            .collect();
        self.endpoints.push((name.to_owned(), gateway, prefixes));
        self
    }

    /// Adds a rule.
    pub fn allow(mut self, from: &str, to: &str, protocol: Protocol, ports: &[(u16, u16)]) -> Self {
        let ports = ports
            .iter()
            .map(|(start, end)| PortRange {
                start: *start,
                end: *end,
            })
            .collect();
        self.rules
            .push((from.to_owned(), to.to_owned(), protocol, ports));
        self
    }
}

impl Topology {
    /// The engine config of gateway `g`: tenants with an endpoint there, one peer per other
    /// gateway involved in a rule with a local endpoint.
    pub fn compile(&self, g: usize) -> EngineConfig {
        let mut tenants = Vec::new();
        for t in &self.tenants {
            if !t.endpoints.iter().any(|e| e.1 == g) {
                continue;
            }
            let ep_index = |name: &str| t.endpoints.iter().position(|e| e.0 == name);
            let relevant: Vec<_> = t
                .rules
                .iter()
                .filter_map(|r| Some((ep_index(&r.0)?, ep_index(&r.1)?, r)))
                .filter(|(a, b, _)| t.endpoints[*a].1 == g || t.endpoints[*b].1 == g)
                .collect();
            let mut peers: Vec<usize> = Vec::new();
            let mut included: Vec<usize> = Vec::new();
            for (i, e) in t.endpoints.iter().enumerate() {
                let involved = e.1 == g || relevant.iter().any(|(a, b, _)| *a == i || *b == i);
                if involved {
                    included.push(i);
                    if e.1 != g && !peers.contains(&e.1) {
                        peers.push(e.1);
                    }
                }
            }
            let my_endpoint = self.gateways[g].1;
            let endpoints = included
                .iter()
                .map(|&i| {
                    let (name, gw, prefixes) = &t.endpoints[i];
                    EndpointConfig {
                        name: name.clone(),
                        location: if *gw == g {
                            Location::Local
                        } else {
                            Location::Peer(peers.iter().position(|p| p == gw).unwrap_or(0))
                        },
                        prefixes: prefixes.clone(),
                    }
                })
                .collect();
            let rules = relevant
                .iter()
                .filter_map(|(a, b, r)| {
                    Some(RuleConfig {
                        from: included.iter().position(|i| i == a)?,
                        to: included.iter().position(|i| i == b)?,
                        protocol: r.2,
                        ports: r.3.clone(),
                    })
                })
                .collect();
            tenants.push(TenantConfig {
                name: t.name.clone(),
                private_key: t.keys[g].clone(),
                endpoints,
                peers: peers
                    .iter()
                    .map(|&p| PeerConfig {
                        name: self.gateways[p].0.clone(),
                        public_key: t.keys[p].public_key(),
                        preshared_key: None,
                        endpoint: self.gateways[p].1,
                        persistent_keepalive: if my_endpoint.is_none() {
                            Some(25)
                        } else {
                            None
                        },
                        roaming: true,
                    })
                    .collect(),
                rules,
                conntrack_limit: t.conntrack_limit,
            });
        }
        EngineConfig { tenants }
    }

    /// A world with one node per gateway (dial-out gateways get a made-up address).
    pub fn world(&self) -> Result<World, ConfigError> {
        let mut w = World::new();
        for (i, (name, addr)) in self.gateways.iter().enumerate() {
            let addr = addr.unwrap_or_else(|| SocketAddr::from(([100, 64, 0, i as u8], 40000)));
            w.add(name, addr, &self.compile(i))?;
        }
        Ok(w)
    }
}

/// Builds an IP packet for tests, benches and the demo: TCP (6) or UDP (17) with ports, or
/// ICMP (1) / ICMPv6 (58) with `sport` as the message type and `dport` as the echo identifier.
/// Checksums are left zero: the engine does not read them. `None` for mixed address families.
pub fn ip_packet(
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Option<Vec<u8>> {
    use std::net::IpAddr;
    let mut l4 = Vec::with_capacity(20 + payload.len());
    match proto {
        6 => {
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&[0; 8]);
            l4.extend_from_slice(&[5 << 4, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        }
        17 => {
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
            l4.extend_from_slice(&len.to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        1 | 58 => {
            l4.extend_from_slice(&[u8::try_from(sport).unwrap_or(u8::MAX), 0, 0, 0]);
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&[0, 1]);
        }
        _ => {}
    }
    l4.extend_from_slice(payload);
    let l4_len = u16::try_from(l4.len()).unwrap_or(u16::MAX);
    let mut p = Vec::with_capacity(40 + l4.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&l4_len.saturating_add(20).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&l4_len.to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => return None,
    }
    p.extend_from_slice(&l4);
    Some(p)
}
