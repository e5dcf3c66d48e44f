//! How fast one policy change reaches a fleet: 1,000 simulated gateway agents long-poll a real
//! controller (`serve()` over TLS on loopback, SQLite store) for their bundles; an operator
//! uploads a one-line policy change (`PUT /v1/policy`, as `corridor policy apply` does); the
//! time measured runs from the upload until the last of the 1,000 agents has received its new
//! bundle and opened it (signature checked, sealed part decrypted). Every agent gets a new
//! bundle per change (the controller re-seals every gateway's bundle at each revision).
//!
//! The agents run in the same process and on the same cores as the controller, so their TLS
//! handshakes and bundle checks compete with it: on a real fleet they run on their own boxes.
//!
//! `cargo bench -p corridor-benches --bench distribution`

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use controlplane::bundle;
use controlplane::client::{Client, Signer};
use controlplane::controller::api::PolicyUpload;
use controlplane::controller::tls::Pin;
use controlplane::controller::{ControllerConfig, serve};
use controlplane::identity::SigningIdentity;
use controlplane::store::Store;
use controlplane::token::Token;
use corridor_benches::fleet::{Fleet, FleetGateway};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use tokio::sync::mpsc;

const EDGES: usize = 999;
const TENANTS: usize = 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Stops the bench with a message (a bench has no test harness to fail).
fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("distribution bench: {what}: {e}");
    std::process::exit(1)
}

/// 1,000 agents hold two sockets each in this process (theirs and the controller's end).
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < 8192
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536).max(soft), hard)
    {
        eprintln!("cannot raise the open-files limit ({soft}): {e}");
    }
}

/// Enrolls every gateway of the fleet in `store` (token, redemption, tenant keys), as the real
/// enrollment does, without the 1,000 round trips.
fn enroll_all(store: &dyn Store, fleet: &Fleet, fingerprint: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for gw in &fleet.gateways {
        let (token, record) = Token::issue(&gw.name, 3600, now, fingerprint);
        if let Err(e) = store.add_token(&record) {
            fail("adding a token", e);
        }
        if let Err(e) = store.redeem_token(
            &token.id,
            &record.secret_hash,
            &gw.name,
            &gw.signing.public(),
            &gw.seal.public(),
            now,
        ) {
            fail("redeeming a token", e);
        }
        if let Err(e) = store.set_tenant_keys(&gw.name, &gw.tenant_keys) {
            fail("registering tenant keys", e);
        }
    }
}

/// A simulated agent: long-polls for bundles after the version it has, opens each one it gets
/// and reports the version.
async fn agent(
    client: Arc<Client>,
    gw: Arc<FleetGateway>,
    controller: [u8; 32],
    reports: mpsc::UnboundedSender<u64>,
) {
    let mut applied: Option<u64> = None;
    loop {
        let path = format!("/v1/bundle?after={}", applied.unwrap_or(0));
        let signer = Signer::Gateway(&gw.name, &gw.signing);
        match client
            .request("GET", &path, None, signer, REQUEST_TIMEOUT)
            .await
        {
            Ok(r) if r.status == 200 => {
                match bundle::open(&r.body, &controller, &gw.seal, &gw.name, applied) {
                    Ok(content) => {
                        applied = Some(content.version);
                        if reports.send(content.version).is_err() {
                            return;
                        }
                    }
                    Err(e) => fail(&format!("{} refused its bundle", gw.name), e),
                }
            }
            Ok(r) if r.status == 204 => {}
            Ok(r) => fail(&format!("{}'s bundle request", gw.name), r.message()),
            Err(e) => fail(&format!("{}'s bundle request", gw.name), e),
        }
    }
}

/// Waits until `n` agents reported `version` (or later).
async fn reached(reports: &mut mpsc::UnboundedReceiver<u64>, version: u64, n: usize) {
    let mut got = 0;
    while got < n {
        match reports.recv().await {
            Some(v) if v >= version => got += 1,
            Some(_) => {}
            None => fail("waiting for the agents", "they all stopped"),
        }
    }
}

fn distribution(c: &mut Criterion) {
    raise_open_files();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail("starting the runtime", e),
    };
    // CORRIDOR_BENCH_EDGES: another fleet size (the figure the README quotes is for 999 + dc-1).
    let edges = std::env::var("CORRIDOR_BENCH_EDGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(EDGES);
    let mut fleet = Fleet::new(edges, TENANTS);
    let n = fleet.gateways.len();
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail("a temporary directory", e));
    let operator = SigningIdentity::generate();
    let mut cfg = ControllerConfig::default_in(dir.path());
    cfg.listen = ([127, 0, 0, 1], 0).into();
    cfg.long_poll = 60;
    cfg.operators = vec![base64::engine::general_purpose::STANDARD.encode(operator.public())];
    let store: Arc<dyn Store> = match controlplane::store::open(&cfg.store_url()) {
        Ok(s) => Arc::from(s),
        Err(e) => fail("opening the store", e),
    };
    let identity = SigningIdentity::generate();
    let controller = identity.public();
    if let Err(e) = store.put_policy(&fleet.policy) {
        fail("storing the policy", e);
    }
    enroll_all(store.as_ref(), &fleet, &identity.fingerprint());

    let (client, mut reports) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .unwrap_or_else(|e| fail("binding loopback", e));
        let url = match listener.local_addr() {
            Ok(a) => format!("https://{a}"),
            Err(e) => fail("the listener's address", e),
        };
        let s = Arc::clone(&store);
        tokio::spawn(async move {
            if let Err(e) = serve(cfg, identity, s, listener, std::future::pending()).await {
                fail("the controller", e);
            }
        });
        let client = match Client::new(vec![url], Pin::Key(controller)) {
            Ok(c) => Arc::new(c),
            Err(e) => fail("the client", e),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        for gw in std::mem::take(&mut fleet.gateways) {
            tokio::spawn(agent(
                Arc::clone(&client),
                Arc::new(gw),
                controller,
                tx.clone(),
            ));
        }
        let first = match store.revision() {
            Ok(r) => r,
            Err(e) => fail("the store's revision", e),
        };
        reached(&mut rx, first, n).await;
        eprintln!(
            "{n} agents connected and holding their first bundle after {:.2} s",
            start.elapsed().as_secs_f64()
        );
        (client, rx)
    });

    let mut port = 1000u16;
    let mut g = c.benchmark_group("controller");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.bench_function(format!("one_change_reaches_{n}_agents"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    port = port.wrapping_add(1).max(1000);
                    let files = fleet.policy_with_port(port);
                    let body = serde_json::to_vec(&PolicyUpload { files })
                        .unwrap_or_else(|e| fail("encoding the upload", e));
                    let t0 = Instant::now();
                    let r = client
                        .request(
                            "PUT",
                            "/v1/policy",
                            Some(body),
                            Signer::Operator(&operator),
                            REQUEST_TIMEOUT,
                        )
                        .await
                        .unwrap_or_else(|e| fail("uploading the policy", e));
                    if r.status != 200 {
                        fail("uploading the policy", r.message());
                    }
                    let revision = r
                        .json::<controlplane::controller::api::PolicyResponse>()
                        .unwrap_or_else(|e| fail("the upload's answer", e))
                        .revision;
                    reached(&mut reports, revision, n).await;
                    total += t0.elapsed();
                }
                total
            })
        })
    });
    g.finish();
}

criterion_group!(benches, distribution);
criterion_main!(benches);
