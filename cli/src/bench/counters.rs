//! The contenders on the cache's own counter table: writebehind, raw batched and
//! write-through.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use writebehind::WriteBehind;

use super::harness::{
    histogram, key_text, micros, run_writers, write_through_writers, Bind, Keys, ProgressLine,
};
use super::report::Outcome;
use super::sql::{exec, sql_text, total, Backend, ROWS_PER_STATEMENT};
use super::{Args, Mode};

#[allow(clippy::too_many_arguments)]
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
    // Per batch size: increments per flush and per writer of its largest writebehind run.
    let mut shares: Vec<(usize, u64, Vec<u64>)> = Vec::new();
    let mut run = 0;
    for &batch in &args.batch {
        for mode in &args.durability {
            run += 1;
            let table = format!("wb_bench_{tag}_wb{run}");
            tables.push(table.clone());
            let dir = scratch.join(format!("wal-{run}"));
            let (o, flushes, per_writer) =
                writebehind_run(args, &dir, url, backend, pool, &table, *mode, batch).await?;
            if let Ok(id) = std::fs::read_to_string(dir.join("instance.id")) {
                // The progress row of this throw-away instance.
                let _ = exec(
                    pool,
                    &format!(
                        "DELETE FROM writebehind_progress WHERE instance = '{}'",
                        id.trim().replace('\'', "")
                    ),
                )
                .await;
            }
            // The raw baseline replays the largest run of each batch size.
            let window = o.increments.div_ceil(flushes.max(1)).max(1);
            match shares.iter_mut().find(|(b, _, _)| *b == batch) {
                Some(s) if s.2.iter().sum::<u64>() >= o.increments => {}
                Some(s) => *s = (batch, window, per_writer),
                None => shares.push((batch, window, per_writer)),
            }
            out.push(o);
        }
    }
    for (batch, window, per_writer) in &shares {
        let table = format!("wb_bench_{tag}_raw{batch}");
        tables.push(table.clone());
        out.push(raw_run(args, backend, pool, &table, *batch, *window, per_writer).await?);
    }
    let table = format!("wb_bench_{tag}_wt");
    tables.push(table.clone());
    out.push(write_through_run(args, backend, pool, &table).await?);
    Ok(out)
}

async fn baseline_table(pool: &sqlx::AnyPool, backend: Backend, table: &str) -> Result<(), String> {
    let id = match backend {
        Backend::Mysql => "VARCHAR(64)",
        _ => "TEXT",
    };
    exec(pool, &format!("DROP TABLE IF EXISTS {table}")).await?;
    exec(
        pool,
        &format!(
            "CREATE TABLE {table} (id {id} PRIMARY KEY, total BIGINT NOT NULL, version BIGINT NOT NULL)"
        ),
    )
    .await
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
    exec(pool, &format!("DROP TABLE IF EXISTS {table}")).await?;
    let interval = Duration::from_millis(args.flush_interval_ms);
    let cache: WriteBehind<String, i64> =
        super::open_cache(args, dir, url, table, mode, interval, batch).await?;
    let label = format!("writebehind {mode} batch {batch}");
    let (hist, per_writer, seconds) =
        run_writers(args, &cache, label, |k, _| (key_text(k), 1)).await?;
    let stats = cache.stats();
    cache
        .close()
        .await
        .map_err(|e| format!("closing the cache failed: {e}"))?;
    let increments: u64 = per_writer.iter().sum();
    let db_total = total(pool, backend, table, "value").await?;
    let o = Outcome {
        contender: "writebehind",
        durability: Some(mode.to_string()),
        batch: Some(batch),
        increments,
        seconds,
        increments_per_sec: increments as f64 / seconds,
        latency_p50_us: micros(&hist, 0.5),
        latency_p99_us: micros(&hist, 0.99),
        latency_of: "increment",
        sql_rows: stats.rows_flushed,
        sql_rows_per_increment: stats.rows_flushed as f64 / increments.max(1) as f64,
        flush_rows_per_sec: stats.rows_flushed as f64 / seconds,
        db_total,
        totals_match: db_total == increments as i64,
        vs_write_through: None,
        vs_raw_batched: None,
        db_likes: None,
        mismatch: None,
    };
    Ok((o, stats.flushes, per_writer))
}

