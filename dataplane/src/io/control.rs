//! The local control socket: one request line in, one JSON line out, then the connection closes.
//!
//! Only root (or the gateway's own user) may ask: the socket file is 0600 and the peer's
//! credentials are checked on every connection, because the status names tenants, peers and
//! their addresses.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::IoError;

/// What a client may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    /// The status report.
    Status,
}

impl ControlRequest {
    pub(crate) fn parse(line: &str) -> Option<Self> {
        match line.trim() {
            "status" => Some(ControlRequest::Status),
            _ => None,
        }
    }

    fn as_line(self) -> &'static str {
        match self {
            ControlRequest::Status => "status\n",
        }
    }
}

/// Binds the socket: a stale file from a dead gateway is replaced, a live one is an error.
pub(crate) fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, IoError> {
    let err = |source| IoError::Control {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another gateway is running and answering on it",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Whether the connecting process may read the status.
pub(crate) fn authorized(stream: &UnixStream) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    getsockopt(stream, PeerCredentials).is_ok_and(|c| c.uid() == 0 || c.uid() == me)
}

/// Asks a running gateway; returns its JSON answer.
pub fn query(path: &Path, request: ControlRequest) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_line().as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream.take(16 << 20)).read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the gateway closed the connection without answering (only root may ask)",
        ));
    }
    Ok(answer)
}
