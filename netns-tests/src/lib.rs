//! Harness for namespace topologies (see the issue on the Linux gateway).
