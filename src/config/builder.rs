//! The builder: one setter per setting, each with its default.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use writebehind_core::{Limits, Refresh as RefreshAhead};
use writebehind_wal::{Durability, ReplicatedLog};
use writebehind_writer::{Conflict, ConflictPolicy, RetryPolicy};

use super::{Backpressure, Config};
use crate::key::CacheKey;
use crate::value::CacheValue;

/// Opens a [`WriteBehind`](crate::WriteBehind). Every setter documents its default.
#[must_use]
pub struct Builder<K, V> {
    pub(crate) cfg: Config,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: CacheKey, V: CacheValue> Builder<K, V> {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            cfg: Config {
                dir,
                durability: Durability::Fsync,
                segment_size: 64 << 20,
                preallocate: true,
                limits: Limits::default(),
                max_wal_bytes: 1 << 30,
                checkpoint_bytes: 64 << 20,
                backpressure: Backpressure::Wait(Duration::from_secs(5)),
                salvage: false,
                database: None,
                table: "counters".into(),
                bookkeeping_prefix: None,
                create_tables: false,
                read_through: true,
                read_back: None,
                flush_interval: Duration::from_secs(1),
                flush_dirty_entries: 50_000,
                flush_dirty_bytes: 32 << 20,
                close_timeout: Duration::from_secs(30),
                wait_timeout: Duration::from_secs(30),
                conflict_policy: ConflictPolicy::KeepDatabase,
                on_conflict: None,
                retry: RetryPolicy::default(),
                io: None,
                notify: None,
                broadcast_invalidations: false,
                instance_id: None,
                replication: None,
            },
            _types: PhantomData,
        }
    }

    /// Durability of writes that do not choose their own. Default: [`Durability::Fsync`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.cfg.durability = durability;
        self
    }

    /// WAL segment size. Default: 64 MiB.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.cfg.segment_size = bytes;
        self
    }

    /// Zero-fill WAL segments a little ahead of the data so an fdatasync commits no
    /// allocation or size change (about 1.5× the `Fsync` rate of one writer on ext4 here). Turn
    /// it off on copy-on-write file systems (btrfs, ZFS). Default: on. See
    /// [`writebehind_wal::WalBuilder::preallocate`].
    pub fn preallocate(mut self, on: bool) -> Self {
        self.cfg.preallocate = on;
        self
    }

    /// Most dirty (unflushed) entries held. Default: 1 000 000.
    pub fn max_dirty_entries(mut self, n: usize) -> Self {
        self.cfg.limits.max_dirty_entries = n;
        self
    }

    /// Most bytes held by dirty entries. Default: 256 MiB.
    pub fn max_dirty_bytes(mut self, n: usize) -> Self {
        self.cfg.limits.max_dirty_bytes = n;
        self
    }

    /// Largest key, in bytes of its text. Default: 1 KiB.
    pub fn max_key_bytes(mut self, n: usize) -> Self {
        self.cfg.limits.max_key_bytes = n;
        self
    }

    /// Largest encoded value. Default: 1 MiB.
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.cfg.limits.max_value_bytes = n;
        self
    }

    /// Clean (flushed or loaded) entries kept for reads. Default: 100 000.
    pub fn clean_capacity(mut self, n: usize) -> Self {
        self.cfg.limits.clean_capacity = n;
        self
    }

    /// How long a clean entry may be served before it is reloaded. Default: none.
    pub fn clean_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.cfg.limits.clean_ttl = ttl;
        self
    }

    /// Most bytes held by clean entries (key plus value bytes, 8 per
    /// counter), on top of [`clean_capacity`](Self::clean_capacity): both
    /// budgets hold. Default: none (entries alone). Zero is refused at open.
    pub fn clean_capacity_bytes(mut self, bytes: Option<usize>) -> Self {
        self.cfg.limits.clean_capacity_bytes = bytes;
        self
    }

    /// Refresh hot clean entries before their [`clean_ttl`](Self::clean_ttl)
    /// passes, so their readers never wait for a reload: a read near expiry
    /// starts one background load with the XFetch probability (it grows as
    /// expiry nears and with what the last load took, times
    /// [`RefreshAhead::beta`]); a read just past expiry is served the old
    /// copy for up to [`RefreshAhead::max_stale`] while one load refreshes
    /// it. Loads stay single-flight and never overwrite a dirty entry; a
    /// failed refresh is logged and counted and pauses refreshes (50 ms,
    /// doubling to 5 s) before a later read tries again. Needs a
    /// `clean_ttl` (refused at open without one).
    /// Default: none.
    pub fn refresh_ahead(mut self, refresh: Option<RefreshAhead>) -> Self {
        self.cfg.limits.refresh = refresh;
        self
    }

    /// Most WAL bytes on disk before writes meet backpressure. Default: 1 GiB.
    pub fn max_wal_bytes(mut self, n: u64) -> Self {
        self.cfg.max_wal_bytes = n;
        self
    }

    /// WAL bytes written since the last checkpoint that trigger the next one
    /// (compaction). Default: 64 MiB.
    pub fn checkpoint_bytes(mut self, n: u64) -> Self {
        self.cfg.checkpoint_bytes = n;
        self
    }

    /// What a write does when a limit is full. Default: wait up to 5 s.
    pub fn backpressure(mut self, policy: Backpressure) -> Self {
        self.cfg.backpressure = policy;
        self
    }

    /// Let recovery skip corrupt WAL records (reported in the recovery
    /// report) instead of failing. Default: off.
    pub fn salvage(mut self, on: bool) -> Self {
        self.cfg.salvage = on;
        self
    }

    /// The database to flush to: `sqlite://path`, `postgres://…` or
    /// `mysql://…`. Default: none (the cache keeps everything in its WAL).
    pub fn database(mut self, url: impl Into<String>) -> Self {
        self.cfg.database = Some(url.into());
        self
    }

    /// The data table. A [`Record`](crate::Record) whose
    /// [`Mapping`](crate::Mapping) names a table goes to that table instead.
    /// Default: `counters`.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.cfg.table = name.into();
        self
    }

    /// The prefix of the cache's own tables in the database:
    /// `{prefix}progress`, `{prefix}conflicts`, `{prefix}dead_letters`.
    /// They never live in the data table. A prefix that does not make plain
    /// identifiers is refused at open. Default: `writebehind_`.
    pub fn bookkeeping_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.cfg.bookkeeping_prefix = Some(prefix.into());
        self
    }

    /// Create the data table (from the mapping: key columns in the key
    /// type's SQL types, the record's columns, the version column if
    /// mapped) and the progress, conflicts and dead-letter tables when
    /// missing. An existing data table is never altered; either way it is
    /// checked against the mapping at open, and a mismatch is
    /// [`Error::Schema`](crate::Error::Schema). Default: off.
    pub fn create_tables(mut self, on: bool) -> Self {
        self.cfg.create_tables = on;
        self
    }

    /// Load misses from the database. Default: on (when a database is set).
    pub fn read_through(mut self, on: bool) -> Self {
        self.cfg.read_through = on;
        self
    }

    /// After a flush, read back each row's new value and version so the
    /// cache keeps an exact clean copy (and the next put carries the right
    /// version). Off: flushes are faster (no read-back query on SQLite and
    /// MySQL) and a counter read after its flush goes to the database.
    ///
    /// Default: on, except for a delta record (a record whose fields are all
    /// counters, written into a table of the service's own): its totals
    /// belong to a table other code writes too, so a copy read back at the
    /// flush would soon be stale, and reading it back costs SQLite and MySQL
    /// a second statement per flush. A read after the flush loads the row
    /// and adds the pending deltas.
    pub fn read_back(mut self, on: bool) -> Self {
        self.cfg.read_back = Some(on);
        self
    }

    /// Longest time between flushes. Default: 1 s.
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.cfg.flush_interval = every;
        self
    }

    /// Dirty entries that trigger a flush before the interval. Default: 50 000.
    pub fn flush_dirty_entries(mut self, n: usize) -> Self {
        self.cfg.flush_dirty_entries = n;
        self
    }

    /// Dirty bytes that trigger a flush before the interval. Default: 32 MiB.
    pub fn flush_dirty_bytes(mut self, n: usize) -> Self {
        self.cfg.flush_dirty_bytes = n;
        self
    }

    /// How long `close` keeps trying to flush. Default: 30 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.close_timeout = timeout;
        self
    }

    /// The bound on every wait for the database: [`flush`](crate::WriteBehind::flush),
    /// [`flushed`](crate::WriteBehind::flushed) and counter reads that wait for a
    /// flush of their key to settle. When it passes, the call returns
    /// [`Error::FlushTimeout`](crate::Error::FlushTimeout) (or
    /// [`Error::Unsettled`](crate::Error::Unsettled)) naming the flusher's
    /// last failure; the writes stay in the WAL. Default: 30 s.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.wait_timeout = timeout;
        self
    }

    /// What to do when a put or delete meets a changed row. Default: keep the database's row.
    pub fn conflict_policy(mut self, policy: ConflictPolicy) -> Self {
        self.cfg.conflict_policy = policy;
        self
    }

    /// Called for every conflict (also counted and written to the conflicts table). Default: none.
    pub fn on_conflict(mut self, hook: impl Fn(&Conflict) + Send + Sync + 'static) -> Self {
        self.cfg.on_conflict = Some(Arc::new(hook));
        self
    }

    /// Retry and circuit-breaker settings of the flusher, also used for
    /// creating tables and checking the progress row. A round gives up after
    /// the policy's attempts; the next round starts after a pause that
    /// doubles with each failed round (from the policy's first delay to its
    /// cap), so even permanent failures never spin. Default:
    /// [`RetryPolicy::default`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.cfg.retry = policy;
        self
    }

    /// Announce flushed keys to other instances and drop the keys they
    /// announce (PostgreSQL `NOTIFY`/`LISTEN` on the channel `wb_<table>`),
    /// so clean reads converge without waiting for the clean TTL. Turning it
    /// on for a backend without `NOTIFY` (SQLite, MySQL) is an error at open.
    /// Default: on for PostgreSQL, off elsewhere.
    pub fn notify(mut self, on: bool) -> Self {
        self.cfg.notify = Some(on);
        self
    }

    /// Send [`invalidate`](crate::WriteBehind::invalidate) and
    /// [`invalidate_prefix`](crate::WriteBehind::invalidate_prefix) to the other
    /// instances too, over the [`notify`](Self::notify) channel (PostgreSQL):
    /// they drop their clean copies, never their dirty entries. Needs
    /// `notify` (refused at open without it). Default: off.
    pub fn broadcast_invalidations(mut self, on: bool) -> Self {
        self.cfg.broadcast_invalidations = on;
        self
    }

    /// This cache's instance id: the name of its progress row in the
    /// database and of its replication subject. Letters, digits and `-`, at
    /// most 64. The directory's `instance.id` is written with it on first
    /// open, and an existing one must match. With [`replicate`](Self::replicate),
    /// an explicit id on an empty WAL directory rebuilds the log from the
    /// stream first (a lost instance carries on elsewhere). Default: the id
    /// in `instance.id`, made at random on first open.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.cfg.instance_id = Some(id.into());
        self
    }

    /// Replicate every WAL group to `log`: NATS JetStream with the feature
    /// `nats` (`writebehind::nats::JetStream::new(url)`, on the
    /// subject `wb.<instance>.wal` of the stream `WRITEBEHIND`, deduplicated
    /// by message id; its stream, replicas and subject prefix are set on it).
    /// [`Durability::Replicated`] writes then wait for the replica's
    /// acknowledgement (within the backpressure wait); other modes
    /// replicate behind, and catch up when the replica returns. Each open
    /// claims the instance on the replica (fencing earlier owners) and
    /// reconciles the local WAL with it. The replica is trimmed below the
    /// flushed position. Default: no replication.
    pub fn replicate(mut self, log: impl ReplicatedLog + 'static) -> Self {
        self.cfg.replication = Some(Arc::new(log));
        self
    }

    /// The file system under the WAL (tests inject faults here). Default: real files.
    pub fn io(mut self, io: Arc<dyn writebehind_wal::io::Io>) -> Self {
        self.cfg.io = Some(io);
        self
    }
}
