//! Shared helpers of the forwarder's integration tests: in-process forwarders on 127.0.0.1:0,
//! signed requests over real HTTP, and the fake Segment sink.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use forwarder::app::{Config, DeliveryMode, Running};
use forwarder::mapping::{MappingConfig, Profile};
use segment::{Destination, Limits, RetryPolicy};

/// The webhook secret every test forwarder accepts.
pub const SECRET: &str = "whsec_test_current";
/// A previous secret, still accepted.
pub const OLD_SECRET: &str = "whsec_test_previous";
/// The write key the fake sink accepts.
pub const WRITE_KEY: &str = "wk_test_123";

/// A configuration for tests: fast retries, a spool in `spool_dir`, delivering to `sink_url`.
pub fn config(sink_url: &str, spool_dir: &Path) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        webhook_secrets: vec![SECRET.to_owned(), OLD_SECRET.to_owned()],
        destination: sink_url.parse::<Destination>().unwrap(),
        write_key: WRITE_KEY.to_owned(),
        mode: DeliveryMode::Spooled,
        spool_dir: spool_dir.to_path_buf(),
        spool_max_bytes: 64 << 20,
        mapping: MappingConfig {
            profile: Profile::Seed,
            bridge_id: "test-bridge".into(),
            identify: true,
            extra_properties: vec![],
        },
        max_body_bytes: 1 << 20,
        max_inflight_body_bytes: 16 << 20,
        body_read_timeout: Duration::from_secs(10),
        dead_letter_max_bytes: 8 << 20,
        shutdown_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(10),
        sync_deadline: Duration::from_secs(20),
        segment_timeout: Duration::from_secs(2),
        limits: Limits::default(),
        retry: RetryPolicy {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
    }
}

/// Starts an in-process forwarder.
pub async fn start(config: Config) -> Running {
    forwarder::app::start(config).await.unwrap()
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    seshn::signature::sign(secret.as_bytes(), body)
}

/// A realistic booking body with a contact (so it maps to a track and an identify). Its personal
/// data (name "Test Person", email "@example.com", phone "+1555010") must never reach a log.
pub fn booking(i: usize) -> String {
    format!(
        r#"{{"id":"bk_{i}","contact":{{"id":"ct_{i}","name":"Test Person {i}","email":"p{i}@example.com","phone":"+1555010{i}"}},"service":{{"id":"svc_1","name":"Yoga"}},"seats":1,"slot":{{"startTime":"2026-01-05T07:30:00Z"}}}}"#
    )
}

/// An HTTP client for the tests (no pooling surprises across restarts).
pub fn client() -> reqwest::Client {
    segment::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// POSTs a signed webhook; returns the status.
pub async fn post_signed(
    client: &reqwest::Client,
    addr: SocketAddr,
    event: &str,
    body: &str,
) -> reqwest::Result<u16> {
    let resp = client
        .post(format!("http://{addr}/api/webhooks/seshn"))
        .header("content-type", "application/json")
        .header("x-webhook-event", event)
        .header("x-webhook-signature", sign(SECRET, body.as_bytes()))
        .body(body.to_owned())
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

/// Reads one metric sample (exact line prefix) from `/metrics`.
pub async fn metric(client: &reqwest::Client, addr: SocketAddr, sample: &str) -> Option<f64> {
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
