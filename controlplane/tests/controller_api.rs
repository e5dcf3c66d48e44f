//! The controller's API end to end on loopback: a real `serve()` over TLS with a SQLite store
//! in a temporary directory, spoken to by the real client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use controlplane::client::{Client, Response, Signer};
use controlplane::controller::api::{
    EnrollRequest, EnrollResponse, Health, KeysRequest, PolicyResponse, PolicyUpload,
};
use controlplane::controller::bundles::files_from_sources;
use controlplane::controller::tls::Pin;
use controlplane::controller::{ControllerConfig, serve};
use controlplane::identity::{SealKey, SigningIdentity};
use controlplane::policy::PolicySources;
use controlplane::store::{PolicyFiles, Store};
use controlplane::token::Token;

const T: Duration = Duration::from_secs(10);

fn b64(k: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn example_policy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/policy")
}

fn example_policy() -> PolicyFiles {
    files_from_sources(&PolicySources::read(&example_policy_dir())).unwrap()
}

struct Ctl {
    client: Client,
    public: [u8; 32],
    fingerprint: String,
    store: Arc<dyn Store>,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Ctl {
    async fn start(configure: impl FnOnce(&mut ControllerConfig, &Path)) -> Ctl {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ControllerConfig::default_in(dir.path());
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.long_poll = 5;
        configure(&mut cfg, dir.path());
        let store: Arc<dyn Store> = Arc::from(controlplane::store::open(&cfg.store_url()).unwrap());
        let identity = SigningIdentity::generate();
        let public = identity.public();
        let fingerprint = identity.fingerprint();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = Arc::clone(&store);
        let task = tokio::spawn(async move {
            serve(cfg, identity, s, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Ctl {
            client: Client::new(vec![url], Pin::Key(public)).unwrap(),
            public,
            fingerprint,
            store,
            dir,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(T, &mut self.task)
            .await
            .unwrap()
            .unwrap();
    }

    async fn req(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        signer: Signer<'_>,
    ) -> Response {
        self.client
            .request(method, path, body, signer, Duration::from_secs(30))
            .await
            .unwrap()
    }

    fn token(&self, gateway: &str) -> Token {
        let (token, record) = Token::issue(gateway, 3600, now(), &self.fingerprint);
        self.store.add_token(&record).unwrap();
        token
    }

    async fn health(&self) -> Health {
        self.req("GET", "/v1/health", None, Signer::None)
            .await
            .json()
            .unwrap()
    }
}

struct Gw {
    name: String,
    signing: SigningIdentity,
    seal: SealKey,
}

impl Gw {
    fn new(name: &str) -> Gw {
        Gw {
            name: name.to_owned(),
            signing: SigningIdentity::generate(),
            seal: SealKey::generate(),
        }
    }

    fn enroll_body(&self, token: &str) -> Vec<u8> {
        serde_json::to_vec(&EnrollRequest {
            token: token.to_owned(),
            gateway: self.name.clone(),
            signing_key: b64(&self.signing.public()),
            seal_key: b64(&self.seal.public()),
        })
        .unwrap()
    }

    fn signer(&self) -> Signer<'_> {
        Signer::Gateway(&self.name, &self.signing)
    }
}

async fn enroll(ctl: &Ctl, gw: &Gw) -> EnrollResponse {
    let token = ctl.token(&gw.name).encode();
    let r = ctl
        .req(
            "POST",
            "/v1/enroll",
            Some(gw.enroll_body(&token)),
            Signer::None,
        )
        .await;
    r.json().unwrap()
}

async fn upload_keys(ctl: &Ctl, gw: &Gw, keys: &BTreeMap<String, [u8; 32]>) {
    let body = serde_json::to_vec(&KeysRequest {
        tenant_keys: keys.iter().map(|(t, k)| (t.clone(), b64(k))).collect(),
    })
    .unwrap();
    let r = ctl.req("POST", "/v1/keys", Some(body), gw.signer()).await;
    assert_eq!(r.status, 200, "{}", r.message());
}

/// Peers' public keys per tenant in a bundle that opens with `gw`'s seal key.
async fn bundle_after(ctl: &Ctl, gw: &Gw, after: u64) -> (u64, BTreeMap<String, Vec<[u8; 32]>>) {
    let r = ctl
        .req(
            "GET",
            &format!("/v1/bundle?after={after}"),
            None,
            gw.signer(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.message());
    let content =
        controlplane::bundle::open(&r.body, &ctl.public, &gw.seal, &gw.name, Some(after)).unwrap();
    assert_eq!(Some(content.version), r.version);
    let peers = content
        .plan
        .tenants
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.peers.iter().map(|p| p.public_key).collect(),
            )
        })
        .collect();
    (content.version, peers)
}

fn tenant_keys() -> BTreeMap<String, [u8; 32]> {
    ["acme", "globex"]
        .into_iter()
        .map(|t| (t.to_owned(), SealKey::generate().public()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_keys_bundles_long_poll_and_revocation() {
    let ctl = Ctl::start(|_, _| {}).await;
    ctl.store.put_policy(&example_policy()).unwrap();
    let edge = Gw::new("edge-1");
    let dc = Gw::new("dc-1");

    // Refused tokens.
    let mut forged = ctl.token("edge-1");
    forged.secret = [9; 32];
    let r = ctl
        .req(
            "POST",
            "/v1/enroll",
            Some(edge.enroll_body(&forged.encode())),
            Signer::None,
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.message());
    let r = ctl
        .req(
            "POST",
            "/v1/enroll",
            Some(edge.enroll_body("corridor1.garbage")),
            Signer::None,
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.message());
    let (elsewhere, _) = Token::issue(
        "edge-1",
        3600,
        now(),
        &SigningIdentity::generate().fingerprint(),
    );
    let r = ctl
        .req(
            "POST",
            "/v1/enroll",
            Some(edge.enroll_body(&elsewhere.encode())),
            Signer::None,
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.message());
    let (expired, record) = Token::issue("edge-1", 10, now() - 1000, &ctl.fingerprint);
    ctl.store.add_token(&record).unwrap();
    let r = ctl
        .req(
            "POST",
            "/v1/enroll",
            Some(edge.enroll_body(&expired.encode())),
            Signer::None,
        )
        .await;
    assert_eq!(r.status, 410, "{}", r.message());
    let for_dc = ctl.token("dc-1");
    let r = ctl
        .req(
            "POST",
            "/v1/enroll",
            Some(edge.enroll_body(&for_dc.encode())),
            Signer::None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.message());

    // Enrollment, once.
    let token = ctl.token("edge-1").encode();
    let r = ctl
        .req(
            "POST",
            "/v1/enroll",
            Some(edge.enroll_body(&token)),
            Signer::None,
        )
        .await;
    let answer: EnrollResponse = r.json().unwrap();
    assert_eq!(answer.tenants, ["acme", "globex"]);
    let r = ctl
        .req(
            "POST",
            "/v1/enroll",
            Some(edge.enroll_body(&token)),
            Signer::None,
        )
        .await;
    assert_eq!(r.status, 410, "{}", r.message());
    enroll(&ctl, &dc).await;

    // A wrong signature.
    let impostor = Gw {
        name: "edge-1".into(),
        signing: SigningIdentity::generate(),
        seal: SealKey::generate(),
    };
    let r = ctl
        .req("GET", "/v1/bundle?after=0", None, impostor.signer())
        .await;
    assert_eq!(r.status, 401, "{}", r.message());
    let unknown = Gw::new("nobody");
    let r = ctl
        .req("GET", "/v1/bundle?after=0", None, unknown.signer())
        .await;
    assert_eq!(r.status, 403, "{}", r.message());

    // Keys, then bundles with the peers' keys.
    let edge_keys = tenant_keys();
    let dc_keys = tenant_keys();
    upload_keys(&ctl, &edge, &edge_keys).await;
    upload_keys(&ctl, &dc, &dc_keys).await;
    let (v1, peers) = bundle_after(&ctl, &edge, 0).await;
    assert_eq!(peers["acme"], vec![dc_keys["acme"]]);
    assert_eq!(peers["globex"].first(), Some(&dc_keys["globex"]));
    let (_, peers) = bundle_after(&ctl, &dc, 0).await;
    assert!(peers["acme"].contains(&edge_keys["acme"]));

    // Nothing new: 204 after the wait (5 s here).
    let started = Instant::now();
    let r = ctl
        .req(
            "GET",
            &format!("/v1/bundle?after={v1}"),
            None,
            edge.signer(),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.message());
    assert!(started.elapsed() >= Duration::from_secs(4));

    // A waiting long-poll wakes on a change made straight in the store (as another replica
    // would): the revision watch carries it.
    let waiting = {
        let path = format!("/v1/bundle?after={v1}");
        let client = &ctl.client;
        let signer = edge.signer();
        async move {
            client
                .request("GET", &path, None, signer, Duration::from_secs(30))
                .await
                .unwrap()
        }
    };
    let change = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut files = example_policy();
        files.gateways.push_str("\n# changed\n");
        let rev = ctl.store.put_policy(&files).unwrap();
        (Instant::now(), rev)
    };
    let (r, (changed_at, rev)) = tokio::join!(waiting, change);
    assert_eq!(r.status, 200, "{}", r.message());
    assert!(changed_at.elapsed() < Duration::from_secs(10));
    assert_eq!(r.version, Some(rev));

    // Revocation: the revoked gateway is refused, its peers stop listing it.
    ctl.store.revoke("dc-1", now()).unwrap();
    let (_, peers) = bundle_after(&ctl, &edge, rev).await;
    assert!(
        peers
            .values()
            .flatten()
            .all(|k| !dc_keys.values().any(|d| d == k)),
        "{peers:?}"
    );
    let r = ctl
        .req("GET", "/v1/bundle?after=0", None, dc.signer())
        .await;
    assert_eq!(r.status, 403);
    assert!(
        r.message().contains("dc-1 was revoked at"),
        "{}",
        r.message()
    );

    let h = ctl.health().await;
    assert_eq!(h.controller, ctl.fingerprint);
    assert_eq!(h.store, "sqlite");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_uploads_policy() {
    let operator = SigningIdentity::generate();
    let op_pub = b64(&operator.public());
    let ctl = Ctl::start(|c, _| c.operators = vec![op_pub]).await;
    let upload = |files: PolicyFiles| serde_json::to_vec(&PolicyUpload { files }).unwrap();

    let r = ctl
        .req(
            "PUT",
            "/v1/policy",
            Some(upload(example_policy())),
            Signer::Operator(&operator),
        )
        .await;
    let answer: PolicyResponse = r.json().unwrap();
    assert!(answer.revision > 0);
    assert!(
        answer.summary.starts_with("policy OK: 2 gateways"),
        "{}",
        answer.summary
    );
    assert_eq!(ctl.store.snapshot().unwrap().policy, Some(example_policy()));

    let mut bad = example_policy();
    bad.gateways
        .push_str("\n[[gateway]]\nname = \"Bad Name\"\n");
    let r = ctl
        .req(
            "PUT",
            "/v1/policy",
            Some(upload(bad)),
            Signer::Operator(&operator),
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.message().contains("gateways.toml"), "{}", r.message());
    assert_eq!(ctl.health().await.revision, answer.revision);

    let stranger = SigningIdentity::generate();
    let r = ctl
        .req(
            "PUT",
            "/v1/policy",
            Some(upload(example_policy())),
            Signer::Operator(&stranger),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.message());
    assert!(r.message().contains("operators"), "{}", r.message());
    ctl.stop().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("tenants")).unwrap();
    std::fs::copy(from.join("gateways.toml"), to.join("gateways.toml")).unwrap();
    for e in std::fs::read_dir(from.join("tenants")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join("tenants").join(e.file_name())).unwrap();
    }
}

async fn wait_for(ctl: &Ctl, what: &str, pred: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + T;
    loop {
        let r = ctl.health().await.revision;
        if pred(r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: revision still {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_policy_dir() {
    let operator = SigningIdentity::generate();
    let op_pub = b64(&operator.public());
    let ctl = Ctl::start(|c, dir| {
        copy_dir(&example_policy_dir(), &dir.join("policy"));
        c.policy_dir = Some(dir.join("policy"));
        c.operators = vec![op_pub];
    })
    .await;
    let policy = ctl.dir.path().join("policy");
    let first = wait_for(&ctl, "initial policy", |r| r > 0).await;
    assert_eq!(ctl.store.snapshot().unwrap().policy, Some(example_policy()));

    // Uploads are refused while a directory is watched.
    let body = serde_json::to_vec(&PolicyUpload {
        files: example_policy(),
    })
    .unwrap();
    let r = ctl
        .req("PUT", "/v1/policy", Some(body), Signer::Operator(&operator))
        .await;
    assert_eq!(r.status, 409, "{}", r.message());

    // An invalid change is not stored.
    let gw = policy.join("gateways.toml");
    let good = std::fs::read_to_string(&gw).unwrap();
    std::fs::write(&gw, format!("{good}\n[[gateway]]\nname = 7\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(ctl.health().await.revision, first);

    // A valid one is.
    std::fs::write(&gw, format!("{good}\n# edited\n")).unwrap();
    wait_for(&ctl, "edited policy", |r| r > first).await;
    let stored = ctl.store.snapshot().unwrap().policy.unwrap();
    assert!(stored.gateways.ends_with("# edited\n"));
    ctl.stop().await;
}
