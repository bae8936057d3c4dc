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
//! all its messages are delivered or dead-lettered. Table `dead_letters` (`u64` key → (reason,
//! record)) holds messages that must never be sent (over 32 KB, refused by Segment with 400/413,
//! or unreadable); it is bounded by [`SpoolOptions::dead_letter_max_bytes`], the oldest dead
//! letters making room for new ones. [`dump_dead_letters`] prints them as JSON lines.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tokio::sync::{Notify, oneshot};

use queue::{GroupQueue, Kind, Want, Woken};

mod queue;

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
/// next group of appends, or are committed at the latest this long after the first of them
/// (a deadline, not an idle timeout: a sender draining a backlog removes entries every few
/// milliseconds, and their space must still be freed promptly).
const LAZY_COMMIT: Duration = Duration::from_millis(100);
/// Pending removals that force a commit even without appends.
const MAX_LAZY: usize = 1024;
/// Longest a group waits for the requests expected to join it (see `writer_loop`). Only paid
/// when the previous group was larger than the current one; a lone request never waits.
const GROUP_WAIT: Duration = Duration::from_millis(1);
/// Size of a record's header (receive time, length).
const HEADER: usize = 12;
/// Bytes counted per dead letter on top of its record and reason (key, B-tree overhead).
pub const DEAD_LETTER_OVERHEAD: u64 = 24;

/// Bytes a message of `len` JSON bytes counts against the bound.
pub fn message_cost(len: usize) -> u64 {
    (len + HEADER) as u64 + MESSAGE_OVERHEAD
}

/// Bytes a dead letter counts against the dead-letter bound.
fn dead_letter_cost(reason: &str, value: &[u8]) -> u64 {
    (reason.len() + value.len()) as u64 + DEAD_LETTER_OVERHEAD
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
    /// Segment refused it (400 or 413), alone in its batch.
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
    /// Bound on the bytes of the dead-letter table; the oldest dead letters are deleted
    /// beyond it (counted in [`SpoolStats::dead_letters_dropped`]).
    pub dead_letter_max_bytes: u64,
}

impl SpoolOptions {
    /// Options for a spool in `dir` with small bounds (1 MiB of messages, of dead letters and
    /// of page cache) and Segment's 32 KB message limit: for tools and tests. The forwarder
    /// sets every bound from its configuration.
    pub fn small(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 1 << 20,
            max_message_bytes: 32 * 1024,
            cache_bytes: 1 << 20,
            dead_letter_max_bytes: 1 << 20,
        }
    }
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
    /// Bytes of the dead-letter table (see [`SpoolOptions::dead_letter_max_bytes`]).
    pub dead_letter_bytes: AtomicU64,
    /// Dead letters deleted to stay within the bound, since the spool was opened.
    pub dead_letters_dropped: AtomicU64,
    /// Commits that failed (disk full, I/O error), since the spool was opened.
    pub commit_failures: AtomicU64,
    /// Write transactions committed.
    pub commits: AtomicU64,
    /// Appends (requests) made durable.
    pub appends: AtomicU64,
    /// Tests: the next this many commits fail as if the disk had.
    #[cfg(test)]
    fail_commits: AtomicU64,
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
        /// Encoded records (see [`dead_record`]).
        records: Vec<Vec<u8>>,
        reason: DeadReason,
    },
    Shutdown,
    /// Tests: makes the writer thread panic, as a bug would.
    #[cfg(test)]
    Crash,
}

/// A dead letter's stored form: the spool's record layout (receive time, length, bytes), so the
/// receive time is kept for inspection and replay.
pub fn dead_record(received_micros: u64, message: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER + message.len());
    encode_record(&mut record, received_micros, message);
    record
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
    queue: Arc<GroupQueue<Op>>,
    db: Arc<Database>,
    stats: Arc<SpoolStats>,
    notify: Arc<Notify>,
    max_bytes: u64,
    max_message_bytes: usize,
    closed: AtomicBool,
    /// False once the writer thread ended (shutdown, or a panic: then nothing can be spooled).
    writer_alive: Arc<AtomicBool>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is gone: the writer commits what is queued and stops.
        self.queue.close();
    }
}

