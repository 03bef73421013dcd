//! The cache's own rows: the progress row (position and owner epoch), the
//! conflicts and dead-letter logs.

use super::{Dialect, Ph, Stmt};
use crate::db::Arg;
use crate::ident::{Backend, Ident};

impl Dialect {
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

    pub(super) fn fixed(&self, name: &'static str) -> String {
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
}

/// Column order of the conflicts-table rows `insert_log` takes.
const CONFLICT_COLUMNS: &[&str] = &[
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
const DEAD_LETTER_COLUMNS: &[&str] = &[
    "instance",
    "table_name",
    "position",
    "key",
    "change",
    "error",
    "created_at_ms",
];
