//! `CREATE TABLE` for the data table (when asked to create it) and the
//! cache's own tables, with each backend's column types.

use super::Dialect;
use crate::ident::Backend;
use crate::schema::{Merge, SqlType};

impl Dialect {
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
