//! The isolation property, by brute force: random tenants with colliding address spaces,
//! random endpoints on 2–3 gateways, random policies, and millions of random packets injected
//! at random app ports. A model of the policy (with its own connection tracking) predicts the
//! fate of every packet; the engines must agree exactly, and above all:
//!
//! - a delivered packet lands on a port of the tenant it was sent from, unchanged;
//! - its source belongs to the endpoint behind the sending port;
//! - its flow is allowed by that tenant's policy, or answers a flow that was;
//! - everything else is dropped at the sender and counted there (never unattributed);
//! - in some cases one gateway is compromised (its policy widened to "anything goes"): what it
//!   lets out toward honest gateways is judged by them exactly as if it had been honest.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use dataplane::config::{Location, Protocol, RuleConfig};
use dataplane::engine::{AppOutcome, DropReason, ICMP_IDLE, PortId, TCP_IDLE, UDP_IDLE};
use dataplane::sim::{TenantSpec, Topology, World};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

/// Packets per case; with 256 cases, about two million in all.
const PACKETS_PER_CASE: usize = 8_000;
const CASES: u32 = 256;
/// The shared pool is 10.0.0.0/24 and fd00::/120, cut in 8 blocks of 32 addresses; every
/// endpoint owns one block (both families). Tenants draw blocks independently, so they collide.
const BLOCKS: u8 = 8;
const PORTS: [u16; 6] = [22, 53, 80, 443, 5432, 8080];

/// (from, to, protocol, port ranges) of one rule.
type RuleGen = (usize, usize, Protocol, Vec<(u16, u16)>);

#[derive(Debug, Clone)]
struct TenantGen {
    /// (gateway, block) per endpoint; blocks distinct within the tenant.
    endpoints: Vec<(usize, u8)>,
    /// (from, to, protocol, ports) with endpoint indices taken modulo the endpoint count.
    rules: Vec<RuleGen>,
}

#[derive(Debug, Clone)]
struct Case {
    gateways: usize,
    /// Gateway 0 only dials out (no public address).
    dial_out: bool,
    tenants: Vec<TenantGen>,
    /// A gateway whose config was widened behind the operator's back: every endpoint pair
    /// with a local side allowed, any protocol. The other gateways must hold the line.
    compromised: Option<usize>,
    seed: u64,
}

fn rule_gen() -> impl Strategy<Value = RuleGen> {
    let ports = prop_oneof![
        Just(vec![]),
        proptest::sample::select(PORTS.to_vec()).prop_map(|p| vec![(p, p)]),
        Just(vec![(50, 100)]),
        Just(vec![(22, 22), (5000, 9000)]),
    ];
    (
        0usize..4,
        1usize..4,
        prop_oneof![
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Icmp),
            Just(Protocol::Any)
        ],
        ports,
    )
        .prop_map(|(from, delta, proto, ports)| {
            let ports = match proto {
                Protocol::Icmp | Protocol::Any => vec![],
                _ => ports,
            };
            (from, delta, proto, ports)
        })
}

fn tenant_gen(gateways: usize) -> impl Strategy<Value = TenantGen> {
    (
        2usize..=4,
        Just((0..BLOCKS).collect::<Vec<u8>>()).prop_shuffle(),
        proptest::collection::vec(0..gateways, 4),
        proptest::collection::vec(rule_gen(), 0..7),
    )
        .prop_map(|(n, blocks, gws, rules)| TenantGen {
            endpoints: (0..n).map(|i| (gws[i], blocks[i])).collect(),
            rules: rules
                .into_iter()
                .map(|(from, delta, p, ports)| {
                    let from = from % n;
                    // `to` differs from `from`.
                    let to = (from + 1 + delta % (n - 1)) % n;
                    (from, to, p, ports)
                })
                .collect(),
        })
}

