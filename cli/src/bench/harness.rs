//! What every contender shares: a scratch directory, the key sequence of each writer, the
//! writer tasks and their latencies, the quota and the progress bar.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::workload::{Dist, Picker};

/// A scratch directory removed on drop (WAL directories, the default SQLite file).
pub(super) struct Scratch(pub(super) PathBuf);

impl Scratch {
    pub(super) fn new() -> Result<Scratch, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p =
            std::env::temp_dir().join(format!("writebehind-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)
            .map_err(|e| format!("cannot create scratch directory {}: {e}", p.display()))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Key generator of one writer: the same seed gives the same sequence in every contender.
pub(super) struct Keys {
    rng: StdRng,
    picker: Picker,
}

impl Keys {
    pub(super) fn new(dist: Dist, keys: u64, writer: u64) -> Result<Keys, String> {
        Ok(Keys {
            rng: StdRng::seed_from_u64(0x5EED_0000 + writer),
            picker: Picker::new(keys, dist).map_err(|e| format!("--dist: {e}"))?,
        })
    }

    pub(super) fn next_key(&mut self) -> u64 {
        self.picker.pick(&mut self.rng)
    }
}

pub(super) fn key_text(k: u64) -> String {
    format!("k{k}")
}

/// A writer task: its latencies and how many writes it made.
pub(super) type WriterTask<E> = tokio::task::JoinHandle<Result<(Histogram<u64>, u64), E>>;

/// Waits for every writer task: their latencies merged, each one's count,
/// and the failure if one failed (`what` names its operation).
pub(super) async fn join_writers<E: std::fmt::Display>(
    tasks: Vec<WriterTask<E>>,
    what: &str,
) -> (Histogram<u64>, Vec<u64>, Option<String>) {
    let mut hist = histogram();
    let mut counts = Vec::new();
    let mut failure = None;
    for t in tasks {
        match t.await {
            Ok(Ok((h, n))) => {
                // Same bounds, saturating: adding cannot fail.
                let _ = hist.add(&h);
                counts.push(n);
            }
            Ok(Err(e)) => failure = Some(format!("{what} failed: {e}")),
            Err(e) => failure = Some(format!("writer task failed: {e}")),
        }
    }
    (hist, counts, failure)
}

/// Writer `w`'s share of `--ops`: the remainder goes to the first writers.
pub(super) fn share(args: &super::Args, w: u64) -> u64 {
    args.ops / args.writers + u64::from(w < args.ops % args.writers)
}

/// A writebehind run's writers: `args.writers` tasks, each adding
/// `pick(key, n)` (its `n`-th write, to the key its distribution draws)
/// until its quota, every add timed; then the cache's final flush. Returns
/// the latencies, the writes per writer and the seconds from the first
/// write to the end of that flush; on a failed writer the cache is closed
/// and the failure returned.
pub(super) async fn run_writers<K, V, Q>(
    args: &super::Args,
    cache: &writebehind::WriteBehind<K, V>,
    label: String,
    pick: fn(u64, u64) -> (Q, V),
) -> Result<(Histogram<u64>, Vec<u64>, f64), String>
where
    K: writebehind::CacheKey,
    V: writebehind::Delta + Send + 'static,
    Q: writebehind::KeyText + Send + Sync + 'static,
{
    let quota_total = args.duration.is_none().then_some(args.ops);
    let progress = ProgressLine::start(label, quota_total);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let cache = cache.clone();
        let done = progress.done.clone();
        let mut keys = Keys::new(args.dist, args.keys, w)?;
        let quota = Quota::of_writer(args, start, w);
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut n = 0u64;
            while quota.more(n) {
                let (key, value) = pick(keys.next_key(), n);
                let t0 = Instant::now();
                cache.add(&key, value).await?;
                h.saturating_record(t0.elapsed().as_nanos() as u64);
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, writebehind::Error>((h, n))
        }));
    }
    let (hist, per_writer, failure) = join_writers(tasks, "writebehind add").await;
    progress.finish();
    if let Some(f) = failure {
        // Boxed: the close future inside this generic one is too deep to lay out inline.
        if let Err(e) = Box::pin(cache.clone().close()).await {
            return Err(format!("{f}; closing the cache failed too: {e}"));
        }
        return Err(f);
    }
    cache
        .flush()
        .await
        .map_err(|e| format!("writebehind final flush failed: {e}"))?;
    Ok((hist, per_writer, start.elapsed().as_secs_f64()))
}

