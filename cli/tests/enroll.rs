//! `corridor controller` and `corridor gateway enroll` as a user runs them, without root: a
//! controller on loopback, a token, an enrollment with paths relative to the working directory.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions may panic: that is how a test fails"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn corridor(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corridor"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills the controller when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn enroll_with_relative_paths_then_a_token_is_spent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/policy");
    let port = free_port();
    std::fs::write(
        dir.join("controller.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\npolicy-dir = {:?}\nlong-poll = 2\n",
            policy.display().to_string()
        ),
    )
    .unwrap();
    ok(&corridor(
        dir,
        &["controller", "init", "--config", "controller.toml"],
    ));
    let controller = Running(
        Command::new(env!("CARGO_BIN_EXE_corridor"))
            .args(["controller", "run", "--config", "controller.toml"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the controller did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let token = ok(&corridor(
        dir,
        &[
            "controller",
            "token",
            "--config",
            "controller.toml",
            "--gateway",
            "edge-1",
        ],
    ));
    let token = token.trim();
    assert!(token.starts_with("corridor1."), "{token}");

    // The gateway's files live elsewhere; the paths are given relative to the working directory.
    let site = dir.join("site");
    std::fs::create_dir_all(site.join("etc")).unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let enroll = |token: &str| {
        corridor(
            &site,
            &[
                "gateway",
                "enroll",
                "--controller",
                &url,
                "--token",
                token,
                "--config",
                "etc/gateway.toml",
                "--key-dir",
                "keys",
                "--state-dir",
                "state",
            ],
        )
    };
    ok(&enroll(token));
    let config = std::fs::read_to_string(site.join("etc/gateway.toml")).unwrap();
    let keys = site.join("keys").canonicalize().unwrap();
    assert!(
        config.contains(&format!("key-dir = {:?}", keys.display().to_string())),
        "key-dir must be written absolute (the file resolves relative paths against itself):\n{config}"
    );
    assert!(config.contains("[controller]"), "{config}");
    // Private keys born here, 0600; only public keys left the machine.
    for name in ["control.key", "seal.key", "acme.key", "globex.key"] {
        let mode = std::fs::metadata(keys.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }

    // The same token again: spent, and the message says so.
    let again = enroll(token);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr).to_lowercase();
    assert!(
        err.contains("used"),
        "a reused token must be refused as used: {err}"
    );
    drop(controller);
}
