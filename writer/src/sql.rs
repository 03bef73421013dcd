//! SQL text per backend. Identifiers come only from [`Ident`] (quoted);
//! every value is a bind parameter. [`text`] is the one place that hands
//! dynamic SQL to sqlx.
//!
//! This file: the shared pieces (placeholders, bind values, the quoted
//! names, key filters). Statements by job: `write.rs` (upserts, updates,
//! deletes), `read.rs` (read-back, row reads, pages), `bookkeeping.rs` (the
//! progress row, conflicts and dead letters), `ddl.rs` (tables).

mod bookkeeping;
mod ddl;
mod read;
mod write;

use writebehind_core::Key;

use crate::config::WriterConfig;
use crate::db::Arg;
use crate::ident::{Backend, Ident};
use crate::schema::{Column, SqlType, SqlValue, WriteMode};

/// SQL text for sqlx, which refuses dynamic strings unless vouched for.
/// This is the only place that vouches: the text comes from [`Dialect`]
/// (quoted [`Ident`]s, placeholders, every value a bind parameter) or from
/// `Writer::execute_sql`/`query_sql`, whose documented contract is SQL
/// written by the caller, never user input.
pub(crate) fn text(sql: &str) -> sqlx::SqlStr {
    use sqlx::SqlSafeStr;
    sqlx::AssertSqlSafe(sql).into_sql_str()
}

/// Highest bind-parameter count per statement (SQLite's default
/// `SQLITE_MAX_VARIABLE_NUMBER`, MySQL's protocol limit).
pub(crate) const SQLITE_MAX_PARAMS: usize = 32_766;
pub(crate) const MYSQL_MAX_PARAMS: usize = 65_535;

/// How a row group is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Counter add: insert (k, d, 1) or `value = value + d, version = version + 1`.
    Add,
    /// Unconditional upsert: insert (k, cols, 1) or set cols, `version = version + 1`.
    Set,
    /// Insert; an existing row is left alone and not returned (PostgreSQL, SQLite).
    InsertIfAbsent,
}

/// One row to write: the key text, its key-column values and one value
/// per value column.
#[derive(Clone, Debug)]
pub(crate) struct RowData {
    pub key: Key,
    pub kvals: Vec<SqlValue>,
    pub cols: Vec<SqlValue>,
}

/// A rendered statement.
pub(crate) struct Stmt {
    pub sql: String,
    pub args: Vec<Arg>,
}

struct Ph {
    pg: bool,
    n: usize,
}

impl Ph {
    fn new(backend: Backend) -> Ph {
        Ph {
            pg: backend == Backend::Postgres,
            n: 0,
        }
    }
    fn next(&mut self) -> String {
        self.n += 1;
        if self.pg {
            format!("${}", self.n)
        } else {
            "?".to_owned()
        }
    }
}

/// A value as its bind parameter. UUIDs travel as 16 bytes, timestamps as
/// µs (BIGINT), JSON as text; `Dialect::write_expr` converts them in SQL.
pub(crate) fn scalar(v: &SqlValue, ty: SqlType) -> Arg {
    match (v, ty) {
        (SqlValue::Int(i) | SqlValue::Timestamp(i), _) => Arg::Int(Some(*i)),
        (SqlValue::Float(f), _) => Arg::Float(Some(*f)),
        (SqlValue::Text(s) | SqlValue::Json(s), _) => Arg::Text(Some(s.clone())),
        (SqlValue::Bytes(b), _) => Arg::Bytes(Some(b.clone())),
        (SqlValue::Uuid(b), _) => Arg::Bytes(Some(b.to_vec())),
        (SqlValue::Bool(b), _) => Arg::Bool(Some(*b)),
        (SqlValue::Null, SqlType::BigInt | SqlType::Timestamp) => Arg::Int(None),
        (SqlValue::Null, SqlType::Double) => Arg::Float(None),
        (SqlValue::Null, SqlType::Text | SqlType::Json) => Arg::Text(None),
        (SqlValue::Null, SqlType::Bytes | SqlType::Uuid) => Arg::Bytes(None),
        (SqlValue::Null, SqlType::Bool) => Arg::Bool(None),
    }
}

/// One column of `rows` as a typed PostgreSQL array. Values were checked
/// against the column type before, so a mismatch cannot occur; it would bind NULL.
fn array(rows: &[&RowData], i: usize, ty: SqlType) -> Arg {
    array_of(
        rows.iter()
            .map(|r| r.cols.get(i).unwrap_or(&SqlValue::Null)),
        ty,
    )
}

