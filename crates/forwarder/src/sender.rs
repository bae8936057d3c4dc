//! Drains the spool to Segment: in key order, in size-aware batches, retrying until accepted.
//!
//! One batch is in flight at a time, so messages reach Segment in arrival order. While a batch is
//! out, new messages pile up in the spool and form the next batch, so batches grow with the load.
//! A delivered batch is removed from the spool. A batch Segment refuses (400, 413) is bisected
//! until the refused messages stand alone ([`crate::split`]); only those, and any message too
//! large to ever send or unreadable, go to the dead letters. A configuration error (401, 403,
//! 404, 3xx, ...) dead-letters nothing: the batch is retried with capped backoff and
//! `seshn_forwarder_delivery_blocked` is 1 until the write key or endpoint is fixed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use segment::{
    Client, DeliveryError, Limits, PushError, RawMessage, RetryPolicy, send_with_retries_observed,
};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::split::{Bisection, Fate};
use crate::spool::{DeadReason, Pos, Spool, Spooled, dead_record};

/// How long the sender sleeps when idle before looking at the spool again (a safety net: it is
/// normally woken by the spool after each commit).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// A batch smaller than this waits [`LINGER`] for more messages before it is sent: under load
/// this turns many small requests to Segment into few large ones (less CPU per event), at the
/// cost of a few milliseconds of delivery latency. Webhook answers are not delayed by it.
const LINGER_BELOW: usize = 256;
/// See [`LINGER_BELOW`].
const LINGER: Duration = Duration::from_millis(10);
/// How long to wait before retrying after the spool itself failed to read.
const STORAGE_RETRY: Duration = Duration::from_millis(500);

/// Sender settings.
#[derive(Debug, Clone, Copy)]
pub struct SenderConfig {
    /// Segment's limits.
    pub limits: Limits,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
}

/// Shutdown signal for the sender: `None` = run forever; `Some(deadline)` = drain what is in
/// the spool, give up at the deadline, then return.
pub type DrainSignal = watch::Receiver<Option<Instant>>;

/// How the sender ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The spool was empty.
    Empty,
    /// The deadline passed; the rest stays on disk for the next start.
    DeadlineReached,
}

/// What the sender keeps of a spooled message while its JSON travels in a batch.
#[derive(Debug, Clone, Copy)]
struct Meta {
    key: u64,
    index: u32,
    received_micros: u64,
    last_in_entry: bool,
    entry_messages: u64,
    entry_cost: u64,
}

impl Meta {
    fn age(&self, now: SystemTime) -> Duration {
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        let age = now.saturating_sub(u128::from(self.received_micros));
        Duration::from_micros(u64::try_from(age).unwrap_or(u64::MAX))
    }
}

/// A message read from the spool, parsed once (`None`: not valid JSON, dead-letter it).
struct Pending {
    meta: Meta,
    raw: Option<RawMessage>,
}

impl From<Spooled> for Pending {
    fn from(item: Spooled) -> Self {
        let meta = Meta {
            key: item.pos.key,
            index: item.pos.index,
            received_micros: item.received_micros,
            last_in_entry: item.last_in_entry,
            entry_messages: item.entry_messages,
            entry_cost: item.entry_cost,
        };
        Self {
            meta,
            raw: RawValue::from_string(item.json).ok(),
        }
    }
}

