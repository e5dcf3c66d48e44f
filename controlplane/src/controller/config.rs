//! The controller's configuration file (`/etc/corridor/controller.toml` by default).
//!
//! Relative paths (the key, a SQLite store, the policy directory) are taken relative to the
//! file's own directory, so a configuration directory can be moved as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::gateway_config::{field_at, line_col};

/// Where `corridor controller` looks without `--config`.
pub const DEFAULT_PATH: &str = "/etc/corridor/controller.toml";
/// The HTTPS port unless configured.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
/// How long a `GET /v1/bundle` waits for a change, unless configured.
pub const DEFAULT_LONG_POLL_SECS: u64 = 25;

/// A controller's configuration, as written (paths resolved by [`ControllerConfig::load`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ControllerConfig {
    /// Where to serve the API (HTTPS).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The store: `sqlite:PATH` (a relative path is relative to this file) or
    /// `postgres://...` (replicas sharing one database). Default: `sqlite:controller.db` next to
    /// this file.
    #[serde(default)]
    pub store: Option<String>,
    /// The controller's ed25519 key file (0600); gateways pin its fingerprint. Replicas share it.
    /// Default: `controller.key` next to this file.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// A policy directory to serve and watch (checked every second); absent: the policy is
    /// uploaded with `corridor policy apply` (`PUT /v1/policy`).
    #[serde(default)]
    pub policy_dir: Option<PathBuf>,
    /// Base64 ed25519 public keys allowed to upload policies (`corridor keys operator` makes
    /// one).
    #[serde(default)]
    pub operators: Vec<String>,
    /// DNS names and IP addresses put in the TLS certificate (clients pin the key, so these are
    /// for other tools); `localhost` is always added.
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// Seconds a `GET /v1/bundle` waits for a change before answering 204.
    #[serde(default = "default_long_poll")]
    pub long_poll: u64,
    /// A name for this replica in logs.
    #[serde(default)]
    pub replica: Option<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}

fn default_long_poll() -> u64 {
    DEFAULT_LONG_POLL_SECS
}

/// Why a controller configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControllerConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Syntax, an unknown field, or a wrong value.
    #[error("{path}:{line}:{column}: {field}{sep}{message}", sep = if field.is_empty() { "" } else { ": " })]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line (1-based).
        line: usize,
        /// Column (1-based).
        column: usize,
        /// The field the problem is in; empty when it is about the file as a whole.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A value that parses but cannot work.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

impl ControllerConfig {
    /// Reads and checks a configuration file; fills the defaults that depend on its location and
    /// makes relative paths relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ControllerConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ControllerConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base);
        Ok(config)
    }

    /// Makes relative paths relative to `base` and fills `store` and `key`.
    pub fn resolve(&mut self, base: &Path) {
        let key = self.key.take().unwrap_or_else(|| "controller.key".into());
        self.key = Some(base.join(key));
        self.policy_dir = self.policy_dir.take().map(|p| base.join(p));
        let store = self
            .store
            .take()
            .unwrap_or_else(|| "sqlite:controller.db".to_owned());
        self.store = Some(if is_postgres(&store) {
            store
        } else {
            let path = store
                .strip_prefix("sqlite://")
                .or_else(|| store.strip_prefix("sqlite:"))
                .unwrap_or(&store);
            format!("sqlite:{}", base.join(path).display())
        });
    }

    /// Parses and checks configuration text; `path` is only used in messages. Paths stay as
    /// written (see [`ControllerConfig::load`]).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ControllerConfigError> {
        let config: ControllerConfig = toml::from_str(text).map_err(|e| {
            let span = e.span();
            let (line, column) = span
                .as_ref()
                .map(|s| line_col(text, s.start))
                .unwrap_or((1, 1));
            let field = span.and_then(|s| field_at(text, &s)).unwrap_or_default();
            let message = e.message().trim_end();
            let message = match hint(&field) {
                Some(h) if !message.starts_with("unknown field") => format!("{message}; {h}"),
                _ => message.to_owned(),
            };
            ControllerConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                field,
                message,
            }
        })?;
        let invalid = |field, message: String| ControllerConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        for (i, op) in config.operators.iter().enumerate() {
            if decode_key(op).is_none() {
                return Err(invalid(
                    "operators",
                    format!(
                        "entry {} ({op:?}) is not a base64 ed25519 public key; paste the public \
                         key that `corridor keys operator --out FILE` printed",
                        i + 1
                    ),
                ));
            }
        }
        if !(1..=600).contains(&config.long_poll) {
            return Err(invalid(
                "long-poll",
                format!(
                    "{} is out of range: use 1 to 600 seconds (25 suits most NATs and proxies)",
                    config.long_poll
                ),
            ));
        }
        if let Some(store) = &config.store {
            let sqlite = store.starts_with("sqlite:") || !store.contains("://");
            if !is_postgres(store) && !sqlite {
                return Err(invalid(
                    "store",
                    format!(
                        "{store:?} is neither sqlite:PATH nor postgres://USER@HOST/DB; use one \
                         of those"
                    ),
                ));
            }
        }
        if let Some(r) = &config.replica
            && r.trim().is_empty()
        {
            return Err(invalid(
                "replica",
                "is empty: give this replica a name for logs, or leave it out".to_owned(),
            ));
        }
        Ok(config)
    }

    /// The operator keys, decoded (checked by [`ControllerConfig::parse`]).
    pub fn operator_keys(&self) -> Vec<[u8; 32]> {
        self.operators
            .iter()
            .filter_map(|k| decode_key(k))
            .collect()
    }

    /// The store URL (after [`ControllerConfig::load`]: always set).
    pub fn store_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| "sqlite:controller.db".to_owned())
    }

    /// The key file (after [`ControllerConfig::load`]: always set).
    pub fn key_path(&self) -> PathBuf {
        self.key
            .clone()
            .unwrap_or_else(|| PathBuf::from("controller.key"))
    }

    /// A configuration with every default, as if the file were empty and in `dir`.
    pub fn default_in(dir: &Path) -> Self {
        let mut c = ControllerConfig {
            listen: default_listen(),
            store: None,
            key: None,
            policy_dir: None,
            operators: Vec::new(),
            tls_names: Vec::new(),
            long_poll: DEFAULT_LONG_POLL_SECS,
            replica: None,
        };
        c.resolve(dir);
        c
    }
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A base64 32-byte key.
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

