//! Just enough IP parsing for the policy: addresses, protocol, ports or ICMP echo id.
//!
//! Hand-written rather than a general parser because it runs for every packet, allocates
//! nothing, and must refuse anything it cannot classify exactly: a packet whose ports the
//! policy cannot see (fragments, truncated headers) is dropped, never guessed at.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(crate) const PROTO_ICMP: u8 = 1;
pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;
pub(crate) const PROTO_ICMPV6: u8 = 58;

/// What the policy needs to know about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flow {
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    pub(crate) proto: u8,
    pub(crate) kind: FlowKind,
    /// Length of the IP packet as its header states (may be shorter than the buffer).
    pub(crate) len: usize,
}

/// The transport-level part of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowKind {
    /// TCP or UDP with source and destination ports.
    Ports { sport: u16, dport: u16 },
    /// ICMP(v6) echo request with its identifier.
    EchoRequest { id: u16 },
    /// ICMP(v6) echo reply with its identifier.
    EchoReply { id: u16 },
    /// Any other ICMP(v6) message.
    IcmpOther,
    /// Any other protocol.
    Other,
}

/// Why a packet could not be classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Truncated or inconsistent headers.
    Malformed,
    /// A fragment: its ports are not visible, so no policy can judge it.
    Fragment,
}

/// Whether a packet only makes sense on the local link (never routed through a tunnel):
/// multicast or broadcast destinations, link-local or unspecified sources.
pub(crate) fn is_link_scoped(flow: &Flow) -> bool {
    let dst = match flow.dst {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast() || a.is_link_local(),
        IpAddr::V6(a) => a.is_multicast() || a.is_unicast_link_local(),
    };
    let src = match flow.src {
        IpAddr::V4(a) => a.is_unspecified() || a.is_link_local(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_unicast_link_local(),
    };
    dst || src
}

/// Classifies an IP packet.
pub(crate) fn parse(packet: &[u8]) -> Result<Flow, ParseError> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => parse_v4(packet),
        Some(6) => parse_v6(packet),
        _ => Err(ParseError::Malformed),
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn parse_v4(p: &[u8]) -> Result<Flow, ParseError> {
    let header: &[u8; 20] = p
        .get(..20)
        .and_then(|h| h.try_into().ok())
        .ok_or(ParseError::Malformed)?;
    let ihl = usize::from(header[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if ihl < 20 || total < ihl || total > p.len() {
        return Err(ParseError::Malformed);
    }
    let frag = u16::from_be_bytes([header[6], header[7]]);
    if frag & 0x3fff != 0 {
        // More-fragments set or a non-zero offset.
        return Err(ParseError::Fragment);
    }
    let proto = header[9];
    let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    let payload = p.get(ihl..total).ok_or(ParseError::Malformed)?;
    let kind = transport(proto, payload, PROTO_ICMP)?;
    Ok(Flow {
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        proto,
        kind,
        len: total,
    })
}

fn parse_v6(p: &[u8]) -> Result<Flow, ParseError> {
    let header: &[u8; 40] = p
        .get(..40)
        .and_then(|h| h.try_into().ok())
        .ok_or(ParseError::Malformed)?;
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let total = 40 + payload_len;
    if total > p.len() {
        return Err(ParseError::Malformed);
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&header[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&header[24..40]);
    let mut next = header[6];
    let mut offset = 40;
    // Walk the extension headers that may precede the transport header.
    loop {
        match next {
            0 | 43 | 60 => {
                let nh = *p.get(offset).ok_or(ParseError::Malformed)?;
                let len = (usize::from(*p.get(offset + 1).ok_or(ParseError::Malformed)?) + 1) * 8;
                next = nh;
                offset += len;
                if offset > total {
                    return Err(ParseError::Malformed);
                }
            }
            44 => return Err(ParseError::Fragment),
            _ => break,
        }
    }
    let payload = p.get(offset..total).ok_or(ParseError::Malformed)?;
    let kind = transport(next, payload, PROTO_ICMPV6)?;
    Ok(Flow {
        src: IpAddr::V6(Ipv6Addr::from(src)),
        dst: IpAddr::V6(Ipv6Addr::from(dst)),
        proto: next,
        kind,
        len: total,
    })
}

fn transport(proto: u8, payload: &[u8], icmp: u8) -> Result<FlowKind, ParseError> {
    let (echo_request, echo_reply) = if icmp == PROTO_ICMP {
        (8, 0)
    } else {
        (128, 129)
    };
    match proto {
        PROTO_TCP => {
            // A TCP header is at least 20 bytes and its data offset must fit.
            let off = usize::from(payload.get(12).ok_or(ParseError::Malformed)? >> 4) * 4;
            if off < 20 || off > payload.len() {
                return Err(ParseError::Malformed);
            }
            ports(payload)
        }
        PROTO_UDP => {
            if payload.len() < 8 {
                return Err(ParseError::Malformed);
            }
            ports(payload)
        }
        p if p == icmp => {
            if payload.len() < 8 {
                return Err(ParseError::Malformed);
            }
            let id = be16(payload, 4).ok_or(ParseError::Malformed)?;
            Ok(match payload[0] {
                t if t == echo_request => FlowKind::EchoRequest { id },
                t if t == echo_reply => FlowKind::EchoReply { id },
                _ => FlowKind::IcmpOther,
            })
        }
        PROTO_ICMP | PROTO_ICMPV6 => Err(ParseError::Malformed), // ICMP of the wrong family
        _ => Ok(FlowKind::Other),
    }
}

fn ports(payload: &[u8]) -> Result<FlowKind, ParseError> {
    Ok(FlowKind::Ports {
        sport: be16(payload, 0).ok_or(ParseError::Malformed)?,
        dport: be16(payload, 2).ok_or(ParseError::Malformed)?,
    })
}

#[cfg(test)]
pub(crate) mod build {
    //! Packet builders for the unit tests.
    use std::net::IpAddr;

    /// See [`crate::sim::ip_packet`].
    pub(crate) fn packet(
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        crate::sim::ip_packet(src, dst, proto, sport, dport, payload).expect("one address family")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_tcp_udp_icmp_v4_and_v6() {
        let p = build::packet(ip("10.0.0.1"), ip("10.0.0.2"), PROTO_TCP, 1234, 443, b"hi");
        let f = parse(&p).unwrap();
        assert_eq!(f.src, ip("10.0.0.1"));
        assert_eq!(
            f.kind,
            FlowKind::Ports {
                sport: 1234,
                dport: 443
            }
        );
        assert_eq!(f.len, p.len());

        let p = build::packet(ip("fd00::1"), ip("fd00::2"), PROTO_UDP, 5, 53, b"q");
        let f = parse(&p).unwrap();
        assert_eq!(f.proto, PROTO_UDP);
        assert_eq!(
            f.kind,
            FlowKind::Ports {
                sport: 5,
                dport: 53
            }
        );

        let p = build::packet(ip("10.0.0.1"), ip("10.0.0.2"), PROTO_ICMP, 8, 77, b"");
        assert_eq!(parse(&p).unwrap().kind, FlowKind::EchoRequest { id: 77 });
        let p = build::packet(ip("fd00::1"), ip("fd00::2"), PROTO_ICMPV6, 129, 7, b"");
        assert_eq!(parse(&p).unwrap().kind, FlowKind::EchoReply { id: 7 });
    }

    #[test]
    fn link_scoped_traffic_is_recognised() {
        let f =
            |s: &str, d: &str| parse(&build::packet(ip(s), ip(d), PROTO_UDP, 1, 2, b"")).unwrap();
        assert!(is_link_scoped(&f("fe80::1", "ff02::2")));
        assert!(is_link_scoped(&f("::", "ff02::16")));
        assert!(is_link_scoped(&f("10.0.0.1", "255.255.255.255")));
        assert!(is_link_scoped(&f("10.0.0.1", "224.0.0.251")));
        assert!(is_link_scoped(&f("169.254.1.1", "10.0.0.2")));
        assert!(!is_link_scoped(&f("10.0.0.1", "10.0.0.2")));
        assert!(!is_link_scoped(&f("fd00::1", "fd00::2")));
    }

    #[test]
    fn refuses_fragments_and_truncation() {
        let mut p = build::packet(ip("10.0.0.1"), ip("10.0.0.2"), PROTO_UDP, 1, 2, b"x");
        p[6] = 0x20; // more fragments
        assert_eq!(parse(&p), Err(ParseError::Fragment));
        let p = build::packet(ip("10.0.0.1"), ip("10.0.0.2"), PROTO_TCP, 1, 2, b"");
        assert_eq!(parse(&p[..30]), Err(ParseError::Malformed));
        assert_eq!(parse(&[]), Err(ParseError::Malformed));
        assert_eq!(parse(&[0x45; 19]), Err(ParseError::Malformed));
        // ICMPv6 inside IPv4 is not a thing.
        let p = build::packet(ip("10.0.0.1"), ip("10.0.0.2"), PROTO_ICMPV6, 1, 2, b"");
        assert_eq!(parse(&p), Err(ParseError::Malformed));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_on_mutated_headers(
            pos in 0usize..60, val in any::<u8>(), v6 in any::<bool>(), cut in 0usize..80
        ) {
            let p = if v6 {
                build::packet(ip("fd00::1"), ip("fd00::2"), PROTO_TCP, 1, 2, b"0123456789")
            } else {
                build::packet(ip("10.0.0.1"), ip("10.0.0.2"), PROTO_TCP, 1, 2, b"0123456789")
            };
            let mut p = p;
            if pos < p.len() { p[pos] = val; }
            p.truncate(p.len().saturating_sub(cut));
            if let Ok(f) = parse(&p) { prop_assert!(f.len <= p.len()); }
        }
    }
}
