//! The public handle: the write path, reads, flush barriers and shutdown.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::{watch, Notify, OnceCell};
use tracing::Instrument;
use writebehind_core::{Change, Expected, Key, Lookup, Lsn, ShardGuard, State, Value};
use writebehind_wal::{Append, Durability, Wal};
use writebehind_writer::{Retrier, Writer};

use crate::config::{Backpressure, Builder, Config};
use crate::error::Limit;
use crate::key::{CacheKey, KeyText};
use crate::log;
use crate::metrics::{Metrics, Op, Unflushed};
use crate::recovery::{self, RecoveryReport};
use crate::stats::{Counters, Stats};
use crate::value::CacheValue;
use crate::{Error, Result};

/// Result of one read-through load, shared by every caller waiting on it.
type LoadResult = std::result::Result<Option<(Value, i64)>, Arc<String>>;

/// Where the flusher stands, watched by flush barriers.
#[derive(Clone, Debug, Default)]
pub(crate) struct FlushStatus {
    /// Every write with an LSN at or below this is in the database.
    pub(crate) flushed: Lsn,
    /// Bumped on every failed flush round.
    pub(crate) failures: u64,
    /// The last failure, for barriers to report.
    pub(crate) last_error: Option<Arc<String>>,
}

pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) state: State,
    pub(crate) wal: Wal,
    pub(crate) writer: Option<Writer>,
    pub(crate) retrier: Retrier,
    pub(crate) counters: Counters,
    pub(crate) status: watch::Sender<FlushStatus>,
    /// Wakes the flusher early (thresholds, barriers, backpressure).
    pub(crate) wake_flusher: Notify,
    /// Wakes the checkpoint thread.
    pub(crate) wake_checkpoint: crossbeam_channel::Sender<()>,
    /// Room was made (flush or checkpoint): wakes writers under backpressure.
    room: (Mutex<u64>, Condvar),
    room_async: Notify,
    pub(crate) closed: AtomicBool,
    /// Bumped when a cut is taken and when one settles: reads that combine a
    /// loaded row with pending deltas start over when it moves.
    pub(crate) cut_epoch: AtomicU64,
    /// A flush completed since the checkpoint thread last looked.
    pub(crate) flushed_since_checkpoint: AtomicBool,
    /// The tables exist (or were not asked for).
    pub(crate) tables_ready: AtomicBool,
    /// WAL disk usage right after the last checkpoint.
    pub(crate) wal_bytes_at_checkpoint: AtomicU64,
    /// WAL disk usage as last read (refreshed every few hundred writes).
    pub(crate) wal_bytes: AtomicU64,
    /// Serialises whole flush rounds (the background loop and `close`).
    pub(crate) flush_lock: tokio::sync::Mutex<()>,
    /// Serialises checkpoints.
    pub(crate) checkpoint_lock: Mutex<()>,
    loads: Mutex<HashMap<Key, Arc<OnceCell<LoadResult>>>>,
    pub(crate) recovery: RecoveryReport,
    /// The WAL directory's lock, released when the cache goes.
    _dir_lock: Option<std::fs::File>,
    /// Metric handles, registered once at open.
    pub(crate) metrics: Metrics,
    /// When the cache opened: the zero of `unflushed`'s timestamps.
    pub(crate) epoch: Instant,
    /// Times of the oldest unflushed writes.
    pub(crate) unflushed: Unflushed,
    /// Announce flushed keys to other instances (PostgreSQL `NOTIFY`).
    pub(crate) notify: bool,
}

/// Stops the background work when the last handle goes away without `close`.
struct Lifetime {
    inner: Arc<Inner>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    /// Drops the clean copies of keys other instances flush.
    listener: Mutex<Option<writebehind_writer::Listener>>,
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if !self.inner.closed.load(Ordering::Acquire) {
            let stats = self.inner.state.stats();
            tracing::warn!(
                dir = %self.inner.cfg.dir.display(),
                dirty = stats.dirty_entries,
                "cache dropped without close(): unflushed writes stay in the WAL until the next open"
            );
        }
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        drop(self.listener.lock().take());
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
    }
}

