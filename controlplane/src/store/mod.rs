//! The controller's store: policy, registry of gateways, tokens, and one revision counter that
//! every change bumps (bundle versions are revisions). SQLite by default (embedded); PostgreSQL
//! for several controller replicas sharing one database. Every method is one transaction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::token::TokenRecord;

mod ops;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod tests;

/// The policy as the controller holds it: the files' texts (so that diagnostics keep names
/// and lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyFiles {
    /// `gateways.toml`.
    pub gateways: String,
    /// `tenants/<name>.toml` → text, sorted by file name.
    pub tenants: BTreeMap<String, String>,
}

/// An enrolled gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRecord {
    /// Its policy name.
    pub name: String,
    /// Its control-channel ed25519 public key (authenticates its requests).
    pub signing_key: [u8; 32],
    /// Its X25519 sealing public key (bundles are sealed to it).
    pub seal_key: [u8; 32],
    /// Its WireGuard public key per tenant.
    pub tenant_keys: BTreeMap<String, [u8; 32]>,
    /// Bumped whenever its tenant keys change (preshared keys are derived from it).
    pub key_generation: u64,
    /// Rotation generation asked of it (`corridor controller rotate`).
    pub rotate_requested: u64,
    /// Unix seconds of enrollment.
    pub enrolled_at: u64,
    /// Unix seconds of revocation: a revoked gateway is in no bundle and its requests are refused.
    pub revoked_at: Option<u64>,
}

/// Everything the controller needs to build bundles, at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The revision.
    pub revision: u64,
    /// The policy, once one was stored.
    pub policy: Option<PolicyFiles>,
    /// Every gateway that ever enrolled (revoked ones included), by name.
    pub gateways: Vec<GatewayRecord>,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, or a query failed.
    #[error("store: {0}")]
    Backend(String),
    /// No such gateway.
    #[error("no enrolled gateway \"{0}\"")]
    UnknownGateway(String),
    /// The gateway is revoked: nothing about it changes until it enrolls again.
    #[error("gateway \"{0}\" is revoked; enroll it again with a new token")]
    Revoked(String),
}

/// Why a token was not redeemed.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// No token with this id, or the secret does not match.
    #[error(
        "this token was not issued by this controller (or it was altered); ask for a new one with `corridor controller token`"
    )]
    Unknown,
    /// Past its expiry.
    #[error(
        "this token expired at {at} (unix seconds); ask for a new one with `corridor controller token`"
    )]
    Expired {
        /// Unix seconds.
        at: u64,
    },
    /// Already redeemed.
    #[error(
        "this token was already used at {at} (unix seconds); tokens enroll once; ask for a new one"
    )]
    Used {
        /// Unix seconds.
        at: u64,
    },
    /// The token is for another gateway name than the one enrolling.
    #[error("this token is for gateway \"{0}\"")]
    OtherGateway(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The controller's persistent state. Implementations: [`sqlite::SqliteStore`],
/// [`postgres::PostgresStore`]. Every mutating method bumps the revision (once) and returns the
/// new one, in the same transaction as the change.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The current revision (cheap: replicas poll it).
    fn revision(&self) -> Result<u64, StoreError>;
    /// Everything, consistently at one revision.
    fn snapshot(&self) -> Result<Snapshot, StoreError>;
    /// Stores a policy; when identical to the stored one, nothing changes and the current
    /// revision is returned.
    fn put_policy(&self, files: &PolicyFiles) -> Result<u64, StoreError>;
    /// Records an issued token (does not bump the revision; returns nothing).
    fn add_token(&self, record: &TokenRecord) -> Result<(), StoreError>;
    /// Redeems token `id` for `gateway` at `now`: checks the secret's hash, expiry and single
    /// use, marks it used, and registers (or re-registers, replacing keys and clearing a
    /// revocation) the gateway with these keys and no tenant keys. Atomic: two replicas
    /// redeeming the same token concurrently cannot both succeed.
    fn redeem_token(
        &self,
        id: &str,
        secret_hash: &[u8; 32],
        gateway: &str,
        signing_key: &[u8; 32],
        seal_key: &[u8; 32],
        now: u64,
    ) -> Result<u64, RedeemError>;
    /// Sets (merges) a gateway's tenant public keys; bumps its `key_generation` when any
    /// changed. Refused for an unknown or revoked gateway. When every key is already the stored
    /// one, nothing changes and the current revision is returned (agents repeat themselves).
    fn set_tenant_keys(
        &self,
        gateway: &str,
        keys: &BTreeMap<String, [u8; 32]>,
    ) -> Result<u64, StoreError>;
    /// Asks one gateway (or all enrolled, unrevoked ones) to rotate its keys: bumps
    /// `rotate_requested`.
    fn request_rotation(&self, gateway: Option<&str>) -> Result<u64, StoreError>;
    /// Revokes a gateway at `now`; its unused tokens die with it.
    fn revoke(&self, gateway: &str, now: u64) -> Result<u64, StoreError>;
}

/// Opens a store from a URL: `sqlite:PATH` (or a plain path), or `postgres://...` /
/// `postgresql://...`. Creates the schema if missing.
pub fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(postgres::PostgresStore::open(url)?));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    Ok(Box::new(sqlite::SqliteStore::open(std::path::Path::new(
        path,
    ))?))
}
