//! SIGHUP reloads the policy: atomically, without disturbing what runs.
//!
//! A reload that adds a tenant leaves a running TCP stream of another tenant intact and
//! unstalled and keeps its WireGuard session (the handshake is not redone); the new tenant
//! works at once. A reload that cannot be applied (a broken policy file, an app namespace that
//! does not exist) is refused: counted, explained in the status, the running configuration and
//! its traffic unchanged, and a later good reload works.
#![cfg(test)]

mod common;

use std::time::{Duration, Instant};

use netns_tests::{Gateway, Lab, StreamReport, tcp_reaches, tcp_stream, tcp_transfer, wait_for};

const NEWCO: &str = r#"
name = "newco"
address-space = ["10.20.0.0/16"]

[[endpoint]]
name = "newco-app"
gateway = "edge-1"
netns = "@ns(newco-app)"
addresses = ["10.20.1.10/32"]

[[endpoint]]
name = "newco-cloud"
gateway = "dc-1"
netns = "@ns(newco-cloud)"
addresses = ["10.20.100.1/32"]

[[allow]]
from = "newco-app"
to = "newco-cloud"
protocol = "tcp"
ports = ["8000"]

[[allow]]
from = "newco-app"
to = "newco-cloud"
protocol = "icmp"
"#;

/// gateways.toml with newco's keys on both gateways.
fn gateways_with_newco() -> String {
    common::GATEWAYS
        .replace(
            "globex = \"@key(edge-1,globex)\" }",
            "globex = \"@key(edge-1,globex)\", newco = \"@key(edge-1,newco)\" }",
        )
        .replace(
            "globex = \"@key(dc-1,globex)\" }",
            "globex = \"@key(dc-1,globex)\", newco = \"@key(dc-1,newco)\" }",
        )
}

/// Sends SIGHUP and waits until the gateway has counted the reload (done or refused).
fn reload(gw: &Gateway) {
    let before = gw.status();
    gw.reload();
    wait_for(Duration::from_secs(15), || {
        let now = gw.status();
        (now.reloads + now.reload_failures > before.reloads + before.reload_failures).then_some(())
    })
    .unwrap_or_else(|| panic!("{} did not reload within 15 s:\n{}", gw.name, gw.log()));
}

/// The session of `gw` with `peer` in `tenant`: when its last handshake completed.
fn handshake_at(gw: &Gateway, tenant: &str, peer: &str) -> Instant {
    let ago = gw
        .peer(tenant, peer)
        .and_then(|p| p.last_handshake)
        .unwrap_or_else(|| panic!("{}: no session with {peer} in {tenant}", gw.name));
    Instant::now() - ago
}

/// Whether two handshake instants are the same one (status has second-ish resolution).
fn same_handshake(a: Instant, b: Instant) -> bool {
    let d = if a > b { a - b } else { b - a };
    d < Duration::from_millis(1500)
}

fn stream_ok(run: Result<StreamReport, String>, what: &str) -> StreamReport {
    let report = run.unwrap_or_else(|e| panic!("{what}: the stream broke: {e}"));
    eprintln!("{what}: {report:?}");
    assert!(report.bytes > 4 << 20, "{what}: only {report:?}");
    report
}

