//! The sans-IO engine.
#[derive(Debug, Default)]
pub struct Engine;
