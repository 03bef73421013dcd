//! Opening: load the newest checkpoint, replay the WAL after it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use writebehind_core::{ItemOutcome, Lsn, State};
use writebehind_wal::{Recovery, Wal, WalBuilder};

use crate::config::Config;
use crate::log::{self, CheckpointData, LogPayload};
use crate::{Error, Result};

/// What opening the cache found and rebuilt.
#[derive(Debug)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// The WAL's own report: LSN range, torn tail cut, records skipped in salvage mode.
    pub wal: Recovery,
    /// LSN of the checkpoint the state started from, if any.
    pub checkpoint_lsn: Option<Lsn>,
    /// WAL records replayed on top of the checkpoint.
    pub records_replayed: u64,
    /// Dirty entries rebuilt.
    pub dirty_entries: usize,
    /// A flush that was in flight at the crash (its position); the flusher
    /// finishes it first, and the database's progress row makes sure it is
    /// applied at most once.
    pub in_flight: Option<Lsn>,
    /// Time spent.
    pub elapsed: Duration,
    /// Records restored from the NATS stream into an empty WAL directory
    /// before recovery (`None`: no rebuild ran).
    pub rebuilt_records: Option<u64>,
    /// The checkpoint restored with them from JetStream's object store.
    pub rebuilt_checkpoint: Option<Lsn>,
    /// Records the NATS stream held past the end of the local WAL (a power
    /// cut took the local tail), appended locally and replayed before any
    /// new write got an LSN (`None`: replication off or not reconciled).
    pub reconciled_records: Option<u64>,
    /// The owner epoch this cache claimed on the stream at open (`None`:
    /// replication off, or NATS unreachable then and claimed later).
    pub stream_owner_epoch: Option<u64>,
}

pub(crate) struct Opened {
    pub(crate) wal: Wal,
    pub(crate) state: State,
    pub(crate) report: RecoveryReport,
    /// Highest flush position known to be in the database.
    pub(crate) flushed: Lsn,
}

/// The replica sink the WAL hands its groups to, its watermark, and how
/// long a `Replicated` write waits for it.
pub(crate) type Replica = (
    Arc<dyn writebehind_wal::ReplicaSink>,
    writebehind_wal::ReplicaWatermark,
    Duration,
);

pub(crate) fn open(cfg: &Config, replica: Option<Replica>) -> Result<Opened> {
    let span = tracing::info_span!("recover", dir = %cfg.dir().display());
    let _enter = span.enter();
    let started = Instant::now();
    let mut builder = WalBuilder::new(cfg.dir().to_path_buf())
        .durability(cfg.durability())
        .segment_size(cfg.segment_size())
        .preallocate(cfg.preallocate())
        .salvage(cfg.salvage());
    if let Some(io) = &cfg.io() {
        builder = builder.io(Arc::clone(io));
    }
    if let Some((sink, acks, timeout)) = replica {
        builder = builder.replica(sink, acks, timeout);
    }
    let (wal, wal_report) = builder.open()?;

    let checkpoint = wal.load_checkpoint()?;
    let (state, checkpoint_lsn) = match checkpoint {
        Some(cp) => {
            let data: CheckpointData =
                writebehind_wal::codec::decode(&cp.data).map_err(|e| Error::Recovery {
                    dir: cfg.dir().to_path_buf(),
                    lsn: cp.lsn,
                    reason: format!("checkpoint payload does not decode: {e}"),
                })?;
            if data.format != log::FORMAT {
                return Err(Error::Recovery {
                    dir: cfg.dir().to_path_buf(),
                    lsn: cp.lsn,
                    reason: format!("checkpoint format {} is not supported", data.format),
                });
            }
            let state = State::restore(cfg.limits().clone(), data.snapshot).map_err(|e| {
                Error::Recovery {
                    dir: cfg.dir().to_path_buf(),
                    lsn: cp.lsn,
                    reason: format!("checkpoint state is invalid: {e}"),
                }
            })?;
            (state, Some(cp.lsn))
        }
        None => (State::new(cfg.limits().clone()), None),
    };

    let from = checkpoint_lsn.map_or(1, |l| l + 1);
    let (records, flushed) = replay(cfg, &wal, &state, from)?;

    let stats = state.stats();
    let report = RecoveryReport {
        wal: wal_report,
        checkpoint_lsn,
        records_replayed: records,
        dirty_entries: stats.dirty_entries,
        in_flight: state.in_flight().map(|c| c.position),
        elapsed: started.elapsed(),
        rebuilt_records: None,
        rebuilt_checkpoint: None,
        reconciled_records: None,
        stream_owner_epoch: None,
    };
    tracing::info!(
        dir = %cfg.dir().display(),
        checkpoint = ?report.checkpoint_lsn,
        records = report.records_replayed,
        dirty = report.dirty_entries,
        in_flight = ?report.in_flight,
        torn_tail = ?report.wal.torn_tail,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "recovered"
    );
    Ok(Opened {
        wal,
        state,
        report,
        flushed,
    })
}

