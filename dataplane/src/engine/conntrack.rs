//! Per-tenant connection tracking, bounded: replies to an allowed flow pass, nothing else does.
//!
//! One table per tenant with its own limit, so a tenant that opens (or is flooded with) many
//! flows fills only its own table. Entries are keyed by the flow as its opener sent it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::packet::{Flow, FlowKind, PROTO_TCP, PROTO_UDP};

/// Idle timeouts. TCP is tracked without its state machine, so its timeout is the idle limit
/// of an established connection; keep TCP keepalives under it.
pub const TCP_IDLE: Duration = Duration::from_secs(1800);
/// Idle timeout of UDP and other non-ICMP flows.
pub const UDP_IDLE: Duration = Duration::from_secs(180);
/// Idle timeout of ICMP echo flows.
pub const ICMP_IDLE: Duration = Duration::from_secs(30);
/// When full, expired entries are swept at most this often (a sweep is O(table)).
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    proto: u8,
    opener: IpAddr,
    responder: IpAddr,
    opener_port: u16,
    responder_port: u16,
}

impl FlowKey {
    pub(crate) fn opener(&self) -> IpAddr {
        self.opener
    }
    pub(crate) fn responder(&self) -> IpAddr {
        self.responder
    }

    /// The opening packet's flow, as far as the policy looks at it.
    pub(crate) fn as_flow(&self) -> Flow {
        let kind = match self.proto {
            PROTO_TCP | PROTO_UDP => FlowKind::Ports {
                sport: self.opener_port,
                dport: self.responder_port,
            },
            super::packet::PROTO_ICMP | super::packet::PROTO_ICMPV6 => FlowKind::EchoRequest {
                id: self.opener_port,
            },
            _ => FlowKind::Other,
        };
        Flow {
            src: self.opener,
            dst: self.responder,
            proto: self.proto,
            kind,
            len: 0,
        }
    }
}

/// The key under which `flow` is tracked when it opens a connection; `None` for packets that
/// never open one (echo replies, ICMP errors).
pub(crate) fn opener_key(flow: &Flow) -> Option<FlowKey> {
    let (a, b) = match flow.kind {
        FlowKind::Ports { sport, dport } => (sport, dport),
        FlowKind::EchoRequest { id } => (id, 0),
        FlowKind::Other => (0, 0),
        FlowKind::EchoReply { .. } | FlowKind::IcmpOther => return None,
    };
    Some(FlowKey {
        proto: flow.proto,
        opener: flow.src,
        responder: flow.dst,
        opener_port: a,
        responder_port: b,
    })
}

/// The key of the flow that `flow` would be a reply to.
fn reply_key(flow: &Flow) -> Option<FlowKey> {
    let (a, b) = match flow.kind {
        FlowKind::Ports { sport, dport } => (dport, sport),
        FlowKind::EchoReply { id } => (id, 0),
        FlowKind::Other => (0, 0),
        FlowKind::EchoRequest { .. } | FlowKind::IcmpOther => return None,
    };
    Some(FlowKey {
        proto: flow.proto,
        opener: flow.dst,
        responder: flow.src,
        opener_port: a,
        responder_port: b,
    })
}

fn idle_timeout(proto: u8) -> Duration {
    match proto {
        PROTO_TCP => TCP_IDLE,
        PROTO_UDP => UDP_IDLE,
        super::packet::PROTO_ICMP | super::packet::PROTO_ICMPV6 => ICMP_IDLE,
        _ => UDP_IDLE,
    }
}

/// The table is full of live entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

#[derive(Debug)]
pub(crate) struct Conntrack {
    entries: HashMap<FlowKey, Instant>,
    limit: usize,
    last_full_sweep: Option<Instant>,
}

