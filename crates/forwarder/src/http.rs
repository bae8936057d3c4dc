//! The HTTP front: webhook intake, health, readiness and metrics.
//!
//! Order of checks on a webhook, cheapest and most important first: shutting down → 503; body
//! over the limit (declared) → 413; no room in the budget of body bytes in flight → 503 with
//! `Retry-After`; body over the limit while reading → 413, or not complete within the body read
//! timeout → 408; signature → 401 (nothing unsigned goes any further); `X-Webhook-Event` → 400;
//! body not a JSON object → 400; then the event is spooled (2xx once durable; 503 with
//! `Retry-After` when the spool is full) or, in synchronous mode, delivered (2xx once Segment
//! accepted it). Bad input never produces a 500.
//!
//! Memory: every request reserves its `Content-Length` (or the body limit when it has none) in a
//! byte budget before reading a byte of its body, and holds it until answered, so the bodies
//! buffered at any time never exceed `--max-inflight-body-bytes`, whatever the number of
//! connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use seshn::signature::{SignatureError, Verifier};
use tokio::sync::Semaphore;

use crate::mapping::{Delivery, MapError, Mapper, validate_delivery_id, validate_event_name};
use crate::metrics::{Metrics, Outcome};
use crate::spool::{Spool, SpoolError};
use crate::synchronous::{SyncDelivery, SyncOutcome};

/// Header carrying the HMAC.
pub const SIGNATURE_HEADER: &str = "x-webhook-signature";
/// Header carrying the event name.
pub const EVENT_HEADER: &str = "x-webhook-event";
/// Optional delivery id header, preferred for message ids when present.
pub const DELIVERY_ID_HEADER: &str = "x-webhook-id";
/// Seconds suggested to Seshn in `Retry-After` when we cannot take an event now.
pub const RETRY_AFTER_SECS: &str = "30";

/// Where accepted events go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Durable spool; 2xx once on disk.
    Spooled(Spool),
    /// 2xx once Segment accepted the batch.
    Synchronous(SyncDelivery),
}

/// Shared state of the handlers.
#[derive(Debug)]
pub struct AppState {
    /// Signature check.
    pub verifier: Verifier,
    /// Event mapping.
    pub mapper: Mapper,
    /// Delivery.
    pub sink: Sink,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Body bytes that requests in flight may still reserve (`--max-inflight-body-bytes`).
    pub body_budget: BodyBudget,
    /// How long a request may take to deliver its body (`--body-read-timeout`): 408 after.
    pub body_read_timeout: Duration,
    /// False once shutdown began: `/readyz` fails (webhooks are still taken during
    /// `--shutdown-delay`, so endpoints can be updated before the port closes).
    pub ready: AtomicBool,
    /// False once the shutdown delay is over: webhooks get 503.
    pub accepting: AtomicBool,
}

/// The byte budget of request bodies in flight: a semaphore whose permits are bytes.
#[derive(Debug)]
pub struct BodyBudget {
    permits: Semaphore,
    total: usize,
}

impl BodyBudget {
    /// A budget of `bytes` (at most [`Semaphore::MAX_PERMITS`]).
    pub fn new(bytes: usize) -> Self {
        let total = bytes.min(Semaphore::MAX_PERMITS);
        Self {
            permits: Semaphore::new(total),
            total,
        }
    }

    /// The configured budget.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> usize {
        self.total.saturating_sub(self.permits.available_permits())
    }
}

/// The forwarder's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/webhooks/seshn", post(webhook))
        .route("/hooks/{token}", post(webhook))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(prefixed_webhook)
        .with_state(state)
}

/// Seshn calls `<publicUrl>/hooks/<uid>`, and a public URL may carry a path prefix that the
/// Ingress or gateway in front does not strip (`https://hooks.example.com/acme/hooks/<uid>`), so
/// any path that ends in `/hooks/<token>` is the per-bridge webhook path too.
async fn prefixed_webhook(
    state: State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !is_hook_path(uri.path()) {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(CONTENT_TYPE, "text/plain; charset=utf-8"), (ALLOW, "POST")],
            "method not allowed",
        )
            .into_response();
    }
    webhook(state, headers, body).await
}

