#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The binary's command line: the tracking-plan subcommand and configuration errors.

use std::process::Command;

fn forwarder() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_seshn-segment-forwarder"));
    cmd.env_clear();
    cmd
}

#[test]
fn tracking_plan_subcommand_prints_the_golden_plan() {
    for profile in ["seed", "spec"] {
        let out = forwarder()
            .args(["tracking-plan", "--mapping-profile", profile])
            .output()
            .unwrap();
        assert!(out.status.success());
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let golden = std::fs::read_to_string(format!(
            "{}/tests/golden/tracking-plan.{profile}.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let golden: serde_json::Value = serde_json::from_str(&golden).unwrap();
        assert_eq!(printed, golden, "{profile}");
    }
    // The profile also comes from the environment.
    let out = forwarder()
        .arg("tracking-plan")
        .env("MAPPING_PROFILE", "spec")
        .output()
        .unwrap();
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["rules"][2]["key"], "Order Cancelled");
}

#[test]
fn configuration_errors_exit_2_without_leaking_secrets() {
    // No webhook secret.
    let out = forwarder().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // An https endpoint without a write key.
    let out = forwarder()
        .env("SESHN_WEBHOOK_SECRET", "s3cr3t-value")
        .env("SEGMENT_ENDPOINT", "https://api.segment.io")
        .env("FORWARDER_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("write key"), "{stderr}");
    assert!(!stderr.contains("s3cr3t-value"));
    // A malformed endpoint.
    let out = forwarder()
        .env("SESHN_WEBHOOK_SECRET", "s")
        .env("SEGMENT_ENDPOINT", "ftp://example.com")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Unknown flag values are refused by the parser.
    let out = forwarder()
        .args(["--delivery-mode", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