/// A write-through statement bound for a writer's `n`-th write to key `k`.
pub(super) type Bind = fn(AnyQuery, u64, u64) -> AnyQuery;
type AnyQuery = sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>;

/// The write-through baseline's writers: one `sql` statement per write (bound
/// by `bind`), until each writer's share of `--ops` or the baseline's time
/// (`--baseline-secs`, at most the run's duration) is used up. Returns the
/// latencies, the writes per writer and the seconds; `what` names the
/// statement in a failure.
pub(super) async fn write_through_writers(
    args: &super::Args,
    pool: &sqlx::AnyPool,
    sql: sqlx::SqlStr,
    bind: Bind,
    what: &str,
) -> Result<(Histogram<u64>, Vec<u64>, f64), String> {
    let progress = ProgressLine::start("write-through".into(), None);
    let start = Instant::now();
    let limit = args
        .duration
        .unwrap_or(f64::INFINITY)
        .min(args.baseline_secs);
    let deadline = start + Duration::from_secs_f64(limit);
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let pool = pool.clone();
        let sql = sql.clone();
        let done = progress.done.clone();
        let mut keys = Keys::new(args.dist, args.keys, w)?;
        let ops = share(args, w);
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut n = 0u64;
            while n < ops && Instant::now() < deadline {
                let k = keys.next_key();
                let t0 = Instant::now();
                bind(sqlx::query(sql.clone()), k, n).execute(&pool).await?;
                h.saturating_record(t0.elapsed().as_nanos() as u64);
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, sqlx::Error>((h, n))
        }));
    }
    let (hist, per_writer, failure) = join_writers(tasks, what).await;
    let seconds = start.elapsed().as_secs_f64();
    progress.finish();
    match failure {
        Some(f) => Err(f),
        None => Ok((hist, per_writer, seconds)),
    }
}

pub(super) fn histogram() -> Histogram<u64> {
    // 1 ns .. 1 h, 3 significant digits: cannot fail for these bounds.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

pub(super) fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1_000.0
    }
}

/// How long a writer keeps going.
#[derive(Clone, Copy)]
pub(super) enum Quota {
    Ops(u64),
    Until(Instant),
}

impl Quota {
    /// Writer `w`'s quota in a writebehind run: the run's duration from
    /// `start`, else its share of `--ops`.
    pub(super) fn of_writer(args: &super::Args, start: Instant, w: u64) -> Quota {
        match args.duration {
            Some(d) => Quota::Until(start + Duration::from_secs_f64(d)),
            None => Quota::Ops(share(args, w)),
        }
    }

    pub(super) fn more(self, done: u64) -> bool {
        match self {
            Quota::Ops(n) => done < n,
            // Checking the clock every 64 increments keeps it off the hot path.
            Quota::Until(t) => done & 63 != 0 || Instant::now() < t,
        }
    }
}

/// A progress bar on a terminal, nothing in a pipe.
pub(super) struct ProgressLine {
    bar: ProgressBar,
    pub(super) done: Arc<AtomicU64>,
    ticker: tokio::task::JoinHandle<()>,
}

impl ProgressLine {
    pub(super) fn start(label: String, total: Option<u64>) -> ProgressLine {
        let bar = if std::io::stderr().is_terminal() {
            match total {
                Some(n) => {
                    let b = ProgressBar::new(n);
                    if let Ok(style) = ProgressStyle::with_template(
                        "{msg:<34} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
                    ) {
                        b.set_style(style.progress_chars("=> "));
                    }
                    b
                }
                None => {
                    let b = ProgressBar::new_spinner();
                    if let Ok(style) = ProgressStyle::with_template("{msg:<34} {spinner} {pos}") {
                        b.set_style(style);
                    }
                    b
                }
            }
        } else {
            ProgressBar::hidden()
        };
        bar.set_message(label);
        let done = Arc::new(AtomicU64::new(0));
        let ticker = {
            let (bar, done) = (bar.clone(), done.clone());
            tokio::spawn(async move {
                loop {
                    bar.set_position(done.load(Ordering::Relaxed));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        ProgressLine { bar, done, ticker }
    }

    pub(super) fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
