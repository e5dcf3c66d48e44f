//! Compiling a validated policy into one gateway's engine configuration and interface plan.
//!
//! For gateway G: the tenants served are those with an endpoint on G. Per tenant, the local
//! endpoints are those on G; the relevant rules are those with at least one local side; the
//! remote endpoints are the other sides of relevant rules. A remote endpoint on corridor gateway
//! H joins the peer named "H" (one per remote gateway); a stock WireGuard endpoint is a peer of
//! its own, named after the endpoint. Everything is ordered as in the policy files.
//!
//! Two steps: [`compile_public`] makes the [`PublicPlan`] (public keys only: what the controller
//! puts in a bundle), [`PublicPlan::with_keys`] adds the gateway's private keys on the gateway.
//! The controller fills each [`Gateway::keys`] from its registry first; a remote gateway that
//! has registered no key for a tenant yet is left out there ([`Unkeyed::Skip`]), while a
//! standalone policy must list every key ([`Unkeyed::Error`]).

use std::collections::{BTreeSet, HashMap};

use dataplane::config::{
    EndpointConfig, EngineConfig, Location, PeerConfig, RuleConfig, TenantConfig,
};
use ip_network::IpNetwork;

use crate::keys::TenantKeys;
use crate::policy::{Endpoint, EndpointKind, Gateway, Policy, Tenant};

/// What one gateway gets: the engine configuration and the interfaces to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPlan {
    /// The engine's configuration.
    pub engine: EngineConfig,
    /// One interface per local endpoint, in engine order (tenant, then endpoint).
    pub interfaces: Vec<InterfacePlan>,
}

/// The interface (TUN device) of one local endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InterfacePlan {
    /// The tenant.
    pub tenant: String,
    /// The local endpoint.
    pub endpoint: String,
    /// The app's network namespace: a name under `/var/run/netns`, or a path.
    pub netns: String,
    /// The interface's name inside that namespace (`corridor0` unless the endpoint names one;
    /// unique per namespace and gateway).
    pub interface: String,
    /// The endpoint's own addresses, assigned to the interface.
    pub addresses: Vec<IpNetwork>,
    /// The prefixes of the endpoints this one has rules with (in either direction): the only
    /// destinations the interface gets routes to.
    pub routes: Vec<IpNetwork>,
}

/// Why a gateway's configuration could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// The gateway is not in the policy.
    #[error("no gateway \"{name}\" in the policy (gateways: {known})")]
    UnknownGateway {
        /// The name asked for.
        name: String,
        /// The gateways there are, comma-separated.
        known: String,
    },
    /// No private key was given for a tenant the gateway serves.
    #[error(
        "no private key for tenant \"{tenant}\" on gateway \"{gateway}\"; create one with `corridor keys generate --gateway {gateway}`"
    )]
    MissingKey {
        /// The gateway.
        gateway: String,
        /// The tenant.
        tenant: String,
    },
    /// A private key does not belong to the public key the policy lists.
    #[error(
        "the private key for tenant \"{tenant}\" does not match gateways.toml's gateway \"{gateway}\".keys.{tenant}; use the matching key file or update gateways.toml"
    )]
    KeyMismatch {
        /// The gateway.
        gateway: String,
        /// The tenant.
        tenant: String,
    },
    /// The policy has no public key of a gateway for a tenant (only possible with a leniently
    /// loaded policy).
    #[error(
        "gateways.toml has no key of gateway \"{gateway}\" for tenant \"{tenant}\"; add it to the gateway's keys"
    )]
    MissingPublicKey {
        /// The gateway.
        gateway: String,
        /// The tenant.
        tenant: String,
    },
}

/// Compiles what `gateway` needs to know from `policy`, with its private keys `keys`.
pub fn compile_gateway(
    policy: &Policy,
    gateway: &str,
    keys: &TenantKeys,
) -> Result<GatewayPlan, CompileError> {
    compile_public(policy, gateway, Unkeyed::Error, &|_, _| None)?.with_keys(gateway, keys)
}

