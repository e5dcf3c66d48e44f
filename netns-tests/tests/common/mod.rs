//! The standard two-gateway world most netns tests start from.
#![cfg(test)]
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::PathBuf;

use netns_tests::{Gateway, Lab};

/// Namespaces and gateways of the standard world:
/// edge (edge-1, 192.168.50.1, dials out) —WAN— dc (dc-1, 192.168.50.2:51820);
/// apps: acme-app and globex-app on edge-1 (both 10.20.1.10), acme-cloud and globex-cloud on
/// dc-1 (both 10.20.100.1 with 10.20.100.0/24 behind).
pub(crate) struct World {
    pub(crate) lab: Lab,
    pub(crate) policy: PathBuf,
    pub(crate) edge: Gateway,
    pub(crate) dc: Gateway,
    pub(crate) edge_ns: String,
    pub(crate) dc_ns: String,
}

pub(crate) const GATEWAYS: &str = r#"
[[gateway]]
name = "edge-1"
keys = { acme = "@key(edge-1,acme)", globex = "@key(edge-1,globex)" }

[[gateway]]
name = "dc-1"
endpoint = "192.168.50.2:51820"
keys = { acme = "@key(dc-1,acme)", globex = "@key(dc-1,globex)" }
"#;

pub(crate) const ACME: &str = r#"
name = "acme"
address-space = ["10.20.0.0/16"]

[[endpoint]]
name = "acme-app"
gateway = "edge-1"
netns = "@ns(acme-app)"
addresses = ["10.20.1.10/32"]

[[endpoint]]
name = "acme-cloud"
gateway = "dc-1"
netns = "@ns(acme-cloud)"
addresses = ["10.20.100.1/32"]
routes = ["10.20.100.0/24"]

[[allow]]
from = "acme-app"
to = "acme-cloud"
protocol = "tcp"
ports = ["5000-5100"]

[[allow]]
from = "acme-app"
to = "acme-cloud"
protocol = "udp"
ports = ["6000"]

[[allow]]
from = "acme-app"
to = "acme-cloud"
protocol = "icmp"
"#;

pub(crate) const GLOBEX: &str = r#"
name = "globex"
address-space = ["10.20.0.0/16"]

[[endpoint]]
name = "globex-app"
gateway = "edge-1"
netns = "@ns(globex-app)"
addresses = ["10.20.1.10/32"]

[[endpoint]]
name = "globex-cloud"
gateway = "dc-1"
netns = "@ns(globex-cloud)"
addresses = ["10.20.100.1/32"]
routes = ["10.20.100.0/24"]

[[allow]]
from = "globex-app"
to = "globex-cloud"
protocol = "tcp"
ports = ["7000"]

[[allow]]
from = "globex-app"
to = "globex-cloud"
protocol = "icmp"
"#;

/// Builds the standard world and starts both gateways; `None` when the test cannot run here.
pub(crate) fn world(test: &str) -> Option<World> {
    let mut lab = Lab::new(test)?;
    let edge_ns = lab.ns("edge");
    let dc_ns = lab.ns("dc");
    for app in ["acme-app", "globex-app", "acme-cloud", "globex-cloud"] {
        lab.ns(app);
    }
    lab.link(&edge_ns, "192.168.50.1/24", &dc_ns, "192.168.50.2/24");
    let policy = lab.policy(&[
        ("gateways.toml", GATEWAYS),
        ("tenants/acme.toml", ACME),
        ("tenants/globex.toml", GLOBEX),
    ]);
    let dc = lab.gateway(&dc_ns, "dc-1", "0.0.0.0:51820", &policy);
    let edge = lab.gateway(&edge_ns, "edge-1", "0.0.0.0:51820", &policy);
    Some(World {
        lab,
        policy,
        edge,
        dc,
        edge_ns,
        dc_ns,
    })
}
