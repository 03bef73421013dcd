//! `writebehind bench --shape posts`: the same workload on a table of the user's shape,
//! `posts(id BIGINT PRIMARY KEY, title TEXT NOT NULL, views BIGINT, likes BIGINT)`, created
//! with plain SQL and pre-filled with every key (the mapping is update-only), written through
//! a derived delta record with two counters: `views` +1 on every write, `likes` +1 on every
//! tenth write of each writer. Contenders, each on its own pre-filled table:
//!
//! - **writebehind**: end to end, as for the counter table.
//! - **writebehind flush**: the cache's flush alone: the coalesced batches the raw baseline
//!   replays, added to a cache whose flusher never runs on its own, then `flush()`ed one by
//!   one; only the `flush()` calls are timed. Its "vs raw" is the flush-throughput ratio.
//! - **raw batched**: the same batches as one `UPDATE … SET views = views + Δv,
//!   likes = likes + Δl` per chunk, one transaction per batch (PostgreSQL `UPDATE … FROM UNNEST(…)`, SQLite
//!   `WITH src AS (VALUES …) UPDATE … FROM src`, MySQL/MariaDB a multi-row `INSERT … ON
//!   DUPLICATE KEY UPDATE views = views + VALUES(views)` that never inserts).
//! - **write-through**: one `UPDATE … SET views = views + 1, likes = likes + ? WHERE id = ?`
//!   per write.
//!
//! Every table is read back at the end: each row's views and likes must equal the writes made
//! to it and its title must be untouched (exit 1 otherwise).

use super::*;
use serde::Deserialize;

/// The two counter columns of `posts`: a delta record. No table in the mapping: the
/// builder's (one per contender) is used.
#[derive(Clone, Debug, Default, Serialize, Deserialize, writebehind::Record)]
#[writebehind(key(id), update_only)]
struct PostCounters {
    #[writebehind(counter)]
    views: i64,
    #[writebehind(counter)]
    likes: i64,
}

/// Per key: (views, likes).
type Totals = Vec<(i64, i64)>;
/// One flush's rows: (id, Δviews, Δlikes), each id once.
type Batch = Vec<(i64, i64, i64)>;

/// Likes of a writer's `n`-th write (0-based): one in ten.
fn likes(n: u64) -> i64 {
    i64::from(n % 10 == 9)
}

fn title(id: i64) -> String {
    format!("post {id}")
}

/// Makes `table` anew with plain SQL, a row per key with its title and zero counts.
async fn posts_table(
    pool: &sqlx::AnyPool,
    backend: Backend,
    table: &str,
    keys: u64,
) -> Result<(), String> {
    exec(pool, &format!("DROP TABLE IF EXISTS {table}")).await?;
    exec(
        pool,
        &format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, title TEXT NOT NULL, \
             views BIGINT NOT NULL DEFAULT 0, likes BIGINT NOT NULL DEFAULT 0)"
        ),
    )
    .await?;
    let ids: Vec<i64> = (0..keys as i64).collect();
    for chunk in ids.chunks(1_000) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| {
                format!(
                    "({}, {})",
                    backend.placeholder(2 * i + 1),
                    backend.placeholder(2 * i + 2)
                )
            })
            .collect();
        let sql = format!("INSERT INTO {table} (id, title) VALUES {}", rows.join(", "));
        let mut q = sqlx::query(sql_text(&sql));
        for id in chunk {
            q = q.bind(*id).bind(title(*id));
        }
        q.execute(pool)
            .await
            .map_err(|e| format!("filling {table}: {e}"))?;
    }
    Ok(())
}

/// What the writes of `per_writer` (same seeds as the runs) add to each key.
fn expected(args: &Args, per_writer: &[u64]) -> Result<Totals, String> {
    let mut want = vec![(0i64, 0i64); args.keys as usize];
    for (w, n) in per_writer.iter().enumerate() {
        let mut keys = Keys::new(args.dist, args.keys, w as u64)?;
        for i in 0..*n {
            let e = &mut want[keys.next_key() as usize];
            e.0 += 1;
            e.1 += likes(i);
        }
    }
    Ok(want)
}

