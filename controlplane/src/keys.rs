//! Gateway key files: one private key per tenant, `<KEYDIR>/<tenant>.key`, base64 as `wg genkey`
//! writes it, mode 0600 in a 0700 directory. Private keys are generated on the gateway and never
//! leave it (DESIGN.md §2.5); only their public keys go into `gateways.toml`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dataplane::SecretKey;
use dataplane::config::{KeyError, encode_key};

use crate::policy::{Gateway, Policy};

/// This gateway's private keys, per tenant name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantKeys(BTreeMap<String, SecretKey>);

impl TenantKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the key of a tenant.
    pub fn insert(&mut self, tenant: impl Into<String>, key: SecretKey) {
        self.0.insert(tenant.into(), key);
    }

    /// The key of a tenant.
    pub fn get(&self, tenant: &str) -> Option<&SecretKey> {
        self.0.get(tenant)
    }

    /// Tenant names and keys, by tenant name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretKey)> {
        self.0.iter().map(|(t, k)| (t.as_str(), k))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A problem with a key directory or key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyDirError {
    /// A tenant's key file does not exist.
    #[error("{}: no key file for tenant \"{tenant}\"; create it with `corridor keys generate --policy <DIR> --gateway <NAME> --out {}`", path.display(), dir.display())]
    Missing {
        /// The tenant.
        tenant: String,
        /// The expected file.
        path: PathBuf,
        /// The key directory.
        dir: PathBuf,
    },
    /// A file or directory could not be read, created or written.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A key file does not hold a base64 32-byte key.
    #[error("{}: not a private key ({source}); it must hold one base64 key as `wg genkey` writes it{hint}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: KeyError,
        /// Extra advice.
        hint: &'static str,
    },
    /// The key file's public key is not the one the policy lists for this gateway and tenant.
    #[error(
        "{}: its public key {found} differs from gateways.toml's gateway \"{gateway}\".keys.{tenant} = \"{expected}\"; \
         put the matching private key there, or (if this file is the right one) set keys.{tenant} = \"{found}\" in gateways.toml",
        path.display()
    )]
    Mismatch {
        /// The gateway.
        gateway: String,
        /// The tenant.
        tenant: String,
        /// The file.
        path: PathBuf,
        /// Public key of the file's private key (base64).
        found: String,
        /// Public key in the policy (base64).
        expected: String,
    },
    /// The policy lists no key of this gateway for a tenant it serves.
    #[error(
        "gateways.toml has no key for tenant \"{tenant}\" on gateway \"{gateway}\"; add {tenant} = \"<public key>\" to its keys \
         (`corridor keys generate` prints it)"
    )]
    NotInPolicy {
        /// The gateway.
        gateway: String,
        /// The tenant.
        tenant: String,
    },
    /// The gateway is not in the policy.
    #[error("no gateway \"{name}\" in the policy (gateways: {known})")]
    UnknownGateway {
        /// The name asked for.
        name: String,
        /// The gateways there are, comma-separated.
        known: String,
    },
}

/// Where a tenant's key lives in a key directory.
pub fn key_path(dir: &Path, tenant: &str) -> PathBuf {
    dir.join(format!("{tenant}.key"))
}

fn io_err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> KeyDirError + 'p {
    move |source| KeyDirError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads one key file; warns when group or others may read it.
pub fn read_key_file(path: &Path) -> Result<SecretKey, KeyDirError> {
    let meta = fs::metadata(path).map_err(io_err("cannot read", path))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", mode & 0o777),
            "private key file is accessible by group or others; run chmod 600 on it"
        );
    }
    let text = fs::read_to_string(path).map_err(io_err("cannot read", path))?;
    SecretKey::from_base64(&text).map_err(|source| KeyDirError::Invalid {
        path: path.to_path_buf(),
        source,
        hint: "",
    })
}

