//! Network namespaces: find one by name or path, and run code inside it.
//!
//! `setns` changes the namespace of the calling thread only, so work that must happen inside an
//! app's namespace (creating its TUN device, configuring addresses and routes) runs on a
//! short-lived thread that enters the namespace and exits when done. A file descriptor created
//! there (the TUN device) stays bound to that namespace after the thread is gone.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use super::IoError;

/// Where named namespaces live (`ip netns add NAME`).
pub const NETNS_DIR: &str = "/var/run/netns";

/// An app's namespace as the policy names it: a name under [`NETNS_DIR`] or a path such as
/// `/proc/PID/ns/net` of a container.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new(NETNS_DIR).join(netns)
    }
}

/// Opens a namespace, with an error that says what is missing.
pub fn open_netns(netns: &str) -> Result<File, IoError> {
    let path = netns_path(netns);
    File::open(&path).map_err(|source| IoError::Netns {
        netns: netns.to_owned(),
        path: path.clone(),
        source,
    })
}

/// A namespace's identity: the (device, inode) of its nsfs file. A namespace deleted and
/// created again under the same name (a restarted container) has another identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetnsId {
    /// `st_dev` (the nsfs device).
    pub dev: u64,
    /// `st_ino` (the namespace's inode number, as in `ls -l /proc/PID/ns/net`).
    pub ino: u64,
}

impl std::fmt::Display for NetnsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

impl NetnsId {
    fn of(meta: &std::fs::Metadata) -> Self {
        NetnsId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The identity of the namespace a name or path stands for now (a `stat`, no descriptor kept).
pub fn netns_id(netns: &str) -> std::io::Result<NetnsId> {
    std::fs::metadata(netns_path(netns)).map(|m| NetnsId::of(&m))
}

/// Runs `f` on a thread inside the namespace `ns` and returns its result.
pub fn in_netns<T: Send>(
    netns: &str,
    f: impl FnOnce() -> Result<T, IoError> + Send,
) -> Result<T, IoError> {
    in_netns_identified(netns, f).map(|(t, _)| t)
}

/// Like [`in_netns`], and also says which namespace `f` ran in: the identity is read from the
/// very descriptor that was entered, so it cannot belong to a namespace that replaced it since.
pub fn in_netns_identified<T: Send>(
    netns: &str,
    f: impl FnOnce() -> Result<T, IoError> + Send,
) -> Result<(T, NetnsId), IoError> {
    let file = open_netns(netns)?;
    let id = file
        .metadata()
        .map(|m| NetnsId::of(&m))
        .map_err(|source| IoError::Netns {
            netns: netns.to_owned(),
            path: netns_path(netns),
            source,
        })?;
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| IoError::Setns {
                    netns: netns.to_owned(),
                    source: std::io::Error::from(e),
                })?;
                f()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(IoError::Setns {
                    netns: netns.to_owned(),
                    source: std::io::Error::other("the namespace worker thread panicked"),
                })
            })
    });
    result.map(|t| (t, id))
}
