//! SQL text per backend. Identifiers come only from [`Ident`] (quoted);
//! every value is a bind parameter. [`text`] is the one place that hands
//! dynamic SQL to sqlx.

use writebehind_core::Key;

use crate::config::WriterConfig;
use crate::db::Arg;
use crate::ident::{Backend, Ident};
use crate::schema::{Column, Merge, SqlType, SqlValue, WriteMode};

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

/// Keys for a read-back: a JSON array of the key values (`single`: one
/// key column), else of arrays of them; bytes as hex.
fn keys_json(keys: &[&KeyVals], single: bool) -> String {
    use serde_json::Value as J;
    fn one(v: &SqlValue) -> J {
        match v {
            SqlValue::Null => J::Null,
            SqlValue::Int(i) | SqlValue::Timestamp(i) => J::from(*i),
            SqlValue::Float(f) => J::from(*f),
            SqlValue::Text(s) | SqlValue::Json(s) => J::from(s.as_str()),
            SqlValue::Bytes(b) => J::from(hex(b)),
            SqlValue::Uuid(b) => J::from(hex(b)),
            SqlValue::Bool(b) => J::from(*b),
        }
    }
    let list: Vec<J> = keys
        .iter()
        .map(|k| {
            if single {
                k.first().map_or(J::Null, one)
            } else {
                J::Array(k.iter().map(one).collect())
            }
        })
        .collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned())
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(D[usize::from(x >> 4)]));
        s.push(char::from(D[usize::from(x & 15)]));
    }
    s
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
            // Update-only statements on MySQL match keys in a CASE per
            // column: keep them short.
            Backend::MySql if self.update_only => (500, MYSQL_MAX_PARAMS / per_row.max(1)),
            Backend::MySql => (2_000, MYSQL_MAX_PARAMS / per_row.max(1)),
            Backend::Sqlite => (5_000, SQLITE_MAX_PARAMS / per_row.max(1)),
        };
        configured.unwrap_or(default).min(cap).max(1)
    }

    /// Bind parameters per written row on the VALUES backends.
    pub(crate) fn params_per_row(&self) -> usize {
        if self.update_only && self.backend == Backend::MySql {
            self.keys.len() * (1 + self.cols.len()) + self.cols.len()
        } else {
            self.keys.len() + self.cols.len()
        }
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

    /// `SET` items of a write: `c = <new>` or `c = t.c + <new>`, then the version.
    fn sets(&self, mode: Mode, new: impl Fn(usize, &str) -> String, bare_target: bool) -> String {
        let t = &self.t;
        let mut sets: Vec<String> = self
            .qcols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let target = if bare_target {
                    c.clone()
                } else {
                    format!("{t}.{c}")
                };
                match mode {
                    Mode::Add => format!("{c} = {target} + {}", new(i, c)),
                    Mode::Set | Mode::InsertIfAbsent => format!("{c} = {}", new(i, c)),
                }
            })
            .collect();
        if let Some(v) = &self.v {
            let target = if bare_target {
                v.clone()
            } else {
                format!("{t}.{v}")
            };
            sets.push(format!("{v} = {target} + 1"));
        }
        sets.join(", ")
    }

    /// `RETURNING` list: keys, version (NULL without one), and for `Add` the totals.
    fn returning_list(&self, mode: Mode, pg_agg: bool) -> String {
        let mut r: Vec<String> = Vec::new();
        for (i, (c, q)) in self.keys.iter().zip(&self.qkeys).enumerate() {
            r.push(if pg_agg {
                format!("{}.{q} AS wb_k{i}", self.t)
            } else {
                self.rx(c.ty, &format!("{}.{q}", self.t))
            });
        }
        r.push(match &self.v {
            Some(v) if pg_agg => format!("{}.{v} AS wb_v", self.t),
            Some(v) => format!("{}.{v}", self.t),
            None if pg_agg => "CAST(NULL AS int8) AS wb_v".to_owned(),
            None => "NULL".to_owned(),
        });
        if mode == Mode::Add {
            for (i, q) in self.qcols.iter().enumerate() {
                r.push(if pg_agg {
                    format!("{}.{q} AS wb_c{i}", self.t)
                } else {
                    format!("{}.{q}", self.t)
                });
            }
        }
        r.join(", ")
    }

    /// PostgreSQL update-only `RETURNING`: the source row's position, the
    /// version (NULL without one), and for `Add` the totals.
    fn returning_ordinal(&self, mode: Mode) -> String {
        let mut r = vec!["wb_src.wb_n AS wb_p".to_owned()];
        r.push(match &self.v {
            Some(v) => format!("{}.{v} AS wb_v", self.t),
            None => "CAST(NULL AS int8) AS wb_v".to_owned(),
        });
        if mode == Mode::Add {
            for (i, q) in self.qcols.iter().enumerate() {
                r.push(format!("{}.{q} AS wb_c{i}", self.t));
            }
        }
        r.join(", ")
    }

    /// The one-row aggregate of `returning_ordinal`'s rows.
    fn pg_aggregate_ordinal(&self, mode: Mode, inner: String) -> String {
        let mut aggs = vec!["array_agg(wb_p)".to_owned(), "array_agg(wb_v)".to_owned()];
        if mode == Mode::Add {
            aggs.extend((0..self.cols.len()).map(|i| format!("array_agg(wb_c{i})")));
        }
        format!(
            "WITH wb_written AS ({inner}) SELECT {} FROM wb_written",
            aggs.join(", ")
        )
    }

    /// Whether a write's RETURNING names rows by position (`returning_ordinal`)
    /// rather than by key: PostgreSQL's update-only writes.
    pub(crate) fn returns_positions(&self, mode: Mode) -> bool {
        self.backend == Backend::Postgres && self.update_only && mode != Mode::InsertIfAbsent
    }

    /// Types of a position-named returned row: position, version and, for
    /// `Add`, the totals.
    pub(crate) fn ordinal_types(&self, mode: Mode) -> Vec<SqlType> {
        let n = if mode == Mode::Add {
            self.cols.len()
        } else {
            0
        };
        vec![SqlType::BigInt; 2 + n]
    }

    /// PostgreSQL: the one-row aggregate over `wb_written` (see `write`).
    fn pg_aggregate(&self, mode: Mode, inner: String) -> String {
        let mut aggs: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, c)| format!("array_agg({})", self.rx(c.ty, &format!("wb_k{i}"))))
            .collect();
        aggs.push("array_agg(wb_v)".to_owned());
        if mode == Mode::Add {
            aggs.extend((0..self.cols.len()).map(|i| format!("array_agg(wb_c{i})")));
        }
        format!(
            "WITH wb_written AS ({inner}) SELECT {} FROM wb_written",
            aggs.join(", ")
        )
    }

    /// A multi-row write of `rows` (their keys distinct); `returning` adds
    /// `RETURNING keys, version[, totals]` (not on MySQL), which PostgreSQL
    /// answers as ONE row of arrays (see `ConnRef::fetch_arrays`).
    ///
    /// Upsert mappings insert or update; update-only mappings (and only
    /// for `Add`/`Set`) update the rows that exist and touch no other.
    pub(crate) fn write(
        &self,
        mode: Mode,
        rows: &[&RowData],
        returning: bool,
        facts: &Facts,
    ) -> Stmt {
        if self.update_only && mode != Mode::InsertIfAbsent {
            return self.update(mode, rows, returning);
        }
        let t = &self.t;
        let pg = self.backend == Backend::Postgres;
        let mut ph = Ph::new(self.backend);
        let mut args = Vec::new();
        let mut names: Vec<&str> = self.qkeys.iter().map(String::as_str).collect();
        names.extend(self.qcols.iter().map(String::as_str));
        if let Some(v) = &self.v {
            names.push(v);
        }
        let one = if self.v.is_some() { ", 1" } else { "" };
        let source = if pg {
            let mut arrays = Vec::new();
            let mut aliases = Vec::new();
            let mut picks = Vec::new();
            for (i, c) in self.keys.iter().enumerate() {
                args.push(array_of(rows.iter().map(|r| &r.kvals[i]), c.ty));
                arrays.push(format!("{}::{}", ph.next(), pg_array_type(c.ty)));
                aliases.push(format!("k{i}"));
                picks.push(self.wx(c.ty, &format!("u.k{i}")));
            }
            for (i, c) in self.cols.iter().enumerate() {
                args.push(array(rows, i, c.ty));
                arrays.push(format!("{}::{}", ph.next(), pg_array_type(c.ty)));
                aliases.push(format!("c{i}"));
                picks.push(self.wx(c.ty, &format!("u.c{i}")));
            }
            format!(
                "SELECT {}{one} FROM UNNEST({}) AS u({})",
                picks.join(", "),
                arrays.join(", "),
                aliases.join(", ")
            )
        } else {
            // SQLite and MySQL: their placeholder is always `?`. Written
            // straight into one buffer: this runs for every row.
            let plain = self
                .keys
                .iter()
                .chain(&self.cols)
                .all(|c| self.wx(c.ty, "?") == "?");
            let per_row = self.keys.len() + self.cols.len();
            let mut src = String::with_capacity(8 + rows.len() * (per_row * 3 + 6));
            src.push_str("VALUES ");
            args.reserve(rows.len() * per_row);
            for (n, r) in rows.iter().enumerate() {
                src.push_str(if n == 0 { "(" } else { ", (" });
                let vals = self
                    .keys
                    .iter()
                    .zip(&r.kvals)
                    .chain(self.cols.iter().zip(&r.cols));
                for (i, (c, v)) in vals.enumerate() {
                    if i > 0 {
                        src.push_str(", ");
                    }
                    args.push(scalar(v, c.ty));
                    if plain {
                        src.push('?');
                    } else {
                        src.push_str(&self.wx(c.ty, "?"));
                    }
                }
                src.push_str(one);
                src.push(')');
            }
            src
        };
        let head = format!("INSERT INTO {t} ({}) {source}", names.join(", "));
        let conflict = self.qkeys.join(", ");
        let sql = match self.backend {
            Backend::MySql => {
                let (alias, sets) = if facts.row_alias {
                    (
                        " AS wb_new",
                        self.sets(mode, |_, c| format!("wb_new.{c}"), true),
                    )
                } else {
                    ("", self.sets(mode, |_, c| format!("VALUES({c})"), true))
                };
                // InsertIfAbsent relies on the FOR UPDATE pre-read's gap lock (InnoDB, REPEATABLE READ).
                format!("{head}{alias} ON DUPLICATE KEY UPDATE {sets}")
            }
            Backend::Postgres | Backend::Sqlite => {
                let excluded = if pg { "EXCLUDED" } else { "excluded" };
                let returning = if returning {
                    format!(" RETURNING {}", self.returning_list(mode, pg))
                } else {
                    String::new()
                };
                match mode {
                    Mode::InsertIfAbsent => {
                        format!("{head} ON CONFLICT ({conflict}) DO NOTHING{returning}")
                    }
                    Mode::Add | Mode::Set => format!(
                        "{head} ON CONFLICT ({conflict}) DO UPDATE SET {}{returning}",
                        self.sets(mode, |_, c| format!("{excluded}.{c}"), false)
                    ),
                }
            }
        };
        // PostgreSQL sends a row per RETURNING row; aggregated, the whole
        // answer is one row of arrays (decoded in one go), in one row order.
        let sql = if pg && returning {
            self.pg_aggregate(mode, sql)
        } else {
            sql
        };
        Stmt { sql, args }
    }

    /// Update-only: `UPDATE` the rows of `rows` that exist (`Add`: `c = c +
    /// Δ`; `Set`: `c = new`), version + 1. Keys matching no row change
    /// nothing; the caller learns which from RETURNING (PostgreSQL) or the
    /// read-back (SQLite, MySQL).
    fn update(&self, mode: Mode, rows: &[&RowData], returning: bool) -> Stmt {
        let t = &self.t;
        let mut ph = Ph::new(self.backend);
        let mut args = Vec::new();
        let sql = match self.backend {
            Backend::Postgres => {
                let mut arrays = Vec::new();
                let mut aliases = Vec::new();
                let mut on = Vec::new();
                for ((i, c), q) in self.keys.iter().enumerate().zip(&self.qkeys) {
                    args.push(array_of(rows.iter().map(|r| &r.kvals[i]), c.ty));
                    arrays.push(format!("{}::{}", ph.next(), pg_array_type(c.ty)));
                    aliases.push(format!("k{i}"));
                    on.push(format!(
                        "{t}.{q} = {}",
                        self.wx(c.ty, &format!("wb_src.k{i}"))
                    ));
                }
                for (i, c) in self.cols.iter().enumerate() {
                    args.push(array(rows, i, c.ty));
                    arrays.push(format!("{}::{}", ph.next(), pg_array_type(c.ty)));
                    aliases.push(format!("c{i}"));
                }
                // Rows come back by their position: no key to send back and match.
                let ordinality = if returning {
                    aliases.push("wb_n".to_owned());
                    " WITH ORDINALITY"
                } else {
                    ""
                };
                let sets = self.sets(
                    mode,
                    |i, _| {
                        self.wx(
                            self.cols.get(i).map_or(SqlType::BigInt, |c| c.ty),
                            &format!("wb_src.c{i}"),
                        )
                    },
                    false,
                );
                let sql = format!(
                    "UPDATE {t} SET {sets} FROM UNNEST({}){ordinality} AS wb_src({}) WHERE {}",
                    arrays.join(", "),
                    aliases.join(", "),
                    on.join(" AND ")
                );
                if returning {
                    let sql = format!("{sql} RETURNING {}", self.returning_ordinal(mode));
                    self.pg_aggregate_ordinal(mode, sql)
                } else {
                    sql
                }
            }
            Backend::Sqlite => {
                let mut names: Vec<String> =
                    (0..self.keys.len()).map(|i| format!("k{i}")).collect();
                names.extend((0..self.cols.len()).map(|i| format!("c{i}")));
                let mut src = String::new();
                for (n, r) in rows.iter().enumerate() {
                    src.push_str(if n == 0 { "(" } else { ", (" });
                    let vals = self
                        .keys
                        .iter()
                        .zip(&r.kvals)
                        .chain(self.cols.iter().zip(&r.cols));
                    for (i, (c, v)) in vals.enumerate() {
                        src.push_str(if i == 0 { "?" } else { ", ?" });
                        args.push(scalar(v, c.ty));
                    }
                    src.push(')');
                }
                let on: Vec<String> = self
                    .qkeys
                    .iter()
                    .enumerate()
                    .map(|(i, q)| format!("{t}.{q} = wb_src.k{i}"))
                    .collect();
                format!(
                    "WITH wb_src({}) AS (VALUES {src}) UPDATE {t} SET {} FROM wb_src WHERE {}",
                    names.join(", "),
                    self.sets(mode, |i, _| format!("wb_src.c{i}"), false),
                    on.join(" AND ")
                )
            }
            Backend::MySql => {
                // Keys are compared with bind parameters only: a parameter
                // takes the collation of the column it meets, whatever it is.
                let keys: Vec<&KeyVals> = rows.iter().map(|r| &r.kvals[..]).collect();
                let lhs = self.key_tuple(&self.tkeys());
                let mut sets = Vec::new();
                for ((i, c), q) in self.cols.iter().enumerate().zip(&self.qcols) {
                    let mut case = String::from("CASE");
                    for r in rows {
                        let k = self.key_placeholders(&r.kvals, &mut ph, &mut args);
                        args.push(scalar(r.cols.get(i).unwrap_or(&SqlValue::Null), c.ty));
                        case.push_str(&format!(" WHEN {lhs} = {k} THEN {}", self.wx(c.ty, "?")));
                    }
                    case.push_str(&format!(
                        " ELSE {} END",
                        match mode {
                            Mode::Add => "0".to_owned(),
                            _ => format!("{t}.{q}"),
                        }
                    ));
                    sets.push(match mode {
                        Mode::Add => format!("{t}.{q} = {t}.{q} + {case}"),
                        _ => format!("{t}.{q} = {case}"),
                    });
                }
                if let Some(v) = &self.v {
                    sets.push(format!("{t}.{v} = {t}.{v} + 1"));
                }
                let filter = self.key_filter(&keys, &mut ph, &mut args);
                format!("UPDATE {t} SET {} WHERE {filter}", sets.join(", "))
            }
        };
        Stmt { sql, args }
    }

    /// The stand-in for RETURNING on SQLite and MySQL: after a group's
    /// writes, in the same transaction, one statement per batch of keys
    /// reads back the version (and for `Add` the totals) of each key, by
    /// its position in `keys` (0-based), so no key travels back. The keys
    /// are bound as ONE JSON array: no bind limit, one parameter to encode
    /// (a single text key as a string; other keys as arrays of their
    /// values, bytes in hex).
    ///
    /// SQLite answers one text `pos,version[,total..];..` (sqlx hands SQLite
    /// rows between threads one at a time, and JSON output costs SQLite more
    /// than `group_concat`); MySQL answers rows `(pos, version[, totals])`
    /// from `JSON_TABLE` (MySQL 8.0.4+, MariaDB 10.6+), whose text key
    /// columns are declared with the table column's character set and
    /// collation (`facts`): comparing two collations fails (error 1267). The
    /// keys drive the join (`STRAIGHT_JOIN`, SQLite's `CROSS JOIN`): a fresh
    /// table's statistics may otherwise make the planner scan the table.
    pub(crate) fn read_back(&self, mode: Mode, keys: &[&KeyVals], facts: &Facts) -> Stmt {
        let t = &self.t;
        let totals = mode == Mode::Add;
        let version = match &self.v {
            Some(v) => format!("{t}.{v}"),
            None => "NULL".to_owned(),
        };
        // One key column: a JSON array of its values; several: of arrays.
        let single = self.keys.len() == 1;
        let json = keys_json(keys, single);
        let sql = if self.backend == Backend::MySql {
            let total = if totals {
                self.qcols.iter().map(|c| format!(", {t}.{c}")).collect()
            } else {
                String::new()
            };
            let mut defs = Vec::new();
            let mut on = Vec::new();
            for (i, (c, q)) in self.keys.iter().zip(&self.qkeys).enumerate() {
                let path = if single {
                    "$".to_owned()
                } else {
                    format!("$[{i}]")
                };
                let ty = match c.ty {
                    SqlType::Text => {
                        let (cs, coll) = facts
                            .key_charsets
                            .get(i)
                            .cloned()
                            .flatten()
                            .unwrap_or_else(|| ("utf8mb4".to_owned(), "utf8mb4_bin".to_owned()));
                        format!("VARCHAR(768) CHARACTER SET {cs} COLLATE {coll}")
                    }
                    SqlType::Bytes | SqlType::Uuid => {
                        "VARCHAR(2048) CHARACTER SET ascii".to_owned()
                    }
                    SqlType::Double => "DOUBLE".to_owned(),
                    _ => "BIGINT".to_owned(),
                };
                defs.push(format!("k{i} {ty} PATH '{path}'"));
                let src = format!("wb_keys.k{i}");
                let src = match c.ty {
                    SqlType::Bytes | SqlType::Uuid => format!("UNHEX({src})"),
                    ty => self.wx(ty, &src),
                };
                on.push(format!("{t}.{q} = {src}"));
            }
            format!(
                "SELECT CAST(wb_keys.n AS SIGNED) - 1, {version}{total} FROM JSON_TABLE(?, '$[*]' \
                 COLUMNS (n FOR ORDINALITY, {})) AS wb_keys \
                 STRAIGHT_JOIN {t} ON {}",
                defs.join(", "),
                on.join(" AND ")
            )
        } else {
            let total: String = if totals {
                self.qcols
                    .iter()
                    .map(|c| format!(" || ',' || ifnull({t}.{c}, '')"))
                    .collect()
            } else {
                String::new()
            };
            let on: Vec<String> = self
                .keys
                .iter()
                .zip(&self.qkeys)
                .enumerate()
                .map(|(i, (c, q))| {
                    let x = if single {
                        "wb_keys.value".to_owned()
                    } else {
                        format!("json_extract(wb_keys.value, '$[{i}]')")
                    };
                    let x = match c.ty {
                        SqlType::Bytes | SqlType::Uuid => format!("unhex({x})"),
                        _ => x,
                    };
                    format!("{t}.{q} = {x}")
                })
                .collect();
            format!(
                "SELECT group_concat(wb_keys.key || ',' || ifnull({version}, ''){total}, ';') \
                 FROM json_each(?) AS wb_keys CROSS JOIN {t} ON {}",
                on.join(" AND ")
            )
        };
        Stmt {
            sql,
            args: vec![Arg::Text(Some(json))],
        }
    }

    pub(crate) fn delete(&self, keys: &[&KeyVals]) -> Stmt {
        let mut ph = Ph::new(self.backend);
        let mut args = Vec::new();
        let filter = self.key_filter(keys, &mut ph, &mut args);
        Stmt {
            sql: format!("DELETE FROM {} WHERE {filter}", self.t),
            args,
        }
    }

    /// `key columns, version (NULL without one), value columns`, as read.
    fn select_list(&self) -> String {
        let t = &self.t;
        let mut l: Vec<String> = self
            .keys
            .iter()
            .zip(&self.qkeys)
            .map(|(c, q)| self.rx(c.ty, &format!("{t}.{q}")))
            .collect();
        l.push(match &self.v {
            Some(v) => format!("{t}.{v}"),
            None => "NULL".to_owned(),
        });
        l.extend(
            self.cols
                .iter()
                .zip(&self.qcols)
                .map(|(c, q)| self.rx(c.ty, &format!("{t}.{q}"))),
        );
        l.join(", ")
    }

    /// Rows of `keys` (key columns, version, value columns); `lock` adds
    /// FOR UPDATE where the backend has it (SQLite's writer already holds
    /// the database lock).
    pub(crate) fn select(&self, keys: &[&KeyVals], lock: bool) -> Stmt {
        let mut ph = Ph::new(self.backend);
        let mut args = Vec::new();
        let filter = self.key_filter(keys, &mut ph, &mut args);
        let lock = if lock && self.backend != Backend::Sqlite {
            " FOR UPDATE"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {} FROM {} WHERE {filter} ORDER BY {}{lock}",
            self.select_list(),
            self.t,
            self.tkeys().join(", ")
        );
        Stmt { sql, args }
    }

    /// One keyset page: rows with key > `after` (row comparison on
    /// composite keys), in key order.
    pub(crate) fn page(&self, after: Option<&KeyVals>, limit: i64) -> Stmt {
        let mut ph = Ph::new(self.backend);
        let mut args = Vec::new();
        let filter = match after {
            Some(a) => {
                let lhs = self.key_tuple(&self.tkeys());
                format!(
                    " WHERE {lhs} > {}",
                    self.key_placeholders(a, &mut ph, &mut args)
                )
            }
            None => String::new(),
        };
        args.push(Arg::Int(Some(limit)));
        let sql = format!(
            "SELECT {} FROM {}{filter} ORDER BY {} LIMIT {}",
            self.select_list(),
            self.t,
            self.tkeys().join(", "),
            ph.next()
        );
        Stmt { sql, args }
    }

    /// Creates this instance's progress row if missing (position NULL); the
    /// insert also takes the row's write lock, serialising flushes of one instance.
    pub(crate) fn progress_ensure(&self, instance: &str, now_ms: i64) -> Stmt {
        let mut ph = Ph::new(self.backend);
        let (a, b) = (ph.next(), ph.next());
        let p = &self.progress;
        let sql = match self.backend {
            Backend::MySql => format!(
                "INSERT INTO {p} (`instance`, `position`, `updated_at_ms`) VALUES ({a}, NULL, {b}) \
                 ON DUPLICATE KEY UPDATE `instance` = `instance`"
            ),
            _ => format!(
                "INSERT INTO {p} (\"instance\", \"position\", \"updated_at_ms\") VALUES ({a}, NULL, {b}) \
                 ON CONFLICT (\"instance\") DO NOTHING"
            ),
        };
        Stmt {
            sql,
            args: vec![Arg::Text(Some(instance.to_owned())), Arg::Int(Some(now_ms))],
        }
    }

    /// This instance's `position` (and with `epoch`, its `owner_epoch`: the
    /// flush and the claim read both in the one statement that locks the
    /// row); `lock` adds FOR UPDATE where the backend has it.
    pub(crate) fn progress_read(&self, instance: &str, lock: bool, epoch: bool) -> Stmt {
        let mut ph = Ph::new(self.backend);
        let lock = if lock && self.backend != Backend::Sqlite {
            " FOR UPDATE"
        } else {
            ""
        };
        let (pos, inst) = (self.fixed("position"), self.fixed("instance"));
        // Qualified: SQLite reads an unknown double-quoted name alone as a
        // string literal (a table without the column would answer 'owner_epoch').
        let epoch = if epoch {
            format!(", {}.{}", self.progress, self.fixed("owner_epoch"))
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT {pos}{epoch} FROM {} WHERE {inst} = {}{lock}",
            self.progress,
            ph.next()
        );
        Stmt {
            sql,
            args: vec![Arg::Text(Some(instance.to_owned()))],
        }
    }

    pub(crate) fn progress_write(&self, instance: &str, position: i64, now_ms: i64) -> Stmt {
        let mut ph = Ph::new(self.backend);
        let (pos, upd, inst) = (
            self.fixed("position"),
            self.fixed("updated_at_ms"),
            self.fixed("instance"),
        );
        let sql = format!(
            "UPDATE {} SET {pos} = {}, {upd} = {} WHERE {inst} = {}",
            self.progress,
            ph.next(),
            ph.next(),
            ph.next()
        );
        Stmt {
            sql,
            args: vec![
                Arg::Int(Some(position)),
                Arg::Int(Some(now_ms)),
                Arg::Text(Some(instance.to_owned())),
            ],
        }
    }

    /// Sets this instance's owner epoch (the row is locked by the claim's read).
    pub(crate) fn epoch_write(&self, instance: &str, epoch: i64, now_ms: i64) -> Stmt {
        let mut ph = Ph::new(self.backend);
        let (own, upd, inst) = (
            self.fixed("owner_epoch"),
            self.fixed("updated_at_ms"),
            self.fixed("instance"),
        );
        let sql = format!(
            "UPDATE {} SET {own} = {}, {upd} = {} WHERE {inst} = {}",
            self.progress,
            ph.next(),
            ph.next(),
            ph.next()
        );
        Stmt {
            sql,
            args: vec![
                Arg::Int(Some(epoch)),
                Arg::Int(Some(now_ms)),
                Arg::Text(Some(instance.to_owned())),
            ],
        }
    }

    /// A query that fails when the progress table lacks `owner_epoch` (a
    /// table created before fencing). Qualified, so SQLite cannot take the
    /// quoted name for a string literal.
    pub(crate) fn epoch_probe(&self) -> String {
        format!(
            "SELECT {p}.{} FROM {p} WHERE 1 = 0",
            self.fixed("owner_epoch"),
            p = self.progress
        )
    }

    /// Adds `owner_epoch` to a progress table created before fencing.
    pub(crate) fn epoch_migration(&self) -> String {
        format!(
            "ALTER TABLE {} ADD COLUMN {} BIGINT NOT NULL DEFAULT 0",
            self.progress,
            self.fixed("owner_epoch")
        )
    }

    fn fixed(&self, name: &'static str) -> String {
        Ident::fixed(name).quoted(self.backend)
    }

    /// A multi-row insert of bookkeeping rows into the conflicts (`conflicts`
    /// true) or dead-letter table. Each row's values match `columns`.
    pub(crate) fn insert_log(&self, conflicts: bool, rows: &[Vec<Arg>]) -> Stmt {
        let columns: &[&'static str] = if conflicts {
            CONFLICT_COLUMNS
        } else {
            DEAD_LETTER_COLUMNS
        };
        let table = if conflicts {
            &self.conflicts
        } else {
            &self.dead
        };
        let mut ph = Ph::new(self.backend);
        let names: Vec<String> = columns.iter().map(|c| self.fixed(c)).collect();
        let mut tuples = Vec::with_capacity(rows.len());
        let mut args = Vec::new();
        for r in rows {
            let p: Vec<String> = r.iter().map(|_| ph.next()).collect();
            tuples.push(format!("({})", p.join(", ")));
            args.extend(r.iter().cloned());
        }
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES {}",
            names.join(", "),
            tuples.join(", ")
        );
        Stmt { sql, args }
    }

    fn type_name(&self, ty: SqlType) -> &'static str {
        match (self.backend, ty) {
            (_, SqlType::BigInt) => "BIGINT",
            (Backend::Postgres, SqlType::Double) => "DOUBLE PRECISION",
            (Backend::Sqlite, SqlType::Double) => "REAL",
            (Backend::MySql, SqlType::Double) => "DOUBLE",
            (Backend::MySql, SqlType::Text) => "LONGTEXT",
            (_, SqlType::Text) => "TEXT",
            (Backend::Postgres, SqlType::Bytes) => "BYTEA",
            (Backend::Sqlite, SqlType::Bytes) => "BLOB",
            (Backend::MySql, SqlType::Bytes) => "LONGBLOB",
            (_, SqlType::Bool) => "BOOLEAN",
            (Backend::Postgres, SqlType::Uuid) => "UUID",
            (Backend::MySql, SqlType::Uuid) => "BINARY(16)",
            (Backend::Sqlite, SqlType::Uuid) => "BLOB",
            (Backend::Postgres, SqlType::Timestamp) => "TIMESTAMPTZ",
            (Backend::MySql, SqlType::Timestamp) => "DATETIME(6)",
            (Backend::Sqlite, SqlType::Timestamp) => "INTEGER",
            (Backend::Postgres, SqlType::Json) => "JSONB",
            // MariaDB's JSON is LONGTEXT with a JSON_VALID check.
            (Backend::MySql, SqlType::Json) => "JSON",
            (Backend::Sqlite, SqlType::Json) => "TEXT",
        }
    }

    /// Key-like text columns: MySQL needs a bounded, case- and accent-exact type.
    fn key_type(&self) -> &'static str {
        match self.backend {
            Backend::MySql => "VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
            _ => "TEXT",
        }
    }

    /// A key column's type: MySQL cannot index unbounded text or bytes.
    fn key_column_type(&self, ty: SqlType) -> &'static str {
        match (self.backend, ty) {
            (Backend::MySql, SqlType::Text) => self.key_type(),
            (Backend::MySql, SqlType::Bytes) => "VARBINARY(512)",
            (Backend::MySql, SqlType::Json) => {
                "VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            }
            _ => self.type_name(ty),
        }
    }

    fn id_column(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
            Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Backend::MySql => "BIGINT AUTO_INCREMENT PRIMARY KEY",
        }
    }

    fn log_table(&self, table: &str, cols: &[(&'static str, &str)]) -> String {
        let cols: Vec<String> = cols
            .iter()
            .map(|(n, ty)| format!("{} {ty}", self.fixed(n)))
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {table} ({} {}, {})",
            self.fixed("id"),
            self.id_column(),
            cols.join(", ")
        )
    }

    /// `CREATE TABLE IF NOT EXISTS` for the data, progress, conflicts and dead-letter tables.
    pub(crate) fn ddl(&self) -> Vec<String> {
        let key = self.key_type();
        let text_nn = match self.backend {
            Backend::MySql => "LONGTEXT NOT NULL",
            _ => "TEXT NOT NULL",
        };
        let key_nn = format!("{key} NOT NULL");
        let key = key_nn.as_str();
        let f = |n| self.fixed(n);
        let cols: Vec<String> = self
            .cols
            .iter()
            .zip(&self.qcols)
            .map(|(c, q)| {
                // SQLite turns an overflowing integer sum into a REAL: the
                // check makes that a constraint error on the row instead.
                let integer = match (self.backend, c.ty, c.nullable) {
                    (Backend::Sqlite, SqlType::BigInt, false) => {
                        format!(" CHECK (typeof({q}) = 'integer')")
                    }
                    (Backend::Sqlite, SqlType::BigInt, true) => {
                        format!(" CHECK ({q} IS NULL OR typeof({q}) = 'integer')")
                    }
                    _ => String::new(),
                };
                let default = if c.merge == Merge::Counter {
                    " DEFAULT 0"
                } else {
                    ""
                };
                format!(
                    "{q} {}{}{default}{integer}",
                    self.type_name(c.ty),
                    if c.nullable { "" } else { " NOT NULL" }
                )
            })
            .collect();
        let mut data: Vec<String> = self
            .keys
            .iter()
            .zip(&self.qkeys)
            .map(|(c, q)| format!("{q} {} NOT NULL", self.key_column_type(c.ty)))
            .collect();
        data.extend(cols);
        if let Some(v) = &self.v {
            data.push(format!("{v} BIGINT NOT NULL"));
        }
        data.push(format!("PRIMARY KEY ({})", self.qkeys.join(", ")));
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} ({})",
                self.t,
                data.join(", ")
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} ({} {} PRIMARY KEY, {} BIGINT, {} BIGINT NOT NULL, \
                 {} BIGINT NOT NULL DEFAULT 0)",
                self.progress,
                f("instance"),
                self.key_type(),
                f("position"),
                f("updated_at_ms"),
                f("owner_epoch")
            ),
            self.log_table(
                &self.conflicts,
                &[
                    ("instance", key),
                    ("table_name", text_nn),
                    ("position", "BIGINT NOT NULL"),
                    ("key", key),
                    ("change", text_nn),
                    ("expected", text_nn),
                    ("database_version", "BIGINT"),
                    ("resolution", text_nn),
                    ("created_at_ms", "BIGINT NOT NULL"),
                ],
            ),
            self.log_table(
                &self.dead,
                &[
                    ("instance", key),
                    ("table_name", text_nn),
                    ("position", "BIGINT NOT NULL"),
                    ("key", key),
                    ("change", text_nn),
                    ("error", text_nn),
                    ("created_at_ms", "BIGINT NOT NULL"),
                ],
            ),
        ]
    }
}

