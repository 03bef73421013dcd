//! Values: counters (`i64`) and records (the user's serde types mapped to
//! the columns of a table), and how a record maps onto its table.

use std::any::TypeId;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde::Serialize;
use writebehind_core::{Change, Value};
use writebehind_wal::codec;
use writebehind_writer::{Column, Merge, RowCodec, SqlValue, TableKind, WriteMode};

use crate::{Error, Result};

/// A type the cache can hold. Implemented for `i64` (counters, stored in the
/// built-in counter table) and for every [`Record`].
pub trait CacheValue: Clone + Send + Sync + 'static {
    /// Converts to the cache's value representation.
    fn to_value(&self) -> Result<Value>;
    /// Converts back from the cache's value representation.
    fn from_value(value: &Value) -> Result<Self>;
    /// The kind of table this type is flushed to.
    fn table_kind() -> TableKind;
    /// How this type maps onto its table; `None` for the built-in counter
    /// table (`key TEXT`, `value`, `version`). A [`Record`] answers its
    /// [`Record::mapping`].
    fn table_mapping() -> Option<Mapping> {
        None
    }
}

impl CacheValue for i64 {
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Int(*self))
    }

    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Int(n) => Ok(*n),
            _ => Err(Error::Codec("expected a counter, found a record".into())),
        }
    }

    fn table_kind() -> TableKind {
        TableKind::Counter
    }
}

/// A value that [`add`](crate::WriteBehind::add) can add: an `i64` counter
/// delta, or a *delta record* (a [`Record`] whose columns are all
/// [`Merge::Counter`]), whose fields are added per column.
///
/// `add` of a record that has a [`Merge::Set`] column is refused with
/// [`Error::Config`] before anything is written.
pub trait Delta: CacheValue {
    /// This delta as the change the cache logs and coalesces.
    fn to_change(&self) -> Result<Change>;
}

impl Delta for i64 {
    fn to_change(&self) -> Result<Change> {
        Ok(Change::Add(*self))
    }
}

impl<T: Record> Delta for T {
    fn to_change(&self) -> Result<Change> {
        match delta_columns::<T>() {
            Some(_) => Ok(Change::AddCols(ints(self)?)),
            None => Err(Error::Config(format!(
                "add() needs a delta record (every column a counter), and {} has columns that are not counters: use put()",
                std::any::type_name::<T>()
            ))),
        }
    }
}

/// A record stored in a table's columns: the user's serde type, mapped
/// field by field.
///
/// The record is kept in the WAL in its serde encoding (a delta record: as
/// its column values), and written to SQL through [`Record::to_row`] (one
/// [`SqlValue`] per column of [`Record::columns`], in order). The key and
/// version columns are named by [`Record::mapping`], not part of `columns`.
/// Only these columns are ever written: the table's other columns keep
/// their values and defaults.
///
/// `#[derive(Record)]` writes this impl; by hand it reads like this (a
/// *delta record*: every column is a counter, so
/// [`add`](crate::WriteBehind::add) adds it per column):
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use writebehind::{Column, Mapping, Record, SqlValue};
///
/// #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
/// struct PostCounters {
///     views: i64,
///     likes: i64,
/// }
///
/// impl Record for PostCounters {
///     fn columns() -> Vec<Column> {
///         vec![Column::counter("views").unwrap(), Column::counter("likes").unwrap()]
///     }
///     fn to_row(&self) -> Vec<SqlValue> {
///         vec![SqlValue::Int(self.views), SqlValue::Int(self.likes)]
///     }
///     fn from_row(row: Vec<SqlValue>) -> Result<Self, String> {
///         match row.as_slice() {
///             [SqlValue::Int(views), SqlValue::Int(likes)] => {
///                 Ok(PostCounters { views: *views, likes: *likes })
///             }
///             other => Err(format!("unexpected row {other:?}")),
///         }
///     }
///     fn mapping() -> Mapping {
///         Mapping::new().table("posts").key_columns(&["id"]).version_column(None)
///     }
/// }
/// ```
pub trait Record: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The value columns, in order.
    fn columns() -> Vec<Column>;
    /// This record as one value per column.
    fn to_row(&self) -> Vec<SqlValue>;
    /// A record from one value per column.
    fn from_row(row: Vec<SqlValue>) -> std::result::Result<Self, String>;
    /// Where the record lives: table, key columns, version column, write
    /// mode. Default: [`Mapping::default`] (the builder's table, key column
    /// `key`, version column `version`, upsert).
    fn mapping() -> Mapping {
        Mapping::default()
    }
}

