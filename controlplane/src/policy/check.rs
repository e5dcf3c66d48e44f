//! Loading a whole policy: parse every file, check across files, build the model.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::parse::{
    RawEndpoint, RawGateway, RawKind, RawTenant, gateways as parse_gateways, tenant as parse_tenant,
};
use super::tree::{At, FileCtx, Opt, Sink, prefix_within, prefixes_overlap};
use super::{
    DEFAULT_DIAL_OUT_KEEPALIVE, DEFAULT_INTERFACE, Endpoint, EndpointKind, Gateway, Mode,
    NETNS_DIR, Policy, PolicyErrors, PolicySources, Rule, Severity, SourceFile, StockPeer, Tenant,
};
use crate::diag::{Diagnostic, sort_diagnostics};

/// One tenant file and what came out of it.
struct TenantFile<'a> {
    ctx: FileCtx<'a>,
    stem: String,
    /// `None` when the file did not parse as TOML.
    raw: Option<RawTenant>,
}

pub(super) fn load(sources: &PolicySources, mode: Mode) -> Result<Policy, PolicyErrors> {
    let mut diags: Vec<Diagnostic> = sources.read_errors.clone();

    // gateways.toml
    let gw_ctx = sources
        .gateways
        .as_ref()
        .map(|f| FileCtx::new(&f.path, &f.text));
    let gateways: Option<Vec<RawGateway>> = match (&sources.gateways, &gw_ctx) {
        (Some(file), Some(ctx)) => {
            let mut sink = Sink {
                ctx,
                diags: &mut diags,
            };
            parse_doc(&mut sink, file).map(|doc| parse_gateways(&mut sink, &doc, mode))
        }
        _ => None,
    };

    // tenants/*.toml
    let mut tenant_files = Vec::new();
    for file in sources.tenants.iter().flatten() {
        let ctx = FileCtx::new(&file.path, &file.text);
        let stem = file
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let raw = {
            let mut sink = Sink {
                ctx: &ctx,
                diags: &mut diags,
            };
            parse_doc(&mut sink, file).map(|doc| parse_tenant(&mut sink, &doc))
        };
        tenant_files.push(TenantFile { ctx, stem, raw });
    }
    if let Some(files) = &sources.tenants
        && files.is_empty()
        && sources
            .read_errors
            .iter()
            .all(|d| !d.file.starts_with(super::TENANTS_DIR))
    {
        diags.push(Diagnostic {
            severity: Severity::Error,
            file: super::TENANTS_DIR.into(),
            position: None,
            field: String::new(),
            message: "no tenant files; add one <tenant>.toml per tenant".into(),
        });
    }

    let mut checker = Checker {
        mode,
        diags,
        gw_ctx: gw_ctx.as_ref(),
        gateways: gateways.as_deref(),
        tenants: &tenant_files,
    };
    checker.check();
    let mut diags = checker.diags;
    sort_diagnostics(&mut diags);
    let (errors, warnings): (Vec<_>, Vec<_>) = diags
        .into_iter()
        .partition(|d| d.severity == Severity::Error);
    if !errors.is_empty() {
        return Err(PolicyErrors { errors, warnings });
    }
    build(gateways.as_deref().unwrap_or_default(), &tenant_files, warnings).ok_or_else(|| PolicyErrors {
        errors: vec![Diagnostic {
            severity: Severity::Error,
            file: super::GATEWAYS_FILE.into(),
            position: None,
            field: String::new(),
            message: "internal error: the policy passed validation but could not be built; please report this".into(),
        }],
        warnings: Vec::new(),
    })
}

fn parse_doc<'i>(
    sink: &mut Sink<'_, '_>,
    file: &'i SourceFile,
) -> Option<toml::Spanned<DeTable<'i>>> {
    let (doc, errors) = DeTable::parse_recoverable(&file.text);
    // After the first syntax error, the parser's recovery produces follow-up errors that are
    // mostly noise: report the first one only, and skip the rest of this file's checks.
    if let Some(e) = errors.first() {
        let span = e.span().unwrap_or(0..0);
        let more = if errors.len() > 1 {
            " (fix this first: the rest of this file was not checked)"
        } else {
            ""
        };
        sink.error(
            &span,
            "",
            format!("TOML syntax error: {}{more}", e.message().trim_end()),
        );
        return None;
    }
    Some(doc)
}