/// Column order of the conflicts-table rows `insert_log` takes.
pub(crate) const CONFLICT_COLUMNS: &[&str] = &[
    "instance",
    "table_name",
    "position",
    "key",
    "change",
    "expected",
    "database_version",
    "resolution",
    "created_at_ms",
];

/// Column order of the dead-letter rows `insert_log` takes.
pub(crate) const DEAD_LETTER_COLUMNS: &[&str] = &[
    "instance",
    "table_name",
    "position",
    "key",
    "change",
    "error",
    "created_at_ms",
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;
    use crate::schema::{Column, RowCodec, TableSpec};

    struct Counters(Vec<Column>);
    impl RowCodec for Counters {
        fn columns(&self) -> &[Column] {
            &self.0
        }
        fn to_row(&self, _: &[u8]) -> std::result::Result<Vec<SqlValue>, String> {
            Err("delta".into())
        }
        fn from_row(&self, _: Vec<SqlValue>) -> std::result::Result<Vec<u8>, String> {
            Err("delta".into())
        }
    }

    fn posts(mode: WriteMode) -> Dialect {
        let codec = Arc::new(Counters(vec![
            Column::counter("views").unwrap(),
            Column::counter("likes").unwrap(),
        ]));
        let spec = TableSpec::record("posts", codec)
            .unwrap()
            .key(crate::schema::TextKey::named("id").unwrap())
            .version_column(None)
            .unwrap()
            .mode(mode);
        Dialect::new(Backend::MySql, &WriterConfig::new("i").table(spec))
    }

    fn row(k: &str) -> RowData {
        RowData {
            key: Key::from(k),
            kvals: vec![SqlValue::Text(k.to_owned())],
            cols: vec![SqlValue::Int(1), SqlValue::Int(2)],
        }
    }

    /// MySQL >= 8.0.19 gets the row alias, MariaDB and older MySQL VALUES().
    #[test]
    fn mysql_delta_upsert_per_server() {
        let d = posts(WriteMode::Upsert);
        let (a, b) = (row("a"), row("b"));
        let alias = Facts {
            row_alias: true,
            key_charsets: Vec::new(),
        };
        let st = d.write(Mode::Add, &[&a, &b], false, &alias);
        assert_eq!(
            st.sql,
            "INSERT INTO `posts` (`id`, `views`, `likes`) VALUES (?, ?, ?), (?, ?, ?) AS wb_new \
             ON DUPLICATE KEY UPDATE `views` = `views` + wb_new.`views`, `likes` = `likes` + wb_new.`likes`"
        );
        let st = d.write(Mode::Add, &[&a], false, &Facts::default());
        assert_eq!(
            st.sql,
            "INSERT INTO `posts` (`id`, `views`, `likes`) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE `views` = `views` + VALUES(`views`), `likes` = `likes` + VALUES(`likes`)"
        );
        assert_eq!(st.args.len(), 3);
        assert!(crate::writer::mysql_has_row_alias("8.0.19"));
        assert!(crate::writer::mysql_has_row_alias("8.4.3-commercial"));
        assert!(!crate::writer::mysql_has_row_alias("8.0.18-log"));
        assert!(!crate::writer::mysql_has_row_alias("5.7.44"));
        assert!(!crate::writer::mysql_has_row_alias(
            "10.11.6-MariaDB-0+deb12u1"
        ));
        assert!(!crate::writer::mysql_has_row_alias("11.4.2-MariaDB"));
    }

    /// The read-back declares the table's own collation for a text key.
    #[test]
    fn mysql_read_back_uses_the_key_collation() {
        let d = posts(WriteMode::Upsert);
        let facts = Facts {
            row_alias: false,
            key_charsets: vec![Some(("utf8mb4".into(), "utf8mb4_unicode_ci".into()))],
        };
        let k = [SqlValue::Text("a".into())];
        let st = d.read_back(Mode::Add, &[&k[..]], &facts);
        assert!(
            st.sql.contains(
                "k0 VARCHAR(768) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci PATH '$'"
            ),
            "{}",
            st.sql
        );
    }

    /// Update-only on MySQL compares keys with parameters only (no
    /// collation mix) and never inserts.
    #[test]
    fn mysql_update_only_is_an_update() {
        let d = posts(WriteMode::UpdateOnly);
        let a = row("a");
        let st = d.write(Mode::Add, &[&a], false, &Facts::default());
        assert_eq!(
            st.sql,
            "UPDATE `posts` SET `posts`.`views` = `posts`.`views` + CASE WHEN `posts`.`id` = ? THEN ? ELSE 0 END, \
             `posts`.`likes` = `posts`.`likes` + CASE WHEN `posts`.`id` = ? THEN ? ELSE 0 END \
             WHERE `posts`.`id` IN (?)"
        );
        assert_eq!(st.args.len(), 5);
    }
    /// `text` stays the only place in this crate that vouches for SQL.
    #[test]
    fn only_this_file_asserts_sql_is_safe() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains("AssertSqlSafe") {
                found.push(path.file_name().map(|n| n.to_string_lossy().into_owned()));
            }
        }
        assert_eq!(found, vec![Some("sql.rs".to_owned())]);
    }
}
