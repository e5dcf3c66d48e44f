//! An app's interface: a TUN device created inside the app's network namespace.
//!
//! The device gets the endpoint's addresses and routes to the endpoint's allowed destinations
//! only; the app's namespace keeps its own default route (if any) for everything else, so
//! corridor never becomes the app's way to the rest of the world.

use std::process::Command;

use ip_network::IpNetwork;
use tun_rs::{DeviceBuilder, SyncDevice};

use super::IoError;
use super::netns::{NetnsId, in_netns_identified};

/// What to create for one local endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// The tenant.
    pub tenant: String,
    /// The endpoint.
    pub endpoint: String,
    /// The app's namespace (name or path).
    pub netns: String,
    /// The interface's name inside that namespace.
    pub ifname: String,
    /// Its MTU.
    pub mtu: u16,
    /// The endpoint's addresses.
    pub addresses: Vec<IpNetwork>,
    /// Destinations routed into the interface.
    pub routes: Vec<IpNetwork>,
}

/// Default interface name inside an app's namespace.
pub const DEFAULT_IFNAME: &str = "corridor0";
/// Default MTU: 1500 on the WAN less the worst-case (IPv6) WireGuard overhead.
pub const DEFAULT_MTU: u16 = 1420;

fn ip(args: &[&str], spec: &InterfaceSpec) -> Result<(), IoError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| IoError::Ip {
            netns: spec.netns.clone(),
            command: format!("ip {}", args.join(" ")),
            message: if source.kind() == std::io::ErrorKind::NotFound {
                "the `ip` command (iproute2) is not installed".to_owned()
            } else {
                source.to_string()
            },
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(IoError::Ip {
            netns: spec.netns.clone(),
            command: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Creates and configures the interface inside its namespace; the returned device is
/// non-blocking. Dropping it removes the interface (and its routes) from the namespace. Also
/// returns the identity of the namespace it was created in.
pub fn create(spec: &InterfaceSpec) -> Result<(SyncDevice, NetnsId), IoError> {
    in_netns_identified(&spec.netns, || {
        let device = DeviceBuilder::new()
            .name(&spec.ifname)
            .mtu(spec.mtu)
            // Virtio headers with TSO/USO: reads may be 64 KB super-packets (split in
            // userspace), writes are coalesced back into super-packets (GRO).
            .offload(true)
            .build_sync()
            .map_err(|source| IoError::Tun {
                netns: spec.netns.clone(),
                ifname: spec.ifname.clone(),
                source,
            })?;
        device
            .set_nonblocking(true)
            .map_err(|source| IoError::Tun {
                netns: spec.netns.clone(),
                ifname: spec.ifname.clone(),
                source,
            })?;
        let dev = spec.ifname.as_str();
        // No link-local address: the interface is point-to-point to corridor and needs no
        // neighbour discovery; without IPv6 addresses, no IPv6 at all.
        ip(&["link", "set", "dev", dev, "addrgenmode", "none"], spec)?;
        if !spec.addresses.iter().any(|a| matches!(a, IpNetwork::V6(_))) {
            let knob = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
            // Best effort: a kernel without IPv6 has no such file, which is fine.
            let _ = std::fs::write(knob, "1");
        }
        for addr in &spec.addresses {
            let a = addr.to_string();
            ip(&["address", "add", &a, "dev", dev], spec)?;
        }
        let mtu = spec.mtu.to_string();
        ip(&["link", "set", "dev", dev, "mtu", &mtu, "up"], spec)?;
        for route in &spec.routes {
            let r = route.to_string();
            ip(&["route", "replace", &r, "dev", dev], spec)?;
        }
        Ok(device)
    })
}
