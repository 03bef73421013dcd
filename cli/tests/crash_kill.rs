//! Process-kill crash test: `writebehind stress --print-acks` is SIGKILLed
//! at a random moment (small segments, checkpoints and flush interval, so
//! many kills land during a flush or a checkpoint), sometimes the following
//! `writebehind flush` is killed too, then `flush` runs to completion and
//! every key is checked against the printed acks:
//!
//! `acks <= database value <= acks + writers` (an add in flight at the kill
//! may or may not have reached the WAL; with a second killed stress on the
//! same WAL, `writers` per life). Most rounds use `fsync`; one in four
//! `buffered:10ms` and one in eight `none`, where the same bounds hold
//! because a process crash alone loses nothing the OS was given (only an OS
//! crash or power loss would, which a SIGKILL is not).
//!
//! Rounds per backend: `WB_CRASH_ROUNDS` (default 20); seed:
//! `WB_CRASH_SEED` (default random, printed). `scripts/crash-test` runs
//! hundreds.
#![allow(clippy::unwrap_used)]
#![cfg(all(feature = "sqlite", feature = "postgres"))]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sqlx::Row;

const BIN: &str = env!("CARGO_BIN_EXE_writebehind");

#[derive(Default)]
struct Tally {
    rounds: u64,
    stress_kills: u64,
    flush_kills: u64,
    acks: u64,
    keys: u64,
    /// Rounds whose kill left a half-written checkpoint (`.ckpt.tmp`).
    mid_checkpoint: u64,
    /// Rounds whose final flush found a flush in flight (killed between its
    /// start record and its end record).
    mid_flush: u64,
    /// Rounds whose final flush cut a torn WAL tail.
    torn: u64,
    violations: Vec<String>,
}

fn env_u64(var: &str) -> Option<u64> {
    std::env::var(var).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a number"))
    })
}

fn postgres_url() -> String {
    std::env::var("WB_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "WB_POSTGRES_URL is not set. Run the tests with scripts/test, or set it, e.g. \
             WB_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test"
        )
    })
}

/// Reads `ack <key>` lines until EOF (the child's death closes the pipe).
fn count_acks(child: &mut Child) -> JoinHandle<BTreeMap<String, u64>> {
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut acks = BTreeMap::new();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(key) = line.strip_prefix("ack ") {
                *acks.entry(key.to_owned()).or_insert(0) += 1;
            }
        }
        acks
    })
}

fn drain(child: &mut Child) -> JoinHandle<String> {
    let mut err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    })
}

/// Kills `child` with SIGKILL unless it already exited; true if it was killed.
fn kill(child: &mut Child) -> bool {
    let running = child.try_wait().unwrap().is_none();
    if running {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    running
}

async fn db_values(url: &str, table: &str) -> BTreeMap<String, i64> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT key, value FROM {table}"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect()
}

async fn drop_table(url: &str, table: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

fn flush(wal: &Path, url: &str, table: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("flush").arg("--wal").arg(wal).args([
        "--db",
        url,
        "--table",
        table,
        "--timeout",
        "120",
    ]);
    cmd
}

/// One round: stress, kill, maybe kill a flush, flush, compare.
async fn round(backend: &str, n: u64, seed: u64, tally: &mut Tally) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let (url, table) = match backend {
        "sqlite" => (
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("db.sqlite").display()
            ),
            "counters".to_owned(),
        ),
        _ => (postgres_url(), format!("crash_{}_{n}", std::process::id())),
    };
    let writers = rng.u64(1..=8);
    // 20 000: cuts of 8 192 items and more, which are taken and landed on two threads.
    let keys = [3u64, 40, 400, 20_000][rng.usize(0..4)];
    let durability = match (n % 4, n % 8) {
        (3, _) => "buffered:10ms",
        (_, 5) => "none",
        _ => "fsync",
    };
    let dist = if rng.bool() { "uniform" } else { "zipf:1.0" };
    let delay = Duration::from_millis(rng.u64(30..1500));
    let what = format!(
        "{backend} round {n} (seed {seed}): writers {writers}, keys {keys}, {durability}, {dist}, kill after {delay:?}"
    );

    // Sometimes a second stress on the recovered WAL, killed too: acks add up.
    let lives = if rng.u8(0..3) == 0 { 2 } else { 1 };
    let mut acks: BTreeMap<String, u64> = BTreeMap::new();
    let mut stress_err = String::new();
    for life in 0..lives {
        let mut stress = Command::new(BIN)
            .arg("stress")
            .arg("--wal")
            .arg(&wal)
            .args(["--db", &url, "--table", &table])
            .args(["--keys", &keys.to_string(), "--ops", "1000000000"])
            .args(["--writers", &writers.to_string()])
            .args(["--durability", durability, "--dist", dist])
            .args(["--seed", &(seed + life).to_string(), "--print-acks"])
            .args(["--flush-interval-ms", &rng.u64(2..60).to_string()])
            .args(["--checkpoint-bytes", &rng.u64(1_000..40_000).to_string()])
            .args(["--segment-bytes", &rng.u64(2_000..40_000).to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let counted = count_acks(&mut stress);
        let err = drain(&mut stress);
        std::thread::sleep(if life == 0 {
            delay
        } else {
            Duration::from_millis(rng.u64(30..1500))
        });
        let killed = kill(&mut stress);
        let counted = counted.join().unwrap();
        let err = err.join().unwrap();
        assert!(
            killed,
            "{what}: stress (life {life}) exited before the kill: {err}"
        );
        tally.stress_kills += 1;
        for (k, n) in counted {
            *acks.entry(k).or_insert(0) += n;
        }
        stress_err.push_str(&err);
    }
    let in_flight = writers * lives;

    if !wal.is_dir() {
        // Killed before it made its directory: nothing can have been acknowledged.
        assert!(acks.is_empty(), "{what}: acks without a WAL directory");
        tally.rounds += 1;
        return;
    }
    let names: Vec<String> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    if names.iter().any(|n| n.ends_with(".ckpt.tmp")) {
        tally.mid_checkpoint += 1;
    }
    if rng.u8(0..3) == 0 {
        let mut f = flush(&wal, &url, &table)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(0..150)));
        if kill(&mut f) {
            tally.flush_kills += 1;
        }
    }
    let out = flush(&wal, &url, &table).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: flush failed: {}\nstress stderr: {stress_err}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    tally.mid_flush += u64::from(said.contains("in flight"));
    tally.torn += u64::from(said.contains("torn tail"));

    let db = db_values(&url, &table).await;
    let mut all: Vec<&String> = acks.keys().chain(db.keys()).collect();
    all.sort();
    all.dedup();
    for key in all {
        let a = acks.get(key).copied().unwrap_or(0);
        let v = db.get(key).copied().unwrap_or(0);
        let low_ok = v >= a as i64;
        let high_ok = v <= (a + in_flight) as i64;
        if !(low_ok && high_ok) {
            tally
                .violations
                .push(format!("{what}: key {key}: {a} acks, database {v}"));
        }
        tally.acks += a;
        tally.keys += 1;
    }
    if backend != "sqlite" {
        drop_table(&url, &table).await;
    }
    tally.rounds += 1;
}

