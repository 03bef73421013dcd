//! [`Writer`]: connects, creates tables, flushes cuts exactly once, loads rows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use writebehind_core::{Change, Cut, ItemOutcome, Key, Lsn, Value};

use crate::config::{Conflict, WriterConfig};
use crate::db::Pool;
use crate::error::{Error, ErrorClass, Result};
use crate::flush::Flush;
use crate::ident::Backend;
use crate::schema::{SqlType, SqlValue};
use crate::sql::{Dialect, Facts, Stmt};

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

/// What [`Writer::claim_row`] found and left in the progress row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    /// The owner epoch this writer now holds.
    pub epoch: u64,
    /// The epoch the row held before (0: never claimed, or a new row).
    pub previous: u64,
    /// The instance's committed position when the claim took the row:
    /// every flush that committed before the claim is covered by it.
    pub position: Option<Lsn>,
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

/// MySQL's key columns are `VARCHAR(512)`: characters, not bytes.
const MYSQL_KEY_CHARS: usize = 512;

/// A character set or collation name as the server reports it, safe to
/// render into SQL text.
fn plain_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// MySQL 8.0.19 and later take `INSERT .. AS alias`; MariaDB (any version)
/// and older MySQL do not. `version` is `SELECT VERSION()`.
pub(crate) fn mysql_has_row_alias(version: &str) -> bool {
    if version.to_ascii_lowercase().contains("mariadb") {
        return false;
    }
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    v >= (8, 0, 19)
}

impl Writer {
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

    /// MySQL/MariaDB: learns, once, at the first connection, what the SQL
    /// depends on: the server version (MySQL >= 8.0.19 takes the row alias
    /// `INSERT .. AS new ON DUPLICATE KEY UPDATE c = c + new.c`; MariaDB and
    /// older MySQL `c = c + VALUES(c)`) and the character set and collation
    /// of each text key column (the read-back declares them: two
    /// collations cannot be compared, error 1267). A no-op elsewhere.
    pub(crate) async fn server_facts(&self) -> Result<()> {
        if self.inner.facts.get().is_some() {
            return Ok(());
        }
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(Error::sql("server version: connect"))?;
        let rows = conn
            .conn()
            .fetch("SELECT VERSION()", Vec::new(), &[SqlType::Text])
            .await
            .map_err(Error::sql("server version"))?;
        let version = match rows.first().and_then(|r| r.first()) {
            Some(SqlValue::Text(v)) => v.clone(),
            _ => String::new(),
        };
        let row_alias = mysql_has_row_alias(&version);
        let d = &self.inner.dialect;
        let mut key_charsets = Vec::new();
        for c in d.key_columns() {
            if c.ty != SqlType::Text {
                key_charsets.push(None);
                continue;
            }
            let Stmt { sql, args } = crate::check::mysql_charset(d, c.name.as_str());
            let rows = conn
                .conn()
                .fetch(&sql, args, &[SqlType::Text, SqlType::Text])
                .await
                .map_err(Error::sql("key column collation"))?;
            key_charsets.push(match rows.first().map(|r| (r.first(), r.get(1))) {
                Some((Some(SqlValue::Text(cs)), Some(SqlValue::Text(coll))))
                    if plain_name(cs) && plain_name(coll) =>
                {
                    Some((cs.clone(), coll.clone()))
                }
                _ => None,
            });
        }
        tracing::debug!(%version, row_alias, ?key_charsets, "writebehind: MySQL server facts");
        let _ = self.inner.facts.set(Facts {
            row_alias,
            key_charsets,
        });
        Ok(())
    }

