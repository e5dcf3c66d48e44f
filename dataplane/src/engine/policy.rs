//! A tenant's policy as a lookup: (from endpoint, to endpoint) → the rules between them.

use std::collections::HashMap;

use super::packet::{Flow, FlowKind, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use super::table::EndpointIdx;
use crate::config::{PortRange, Protocol, RuleConfig};

#[derive(Debug, Clone)]
struct Rule {
    protocol: Protocol,
    ports: Vec<PortRange>,
}

impl Rule {
    fn allows(&self, flow: &Flow) -> bool {
        let port_ok =
            |dport: u16| self.ports.is_empty() || self.ports.iter().any(|r| r.contains(dport));
        match (self.protocol, flow.kind) {
            (Protocol::Any, _) => true,
            (Protocol::Tcp, FlowKind::Ports { dport, .. }) => {
                flow.proto == PROTO_TCP && port_ok(dport)
            }
            (Protocol::Udp, FlowKind::Ports { dport, .. }) => {
                flow.proto == PROTO_UDP && port_ok(dport)
            }
            (Protocol::Icmp, _) => flow.proto == PROTO_ICMP || flow.proto == PROTO_ICMPV6,
            _ => false,
        }
    }
}

/// Rules keyed by endpoint pair so that a lookup costs one hash, whatever the rule count.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    by_pair: HashMap<(EndpointIdx, EndpointIdx), Vec<Rule>>,
}

impl Policy {
    pub(crate) fn build(rules: &[RuleConfig]) -> Self {
        let mut by_pair: HashMap<(EndpointIdx, EndpointIdx), Vec<Rule>> = HashMap::new();
        for r in rules {
            // Indices were range-checked against u16 by the caller.
            let key = (r.from as EndpointIdx, r.to as EndpointIdx);
            by_pair.entry(key).or_default().push(Rule {
                protocol: r.protocol,
                ports: r.ports.clone(),
            });
        }
        Policy { by_pair }
    }

    /// Whether a rule lets `from` open this flow to `to`.
    pub(crate) fn allows(&self, from: EndpointIdx, to: EndpointIdx, flow: &Flow) -> bool {
        self.by_pair
            .get(&(from, to))
            .is_some_and(|rules| rules.iter().any(|r| r.allows(flow)))
    }
}
