//! Per-file parsing: a spanned TOML tree into raw structs that keep spans for cross-checks.
//! Every problem is reported to the sink; what could not be understood is left out (or marked
//! invalid) so that cross-checks do not pile follow-up errors on it.

use std::net::SocketAddr;
use std::ops::Range;

use dataplane::config::{PortRange, Protocol};
use ip_network::IpNetwork;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Mode;
use super::tree::{
    At, Opt, Sink, Table, array, boolean, check_name, index, integer, join, parse_port_range,
    parse_prefix, parse_public_key, parse_socket_addr, string, table, tables,
};

#[derive(Debug)]
pub(super) struct RawGateway {
    pub(super) field: String,
    pub(super) span: Range<usize>,
    /// Valid name, if any.
    pub(super) name: Option<At<String>>,
    pub(super) endpoint: Opt<SocketAddr>,
    pub(super) keys_span: Option<Range<usize>>,
    pub(super) keys: Vec<RawKey>,
    /// Explicit keepalive (`Some(None)` for `keepalive = 0`).
    pub(super) keepalive: Option<Option<u16>>,
    pub(super) pin_endpoint: Option<At<bool>>,
}

#[derive(Debug)]
pub(super) struct RawKey {
    /// The tenant name as written (the key of the entry).
    pub(super) tenant: At<String>,
    /// The decoded key; `None` when malformed (an error in strict mode).
    pub(super) key: Option<[u8; 32]>,
}

#[derive(Debug)]
pub(super) struct RawTenant {
    /// Valid name, if any.
    pub(super) name: Option<At<String>>,
    pub(super) address_space: Vec<At<IpNetwork>>,
    /// False when some address-space entry was invalid (containment checks are then skipped).
    pub(super) space_complete: bool,
    pub(super) conntrack_limit: usize,
    pub(super) endpoints: Vec<RawEndpoint>,
    pub(super) rules: Vec<RawRule>,
}

#[derive(Debug)]
pub(super) struct RawEndpoint {
    pub(super) field: String,
    pub(super) span: Range<usize>,
    pub(super) name: Option<At<String>>,
    pub(super) kind: Option<RawKind>,
    pub(super) addresses: Vec<At<IpNetwork>>,
    pub(super) routes: Vec<At<IpNetwork>>,
}

#[derive(Debug)]
pub(super) enum RawKind {
    Gateway {
        gateway: At<String>,
        netns: At<String>,
        /// The interface name as written (absent: the default).
        interface: Opt<At<String>>,
    },
    WireGuard {
        key: Option<At<[u8; 32]>>,
        endpoint: Opt<SocketAddr>,
        pin_endpoint: Option<At<bool>>,
    },
}

#[derive(Debug)]
pub(super) struct RawRule {
    pub(super) field: String,
    pub(super) span: Range<usize>,
    pub(super) from: Option<At<String>>,
    pub(super) to: Option<At<String>>,
    pub(super) protocol: Option<Protocol>,
    pub(super) ports: Vec<PortRange>,
}

const GATEWAYS_ROOT: &[&str] = &["gateway"];
const GATEWAY_FIELDS: &[&str] = &["name", "endpoint", "keys", "keepalive", "pin-endpoint"];
const TENANT_FIELDS: &[&str] = &[
    "name",
    "address-space",
    "conntrack-limit",
    "endpoint",
    "allow",
];
const ENDPOINT_FIELDS: &[&str] = &[
    "name",
    "gateway",
    "netns",
    "interface",
    "wireguard",
    "addresses",
    "routes",
];
const WIREGUARD_FIELDS: &[&str] = &["public-key", "endpoint", "pin-endpoint"];
const ALLOW_FIELDS: &[&str] = &["from", "to", "protocol", "ports"];

fn root<'a, 'i>(doc: &'a Spanned<DeTable<'i>>, known: &'static [&'static str]) -> Table<'a, 'i> {
    Table::new(doc.get_ref(), 0..0, String::new(), known)
}

