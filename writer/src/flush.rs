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

/// The dead-letter reason of an update-only write whose key matches no row.
pub(crate) const NO_ROW: &str = "no row with this key";

/// Keys per read-back statement, and the JSON bytes after which a batch stops.
const READ_BACK_KEYS: usize = 20_000;
const READ_BACK_BYTES: usize = 4 << 20;

/// A written row as the database holds it: the version (`None` without a
/// version column) and, for `Add`, the totals of the value columns.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Back {
    version: Option<i64>,
    totals: Arc<[i64]>,
}

/// What the database holds after a write, aligned with the written rows.
/// `None`: not returned (an `InsertIfAbsent` that found the key, an
/// update-only key that matched no row).
type ReadBack = Vec<Option<Back>>;

/// How a chunk's new versions come back.
enum Written {
    /// From the statement itself (RETURNING).
    Returned(ReadBack),
    /// To be read back after the group, in the same transaction.
    ReadLater,
    /// Not at all (deletes; `report_values(false)`).
    Done,
}

/// RETURNING rows `(key columns, version[, totals])` aligned with `chunk`
/// by the key columns' values (not by key text: two texts may name one row).
/// The rows of `chunk` come from one round, so their key hashes differ.
fn by_position(
    w: &Inner,
    chunk: &[WRow],
    rows: impl IntoIterator<Item = Vec<SqlValue>>,
) -> ReadBack {
    let nk = w.dialect().key_columns().len();
    let mut pos: KeyMap<usize> = KeyMap::with_capacity_and_hasher(chunk.len(), Default::default());
    for (i, r) in chunk.iter().enumerate() {
        pos.entry(key_hash(&r.data.kvals)).or_insert(i);
    }
    let mut back = vec![None; chunk.len()];
    for mut row in rows {
        if row.len() < nk + 1 {
            continue;
        }
        let rest = row.split_off(nk);
        let found = pos
            .get(&key_hash(&row))
            .copied()
            .filter(|&i| chunk[i].data.kvals == row);
        if let Some(i) = found {
            back[i] = Some(back_of(rest));
        }
    }
    back
}

/// RETURNING columns `(position, version[, totals..])`, positions 1-based
/// in the statement's rows (PostgreSQL's `WITH ORDINALITY`).
fn by_ordinal(n: usize, columns: Vec<Vec<SqlValue>>) -> ReadBack {
    let mut back: ReadBack = vec![None; n];
    let mut cols = columns.into_iter();
    let (Some(positions), versions) = (cols.next(), cols.next().unwrap_or_default()) else {
        return back;
    };
    let totals: Vec<Vec<SqlValue>> = cols.collect();
    let int = |v: Option<&SqlValue>| match v {
        Some(SqlValue::Int(i)) => Some(*i),
        _ => None,
    };
    for (j, p) in positions.iter().enumerate() {
        let slot = int(Some(p))
            .and_then(|p| usize::try_from(p - 1).ok())
            .and_then(|i| back.get_mut(i));
        if let Some(slot) = slot {
            *slot = Some(Back {
                version: int(versions.get(j)),
                totals: totals.iter().filter_map(|c| int(c.get(j))).collect(),
            });
        }
    }
    back
}

/// `(version, totals..)` of a returned row.
fn back_of(mut rest: Vec<SqlValue>) -> Back {
    let totals = rest.split_off(1.min(rest.len()));
    let version = match rest.first() {
        Some(SqlValue::Int(v)) => Some(*v),
        _ => None,
    };
    let totals = totals
        .into_iter()
        .filter_map(|t| match t {
            SqlValue::Int(t) => Some(t),
            _ => None,
        })
        .collect();
    Back { version, totals }
}

/// A map keyed by [`key_hash`], which is already mixed: no second hash.
type KeyMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<Mixed>>;

/// Passes a [`key_hash`] through.
#[derive(Default)]
struct Mixed(u64);

