//! `corridor bench`: how fast this machine can run corridor, in a form people can compare
//! between machines (an Atom box, an ARM board, a server).
//!
//! Three measurements, each for `--seconds`:
//!
//! - the AEAD ceiling: ChaCha20-Poly1305 seal (ring, the implementation boringtun's data path
//!   uses) of 1420-byte and 64 KB buffers, on each core in turn (pinned with
//!   `sched_setaffinity`);
//! - the engine in memory: two engines from `sim::Topology` with a session up, one thread,
//!   app packet → policy → route → encrypt, and datagram → decrypt → checks → deliver, at 64,
//!   512 and 1420 bytes (no root, no I/O);
//! - with `--tunnel` (root): a real tunnel, two gateway processes of this very binary in two
//!   network namespaces joined by a veth pair, one TCP stream through it measured in-process,
//!   and the CPU time the two gateways used.
//!
//! Plus what the results depend on: CPU model, core count, clock, architecture, and the SIMD
//! features available and the ones ring's ChaCha20-Poly1305 picks on this CPU.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use dataplane::config::Protocol;
use dataplane::engine::{AppOutcome, PortId, WanOutcome};
use dataplane::io::netns::in_netns;
use dataplane::sim::{TenantSpec, Topology, World, ip_packet};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use serde::Serialize;

use crate::netns_world::{NetnsWorld, interrupted, os};

/// Arguments of `corridor bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Seconds per measurement (each core's AEAD at each size, each engine path, the tunnel).
    #[arg(long, default_value = "2", value_parser = parse_seconds)]
    seconds: f64,
    /// Print one JSON object (to compare machines, or for scripts) instead of the table.
    #[arg(long)]
    json: bool,
    /// Also measure a real tunnel: two gateways of this binary in two network namespaces and a
    /// TCP stream through them (root; removes everything afterwards, also on Ctrl-C).
    #[arg(long, conflicts_with = "aead_only")]
    tunnel: bool,
    /// Only the AEAD speed of each core (the ceiling), nothing else.
    #[arg(long)]
    aead_only: bool,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a duration in seconds (more than 0, at most 3600; e.g. 2 or 0.5)"
        )),
    }
}

/// Sizes of the AEAD measurement: a full 1420-byte packet and a 64 KB super-packet.
const AEAD_SIZES: [usize; 2] = [1420, 65_536];
/// Inner packet sizes of the engine measurement.
const ENGINE_SIZES: [usize; 3] = [64, 512, 1420];
/// `/proc/PID/stat` counts CPU time in USER_HZ ticks, 100 per second on every Linux ABI.
const USER_HZ: f64 = 100.0;

/// Everything a run measured, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// corridor's version.
    version: String,
    /// UTC date of the run, YYYY-MM-DD.
    date: String,
    /// The machine.
    machine: Machine,
    /// Seconds per measurement.
    seconds: f64,
    /// AEAD speed per core and buffer size.
    aead: Vec<AeadResult>,
    /// Engine in memory (absent with `--aead-only`).
    engine: Option<Vec<EngineResult>>,
    /// The tunnel (only with `--tunnel`).
    tunnel: Option<TunnelResult>,
    /// The results against the AEAD ceiling.
    ceiling: Ceiling,
}

/// What the figures depend on.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Machine {
    /// `std::env::consts::ARCH`.
    arch: String,
    /// CPU model as /proc/cpuinfo names it (or derived from ARM's implementer/part).
    cpu_model: Option<String>,
    /// Logical CPUs listed in /proc/cpuinfo.
    logical_cpus: usize,
    /// CPUs this process may run on (its affinity mask).
    usable_cpus: usize,
    /// Clock in MHz, if known.
    clock_mhz: Option<f64>,
    /// Where the clock came from.
    clock_source: Option<String>,
    /// ARM's BogoMIPS (a rough speed indication where no clock is given).
    bogomips: Option<f64>,
    /// SIMD features of this CPU that matter for ChaCha20-Poly1305.
    simd_available: Vec<String>,
    /// The ChaCha20-Poly1305 implementation ring selects here.
    aead_implementation: String,
}

/// One core's AEAD speed at one buffer size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct AeadResult {
    /// Core (CPU number).
    core: usize,
    /// Buffer size sealed each time.
    bytes: usize,
    /// Plaintext sealed per second.
    gbit_per_s: f64,
}

/// One engine path at one packet size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct EngineResult {
    /// "encrypt" (app → WAN) or "decrypt" (WAN → app).
    direction: &'static str,
    /// Inner IP packet size.
    bytes: usize,
    /// Inner bytes per second.
    gbit_per_s: f64,
    /// Packets per second.
    packets_per_s: f64,
}

/// The tunnel through two namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct TunnelResult {
    /// TCP payload received per second.
    gbit_per_s: f64,
    /// TCP payload received in the measured interval.
    bytes: u64,
    /// The measured interval.
    seconds: f64,
    /// CPU time (user + system) of both gateway processes in that interval.
    gateway_cpu_seconds: f64,
    /// Gateway CPU seconds per GB (10^9 bytes) carried.
    cpu_seconds_per_gb: Option<f64>,
}

