//! The lost-machine test: a three-node JetStream cluster on loopback ports
//! (started here, temporary stores, an R3 stream), `writebehind stress
//! --durability replicated --print-acks` SIGKILLed at a random moment, its
//! WAL directory deleted (the machine is gone), one NATS node killed, and
//! `writebehind adopt` run with the lost instance's id. Every key is checked
//! against the printed acks, as in `crash_kill.rs`:
//!
//! `acks <= database value <= acks + writers` (an add in flight at the kill
//! may or may not have been replicated). A second `adopt` must change
//! nothing.
//!
//! Rounds per backend: `WB_REPLICA_CRASH_ROUNDS` (default 3); seed:
//! `WB_CRASH_SEED` (default random, printed).
#![allow(clippy::unwrap_used)]
#![cfg(all(feature = "sqlite", feature = "postgres", feature = "nats"))]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sqlx::Row;

#[path = "../../tests/common/nats.rs"]
mod nats;
use nats::{unique, Cluster};

const BIN: &str = env!("CARGO_BIN_EXE_writebehind");

fn postgres_url() -> String {
    std::env::var("WB_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "WB_POSTGRES_URL is not set. Run the tests with scripts/test, or set it, e.g. \
             WB_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test"
        )
    })
}

fn env_u64(var: &str) -> Option<u64> {
    std::env::var(var).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a number"))
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
        err.read_to_string(&mut s).ok();
        s
    })
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

struct Stream {
    urls: String,
    name: String,
    prefix: String,
}

impl Stream {
    fn args(&self) -> Vec<String> {
        vec![
            "--replicate".into(),
            self.urls.clone(),
            "--stream".into(),
            self.name.clone(),
            "--subject-prefix".into(),
            self.prefix.clone(),
            "--replicas".into(),
            "3".into(),
        ]
    }
}

fn adopt(s: &Stream, id: &str, url: &str, table: &str) -> std::process::Output {
    let mut args = vec!["adopt".to_owned(), "--instance".into(), id.into()];
    args.extend(s.args());
    args.extend(["--db".into(), url.into(), "--table".into(), table.into()]);
    args.extend(["--timeout".into(), "120".into()]);
    Command::new(BIN).args(&args).output().unwrap()
}