/// Values of one column as a typed PostgreSQL array (see [`scalar`]).
fn array_of<'a>(it: impl Iterator<Item = &'a SqlValue>, ty: SqlType) -> Arg {
    match ty {
        SqlType::BigInt | SqlType::Timestamp => Arg::IntArr(
            it.map(|v| match v {
                SqlValue::Int(x) | SqlValue::Timestamp(x) => Some(*x),
                _ => None,
            })
            .collect(),
        ),
        SqlType::Double => Arg::FloatArr(
            it.map(|v| match v {
                SqlValue::Float(x) => Some(*x),
                _ => None,
            })
            .collect(),
        ),
        SqlType::Text | SqlType::Json => Arg::TextArr(
            it.map(|v| match v {
                SqlValue::Text(x) | SqlValue::Json(x) => Some(x.clone()),
                _ => None,
            })
            .collect(),
        ),
        SqlType::Bytes | SqlType::Uuid => Arg::BytesArr(
            it.map(|v| match v {
                SqlValue::Bytes(x) => Some(x.clone()),
                SqlValue::Uuid(x) => Some(x.to_vec()),
                _ => None,
            })
            .collect(),
        ),
        SqlType::Bool => Arg::BoolArr(
            it.map(|v| match v {
                SqlValue::Bool(x) => Some(*x),
                _ => None,
            })
            .collect(),
        ),
    }
}

fn pg_array_type(ty: SqlType) -> &'static str {
    match ty {
        SqlType::BigInt | SqlType::Timestamp => "int8[]",
        SqlType::Double => "float8[]",
        SqlType::Text | SqlType::Json => "text[]",
        SqlType::Bytes | SqlType::Uuid => "bytea[]",
        SqlType::Bool => "bool[]",
    }
}

/// What the writer learnt of a MySQL/MariaDB server at its first
/// connection (see `Writer::server_facts`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// MySQL >= 8.0.19: `INSERT .. AS new ON DUPLICATE KEY UPDATE c = c + new.c`.
    /// MariaDB and older MySQL: `c = c + VALUES(c)`.
    pub row_alias: bool,
    /// Per key column: `CHARACTER SET .. COLLATE ..` of a text key column as
    /// the table declares it (validated names), for the read-back's
    /// `JSON_TABLE` columns; `None`: not a text column, or unknown.
    pub key_charsets: Vec<Option<(String, String)>>,
}

/// The SQL of one writer: its backend and its (quoted) table and column names.
#[derive(Debug)]
pub(crate) struct Dialect {
    pub backend: Backend,
    table_name: String,
    t: String,
    keys: Vec<Column>,
    qkeys: Vec<String>,
    v: Option<String>,
    cols: Vec<Column>,
    qcols: Vec<String>,
    update_only: bool,
    progress: String,
    conflicts: String,
    dead: String,
}

/// A key's values, one per key column.
pub(crate) type KeyVals = [SqlValue];

impl Dialect {
    pub(crate) fn new(backend: Backend, cfg: &WriterConfig) -> Dialect {
        let q = |i: &Ident| i.quoted(backend);
        let t = &cfg.table;
        let cols = t.value_columns();
        let keys = t.key.columns().to_vec();
        Dialect {
            backend,
            table_name: t.table.to_string(),
            t: q(&t.table),
            qkeys: keys.iter().map(|c| q(&c.name)).collect(),
            keys,
            v: t.version_column.as_ref().map(q),
            qcols: cols.iter().map(|c| q(&c.name)).collect(),
            cols,
            update_only: t.mode == WriteMode::UpdateOnly,
            progress: q(&cfg.progress_table),
            conflicts: q(&cfg.conflicts_table),
            dead: q(&cfg.dead_letter_table),
        }
    }

    pub(crate) fn table_name(&self) -> &str {
        &self.table_name
    }

    pub(crate) fn columns(&self) -> &[Column] {
        &self.cols
    }

    pub(crate) fn key_columns(&self) -> &[Column] {
        &self.keys
    }

    pub(crate) fn has_version(&self) -> bool {
        self.v.is_some()
    }

    pub(crate) fn update_only(&self) -> bool {
        self.update_only
    }

    /// A value of type `ty` (a bind parameter or an unnested array element
    /// `src`) converted to the column type: UUIDs travel as 16 bytes,
    /// timestamps as µs since the epoch, JSON as text.
    fn wx(&self, ty: SqlType, src: &str) -> String {
        match (self.backend, ty) {
            (Backend::Postgres, SqlType::Uuid) => format!("CAST(encode({src}, 'hex') AS uuid)"),
            (Backend::Postgres, SqlType::Timestamp) => {
                format!("(TIMESTAMPTZ 'epoch' + {src} * INTERVAL '1 microsecond')")
            }
            (Backend::Postgres, SqlType::Json) => format!("CAST({src} AS jsonb)"),
            (Backend::MySql, SqlType::Timestamp) => {
                format!("TIMESTAMPADD(MICROSECOND, {src}, TIMESTAMP'1970-01-01 00:00:00')")
            }
            _ => src.to_owned(),
        }
    }

    /// A column `col` of type `ty` as the writer reads it (the inverse of `wx`).
    fn rx(&self, ty: SqlType, col: &str) -> String {
        match (self.backend, ty) {
            (Backend::Postgres, SqlType::Uuid) => format!("uuid_send({col})"),
            (Backend::Postgres, SqlType::Timestamp) => {
                format!("CAST(EXTRACT(EPOCH FROM {col}) * 1000000 AS int8)")
            }
            (Backend::Postgres, SqlType::Json) => format!("CAST({col} AS text)"),
            (Backend::MySql, SqlType::Timestamp) => {
                format!("TIMESTAMPDIFF(MICROSECOND, TIMESTAMP'1970-01-01 00:00:00', {col})")
            }
            (Backend::MySql, SqlType::Json) => format!("CAST({col} AS CHAR)"),
            _ => col.to_owned(),
        }
    }

