//! The controller: HTTP API over TLS, bundle building and distribution.

pub mod api;
pub mod tls;
