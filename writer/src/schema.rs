//! Table shapes: column types, values, merge rules, key and record codecs
//! and table specs.

use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::ident::Ident;

/// A column type, mapped per backend (see [`Writer::create_tables`](crate::Writer::create_tables)):
///
/// | type | PostgreSQL | MySQL / MariaDB | SQLite |
/// |---|---|---|---|
/// | `BigInt` | `BIGINT` | `BIGINT` | `INTEGER` (`BIGINT`) |
/// | `Double` | `DOUBLE PRECISION` | `DOUBLE` | `REAL` |
/// | `Text` | `TEXT` | `LONGTEXT` (`VARCHAR(512)` in a key) | `TEXT` |
/// | `Bytes` | `BYTEA` | `LONGBLOB` (`VARBINARY(512)` in a key) | `BLOB` |
/// | `Bool` | `BOOLEAN` | `BOOLEAN` (`TINYINT(1)`) | `BOOLEAN` (integer 0/1) |
/// | `Uuid` | `UUID` | `BINARY(16)` | `BLOB` (16 bytes) |
/// | `Timestamp` | `TIMESTAMPTZ` | `DATETIME(6)` (UTC) | `INTEGER` (µs since the epoch, UTC) |
/// | `Json` | `JSONB` | `JSON` (MariaDB: `LONGTEXT` with a `JSON_VALID` check) | `TEXT` |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    /// A UUID (16 bytes).
    Uuid,
    /// A point in time, microseconds since the Unix epoch, UTC.
    Timestamp,
    /// A JSON document (text).
    Json,
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
    /// A UUID, its 16 bytes in RFC 4122 (big-endian) order.
    Uuid([u8; 16]),
    /// A timestamp: microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// A JSON document, as text.
    Json(String),
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
                | (SqlValue::Uuid(_), SqlType::Uuid)
                | (SqlValue::Timestamp(_), SqlType::Timestamp)
                | (SqlValue::Json(_), SqlType::Json)
        )
    }
}

/// How repeated writes of a column merge and reach SQL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Merge {
    /// Last write wins: `c = new` (the default).
    #[default]
    Set,
    /// The write is a delta: `c = c + Δ` (a `BIGINT NOT NULL` column).
    Counter,
}

/// A column of a data table: a key column (its `merge` is ignored) or a
/// value column of a record table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: Ident,
    /// Column type.
    pub ty: SqlType,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// How repeated writes merge.
    pub merge: Merge,
}

impl Column {
    /// A column, validating its name; `merge` is [`Merge::Set`].
    pub fn new(name: &str, ty: SqlType, nullable: bool) -> Result<Column> {
        Ok(Column {
            name: Ident::new(name)?,
            ty,
            nullable,
            merge: Merge::Set,
        })
    }

    /// A counter column: `BIGINT NOT NULL`, [`Merge::Counter`].
    pub fn counter(name: &str) -> Result<Column> {
        Ok(Column {
            name: Ident::new(name)?,
            ty: SqlType::BigInt,
            nullable: false,
            merge: Merge::Counter,
        })
    }
}

/// Maps an encoded record value (`Value::Bytes`) to columns and back. The
/// root crate implements it from the user's typed mapping; the writer only
/// sees bytes and [`SqlValue`]s.
///
/// A codec whose columns are all [`Merge::Counter`] describes a *delta
/// record*: its values are `Value::Ints` (one i64 per column, in column
/// order) and `to_row`/`from_row` are not called for them. In a record with
/// both kinds of columns, a put sets every mapped column to the value put
/// (counters included); `add` applies to delta records only.
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

/// The cache's canonical key text <-> the key columns' values.
///
/// The WAL and the in-memory state keep the key text; the writer binds the
/// values `to_sql` gives (one per key column, each fitting its column's
/// type) and turns the key columns of rows it reads back into key text with
/// `from_sql`. The two must be inverse: `from_sql(to_sql(k)?) == k`.
pub trait KeyCodec: Send + Sync + 'static {
    /// The key columns, in order (their `merge` is ignored).
    fn columns(&self) -> &[Column];
    /// Key text to one value per key column.
    fn to_sql(&self, key: &str) -> std::result::Result<Vec<SqlValue>, String>;
    /// One value per key column back to the key text.
    // The name is the API the root crate codes against.
    #[allow(clippy::wrong_self_convention)]
    fn from_sql(&self, row: Vec<SqlValue>) -> std::result::Result<String, String>;
}

/// The default key: one `TEXT` column named `key` holding the key text
/// as it is. [`TextKey::named`] names the column otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextKey;

impl TextKey {
    /// A text key in a column named `column`.
    pub fn named(column: &str) -> Result<Arc<dyn KeyCodec>> {
        Ok(Arc::new(NamedTextKey([Column::new(
            column,
            SqlType::Text,
            false,
        )?])))
    }
}

fn text_key_to_sql(key: &str) -> std::result::Result<Vec<SqlValue>, String> {
    Ok(vec![SqlValue::Text(key.to_owned())])
}

fn text_key_from_sql(mut row: Vec<SqlValue>) -> std::result::Result<String, String> {
    match (row.pop(), row.is_empty()) {
        (Some(SqlValue::Text(k)), true) => Ok(k),
        (other, _) => Err(format!("a text key column holds {other:?}")),
    }
}

