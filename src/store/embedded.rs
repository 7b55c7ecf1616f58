//! The embedded store: one redb file under `HANDOFF_DATA_DIR`, the default when no cloud
//! backend is configured.
//!
//! redb commits are serialised and each waits for a disk sync (~350 µs here), so committing
//! once per request caps a server at a few thousand writes per second. All writes therefore go
//! through one writer thread that batches whatever is waiting into a single transaction (group
//! commit); each caller is answered only once its batch is durable. Reads run on the blocking
//! pool against MVCC snapshots and never wait for the writer. Nothing here blocks a tokio
//! worker thread.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;

use super::{Claim, ClaimStore, ContextStore, HealthCheck, StoreError};
use crate::domain::{CustomerContext, CustomerId, Version};

const BACKEND: &str = "embedded";
/// Upper bound on operations committed together; bounds the latency of the last one in a batch.
const MAX_BATCH: usize = 1024;

/// customer id → stored document (revision + context JSON).
const CUSTOMERS: TableDefinition<&str, &[u8]> = TableDefinition::new("customers");
/// claim key → expiry, milliseconds since the Unix epoch.
const CLAIMS: TableDefinition<&str, u64> = TableDefinition::new("claims");

/// Called once the batch a job ran in is committed (or failed to commit).
pub(crate) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Job = Box<dyn FnOnce(&WriteTransaction) -> Completion + Send>;

/// A redb database with a group-committing writer thread. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedDb {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    dir: PathBuf,
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    /// Closing the queue ends the writer after its last batch; joining it releases the file
    /// lock before the drop returns, so the same directory can be opened again at once.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            // A completion running on the writer thread must not hold the last handle (the
            // inbox log sends its checkpoint outcomes back for that reason); if one ever does,
            // the writer ends by itself after this batch instead of joining itself.
            if writer.thread().id() != std::thread::current().id() {
                let _ = writer.join();
            }
        }
    }
}

impl EmbeddedDb {
    /// Opens (or creates) `handoff.redb` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::backend(BACKEND, format!("cannot create {}: {e}", dir.display()))
        })?;
        let path = dir.join("handoff.redb");
        let db = Database::create(&path).map_err(|e| {
            StoreError::backend(BACKEND, format!("cannot open {}: {e}", path.display()))
        })?;
        let db = Arc::new(db);
        // Create the tables up front so that readers never meet a missing table.
        {
            let txn = db
                .begin_write()
                .map_err(|e| StoreError::backend(BACKEND, e))?;
            txn.open_table(CUSTOMERS)
                .map_err(|e| StoreError::backend(BACKEND, e))?;
            txn.open_table(CLAIMS)
                .map_err(|e| StoreError::backend(BACKEND, e))?;
            txn.commit().map_err(|e| StoreError::backend(BACKEND, e))?;
        }
        let (jobs, rx) = mpsc::channel::<Job>();
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("embedded-writer".into())
            .spawn(move || writer_loop(&writer_db, &rx))
            .map_err(|e| StoreError::backend(BACKEND, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                dir: dir.to_owned(),
                jobs: Some(jobs),
                writer: Some(writer),
            }),
        })
    }

    /// The database itself, for read snapshots taken off the tokio threads.
    pub(crate) fn database(&self) -> &Database {
        &self.inner.db
    }

    /// The directory the database lives in (other embedded files sit beside it).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Runs `op` inside the next group-commit transaction and returns its result once that
    /// transaction is durable. `op` must check before it writes: if it returns an error, what it
    /// already wrote is still committed with the batch.
    pub async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(move |txn| {
            // Caught here so that the caller learns of the panic; `submit` only logs it.
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| op(txn)))
                .unwrap_or_else(|_| Err(StoreError::backend(BACKEND, "write operation panicked")));
            Box::new(move |committed: Result<(), StoreError>| {
                let _ = tx.send(committed.and(result));
            })
        })?;
        rx.await.map_err(|_| {
            StoreError::unavailable(BACKEND, "the write transaction could not be started")
        })?
    }

    /// Queues `job` for the next group-commit transaction without waiting: the writer runs it
    /// inside the transaction and calls the completion it returns once the batch is committed.
    /// For work no caller waits on (the inbox log's checkpoints), or one job answering many
    /// callers from its completion, so that a caller that goes away cannot lose the others'
    /// answers. A job that panics completes nothing: its callers see their answer channels
    /// closed.
    pub(crate) fn submit(
        &self,
        job: impl FnOnce(&WriteTransaction) -> Completion + Send + 'static,
    ) -> Result<(), StoreError> {
        let job: Job = Box::new(move |txn| {
            std::panic::catch_unwind(AssertUnwindSafe(|| job(txn))).unwrap_or_else(|_| {
                tracing::error!("embedded store write job panicked");
                Box::new(|_| {})
            })
        });
        self.inner
            .jobs
            .as_ref()
            .ok_or_else(|| StoreError::unavailable(BACKEND, "closing"))?
            .send(job)
            .map_err(|_| StoreError::unavailable(BACKEND, "writer thread stopped"))
    }

    /// Runs `op` against a read snapshot on the blocking pool.
    pub async fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db
                .begin_read()
                .map_err(|e| StoreError::backend(BACKEND, e))?;
            op(&txn)
        })
        .await
        .map_err(|e| StoreError::backend(BACKEND, e))?
    }
}

