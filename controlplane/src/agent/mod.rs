//! The gateway agent: the controller-mode [`PlanSource`] of the gateway's event loop.
//!
//! A thread of its own (a current-thread tokio runtime) long-polls the controller for this
//! gateway's bundle (`GET /v1/bundle?after=V`, signed), with failover across the controller's
//! URLs and exponential backoff with full jitter (0.5 s to 30 s) while it fails. Each bundle is
//! checked ([`crate::bundle::open`]: pinned signer, signature, newer than the applied version,
//! sealed to this gateway, for this gateway); a refused one is counted under its reason and the
//! gateway runs on what it has. An accepted one becomes a plan ([`plan::build`]), is put in a
//! one-plan slot and the event loop is woken (`notify`); the loop takes it through
//! [`PlanSource::next_plan`] and says whether the engine applied it. Only an applied bundle is
//! kept on disk as the last good bundle, and a gateway starts on it when the controller cannot
//! be reached.
//!
//! Offline bundles: files `*.bundle` dropped into `<state-dir>/incoming/` (what
//! `corridor gateway apply-bundle FILE` does) are picked up within a second and go through
//! exactly the same checks, then are deleted. (A directory rather than the control socket: the
//! socket belongs to the event loop, which must not do the agent's work.)

mod enroll;
pub mod plan;
pub mod state;

pub use enroll::{DEFAULT_KEY_DIR, EnrollError, EnrollOptions, EnrollOutcome, enroll};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use dataplane::io::{ControllerStatus, GatewayPlan, PlanSource};

use crate::bundle::{self, BundleContent};
use crate::client::{Client, ClientError, Signer};
use crate::controller::api::{KeysRequest, KeysResponse};
use crate::controller::tls::Pin;
use crate::gateway_config::{ControllerSection, GatewayConfig};
use crate::identity::{SealKey, SigningIdentity};

/// The gateway's control-channel signing key, in the key directory.
pub const CONTROL_KEY: &str = "control.key";
/// The gateway's sealing key, in the key directory.
pub const SEAL_KEY: &str = "seal.key";

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The client's timeout for a bundle request when the configuration sets no `long-poll`
/// (longer than any wait a controller should hold a request).
const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(330);

/// What the agent needs to know.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This gateway's name.
    pub gateway: String,
    /// The controller's URLs.
    pub urls: Vec<String>,
    /// The pinned controller key fingerprint.
    pub fingerprint: String,
    /// The key directory (control.key, seal.key, tenant keys).
    pub key_dir: PathBuf,
    /// The state directory (last good bundle, rotation record).
    pub state_dir: PathBuf,
    /// MTU of the app interfaces.
    pub mtu: u16,
    /// Rotate tenant keys this often, besides when the controller asks.
    pub rotate_keys_every: Option<Duration>,
    /// How long the controller may hold a bundle request.
    pub long_poll: Option<Duration>,
}

impl AgentConfig {
    /// From a gateway configuration and its `[controller]` table.
    pub fn new(config: &GatewayConfig, controller: &ControllerSection) -> Self {
        AgentConfig {
            gateway: config.name.clone(),
            urls: controller.urls.clone(),
            fingerprint: controller.fingerprint.clone(),
            key_dir: config.key_dir.clone(),
            state_dir: controller.state_dir.clone(),
            mtu: config.mtu,
            rotate_keys_every: controller.rotate_keys_every,
            long_poll: controller.long_poll,
        }
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A key of the control channel is missing or unreadable.
    #[error(
        "{0}; has this gateway been enrolled? (`corridor gateway enroll --controller URL --token T`)"
    )]
    Identity(#[from] crate::identity::IdentityError),
    /// The state directory cannot be used.
    #[error("state directory: {0}")]
    State(String),
    /// The controller configuration is unusable.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The agent's thread could not start.
    #[error("cannot start the agent's thread: {0}")]
    Thread(std::io::Error),
}

/// Tenant public keys to register with the controller.
type Uploads = Vec<(String, [u8; 32])>;

/// A bundle accepted and turned into a plan, waiting for the event loop or applied.
#[derive(Debug, Clone)]
struct Ready {
    content: BundleContent,
    bytes: Vec<u8>,
    plan: GatewayPlan,
    promote: Vec<String>,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Option<Ready>,
    offered: Option<Ready>,
    last_applied: Option<Ready>,
    /// Version of the newest bundle accepted (maybe not applied yet).
    received: Option<u64>,
    persisted: state::Persisted,
    controller_key: Option<[u8; 32]>,
    status: ControllerStatus,
    last_contact: Option<Instant>,
}

