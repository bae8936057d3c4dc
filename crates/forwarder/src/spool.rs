//! The durable on-disk spool: mapped Segment messages wait here until Segment accepts them.
//!
//! Storage is [redb](https://docs.rs/redb): an embedded, crash-safe B-tree with copy-on-write
//! commits and checksummed roots, so a `kill -9` or power cut at any instant leaves either the
//! previous or the next committed state, never a torn one.
//!
//! **Group commit.** Every write goes through one writer thread. It blocks for the first pending
//! operation, takes every other operation already queued, applies them all in a single write
//! transaction and commits it with [`Durability::Immediate`] (one fsync). Only then does it answer
//! the waiting requests, so a 2xx to Seshn always means "on disk", while a thousand concurrent
//! requests share one fsync instead of paying for a thousand. While a commit runs, the next group
//! accumulates in the channel: the batch size adapts to the load by itself, with no timer.
//!
//! Layout: table `spool` (`u64` sequence → entry) holds messages awaiting delivery in arrival
//! order, **one entry per commit**: the entry is the concatenation of every message of the group,
//! each as a record `[received_at: u64 LE unix µs][length: u32 LE][message JSON]`. One B-tree
//! insert per commit instead of one per message halves the spool's CPU cost per request. A
//! message is addressed by its [`Pos`] (entry key, index in the entry); an entry is removed once
//! all its messages are delivered or dead-lettered. Table `dead_letters` holds messages that must
//! never be sent (over 32 KB, or rejected by Segment with a 4xx).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use std::sync::mpsc;

use tokio::sync::{Notify, oneshot};

const SPOOL: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");
const DEAD: TableDefinition<u64, (&str, &[u8])> = TableDefinition::new("dead_letters");

/// File name of the store inside the spool directory.
pub const FILE_NAME: &str = "spool.redb";
/// Bytes counted per message on top of its record, for the size bound (amortised B-tree and
/// page overhead).
pub const MESSAGE_OVERHEAD: u64 = 16;
/// Most operations applied in one commit; bounds the transaction's memory.
const MAX_GROUP: usize = 4096;
/// Removals of delivered messages do not need a commit of their own: they ride along with the
/// next group of appends, or are committed after this long without one.
const LAZY_COMMIT: Duration = Duration::from_millis(100);
/// Pending removals that force a commit even without appends.
const MAX_LAZY: usize = 1024;
/// Longest a group waits for the requests expected to join it (see `writer_loop`). Only paid
/// when the previous group was larger than the current one; a lone request never waits.
const GROUP_WAIT: Duration = Duration::from_millis(1);
/// Size of a record's header (receive time, length).
const HEADER: usize = 12;

/// Bytes a message of `len` JSON bytes counts against the bound.
pub fn message_cost(len: usize) -> u64 {
    (len + HEADER) as u64 + MESSAGE_OVERHEAD
}

/// Why a spool operation failed. Texts hold no message content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// Accepting the event would exceed `--spool-max-bytes`.
    #[error("spool is full")]
    Full,
    /// The spool is shutting down (or its writer died).
    #[error("spool is closed")]
    Closed,
    /// The store failed (disk full, I/O error, corruption).
    #[error("spool storage error: {0}")]
    Storage(String),
}

impl From<redb::Error> for SpoolError {
    fn from(e: redb::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

fn storage<E: Into<redb::Error>>(e: E) -> SpoolError {
    SpoolError::from(e.into())
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Larger than Segment's 32 KB per-message limit.
    Oversize,
    /// Segment refused the batch holding it with a non-retryable status.
    Rejected,
    /// The stored entry could not be read back as JSON (should never happen).
    Corrupt,
}

impl DeadReason {
    /// Label used in the store and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oversize => "oversize",
            Self::Rejected => "rejected",
            Self::Corrupt => "corrupt",
        }
    }
}

/// How to open a spool.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Directory holding [`FILE_NAME`]; created if missing.
    pub dir: PathBuf,
    /// Bound on the bytes of waiting messages (see [`message_cost`]).
    pub max_bytes: u64,
    /// Largest accepted message; bigger ones go straight to the dead letters.
    pub max_message_bytes: usize,
    /// redb page cache size; bounds the store's memory.
    pub cache_bytes: usize,
}

