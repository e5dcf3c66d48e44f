//! The controller's HTTPS server: the routes of [`super::api`], request authentication, the
//! revision watch that wakes long-polls, and the policy-directory watcher.
//!
//! Every replica (several may share one PostgreSQL store) polls the store's revision every
//! 200 ms and publishes it on a `watch` channel; its own mutations publish at once. A waiting
//! `GET /v1/bundle` wakes on that channel, so a change made through any replica reaches every
//! gateway within a fraction of a second.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

use super::api::{
    self, EnrollRequest, EnrollResponse, ErrorBody, Health, KeysRequest, KeysResponse,
    PolicyResponse, PolicyUpload,
};
use super::bundles::{self, BundleCache, Prepared};
use super::config::{ControllerConfig, ControllerConfigError};
use super::tls;
use crate::identity::{self, IdentityError, SigningIdentity};
use crate::policy::{Mode, Policy, PolicySources};
use crate::store::{self, RedeemError, Store, StoreError};
use crate::token::{self, Token};

/// Largest request body accepted.
pub const MAX_BODY: usize = 4 << 20;
/// How often the store's revision is polled.
pub const REVISION_POLL: Duration = Duration::from_millis(200);
/// How often the policy directory is read.
pub const POLICY_POLL: Duration = Duration::from_secs(1);
/// How long a TLS handshake and a request's headers may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the controller could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The configuration file.
    #[error(transparent)]
    Config(#[from] ControllerConfigError),
    /// The key file.
    #[error("{0} (run `corridor controller init --config FILE` to create the controller's key)")]
    Key(#[from] IdentityError),
    /// The store.
    #[error("opening the store {url}: {source}")]
    Store {
        /// The store URL.
        url: String,
        /// Why.
        source: StoreError,
    },
    /// TLS.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The listening socket.
    #[error(
        "cannot listen on {addr}: {source}; is another controller running there? change `listen`"
    )]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Other I/O (the runtime, signals, accepting).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// What every request handler shares.
#[derive(Debug)]
struct Shared {
    cfg: ControllerConfig,
    identity: Arc<SigningIdentity>,
    fingerprint: String,
    operators: Vec<[u8; 32]>,
    store: Arc<dyn Store>,
    store_kind: &'static str,
    revision: watch::Sender<u64>,
    cache: BundleCache,
    invalid_policy_changes: AtomicU64,
}

impl Shared {
    /// Publishes a revision this replica produced or saw (never goes backwards).
    fn publish(&self, revision: u64) {
        self.revision.send_if_modified(|cur| {
            if revision > *cur {
                *cur = revision;
                true
            } else {
                false
            }
        });
    }

