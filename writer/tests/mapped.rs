//! Mapping to the user's own tables (issue 22), on SQLite (always),
//! PostgreSQL (`--features postgres`, WB_POSTGRES_URL) and MySQL/MariaDB
//! (`--features mysql`, WB_MYSQL_URL). Every table is created by plain SQL
//! first, as a user's existing table would be.
#![allow(clippy::unwrap_used)]
#![cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod common;

use std::sync::Arc;

use common::*;
use writebehind_writer::{
    Backend, Change, Column, Error, Expected, ItemOutcome, KeyCodec, RowCodec, SqlType, SqlValue,
    TableSpec, TextKey, Value, WriteMode, Writer, WriterConfig,
};

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        #[cfg(feature = "sqlite")]
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fx = crate::common::Fixture::sqlite();
                    crate::cases::$name(&fx).await;
                    fx.cleanup().await;
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fx = crate::common::Fixture::postgres();
                    crate::cases::$name(&fx).await;
                    fx.cleanup().await;
                }
            )*
        }
        #[cfg(feature = "mysql")]
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fx = crate::common::Fixture::mysql();
                    crate::cases::$name(&fx).await;
                    fx.cleanup().await;
                }
            )*
        }
    };
}

suite!(
    delta_record_adds_per_column_and_keeps_unmapped_columns,
    update_only_dead_letters_a_missing_row_and_flushes_the_rest,
    update_only_without_values_trusts_a_full_row_count,
    update_only_delta_on_a_uuid_key_with_a_version_column,
    update_only_delta_refused_for_one_row_dead_letters_that_row_alone,
    uuid_keys_round_trip,
    composite_keys_round_trip,
    puts_only_mapping_without_a_version_column,
    schema_check_names_table_column_expected_and_found,
    tables_created_from_the_mapping_pass_the_check,
    case_insensitive_key_collation_reads_back,
    update_only_with_a_case_insensitive_text_key,
    bookkeeping_tables_take_the_prefix,
);

/// A BIGINT key column; key text is the decimal integer.
struct IntKey(Vec<Column>);

impl IntKey {
    fn new(name: &str) -> Arc<IntKey> {
        Arc::new(IntKey(vec![
            Column::new(name, SqlType::BigInt, false).unwrap()
        ]))
    }
}

impl KeyCodec for IntKey {
    fn columns(&self) -> &[Column] {
        &self.0
    }
    fn to_sql(&self, key: &str) -> Result<Vec<SqlValue>, String> {
        key.parse()
            .map(|n| vec![SqlValue::Int(n)])
            .map_err(|e| format!("{key:?} is not an integer: {e}"))
    }
    fn from_sql(&self, row: Vec<SqlValue>) -> Result<String, String> {
        match &row[..] {
            [SqlValue::Int(n)] => Ok(n.to_string()),
            other => Err(format!("{other:?}")),
        }
    }
}

/// A UUID key column; key text is the hyphenated lowercase form.
struct UuidKey(Vec<Column>);

impl KeyCodec for UuidKey {
    fn columns(&self) -> &[Column] {
        &self.0
    }
    fn to_sql(&self, key: &str) -> Result<Vec<SqlValue>, String> {
        let hex: String = key.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 {
            return Err(format!("{key:?} is not a UUID"));
        }
        let mut b = [0u8; 16];
        for (i, x) in b.iter_mut().enumerate() {
            *x = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(vec![SqlValue::Uuid(b)])
    }
    fn from_sql(&self, row: Vec<SqlValue>) -> Result<String, String> {
        match &row[..] {
            [SqlValue::Uuid(b)] => Ok(uuid_text(b)),
            other => Err(format!("{other:?}")),
        }
    }
}

fn uuid_text(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `(tenant BIGINT, name TEXT)`; key text `tenant\u{1f}name`.
struct TenantKey(Vec<Column>);

impl TenantKey {
    fn new() -> Arc<TenantKey> {
        Arc::new(TenantKey(vec![
            Column::new("tenant", SqlType::BigInt, false).unwrap(),
            Column::new("name", SqlType::Text, false).unwrap(),
        ]))
    }
}

impl KeyCodec for TenantKey {
    fn columns(&self) -> &[Column] {
        &self.0
    }
    fn to_sql(&self, key: &str) -> Result<Vec<SqlValue>, String> {
        let (t, n) = key.split_once('\u{1f}').ok_or("no separator")?;
        Ok(vec![
            SqlValue::Int(t.parse().map_err(|_| "tenant")?),
            SqlValue::Text(n.to_owned()),
        ])
    }
    fn from_sql(&self, row: Vec<SqlValue>) -> Result<String, String> {
        match &row[..] {
            [SqlValue::Int(t), SqlValue::Text(n)] => Ok(format!("{t}\u{1f}{n}")),
            other => Err(format!("{other:?}")),
        }
    }
}

/// Columns only: delta records never call `to_row`/`from_row`; the
/// puts-only record is the UTF-8 title.
struct Cols(Vec<Column>);

impl RowCodec for Cols {
    fn columns(&self) -> &[Column] {
        &self.0
    }
    fn to_row(&self, value: &[u8]) -> Result<Vec<SqlValue>, String> {
        Ok(vec![SqlValue::Text(
            String::from_utf8(value.to_vec()).map_err(|e| e.to_string())?,
        )])
    }
    fn from_row(&self, row: Vec<SqlValue>) -> Result<Vec<u8>, String> {
        match &row[..] {
            [SqlValue::Text(t)] => Ok(t.as_bytes().to_vec()),
            [SqlValue::Null] => Ok(Vec::new()),
            other => Err(format!("{other:?}")),
        }
    }
}

fn post_counters() -> Arc<Cols> {
    Arc::new(Cols(vec![
        Column::counter("views").unwrap(),
        Column::counter("likes").unwrap(),
    ]))
}

fn ints(c: &[i64]) -> Value {
    Value::Ints(Arc::from(c))
}

fn cols(c: &[i64]) -> Change {
    Change::AddCols(Arc::from(c))
}

/// Written, with neither version nor value known (nothing read back).
fn unversioned_unknown() -> ItemOutcome {
    ItemOutcome::Written {
        version: None,
        value: None,
    }
}

fn unversioned(value: Value) -> ItemOutcome {
    ItemOutcome::Written {
        version: None,
        value: Some(value),
    }
}

mod cases {
    use super::*;

    fn uuid_type(fx: &Fixture) -> &'static str {
        match fx.backend {
            Backend::Postgres => "UUID",
            Backend::MySql => "BINARY(16)",
            Backend::Sqlite => "BLOB",
        }
    }

    /// A bounded text type (MySQL cannot index TEXT).
    fn name_type(fx: &Fixture) -> &'static str {
        match fx.backend {
            Backend::MySql => "VARCHAR(100)",
            _ => "TEXT",
        }
    }

