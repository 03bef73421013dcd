//! Write-behind into the user's own tables (issue 22): tables created by
//! plain SQL before the cache opens, typed and composite keys in their
//! native column types, delta records (counter columns added per column),
//! update-only mappings, the schema check at open, and crash + reopen on a
//! mapped table. SQLite always; PostgreSQL (WB_POSTGRES_URL) and MariaDB
//! (WB_MYSQL_URL) with their features (`scripts/test` builds all).
//!
//! The `Record` impls are written by hand here, as `#[derive(Record)]`
//! would write them.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use writebehind::{Column, Error, Mapping, Record, SqlType, SqlValue, WriteBehind, WriteMode};

// ---- the records ----

/// Defines a delta record `$name { views, likes }` (two counters) on the
/// key column `id`, without a version column, in the write mode `$mode`.
macro_rules! post_counters {
    ($name:ident, $mode:expr, $table:expr) => {
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        struct $name {
            views: i64,
            likes: i64,
        }

        impl Record for $name {
            fn columns() -> Vec<Column> {
                vec![
                    Column::counter("views").unwrap(),
                    Column::counter("likes").unwrap(),
                ]
            }
            fn to_row(&self) -> Vec<SqlValue> {
                vec![SqlValue::Int(self.views), SqlValue::Int(self.likes)]
            }
            fn from_row(row: Vec<SqlValue>) -> Result<Self, String> {
                match row.as_slice() {
                    [SqlValue::Int(views), SqlValue::Int(likes)] => Ok($name {
                        views: *views,
                        likes: *likes,
                    }),
                    other => Err(format!("unexpected row {other:?}")),
                }
            }
            fn mapping() -> Mapping {
                let m = Mapping::new()
                    .key_columns(&["id"])
                    .version_column(None)
                    .mode($mode);
                match $table {
                    Some(t) => m.table(t),
                    None => m,
                }
            }
        }
    };
}

post_counters!(PostCounters, WriteMode::Upsert, None::<&str>);
post_counters!(PostCountersUpdateOnly, WriteMode::UpdateOnly, None::<&str>);
post_counters!(PostCountersNamed, WriteMode::Upsert, Some("named_posts"));

fn pc(views: i64, likes: i64) -> PostCounters {
    PostCounters { views, likes }
}

/// A one-counter delta record keyed by a UUID column `id`.
#[cfg(feature = "uuid")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Hits {
    hits: i64,
}

#[cfg(feature = "uuid")]
impl Record for Hits {
    fn columns() -> Vec<Column> {
        vec![Column::counter("hits").unwrap()]
    }
    fn to_row(&self) -> Vec<SqlValue> {
        vec![SqlValue::Int(self.hits)]
    }
    fn from_row(row: Vec<SqlValue>) -> Result<Self, String> {
        match row.as_slice() {
            [SqlValue::Int(hits)] => Ok(Hits { hits: *hits }),
            other => Err(format!("unexpected row {other:?}")),
        }
    }
    fn mapping() -> Mapping {
        Mapping::new().key_columns(&["id"]).version_column(None)
    }
}

/// A puts-only record on the composite key `(post_id, lang)`, with a
/// nullable text column and no version column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Translation {
    title: String,
    summary: Option<String>,
}

impl Record for Translation {
    fn columns() -> Vec<Column> {
        vec![
            Column::new("title", SqlType::Text, false).unwrap(),
            Column::new("summary", SqlType::Text, true).unwrap(),
        ]
    }
    fn to_row(&self) -> Vec<SqlValue> {
        vec![
            SqlValue::Text(self.title.clone()),
            self.summary.clone().map_or(SqlValue::Null, SqlValue::Text),
        ]
    }
    fn from_row(row: Vec<SqlValue>) -> Result<Self, String> {
        match <[SqlValue; 2]>::try_from(row) {
            Ok([SqlValue::Text(title), summary]) => Ok(Translation {
                title,
                summary: match summary {
                    SqlValue::Null => None,
                    SqlValue::Text(s) => Some(s),
                    other => return Err(format!("summary holds {other:?}")),
                },
            }),
            other => Err(format!("unexpected row {other:?}")),
        }
    }
    fn mapping() -> Mapping {
        Mapping::new()
            .key_columns(&["post_id", "lang"])
            .version_column(None)
    }
}

