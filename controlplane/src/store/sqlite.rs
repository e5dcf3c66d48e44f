//! The embedded store: one SQLite file (WAL mode), created owner-only since it holds token
//! hashes and the registry of gateway keys.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

use super::ops::{self, GatewayRow, SCHEMA_VERSION, TokenRow, Tx};
use super::{GatewayRecord, PolicyFiles, RedeemError, Snapshot, Store, StoreError};
use crate::token::TokenRecord;

/// How long a writer waits for another process's transaction on the same file before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    schema_version INTEGER NOT NULL,
    revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS policy (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    files TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gateways (
    name TEXT PRIMARY KEY,
    signing_key BLOB NOT NULL,
    seal_key BLOB NOT NULL,
    tenant_keys TEXT NOT NULL,
    key_generation INTEGER NOT NULL,
    rotate_requested INTEGER NOT NULL,
    enrolled_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
CREATE INDEX IF NOT EXISTS tokens_by_gateway ON tokens (gateway);
";

/// The SQLite store. One connection behind a mutex: the controller's writes are rare and
/// short, and SQLite serializes writers anyway.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating it, mode 0600, if missing) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if path.as_os_str().is_empty() {
            return Err(StoreError::Backend(
                "empty SQLite path (use sqlite:PATH)".to_owned(),
            ));
        }
        let in_memory = path == Path::new(":memory:");
        if !in_memory {
            // Created here rather than by SQLite so that it is never readable by others, not
            // even between creation and a chmod. SQLite gives its -wal and -shm files the
            // database file's mode.
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(StoreError::Backend(format!(
                        "creating {}: {e}",
                        path.display()
                    )));
                }
            }
        }
        // No URI flag: the path is a path, whatever it looks like.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        SqliteStore::init(conn, path.to_owned())
    }

    /// A store in memory, gone when dropped (tests, demos).
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        SqliteStore::open(Path::new(":memory:"))
    }

    fn init(mut conn: Connection, path: PathBuf) -> Result<SqliteStore, StoreError> {
        let err = |what: &str, e: rusqlite::Error| {
            StoreError::Backend(format!("opening {}: {what}: {e}", path.display()))
        };
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| err("busy timeout", e))?;
        // WAL: readers (the controller's snapshot) do not block the writer nor it them. An
        // in-memory database answers "memory", which is fine.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            .map_err(|e| err("WAL mode", e))?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| err("begin", e))?;
        tx.execute_batch(SCHEMA).map_err(|e| err("schema", e))?;
        tx.execute(
            "INSERT INTO meta (id, schema_version, revision) VALUES (1, ?1, 0)
             ON CONFLICT (id) DO NOTHING",
            params![SCHEMA_VERSION],
        )
        .map_err(|e| err("meta row", e))?;
        let version: i64 = tx
            .query_row("SELECT schema_version FROM meta WHERE id = 1", [], |r| {
                r.get(0)
            })
            .map_err(|e| err("schema version", e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "{} has schema version {version}, newer than this controller's \
                 {SCHEMA_VERSION}; upgrade corridor",
                path.display()
            )));
        }
        tx.commit().map_err(|e| err("commit", e))?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped its transaction, which rolled back: the
        // connection is fine to reuse.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in one transaction, committed when it succeeds. Writers begin `IMMEDIATE` so
    /// that they hold the write lock from their first read (no read-then-upgrade races with
    /// another process on the same file).
    fn run<T, E: From<StoreError>>(
        &self,
        op: &'static str,
        write: bool,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.conn();
        let behavior = if write {
            TransactionBehavior::Immediate
        } else {
            TransactionBehavior::Deferred
        };
        let tx = conn
            .transaction_with_behavior(behavior)
            .map_err(|e| backend(op, e))?;
        let mut stx = SqliteTx { tx, op };
        let out = f(&mut stx)?;
        stx.tx.commit().map_err(|e| backend(op, e))?;
        Ok(out)
    }
}

fn backend(op: &str, e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("{op}: {e}"))
}

struct SqliteTx<'c> {
    tx: Transaction<'c>,
    op: &'static str,
}

impl SqliteTx<'_> {
    fn err(&self, e: rusqlite::Error) -> StoreError {
        backend(self.op, e)
    }
}

const GATEWAY_COLUMNS: &str = "name, signing_key, seal_key, tenant_keys, key_generation, \
                               rotate_requested, enrolled_at, revoked_at";

fn gateway_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GatewayRow> {
    Ok(GatewayRow {
        name: r.get(0)?,
        signing_key: r.get(1)?,
        seal_key: r.get(2)?,
        tenant_keys: r.get(3)?,
        key_generation: r.get(4)?,
        rotate_requested: r.get(5)?,
        enrolled_at: r.get(6)?,
        revoked_at: r.get(7)?,
    })
}

