//! The controller's cost at scale: compiling, signing and sealing the bundles of 1,000 edge
//! gateways (plus one data-centre gateway) serving 10 tenants each. Every tenant has an app on
//! every edge gateway and one destination on the data-centre gateway, so the data-centre
//! bundle holds 10,000 peers' keys and preshared keys.
//!
//! `cargo bench -p corridor-benches --bench controller`

use std::collections::BTreeMap;
use std::fmt::Write;
use std::hint::black_box;
use std::time::Duration;

use controlplane::controller::bundles::build_all;
use controlplane::identity::{SealKey, SigningIdentity};
use controlplane::store::{GatewayRecord, PolicyFiles, Snapshot};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataplane::SecretKey;

const EDGES: usize = 1000;
const TENANTS: usize = 10;

/// The policy files and the registry of 1,000 edges × 10 tenants and one data-centre gateway.
fn world() -> Snapshot {
    let mut gateways = String::new();
    let mut records = Vec::new();
    let tenant_names: Vec<String> = (0..TENANTS).map(|t| format!("tenant-{t}")).collect();
    let mut record = |name: &str| {
        let tenant_keys: BTreeMap<String, [u8; 32]> = tenant_names
            .iter()
            .map(|t| (t.clone(), SecretKey::generate().public_key()))
            .collect();
        records.push(GatewayRecord {
            name: name.to_owned(),
            signing_key: SigningIdentity::generate().public(),
            seal_key: SealKey::generate().public(),
            tenant_keys,
            key_generation: 1,
            rotate_requested: 0,
            enrolled_at: 0,
            revoked_at: None,
        });
    };
    let _ = writeln!(
        gateways,
        "[[gateway]]\nname = \"dc-1\"\nendpoint = \"192.0.2.1:51820\"\n"
    );
    record("dc-1");
    for e in 0..EDGES {
        let _ = writeln!(gateways, "[[gateway]]\nname = \"edge-{e}\"\n");
        record(&format!("edge-{e}"));
    }
    let mut tenants = BTreeMap::new();
    for (t, name) in tenant_names.iter().enumerate() {
        let mut text = format!("name = \"{name}\"\naddress-space = [\"10.{t}.0.0/16\"]\n\n");
        let _ = writeln!(
            text,
            "[[endpoint]]\nname = \"cloud\"\ngateway = \"dc-1\"\nnetns = \"{name}-cloud\"\naddresses = [\"10.{t}.250.1/32\"]\nroutes = [\"10.{t}.250.0/24\"]\n"
        );
        for e in 0..EDGES {
            let _ = writeln!(
                text,
                "[[endpoint]]\nname = \"app-{e}\"\ngateway = \"edge-{e}\"\nnetns = \"{name}-app\"\naddresses = [\"10.{t}.{}.{}/32\"]\n",
                e / 250,
                e % 250 + 1
            );
        }
        for e in 0..EDGES {
            let _ = writeln!(
                text,
                "[[allow]]\nfrom = \"app-{e}\"\nto = \"cloud\"\nprotocol = \"tcp\"\nports = [\"443\"]\n"
            );
        }
        tenants.insert(format!("{name}.toml"), text);
    }
    Snapshot {
        revision: 1,
        policy: Some(PolicyFiles { gateways, tenants }),
        gateways: records,
    }
}

fn bundles(c: &mut Criterion) {
    let snapshot = world();
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
