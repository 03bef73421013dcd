//! Row encoding: values to the data table's columns and back, checked
//! against the column types.

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
    /// Row layout of `Dialect::select`: key, version, value columns.
    pub(crate) fn decode_row(&self, mut row: Vec<SqlValue>) -> Result<(Key, Value, i64)> {
        let bad = |key: &str, message: String| Error::BadRow {
            table: self.dialect().table_name().to_owned(),
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

    pub(crate) fn decode_value(
        &self,
        key: &str,
        mut cols: Vec<SqlValue>,
    ) -> std::result::Result<Value, String> {
        match &self.cfg().table.kind {
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
    pub(crate) fn encode(&self, key: &Key, value: &Value) -> Result<Vec<SqlValue>> {
        let mismatch = |message: &str| Error::Mismatch {
            table: self.dialect().table_name().to_owned(),
            key: key.clone(),
            message: message.to_owned(),
        };
        match (&self.cfg().table.kind, value) {
            (TableKind::Counter, Value::Int(v)) => Ok(vec![SqlValue::Int(*v)]),
            (TableKind::Counter, Value::Bytes(_) | Value::Ints(_)) => {
                Err(mismatch("a counter table stores Value::Int"))
            }
            (TableKind::Record(_), Value::Ints(_)) => {
                Err(mismatch("delta records are not written yet"))
            }
            (TableKind::Record(_), Value::Int(_)) => Err(mismatch(
                "a record table stores Value::Bytes, got Value::Int",
            )),
            (TableKind::Record(codec), Value::Bytes(b)) => {
                let codec_err = |message: String| Error::Codec {
                    key: key.clone(),
                    message,
                };
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

pub(crate) fn delete_row(idx: usize, key: Key) -> WRow {
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