/// The results as fractions of the best core's AEAD speed on 1420-byte buffers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Ceiling {
    /// The best core's ChaCha20-Poly1305 seal speed at 1420 bytes.
    aead_1420_gbit_per_s: Option<f64>,
    /// The engine's encrypt speed at 1420 bytes over that.
    engine_encrypt_1420_fraction: Option<f64>,
    /// The engine's decrypt speed at 1420 bytes over that.
    engine_decrypt_1420_fraction: Option<f64>,
    /// The tunnel's speed over that.
    tunnel_fraction: Option<f64>,
}

impl Ceiling {
    fn of(
        aead: &[AeadResult],
        engine: Option<&[EngineResult]>,
        tunnel: Option<&TunnelResult>,
    ) -> Self {
        let best = aead
            .iter()
            .filter(|a| a.bytes == 1420)
            .map(|a| a.gbit_per_s)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let frac = |v: f64| best.filter(|b| *b > 0.0).map(|b| v / b);
        let engine_at = |dir: &str| {
            engine?
                .iter()
                .find(|e| e.direction == dir && e.bytes == 1420)
                .and_then(|e| frac(e.gbit_per_s))
        };
        Ceiling {
            aead_1420_gbit_per_s: best,
            engine_encrypt_1420_fraction: engine_at("encrypt"),
            engine_decrypt_1420_fraction: engine_at("decrypt"),
            tunnel_fraction: tunnel.and_then(|t| frac(t.gbit_per_s)),
        }
    }
}

/// What /proc/cpuinfo says, for x86 and ARM alike (fields that are absent stay `None`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CpuInfo {
    /// "model name" (x86, armv7), else "Model"/"Hardware" (boards), else ARM's part decoded.
    model: Option<String>,
    /// Number of "processor" entries.
    processors: usize,
    /// x86 "cpu MHz" of the first processor (the current clock).
    mhz: Option<f64>,
    /// "BogoMIPS" (ARM) or "bogomips" (x86).
    bogomips: Option<f64>,
    /// x86 "flags" or ARM "Features".
    features: Vec<String>,
}

/// ARM's part numbers of common cores (implementer 0x41, ARM Ltd).
fn arm_part_name(implementer: &str, part: &str) -> Option<&'static str> {
    let implementer = u32::from_str_radix(implementer.trim_start_matches("0x"), 16).ok()?;
    let part = u32::from_str_radix(part.trim_start_matches("0x"), 16).ok()?;
    let name = match (implementer, part) {
        (0x41, 0xc07) => "ARM Cortex-A7",
        (0x41, 0xc08) => "ARM Cortex-A8",
        (0x41, 0xc09) => "ARM Cortex-A9",
        (0x41, 0xc0f) => "ARM Cortex-A15",
        (0x41, 0xd03) => "ARM Cortex-A53",
        (0x41, 0xd04) => "ARM Cortex-A35",
        (0x41, 0xd05) => "ARM Cortex-A55",
        (0x41, 0xd07) => "ARM Cortex-A57",
        (0x41, 0xd08) => "ARM Cortex-A72",
        (0x41, 0xd09) => "ARM Cortex-A73",
        (0x41, 0xd0a) => "ARM Cortex-A75",
        (0x41, 0xd0b) => "ARM Cortex-A76",
        (0x41, 0xd0c) => "ARM Neoverse-N1",
        (0x41, 0xd0d) => "ARM Cortex-A77",
        (0x41, 0xd40) => "ARM Neoverse-V1",
        (0x41, 0xd41) => "ARM Cortex-A78",
        (0x41, 0xd46) => "ARM Cortex-A510",
        (0x41, 0xd47) => "ARM Cortex-A710",
        (0x41, 0xd49) => "ARM Neoverse-N2",
        (0x41, 0xd4f) => "ARM Neoverse-V2",
        _ => return None,
    };
    Some(name)
}

/// Parses /proc/cpuinfo text (x86 or ARM).
pub(crate) fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let (mut model_name, mut board, mut hardware) = (None, None, None);
    let (mut implementer, mut part) = (None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => info.processors += 1,
            "model name" if model_name.is_none() => model_name = Some(value.to_owned()),
            "Model" if board.is_none() && !value.is_empty() => board = Some(value.to_owned()),
            "Hardware" if hardware.is_none() && !value.is_empty() => {
                hardware = Some(value.to_owned());
            }
            "CPU implementer" if implementer.is_none() => implementer = Some(value.to_owned()),
            "CPU part" if part.is_none() => part = Some(value.to_owned()),
            "cpu MHz" if info.mhz.is_none() => info.mhz = value.parse().ok(),
            "bogomips" | "BogoMIPS" if info.bogomips.is_none() => {
                info.bogomips = value.parse().ok();
            }
            "flags" | "Features" if info.features.is_empty() => {
                info.features = value.split_whitespace().map(str::to_owned).collect();
            }
            _ => {}
        }
    }
    let core = match (&implementer, &part) {
        (Some(i), Some(p)) => {
            Some(arm_part_name(i, p).map_or_else(|| format!("ARM core {i}/{p}"), str::to_owned))
        }
        _ => None,
    };
    info.model = match (model_name, core, board.or(hardware)) {
        (Some(m), _, _) => Some(m),
        (None, Some(c), Some(b)) => Some(format!("{c} ({b})")),
        (None, Some(c), None) => Some(c),
        (None, None, b) => b,
    };
    info
}

