//! One test per check: each asserts the file, line, column, field and message of the finding.

use std::path::{Path, PathBuf};

use dataplane::config::{PortRange, Protocol, encode_key};

use super::*;

fn key(n: u8) -> String {
    encode_key(&[n; 32])
}

fn edge_keys() -> String {
    format!("keys = {{ acme = \"{}\"", key(1))
}

fn base_gw() -> String {
    format!(
        r#"[[gateway]]
name = "edge-1"
keys = {{ acme = "{}" }}

[[gateway]]
name = "dc-1"
endpoint = "192.168.50.2:51820"
keys = {{ acme = "{}" }}
"#,
        key(1),
        key(2)
    )
}

const BASE_ACME: &str = r#"name = "acme"
address-space = ["10.20.0.0/16"]

[[endpoint]]
name = "meter-app"
gateway = "edge-1"
netns = "acme-meter"
addresses = ["10.20.1.10/32"]

[[endpoint]]
name = "acme-cloud"
gateway = "dc-1"
netns = "acme-cloud"
addresses = ["10.20.100.1/32"]
routes = ["10.20.100.0/24"]

[[allow]]
from = "meter-app"
to = "acme-cloud"
protocol = "tcp"
ports = ["443", "9000-9100"]
"#;

fn sources(gw: &str, tenants: &[(&str, &str)]) -> PolicySources {
    PolicySources {
        gateways: Some(SourceFile {
            path: GATEWAYS_FILE.into(),
            text: gw.to_owned(),
        }),
        tenants: Some(
            tenants
                .iter()
                .map(|(name, text)| SourceFile {
                    path: PathBuf::from(TENANTS_DIR).join(format!("{name}.toml")),
                    text: (*text).to_owned(),
                })
                .collect(),
        ),
        read_errors: Vec::new(),
    }
}

fn load(gw: &str, tenants: &[(&str, &str)]) -> Result<Policy, PolicyErrors> {
    Policy::from_sources(&sources(gw, tenants), Mode::Strict)
}

fn errors(gw: &str, tenants: &[(&str, &str)]) -> Vec<Diagnostic> {
    match load(gw, tenants) {
        Ok(_) => panic!("expected errors, the policy loaded"),
        Err(e) => e.errors,
    }
}

fn acme_errors(acme: &str) -> Vec<Diagnostic> {
    errors(&base_gw(), &[("acme", acme)])
}

/// Replaces exactly one occurrence.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once");
    text.replacen(from, to, 1)
}

/// The 1-based position of the first occurrence of `needle` (its `nth` occurrence, from 0).
fn pos_of(text: &str, needle: &str, nth: usize) -> Position {
    let (offset, _) = text.match_indices(needle).nth(nth).expect("needle present");
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    Position { line, column }
}

#[track_caller]
fn assert_diag(
    diags: &[Diagnostic],
    file: &str,
    pos: Option<Position>,
    field: &str,
    fragment: &str,
) {
    let found = diags.iter().any(|d| {
        d.file == Path::new(file)
            && d.position == pos
            && d.field == field
            && d.message.contains(fragment)
    });
    assert!(
        found,
        "no diagnostic {file}:{pos:?}: {field}: …{fragment}… among:\n{}",
        diags.iter().map(|d| format!("{d}\n")).collect::<String>()
    );
}

#[track_caller]
fn assert_only(
    diags: &[Diagnostic],
    file: &str,
    pos: Option<Position>,
    field: &str,
    fragment: &str,
) {
    assert_diag(diags, file, pos, field, fragment);
    assert_eq!(diags.len(), 1, "expected one diagnostic, got {diags:#?}");
}

const ACME: &str = "tenants/acme.toml";
const GW: &str = "gateways.toml";

#[test]
fn base_policy_loads() {
    let p = load(&base_gw(), &[("acme", BASE_ACME)]).unwrap();
    assert_eq!(p.gateways.len(), 2);
    assert_eq!(p.endpoint_count(), 2);
    assert_eq!(p.rule_count(), 1);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let edge = p.gateway("edge-1").unwrap();
    assert_eq!(edge.endpoint, None);
    assert_eq!(edge.keepalive, Some(DEFAULT_DIAL_OUT_KEEPALIVE));
    assert!(!edge.pin_endpoint);
    let dc = p.gateway("dc-1").unwrap();
    assert_eq!(dc.keepalive, None);
    assert_eq!(dc.keys.get("acme"), Some(&[2u8; 32]));
    let t = p.tenant("acme").unwrap();
    assert_eq!(
        t.conntrack_limit,
        dataplane::config::DEFAULT_CONNTRACK_LIMIT
    );
    assert_eq!(
        t.rules[0],
        Rule {
            from: "meter-app".into(),
            to: "acme-cloud".into(),
            protocol: Protocol::Tcp,
            ports: vec![
                PortRange {
                    start: 443,
                    end: 443
                },
                PortRange {
                    start: 9000,
                    end: 9100
                }
            ],
        }
    );
    // The endpoint's own address inside its own routes is fine, and appears once in prefixes.
    assert_eq!(t.endpoint("acme-cloud").unwrap().prefixes().len(), 2);
}

