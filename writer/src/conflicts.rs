//! Conflicts: a put or delete whose expected version does not match the
//! locked row. The policy decides; a resolver runs under `catch_unwind`,
//! and one that panics keeps the database's row (recorded as
//! `resolver_panicked`) while the flush goes on.

use std::panic::AssertUnwindSafe;

use writebehind_core::{ItemOutcome, Value};

use crate::config::{Conflict, ConflictPolicy, ConflictResolutionTaken, Resolution};
use crate::flush::Flush;
use crate::rows::{delete_row, DbRow, WRow};

/// What to do about one conflict.
pub(crate) enum Decision {
    Keep,
    Ours,
    Write(Value),
}

impl Flush<'_> {
    /// The policy's decision; a panicking resolver keeps the database's row.
    fn decide(&mut self, conflict: &mut Conflict) -> Decision {
        match &self.w.cfg().policy {
            ConflictPolicy::KeepDatabase => Decision::Keep,
            ConflictPolicy::Overwrite => Decision::Ours,
            ConflictPolicy::Resolve(resolve) => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| resolve(conflict))) {
                    Ok(Resolution::KeepDatabase) => Decision::Keep,
                    Ok(Resolution::Write(v)) => Decision::Write(v),
                    Err(panic) => {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic without a message".to_owned());
                        tracing::error!(key = %conflict.key, %message, "writebehind: the conflict resolver panicked; keeping the database's row");
                        self.resolver_panics += 1;
                        conflict.resolution = ConflictResolutionTaken::ResolverPanicked(message);
                        Decision::Keep
                    }
                }
            }
        }
    }

    /// Settles the conflicts found: writes chosen go to `sets`/`deletes`.
    pub(crate) fn settle_conflicts(
        &mut self,
        pending: Vec<(usize, Option<WRow>, Option<DbRow>)>,
        sets: &mut Vec<WRow>,
        deletes: &mut Vec<WRow>,
    ) {
        let cut = self.cut;
        for (idx, row, found) in pending {
            let item = &cut.items[idx];
            let database = match found {
                None => None,
                Some(Ok(r)) => Some(r),
                Some(Err(message)) => {
                    self.dead_letter(
                        idx,
                        format!("version conflict, and the database row is unreadable: {message}"),
                    );
                    continue;
                }
            };
            // A present row is locked (FOR UPDATE / SQLite's write lock).
            let locked_version = database.as_ref().map(|(_, v)| *v);
            let mut conflict = Conflict {
                key: item.key.clone(),
                ours: item.change.clone(),
                expected: item.expected,
                database,
                resolution: ConflictResolutionTaken::Pending,
            };
            let decision = self.decide(&mut conflict);
            self.conflict_of_item.insert(idx, self.conflicts.len());
            match decision {
                Decision::Keep => {
                    if conflict.resolution == ConflictResolutionTaken::Pending {
                        conflict.resolution = ConflictResolutionTaken::KeptDatabase;
                    }
                    self.outcomes[idx] = Some(ItemOutcome::ConflictKeptDatabase {
                        version: conflict.database.as_ref().map(|(_, v)| *v),
                        value: conflict.database.as_ref().map(|(v, _)| v.clone()),
                    });
                    self.conflicts.push(conflict);
                }
                Decision::Ours => {
                    conflict.resolution = ConflictResolutionTaken::Overwrote;
                    self.conflicts.push(conflict);
                    match row {
                        Some(row) => sets.push(WRow {
                            version_after: locked_version.map(|v| v + 1),
                            ..row
                        }),
                        None => match self.w.row_data(&item.key, Vec::new()) {
                            Ok(data) => deletes.push(delete_row(idx, data)),
                            Err(e) => self.dead_letter(idx, e.to_string()),
                        },
                    }
                }
                Decision::Write(value) => match self
                    .w
                    .encode(&item.key, &value)
                    .and_then(|cols| self.w.row_data(&item.key, cols))
                {
                    Ok(data) => {
                        conflict.resolution = ConflictResolutionTaken::Resolved(value.clone());
                        self.conflicts.push(conflict);
                        sets.push(WRow {
                            idx,
                            data,
                            report: value,
                            version_after: locked_version.map(|v| v + 1),
                        });
                    }
                    Err(e) => {
                        self.conflicts.push(conflict);
                        self.dead_letter(idx, format!("resolver's value: {e}"));
                    }
                },
            }
        }
    }
}