/// `…/hooks/<token>` with a non-empty last segment.
fn is_hook_path(path: &str) -> bool {
    let mut segments = path.rsplit('/');
    matches!((segments.next(), segments.next()), (Some(token), Some("hooks")) if !token.is_empty())
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn unavailable(body: &'static str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (CONTENT_TYPE, "text/plain; charset=utf-8"),
            (RETRY_AFTER, RETRY_AFTER_SECS),
        ],
        body,
    )
        .into_response()
}

async fn webhook(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let received_at = SystemTime::now();
    let metrics = &state.metrics;
    if !state.accepting.load(Ordering::Acquire) {
        metrics.received(None, Outcome::Unavailable);
        return unavailable("shutting down");
    }
    // Refuse a declared oversize body before reading a byte of it.
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_body_bytes as u64) {
        metrics.received(None, Outcome::TooLarge);
        return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    }
    // Reserve the body's bytes before reading any (a body without a length may grow to the
    // limit), and hold them until answered: what is buffered stays within the budget.
    let reserve = declared.map_or(state.max_body_bytes, |len| len as usize);
    let Some(_reserved) = u32::try_from(reserve)
        .ok()
        .and_then(|n| state.body_budget.permits.try_acquire_many(n).ok())
    else {
        metrics.received(None, Outcome::Overloaded);
        return unavailable("too many requests in flight");
    };
    // The timer is armed only if the body is not already complete on the first poll, so
    // small bodies (the common case) do not pay for it.
    let read = Limited::new(body, state.max_body_bytes).collect();
    let bytes = match tokio::time::timeout(state.body_read_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            metrics.received(None, Outcome::TooLarge);
            return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
        }
        Ok(Err(_)) => {
            // The client broke the body off (or sent invalid chunking).
            metrics.received(None, Outcome::BadRequest);
            return text(StatusCode::BAD_REQUEST, "could not read body");
        }
        Err(_) => {
            metrics.received(None, Outcome::BodyTimeout);
            return (
                StatusCode::REQUEST_TIMEOUT,
                [
                    (CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (CONNECTION, "close"),
                ],
                "body not received in time",
            )
                .into_response();
        }
    };
    let signature = headers
        .get(SIGNATURE_HEADER)
        .map(axum::http::HeaderValue::as_bytes);
    if let Err(e) = state.verifier.verify(&bytes, signature) {
        metrics.signature_failure(match e {
            SignatureError::Missing => "missing",
            SignatureError::Malformed => "malformed",
            _ => "mismatch",
        });
        metrics.received(None, Outcome::Unauthorized);
        return text(StatusCode::UNAUTHORIZED, "Invalid signature");
    }
    let event = match validate_event_name(
        headers
            .get(EVENT_HEADER)
            .map(axum::http::HeaderValue::as_bytes),
    ) {
        Ok(event) => event,
        Err(e) => {
            metrics.received(None, Outcome::BadRequest);
            return text(
                StatusCode::BAD_REQUEST,
                match e {
                    MapError::EventMissing => "X-Webhook-Event header missing",
                    _ => "X-Webhook-Event header invalid",
                },
            );
        }
    };
    let delivery = Delivery {
        event,
        body: &bytes,
        received_at,
        delivery_id: validate_delivery_id(
            headers
                .get(DELIVERY_ID_HEADER)
                .map(axum::http::HeaderValue::as_bytes),
        ),
    };
    let Ok(mapped) = state.mapper.map(&delivery) else {
        metrics.received(Some(event), Outcome::BadRequest);
        return text(StatusCode::BAD_REQUEST, "body is not a JSON object");
    };
    match &state.sink {
        Sink::Spooled(spool) => match spool.append(&mapped.messages, received_at).await {
            Ok(appended) => {
                if appended.dead_lettered > 0 {
                    metrics.dead_letters("oversize", appended.dead_lettered as u64);
                    tracing::warn!(
                        event,
                        count = appended.dead_lettered,
                        "message over Segment's 32 KB limit dead-lettered"
                    );
                }
                metrics.received(Some(event), Outcome::Accepted);
                text(StatusCode::OK, "OK")
            }
            Err(SpoolError::Full) => {
                metrics.received(Some(event), Outcome::Unavailable);
                unavailable("spool full")
            }
            Err(SpoolError::Closed) => {
                metrics.received(Some(event), Outcome::Unavailable);
                if spool.writer_died() {
                    unavailable("spool unavailable")
                } else {
                    unavailable("shutting down")
                }
            }
            Err(e @ SpoolError::Storage(_)) => {
                tracing::error!(error = %e, "spooling an event failed");
                metrics.received(Some(event), Outcome::Unavailable);
                unavailable("spool unavailable")
            }
        },
        Sink::Synchronous(sync) => match sync.deliver(mapped.messages, received_at).await {
            SyncOutcome::Delivered => {
                metrics.received(Some(event), Outcome::Accepted);
                text(StatusCode::OK, "OK")
            }
            SyncOutcome::Rejected => {
                metrics.received(Some(event), Outcome::Rejected);
                text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Segment refused this event",
                )
            }
            SyncOutcome::Timeout => {
                metrics.received(Some(event), Outcome::Timeout);
                unavailable("Segment did not accept the event in time")
            }
        },
    }
}