struct Inner {
    cfg: AgentConfig,
    identity: SigningIdentity,
    seal: SealKey,
    client: Client,
    shared: Mutex<Shared>,
    notify: Box<dyn Fn() + Send + Sync>,
}

/// The running agent. Dropping it stops its thread.
pub struct Agent {
    inner: Arc<Inner>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("gateway", &self.inner.cfg.gateway)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refuse(&self, reason: &str, message: String) {
        tracing::warn!(reason, "bundle refused: {message}");
        let mut s = self.lock();
        *s.status
            .bundles_refused
            .entry(reason.to_owned())
            .or_insert(0) += 1;
        s.status.last_error = Some(message);
    }

    /// Checks `bytes` and turns them into a plan. `Ok(None)`: nothing to do (the bundle was
    /// already received). Refusals are counted here.
    fn accept(&self, bytes: &[u8], source: &str) -> Option<(Ready, Uploads)> {
        let (pinned, applied, received) = {
            let s = self.lock();
            (s.controller_key, s.persisted.applied_version, s.received)
        };
        let Some(pinned) = pinned else {
            self.refuse(
                "unverifiable",
                format!(
                    "{source}: the controller's key is not known yet (it is learned from the controller's TLS certificate at the first contact)"
                ),
            );
            return None;
        };
        let content = match bundle::open(bytes, &pinned, &self.seal, &self.cfg.gateway, applied) {
            Ok(c) => c,
            Err(e) => {
                self.refuse(e.reason(), format!("{source}: {e}"));
                return None;
            }
        };
        if received.is_some_and(|r| content.version <= r) {
            // Received already and not applied yet (or it failed to apply): not a new bundle.
            tracing::debug!(version = content.version, "bundle already received");
            return None;
        }
        match plan::build(&self.cfg.gateway, &content, &self.cfg.key_dir, self.cfg.mtu) {
            Ok(built) => {
                self.lock().received = Some(content.version);
                tracing::info!(
                    version = content.version,
                    tenants = built.plan.engine.tenants.len(),
                    waiting_for_keys = built.upload.len(),
                    "{source}: bundle accepted"
                );
                Some((
                    Ready {
                        content,
                        bytes: bytes.to_vec(),
                        plan: built.plan,
                        promote: built.promote,
                    },
                    built.upload,
                ))
            }
            Err(e) => {
                self.refuse("apply_failed", format!("{source}: {e}"));
                None
            }
        }
    }

    fn offer(&self, ready: Ready) {
        self.lock().pending = Some(ready);
        (self.notify)();
    }

