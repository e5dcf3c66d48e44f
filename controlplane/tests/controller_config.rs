//! The example controller configuration loads, and its policy directory is the example policy.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::path::Path;

use controlplane::controller::ControllerConfig;

#[test]
fn example_controller_config_loads() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let c = ControllerConfig::load(&configs.join("controller.toml")).unwrap();
    assert_eq!(c.listen, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(
        c.store_url(),
        format!("sqlite:{}", configs.join("controller.db").display())
    );
    assert_eq!(c.key_path(), configs.join("controller.key"));
    let policy = c.policy_dir.clone().unwrap();
    assert_eq!(policy, configs.join("policy"));
    controlplane::Policy::load_lenient(&policy).unwrap();
    assert_eq!(c.long_poll, 25);
    assert_eq!(c.replica.as_deref(), Some("ctl-a"));
    assert_eq!(c.tls_names, ["controller.example.net"]);
}