fn case_gen() -> impl Strategy<Value = Case> {
    (2usize..=3, any::<bool>(), any::<u64>()).prop_flat_map(|(gateways, dial_out, seed)| {
        (
            proptest::collection::vec(tenant_gen(gateways), 2..=4),
            proptest::option::weighted(0.4, 0..gateways),
        )
            .prop_map(move |(tenants, compromised)| Case {
                gateways,
                dial_out,
                tenants,
                compromised,
                seed,
            })
    })
}

/// splitmix64: the packet stream is drawn from the case's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    fn port(&mut self) -> u16 {
        if self.pct(70) {
            PORTS[self.below(PORTS.len() as u64) as usize]
        } else {
            self.next() as u16
        }
    }
}

/// A packet as the test thinks of it; for ICMP `a` is the type and `b` the echo id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pkt {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    a: u16,
    b: u16,
}

fn icmp_proto(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 1 } else { 58 }
}

fn build(p: &Pkt, seq: u64) -> Vec<u8> {
    let payload = seq.to_be_bytes();
    let mut l4 = Vec::with_capacity(28);
    match p.proto {
        6 => {
            l4.extend_from_slice(&p.a.to_be_bytes());
            l4.extend_from_slice(&p.b.to_be_bytes());
            l4.extend_from_slice(&[0; 8]);
            l4.push(5 << 4);
            l4.extend_from_slice(&[0x18, 0xff, 0xff, 0, 0, 0, 0]);
        }
        17 => {
            l4.extend_from_slice(&p.a.to_be_bytes());
            l4.extend_from_slice(&p.b.to_be_bytes());
            l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        1 | 58 => {
            l4.push(p.a as u8);
            l4.push(0);
            l4.extend_from_slice(&[0, 0]);
            l4.extend_from_slice(&p.b.to_be_bytes());
            l4.extend_from_slice(&[0, 1]);
        }
        _ => {}
    }
    l4.extend_from_slice(&payload);
    match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut v = vec![0x45, 0];
            v.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            v.extend_from_slice(&[0, 0, 0x40, 0, 64, p.proto, 0, 0]);
            v.extend_from_slice(&s.octets());
            v.extend_from_slice(&d.octets());
            v.extend_from_slice(&l4);
            v
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut v = vec![0x60, 0, 0, 0];
            v.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            v.push(p.proto);
            v.push(64);
            v.extend_from_slice(&s.octets());
            v.extend_from_slice(&d.octets());
            v.extend_from_slice(&l4);
            v
        }
        _ => unreachable!("families are never mixed"),
    }
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn v6(last: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(last)))
}

fn in_block(block: u8, r: u8, six: bool) -> IpAddr {
    let last = block * 32 + r % 32;
    if six { v6(last) } else { v4(last) }
}

/// The block an address falls in, if it lies in the shared pool.
fn block_of(addr: IpAddr) -> Option<u8> {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            (o[..3] == [10, 0, 0]).then_some(o[3] / 32)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            (s[..7] == [0xfd00, 0, 0, 0, 0, 0, 0] && s[7] < 256).then_some((s[7] / 32) as u8)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ports { sport: u16, dport: u16 },
    EchoRequest(u16),
    EchoReply(u16),
    IcmpOther,
    Other,
}

fn kind(p: &Pkt) -> Kind {
    match p.proto {
        6 | 17 => Kind::Ports {
            sport: p.a,
            dport: p.b,
        },
        1 | 58 => match (p.proto, p.a) {
            (1, 8) | (58, 128) => Kind::EchoRequest(p.b),
            (1, 0) | (58, 129) => Kind::EchoReply(p.b),
            _ => Kind::IcmpOther,
        },
        _ => Kind::Other,
    }
}

type Key = (u8, IpAddr, IpAddr, u16, u16);

fn opener_key(p: &Pkt) -> Option<Key> {
    let (a, b) = match kind(p) {
        Kind::Ports { sport, dport } => (sport, dport),
        Kind::EchoRequest(id) => (id, 0),
        Kind::Other => (0, 0),
        Kind::EchoReply(_) | Kind::IcmpOther => return None,
    };
    Some((p.proto, p.src, p.dst, a, b))
}