/// SIMD features that matter for ChaCha20-Poly1305 here, and ring's choice among its
/// implementations (ring 0.17: x86_64 uses an integrated AVX2+BMI2 or SSE4.1 seal; aarch64
/// integrated NEON; armv7 NEON ChaCha20 and Poly1305; anything else, portable code).
fn simd(cpuinfo_features: &[String]) -> (Vec<String>, String) {
    let mut available: Vec<String> = Vec::new();
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        let mut add = |on: bool, name: &str| {
            if on {
                available.push(name.to_owned());
            }
        };
        add(std::arch::is_x86_feature_detected!("ssse3"), "SSSE3");
        add(std::arch::is_x86_feature_detected!("sse4.1"), "SSE4.1");
        add(std::arch::is_x86_feature_detected!("avx2"), "AVX2");
        add(std::arch::is_x86_feature_detected!("bmi2"), "BMI2");
        add(std::arch::is_x86_feature_detected!("avx512f"), "AVX-512F");
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            available.push("NEON".to_owned());
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64")))]
    {
        // Runtime detection on 32-bit ARM is not stable in std: read the kernel's list.
        if cpuinfo_features.iter().any(|f| f == "neon" || f == "asimd") {
            available.push("NEON".to_owned());
        }
    }
    let _ = cpuinfo_features;
    let has = |f: &str| available.iter().any(|a| a == f);
    let used = if cfg!(target_arch = "x86_64") {
        if has("AVX2") && has("BMI2") {
            "AVX2+BMI2 (ring's integrated x86_64 ChaCha20-Poly1305; AVX-512 is not used)"
        } else if has("SSE4.1") {
            "SSE4.1 (ring's integrated x86_64 ChaCha20-Poly1305)"
        } else if has("SSSE3") {
            "SSSE3 ChaCha20, portable Poly1305"
        } else {
            "portable code (no SIMD)"
        }
    } else if cfg!(target_arch = "aarch64") {
        "NEON (ring's integrated aarch64 ChaCha20-Poly1305)"
    } else if cfg!(target_arch = "arm") && has("NEON") {
        "NEON ChaCha20 and Poly1305 (ring, armv7)"
    } else {
        "portable code (no SIMD)"
    };
    (available, used.to_owned())
}

/// The CPUs this process may run on.
fn usable_cpus() -> Vec<usize> {
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, usize::from)).collect(),
    }
}

fn machine(usable: usize) -> Machine {
    let info = std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| parse_cpuinfo(&t))
        .unwrap_or_default();
    let max_khz = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        .ok()
        .and_then(|t| t.trim().parse::<f64>().ok());
    let (clock_mhz, clock_source) = match (max_khz, info.mhz) {
        (Some(khz), _) => (
            Some(khz / 1000.0),
            Some("cpufreq cpuinfo_max_freq".to_owned()),
        ),
        (None, Some(mhz)) => (
            Some(mhz),
            Some("/proc/cpuinfo cpu MHz (current)".to_owned()),
        ),
        (None, None) => (None, None),
    };
    let (simd_available, aead_implementation) = simd(&info.features);
    Machine {
        arch: std::env::consts::ARCH.to_owned(),
        cpu_model: info.model,
        logical_cpus: info.processors,
        usable_cpus: usable,
        clock_mhz,
        clock_source,
        bogomips: info.bogomips,
        simd_available,
        aead_implementation,
    }
}

/// Seals `size`-byte buffers with ChaCha20-Poly1305 for `seconds`; bytes per second.
fn aead_rate(size: usize, seconds: f64) -> Result<f64> {
    let key = UnboundKey::new(&CHACHA20_POLY1305, &[0x42; 32])
        .map_err(|_| anyhow!("ring refused a ChaCha20-Poly1305 key"))?;
    let key = LessSafeKey::new(key);
    let mut buf = vec![0x17u8; size];
    let mut counter = 0u64;
    let mut seal = |n: u64| -> Result<()> {
        for _ in 0..n {
            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_le_bytes());
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut buf,
                )
                .map_err(|_| anyhow!("ChaCha20-Poly1305 seal failed"))?;
            let _ = black_box(tag);
        }
        Ok(())
    };
    // Warm up (caches, clock ramp), then measure in batches of about 1 MB.
    let batch = (1 << 20) / size as u64 + 1;
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < (seconds / 10.0).min(0.5) {
        seal(batch)?;
    }
    let start = Instant::now();
    let mut sealed = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        seal(batch)?;
        sealed += batch;
    }
    Ok(sealed as f64 * size as f64 / start.elapsed().as_secs_f64())
}