async fn crash_rounds(backend: &str) {
    let rounds = env_u64("WB_CRASH_ROUNDS").unwrap_or(20);
    let seed = env_u64("WB_CRASH_SEED").unwrap_or_else(|| fastrand::u64(..1 << 48));
    let started = Instant::now();
    let mut tally = Tally::default();
    for n in 0..rounds {
        round(backend, n, seed + n, &mut tally).await;
    }
    println!(
        "crash-test {backend}: rounds {}, kills {} (stress {}, flush {}), acks checked {}, keys checked {}, violations {}, seed {seed}, {:.1}s; \
         kills seen mid-checkpoint {}, mid-flush {}, torn tails {}",
        tally.rounds,
        tally.stress_kills + tally.flush_kills,
        tally.stress_kills,
        tally.flush_kills,
        tally.acks,
        tally.keys,
        tally.violations.len(),
        started.elapsed().as_secs_f64(),
        tally.mid_checkpoint,
        tally.mid_flush,
        tally.torn
    );
    assert!(
        tally.violations.is_empty(),
        "violations:\n{}",
        tally.violations.join("\n")
    );
    assert!(tally.acks > 0, "no round acknowledged anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_stress_and_flush_sqlite() {
    crash_rounds("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_stress_and_flush_postgres() {
    crash_rounds("postgres").await;
}

/// Regression (found by the crash test: a second stress started while the
/// killed one's `CREATE TABLE` was still running): PostgreSQL's
/// `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent creator, the
/// loser failing on a catalog unique index (`pg_type_typname_nsp_index`), so
/// one of two caches opening at once on a fresh table failed to open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_opening_at_once_on_a_fresh_postgres_table_all_open() {
    let url = postgres_url();
    for n in 0..8 {
        let table = format!("race_{}_{n}", std::process::id());
        let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
        let opens: Vec<_> = dirs
            .iter()
            .map(|d| {
                let (url, table, dir) = (url.clone(), table.clone(), d.path().to_owned());
                tokio::spawn(async move {
                    writebehind::WriteBehind::<String, i64>::builder(dir)
                        .database(url)
                        .table(table)
                        .create_tables(true)
                        .open()
                        .await
                })
            })
            .collect();
        for o in opens {
            let cache = o.await.unwrap().unwrap_or_else(|e| panic!("{table}: {e}"));
            cache.close().await.unwrap();
        }
        drop_table(&url, &table).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_runs_its_ops_and_the_database_holds_every_add() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("db.sqlite").display()
    );
    let out = Command::new(BIN)
        .arg("stress")
        .arg("--wal")
        .arg(dir.path().join("wal"))
        .args([
            "--db",
            &url,
            "--keys",
            "50",
            "--ops",
            "3001",
            "--writers",
            "3",
        ])
        .args([
            "--dist",
            "zipf:1.0",
            "--seed",
            "9",
            "--durability",
            "buffered:10ms",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["acked"], 3001);
    assert_eq!(summary["errors"], 0);
    assert_eq!(summary["seed"], 9);
    assert_eq!(summary["durability"], "buffered:10ms");
    assert_eq!(summary["closed_clean"], true);
    let db = db_values(&url, "counters").await;
    assert_eq!(db.values().sum::<i64>(), 3001);
    // Zipf: k0 is the most popular key.
    let top = db.iter().max_by_key(|(_, v)| **v).unwrap().0;
    assert_eq!(top, "k0");
}
