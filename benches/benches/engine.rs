//! Per-packet engine paths: app packet → policy → route → encrypt, and
//! datagram → decrypt → checks → deliver.

use std::hint::black_box;

use corridor_benches::{established_pair, is_send, udp_packet};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::engine::{AppOutcome, WanOutcome};

fn encrypt(c: &mut Criterion) {
    let mut g = c.benchmark_group("app_to_wan");
    for size in [64usize, 512, 1420] {
        let (mut world, app, _) = established_pair();
        let packet = udp_packet([10, 20, 1, 10], [10, 20, 100, 1], 40000, 9000, size);
        let mut out = vec![0u8; 65_600];
        let now = world.now();
        let engine = &mut world.nodes[0].engine;
        assert!(is_send(
            &engine.handle_app_packet(app, &packet, now, &mut out)
        ));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                let o = engine.handle_app_packet(app, black_box(&packet), now, &mut out);
                black_box(matches!(o, AppOutcome::Send(_)))
            })
        });
    }
    g.finish();
}

fn decrypt(c: &mut Criterion) {
    let mut g = c.benchmark_group("wan_to_app");
    for size in [64usize, 512, 1420] {
        let (mut world, app, _) = established_pair();
        let packet = udp_packet([10, 20, 1, 10], [10, 20, 100, 1], 40000, 9000, size);
        let now = world.now();
        let from = world.nodes[0].addr;
        let (edge, dc) = world.nodes.split_at_mut(1);
        let (edge, dc) = (&mut edge[0].engine, &mut dc[0].engine);
        let mut enc = vec![0u8; 65_600];
        let mut out = vec![0u8; 65_600];
        g.throughput(Throughput::Bytes(size as u64));
        // Each datagram is accepted once (replay protection), so every iteration decrypts a
        // freshly encrypted one; the encryption is setup, not measured.
        g.bench_function(format!("{size}B"), |b| {
            b.iter_batched_ref(
                || match edge.handle_app_packet(app, &packet, now, &mut enc) {
                    AppOutcome::Send(t) => enc[..t.len].to_vec(),
                    other => unreachable!("bench session is up: {other:?}"),
                },
                |d| {
                    let o = dc.handle_wan_datagram(from, black_box(d), now, &mut out);
                    black_box(matches!(o, WanOutcome::Deliver { .. }))
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        // HTML plots (plotters) cost more time than the measurements; `target/criterion` keeps the data.
        .without_plots()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = encrypt, decrypt
}
criterion_main!(benches);
