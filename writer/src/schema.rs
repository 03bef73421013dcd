//! Table shapes: column types, values, the record codec and table specs.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ident::Ident;

/// A column type, mapped per backend (see [`Writer::create_tables`](crate::Writer::create_tables)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SqlType {
    /// 64-bit signed integer.
    BigInt,
    /// 64-bit float.
    Double,
    /// UTF-8 text.
    Text,
    /// Raw bytes.
    Bytes,
    /// Boolean.
    Bool,
}

/// One column value as bound to or read from SQL.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    /// SQL NULL.
    Null,
    /// A BIGINT.
    Int(i64),
    /// A DOUBLE.
    Float(f64),
    /// A TEXT.
    Text(String),
    /// A BYTES/BLOB.
    Bytes(Vec<u8>),
    /// A BOOLEAN.
    Bool(bool),
}

impl SqlValue {
    /// Whether this value may be stored in a column of type `ty`.
    pub fn fits(&self, ty: SqlType) -> bool {
        matches!(
            (self, ty),
            (SqlValue::Null, _)
                | (SqlValue::Int(_), SqlType::BigInt)
                | (SqlValue::Float(_), SqlType::Double)
                | (SqlValue::Text(_), SqlType::Text)
                | (SqlValue::Bytes(_), SqlType::Bytes)
                | (SqlValue::Bool(_), SqlType::Bool)
        )
    }
}

/// A value column of a record table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: Ident,
    /// Column type.
    pub ty: SqlType,
    /// Whether NULL is allowed.
    pub nullable: bool,
}

impl Column {
    /// A column, validating its name.
    pub fn new(name: &str, ty: SqlType, nullable: bool) -> Result<Column> {
        Ok(Column {
            name: Ident::new(name)?,
            ty,
            nullable,
        })
    }
}

/// Maps an encoded record value (`Value::Bytes`) to columns and back. The
/// root crate implements it from the user's typed mapping; the writer only
/// sees bytes and [`SqlValue`]s.
pub trait RowCodec: Send + Sync + 'static {
    /// The value columns, in the order `to_row` produces and `from_row` takes.
    fn columns(&self) -> &[Column];
    /// Encoded value to one value per column.
    fn to_row(&self, value: &[u8]) -> std::result::Result<Vec<SqlValue>, String>;
    /// One value per column back to the encoded value.
    // The name is the API the root crate codes against.
    #[allow(clippy::wrong_self_convention)]
    fn from_row(&self, row: Vec<SqlValue>) -> std::result::Result<Vec<u8>, String>;
}

/// What the data table holds.
#[derive(Clone)]
pub enum TableKind {
    /// `Value::Int` counters in one BIGINT column (`value_column`).
    Counter,
    /// `Value::Bytes` records spread over the codec's columns.
    Record(Arc<dyn RowCodec>),
}

impl std::fmt::Debug for TableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableKind::Counter => f.write_str("Counter"),
            TableKind::Record(c) => f.debug_tuple("Record").field(&c.columns()).finish(),
        }
    }
}

/// The data table the writer flushes into.
///
/// Default: `counters(key TEXT PRIMARY KEY, value BIGINT NOT NULL, version BIGINT NOT NULL)`.
#[derive(Clone, Debug)]
pub struct TableSpec {
    /// Table name.
    pub table: Ident,
    /// Primary-key column (text).
    pub key_column: Ident,
    /// The counter column (used by [`TableKind::Counter`] only).
    pub value_column: Ident,
    /// The BIGINT version column, starting at 1 and incremented by every write.
    pub version_column: Ident,
    /// Counter or record table.
    pub kind: TableKind,
}

impl TableSpec {
    /// A counter table named `table` with columns `key`, `value`, `version`.
    pub fn counter(table: &str) -> Result<TableSpec> {
        Ok(TableSpec {
            table: Ident::new(table)?,
            ..TableSpec::default()
        })
    }

    /// A record table named `table` with columns `key`, the codec's columns
    /// and `version`.
    pub fn record(table: &str, codec: Arc<dyn RowCodec>) -> Result<TableSpec> {
        Ok(TableSpec {
            table: Ident::new(table)?,
            kind: TableKind::Record(codec),
            ..TableSpec::default()
        })
    }

    /// The value columns: the counter column, or the codec's columns.
    pub(crate) fn value_columns(&self) -> Vec<Column> {
        match &self.kind {
            TableKind::Counter => vec![Column {
                name: self.value_column.clone(),
                ty: SqlType::BigInt,
                nullable: false,
            }],
            TableKind::Record(codec) => codec.columns().to_vec(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let cols = self.value_columns();
        if cols.is_empty() {
            return Err(Error::Config(format!(
                "table {}: the codec has no columns",
                self.table
            )));
        }
        let mut names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        names.push(self.key_column.as_str());
        names.push(self.version_column.as_str());
        let mut lower: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        lower.sort();
        if let Some(w) = lower.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Config(format!(
                "table {}: column {} appears twice",
                self.table, w[0]
            )));
        }
        Ok(())
    }
}

impl Default for TableSpec {
    fn default() -> TableSpec {
        TableSpec {
            table: Ident::fixed("counters"),
            key_column: Ident::fixed("key"),
            value_column: Ident::fixed("value"),
            version_column: Ident::fixed("version"),
            kind: TableKind::Counter,
        }
    }
}
