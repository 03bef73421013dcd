//! Replication of the WAL to NATS JetStream (feature `nats`).
//!
//! [`Replicator`] is the WAL's [`ReplicaSink`]: the committer offers it each
//! group right after the local write, and it queues the group (bounded; a
//! full queue drops it and the task re-reads the range from the local WAL).
//! One supervised task publishes the groups in LSN order to
//! `<prefix>.<instance>.wal`, each message whole frames, at most the
//! server's payload limit, with the message id `<instance>:<first LSN>` so
//! a retried publish is a duplicate JetStream drops, and advances the WAL's
//! [`ReplicaAcks`] as JetStream acknowledges. While NATS is unreachable the
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
//! Every open [`take_over`]s the instance first: it claims the next owner
//! epoch on the stream (see [`owner`]: a fenced owner's later messages no
//! longer count and it learns so before acknowledging anything), then reads
//! the [`History`] no earlier owner can add to any more. An empty directory
//! is [`rebuild`]t from it; a directory whose local tail a power cut took is
//! reconciled: what the stream holds past the local end is appended locally
//! before any new LSN is given out, so no LSN the stream holds is reused.
//! Checksums and LSN continuity are checked: a gap is an error, never skipped.
//! The stream is trimmed below the flush position only as far as the local
//! WAL is durable, so a reconcile never finds a hole there.

pub(crate) mod owner;

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream::Stream};
use bytes::Bytes;
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch, Notify};
use writebehind_wal::replica::{parse_frames, seed};
use writebehind_wal::{Group, Lsn, ReplicaAcks, ReplicaSink, StdIo};

use crate::config::{Config, Replication};
use crate::shared::Shared;
use crate::{Error, Result};
use owner::{Claim, Owners};

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
/// How long an open that cannot go on without the stream (a rebuild, a
/// `Replicated` cache) keeps trying to reach it.
pub(crate) const OPEN_PATIENCE: Duration = Duration::from_secs(30);

/// The names one instance uses in NATS.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    url: String,
    stream: String,
    replicas: usize,
    instance: String,
    prefix: String,
}

impl Names {
    pub(crate) fn new(r: &Replication, instance: &str) -> Names {
        Names {
            url: r.url().to_owned(),
            stream: r.stream().to_owned(),
            replicas: r.replicas(),
            instance: instance.to_owned(),
            prefix: r.subject_prefix().to_owned(),
        }
    }
    fn wal_subject(&self) -> String {
        format!("{}.{}.wal", self.prefix, self.instance)
    }
    fn owner_subject(&self) -> String {
        format!("{}.{}.owner", self.prefix, self.instance)
    }
    /// Each owner records its floors and checkpoints on subjects of its own
    /// epoch, so a fenced owner's "keep only the newest" purge never
    /// removes a newer owner's (epoch 0: from before owners were fenced).
    fn trim_subject(&self, epoch: u64) -> String {
        match epoch {
            0 => format!("{}.{}.trim", self.prefix, self.instance),
            e => format!("{}.{}.trim.{e}", self.prefix, self.instance),
        }
    }
    fn ckpt_subject(&self, epoch: u64) -> String {
        match epoch {
            0 => format!("{}.{}.ckpt", self.prefix, self.instance),
            e => format!("{}.{}.ckpt.{e}", self.prefix, self.instance),
        }
    }
    fn ckpt_object(&self, epoch: u64) -> String {
        match epoch {
            0 => self.instance.clone(),
            e => format!("{}.{e}", self.instance),
        }
    }
    fn bucket(&self) -> String {
        format!("{}-checkpoints", self.stream)
    }
    fn error(&self, reason: impl std::fmt::Display) -> Error {
        Error::Replication {
            url: self.url.clone(),
            reason: reason.to_string(),
        }
    }
}

/// A connection and its JetStream context.
struct Session {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: Stream,
    /// Set when the connection dropped, even if the client is connected
    /// again by now: what was in flight on it may be lost.
    lost: Arc<AtomicBool>,
    lost_wake: Arc<Notify>,
}

/// The servers of a `nats://host:port[,nats://host:port…]` list.
pub(crate) fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>> {
    url.split(',')
        .map(|u| {
            u.trim().parse::<async_nats::ServerAddr>().map_err(|e| {
                Error::Config(format!("replicate: {u:?} is not a NATS server URL: {e}"))
            })
        })
        .collect()
}

async fn connect(n: &Names) -> Result<Session> {
    let lost = Arc::new(AtomicBool::new(false));
    let lost_wake = Arc::new(Notify::new());
    let (l, w) = (lost.clone(), lost_wake.clone());
    let connecting = async_nats::ConnectOptions::new()
        .connection_timeout(REQUEST)
        .request_timeout(Some(REQUEST))
        .event_callback(move |event| {
            let (l, w) = (l.clone(), w.clone());
            async move {
                if matches!(event, async_nats::Event::Disconnected) {
                    l.store(true, Ordering::Release);
                    w.notify_one();
                }
            }
        })
        .connect(servers(&n.url)?);
    let client = tokio::time::timeout(REQUEST * 2, connecting)
        .await
        .map_err(|_| n.error(format!("no connection within {:?}", REQUEST * 2)))?
        .map_err(|e| n.error(format!("cannot connect: {e}")))?;
    let js = jetstream::context::ContextBuilder::new()
        .timeout(REQUEST)
        .ack_timeout(REQUEST)
        .build(client.clone());
    let config = jetstream::stream::Config {
        name: n.stream.clone(),
        subjects: vec![format!("{}.>", n.prefix)],
        num_replicas: n.replicas,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    let stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| n.error(format!("stream {}: {e}", n.stream)))?;
    Ok(Session {
        client,
        js,
        stream,
        lost,
        lost_wake,
    })
}

/// The last message on `subject`, if any.
async fn last_message(
    n: &Names,
    stream: &Stream,
    subject: &str,
) -> Result<Option<jetstream::message::StreamMessage>> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(n.error(format!("reading the last message of {subject}: {e}"))),
    }
}

/// The first message on `subject` at or after stream sequence `seq`.
async fn next_on(
    n: &Names,
    stream: &Stream,
    subject: &str,
    seq: u64,
) -> Result<Option<jetstream::message::StreamMessage>> {
    let got = stream
        .raw_message_builder()
        .sequence(seq)
        .next_by_subject(subject.to_owned())
        .send()
        .await;
    match got {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(n.error(format!("reading {subject} at {seq}: {e}"))),
    }
}