/// An embedded, persistent write-behind cache.
///
/// Writes land in memory and in the WAL and are acknowledged under the
/// chosen [`Durability`]; a background flusher writes the coalesced state to
/// the database. Clones share one cache. Call [`close`](Self::close) to flush
/// and see every error: dropping the last handle only stops the background
/// work (what was not flushed stays in the WAL for the next open).
pub struct WriteBehind<K, V = i64> {
    inner: Arc<Inner>,
    life: Arc<Lifetime>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for WriteBehind<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            life: self.life.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: CacheKey, V: CacheValue> WriteBehind<K, V> {
    /// Starts building a cache whose WAL lives in `dir`.
    pub fn builder(dir: impl Into<std::path::PathBuf>) -> Builder<K, V> {
        Builder::new(dir.into())
    }

    pub(crate) async fn open(
        cfg: Config,
        runtime: Option<tokio::runtime::Runtime>,
    ) -> Result<Self> {
        let span =
            tracing::info_span!("open", dir = %cfg.dir.display(), instance = tracing::field::Empty);
        Self::open_in(cfg, runtime, span.clone())
            .instrument(span)
            .await
    }

    async fn open_in(
        cfg: Config,
        runtime: Option<tokio::runtime::Runtime>,
        span: tracing::Span,
    ) -> Result<Self> {
        let writer = match &cfg.database {
            Some(url) => Some(crate::flusher::connect::<V>(&cfg, url).await?),
            None => None,
        };
        let notify = match (cfg.notify, &writer) {
            (Some(false), _) | (None, None) => false,
            (None, Some(w)) => w.supports_notify(),
            (Some(true), Some(w)) if w.supports_notify() => true,
            (Some(true), _) => {
                return Err(Error::Config(format!(
                    "notify(true) needs a PostgreSQL database, but {} has no NOTIFY: the clean TTL alone bounds staleness there",
                    cfg.database.as_deref().map_or_else(|| "a cache without a database".to_owned(), crate::flusher::redact)
                )))
            }
        };
        // The metrics' instance label: the id the database knows, else the directory.
        let instance = match &writer {
            Some(w) => w.config().instance().to_owned(),
            None => cfg.dir.display().to_string(),
        };
        span.record("instance", instance.as_str());
        let metrics = Metrics::register(&instance);
        // Started first, so its connection is made while recovery runs and
        // the progress probe waits; it reaches the state once that exists.
        let target: Arc<std::sync::OnceLock<std::sync::Weak<Inner>>> = Arc::default();
        let listen_by = Instant::now() + Duration::from_secs(2);
        let listener = match &writer {
            Some(writer) if notify => {
                let target = target.clone();
                writer.listen(Arc::new(move |keys: &[(String, Option<i64>)]| {
                    if let Some(inner) = target.get().and_then(std::sync::Weak::upgrade) {
                        inner.invalidate(keys);
                    }
                }))
            }
            _ => None,
        };
        let opened = recovery::open(&cfg)?;
        metrics.recovered(
            &instance,
            opened.report.records_replayed,
            opened.report.elapsed,
        );
        if let Some(writer) = &writer {
            check_progress(writer, &cfg, &opened).await?;
        }
        let (status, _) = watch::channel(FlushStatus {
            flushed: opened.flushed,
            ..FlushStatus::default()
        });
        let (wake_checkpoint, checkpoint_rx) = crossbeam_channel::bounded(1);
        let wal_bytes = opened.wal.disk_usage();
        let retrier = Retrier::new(cfg.retry.clone());
        let inner = Arc::new(Inner {
            cfg,
            state: opened.state,
            wal: opened.wal,
            writer,
            retrier,
            counters: Counters::default(),
            status,
            wake_flusher: Notify::new(),
            wake_checkpoint,
            room: (Mutex::new(0), Condvar::new()),
            room_async: Notify::new(),
            closed: AtomicBool::new(false),
            tables_ready: AtomicBool::new(false),
            flushed_since_checkpoint: AtomicBool::new(false),
            cut_epoch: AtomicU64::new(0),
            wal_bytes_at_checkpoint: AtomicU64::new(wal_bytes),
            wal_bytes: AtomicU64::new(wal_bytes),
            flush_lock: tokio::sync::Mutex::new(()),
            checkpoint_lock: Mutex::new(()),
            loads: Mutex::new(HashMap::new()),
            recovery: opened.report,
            _dir_lock: opened.lock,
            metrics,
            epoch: Instant::now(),
            unflushed: Unflushed::default(),
            notify,
        });
        if inner.writer.is_some()
            && (inner.recovery.dirty_entries > 0 || inner.recovery.in_flight.is_some())
        {
            inner.unflushed.recovered();
        }
        let _ = target.set(Arc::downgrade(&inner));
        if let Some(l) = &listener {
            // Subscribed before open returns, so no flush after it is missed;
            // a database that is down only delays this (by 2 s at most).
            let wait = listen_by.saturating_duration_since(Instant::now());
            if !l.first_attempt(wait).await {
                tracing::warn!("not yet listening for other instances' flushes (database unreachable); retrying in the background");
            }
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        if inner.writer.is_some() {
            let handle = match &runtime {
                Some(rt) => rt.handle().clone(),
                None => tokio::runtime::Handle::current(),
            };
            tasks.push(handle.spawn(crate::flusher::run(inner.clone(), shutdown_rx)));
        }
        let checkpointer = crate::checkpoint::spawn(inner.clone(), checkpoint_rx)?;
        let life = Arc::new(Lifetime {
            inner: inner.clone(),
            shutdown,
            tasks: Mutex::new(tasks),
            checkpointer: Mutex::new(Some(checkpointer)),
            runtime: Mutex::new(runtime),
            listener: Mutex::new(listener),
        });
        Ok(Self {
            inner,
            life,
            _types: PhantomData,
        })
    }

    pub(crate) fn open_blocking(cfg: Config) -> Result<Self> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::Config(
                "open_blocking() was called inside a tokio runtime; use open().await".into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("writebehind-flusher")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                path: cfg.dir.clone(),
                source,
            })?;
        let handle = rt.handle().clone();
        // The runtime is handed over only after a successful open: an error inside
        // `block_on` would drop it there, which panics. Tasks spawn on `rt` (current).
        let cache = handle.block_on(Self::open(cfg, None))?;
        *cache.life.runtime.lock() = Some(rt);
        Ok(cache)
    }

