//! Reads: the read-back after a write (SQLite and MySQL), rows by key, and
//! keyset pages of the whole table.

use super::{Dialect, Facts, KeyVals, Mode, Ph, Stmt};
use crate::db::Arg;
use crate::ident::Backend;
use crate::schema::{SqlType, SqlValue};

/// Keys for a read-back: a JSON array of the key values (`single`: one
/// key column), else of arrays of them; bytes as hex.
fn keys_json(keys: &[&KeyVals], single: bool) -> String {
    use serde_json::Value as J;
    let one = json_value;
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

/// A value as `JSON_TABLE` and `json_each` read it back: bytes in hex.
pub(super) fn json_value(v: &SqlValue) -> serde_json::Value {
    use serde_json::Value as J;
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

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(D[usize::from(x >> 4)]));
        s.push(char::from(D[usize::from(x & 15)]));
    }
    s
}

impl Dialect {
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
            let (defs, on) = self.json_table_keys(facts, "wb_keys", single);
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

    /// MySQL `JSON_TABLE` columns for the key columns (`k0 .. PATH '$[0]'`,
    /// or `'$'` for a `single` key of scalars), and the join of the table's
    /// key columns to them in `alias`. A text key is declared with the table
    /// column's character set and collation (`facts`): comparing two
    /// collations fails (error 1267); bytes travel as hex.
    pub(super) fn json_table_keys(
        &self,
        facts: &Facts,
        alias: &str,
        single: bool,
    ) -> (Vec<String>, Vec<String>) {
        let t = &self.t;
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
                SqlType::Bytes | SqlType::Uuid => "VARCHAR(2048) CHARACTER SET ascii".to_owned(),
                SqlType::Double => "DOUBLE".to_owned(),
                _ => "BIGINT".to_owned(),
            };
            defs.push(format!("k{i} {ty} PATH '{path}'"));
            let src = format!("{alias}.k{i}");
            let src = match c.ty {
                SqlType::Bytes | SqlType::Uuid => format!("UNHEX({src})"),
                ty => self.wx(ty, &src),
            };
            on.push(format!("{t}.{q} = {src}"));
        }
        (defs, on)
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
}
