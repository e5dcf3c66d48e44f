//! `corridor policy ...`: check policy files, show what a gateway gets.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use controlplane::policy::{EndpointKind, Policy, PolicyErrors};
use dataplane::config::{Location, encode_key};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Validate a policy directory (gateways.toml + tenants/*.toml); report every error.
    Check {
        /// The policy directory.
        dir: PathBuf,
    },
    /// Show what one gateway gets from a policy: tenants, peers, endpoints, rules.
    Compile {
        /// The policy directory.
        dir: PathBuf,
        /// The gateway to compile for.
        #[arg(long)]
        gateway: String,
        /// The gateway's key directory (<tenant>.key files).
        #[arg(long)]
        keys: PathBuf,
    },
    /// Validate a policy directory, then upload it to a controller (signed with an operator key).
    Apply {
        /// The policy directory.
        dir: PathBuf,
        /// The controller, https://HOST:PORT.
        #[arg(long)]
        controller: String,
        /// The controller's key fingerprint (`corridor controller init` printed it).
        #[arg(long)]
        fingerprint: String,
        /// The operator key file (`corridor keys operator --out FILE`).
        #[arg(long)]
        operator_key: PathBuf,
    },
}

pub(crate) fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { dir } => check(&dir),
        PolicyCommand::Compile { dir, gateway, keys } => compile(&dir, &gateway, &keys),
        PolicyCommand::Apply {
            dir,
            controller,
            fingerprint,
            operator_key,
        } => apply(&dir, &controller, &fingerprint, &operator_key),
    }
}

/// Prints a policy's errors and warnings to stderr, with a count line.
pub(crate) fn report_errors(errors: &PolicyErrors) {
    let mut all: Vec<_> = errors.warnings.iter().chain(&errors.errors).collect();
    all.sort_by(|a, b| (&a.file, a.position).cmp(&(&b.file, b.position)));
    for d in all {
        eprintln!("{d}");
    }
    let n = errors.errors.len();
    let w = errors.warnings.len();
    eprintln!(
        "policy invalid: {n} error{}{}",
        plural(n),
        if w > 0 {
            format!(", {w} warning{}", plural(w))
        } else {
            String::new()
        }
    );
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Loads a policy, printing what is wrong with it; `None` when invalid.
pub(crate) fn load_reporting(dir: &Path, lenient: bool) -> Option<Policy> {
    let loaded = if lenient {
        Policy::load_lenient(dir)
    } else {
        Policy::load(dir)
    };
    match loaded {
        Ok(policy) => {
            for w in &policy.warnings {
                eprintln!("{w}");
            }
            Some(policy)
        }
        Err(errors) => {
            report_errors(&errors);
            None
        }
    }
}

#[expect(clippy::print_stdout, reason = "the summary is the command's output")]
fn check(dir: &Path) -> anyhow::Result<ExitCode> {
    let Some(policy) = load_reporting(dir, false) else {
        return Ok(ExitCode::FAILURE);
    };
    let (g, t, e, r) = (
        policy.gateways.len(),
        policy.tenants.len(),
        policy.endpoint_count(),
        policy.rule_count(),
    );
    println!(
        "policy OK: {g} gateway{}, {t} tenant{}, {e} endpoint{}, {r} rule{}",
        plural(g),
        plural(t),
        plural(e),
        plural(r)
    );
    Ok(ExitCode::SUCCESS)
}

#[expect(clippy::print_stdout, reason = "the summary is the command's output")]
fn compile(dir: &Path, gateway: &str, keys: &Path) -> anyhow::Result<ExitCode> {
    let Some(policy) = load_reporting(dir, false) else {
        return Ok(ExitCode::FAILURE);
    };
    let keys = controlplane::keys::load_gateway_keys(keys, &policy, gateway)?;
    let plan = controlplane::compile_gateway(&policy, gateway, &keys)
        .with_context(|| format!("compiling the policy for gateway \"{gateway}\""))?;
    println!("gateway {gateway}: {} tenant(s)", plan.engine.tenants.len());
    for t in &plan.engine.tenants {
        println!();
        println!(
            "tenant {} (public key {}, conntrack limit {})",
            t.name,
            encode_key(&t.private_key.public_key()),
            t.conntrack_limit
        );
        println!("  peers:");
        for p in &t.peers {
            let endpoint = p
                .endpoint
                .map_or_else(|| "dials in".to_owned(), |a| a.to_string());
            let keepalive = p
                .persistent_keepalive
                .map_or_else(|| "no keepalive".to_owned(), |k| format!("keepalive {k}s"));
            let roaming = if p.roaming { "roaming" } else { "pinned" };
            println!(
                "    {} key {} at {endpoint}, {keepalive}, {roaming}",
                p.name,
                encode_key(&p.public_key)
            );
        }
        println!("  endpoints:");
        for e in &t.endpoints {
            let prefixes: Vec<String> = e.prefixes.iter().map(ToString::to_string).collect();
            let at = match e.location {
                Location::Local => {
                    let netns = policy
                        .tenant(&t.name)
                        .and_then(|pt| pt.endpoint(&e.name))
                        .and_then(|pe| match &pe.kind {
                            EndpointKind::Gateway { netns, .. } => Some(netns.as_str()),
                            EndpointKind::WireGuard(_) => None,
                        })
                        .unwrap_or("?");
                    format!("local, netns {netns}")
                }
                Location::Peer(i) => format!(
                    "via peer {}",
                    t.peers.get(i).map_or("?", |p| p.name.as_str())
                ),
            };
            println!("    {} [{}] {at}", e.name, prefixes.join(", "));
        }
        println!("  rules:");
        for r in &t.rules {
            let name = |i: usize| t.endpoints.get(i).map_or("?", |e| e.name.as_str());
            let ports = if r.ports.is_empty() {
                String::new()
            } else {
                let p: Vec<String> = r
                    .ports
                    .iter()
                    .map(|p| {
                        if p.start == p.end {
                            p.start.to_string()
                        } else {
                            format!("{}-{}", p.start, p.end)
                        }
                    })
                    .collect();
                format!(" ports {}", p.join(","))
            };
            println!(
                "    {} -> {} {}{ports}",
                name(r.from),
                name(r.to),
                r.protocol
            );
        }
    }
    for i in &plan.interfaces {
        let routes: Vec<String> = i.routes.iter().map(ToString::to_string).collect();
        let addrs: Vec<String> = i.addresses.iter().map(ToString::to_string).collect();
        println!();
        println!(
            "interface {}/{} {} in netns {}: addresses {}, routes {}",
            i.tenant,
            i.endpoint,
            i.interface,
            i.netns,
            addrs.join(", "),
            routes.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `policy apply`: validate locally as `policy check` does (gateway keys may be missing: the
/// controller takes them from its registry), then `PUT /v1/policy`.
#[expect(
    clippy::print_stdout,
    reason = "the controller's summary is the command's output"
)]
fn apply(
    dir: &Path,
    controller: &str,
    fingerprint: &str,
    operator_key: &Path,
) -> anyhow::Result<ExitCode> {
    use controlplane::client::{Client, Signer};
    use controlplane::controller::api::{PolicyResponse, PolicyUpload};

    if controlplane::client::parse_fingerprint(fingerprint).is_none() {
        anyhow::bail!(
            "--fingerprint {fingerprint:?} is not a key fingerprint: give the ed25519:... text \
             that `corridor controller init` printed"
        );
    }
    let operator = controlplane::identity::SigningIdentity::load(operator_key)
        .context("reading the operator key")?;
    let sources = controlplane::policy::PolicySources::read(dir);
    if load_reporting(dir, true).is_none() {
        return Ok(ExitCode::FAILURE);
    }
    let files = controlplane::controller::bundles::files_from_sources(&sources)
        .with_context(|| format!("reading {}", dir.display()))?;
    let client = Client::new(
        vec![controller.to_owned()],
        controlplane::controller::tls::Pin::Fingerprint(fingerprint.to_owned()),
    )?;
    let body = serde_json::to_vec(&PolicyUpload { files })?;
    let resp = client
        .blocking_request(
            "PUT",
            "/v1/policy",
            Some(body),
            Signer::Operator(&operator),
            std::time::Duration::from_secs(60),
        )
        .map_err(|e| match e {
            controlplane::client::ClientError::PinMismatch { url, detail } => anyhow::anyhow!(
                "the controller at {url} is not the one pinned ({detail}); check --fingerprint \
                 against `corridor controller status` on the controller host"
            ),
            e => e.into(),
        })?;
    if resp.status == 422 {
        eprintln!("{}", resp.message());
        eprintln!("the controller refused the policy (HTTP 422); the stored policy stays");
        return Ok(ExitCode::FAILURE);
    }
    let answer: PolicyResponse = resp.json()?;
    println!(
        "{} (stored at revision {})",
        answer.summary, answer.revision
    );
    Ok(ExitCode::SUCCESS)
}
