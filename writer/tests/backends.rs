//! The same behaviour suite on SQLite (always), PostgreSQL (`--features
//! postgres`, needs WB_POSTGRES_URL) and MySQL/MariaDB (`--features mysql`,
//! needs WB_MYSQL_URL).
#![allow(clippy::unwrap_used)]
#![cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod common;

use std::sync::Arc;

use common::*;
use parking_lot::Mutex;
use writebehind_writer::{
    Change, Column, Conflict, ConflictPolicy, ConflictResolutionTaken, DeadLetter, ErrorClass,
    Expected, ItemOutcome, Key, Resolution, RowCodec, SqlType, SqlValue, TableSpec, Value, Writer,
    WriterConfig,
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
    counters_sum_exactly_with_8_concurrent_flushers,
    put_delete_round_trip_with_versions,
    record_table_round_trip,
    conflict_keep_database_reports_and_logs,
    conflict_overwrite_writes_ours,
    conflict_resolver_chooses,
    already_applied_when_progress_covers_cut,
    check_violation_dead_letters_only_the_bad_row,
    chunking_keeps_counts_exact,
    load_all_pages_in_key_order,
    report_values_off_skips_read_back,
    random_cuts_match_a_model,
    read_back_equals_the_database,
    read_back_of_long_keys_splits_by_bytes,
    claims_are_monotonic_and_honour_at_least,
    a_stale_writer_is_fenced_and_writes_nothing,
    a_flush_before_any_claim_claims_first,
    an_old_progress_table_is_migrated_at_claim_and_keeps_its_position,
    a_flush_racing_a_claim_commits_before_it_or_is_fenced,
);

/// A record codec over "name;score;active;hexblob-or-dash".
struct TestCodec {
    cols: Vec<Column>,
}

impl TestCodec {
    fn new() -> Arc<TestCodec> {
        Arc::new(TestCodec {
            cols: vec![
                Column::new("name", SqlType::Text, false).unwrap(),
                Column::new("score", SqlType::Double, false).unwrap(),
                Column::new("active", SqlType::Bool, false).unwrap(),
                Column::new("blob", SqlType::Bytes, true).unwrap(),
            ],
        })
    }
}

fn record(name: &str, score: f64, active: bool, blob: Option<&[u8]>) -> Value {
    let hex = blob.map_or("-".to_owned(), |b| {
        b.iter().map(|x| format!("{x:02x}")).collect()
    });
    Value::Bytes(Arc::from(
        format!("{name};{score};{active};{hex}").into_bytes(),
    ))
}

impl RowCodec for TestCodec {
    fn columns(&self) -> &[Column] {
        &self.cols
    }
    fn to_row(&self, value: &[u8]) -> Result<Vec<SqlValue>, String> {
        let s = std::str::from_utf8(value).map_err(|e| e.to_string())?;
        let parts: Vec<&str> = s.split(';').collect();
        let [name, score, active, hex] = parts[..] else {
            return Err(format!("bad record {s:?}"));
        };
        let blob = if hex == "-" {
            SqlValue::Null
        } else {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| e.to_string())?;
            SqlValue::Bytes(bytes)
        };
        Ok(vec![
            SqlValue::Text(name.to_owned()),
            SqlValue::Float(score.parse().map_err(|e| format!("score: {e}"))?),
            SqlValue::Bool(active.parse().map_err(|e| format!("active: {e}"))?),
            blob,
        ])
    }
    fn from_row(&self, row: Vec<SqlValue>) -> Result<Vec<u8>, String> {
        match &row[..] {
            [SqlValue::Text(n), SqlValue::Float(s), SqlValue::Bool(a), blob] => {
                let blob = match blob {
                    SqlValue::Bytes(b) => Some(b.as_slice()),
                    _ => None,
                };
                match record(n, *s, *a, blob) {
                    Value::Bytes(b) => Ok(b.to_vec()),
                    Value::Int(_) | Value::Ints(_) => Err("unreachable".into()),
                }
            }
            other => Err(format!("unexpected row {other:?}")),
        }
    }
}

mod cases {
    use super::*;

    /// The owner epoch in the progress row of `instance`.
    async fn row_epoch(fx: &Fixture, w: &Writer, instance: &str) -> i64 {
        let rows = query(
            w,
            &format!(
                "SELECT {} FROM {} WHERE {} = '{}_{instance}'",
                fx.q("owner_epoch"),
                fx.q(&fx.name("progress")),
                fx.q("instance"),
                fx.prefix
            ),
            &[SqlType::BigInt],
        )
        .await;
        match rows.first().and_then(|r| r.first()) {
            Some(SqlValue::Int(e)) => *e,
            other => panic!("no owner epoch: {other:?}"),
        }
    }

    fn counter_of(loaded: &[(Key, Option<(Value, i64)>)]) -> Option<i64> {
        match loaded.first().and_then(|(_, r)| r.as_ref()) {
            Some((Value::Int(n), _)) => Some(*n),
            None => None,
            other => panic!("not a counter: {other:?}"),
        }
    }

    pub async fn claims_are_monotonic_and_honour_at_least(fx: &Fixture) {
        let a = fx.writer(fx.config("x")).await;
        let b = Writer::connect(&fx.url, fx.config("x")).await.unwrap();
        assert_eq!(a.claimed_epoch(), None);
        assert_eq!(a.claim(0).await.unwrap(), 1);
        assert_eq!(b.claim(0).await.unwrap(), 2);
        assert_eq!(a.claim(0).await.unwrap(), 3);
        // at_least above the row's next epoch wins; below it, the next one does.
        assert_eq!(b.claim(10).await.unwrap(), 10);
        let c = a.claim_row(5).await.unwrap();
        assert_eq!((c.epoch, c.previous, c.position), (11, 10, None));
        assert_eq!(a.claimed_epoch(), Some(11));
        assert_eq!(b.claimed_epoch(), Some(10));
        assert_eq!(row_epoch(fx, &a, "x").await, 11);
        // Another instance's row starts on its own.
        let other = Writer::connect(&fx.url, fx.config("y")).await.unwrap();
        assert_eq!(other.claim(0).await.unwrap(), 1);
        // An epoch that does not fit BIGINT is refused, and nothing changes.
        assert!(a.claim(u64::MAX).await.is_err());
        assert_eq!(row_epoch(fx, &a, "x").await, 11);
        for w in [a, b, other] {
            w.close().await;
        }
    }

