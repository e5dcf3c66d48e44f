//! A harness for tests that run the real `corridor` binary in Linux network namespaces.
//!
//! Each test makes a [`Lab`]: namespaces with a prefix of its own (so tests run in parallel),
//! veth links created directly inside them (so no name ever clashes in the root namespace),
//! policy files written from templates, gateways started as real processes, and traffic driven
//! from threads that enter the namespaces. Dropping the lab stops every process it started and
//! deletes every namespace it made, also when the test panics.
//!
//! These tests need root. Outside CI, without root, they say so loudly and pass without
//! running; under CI (`CI` set) that is a failure instead, so CI never skips them.
//!
//! The binary under test is built here, separately, with `cargo build --release -p corridor`
//! into `target/netns-bin`: the workspace test build enables the engine's test-only virtual clock
//! (feature unification), and a gateway built like that refuses to run.

#![expect(
    clippy::panic,
    reason = "a test harness: failing loudly, with what went wrong, is its job"
)]

use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::Hasher;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dataplane::SecretKey;
use dataplane::io::{ControlRequest, StatusReport, query_control};
use nix::sched::{CloneFlags, setns};

/// Whether this process may build namespaces; without root, says so loudly. Under CI, a test
/// that cannot run fails.
pub fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "netns tests need root and CI must run them all: run `.ci/run` (or the tests) as root"
    );
    eprintln!(
        "\n*** SKIPPED: this netns test needs root (network namespaces, TUN devices). ***\n*** Run: sudo -E cargo test -p netns-tests ***\n"
    );
    false
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `workers = N` when `CORRIDOR_TEST_WORKERS=N` is set, so that the whole suite can run with
/// one worker and with several (unset: the gateway's default, "auto": on a two-CPU machine two
/// workers for the two tenants of the standard world).
pub fn workers_override() -> String {
    std::env::var("CORRIDOR_TEST_WORKERS")
        .map(|n| format!("workers = {}\n", n.trim()))
        .unwrap_or_default()
}

/// The corridor binary under test: `CORRIDOR_BIN` if set, else a release build made once.
pub fn corridor() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CORRIDOR_BIN") {
            return PathBuf::from(bin);
        }
        let root = workspace_root();
        let target = root.join("target").join("netns-bin");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "-p",
                "corridor",
                "--target-dir",
            ])
            .arg(&target)
            .current_dir(&root)
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build corridor: {e}"));
        assert!(
            status.success(),
            "building corridor for the netns tests failed"
        );
        target.join("release").join("corridor")
    })
}

static LABS: AtomicUsize = AtomicUsize::new(0);

/// One test's world of namespaces and processes.
#[derive(Debug)]
pub struct Lab {
    /// Prefix of every namespace this lab makes.
    pub id: String,
    dir: tempfile::TempDir,
    namespaces: Vec<String>,
    children: Vec<Child>,
    links: usize,
}

impl Lab {
    /// A new lab, or `None` (loudly) when not root outside CI.
    pub fn new(test: &str) -> Option<Lab> {
        if !have_root() {
            return None;
        }
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let id = format!("ct{}{}-{test}", std::process::id() % 10_000, n);
        let dir = tempfile::Builder::new()
            .prefix(&format!("corridor-{test}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        Some(Lab {
            id,
            dir,
            namespaces: Vec::new(),
            children: Vec::new(),
            links: 0,
        })
    }

    /// The lab's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The full name of this lab's namespace `short`.
    pub fn ns_name(&self, short: &str) -> String {
        format!("{}-{short}", self.id)
    }

