//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` HTTP endpoints.
//!
//! Labels carry only operation names, status codes, error kinds and results: never a secret,
//! and never a bridge name (unbounded cardinality across tenants).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Error kind / write target.
    pub kind: &'static str,
}

/// Seshn request labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeshnLabels {
    /// Operation.
    pub op: &'static str,
    /// HTTP status, `0` when no answer arrived.
    pub code: u16,
}

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconcile passes by result.
    pub reconciles: Family<ResultLabel, Counter>,
    /// Reconcile errors by kind.
    pub errors: Family<KindLabel, Counter>,
    /// Reconcile duration.
    pub duration: Histogram,
    /// Seshn API requests by operation and status.
    pub seshn_requests: Family<SeshnLabels, Counter>,
    /// Kubernetes writes by target (`child`, `status`, `secret`, `event`).
    pub kube_writes: Family<KindLabel, Counter>,
    /// Webhooks left behind at Seshn because cleanup hit its deadline.
    pub webhooks_orphaned: Counter,
    /// 1 while this instance holds the leader lease (or runs without election).
    pub leader: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("seshn_segment_operator");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconciles",
            "Reconcile passes by result",
            reconciles.clone(),
        );
        let errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconcile errors by kind",
            errors.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile pass",
            duration.clone(),
        );
        let seshn_requests = Family::<SeshnLabels, Counter>::default();
        registry.register(
            "seshn_requests",
            "Seshn API requests by operation and HTTP status (0 = no answer)",
            seshn_requests.clone(),
        );
        let kube_writes = Family::<KindLabel, Counter>::default();
        registry.register(
            "kube_writes",
            "Kubernetes writes by target",
            kube_writes.clone(),
        );
        let webhooks_orphaned = Counter::default();
        registry.register(
            "webhooks_orphaned",
            "Webhooks left at Seshn because deletion could not reach Seshn before the deadline",
            webhooks_orphaned.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this instance acts (holds the lease or runs without election)",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            seshn_requests,
            kube_writes,
            webhooks_orphaned,
            leader,
            ready: AtomicBool::new(false),
        }
    }

    /// Counts `n` Kubernetes writes to `kind`.
    pub fn wrote(&self, kind: &'static str, n: usize) {
        if n > 0 {
            self.kube_writes
                .get_or_create(&KindLabel { kind })
                .inc_by(n as u64);
        }
    }

    /// Total Kubernetes writes so far (all targets but Events).
    pub fn total_writes(&self) -> u64 {
        ["child", "status", "secret", "finalizer"]
            .iter()
            .map(|k| self.kube_writes.get_or_create(&KindLabel { kind: k }).get())
            .sum()
    }

    /// Marks the operator ready (started; acting or standing by for the lease).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn readyz(State(m): State<Arc<Metrics>>) -> StatusCode {
    if m.ready.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, m: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(m);
    axum::serve(listener, app).await
}

/// Binds `addr` and serves the endpoints.
pub async fn bind_and_serve(addr: SocketAddr, m: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve(listener, m).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_counters() {
        let m = Metrics::new();
        m.reconciles
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        m.seshn_requests
            .get_or_create(&SeshnLabels {
                op: "create",
                code: 201,
            })
            .inc();
        m.wrote("status", 2);
        m.wrote("child", 0);
        let text = m.encode();
        assert!(text.contains("seshn_segment_operator_reconciles_total{result=\"ok\"} 1"));
        assert!(
            text.contains(
                "seshn_segment_operator_seshn_requests_total{op=\"create\",code=\"201\"} 1"
            )
        );
        assert_eq!(m.total_writes(), 2);
    }
}