fn reply_key(p: &Pkt) -> Option<Key> {
    let (a, b) = match kind(p) {
        Kind::Ports { sport, dport } => (dport, sport),
        Kind::EchoReply(id) => (id, 0),
        Kind::Other => (0, 0),
        Kind::EchoRequest(_) | Kind::IcmpOther => return None,
    };
    Some((p.proto, p.dst, p.src, a, b))
}

fn rule_allows(proto: Protocol, ports: &[(u16, u16)], p: &Pkt) -> bool {
    let port_ok = |d: u16| ports.is_empty() || ports.iter().any(|(s, e)| *s <= d && d <= *e);
    match (proto, kind(p)) {
        (Protocol::Any, _) => true,
        (Protocol::Tcp, Kind::Ports { dport, .. }) => p.proto == 6 && port_ok(dport),
        (Protocol::Udp, Kind::Ports { dport, .. }) => p.proto == 17 && port_ok(dport),
        (Protocol::Icmp, _) => p.proto == 1 || p.proto == 58,
        _ => false,
    }
}

fn idle(proto: u8) -> Duration {
    match proto {
        6 => TCP_IDLE,
        1 | 58 => ICMP_IDLE,
        _ => UDP_IDLE,
    }
}

/// What becomes of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Delivered to this endpoint of the sending tenant.
    Deliver(usize),
    /// Dropped and counted by the sending gateway.
    SenderDrop(DropReason),
    /// Sent by a compromised gateway, dropped and counted (PolicyDenied) by the receiver.
    ReceiverDrop,
}

/// The model: what each tenant allows, and what it has seen allowed (until when).
struct Model<'a> {
    case: &'a Case,
    tracked: Vec<HashMap<Key, Instant>>,
}

impl Model<'_> {
    fn owner(&self, t: usize, addr: IpAddr) -> Option<usize> {
        let b = block_of(addr)?;
        self.case.tenants[t].endpoints.iter().position(|e| e.1 == b)
    }

    /// Whether endpoint `ep` of tenant `t` is in gateway `g`'s table (as Topology compiles it).
    fn included(&self, t: usize, g: usize, ep: usize) -> bool {
        let tg = &self.case.tenants[t];
        tg.endpoints[ep].0 == g
            || tg.rules.iter().any(|r| {
                (r.0 == ep || r.1 == ep) && (tg.endpoints[r.0].0 == g || tg.endpoints[r.1].0 == g)
            })
    }

    fn allowed(&self, t: usize, from: usize, to: usize, p: &Pkt) -> bool {
        self.case.tenants[t]
            .rules
            .iter()
            .any(|r| r.0 == from && r.1 == to && rule_allows(r.2, &r.3, p))
    }

    /// Whether `p` answers a live tracked flow of tenant `t`.
    fn is_reply(&self, t: usize, p: &Pkt, now: Instant) -> bool {
        reply_key(p)
            .and_then(|k| self.tracked[t].get(&k))
            .is_some_and(|exp| *exp > now)
    }

    /// Where a packet sent from (tenant t, endpoint from) must end up, tracking as the engine
    /// does. The compromised gateway's own policy lets everything out (and between its own
    /// ports, that is its business); an honest receiver then decides.
    fn judge(&mut self, t: usize, from: usize, p: &Pkt, now: Instant) -> Fate {
        let g = self.case.tenants[t].endpoints[from].0;
        let compromised = self.case.compromised == Some(g);
        if self.owner(t, p.src) != Some(from) {
            return Fate::SenderDrop(DropReason::SpoofedSource);
        }
        let Some(to) = self
            .owner(t, p.dst)
            .filter(|to| *to != from && self.included(t, g, *to))
        else {
            return Fate::SenderDrop(DropReason::NoRoute);
        };
        if compromised && self.case.tenants[t].endpoints[to].0 == g {
            return Fate::Deliver(to);
        }
        if self.allowed(t, from, to, p) {
            if let Some(k) = opener_key(p) {
                self.tracked[t].insert(k, now + idle(p.proto));
            }
            Fate::Deliver(to)
        } else if self.is_reply(t, p, now) {
            if let Some(exp) = reply_key(p).and_then(|k| self.tracked[t].get_mut(&k)) {
                *exp = now + idle(p.proto);
            }
            Fate::Deliver(to)
        } else if compromised {
            Fate::ReceiverDrop
        } else {
            Fate::SenderDrop(DropReason::PolicyDenied)
        }
    }
}

