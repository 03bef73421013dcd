//! SQL text per backend. Identifiers come only from [`Ident`] (quoted);
//! every value is a bind parameter. [`text`] is the one place that hands
//! dynamic SQL to sqlx.

use writebehind_core::Key;

use crate::config::WriterConfig;
use crate::db::Arg;
use crate::ident::{Backend, Ident};
use crate::schema::{Column, SqlType, SqlValue};

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

/// One row to write: the key and one value per value column.
#[derive(Clone, Debug)]
pub(crate) struct RowData {
    pub key: Key,
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
    let it = rows
        .iter()
        .map(|r| r.cols.get(i).unwrap_or(&SqlValue::Null));
    match ty {
        SqlType::BigInt | SqlType::Timestamp => Arg::IntArr(
            it.map(|v| {
                if let SqlValue::Int(x) | SqlValue::Timestamp(x) = v {
                    Some(*x)
                } else {
                    None
                }
            })
            .collect(),
        ),
        SqlType::Double => Arg::FloatArr(
            it.map(|v| {
                if let SqlValue::Float(x) = v {
                    Some(*x)
                } else {
                    None
                }
            })
            .collect(),
        ),
        SqlType::Text | SqlType::Json => Arg::TextArr(
            it.map(|v| {
                if let SqlValue::Text(x) | SqlValue::Json(x) = v {
                    Some(x.clone())
                } else {
                    None
                }
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
            it.map(|v| {
                if let SqlValue::Bool(x) = v {
                    Some(*x)
                } else {
                    None
                }
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

fn keys_text(keys: &[&Key]) -> Vec<Option<String>> {
    keys.iter().map(|k| Some(k.to_string())).collect()
}

/// The SQL of one writer: its backend and its (quoted) table and column names.
#[derive(Debug)]
pub(crate) struct Dialect {
    pub backend: Backend,
    table_name: String,
    t: String,
    k: String,
    v: String,
    cols: Vec<Column>,
    qcols: Vec<String>,
    progress: String,
    conflicts: String,
    dead: String,
}

impl Dialect {
    pub(crate) fn new(backend: Backend, cfg: &WriterConfig) -> Dialect {
        let q = |i: &Ident| i.quoted(backend);
        let t = &cfg.table;
        let cols = t.value_columns();
        Dialect {
            backend,
            table_name: t.table.to_string(),
            t: q(&t.table),
            k: q(&t.key.columns()[0].name),
            v: q(t
                .version_column
                .as_ref()
                .unwrap_or(&Ident::fixed("version"))),
            qcols: cols.iter().map(|c| q(&c.name)).collect(),
            cols,
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

    /// Types of a `select` row: key, version, value columns.
    pub(crate) fn select_types(&self) -> Vec<SqlType> {
        let mut t = vec![SqlType::Text, SqlType::BigInt];
        t.extend(self.cols.iter().map(|c| c.ty));
        t
    }

    /// Types of a write's returned row: key, version and, for `Add`, the total.
    pub(crate) fn returning_types(&self, mode: Mode) -> Vec<SqlType> {
        let mut t = vec![SqlType::Text, SqlType::BigInt];
        if mode == Mode::Add {
            t.push(SqlType::BigInt);
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
        1 + self.cols.len()
    }

    fn key_filter(&self, keys: &[&Key], ph: &mut Ph, args: &mut Vec<Arg>) -> String {
        if self.backend == Backend::Postgres {
            args.push(Arg::TextArr(keys_text(keys)));
            format!("{} = ANY({}::text[])", self.k, ph.next())
        } else {
            let mut list = String::with_capacity(keys.len() * 3 + self.k.len() + 8);
            list.push_str(&self.k);
            list.push_str(" IN (");
            args.reserve(keys.len());
            for (n, k) in keys.iter().enumerate() {
                list.push_str(if n == 0 { "?" } else { ", ?" });
                args.push(Arg::Text(Some(k.to_string())));
            }
            list.push(')');
            list
        }
    }

    /// A multi-row write of `rows` (their keys distinct and sorted);
    /// `returning` adds `RETURNING key, version[, value]` (not on MySQL),
    /// which PostgreSQL answers as ONE row of arrays (see `ConnRef::fetch_arrays`).
    pub(crate) fn write(&self, mode: Mode, rows: &[&RowData], returning: bool) -> Stmt {
        let (t, k, v) = (&self.t, &self.k, &self.v);
        let cols = self.qcols.join(", ");
        let mut ph = Ph::new(self.backend);
        let mut args = Vec::new();
        let returning = match mode {
            _ if !returning => String::new(),
            Mode::Add => format!(" RETURNING {k}, {v}, {}", self.qcols.join(", ")),
            Mode::Set | Mode::InsertIfAbsent => format!(" RETURNING {k}, {v}"),
        };
        let source = if self.backend == Backend::Postgres {
            let keys: Vec<&Key> = rows.iter().map(|r| &r.key).collect();
            args.push(Arg::TextArr(keys_text(&keys)));
            let mut arrays = vec![format!("{}::text[]", ph.next())];
            let mut names = vec!["k".to_owned()];
            for (i, c) in self.cols.iter().enumerate() {
                args.push(array(rows, i, c.ty));
                arrays.push(format!("{}::{}", ph.next(), pg_array_type(c.ty)));
                names.push(format!("c{i}"));
            }
            let picks: Vec<String> = names.iter().map(|n| format!("u.{n}")).collect();
            format!(
                "SELECT {}, 1 FROM UNNEST({}) AS u({})",
                picks.join(", "),
                arrays.join(", "),
                names.join(", ")
            )
        } else {
            // Only SQLite and MySQL get here: their placeholder is always `?`.
            // Written straight into one buffer: this runs for every row.
            let per_row = 1 + self.cols.len();
            let mut src = String::with_capacity(8 + rows.len() * (per_row * 3 + 6));
            src.push_str("VALUES ");
            args.reserve(rows.len() * per_row);
            for (n, r) in rows.iter().enumerate() {
                src.push_str(if n == 0 { "(?" } else { ", (?" });
                args.push(Arg::Text(Some(r.key.to_string())));
                for (i, c) in self.cols.iter().enumerate() {
                    args.push(scalar(r.cols.get(i).unwrap_or(&SqlValue::Null), c.ty));
                    src.push_str(", ?");
                }
                src.push_str(", 1)");
            }
            src
        };
        let head = format!("INSERT INTO {t} ({k}, {cols}, {v}) {source}");
        let sql = match self.backend {
            Backend::MySql => {
                let sets: Vec<String> = self
                    .qcols
                    .iter()
                    .map(|c| match mode {
                        Mode::Add => format!("{c} = {c} + VALUES({c})"),
                        Mode::Set | Mode::InsertIfAbsent => format!("{c} = VALUES({c})"),
                    })
                    .collect();
                // InsertIfAbsent relies on the FOR UPDATE pre-read's gap lock (InnoDB, REPEATABLE READ).
                format!(
                    "{head} ON DUPLICATE KEY UPDATE {}, {v} = {v} + 1",
                    sets.join(", ")
                )
            }
            Backend::Postgres | Backend::Sqlite => {
                let excluded = if self.backend == Backend::Postgres {
                    "EXCLUDED"
                } else {
                    "excluded"
                };
                match mode {
                    Mode::InsertIfAbsent => {
                        format!("{head} ON CONFLICT ({k}) DO NOTHING{returning}")
                    }
                    Mode::Add | Mode::Set => {
                        let sets: Vec<String> = self
                            .qcols
                            .iter()
                            .map(|c| match mode {
                                Mode::Add => format!("{c} = {t}.{c} + {excluded}.{c}"),
                                _ => format!("{c} = {excluded}.{c}"),
                            })
                            .collect();
                        format!(
                            "{head} ON CONFLICT ({k}) DO UPDATE SET {}, {v} = {t}.{v} + 1{returning}",
                            sets.join(", ")
                        )
                    }
                }
            }
        };
        // PostgreSQL sends a row per RETURNING row; aggregated, the whole
        // answer is one row of arrays (decoded in one go), in one row order.
        let sql = if self.backend == Backend::Postgres && !returning.is_empty() {
            let total = match (mode, self.qcols.first()) {
                (Mode::Add, Some(c)) => format!(", array_agg({c})"),
                _ => String::new(),
            };
            format!("WITH wb_written AS ({sql}) SELECT array_agg({k}), array_agg({v}){total} FROM wb_written")
        } else {
            sql
        };
        Stmt { sql, args }
    }

    /// The stand-in for RETURNING on SQLite and MySQL: after a group's
    /// writes, in the same transaction, one statement per batch of keys
    /// reads back the version (and for `Add` the total) of each key, by its
    /// position in `keys` (0-based), so no key text travels back. The keys
    /// are bound as ONE JSON array: no bind limit, one parameter to encode.
    ///
    /// SQLite answers one text `pos,version[,total];..` (sqlx hands SQLite
    /// rows between threads one at a time, and JSON output costs SQLite more
    /// than `group_concat`); MySQL answers rows `(pos, version[, total])`
    /// from `JSON_TABLE` (MySQL 8.0.4+, MariaDB 10.6+). The keys drive the
    /// join (`STRAIGHT_JOIN`, SQLite's `CROSS JOIN`): a fresh table's
    /// statistics may otherwise make the planner scan the table instead.
    pub(crate) fn read_back(&self, mode: Mode, keys: &[&Key]) -> Stmt {
        let (t, k, v) = (&self.t, &self.k, &self.v);
        let total = if mode == Mode::Add {
            self.qcols.first()
        } else {
            None
        };
        let list: Vec<&str> = keys.iter().map(|k| &***k).collect();
        let json = serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned());
        let sql = if self.backend == Backend::MySql {
            let total = total.map(|c| format!(", {t}.{c}")).unwrap_or_default();
            format!(
                "SELECT CAST(wb_keys.n AS SIGNED) - 1, {t}.{v}{total} FROM JSON_TABLE(?, '$[*]' \
                 COLUMNS (n FOR ORDINALITY, k {} PATH '$')) AS wb_keys \
                 STRAIGHT_JOIN {t} ON {t}.{k} = wb_keys.k",
                self.key_type()
            )
        } else {
            let total = total
                .map(|c| format!(" || ',' || ifnull({t}.{c}, '')"))
                .unwrap_or_default();
            format!(
                "SELECT group_concat(wb_keys.key || ',' || ifnull({t}.{v}, ''){total}, ';') \
                 FROM json_each(?) AS wb_keys CROSS JOIN {t} ON {t}.{k} = wb_keys.value"
            )
        };
        Stmt {
            sql,
            args: vec![Arg::Text(Some(json))],
        }
    }

    pub(crate) fn delete(&self, keys: &[&Key]) -> Stmt {
        let mut ph = Ph::new(self.backend);
        let mut args = Vec::new();
        let filter = self.key_filter(keys, &mut ph, &mut args);
        Stmt {
            sql: format!("DELETE FROM {} WHERE {filter}", self.t),
            args,
        }
    }

    /// Rows of `keys` (key, version, value columns); `lock` adds FOR UPDATE
    /// where the backend has it (SQLite's writer already holds the database lock).
    pub(crate) fn select(&self, keys: &[&Key], lock: bool) -> Stmt {
        let mut ph = Ph::new(self.backend);
        let mut args = Vec::new();
        let filter = self.key_filter(keys, &mut ph, &mut args);
        let lock = if lock && self.backend != Backend::Sqlite {
            " FOR UPDATE"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {}, {}, {} FROM {} WHERE {filter} ORDER BY {}{lock}",
            self.k,
            self.v,
            self.qcols.join(", "),
            self.t,
            self.k
        );
        Stmt { sql, args }
    }

    /// One keyset page: rows with key > `after`, in key order.
    pub(crate) fn page(&self, after: Option<&str>, limit: i64) -> Stmt {
        let mut ph = Ph::new(self.backend);
        let mut args = Vec::new();
        let filter = match after {
            Some(a) => {
                args.push(Arg::Text(Some(a.to_owned())));
                format!(" WHERE {} > {}", self.k, ph.next())
            }
            None => String::new(),
        };
        args.push(Arg::Int(Some(limit)));
        let sql = format!(
            "SELECT {}, {}, {} FROM {}{filter} ORDER BY {} LIMIT {}",
            self.k,
            self.v,
            self.qcols.join(", "),
            self.t,
            self.k,
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
                format!(
                    "{q} {}{}{integer}",
                    self.type_name(c.ty),
                    if c.nullable { "" } else { " NOT NULL" }
                )
            })
            .collect();
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} ({} {} PRIMARY KEY, {}, {} BIGINT NOT NULL)",
                self.t,
                self.k,
                self.key_type(),
                cols.join(", "),
                self.v
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
