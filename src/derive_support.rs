//! What `#[derive(Record)]` generates code against (`writebehind::__private`).
//!
//! Not a public API: names here change with the derive, in the same release.
//! The generated code reaches everything through this module, so a user's
//! crate needs no dependency on `uuid`, `time`, `chrono` or `serde_json` of
//! its own beyond the types its fields use, and no name of the user's (a
//! `Result` alias, say) can capture what the derive writes.
//!
//! Conversions:
//!
//! | Rust | SQL value | read back from |
//! |---|---|---|
//! | i8..i64, u8..u32 | `Int` | `Int` in the type's range |
//! | f32, f64 | `Float` | `Float`, `Int` |
//! | bool | `Bool` | `Bool`, `Int` 0 or 1 |
//! | String | `Text` | `Text` |
//! | `Vec<u8>` | `Bytes` | `Bytes` |
//! | `uuid::Uuid` | `Uuid` | `Uuid`, 16 `Bytes`, `Text` |
//! | `time::OffsetDateTime`, `chrono::DateTime<Utc>` | `Timestamp` (µs, UTC; finer digits are dropped) | `Timestamp`, `Int` |
//! | `serde_json::Value` | `Json` | `Json`, `Text` |
//! | `Option<T>` | `Null` or `T`'s | `Null` or `T`'s |
//!
//! The extra "read back from" forms are what a backend without the native
//! type may hand back (SQLite has no UUID, timestamp or JSON type). A
//! mismatch is an `Err` naming the column and both types; NULL in a field
//! that is not an `Option` is one too.

pub use crate::{Mapping, Record};
pub use std::default::Default;
pub use std::option::Option;
pub use std::result::Result;
pub use std::string::String;
pub use std::vec::Vec;
pub use writebehind_writer::{Column, Merge, SqlType, SqlValue, WriteMode};

/// A Rust type that is one column.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a column type of #[derive(Record)]",
    label = "not a column type",
    note = "uuid::Uuid, time::OffsetDateTime, chrono::DateTime<Utc> and serde_json::Value \
            need the writebehind features `uuid`, `time`, `chrono` and `json`"
)]
pub trait Field: Sized {
    /// The column's type.
    const SQL_TYPE: SqlType;
    /// Whether the column takes NULL (`Option<T>`).
    const NULLABLE: bool = false;
    /// This value for SQL.
    fn to_sql(&self) -> SqlValue;
    /// A value from SQL; the error says what was wrong, without the column
    /// name (the caller adds it).
    fn from_sql(value: SqlValue) -> Result<Self, String>;
}

/// An integer type a `counter` column can have.
pub trait Counter: Field {}

/// The (set) column `name` of a field of type `T`.
pub fn column<T: Field>(name: &'static str) -> Column {
    // The derive checked the name with the same rule at compile time.
    Column::new(name, T::SQL_TYPE, T::NULLABLE)
        .unwrap_or_else(|e| unreachable!("#[derive(Record)] checked the column name: {e}"))
}

/// The counter column `name` of a field of type `T`.
pub fn counter_column<T: Counter>(name: &'static str) -> Column {
    Column::counter(name)
        .unwrap_or_else(|e| unreachable!("#[derive(Record)] checked the column name: {e}"))
}

/// The mapping of a derived record.
pub fn mapping(
    table: Option<&str>,
    key: &[&str],
    version: Option<&str>,
    update_only: bool,
) -> Mapping {
    let mode = if update_only {
        WriteMode::UpdateOnly
    } else {
        WriteMode::Upsert
    };
    let mapping = Mapping::new()
        .key_columns(key)
        .version_column(version)
        .mode(mode);
    match table {
        Some(table) => mapping.table(table),
        None => mapping,
    }
}

/// Reads one row's values into fields, in column order.
pub struct Row {
    values: std::vec::IntoIter<SqlValue>,
    names: &'static [&'static str],
    next: usize,
}

impl Row {
    /// A row that must hold one value per name in `names`.
    pub fn new(row: Vec<SqlValue>, names: &'static [&'static str]) -> Result<Row, String> {
        if row.len() != names.len() {
            return Err(format!(
                "expected {} columns ({}), found {}",
                names.len(),
                names.join(", "),
                row.len()
            ));
        }
        Ok(Row {
            values: row.into_iter(),
            names,
            next: 0,
        })
    }

    /// The next column's value as a `T`.
    pub fn take<T: Field>(&mut self) -> Result<T, String> {
        let name = self.names.get(self.next).copied().unwrap_or("?");
        self.next += 1;
        let value = self
            .values
            .next()
            .ok_or_else(|| format!("column `{name}`: no value"))?;
        T::from_sql(value).map_err(|why| format!("column `{name}`: {why}"))
    }
}

/// The SQL type name of a value, for messages.
fn found(value: &SqlValue) -> &'static str {
    match value {
        SqlValue::Null => "NULL",
        SqlValue::Int(_) => "BIGINT",
        SqlValue::Float(_) => "DOUBLE",
        SqlValue::Text(_) => "TEXT",
        SqlValue::Bytes(_) => "BYTES",
        SqlValue::Bool(_) => "BOOL",
        SqlValue::Uuid(_) => "UUID",
        SqlValue::Timestamp(_) => "TIMESTAMP",
        SqlValue::Json(_) => "JSON",
    }
}

