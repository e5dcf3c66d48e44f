//! corridor's control plane: policy files (parse, validate), compilation of one gateway's engine
//! configuration, and gateway key files.

#[cfg(target_os = "linux")]
pub mod agent;
pub mod bundle;
pub mod client;
pub mod compile;
pub mod controller;
pub mod diag;
pub mod gateway_config;
pub mod identity;
pub mod keys;
pub mod policy;
pub mod store;
pub mod token;

pub use compile::{CompileError, GatewayPlan, InterfacePlan, compile_gateway};
pub use diag::{Diagnostic, Position, Severity};
pub use keys::{KeyDirError, TenantKeys, load_key_dir};
pub use policy::{Policy, PolicyErrors};