/// [`coalesced_batches`] for posts: the run's writes interleaved, a batch closing after
/// `window` writes, each key once per batch with its summed deltas.
fn coalesced(args: &Args, window: u64, per_writer: &[u64]) -> Result<Vec<Batch>, String> {
    let mut gens = per_writer
        .iter()
        .enumerate()
        .map(|(w, n)| Ok((Keys::new(args.dist, args.keys, w as u64)?, 0u64, *n)))
        .collect::<Result<Vec<_>, String>>()?;
    let mut out = Vec::new();
    let mut cur: HashMap<u64, (i64, i64)> = HashMap::new();
    let mut in_window = 0u64;
    let mut left: u64 = per_writer.iter().sum();
    let drain = |cur: &mut HashMap<u64, (i64, i64)>| -> Batch {
        cur.drain().map(|(k, (v, l))| (k as i64, v, l)).collect()
    };
    while left > 0 {
        for (g, i, n) in gens.iter_mut() {
            if *i == *n {
                continue;
            }
            let k = g.next_key();
            let l = likes(*i);
            *i += 1;
            left -= 1;
            if in_window == window {
                out.push(drain(&mut cur));
                in_window = 0;
            }
            let e = cur.entry(k).or_default();
            e.0 += 1;
            e.1 += l;
            in_window += 1;
        }
    }
    if !cur.is_empty() {
        out.push(drain(&mut cur));
    }
    Ok(out)
}

/// Reads `table` back against `want`: (views total, likes total, what is wrong if anything).
async fn check(
    pool: &sqlx::AnyPool,
    table: &str,
    want: &[(i64, i64)],
) -> Result<(i64, i64, Option<String>), String> {
    let sql = format!("SELECT id, title, views, likes FROM {table} ORDER BY id");
    let rows = sqlx::query(sql_text(&sql))
        .fetch_all(pool)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    let mut problems = Vec::new();
    if rows.len() != want.len() {
        problems.push(format!("{} rows, {} expected", rows.len(), want.len()));
    }
    let (mut views_sum, mut likes_sum) = (0, 0);
    for row in &rows {
        let get = |c: &str| {
            row.try_get::<i64, _>(c)
                .map_err(|e| format!("{sql}: {c}: {e}"))
        };
        let (id, views, likes) = (get("id")?, get("views")?, get("likes")?);
        let t: String = row
            .try_get("title")
            .map_err(|e| format!("{sql}: title: {e}"))?;
        views_sum += views;
        likes_sum += likes;
        match usize::try_from(id).ok().and_then(|i| want.get(i)) {
            None => problems.push(format!("id {id}: a row nobody inserted")),
            Some(&w) if w != (views, likes) => problems.push(format!(
                "id {id}: views {views}, likes {likes}; written {}, {}",
                w.0, w.1
            )),
            Some(_) => {}
        }
        if t != title(id) {
            problems.push(format!("id {id}: title changed to {t:?}"));
        }
    }
    let problem = (!problems.is_empty()).then(|| {
        let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
        format!("{} wrong rows: {}", problems.len(), shown.join("; "))
    });
    Ok((views_sum, likes_sum, problem))
}

/// An outcome whose figures come from a read-back against `want`.
#[allow(clippy::too_many_arguments)]
fn outcome(
    contender: &'static str,
    mode: Option<Mode>,
    batch: Option<usize>,
    writes: u64,
    seconds: f64,
    hist: &Histogram<u64>,
    latency_of: &'static str,
    sql_rows: u64,
    (views, likes, problem): (i64, i64, Option<String>),
) -> Outcome {
    Outcome {
        contender,
        durability: mode.map(|m| m.to_string()),
        batch,
        increments: writes,
        seconds,
        increments_per_sec: writes as f64 / seconds,
        latency_p50_us: micros(hist, 0.5),
        latency_p99_us: micros(hist, 0.99),
        latency_of,
        sql_rows,
        sql_rows_per_increment: sql_rows as f64 / writes.max(1) as f64,
        flush_rows_per_sec: sql_rows as f64 / seconds,
        db_total: views,
        totals_match: problem.is_none() && views == writes as i64,
        vs_write_through: None,
        vs_raw_batched: None,
        db_likes: Some(likes),
        mismatch: problem,
    }
}

async fn open_cache(
    dir: &Path,
    url: &str,
    table: &str,
    mode: Mode,
    interval: Duration,
    batch: usize,
) -> Result<WriteBehind<i64, PostCounters>, String> {
    WriteBehind::<i64, PostCounters>::builder(dir)
        .database(url)
        .table(table)
        .create_tables(true)
        .durability(mode.durability)
        .flush_interval(interval)
        .flush_dirty_entries(batch)
        .open()
        .await
        .map_err(|e| format!("cannot open the cache in {}: {e}", dir.display()))
}

