//! Prometheus metrics of the forwarder (`GET /metrics`, Prometheus text format 0.0.4).
//!
//! Labels never carry secrets or payload data: the event name label is taken only from
//! verified requests, and its cardinality is capped.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
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
    ready: Gauge,
    extra_events: Mutex<HashSet<String>>,
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
            "Batches sent to Segment by final result (accepted, rejected, abandoned at shutdown)",
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

    /// Renders the text exposition, refreshing the spool gauges first.
    pub fn render(&self, spool: Option<(&SpoolStats, u64)>) -> String {
        if let Some((stats, max_bytes)) = spool {
            let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.spool_depth
                .set(clamp(stats.depth.load(Ordering::Relaxed)));
            self.spool_bytes
                .set(clamp(stats.bytes.load(Ordering::Relaxed)));
            self.spool_max_bytes.set(clamp(max_bytes));
            let commits = stats.commits.load(Ordering::Relaxed);
            let seen = self.spool_commits.get();
            if commits > seen {
                self.spool_commits.inc_by(commits - seen);
            }
        }
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
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
        let text = m.render(None);
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
}
