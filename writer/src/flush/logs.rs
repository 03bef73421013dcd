//! The conflicts and dead-letter rows of a flush, written in its
//! transaction; what the dead-letter table refuses goes to the local file.

use super::{Flush, SAVEPOINT};
use crate::db::Arg;
use crate::error::{Error, Result};
use crate::ident::Backend;
use crate::sql::Stmt;

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<unserializable: {e}>"))
}

impl Flush<'_> {
    /// Conflict and dead-letter rows, inside the same transaction.
    pub(super) async fn write_logs(&mut self) -> Result<()> {
        let w = self.w;
        let d = w.dialect();
        let instance = || Arg::Text(Some(w.cfg().instance.clone()));
        let table = || Arg::Text(Some(d.table_name().to_owned()));
        let pos = Arg::Int(Some(self.position));
        let now = Arg::Int(Some(self.now_ms));
        let conflict_rows: Vec<Vec<Arg>> = self
            .conflicts
            .iter()
            .map(|c| {
                vec![
                    instance(),
                    table(),
                    pos.clone(),
                    Arg::Text(Some(c.key.to_string())),
                    Arg::Text(Some(to_json(&c.ours))),
                    Arg::Text(Some(to_json(&c.expected))),
                    Arg::Int(c.database.as_ref().map(|(_, v)| *v)),
                    Arg::Text(Some(c.resolution.label().to_owned())),
                    now.clone(),
                ]
            })
            .collect();
        let dead_rows: Vec<Vec<Arg>> = self
            .dead
            .iter()
            .map(|x| {
                vec![
                    instance(),
                    table(),
                    pos.clone(),
                    Arg::Text(Some(x.key.to_string())),
                    Arg::Text(Some(to_json(&x.change))),
                    Arg::Text(Some(x.error.clone())),
                    now.clone(),
                ]
            })
            .collect();
        for chunk in conflict_rows.chunks(500) {
            self.exec(d.insert_log(true, chunk), "insert into the conflicts table")
                .await?;
        }
        // The dead-letter table may refuse a row too (text it cannot hold):
        // try each chunk, then its rows one by one, and keep what it refuses
        // in the local dead-letter file, so no bad row blocks the flush.
        let mut refused = Vec::new();
        for (n, chunk) in dead_rows.chunks(500).enumerate() {
            let ctx = "insert into the dead-letter table";
            if self
                .guarded(d.insert_log(false, chunk), ctx)
                .await?
                .is_none()
            {
                continue;
            }
            for (i, row) in chunk.iter().enumerate() {
                let one = d.insert_log(false, std::slice::from_ref(row));
                if let Some(e) = self.guarded(one, ctx).await? {
                    refused.push((n * 500 + i, e));
                }
            }
        }
        if !refused.is_empty() {
            self.spill(refused)?;
        }
        Ok(())
    }

    /// Runs a statement whose data the database may refuse without ending
    /// the transaction (a savepoint on PostgreSQL; SQLite and InnoDB undo
    /// just the statement). `Some(error)`: refused for its data.
    async fn guarded(&mut self, st: Stmt, ctx: &str) -> Result<Option<Error>> {
        let pg = self.w.dialect().backend == Backend::Postgres;
        if pg {
            self.raw(&format!("SAVEPOINT {SAVEPOINT}")).await?;
        }
        match self.exec(st, ctx).await {
            Ok(_) => {
                if pg {
                    self.raw(&format!("RELEASE SAVEPOINT {SAVEPOINT}")).await?;
                }
                Ok(None)
            }
            Err(e) if e.is_row_error() => {
                if pg {
                    self.raw(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"))
                        .await?;
                    self.raw(&format!("RELEASE SAVEPOINT {SAVEPOINT}")).await?;
                }
                Ok(Some(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Dead letters the table refused go to the local file, synced before
    /// the transaction commits. Without a local file the flush fails.
    fn spill(&mut self, refused: Vec<(usize, Error)>) -> Result<()> {
        let Some(path) = self.w.cfg().dead_letter_file.clone() else {
            let (_, first) = refused
                .into_iter()
                .next()
                .ok_or_else(|| Error::Config("no refused dead letter to report".into()))?;
            return Err(first);
        };
        let mut lines = Vec::with_capacity(refused.len());
        for (idx, e) in &refused {
            let Some(x) = self.dead.get_mut(*idx) else {
                continue;
            };
            x.local = true;
            tracing::error!(key = %x.key.escape_debug(), error = %e, file = %path.display(), "writebehind: the dead-letter table refused a row; keeping it in the local dead-letter file");
            lines.push(crate::local::Entry {
                instance: self.w.cfg().instance.clone(),
                table: self.w.dialect().table_name().to_owned(),
                position: self.position,
                key: x.key.to_string(),
                change: x.change.clone(),
                error: x.error.clone(),
                refused_by_table: e.to_string(),
                created_at_ms: self.now_ms,
            });
        }
        crate::local::append(&path, &lines)
    }
}
