//! The store's semantics, written once over [`Tx`] (one open transaction of either backend), so
//! that SQLite and PostgreSQL cannot drift apart: the backends only translate rows.

use std::collections::BTreeMap;

use super::{GatewayRecord, PolicyFiles, RedeemError, Snapshot, StoreError};
use crate::token::TokenRecord;

/// The schema version this code writes and understands (kept in the `meta` row so that later
/// versions can migrate).
pub(super) const SCHEMA_VERSION: i64 = 1;

/// One open transaction. Reads of single rows (`token`, `gateway`) are only used by mutations,
/// so backends may lock the row they return.
pub(super) trait Tx {
    /// Serializes writers (PostgreSQL: locks the `meta` row; SQLite: `BEGIN IMMEDIATE` did).
    fn lock_writers(&mut self) -> Result<(), StoreError>;
    /// The current revision.
    fn revision(&mut self) -> Result<u64, StoreError>;
    /// Adds one to the revision and returns the new one.
    fn bump(&mut self) -> Result<u64, StoreError>;
    /// The stored policy.
    fn policy(&mut self) -> Result<Option<PolicyFiles>, StoreError>;
    /// Replaces the stored policy.
    fn set_policy(&mut self, files: &PolicyFiles) -> Result<(), StoreError>;
    /// Every gateway, by name.
    fn gateways(&mut self) -> Result<Vec<GatewayRecord>, StoreError>;
    /// One gateway.
    fn gateway(&mut self, name: &str) -> Result<Option<GatewayRecord>, StoreError>;
    /// Inserts or replaces a gateway.
    fn put_gateway(&mut self, record: &GatewayRecord) -> Result<(), StoreError>;
    /// Bumps `rotate_requested` of every unrevoked gateway.
    fn request_rotation_all(&mut self) -> Result<(), StoreError>;
    /// Inserts a token (an existing id is an error).
    fn insert_token(&mut self, record: &TokenRecord) -> Result<(), StoreError>;
    /// One token.
    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Marks one token used at `now`.
    fn mark_token_used(&mut self, id: &str, now: u64) -> Result<(), StoreError>;
    /// Marks every unused token of `gateway` used at `now` (so that none can enroll it again).
    fn kill_tokens(&mut self, gateway: &str, now: u64) -> Result<(), StoreError>;
}

pub(super) fn snapshot(tx: &mut dyn Tx) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        revision: tx.revision()?,
        policy: tx.policy()?,
        gateways: tx.gateways()?,
    })
}

pub(super) fn put_policy(tx: &mut dyn Tx, files: &PolicyFiles) -> Result<u64, StoreError> {
    tx.lock_writers()?;
    if tx.policy()?.as_ref() == Some(files) {
        return tx.revision();
    }
    tx.set_policy(files)?;
    tx.bump()
}

pub(super) fn add_token(tx: &mut dyn Tx, record: &TokenRecord) -> Result<(), StoreError> {
    tx.lock_writers()?;
    tx.insert_token(record)
}

pub(super) struct Redeem<'a> {
    pub(super) id: &'a str,
    pub(super) secret_hash: &'a [u8; 32],
    pub(super) gateway: &'a str,
    pub(super) signing_key: &'a [u8; 32],
    pub(super) seal_key: &'a [u8; 32],
    pub(super) now: u64,
}

pub(super) fn redeem_token(tx: &mut dyn Tx, r: &Redeem<'_>) -> Result<u64, RedeemError> {
    tx.lock_writers()?;
    let Some(token) = tx.token(r.id)? else {
        return Err(RedeemError::Unknown);
    };
    if !hashes_equal(&token.secret_hash, r.secret_hash) {
        return Err(RedeemError::Unknown);
    }
    if token.gateway != r.gateway {
        return Err(RedeemError::OtherGateway(token.gateway));
    }
    if r.now > token.expires_at {
        return Err(RedeemError::Expired {
            at: token.expires_at,
        });
    }
    if let Some(at) = token.used_at {
        return Err(RedeemError::Used { at });
    }
    tx.mark_token_used(r.id, r.now)?;
    let existing = tx.gateway(r.gateway)?;
    let record = GatewayRecord {
        name: r.gateway.to_owned(),
        signing_key: *r.signing_key,
        seal_key: *r.seal_key,
        tenant_keys: BTreeMap::new(),
        key_generation: next(existing.as_ref().map_or(0, |g| g.key_generation))?,
        rotate_requested: existing.as_ref().map_or(0, |g| g.rotate_requested),
        enrolled_at: r.now,
        revoked_at: None,
    };
    tx.put_gateway(&record)?;
    Ok(tx.bump()?)
}

