//! Read-through loads: concurrent misses on one key collapsed into one query, refresh-ahead
//! (one supervised background load per due key), and warming the clean cache.

use std::sync::Arc;
use std::time::Instant;

use tokio::runtime::Handle;
use writebehind_core::{Key, LoadTicket, Value};
use writebehind_writer::Writer;

use super::loads::{Cell, LoadResult};
use crate::shared::Shared;
use crate::stats::Count;
use crate::supervise::{bounded, Failure};
use crate::{Error, Result};

/// The cut generation (0 without a database: nothing is loaded then).
fn cut_generation(sh: &Shared) -> u64 {
    sh.pipeline().map_or(0, |p| p.cut_generation())
}

/// The moment a load of `key` belongs to: the key's load ticket, then the
/// cut generation. Read before the query: a flush that commits after this
/// moment makes the load's row unfit to keep.
fn moment(sh: &Shared, key: &Key) -> (LoadTicket, u64) {
    let ticket = sh.state().load_ticket(key);
    (ticket, cut_generation(sh))
}

/// Read-through with concurrent misses on one key collapsed into one
/// query. The row goes to the clean cache unless the key was written while
/// it loaded.
pub(crate) async fn load(sh: &Shared, key: &Key) -> Result<Option<(Value, i64)>> {
    let Some(writer) = loader(sh, key) else {
        return Ok(None);
    };
    let (ticket, cut_gen) = moment(sh, key);
    let (cell, ticket) = sh.loads().join(key, ticket, cut_gen);
    let result = fill(sh, writer, key, &cell, ticket).await;
    sh.loads().finish(key, &cell);
    result.map_err(|source| Error::Load {
        key: key.to_string(),
        source,
    })
}

/// The writer to load `key` with, if it is read from the database at all.
fn loader<'a>(sh: &'a Shared, key: &Key) -> Option<&'a Writer> {
    let writer = sh
        .pipeline()
        .filter(|_| sh.cfg().read_through())
        .map(|p| p.writer())?;
    // A key the database cannot hold has no row there.
    writer.check_key(key).is_ok().then_some(writer)
}

/// Runs the load behind `cell` once (or waits for it): one query, timed,
/// its row cached unless the key was written, cleaned by a cut or
/// invalidated since `ticket` (the cell's) was taken.
async fn fill(
    sh: &Shared,
    writer: &Writer,
    key: &Key,
    cell: &Cell,
    ticket: LoadTicket,
) -> LoadResult {
    cell.get_or_init(|| async {
        sh.counters().add(Count::Loads, 1);
        let started = Instant::now();
        let loaded = writer.load(std::slice::from_ref(key)).await;
        #[cfg(test)]
        sh.loads().held(key).await;
        let took = started.elapsed();
        sh.load_times().record(took);
        sh.metrics().loaded(took);
        match loaded {
            Ok(mut rows) => {
                let row = rows.pop().and_then(|(_, row)| row);
                sh.state().insert_loaded(ticket, row.clone());
                Ok(row)
            }
            Err(e) => Err(Arc::new(Error::from(e))),
        }
    })
    .await
    .clone()
}

/// Starts one background load of a clean copy due for refresh, unless a
/// load of it is in progress or refreshes are paused after a failure.
/// Readers keep the old copy meanwhile. The task is bounded by the wait
/// timeout; a failure, a timeout or a panic is logged and counted, pauses
/// refreshes, and frees the key's load slot, so a read that finds the copy
/// due after the pause tries again.
pub(super) fn refresh(sh: &Arc<Shared>, key: Key, runtime: Option<Handle>) {
    let Some(runtime) = runtime else {
        return;
    };
    if sh.loads().refreshes_paused() {
        return;
    }
    let (ticket, cut_gen) = moment(sh, &key);
    let Some((cell, ticket)) = sh.loads().start(&key, ticket, cut_gen) else {
        return;
    };
    // The copy this read saw may have been refreshed since: then the slot
    // it just won belongs to no one.
    if !sh.state().refresh_due(&key) {
        sh.loads().finish(&key, &cell);
        return;
    }
    sh.counters().add(Count::Refreshes, 1);
    let sh = sh.clone();
    // Supervised inside: the body's outcome, panic included, is handled
    // below, so the handle has nothing more to report.
    let _task = runtime.spawn(async move {
        let job = async {
            match loader(&sh, &key) {
                Some(writer) => fill(&sh, writer, &key, &cell, ticket).await.map(drop),
                None => Ok(()),
            }
        };
        let ended = bounded(sh.cfg().wait_timeout(), job).await;
        sh.loads().refresh_ended(ended.is_ok());
        sh.loads().finish(&key, &cell);
        if let Err(error) = ended {
            if matches!(error, Failure::Panicked(_)) {
                sh.supervisor().panicked();
            }
            sh.counters().add(Count::RefreshFailures, 1);
            tracing::warn!(
                key = %key,
                %error,
                "refresh-ahead load failed; the old copy is served until max_stale, and refreshes pause (50 ms, doubling to 5 s) before the next try"
            );
        }
    });
}