/// The floor: the highest any owner recorded (each a flush position the
/// database holds); records below it may be gone.
async fn floor(n: &Names, stream: &Stream, owners: &Owners) -> Result<Lsn> {
    let mut floor = 0;
    for epoch in owners.epochs() {
        let subject = n.trim_subject(epoch);
        let Some(m) = last_message(n, stream, &subject).await? else {
            continue;
        };
        let text = std::str::from_utf8(&m.payload).unwrap_or("");
        let f = text
            .parse::<Lsn>()
            .map_err(|_| n.error(format!("message {} on {subject} is not an LSN", m.sequence)))?;
        floor = floor.max(f);
    }
    Ok(floor)
}

/// What the stream holds of an instance, as its owners' claims allow:
/// messages of a fenced owner or superseded by a newer owner's base left out.
pub(crate) struct History {
    pub(crate) floor: Lsn,
    /// The newest checkpoint that counts: its LSN and file bytes.
    pub(crate) checkpoint: Option<(Lsn, Vec<u8>)>,
    /// Every frame that counts, by LSN.
    frames: std::collections::BTreeMap<Lsn, Vec<u8>>,
    pub(crate) messages: u64,
}

impl History {
    /// The last LSN the stream holds (or covers by its floor or checkpoint).
    pub(crate) fn last(&self) -> Lsn {
        let last = self.frames.keys().next_back().copied().unwrap_or(0);
        let ckpt = self.checkpoint.as_ref().map_or(0, |(c, _)| *c);
        last.max(ckpt).max(self.floor.saturating_sub(1))
    }

    /// Where a rebuild into an empty directory starts: after the checkpoint
    /// when it reaches the floor, else at the floor.
    pub(crate) fn rebuild_start(&self) -> Lsn {
        match &self.checkpoint {
            Some((c, _)) if c + 1 >= self.floor => c + 1,
            _ => self.floor.max(1),
        }
    }

    /// The checkpoint a rebuild starts from, if any.
    pub(crate) fn rebuild_checkpoint(&self) -> Option<&[u8]> {
        match &self.checkpoint {
            Some((c, bytes)) if c + 1 >= self.floor => Some(bytes),
            _ => None,
        }
    }

    /// The frames from `start` on, whole, with their count; a missing LSN
    /// is an error, never skipped.
    pub(crate) fn frames_from(&self, start: Lsn) -> Result<(Vec<u8>, u64)> {
        let mut frames = Vec::new();
        let mut records = 0;
        for (expected, (lsn, frame)) in (start..).zip(self.frames.range(start..)) {
            if *lsn != expected {
                return Err(Error::Wal(writebehind_wal::Error::ReplicaGap {
                    expected,
                    found: *lsn,
                }));
            }
            frames.extend_from_slice(frame);
            records += 1;
        }
        Ok((frames, records))
    }
}

/// Reads the instance's history from the stream.
async fn history(n: &Names, s: &Session, owners: &Owners) -> Result<History> {
    let instance = n.instance.as_str();
    let floor = floor(n, &s.stream, owners).await?;
    let checkpoint = newest_checkpoint(n, s, owners).await?;
    let subject = n.wal_subject();
    // By LSN, not by arrival: a message re-sent after a lost one lands
    // after later ones. A copy of an LSN already held is the same record.
    let mut frames: std::collections::BTreeMap<Lsn, Vec<u8>> = Default::default();
    let mut seq = 1;
    let mut messages = 0;
    let mut left_out = 0u64;
    while let Some(m) = next_on(n, &s.stream, &subject, seq).await? {
        seq = m.sequence + 1;
        messages += 1;
        let epoch = owner::epoch_of(&m);
        let spans = parse_frames(&m.payload).map_err(|e| {
            tracing::error!(instance, sequence = m.sequence, error = %e, "replica message failed its checks");
            Error::Wal(e)
        })?;
        for sp in spans {
            if !owners.counts(epoch, m.sequence, sp.lsn) {
                left_out += 1;
                continue;
            }
            frames
                .entry(sp.lsn)
                .or_insert_with(|| m.payload[sp.range].to_vec());
        }
    }
    if left_out > 0 {
        tracing::warn!(
            instance,
            left_out,
            "records of fenced or superseded owners left out of the stream's history"
        );
    }
    Ok(History {
        floor,
        checkpoint,
        frames,
        messages,
    })
}

/// The newest checkpoint of any owner that counts.
async fn newest_checkpoint(
    n: &Names,
    s: &Session,
    owners: &Owners,
) -> Result<Option<(Lsn, Vec<u8>)>> {
    let mut best: Option<(Lsn, Vec<u8>)> = None;
    for epoch in owners.epochs() {
        let Some(m) = last_message(n, &s.stream, &n.ckpt_subject(epoch)).await? else {
            continue;
        };
        let bytes = if m.payload.as_ref() == IN_OBJECT_STORE {
            read_object(n, s, epoch).await?
        } else {
            m.payload.to_vec()
        };
        let c = writebehind_wal::checkpoint::decode(&bytes).map_err(|reason| {
            Error::Wal(writebehind_wal::Error::ReplicaData {
                reason: format!("checkpoint of {} (epoch {epoch}): {reason}", n.instance),
            })
        })?;
        if owners.counts(epoch, m.sequence, c.lsn) && best.as_ref().is_none_or(|b| b.0 < c.lsn) {
            best = Some((c.lsn, bytes));
        }
    }
    Ok(best)
}

/// What the stream holds of this instance, as a point to continue from:
/// every LSN up to the returned one is in it (or covered by its floor).
async fn tail(n: &Names, s: &Session, owners: &Owners) -> Result<Lsn> {
    let floor = floor(n, &s.stream, owners).await?;
    let last = match last_message(n, &s.stream, &n.wal_subject()).await? {
        Some(m) => {
            let spans = parse_frames(&m.payload).map_err(|e| {
                n.error(format!(
                    "message {} on {}: {e}",
                    m.sequence,
                    n.wal_subject()
                ))
            })?;
            let epoch = owner::epoch_of(&m);
            match (spans.first(), spans.last()) {
                (Some(f), Some(l))
                    if owners.counts(epoch, m.sequence, f.lsn)
                        && owners.counts(epoch, m.sequence, l.lsn) =>
                {
                    l.lsn
                }
                (None, _) => 0,
                // The newest message is a fenced or superseded owner's:
                // what counts is found by reading it all.
                _ => return Ok(history(n, s, owners).await?.last()),
            }
        }
        None => 0,
    };
    Ok(last.max(floor.saturating_sub(1)))
}

