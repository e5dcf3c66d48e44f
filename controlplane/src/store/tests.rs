//! One suite of store semantics, run against SQLite and (when a server is given) PostgreSQL.

use std::collections::BTreeMap;
use std::sync::Barrier;

use super::{PolicyFiles, RedeemError, Snapshot, Store, StoreError, open};
use crate::token::TokenRecord;

fn policy(gateways: &str) -> PolicyFiles {
    PolicyFiles {
        gateways: gateways.to_owned(),
        tenants: BTreeMap::from([
            ("acme.toml".to_owned(), "name = \"acme\"\n".to_owned()),
            ("zeta.toml".to_owned(), "name = \"zeta\"\n".to_owned()),
        ]),
    }
}

fn token(id: &str, gateway: &str, hash: u8, expires_at: u64) -> TokenRecord {
    TokenRecord {
        id: id.to_owned(),
        gateway: gateway.to_owned(),
        secret_hash: [hash; 32],
        expires_at,
        used_at: None,
    }
}

fn keys(pairs: &[(&str, u8)]) -> BTreeMap<String, [u8; 32]> {
    pairs
        .iter()
        .map(|(t, k)| ((*t).to_owned(), [*k; 32]))
        .collect()
}

fn gateway(store: &dyn Store, name: &str) -> super::GatewayRecord {
    let snap = store.snapshot().unwrap();
    snap.gateways
        .into_iter()
        .find(|g| g.name == name)
        .unwrap_or_else(|| panic!("no gateway {name} in the snapshot"))
}

