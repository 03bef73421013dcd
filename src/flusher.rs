//! The background flusher: take a cut, write it in one transaction with the
//! progress row, mark it clean, record the end in the WAL.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tracing::Instrument;
use writebehind_core::{Cut, ItemOutcome};
use writebehind_wal::Durability;
use writebehind_writer::{ErrorClass, TableKind, TableSpec, Writer, WriterConfig};

use crate::cache::Inner;
use crate::config::Config;
use crate::log::{self, LogEntry};
use crate::value::CacheValue;
use crate::{Error, Result};

/// How long `open` waits for the database before going on without it.
pub(crate) const OPEN_PROBE: std::time::Duration = std::time::Duration::from_secs(2);

/// Connects to the database and creates the tables when asked.
pub(crate) async fn connect<V: CacheValue>(cfg: &Config, url: &str) -> Result<Writer> {
    let spec = match V::table_kind() {
        TableKind::Counter => TableSpec::counter(&cfg.table)?,
        TableKind::Record(codec) => TableSpec::record(&cfg.table, codec)?,
    };
    let instance = crate::instance::id(&cfg.dir)?;
    let wcfg = WriterConfig::new(instance)
        .table(spec)
        .conflict_policy(cfg.conflict_policy.clone())
        .report_values(cfg.read_back);
    let writer = Writer::connect(url, wcfg).await?;
    if cfg.create_tables {
        match tokio::time::timeout(OPEN_PROBE, writer.create_tables()).await {
            Ok(Ok(())) => {}
            // The database may be down while the cache opens: writes are still
            // accepted, and the flusher creates the tables once it is back.
            Ok(Err(e)) if e.class() == ErrorClass::Transient => {
                tracing::warn!(url = %redact(url), error = %e, "database unreachable at open; tables will be created on the first flush");
            }
            Err(_) => {
                tracing::warn!(url = %redact(url), "database did not answer at open; tables will be created on the first flush");
            }
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(writer)
}

/// The loop: a round on every interval, threshold or barrier, until shutdown.
pub(crate) async fn run(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.cfg.flush_interval) => {}
            _ = inner.wake_flusher.notified() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        // `round` logs its failures with their context.
        let _ = round(&inner).await;
    }
}

/// Flushes until nothing is dirty (used by `close`).
pub(crate) async fn flush_all(inner: &Inner) -> Result<()> {
    loop {
        round(inner).await?;
        if !inner.state.has_in_flight() && inner.state.stats().dirty_entries == 0 {
            return Ok(());
        }
    }
}