/// How a [`Record`] maps onto its table, beside its value columns.
///
/// ```
/// use writebehind::{Mapping, WriteMode};
///
/// let m = Mapping::new()
///     .table("posts")
///     .key_columns(&["id"])
///     .version_column(None)
///     .mode(WriteMode::UpdateOnly);
/// assert_eq!(m.table.as_deref(), Some("posts"));
/// assert_eq!(m.key_columns, ["id"]);
/// ```
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct Mapping {
    /// The table; `None`: the builder's [`table`](crate::Builder::table).
    /// When set, it wins over the builder's.
    pub table: Option<String>,
    /// The key columns, in the order of the key type's
    /// [`key_types`](crate::CacheKey::key_types) (its number of columns
    /// must match, checked at open). Default: `["key"]`.
    pub key_columns: Vec<String>,
    /// The integer version column: with one, puts and deletes are
    /// version-checked (a changed row is a conflict); `None`: last writer
    /// wins, conflicts cannot happen. Default: `Some("version")`.
    pub version_column: Option<String>,
    /// Upsert (insert the row when absent) or update-only (the row must
    /// exist; a key with no row is dead-lettered). Default: upsert.
    pub mode: WriteMode,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            table: None,
            key_columns: vec!["key".into()],
            version_column: Some("version".into()),
            mode: WriteMode::Upsert,
        }
    }
}

impl Mapping {
    /// [`Mapping::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The table.
    #[must_use]
    pub fn table(mut self, table: &str) -> Self {
        self.table = Some(table.to_owned());
        self
    }

    /// The key columns, in the key type's order.
    #[must_use]
    pub fn key_columns(mut self, columns: &[&str]) -> Self {
        self.key_columns = columns.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// The version column; `None`: last writer wins.
    #[must_use]
    pub fn version_column(mut self, column: Option<&str>) -> Self {
        self.version_column = column.map(str::to_owned);
        self
    }

    /// Upsert or update-only.
    #[must_use]
    pub fn mode(mut self, mode: WriteMode) -> Self {
        self.mode = mode;
        self
    }
}

/// For a delta record type (every column a counter), its column count;
/// `None` otherwise. Asked once per type (writes ask on every call).
fn delta_columns<T: Record>() -> Option<usize> {
    static KNOWN: OnceLock<RwLock<HashMap<TypeId, Option<usize>>>> = OnceLock::new();
    let known = KNOWN.get_or_init(RwLock::default);
    let id = TypeId::of::<T>();
    if let Some(n) = known.read().get(&id) {
        return *n;
    }
    let columns = T::columns();
    let n = (!columns.is_empty() && columns.iter().all(|c| c.merge == Merge::Counter))
        .then_some(columns.len());
    known.write().insert(id, n);
    n
}

/// A delta record's columns as integers.
fn ints<T: Record>(record: &T) -> Result<Arc<[i64]>> {
    record
        .to_row()
        .into_iter()
        .map(|v| match v {
            SqlValue::Int(n) => Ok(n),
            other => Err(Error::Codec(format!(
                "a counter column of {} holds {other:?}, not an integer",
                std::any::type_name::<T>()
            ))),
        })
        .collect()
}

impl<T: Record> CacheValue for T {
    fn to_value(&self) -> Result<Value> {
        if delta_columns::<T>().is_some() {
            return Ok(Value::Ints(ints(self)?));
        }
        let bytes = codec::encode(self).map_err(|e| Error::Codec(e.to_string()))?;
        Ok(Value::Bytes(Arc::from(bytes)))
    }

    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Bytes(b) => codec::decode(b).map_err(|e| Error::Codec(e.to_string())),
            Value::Ints(cols) => {
                T::from_row(cols.iter().map(|n| SqlValue::Int(*n)).collect()).map_err(Error::Codec)
            }
            Value::Int(_) => Err(Error::Codec("expected a record, found a counter".into())),
        }
    }

    fn table_kind() -> TableKind {
        TableKind::Record(Arc::new(RecordCodec::<T>::new()))
    }

    fn table_mapping() -> Option<Mapping> {
        Some(T::mapping())
    }
}