/// The store's semantics, from a fresh store.
fn suite(store: &dyn Store) {
    // A fresh store.
    assert_eq!(store.revision().unwrap(), 0);
    assert_eq!(
        store.snapshot().unwrap(),
        Snapshot {
            revision: 0,
            policy: None,
            gateways: vec![]
        }
    );

    // Policy: a change bumps once, an identical one does not.
    let p1 = policy("[gateway.alpha]\n");
    let p2 = policy("[gateway.beta]\n");
    assert_eq!(store.put_policy(&p1).unwrap(), 1);
    assert_eq!(store.put_policy(&p1).unwrap(), 1);
    assert_eq!(store.revision().unwrap(), 1);
    assert_eq!(store.put_policy(&p2).unwrap(), 2);
    assert_eq!(store.put_policy(&p1).unwrap(), 3);
    assert_eq!(store.snapshot().unwrap().policy, Some(p1.clone()));

    // Tokens: adding does not bump; a duplicate id is refused.
    store
        .add_token(&token("t-alpha", "alpha", 1, 1000))
        .unwrap();
    assert_eq!(store.revision().unwrap(), 3);
    assert!(matches!(
        store.add_token(&token("t-alpha", "other", 9, 5)),
        Err(StoreError::Backend(_))
    ));

    // Refusals change nothing.
    let sk = [0x51; 32];
    let xk = [0x52; 32];
    assert!(matches!(
        store.redeem_token("nope", &[1; 32], "alpha", &sk, &xk, 10),
        Err(RedeemError::Unknown)
    ));
    let mut wrong = [1u8; 32];
    wrong[31] = 2;
    assert!(matches!(
        store.redeem_token("t-alpha", &wrong, "alpha", &sk, &xk, 10),
        Err(RedeemError::Unknown)
    ));
    match store.redeem_token("t-alpha", &[1; 32], "beta", &sk, &xk, 10) {
        Err(RedeemError::OtherGateway(g)) => assert_eq!(g, "alpha"),
        other => panic!("expected OtherGateway, got {other:?}"),
    }
    assert!(matches!(
        store.redeem_token("t-alpha", &[1; 32], "alpha", &sk, &xk, 1001),
        Err(RedeemError::Expired { at: 1000 })
    ));
    assert_eq!(store.revision().unwrap(), 3);
    assert!(store.snapshot().unwrap().gateways.is_empty());

    // Success, then the token is spent.
    assert_eq!(
        store
            .redeem_token("t-alpha", &[1; 32], "alpha", &sk, &xk, 500)
            .unwrap(),
        4
    );
    let alpha = gateway(store, "alpha");
    assert_eq!(alpha.signing_key, sk);
    assert_eq!(alpha.seal_key, xk);
    assert!(alpha.tenant_keys.is_empty());
    assert_eq!(alpha.key_generation, 1);
    assert_eq!(alpha.rotate_requested, 0);
    assert_eq!(alpha.enrolled_at, 500);
    assert_eq!(alpha.revoked_at, None);
    assert!(matches!(
        store.redeem_token("t-alpha", &[1; 32], "alpha", &sk, &xk, 600),
        Err(RedeemError::Used { at: 500 })
    ));
    assert_eq!(store.revision().unwrap(), 4);

    // Tenant keys: merged; the generation moves only when a key changes.
    assert_eq!(
        store
            .set_tenant_keys("alpha", &keys(&[("acme", 1)]))
            .unwrap(),
        5
    );
    assert_eq!(gateway(store, "alpha").key_generation, 2);
    assert_eq!(
        store
            .set_tenant_keys("alpha", &keys(&[("acme", 1)]))
            .unwrap(),
        5
    );
    assert_eq!(store.set_tenant_keys("alpha", &keys(&[])).unwrap(), 5);
    assert_eq!(gateway(store, "alpha").key_generation, 2);
    assert_eq!(
        store
            .set_tenant_keys("alpha", &keys(&[("zeta", 2)]))
            .unwrap(),
        6
    );
    let alpha = gateway(store, "alpha");
    assert_eq!(alpha.key_generation, 3);
    assert_eq!(alpha.tenant_keys, keys(&[("acme", 1), ("zeta", 2)]));
    assert_eq!(
        store
            .set_tenant_keys("alpha", &keys(&[("acme", 3), ("zeta", 2)]))
            .unwrap(),
        7
    );
    let alpha = gateway(store, "alpha");
    assert_eq!(alpha.key_generation, 4);
    assert_eq!(alpha.tenant_keys, keys(&[("acme", 3), ("zeta", 2)]));
    assert!(matches!(
        store.set_tenant_keys("nobody", &keys(&[("acme", 1)])),
        Err(StoreError::UnknownGateway(g)) if g == "nobody"
    ));

    // A second gateway, redeemed exactly at its expiry (still valid).
    store.add_token(&token("t-beta", "beta", 2, 1000)).unwrap();
    assert_eq!(
        store
            .redeem_token("t-beta", &[2; 32], "beta", &[0x61; 32], &[0x62; 32], 1000)
            .unwrap(),
        8
    );
    store
        .set_tenant_keys("beta", &keys(&[("acme", 4)]))
        .unwrap();
    assert_eq!(store.revision().unwrap(), 9);

    // Rotation: one, then all.
    assert_eq!(store.request_rotation(Some("alpha")).unwrap(), 10);
    assert_eq!(gateway(store, "alpha").rotate_requested, 1);
    assert_eq!(gateway(store, "beta").rotate_requested, 0);
    assert_eq!(store.request_rotation(None).unwrap(), 11);
    assert_eq!(gateway(store, "alpha").rotate_requested, 2);
    assert_eq!(gateway(store, "beta").rotate_requested, 1);
    assert!(matches!(
        store.request_rotation(Some("nobody")),
        Err(StoreError::UnknownGateway(_))
    ));
    assert_eq!(store.revision().unwrap(), 11);

    // Revocation: its unused tokens die, its keys are frozen, rotation skips it.
    store
        .add_token(&token("t-beta-2", "beta", 3, 9999))
        .unwrap();
    store
        .add_token(&token("t-alpha-2", "alpha", 4, 9999))
        .unwrap();
    assert_eq!(store.revoke("beta", 2000).unwrap(), 12);
    assert_eq!(gateway(store, "beta").revoked_at, Some(2000));
    assert!(matches!(
        store.redeem_token("t-beta-2", &[3; 32], "beta", &[0x71; 32], &[0x72; 32], 2001),
        Err(RedeemError::Used { at: 2000 })
    ));
    assert!(matches!(
        store.set_tenant_keys("beta", &keys(&[("acme", 5)])),
        Err(StoreError::Revoked(g)) if g == "beta"
    ));
    assert!(matches!(
        store.request_rotation(Some("beta")),
        Err(StoreError::Revoked(_))
    ));
    assert_eq!(store.request_rotation(None).unwrap(), 13);
    assert_eq!(gateway(store, "alpha").rotate_requested, 3);
    assert_eq!(gateway(store, "beta").rotate_requested, 1);
    assert!(matches!(
        store.revoke("nobody", 2000),
        Err(StoreError::UnknownGateway(_))
    ));
    // Revoking again keeps the first time (and still counts as a change).
    assert_eq!(store.revoke("beta", 3000).unwrap(), 14);
    assert_eq!(gateway(store, "beta").revoked_at, Some(2000));

    // Re-enrollment clears the revocation with new keys and no tenant keys, keeping the
    // rotation generation; another gateway's tokens were untouched.
    store
        .add_token(&token("t-beta-3", "beta", 5, 9999))
        .unwrap();
    assert_eq!(
        store
            .redeem_token("t-beta-3", &[5; 32], "beta", &[0x81; 32], &[0x82; 32], 4000)
            .unwrap(),
        15
    );
    let beta = gateway(store, "beta");
    assert_eq!(beta.revoked_at, None);
    assert_eq!(beta.signing_key, [0x81; 32]);
    assert_eq!(beta.seal_key, [0x82; 32]);
    assert!(beta.tenant_keys.is_empty());
    assert_eq!(beta.key_generation, 3);
    assert_eq!(beta.rotate_requested, 1);
    assert_eq!(beta.enrolled_at, 4000);

    // The snapshot holds it all, at the current revision.
    let snap = store.snapshot().unwrap();
    assert_eq!(snap.revision, 15);
    assert_eq!(snap.revision, store.revision().unwrap());
    assert_eq!(snap.policy, Some(p1));
    let names: Vec<&str> = snap.gateways.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(
        snap.gateways[0].tenant_keys,
        keys(&[("acme", 3), ("zeta", 2)])
    );
    assert_eq!(snap.gateways[0].rotate_requested, 3);
    assert_eq!(snap.gateways[1], beta);

    // Odd inputs are errors or refusals, never panics.
    assert!(matches!(
        store.redeem_token("", &[0; 32], "", &[0; 32], &[0; 32], u64::MAX),
        Err(RedeemError::Unknown)
    ));
    store
        .add_token(&token("t-forever", "gamma", 6, u64::MAX))
        .unwrap();
    assert!(
        store
            .redeem_token("t-forever", &[6; 32], "gamma", &[1; 32], &[2; 32], 7)
            .is_ok()
    );
    store
        .set_tenant_keys("gamma", &keys(&[("odd \"name\" ✓", 1)]))
        .unwrap();
    assert_eq!(
        gateway(store, "gamma").tenant_keys,
        keys(&[("odd \"name\" ✓", 1)])
    );
}

