//! `#[derive(Record)]` for [writebehind](https://docs.rs/writebehind): a Rust
//! struct mapped onto the columns of a user's SQL table.
//!
//! Use it through the `writebehind` crate, which re-exports it under the
//! trait's own name (as serde does): `use writebehind::Record;` imports both
//! the trait and the derive. The attributes are documented on
//! [`Record`](derive@Record).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use writebehind::{Merge, Record, SqlType, SqlValue, WriteMode};
//!
//! /// Two counters of an existing `posts(id BIGINT PRIMARY KEY, title TEXT,
//! /// views BIGINT, likes BIGINT)` table: a delta record, added per column.
//! #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Record)]
//! #[writebehind(table = "posts", key(id), update_only)]
//! struct PostCounters {
//!     #[writebehind(counter)]
//!     views: i64,
//!     #[writebehind(counter)]
//!     likes: i64,
//! }
//!
//! let columns = PostCounters::columns();
//! assert_eq!(columns[0].name.as_str(), "views");
//! assert_eq!(columns[0].ty, SqlType::BigInt);
//! assert!(matches!(columns[1].merge, Merge::Counter));
//!
//! let mapping = PostCounters::mapping();
//! assert_eq!(mapping.table.as_deref(), Some("posts"));
//! assert_eq!(mapping.key_columns, ["id"]);
//! assert_eq!(mapping.version_column, None);
//! assert!(matches!(mapping.mode, WriteMode::UpdateOnly));
//!
//! let one_view = PostCounters { views: 1, likes: 0 };
//! assert_eq!(one_view.to_row(), [SqlValue::Int(1), SqlValue::Int(0)]);
//! assert_eq!(PostCounters::from_row(one_view.to_row()), Ok(one_view));
//! ```
//!
//! The generated code calls only `writebehind::__private` (hidden, not a
//! public API): the conversions of `uuid`, `time`, `chrono` and `serde_json`
//! types live there, behind the `writebehind` features of those names.

mod attr;
mod case;
mod expand;
mod model;
mod ty;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Implements `writebehind::Record` for a struct with named fields: each
/// field is a column of the user's table, in declaration order.
///
/// The record holds the table's *value* columns. The key columns' values
/// come from the cache's key (`cache.put(&post_id, post)`), and the version
/// column is the cache's: neither is a field of the record (a field that
/// maps to a key or the version column is a compile error; mark it
/// `#[writebehind(skip)]` if the struct must carry it). Columns of the table
/// that no field maps to are never written.
///
/// # Struct attributes: `#[writebehind(...)]`
///
/// | attribute | meaning | absent |
/// |---|---|---|
/// | `key(id)`, `key(tenant, id)` | the key column names, in the order of the cache key's components (a tuple key for several). Required. Taken as written: `rename_all` does not apply | compile error |
/// | `table = "posts"` | the table | the table the builder names |
/// | `version = "version"` | an integer version column: puts and deletes are version-checked | no version column: last writer wins, no conflicts |
/// | `update_only` | the row must exist: a key with no row is dead-lettered ("no row with this key") | upsert: insert the row when absent |
/// | `rename_all = "..."` | field name → column name: `snake_case`, `camelCase`, `PascalCase`, `SCREAMING_SNAKE_CASE`, `lowercase`, `UPPERCASE` (serde's rules; `kebab-case` is refused: `-` is not in an SQL identifier) | the field name |
/// | `crate = "path"` | where `writebehind` is, for a crate that re-exports it | `::writebehind` |
///
/// # Field attributes
///
/// | attribute | meaning |
/// |---|---|
/// | `column = "like_count"` | the column name (wins over `rename_all`) |
/// | `counter` | the write is a delta: `likes = likes + Δ`. An integer field, not an `Option` (a signed one if deltas can be negative) |
/// | `set` | last write wins (the default) |
/// | `skip` | not a column: `from_row` fills it with `Default::default()` |
///
/// A record whose columns are all counters is a *delta record*:
/// `cache.add(&key, record)` adds it per column.
///
/// Every name (table, key, version and column names) must be a plain SQL
/// identifier (`[A-Za-z_][A-Za-z0-9_]{0,62}`), checked at compile time.
///
/// # Field types
///
/// | Rust type | column type |
/// |---|---|
/// | `i8`, `i16`, `i32`, `i64`, `u8`, `u16`, `u32` | BIGINT |
/// | `f32`, `f64` | DOUBLE |
/// | `bool` | BOOL |
/// | `String` | TEXT |
/// | `Vec<u8>` | BYTES |
/// | `uuid::Uuid` (feature `uuid`) | UUID |
/// | `time::OffsetDateTime` (feature `time`), `chrono::DateTime<Utc>` (feature `chrono`) | TIMESTAMP (UTC, microseconds) |
/// | `serde_json::Value` (feature `json`) | JSON |
/// | `Option<T>` of one of these | the same, nullable |
///
/// A `serde_json::Value` field needs `#[serde(with = "...")]` that writes
/// it as text (the derive refuses it otherwise): the cache keeps records in
/// a binary log (bincode), which cannot read a `serde_json::Value` back.
///
/// The type is read from its path (`uuid::Uuid` or an imported `Uuid`); a
/// type alias or a newtype is not recognised. `u64` is refused (it does not
/// fit a BIGINT), and so is any other type, with the list above.
///
/// `from_row` returns `Err` naming the column when a value has the wrong
/// type, is out of the field's range, or is NULL in a field that is not an
/// `Option`.
#[proc_macro_derive(Record, attributes(writebehind))]
pub fn derive_record(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match model::build(&input) {
        Ok(model) => expand::expand(&input, &model).into(),
        Err(e) => e.to_compile_error().into(),
    }
}
