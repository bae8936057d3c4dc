//! Prometheus metrics of the forwarder (`GET /metrics`, Prometheus text format 0.0.4).
//!
//! Labels never carry secrets or payload data: the event name label is taken only from
//! verified requests, and its cardinality is capped.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::mapping::table::{OTHER_KNOWN_EVENTS, SUBSCRIBED_EVENTS};
use crate::spool::SpoolStats;

/// Distinct unknown event names given their own label before they collapse into `other`.
const MAX_EXTRA_EVENT_LABELS: usize = 64;

/// Outcome of one webhook request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 2xx (spooled, or delivered in synchronous mode).
    Accepted,
    /// 401: missing or bad signature.
    Unauthorized,
    /// 400: missing/invalid event header or body not a JSON object.
    BadRequest,
    /// 413: body over the limit.
    TooLarge,
    /// 503: spool full, shutting down, or a storage failure.
    Unavailable,
    /// 503 in synchronous mode: Segment did not accept it before the deadline.
    Timeout,
    /// 422 in synchronous mode: Segment refused it, or it is over 32 KB.
    Rejected,
    /// 503: the budget of body bytes in flight (`--max-inflight-body-bytes`) is used up.
    Overloaded,
    /// 408: the body did not arrive within `--body-read-timeout`.
    BodyTimeout,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Unauthorized => "unauthorized",
            Self::BadRequest => "bad_request",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Rejected => "rejected",
            Self::Overloaded => "overloaded",
            Self::BodyTimeout => "body_timeout",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceivedLabels {
    event: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// All forwarder metrics. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    received: Family<ReceivedLabels, Counter>,
    signature_failures: Family<ReasonLabels, Counter>,
    batches: Family<ResultLabels, Counter>,
    dead_letters: Family<ReasonLabels, Counter>,
    messages_delivered: Counter,
    delivery_attempts_failed: Counter,
    delivery_latency: Histogram,
    spool_depth: Gauge,
    spool_bytes: Gauge,
    spool_max_bytes: Gauge,
    spool_commits: Counter,
    dead_letter_count: Gauge,
    dead_letter_bytes: Gauge,
    dead_letters_dropped: Counter,
    delivery_blocked: Gauge,
    delivery_blocked_status: Gauge,
    blocked: AtomicBool,
    inflight_body_bytes: Gauge,
    ready: Gauge,
    extra_events: Mutex<HashSet<String>>,
}