/// Runs until drained (see [`DrainSignal`]).
pub async fn run(
    spool: Spool,
    client: Client,
    config: SenderConfig,
    metrics: Arc<Metrics>,
    mut drain: DrainSignal,
) -> Drained {
    let notify = spool.notifier();
    let mut buffer: VecDeque<Pending> = VecDeque::new();
    let mut cursor: Option<Pos> = None;
    let mut builder = client.batch_builder(config.limits);
    loop {
        let deadline = *drain.borrow_and_update();
        if let Some(at) = deadline
            && Instant::now() >= at
        {
            return Drained::DeadlineReached;
        }
        if buffer.is_empty() {
            // Register interest before reading, so a commit between the read and the wait
            // still wakes us.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match read_more(&spool, cursor, config.limits).await {
                Ok(items) => {
                    if let Some(last) = items.last() {
                        cursor = Some(last.pos);
                    }
                    buffer.extend(items.into_iter().map(Pending::from));
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the spool failed; retrying");
                    tokio::time::sleep(STORAGE_RETRY).await;
                    continue;
                }
            }
            if !buffer.is_empty() && buffer.len() < LINGER_BELOW && deadline.is_none() {
                tokio::time::sleep(LINGER).await;
                if let Ok(items) = read_more(&spool, cursor, config.limits).await {
                    if let Some(last) = items.last() {
                        cursor = Some(last.pos);
                    }
                    buffer.extend(items.into_iter().map(Pending::from));
                }
            }
            if buffer.is_empty() {
                if deadline.is_some() {
                    return Drained::Empty;
                }
                tokio::select! {
                    () = &mut notified => {}
                    _ = drain.changed() => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
        }

        // Fill one batch from the buffer. `processed` lists, in spool order, every message that
        // leaves the buffer this round (sent or dead-lettered): it tells which entries are done.
        let mut taken: Vec<Meta> = Vec::new();
        let mut processed: Vec<Meta> = Vec::new();
        let mut oversize: Vec<Vec<u8>> = Vec::new();
        let mut corrupt: Vec<Meta> = Vec::new();
        while let Some(Pending { meta, raw }) = buffer.pop_front() {
            let Some(raw) = raw else {
                corrupt.push(meta);
                processed.push(meta);
                continue;
            };
            match builder.try_push(raw) {
                Ok(()) => {
                    taken.push(meta);
                    processed.push(meta);
                }
                Err(PushError::Oversize(raw)) => {
                    oversize.push(dead_record(meta.received_micros, raw.get().as_bytes()));
                    processed.push(meta);
                }
                Err(PushError::Full(raw)) => {
                    buffer.push_front(Pending {
                        meta,
                        raw: Some(raw),
                    });
                    break;
                }
            }
        }
        if !oversize.is_empty() {
            metrics.dead_letters(DeadReason::Oversize.as_str(), oversize.len() as u64);
            tracing::warn!(
                count = oversize.len(),
                "dead-lettered messages over Segment's 32 KB limit"
            );
            spool.dead_letter(oversize, DeadReason::Oversize);
        }
        if !corrupt.is_empty() {
            metrics.dead_letters(DeadReason::Corrupt.as_str(), corrupt.len() as u64);
            tracing::error!(
                count = corrupt.len(),
                "dead-lettered spool records that do not read back as JSON"
            );
            let records = raw_records(&spool, &corrupt).await;
            spool.dead_letter(records, DeadReason::Corrupt);
        }
        let batch = builder.take();
        if batch.is_empty() {
            finish(&spool, &processed);
            continue;
        }
        let mut bisection = Bisection::new(batch.len());
        while let Some(range) = bisection.next_range() {
            let result = deliver(
                &client,
                &batch[range.clone()],
                &config.retry,
                &mut drain,
                &metrics,
            )
            .await;
            let (result_label, attempts) = match &result {
                Ok(attempts) => ("accepted", *attempts),
                Err(e @ DeliveryError::Rejected { .. }) => ("rejected", e.attempts()),
                Err(e @ DeliveryError::DeadlineExceeded { .. }) => ("abandoned", e.attempts()),
            };
            metrics.batch(result_label);
            metrics.failed_attempts(u64::from(attempts.saturating_sub(1)));
            bisection.record(range, &result);
        }
        let isolated = bisection.finish();
        let now = SystemTime::now();
        metrics.delivered(
            taken
                .iter()
                .zip(&isolated.fates)
                .filter(|(_, fate)| **fate == Fate::Delivered)
                .map(|(meta, _)| meta.age(now)),
        );
        if isolated.deadline.is_some() {
            tracing::warn!(
                messages = taken.len(),
                "shutdown deadline reached; undelivered messages stay in the spool"
            );
            return Drained::DeadlineReached;
        }
        let refused: Vec<Vec<u8>> = isolated
            .refused()
            .map(|i| dead_record(taken[i].received_micros, batch[i].get().as_bytes()))
            .collect();
        if !refused.is_empty() {
            metrics.dead_letters(DeadReason::Rejected.as_str(), refused.len() as u64);
            tracing::error!(
                refused = refused.len(),
                delivered = batch.len() - refused.len(),
                "Segment refused messages (400/413); only those are dead-lettered"
            );
            spool.dead_letter(refused, DeadReason::Rejected);
        }
        finish(&spool, &processed);
    }
}

/// Sends one batch: retries forever until a drain deadline is set, then until that deadline.
/// Every attempt's outcome feeds the "delivery blocked" gauge.
///
/// When shutdown begins while the batch is out, the attempt in flight is not cut short and
/// restarted: its bytes may already have been written (a file or stdout write cannot be
/// recalled, Segment may have stored the request), and a restart would send the batch twice.
/// It goes on, bounded by the deadline from then on.
async fn deliver(
    client: &Client,
    batch: &[RawMessage],
    retry: &RetryPolicy,
    drain: &mut DrainSignal,
    metrics: &Metrics,
) -> Result<u32, DeliveryError> {
    // Counted for the deadline's error (an atomic only so the future stays `Send`).
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let observe = |outcome: Result<(), &segment::SendError>| {
        attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics.attempt(outcome);
    };
    let deadline = *drain.borrow_and_update();
    if deadline.is_some() {
        return send_with_retries_observed(client, batch, retry, deadline, observe).await;
    }
    let send = send_with_retries_observed(client, batch, retry, None, observe);
    tokio::pin!(send);
    let deadline = loop {
        tokio::select! {
            result = &mut send => return result,
            changed = drain.changed() => {
                if changed.is_err() {
                    // The signal's owner is gone: nobody will ever set a deadline.
                    return send.await;
                }
                let deadline = *drain.borrow_and_update();
                if let Some(at) = deadline {
                    break at;
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline, &mut send).await {
        Ok(result) => result,
        Err(_) => Err(DeliveryError::DeadlineExceeded {
            // The attempt or the wait the deadline cut short counts as one more.
            attempts: attempts
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_add(1),
            last: segment::SendError::Retryable {
                status: None,
                retry_after: None,
                reason: "shutdown deadline reached before the batch was accepted".to_owned(),
            },
        }),
    }
}

/// The exact stored bytes of unreadable records, for the dead letters (rare: off the hot path).
async fn raw_records(spool: &Spool, metas: &[Meta]) -> Vec<Vec<u8>> {
    let spool = spool.clone();
    let wanted: Vec<(Pos, u64)> = metas
        .iter()
        .map(|m| {
            (
                Pos {
                    key: m.key,
                    index: m.index,
                },
                m.received_micros,
            )
        })
        .collect();
    let read = tokio::task::spawn_blocking(move || {
        wanted
            .into_iter()
            .map(|(pos, micros)| match spool.record(pos) {
                Ok(Some((micros, bytes))) => dead_record(micros, &bytes),
                // Unreadable even now: keep what is known (its receive time).
                Ok(None) | Err(_) => dead_record(micros, &[]),
            })
            .collect()
    });
    read.await.unwrap_or_default()
}

/// Removes the entries whose last message was just processed. Messages leave the buffer in
/// spool order and a round only counts once it succeeded, so every earlier message of such an
/// entry (and every earlier entry) is already done.
fn finish(spool: &Spool, processed: &[Meta]) {
    let mut upto = None;
    let mut cost = 0;
    let mut count = 0;
    for meta in processed.iter().filter(|m| m.last_in_entry) {
        upto = Some(meta.key);
        cost += meta.entry_cost;
        count += meta.entry_messages;
    }
    if let Some(upto) = upto {
        spool.remove(upto, cost, count);
    }
}

async fn read_more(
    spool: &Spool,
    cursor: Option<Pos>,
    limits: Limits,
) -> Result<Vec<Spooled>, crate::spool::SpoolError> {
    let spool = spool.clone();
    let max_messages = limits.max_batch_messages.max(1);
    let max_bytes = limits.max_batch_bytes;
    tokio::task::spawn_blocking(move || spool.read(cursor, max_messages, max_bytes))
        .await
        .unwrap_or(Err(crate::spool::SpoolError::Closed))
}