    async fn upload_keys(&self, keys: &[(String, [u8; 32])]) -> Result<u64, ClientError> {
        let req = KeysRequest {
            tenant_keys: keys
                .iter()
                .map(|(t, k)| {
                    (
                        t.clone(),
                        base64::engine::general_purpose::STANDARD.encode(k),
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        };
        let body = serde_json::to_vec(&req).unwrap_or_default();
        let resp = self
            .client
            .request(
                "POST",
                "/v1/keys",
                Some(body),
                Signer::Gateway(&self.cfg.gateway, &self.identity),
                crate::client::REQUEST_TIMEOUT,
            )
            .await?;
        let answer: KeysResponse = resp.json()?;
        tracing::info!(
            tenants = %keys.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(","),
            revision = answer.revision,
            "registered tenant public keys with the controller"
        );
        Ok(answer.revision)
    }

    /// After a bundle was accepted: rotate keys if the controller asks, or if it is time.
    async fn maybe_rotate(&self, content: &BundleContent) {
        let (generation, last) = {
            let s = self.lock();
            (s.persisted.rotate_generation, s.persisted.last_rotation)
        };
        let asked = content.rotate > generation;
        let due = self
            .cfg
            .rotate_keys_every
            .is_some_and(|every| unix_now().saturating_sub(last) >= every.as_secs());
        if !asked && !due {
            return;
        }
        let tenants: Vec<String> = content
            .plan
            .tenants
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let made = match plan::make_next_keys(&self.cfg.key_dir, &tenants) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("key rotation: {e}");
                self.lock().status.last_error = Some(format!("key rotation: {e}"));
                return;
            }
        };
        match self.upload_keys(&made).await {
            Ok(_) => {
                let mut s = self.lock();
                s.persisted.rotate_generation = s.persisted.rotate_generation.max(content.rotate);
                s.persisted.last_rotation = unix_now();
                s.persisted.rotations += 1;
                s.status.rotations = s.persisted.rotations;
                let record = s.persisted.clone();
                drop(s);
                if let Err(e) = state::save(&self.cfg.state_dir, &record) {
                    tracing::error!("{e}");
                }
                tracing::info!(
                    generation = content.rotate,
                    reason = if asked {
                        "the controller asked"
                    } else {
                        "rotate-keys-every"
                    },
                    "rotated tenant keys: the next bundle switches to them"
                );
            }
            Err(e) => {
                // Retried with the next bundle (the record is unchanged).
                tracing::warn!("key rotation: cannot register the new keys: {e}");
                self.lock().status.last_error = Some(format!("key rotation: {e}"));
            }
        }
    }

    async fn handle_bundle(&self, bytes: &[u8], source: &str) {
        let Some((ready, upload)) = self.accept(bytes, source) else {
            return;
        };
        let content = ready.content.clone();
        self.offer(ready);
        if !upload.is_empty() {
            if let Err(e) = self.upload_keys(&upload).await {
                tracing::warn!("cannot register tenant keys: {e}");
                self.lock().status.last_error = Some(e.to_string());
            }
        }
        self.maybe_rotate(&content).await;
    }

    fn learn_controller_key(&self) {
        let Some(key) = self.client.controller_key() else {
            return;
        };
        let mut s = self.lock();
        if s.controller_key != Some(key) {
            s.controller_key = Some(key);
            drop(s);
            if let Err(e) = state::save_controller_key(&self.cfg.state_dir, &key) {
                tracing::warn!("{e}");
            }
        }
    }

    async fn poll_once(&self) -> Result<(), ClientError> {
        let after = {
            let s = self.lock();
            s.received.max(s.persisted.applied_version).unwrap_or(0)
        };
        let timeout = self
            .cfg
            .long_poll
            .map_or(DEFAULT_POLL_TIMEOUT, |d| d + Duration::from_secs(30));
        let path = format!("/v1/bundle?after={after}");
        let resp = self
            .client
            .request(
                "GET",
                &path,
                None,
                Signer::Gateway(&self.cfg.gateway, &self.identity),
                timeout,
            )
            .await;
        self.learn_controller_key();
        let resp = resp?;
        {
            let mut s = self.lock();
            s.last_contact = Some(Instant::now());
            s.status.url = Some(resp.url.clone());
        }
        match resp.status {
            200 => {
                self.set_connected(true, None);
                let source = format!("bundle from {}", resp.url);
                self.handle_bundle(&resp.body, &source).await;
                Ok(())
            }
            204 => {
                self.set_connected(true, None);
                Ok(())
            }
            _ => Err(resp.status_error()),
        }
    }

    fn set_connected(&self, connected: bool, error: Option<String>) {
        let mut s = self.lock();
        s.status.connected = connected;
        if let Some(e) = error {
            s.status.last_error = Some(e);
        }
    }

    /// Processes and deletes `incoming/*.bundle`.
    async fn scan_incoming(&self) {
        let dir = self.cfg.state_dir.join(state::INCOMING_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "bundle"))
            .collect();
        files.sort();
        for file in files {
            let bytes = std::fs::read(&file);
            if let Err(e) = std::fs::remove_file(&file) {
                tracing::warn!(path = %file.display(), "cannot delete an incoming bundle: {e}");
            }
            match bytes {
                Ok(bytes) => {
                    let source = format!("bundle file {}", file.display());
                    self.handle_bundle(&bytes, &source).await;
                }
                Err(e) => tracing::warn!(path = %file.display(), "cannot read: {e}"),
            }
        }
    }

    async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let watcher = {
            let me = self.clone();
            let mut stop = stop.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tick.tick() => me.scan_incoming().await,
                        _ = stop.changed() => return,
                    }
                }
            }
        };
        let poller = async {
            let mut failures: u32 = 0;
            loop {
                let result = tokio::select! {
                    r = self.poll_once() => r,
                    _ = stop.changed() => return,
                };
                match result {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let wait = backoff(failures);
                        tracing::warn!(retry_in_ms = wait.as_millis() as u64, "controller: {e}");
                        self.set_connected(false, Some(e.to_string()));
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
            }
        };
        tokio::join!(watcher, poller);
    }
}

/// Exponential backoff with full jitter: uniform in [0.5 s, min(30 s, 0.5 s * 2^(n-1))].
fn backoff(failures: u32) -> Duration {
    use rand_core::RngCore as _;
    let cap = BACKOFF_MIN
        .saturating_mul(1u32 << failures.saturating_sub(1).min(10))
        .min(BACKOFF_MAX);
    let span = cap.saturating_sub(BACKOFF_MIN).as_millis() as u64;
    let jitter = if span == 0 {
        0
    } else {
        rand_core::OsRng.next_u64() % (span + 1)
    };
    BACKOFF_MIN + Duration::from_millis(jitter)
}