    /// What recovery found when this cache was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// Counters and gauges of this cache.
    pub fn stats(&self) -> Stats {
        crate::stats::collect(&self.inner)
    }

    // ---- writes ----

    /// Sets `key` to `value`. Returns the write's LSN once the WAL has it
    /// under the cache's durability.
    pub async fn put<Q: KeyText + ?Sized>(&self, key: &Q, value: &V) -> Result<Lsn> {
        let change = Change::Put(value.to_value()?);
        self.write_async(key, change, None).await
    }

    /// [`put`](Self::put) with this write's own durability.
    pub async fn put_with<Q: KeyText + ?Sized>(
        &self,
        key: &Q,
        value: &V,
        durability: Durability,
    ) -> Result<Lsn> {
        let change = Change::Put(value.to_value()?);
        self.write_async(key, change, Some(durability)).await
    }

    /// Removes `key`.
    pub async fn delete<Q: KeyText + ?Sized>(&self, key: &Q) -> Result<Lsn> {
        self.write_async(key, Change::Delete, None).await
    }

    /// [`delete`](Self::delete) with this write's own durability.
    pub async fn delete_with<Q: KeyText + ?Sized>(
        &self,
        key: &Q,
        durability: Durability,
    ) -> Result<Lsn> {
        self.write_async(key, Change::Delete, Some(durability))
            .await
    }

    /// Blocking [`put`](Self::put), for plain threads.
    pub fn put_blocking<Q: KeyText + ?Sized>(&self, key: &Q, value: &V) -> Result<Lsn> {
        let change = Change::Put(value.to_value()?);
        self.write_blocking(key, change, None)
    }

    /// Blocking [`delete`](Self::delete), for plain threads.
    pub fn delete_blocking<Q: KeyText + ?Sized>(&self, key: &Q) -> Result<Lsn> {
        self.write_blocking(key, Change::Delete, None)
    }

    async fn write_async<Q: KeyText + ?Sized>(
        &self,
        key: &Q,
        change: Change,
        durability: Option<Durability>,
    ) -> Result<Lsn> {
        let key = self.key(key)?;
        self.wait_for_room_async(&key).await?;
        let op = Op::of(&change);
        let timed = self.inner.timed(durability);
        let ticket = self.inner.append_op(key, change, durability)?;
        let lsn = ticket.await?;
        self.inner.after_write(op, timed);
        Ok(lsn)
    }

    fn write_blocking<Q: KeyText + ?Sized>(
        &self,
        key: &Q,
        change: Change,
        durability: Option<Durability>,
    ) -> Result<Lsn> {
        let key = self.key(key)?;
        self.wait_for_room_blocking(&key)?;
        let op = Op::of(&change);
        let timed = self.inner.timed(durability);
        let ticket = self.inner.append_op(key, change, durability)?;
        let lsn = ticket.wait()?;
        self.inner.after_write(op, timed);
        Ok(lsn)
    }