/// A record whose key columns do not match its key type `i64` (two
/// columns for a one-column key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct TwoKeyColumns {
    views: i64,
}

impl Record for TwoKeyColumns {
    fn columns() -> Vec<Column> {
        vec![Column::counter("views").unwrap()]
    }
    fn to_row(&self) -> Vec<SqlValue> {
        vec![SqlValue::Int(self.views)]
    }
    fn from_row(_: Vec<SqlValue>) -> Result<Self, String> {
        Err("never read".into())
    }
    fn mapping() -> Mapping {
        Mapping::new().key_columns(&["id", "lang"])
    }
}

// ---- the databases ----

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

struct Db {
    url: String,
    backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("db.sqlite").display()
        );
        Db {
            url,
            backend: Backend::Sqlite,
            _dir: Some(dir),
        }
    }

    fn from_env(var: &str) -> Db {
        let url = std::env::var(var).unwrap_or_else(|_| {
            panic!(
                "{var} is not set. Run the tests with scripts/test, or set it, e.g. \
                 {var}=postgres://postgres@127.0.0.1:5432/test or mysql://root@127.0.0.1:3306/test"
            )
        });
        let backend = if url.starts_with("mysql") {
            Backend::Mysql
        } else {
            Backend::Postgres
        };
        Db {
            url,
            backend,
            _dir: None,
        }
    }

    async fn pool(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::AnyPool::connect(&self.url).await.unwrap()
    }

    async fn exec(&self, sql: &str) {
        let pool = self.pool().await;
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }

    async fn query(&self, sql: &str) -> Vec<sqlx::any::AnyRow> {
        let pool = self.pool().await;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows
    }

    /// A fresh table name (the servers are shared by parallel tests).
    fn table(&self, what: &str) -> String {
        format!("wb_{what}_{:x}", fastrand::u32(..))
    }

    /// `posts(id BIGINT PRIMARY KEY, title TEXT, views BIGINT NOT NULL
    /// DEFAULT 0, likes BIGINT NOT NULL DEFAULT 0)` and its rows.
    async fn posts(&self, table: &str, rows: &[(i64, &str, i64, i64)]) {
        self.exec(&format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, title TEXT, \
             views BIGINT NOT NULL DEFAULT 0, likes BIGINT NOT NULL DEFAULT 0)"
        ))
        .await;
        for (id, title, views, likes) in rows {
            self.exec(&format!(
                "INSERT INTO {table} (id, title, views, likes) VALUES ({id}, '{title}', {views}, {likes})"
            ))
            .await;
        }
    }

    /// Every row of a posts table: id → (title, views, likes).
    async fn post_rows(
        &self,
        table: &str,
    ) -> std::collections::BTreeMap<i64, (Option<String>, i64, i64)> {
        self.query(&format!("SELECT id, title, views, likes FROM {table}"))
            .await
            .into_iter()
            .map(|r| {
                (
                    r.get::<i64, _>(0),
                    (
                        r.get::<Option<String>, _>(1),
                        r.get::<i64, _>(2),
                        r.get::<i64, _>(3),
                    ),
                )
            })
            .collect()
    }

    /// The dead letters of `table`: (key, error).
    async fn dead_letters(&self, table: &str) -> Vec<(String, String)> {
        self.query(&format!(
            "SELECT {k}, error FROM writebehind_dead_letters WHERE {t} = '{table}'",
            k = self.quote("key"),
            t = self.quote("table_name"),
        ))
        .await
        .into_iter()
        .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
        .collect()
    }

    fn quote(&self, ident: &str) -> String {
        match self.backend {
            Backend::Mysql => format!("`{ident}`"),
            _ => format!("\"{ident}\""),
        }
    }

    /// The column type of a UUID key here.
    #[cfg(feature = "uuid")]
    fn uuid_type(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "UUID",
            Backend::Mysql => "BINARY(16)",
            Backend::Sqlite => "BLOB",
        }
    }

    /// A UUID literal in the key column's type.
    #[cfg(feature = "uuid")]
    fn uuid_literal(&self, id: uuid::Uuid) -> String {
        let hex = id.simple().to_string();
        match self.backend {
            Backend::Postgres => format!("'{id}'::uuid"),
            Backend::Mysql => format!("UNHEX('{hex}')"),
            Backend::Sqlite => format!("X'{hex}'"),
        }
    }

    async fn drop_table(&self, table: &str) {
        self.exec(&format!("DROP TABLE IF EXISTS {table}")).await;
    }
}

