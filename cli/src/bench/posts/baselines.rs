//! The baselines: raw batched (the same batches as one batched `UPDATE` per chunk, per
//! backend) and write-through (one `UPDATE` per write).

use super::table::{check, expected, outcome, posts_table};
use super::*;

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
pub(super) async fn raw_run(
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

pub(super) async fn write_through_run(
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
    let bind: Bind = |q, k, n| q.bind(likes(n)).bind(k as i64);
    let (hist, per_writer, seconds) =
        write_through_writers(args, pool, sql, bind, "write-through update").await?;
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