    fn key<Q: KeyText + ?Sized>(&self, key: &Q) -> Result<Key> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(Key::from(key.key_text().as_ref()))
    }

    // ---- backpressure ----

    async fn wait_for_room_async(&self, key: &Key) -> Result<()> {
        let started = Instant::now();
        let Some(wait) = self.inner.room_or_wait(key, started)? else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.inner.room_async.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some(limit) = self.inner.over_limit(key) else {
                return Ok(());
            };
            self.inner.make_room(limit);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return match self.inner.over_limit(key) {
                    None => Ok(()),
                    Some(limit) => Err(self.inner.reject(limit, started)),
                };
            }
        }
    }

    fn wait_for_room_blocking(&self, key: &Key) -> Result<()> {
        let started = Instant::now();
        let Some(wait) = self.inner.room_or_wait(key, started)? else {
            return Ok(());
        };
        let deadline = started + wait;
        let (lock, cvar) = &self.inner.room;
        let mut generation = lock.lock();
        loop {
            let Some(limit) = self.inner.over_limit(key) else {
                return Ok(());
            };
            self.inner.make_room(limit);
            // Short waits as well as notifications: the flusher runs elsewhere.
            let step = Instant::now() + Duration::from_millis(50);
            if cvar
                .wait_until(&mut generation, step.min(deadline))
                .timed_out()
                && Instant::now() >= deadline
            {
                return match self.inner.over_limit(key) {
                    None => Ok(()),
                    Some(limit) => Err(self.inner.reject(limit, started)),
                };
            }
        }
    }

    // ---- reads ----

    /// The latest acknowledged value of `key`, loading it from the database
    /// on a miss (read-through) when a database is set.
    pub async fn get<Q: KeyText + ?Sized>(&self, key: &Q) -> Result<Option<V>> {
        let text = self.key_text(key)?;
        let value = match self.inner.state.get(&text) {
            Lookup::Value(v) => Some(v),
            Lookup::Absent => None,
            Lookup::Delta(_) => self.with_base(&Key::from(text.as_ref())).await?,
            Lookup::Miss => self
                .inner
                .load(&Key::from(text.as_ref()))
                .await?
                .map(|(v, _)| v),
        };
        self.inner.count_read();
        value.as_ref().map(V::from_value).transpose()
    }

    /// Blocking [`get`](Self::get). A read that must load from the database
    /// needs the cache's own runtime (a cache opened with `open_blocking`).
    pub fn get_blocking<Q: KeyText + ?Sized>(&self, key: &Q) -> Result<Option<V>> {
        let text = self.key_text(key)?;
        let value = match self.inner.state.get(&text) {
            Lookup::Value(v) => Some(v),
            Lookup::Absent => None,
            // Without read-through the cache is the whole truth: no base, no row.
            Lookup::Delta(d) if !self.inner.reads_through() => Some(Value::Int(d)),
            Lookup::Miss if !self.inner.reads_through() => None,
            Lookup::Delta(_) | Lookup::Miss => {
                let handle = self.runtime_handle()?;
                let this = self.clone();
                let text = text.into_owned();
                return handle.block_on(async move { this.get(text.as_str()).await });
            }
        };
        self.inner.count_read();
        value.as_ref().map(V::from_value).transpose()
    }

    /// The key's text, borrowed when it can be (no allocation on a hit).
    fn key_text<'k, Q: KeyText + ?Sized>(&self, key: &'k Q) -> Result<std::borrow::Cow<'k, str>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(key.key_text())
    }

    fn runtime_handle(&self) -> Result<tokio::runtime::Handle> {
        if let Some(rt) = self.life.runtime.lock().as_ref() {
            return Ok(rt.handle().clone());
        }
        Err(Error::Config(
            "this read needs the database and the cache was opened with open().await: use get().await"
                .into(),
        ))
    }

    /// A counter whose base is unknown: the database's value plus the
    /// pending delta. Two races would count a delta twice, so both restart
    /// the read: the key is in the cut in flight (the database may or may
    /// not hold that part yet: wait for the cut to settle), or a cut was
    /// taken while the row loaded (the row may already hold the delta).
    async fn with_base(&self, key: &Key) -> Result<Option<Value>> {
        let mut status = self.inner.status.subscribe();
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            status.borrow_and_update();
            let epoch = self.inner.cut_epoch.load(Ordering::Acquire);
            let delta = match self.inner.state.get(key) {
                Lookup::Value(v) => return Ok(Some(v)),
                Lookup::Absent => return Ok(None),
                Lookup::Miss => return Ok(self.inner.load(key).await?.map(|(v, _)| v)),
                Lookup::Delta(d) => d,
            };
            if self.inner.state.is_in_flight(key) {
                self.inner.wake_flusher.notify_one();
                if tokio::time::timeout_at(deadline, status.changed())
                    .await
                    .is_err()
                {
                    return Err(Error::Load {
                        key: key.to_string(),
                        reason: format!(
                            "a flush of this counter has not settled within {SETTLE_TIMEOUT:?}, so its database value is not known"
                        ),
                    });
                }
                continue;
            }
            let base = self.inner.load(key).await?;
            if self.inner.cut_epoch.load(Ordering::Acquire) != epoch {
                continue;
            }
            return add_to_base(key, base, delta).map(Some);
        }
    }

    /// Atomically replaces the value of `key` with `f(old)`: `Some` puts,
    /// `None` deletes. `f` runs under the key's shard lock: keep it short.
    pub async fn update<Q, F>(&self, key: &Q, f: F) -> Result<Option<V>>
    where
        Q: KeyText + ?Sized,
        F: FnOnce(Option<V>) -> Option<V>,
    {
        let key = self.key(key)?;
        let mut f = f;
        loop {
            let epoch = self.inner.cut_epoch.load(Ordering::Acquire);
            // Load first (outside the lock) so the closure sees the database's
            // row; a counter in flight settles first (see `with_base`).
            let loaded = match self.inner.state.get(&key) {
                Lookup::Miss => self.inner.load(&key).await?,
                Lookup::Delta(_) => {
                    if self.inner.state.is_in_flight(&key) {
                        self.with_base(&key).await?;
                        continue;
                    }
                    self.inner.load(&key).await?
                }
                _ => None,
            };
            self.wait_for_room_async(&key).await?;
            let timed = self.inner.timed(None);
            match self.inner.update_locked(&key, loaded, epoch, f)? {
                Updated::Retry(back) => f = back,
                Updated::Done(ticket, new) => {
                    ticket.await?;
                    let op = if new.is_some() { Op::Put } else { Op::Delete };
                    self.inner.after_write(op, timed);
                    return Ok(new);
                }
            }
        }
    }

    /// Writes a checkpoint of the dirty state now and truncates the WAL
    /// below it (compaction also runs on its own as the WAL grows).
    pub fn checkpoint(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        crate::checkpoint::checkpoint(&self.inner)
    }

    // ---- flushing ----

    /// Waits until every write acknowledged before this call is in the
    /// database. Without a database, waits until the WAL is on disk.
    pub async fn flush(&self) -> Result<()> {
        let target = self.inner.wal.last_lsn();
        if self.inner.writer.is_none() {
            self.inner.sync_wal("flush")?;
            return Ok(());
        }
        self.flushed(target).await
    }

    /// Blocking [`flush`](Self::flush).
    pub fn flush_blocking(&self) -> Result<()> {
        if self.inner.writer.is_none() {
            self.inner.sync_wal("flush")?;
            return Ok(());
        }
        let handle = self.runtime_handle()?;
        let this = self.clone();
        handle.block_on(async move { this.flush().await })
    }

    /// Waits until the write at `lsn` (returned by a write) is in the
    /// database: write-through for the writes that need it.
    pub async fn flushed(&self, lsn: Lsn) -> Result<()> {
        if self.inner.writer.is_none() {
            return Err(Error::Config(
                "no database is set: nothing is flushed".into(),
            ));
        }
        let mut rx = self.inner.status.subscribe();
        let failures_before = rx.borrow().failures;
        loop {
            {
                let status = rx.borrow_and_update();
                // Nothing dirty (in flight included) means everything is flushed.
                if status.flushed >= lsn || self.inner.state.dirty_entries() == 0 {
                    return Ok(());
                }
                if status.failures > failures_before {
                    let msg = status.last_error.as_deref().cloned().unwrap_or_default();
                    return Err(Error::Flush(msg));
                }
            }
            self.inner.wake_flusher.notify_one();
            if rx.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    // ---- warming ----

    /// Loads these keys from the database into the clean cache, in batches.
    /// Keys that are dirty keep their cached state.
    pub async fn warm<Q: KeyText>(&self, keys: &[Q]) -> Result<usize> {
        let Some(writer) = &self.inner.writer else {
            return Err(Error::Config(
                "no database is set: nothing to warm from".into(),
            ));
        };
        let mut loaded = 0;
        for chunk in keys.chunks(1_000) {
            let keys: Vec<Key> = chunk
                .iter()
                .map(|k| Key::from(k.key_text().as_ref()))
                .collect();
            let tickets: Vec<_> = keys
                .iter()
                .map(|k| self.inner.state.load_ticket(k))
                .collect();
            let rows = writer.load(&keys).await?;
            for ((_, row), ticket) in rows.into_iter().zip(tickets) {
                if self.inner.state.insert_loaded(ticket, row) {
                    loaded += 1;
                }
            }
        }
        Ok(loaded)
    }

    // ---- shutdown ----

    /// Flushes what it can within the close timeout, writes a checkpoint,
    /// syncs and closes the WAL, and returns every error met. What could not
    /// be flushed stays safe in the WAL for the next open.
    pub async fn close(self) -> Result<()> {
        let span = tracing::info_span!("close", dir = %self.inner.cfg.dir.display());
        self.close_in().instrument(span).await
    }

    async fn close_in(self) -> Result<()> {
        let inner = self.inner.clone();
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Err(Error::Closed);
        }
        let _ = self.life.shutdown.send(true);
        for task in self.life.tasks.lock().drain(..) {
            task.abort();
        }
        let mut errors = Vec::new();
        if inner.writer.is_some() {
            let deadline = inner.cfg.close_timeout;
            match tokio::time::timeout(deadline, crate::flusher::flush_all(&inner)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(_) => errors.push(format!(
                    "close: the database did not take every write within {deadline:?}; the rest stays in the WAL"
                )),
            }
        }
        if let Err(e) = crate::checkpoint::checkpoint(&inner) {
            errors.push(e.to_string());
        }
        drop(self.life.listener.lock().take());
        if let Some(writer) = &inner.writer {
            writer.close().await;
        }
        if let Some(t) = self.life.checkpointer.lock().take() {
            // The channel closes once the sender in `inner` and its clones go; the thread
            // also polls `closed`.
            let _ = inner.wake_checkpoint.try_send(());
            let _ = t.join();
        }
        if let Err(e) = inner.sync_wal("close") {
            errors.push(e.to_string());
        }
        crate::metrics::publish(&inner);
        if errors.is_empty() {
            tracing::info!("closed");
            Ok(())
        } else {
            tracing::error!(errors = ?errors, "close met errors; what was not flushed stays in the WAL");
            Err(Error::Close(errors))
        }
    }

    /// Blocking [`close`](Self::close).
    pub fn close_blocking(self) -> Result<()> {
        let handle =
            match self.life.runtime.lock().as_ref() {
                Some(rt) => rt.handle().clone(),
                None => return Err(Error::Config(
                    "close_blocking() needs a cache opened with open_blocking(); use close().await"
                        .into(),
                )),
            };
        handle.block_on(self.close())
    }
}

