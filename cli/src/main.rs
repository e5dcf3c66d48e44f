//! The `corridor` binary: one command for every role. Thin: parses, wires, prints.

mod demo;
#[cfg(target_os = "linux")]
mod demo_netns;
mod gateway_cmd;
mod keys_cmd;
mod policy_cmd;
mod status_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// corridor: per-tenant overlay network for multi-tenant edge gateways.
#[derive(Debug, Parser)]
#[command(name = "corridor", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Show what the running gateway is doing: per tenant, per peer.
    Status(status_cmd::StatusArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .without_time()
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Keys(cmd) => keys_cmd::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::Gateway(cmd) => gateway_cmd::run(cmd),
        Command::Status(args) => status_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