fn socket(
    sink: &mut Sink<'_, '_>,
    v: Option<&Spanned<DeValue<'_>>>,
    field: &str,
) -> Opt<SocketAddr> {
    let Some(v) = v else { return Opt::Absent };
    let Some(s) = string(sink, v, field, "\"192.168.50.1:51820\"") else {
        return Opt::Invalid;
    };
    match parse_socket_addr(&s.value) {
        Ok(a) => Opt::Valid(a),
        Err(m) => {
            sink.error(&s.span, field, m);
            Opt::Invalid
        }
    }
}

fn flag(
    sink: &mut Sink<'_, '_>,
    v: Option<&Spanned<DeValue<'_>>>,
    field: &str,
) -> Option<At<bool>> {
    let v = v?;
    boolean(sink, v, field).map(|b| At {
        value: b,
        span: v.span(),
        field: field.to_owned(),
    })
}

/// A valid name field, or `None` (reported).
fn name(sink: &mut Sink<'_, '_>, t: &Table<'_, '_>, what: &str) -> Option<At<String>> {
    let v = t.require(sink, "name", "\"...\"")?;
    let n = string(sink, v, &join(&t.field, "name"), "\"edge-1\"")?;
    check_name(sink, &n, what).then_some(n)
}

pub(super) fn gateways(
    sink: &mut Sink<'_, '_>,
    doc: &Spanned<DeTable<'_>>,
    mode: Mode,
) -> Vec<RawGateway> {
    let r = root(doc, GATEWAYS_ROOT);
    r.check_unknown(sink);
    let Some(list) = r.require(sink, "gateway", "[[gateway]] tables (one per gateway)") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, mut t) in tables(sink, list, "gateway", GATEWAY_FIELDS) {
        let name = name(sink, &t, "gateway");
        let field = match &name {
            Some(n) => format!("gateway \"{}\"", n.value),
            None => index("gateway", i),
        };
        t.field.clone_from(&field);
        t.check_unknown(sink);
        let endpoint = socket(sink, t.get("endpoint"), &join(&field, "endpoint"));
        let mut keys = Vec::new();
        let mut keys_span = None;
        if let Some(v) = t.get("keys") {
            let kf = join(&field, "keys");
            if let Some(DeValue::Table(kt)) = Some(v.get_ref()) {
                keys_span = Some(v.span());
                let mut entries: Vec<_> = kt.iter().collect();
                entries.sort_by_key(|(k, _)| k.span().start);
                for (k, kv) in entries {
                    let tenant_name: &str = k.get_ref();
                    let f = join(&kf, tenant_name);
                    let tenant = At {
                        value: tenant_name.to_owned(),
                        span: k.span(),
                        field: f.clone(),
                    };
                    let key = match kv.get_ref() {
                        DeValue::String(s) => match parse_public_key(s) {
                            Ok(key) => Some(key),
                            Err(m) => {
                                if mode == Mode::Strict {
                                    sink.error(&kv.span(), &f, m);
                                }
                                None
                            }
                        },
                        other => {
                            if mode == Mode::Strict {
                                sink.error(
                                    &kv.span(),
                                    &f,
                                    format!(
                                        "expected a string (a base64 public key), found {}",
                                        super::tree::type_name(other)
                                    ),
                                );
                            }
                            None
                        }
                    };
                    keys.push(RawKey { tenant, key });
                }
            } else {
                let _ = table(
                    sink,
                    v,
                    &kf,
                    &[],
                    "keys = { acme = \"<base64 public key>\" }",
                );
            }
        }
        let mut keepalive = None;
        if let Some(v) = t.get("keepalive") {
            let f = join(&field, "keepalive");
            if let Some(n) = integer(sink, v, &f) {
                match u16::try_from(n) {
                    Ok(0) => keepalive = Some(None),
                    Ok(s) => keepalive = Some(Some(s)),
                    Err(_) => sink.error(
                        &v.span(),
                        &f,
                        format!("{n} is out of range; give seconds from 1 to 65535 (0 turns keepalive off)"),
                    ),
                }
            }
        }
        let pin_endpoint = flag(sink, t.get("pin-endpoint"), &join(&field, "pin-endpoint"));
        if let (Some(pin), Opt::Absent) = (&pin_endpoint, endpoint)
            && pin.value
        {
            sink.error(
                &pin.span,
                &pin.field,
                "a gateway without `endpoint` cannot be pinned (its peers learn its address from its packets); add endpoint or remove pin-endpoint",
            );
        }
        out.push(RawGateway {
            field,
            span: t.span.clone(),
            name,
            endpoint,
            keys_span,
            keys,
            keepalive,
            pin_endpoint,
        });
    }
    out
}

