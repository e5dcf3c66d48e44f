//! An HTTPS client of the controller's API ([`crate::controller::api`]): TLS that pins the
//! controller's key ([`crate::controller::tls`]), HTTP/1.1 (hyper), signed requests, timeouts,
//! and failover across the controller's URLs (tried in order, starting with the one that
//! answered last). Used by the gateway agent, `corridor gateway enroll` and
//! `corridor policy apply`.
//!
//! Every request opens its own connection: gateways make one request per long-poll (minutes), so
//! keeping connections would save little and would add a class of stale-connection failures.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::controller::api::{
    self, ErrorBody, HDR_GATEWAY, HDR_OPERATOR, HDR_SIGNATURE, HDR_TIME, request_message,
};
use crate::controller::tls::{self, Pin};
use crate::identity::SigningIdentity;

/// How long connecting (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ordinary request may take in all.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Who signs a request.
#[derive(Debug, Clone, Copy)]
pub enum Signer<'a> {
    /// Unsigned (enrollment: the token is the proof; health).
    None,
    /// A gateway: `corridor-gateway: NAME`.
    Gateway(&'a str, &'a SigningIdentity),
    /// An operator: `corridor-operator: <fingerprint of the key>`.
    Operator(&'a SigningIdentity),
}

/// A controller's answer (any status).
#[derive(Debug, Clone)]
pub struct Response {
    /// The URL (base) that answered.
    pub url: String,
    /// The HTTP status.
    pub status: u16,
    /// The `corridor-version` header, if present and a number.
    pub version: Option<u64>,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// The controller's error message (`ErrorBody`), or the body as text.
    pub fn message(&self) -> String {
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(e) => e.error,
            Err(_) => {
                let text = String::from_utf8_lossy(&self.body);
                let text = text.trim();
                if text.is_empty() {
                    format!("HTTP {}", self.status)
                } else {
                    text.chars().take(500).collect()
                }
            }
        }
    }

    /// The body as JSON of type `T`, when the status is 2xx; otherwise a [`ClientError::Status`].
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        if !(200..300).contains(&self.status) {
            return Err(self.status_error());
        }
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Protocol {
            url: self.url.clone(),
            detail: format!(
                "the answer is not what corridor expects ({e}); is the controller the same version?"
            ),
        })
    }

    /// This answer as an error.
    pub fn status_error(&self) -> ClientError {
        ClientError::Status {
            url: self.url.clone(),
            status: self.status,
            message: self.message(),
        }
    }
}

/// Why a request got no answer (or an error answer, from [`Response::json`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Not an `https://HOST:PORT` URL.
    #[error("{0}")]
    BadUrl(String),
    /// TCP connection failed (refused, unreachable, name not resolved).
    #[error(
        "cannot reach the controller at {url}: {detail}; check the URL, that the controller runs, and the network"
    )]
    Unreachable {
        /// The URL.
        url: String,
        /// The OS's reason.
        detail: String,
    },
    /// The server's TLS key is not the pinned one.
    #[error(
        "the controller at {url} presented another key than the pinned one: refusing ({detail}); if the controller's key really changed, enroll this gateway again"
    )]
    PinMismatch {
        /// The URL.
        url: String,
        /// Which key was presented and which is pinned.
        detail: String,
    },
    /// TLS failed otherwise.
    #[error("TLS with the controller at {url} failed: {detail}")]
    Tls {
        /// The URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// No answer in time.
    #[error("the controller at {url} did not answer within {secs} s")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout.
        secs: u64,
    },
    /// HTTP-level failure (connection closed mid-answer, not HTTP, unexpected body).
    #[error("talking to the controller at {url}: {detail}")]
    Protocol {
        /// The URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// An error answer.
    #[error("the controller at {url} refused: {message} (HTTP {status})")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The controller's message.
        message: String,
    },
    /// Every URL failed (more than one URL).
    #[error("no controller answered: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    AllFailed(Vec<ClientError>),
}