/// A gateway's plan without its private keys: what a bundle carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublicPlan {
    /// Per served tenant, in policy order.
    pub tenants: Vec<PublicTenant>,
    /// One interface per local endpoint, in engine order.
    pub interfaces: Vec<InterfacePlan>,
}

/// One tenant of a [`PublicPlan`]: a [`dataplane::config::TenantConfig`] without the private key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublicTenant {
    /// The tenant.
    pub name: String,
    /// The gateway's own public key for this tenant as registered (the private key on the
    /// gateway must match it); `None` when the gateway has registered none yet.
    pub own_key: Option<[u8; 32]>,
    /// As in `TenantConfig`.
    pub endpoints: Vec<EndpointConfig>,
    /// As in `TenantConfig` (with preshared keys where the controller hands them out).
    pub peers: Vec<PeerConfig>,
    /// As in `TenantConfig`.
    pub rules: Vec<RuleConfig>,
    /// As in `TenantConfig`.
    pub conntrack_limit: usize,
}

/// What to do about a remote gateway that has no public key for a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unkeyed {
    /// Standalone: an error (`CompileError::MissingPublicKey`).
    Error,
    /// Controller: leave that gateway out (not enrolled yet, or revoked), with its endpoints and
    /// the rules that name them.
    Skip,
}

/// Compiles `gateway`'s plan with public keys only. `psk(tenant, peer_gateway)` gives the
/// preshared key of a corridor-to-corridor pair (stock WireGuard peers get none).
pub fn compile_public(
    policy: &Policy,
    gateway: &str,
    unkeyed: Unkeyed,
    psk: &dyn Fn(&str, &str) -> Option<dataplane::SecretKey>,
) -> Result<PublicPlan, CompileError> {
    compile_indexed(policy, &PolicyIndex::new(policy), gateway, unkeyed, psk)
}

/// [`compile_public`] with an index built once for many gateways of `policy` (the controller
/// compiles every gateway of a policy in turn). `index` must be `PolicyIndex::new(policy)`
/// (keys may change in between: they are not indexed).
pub fn compile_indexed(
    policy: &Policy,
    index: &PolicyIndex,
    gateway: &str,
    unkeyed: Unkeyed,
    psk: &dyn Fn(&str, &str) -> Option<dataplane::SecretKey>,
) -> Result<PublicPlan, CompileError> {
    let local_gw = index
        .gateway(policy, gateway)
        .ok_or_else(|| unknown_gateway(policy, gateway))?;
    let mut plan = PublicPlan {
        tenants: Vec::new(),
        interfaces: Vec::new(),
    };
    for &ti in index.served.get(gateway).map_or(&[][..], Vec::as_slice) {
        let (Some(tenant), Some(tix)) = (policy.tenants.get(ti), index.tenants.get(ti)) else {
            continue;
        };
        let cx = TenantCx {
            policy,
            index,
            tenant,
            tix,
            local_gw,
            unkeyed,
        };
        compile_tenant(&cx, psk, &mut plan)?;
    }
    Ok(plan)
}

/// Name lookups over one policy, so that compiling one gateway costs about what that gateway
/// gets rather than the size of the whole policy (a fleet of 1,000 gateways made linear
/// lookups per rule quadratic).
#[derive(Debug, Clone, Default)]
pub struct PolicyIndex {
    gateways: HashMap<String, usize>,
    tenants: Vec<TenantIndex>,
    /// Gateway → the tenants with an endpoint on it, in policy order.
    served: HashMap<String, Vec<usize>>,
}

#[derive(Debug, Clone, Default)]
struct TenantIndex {
    endpoints: HashMap<String, usize>,
    /// Gateway → its endpoints of this tenant, in policy order.
    local: HashMap<String, Vec<usize>>,
    /// Gateway → the rules with a side on it, in policy order.
    rules: HashMap<String, Vec<usize>>,
}

