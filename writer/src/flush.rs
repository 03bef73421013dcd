//! One flush transaction: the progress row, the statement kinds in chunks,
//! bad rows isolated by halving and dead-lettered, the logs, the commit.
//!
//! This file: the transaction from lock to commit. By job: `items.rs` (a
//! cut's items into statement kinds, conditional ones on locked rows),
//! `chunks.rs` (a statement kind as statements, bad rows isolated), `readback.rs`
//! (what the written rows hold afterwards: outcomes), `logs.rs` (conflict
//! and dead-letter rows).

mod chunks;
mod items;
mod logs;
mod readback;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use writebehind_core::{Change, Cut, ItemOutcome, Key};

use crate::config::{Conflict, ConflictResolutionTaken};
use crate::db::Tx;
use crate::error::{Error, Result};
use crate::schema::{SqlType, SqlValue};
use crate::sql::{Mode, Stmt};
use crate::writer::{DeadLetter, FlushReport, Inner};

#[derive(Clone, Copy, PartialEq, Eq)]
enum StmtKind {
    Write(Mode),
    Delete,
}

const SAVEPOINT: &str = "wb_chunk";

/// The dead-letter reason of an update-only write whose key matches no row.
pub(crate) const NO_ROW: &str = "no row with this key";

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The state of one flush transaction.
pub(crate) struct Flush<'a> {
    pub(crate) w: &'a Inner,
    pub(crate) cut: &'a Cut,
    position: i64,
    now_ms: i64,
    /// Always `Some` until commit or rollback.
    tx: Option<Tx>,
    /// Wrap each chunk in a savepoint (PostgreSQL, after a row error).
    savepoints: bool,
    /// A row error hit a chunk without a savepoint: rerun with savepoints.
    needs_isolation: bool,
    pub(crate) outcomes: Vec<Option<ItemOutcome>>,
    pub(crate) conflicts: Vec<Conflict>,
    pub(crate) conflict_of_item: HashMap<usize, usize>,
    dead: Vec<DeadLetter>,
    rows: u64,
    statements: u64,
    pub(crate) resolver_panics: u64,
}

