//! One flush transaction: the progress row, the change groups in chunks,
//! bad rows isolated by halving and dead-lettered, the logs, the commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use writebehind_core::{Change, Cut, Expected, ItemOutcome, Key, Value};

use crate::config::{Conflict, ConflictResolutionTaken};
use crate::db::{Arg, Tx};
use crate::error::{Error, Result};
use crate::ident::Backend;
use crate::rows::{delete_row, DbRow, WRow};
use crate::schema::{SqlType, SqlValue, TableKind};
use crate::sql::{Mode, RowData, Stmt};
use crate::writer::{DeadLetter, FlushReport, Inner};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    Write(Mode),
    Delete,
}

const SAVEPOINT: &str = "wb_chunk";

/// Keys per read-back statement, and the JSON bytes after which a batch stops.
const READ_BACK_KEYS: usize = 20_000;
const READ_BACK_BYTES: usize = 4 << 20;

/// What the database holds after a write, aligned with the written rows:
/// the version and, for `Add`, the total. `None`: not returned (an
/// `InsertIfAbsent` that found the key, or a row read back by no one).
type ReadBack = Vec<Option<(i64, Option<i64>)>>;

/// How a chunk's new versions come back.
enum Written {
    /// From the statement itself (RETURNING).
    Returned(ReadBack),
    /// To be read back after the group, in the same transaction.
    ReadLater,
    /// Not at all (deletes; `report_values(false)`).
    Done,
}

/// RETURNING rows `(key, version[, total])` aligned with `chunk` by key.
fn by_position(chunk: &[WRow], rows: impl IntoIterator<Item = Vec<SqlValue>>) -> ReadBack {
    let pos: HashMap<&str, usize> = chunk
        .iter()
        .enumerate()
        .map(|(i, r)| (&*r.data.key, i))
        .collect();
    let mut back = vec![None; chunk.len()];
    for row in rows {
        if let (Some(SqlValue::Text(k)), Some(SqlValue::Int(ver))) = (row.first(), row.get(1)) {
            let total = match row.get(2) {
                Some(SqlValue::Int(t)) => Some(*t),
                _ => None,
            };
            if let Some(&i) = pos.get(k.as_str()) {
                back[i] = Some((*ver, total));
            }
        }
    }
    back
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<unserializable: {e}>"))
}

/// The state of one flush transaction.
pub(crate) struct Flush<'a> {
    pub(crate) w: &'a Inner,
    pub(crate) cut: &'a Cut,
    position: i64,
    now_ms: i64,
    /// Always `Some` until commit or rollback.
    tx: Option<Tx>,
    /// Wrap each chunk in a savepoint (PostgreSQL, after a row error).
    savepoints: bool,
    /// A row error hit a chunk without a savepoint: rerun with savepoints.
    needs_isolation: bool,
    pub(crate) outcomes: Vec<Option<ItemOutcome>>,
    pub(crate) conflicts: Vec<Conflict>,
    pub(crate) conflict_of_item: HashMap<usize, usize>,
    dead: Vec<DeadLetter>,
    rows: u64,
    statements: u64,
    pub(crate) resolver_panics: u64,
}

