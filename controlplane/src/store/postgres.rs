//! The shared store: PostgreSQL, for several controller replicas on one database. Writers
//! serialize on the `meta` row (`SELECT ... FOR UPDATE`), so replicas apply changes one at a
//! time exactly as the embedded store does; snapshots are `REPEATABLE READ` transactions.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use postgres::{Client, Config, IsolationLevel, NoTls, Transaction};

use super::ops::{self, GatewayRow, SCHEMA_VERSION, TokenRow, Tx};
use super::{GatewayRecord, PolicyFiles, RedeemError, Snapshot, Store, StoreError};
use crate::token::TokenRecord;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    schema_version BIGINT NOT NULL,
    revision BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS policy (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    files TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gateways (
    name TEXT PRIMARY KEY,
    signing_key BYTEA NOT NULL,
    seal_key BYTEA NOT NULL,
    tenant_keys TEXT NOT NULL,
    key_generation BIGINT NOT NULL,
    rotate_requested BIGINT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    secret_hash BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX IF NOT EXISTS tokens_by_gateway ON tokens (gateway);
";

/// An arbitrary constant: the advisory lock under which replicas starting together create the
/// schema (concurrent `CREATE TABLE IF NOT EXISTS` can still collide in PostgreSQL).
const SCHEMA_LOCK: i64 = 0x636f_7272_6964_6f72; // "corridor"

/// The PostgreSQL store: one connection behind a mutex, reopened once when it broke (a server
/// restart or failover must not need a controller restart).
pub struct PostgresStore {
    config: Config,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the config: it holds the password.
        f.debug_struct("PostgresStore")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

/// The message of a PostgreSQL error, with the server's own words (its `Display` alone says
/// only "db error").
fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.code().code(), db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

fn backend(op: &str, e: &postgres::Error) -> StoreError {
    StoreError::Backend(format!("{op}: {}", describe(e)))
}

impl PostgresStore {
    /// Connects to `url` (`postgres://` or `postgresql://`, libpq's URL form) and creates the
    /// schema if missing.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        // The URL is not repeated in errors: it may hold the password.
        let mut config: Config = url.parse().map_err(|e: postgres::Error| {
            StoreError::Backend(format!("PostgreSQL URL: {}", describe(&e)))
        })?;
        if config.get_application_name().is_none() {
            config.application_name("corridor-controller");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let store = PostgresStore {
            config,
            client: Mutex::new(None),
        };
        {
            let mut guard = store.lock();
            let client = store.connected(&mut guard, "connecting")?;
            init(client)?;
        }
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Client>> {
        // A panic while holding the lock dropped its transaction (rolled back); the connection,
        // if broken, is replaced on its next use.
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection, opened if there is none or it is closed.
    fn connected<'g>(
        &self,
        guard: &'g mut MutexGuard<'_, Option<Client>>,
        op: &str,
    ) -> Result<&'g mut Client, StoreError> {
        if guard.as_ref().is_none_or(Client::is_closed) {
            **guard = None;
            let client = self
                .config
                .connect(NoTls)
                .map_err(|e| backend(&format!("{op}: connecting to PostgreSQL"), &e))?;
            **guard = Some(client);
        }
        guard
            .as_mut()
            .ok_or_else(|| StoreError::Backend(format!("{op}: no connection")))
    }

    /// Runs `f` in one transaction, committed when it succeeds. When the connection turns out
    /// to be broken, reconnects and runs it once more (nothing of a transaction on a broken
    /// connection was committed, unless the break hit the commit itself: a redeem retried then
    /// answers "already used").
    fn run<T, E: From<StoreError>>(
        &self,
        op: &'static str,
        isolation: IsolationLevel,
        read_only: bool,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut guard = self.lock();
        let mut retried = false;
        loop {
            let client = self.connected(&mut guard, op)?;
            match attempt(client, op, isolation, read_only, &mut f) {
                Err(Failure::Broken(e)) if !retried => {
                    tracing::warn!(op, error = %describe(&e), "PostgreSQL connection lost; reconnecting");
                    *guard = None;
                    retried = true;
                }
                Err(Failure::Broken(e)) => return Err(backend(op, &e).into()),
                Err(Failure::Op(e)) => return Err(e),
                Ok(v) => return Ok(v),
            }
        }
    }
}

enum Failure<E> {
    /// The connection broke: worth one retry on a new one.
    Broken(postgres::Error),
    /// Anything else (including database errors), returned as is.
    Op(E),
}

fn attempt<T, E: From<StoreError>>(
    client: &mut Client,
    op: &'static str,
    isolation: IsolationLevel,
    read_only: bool,
    f: &mut impl FnMut(&mut dyn Tx) -> Result<T, E>,
) -> Result<T, Failure<E>> {
    let classify = |e: postgres::Error| {
        if is_broken(&e) {
            Failure::Broken(e)
        } else {
            Failure::Op(E::from(backend(op, &e)))
        }
    };
    let tx = client
        .build_transaction()
        .isolation_level(isolation)
        .read_only(read_only)
        .start()
        .map_err(classify)?;
    let mut ptx = PgTx {
        tx,
        op,
        broken: None,
    };
    let out = f(&mut ptx);
    if let Some(e) = ptx.broken.take() {
        return Err(Failure::Broken(e));
    }
    let out = out.map_err(Failure::Op)?;
    ptx.tx.commit().map_err(classify)?;
    Ok(out)
}

/// Whether the connection is gone: closed, an I/O failure (reset, broken pipe) the client may
/// not have noticed yet, or the server ending the session (SQLSTATE class 08, connection
/// exception; 57P, the server ending sessions: `pg_terminate_backend`, a shutdown).
fn is_broken(e: &postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return code.starts_with("08") || code.starts_with("57P");
    }
    e.is_closed()
        || std::error::Error::source(e)
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
}

fn init(client: &mut Client) -> Result<(), StoreError> {
    let err = |what: &str, e: postgres::Error| backend(&format!("creating the schema: {what}"), &e);
    let mut tx = client.transaction().map_err(|e| err("begin", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(|e| err("lock", e))?;
    tx.batch_execute(SCHEMA).map_err(|e| err("tables", e))?;
    tx.execute(
        "INSERT INTO meta (id, schema_version, revision) VALUES (1, $1, 0)
         ON CONFLICT (id) DO NOTHING",
        &[&SCHEMA_VERSION],
    )
    .map_err(|e| err("meta row", e))?;
    let version: i64 = tx
        .query_one("SELECT schema_version FROM meta WHERE id = 1", &[])
        .and_then(|r| r.try_get(0))
        .map_err(|e| err("schema version", e))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "the database has schema version {version}, newer than this controller's \
             {SCHEMA_VERSION}; upgrade corridor"
        )));
    }
    tx.commit().map_err(|e| err("commit", e))
}