fn writer_loop(db: &Database, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let txn = match db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                // Dropping the jobs answers their callers with `Unavailable`.
                tracing::error!(error = %e, "embedded store cannot begin a write transaction");
                continue;
            }
        };
        let size = batch.len();
        let started = std::time::Instant::now();
        let completions: Vec<Completion> = batch.into_iter().map(|job| job(&txn)).collect();
        let committed = txn
            .commit()
            .map_err(|e| StoreError::unavailable(BACKEND, e));
        // The serial stage every durable write passes through: how full its batches are and
        // how long a batch holds the writer (operations + commit incl. the disk sync).
        metrics::histogram!("handoff_embedded_commit_batch_size").record(size as f64);
        metrics::histogram!("handoff_embedded_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        WRITER_TOTALS.record(size, started.elapsed());
        if let Err(err) = &committed {
            tracing::error!(error = %err, "embedded store commit failed");
        }
        for complete in completions {
            complete(committed.clone());
        }
    }
}

/// Process-wide totals of every embedded writer's batches, for `handoff bench`'s report.
#[derive(Debug, Default)]
pub struct WriterTotals {
    commits: AtomicU64,
    operations: AtomicU64,
    busy_micros: AtomicU64,
}

pub static WRITER_TOTALS: WriterTotals = WriterTotals::new();

impl WriterTotals {
    pub const fn new() -> Self {
        Self {
            commits: AtomicU64::new(0),
            operations: AtomicU64::new(0),
            busy_micros: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, size: usize, busy: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.operations.fetch_add(size as u64, Ordering::Relaxed);
        self.busy_micros
            .fetch_add(busy.as_micros() as u64, Ordering::Relaxed);
    }

    /// (commits, operations, microseconds the writer spent on batches) so far.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.operations.load(Ordering::Relaxed),
            self.busy_micros.load(Ordering::Relaxed),
        )
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A stored customer document: the revision that versions it (8 bytes), then the context JSON.
fn decode(bytes: &[u8]) -> Result<CustomerContext, StoreError> {
    let (rev, json) = bytes
        .split_at_checked(8)
        .ok_or_else(|| StoreError::backend(BACKEND, "truncated customer document"))?;
    let revision = u64::from_be_bytes(rev.try_into().expect("split at 8"));
    let mut ctx: CustomerContext =
        serde_json::from_slice(json).map_err(|e| StoreError::backend(BACKEND, e))?;
    ctx.version = Some(Version::new(revision.to_string()));
    Ok(ctx)
}

fn stored_revision(txn: &WriteTransaction, key: &str) -> Result<Option<u64>, StoreError> {
    let table = txn
        .open_table(CUSTOMERS)
        .map_err(|e| StoreError::backend(BACKEND, e))?;
    let value = table
        .get(key)
        .map_err(|e| StoreError::backend(BACKEND, e))?;
    Ok(value.map(|v| {
        let bytes = v.value();
        bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0)
    }))
}