/// Closes the cache, then forgets its throw-away instance's progress row.
async fn close_cache(
    cache: WriteBehind<i64, PostCounters>,
    pool: &sqlx::AnyPool,
    dir: &Path,
) -> Result<writebehind::Stats, String> {
    let stats = cache.stats();
    cache
        .close()
        .await
        .map_err(|e| format!("closing the cache failed: {e}"))?;
    if let Ok(id) = std::fs::read_to_string(dir.join("instance.id")) {
        let sql = format!(
            "DELETE FROM writebehind_progress WHERE instance = '{}'",
            id.trim().replace('\'', "")
        );
        let _ = exec(pool, &sql).await;
    }
    if stats.dead_letters > 0 {
        return Err(format!(
            "the cache dead-lettered {} rows of a pre-filled table",
            stats.dead_letters
        ));
    }
    Ok(stats)
}

#[allow(clippy::too_many_arguments)]
async fn writebehind_run(
    args: &Args,
    dir: &Path,
    url: &str,
    backend: Backend,
    pool: &sqlx::AnyPool,
    table: &str,
    mode: Mode,
    batch: usize,
) -> Result<(Outcome, u64, Vec<u64>), String> {
    posts_table(pool, backend, table, args.keys).await?;
    let interval = Duration::from_millis(args.flush_interval_ms);
    let cache = open_cache(dir, url, table, mode, interval, batch).await?;
    let quota_total = args.duration.is_none().then_some(args.ops);
    let progress = ProgressLine::start(format!("writebehind {mode} batch {batch}"), quota_total);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let cache = cache.clone();
        let done = progress.done.clone();
        let mut keys = Keys::new(args.dist, args.keys, w)?;
        let quota = match args.duration {
            Some(d) => Quota::Until(start + Duration::from_secs_f64(d)),
            None => Quota::Ops(args.ops / args.writers + u64::from(w < args.ops % args.writers)),
        };
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut n = 0u64;
            while quota.more(n) {
                let id = keys.next_key() as i64;
                let delta = PostCounters {
                    views: 1,
                    likes: likes(n),
                };
                let t0 = Instant::now();
                cache.add(&id, delta).await?;
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
        let _ = cache.close().await;
        return Err(f);
    }
    cache
        .flush()
        .await
        .map_err(|e| format!("writebehind final flush failed: {e}"))?;
    let seconds = start.elapsed().as_secs_f64();
    let stats = close_cache(cache, pool, dir).await?;
    let writes: u64 = per_writer.iter().sum();
    let read = check(pool, table, &expected(args, &per_writer)?).await?;
    let o = outcome(
        "writebehind",
        Some(mode),
        Some(batch),
        writes,
        seconds,
        &hist,
        "increment",
        stats.rows_flushed,
        read,
    );
    Ok((o, stats.flushes, per_writer))
}

/// The cache's flush alone, on the raw baseline's batches: each batch's rows are added
/// (untimed) to a cache whose flusher waits for `flush()`, which is timed.
#[allow(clippy::too_many_arguments)]
async fn flush_run(
    args: &Args,
    dir: &Path,
    url: &str,
    backend: Backend,
    pool: &sqlx::AnyPool,
    table: &str,
    mode: Mode,
    batch: usize,
    batches: &[Batch],
    want: &[(i64, i64)],
) -> Result<Outcome, String> {
    posts_table(pool, backend, table, args.keys).await?;
    let hour = Duration::from_secs(3_600);
    let cache = open_cache(dir, url, table, mode, hour, usize::MAX).await?;
    let rows: u64 = batches.iter().map(|b| b.len() as u64).sum();
    let progress = ProgressLine::start(format!("writebehind flush, batch {batch}"), Some(rows));
    let mut hist = histogram();
    let mut flushing = Duration::ZERO;
    for b in batches {
        for &(id, views, likes) in b {
            let add = cache.add(&id, PostCounters { views, likes }).await;
            if let Err(e) = add {
                let _ = cache.close().await;
                return Err(format!("writebehind add failed: {e}"));
            }
        }
        let t0 = Instant::now();
        if let Err(e) = cache.flush().await {
            let _ = cache.close().await;
            return Err(format!("writebehind flush failed: {e}"));
        }
        let took = t0.elapsed();
        flushing += took;
        hist.saturating_record(took.as_nanos() as u64);
        progress.done.fetch_add(b.len() as u64, Ordering::Relaxed);
    }
    progress.finish();
    let stats = close_cache(cache, pool, dir).await?;
    let writes = want.iter().map(|w| w.0 as u64).sum();
    let read = check(pool, table, want).await?;
    let seconds = flushing.as_secs_f64();
    let sql_rows = stats.rows_flushed;
    let o = outcome(
        "writebehind flush",
        Some(mode),
        Some(batch),
        writes,
        seconds,
        &hist,
        "batch",
        sql_rows,
        read,
    );
    Ok(o)
}