/// Two threads (each with its own store, which may be the same one) redeem one token: exactly
/// one wins, the other sees it used.
fn concurrent_redeem(a: &dyn Store, b: &dyn Store) {
    for round in 0..10u8 {
        let id = format!("race-{round}");
        a.add_token(&token(&id, "racer", 7, 1000)).unwrap();
        let before = a.revision().unwrap();
        let barrier = Barrier::new(2);
        let results: Vec<Result<u64, RedeemError>> = std::thread::scope(|s| {
            let handles: Vec<_> = [(a, 1u8), (b, 2u8)]
                .into_iter()
                .map(|(store, who)| {
                    let (id, barrier) = (&id, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        store.redeem_token(id, &[7; 32], "racer", &[who; 32], &[who; 32], 10)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wins: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(wins.len(), 1, "round {round}: {results:?}");
        let loser = 1 - wins[0];
        assert!(
            matches!(results[loser], Err(RedeemError::Used { at: 10 })),
            "round {round}: {results:?}"
        );
        assert_eq!(a.revision().unwrap(), before + 1);
        let winner_key = [u8::try_from(wins[0]).unwrap() + 1; 32];
        assert_eq!(gateway(b, "racer").signing_key, winner_key);
    }
}

/// Two stores on one database (controller replicas) see each other's changes.
fn replicas_share_state(a: &dyn Store, b: &dyn Store) {
    let start = a.revision().unwrap();
    assert_eq!(b.revision().unwrap(), start);
    let p = policy("[gateway.shared]\n");
    let rev = a.put_policy(&p).unwrap();
    assert_eq!(b.revision().unwrap(), rev);
    assert_eq!(b.snapshot().unwrap().policy, Some(p.clone()));
    assert_eq!(b.put_policy(&p).unwrap(), rev);
    b.add_token(&token("shared", "shared", 8, 1000)).unwrap();
    let rev = a
        .redeem_token("shared", &[8; 32], "shared", &[1; 32], &[2; 32], 5)
        .unwrap();
    assert_eq!(b.revision().unwrap(), rev);
    assert_eq!(gateway(b, "shared").signing_key, [1; 32]);
    let rev = b.revoke("shared", 6).unwrap();
    assert_eq!(a.snapshot().unwrap().revision, rev);
    assert_eq!(gateway(a, "shared").revoked_at, Some(6));
}

// --- SQLite ---

mod sqlite {
    use std::os::unix::fs::PermissionsExt;

    use super::super::sqlite::SqliteStore;
    use super::*;

    #[test]
    fn semantics() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
        suite(&store);
    }

    #[test]
    fn semantics_in_memory() {
        suite(&SqliteStore::in_memory().unwrap());
    }

    #[test]
    fn concurrent_redeem_one_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
        concurrent_redeem(&store, &store);
    }

    #[test]
    fn concurrent_redeem_two_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let a = SqliteStore::open(&path).unwrap();
        let b = SqliteStore::open(&path).unwrap();
        concurrent_redeem(&a, &b);
        replicas_share_state(&a, &b);
    }

    #[test]
    fn file_is_private_and_persistent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let url = format!("sqlite:{}", path.display());
        {
            let store = open(&url).unwrap();
            store.put_policy(&policy("x")).unwrap();
            store.add_token(&token("t", "g", 1, 100)).unwrap();
            store
                .redeem_token("t", &[1; 32], "g", &[1; 32], &[2; 32], 5)
                .unwrap();
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        // A plain path works too, and the state survived.
        let store = open(path.to_str().unwrap()).unwrap();
        assert_eq!(store.revision().unwrap(), 2);
        assert_eq!(gateway(&*store, "g").enrolled_at, 5);
    }

    #[test]
    fn bad_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open("sqlite:").is_err());
        assert!(open("").is_err());
        let missing = dir.path().join("no/such/dir/store.db");
        assert!(open(missing.to_str().unwrap()).is_err());
        let junk = dir.path().join("junk.db");
        std::fs::write(
            &junk,
            b"this is not a database, not at all; just some text here",
        )
        .unwrap();
        assert!(open(junk.to_str().unwrap()).is_err());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE meta SET schema_version = 99", [])
            .unwrap();
        drop(conn);
        let err = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }
}

