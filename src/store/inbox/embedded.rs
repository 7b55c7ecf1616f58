//! The inbox in the embedded store: a write-ahead log of our own for what acknowledgements wait
//! on, redb for the state.
//!
//! An append is decided and logged by one thread, the inbox log thread: it takes every
//! operation waiting, decides each append's dedupe keys in arrival order (against what was
//! claimed since the last checkpoint, in memory, and against redb for older keys), writes the
//! batch's records to the log and syncs once, then answers. That sync is one small sequential
//! write, where a redb commit rewrites and syncs every B-tree page it touched and makes the
//! next transaction wait for it; acknowledgements no longer queue behind the worker's context
//! writes either. Completions are logged the same way.
//!
//! What the log holds since the last checkpoint (entries, claimed keys, completions) is kept
//! in memory as the *active* delta. Every `checkpoint_records` changes or `checkpoint_every`,
//! the thread freezes the delta at the log's current position and hands it to redb's
//! group-commit writer (entries still pending into `inbox`, keys into `inbox_keys`, completed
//! rows removed), `checkpoint_records` changes per transaction, so that no checkpoint holds
//! the writer longer than one of that size; the last transaction also records the position to
//! replay from in `whatsapp_meta`. Once it is durable, segments wholly before the position are
//! deleted. While the webhook is flooded ([`Inbox::set_flooded`]) checkpoints wait for
//! `flood_checkpoint_records` changes or `flood_checkpoint_every`, so that their B-tree work
//! and their flush come after the flood rather than in the middle of it.
//!
//! A segment is closed at `segment_bytes`, so starting one (a new file and a sync of its
//! directory, several milliseconds here) is rare rather than once per checkpoint. An entry
//! that is completed before its checkpoint never reaches redb at all, unless a checkpoint that
//! stopped part way may have written it (`Delta::maybe_written`): then its completion removes
//! the row. A failed checkpoint merges the frozen delta back; the next one carries both.
//!
//! At start-up the log from the recorded position on is replayed into a delta, which is
//! checkpointed before the inbox takes its first append: a crash loses nothing that was
//! acknowledged, and nothing is replayed twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use super::log::{self, AppendError, Position, Segment};
use super::{
    Appended, BACKEND, DEDUPE_TTL, EntryKey, INBOX, INBOX_KEYS, Inbox, InboxEntry, META, NewEntry,
    StoredEntry, be, now_millis,
};
use crate::store::StoreError;
use crate::store::embedded::{EmbeddedDb, WriterTotals};

/// Upper bound on operations logged with one sync.
const MAX_BATCH: usize = 1024;
const SEQ: &str = "inbox_seq";
/// Where replay starts: the first record not yet checkpointed (segment generation, byte offset).
const GENERATION: &str = "inbox_log_generation";
const OFFSET: &str = "inbox_log_offset";
const TAG_APPEND: u8 = 1;
const TAG_COMPLETE: u8 = 2;

/// The inbox log's batches (syncs, operations, busy time), for `handoff bench`'s report.
pub static INBOX_LOG_TOTALS: WriterTotals = WriterTotals::new();

/// When the log's contents move into redb.
///
/// A checkpoint writes its entries and keys into redb's B-trees and syncs them, and a log
/// sync that meets that flush at the disk waits for it: every acknowledgement in flight then
/// waits too. With 16,384 changes a checkpoint's commit took 65–75 ms and the log syncs
/// beside its flush 15–17.5 ms (against ≈ 0.5 ms otherwise). Smaller checkpoints flush less
/// at a time: with the inbox worker running, ingest p99 was 8.0–10.9 ms every 4,096 changes
/// against 8.8–12.8 ms every 16,384 (6 alternating pairs), at the same rate. Ack-only, without
/// the worker's commits, the larger ones do better (p99 6.9–7.6 against 7.5–9.1 ms), as the
/// sixth session found; the worker runs in production (docs/performance.md, eleventh session).
/// 4,096 changes are about 2,000 deliveries, a megabyte or so in memory and in the log.
///
/// During a flood a checkpoint takes what acknowledgements need most: at 4,096 changes they
/// came several times a second, and their B-tree inserts were most of redb's writer's CPU. So
/// while the webhook is flooded they wait, up to 65,536 changes (about 30,000 deliveries, some
/// 30 MB in memory, a second or two to replay after a crash; never more than
/// `checkpoint_bytes` of entries) or 30 s: a burst is acknowledged with no checkpoint beside
/// it, and a longer flood checkpoints 16 times less often, each key page rewritten once for
/// more keys (docs/performance.md, twelfth session).
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Changes (entries, keys, completions) since the last checkpoint that start the next,
    /// and the most one of its transactions writes.
    pub checkpoint_records: usize,
    /// The longest a change waits for its checkpoint.
    pub checkpoint_every: Duration,
    /// `checkpoint_records` while the webhook is flooded.
    pub flood_checkpoint_records: usize,
    /// `checkpoint_every` while the webhook is flooded.
    pub flood_checkpoint_every: Duration,
    /// Bytes of entries held in memory that start a checkpoint, flood or not: entries may be
    /// a few kilobytes each (a long text), and a flood's 65,536 changes must not hold
    /// hundreds of megabytes.
    pub checkpoint_bytes: usize,
    /// A segment this large is closed and the next one started.
    pub segment_bytes: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            checkpoint_records: 4_096,
            checkpoint_every: Duration::from_secs(2),
            flood_checkpoint_records: 65_536,
            flood_checkpoint_every: Duration::from_secs(30),
            checkpoint_bytes: 32 << 20,
            segment_bytes: 64 << 20,
        }
    }
}

/// The inbox in the embedded store (see the module documentation). Cheap to clone; the log
/// thread stops after the last clone is dropped.
#[derive(Clone)]
pub struct EmbeddedInbox {
    shared: Arc<Shared>,
    thread: Arc<LogThread>,
}

struct Shared {
    db: EmbeddedDb,
    dir: PathBuf,
    state: Mutex<State>,
    /// The webhook is flooded ([`Inbox::set_flooded`]): checkpoints wait longer.
    flooded: AtomicBool,
}

#[derive(Default)]
struct State {
    active: Delta,
    /// Being written to redb by a checkpoint.
    frozen: Option<Arc<Delta>>,
    /// Set when the log could not be cut back after a failed write: nothing more is logged.
    broken: Option<String>,
}