pub(super) fn set_tenant_keys(
    tx: &mut dyn Tx,
    gateway: &str,
    keys: &BTreeMap<String, [u8; 32]>,
) -> Result<u64, StoreError> {
    tx.lock_writers()?;
    let mut record = live_gateway(tx, gateway)?;
    let mut changed = false;
    for (tenant, key) in keys {
        if record.tenant_keys.insert(tenant.clone(), *key) != Some(*key) {
            changed = true;
        }
    }
    if !changed {
        // Like an identical policy: agents report their keys again after restarts, and a bump
        // would send every gateway a new bundle for nothing.
        return tx.revision();
    }
    record.key_generation = next(record.key_generation)?;
    tx.put_gateway(&record)?;
    tx.bump()
}

pub(super) fn request_rotation(tx: &mut dyn Tx, gateway: Option<&str>) -> Result<u64, StoreError> {
    tx.lock_writers()?;
    match gateway {
        None => tx.request_rotation_all()?,
        Some(name) => {
            let mut record = live_gateway(tx, name)?;
            record.rotate_requested = next(record.rotate_requested)?;
            tx.put_gateway(&record)?;
        }
    }
    tx.bump()
}

pub(super) fn revoke(tx: &mut dyn Tx, gateway: &str, now: u64) -> Result<u64, StoreError> {
    tx.lock_writers()?;
    let Some(mut record) = tx.gateway(gateway)? else {
        return Err(StoreError::UnknownGateway(gateway.to_owned()));
    };
    // Revoking twice keeps the first time (the moment it stopped being trusted).
    record.revoked_at.get_or_insert(now);
    tx.put_gateway(&record)?;
    tx.kill_tokens(gateway, now)?;
    tx.bump()
}

/// An enrolled, unrevoked gateway.
fn live_gateway(tx: &mut dyn Tx, name: &str) -> Result<GatewayRecord, StoreError> {
    match tx.gateway(name)? {
        None => Err(StoreError::UnknownGateway(name.to_owned())),
        Some(g) if g.revoked_at.is_some() => Err(StoreError::Revoked(name.to_owned())),
        Some(g) => Ok(g),
    }
}

fn next(n: u64) -> Result<u64, StoreError> {
    n.checked_add(1)
        .filter(|&n| i64::try_from(n).is_ok())
        .ok_or_else(|| StoreError::Backend("counter overflow".to_owned()))
}

/// Compares two hashes without an early exit (the time taken says nothing about how many
/// leading bytes of a guessed secret's hash were right).
fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

// --- row encoding shared by the backends ---

/// A count as the databases' signed 64-bit integer.
fn to_db(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} is out of range")))
}

/// A timestamp as a signed 64-bit integer; ones past `i64::MAX` (a token that never expires)
/// are stored as `i64::MAX`, which is the same instant for any practical purpose.
pub(super) fn time_to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn from_db(what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Backend(format!("corrupt store: {what} is {v}")))
}

fn key_from_db(what: &str, v: &[u8]) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(v).map_err(|_| {
        StoreError::Backend(format!(
            "corrupt store: {what} has {} bytes, not 32",
            v.len()
        ))
    })
}

/// A `gateways` row as both databases return it.
pub(super) struct GatewayRow {
    pub(super) name: String,
    pub(super) signing_key: Vec<u8>,
    pub(super) seal_key: Vec<u8>,
    pub(super) tenant_keys: String,
    pub(super) key_generation: i64,
    pub(super) rotate_requested: i64,
    pub(super) enrolled_at: i64,
    pub(super) revoked_at: Option<i64>,
}