impl<K: CacheKey> WriteBehind<K, i64> {
    /// Adds `delta` to the counter `key`. Returns the write's LSN once the
    /// WAL has it under the cache's durability.
    pub async fn add<Q: KeyText + ?Sized>(&self, key: &Q, delta: i64) -> Result<Lsn> {
        self.write_async(key, Change::Add(delta), None).await
    }

    /// [`add`](Self::add) with this write's own durability.
    pub async fn add_with<Q: KeyText + ?Sized>(
        &self,
        key: &Q,
        delta: i64,
        durability: Durability,
    ) -> Result<Lsn> {
        self.write_async(key, Change::Add(delta), Some(durability))
            .await
    }

    /// Blocking [`add`](Self::add), for plain threads.
    pub fn add_blocking<Q: KeyText + ?Sized>(&self, key: &Q, delta: i64) -> Result<Lsn> {
        self.write_blocking(key, Change::Add(delta), None)
    }

    /// Blocking [`add_with`](Self::add_with).
    pub fn add_blocking_with<Q: KeyText + ?Sized>(
        &self,
        key: &Q,
        delta: i64,
        durability: Durability,
    ) -> Result<Lsn> {
        self.write_blocking(key, Change::Add(delta), Some(durability))
    }
}

/// How long a read of a counter waits for a flush of it to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `update_locked` did.
enum Updated<V, F> {
    /// A flush moved deltas since the row was loaded: load again.
    Retry(F),
    /// Written: the WAL ticket and the new value.
    Done(Append, Option<V>),
}

