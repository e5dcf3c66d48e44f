//! The example gateway configurations in configs/gateway/ load, name a gateway of the example
//! policy, and their keys load and compile; the ones in configs/broken-gateway/ are refused with
//! file, line, column and field.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::path::{Path, PathBuf};

use controlplane::compile_gateway;
use controlplane::gateway_config::{GatewayConfig, GatewayConfigError};
use controlplane::keys::load_gateway_keys;
use controlplane::policy::Policy;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_gateway_config_runs_the_example_policy() {
    let policy_dir = configs().join("policy");
    let policy = Policy::load(&policy_dir).unwrap_or_else(|e| panic!("{e}"));
    let files = toml_files(&configs().join("gateway"));
    let mut names = Vec::new();
    for file in &files {
        let config = GatewayConfig::load(file).unwrap_or_else(|e| panic!("{e}"));
        let shown = file.display();
        // Named after the gateway it configures.
        assert_eq!(
            file.file_stem().unwrap().to_str(),
            Some(config.name.as_str()),
            "{shown}"
        );
        assert!(
            policy.gateway(&config.name).is_some(),
            "{shown}: no gateway {:?} in configs/policy",
            config.name
        );
        // Relative paths resolve against the file: the checkout's policy and demo keys.
        let served = config.policy.as_deref().expect("standalone: a policy");
        assert_eq!(
            served.canonicalize().unwrap(),
            policy_dir.canonicalize().unwrap(),
            "{shown}"
        );
        assert_eq!(
            config.key_dir.canonicalize().unwrap(),
            configs()
                .join("keys")
                .join(&config.name)
                .canonicalize()
                .unwrap(),
            "{shown}"
        );
        let keys = load_gateway_keys(&config.key_dir, &policy, &config.name)
            .unwrap_or_else(|e| panic!("{shown}: {e}"));
        let plan = compile_gateway(&policy, &config.name, &keys)
            .unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert!(!plan.interfaces.is_empty(), "{shown}");
        assert_eq!(config.mtu, 1420, "{shown}");
        names.push(config.name);
    }
    // One file per gateway of the example policy.
    let mut expected: Vec<String> = policy.gateways.iter().map(|g| g.name.clone()).collect();
    expected.sort();
    assert_eq!(names, expected);
    // Both can run on one test host: distinct control sockets.
    let sockets: Vec<_> = files
        .iter()
        .map(|f| GatewayConfig::load(f).unwrap().control_socket)
        .collect();
    assert_ne!(sockets[0], sockets[1]);
}

#[test]
fn broken_gateway_configs_name_file_line_column_and_field() {
    let dir = configs().join("broken-gateway");
    let cases = [
        (
            "unknown-field.toml",
            4,
            1,
            "lisen",
            "unknown field `lisen`, expected one of `name`, `key-dir`, `listen`, `control-socket`, `policy`, `mtu`, `metrics`, `missing-netns`, `workers`, `controller`",
        ),
        (
            "bad-listen.toml",
            5,
            10,
            "listen",
            "invalid socket address syntax; give IP:PORT, e.g. \"0.0.0.0:51820\" or \"[::]:51820\" (an address: host names are not resolved)",
        ),
    ];
    assert_eq!(toml_files(&dir).len(), cases.len(), "a case per file");
    for (name, line, column, field, message) in cases {
        let path = dir.join(name);
        let err = GatewayConfig::load(&path).unwrap_err();
        match &err {
            GatewayConfigError::Parse {
                path: p,
                line: l,
                column: c,
                field: f,
                message: m,
            } => {
                assert_eq!(
                    (p, *l, *c, f.as_str(), m.as_str()),
                    (&path, line, column, field, message)
                );
            }
            other => panic!("{name}: expected a parse error, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!("{}:{line}:{column}: {field}: {message}", path.display())
        );
    }
}
