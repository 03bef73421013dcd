//! Opening: lock the directory, connect (lazily), recover the WAL, check
//! the database's progress row, start the background work.

use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::Instrument;
use writebehind_wal::{RebuildSource, Rebuilt, Replica, ReplicatedLog, StdIo};
use writebehind_writer::{redact_url, Announcement, TableKind, TableSpec, Writer, WriterConfig};

use crate::backpressure::Room;
use crate::cache::WriteBehind;
use crate::checkpoint::{Compactor, CompactorParts};
use crate::config::{Builder, Config};
use crate::key::{CacheKey, TypedKey};
use crate::lock::{DirLock, LockedWal};
use crate::metrics::{Metrics, Unflushed};
use crate::pipeline::{FlushParts, Pipeline};
use crate::shared::{Parts, Shared};
use crate::shutdown::Lifetime;
use crate::supervise::Supervisor;
use crate::value::CacheValue;
use crate::{recovery, Error, Result};

/// The local dead-letter file: rows the database refused and could not
/// even store in its dead-letter table.
pub(crate) const DEAD_LETTER_FILE: &str = "dead-letters.jsonl";

impl<K: CacheKey, V: CacheValue> Builder<K, V> {
    /// Opens the cache inside the current tokio runtime: recovers the WAL,
    /// connects to the database (if set) and starts the flusher.
    pub async fn open(self) -> Result<WriteBehind<K, V>> {
        WriteBehind::open(self.cfg).await
    }

    /// Opens the cache from a plain thread, with a small runtime of its own
    /// for the flusher. Must not be called from inside a tokio runtime.
    pub fn open_blocking(self) -> Result<WriteBehind<K, V>> {
        WriteBehind::open_blocking(self.cfg)
    }
}

impl<K: CacheKey, V: CacheValue> WriteBehind<K, V> {
    pub(crate) async fn open(cfg: Config) -> Result<Self> {
        let span = tracing::info_span!("open", dir = %cfg.dir().display(), instance = tracing::field::Empty);
        open_in(cfg, span.clone()).instrument(span).await
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
                path: cfg.dir().to_path_buf(),
                source,
            })?;
        // The runtime is handed over only after a successful open: an error
        // inside `block_on` would drop it there, which panics.
        let cache = rt.block_on(Self::open(cfg))?;
        cache.life.set_runtime(rt);
        Ok(cache)
    }
}