struct Checker<'s, 'a> {
    mode: Mode,
    diags: Vec<Diagnostic>,
    gw_ctx: Option<&'s FileCtx<'a>>,
    /// `None` when gateways.toml is missing or did not parse.
    gateways: Option<&'s [RawGateway]>,
    tenants: &'s [TenantFile<'a>],
}

/// How an endpoint can be reached from elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Yes,
    No,
    Unknown,
}

impl<'s, 'a> Checker<'s, 'a> {
    fn gw_sink(&mut self) -> Option<Sink<'_, 'a>> {
        self.gw_ctx.map(|ctx| Sink {
            ctx,
            diags: &mut self.diags,
        })
    }

    fn gateway(&self, name: &str) -> Option<&'s RawGateway> {
        self.gateways?
            .iter()
            .find(|g| g.name.as_ref().is_some_and(|n| n.value == name))
    }

    /// Every gateway name is known (gateways.toml parsed and every name valid).
    fn gateways_complete(&self) -> bool {
        self.gateways
            .is_some_and(|gs| gs.iter().all(|g| g.name.is_some()))
    }

    fn check(&mut self) {
        self.check_gateways();
        let tenants = self.tenants;
        let mut seen: HashMap<String, &'s Path> = HashMap::new();
        for tf in tenants {
            let Some(raw) = &tf.raw else { continue };
            let mut sink = Sink {
                ctx: &tf.ctx,
                diags: &mut self.diags,
            };
            if let Some(n) = &raw.name {
                if n.value != tf.stem {
                    sink.error(
                        &n.span,
                        &n.field,
                        format!(
                            "tenant \"{}\" is declared in {}; a tenant's file must be named after it: rename the file to tenants/{}.toml or set name = \"{}\"",
                            n.value,
                            tf.ctx.path.display(),
                            n.value,
                            tf.stem
                        ),
                    );
                }
                if let Some(first) = seen.get(&n.value) {
                    sink.error(
                        &n.span,
                        &n.field,
                        format!(
                            "tenant \"{}\" is already declared in {}; tenant names must be unique",
                            n.value,
                            first.display()
                        ),
                    );
                } else {
                    seen.insert(n.value.clone(), tf.ctx.path);
                }
            }
            self.check_tenant(tf, raw);
        }
        self.check_interfaces();
        self.check_keys();
    }

    /// Two apps in one namespace on one gateway (of any tenants) need different interface names.
    fn check_interfaces(&mut self) {
        let tenants = self.tenants;
        // (gateway, namespace path, interface) → where it was first used.
        let mut seen: HashMap<(&str, PathBuf, &str), String> = HashMap::new();
        for tf in tenants {
            let Some(raw) = &tf.raw else { continue };
            let mut sink = Sink {
                ctx: &tf.ctx,
                diags: &mut self.diags,
            };
            for e in &raw.endpoints {
                let (
                    Some(RawKind::Gateway {
                        gateway,
                        netns,
                        interface,
                    }),
                    Some(name),
                ) = (&e.kind, &e.name)
                else {
                    continue;
                };
                let (ifname, at, default) = match interface {
                    Opt::Valid(i) => (i.value.as_str(), i, ""),
                    Opt::Absent => (DEFAULT_INTERFACE, netns, " (the default)"),
                    Opt::Invalid => continue,
                };
                let key = (gateway.value.as_str(), netns_key(&netns.value), ifname);
                let here = {
                    let p = tf.ctx.position(&at.span);
                    format!(
                        "endpoint \"{}\" of tenant \"{}\" ({}:{}:{})",
                        name.value,
                        tf.stem,
                        tf.ctx.path.display(),
                        p.line,
                        p.column
                    )
                };
                if let Some(first) = seen.get(&key) {
                    sink.error(
                        &at.span,
                        &at.field,
                        format!(
                            "interface \"{ifname}\"{default} in netns \"{}\" on gateway \"{}\" is already taken by {first}; two endpoints in one namespace need different interface names: set interface = \"<another name>\" on one of them",
                            netns.value, gateway.value
                        ),
                    );
                } else {
                    seen.insert(key, here);
                }
            }
        }
    }

    fn check_gateways(&mut self) {
        let Some(gws) = self.gateways else { return };
        let Some(mut sink) = self.gw_sink() else {
            return;
        };
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for g in gws {
            let Some(n) = &g.name else { continue };
            if let Some(line) = seen.get(n.value.as_str()) {
                sink.error(&n.span, &n.field, format!("gateway \"{}\" is already declared on line {line}; gateway names must be unique", n.value));
            } else {
                seen.insert(&n.value, sink.ctx.line_of(&g.span));
            }
        }
    }

    fn reach(&self, e: &RawEndpoint) -> Reach {
        match &e.kind {
            Some(RawKind::Gateway { gateway, .. }) => {
                match self.gateway(&gateway.value).map(|g| g.endpoint) {
                    Some(Opt::Valid(_)) => Reach::Yes,
                    Some(Opt::Absent) => Reach::No,
                    _ => Reach::Unknown,
                }
            }
            Some(RawKind::WireGuard { endpoint, .. }) => match endpoint {
                Opt::Valid(_) => Reach::Yes,
                Opt::Absent => Reach::No,
                Opt::Invalid => Reach::Unknown,
            },
            None => Reach::Unknown,
        }
    }

    fn check_tenant(&mut self, tf: &TenantFile<'a>, raw: &RawTenant) {
        let gateways_complete = self.gateways_complete();
        let known_gateways: Vec<String> = self
            .gateways
            .unwrap_or_default()
            .iter()
            .filter_map(|g| g.name.as_ref().map(|n| n.value.clone()))
            .collect();
        let reaches: Vec<Reach> = raw.endpoints.iter().map(|e| self.reach(e)).collect();
        let mut sink = Sink {
            ctx: &tf.ctx,
            diags: &mut self.diags,
        };

        // Endpoint names unique; gateways known; prefixes inside the address space.
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (i, e) in raw.endpoints.iter().enumerate() {
            if let Some(n) = &e.name {
                if let Some(&first) = by_name.get(n.value.as_str()) {
                    let line = tf.ctx.line_of(&raw.endpoints[first].span);
                    sink.error(&n.span, &n.field, format!("endpoint \"{}\" is already declared on line {line}; endpoint names must be unique within the tenant", n.value));
                } else {
                    by_name.insert(&n.value, i);
                }
            }
            if let Some(RawKind::Gateway { gateway, .. }) = &e.kind
                && gateways_complete
                && !known_gateways.contains(&gateway.value)
            {
                sink.error(
                    &gateway.span,
                    &gateway.field,
                    format!(
                        "no gateway \"{}\" in gateways.toml (gateways: {}); fix the name or add a [[gateway]] with that name",
                        gateway.value,
                        list(&known_gateways)
                    ),
                );
            }
            if matches!(e.kind, Some(RawKind::WireGuard { .. }))
                && let Some(n) = &e.name
                && known_gateways.contains(&n.value)
            {
                sink.error(
                    &n.span,
                    &n.field,
                    format!("a stock WireGuard endpoint cannot be named like gateway \"{}\" (peers are named after both); rename the endpoint", n.value),
                );
            }
            if raw.space_complete {
                let space: Vec<String> = raw
                    .address_space
                    .iter()
                    .map(|p| p.value.to_string())
                    .collect();
                for p in e.addresses.iter().chain(&e.routes) {
                    if !raw
                        .address_space
                        .iter()
                        .any(|s| prefix_within(&p.value, &s.value))
                    {
                        sink.error(
                            &p.span,
                            &p.field,
                            format!(
                                "{} lies outside the tenant's address-space ({}); use an address inside it or widen address-space",
                                p.value,
                                space.join(", ")
                            ),
                        );
                    }
                }
            }
        }

        // Endpoints of one tenant must not overlap each other.
        for (j, b) in raw.endpoints.iter().enumerate() {
            for a in &raw.endpoints[..j] {
                for pb in b.addresses.iter().chain(&b.routes) {
                    if let Some(pa) = a
                        .addresses
                        .iter()
                        .chain(&a.routes)
                        .find(|pa| prefixes_overlap(&pa.value, &pb.value))
                    {
                        let line = tf.ctx.line_of(&pa.span);
                        sink.error(
                            &pb.span,
                            &pb.field,
                            format!(
                                "{} overlaps {} of {} (line {line}); the endpoints of a tenant need disjoint addresses and routes",
                                pb.value, pa.value, a.field
                            ),
                        );
                    }
                }
            }
        }

        // Rules.
        let endpoints_complete = raw.endpoints.iter().all(|e| e.name.is_some());
        let names: Vec<&str> = raw
            .endpoints
            .iter()
            .filter_map(|e| e.name.as_ref().map(|n| n.value.as_str()))
            .collect();
        let mut used = vec![false; raw.endpoints.len()];
        for r in &raw.rules {
            let lookup = |side: &Option<At<String>>, sink: &mut Sink<'_, '_>| -> Option<usize> {
                let s = side.as_ref()?;
                let found = by_name.get(s.value.as_str()).copied();
                if found.is_none() && endpoints_complete {
                    sink.error(
                        &s.span,
                        &s.field,
                        format!("no endpoint \"{}\" in this tenant (endpoints: {}); fix the name or add the [[endpoint]]", s.value, list(&names)),
                    );
                }
                found
            };
            let from = lookup(&r.from, &mut sink);
            let to = lookup(&r.to, &mut sink);
            let (Some(from), Some(to)) = (from, to) else {
                continue;
            };
            used[from] = true;
            used[to] = true;
            let (ef, et) = (&raw.endpoints[from], &raw.endpoints[to]);
            if from == to {
                if let Some(t) = &r.to {
                    sink.error(&t.span, &t.field, "a rule from an endpoint to itself means nothing (its traffic never enters corridor); name two different endpoints");
                }
                continue;
            }
            let stock = |e: &RawEndpoint| matches!(e.kind, Some(RawKind::WireGuard { .. }));
            if stock(ef) && stock(et) {
                sink.error(
                    &r.span,
                    &r.field,
                    format!(
                        "both {} and {} are stock WireGuard peers, so no corridor gateway would enforce this rule; one side must be an endpoint on a corridor gateway",
                        ef.field, et.field
                    ),
                );
                continue;
            }
            let same_gateway = match (&ef.kind, &et.kind) {
                (
                    Some(RawKind::Gateway { gateway: a, .. }),
                    Some(RawKind::Gateway { gateway: b, .. }),
                ) => a.value == b.value,
                _ => false,
            };
            if !same_gateway && reaches[from] == Reach::No && reaches[to] == Reach::No {
                sink.error(
                    &r.span,
                    &r.field,
                    format!(
                        "{} and {} can never reach each other: neither side has an `endpoint` (both only dial out); give one of their gateways (or the stock peer) an endpoint",
                        ef.field, et.field
                    ),
                );
            }
        }
        for (e, used) in raw.endpoints.iter().zip(used) {
            if !used && endpoints_complete {
                sink.warning(
                    &e.span,
                    &e.field,
                    "no [[allow]] rule names this endpoint, so it can send and receive nothing",
                );
            }
        }
    }

    /// Keys: for known tenants, present where needed, unique.
    fn check_keys(&mut self) {
        let Some(gws) = self.gateways else { return };
        let tenants = self.tenants;
        // Tenant names known; when a tenant file is broken, its file stem stands in for it.
        let tenants_complete = tenants
            .iter()
            .all(|t| t.raw.as_ref().is_some_and(|r| r.name.is_some()));
        let mut tenant_names: BTreeSet<String> = BTreeSet::new();
        for t in tenants {
            tenant_names.insert(t.stem.clone());
            if let Some(n) = t.raw.as_ref().and_then(|r| r.name.as_ref()) {
                tenant_names.insert(n.value.clone());
            }
        }
        // (gateway, tenant) → the first endpoint of the tenant on it.
        let mut served: BTreeMap<(String, String), String> = BTreeMap::new();
        for t in tenants {
            let Some(raw) = &t.raw else { continue };
            let Some(tn) = &raw.name else { continue };
            for e in &raw.endpoints {
                if let (Some(RawKind::Gateway { gateway, .. }), Some(en)) = (&e.kind, &e.name) {
                    served
                        .entry((gateway.value.clone(), tn.value.clone()))
                        .or_insert_with(|| en.value.clone());
                }
            }
        }
        let strict = self.mode == Mode::Strict;
        let Some(mut sink) = self.gw_sink() else {
            return;
        };
        for g in gws {
            let Some(gn) = &g.name else { continue };
            for k in &g.keys {
                // A tenant's name must equal its file's stem, so the stems name every tenant
                // even when some files are broken.
                if !tenant_names.contains(&k.tenant.value) {
                    {
                        sink.error(
                            &k.tenant.span,
                            &k.tenant.field,
                            format!(
                                "no tenant \"{}\" (tenants: {}); remove this key or add tenants/{}.toml",
                                k.tenant.value,
                                list(&tenant_names.iter().collect::<Vec<_>>()),
                                k.tenant.value
                            ),
                        );
                    }
                } else if !served.contains_key(&(gn.value.clone(), k.tenant.value.clone()))
                    && tenants_complete
                {
                    sink.warning(
                        &k.tenant.span,
                        &k.tenant.field,
                        format!("tenant \"{}\" has no endpoint on gateway \"{}\", so this key is unused", k.tenant.value, gn.value),
                    );
                }
            }
            if strict {
                for ((gw, tenant), endpoint) in &served {
                    if gw != &gn.value || g.keys.iter().any(|k| &k.tenant.value == tenant) {
                        continue;
                    }
                    let span = g.keys_span.clone().unwrap_or_else(|| gn.span.clone());
                    sink.error(
                        &span,
                        &format!("{}.keys", g.field),
                        format!(
                            "gateway \"{gw}\" serves tenant \"{tenant}\" (endpoint \"{endpoint}\") but has no key for it; run `corridor keys generate --policy <DIR> --gateway {gw} --out <KEYDIR>` on the gateway and add the {tenant} = \"<public key>\" it prints to keys"
                        ),
                    );
                }
            }
        }
        if !strict {
            return;
        }
        // Every (gateway, tenant) pair and every stock peer needs a key pair of its own.
        let mut seen: HashMap<[u8; 32], String> = HashMap::new();
        for g in gws {
            for k in &g.keys {
                let Some(key) = k.key else { continue };
                if let Some(first) = seen.get(&key) {
                    sink.error(
                        &k.tenant.span,
                        &k.tenant.field,
                        format!("same public key as {first}; every (gateway, tenant) pair needs a key pair of its own (run `corridor keys generate`)"),
                    );
                } else {
                    seen.insert(key, format!("{} in gateways.toml", k.tenant.field));
                }
            }
        }
        for t in tenants {
            let Some(raw) = &t.raw else { continue };
            let mut tsink = Sink {
                ctx: &t.ctx,
                diags: sink.diags,
            };
            for e in &raw.endpoints {
                if let Some(RawKind::WireGuard { key: Some(key), .. }) = &e.kind {
                    if let Some(first) = seen.get(&key.value) {
                        tsink.error(
                            &key.span,
                            &key.field,
                            format!(
                                "same public key as {first}; every peer needs a key pair of its own"
                            ),
                        );
                    } else {
                        seen.insert(
                            key.value,
                            format!("{} in {}", key.field, t.ctx.path.display()),
                        );
                    }
                }
            }
        }
    }
}