fn prefixes(
    sink: &mut Sink<'_, '_>,
    v: &Spanned<DeValue<'_>>,
    field: &str,
    complete: &mut bool,
) -> Vec<At<IpNetwork>> {
    let Some(items) = array(sink, v, field, "[\"10.20.1.0/24\"]") else {
        *complete = false;
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = index(field, i);
        let Some(s) = string(sink, item, &f, "\"10.20.1.0/24\"") else {
            *complete = false;
            continue;
        };
        match parse_prefix(&s.value) {
            Ok(p) => out.push(At {
                value: p,
                span: s.span,
                field: f,
            }),
            Err(m) => {
                *complete = false;
                sink.error(&s.span, &f, m);
            }
        }
    }
    out
}

pub(super) fn tenant(sink: &mut Sink<'_, '_>, doc: &Spanned<DeTable<'_>>) -> RawTenant {
    let r = root(doc, TENANT_FIELDS);
    r.check_unknown(sink);
    let name = name(sink, &r, "tenant");
    let mut space_complete = true;
    let mut address_space = Vec::new();
    match r.require(sink, "address-space", "[\"10.20.0.0/16\"]") {
        Some(v) => {
            address_space = prefixes(sink, v, "address-space", &mut space_complete);
            if space_complete && address_space.is_empty() {
                sink.error(
                    &v.span(),
                    "address-space",
                    "address-space is empty; list the prefixes the tenant's endpoints use, e.g. [\"10.20.0.0/16\"]",
                );
                space_complete = false;
            }
        }
        None => space_complete = false,
    }
    let mut conntrack_limit = dataplane::config::DEFAULT_CONNTRACK_LIMIT;
    if let Some(v) = r.get("conntrack-limit")
        && let Some(n) = integer(sink, v, "conntrack-limit")
    {
        match usize::try_from(n) {
            Ok(n) if n > 0 => conntrack_limit = n,
            _ => sink.error(
                &v.span(),
                "conntrack-limit",
                format!("{n} is not a positive number of connections; give e.g. 16384"),
            ),
        }
    }
    let endpoints = match r.get("endpoint") {
        Some(v) => tables(sink, v, "endpoint", ENDPOINT_FIELDS)
            .into_iter()
            .map(|(i, t)| endpoint(sink, i, t))
            .collect(),
        None => Vec::new(),
    };
    let rules = match r.get("allow") {
        Some(v) => tables(sink, v, "allow", ALLOW_FIELDS)
            .into_iter()
            .map(|(i, t)| rule(sink, i, &t))
            .collect(),
        None => Vec::new(),
    };
    RawTenant {
        name,
        address_space,
        space_complete,
        conntrack_limit,
        endpoints,
        rules,
    }
}

