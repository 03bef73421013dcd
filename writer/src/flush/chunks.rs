//! The rows of one statement kind as statements: passes in which no key appears twice,
//! chunks of a pass in key order, a failing chunk halved until its bad row
//! is alone, and the one statement per chunk.

use std::collections::HashMap;

use super::readback::{by_key_columns, by_ordinal, Written};
use super::{Flush, StmtKind, SAVEPOINT};
use crate::error::{Error, Result};
use crate::ident::Backend;
use crate::rows::WRow;
use crate::schema::{SqlType, SqlValue};
use crate::sql::{Mode, RowData};

/// A map keyed by [`key_hash`], which is already mixed: no second hash.
pub(super) type KeyMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<Mixed>>;

/// Passes a [`key_hash`] through.
#[derive(Default)]
pub(super) struct Mixed(u64);

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
pub(super) fn key_hash(kvals: &[SqlValue]) -> u64 {
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

/// Key order for a pass: by the key columns' values where they compare
/// (the index's order), else by key text. Concurrent flushers lock rows in
/// the same order (fewer deadlocks).
pub(super) fn key_order(a: &WRow, b: &WRow) -> std::cmp::Ordering {
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

/// Sorts a pass by [`key_order`]. A single integer key column (the common
/// `id BIGINT` key) sorts by its values alone: comparing rows would read each
/// row's key values from the heap at every comparison.
pub(super) fn sort_rows(rows: &mut Vec<WRow>) {
    let ids: Option<Vec<(i64, usize)>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| match r.data.kvals.as_slice() {
            [SqlValue::Int(id)] => Some((*id, i)),
            _ => None,
        })
        .collect();
    let Some(mut ids) = ids else {
        rows.sort_unstable_by(key_order);
        return;
    };
    ids.sort_unstable();
    let mut slots: Vec<Option<WRow>> = rows.drain(..).map(Some).collect();
    rows.extend(ids.iter().filter_map(|&(_, i)| slots[i].take()));
}

/// The write mode of a statement kind (`None`: deletes).
fn kind_mode(kind: StmtKind) -> Option<Mode> {
    match kind {
        StmtKind::Write(mode) => Some(mode),
        StmtKind::Delete => None,
    }
}

/// `[lo, hi)` of each chunk of `n` rows, at most `per` each. `stable`: the
/// rows after the last full chunk go in chunks of powers of two, so each
/// chunk's statement text (its row list) is one seen before: prepared once
/// per connection, not at every flush.
pub(super) fn chunk_bounds(n: usize, per: usize, stable: bool) -> Vec<(usize, usize)> {
    let per = per.max(1);
    let full = if stable { n - n % per } else { n };
    let mut out: Vec<(usize, usize)> = (0..full)
        .step_by(per)
        .map(|lo| (lo, (lo + per).min(full)))
        .collect();
    let mut lo = full;
    while lo < n {
        let size = 1usize << (usize::BITS - 1 - (n - lo).leading_zeros());
        out.push((lo, lo + size));
        lo += size;
    }
    out
}

/// Frees a large pass's rows on a blocking thread: each holds its own key
/// and column vectors, and freeing tens of thousands of them inside the
/// transaction would hold the flush (and its row locks) for milliseconds.
fn drop_aside(rows: Vec<WRow>) {
    const ASIDE: usize = 1_024;
    if rows.len() < ASIDE {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        drop(rt.spawn_blocking(move || drop(rows)));
    }
}

/// Splits rows into passes in which no key (its column values) appears
/// twice: a multi-row upsert must not touch one row twice. Rows are
/// counted by the hash of their key values: equal keys always land in
/// different passes; a hash collision only costs an extra statement.
pub(super) fn passes(rows: Vec<WRow>) -> Vec<Vec<WRow>> {
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
    let mut pass = vec![0usize; rows.len()];
    let mut last = 0;
    for (j, &(h, i)) in hashes.iter().enumerate() {
        if j > 0 && hashes[j - 1].0 == h {
            pass[i] = pass[hashes[j - 1].1] + 1;
            last = last.max(pass[i]);
        }
    }
    let mut out: Vec<Vec<WRow>> = (0..=last).map(|_| Vec::new()).collect();
    for (r, n) in rows.into_iter().zip(pass) {
        out[n].push(r);
    }
    out
}

impl Flush<'_> {
    /// Runs a statement kind in passes in which no key appears twice.
    pub(super) async fn run_kind(&mut self, kind: StmtKind, rows: Vec<WRow>) -> Result<Vec<WRow>> {
        let mut lost = Vec::new();
        for pass in passes(rows) {
            lost.extend(self.run_pass(kind, pass).await?);
        }
        Ok(lost)
    }

    /// Runs a pass in chunks, isolating permanently failing rows. Returns
    /// the rows an `InsertIfAbsent` did not insert (the key existed).
    async fn run_pass(&mut self, kind: StmtKind, mut rows: Vec<WRow>) -> Result<Vec<WRow>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let w = self.w;
        let d = w.dialect();
        sort_rows(&mut rows);
        let per_row = if kind == StmtKind::Delete {
            d.params_per_key()
        } else {
            d.params_per_row()
        };
        let per = d.rows_per_statement(w.cfg().max_rows_per_statement, per_row);
        let mut stack = chunk_bounds(rows.len(), per, d.text_varies_with_rows(kind_mode(kind)));
        stack.reverse();
        let mut lost = Vec::new();
        // Written without RETURNING and to be read back after the statement kind.
        let mut unread: Vec<(usize, usize)> = Vec::new();
        while let Some((lo, hi)) = stack.pop() {
            match self.run_chunk(kind, &rows[lo..hi]).await {
                Ok(Written::Returned(back)) => {
                    self.record(kind, &rows[lo..hi], Some(back), &mut lost)
                }
                Ok(Written::ReadLater) => unread.push((lo, hi)),
                Ok(Written::Done) => self.record(kind, &rows[lo..hi], None, &mut lost),
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
        if let (StmtKind::Write(mode), false) = (kind, unread.is_empty()) {
            let written: Vec<&WRow> = unread
                .iter()
                .flat_map(|&(lo, hi)| rows[lo..hi].iter())
                .collect();
            let back = self.read_back(mode, &written).await?;
            self.record(kind, written, Some(back), &mut lost);
        }
        drop_aside(rows);
        Ok(lost)
    }

    /// One statement, undone alone on failure.
    async fn run_chunk(&mut self, kind: StmtKind, chunk: &[WRow]) -> Result<Written> {
        let d = self.w.dialect();
        // PostgreSQL aborts the whole transaction on an error; SQLite and
        // InnoDB undo just the failed statement, so only PostgreSQL needs a savepoint.
        let savepoint = self.savepoints && d.backend == Backend::Postgres;
        if savepoint {
            self.raw(&format!("SAVEPOINT {SAVEPOINT}")).await?;
        }
        let result = self.chunk_statement(kind, chunk).await;
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

    async fn chunk_statement(&mut self, kind: StmtKind, chunk: &[WRow]) -> Result<Written> {
        let w = self.w;
        let d = w.dialect();
        match kind {
            StmtKind::Delete => {
                let keys: Vec<&[SqlValue]> = chunk.iter().map(|r| &r.data.kvals[..]).collect();
                let n = self.exec(d.delete(&keys), "delete").await?;
                self.rows += n;
                Ok(Written::Done)
            }
            StmtKind::Write(mode) => {
                let report = w.cfg().report_values;
                // Update-only writes must learn which keys matched a row.
                let must_read = mode == Mode::InsertIfAbsent || d.update_only();
                // RETURNING where it is cheap: PostgreSQL always; SQLite only
                // to learn which rows an InsertIfAbsent inserted, since its
                // RETURNING costs as much as the write (the rest is read back
                // after the statement kind); MySQL has none with ON DUPLICATE KEY.
                // Update-only without values to report: the row count says
                // whether every key matched (the keys of a chunk are distinct);
                // only a short count asks which did.
                let by_count = d.update_only() && mode != Mode::InsertIfAbsent && !report;
                let returning = match d.backend {
                    Backend::MySql => false,
                    Backend::Sqlite => mode == Mode::InsertIfAbsent,
                    Backend::Postgres => (must_read || report) && !by_count,
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
                    return Ok(Written::Returned(by_key_columns(w, chunk, rows)));
                }
                if returning {
                    let rows = self.fetch(st, &d.returning_types(mode), "write").await?;
                    self.rows += match mode {
                        Mode::InsertIfAbsent => rows.len() as u64,
                        _ => chunk.len() as u64,
                    };
                    return Ok(Written::Returned(by_key_columns(w, chunk, rows)));
                }
                let affected = self.exec(st, "write").await?;
                // MySQL counts an upsert's update as two rows; its row count is ours.
                self.rows += if d.update_only() {
                    affected
                } else {
                    chunk.len() as u64
                };
                let matched_all = by_count && affected == chunk.len() as u64;
                if by_count && !matched_all && d.backend == Backend::Postgres {
                    let positions = self
                        .fetch_columns(d.pg_matched(&data), &[SqlType::BigInt], "find matched keys")
                        .await?;
                    return Ok(Written::Returned(by_ordinal(chunk.len(), positions)));
                }
                Ok(if report || (must_read && !matched_all) {
                    Written::ReadLater
                } else {
                    Written::Done
                })
            }
        }
    }
}
