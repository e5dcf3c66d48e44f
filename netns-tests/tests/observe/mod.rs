//! Helpers of the metrics and self-heal tests: gateways with extra gateway.toml lines, the
//! standard world built with them, and scraping `/metrics` from inside a gateway's namespace.
#![cfg(test)]
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use netns_tests::{Gateway, Lab, in_ns};

use crate::common::{self, World};

/// Where the tests' gateways serve metrics (loopback of each gateway's own namespace).
pub(crate) const METRICS: &str = "127.0.0.1:9477";

/// Writes the configuration of gateway `name` with `extra` lines appended and starts it in
/// `ns`, without waiting for it.
pub(crate) fn spawn_gateway_with(
    lab: &mut Lab,
    ns: &str,
    name: &str,
    listen: &str,
    policy: &Path,
    extra: &str,
) -> Gateway {
    let socket = lab.dir().join(format!("{name}.sock"));
    let config = lab.gateway_config(&format!("{name}.toml"), name, listen, policy, &socket);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    lab.spawn_gateway(ns, name, config, socket)
}

/// Like `Lab::gateway`, with `extra` gateway.toml lines; waits until it answers.
pub(crate) fn gateway_with(
    lab: &mut Lab,
    ns: &str,
    name: &str,
    listen: &str,
    policy: &Path,
    extra: &str,
) -> Gateway {
    let gw = spawn_gateway_with(lab, ns, name, listen, policy, extra);
    gw.wait_ready(Duration::from_secs(15));
    gw
}

/// The standard world (common/mod.rs) with extra gateway.toml lines for dc-1 and edge-1;
/// the app namespaces in `skip` are not created.
pub(crate) fn world_with(
    test: &str,
    dc_extra: &str,
    edge_extra: &str,
    skip: &[&str],
) -> Option<World> {
    let mut lab = Lab::new(test)?;
    let edge_ns = lab.ns("edge");
    let dc_ns = lab.ns("dc");
    for app in ["acme-app", "globex-app", "acme-cloud", "globex-cloud"] {
        if !skip.contains(&app) {
            lab.ns(app);
        }
    }
    lab.link(&edge_ns, "192.168.50.1/24", &dc_ns, "192.168.50.2/24");
    let policy = lab.policy(&[
        ("gateways.toml", common::GATEWAYS),
        ("tenants/acme.toml", common::ACME),
        ("tenants/globex.toml", common::GLOBEX),
    ]);
    let dc = gateway_with(&mut lab, &dc_ns, "dc-1", "0.0.0.0:51820", &policy, dc_extra);
    let edge = gateway_with(
        &mut lab,
        &edge_ns,
        "edge-1",
        "0.0.0.0:51820",
        &policy,
        edge_extra,
    );
    Some(World {
        lab,
        policy,
        edge,
        dc,
        edge_ns,
        dc_ns,
    })
}

/// One HTTP/1.0 exchange with the metrics listener at `addr` in namespace `ns`: (status line,
/// headers and body).
pub(crate) fn http(ns: &str, addr: &str, request: &str) -> (String, String) {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut conn = in_ns(ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })
    .unwrap_or_else(|e| panic!("connect to {addr} in {ns}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("reading the answer from {addr}: {e}"));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.to_owned(), body.to_owned())
}

/// `GET /metrics` from the gateway's namespace; panics unless it is a 200.
pub(crate) fn scrape(gw: &Gateway) -> Metrics {
    let (head, body) = http(&gw.ns, METRICS, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}\n{body}");
    Metrics(body)
}

/// A scraped exposition.
#[derive(Debug, Clone)]
pub(crate) struct Metrics(pub(crate) String);

impl Metrics {
    /// The value of the sample `name{labels}` (labels in the order the gateway writes them,
    /// `k="v",...`; empty for none), if present.
    pub(crate) fn get(&self, name: &str, labels: &str) -> Option<f64> {
        let key = if labels.is_empty() {
            format!("{name} ")
        } else {
            format!("{name}{{{labels}}} ")
        };
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .map(|v| v.trim().parse().unwrap())
    }

    /// Like [`Metrics::get`]; panics (showing the exposition) when absent.
    pub(crate) fn must(&self, name: &str, labels: &str) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{}", self.0))
    }
}

/// Calls `f` every 50 ms until it is true, for at most `timeout`; how long it took.
pub(crate) fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