/// The loaded row's counter plus a pending delta.
fn add_to_base(key: &Key, base: Option<(Value, i64)>, delta: i64) -> Result<Value> {
    let sum = match base {
        None => Some(delta),
        Some((Value::Int(b), _)) => b.checked_add(delta),
        Some((Value::Bytes(_), _)) => {
            return Err(Error::Codec(format!(
                "key {key:?} holds a record in the database but counter adds in the cache"
            )))
        }
    };
    sum.map(Value::Int).ok_or_else(|| {
        Error::Codec(format!(
            "counter {key:?} overflows i64 with its pending delta"
        ))
    })
}

/// Refuses a WAL directory that is behind what the database already has
/// from this instance (a reset or restored-from-backup directory would
/// otherwise have its new writes skipped as already applied).
async fn check_progress(writer: &Writer, cfg: &Config, opened: &recovery::Opened) -> Result<()> {
    let probe = tokio::time::timeout(crate::flusher::OPEN_PROBE, writer.progress()).await;
    let progress = match probe {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => return Ok(()),
        Err(_) => {
            tracing::warn!(dir = %cfg.dir.display(), "the database did not answer at open; flush progress not checked");
            return Ok(());
        }
        // Down or not created yet: the cache still opens and takes writes.
        Ok(Err(e)) => {
            tracing::warn!(dir = %cfg.dir.display(), error = %e, "could not read this instance's flush progress at open");
            return Ok(());
        }
    };
    let last = opened.wal.last_lsn();
    if progress > last {
        return Err(Error::Config(format!(
            "the database has flushed this instance up to position {progress}, but the WAL in {} ends at {last}: \
             the directory was reset or restored from an old copy; use a new WAL directory",
            cfg.dir.display()
        )));
    }
    Ok(())
}

