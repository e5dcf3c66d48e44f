//! Steering WAN datagrams to their worker in the kernel: one UDP socket per worker, all bound
//! to the gateway's one port with `SO_REUSEPORT`, and a classic BPF program on the group that
//! picks the socket by the receiver index in the WireGuard header.
//!
//! The engine of worker `w` of `n` hands out only session indices whose low byte is `w`
//! modulo `n` ([`IndexShard`]); boringtun puts `index << 8 | counter` on the wire,
//! little-endian, so that byte is the second byte of the receiver index: byte 5 of a data
//! message (type 4) or cookie reply (type 3), byte 9 of a handshake response (type 2). The
//! program loads it, takes it modulo `n` and returns the socket's position in the group, which
//! is the order the sockets were bound in. A handshake initiation (type 1) names no index: the
//! program returns a value past the group, and the kernel falls back to its usual hash; the
//! worker that gets it finds the tenant by mac1 and passes it on if it is not its own.
//!
//! For reuseport programs on UDP the packet data starts at the UDP payload; a load past its end
//! ends the program with 0, so a runt goes to worker 0, which drops it with a counter.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::libc;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrLike, SockaddrStorage, bind, getsockname,
    setsockopt, socket, sockopt,
};

use super::IoError;
use crate::engine::IndexShard;

// Classic BPF opcodes (linux/bpf_common.h).
const LDB_ABS: u16 = 0x10 | 0x20; // BPF_LD (0) | BPF_B | BPF_ABS
const JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const MOD_K: u16 = 0x04 | 0x90; // BPF_ALU | BPF_MOD | BPF_K
const RET_A: u16 = 0x06 | 0x10; // BPF_RET | BPF_A
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The steering program for a group of `workers` sockets (see the module docs); it must agree
/// with [`IndexShard::owner`], which the tests check.
pub(crate) fn program(workers: u8) -> Vec<libc::sock_filter> {
    vec![
        op(LDB_ABS, 0, 0, 0),                // 0: A = message type
        op(JEQ_K, 2, 0, 4),                  // 1: data        -> 4
        op(JEQ_K, 1, 0, 3),                  // 2: cookie      -> 4
        op(JEQ_K, 2, 5, 2),                  // 3: response    -> 6, else -> 9
        op(LDB_ABS, 0, 0, 5),                // 4: A = receiver index, second byte
        op(JA, 0, 0, 1),                     // 5:             -> 7
        op(LDB_ABS, 0, 0, 9),                // 6: A = receiver index, second byte
        op(MOD_K, 0, 0, u32::from(workers)), // 7: A %= workers
        op(RET_A, 0, 0, 0),                  // 8: that socket
        op(RET_K, 0, 0, u32::MAX),           // 9: past the group: the kernel's hash
    ]
}

fn os(what: &'static str) -> impl FnOnce(nix::Error) -> IoError {
    move |e| IoError::Os {
        what,
        source: std::io::Error::from(e),
    }
}