/// Values read at scrape time from the spool and the HTTP front (nothing on the hot path).
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot<'a> {
    /// The spool's counters and its bound (spooled mode).
    pub spool: Option<(&'a SpoolStats, u64)>,
    /// Body bytes reserved by requests in flight.
    pub inflight_body_bytes: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `seshn_forwarder_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("seshn_forwarder");
        let received = Family::<ReceivedLabels, Counter>::default();
        registry.register(
            "webhooks_received",
            "Webhook requests by event name (\"unverified\" before the signature check) and outcome",
            received.clone(),
        );
        let signature_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "signature_failures",
            "Requests refused with 401, by reason (missing, malformed, mismatch)",
            signature_failures.clone(),
        );
        let batches = Family::<ResultLabels, Counter>::default();
        registry.register(
            "batches",
            "Batch requests to Segment by result (accepted, rejected, blocked, abandoned at \
             shutdown, timeout in synchronous mode)",
            batches.clone(),
        );
        let dead_letters = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Messages never sent: oversize (over 32 KB) or rejected by Segment",
            dead_letters.clone(),
        );
        let messages_delivered = Counter::default();
        registry.register(
            "messages_delivered",
            "Segment messages accepted by the destination",
            messages_delivered.clone(),
        );
        let delivery_attempts_failed = Counter::default();
        registry.register(
            "delivery_attempts_failed",
            "Failed attempts that were retried (429, 5xx, timeouts, network errors)",
            delivery_attempts_failed.clone(),
        );
        let delivery_latency = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        registry.register(
            "delivery_latency_seconds",
            "Time from receiving a webhook to Segment accepting its messages",
            delivery_latency.clone(),
        );
        let spool_depth = Gauge::default();
        registry.register(
            "spool_depth",
            "Messages waiting in the spool",
            spool_depth.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register(
            "spool_bytes",
            "Bytes of messages waiting in the spool (counted against --spool-max-bytes)",
            spool_bytes.clone(),
        );
        let spool_max_bytes = Gauge::default();
        registry.register(
            "spool_max_bytes",
            "The configured spool bound",
            spool_max_bytes.clone(),
        );
        let spool_commits = Counter::default();
        registry.register(
            "spool_commits",
            "Durable spool commits (each shared by every request waiting at the time)",
            spool_commits.clone(),
        );
        let dead_letter_count = Gauge::default();
        registry.register(
            "dead_letter_messages",
            "Messages kept in the dead-letter table",
            dead_letter_count.clone(),
        );
        let dead_letter_bytes = Gauge::default();
        registry.register(
            "dead_letter_bytes",
            "Bytes of the dead-letter table (counted against --dead-letter-max-bytes)",
            dead_letter_bytes.clone(),
        );
        let dead_letters_dropped = Counter::default();
        registry.register(
            "dead_letters_dropped",
            "Oldest dead letters deleted to keep the table within --dead-letter-max-bytes",
            dead_letters_dropped.clone(),
        );
        let delivery_blocked = Gauge::default();
        registry.register(
            "delivery_blocked",
            "1 while Segment answers with a configuration error (401, 403, 404, 3xx, 501, 505, \
             other 4xx): events are kept and retried until the write key or endpoint is fixed",
            delivery_blocked.clone(),
        );
        let delivery_blocked_status = Gauge::default();
        registry.register(
            "delivery_blocked_status",
            "The HTTP status that blocks delivery, 0 when not blocked",
            delivery_blocked_status.clone(),
        );
        let inflight_body_bytes = Gauge::default();
        registry.register(
            "inflight_body_bytes",
            "Webhook body bytes reserved by requests in flight (bounded by \
             --max-inflight-body-bytes)",
            inflight_body_bytes.clone(),
        );
        let ready = Gauge::default();
        registry.register("ready", "1 while /readyz answers 200", ready.clone());
        Self {
            registry,
            received,
            signature_failures,
            batches,
            dead_letters,
            messages_delivered,
            delivery_attempts_failed,
            delivery_latency,
            spool_depth,
            spool_bytes,
            spool_max_bytes,
            spool_commits,
            dead_letter_count,
            dead_letter_bytes,
            dead_letters_dropped,
            delivery_blocked,
            delivery_blocked_status,
            blocked: AtomicBool::new(false),
            inflight_body_bytes,
            ready,
            extra_events: Mutex::new(HashSet::new()),
        }
    }

    /// Counts a request. `event` is `None` before the signature was verified.
    pub fn received(&self, event: Option<&str>, outcome: Outcome) {
        let event = match event {
            None => "unverified".to_owned(),
            Some(name) => self.event_label(name),
        };
        self.received
            .get_or_create(&ReceivedLabels {
                event,
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The label for an event name: known names as is, up to 64 unknown ones, then `other`.
    fn event_label(&self, name: &str) -> String {
        if SUBSCRIBED_EVENTS.contains(&name) || OTHER_KNOWN_EVENTS.contains(&name) {
            return name.to_owned();
        }
        let mut extra = self
            .extra_events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if extra.contains(name) {
            return name.to_owned();
        }
        if extra.len() < MAX_EXTRA_EVENT_LABELS {
            extra.insert(name.to_owned());
            return name.to_owned();
        }
        "other".to_owned()
    }

    /// Counts a 401 by reason.
    pub fn signature_failure(&self, reason: &'static str) {
        self.signature_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a batch by final result.
    pub fn batch(&self, result: &'static str) {
        self.batches.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts dead-lettered messages.
    pub fn dead_letters(&self, reason: &'static str, count: u64) {
        self.dead_letters
            .get_or_create(&ReasonLabels { reason })
            .inc_by(count);
    }

    /// Records delivered messages and their latencies.
    pub fn delivered(&self, latencies: impl IntoIterator<Item = Duration>) {
        let mut count = 0;
        for latency in latencies {
            self.delivery_latency.observe(latency.as_secs_f64());
            count += 1;
        }
        self.messages_delivered.inc_by(count);
    }

    /// Counts retried attempts.
    pub fn failed_attempts(&self, count: u64) {
        self.delivery_attempts_failed.inc_by(count);
    }

    /// Sets the readiness gauge.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Records the outcome of one delivery attempt: raises `delivery_blocked` while Segment
    /// answers with a configuration error and lowers it on any other answer, logging each
    /// change once (status only: no secret, no content).
    pub fn attempt(&self, outcome: Result<(), &segment::SendError>) {
        match outcome {
            Err(e) if e.is_blocked() => {
                self.batch("blocked");
                let status = e.status().unwrap_or_default();
                self.delivery_blocked_status.set(i64::from(status));
                self.delivery_blocked.set(1);
                if !self.blocked.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        status,
                        error = %e,
                        "DELIVERY BLOCKED: Segment refuses our requests; events stay in the \
                         spool (or get 503 in synchronous mode) until the write key or \
                         endpoint is fixed"
                    );
                }
            }
            _ => {
                if self.blocked.swap(false, Ordering::AcqRel) {
                    self.delivery_blocked.set(0);
                    self.delivery_blocked_status.set(0);
                    tracing::warn!("delivery unblocked: Segment answers normally again");
                }
            }
        }
    }

    /// Whether the last attempt was answered with a configuration error.
    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }

    /// Renders the text exposition, refreshing the scrape-time gauges first.
    pub fn render(&self, snapshot: Snapshot<'_>) -> String {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Some((stats, max_bytes)) = snapshot.spool {
            self.spool_depth
                .set(clamp(stats.depth.load(Ordering::Relaxed)));
            self.spool_bytes
                .set(clamp(stats.bytes.load(Ordering::Relaxed)));
            self.spool_max_bytes.set(clamp(max_bytes));
            self.dead_letter_count
                .set(clamp(stats.dead_letters.load(Ordering::Relaxed)));
            self.dead_letter_bytes
                .set(clamp(stats.dead_letter_bytes.load(Ordering::Relaxed)));
            catch_up(&self.spool_commits, stats.commits.load(Ordering::Relaxed));
            catch_up(
                &self.dead_letters_dropped,
                stats.dead_letters_dropped.load(Ordering::Relaxed),
            );
        }
        self.inflight_body_bytes
            .set(clamp(snapshot.inflight_body_bytes));
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Advances a counter mirroring a monotonic total kept elsewhere.
fn catch_up(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_caps_event_labels() {
        let m = Metrics::new();
        m.received(Some("booking.created"), Outcome::Accepted);
        m.received(None, Outcome::Unauthorized);
        for i in 0..100 {
            m.received(Some(&format!("custom.{i}")), Outcome::Accepted);
        }
        m.signature_failure("mismatch");
        let text = m.render(Snapshot::default());
        assert!(text.contains(
            r#"seshn_forwarder_webhooks_received_total{event="booking.created",outcome="accepted"} 1"#
        ));
        assert!(text.contains(
            r#"seshn_forwarder_webhooks_received_total{event="unverified",outcome="unauthorized"} 1"#
        ));
        assert!(text.contains(
            r#"seshn_forwarder_webhooks_received_total{event="other",outcome="accepted"} 36"#
        ));
        assert!(text.contains(r#"seshn_forwarder_signature_failures_total{reason="mismatch"} 1"#));
    }

    #[test]
    fn blocked_gauge_follows_the_last_answer() {
        let m = Metrics::new();
        let blocked = segment::SendError::Blocked {
            status: 401,
            reason: "HTTP 401 Unauthorized".into(),
        };
        let transient = segment::SendError::Retryable {
            status: Some(503),
            retry_after: None,
            reason: "HTTP 503".into(),
        };
        let sample = |m: &Metrics, name: &str| -> Option<f64> {
            m.render(Snapshot::default())
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        };
        m.attempt(Err(&blocked));
        m.attempt(Err(&blocked));
        assert!(m.is_blocked());
        assert_eq!(sample(&m, "seshn_forwarder_delivery_blocked "), Some(1.0));
        assert_eq!(
            sample(&m, "seshn_forwarder_delivery_blocked_status "),
            Some(401.0)
        );
        assert_eq!(
            sample(&m, r#"seshn_forwarder_batches_total{result="blocked"}"#),
            Some(2.0)
        );
        // Any other answer (even a transient failure) means the configuration works again.
        m.attempt(Err(&transient));
        assert!(!m.is_blocked());
        assert_eq!(sample(&m, "seshn_forwarder_delivery_blocked "), Some(0.0));
        assert_eq!(
            sample(&m, "seshn_forwarder_delivery_blocked_status "),
            Some(0.0)
        );
        m.attempt(Err(&blocked));
        m.attempt(Ok(()));
        assert!(!m.is_blocked());
    }
}