    /// Whether the database can hold `key` in its key columns; the reason
    /// when it cannot. Checked before a write reaches the WAL, so nothing
    /// acknowledged is later refused for its key: PostgreSQL text holds no
    /// NUL byte, MySQL's key columns hold 512 characters.
    pub fn check_key(&self, key: &str) -> std::result::Result<(), String> {
        let vals = self.inner.key_values(key)?;
        let text_key = matches!(&vals[..], [SqlValue::Text(k)] if k == key);
        for v in &vals {
            let SqlValue::Text(t) = v else { continue };
            if self.backend() == Backend::Postgres && t.contains('\0') {
                return Err("PostgreSQL text cannot hold a NUL byte".to_owned());
            }
        }
        if !text_key {
            return Ok(());
        }
        match self.backend() {
            Backend::Postgres if key.contains('\0') => {
                Err("PostgreSQL text cannot hold a NUL byte".to_owned())
            }
            Backend::MySql
                if key.len() > MYSQL_KEY_CHARS && key.chars().count() > MYSQL_KEY_CHARS =>
            {
                Err(format!(
                    "{} characters, but MySQL's key column holds {MYSQL_KEY_CHARS}",
                    key.chars().count()
                ))
            }
            _ => Ok(()),
        }
    }

    /// The backend the URL named.
    pub fn backend(&self) -> Backend {
        self.inner.dialect.backend
    }

    /// The configuration this writer runs with.
    pub fn config(&self) -> &WriterConfig {
        &self.inner.cfg
    }

    /// The pool (the `NOTIFY` side of `notify.rs`, the schema check).
    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub(crate) fn dialect(&self) -> &Dialect {
        &self.inner.dialect
    }

    /// Creates the four tables if they do not exist (`K` is `TEXT` on
    /// PostgreSQL/SQLite and `VARCHAR(512) COLLATE utf8mb4_bin` on MySQL; `ID` an auto-increment key):
    ///
    /// - data: `table(key K PRIMARY KEY, <value column(s)>, version BIGINT NOT NULL)`;
    ///   counters: `value BIGINT NOT NULL`; records: one column per codec column
    ///   (`BIGINT`, `DOUBLE PRECISION`/`REAL`/`DOUBLE`, `TEXT`/`LONGTEXT`,
    ///   `BYTEA`/`BLOB`/`LONGBLOB`, `BOOLEAN`), `NOT NULL` unless nullable.
    /// - progress: `(instance K PRIMARY KEY, position BIGINT NULL, updated_at_ms BIGINT NOT NULL,
    ///   owner_epoch BIGINT NOT NULL DEFAULT 0)`; `position` is the highest WAL position
    ///   this instance committed, `owner_epoch` the epoch of its current owner (see
    ///   [`claim`](Self::claim)). A progress table created before `owner_epoch` existed
    ///   gets the column at the first claim (`ALTER TABLE .. ADD COLUMN`).
    /// - conflicts: `(id ID, instance K, table_name TEXT, position BIGINT, key K,
    ///   change TEXT /*JSON*/, expected TEXT /*JSON*/, database_version BIGINT NULL,
    ///   resolution TEXT /*kept_database|overwrote|resolved|dead_lettered*/, created_at_ms BIGINT)`.
    /// - dead letters: `(id ID, instance K, table_name TEXT, position BIGINT, key K,
    ///   change TEXT /*JSON*/, error TEXT, created_at_ms BIGINT)`.
    pub async fn create_tables(&self) -> Result<()> {
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(Error::sql("create_tables: connect"))?;
        for ddl in self.inner.dialect.ddl() {
            // PostgreSQL's `IF NOT EXISTS` is not safe against a concurrent creator: the
            // loser fails on a catalog unique index once the winner commits. Run again,
            // it sees the object.
            let mut tries = 0;
            loop {
                match conn.conn().execute_raw(&ddl).await {
                    Ok(()) => break,
                    Err(e) if tries < 3 && created_concurrently(&e) => tries += 1,
                    Err(e) => return Err(Error::sql(format!("create_tables: {ddl}"))(e)),
                }
            }
        }
        Ok(())
    }

    /// This instance's committed position: every cut up to it is in the
    /// database. `None` before the first flush.
    pub async fn progress(&self) -> Result<Option<Lsn>> {
        let d = &self.inner.dialect;
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(Error::sql("progress: connect"))?;
        let Stmt { sql, args } = d.progress_read(&self.inner.cfg.instance, false, false);
        let rows = conn
            .conn()
            .fetch(&sql, args, &[SqlType::BigInt])
            .await
            .map_err(Error::sql("progress: read"))?;
        Ok(self.inner.decode_progress(rows.first())?.0)
    }