/// The inbox's changes since a checkpoint.
#[derive(Default, Clone)]
struct Delta {
    /// Durable entries not yet completed: seq → the stored entry's JSON.
    entries: BTreeMap<u64, Vec<u8>>,
    /// Dedupe keys claimed → expiry (ms since the epoch). Ordered, so that each part of a
    /// checkpoint inserts a range of keys and rewrites only the B-tree pages of that range:
    /// in hash order, every part of a large checkpoint rewrote most of the keys table.
    keys: BTreeMap<String, u64>,
    /// Completed entries that are not in `entries` (in redb, or in the frozen delta), or that
    /// may be in redb although they are (see `maybe_written`).
    completed: BTreeSet<u64>,
    last_seq: u64,
    /// Entries up to this seq may already be in redb although they are in `entries`: a
    /// checkpoint is written in parts, and one that failed, or a process that stopped, part
    /// way left some of them there. Completing one of them must remove its row too.
    maybe_written: u64,
    /// The bytes of `entries`.
    entry_bytes: usize,
}

impl Delta {
    fn changes(&self) -> usize {
        self.entries.len() + self.keys.len() + self.completed.len()
    }

    /// An entry is completed. One that this delta holds and that never reached redb is simply
    /// forgotten: it never reaches redb at all.
    fn complete(&mut self, seq: u64) {
        match self.entries.remove(&seq) {
            Some(bytes) => {
                self.entry_bytes -= bytes.len();
                if seq <= self.maybe_written {
                    self.completed.insert(seq);
                }
            }
            None => {
                self.completed.insert(seq);
            }
        }
    }

    fn add_entry(&mut self, seq: u64, bytes: Vec<u8>) {
        self.entry_bytes += bytes.len();
        if let Some(old) = self.entries.insert(seq, bytes) {
            self.entry_bytes -= old.len();
        }
    }

    /// Adds the changes of a later delta to one whose checkpoint failed, part way or not.
    fn absorb(&mut self, later: Delta) {
        self.maybe_written = self
            .maybe_written
            .max(self.last_seq)
            .max(later.maybe_written);
        for (seq, bytes) in later.entries {
            self.add_entry(seq, bytes);
        }
        self.keys.extend(later.keys);
        for seq in later.completed {
            self.complete(seq);
        }
        self.last_seq = self.last_seq.max(later.last_seq);
    }
}

type Encoded = Vec<(Vec<String>, StoredEntry, Vec<u8>)>;

enum Op {
    Append(Encoded, oneshot::Sender<Result<Vec<Appended>, StoreError>>),
    Complete(Vec<u64>, oneshot::Sender<Result<(), StoreError>>),
}

