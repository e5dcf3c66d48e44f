//! `corridor gateway run`: serve the policy (standalone) or the controller's bundles
//! (controller mode) on this host, one interface per local app; `corridor gateway enroll`:
//! join a controller with a one-time token; `corridor gateway apply-bundle`: hand a bundle
//! file to the running gateway (through its state directory's `incoming/`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use controlplane::agent::{self, Agent, AgentConfig, EnrollOptions};
use controlplane::compile::compile_gateway;
use controlplane::gateway_config::{self, DEFAULT_PATH, GatewayConfig, Mode};
use controlplane::keys::load_gateway_keys;
use controlplane::policy::Policy;
use dataplane::io::{GatewayPlan, MissingNetns, Runtime, RuntimeConfig, Workers};

/// `corridor gateway ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum GatewayCommand {
    /// Run the gateway until SIGTERM (SIGHUP reloads the policy).
    Run {
        /// The gateway's configuration file.
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Enroll this gateway with a controller: make its keys, register their public halves,
    /// write the configuration's [controller] table.
    Enroll {
        /// The controller's URL, https://HOST:PORT.
        #[arg(long)]
        controller: String,
        /// The one-time token (`corridor controller token --gateway NAME` printed it).
        #[arg(long)]
        token: String,
        /// The gateway configuration to write (or to add the controller to).
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// The key directory (default: the configuration's key-dir, or /etc/corridor/keys).
        #[arg(long)]
        key_dir: Option<PathBuf>,
        /// The WAN address of a new configuration (default 0.0.0.0:51820).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The state directory (default /var/lib/corridor).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Replace existing control.key and seal.key (the gateway must then be enrolled anew).
        #[arg(long)]
        force: bool,
    },
    /// Hand a bundle file to the running gateway (controller mode): it goes through the same
    /// checks as a bundle from the controller; see `corridor status` for the outcome.
    ApplyBundle {
        /// The bundle file.
        file: PathBuf,
        /// The gateway's configuration file.
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

/// `path` made absolute against the working directory (as given if that fails).
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

pub(crate) fn run(cmd: GatewayCommand) -> Result<ExitCode> {
    match cmd {
        GatewayCommand::Run { config } => run_gateway(&config),
        GatewayCommand::Enroll {
            controller,
            token,
            config,
            key_dir,
            listen,
            state_dir,
            force,
        } => enroll(EnrollOptions {
            controller,
            token,
            config,
            // Written into the configuration, which resolves relative paths against its own
            // directory: a path given relative to where the command ran must not change meaning.
            key_dir: key_dir.map(absolute),
            listen,
            state_dir: state_dir.map(absolute),
            force,
        }),
        GatewayCommand::ApplyBundle { file, config } => apply_bundle(&file, &config),
    }
}

#[expect(
    clippy::print_stdout,
    reason = "what was done and the next command are the command's output"
)]
fn enroll(opts: EnrollOptions) -> Result<ExitCode> {
    let done = match agent::enroll(&opts) {
        Ok(done) => done,
        Err(agent::EnrollError::Refused { status, message }) => {
            eprintln!("corridor: the controller refused the enrollment (HTTP {status}): {message}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "enrolled gateway \"{}\" with the controller {} ({})",
        done.gateway, opts.controller, done.fingerprint
    );
    println!(
        "  control and seal keys: {} in {}",
        if done.made_identity { "made" } else { "kept" },
        done.key_dir.display()
    );
    println!(
        "  tenant keys registered: {}",
        if done.tenants.is_empty() {
            "none (the policy gives this gateway no tenant yet)".to_owned()
        } else {
            done.tenants.join(", ")
        }
    );
    println!(
        "  configuration {}: {}",
        if done.created_config {
            "written"
        } else {
            "updated"
        },
        done.config.display()
    );
    println!(
        "next: sudo corridor gateway run --config {}",
        done.config.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[expect(clippy::print_stdout, reason = "the command's output")]
fn apply_bundle(file: &Path, config_path: &Path) -> Result<ExitCode> {
    let config = GatewayConfig::load(config_path)?;
    let Mode::Controller(controller) = config.mode(config_path)? else {
        bail!(
            "{}: this gateway runs standalone (`policy`): bundles are for gateways under a controller",
            config_path.display()
        );
    };
    let dropped = agent::drop_incoming(controller, file).map_err(|e| anyhow!(e))?;
    println!(
        "handed {} to the gateway ({}); it is checked within a second: `corridor status` shows bundles applied and refused",
        file.display(),
        dropped.display()
    );
    Ok(ExitCode::SUCCESS)
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
    Ok(compile_gateway(&policy, &config.name, &keys)?.into_runtime(config.mtu))
}

fn run_gateway(config_path: &Path) -> Result<ExitCode> {
    // The configuration's errors first: they are the same whatever the binary.
    let config = GatewayConfig::load(config_path)?;
    if dataplane::VIRTUAL_CLOCK {
        bail!(
            "this corridor binary was built with the test-only virtual clock and cannot run a gateway; build it with `cargo build --release -p corridor`"
        );
    }
    let mode = config.mode(config_path)?;
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
    let runtime_config = RuntimeConfig {
        gateway: config.name.clone(),
        listen: config.listen,
        control_socket: Some(config.control_socket.clone()),
        metrics: config.metrics,
        missing_netns: match config.missing_netns {
            gateway_config::MissingNetns::Fail => MissingNetns::Fail,
            gateway_config::MissingNetns::Wait => MissingNetns::Wait,
        },
        workers: match config.workers {
            gateway_config::Workers::Auto => Workers::Auto,
            gateway_config::Workers::Count(n) => Workers::Count(n),
        },
    };
    match mode {
        Mode::Standalone(policy_dir) => run_standalone(&config, policy_dir, runtime_config),
        Mode::Controller(controller) => run_controlled(&config, controller, runtime_config),
    }
}

fn run_standalone(
    config: &GatewayConfig,
    policy_dir: &Path,
    runtime_config: RuntimeConfig,
) -> Result<ExitCode> {
    let plan = load_plan(config, policy_dir)?;
    let tenants = plan.engine.tenants.len();
    let interfaces = plan.interfaces.len();
    let mut runtime = Runtime::start(runtime_config, plan)?;
    tracing::info!(
        mode = "standalone",
        policy = %policy_dir.display(),
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
        load_plan(config, policy_dir).map_err(|e| format!("{e:#}"))
    };
    runtime.run(&mut reload)?;
    drop(runtime);
    tracing::info!("stopped; interfaces removed");
    Ok(ExitCode::SUCCESS)
}

/// Controller mode: the runtime starts on the last good bundle (or on nothing), the agent
/// brings bundles and wakes the event loop.
fn run_controlled(
    config: &GatewayConfig,
    controller: &gateway_config::ControllerSection,
    runtime_config: RuntimeConfig,
) -> Result<ExitCode> {
    use dataplane::io::PlanSource as _;
    // The agent needs the runtime's waker, and the runtime its first plan: the waker goes
    // through a slot filled once the runtime exists (a wakeup before that is not needed: the
    // loop asks for a plan when it starts).
    type Wake = Box<dyn Fn() + Send + Sync>;
    let wake: std::sync::Arc<std::sync::OnceLock<Wake>> = std::sync::Arc::default();
    let slot = wake.clone();
    let mut agent = Agent::start(
        AgentConfig::new(config, controller),
        Box::new(move || {
            if let Some(w) = slot.get() {
                w();
            }
        }),
    )?;
    let (plan, from_disk) = match agent.next_plan(false) {
        Some(Ok(plan)) => (plan, true),
        _ => (
            GatewayPlan {
                engine: dataplane::EngineConfig::default(),
                interfaces: Vec::new(),
            },
            false,
        ),
    };
    let tenants = plan.engine.tenants.len();
    let interfaces = plan.interfaces.len();
    let mut runtime = match Runtime::start(runtime_config, plan) {
        Ok(r) => r,
        Err(e) => {
            if from_disk {
                agent.applied(Err(e.to_string()));
            }
            return Err(e.into());
        }
    };
    if from_disk {
        agent.applied(Ok(()));
    }
    let version = agent
        .controller_status()
        .and_then(|s| s.bundle_version)
        .map_or_else(|| "none yet".to_owned(), |v| v.to_string());
    let waker = runtime.waker();
    let wake_loop: Wake = Box::new(move || {
        let _ = waker.wake();
    });
    // A bundle may have arrived before the loop could be woken: look now.
    (wake.get_or_init(|| wake_loop))();
    tracing::info!(
        mode = "controller",
        controller = %controller.urls.join(","),
        fingerprint = %controller.fingerprint,
        bundle = %version,
        gateway = %config.name,
        tenants,
        interfaces,
        listen = %runtime.local_addr()?,
        control = %config.control_socket.display(),
        "gateway running"
    );
    runtime.run(&mut agent)?;
    drop(runtime);
    drop(agent);
    tracing::info!("stopped; interfaces removed");
    Ok(ExitCode::SUCCESS)
}
