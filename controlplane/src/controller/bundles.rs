//! Building gateways' bundles from a store [`Snapshot`], with a cache so that a thousand
//! gateways long-polling after one change cost one snapshot, one policy parse and one
//! compilation per gateway.
//!
//! The policy names gateways and where their endpoints live; the registry (the store's gateway
//! records) supplies each gateway's tenant keys. Only enrolled, unrevoked gateways get keys, and
//! [`Unkeyed::Skip`] leaves a keyless gateway out of every peer's plan: revoking a gateway
//! removes it from every bundle at the next revision.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::bundle::{BundleContent, BundleError, derive_psk, seal};
use crate::compile::{CompileError, PolicyIndex, PublicPlan, Unkeyed, compile_indexed};
use crate::identity::SigningIdentity;
use crate::policy::{GATEWAYS_FILE, Mode, Policy, PolicySources, SourceFile, TENANTS_DIR};
use crate::store::{GatewayRecord, PolicyFiles, Snapshot, Store, StoreError};

/// The purpose string of the preshared-key secret ([`SigningIdentity::derive_secret`]).
pub const PSK_PURPOSE: &str = "corridor psk v1";

/// A bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored policy does not validate (it was validated when stored: a newer corridor may
    /// read it differently).
    #[error("the stored policy does not validate:\n{0}")]
    Policy(String),
    /// Compilation failed for this gateway.
    #[error("compiling gateway {gateway}: {source}")]
    Compile {
        /// The gateway.
        gateway: String,
        /// Why.
        source: CompileError,
    },
    /// Sealing failed.
    #[error("sealing the bundle of {gateway}: {source}")]
    Seal {
        /// The gateway.
        gateway: String,
        /// Why.
        source: BundleError,
    },
}

/// The policy texts as [`Policy::from_sources`] takes them. Tenant file names may be given as
/// `acme.toml`, `tenants/acme.toml` or `acme`.
pub fn sources_from_files(files: &PolicyFiles) -> PolicySources {
    let tenants = files
        .tenants
        .iter()
        .map(|(name, text)| {
            let name = name.strip_prefix("tenants/").unwrap_or(name);
            let file = if name.ends_with(".toml") {
                name.to_owned()
            } else {
                format!("{name}.toml")
            };
            SourceFile {
                path: PathBuf::from(TENANTS_DIR).join(file),
                text: text.clone(),
            }
        })
        .collect();
    PolicySources {
        gateways: Some(SourceFile {
            path: PathBuf::from(GATEWAYS_FILE),
            text: files.gateways.clone(),
        }),
        tenants: Some(tenants),
        read_errors: Vec::new(),
    }
}

/// The texts of a policy directory as the store keeps them (`None` when a file could not be
/// read: then [`Policy::from_sources`] on `sources` reports why).
pub fn files_from_sources(sources: &PolicySources) -> Option<PolicyFiles> {
    if !sources.read_errors.is_empty() {
        return None;
    }
    let gateways = sources.gateways.as_ref()?.text.clone();
    let tenants = sources
        .tenants
        .as_ref()?
        .iter()
        .map(|f| {
            let name = f
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, f.text.clone())
        })
        .collect();
    Some(PolicyFiles { gateways, tenants })
}

