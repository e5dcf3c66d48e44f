//! corridor's userspace packet engine.
//!
//! [`engine`] is a pure state machine: it is fed app packets, WAN datagrams and the time, and
//! answers with what to send where (DESIGN.md §3). `io` (Linux only, added with the gateway) is
//! the one place that touches TUN devices, sockets, namespaces and the clock.

pub mod config;
pub mod engine;
#[cfg(target_os = "linux")]
pub mod io;
pub mod sim;

pub use config::{EngineConfig, SecretKey};
pub use engine::Engine;

/// True when this build swapped boringtun's clock for a settable test clock (`virtual-clock`).
/// A gateway built like that would never rekey on time: the binary refuses to run one.
pub const VIRTUAL_CLOCK: bool = cfg!(feature = "virtual-clock");