impl Inner {
    pub(crate) fn retries(&self) -> u64 {
        self.retrier.retries()
    }

    /// A start time when this write waits for an fsync (its wait is then
    /// measured); `None` otherwise, so other writes pay nothing.
    #[inline]
    fn timed(&self, durability: Option<Durability>) -> Option<Instant> {
        matches!(durability.unwrap_or(self.cfg.durability), Durability::Fsync).then(Instant::now)
    }

    /// `wal.sync()`, timed.
    pub(crate) fn sync_wal(&self, what: &'static str) -> Result<Lsn> {
        let started = Instant::now();
        let lsn = self.wal.sync()?;
        self.metrics
            .fsync_waited(started.elapsed(), what, &self.cfg.dir);
        Ok(lsn)
    }

    /// Another instance flushed these keys: drop our copies, unless ours
    /// already has the version it wrote (a late announcement must not make
    /// us forget the version our next put is checked against).
    fn invalidate(&self, keys: &[(String, Option<i64>)]) {
        let mut dropped = 0;
        for (key, version) in keys {
            let key = Key::from(key.as_str());
            let current = match self.state.lock(&key).expected(&key) {
                Expected::Version(v) => Some(v),
                _ => None,
            };
            if matches!((current, version), (Some(c), Some(v)) if c >= *v) {
                continue;
            }
            self.state.invalidate(&key);
            dropped += 1;
        }
        self.counters
            .invalidations
            .fetch_add(dropped, Ordering::Relaxed);
        tracing::trace!(
            announced = keys.len(),
            dropped,
            "dropped copies of keys another instance flushed"
        );
    }

    /// The write path: lock the key's shard, check, append to the WAL (which
    /// assigns the LSN), apply with that LSN, unlock. Per key, the WAL order
    /// is the apply order, so replay rebuilds exactly this state.
    fn append_op(
        &self,
        key: Key,
        change: Change,
        durability: Option<Durability>,
    ) -> Result<Append> {
        let mut shard = self.state.lock(&key);
        self.append_locked(&mut shard, key, change, durability)
    }

    /// Under the key's shard lock: check, log (which assigns the LSN), apply.
    fn append_locked(
        &self,
        shard: &mut ShardGuard<'_>,
        key: Key,
        change: Change,
        durability: Option<Durability>,
    ) -> Result<Append> {
        shard.check(&key, &change)?;
        let expected = shard.expected(&key);
        let payload = log::encode_op(&key, &change, expected)?;
        let ticket = match durability {
            Some(d) => self.wal.append_with(log::KIND, &payload, d)?,
            None => self.wal.append(log::KIND, &payload)?,
        };
        shard.apply(key, change, expected, ticket.lsn());
        Ok(ticket)
    }

    fn update_locked<V: CacheValue, F>(
        &self,
        key: &Key,
        loaded: Option<(Value, i64)>,
        epoch: u64,
        f: F,
    ) -> Result<Updated<V, F>>
    where
        F: FnOnce(Option<V>) -> Option<V>,
    {
        let mut shard = self.state.lock(key);
        let current = match shard.get(key) {
            Lookup::Value(v) => Some(v),
            Lookup::Absent => None,
            Lookup::Delta(d) => {
                // A cut since the load may have put this delta in the loaded
                // row (cuts need every shard lock, so none runs now).
                if self.cut_epoch.load(Ordering::Acquire) != epoch {
                    return Ok(Updated::Retry(f));
                }
                Some(add_to_base(key, loaded, d)?)
            }
            Lookup::Miss => loaded.map(|(v, _)| v),
        };
        let old = current.as_ref().map(V::from_value).transpose()?;
        let new = f(old);
        let change = match &new {
            Some(v) => Change::Put(v.to_value()?),
            None => Change::Delete,
        };
        let ticket = self.append_locked(&mut shard, key.clone(), change, None)?;
        Ok(Updated::Done(ticket, new))
    }

