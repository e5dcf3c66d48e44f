//! The controller: HTTP API over TLS, bundle building and distribution.

pub mod api;
pub mod bundles;
pub mod config;
pub mod server;
pub mod tls;

pub use config::ControllerConfig;
pub use server::{ControllerError, run, serve};
