//! The I/O layer (Linux): the one place that touches TUN devices, the WAN socket, network
//! namespaces, signals and the clock. Everything it reads goes to the engine; everything the
//! engine answers, it writes. It holds no policy of its own.

mod control;
mod gro;
mod heal;
pub mod metrics;
pub mod netns;
mod runtime;
mod shard;
mod steer;
mod summary;
pub mod tun;
mod wan;

use std::path::PathBuf;
use std::time::Duration;

pub use control::{ControlRequest, query as query_control};
pub use runtime::{
    ControllerStatus, GatewayPlan, InterfaceState, InterfaceStatus, IoCounters, MAX_WORKERS,
    MissingNetns, PlanSource, Runtime, RuntimeConfig, StatusReport, WorkerStatus, Workers,
};
pub use summary::SUMMARY_EVERY;
pub use tun::{DEFAULT_IFNAME, DEFAULT_MTU, InterfaceSpec};

/// WireGuard's REJECT_AFTER_TIME: a session whose handshake is older than this sends and
/// accepts nothing; a peer without a younger one has no session.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);

/// What went wrong talking to the operating system, said so that an operator can act on it.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The namespace does not exist or cannot be opened.
    #[error(
        "network namespace {netns:?} cannot be opened at {path}: {source}{hint}",
        hint = netns_hint(source)
    )]
    Netns {
        /// As configured.
        netns: String,
        /// Where it was looked for.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Entering the namespace failed.
    #[error(
        "cannot enter network namespace {netns:?}: {source} (corridor needs root, or CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    )]
    Setns {
        /// As configured.
        netns: String,
        /// Why.
        source: std::io::Error,
    },
    /// Creating the TUN device failed.
    #[error("cannot create TUN device {ifname:?} in namespace {netns:?}: {source}{hint}", hint = tun_hint(source))]
    Tun {
        /// Namespace.
        netns: String,
        /// Interface name.
        ifname: String,
        /// Why.
        source: std::io::Error,
    },
    /// An `ip` command failed.
    #[error("in namespace {netns:?}, `{command}` failed: {message}")]
    Ip {
        /// Namespace.
        netns: String,
        /// The command.
        command: String,
        /// Its complaint.
        message: String,
    },
    /// The WAN socket could not be bound.
    #[error("cannot listen on {addr}: {source}{hint}", hint = bind_hint(source))]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The control socket could not be created.
    #[error("cannot create the control socket {path}: {source}")]
    Control {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The engine refused the configuration.
    #[error("the configuration was refused: {0}")]
    Config(#[from] crate::engine::ConfigError),
    /// Any other system call.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

fn netns_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "; opening another process's namespace needs CAP_SYS_PTRACE besides CAP_SYS_ADMIN (run as root, or keep it in the unit's CapabilityBoundingSet)"
        }
        _ => {
            "; create it (ip netns add NAME) or fix the endpoint's `netns`, or set missing-netns = \"wait\" in gateway.toml to go on without it until it appears"
        }
    }
}

fn tun_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => " (corridor needs root, or CAP_NET_ADMIN)",
        std::io::ErrorKind::NotFound => " (is /dev/net/tun there? load the tun module)",
        _ if e.raw_os_error() == Some(16) => " (an interface of that name exists in the namespace)",
        _ => "",
    }
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (the port is in use: another corridor or WireGuard? change `listen`)"
        }
        std::io::ErrorKind::AddrNotAvailable => " (no interface has this address)",
        std::io::ErrorKind::PermissionDenied => " (ports below 1024 need root)",
        _ => "",
    }
}
