//! [`Writer`]: connects, creates tables, flushes cuts exactly once, loads rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use writebehind_core::{Change, Cut, Expected, ItemOutcome, Key, Lsn, Value};

use crate::config::{Conflict, ConflictPolicy, ConflictResolutionTaken, Resolution, WriterConfig};
use crate::db::{Arg, Pool, Tx};
use crate::error::{Error, Result};
use crate::ident::Backend;
use crate::schema::{SqlType, SqlValue, TableKind};
use crate::sql::{Dialect, Mode, RowData, Stmt};

/// A row that failed permanently and went to the dead-letter table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The key.
    pub key: Key,
    /// The change that could not be written.
    pub change: Change,
    /// The database's or codec's error text.
    pub error: String,
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
}

/// The SQL sink of one cache instance. Cheap to clone (shared pool); `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Writer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    dialect: Dialect,
    cfg: WriterConfig,
}

/// A data-table row in a write group: which cut item, the SQL row, and the
/// value to report back when written.
#[derive(Clone, Debug)]
struct WRow {
    idx: usize,
    data: RowData,
    report: Value,
    /// The version after the write when known without reading back: the
    /// row was locked at version n, so it becomes n + 1.
    version_after: Option<i64>,
}

/// Decoded row of the data table, or why it could not be decoded.
type DbRow = std::result::Result<(Value, i64), String>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    Write(Mode),
    Delete,
}

const SAVEPOINT: &str = "wb_chunk";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<unserializable: {e}>"))
}

