//! The database side of the baselines: each backend's SQL, the connection, statements
//! and the totals read back.

use sqlx::Row;
use writebehind::redact_url as redact;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

impl Backend {
    pub(super) fn from_url(url: &str) -> Result<Backend, String> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Ok(Backend::Mysql)
        } else {
            Err(format!(
                "database URL {} is not sqlite://, postgres:// or mysql://",
                redact(url)
            ))
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }

    pub(super) fn placeholder(self, n: usize) -> String {
        match self {
            Backend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        }
    }

    /// `SUM(col)` as a BIGINT every backend decodes to i64.
    pub(super) fn sum(self, col: &str) -> String {
        match self {
            Backend::Postgres => format!("CAST(COALESCE(SUM({col}), 0) AS BIGINT)"),
            Backend::Mysql => format!("CAST(COALESCE(SUM({col}), 0) AS SIGNED)"),
            Backend::Sqlite => format!("COALESCE(SUM({col}), 0)"),
        }
    }

    /// Upsert of `rows` (id, delta) rows into a baseline table.
    pub(super) fn upsert(self, table: &str, rows: usize) -> String {
        let mut sql = format!("INSERT INTO {table} (id, total, version) VALUES ");
        for i in 0..rows {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "({}, {}, 1)",
                self.placeholder(2 * i + 1),
                self.placeholder(2 * i + 2)
            ));
        }
        match self {
            Backend::Mysql => sql.push_str(
                " ON DUPLICATE KEY UPDATE total = total + VALUES(total), version = version + 1",
            ),
            _ => sql.push_str(&format!(
                " ON CONFLICT (id) DO UPDATE SET total = {table}.total + excluded.total, \
                 version = {table}.version + 1"
            )),
        }
        sql
    }
}

/// Rows per statement in the raw baseline: two parameters per row stays under every
/// backend's parameter limit.
pub(super) const ROWS_PER_STATEMENT: usize = 5_000;

pub(super) async fn connect(url: &str, max: u32) -> Result<sqlx::AnyPool, String> {
    sqlx::any::install_default_drivers();
    // One plain connection first: a pool would retry until its timeout and hide the cause.
    let probe = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))?;
    let _ = sqlx::Connection::close(probe).await;
    sqlx::pool::PoolOptions::<sqlx::Any>::new()
        .max_connections(max)
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))
}

/// SQL text for sqlx. The baselines measure raw sqlx on purpose, so they
/// build their own statements: only tables the bench named itself, every
/// value a bind parameter.
pub(super) fn sql_text(sql: &str) -> sqlx::SqlStr {
    use sqlx::SqlSafeStr;
    sqlx::AssertSqlSafe(sql).into_sql_str()
}

pub(super) async fn exec(pool: &sqlx::AnyPool, sql: &str) -> Result<(), String> {
    sqlx::query(sql_text(sql))
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| format!("{sql}: {e}"))
}

pub(super) async fn total(
    pool: &sqlx::AnyPool,
    backend: Backend,
    table: &str,
    col: &str,
) -> Result<i64, String> {
    let sql = format!("SELECT {} AS s FROM {table}", backend.sum(col));
    let row = sqlx::query(sql_text(&sql))
        .fetch_one(pool)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    row.try_get::<i64, _>("s")
        .map_err(|e| format!("{sql}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_shapes() {
        assert_eq!(
            Backend::Postgres.upsert("t", 2),
            "INSERT INTO t (id, total, version) VALUES ($1, $2, 1),($3, $4, 1) ON CONFLICT (id) \
             DO UPDATE SET total = t.total + excluded.total, version = t.version + 1"
        );
        assert!(Backend::Mysql
            .upsert("t", 1)
            .ends_with("version = version + 1"));
    }
}
