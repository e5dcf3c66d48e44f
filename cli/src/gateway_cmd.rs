//! `corridor gateway run`: serve the policy on this host, one interface per local app.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use controlplane::compile::compile_gateway;
use controlplane::gateway_config::{self, DEFAULT_PATH, GatewayConfig};
use controlplane::keys::load_gateway_keys;
use controlplane::policy::Policy;
use dataplane::io::{GatewayPlan, InterfaceSpec, MissingNetns, Runtime, RuntimeConfig};

/// `corridor gateway ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum GatewayCommand {
    /// Run the gateway until SIGTERM (SIGHUP reloads the policy).
    Run {
        /// The gateway's configuration file.
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

pub(crate) fn run(cmd: GatewayCommand) -> Result<ExitCode> {
    match cmd {
        GatewayCommand::Run { config } => run_gateway(&config),
    }
}

/// Capabilities from /proc/self/status: creating TUN devices needs CAP_NET_ADMIN (12),
/// entering other network namespaces CAP_SYS_ADMIN (21), and opening a container process's
/// `/proc/PID/ns/net` CAP_SYS_PTRACE (19).
fn missing_capabilities() -> Vec<&'static str> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    [
        (12, "CAP_NET_ADMIN"),
        (21, "CAP_SYS_ADMIN"),
        (19, "CAP_SYS_PTRACE"),
    ]
    .into_iter()
    .filter(|(bit, _)| eff & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect()
}

/// Reads the policy and keys and compiles what this gateway runs.
pub(crate) fn load_plan(config: &GatewayConfig, policy_dir: &Path) -> Result<GatewayPlan> {
    let policy = Policy::load(policy_dir).map_err(|e| anyhow!("the policy is invalid:\n{e}"))?;
    let keys = load_gateway_keys(&config.key_dir, &policy, &config.name)
        .with_context(|| format!("loading keys from {}", config.key_dir.display()))?;
    let plan = compile_gateway(&policy, &config.name, &keys)?;
    let interfaces = plan
        .interfaces
        .into_iter()
        .map(|i| InterfaceSpec {
            tenant: i.tenant,
            endpoint: i.endpoint,
            netns: i.netns,
            ifname: i.interface,
            mtu: config.mtu,
            addresses: i.addresses,
            routes: i.routes,
        })
        .collect();
    Ok(GatewayPlan {
        engine: plan.engine,
        interfaces,
    })
}

fn run_gateway(config_path: &Path) -> Result<ExitCode> {
    // The configuration's errors first: they are the same whatever the binary.
    let config = GatewayConfig::load(config_path)?;
    if dataplane::VIRTUAL_CLOCK {
        bail!(
            "this corridor binary was built with the test-only virtual clock and cannot run a gateway; build it with `cargo build --release -p corridor`"
        );
    }
    let policy_dir = config.policy.clone().with_context(|| {
        format!(
            "{}: no `policy`: standalone mode needs the policy directory to serve",
            config_path.display()
        )
    })?;
    let mut missing = missing_capabilities();
    if missing.contains(&"CAP_SYS_PTRACE") {
        // Only needed for `netns = "/proc/PID/ns/net"` of another user's process.
        tracing::warn!(
            "without CAP_SYS_PTRACE, endpoints whose netns is a /proc/PID/ns/net path of a container cannot be opened"
        );
        missing.retain(|c| *c != "CAP_SYS_PTRACE");
    }
    if !missing.is_empty() {
        bail!(
            "corridor gateway needs {} to create interfaces in the apps' namespaces: run it as root",
            missing.join(" and ")
        );
    }
    let plan = load_plan(&config, &policy_dir)?;
    let tenants = plan.engine.tenants.len();
    let interfaces = plan.interfaces.len();
    let mut runtime = Runtime::start(
        RuntimeConfig {
            gateway: config.name.clone(),
            listen: config.listen,
            control_socket: Some(config.control_socket.clone()),
            metrics: config.metrics,
            missing_netns: match config.missing_netns {
                gateway_config::MissingNetns::Fail => MissingNetns::Fail,
                gateway_config::MissingNetns::Wait => MissingNetns::Wait,
            },
        },
        plan,
    )?;
    tracing::info!(
        gateway = %config.name,
        tenants,
        interfaces,
        listen = %runtime.local_addr()?,
        control = %config.control_socket.display(),
        metrics = %runtime
            .metrics_addr()
            .map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics")),
        "gateway running"
    );
    let mut reload = || {
        tracing::info!(policy = %policy_dir.display(), "reloading the policy");
        load_plan(&config, &policy_dir).map_err(|e| format!("{e:#}"))
    };
    runtime.run(&mut reload)?;
    drop(runtime);
    tracing::info!("stopped; interfaces removed");
    Ok(ExitCode::SUCCESS)
}