    /// Types of a `select` row: key columns, version, value columns.
    pub(crate) fn select_types(&self) -> Vec<SqlType> {
        let mut t: Vec<SqlType> = self.keys.iter().map(|c| c.ty).collect();
        t.push(SqlType::BigInt);
        t.extend(self.cols.iter().map(|c| c.ty));
        t
    }

    /// Types of a write's returned row: key columns, version and, for
    /// `Add`, the totals.
    pub(crate) fn returning_types(&self, mode: Mode) -> Vec<SqlType> {
        let mut t: Vec<SqlType> = self.keys.iter().map(|c| c.ty).collect();
        t.push(SqlType::BigInt);
        if mode == Mode::Add {
            t.extend(self.cols.iter().map(|_| SqlType::BigInt));
        }
        t
    }

    /// Rows per data statement for `per_row` bind parameters per row.
    pub(crate) fn rows_per_statement(&self, configured: Option<usize>, per_row: usize) -> usize {
        let (default, cap) = match self.backend {
            Backend::Postgres => (5_000, usize::MAX),
            Backend::MySql => (2_000, MYSQL_MAX_PARAMS / per_row.max(1)),
            Backend::Sqlite => (5_000, SQLITE_MAX_PARAMS / per_row.max(1)),
        };
        configured.unwrap_or(default).min(cap).max(1)
    }

    /// Bind parameters per written row on the VALUES backends.
    pub(crate) fn params_per_row(&self) -> usize {
        self.keys.len() + self.cols.len()
    }

    /// Bind parameters per key in a key filter.
    pub(crate) fn params_per_key(&self) -> usize {
        self.keys.len()
    }

    /// The key columns qualified by the table: `t.k0, t.k1`.
    fn tkeys(&self) -> Vec<String> {
        self.qkeys
            .iter()
            .map(|k| format!("{}.{k}", self.t))
            .collect()
    }

    /// `(k0, k1)` or `k0`.
    fn key_tuple(&self, cols: &[String]) -> String {
        if cols.len() == 1 {
            cols[0].clone()
        } else {
            format!("({})", cols.join(", "))
        }
    }

    /// `WHERE` condition matching the rows of `keys`.
    fn key_filter(&self, keys: &[&KeyVals], ph: &mut Ph, args: &mut Vec<Arg>) -> String {
        let lhs = self.key_tuple(&self.tkeys());
        if self.backend == Backend::Postgres {
            if let [c] = &self.keys[..] {
                if !matches!(c.ty, SqlType::Uuid | SqlType::Timestamp | SqlType::Json) {
                    args.push(array_of(keys.iter().map(|k| &k[0]), c.ty));
                    return format!("{lhs} = ANY({}::{})", ph.next(), pg_array_type(c.ty));
                }
            }
            let (select, _) = self.unnest_keys(keys, ph, args, "wb_k");
            return format!("{lhs} IN ({select})");
        }
        let mut list = String::with_capacity(keys.len() * (self.keys.len() * 3 + 4) + 16);
        list.push_str(&lhs);
        list.push_str(" IN (");
        args.reserve(keys.len() * self.keys.len());
        for (n, k) in keys.iter().enumerate() {
            if n > 0 {
                list.push_str(", ");
            }
            list.push_str(&self.key_placeholders(k, ph, args));
        }
        list.push(')');
        list
    }

    /// `?` or `(?, ?)` for one key (its values pushed on `args`).
    fn key_placeholders(&self, k: &KeyVals, ph: &mut Ph, args: &mut Vec<Arg>) -> String {
        let mut p = Vec::with_capacity(self.keys.len());
        for (i, c) in self.keys.iter().enumerate() {
            args.push(scalar(k.get(i).unwrap_or(&SqlValue::Null), c.ty));
            p.push(self.wx(c.ty, &ph.next()));
        }
        self.key_tuple(&p)
    }

    /// PostgreSQL: `SELECT <keys> FROM UNNEST(arrays) AS alias(k0, ..)`.
    fn unnest_keys(
        &self,
        keys: &[&KeyVals],
        ph: &mut Ph,
        args: &mut Vec<Arg>,
        alias: &str,
    ) -> (String, Vec<String>) {
        let mut arrays = Vec::new();
        let mut names = Vec::new();
        let mut picks = Vec::new();
        for (i, c) in self.keys.iter().enumerate() {
            args.push(array_of(keys.iter().map(|k| &k[i]), c.ty));
            arrays.push(format!("{}::{}", ph.next(), pg_array_type(c.ty)));
            names.push(format!("k{i}"));
            picks.push(self.wx(c.ty, &format!("{alias}.k{i}")));
        }
        (
            format!(
                "SELECT {} FROM UNNEST({}) AS {alias}({})",
                picks.join(", "),
                arrays.join(", "),
                names.join(", ")
            ),
            picks,
        )
    }
}

#[cfg(test)]
mod tests;
