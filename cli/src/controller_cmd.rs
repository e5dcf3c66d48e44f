//! `corridor controller ...`: set up and run the controller, and administer its store (tokens,
//! rotation, revocation) from the controller host.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use controlplane::controller::ControllerConfig;
use controlplane::identity::SigningIdentity;
use controlplane::store::Store;
use controlplane::token::Token;

#[derive(Debug, Subcommand)]
pub(crate) enum ControllerCommand {
    /// Create the controller's key (if absent) and its store; print the key's fingerprint.
    Init {
        /// The controller's configuration file.
        #[arg(long, default_value = controlplane::controller::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Serve the API until SIGTERM or SIGINT.
    Run {
        /// The controller's configuration file.
        #[arg(long, default_value = controlplane::controller::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Issue a one-time enrollment token for a gateway (printed alone on stdout).
    Token {
        /// The controller's configuration file.
        #[arg(long, default_value = controlplane::controller::config::DEFAULT_PATH)]
        config: PathBuf,
        /// The gateway (its name in gateways.toml).
        #[arg(long)]
        gateway: String,
        /// How long the token is valid: seconds, or a number with s, m, h or d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Ask gateways to make new tenant keys (at their next bundle).
    Rotate {
        /// The controller's configuration file.
        #[arg(long, default_value = controlplane::controller::config::DEFAULT_PATH)]
        config: PathBuf,
        /// The gateway.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        gateway: Option<String>,
        /// Every gateway.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a gateway: its requests are refused and its peers drop it at their next bundle.
    Revoke {
        /// The controller's configuration file.
        #[arg(long, default_value = controlplane::controller::config::DEFAULT_PATH)]
        config: PathBuf,
        /// The gateway.
        #[arg(long)]
        gateway: String,
    },
    /// Show the store: revision, policy, gateways (enrolled, revoked, keys).
    Status {
        /// The controller's configuration file.
        #[arg(long, default_value = controlplane::controller::config::DEFAULT_PATH)]
        config: PathBuf,
    },
}

/// Each connected gateway holds a socket open in a long-poll: a fleet of 1,000 needs more than
/// the usual soft limit of 1,024 files. Raise the soft limit to the hard one (what the service
/// manager allows), as servers commonly do.
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        // An unlimited hard limit is above what the kernel takes (fs.nr_open): cap it.
        Ok((soft, hard)) if soft < hard.min(1 << 20) => {
            match setrlimit(Resource::RLIMIT_NOFILE, hard.min(1 << 20), hard) {
                Ok(()) => tracing::debug!(
                    from = soft,
                    to = hard.min(1 << 20),
                    "open-files limit raised"
                ),
                Err(e) => {
                    tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit")
                }
            }
        }
        Ok((soft, _)) if soft < 4096 => tracing::warn!(
            soft,
            "the open-files limit is low for a controller of many gateways (each long-poll \
             holds a socket): raise it (LimitNOFILE= in a systemd unit, ulimit -n)"
        ),
        _ => {}
    }
}

pub(crate) fn run(cmd: ControllerCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ControllerCommand::Init { config } => init(&config),
        ControllerCommand::Run { config } => {
            let cfg = load(&config)?;
            raise_open_files();
            controlplane::controller::run(cfg).context("running the controller")?;
            Ok(ExitCode::SUCCESS)
        }
        ControllerCommand::Token {
            config,
            gateway,
            ttl,
        } => token(&config, &gateway, &ttl),
        ControllerCommand::Rotate {
            config,
            gateway,
            all,
        } => {
            let (_, store) = open_store(&config)?;
            let target = if all { None } else { gateway.as_deref() };
            let revision = store.request_rotation(target)?;
            eprintln!(
                "rotation requested for {} (revision {revision}); gateways make new keys at their \
                 next bundle",
                target.unwrap_or("every gateway")
            );
            Ok(ExitCode::SUCCESS)
        }
        ControllerCommand::Revoke { config, gateway } => {
            let (_, store) = open_store(&config)?;
            let revision = store.revoke(&gateway, now())?;
            eprintln!(
                "gateway {gateway} revoked (revision {revision}); its peers drop it at their next \
                 bundle; to bring it back, enroll it again with a new token"
            );
            Ok(ExitCode::SUCCESS)
        }
        ControllerCommand::Status { config } => status(&config),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn load(path: &Path) -> anyhow::Result<ControllerConfig> {
    Ok(ControllerConfig::load(path)?)
}

fn open_store(path: &Path) -> anyhow::Result<(ControllerConfig, Box<dyn Store>)> {
    let cfg = load(path)?;
    let url = cfg.store_url();
    let store = controlplane::store::open(&url)
        .with_context(|| format!("opening the store {url} (run `corridor controller init`?)"))?;
    Ok((cfg, store))
}

#[expect(
    clippy::print_stdout,
    reason = "the fingerprint is the command's output"
)]
fn init(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let key = cfg.key_path();
    let identity = if key.exists() {
        let id = SigningIdentity::load(&key)?;
        eprintln!("using the existing key {}", key.display());
        id
    } else {
        let id = SigningIdentity::generate();
        id.save(&key)?;
        eprintln!("created the controller key {} (mode 0600)", key.display());
        id
    };
    let url = cfg.store_url();
    let store =
        controlplane::store::open(&url).with_context(|| format!("creating the store {url}"))?;
    let revision = store.revision()?;
    eprintln!("store {url} ready (revision {revision})");
    eprintln!("the controller's fingerprint (gateways and operators pin it):");
    println!("{}", identity.fingerprint());
    Ok(ExitCode::SUCCESS)
}

/// `90`, `90s`, `15m`, `1h`, `7d` → seconds.
fn parse_ttl(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t, 's'),
    };
    let n: u64 = num.parse().ok().filter(|n| *n > 0).with_context(|| {
        format!("--ttl {text:?}: give a positive number with s, m, h or d, e.g. 1h")
    })?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => bail!("--ttl {text:?}: the unit must be s, m, h or d"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("--ttl {text:?} is too long"))
}

