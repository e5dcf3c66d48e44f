//! Packet builders shared by the engine's integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::{IpAddr, SocketAddr};

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// IPv4/IPv6 packet with a transport header; for ICMP `sport` is the type and `dport` the id.
pub(crate) fn packet(
    src: &str,
    dst: &str,
    proto: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = Vec::new();
    match proto {
        6 => {
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&[0; 8]);
            l4.push(5 << 4);
            l4.extend_from_slice(&[0x18, 0xff, 0xff, 0, 0, 0, 0]);
        }
        17 => {
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        1 | 58 => {
            l4.push(sport as u8);
            l4.push(0);
            l4.extend_from_slice(&[0, 0]);
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&[0, 1]);
        }
        _ => {}
    }
    l4.extend_from_slice(payload);
    match (ip(src), ip(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + l4.len()) as u16;
            let mut p = vec![0x45, 0];
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&l4);
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.push(proto);
            p.push(64);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&l4);
            p
        }
        _ => panic!("mixed address families"),
    }
}

pub(crate) fn tcp(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    packet(src, dst, 6, sport, dport, payload)
}

pub(crate) fn udp(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    packet(src, dst, 17, sport, dport, payload)
}

pub(crate) fn ping(src: &str, dst: &str, id: u16) -> Vec<u8> {
    packet(src, dst, 1, 8, id, b"ping")
}

pub(crate) fn pong(src: &str, dst: &str, id: u16) -> Vec<u8> {
    packet(src, dst, 1, 0, id, b"ping")
}