/// What an owner found when it took the instance over at open.
pub(crate) struct TakeOver {
    pub(crate) claim: Claim,
    pub(crate) history: History,
}

/// Takes `instance` over at open: claims it (at least `at_least`), then
/// reads what the stream holds, which no earlier owner can add to any more.
/// Retries an unreachable stream for `patience`.
pub(crate) async fn take_over(
    r: &Replication,
    instance: &str,
    at_least: u64,
    patience: Duration,
) -> Result<TakeOver> {
    let n = Names::new(r, instance);
    // A cluster electing a new leader (a node just lost) answers again
    // within seconds: that is retried. A damaged or gapped stream is not.
    let until = Instant::now() + patience;
    let mut pause = BACKOFF_MIN;
    loop {
        let attempt = async {
            let s = connect(&n).await?;
            let claim = owner::claim(&n, &s.js, &s.stream, at_least, Lsn::MAX).await?;
            let owners = owner::owners(&n, &s.stream).await?;
            let history = history(&n, &s, &owners).await?;
            Ok::<_, Error>(TakeOver { claim, history })
        };
        match attempt.await {
            Ok(t) => {
                tracing::info!(instance, stream = %n.stream, epoch = t.claim.epoch,
                    floor = t.history.floor, last = t.history.last(),
                    messages = t.history.messages, "stream read at open");
                return Ok(t);
            }
            Err(e @ Error::Replication { .. }) if Instant::now() + pause < until => {
                tracing::warn!(url = %n.url, error = %e, retry_in = ?pause, "stream not readable yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BACKOFF_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

/// What [`rebuild`] restored.
#[derive(Debug, Default)]
pub(crate) struct Rebuilt {
    pub(crate) checkpoint: Option<Lsn>,
    pub(crate) records: u64,
}

/// Rebuilds the empty WAL directory of `cfg` from what the stream holds:
/// the checkpoint (when it reaches the floor), then every record from there.
pub(crate) fn rebuild(cfg: &Config, instance: &str, h: &History) -> Result<Rebuilt> {
    let (frames, records) = h.frames_from(h.rebuild_start())?;
    let checkpoint = h.rebuild_checkpoint();
    seed(&StdIo, cfg.dir(), checkpoint, &frames)?;
    let rebuilt = Rebuilt {
        checkpoint: checkpoint.and(h.checkpoint.as_ref().map(|(c, _)| *c)),
        records,
    };
    tracing::info!(instance, floor = h.floor, checkpoint = ?rebuilt.checkpoint,
        records, messages = h.messages, "WAL rebuilt from the replica");
    Ok(rebuilt)
}

/// The checkpoint too large for a message, from the object store.
async fn read_object(n: &Names, s: &Session, epoch: u64) -> Result<Vec<u8>> {
    let store =
        s.js.get_object_store(n.bucket())
            .await
            .map_err(|e| n.error(format!("object store {}: {e}", n.bucket())))?;
    let name = n.ckpt_object(epoch);
    let mut obj = store
        .get(&name)
        .await
        .map_err(|e| n.error(format!("checkpoint object {name} in {}: {e}", n.bucket())))?;
    let mut bytes = Vec::new();
    obj.read_to_end(&mut bytes)
        .await
        .map_err(|e| n.error(format!("reading checkpoint object: {e}")))?;
    Ok(bytes)
}

/// Whether `dir` holds no log yet (no segment, no checkpoint).
pub(crate) fn is_empty_log(dir: &std::path::Path) -> Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(source) => {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for e in entries {
        let e = e.map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".wal") || name.ends_with(".ckpt") {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Figures of the replication, for [`Stats`](crate::Stats).
#[derive(Clone, Debug, Default)]
pub(crate) struct ReplicaCounts {
    pub(crate) acked: Lsn,
    pub(crate) lag_seconds: Duration,
    pub(crate) failures: u64,
    pub(crate) messages: u64,
    pub(crate) duplicates: u64,
    pub(crate) purges: u64,
    pub(crate) checkpoints: u64,
    pub(crate) last_error: Option<String>,
}

/// The WAL's replica sink, and the state its task shares with the cache.
#[derive(Debug)]
pub(crate) struct Replicator {
    names: Names,
    acks: ReplicaAcks,
    tx: mpsc::Sender<Group>,
    rx: Mutex<Option<mpsc::Receiver<Group>>>,
    /// A full queue dropped a group: re-read from the local WAL.
    dropped: AtomicBool,
    /// Last LSN offered.
    offered: AtomicU64,
    /// Since when the replica is behind what was offered.
    behind_since: Mutex<Option<Instant>>,
    /// Purge below this flush position (0: nothing asked).
    trim_to: AtomicU64,
    /// A local checkpoint was written at this LSN: publish it.
    checkpoint_at: AtomicU64,
    wake: Notify,
    failures: AtomicU64,
    messages: AtomicU64,
    duplicates: AtomicU64,
    purges: AtomicU64,
    checkpoints: AtomicU64,
    /// This owner's claim on the stream: taken at open, or by the task
    /// once NATS answers when it could not be reached at open.
    claim: Mutex<Option<Claim>>,
    /// A claim the task takes: the first LSN this owner gives out.
    base: AtomicU64,
    /// A claim the task takes: at least this epoch.
    at_least: AtomicU64,
    /// A newer owner's epoch, once this one was fenced (0: not fenced).
    fenced: AtomicU64,
}

impl ReplicaSink for Replicator {
    fn offer(&self, group: Group) {
        let last = group.last;
        {
            let mut b = self.behind_since.lock();
            if b.is_none() {
                *b = Some(Instant::now());
            }
        }
        self.offered.store(last, Ordering::Release);
        if self.tx.try_send(group).is_err() {
            // Full (or the task is gone): the task re-reads it from the WAL.
            self.dropped.store(true, Ordering::Release);
            self.wake.notify_one();
        }
    }
}

impl Replicator {
    pub(crate) fn new(r: &Replication, instance: &str) -> Result<Arc<Replicator>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        Ok(Arc::new(Replicator {
            names: Names::new(r, instance),
            acks: ReplicaAcks::new(0)?,
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicBool::new(false),
            offered: AtomicU64::new(0),
            behind_since: Mutex::new(None),
            trim_to: AtomicU64::new(0),
            checkpoint_at: AtomicU64::new(0),
            wake: Notify::new(),
            failures: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            purges: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            claim: Mutex::new(None),
            base: AtomicU64::new(Lsn::MAX),
            at_least: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
        }))
    }

    /// The claim taken at open.
    pub(crate) fn set_claim(&self, claim: Claim) {
        *self.claim.lock() = Some(claim);
    }

    /// For a claim the task takes later: the first LSN this owner gives
    /// out (older owners' records at or past it are superseded) and the
    /// least epoch.
    pub(crate) fn defer_claim(&self, base: Lsn, at_least: u64) {
        self.base.store(base, Ordering::Release);
        self.at_least.store(at_least, Ordering::Release);
    }

    /// This owner's epoch on the stream, once claimed.
    pub(crate) fn epoch(&self) -> Option<u64> {
        self.claim.lock().map(|c| c.epoch)
    }

    /// The newer owner's epoch, when this one was fenced.
    pub(crate) fn fenced(&self) -> Option<u64> {
        match self.fenced.load(Ordering::Acquire) {
            0 => None,
            e => Some(e),
        }
    }

    /// The error a write or wait of this fenced owner gets.
    pub(crate) fn fenced_error(&self, owner_epoch: u64) -> Error {
        fenced_error(&self.names.instance, self.epoch().unwrap_or(0), owner_epoch)
    }

    /// Fenced by `epoch`: every `Replicated` wait fails at once, naming it.
    fn fence(&self, ours: u64, epoch: u64) -> Error {
        self.fenced.store(epoch.max(1), Ordering::Release);
        let e = fenced_error(&self.names.instance, ours, epoch);
        tracing::error!(instance = %self.names.instance, ours, owner_epoch = epoch,
            "fenced: a newer owner claimed this instance on the stream; nothing more is published or acknowledged, and writes are refused");
        self.acks.close(e.to_string());
        e
    }

    pub(crate) fn acks(&self) -> &ReplicaAcks {
        &self.acks
    }

    pub(crate) fn url(&self) -> &str {
        &self.names.url
    }

    /// A flush committed at `position`: the stream may go below it.
    pub(crate) fn flushed(&self, position: Lsn) {
        self.trim_to.fetch_max(position, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// A local checkpoint was written at `lsn`: publish it, trim below it.
    pub(crate) fn checkpointed(&self, lsn: Lsn) {
        self.checkpoint_at.fetch_max(lsn, Ordering::AcqRel);
        self.wake.notify_one();
    }

    pub(crate) fn counts(&self, last_lsn: Lsn) -> ReplicaCounts {
        let acked = self.acks.acked();
        let lag_seconds = if acked >= last_lsn {
            Duration::ZERO
        } else {
            self.behind_since
                .lock()
                .map_or(Duration::ZERO, |t| t.elapsed())
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReplicaCounts {
            acked,
            lag_seconds,
            failures: get(&self.failures),
            messages: get(&self.messages),
            duplicates: get(&self.duplicates),
            purges: get(&self.purges),
            checkpoints: get(&self.checkpoints),
            last_error: self.acks.last_error(),
        }
    }

    fn acked(&self, lsn: Lsn) {
        self.acks.ack(lsn);
        let mut b = self.behind_since.lock();
        *b = (self.offered.load(Ordering::Acquire) > lsn).then(Instant::now);
    }

    /// Waits until the replica holds `lsn`, within `bound`.
    pub(crate) async fn wait_for(&self, lsn: Lsn, bound: Duration) -> Result<()> {
        self.acks
            .wait_async(lsn, Instant::now() + bound)
            .await
            .map(drop)
            .map_err(Error::Wal)
    }
}

/// The error a fenced owner's waits and writes get.
pub(crate) fn fenced_error(instance: &str, ours: u64, owner_epoch: u64) -> Error {
    Error::Fenced {
        instance: instance.to_owned(),
        ours,
        owner_epoch,
    }
}

/// Starts the publishing task, supervised: a panic or an error is logged,
/// counted and handed to every waiter (their waits fail at once).
pub(crate) fn spawn(
    sh: &Arc<Shared>,
    rep: &Arc<Replicator>,
    shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let rx = rep.rx.lock().take()?;
    let weak = Arc::downgrade(sh);
    let rep = rep.clone();
    Some(tokio::spawn(async move {
        let work = run(&rep, &weak, rx, shutdown);
        supervised(work, &rep.acks, &rep.names.url, || {
            if let Some(sh) = weak.upgrade() {
                sh.supervisor().panicked();
            }
        })
        .await;
    }))
}

/// Runs the task's work; a panic is logged, counted (`panicked`) and
/// closes the watermark, so every `Replicated` wait fails at once naming it.
async fn supervised(
    work: impl Future<Output = ()>,
    acks: &ReplicaAcks,
    url: &str,
    panicked: impl FnOnce(),
) {
    let Err(panic) = std::panic::AssertUnwindSafe(work).catch_unwind().await else {
        return;
    };
    panicked();
    let reason = format!(
        "the replication task panicked: {}",
        crate::supervise::panic_message(&*panic)
    );
    tracing::error!(url, %reason, "replication stopped");
    acks.close(reason);
}

/// JetStream's acknowledgement of one publish, to await.
type AckFuture = Pin<
    Box<
        dyn Future<
                Output = std::result::Result<
                    jetstream::publish::PublishAck,
                    jetstream::context::PublishError,
                >,
            > + Send,
    >,
>;

/// A message published and not yet acknowledged.
struct InFlight {
    first: Lsn,
    last: Lsn,
    payload: Bytes,
    ack: Option<AckFuture>,
    /// Sent again after a lost connection: it may be stored below
    /// messages acknowledged since.
    retried: bool,
}

/// A message JetStream stored: its LSNs and stream sequence.
type Stored = (Lsn, Lsn, u64);

/// What the task keeps across reconnections.
struct Cursor {
    /// Next LSN to publish.
    next: Lsn,
    /// Published, not yet acknowledged: republished as is after a failure
    /// (same bytes, same message id: JetStream drops what it has).
    in_flight: VecDeque<InFlight>,
    /// Stored, and not yet checked against the owner subject: not yet
    /// acknowledged to anyone.
    unconfirmed: VecDeque<Stored>,
    /// LSN → stream sequence of the messages this process published
    /// (confirmed while it owned the instance).
    index: VecDeque<Stored>,
    /// Highest stream sequence in what was confirmed.
    last_seq: u64,
    /// This owner's claim, once the first session has it.
    claim: Option<Claim>,
    /// Floor already recorded.
    floor: Lsn,
    /// Checkpoint already published.
    checkpoint: Lsn,
    /// This process had a message acknowledged: every older message of
    /// this instance is below the ones in `index`.
    published: bool,
}

async fn run(
    rep: &Arc<Replicator>,
    weak: &Weak<Shared>,
    mut rx: mpsc::Receiver<Group>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut cur = Cursor {
        next: 0,
        in_flight: VecDeque::new(),
        unconfirmed: VecDeque::new(),
        index: VecDeque::new(),
        last_seq: 0,
        claim: None,
        floor: 0,
        checkpoint: 0,
        published: false,
    };
    let mut pause = BACKOFF_MIN;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let before = rep.acks.acked();
        let err = match session(rep, weak, &mut rx, &mut shutdown, &mut cur).await {
            Ok(()) => return,
            Err(e) if rep.fenced().is_some() => {
                // A newer owner has the instance: nothing to retry.
                rep.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(url = %rep.names.url, error = %e, "replication stopped: fenced");
                return;
            }
            Err(e) => e,
        };
        if rep.acks.acked() > before {
            pause = BACKOFF_MIN;
        }
        rep.failures.fetch_add(1, Ordering::Relaxed);
        rep.acks.fail(err.to_string());
        tracing::warn!(url = %rep.names.url, error = %err, retry_in = ?pause, "replication interrupted; retrying");
        let jitter = Duration::from_millis(fastrand::u64(0..=pause.as_millis() as u64 / 4));
        tokio::select! {
            _ = tokio::time::sleep(pause + jitter) => {}
            _ = shutdown.changed() => {}
        }
        pause = (pause * 2).min(BACKOFF_MAX);
    }
}

/// One connection's worth of publishing; `Ok` only at shutdown.
async fn session(
    rep: &Arc<Replicator>,
    weak: &Weak<Shared>,
    rx: &mut mpsc::Receiver<Group>,
    shutdown: &mut watch::Receiver<bool>,
    cur: &mut Cursor,
) -> Result<()> {
    let n = &rep.names;
    let s = connect(n).await?;
    let max = (s.client.server_info().max_payload)
        .saturating_sub(HEADER_ROOM)
        .max(1024);
    let held = *rep.claim.lock();
    let claim = match held {
        Some(c) => c,
        None => {
            // NATS was unreachable at open: claim now, from the first LSN
            // this owner gave out (older owners' records from there on were
            // lost locally, in a mode that allows it, and are superseded).
            let base = rep.base.load(Ordering::Acquire);
            let at_least = rep.at_least.load(Ordering::Acquire);
            owner::claim(n, &s.js, &s.stream, at_least, base).await?
        }
    };
    rep.set_claim(claim);
    cur.claim = Some(claim);
    let owners = owner::owners(n, &s.stream).await?;
    if let Some(newest) = owners.newest().filter(|c| c.seq != claim.seq) {
        return Err(rep.fence(claim.epoch, newest.epoch));
    }
    // Stored before this check, while still the owner: they count.
    confirm(&s, rep, cur, false).await?;
    let tail = tail(n, &s, &owners).await?;
    let local = weak.upgrade().map(|sh| sh.wal().last_lsn());
    // The stream's acknowledgement never counts for a record the local
    // WAL does not hold (open reconciled them; this is a guard).
    let tail = match local {
        Some(local) if tail > local => {
            tracing::error!(instance = %n.instance, stream_lsn = tail, local_lsn = local,
                "the stream holds more of this instance than its local WAL; acknowledging only what the WAL holds");
            local
        }
        _ => tail,
    };
    // Every unacknowledged message goes again as it was (same bytes, same
    // id: JetStream drops the copies it has). Not only those past the
    // stream's end: one lost with a dead connection can sit below one the
    // client re-sent on its own after reconnecting. A rebuild reads by LSN.
    let retry: Vec<_> = cur.in_flight.drain(..).collect();
    match retry.first() {
        None => {
            rep.acked(tail);
            cur.next = tail + 1;
        }
        Some(m) => cur.next = m.first,
    }
    for m in retry {
        publish(&s, rep, cur, m.first, m.last, m.payload, true).await?;
    }
    cur.next = cur.next.max(tail + 1);
    if let Some(sh) = weak.upgrade() {
        catch_up(&s, rep, &sh, cur, max).await?;
    }
    loop {
        if s.lost.load(Ordering::Acquire)
            || s.client.connection_state() != async_nats::connection::State::Connected
        {
            // The client would buffer and reconnect on its own; the task
            // reconnects itself instead, so waiters hear of it and the
            // unacknowledged messages go again.
            return Err(n.error("connection lost"));
        }
        maintain(&s, rep, weak, cur, max).await?;
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                drain(&s, rep, weak, cur, max).await?;
                return Ok(());
            }
            acked = next_ack(&mut cur.in_flight), if !cur.in_flight.is_empty() => {
                settle(rep, cur, acked)?;
                // Every ack already here shares one ownership check.
                while !cur.in_flight.is_empty() {
                    match next_ack(&mut cur.in_flight).now_or_never() {
                        Some(acked) => settle(rep, cur, acked)?,
                        None => break,
                    }
                }
                confirm(&s, rep, cur, false).await?;
            }
            g = rx.recv(), if cur.in_flight.len() < WINDOW => match g {
                Some(mut g) => {
                    // Groups queued behind it go in the same message: under
                    // load a message carries many groups, not one each.
                    while g.frames.len() < max {
                        match rx.try_recv() {
                            Ok(more) if more.first == g.last + 1 => {
                                g.frames.extend_from_slice(&more.frames);
                                g.last = more.last;
                            }
                            Ok(more) => {
                                take_group(&s, rep, weak, cur, g, max).await?;
                                g = more;
                            }
                            Err(_) => break,
                        }
                    }
                    take_group(&s, rep, weak, cur, g, max).await?
                }
                None => return Ok(()),
            },
            _ = rep.wake.notified() => {}
            _ = s.lost_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

type Acked = std::result::Result<jetstream::publish::PublishAck, String>;

async fn next_ack(q: &mut VecDeque<InFlight>) -> Acked {
    let Some(front) = q.front_mut() else {
        return Err("nothing in flight".into());
    };
    let Some(ack) = front.ack.as_mut() else {
        return Err("message was not sent".into());
    };
    ack.await.map_err(|e| e.to_string())
}

fn settle(rep: &Replicator, cur: &mut Cursor, acked: Acked) -> Result<()> {
    let Some(m) = cur.in_flight.front_mut() else {
        return Ok(());
    };
    match acked {
        Ok(ack) => {
            if ack.duplicate {
                rep.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            // Acknowledged to writers only after the ownership check.
            cur.unconfirmed.push_back((m.first, m.last, ack.sequence));
            cur.in_flight.pop_front();
            Ok(())
        }
        Err(e) => {
            // Kept, and sent again as it is after reconnecting.
            m.ack = None;
            Err(rep.names.error(format!(
                "no acknowledgement for LSN {}..={}: {e}",
                m.first, m.last
            )))
        }
    }
}

/// Checks that this process still owns the instance (its claim is the
/// newest), then counts what was stored before the check as replicated.
/// `always`: check even with nothing waiting (before a purge).
async fn confirm(s: &Session, rep: &Replicator, cur: &mut Cursor, always: bool) -> Result<()> {
    if cur.unconfirmed.is_empty() && !always {
        return Ok(());
    }
    let Some(ours) = cur.claim else {
        return Err(rep.names.error("publishing before claiming the instance"));
    };
    match owner::newest(&rep.names, &s.stream).await? {
        Some(c) if c.seq == ours.seq => {}
        newest => return Err(rep.fence(ours.epoch, newest.map_or(0, |c| c.epoch))),
    }
    let mut last = None;
    while let Some(m) = cur.unconfirmed.pop_front() {
        last = last.max(Some(m.1));
        cur.last_seq = cur.last_seq.max(m.2);
        cur.index.push_back(m);
        cur.published = true;
    }
    if let Some(last) = last {
        rep.acked(last);
    }
    Ok(())
}

/// Publishes one message (frames `first..=last`) and queues its ack.
async fn publish(
    s: &Session,
    rep: &Replicator,
    cur: &mut Cursor,
    first: Lsn,
    last: Lsn,
    payload: Bytes,
    retried: bool,
) -> Result<()> {
    let n = &rep.names;
    let epoch = cur.claim.map_or(0, |c| c.epoch);
    // The epoch is in the id: a newer owner's record is never dropped as
    // a copy of a fenced owner's with the same LSN.
    let id = format!("{}:{epoch}:{first}", n.instance);
    cur.in_flight.push_back(InFlight {
        first,
        last,
        payload: payload.clone(),
        ack: None,
        retried,
    });
    let sent =
        s.js.send_publish(
            n.wal_subject(),
            jetstream::message::PublishMessage::build()
                .payload(payload)
                .message_id(id)
                .header(owner::EPOCH_HEADER, epoch.to_string().as_str()),
        )
        .await
        .map_err(|e| n.error(format!("publishing LSN {first}..={last}: {e}")))?;
    if let Some(m) = cur.in_flight.back_mut() {
        m.ack = Some(sent.into_future());
    }
    rep.messages.fetch_add(1, Ordering::Relaxed);
    cur.next = last + 1;
    Ok(())
}

/// Publishes `frames` (whole frames from `cur.next` on) in messages of at
/// most `max` bytes, waiting for acks to keep at most [`WINDOW`] in flight.
async fn publish_frames(
    s: &Session,
    rep: &Replicator,
    cur: &mut Cursor,
    frames: &[u8],
    max: usize,
) -> Result<()> {
    let spans = parse_frames(frames).map_err(Error::Wal)?;
    let mut i = 0;
    while i < spans.len() {
        let start = spans[i].range.start;
        let mut j = i;
        while j + 1 < spans.len() && spans[j + 1].range.end - start <= max {
            j += 1;
        }
        let end = spans[j].range.end;
        if end - start > max {
            return Err(rep.names.error(format!(
                "LSN {} is a {} byte record, more than the server's message limit",
                spans[i].lsn,
                end - start
            )));
        }
        while cur.in_flight.len() >= WINDOW {
            let acked = next_ack(&mut cur.in_flight).await;
            settle(rep, cur, acked)?;
            confirm(s, rep, cur, false).await?;
        }
        let payload = Bytes::copy_from_slice(&frames[start..end]);
        publish(s, rep, cur, spans[i].lsn, spans[j].lsn, payload, false).await?;
        i = j + 1;
    }
    Ok(())
}

/// One group from the committer: the part at or after `cur.next`, after
/// catching up on anything the queue dropped before it.
async fn take_group(
    s: &Session,
    rep: &Replicator,
    weak: &Weak<Shared>,
    cur: &mut Cursor,
    g: Group,
    max: usize,
) -> Result<()> {
    if g.last < cur.next {
        return Ok(());
    }
    if g.first > cur.next {
        let Some(sh) = weak.upgrade() else {
            return Ok(());
        };
        catch_up_to(s, rep, &sh, cur, max, Some(g.first)).await?;
        if g.first > cur.next {
            return Err(rep.names.error(format!(
                "LSN {}..{} is neither in the local WAL nor in a checkpoint; the stream cannot be completed",
                cur.next, g.first
            )));
        }
    }
    if g.first == cur.next {
        return publish_frames(s, rep, cur, &g.frames, max).await;
    }
    let spans = parse_frames(&g.frames).map_err(Error::Wal)?;
    match spans.iter().find(|sp| sp.lsn == cur.next) {
        Some(sp) => publish_frames(s, rep, cur, &g.frames[sp.range.start..], max).await,
        None => Ok(()),
    }
}

/// Publishes what the local WAL holds past `cur.next`.
async fn catch_up(
    s: &Session,
    rep: &Replicator,
    sh: &Shared,
    cur: &mut Cursor,
    max: usize,
) -> Result<()> {
    rep.dropped.store(false, Ordering::Release);
    catch_up_to(s, rep, sh, cur, max, None).await
}

/// Publishes the local WAL's records from `cur.next` up to `until`
/// (exclusive; `None`: all). Where a local checkpoint already cut them,
/// the checkpoint goes to the object store first and publishing goes on
/// after it.
async fn catch_up_to(
    s: &Session,
    rep: &Replicator,
    sh: &Shared,
    cur: &mut Cursor,
    max: usize,
    until: Option<Lsn>,
) -> Result<()> {
    let wal = sh.wal();
    let end = until.unwrap_or(Lsn::MAX);
    if cur.next >= end || cur.next > wal.last_lsn() {
        return Ok(());
    }
    let mut batch: Vec<writebehind_wal::Record> = Vec::new();
    let mut bytes = 0;
    let mut first_seen = false;
    for r in wal.replay(cur.next).map_err(Error::Wal)? {
        let r = r.map_err(Error::Wal)?;
        if !first_seen {
            first_seen = true;
            if r.lsn > cur.next {
                // Compacted away locally: the checkpoint stands for it.
                publish_checkpoint(s, rep, sh, cur, r.lsn).await?;
            }
        }
        if r.lsn >= end {
            break;
        }
        if r.lsn < cur.next {
            continue;
        }
        bytes += r.payload.len() + writebehind_wal::FRAME_HEADER_LEN;
        batch.push(r);
        if bytes >= 4 << 20 {
            let frames = writebehind_wal::replica::encode_frames(&batch);
            publish_frames(s, rep, cur, &frames, max).await?;
            batch.clear();
            bytes = 0;
        }
    }
    if !first_seen {
        // Nothing on disk at or past `next`: a checkpoint may stand for it;
        // records assigned and not yet written arrive as groups.
        if let Some(cp) = wal.load_checkpoint().map_err(Error::Wal)? {
            if cp.lsn >= cur.next {
                put_checkpoint(s, rep, cur, cp.lsn, &cp.data).await?;
                cur.next = cp.lsn + 1;
                rep.acked(cp.lsn);
            }
        }
        return Ok(());
    }
    if !batch.is_empty() {
        let frames = writebehind_wal::replica::encode_frames(&batch);
        publish_frames(s, rep, cur, &frames, max).await?;
    }
    Ok(())
}

/// Stores the local checkpoint (which must reach `need - 1`) in the object
/// store, records the floor after it, and moves the cursor past it.
async fn publish_checkpoint(
    s: &Session,
    rep: &Replicator,
    sh: &Shared,
    cur: &mut Cursor,
    need: Lsn,
) -> Result<()> {
    let n = &rep.names;
    let cp = sh.wal().load_checkpoint().map_err(Error::Wal)?;
    let cp = match cp {
        Some(cp) if cp.lsn + 1 >= need => cp,
        other => {
            return Err(n.error(format!(
                "the local WAL no longer holds LSN {} and no checkpoint covers it (newest: {:?}); the stream cannot be completed",
                cur.next,
                other.map(|c| c.lsn)
            )))
        }
    };
    put_checkpoint(s, rep, cur, cp.lsn, &cp.data).await?;
    cur.next = cur.next.max(cp.lsn + 1);
    rep.acked(cp.lsn);
    Ok(())
}

/// A checkpoint larger than a message, into the object store.
async fn put_object(
    s: &Session,
    rep: &Replicator,
    epoch: u64,
    lsn: Lsn,
    bytes: &[u8],
) -> Result<()> {
    let n = &rep.names;
    let store = match s.js.get_object_store(n.bucket()).await {
        Ok(store) => store,
        Err(_) => {
            s.js.create_object_store(jetstream::object_store::Config {
                bucket: n.bucket(),
                num_replicas: n.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| n.error(format!("object store {}: {e}", n.bucket())))?
        }
    };
    store
        .put(n.ckpt_object(epoch).as_str(), &mut &bytes[..])
        .await
        .map_err(|e| n.error(format!("storing checkpoint {lsn}: {e}")))?;
    Ok(())
}

/// Stores the checkpoint for `lsn` on `<prefix>.<instance>.ckpt.<epoch>`
/// (only the newest kept) — in the object store, with a marker message,
/// when it is larger than a message — then trims below it.
async fn put_checkpoint(
    s: &Session,
    rep: &Replicator,
    cur: &mut Cursor,
    lsn: Lsn,
    data: &[u8],
) -> Result<()> {
    let n = &rep.names;
    let bytes = writebehind_wal::checkpoint::encode(lsn, data);
    let max = s
        .client
        .server_info()
        .max_payload
        .saturating_sub(HEADER_ROOM);
    let epoch = cur.claim.map_or(0, |c| c.epoch);
    let payload = if bytes.len() <= max {
        Bytes::from(bytes.clone())
    } else {
        put_object(s, rep, epoch, lsn, &bytes).await?;
        Bytes::from_static(IN_OBJECT_STORE)
    };
    publish_newest(
        s,
        rep,
        n.ckpt_subject(epoch),
        epoch,
        payload,
        &format!("checkpoint {lsn}"),
    )
    .await?;
    // Counted (and trimmed below) only while still the owner.
    confirm(s, rep, cur, true).await?;
    cur.checkpoint = cur.checkpoint.max(lsn);
    rep.checkpoints.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(lsn, bytes = bytes.len(), "checkpoint stored");
    trim(s, rep, cur, lsn + 1).await
}

/// Publishes `payload` on `subject` and purges the older messages there: the
/// subject holds the newest one only.
async fn publish_newest(
    s: &Session,
    rep: &Replicator,
    subject: String,
    epoch: u64,
    payload: Bytes,
    what: &str,
) -> Result<()> {
    let n = &rep.names;
    let ack =
        s.js.send_publish(
            subject.clone(),
            jetstream::message::PublishMessage::build()
                .payload(payload)
                .header(owner::EPOCH_HEADER, epoch.to_string().as_str()),
        )
        .await
        .map_err(|e| n.error(format!("storing {what}: {e}")))?
        .await
        .map_err(|e| n.error(format!("storing {what}: {e}")))?;
    s.stream
        .purge()
        .filter(subject)
        .sequence(ack.sequence)
        .await
        .map_err(|e| n.error(format!("purging what preceded {what}: {e}")))?;
    Ok(())
}

/// Records `floor` and purges the messages wholly below it that this
/// process knows the sequence of, after checking it still owns the instance.
async fn trim(s: &Session, rep: &Replicator, cur: &mut Cursor, floor: Lsn) -> Result<()> {
    let n = &rep.names;
    if floor <= cur.floor {
        return Ok(());
    }
    // A message sent again after a lost connection may be stored below
    // ones acknowledged since: wait for its sequence.
    if cur.in_flight.iter().any(|m| m.retried) {
        return Ok(());
    }
    confirm(s, rep, cur, true).await?;
    let epoch = cur.claim.map_or(0, |c| c.epoch);
    let payload = Bytes::from(floor.to_string());
    publish_newest(
        s,
        rep,
        n.trim_subject(epoch),
        epoch,
        payload,
        &format!("floor {floor}"),
    )
    .await?;
    cur.floor = floor;
    let all_below = cur.in_flight.is_empty() && cur.published;
    let Some(keep) = keep_from(&cur.index, floor, all_below.then_some(cur.last_seq)) else {
        return Ok(());
    };
    cur.index.retain(|m| m.2 >= keep);
    s.stream
        .purge()
        .filter(n.wal_subject())
        .sequence(keep)
        .await
        .map_err(|e| n.error(format!("purging below LSN {floor}: {e}")))?;
    rep.purges.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(floor, keep, "stream trimmed");
    Ok(())
}

/// The first stream sequence a trim to `floor` keeps, from what this
/// process stored: the lowest sequence of any message holding an LSN at or
/// past the floor, whatever order the stream stored them in (a message
/// re-sent after a reconnect lands after later ones). `None`: purge
/// nothing (the floor is in what an earlier process published).
/// `all_below`: nothing is in flight, and the highest sequence stored.
fn keep_from(index: &VecDeque<Stored>, floor: Lsn, all_below: Option<u64>) -> Option<u64> {
    let holding = || index.iter().filter(|m| m.1 >= floor);
    match holding().map(|m| m.2).min() {
        Some(lowest) if holding().any(|m| m.0 <= floor) => Some(lowest),
        Some(_) => None,
        // Everything stored is below the floor: all of it goes.
        None => all_below.map(|last| last + 1),
    }
}

/// Between messages: catch up on dropped groups, publish a new local
/// checkpoint, trim below a new flush position.
async fn maintain(
    s: &Session,
    rep: &Replicator,
    weak: &Weak<Shared>,
    cur: &mut Cursor,
    max: usize,
) -> Result<()> {
    let Some(sh) = weak.upgrade() else {
        return Ok(());
    };
    if rep.dropped.load(Ordering::Acquire) && cur.in_flight.len() < WINDOW {
        catch_up(s, rep, &sh, cur, max).await?;
    }
    let ckpt = rep.checkpoint_at.load(Ordering::Acquire);
    if ckpt > cur.checkpoint {
        match sh.wal().load_checkpoint().map_err(Error::Wal)? {
            Some(cp) if cp.lsn > cur.checkpoint && cp.lsn < cur.next => {
                put_checkpoint(s, rep, cur, cp.lsn, &cp.data).await?;
            }
            // Not yet replicated up to it: the records are published first.
            Some(cp) if cp.lsn >= cur.next => {}
            _ => cur.checkpoint = ckpt,
        }
    }
    // Only as far as the local WAL is durable: after a power cut the
    // stream then still holds whatever the local tail lost.
    let flushed = rep
        .trim_to
        .load(Ordering::Acquire)
        .min(sh.wal().durable_lsn() + 1);
    if flushed > cur.floor && flushed <= rep.acks.acked() {
        // The checkpoint in the object store predates this flush: a
        // rebuild starts from the floor instead.
        trim(s, rep, cur, flushed).await?;
    }
    Ok(())
}

/// At shutdown: publish what is left and wait for the acks, within the bound.
async fn drain(
    s: &Session,
    rep: &Replicator,
    weak: &Weak<Shared>,
    cur: &mut Cursor,
    max: usize,
) -> Result<()> {
    if let Some(sh) = weak.upgrade() {
        catch_up(s, rep, &sh, cur, max).await?;
    }
    while !cur.in_flight.is_empty() {
        let acked = next_ack(&mut cur.in_flight).await;
        settle(rep, cur, acked)?;
    }
    confirm(s, rep, cur, false).await?;
    // The close checkpoint and the last flush bound what stays in the stream.
    maintain(s, rep, weak, cur, max).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_fails_every_replicated_wait_at_once() {
        let acks = ReplicaAcks::new(0).unwrap();
        let waiting = acks.wait_async(1, Instant::now() + Duration::from_secs(30));
        let mut counted = 0;
        supervised(
            async { panic!("boom") },
            &acks,
            "nats://127.0.0.1:4222",
            || counted += 1,
        )
        .await;
        assert_eq!(counted, 1);
        let started = Instant::now();
        let e = waiting.await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            matches!(&e, writebehind_wal::Error::ReplicaStopped { lsn: 1, reason } if reason == "the replication task panicked: boom"),
            "{e:?}"
        );
    }

    #[test]
    fn a_trim_keeps_every_message_holding_the_floor_or_more_whatever_their_order() {
        // A (LSN 1..=10) was lost with a connection and re-sent after B
        // (11..=20), which the client had re-sent on its own: A is stored
        // after B.
        let index: VecDeque<Stored> = [(1, 10, 6), (11, 20, 5), (21, 30, 7)].into();
        // The floor in A: B (sequence 5) is below A but still needed.
        assert_eq!(keep_from(&index, 5, Some(7)), Some(5));
        // The floor in B: A is not needed, but B is stored before it.
        assert_eq!(keep_from(&index, 15, Some(7)), Some(5));
        assert_eq!(keep_from(&index, 21, Some(7)), Some(7));
        // Everything below the floor: all of it goes, if nothing is in flight.
        assert_eq!(keep_from(&index, 31, Some(7)), Some(8));
        assert_eq!(keep_from(&index, 31, None), None);
        // The floor below what this process stored: an earlier process's.
        let later: VecDeque<Stored> = [(40, 50, 9)].into();
        assert_eq!(keep_from(&later, 35, Some(9)), None);
    }

    #[test]
    fn server_lists_are_checked() {
        assert_eq!(servers("nats://a:4222, nats://b:4223").unwrap().len(), 2);
        assert!(matches!(
            servers("nats://a:notaport"),
            Err(Error::Config(_))
        ));
    }
}
