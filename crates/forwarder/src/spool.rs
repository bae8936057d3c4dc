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
//! order; table `dead_letters` holds messages that must never be sent (over 32 KB, or rejected by
//! Segment with a 4xx). An entry is `[received_at: u64 LE unix µs][message JSON]`.

use std::ops::RangeInclusive;
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
/// Bytes counted per entry on top of its value (key, B-tree slot), for the size bound.
pub const ENTRY_OVERHEAD: u64 = 32;
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
/// Size of an entry's header (the receive time).
const HEADER: usize = 8;

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
    /// Bound on the bytes of waiting messages (plus [`ENTRY_OVERHEAD`] each).
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

/// One spooled message read back for delivery.
#[derive(Debug)]
pub struct Spooled {
    /// Its sequence number.
    pub key: u64,
    /// When the webhook was received (unix µs).
    pub received_micros: u64,
    /// The message JSON.
    pub json: String,
}

impl Spooled {
    /// Bytes this entry counts against the bound.
    pub fn cost(&self) -> u64 {
        (self.json.len() + HEADER) as u64 + ENTRY_OVERHEAD
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
        entries: Vec<Vec<u8>>,
        dead: Vec<Vec<u8>>,
        cost: u64,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Remove {
        keys: RangeInclusive<u64>,
        cost: u64,
        count: u64,
    },
    Dead {
        keys: Vec<u64>,
        reason: DeadReason,
        cost: u64,
    },
    Shutdown,
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
        let mut entries = Vec::with_capacity(messages.len());
        let mut dead = Vec::new();
        let mut cost = 0;
        for message in messages {
            let mut entry = Vec::with_capacity(HEADER + message.len());
            entry.extend_from_slice(&micros.to_le_bytes());
            entry.extend_from_slice(message.as_bytes());
            if message.len() > self.shared.max_message_bytes {
                dead.push(entry);
            } else {
                cost += entry.len() as u64 + ENTRY_OVERHEAD;
                entries.push(entry);
            }
        }
        let appended = Appended {
            spooled: entries.len(),
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
            entries,
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

    /// Reads up to `max_messages` waiting messages with keys above `after`, in key order, until
    /// about `max_bytes` of JSON. Blocking.
    pub fn read(
        &self,
        after: Option<u64>,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<Spooled>, SpoolError> {
        let txn = self.shared.db.begin_read().map_err(storage)?;
        let table = match txn.open_table(SPOOL) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let start = after.map_or(0, |k| k.saturating_add(1));
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in table.range(start..).map_err(storage)? {
            let (key, value) = item.map_err(storage)?;
            let value = value.value();
            let (received_micros, json) = decode(value);
            bytes += json.len();
            out.push(Spooled {
                key: key.value(),
                received_micros,
                json,
            });
            if out.len() >= max_messages || bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Forgets delivered messages (`keys` must be exactly the delivered, contiguous range).
    /// Applied with the next group commit; no need to wait for it.
    pub fn remove(&self, keys: RangeInclusive<u64>, cost: u64, count: u64) {
        // A closed channel means shutdown: the messages stay and are resent after restart,
        // which Segment deduplicates by messageId.
        let _ = self.shared.tx.send(Op::Remove { keys, cost, count });
    }

    /// Moves messages from the spool to the dead letters.
    pub fn dead_letter(&self, keys: Vec<u64>, reason: DeadReason, cost: u64) {
        let _ = self.shared.tx.send(Op::Dead { keys, reason, cost });
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

fn decode(value: &[u8]) -> (u64, String) {
    let (header, json) = value.split_at(HEADER.min(value.len()));
    let mut micros = [0u8; HEADER];
    if header.len() == HEADER {
        micros.copy_from_slice(header);
    }
    // Entries are written from `String`s, so this is lossless; a damaged entry turns into
    // invalid JSON and is dead-lettered by the sender.
    (
        u64::from_le_bytes(micros),
        String::from_utf8_lossy(json).into_owned(),
    )
}

/// Creates the tables, computes the gauges from what is on disk, returns the next key.
fn recover(db: &Database, stats: &SpoolStats) -> Result<u64, SpoolError> {
    let txn = db.begin_write().map_err(storage)?;
    let mut next = 0;
    {
        let spool = txn.open_table(SPOOL).map_err(storage)?;
        let dead = txn.open_table(DEAD).map_err(storage)?;
        let mut bytes = 0;
        let mut depth = 0;
        for item in spool.iter().map_err(storage)? {
            let (_, value) = item.map_err(storage)?;
            bytes += value.value().len() as u64 + ENTRY_OVERHEAD;
            depth += 1;
        }
        stats.bytes.store(bytes, Ordering::Release);
        stats.depth.store(depth, Ordering::Release);
        stats
            .dead_letters
            .store(dead.len().map_err(storage)?, Ordering::Release);
        if let Some((key, _)) = spool.last().map_err(storage)? {
            next = key.value() + 1;
        }
        if let Some((key, _)) = dead.last().map_err(storage)? {
            next = next.max(key.value() + 1);
        }
    }
    txn.commit().map_err(storage)?;
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
                    if let Op::Append { entries, .. } = op {
                        added += entries.len() as u64;
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
                (Op::Dead { keys, cost, .. }, Ok(_)) => {
                    stats.bytes.fetch_sub(cost, Ordering::AcqRel);
                    stats.depth.fetch_sub(keys.len() as u64, Ordering::AcqRel);
                }
                (Op::Remove { .. } | Op::Dead { .. }, Err(e)) => {
                    // The messages stay on disk and are resent after a restart (same ids).
                    tracing::error!(error = %e, "spool: recording a delivery failed");
                }
                (Op::Shutdown, _) => {}
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
        for op in ops {
            match op {
                Op::Append {
                    entries,
                    dead: oversize,
                    ..
                } => {
                    for entry in entries {
                        spool.insert(*next_key, entry.as_slice()).map_err(storage)?;
                        *next_key += 1;
                    }
                    for entry in oversize {
                        dead.insert(*next_key, (DeadReason::Oversize.as_str(), entry.as_slice()))
                            .map_err(storage)?;
                        *next_key += 1;
                        effect.dead_letters += 1;
                    }
                }
                Op::Remove { keys, .. } => {
                    spool
                        .retain_in(keys.clone(), |_, _| false)
                        .map_err(storage)?;
                }
                Op::Dead { keys, reason, .. } => {
                    for key in keys {
                        let removed = spool.remove(*key).map_err(storage)?;
                        if let Some(value) = removed {
                            let value = value.value().to_vec();
                            dead.insert(*key, (reason.as_str(), value.as_slice()))
                                .map_err(storage)?;
                            effect.dead_letters += 1;
                        }
                    }
                }
                Op::Shutdown => {}
            }
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
        assert!(read.windows(2).all(|w| w[0].key < w[1].key));
        assert!(read[0].age(SystemTime::now()) < Duration::from_secs(60));
        let after_first = spool.read(Some(read[0].key), 1, 1 << 20).unwrap();
        assert_eq!(after_first.len(), 1);
        assert_eq!(after_first[0].json, r#"{"b":2}"#);

        let cost: u64 = read[..2].iter().map(Spooled::cost).sum();
        spool.remove(read[0].key..=read[1].key, cost, 2);
        spool.dead_letter(vec![read[2].key], DeadReason::Rejected, read[2].cost());
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
        // New keys continue after the dead letters' keys.
        reopened.append(&[r#"{"d":4}"#.into()], now).await.unwrap();
        let read = reopened.read(None, 10, 1 << 20).unwrap();
        assert!(read[0].key > 3);
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
        spool.remove(read[0].key..=read[1].key, cost, 2);
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
        assert_eq!(spool.read(None, 1000, 1 << 30).unwrap().len(), 400);
        spool.close();
    }
}