    async fn sql(fx: &Fixture, sql: &str) {
        let w = Writer::connect(&fx.url, WriterConfig::new("ddl"))
            .await
            .unwrap();
        w.execute_sql(sql).await.unwrap();
        w.close().await;
    }

    /// A writer on the user's table: check_schema, then the bookkeeping tables.
    async fn open(fx: &Fixture, spec: TableSpec) -> Writer {
        open_with(fx, fx.config("i").table(spec)).await
    }

    /// [`open`] with a config of the test's own.
    async fn open_with(fx: &Fixture, cfg: WriterConfig) -> Writer {
        let w = Writer::connect(&fx.url, cfg).await.unwrap();
        w.check_schema().await.unwrap();
        w.create_tables().await.unwrap();
        w
    }

    /// `posts` by its BIGINT `id`, update-only, without a version column.
    fn update_only_posts(t: &str) -> TableSpec {
        TableSpec::record(t, post_counters())
            .unwrap()
            .key(IntKey::new("id"))
            .version_column(None)
            .unwrap()
            .mode(WriteMode::UpdateOnly)
    }

    async fn posts(fx: &Fixture, title: &str) -> String {
        let t = fx.name("data");
        sql(
            fx,
            &format!(
                "CREATE TABLE {} (id BIGINT PRIMARY KEY, title {title}, \
                 views BIGINT NOT NULL DEFAULT 0, likes BIGINT NOT NULL DEFAULT 0)",
                fx.q(&t)
            ),
        )
        .await;
        t
    }