impl PolicyIndex {
    /// Indexes `policy`.
    pub fn new(policy: &Policy) -> Self {
        let mut index = PolicyIndex {
            gateways: policy
                .gateways
                .iter()
                .enumerate()
                .map(|(i, g)| (g.name.clone(), i))
                .collect(),
            ..PolicyIndex::default()
        };
        for (ti, tenant) in policy.tenants.iter().enumerate() {
            let mut tix = TenantIndex::default();
            for (i, e) in tenant.endpoints.iter().enumerate() {
                tix.endpoints.insert(e.name.clone(), i);
                if let Some(g) = e.gateway() {
                    tix.local.entry(g.to_owned()).or_default().push(i);
                }
            }
            for (ri, r) in tenant.rules.iter().enumerate() {
                let side = |name: &str| {
                    tix.endpoints
                        .get(name)
                        .and_then(|&i| tenant.endpoints.get(i)?.gateway())
                };
                let (from, to) = (side(&r.from), side(&r.to));
                for g in [from, to].into_iter().flatten() {
                    let list = tix.rules.entry(g.to_owned()).or_default();
                    if list.last() != Some(&ri) {
                        list.push(ri);
                    }
                }
            }
            for g in tix.local.keys() {
                index.served.entry(g.clone()).or_default().push(ti);
            }
            index.tenants.push(tix);
        }
        index
    }

    fn gateway<'p>(&self, policy: &'p Policy, name: &str) -> Option<&'p Gateway> {
        self.gateways
            .get(name)
            .and_then(|&i| policy.gateways.get(i))
    }
}

/// One tenant being compiled for one gateway.
struct TenantCx<'a> {
    policy: &'a Policy,
    index: &'a PolicyIndex,
    tenant: &'a Tenant,
    tix: &'a TenantIndex,
    local_gw: &'a Gateway,
    unkeyed: Unkeyed,
}

impl<'a> TenantCx<'a> {
    fn endpoint_index(&self, name: &str) -> Option<usize> {
        self.tix.endpoints.get(name).copied()
    }

    fn endpoint(&self, name: &str) -> Option<&'a Endpoint> {
        self.endpoint_index(name)
            .and_then(|i| self.tenant.endpoints.get(i))
    }
}

#[cfg(target_os = "linux")]
impl GatewayPlan {
    /// What the Linux runtime runs: the engine configuration, and each interface with `mtu`
    /// (the gateway's setting; the policy does not carry one).
    pub fn into_runtime(self, mtu: u16) -> dataplane::io::GatewayPlan {
        let interfaces = self
            .interfaces
            .into_iter()
            .map(|i| dataplane::io::InterfaceSpec {
                tenant: i.tenant,
                endpoint: i.endpoint,
                netns: i.netns,
                ifname: i.interface,
                mtu,
                addresses: i.addresses,
                routes: i.routes,
            })
            .collect();
        dataplane::io::GatewayPlan {
            engine: self.engine,
            interfaces,
        }
    }
}

impl PublicPlan {
    /// Adds this gateway's private keys: each must match `own_key` (`KeyMismatch`), a tenant
    /// without one is `MissingKey`.
    pub fn with_keys(&self, gateway: &str, keys: &TenantKeys) -> Result<GatewayPlan, CompileError> {
        let mut engine = EngineConfig::default();
        for t in &self.tenants {
            let private_key = keys
                .get(&t.name)
                .ok_or_else(|| CompileError::MissingKey {
                    gateway: gateway.to_owned(),
                    tenant: t.name.clone(),
                })?
                .clone();
            let own_key = t.own_key.ok_or_else(|| CompileError::MissingPublicKey {
                gateway: gateway.to_owned(),
                tenant: t.name.clone(),
            })?;
            if private_key.public_key() != own_key {
                return Err(CompileError::KeyMismatch {
                    gateway: gateway.to_owned(),
                    tenant: t.name.clone(),
                });
            }
            engine.tenants.push(TenantConfig {
                name: t.name.clone(),
                private_key,
                endpoints: t.endpoints.clone(),
                peers: t.peers.clone(),
                rules: t.rules.clone(),
                conntrack_limit: t.conntrack_limit,
            });
        }
        Ok(GatewayPlan {
            engine,
            interfaces: self.interfaces.clone(),
        })
    }
}