fn mismatch<T>(expected: &str, value: &SqlValue) -> Result<T, String> {
    match value {
        SqlValue::Null => Err(format!(
            "NULL in a field that is not an Option (a {expected} column)"
        )),
        other => Err(format!("expected {expected}, found {}", found(other))),
    }
}

impl<T: Field> Field for Option<T> {
    const SQL_TYPE: SqlType = T::SQL_TYPE;
    const NULLABLE: bool = true;

    fn to_sql(&self) -> SqlValue {
        match self {
            Some(v) => v.to_sql(),
            None => SqlValue::Null,
        }
    }

    fn from_sql(value: SqlValue) -> Result<Self, String> {
        match value {
            SqlValue::Null => Ok(None),
            other => T::from_sql(other).map(Some),
        }
    }
}

macro_rules! int_fields {
    ($($t:ty),*) => {$(
        impl Field for $t {
            const SQL_TYPE: SqlType = SqlType::BigInt;

            fn to_sql(&self) -> SqlValue {
                SqlValue::Int(i64::from(*self))
            }

            fn from_sql(value: SqlValue) -> Result<Self, String> {
                match value {
                    SqlValue::Int(n) => <$t>::try_from(n).map_err(|_| {
                        format!("{n} is out of the range of {}", stringify!($t))
                    }),
                    other => mismatch("BIGINT", &other),
                }
            }
        }

        impl Counter for $t {}
    )*};
}

int_fields!(i8, i16, i32, i64, u8, u16, u32);

impl Field for f64 {
    const SQL_TYPE: SqlType = SqlType::Double;

    fn to_sql(&self) -> SqlValue {
        SqlValue::Float(*self)
    }

    fn from_sql(value: SqlValue) -> Result<Self, String> {
        match value {
            SqlValue::Float(x) => Ok(x),
            // A REAL column may hand back an integral value as an integer.
            SqlValue::Int(n) => Ok(n as f64),
            other => mismatch("DOUBLE", &other),
        }
    }
}

impl Field for f32 {
    const SQL_TYPE: SqlType = SqlType::Double;

    fn to_sql(&self) -> SqlValue {
        SqlValue::Float(f64::from(*self))
    }

    fn from_sql(value: SqlValue) -> Result<Self, String> {
        // f64 -> f32 rounds to the nearest f32: what was written as an f32
        // comes back exactly.
        f64::from_sql(value).map(|x| x as f32)
    }
}

impl Field for bool {
    const SQL_TYPE: SqlType = SqlType::Bool;

    fn to_sql(&self) -> SqlValue {
        SqlValue::Bool(*self)
    }

    fn from_sql(value: SqlValue) -> Result<Self, String> {
        match value {
            SqlValue::Bool(b) => Ok(b),
            SqlValue::Int(0) => Ok(false),
            SqlValue::Int(1) => Ok(true),
            SqlValue::Int(n) => Err(format!("expected BOOL, found the integer {n}")),
            other => mismatch("BOOL", &other),
        }
    }
}

impl Field for String {
    const SQL_TYPE: SqlType = SqlType::Text;

    fn to_sql(&self) -> SqlValue {
        SqlValue::Text(self.clone())
    }

    fn from_sql(value: SqlValue) -> Result<Self, String> {
        match value {
            SqlValue::Text(s) => Ok(s),
            other => mismatch("TEXT", &other),
        }
    }
}

impl Field for Vec<u8> {
    const SQL_TYPE: SqlType = SqlType::Bytes;

    fn to_sql(&self) -> SqlValue {
        SqlValue::Bytes(self.clone())
    }

    fn from_sql(value: SqlValue) -> Result<Self, String> {
        match value {
            SqlValue::Bytes(b) => Ok(b),
            other => mismatch("BYTES", &other),
        }
    }
}

#[cfg(feature = "uuid")]
impl Field for uuid::Uuid {
    const SQL_TYPE: SqlType = SqlType::Uuid;

    fn to_sql(&self) -> SqlValue {
        SqlValue::Uuid(*self.as_bytes())
    }

    fn from_sql(value: SqlValue) -> Result<Self, String> {
        match value {
            SqlValue::Uuid(b) => Ok(uuid::Uuid::from_bytes(b)),
            SqlValue::Bytes(b) => uuid::Uuid::from_slice(&b)
                .map_err(|_| format!("expected UUID, found {} bytes", b.len())),
            SqlValue::Text(s) => uuid::Uuid::parse_str(&s)
                .map_err(|e| format!("expected UUID, found text that is not one ({e})")),
            other => mismatch("UUID", &other),
        }
    }
}

/// Microseconds since the epoch of a `Timestamp` (or of an integer, as
/// SQLite keeps it).
#[cfg(any(feature = "time", feature = "chrono"))]
fn micros(value: SqlValue) -> Result<i64, String> {
    match value {
        SqlValue::Timestamp(us) | SqlValue::Int(us) => Ok(us),
        other => mismatch("TIMESTAMP", &other),
    }
}

