//! The worked example in configs/: it loads, and compiles for both gateways to the expected
//! engine configurations with the demo keys.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::path::{Path, PathBuf};

use controlplane::keys::load_gateway_keys;
use controlplane::policy::Policy;
use controlplane::{GatewayPlan, compile_gateway};
use dataplane::config::{Location, PortRange, Protocol, decode_key};
use ip_network::IpNetwork;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn policy() -> Policy {
    Policy::load(&configs().join("policy")).unwrap_or_else(|e| panic!("{e}"))
}

fn plan(gateway: &str) -> (Policy, GatewayPlan) {
    let policy = policy();
    let keys = load_gateway_keys(&configs().join("keys").join(gateway), &policy, gateway).unwrap();
    let plan = compile_gateway(&policy, gateway, &keys).unwrap();
    (policy, plan)
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn public_key(policy: &Policy, gateway: &str, tenant: &str) -> [u8; 32] {
    policy.gateway(gateway).unwrap().keys[tenant]
}

#[test]
fn example_policy_is_valid_without_warnings() {
    let p = policy();
    assert_eq!(
        (
            p.gateways.len(),
            p.tenants.len(),
            p.endpoint_count(),
            p.rule_count()
        ),
        (2, 2, 5, 4)
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    // Overlapping address spaces on purpose.
    assert_eq!(p.tenants[0].address_space, p.tenants[1].address_space);
}

#[test]
fn edge_1_plan() {
    let (policy, plan) = plan("edge-1");
    let tenants = &plan.engine.tenants;
    assert_eq!(
        tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["acme", "globex"]
    );

    let acme = &tenants[0];
    assert_eq!(
        acme.private_key.public_key(),
        public_key(&policy, "edge-1", "acme")
    );
    assert_eq!(acme.peers.len(), 1);
    let dc = &acme.peers[0];
    assert_eq!(dc.name, "dc-1");
    assert_eq!(dc.public_key, public_key(&policy, "dc-1", "acme"));
    assert_eq!(dc.endpoint, Some("192.168.50.2:51820".parse().unwrap()));
    assert_eq!(
        dc.persistent_keepalive,
        Some(25),
        "edge-1 dials out: keepalive by default"
    );
    assert!(!dc.roaming, "dc-1 is pinned");
    assert_eq!(acme.endpoints.len(), 2);
    assert_eq!(acme.endpoints[0].name, "meter-app");
    assert_eq!(acme.endpoints[0].location, Location::Local);
    assert_eq!(acme.endpoints[0].prefixes, [net("10.20.1.10/32")]);
    assert_eq!(acme.endpoints[1].name, "acme-cloud");
    assert_eq!(acme.endpoints[1].location, Location::Peer(0));
    assert_eq!(
        acme.endpoints[1].prefixes,
        [net("10.20.100.1/32"), net("10.20.100.0/24")]
    );
    assert_eq!(acme.rules.len(), 2);
    assert_eq!(
        (acme.rules[0].from, acme.rules[0].to, acme.rules[0].protocol),
        (0, 1, Protocol::Tcp)
    );
    assert_eq!(
        acme.rules[0].ports,
        [
            PortRange {
                start: 443,
                end: 443
            },
            PortRange {
                start: 9000,
                end: 9100
            }
        ]
    );
    assert_eq!(
        (acme.rules[1].protocol, acme.rules[1].ports.is_empty()),
        (Protocol::Icmp, true)
    );
    assert_eq!(
        acme.conntrack_limit,
        dataplane::config::DEFAULT_CONNTRACK_LIMIT
    );

    let globex = &tenants[1];
    assert_eq!(
        globex.private_key.public_key(),
        public_key(&policy, "edge-1", "globex")
    );
    assert_ne!(globex.private_key, acme.private_key);
    assert_eq!(globex.conntrack_limit, 4096);
    let names: Vec<_> = globex.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["dc-1", "legacy-hub"]);
    assert_eq!(
        globex.peers[0].public_key,
        public_key(&policy, "dc-1", "globex")
    );
    let hub = &globex.peers[1];
    assert_eq!(
        hub.public_key,
        decode_key("FG+AWwnu2rGs/NNYWFZcpVvMxY7yPZtwaI9wqcogaXA=").unwrap()
    );
    assert_eq!(hub.endpoint, Some("192.168.60.7:51820".parse().unwrap()));
    assert!(hub.roaming);
    let eps: Vec<_> = globex
        .endpoints
        .iter()
        .map(|e| (e.name.as_str(), e.location))
        .collect();
    assert_eq!(
        eps,
        [
            ("scada-app", Location::Local),
            ("globex-cloud", Location::Peer(0)),
            ("legacy-hub", Location::Peer(1))
        ]
    );
    let rules: Vec<_> = globex
        .rules
        .iter()
        .map(|r| (r.from, r.to, r.protocol))
        .collect();
    assert_eq!(rules, [(0, 1, Protocol::Udp), (2, 0, Protocol::Tcp)]);

    let ifaces: Vec<_> = plan
        .interfaces
        .iter()
        .map(|i| {
            (
                i.tenant.as_str(),
                i.endpoint.as_str(),
                i.netns.as_str(),
                i.interface.as_str(),
            )
        })
        .collect();
    assert_eq!(
        ifaces,
        [
            ("acme", "meter-app", "acme-meter", "corridor0"),
            ("globex", "scada-app", "globex-scada", "corridor0")
        ]
    );
    assert_eq!(plan.interfaces[0].addresses, [net("10.20.1.10/32")]);
    assert_eq!(plan.interfaces[0].routes, [net("10.20.100.0/24")]);
    assert_eq!(
        plan.interfaces[1].routes,
        [net("10.20.100.0/24"), net("10.20.200.1/32")]
    );
}

#[test]
fn dc_1_plan() {
    let (policy, plan) = plan("dc-1");
    let tenants = &plan.engine.tenants;
    assert_eq!(tenants.len(), 2);
    for t in tenants {
        assert_eq!(
            t.private_key.public_key(),
            public_key(&policy, "dc-1", &t.name)
        );
        // The only peer is edge-1, which dials in: no endpoint, no keepalive from dc-1 (it has an
        // endpoint of its own), roaming allowed.
        assert_eq!(t.peers.len(), 1);
        let edge = &t.peers[0];
        assert_eq!(edge.name, "edge-1");
        assert_eq!(edge.public_key, public_key(&policy, "edge-1", &t.name));
        assert_eq!(
            (edge.endpoint, edge.persistent_keepalive, edge.roaming),
            (None, None, true)
        );
    }
    // globex's legacy hub talks to the edge app only: dc-1 does not know it.
    let globex = &tenants[1];
    let names: Vec<_> = globex.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["scada-app", "globex-cloud"]);
    assert_eq!(globex.endpoints[0].location, Location::Peer(0));
    assert_eq!(globex.endpoints[1].location, Location::Local);
    assert_eq!(globex.rules.len(), 1);
    assert_eq!((globex.rules[0].from, globex.rules[0].to), (0, 1));
    let ifaces: Vec<_> = plan
        .interfaces
        .iter()
        .map(|i| (i.endpoint.as_str(), i.routes.clone()))
        .collect();
    assert_eq!(
        ifaces,
        [
            ("acme-cloud", vec![net("10.20.1.10/32")]),
            ("globex-cloud", vec![net("10.20.1.10/32")])
        ]
    );
}

#[test]
fn compile_is_deterministic() {
    assert_eq!(plan("edge-1").1, plan("edge-1").1);
}

#[test]
fn wrong_keys_are_refused() {
    let policy = policy();
    // edge-1's keys are not dc-1's.
    let err = load_gateway_keys(&configs().join("keys/edge-1"), &policy, "dc-1").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("differs from gateways.toml's gateway \"dc-1\".keys.acme"),
        "{msg}"
    );
    assert!(msg.contains("put the matching private key there"), "{msg}");
    // And compile checks too.
    let keys = load_gateway_keys(&configs().join("keys/edge-1"), &policy, "edge-1").unwrap();
    let err = compile_gateway(&policy, "dc-1", &keys).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let err = compile_gateway(&policy, "dc-9", &keys).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no gateway \"dc-9\" in the policy (gateways: edge-1, dc-1)"
    );
}

#[test]
fn missing_key_file() {
    let policy = policy();
    let dir = tempfile::tempdir().unwrap();
    let err = load_gateway_keys(dir.path(), &policy, "edge-1").unwrap_err();
    assert!(
        err.to_string().contains("no key file for tenant \"acme\""),
        "{err}"
    );
    assert!(err.to_string().contains("corridor keys generate"), "{err}");
}
