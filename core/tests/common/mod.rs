//! Helpers shared by the broker test files.
#![allow(dead_code)] // each test file uses its own subset

use std::{path::PathBuf, process::Command, time::Duration};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `n` seconds, multiplied by `POLYBUS_TEST_TIMEOUT_SCALE` (default 1).
pub fn secs(n: u64) -> Duration {
    let scale: f64 = std::env::var("POLYBUS_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(n as f64 * scale)
}

/// Runs the broker harness (`tests/harness/brokers.sh`); panics with its output when it fails.
pub fn harness(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(root().join("tests/harness/brokers.sh"))
        .args(args)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "brokers.sh {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
