//! A fleet for the controller's benches: 1,000 edge gateways (or any number) and one
//! data-centre gateway serving N tenants. Every tenant has an app on every edge gateway and one
//! destination on the data-centre gateway, so dc-1's bundle holds edges × tenants peers. Each
//! gateway has real identities, so that simulated agents can sign requests and open bundles.

use std::collections::BTreeMap;
use std::fmt::Write;

use controlplane::identity::{SealKey, SigningIdentity};
use controlplane::store::{GatewayRecord, PolicyFiles, Snapshot};
use dataplane::SecretKey;

/// One gateway of the fleet: what it would hold after enrollment.
#[derive(Debug)]
pub struct FleetGateway {
    /// Its name (`dc-1`, `edge-0` ...).
    pub name: String,
    /// Its control-channel signing key.
    pub signing: SigningIdentity,
    /// Its sealing key (bundles are sealed to it).
    pub seal: SealKey,
    /// Its WireGuard public key per tenant.
    pub tenant_keys: BTreeMap<String, [u8; 32]>,
}

/// The policy files and the gateways of a fleet.
#[derive(Debug)]
pub struct Fleet {
    /// The policy (gateways.toml and one file per tenant).
    pub policy: PolicyFiles,
    /// dc-1 first, then the edges.
    pub gateways: Vec<FleetGateway>,
    /// How many edges.
    pub edges: usize,
}

impl Fleet {
    /// `edges` edge gateways and dc-1, `tenants` tenants on each.
    pub fn new(edges: usize, tenants: usize) -> Fleet {
        let tenant_names: Vec<String> = (0..tenants).map(|t| format!("tenant-{t}")).collect();
        let gateway = |name: &str| FleetGateway {
            name: name.to_owned(),
            signing: SigningIdentity::generate(),
            seal: SealKey::generate(),
            tenant_keys: tenant_names
                .iter()
                .map(|t| (t.clone(), SecretKey::generate().public_key()))
                .collect(),
        };
        let mut text =
            String::from("[[gateway]]\nname = \"dc-1\"\nendpoint = \"192.0.2.1:51820\"\n\n");
        let mut gateways = vec![gateway("dc-1")];
        for e in 0..edges {
            let _ = writeln!(text, "[[gateway]]\nname = \"edge-{e}\"\n");
            gateways.push(gateway(&format!("edge-{e}")));
        }
        let tenants = tenant_names
            .iter()
            .enumerate()
            .map(|(t, name)| (format!("{name}.toml"), tenant_file(t, name, edges, 443)))
            .collect();
        Fleet {
            policy: PolicyFiles {
                gateways: text,
                tenants,
            },
            gateways,
            edges,
        }
    }

    /// The controller's view once every gateway enrolled and registered its keys.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            revision: 1,
            policy: Some(self.policy.clone()),
            gateways: self.gateways.iter().map(FleetGateway::record).collect(),
        }
    }

    /// The policy with one change: tenant-0's first app may use TCP `port` instead of 443
    /// (what an operator's one-line edit looks like).
    pub fn policy_with_port(&self, port: u16) -> PolicyFiles {
        let mut files = self.policy.clone();
        files.tenants.insert(
            "tenant-0.toml".into(),
            tenant_file(0, "tenant-0", self.edges, port),
        );
        files
    }
}

impl FleetGateway {
    /// Its registry record (enrolled, keys registered, not revoked).
    pub fn record(&self) -> GatewayRecord {
        GatewayRecord {
            name: self.name.clone(),
            signing_key: self.signing.public(),
            seal_key: self.seal.public(),
            tenant_keys: self.tenant_keys.clone(),
            key_generation: 1,
            rotate_requested: 0,
            enrolled_at: 0,
            revoked_at: None,
        }
    }
}

/// Tenant `t`: one destination on dc-1, an app on every edge allowed to reach it on TCP 443
/// (the first app on `first_port`).
fn tenant_file(t: usize, name: &str, edges: usize, first_port: u16) -> String {
    let mut text = format!("name = \"{name}\"\naddress-space = [\"10.{t}.0.0/16\"]\n\n");
    let _ = writeln!(
        text,
        "[[endpoint]]\nname = \"cloud\"\ngateway = \"dc-1\"\nnetns = \"{name}-cloud\"\naddresses = [\"10.{t}.250.1/32\"]\nroutes = [\"10.{t}.250.0/24\"]\n"
    );
    for e in 0..edges {
        let _ = writeln!(
            text,
            "[[endpoint]]\nname = \"app-{e}\"\ngateway = \"edge-{e}\"\nnetns = \"{name}-app\"\naddresses = [\"10.{t}.{}.{}/32\"]\n",
            e / 250,
            e % 250 + 1
        );
    }
    for e in 0..edges {
        let port = if e == 0 { first_port } else { 443 };
        let _ = writeln!(
            text,
            "[[allow]]\nfrom = \"app-{e}\"\nto = \"cloud\"\nprotocol = \"tcp\"\nports = [\"{port}\"]\n"
        );
    }
    text
}