impl<'a> Flush<'a> {
    pub(crate) fn new(
        w: &'a Inner,
        cut: &'a Cut,
        position: i64,
        tx: Tx,
        savepoints: bool,
    ) -> Flush<'a> {
        Flush {
            w,
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
            resolver_panics: 0,
        }
    }

    /// A row error met without savepoints: the flush must run again with them.
    pub(crate) fn needs_isolation(&self) -> bool {
        self.needs_isolation
    }

    /// Rolls the transaction back (when it is still open).
    pub(crate) async fn rollback(&mut self) -> Result<()> {
        if let Some(tx) = self.tx.take() {
            tx.rollback().await.map_err(Error::sql("flush: rollback"))?;
        }
        Ok(())
    }

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

    async fn fetch_arrays(
        &mut self,
        st: Stmt,
        ctx: &str,
    ) -> Result<(Vec<String>, Vec<Vec<Option<i64>>>)> {
        self.statements += 1;
        let Stmt { sql, args } = st;
        self.tx()?
            .conn()
            .fetch_arrays(&sql, args)
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
            self.w.cfg().instance,
            self.w.dialect().table_name()
        )
    }

    pub(crate) fn dead_letter(&mut self, idx: usize, error: String) {
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
            local: false,
        });
    }

    pub(crate) async fn run(&mut self) -> Result<FlushReport> {
        let w = self.w;
        let d = w.dialect();
        let instance = w.cfg().instance.as_str();

        self.exec(
            d.progress_ensure(instance, self.now_ms),
            "create progress row",
        )
        .await?;
        // The position and the owner epoch, read by the statement that locks
        // the row: a claim either committed before (its epoch is seen here)
        // or waits for this transaction to end.
        let rows = self
            .fetch(
                d.progress_read(instance, true, true),
                &[SqlType::BigInt, SqlType::BigInt],
                "lock progress row",
            )
            .await?;
        let (current, owner) = w.decode_progress(rows.first())?;
        let ours = w.epoch();
        if owner as u64 > ours {
            tracing::error!(
                instance,
                ours,
                current = owner,
                position = self.position,
                "writebehind: fenced: a newer owner claimed this instance; the flush is rolled back"
            );
            // Dropping the transaction rolls it back too: the fence is the answer.
            if let Err(e) = self.rollback().await {
                tracing::debug!(error = %e, "writebehind: rollback of a fenced flush failed");
            }
            return Err(Error::Fenced {
                instance: instance.to_owned(),
                ours,
                current: owner as u64,
            });
        }
        let current = current.map(|p| p as i64);
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
                resolver_panics: 0,
                statements: self.statements,
                ..FlushReport::default()
            });
        }

        let counter = matches!(w.cfg().table.kind, TableKind::Counter);
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
                Change::AddCols(_) => {
                    self.dead_letter(
                        idx,
                        "Change::AddCols applies to delta records only".to_owned(),
                    );
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

        self.settle_conflicts(pending, &mut sets, &mut deletes);

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
            resolver_panics: self.resolver_panics,
        })
    }

    /// Locked reads of the data rows of `keys`.
    async fn read_rows(&mut self, keys: &[&Key]) -> Result<HashMap<Key, DbRow>> {
        let w = self.w;
        let d = w.dialect();
        let per = d.rows_per_statement(w.cfg().max_rows_per_statement, 1);
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
        let d = w.dialect();
        // Key order: concurrent flushers lock rows in the same order (fewer deadlocks).
        rows.sort_by(|a, b| a.data.key.cmp(&b.data.key));
        let per_row = if group == Group::Delete {
            1
        } else {
            d.params_per_row()
        };
        let per = d.rows_per_statement(w.cfg().max_rows_per_statement, per_row);
        let mut stack: Vec<(usize, usize)> = (0..rows.len())
            .step_by(per)
            .map(|lo| (lo, (lo + per).min(rows.len())))
            .collect();
        stack.reverse();
        let mut lost = Vec::new();
        // Written without RETURNING and to be read back after the group.
        let mut unread: Vec<(usize, usize)> = Vec::new();
        while let Some((lo, hi)) = stack.pop() {
            match self.run_chunk(group, &rows[lo..hi]).await {
                Ok(Written::Returned(back)) => {
                    self.record(group, &rows[lo..hi], Some(back), &mut lost)
                }
                Ok(Written::ReadLater) => unread.push((lo, hi)),
                Ok(Written::Done) => self.record(group, &rows[lo..hi], None, &mut lost),
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
        if let (Group::Write(mode), false) = (group, unread.is_empty()) {
            let written: Vec<WRow> = unread
                .iter()
                .flat_map(|&(lo, hi)| rows[lo..hi].iter().cloned())
                .collect();
            let back = self.read_back(mode, &written).await?;
            self.record(group, &written, Some(back), &mut lost);
        }
        Ok(lost)
    }

    /// One statement, undone alone on failure.
    async fn run_chunk(&mut self, group: Group, chunk: &[WRow]) -> Result<Written> {
        let d = self.w.dialect();
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

    async fn chunk_statement(&mut self, group: Group, chunk: &[WRow]) -> Result<Written> {
        let d = self.w.dialect();
        match group {
            Group::Delete => {
                let keys: Vec<&Key> = chunk.iter().map(|r| &r.data.key).collect();
                let n = self.exec(d.delete(&keys), "delete").await?;
                self.rows += n;
                Ok(Written::Done)
            }
            Group::Write(mode) => {
                let report = self.w.cfg().report_values;
                // RETURNING where it is cheap: PostgreSQL always; SQLite only
                // to learn which rows an InsertIfAbsent inserted, since its
                // RETURNING costs as much as the write (the rest is read back
                // after the group); MySQL has none with ON DUPLICATE KEY.
                let returning = match d.backend {
                    Backend::MySql => false,
                    Backend::Sqlite => mode == Mode::InsertIfAbsent,
                    Backend::Postgres => mode == Mode::InsertIfAbsent || report,
                };
                let data: Vec<&RowData> = chunk.iter().map(|r| &r.data).collect();
                let st = d.write(mode, &data, returning);
                if returning && d.backend == Backend::Postgres {
                    let (keys, ints) = self.fetch_arrays(st, "write").await?;
                    self.rows += match mode {
                        Mode::InsertIfAbsent => keys.len() as u64,
                        _ => chunk.len() as u64,
                    };
                    let rows = keys.into_iter().enumerate().map(|(i, k)| {
                        let mut row = vec![SqlValue::Text(k)];
                        row.extend(ints.iter().map(|col| match col.get(i) {
                            Some(Some(n)) => SqlValue::Int(*n),
                            _ => SqlValue::Null,
                        }));
                        row
                    });
                    return Ok(Written::Returned(by_position(chunk, rows)));
                }
                if returning {
                    let rows = self.fetch(st, &d.returning_types(mode), "write").await?;
                    self.rows += match mode {
                        Mode::InsertIfAbsent => rows.len() as u64,
                        _ => chunk.len() as u64,
                    };
                    return Ok(Written::Returned(by_position(chunk, rows)));
                }
                self.exec(st, "write").await?;
                self.rows += chunk.len() as u64;
                Ok(if report || mode == Mode::InsertIfAbsent {
                    Written::ReadLater
                } else {
                    Written::Done
                })
            }
        }
    }

    /// Versions (and counter totals) of `rows`, just written in this
    /// transaction, by position: SQLite and MySQL's stand-in for RETURNING.
    async fn read_back(&mut self, mode: Mode, rows: &[WRow]) -> Result<ReadBack> {
        let d = self.w.dialect();
        let mut back: ReadBack = vec![None; rows.len()];
        let mut lo = 0;
        while lo < rows.len() {
            // Bounded by keys and bytes (MySQL's max_allowed_packet is 16 MiB
            // on MariaDB); JSON may spell one byte as six (`\u0001`).
            let mut hi = lo;
            let mut bytes = 0;
            while hi < rows.len() && hi - lo < READ_BACK_KEYS && bytes < READ_BACK_BYTES {
                bytes += rows[hi].data.key.len() * 6 + 3;
                hi += 1;
            }
            let keys: Vec<&Key> = rows[lo..hi].iter().map(|r| &r.data.key).collect();
            let st = d.read_back(mode, &keys);
            let bad = |message: String| Error::BadRow {
                table: d.table_name().to_owned(),
                key: String::new(),
                message,
            };
            let ctx = "read back written rows";
            let mut put = |pos: i64, version: i64, total: Option<i64>| {
                let slot = usize::try_from(pos)
                    .ok()
                    .and_then(|p| back.get_mut(lo + p).filter(|_| p < hi - lo))
                    .ok_or_else(|| bad(format!("read back: position {pos} out of range")))?;
                *slot = Some((version, total));
                Ok::<(), Error>(())
            };
            if d.backend == Backend::Sqlite {
                let text = self.fetch(st, &[SqlType::Text], ctx).await?;
                let text = match text.first().and_then(|r| r.first()) {
                    Some(SqlValue::Text(t)) => t.as_str(),
                    _ => "",
                };
                for entry in text.split(';').filter(|e| !e.is_empty()) {
                    let mut f = entry.split(',');
                    let mut int = |what: &str| -> Result<Option<i64>> {
                        match f.next() {
                            Some("") => Ok(None),
                            Some(n) => n.parse().map(Some).map_err(|_| {
                                bad(format!("read back: {what} {n:?} is not a BIGINT"))
                            }),
                            None => Err(bad(format!("read back: no {what} in {entry:?}"))),
                        }
                    };
                    let (pos, version) = (int("position")?, int("version")?);
                    let total = if mode == Mode::Add {
                        int("total")?
                    } else {
                        None
                    };
                    if let (Some(pos), Some(version)) = (pos, version) {
                        put(pos, version, total)?;
                    }
                }
            } else {
                let types = [SqlType::BigInt, SqlType::BigInt, SqlType::BigInt];
                let n = if mode == Mode::Add { 3 } else { 2 };
                for row in self.fetch(st, &types[..n], ctx).await? {
                    if let (Some(SqlValue::Int(pos)), Some(SqlValue::Int(version))) =
                        (row.first(), row.get(1))
                    {
                        let total = match row.get(2) {
                            Some(SqlValue::Int(t)) => Some(*t),
                            _ => None,
                        };
                        put(*pos, *version, total)?;
                    }
                }
            }
            lo = hi;
        }
        Ok(back)
    }

    fn record(
        &mut self,
        group: Group,
        chunk: &[WRow],
        back: Option<ReadBack>,
        lost: &mut Vec<WRow>,
    ) {
        let Group::Write(mode) = group else {
            for r in chunk {
                self.outcomes[r.idx] = Some(ItemOutcome::Deleted);
            }
            return;
        };
        let read = back.is_some();
        let mut back = back.unwrap_or_default().into_iter();
        for r in chunk {
            let outcome = match back.next().flatten() {
                Some((ver, total)) => ItemOutcome::Written {
                    version: Some(ver),
                    value: match mode {
                        Mode::Add => total.map(Value::Int),
                        Mode::Set | Mode::InsertIfAbsent => Some(r.report.clone()),
                    },
                },
                None if mode == Mode::InsertIfAbsent && read => {
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
        let d = w.dialect();
        let instance = || Arg::Text(Some(w.cfg().instance.clone()));
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
                    Arg::Text(Some(c.key.to_string())),
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
                    Arg::Text(Some(x.key.to_string())),
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
        // The dead-letter table may refuse a row too (text it cannot hold):
        // try each chunk, then its rows one by one, and keep what it refuses
        // in the local dead-letter file, so no bad row blocks the flush.
        let mut refused = Vec::new();
        for (n, chunk) in dead_rows.chunks(500).enumerate() {
            let ctx = "insert into the dead-letter table";
            if self
                .guarded(d.insert_log(false, chunk), ctx)
                .await?
                .is_none()
            {
                continue;
            }
            for (i, row) in chunk.iter().enumerate() {
                let one = d.insert_log(false, std::slice::from_ref(row));
                if let Some(e) = self.guarded(one, ctx).await? {
                    refused.push((n * 500 + i, e));
                }
            }
        }
        if !refused.is_empty() {
            self.spill(refused)?;
        }
        Ok(())
    }

    /// Runs a statement whose data the database may refuse without ending
    /// the transaction (a savepoint on PostgreSQL; SQLite and InnoDB undo
    /// just the statement). `Some(error)`: refused for its data.
    async fn guarded(&mut self, st: Stmt, ctx: &str) -> Result<Option<Error>> {
        let pg = self.w.dialect().backend == Backend::Postgres;
        if pg {
            self.raw(&format!("SAVEPOINT {SAVEPOINT}")).await?;
        }
        match self.exec(st, ctx).await {
            Ok(_) => {
                if pg {
                    self.raw(&format!("RELEASE SAVEPOINT {SAVEPOINT}")).await?;
                }
                Ok(None)
            }
            Err(e) if e.is_row_error() => {
                if pg {
                    self.raw(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"))
                        .await?;
                    self.raw(&format!("RELEASE SAVEPOINT {SAVEPOINT}")).await?;
                }
                Ok(Some(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Dead letters the table refused go to the local file, synced before
    /// the transaction commits. Without a local file the flush fails.
    fn spill(&mut self, refused: Vec<(usize, Error)>) -> Result<()> {
        let Some(path) = self.w.cfg().dead_letter_file.clone() else {
            let (_, first) = refused
                .into_iter()
                .next()
                .ok_or_else(|| Error::Config("no refused dead letter to report".into()))?;
            return Err(first);
        };
        let mut lines = Vec::with_capacity(refused.len());
        for (idx, e) in &refused {
            let Some(x) = self.dead.get_mut(*idx) else {
                continue;
            };
            x.local = true;
            tracing::error!(key = %x.key.escape_debug(), error = %e, file = %path.display(), "writebehind: the dead-letter table refused a row; keeping it in the local dead-letter file");
            lines.push(crate::local::Entry {
                instance: self.w.cfg().instance.clone(),
                table: self.w.dialect().table_name().to_owned(),
                position: self.position,
                key: x.key.to_string(),
                change: x.change.clone(),
                error: x.error.clone(),
                refused_by_table: e.to_string(),
                created_at_ms: self.now_ms,
            });
        }
        crate::local::append(&path, &lines)
    }
}
