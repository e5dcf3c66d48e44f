//! `corridor bench` end to end: a short in-memory run (no root) and the JSON it prints.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::process::Command;

#[test]
fn bench_json_has_every_field() {
    let out = Command::new(env!("CARGO_BIN_EXE_corridor"))
        .args(["bench", "--seconds", "0.05", "--json"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run corridor bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Progress goes to stderr, the report alone to stdout.
    assert!(
        stderr.contains("bench: ChaCha20-Poly1305 seal, core"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in [
        "version", "date", "machine", "seconds", "aead", "engine", "ceiling",
    ] {
        assert!(v.get(key).is_some(), "{key} missing in {v}");
    }
    assert!(v["tunnel"].is_null(), "no tunnel without --tunnel");
    let m = &v["machine"];
    assert_eq!(m["arch"], std::env::consts::ARCH);
    assert!(m["usable_cpus"].as_u64().unwrap() >= 1);
    assert!(m["simd_available"].is_array());
    assert!(m["aead_implementation"].is_string());
    let aead = v["aead"].as_array().unwrap();
    // Every usable core, at 1420 B and 64 KB.
    assert_eq!(aead.len() as u64, 2 * m["usable_cpus"].as_u64().unwrap());
    assert!(aead.iter().all(|a| a["gbit_per_s"].as_f64().unwrap() > 0.0));
    let engine = v["engine"].as_array().unwrap();
    assert_eq!(engine.len(), 6, "encrypt and decrypt at 64, 512, 1420 B");
    for e in engine {
        assert!(e["packets_per_s"].as_f64().unwrap() > 0.0, "{e}");
    }
    assert!(v["ceiling"]["aead_1420_gbit_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        v["ceiling"]["engine_encrypt_1420_fraction"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn bench_aead_only_and_bad_seconds() {
    let out = Command::new(env!("CARGO_BIN_EXE_corridor"))
        .args(["bench", "--aead-only", "--seconds", "0.02", "--json"])
        .output()
        .expect("run corridor bench");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(v["engine"].is_null());
    let out = Command::new(env!("CARGO_BIN_EXE_corridor"))
        .args(["bench", "--seconds", "0"])
        .output()
        .expect("run corridor bench");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration in seconds"));
}