// --- PostgreSQL ---

mod postgres {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::super::postgres::PostgresStore;
    use super::*;

    /// The server to test against, from `CORRIDOR_TEST_POSTGRES`; `None` means skip (never on
    /// CI, where an unset variable is a configuration mistake, not a reason to pass).
    fn server() -> Option<String> {
        match std::env::var("CORRIDOR_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CORRIDOR_TEST_POSTGRES is not set on CI: the PostgreSQL store tests must run \
                     there (e.g. postgres://corridor:corridor@127.0.0.1:5432/corridor_test)"
                );
                // Straight to stderr, past the test harness's capture, so that it shows.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED: set CORRIDOR_TEST_POSTGRES=postgres://corridor:corridor@127.0.0.1:5432/corridor_test \
                     to run the PostgreSQL store tests (CI runs them) ***\n"
                );
                None
            }
        }
    }

    /// A schema of its own for one test, dropped afterwards: reruns and parallel tests do not
    /// see each other's rows.
    struct Schema {
        server: String,
        name: String,
        url: String,
    }

    impl Schema {
        fn new() -> Option<Schema> {
            static N: AtomicU32 = AtomicU32::new(0);
            let server = server()?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let name = format!(
                "corridor_test_{}_{}_{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let mut client = ::postgres::Client::connect(&server, ::postgres::NoTls).unwrap();
            client
                .batch_execute(&format!("CREATE SCHEMA {name}"))
                .unwrap();
            let sep = if server.contains('?') { '&' } else { '?' };
            // Its own application name too, so that a test can find its own connections.
            let url =
                format!("{server}{sep}options=-c%20search_path%3D{name}&application_name={name}");
            Some(Schema { server, name, url })
        }
    }

    impl Drop for Schema {
        fn drop(&mut self) {
            if let Ok(mut client) = ::postgres::Client::connect(&self.server, ::postgres::NoTls) {
                let _ = client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
            }
        }
    }

    #[test]
    fn semantics() {
        let Some(schema) = Schema::new() else { return };
        let store = open(&schema.url).unwrap();
        suite(&*store);
    }

    #[test]
    fn concurrent_redeem_two_replicas() {
        let Some(schema) = Schema::new() else { return };
        let a = PostgresStore::open(&schema.url).unwrap();
        let b = PostgresStore::open(&schema.url).unwrap();
        concurrent_redeem(&a, &b);
    }

    #[test]
    fn concurrent_redeem_one_store() {
        let Some(schema) = Schema::new() else { return };
        let a = PostgresStore::open(&schema.url).unwrap();
        concurrent_redeem(&a, &a);
    }

    #[test]
    fn replicas_share_state() {
        let Some(schema) = Schema::new() else { return };
        let a = PostgresStore::open(&schema.url).unwrap();
        let b = PostgresStore::open(&schema.url).unwrap();
        // Opening a third time on an existing schema changes nothing.
        let c = PostgresStore::open(&schema.url).unwrap();
        assert_eq!(c.revision().unwrap(), 0);
        super::replicas_share_state(&a, &b);
        assert_eq!(c.revision().unwrap(), a.revision().unwrap());
    }

    #[test]
    fn reconnects_after_the_connection_dies() {
        let Some(schema) = Schema::new() else { return };
        let store = PostgresStore::open(&schema.url).unwrap();
        store.put_policy(&policy("x")).unwrap();
        let mut admin = ::postgres::Client::connect(&schema.server, ::postgres::NoTls).unwrap();
        let killed = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND query NOT ILIKE '%pg_stat_activity%' \
                 AND application_name = $1",
                &[&schema.name],
            )
            .unwrap();
        assert!(killed >= 1);
        assert_eq!(store.revision().unwrap(), 1);
    }

    #[test]
    fn unreachable_server_is_an_error() {
        // Nothing listens on port 1.
        assert!(open("postgres://corridor:corridor@127.0.0.1:1/corridor_test").is_err());
        assert!(open("postgres://[bad").is_err());
    }
}