    /// Creates namespace `short` (loopback up) and returns its full name.
    pub fn ns(&mut self, short: &str) -> String {
        let name = self.ns_name(short);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        must(Command::new("ip").args(["netns", "add", &name]));
        self.namespaces.push(name.clone());
        must(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        name
    }

    /// A veth link between two namespaces with the given addresses (CIDR); returns the two
    /// interface names (the same in both: `l<N>`).
    pub fn link(&mut self, a: &str, a_addr: &str, b: &str, b_addr: &str) -> String {
        let ifname = format!("l{}", self.links);
        self.links += 1;
        let tmp = format!("t{}{}", std::process::id() % 100_000, self.links);
        must(Command::new("ip").args([
            "link", "add", &ifname, "netns", a, "type", "veth", "peer", "name", &tmp, "netns", b,
        ]));
        must(Command::new("ip").args(["-n", b, "link", "set", &tmp, "name", &ifname]));
        for (ns, addr) in [(a, a_addr), (b, b_addr)] {
            must(Command::new("ip").args(["-n", ns, "addr", "add", addr, "dev", &ifname]));
            must(Command::new("ip").args(["-n", ns, "link", "set", &ifname, "up"]));
        }
        ifname
    }

    /// Runs a shell command in a namespace and returns its output (whatever its status).
    pub fn sh(&self, ns: &str, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", cmd])
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{cmd}` in {ns}: {e}"))
    }

    /// Runs a shell command in a namespace, panicking with its output unless it succeeds.
    pub fn sh_ok(&self, ns: &str, cmd: &str) -> String {
        let out = self.sh(ns, cmd);
        assert!(
            out.status.success(),
            "`{cmd}` in {ns} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether `count` pings from `ns` to `addr` all come back.
    pub fn ping(&self, ns: &str, addr: &str, count: u32) -> bool {
        self.sh(ns, &format!("ping -n -q -c {count} -i 0.2 -W 1 {addr}"))
            .status
            .success()
    }

    /// Starts a long-running process in a namespace; the lab stops it when dropped.
    pub fn spawn(&mut self, ns: &str, args: &[&str], log: &Path) -> u32 {
        let out = File::create(log).unwrap_or_else(|e| panic!("cannot create {log:?}: {e}"));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone a file handle: {e}"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {ns}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Writes a file into the lab directory (creating parents) and returns its path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.dir().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {parent:?}: {e}"));
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {path:?}: {e}"));
        path
    }

    /// Writes a policy directory `policy/` from templates and generates the keys it names.
    ///
    /// In the texts, `@ns(x)` becomes this lab's namespace `x` and `@key(gw,tenant)` the
    /// public key of gateway `gw` for `tenant`, whose private key is written to
    /// `keys/<gw>/<tenant>.key`. Files are `(relative path, text)`, e.g.
    /// `("gateways.toml", ...)`, `("tenants/acme.toml", ...)`.
    pub fn policy(&self, files: &[(&str, &str)]) -> PathBuf {
        for (rel, text) in files {
            let text = self.expand(text);
            self.write(&format!("policy/{rel}"), &text);
        }
        self.dir().join("policy")
    }

    /// The key directory of gateway `gw` (see [`Lab::policy`]).
    pub fn key_dir(&self, gw: &str) -> PathBuf {
        self.dir().join("keys").join(gw)
    }

    /// Replaces `@ns(..)` and `@key(..,..)` in a template (keys are created on first use).
    pub fn expand(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('@') {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(args) = tail.strip_prefix("@ns(") {
                let end = args.find(')').unwrap_or(args.len());
                out.push_str(&self.ns_name(&args[..end]));
                rest = args.get(end + 1..).unwrap_or("");
            } else if let Some(args) = tail.strip_prefix("@key(") {
                let end = args.find(')').unwrap_or(args.len());
                let (gw, tenant) = args[..end].split_once(',').unwrap_or(("", ""));
                out.push_str(&self.public_key(gw.trim(), tenant.trim()));
                rest = args.get(end + 1..).unwrap_or("");
            } else {
                out.push('@');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        out
    }

    /// The public key of `gw`'s key for `tenant`, generating the private key if needed.
    pub fn public_key(&self, gw: &str, tenant: &str) -> String {
        let path = self.key_dir(gw).join(format!("{tenant}.key"));
        let key = match std::fs::read_to_string(&path) {
            Ok(text) => SecretKey::from_base64(&text)
                .unwrap_or_else(|e| panic!("bad key file {path:?}: {e}")),
            Err(_) => {
                let key = SecretKey::generate();
                let dir = self.key_dir(gw);
                std::fs::create_dir_all(&dir)
                    .unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
                controlplane::keys::write_key_file(&path, &key)
                    .unwrap_or_else(|e| panic!("cannot write {path:?}: {e}"));
                key
            }
        };
        dataplane::config::encode_key(&key.public_key())
    }

    /// Starts `corridor gateway run` for gateway `name` in namespace `ns`, listening on
    /// `listen`, serving `policy` with the keys of [`Lab::key_dir`]; waits until it answers.
    pub fn gateway(&mut self, ns: &str, name: &str, listen: &str, policy: &Path) -> Gateway {
        self.gateway_with(ns, name, listen, policy, &workers_override())
    }

    /// [`Lab::gateway`] with `extra` lines appended to its configuration file (e.g.
    /// `workers = 2`).
    pub fn gateway_with(
        &mut self,
        ns: &str,
        name: &str,
        listen: &str,
        policy: &Path,
        extra: &str,
    ) -> Gateway {
        let socket = self.dir().join(format!("{name}.sock"));
        let config = self.write(
            &format!("{name}.toml"),
            &format!(
                "name = \"{name}\"\nkey-dir = \"{}\"\nlisten = \"{listen}\"\ncontrol-socket = \"{}\"\npolicy = \"{}\"\n{extra}",
                self.key_dir(name).display(),
                socket.display(),
                policy.display()
            ),
        );
        let gw = self.spawn_gateway(ns, name, config, socket);
        gw.wait_ready(Duration::from_secs(15));
        gw
    }

    /// Starts `corridor gateway run --config CONFIG` for gateway `name` in namespace `ns`
    /// (its control socket: `socket`; its log in the lab), without waiting for it.
    pub fn spawn_gateway(
        &mut self,
        ns: &str,
        name: &str,
        config: PathBuf,
        socket: PathBuf,
    ) -> Gateway {
        let log = self.dir().join(format!("{name}.log"));
        let bin = corridor().to_string_lossy().into_owned();
        let config_s = config.to_string_lossy().into_owned();
        let pid = self.spawn(ns, &[&bin, "gateway", "run", "--config", &config_s], &log);
        Gateway {
            name: name.to_owned(),
            ns: ns.to_owned(),
            pid,
            socket,
            config,
            log,
        }
    }

    /// Stops the processes the lab started (SIGTERM, then SIGKILL).
    pub fn stop_all(&mut self) {
        for child in &mut self.children {
            signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for child in &mut self.children {
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_all();
        for ns in self.namespaces.iter().rev() {
            // Processes started inside by others (servers of a test) go too.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<u32>() {
                        signal(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

fn must(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running gateway process.
#[derive(Debug)]
pub struct Gateway {
    /// Its name in the policy.
    pub name: String,
    /// The namespace it runs in (its WAN side).
    pub ns: String,
    /// Its process id.
    pub pid: u32,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

impl Gateway {
    /// Its status, or an error if it does not answer.
    pub fn try_status(&self) -> Result<StatusReport, String> {
        let answer = query_control(&self.socket, ControlRequest::Status)
            .map_err(|e| format!("{}: {e}", self.socket.display()))?;
        serde_json::from_str(&answer).map_err(|e| format!("bad status: {e}: {answer}"))
    }

    /// Its status; panics (with its log) if it does not answer.
    pub fn status(&self) -> StatusReport {
        self.try_status().unwrap_or_else(|e| {
            panic!("gateway {} does not answer: {e}\n{}", self.name, self.log())
        })
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until it answers on its control socket; panics with its log otherwise.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.try_status().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway {} did not come up:\n{}", self.name, self.log());
    }

    /// Sends SIGHUP (reload).
    pub fn reload(&self) {
        signal(self.pid, nix::sys::signal::Signal::SIGHUP);
    }

    /// Sends SIGTERM and waits for the process to be gone; returns whether it went in time.
    pub fn stop(&self) -> bool {
        signal(self.pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !Path::new(&format!("/proc/{}", self.pid)).exists()
                || std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                    .is_ok_and(|s| s.contains(") Z "))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// One counter of one tenant's drops.
    pub fn tenant_drops(&self, tenant: &str, reason: dataplane::engine::DropReason) -> u64 {
        self.status()
            .engine
            .tenants
            .iter()
            .find(|t| t.name == tenant)
            .map_or(0, |t| t.counters.drops.get(reason))
    }
}

/// Runs `f` on a thread inside namespace `ns` (sockets it opens live there).
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("cannot enter {ns}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Deterministic pseudo-random bytes.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A 64-bit digest of some bytes (for "transfer intact" checks).
pub fn digest(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(data);
    h.finish()
}

/// A TCP transfer of `len` bytes from `client_ns` to a server at `server` in `server_ns`;
/// returns `Ok(())` when the server received exactly the bytes sent, within `timeout`.
pub fn tcp_transfer(
    client_ns: &str,
    server_ns: &str,
    server: SocketAddr,
    len: usize,
    timeout: Duration,
) -> Result<(), String> {
    tcp_transfer_configured(client_ns, server_ns, server, len, timeout, |_| Ok(()))
}

/// Sends `count` UDP datagrams from `client_ns` to `server` in `server_ns` and returns how many
/// arrived intact within `wait`.
pub fn udp_exchange(
    client_ns: &str,
    server_ns: &str,
    server: SocketAddr,
    count: usize,
    wait: Duration,
) -> usize {
    let sock = in_ns(server_ns, || UdpSocket::bind(server))
        .unwrap_or_else(|e| panic!("bind {server} in {server_ns}: {e}"));
    let _ = sock.set_read_timeout(Some(wait));
    let client = in_ns(client_ns, || UdpSocket::bind("0.0.0.0:0"))
        .unwrap_or_else(|e| panic!("bind in {client_ns}: {e}"));
    for i in 0..count {
        let msg = payload(200, i as u64 + 1);
        let _ = client.send_to(&msg, server);
        std::thread::sleep(Duration::from_millis(2));
    }
    let expected: std::collections::HashSet<u64> = (0..count)
        .map(|i| digest(&payload(200, i as u64 + 1)))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + wait;
    while seen.len() < count && Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let d = digest(&buf[..n]);
                if expected.contains(&d) {
                    seen.insert(d);
                }
            }
            Err(_) => break,
        }
    }
    seen.len()
}

// ----- Helpers of the NAT, restart, reload and interop tests. -----

/// Panics unless `tool` is on `PATH`, naming the Debian package that provides it (the tests
/// install nothing themselves: `.ci/run` does).
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|dir| Path::new(dir).join(tool).is_file());
    assert!(
        found,
        "this test needs `{tool}`: install the Debian package `{package}` (apt-get install -y {package}); .ci/run must install it"
    );
}

/// Calls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `f` on a new (unscoped) thread inside namespace `ns`.
#[expect(
    clippy::panic,
    reason = "a test helper: failing loudly, with the cause, is its job"
)]
pub fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("cannot enter {ns}: {e}"));
        f()
    })
}

impl Lab {
    /// Writes a gateway configuration file `file` (relative to the lab directory) for gateway
    /// `name` with the keys of [`Lab::key_dir`], without starting anything; returns its path.
    pub fn gateway_config(
        &self,
        file: &str,
        name: &str,
        listen: &str,
        policy: &Path,
        socket: &Path,
    ) -> PathBuf {
        self.write(
            file,
            &format!(
                "name = \"{name}\"\nkey-dir = \"{}\"\nlisten = \"{listen}\"\ncontrol-socket = \"{}\"\npolicy = \"{}\"\n{}",
                self.key_dir(name).display(),
                socket.display(),
                policy.display(),
                workers_override()
            ),
        )
    }

    /// Runs a command in a namespace until it exits; after `timeout` it is killed and the
    /// status is `None`. Returns the status and everything it printed (stdout, then stderr).
    #[expect(
        clippy::panic,
        reason = "a test helper: failing loudly, with the cause, is its job"
    )]
    pub fn run_until_exit(
        &self,
        ns: &str,
        args: &[&str],
        timeout: Duration,
    ) -> (Option<std::process::ExitStatus>, String) {
        let log = self
            .dir()
            .join(format!("run-{}.log", LABS.fetch_add(1, Ordering::SeqCst)));
        let out = File::create(&log).unwrap_or_else(|e| panic!("cannot create {log:?}: {e}"));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone a file handle: {e}"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in {ns}: {e}"));
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// The exit status of process `pid` that this lab started, once it has exited.
    pub fn exit_status(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        self.children
            .iter_mut()
            .find(|c| c.id() == pid)
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Gateway {
    /// The status of peer `peer` of tenant `tenant` (a gateway's or stock endpoint's name).
    pub fn peer(&self, tenant: &str, peer: &str) -> Option<dataplane::engine::PeerStats> {
        self.status()
            .engine
            .tenants
            .into_iter()
            .find(|t| t.name == tenant)?
            .peers
            .into_iter()
            .find(|p| p.name == peer)
    }
}

/// The endless byte stream of [`tcp_stream`]: every byte is known from its offset.
#[derive(Debug, Clone)]
struct StreamBytes(u64);

impl StreamBytes {
    fn new(seed: u64) -> Self {
        StreamBytes(seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// What a [`tcp_stream`] saw.
#[derive(Debug, Clone, Copy)]
pub struct StreamReport {
    /// Bytes the server received, each checked.
    pub bytes: u64,
    /// The longest time the server waited between two reads (after the first).
    pub max_stall: Duration,
    /// How long the stream lasted, seen from the server.
    pub elapsed: Duration,
}

/// A TCP stream running in the background (see [`tcp_stream`]).
#[derive(Debug)]
pub struct TcpStreamRun {
    client: std::thread::JoinHandle<Result<u64, String>>,
    server: std::thread::JoinHandle<Result<StreamReport, String>>,
}

impl TcpStreamRun {
    /// Waits for both ends; `Ok` when the server received every byte the client sent,
    /// unchanged and in order.
    pub fn join(self) -> Result<StreamReport, String> {
        let sent = self
            .client
            .join()
            .unwrap_or_else(|_| Err("the client thread panicked".to_owned()));
        let got = self
            .server
            .join()
            .unwrap_or_else(|_| Err("the server thread panicked".to_owned()));
        let sent = sent.map_err(|e| format!("client: {e}"))?;
        let report = got.map_err(|e| format!("server: {e}"))?;
        if report.bytes != sent {
            return Err(format!(
                "the client sent {sent} bytes, the server received {}",
                report.bytes
            ));
        }
        Ok(report)
    }
}

/// Starts a TCP connection from `client_ns` to a server at `server` in `server_ns` that sends
/// a known byte stream at about `rate` bytes per second for `duration`, then closes; the server
/// checks every byte and measures stalls. Returns once connected (or with the connect error).
pub fn tcp_stream(
    client_ns: &str,
    server_ns: &str,
    server: SocketAddr,
    duration: Duration,
    rate: u64,
) -> Result<TcpStreamRun, String> {
    const CHUNK: usize = 16 << 10;
    const SEED: u64 = 0x00C0_FFEE;
    let listener = in_ns(server_ns, || TcpListener::bind(server))
        .map_err(|e| format!("bind {server} in {server_ns}: {e}"))?;
    let server_side = std::thread::spawn(move || -> Result<StreamReport, String> {
        let (mut conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let mut want = StreamBytes::new(SEED);
        let mut buf = vec![0u8; 64 << 10];
        let mut expect = vec![0u8; 64 << 10];
        let mut bytes = 0u64;
        let start = Instant::now();
        let mut last: Option<Instant> = None;
        let mut max_stall = Duration::ZERO;
        loop {
            let n = conn
                .read(&mut buf)
                .map_err(|e| format!("read after {bytes} bytes: {e}"))?;
            if n == 0 {
                break;
            }
            let now = Instant::now();
            if let Some(last) = last {
                max_stall = max_stall.max(now - last);
            }
            last = Some(now);
            want.fill(&mut expect[..n]);
            if buf[..n] != expect[..n] {
                return Err(format!("the bytes after offset {bytes} arrived changed"));
            }
            bytes += n as u64;
        }
        Ok(StreamReport {
            bytes,
            max_stall,
            elapsed: start.elapsed(),
        })
    });
    let conn = in_ns(client_ns, || {
        TcpStream::connect_timeout(&server, Duration::from_secs(10))
    });
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            // Unblock the server's accept so its thread ends.
            let _ = in_ns(server_ns, || {
                TcpStream::connect_timeout(&server, Duration::from_millis(200))
            });
            let _ = server_side.join();
            return Err(format!("connect to {server} from {client_ns}: {e}"));
        }
    };
    let client = std::thread::spawn(move || -> Result<u64, String> {
        conn.set_write_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let mut source = StreamBytes::new(SEED);
        let mut chunk = vec![0u8; CHUNK];
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration {
            source.fill(&mut chunk);
            conn.write_all(&chunk)
                .map_err(|e| format!("write after {sent} bytes: {e}"))?;
            sent += CHUNK as u64;
            // Pace: do not get ahead of `rate`.
            let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        conn.shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        // Wait for the server to close, so `sent` means "sent and read".
        let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
        let _ = conn.read(&mut [0u8; 1]);
        Ok(sent)
    });
    Ok(TcpStreamRun {
        client,
        server: server_side,
    })
}

/// Whether a TCP connection from `client_ns` to a server at `server` in `server_ns` opens
/// within `timeout` and carries a few bytes. For checks that something does *not* get
/// through: unlike [`tcp_transfer`], it never waits for a connection that cannot come.
pub fn tcp_reaches(
    client_ns: &str,
    server_ns: &str,
    server: SocketAddr,
    timeout: Duration,
) -> bool {
    let Ok(listener) = in_ns(server_ns, || TcpListener::bind(server)) else {
        return false;
    };
    if listener.set_nonblocking(true).is_err() {
        return false;
    }
    let Ok(mut conn) = in_ns(client_ns, || TcpStream::connect_timeout(&server, timeout)) else {
        return false;
    };
    if conn.write_all(b"probe").is_err() {
        return false;
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok((mut accepted, _)) = listener.accept() {
            let mut got = [0u8; 5];
            return accepted.set_nonblocking(false).is_ok()
                && accepted.set_read_timeout(Some(timeout)).is_ok()
                && accepted.read_exact(&mut got).is_ok()
                && &got == b"probe";
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Helpers for the isolation, attack and lossy-WAN tests: tools that must be installed, threads
// in namespaces, counting listeners, raw IPv4 packets, WAN capture and a delaying UDP relay.
// ---------------------------------------------------------------------------------------------

/// What a [`Sink`] has received so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// TCP connections accepted.
    pub tcp_connections: u64,
    /// Bytes read from them.
    pub tcp_bytes: u64,
    /// UDP datagrams received.
    pub udp_datagrams: u64,
    /// Bytes in them.
    pub udp_bytes: u64,
}

impl SinkCounts {
    /// Whether anything at all arrived.
    pub fn is_empty(&self) -> bool {
        *self == SinkCounts::default()
    }
}

/// A TCP and a UDP listener on one address and port inside a namespace that count whatever
/// arrives (connections, bytes, datagrams); they stop when the sink is dropped.
#[derive(Debug)]
pub struct Sink {
    /// Where it listens (TCP and UDP).
    pub addr: SocketAddr,
    counts: std::sync::Arc<std::sync::Mutex<SinkCounts>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Sink {
    /// Listens on `addr` (TCP and UDP) in namespace `ns`.
    #[expect(
        clippy::panic,
        reason = "a test helper: failing loudly, with the cause, is its job"
    )]
    pub fn new(ns: &str, addr: SocketAddr) -> Sink {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let (tcp, udp) = in_ns(ns, || (TcpListener::bind(addr), UdpSocket::bind(addr)));
        let tcp = tcp.unwrap_or_else(|e| panic!("sink: bind tcp {addr} in {ns}: {e}"));
        let udp = udp.unwrap_or_else(|e| panic!("sink: bind udp {addr} in {ns}: {e}"));
        let counts = Arc::new(Mutex::new(SinkCounts::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (counts, stop) = (counts.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let _ = tcp.set_nonblocking(true);
                let mut conns: Vec<TcpStream> = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    let mut idle = true;
                    if let Ok((conn, _)) = tcp.accept() {
                        let _ = conn.set_nonblocking(true);
                        conns.push(conn);
                        add_counts(&counts, |c| c.tcp_connections += 1);
                        idle = false;
                    }
                    conns.retain_mut(|conn| match conn.read(&mut buf) {
                        Ok(0) => false,
                        Ok(n) => {
                            add_counts(&counts, |c| c.tcp_bytes += n as u64);
                            idle = false;
                            true
                        }
                        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                    });
                    if idle {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }));
        }
        {
            let (counts, stop) = (counts.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let _ = udp.set_read_timeout(Some(Duration::from_millis(20)));
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = udp.recv(&mut buf) {
                        add_counts(&counts, |c| {
                            c.udp_datagrams += 1;
                            c.udp_bytes += n as u64;
                        });
                    }
                }
            }));
        }
        Sink {
            addr,
            counts,
            stop,
            threads,
        }
    }

    /// What has arrived so far.
    pub fn counts(&self) -> SinkCounts {
        *self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits (up to `timeout`) until `pred` holds for the counts; returns the last counts.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&SinkCounts) -> bool) -> SinkCounts {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.counts();
            if pred(&c) || Instant::now() >= deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn add_counts(counts: &std::sync::Mutex<SinkCounts>, f: impl FnOnce(&mut SinkCounts)) {
    f(&mut counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner));
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// From `ns`, connects to `to` over TCP and writes `data`; the error if it cannot.
pub fn tcp_send(ns: &str, to: SocketAddr, data: &[u8], timeout: Duration) -> std::io::Result<()> {
    let mut conn = in_ns(ns, || TcpStream::connect_timeout(&to, timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.write_all(data)?;
    conn.shutdown(std::net::Shutdown::Write)
}

/// From `ns`, sends `count` UDP datagrams of `data` to `to`; the first error if any.
pub fn udp_send(ns: &str, to: SocketAddr, data: &[u8], count: usize) -> std::io::Result<()> {
    let sock = in_ns(ns, || UdpSocket::bind("0.0.0.0:0"))?;
    for _ in 0..count {
        sock.send_to(data, to)?;
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Internet checksum (RFC 1071) of `data`, folded, complemented.
fn inet_checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum = sum.wrapping_add(u32::from(word));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet carrying `payload` as protocol `proto` (checksums filled in; for UDP and TCP
/// the transport checksum must be computed by the caller or left as in `payload`).
pub fn ipv4_packet(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX);
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = inet_checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An IPv4 UDP packet from `src` to `dst` with a correct UDP checksum.
pub fn ipv4_udp(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4, data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + data.len()).unwrap_or(u16::MAX);
    let mut udp = Vec::with_capacity(usize::from(len));
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(data);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&len.to_be_bytes());
    let initial: u32 = pseudo
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let mut sum = inet_checksum(&udp, initial);
    if sum == 0 {
        sum = 0xffff;
    }
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    ipv4_packet(*src.ip(), *dst.ip(), 17, &udp)
}

/// Sends complete IPv4 packets (headers included, any source address) from inside `ns` with
/// a raw socket; the kernel routes each by its destination. Returns how many went out.
pub fn send_raw_ipv4(ns: &str, packets: &[Vec<u8>]) -> std::io::Result<usize> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sendto, socket,
    };
    use std::os::fd::AsRawFd;
    let fd = in_ns(ns, || {
        socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Raw,
        )
    })
    .map_err(std::io::Error::from)?;
    let mut sent = 0;
    for p in packets {
        let dst = p
            .get(16..20)
            .map(|d| std::net::Ipv4Addr::new(d[0], d[1], d[2], d[3]))
            .ok_or_else(|| std::io::Error::other("not an IPv4 packet"))?;
        let addr = SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0));
        sendto(fd.as_raw_fd(), p, &addr, MsgFlags::empty()).map_err(std::io::Error::from)?;
        sent += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(sent)
}

/// One UDP datagram seen by a [`Capture`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Source address and port.
    pub src: std::net::SocketAddrV4,
    /// Destination address and port.
    pub dst: std::net::SocketAddrV4,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

/// A packet capture (AF_PACKET, every interface) of the IPv4 UDP datagrams a namespace receives,
/// like `tcpdump -i any udp` but with nothing to install.
#[derive(Debug)]
pub struct Capture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Captured>>>,
}

impl Capture {
    /// Starts capturing in `ns` the datagrams that arrive there (not those sent from it).
    #[expect(
        clippy::panic,
        reason = "a test helper: failing loudly, with the cause, is its job"
    )]
    pub fn start(ns: &str) -> Capture {
        use nix::sys::socket::{
            AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType, recvfrom, setsockopt,
            socket, sockopt,
        };
        use std::os::fd::AsRawFd;
        let fd = in_ns(ns, || {
            socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::EthAll,
            )
        })
        .unwrap_or_else(|e| panic!("capture: AF_PACKET socket in {ns}: {e}"));
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 50_000),
        )
        .unwrap_or_else(|e| panic!("capture: SO_RCVTIMEO: {e}"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::SeqCst) {
                let Ok((n, Some(from))) = recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) else {
                    continue;
                };
                // PACKET_OUTGOING: our own transmissions.
                if from.pkttype() == 4 {
                    continue;
                }
                // ARPHRD_NONE (TUN) frames are bare IP; everything else here is Ethernet.
                let ip = if from.hatype() == 65534 {
                    buf.get(..n)
                } else if buf.get(12..14) == Some(&[0x08, 0x00]) {
                    buf.get(14..n)
                } else {
                    None
                };
                if let Some(c) = ip.and_then(parse_ipv4_udp) {
                    seen.push(c);
                }
            }
            seen
        });
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns what was captured, in order.
    pub fn finish(mut self) -> Vec<Captured> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parse_ipv4_udp(ip: &[u8]) -> Option<Captured> {
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip.first()? >> 4 != 4 || *ip.get(9)? != 17 {
        return None;
    }
    // Fragments other than the first carry no UDP header.
    if u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let ip = ip.get(..total)?;
    let udp = ip.get(ihl..)?;
    let addr = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let len = usize::from(port(udp.get(4..6)?));
    Some(Captured {
        src: std::net::SocketAddrV4::new(addr(ip.get(12..16)?), port(udp.get(0..2)?)),
        dst: std::net::SocketAddrV4::new(addr(ip.get(16..20)?), port(udp.get(2..4)?)),
        payload: udp.get(8..len)?.to_vec(),
    })
}

/// A UDP relay that delays every datagram by a fixed time in both directions, preserving order:
/// a stand-in for a long WAN where the kernel has no netem.
///
/// Whoever sends to `front` is the client (the last sender wins); its datagrams leave from
/// `back` toward `target`, and what comes back on `back` from `target` goes to the client.
/// It runs until dropped.
#[derive(Debug)]
pub struct DelayRelay {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Datagrams relayed toward the target and toward the client.
    pub relayed: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl DelayRelay {
    /// Starts the relay in namespace `ns`.
    #[expect(
        clippy::panic,
        reason = "a test helper: failing loudly, with the cause, is its job"
    )]
    pub fn start(
        ns: &str,
        front: SocketAddr,
        back: SocketAddr,
        target: SocketAddr,
        delay: Duration,
    ) -> DelayRelay {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::{Arc, Mutex, mpsc};
        let (f, b) = in_ns(ns, || (UdpSocket::bind(front), UdpSocket::bind(back)));
        let front_sock = f.unwrap_or_else(|e| panic!("relay: bind {front} in {ns}: {e}"));
        let back_sock = b.unwrap_or_else(|e| panic!("relay: bind {back} in {ns}: {e}"));
        for s in [&front_sock, &back_sock] {
            let _ = nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
            let _ = nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::SndBuf, &(8 << 20));
            let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        }
        let front_sock = Arc::new(front_sock);
        let back_sock = Arc::new(back_sock);
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let relayed = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let mut threads = Vec::new();
        // Direction 0: client -> target; 1: target -> client.
        for dir in 0..2usize {
            let (rx_sock, tx_sock) = if dir == 0 {
                (front_sock.clone(), back_sock.clone())
            } else {
                (back_sock.clone(), front_sock.clone())
            };
            let (queue, pending) = mpsc::channel::<(Instant, Vec<u8>)>();
            {
                let (stop, client) = (stop.clone(), client.clone());
                threads.push(std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::SeqCst) {
                        let Ok((n, from)) = rx_sock.recv_from(&mut buf) else {
                            continue;
                        };
                        if dir == 0 {
                            *client
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(from);
                        } else if from != target {
                            continue;
                        }
                        let _ = queue.send((Instant::now() + delay, buf[..n].to_vec()));
                    }
                }));
            }
            {
                let (stop, client, relayed) = (stop.clone(), client.clone(), relayed.clone());
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let Ok((due, data)) = pending.recv_timeout(Duration::from_millis(50))
                        else {
                            continue;
                        };
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let to = if dir == 0 {
                            Some(target)
                        } else {
                            *client
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                        };
                        if let Some(to) = to
                            && tx_sock.send_to(&data, to).is_ok()
                        {
                            relayed[dir].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        DelayRelay {
            stop,
            threads,
            relayed,
        }
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// [`tcp_transfer`], with `configure` applied to the client's connected socket before any data
/// is written (e.g. to choose its congestion control); its error fails the transfer.
pub fn tcp_transfer_configured(
    client_ns: &str,
    server_ns: &str,
    server: SocketAddr,
    len: usize,
    timeout: Duration,
    configure: impl FnOnce(&TcpStream) -> Result<(), String>,
) -> Result<(), String> {
    let data = payload(len, len as u64);
    let want = digest(&data);
    let listener = in_ns(server_ns, || TcpListener::bind(server))
        .map_err(|e| format!("bind {server} in {server_ns}: {e}"))?;
    std::thread::scope(|s| {
        let server_side = s.spawn(move || -> Result<u64, String> {
            let (mut conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
            conn.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            let mut got = Vec::with_capacity(len);
            conn.read_to_end(&mut got)
                .map_err(|e| format!("server read after {} bytes: {e}", got.len()))?;
            if got.len() != len {
                return Err(format!("server got {} of {len} bytes", got.len()));
            }
            Ok(digest(&got))
        });
        let client = in_ns(client_ns, || TcpStream::connect_timeout(&server, timeout))
            .map_err(|e| format!("connect to {server} from {client_ns}: {e}"));
        let sent = client.and_then(|mut c| {
            configure(&c)?;
            c.set_write_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            c.write_all(&data)
                .map_err(|e| format!("client write: {e}"))?;
            c.shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())
        });
        if let Err(e) = sent {
            // Unblock the server so the scope can end: from its own namespace, since the
            // client's may not reach it at all.
            let _ = in_ns(server_ns, || {
                TcpStream::connect_timeout(&server, Duration::from_millis(200))
            });
            let _ = server_side.join();
            return Err(e);
        }
        match server_side.join() {
            Ok(Ok(got)) if got == want => Ok(()),
            Ok(Ok(_)) => Err("the bytes arrived changed".to_owned()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the server thread panicked".to_owned()),
        }
    })
}

/// Sets a TCP socket's congestion control (`TCP_CONGESTION`, e.g. `"bbr"`); as root this
/// loads any algorithm the kernel has, whatever the namespace allows by default.
pub fn set_congestion_control(conn: &TcpStream, algorithm: &str) -> Result<(), String> {
    nix::sys::socket::setsockopt(
        conn,
        nix::sys::socket::sockopt::TcpCongestion,
        &std::ffi::OsString::from(algorithm),
    )
    .map_err(|e| {
        format!(
            "cannot set TCP congestion control {algorithm:?}: {e} (the kernel needs it: \
             modprobe tcp_{algorithm}; available: {})",
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
                .unwrap_or_default()
                .trim()
        )
    })
}
