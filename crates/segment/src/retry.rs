//! Backoff policy and the retry loop around [`Client::send`].

use std::time::Duration;

use rand::Rng as _;
use tokio::time::Instant;

use crate::batch::RawMessage;
use crate::client::{Client, SendError};

/// Exponential backoff with equal jitter: attempt `n` waits between half and all of
/// `min(max, base * 2^(n-1))`, so retries of many batches spread out but never collapse to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff of the first retry (before jitter).
    pub base: Duration,
    /// Ceiling of the backoff (before jitter); a server's `Retry-After` may exceed it.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// 0.5 s base, 60 s cap: analytics-node's classes, retrying for hours rather than seconds.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before the next attempt, after `attempt` failed attempts (1 = the first failed).
    ///
    /// A server-given `retry_after` wins: the wait is at least that long, plus up to 10 % (at
    /// most 1 s) of jitter so that many senders told the same instant do not return in lockstep.
    /// A zero `retry_after` falls back to the normal backoff, to avoid a hot loop.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after.filter(|w| !w.is_zero()) {
            return wait.saturating_add(jitter((wait / 10).min(Duration::from_secs(1))));
        }
        let exponent = attempt.saturating_sub(1).min(31);
        let ceiling = self
            .base
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.max)
            .min(self.max);
        let half = ceiling / 2;
        half.saturating_add(jitter(ceiling.saturating_sub(half)))
    }
}

/// A uniformly random duration in `0..=span` (nanosecond resolution).
fn jitter(span: Duration) -> Duration {
    let nanos = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

/// Why [`send_with_retries`] gave up. The text never holds the write key or message content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The destination refused the batch's content (400, 413); retrying it as is cannot help.
    #[error("batch rejected with HTTP {status} after {attempts} attempt(s): {reason}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// What happened, for logs.
        reason: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The deadline arrived (or the next wait would pass it) before the batch was accepted.
    #[error("delivery deadline passed after {attempts} attempt(s); last failure: {last}")]
    DeadlineExceeded {
        /// Attempts made (one cut short by the deadline included).
        attempts: u32,
        /// The last failure.
        last: SendError,
    },
}

impl DeliveryError {
    /// Attempts made before giving up.
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Rejected { attempts, .. } | Self::DeadlineExceeded { attempts, .. } => *attempts,
        }
    }
}

/// Sends `messages` until they are accepted, rejected, or `deadline` (None = retry forever).
///
/// Returns the number of attempts on success. With a deadline, an attempt in flight is cut off
/// at the deadline, and a retry whose wait would end after it is not started. Transient failures
/// ([`SendError::Retryable`]) and configuration problems ([`SendError::Blocked`]) are both
/// retried with the policy's backoff; only [`SendError::Rejected`] ends the loop early.
pub async fn send_with_retries(
    client: &Client,
    messages: &[RawMessage],
    policy: &RetryPolicy,
    deadline: Option<Instant>,
) -> Result<u32, DeliveryError> {
    send_with_retries_observed(client, messages, policy, deadline, |_| {}).await
}

/// [`send_with_retries`], calling `observe` with the outcome of every attempt that got an
/// answer (or a network error), e.g. to raise a "delivery blocked" gauge while the write key
/// is wrong. Attempts cut short by the deadline are not reported.
pub async fn send_with_retries_observed(
    client: &Client,
    messages: &[RawMessage],
    policy: &RetryPolicy,
    deadline: Option<Instant>,
    mut observe: impl FnMut(Result<(), &SendError>),
) -> Result<u32, DeliveryError> {
    let mut attempts: u32 = 0;
    loop {
        attempts = attempts.saturating_add(1);
        let outcome = match deadline {
            Some(at) => match tokio::time::timeout_at(at, client.send(messages)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    return Err(DeliveryError::DeadlineExceeded {
                        attempts,
                        last: SendError::Retryable {
                            status: None,
                            retry_after: None,
                            reason: "deadline reached during the attempt".to_owned(),
                        },
                    });
                }
            },
            None => client.send(messages).await,
        };
        observe(outcome.as_ref().copied());
        let failure = match outcome {
            Ok(()) => return Ok(attempts),
            Err(SendError::Rejected { status, reason }) => {
                return Err(DeliveryError::Rejected {
                    status,
                    reason,
                    attempts,
                });
            }
            Err(retryable) => retryable,
        };
        let wait = policy.delay(attempts, failure.retry_after());
        if let Some(at) = deadline
            && Instant::now()
                .checked_add(wait)
                .is_none_or(|resume| resume >= at)
        {
            return Err(DeliveryError::DeadlineExceeded {
                attempts,
                last: failure,
            });
        }
        if failure.is_blocked() {
            // Not Segment's trouble but ours: say so, and what to check (no secret in it).
            tracing::warn!(
                attempt = attempts,
                status = failure.status(),
                wait_ms = wait.as_millis() as u64,
                error = %failure,
                "Segment refused the request: delivery is blocked until the configuration is \
                 fixed; events are kept and retried"
            );
        } else {
            tracing::warn!(
                attempt = attempts,
                status = failure.status(),
                wait_ms = wait.as_millis() as u64,
                error = %failure,
                "Segment batch delivery failed; retrying"
            );
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_equal_jitter_bounds_and_caps() {
        let p = RetryPolicy::default();
        for _ in 0..200 {
            let d1 = p.delay(1, None);
            assert!(
                d1 >= Duration::from_millis(250) && d1 <= Duration::from_millis(500),
                "{d1:?}"
            );
            let d3 = p.delay(3, None);
            assert!(
                d3 >= Duration::from_secs(1) && d3 <= Duration::from_secs(2),
                "{d3:?}"
            );
            for attempt in [8, 20, 32, 1000, u32::MAX] {
                let d = p.delay(attempt, None);
                assert!(
                    d >= Duration::from_secs(30) && d <= Duration::from_secs(60),
                    "{attempt}: {d:?}"
                );
            }
            // attempt 0 is treated as the first retry.
            assert!(p.delay(0, None) <= Duration::from_millis(500));
        }
    }

    #[test]
    fn jitter_actually_varies() {
        let p = RetryPolicy::default();
        let samples: std::collections::HashSet<Duration> =
            (0..50).map(|_| p.delay(5, None)).collect();
        assert!(samples.len() > 10, "{samples:?}");
    }

    #[test]
    fn retry_after_is_honoured_as_a_floor() {
        let p = RetryPolicy::default();
        for _ in 0..200 {
            let d = p.delay(1, Some(Duration::from_secs(3)));
            assert!(
                d >= Duration::from_secs(3) && d <= Duration::from_millis(3300),
                "{d:?}"
            );
            // Longer than the backoff cap: still honoured, jitter at most 1 s.
            let d = p.delay(50, Some(Duration::from_secs(120)));
            assert!(
                d >= Duration::from_secs(120) && d <= Duration::from_secs(121),
                "{d:?}"
            );
            // Zero means "use the backoff".
            let d = p.delay(1, Some(Duration::ZERO));
            assert!(
                d >= Duration::from_millis(250) && d <= Duration::from_millis(500),
                "{d:?}"
            );
        }
    }

    #[test]
    fn tiny_policies_do_not_overflow() {
        let p = RetryPolicy {
            base: Duration::from_secs(u64::MAX / 4),
            max: Duration::from_secs(u64::MAX / 2),
        };
        assert!(p.delay(40, None) >= p.max / 2);
        let z = RetryPolicy {
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(z.delay(3, None), Duration::ZERO);
    }
}
