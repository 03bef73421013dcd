//! Test fixtures: one database per backend, unique table names per test.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use writebehind_writer::{
    Backend, Change, Cut, Expected, FlushItem, Ident, ItemOutcome, Key, Retrier, RetryPolicy,
    SqlType, SqlValue, TableSpec, Value, Writer, WriterConfig,
};

/// The URL for `var`, or a failure that says how to set it.
pub fn env_url(var: &str, example: &str) -> String {
    match std::env::var(var) {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "{var} is not set. These tests need a real database: export {var}={example} \
             (CI's .ci/run sets it), or run only the SQLite suite with default features."
        ),
    }
}

/// One test's database and table names; drops its tables on `cleanup`.
pub struct Fixture {
    pub url: String,
    pub backend: Backend,
    pub prefix: String,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    pub fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("wb.db").display());
        Fixture::with(url, Some(dir))
    }

    pub fn postgres() -> Fixture {
        Fixture::with(
            env_url("WB_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
            None,
        )
    }

    pub fn mysql() -> Fixture {
        Fixture::with(
            env_url("WB_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
            None,
        )
    }

    fn with(url: String, dir: Option<tempfile::TempDir>) -> Fixture {
        let backend = Backend::from_url(&url).unwrap();
        let prefix = format!("wbt_{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff);
        Fixture {
            url,
            backend,
            prefix,
            _dir: dir,
        }
    }

    pub fn name(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix)
    }

    /// A config for `instance` on this fixture's tables (counter table by default).
    pub fn config(&self, instance: &str) -> WriterConfig {
        WriterConfig::new(format!("{}_{instance}", self.prefix))
            .table(TableSpec::counter(&self.name("data")).unwrap())
            .progress_table(Ident::new(&self.name("progress")).unwrap())
            .conflicts_table(Ident::new(&self.name("conflicts")).unwrap())
            .dead_letter_table(Ident::new(&self.name("dead")).unwrap())
    }

    pub async fn writer(&self, cfg: WriterConfig) -> Writer {
        let w = Writer::connect(&self.url, cfg).await.unwrap();
        w.create_tables().await.unwrap();
        w
    }

    /// A quoted identifier for hand-written test SQL.
    pub fn q(&self, name: &str) -> String {
        match self.backend {
            Backend::MySql => format!("`{name}`"),
            _ => format!("\"{name}\""),
        }
    }

    /// The key column type the writer uses on this backend.
    pub fn key_type(&self) -> &'static str {
        match self.backend {
            Backend::MySql => "VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
            _ => "TEXT",
        }
    }

    pub async fn cleanup(&self) {
        let w = Writer::connect(&self.url, WriterConfig::new("cleanup"))
            .await
            .unwrap();
        for t in ["data", "progress", "conflicts", "dead"] {
            w.execute_sql(&format!("DROP TABLE IF EXISTS {}", self.q(&self.name(t))))
                .await
                .unwrap();
        }
        w.close().await;
    }
}

pub fn key(s: &str) -> Key {
    Arc::from(s)
}

pub fn item(k: &str, change: Change, expected: Expected) -> FlushItem {
    FlushItem {
        key: key(k),
        change,
        expected,
    }
}

pub fn cut(position: u64, items: Vec<FlushItem>) -> Cut {
    Cut { position, items }
}

pub fn written(version: i64, value: Value) -> ItemOutcome {
    ItemOutcome::Written {
        version: Some(version),
        value: Some(value),
    }
}

/// Retries transient errors (deadlocks under concurrency) quickly.
pub fn fast_retrier() -> Retrier {
    Retrier::new(RetryPolicy {
        min_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(50),
        max_attempts: Some(100),
        breaker_threshold: 1000,
        ..RetryPolicy::default()
    })
}

pub async fn query(w: &Writer, sql: &str, types: &[SqlType]) -> Vec<Vec<SqlValue>> {
    w.query_sql(sql, types).await.unwrap()
}

pub fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_owned())
}
