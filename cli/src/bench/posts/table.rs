//! The posts table: made and pre-filled with plain SQL, what the writes add to each row (and
//! in which batches a flusher would take them), and the read-back that checks it.

use super::*;

/// Makes `table` anew with plain SQL, a row per key with its title and zero counts.
pub(super) async fn posts_table(
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
pub(super) fn expected(args: &Args, per_writer: &[u64]) -> Result<Totals, String> {
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
pub(super) fn coalesced(
    args: &Args,
    window: u64,
    per_writer: &[u64],
) -> Result<Vec<Batch>, String> {
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
pub(super) async fn check(
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
pub(super) fn outcome(
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