impl KeyCodec for TextKey {
    fn columns(&self) -> &[Column] {
        static COLUMNS: OnceLock<[Column; 1]> = OnceLock::new();
        COLUMNS.get_or_init(|| {
            [Column {
                name: Ident::fixed("key"),
                ty: SqlType::Text,
                nullable: false,
                merge: Merge::Set,
            }]
        })
    }
    fn to_sql(&self, key: &str) -> std::result::Result<Vec<SqlValue>, String> {
        text_key_to_sql(key)
    }
    fn from_sql(&self, row: Vec<SqlValue>) -> std::result::Result<String, String> {
        text_key_from_sql(row)
    }
}

/// [`TextKey::named`].
struct NamedTextKey([Column; 1]);

impl KeyCodec for NamedTextKey {
    fn columns(&self) -> &[Column] {
        &self.0
    }
    fn to_sql(&self, key: &str) -> std::result::Result<Vec<SqlValue>, String> {
        text_key_to_sql(key)
    }
    fn from_sql(&self, row: Vec<SqlValue>) -> std::result::Result<String, String> {
        text_key_from_sql(row)
    }
}

/// What a write does when the row does not exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WriteMode {
    /// Insert the row when absent, else update the mapped columns (the default).
    #[default]
    Upsert,
    /// The row must exist: a write whose key matches no row is
    /// dead-lettered ("no row with this key") and never blocks the rest.
    UpdateOnly,
}

/// What the data table holds.
#[derive(Clone)]
pub enum TableKind {
    /// `Value::Int` counters in one BIGINT column (`value_column`).
    Counter,
    /// `Value::Bytes` records spread over the codec's columns, or, when
    /// every column is a [`Merge::Counter`], `Value::Ints` delta records.
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
///
/// Only the mapped columns (key, value columns, version) are ever written:
/// other columns of an existing table keep their values and defaults.
///
/// Without a version column (`version_column(None)`) the mapping is last
/// writer wins: puts are plain upserts of the mapped columns, deletes are
/// unconditional, and conflicts cannot happen (an `Expected` other than
/// `Any` is ignored); written outcomes carry no version.
#[derive(Clone)]
pub struct TableSpec {
    /// Table name.
    pub table: Ident,
    /// The key columns and the key text's mapping to them (default [`TextKey`]).
    pub key: Arc<dyn KeyCodec>,
    /// The counter column (used by [`TableKind::Counter`] only).
    pub value_column: Ident,
    /// The BIGINT version column, starting at 1 and incremented by every
    /// write; `None`: last writer wins, no conflicts.
    pub version_column: Option<Ident>,
    /// Upsert or update-only.
    pub mode: WriteMode,
    /// Counter or record table.
    pub kind: TableKind,
}

impl std::fmt::Debug for TableSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableSpec")
            .field("table", &self.table)
            .field("key", &self.key.columns())
            .field("value_column", &self.value_column)
            .field("version_column", &self.version_column)
            .field("mode", &self.mode)
            .field("kind", &self.kind)
            .finish()
    }
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

    /// The key columns and their codec.
    #[must_use]
    pub fn key(mut self, codec: Arc<dyn KeyCodec>) -> Self {
        self.key = codec;
        self
    }

    /// The version column; `None`: last writer wins, no conflicts.
    pub fn version_column(mut self, name: Option<&str>) -> Result<Self> {
        self.version_column = name.map(Ident::new).transpose()?;
        Ok(self)
    }

    /// Upsert (default) or update-only.
    #[must_use]
    pub fn mode(mut self, mode: WriteMode) -> Self {
        self.mode = mode;
        self
    }

    /// The value columns: the counter column, or the codec's columns.
    pub(crate) fn value_columns(&self) -> Vec<Column> {
        match &self.kind {
            TableKind::Counter => vec![Column {
                name: self.value_column.clone(),
                ty: SqlType::BigInt,
                nullable: false,
                merge: Merge::Counter,
            }],
            TableKind::Record(codec) => codec.columns().to_vec(),
        }
    }

    /// A record table whose columns are all counters: its values are
    /// `Value::Ints` and `Change::AddCols` applies to it.
    pub fn is_delta_record(&self) -> bool {
        match &self.kind {
            TableKind::Counter => false,
            TableKind::Record(codec) => {
                !codec.columns().is_empty()
                    && codec.columns().iter().all(|c| c.merge == Merge::Counter)
            }
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
        let keys = self.key.columns();
        if keys.is_empty() {
            return Err(Error::Config(format!(
                "table {}: the key codec has no columns",
                self.table
            )));
        }
        for c in &cols {
            if c.merge == Merge::Counter && (c.ty != SqlType::BigInt || c.nullable) {
                return Err(Error::Config(format!(
                    "table {}: counter column {} must be a BIGINT NOT NULL",
                    self.table, c.name
                )));
            }
        }
        let mut names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        names.extend(keys.iter().map(|c| c.name.as_str()));
        if let Some(v) = &self.version_column {
            names.push(v.as_str());
        }
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
            key: Arc::new(TextKey),
            value_column: Ident::fixed("value"),
            version_column: Some(Ident::fixed("version")),
            mode: WriteMode::Upsert,
            kind: TableKind::Counter,
        }
    }
}