/// Writes a document whose JSON was encoded before the job reached the writer thread (the one
/// serial stage every write passes through), so the writer only copies bytes.
fn put(txn: &WriteTransaction, key: &str, json: &[u8], revision: u64) -> Result<(), StoreError> {
    let mut bytes = Vec::with_capacity(8 + json.len());
    bytes.extend_from_slice(&revision.to_be_bytes());
    bytes.extend_from_slice(json);
    let mut table = txn
        .open_table(CUSTOMERS)
        .map_err(|e| StoreError::backend(BACKEND, e))?;
    table
        .insert(key, bytes.as_slice())
        .map_err(|e| StoreError::backend(BACKEND, e))?;
    Ok(())
}

/// Context store and claim store over one [`EmbeddedDb`].
#[derive(Clone)]
pub struct EmbeddedStore {
    db: EmbeddedDb,
}

impl EmbeddedStore {
    pub fn new(db: EmbeddedDb) -> Self {
        Self { db }
    }

    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self::new(EmbeddedDb::open(dir)?))
    }

    pub fn db(&self) -> &EmbeddedDb {
        &self.db
    }
}

#[async_trait]
impl ContextStore for EmbeddedStore {
    async fn get(&self, id: &CustomerId) -> Result<Option<CustomerContext>, StoreError> {
        let key = id.as_str().to_owned();
        self.db
            .read(move |txn| {
                let table = txn
                    .open_table(CUSTOMERS)
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                let value = table
                    .get(key.as_str())
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                value.map(|v| decode(v.value())).transpose()
            })
            .await
    }

    async fn create(&self, ctx: &CustomerContext) -> Result<CustomerContext, StoreError> {
        let mut ctx = ctx.clone();
        let json = serde_json::to_vec(&ctx).map_err(|e| StoreError::backend(BACKEND, e))?;
        self.db
            .write(move |txn| {
                if stored_revision(txn, ctx.customer_id.as_str())?.is_some() {
                    return Err(StoreError::AlreadyExists);
                }
                put(txn, ctx.customer_id.as_str(), &json, 1)?;
                ctx.version = Some(Version::new("1"));
                Ok(ctx)
            })
            .await
    }

    async fn replace(&self, ctx: &CustomerContext) -> Result<CustomerContext, StoreError> {
        let mut ctx = ctx.clone();
        let json = serde_json::to_vec(&ctx).map_err(|e| StoreError::backend(BACKEND, e))?;
        self.db
            .write(move |txn| {
                let stored =
                    stored_revision(txn, ctx.customer_id.as_str())?.ok_or(StoreError::NotFound)?;
                let expected = ctx.version.as_ref().map(Version::as_str);
                if expected != Some(stored.to_string().as_str()) {
                    return Err(StoreError::Conflict);
                }
                let next = stored + 1;
                put(txn, ctx.customer_id.as_str(), &json, next)?;
                ctx.version = Some(Version::new(next.to_string()));
                Ok(ctx)
            })
            .await
    }
}

#[async_trait]
impl ClaimStore for EmbeddedStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim, StoreError> {
        let key = key.to_owned();
        let now = now_millis();
        let expires = now.saturating_add(ttl.as_millis() as u64);
        self.db
            .write(move |txn| {
                let mut table = txn
                    .open_table(CLAIMS)
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                let live = table
                    .get(key.as_str())
                    .map_err(|e| StoreError::backend(BACKEND, e))?
                    .is_some_and(|v| v.value() > now);
                if live {
                    return Ok(Claim::Duplicate);
                }
                table
                    .insert(key.as_str(), expires)
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                Ok(Claim::Fresh)
            })
            .await
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.db
            .write(move |txn| {
                let mut table = txn
                    .open_table(CLAIMS)
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                table
                    .remove(key.as_str())
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                Ok(())
            })
            .await
    }

    async fn purge_expired(&self) -> Result<usize, StoreError> {
        let now = now_millis();
        self.db
            .write(move |txn| {
                let mut table = txn
                    .open_table(CLAIMS)
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                let removed = table
                    .extract_if(|_, expires| expires <= now)
                    .map_err(|e| StoreError::backend(BACKEND, e))?
                    .count();
                Ok(removed)
            })
            .await
    }
}

#[async_trait]
impl HealthCheck for EmbeddedStore {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn check(&self) -> Result<(), StoreError> {
        // A write round trip: proves the writer thread is alive and the disk accepts commits.
        self.db.write(|_| Ok(())).await?;
        self.db
            .read(|txn| {
                txn.open_table(CUSTOMERS)
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                Ok(())
            })
            .await
    }
}