async fn open_in<K: CacheKey, V: CacheValue>(
    cfg: Config,
    span: tracing::Span,
) -> Result<WriteBehind<K, V>> {
    cfg.validate()?;
    // The mapping's own mistakes (key columns against the key type, names)
    // are refused before anything is touched, with or without a database.
    table_spec::<K, V>(&cfg)?;
    // Only real directories are locked; a test file system is private anyway.
    let lock = match &cfg.io() {
        None => Some(DirLock::acquire(cfg.dir()).await?),
        Some(_) => None,
    };
    let writer = match &cfg.database() {
        Some(url) => Some(connect::<K, V>(&cfg, url).await?),
        None => None,
    };
    let notify = match (cfg.notify(), &writer) {
        (Some(false), _) | (None, None) => false,
        (None, Some(w)) => w.supports_notify(),
        (Some(true), Some(w)) if w.supports_notify() => true,
        (Some(true), _) => {
            return Err(Error::Config(format!(
                "notify(true) needs a PostgreSQL database, but {} has no NOTIFY: the clean TTL alone bounds staleness there",
                cfg.database().map_or_else(|| "a cache without a database".to_owned(), redact_url)
            )))
        }
    };
    if cfg.broadcast_invalidations() && !notify {
        return Err(Error::Config(
            "broadcast_invalidations(true) needs notify on (a PostgreSQL database): invalidations travel on its channel".into(),
        ));
    }
    // The metrics' instance label: the id the database knows, else the directory.
    let instance = match &writer {
        Some(w) => w.config().instance().to_owned(),
        None => cfg.dir().display().to_string(),
    };
    span.record("instance", instance.as_str());
    let metrics = Metrics::register(&instance);
    crate::metrics::set_limits(&instance, cfg.limits());
    // Started first, so its connection is made while recovery runs; it
    // reaches the state once that exists.
    let target: Arc<OnceLock<Weak<Shared>>> = Arc::default();
    let listen_by = Instant::now() + Duration::from_secs(2);
    let listener = match &writer {
        Some(writer) if notify => {
            let target = target.clone();
            writer.listen_all(Arc::new(move |announced: Announcement| {
                if let Some(sh) = target.get().and_then(Weak::upgrade) {
                    match announced {
                        Announcement::Flushed(keys) => crate::read::invalidate(&sh, &keys),
                        Announcement::Invalidated { keys, prefixes } => {
                            crate::read::invalidated_elsewhere(&sh, &keys, &prefixes)
                        }
                    }
                }
            }))
        }
        _ => None,
    };
    let (replica, took_over, rebuilt) = match cfg.replication() {
        Some(log) => {
            let (r, t, b) = replication(&cfg, log.as_ref()).await?;
            (Some(r), t, b)
        }
        None => (None, None, None),
    };
    let sink = replica.as_ref().map(|r| -> recovery::Replica {
        (r.clone(), r.watermark().clone(), replica_timeout(&cfg))
    });
    let mut opened = recovery::open(&cfg, sink)?;
    if let Some(r) = rebuilt {
        opened.report.rebuilt_records = Some(r.records);
        opened.report.rebuilt_checkpoint = r.checkpoint;
    }
    if let Some(rep) = &replica {
        reconcile(&cfg, rep.as_ref(), took_over, &mut opened)?;
    }
    metrics.recovered(
        &instance,
        opened.report.records_replayed,
        opened.report.elapsed,
    );
    let state = Arc::new(opened.state);
    let wal = Arc::new(LockedWal::new(opened.wal, lock));
    let metrics = Arc::new(metrics);
    let unflushed = Arc::new(Unflushed::default());
    let supervisor = Arc::new(Supervisor::default());
    let pipeline = match writer {
        Some(writer) => {
            let p = Pipeline::new(
                &cfg,
                writer,
                notify,
                opened.flushed,
                wal.last_lsn(),
                // The epoch taken on the stream: the database's is at least it.
                opened.report.stream_owner_epoch.unwrap_or(0),
                FlushParts {
                    state: state.clone(),
                    wal: wal.clone(),
                    unflushed: unflushed.clone(),
                    metrics: metrics.clone(),
                    replica: replica.clone(),
                },
            );
            p.at_open().await?;
            if opened.report.dirty_entries > 0 || opened.report.in_flight.is_some() {
                unflushed.recovered();
            }
            Some(Arc::new(p))
        }
        None => None,
    };
    let closed = Arc::new(AtomicBool::new(false));
    let (compactor, wake_checkpoint) = Compactor::new(
        &cfg,
        CompactorParts {
            state: state.clone(),
            wal: wal.clone(),
            replica: replica.clone(),
            metrics: metrics.clone(),
            supervisor: supervisor.clone(),
            closed: closed.clone(),
        },
    );
    let compactor = Arc::new(compactor);
    let room = Arc::new(Room::new(
        &cfg,
        state.clone(),
        compactor.clone(),
        pipeline.as_ref().map(|p| p.waker()),
    ));
    // A checkpoint makes room. Weak: the room holds the compactor.
    let r = Arc::downgrade(&room);
    compactor.on_checkpoint(move || {
        if let Some(r) = r.upgrade() {
            r.made();
        }
    });
    // What a finished flush sets going: room for waiting writes, the
    // compactor's count, the replica's trim; the metrics below.
    if let Some(p) = &pipeline {
        let (r, c) = (room.clone(), compactor.clone());
        p.on_flushed(move |_| {
            r.made();
            c.flushed();
        });
        if let Some(rep) = &replica {
            let rep = rep.clone();
            p.on_flushed(move |f| rep.flushed(f.position));
        }
    }
    let flusher = pipeline
        .clone()
        .map(|p| (p, cfg.flush_interval(), supervisor.clone()));
    let shared = Arc::new(Shared::new(Parts {
        cfg,
        state,
        wal,
        pipeline,
        room,
        compactor: compactor.clone(),
        metrics,
        unflushed,
        supervisor,
        recovery: opened.report,
        closed,
        replica,
    }));
    if let Some(p) = shared.pipeline() {
        let weak = Arc::downgrade(&shared);
        p.on_flushed(move |f| {
            if let Some(sh) = weak.upgrade() {
                sh.metrics().flushed(f.items, f.elapsed);
                sh.publish_metrics();
            }
        });
    }
    // Set once, here: the listener's callback reads it.
    let _first = target.set(Arc::downgrade(&shared));
    if let Some(l) = &listener {
        // Subscribed before open returns, so no flush after it is missed;
        // a database that is down only delays this (by 2 s at most).
        let wait = listen_by.saturating_duration_since(Instant::now());
        if !l.first_attempt(wait).await {
            tracing::warn!("not yet listening for other instances' flushes (database unreachable); retrying in the background");
        }
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let flusher = flusher.map(|(p, interval, supervisor)| {
        tokio::runtime::Handle::current().spawn(crate::pipeline::run(
            p,
            interval,
            supervisor,
            shutdown_rx,
        ))
    });
    // The checkpoint thread lives as long as the cache; its turns publish the metrics.
    let checkpointer = crate::checkpoint::spawn(
        &compactor,
        wake_checkpoint,
        Arc::downgrade(&shared),
        Shared::publish_metrics,
    )?;
    let life = Arc::new(Lifetime::new(
        shared.clone(),
        shutdown,
        flusher,
        checkpointer,
        listener,
    ));
    if let Some(r) = shared.replica() {
        let weak = Arc::downgrade(&shared);
        let panicked = Box::new(move || {
            if let Some(sh) = weak.upgrade() {
                sh.supervisor().panicked();
            }
        });
        r.clone().start(shared.wal_handle(), panicked)?;
    }
    Ok(WriteBehind {
        shared,
        life,
        _types: PhantomData,
    })
}

/// How long a `Replicated` write waits for the replica: the backpressure
/// wait (a write that may not wait for room waits this long for it).
fn replica_timeout(cfg: &Config) -> Duration {
    match cfg.backpressure() {
        crate::Backpressure::Wait(d) => d,
        crate::Backpressure::Fail => Duration::from_secs(1),
    }
}

/// How long an open that cannot go on without the replica (a rebuild, a
/// `Replicated` cache) keeps trying to reach it.
const REPLICA_PATIENCE: Duration = Duration::from_secs(30);

/// With replication on: the instance's replica, its claim and what it
/// holds, and the rebuild of an empty WAL directory opened with an explicit
/// id.
async fn replication(
    cfg: &Config,
    log: &dyn ReplicatedLog,
) -> Result<(
    Arc<dyn Replica>,
    Option<Box<dyn RebuildSource>>,
    Option<Rebuilt>,
)> {
    let empty = writebehind_wal::is_empty_log(&StdIo, cfg.dir())?;
    let instance = crate::instance::id(cfg.dir(), cfg.instance_id())?;
    let rebuilding = empty && cfg.instance_id().is_some();
    let replica = log.replica(&instance)?;
    // Without the replica a `Replicated` cache cannot know what a power cut
    // took from its local tail, and an empty directory with an explicit id
    // must not start from nothing: both wait for it (a cluster electing a
    // leader answers within seconds), then refuse. Other modes go on.
    let must = rebuilding || cfg.durability() == crate::Durability::Replicated;
    let patience = if must {
        REPLICA_PATIENCE
    } else {
        Duration::ZERO
    };
    let took = match replica.take_over(patience).await.map_err(Error::from) {
        Ok(t) => Some(t),
        Err(Error::Replication { url, reason }) if must => {
            return Err(Error::Replication {
                url,
                reason: format!(
                    "cannot read the stream at open ({reason}); a {} cannot open without it: it cannot know what the local WAL lost",
                    if rebuilding { "rebuild of an empty WAL directory" } else { "cache with Durability::Replicated" }
                ),
            })
        }
        Err(Error::Replication { url, reason }) => {
            tracing::warn!(url = %url, %reason,
                "NATS unreachable at open: the local WAL is not reconciled with the stream (a record a power cut took locally that only the stream holds is not restored); replication claims the instance and catches up once NATS answers");
            None
        }
        Err(e) => return Err(e),
    };
    let rebuilt = match &took {
        Some(t) if rebuilding => {
            let r = writebehind_wal::rebuild::rebuild(&StdIo, cfg.dir(), t.as_ref())?;
            tracing::info!(instance, checkpoint = ?r.checkpoint, records = r.records,
                "WAL rebuilt from the replica");
            Some(r)
        }
        _ => None,
    };
    Ok((replica, took, rebuilt))
}

/// Appends what the replica holds past the local end before any new write
/// gets an LSN; without the replica, says where a later claim starts.
fn reconcile(
    cfg: &Config,
    rep: &dyn Replica,
    took: Option<Box<dyn RebuildSource>>,
    opened: &mut recovery::Opened,
) -> Result<()> {
    let local = opened.wal.last_lsn();
    let Some(t) = took else {
        rep.defer_claim(local + 1);
        return Ok(());
    };
    opened.report.stream_owner_epoch = rep.epoch();
    let stream = t.last_lsn();
    if stream <= local {
        return Ok(());
    }
    let (frames, records) = t.frames_from(local + 1)?;
    if records > 0 {
        opened.import(cfg, &frames, records)?;
    }
    let now = opened.wal.last_lsn();
    if now < stream {
        // The replica covers LSNs it no longer holds (trimmed below a
        // flush) and the local WAL lost them too: giving them out again
        // would mix two histories.
        return Err(Error::Wal(writebehind_wal::Error::ReplicaGap {
            expected: now + 1,
            found: stream,
        }));
    }
    Ok(())
}

/// The writer's table: the built-in counter table, or `V`'s mapping with
/// `K`'s key columns (the mapping's table wins over the builder's).
pub(crate) fn table_spec<K: CacheKey, V: CacheValue>(cfg: &Config) -> Result<TableSpec> {
    let Some(mapping) = V::table_mapping() else {
        return Ok(TableSpec::counter(cfg.table())?);
    };
    let table = mapping.table.as_deref().unwrap_or(cfg.table());
    let spec = match V::table_kind() {
        TableKind::Counter => TableSpec::counter(table)?,
        TableKind::Record(codec) => TableSpec::record(table, codec)?,
    };
    let key = TypedKey::<K>::new(table, &mapping.key_columns)?;
    Ok(spec
        .key(Arc::new(key))
        .version_column(mapping.version_column.as_deref())?
        .mode(mapping.mode))
}

/// Builds the writer: a lazy pool, so a cache opens while its database is
/// down (the pipeline's `at_open` then asks what it can).
async fn connect<K: CacheKey, V: CacheValue>(cfg: &Config, url: &str) -> Result<Writer> {
    let spec = table_spec::<K, V>(cfg)?;
    let read_back = cfg.read_back().unwrap_or(!spec.is_delta_record());
    let instance = crate::instance::id(cfg.dir(), cfg.instance_id())?;
    let mut wcfg = WriterConfig::new(instance)
        .table(spec)
        .conflict_policy(cfg.conflict_policy().clone())
        .report_values(read_back);
    if let Some(prefix) = cfg.bookkeeping_prefix() {
        wcfg = wcfg.bookkeeping_prefix(prefix)?;
    }
    if cfg.io().is_none() {
        wcfg = wcfg.dead_letter_file(cfg.dir().join(DEAD_LETTER_FILE));
    }
    Ok(Writer::connect(url, wcfg).await?)
}