/// One flush round: finish the cut in flight (after a failure or a crash),
/// else take a new one; write it with retries; complete it.
pub(crate) async fn round(inner: &Inner) -> Result<()> {
    let Some(writer) = &inner.writer else {
        return Ok(());
    };
    let _one_at_a_time = inner.flush_lock.lock().await;
    let cut = match inner.state.in_flight() {
        Some(cut) => cut,
        None => match take_cut(inner)? {
            Some((cut, begin)) => {
                // The cut's start must be on disk before the database can
                // hold it, or a crash could replay it as never flushed.
                let started = Instant::now();
                begin.await?;
                inner
                    .metrics
                    .fsync_waited(started.elapsed(), "flush start", &inner.cfg.dir);
                cut
            }
            None => return Ok(()),
        },
    };
    // A cut taken in an earlier round (whose wait for its start record may
    // have failed or been cancelled) must have that record on disk before
    // the database can hold it, or a crash could replay it as unflushed.
    if inner.wal.durable_lsn() < cut.position {
        inner.sync_wal("flush start")?;
    }
    if inner.cfg.create_tables && !inner.tables_ready.load(Ordering::Acquire) {
        writer.create_tables().await?;
        inner.tables_ready.store(true, Ordering::Release);
    }
    let started = Instant::now();
    // The cut holds the writes after the last flushed position, up to its own.
    let from = inner.status.borrow().flushed + 1;
    let span = tracing::info_span!(
        "flush",
        dir = %inner.cfg.dir.display(),
        batch = cut.items.len(),
        lsn_from = from,
        lsn_to = cut.position,
    );
    let attempt = AtomicU32::new(0);
    let result = inner
        .retrier
        .run(|| {
            let n = attempt.fetch_add(1, Ordering::Relaxed) + 1;
            writer
                .flush(&cut)
                .instrument(tracing::debug_span!("attempt", n))
        })
        .instrument(span.clone())
        .await;
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            span.in_scope(|| {
                tracing::warn!(
                    attempts = attempt.load(Ordering::Relaxed),
                    class = ?e.class(),
                    error = %e,
                    "flush failed; the batch stays in flight and is retried on the next round"
                );
            });
            inner
                .counters
                .flush_failures
                .fetch_add(1, Ordering::Relaxed);
            let msg = Arc::new(e.to_string());
            inner.status.send_modify(|s| {
                s.failures += 1;
                s.last_error = Some(msg.clone());
            });
            return Err(Error::Database(e));
        }
    };
    let outcomes = if report.already_applied {
        vec![
            writebehind_core::ItemOutcome::Written {
                version: None,
                value: None
            };
            cut.items.len()
        ]
    } else {
        report.outcomes
    };
    inner.state.complete_cut(&outcomes)?;
    inner.cut_epoch.fetch_add(1, Ordering::AcqRel);
    inner.unflushed.cut_done();
    let elapsed = started.elapsed();
    inner.metrics.flush_rows.record(cut.items.len() as f64);
    inner.metrics.flush_seconds.record(elapsed.as_secs_f64());
    // Not waited on: a lost end marker only makes the next open ask the
    // database's progress row, which says the cut is already there.
    let _end = inner.wal.append_with(
        log::KIND,
        &log::encode(&LogEntry::FlushEnd {
            position: cut.position,
        })?,
        Durability::None,
    )?;
    let c = &inner.counters;
    c.flushes.fetch_add(1, Ordering::Relaxed);
    c.rows_flushed.fetch_add(report.rows, Ordering::Relaxed);
    c.conflicts
        .fetch_add(report.conflicts.len() as u64, Ordering::Relaxed);
    c.dead_letters
        .fetch_add(report.dead_letters.len() as u64, Ordering::Relaxed);
    if let Some(hook) = &inner.cfg.on_conflict {
        for conflict in &report.conflicts {
            hook(conflict);
        }
    }
    inner
        .status
        .send_modify(|s| s.flushed = s.flushed.max(cut.position));
    inner.room_made();
    inner
        .flushed_since_checkpoint
        .store(true, Ordering::Release);
    let _ = inner.wake_checkpoint.try_send(());
    span.in_scope(|| {
        tracing::debug!(
            rows = report.rows,
            conflicts = report.conflicts.len(),
            dead_letters = report.dead_letters.len(),
            already_applied = report.already_applied,
            attempts = attempt.load(Ordering::Relaxed),
            elapsed_ms = elapsed.as_millis() as u64,
            "flushed"
        );
    });
    if inner.notify {
        announce(inner, writer, &cut, &outcomes)
            .instrument(span)
            .await;
    }
    crate::metrics::publish(inner);
    Ok(())
}

/// Tells the other instances which keys changed, so they drop their clean
/// copies. Best-effort: a failure only leaves their copies to the clean TTL.
async fn announce(inner: &Inner, writer: &Writer, cut: &Cut, outcomes: &[ItemOutcome]) {
    // Only rows this flush changed; conflicts and dead letters changed nothing.
    let keys: Vec<_> = cut
        .items
        .iter()
        .zip(outcomes)
        .filter_map(|(item, outcome)| match outcome {
            ItemOutcome::Written { version, .. } => Some((item.key.clone(), *version)),
            ItemOutcome::Deleted => Some((item.key.clone(), None)),
            _ => None,
        })
        .collect();
    match writer.notify_flushed(&keys).await {
        Ok(n) => {
            inner
                .counters
                .notifications
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(
            keys = keys.len(),
            error = %e,
            "could not announce flushed keys to other instances; their clean copies stay until the clean TTL"
        ),
    }
}

/// Takes a cut under every shard lock, logging its start at its position.
fn take_cut(inner: &Inner) -> Result<Option<(Cut, writebehind_wal::Append)>> {
    if inner.state.dirty_entries() == 0 {
        return Ok(None);
    }
    let payload = log::encode(&LogEntry::FlushBegin)?;
    let mut all = inner.state.lock_all();
    let begin = inner
        .wal
        .append_with(log::KIND, &payload, Durability::Fsync)?;
    let cut = all.take_cut(begin.lsn())?;
    // Under every shard lock: no read can be between its lookup and this.
    inner.cut_epoch.fetch_add(1, Ordering::AcqRel);
    inner.unflushed.cut_taken();
    Ok(Some((cut, begin)))
}

/// A URL without its password, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    writebehind_writer::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://./x.db"), "sqlite://./x.db");
    }
}
