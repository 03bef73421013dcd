//! Row encoding: keys and values to the data table's columns and back,
//! checked against the column types.

use std::sync::Arc;

use writebehind_core::{Key, Value};

use crate::error::{Error, Result};
use crate::schema::{SqlValue, TableKind};
use crate::sql::RowData;
use crate::writer::Inner;

/// A data-table row in a write group: which cut item, the SQL row, and the
/// value to report back when written.
#[derive(Clone, Debug)]
pub(crate) struct WRow {
    pub(crate) idx: usize,
    pub(crate) data: RowData,
    pub(crate) report: Value,
    /// The version after the write when known without reading back: the
    /// row was locked at version n, so it becomes n + 1.
    pub(crate) version_after: Option<i64>,
}

/// Decoded row of the data table, or why it could not be decoded.
pub(crate) type DbRow = std::result::Result<(Value, i64), String>;

impl Inner {
    /// The key columns' values of `key`, checked against their types.
    pub(crate) fn key_values(&self, key: &str) -> std::result::Result<Vec<SqlValue>, String> {
        let codec = &self.cfg().table.key;
        let vals = codec.to_sql(key)?;
        let cols = codec.columns();
        if vals.len() != cols.len() {
            return Err(format!(
                "the key codec gave {} values for {} key columns",
                vals.len(),
                cols.len()
            ));
        }
        for (v, c) in vals.iter().zip(cols) {
            if *v == SqlValue::Null || !v.fits(c.ty) {
                return Err(format!(
                    "key column {}: {v:?} does not fit {:?}",
                    c.name, c.ty
                ));
            }
        }
        Ok(vals)
    }

    /// A row to write.
    pub(crate) fn row_data(&self, key: &Key, cols: Vec<SqlValue>) -> Result<RowData> {
        let kvals = self.key_values(key).map_err(|message| Error::Codec {
            key: key.clone(),
            message,
        })?;
        Ok(RowData {
            key: key.clone(),
            kvals,
            cols,
        })
    }

    /// The key text of a row's key columns.
    pub(crate) fn key_of(&self, kvals: Vec<SqlValue>) -> std::result::Result<Key, String> {
        self.cfg()
            .table
            .key
            .from_sql(kvals)
            .map(|k| Arc::from(k.as_str()))
    }

    /// Row layout of `Dialect::select`: key columns, version (NULL without
    /// a version column: read as 0), value columns.
    pub(crate) fn decode_row(&self, mut row: Vec<SqlValue>) -> Result<(Key, Value, i64)> {
        let bad = |key: &str, message: String| Error::BadRow {
            table: self.dialect().table_name().to_owned(),
            key: key.to_owned(),
            message,
        };
        let nk = self.dialect().key_columns().len();
        if row.len() < nk + 1 {
            return Err(bad(
                "?",
                format!("expected at least {} columns, got {}", nk + 1, row.len()),
            ));
        }
        let mut rest = row.split_off(nk);
        let cols = rest.split_off(1);
        let key = self.key_of(row).map_err(|m| bad("?", m))?;
        let version = match rest.first() {
            Some(SqlValue::Int(v)) => *v,
            Some(SqlValue::Null) if !self.dialect().has_version() => 0,
            other => return Err(bad(&key, format!("version is {other:?}"))),
        };
        let value = self.decode_value(&key, cols).map_err(|m| bad(&key, m))?;
        Ok((key, value, version))
    }

    pub(crate) fn decode_value(
        &self,
        key: &str,
        mut cols: Vec<SqlValue>,
    ) -> std::result::Result<Value, String> {
        let table = &self.cfg().table;
        match &table.kind {
            TableKind::Counter => match cols.pop() {
                Some(SqlValue::Int(v)) if cols.is_empty() => Ok(Value::Int(v)),
                other => Err(format!("counter value is {other:?}")),
            },
            TableKind::Record(_) if table.is_delta_record() => cols
                .into_iter()
                .map(|c| match c {
                    SqlValue::Int(v) => Ok(v),
                    other => Err(format!("a counter column holds {other:?}")),
                })
                .collect::<std::result::Result<Arc<[i64]>, String>>()
                .map(Value::Ints),
            TableKind::Record(codec) => codec
                .from_row(cols)
                .map(|b| Value::Bytes(Arc::from(b)))
                .map_err(|e| format!("codec cannot decode the row of {key:?}: {e}")),
        }
    }

    /// A value as the data table's columns, checked against their types.
    pub(crate) fn encode(&self, key: &Key, value: &Value) -> Result<Vec<SqlValue>> {
        let mismatch = |message: &str| Error::Mismatch {
            table: self.dialect().table_name().to_owned(),
            key: key.clone(),
            message: message.to_owned(),
        };
        let codec_err = |message: String| Error::Codec {
            key: key.clone(),
            message,
        };
        let ncols = self.dialect().columns().len();
        let delta = self.cfg().table.is_delta_record();
        match (&self.cfg().table.kind, value) {
            (TableKind::Counter, Value::Int(v)) => Ok(vec![SqlValue::Int(*v)]),
            (TableKind::Counter, _) => Err(mismatch("a counter table stores Value::Int")),
            (TableKind::Record(_), Value::Ints(c)) if delta => {
                if c.len() != ncols {
                    return Err(codec_err(format!(
                        "{} values for {ncols} counter columns",
                        c.len()
                    )));
                }
                Ok(c.iter().map(|v| SqlValue::Int(*v)).collect())
            }
            (TableKind::Record(_), _) if delta => Err(mismatch(
                "a delta-record table (all columns counters) stores Value::Ints",
            )),
            (TableKind::Record(_), Value::Int(_) | Value::Ints(_)) => {
                Err(mismatch("a record table stores Value::Bytes"))
            }
            (TableKind::Record(codec), Value::Bytes(b)) => {
                let row = codec.to_row(b).map_err(codec_err)?;
                let cols = self.dialect().columns();
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

pub(crate) fn delete_row(idx: usize, data: RowData) -> WRow {
    WRow {
        idx,
        data,
        report: Value::Int(0),
        version_after: None,
    }
}