fn builder<K: writebehind::CacheKey, V: writebehind::CacheValue>(
    db: &Db,
    dir: &std::path::Path,
    table: &str,
) -> writebehind::Builder<K, V> {
    WriteBehind::<K, V>::builder(dir)
        .database(&db.url)
        .table(table)
        // The bookkeeping tables; the data table is the test's own.
        .create_tables(true)
        .flush_interval(Duration::from_secs(3600))
        .wait_timeout(Duration::from_secs(20))
}

// ---- the tests ----

/// The case: two counters in one row of an existing table, added
/// behind the cache, an unmapped column that keeps its value.
async fn delta_record_adds_per_column_and_leaves_other_columns_alone(db: &Db) {
    let table = db.table("posts");
    db.posts(&table, &[(1, "hello", 10, 0), (9, "untouched", 4, 4)])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<i64, PostCounters>(db, dir.path(), &table)
        .open()
        .await
        .unwrap();
    for _ in 0..3 {
        cache.add(&1, pc(1, 0)).await.unwrap();
    }
    cache.add(&1, pc(0, 2)).await.unwrap();
    cache.add(&2, pc(5, 1)).await.unwrap();
    cache.add(&2, pc(-1, 0)).await.unwrap();
    // Per key, one coalesced entry.
    assert_eq!(cache.stats().dirty_entries, 2);
    // Reads: the row plus the pending deltas (no row: zeros).
    assert_eq!(cache.get(&1).await.unwrap(), Some(pc(13, 2)));
    assert_eq!(cache.get(&2).await.unwrap(), Some(pc(4, 1)));
    assert_eq!(
        db.post_rows(&table).await[&1],
        (Some("hello".into()), 10, 0)
    );
    cache.flush().await.unwrap();
    let stats = cache.stats();
    assert_eq!(stats.rows_flushed, 2, "{stats:?}");
    assert_eq!(stats.dirty_entries, 0);
    let rows = db.post_rows(&table).await;
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[&1], (Some("hello".into()), 13, 2), "title kept");
    // Inserted by the upsert: the unmapped column takes its default (NULL).
    assert_eq!(rows[&2], (None, 4, 1));
    assert_eq!(rows[&9], (Some("untouched".into()), 4, 4));
    // After the flush: the same values, and more adds land on top.
    assert_eq!(cache.get(&1).await.unwrap(), Some(pc(13, 2)));
    cache.add(&1, pc(7, 0)).await.unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some(pc(20, 2)));
    // A row changed behind the cache: the pending delta adds to the new row.
    db.exec(&format!("UPDATE {table} SET likes = 100 WHERE id = 1"))
        .await;
    cache.invalidate(&1).await.unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some(pc(20, 100)));
    cache.close().await.unwrap();
    assert_eq!(
        db.post_rows(&table).await[&1],
        (Some("hello".into()), 20, 100)
    );
    // A fresh cache reads the row through.
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<i64, PostCounters>(db, dir.path(), &table)
        .open()
        .await
        .unwrap();
    assert_eq!(cache.get(&9).await.unwrap(), Some(pc(4, 4)));
    assert_eq!(cache.get(&404).await.unwrap(), None);
    cache.close().await.unwrap();
    db.drop_table(&table).await;
}

/// A delta record keeps no copy of its totals after a flush (no
/// read-back by default): other code writes the table too, so a read after
/// the flush loads the row and adds what is pending.
async fn a_delta_records_read_after_a_flush_loads_the_row(db: &Db) {
    let table = db.table("posts_rb");
    db.posts(&table, &[(1, "one", 10, 0)]).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<i64, PostCounters>(db, dir.path(), &table)
        .open()
        .await
        .unwrap();
    cache.add(&1, pc(1, 0)).await.unwrap();
    cache.flush().await.unwrap();
    db.exec(&format!(
        "UPDATE {table} SET views = views + 100 WHERE id = 1"
    ))
    .await;
    let loads = cache.stats().loads;
    assert_eq!(cache.get(&1).await.unwrap(), Some(pc(111, 0)));
    assert_eq!(cache.stats().loads, loads + 1);
    cache.add(&1, pc(1, 2)).await.unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some(pc(112, 2)));
    cache.close().await.unwrap();
    assert_eq!(db.post_rows(&table).await[&1], (Some("one".into()), 112, 2));
    db.drop_table(&table).await;
}