fn endpoint(sink: &mut Sink<'_, '_>, i: usize, mut t: Table<'_, '_>) -> RawEndpoint {
    let name = name(sink, &t, "endpoint");
    let field = match &name {
        Some(n) => format!("endpoint \"{}\"", n.value),
        None => index("endpoint", i),
    };
    t.field.clone_from(&field);
    t.check_unknown(sink);
    let t = &t;
    let gateway = t
        .get("gateway")
        .and_then(|v| string(sink, v, &join(&field, "gateway"), "\"edge-1\""));
    let netns = t
        .get("netns")
        .and_then(|v| string(sink, v, &join(&field, "netns"), "\"acme-meter\""));
    if let Some(n) = &netns {
        let s = n.value.as_str();
        let bad = if s.is_empty() {
            Some("is empty")
        } else if s.contains('\0') {
            Some("contains a NUL byte")
        } else if s.contains('/') && !s.starts_with('/') {
            Some("is a relative path")
        } else if s == "." || s == ".." {
            Some("is not a namespace name")
        } else {
            None
        };
        if let Some(why) = bad {
            sink.error(
                &n.span,
                &n.field,
                format!("netns \"{s}\" {why}; give a name under /var/run/netns (e.g. \"acme-meter\") or an absolute path"),
            );
        }
    }
    let interface_value = t.get("interface");
    let interface = match interface_value {
        None => Opt::Absent,
        Some(v) => match string(sink, v, &join(&field, "interface"), "\"corridor0\"") {
            None => Opt::Invalid,
            Some(i) => match check_ifname(&i.value) {
                Ok(()) => Opt::Valid(i),
                Err(why) => {
                    sink.error(
                        &i.span,
                        &i.field,
                        format!(
                            "interface \"{}\" {why}; give a Linux interface name: 1 to 15 of A-Z, a-z, 0-9, '_', '.' and '-' (e.g. \"corridor0\")",
                            i.value.escape_default()
                        ),
                    );
                    Opt::Invalid
                }
            },
        },
    };
    let wg_value = t.get("wireguard");
    let wg_field = join(&field, "wireguard");
    if let (Some(v), None, None, Some(_)) =
        (interface_value, t.get("gateway"), t.get("netns"), wg_value)
    {
        sink.error(
            &v.span(),
            &join(&field, "interface"),
            "a stock WireGuard peer has no interface on a corridor gateway (interface names an app's TUN device inside its netns); remove interface",
        );
    }
    let wireguard = wg_value.and_then(|v| {
        table(
            sink,
            v,
            &wg_field,
            WIREGUARD_FIELDS,
            "wireguard = { public-key = \"<base64>\", endpoint = \"192.168.60.7:51820\" }",
        )
    });
    let mut kind = None;
    match (&gateway, &netns, wg_value) {
        (Some(g), Some(n), None) => {
            kind = Some(RawKind::Gateway {
                gateway: g.clone(),
                netns: n.clone(),
                interface,
            });
        }
        (None, None, Some(_)) => {
            if let Some(w) = &wireguard {
                w.check_unknown(sink);
                let key = w
                    .require(sink, "public-key", "\"<base64 public key>\"")
                    .and_then(|v| string(sink, v, &join(&wg_field, "public-key"), "\"<base64>\""))
                    .and_then(|s| match parse_public_key(&s.value) {
                        Ok(k) => Some(At {
                            value: k,
                            span: s.span,
                            field: s.field,
                        }),
                        Err(m) => {
                            sink.error(&s.span, &s.field, m);
                            None
                        }
                    });
                let endpoint = socket(sink, w.get("endpoint"), &join(&wg_field, "endpoint"));
                let pin_endpoint = flag(
                    sink,
                    w.get("pin-endpoint"),
                    &join(&wg_field, "pin-endpoint"),
                );
                if let (Some(pin), Opt::Absent) = (&pin_endpoint, endpoint)
                    && pin.value
                {
                    sink.error(
                        &pin.span,
                        &pin.field,
                        "a stock peer without `endpoint` cannot be pinned (its address is learned from its packets); add endpoint or remove pin-endpoint",
                    );
                }
                kind = Some(RawKind::WireGuard {
                    key,
                    endpoint,
                    pin_endpoint,
                });
            }
        }
        _ => {
            let (g, n, w) = (t.get("gateway"), t.get("netns"), wg_value);
            let msg = match (g.is_some(), n.is_some(), w.is_some()) {
                (false, false, false) => Some((t.span.clone(), field.clone(), "says neither where it lives; give gateway and netns (an app on a corridor gateway) or a wireguard table (a stock WireGuard peer)".to_owned())),
                (_, true, true) => n.map(|n| (n.span(), join(&field, "netns"), "has both netns and wireguard; an app on a corridor gateway has gateway and netns, a stock WireGuard peer has only wireguard: remove one".to_owned())),
                (true, false, true) => g.map(|g| (g.span(), join(&field, "gateway"), "has both gateway and wireguard; a stock WireGuard peer runs no corridor gateway: remove gateway (or replace wireguard with netns)".to_owned())),
                (true, false, false) => g.map(|g| (g.span(), join(&field, "gateway"), "has gateway but no netns; add netns = \"<the app's network namespace>\"".to_owned())),
                (false, true, false) => n.map(|n| (n.span(), join(&field, "netns"), "has netns but no gateway; add gateway = \"<the corridor gateway it runs on>\"".to_owned())),
                // Both present but one had the wrong type: already reported.
                _ => None,
            };
            if let Some((span, f, m)) = msg {
                sink.error(&span, &f, m);
            }
        }
    }
    let mut complete = true;
    let addresses = match t.require(sink, "addresses", "[\"10.20.1.10/32\"]") {
        Some(v) => {
            let a = prefixes(sink, v, &join(&field, "addresses"), &mut complete);
            if complete && a.is_empty() {
                sink.error(&v.span(), &join(&field, "addresses"), "addresses is empty; give the endpoint's own addresses, e.g. [\"10.20.1.10/32\"]");
            }
            a
        }
        None => Vec::new(),
    };
    let routes = match t.get("routes") {
        Some(v) => prefixes(sink, v, &join(&field, "routes"), &mut complete),
        None => Vec::new(),
    };
    RawEndpoint {
        field,
        span: t.span.clone(),
        name,
        kind,
        addresses,
        routes,
    }
}