impl Conntrack {
    pub(crate) fn new(limit: usize) -> Self {
        Conntrack {
            entries: HashMap::new(),
            limit,
            last_full_sweep: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Records (or refreshes) a flow that a rule allowed.
    pub(crate) fn track(&mut self, flow: &Flow, now: Instant) -> Result<(), Full> {
        let Some(key) = opener_key(flow) else {
            return Ok(());
        };
        let expires = now + idle_timeout(flow.proto);
        if let Some(slot) = self.entries.get_mut(&key) {
            *slot = expires;
            return Ok(());
        }
        if self.entries.len() >= self.limit {
            let due = self
                .last_full_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= FULL_SWEEP_INTERVAL);
            if due {
                self.last_full_sweep = Some(now);
                self.sweep(now);
            }
            if self.entries.len() >= self.limit {
                return Err(Full);
            }
        }
        self.entries.insert(key, expires);
        Ok(())
    }

    /// Whether `flow` answers a live tracked flow; refreshes it if so.
    pub(crate) fn is_reply(&mut self, flow: &Flow, now: Instant) -> bool {
        let Some(key) = reply_key(flow) else {
            return false;
        };
        match self.entries.get_mut(&key) {
            Some(expires) if *expires > now => {
                *expires = now + idle_timeout(flow.proto);
                true
            }
            _ => false,
        }
    }

    /// Forgets expired entries.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, expires| *expires > now);
    }

    /// Keeps only the entries `keep` approves (used when the policy changes).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&FlowKey) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::packet::{PROTO_ICMP, build, parse};

    fn flow(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Flow {
        parse(&build::packet(
            src.parse().unwrap(),
            dst.parse().unwrap(),
            proto,
            sport,
            dport,
            b"",
        ))
        .unwrap()
    }

    #[test]
    fn replies_pass_only_for_tracked_flows() {
        let now = Instant::now();
        let mut ct = Conntrack::new(10);
        let out = flow("10.0.0.1", "10.0.0.2", PROTO_TCP, 40000, 443);
        let back = flow("10.0.0.2", "10.0.0.1", PROTO_TCP, 443, 40000);
        let other = flow("10.0.0.2", "10.0.0.1", PROTO_TCP, 443, 40001);
        assert!(!ct.is_reply(&back, now));
        ct.track(&out, now).unwrap();
        assert!(ct.is_reply(&back, now));
        assert!(!ct.is_reply(&other, now));
        // A packet in the opening direction is not a "reply".
        assert!(!ct.is_reply(&out, now));
        assert!(!ct.is_reply(&back, now + TCP_IDLE + Duration::from_secs(1)));
    }

    #[test]
    fn echo_reply_matches_its_request_id() {
        let now = Instant::now();
        let mut ct = Conntrack::new(10);
        ct.track(&flow("10.0.0.1", "10.0.0.2", PROTO_ICMP, 8, 5), now)
            .unwrap();
        assert!(ct.is_reply(&flow("10.0.0.2", "10.0.0.1", PROTO_ICMP, 0, 5), now));
        assert!(!ct.is_reply(&flow("10.0.0.2", "10.0.0.1", PROTO_ICMP, 0, 6), now));
        // An echo request from the responder is not a reply.
        assert!(!ct.is_reply(&flow("10.0.0.2", "10.0.0.1", PROTO_ICMP, 8, 5), now));
    }

    #[test]
    fn bounded_and_reclaims_expired() {
        let now = Instant::now();
        let mut ct = Conntrack::new(2);
        ct.track(&flow("10.0.0.1", "10.0.0.2", PROTO_UDP, 1, 53), now)
            .unwrap();
        ct.track(&flow("10.0.0.1", "10.0.0.2", PROTO_UDP, 2, 53), now)
            .unwrap();
        assert_eq!(
            ct.track(&flow("10.0.0.1", "10.0.0.2", PROTO_UDP, 3, 53), now),
            Err(Full)
        );
        // Refreshing a tracked flow works when full.
        ct.track(&flow("10.0.0.1", "10.0.0.2", PROTO_UDP, 1, 53), now)
            .unwrap();
        let later = now + UDP_IDLE + Duration::from_secs(5);
        ct.track(&flow("10.0.0.1", "10.0.0.2", PROTO_UDP, 3, 53), later)
            .unwrap();
        assert_eq!(ct.len(), 1);
    }
}