/// Loads the keys of `tenants` from `dir` for `gateway`, checking each against the public key
/// the policy lists for this gateway and tenant.
pub fn load_key_dir(
    dir: &Path,
    gateway: &Gateway,
    tenants: &[&str],
) -> Result<TenantKeys, KeyDirError> {
    let mut keys = TenantKeys::new();
    for &tenant in tenants {
        let path = key_path(dir, tenant);
        if !path.exists() {
            return Err(KeyDirError::Missing {
                tenant: tenant.to_owned(),
                path,
                dir: dir.to_path_buf(),
            });
        }
        let key = read_key_file(&path)?;
        let Some(expected) = gateway.keys.get(tenant) else {
            return Err(KeyDirError::NotInPolicy {
                gateway: gateway.name.clone(),
                tenant: tenant.to_owned(),
            });
        };
        let found = key.public_key();
        if &found != expected {
            return Err(KeyDirError::Mismatch {
                gateway: gateway.name.clone(),
                tenant: tenant.to_owned(),
                path,
                found: encode_key(&found),
                expected: encode_key(expected),
            });
        }
        keys.insert(tenant, key);
    }
    Ok(keys)
}

/// Loads the keys of every tenant `gateway` serves in `policy` from `dir`.
pub fn load_gateway_keys(
    dir: &Path,
    policy: &Policy,
    gateway: &str,
) -> Result<TenantKeys, KeyDirError> {
    let gw = find_gateway(policy, gateway)?;
    let tenants: Vec<&str> = policy
        .served_tenants(gateway)
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    load_key_dir(dir, gw, &tenants)
}

fn find_gateway<'p>(policy: &'p Policy, name: &str) -> Result<&'p Gateway, KeyDirError> {
    policy
        .gateway(name)
        .ok_or_else(|| KeyDirError::UnknownGateway {
            name: name.to_owned(),
            known: policy
                .gateways
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// What happened to one tenant's key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// A new key was written.
    Created,
    /// A valid key was already there and was kept.
    Kept,
    /// A key was there and was replaced (`force`).
    Replaced,
}

/// One tenant's key file after [`generate_key_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// The tenant.
    pub tenant: String,
    /// The file.
    pub path: PathBuf,
    /// The public key of the key in the file.
    pub public_key: [u8; 32],
    /// What was done.
    pub outcome: KeyOutcome,
}

/// Creates `dir` (mode 0700) and a private key file (mode 0600 from creation on) per tenant.
/// Existing valid keys are kept unless `force`; an existing invalid key file is an error
/// unless `force`.
pub fn generate_key_dir(
    dir: &Path,
    tenants: &[&str],
    force: bool,
) -> Result<Vec<KeyFile>, KeyDirError> {
    match fs::metadata(dir) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %dir.display(),
                    mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                    "key directory is accessible by group or others; run chmod 700 on it"
                );
            }
        }
        Err(_) => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("cannot create directory", dir))?,
    }
    let mut out = Vec::new();
    for &tenant in tenants {
        let path = key_path(dir, tenant);
        let existed = path.exists();
        if existed && !force {
            let key = read_key_file(&path).map_err(|e| match e {
                KeyDirError::Invalid { path, source, .. } => KeyDirError::Invalid {
                    path,
                    source,
                    hint: "; use --force to replace it with a new key",
                },
                other => other,
            })?;
            out.push(KeyFile {
                tenant: tenant.to_owned(),
                path,
                public_key: key.public_key(),
                outcome: KeyOutcome::Kept,
            });
            continue;
        }
        let key = SecretKey::generate();
        write_key_file(&path, &key)?;
        out.push(KeyFile {
            tenant: tenant.to_owned(),
            path,
            public_key: key.public_key(),
            outcome: if existed {
                KeyOutcome::Replaced
            } else {
                KeyOutcome::Created
            },
        });
    }
    Ok(out)
}

/// Writes a key file atomically: a temporary file created with mode 0600 (never readable by
/// anyone else, not even briefly), then renamed over `path`.
pub fn write_key_file(path: &Path, key: &SecretKey) -> Result<(), KeyDirError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot remove stale temporary file", &tmp)(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("cannot create", &tmp))?;
    let mut text = key.to_base64();
    text.push('\n');
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    zeroize::Zeroize::zeroize(&mut text);
    written.map_err(io_err("cannot write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("cannot rename into place", path))
}

/// The `keys = { ... }` line for gateways.toml.
pub fn keys_toml_line<'a>(keys: impl IntoIterator<Item = (&'a str, &'a [u8; 32])>) -> String {
    struct Line<'a>(Vec<(&'a str, &'a [u8; 32])>);
    impl fmt::Display for Line<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("keys = {")?;
            for (i, (tenant, key)) in self.0.iter().enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                write!(f, "{sep}{tenant} = \"{}\"", encode_key(key))?;
            }
            f.write_str(" }")
        }
    }
    Line(keys.into_iter().collect()).to_string()
}