    /// Claims this instance for this writer: in one transaction, creates
    /// the progress row if missing, locks it, sets `owner_epoch =
    /// max(owner_epoch + 1, at_least)` and commits. Returns the new epoch,
    /// which this writer (and its clones) remembers: from now on every
    /// flush checks, under the progress row's lock, that the row still
    /// holds it, and fails with [`Error::Fenced`] once a newer owner
    /// claimed the instance. Epochs only grow: a claim after a claim
    /// (here or anywhere) gets a larger one.
    ///
    /// `at_least` lets an epoch taken elsewhere (a replication stream) be
    /// carried into the database; pass 0 otherwise.
    ///
    /// The first claim also adds `owner_epoch` to a progress table created
    /// before it existed. Errors are classified like a flush's: retry
    /// transient ones.
    pub async fn claim(&self, at_least: u64) -> Result<u64> {
        Ok(self.claim_row(at_least).await?.epoch)
    }

    /// [`claim`](Self::claim), also returning what the row held.
    pub async fn claim_row(&self, at_least: u64) -> Result<Claim> {
        let _one = self.inner.claiming.lock().await;
        self.claim_locked(at_least).await
    }

    /// The owner epoch this writer claimed; `None` before its first claim.
    pub fn claimed_epoch(&self) -> Option<u64> {
        Some(self.inner.epoch()).filter(|&e| e > 0)
    }

    async fn claim_locked(&self, at_least: u64) -> Result<Claim> {
        let at_least = i64::try_from(at_least)
            .map_err(|_| Error::Config(format!("claim: epoch {at_least} does not fit a BIGINT")))?;
        self.migrate().await?;
        let d = &self.inner.dialect;
        let instance = self.inner.cfg.instance.as_str();
        let now = crate::flush::now_ms();
        let mut tx = self
            .inner
            .pool
            .begin()
            .await
            .map_err(Error::sql("claim: begin"))?;
        let Stmt { sql, args } = d.progress_ensure(instance, now);
        tx.conn()
            .execute(&sql, args)
            .await
            .map_err(Error::sql("claim: create progress row"))?;
        let Stmt { sql, args } = d.progress_read(instance, true, true);
        let rows = tx
            .conn()
            .fetch(&sql, args, &[SqlType::BigInt, SqlType::BigInt])
            .await
            .map_err(Error::sql("claim: lock progress row"))?;
        let (position, previous) = self.inner.decode_progress(rows.first())?;
        let epoch = previous.saturating_add(1).max(at_least);
        let Stmt { sql, args } = d.epoch_write(instance, epoch, now);
        tx.conn()
            .execute(&sql, args)
            .await
            .map_err(Error::sql("claim: set owner epoch"))?;
        tx.commit().await.map_err(Error::sql("claim: commit"))?;
        // Non-negative: at least `previous + 1` with `previous >= 0`.
        let epoch = epoch as u64;
        self.inner.epoch.store(epoch, Ordering::Release);
        tracing::info!(
            instance,
            epoch,
            previous,
            position,
            "writebehind: claimed the instance (owner epoch)"
        );
        Ok(Claim {
            epoch,
            previous: previous as u64,
            position,
        })
    }

