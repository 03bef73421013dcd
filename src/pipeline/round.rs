//! A flush round: take a cut (or finish the one in flight), make its start
//! durable and replicated, write it to the database with retries, complete
//! it, log its end and announce it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tracing::Instrument;
use writebehind_core::{Cut, ItemOutcome};
use writebehind_wal::Durability;
use writebehind_writer::ErrorClass;

use super::Pipeline;
use crate::events::Flushed;
use crate::log::{self, LogPayload};
use crate::supervise::call_hook;
use crate::{Error, Result};

impl Pipeline {
    /// Flushes until nothing is dirty (used by `close`).
    pub(crate) async fn flush_all(&self) -> Result<()> {
        loop {
            self.round()
                .await
                .map_err(|e| self.fenced_error().unwrap_or(Error::Flush(e)))?;
            if !self.parts.state.has_in_flight() && self.parts.state.dirty_entries() == 0 {
                return Ok(());
            }
        }
    }

    /// One round: finish the cut in flight (after a failure or a crash),
    /// else take a new one; write it with retries; complete it. A failure
    /// is logged, counted and handed to waiters before it is returned.
    pub(crate) async fn round(&self) -> std::result::Result<(), Arc<Error>> {
        let error = match self.round_inner().await {
            Ok(()) => return Ok(()),
            Err(Error::Fenced {
                ours, owner_epoch, ..
            }) => {
                // Logged, counted and handed to waiters once, by `fence`.
                self.fence(ours, owner_epoch);
                let instance = self.writer.config().instance().to_owned();
                return Err(Arc::new(self.fenced_error().unwrap_or(Error::Fenced {
                    instance,
                    ours,
                    owner_epoch,
                })));
            }
            Err(Error::Flush(e)) => e,
            Err(e) => Arc::new(e),
        };
        self.failed(&error, true);
        Err(error)
    }

    async fn round_inner(&self) -> Result<()> {
        self.check_owner()?;
        if let Some(e) = self.refused.get() {
            return Err(Error::Flush(e.clone()));
        }
        let _one = self.one_round.lock().await;
        self.prepare().await?;
        let cut = match self.parts.state.in_flight() {
            Some(cut) => cut,
            None => match self.take_cut()? {
                Some((cut, begin)) => {
                    // The cut's start must be on disk before the database
                    // can hold it, or a crash could replay it as unflushed.
                    let started = Instant::now();
                    begin.await?;
                    self.parts
                        .metrics
                        .fsync_waited(started.elapsed(), "flush start", &self.dir);
                    cut
                }
                None => return Ok(()),
            },
        };
        // A cut taken in an earlier round (whose wait for its start record
        // failed or was cancelled) must have that record on disk too.
        if self.parts.wal.durable_lsn() < cut.position {
            let started = Instant::now();
            self.parts.wal.sync()?;
            self.parts
                .metrics
                .fsync_waited(started.elapsed(), "flush start", &self.dir);
        }
        // The database never holds a flush whose start the stream lacks:
        // an adopt would find the progress row past the stream's end.
        if let Some(r) = &self.parts.replica {
            r.watermark()
                .wait_async(cut.position, Instant::now() + self.wait_timeout)
                .await
                .map_err(|e| match r.fenced() {
                    // Fenced on the stream: as permanent as in the database.
                    Some(fenced) => fenced.into(),
                    None => Error::Wal(e),
                })?;
        }
        let started = Instant::now();
        let from = self.status.borrow().flushed + 1;
        let span = tracing::info_span!(
            "flush",
            dir = %self.dir.display(),
            batch = cut.items.len(),
            lsn_from = from,
            lsn_to = cut.position,
        );
        let attempt = AtomicU32::new(0);
        let report = self
            .retrier
            .run(|| {
                let n = attempt.fetch_add(1, Ordering::Relaxed) + 1;
                self.writer
                    .flush(&cut)
                    .inspect(|r| self.note_attempt(r))
                    .instrument(tracing::debug_span!("attempt", n))
            })
            .instrument(span.clone())
            .await?;
        self.parts.state.complete_cut(&report.outcomes)?;
        self.cut_generation.fetch_add(1, Ordering::AcqRel);
        self.parts.unflushed.cut_done();
        let elapsed = started.elapsed();
        // Not waited on: a lost end marker only makes the next open ask the
        // database's progress row, which says the cut is already there.
        let end = log::encode(&LogPayload::FlushEnd {
            position: cut.position,
        })
        .and_then(|p| {
            Ok(self
                .parts
                .wal
                .append_with(log::KIND, &p, Durability::None)?)
        });
        if let Err(e) = end {
            tracing::warn!(error = %e, position = cut.position, "could not log the end of a committed flush; the next open asks the database instead");
        }
        let t = &self.tally;
        t.flushes.fetch_add(1, Ordering::Relaxed);
        t.rows.fetch_add(report.rows, Ordering::Relaxed);
        t.conflicts
            .fetch_add(report.conflicts.len() as u64, Ordering::Relaxed);
        t.dead_letters
            .fetch_add(report.dead_letters.len() as u64, Ordering::Relaxed);
        t.hook_panics
            .fetch_add(report.resolver_panics, Ordering::Relaxed);
        self.call_conflict_hook(&report.conflicts);
        self.status.send_modify(|s| {
            s.flushed = s.flushed.max(cut.position);
            s.last_error = None;
            s.last_permanent = false;
        });
        self.events.announce(&Flushed {
            position: cut.position,
            items: cut.items.len(),
            elapsed,
        });
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
        if self.notify {
            self.announce(&cut, &report.outcomes).instrument(span).await;
        }
        Ok(())
    }