/// One transaction of `rows`, chunked, through the backend's batched `UPDATE`.
async fn raw_batch(
    raw: &Raw,
    backend: Backend,
    table: &str,
    rows: &[(i64, i64, i64)],
) -> Result<(), String> {
    let fail = |e: sqlx::Error| format!("raw batched update: {e}");
    match raw {
        #[cfg(feature = "postgres")]
        Raw::Pg(pool) => {
            let sql = format!(
                "UPDATE {table} SET views = {table}.views + u.dv, likes = {table}.likes + u.dl \
                 FROM UNNEST($1::int8[], $2::int8[], $3::int8[]) AS u(id, dv, dl) \
                 WHERE {table}.id = u.id"
            );
            let mut tx = pool.begin().await.map_err(fail)?;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let ids: Vec<i64> = chunk.iter().map(|r| r.0).collect();
                let dv: Vec<i64> = chunk.iter().map(|r| r.1).collect();
                let dl: Vec<i64> = chunk.iter().map(|r| r.2).collect();
                sqlx::query(sql_text(&sql))
                    .bind(ids)
                    .bind(dv)
                    .bind(dl)
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
            }
            tx.commit().await.map_err(fail)
        }
        Raw::Any(pool) => {
            let mut tx = pool.begin().await.map_err(fail)?;
            let per = if backend == Backend::Mysql {
                2_000
            } else {
                ROWS_PER_STATEMENT
            };
            for chunk in rows.chunks(per) {
                let sql = if backend == Backend::Mysql {
                    let values = vec!["(?, '', ?, ?)"; chunk.len()].join(", ");
                    format!(
                        "INSERT INTO {table} (id, title, views, likes) VALUES {values} \
                         ON DUPLICATE KEY UPDATE views = views + VALUES(views), \
                         likes = likes + VALUES(likes)"
                    )
                } else {
                    let values = vec!["(?, ?, ?)"; chunk.len()].join(", ");
                    format!(
                        "WITH src(id, dv, dl) AS (VALUES {values}) UPDATE {table} \
                         SET views = {table}.views + src.dv, likes = {table}.likes + src.dl \
                         FROM src WHERE {table}.id = src.id"
                    )
                };
                let mut q = sqlx::query(sql_text(&sql));
                for (id, dv, dl) in chunk {
                    q = q.bind(*id).bind(*dv).bind(*dl);
                }
                q.execute(&mut *tx).await.map_err(fail)?;
            }
            tx.commit().await.map_err(fail)
        }
    }
}

/// The raw baseline's connection: PostgreSQL's own driver (arrays for UNNEST), else Any.
enum Raw {
    #[cfg(feature = "postgres")]
    Pg(sqlx::PgPool),
    Any(sqlx::AnyPool),
}

#[allow(clippy::too_many_arguments)]
async fn raw_run(
    args: &Args,
    url: &str,
    backend: Backend,
    pool: &sqlx::AnyPool,
    table: &str,
    batch: usize,
    batches: &[Batch],
    want: &[(i64, i64)],
) -> Result<Outcome, String> {
    posts_table(pool, backend, table, args.keys).await?;
    let raw = match backend {
        #[cfg(feature = "postgres")]
        Backend::Postgres => Raw::Pg(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))?,
        ),
        _ => Raw::Any(pool.clone()),
    };
    let rows: u64 = batches.iter().map(|b| b.len() as u64).sum();
    let progress = ProgressLine::start(format!("raw batched, batch {batch}"), Some(rows));
    let mut hist = histogram();
    let mut seconds = 0.0;
    for b in batches {
        let t0 = Instant::now();
        raw_batch(&raw, backend, table, b).await?;
        let took = t0.elapsed();
        seconds += took.as_secs_f64();
        hist.saturating_record(took.as_nanos() as u64);
        progress.done.fetch_add(b.len() as u64, Ordering::Relaxed);
    }
    progress.finish();
    #[cfg(feature = "postgres")]
    if let Raw::Pg(p) = raw {
        p.close().await;
    }
    let writes = want.iter().map(|w| w.0 as u64).sum();
    let read = check(pool, table, want).await?;
    let o = outcome(
        "raw batched",
        None,
        Some(batch),
        writes,
        seconds,
        &hist,
        "batch",
        rows,
        read,
    );
    Ok(o)
}

