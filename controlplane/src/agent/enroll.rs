//! `corridor gateway enroll`: redeem a one-time token with the controller, register this
//! gateway's keys (made here; private keys never leave the gateway) and write the gateway
//! configuration's `[controller]` table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::{CONTROL_KEY, SEAL_KEY, plan, state, unix_now};
use crate::client::{Client, ClientError, REQUEST_TIMEOUT, Signer};
use crate::controller::api::{EnrollRequest, EnrollResponse, KeysRequest, KeysResponse};
use crate::controller::tls::Pin;
use crate::gateway_config::{DEFAULT_LISTEN, DEFAULT_STATE_DIR, GatewayConfig};
use crate::identity::{SealKey, SigningIdentity};
use crate::token::Token;

/// Where the key directory is when neither `--key-dir` nor the configuration says.
pub const DEFAULT_KEY_DIR: &str = "/etc/corridor/keys";

/// What `corridor gateway enroll` was asked.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// The controller's URL (`https://HOST:PORT`).
    pub controller: String,
    /// The token's text.
    pub token: String,
    /// The gateway configuration file to write or update.
    pub config: PathBuf,
    /// The key directory (default: the configuration's, or [`DEFAULT_KEY_DIR`]).
    pub key_dir: Option<PathBuf>,
    /// The WAN address for a new configuration.
    pub listen: Option<SocketAddr>,
    /// The state directory for the `[controller]` table (default [`DEFAULT_STATE_DIR`]).
    pub state_dir: Option<PathBuf>,
    /// Replace existing control.key and seal.key.
    pub force: bool,
}

/// What enrollment did.
#[derive(Debug, Clone)]
pub struct EnrollOutcome {
    /// The gateway's name.
    pub gateway: String,
    /// The tenants it serves (a key registered for each).
    pub tenants: Vec<String>,
    /// The key directory.
    pub key_dir: PathBuf,
    /// The configuration file.
    pub config: PathBuf,
    /// Whether the configuration was created (else updated).
    pub created_config: bool,
    /// Whether control.key and seal.key were made now (else reused).
    pub made_identity: bool,
    /// The controller's fingerprint (pinned).
    pub fingerprint: String,
    /// The controller's revision after the keys were registered.
    pub revision: u64,
}

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token cannot be read, or has expired.
    #[error("{0}")]
    Token(String),
    /// The configuration file cannot be used.
    #[error("{0}")]
    Config(String),
    /// Keys could not be read or written.
    #[error("{0}")]
    Keys(String),
    /// The controller refused (401/403/410 ...): its message.
    #[error("the controller refused the enrollment: {message} (HTTP {status})")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The controller's message.
        message: String,
    },
    /// The controller could not be reached or answered strangely.
    #[error("{0}")]
    Client(ClientError),
}

impl From<ClientError> for EnrollError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Status {
                status, message, ..
            } => EnrollError::Refused { status, message },
            other => EnrollError::Client(other),
        }
    }
}