/// Loads these keys into the clean cache, in batches; dirty keys keep
/// their state. Returns how many were loaded.
pub(crate) async fn warm(sh: &Shared, keys: Vec<Key>) -> Result<usize> {
    sh.usable()?;
    let Some(p) = sh.pipeline() else {
        return Err(Error::Config(
            "no database is set: nothing to warm from".into(),
        ));
    };
    let mut loaded = 0;
    for chunk in keys.chunks(1_000) {
        let tickets: Vec<_> = chunk.iter().map(|k| sh.state().load_ticket(k)).collect();
        let rows = p.writer().load(chunk).await?;
        for ((_, row), ticket) in rows.into_iter().zip(tickets) {
            if sh.state().insert_loaded(ticket, row) {
                loaded += 1;
            }
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A reader that arrives after a flush committed never joins a load
    /// that began before it: it would be served the row without the
    /// flushed change. Deterministic: reader A's load is held after its
    /// query returned, a flush commits, then reader B comes. On the old
    /// code B joined A's load and waited for it (it is let go after 2 s).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_after_a_flush_never_joins_a_load_that_began_before_it() {
        const KEY: &str = "views";
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("db.sqlite").display()
        );
        let cache = crate::WriteBehind::<String, i64>::builder(dir.path().join("wal"))
            .database(url)
            .create_tables(true)
            .notify(false)
            // No copy is kept by a flush: a read after it loads the row.
            .read_back(false)
            .flush_interval(Duration::from_secs(3_600))
            .open()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let ok = |r: Result<()>| r.unwrap_or_else(|e| panic!("{e}"));

        /// Spawns `first` and holds its load; runs `between` (a flush),
        /// then spawns `second`: returns both answers.
        async fn race<T: Send + 'static>(
            cache: &crate::WriteBehind<String, i64>,
            first: impl std::future::Future<Output = T> + Send + 'static,
            between: impl std::future::Future<Output = ()>,
            second: impl std::future::Future<Output = T> + Send + 'static,
        ) -> (T, T) {
            let (reached, resume) = cache.shared.loads().hold(KEY);
            let mut resume = Some(resume);
            let a = tokio::spawn(first);
            reached.await.unwrap_or_else(|e| panic!("{e}"));
            between.await;
            let mut b = tokio::spawn(second);
            let b = match tokio::time::timeout(Duration::from_secs(2), &mut b).await {
                Ok(done) => done,
                Err(_) => {
                    // Still waiting: it joined A's load. Let both go.
                    drop(resume.take());
                    b.await
                }
            };
            // A goes on (if it was not let go above).
            drop(resume);
            let a = a.await;
            let join = |r: std::result::Result<T, tokio::task::JoinError>| {
                r.unwrap_or_else(|e| panic!("{e}"))
            };
            (join(a), join(b))
        }
        let get = |c: &crate::WriteBehind<String, i64>| {
            let c = c.clone();
            async move { c.get(KEY).await.unwrap_or_else(|e| panic!("{e}")) }
        };
        let add_and_flush = |c: &crate::WriteBehind<String, i64>, n: i64| {
            let c = c.clone();
            async move {
                c.add(KEY, n).await.unwrap_or_else(|e| panic!("{e}"));
                c.flush().await.unwrap_or_else(|e| panic!("{e}"));
            }
        };
        ok(cache.add(KEY, 40).await.map(drop));
        ok(cache.flush().await);
        assert_eq!(cache.stats().clean_entries, 0);

        // A miss: A reads 40 (it began before the flush), B 45.
        let (a, b) = race(&cache, get(&cache), add_and_flush(&cache, 5), get(&cache)).await;
        assert_eq!((a, b), (Some(40), Some(45)));
        assert_eq!(get(&cache).await, Some(45), "A's row was not kept");

        // update: B's read-modify-write must see the flushed +5, else it
        // writes 46 back as a put and the acknowledged increment is lost.
        ok(cache.invalidate(KEY).await.map(drop));
        let update = {
            let c = cache.clone();
            async move {
                let v: Option<i64> = c
                    .update(KEY, |v: Option<i64>| v.map(|v| v + 1))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                v
            }
        };
        let (a, b) = race(&cache, get(&cache), add_and_flush(&cache, 5), update).await;
        assert_eq!((a, b), (Some(45), Some(51)));
        ok(cache.flush().await);
        ok(cache.invalidate(KEY).await.map(drop));
        assert_eq!(get(&cache).await, Some(51));

        // A counter over an unknown base (row + pending delta): B must add
        // its delta to the row with the flushed one. A, whose cut generation
        // moved, reads again and sees the same.
        ok(cache.invalidate(KEY).await.map(drop));
        ok(cache.add(KEY, 7).await.map(drop));
        let between = {
            let c = cache.clone();
            async move {
                c.flush().await.unwrap_or_else(|e| panic!("{e}"));
                c.add(KEY, 1).await.unwrap_or_else(|e| panic!("{e}"));
            }
        };
        let (a, b) = race(&cache, get(&cache), between, get(&cache)).await;
        assert_eq!((a, b), (Some(59), Some(59)));
        ok(cache.flush().await);
        ok(cache.invalidate(KEY).await.map(drop));
        assert_eq!(get(&cache).await, Some(59));
        ok(cache.close().await);
    }
}
