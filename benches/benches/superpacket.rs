//! 64 KB TCP super-packets: what a TUN device with TSO/GSO offload (IFF_VNET_HDR) hands to
//! userspace in one read.
//!
//! The gateway's fast path (dataplane/src/io/runtime.rs, `drain_tun`) reads a super-packet
//! with tun-rs's `recv_multiple`, which splits it into MTU-sized TCP segments
//! (`tun_rs::gso_split`: headers copied, IP id, lengths, sequence numbers and both checksums
//! fixed up), and pushes each segment through `Engine::handle_app_packet` (policy, route,
//! encrypt). These benches run the same two steps in memory on a 65,535-byte IPv4/TCP
//! super-packet at MTU 1420 (48 segments), without the read and the sends:
//!
//! - `split_only`: the split alone;
//! - `split_encrypt`: split, then every segment through the engine;
//! - `decrypt_segments`: the receive side, the 48 datagrams through
//!   `Engine::handle_wan_datagram` (decrypt, checks, deliver). Coalescing them back into one
//!   write (GRO, tun-rs's `send_multiple`) is not included.
//!
//! Throughput is counted in bytes of the super-packet, so the figures compare directly with
//! 64 KB reads and writes on a TUN with offloads, and with `app_to_wan/1420B`.

#![cfg_attr(not(target_os = "linux"), allow(unused_imports))]

use std::hint::black_box;

#[cfg(target_os = "linux")]
use corridor_benches::{
    APP, CLOUD, MTU, established_pair, segment_buffers, split_superpacket, tcp_packet,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::engine::{AppOutcome, WanOutcome};

#[cfg(target_os = "linux")]
const SUPER: usize = 65_535;

#[cfg(target_os = "linux")]
fn encrypt(c: &mut Criterion) {
    let mut g = c.benchmark_group("superpacket_64k");
    let (mut world, app, _) = established_pair();
    let mut sp = tcp_packet(APP, CLOUD, 40000, 443, SUPER);
    let now = world.now();
    let engine = &mut world.nodes[0].engine;
    let (mut bufs, mut sizes) = segment_buffers(MTU);
    let mut out = vec![0u8; 65_600];
    let mut push = |sp: &mut [u8]| {
        let n = split_superpacket(sp, MTU, &mut bufs, &mut sizes);
        let mut sent = 0usize;
        for (b, &len) in bufs.iter().zip(&sizes).take(n) {
            let o = engine.handle_app_packet(app, &b[..len], now, &mut out);
            sent += usize::from(matches!(o, AppOutcome::Send(_)));
        }
        (n, sent)
    };
    let (n, sent) = push(&mut sp);
    assert!(
        n == 48 && sent == n,
        "every segment is sent ({sent} of {n})"
    );

    g.throughput(Throughput::Bytes(SUPER as u64));
    g.bench_function("split_encrypt", |b| {
        b.iter(|| black_box(push(black_box(&mut sp))))
    });
    let (mut bufs, mut sizes) = segment_buffers(MTU);
    // The split alone: what the userspace GSO costs before any crypto.
    g.bench_function("split_only", |b| {
        b.iter(|| {
            black_box(split_superpacket(
                black_box(&mut sp),
                MTU,
                &mut bufs,
                &mut sizes,
            ))
        })
    });
    g.finish();
}

#[cfg(target_os = "linux")]
fn decrypt(c: &mut Criterion) {
    let mut g = c.benchmark_group("superpacket_64k");
    let (mut world, app, _) = established_pair();
    let mut sp = tcp_packet(APP, CLOUD, 40000, 443, SUPER);
    let now = world.now();
    let from = world.nodes[0].addr;
    let (edge, dc) = world.nodes.split_at_mut(1);
    let (edge, dc) = (&mut edge[0].engine, &mut dc[0].engine);
    let (mut bufs, mut sizes) = segment_buffers(MTU);
    let mut enc = vec![0u8; 65_600];
    let mut out = vec![0u8; 65_600];
    g.throughput(Throughput::Bytes(SUPER as u64));
    // Each datagram is accepted once (replay protection): every iteration decrypts the
    // datagrams of a freshly split and encrypted super-packet; that setup is not measured.
    g.bench_function("decrypt_segments", |b| {
        b.iter_batched_ref(
            || {
                let n = split_superpacket(&mut sp, MTU, &mut bufs, &mut sizes);
                let mut datagrams = Vec::with_capacity(n);
                for (b, &len) in bufs.iter().zip(&sizes).take(n) {
                    if let AppOutcome::Send(t) =
                        edge.handle_app_packet(app, &b[..len], now, &mut enc)
                    {
                        datagrams.push(enc[..t.len].to_vec());
                    }
                }
                datagrams
            },
            |datagrams| {
                let mut delivered = 0usize;
                for d in datagrams.iter() {
                    let o = dc.handle_wan_datagram(from, black_box(d), now, &mut out);
                    delivered += usize::from(matches!(o, WanOutcome::Deliver { .. }));
                }
                black_box(delivered)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

#[cfg(target_os = "linux")]
criterion_group! {
    name = benches;
    config = Criterion::default()
        // HTML plots (plotters) cost more time than the measurements; `target/criterion` keeps the data.
        .without_plots()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = encrypt, decrypt
}
#[cfg(target_os = "linux")]
criterion_main!(benches);

/// The super-packet path is Linux's (TUN offload): nothing to measure elsewhere.
#[cfg(not(target_os = "linux"))]
fn main() {}
