//! Compiling a validated policy into one gateway's engine configuration and interface plan.
//!
//! For gateway G: the tenants served are those with an endpoint on G. Per tenant, the local
//! endpoints are those on G; the relevant rules are those with at least one local side; the
//! remote endpoints are the other sides of relevant rules. A remote endpoint on corridor gateway
//! H joins the peer named "H" (one per remote gateway); a stock WireGuard endpoint is a peer of
//! its own, named after the endpoint. Everything is ordered as in the policy files.

use std::collections::BTreeSet;

use dataplane::config::{
    EndpointConfig, EngineConfig, Location, PeerConfig, RuleConfig, TenantConfig,
};
use ip_network::IpNetwork;

use crate::keys::TenantKeys;
use crate::policy::{EndpointKind, Gateway, Policy, Tenant};

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
    let local_gw = policy
        .gateway(gateway)
        .ok_or_else(|| CompileError::UnknownGateway {
            name: gateway.to_owned(),
            known: policy
                .gateways
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let mut plan = GatewayPlan {
        engine: EngineConfig::default(),
        interfaces: Vec::new(),
    };
    for tenant in policy.served_tenants(gateway) {
        compile_tenant(policy, local_gw, tenant, keys, &mut plan)?;
    }
    Ok(plan)
}

fn compile_tenant(
    policy: &Policy,
    local_gw: &Gateway,
    tenant: &Tenant,
    keys: &TenantKeys,
    plan: &mut GatewayPlan,
) -> Result<(), CompileError> {
    let g = local_gw.name.as_str();
    let t = tenant.name.as_str();
    let private_key = keys
        .get(t)
        .ok_or_else(|| CompileError::MissingKey {
            gateway: g.to_owned(),
            tenant: t.to_owned(),
        })?
        .clone();
    if local_gw.keys.get(t) != Some(&private_key.public_key()) {
        return Err(CompileError::KeyMismatch {
            gateway: g.to_owned(),
            tenant: t.to_owned(),
        });
    }

    let is_local = |name: &str| tenant.endpoint(name).and_then(|e| e.gateway()) == Some(g);
    let rules: Vec<_> = tenant
        .rules
        .iter()
        .filter(|r| is_local(&r.from) || is_local(&r.to))
        .collect();
    let mut included: BTreeSet<&str> = BTreeSet::new();
    for e in &tenant.endpoints {
        if e.gateway() == Some(g) {
            included.insert(&e.name);
        }
    }
    for r in &rules {
        included.insert(&r.from);
        included.insert(&r.to);
    }

    let mut endpoints = Vec::new();
    let mut peers: Vec<PeerConfig> = Vec::new();
    let mut peer_keys: Vec<PeerKey<'_>> = Vec::new();
    for e in tenant
        .endpoints
        .iter()
        .filter(|e| included.contains(e.name.as_str()))
    {
        let location = match &e.kind {
            EndpointKind::Gateway { gateway, .. } if gateway == g => Location::Local,
            EndpointKind::Gateway { gateway, .. } => {
                let remote =
                    policy
                        .gateway(gateway)
                        .ok_or_else(|| CompileError::UnknownGateway {
                            name: gateway.clone(),
                            known: policy
                                .gateways
                                .iter()
                                .map(|g| g.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                        })?;
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
                    PeerConfig {
                        name: remote.name.clone(),
                        public_key,
                        preshared_key: None,
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
                PeerConfig {
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

    let index_of = |name: &str| {
        endpoints
            .iter()
            .position(|e: &EndpointConfig| e.name == name)
    };
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

    for e in tenant.endpoints.iter() {
        let EndpointKind::Gateway {
            gateway,
            netns,
            interface,
        } = &e.kind
        else {
            continue;
        };
        if gateway != g {
            continue;
        }
        let mut routes: Vec<IpNetwork> = Vec::new();
        for r in &rules {
            let other = if r.from == e.name {
                &r.to
            } else if r.to == e.name {
                &r.from
            } else {
                continue;
            };
            for p in tenant
                .endpoint(other)
                .map(|o| o.prefixes())
                .unwrap_or_default()
            {
                if !routes.contains(&p) {
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

    plan.engine.tenants.push(TenantConfig {
        name: t.to_owned(),
        private_key,
        endpoints,
        peers,
        rules: rule_configs,
        conntrack_limit: tenant.conntrack_limit,
    });
    Ok(())
}

/// What makes a peer: a remote corridor gateway, or a stock WireGuard endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKey<'a> {
    Gateway(&'a str),
    Stock(&'a str),
}

/// The index of the peer with this key, adding it if new.
fn peer_index<'a>(
    peers: &mut Vec<PeerConfig>,
    keys: &mut Vec<PeerKey<'a>>,
    key: PeerKey<'a>,
    peer: PeerConfig,
) -> usize {
    if let Some(i) = keys.iter().position(|k| *k == key) {
        return i;
    }
    keys.push(key);
    peers.push(peer);
    peers.len() - 1
}

// ---- CONTRACT (skeleton by the lead; implementer: helper B). Keep names and signatures. ----
// `GatewayPlan`/`InterfacePlan` and the dataplane config types they hold get serde derives;
// `compile_gateway` becomes `compile_public(.., Unkeyed::Error, no psk)?.with_keys(..)`.

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
    let _ = (policy, gateway, unkeyed, psk);
    unimplemented!()
}

impl PublicPlan {
    /// Adds this gateway's private keys: each must match `own_key` (`KeyMismatch`), a tenant
    /// without one is `MissingKey`.
    pub fn with_keys(&self, gateway: &str, keys: &TenantKeys) -> Result<GatewayPlan, CompileError> {
        let _ = (gateway, keys);
        unimplemented!()
    }
}