fn unknown_gateway(policy: &Policy, name: &str) -> CompileError {
    CompileError::UnknownGateway {
        name: name.to_owned(),
        known: policy
            .gateways
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn compile_tenant(
    cx: &TenantCx<'_>,
    psk: &dyn Fn(&str, &str) -> Option<dataplane::SecretKey>,
    plan: &mut PublicPlan,
) -> Result<(), CompileError> {
    let (policy, tenant, local_gw, unkeyed) = (cx.policy, cx.tenant, cx.local_gw, cx.unkeyed);
    let g = local_gw.name.as_str();
    let t = tenant.name.as_str();

    // With `Unkeyed::Skip`, an endpoint on a remote gateway that has no key for this tenant is
    // out of reach: no session can be made with it, so nothing may name it.
    let skipped = |name: &str| {
        unkeyed == Unkeyed::Skip
            && cx
                .endpoint(name)
                .and_then(|e| e.gateway())
                .filter(|&h| h != g)
                .and_then(|h| cx.index.gateway(policy, h))
                .is_some_and(|h| !h.keys.contains_key(t))
    };
    // The rules with a local side.
    let rules: Vec<_> = cx
        .tix
        .rules
        .get(g)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|&ri| tenant.rules.get(ri))
        .filter(|r| !skipped(&r.from) && !skipped(&r.to))
        .collect();
    let local: &[usize] = cx.tix.local.get(g).map_or(&[][..], Vec::as_slice);
    // Endpoint indices, so that they come out in policy order.
    let mut included: BTreeSet<usize> = local.iter().copied().collect();
    for r in &rules {
        included.extend(cx.endpoint_index(&r.from));
        included.extend(cx.endpoint_index(&r.to));
    }

    let mut endpoints = Vec::new();
    let mut peers: Vec<PeerConfig> = Vec::new();
    let mut peer_keys: HashMap<PeerKey<'_>, usize> = HashMap::new();
    for e in included.iter().filter_map(|&i| tenant.endpoints.get(i)) {
        let location = match &e.kind {
            EndpointKind::Gateway { gateway, .. } if gateway == g => Location::Local,
            EndpointKind::Gateway { gateway, .. } => {
                let remote = cx
                    .index
                    .gateway(policy, gateway)
                    .ok_or_else(|| unknown_gateway(policy, gateway))?;
                let public_key =
                    *remote
                        .keys
                        .get(t)
                        .ok_or_else(|| CompileError::MissingPublicKey {
                            gateway: gateway.clone(),
                            tenant: t.to_owned(),
                        })?;
                Location::Peer(peer_index(
                    &mut peers,
                    &mut peer_keys,
                    PeerKey::Gateway(gateway),
                    || PeerConfig {
                        name: remote.name.clone(),
                        public_key,
                        preshared_key: psk(t, &remote.name),
                        endpoint: remote.endpoint,
                        persistent_keepalive: local_gw.keepalive,
                        roaming: !remote.pin_endpoint,
                    },
                ))
            }
            EndpointKind::WireGuard(stock) => Location::Peer(peer_index(
                &mut peers,
                &mut peer_keys,
                PeerKey::Stock(&e.name),
                || PeerConfig {
                    name: e.name.clone(),
                    public_key: stock.public_key,
                    preshared_key: None,
                    endpoint: stock.endpoint,
                    persistent_keepalive: local_gw.keepalive,
                    roaming: !stock.pin_endpoint,
                },
            )),
        };
        endpoints.push(EndpointConfig {
            name: e.name.clone(),
            location,
            prefixes: e.prefixes(),
        });
    }

    let positions: HashMap<&str, usize> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.as_str(), i))
        .collect();
    let index_of = |name: &str| positions.get(name).copied();
    let mut rule_configs = Vec::new();
    for r in &rules {
        // Both sides are included above; validation guarantees the names exist.
        if let (Some(from), Some(to)) = (index_of(&r.from), index_of(&r.to)) {
            rule_configs.push(RuleConfig {
                from,
                to,
                protocol: r.protocol,
                ports: r.ports.clone(),
            });
        }
    }

    // `local` holds only this gateway's endpoints (corridor endpoints on it).
    for e in local.iter().filter_map(|&i| tenant.endpoints.get(i)) {
        let EndpointKind::Gateway {
            netns, interface, ..
        } = &e.kind
        else {
            continue;
        };
        let mut routes: Vec<IpNetwork> = Vec::new();
        let mut seen: BTreeSet<IpNetwork> = BTreeSet::new();
        for r in &rules {
            let other = if r.from == e.name {
                &r.to
            } else if r.to == e.name {
                &r.from
            } else {
                continue;
            };
            for p in cx.endpoint(other).map(|o| o.prefixes()).unwrap_or_default() {
                if seen.insert(p) {
                    routes.push(p);
                }
            }
        }
        // A prefix inside another one of the list adds nothing to the interface's routes.
        let all = routes.clone();
        routes.retain(|p| {
            !all.iter()
                .any(|q| q != p && crate::policy::prefix_within(p, q))
        });
        plan.interfaces.push(InterfacePlan {
            tenant: t.to_owned(),
            endpoint: e.name.clone(),
            netns: netns.clone(),
            interface: interface.clone(),
            addresses: e.addresses.clone(),
            routes,
        });
    }

    plan.tenants.push(PublicTenant {
        name: t.to_owned(),
        own_key: local_gw.keys.get(t).copied(),
        endpoints,
        peers,
        rules: rule_configs,
        conntrack_limit: tenant.conntrack_limit,
    });
    Ok(())
}