/// What a field takes, said after a wrong value.
fn hint(field: &str) -> Option<&'static str> {
    Some(match field {
        "listen" => {
            "give IP:PORT, e.g. \"0.0.0.0:8443\" or \"[::]:8443\" (an address: host names are not resolved)"
        }
        "store" => "give \"sqlite:PATH\" or \"postgres://USER@HOST/DB\"",
        "key" | "policy-dir" => {
            "give a path as a string (a relative path is relative to this file)"
        }
        "operators" => "give a list of base64 ed25519 public keys, e.g. [\"MCowBQ...\"]",
        "tls-names" => "give a list of DNS names or IP addresses, e.g. [\"ctl.example.com\"]",
        "long-poll" => "give a number of seconds, e.g. 25",
        "replica" => "give a name as a string, e.g. \"ctl-a\"",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("controller.toml");
        std::fs::write(&file, "policy-dir = \"policy\"\n").unwrap();
        let c = ControllerConfig::load(&file).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(
            c.store_url(),
            format!("sqlite:{}", dir.path().join("controller.db").display())
        );
        assert_eq!(c.key_path(), dir.path().join("controller.key"));
        assert_eq!(c.policy_dir, Some(dir.path().join("policy")));
        assert_eq!(c.long_poll, 25);
        assert!(c.operators.is_empty());
        assert_eq!(c, {
            let mut d = ControllerConfig::default_in(dir.path());
            d.policy_dir = Some(dir.path().join("policy"));
            d
        });
    }

    #[test]
    fn postgres_url_kept_and_sqlite_path_resolved() {
        let p = Path::new("/etc/corridor/controller.toml");
        let mut c = ControllerConfig::parse("store = \"postgres://ctl@db/corridor\"\n", p).unwrap();
        c.resolve(Path::new("/etc/corridor"));
        assert_eq!(c.store_url(), "postgres://ctl@db/corridor");
        let mut c = ControllerConfig::parse("store = \"sqlite:data/c.db\"\n", p).unwrap();
        c.resolve(Path::new("/etc/corridor"));
        assert_eq!(c.store_url(), "sqlite:/etc/corridor/data/c.db");
        let mut c = ControllerConfig::parse("store = \"sqlite:/var/lib/c.db\"\n", p).unwrap();
        c.resolve(Path::new("/etc/corridor"));
        assert_eq!(c.store_url(), "sqlite:/var/lib/c.db");
    }

    #[test]
    fn errors_name_line_field_and_fix() {
        let p = Path::new("c.toml");
        let e = ControllerConfig::parse("long-poll = 10\nlisten = \"nowhere\"\n", p).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("c.toml:2:"), "{text}");
        assert!(text.contains("listen: "), "{text}");
        assert!(text.contains("IP:PORT"), "{text}");

        let e = ControllerConfig::parse("lisen = \"0.0.0.0:1\"\n", p).unwrap_err();
        assert!(e.to_string().contains("unknown field `lisen`"), "{e}");

        let e = ControllerConfig::parse("operators = [\"abc\"]\n", p).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("operators: entry 1"), "{text}");
        assert!(text.contains("corridor keys operator"), "{text}");

        let e = ControllerConfig::parse("long-poll = 0\n", p).unwrap_err();
        assert!(
            e.to_string().contains("long-poll: 0 is out of range"),
            "{e}"
        );

        let e = ControllerConfig::parse("store = \"mysql://x\"\n", p).unwrap_err();
        assert!(e.to_string().contains("store: "), "{e}");
    }

    #[test]
    fn operators_decode() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let c =
            ControllerConfig::parse(&format!("operators = [\"{key}\"]\n"), Path::new("c")).unwrap();
        assert_eq!(c.operator_keys(), vec![[7u8; 32]]);
    }
}