#[cfg(feature = "time")]
impl Field for time::OffsetDateTime {
    const SQL_TYPE: SqlType = SqlType::Timestamp;

    fn to_sql(&self) -> SqlValue {
        // Floor to the microsecond (towards the past, also before 1970).
        let us = self.unix_timestamp_nanos().div_euclid(1000);
        // Every OffsetDateTime (years -9999..=9999) is within ±2^59 µs.
        SqlValue::Timestamp(i64::try_from(us).unwrap_or(if us < 0 { i64::MIN } else { i64::MAX }))
    }

    fn from_sql(value: SqlValue) -> Result<Self, String> {
        let us = micros(value)?;
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
            .map_err(|_| format!("the timestamp {us} µs is out of time::OffsetDateTime's range"))
    }
}

#[cfg(feature = "chrono")]
impl Field for chrono::DateTime<chrono::Utc> {
    const SQL_TYPE: SqlType = SqlType::Timestamp;

    fn to_sql(&self) -> SqlValue {
        // Floor to the microsecond; None only past ±262,000 years.
        SqlValue::Timestamp(self.timestamp_micros())
    }

    fn from_sql(value: SqlValue) -> Result<Self, String> {
        let us = micros(value)?;
        chrono::DateTime::from_timestamp_micros(us)
            .ok_or_else(|| format!("the timestamp {us} µs is out of chrono::DateTime's range"))
    }
}

#[cfg(feature = "json")]
impl Field for serde_json::Value {
    const SQL_TYPE: SqlType = SqlType::Json;

    fn to_sql(&self) -> SqlValue {
        SqlValue::Json(self.to_string())
    }

    fn from_sql(value: SqlValue) -> Result<Self, String> {
        match value {
            SqlValue::Json(s) | SqlValue::Text(s) => {
                serde_json::from_str(&s).map_err(|e| format!("invalid JSON: {e}"))
            }
            other => mismatch("JSON", &other),
        }
    }
}

/// `#[serde(with = "...")]` for a `serde_json::Value` field of a record:
/// the document as JSON text. The cache's log is bincode, which cannot read
/// a `serde_json::Value` back (it needs `deserialize_any`); as text it can.
/// The derive refuses a JSON field without a `with` of its own.
#[cfg(feature = "json")]
pub mod json_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Something `json_text` can carry: `serde_json::Value` or an `Option` of one.
    pub trait Text: Sized {
        /// As JSON text (`None`: absent).
        fn to_text(&self) -> Option<String>;
        /// From JSON text.
        fn from_text(text: Option<String>) -> Result<Self, String>;
    }

    impl Text for serde_json::Value {
        fn to_text(&self) -> Option<String> {
            Some(self.to_string())
        }

        fn from_text(text: Option<String>) -> Result<Self, String> {
            let text = text.ok_or("a JSON field holds no document")?;
            serde_json::from_str(&text).map_err(|e| e.to_string())
        }
    }

    impl Text for Option<serde_json::Value> {
        fn to_text(&self) -> Option<String> {
            self.as_ref().map(ToString::to_string)
        }

        fn from_text(text: Option<String>) -> Result<Self, String> {
            text.map(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
                .transpose()
        }
    }

    /// Serializes the document as text.
    pub fn serialize<T: Text, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        value.to_text().serialize(s)
    }

    /// Deserializes the document from text.
    pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        T::from_text(Option::<String>::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::{Field, Row, SqlValue};

    #[test]
    fn integers_check_their_range_and_name_the_column() {
        let mut row =
            Row::new(vec![SqlValue::Int(300)], &["stock"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            row.take::<u8>(),
            Err("column `stock`: 300 is out of the range of u8".to_owned())
        );
        assert_eq!(i32::from_sql(SqlValue::Int(-5)), Ok(-5));
        assert_eq!(
            i64::from_sql(SqlValue::Text("5".into())),
            Err("expected BIGINT, found TEXT".to_owned())
        );
    }

    #[test]
    fn null_in_a_plain_field_is_an_error_and_none_in_an_option() {
        assert!(String::from_sql(SqlValue::Null).is_err_and(|e| e.contains("not an Option")));
        assert_eq!(Option::<String>::from_sql(SqlValue::Null), Ok(None));
        assert_eq!(None::<i64>.to_sql(), SqlValue::Null);
        assert_eq!(Some(3_i64).to_sql(), SqlValue::Int(3));
    }

    #[test]
    fn a_row_of_the_wrong_length_is_refused() {
        let e = Row::new(vec![SqlValue::Int(1)], &["a", "b"]).err();
        assert_eq!(e.as_deref(), Some("expected 2 columns (a, b), found 1"));
    }

    #[test]
    fn lenient_reads_of_backends_without_the_type() {
        assert_eq!(bool::from_sql(SqlValue::Int(1)), Ok(true));
        assert!(bool::from_sql(SqlValue::Int(2)).is_err());
        assert_eq!(f64::from_sql(SqlValue::Int(2)), Ok(2.0));
        assert_eq!(f32::from_sql(0.1_f32.to_sql()), Ok(0.1_f32));
    }
}