#[test]
fn display_format() {
    let text = edit(BASE_ACME, "10.20.1.10/32", "10.30.1.10/32");
    let errs = acme_errors(&text);
    assert_eq!(
        errs[0].to_string(),
        "tenants/acme.toml:8:14: endpoint \"meter-app\".addresses[0]: 10.30.1.10/32 lies outside the tenant's \
         address-space (10.20.0.0/16); use an address inside it or widen address-space"
    );
}

#[test]
fn toml_syntax_error_still_checks_other_files() {
    let broken = edit(BASE_ACME, "name = \"acme-cloud\"", "name = \"acme-cloud");
    let globex = edit(
        &edit(BASE_ACME, "name = \"acme\"", "name = \"globex\""),
        "10.20.1.10/32",
        "10.20.1.10/24",
    );
    let gw = edit(
        &base_gw(),
        &edge_keys(),
        &edge_keys().replace("{ acme", "{ globex = \"x\", acme"),
    );
    let errs = errors(&gw, &[("acme", &broken), ("globex", &globex)]);
    let syntax = errs
        .iter()
        .filter(|d| d.file == Path::new(ACME))
        .collect::<Vec<_>>();
    assert_eq!(syntax.len(), 1, "{errs:#?}");
    assert!(
        syntax[0].message.starts_with("TOML syntax error"),
        "{}",
        syntax[0]
    );
    assert_eq!(syntax[0].position.map(|p| p.line), Some(11));
    assert_diag(
        &errs,
        "tenants/globex.toml",
        Some(pos_of(&globex, "\"10.20.1.10/24\"", 0)),
        "endpoint \"meter-app\".addresses[0]",
        "did you mean 10.20.1.0/24 or 10.20.1.10/32?",
    );
    assert_diag(
        &errs,
        GW,
        Some(pos_of(&gw, "\"x\"", 0)),
        "gateway \"edge-1\".keys.globex",
        "is not a public key",
    );
}

#[test]
fn unknown_field_suggests_the_known_one() {
    let text = edit(BASE_ACME, "routes = ", "rotues = ");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 15,
            column: 1,
        }),
        "endpoint \"acme-cloud\".rotues",
        "unknown field `rotues`; did you mean `routes`?",
    );
    let gw = edit(&base_gw(), "endpoint = ", "endpiont = ");
    let errs = errors(&gw, &[("acme", BASE_ACME)]);
    assert_diag(
        &errs,
        GW,
        Some(pos_of(&gw, "endpiont", 0)),
        "gateway \"dc-1\".endpiont",
        "did you mean `endpoint`?",
    );
}

#[test]
fn missing_required_field() {
    let text = edit(BASE_ACME, "name = \"meter-app\"\n", "\n");
    let errs = acme_errors(&text);
    assert_diag(
        &errs,
        ACME,
        Some(Position { line: 4, column: 1 }),
        "endpoint[0]",
        "missing required field `name`",
    );
    let text = edit(BASE_ACME, "protocol = \"tcp\"\n", "\n");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 17,
            column: 1,
        }),
        "allow[0]",
        "missing required field `protocol`",
    );
}

#[test]
fn wrong_type() {
    let text = edit(
        BASE_ACME,
        "addresses = [\"10.20.1.10/32\"]",
        "addresses = \"10.20.1.10/32\"",
    );
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 8,
            column: 13,
        }),
        "endpoint \"meter-app\".addresses",
        "expected an array",
    );
    let text = edit(BASE_ACME, "name = \"acme\"", "name = 7");
    assert_diag(
        &acme_errors(&text),
        ACME,
        Some(Position { line: 1, column: 8 }),
        "name",
        "expected a string",
    );
}

#[test]
fn bad_names() {
    let gw = edit(&base_gw(), "name = \"edge-1\"", "name = \"Edge_1\"");
    let errs = errors(&gw, &[("acme", BASE_ACME)]);
    assert_diag(
        &errs,
        GW,
        Some(Position { line: 2, column: 8 }),
        "gateway[0].name",
        "\"Edge_1\" is not a valid gateway name",
    );
    assert_diag(
        &errs,
        GW,
        Some(Position { line: 2, column: 8 }),
        "gateway[0].name",
        "(e.g. \"edge-1\")",
    );
    let text = edit(BASE_ACME, "name = \"meter-app\"", "name = \"meter app\"");
    assert_diag(
        &acme_errors(&text),
        ACME,
        Some(pos_of(&text, "\"meter app\"", 0)),
        "endpoint[0].name",
        "not a valid endpoint name",
    );
    let long = "a".repeat(33);
    let text = edit(BASE_ACME, "name = \"acme\"", &format!("name = \"{long}\""));
    assert_diag(
        &acme_errors(&text),
        ACME,
        Some(Position { line: 1, column: 8 }),
        "name",
        "not a valid tenant name",
    );
}

