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
    // An https endpoint without a write key: a configuration error too, found before start.
    let out = forwarder()
        .env("SESHN_WEBHOOK_SECRET", "s3cr3t-value")
        .env("SEGMENT_ENDPOINT", "https://api.segment.io")
        .env("FORWARDER_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("write key"), "{stderr}");
    assert!(!stderr.contains("s3cr3t-value"));
    // A write key file that cannot be read.
    let out = forwarder()
        .env("SESHN_WEBHOOK_SECRET", "s")
        .env("SEGMENT_WRITE_KEY_FILE", "/nonexistent/write-key")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Bad values from the environment are refused by the parser as well.
    for (name, value) in [
        ("DELIVERY_MODE", "sometimes"),
        ("SPOOL_MAX_BYTES", "lots"),
        ("MAPPING_PROFILE", "fancy"),
        ("SHUTDOWN_DELAY", "soon"),
        ("MAX_INFLIGHT_BODY_BYTES", "1TB"),
    ] {
        let out = forwarder()
            .env("SESHN_WEBHOOK_SECRET", "s")
            .env(name, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
    }
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

/// Starts the binary with `env`, returns the fields of its "starting" log line once it listens,
/// then stops it.
fn started_with(env: &[(&str, &str)]) -> serde_json::Value {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = forwarder();
    cmd.env("SESHN_WEBHOOK_SECRET", "s")
        .env("FORWARDER_LISTEN", "127.0.0.1:0")
        .env("SPOOL_DIR", dir.path())
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        cmd.env(name, value);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut starting = None;
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let message = v["fields"]["message"].as_str().unwrap_or_default();
        if message.starts_with("starting") {
            starting = Some(v["fields"].clone());
        }
        if message == "listening" {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    starting.expect("a starting line")
}

/// The environment fallbacks the operator relies on reach the configuration.
#[test]
fn environment_configures_mode_spool_bound_and_profile() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "wk_file_key\n").unwrap();
    let fields = started_with(&[
        ("DELIVERY_MODE", "synchronous"),
        ("SPOOL_MAX_BYTES", "64MiB"),
        ("MAPPING_PROFILE", "spec"),
        ("SEGMENT_WRITE_KEY_FILE", key.to_str().unwrap()),
        ("SEGMENT_ENDPOINT", "http://127.0.0.1:9"),
    ]);
    assert_eq!(fields["mode"], "Synchronous", "{fields}");
    assert_eq!(fields["spool_max_bytes"], 64 << 20, "{fields}");
    assert_eq!(fields["profile"], "spec", "{fields}");
    // The key from the file was accepted (an http endpoint needs one) and is not logged.
    assert!(!fields.to_string().contains("wk_file_key"), "{fields}");
    let defaults = started_with(&[]);
    assert_eq!(defaults["mode"], "Spooled", "{defaults}");
    assert_eq!(defaults["profile"], "seed", "{defaults}");
    assert_eq!(defaults["spool_max_bytes"], 512 << 20, "{defaults}");
}

/// `dead-letters` prints the spool's dead letters as JSON lines, and refuses a spool that does
/// not exist.
#[test]
fn dead_letters_subcommand_prints_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = forwarder()
        .args(["dead-letters", "--spool-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "no spool there");
    // A spool with one oversize dead letter, made by the library.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let spool = forwarder::spool::Spool::open(&forwarder::spool::SpoolOptions {
            max_message_bytes: 10,
            ..forwarder::spool::SpoolOptions::small(dir.path())
        })
        .unwrap();
        spool
            .append(
                &[r#"{"type":"track","messageId":"m1"}"#.to_owned()],
                std::time::SystemTime::now(),
            )
            .await
            .unwrap();
        spool.close();
    });
    let out = forwarder()
        .arg("dead-letters")
        .env("SPOOL_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["reason"], "oversize");
    assert_eq!(lines[0]["message"]["messageId"], "m1");
}
