//! Writes: multi-row upserts (UNNEST arrays on PostgreSQL, VALUES lists
//! elsewhere), update-only UPDATEs, and deletes.

use super::read::json_value;
use super::{
    array, array_of, pg_array_type, scalar, Dialect, Facts, KeyVals, Mode, Ph, RowData, Stmt,
};
use crate::db::Arg;
use crate::ident::Backend;
use crate::schema::SqlType;

impl Dialect {
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
            return self.update(mode, rows, returning, facts);
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
    fn update(&self, mode: Mode, rows: &[&RowData], returning: bool, facts: &Facts) -> Stmt {
        let t = &self.t;
        let mut ph = Ph::new(self.backend);
        let mut args = Vec::new();
        let sql = match self.backend {
            Backend::Postgres => {
                let (mut arrays, mut aliases, on) = self.pg_key_arrays(rows, &mut ph, &mut args);
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
            Backend::MySql if mode == Mode::Add => {
                // Counter deltas: the rows as ONE JSON parameter read by
                // `JSON_TABLE`, so the text is the same for every chunk (one
                // prepared statement) and the server parses no row list.
                let nk = self.keys.len();
                let (mut defs, on) = self.json_table_keys(facts, "wb_src", false);
                defs.extend(
                    (0..self.cols.len())
                        .map(|i| format!("c{i} BIGINT PATH '$[{}]' ERROR ON ERROR", nk + i)),
                );
                let list: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|r| r.kvals.iter().chain(&r.cols).map(json_value).collect())
                    .collect();
                let json = serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned());
                args.push(Arg::Text(Some(json)));
                format!(
                    "UPDATE JSON_TABLE(?, '$[*]' COLUMNS ({})) AS wb_src STRAIGHT_JOIN {t} ON {} SET {}",
                    defs.join(", "),
                    on.join(" AND "),
                    self.mysql_update_sets(mode)
                )
            }
            Backend::MySql => {
                // The rows as a derived table joined by key. Its first row
                // gives each text key the table column's character set and
                // collation (`facts`): two collations cannot be compared
                // (error 1267).
                let per_row = self.keys.len() + self.cols.len();
                let mut src = String::with_capacity(rows.len() * (per_row * 3 + 18));
                args.reserve(rows.len() * per_row);
                for (n, r) in rows.iter().enumerate() {
                    src.push_str(if n == 0 {
                        "SELECT "
                    } else {
                        " UNION ALL SELECT "
                    });
                    let keys = self.keys.iter().zip(&r.kvals).enumerate();
                    for (i, (c, v)) in keys {
                        if i > 0 {
                            src.push_str(", ");
                        }
                        args.push(scalar(v, c.ty));
                        let x = self.wx(c.ty, "?");
                        if n > 0 {
                            src.push_str(&x);
                            continue;
                        }
                        let x = match (c.ty, facts.key_charsets.get(i).cloned().flatten()) {
                            (SqlType::Text, Some((cs, coll))) => {
                                format!("CAST({x} AS CHAR CHARACTER SET {cs}) COLLATE {coll}")
                            }
                            _ => x,
                        };
                        src.push_str(&format!("{x} AS k{i}"));
                    }
                    for (i, (c, v)) in self.cols.iter().zip(&r.cols).enumerate() {
                        args.push(scalar(v, c.ty));
                        let x = self.wx(c.ty, "?");
                        if n > 0 {
                            src.push_str(", ");
                            src.push_str(&x);
                        } else {
                            src.push_str(&format!(", {x} AS c{i}"));
                        }
                    }
                }
                let on: Vec<String> = self
                    .qkeys
                    .iter()
                    .enumerate()
                    .map(|(i, q)| format!("{t}.{q} = wb_src.k{i}"))
                    .collect();
                format!(
                    "UPDATE {t} JOIN ({src}) AS wb_src ON {} SET {}",
                    on.join(" AND "),
                    self.mysql_update_sets(mode)
                )
            }
        };
        Stmt { sql, args }
    }

    /// PostgreSQL: the key columns of `rows` bound as arrays, each
    /// `$n::type[]`, named `k{i}` in `wb_src`, and the join of the table's key
    /// columns to them.
    fn pg_key_arrays(
        &self,
        rows: &[&RowData],
        ph: &mut Ph,
        args: &mut Vec<Arg>,
    ) -> (Vec<String>, Vec<String>, Vec<String>) {
        let t = &self.t;
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
        (arrays, aliases, on)
    }

    /// PostgreSQL: the 1-based positions in `rows` of the keys that match a
    /// row, as one aggregated array (`by_ordinal`'s first column). An
    /// update-only write that did not report values asks this only when its
    /// count says some key matched nothing.
    pub(crate) fn pg_matched(&self, rows: &[&RowData]) -> Stmt {
        let mut ph = Ph::new(self.backend);
        let mut args = Vec::new();
        let (arrays, mut aliases, on) = self.pg_key_arrays(rows, &mut ph, &mut args);
        aliases.push("wb_n".to_owned());
        Stmt {
            sql: format!(
                "SELECT array_agg(wb_src.wb_n) FROM UNNEST({}) WITH ORDINALITY AS wb_src({}) JOIN {} ON {}",
                arrays.join(", "),
                aliases.join(", "),
                self.t,
                on.join(" AND ")
            ),
            args,
        }
    }

    /// Whether a statement's text depends on its row count (`None`:
    /// deletes): VALUES and key lists on SQLite and MySQL, except MySQL's
    /// update-only counter adds (one JSON parameter). PostgreSQL binds arrays.
    pub(crate) fn text_varies_with_rows(&self, mode: Option<Mode>) -> bool {
        match self.backend {
            Backend::Postgres => false,
            Backend::Sqlite => true,
            Backend::MySql => !(self.update_only && mode == Some(Mode::Add)),
        }
    }

    /// MySQL update-only `SET`: from `wb_src.c{i}`, version + 1.
    fn mysql_update_sets(&self, mode: Mode) -> String {
        let t = &self.t;
        let mut sets: Vec<String> = self
            .qcols
            .iter()
            .enumerate()
            .map(|(i, q)| match mode {
                Mode::Add => format!("{t}.{q} = {t}.{q} + wb_src.c{i}"),
                _ => format!("{t}.{q} = wb_src.c{i}"),
            })
            .collect();
        if let Some(v) = &self.v {
            sets.push(format!("{t}.{v} = {t}.{v} + 1"));
        }
        sets.join(", ")
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
}