impl Opened {
    /// Appends `frames` (what the replica holds past the local end) to the
    /// WAL, durably, and replays them into the state.
    pub(crate) fn import(&mut self, cfg: &Config, frames: &[u8], records: u64) -> Result<()> {
        let from = self.wal.last_lsn() + 1;
        self.wal.import(None, frames)?;
        let (replayed, flushed) = replay(cfg, &self.wal, &self.state, from)?;
        self.flushed = self.flushed.max(flushed);
        self.report.records_replayed += replayed;
        self.report.dirty_entries = self.state.stats().dirty_entries;
        self.report.in_flight = self.state.in_flight().map(|c| c.position);
        self.report.reconciled_records = Some(records);
        tracing::warn!(dir = %cfg.dir().display(), from, records,
            "the local WAL ended before the replica: its end was restored from the stream");
        Ok(())
    }
}

/// Replays the WAL from `from` into `state`; returns the records replayed
/// and the highest flush position they complete.
fn replay(cfg: &Config, wal: &Wal, state: &State, from: Lsn) -> Result<(u64, Lsn)> {
    let mut records = 0u64;
    let mut flushed = 0;
    for record in wal.replay(from)? {
        let record = record?;
        if record.kind != log::KIND {
            return Err(Error::Recovery {
                dir: cfg.dir().to_path_buf(),
                lsn: record.lsn,
                reason: format!("unknown record kind {}", record.kind),
            });
        }
        let entry = log::decode(&record.payload).map_err(|reason| Error::Recovery {
            dir: cfg.dir().to_path_buf(),
            lsn: record.lsn,
            reason,
        })?;
        if let Some(pos) =
            replay_one(state, entry, record.lsn).map_err(|reason| Error::Recovery {
                dir: cfg.dir().to_path_buf(),
                lsn: record.lsn,
                reason,
            })?
        {
            flushed = flushed.max(pos);
        }
        records += 1;
    }
    Ok((records, flushed))
}

/// Applies one WAL record to the state being rebuilt; returns the position
/// of a flush it completes.
fn replay_one(
    state: &State,
    entry: LogPayload,
    lsn: Lsn,
) -> std::result::Result<Option<Lsn>, String> {
    match entry {
        LogPayload::Op {
            key,
            change,
            expected,
        } => {
            // No size check here: the write was accepted once, and limits
            // may have shrunk since.
            state.lock(&key).apply(key, change, expected, lsn);
        }
        LogPayload::FlushBegin => {
            if state.in_flight().is_some() {
                return Err("a flush begins while another is in flight".into());
            }
            let mut all = state.lock_all();
            all.take_cut(lsn).map_err(|e| e.to_string())?;
        }
        LogPayload::FlushEnd { position } => {
            // Only the cut in flight can end; an end for a cut a checkpoint
            // already absorbed is a no-op.
            if let Some(cut) = state.in_flight().filter(|c| c.position == position) {
                let outcomes = vec![
                    ItemOutcome::Written {
                        version: None,
                        value: None
                    };
                    cut.items.len()
                ];
                state.complete_cut(&outcomes).map_err(|e| e.to_string())?;
                return Ok(Some(position));
            }
        }
    }
    Ok(None)
}
