//! Gateways stop cleanly and come back: SIGTERM removes the app interfaces and exits 0; a
//! restarted edge or dc gateway carries traffic again without anyone doing anything. And a
//! gateway that cannot start says why: its WAN port in use, an app namespace missing, no root.
#![cfg(test)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use netns_tests::{Lab, corridor, require_tool, tcp_reaches, tcp_transfer, wait_for};

const ACME_TCP: &str = "10.20.100.1:5001";

fn acme_transfer(lab: &Lab, timeout: Duration) -> Result<(), String> {
    tcp_transfer(
        &lab.ns_name("acme-app"),
        &lab.ns_name("acme-cloud"),
        ACME_TCP.parse().unwrap(),
        1 << 20,
        timeout,
    )
}

/// Whether namespace `ns` has an interface named `ifname`.
fn has_interface(lab: &Lab, ns: &str, ifname: &str) -> bool {
    lab.sh(ns, &format!("ip link show dev {ifname}"))
        .status
        .success()
}

/// Waits until one ping gets through (one try per second); returns how long it took.
fn time_until_ping(lab: &Lab, ns: &str, addr: &str, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    wait_for(timeout, || {
        lab.sh(ns, &format!("ping -n -q -c 1 -W 1 {addr}"))
            .status
            .success()
            .then(|| start.elapsed())
    })
}

#[test]
fn edge_gateway_restarts() {
    let Some(mut w) = common::world("rsedge") else {
        return;
    };
    let acme_app = w.lab.ns_name("acme-app");
    let globex_app = w.lab.ns_name("globex-app");
    assert!(w.lab.ping(&acme_app, "10.20.100.1", 2), "acme ping");
    acme_transfer(&w.lab, Duration::from_secs(20)).unwrap_or_else(|e| panic!("acme tcp: {e}"));
    for ns in [&acme_app, &globex_app] {
        assert!(
            has_interface(&w.lab, ns, "corridor0"),
            "no corridor0 in {ns}"
        );
    }

    // SIGTERM: a clean exit, and the apps' interfaces and the control socket are gone.
    assert!(w.edge.stop(), "edge-1 did not exit within 5 s of SIGTERM");
    let status = wait_for(Duration::from_secs(2), || w.lab.exit_status(w.edge.pid))
        .expect("edge-1's exit status");
    let log = w.edge.log();
    assert!(status.success(), "edge-1 exited with {status}:\n{log}");
    assert!(
        log.contains("interfaces removed"),
        "edge-1 did not say it removed its interfaces:\n{log}"
    );
    for ns in [&acme_app, &globex_app] {
        assert!(
            !has_interface(&w.lab, ns, "corridor0"),
            "corridor0 is still in {ns} after SIGTERM:\n{}",
            w.lab.sh_ok(ns, "ip -o link")
        );
    }
    assert!(
        !w.edge.socket.exists(),
        "the control socket {} is still there",
        w.edge.socket.display()
    );
    // Nothing gets through while it is down.
    assert!(
        !tcp_reaches(
            &acme_app,
            &w.lab.ns_name("acme-cloud"),
            ACME_TCP.parse().unwrap(),
            Duration::from_secs(2)
        ),
        "a transfer got through with edge-1 stopped"
    );
    assert!(!w.lab.ping(&acme_app, "10.20.100.1", 1));

    // Started again with the same configuration and keys: traffic resumes by itself.
    let restarted = Instant::now();
    w.edge = w
        .lab
        .gateway(&w.edge_ns, "edge-1", "0.0.0.0:51820", &w.policy);
    let took = time_until_ping(&w.lab, &acme_app, "10.20.100.1", Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "acme traffic did not resume after edge-1 restarted\nedge:\n{}\ndc:\n{}",
                w.edge.log(),
                w.dc.log()
            )
        });
    eprintln!("acme traffic resumed {took:?} after edge-1 was restarted");
    acme_transfer(&w.lab, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("acme tcp after edge-1 restarted: {e}"));
    assert!(
        w.lab.ping(&globex_app, "10.20.100.1", 2),
        "globex ping after edge-1 restarted"
    );
    // dc-1 took the new session: its handshake with edge-1 is younger than the restart.
    let hs =
        w.dc.peer("acme", "edge-1")
            .and_then(|p| p.last_handshake)
            .expect("dc-1 has a handshake with edge-1");
    // (Handshake ages come from boringtun's timer ticks, 250 ms apart: allow a second.)
    let since = restarted.elapsed();
    assert!(
        hs <= since + Duration::from_secs(1),
        "dc-1's handshake with edge-1 ({hs:?} ago) is older than the restart ({since:?} ago)"
    );
}