impl<'a> Flush<'a> {
    pub(crate) fn new(
        w: &'a Inner,
        cut: &'a Cut,
        position: i64,
        tx: Tx,
        savepoints: bool,
    ) -> Flush<'a> {
        Flush {
            w,
            cut,
            position,
            now_ms: now_ms(),
            tx: Some(tx),
            savepoints,
            needs_isolation: false,
            outcomes: vec![None; cut.items.len()],
            conflicts: Vec::new(),
            conflict_of_item: HashMap::new(),
            dead: Vec::new(),
            rows: 0,
            statements: 0,
            resolver_panics: 0,
        }
    }

    /// A row error met without savepoints: the flush must run again with them.
    pub(crate) fn needs_isolation(&self) -> bool {
        self.needs_isolation
    }

    /// Rolls the transaction back (when it is still open).
    pub(crate) async fn rollback(&mut self) -> Result<()> {
        if let Some(tx) = self.tx.take() {
            tx.rollback().await.map_err(Error::sql("flush: rollback"))?;
        }
        Ok(())
    }

    fn tx(&mut self) -> Result<&mut Tx> {
        self.tx
            .as_mut()
            .ok_or_else(|| Error::Config("flush transaction already finished".into()))
    }

    async fn exec(&mut self, st: Stmt, ctx: &str) -> Result<u64> {
        self.statements += 1;
        let Stmt { sql, args } = st;
        self.tx()?
            .conn()
            .execute(&sql, args)
            .await
            .map_err(Error::sql(self.context(ctx)))
    }

    async fn fetch(
        &mut self,
        st: Stmt,
        types: &[SqlType],
        ctx: &str,
    ) -> Result<Vec<Vec<SqlValue>>> {
        self.statements += 1;
        let Stmt { sql, args } = st;
        self.tx()?
            .conn()
            .fetch(&sql, args, types)
            .await
            .map_err(Error::sql(self.context(ctx)))
    }

    async fn fetch_arrays(
        &mut self,
        st: Stmt,
        types: &[SqlType],
        ctx: &str,
    ) -> Result<Vec<Vec<SqlValue>>> {
        self.statements += 1;
        let Stmt { sql, args } = st;
        self.tx()?
            .conn()
            .fetch_arrays(&sql, args, types)
            .await
            .map_err(Error::sql(self.context(ctx)))
    }

    async fn fetch_columns(
        &mut self,
        st: Stmt,
        types: &[SqlType],
        ctx: &str,
    ) -> Result<Vec<Vec<SqlValue>>> {
        self.statements += 1;
        let Stmt { sql, args } = st;
        self.tx()?
            .conn()
            .fetch_columns(&sql, args, types)
            .await
            .map_err(Error::sql(self.context(ctx)))
    }

    async fn raw(&mut self, sql: &str) -> Result<()> {
        self.statements += 1;
        self.tx()?
            .conn()
            .execute_raw(sql)
            .await
            .map_err(Error::sql(format!("flush: {sql}")))
    }

    fn context(&self, what: &str) -> String {
        format!(
            "flush of position {} for instance {:?}: {what} on table {}",
            self.position,
            self.w.cfg().instance,
            self.w.dialect().table_name()
        )
    }

    pub(crate) fn dead_letter(&mut self, idx: usize, error: String) {
        let Some(item) = self.cut.items.get(idx) else {
            return;
        };
        tracing::warn!(key = %item.key, %error, "writebehind: dead-lettering a row");
        self.outcomes[idx] = Some(ItemOutcome::DeadLettered);
        if let Some(c) = self
            .conflict_of_item
            .get(&idx)
            .and_then(|&c| self.conflicts.get_mut(c))
        {
            c.resolution = ConflictResolutionTaken::DeadLettered;
        }
        self.dead.push(DeadLetter {
            key: item.key.clone(),
            change: item.change.clone(),
            error,
            local: false,
        });
    }

    pub(crate) async fn run(&mut self) -> Result<FlushReport> {
        let w = self.w;
        let d = w.dialect();
        let instance = w.cfg().instance.as_str();

        self.exec(
            d.progress_ensure(instance, self.now_ms),
            "create progress row",
        )
        .await?;
        // The position and the owner epoch, read by the statement that locks
        // the row: a claim either committed before (its epoch is seen here)
        // or waits for this transaction to end.
        let rows = self
            .fetch(
                d.progress_read(instance, true, true),
                &[SqlType::BigInt, SqlType::BigInt],
                "lock progress row",
            )
            .await?;
        let (current, owner) = w.decode_progress(rows.first())?;
        let ours = w.epoch();
        if owner as u64 > ours {
            tracing::error!(
                instance,
                ours,
                current = owner,
                position = self.position,
                "writebehind: fenced: a newer owner claimed this instance; the flush is rolled back"
            );
            // Dropping the transaction rolls it back too: the fence is the answer.
            if let Err(e) = self.rollback().await {
                tracing::debug!(error = %e, "writebehind: rollback of a fenced flush failed");
            }
            return Err(Error::Fenced {
                instance: instance.to_owned(),
                ours,
                current: owner as u64,
            });
        }
        let current = current.map(|p| p as i64);
        if current.is_some_and(|p| p >= self.position) {
            tracing::info!(
                position = self.position,
                committed = current,
                instance,
                "writebehind: cut already applied (progress row covers it); skipped"
            );
            if let Some(tx) = self.tx.take() {
                tx.rollback().await.map_err(Error::sql("flush: rollback"))?;
            }
            let outcomes = self
                .cut
                .items
                .iter()
                .map(|i| match i.change {
                    Change::Delete => ItemOutcome::Deleted,
                    _ => ItemOutcome::Written {
                        version: None,
                        value: None,
                    },
                })
                .collect();
            return Ok(FlushReport {
                outcomes,
                already_applied: true,
                resolver_panics: 0,
                statements: self.statements,
                ..FlushReport::default()
            });
        }

        let cut = self.cut;
        let mut g = self.classify();
        self.run_kind(StmtKind::Write(Mode::Add), std::mem::take(&mut g.adds))
            .await?;
        let mut pending = self.decide_conditional(&mut g).await?;

        let lost = self
            .run_kind(
                StmtKind::Write(Mode::InsertIfAbsent),
                std::mem::take(&mut g.inserts),
            )
            .await?;
        if !lost.is_empty() {
            let keys: Vec<(Key, Vec<SqlValue>)> = lost
                .iter()
                .map(|r| (r.data.key.clone(), r.data.kvals.clone()))
                .collect();
            let db = self.read_rows(&keys).await?;
            for row in lost {
                let found = db.get(&row.data.key).cloned();
                pending.push((row.idx, Some(row), found));
            }
        }

        self.settle_conflicts(pending, &mut g.sets, &mut g.deletes);

        self.run_kind(StmtKind::Write(Mode::Set), std::mem::take(&mut g.sets))
            .await?;
        self.run_kind(StmtKind::Delete, std::mem::take(&mut g.deletes))
            .await?;
        self.write_logs().await?;
        self.exec(
            d.progress_write(instance, self.position, self.now_ms),
            "advance progress",
        )
        .await?;
        if let Some(tx) = self.tx.take() {
            tx.commit()
                .await
                .map_err(Error::sql(self.context("commit")))?;
        }

        tracing::debug!(
            position = self.position,
            items = cut.items.len(),
            rows = self.rows,
            statements = self.statements,
            conflicts = self.conflicts.len(),
            dead_letters = self.dead.len(),
            "writebehind: flushed"
        );
        let outcomes = self
            .outcomes
            .iter()
            .map(|o| {
                o.clone().unwrap_or(ItemOutcome::Written {
                    version: None,
                    value: None,
                })
            })
            .collect();
        Ok(FlushReport {
            outcomes,
            conflicts: std::mem::take(&mut self.conflicts),
            dead_letters: std::mem::take(&mut self.dead),
            already_applied: false,
            rows: self.rows,
            statements: self.statements,
            resolver_panics: self.resolver_panics,
        })
    }
}

#[cfg(test)]
mod tests;