    /// After a write: count it and wake the flusher or the checkpointer when
    /// a threshold is passed. Cheap: atomics, and the WAL size only every
    /// 256 writes.
    fn after_write(&self, op: Op, timed: Option<Instant>) {
        if let Some(started) = timed {
            self.metrics
                .fsync_waited(started.elapsed(), "write", &self.cfg.dir);
        }
        let n = self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters.writes_by_op[op as usize].fetch_add(1, Ordering::Relaxed);
        if self.writer.is_some() {
            self.unflushed.wrote(self.epoch);
            if self.state.dirty_entries() >= self.cfg.flush_dirty_entries
                || self.state.dirty_bytes() >= self.cfg.flush_dirty_bytes
            {
                self.wake_flusher.notify_one();
            }
        }
        if n.is_multiple_of(256) {
            self.refresh_wal_bytes();
        }
    }

    /// Re-reads the WAL's disk use and wakes the checkpointer when it grew
    /// past the compaction threshold.
    pub(crate) fn refresh_wal_bytes(&self) {
        let usage = self.wal.disk_usage();
        self.wal_bytes.store(usage, Ordering::Relaxed);
        let since = usage.saturating_sub(self.wal_bytes_at_checkpoint.load(Ordering::Relaxed));
        if since >= self.cfg.checkpoint_bytes {
            let _ = self.wake_checkpoint.try_send(());
        }
    }

    /// The limit a write to `key` would break, if any. A key that is
    /// already dirty takes no new entry, so only bytes and WAL limits apply.
    fn over_limit(&self, key: &Key) -> Option<Limit> {
        let limits = &self.cfg.limits;
        if self.state.dirty_entries() >= limits.max_dirty_entries && !self.state.is_dirty(key) {
            Some(Limit::DirtyEntries)
        } else if self.state.dirty_bytes() >= limits.max_dirty_bytes {
            Some(Limit::DirtyBytes)
        } else if self.wal_bytes.load(Ordering::Relaxed) >= self.cfg.max_wal_bytes {
            Some(Limit::WalBytes)
        } else {
            None
        }
    }

    /// Before a write: `None` when there is room, the time to wait when the
    /// policy says wait, the `Backpressure` error when it says fail.
    fn room_or_wait(&self, key: &Key, started: Instant) -> Result<Option<Duration>> {
        let Some(limit) = self.over_limit(key) else {
            return Ok(None);
        };
        match self.cfg.backpressure {
            Backpressure::Fail => Err(self.reject(limit, started)),
            Backpressure::Wait(wait) => {
                self.counters
                    .backpressure_waits
                    .fetch_add(1, Ordering::Relaxed);
                Ok(Some(wait))
            }
        }
    }

    /// Asks the background work that frees `limit` to run now.
    fn make_room(&self, limit: Limit) {
        match limit {
            Limit::WalBytes => {
                let _ = self.wake_checkpoint.try_send(());
            }
            Limit::DirtyEntries | Limit::DirtyBytes => self.wake_flusher.notify_one(),
        }
    }

    fn reject(&self, limit: Limit, started: Instant) -> Error {
        self.counters
            .backpressure_rejections
            .fetch_add(1, Ordering::Relaxed);
        Error::Backpressure {
            limit,
            waited: started.elapsed(),
        }
    }

    /// Wakes writers waiting for room.
    pub(crate) fn room_made(&self) {
        let (lock, cvar) = &self.room;
        *lock.lock() += 1;
        cvar.notify_all();
        self.room_async.notify_waiters();
    }

    fn count_read(&self) {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether misses and unknown counter bases are read from the database.
    fn reads_through(&self) -> bool {
        self.writer.is_some() && self.cfg.read_through
    }

    /// Read-through with concurrent misses on one key collapsed into one
    /// query. The row goes to the clean cache unless the key was written
    /// while it loaded.
    async fn load(&self, key: &Key) -> Result<Option<(Value, i64)>> {
        let Some(writer) = self.writer.as_ref().filter(|_| self.cfg.read_through) else {
            return Ok(None);
        };
        let cell = self
            .loads
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let result = cell
            .get_or_init(|| async {
                let ticket = self.state.load_ticket(key);
                self.counters.loads.fetch_add(1, Ordering::Relaxed);
                match writer.load(std::slice::from_ref(key)).await {
                    Ok(mut rows) => {
                        let row = rows.pop().and_then(|(_, row)| row);
                        self.state.insert_loaded(ticket, row.clone());
                        Ok(row)
                    }
                    Err(e) => Err(Arc::new(e.to_string())),
                }
            })
            .await
            .clone();
        {
            let mut loads = self.loads.lock();
            if loads.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                loads.remove(key);
            }
        }
        result.map_err(|e| Error::Load {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }
}
