//! The controller's HTTP API (over TLS), shared by the server, the gateway agent and
//! `corridor policy apply`. JSON bodies; errors are `ErrorBody` with a 4xx/5xx status.
//!
//! CONTRACT (skeleton by the lead). Routes:
//! - `POST /v1/enroll` — `EnrollRequest` → `EnrollResponse`. Unsigned: the token is the proof.
//!   401 unknown/forged token, 410 expired or used token, 403 token for another gateway.
//! - `POST /v1/keys` — signed by a gateway; `KeysRequest` → `KeysResponse`.
//! - `GET /v1/bundle?after=V` — signed by a gateway; 200 with the sealed bundle
//!   (`application/octet-stream`, header `corridor-version`) as soon as the gateway's bundle
//!   version is greater than V (immediately if it already is), else 204 after the long-poll wait.
//!   403 for a revoked or unknown gateway (body says which).
//! - `PUT /v1/policy` — signed by an operator key listed in the controller config;
//!   `PolicyUpload` → `PolicyResponse`; 422 with the diagnostics when invalid; 409 when the
//!   controller watches a policy directory.
//! - `GET /v1/health` — `Health`.
//!
//! Signed requests carry `corridor-gateway` (or `corridor-operator`: the key's fingerprint),
//! `corridor-time` (unix seconds; ±300 s accepted) and `corridor-signature` (base64 of the
//! ed25519 signature of [`request_message`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::PolicyFiles;

/// Header: the signing gateway's name.
pub const HDR_GATEWAY: &str = "corridor-gateway";
/// Header: the signing operator key's fingerprint.
pub const HDR_OPERATOR: &str = "corridor-operator";
/// Header: unix seconds of the request.
pub const HDR_TIME: &str = "corridor-time";
/// Header: base64 ed25519 signature of [`request_message`].
pub const HDR_SIGNATURE: &str = "corridor-signature";
/// Response header of a bundle: its version.
pub const HDR_VERSION: &str = "corridor-version";
/// How far a signed request's time may be from the controller's clock.
pub const MAX_SKEW_SECS: u64 = 300;

/// What a signature covers: method, path with query, time and the body's SHA-256.
pub fn request_message(method: &str, path_and_query: &str, time: u64, body: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body);
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("corridor-request-v1\n{method}\n{path_and_query}\n{time}\n{hex}").into_bytes()
}

/// `POST /v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The token's text form.
    pub token: String,
    /// The gateway's name (must be the token's).
    pub gateway: String,
    /// Base64 ed25519 public key of the gateway's control channel.
    pub signing_key: String,
    /// Base64 X25519 public key bundles are sealed to.
    pub seal_key: String,
}

/// Answer to `POST /v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The gateway's name.
    pub gateway: String,
    /// The tenants the policy has it serve: it makes one WireGuard key for each.
    pub tenants: Vec<String>,
    /// The store revision after enrollment.
    pub revision: u64,
}

/// `POST /v1/keys`: the gateway's WireGuard public keys (base64) per tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysRequest {
    /// Tenant → base64 public key.
    pub tenant_keys: BTreeMap<String, String>,
}

/// Answer to `POST /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysResponse {
    /// The store revision after the change.
    pub revision: u64,
}

/// `PUT /v1/policy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyUpload {
    /// The policy directory's files.
    pub files: PolicyFiles,
}

/// Answer to `PUT /v1/policy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyResponse {
    /// The store revision (unchanged when the policy was identical).
    pub revision: u64,
    /// A one-line summary (as `corridor policy check` prints).
    pub summary: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// The revision this replica last saw.
    pub revision: u64,
    /// The controller's key fingerprint.
    pub controller: String,
    /// The store kind: `sqlite` or `postgres`.
    pub store: String,
}

/// Any error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}