impl ClientError {
    /// Whether another URL might do better (connection-level failures and 5xx answers).
    fn try_next(&self) -> bool {
        match self {
            ClientError::Status { status, .. } => *status >= 500,
            ClientError::BadUrl(_) => false,
            _ => true,
        }
    }
}

#[derive(Debug, Clone)]
struct Target {
    url: String,
    host: String,
    port: u16,
}

/// Checks an `https://HOST:PORT` URL (a path is not allowed; IPv6 as `[::1]`). Returns host and
/// port.
pub fn parse_url(url: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| {
        format!(
            "{url:?} is not a controller URL ({why}): give https://HOST:PORT, e.g. https://controller.example:8443"
        )
    };
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("it must start with https://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('@') {
        return Err(bad("no path, query or user part"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, p) = v6.split_once("]:").ok_or_else(|| bad("no port"))?;
        (h.to_owned(), p)
    } else {
        let (h, p) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        (h.to_owned(), p)
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    Ok((host, port))
}

/// Checks a key fingerprint's form (`ed25519:` and base64url of 32 bytes); returns the digest.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let b64 = text.strip_prefix("ed25519:")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .ok()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A client of one controller (its replicas' URLs).
pub struct Client {
    targets: Vec<Target>,
    tls: tokio_rustls::TlsConnector,
    preferred: AtomicUsize,
    controller_key: Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "urls",
                &self.targets.iter().map(|t| &t.url).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the controller at `urls` (tried in order), whose TLS key must match `pin`.
    pub fn new(urls: Vec<String>, pin: Pin) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::BadUrl(
                "no controller URL: give at least one https://HOST:PORT".to_owned(),
            ));
        }
        let mut targets = Vec::new();
        for url in urls {
            let (host, port) = parse_url(&url).map_err(ClientError::BadUrl)?;
            let url = url.trim_end_matches('/').to_owned();
            targets.push(Target { url, host, port });
        }
        Ok(Client {
            targets,
            tls: tokio_rustls::TlsConnector::from(tls::client_config_pinned(pin)),
            preferred: AtomicUsize::new(0),
            controller_key: Mutex::new(None),
        })
    }

    /// The URL that answered last (the first one before any answer).
    pub fn current_url(&self) -> &str {
        let i = self.preferred.load(Ordering::Relaxed);
        self.targets.get(i).map_or("", |t| t.url.as_str())
    }

    /// The controller's ed25519 key as its TLS certificate presented it (it matched the pin),
    /// once a connection succeeded.
    pub fn controller_key(&self) -> Option<[u8; 32]> {
        self.controller_key.lock().ok().and_then(|k| *k)
    }

    /// Sends a request to the first URL that answers, starting with the one that answered last.
    /// `body`: JSON (`Some`) or none. `timeout`: for the whole request, per URL.
    pub async fn request(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        signer: Signer<'_>,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let n = self.targets.len();
        let start = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut errors = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let Some(target) = self.targets.get(i) else {
                continue;
            };
            let body = body.clone().unwrap_or_default();
            let attempt = tokio::time::timeout(
                timeout,
                self.request_one(target, method, path_and_query, body, signer),
            )
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Timeout {
                    url: target.url.clone(),
                    secs: timeout.as_secs(),
                })
            });
            let failed_over = match attempt {
                Ok(resp) if resp.status >= 500 => Err(resp.status_error()),
                other => other,
            };
            match failed_over {
                Ok(resp) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) if e.try_next() && k + 1 < n => {
                    tracing::debug!(url = %target.url, error = %e, "trying the next controller URL");
                    errors.push(e);
                }
                Err(e) => {
                    errors.push(e);
                    break;
                }
            }
        }
        if errors.len() == 1 {
            if let Some(e) = errors.pop() {
                return Err(e);
            }
        }
        Err(ClientError::AllFailed(errors))
    }

    /// [`Client::request`] on a fresh current-thread runtime, for callers without one (the CLI).
    pub fn blocking_request(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        signer: Signer<'_>,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Protocol {
                url: self.current_url().to_owned(),
                detail: format!("cannot start the I/O runtime: {e}"),
            })?;
        rt.block_on(self.request(method, path_and_query, body, signer, timeout))
    }

    async fn request_one(
        &self,
        target: &Target,
        method: &str,
        path_and_query: &str,
        body: Vec<u8>,
        signer: Signer<'_>,
    ) -> Result<Response, ClientError> {
        let url = target.url.clone();
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| ClientError::Timeout {
            url: url.clone(),
            secs: CONNECT_TIMEOUT.as_secs(),
        })?
        .map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            detail: e.to_string(),
        })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| ClientError::BadUrl(format!("{url}: {e}")))?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                secs: CONNECT_TIMEOUT.as_secs(),
            })?
            .map_err(|e| match tls::pin_mismatch(&e) {
                Some(m) => ClientError::PinMismatch {
                    url: url.clone(),
                    detail: m.to_string(),
                },
                None => ClientError::Tls {
                    url: url.clone(),
                    detail: e.to_string(),
                },
            })?;
        if let Some(key) = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| tls::certificate_ed25519_key(c))
        {
            if let Ok(mut slot) = self.controller_key.lock() {
                *slot = Some(key);
            }
        }
        let proto = |detail: String| ClientError::Protocol {
            url: url.clone(),
            detail,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| proto(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut builder = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, authority(target))
            .header(
                hyper::header::USER_AGENT,
                concat!("corridor/", env!("CARGO_PKG_VERSION")),
            );
        if !body.is_empty() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let time = unix_now();
        let signed = match signer {
            Signer::None => None,
            Signer::Gateway(name, id) => Some((HDR_GATEWAY, name.to_owned(), id)),
            Signer::Operator(id) => Some((HDR_OPERATOR, id.fingerprint(), id)),
        };
        if let Some((header, who, id)) = signed {
            let sig = id.sign(&request_message(method, path_and_query, time, &body));
            builder = builder
                .header(header, who)
                .header(HDR_TIME, time.to_string())
                .header(
                    HDR_SIGNATURE,
                    base64::engine::general_purpose::STANDARD.encode(sig),
                );
        }
        let req = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| proto(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| proto(e.to_string()))?;
        let status = resp.status().as_u16();
        let version = resp
            .headers()
            .get(api::HDR_VERSION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| proto(e.to_string()))?
            .to_bytes();
        driver.abort();
        Ok(Response {
            url,
            status,
            version,
            body,
        })
    }
}