/// Runs `f` on a thread pinned to `core`.
fn on_core<T: Send>(core: usize, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut set = nix::sched::CpuSet::new();
            set.set(core)
                .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set))
                .with_context(|| format!("pinning a thread to CPU {core}"))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow!("the measuring thread panicked")))
    })
}

fn measure_aead(cores: &[usize], seconds: f64) -> Result<Vec<AeadResult>> {
    let mut out = Vec::new();
    for &core in cores {
        for size in AEAD_SIZES {
            eprintln!(
                "bench: ChaCha20-Poly1305 seal, core {core}, {} ...",
                human_size(size)
            );
            let rate = on_core(core, || aead_rate(size, seconds))?;
            out.push(AeadResult {
                core,
                bytes: size,
                gbit_per_s: rate * 8.0 / 1e9,
            });
        }
    }
    Ok(out)
}

const APP: [u8; 4] = [10, 20, 1, 10];
const CLOUD: [u8; 4] = [10, 20, 100, 1];

/// Two engines (edge-1 dials out, dc-1 listens) with one tenant whose session is up.
fn engine_pair() -> Result<(World, PortId)> {
    let topo = Topology {
        gateways: vec![
            ("edge-1".into(), None),
            ("dc-1".into(), Some(([192, 0, 2, 1], 51820).into())),
        ],
        tenants: vec![
            TenantSpec::new("bench", 2)
                .endpoint("app", 0, &["10.20.1.10/32"])
                .endpoint("cloud", 1, &["10.20.100.0/24"])
                .allow("app", "cloud", Protocol::Udp, &[(9000, 9000)]),
        ],
    };
    let mut world = topo.world()?;
    world.run();
    let app = world.nodes[0]
        .engine
        .port("bench", "app")
        .context("the bench topology has an app port")?;
    let first = udp_packet(64)?;
    let _ = world.send_app(0, app, &first);
    world.run();
    if world.take_delivered().len() != 1 {
        bail!("the in-memory session did not come up");
    }
    Ok((world, app))
}

fn udp_packet(len: usize) -> Result<Vec<u8>> {
    let payload = vec![0u8; len.saturating_sub(28)];
    ip_packet(APP.into(), CLOUD.into(), 17, 40000, 9000, &payload)
        .context("building a bench packet")
}

fn engine_result(direction: &'static str, bytes: usize, packets: u64, secs: f64) -> EngineResult {
    let pps = packets as f64 / secs.max(1e-9);
    EngineResult {
        direction,
        bytes,
        gbit_per_s: pps * bytes as f64 * 8.0 / 1e9,
        packets_per_s: pps,
    }
}

fn measure_engine(seconds: f64) -> Result<Vec<EngineResult>> {
    let mut results = Vec::new();
    for size in ENGINE_SIZES {
        // The engines log their configuration at info: not progress a person needs here.
        let (mut world, app) = tracing::subscriber::with_default(
            tracing::subscriber::NoSubscriber::default(),
            engine_pair,
        )?;
        let packet = udp_packet(size)?;
        let now = world.now();
        let from = world.nodes[0].addr;
        let (edge, dc) = world.nodes.split_at_mut(1);
        let (edge, dc) = (&mut edge[0].engine, &mut dc[0].engine);
        let mut out = vec![0u8; 65_600];

        eprintln!("bench: engine encrypt (app → policy → route → WireGuard), {size} B ...");
        let start = Instant::now();
        let mut packets = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            for _ in 0..256 {
                match edge.handle_app_packet(app, black_box(&packet), now, &mut out) {
                    AppOutcome::Send(_) => packets += 1,
                    other => bail!("the engine did not encrypt: {other:?}"),
                }
            }
        }
        results.push(engine_result(
            "encrypt",
            size,
            packets,
            start.elapsed().as_secs_f64(),
        ));

        eprintln!("bench: engine decrypt (WireGuard → checks → deliver), {size} B ...");
        // Every datagram is accepted once (replay protection): encrypt a batch (not timed),
        // then time its decryption.
        let mut batch: Vec<u8> = Vec::new();
        let mut lens: Vec<usize> = Vec::with_capacity(256);
        let mut timed = Duration::ZERO;
        let mut packets = 0u64;
        while timed.as_secs_f64() < seconds {
            batch.clear();
            lens.clear();
            for _ in 0..256 {
                if let AppOutcome::Send(t) = edge.handle_app_packet(app, &packet, now, &mut out) {
                    batch.extend_from_slice(&out[..t.len]);
                    lens.push(t.len);
                }
            }
            let start = Instant::now();
            let mut at = 0;
            for &len in &lens {
                let d = &batch[at..at + len];
                at += len;
                match dc.handle_wan_datagram(from, black_box(d), now, &mut out) {
                    WanOutcome::Deliver { .. } => packets += 1,
                    other => bail!("the engine did not deliver: {other:?}"),
                }
            }
            timed += start.elapsed();
        }
        results.push(engine_result("decrypt", size, packets, timed.as_secs_f64()));
    }
    Ok(results)
}

/// utime + stime (ticks) from the text of /proc/PID/stat.
pub(crate) fn parse_proc_stat_cpu(text: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: fields after it start
    // behind the last ')'. utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn process_cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_proc_stat_cpu(&t))
        .unwrap_or(0)
}