impl std::hash::Hasher for Mixed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(K);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// A hash of a row's key values: cheap (a flush hashes every key twice)
/// and good enough to bucket; equal hashes are compared by value.
fn key_hash(kvals: &[SqlValue]) -> u64 {
    let mut h: u64 = 0;
    let mut mix = |tag: u64, x: u64| {
        h = (h.rotate_left(5) ^ tag ^ x).wrapping_mul(K);
    };
    let bytes = |b: &[u8]| {
        let mut x: u64 = b.len() as u64;
        for c in b.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            x = (x.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        x
    };
    for v in kvals {
        match v {
            SqlValue::Null => mix(0, 0),
            SqlValue::Int(i) => mix(1, *i as u64),
            SqlValue::Float(f) => mix(2, f.to_bits()),
            SqlValue::Text(s) => mix(3, bytes(s.as_bytes())),
            SqlValue::Bytes(b) => mix(4, bytes(b)),
            SqlValue::Bool(b) => mix(5, u64::from(*b)),
            SqlValue::Uuid(b) => mix(6, bytes(b)),
            SqlValue::Timestamp(t) => mix(7, *t as u64),
            SqlValue::Json(s) => mix(8, bytes(s.as_bytes())),
        }
    }
    // Spread the high bits into the low ones the table indexes by.
    h ^ (h >> 29)
}

/// Key order for a round: by the key columns' values where they compare
/// (the index's order), else by key text. Concurrent flushers lock rows in
/// the same order (fewer deadlocks).
fn key_order(a: &WRow, b: &WRow) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    for (x, y) in a.data.kvals.iter().zip(&b.data.kvals) {
        let o = match (x, y) {
            (SqlValue::Int(x), SqlValue::Int(y))
            | (SqlValue::Timestamp(x), SqlValue::Timestamp(y)) => x.cmp(y),
            (SqlValue::Text(x), SqlValue::Text(y)) => x.cmp(y),
            (SqlValue::Bytes(x), SqlValue::Bytes(y)) => x.cmp(y),
            (SqlValue::Uuid(x), SqlValue::Uuid(y)) => x.cmp(y),
            _ => return a.data.key.cmp(&b.data.key),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.data.key.cmp(&b.data.key)
}

/// Splits rows into rounds in which no key (its column values) appears
/// twice: a multi-row upsert must not touch one row twice. Rows are
/// counted by the hash of their key values: equal keys always land in
/// different rounds; a hash collision only costs an extra statement.
fn rounds(rows: Vec<WRow>) -> Vec<Vec<WRow>> {
    // Sorted hashes, not a hash map: a flush's keys are mostly distinct,
    // and a map of them costs a cache miss per key.
    let mut hashes: Vec<(u64, usize)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (key_hash(&r.data.kvals), i))
        .collect();
    hashes.sort_unstable();
    if hashes.windows(2).all(|w| w[0].0 != w[1].0) {
        return vec![rows];
    }
    let mut round = vec![0usize; rows.len()];
    let mut last = 0;
    for (j, &(h, i)) in hashes.iter().enumerate() {
        if j > 0 && hashes[j - 1].0 == h {
            round[i] = round[hashes[j - 1].1] + 1;
            last = last.max(round[i]);
        }
    }
    let mut out: Vec<Vec<WRow>> = (0..=last).map(|_| Vec::new()).collect();
    for (r, n) in rows.into_iter().zip(round) {
        out[n].push(r);
    }
    out
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
        types: &[SqlType],
        ctx: &str,
    ) -> Result<Vec<Vec<SqlValue>>> {
        self.statements += 1;
        let Stmt { sql, args } = st;
        self.tx()?
            .conn()
            .fetch_arrays(&sql, args, types)
            .await
            .map_err(Error::sql(self.context(ctx)))
    }

    async fn fetch_columns(
        &mut self,
        st: Stmt,
        types: &[SqlType],
        ctx: &str,
    ) -> Result<Vec<Vec<SqlValue>>> {
        self.statements += 1;
        let Stmt { sql, args } = st;
        self.tx()?
            .conn()
            .fetch_columns(&sql, args, types)
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
        let delta = w.cfg().table.is_delta_record();
        let ncols = d.columns().len();
        // Without a version column, puts and deletes are last writer wins.
        let versioned = d.has_version();
        let update_only = d.update_only();
        let (mut adds, mut sets, mut inserts, mut deletes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut conditional: Vec<(usize, Option<WRow>)> = Vec::new();
        let mut keyvals: HashMap<usize, Vec<SqlValue>> = HashMap::new();
        let cut = self.cut;
        for (idx, item) in cut.items.iter().enumerate() {
            let key = item.key.clone();
            let kvals = match w.key_values(&key) {
                Ok(k) => k,
                Err(e) => {
                    self.dead_letter(idx, format!("key: {e}"));
                    continue;
                }
            };
            let data = move |cols| RowData { key, kvals, cols };
            let expected = if versioned {
                item.expected
            } else {
                Expected::Any
            };
            match &item.change {
                Change::Add(delta) if counter => adds.push(WRow {
                    idx,
                    data: data(vec![SqlValue::Int(*delta)]),
                    report: Value::Int(*delta),
                    version_after: None,
                }),
                Change::Add(_) => {
                    self.dead_letter(idx, "Change::Add applies to counter tables only".to_owned());
                }
                Change::AddCols(deltas) if delta && deltas.len() == ncols => adds.push(WRow {
                    idx,
                    data: data(deltas.iter().map(|d| SqlValue::Int(*d)).collect()),
                    report: Value::Ints(deltas.clone()),
                    version_after: None,
                }),
                Change::AddCols(deltas) => self.dead_letter(
                    idx,
                    format!(
                        "Change::AddCols of {} columns applies to delta records of {} counter columns only",
                        deltas.len(),
                        if delta { ncols } else { 0 }
                    ),
                ),
                Change::Put(value) => match w.encode(&item.key, value) {
                    Err(e) => self.dead_letter(idx, e.to_string()),
                    Ok(cols) => {
                        let row = WRow {
                            idx,
                            data: data(cols),
                            report: value.clone(),
                            version_after: None,
                        };
                        match expected {
                            Expected::Any => sets.push(row),
                            _ => conditional.push((idx, Some(row))),
                        }
                    }
                },
                Change::Delete => match expected {
                    Expected::Any => deletes.push(delete_row(idx, data(Vec::new()))),
                    _ => {
                        keyvals.insert(idx, data(Vec::new()).kvals);
                        conditional.push((idx, None));
                    }
                },
            }
        }

        self.run_group(Group::Write(Mode::Add), adds).await?;

        // Conditional items: the locked rows decide write or conflict.
        let mut pending: Vec<(usize, Option<WRow>, Option<DbRow>)> = Vec::new();
        if !conditional.is_empty() {
            let keys: Vec<(Key, Vec<SqlValue>)> = conditional
                .iter()
                .map(|(i, row)| {
                    let kv = match row {
                        Some(r) => r.data.kvals.clone(),
                        None => keyvals.remove(i).unwrap_or_default(),
                    };
                    (cut.items[*i].key.clone(), kv)
                })
                .collect();
            let db = self.read_rows(&keys).await?;
            for ((idx, row), (_, kvals)) in conditional.into_iter().zip(keys) {
                let item = &cut.items[idx];
                let found = db.get(&item.key);
                let version = found.and_then(|r| r.as_ref().ok()).map(|(_, v)| *v);
                match (row, item.expected, found) {
                    (Some(_), Expected::Absent, None) if update_only => {
                        self.dead_letter(idx, NO_ROW.to_owned())
                    }
                    (Some(row), Expected::Absent, None) => inserts.push(row),
                    // The row is locked at version n: the upsert updates it to n + 1.
                    (Some(row), Expected::Version(n), Some(_)) if version == Some(n) => {
                        sets.push(WRow {
                            version_after: Some(n + 1),
                            ..row
                        })
                    }
                    (None, Expected::Version(n), Some(_)) if version == Some(n) => {
                        deletes.push(delete_row(
                            idx,
                            RowData {
                                key: item.key.clone(),
                                kvals,
                                cols: Vec::new(),
                            },
                        ))
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
            let keys: Vec<(Key, Vec<SqlValue>)> = lost
                .iter()
                .map(|r| (r.data.key.clone(), r.data.kvals.clone()))
                .collect();
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

    /// Locked reads of the data rows of `keys` (key text and key values).
    async fn read_rows(&mut self, keys: &[(Key, Vec<SqlValue>)]) -> Result<HashMap<Key, DbRow>> {
        let w = self.w;
        let d = w.dialect();
        let per = d.rows_per_statement(w.cfg().max_rows_per_statement, d.params_per_key());
        let types = d.select_types();
        let nk = d.key_columns().len();
        let mut sorted: Vec<&(Key, Vec<SqlValue>)> = keys.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = HashMap::with_capacity(keys.len());
        for chunk in sorted.chunks(per) {
            let kv: Vec<&[SqlValue]> = chunk.iter().map(|(_, v)| &v[..]).collect();
            for mut row in self
                .fetch(d.select(&kv, true), &types, "read rows for update")
                .await?
            {
                if row.len() < nk + 1 {
                    continue;
                }
                let mut rest = row.split_off(nk);
                let Ok(key) = w.key_of(row) else {
                    continue;
                };
                let cols = rest.split_off(1);
                let ver = match rest.first() {
                    Some(SqlValue::Int(v)) => *v,
                    _ => 0,
                };
                let decoded = w.decode_value(&key, cols).map(|v| (v, ver));
                out.insert(key, decoded);
            }
        }
        Ok(out)
    }

    /// Runs a group in rounds in which no key appears twice.
    async fn run_group(&mut self, group: Group, rows: Vec<WRow>) -> Result<Vec<WRow>> {
        let mut lost = Vec::new();
        for round in rounds(rows) {
            lost.extend(self.run_round(group, round).await?);
        }
        Ok(lost)
    }

    /// Runs a round in chunks, isolating permanently failing rows. Returns
    /// the rows an `InsertIfAbsent` did not insert (the key existed).
    async fn run_round(&mut self, group: Group, mut rows: Vec<WRow>) -> Result<Vec<WRow>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let w = self.w;
        let d = w.dialect();
        rows.sort_unstable_by(key_order);
        let per_row = if group == Group::Delete {
            d.params_per_key()
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
            let written: Vec<&WRow> = unread
                .iter()
                .flat_map(|&(lo, hi)| rows[lo..hi].iter())
                .collect();
            let back = self.read_back(mode, &written).await?;
            self.record(group, written, Some(back), &mut lost);
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
        let w = self.w;
        let d = w.dialect();
        match group {
            Group::Delete => {
                let keys: Vec<&[SqlValue]> = chunk.iter().map(|r| &r.data.kvals[..]).collect();
                let n = self.exec(d.delete(&keys), "delete").await?;
                self.rows += n;
                Ok(Written::Done)
            }
            Group::Write(mode) => {
                let report = w.cfg().report_values;
                // Update-only writes must learn which keys matched a row.
                let must_read = mode == Mode::InsertIfAbsent || d.update_only();
                // RETURNING where it is cheap: PostgreSQL always; SQLite only
                // to learn which rows an InsertIfAbsent inserted, since its
                // RETURNING costs as much as the write (the rest is read back
                // after the group); MySQL has none with ON DUPLICATE KEY.
                let returning = match d.backend {
                    Backend::MySql => false,
                    Backend::Sqlite => mode == Mode::InsertIfAbsent,
                    Backend::Postgres => must_read || report,
                };
                let data: Vec<&RowData> = chunk.iter().map(|r| &r.data).collect();
                let st = d.write(mode, &data, returning, w.facts());
                if returning && d.returns_positions(mode) {
                    let cols = self
                        .fetch_columns(st, &d.ordinal_types(mode), "write")
                        .await?;
                    self.rows += cols.first().map_or(0, Vec::len) as u64;
                    return Ok(Written::Returned(by_ordinal(chunk.len(), cols)));
                }
                if returning && d.backend == Backend::Postgres {
                    let types = d.returning_types(mode);
                    let rows = self.fetch_arrays(st, &types, "write").await?;
                    self.rows += match mode {
                        Mode::InsertIfAbsent => rows.len() as u64,
                        _ if d.update_only() => rows.len() as u64,
                        _ => chunk.len() as u64,
                    };
                    return Ok(Written::Returned(by_position(w, chunk, rows)));
                }
                if returning {
                    let rows = self.fetch(st, &d.returning_types(mode), "write").await?;
                    self.rows += match mode {
                        Mode::InsertIfAbsent => rows.len() as u64,
                        _ => chunk.len() as u64,
                    };
                    return Ok(Written::Returned(by_position(w, chunk, rows)));
                }
                self.exec(st, "write").await?;
                self.rows += chunk.len() as u64;
                Ok(if report || must_read {
                    Written::ReadLater
                } else {
                    Written::Done
                })
            }
        }
    }

    /// Versions (and totals) of `rows`, just written in this transaction,
    /// by position: SQLite and MySQL's stand-in for RETURNING.
    async fn read_back(&mut self, mode: Mode, rows: &[&WRow]) -> Result<ReadBack> {
        let w = self.w;
        let d = w.dialect();
        let ntotals = if mode == Mode::Add {
            d.columns().len()
        } else {
            0
        };
        let mut back: ReadBack = vec![None; rows.len()];
        let mut lo = 0;
        while lo < rows.len() {
            // Bounded by keys and bytes (MySQL's max_allowed_packet is 16 MiB
            // on MariaDB); JSON may spell one byte as six (`\u0001`).
            let mut hi = lo;
            let mut bytes = 0;
            while hi < rows.len() && hi - lo < READ_BACK_KEYS && bytes < READ_BACK_BYTES {
                bytes += rows[hi].data.key.len() * 6 + 8 * rows[hi].data.kvals.len() + 3;
                hi += 1;
            }
            let keys: Vec<&[SqlValue]> = rows[lo..hi].iter().map(|r| &r.data.kvals[..]).collect();
            let st = d.read_back(mode, &keys, w.facts());
            let bad = |message: String| Error::BadRow {
                table: d.table_name().to_owned(),
                key: String::new(),
                message,
            };
            let ctx = "read back written rows";
            let mut put = |pos: i64, version: Option<i64>, totals: Vec<i64>| {
                let slot = usize::try_from(pos)
                    .ok()
                    .and_then(|p| back.get_mut(lo + p).filter(|_| p < hi - lo))
                    .ok_or_else(|| bad(format!("read back: position {pos} out of range")))?;
                *slot = Some(Back {
                    version,
                    totals: Arc::from(totals),
                });
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
                    let mut totals = Vec::with_capacity(ntotals);
                    for _ in 0..ntotals {
                        if let Some(t) = int("total")? {
                            totals.push(t);
                        }
                    }
                    if let Some(pos) = pos {
                        put(pos, version, totals)?;
                    }
                }
            } else {
                let types = vec![SqlType::BigInt; 2 + ntotals];
                for row in self.fetch(st, &types, ctx).await? {
                    if let Some(SqlValue::Int(pos)) = row.first() {
                        let version = match row.get(1) {
                            Some(SqlValue::Int(v)) => Some(*v),
                            _ => None,
                        };
                        let totals = row[2..]
                            .iter()
                            .filter_map(|t| match t {
                                SqlValue::Int(t) => Some(*t),
                                _ => None,
                            })
                            .collect();
                        put(*pos, version, totals)?;
                    }
                }
            }
            lo = hi;
        }
        Ok(back)
    }

    fn record<'r>(
        &mut self,
        group: Group,
        chunk: impl IntoIterator<Item = &'r WRow>,
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
        let update_only = self.w.dialect().update_only() && mode != Mode::InsertIfAbsent;
        let delta = self.w.cfg().table.is_delta_record();
        let mut back = back.unwrap_or_default().into_iter();
        for r in chunk {
            let outcome = match back.next().flatten() {
                Some(Back { version, totals }) => ItemOutcome::Written {
                    version,
                    value: match mode {
                        Mode::Add if delta && !totals.is_empty() => Some(Value::Ints(totals)),
                        Mode::Add => totals.first().map(|t| Value::Int(*t)),
                        Mode::Set | Mode::InsertIfAbsent => Some(r.report.clone()),
                    },
                },
                None if mode == Mode::InsertIfAbsent && read => {
                    lost.push(r.clone());
                    continue;
                }
                None if update_only && read => {
                    // Nothing was written for it: the statement matched no row.
                    self.dead_letter(r.idx, NO_ROW.to_owned());
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(idx: usize, key: &str, k: i64) -> WRow {
        WRow {
            idx,
            data: RowData {
                key: Key::from(key),
                kvals: vec![SqlValue::Int(k)],
                cols: Vec::new(),
            },
            report: Value::Int(0),
            version_after: None,
        }
    }

    /// Two texts of one key value land in different rounds, in cut order.
    #[test]
    fn rounds_split_equal_key_values() {
        let rows = vec![
            row(0, "1", 1),
            row(1, "2", 2),
            row(2, "01", 1),
            row(3, "001", 1),
        ];
        let idx: Vec<Vec<usize>> = rounds(rows)
            .iter()
            .map(|r| r.iter().map(|w| w.idx).collect())
            .collect();
        assert_eq!(idx, vec![vec![0, 1], vec![2], vec![3]]);
        let one = rounds(vec![row(0, "1", 1), row(1, "2", 2)]);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].len(), 2);
    }

    /// Positions map returned columns to rows; rows not returned stay `None`.
    #[test]
    fn ordinals_align_returned_columns() {
        let cols = vec![
            vec![SqlValue::Int(3), SqlValue::Int(1), SqlValue::Int(9)],
            vec![SqlValue::Null, SqlValue::Null, SqlValue::Null],
            vec![SqlValue::Int(30), SqlValue::Int(10), SqlValue::Int(90)],
            vec![SqlValue::Int(31), SqlValue::Int(11), SqlValue::Int(91)],
        ];
        let back = by_ordinal(3, cols);
        let want = |a: i64, b: i64| {
            Some(Back {
                version: None,
                totals: Arc::from(vec![a, b]),
            })
        };
        assert_eq!(back, vec![want(10, 11), None, want(30, 31)]);
        assert_eq!(by_ordinal(2, Vec::new()), vec![None, None]);
    }

    /// Integer keys sort by value, not by text.
    #[test]
    fn key_order_follows_key_values() {
        let mut rows = vec![row(0, "10", 10), row(1, "9", 9), row(2, "100", 100)];
        rows.sort_unstable_by(key_order);
        let keys: Vec<&str> = rows.iter().map(|r| &*r.data.key).collect();
        assert_eq!(keys, vec!["9", "10", "100"]);
    }
}