#[expect(clippy::print_stdout, reason = "the token is the command's output")]
fn token(path: &Path, gateway: &str, ttl: &str) -> anyhow::Result<ExitCode> {
    let ttl = parse_ttl(ttl)?;
    let (cfg, store) = open_store(path)?;
    let identity = SigningIdentity::load(&cfg.key_path())?;
    let (token, record) = Token::issue(gateway, ttl, now(), &identity.fingerprint());
    store.add_token(&record)?;
    if let Some(policy) = store.snapshot()?.policy
        && !policy.gateways.contains(&format!("\"{gateway}\""))
    {
        eprintln!("note: the stored policy does not seem to name gateway {gateway:?} (yet)");
    }
    println!("{}", token.encode());
    eprintln!(
        "on gateway {gateway}, within {ttl} s: corridor gateway enroll --token <the token above> \
         --controller https://<this host>:{}",
        cfg.listen.port()
    );
    Ok(ExitCode::SUCCESS)
}

#[expect(clippy::print_stdout, reason = "the status is the command's output")]
fn status(path: &Path) -> anyhow::Result<ExitCode> {
    let (cfg, store) = open_store(path)?;
    let snapshot = store.snapshot()?;
    if let Ok(id) = SigningIdentity::load(&cfg.key_path()) {
        println!("controller {}", id.fingerprint());
    }
    println!(
        "store {} at revision {}",
        cfg.store_url(),
        snapshot.revision
    );
    match &snapshot.policy {
        None => println!("policy: none stored yet"),
        Some(files) => match controlplane::controller::bundles::validate(files) {
            Ok(p) => println!(
                "policy: {} gateway(s), {} tenant(s)",
                p.gateways.len(),
                p.tenants.len()
            ),
            Err(e) => println!("policy: stored but invalid ({} error(s))", e.errors.len()),
        },
    }
    if snapshot.gateways.is_empty() {
        println!("gateways: none enrolled");
    }
    for g in &snapshot.gateways {
        let state = match g.revoked_at {
            Some(t) => format!("revoked at {t}"),
            None => format!("enrolled at {}", g.enrolled_at),
        };
        let keys: Vec<&str> = g.tenant_keys.keys().map(String::as_str).collect();
        println!(
            "gateway {}: {state}, keys for [{}] (generation {}, rotation requested {})",
            g.name,
            keys.join(", "),
            g.key_generation,
            g.rotate_requested
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert_eq!(parse_ttl("15m").unwrap(), 900);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("2d").unwrap(), 172_800);
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
