//! Settings and the builder that opens a cache.

mod builder;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use writebehind_core::Limits;
use writebehind_wal::{Durability, ReplicatedLog};
use writebehind_writer::{Conflict, ConflictPolicy, RetryPolicy};

use crate::{Error, Result};

pub use builder::Builder;

/// What a write does when a limit (dirty entries, dirty bytes, WAL bytes) is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait for the flusher to make room, up to this long, then fail with
    /// [`Error::Backpressure`](crate::Error::Backpressure).
    Wait(Duration),
    /// Fail at once with [`Error::Backpressure`](crate::Error::Backpressure).
    Fail,
}

/// A callback told of every version conflict the writer met.
pub type ConflictHook = Arc<dyn Fn(&Conflict) + Send + Sync>;

/// Every setting of a cache. Built by [`Builder`].
#[derive(Clone)]
pub(crate) struct Config {
    dir: PathBuf,
    durability: Durability,
    segment_size: u64,
    preallocate: bool,
    limits: Limits,
    max_wal_bytes: u64,
    checkpoint_bytes: u64,
    backpressure: Backpressure,
    salvage: bool,
    database: Option<String>,
    table: String,
    bookkeeping_prefix: Option<String>,
    create_tables: bool,
    read_through: bool,
    /// `None`: on, except for delta records (see `Builder::read_back`).
    read_back: Option<bool>,
    flush_interval: Duration,
    flush_dirty_entries: usize,
    flush_dirty_bytes: usize,
    close_timeout: Duration,
    wait_timeout: Duration,
    conflict_policy: ConflictPolicy,
    on_conflict: Option<ConflictHook>,
    retry: RetryPolicy,
    io: Option<Arc<dyn writebehind_wal::io::Io>>,
    /// `None`: on where the backend has `NOTIFY` (PostgreSQL).
    notify: Option<bool>,
    broadcast_invalidations: bool,
    /// `None`: the id in the directory's `instance.id`, made at first open.
    instance_id: Option<String>,
    /// Where the WAL is replicated to, if anywhere.
    replication: Option<Arc<dyn ReplicatedLog>>,
}

impl Config {
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }
    pub(crate) fn durability(&self) -> Durability {
        self.durability
    }
    pub(crate) fn segment_size(&self) -> u64 {
        self.segment_size
    }
    pub(crate) fn preallocate(&self) -> bool {
        self.preallocate
    }
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }
    pub(crate) fn max_wal_bytes(&self) -> u64 {
        self.max_wal_bytes
    }
    pub(crate) fn checkpoint_bytes(&self) -> u64 {
        self.checkpoint_bytes
    }
    pub(crate) fn backpressure(&self) -> Backpressure {
        self.backpressure
    }
    pub(crate) fn salvage(&self) -> bool {
        self.salvage
    }
    pub(crate) fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }
    pub(crate) fn table(&self) -> &str {
        &self.table
    }
    /// `None`: the writer's default (`writebehind_`).
    pub(crate) fn bookkeeping_prefix(&self) -> Option<&str> {
        self.bookkeeping_prefix.as_deref()
    }
    pub(crate) fn create_tables(&self) -> bool {
        self.create_tables
    }
    pub(crate) fn read_through(&self) -> bool {
        self.read_through
    }
    pub(crate) fn read_back(&self) -> Option<bool> {
        self.read_back
    }
    pub(crate) fn flush_interval(&self) -> Duration {
        self.flush_interval
    }
    pub(crate) fn flush_dirty_entries(&self) -> usize {
        self.flush_dirty_entries
    }
    pub(crate) fn flush_dirty_bytes(&self) -> usize {
        self.flush_dirty_bytes
    }
    pub(crate) fn close_timeout(&self) -> Duration {
        self.close_timeout
    }
    pub(crate) fn wait_timeout(&self) -> Duration {
        self.wait_timeout
    }
    pub(crate) fn conflict_policy(&self) -> &ConflictPolicy {
        &self.conflict_policy
    }
    pub(crate) fn on_conflict(&self) -> Option<&ConflictHook> {
        self.on_conflict.as_ref()
    }
    pub(crate) fn retry(&self) -> &RetryPolicy {
        &self.retry
    }
    pub(crate) fn io(&self) -> Option<&Arc<dyn writebehind_wal::io::Io>> {
        self.io.as_ref()
    }
    /// `None`: on where the backend has `NOTIFY` (PostgreSQL).
    pub(crate) fn notify(&self) -> Option<bool> {
        self.notify
    }
    pub(crate) fn broadcast_invalidations(&self) -> bool {
        self.broadcast_invalidations
    }
    pub(crate) fn refresh_ahead(&self) -> bool {
        self.limits.refresh.is_some()
    }

    /// The explicit instance id, if one was set.
    pub(crate) fn instance_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }
    pub(crate) fn replication(&self) -> Option<&Arc<dyn ReplicatedLog>> {
        self.replication.as_ref()
    }

    /// Refuses settings that cannot work, before anything is touched.
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(id) = &self.instance_id {
            crate::instance::check(id)?;
        }
        if let Some(r) = &self.replication {
            r.check()?;
        }
        if self.durability == Durability::Replicated && !self.replicates() {
            return Err(Error::Config(
                "Durability::Replicated needs replication (Builder::replicate, feature `nats`)"
                    .into(),
            ));
        }
        let zero = |what: &str| Err(Error::Config(format!("{what} must be greater than zero")));
        if self.wait_timeout.is_zero() {
            return zero("wait_timeout");
        }
        if self.close_timeout.is_zero() {
            return zero("close_timeout");
        }
        if self.flush_interval.is_zero() {
            return zero("flush_interval");
        }
        if self.segment_size == 0 {
            return zero("segment_size");
        }
        if self.limits.clean_capacity_bytes == Some(0) {
            return zero("clean_capacity_bytes");
        }
        if let Some(r) = &self.limits.refresh {
            if self.limits.clean_ttl.is_none() {
                return Err(Error::Config(
                    "refresh_ahead needs a clean_ttl: without one nothing expires".into(),
                ));
            }
            if !r.beta.is_finite() || r.beta < 0.0 {
                return Err(Error::Config(format!(
                    "refresh_ahead beta must be a finite number, zero or more (got {})",
                    r.beta
                )));
            }
        }
        Ok(())
    }

    /// Whether the WAL is replicated.
    pub(crate) fn replicates(&self) -> bool {
        self.replication.is_some()
    }
}