#[test]
fn dc_gateway_restarts() {
    let Some(mut w) = common::world("rsdc") else {
        return;
    };
    let acme_app = w.lab.ns_name("acme-app");
    let acme_cloud = w.lab.ns_name("acme-cloud");
    assert!(w.lab.ping(&acme_app, "10.20.100.1", 2), "acme ping");
    acme_transfer(&w.lab, Duration::from_secs(20)).unwrap_or_else(|e| panic!("acme tcp: {e}"));

    assert!(w.dc.stop(), "dc-1 did not exit within 5 s of SIGTERM");
    let status = wait_for(Duration::from_secs(2), || w.lab.exit_status(w.dc.pid))
        .expect("dc-1's exit status");
    assert!(
        status.success(),
        "dc-1 exited with {status}:\n{}",
        w.dc.log()
    );
    assert!(
        !has_interface(&w.lab, &acme_cloud, "corridor0"),
        "corridor0 is still in {acme_cloud} after SIGTERM"
    );
    assert!(
        !w.lab.ping(&acme_app, "10.20.100.1", 1),
        "a ping got through with dc-1 stopped"
    );

    // dc-1 comes back knowing nothing of edge-1 (which has no endpoint: dc-1 cannot call it).
    // edge-1 keeps sending on its old session, which dc-1 no longer knows, and must notice
    // the silence and handshake again (WireGuard: no answer within 15 s of sending data).
    let restarted = Instant::now();
    w.dc = w.lab.gateway(&w.dc_ns, "dc-1", "0.0.0.0:51820", &w.policy);
    let took = time_until_ping(&w.lab, &acme_app, "10.20.100.1", Duration::from_secs(40))
        .unwrap_or_else(|| {
            panic!(
                "acme traffic did not resume after dc-1 restarted\nedge:\n{}\ndc:\n{}\nedge status: {:?}",
                w.edge.log(),
                w.dc.log(),
                w.edge.status()
            )
        });
    eprintln!("acme traffic resumed {took:?} after dc-1 was restarted");
    acme_transfer(&w.lab, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("acme tcp after dc-1 restarted: {e}"));
    let peer = w.dc.peer("acme", "edge-1").expect("dc-1 knows edge-1");
    assert_eq!(
        peer.endpoint,
        Some("192.168.50.1:51820".parse().unwrap()),
        "{peer:?}"
    );
    assert!(
        peer.last_handshake
            .is_some_and(|h| h <= restarted.elapsed() + Duration::from_secs(1)),
        "dc-1's handshake with edge-1 is older than its restart: {peer:?}"
    );
}

