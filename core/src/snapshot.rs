//! The serializable image of the dirty state, for checkpoints.

use serde::{Deserialize, Serialize};

use crate::coalesce::Base;
use crate::types::{Change, Expected, Key, Lsn};

/// The whole dirty state at a WAL position: every dirty entry (pending and
/// in-flight layers, base knowledge, LSNs) and the cut in flight, if any.
///
/// Entries are sorted by key, so equal states give equal snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The WAL position this snapshot covers (inclusive).
    pub position: Lsn,
    /// Dirty entries, sorted by key.
    pub entries: Vec<SnapshotEntry>,
    /// The cut in flight at `position`: its commit is not known yet, so the
    /// caller must complete or abort it after restoring.
    pub cut: Option<SnapshotCut>,
}

/// One dirty key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// The key.
    pub key: Key,
    /// What is known of the database row.
    pub base: Base,
    /// The change handed to the writer in the cut in flight.
    pub in_flight: Option<SnapshotLayer>,
    /// The change accepted since (or, without a cut, since the last flush).
    pub pending: Option<SnapshotLayer>,
}

/// A coalesced change and the LSN of the first write it contains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLayer {
    /// The coalesced change.
    pub change: Change,
    /// LSN of the oldest write folded into it (the WAL must keep it).
    pub first_lsn: Lsn,
}

/// The cut in flight: item order matters, outcomes are matched by position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCut {
    /// The WAL position the cut covers.
    pub position: Lsn,
    /// The cut's items in order: key and the expected version sent.
    pub items: Vec<(Key, Expected)>,
}
