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