    /// The prepared snapshot at the latest revision this replica knows.
    async fn prepared(self: &Arc<Self>) -> Result<Arc<Prepared>, Reply> {
        let min = *self.revision.borrow();
        let me = Arc::clone(self);
        blocking(move || me.cache.at_least(me.store.as_ref(), min))
            .await?
            .map_err(store_failure)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An error answer: status and text.
#[derive(Debug)]
struct Reply(StatusCode, String);

fn store_failure(e: StoreError) -> Reply {
    tracing::error!(error = %e, "store failed");
    Reply(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Reply> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "a blocking task failed");
        Reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the controller's log".to_owned(),
        )
    })
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(reply: Reply) -> Response<Full<Bytes>> {
    json_response(reply.0, &ErrorBody { error: reply.1 })
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// A request after its body was read.
struct Req {
    method: Method,
    path_and_query: String,
    query: String,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Reply> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Reply(
                StatusCode::BAD_REQUEST,
                format!("the request body is not the expected JSON: {e}"),
            )
        })
    }

    /// Checks time and signature headers against `public`.
    fn check_signature(&self, public: &[u8; 32], who: &str) -> Result<(), Reply> {
        let unauthorized = |m: String| Reply(StatusCode::UNAUTHORIZED, m);
        let time: u64 = self
            .header(api::HDR_TIME)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| unauthorized(format!("missing or malformed {}", api::HDR_TIME)))?;
        let now = now_secs();
        if now.abs_diff(time) > api::MAX_SKEW_SECS {
            return Err(unauthorized(format!(
                "request time {time} is {} s away from the controller's clock ({now}); more than \
                 {} s apart: set the clock (NTP) on the side that is wrong",
                now.abs_diff(time),
                api::MAX_SKEW_SECS
            )));
        }
        let signature = self
            .header(api::HDR_SIGNATURE)
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or_else(|| unauthorized(format!("missing or malformed {}", api::HDR_SIGNATURE)))?;
        let message =
            api::request_message(self.method.as_str(), &self.path_and_query, time, &self.body);
        if !identity::verify(public, &message, &signature) {
            return Err(unauthorized(format!(
                "the request signature does not verify against {who}'s registered key"
            )));
        }
        Ok(())
    }

    fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    cfg: ControllerConfig,
    identity: SigningIdentity,
    store: Arc<dyn Store>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControllerError> {
    let tls_config = tls::server_config(&identity, &cfg.tls_names)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let store_kind = if cfg.store_url().starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    let initial = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || store.revision())
            .await
            .map_err(|e| ControllerError::Io {
                what: "reading the store's revision",
                source: std::io::Error::other(e),
            })?
            .map_err(|source| ControllerError::Store {
                url: cfg.store_url(),
                source,
            })?
    };
    let (revision, _) = watch::channel(initial);
    let shared = Arc::new(Shared {
        fingerprint: identity.fingerprint(),
        operators: cfg.operator_keys(),
        identity: Arc::new(identity),
        store,
        store_kind,
        revision,
        cache: BundleCache::default(),
        invalid_policy_changes: AtomicU64::new(0),
        cfg,
    });
    let local = listener.local_addr().ok();
    tracing::info!(
        listen = ?local,
        controller = %shared.fingerprint,
        replica = shared.cfg.replica.as_deref().unwrap_or(""),
        store = shared.store_kind,
        revision = initial,
        "controller serving"
    );

    let mut background = tokio::task::JoinSet::new();
    background.spawn(poll_revision(Arc::clone(&shared)));
    if let Some(dir) = shared.cfg.policy_dir.clone() {
        background.spawn(watch_policy_dir(Arc::clone(&shared), dir));
    }

    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(shared, req).await) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HANDSHAKE_TIMEOUT)
                        .serve_connection(TokioIo::new(tls), service)
                        .await
                    {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    tracing::info!("controller stopping");
    connections.shutdown().await;
    background.shutdown().await;
    Ok(())
}

/// Publishes the store's revision every [`REVISION_POLL`]: changes made through other replicas.
async fn poll_revision(shared: Arc<Shared>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(REVISION_POLL).await;
        let store = Arc::clone(&shared.store);
        match tokio::task::spawn_blocking(move || store.revision()).await {
            Ok(Ok(r)) => {
                if failing {
                    tracing::info!(revision = r, "store reachable again");
                    failing = false;
                }
                shared.publish(r);
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read the store's revision; retrying");
                    failing = true;
                }
            }
            Err(_) => {}
        }
    }
}

/// Reads `dir` every [`POLICY_POLL`]; stores a changed policy when it validates, logs and counts
/// an invalid change (the stored policy stays).
async fn watch_policy_dir(shared: Arc<Shared>, dir: std::path::PathBuf) {
    let mut last: Option<PolicySources> = None;
    loop {
        let read_dir = dir.clone();
        let Ok(sources) = tokio::task::spawn_blocking(move || PolicySources::read(&read_dir)).await
        else {
            return;
        };
        if last.as_ref() != Some(&sources) {
            check_policy_dir(&shared, &dir, &sources).await;
            last = Some(sources);
        }
        tokio::time::sleep(POLICY_POLL).await;
    }
}