/// Linux's rules for an interface name (`dev_valid_name`), kept to the characters that are safe
/// on an `ip` command line: 1 to 15 bytes of `[A-Za-z0-9_.-]`, not `.` or `..`.
pub(super) fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 15 {
        return Err(format!(
            "is {} bytes long, Linux allows at most 15",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("is not an interface name".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!("contains {c:?}"));
    }
    Ok(())
}

fn rule(sink: &mut Sink<'_, '_>, i: usize, t: &Table<'_, '_>) -> RawRule {
    t.check_unknown(sink);
    let field = index("allow", i);
    let from = t
        .require(sink, "from", "\"<endpoint name>\"")
        .and_then(|v| string(sink, v, &join(&field, "from"), "\"meter-app\""));
    let to = t
        .require(sink, "to", "\"<endpoint name>\"")
        .and_then(|v| string(sink, v, &join(&field, "to"), "\"acme-cloud\""));
    let pf = join(&field, "protocol");
    let protocol = t
        .require(sink, "protocol", "\"tcp\" (or udp, icmp, any)")
        .and_then(|v| string(sink, v, &pf, "\"tcp\""))
        .and_then(|s| match s.value.as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "icmp" => Some(Protocol::Icmp),
            "any" => Some(Protocol::Any),
            other => {
                sink.error(
                    &s.span,
                    &pf,
                    format!("unknown protocol \"{other}\"; use tcp, udp, icmp or any"),
                );
                None
            }
        });
    let mut ports = Vec::new();
    if let Some(v) = t.get("ports") {
        let f = join(&field, "ports");
        if let Some(items) = array(sink, v, &f, "[\"443\", \"9000-9100\"]") {
            if items.is_empty() {
                sink.error(
                    &v.span(),
                    &f,
                    "ports is empty; list ports (e.g. [\"443\"]) or remove ports to allow all ports",
                );
            }
            for (j, item) in items.iter().enumerate() {
                let pf = index(&f, j);
                let parsed = match item.get_ref() {
                    DeValue::String(s) => parse_port_range(s),
                    DeValue::Integer(n) => {
                        let text = n.to_string();
                        parse_port_range(&text)
                    }
                    other => Err(format!(
                        "expected a port or range as a string (e.g. \"443\" or \"9000-9100\"), found {}",
                        super::tree::type_name(other)
                    )),
                };
                match parsed {
                    Ok(r) => ports.push(r),
                    Err(m) => sink.error(&item.span(), &pf, m),
                }
            }
            if let Some(p @ (Protocol::Icmp | Protocol::Any)) = protocol {
                sink.error(
                    &v.span(),
                    &f,
                    format!("ports only apply to tcp and udp, not {p}; remove ports or use protocol = \"tcp\" or \"udp\""),
                );
            }
        }
    }
    RawRule {
        field,
        span: t.span.clone(),
        from,
        to,
        protocol,
        ports,
    }
}