#[test]
fn reload_adding_a_tenant_keeps_running_streams() {
    let Some(mut w) = common::world("rladd") else {
        return;
    };
    let newco_app = w.lab.ns("newco-app");
    let newco_cloud = w.lab.ns("newco-cloud");
    let lab = &w.lab;
    let acme_app = lab.ns_name("acme-app");
    let acme_cloud = lab.ns_name("acme-cloud");
    assert!(lab.ping(&acme_app, "10.20.100.1", 2), "acme ping");
    assert!(lab.ping(&lab.ns_name("globex-app"), "10.20.100.1", 2));
    // newco does not exist yet.
    assert!(
        !lab.sh(&newco_app, "ip link show corridor0")
            .status
            .success()
    );

    let sessions = |dc: &Gateway, edge: &Gateway| {
        [
            handshake_at(dc, "acme", "edge-1"),
            handshake_at(dc, "globex", "edge-1"),
            handshake_at(edge, "acme", "dc-1"),
            handshake_at(edge, "globex", "dc-1"),
        ]
    };
    let before = sessions(&w.dc, &w.edge);

    // ~12 s of acme stream at 2 MB/s, every byte checked; the reload happens in its middle.
    let stream = tcp_stream(
        &acme_app,
        &acme_cloud,
        "10.20.100.1:5010".parse().unwrap(),
        Duration::from_secs(12),
        2 << 20,
    )
    .unwrap_or_else(|e| panic!("acme stream: {e}"));
    std::thread::sleep(Duration::from_secs(3));
    lab.policy(&[
        ("gateways.toml", gateways_with_newco().as_str()),
        ("tenants/newco.toml", NEWCO),
    ]);
    reload(&w.dc);
    reload(&w.edge);
    for gw in [&w.dc, &w.edge] {
        let st = gw.status();
        assert_eq!(
            (st.reloads, st.reload_failures),
            (1, 0),
            "{}: {:?}\n{}",
            gw.name,
            st.last_reload_error,
            gw.log()
        );
        assert!(
            st.engine.tenants.iter().any(|t| t.name == "newco"),
            "{} does not serve newco after the reload",
            gw.name
        );
        // Its own account of the reload: acme's and globex's sessions kept, newco's new.
        let log = gw.log();
        let line = log
            .lines()
            .find(|l| l.contains(" reloaded "))
            .unwrap_or_else(|| panic!("{} did not log the reload:\n{log}", gw.name));
        assert!(
            line.contains("kept=2") && line.contains("new=1") && line.contains("dropped=0"),
            "{}: {line}",
            gw.name
        );
    }

    // The new tenant works right away (while the acme stream still runs).
    assert!(
        lab.sh(&newco_app, "ip link show corridor0")
            .status
            .success(),
        "no corridor0 in {newco_app} after the reload"
    );
    assert!(
        wait_for(Duration::from_secs(5), || lab
            .ping(&newco_app, "10.20.100.1", 1)
            .then_some(()))
        .is_some(),
        "newco ping after the reload\nedge:\n{}",
        w.edge.log()
    );
    tcp_transfer(
        &newco_app,
        &newco_cloud,
        "10.20.100.1:8000".parse().unwrap(),
        1 << 20,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("newco tcp after the reload: {e}"));
    // newco got only what newco's policy allows: acme's port is not open for it.
    assert!(
        !tcp_reaches(
            &newco_app,
            &newco_cloud,
            "10.20.100.1:5010".parse().unwrap(),
            Duration::from_secs(2),
        ),
        "newco reached a port only acme's policy allows"
    );

    // acme's stream went through intact and without a stall.
    let report = stream_ok(stream.join(), "acme stream across the reload");
    assert!(
        report.max_stall < Duration::from_secs(2),
        "the acme stream stalled for {:?} across the reload",
        report.max_stall
    );
    // ... and the existing sessions were kept: no handshake since before the reload.
    let after = sessions(&w.dc, &w.edge);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            same_handshake(*b, *a),
            "session {i} (dc acme, dc globex, edge acme, edge globex) was renewed by the reload: handshake {:?} before, {:?} after",
            b.elapsed(),
            a.elapsed()
        );
    }
}

/// Writes the standard policy files again (undoing a broken one).
fn restore_policy(lab: &Lab) {
    lab.policy(&[
        ("gateways.toml", common::GATEWAYS),
        ("tenants/acme.toml", common::ACME),
        ("tenants/globex.toml", common::GLOBEX),
    ]);
}

