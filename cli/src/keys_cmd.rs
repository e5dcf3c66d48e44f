//! `corridor keys ...`: a gateway's per-tenant WireGuard keys.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use controlplane::keys::{KeyOutcome, generate_key_dir, keys_toml_line};

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a private key per tenant the gateway serves and print the public keys in the form
    /// gateways.toml takes. Run it on the gateway: private keys never leave it.
    Generate {
        /// The policy directory (keys may still be missing from it).
        #[arg(long)]
        policy: PathBuf,
        /// The gateway the keys are for.
        #[arg(long)]
        gateway: String,
        /// The key directory to create (mode 0700); one <tenant>.key (mode 0600) per tenant.
        #[arg(long)]
        out: PathBuf,
        /// Replace existing keys (their public keys in gateways.toml then need updating).
        #[arg(long)]
        force: bool,
    },
    /// Make an operator key (ed25519, 0600) for `corridor policy apply`; prints the public key
    /// to list in the controller's `operators`.
    Operator {
        /// The key file to create.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
}

pub(crate) fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Generate {
            policy,
            gateway,
            out,
            force,
        } => generate(&policy, &gateway, &out, force),
        KeysCommand::Operator { out, force } => operator(&out, force),
    }
}

#[expect(clippy::print_stdout, reason = "the keys line is the command's output")]
fn generate(policy_dir: &Path, gateway: &str, out: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let Some(policy) = crate::policy_cmd::load_reporting(policy_dir, true) else {
        return Ok(ExitCode::FAILURE);
    };
    if policy.gateway(gateway).is_none() {
        let known: Vec<&str> = policy.gateways.iter().map(|g| g.name.as_str()).collect();
        bail!(
            "no gateway \"{gateway}\" in {} (gateways: {}); check the name",
            policy_dir
                .join(controlplane::policy::GATEWAYS_FILE)
                .display(),
            known.join(", ")
        );
    }
    let tenants: Vec<&str> = policy
        .served_tenants(gateway)
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    if tenants.is_empty() {
        bail!(
            "gateway \"{gateway}\" serves no tenant (no endpoint has gateway = \"{gateway}\"); nothing to generate"
        );
    }
    let files = generate_key_dir(out, &tenants, force)?;
    for f in &files {
        let what = match f.outcome {
            KeyOutcome::Created => "created",
            KeyOutcome::Kept => "kept existing key (use --force to replace it)",
            KeyOutcome::Replaced => "replaced",
        };
        eprintln!("{}: {what}", f.path.display());
    }
    println!(
        "{}",
        keys_toml_line(files.iter().map(|f| (f.tenant.as_str(), &f.public_key)))
    );
    Ok(ExitCode::SUCCESS)
}

#[expect(
    clippy::print_stdout,
    reason = "the public key is the command's output"
)]
fn operator(out: &Path, force: bool) -> anyhow::Result<ExitCode> {
    if out.exists() && !force {
        bail!(
            "{} exists; use it, or pass --force to replace it (then update `operators` in the \
             controller config)",
            out.display()
        );
    }
    let key = controlplane::identity::SigningIdentity::generate();
    key.save(out)?;
    eprintln!(
        "created {} (mode 0600); add this public key to `operators` in the controller config:",
        out.display()
    );
    println!("{}", dataplane::config::encode_key(&key.public()));
    Ok(ExitCode::SUCCESS)
}
