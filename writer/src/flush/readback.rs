//! What a write's rows hold afterwards: RETURNING rows matched to the
//! written rows (by key or by position), the read-back that stands in for
//! RETURNING on SQLite and MySQL, and each item's outcome.

use std::sync::Arc;

use writebehind_core::{ItemOutcome, Value};

use super::chunks::{key_hash, KeyMap};
use super::{Flush, StmtKind, NO_ROW};
use crate::error::{Error, Result};
use crate::ident::Backend;
use crate::rows::WRow;
use crate::schema::{SqlType, SqlValue};
use crate::sql::Mode;
use crate::writer::Inner;

/// Keys per read-back statement, and the JSON bytes after which a batch stops.
const READ_BACK_KEYS: usize = 20_000;
const READ_BACK_BYTES: usize = 4 << 20;

/// A written row as the database holds it: the version (`None` without a
/// version column) and, for `Add`, the totals of the value columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Back {
    pub(super) version: Option<i64>,
    pub(super) totals: Arc<[i64]>,
}

/// What the database holds after a write, aligned with the written rows.
/// `None`: not returned (an `InsertIfAbsent` that found the key, an
/// update-only key that matched no row).
pub(super) type ReadBack = Vec<Option<Back>>;

/// How a chunk's new versions come back.
pub(super) enum Written {
    /// From the statement itself (RETURNING).
    Returned(ReadBack),
    /// To be read back after the statement kind, in the same transaction.
    ReadLater,
    /// Not at all (deletes; `report_values(false)`).
    Done,
}

/// RETURNING rows `(key columns, version[, totals])` aligned with `chunk`
/// by the key columns' values (not by key text: two texts may name one row).
/// The rows of `chunk` come from one pass, so their key hashes differ.
pub(super) fn by_key_columns(
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
pub(super) fn by_ordinal(n: usize, columns: Vec<Vec<SqlValue>>) -> ReadBack {
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

impl Flush<'_> {
    /// Versions (and totals) of `rows`, just written in this transaction,
    /// by position: SQLite and MySQL's stand-in for RETURNING.
    pub(super) async fn read_back(&mut self, mode: Mode, rows: &[&WRow]) -> Result<ReadBack> {
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

    pub(super) fn record<'r>(
        &mut self,
        kind: StmtKind,
        chunk: impl IntoIterator<Item = &'r WRow>,
        back: Option<ReadBack>,
        lost: &mut Vec<WRow>,
    ) {
        let StmtKind::Write(mode) = kind else {
            for r in chunk {
                self.outcomes[r.idx] = Some(ItemOutcome::Deleted);
            }
            return;
        };
        let read = back.is_some();
        // Without values to report, a counter's total read back to learn
        // which keys matched is not reported either: every backend answers alike.
        let report = self.w.cfg().report_values;
        let update_only = self.w.dialect().update_only() && mode != Mode::InsertIfAbsent;
        let delta = self.w.cfg().table.is_delta_record();
        let mut back = back.unwrap_or_default().into_iter();
        for r in chunk {
            let outcome = match back.next().flatten() {
                Some(Back { version, totals }) => ItemOutcome::Written {
                    // A count-checked write reads no version: the locked
                    // row's, when there was one, still holds.
                    version: version.or(r.version_after),
                    value: match mode {
                        Mode::Add if !report => None,
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
}