    /// Adds `owner_epoch` to a progress table that lacks it, once per
    /// writer. A concurrent migrator may win the `ALTER`: the probe after
    /// a failed `ALTER` decides.
    async fn migrate(&self) -> Result<()> {
        if self.inner.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        let d = &self.inner.dialect;
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(Error::sql("claim: connect"))?;
        let probe = d.epoch_probe();
        match conn.conn().execute_raw(&probe).await {
            Ok(()) => {}
            Err(e) if crate::error::classify_sqlx(&e) == ErrorClass::Transient => {
                return Err(Error::sql("claim: look for owner_epoch")(e));
            }
            Err(_) => {
                let ddl = d.epoch_migration();
                if let Err(e) = conn.conn().execute_raw(&ddl).await {
                    if conn.conn().execute_raw(&probe).await.is_err() {
                        return Err(Error::sql(format!("claim: {ddl}"))(e));
                    }
                } else {
                    tracing::info!(
                        table = %self.inner.cfg.progress_table,
                        "writebehind: added owner_epoch to the progress table"
                    );
                }
            }
        }
        self.inner.migrated.store(true, Ordering::Release);
        Ok(())
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

    /// Read-through: the rows of `keys` (value, version), `None` where
    /// absent, in `keys` order. One `IN`/`= ANY` query per chunk.
    pub async fn load(&self, keys: &[Key]) -> Result<Vec<(Key, Option<(Value, i64)>)>> {
        let d = &self.inner.dialect;
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(Error::sql("load: connect"))?;
        let per = d.rows_per_statement(self.inner.cfg.max_rows_per_statement, d.params_per_key());
        let types = d.select_types();
        let mut found: HashMap<Key, (Value, i64)> = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(per) {
            let mut kvals = Vec::with_capacity(chunk.len());
            for k in chunk {
                kvals.push(self.inner.key_values(k).map_err(|message| Error::Codec {
                    key: k.clone(),
                    message,
                })?);
            }
            let refs: Vec<&[SqlValue]> = kvals.iter().map(|k| &k[..]).collect();
            let Stmt { sql, args } = d.select(&refs, false);
            let rows = conn
                .conn()
                .fetch(&sql, args, &types)
                .await
                .map_err(Error::sql(self.ctx("load")))?;
            for row in rows {
                let (k, v, ver) = self.inner.decode_row(row)?;
                found.insert(k, (v, ver));
            }
        }
        Ok(keys
            .iter()
            .map(|k| (k.clone(), found.get(k).cloned()))
            .collect())
    }

    /// Reads the whole data table in key order, `batch` rows per query
    /// (keyset pagination: `WHERE key > last ORDER BY key LIMIT batch`),
    /// handing each page to `f`. Returns the number of rows read.
    pub async fn load_all(
        &self,
        batch: usize,
        mut f: impl FnMut(Vec<(Key, Value, i64)>),
    ) -> Result<u64> {
        if batch == 0 {
            return Err(Error::Config("load_all: batch must be at least 1".into()));
        }
        let d = &self.inner.dialect;
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let types = d.select_types();
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(Error::sql("load_all: connect"))?;
        let mut after: Option<Vec<SqlValue>> = None;
        let mut total = 0u64;
        loop {
            let Stmt { sql, args } = d.page(after.as_deref(), limit);
            let rows = conn
                .conn()
                .fetch(&sql, args, &types)
                .await
                .map_err(Error::sql(self.ctx("load_all")))?;
            let n = rows.len();
            let page = rows
                .into_iter()
                .map(|r| self.inner.decode_row(r))
                .collect::<Result<Vec<_>>>()?;
            after = match page.last() {
                Some((k, _, _)) => {
                    Some(self.inner.key_values(k).map_err(|message| Error::Codec {
                        key: k.clone(),
                        message,
                    })?)
                }
                None => None,
            };
            total += n as u64;
            if n > 0 {
                f(page);
            }
            if n < batch {
                return Ok(total);
            }
        }
    }

    /// Runs SQL written by the caller (no parameters, unprepared): for
    /// tests, migrations and tooling. Never pass user input here.
    pub async fn execute_sql(&self, sql: &str) -> Result<()> {
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(Error::sql("execute_sql: connect"))?;
        conn.conn()
            .execute_raw(sql)
            .await
            .map_err(Error::sql("execute_sql"))
    }

    /// Runs a query written by the caller and decodes each row's columns as
    /// `types` (NULL becomes [`SqlValue::Null`]): for tests and tooling.
    pub async fn query_sql(&self, sql: &str, types: &[SqlType]) -> Result<Vec<Vec<SqlValue>>> {
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(Error::sql("query_sql: connect"))?;
        conn.conn()
            .fetch(sql, Vec::new(), types)
            .await
            .map_err(Error::sql("query_sql"))
    }

    /// Closes the pool, waiting for checked-out connections to return.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    fn ctx(&self, op: &str) -> String {
        format!("{op} from table {}", self.inner.dialect.table_name())
    }
}

/// A DDL statement lost a race with another creator of the same object
/// (PostgreSQL: unique_violation on a catalog index, duplicate_table, duplicate_object).
fn created_concurrently(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("23505" | "42P07" | "42710"))
        }
        _ => false,
    }
}