async fn write_through_run(
    args: &Args,
    backend: Backend,
    pool: &sqlx::AnyPool,
    table: &str,
) -> Result<Outcome, String> {
    posts_table(pool, backend, table, args.keys).await?;
    let sql = sql_text(&format!(
        "UPDATE {table} SET views = views + 1, likes = likes + {} WHERE id = {}",
        backend.placeholder(1),
        backend.placeholder(2)
    ));
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
        let ops = args.ops / args.writers + u64::from(w < args.ops % args.writers);
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut n = 0u64;
            while n < ops && Instant::now() < deadline {
                let id = keys.next_key() as i64;
                let t0 = Instant::now();
                sqlx::query(sql.clone())
                    .bind(likes(n))
                    .bind(id)
                    .execute(&pool)
                    .await?;
                h.saturating_record(t0.elapsed().as_nanos() as u64);
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, sqlx::Error>((h, n))
        }));
    }
    let (hist, per_writer, failure) = join_writers(tasks, "write-through update").await;
    let seconds = start.elapsed().as_secs_f64();
    progress.finish();
    if let Some(f) = failure {
        return Err(f);
    }
    let writes: u64 = per_writer.iter().sum();
    let read = check(pool, table, &expected(args, &per_writer)?).await?;
    Ok(outcome(
        "write-through",
        None,
        None,
        writes,
        seconds,
        &hist,
        "increment",
        writes,
        read,
    ))
}

/// Every contender of `--shape posts`, each on its own pre-filled table (named in `tables`
/// for the caller to drop).
pub(super) async fn contenders(
    args: &Args,
    scratch: &Path,
    url: &str,
    backend: Backend,
    pool: &sqlx::AnyPool,
    tag: &str,
    tables: &mut Vec<String>,
) -> Result<Vec<Outcome>, String> {
    let mut out = Vec::new();
    // Per batch size, of its largest writebehind run: writes per flush, per writer, mode.
    let mut shares: Vec<(usize, u64, Vec<u64>, Mode)> = Vec::new();
    let mut run = 0;
    for &batch in &args.batch {
        for mode in &args.durability {
            run += 1;
            let table = format!("wb_bench_{tag}_wb{run}");
            tables.push(table.clone());
            let dir = scratch.join(format!("wal-{run}"));
            let (o, flushes, per_writer) =
                writebehind_run(args, &dir, url, backend, pool, &table, *mode, batch).await?;
            let window = o.increments.div_ceil(flushes.max(1)).max(1);
            match shares.iter_mut().find(|s| s.0 == batch) {
                Some(s) if s.2.iter().sum::<u64>() >= o.increments => {}
                Some(s) => *s = (batch, window, per_writer, *mode),
                None => shares.push((batch, window, per_writer, *mode)),
            }
            out.push(o);
        }
    }
    for (batch, window, per_writer, mode) in &shares {
        let batches = coalesced(args, *window, per_writer)?;
        let want = expected(args, per_writer)?;
        let table = format!("wb_bench_{tag}_fl{batch}");
        tables.push(table.clone());
        let dir = scratch.join(format!("wal-flush-{batch}"));
        out.push(
            flush_run(
                args, &dir, url, backend, pool, &table, *mode, *batch, &batches, &want,
            )
            .await?,
        );
        let table = format!("wb_bench_{tag}_raw{batch}");
        tables.push(table.clone());
        out.push(raw_run(args, url, backend, pool, &table, *batch, &batches, &want).await?);
    }
    let table = format!("wb_bench_{tag}_wt");
    tables.push(table.clone());
    out.push(write_through_run(args, backend, pool, &table).await?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn batches_sum_to_the_expected_totals() {
        let cli = <crate::Cli as clap::Parser>::try_parse_from([
            "writebehind",
            "bench",
            "--shape",
            "posts",
            "--keys",
            "50",
        ])
        .unwrap();
        let crate::Command::Bench(args) = cli.command else {
            panic!("not bench")
        };
        let per_writer = [100, 99, 0, 5];
        let want = expected(&args, &per_writer).unwrap();
        assert_eq!(want.iter().map(|w| w.0).sum::<i64>(), 204);
        // One like in ten per writer: 10 + 9 + 0 + 0.
        assert_eq!(want.iter().map(|w| w.1).sum::<i64>(), 19);
        for window in [1, 7, 10, 1_000] {
            let mut got = vec![(0i64, 0i64); 50];
            let batches = coalesced(&args, window, &per_writer).unwrap();
            assert_eq!(batches.len() as u64, 204u64.div_ceil(window));
            for b in &batches {
                let mut ids: Vec<i64> = b.iter().map(|r| r.0).collect();
                ids.sort_unstable();
                ids.dedup();
                assert_eq!(ids.len(), b.len(), "a key twice in one batch");
                for &(id, v, l) in b {
                    got[id as usize].0 += v;
                    got[id as usize].1 += l;
                }
            }
            assert_eq!(got, want, "window {window}");
        }
    }
}