/// Whether the spool's writer thread died: every webhook gets 503 then, for good.
fn spool_writer_died(state: &AppState) -> bool {
    matches!(&state.sink, Sink::Spooled(spool) if spool.writer_died())
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    // A dead writer never comes back: let the kubelet restart the container.
    if spool_writer_died(&state) {
        text(StatusCode::SERVICE_UNAVAILABLE, "spool writer stopped")
    } else {
        text(StatusCode::OK, "ok")
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if spool_writer_died(&state) {
        text(StatusCode::SERVICE_UNAVAILABLE, "spool writer stopped")
    } else {
        text(StatusCode::OK, "ready")
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let spool = match &state.sink {
        Sink::Spooled(spool) => Some((spool.stats(), spool.max_bytes())),
        Sink::Synchronous(_) => None,
    };
    let body = state.metrics.render(crate::metrics::Snapshot {
        spool,
        inflight_body_bytes: state.body_budget.in_use() as u64,
    });
    (
        StatusCode::OK,
        [(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::MappingConfig;
    use crate::spool::SpoolOptions;

    /// A writer thread that died (a bug, a panic in the store) makes every webhook a 503: the
    /// probes must say so, or the pod keeps receiving traffic it cannot take.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_spool_writer_fails_readiness_and_health() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&SpoolOptions::small(dir.path())).unwrap();
        let state = Arc::new(AppState {
            verifier: Verifier::new(["s"]).unwrap(),
            mapper: Mapper::new(MappingConfig::default()).unwrap(),
            sink: Sink::Spooled(spool.clone()),
            metrics: Arc::new(Metrics::new()),
            max_body_bytes: 1 << 20,
            body_budget: BodyBudget::new(16 << 20),
            body_read_timeout: Duration::from_secs(10),
            ready: AtomicBool::new(true),
            accepting: AtomicBool::new(true),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, router(state)).into_future());
        segment::install_crypto_provider();
        let http = reqwest::Client::new();
        let get = |path: &'static str| {
            let http = http.clone();
            async move {
                let resp = http
                    .get(format!("http://{addr}{path}"))
                    .send()
                    .await
                    .unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap())
            }
        };
        assert_eq!(get("/readyz").await.0, 200);
        assert_eq!(get("/healthz").await.0, 200);
        spool.crash_writer();
        assert_eq!(get("/readyz").await, (503, "spool writer stopped".into()));
        assert_eq!(get("/healthz").await, (503, "spool writer stopped".into()));
        server.abort();
    }
}
