//! The gateway agent without a controller: bundles fed as files go through the same checks as
//! bundles from the controller; refusals are counted per reason; the last good bundle is kept
//! on disk and a restarted agent starts on it; a tampered file on disk is refused; a rotated
//! key is used once a bundle names it and promoted once that plan is applied.

#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use controlplane::agent::{Agent, AgentConfig, CONTROL_KEY, SEAL_KEY};
use controlplane::bundle::{self, BundleContent};
use controlplane::compile::{Unkeyed, compile_public};
use controlplane::identity::{SealKey, SigningIdentity};
use controlplane::policy::Policy;
use dataplane::SecretKey;
use dataplane::io::PlanSource;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

struct World {
    _tmp: tempfile::TempDir,
    cfg: AgentConfig,
    controller: SigningIdentity,
    seal_public: [u8; 32],
    content: BundleContent,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let key_dir = tmp.path().join("keys");
    std::fs::create_dir(&key_dir).unwrap();
    for t in ["acme", "globex"] {
        let to = key_dir.join(format!("{t}.key"));
        std::fs::copy(configs().join(format!("keys/edge-1/{t}.key")), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    SigningIdentity::generate()
        .save(&key_dir.join(CONTROL_KEY))
        .unwrap();
    let seal = SealKey::generate();
    seal.save(&key_dir.join(SEAL_KEY)).unwrap();
    let policy = Policy::load(&configs().join("policy")).unwrap_or_else(|e| panic!("{e}"));
    let plan = compile_public(&policy, "edge-1", Unkeyed::Error, &|_, _| None).unwrap();
    let cfg = AgentConfig {
        gateway: "edge-1".to_owned(),
        urls: vec!["https://127.0.0.1:9".to_owned()],
        fingerprint: String::new(),
        key_dir,
        state_dir: tmp.path().join("state"),
        mtu: 1420,
        rotate_keys_every: None,
        long_poll: None,
    };
    let controller = SigningIdentity::generate();
    let mut cfg = cfg;
    cfg.fingerprint = controller.fingerprint();
    World {
        _tmp: tmp,
        cfg,
        controller,
        seal_public: seal.public(),
        content: BundleContent {
            gateway: "edge-1".to_owned(),
            version: 5,
            issued_at: 0,
            rotate: 0,
            plan,
        },
    }
}

impl World {
    fn sealed(&self, version: u64) -> Vec<u8> {
        let mut c = self.content.clone();
        c.version = version;
        bundle::seal(&c, &self.controller, &self.seal_public).unwrap()
    }
    fn agent(&self) -> Agent {
        Agent::offline(self.cfg.clone(), self.controller.public()).unwrap()
    }
}

fn refused(agent: &Agent, reason: &str) -> u64 {
    agent
        .controller_status()
        .unwrap()
        .bundles_refused
        .get(reason)
        .copied()
        .unwrap_or(0)
}

#[test]
fn bundles_checked_counted_and_kept() {
    let w = world();
    let mut agent = w.agent();
    assert!(agent.next_plan(false).is_none());

    assert!(agent.offline_bundle(&w.sealed(5), "test"));
    let plan = agent.next_plan(false).unwrap().unwrap();
    assert_eq!(plan.engine.tenants.len(), 2);
    assert!(!plan.interfaces.is_empty());
    agent.applied(Ok(()));
    let status = agent.controller_status().unwrap();
    assert_eq!(status.bundles_applied, 1);
    assert_eq!(status.bundle_version, Some(5));
    let on_disk = w.cfg.state_dir.join("bundle");
    assert!(
        bundle::open(
            &std::fs::read(&on_disk).unwrap(),
            &w.controller.public(),
            &SealKey::load(&w.cfg.key_dir.join(SEAL_KEY)).unwrap(),
            "edge-1",
            None
        )
        .is_ok_and(|c| c.version == 5)
    );
    assert_eq!(
        std::fs::metadata(&on_disk).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A flipped bit, another signer, a replay: each refused under its reason.
    let mut flipped = w.sealed(6);
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    assert!(!agent.offline_bundle(&flipped, "flipped"));
    let other = SigningIdentity::generate();
    let mut c = w.content.clone();
    c.version = 7;
    let forged = bundle::seal(&c, &other, &w.seal_public).unwrap();
    assert!(!agent.offline_bundle(&forged, "forged"));
    assert_eq!(refused(&agent, "wrong_signer"), 1);
    assert!(!agent.offline_bundle(&w.sealed(5), "replayed"));
    assert_eq!(refused(&agent, "replay"), 1);
    let status = agent.controller_status().unwrap();
    assert_eq!(
        status.bundles_refused.values().sum::<u64>(),
        3,
        "{status:?}"
    );
    assert!(agent.next_plan(false).is_none());
    // SIGHUP re-offers what is applied.
    assert!(agent.next_plan(true).unwrap().is_ok());
    agent.applied(Ok(()));

    // A newer one passes.
    assert!(agent.offline_bundle(&w.sealed(8), "test"));
    assert!(agent.next_plan(false).unwrap().is_ok());
    agent.applied(Ok(()));
    assert_eq!(agent.controller_status().unwrap().bundle_version, Some(8));
    drop(agent);

    // A restarted agent starts on the last good bundle.
    let mut agent = w.agent();
    assert!(agent.next_plan(false).unwrap().is_ok());
    agent.applied(Ok(()));
    assert_eq!(agent.controller_status().unwrap().bundle_version, Some(8));
    drop(agent);

    // A tampered file on disk is refused, counted, never applied.
    let mut bytes = std::fs::read(&on_disk).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&on_disk, &bytes).unwrap();
    let mut agent = w.agent();
    assert!(agent.next_plan(false).is_none());
    let status = agent.controller_status().unwrap();
    assert_eq!(
        status.bundles_refused.values().sum::<u64>(),
        1,
        "{status:?}"
    );
}

#[test]
fn rotated_key_used_then_promoted() {
    let mut w = world();
    let next = SecretKey::generate();
    let next_path = w.cfg.key_dir.join("acme.next.key");
    controlplane::keys::write_key_file(&next_path, &next).unwrap();
    for t in &mut w.content.plan.tenants {
        if t.name == "acme" {
            t.own_key = Some(next.public_key());
        }
    }
    let mut agent = w.agent();
    assert!(agent.offline_bundle(&w.sealed(9), "rotated"));
    let plan = agent.next_plan(false).unwrap().unwrap();
    let acme = plan
        .engine
        .tenants
        .iter()
        .find(|t| t.name == "acme")
        .unwrap();
    assert_eq!(acme.private_key.public_key(), next.public_key());
    assert!(next_path.exists(), "promoted only once applied");
    agent.applied(Ok(()));
    assert!(!next_path.exists());
    let current = controlplane::keys::read_key_file(&w.cfg.key_dir.join("acme.key")).unwrap();
    assert_eq!(current.public_key(), next.public_key());
}

#[test]
fn unknown_key_leaves_the_tenant_out() {
    let mut w = world();
    for t in &mut w.content.plan.tenants {
        if t.name == "globex" {
            t.own_key = None;
        }
    }
    let mut agent = w.agent();
    assert!(agent.offline_bundle(&w.sealed(3), "unkeyed"));
    let plan = agent.next_plan(false).unwrap().unwrap();
    let names: Vec<&str> = plan
        .engine
        .tenants
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, ["acme"]);
    assert!(plan.interfaces.iter().all(|i| i.tenant == "acme"));
}
