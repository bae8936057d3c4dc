//! The binary's `crd` subcommand and the HTTP endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use operator::Metrics;

#[test]
fn crd_subcommand_prints_the_checked_in_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seshn-segment-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let on_disk = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../crds/seshnsegmentbridges.yaml"),
    )
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), on_disk);
}

#[test]
fn run_requires_a_forwarder_image() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seshn-segment-operator"))
        .arg("run")
        .env_remove("FORWARDER_IMAGE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--forwarder-image"));
}

#[tokio::test]
async fn metrics_health_and_readiness_endpoints() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(operator::metrics::serve(listener, metrics.clone()));
    let get = |path: &'static str| async move {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 503);
    metrics.set_ready(true);
    assert_eq!(get("/readyz").await.0, 200);
    metrics.wrote("status", 3);
    let (code, body) = get("/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("seshn_segment_operator_kube_writes_total{kind=\"status\"} 3"));
    assert!(body.contains("# TYPE seshn_segment_operator_reconcile_duration_seconds histogram"));
    server.abort();
}

/// The binary with a clean environment: no flag comes from the test runner's environment, and
/// no Kubernetes configuration is found (so a run that gets that far fails at once).
fn operator() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_seshn-segment-operator"));
    cmd.env_clear()
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("RUST_LOG", "info");
    cmd
}

fn output_of(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_metrics_address_in_use_is_a_clear_startup_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (ok, text) = output_of(operator().args([
        "run",
        "--forwarder-image",
        "img:1",
        "--log-format",
        "text",
        "--metrics-addr",
        &addr,
    ]));
    assert!(!ok, "{text}");
    assert!(
        text.contains("cannot listen on the metrics address") && text.contains(&addr),
        "{text}"
    );
}

#[test]
fn flags_fall_back_to_their_environment_variables() {
    // FORWARDER_IMAGE satisfies the required flag and METRICS_ADDR is the address used: the
    // run gets as far as binding it.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (ok, text) = output_of(
        operator()
            .args(["run"])
            .env("FORWARDER_IMAGE", "img:1")
            .env("LOG_FORMAT", "text")
            .env("METRICS_ADDR", &addr),
    );
    assert!(!ok, "{text}");
    assert!(!text.contains("--forwarder-image"), "{text}");
    assert!(text.contains(&addr), "{text}");

    // WATCH_NAMESPACES is read and checked.
    let (ok, text) = output_of(
        operator()
            .args(["run", "--forwarder-image", "img:1"])
            .env("WATCH_NAMESPACES", "a,,b"),
    );
    assert!(!ok, "{text}");
    assert!(text.contains("empty entry"), "{text}");

    // Values from the environment are parsed like flags.
    for (var, flag) in [
        ("CONCURRENCY", "--concurrency"),
        ("RESYNC_INTERVAL", "--resync-interval"),
        ("CLEANUP_DEADLINE", "--cleanup-deadline"),
        ("LEASE_DURATION", "--lease-duration"),
        ("SESHN_TIMEOUT", "--seshn-timeout"),
        ("SESHN_RATE_LIMIT", "--seshn-rate-limit"),
        ("LEADER_ELECTION", "--leader-election"),
    ] {
        let (ok, text) = output_of(
            operator()
                .args(["run", "--forwarder-image", "img:1"])
                .env(var, "bogus"),
        );
        assert!(!ok, "{var}: {text}");
        assert!(text.contains(flag), "{var}: {text}");
    }
}

/// Every row of the flag table in docs/operator.md is a flag of `run` with that environment
/// variable and (where the table gives one literal value) that default.
#[test]
fn the_documented_flags_envs_and_defaults_match_the_binary() {
    let (ok, help) = output_of(operator().args(["run", "--help"]));
    assert!(ok, "{help}");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operator.md"),
    )
    .unwrap();
    let rows: Vec<Vec<String>> = doc
        .lines()
        .skip_while(|l| !l.starts_with("| Flag | Environment | Default |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect();
    assert!(rows.len() >= 15, "flag table not found: {rows:?}");
    for row in rows {
        let flag = row[0].trim_matches('`');
        let env = row[1].trim_matches('`');
        assert!(help.contains(flag), "{flag} is not a flag: {help}");
        assert!(
            help.contains(&format!("env: {env}=")),
            "{flag}: env {env} not in help: {help}"
        );
        let default = &row[2];
        let literal = default.starts_with('`')
            && default.ends_with('`')
            && default.matches('`').count() == 2
            && !default.contains('<');
        if literal {
            let value = default.trim_matches('`');
            assert!(
                help.contains(&format!("[default: {value}]")),
                "{flag}: documented default {value} differs: {help}"
            );
        }
    }
    assert!(help.contains("[default: 8]"), "{help}");
    assert_eq!(
        operator::Config::new("img").concurrency,
        8,
        "the library's default must match the flag's"
    );
}