impl Agent {
    /// Loads the control-channel keys and the last good bundle, and starts the agent's thread.
    /// `notify` is called whenever a plan is waiting (the CLI passes the event loop's waker).
    pub fn start(
        cfg: AgentConfig,
        notify: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Agent, AgentError> {
        let inner = Arc::new(Self::prepare(cfg, notify, None)?);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AgentError::Thread)?;
        let me = inner.clone();
        std::thread::Builder::new()
            .name("corridor-agent".to_owned())
            .spawn(move || rt.block_on(me.run(rx)))
            .map_err(AgentError::Thread)?;
        Ok(Agent {
            inner,
            stop: Some(tx),
        })
    }

    fn prepare(
        cfg: AgentConfig,
        notify: Box<dyn Fn() + Send + Sync>,
        known_key: Option<[u8; 32]>,
    ) -> Result<Inner, AgentError> {
        let identity = SigningIdentity::load(&cfg.key_dir.join(CONTROL_KEY))?;
        let seal = SealKey::load(&cfg.key_dir.join(SEAL_KEY))?;
        state::ensure_dir(&cfg.state_dir)
            .map_err(|e| AgentError::State(format!("{}: {e}", cfg.state_dir.display())))?;
        state::ensure_dir(&cfg.state_dir.join(state::INCOMING_DIR))
            .map_err(|e| AgentError::State(format!("{}: {e}", cfg.state_dir.display())))?;
        let persisted = match state::load(&cfg.state_dir).map_err(AgentError::State)? {
            Some(p) => p,
            None => {
                // First start: the rotation clock starts now.
                let p = state::Persisted {
                    last_rotation: unix_now(),
                    ..state::Persisted::default()
                };
                state::save(&cfg.state_dir, &p).map_err(AgentError::State)?;
                p
            }
        };
        let client = Client::new(cfg.urls.clone(), Pin::Fingerprint(cfg.fingerprint.clone()))?;
        let controller_key =
            known_key.or_else(|| state::load_controller_key(&cfg.state_dir, &cfg.fingerprint));
        let inner = Inner {
            shared: Mutex::new(Shared {
                controller_key,
                status: ControllerStatus {
                    url: cfg.urls.first().cloned(),
                    rotations: persisted.rotations,
                    ..ControllerStatus::default()
                },
                persisted,
                ..Shared::default()
            }),
            cfg,
            identity,
            seal,
            client,
            notify,
        };
        inner.load_last_good();
        Ok(inner)
    }

    /// An agent that does not talk to any controller (tests): bundles come from
    /// [`Agent::offline_bundle`] only.
    pub fn offline(cfg: AgentConfig, controller_key: [u8; 32]) -> Result<Agent, AgentError> {
        let inner = Self::prepare(cfg, Box::new(|| {}), Some(controller_key))?;
        Ok(Agent {
            inner: Arc::new(inner),
            stop: None,
        })
    }

    /// Feeds bundle bytes (from a file) through exactly the checks of a bundle from the
    /// controller; a plan results when they pass (taken by [`PlanSource::next_plan`]). Keys the
    /// controller lacks are not uploaded from here (the agent's thread does that for bundles
    /// dropped into `incoming/`).
    pub fn offline_bundle(&self, bytes: &[u8], source: &str) -> bool {
        match self.inner.accept(bytes, source) {
            Some((ready, _)) => {
                self.inner.offer(ready);
                true
            }
            None => false,
        }
    }

    /// The state directory's `incoming/` (where `corridor gateway apply-bundle` drops files).
    pub fn incoming_dir(&self) -> PathBuf {
        self.inner.cfg.state_dir.join(state::INCOMING_DIR)
    }
}