const NS_A: &str = "corridor-bench-a";
const NS_B: &str = "corridor-bench-b";
const WAN_A: &str = "192.168.79.1";
const WAN_B: &str = "192.168.79.2";
const INNER_A: &str = "10.79.0.1";
const INNER_B: &str = "10.79.0.2";
const WG_PORT: u16 = 51820;
const TCP_PORT: u16 = 5201;

/// The policy of the tunnel measurement: one tenant, an app in each namespace, TCP and ICMP
/// allowed from A to B (replies pass by connection tracking). Enforcement stays on.
fn write_tunnel_policy(dir: &Path) -> Result<()> {
    let policy = dir.join("policy");
    std::fs::create_dir_all(policy.join("tenants"))?;
    std::fs::write(
        policy.join("tenants/bench.toml"),
        format!(
            "name = \"bench\"\naddress-space = [\"10.79.0.0/24\"]\n\n\
             [[endpoint]]\nname = \"app-a\"\ngateway = \"gw-a\"\nnetns = \"{NS_A}\"\naddresses = [\"{INNER_A}/32\"]\n\n\
             [[endpoint]]\nname = \"app-b\"\ngateway = \"gw-b\"\nnetns = \"{NS_B}\"\naddresses = [\"{INNER_B}/32\"]\n\n\
             [[allow]]\nfrom = \"app-a\"\nto = \"app-b\"\nprotocol = \"tcp\"\n\n\
             [[allow]]\nfrom = \"app-a\"\nto = \"app-b\"\nprotocol = \"icmp\"\n"
        ),
    )?;
    let mut gateways = String::new();
    for (gw, wan) in [("gw-a", WAN_A), ("gw-b", WAN_B)] {
        let keys =
            controlplane::keys::generate_key_dir(&dir.join("keys").join(gw), &["bench"], true)?;
        let line = controlplane::keys::keys_toml_line(
            keys.iter().map(|k| (k.tenant.as_str(), &k.public_key)),
        );
        gateways.push_str(&format!(
            "[[gateway]]\nname = \"{gw}\"\nendpoint = \"{wan}:{WG_PORT}\"\n{line}\n\n"
        ));
        std::fs::write(
            dir.join(format!("{gw}.toml")),
            format!(
                "name = \"{gw}\"\nkey-dir = \"{}\"\nlisten = \"0.0.0.0:{WG_PORT}\"\ncontrol-socket = \"{}\"\npolicy = \"{}\"\nmtu = 1420\n",
                dir.join("keys").join(gw).display(),
                dir.join(format!("{gw}.sock")).display(),
                policy.display()
            ),
        )?;
    }
    std::fs::write(policy.join("gateways.toml"), gateways)?;
    Ok(())
}