impl Tx for SqliteTx<'_> {
    fn lock_writers(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn revision(&mut self) -> Result<u64, StoreError> {
        let v: i64 = self
            .tx
            .query_row("SELECT revision FROM meta WHERE id = 1", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        ops::from_db("revision", v)
    }

    fn bump(&mut self) -> Result<u64, StoreError> {
        let v: i64 = self
            .tx
            .query_row(
                "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        ops::from_db("revision", v)
    }

    fn policy(&mut self) -> Result<Option<PolicyFiles>, StoreError> {
        let text: Option<String> = self
            .tx
            .query_row("SELECT files FROM policy WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        text.as_deref().map(ops::policy_from_db).transpose()
    }

    fn set_policy(&mut self, files: &PolicyFiles) -> Result<(), StoreError> {
        let text = ops::policy_to_db(files)?;
        self.tx
            .execute(
                "INSERT INTO policy (id, files) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET files = excluded.files",
                params![text],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn gateways(&mut self) -> Result<Vec<GatewayRecord>, StoreError> {
        let rows: Vec<GatewayRow> = {
            let mut stmt = self
                .tx
                .prepare(&format!(
                    "SELECT {GATEWAY_COLUMNS} FROM gateways ORDER BY name"
                ))
                .map_err(|e| backend(self.op, e))?;
            stmt.query_map([], gateway_row)
                .and_then(|rows| rows.collect())
                .map_err(|e| backend(self.op, e))?
        };
        rows.into_iter().map(GatewayRow::into_record).collect()
    }

    fn gateway(&mut self, name: &str) -> Result<Option<GatewayRecord>, StoreError> {
        self.tx
            .query_row(
                &format!("SELECT {GATEWAY_COLUMNS} FROM gateways WHERE name = ?1"),
                params![name],
                gateway_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .map(GatewayRow::into_record)
            .transpose()
    }

    fn put_gateway(&mut self, record: &GatewayRecord) -> Result<(), StoreError> {
        let g = GatewayRow::from_record(record)?;
        self.tx
            .execute(
                &format!(
                    "INSERT INTO gateways ({GATEWAY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (name) DO UPDATE SET
                        signing_key = excluded.signing_key,
                        seal_key = excluded.seal_key,
                        tenant_keys = excluded.tenant_keys,
                        key_generation = excluded.key_generation,
                        rotate_requested = excluded.rotate_requested,
                        enrolled_at = excluded.enrolled_at,
                        revoked_at = excluded.revoked_at"
                ),
                params![
                    g.name,
                    g.signing_key,
                    g.seal_key,
                    g.tenant_keys,
                    g.key_generation,
                    g.rotate_requested,
                    g.enrolled_at,
                    g.revoked_at
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn request_rotation_all(&mut self) -> Result<(), StoreError> {
        self.tx
            .execute(
                "UPDATE gateways SET rotate_requested = rotate_requested + 1
                 WHERE revoked_at IS NULL",
                [],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn insert_token(&mut self, record: &TokenRecord) -> Result<(), StoreError> {
        let t = TokenRow::from_record(record);
        self.tx
            .execute(
                "INSERT INTO tokens (id, gateway, secret_hash, expires_at, used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.id, t.gateway, t.secret_hash, t.expires_at, t.used_at],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.tx
            .query_row(
                "SELECT id, gateway, secret_hash, expires_at, used_at FROM tokens WHERE id = ?1",
                params![id],
                |r| {
                    Ok(TokenRow {
                        id: r.get(0)?,
                        gateway: r.get(1)?,
                        secret_hash: r.get(2)?,
                        expires_at: r.get(3)?,
                        used_at: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))?
            .map(TokenRow::into_record)
            .transpose()
    }

    fn mark_token_used(&mut self, id: &str, now: u64) -> Result<(), StoreError> {
        self.tx
            .execute(
                "UPDATE tokens SET used_at = ?2 WHERE id = ?1",
                params![id, ops::time_to_db(now)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn kill_tokens(&mut self, gateway: &str, now: u64) -> Result<(), StoreError> {
        self.tx
            .execute(
                "UPDATE tokens SET used_at = ?2 WHERE gateway = ?1 AND used_at IS NULL",
                params![gateway, ops::time_to_db(now)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

impl Store for SqliteStore {
    fn revision(&self) -> Result<u64, StoreError> {
        self.run("reading the revision", false, |tx| tx.revision())
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.run("reading a snapshot", false, ops::snapshot)
    }

    fn put_policy(&self, files: &PolicyFiles) -> Result<u64, StoreError> {
        self.run("storing the policy", true, |tx| ops::put_policy(tx, files))
    }

    fn add_token(&self, record: &TokenRecord) -> Result<(), StoreError> {
        self.run("storing a token", true, |tx| ops::add_token(tx, record))
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
        self.run("redeeming a token", true, |tx| ops::redeem_token(tx, &r))
    }

    fn set_tenant_keys(
        &self,
        gateway: &str,
        keys: &BTreeMap<String, [u8; 32]>,
    ) -> Result<u64, StoreError> {
        self.run("setting tenant keys", true, |tx| {
            ops::set_tenant_keys(tx, gateway, keys)
        })
    }

    fn request_rotation(&self, gateway: Option<&str>) -> Result<u64, StoreError> {
        self.run("requesting a rotation", true, |tx| {
            ops::request_rotation(tx, gateway)
        })
    }

    fn revoke(&self, gateway: &str, now: u64) -> Result<u64, StoreError> {
        self.run("revoking a gateway", true, |tx| {
            ops::revoke(tx, gateway, now)
        })
    }
}
