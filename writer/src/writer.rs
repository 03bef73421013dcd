//! [`Writer`]: connects, creates tables, flushes cuts exactly once, loads rows.
//!
//! This file: the writer, its shared state and `flush`. By job:
//! `server.rs` (server facts, key limits, tables), `claim.rs` (the progress
//! row and the owner epoch), `read.rs` (reads outside a flush).

mod claim;
mod read;
mod server;

pub use claim::Claim;
#[cfg(test)]
pub(crate) use server::mysql_has_row_alias;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use writebehind_core::{Change, Cut, ItemOutcome, Key, Lsn};

use crate::config::{Conflict, WriterConfig};
use crate::db::{Conn, Pool};
use crate::error::{Error, Result};
use crate::flush::Flush;
use crate::ident::Backend;
use crate::schema::SqlValue;
use crate::sql::{Dialect, Facts};

/// A row that failed permanently and was dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The key.
    pub key: Key,
    /// The change that could not be written.
    pub change: Change,
    /// The database's or codec's error text.
    pub error: String,
    /// The dead-letter table could not hold it either, so it went to the
    /// local dead-letter file ([`WriterConfig::dead_letter_file`]).
    pub local: bool,
}

/// What one [`Writer::flush`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// One outcome per cut item, in `cut.items` order. When
    /// `already_applied`, the outcomes are `Written { None, None }` /
    /// `Deleted`: the rows were written by an earlier flush and their current
    /// values are unknown.
    pub outcomes: Vec<ItemOutcome>,
    /// Every version conflict met (also written to the conflicts table).
    pub conflicts: Vec<Conflict>,
    /// Every dead-lettered item (also written to the dead-letter table).
    pub dead_letters: Vec<DeadLetter>,
    /// The progress row already covered `cut.position`: nothing was written.
    pub already_applied: bool,
    /// Data rows inserted, updated or deleted.
    pub rows: u64,
    /// SQL statements run inside the transaction (BEGIN/COMMIT not counted).
    pub statements: u64,
    /// Conflict resolvers that panicked (their conflicts kept the database's row).
    pub resolver_panics: u64,
}

/// The SQL sink of one cache instance. Cheap to clone (shared pool); `Send + Sync`.
///
/// # One owner per instance
///
/// The progress row carries an **owner epoch**. [`Writer::claim`] takes
/// the next one in its own transaction; every flush transaction then reads
/// the epoch with the statement that locks the progress row and, when a
/// newer owner has claimed the instance since, rolls back with
/// [`Error::Fenced`]. Row locks order a claim and a flush of one instance:
/// a flush either commits before the claim takes the row (the claim then
/// sees its position) or reads the new epoch and is fenced, never both. A
/// flush on a writer that has not claimed claims first (epoch at least 0).
#[derive(Clone, Debug)]
pub struct Writer {
    inner: Arc<Inner>,
}

/// What every clone of a [`Writer`] shares.
#[derive(Debug)]
pub(crate) struct Inner {
    pool: Pool,
    dialect: Dialect,
    cfg: WriterConfig,
    /// The owner epoch this writer claimed; 0 before its first claim
    /// (claimed epochs start at 1).
    epoch: AtomicU64,
    /// The progress table is known to have `owner_epoch` (checked once).
    migrated: AtomicBool,
    /// Serialises claims made through this writer (and the implicit one
    /// of a first flush), so clones do not claim twice.
    claiming: tokio::sync::Mutex<()>,
    /// What the server told at the first connection (MySQL: its version,
    /// the key columns' collations); set once.
    facts: std::sync::OnceLock<Facts>,
}

impl Inner {
    pub(crate) fn dialect(&self) -> &Dialect {
        &self.dialect
    }

    pub(crate) fn cfg(&self) -> &WriterConfig {
        &self.cfg
    }

    /// The server facts (defaults until learnt: `Writer::flush` learns them first).
    pub(crate) fn facts(&self) -> &Facts {
        static NONE: std::sync::OnceLock<Facts> = std::sync::OnceLock::new();
        self.facts
            .get()
            .unwrap_or_else(|| NONE.get_or_init(Facts::default))
    }

    /// The epoch this writer claimed (0 before any claim).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// `(position, owner_epoch)` of a progress row read by `progress_read`
    /// (no row: `(None, 0)`; an epoch column not read: 0).
    pub(crate) fn decode_progress(
        &self,
        row: Option<&Vec<SqlValue>>,
    ) -> Result<(Option<Lsn>, i64)> {
        let bad = |message: String| Error::BadRow {
            table: self.cfg.progress_table.to_string(),
            key: self.cfg.instance.clone(),
            message,
        };
        let Some(row) = row else {
            return Ok((None, 0));
        };
        let position = match row.first() {
            Some(SqlValue::Int(p)) => {
                Some(Lsn::try_from(*p).map_err(|_| bad(format!("negative position {p}")))?)
            }
            _ => None,
        };
        let epoch = match row.get(1) {
            Some(SqlValue::Int(e)) if *e < 0 => {
                return Err(bad(format!("negative owner_epoch {e}")))
            }
            Some(SqlValue::Int(e)) => *e,
            _ => 0,
        };
        Ok((position, epoch))
    }
}