impl GatewayRow {
    pub(super) fn from_record(g: &GatewayRecord) -> Result<GatewayRow, StoreError> {
        Ok(GatewayRow {
            name: g.name.clone(),
            signing_key: g.signing_key.to_vec(),
            seal_key: g.seal_key.to_vec(),
            tenant_keys: tenant_keys_to_db(&g.tenant_keys)?,
            key_generation: to_db("key generation", g.key_generation)?,
            rotate_requested: to_db("rotation generation", g.rotate_requested)?,
            enrolled_at: time_to_db(g.enrolled_at),
            revoked_at: g.revoked_at.map(time_to_db),
        })
    }

    pub(super) fn into_record(self) -> Result<GatewayRecord, StoreError> {
        Ok(GatewayRecord {
            signing_key: key_from_db("signing key", &self.signing_key)?,
            seal_key: key_from_db("seal key", &self.seal_key)?,
            tenant_keys: tenant_keys_from_db(&self.name, &self.tenant_keys)?,
            key_generation: from_db("key generation", self.key_generation)?,
            rotate_requested: from_db("rotation generation", self.rotate_requested)?,
            enrolled_at: from_db("enrollment time", self.enrolled_at)?,
            revoked_at: self
                .revoked_at
                .map(|t| from_db("revocation time", t))
                .transpose()?,
            name: self.name,
        })
    }
}

/// A `tokens` row as both databases return it.
pub(super) struct TokenRow {
    pub(super) id: String,
    pub(super) gateway: String,
    pub(super) secret_hash: Vec<u8>,
    pub(super) expires_at: i64,
    pub(super) used_at: Option<i64>,
}

impl TokenRow {
    pub(super) fn from_record(t: &TokenRecord) -> TokenRow {
        TokenRow {
            id: t.id.clone(),
            gateway: t.gateway.clone(),
            secret_hash: t.secret_hash.to_vec(),
            expires_at: time_to_db(t.expires_at),
            used_at: t.used_at.map(time_to_db),
        }
    }

    pub(super) fn into_record(self) -> Result<TokenRecord, StoreError> {
        Ok(TokenRecord {
            secret_hash: key_from_db("token hash", &self.secret_hash)?,
            expires_at: from_db("token expiry", self.expires_at)?,
            used_at: self
                .used_at
                .map(|t| from_db("token use time", t))
                .transpose()?,
            id: self.id,
            gateway: self.gateway,
        })
    }
}

pub(super) fn policy_to_db(files: &PolicyFiles) -> Result<String, StoreError> {
    serde_json::to_string(files)
        .map_err(|e| StoreError::Backend(format!("encoding the policy: {e}")))
}

pub(super) fn policy_from_db(text: &str) -> Result<PolicyFiles, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Backend(format!("corrupt store: the stored policy: {e}")))
}

/// Tenant keys as a JSON object of hex strings (readable when inspecting the database).
fn tenant_keys_to_db(keys: &BTreeMap<String, [u8; 32]>) -> Result<String, StoreError> {
    let hex: BTreeMap<&str, String> = keys
        .iter()
        .map(|(tenant, key)| (tenant.as_str(), to_hex(key)))
        .collect();
    serde_json::to_string(&hex)
        .map_err(|e| StoreError::Backend(format!("encoding tenant keys: {e}")))
}

fn tenant_keys_from_db(
    gateway: &str,
    text: &str,
) -> Result<BTreeMap<String, [u8; 32]>, StoreError> {
    let corrupt = || StoreError::Backend(format!("corrupt store: tenant keys of \"{gateway}\""));
    let hex: BTreeMap<String, String> = serde_json::from_str(text).map_err(|_| corrupt())?;
    hex.into_iter()
        .map(|(tenant, key)| Ok((tenant, from_hex(&key).ok_or_else(corrupt)?)))
        .collect()
}

fn to_hex(bytes: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let s = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let mut key = [0u8; 32];
        key[0] = 0xab;
        key[31] = 0x01;
        assert_eq!(from_hex(&to_hex(&key)), Some(key));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
        assert_eq!(from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn hash_comparison() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(hashes_equal(&a, &b));
        b[31] ^= 1;
        assert!(!hashes_equal(&a, &b));
    }
}
