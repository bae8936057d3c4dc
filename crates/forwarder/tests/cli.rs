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

/// The quick start: no write key, so batches go to stdout with a loud warning; a signed sample
/// event becomes a track and an identify there.
#[test]
fn without_a_write_key_batches_go_to_stdout() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let mut child = forwarder()
        .env("SESHN_WEBHOOK_SECRET", "whsec_demo")
        .env("FORWARDER_LISTEN", "127.0.0.1:0")
        .env("SPOOL_DIR", dir.path())
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let logs = std::thread::spawn(move || {
        let mut warned = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let message = v["fields"]["message"].as_str().unwrap_or_default();
            warned |= message.contains("NO SEGMENT WRITE KEY");
            if message == "listening" {
                let _ = tx.send(v["fields"]["addr"].as_str().unwrap().to_owned());
            }
        }
        warned
    });
    let addr = rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap();

    let body =
        r#"{"id":"bk_1","contact":{"id":"ct_1","name":"Ada","email":"ada@example.com"},"seats":2}"#;
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    let request = format!(
        "POST /api/webhooks/seshn HTTP/1.1\r\nhost: x\r\nx-webhook-event: booking.created\r\n\
         x-webhook-signature: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        seshn::signature::sign(b"whsec_demo", body.as_bytes()),
        body.len()
    );
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // SIGTERM drains the spool to stdout, then the process exits cleanly.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(logs.join().unwrap(), "the missing write key is announced");
    let messages: Vec<serde_json::Value> = stdout
        .lines()
        .flat_map(|line| {
            let batch: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(batch.get("writeKey").is_none());
            batch["batch"].as_array().unwrap().clone()
        })
        .collect();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["event"], "Seshn booking.created");
    assert_eq!(messages[0]["userId"], "ct_1");
    assert_eq!(messages[1]["type"], "identify");
}