fn topology(case: &Case) -> Topology {
    let gateways = (0..case.gateways)
        .map(|g| {
            let addr = (g > 0 || !case.dial_out)
                .then(|| SocketAddr::from(([192, 0, 2, g as u8 + 1], 51820)));
            (format!("gw{g}"), addr)
        })
        .collect();
    let tenants = case
        .tenants
        .iter()
        .enumerate()
        .map(|(ti, tg)| {
            let mut spec = TenantSpec::new(&format!("t{ti}"), case.gateways);
            for (ei, (gw, block)) in tg.endpoints.iter().enumerate() {
                let p4 = format!("{}/27", in_block(*block, 0, false));
                let p6 = format!("{}/123", in_block(*block, 0, true));
                spec = spec.endpoint(&format!("e{ei}"), *gw, &[&p4, &p6]);
            }
            for (from, to, proto, ports) in &tg.rules {
                spec = spec.allow(&format!("e{from}"), &format!("e{to}"), *proto, ports);
            }
            spec
        })
        .collect();
    Topology { gateways, tenants }
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    packets: u64,
    delivered: u64,
    replies: u64,
    virtual_ms: u64,
    receiver_drops: u64,
}

/// Where a port leads: (node, port) → (tenant, endpoint).
type PortMap = HashMap<(usize, PortId), (usize, usize)>;

fn port_map(w: &World) -> PortMap {
    let mut map = HashMap::new();
    for (n, node) in w.nodes.iter().enumerate() {
        for (port, tenant, ep) in node.engine.ports() {
            let t = tenant[1..].parse().unwrap();
            let e = ep[1..].parse().unwrap();
            map.insert((n, port), (t, e));
        }
    }
    map
}

