//! Values: counters (`i64`) and records (the user's serde types mapped to columns).

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use writebehind_core::Value;
use writebehind_wal::codec;
use writebehind_writer::{Column, RowCodec, SqlValue, TableKind};

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
}

impl CacheValue for i64 {
    fn to_value(&self) -> Result<Value> {
        Ok(Value::Int(*self))
    }

    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Int(n) => Ok(*n),
            Value::Bytes(_) => Err(Error::Codec("expected a counter, found a record".into())),
        }
    }

    fn table_kind() -> TableKind {
        TableKind::Counter
    }
}

/// A record type stored in a table of the user's own columns.
///
/// The record is kept in the WAL in its serde encoding, and written to SQL
/// through [`Record::to_row`] (one [`SqlValue`] per column of
/// [`Record::columns`], in order). The key and version columns are the
/// cache's, not part of `columns`.
pub trait Record: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The value columns, in order.
    fn columns() -> Vec<Column>;
    /// This record as one value per column.
    fn to_row(&self) -> Vec<SqlValue>;
    /// A record from one value per column.
    fn from_row(row: Vec<SqlValue>) -> std::result::Result<Self, String>;
}

impl<T: Record> CacheValue for T {
    fn to_value(&self) -> Result<Value> {
        let bytes = codec::encode(self).map_err(|e| Error::Codec(e.to_string()))?;
        Ok(Value::Bytes(Arc::from(bytes)))
    }

    fn from_value(value: &Value) -> Result<Self> {
        match value {
            Value::Bytes(b) => codec::decode(b).map_err(|e| Error::Codec(e.to_string())),
            Value::Int(_) => Err(Error::Codec("expected a record, found a counter".into())),
        }
    }

    fn table_kind() -> TableKind {
        TableKind::Record(Arc::new(RecordCodec::<T>::new()))
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