/// Counters and gauges of the spool (read by `/metrics`).
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Bytes of waiting messages, including reservations of appends not yet committed.
    pub bytes: AtomicU64,
    /// Committed messages waiting for delivery.
    pub depth: AtomicU64,
    /// Messages in the dead-letter table.
    pub dead_letters: AtomicU64,
    /// Write transactions committed.
    pub commits: AtomicU64,
    /// Appends (requests) made durable.
    pub appends: AtomicU64,
}

/// Where a message sits in the spool: its entry (one per commit) and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Entry key.
    pub key: u64,
    /// Index of the message in the entry.
    pub index: u32,
}

/// One spooled message read back for delivery.
#[derive(Debug)]
pub struct Spooled {
    /// Its position.
    pub pos: Pos,
    /// When the webhook was received (unix µs).
    pub received_micros: u64,
    /// The message JSON.
    pub json: String,
    /// Whether it is the last message of its entry: once it (and so every message before it)
    /// is delivered or dead-lettered, the entry can be removed.
    pub last_in_entry: bool,
    /// Messages in its entry.
    pub entry_messages: u64,
    /// Bytes its entry counts against the bound.
    pub entry_cost: u64,
}

impl Spooled {
    /// Bytes this message counts against the bound.
    pub fn cost(&self) -> u64 {
        message_cost(self.json.len())
    }

