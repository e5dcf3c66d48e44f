//! The policy model: gateways, tenants, endpoints and allowed flows, loaded from a policy
//! directory and validated as a whole.
//!
//! A policy directory holds `gateways.toml` and one file per tenant under `tenants/`. Loading
//! walks a spanned TOML tree rather than deserializing with serde, so that every problem in
//! every file is found in one run, each with its file, line, column and field
//! (see [`Diagnostic`]). The format is documented in the README ("Policy files").

mod check;
mod parse;
mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dataplane::config::{PortRange, Protocol};
use ip_network::IpNetwork;

pub use crate::diag::{Diagnostic, Position, Severity};

/// Whether prefix `inner` lies inside prefix `outer` (same family, at least as long, covered).
pub fn prefix_within(inner: &IpNetwork, outer: &IpNetwork) -> bool {
    tree::prefix_within(inner, outer)
}

/// Name of the gateways file inside a policy directory.
pub const GATEWAYS_FILE: &str = "gateways.toml";
/// Name of the tenants directory inside a policy directory.
pub const TENANTS_DIR: &str = "tenants";
/// The app interface's name inside its namespace when the endpoint names none
/// (`dataplane::io::DEFAULT_IFNAME`).
pub const DEFAULT_INTERFACE: &str = "corridor0";
/// Where named network namespaces live (`ip netns add NAME`); `dataplane::io::netns::NETNS_DIR`.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Keepalive (seconds) a gateway without an `endpoint` sends by default, to hold its NAT mapping.
pub const DEFAULT_DIAL_OUT_KEEPALIVE: u16 = 25;

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The gateways, in file order.
    pub gateways: Vec<Gateway>,
    /// The tenants, ordered by file name.
    pub tenants: Vec<Tenant>,
    /// Findings that do not stop the policy from being used.
    pub warnings: Vec<Diagnostic>,
}

/// A corridor gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// Unique name, `[a-z0-9-]{1,32}`.
    pub name: String,
    /// Where peers reach it; `None` when it only dials out.
    pub endpoint: Option<SocketAddr>,
    /// Its public key per tenant it serves (tenant name → X25519 public key).
    pub keys: BTreeMap<String, [u8; 32]>,
    /// Persistent keepalive it sends to its peers, in seconds; `None` for none. Defaults to
    /// [`DEFAULT_DIAL_OUT_KEEPALIVE`] when the gateway has no `endpoint`.
    pub keepalive: Option<u16>,
    /// Its peers never follow it to another address (they get `roaming = false` for it).
    pub pin_endpoint: bool,
}

/// A tenant: its address space, endpoints and allowed flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Unique name, `[a-z0-9-]{1,32}`; equals the file's stem.
    pub name: String,
    /// The file it came from, relative to the policy directory.
    pub file: PathBuf,
    /// Every endpoint address and route lies inside one of these.
    pub address_space: Vec<IpNetwork>,
    /// Upper bound on tracked connections of this tenant on each gateway.
    pub conntrack_limit: usize,
    /// The endpoints, in file order.
    pub endpoints: Vec<Endpoint>,
    /// The allowed flows, in file order.
    pub rules: Vec<Rule>,
}

/// An endpoint of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Unique within the tenant, `[a-z0-9-]{1,32}`.
    pub name: String,
    /// Where it lives.
    pub kind: EndpointKind,
    /// Its own addresses (valid sources of its packets).
    pub addresses: Vec<IpNetwork>,
    /// Prefixes reachable behind it.
    pub routes: Vec<IpNetwork>,
}

/// Where an endpoint lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointKind {
    /// An app in a network namespace on a corridor gateway.
    Gateway {
        /// The gateway's name.
        gateway: String,
        /// The app's network namespace: a name under `/var/run/netns`, or an absolute path.
        netns: String,
        /// The name of the app's interface (TUN device) inside that namespace
        /// ([`DEFAULT_INTERFACE`] unless the endpoint names one).
        interface: String,
    },
    /// A stock WireGuard peer that runs no corridor.
    WireGuard(StockPeer),
}

/// A stock WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockPeer {
    /// Its X25519 public key.
    pub public_key: [u8; 32],
    /// Where to reach it; `None` when it dials in.
    pub endpoint: Option<SocketAddr>,
    /// Never follow it to another address.
    pub pin_endpoint: bool,
}

/// One allowed flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The endpoint that may open the flow.
    pub from: String,
    /// The endpoint it may open it to.
    pub to: String,
    /// Which protocol.
    pub protocol: Protocol,
    /// Destination port ranges; empty = all ports.
    pub ports: Vec<PortRange>,
}

impl Endpoint {
    /// The corridor gateway it lives on, if any.
    pub fn gateway(&self) -> Option<&str> {
        match &self.kind {
            EndpointKind::Gateway { gateway, .. } => Some(gateway),
            EndpointKind::WireGuard(_) => None,
        }
    }

    /// Addresses then routes, exact duplicates removed: what the engine's `prefixes` gets.
    pub fn prefixes(&self) -> Vec<IpNetwork> {
        let mut out: Vec<IpNetwork> = Vec::with_capacity(self.addresses.len() + self.routes.len());
        for p in self.addresses.iter().chain(&self.routes) {
            if !out.contains(p) {
                out.push(*p);
            }
        }
        out
    }
}

impl Tenant {
    /// The endpoint with this name.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }
}

