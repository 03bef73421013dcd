//! The writer's key codec for a key type: key text to native key columns and back.

use std::marker::PhantomData;

use writebehind_writer::{Column, KeyCodec, SqlValue};

use crate::{Error, Result};

use super::CacheKey;

/// The writer's [`KeyCodec`] for the key type `K`: the key text to `K`'s
/// native key columns (named by the mapping) and back.
///
/// Strict: a text that is not the canonical text of a `K` (`"042"` for an
/// integer key, uppercase hex) is refused, as is a value its column cannot
/// hold (a `u64` past `i64::MAX`), so one row is never two cache entries;
/// the write path asks this before a write reaches the WAL.
pub(crate) struct TypedKey<K> {
    columns: Vec<Column>,
    _key: PhantomData<fn() -> K>,
}

impl<K: CacheKey> TypedKey<K> {
    /// The codec for `K` in the columns `names` of `table`; their number
    /// must be `K`'s number of key columns.
    pub(crate) fn new(table: &str, names: &[String]) -> Result<Self> {
        let types = K::key_types();
        if names.len() != types.len() {
            return Err(Error::Config(format!(
                "table {table}: the mapping names {} key column(s) ({}), but the key type {} has {} ({})",
                names.len(),
                names.join(", "),
                std::any::type_name::<K>(),
                types.len(),
                types
                    .iter()
                    .map(|t| format!("{t:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let columns = names
            .iter()
            .zip(types)
            .map(|(name, ty)| Column::new(name, ty, false))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self {
            columns,
            _key: PhantomData,
        })
    }
}

impl<K: CacheKey> KeyCodec for TypedKey<K> {
    fn columns(&self) -> &[Column] {
        &self.columns
    }

    fn to_sql(&self, text: &str) -> std::result::Result<Vec<SqlValue>, String> {
        let key = K::from_key_text(text).map_err(|e| e.to_string())?;
        let canonical = key.key_text();
        if canonical != text {
            return Err(format!(
                "{text:?} is not the canonical text of a {} key (that is {canonical:?})",
                std::any::type_name::<K>()
            ));
        }
        let row = key.to_key_row();
        for (value, column) in row.iter().zip(&self.columns) {
            if !value.fits(column.ty) {
                return Err(format!(
                    "{value:?} does not fit the {:?} key column {}",
                    column.ty, column.name
                ));
            }
        }
        Ok(row)
    }

    fn from_sql(&self, row: Vec<SqlValue>) -> std::result::Result<String, String> {
        Ok(K::from_key_row(row)?.key_text().into_owned())
    }
}