impl Inner {
    /// Makes the last good bundle on disk the first pending plan, after the same checks as
    /// any bundle (its version may equal the applied one: it is the applied one).
    fn load_last_good(&self) {
        let path = self.cfg.state_dir.join(state::BUNDLE_FILE);
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let (key, applied) = {
            let s = self.lock();
            (s.controller_key, s.persisted.applied_version)
        };
        let source = format!("last good bundle {}", path.display());
        let Some(key) = key else {
            self.refuse(
                "unverifiable",
                format!("{source}: no stored controller key to verify it with; waiting for the controller"),
            );
            return;
        };
        match bundle::open(&bytes, &key, &self.seal, &self.cfg.gateway, None) {
            Ok(content) if applied.is_some_and(|a| content.version < a) => {
                self.refuse(
                    "replay",
                    format!(
                        "{source}: version {} is older than the applied version {}: replaced on disk?",
                        content.version,
                        applied.unwrap_or(0)
                    ),
                );
            }
            Ok(content) => {
                match plan::build(&self.cfg.gateway, &content, &self.cfg.key_dir, self.cfg.mtu) {
                    Ok(built) => {
                        tracing::info!(
                            version = content.version,
                            "starting on the last good bundle"
                        );
                        let mut s = self.lock();
                        s.received = Some(content.version);
                        s.pending = Some(Ready {
                            content,
                            bytes,
                            plan: built.plan,
                            promote: built.promote,
                        });
                    }
                    Err(e) => self.refuse("apply_failed", format!("{source}: {e}")),
                }
            }
            Err(e) => self.refuse(e.reason(), format!("{source}: {e}")),
        }
    }

    fn applied_ok(&self) {
        let mut s = self.lock();
        let Some(ready) = s.offered.take() else {
            return;
        };
        let version = ready.content.version;
        let fresh = s.persisted.applied_version != Some(version);
        s.persisted.applied_version = Some(version);
        s.status.bundle_version = Some(version);
        s.status.bundles_applied += 1;
        let record = s.persisted.clone();
        let promote = ready.promote.clone();
        s.last_applied = Some(ready.clone());
        drop(s);
        for tenant in &promote {
            match plan::promote(&self.cfg.key_dir, tenant) {
                Ok(()) => tracing::info!(%tenant, "rotated key in use: promoted the next key"),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        if let Some(r) = self.lock().last_applied.as_mut() {
            r.promote.clear();
        }
        if fresh {
            let path = self.cfg.state_dir.join(state::BUNDLE_FILE);
            if let Err(e) = state::write_atomic(&path, &ready.bytes) {
                tracing::error!(path = %path.display(), "cannot keep the last good bundle: {e}");
            }
            if let Err(e) = state::save(&self.cfg.state_dir, &record) {
                tracing::error!("{e}");
            }
        }
        tracing::info!(version, "bundle applied");
    }
}

impl PlanSource for Agent {
    fn next_plan(&mut self, hup: bool) -> Option<Result<GatewayPlan, String>> {
        let inner = &self.inner;
        let mut s = inner.lock();
        if let Some(ready) = s.pending.take() {
            let plan = ready.plan.clone();
            s.offered = Some(ready);
            return Some(Ok(plan));
        }
        if !hup {
            return None;
        }
        // SIGHUP with nothing new: the applied bundle again, with the keys re-read.
        let last = s.last_applied.clone()?;
        drop(s);
        match plan::build(
            &inner.cfg.gateway,
            &last.content,
            &inner.cfg.key_dir,
            inner.cfg.mtu,
        ) {
            Ok(built) => {
                let plan = built.plan.clone();
                inner.lock().offered = Some(Ready {
                    plan: built.plan,
                    promote: built.promote,
                    ..last
                });
                Some(Ok(plan))
            }
            Err(e) => Some(Err(e)),
        }
    }

    fn applied(&mut self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => self.inner.applied_ok(),
            Err(e) => {
                let version = self.inner.lock().offered.take().map(|r| r.content.version);
                let message = match version {
                    Some(v) => format!("bundle version {v} could not be applied: {e}"),
                    None => e,
                };
                self.inner.refuse("apply_failed", message);
            }
        }
    }

    fn controller_status(&self) -> Option<ControllerStatus> {
        let s = self.inner.lock();
        let mut status = s.status.clone();
        status.last_contact_secs = s.last_contact.map(|t| t.elapsed().as_secs());
        status.bundle_version = s.persisted.applied_version;
        status.rotations = s.persisted.rotations;
        Some(status)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}

/// The path of the gateway's state directory's incoming folder for a configuration.
pub fn incoming_dir(controller: &ControllerSection) -> PathBuf {
    controller.state_dir.join(state::INCOMING_DIR)
}

/// Drops a bundle file into a running gateway's `incoming/` (temp file + rename, so the agent
/// never reads half of it). Returns the path written.
pub fn drop_incoming(controller: &ControllerSection, file: &Path) -> Result<PathBuf, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let dir = incoming_dir(controller);
    state::ensure_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let target = dir.join(format!("{}-{}.bundle", unix_now(), std::process::id()));
    state::write_atomic(&target, &bytes).map_err(|e| format!("{}: {e}", target.display()))?;
    Ok(target)
}
