//! The `corridor` binary: one command for every role. Thin: parses, wires, prints.

mod bench_cmd;
mod controller_cmd;
mod demo;
#[cfg(target_os = "linux")]
mod demo_netns;
mod gateway_cmd;
mod keys_cmd;
#[cfg(target_os = "linux")]
mod netns_world;
mod policy_cmd;
mod status_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// corridor: per-tenant overlay network for multi-tenant edge gateways.
#[derive(Debug, Parser)]
#[command(name = "corridor", version, about)]
struct Cli {
    /// How to log (on stderr): `human` lines, or `json`, one object per line for log
    /// collectors [default: human, or the CORRIDOR_LOG_FORMAT environment variable].
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

/// The log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event (timestamp, level, fields, message).
    Json,
}

/// The environment variable that sets the log format when `--log-format` is not given.
const LOG_FORMAT_ENV: &str = "CORRIDOR_LOG_FORMAT";

/// `--log-format`, else the environment variable, else human.
fn log_format(flag: Option<LogFormat>) -> Result<LogFormat, String> {
    use clap::ValueEnum as _;
    if let Some(f) = flag {
        return Ok(f);
    }
    match std::env::var(LOG_FORMAT_ENV) {
        Ok(v) if !v.trim().is_empty() => LogFormat::from_str(v.trim(), true)
            .map_err(|_| format!("{LOG_FORMAT_ENV}={v:?}: use human or json")),
        _ => Ok(LogFormat::Human),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match format {
        LogFormat::Human => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            // Colours for people at a terminal (unless NO_COLOR), not escape codes in journald
            // or a file.
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .without_time()
            .with_target(false)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .with_target(false)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check policy files, or show what one gateway gets from them.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Manage a gateway's per-tenant WireGuard keys.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// Show corridor at work: the example policy on two gateways in namespaces (root) or in memory.
    Demo(demo::DemoArgs),
    /// Run this host's gateway.
    #[command(subcommand)]
    Gateway(gateway_cmd::GatewayCommand),
    /// Run and administer the controller (tokens, rotation, revocation, status).
    #[command(subcommand)]
    Controller(controller_cmd::ControllerCommand),
    /// Show what the running gateway is doing: per tenant, per peer.
    Status(status_cmd::StatusArgs),
    /// Measure this machine: AEAD speed per core, the engine in memory, a real tunnel (root).
    Bench(bench_cmd::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match log_format(cli.log_format) {
        Ok(format) => init_logging(format),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    let result = match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Keys(cmd) => keys_cmd::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::Gateway(cmd) => gateway_cmd::run(cmd),
        Command::Controller(cmd) => controller_cmd::run(cmd),
        Command::Status(args) => status_cmd::run(args),
        Command::Bench(args) => bench_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-joined, leaving out a cause whose text an outer message
/// already quotes (the I/O errors name their OS error themselves).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_does_not_repeat_quoted_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e = anyhow::Error::new(dataplane::io::IoError::Bind {
            addr: ([0, 0, 0, 0], 51820).into(),
            source: io,
        })
        .context("starting the gateway");
        let text = error_chain(&e);
        assert_eq!(text.matches("Address already in use").count(), 1, "{text}");
        assert!(
            text.starts_with("starting the gateway: cannot listen on 0.0.0.0:51820"),
            "{text}"
        );
    }

    #[test]
    fn log_format_is_global_and_defaults_to_human() {
        let cli = Cli::try_parse_from(["corridor", "status", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, Some(LogFormat::Json));
        let cli = Cli::try_parse_from(["corridor", "--log-format", "human", "status"]).unwrap();
        assert_eq!(cli.log_format, Some(LogFormat::Human));
        assert!(Cli::try_parse_from(["corridor", "--log-format", "xml", "status"]).is_err());
        let cli = Cli::try_parse_from(["corridor", "status"]).unwrap();
        assert_eq!(cli.log_format, None);
        // The flag wins over the environment (not read when the flag is given).
        assert_eq!(log_format(Some(LogFormat::Json)), Ok(LogFormat::Json));
    }
}
