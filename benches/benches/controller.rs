//! The controller's cost at scale: compiling, signing and sealing the bundles of 1,000 edge
//! gateways (plus one data-centre gateway) serving 10 tenants each. Every tenant has an app on
//! every edge gateway and one destination on the data-centre gateway, so the data-centre
//! bundle holds 10,000 peers' keys and preshared keys.
//!
//! `cargo bench -p corridor-benches --bench controller`

use std::hint::black_box;
use std::time::Duration;

use controlplane::controller::bundles::build_all;
use controlplane::identity::SigningIdentity;
use corridor_benches::fleet::Fleet;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const EDGES: usize = 1000;
const TENANTS: usize = 10;

fn bundles(c: &mut Criterion) {
    let snapshot = Fleet::new(EDGES, TENANTS).snapshot();
    let identity = SigningIdentity::generate();
    // What one run produces, once, for the record.
    let all = match build_all(snapshot.clone(), &identity) {
        Ok(all) => all,
        Err(e) => {
            eprintln!("the benchmark policy does not compile: {e}");
            std::process::exit(1);
        }
    };
    let total: usize = all.iter().map(|(_, b)| b.len()).sum();
    let dc = all
        .iter()
        .find(|(n, _)| n == "dc-1")
        .map_or(0, |(_, b)| b.len());
    eprintln!(
        "{} bundles, {} KiB in all; dc-1's is {} KiB, an edge's {} bytes",
        all.len(),
        total / 1024,
        dc / 1024,
        all.iter()
            .find(|(n, _)| n == "edge-0")
            .map_or(0, |(_, b)| b.len())
    );
    let mut g = c.benchmark_group("controller");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(all.len() as u64));
    g.bench_function("compile_sign_seal_1000_gateways_x_10_tenants", |b| {
        b.iter(|| black_box(build_all(snapshot.clone(), &identity)))
    });
    g.finish();
}

criterion_group!(benches, bundles);
criterion_main!(benches);
