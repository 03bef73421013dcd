//! What open asks of the database before the first flush: the tables, the
//! data table against the mapping, the progress row against the WAL, and
//! the owner claim.

use std::sync::atomic::Ordering;
use std::time::Duration;

use writebehind_core::Lsn;
use writebehind_writer::ErrorClass;

use super::Pipeline;
use crate::{Error, Result};

/// How long `open` waits for the database before going on without it.
const OPEN_PROBE: Duration = Duration::from_secs(2);

impl Pipeline {
    /// What open asks of the database, each within [`OPEN_PROBE`]: the
    /// tables (when asked for), the data table against the mapping, and the
    /// progress check. A database that does not answer leaves them to the
    /// first round; a permanent failure (a table that does not fit the
    /// mapping: [`Error::Schema`]) or a progress row ahead of the WAL
    /// refuses the open.
    pub(crate) async fn at_open(&self) -> Result<()> {
        if self.create_tables {
            match tokio::time::timeout(OPEN_PROBE, self.writer.create_tables()).await {
                Ok(Ok(())) => self.tables_ready.store(true, Ordering::Release),
                Ok(Err(e)) if e.class() == ErrorClass::Transient => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "database unreachable at open; the tables are created before the first flush");
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    tracing::warn!(dir = %self.dir.display(), "database did not answer at open; the tables are created before the first flush");
                }
            }
        }
        if !self.create_tables || self.tables_ready.load(Ordering::Acquire) {
            match tokio::time::timeout(OPEN_PROBE, self.writer.check_schema()).await {
                Ok(Ok(())) => self.schema_checked.store(true, Ordering::Release),
                Ok(Err(e)) if e.class() == ErrorClass::Transient => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "could not check the table at open; checked before the first flush");
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    tracing::warn!(dir = %self.dir.display(), "the database did not answer the table check at open; checked before the first flush");
                }
            }
        }
        let Some(wal_last) = *self.unchecked.lock() else {
            return Ok(());
        };
        match tokio::time::timeout(OPEN_PROBE, self.writer.progress()).await {
            Ok(Ok(progress)) => self.compare_progress(progress, wal_last)?,
            Ok(Err(e)) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not read this instance's flush progress at open; checked before the first flush");
                return Ok(());
            }
            Err(_) => {
                tracing::warn!(dir = %self.dir.display(), "the database did not answer at open; flush progress is checked before the first flush");
                return Ok(());
            }
        }
        // Claimed only after the check passed: a WAL the database is ahead
        // of (a restored copy) must not fence the owner that is running.
        match tokio::time::timeout(OPEN_PROBE, self.writer.claim(self.at_least)).await {
            Ok(Ok(epoch)) => {
                tracing::info!(dir = %self.dir.display(), epoch, "claimed the instance in the database");
            }
            Ok(Err(e)) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not claim the instance at open; claimed before the first flush");
            }
            Err(_) => {
                tracing::warn!(dir = %self.dir.display(), "the database did not answer the claim at open; claimed before the first flush");
            }
        }
        Ok(())
    }

    pub(super) fn compare_progress(&self, progress: Option<Lsn>, wal_last: Lsn) -> Result<()> {
        if let Some(database) = progress.filter(|&p| p > wal_last) {
            return Err(Error::ProgressAhead {
                dir: self.dir.clone(),
                database,
                wal: wal_last,
            });
        }
        *self.unchecked.lock() = None;
        Ok(())
    }
}
