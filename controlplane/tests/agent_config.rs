//! The example controller-mode gateway configuration loads, and runs in controller mode.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::path::Path;
use std::time::Duration;

use controlplane::gateway_config::{GatewayConfig, Mode};

#[test]
fn example_controller_gateway_config() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/controller-gateway/edge-1.toml");
    let config = GatewayConfig::load(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.name, "edge-1");
    let Mode::Controller(c) = config.mode(&file).unwrap() else {
        panic!("not controller mode")
    };
    assert_eq!(c.urls.len(), 2);
    assert!(c.fingerprint.starts_with("ed25519:"));
    assert_eq!(c.state_dir, Path::new("/var/lib/corridor"));
    assert_eq!(c.rotate_keys_every, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(c.long_poll, None);
}