/// One round; returns (acks checked, keys checked, violations).
async fn round(
    backend: &str,
    n: u64,
    seed: u64,
    cluster: &mut Cluster,
    s: &Stream,
) -> (u64, u64, Vec<String>) {
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
        _ => (
            postgres_url(),
            format!("replica_crash_{}_{n}", std::process::id()),
        ),
    };
    let writers = rng.u64(1..=8);
    let keys = [3u64, 40, 400][rng.usize(0..3)];
    let delay = Duration::from_millis(rng.u64(300..2500));
    let node = rng.usize(0..3);
    // In half the rounds the NATS node dies while the writer runs.
    let node_first = rng.bool();
    let what = format!(
        "{backend} round {n} (seed {seed}): writers {writers}, keys {keys}, kill after {delay:?}, NATS node {node} killed {}",
        if node_first { "mid-run" } else { "after the writer" }
    );
    let mut stress = Command::new(BIN)
        .arg("stress")
        .arg("--wal")
        .arg(&wal)
        .args(["--db", &url, "--table", &table])
        .args(["--keys", &keys.to_string(), "--ops", "1000000000"])
        .args(["--writers", &writers.to_string()])
        .args(["--durability", "replicated"])
        .args(s.args())
        .args(["--seed", &seed.to_string(), "--print-acks"])
        .args(["--flush-interval-ms", &rng.u64(5..200).to_string()])
        .args(["--checkpoint-bytes", &rng.u64(5_000..100_000).to_string()])
        .args(["--segment-bytes", &rng.u64(4_000..100_000).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let counted = count_acks(&mut stress);
    let err = drain(&mut stress);
    if node_first {
        std::thread::sleep(delay / 2);
        cluster.nodes[node].kill();
        std::thread::sleep(delay / 2);
    } else {
        std::thread::sleep(delay);
    }
    let running = stress.try_wait().unwrap().is_none();
    stress.kill().ok();
    stress.wait().unwrap();
    let acks = counted.join().unwrap();
    let err = err.join().unwrap();
    // A writer whose stream leader died may time out a replicated add (after
    // the backpressure wait) and stop: what it acknowledged still counts.
    assert!(
        running || (node_first && err.contains("the replica did not acknowledge")),
        "{what}: stress exited before the kill: {err}"
    );
    // The machine is gone: its WAL with it. Its id is what the operator knows.
    let id = std::fs::read_to_string(wal.join("instance.id"))
        .unwrap_or_else(|e| panic!("{what}: no instance.id ({e}); stress said: {err}"));
    std::fs::remove_dir_all(&wal).unwrap();
    if !node_first {
        cluster.nodes[node].kill();
    }

    let out = adopt(s, &id, &url, &table);
    assert!(
        out.status.success(),
        "{what}: adopt failed: {}\nstress stderr: {err}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = db_values(&url, &table).await;
    let mut violations = Vec::new();
    let (mut acked, mut keys_checked) = (0, 0);
    let mut all: Vec<&String> = acks.keys().chain(db.keys()).collect();
    all.sort();
    all.dedup();
    for key in all {
        let a = acks.get(key).copied().unwrap_or(0);
        let v = db.get(key).copied().unwrap_or(0);
        if v < a as i64 || v > (a + writers) as i64 {
            violations.push(format!("{what}: key {key}: {a} acks, database {v}"));
        }
        acked += a;
        keys_checked += 1;
    }
    // Twice changes nothing.
    let again = adopt(s, &id, &url, &table);
    assert!(
        again.status.success(),
        "{what}: second adopt failed: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        said.contains("flushed 0 rows"),
        "{what}: second adopt: {said}"
    );
    assert_eq!(db_values(&url, &table).await, db, "{what}: second adopt");
    if backend != "sqlite" {
        drop_table(&url, &table).await;
    }
    // The node comes back and catches up before the next round kills one:
    // two nodes down at once would be a lost quorum, not a lost node.
    cluster.nodes[node].start();
    tokio::time::sleep(Duration::from_secs(5)).await;
    wait_for_cluster(s).await;
    (acked, keys_checked, violations)
}

async fn rounds(backend: &str) {
    let mut cluster = Cluster::start();
    let s = Stream {
        urls: cluster.urls(),
        name: unique("KILL"),
        prefix: unique("kill"),
    };
    let rounds = env_u64("WB_REPLICA_CRASH_ROUNDS").unwrap_or(3);
    let seed = env_u64("WB_CRASH_SEED").unwrap_or_else(|| fastrand::u64(..1 << 48));
    let started = Instant::now();
    wait_for_cluster(&s).await;
    let (mut acks, mut keys, mut violations) = (0, 0, Vec::new());
    for n in 0..rounds {
        let (a, k, v) = round(backend, n, seed + n, &mut cluster, &s).await;
        acks += a;
        keys += k;
        violations.extend(v);
    }
    println!(
        "replica-crash-test {backend}: rounds {rounds}, acks checked {acks}, keys checked {keys}, violations {}, seed {seed}, {:.1}s",
        violations.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        violations.is_empty(),
        "violations:\n{}",
        violations.join("\n")
    );
    assert!(acks > 0, "no round acknowledged anything");
}

/// A new cluster elects its JetStream leader within seconds: until then a
/// stream cannot be made. `stress` with a few replicated adds says when.
async fn wait_for_cluster(s: &Stream) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let out = Command::new(BIN)
            .arg("stress")
            .arg("--wal")
            .arg(dir.path().join("wal"))
            .args(["--db", &db, "--ops", "10", "--writers", "1"])
            .args(["--durability", "replicated"])
            .args(s.args())
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < end,
            "the NATS cluster did not take a replicated write within 60 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_machine_adopted_sqlite() {
    rounds("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_machine_adopted_postgres() {
    rounds("postgres").await;
}

#[test]
fn adopt_refuses_a_bad_instance_id_before_asking_nats() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let out = Command::new(BIN)
        .args(["adopt", "--instance", "../etc", "--replicate"])
        .arg("nats://127.0.0.1:9")
        .arg("--db")
        .arg(format!("sqlite://{}?mode=rwc", db.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("instance id \"../etc\" must be 1 to 64 letters, digits or '-'"),
        "{err}"
    );
    // Refused before NATS was asked (nothing listens there: that would be a NATS error).
    assert!(!err.contains("NATS"), "{err}");
}
