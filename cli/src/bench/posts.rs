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
//!
//! Here: the record, the writes' shape and the run of every contender. By job: `table` (the
//! pre-filled table, the expected totals and batches, the read-back check), `cache` (the
//! cache's contenders) and `baselines` (raw batched per backend, write-through).

use super::*;
use serde::Deserialize;

mod baselines;
mod cache;
mod table;

use baselines::{raw_run, write_through_run};
use cache::{flush_run, writebehind_run};
use table::{coalesced, expected};

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