#[test]
fn duplicate_names() {
    let gw = format!("{}\n[[gateway]]\nname = \"dc-1\"\n", base_gw());
    let errs = errors(&gw, &[("acme", BASE_ACME)]);
    assert_diag(
        &errs,
        GW,
        Some(Position {
            line: 11,
            column: 8,
        }),
        "gateway[2].name",
        "gateway \"dc-1\" is already declared on line 5",
    );

    let text = edit(BASE_ACME, "name = \"acme-cloud\"", "name = \"meter-app\"");
    let errs = acme_errors(&text);
    assert_diag(
        &errs,
        ACME,
        Some(Position {
            line: 11,
            column: 8,
        }),
        "endpoint[1].name",
        "already declared on line 4",
    );

    // Two files declaring the same tenant.
    let errs = errors(&base_gw(), &[("acme", BASE_ACME), ("acme2", BASE_ACME)]);
    assert_diag(
        &errs,
        "tenants/acme2.toml",
        Some(Position { line: 1, column: 8 }),
        "name",
        "already declared in tenants/acme.toml",
    );
}

#[test]
fn file_name_must_match_tenant_name() {
    let errs = errors(&base_gw(), &[("acme-corp", BASE_ACME)]);
    assert_diag(
        &errs,
        "tenants/acme-corp.toml",
        Some(Position { line: 1, column: 8 }),
        "name",
        "rename the file to tenants/acme.toml or set name = \"acme-corp\"",
    );
}

#[test]
fn bad_prefixes() {
    let text = edit(BASE_ACME, "\"10.20.1.10/32\"", "\"10.20.1.10/24\"");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 8,
            column: 14,
        }),
        "endpoint \"meter-app\".addresses[0]",
        "10.20.1.10/24 has host bits set; did you mean 10.20.1.0/24 or 10.20.1.10/32?",
    );
    let text = edit(BASE_ACME, "\"10.20.100.0/24\"", "\"10.20.100.0/40\"");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 15,
            column: 11,
        }),
        "endpoint \"acme-cloud\".routes[0]",
        "is not a number from 0 to 32",
    );
    let text = edit(BASE_ACME, "\"10.20.0.0/16\"", "\"10.20.0/16\"");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 2,
            column: 18,
        }),
        "address-space[0]",
        "is not an IP address",
    );
    let text = edit(BASE_ACME, "\"10.20.1.10/32\"", "\"10.20.1.10\"");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 8,
            column: 14,
        }),
        "endpoint \"meter-app\".addresses[0]",
        "write 10.20.1.10/32",
    );
}

#[test]
fn prefixes_outside_address_space() {
    let text = edit(BASE_ACME, "\"10.20.100.0/24\"", "\"10.21.100.0/24\"");
    let errs = acme_errors(&text);
    assert_only(
        &errs,
        ACME,
        Some(Position {
            line: 15,
            column: 11,
        }),
        "endpoint \"acme-cloud\".routes[0]",
        "10.21.100.0/24 lies outside the tenant's address-space (10.20.0.0/16)",
    );
    // IPv6 address in an IPv4-only space.
    let text = edit(BASE_ACME, "\"10.20.1.10/32\"", "\"fd00::1/128\"");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 8,
            column: 14,
        }),
        "endpoint \"meter-app\".addresses[0]",
        "outside",
    );
}

#[test]
fn overlapping_endpoints() {
    let text = edit(BASE_ACME, "\"10.20.1.10/32\"", "\"10.20.100.7/32\"");
    let errs = acme_errors(&text);
    assert_only(
        &errs,
        ACME,
        Some(Position {
            line: 15,
            column: 11,
        }),
        "endpoint \"acme-cloud\".routes[0]",
        "10.20.100.0/24 overlaps 10.20.100.7/32 of endpoint \"meter-app\" (line 8); the endpoints of a tenant need disjoint",
    );
    // Route of the second endpoint covers the first one's address.
    let text = edit(BASE_ACME, "\"10.20.100.0/24\"", "\"10.20.0.0/16\"");
    let errs = acme_errors(&text);
    assert_only(
        &errs,
        ACME,
        Some(Position {
            line: 15,
            column: 11,
        }),
        "endpoint \"acme-cloud\".routes[0]",
        "overlaps 10.20.1.10/32",
    );
}

#[test]
fn rules_naming_unknown_endpoints_or_the_same_one() {
    let text = edit(BASE_ACME, "to = \"acme-cloud\"", "to = \"acme-clud\"");
    let errs = acme_errors(&text);
    assert_diag(
        &errs,
        ACME,
        Some(Position {
            line: 19,
            column: 6,
        }),
        "allow[0].to",
        "no endpoint \"acme-clud\" in this tenant (endpoints: meter-app, acme-cloud)",
    );
    let text = edit(BASE_ACME, "to = \"acme-cloud\"", "to = \"meter-app\"");
    let errs = acme_errors(&text);
    assert_diag(
        &errs,
        ACME,
        Some(Position {
            line: 19,
            column: 6,
        }),
        "allow[0].to",
        "from an endpoint to itself",
    );
}

#[test]
fn endpoint_on_unknown_gateway() {
    let text = edit(BASE_ACME, "gateway = \"dc-1\"", "gateway = \"dc-2\"");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 12,
            column: 11,
        }),
        "endpoint \"acme-cloud\".gateway",
        "no gateway \"dc-2\" in gateways.toml (gateways: edge-1, dc-1)",
    );
}

