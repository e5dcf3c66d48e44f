//! Runs the built `corridor` binary on the example configs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn corridor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corridor"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run corridor")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn policy_check_example() {
    let dir = configs().join("policy");
    let out = corridor(&["policy", "check", path(&dir)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "policy OK: 2 gateways, 2 tenants, 5 endpoints, 4 rules\n"
    );
    assert_eq!(text(&out.stderr), "");
}

/// Runs `policy check` on a broken dir: exit 1, and every expected line on stderr.
fn check_broken(name: &str, expected: &[&str], count_line: &str) {
    let dir = configs().join("broken").join(name);
    let out = corridor(&["policy", "check", path(&dir)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(text(&out.stdout), "");
    let lines: Vec<&str> = stderr.lines().collect();
    for e in expected {
        assert!(
            lines.iter().any(|l| l.starts_with(e)),
            "missing {e:?} in:\n{stderr}"
        );
    }
    assert_eq!(lines.last().copied(), Some(count_line), "{stderr}");
}

#[test]
fn broken_addresses() {
    check_broken(
        "addresses",
        &[
            "tenants/acme.toml:10:14: endpoint \"meter-app\".addresses[0]: 10.30.1.10/32 lies outside the tenant's address-space (10.20.0.0/16); use an address inside it or widen address-space",
            "tenants/acme.toml:16:14: endpoint \"acme-cloud\".addresses[0]: 10.20.100.1/24 has host bits set; did you mean 10.20.100.0/24 or 10.20.100.1/32?",
            "tenants/acme.toml:23:14: endpoint \"acme-backup\".addresses[0]: 10.20.100.9/32 overlaps 10.20.100.0/24 of endpoint \"acme-cloud\"",
        ],
        "policy invalid: 3 errors",
    );
}

#[test]
fn broken_syntax_still_checks_other_files() {
    check_broken(
        "syntax",
        &[
            "gateways.toml:4:122: gateway \"edge-1\".keys.initech: no tenant \"initech\" (tenants: acme, globex)",
            "gateways.toml:5:1: gateway \"edge-1\".colour: unknown field `colour`",
            "tenants/acme.toml:6:18: TOML syntax error: ",
            "tenants/globex.toml:6:8: endpoint[0].name: \"Scada_App\" is not a valid endpoint name",
            "tenants/globex.toml:9:1: endpoint[0].adresses: unknown field `adresses`; did you mean `addresses`?",
        ],
        "policy invalid: 6 errors",
    );
}

#[test]
fn broken_keys() {
    check_broken(
        "keys",
        &[
            "gateways.toml:4:17: gateway \"edge-1\".keys.acme: \"<paste the public key here>\" is not a public key",
            "gateways.toml:7:8: gateway \"dc-1\".keys: gateway \"dc-1\" serves tenant \"acme\" (endpoint \"acme-cloud\") but has no key for it; run `corridor keys generate",
            "gateways.toml:8:12: gateway \"dc-1\".endpoint: \"192.168.50.2\" is not a socket address",
        ],
        "policy invalid: 3 errors",
    );
}

#[test]
fn broken_rules() {
    check_broken(
        "rules",
        &[
            "tenants/acme.toml:28:1: warning: endpoint \"hub-c\": no [[allow]] rule names this endpoint",
            "tenants/acme.toml:30:9: endpoint \"hub-c\".netns: has both netns and wireguard",
            "tenants/acme.toml:35:1: allow[0]: endpoint \"meter-app\" and endpoint \"meter-app-2\" can never reach each other",
            "tenants/acme.toml:45:9: allow[1].ports: ports only apply to tcp and udp, not icmp",
            "tenants/acme.toml:45:17: allow[1].ports[1]: port range \"9100-9000\" is reversed; write \"9000-9100\"",
            "tenants/acme.toml:48:1: allow[2]: both endpoint \"hub-a\" and endpoint \"hub-b\" are stock WireGuard peers",
            "tenants/acme.toml:56:6: allow[3].to: no endpoint \"acme-cloud\" in this tenant",
        ],
        "policy invalid: 6 errors, 1 warning",
    );
}

#[test]
fn broken_no_tenants_dir() {
    check_broken(
        "no-tenants",
        &["tenants: directory not found in "],
        "policy invalid: 1 error",
    );
}

#[test]
fn policy_compile_summary() {
    let keys = configs().join("keys/edge-1");
    let out = corridor(&[
        "policy",
        "compile",
        path(&configs().join("policy")),
        "--gateway",
        "edge-1",
        "--keys",
        path(&keys),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.starts_with("gateway edge-1: 2 tenant(s)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("    meter-app -> acme-cloud tcp ports 443,9000-9100\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("    legacy-hub -> scada-app tcp ports 502\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\ninterface acme/meter-app corridor0 in netns acme-meter: addresses 10.20.1.10/32, routes 10.20.100.0/24\n"),
        "{stdout}"
    );
    // Wrong keys: refused, with what to do.
    let out = corridor(&[
        "policy",
        "compile",
        path(&configs().join("policy")),
        "--gateway",
        "dc-1",
        "--keys",
        path(&keys),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("differs from gateways.toml's gateway \"dc-1\".keys.acme"),
        "{}",
        text(&out.stderr)
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// Parses the printed `keys = { ... }` line back as TOML.
fn printed_keys(stdout: &str) -> toml::Table {
    let doc: toml::Table = toml::from_str(stdout).expect("output is TOML");
    doc["keys"].as_table().expect("keys table").clone()
}

#[test]
fn keys_generate_keep_force() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A policy whose gateways have no keys yet: lenient loading accepts it.
    let policy = tmp.path().join("policy");
    std::fs::create_dir_all(policy.join("tenants")).expect("mkdir");
    let gw = std::fs::read_to_string(configs().join("policy/gateways.toml")).expect("read");
    let gw: String = gw
        .lines()
        .filter(|l| !l.starts_with("keys"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(policy.join("gateways.toml"), gw).expect("write");
    for t in ["acme", "globex"] {
        std::fs::copy(
            configs().join(format!("policy/tenants/{t}.toml")),
            policy.join(format!("tenants/{t}.toml")),
        )
        .expect("copy");
    }
    assert_eq!(
        corridor(&["policy", "check", path(&policy)]).status.code(),
        Some(1)
    );

    let out_dir = tmp.path().join("keys/edge-1");
    let args = [
        "keys",
        "generate",
        "--policy",
        path(&policy),
        "--gateway",
        "edge-1",
        "--out",
        path(&out_dir),
    ];
    let out = corridor(&args);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("keys = { acme = \""), "{stdout}");
    let keys = printed_keys(&stdout);
    assert_eq!(keys.keys().collect::<Vec<_>>(), ["acme", "globex"]);
    assert_eq!(mode(&out_dir), 0o700);
    for t in ["acme", "globex"] {
        let file = out_dir.join(format!("{t}.key"));
        assert_eq!(mode(&file), 0o600);
        let secret =
            dataplane::SecretKey::from_base64(&std::fs::read_to_string(&file).expect("read"))
                .expect("key");
        assert_eq!(
            keys[t].as_str(),
            Some(dataplane::config::encode_key(&secret.public_key()).as_str())
        );
        assert!(stderr.contains(&format!("{t}.key: created")), "{stderr}");
    }

    // Again: keys kept, same output.
    let again = corridor(&args);
    assert!(again.status.success());
    assert_eq!(text(&again.stdout), stdout);
    assert!(
        text(&again.stderr).contains("acme.key: kept existing key (use --force to replace it)"),
        "{}",
        text(&again.stderr)
    );

    // Pasting the line into gateways.toml makes the policy complete for edge-1.
    let gw = std::fs::read_to_string(policy.join("gateways.toml")).expect("read");
    let gw = gw.replacen(
        "name = \"edge-1\"\n",
        &format!("name = \"edge-1\"\n{stdout}"),
        1,
    );
    std::fs::write(policy.join("gateways.toml"), gw).expect("write");
    let check = corridor(&["policy", "check", path(&policy)]);
    let check_err = text(&check.stderr);
    assert!(!check_err.contains("\"edge-1\" serves"), "{check_err}");
    assert!(
        check_err.contains("\"dc-1\" serves tenant \"acme\""),
        "{check_err}"
    );

    // --force: new keys.
    let mut forced_args = args.to_vec();
    forced_args.push("--force");
    let forced = corridor(&forced_args);
    assert!(forced.status.success());
    assert_ne!(text(&forced.stdout), stdout);
    assert_eq!(mode(&out_dir.join("acme.key")), 0o600);
}

#[test]
fn keys_generate_unknown_gateway() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out_dir = tmp.path().join("k");
    let out = corridor(&[
        "keys",
        "generate",
        "--policy",
        path(&configs().join("policy")),
        "--gateway",
        "edge-9",
        "--out",
        path(&out_dir),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no gateway \"edge-9\" in ") && stderr.contains("(gateways: edge-1, dc-1)"),
        "{stderr}"
    );
    assert!(!out_dir.exists());
}

#[test]
fn gateway_run_refuses_a_broken_config_before_anything_else() {
    // Parsed before root is needed: no privileges for this test.
    for (file, expected) in [
        (
            "unknown-field.toml",
            ":4:1: lisen: unknown field `lisen`, expected one of `name`, `key-dir`, `listen`",
        ),
        (
            "bad-listen.toml",
            ":5:10: listen: invalid socket address syntax; give IP:PORT",
        ),
    ] {
        let config = configs().join("broken-gateway").join(file);
        let out = corridor(&["gateway", "run", "--config", path(&config)]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with(&format!("error: {}{expected}", path(&config))),
            "{stderr}"
        );
    }
}

#[test]
fn status_without_a_gateway_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    // --socket: no such file.
    let sock = tmp.path().join("none.sock");
    let out = corridor(&["status", "--socket", path(&sock)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: no gateway control socket at {} (from --socket). Is the gateway running (`corridor gateway run --config FILE`)?",
            path(&sock)
        )),
        "{stderr}"
    );
    // --config: the socket it names, relative to the file.
    let config = tmp.path().join("gateway.toml");
    std::fs::write(
        &config,
        "name = \"edge-1\"\nkey-dir = \"keys\"\ncontrol-socket = \"ctl.sock\"\n",
    )
    .unwrap();
    let out = corridor(&["status", "--config", path(&config), "--json"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: no gateway control socket at {} (from {})",
            path(&tmp.path().join("ctl.sock")),
            path(&config)
        )),
        "{stderr}"
    );
    // A socket left behind by a gateway that is gone.
    drop(std::os::unix::net::UnixListener::bind(tmp.path().join("ctl.sock")).unwrap());
    let out = corridor(&["status", "--config", path(&config)]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not running any more"), "{stderr}");
    // A broken --config is an error of its own.
    let broken = configs().join("broken-gateway/bad-listen.toml");
    let out = corridor(&["status", "--config", path(&broken)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(":5:10: listen: "), "{stderr}");
}