fn run_case(case: &Case) -> Result<Tally, TestCaseError> {
    let topo = topology(case);
    let mut w = topo
        .world()
        .map_err(|e| TestCaseError::fail(format!("config refused: {e}")))?;
    w.run();
    w.take_delivered();
    if let Some(c) = case.compromised {
        let mut cfg = topo.compile(c);
        for tc in &mut cfg.tenants {
            let n = tc.endpoints.len();
            for i in 0..n {
                for j in 0..n {
                    let local = |e: usize| tc.endpoints[e].location == Location::Local;
                    if i != j && (local(i) || local(j)) {
                        tc.rules.push(RuleConfig {
                            from: i,
                            to: j,
                            protocol: Protocol::Any,
                            ports: vec![],
                        });
                    }
                }
            }
        }
        let r = w
            .apply(c, &cfg)
            .map_err(|e| TestCaseError::fail(format!("widened config refused: {e}")))?;
        prop_assert_eq!(r.sessions_dropped + r.sessions_new, 0);
    }
    let ports = port_map(&w);
    let mut senders: Vec<(usize, PortId, usize, usize)> = ports
        .iter()
        .map(|(&(n, p), &(t, e))| (n, p, t, e))
        .collect();
    senders.sort();
    let mut model = Model {
        case,
        tracked: vec![HashMap::new(); case.tenants.len()],
    };
    let mut rng = Rng(case.seed);
    let mut recent: VecDeque<(Pkt, usize, PortId, usize, usize)> = VecDeque::new();
    let mut tally = Tally::default();
    let mut expected_drops = 0u64;

    for seq in 0..PACKETS_PER_CASE as u64 {
        // Now and then the clock jumps (0–40 s): keepalives, rekeys, session and conntrack
        // expiry all happen in between, and must neither deliver nor lose anything.
        if rng.pct(1) && rng.pct(50) {
            let jump = Duration::from_millis(250 * rng.below(161));
            w.advance(jump);
            tally.virtual_ms += jump.as_millis() as u64;
            let spontaneous = w.take_delivered();
            prop_assert!(
                spontaneous.is_empty(),
                "delivered while idle: {:?}",
                spontaneous
            );
        }
        // Either answer something delivered earlier (from where it landed), or send anew.
        let reply = !recent.is_empty() && rng.pct(30);
        let (node, port, t, from, pkt) = if reply {
            let (orig, n, p, t, e) = recent[rng.below(recent.len() as u64) as usize];
            let mut pkt = Pkt {
                src: orig.dst,
                dst: orig.src,
                ..orig
            };
            match kind(&orig) {
                Kind::Ports { sport, dport } => {
                    pkt.a = dport;
                    pkt.b = sport;
                }
                Kind::EchoRequest(_) => pkt.a = if orig.proto == 1 { 0 } else { 129 },
                _ => {}
            }
            if rng.pct(15) {
                pkt.b = rng.port(); // a near miss
            }
            tally.replies += 1;
            (n, p, t, e, pkt)
        } else {
            let (n, p, t, e) = senders[rng.below(senders.len() as u64) as usize];
            let six = rng.pct(30);
            let own = case.tenants[t].endpoints[e].1;
            let r = rng.next() as u8;
            let src = match rng.below(100) {
                0..75 => in_block(own, r, six),
                75..95 => in_block(rng.below(u64::from(BLOCKS)) as u8, r, six),
                _ if six => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, u16::from(r))),
                _ => IpAddr::V4(Ipv4Addr::new(10, 0, 1, r)),
            };
            let r = rng.next() as u8;
            let dst = match rng.below(100) {
                0..65 => {
                    let eps = &case.tenants[t].endpoints;
                    in_block(eps[rng.below(eps.len() as u64) as usize].1, r, six)
                }
                65..92 => in_block(rng.below(u64::from(BLOCKS)) as u8, r, six),
                _ if six => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, u16::from(r))),
                _ => IpAddr::V4(Ipv4Addr::new(192, 168, 1, r)),
            };
            let (proto, a, b) = match rng.below(100) {
                0..35 => (6, rng.port(), rng.port()),
                35..70 => (17, rng.port(), rng.port()),
                70..92 => {
                    let icmp = icmp_proto(src);
                    let ty = match (icmp, rng.below(10)) {
                        (1, 0..7) => 8,
                        (1, 7..9) => 0,
                        (58, 0..7) => 128,
                        (58, 7..9) => 129,
                        (1, _) => 3,
                        _ => 1,
                    };
                    (icmp, ty, rng.below(8) as u16)
                }
                _ => (47, 0, 0),
            };
            (
                n,
                p,
                t,
                e,
                Pkt {
                    src,
                    dst,
                    proto,
                    a,
                    b,
                },
            )
        };
        let mut bytes = build(&pkt, seq);
        // Now and then, a packet the engine cannot classify.
        let garbage = rng.pct(2);
        let expect = if garbage {
            if rng.pct(50) {
                bytes.truncate(rng.below(bytes.len() as u64) as usize);
                Fate::SenderDrop(DropReason::Malformed)
            } else if pkt.src.is_ipv4() {
                bytes[6] |= 0x20; // more fragments
                Fate::SenderDrop(DropReason::Fragment)
            } else {
                bytes[0] = 0x50; // IP version 5
                Fate::SenderDrop(DropReason::Malformed)
            }
        } else {
            model.judge(t, from, &pkt, w.now())
        };

        let outcome = w.send_app(node, port, &bytes);
        w.run();
        let delivered = w.take_delivered();
        tally.packets += 1;

        // The invariants, stated on their own before the exact comparison.
        for d in &delivered {
            let (dt, de) = ports[&(d.node, d.port)];
            prop_assert_eq!(dt, t, "crossed tenants: {:?} from t{} to {:?}", pkt, t, d);
            prop_assert_eq!(&d.packet, &bytes, "changed in transit");
            prop_assert!(!garbage, "garbage delivered");
            prop_assert_eq!(
                model.owner(t, pkt.src),
                Some(from),
                "spoofed source delivered"
            );
            let replying = model.is_reply(t, &pkt, w.now());
            let own_business = case.compromised == Some(node) && d.node == node;
            prop_assert!(
                model.allowed(t, from, de, &pkt) || replying || own_business,
                "{:?} from t{}/e{} to e{} is neither allowed nor a reply",
                pkt,
                t,
                from,
                de
            );
        }
        match expect {
            Fate::Deliver(to) => {
                let (to_gw, _) = case.tenants[t].endpoints[to];
                prop_assert!(
                    matches!(
                        outcome,
                        AppOutcome::Send(_) | AppOutcome::Pending(_) | AppOutcome::Deliver { .. }
                    ),
                    "{:?} from t{}/e{}: {:?}",
                    pkt,
                    t,
                    from,
                    outcome
                );
                prop_assert_eq!(delivered.len(), 1, "{:?} from t{}/e{} lost", pkt, t, from);
                let d = &delivered[0];
                prop_assert_eq!(d.node, to_gw);
                prop_assert_eq!(ports[&(d.node, d.port)], (t, to));
                tally.delivered += 1;
                if recent.len() == 64 {
                    recent.pop_front();
                }
                recent.push_back((pkt, d.node, d.port, t, to));
            }
            Fate::ReceiverDrop => {
                prop_assert!(
                    matches!(outcome, AppOutcome::Send(_) | AppOutcome::Pending(_)),
                    "{:?}",
                    outcome
                );
                prop_assert!(delivered.is_empty(), "a widened sender got through");
                expected_drops += 1;
                tally.receiver_drops += 1;
            }
            Fate::SenderDrop(reason) => {
                prop_assert_eq!(
                    outcome,
                    AppOutcome::Drop(reason),
                    "{:?} from t{}/e{} (garbage: {})",
                    pkt,
                    t,
                    from,
                    garbage
                );
                prop_assert!(delivered.is_empty());
                expected_drops += 1;
            }
        }
    }

    // Every drop was counted in a tenant (at the sender, or at the receiver for what a
    // compromised gateway let out); none unattributed.
    let mut counted = 0;
    for n in 0..w.nodes.len() {
        let s = w.nodes[n].engine.stats();
        prop_assert_eq!(
            s.unattributed.total(),
            0,
            "node {}: {:?}",
            n,
            s.unattributed
        );
        counted += s
            .tenants
            .iter()
            .map(|t| t.counters.drops.total())
            .sum::<u64>();
    }
    prop_assert_eq!(counted, expected_drops);
    prop_assert_eq!(w.lost, 0);
    Ok(tally)
}

#[test]
fn no_packet_ever_crosses_tenants() {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let total = Cell::new(Tally::default());
    let started = Instant::now();
    let result = runner.run(&case_gen(), |case| {
        let t = run_case(&case)?;
        let mut all = total.get();
        all.packets += t.packets;
        all.delivered += t.delivered;
        all.replies += t.replies;
        all.virtual_ms += t.virtual_ms;
        all.receiver_drops += t.receiver_drops;
        total.set(all);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let all = total.get();
    eprintln!(
        "isolation_prop: {} cases, {} packets ({} delivered, {} replies tried, {} stopped by \
         the receiver), {} s of virtual time, in {:.1?}",
        CASES,
        all.packets,
        all.delivered,
        all.replies,
        all.receiver_drops,
        all.virtual_ms / 1000,
        started.elapsed()
    );
    assert!(all.packets >= 1_000_000, "{all:?}");
    // Not vacuous: a good share of the traffic was allowed and delivered.
    assert!(all.delivered * 10 >= all.packets, "{all:?}");
}