/// Binds `workers` (at least 2) UDP sockets to `addr` as one reuseport group, in worker order,
/// and attaches the steering program. With port 0, all take the port the first one got.
///
/// A reuseport group takes in any later socket of the same user that asks for `SO_REUSEPORT`
/// on the same address: a second gateway started by mistake would silently share the port and
/// get some of the first one's datagrams. So the address is first bound once without
/// `SO_REUSEPORT`, which fails (`AddrInUse`) if anything holds the port, group or not, and a
/// second gateway (which does the same) is refused as it would be with one worker. Between that
/// probe and the group's bind the port is free for a moment; the group then stays open to
/// deliberate joiners of the same user (root), which is no boundary for root anyway.
pub(crate) fn bind_group(addr: SocketAddr, workers: u8) -> Result<Vec<UdpSocket>, IoError> {
    if addr.port() != 0 {
        drop(UdpSocket::bind(addr).map_err(|source| IoError::Bind { addr, source })?);
    }
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let mut sockets: Vec<UdpSocket> = Vec::with_capacity(usize::from(workers));
    let mut at = SockaddrStorage::from(addr);
    for _ in 0..workers {
        let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
            .map_err(os("creating a WAN socket"))?;
        setsockopt(&fd, sockopt::ReusePort, &true).map_err(os("setting SO_REUSEPORT"))?;
        if let SocketAddr::V6(_) = addr {
            // As std binds it: a V6 address serves V6 (and mapped V4 if the system says so).
            let _ = setsockopt(&fd, sockopt::Ipv6V6Only, &false);
        }
        bind(fd.as_raw_fd(), &at).map_err(|e| IoError::Bind {
            addr,
            source: std::io::Error::from(e),
        })?;
        if sockets.is_empty() {
            at = getsockname::<SockaddrStorage>(fd.as_raw_fd())
                .map_err(os("reading the WAN address"))?;
            debug_assert!(at.len() > 0);
        }
        sockets.push(UdpSocket::from(fd));
    }
    let mut filter = program(workers);
    let fprog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    if let Some(first) = sockets.first() {
        setsockopt(first, sockopt::AttachReusePortCbpf, &fprog)
            .map_err(os("attaching the steering program to the WAN sockets"))?;
    }
    Ok(sockets)
}

/// The worker that owns `datagram`, if its header names one ([`IndexShard::owner`]).
pub(crate) fn owner(datagram: &[u8], workers: u8) -> Option<u8> {
    IndexShard::owner(datagram, workers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The kernel steers by the program: crafted datagrams with chosen receiver indices land on
    /// the socket of the worker that [`IndexShard`] names. No root needed (loopback).
    #[test]
    fn the_kernel_steers_datagrams_to_the_owner_of_their_receiver_index() {
        for workers in [2u8, 3, 4] {
            let group = bind_group("127.0.0.1:0".parse().unwrap(), workers).unwrap();
            let port = group[0].local_addr().unwrap().port();
            for s in &group {
                assert_eq!(s.local_addr().unwrap().port(), port);
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
            }
            let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
            let to: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut sent = 0;
            for worker in 0..workers {
                let shard = IndexShard::new(worker, workers).unwrap();
                for (ty, at, len) in [(4u8, 4usize, 64usize), (3, 4, 64), (2, 8, 92)] {
                    for raw in [0x0012_3456u32, 0x00ff_ffff, 7, 0x0080_0001] {
                        let index = shard.place(raw);
                        let mut d = vec![0u8; len];
                        d[0] = ty;
                        d[at..at + 4].copy_from_slice(&(index << 8 | 0xa5).to_le_bytes());
                        assert_eq!(owner(&d, workers), Some(worker));
                        sender.send_to(&d, to).unwrap();
                        let mut buf = [0u8; 128];
                        let s = &group[usize::from(worker)];
                        let n = s.recv(&mut buf).unwrap_or_else(|e| {
                            panic!("{workers} workers: type {ty} index {index:#x} not at worker {worker}: {e}")
                        });
                        assert_eq!(&buf[..n], &d[..]);
                        sent += 1;
                    }
                }
            }
            assert_eq!(sent, usize::from(workers) * 12);
            // The port is taken: another group (another gateway) cannot join this one.
            let again = bind_group(to, workers);
            assert!(
                matches!(&again, Err(IoError::Bind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse),
                "{again:?}"
            );
            // Initiations go by hash: to some socket of the group, and only one.
            let mut init = vec![0u8; 148];
            init[0] = 1;
            sender.send_to(&init, to).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            let got = group
                .iter()
                .filter(|s| {
                    s.set_nonblocking(true).unwrap();
                    let mut buf = [0u8; 256];
                    s.recv(&mut buf).is_ok()
                })
                .count();
            assert_eq!(got, 1);
        }
    }
}