#[test]
fn served_tenant_without_key_strict_and_lenient() {
    let gw = edit(
        &base_gw(),
        &format!("keys = {{ acme = \"{}\" }}\n", key(2)),
        "",
    );
    let errs = errors(&gw, &[("acme", BASE_ACME)]);
    assert_only(
        &errs,
        GW,
        Some(Position { line: 6, column: 8 }),
        "gateway \"dc-1\".keys",
        "gateway \"dc-1\" serves tenant \"acme\" (endpoint \"acme-cloud\") but has no key for it; run `corridor keys generate",
    );
    let p = Policy::from_sources(&sources(&gw, &[("acme", BASE_ACME)]), Mode::Lenient).unwrap();
    assert!(p.gateway("dc-1").unwrap().keys.is_empty());
}

#[test]
fn key_naming_unknown_tenant() {
    let gw = edit(
        &base_gw(),
        &edge_keys(),
        &edge_keys().replace("{ acme", &format!("{{ initech = \"{}\", acme", key(9))),
    );
    assert_only(
        &errors(&gw, &[("acme", BASE_ACME)]),
        GW,
        Some(Position {
            line: 3,
            column: 10,
        }),
        "gateway \"edge-1\".keys.initech",
        "no tenant \"initech\" (tenants: acme); remove this key or add tenants/initech.toml",
    );
}

#[test]
fn bad_keys_strict_and_lenient() {
    let gw = edit(&base_gw(), &key(1), "AAAA");
    let errs = errors(&gw, &[("acme", BASE_ACME)]);
    assert_only(
        &errs,
        GW,
        Some(Position {
            line: 3,
            column: 17,
        }),
        "gateway \"edge-1\".keys.acme",
        "decodes to 3 bytes, a key has 32",
    );
    let gw2 = edit(&base_gw(), &format!("\"{}\"", key(1)), "42");
    assert_only(
        &errors(&gw2, &[("acme", BASE_ACME)]),
        GW,
        Some(Position {
            line: 3,
            column: 17,
        }),
        "gateway \"edge-1\".keys.acme",
        "expected a string",
    );
    // Lenient: the bad key is left out, nothing else complains.
    let p = Policy::from_sources(&sources(&gw, &[("acme", BASE_ACME)]), Mode::Lenient).unwrap();
    assert!(p.gateway("edge-1").unwrap().keys.is_empty());
    let gw3 = edit(
        &base_gw(),
        &edge_keys(),
        &edge_keys().replace("{ acme", "{ acme = \"!!\", acme"),
    );
    assert!(
        errors(&gw3, &[("acme", BASE_ACME)])[0]
            .message
            .contains("TOML syntax error")
    );
}

#[test]
fn duplicate_public_keys() {
    let gw = edit(&base_gw(), &key(2), &key(1));
    assert_only(
        &errors(&gw, &[("acme", BASE_ACME)]),
        GW,
        Some(Position {
            line: 8,
            column: 10,
        }),
        "gateway \"dc-1\".keys.acme",
        "same public key as gateway \"edge-1\".keys.acme in gateways.toml",
    );
}

#[test]
fn bad_socket_addresses() {
    let gw = edit(&base_gw(), "192.168.50.2:51820", "192.168.50.2");
    assert_only(
        &errors(&gw, &[("acme", BASE_ACME)]),
        GW,
        Some(Position {
            line: 7,
            column: 12,
        }),
        "gateway \"dc-1\".endpoint",
        "is not a socket address; write IP:PORT",
    );
    let gw = edit(&base_gw(), "192.168.50.2:51820", "192.168.50.2:0");
    assert_only(
        &errors(&gw, &[("acme", BASE_ACME)]),
        GW,
        Some(Position {
            line: 7,
            column: 12,
        }),
        "gateway \"dc-1\".endpoint",
        "port 0",
    );
    let text = stock_acme("endpoint = \"hub.example.com:51820\"");
    let errs = acme_errors(&text);
    assert_only(
        &errs,
        ACME,
        Some(pos_of(&text, "\"hub.example", 0)),
        "endpoint \"legacy-hub\".wireguard.endpoint",
        "is not a socket address",
    );
}

/// BASE_ACME plus a stock WireGuard endpoint with the given extra wireguard fields and a rule
/// from the app to it.
fn stock_acme(extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { ", " };
    format!(
        "{BASE_ACME}\n[[endpoint]]\nname = \"legacy-hub\"\nwireguard = {{ public-key = \"{}\"{sep}{extra} }}\naddresses = [\"10.20.200.1/32\"]\n\n[[allow]]\nfrom = \"meter-app\"\nto = \"legacy-hub\"\nprotocol = \"udp\"\n",
        key(7)
    )
}

#[test]
fn stock_peer_loads() {
    let text = stock_acme("endpoint = \"192.168.60.7:51820\", pin-endpoint = true");
    let p = load(&base_gw(), &[("acme", &text)]).unwrap();
    let hub = p.tenant("acme").unwrap().endpoint("legacy-hub").unwrap();
    assert_eq!(
        hub.kind,
        EndpointKind::WireGuard(StockPeer {
            public_key: [7; 32],
            endpoint: Some("192.168.60.7:51820".parse().unwrap()),
            pin_endpoint: true
        })
    );
}

