//! The shared store: PostgreSQL, for several controller replicas on one database.

use std::collections::BTreeMap;

use super::{PolicyFiles, RedeemError, Snapshot, Store, StoreError};
use crate::token::TokenRecord;

/// The PostgreSQL store (being written).
#[derive(Debug)]
pub struct PostgresStore {
    _private: (),
}

impl PostgresStore {
    /// Connects to `url` and creates the schema if missing.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let _ = url;
        Err(StoreError::Backend(
            "the PostgreSQL store is not implemented yet".to_owned(),
        ))
    }
}

impl Store for PostgresStore {
    fn revision(&self) -> Result<u64, StoreError> {
        Err(StoreError::Backend("unimplemented".to_owned()))
    }
    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Err(StoreError::Backend("unimplemented".to_owned()))
    }
    fn put_policy(&self, _: &PolicyFiles) -> Result<u64, StoreError> {
        Err(StoreError::Backend("unimplemented".to_owned()))
    }
    fn add_token(&self, _: &TokenRecord) -> Result<(), StoreError> {
        Err(StoreError::Backend("unimplemented".to_owned()))
    }
    fn redeem_token(
        &self,
        _: &str,
        _: &[u8; 32],
        _: &str,
        _: &[u8; 32],
        _: &[u8; 32],
        _: u64,
    ) -> Result<u64, RedeemError> {
        Err(StoreError::Backend("unimplemented".to_owned()).into())
    }
    fn set_tenant_keys(&self, _: &str, _: &BTreeMap<String, [u8; 32]>) -> Result<u64, StoreError> {
        Err(StoreError::Backend("unimplemented".to_owned()))
    }
    fn request_rotation(&self, _: Option<&str>) -> Result<u64, StoreError> {
        Err(StoreError::Backend("unimplemented".to_owned()))
    }
    fn revoke(&self, _: &str, _: u64) -> Result<u64, StoreError> {
        Err(StoreError::Backend("unimplemented".to_owned()))
    }
}
