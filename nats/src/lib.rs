//! Replication of a writebehind WAL to NATS JetStream.
//!
//! [`JetStream`] holds the settings; the replica of one instance is the WAL's
//! [`ReplicaSink`](writebehind_wal::ReplicaSink): the committer offers it each
//! group right after the local write, and it queues the group (bounded; a
//! full queue drops it and the task re-reads the range from the local WAL).
//! One supervised task publishes the groups in LSN order to
//! `<prefix>.<instance>.wal`, each message whole frames, at most the
//! server's payload limit, with the message id `<instance>:<first LSN>` so
//! a retried publish is a duplicate JetStream drops, and advances the WAL's
//! [`ReplicaWatermark`](writebehind_wal::ReplicaWatermark) as JetStream acknowledges. While NATS is unreachable the
//! task retries with backoff, and `Durability::Replicated` writes time out
//! naming the failure; other modes go on locally.
//!
//! The stream stays bounded: after a flush commits at position P the task
//! records the floor P on `<prefix>.<instance>.trim` and purges the
//! messages below the one holding P; when a local checkpoint is written
//! (a long database outage) it stores the checkpoint on
//! `<prefix>.<instance>.ckpt` (or, when larger than a message, in the
//! object store bucket `<stream>-checkpoints`, with a marker message there),
//! records the floor after it, and purges below that.
//!
//! Every open takes the instance over first: it claims the next owner
//! epoch on the stream (see `owner.rs`: a fenced owner's later messages no
//! longer count and it learns so before acknowledging anything), then reads
//! the history no earlier owner can add to any more. An empty directory
//! is rebuilt from it; a directory whose local tail a power cut took is
//! reconciled: what the stream holds past the local end is appended locally
//! before any new LSN is given out, so no LSN the stream holds is reused.
//! Checksums and LSN continuity are checked: a gap is an error, never skipped.
//! The stream is trimmed below the flush position only as far as the local
//! WAL is durable, so a reconcile never finds a hole there.
//!
//! This crate depends on the WAL's public seam only (`writebehind-wal`: the
//! [`ReplicatedLog`] and [`Replica`] traits, frame encoding, checkpoint
//! files, [`RebuildSource`](writebehind_wal::RebuildSource) and
//! [`ReadBack`](writebehind_wal::ReadBack));
//! a cache takes it through its builder:
//!
//! ```no_run
//! # fn settings() {
//! let nats = writebehind_nats::JetStream::new("nats://127.0.0.1:4222")
//!     .stream("WRITEBEHIND")
//!     .replicas(3)
//!     .subject_prefix("wb");
//! # let _ = nats;
//! # }
//! ```

mod history;
mod names;
mod owner;
mod replicator;
mod session;
mod task;
mod trim;

use std::sync::Arc;
use std::time::Duration;

use writebehind_wal::{Replica, ReplicaError as Error, ReplicatedLog};

pub use writebehind_wal::{ReplicaCounts, ReplicaError};

type Result<T> = std::result::Result<T, Error>;

/// The checkpoint message that says the checkpoint is in the object store.
const IN_OBJECT_STORE: &[u8] = b"writebehind: checkpoint in the object store";
/// Groups queued between the committer and the task.
const QUEUE: usize = 1024;
/// Messages published and not yet acknowledged. Small enough that under
/// load groups queue up meanwhile and share the next message.
const WINDOW: usize = 16;
/// Bound on connecting and on each JetStream request.
const REQUEST: Duration = Duration::from_secs(5);
/// Room left in a message for its headers.
const HEADER_ROOM: usize = 512;
/// Retry pauses while NATS is unreachable: doubling between these.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// An error as a `Replicated` write that times out names it.
fn describe(e: &Error) -> String {
    match e {
        Error::Replication { url, reason } => format!("NATS replication via {url}: {reason}"),
        other => other.to_string(),
    }
}

/// Where and how the WAL is replicated: the NATS server(s), the JetStream
/// stream, its replica count and the subjects' first token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetStream {
    url: String,
    stream: String,
    replicas: usize,
    subject_prefix: String,
}

impl JetStream {
    /// Replicate to NATS at `url` (for example `nats://127.0.0.1:4222`;
    /// several servers comma-separated), on the subject `wb.<instance>.wal`
    /// of the stream `WRITEBEHIND`, deduplicated by message id.
    pub fn new(url: impl Into<String>) -> JetStream {
        JetStream {
            url: url.into(),
            stream: "WRITEBEHIND".into(),
            replicas: 1,
            subject_prefix: "wb".into(),
        }
    }

    /// The JetStream stream name (created when absent). Default: `WRITEBEHIND`.
    #[must_use]
    pub fn stream(mut self, name: impl Into<String>) -> JetStream {
        self.stream = name.into();
        self
    }

    /// Replicas of a stream this creates (3 in production), 1 to 5. Default: 1.
    #[must_use]
    pub fn replicas(mut self, n: usize) -> JetStream {
        self.replicas = n;
        self
    }

    /// The first token of the subjects: the log goes to
    /// `<prefix>.<instance>.wal`, and the stream takes `<prefix>.>`.
    /// Default: `wb`.
    #[must_use]
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> JetStream {
        self.subject_prefix = prefix.into();
        self
    }
}

impl ReplicatedLog for JetStream {
    fn url(&self) -> &str {
        &self.url
    }

    fn check(&self) -> Result<()> {
        if !(1..=5).contains(&self.replicas) {
            return Err(Error::Config(format!(
                "replicate: replicas must be 1 to 5, not {}",
                self.replicas
            )));
        }
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !token(&self.stream) {
            return Err(Error::Config(format!(
                "stream name {:?} must be letters, digits, '-' or '_'",
                self.stream
            )));
        }
        if !token(&self.subject_prefix) {
            return Err(Error::Config(format!(
                "subject prefix {:?} must be letters, digits, '-' or '_'",
                self.subject_prefix
            )));
        }
        names::servers(&self.url).map(drop)
    }

    fn replica(&self, instance: &str) -> Result<Arc<dyn Replica>> {
        let names = names::Names::new(self, instance);
        Ok(replicator::Replicator::new(names)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(JetStream::new("nats://a:4222").check().is_ok());
        assert!(matches!(
            JetStream::new("nats://a:4222").replicas(6).check(),
            Err(Error::Config(m)) if m == "replicate: replicas must be 1 to 5, not 6"
        ));
        assert!(matches!(
            JetStream::new("nats://a:4222").stream("a.b").check(),
            Err(Error::Config(m)) if m == "stream name \"a.b\" must be letters, digits, '-' or '_'"
        ));
        assert!(matches!(
            JetStream::new("nats://a:4222").subject_prefix("").check(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            JetStream::new("nats://a:notaport").check(),
            Err(Error::Config(_))
        ));
    }
}