#[test]
fn bad_ports() {
    let cases = [
        ("\"https\"", "is not a port or port range"),
        ("\"0\"", "port 0 in \"0\" is out of range"),
        ("\"70000\"", "port 70000 in \"70000\" is out of range"),
        (
            "\"9100-9000\"",
            "port range \"9100-9000\" is reversed; write \"9000-9100\"",
        ),
        ("true", "expected a port or range as a string"),
    ];
    for (value, fragment) in cases {
        let text = edit(BASE_ACME, "\"9000-9100\"", value);
        assert_only(
            &acme_errors(&text),
            ACME,
            Some(Position {
                line: 21,
                column: 17,
            }),
            "allow[0].ports[1]",
            fragment,
        );
    }
    let text = edit(BASE_ACME, "[\"443\", \"9000-9100\"]", "[]");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 21,
            column: 9,
        }),
        "allow[0].ports",
        "ports is empty",
    );
    // Integers are accepted too.
    let text = edit(BASE_ACME, "\"9000-9100\"", "8443");
    let p = load(&base_gw(), &[("acme", &text)]).unwrap();
    assert_eq!(
        p.tenants[0].rules[0].ports[1],
        PortRange {
            start: 8443,
            end: 8443
        }
    );
}

#[test]
fn ports_with_icmp_or_any() {
    for proto in ["icmp", "any"] {
        let text = edit(
            BASE_ACME,
            "protocol = \"tcp\"",
            &format!("protocol = \"{proto}\""),
        );
        assert_only(
            &acme_errors(&text),
            ACME,
            Some(Position {
                line: 21,
                column: 9,
            }),
            "allow[0].ports",
            &format!("ports only apply to tcp and udp, not {proto}"),
        );
    }
    let text = edit(BASE_ACME, "protocol = \"tcp\"", "protocol = \"sctp\"");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 20,
            column: 12,
        }),
        "allow[0].protocol",
        "unknown protocol \"sctp\"; use tcp, udp, icmp or any",
    );
}

#[test]
fn endpoint_location_combinations() {
    // Both netns and wireguard.
    let text = stock_acme("").replace(
        "name = \"legacy-hub\"\n",
        "name = \"legacy-hub\"\nnetns = \"hub\"\n",
    );
    let errs = acme_errors(&text);
    assert_only(
        &errs,
        ACME,
        Some(pos_of(&text, "\"hub\"", 0)),
        "endpoint \"legacy-hub\".netns",
        "has both netns and wireguard",
    );
    // Gateway and wireguard.
    let text = stock_acme("").replace(
        "name = \"legacy-hub\"\n",
        "name = \"legacy-hub\"\ngateway = \"dc-1\"\n",
    );
    let errs = acme_errors(&text);
    assert_only(
        &errs,
        ACME,
        Some(pos_of(&text, "\"dc-1\"", 1)),
        "endpoint \"legacy-hub\".gateway",
        "has both gateway and wireguard",
    );
    // Neither.
    let text = edit(
        BASE_ACME,
        "gateway = \"edge-1\"\nnetns = \"acme-meter\"\n",
        "",
    );
    let errs = acme_errors(&text);
    assert_only(
        &errs,
        ACME,
        Some(Position { line: 4, column: 1 }),
        "endpoint \"meter-app\"",
        "says neither where it lives",
    );
    // Gateway without netns.
    let text = edit(BASE_ACME, "netns = \"acme-meter\"\n", "");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 6,
            column: 11,
        }),
        "endpoint \"meter-app\".gateway",
        "has gateway but no netns",
    );
    // Netns without gateway.
    let text = edit(BASE_ACME, "gateway = \"edge-1\"\n", "");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position { line: 6, column: 9 }),
        "endpoint \"meter-app\".netns",
        "has netns but no gateway",
    );
    // A relative netns path.
    let text = edit(BASE_ACME, "\"acme-meter\"", "\"run/acme\"");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position { line: 7, column: 9 }),
        "endpoint \"meter-app\".netns",
        "is a relative path",
    );
}

#[test]
fn rule_between_two_stock_peers() {
    let text = format!(
        "{}\n[[endpoint]]\nname = \"hub-2\"\nwireguard = {{ public-key = \"{}\" }}\naddresses = [\"10.20.201.1/32\"]\n\n[[allow]]\nfrom = \"hub-2\"\nto = \"legacy-hub\"\nprotocol = \"any\"\n",
        stock_acme("endpoint = \"192.168.60.7:51820\""),
        key(8)
    );
    let errs = acme_errors(&text);
    let at = pos_of(&text, "[[allow]]", 2);
    assert_only(
        &errs,
        ACME,
        Some(at),
        "allow[2]",
        "both endpoint \"hub-2\" and endpoint \"legacy-hub\" are stock WireGuard peers",
    );
}

#[test]
fn rule_between_two_dial_out_sides() {
    let gw = edit(&base_gw(), "endpoint = \"192.168.50.2:51820\"\n", "");
    let errs = errors(&gw, &[("acme", BASE_ACME)]);
    assert_only(
        &errs,
        ACME,
        Some(Position {
            line: 17,
            column: 1,
        }),
        "allow[0]",
        "can never reach each other",
    );
    // A stock peer that dials in, talking to an app on a dial-out gateway.
    let text = stock_acme("");
    let errs = acme_errors(&text);
    assert_only(
        &errs,
        ACME,
        Some(pos_of(&text, "[[allow]]", 1)),
        "allow[1]",
        "endpoint \"meter-app\" and endpoint \"legacy-hub\" can never reach each other",
    );
}