/// Adapts a [`Record`] type to the writer's byte-level [`RowCodec`].
struct RecordCodec<T> {
    columns: Vec<Column>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Record> RecordCodec<T> {
    fn new() -> Self {
        Self {
            columns: T::columns(),
            _t: PhantomData,
        }
    }
}

impl<T: Record> RowCodec for RecordCodec<T> {
    fn columns(&self) -> &[Column] {
        &self.columns
    }

    fn to_row(&self, value: &[u8]) -> std::result::Result<Vec<SqlValue>, String> {
        let record: T = codec::decode(value).map_err(|e| e.to_string())?;
        Ok(record.to_row())
    }

    fn from_row(&self, row: Vec<SqlValue>) -> std::result::Result<Vec<u8>, String> {
        let record = T::from_row(row)?;
        codec::encode(&record).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde::Deserialize;

    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Pair {
        a: i64,
        b: i64,
    }

    impl Record for Pair {
        fn columns() -> Vec<Column> {
            vec![Column::counter("a").unwrap(), Column::counter("b").unwrap()]
        }
        fn to_row(&self) -> Vec<SqlValue> {
            vec![SqlValue::Int(self.a), SqlValue::Int(self.b)]
        }
        fn from_row(row: Vec<SqlValue>) -> std::result::Result<Self, String> {
            match row.as_slice() {
                [SqlValue::Int(a), SqlValue::Int(b)] => Ok(Pair { a: *a, b: *b }),
                other => Err(format!("{other:?}")),
            }
        }
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Named {
        name: String,
        n: i64,
    }

    impl Record for Named {
        fn columns() -> Vec<Column> {
            vec![
                Column::new("name", writebehind_writer::SqlType::Text, false).unwrap(),
                Column::counter("n").unwrap(),
            ]
        }
        fn to_row(&self) -> Vec<SqlValue> {
            vec![SqlValue::Text(self.name.clone()), SqlValue::Int(self.n)]
        }
        fn from_row(_: Vec<SqlValue>) -> std::result::Result<Self, String> {
            Err("unused".into())
        }
        fn mapping() -> Mapping {
            Mapping::new().table("named").mode(WriteMode::UpdateOnly)
        }
    }

    #[test]
    fn a_delta_record_is_ints_and_adds_per_column() {
        let p = Pair { a: 3, b: -4 };
        let v = p.to_value().unwrap();
        assert_eq!(v, Value::Ints(Arc::from(&[3i64, -4][..])));
        assert_eq!(Pair::from_value(&v).unwrap(), p);
        assert_eq!(
            p.to_change().unwrap(),
            Change::AddCols(Arc::from(&[3i64, -4][..]))
        );
        assert_eq!(5i64.to_change().unwrap(), Change::Add(5));
        assert!(Pair::from_value(&Value::Int(1)).is_err());
        assert!(i64::from_value(&v).is_err());
    }

    #[test]
    fn a_record_with_set_columns_is_bytes_and_refuses_add() {
        let r = Named {
            name: "x".into(),
            n: 1,
        };
        assert!(matches!(r.to_value().unwrap(), Value::Bytes(_)));
        assert!(matches!(r.to_change(), Err(Error::Config(_))));
    }

    #[test]
    fn mappings_default_to_todays_shape_and_records_answer_theirs() {
        let m = Mapping::default();
        assert_eq!(m.table, None);
        assert_eq!(m.key_columns, ["key"]);
        assert_eq!(m.version_column.as_deref(), Some("version"));
        assert_eq!(m.mode, WriteMode::Upsert);
        assert!(i64::table_mapping().is_none());
        let named = Named::table_mapping().unwrap();
        assert_eq!(named.table.as_deref(), Some("named"));
        assert_eq!(named.mode, WriteMode::UpdateOnly);
        assert_eq!(Pair::table_mapping().unwrap().key_columns, ["key"]);
    }
}