    pub async fn a_stale_writer_is_fenced_and_writes_nothing(fx: &Fixture) {
        let a = fx.writer(fx.config("x")).await;
        let b = Writer::connect(&fx.url, fx.config("x")).await.unwrap();
        assert_eq!(a.claim(0).await.unwrap(), 1);
        a.flush(&cut(1, vec![item("k", Change::Add(1), Expected::Any)]))
            .await
            .unwrap();
        assert_eq!(b.claim(0).await.unwrap(), 2);
        // The next flush of the old owner is refused, once, never retried.
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let c2 = cut(2, vec![item("k", Change::Add(10), Expected::Any)]);
        let err = fast_retrier()
            .run(|| {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                a.flush(&c2)
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, writebehind_writer::Error::Fenced { ours: 1, current: 2, instance } if instance.ends_with("_x")),
            "{err:?}"
        );
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert_eq!(attempts.into_inner(), 1, "a fenced flush is not retried");
        // A cut the row already covers is refused too: the old owner learns it is fenced.
        let again = a
            .flush(&cut(1, vec![item("k", Change::Add(1), Expected::Any)]))
            .await;
        assert!(
            matches!(again, Err(writebehind_writer::Error::Fenced { .. })),
            "{again:?}"
        );
        assert_eq!(a.progress().await.unwrap(), Some(1));
        assert_eq!(counter_of(&a.load(&[key("k")]).await.unwrap()), Some(1));
        // The new owner flushes.
        b.flush(&cut(2, vec![item("k", Change::Add(100), Expected::Any)]))
            .await
            .unwrap();
        assert_eq!(counter_of(&b.load(&[key("k")]).await.unwrap()), Some(101));
        // Taking the instance back fences the other one in turn.
        assert_eq!(a.claim(0).await.unwrap(), 3);
        let err = b
            .flush(&cut(3, vec![item("k", Change::Add(1000), Expected::Any)]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                writebehind_writer::Error::Fenced {
                    ours: 2,
                    current: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        a.flush(&cut(3, vec![item("k", Change::Add(5), Expected::Any)]))
            .await
            .unwrap();
        assert_eq!(counter_of(&a.load(&[key("k")]).await.unwrap()), Some(106));
        assert_eq!(a.progress().await.unwrap(), Some(3));
        a.close().await;
        b.close().await;
    }

    pub async fn a_flush_before_any_claim_claims_first(fx: &Fixture) {
        let w = fx.writer(fx.config("x")).await;
        let other = Writer::connect(&fx.url, fx.config("x")).await.unwrap();
        assert_eq!(other.claim(0).await.unwrap(), 1);
        assert_eq!(w.claimed_epoch(), None);
        w.flush(&cut(1, vec![item("k", Change::Add(1), Expected::Any)]))
            .await
            .unwrap();
        assert_eq!(w.claimed_epoch(), Some(2));
        assert_eq!(row_epoch(fx, &w, "x").await, 2);
        w.close().await;
        other.close().await;
    }

    pub async fn an_old_progress_table_is_migrated_at_claim_and_keeps_its_position(fx: &Fixture) {
        // The progress table as it was before owner epochs.
        let setup = Writer::connect(&fx.url, fx.config("setup")).await.unwrap();
        let progress = fx.q(&fx.name("progress"));
        setup
            .execute_sql(&format!(
                "CREATE TABLE {progress} ({} {} PRIMARY KEY, {} BIGINT, {} BIGINT NOT NULL)",
                fx.q("instance"),
                fx.key_type(),
                fx.q("position"),
                fx.q("updated_at_ms")
            ))
            .await
            .unwrap();
        setup
            .execute_sql(&format!(
                "INSERT INTO {progress} VALUES ('{}_x', 7, 0), ('{}_y', 3, 0)",
                fx.prefix, fx.prefix
            ))
            .await
            .unwrap();
        setup.close().await;
        // create_tables leaves the existing table alone; the position reads.
        let w = fx.writer(fx.config("x")).await;
        assert_eq!(w.progress().await.unwrap(), Some(7));
        let probe = format!("SELECT {progress}.{} FROM {progress}", fx.q("owner_epoch"));
        assert!(w.query_sql(&probe, &[SqlType::BigInt]).await.is_err());
        // Two claimers migrate at once: one ALTER wins, both claims succeed.
        let v = Writer::connect(&fx.url, fx.config("x")).await.unwrap();
        let (rw, rv) = (fast_retrier(), fast_retrier());
        let (a, b) = tokio::join!(rw.run(|| w.claim_row(0)), rv.run(|| v.claim_row(0)));
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut epochs = [a.epoch, b.epoch];
        epochs.sort();
        assert_eq!(epochs, [1, 2]);
        assert_eq!(a.position, Some(7));
        assert_eq!(b.position, Some(7));
        let (owner, stale) = if a.epoch == 2 { (&w, &v) } else { (&v, &w) };
        // The position holds: what it covers is already applied, the next cut is written.
        let r = owner
            .flush(&cut(7, vec![item("k", Change::Add(1), Expected::Any)]))
            .await
            .unwrap();
        assert!(r.already_applied);
        owner
            .flush(&cut(8, vec![item("k", Change::Add(2), Expected::Any)]))
            .await
            .unwrap();
        assert!(matches!(
            stale
                .flush(&cut(9, vec![item("k", Change::Add(4), Expected::Any)]))
                .await,
            Err(writebehind_writer::Error::Fenced { .. })
        ));
        assert_eq!(owner.progress().await.unwrap(), Some(8));
        assert_eq!(counter_of(&owner.load(&[key("k")]).await.unwrap()), Some(2));
        // Rows that were never claimed read epoch 0; the other instance keeps its position.
        assert_eq!(row_epoch(fx, owner, "y").await, 0);
        let y = Writer::connect(&fx.url, fx.config("y")).await.unwrap();
        assert_eq!(y.progress().await.unwrap(), Some(3));
        assert_eq!(y.claim(0).await.unwrap(), 1);
        for x in [w, v, y] {
            x.close().await;
        }
    }

    /// A flush and a claim of one instance, run at once, many times: the
    /// flush either commits before the claim (the claim sees its position)
    /// or is fenced (and wrote nothing), never both.
    pub async fn a_flush_racing_a_claim_commits_before_it_or_is_fenced(fx: &Fixture) {
        let a = fx.writer(fx.config("x")).await;
        let b = Writer::connect(&fx.url, fx.config("x")).await.unwrap();
        let retrier = fast_retrier();
        let (mut committed, mut fenced, mut sum) = (0u32, 0u32, 0i64);
        let mut last: Option<u64> = None;
        for round in 1..=30u64 {
            let ours = retrier.run(|| a.claim(0)).await.unwrap();
            let delta = 1i64 << (round % 40);
            let c = cut(round, vec![item("k", Change::Add(delta), Expected::Any)]);
            let (flushed, claim) =
                tokio::join!(retrier.run(|| a.flush(&c)), retrier.run(|| b.claim_row(0)));
            let claim = claim.unwrap();
            assert_eq!(claim.previous, ours);
            match flushed {
                Ok(r) => {
                    assert!(!r.already_applied);
                    assert_eq!(
                        claim.position,
                        Some(round),
                        "round {round}: the flush committed, so the claim must come after it"
                    );
                    committed += 1;
                    sum += delta;
                    last = Some(round);
                }
                Err(writebehind_writer::Error::Fenced {
                    ours: o, current, ..
                }) => {
                    assert_eq!((o, current), (ours, claim.epoch), "round {round}");
                    assert_eq!(claim.position, last, "round {round}: fenced, yet written");
                    fenced += 1;
                }
                Err(e) => panic!("round {round}: {e}"),
            }
            assert_eq!(a.progress().await.unwrap(), last, "round {round}");
            assert_eq!(
                counter_of(&a.load(&[key("k")]).await.unwrap()).unwrap_or(0),
                sum,
                "round {round}"
            );
        }
        eprintln!(
            "{:?}: {committed} flushes committed first, {fenced} fenced",
            fx.backend
        );
        a.close().await;
        b.close().await;
    }

    pub async fn counters_sum_exactly_with_8_concurrent_flushers(fx: &Fixture) {
        fx.writer(fx.config("setup")).await;
        let keys: Vec<String> = (0..25).map(|k| format!("k{k:02}")).collect();
        let mut tasks = Vec::new();
        for t in 0..8i64 {
            let w = Writer::connect(&fx.url, fx.config(&format!("i{t}")))
                .await
                .unwrap();
            let keys = keys.clone();
            tasks.push(tokio::spawn(async move {
                let retrier = fast_retrier();
                for round in 1..=10u64 {
                    let items = keys
                        .iter()
                        .map(|k| item(k, Change::Add((t + 1) * round as i64), Expected::Any))
                        .collect();
                    let c = cut(round, items);
                    let report = retrier.run(|| w.flush(&c)).await.unwrap();
                    assert!(!report.already_applied);
                    assert_eq!(report.rows, 25);
                    assert!(report.outcomes.iter().all(|o| matches!(
                        o,
                        ItemOutcome::Written {
                            version: Some(_),
                            value: Some(Value::Int(_))
                        }
                    )));
                }
                assert_eq!(w.progress().await.unwrap(), Some(10));
                w.close().await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let w = fx.writer(fx.config("check")).await;
        let keys: Vec<_> = keys.iter().map(|k| key(k)).collect();
        let loaded = w.load(&keys).await.unwrap();
        // sum over t in 1..=8, round in 1..=10 of t * round = 36 * 55; one version per flush.
        for (k, row) in loaded {
            assert_eq!(row, Some((Value::Int(36 * 55), 80)), "{k}");
        }
        w.close().await;
    }

    pub async fn put_delete_round_trip_with_versions(fx: &Fixture) {
        let w = fx.writer(fx.config("a")).await;
        assert_eq!(w.progress().await.unwrap(), None);
        let r = w
            .flush(&cut(
                1,
                vec![
                    item("a", Change::Put(Value::Int(5)), Expected::Absent),
                    item("b", Change::Put(Value::Int(7)), Expected::Any),
                    item("c", Change::Delete, Expected::Absent),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![
                written(1, Value::Int(5)),
                written(1, Value::Int(7)),
                ItemOutcome::Deleted
            ]
        );
        assert_eq!((r.rows, r.conflicts.len(), r.dead_letters.len()), (2, 0, 0));

        let r = w
            .flush(&cut(
                2,
                vec![
                    item("a", Change::Put(Value::Int(6)), Expected::Version(1)),
                    item("b", Change::Add(3), Expected::Any),
                    item("d", Change::Put(Value::Int(1)), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![
                written(2, Value::Int(6)),
                written(2, Value::Int(10)),
                written(1, Value::Int(1))
            ]
        );
        assert!(r.conflicts.is_empty());

        let r = w
            .flush(&cut(
                3,
                vec![
                    item("a", Change::Delete, Expected::Version(2)),
                    item("b", Change::Delete, Expected::Any),
                    item("d", Change::Put(Value::Int(9)), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![
                ItemOutcome::Deleted,
                ItemOutcome::Deleted,
                written(2, Value::Int(9))
            ]
        );
        assert_eq!(r.rows, 3);

        let loaded = w
            .load(&[key("a"), key("b"), key("c"), key("d")])
            .await
            .unwrap();
        assert_eq!(
            loaded,
            vec![
                (key("a"), None),
                (key("b"), None),
                (key("c"), None),
                (key("d"), Some((Value::Int(9), 2)))
            ]
        );
        let r = w
            .flush(&cut(
                4,
                vec![item("a", Change::Put(Value::Int(1)), Expected::Absent)],
            ))
            .await
            .unwrap();
        assert_eq!(r.outcomes, vec![written(1, Value::Int(1))]);
        assert_eq!(w.progress().await.unwrap(), Some(4));
        w.close().await;
    }

    pub async fn record_table_round_trip(fx: &Fixture) {
        let spec = TableSpec::record(&fx.name("data"), TestCodec::new()).unwrap();
        let w = fx.writer(fx.config("r").table(spec)).await;
        let r1 = record("ann", 1.5, true, Some(&[0, 1, 255]));
        let r2 = record("bob", -2.25, false, None);
        let bad = Value::Bytes(Arc::from(&b"not a record"[..]));
        let r = w
            .flush(&cut(
                1,
                vec![
                    item("r1", Change::Put(r1.clone()), Expected::Absent),
                    item("r2", Change::Put(r2.clone()), Expected::Any),
                    item("r3", Change::Put(bad.clone()), Expected::Any),
                    item("r4", Change::Add(1), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![
                written(1, r1.clone()),
                written(1, r2.clone()),
                ItemOutcome::DeadLettered,
                ItemOutcome::DeadLettered
            ]
        );
        assert_eq!(r.dead_letters.len(), 2);
        assert_eq!(r.dead_letters[0].key, key("r3"));
        assert!(
            r.dead_letters[0].error.contains("bad record"),
            "{}",
            r.dead_letters[0].error
        );
        assert_eq!(
            r.dead_letters[1].error,
            "Change::Add applies to counter tables only"
        );

        let r1b = record("ann", 3.0, false, Some(b"xyz"));
        let r = w
            .flush(&cut(
                2,
                vec![item("r1", Change::Put(r1b.clone()), Expected::Version(1))],
            ))
            .await
            .unwrap();
        assert_eq!(r.outcomes, vec![written(2, r1b.clone())]);
        let loaded = w.load(&[key("r1"), key("r2"), key("r3")]).await.unwrap();
        assert_eq!(
            loaded,
            vec![
                (key("r1"), Some((r1b, 2))),
                (key("r2"), Some((r2, 1))),
                (key("r3"), None)
            ]
        );
        let dl = fx.name("dead");
        let rows = query(
            &w,
            &format!(
                "SELECT {}, {} FROM {} ORDER BY {}",
                fx.q("key"),
                fx.q("position"),
                fx.q(&dl),
                fx.q("id")
            ),
            &[SqlType::Text, SqlType::BigInt],
        )
        .await;
        assert_eq!(
            rows,
            vec![
                vec![text("r3"), SqlValue::Int(1)],
                vec![text("r4"), SqlValue::Int(1)]
            ]
        );
        w.close().await;
    }

    /// Writes k=1 (v1), then an external UPDATE makes it (100, v2); also
    /// k2 (v1) externally bumped, k3 present though we expect it absent.
    async fn conflict_setup(
        fx: &Fixture,
        policy: ConflictPolicy,
    ) -> (Writer, writebehind_writer::FlushReport) {
        let w = fx.writer(fx.config("c").conflict_policy(policy)).await;
        let r = w
            .flush(&cut(
                1,
                vec![
                    item("k", Change::Put(Value::Int(1)), Expected::Absent),
                    item("k2", Change::Put(Value::Int(1)), Expected::Absent),
                    item("k3", Change::Put(Value::Int(1)), Expected::Absent),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(r.outcomes, vec![written(1, Value::Int(1)); 3]);
        let (t, v, ver, k) = (
            fx.q(&fx.name("data")),
            fx.q("value"),
            fx.q("version"),
            fx.q("key"),
        );
        w.execute_sql(&format!(
            "UPDATE {t} SET {v} = 100, {ver} = 2 WHERE {k} IN ('k', 'k2')"
        ))
        .await
        .unwrap();
        let r = w
            .flush(&cut(
                2,
                vec![
                    item("k", Change::Put(Value::Int(5)), Expected::Version(1)),
                    item("k2", Change::Delete, Expected::Version(1)),
                    item("k3", Change::Put(Value::Int(7)), Expected::Absent),
                    item("n", Change::Add(1), Expected::Any),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(r.outcomes[3], written(1, Value::Int(1)));
        (w, r)
    }

    fn conflicts_expected(res: [ConflictResolutionTaken; 3]) -> Vec<Conflict> {
        let [a, b, c] = res;
        vec![
            Conflict {
                key: key("k"),
                ours: Change::Put(Value::Int(5)),
                expected: Expected::Version(1),
                database: Some((Value::Int(100), 2)),
                resolution: a,
            },
            Conflict {
                key: key("k2"),
                ours: Change::Delete,
                expected: Expected::Version(1),
                database: Some((Value::Int(100), 2)),
                resolution: b,
            },
            Conflict {
                key: key("k3"),
                ours: Change::Put(Value::Int(7)),
                expected: Expected::Absent,
                database: Some((Value::Int(1), 1)),
                resolution: c,
            },
        ]
    }

    async fn conflict_log(fx: &Fixture, w: &Writer) -> Vec<Vec<SqlValue>> {
        let cols = [
            "instance",
            "key",
            "position",
            "change",
            "expected",
            "database_version",
            "resolution",
        ]
        .map(|c| fx.q(c))
        .join(", ");
        let sql = format!(
            "SELECT {cols} FROM {} ORDER BY {}",
            fx.q(&fx.name("conflicts")),
            fx.q("key")
        );
        let t = SqlType::Text;
        query(w, &sql, &[t, t, SqlType::BigInt, t, t, SqlType::BigInt, t]).await
    }

    fn log_row(
        fx: &Fixture,
        k: &str,
        change: &str,
        expected: &str,
        dbv: i64,
        res: &str,
    ) -> Vec<SqlValue> {
        vec![
            text(&format!("{}_c", fx.prefix)),
            text(k),
            SqlValue::Int(2),
            text(change),
            text(expected),
            SqlValue::Int(dbv),
            text(res),
        ]
    }

    pub async fn conflict_keep_database_reports_and_logs(fx: &Fixture) {
        let (w, r) = conflict_setup(fx, ConflictPolicy::KeepDatabase).await;
        let kept = |v, ver| ItemOutcome::ConflictKeptDatabase {
            version: Some(ver),
            value: Some(Value::Int(v)),
        };
        assert_eq!(r.outcomes[..3], [kept(100, 2), kept(100, 2), kept(1, 1)]);
        use ConflictResolutionTaken::KeptDatabase as K;
        assert_eq!(r.conflicts, conflicts_expected([K, K, K]));
        assert_eq!(
            conflict_log(fx, &w).await,
            vec![
                log_row(
                    fx,
                    "k",
                    r#"{"Put":{"Int":5}}"#,
                    r#"{"Version":1}"#,
                    2,
                    "kept_database"
                ),
                log_row(
                    fx,
                    "k2",
                    r#""Delete""#,
                    r#"{"Version":1}"#,
                    2,
                    "kept_database"
                ),
                log_row(
                    fx,
                    "k3",
                    r#"{"Put":{"Int":7}}"#,
                    r#""Absent""#,
                    1,
                    "kept_database"
                ),
            ]
        );
        let loaded = w.load(&[key("k"), key("k2"), key("k3")]).await.unwrap();
        let vals: Vec<_> = loaded.into_iter().map(|(_, r)| r).collect();
        assert_eq!(
            vals,
            vec![
                Some((Value::Int(100), 2)),
                Some((Value::Int(100), 2)),
                Some((Value::Int(1), 1))
            ]
        );
        w.close().await;
    }

    pub async fn conflict_overwrite_writes_ours(fx: &Fixture) {
        let (w, r) = conflict_setup(fx, ConflictPolicy::Overwrite).await;
        assert_eq!(
            r.outcomes[..3],
            [
                written(3, Value::Int(5)),
                ItemOutcome::Deleted,
                written(2, Value::Int(7))
            ]
        );
        use ConflictResolutionTaken::Overwrote as O;
        assert_eq!(r.conflicts, conflicts_expected([O, O, O]));
        let log = conflict_log(fx, &w).await;
        assert_eq!(log.len(), 3);
        assert!(log.iter().all(|row| row[6] == text("overwrote")));
        let loaded = w.load(&[key("k"), key("k2"), key("k3")]).await.unwrap();
        let vals: Vec<_> = loaded.into_iter().map(|(_, r)| r).collect();
        assert_eq!(
            vals,
            vec![Some((Value::Int(5), 3)), None, Some((Value::Int(7), 2))]
        );
        w.close().await;
    }

    pub async fn conflict_resolver_chooses(fx: &Fixture) {
        let seen: Arc<Mutex<Vec<Conflict>>> = Arc::default();
        let seen2 = seen.clone();
        // Sum ours and theirs for puts on "k"; keep the database otherwise.
        let policy = ConflictPolicy::Resolve(Arc::new(move |c: &Conflict| {
            seen2.lock().push(c.clone());
            match (&c.ours, &c.database, &*c.key) {
                (Change::Put(Value::Int(o)), Some((Value::Int(d), _)), "k") => {
                    Resolution::Write(Value::Int(o + d))
                }
                _ => Resolution::KeepDatabase,
            }
        }));
        let (w, r) = conflict_setup(fx, policy).await;
        let kept = |v, ver| ItemOutcome::ConflictKeptDatabase {
            version: Some(ver),
            value: Some(Value::Int(v)),
        };
        assert_eq!(
            r.outcomes[..3],
            [written(3, Value::Int(105)), kept(100, 2), kept(1, 1)]
        );
        use ConflictResolutionTaken::{KeptDatabase as K, Pending as P, Resolved};
        assert_eq!(
            r.conflicts,
            conflicts_expected([Resolved(Value::Int(105)), K, K])
        );
        assert_eq!(*seen.lock(), conflicts_expected([P, P, P]));
        let log = conflict_log(fx, &w).await;
        assert_eq!(
            log[0],
            log_row(
                fx,
                "k",
                r#"{"Put":{"Int":5}}"#,
                r#"{"Version":1}"#,
                2,
                "resolved"
            )
        );
        assert_eq!(
            w.load(&[key("k")]).await.unwrap(),
            vec![(key("k"), Some((Value::Int(105), 3)))]
        );
        w.close().await;
    }

    pub async fn already_applied_when_progress_covers_cut(fx: &Fixture) {
        let w = fx.writer(fx.config("x")).await;
        let c10 = cut(
            10,
            vec![
                item("a", Change::Add(2), Expected::Any),
                item("b", Change::Delete, Expected::Any),
            ],
        );
        let r = w.flush(&c10).await.unwrap();
        assert!(!r.already_applied);
        assert_eq!(
            r.outcomes,
            vec![written(1, Value::Int(2)), ItemOutcome::Deleted]
        );
        // The same cut again (a crash between SQL commit and WAL cut): a no-op.
        let r = w.flush(&c10).await.unwrap();
        assert!(r.already_applied);
        assert_eq!(
            r.outcomes,
            vec![
                ItemOutcome::Written {
                    version: None,
                    value: None
                },
                ItemOutcome::Deleted
            ]
        );
        assert_eq!(r.rows, 0);
        let r = w
            .flush(&cut(5, vec![item("a", Change::Add(100), Expected::Any)]))
            .await
            .unwrap();
        assert!(r.already_applied);
        assert_eq!(
            w.load(&[key("a")]).await.unwrap(),
            vec![(key("a"), Some((Value::Int(2), 1)))]
        );
        let r = w
            .flush(&cut(11, vec![item("a", Change::Add(3), Expected::Any)]))
            .await
            .unwrap();
        assert_eq!(r.outcomes, vec![written(2, Value::Int(5))]);
        assert_eq!(w.progress().await.unwrap(), Some(11));
        // Another instance has its own progress.
        let other = fx.writer(fx.config("y")).await;
        assert_eq!(other.progress().await.unwrap(), None);
        let r = other
            .flush(&cut(3, vec![item("a", Change::Add(1), Expected::Any)]))
            .await
            .unwrap();
        assert_eq!(r.outcomes, vec![written(3, Value::Int(6))]);
        // An empty cut still advances progress.
        let r = other.flush(&cut(4, vec![])).await.unwrap();
        assert!(!r.already_applied);
        assert_eq!(other.progress().await.unwrap(), Some(4));
        other.close().await;
        w.close().await;
    }

    pub async fn check_violation_dead_letters_only_the_bad_row(fx: &Fixture) {
        let (t, k, v, ver) = (
            fx.q(&fx.name("data")),
            fx.q("key"),
            fx.q("value"),
            fx.q("version"),
        );
        let probe = Writer::connect(&fx.url, fx.config("ddl")).await.unwrap();
        probe
            .execute_sql(&format!(
                "CREATE TABLE {t} ({k} {} PRIMARY KEY, {v} BIGINT NOT NULL CHECK ({v} >= 0), {ver} BIGINT NOT NULL)",
                fx.key_type()
            ))
            .await
            .unwrap();
        probe.close().await;
        let w = fx.writer(fx.config("d")).await;
        let items = (0..10)
            .map(|i| {
                item(
                    &format!("k{i}"),
                    Change::Add(if i == 5 { -5 } else { i + 1 }),
                    Expected::Any,
                )
            })
            .collect();
        let r = w.flush(&cut(1, items)).await.unwrap();
        for (i, o) in r.outcomes.iter().enumerate() {
            if i == 5 {
                assert_eq!(*o, ItemOutcome::DeadLettered);
            } else {
                assert_eq!(*o, written(1, Value::Int(i as i64 + 1)), "k{i}");
            }
        }
        assert_eq!(r.rows, 9);
        assert_eq!(r.dead_letters.len(), 1);
        let DeadLetter {
            key: dk,
            change,
            error,
            local,
        } = &r.dead_letters[0];
        assert_eq!((dk.clone(), change.clone()), (key("k5"), Change::Add(-5)));
        assert!(!local, "the dead-letter table holds it");
        let lower = error.to_ascii_lowercase();
        assert!(
            lower.contains("check") || lower.contains("constraint"),
            "{error}"
        );
        let sql = format!(
            "SELECT {}, {}, {}, {} FROM {}",
            fx.q("instance"),
            fx.q("key"),
            fx.q("change"),
            fx.q("error"),
            fx.q(&fx.name("dead"))
        );
        let t = SqlType::Text;
        let rows = query(&w, &sql, &[t, t, t, t]).await;
        assert_eq!(
            rows,
            vec![vec![
                text(&format!("{}_d", fx.prefix)),
                text("k5"),
                text(r#"{"Add":-5}"#),
                text(error)
            ]]
        );
        let loaded = w.load(&[key("k4"), key("k5"), key("k6")]).await.unwrap();
        let vals: Vec<_> = loaded.into_iter().map(|(_, r)| r).collect();
        assert_eq!(
            vals,
            vec![Some((Value::Int(5), 1)), None, Some((Value::Int(7), 1))]
        );
        // The batch-mates keep flowing: the next cut writes normally.
        let r = w
            .flush(&cut(2, vec![item("k5", Change::Add(5), Expected::Any)]))
            .await
            .unwrap();
        assert_eq!(r.outcomes, vec![written(1, Value::Int(5))]);
        w.close().await;
    }

    pub async fn chunking_keeps_counts_exact(fx: &Fixture) {
        let w = fx.writer(fx.config("ch").max_rows_per_statement(7)).await;
        let items = (0..50)
            .map(|i| item(&format!("k{i:03}"), Change::Add(i), Expected::Any))
            .collect();
        let r = w.flush(&cut(1, items)).await.unwrap();
        assert_eq!(r.rows, 50);
        // progress ensure + lock + 8 chunks + progress write, and on MySQL and
        // SQLite one read-back of the whole group (PostgreSQL uses RETURNING).
        let reselects = if fx.backend == writebehind_writer::Backend::Postgres {
            0
        } else {
            1
        };
        assert_eq!(r.statements, 3 + 8 + reselects);
        let keys: Vec<_> = (0..50).map(|i| key(&format!("k{i:03}"))).collect();
        let loaded = w.load(&keys).await.unwrap();
        let sum: i64 = loaded
            .iter()
            .map(|(_, r)| match r {
                Some((Value::Int(v), 1)) => *v,
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(sum, (0..50).sum::<i64>());
        w.close().await;
    }

    pub async fn report_values_off_skips_read_back(fx: &Fixture) {
        let w = fx.writer(fx.config("lean").report_values(false)).await;
        let r = w
            .flush(&cut(
                1,
                vec![
                    item("a", Change::Add(2), Expected::Any),
                    item("b", Change::Put(Value::Int(7)), Expected::Any),
                    item("c", Change::Put(Value::Int(1)), Expected::Absent),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(
            r.outcomes,
            vec![
                ItemOutcome::Written {
                    version: None,
                    value: None
                },
                ItemOutcome::Written {
                    version: None,
                    value: Some(Value::Int(7))
                },
                // Inserts of absent rows are still exact: they must detect a lost race.
                written(1, Value::Int(1)),
            ]
        );
        assert_eq!(r.rows, 3);
        let loaded = w.load(&[key("a"), key("b"), key("c")]).await.unwrap();
        let vals: Vec<_> = loaded.into_iter().map(|(_, r)| r).collect();
        assert_eq!(
            vals,
            vec![
                Some((Value::Int(2), 1)),
                Some((Value::Int(7), 1)),
                Some((Value::Int(1), 1))
            ]
        );
        let r = w
            .flush(&cut(
                2,
                vec![item("b", Change::Put(Value::Int(8)), Expected::Version(1))],
            ))
            .await
            .unwrap();
        // The row was locked at version 1: its next version is known without a read-back.
        assert_eq!(r.outcomes, vec![written(2, Value::Int(8))]);
        w.close().await;
    }

    /// Random cuts over 6 keys, expectations right or wrong at random,
    /// against a `BTreeMap` model of the table under `KeepDatabase`.
    /// `WB_MODEL_CUTS` (default 40) sets the number of cuts.
    pub async fn random_cuts_match_a_model(fx: &Fixture) {
        use std::collections::BTreeMap;
        let cuts: u64 = std::env::var("WB_MODEL_CUTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40);
        let seed = fastrand::u64(..);
        let mut rng = fastrand::Rng::with_seed(seed);
        let w = fx.writer(fx.config("model")).await;
        let mut model: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let names: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
        for position in 1..=cuts {
            let mut items = Vec::new();
            let mut expect = Vec::new();
            for name in &names {
                if rng.bool() {
                    continue;
                }
                let row = model.get(name).copied();
                let expected = match rng.u8(0..4) {
                    0 => Expected::Any,
                    1 => Expected::Absent,
                    // Usually the right version, sometimes a stale one.
                    _ => {
                        Expected::Version(row.map_or(1, |(_, v)| v) - i64::from(rng.u8(0..4) == 0))
                    }
                };
                let change = match rng.u8(0..3) {
                    0 => Change::Add(rng.i64(-5..=5)),
                    1 => Change::Put(Value::Int(rng.i64(-100..=100))),
                    _ => Change::Delete,
                };
                let conflict = match (&change, expected, row) {
                    (Change::Add(_), _, _) | (_, Expected::Any, _) => false,
                    (_, Expected::Absent, r) => r.is_some(),
                    (_, Expected::Version(n), r) => r.map(|(_, v)| v) != Some(n),
                };
                let outcome = if conflict {
                    ItemOutcome::ConflictKeptDatabase {
                        version: row.map(|(_, v)| v),
                        value: row.map(|(x, _)| Value::Int(x)),
                    }
                } else {
                    match &change {
                        Change::Add(d) => {
                            let (x, v) = row.map_or((*d, 1), |(x, v)| (x + d, v + 1));
                            model.insert(name.clone(), (x, v));
                            written(v, Value::Int(x))
                        }
                        Change::Put(Value::Int(x)) => {
                            let v = row.map_or(1, |(_, v)| v + 1);
                            model.insert(name.clone(), (*x, v));
                            written(v, Value::Int(*x))
                        }
                        _ => {
                            model.remove(name);
                            ItemOutcome::Deleted
                        }
                    }
                };
                items.push(item(name, change, expected));
                expect.push(outcome);
            }
            let r = w.flush(&cut(position, items)).await.unwrap();
            assert_eq!(r.outcomes, expect, "seed {seed}, cut {position}");
            assert!(r.dead_letters.is_empty(), "seed {seed}");
            let conflicts = expect
                .iter()
                .filter(|o| matches!(o, ItemOutcome::ConflictKeptDatabase { .. }))
                .count();
            assert_eq!(r.conflicts.len(), conflicts, "seed {seed}, cut {position}");
        }
        let keys: Vec<_> = names.iter().map(|n| key(n)).collect();
        let loaded = w.load(&keys).await.unwrap();
        for (k, row) in loaded {
            let want = model.get(&*k).map(|(x, v)| (Value::Int(*x), *v));
            assert_eq!(row, want, "seed {seed}, key {k}");
        }
        assert_eq!(w.progress().await.unwrap(), Some(cuts));
        w.close().await;
    }

    /// Every outcome a flush reports (value and version read back in the
    /// write statement) equals the row the database then holds: counters on
    /// new and existing rows, blind and versioned puts, deletes, and
    /// conflicting puts kept and overwritten, over several small chunks.
    pub async fn read_back_equals_the_database(fx: &Fixture) {
        let w = fx
            .writer(
                fx.config("rb")
                    .max_rows_per_statement(3)
                    .conflict_policy(ConflictPolicy::Overwrite),
            )
            .await;
        let first: Vec<_> = (0..8)
            .map(|i| item(&format!("c{i}"), Change::Add(i + 1), Expected::Any))
            .chain([
                item("p", Change::Put(Value::Int(10)), Expected::Absent),
                item("q", Change::Put(Value::Int(20)), Expected::Any),
                item("x", Change::Put(Value::Int(30)), Expected::Any),
            ])
            .collect();
        w.flush(&cut(1, first)).await.unwrap();
        // Someone else moves "q" to version 2: our put expecting 1 conflicts.
        let (t, v, ver, k) = (
            fx.q(&fx.name("data")),
            fx.q("value"),
            fx.q("version"),
            fx.q("key"),
        );
        w.execute_sql(&format!(
            "UPDATE {t} SET {v} = 21, {ver} = 2 WHERE {k} = 'q'"
        ))
        .await
        .unwrap();
        let second: Vec<_> = (0..12)
            .map(|i| item(&format!("c{i}"), Change::Add(-3 * i), Expected::Any))
            .chain([
                item("p", Change::Put(Value::Int(11)), Expected::Version(1)),
                item("q", Change::Put(Value::Int(22)), Expected::Version(1)),
                item("r", Change::Put(Value::Int(40)), Expected::Absent),
                item("s", Change::Put(Value::Int(50)), Expected::Any),
                item("x", Change::Delete, Expected::Any),
            ])
            .collect();
        let keys: Vec<Key> = second.iter().map(|i| i.key.clone()).collect();
        let r = w.flush(&cut(2, second)).await.unwrap();
        assert_eq!(r.conflicts.len(), 1);
        assert_eq!(r.conflicts[0].key, key("q"));
        let loaded = w.load(&keys).await.unwrap();
        let reported: Vec<_> = r
            .outcomes
            .iter()
            .map(|o| match o {
                ItemOutcome::Written {
                    version: Some(ver),
                    value: Some(v),
                } => Some((v.clone(), *ver)),
                ItemOutcome::Deleted => None,
                other => panic!("unexpected outcome {other:?}"),
            })
            .collect();
        let held: Vec<_> = loaded.into_iter().map(|(_, row)| row).collect();
        assert_eq!(reported, held);
        // The exact figures, so equal-but-wrong read-backs cannot pass.
        assert_eq!(held[0], Some((Value::Int(1), 2)));
        assert_eq!(held[7], Some((Value::Int(8 - 21), 2)));
        assert_eq!(held[8], Some((Value::Int(-24), 1)));
        assert_eq!(
            held[12..],
            [
                Some((Value::Int(11), 2)),
                Some((Value::Int(22), 3)),
                Some((Value::Int(40), 1)),
                Some((Value::Int(50), 1)),
                None
            ]
        );
        w.close().await;
    }

    /// 3 000 keys of 500 bytes: the read-back binds at most 4 MiB of JSON
    /// (counted as six bytes per key byte) per statement, so SQLite and
    /// MySQL read back in 3 statements (1 397 + 1 397 + 206 keys). Their
    /// upserts go in chunks of a text seen before: SQLite 2 048 + 512 + 256
    /// + 128 + 32 + 16 + 8 rows, MySQL 2 000, then 512 + 256 + 128 + 64 + 32 + 8.
    pub async fn read_back_of_long_keys_splits_by_bytes(fx: &Fixture) {
        let w = fx.writer(fx.config("lk")).await;
        let name = |i: i64| format!("{i:04}{}", "x".repeat(496));
        let items: Vec<_> = (0..3000)
            .map(|i| item(&name(i), Change::Add(i), Expected::Any))
            .collect();
        let r = w.flush(&cut(1, items)).await.unwrap();
        assert_eq!(r.rows, 3000);
        let writes = match fx.backend {
            writebehind_writer::Backend::Postgres => 1,
            writebehind_writer::Backend::Sqlite => 7 + 3,
            writebehind_writer::Backend::MySql => 7 + 3,
        };
        assert_eq!(r.statements, 3 + writes);
        let expect: Vec<_> = (0..3000).map(|i| written(1, Value::Int(i))).collect();
        assert_eq!(r.outcomes, expect);
        w.close().await;
    }

    pub async fn load_all_pages_in_key_order(fx: &Fixture) {
        let w = fx.writer(fx.config("la")).await;
        let items = (0..23)
            .map(|i| item(&format!("k{i:02}"), Change::Add(i), Expected::Any))
            .collect();
        w.flush(&cut(1, items)).await.unwrap();
        let mut pages = Vec::new();
        let n = w.load_all(5, |page| pages.push(page)).await.unwrap();
        assert_eq!(n, 23);
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![5, 5, 5, 5, 3]
        );
        let all: Vec<_> = pages.into_iter().flatten().collect();
        let expect: Vec<_> = (0..23)
            .map(|i| (key(&format!("k{i:02}")), Value::Int(i), 1))
            .collect();
        assert_eq!(all, expect);
        w.close().await;
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_chunks_40_000_rows_within_the_parameter_limit() {
    let fx = Fixture::sqlite();
    let w = fx
        .writer(fx.config("big").max_rows_per_statement(100_000))
        .await;
    let items: Vec<_> = (0..40_000)
        .map(|i| item(&format!("k{i:05}"), Change::Add(i % 7 + 1), Expected::Any))
        .collect();
    let r = w.flush(&cut(1, items)).await.unwrap();
    assert_eq!(r.rows, 40_000);
    // 2 parameters per row: 16 383 rows per statement -> 2 full upserts, the
    // other 7 234 rows as 4 096 + 2 048 + 1 024 + 64 + 2 (statement texts
    // prepared once per connection), then 2 read-backs of 20 000 keys (one
    // JSON parameter each), plus 3 for progress.
    assert_eq!(r.statements, 12);
    let mut sum = 0i64;
    let n = w
        .load_all(10_000, |page| {
            sum += page
                .iter()
                .map(|(_, v, _)| if let Value::Int(v) = v { *v } else { 0 })
                .sum::<i64>()
        })
        .await
        .unwrap();
    assert_eq!(n, 40_000);
    assert_eq!(sum, (0..40_000).map(|i| i % 7 + 1).sum::<i64>());
    w.close().await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_busy_is_transient_and_writes_nothing() {
    let fx = Fixture::sqlite();
    let w = fx
        .writer(fx.config("busy").busy_timeout(std::time::Duration::ZERO))
        .await;
    let locker = Writer::connect(&fx.url, fx.config("locker")).await.unwrap();
    // Hold the write lock from another connection: a one-connection pool, in a transaction.
    use sqlx::Connection;
    let path = fx.url.trim_start_matches("sqlite://").to_owned();
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = w
        .flush(&cut(1, vec![item("a", Change::Add(1), Expected::Any)]))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
    assert_eq!(w.load(&[key("a")]).await.unwrap(), vec![(key("a"), None)]);
    assert_eq!(w.progress().await.unwrap(), None);
    locker.close().await;
    w.close().await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_connection_refused_is_transient() {
    let w = Writer::connect(
        "postgres://postgres@127.0.0.1:1/test",
        WriterConfig::new("x"),
    )
    .await
    .unwrap();
    let err = w.progress().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
}

#[cfg(feature = "mysql")]
#[tokio::test]
async fn mysql_connection_refused_is_transient() {
    let w = Writer::connect("mysql://root@127.0.0.1:1/test", WriterConfig::new("x"))
        .await
        .unwrap();
    let err = w.progress().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
}

#[tokio::test]
async fn invalid_configuration_is_a_typed_error() {
    use writebehind_writer::{Error, Ident};
    let url = "sqlite::memory:";
    let e = Writer::connect(url, WriterConfig::new(""))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    let e = Writer::connect(url, WriterConfig::new("i").pool_size(0))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    let same = Ident::new("counters").unwrap();
    let e = Writer::connect(url, WriterConfig::new("i").progress_table(same))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    let e = Writer::connect("redis://x", WriterConfig::new("i"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UnsupportedUrl { .. }), "{e}");
    struct KeyCol(Vec<Column>);
    impl RowCodec for KeyCol {
        fn columns(&self) -> &[Column] {
            &self.0
        }
        fn to_row(&self, _: &[u8]) -> Result<Vec<SqlValue>, String> {
            Ok(vec![])
        }
        fn from_row(&self, _: Vec<SqlValue>) -> Result<Vec<u8>, String> {
            Ok(vec![])
        }
    }
    let codec = Arc::new(KeyCol(vec![
        Column::new("key", SqlType::Text, false).unwrap()
    ]));
    let spec = TableSpec::record("t", codec).unwrap();
    let e = Writer::connect(url, WriterConfig::new("i").table(spec))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    assert!(matches!(
        TableSpec::counter("a;drop"),
        Err(Error::InvalidIdent { .. })
    ));
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn in_memory_sqlite_works() {
    let w = Writer::connect("sqlite::memory:", WriterConfig::new("m"))
        .await
        .unwrap();
    w.create_tables().await.unwrap();
    let r = w
        .flush(&cut(1, vec![item("a", Change::Add(4), Expected::Any)]))
        .await
        .unwrap();
    assert_eq!(r.outcomes, vec![written(1, Value::Int(4))]);
    assert_eq!(
        w.load(&[key("a")]).await.unwrap(),
        vec![(key("a"), Some((Value::Int(4), 1)))]
    );
}
