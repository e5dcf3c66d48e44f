//! Key directories: modes, keeping and replacing keys, refusing bad ones.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::os::unix::fs::PermissionsExt;

use controlplane::keys::{
    KeyDirError, KeyOutcome, generate_key_dir, key_path, keys_toml_line, read_key_file,
};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn generate_keep_and_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys/edge-1");
    let first = generate_key_dir(&dir, &["acme", "globex"], false).unwrap();
    assert_eq!(mode(&dir), 0o700);
    for f in &first {
        assert_eq!(f.outcome, KeyOutcome::Created);
        assert_eq!(mode(&f.path), 0o600);
        assert_eq!(read_key_file(&f.path).unwrap().public_key(), f.public_key);
    }
    assert_ne!(first[0].public_key, first[1].public_key);

    let again = generate_key_dir(&dir, &["acme", "globex"], false).unwrap();
    assert!(again.iter().all(|f| f.outcome == KeyOutcome::Kept));
    assert_eq!(
        again.iter().map(|f| f.public_key).collect::<Vec<_>>(),
        first.iter().map(|f| f.public_key).collect::<Vec<_>>()
    );

    let forced = generate_key_dir(&dir, &["acme"], true).unwrap();
    assert_eq!(forced[0].outcome, KeyOutcome::Replaced);
    assert_ne!(forced[0].public_key, first[0].public_key);
    assert_eq!(mode(&forced[0].path), 0o600);
    assert!(!dir.join("acme.key.tmp").exists());

    let line = keys_toml_line(first.iter().map(|f| (f.tenant.as_str(), &f.public_key)));
    let parsed: toml::Table = toml::from_str(&line).unwrap();
    assert_eq!(parsed["keys"].as_table().unwrap().len(), 2);
}

#[test]
fn invalid_existing_key_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(key_path(tmp.path(), "acme"), "garbage").unwrap();
    let err = generate_key_dir(tmp.path(), &["acme"], false).unwrap_err();
    assert!(matches!(err, KeyDirError::Invalid { .. }));
    assert!(err.to_string().contains("use --force"), "{err}");
    let out = generate_key_dir(tmp.path(), &["acme"], true).unwrap();
    assert_eq!(out[0].outcome, KeyOutcome::Replaced);
}