/// `put` of a delta record sets the counters; later adds fold into it.
async fn delta_record_puts_set_and_adds_fold_in(db: &Db) {
    let table = db.table("posts_put");
    db.posts(&table, &[(1, "a", 50, 50)]).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<i64, PostCounters>(db, dir.path(), &table)
        .open()
        .await
        .unwrap();
    cache.put(&1, &pc(3, 4)).await.unwrap();
    cache.add(&1, pc(1, 1)).await.unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some(pc(4, 5)));
    cache.close().await.unwrap();
    assert_eq!(db.post_rows(&table).await[&1], (Some("a".into()), 4, 5));
    db.drop_table(&table).await;
}

/// Update-only: a key with no row is dead-lettered with that reason, the
/// others are flushed, and no row is inserted.
async fn update_only_dead_letters_a_missing_row_and_flushes_the_rest(db: &Db) {
    let table = db.table("posts_uo");
    db.posts(&table, &[(1, "one", 1, 1), (2, "two", 2, 2)])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<i64, PostCountersUpdateOnly>(db, dir.path(), &table)
        .open()
        .await
        .unwrap();
    let d = |views, likes| PostCountersUpdateOnly { views, likes };
    cache.add(&1, d(10, 0)).await.unwrap();
    cache.add(&2, d(0, 20)).await.unwrap();
    cache.add(&3, d(30, 30)).await.unwrap();
    cache.add(&3, d(1, 1)).await.unwrap();
    cache.flush().await.unwrap();
    let stats = cache.stats();
    assert_eq!(stats.dead_letters, 1, "{stats:?}");
    assert_eq!(stats.dirty_entries, 0);
    cache.close().await.unwrap();
    let rows = db.post_rows(&table).await;
    assert_eq!(rows.len(), 2, "no row inserted: {rows:?}");
    assert_eq!(rows[&1], (Some("one".into()), 11, 1));
    assert_eq!(rows[&2], (Some("two".into()), 2, 22));
    let dead = db.dead_letters(&table).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "3");
    assert!(dead[0].1.contains("no row with this key"), "{dead:?}");
    db.drop_table(&table).await;
}

