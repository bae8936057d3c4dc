//! The HTTP front: webhook intake, health, readiness and metrics.
//!
//! Order of checks on a webhook, cheapest and most important first: shutting down → 503; body
//! over the limit (declared or while reading) → 413; signature → 401 (nothing unsigned goes any
//! further); `X-Webhook-Event` → 400; body not a JSON object → 400; then the event is spooled
//! (2xx once durable; 503 with `Retry-After` when the spool is full) or, in synchronous mode,
//! delivered (2xx once Segment accepted it). Bad input never produces a 500.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use seshn::signature::{SignatureError, Verifier};

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
    /// False once shutdown began: webhooks get 503, `/readyz` fails.
    pub accepting: AtomicBool,
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
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
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
    let bytes = match Limited::new(body, state.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            metrics.received(None, Outcome::TooLarge);
            return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
        }
        Err(_) => {
            // The client broke the body off (or sent invalid chunking).
            metrics.received(None, Outcome::BadRequest);
            return text(StatusCode::BAD_REQUEST, "could not read body");
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
                unavailable("shutting down")
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

async fn healthz() -> Response {
    text(StatusCode::OK, "ok")
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.accepting.load(Ordering::Acquire) {
        text(StatusCode::OK, "ready")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let spool = match &state.sink {
        Sink::Spooled(spool) => Some((spool.stats(), spool.max_bytes())),
        Sink::Synchronous(_) => None,
    };
    let body = state.metrics.render(spool);
    (
        StatusCode::OK,
        [(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        body,
    )
        .into_response()
}
