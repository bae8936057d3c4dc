//! `synchronous` delivery: a webhook is answered 2xx only once Segment accepted the batch that
//! holds its messages, and 503 when that does not happen before the deadline (Seshn retries).
//!
//! Concurrent requests are micro-batched: a collector task takes every request waiting at the
//! time into one batch (within Segment's limits), and up to [`MAX_IN_FLIGHT`] batches are sent
//! concurrently. Nothing is stored; the forwarder stays stateless.
//!
//! When Segment refuses a batch (400, 413), it is bisected by request ([`crate::split`]), so
//! only the requests holding a refused message get 422 and their neighbours still get 200. A
//! configuration error (401, 403, 404, 3xx, ...) is retried until the deadline and answered 503,
//! so Seshn retries the event later instead of it being refused for good.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use segment::{Client, DeliveryError, Limits, RawMessage, RetryPolicy, send_with_retries_observed};
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::split::{Bisection, Fate};

/// Batches sent at the same time.
pub const MAX_IN_FLIGHT: usize = 4;
/// Requests that may wait for the collector.
const QUEUE: usize = 4096;

/// The result for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Segment accepted it: answer 2xx.
    Delivered,
    /// Segment refused it (400, 413), or a message is over 32 KB: retrying cannot help.
    Rejected,
    /// Not accepted before the deadline (or shutting down): answer 503.
    Timeout,
}

struct Job {
    messages: Vec<RawMessage>,
    received_at: SystemTime,
    deadline: Instant,
    reply: oneshot::Sender<SyncOutcome>,
}

/// Handle used by the HTTP layer.
#[derive(Debug, Clone)]
pub struct SyncDelivery {
    tx: mpsc::Sender<Job>,
    deadline: Duration,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl SyncDelivery {
    /// Starts the collector task.
    pub fn start(
        client: Client,
        limits: Limits,
        retry: RetryPolicy,
        deadline: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(collect(client, limits, retry, rx, Arc::clone(&metrics)));
        Self {
            tx,
            deadline,
            limits,
            metrics,
        }
    }

    /// Delivers the messages of one request; waits at most the deadline.
    pub async fn deliver(&self, messages: Vec<String>, received_at: SystemTime) -> SyncOutcome {
        let deadline = Instant::now() + self.deadline;
        let mut raws = Vec::with_capacity(messages.len());
        for message in messages {
            if message.len() > self.limits.max_message_bytes {
                self.metrics.dead_letters("oversize", 1);
                return SyncOutcome::Rejected;
            }
            match RawValue::from_string(message) {
                Ok(raw) => raws.push(raw),
                Err(_) => return SyncOutcome::Rejected,
            }
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            messages: raws,
            received_at,
            deadline,
            reply,
        };
        let wait = async {
            if self.tx.send(job).await.is_err() {
                return SyncOutcome::Timeout;
            }
            answer.await.unwrap_or(SyncOutcome::Timeout)
        };
        tokio::time::timeout_at(deadline, wait)
            .await
            .unwrap_or(SyncOutcome::Timeout)
    }
}

async fn collect(
    client: Client,
    limits: Limits,
    retry: RetryPolicy,
    mut rx: mpsc::Receiver<Job>,
    metrics: Arc<Metrics>,
) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        // Wait for a sending slot first: requests arriving meanwhile join this batch.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        let mut count = jobs[0].messages.len();
        let mut bytes: usize = jobs[0].messages.iter().map(|m| m.get().len() + 1).sum();
        while let Ok(job) = rx.try_recv() {
            let job_bytes: usize = job.messages.iter().map(|m| m.get().len() + 1).sum();
            // Leave room for the envelope (write key, sentAt) under the byte limit.
            if count + job.messages.len() > limits.max_batch_messages
                || bytes + job_bytes + 1024 > limits.max_batch_bytes
            {
                carry = Some(job);
                break;
            }
            count += job.messages.len();
            bytes += job_bytes;
            jobs.push(job);
        }
        let client = client.clone();
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            send_jobs(&client, &retry, jobs, &metrics).await;
            drop(permit);
        });
    }
}

/// Sends the jobs as one batch; when Segment refuses it, the batch is bisected by job so that
/// one bad event does not fail its neighbours.
async fn send_jobs(client: &Client, retry: &RetryPolicy, jobs: Vec<Job>, metrics: &Metrics) {
    let mut bisection = Bisection::new(jobs.len());
    while let Some(range) = bisection.next_range() {
        let result = send_batch(client, retry, &jobs[range.clone()], metrics).await;
        bisection.record(range, &result);
    }
    let isolated = bisection.finish();
    let refused: u64 = isolated
        .refused()
        .map(|i| jobs[i].messages.len() as u64)
        .sum();
    if refused > 0 {
        metrics.dead_letters("rejected", refused);
    }
    for (job, fate) in jobs.into_iter().zip(isolated.fates) {
        let outcome = match fate {
            Fate::Delivered => SyncOutcome::Delivered,
            Fate::Refused => SyncOutcome::Rejected,
            Fate::Undelivered => SyncOutcome::Timeout,
        };
        // The request may have timed out already; nothing to do then.
        let _ = job.reply.send(outcome);
    }
}

/// Sends the messages of `jobs` as one batch, until accepted, refused, or the earliest of their
/// deadlines.
async fn send_batch(
    client: &Client,
    retry: &RetryPolicy,
    jobs: &[Job],
    metrics: &Metrics,
) -> Result<u32, DeliveryError> {
    let deadline = jobs.iter().map(|j| j.deadline).min();
    let batch: Vec<RawMessage> = jobs
        .iter()
        .flat_map(|j| j.messages.iter().cloned())
        .collect();
    let observe = |outcome: Result<(), &segment::SendError>| metrics.attempt(outcome);
    let result = send_with_retries_observed(client, &batch, retry, deadline, observe).await;
    match &result {
        Ok(attempts) => {
            metrics.batch("accepted");
            metrics.failed_attempts(u64::from(attempts.saturating_sub(1)));
            let now = SystemTime::now();
            metrics.delivered(jobs.iter().flat_map(|j| {
                let age = now.duration_since(j.received_at).unwrap_or_default();
                std::iter::repeat_n(age, j.messages.len())
            }));
        }
        Err(DeliveryError::Rejected {
            status, attempts, ..
        }) => {
            metrics.batch("rejected");
            metrics.failed_attempts(u64::from(attempts.saturating_sub(1)));
            tracing::warn!(
                status,
                messages = batch.len(),
                requests = jobs.len(),
                "Segment refused a batch"
            );
        }
        Err(DeliveryError::DeadlineExceeded { attempts, .. }) => {
            metrics.batch("timeout");
            metrics.failed_attempts(u64::from(*attempts));
        }
    }
    result
}