/// What makes a peer: a remote corridor gateway, or a stock WireGuard endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerKey<'a> {
    Gateway(&'a str),
    Stock(&'a str),
}

/// The index of the peer with this key, adding it (made by `peer`) if new.
fn peer_index<'a>(
    peers: &mut Vec<PeerConfig>,
    keys: &mut HashMap<PeerKey<'a>, usize>,
    key: PeerKey<'a>,
    peer: impl FnOnce() -> PeerConfig,
) -> usize {
    *keys.entry(key).or_insert_with(|| {
        peers.push(peer());
        peers.len() - 1
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use dataplane::SecretKey;
    use dataplane::config::encode_key;

    use super::*;
    use crate::policy::{GATEWAYS_FILE, Mode, PolicySources, SourceFile, TENANTS_DIR};

    fn secret(n: u8) -> SecretKey {
        SecretKey::from_bytes([n; 32])
    }

    /// acme: `app` on edge-1 talks to `cloud` on dc-1, to `backup` on dc-2 and hears from the
    /// stock WireGuard peer `laptop`; `db` on dc-2 talks to `cloud` only (not relevant to edge-1).
    fn policy() -> Policy {
        let gateways = format!(
            "[[gateway]]\nname = \"edge-1\"\nkeys = {{ acme = \"{}\" }}\n\n\
             [[gateway]]\nname = \"dc-1\"\nendpoint = \"192.168.50.2:51820\"\nkeys = {{ acme = \"{}\" }}\n\n\
             [[gateway]]\nname = \"dc-2\"\nendpoint = \"192.168.50.3:51820\"\nkeys = {{ acme = \"{}\" }}\n",
            encode_key(&secret(1).public_key()),
            encode_key(&secret(2).public_key()),
            encode_key(&secret(3).public_key()),
        );
        let tenant = format!(
            "name = \"acme\"\naddress-space = [\"10.20.0.0/16\"]\n\n\
             [[endpoint]]\nname = \"app\"\ngateway = \"edge-1\"\nnetns = \"app\"\naddresses = [\"10.20.1.10/32\"]\n\n\
             [[endpoint]]\nname = \"cloud\"\ngateway = \"dc-1\"\nnetns = \"cloud\"\naddresses = [\"10.20.100.1/32\"]\n\n\
             [[endpoint]]\nname = \"backup\"\ngateway = \"dc-2\"\nnetns = \"backup\"\naddresses = [\"10.20.150.1/32\"]\n\n\
             [[endpoint]]\nname = \"db\"\ngateway = \"dc-2\"\nnetns = \"db\"\naddresses = [\"10.20.160.1/32\"]\n\n\
             [[endpoint]]\nname = \"laptop\"\nwireguard = {{ public-key = \"{}\", endpoint = \"192.168.60.7:51820\" }}\naddresses = [\"10.20.200.1/32\"]\n\n\
             [[allow]]\nfrom = \"app\"\nto = \"cloud\"\nprotocol = \"tcp\"\n\n\
             [[allow]]\nfrom = \"app\"\nto = \"backup\"\nprotocol = \"tcp\"\n\n\
             [[allow]]\nfrom = \"laptop\"\nto = \"app\"\nprotocol = \"tcp\"\n\n\
             [[allow]]\nfrom = \"db\"\nto = \"cloud\"\nprotocol = \"tcp\"\n",
            encode_key(&secret(9).public_key()),
        );
        let file = |path: PathBuf, text: String| SourceFile { path, text };
        let sources = PolicySources {
            gateways: Some(file(GATEWAYS_FILE.into(), gateways)),
            tenants: Some(vec![file(
                PathBuf::from(TENANTS_DIR).join("acme.toml"),
                tenant,
            )]),
            read_errors: Vec::new(),
        };
        Policy::from_sources(&sources, Mode::Strict).unwrap_or_else(|e| panic!("{e}"))
    }

    fn without_key(mut policy: Policy, gateway: &str) -> Policy {
        for g in &mut policy.gateways {
            if g.name == gateway {
                g.keys.clear();
            }
        }
        policy
    }

    fn keys(n: u8) -> TenantKeys {
        let mut keys = TenantKeys::new();
        keys.insert("acme", secret(n));
        keys
    }

    fn endpoint_names(t: &PublicTenant) -> Vec<&str> {
        t.endpoints.iter().map(|e| e.name.as_str()).collect()
    }

    fn peer_names(t: &PublicTenant) -> Vec<&str> {
        t.peers.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn compile_gateway_is_public_plan_with_keys() {
        let policy = policy();
        let public = compile_public(&policy, "edge-1", Unkeyed::Error, &|_, _| None).unwrap();
        let t = &public.tenants[0];
        assert_eq!(t.own_key, Some(secret(1).public_key()));
        assert_eq!(endpoint_names(t), ["app", "cloud", "backup", "laptop"]);
        assert_eq!(peer_names(t), ["dc-1", "dc-2", "laptop"]);
        assert_eq!(t.rules.len(), 3);
        let plan = compile_gateway(&policy, "edge-1", &keys(1)).unwrap();
        assert_eq!(plan, public.with_keys("edge-1", &keys(1)).unwrap());
        assert_eq!(plan.engine.tenants[0].private_key, secret(1));
        assert_eq!(plan.interfaces, public.interfaces);
        // The same plan in Skip mode when every gateway has its keys.
        assert_eq!(
            compile_public(&policy, "edge-1", Unkeyed::Skip, &|_, _| None).unwrap(),
            public
        );
    }

    #[test]
    fn unkeyed_remote_is_an_error_in_error_mode() {
        let policy = without_key(policy(), "dc-2");
        let err = compile_public(&policy, "edge-1", Unkeyed::Error, &|_, _| None).unwrap_err();
        assert_eq!(
            err,
            CompileError::MissingPublicKey {
                gateway: "dc-2".into(),
                tenant: "acme".into()
            }
        );
        assert_eq!(
            compile_gateway(&policy, "edge-1", &keys(1)).unwrap_err(),
            err
        );
    }

    #[test]
    fn unkeyed_remote_is_left_out_in_skip_mode() {
        let policy = without_key(policy(), "dc-2");
        let public = compile_public(&policy, "edge-1", Unkeyed::Skip, &|_, _| None).unwrap();
        let t = &public.tenants[0];
        assert_eq!(endpoint_names(t), ["app", "cloud", "laptop"]);
        assert_eq!(peer_names(t), ["dc-1", "laptop"]);
        // app -> cloud and laptop -> app remain, with indices into the reduced list.
        let rules: Vec<(&str, &str)> = t
            .rules
            .iter()
            .map(|r| {
                (
                    t.endpoints[r.from].name.as_str(),
                    t.endpoints[r.to].name.as_str(),
                )
            })
            .collect();
        assert_eq!(rules, [("app", "cloud"), ("laptop", "app")]);
        for e in &t.endpoints {
            if let Location::Peer(i) = e.location {
                assert!(i < t.peers.len());
            }
        }
        let routes: Vec<String> = public.interfaces[0]
            .routes
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(routes, ["10.20.100.1/32", "10.20.200.1/32"]);
        assert!(public.with_keys("edge-1", &keys(1)).is_ok());

        // dc-2 itself, without its own key: compiled (own_key None), and refused with keys.
        let own = compile_public(&policy, "dc-2", Unkeyed::Skip, &|_, _| None).unwrap();
        assert_eq!(own.tenants[0].own_key, None);
        assert_eq!(
            own.with_keys("dc-2", &keys(3)).unwrap_err(),
            CompileError::MissingPublicKey {
                gateway: "dc-2".into(),
                tenant: "acme".into()
            }
        );
    }

    #[test]
    fn skipping_the_only_peer_leaves_the_interface_without_routes() {
        let mut policy = without_key(policy(), "dc-1");
        // dc-2's db only talks to cloud on dc-1, which has no key now.
        let public = compile_public(&policy, "dc-2", Unkeyed::Skip, &|_, _| None).unwrap();
        let t = &public.tenants[0];
        assert_eq!(endpoint_names(t), ["app", "backup", "db"]);
        assert_eq!(peer_names(t), ["edge-1"]);
        assert_eq!(t.rules.len(), 1);
        let db = public
            .interfaces
            .iter()
            .find(|i| i.endpoint == "db")
            .unwrap();
        assert!(db.routes.is_empty());
        // A remote gateway missing from the policy altogether is still an error.
        policy.gateways.retain(|g| g.name != "dc-1");
        assert!(matches!(
            compile_public(&policy, "dc-2", Unkeyed::Skip, &|_, _| None),
            Err(CompileError::UnknownGateway { .. })
        ));
    }

    #[test]
    fn psk_goes_to_gateway_peers_only() {
        let policy = policy();
        let calls = std::cell::RefCell::new(Vec::new());
        let psk = |tenant: &str, peer: &str| {
            calls
                .borrow_mut()
                .push((tenant.to_owned(), peer.to_owned()));
            (peer == "dc-1").then(|| secret(42))
        };
        let public = compile_public(&policy, "edge-1", Unkeyed::Error, &psk).unwrap();
        let t = &public.tenants[0];
        let psks: Vec<_> = t.peers.iter().map(|p| p.preshared_key.clone()).collect();
        assert_eq!(psks, [Some(secret(42)), None, None]);
        assert_eq!(
            *calls.borrow(),
            [
                ("acme".to_owned(), "dc-1".to_owned()),
                ("acme".to_owned(), "dc-2".to_owned())
            ]
        );
        let plan = public.with_keys("edge-1", &keys(1)).unwrap();
        assert_eq!(
            plan.engine.tenants[0].peers[0].preshared_key,
            Some(secret(42))
        );
    }

    #[test]
    fn with_keys_errors() {
        let public = compile_public(&policy(), "edge-1", Unkeyed::Error, &|_, _| None).unwrap();
        assert_eq!(
            public.with_keys("edge-1", &TenantKeys::new()).unwrap_err(),
            CompileError::MissingKey {
                gateway: "edge-1".into(),
                tenant: "acme".into()
            }
        );
        assert_eq!(
            public.with_keys("edge-1", &keys(2)).unwrap_err(),
            CompileError::KeyMismatch {
                gateway: "edge-1".into(),
                tenant: "acme".into()
            }
        );
    }

    #[test]
    fn public_plan_serde_round_trip() {
        let psk = |_: &str, _: &str| Some(secret(7));
        let public = compile_public(&policy(), "edge-1", Unkeyed::Error, &psk).unwrap();
        let json = serde_json::to_string(&public).unwrap();
        let back: PublicPlan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, public);
    }
}