/// Validates stored policy texts the way the controller uses them: gateway keys come from the
/// registry, so keys in `gateways.toml` may be missing ([`Mode::Lenient`]).
pub fn validate(files: &PolicyFiles) -> Result<Policy, crate::PolicyErrors> {
    Policy::from_sources(&sources_from_files(files), Mode::Lenient)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One snapshot and what was derived from it: the policy with the registry's keys, and the
/// sealed bundles built so far.
#[derive(Debug)]
pub struct Prepared {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// The policy with registry keys (`None`: no policy stored yet); `Err`: it does not validate.
    policy: Option<Result<Policy, String>>,
    /// Lookups over `policy`, built once for all its gateways' bundles.
    index: PolicyIndex,
    /// Registry records by name (every request looks its gateway up).
    records: HashMap<String, usize>,
    sealed: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl Prepared {
    /// Parses the snapshot's policy and fills gateway keys from the registry.
    pub fn new(snapshot: Snapshot) -> Self {
        let policy = snapshot.policy.as_ref().map(|files| {
            validate(files)
                .map(|mut p| {
                    keys_from_registry(&mut p, &snapshot.gateways);
                    p
                })
                .map_err(|e| e.to_string())
        });
        let records = snapshot
            .gateways
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.clone(), i))
            .collect();
        let index = match &policy {
            Some(Ok(p)) => PolicyIndex::new(p),
            _ => PolicyIndex::default(),
        };
        Prepared {
            snapshot,
            policy,
            index,
            records,
            sealed: Mutex::new(HashMap::new()),
        }
    }

    /// The policy with registry keys, if one is stored and valid.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref().and_then(|p| p.as_ref().ok())
    }

    /// The registry record of `gateway`.
    pub fn record(&self, gateway: &str) -> Option<&GatewayRecord> {
        self.records
            .get(gateway)
            .and_then(|&i| self.snapshot.gateways.get(i))
    }

    /// The sealed bundle of `gateway` at this snapshot's revision (built once, then cached).
    pub fn bundle(
        &self,
        identity: &SigningIdentity,
        gateway: &str,
    ) -> Result<Arc<Vec<u8>>, BuildError> {
        if let Some(b) = self.lock().get(gateway) {
            return Ok(Arc::clone(b));
        }
        let bytes = Arc::new(self.build(identity, gateway)?);
        self.lock()
            .entry(gateway.to_owned())
            .or_insert_with(|| Arc::clone(&bytes));
        Ok(bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Vec<u8>>>> {
        self.sealed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn build(&self, identity: &SigningIdentity, gateway: &str) -> Result<Vec<u8>, BuildError> {
        let record = self
            .record(gateway)
            .ok_or_else(|| StoreError::UnknownGateway(gateway.to_owned()))?;
        let plan = match &self.policy {
            None => empty_plan(),
            Some(Err(e)) => return Err(BuildError::Policy(e.clone())),
            // Enrolled but not (or no longer) in the policy: it serves nothing.
            Some(Ok(p)) if p.gateway(gateway).is_none() => empty_plan(),
            Some(Ok(policy)) => {
                let secret = zeroize::Zeroizing::new(identity.derive_secret(PSK_PURPOSE));
                let generation = |name: &str| self.record(name).map_or(0, |r| r.key_generation);
                let my_gen = record.key_generation;
                let psk = |tenant: &str, peer: &str| {
                    Some(derive_psk(
                        &secret,
                        tenant,
                        (gateway, my_gen),
                        (peer, generation(peer)),
                    ))
                };
                compile_indexed(policy, &self.index, gateway, Unkeyed::Skip, &psk).map_err(
                    |source| BuildError::Compile {
                        gateway: gateway.to_owned(),
                        source,
                    },
                )?
            }
        };
        let content = BundleContent {
            gateway: gateway.to_owned(),
            version: self.snapshot.revision,
            issued_at: now_secs(),
            rotate: record.rotate_requested,
            plan,
        };
        seal(&content, identity, &record.seal_key).map_err(|source| BuildError::Seal {
            gateway: gateway.to_owned(),
            source,
        })
    }
}

fn empty_plan() -> PublicPlan {
    PublicPlan {
        tenants: Vec::new(),
        interfaces: Vec::new(),
    }
}

/// Replaces every policy gateway's keys with the registry's: an enrolled, unrevoked gateway's
/// tenant keys; nothing for the others (so [`Unkeyed::Skip`] leaves them out).
fn keys_from_registry(policy: &mut Policy, registry: &[GatewayRecord]) {
    let by_name: HashMap<&str, &GatewayRecord> =
        registry.iter().map(|r| (r.name.as_str(), r)).collect();
    for g in &mut policy.gateways {
        g.keys = match by_name.get(g.name.as_str()) {
            Some(r) if r.revoked_at.is_none() => r.tenant_keys.clone(),
            _ => BTreeMap::new(),
        };
    }
}

/// Every enrolled, unrevoked gateway's sealed bundle at `snapshot` (for benchmarks and checks).
pub fn build_all(
    snapshot: Snapshot,
    identity: &SigningIdentity,
) -> Result<Vec<(String, Vec<u8>)>, BuildError> {
    let prepared = Prepared::new(snapshot);
    let names: Vec<String> = prepared
        .snapshot
        .gateways
        .iter()
        .filter(|g| g.revoked_at.is_none())
        .map(|g| g.name.clone())
        .collect();
    names
        .into_iter()
        .map(|name| {
            let bytes = prepared.bundle(identity, &name)?;
            Ok((name, bytes.as_ref().clone()))
        })
        .collect()
}

/// The latest [`Prepared`] snapshot, shared by every request of a replica.
#[derive(Debug, Default)]
pub struct BundleCache {
    latest: Mutex<Option<Arc<Prepared>>>,
}

impl BundleCache {
    /// A prepared snapshot at `min_revision` or later: the cached one when it is recent enough,
    /// else a fresh snapshot (one at a time: concurrent callers wait for it and share it).
    /// Blocking (store I/O).
    pub fn at_least(
        &self,
        store: &dyn Store,
        min_revision: u64,
    ) -> Result<Arc<Prepared>, StoreError> {
        let mut latest = self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = latest.as_ref()
            && p.snapshot.revision >= min_revision
        {
            return Ok(Arc::clone(p));
        }
        let prepared = Arc::new(Prepared::new(store.snapshot()?));
        *latest = Some(Arc::clone(&prepared));
        Ok(prepared)
    }
}