    /// Time since the webhook was received.
    pub fn age(&self, now: SystemTime) -> Duration {
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        Duration::from_micros(
            u64::try_from(now.saturating_sub(u128::from(self.received_micros))).unwrap_or(0),
        )
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    /// Messages spooled for delivery.
    pub spooled: usize,
    /// Messages dead-lettered because they are too large.
    pub dead_lettered: usize,
}

enum Op {
    Append {
        /// Encoded records of the request's messages.
        records: Vec<u8>,
        /// Number of records.
        messages: u64,
        /// Encoded records too large to send, for the dead letters.
        dead: Vec<Vec<u8>>,
        cost: u64,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Remove {
        /// Every entry with a key up to this one is done.
        upto: u64,
        cost: u64,
        count: u64,
    },
    Dead {
        messages: Vec<Vec<u8>>,
        reason: DeadReason,
    },
    Shutdown,
}

/// Appends one record to `out`.
fn encode_record(out: &mut Vec<u8>, micros: u64, json: &[u8]) {
    out.extend_from_slice(&micros.to_le_bytes());
    // Messages are bounded by the body limit, far below 4 GiB.
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(json);
}

/// Splits an entry into its records `(received_micros, json)`; stops at a damaged tail.
fn decode_records(entry: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut rest = entry;
    std::iter::from_fn(move || {
        if rest.len() < HEADER {
            return None;
        }
        let (header, tail) = rest.split_at(HEADER);
        let mut micros = [0u8; 8];
        micros.copy_from_slice(&header[..8]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&header[8..]);
        let len = u32::from_le_bytes(len) as usize;
        if tail.len() < len {
            return None;
        }
        let (json, after) = tail.split_at(len);
        rest = after;
        Some((u64::from_le_bytes(micros), json))
    })
}

struct Shared {
    tx: mpsc::Sender<Op>,
    db: Arc<Database>,
    stats: Arc<SpoolStats>,
    notify: Arc<Notify>,
    max_bytes: u64,
    max_message_bytes: usize,
    closed: AtomicBool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("depth", &self.shared.stats.depth.load(Ordering::Relaxed))
            .field("bytes", &self.shared.stats.bytes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (or creates) the spool and starts its writer thread. Blocking: call it before
    /// serving, or from `spawn_blocking`.
    pub fn open(options: &SpoolOptions) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(&options.dir).map_err(|e| {
            SpoolError::Storage(format!("creating the spool directory: {}", e.kind()))
        })?;
        let path = options.dir.join(FILE_NAME);
        let db = open_db(&path, options.cache_bytes)?;
        let stats = Arc::new(SpoolStats::default());
        let next_key = recover(&db, &stats)?;
        let db = Arc::new(db);
        let notify = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel();
        let writer = {
            let db = Arc::clone(&db);
            let stats = Arc::clone(&stats);
            let notify = Arc::clone(&notify);
            std::thread::Builder::new()
                .name("spool-writer".into())
                .spawn(move || writer_loop(&db, &stats, &notify, &rx, next_key))
                .map_err(|e| SpoolError::Storage(format!("starting the writer: {}", e.kind())))?
        };
        Ok(Self {
            shared: Arc::new(Shared {
                tx,
                db,
                stats,
                notify,
                max_bytes: options.max_bytes,
                max_message_bytes: options.max_message_bytes,
                closed: AtomicBool::new(false),
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// The spool's counters.
    pub fn stats(&self) -> &SpoolStats {
        &self.shared.stats
    }

    /// The configured bound.
    pub fn max_bytes(&self) -> u64 {
        self.shared.max_bytes
    }

    /// Woken after every commit that added messages.
    pub fn notifier(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.notify)
    }

    /// Makes `messages` durable; returns once they are committed to disk (group commit).
    ///
    /// Messages over the size limit are committed to the dead letters instead. Fails with
    /// [`SpoolError::Full`] when the bound would be exceeded (nothing is written then).
    pub async fn append(
        &self,
        messages: &[String],
        received_at: SystemTime,
    ) -> Result<Appended, SpoolError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(SpoolError::Closed);
        }
        let micros = u64::try_from(
            received_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros(),
        )
        .unwrap_or(u64::MAX);
        let total: usize = messages.iter().map(|m| m.len() + HEADER).sum();
        let mut records = Vec::with_capacity(total);
        let mut count = 0;
        let mut dead = Vec::new();
        let mut cost = 0;
        for message in messages {
            if message.len() > self.shared.max_message_bytes {
                let mut record = Vec::with_capacity(HEADER + message.len());
                encode_record(&mut record, micros, message.as_bytes());
                dead.push(record);
            } else {
                encode_record(&mut records, micros, message.as_bytes());
                cost += message_cost(message.len());
                count += 1;
            }
        }
        let appended = Appended {
            spooled: count as usize,
            dead_lettered: dead.len(),
        };
        // Reserve the bytes first so concurrent appends cannot overshoot the bound together.
        let before = self.shared.stats.bytes.fetch_add(cost, Ordering::AcqRel);
        if before + cost > self.shared.max_bytes {
            self.shared.stats.bytes.fetch_sub(cost, Ordering::AcqRel);
            return Err(SpoolError::Full);
        }
        let (reply, answer) = oneshot::channel();
        let op = Op::Append {
            records,
            messages: count,
            dead,
            cost,
            reply,
        };
        if self.shared.tx.send(op).is_err() {
            self.shared.stats.bytes.fetch_sub(cost, Ordering::AcqRel);
            return Err(SpoolError::Closed);
        }
        // The writer releases the reservation itself when the commit fails.
        match answer.await {
            Ok(Ok(())) => Ok(appended),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SpoolError::Closed),
        }
    }

    /// Reads up to `max_messages` waiting messages after position `after`, in order, until
    /// about `max_bytes` of JSON. Blocking.
    pub fn read(
        &self,
        after: Option<Pos>,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<Spooled>, SpoolError> {
        let txn = self.shared.db.begin_read().map_err(storage)?;
        let table = match txn.open_table(SPOOL) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let start = after.map_or(0, |p| p.key);
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in table.range(start..).map_err(storage)? {
            let (key, value) = item.map_err(storage)?;
            let key = key.value();
            let entry = value.value();
            let (entry_messages, entry_cost) = entry_totals(entry);
            for (index, (received_micros, json)) in decode_records(entry).enumerate() {
                let pos = Pos {
                    key,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                };
                if after.is_some_and(|a| pos <= a) {
                    continue;
                }
                bytes += json.len();
                out.push(Spooled {
                    pos,
                    received_micros,
                    // Written from `String`s, so lossless; a damaged record turns into invalid
                    // JSON and is dead-lettered by the sender.
                    json: String::from_utf8_lossy(json).into_owned(),
                    last_in_entry: index as u64 + 1 == entry_messages,
                    entry_messages,
                    entry_cost,
                });
                if out.len() >= max_messages || bytes >= max_bytes {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Forgets every entry up to key `upto`, all of whose messages were delivered or
    /// dead-lettered; `cost` and `count` are those entries' totals. Applied with the next group
    /// commit; no need to wait for it.
    pub fn remove(&self, upto: u64, cost: u64, count: u64) {
        // A closed channel means shutdown: the messages stay and are resent after restart,
        // which Segment deduplicates by messageId.
        let _ = self.shared.tx.send(Op::Remove { upto, cost, count });
    }

    /// Copies messages into the dead letters (their entries are removed with [`Spool::remove`]).
    pub fn dead_letter(&self, messages: Vec<Vec<u8>>, reason: DeadReason) {
        let _ = self.shared.tx.send(Op::Dead { messages, reason });
    }

    /// Number of dead letters by reading the table (tests and diagnostics).
    pub fn dead_letter_count(&self) -> Result<u64, SpoolError> {
        let txn = self.shared.db.begin_read().map_err(storage)?;
        match txn.open_table(DEAD) {
            Ok(table) => table.len().map_err(storage),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(storage(e)),
        }
    }

    /// Stops accepting appends, commits everything queued, and stops the writer. Blocking.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let _ = self.shared.tx.send(Op::Shutdown);
        let handle = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // A panicked writer has nothing left to flush; the store stays consistent.
            let _ = handle.join();
        }
    }
}

fn open_db(path: &Path, cache_bytes: usize) -> Result<Database, SpoolError> {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    builder.create(path).map_err(storage)
}

/// Messages in an entry and the bytes they count against the bound.
fn entry_totals(entry: &[u8]) -> (u64, u64) {
    decode_records(entry).fold((0, 0), |(count, cost), (_, json)| {
        (count + 1, cost + message_cost(json.len()))
    })
}

/// Creates the tables, computes the gauges from what is on disk, returns the next key.
fn recover(db: &Database, stats: &SpoolStats) -> Result<u64, SpoolError> {
    // Read-only: a new file has no tables yet (the first commit creates them), and a start
    // should not pay for an extra fsync.
    let txn = db.begin_read().map_err(storage)?;
    let mut next = 0;
    match txn.open_table(SPOOL) {
        Ok(spool) => {
            let mut bytes = 0;
            let mut depth = 0;
            for item in spool.iter().map_err(storage)? {
                let (_, value) = item.map_err(storage)?;
                let (count, cost) = entry_totals(value.value());
                bytes += cost;
                depth += count;
            }
            stats.bytes.store(bytes, Ordering::Release);
            stats.depth.store(depth, Ordering::Release);
            if let Some((key, _)) = spool.last().map_err(storage)? {
                next = key.value() + 1;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e)),
    }
    match txn.open_table(DEAD) {
        Ok(dead) => {
            stats
                .dead_letters
                .store(dead.len().map_err(storage)?, Ordering::Release);
            if let Some((key, _)) = dead.last().map_err(storage)? {
                next = next.max(key.value() + 1);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e)),
    }
    Ok(next)
}

fn writer_loop(
    db: &Database,
    stats: &SpoolStats,
    notify: &Notify,
    rx: &mpsc::Receiver<Op>,
    mut next_key: u64,
) {
    let mut ops: Vec<Op> = Vec::with_capacity(256);
    let mut stop = false;
    // Appends in the last group: how many requests are usually in flight together.
    let mut expected = 1usize;
    while !stop {
        // Removals alone may wait (LAZY_COMMIT); anything else is committed at once.
        let first = if ops.is_empty() {
            rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(LAZY_COMMIT)
        };
        let mut forced = match first {
            Ok(op) => {
                ops.push(op);
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => true,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                stop = true;
                true
            }
        };
        // Group commit: take everything queued, then give the requests still in flight a moment
        // to join. Under steady load the same clients come back every round, so the last group's
        // size is a good guess of who is coming: wait (at most GROUP_WAIT) until that many
        // appends are here. One commit (one fsync) then answers all of them, instead of several
        // small commits whose fixed CPU cost would dominate.
        let waited = std::time::Instant::now();
        loop {
            while ops.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            let appends = ops
                .iter()
                .filter(|op| matches!(op, Op::Append { .. }))
                .count();
            let elapsed = waited.elapsed();
            if appends == 0
                || appends >= expected
                || ops.len() >= MAX_GROUP
                || elapsed >= GROUP_WAIT
                || ops.iter().any(|op| matches!(op, Op::Shutdown))
            {
                break;
            }
            match rx.recv_timeout(GROUP_WAIT.saturating_sub(elapsed)) {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let urgent = ops
            .iter()
            .any(|op| matches!(op, Op::Append { .. } | Op::Dead { .. } | Op::Shutdown));
        stop |= ops.iter().any(|op| matches!(op, Op::Shutdown));
        forced |= ops.len() >= MAX_LAZY;
        if !(urgent || forced || stop) || ops.is_empty() {
            continue;
        }
        let appends = ops
            .iter()
            .filter(|op| matches!(op, Op::Append { .. }))
            .count();
        if appends > 0 {
            expected = appends.max(1);
        }
        let start_key = next_key;
        let outcome = commit_group(db, &ops, &mut next_key);
        // Counters first, answers second: whoever sees a 2xx also sees the new depth.
        match &outcome {
            Ok(effect) => {
                let mut added = 0u64;
                let mut appends = 0u64;
                for op in &ops {
                    if let Op::Append { messages, .. } = op {
                        added += messages;
                        appends += 1;
                    }
                }
                stats.depth.fetch_add(added, Ordering::AcqRel);
                stats
                    .dead_letters
                    .fetch_add(effect.dead_letters, Ordering::AcqRel);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.appends.fetch_add(appends, Ordering::Relaxed);
                if added > 0 {
                    notify.notify_one();
                }
            }
            Err(e) => {
                next_key = start_key;
                tracing::error!(error = %e, "spool: commit failed");
            }
        }
        for op in ops.drain(..) {
            match (op, &outcome) {
                (Op::Append { reply, .. }, Ok(_)) => {
                    // The request may have gone away (client disconnected); the data is
                    // committed and will be delivered anyway.
                    let _ = reply.send(Ok(()));
                }
                (Op::Append { cost, reply, .. }, Err(e)) => {
                    stats.bytes.fetch_sub(cost, Ordering::AcqRel);
                    let _ = reply.send(Err(e.clone()));
                }
                (Op::Remove { cost, count, .. }, Ok(_)) => {
                    stats.bytes.fetch_sub(cost, Ordering::AcqRel);
                    stats.depth.fetch_sub(count, Ordering::AcqRel);
                }
                (Op::Remove { .. } | Op::Dead { .. }, Err(e)) => {
                    // The messages stay on disk and are resent after a restart (same ids).
                    tracing::error!(error = %e, "spool: recording a delivery failed");
                }
                // Dead letters are counted from the commit's effect above.
                (Op::Dead { .. }, Ok(_)) | (Op::Shutdown, _) => {}
            }
        }
    }
    // Whatever arrived after the shutdown op is refused.
    while let Ok(op) = rx.try_recv() {
        if let Op::Append { cost, reply, .. } = op {
            stats.bytes.fetch_sub(cost, Ordering::AcqRel);
            let _ = reply.send(Err(SpoolError::Closed));
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Effect {
    dead_letters: u64,
}

/// Applies a group of operations in one write transaction and commits it durably.
fn commit_group(db: &Database, ops: &[Op], next_key: &mut u64) -> Result<Effect, SpoolError> {
    let mut effect = Effect::default();
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    {
        let mut spool = txn.open_table(SPOOL).map_err(storage)?;
        let mut dead = txn.open_table(DEAD).map_err(storage)?;
        // Every append of the group goes into one entry: one B-tree insert per commit.
        let size: usize = ops
            .iter()
            .map(|op| match op {
                Op::Append { records, .. } => records.len(),
                _ => 0,
            })
            .sum();
        let mut entry = Vec::with_capacity(size);
        for op in ops {
            match op {
                Op::Append {
                    records,
                    dead: oversize,
                    ..
                } => {
                    entry.extend_from_slice(records);
                    for record in oversize {
                        dead.insert(
                            *next_key,
                            (DeadReason::Oversize.as_str(), record.as_slice()),
                        )
                        .map_err(storage)?;
                        *next_key += 1;
                        effect.dead_letters += 1;
                    }
                }
                Op::Remove { upto, .. } => {
                    spool.retain_in(0..=*upto, |_, _| false).map_err(storage)?;
                }
                Op::Dead { messages, reason } => {
                    for message in messages {
                        dead.insert(*next_key, (reason.as_str(), message.as_slice()))
                            .map_err(storage)?;
                        *next_key += 1;
                        effect.dead_letters += 1;
                    }
                }
                Op::Shutdown => {}
            }
        }
        if !entry.is_empty() {
            spool.insert(*next_key, entry.as_slice()).map_err(storage)?;
            *next_key += 1;
        }
    }
    txn.commit().map_err(storage)?;
    Ok(effect)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, max_bytes: u64) -> SpoolOptions {
        SpoolOptions {
            dir: dir.to_path_buf(),
            max_bytes,
            max_message_bytes: 100,
            cache_bytes: 1 << 20,
        }
    }

    /// Waits until the writer applied pending removals (they ride along lazily).
    fn settle(spool: &Spool, depth: u64) {
        for _ in 0..500 {
            if spool.stats().depth.load(Ordering::Acquire) == depth {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("depth never reached {depth}");
    }

    #[test]
    fn records_round_trip() {
        let mut entry = Vec::new();
        encode_record(&mut entry, 7, b"{\"a\":1}");
        encode_record(&mut entry, 8, b"");
        encode_record(&mut entry, 9, "é".as_bytes());
        let records: Vec<_> = decode_records(&entry).collect();
        assert_eq!(
            records,
            [(7, &b"{\"a\":1}"[..]), (8, &b""[..]), (9, "é".as_bytes())]
        );
        // A torn tail is ignored, never read out of bounds.
        let torn = &entry[..entry.len() - 1];
        assert_eq!(decode_records(torn).count(), 2);
        assert_eq!(
            entry_totals(&entry),
            (3, message_cost(7) + message_cost(0) + message_cost(2))
        );
    }

    #[tokio::test]
    async fn append_read_remove_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&options(dir.path(), 1 << 20)).unwrap();
        let now = SystemTime::now();
        let a = spool
            .append(&[r#"{"a":1}"#.into(), r#"{"b":2}"#.into()], now)
            .await
            .unwrap();
        assert_eq!(
            a,
            Appended {
                spooled: 2,
                dead_lettered: 0
            }
        );
        let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(200));
        let b = spool
            .append(&[big, r#"{"c":3}"#.into()], now)
            .await
            .unwrap();
        assert_eq!(
            b,
            Appended {
                spooled: 1,
                dead_lettered: 1
            }
        );
        assert_eq!(spool.stats().depth.load(Ordering::Acquire), 3);
        assert_eq!(spool.dead_letter_count().unwrap(), 1);

        let read = spool.read(None, 10, 1 << 20).unwrap();
        let jsons: Vec<_> = read.iter().map(|s| s.json.as_str()).collect();
        assert_eq!(jsons, [r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]);
        assert!(read.windows(2).all(|w| w[0].pos < w[1].pos));
        assert!(read[0].age(SystemTime::now()) < Duration::from_secs(60));
        // Two commits, so two entries: the first holds a and b.
        assert!(!read[0].last_in_entry && read[1].last_in_entry && read[2].last_in_entry);
        assert_eq!(read[1].entry_messages, 2);
        let after_first = spool.read(Some(read[0].pos), 1, 1 << 20).unwrap();
        assert_eq!(after_first.len(), 1);
        assert_eq!(after_first[0].json, r#"{"b":2}"#);
        let after_second = spool.read(Some(read[1].pos), 10, 1 << 20).unwrap();
        assert_eq!(after_second.len(), 1);
        assert_eq!(after_second[0].json, r#"{"c":3}"#);

        // The first entry is done; the second one's message is dead-lettered.
        spool.remove(read[1].pos.key, read[1].entry_cost, read[1].entry_messages);
        spool.dead_letter(
            vec![read[2].json.clone().into_bytes()],
            DeadReason::Rejected,
        );
        settle(&spool, 1);
        spool.remove(read[2].pos.key, read[2].entry_cost, read[2].entry_messages);
        spool.close();
        assert_eq!(
            spool.append(&[r"{}".into()], now).await,
            Err(SpoolError::Closed)
        );
        drop(spool);

        let reopened = Spool::open(&options(dir.path(), 1 << 20)).unwrap();
        assert_eq!(reopened.stats().depth.load(Ordering::Acquire), 0);
        assert_eq!(reopened.stats().bytes.load(Ordering::Acquire), 0);
        assert_eq!(reopened.stats().dead_letters.load(Ordering::Acquire), 2);
        assert!(reopened.read(None, 10, 1 << 20).unwrap().is_empty());
        // New keys continue after the old ones.
        reopened.append(&[r#"{"d":4}"#.into()], now).await.unwrap();
        let read = reopened.read(None, 10, 1 << 20).unwrap();
        assert!(read[0].pos.key > 2);
        reopened.close();
    }

    #[tokio::test]
    async fn undelivered_messages_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&options(dir.path(), 1 << 20)).unwrap();
        for i in 0..5 {
            spool
                .append(&[format!(r#"{{"i":{i}}}"#)], SystemTime::now())
                .await
                .unwrap();
        }
        let read = spool.read(None, 2, 1 << 20).unwrap();
        spool.remove(read[1].pos.key, 2 * read[0].entry_cost, 2);
        spool.close();
        drop(spool);
        let reopened = Spool::open(&options(dir.path(), 1 << 20)).unwrap();
        let rest: Vec<String> = reopened
            .read(None, 10, 1 << 20)
            .unwrap()
            .into_iter()
            .map(|s| s.json)
            .collect();
        assert_eq!(rest, [r#"{"i":2}"#, r#"{"i":3}"#, r#"{"i":4}"#]);
        assert_eq!(reopened.stats().depth.load(Ordering::Acquire), 3);
        reopened.close();
    }

    #[tokio::test]
    async fn full_spool_refuses_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&options(dir.path(), 200)).unwrap();
        let msg = format!(r#"{{"x":"{}"}}"#, "y".repeat(50));
        spool
            .append(std::slice::from_ref(&msg), SystemTime::now())
            .await
            .unwrap();
        spool
            .append(std::slice::from_ref(&msg), SystemTime::now())
            .await
            .unwrap();
        assert_eq!(
            spool
                .append(std::slice::from_ref(&msg), SystemTime::now())
                .await,
            Err(SpoolError::Full)
        );
        assert_eq!(spool.stats().depth.load(Ordering::Acquire), 2);
        let read = spool.read(None, 10, 1 << 20).unwrap();
        let cost: u64 = read.iter().map(Spooled::cost).sum();
        assert!(cost <= 200);
        let last = read.last().unwrap();
        spool.remove(last.pos.key, cost, 2);
        // The removal lands with the next commit; an append then fits again.
        let mut ok = false;
        for _ in 0..200 {
            if spool
                .append(std::slice::from_ref(&msg), SystemTime::now())
                .await
                .is_ok()
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ok);
        spool.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&options(dir.path(), 1 << 30)).unwrap();
        let mut tasks = Vec::new();
        for i in 0..400 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                spool
                    .append(&[format!(r#"{{"i":{i}}}"#)], SystemTime::now())
                    .await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let stats = spool.stats();
        assert_eq!(stats.appends.load(Ordering::Acquire), 400);
        assert!(
            stats.commits.load(Ordering::Acquire) < 400,
            "group commit shares fsyncs"
        );
        let read = spool.read(None, 1000, 1 << 30).unwrap();
        assert_eq!(read.len(), 400);
        // Reads with small limits resume exactly where they stopped, across entries.
        let mut cursor = None;
        let mut seen = 0;
        for _ in 0..1000 {
            let chunk = spool.read(cursor, 7, 1 << 30).unwrap();
            let Some(last) = chunk.last() else { break };
            cursor = Some(last.pos);
            seen += chunk.len();
        }
        assert_eq!(seen, 400);
        spool.close();
    }
}
