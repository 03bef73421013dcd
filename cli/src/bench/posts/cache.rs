//! The cache's contenders: `writebehind` end to end, and `writebehind flush` (the cache's
//! flush alone, on the raw baseline's batches).

use super::table::{check, expected, outcome, posts_table};
use super::*;

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
pub(super) async fn writebehind_run(
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
    let cache: WriteBehind<i64, PostCounters> =
        open_cache(args, dir, url, table, mode, interval, batch).await?;
    let label = format!("writebehind {mode} batch {batch}");
    let (hist, per_writer, seconds) = run_writers(args, &cache, label, |k, n| {
        let delta = PostCounters {
            views: 1,
            likes: likes(n),
        };
        (k as i64, delta)
    })
    .await?;
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
pub(super) async fn flush_run(
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
    let cache: WriteBehind<i64, PostCounters> =
        open_cache(args, dir, url, table, mode, hour, usize::MAX).await?;
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
