//! A small world of network namespaces with gateway processes in it, for `corridor demo` and
//! `corridor bench --tunnel`: created step by step, removed on drop (also after an error or
//! Ctrl-C, which the callers turn into an error between steps).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dataplane::io::{ControlRequest, IoError, query_control};

/// Namespaces, gateway processes and a scratch directory that belong to one run.
pub(crate) struct NetnsWorld {
    namespaces: Vec<String>,
    /// The gateway processes (their PIDs are the gateways': `ip netns exec` execs them).
    pub(crate) gateways: Vec<Child>,
    /// Scratch directory: configs, sockets, logs.
    pub(crate) dir: PathBuf,
}

impl NetnsWorld {
    /// An empty world with a fresh scratch directory named after `what`.
    pub(crate) fn new(what: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("corridor-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(NetnsWorld {
            namespaces: Vec::new(),
            gateways: Vec::new(),
            dir,
        })
    }

    /// Creates namespace `name` (loopback up); refuses one that exists (not ours to remove).
    pub(crate) fn add_ns(&mut self, name: &str) -> Result<()> {
        if Path::new("/var/run/netns").join(name).exists() {
            bail!(
                "network namespace {name} exists already: another run, or left over? remove it with `ip netns del {name}`"
            );
        }
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// A veth "WAN" named wan0 on both sides, with an IPv4 address (/24) at each end.
    pub(crate) fn wan(&mut self, (a, a_ip): (&str, &str), (b, b_ip): (&str, &str)) -> Result<()> {
        ip(&[
            "link", "add", "wan0", "netns", a, "type", "veth", "peer", "name", "wan0", "netns", b,
        ])?;
        for (ns, addr) in [(a, a_ip), (b, b_ip)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "wan0",
            ])?;
            ip(&["-n", ns, "link", "set", "wan0", "up"])?;
        }
        Ok(())
    }

    /// Starts this very binary as gateway `name` in namespace `ns` with `config`, logging to
    /// `<dir>/<name>.log`, and waits until it answers on `socket`.
    pub(crate) fn start_gateway(
        &mut self,
        name: &str,
        ns: &str,
        config: &Path,
        socket: &Path,
        stop: &AtomicBool,
    ) -> Result<()> {
        let exe = std::env::current_exe().context("finding the corridor binary")?;
        let log_path = self.dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&exe)
            .args(["gateway", "run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a gateway")?;
        self.gateways.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while query_control(socket, ControlRequest::Status).is_err() {
            interrupted(stop)?;
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("gateway {name} did not start:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for NetnsWorld {
    fn drop(&mut self) {
        for child in &self.gateways {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for child in &mut self.gateways {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `ip ARGS`, with its complaint as the error.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Maps an I/O error of a step into corridor's I/O error, saying what was being done.
pub(crate) fn os(what: &'static str) -> impl Fn(std::io::Error) -> IoError {
    move |source| IoError::Os { what, source }
}

/// An error once SIGINT or SIGTERM arrived (the world is then removed by its drop).
pub(crate) fn interrupted(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted: the namespaces and gateways were removed");
    }
    Ok(())
}