    pub async fn delta_record_adds_per_column_and_keeps_unmapped_columns(fx: &Fixture) {
        let t = posts(fx, "TEXT").await;
        sql(
            fx,
            &format!(
                "INSERT INTO {} (id, title, views, likes) VALUES (1, 'hello', 10, 0)",
                fx.q(&t)
            ),
        )
        .await;
        let spec = TableSpec::record(&t, post_counters())
            .unwrap()
            .key(IntKey::new("id"))
            .version_column(None)
            .unwrap();
        let w = open(fx, spec).await;
        let r = w
            .flush(&cut(
                1,
                vec![
                    item("1", cols(&[1, 2]), Expected::Any),
                    item("2", cols(&[5, 0]), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![unversioned(ints(&[11, 2])), unversioned(ints(&[5, 0]))]
        );
        let r = w
            .flush(&cut(2, vec![item("1", cols(&[1, 1]), Expected::Any)]))
            .await
            .unwrap();
        assert_eq!(r.outcomes, vec![unversioned(ints(&[12, 3]))]);
        let rows = query(
            &w,
            &format!(
                "SELECT id, title, views, likes FROM {} ORDER BY id",
                fx.q(&t)
            ),
            &[
                SqlType::BigInt,
                SqlType::Text,
                SqlType::BigInt,
                SqlType::BigInt,
            ],
        )
        .await;
        assert_eq!(
            rows,
            vec![
                vec![
                    SqlValue::Int(1),
                    text("hello"),
                    SqlValue::Int(12),
                    SqlValue::Int(3)
                ],
                vec![
                    SqlValue::Int(2),
                    SqlValue::Null,
                    SqlValue::Int(5),
                    SqlValue::Int(0)
                ],
            ]
        );
        // Two key texts of one row ("5" and "05" are both id 5) go to
        // separate statements: no upsert touches a row twice.
        let r = w
            .flush(&cut(
                3,
                vec![
                    item("5", cols(&[1, 1]), Expected::Any),
                    item("05", cols(&[2, 2]), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![unversioned(ints(&[1, 1])), unversioned(ints(&[3, 3]))]
        );
        sql(fx, &format!("DELETE FROM {} WHERE id = 5", fx.q(&t))).await;
        let loaded = w.load(&[key("1"), key("2"), key("3")]).await.unwrap();
        assert_eq!(
            loaded,
            vec![
                (key("1"), Some((ints(&[12, 3]), 0))),
                (key("2"), Some((ints(&[5, 0]), 0))),
                (key("3"), None),
            ]
        );
        w.close().await;
    }

    pub async fn update_only_dead_letters_a_missing_row_and_flushes_the_rest(fx: &Fixture) {
        // `title` has no default: an INSERT of the counters alone would fail.
        let t = posts(fx, &format!("{} NOT NULL", name_type(fx))).await;
        sql(
            fx,
            &format!(
                "INSERT INTO {} (id, title, views, likes) VALUES (1, 'one', 10, 0), (3, 'three', 0, 0)",
                fx.q(&t)
            ),
        )
        .await;
        let spec = update_only_posts(&t);
        let w = open(fx, spec).await;
        let r = w
            .flush(&cut(
                1,
                vec![
                    item("1", cols(&[1, 0]), Expected::Any),
                    item("7", cols(&[1, 1]), Expected::Any),
                    item("3", cols(&[0, 4]), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![
                unversioned(ints(&[11, 0])),
                ItemOutcome::DeadLettered,
                unversioned(ints(&[0, 4])),
            ]
        );
        assert_eq!(r.dead_letters.len(), 1);
        assert_eq!(r.dead_letters[0].key, key("7"));
        assert_eq!(r.dead_letters[0].error, "no row with this key");
        let rows = query(
            &w,
            &format!(
                "SELECT id, title, views, likes FROM {} ORDER BY id",
                fx.q(&t)
            ),
            &[
                SqlType::BigInt,
                SqlType::Text,
                SqlType::BigInt,
                SqlType::BigInt,
            ],
        )
        .await;
        assert_eq!(
            rows,
            vec![
                vec![
                    SqlValue::Int(1),
                    text("one"),
                    SqlValue::Int(11),
                    SqlValue::Int(0)
                ],
                vec![
                    SqlValue::Int(3),
                    text("three"),
                    SqlValue::Int(0),
                    SqlValue::Int(4)
                ],
            ]
        );
        let dead = query(
            &w,
            &format!(
                "SELECT {}, {} FROM {}",
                fx.q("key"),
                fx.q("error"),
                fx.q(&fx.name("dead"))
            ),
            &[SqlType::Text, SqlType::Text],
        )
        .await;
        assert_eq!(dead, vec![vec![text("7"), text("no row with this key")]]);
        // Without read-back of values, the missing key is still found.
        let w2 = open_with(
            fx,
            fx.config("j")
                .report_values(false)
                .table(update_only_posts(&t)),
        )
        .await;
        let r = w2
            .flush(&cut(
                5,
                vec![
                    item("8", cols(&[1, 1]), Expected::Any),
                    item("1", cols(&[1, 1]), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![ItemOutcome::DeadLettered, unversioned_unknown()]
        );
        let rows = query(
            &w,
            &format!("SELECT views, likes FROM {} WHERE id = 1", fx.q(&t)),
            &[SqlType::BigInt, SqlType::BigInt],
        )
        .await;
        assert_eq!(rows, vec![vec![SqlValue::Int(12), SqlValue::Int(1)]]);
        w2.close().await;
        w.close().await;
    }

    /// Update-only without values to report: when the statement's row
    /// count equals its keys, every key matched and nothing is read back;
    /// a short count asks which keys matched (one more statement).
    pub async fn update_only_without_values_trusts_a_full_row_count(fx: &Fixture) {
        let t = posts(fx, &format!("{} NOT NULL", name_type(fx))).await;
        sql(
            fx,
            &format!(
                "INSERT INTO {} (id, title, views, likes) VALUES (1, 'one', 10, 0), (2, 'two', 0, 0), (3, 'three', 5, 5)",
                fx.q(&t)
            ),
        )
        .await;
        let w = open_with(
            fx,
            fx.config("n")
                .report_values(false)
                .table(update_only_posts(&t)),
        )
        .await;
        // Every key has a row; one adds 0 to both columns (MySQL's changed
        // rows would not count it, its found rows do).
        let all = w
            .flush(&cut(
                1,
                vec![
                    item("1", cols(&[1, 0]), Expected::Any),
                    item("2", cols(&[0, 0]), Expected::Any),
                    item("3", cols(&[2, 3]), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(all.outcomes, vec![unversioned_unknown(); 3]);
        assert_eq!(all.rows, 3);
        let short = w
            .flush(&cut(
                2,
                vec![
                    item("1", cols(&[1, 1]), Expected::Any),
                    item("9", cols(&[1, 1]), Expected::Any),
                    item("3", cols(&[1, 1]), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            short.outcomes,
            vec![
                unversioned_unknown(),
                ItemOutcome::DeadLettered,
                unversioned_unknown()
            ]
        );
        assert_eq!(short.rows, 2);
        // Progress row (create, lock, advance) and the UPDATEs, no read-back:
        // one UPDATE, or on SQLite chunks of 2 + 1 rows (texts seen before).
        let updates = if fx.backend == Backend::Sqlite { 2 } else { 1 };
        assert_eq!(all.statements, 3 + updates);
        // The short count costs the question of which keys matched, and the
        // dead-letter row (in a savepoint on PostgreSQL).
        let savepoint = if fx.backend == Backend::Postgres {
            2
        } else {
            0
        };
        assert_eq!(short.statements, all.statements + 2 + savepoint);
        let rows = query(
            &w,
            &format!("SELECT id, views, likes FROM {} ORDER BY id", fx.q(&t)),
            &[SqlType::BigInt, SqlType::BigInt, SqlType::BigInt],
        )
        .await;
        let int = SqlValue::Int;
        assert_eq!(
            rows,
            vec![
                vec![int(1), int(12), int(1)],
                vec![int(2), int(0), int(0)],
                vec![int(3), int(8), int(9)],
            ]
        );
        w.close().await;
    }

    /// Update-only counter adds on a UUID key (hex in MySQL's JSON rows)
    /// with a version column: each matched row's version goes up by one,
    /// the totals come back, a missing key is a dead letter.
    pub async fn update_only_delta_on_a_uuid_key_with_a_version_column(fx: &Fixture) {
        let t = fx.name("uposts");
        sql(
            fx,
            &format!(
                "CREATE TABLE {} (id {} PRIMARY KEY, views BIGINT NOT NULL, likes BIGINT NOT NULL, version BIGINT NOT NULL)",
                fx.q(&t),
                uuid_type(fx)
            ),
        )
        .await;
        let a = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let missing = "ffffffff-0000-4000-8000-000000000001";
        let literal = match fx.backend {
            Backend::Postgres => format!("'{a}'"),
            Backend::MySql => "UNHEX('0193A1B2C3D47E5F8A9B0C1D2E3F4A5B')".to_owned(),
            Backend::Sqlite => "X'0193A1B2C3D47E5F8A9B0C1D2E3F4A5B'".to_owned(),
        };
        sql(
            fx,
            &format!(
                "INSERT INTO {} (id, views, likes, version) VALUES ({literal}, 10, 1, 4)",
                fx.q(&t)
            ),
        )
        .await;
        let spec = TableSpec::record(&t, post_counters())
            .unwrap()
            .key(Arc::new(UuidKey(vec![Column::new(
                "id",
                SqlType::Uuid,
                false,
            )
            .unwrap()])))
            .mode(WriteMode::UpdateOnly);
        let w = open(fx, spec).await;
        let r = w
            .flush(&cut(
                1,
                vec![
                    item(missing, cols(&[1, 1]), Expected::Any),
                    item(a, cols(&[5, 2]), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![ItemOutcome::DeadLettered, written(5, ints(&[15, 3]))]
        );
        assert_eq!(r.rows, 1);
        let rows = query(
            &w,
            &format!("SELECT views, likes, version FROM {}", fx.q(&t)),
            &[SqlType::BigInt, SqlType::BigInt, SqlType::BigInt],
        )
        .await;
        let int = SqlValue::Int;
        assert_eq!(rows, vec![vec![int(15), int(3), int(5)]]);
        w.close().await;
    }

    /// A delta the table refuses for one row (a CHECK it would break), in an
    /// update-only write that reports no values: the chunk is halved until
    /// that row is alone, it is dead-lettered with the database's reason, and
    /// the other rows are written exactly once.
    pub async fn update_only_delta_refused_for_one_row_dead_letters_that_row_alone(fx: &Fixture) {
        let t = fx.name("cposts");
        sql(
            fx,
            &format!(
                "CREATE TABLE {} (id BIGINT PRIMARY KEY, views BIGINT NOT NULL CHECK (views < 1000), \
                 likes BIGINT NOT NULL)",
                fx.q(&t)
            ),
        )
        .await;
        sql(
            fx,
            &format!(
                "INSERT INTO {} (id, views, likes) VALUES (1, 10, 0), (2, 995, 0), (3, 0, 0), (4, 7, 7)",
                fx.q(&t)
            ),
        )
        .await;
        let w = open_with(
            fx,
            fx.config("c")
                .report_values(false)
                .table(update_only_posts(&t)),
        )
        .await;
        let r = w
            .flush(&cut(
                1,
                vec![
                    item("1", cols(&[1, 1]), Expected::Any),
                    item("2", cols(&[10, 0]), Expected::Any),
                    item("3", cols(&[1, 0]), Expected::Any),
                    item("4", cols(&[0, 1]), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![
                unversioned_unknown(),
                ItemOutcome::DeadLettered,
                unversioned_unknown(),
                unversioned_unknown()
            ]
        );
        assert_eq!(r.rows, 3);
        assert_eq!(r.dead_letters.len(), 1);
        assert_eq!(r.dead_letters[0].key, key("2"));
        // The database's own words for the broken constraint, which name its column.
        assert!(
            r.dead_letters[0].error.contains("views"),
            "{}",
            r.dead_letters[0].error
        );
        let rows = query(
            &w,
            &format!("SELECT id, views, likes FROM {} ORDER BY id", fx.q(&t)),
            &[SqlType::BigInt, SqlType::BigInt, SqlType::BigInt],
        )
        .await;
        let int = SqlValue::Int;
        assert_eq!(
            rows,
            vec![
                vec![int(1), int(11), int(1)],
                vec![int(2), int(995), int(0)],
                vec![int(3), int(1), int(0)],
                vec![int(4), int(7), int(8)],
            ]
        );
        w.close().await;
    }

    pub async fn uuid_keys_round_trip(fx: &Fixture) {
        let t = fx.name("data");
        sql(
            fx,
            &format!(
                "CREATE TABLE {} (id {} PRIMARY KEY, hits BIGINT NOT NULL, version BIGINT NOT NULL)",
                fx.q(&t),
                uuid_type(fx)
            ),
        )
        .await;
        let mut spec = TableSpec::counter(&t)
            .unwrap()
            .key(Arc::new(UuidKey(vec![Column::new(
                "id",
                SqlType::Uuid,
                false,
            )
            .unwrap()])));
        spec.value_column = writebehind_writer::Ident::new("hits").unwrap();
        let w = open(fx, spec).await;
        let a = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let b = "ffffffff-0000-4000-8000-000000000001";
        let r = w
            .flush(&cut(
                1,
                vec![
                    item(a, Change::Add(3), Expected::Any),
                    item(b, Change::Add(-1), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![written(1, Value::Int(3)), written(1, Value::Int(-1))]
        );
        let r = w
            .flush(&cut(2, vec![item(a, Change::Add(2), Expected::Any)]))
            .await
            .unwrap();
        assert_eq!(r.outcomes, vec![written(2, Value::Int(5))]);
        // A versioned put and delete on a UUID key.
        let r = w
            .flush(&cut(
                3,
                vec![
                    item(a, Change::Put(Value::Int(100)), Expected::Version(2)),
                    item(b, Change::Delete, Expected::Version(1)),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![written(3, Value::Int(100)), ItemOutcome::Deleted]
        );
        let hex = match fx.backend {
            Backend::Postgres => "upper(replace(id::text, '-', ''))",
            Backend::MySql => "HEX(id)",
            Backend::Sqlite => "hex(id)",
        };
        let rows = query(
            &w,
            &format!("SELECT {hex}, hits, version FROM {}", fx.q(&t)),
            &[SqlType::Text, SqlType::BigInt, SqlType::BigInt],
        )
        .await;
        assert_eq!(
            rows,
            vec![vec![
                text("0193A1B2C3D47E5F8A9B0C1D2E3F4A5B"),
                SqlValue::Int(100),
                SqlValue::Int(3)
            ]]
        );
        let mut all = Vec::new();
        w.load_all(10, |page| all.extend(page)).await.unwrap();
        assert_eq!(all, vec![(key(a), Value::Int(100), 3)]);
        w.close().await;
    }

    pub async fn composite_keys_round_trip(fx: &Fixture) {
        let t = fx.name("data");
        sql(
            fx,
            &format!(
                "CREATE TABLE {} (tenant BIGINT NOT NULL, name {} NOT NULL, \
                 score BIGINT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (tenant, name))",
                fx.q(&t),
                name_type(fx)
            ),
        )
        .await;
        let mut spec = TableSpec::counter(&t).unwrap().key(TenantKey::new());
        spec.value_column = writebehind_writer::Ident::new("score").unwrap();
        let w = open(fx, spec).await;
        let k = |t: i64, n: &str| format!("{t}\u{1f}{n}");
        let r = w
            .flush(&cut(
                1,
                vec![
                    item(&k(1, "alice"), Change::Put(Value::Int(5)), Expected::Any),
                    item(&k(1, "bob"), Change::Add(2), Expected::Any),
                    item(&k(2, "alice"), Change::Add(7), Expected::Any),
                    item(&k(3, "zed"), Change::Put(Value::Int(9)), Expected::Absent),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![
                written(1, Value::Int(5)),
                written(1, Value::Int(2)),
                written(1, Value::Int(7)),
                written(1, Value::Int(9)),
            ]
        );
        let r = w
            .flush(&cut(
                2,
                vec![
                    item(&k(1, "alice"), Change::Delete, Expected::Version(1)),
                    item(&k(3, "zed"), Change::Put(Value::Int(1)), Expected::Absent),
                    item(&k(1, "bob"), Change::Add(1), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![
                ItemOutcome::Deleted,
                ItemOutcome::ConflictKeptDatabase {
                    version: Some(1),
                    value: Some(Value::Int(9))
                },
                written(2, Value::Int(3)),
            ]
        );
        assert_eq!(r.conflicts.len(), 1);
        let mut all = Vec::new();
        w.load_all(2, |page| all.extend(page)).await.unwrap();
        assert_eq!(
            all,
            vec![
                (key(&k(1, "bob")), Value::Int(3), 2),
                (key(&k(2, "alice")), Value::Int(7), 1),
                (key(&k(3, "zed")), Value::Int(9), 1),
            ]
        );
        let rows = query(
            &w,
            &format!(
                "SELECT tenant, name, score FROM {} ORDER BY tenant, name",
                fx.q(&t)
            ),
            &[SqlType::BigInt, SqlType::Text, SqlType::BigInt],
        )
        .await;
        assert_eq!(
            rows,
            vec![
                vec![SqlValue::Int(1), text("bob"), SqlValue::Int(3)],
                vec![SqlValue::Int(2), text("alice"), SqlValue::Int(7)],
                vec![SqlValue::Int(3), text("zed"), SqlValue::Int(9)],
            ]
        );
        // A key text the codec refuses is dead-lettered, the rest written.
        let r = w
            .flush(&cut(
                3,
                vec![
                    item("no-separator", Change::Add(1), Expected::Any),
                    item(&k(2, "alice"), Change::Add(1), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![ItemOutcome::DeadLettered, written(2, Value::Int(8))]
        );
        assert_eq!(r.dead_letters[0].error, "key: no separator");
        assert_eq!(w.check_key("no-separator"), Err("no separator".to_owned()));
        assert_eq!(w.check_key(&k(4, "x")), Ok(()));
        w.close().await;
    }

    pub async fn puts_only_mapping_without_a_version_column(fx: &Fixture) {
        let t = fx.name("data");
        sql(
            fx,
            &format!(
                "CREATE TABLE {} (id BIGINT PRIMARY KEY, title {}, note {} DEFAULT 'keep')",
                fx.q(&t),
                name_type(fx),
                name_type(fx)
            ),
        )
        .await;
        let codec = Arc::new(Cols(vec![
            Column::new("title", SqlType::Text, true).unwrap()
        ]));
        let spec = TableSpec::record(&t, codec)
            .unwrap()
            .key(IntKey::new("id"))
            .version_column(None)
            .unwrap();
        let w = open(fx, spec).await;
        let title = |s: &str| Value::Bytes(Arc::from(s.as_bytes()));
        let r = w
            .flush(&cut(
                1,
                vec![
                    item("1", Change::Put(title("first")), Expected::Any),
                    item("2", Change::Put(title("second")), Expected::Absent),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![unversioned(title("first")), unversioned(title("second"))]
        );
        // Without a version column, expectations are ignored: last writer
        // wins, deletes are unconditional, no conflict can happen.
        let r = w
            .flush(&cut(
                2,
                vec![
                    item("1", Change::Put(title("again")), Expected::Version(41)),
                    item("2", Change::Delete, Expected::Version(99)),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![unversioned(title("again")), ItemOutcome::Deleted]
        );
        assert!(r.conflicts.is_empty());
        let rows = query(
            &w,
            &format!("SELECT id, title, note FROM {} ORDER BY id", fx.q(&t)),
            &[SqlType::BigInt, SqlType::Text, SqlType::Text],
        )
        .await;
        assert_eq!(
            rows,
            vec![vec![SqlValue::Int(1), text("again"), text("keep")]]
        );
        assert_eq!(
            w.load(&[key("1")]).await.unwrap(),
            vec![(key("1"), Some((title("again"), 0)))]
        );
        w.close().await;
    }

    async fn check(fx: &Fixture, ddl: &str, spec: TableSpec) -> Error {
        let t = fx.name("data");
        sql(fx, &format!("DROP TABLE IF EXISTS {}", fx.q(&t))).await;
        if !ddl.is_empty() {
            sql(fx, &ddl.replace("$T", &fx.q(&t))).await;
        }
        let w = Writer::connect(&fx.url, fx.config("i").table(spec))
            .await
            .unwrap();
        let e = w.check_schema().await.unwrap_err();
        w.close().await;
        e
    }

    fn schema(table: &str, column: Option<&str>, expected: &str, found: &str) -> String {
        format!(
            "{:?}",
            Error::Schema {
                table: table.to_owned(),
                column: column.map(str::to_owned),
                expected: expected.to_owned(),
                found: found.to_owned(),
            }
        )
    }

    pub async fn schema_check_names_table_column_expected_and_found(fx: &Fixture) {
        let t = fx.name("data");
        let spec = || {
            TableSpec::record(&t, post_counters())
                .unwrap()
                .key(IntKey::new("id"))
                .version_column(Some("version"))
                .unwrap()
        };
        let text_type = match fx.backend {
            Backend::Sqlite => "TEXT",
            _ => "text",
        };
        // Missing table.
        let e = check(fx, "", spec()).await;
        assert_eq!(format!("{e:?}"), schema(&t, None, "a table", "no table"));
        assert_eq!(
            e.to_string(),
            format!("table {t}: expected a table, found no table")
        );
        // Missing column.
        let e = check(
            fx,
            "CREATE TABLE $T (id BIGINT PRIMARY KEY, views BIGINT NOT NULL, version BIGINT NOT NULL)",
            spec(),
        )
        .await;
        assert_eq!(
            format!("{e:?}"),
            schema(&t, Some("likes"), "BIGINT", "no column")
        );
        assert_eq!(
            e.to_string(),
            format!("table {t}, column likes: expected BIGINT, found no column")
        );
        // Wrong type.
        let e = check(
            fx,
            "CREATE TABLE $T (id BIGINT PRIMARY KEY, views TEXT, likes BIGINT NOT NULL, version BIGINT NOT NULL)",
            spec(),
        )
        .await;
        assert_eq!(
            format!("{e:?}"),
            schema(&t, Some("views"), "BIGINT", text_type)
        );
        // Non-unique key: an index, but not a unique one.
        let e = check(
            fx,
            "CREATE TABLE $T (id BIGINT NOT NULL, views BIGINT NOT NULL, likes BIGINT NOT NULL, version BIGINT NOT NULL)",
            spec(),
        )
        .await;
        assert_eq!(
            format!("{e:?}"),
            schema(
                &t,
                Some("id"),
                "a primary key or unique index on (id)",
                "no unique index on these columns"
            )
        );
        // A unique index is as good as the primary key.
        sql(
            fx,
            &format!(
                "CREATE UNIQUE INDEX {} ON {} (id)",
                fx.q(&fx.name("uq")),
                fx.q(&t)
            ),
        )
        .await;
        let w = Writer::connect(&fx.url, fx.config("i").table(spec()))
            .await
            .unwrap();
        w.check_schema().await.unwrap();
        w.close().await;
        // Non-integer version.
        let e = check(
            fx,
            "CREATE TABLE $T (id BIGINT PRIMARY KEY, views BIGINT NOT NULL, likes BIGINT NOT NULL, version TEXT)",
            spec(),
        )
        .await;
        assert_eq!(
            format!("{e:?}"),
            schema(&t, Some("version"), "BIGINT", text_type)
        );
        // Wrong UUID type.
        let uuid_spec = TableSpec::counter(&t)
            .unwrap()
            .key(Arc::new(UuidKey(vec![Column::new(
                "id",
                SqlType::Uuid,
                false,
            )
            .unwrap()])));
        let e = check(
            fx,
            "CREATE TABLE $T (id BIGINT PRIMARY KEY, value BIGINT NOT NULL, version BIGINT NOT NULL)",
            uuid_spec,
        )
        .await;
        let (uuid, bigint) = match fx.backend {
            Backend::Postgres => ("UUID", "bigint"),
            Backend::MySql => ("BINARY(16)", "bigint(20)"),
            Backend::Sqlite => ("BLOB", "BIGINT"),
        };
        assert_eq!(format!("{e:?}"), schema(&t, Some("id"), uuid, bigint));
    }

    pub async fn tables_created_from_the_mapping_pass_the_check(fx: &Fixture) {
        // Composite native key, every value type, no version column.
        struct AllTypes(Vec<Column>);
        impl RowCodec for AllTypes {
            fn columns(&self) -> &[Column] {
                &self.0
            }
            fn to_row(&self, _: &[u8]) -> Result<Vec<SqlValue>, String> {
                Ok(vec![
                    SqlValue::Int(-5),
                    SqlValue::Float(2.5),
                    SqlValue::Text("é".to_owned()),
                    SqlValue::Bytes(vec![0, 255]),
                    SqlValue::Bool(true),
                    SqlValue::Uuid([7; 16]),
                    SqlValue::Timestamp(1_700_000_000_123_456),
                    SqlValue::Json("{\"a\": 1}".to_owned()),
                    SqlValue::Null,
                ])
            }
            fn from_row(&self, row: Vec<SqlValue>) -> Result<Vec<u8>, String> {
                Ok(format!("{row:?}").into_bytes())
            }
        }
        let codec = Arc::new(AllTypes(vec![
            Column::new("i", SqlType::BigInt, false).unwrap(),
            Column::new("f", SqlType::Double, false).unwrap(),
            Column::new("s", SqlType::Text, false).unwrap(),
            Column::new("b", SqlType::Bytes, false).unwrap(),
            Column::new("o", SqlType::Bool, false).unwrap(),
            Column::new("u", SqlType::Uuid, false).unwrap(),
            Column::new("ts", SqlType::Timestamp, false).unwrap(),
            Column::new("j", SqlType::Json, false).unwrap(),
            Column::new("n", SqlType::Text, true).unwrap(),
        ]));
        let spec = TableSpec::record(&fx.name("data"), codec)
            .unwrap()
            .key(TenantKey::new())
            .version_column(None)
            .unwrap();
        let w = fx.writer(fx.config("i").table(spec)).await;
        w.check_schema().await.unwrap();
        let r = w
            .flush(&cut(
                1,
                vec![item(
                    "1\u{1f}a",
                    Change::Put(Value::Bytes(Arc::from(&b"x"[..]))),
                    Expected::Any,
                )],
            ))
            .await
            .unwrap();
        assert!(
            matches!(r.outcomes[0], ItemOutcome::Written { .. }),
            "{r:?}"
        );
        let loaded = w.load(&[key("1\u{1f}a")]).await.unwrap();
        // This document is already in jsonb's normal form (PostgreSQL
        // re-spaces others); MariaDB and SQLite keep the text.
        let json = "{\"a\": 1}";
        let want = format!(
            "{:?}",
            vec![
                SqlValue::Int(-5),
                SqlValue::Float(2.5),
                SqlValue::Text("é".to_owned()),
                SqlValue::Bytes(vec![0, 255]),
                SqlValue::Bool(true),
                SqlValue::Uuid([7; 16]),
                SqlValue::Timestamp(1_700_000_000_123_456),
                SqlValue::Json(json.to_owned()),
                SqlValue::Null,
            ]
        );
        assert_eq!(
            loaded,
            vec![(
                key("1\u{1f}a"),
                Some((Value::Bytes(Arc::from(want.as_bytes())), 0))
            )]
        );
        w.close().await;
    }

    /// Update-only on a text key whose column has its own collation: the
    /// rows join by key (MySQL compares them in the column's collation).
    pub async fn update_only_with_a_case_insensitive_text_key(fx: &Fixture) {
        let t = fx.name("tposts");
        let key_type = match fx.backend {
            Backend::MySql => "VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            _ => "TEXT",
        };
        sql(
            fx,
            &format!(
                "CREATE TABLE {} (k {key_type} PRIMARY KEY, views BIGINT NOT NULL, likes BIGINT NOT NULL)",
                fx.q(&t)
            ),
        )
        .await;
        sql(
            fx,
            &format!(
                "INSERT INTO {} (k, views, likes) VALUES ('Straße', 5, 0), ('b', 0, 1)",
                fx.q(&t)
            ),
        )
        .await;
        let spec = TableSpec::record(&t, post_counters())
            .unwrap()
            .key(TextKey::named("k").unwrap())
            .version_column(None)
            .unwrap()
            .mode(WriteMode::UpdateOnly);
        let w = open(fx, spec).await;
        let r = w
            .flush(&cut(
                1,
                vec![
                    item("Straße", cols(&[1, 2]), Expected::Any),
                    item("none", cols(&[1, 1]), Expected::Any),
                    item("b", cols(&[3, 0]), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![
                unversioned(ints(&[6, 2])),
                ItemOutcome::DeadLettered,
                unversioned(ints(&[3, 1])),
            ]
        );
        assert_eq!(r.dead_letters.len(), 1);
        assert_eq!(r.dead_letters[0].key, key("none"));
        w.close().await;
    }

    pub async fn case_insensitive_key_collation_reads_back(fx: &Fixture) {
        let t = fx.name("data");
        let key_type = match fx.backend {
            Backend::MySql => "VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            _ => "TEXT",
        };
        sql(
            fx,
            &format!(
                "CREATE TABLE {} (k {key_type} PRIMARY KEY, value BIGINT NOT NULL, version BIGINT NOT NULL)",
                fx.q(&t)
            ),
        )
        .await;
        let spec = TableSpec::counter(&t)
            .unwrap()
            .key(TextKey::named("k").unwrap());
        let w = open(fx, spec).await;
        for round in 1..=2 {
            let r = w
                .flush(&cut(
                    round,
                    vec![
                        item("Straße", Change::Add(2), Expected::Any),
                        item("b", Change::Add(1), Expected::Any),
                    ],
                ))
                .await
                .unwrap();
            let n = i64::try_from(round).unwrap();
            assert_eq!(
                r.outcomes,
                vec![written(n, Value::Int(2 * n)), written(n, Value::Int(n))]
            );
        }
        let r = w
            .flush(&cut(
                3,
                vec![item(
                    "Straße",
                    Change::Put(Value::Int(0)),
                    Expected::Version(2),
                )],
            ))
            .await
            .unwrap();
        assert_eq!(r.outcomes, vec![written(3, Value::Int(0))]);
        w.close().await;
    }

    pub async fn bookkeeping_tables_take_the_prefix(fx: &Fixture) {
        let prefix = format!("{}_bk_", fx.prefix);
        let cfg = WriterConfig::new(format!("{}_i", fx.prefix))
            .table(TableSpec::counter(&fx.name("data")).unwrap())
            .bookkeeping_prefix(&prefix)
            .unwrap();
        let w = fx.writer(cfg).await;
        w.flush(&cut(4, vec![item("a", Change::Add(1), Expected::Any)]))
            .await
            .unwrap();
        let rows = query(
            &w,
            &format!(
                "SELECT position FROM {}",
                fx.q(&format!("{prefix}progress"))
            ),
            &[SqlType::BigInt],
        )
        .await;
        assert_eq!(rows, vec![vec![SqlValue::Int(4)]]);
        for t in ["progress", "conflicts", "dead_letters"] {
            w.execute_sql(&format!("DROP TABLE {}", fx.q(&format!("{prefix}{t}"))))
                .await
                .unwrap();
        }
        assert!(matches!(
            WriterConfig::new("x").bookkeeping_prefix("bad-prefix"),
            Err(Error::InvalidIdent { .. })
        ));
        w.close().await;
    }
}