#[test]
fn missing_files_and_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let errs = Policy::load(dir.path()).unwrap_err().errors;
    assert_diag(&errs, "gateways.toml", None, "", "file not found");
    assert_diag(&errs, "tenants", None, "", "directory not found");
    std::fs::create_dir(dir.path().join("tenants")).unwrap();
    std::fs::write(dir.path().join("gateways.toml"), base_gw()).unwrap();
    let errs = Policy::load(dir.path()).unwrap_err().errors;
    assert_diag(&errs, "tenants", None, "", "no tenant files");
    std::fs::write(dir.path().join("tenants/acme.toml"), b"name = \"acme\xff\"").unwrap();
    let errs = Policy::load(dir.path()).unwrap_err().errors;
    assert_diag(&errs, ACME, None, "", "not valid UTF-8");
    std::fs::write(dir.path().join("tenants/acme.toml"), BASE_ACME).unwrap();
    std::fs::write(dir.path().join("tenants/README.md"), "ignored").unwrap();
    Policy::load(dir.path()).unwrap();
}

#[test]
fn empty_address_space_and_addresses() {
    let text = edit(BASE_ACME, "[\"10.20.0.0/16\"]", "[]");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 2,
            column: 17,
        }),
        "address-space",
        "address-space is empty",
    );
    let text = edit(BASE_ACME, "[\"10.20.1.10/32\"]", "[]");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 8,
            column: 13,
        }),
        "endpoint \"meter-app\".addresses",
        "addresses is empty",
    );
}

#[test]
fn stock_endpoint_named_like_a_gateway() {
    let text =
        stock_acme("endpoint = \"192.168.60.7:51820\"").replace("\"legacy-hub\"", "\"dc-1\"");
    let errs = acme_errors(&text);
    assert_only(
        &errs,
        ACME,
        Some(pos_of(&text, "\"dc-1\"", 1)),
        "endpoint[2].name",
        "cannot be named like gateway \"dc-1\"",
    );
}

#[test]
fn warnings_for_unused_endpoints_and_keys() {
    let text = edit(
        BASE_ACME,
        "[[allow]]\nfrom = \"meter-app\"\nto = \"acme-cloud\"\nprotocol = \"tcp\"\nports = [\"443\", \"9000-9100\"]\n",
        "",
    );
    let gw = edit(
        &base_gw(),
        &edge_keys(),
        &edge_keys().replace("{ acme", &format!("{{ globex = \"{}\", acme", key(5))),
    );
    let globex = edit(
        &edit(BASE_ACME, "name = \"acme\"", "name = \"globex\""),
        "gateway = \"edge-1\"",
        "gateway = \"dc-1\"",
    )
    // Not acme's namespaces: two apps in one namespace would need different interface names.
    .replace("netns = \"acme-", "netns = \"globex-");
    let globex = globex.replace(&format!("keys = {{ acme = \"{}\" }}", key(2)), "");
    let gw = edit(
        &gw,
        &format!("keys = {{ acme = \"{}\" }}", key(2)),
        &format!(
            "keys = {{ acme = \"{}\", globex = \"{}\" }}",
            key(2),
            key(6)
        ),
    );
    let p = load(&gw, &[("acme", &text), ("globex", &globex)]).unwrap();
    let w = &p.warnings;
    assert_diag(
        w,
        ACME,
        Some(Position { line: 4, column: 1 }),
        "endpoint \"meter-app\"",
        "no [[allow]] rule names this endpoint",
    );
    assert_diag(
        w,
        GW,
        Some(Position {
            line: 3,
            column: 10,
        }),
        "gateway \"edge-1\".keys.globex",
        "so this key is unused",
    );
    assert!(w.iter().all(|d| d.severity == Severity::Warning));
    assert!(w[0].to_string().contains(": warning: "));
}

#[test]
fn extensions_parse() {
    let gw = edit(
        &base_gw(),
        "name = \"dc-1\"",
        "name = \"dc-1\"\nkeepalive = 0\npin-endpoint = true",
    );
    let gw = edit(
        &gw,
        "name = \"edge-1\"",
        "name = \"edge-1\"\nkeepalive = 10",
    );
    let text = edit(
        BASE_ACME,
        "name = \"acme\"",
        "name = \"acme\"\nconntrack-limit = 100",
    );
    let p = load(&gw, &[("acme", &text)]).unwrap();
    assert_eq!(p.gateway("edge-1").unwrap().keepalive, Some(10));
    let dc = p.gateway("dc-1").unwrap();
    assert_eq!((dc.keepalive, dc.pin_endpoint), (None, true));
    assert_eq!(p.tenants[0].conntrack_limit, 100);

    let bad = edit(
        &base_gw(),
        "name = \"edge-1\"",
        "name = \"edge-1\"\nkeepalive = 70000\npin-endpoint = true",
    );
    let errs = errors(&bad, &[("acme", BASE_ACME)]);
    assert_diag(
        &errs,
        GW,
        Some(Position {
            line: 3,
            column: 13,
        }),
        "gateway \"edge-1\".keepalive",
        "out of range",
    );
    assert_diag(
        &errs,
        GW,
        Some(Position {
            line: 4,
            column: 16,
        }),
        "gateway \"edge-1\".pin-endpoint",
        "cannot be pinned",
    );
    let text = edit(
        BASE_ACME,
        "name = \"acme\"",
        "name = \"acme\"\nconntrack-limit = 0",
    );
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(Position {
            line: 2,
            column: 19,
        }),
        "conntrack-limit",
        "not a positive number",
    );
}