struct PgTx<'c> {
    tx: Transaction<'c>,
    op: &'static str,
    /// Set when a statement failed because the connection broke, so that [`attempt`] retries
    /// whatever error the operation made of it.
    broken: Option<postgres::Error>,
}

const GATEWAY_COLUMNS: &str = "name, signing_key, seal_key, tenant_keys, key_generation, \
                               rotate_requested, enrolled_at, revoked_at";

fn gateway_row(r: &postgres::Row) -> Result<GatewayRow, postgres::Error> {
    Ok(GatewayRow {
        name: r.try_get(0)?,
        signing_key: r.try_get(1)?,
        seal_key: r.try_get(2)?,
        tenant_keys: r.try_get(3)?,
        key_generation: r.try_get(4)?,
        rotate_requested: r.try_get(5)?,
        enrolled_at: r.try_get(6)?,
        revoked_at: r.try_get(7)?,
    })
}

impl PgTx<'_> {
    fn err(&mut self, e: postgres::Error) -> StoreError {
        let out = backend(self.op, &e);
        if is_broken(&e) {
            self.broken = Some(e);
        }
        out
    }

    fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        match self.tx.execute(sql, params) {
            Ok(n) => Ok(n),
            Err(e) => Err(self.err(e)),
        }
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        match self.tx.query(sql, params) {
            Ok(rows) => Ok(rows),
            Err(e) => Err(self.err(e)),
        }
    }

    fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Option<postgres::Row>, StoreError> {
        match self.tx.query_opt(sql, params) {
            Ok(row) => Ok(row),
            Err(e) => Err(self.err(e)),
        }
    }

    /// One BIGINT from a query returning exactly one row.
    fn one_i64(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<i64, StoreError> {
        match self.tx.query_one(sql, params).and_then(|r| r.try_get(0)) {
            Ok(v) => Ok(v),
            Err(e) => Err(self.err(e)),
        }
    }

    fn decode<T>(&self, r: Result<T, postgres::Error>) -> Result<T, StoreError> {
        r.map_err(|e| backend(self.op, &e))
    }
}

