//! From an opened bundle to what the engine runs: this gateway's private keys joined to the
//! bundle's public plan, with key rotation.
//!
//! Each tenant has `<tenant>.key` and, during a rotation, `<tenant>.next.key` in the key
//! directory. The bundle says which public key the controller has for this gateway and tenant
//! (`own_key`): the current key's, or the next key's (then the next key is used, and promoted
//! over `<tenant>.key` once the plan is applied). A tenant whose key the controller does not
//! know yet (none, or one that matches no local key) is left out of the plan, and its current
//! key's public half is uploaded: the next bundle carries it.

use std::path::{Path, PathBuf};

use dataplane::SecretKey;
use dataplane::io::GatewayPlan;

use crate::bundle::BundleContent;
use crate::compile::PublicPlan;
use crate::keys::{TenantKeys, key_path, read_key_file, write_key_file};

/// Where a tenant's next (rotation) key lives.
pub fn next_key_path(dir: &Path, tenant: &str) -> PathBuf {
    dir.join(format!("{tenant}.next.key"))
}

/// What turning a bundle into a plan found.
#[derive(Debug)]
pub struct Built {
    /// The plan (tenants whose keys the controller does not know yet left out).
    pub plan: GatewayPlan,
    /// Tenants whose next key the plan uses: promote them once it is applied.
    pub promote: Vec<String>,
    /// Tenants left out, with the public key to upload for each.
    pub upload: Vec<(String, [u8; 32])>,
}

fn read_optional(path: &Path) -> Result<Option<SecretKey>, String> {
    if !path.exists() {
        return Ok(None);
    }
    read_key_file(path).map(Some).map_err(|e| e.to_string())
}

/// The current key of `tenant`, made if there is none.
pub fn current_or_new(dir: &Path, tenant: &str) -> Result<SecretKey, String> {
    let path = key_path(dir, tenant);
    if let Some(k) = read_optional(&path)? {
        return Ok(k);
    }
    super::state::ensure_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let key = SecretKey::generate();
    write_key_file(&path, &key).map_err(|e| e.to_string())?;
    tracing::info!(%tenant, path = %path.display(), "made a tenant key");
    Ok(key)
}

/// Builds the plan of `content` with the keys in `key_dir`.
pub fn build(
    gateway: &str,
    content: &BundleContent,
    key_dir: &Path,
    mtu: u16,
) -> Result<Built, String> {
    let mut keys = TenantKeys::new();
    let mut promote = Vec::new();
    let mut upload = Vec::new();
    let mut kept = Vec::new();
    for tenant in &content.plan.tenants {
        let name = tenant.name.as_str();
        let current = current_or_new(key_dir, name)?;
        let next = read_optional(&next_key_path(key_dir, name))?;
        match tenant.own_key {
            Some(k) if k == current.public_key() => {
                keys.insert(name, current);
                kept.push(tenant.clone());
            }
            Some(k) if next.as_ref().is_some_and(|n| n.public_key() == k) => {
                if let Some(n) = next {
                    keys.insert(name, n);
                }
                promote.push(name.to_owned());
                kept.push(tenant.clone());
            }
            _ => {
                // Unknown to the controller: register the key the gateway has (the next one if
                // a rotation is under way, so that the rotation completes).
                let key = next.as_ref().unwrap_or(&current).public_key();
                upload.push((name.to_owned(), key));
            }
        }
    }
    let filtered = PublicPlan {
        interfaces: content
            .plan
            .interfaces
            .iter()
            .filter(|i| kept.iter().any(|t| t.name == i.tenant))
            .cloned()
            .collect(),
        tenants: kept,
    };
    let plan = filtered
        .with_keys(gateway, &keys)
        .map_err(|e| format!("bundle version {}: {e}", content.version))?;
    Ok(Built {
        plan: plan.into_runtime(mtu),
        promote,
        upload,
    })
}

/// Promotes `<tenant>.next.key` over `<tenant>.key` (an atomic rename).
pub fn promote(key_dir: &Path, tenant: &str) -> Result<(), String> {
    let next = next_key_path(key_dir, tenant);
    let current = key_path(key_dir, tenant);
    std::fs::rename(&next, &current).map_err(|e| {
        format!(
            "cannot promote {} over {}: {e}",
            next.display(),
            current.display()
        )
    })
}

/// Makes a fresh `<tenant>.next.key` for each tenant; returns their public keys.
pub fn make_next_keys(
    key_dir: &Path,
    tenants: &[String],
) -> Result<Vec<(String, [u8; 32])>, String> {
    let mut out = Vec::new();
    for tenant in tenants {
        let key = SecretKey::generate();
        write_key_file(&next_key_path(key_dir, tenant), &key).map_err(|e| e.to_string())?;
        out.push((tenant.clone(), key.public_key()));
    }
    Ok(out)
}
