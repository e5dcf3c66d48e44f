//! A tenant's routing table: prefix → endpoint, longest match wins.
//!
//! The same table answers both "where does this destination go" and "may this source come from
//! there" (anti-spoofing), because an endpoint's prefixes are both what it receives and what it
//! may send from. Prefixes of different endpoints never overlap (checked on apply), so a source
//! lookup is unambiguous.

use std::net::IpAddr;

use ip_network::IpNetwork;
use ip_network_table::IpNetworkTable;

/// Index of an endpoint within its tenant.
pub(crate) type EndpointIdx = u16;

pub(crate) struct RouteTable {
    table: IpNetworkTable<EndpointIdx>,
    /// Small tables (the common case: a few endpoints) are scanned linearly, most specific
    /// first, which beats the trie's pointer chasing on every packet.
    small: Option<Vec<Small>>,
}

/// Tables up to this many prefixes use the linear scan.
const SMALL: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Small {
    v6: bool,
    network: u128,
    mask: u128,
    endpoint: EndpointIdx,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (v4, v6) = self.table.len();
        write!(f, "RouteTable({v4} v4, {v6} v6)")
    }
}

/// Two endpoints claim overlapping prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overlap {
    pub(crate) first: (EndpointIdx, IpNetwork),
    pub(crate) second: (EndpointIdx, IpNetwork),
}

fn range(net: &IpNetwork) -> (u8, u128, u128) {
    match net {
        IpNetwork::V4(n) => {
            let start = u32::from(n.network_address());
            let host = if n.netmask() == 0 {
                u32::MAX
            } else {
                (1u32 << (32 - u32::from(n.netmask()))).wrapping_sub(1)
            };
            (4, u128::from(start), u128::from(start | host))
        }
        IpNetwork::V6(n) => {
            let start = u128::from(n.network_address());
            let host = if n.netmask() == 0 {
                u128::MAX
            } else {
                (1u128 << (128 - u32::from(n.netmask()))).wrapping_sub(1)
            };
            (6, start, start | host)
        }
    }
}

impl RouteTable {
    /// Builds the table; refuses prefixes of different endpoints that overlap.
    pub(crate) fn build(
        entries: impl IntoIterator<Item = (EndpointIdx, IpNetwork)>,
    ) -> Result<Self, Overlap> {
        let mut all: Vec<(EndpointIdx, IpNetwork)> = entries.into_iter().collect();
        // Prefixes nest or are disjoint: sorted by start (widest first), any prefix that starts
        // before the widest open one ends overlaps it.
        all.sort_by_key(|(_, n)| {
            let (fam, start, end) = range(n);
            (fam, start, std::cmp::Reverse(end))
        });
        let mut open: Option<(u8, u128, EndpointIdx, IpNetwork)> = None;
        for (ep, net) in &all {
            let (fam, start, end) = range(net);
            if let Some((ofam, oend, oep, onet)) = open
                && ofam == fam
                && start <= oend
            {
                if oep != *ep {
                    return Err(Overlap {
                        first: (oep, onet),
                        second: (*ep, *net),
                    });
                }
                continue;
            }
            open = Some((fam, end, *ep, *net));
        }
        let small = (all.len() <= SMALL).then(|| {
            let mut v: Vec<(u8, Small)> = all
                .iter()
                .map(|(ep, net)| {
                    let (_, start, end) = range(net);
                    let len = net.netmask();
                    (
                        len,
                        Small {
                            v6: matches!(net, IpNetwork::V6(_)),
                            network: start,
                            mask: !(end - start),
                            endpoint: *ep,
                        },
                    )
                })
                .collect();
            v.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
            v.into_iter().map(|(_, s)| s).collect()
        });
        let mut table = IpNetworkTable::new();
        for (ep, net) in all {
            table.insert(net, ep);
        }
        Ok(RouteTable { table, small })
    }

    /// The endpoint owning `addr`, if any.
    pub(crate) fn lookup(&self, addr: IpAddr) -> Option<EndpointIdx> {
        if let Some(small) = &self.small {
            let (v6, a) = match addr {
                IpAddr::V4(a) => (false, u128::from(u32::from(a))),
                IpAddr::V6(a) => (true, u128::from(a)),
            };
            return small
                .iter()
                .find(|s| s.v6 == v6 && a & s.mask == s.network)
                .map(|s| s.endpoint);
        }
        match addr {
            IpAddr::V4(a) => self.table.longest_match_ipv4(a).map(|(_, e)| *e),
            IpAddr::V6(a) => self.table.longest_match_ipv6(a).map(|(_, e)| *e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn longest_match_and_own_nesting() {
        let t = RouteTable::build([
            (0, net("10.20.1.10/32")),
            (1, net("10.20.100.0/24")),
            (1, net("10.20.100.1/32")),
            (2, net("fd00::/64")),
        ])
        .unwrap();
        assert_eq!(t.lookup("10.20.1.10".parse().unwrap()), Some(0));
        assert_eq!(t.lookup("10.20.100.77".parse().unwrap()), Some(1));
        assert_eq!(t.lookup("10.20.1.11".parse().unwrap()), None);
        assert_eq!(t.lookup("fd00::5".parse().unwrap()), Some(2));
    }

    #[test]
    fn small_and_large_tables_agree() {
        // The same prefixes, once below the linear-scan threshold and once padded above it.
        let base = [
            (0, "10.20.1.10/32"),
            (1, "10.20.100.0/24"),
            (1, "10.20.100.1/32"),
            (2, "fd00::/64"),
            (3, "192.0.0.0/2"),
        ];
        let small = RouteTable::build(base.iter().map(|(e, n)| (*e, net(n)))).unwrap();
        assert!(small.small.is_some());
        let padding = (0..40u16).map(|i| (4 + i, net(&format!("172.16.{i}.0/24"))));
        let large =
            RouteTable::build(base.iter().map(|(e, n)| (*e, net(n))).chain(padding)).unwrap();
        assert!(large.small.is_none());
        for a in [
            "10.20.1.10",
            "10.20.1.11",
            "10.20.100.1",
            "10.20.100.200",
            "fd00::1",
            "fd01::1",
            "1.2.3.4",
            "200.1.1.1",
            "0.0.0.0",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(small.lookup(ip), large.lookup(ip), "{a}");
        }
        assert_eq!(small.lookup("200.1.1.1".parse().unwrap()), Some(3));
        assert_eq!(small.lookup("1.2.3.4".parse().unwrap()), None);
    }

    #[test]
    fn overlap_between_endpoints_is_refused() {
        let err = RouteTable::build([(0, net("10.0.0.0/8")), (1, net("10.1.2.3/32"))]).unwrap_err();
        assert_eq!(err.first.0, 0);
        assert_eq!(err.second.0, 1);
        assert!(RouteTable::build([(0, net("0.0.0.0/0")), (1, net("fd00::/8"))]).is_ok());
        assert!(RouteTable::build([(0, net("10.0.0.0/24")), (1, net("10.0.1.0/24"))]).is_ok());
    }
}