#[test]
fn startup_errors_are_clear() {
    let Some(mut lab) = Lab::new("rserr") else {
        return;
    };
    let edge_ns = lab.ns("edge");
    for app in ["acme-app", "globex-app"] {
        lab.ns(app);
    }
    let dc_ns = lab.ns("dc");
    lab.link(&edge_ns, "192.168.50.1/24", &dc_ns, "192.168.50.2/24");
    let policy = lab.policy(&[
        ("gateways.toml", common::GATEWAYS),
        ("tenants/acme.toml", common::ACME),
        ("tenants/globex.toml", common::GLOBEX),
    ]);
    // The dc side's keys are needed for the policy to name them.
    let _ = lab.public_key("dc-1", "acme");
    let bin = corridor().to_string_lossy().into_owned();
    let run = |lab: &Lab, config: &Path| {
        let config = config.to_string_lossy().into_owned();
        lab.run_until_exit(
            &edge_ns,
            &[&bin, "gateway", "run", "--config", &config],
            Duration::from_secs(15),
        )
    };

    // A policy whose app namespace is missing: globex's (acme's comes first and exists, so
    // this also shows that a failed start leaves no interface behind).
    let missing = lab.ns_name("no-such-ns");
    let broken_globex = common::GLOBEX.replace("@ns(globex-app)", &missing);
    let missing_policy = lab.dir().join("policy-missing");
    for (rel, text) in [
        ("gateways.toml", common::GATEWAYS),
        ("tenants/acme.toml", common::ACME),
        ("tenants/globex.toml", broken_globex.as_str()),
    ] {
        lab.write(&format!("policy-missing/{rel}"), &lab.expand(text));
    }
    let config = lab.gateway_config(
        "edge-1-missing.toml",
        "edge-1",
        "0.0.0.0:51820",
        &missing_policy,
        &lab.dir().join("missing.sock"),
    );
    let (status, log) = run(&lab, &config);
    let status = status.expect("a gateway with a missing namespace did not exit within 15 s");
    assert!(
        !status.success(),
        "a gateway with a missing namespace exited 0:\n{log}"
    );
    assert!(
        log.contains(&missing),
        "the error does not name the missing namespace {missing}:\n{log}"
    );
    let acme_app = lab.ns_name("acme-app");
    assert!(
        !has_interface(&lab, &acme_app, "corridor0"),
        "the failed start left corridor0 in {acme_app}"
    );
    eprintln!("missing namespace:\n{log}");

    // The WAN port in use: a second gateway on the same address in the same namespace.
    let first = lab.gateway(&edge_ns, "edge-1", "0.0.0.0:51820", &policy);
    let config = lab.gateway_config(
        "edge-1-second.toml",
        "edge-1",
        "0.0.0.0:51820",
        &policy,
        &lab.dir().join("second.sock"),
    );
    let (status, log) = run(&lab, &config);
    let status = status.expect("a gateway whose port is in use did not exit within 15 s");
    assert!(
        !status.success(),
        "a second gateway on the same port exited 0:\n{log}"
    );
    assert!(
        log.contains("in use") && log.contains("51820"),
        "the error does not say that port 51820 is in use:\n{log}"
    );
    eprintln!("port in use:\n{log}");
    // The first one is unharmed: still answering, its interfaces still there.
    let st = first.status();
    assert_eq!(st.interfaces.len(), 2, "{st:?}");
    assert!(has_interface(&lab, &acme_app, "corridor0"));

    // Without root: only checkable by dropping root for the run (setpriv, util-linux). The
    // configuration must be readable by nobody, so it goes to a world-readable directory.
    require_tool("setpriv", "util-linux");
    // (Not under TMPDIR, which may itself be private: /dev/shm is world-searchable.)
    let shared = if Path::new("/dev/shm").is_dir() {
        Path::new("/dev/shm")
    } else {
        Path::new("/tmp")
    };
    let open = tempfile::Builder::new()
        .prefix("corridor-rserr-open-")
        .tempdir_in(shared)
        .unwrap();
    std::fs::set_permissions(
        open.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = open.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"edge-1\"\nkey-dir = \"{}\"\nlisten = \"0.0.0.0:51830\"\ncontrol-socket = \"{}\"\npolicy = \"{}\"\n",
            lab.key_dir("edge-1").display(),
            open.path().join("gw.sock").display(),
            policy.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let config_s = config.to_string_lossy().into_owned();
    let (status, log) = lab.run_until_exit(
        &edge_ns,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            &bin,
            "gateway",
            "run",
            "--config",
            &config_s,
        ],
        Duration::from_secs(15),
    );
    let status = status.expect("the gateway run as nobody did not exit within 15 s");
    assert!(!status.success(), "the gateway ran as nobody:\n{log}");
    assert!(
        log.contains("CAP_NET_ADMIN") && log.contains("root"),
        "the error does not say that it needs root (CAP_NET_ADMIN):\n{log}"
    );
    eprintln!("not root:\n{log}");
}