#[test]
fn every_error_in_every_file_in_one_run() {
    let gw = edit(
        &edit(&base_gw(), "192.168.50.2:51820", "192.168.50.2:x"),
        "name = \"edge-1\"",
        "name = \"edge-1\"\ncolour = \"red\"",
    );
    let acme = edit(
        &edit(BASE_ACME, "\"10.20.1.10/32\"", "\"10.30.1.10/32\""),
        "\"9000-9100\"",
        "\"9100-9000\"",
    );
    let globex = edit(
        &edit(BASE_ACME, "name = \"acme\"", "name = \"globex\""),
        "protocol = \"tcp\"",
        "protocol = \"icmp\"",
    );
    let errs = errors(&gw, &[("acme", &acme), ("globex", &globex)]);
    assert_diag(
        &errs,
        GW,
        Some(Position { line: 3, column: 1 }),
        "gateway \"edge-1\".colour",
        "unknown field",
    );
    assert_diag(
        &errs,
        GW,
        Some(Position {
            line: 8,
            column: 12,
        }),
        "gateway \"dc-1\".endpoint",
        "not a socket address",
    );
    assert_diag(
        &errs,
        ACME,
        Some(Position {
            line: 8,
            column: 14,
        }),
        "endpoint \"meter-app\".addresses[0]",
        "outside",
    );
    assert_diag(
        &errs,
        ACME,
        Some(Position {
            line: 21,
            column: 17,
        }),
        "allow[0].ports[1]",
        "reversed",
    );
    assert_diag(
        &errs,
        "tenants/globex.toml",
        Some(Position {
            line: 21,
            column: 9,
        }),
        "allow[0].ports",
        "not icmp",
    );
    assert_diag(
        &errs,
        GW,
        Some(Position { line: 4, column: 8 }),
        "gateway \"edge-1\".keys",
        "serves tenant \"globex\"",
    );
    // Sorted by file, then position.
    let files: Vec<_> = errs.iter().map(|d| d.file.clone()).collect();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted);
    let shown = load(&gw, &[("acme", &acme), ("globex", &globex)])
        .unwrap_err()
        .to_string();
    assert!(
        shown.ends_with(&format!("{} errors in policy", errs.len())),
        "{shown}"
    );
}

/// BASE_ACME plus a second app on edge-1, `extra` inserted into its table.
fn second_app(extra: &str) -> String {
    format!(
        "{BASE_ACME}\n[[endpoint]]\nname = \"meter-2\"\ngateway = \"edge-1\"\nnetns = \"acme-meter-2\"\n{extra}addresses = [\"10.20.2.10/32\"]\n\n[[allow]]\nfrom = \"meter-2\"\nto = \"acme-cloud\"\nprotocol = \"tcp\"\n"
    )
}

fn interface_of(p: &Policy, tenant: &str, endpoint: &str) -> String {
    match &p.tenant(tenant).unwrap().endpoint(endpoint).unwrap().kind {
        EndpointKind::Gateway { interface, .. } => interface.clone(),
        EndpointKind::WireGuard(_) => panic!("{endpoint} is a stock peer"),
    }
}

#[test]
fn interface_defaults_and_explicit_names() {
    let p = load(&base_gw(), &[("acme", BASE_ACME)]).unwrap();
    assert_eq!(interface_of(&p, "acme", "meter-app"), DEFAULT_INTERFACE);
    assert_eq!(interface_of(&p, "acme", "acme-cloud"), "corridor0");
    // Every allowed character, 15 bytes.
    let text = edit(
        BASE_ACME,
        "netns = \"acme-meter\"\n",
        "netns = \"acme-meter\"\ninterface = \"Ab9_.-xxxxxxxxx\"\n",
    );
    let p = load(&base_gw(), &[("acme", &text)]).unwrap();
    assert_eq!(interface_of(&p, "acme", "meter-app"), "Ab9_.-xxxxxxxxx");
}

#[test]
fn bad_interface_names() {
    let cases = [
        ("\"\"", "interface \"\" is empty"),
        (
            "\"corridor-tenant0\"",
            "is 16 bytes long, Linux allows at most 15",
        ),
        ("\".\"", "is not an interface name"),
        ("\"..\"", "is not an interface name"),
        ("\"eth 0\"", "contains ' '"),
        ("\"eth/0\"", "contains '/'"),
        ("\"eth:0\"", "contains ':'"),
        ("\"tün0\"", "contains 'ü'"),
        ("7", "expected a string"),
    ];
    for (value, fragment) in cases {
        let text = edit(
            BASE_ACME,
            "netns = \"acme-meter\"\n",
            &format!("netns = \"acme-meter\"\ninterface = {value}\n"),
        );
        assert_only(
            &acme_errors(&text),
            ACME,
            Some(Position {
                line: 8,
                column: 13,
            }),
            "endpoint \"meter-app\".interface",
            fragment,
        );
    }
}