    /// Before the first flush: the tables (when asked for) and the progress
    /// check, both through the same retries as flushes.
    async fn prepare(&self) -> Result<()> {
        if self.create_tables && !self.tables_ready.load(Ordering::Acquire) {
            self.retrier
                .run(|| {
                    self.writer
                        .create_tables()
                        .inspect(|r| self.note_attempt(r))
                })
                .await?;
            self.tables_ready.store(true, Ordering::Release);
        }
        if !self.schema_checked.load(Ordering::Acquire) {
            let checked = self
                .retrier
                .run(|| self.writer.check_schema().inspect(|r| self.note_attempt(r)))
                .await;
            if let Err(e) = checked {
                let e: Error = e.into();
                if matches!(e, Error::Schema { .. }) {
                    tracing::error!(error = %e, "flushing refused: the table does not fit the mapping");
                }
                return Err(e);
            }
            self.schema_checked.store(true, Ordering::Release);
        }
        let unchecked = *self.unchecked.lock();
        if let Some(wal_last) = unchecked {
            let progress = self
                .retrier
                .run(|| self.writer.progress().inspect(|r| self.note_attempt(r)))
                .await?;
            if let Err(e) = self.compare_progress(progress, wal_last) {
                tracing::error!(error = %e, "flushing refused");
                let e = Arc::new(e);
                let refused = self.refused.get_or_init(|| e).clone();
                return Err(Error::Flush(refused));
            }
            tracing::info!(dir = %self.dir.display(), "flush progress checked against the database");
        }
        // Nothing is flushed before this cache owns the instance. (A writer
        // that has not claimed would claim on its own in `flush`, but
        // without `at_least`.)
        if self.writer.claimed_epoch().is_none() {
            let epoch = self
                .retrier
                .run(|| {
                    self.writer
                        .claim(self.at_least)
                        .inspect(|r| self.note_attempt(r))
                })
                .await?;
            tracing::info!(dir = %self.dir.display(), epoch, "claimed the instance in the database");
        }
        Ok(())
    }

    /// Takes a cut under every shard lock, logging its start at its position.
    fn take_cut(&self) -> Result<Option<(Cut, writebehind_wal::Append)>> {
        if self.parts.state.dirty_entries() == 0 {
            return Ok(None);
        }
        let payload = log::encode(&LogPayload::FlushBegin)?;
        let mut all = self.parts.state.lock_all();
        let begin = self
            .parts
            .wal
            .append_with(log::KIND, &payload, Durability::Fsync)?;
        let cut = all.take_cut(begin.lsn())?;
        // Under every shard lock: no read is between its lookup and this.
        self.cut_generation.fetch_add(1, Ordering::AcqRel);
        self.parts.unflushed.cut_taken();
        Ok(Some((cut, begin)))
    }

    /// A failed attempt inside a round: waiters see its cause.
    fn note_attempt<T>(&self, r: &writebehind_writer::Result<T>) {
        if let Err(e) = r {
            let failure = Arc::new(Error::DatabaseFailure {
                message: e.to_string(),
                class: e.class(),
            });
            self.status.send_modify(|s| s.last_error = Some(failure));
        }
    }

    /// A round failed: log, count, tell the waiters.
    pub(super) fn failed(&self, error: &Arc<Error>, log: bool) {
        let permanent = error.class() != Some(ErrorClass::Transient);
        if log {
            tracing::warn!(
                dir = %self.dir.display(),
                class = ?error.class(),
                %error,
                "flush round failed; the writes stay in the WAL and the flusher retries after a pause"
            );
        }
        self.status.send_modify(|s| {
            s.failures += 1;
            s.last_error = Some(error.clone());
            s.last_permanent = permanent;
        });
    }

    /// The flusher task is gone: every waiter gets `error` from now on.
    pub(crate) fn stop(&self, error: Error) {
        let error = Arc::new(error);
        self.status.send_modify(|s| s.stopped = Some(error));
    }

    fn call_conflict_hook(&self, conflicts: &[writebehind_writer::Conflict]) {
        let Some(hook) = &self.on_conflict else {
            return;
        };
        for conflict in conflicts {
            if let Err(message) = call_hook(|| hook(conflict)) {
                tracing::error!(key = %conflict.key, %message, "the on_conflict hook panicked; the conflict stays recorded in the conflicts table");
                self.tally.hook_panics.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Tells the other instances which keys changed, so they drop their
    /// clean copies. Best-effort: a failure leaves their copies to the TTL.
    async fn announce(&self, cut: &Cut, outcomes: &[ItemOutcome]) {
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
        match self.writer.notify_flushed(&keys).await {
            Ok(n) => {
                self.tally
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

    /// The pause before the next round after `failures` failed in a row:
    /// exponential from the retry policy's first delay to its cap, with
    /// jitter, so even permanent failures never spin.
    pub(super) fn pause_after(&self, failures: u32) -> Duration {
        let p = self.retrier.policy();
        let first = p.min_delay.max(Duration::from_millis(10));
        let cap = p.max_delay.max(first);
        let base = first
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
            .min(cap);
        // Half fixed, half random: spread instances, keep a floor.
        let half = base / 2;
        half + Duration::from_nanos(fastrand::u64(0..=half.as_nanos() as u64))
    }
}