#[test]
fn refused_reloads_keep_the_running_config() {
    let Some(w) = common::world("rlbad") else {
        return;
    };
    let lab = &w.lab;
    let acme_app = lab.ns_name("acme-app");
    let globex_app = lab.ns_name("globex-app");
    let globex_cloud = lab.ns_name("globex-cloud");
    assert!(lab.ping(&acme_app, "10.20.100.1", 2), "acme ping");
    let edge_ifaces = w.edge.status().interfaces;
    let dc_ifaces = w.dc.status().interfaces;
    let acme_session = handshake_at(&w.dc, "acme", "edge-1");

    let stream = tcp_stream(
        &acme_app,
        &lab.ns_name("acme-cloud"),
        "10.20.100.1:5010".parse().unwrap(),
        Duration::from_secs(10),
        2 << 20,
    )
    .unwrap_or_else(|e| panic!("acme stream: {e}"));

    // 1. A broken tenant file (a port out of range) that also drops globex's icmp rule: if
    //    anything of it were applied, globex's ping would stop.
    let broken = common::GLOBEX
        .replace("ports = [\"7000\"]", "ports = [\"70000\"]")
        .replace(
            "[[allow]]\nfrom = \"globex-app\"\nto = \"globex-cloud\"\nprotocol = \"icmp\"\n",
            "",
        );
    assert_ne!(broken, common::GLOBEX);
    lab.policy(&[("tenants/globex.toml", broken.as_str())]);
    for gw in [&w.edge, &w.dc] {
        reload(gw);
        let st = gw.status();
        assert_eq!((st.reloads, st.reload_failures), (0, 1), "{}", gw.name);
        let err = st.last_reload_error.unwrap_or_default();
        assert!(
            err.contains("tenants/globex.toml"),
            "{}: the reload error does not name the broken file: {err}",
            gw.name
        );
        assert!(
            gw.log().contains("reload refused"),
            "{} did not log the refusal:\n{}",
            gw.name,
            gw.log()
        );
    }
    assert_eq!(w.edge.status().interfaces, edge_ifaces);
    assert_eq!(w.dc.status().interfaces, dc_ifaces);
    assert!(
        lab.ping(&globex_app, "10.20.100.1", 2),
        "globex ping after a refused reload"
    );
    tcp_transfer(
        &globex_app,
        &globex_cloud,
        "10.20.100.1:7000".parse().unwrap(),
        1 << 20,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("globex tcp after a refused reload: {e}"));

    // 2. A valid policy that cannot be applied here: a new tenant whose app namespace does
    //    not exist. edge-1 must refuse it whole (no half-made tenant, no stray interface).
    restore_policy(lab);
    let missing = lab.ns_name("missing");
    let newco = NEWCO.replace("@ns(newco-app)", &missing);
    lab.policy(&[
        ("gateways.toml", gateways_with_newco().as_str()),
        ("tenants/newco.toml", newco.as_str()),
    ]);
    reload(&w.edge);
    let st = w.edge.status();
    assert_eq!((st.reloads, st.reload_failures), (0, 2));
    let err = st.last_reload_error.clone().unwrap_or_default();
    assert!(
        err.contains(&missing),
        "the reload error does not name the missing namespace {missing}: {err}"
    );
    assert!(
        st.engine.tenants.iter().all(|t| t.name != "newco"),
        "edge-1 serves newco after a refused reload"
    );
    assert_eq!(st.interfaces, edge_ifaces);
    assert!(lab.ping(&acme_app, "10.20.100.1", 2), "acme ping");

    // 3. The good policy again: accepted, the error cleared.
    std::fs::remove_file(lab.dir().join("policy/tenants/newco.toml")).unwrap();
    restore_policy(lab);
    for gw in [&w.edge, &w.dc] {
        reload(gw);
        let st = gw.status();
        assert_eq!(st.reloads, 1, "{}: {:?}", gw.name, st.last_reload_error);
        assert_eq!(st.last_reload_error, None);
    }

    let report = stream_ok(stream.join(), "acme stream across refused reloads");
    assert!(
        report.max_stall < Duration::from_secs(2),
        "the acme stream stalled for {:?}",
        report.max_stall
    );
    assert!(
        same_handshake(acme_session, handshake_at(&w.dc, "acme", "edge-1")),
        "acme's session was renewed"
    );
    assert!(
        lab.ping(&globex_app, "10.20.100.1", 2),
        "globex ping at the end"
    );
}

/// A reload that moves an existing app to a namespace that does not exist cannot be applied:
/// it must be refused like any other, and the app keep its interface and its traffic.
#[test]
fn reload_moving_an_app_to_a_missing_namespace_is_refused() {
    let Some(w) = common::world("rlmove") else {
        return;
    };
    let lab = &w.lab;
    let globex_app = lab.ns_name("globex-app");
    assert!(lab.ping(&globex_app, "10.20.100.1", 2), "globex ping");
    let edge_ifaces = w.edge.status().interfaces;

    let missing = lab.ns_name("missing");
    let moved = common::GLOBEX.replace("@ns(globex-app)", &missing);
    lab.policy(&[("tenants/globex.toml", moved.as_str())]);
    reload(&w.edge);
    let st = w.edge.status();
    let log = w.edge.log();
    assert!(
        lab.sh(&globex_app, "ip link show corridor0")
            .status
            .success(),
        "a reload that could not be applied removed globex's interface (reloads {}, refused {}, interface errors {}, last error {:?}):\n{log}",
        st.reloads,
        st.reload_failures,
        st.io.interface_errors,
        st.last_reload_error
    );
    assert_eq!(
        (st.reloads, st.reload_failures),
        (0, 1),
        "a reload that could not be applied was not refused:\n{log}"
    );
    assert!(
        st.last_reload_error
            .as_deref()
            .is_some_and(|e| e.contains(&missing)),
        "{:?}",
        st.last_reload_error
    );
    assert_eq!(st.interfaces, edge_ifaces);
    assert!(
        lab.ping(&globex_app, "10.20.100.1", 2),
        "globex ping after the refused reload"
    );
}