#[test]
fn interface_on_a_stock_peer() {
    let text = stock_acme("endpoint = \"192.168.60.7:51820\"").replace(
        "name = \"legacy-hub\"\n",
        "name = \"legacy-hub\"\ninterface = \"wg0\"\n",
    );
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(pos_of(&text, "\"wg0\"", 0)),
        "endpoint \"legacy-hub\".interface",
        "a stock WireGuard peer has no interface on a corridor gateway",
    );
}

#[test]
fn two_interfaces_of_one_name_in_one_namespace() {
    // Distinct namespaces: the default name twice is fine.
    load(&base_gw(), &[("acme", &second_app(""))]).unwrap();

    // Same namespace, both default: reported at the second's netns, naming the first.
    let text = second_app("").replace("\"acme-meter-2\"", "\"acme-meter\"");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(pos_of(&text, "\"acme-meter\"", 1)),
        "endpoint \"meter-2\".netns",
        "interface \"corridor0\" (the default) in netns \"acme-meter\" on gateway \"edge-1\" is already taken by endpoint \"meter-app\" of tenant \"acme\" (tenants/acme.toml:7:9)",
    );

    // Same namespace, distinct names: fine.
    let text =
        second_app("interface = \"corridor1\"\n").replace("\"acme-meter-2\"", "\"acme-meter\"");
    let p = load(&base_gw(), &[("acme", &text)]).unwrap();
    assert_eq!(interface_of(&p, "acme", "meter-2"), "corridor1");

    // Same namespace, the same explicit name: reported at the second's interface.
    let text = edit(
        &second_app("interface = \"app0\"\n").replace("\"acme-meter-2\"", "\"acme-meter\""),
        "netns = \"acme-meter\"\naddresses",
        "netns = \"acme-meter\"\ninterface = \"app0\"\naddresses",
    );
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(pos_of(&text, "\"app0\"", 1)),
        "endpoint \"meter-2\".interface",
        "already taken by endpoint \"meter-app\" of tenant \"acme\" (tenants/acme.toml:8:13)",
    );

    // A name and the path of that name are the same namespace.
    for path in [
        "/var/run/netns/acme-meter",
        "/run/netns/acme-meter",
        "/run/netns//acme-meter/",
    ] {
        let text = second_app("").replace("\"acme-meter-2\"", &format!("\"{path}\""));
        assert_only(
            &acme_errors(&text),
            ACME,
            Some(pos_of(&text, &format!("\"{path}\""), 0)),
            "endpoint \"meter-2\".netns",
            "already taken by endpoint \"meter-app\"",
        );
    }

    // The same namespace name on another gateway is another namespace…
    let on_dc = |netns: &str| {
        edit(
            &second_app("").replace("\"acme-meter-2\"", &format!("\"{netns}\"")),
            "name = \"meter-2\"\ngateway = \"edge-1\"",
            "name = \"meter-2\"\ngateway = \"dc-1\"",
        )
    };
    load(&base_gw(), &[("acme", &on_dc("acme-meter"))]).unwrap();
    // … and on that gateway, it may collide with another one.
    let text = on_dc("acme-cloud");
    assert_only(
        &acme_errors(&text),
        ACME,
        Some(pos_of(
            &text,
            "\"acme-cloud\"\naddresses = [\"10.20.2.10/32\"]",
            0,
        )),
        "endpoint \"meter-2\".netns",
        "on gateway \"dc-1\" is already taken by endpoint \"acme-cloud\" of tenant \"acme\" (tenants/acme.toml:13:9)",
    );
}

#[test]
fn interfaces_collide_across_tenants() {
    // Two tenants' apps in one namespace (say, one pod) on one gateway.
    let gw = base_gw()
        .replace(
            &format!("acme = \"{}\"", key(1)),
            &format!("acme = \"{}\", globex = \"{}\"", key(1), key(3)),
        )
        .replace(
            &format!("acme = \"{}\"", key(2)),
            &format!("acme = \"{}\", globex = \"{}\"", key(2), key(4)),
        );
    let globex = edit(
        &edit(BASE_ACME, "name = \"acme\"", "name = \"globex\""),
        "netns = \"acme-cloud\"",
        "netns = \"globex-cloud\"",
    );
    let errs = errors(&gw, &[("acme", BASE_ACME), ("globex", &globex)]);
    assert_only(
        &errs,
        "tenants/globex.toml",
        Some(Position { line: 7, column: 9 }),
        "endpoint \"meter-app\".netns",
        "is already taken by endpoint \"meter-app\" of tenant \"acme\" (tenants/acme.toml:7:9)",
    );
    // Another name in the shared namespace resolves it.
    let globex = edit(
        &globex,
        "netns = \"acme-meter\"\n",
        "netns = \"acme-meter\"\ninterface = \"globex0\"\n",
    );
    let p = load(&gw, &[("acme", BASE_ACME), ("globex", &globex)]).unwrap();
    assert_eq!(interface_of(&p, "globex", "meter-app"), "globex0");
}