/// The log thread's queue; joining the thread on drop releases the store before the drop
/// returns, so the same directory can be opened again at once.
struct LogThread {
    ops: Option<mpsc::Sender<Op>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogThread {
    fn drop(&mut self) {
        self.ops.take();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl EmbeddedInbox {
    pub async fn new(db: EmbeddedDb) -> Result<Self, StoreError> {
        Self::with_tuning(db, Tuning::default()).await
    }

    /// Opens the inbox: replays the log since the last checkpoint into redb, then starts the
    /// log thread on a new segment.
    pub async fn with_tuning(db: EmbeddedDb, tuning: Tuning) -> Result<Self, StoreError> {
        let (seq, from) = db
            .write(|txn| {
                txn.open_table(INBOX).map_err(be)?;
                txn.open_table(INBOX_KEYS).map_err(be)?;
                let meta = txn.open_table(META).map_err(be)?;
                let get = |name| -> Result<u64, StoreError> {
                    Ok(meta.get(name).map_err(be)?.map(|v| v.value()).unwrap_or(0))
                };
                let from = Position {
                    generation: get(GENERATION)?,
                    offset: get(OFFSET)?,
                };
                Ok((get(SEQ)?, from))
            })
            .await?;
        let dir = db.dir().join("inbox-log");
        let replay_dir = dir.clone();
        let (replayed, start) = tokio::task::spawn_blocking(move || replay(&replay_dir, from))
            .await
            .map_err(be)??;
        if replayed.changes() > 0 {
            tracing::info!(
                entries = replayed.entries.len(),
                completions = replayed.completed.len(),
                "inbox log replayed"
            );
        }
        let next_seq = seq.max(replayed.last_seq);
        let start_at = Position {
            generation: start,
            offset: 0,
        };
        db.write(move |txn| write_checkpoint(txn, &replayed, start_at))
            .await?;
        let segment_dir = dir.clone();
        let segment = tokio::task::spawn_blocking(move || {
            log::remove_before(&segment_dir, start);
            Segment::create(&segment_dir, start)
        })
        .await
        .map_err(be)?
        .map_err(|e| {
            StoreError::backend(BACKEND, format!("cannot create an inbox log segment: {e}"))
        })?;

        let shared = Arc::new(Shared {
            db,
            dir,
            state: Mutex::default(),
            flooded: AtomicBool::new(false),
        });
        let (ops, rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("inbox-log".into())
            .spawn(move || {
                LogWriter {
                    shared: thread_shared,
                    segment,
                    next_seq,
                    tuning,
                    last_checkpoint: Instant::now(),
                    buf: Vec::with_capacity(1 << 16),
                    checkpointed: mpsc::channel(),
                    checkpoint: None,
                }
                .run(&rx);
            })
            .map_err(be)?;
        Ok(Self {
            shared,
            thread: Arc::new(LogThread {
                ops: Some(ops),
                handle: Some(handle),
            }),
        })
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.thread
            .ops
            .as_ref()
            .ok_or_else(|| StoreError::unavailable(BACKEND, "closing"))?
            .send(op)
            .map_err(|_| StoreError::unavailable(BACKEND, "the inbox log thread stopped"))
    }
}

/// Reads the log from `from` on into one delta. Returns it and the generation the next segment
/// must have (above every segment on disk, so none is ever written twice).
fn replay(dir: &Path, from: Position) -> Result<(Delta, u64), StoreError> {
    let io = |e: std::io::Error| {
        StoreError::backend(BACKEND, format!("inbox log {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let generations = log::generations(dir).map_err(io)?;
    // What the log holds since the position may be in redb in part: a checkpoint written in
    // parts, stopped before its last.
    let mut delta = Delta {
        maybe_written: u64::MAX,
        ..Delta::default()
    };
    for &g in generations.iter().filter(|g| **g >= from.generation) {
        let bytes = log::read_segment(dir, g).map_err(io)?;
        let skip = if g == from.generation {
            from.offset as usize
        } else {
            0
        };
        let unread = bytes.get(skip..).unwrap_or_default();
        for (n, record) in log::records(unread).into_iter().enumerate() {
            apply_replayed(&mut delta, record).ok_or_else(|| {
                StoreError::backend(
                    BACKEND,
                    format!("inbox log segment {g:x}, record {n}: not an inbox record"),
                )
            })?;
        }
    }
    let next = generations
        .last()
        .map_or(from.generation, |last| (last + 1).max(from.generation));
    Ok((delta, next))
}

fn apply_replayed(delta: &mut Delta, record: &[u8]) -> Option<()> {
    let mut r = Reader(record);
    match r.u8()? {
        TAG_APPEND => {
            let seq = r.u64()?;
            let expires = r.u64()?;
            let count = r.u32()?;
            let mut keys = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let len = r.u32()? as usize;
                keys.push(std::str::from_utf8(r.take(len)?).ok()?.to_owned());
            }
            // A record repeated after a write that failed but reached the disk anyway.
            if keys.iter().any(|k| delta.keys.contains_key(k)) {
                return Some(());
            }
            delta.keys.extend(keys.into_iter().map(|k| (k, expires)));
            delta.add_entry(seq, r.0.to_vec());
            delta.last_seq = delta.last_seq.max(seq);
        }
        TAG_COMPLETE => {
            let count = r.u32()?;
            for _ in 0..count {
                let seq = r.u64()?;
                delta.complete(seq);
            }
        }
        _ => return None,
    }
    Some(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Writes a whole delta into redb and the position replay starts from (see [`write_changes`]).
fn write_checkpoint(
    txn: &WriteTransaction,
    delta: &Delta,
    from: Position,
) -> Result<(), StoreError> {
    write_changes(txn, delta, 0..usize::MAX, Some(from))
}

/// Writes the changes of a delta numbered `range` (entries still pending, then keys, then
/// completed rows removed, in the delta's own order) into redb, and with `done` the position
/// replay starts from. Every step is idempotent, so a checkpoint that failed half way, or
/// whose last part never came, is simply written again from the old position.
fn write_changes(
    txn: &WriteTransaction,
    delta: &Delta,
    range: std::ops::Range<usize>,
    done: Option<Position>,
) -> Result<(), StoreError> {
    let mut inbox = txn.open_table(INBOX).map_err(be)?;
    let mut keys = txn.open_table(INBOX_KEYS).map_err(be)?;
    let changes = delta
        .entries
        .iter()
        .map(|(seq, bytes)| Change::Entry(*seq, bytes))
        .chain(delta.keys.iter().map(|(key, exp)| Change::Key(key, *exp)))
        .chain(delta.completed.iter().map(|seq| Change::Completed(*seq)));
    for change in changes.skip(range.start).take(range.len()) {
        match change {
            Change::Entry(seq, bytes) => inbox.insert(seq, bytes.as_slice()).map(drop),
            Change::Key(key, expires) => keys.insert(key.as_str(), expires).map(drop),
            Change::Completed(seq) => inbox.remove(seq).map(drop),
        }
        .map_err(be)?;
    }
    if let Some(from) = done {
        let mut meta = txn.open_table(META).map_err(be)?;
        let seq = meta.get(SEQ).map_err(be)?.map_or(0, |v| v.value());
        meta.insert(SEQ, seq.max(delta.last_seq)).map_err(be)?;
        meta.insert(GENERATION, from.generation).map_err(be)?;
        meta.insert(OFFSET, from.offset).map_err(be)?;
    }
    Ok(())
}

enum Change<'a> {
    Entry(u64, &'a Vec<u8>),
    Key(&'a String, u64),
    Completed(u64),
}

/// An operation's outcome, answered once its batch is on disk.
enum Plan {
    Append {
        reply: oneshot::Sender<Result<Vec<Appended>, StoreError>>,
        result: Vec<Appended>,
        fresh: Vec<(u64, Vec<u8>)>,
        claimed: Vec<String>,
    },
    Refused(
        oneshot::Sender<Result<Vec<Appended>, StoreError>>,
        StoreError,
    ),
    Complete(Vec<u64>, oneshot::Sender<Result<(), StoreError>>),
}

/// The log thread.
struct LogWriter {
    shared: Arc<Shared>,
    segment: Segment,
    next_seq: u64,
    tuning: Tuning,
    last_checkpoint: Instant,
    buf: Vec<u8>,
    /// Checkpoint outcomes, sent by their completions on redb's writer thread and applied
    /// here: a completion holding the inbox itself could drop the last handle on the store
    /// on the writer thread, whose drop joins that very thread.
    checkpointed: (CheckpointDone, mpsc::Receiver<CheckpointOutcome>),
    checkpoint: Option<Checkpoint>,
}

/// A checkpoint being written, one transaction at a time.
struct Checkpoint {
    frozen: Arc<Delta>,
    /// Where replay starts once it is written.
    from: Position,
    /// Changes written so far, and in all.
    written: usize,
    total: usize,
}

/// A checkpoint transaction's outcome, and the changes written once it is committed.
type CheckpointOutcome = (Result<(), StoreError>, usize);
type CheckpointDone = mpsc::Sender<CheckpointOutcome>;

/// While a checkpoint is in flight, how often the idle log thread looks for its outcome.
const CHECKPOINT_POLL: Duration = Duration::from_millis(5);

impl LogWriter {
    fn run(mut self, ops: &mpsc::Receiver<Op>) {
        loop {
            let idle = if self.checkpoint.is_some() {
                CHECKPOINT_POLL.min(self.tuning.checkpoint_every)
            } else {
                self.tuning.checkpoint_every
            };
            match ops.recv_timeout(idle) {
                Ok(first) => {
                    let mut batch = Vec::with_capacity(64);
                    batch.push(first);
                    while batch.len() < MAX_BATCH {
                        match ops.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    self.log_batch(batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.segment.position().offset >= self.tuning.segment_bytes
                && let Err(err) = self.segment.rotate()
            {
                tracing::warn!(error = %err, "cannot start the next inbox log segment; the current one goes on");
            }
            while let Ok((result, written)) = self.checkpointed.1.try_recv() {
                self.checkpoint_written(result, written);
            }
            self.maybe_checkpoint();
        }
    }

    fn log_batch(&mut self, batch: Vec<Op>) {
        let started = Instant::now();
        let size = batch.len();
        self.buf.clear();
        let mut plans = Vec::with_capacity(size);
        let shared = self.shared.clone();
        {
            let mut state = lock(&shared.state);
            if let Some(why) = &state.broken {
                let err = StoreError::unavailable(BACKEND, why.clone());
                for op in batch {
                    match op {
                        Op::Append(_, reply) => {
                            let _ = reply.send(Err(err.clone()));
                        }
                        Op::Complete(_, reply) => {
                            let _ = reply.send(Err(err.clone()));
                        }
                    }
                }
                return;
            }
            let now = now_millis();
            let expires = now + DEDUPE_TTL.as_millis() as u64;
            let mut older = OlderKeys::new(&shared.db, state.frozen.clone());
            for op in batch {
                plans.push(match op {
                    Op::Append(encoded, reply) => {
                        self.plan_append(&mut state, &mut older, encoded, reply, now, expires)
                    }
                    Op::Complete(seqs, reply) => {
                        log::frame(&mut self.buf, |b| {
                            b.push(TAG_COMPLETE);
                            b.extend_from_slice(&(seqs.len() as u32).to_le_bytes());
                            for seq in &seqs {
                                b.extend_from_slice(&seq.to_le_bytes());
                            }
                        });
                        Plan::Complete(seqs, reply)
                    }
                });
            }
            state.active.last_seq = self.next_seq;
        }

        let written = if self.buf.is_empty() {
            Ok(())
        } else {
            self.segment.append_durably(&self.buf)
        };
        metrics::histogram!("handoff_inbox_log_batch_size").record(size as f64);
        metrics::histogram!("handoff_inbox_log_sync_seconds")
            .record(started.elapsed().as_secs_f64());
        INBOX_LOG_TOTALS.record(size, started.elapsed());

        let mut state = lock(&shared.state);
        let failure = match written {
            Ok(()) => None,
            Err(AppendError::Failed(err)) => {
                tracing::error!(error = %err, "cannot write the inbox log");
                Some(StoreError::unavailable(BACKEND, err))
            }
            Err(AppendError::Broken(why)) => {
                tracing::error!(error = %why, "the inbox log is broken; appends are refused until restart");
                state.broken = Some(why.clone());
                Some(StoreError::unavailable(BACKEND, why))
            }
        };
        for plan in plans {
            match (plan, &failure) {
                (
                    Plan::Append {
                        reply,
                        result,
                        fresh,
                        ..
                    },
                    None,
                ) => {
                    for (seq, bytes) in fresh {
                        state.active.add_entry(seq, bytes);
                    }
                    let _ = reply.send(Ok(result));
                }
                (Plan::Append { reply, claimed, .. }, Some(err)) => {
                    for key in claimed {
                        state.active.keys.remove(&key);
                    }
                    let _ = reply.send(Err(err.clone()));
                }
                (Plan::Refused(reply, err), _) => {
                    let _ = reply.send(Err(err));
                }
                (Plan::Complete(seqs, reply), None) => {
                    for seq in seqs {
                        state.active.complete(seq);
                    }
                    let _ = reply.send(Ok(()));
                }
                (Plan::Complete(_, reply), Some(err)) => {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Decides one append's entries (every key checked before any is claimed, so an error
    /// leaves no claim of its own; appends before it in the batch count), claims the fresh
    /// ones' keys and frames their records.
    fn plan_append(
        &mut self,
        state: &mut State,
        older: &mut OlderKeys<'_>,
        encoded: Encoded,
        reply: oneshot::Sender<Result<Vec<Appended>, StoreError>>,
        now: u64,
        expires: u64,
    ) -> Plan {
        let mut verdicts = Vec::with_capacity(encoded.len());
        let mut fresh_keys: Vec<&str> = Vec::new();
        for (dedupe_keys, _, _) in &encoded {
            let mut duplicate = false;
            for key in dedupe_keys {
                // A duplicate inside the same delivery counts too.
                let claimed = if fresh_keys.contains(&key.as_str()) {
                    Ok(true)
                } else {
                    older.claimed(&state.active, key, now)
                };
                match claimed {
                    Ok(true) => {
                        duplicate = true;
                        break;
                    }
                    Ok(false) => {}
                    Err(err) => return Plan::Refused(reply, err),
                }
            }
            if !duplicate {
                fresh_keys.extend(dedupe_keys.iter().map(String::as_str));
            }
            verdicts.push(!duplicate);
        }
        let mut result = Vec::with_capacity(encoded.len());
        let mut fresh = Vec::new();
        let mut claimed = Vec::new();
        for ((dedupe_keys, stored, bytes), is_fresh) in encoded.into_iter().zip(verdicts) {
            if !is_fresh {
                result.push(Appended::Duplicate);
                continue;
            }
            self.next_seq += 1;
            let seq = self.next_seq;
            log::frame(&mut self.buf, |b| {
                b.push(TAG_APPEND);
                b.extend_from_slice(&seq.to_le_bytes());
                b.extend_from_slice(&expires.to_le_bytes());
                // u32 lengths: keys come from outside (a provider's message id), and only the
                // webhook's body limit bounds them.
                b.extend_from_slice(&(dedupe_keys.len() as u32).to_le_bytes());
                for key in &dedupe_keys {
                    b.extend_from_slice(&(key.len() as u32).to_le_bytes());
                    b.extend_from_slice(key.as_bytes());
                }
                b.extend_from_slice(&bytes);
            });
            for key in &dedupe_keys {
                state.active.keys.insert(key.clone(), expires);
            }
            claimed.extend(dedupe_keys);
            result.push(Appended::Fresh(Box::new(stored.into_entry(seq))));
            fresh.push((seq, bytes));
        }
        Plan::Append {
            reply,
            result,
            fresh,
            claimed,
        }
    }

    /// Moves the changes since the last checkpoint into redb when enough have gathered or
    /// the oldest has waited long enough (longer while the webhook is flooded), unless a
    /// checkpoint is still being written.
    fn maybe_checkpoint(&mut self) {
        if self.checkpoint.is_some() {
            return;
        }
        let (records, every) = if self.shared.flooded.load(Ordering::Relaxed) {
            (
                self.tuning.flood_checkpoint_records,
                self.tuning.flood_checkpoint_every,
            )
        } else {
            (self.tuning.checkpoint_records, self.tuning.checkpoint_every)
        };
        let due = {
            let state = lock(&self.shared.state);
            let changes = state.active.changes();
            state.frozen.is_none()
                && state.broken.is_none()
                && changes > 0
                && (changes >= records
                    || state.active.entry_bytes >= self.tuning.checkpoint_bytes
                    || self.last_checkpoint.elapsed() >= every)
        };
        if !due {
            return;
        }
        // Records from here on belong to the next delta.
        let from = self.segment.position();
        self.last_checkpoint = Instant::now();
        let frozen = {
            let mut state = lock(&self.shared.state);
            let frozen = Arc::new(std::mem::take(&mut state.active));
            state.frozen = Some(frozen.clone());
            frozen
        };
        let total = frozen.changes();
        metrics::histogram!("handoff_inbox_checkpoint_changes").record(total as f64);
        self.checkpoint = Some(Checkpoint {
            frozen,
            from,
            written: 0,
            total,
        });
        self.write_next_part();
    }

    /// Hands the checkpoint's next transaction to redb's writer.
    fn write_next_part(&mut self) {
        let Some(checkpoint) = &self.checkpoint else {
            return;
        };
        let start = checkpoint.written;
        let end = start
            .saturating_add(self.tuning.checkpoint_records.max(1))
            .min(checkpoint.total);
        let done = (end == checkpoint.total).then_some(checkpoint.from);
        let frozen = checkpoint.frozen.clone();
        // The outcome comes back to this thread (see `checkpointed`). An inbox closed before
        // it arrives leaves its segments to the next start, which knows the checkpoint.
        let reply = self.checkpointed.0.clone();
        let submitted = self.shared.db.submit(move |txn| {
            let written = write_changes(txn, &frozen, start..end, done);
            drop(frozen);
            Box::new(move |committed: Result<(), StoreError>| {
                let _ = reply.send((committed.and(written), end));
            })
        });
        if let Err(err) = submitted {
            self.checkpoint_written(Err(err), start);
        }
    }

    /// A checkpoint transaction is committed (or failed): the next one, or the end.
    fn checkpoint_written(&mut self, result: Result<(), StoreError>, written: usize) {
        let Some(checkpoint) = &mut self.checkpoint else {
            return;
        };
        match result {
            Ok(()) if written < checkpoint.total => {
                checkpoint.written = written;
                self.write_next_part();
            }
            result => {
                let from = checkpoint.from;
                self.checkpoint = None;
                finish_checkpoint(&self.shared, result, from);
            }
        }
    }
}

fn finish_checkpoint(shared: &Shared, result: Result<(), StoreError>, from: Position) {
    let mut state = lock(&shared.state);
    let Some(frozen) = state.frozen.take() else {
        return;
    };
    match result {
        Ok(()) => {
            drop(state);
            log::remove_before(&shared.dir, from.generation);
            drop_elsewhere(frozen);
        }
        Err(err) => {
            tracing::warn!(error = %err, "inbox checkpoint failed; its changes wait for the next one");
            let mut merged = Arc::unwrap_or_clone(frozen);
            merged.absorb(std::mem::take(&mut state.active));
            state.active = merged;
        }
    }
}

/// Frees a checkpointed delta. A large one (a flood's: tens of thousands of entries and keys,
/// each its own allocation) is freed on a thread of its own, not on the log thread, where
/// every acknowledgement in flight would wait for it: 65,536 changes took 2.4–3.3 ms to free
/// here, about once a second in a sustained flood.
fn drop_elsewhere(delta: Arc<Delta>) {
    const INLINE: usize = 4_096;
    if delta.changes() <= INLINE {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("inbox-free".into())
        .spawn(move || drop(delta));
    if let Err(err) = spawned {
        tracing::debug!(error = %err, "cannot start a thread to free a checkpoint; freed here");
    }
}

/// Looks keys up in memory (active delta, then the frozen one) and then in redb, in one read
/// snapshot per batch taken after the frozen delta was seen: if the checkpoint finished
/// before, redb already holds its keys; if not, the frozen delta does.
struct OlderKeys<'a> {
    db: &'a EmbeddedDb,
    frozen: Option<Arc<Delta>>,
    table: Option<redb::ReadOnlyTable<&'static str, u64>>,
}

impl<'a> OlderKeys<'a> {
    fn new(db: &'a EmbeddedDb, frozen: Option<Arc<Delta>>) -> Self {
        Self {
            db,
            frozen,
            table: None,
        }
    }

    fn claimed(&mut self, active: &Delta, key: &str, now: u64) -> Result<bool, StoreError> {
        if let Some(expires) = active
            .keys
            .get(key)
            .or_else(|| self.frozen.as_ref().and_then(|frozen| frozen.keys.get(key)))
        {
            return Ok(*expires > now);
        }
        if self.table.is_none() {
            let txn = self.db.database().begin_read().map_err(be)?;
            self.table = Some(txn.open_table(INBOX_KEYS).map_err(be)?);
        }
        let table = self.table.as_ref().expect("opened above");
        Ok(table.get(key).map_err(be)?.is_some_and(|v| v.value() > now))
    }
}

#[async_trait]
impl Inbox for EmbeddedInbox {
    async fn append(&self, entries: Vec<NewEntry>) -> Result<Vec<Appended>, StoreError> {
        // Encoded here, so the log thread (the stage every delivery passes through) only
        // copies bytes.
        let mut encoded = Vec::with_capacity(entries.len());
        for entry in entries {
            let id = entry.dedupe_keys.first().cloned().unwrap_or_default();
            let stored = StoredEntry {
                id,
                partition: entry.partition,
                event: entry.event,
            };
            let bytes = serde_json::to_vec(&stored).map_err(be)?;
            encoded.push((entry.dedupe_keys, stored, bytes));
        }
        let (tx, rx) = oneshot::channel();
        self.send(Op::Append(encoded, tx))?;
        rx.await
            .map_err(|_| StoreError::unavailable(BACKEND, "the inbox write did not complete"))?
    }

    async fn pending(&self, limit: usize) -> Result<Vec<InboxEntry>, StoreError> {
        // Memory first, then redb: a checkpoint that finishes in between only makes redb hold
        // rows that memory already listed (merged by seq).
        let (mut merged, completed) = {
            let state = lock(&self.shared.state);
            let mut merged = BTreeMap::new();
            let mut completed = state.active.completed.clone();
            if let Some(frozen) = &state.frozen {
                completed.extend(frozen.completed.iter().copied());
                merged.extend(
                    frozen
                        .entries
                        .iter()
                        .filter(|(seq, _)| !state.active.completed.contains(seq))
                        .take(limit)
                        .map(|(seq, bytes)| (*seq, bytes.clone())),
                );
            }
            merged.extend(
                state
                    .active
                    .entries
                    .iter()
                    .take(limit)
                    .map(|(seq, bytes)| (*seq, bytes.clone())),
            );
            (merged, completed)
        };
        let stored = self
            .shared
            .db
            .read(move |txn| {
                let table = txn.open_table(INBOX).map_err(be)?;
                let mut out = Vec::new();
                for item in table.iter().map_err(be)? {
                    let (k, v) = item.map_err(be)?;
                    if completed.contains(&k.value()) {
                        continue;
                    }
                    out.push((k.value(), v.value().to_vec()));
                    if out.len() == limit {
                        break;
                    }
                }
                Ok(out)
            })
            .await?;
        merged.extend(stored);
        merged
            .into_iter()
            .take(limit)
            .map(|(seq, bytes)| {
                let stored: StoredEntry = serde_json::from_slice(&bytes).map_err(be)?;
                Ok(stored.into_entry(seq))
            })
            .collect()
    }

    async fn complete(&self, done: Vec<EntryKey>) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.send(Op::Complete(done.into_iter().map(|k| k.seq).collect(), tx))?;
        rx.await
            .map_err(|_| StoreError::unavailable(BACKEND, "the inbox write did not complete"))?
    }

    fn set_flooded(&self, flooded: bool) {
        self.shared.flooded.store(flooded, Ordering::Relaxed);
    }

    /// A round trip through the log: an empty completion record written and synced, so a
    /// replica whose log cannot take writes (a full or failing disk, a log cut back in vain)
    /// is taken out of rotation instead of answering every delivery 503.
    async fn check(&self) -> Option<Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let logged = match self.send(Op::Complete(Vec::new(), tx)) {
            Ok(()) => rx.await.unwrap_or_else(|_| {
                Err(StoreError::unavailable(
                    BACKEND,
                    "the inbox log thread stopped",
                ))
            }),
            Err(err) => Err(err),
        };
        Some(logged)
    }

    async fn purge_expired(&self) -> Result<usize, StoreError> {
        let now = now_millis();
        self.shared
            .db
            .write(move |txn| {
                let mut table = txn.open_table(INBOX_KEYS).map_err(be)?;
                Ok(table
                    .extract_if(|_, expires| expires <= now)
                    .map_err(be)?
                    .count())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeliveryStatus, StatusUpdate};
    use crate::store::inbox::InboxEvent;
    use redb::ReadableTableMetadata;

    fn entry(keys: &[&str], partition: &str) -> NewEntry {
        NewEntry {
            dedupe_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            partition: partition.into(),
            event: InboxEvent::Status(StatusUpdate::new(
                keys[0],
                DeliveryStatus::Sent,
                chrono::Utc::now(),
            )),
        }
    }

    /// Checkpoints only when the test says so (by reopening with another tuning).
    const NEVER: Tuning = Tuning {
        checkpoint_records: usize::MAX,
        checkpoint_every: Duration::from_secs(3600),
        flood_checkpoint_records: usize::MAX,
        flood_checkpoint_every: Duration::from_secs(3600),
        checkpoint_bytes: usize::MAX,
        segment_bytes: u64::MAX,
    };

    async fn open(dir: &Path, tuning: Tuning) -> EmbeddedInbox {
        EmbeddedInbox::with_tuning(EmbeddedDb::open(dir).unwrap(), tuning)
            .await
            .unwrap()
    }

    async fn fresh(inbox: &EmbeddedInbox, key: &str) -> InboxEntry {
        match inbox
            .append(vec![entry(&[key], "p")])
            .await
            .unwrap()
            .remove(0)
        {
            Appended::Fresh(e) => *e,
            Appended::Duplicate => panic!("{key} was a duplicate"),
        }
    }

    /// `callers` appends at once, each key sent by two of them (the second a moment later);
    /// how many were fresh.
    async fn race_for_keys(inbox: &EmbeddedInbox, callers: usize) -> usize {
        let tasks: Vec<_> = (0..callers)
            .map(|i| {
                let inbox = inbox.clone();
                tokio::spawn(async move {
                    if i % 2 == 1 {
                        tokio::task::yield_now().await;
                    }
                    inbox
                        .append(vec![entry(&[&format!("k{}", i / 2)], "p")])
                        .await
                })
            })
            .collect();
        let mut fresh = 0;
        for task in tasks {
            let out = task.await.unwrap().unwrap();
            fresh += out
                .iter()
                .filter(|a| matches!(a, Appended::Fresh(_)))
                .count();
        }
        fresh
    }

    fn ids(entries: &[InboxEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.id.as_str()).collect()
    }

    /// (rows in redb's inbox table, keys in redb's key table)
    async fn in_redb(inbox: &EmbeddedInbox) -> (usize, usize) {
        inbox
            .shared
            .db
            .read(|txn| {
                let rows = txn.open_table(INBOX).map_err(be)?.len().map_err(be)?;
                let keys = txn.open_table(INBOX_KEYS).map_err(be)?.len().map_err(be)?;
                Ok((rows as usize, keys as usize))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_key_is_claimed_once_even_within_one_delivery_and_after_completion() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = open(dir.path(), Tuning::default()).await;
        let out = inbox
            .append(vec![
                entry(&["eg:1", "msg:a"], "p1"),
                entry(&["eg:2", "msg:a"], "p1"),
                entry(&["eg:3"], "p2"),
            ])
            .await
            .unwrap();
        assert!(matches!(out[0], Appended::Fresh(_)));
        assert_eq!(out[1], Appended::Duplicate);
        assert!(matches!(out[2], Appended::Fresh(_)));

        let pending = inbox.pending(10).await.unwrap();
        assert_eq!(pending.len(), 2);
        assert!(pending[0].seq < pending[1].seq);
        inbox.complete(vec![pending[0].key()]).await.unwrap();
        assert_eq!(inbox.pending(10).await.unwrap().len(), 1);

        // A redelivery after completion is still a duplicate (the key outlives the entry).
        let again = inbox.append(vec![entry(&["eg:1"], "p1")]).await.unwrap();
        assert_eq!(again, vec![Appended::Duplicate]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_log_batches_and_each_key_is_fresh_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = open(dir.path(), Tuning::default()).await;
        // 200 callers at once, every key sent by two of them: exactly one of each pair wins,
        // whichever log batch carries it.
        assert_eq!(race_for_keys(&inbox, 200).await, 100);
        let pending = inbox.pending(1000).await.unwrap();
        assert_eq!(pending.len(), 100);
        let mut seqs: Vec<u64> = pending.iter().map(|e| e.seq).collect();
        seqs.dedup();
        assert_eq!(seqs.len(), 100, "sequence numbers are unique");
    }

    #[tokio::test]
    async fn what_was_acknowledged_survives_a_restart_without_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = open(dir.path(), NEVER).await;
        let a = fresh(&inbox, "a").await;
        let b = fresh(&inbox, "b").await;
        fresh(&inbox, "c").await;
        inbox.complete(vec![b.key()]).await.unwrap();
        assert_eq!(in_redb(&inbox).await, (0, 0), "nothing checkpointed yet");
        drop(inbox);

        // The log is replayed: pending entries, their order and seqs, and every claim.
        let inbox = open(dir.path(), NEVER).await;
        let pending = inbox.pending(10).await.unwrap();
        assert_eq!(ids(&pending), vec!["a", "c"]);
        assert_eq!(pending[0], a);
        assert_eq!(
            in_redb(&inbox).await,
            (2, 3),
            "replay is checkpointed at once"
        );
        for key in ["a", "b", "c"] {
            let again = inbox.append(vec![entry(&[key], "p")]).await.unwrap();
            assert_eq!(again, vec![Appended::Duplicate], "{key}");
        }
        let d = fresh(&inbox, "d").await;
        assert!(d.seq > pending[1].seq, "seqs keep rising after a restart");
        assert_eq!(
            log::generations(&dir.path().join("inbox-log"))
                .unwrap()
                .len(),
            1,
            "replayed segments are deleted"
        );

        // Completing a replayed entry (a row in redb) is remembered across the next restart.
        inbox.complete(vec![a.key()]).await.unwrap();
        drop(inbox);
        let inbox = open(dir.path(), NEVER).await;
        assert_eq!(ids(&inbox.pending(10).await.unwrap()), vec!["c", "d"]);
    }

    #[tokio::test]
    async fn checkpoints_move_the_log_into_redb_and_delete_its_segments() {
        let dir = tempfile::tempdir().unwrap();
        let tuning = Tuning {
            // One change per transaction: every checkpoint is written in parts.
            checkpoint_records: 1,
            checkpoint_every: Duration::from_millis(10),
            // A new segment after every batch.
            segment_bytes: 1,
            ..NEVER
        };
        let inbox = open(dir.path(), tuning).await;
        let a = fresh(&inbox, "a").await;
        fresh(&inbox, "b").await;
        until(&inbox, dir.path(), |redb, segments| {
            redb == (2, 2) && segments <= 1
        })
        .await;
        assert_eq!(ids(&inbox.pending(10).await.unwrap()), vec!["a", "b"]);

        inbox.complete(vec![a.key()]).await.unwrap();
        assert_eq!(ids(&inbox.pending(10).await.unwrap()), vec!["b"]);
        until(&inbox, dir.path(), |redb, _| redb == (1, 2)).await;
        // A key known only to redb still makes a duplicate.
        drop(inbox);
        let inbox = open(dir.path(), NEVER).await;
        assert_eq!(
            inbox.append(vec![entry(&["a"], "p")]).await.unwrap(),
            vec![Appended::Duplicate]
        );
        assert_eq!(ids(&inbox.pending(10).await.unwrap()), vec!["b"]);
    }

    /// Waits (10 s at most) until `done` holds of what redb holds (rows, keys) and of how many
    /// segments of the inbox log are left on disk.
    async fn until(
        inbox: &EmbeddedInbox,
        dir: &Path,
        done: impl Fn((usize, usize), usize) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let redb = in_redb(inbox).await;
            let segments = log::generations(&dir.join("inbox-log")).unwrap().len();
            if done(redb, segments) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redb {redb:?}, {segments} segments"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn checkpoints_wait_while_the_webhook_is_flooded_up_to_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let tuning = Tuning {
            checkpoint_records: 4,
            checkpoint_every: Duration::from_millis(1),
            flood_checkpoint_records: 30,
            flood_checkpoint_every: Duration::from_secs(3600),
            segment_bytes: 1,
            ..NEVER
        };
        let inbox = open(dir.path(), tuning).await;
        inbox.set_flooded(true);
        // 10 entries and their keys: 20 changes, fewer than a flood's 30.
        for i in 0..10 {
            fresh(&inbox, &format!("k{i}")).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(in_redb(&inbox).await, (0, 0), "flooded: no checkpoint yet");
        assert_eq!(inbox.pending(100).await.unwrap().len(), 10);
        // The flood's bound, 30 changes, starts one all the same (written 4 at a time).
        for i in 10..15 {
            fresh(&inbox, &format!("k{i}")).await;
        }
        until(&inbox, dir.path(), |redb, segments| {
            redb == (15, 15) && segments <= 1
        })
        .await;
        // Still flooded: 2 changes wait, though the calm bound is 1 ms.
        fresh(&inbox, "after").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(in_redb(&inbox).await, (15, 15), "still flooded");
        // The flood is over: the calm bounds again.
        inbox.set_flooded(false);
        until(&inbox, dir.path(), |redb, _| redb == (16, 16)).await;
        let pending = inbox.pending(100).await.unwrap();
        assert_eq!(pending.len(), 16);
        assert_eq!(pending.last().map(|e| e.id.as_str()), Some("after"));
    }

    #[tokio::test]
    async fn entries_holding_too_many_bytes_start_a_checkpoint_even_during_a_flood() {
        let dir = tempfile::tempdir().unwrap();
        let tuning = Tuning {
            checkpoint_records: 4,
            checkpoint_every: Duration::from_millis(1),
            checkpoint_bytes: 2_000,
            ..NEVER
        };
        let inbox = open(dir.path(), tuning).await;
        inbox.set_flooded(true);
        for i in 0..4 {
            fresh(&inbox, &format!("k{i}")).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            in_redb(&inbox).await,
            (0, 0),
            "under the bytes: no checkpoint"
        );
        let held = lock(&inbox.shared.state).active.entry_bytes;
        assert!((400..2_000).contains(&held), "{held} bytes held");
        for i in 4..40 {
            fresh(&inbox, &format!("k{i}")).await;
        }
        until(&inbox, dir.path(), |(rows, _), _| rows > 0).await;
    }

    #[tokio::test]
    async fn an_entry_completed_after_a_checkpoint_stopped_part_way_is_not_pending_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let inbox = EmbeddedInbox::with_tuning(db.clone(), NEVER).await.unwrap();
        let a = fresh(&inbox, "a").await;
        fresh(&inbox, "b").await;
        // A checkpoint's first part reached redb (entry "a"), then the process stopped.
        let row = {
            let state = lock(&inbox.shared.state);
            let (seq, bytes) = state.active.entries.first_key_value().unwrap();
            (*seq, bytes.clone())
        };
        assert_eq!(row.0, a.seq);
        db.write(move |txn| {
            let mut table = txn.open_table(INBOX).map_err(be)?;
            table.insert(row.0, row.1.as_slice()).map_err(be)?;
            Ok(())
        })
        .await
        .unwrap();
        // "a" is completed in the log, then the inbox restarts and replays.
        inbox.complete(vec![a.key()]).await.unwrap();
        drop(inbox);
        let inbox = EmbeddedInbox::with_tuning(db.clone(), NEVER).await.unwrap();
        assert_eq!(ids(&inbox.pending(10).await.unwrap()), vec!["b"]);
        assert_eq!(in_redb(&inbox).await, (1, 2), "the row of \"a\" removed");
    }

    #[test]
    fn an_entry_of_a_failed_checkpoint_completed_later_is_removed_from_redb_too() {
        let mut frozen = Delta::default();
        frozen.add_entry(1, b"one".to_vec());
        frozen.add_entry(2, b"two".to_vec());
        frozen.last_seq = 2;
        let mut active = Delta::default();
        active.complete(1);
        active.add_entry(3, b"three".to_vec());
        active.last_seq = 3;
        // The checkpoint of `frozen` failed, maybe after writing some of it.
        frozen.absorb(active);
        frozen.complete(2);
        frozen.complete(3);
        assert!(frozen.entries.is_empty());
        assert_eq!(frozen.entry_bytes, 0);
        assert_eq!(
            frozen.completed.iter().copied().collect::<Vec<_>>(),
            vec![1, 2],
            "rows 1 and 2 may be in redb; 3 never reached it"
        );
    }

    #[tokio::test]
    async fn a_checkpoint_written_in_parts_moves_its_position_only_with_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let inbox = EmbeddedInbox::with_tuning(db.clone(), NEVER).await.unwrap();
        drop(inbox);
        let mut delta = Delta::default();
        for seq in 1..=5 {
            delta.add_entry(seq, format!("entry {seq}").into_bytes());
            delta.keys.insert(format!("key {seq}"), u64::MAX);
        }
        delta.completed.insert(100);
        delta.last_seq = 5;
        let delta = Arc::new(delta);
        let from = Position {
            generation: 7,
            offset: 42,
        };
        async fn read(db: &EmbeddedDb) -> Result<(u64, u64, Option<u64>), StoreError> {
            db.read(|txn| {
                let rows = txn.open_table(INBOX).map_err(be)?.len().map_err(be)?;
                let keys = txn.open_table(INBOX_KEYS).map_err(be)?.len().map_err(be)?;
                let meta = txn.open_table(META).map_err(be)?;
                let offset = meta.get(OFFSET).map_err(be)?.map(|v| v.value());
                Ok((rows, keys, offset))
            })
            .await
        }
        // A row completed in this delta, from an earlier checkpoint.
        db.write(|txn| {
            txn.open_table(INBOX)
                .map_err(be)?
                .insert(100, b"old".as_slice())
                .map_err(be)?;
            Ok(())
        })
        .await
        .unwrap();
        let total = delta.changes();
        assert_eq!(total, 11);
        let mut written = 0;
        while written < total {
            let end = (written + 3).min(total);
            let done = (end == total).then_some(from);
            let part = delta.clone();
            db.write(move |txn| write_changes(txn, &part, written..end, done))
                .await
                .unwrap();
            written = end;
            let (_, _, offset) = read(&db).await.unwrap();
            if written < total {
                assert_ne!(offset, Some(42), "position moved before the last part");
            }
        }
        assert_eq!(
            read(&db).await.unwrap(),
            (5, 5, Some(42)),
            "every entry and key, the completed row gone, the position"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_across_checkpoints_claim_each_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let tuning = Tuning {
            checkpoint_records: 8,
            checkpoint_every: Duration::from_millis(1),
            segment_bytes: 4096,
            ..NEVER
        };
        let inbox = open(dir.path(), tuning).await;
        // 400 callers, every key sent by two of them, while checkpoints come and go: exactly
        // one of each pair wins, whether the other meets its key in memory or in redb.
        assert_eq!(race_for_keys(&inbox, 400).await, 200);
        let pending = inbox.pending(1000).await.unwrap();
        assert_eq!(pending.len(), 200);
        // Complete half, restart, and the other half is what is left.
        let (done, left): (Vec<_>, Vec<_>) = pending.into_iter().partition(|e| e.seq % 2 == 0);
        inbox
            .complete(done.iter().map(InboxEntry::key).collect())
            .await
            .unwrap();
        drop(inbox);
        let inbox = open(dir.path(), NEVER).await;
        assert_eq!(inbox.pending(1000).await.unwrap(), left);
    }

    #[tokio::test]
    async fn a_key_longer_than_64_kib_is_logged_and_replayed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = open(dir.path(), NEVER).await;
        let long = format!("msg:{}", "x".repeat(70_000));
        fresh(&inbox, &long).await;
        fresh(&inbox, "after").await;
        drop(inbox);
        let inbox = open(dir.path(), NEVER).await;
        assert_eq!(
            ids(&inbox.pending(10).await.unwrap()),
            vec![long.as_str(), "after"]
        );
        let again = inbox.append(vec![entry(&[&long], "p")]).await.unwrap();
        assert_eq!(again, vec![Appended::Duplicate]);
    }

    #[tokio::test]
    async fn a_broken_log_refuses_appends_and_fails_readiness_until_restart() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = open(dir.path(), NEVER).await;
        fresh(&inbox, "a").await;
        assert!(matches!(inbox.check().await, Some(Ok(()))));
        // What a failed write that could not be cut back leaves (`AppendError::Broken`).
        lock(&inbox.shared.state).broken = Some("disk full".into());
        let err = inbox.append(vec![entry(&["b"], "p")]).await.unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert!(matches!(inbox.check().await, Some(Err(_))));
        drop(inbox);
        let inbox = open(dir.path(), NEVER).await;
        assert!(matches!(inbox.check().await, Some(Ok(()))));
        assert_eq!(ids(&inbox.pending(10).await.unwrap()), vec!["a"]);
        fresh(&inbox, "b").await;
    }

    #[tokio::test]
    async fn a_torn_last_record_is_dropped_and_a_foreign_one_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = open(dir.path(), NEVER).await;
        fresh(&inbox, "a").await;
        drop(inbox);
        let log_dir = dir.path().join("inbox-log");
        let last = *log::generations(&log_dir).unwrap().last().unwrap();
        let path = log_dir.join(format!("inbox-{last:016x}.wal"));
        // A batch whose sync never returned: half a record.
        let mut torn = Vec::new();
        log::frame(&mut torn, |b| {
            b.extend_from_slice(&[TAG_COMPLETE, 1, 0, 0, 0])
        });
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&torn[..torn.len() - 3]);
        std::fs::write(&path, &bytes).unwrap();
        let inbox = open(dir.path(), NEVER).await;
        assert_eq!(ids(&inbox.pending(10).await.unwrap()), vec!["a"]);
        drop(inbox);

        // A whole record this version does not know is refused, not skipped.
        let last = *log::generations(&log_dir).unwrap().last().unwrap();
        let mut foreign = Vec::new();
        log::frame(&mut foreign, |b| b.push(99));
        std::fs::write(log_dir.join(format!("inbox-{last:016x}.wal")), &foreign).unwrap();
        let err = EmbeddedInbox::with_tuning(EmbeddedDb::open(dir.path()).unwrap(), NEVER)
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("not an inbox record"), "{err}");
    }
}