/// A UUID key in the backend's native UUID column type.
#[cfg(feature = "uuid")]
async fn uuid_keys_bind_the_native_column_type(db: &Db) {
    let table = db.table("sessions");
    db.exec(&format!(
        "CREATE TABLE {table} (id {} PRIMARY KEY, hits BIGINT NOT NULL DEFAULT 0, note TEXT)",
        db.uuid_type()
    ))
    .await;
    let a = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
    let b = uuid::Uuid::from_u128(0xffee_ddcc_bbaa_9988_7766_5544_3322_1100);
    db.exec(&format!(
        "INSERT INTO {table} (id, hits, note) VALUES ({}, 100, 'keep')",
        db.uuid_literal(a)
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<uuid::Uuid, Hits>(db, dir.path(), &table)
        .open()
        .await
        .unwrap();
    cache.add(&a, Hits { hits: 2 }).await.unwrap();
    cache.add(&b, Hits { hits: 5 }).await.unwrap();
    cache.add(&a, Hits { hits: 3 }).await.unwrap();
    assert_eq!(cache.get(&a).await.unwrap(), Some(Hits { hits: 105 }));
    cache.close().await.unwrap();
    let hits = |id| {
        let sql = format!(
            "SELECT hits, note FROM {table} WHERE id = {}",
            db.uuid_literal(id)
        );
        async move {
            let rows = db.query(&sql).await;
            assert_eq!(rows.len(), 1);
            (
                rows[0].get::<i64, _>(0),
                rows[0].get::<Option<String>, _>(1),
            )
        }
    };
    assert_eq!(hits(a).await, (105, Some("keep".into())));
    assert_eq!(hits(b).await, (5, None));
    // Read through by UUID from a fresh cache.
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<uuid::Uuid, Hits>(db, dir.path(), &table)
        .open()
        .await
        .unwrap();
    assert_eq!(cache.get(&b).await.unwrap(), Some(Hits { hits: 5 }));
    cache.close().await.unwrap();
    db.drop_table(&table).await;
}

#[cfg(not(feature = "uuid"))]
async fn uuid_keys_bind_the_native_column_type(_: &Db) {}

/// post_id, lang, title, summary, extra.
type TranslationRow = (i64, String, String, Option<String>, Option<String>);

/// A composite key `(i64, String)` on a two-column primary key; puts with
/// no version column (last writer wins), deletes.
async fn composite_keys_map_to_a_two_column_primary_key(db: &Db) {
    let table = db.table("translations");
    // On MariaDB the text key column has a collation other than the
    // connection's (utf8mb4_bin there): the read-back must still work.
    let collate = match db.backend {
        Backend::Mysql => " COLLATE utf8mb4_unicode_ci",
        _ => "",
    };
    db.exec(&format!(
        "CREATE TABLE {table} (post_id BIGINT NOT NULL, lang VARCHAR(16){collate} NOT NULL, \
         title TEXT NOT NULL, summary TEXT, extra TEXT, PRIMARY KEY (post_id, lang))"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO {table} (post_id, lang, title, summary, extra) VALUES (1, 'en', 'old', NULL, 'x')"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<(i64, String), Translation>(db, dir.path(), &table)
        .open()
        .await
        .unwrap();
    let t = |title: &str, summary: Option<&str>| Translation {
        title: title.into(),
        summary: summary.map(Into::into),
    };
    let en = (1i64, "en".to_string());
    let fr = (1i64, "fr".to_string());
    let de = (2i64, "de".to_string());
    assert_eq!(cache.get(&en).await.unwrap(), Some(t("old", None)));
    cache.put(&en, &t("Hello", Some("hi"))).await.unwrap();
    cache.put(&fr, &t("Bonjour", None)).await.unwrap();
    cache.put(&de, &t("Hallo", None)).await.unwrap();
    cache.put(&fr, &t("Salut", None)).await.unwrap();
    cache.flush().await.unwrap();
    cache.delete(&de).await.unwrap();
    cache.close().await.unwrap();
    let rows: Vec<TranslationRow> = db
        .query(&format!(
            "SELECT post_id, lang, title, summary, extra FROM {table} ORDER BY post_id, lang"
        ))
        .await
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        rows,
        [
            (
                1,
                "en".into(),
                "Hello".into(),
                Some("hi".into()),
                Some("x".into())
            ),
            (1, "fr".into(), "Salut".into(), None, None),
        ]
    );
    // Read through on both key columns.
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<(i64, String), Translation>(db, dir.path(), &table)
        .open()
        .await
        .unwrap();
    assert_eq!(cache.get(&fr).await.unwrap(), Some(t("Salut", None)));
    assert_eq!(cache.get(&de).await.unwrap(), None);
    assert_eq!(cache.get(&(1i64, "es".to_string())).await.unwrap(), None);
    cache.close().await.unwrap();
    db.drop_table(&table).await;
}

/// A counter column of the wrong type: `Error::Schema` at open, naming
/// the table, the column, what was expected and what was found; nothing
/// is accepted.
async fn a_wrong_column_type_is_a_schema_error_at_open(db: &Db) {
    let table = db.table("posts_bad");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, title TEXT, views TEXT, likes BIGINT NOT NULL DEFAULT 0)"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let err = builder::<i64, PostCounters>(db, dir.path(), &table)
        .open()
        .await
        .err()
        .expect("open must fail");
    match &err {
        Error::Schema {
            table: t,
            column,
            expected,
            found,
        } => {
            assert_eq!(t, &table);
            assert_eq!(column.as_deref(), Some("views"));
            assert!(!expected.is_empty() && !found.is_empty(), "{err}");
            assert!(found.to_lowercase().contains("text"), "{err}");
        }
        other => panic!("expected Error::Schema, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&table) && text.contains("views"),
        "the message names table and column: {text}"
    );
    // The table is untouched.
    assert!(db.post_rows_raw(&table).await.is_empty());
    db.drop_table(&table).await;
}

/// Each mismatch the check at open finds, as one `Error::Schema` naming
/// table, column, expected and found.
async fn every_schema_mismatch_is_one_typed_error_at_open(db: &Db) {
    async fn open_err(db: &Db, table: &str, create: bool) -> Error {
        let dir = tempfile::tempdir().unwrap();
        builder::<i64, PostCounters>(db, dir.path(), table)
            .create_tables(create)
            .open()
            .await
            .err()
            .expect("open must fail")
    }
    fn fields(e: &Error) -> (&str, Option<&str>, &str, &str) {
        match e {
            Error::Schema {
                table,
                column,
                expected,
                found,
            } => (table, column.as_deref(), expected, found),
            other => panic!("expected Error::Schema, got {other:?}"),
        }
    }
    // A missing table (not created: create_tables is off).
    let missing = db.table("posts_missing");
    let e = open_err(db, &missing, false).await;
    let (t, column, _, _) = fields(&e);
    assert_eq!((t, column), (missing.as_str(), None), "{e}");
    assert!(e.to_string().contains(&missing), "{e}");

    // A missing column.
    let table = db.table("posts_nolikes");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, title TEXT, views BIGINT NOT NULL DEFAULT 0)"
    ))
    .await;
    let e = open_err(db, &table, true).await;
    let (t, column, _, _) = fields(&e);
    assert_eq!((t, column), (table.as_str(), Some("likes")), "{e}");
    db.drop_table(&table).await;

    // A key column that is neither the primary key nor unique.
    let table = db.table("posts_nokey");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT NOT NULL, title TEXT, \
         views BIGINT NOT NULL DEFAULT 0, likes BIGINT NOT NULL DEFAULT 0)"
    ))
    .await;
    let e = open_err(db, &table, true).await;
    let (t, column, _, _) = fields(&e);
    assert_eq!((t, column), (table.as_str(), Some("id")), "{e}");
    db.drop_table(&table).await;

    // A key column of the wrong type (text for an i64 key).
    let table = db.table("posts_textkey");
    db.exec(&format!(
        "CREATE TABLE {table} (id VARCHAR(64) PRIMARY KEY, title TEXT, \
         views BIGINT NOT NULL DEFAULT 0, likes BIGINT NOT NULL DEFAULT 0)"
    ))
    .await;
    let e = open_err(db, &table, true).await;
    let (t, column, _, found) = fields(&e);
    assert_eq!((t, column), (table.as_str(), Some("id")), "{e}");
    assert!(
        found.to_lowercase().contains("char") || found.to_lowercase().contains("text"),
        "{e}"
    );
    db.drop_table(&table).await;

    // An upsert mapping on a table with a NOT NULL column it does not write
    // and that has no default: every insert would fail, so open refuses it;
    // the same table takes an update-only mapping.
    let table = db.table("posts_title_nn");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, title VARCHAR(200) NOT NULL, \
         views BIGINT NOT NULL DEFAULT 0, likes BIGINT NOT NULL DEFAULT 0)"
    ))
    .await;
    let e = open_err(db, &table, true).await;
    assert_eq!(
        fields(&e),
        (
            table.as_str(),
            Some("title"),
            "a column an insert may leave out (nullable or with a default), or an update-only mapping",
            "NOT NULL without a default"
        ),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<i64, PostCountersUpdateOnly>(db, dir.path(), &table)
        .open()
        .await
        .unwrap();
    cache.close().await.unwrap();
    db.drop_table(&table).await;
}

