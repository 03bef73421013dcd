//! Ownership of an instance: the progress row's position and owner epoch,
//! the claim that takes the next epoch, and the migration that adds the
//! epoch column to an older progress table.

use std::sync::atomic::Ordering;

use writebehind_core::Lsn;

use super::Writer;
use crate::error::{Error, ErrorClass, Result};
use crate::schema::SqlType;
use crate::sql::Stmt;

/// What [`Writer::claim_row`] found and left in the progress row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    /// The owner epoch this writer now holds.
    pub epoch: u64,
    /// The epoch the row held before (0: never claimed, or a new row).
    pub previous: u64,
    /// The instance's committed position when the claim took the row:
    /// every flush that committed before the claim is covered by it.
    pub position: Option<Lsn>,
}

impl Writer {
    /// This instance's committed position: every cut up to it is in the
    /// database. `None` before the first flush.
    pub async fn progress(&self) -> Result<Option<Lsn>> {
        let d = &self.inner.dialect;
        let mut conn = self.connect_for("progress").await?;
        let Stmt { sql, args } = d.progress_read(&self.inner.cfg.instance, false, false);
        let rows = conn
            .conn()
            .fetch(&sql, args, &[SqlType::BigInt])
            .await
            .map_err(Error::sql("progress: read"))?;
        Ok(self.inner.decode_progress(rows.first())?.0)
    }

    /// Claims this instance for this writer: in one transaction, creates
    /// the progress row if missing, locks it, sets `owner_epoch =
    /// max(owner_epoch + 1, at_least)` and commits. Returns the new epoch,
    /// which this writer (and its clones) remembers: from now on every
    /// flush checks, under the progress row's lock, that the row still
    /// holds it, and fails with [`Error::Fenced`] once a newer owner
    /// claimed the instance. Epochs only grow: a claim after a claim
    /// (here or anywhere) gets a larger one.
    ///
    /// `at_least` lets an epoch taken elsewhere (a replication stream) be
    /// carried into the database; pass 0 otherwise.
    ///
    /// The first claim also adds `owner_epoch` to a progress table created
    /// before it existed. Errors are classified like a flush's: retry
    /// transient ones.
    pub async fn claim(&self, at_least: u64) -> Result<u64> {
        Ok(self.claim_row(at_least).await?.epoch)
    }

    /// [`claim`](Self::claim), also returning what the row held.
    pub async fn claim_row(&self, at_least: u64) -> Result<Claim> {
        let _one = self.inner.claiming.lock().await;
        self.claim_locked(at_least).await
    }

    /// The owner epoch this writer claimed; `None` before its first claim.
    pub fn claimed_epoch(&self) -> Option<u64> {
        Some(self.inner.epoch()).filter(|&e| e > 0)
    }

    pub(super) async fn claim_locked(&self, at_least: u64) -> Result<Claim> {
        let at_least = i64::try_from(at_least)
            .map_err(|_| Error::Config(format!("claim: epoch {at_least} does not fit a BIGINT")))?;
        self.migrate().await?;
        let d = &self.inner.dialect;
        let instance = self.inner.cfg.instance.as_str();
        let now = crate::flush::now_ms();
        let mut tx = self
            .inner
            .pool
            .begin()
            .await
            .map_err(Error::sql("claim: begin"))?;
        let Stmt { sql, args } = d.progress_ensure(instance, now);
        tx.conn()
            .execute(&sql, args)
            .await
            .map_err(Error::sql("claim: create progress row"))?;
        let Stmt { sql, args } = d.progress_read(instance, true, true);
        let rows = tx
            .conn()
            .fetch(&sql, args, &[SqlType::BigInt, SqlType::BigInt])
            .await
            .map_err(Error::sql("claim: lock progress row"))?;
        let (position, previous) = self.inner.decode_progress(rows.first())?;
        let epoch = previous.saturating_add(1).max(at_least);
        let Stmt { sql, args } = d.epoch_write(instance, epoch, now);
        tx.conn()
            .execute(&sql, args)
            .await
            .map_err(Error::sql("claim: set owner epoch"))?;
        tx.commit().await.map_err(Error::sql("claim: commit"))?;
        // Non-negative: at least `previous + 1` with `previous >= 0`.
        let epoch = epoch as u64;
        self.inner.epoch.store(epoch, Ordering::Release);
        tracing::info!(
            instance,
            epoch,
            previous,
            position,
            "writebehind: claimed the instance (owner epoch)"
        );
        Ok(Claim {
            epoch,
            previous: previous as u64,
            position,
        })
    }

    /// Adds `owner_epoch` to a progress table that lacks it, once per
    /// writer. A concurrent migrator may win the `ALTER`: the probe after
    /// a failed `ALTER` decides.
    async fn migrate(&self) -> Result<()> {
        if self.inner.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        let d = &self.inner.dialect;
        let mut conn = self.connect_for("claim").await?;
        let probe = d.epoch_probe();
        match conn.conn().execute_raw(&probe).await {
            Ok(()) => {}
            Err(e) if crate::error::classify_sqlx(&e) == ErrorClass::Transient => {
                return Err(Error::sql("claim: look for owner_epoch")(e));
            }
            Err(_) => {
                let ddl = d.epoch_migration();
                if let Err(e) = conn.conn().execute_raw(&ddl).await {
                    if conn.conn().execute_raw(&probe).await.is_err() {
                        return Err(Error::sql(format!("claim: {ddl}"))(e));
                    }
                } else {
                    tracing::info!(
                        table = %self.inner.cfg.progress_table,
                        "writebehind: added owner_epoch to the progress table"
                    );
                }
            }
        }
        self.inner.migrated.store(true, Ordering::Release);
        Ok(())
    }
}