impl Tx for PgTx<'_> {
    fn lock_writers(&mut self) -> Result<(), StoreError> {
        // Every writer takes this row lock first, so writers of all replicas run one after
        // another, and each one's statements (READ COMMITTED) see every earlier commit.
        self.one_i64("SELECT revision FROM meta WHERE id = 1 FOR UPDATE", &[])?;
        Ok(())
    }

    fn revision(&mut self) -> Result<u64, StoreError> {
        let v = self.one_i64("SELECT revision FROM meta WHERE id = 1", &[])?;
        ops::from_db("revision", v)
    }

    fn bump(&mut self) -> Result<u64, StoreError> {
        let v = self.one_i64(
            "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision",
            &[],
        )?;
        ops::from_db("revision", v)
    }

    fn policy(&mut self) -> Result<Option<PolicyFiles>, StoreError> {
        let Some(row) = self.query_opt("SELECT files FROM policy WHERE id = 1", &[])? else {
            return Ok(None);
        };
        let text: String = self.decode(row.try_get(0))?;
        ops::policy_from_db(&text).map(Some)
    }

    fn set_policy(&mut self, files: &PolicyFiles) -> Result<(), StoreError> {
        let text = ops::policy_to_db(files)?;
        self.execute(
            "INSERT INTO policy (id, files) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET files = excluded.files",
            &[&text],
        )?;
        Ok(())
    }

    fn gateways(&mut self) -> Result<Vec<GatewayRecord>, StoreError> {
        let rows = self.query(
            &format!("SELECT {GATEWAY_COLUMNS} FROM gateways ORDER BY name COLLATE \"C\""),
            &[],
        )?;
        rows.iter()
            .map(|r| self.decode(gateway_row(r))?.into_record())
            .collect()
    }

    fn gateway(&mut self, name: &str) -> Result<Option<GatewayRecord>, StoreError> {
        let row = self.query_opt(
            &format!("SELECT {GATEWAY_COLUMNS} FROM gateways WHERE name = $1 FOR UPDATE"),
            &[&name],
        )?;
        row.map(|r| self.decode(gateway_row(&r))?.into_record())
            .transpose()
    }

    fn put_gateway(&mut self, record: &GatewayRecord) -> Result<(), StoreError> {
        let g = GatewayRow::from_record(record)?;
        self.execute(
            &format!(
                "INSERT INTO gateways ({GATEWAY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (name) DO UPDATE SET
                    signing_key = excluded.signing_key,
                    seal_key = excluded.seal_key,
                    tenant_keys = excluded.tenant_keys,
                    key_generation = excluded.key_generation,
                    rotate_requested = excluded.rotate_requested,
                    enrolled_at = excluded.enrolled_at,
                    revoked_at = excluded.revoked_at"
            ),
            &[
                &g.name,
                &g.signing_key,
                &g.seal_key,
                &g.tenant_keys,
                &g.key_generation,
                &g.rotate_requested,
                &g.enrolled_at,
                &g.revoked_at,
            ],
        )?;
        Ok(())
    }

    fn request_rotation_all(&mut self) -> Result<(), StoreError> {
        self.execute(
            "UPDATE gateways SET rotate_requested = rotate_requested + 1
             WHERE revoked_at IS NULL",
            &[],
        )?;
        Ok(())
    }

    fn insert_token(&mut self, record: &TokenRecord) -> Result<(), StoreError> {
        let t = TokenRow::from_record(record);
        self.execute(
            "INSERT INTO tokens (id, gateway, secret_hash, expires_at, used_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&t.id, &t.gateway, &t.secret_hash, &t.expires_at, &t.used_at],
        )?;
        Ok(())
    }

    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        // FOR UPDATE although writers are already serialized by `lock_writers`: the token row
        // is what must never be redeemed twice, so it is locked on its own account too.
        let row = self.query_opt(
            "SELECT id, gateway, secret_hash, expires_at, used_at FROM tokens
             WHERE id = $1 FOR UPDATE",
            &[&id],
        )?;
        let Some(r) = row else { return Ok(None) };
        let t = self.decode((|| {
            Ok(TokenRow {
                id: r.try_get(0)?,
                gateway: r.try_get(1)?,
                secret_hash: r.try_get(2)?,
                expires_at: r.try_get(3)?,
                used_at: r.try_get(4)?,
            })
        })())?;
        t.into_record().map(Some)
    }

    fn mark_token_used(&mut self, id: &str, now: u64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE tokens SET used_at = $2 WHERE id = $1",
            &[&id, &ops::time_to_db(now)],
        )?;
        Ok(())
    }

    fn kill_tokens(&mut self, gateway: &str, now: u64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE tokens SET used_at = $2 WHERE gateway = $1 AND used_at IS NULL",
            &[&gateway, &ops::time_to_db(now)],
        )?;
        Ok(())
    }
}