/// Clears the writer's liveness flag when the thread ends, also by unwinding from a panic.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
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
        if stats.dead_letters.load(Ordering::Acquire) > 0 {
            tracing::warn!(
                dead_letters = stats.dead_letters.load(Ordering::Acquire),
                "the spool holds dead letters (see `seshn-segment-forwarder dead-letters`)"
            );
        }
        let db = Arc::new(db);
        let notify = Arc::new(Notify::new());
        let queue = Arc::new(GroupQueue::default());
        let writer_alive = Arc::new(AtomicBool::new(true));
        let writer = {
            let db = Arc::clone(&db);
            let stats = Arc::clone(&stats);
            let notify = Arc::clone(&notify);
            let guard = AliveGuard(Arc::clone(&writer_alive));
            let queue = Arc::clone(&queue);
            let dead_letter_max_bytes = options.dead_letter_max_bytes;
            std::thread::Builder::new()
                .name("spool-writer".into())
                .spawn(move || {
                    let _guard = guard;
                    let writer = Writer {
                        db: &db,
                        stats: &stats,
                        notify: &notify,
                        queue: &queue,
                        dead_letter_max_bytes,
                    };
                    // Also when unwinding from a panic: later appends are refused, queued
                    // ones answered.
                    let _refuse = RefuseWhenGone(&writer);
                    writer.run(next_key);
                })
                .map_err(|e| SpoolError::Storage(format!("starting the writer: {}", e.kind())))?
        };
        Ok(Self {
            shared: Arc::new(Shared {
                queue,
                db,
                stats,
                notify,
                max_bytes: options.max_bytes,
                max_message_bytes: options.max_message_bytes,
                closed: AtomicBool::new(false),
                writer_alive,
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

    /// Whether the writer thread runs. False after [`Spool::close`], and when it died: then
    /// nothing can be spooled until the process restarts.
    pub fn writer_alive(&self) -> bool {
        self.shared.writer_alive.load(Ordering::Acquire)
    }

    /// Whether the writer thread ended without [`Spool::close`] (a bug or a panic in the store):
    /// every append fails from now on.
    pub fn writer_died(&self) -> bool {
        !self.writer_alive() && !self.shared.closed.load(Ordering::Acquire)
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
        if self.shared.queue.push(op, Kind::Counted).is_err() {
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
        // A gone writer means shutdown: the messages stay and are resent after restart, which
        // Segment deduplicates by messageId.
        let _ = self
            .shared
            .queue
            .push(Op::Remove { upto, cost, count }, Kind::Lazy);
    }

    /// Copies messages into the dead letters (their entries are removed with [`Spool::remove`]).
    /// `records` are encoded with [`dead_record`].
    pub fn dead_letter(&self, records: Vec<Vec<u8>>, reason: DeadReason) {
        let _ = self
            .shared
            .queue
            .push(Op::Dead { records, reason }, Kind::Lazy);
    }

    /// The exact stored bytes of one message, e.g. to dead-letter a record that does not read
    /// back as JSON without losing anything. `None` if it is gone. Blocking.
    pub fn record(&self, pos: Pos) -> Result<Option<(u64, Vec<u8>)>, SpoolError> {
        let txn = self.shared.db.begin_read().map_err(storage)?;
        let table = match txn.open_table(SPOOL) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        let Some(entry) = table.get(pos.key).map_err(storage)? else {
            return Ok(None);
        };
        Ok(decode_records(entry.value())
            .nth(pos.index as usize)
            .map(|(micros, json)| (micros, json.to_vec())))
    }

    /// Tests: the next `n` commits fail as if the disk had.
    #[cfg(test)]
    fn fail_next_commits(&self, n: u64) {
        self.shared.stats.fail_commits.store(n, Ordering::Release);
    }

    /// Tests: kills the writer thread as a panic would.
    #[cfg(test)]
    pub(crate) fn crash_writer(&self) {
        let _ = self.shared.queue.push(Op::Crash, Kind::Urgent);
        for _ in 0..500 {
            if !self.writer_alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the writer did not stop");
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
        let _ = self.shared.queue.push(Op::Shutdown, Kind::Urgent);
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
            let mut bytes = 0;
            for item in dead.iter().map_err(storage)? {
                let (_, value) = item.map_err(storage)?;
                let (reason, record) = value.value();
                bytes += dead_letter_cost(reason, record);
            }
            stats.dead_letter_bytes.store(bytes, Ordering::Release);
            if let Some((key, _)) = dead.last().map_err(storage)? {
                next = next.max(key.value() + 1);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e)),
    }
    Ok(next)
}

/// The writer thread's view of the store.
struct Writer<'a> {
    db: &'a Database,
    stats: &'a SpoolStats,
    notify: &'a Notify,
    queue: &'a GroupQueue<Op>,
    dead_letter_max_bytes: u64,
}

/// Once the writer is gone, refuses every later append and answers the queued ones (their
/// reservations released): nothing of them is on disk.
struct RefuseWhenGone<'a, 'w>(&'a Writer<'w>);

impl Drop for RefuseWhenGone<'_, '_> {
    fn drop(&mut self) {
        for op in self.0.queue.close_receiver() {
            if let Op::Append { cost, reply, .. } = op {
                self.0.stats.bytes.fetch_sub(cost, Ordering::AcqRel);
                let _ = reply.send(Err(SpoolError::Closed));
            }
        }
    }
}

fn is_append(op: &Op) -> bool {
    matches!(op, Op::Append { .. })
}

impl Writer<'_> {
    fn run(&self, mut next_key: u64) {
        let mut ops: Vec<Op> = Vec::with_capacity(256);
        let mut stop = false;
        // Appends in the last group: how many requests are usually in flight together.
        let mut expected = 1usize;
        // When the oldest operation still waiting in `ops` (removals, or work kept from a
        // failed commit) must be committed at the latest.
        let mut flush_by: Option<std::time::Instant> = None;
        while !stop {
            // Removals alone may wait (until `flush_by`, or until there are too many of them);
            // anything else is committed at once.
            let want = Want {
                counted: 1,
                lazy: flush_by.is_none(),
                items: MAX_LAZY.saturating_sub(ops.len()).max(1),
            };
            let mut forced = match self.queue.wait(want, flush_by) {
                Woken::Ready => false,
                Woken::Timeout => true,
                Woken::Closed => {
                    stop = true;
                    true
                }
            };
            // Group commit: take everything queued, then give the requests still in flight a
            // moment to join. Under steady load the same clients come back every round, so the
            // last group's size is a good guess of who is coming: wait (at most GROUP_WAIT) until
            // that many appends are here. One commit (one fsync) then answers all of them,
            // instead of several small commits whose fixed CPU cost would dominate. The queue
            // wakes the writer once the group is complete, not once per arriving request.
            let group_by = std::time::Instant::now() + GROUP_WAIT;
            let mut gave_up = false;
            let mut appends;
            loop {
                let room = MAX_GROUP.saturating_sub(ops.len());
                self.queue.drain_into(&mut ops, room, is_append);
                appends = ops.iter().filter(|op| is_append(op)).count();
                if gave_up
                    || appends == 0
                    || appends >= expected
                    || ops.len() >= MAX_GROUP
                    || ops.iter().any(|op| matches!(op, Op::Shutdown))
                {
                    break;
                }
                let more = Want {
                    counted: expected - appends,
                    lazy: false,
                    items: MAX_GROUP - ops.len(),
                };
                gave_up = self.queue.wait(more, Some(group_by)) != Woken::Ready;
            }
            #[cfg(test)]
            assert!(
                !ops.iter().any(|op| matches!(op, Op::Crash)),
                "spool writer crash requested by a test"
            );
            let urgent = ops
                .iter()
                .any(|op| matches!(op, Op::Append { .. } | Op::Shutdown));
            stop |= ops.iter().any(|op| matches!(op, Op::Shutdown));
            forced |=
                ops.len() >= MAX_LAZY || flush_by.is_some_and(|at| std::time::Instant::now() >= at);
            if ops.is_empty() {
                flush_by = None;
                continue;
            }
            if !(urgent || forced || stop) {
                // Only removals or dead letters: they may wait, but not past the deadline set
                // by the first of them.
                flush_by.get_or_insert_with(|| std::time::Instant::now() + LAZY_COMMIT);
                continue;
            }
            // Counted after the last drain of the group loop: still the group's appends.
            if appends > 0 {
                expected = appends.max(1);
            }
            let start_key = next_key;
            let outcome = self.commit_group(&ops, &mut next_key);
            self.settle(
                &mut ops,
                outcome.as_ref().map(|_| ()),
                start_key,
                &mut next_key,
            );
            match outcome {
                Ok(effect) => {
                    self.stats
                        .dead_letters
                        .fetch_add(effect.dead_letters, Ordering::AcqRel);
                    self.stats
                        .dead_letters
                        .fetch_sub(effect.dropped, Ordering::AcqRel);
                    self.stats
                        .dead_letter_bytes
                        .store(effect.dead_letter_bytes, Ordering::Release);
                    self.stats
                        .dead_letters_dropped
                        .fetch_add(effect.dropped, Ordering::AcqRel);
                    if effect.dropped > 0 {
                        tracing::warn!(
                            dropped = effect.dropped,
                            "dead-letter table over its bound: the oldest dead letters were \
                             deleted"
                        );
                    }
                    flush_by = None;
                }
                Err(_) => {
                    // Kept removals and dead letters are retried after a pause, with or
                    // without new appends.
                    flush_by = Some(std::time::Instant::now() + LAZY_COMMIT);
                }
            }
        }
        // Whatever arrives after the shutdown op is refused (`RefuseWhenGone`).
    }

    /// Applies a commit's outcome to the counters and answers the waiting appends. Counters
    /// first, answers second: whoever sees a 2xx also sees the new depth. After a failure,
    /// removals and dead letters stay in `ops` to be retried: dropping them would leave their
    /// bytes counted against the bound until a restart (503s for nothing).
    fn settle(
        &self,
        ops: &mut Vec<Op>,
        outcome: Result<(), &SpoolError>,
        start_key: u64,
        next_key: &mut u64,
    ) {
        let stats = self.stats;
        match outcome {
            Ok(()) => {
                let mut added = 0u64;
                let mut appends = 0u64;
                for op in ops.iter() {
                    if let Op::Append { messages, .. } = op {
                        added += messages;
                        appends += 1;
                    }
                }
                stats.depth.fetch_add(added, Ordering::AcqRel);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.appends.fetch_add(appends, Ordering::Relaxed);
                if added > 0 {
                    self.notify.notify_one();
                }
                for op in ops.drain(..) {
                    match op {
                        Op::Append { reply, .. } => {
                            // The request may have gone away (client disconnected); the data
                            // is committed and will be delivered anyway.
                            let _ = reply.send(Ok(()));
                        }
                        Op::Remove { cost, count, .. } => {
                            stats.bytes.fetch_sub(cost, Ordering::AcqRel);
                            stats.depth.fetch_sub(count, Ordering::AcqRel);
                        }
                        // Dead letters are counted from the commit's effect.
                        Op::Dead { .. } | Op::Shutdown => {}
                        #[cfg(test)]
                        Op::Crash => {}
                    }
                }
            }
            Err(e) => {
                *next_key = start_key;
                stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "spool: commit failed");
                let mut kept = Vec::new();
                for op in ops.drain(..) {
                    match op {
                        Op::Append { cost, reply, .. } => {
                            // The reservation is released: nothing of it is on disk.
                            stats.bytes.fetch_sub(cost, Ordering::AcqRel);
                            let _ = reply.send(Err(e.clone()));
                        }
                        op @ (Op::Remove { .. } | Op::Dead { .. }) => kept.push(op),
                        // Stop anyway: kept work is retried at the next start (same ids).
                        Op::Shutdown => {}
                        #[cfg(test)]
                        Op::Crash => {}
                    }
                }
                *ops = kept;
            }
        }
    }

    /// Applies a group of operations in one write transaction and commits it durably.
    fn commit_group(&self, ops: &[Op], next_key: &mut u64) -> Result<Effect, SpoolError> {
        #[cfg(test)]
        if self
            .stats
            .fail_commits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(SpoolError::Storage("injected commit failure".into()));
        }
        let mut effect = Effect {
            dead_letter_bytes: self.stats.dead_letter_bytes.load(Ordering::Acquire),
            ..Effect::default()
        };
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        {
            let mut spool = txn.open_table(SPOOL).map_err(storage)?;
            let mut dead = txn.open_table(DEAD).map_err(storage)?;
            let mut add_dead = |reason: DeadReason, record: &[u8], key: &mut u64| {
                dead.insert(*key, (reason.as_str(), record))
                    .map_err(storage)?;
                *key += 1;
                effect.dead_letters += 1;
                effect.dead_letter_bytes += dead_letter_cost(reason.as_str(), record);
                Ok::<(), SpoolError>(())
            };
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
                            add_dead(DeadReason::Oversize, record, next_key)?;
                        }
                    }
                    Op::Remove { upto, .. } => {
                        spool.retain_in(0..=*upto, |_, _| false).map_err(storage)?;
                    }
                    Op::Dead { records, reason } => {
                        for record in records {
                            add_dead(*reason, record, next_key)?;
                        }
                    }
                    Op::Shutdown => {}
                    #[cfg(test)]
                    Op::Crash => {}
                }
            }
            // Keys only grow, so the first dead letters are the oldest: drop them first.
            while effect.dead_letter_bytes > self.dead_letter_max_bytes {
                let Some((_, value)) = dead.pop_first().map_err(storage)? else {
                    break;
                };
                let (reason, record) = value.value();
                effect.dead_letter_bytes = effect
                    .dead_letter_bytes
                    .saturating_sub(dead_letter_cost(reason, record));
                effect.dropped += 1;
            }
            if !entry.is_empty() {
                spool.insert(*next_key, entry.as_slice()).map_err(storage)?;
                *next_key += 1;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(effect)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Effect {
    /// Dead letters added.
    dead_letters: u64,
    /// Dead letters deleted to stay within the bound.
    dropped: u64,
    /// The dead-letter table's bytes after the commit.
    dead_letter_bytes: u64,
}

/// Why the dead letters could not be printed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The store could not be opened or read.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A running forwarder holds the spool.
    #[error(
        "the spool is in use by a running forwarder: stop it first, or run this on a copy of \
         spool.redb taken while it was stopped"
    )]
    InUse,
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Write(std::io::ErrorKind),
}