impl Policy {
    /// Loads and validates the policy in `dir`. Every problem found in every file is returned.
    pub fn load(dir: &Path) -> Result<Policy, PolicyErrors> {
        Self::load_with(dir, Mode::Strict)
    }

    /// Like [`Policy::load`], but gateway keys may be missing or malformed (they may not exist
    /// yet): used by `corridor keys generate`. Everything else is checked as usual.
    pub fn load_lenient(dir: &Path) -> Result<Policy, PolicyErrors> {
        Self::load_with(dir, Mode::Lenient)
    }

    /// Loads from a directory in the given mode.
    pub fn load_with(dir: &Path, mode: Mode) -> Result<Policy, PolicyErrors> {
        let sources = PolicySources::read(dir);
        Self::from_sources(&sources, mode)
    }

    /// Validates policy texts already read into memory.
    pub fn from_sources(sources: &PolicySources, mode: Mode) -> Result<Policy, PolicyErrors> {
        check::load(sources, mode)
    }

    /// The gateway with this name.
    pub fn gateway(&self, name: &str) -> Option<&Gateway> {
        self.gateways.iter().find(|g| g.name == name)
    }

    /// The tenant with this name.
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// The tenants that have at least one endpoint on `gateway`, in policy order.
    pub fn served_tenants(&self, gateway: &str) -> Vec<&Tenant> {
        self.tenants
            .iter()
            .filter(|t| t.endpoints.iter().any(|e| e.gateway() == Some(gateway)))
            .collect()
    }

    /// Number of endpoints over all tenants.
    pub fn endpoint_count(&self) -> usize {
        self.tenants.iter().map(|t| t.endpoints.len()).sum()
    }

    /// Number of rules over all tenants.
    pub fn rule_count(&self) -> usize {
        self.tenants.iter().map(|t| t.rules.len()).sum()
    }
}

/// How strict loading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Everything is checked.
    #[default]
    Strict,
    /// Gateway keys may be missing or malformed; they are left out of [`Gateway::keys`].
    Lenient,
}

/// One policy file's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the policy directory (used in diagnostics).
    pub path: PathBuf,
    /// The file's content.
    pub text: String,
}

/// The texts of a policy directory, and the problems met reading them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySources {
    /// `gateways.toml`, if it could be read.
    pub gateways: Option<SourceFile>,
    /// The files under `tenants/` (`*.toml`, sorted by name); `None` when the directory is missing.
    pub tenants: Option<Vec<SourceFile>>,
    /// Problems reading files (missing, unreadable, not UTF-8).
    pub read_errors: Vec<Diagnostic>,
}

impl PolicySources {
    /// Reads `gateways.toml` and `tenants/*.toml` from `dir`. Never fails: problems are recorded.
    pub fn read(dir: &Path) -> PolicySources {
        let mut out = PolicySources::default();
        let gw_rel = PathBuf::from(GATEWAYS_FILE);
        match std::fs::read(dir.join(GATEWAYS_FILE)) {
            Ok(bytes) => out.gateways = out.decode(gw_rel, bytes),
            Err(e) => {
                let message = if e.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "file not found in {}; create it with one [[gateway]] table per gateway",
                        dir.display()
                    )
                } else {
                    format!("cannot read: {e}")
                };
                out.read_errors.push(file_error(gw_rel, message));
            }
        }
        let tenants_dir = dir.join(TENANTS_DIR);
        match std::fs::read_dir(&tenants_dir) {
            Ok(entries) => {
                let mut paths: Vec<PathBuf> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension().is_some_and(|x| x == "toml")
                            && !p
                                .file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    })
                    .collect();
                paths.sort();
                let mut files = Vec::new();
                for path in paths {
                    let rel = Path::new(TENANTS_DIR).join(path.file_name().unwrap_or_default());
                    match std::fs::read(&path) {
                        Ok(bytes) => files.extend(out.decode(rel, bytes)),
                        Err(e) => out
                            .read_errors
                            .push(file_error(rel, format!("cannot read: {e}"))),
                    }
                }
                out.tenants = Some(files);
            }
            Err(e) => {
                let message = if e.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "directory not found in {}; create {TENANTS_DIR}/ with one <tenant>.toml per tenant",
                        dir.display()
                    )
                } else {
                    format!("cannot read directory: {e}")
                };
                out.read_errors
                    .push(file_error(PathBuf::from(TENANTS_DIR), message));
            }
        }
        out
    }

    fn decode(&mut self, path: PathBuf, bytes: Vec<u8>) -> Option<SourceFile> {
        match String::from_utf8(bytes) {
            Ok(text) => Some(SourceFile { path, text }),
            Err(e) => {
                let offset = e.utf8_error().valid_up_to();
                self.read_errors.push(file_error(
                    path,
                    format!("not valid UTF-8 (at byte {offset}); TOML files must be UTF-8"),
                ));
                None
            }
        }
    }
}

fn file_error(file: PathBuf, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file,
        position: None,
        field: String::new(),
        message,
    }
}

/// Everything wrong with a policy: all errors (and the warnings found along the way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors {
    /// The errors, sorted by file and position. Never empty.
    pub errors: Vec<Diagnostic>,
    /// Warnings found along the way.
    pub warnings: Vec<Diagnostic>,
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.errors {
            writeln!(f, "{d}")?;
        }
        let n = self.errors.len();
        write!(f, "{n} error{} in policy", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for PolicyErrors {}

#[cfg(test)]
mod tests;