const WRITE: IsolationLevel = IsolationLevel::ReadCommitted;

impl Store for PostgresStore {
    fn revision(&self) -> Result<u64, StoreError> {
        self.run("reading the revision", WRITE, true, |tx| tx.revision())
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.run(
            "reading a snapshot",
            IsolationLevel::RepeatableRead,
            true,
            ops::snapshot,
        )
    }

    fn put_policy(&self, files: &PolicyFiles) -> Result<u64, StoreError> {
        self.run("storing the policy", WRITE, false, |tx| {
            ops::put_policy(tx, files)
        })
    }

    fn add_token(&self, record: &TokenRecord) -> Result<(), StoreError> {
        self.run("storing a token", WRITE, false, |tx| {
            ops::add_token(tx, record)
        })
    }

    fn redeem_token(
        &self,
        id: &str,
        secret_hash: &[u8; 32],
        gateway: &str,
        signing_key: &[u8; 32],
        seal_key: &[u8; 32],
        now: u64,
    ) -> Result<u64, RedeemError> {
        let r = ops::Redeem {
            id,
            secret_hash,
            gateway,
            signing_key,
            seal_key,
            now,
        };
        self.run("redeeming a token", WRITE, false, |tx| {
            ops::redeem_token(tx, &r)
        })
    }

    fn set_tenant_keys(
        &self,
        gateway: &str,
        keys: &BTreeMap<String, [u8; 32]>,
    ) -> Result<u64, StoreError> {
        self.run("setting tenant keys", WRITE, false, |tx| {
            ops::set_tenant_keys(tx, gateway, keys)
        })
    }

    fn request_rotation(&self, gateway: Option<&str>) -> Result<u64, StoreError> {
        self.run("requesting a rotation", WRITE, false, |tx| {
            ops::request_rotation(tx, gateway)
        })
    }

    fn revoke(&self, gateway: &str, now: u64) -> Result<u64, StoreError> {
        self.run("revoking a gateway", WRITE, false, |tx| {
            ops::revoke(tx, gateway, now)
        })
    }
}