/// The increments of a writebehind run (same seeds, same counts per writer, interleaved),
/// coalesced like its flusher did: a batch closes after `window` increments (the run's
/// increments per flush). `flush_dirty_entries` only triggers a flush, and a cut takes every
/// dirty key, so a flusher running behind writes fewer, larger batches than `--batch`; a
/// distinct-key cap here would make the baseline write more rows than the cache did.
pub(super) fn coalesced_batches(
    args: &Args,
    window: u64,
    per_writer: &[u64],
) -> Result<Vec<Vec<(u64, i64)>>, String> {
    let mut gens = per_writer
        .iter()
        .enumerate()
        .map(|(w, n)| Ok((Keys::new(args.dist, args.keys, w as u64)?, *n)))
        .collect::<Result<Vec<_>, String>>()?;
    let mut out = Vec::new();
    let mut cur: HashMap<u64, i64> = HashMap::new();
    let mut in_window = 0u64;
    let mut left: u64 = per_writer.iter().sum();
    while left > 0 {
        for (g, n) in gens.iter_mut() {
            if *n == 0 {
                continue;
            }
            *n -= 1;
            left -= 1;
            let k = g.next_key();
            if in_window == window {
                out.push(cur.drain().collect());
                in_window = 0;
            }
            *cur.entry(k).or_default() += 1;
            in_window += 1;
        }
    }
    if !cur.is_empty() {
        out.push(cur.drain().collect());
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn raw_run(
    args: &Args,
    backend: Backend,
    pool: &sqlx::AnyPool,
    table: &str,
    batch: usize,
    window: u64,
    per_writer: &[u64],
) -> Result<Outcome, String> {
    baseline_table(pool, backend, table).await?;
    let batches = coalesced_batches(args, window, per_writer)?;
    let increments: u64 = per_writer.iter().sum();
    let rows: u64 = batches.iter().map(|b| b.len() as u64).sum();
    let progress = ProgressLine::start(format!("raw batched, batch {batch}"), Some(rows));
    let mut hist = histogram();
    let start = Instant::now();
    for b in &batches {
        let t0 = Instant::now();
        let mut tx = pool
            .begin()
            .await
            .map_err(|e| format!("raw batched: BEGIN: {e}"))?;
        for chunk in b.chunks(ROWS_PER_STATEMENT) {
            let sql = backend.upsert(table, chunk.len());
            let mut q = sqlx::query(sql_text(&sql));
            for (k, d) in chunk {
                q = q.bind(key_text(*k)).bind(*d);
            }
            q.execute(&mut *tx)
                .await
                .map_err(|e| format!("raw batched upsert: {e}"))?;
        }
        tx.commit()
            .await
            .map_err(|e| format!("raw batched: COMMIT: {e}"))?;
        hist.saturating_record(t0.elapsed().as_nanos() as u64);
        progress.done.fetch_add(b.len() as u64, Ordering::Relaxed);
    }
    let seconds = start.elapsed().as_secs_f64();
    progress.finish();
    let db_total = total(pool, backend, table, "total").await?;
    Ok(Outcome {
        contender: "raw batched",
        durability: None,
        batch: Some(batch),
        increments,
        seconds,
        increments_per_sec: increments as f64 / seconds,
        latency_p50_us: micros(&hist, 0.5),
        latency_p99_us: micros(&hist, 0.99),
        latency_of: "batch",
        sql_rows: rows,
        sql_rows_per_increment: rows as f64 / increments.max(1) as f64,
        flush_rows_per_sec: rows as f64 / seconds,
        db_total,
        totals_match: db_total == increments as i64,
        vs_write_through: None,
        vs_raw_batched: None,
        db_likes: None,
        mismatch: None,
    })
}

pub(super) async fn write_through_run(
    args: &Args,
    backend: Backend,
    pool: &sqlx::AnyPool,
    table: &str,
) -> Result<Outcome, String> {
    baseline_table(pool, backend, table).await?;
    let sql = sql_text(&backend.upsert(table, 1));
    let bind: Bind = |q, k, _| q.bind(key_text(k)).bind(1i64);
    let (hist, per_writer, seconds) =
        write_through_writers(args, pool, sql, bind, "write-through upsert").await?;
    let increments: u64 = per_writer.iter().sum();
    let db_total = total(pool, backend, table, "total").await?;
    Ok(Outcome {
        contender: "write-through",
        durability: None,
        batch: None,
        increments,
        seconds,
        increments_per_sec: increments as f64 / seconds,
        latency_p50_us: micros(&hist, 0.5),
        latency_p99_us: micros(&hist, 0.99),
        latency_of: "increment",
        sql_rows: increments,
        sql_rows_per_increment: 1.0,
        flush_rows_per_sec: increments as f64 / seconds,
        db_total,
        totals_match: db_total == increments as i64,
        vs_write_through: None,
        vs_raw_batched: None,
        db_likes: None,
        mismatch: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn batches_hold_every_increment_once() {
        let cli =
            <crate::Cli as clap::Parser>::try_parse_from(["writebehind", "bench", "--keys", "50"])
                .unwrap();
        let crate::Command::Bench(args) = cli.command else {
            panic!("not bench")
        };
        // One window of all 204 increments: one batch, each key once.
        let b = coalesced_batches(&args, 1_000, &[100, 99, 0, 5]).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].iter().map(|(_, d)| d).sum::<i64>(), 204);
        assert!(b[0].iter().all(|(k, _)| *k < 50));
        let mut keys: Vec<u64> = b[0].iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), b[0].len());
        // A window of 10 increments: 21 batches, 20 of exactly 10 and the last of 4.
        let w = coalesced_batches(&args, 10, &[100, 99, 0, 5]).unwrap();
        assert_eq!(w.len(), 21);
        let sums: Vec<i64> = w.iter().map(|x| x.iter().map(|(_, d)| d).sum()).collect();
        assert_eq!(sums[..20], [10; 20]);
        assert_eq!(sums[20], 4);
    }
}