async fn check_policy_dir(shared: &Arc<Shared>, dir: &std::path::Path, sources: &PolicySources) {
    match Policy::from_sources(sources, Mode::Lenient) {
        Err(errors) => {
            let n = shared
                .invalid_policy_changes
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            let diagnostics: Vec<String> = errors.errors.iter().map(ToString::to_string).collect();
            tracing::warn!(
                dir = %dir.display(),
                invalid_changes = n,
                "the policy directory does not validate; the stored policy stays in force:\n{}",
                diagnostics.join("\n")
            );
        }
        Ok(policy) => {
            for w in &policy.warnings {
                tracing::warn!("{w}");
            }
            let Some(files) = bundles::files_from_sources(sources) else {
                return;
            };
            let Ok(prepared) = shared.prepared().await else {
                return;
            };
            if prepared.snapshot.policy.as_ref() == Some(&files) {
                return;
            }
            let store = Arc::clone(&shared.store);
            match tokio::task::spawn_blocking(move || store.put_policy(&files)).await {
                Ok(Ok(revision)) => {
                    tracing::info!(dir = %dir.display(), revision, "policy changed; stored");
                    shared.publish(revision);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot store the changed policy"),
                Err(_) => {}
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return error_response(if too_big {
                Reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {MAX_BODY} bytes"),
                )
            } else {
                Reply(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            });
        }
    };
    let req = Req {
        method: parts.method,
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        query: parts.uri.query().unwrap_or("").to_owned(),
        headers: parts.headers,
        body,
    };
    let path = parts.uri.path().to_owned();
    let result = match (&req.method, path.as_str()) {
        (&Method::GET, "/v1/health") => health(&shared).await,
        (&Method::POST, "/v1/enroll") => enroll(&shared, &req).await,
        (&Method::POST, "/v1/keys") => keys(&shared, &req).await,
        (&Method::GET, "/v1/bundle") => bundle(&shared, &req).await,
        (&Method::PUT, "/v1/policy") => put_policy(&shared, &req).await,
        (_, "/v1/health" | "/v1/enroll" | "/v1/keys" | "/v1/bundle" | "/v1/policy") => Err(Reply(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed on {path}", req.method),
        )),
        _ => Err(Reply(StatusCode::NOT_FOUND, format!("no route {path}"))),
    };
    match result {
        Ok(resp) => resp,
        Err(reply) => {
            tracing::debug!(status = %reply.0, path, error = reply.1, "request refused");
            error_response(reply)
        }
    }
}

type Handled = Result<Response<Full<Bytes>>, Reply>;

async fn health(shared: &Arc<Shared>) -> Handled {
    Ok(json_response(
        StatusCode::OK,
        &Health {
            revision: *shared.revision.borrow(),
            controller: shared.fingerprint.clone(),
            store: shared.store_kind.to_owned(),
        },
    ))
}

/// Authenticates a gateway-signed request; the gateway's name on success.
async fn authenticate_gateway(shared: &Arc<Shared>, req: &Req) -> Result<String, Reply> {
    let name = req
        .header(api::HDR_GATEWAY)
        .ok_or_else(|| {
            Reply(
                StatusCode::UNAUTHORIZED,
                format!("missing {} header", api::HDR_GATEWAY),
            )
        })?
        .to_owned();
    let prepared = shared.prepared().await?;
    let record = match prepared.record(&name) {
        Some(r) => r,
        None => {
            // Perhaps enrolled through another replica a moment ago.
            let me = Arc::clone(shared);
            let fresh = blocking(move || me.store.snapshot())
                .await?
                .map_err(store_failure)?;
            shared.publish(fresh.revision);
            return match fresh.gateways.iter().find(|g| g.name == name) {
                Some(r) => {
                    req.check_signature(&r.signing_key, &format!("gateway {name}"))?;
                    check_revoked(r)?;
                    Ok(name)
                }
                None => Err(Reply(
                    StatusCode::FORBIDDEN,
                    format!(
                        "no enrolled gateway {name:?}; enroll it with a token from `corridor \
                         controller token --gateway {name}`"
                    ),
                )),
            };
        }
    };
    req.check_signature(&record.signing_key, &format!("gateway {name}"))?;
    check_revoked(record)?;
    Ok(name)
}

fn check_revoked(record: &store::GatewayRecord) -> Result<(), Reply> {
    match record.revoked_at {
        Some(t) => Err(Reply(
            StatusCode::FORBIDDEN,
            format!(
                "gateway {} was revoked at {t} (unix seconds); enroll it again with a new token",
                record.name
            ),
        )),
        None => Ok(()),
    }
}

fn authenticate_operator(shared: &Shared, req: &Req) -> Result<(), Reply> {
    let fp = req.header(api::HDR_OPERATOR).ok_or_else(|| {
        Reply(
            StatusCode::UNAUTHORIZED,
            format!("missing {} header", api::HDR_OPERATOR),
        )
    })?;
    let key = shared
        .operators
        .iter()
        .find(|k| identity::fingerprint(k) == fp)
        .ok_or_else(|| {
            Reply(
                StatusCode::FORBIDDEN,
                format!(
                    "operator key {fp} is not allowed here; add its public key to `operators` in \
                     the controller config"
                ),
            )
        })?;
    req.check_signature(key, &format!("operator {fp}"))
}

async fn enroll(shared: &Arc<Shared>, req: &Req) -> Handled {
    let body: EnrollRequest = req.json()?;
    let unauthorized = |m: String| Reply(StatusCode::UNAUTHORIZED, m);
    let token = Token::decode(&body.token).map_err(|e| unauthorized(e.to_string()))?;
    if token.controller != shared.fingerprint {
        return Err(unauthorized(format!(
            "this token was issued by controller {}, not by this one ({}); use a token from this \
             controller",
            token.controller, shared.fingerprint
        )));
    }
    let key = |field: &str, text: &str| {
        super::config::decode_key(text).ok_or_else(|| {
            Reply(
                StatusCode::BAD_REQUEST,
                format!("{field} is not a base64 32-byte public key"),
            )
        })
    };
    let signing_key = key("signing_key", &body.signing_key)?;
    let seal_key = key("seal_key", &body.seal_key)?;
    let gateway = body.gateway.clone();
    let me = Arc::clone(shared);
    let hash = token::secret_hash(&token.secret);
    let id = token.id.clone();
    let redeemed = blocking(move || {
        me.store
            .redeem_token(&id, &hash, &gateway, &signing_key, &seal_key, now_secs())
    })
    .await?;
    let revision = match redeemed {
        Ok(r) => r,
        Err(e) => {
            let status = match &e {
                RedeemError::Unknown => StatusCode::UNAUTHORIZED,
                RedeemError::Expired { .. } | RedeemError::Used { .. } => StatusCode::GONE,
                RedeemError::OtherGateway(_) => StatusCode::FORBIDDEN,
                RedeemError::Store(e) => return Err(store_failure_ref(e)),
            };
            return Err(Reply(status, e.to_string()));
        }
    };
    shared.publish(revision);
    tracing::info!(gateway = body.gateway, revision, "gateway enrolled");
    let prepared = shared.prepared().await?;
    let tenants = prepared
        .policy()
        .map(|p| {
            p.served_tenants(&body.gateway)
                .into_iter()
                .map(|t| t.name.clone())
                .collect()
        })
        .unwrap_or_default();
    Ok(json_response(
        StatusCode::OK,
        &EnrollResponse {
            gateway: body.gateway,
            tenants,
            revision,
        },
    ))
}

fn store_failure_ref(e: &StoreError) -> Reply {
    tracing::error!(error = %e, "store failed");
    Reply(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

async fn keys(shared: &Arc<Shared>, req: &Req) -> Handled {
    let gateway = authenticate_gateway(shared, req).await?;
    let body: KeysRequest = req.json()?;
    let mut keys = BTreeMap::new();
    for (tenant, key) in &body.tenant_keys {
        if !valid_name(tenant) {
            return Err(Reply(
                StatusCode::BAD_REQUEST,
                format!("{tenant:?} is not a tenant name (1 to 32 of a-z, 0-9 and '-')"),
            ));
        }
        let key = super::config::decode_key(key).ok_or_else(|| {
            Reply(
                StatusCode::BAD_REQUEST,
                format!("the key of tenant {tenant} is not a base64 32-byte public key"),
            )
        })?;
        keys.insert(tenant.clone(), key);
    }
    let me = Arc::clone(shared);
    let name = gateway.clone();
    let revision = blocking(move || me.store.set_tenant_keys(&name, &keys))
        .await?
        .map_err(|e| match e {
            StoreError::Revoked(_) | StoreError::UnknownGateway(_) => {
                Reply(StatusCode::FORBIDDEN, e.to_string())
            }
            e => store_failure(e),
        })?;
    shared.publish(revision);
    tracing::info!(
        gateway,
        revision,
        tenants = body.tenant_keys.len(),
        "tenant keys registered"
    );
    Ok(json_response(StatusCode::OK, &KeysResponse { revision }))
}

async fn bundle(shared: &Arc<Shared>, req: &Req) -> Handled {
    let gateway = authenticate_gateway(shared, req).await?;
    let after: u64 = match req.query_param("after") {
        None | Some("") => 0,
        Some(v) => v.parse().map_err(|_| {
            Reply(
                StatusCode::BAD_REQUEST,
                format!("after={v:?} is not a version number"),
            )
        })?,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(shared.cfg.long_poll);
    let mut rx = shared.revision.subscribe();
    loop {
        rx.borrow_and_update();
        let prepared = shared.prepared().await?;
        let record = prepared.record(&gateway).ok_or_else(|| {
            Reply(
                StatusCode::FORBIDDEN,
                format!("no enrolled gateway {gateway:?}"),
            )
        })?;
        check_revoked(record)?;
        if prepared.snapshot.revision > after {
            let identity = Arc::clone(&shared.identity);
            let name = gateway.clone();
            let p = Arc::clone(&prepared);
            let bytes = blocking(move || p.bundle(&identity, &name))
                .await?
                .map_err(|e| {
                    tracing::error!(gateway, error = %e, "cannot build a bundle");
                    Reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                })?;
            let mut resp = Response::new(Full::new(Bytes::copy_from_slice(&bytes)));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/octet-stream"),
            );
            resp.headers_mut().insert(
                api::HDR_VERSION,
                hyper::header::HeaderValue::from(prepared.snapshot.revision),
            );
            return Ok(resp);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Ok(empty(StatusCode::NO_CONTENT)),
        }
    }
}

async fn put_policy(shared: &Arc<Shared>, req: &Req) -> Handled {
    authenticate_operator(shared, req)?;
    if let Some(dir) = &shared.cfg.policy_dir {
        return Err(Reply(
            StatusCode::CONFLICT,
            format!(
                "this controller serves the policy directory {} (policy-dir in its config); edit \
                 the files there instead, or remove policy-dir to upload policies",
                dir.display()
            ),
        ));
    }
    let upload: PolicyUpload = req.json()?;
    let files = upload.files;
    let (files, validated) = blocking(move || {
        let v = bundles::validate(&files);
        (files, v)
    })
    .await?;
    let policy = validated.map_err(|e| Reply(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let me = Arc::clone(shared);
    let revision = blocking(move || me.store.put_policy(&files))
        .await?
        .map_err(store_failure)?;
    shared.publish(revision);
    let (g, t, e, r) = (
        policy.gateways.len(),
        policy.tenants.len(),
        policy.endpoint_count(),
        policy.rule_count(),
    );
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let summary = format!(
        "policy OK: {g} gateway{}, {t} tenant{}, {e} endpoint{}, {r} rule{}",
        plural(g),
        plural(t),
        plural(e),
        plural(r)
    );
    tracing::info!(revision, "{summary}; stored (uploaded)");
    Ok(json_response(
        StatusCode::OK,
        &PolicyResponse { revision, summary },
    ))
}

/// Runs a controller from its configuration until SIGTERM or SIGINT (blocking).
pub fn run(cfg: ControllerConfig) -> Result<(), ControllerError> {
    let identity = SigningIdentity::load(&cfg.key_path())?;
    let url = cfg.store_url();
    let store: Arc<dyn Store> =
        Arc::from(store::open(&url).map_err(|source| ControllerError::Store { url, source })?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| ControllerError::Io {
            what: "starting the runtime",
            source,
        })?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ControllerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| ControllerError::Io {
                what: "installing the SIGTERM handler",
                source,
            })?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
            }
        };
        serve(cfg, identity, store, listener, shutdown).await
    })
}