/// A namespace as a path, so that a name and its path compare equal (`acme` and
/// `/var/run/netns/acme`, `/run/netns/acme`), lexically: symbolic links are not followed.
fn netns_key(netns: &str) -> PathBuf {
    let path = if netns.contains('/') {
        Path::new(netns).components().collect::<PathBuf>()
    } else {
        Path::new(NETNS_DIR).join(netns)
    };
    match path.strip_prefix("/run/netns") {
        Ok(rest) => Path::new(NETNS_DIR).join(rest),
        Err(_) => path,
    }
}

fn list<T: AsRef<str>>(names: &[T]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Builds the model from raw structs that passed validation (`None` if something is missing,
/// which validation should have reported).
fn build(
    gws: &[RawGateway],
    tenant_files: &[TenantFile<'_>],
    warnings: Vec<Diagnostic>,
) -> Option<Policy> {
    let mut gateways = Vec::new();
    for g in gws {
        let endpoint = match g.endpoint {
            Opt::Valid(a) => Some(a),
            Opt::Absent => None,
            Opt::Invalid => return None,
        };
        let keepalive = match g.keepalive {
            Some(explicit) => explicit,
            None if endpoint.is_none() => Some(DEFAULT_DIAL_OUT_KEEPALIVE),
            None => None,
        };
        gateways.push(Gateway {
            name: g.name.as_ref()?.value.clone(),
            endpoint,
            keys: g
                .keys
                .iter()
                .filter_map(|k| Some((k.tenant.value.clone(), k.key?)))
                .collect(),
            keepalive,
            pin_endpoint: g.pin_endpoint.as_ref().is_some_and(|p| p.value),
        });
    }
    let mut tenants = Vec::new();
    for tf in tenant_files {
        let raw = tf.raw.as_ref()?;
        let mut endpoints = Vec::new();
        for e in &raw.endpoints {
            let kind = match e.kind.as_ref()? {
                RawKind::Gateway {
                    gateway,
                    netns,
                    interface,
                } => EndpointKind::Gateway {
                    gateway: gateway.value.clone(),
                    netns: netns.value.clone(),
                    interface: match interface {
                        Opt::Valid(i) => i.value.clone(),
                        Opt::Absent => DEFAULT_INTERFACE.to_owned(),
                        Opt::Invalid => return None,
                    },
                },
                RawKind::WireGuard {
                    key,
                    endpoint,
                    pin_endpoint,
                } => EndpointKind::WireGuard(StockPeer {
                    public_key: key.as_ref()?.value,
                    endpoint: match endpoint {
                        Opt::Valid(a) => Some(*a),
                        Opt::Absent => None,
                        Opt::Invalid => return None,
                    },
                    pin_endpoint: pin_endpoint.as_ref().is_some_and(|p| p.value),
                }),
            };
            endpoints.push(Endpoint {
                name: e.name.as_ref()?.value.clone(),
                kind,
                addresses: e.addresses.iter().map(|p| p.value).collect(),
                routes: e.routes.iter().map(|p| p.value).collect(),
            });
        }
        let mut rules = Vec::new();
        for r in &raw.rules {
            rules.push(Rule {
                from: r.from.as_ref()?.value.clone(),
                to: r.to.as_ref()?.value.clone(),
                protocol: r.protocol?,
                ports: r.ports.clone(),
            });
        }
        tenants.push(Tenant {
            name: raw.name.as_ref()?.value.clone(),
            file: tf.ctx.path.to_path_buf(),
            address_space: raw.address_space.iter().map(|p| p.value).collect(),
            conntrack_limit: raw.conntrack_limit,
            endpoints,
            rules,
        });
    }
    Some(Policy {
        gateways,
        tenants,
        warnings,
    })
}
