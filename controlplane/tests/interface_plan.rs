//! The `interface` of an endpoint reaches the compiled plan; absent, it is `corridor0`, the name
//! the gateway runtime uses by default.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::path::PathBuf;

use controlplane::compile_gateway;
use controlplane::keys::TenantKeys;
use controlplane::policy::{
    DEFAULT_INTERFACE, GATEWAYS_FILE, Mode, Policy, PolicySources, SourceFile, TENANTS_DIR,
};
use dataplane::SecretKey;
use dataplane::config::encode_key;

fn secret(n: u8) -> SecretKey {
    SecretKey::from_bytes([n; 32])
}

/// Two tenants whose apps share one namespace on edge-1 (one pod, say): distinct interface
/// names make that possible.
fn policy() -> Policy {
    let gateways = format!(
        "[[gateway]]\nname = \"edge-1\"\nkeys = {{ acme = \"{}\", globex = \"{}\" }}\n\n\
         [[gateway]]\nname = \"dc-1\"\nendpoint = \"192.168.50.2:51820\"\nkeys = {{ acme = \"{}\", globex = \"{}\" }}\n",
        encode_key(&secret(1).public_key()),
        encode_key(&secret(2).public_key()),
        encode_key(&secret(3).public_key()),
        encode_key(&secret(4).public_key()),
    );
    let tenant = |name: &str, app_interface: &str| {
        format!(
            "name = \"{name}\"\naddress-space = [\"10.20.0.0/16\"]\n\n\
             [[endpoint]]\nname = \"app\"\ngateway = \"edge-1\"\nnetns = \"/proc/4242/ns/net\"\n{app_interface}addresses = [\"10.20.1.10/32\"]\n\n\
             [[endpoint]]\nname = \"cloud\"\ngateway = \"dc-1\"\nnetns = \"{name}-cloud\"\naddresses = [\"10.20.100.1/32\"]\n\n\
             [[allow]]\nfrom = \"app\"\nto = \"cloud\"\nprotocol = \"tcp\"\n"
        )
    };
    let file = |path: PathBuf, text: String| SourceFile { path, text };
    let sources = PolicySources {
        gateways: Some(file(GATEWAYS_FILE.into(), gateways)),
        tenants: Some(vec![
            file(
                PathBuf::from(TENANTS_DIR).join("acme.toml"),
                tenant("acme", ""),
            ),
            file(
                PathBuf::from(TENANTS_DIR).join("globex.toml"),
                tenant("globex", "interface = \"globex0\"\n"),
            ),
        ]),
        read_errors: Vec::new(),
    };
    Policy::from_sources(&sources, Mode::Strict).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_plan_carries_each_interface_name() {
    let policy = policy();
    let mut keys = TenantKeys::new();
    keys.insert("acme", secret(1));
    keys.insert("globex", secret(2));
    let plan = compile_gateway(&policy, "edge-1", &keys).unwrap();
    let ifaces: Vec<_> = plan
        .interfaces
        .iter()
        .map(|i| (i.tenant.as_str(), i.netns.as_str(), i.interface.as_str()))
        .collect();
    assert_eq!(
        ifaces,
        [
            ("acme", "/proc/4242/ns/net", DEFAULT_INTERFACE),
            ("globex", "/proc/4242/ns/net", "globex0"),
        ]
    );

    let mut keys = TenantKeys::new();
    keys.insert("acme", secret(3));
    keys.insert("globex", secret(4));
    let plan = compile_gateway(&policy, "dc-1", &keys).unwrap();
    assert!(plan.interfaces.iter().all(|i| i.interface == "corridor0"));
}

#[cfg(target_os = "linux")]
#[test]
fn the_default_is_the_runtimes_default() {
    assert_eq!(DEFAULT_INTERFACE, dataplane::io::DEFAULT_IFNAME);
    assert_eq!(
        controlplane::policy::NETNS_DIR,
        dataplane::io::netns::NETNS_DIR
    );
}