/// Drop without close (a crash as far as the database is concerned),
/// reopen, flush: every acknowledged add exactly once, including across
/// a flush that happened before the crash.
async fn crash_and_reopen_on_a_mapped_table_keeps_every_add_once(db: &Db) {
    let table = db.table("posts_crash");
    db.posts(&table, &[(1, "keep me", 100, 0)]).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<i64, PostCounters>(db, dir.path(), &table)
        .open()
        .await
        .unwrap();
    for i in 0..20 {
        cache.add(&1, pc(1, i % 2)).await.unwrap();
        cache.add(&(i % 4 + 2), pc(2, 1)).await.unwrap();
    }
    cache.flush().await.unwrap();
    for _ in 0..7 {
        cache.add(&1, pc(1, 1)).await.unwrap();
        cache.add(&5, pc(0, 3)).await.unwrap();
    }
    drop(cache);
    let cache = builder::<i64, PostCounters>(db, dir.path(), &table)
        .open()
        .await
        .unwrap();
    assert!(
        cache.recovery().dirty_entries >= 2,
        "{:?}",
        cache.recovery()
    );
    assert_eq!(cache.get(&1).await.unwrap(), Some(pc(127, 17)));
    cache.add(&1, pc(1, 0)).await.unwrap();
    cache.flush().await.unwrap();
    cache.close().await.unwrap();
    let rows = db.post_rows(&table).await;
    assert_eq!(rows[&1], (Some("keep me".into()), 128, 17));
    for id in 2..=4 {
        assert_eq!(rows[&id], (None, 10, 5), "id {id}");
    }
    assert_eq!(rows[&5], (None, 10, 26));
    assert_eq!(rows.len(), 5);
    db.drop_table(&table).await;
}