impl Writer {
    /// A pooled connection outside a transaction; `what` names the caller
    /// in the error (`"<what>: connect"`).
    pub(crate) async fn connect_for(&self, what: &str) -> Result<Conn> {
        self.inner
            .pool
            .acquire()
            .await
            .map_err(Error::sql(format!("{what}: connect")))
    }

    /// Builds the pool and validates the configuration. The pool is lazy: no
    /// connection is made here, so a cache can open while its database is
    /// down; the first statement reports connection errors (transient).
    /// SQLite URLs get `create_if_missing` and WAL journal mode (in-memory
    /// databases: one connection, kept forever).
    pub async fn connect(url: &str, config: WriterConfig) -> Result<Writer> {
        config.validate()?;
        let backend = Backend::from_url(url)?;
        let pool = Pool::connect(url, backend, &config)?;
        let dialect = Dialect::new(backend, &config);
        let facts = std::sync::OnceLock::new();
        if backend != Backend::MySql {
            let _ = facts.set(Facts::default());
        }
        Ok(Writer {
            inner: Arc::new(Inner {
                pool,
                dialect,
                cfg: config,
                epoch: AtomicU64::new(0),
                migrated: AtomicBool::new(false),
                claiming: tokio::sync::Mutex::new(()),
                facts,
            }),
        })
    }

    /// The backend the URL named.
    pub fn backend(&self) -> Backend {
        self.inner.dialect.backend
    }

    /// The configuration this writer runs with.
    pub fn config(&self) -> &WriterConfig {
        &self.inner.cfg
    }

    /// The pool (the `NOTIFY` side of `notify.rs`).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub(crate) fn dialect(&self) -> &Dialect {
        &self.inner.dialect
    }

    /// Writes `cut` in ONE transaction, exactly once per instance:
    ///
    /// 1. lock this instance's progress row (created if missing), reading
    ///    its position and owner epoch in one statement; if the epoch is
    ///    newer than this writer's claim, roll back with [`Error::Fenced`]
    ///    (a writer that never claimed claims first, see
    ///    [`claim`](Self::claim)); if the position is already
    ///    `>= cut.position`, roll back and report `already_applied`;
    /// 2. counters: multi-row upsert-add (never a conflict);
    /// 3. conditional puts/deletes (`Expected::Absent`/`Version`): read the
    ///    rows `FOR UPDATE`, split into writes and conflicts; inserts that lose
    ///    a race with a concurrent insert become conflicts too;
    /// 4. conflicts per [`ConflictPolicy`](crate::ConflictPolicy);
    /// 5. unconditional upserts and deletes, multi-row, chunked; on
    ///    PostgreSQL `UNNEST` arrays, on MySQL `VALUES .. ON DUPLICATE KEY
    ///    UPDATE` (then re-selected for versions), on SQLite `VALUES .. ON
    ///    CONFLICT .. RETURNING`;
    /// 6. a chunk that fails permanently is undone (statement atomicity, a
    ///    savepoint on PostgreSQL) and split in halves until the bad row is
    ///    alone; that row is dead-lettered with the error text;
    /// 7. conflict and dead-letter rows, progress = `cut.position`, commit.
    ///
    /// A transient error aborts the transaction (nothing written) and is
    /// returned: retry the same cut (see [`Retrier`](crate::Retrier)).
    pub async fn flush(&self, cut: &Cut) -> Result<FlushReport> {
        let position = i64::try_from(cut.position).map_err(|_| Error::PositionOutOfRange {
            position: cut.position,
        })?;
        self.server_facts().await?;
        if self.inner.epoch() == 0 {
            let _one = self.inner.claiming.lock().await;
            if self.inner.epoch() == 0 {
                self.claim_locked(0).await?;
            }
        }
        // PostgreSQL: optimistic first, no savepoints. A row error then aborts
        // the transaction, and the flush reruns with a savepoint per chunk.
        let mut savepoints = false;
        loop {
            let tx = self
                .inner
                .pool
                .begin()
                .await
                .map_err(Error::sql("flush: begin"))?;
            let mut f = Flush::new(&self.inner, cut, position, tx, savepoints);
            match f.run().await {
                Err(e) if f.needs_isolation() && !savepoints => {
                    tracing::debug!(error = %e, "writebehind: row error; rerunning the flush with savepoints");
                    f.rollback().await?;
                    savepoints = true;
                }
                result => return result,
            }
        }
    }

    /// Closes the pool, waiting for checked-out connections to return.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    fn ctx(&self, op: &str) -> String {
        format!("{op} from table {}", self.inner.dialect.table_name())
    }
}