/// Prints every dead letter of the spool in `dir` as one JSON object per line, oldest first:
/// `{"key":7,"reason":"rejected","receivedAt":"...","message":{...}}` (`message` is the exact
/// Segment message; a record that is not JSON comes as `"text"` instead). Opens the store
/// read-only, so it needs the forwarder stopped. Returns the number printed.
pub fn dump_dead_letters(dir: &Path, out: &mut impl std::io::Write) -> Result<u64, DumpError> {
    let path = dir.join(FILE_NAME);
    let db = match Database::builder().open_read_only(&path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(DumpError::InUse),
        Err(e) => return Err(storage(e).into()),
    };
    let txn = db.begin_read().map_err(storage)?;
    let table = match txn.open_table(DEAD) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(storage(e).into()),
    };
    let mut count = 0;
    for item in table.iter().map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        let (reason, stored) = value.value();
        // Records carry their receive time; older versions stored the bare message.
        let (micros, bytes) = match decode_records(stored).next() {
            Some((micros, json)) if json.len() + HEADER == stored.len() => (Some(micros), json),
            _ => (None, stored),
        };
        let mut line = String::with_capacity(bytes.len() + 96);
        line.push_str(r#"{"key":"#);
        line.push_str(&key.value().to_string());
        line.push_str(r#","reason":"#);
        crate::mapping::push_json_string(&mut line, reason);
        if let Some(micros) = micros {
            let at = UNIX_EPOCH + Duration::from_micros(micros);
            line.push_str(r#","receivedAt":""#);
            line.push_str(&segment::rfc3339_millis(at));
            line.push('"');
        }
        let json = std::str::from_utf8(bytes)
            .ok()
            .filter(|text| serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok());
        if let Some(json) = json {
            line.push_str(r#","message":"#);
            line.push_str(json.trim());
        } else {
            line.push_str(r#","text":"#);
            crate::mapping::push_json_string(&mut line, &String::from_utf8_lossy(bytes));
        }
        line.push_str("}\n");
        out.write_all(line.as_bytes())
            .map_err(|e| DumpError::Write(e.kind()))?;
        count += 1;
    }
    out.flush().map_err(|e| DumpError::Write(e.kind()))?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, max_bytes: u64) -> SpoolOptions {
        SpoolOptions {
            max_bytes,
            max_message_bytes: 100,
            ..SpoolOptions::small(dir)
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
            vec![dead_record(
                read[2].received_micros,
                read[2].json.as_bytes(),
            )],
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

    /// While the sender drains a backlog it removes entries every few milliseconds; their
    /// space must be freed within LAZY_COMMIT of the first removal, not only once removals
    /// pause (the timer is a deadline, not an idle timeout).
    #[tokio::test]
    async fn removals_are_committed_by_a_deadline_even_while_they_keep_coming() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&options(dir.path(), 1 << 20)).unwrap();
        let n = 40;
        for i in 0..n {
            // One append at a time: one commit, so one entry, each.
            spool
                .append(&[format!(r#"{{"i":{i}}}"#)], SystemTime::now())
                .await
                .unwrap();
        }
        let read = spool.read(None, 100, 1 << 20).unwrap();
        assert_eq!(read.len(), n);
        let full = spool.stats().bytes.load(Ordering::Acquire);
        let mut freed_after = None;
        for (i, item) in read.iter().enumerate() {
            spool.remove(item.pos.key, item.entry_cost, item.entry_messages);
            // Faster than LAZY_COMMIT, so an idle timer would never fire during the loop.
            tokio::time::sleep(LAZY_COMMIT / 4).await;
            if spool.stats().depth.load(Ordering::Acquire) < n as u64 {
                freed_after = Some(i + 1);
                break;
            }
        }
        let freed_after = freed_after.expect("no removal committed while removals kept coming");
        assert!(freed_after < n, "{freed_after}");
        assert!(spool.stats().bytes.load(Ordering::Acquire) < full);
        spool.close();
    }

    /// A failed commit must not leave the removals it carried forgotten: their bytes would
    /// count against the bound until a restart (503s with nothing waiting).
    #[tokio::test]
    async fn a_failed_commit_keeps_its_removals_and_retries_them() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&options(dir.path(), 1 << 20)).unwrap();
        let now = SystemTime::now();
        spool.append(&[r#"{"a":1}"#.into()], now).await.unwrap();
        spool.append(&[r#"{"b":2}"#.into()], now).await.unwrap();
        let read = spool.read(None, 10, 1 << 20).unwrap();
        assert_eq!(read.len(), 2);
        spool.fail_next_commits(1);
        spool.remove(read[0].pos.key, read[0].entry_cost, read[0].entry_messages);
        // This append forces the commit that fails (and carries the removal).
        assert!(matches!(
            spool.append(&[r#"{"c":3}"#.into()], now).await,
            Err(SpoolError::Storage(_))
        ));
        assert_eq!(spool.stats().commit_failures.load(Ordering::Acquire), 1);
        // The removal is retried on its own; the failed append's reservation is released.
        settle(&spool, 1);
        assert_eq!(
            spool.stats().bytes.load(Ordering::Acquire),
            read[1].entry_cost
        );
        let rest = spool.read(None, 10, 1 << 20).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].json, r#"{"b":2}"#);
        spool.close();
    }

    #[tokio::test]
    async fn dead_letters_are_bounded_oldest_first_and_dumped_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let one = dead_letter_cost("rejected", &dead_record(0, br#"{"n":0}"#));
        let mut opts = options(dir.path(), 1 << 20);
        opts.dead_letter_max_bytes = 3 * one;
        let spool = Spool::open(&opts).unwrap();
        let micros = 1_767_261_600_000_000; // 2026-01-01T10:00:00Z
        for n in 0..5 {
            spool.dead_letter(
                vec![dead_record(micros, format!(r#"{{"n":{n}}}"#).as_bytes())],
                DeadReason::Rejected,
            );
        }
        let stats = spool.stats();
        for _ in 0..500 {
            if stats.dead_letters_dropped.load(Ordering::Acquire) == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stats.dead_letters_dropped.load(Ordering::Acquire), 2);
        assert_eq!(stats.dead_letters.load(Ordering::Acquire), 3);
        assert_eq!(stats.dead_letter_bytes.load(Ordering::Acquire), 3 * one);
        assert_eq!(spool.dead_letter_count().unwrap(), 3);
        // Bytes that are not JSON are kept exactly and shown as text.
        // Same cost as the others ("corrupt" is a byte shorter than "rejected"), so it pushes out
        // exactly one.
        spool.dead_letter(vec![dead_record(micros, b"not json")], DeadReason::Corrupt);
        spool.close();
        drop(spool);

        // The dump needs the spool closed; it refuses while a forwarder holds it.
        let holder = Spool::open(&opts).unwrap();
        assert!(matches!(
            dump_dead_letters(dir.path(), &mut Vec::new()),
            Err(DumpError::InUse)
        ));
        // Reopening recovers the table's bytes.
        assert_eq!(
            holder.stats().dead_letter_bytes.load(Ordering::Acquire),
            3 * one
        );
        holder.close();
        drop(holder);
        let mut out = Vec::new();
        assert_eq!(dump_dead_letters(dir.path(), &mut out).unwrap(), 3);
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // The oldest (n = 0, 1) went first; the corrupt one pushed out n = 2.
        assert_eq!(lines[0]["message"], serde_json::json!({"n": 3}));
        assert_eq!(lines[1]["message"], serde_json::json!({"n": 4}));
        assert_eq!(lines[0]["reason"], "rejected");
        assert_eq!(lines[0]["receivedAt"], "2026-01-01T10:00:00.000Z");
        assert_eq!(lines[2]["reason"], "corrupt");
        assert_eq!(lines[2]["text"], "not json");
        assert!(lines[0]["key"].as_u64().unwrap() < lines[1]["key"].as_u64().unwrap());
        // An empty or missing spool prints nothing.
        let empty = tempfile::tempdir().unwrap();
        assert!(dump_dead_letters(empty.path(), &mut Vec::new()).is_err());
    }

    #[tokio::test]
    async fn a_dead_writer_is_reported_and_refuses_appends() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&options(dir.path(), 1 << 20)).unwrap();
        assert!(spool.writer_alive() && !spool.writer_died());
        spool.crash_writer();
        assert!(spool.writer_died());
        assert_eq!(
            spool.append(&[r"{}".into()], SystemTime::now()).await,
            Err(SpoolError::Closed)
        );
        assert_eq!(spool.stats().bytes.load(Ordering::Acquire), 0);
        spool.close();
        // After a close the writer is gone on purpose: not "died".
        assert!(!spool.writer_died());
    }

    #[tokio::test]
    async fn record_returns_the_exact_stored_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&options(dir.path(), 1 << 20)).unwrap();
        let now = SystemTime::now();
        spool
            .append(&[r#"{"a":1}"#.into(), r#"{"b":"é"}"#.into()], now)
            .await
            .unwrap();
        let read = spool.read(None, 10, 1 << 20).unwrap();
        let (micros, bytes) = spool.record(read[1].pos).unwrap().unwrap();
        assert_eq!(micros, read[1].received_micros);
        assert_eq!(bytes, r#"{"b":"é"}"#.as_bytes());
        assert!(
            spool
                .record(Pos {
                    key: read[1].pos.key,
                    index: 9
                })
                .unwrap()
                .is_none()
        );
        spool.close();
    }
}
