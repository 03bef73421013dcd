//! The database as the writer finds it before writing: what the server is
//! (MySQL's row alias, key collations), which keys its columns can hold,
//! and the tables it creates when asked.

use super::Writer;
use crate::error::{Error, Result};
use crate::ident::Backend;
use crate::schema::{SqlType, SqlValue};
use crate::sql::{Facts, Stmt};

/// MySQL's key columns are `VARCHAR(512)`: characters, not bytes.
const MYSQL_KEY_CHARS: usize = 512;

/// A character set or collation name as the server reports it, safe to
/// render into SQL text.
fn plain_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// MySQL 8.0.19 and later take `INSERT .. AS alias`; MariaDB (any version)
/// and older MySQL do not. `version` is `SELECT VERSION()`.
pub(crate) fn mysql_has_row_alias(version: &str) -> bool {
    if version.to_ascii_lowercase().contains("mariadb") {
        return false;
    }
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    v >= (8, 0, 19)
}

impl Writer {
    /// MySQL/MariaDB: learns, once, at the first connection, what the SQL
    /// depends on: the server version (MySQL >= 8.0.19 takes the row alias
    /// `INSERT .. AS new ON DUPLICATE KEY UPDATE c = c + new.c`; MariaDB and
    /// older MySQL `c = c + VALUES(c)`) and the character set and collation
    /// of each text key column (the read-back declares them: two
    /// collations cannot be compared, error 1267). A no-op elsewhere.
    pub(crate) async fn server_facts(&self) -> Result<()> {
        if self.inner.facts.get().is_some() {
            return Ok(());
        }
        let mut conn = self.connect_for("server version").await?;
        let rows = conn
            .conn()
            .fetch("SELECT VERSION()", Vec::new(), &[SqlType::Text])
            .await
            .map_err(Error::sql("server version"))?;
        let version = match rows.first().and_then(|r| r.first()) {
            Some(SqlValue::Text(v)) => v.clone(),
            _ => String::new(),
        };
        let row_alias = mysql_has_row_alias(&version);
        let d = &self.inner.dialect;
        let mut key_charsets = Vec::new();
        for c in d.key_columns() {
            if c.ty != SqlType::Text {
                key_charsets.push(None);
                continue;
            }
            let Stmt { sql, args } = crate::check::mysql_charset(d, c.name.as_str());
            let rows = conn
                .conn()
                .fetch(&sql, args, &[SqlType::Text, SqlType::Text])
                .await
                .map_err(Error::sql("key column collation"))?;
            key_charsets.push(match rows.first().map(|r| (r.first(), r.get(1))) {
                Some((Some(SqlValue::Text(cs)), Some(SqlValue::Text(coll))))
                    if plain_name(cs) && plain_name(coll) =>
                {
                    Some((cs.clone(), coll.clone()))
                }
                _ => None,
            });
        }
        tracing::debug!(%version, row_alias, ?key_charsets, "writebehind: MySQL server facts");
        let _ = self.inner.facts.set(Facts {
            row_alias,
            key_charsets,
        });
        Ok(())
    }

    /// Whether the database can hold `key` in its key columns; the reason
    /// when it cannot. Checked before a write reaches the WAL, so nothing
    /// acknowledged is later refused for its key: PostgreSQL text holds no
    /// NUL byte, MySQL's key columns hold 512 characters.
    pub fn check_key(&self, key: &str) -> std::result::Result<(), String> {
        let vals = self.inner.key_values(key)?;
        let text_key = matches!(&vals[..], [SqlValue::Text(k)] if k == key);
        for v in &vals {
            let SqlValue::Text(t) = v else { continue };
            if self.backend() == Backend::Postgres && t.contains('\0') {
                return Err("PostgreSQL text cannot hold a NUL byte".to_owned());
            }
        }
        if !text_key {
            return Ok(());
        }
        match self.backend() {
            Backend::Postgres if key.contains('\0') => {
                Err("PostgreSQL text cannot hold a NUL byte".to_owned())
            }
            Backend::MySql
                if key.len() > MYSQL_KEY_CHARS && key.chars().count() > MYSQL_KEY_CHARS =>
            {
                Err(format!(
                    "{} characters, but MySQL's key column holds {MYSQL_KEY_CHARS}",
                    key.chars().count()
                ))
            }
            _ => Ok(()),
        }
    }

    /// Creates the four tables if they do not exist (`K` is `TEXT` on
    /// PostgreSQL/SQLite and `VARCHAR(512) COLLATE utf8mb4_bin` on MySQL; `ID` an auto-increment key):
    ///
    /// - data: `table(key K PRIMARY KEY, <value column(s)>, version BIGINT NOT NULL)`;
    ///   counters: `value BIGINT NOT NULL`; records: one column per codec column
    ///   (`BIGINT`, `DOUBLE PRECISION`/`REAL`/`DOUBLE`, `TEXT`/`LONGTEXT`,
    ///   `BYTEA`/`BLOB`/`LONGBLOB`, `BOOLEAN`), `NOT NULL` unless nullable.
    /// - progress: `(instance K PRIMARY KEY, position BIGINT NULL, updated_at_ms BIGINT NOT NULL,
    ///   owner_epoch BIGINT NOT NULL DEFAULT 0)`; `position` is the highest WAL position
    ///   this instance committed, `owner_epoch` the epoch of its current owner (see
    ///   [`claim`](Self::claim)). A progress table created before `owner_epoch` existed
    ///   gets the column at the first claim (`ALTER TABLE .. ADD COLUMN`).
    /// - conflicts: `(id ID, instance K, table_name TEXT, position BIGINT, key K,
    ///   change TEXT /*JSON*/, expected TEXT /*JSON*/, database_version BIGINT NULL,
    ///   resolution TEXT /*kept_database|overwrote|resolved|dead_lettered*/, created_at_ms BIGINT)`.
    /// - dead letters: `(id ID, instance K, table_name TEXT, position BIGINT, key K,
    ///   change TEXT /*JSON*/, error TEXT, created_at_ms BIGINT)`.
    pub async fn create_tables(&self) -> Result<()> {
        let mut conn = self.connect_for("create_tables").await?;
        for ddl in self.inner.dialect.ddl() {
            // PostgreSQL's `IF NOT EXISTS` is not safe against a concurrent creator: the
            // loser fails on a catalog unique index once the winner commits. Run again,
            // it sees the object.
            let mut tries = 0;
            loop {
                match conn.conn().execute_raw(&ddl).await {
                    Ok(()) => break,
                    Err(e) if tries < 3 && created_concurrently(&e) => tries += 1,
                    Err(e) => return Err(Error::sql(format!("create_tables: {ddl}"))(e)),
                }
            }
        }
        Ok(())
    }
}

/// A DDL statement lost a race with another creator of the same object
/// (PostgreSQL: unique_violation on a catalog index, duplicate_table, duplicate_object).
fn created_concurrently(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("23505" | "42P07" | "42710"))
        }
        _ => false,
    }
}