/// Keys in the log tables are bounded (MySQL VARCHAR(512)); a longer key is cut there only.
fn log_key(key: &Key) -> String {
    key.chars().take(512).collect()
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
        Ok(Writer {
            inner: Arc::new(Inner {
                pool,
                dialect,
                cfg: config,
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

    /// The pool, for the `NOTIFY` side of `notify.rs`.
    #[cfg(feature = "postgres")]
    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Creates the four tables if they do not exist (`K` is `TEXT` on
    /// PostgreSQL/SQLite and `VARCHAR(512) COLLATE utf8mb4_bin` on MySQL; `ID` an auto-increment key):
    ///
    /// - data: `table(key K PRIMARY KEY, <value column(s)>, version BIGINT NOT NULL)`;
    ///   counters: `value BIGINT NOT NULL`; records: one column per codec column
    ///   (`BIGINT`, `DOUBLE PRECISION`/`REAL`/`DOUBLE`, `TEXT`/`LONGTEXT`,
    ///   `BYTEA`/`BLOB`/`LONGBLOB`, `BOOLEAN`), `NOT NULL` unless nullable.
    /// - progress: `(instance K PRIMARY KEY, position BIGINT NULL, updated_at_ms BIGINT NOT NULL)`;
    ///   `position` is the highest WAL position this instance committed.
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
        let Stmt { sql, args } = d.progress_read(&self.inner.cfg.instance, false);
        let rows = conn
            .conn()
            .fetch(&sql, args, &[SqlType::BigInt])
            .await
            .map_err(Error::sql("progress: read"))?;
        match rows.first().and_then(|r| r.first()) {
            Some(SqlValue::Int(p)) => Lsn::try_from(*p).map(Some).map_err(|_| Error::BadRow {
                table: self.inner.cfg.progress_table.to_string(),
                key: self.inner.cfg.instance.clone(),
                message: format!("negative position {p}"),
            }),
            _ => Ok(None),
        }
    }

    /// Writes `cut` in ONE transaction, exactly once per instance:
    ///
    /// 1. lock this instance's progress row (created if missing); if it is
    ///    already `>= cut.position`, roll back and report `already_applied`;
    /// 2. counters: multi-row upsert-add (never a conflict);
    /// 3. conditional puts/deletes (`Expected::Absent`/`Version`): read the
    ///    rows `FOR UPDATE`, split into writes and conflicts; inserts that lose
    ///    a race with a concurrent insert become conflicts too;
    /// 4. conflicts per [`ConflictPolicy`];
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
            let mut f = Flush {
                w: &self.inner,
                cut,
                position,
                now_ms: now_ms(),
                tx: Some(tx),
                savepoints,
                needs_isolation: false,
                outcomes: vec![None; cut.items.len()],
                conflicts: Vec::new(),
                conflict_of_item: HashMap::new(),
                dead: Vec::new(),
                rows: 0,
                statements: 0,
            };
            match f.run().await {
                Err(e) if f.needs_isolation && !savepoints => {
                    tracing::debug!(error = %e, "writebehind: row error; rerunning the flush with savepoints");
                    if let Some(tx) = f.tx.take() {
                        tx.rollback().await.map_err(Error::sql("flush: rollback"))?;
                    }
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
        let per = d.rows_per_statement(self.inner.cfg.max_rows_per_statement, 1);
        let types = d.select_types();
        let mut found: HashMap<Key, (Value, i64)> = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(per) {
            let refs: Vec<&Key> = chunk.iter().collect();
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
        let mut after: Option<Key> = None;
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
            after = page.last().map(|(k, _, _)| k.clone());
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

impl Inner {
    /// Row layout of `Dialect::select`: key, version, value columns.
    fn decode_row(&self, mut row: Vec<SqlValue>) -> Result<(Key, Value, i64)> {
        let bad = |key: &str, message: String| Error::BadRow {
            table: self.dialect.table_name().to_owned(),
            key: key.to_owned(),
            message,
        };
        if row.len() < 2 {
            return Err(bad(
                "?",
                format!("expected at least 2 columns, got {}", row.len()),
            ));
        }
        let cols = row.split_off(2);
        let key: Key = match &row[0] {
            SqlValue::Text(k) => Arc::from(k.as_str()),
            other => return Err(bad("?", format!("key is {other:?}"))),
        };
        let version = match row[1] {
            SqlValue::Int(v) => v,
            ref other => return Err(bad(&key, format!("version is {other:?}"))),
        };
        let value = self.decode_value(&key, cols).map_err(|m| bad(&key, m))?;
        Ok((key, value, version))
    }

    fn decode_value(
        &self,
        key: &str,
        mut cols: Vec<SqlValue>,
    ) -> std::result::Result<Value, String> {
        match &self.cfg.table.kind {
            TableKind::Counter => match cols.pop() {
                Some(SqlValue::Int(v)) if cols.is_empty() => Ok(Value::Int(v)),
                other => Err(format!("counter value is {other:?}")),
            },
            TableKind::Record(codec) => codec
                .from_row(cols)
                .map(|b| Value::Bytes(Arc::from(b)))
                .map_err(|e| format!("codec cannot decode the row of {key:?}: {e}")),
        }
    }

    /// A value as the data table's columns, checked against their types.
    fn encode(&self, key: &Key, value: &Value) -> Result<Vec<SqlValue>> {
        let mismatch = |message: &str| Error::Mismatch {
            table: self.dialect.table_name().to_owned(),
            key: key.clone(),
            message: message.to_owned(),
        };
        match (&self.cfg.table.kind, value) {
            (TableKind::Counter, Value::Int(v)) => Ok(vec![SqlValue::Int(*v)]),
            (TableKind::Counter, Value::Bytes(_)) => Err(mismatch(
                "a counter table stores Value::Int, got Value::Bytes",
            )),
            (TableKind::Record(_), Value::Int(_)) => Err(mismatch(
                "a record table stores Value::Bytes, got Value::Int",
            )),
            (TableKind::Record(codec), Value::Bytes(b)) => {
                let codec_err = |message: String| Error::Codec {
                    key: key.clone(),
                    message,
                };
                let row = codec.to_row(b).map_err(codec_err)?;
                let cols = self.dialect.columns();
                if row.len() != cols.len() {
                    return Err(codec_err(format!(
                        "{} values for {} columns",
                        row.len(),
                        cols.len()
                    )));
                }
                for (v, c) in row.iter().zip(cols) {
                    if !v.fits(c.ty) || (*v == SqlValue::Null && !c.nullable) {
                        return Err(codec_err(format!(
                            "column {}: {v:?} does not fit {:?}",
                            c.name, c.ty
                        )));
                    }
                }
                Ok(row)
            }
        }
    }
}

/// The state of one flush transaction.
struct Flush<'a> {
    w: &'a Inner,
    cut: &'a Cut,
    position: i64,
    now_ms: i64,
    /// Always `Some` until commit or rollback.
    tx: Option<Tx>,
    /// Wrap each chunk in a savepoint (PostgreSQL, after a row error).
    savepoints: bool,
    /// A row error hit a chunk without a savepoint: rerun with savepoints.
    needs_isolation: bool,
    outcomes: Vec<Option<ItemOutcome>>,
    conflicts: Vec<Conflict>,
    conflict_of_item: HashMap<usize, usize>,
    dead: Vec<DeadLetter>,
    rows: u64,
    statements: u64,
}

enum Decision {
    Keep,
    Ours,
    Write(Value),
}

impl Flush<'_> {
    fn tx(&mut self) -> Result<&mut Tx> {
        self.tx
            .as_mut()
            .ok_or_else(|| Error::Config("flush transaction already finished".into()))
    }

    async fn exec(&mut self, st: Stmt, ctx: &str) -> Result<u64> {
        self.statements += 1;
        let Stmt { sql, args } = st;
        self.tx()?
            .conn()
            .execute(&sql, args)
            .await
            .map_err(Error::sql(self.context(ctx)))
    }

    async fn fetch(
        &mut self,
        st: Stmt,
        types: &[SqlType],
        ctx: &str,
    ) -> Result<Vec<Vec<SqlValue>>> {
        self.statements += 1;
        let Stmt { sql, args } = st;
        self.tx()?
            .conn()
            .fetch(&sql, args, types)
            .await
            .map_err(Error::sql(self.context(ctx)))
    }

    async fn raw(&mut self, sql: &str) -> Result<()> {
        self.statements += 1;
        self.tx()?
            .conn()
            .execute_raw(sql)
            .await
            .map_err(Error::sql(format!("flush: {sql}")))
    }

    fn context(&self, what: &str) -> String {
        format!(
            "flush of position {} for instance {:?}: {what} on table {}",
            self.position,
            self.w.cfg.instance,
            self.w.dialect.table_name()
        )
    }

    fn dead_letter(&mut self, idx: usize, error: String) {
        let Some(item) = self.cut.items.get(idx) else {
            return;
        };
        tracing::warn!(key = %item.key, %error, "writebehind: dead-lettering a row");
        self.outcomes[idx] = Some(ItemOutcome::DeadLettered);
        if let Some(c) = self
            .conflict_of_item
            .get(&idx)
            .and_then(|&c| self.conflicts.get_mut(c))
        {
            c.resolution = ConflictResolutionTaken::DeadLettered;
        }
        self.dead.push(DeadLetter {
            key: item.key.clone(),
            change: item.change.clone(),
            error,
        });
    }

    async fn run(&mut self) -> Result<FlushReport> {
        let w = self.w;
        let d = &w.dialect;
        let instance = w.cfg.instance.as_str();

        self.exec(
            d.progress_ensure(instance, self.now_ms),
            "create progress row",
        )
        .await?;
        let rows = self
            .fetch(
                d.progress_read(instance, true),
                &[SqlType::BigInt],
                "lock progress row",
            )
            .await?;
        let current = match rows.first().and_then(|r| r.first()) {
            Some(SqlValue::Int(p)) => Some(*p),
            _ => None,
        };
        if current.is_some_and(|p| p >= self.position) {
            tracing::info!(
                position = self.position,
                committed = current,
                instance,
                "writebehind: cut already applied (progress row covers it); skipped"
            );
            if let Some(tx) = self.tx.take() {
                tx.rollback().await.map_err(Error::sql("flush: rollback"))?;
            }
            let outcomes = self
                .cut
                .items
                .iter()
                .map(|i| match i.change {
                    Change::Delete => ItemOutcome::Deleted,
                    _ => ItemOutcome::Written {
                        version: None,
                        value: None,
                    },
                })
                .collect();
            return Ok(FlushReport {
                outcomes,
                already_applied: true,
                statements: self.statements,
                ..FlushReport::default()
            });
        }

        let counter = matches!(w.cfg.table.kind, TableKind::Counter);
        let (mut adds, mut sets, mut inserts, mut deletes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut conditional: Vec<(usize, Option<WRow>)> = Vec::new();
        let cut = self.cut;
        for (idx, item) in cut.items.iter().enumerate() {
            let key = item.key.clone();
            match &item.change {
                Change::Add(delta) if counter => adds.push(WRow {
                    idx,
                    data: RowData {
                        key,
                        cols: vec![SqlValue::Int(*delta)],
                    },
                    report: Value::Int(*delta),
                    version_after: None,
                }),
                Change::Add(_) => {
                    self.dead_letter(idx, "Change::Add applies to counter tables only".to_owned());
                }
                Change::Put(value) => match w.encode(&key, value) {
                    Err(e) => self.dead_letter(idx, e.to_string()),
                    Ok(cols) => {
                        let row = WRow {
                            idx,
                            data: RowData { key, cols },
                            report: value.clone(),
                            version_after: None,
                        };
                        match item.expected {
                            Expected::Any => sets.push(row),
                            _ => conditional.push((idx, Some(row))),
                        }
                    }
                },
                Change::Delete => match item.expected {
                    Expected::Any => deletes.push(delete_row(idx, key)),
                    _ => conditional.push((idx, None)),
                },
            }
        }

        self.run_group(Group::Write(Mode::Add), adds).await?;

        // Conditional items: the locked rows decide write or conflict.
        let mut pending: Vec<(usize, Option<WRow>, Option<DbRow>)> = Vec::new();
        if !conditional.is_empty() {
            let keys: Vec<&Key> = conditional
                .iter()
                .map(|(i, _)| &cut.items[*i].key)
                .collect();
            let db = self.read_rows(&keys).await?;
            for (idx, row) in conditional {
                let item = &cut.items[idx];
                let found = db.get(&item.key);
                let version = found.and_then(|r| r.as_ref().ok()).map(|(_, v)| *v);
                match (row, item.expected, found) {
                    (Some(row), Expected::Absent, None) => inserts.push(row),
                    // The row is locked at version n: the upsert updates it to n + 1.
                    (Some(row), Expected::Version(n), Some(_)) if version == Some(n) => {
                        sets.push(WRow {
                            version_after: Some(n + 1),
                            ..row
                        })
                    }
                    (None, Expected::Version(n), Some(_)) if version == Some(n) => {
                        deletes.push(delete_row(idx, item.key.clone()))
                    }
                    (None, Expected::Absent, None) => {
                        self.outcomes[idx] = Some(ItemOutcome::Deleted)
                    }
                    (row, _, found) => pending.push((idx, row, found.cloned())),
                }
            }
        }

        let lost = self
            .run_group(Group::Write(Mode::InsertIfAbsent), inserts)
            .await?;
        if !lost.is_empty() {
            let keys: Vec<&Key> = lost.iter().map(|r| &r.data.key).collect();
            let db = self.read_rows(&keys).await?;
            for row in lost {
                let found = db.get(&row.data.key).cloned();
                pending.push((row.idx, Some(row), found));
            }
        }

        for (idx, row, found) in pending {
            let item = &cut.items[idx];
            let database = match found {
                None => None,
                Some(Ok(r)) => Some(r),
                Some(Err(message)) => {
                    self.dead_letter(
                        idx,
                        format!("version conflict, and the database row is unreadable: {message}"),
                    );
                    continue;
                }
            };
            // A present row is locked (FOR UPDATE / SQLite's write lock).
            let locked_version = database.as_ref().map(|(_, v)| *v);
            let mut conflict = Conflict {
                key: item.key.clone(),
                ours: item.change.clone(),
                expected: item.expected,
                database,
                resolution: ConflictResolutionTaken::Pending,
            };
            let decision = match &w.cfg.policy {
                ConflictPolicy::KeepDatabase => Decision::Keep,
                ConflictPolicy::Overwrite => Decision::Ours,
                ConflictPolicy::Resolve(resolve) => match resolve(&conflict) {
                    Resolution::KeepDatabase => Decision::Keep,
                    Resolution::Write(v) => Decision::Write(v),
                },
            };
            self.conflict_of_item.insert(idx, self.conflicts.len());
            match decision {
                Decision::Keep => {
                    conflict.resolution = ConflictResolutionTaken::KeptDatabase;
                    self.outcomes[idx] = Some(ItemOutcome::ConflictKeptDatabase {
                        version: conflict.database.as_ref().map(|(_, v)| *v),
                        value: conflict.database.as_ref().map(|(v, _)| v.clone()),
                    });
                    self.conflicts.push(conflict);
                }
                Decision::Ours => {
                    conflict.resolution = ConflictResolutionTaken::Overwrote;
                    self.conflicts.push(conflict);
                    match row {
                        Some(row) => sets.push(WRow {
                            version_after: locked_version.map(|v| v + 1),
                            ..row
                        }),
                        None => deletes.push(delete_row(idx, item.key.clone())),
                    }
                }
                Decision::Write(value) => match w.encode(&item.key, &value) {
                    Ok(cols) => {
                        conflict.resolution = ConflictResolutionTaken::Resolved(value.clone());
                        self.conflicts.push(conflict);
                        sets.push(WRow {
                            idx,
                            data: RowData {
                                key: item.key.clone(),
                                cols,
                            },
                            report: value,
                            version_after: locked_version.map(|v| v + 1),
                        });
                    }
                    Err(e) => {
                        self.conflicts.push(conflict);
                        self.dead_letter(idx, format!("resolver's value: {e}"));
                    }
                },
            }
        }

        self.run_group(Group::Write(Mode::Set), sets).await?;
        self.run_group(Group::Delete, deletes).await?;
        self.write_logs().await?;
        self.exec(
            d.progress_write(instance, self.position, self.now_ms),
            "advance progress",
        )
        .await?;
        if let Some(tx) = self.tx.take() {
            tx.commit()
                .await
                .map_err(Error::sql(self.context("commit")))?;
        }

        tracing::debug!(
            position = self.position,
            items = cut.items.len(),
            rows = self.rows,
            statements = self.statements,
            conflicts = self.conflicts.len(),
            dead_letters = self.dead.len(),
            "writebehind: flushed"
        );
        let outcomes = self
            .outcomes
            .iter()
            .map(|o| {
                o.clone().unwrap_or(ItemOutcome::Written {
                    version: None,
                    value: None,
                })
            })
            .collect();
        Ok(FlushReport {
            outcomes,
            conflicts: std::mem::take(&mut self.conflicts),
            dead_letters: std::mem::take(&mut self.dead),
            already_applied: false,
            rows: self.rows,
            statements: self.statements,
        })
    }

    /// Locked reads of the data rows of `keys`.
    async fn read_rows(&mut self, keys: &[&Key]) -> Result<HashMap<Key, DbRow>> {
        let w = self.w;
        let d = &w.dialect;
        let per = d.rows_per_statement(w.cfg.max_rows_per_statement, 1);
        let types = d.select_types();
        let mut sorted = keys.to_vec();
        sorted.sort();
        let mut out = HashMap::with_capacity(keys.len());
        for chunk in sorted.chunks(per) {
            for mut row in self
                .fetch(d.select(chunk, true), &types, "read rows for update")
                .await?
            {
                let cols = row.split_off(2.min(row.len()));
                let (Some(SqlValue::Text(k)), Some(SqlValue::Int(ver))) = (row.first(), row.get(1))
                else {
                    continue;
                };
                let key: Key = Arc::from(k.as_str());
                let decoded = w.decode_value(k, cols).map(|v| (v, *ver));
                out.insert(key, decoded);
            }
        }
        Ok(out)
    }

    /// Runs a group in chunks, isolating permanently failing rows. Returns
    /// the rows an `InsertIfAbsent` did not insert (the key existed).
    async fn run_group(&mut self, group: Group, mut rows: Vec<WRow>) -> Result<Vec<WRow>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let w = self.w;
        let d = &w.dialect;
        // Key order: concurrent flushers lock rows in the same order (fewer deadlocks).
        rows.sort_by(|a, b| a.data.key.cmp(&b.data.key));
        let per_row = if group == Group::Delete {
            1
        } else {
            d.params_per_row()
        };
        let per = d.rows_per_statement(w.cfg.max_rows_per_statement, per_row);
        let mut stack: Vec<(usize, usize)> = (0..rows.len())
            .step_by(per)
            .map(|lo| (lo, (lo + per).min(rows.len())))
            .collect();
        stack.reverse();
        let mut lost = Vec::new();
        while let Some((lo, hi)) = stack.pop() {
            match self.run_chunk(group, &rows[lo..hi]).await {
                Ok(returned) => self.record(group, &rows[lo..hi], returned, &mut lost),
                Err(e)
                    if e.is_row_error() && d.backend == Backend::Postgres && !self.savepoints =>
                {
                    // The transaction is aborted; `Writer::flush` reruns it with savepoints.
                    self.needs_isolation = true;
                    return Err(e);
                }
                Err(e) if e.is_row_error() => {
                    if hi - lo == 1 {
                        let error = match &e {
                            Error::Sql { source, .. } => source.to_string(),
                            other => other.to_string(),
                        };
                        self.dead_letter(rows[lo].idx, error);
                    } else {
                        let mid = lo + (hi - lo) / 2;
                        tracing::debug!(rows = hi - lo, error = %e, "writebehind: splitting a failing chunk");
                        stack.push((mid, hi));
                        stack.push((lo, mid));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(lost)
    }

    /// One statement (plus MySQL's re-select), undone alone on failure.
    async fn run_chunk(
        &mut self,
        group: Group,
        chunk: &[WRow],
    ) -> Result<Option<Vec<Vec<SqlValue>>>> {
        let d = &self.w.dialect;
        // PostgreSQL aborts the whole transaction on an error; SQLite and
        // InnoDB undo just the failed statement, so only PostgreSQL needs a savepoint.
        let savepoint = self.savepoints && d.backend == Backend::Postgres;
        if savepoint {
            self.raw(&format!("SAVEPOINT {SAVEPOINT}")).await?;
        }
        let result = self.chunk_statement(group, chunk).await;
        if savepoint {
            match &result {
                Ok(_) => self.raw(&format!("RELEASE SAVEPOINT {SAVEPOINT}")).await?,
                Err(e) if e.is_row_error() => {
                    self.raw(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"))
                        .await?;
                    self.raw(&format!("RELEASE SAVEPOINT {SAVEPOINT}")).await?;
                }
                Err(_) => {}
            }
        }
        result
    }

    async fn chunk_statement(
        &mut self,
        group: Group,
        chunk: &[WRow],
    ) -> Result<Option<Vec<Vec<SqlValue>>>> {
        let d = &self.w.dialect;
        let keys: Vec<&Key> = chunk.iter().map(|r| &r.data.key).collect();
        match group {
            Group::Delete => {
                let n = self.exec(d.delete(&keys), "delete").await?;
                self.rows += n;
                Ok(None)
            }
            Group::Write(mode) => {
                let report = self.w.cfg.report_values;
                let returning = match d.backend {
                    Backend::MySql => false,
                    // InsertIfAbsent needs to know which rows it inserted.
                    Backend::Sqlite => mode == Mode::InsertIfAbsent,
                    Backend::Postgres => mode == Mode::InsertIfAbsent || report,
                };
                let data: Vec<&RowData> = chunk.iter().map(|r| &r.data).collect();
                let st = d.write(mode, &data, returning);
                let returned = if returning {
                    Some(self.fetch(st, &d.returning_types(mode), "write").await?)
                } else {
                    self.exec(st, "write").await?;
                    if report || mode == Mode::InsertIfAbsent {
                        Some(self.reselect(mode, &keys).await?)
                    } else {
                        None
                    }
                };
                self.rows += match (&returned, mode) {
                    (Some(rows), Mode::InsertIfAbsent) => rows.len() as u64,
                    _ => chunk.len() as u64,
                };
                Ok(returned)
            }
        }
    }

    /// The rows just written (key, version[, counter total]), read in the transaction.
    async fn reselect(&mut self, mode: Mode, keys: &[&Key]) -> Result<Vec<Vec<SqlValue>>> {
        let d = &self.w.dialect;
        let types = d.returning_types(mode);
        if d.backend != Backend::Sqlite {
            return self
                .fetch(d.reselect(mode, keys), &types, "re-select written rows")
                .await;
        }
        let rows = self
            .fetch(
                d.reselect_json(mode, keys),
                &[SqlType::Text],
                "re-select written rows",
            )
            .await?;
        let json = match rows.first().and_then(|r| r.first()) {
            Some(SqlValue::Text(j)) => j.as_str(),
            _ => "[]",
        };
        let bad = |message: String| Error::BadRow {
            table: d.table_name().to_owned(),
            key: String::new(),
            message,
        };
        let parsed: Vec<Vec<serde_json::Value>> =
            serde_json::from_str(json).map_err(|e| bad(format!("re-select JSON: {e}")))?;
        parsed
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .zip(&types)
                    .map(|(v, ty)| match (v, ty) {
                        (serde_json::Value::String(s), SqlType::Text) => Ok(SqlValue::Text(s)),
                        (serde_json::Value::Number(n), SqlType::BigInt) => n
                            .as_i64()
                            .map(SqlValue::Int)
                            .ok_or_else(|| bad(format!("not a BIGINT: {n}"))),
                        (v, ty) => Err(bad(format!("re-select: {v} is not {ty:?}"))),
                    })
                    .collect()
            })
            .collect()
    }

    fn record(
        &mut self,
        group: Group,
        chunk: &[WRow],
        returned: Option<Vec<Vec<SqlValue>>>,
        lost: &mut Vec<WRow>,
    ) {
        let Group::Write(mode) = group else {
            for r in chunk {
                self.outcomes[r.idx] = Some(ItemOutcome::Deleted);
            }
            return;
        };
        let mut by_key: HashMap<&str, (i64, Option<i64>)> = HashMap::new();
        for row in returned.iter().flatten() {
            if let (Some(SqlValue::Text(k)), Some(SqlValue::Int(ver))) = (row.first(), row.get(1)) {
                let total = match row.get(2) {
                    Some(SqlValue::Int(t)) => Some(*t),
                    _ => None,
                };
                by_key.insert(k.as_str(), (*ver, total));
            }
        }
        for r in chunk {
            let outcome = match by_key.get(&*r.data.key) {
                Some((ver, total)) => ItemOutcome::Written {
                    version: Some(*ver),
                    value: match mode {
                        Mode::Add => total.map(Value::Int),
                        Mode::Set | Mode::InsertIfAbsent => Some(r.report.clone()),
                    },
                },
                None if mode == Mode::InsertIfAbsent => {
                    lost.push(r.clone());
                    continue;
                }
                // Not read back (`report_values(false)`): our value is known,
                // the version only when the row was locked before the write.
                None => ItemOutcome::Written {
                    version: r.version_after,
                    value: if mode == Mode::Set {
                        Some(r.report.clone())
                    } else {
                        None
                    },
                },
            };
            self.outcomes[r.idx] = Some(outcome);
        }
    }

    /// Conflict and dead-letter rows, inside the same transaction.
    async fn write_logs(&mut self) -> Result<()> {
        let w = self.w;
        let d = &w.dialect;
        let instance = || Arg::Text(Some(w.cfg.instance.clone()));
        let table = || Arg::Text(Some(d.table_name().to_owned()));
        let pos = Arg::Int(Some(self.position));
        let now = Arg::Int(Some(self.now_ms));
        let conflict_rows: Vec<Vec<Arg>> = self
            .conflicts
            .iter()
            .map(|c| {
                vec![
                    instance(),
                    table(),
                    pos.clone(),
                    Arg::Text(Some(log_key(&c.key))),
                    Arg::Text(Some(to_json(&c.ours))),
                    Arg::Text(Some(to_json(&c.expected))),
                    Arg::Int(c.database.as_ref().map(|(_, v)| *v)),
                    Arg::Text(Some(c.resolution.label().to_owned())),
                    now.clone(),
                ]
            })
            .collect();
        let dead_rows: Vec<Vec<Arg>> = self
            .dead
            .iter()
            .map(|x| {
                vec![
                    instance(),
                    table(),
                    pos.clone(),
                    Arg::Text(Some(log_key(&x.key))),
                    Arg::Text(Some(to_json(&x.change))),
                    Arg::Text(Some(x.error.clone())),
                    now.clone(),
                ]
            })
            .collect();
        for chunk in conflict_rows.chunks(500) {
            self.exec(d.insert_log(true, chunk), "insert into the conflicts table")
                .await?;
        }
        for chunk in dead_rows.chunks(500) {
            self.exec(
                d.insert_log(false, chunk),
                "insert into the dead-letter table",
            )
            .await?;
        }
        Ok(())
    }
}

fn delete_row(idx: usize, key: Key) -> WRow {
    WRow {
        idx,
        data: RowData {
            key,
            cols: Vec::new(),
        },
        report: Value::Int(0),
        version_after: None,
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