fn authority(t: &Target) -> String {
    if t.host.contains(':') {
        format!("[{}]:{}", t.host, t.port)
    } else {
        format!("{}:{}", t.host, t.port)
    }
}

/// Shares a client between tasks.
pub type SharedClient = Arc<Client>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://c.example:8443").unwrap(),
            ("c.example".to_owned(), 8443)
        );
        assert_eq!(
            parse_url("https://[::1]:8443/").unwrap(),
            ("::1".to_owned(), 8443)
        );
        assert!(parse_url("http://c:1").unwrap_err().contains("https://"));
        assert!(parse_url("https://c").unwrap_err().contains("no port"));
        assert!(parse_url("https://c:1/v1").is_err());
        assert!(parse_url("https://:1").is_err());
    }

    #[test]
    fn fingerprints() {
        let fp = crate::identity::fingerprint(&[7u8; 32]);
        assert!(parse_fingerprint(&fp).is_some());
        assert!(parse_fingerprint("ed25519:abc").is_none());
        assert!(parse_fingerprint(&fp[8..]).is_none());
    }

    #[test]
    fn refused_connection_says_so() {
        // A port nobody listens on: bind, take the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("https://127.0.0.1:{port}");
        let c = Client::new(vec![url.clone()], Pin::Key([1; 32])).unwrap();
        let e = c
            .blocking_request("GET", "/v1/health", None, Signer::None, REQUEST_TIMEOUT)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("cannot reach the controller at {url}: ")),
            "{e}"
        );
    }
}
