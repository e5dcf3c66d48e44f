//! What the agent keeps in its state directory:
//!
//! - `bundle`: the sealed bytes of the last bundle the engine applied (the last good bundle);
//! - `agent.json`: the applied version and the key-rotation record ([`Persisted`]);
//! - `controller.pub`: the controller's ed25519 key (base64), learned from its TLS certificate
//!   (which had to match the pinned fingerprint); bundles are verified against it;
//! - `incoming/`: bundle files dropped there (`corridor gateway apply-bundle`) are processed
//!   once a second, through the same checks as bundles from the controller, then deleted.
//!
//! Every file is written to a temporary file (0600) and renamed into place.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The last good bundle's file.
pub const BUNDLE_FILE: &str = "bundle";
/// The agent's record.
pub const STATE_FILE: &str = "agent.json";
/// The controller's public key.
pub const CONTROLLER_KEY_FILE: &str = "controller.pub";
/// Where `corridor gateway apply-bundle` drops bundle files (`*.bundle`).
pub const INCOMING_DIR: &str = "incoming";

/// `agent.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    /// The version of the bundle in `bundle` (the one applied last).
    pub applied_version: Option<u64>,
    /// The highest rotation generation carried out (the bundles' `rotate`).
    pub rotate_generation: u64,
    /// Unix seconds of the last key rotation (or of the first start, before any).
    pub last_rotation: u64,
    /// Rotations carried out.
    pub rotations: u64,
}

/// Creates the directory (0700) if it is missing.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` to `path` atomically (temporary file 0600, synced, renamed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        ensure_dir(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)
}

/// Reads `agent.json` (a missing file is the default; an unreadable one is reported).
pub fn load(dir: &Path) -> Result<Option<Persisted>, String> {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}; delete it to start afresh", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes `agent.json`.
pub fn save(dir: &Path, state: &Persisted) -> Result<(), String> {
    let path = dir.join(STATE_FILE);
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
    write_atomic(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads `controller.pub` if it is there and its fingerprint is `fingerprint`.
pub fn load_controller_key(dir: &Path, fingerprint: &str) -> Option<[u8; 32]> {
    let text = fs::read_to_string(dir.join(CONTROLLER_KEY_FILE)).ok()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    let key = <[u8; 32]>::try_from(bytes.as_slice()).ok()?;
    if crate::identity::fingerprint(&key) == fingerprint {
        Some(key)
    } else {
        tracing::warn!(
            path = %dir.join(CONTROLLER_KEY_FILE).display(),
            "the stored controller key is not the pinned one: ignored"
        );
        None
    }
}

/// Writes `controller.pub`.
pub fn save_controller_key(dir: &Path, key: &[u8; 32]) -> Result<(), String> {
    let path = dir.join(CONTROLLER_KEY_FILE);
    let mut text = base64::engine::general_purpose::STANDARD.encode(key);
    text.push('\n');
    write_atomic(&path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}
