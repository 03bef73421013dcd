//! A cut's items sorted into statement kinds: counter adds, unconditional puts
//! and deletes, and the conditional ones, decided on their rows read locked.

use std::collections::HashMap;

use writebehind_core::{Change, Expected, ItemOutcome, Key, Value};

use super::{Flush, NO_ROW};
use crate::error::Result;
use crate::rows::{delete_row, DbRow, WRow};
use crate::schema::{SqlValue, TableKind};
use crate::sql::RowData;

/// A cut's rows by how they are written.
#[derive(Default)]
pub(super) struct Groups {
    pub(super) adds: Vec<WRow>,
    pub(super) sets: Vec<WRow>,
    pub(super) inserts: Vec<WRow>,
    pub(super) deletes: Vec<WRow>,
    /// Versioned puts (`Some`) and deletes (`None`), decided on the locked rows.
    conditional: Vec<(usize, Option<WRow>)>,
    /// Key values of the conditional deletes.
    keyvals: HashMap<usize, Vec<SqlValue>>,
}

/// A row whose write met another version: item, our row (`None`: a
/// delete), the database's row.
pub(super) type Pending = (usize, Option<WRow>, Option<DbRow>);

impl Flush<'_> {
    /// Sorts the cut's items by statement kind; an item whose key or change the
    /// table cannot take is dead-lettered.
    pub(super) fn classify(&mut self) -> Groups {
        let w = self.w;
        let d = w.dialect();
        let counter = matches!(w.cfg().table.kind, TableKind::Counter);
        let delta = w.cfg().table.is_delta_record();
        let ncols = d.columns().len();
        // Without a version column, puts and deletes are last writer wins.
        let versioned = d.has_version();
        let mut g = Groups::default();
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
                Change::Add(delta) if counter => g.adds.push(WRow {
                    idx,
                    data: data(vec![SqlValue::Int(*delta)]),
                    report: Value::Int(*delta),
                    version_after: None,
                }),
                Change::Add(_) => {
                    self.dead_letter(idx, "Change::Add applies to counter tables only".to_owned());
                }
                Change::AddCols(deltas) if delta && deltas.len() == ncols => g.adds.push(WRow {
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
                            Expected::Any => g.sets.push(row),
                            _ => g.conditional.push((idx, Some(row))),
                        }
                    }
                },
                Change::Delete => match expected {
                    Expected::Any => g.deletes.push(delete_row(idx, data(Vec::new()))),
                    _ => {
                        g.keyvals.insert(idx, data(Vec::new()).kvals);
                        g.conditional.push((idx, None));
                    }
                },
            }
        }
        g
    }

    /// Reads the conditional items' rows locked and decides each: a write,
    /// a delete, nothing to do, or a conflict (returned).
    pub(super) async fn decide_conditional(&mut self, g: &mut Groups) -> Result<Vec<Pending>> {
        let cut = self.cut;
        let update_only = self.w.dialect().update_only();
        // Conditional items: the locked rows decide write or conflict.
        let mut pending: Vec<Pending> = Vec::new();
        let conditional = std::mem::take(&mut g.conditional);
        if !conditional.is_empty() {
            let keys: Vec<(Key, Vec<SqlValue>)> = conditional
                .iter()
                .map(|(i, row)| {
                    let kv = match row {
                        Some(r) => r.data.kvals.clone(),
                        None => g.keyvals.remove(i).unwrap_or_default(),
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
                    (Some(row), Expected::Absent, None) => g.inserts.push(row),
                    // The row is locked at version n: the upsert updates it to n + 1.
                    (Some(row), Expected::Version(n), Some(_)) if version == Some(n) => {
                        g.sets.push(WRow {
                            version_after: Some(n + 1),
                            ..row
                        })
                    }
                    (None, Expected::Version(n), Some(_)) if version == Some(n) => {
                        g.deletes.push(delete_row(
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
        Ok(pending)
    }

    /// Locked reads of the data rows of `keys` (key text and key values).
    pub(super) async fn read_rows(
        &mut self,
        keys: &[(Key, Vec<SqlValue>)],
    ) -> Result<HashMap<Key, DbRow>> {
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
}