fn measure_tunnel(seconds: f64) -> Result<TunnelResult> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "--tunnel needs root (network namespaces, TUN devices): run `sudo corridor bench --tunnel`"
        );
    }
    if dataplane::VIRTUAL_CLOCK {
        bail!(
            "this corridor binary was built with the test-only virtual clock and cannot run a gateway; build it with `cargo build --release -p corridor`"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let mut lab = NetnsWorld::new("bench")?;
    let dir = lab.dir.clone();
    eprintln!("bench: tunnel: namespaces {NS_A} and {NS_B}, veth {WAN_A} <-> {WAN_B}");
    for ns in [NS_A, NS_B] {
        lab.add_ns(ns)?;
    }
    lab.wan((NS_A, WAN_A), (NS_B, WAN_B))?;
    write_tunnel_policy(&dir)?;
    for (gw, ns) in [("gw-b", NS_B), ("gw-a", NS_A)] {
        let config = dir.join(format!("{gw}.toml"));
        let socket = dir.join(format!("{gw}.sock"));
        lab.start_gateway(gw, ns, &config, &socket, &stop)?;
        eprintln!("bench: tunnel: gateway {gw} running in {ns}");
    }
    let server: SocketAddr = format!("{INNER_B}:{TCP_PORT}").parse()?;
    let listener = in_netns(NS_B, || {
        TcpListener::bind(server).map_err(os("binding the bench's server"))
    })?;
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let result = std::thread::scope(|s| -> Result<TunnelResult> {
        let rx = Arc::clone(&received);
        let reader = s.spawn(move || -> std::io::Result<()> {
            let (mut conn, _) = listener.accept()?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match conn.read(&mut buf)? {
                    0 => return Ok(()),
                    n => rx.fetch_add(n as u64, Ordering::Relaxed),
                };
            }
        });
        // The first SYN waits for the WireGuard handshake; TCP retries it if need be.
        let connected = in_netns(NS_A, || {
            TcpStream::connect_timeout(&server, Duration::from_secs(10))
                .map_err(os("connecting through the tunnel"))
        });
        let conn = match connected {
            Ok(c) => c,
            Err(e) => {
                // Wake the reader so the scope ends.
                let _ = in_netns(NS_B, || {
                    TcpStream::connect_timeout(&server, Duration::from_millis(300))
                        .map_err(os("waking the server"))
                });
                let _ = reader.join();
                return Err(anyhow!("{e}"));
            }
        };
        let writer_conn = conn.try_clone()?;
        let stop_writing = Arc::clone(&done);
        let writer = s.spawn(move || {
            let mut c = writer_conn;
            let buf = vec![0x5au8; 128 * 1024];
            while !stop_writing.load(Ordering::Relaxed) {
                if c.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        let cpu = |lab: &NetnsWorld| -> u64 {
            lab.gateways.iter().map(|g| process_cpu_ticks(g.id())).sum()
        };
        let measured = (|| -> Result<TunnelResult> {
            // Half a second (at most) of warm-up: TCP's window opens, the handshake is done.
            let warm = Instant::now();
            while warm.elapsed().as_secs_f64() < (seconds / 4.0).min(0.5) {
                interrupted(&stop)?;
                std::thread::sleep(Duration::from_millis(20));
            }
            let (b0, c0, t0) = (received.load(Ordering::Relaxed), cpu(&lab), Instant::now());
            let mut next_report = 1.0;
            while t0.elapsed().as_secs_f64() < seconds {
                interrupted(&stop)?;
                std::thread::sleep(Duration::from_millis(20));
                let e = t0.elapsed().as_secs_f64();
                if e >= next_report {
                    let so_far = (received.load(Ordering::Relaxed) - b0) as f64 * 8.0 / 1e9 / e;
                    eprintln!("bench: tunnel: {e:.0}/{seconds} s, {so_far:.2} Gbit/s so far");
                    next_report += 1.0;
                }
            }
            let (b1, c1, t1) = (received.load(Ordering::Relaxed), cpu(&lab), t0.elapsed());
            let bytes = b1 - b0;
            let secs = t1.as_secs_f64();
            let cpu_s = c1.saturating_sub(c0) as f64 / USER_HZ;
            Ok(TunnelResult {
                gbit_per_s: bytes as f64 * 8.0 / 1e9 / secs,
                bytes,
                seconds: secs,
                gateway_cpu_seconds: cpu_s,
                cpu_seconds_per_gb: (bytes > 0).then(|| cpu_s / (bytes as f64 / 1e9)),
            })
        })();
        done.store(true, Ordering::Relaxed);
        let _ = conn.shutdown(Shutdown::Both);
        let _ = writer.join();
        let _ = reader.join();
        measured
    });
    drop(lab);
    result
}

/// Runs `corridor bench`.
#[expect(clippy::print_stdout, reason = "the report is the command's output")]
pub(crate) fn run(args: BenchArgs) -> Result<ExitCode> {
    let cores = usable_cpus();
    let machine = machine(cores.len());
    eprintln!(
        "bench: {} ({}), {} usable CPU(s); {} s per measurement",
        machine.cpu_model.as_deref().unwrap_or("unknown CPU"),
        machine.arch,
        cores.len(),
        args.seconds
    );
    let aead = measure_aead(&cores, args.seconds)?;
    let engine = if args.aead_only {
        None
    } else {
        Some(measure_engine(args.seconds)?)
    };
    let tunnel = if args.tunnel {
        Some(measure_tunnel(args.seconds)?)
    } else {
        None
    };
    let ceiling = Ceiling::of(&aead, engine.as_deref(), tunnel.as_ref());
    let report = Report {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        date: utc_date(SystemTime::now()),
        machine,
        seconds: args.seconds,
        aead,
        engine,
        tunnel,
        ceiling,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// YYYY-MM-DD (UTC) of a time.
fn utc_date(t: SystemTime) -> String {
    let days = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn human_size(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

fn pct(f: Option<f64>) -> String {
    f.map_or_else(|| "n/a".to_owned(), |f| format!("{:.0}%", f * 100.0))
}

/// The report as a person reads it.
pub(crate) fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "corridor bench (corridor {}, {})", r.version, r.date);
    let clock = match (m.clock_mhz, &m.clock_source) {
        (Some(mhz), Some(src)) => format!("{mhz:.0} MHz ({src})"),
        _ => match m.bogomips {
            Some(b) => format!("unknown (BogoMIPS {b:.1})"),
            None => "unknown".to_owned(),
        },
    };
    let _ = writeln!(
        s,
        "machine: {}, {}, {} logical CPU(s) ({} usable), clock {clock}",
        m.cpu_model.as_deref().unwrap_or("unknown CPU"),
        m.arch,
        m.logical_cpus,
        m.usable_cpus
    );
    let simd = if m.simd_available.is_empty() {
        "none detected".to_owned()
    } else {
        m.simd_available.join(" ")
    };
    let _ = writeln!(
        s,
        "SIMD: {simd}; ChaCha20-Poly1305 uses {}",
        m.aead_implementation
    );
    let _ = writeln!(s, "each measurement ran {} s\n", r.seconds);

    let _ = writeln!(
        s,
        "ChaCha20-Poly1305 seal, one core at a time (ring, as boringtun's data path), Gbit/s:"
    );
    let _ = write!(s, "  {:<6}", "core");
    for size in AEAD_SIZES {
        let _ = write!(s, "{:>10}", human_size(size));
    }
    let _ = writeln!(s);
    let mut cores: Vec<usize> = r.aead.iter().map(|a| a.core).collect();
    cores.dedup();
    for core in cores {
        let _ = write!(s, "  {core:<6}");
        for size in AEAD_SIZES {
            match r.aead.iter().find(|a| a.core == core && a.bytes == size) {
                Some(a) => {
                    let _ = write!(s, "{:>10.2}", a.gbit_per_s);
                }
                None => {
                    let _ = write!(s, "{:>10}", "-");
                }
            }
        }
        let _ = writeln!(s);
    }

    if let Some(engine) = &r.engine {
        let _ = writeln!(
            s,
            "\nengine in memory, one thread (policy, route, WireGuard; no I/O):"
        );
        let _ = writeln!(
            s,
            "  {:<8}{:>16}{:>10}{:>16}{:>10}",
            "packet", "encrypt Gbit/s", "Mpkt/s", "decrypt Gbit/s", "Mpkt/s"
        );
        for size in ENGINE_SIZES {
            let find = |d: &str| engine.iter().find(|e| e.direction == d && e.bytes == size);
            let cell = |e: Option<&EngineResult>| match e {
                Some(e) => (
                    format!("{:.2}", e.gbit_per_s),
                    format!("{:.2}", e.packets_per_s / 1e6),
                ),
                None => ("-".to_owned(), "-".to_owned()),
            };
            if find("encrypt").is_none() && find("decrypt").is_none() {
                continue;
            }
            let (eg, ep) = cell(find("encrypt"));
            let (dg, dp) = cell(find("decrypt"));
            let _ = writeln!(
                s,
                "  {:<8}{eg:>16}{ep:>10}{dg:>16}{dp:>10}",
                format!("{size} B")
            );
        }
    }
    if let Some(t) = &r.tunnel {
        let per_gb = t
            .cpu_seconds_per_gb
            .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}"));
        let _ = writeln!(
            s,
            "\ntunnel through two namespaces (two gateway processes, one TCP stream, MTU 1420):\n  {:.2} Gbit/s over {:.1} s; the gateways used {:.2} CPU s ({per_gb} CPU s per GB)",
            t.gbit_per_s, t.seconds, t.gateway_cpu_seconds
        );
    }
    let c = &r.ceiling;
    if let Some(best) = c.aead_1420_gbit_per_s {
        let _ = writeln!(
            s,
            "\nceiling: the fastest core seals 1420-byte packets at {best:.2} Gbit/s"
        );
        if r.engine.is_some() {
            let _ = writeln!(
                s,
                "  the engine reaches {} of it encrypting and {} decrypting (1420 B, one thread)",
                pct(c.engine_encrypt_1420_fraction),
                pct(c.engine_decrypt_1420_fraction)
            );
        }
        if r.tunnel.is_some() {
            let _ = writeln!(s, "  the tunnel reaches {}", pct(c.tunnel_fraction));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    const X86: &str = "processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
cpu MHz\t\t: 2450.000
flags\t\t: fpu sse2 ssse3 sse4_1 avx2 bmi2 avx512f
bogomips\t: 4900.00

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
cpu MHz\t\t: 2449.000
flags\t\t: fpu sse2 ssse3 sse4_1 avx2 bmi2 avx512f
bogomips\t: 4900.00
";

    const RPI4: &str = "processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

processor\t: 1
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Hardware\t: BCM2835
Revision\t: c03114
Serial\t\t: 10000000abcdef01
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
";

    const ARMV7: &str = "processor\t: 0
model name\t: ARMv7 Processor rev 5 (v7l)
BogoMIPS\t: 48.00
Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm
CPU implementer\t: 0x41
CPU architecture: 7
CPU variant\t: 0x0
CPU part\t: 0xc07
CPU revision\t: 5
";

    #[test]
    fn cpuinfo_x86() {
        let i = parse_cpuinfo(X86);
        assert_eq!(i.model.as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(i.processors, 2);
        assert_eq!(i.mhz, Some(2450.0));
        assert_eq!(i.bogomips, Some(4900.0));
        assert!(i.features.iter().any(|f| f == "avx2"));
    }

    #[test]
    fn cpuinfo_aarch64_board() {
        let i = parse_cpuinfo(RPI4);
        // "Model" (else "Hardware") names the board; the part names the core.
        assert_eq!(
            i.model.as_deref(),
            Some("ARM Cortex-A72 (Raspberry Pi 4 Model B Rev 1.4)")
        );
        assert_eq!(i.processors, 2);
        assert_eq!(i.mhz, None);
        assert_eq!(i.bogomips, Some(108.0));
        assert!(i.features.iter().any(|f| f == "asimd"));
    }

    #[test]
    fn cpuinfo_armv7_and_unknown_parts() {
        let i = parse_cpuinfo(ARMV7);
        assert_eq!(i.model.as_deref(), Some("ARMv7 Processor rev 5 (v7l)"));
        assert!(i.features.iter().any(|f| f == "neon"));
        let odd = parse_cpuinfo("processor : 0\nCPU implementer : 0x61\nCPU part : 0x022\n");
        assert_eq!(odd.model.as_deref(), Some("ARM core 0x61/0x022"));
        assert_eq!(parse_cpuinfo(""), CpuInfo::default());
    }

    #[test]
    fn proc_stat_cpu_time() {
        let stat =
            "1234 (corridor (gw)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_proc_stat_cpu(stat), Some(325));
        assert_eq!(parse_proc_stat_cpu("garbage"), None);
    }

    #[test]
    fn dates() {
        let day = |d: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(d * 86_400 + 3_600);
        assert_eq!(utc_date(day(0)), "1970-01-01");
        assert_eq!(utc_date(day(19_782)), "2024-02-29");
        assert_eq!(utc_date(day(20_454)), "2026-01-01");
    }

    fn sample() -> Report {
        let aead = vec![
            AeadResult {
                core: 0,
                bytes: 1420,
                gbit_per_s: 10.0,
            },
            AeadResult {
                core: 0,
                bytes: 65_536,
                gbit_per_s: 12.0,
            },
            AeadResult {
                core: 1,
                bytes: 1420,
                gbit_per_s: 8.0,
            },
            AeadResult {
                core: 1,
                bytes: 65_536,
                gbit_per_s: 11.0,
            },
        ];
        let engine = vec![
            engine_result("encrypt", 1420, 440_000, 1.0),
            engine_result("decrypt", 1420, 352_113, 1.0),
            engine_result("encrypt", 64, 2_000_000, 1.0),
        ];
        let tunnel = TunnelResult {
            gbit_per_s: 1.0,
            bytes: 250_000_000,
            seconds: 2.0,
            gateway_cpu_seconds: 1.5,
            cpu_seconds_per_gb: Some(6.0),
        };
        let ceiling = Ceiling::of(&aead, Some(&engine), Some(&tunnel));
        Report {
            version: "0.1.0".into(),
            date: "2026-01-01".into(),
            machine: Machine {
                arch: "aarch64".into(),
                cpu_model: Some("ARM Cortex-A72 (BCM2835)".into()),
                logical_cpus: 4,
                usable_cpus: 2,
                clock_mhz: None,
                clock_source: None,
                bogomips: Some(108.0),
                simd_available: vec!["NEON".into()],
                aead_implementation: "NEON".into(),
            },
            seconds: 1.0,
            aead,
            engine: Some(engine),
            tunnel: Some(tunnel),
            ceiling,
        }
    }

    #[test]
    fn ceiling_is_the_best_core_at_1420() {
        let c = sample().ceiling;
        assert_eq!(c.aead_1420_gbit_per_s, Some(10.0));
        let enc = c.engine_encrypt_1420_fraction.unwrap();
        assert!((enc - 0.49984).abs() < 1e-3, "{enc}");
        assert_eq!(c.tunnel_fraction, Some(0.1));
    }

    #[test]
    fn table() {
        let text = render(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "corridor bench (corridor 0.1.0, 2026-01-01)");
        assert_eq!(
            lines[1],
            "machine: ARM Cortex-A72 (BCM2835), aarch64, 4 logical CPU(s) (2 usable), clock unknown (BogoMIPS 108.0)"
        );
        assert!(text.contains("  core      1420 B     64 KB\n  0          10.00     12.00\n  1           8.00     11.00\n"), "{text}");
        assert!(
            text.contains("  1420 B              5.00      0.44            4.00      0.35\n"),
            "{text}"
        );
        // A size measured in one direction only shows a dash in the other; none, no row.
        assert!(!text.contains("512 B"), "{text}");
        assert!(
            text.contains("  64 B                1.02      2.00               -         -\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "1.00 Gbit/s over 2.0 s; the gateways used 1.50 CPU s (6.00 CPU s per GB)"
            ),
            "{text}"
        );
        assert!(
            text.contains("the engine reaches 50% of it encrypting and 40% decrypting"),
            "{text}"
        );
        assert!(text.contains("the tunnel reaches 10%"), "{text}");
    }

    #[test]
    fn json_shape() {
        let v = serde_json::to_value(sample()).unwrap();
        for key in [
            "version", "date", "machine", "seconds", "aead", "engine", "tunnel", "ceiling",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        for key in [
            "arch",
            "cpu_model",
            "logical_cpus",
            "usable_cpus",
            "clock_mhz",
            "simd_available",
            "aead_implementation",
        ] {
            assert!(v["machine"].get(key).is_some(), "machine.{key} missing");
        }
        assert_eq!(v["aead"][0]["bytes"], 1420);
        assert_eq!(v["engine"][0]["direction"], "encrypt");
        assert_eq!(v["tunnel"]["cpu_seconds_per_gb"], 6.0);
        assert_eq!(v["ceiling"]["aead_1420_gbit_per_s"], 10.0);
    }

    #[test]
    fn seconds_must_be_positive() {
        assert_eq!(parse_seconds("0.2"), Ok(0.2));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("nan").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