impl Db {
    async fn post_rows_raw(&self, table: &str) -> Vec<sqlx::any::AnyRow> {
        self.query(&format!("SELECT id FROM {table}")).await
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Db::sqlite()).await;
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Db::from_env("WB_POSTGRES_URL")).await;
                }
            )*
        }
        #[cfg(feature = "mysql")]
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Db::from_env("WB_MYSQL_URL")).await;
                }
            )*
        }
    };
}

suite!(
    delta_record_adds_per_column_and_leaves_other_columns_alone,
    a_delta_records_read_after_a_flush_loads_the_row,
    delta_record_puts_set_and_adds_fold_in,
    update_only_dead_letters_a_missing_row_and_flushes_the_rest,
    uuid_keys_bind_the_native_column_type,
    composite_keys_map_to_a_two_column_primary_key,
    a_wrong_column_type_is_a_schema_error_at_open,
    every_schema_mismatch_is_one_typed_error_at_open,
    crash_and_reopen_on_a_mapped_table_keeps_every_add_once,
);

// ---- a database outage on a mapped table (PostgreSQL behind a proxy) ----

#[cfg(feature = "postgres")]
#[path = "../writer/tests/common/proxy.rs"]
mod proxy;

/// The failure path on the user's own table: PostgreSQL goes away while
/// delta records keep coming; every add is acknowledged from the WAL, the
/// flush rounds fail, are counted and back off, and once the database is
/// back one flush brings every row to exactly what was added, the unmapped
/// column untouched, nothing doubled.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_on_a_mapped_table_loses_and_doubles_nothing() {
    use proxy::{via_proxy, Proxy};
    use writebehind::RetryPolicy;
    let db = Db::from_env("WB_POSTGRES_URL");
    let table = db.table("posts_outage");
    db.posts(
        &table,
        &[(1, "one", 0, 0), (2, "two", 5, 5), (3, "three", 0, 0)],
    )
    .await;
    let (upstream, _) = via_proxy(&db.url, 0);
    let proxy = Proxy::start(upstream).await;
    let (_, proxied) = via_proxy(&db.url, proxy.port);
    let dir = tempfile::tempdir().unwrap();
    let cache = WriteBehind::<i64, PostCountersUpdateOnly>::builder(dir.path())
        .database(&proxied)
        .table(&table)
        .create_tables(true)
        .retry(RetryPolicy {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            max_attempts: Some(3),
            breaker_cooldown: Duration::from_millis(200),
            ..RetryPolicy::default()
        })
        .flush_interval(Duration::from_millis(50))
        .wait_timeout(Duration::from_secs(20))
        .open()
        .await
        .unwrap();
    let add = |views, likes| PostCountersUpdateOnly { views, likes };
    for _ in 0..10 {
        cache.add(&1, add(1, 0)).await.unwrap();
    }
    cache.flush().await.unwrap();

    proxy.set_down(true);
    for i in 0..90i64 {
        cache.add(&(i % 3 + 1), add(1, i % 2)).await.unwrap();
    }
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while cache.stats().flush_failures == 0 {
        assert!(
            std::time::Instant::now() < until,
            "no flush failed while the database was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    proxy.set_down(false);
    cache.flush().await.unwrap();
    cache.close().await.unwrap();
    let rows = db.post_rows(&table).await;
    // i % 3 picks the post, i % 2 the like: each post gets 30 views and
    // 15 likes, the first the 10 views from before the outage too.
    assert_eq!(rows[&1], (Some("one".into()), 40, 15));
    assert_eq!(rows[&2], (Some("two".into()), 35, 20));
    assert_eq!(rows[&3], (Some("three".into()), 30, 15));
    assert_eq!(rows.len(), 3);
    db.drop_table(&table).await;
}

// ---- without a database, or SQLite only ----

#[tokio::test]
async fn key_columns_that_do_not_match_the_key_type_are_a_config_error_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let err = WriteBehind::<i64, TwoKeyColumns>::builder(dir.path())
        .open()
        .await
        .err()
        .expect("open must fail");
    match &err {
        Error::Config(m) => assert!(
            m.contains("2 key column(s) (id, lang)") && m.contains("has 1"),
            "{m}"
        ),
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

#[tokio::test]
async fn add_of_a_record_with_set_columns_is_refused_before_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let cache = WriteBehind::<(i64, String), Translation>::builder(dir.path())
        .open()
        .await
        .unwrap();
    let t = Translation {
        title: "x".into(),
        summary: None,
    };
    let err = cache.add(&(1, "en".to_string()), t).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert_eq!(cache.stats().last_lsn, 0, "nothing was logged");
    cache.close().await.unwrap();
}

#[tokio::test]
async fn the_mappings_table_wins_over_the_builders() {
    let db = Db::sqlite();
    db.posts("named_posts", &[(1, "t", 1, 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<i64, PostCountersNamed>(&db, dir.path(), "not_this_table")
        .open()
        .await
        .unwrap();
    cache
        .add(&1, PostCountersNamed { views: 1, likes: 2 })
        .await
        .unwrap();
    cache.close().await.unwrap();
    assert_eq!(
        db.post_rows("named_posts").await[&1],
        (Some("t".into()), 2, 3)
    );
}

#[tokio::test]
async fn a_non_canonical_key_text_is_refused_before_the_wal() {
    // "042" would be a second cache entry for the row of 42.
    let db = Db::sqlite();
    let table = db.table("posts_canon");
    db.posts(&table, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<i64, PostCounters>(&db, dir.path(), &table)
        .open()
        .await
        .unwrap();
    let err = cache.add("042", pc(1, 1)).await.unwrap_err();
    assert!(matches!(err, Error::KeyRefused { .. }), "{err:?}");
    cache.add("42", pc(1, 1)).await.unwrap();
    cache.add(&42, pc(1, 1)).await.unwrap();
    cache.close().await.unwrap();
    assert_eq!(db.post_rows(&table).await[&42], (None, 2, 2));
}

#[tokio::test]
async fn the_bookkeeping_tables_take_the_configured_prefix() {
    let db = Db::sqlite();
    let table = db.table("posts_prefix");
    db.posts(&table, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = builder::<i64, PostCountersUpdateOnly>(&db, dir.path(), &table)
        .bookkeeping_prefix("app_wb_")
        .open()
        .await
        .unwrap();
    cache
        .add(&1, PostCountersUpdateOnly { views: 1, likes: 0 })
        .await
        .unwrap();
    cache.close().await.unwrap();
    let names: Vec<String> = db
        .query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .await
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        names,
        [
            "app_wb_conflicts".to_string(),
            "app_wb_dead_letters".into(),
            "app_wb_progress".into(),
            table.clone(),
        ]
    );
    let dead = db
        .query(&format!(
            "SELECT key FROM app_wb_dead_letters WHERE table_name = '{table}'"
        ))
        .await;
    assert_eq!(dead.len(), 1);
    let err = WriteBehind::<i64, PostCounters>::builder(tempfile::tempdir().unwrap().path())
        .database(&db.url)
        .bookkeeping_prefix("bad prefix ")
        .open()
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, Error::InvalidIdentifier { .. }), "{err:?}");
}

/// A delta record in a cache without a database: reads are the sums.
#[test]
fn delta_records_coalesce_without_a_database_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        WriteBehind::<i64, PostCounters>::builder(dir.path())
            .open_blocking()
            .unwrap()
    };
    let cache = open();
    cache.add_blocking(&1, pc(1, 2)).unwrap();
    cache
        .add_blocking_with(&1, pc(3, 4), writebehind::Durability::Fsync)
        .unwrap();
    assert_eq!(cache.get_blocking(&1).unwrap(), Some(pc(4, 6)));
    drop(cache);
    let cache = open();
    assert_eq!(cache.get_blocking(&1).unwrap(), Some(pc(4, 6)));
    cache.add_blocking(&1, pc(-4, 0)).unwrap();
    assert_eq!(cache.get_blocking(&1).unwrap(), Some(pc(0, 6)));
    cache.close_blocking().unwrap();
}
