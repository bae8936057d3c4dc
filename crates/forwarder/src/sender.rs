//! Drains the spool to Segment: in key order, in size-aware batches, retrying until accepted.
//!
//! One batch is in flight at a time, so messages reach Segment in arrival order. While a batch is
//! out, new messages pile up in the spool and form the next batch, so batches grow with the load.
//! A delivered batch is removed from the spool; a batch Segment rejects (4xx) and any message too
//! large to ever send go to the dead letters and are never resent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use segment::{
    Client, DeliveryError, Limits, PushError, RawMessage, RetryPolicy, send_with_retries,
};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::spool::{DeadReason, Pos, Spool, Spooled};

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
        let mut dead: Vec<Vec<u8>> = Vec::new();
        while let Some(Pending { meta, raw }) = buffer.pop_front() {
            let Some(raw) = raw else {
                dead.push(Vec::new());
                processed.push(meta);
                continue;
            };
            match builder.try_push(raw) {
                Ok(()) => {
                    taken.push(meta);
                    processed.push(meta);
                }
                Err(PushError::Oversize(raw)) => {
                    dead.push(raw.get().as_bytes().to_vec());
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
        if !dead.is_empty() {
            metrics.dead_letters(DeadReason::Oversize.as_str(), dead.len() as u64);
            tracing::warn!(
                count = dead.len(),
                "dead-lettered messages that can never be sent"
            );
            spool.dead_letter(dead, DeadReason::Oversize);
        }
        let batch = builder.take();
        if batch.is_empty() {
            finish(&spool, &processed);
            continue;
        }
        match deliver(&client, &batch, &config.retry, &mut drain).await {
            Ok(attempts) => {
                metrics.batch("accepted");
                metrics.failed_attempts(u64::from(attempts.saturating_sub(1)));
                let now = SystemTime::now();
                metrics.delivered(taken.iter().map(|t| t.age(now)));
                finish(&spool, &processed);
            }
            Err(DeliveryError::Rejected {
                status, attempts, ..
            }) => {
                metrics.batch("rejected");
                metrics.failed_attempts(u64::from(attempts.saturating_sub(1)));
                metrics.dead_letters(DeadReason::Rejected.as_str(), taken.len() as u64);
                tracing::error!(
                    status,
                    messages = taken.len(),
                    "Segment rejected a batch; its messages are dead-lettered"
                );
                spool.dead_letter(
                    batch.iter().map(|m| m.get().as_bytes().to_vec()).collect(),
                    DeadReason::Rejected,
                );
                finish(&spool, &processed);
            }
            Err(DeliveryError::DeadlineExceeded { attempts, .. }) => {
                metrics.batch("abandoned");
                metrics.failed_attempts(u64::from(attempts.saturating_sub(1)));
                tracing::warn!(
                    messages = taken.len(),
                    "shutdown deadline reached; undelivered messages stay in the spool"
                );
                return Drained::DeadlineReached;
            }
        }
    }
}

/// Sends one batch: retries forever until a drain deadline is set, then until that deadline.
async fn deliver(
    client: &Client,
    batch: &[RawMessage],
    retry: &RetryPolicy,
    drain: &mut DrainSignal,
) -> Result<u32, DeliveryError> {
    loop {
        let deadline = *drain.borrow_and_update();
        if deadline.is_some() {
            return send_with_retries(client, batch, retry, deadline).await;
        }
        tokio::select! {
            result = send_with_retries(client, batch, retry, None) => return result,
            // Shutdown began: restart the delivery with the deadline (an attempt cut short is
            // harmless, message ids make any duplicate disappear at Segment).
            changed = drain.changed() => {
                if changed.is_err() {
                    // The signal's owner is gone: nobody will ever set a deadline.
                    return send_with_retries(client, batch, retry, None).await;
                }
            }
        }
    }
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