/// Enrolls this gateway (see the module doc). Blocking: it runs its own I/O runtime.
pub fn enroll(opts: &EnrollOptions) -> Result<EnrollOutcome, EnrollError> {
    let token = Token::decode(&opts.token).map_err(|e| EnrollError::Token(e.to_string()))?;
    if token.expires_at <= unix_now() {
        return Err(EnrollError::Token(format!(
            "the token for gateway \"{}\" has expired; ask the operator for a new one (`corridor controller token --gateway {}`)",
            token.gateway, token.gateway
        )));
    }
    let existing = if opts.config.exists() {
        let c =
            GatewayConfig::load(&opts.config).map_err(|e| EnrollError::Config(e.to_string()))?;
        if c.name != token.gateway {
            return Err(EnrollError::Config(format!(
                "{}: name = \"{}\", but the token enrolls gateway \"{}\"; use the token of this gateway, or another --config",
                opts.config.display(),
                c.name,
                token.gateway
            )));
        }
        if c.policy.is_some() {
            return Err(EnrollError::Config(format!(
                "{}: this gateway runs standalone (`policy` is set); remove `policy` from it to put it under the controller, then enroll again",
                opts.config.display()
            )));
        }
        Some(c)
    } else {
        None
    };
    let key_dir = opts
        .key_dir
        .clone()
        .or_else(|| existing.as_ref().map(|c| c.key_dir.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_DIR));
    let state_dir_written = opts.state_dir.clone().or_else(|| {
        existing
            .as_ref()
            .and_then(|c| c.controller.as_ref())
            .map(|c| c.state_dir.clone())
    });

    // The control-channel keys.
    let control_path = key_dir.join(CONTROL_KEY);
    let seal_path = key_dir.join(SEAL_KEY);
    let keys_err = |e: crate::identity::IdentityError| EnrollError::Keys(e.to_string());
    let made_identity = opts.force || !control_path.exists() || !seal_path.exists();
    let (identity, seal) = if made_identity {
        if !opts.force && (control_path.exists() || seal_path.exists()) {
            return Err(EnrollError::Keys(format!(
                "{} has only one of {CONTROL_KEY} and {SEAL_KEY}; use --force to make both anew",
                key_dir.display()
            )));
        }
        let identity = SigningIdentity::generate();
        let seal = SealKey::generate();
        identity.save(&control_path).map_err(keys_err)?;
        seal.save(&seal_path).map_err(keys_err)?;
        (identity, seal)
    } else {
        (
            SigningIdentity::load(&control_path).map_err(keys_err)?,
            SealKey::load(&seal_path).map_err(keys_err)?,
        )
    };

    let client = Client::new(
        vec![opts.controller.clone()],
        Pin::Fingerprint(token.controller.clone()),
    )?;
    let b64 = |k: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
    let req = EnrollRequest {
        token: opts.token.trim().to_owned(),
        gateway: token.gateway.clone(),
        signing_key: b64(&identity.public()),
        seal_key: b64(&seal.public()),
    };
    let body = serde_json::to_vec(&req).map_err(|e| EnrollError::Config(e.to_string()))?;
    let answer: EnrollResponse = client
        .blocking_request(
            "POST",
            "/v1/enroll",
            Some(body),
            Signer::None,
            REQUEST_TIMEOUT,
        )?
        .json()?;

    // One WireGuard key per tenant, made here; the public halves go to the controller.
    let mut tenant_keys = std::collections::BTreeMap::new();
    for tenant in &answer.tenants {
        let key = plan::current_or_new(&key_dir, tenant).map_err(EnrollError::Keys)?;
        tenant_keys.insert(tenant.clone(), b64(&key.public_key()));
    }
    let mut revision = answer.revision;
    if !tenant_keys.is_empty() {
        let body = serde_json::to_vec(&KeysRequest { tenant_keys })
            .map_err(|e| EnrollError::Config(e.to_string()))?;
        let keys: KeysResponse = client
            .blocking_request(
                "POST",
                "/v1/keys",
                Some(body),
                Signer::Gateway(&token.gateway, &identity),
                REQUEST_TIMEOUT,
            )?
            .json()?;
        revision = keys.revision;
    }

    // The controller's key, as its certificate showed it (it matched the token's fingerprint).
    let state_dir = state_dir_written
        .clone()
        .map(|d| resolve(&opts.config, &d))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    if let Some(key) = client.controller_key() {
        if let Err(e) = state::save_controller_key(&state_dir, &key) {
            tracing::warn!("{e} (the gateway learns the key again at its first contact)");
        }
    }

    let section = controller_section(
        &opts.controller,
        &token.controller,
        state_dir_written.as_deref(),
    );
    let created_config = existing.is_none();
    let text = match &existing {
        None => format!(
            "# corridor gateway configuration, written by `corridor gateway enroll`.\n\
             name = \"{}\"\nkey-dir = {}\nlisten = \"{}\"\n\n{section}",
            token.gateway,
            toml_string(&key_dir.display().to_string()),
            opts.listen
                .map_or_else(|| DEFAULT_LISTEN.to_owned(), |a| a.to_string()),
        ),
        Some(_) => {
            let old = std::fs::read_to_string(&opts.config)
                .map_err(|e| EnrollError::Config(format!("{}: {e}", opts.config.display())))?;
            replace_controller_section(&old, &section)
        }
    };
    if let Some(dir) = opts.config.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| EnrollError::Config(format!("{}: {e}", dir.display())))?;
    }
    let mut tmp = opts.config.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &opts.config))
        .map_err(|e| EnrollError::Config(format!("{}: {e}", opts.config.display())))?;
    // What was written must load.
    GatewayConfig::load(&opts.config).map_err(|e| EnrollError::Config(e.to_string()))?;
    Ok(EnrollOutcome {
        gateway: token.gateway,
        tenants: answer.tenants,
        key_dir,
        config: opts.config.clone(),
        created_config,
        made_identity,
        fingerprint: token.controller,
        revision,
    })
}

/// A path from the command line is taken as given; only for writing controller.pub does a
/// relative state-dir resolve against the configuration's directory (as the gateway will).
fn resolve(config: &Path, dir: &Path) -> PathBuf {
    config.parent().unwrap_or(Path::new(".")).join(dir)
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn controller_section(url: &str, fingerprint: &str, state_dir: Option<&Path>) -> String {
    let mut s = format!(
        "# The controller this gateway enrolled with (`corridor gateway enroll`); its key is pinned.\n\
         [controller]\nurls = [{}]\nfingerprint = {}\n",
        toml_string(url),
        toml_string(fingerprint)
    );
    if let Some(d) = state_dir {
        s.push_str(&format!(
            "state-dir = {}\n",
            toml_string(&d.display().to_string())
        ));
    }
    s
}

/// Removes an existing `[controller]` table (to the next table header or the end) and appends
/// `section`.
fn replace_controller_section(old: &str, section: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in old.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            skipping = t
                .trim_start_matches('[')
                .trim_start()
                .starts_with("controller")
                && t.trim_start_matches('[').trim_start()["controller".len()..]
                    .trim_start()
                    .starts_with(']');
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push('\n');
    out.push_str(section);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_controller_table() {
        let old = "name = \"e\"\nkey-dir = \"k\"\n\n[controller]\nurls = [\"https://a:1\"]\nfingerprint = \"x\"\n";
        let new = replace_controller_section(old, "[controller]\nurls = [\"https://b:1\"]\n");
        assert_eq!(
            new,
            "name = \"e\"\nkey-dir = \"k\"\n\n[controller]\nurls = [\"https://b:1\"]\n"
        );
        let new = replace_controller_section("name = \"e\"\n", "[controller]\n");
        assert_eq!(new, "name = \"e\"\n\n[controller]\n");
    }

    #[test]
    fn toml_strings() {
        assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
