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
//! [`rebuild`] reads it all back into an empty WAL directory: the
//! checkpoint if it is at or past the floor, then the records from there,
//! checksums and LSN continuity checked (a gap is an error, never skipped).

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
/// How long a rebuild keeps trying to reach the stream.
const REBUILD_PATIENCE: Duration = Duration::from_secs(30);

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
    fn trim_subject(&self) -> String {
        format!("{}.{}.trim", self.prefix, self.instance)
    }
    fn ckpt_subject(&self) -> String {
        format!("{}.{}.ckpt", self.prefix, self.instance)
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

/// The floor recorded on the trim subject: records below it may be gone.
async fn floor(n: &Names, stream: &Stream) -> Result<Lsn> {
    let Some(m) = last_message(n, stream, &n.trim_subject()).await? else {
        return Ok(0);
    };
    let text = std::str::from_utf8(&m.payload).unwrap_or("");
    text.parse::<Lsn>().map_err(|_| {
        n.error(format!(
            "message {} on {} is not an LSN",
            m.sequence,
            n.trim_subject()
        ))
    })
}

/// What the stream holds for this instance, as a point to continue from:
/// every LSN up to the returned one is in it (or covered by its floor).
async fn tail(n: &Names, stream: &Stream) -> Result<Lsn> {
    let floor = floor(n, stream).await?;
    let last = match last_message(n, stream, &n.wal_subject()).await? {
        Some(m) => {
            let spans = parse_frames(&m.payload).map_err(|e| {
                n.error(format!(
                    "message {} on {}: {e}",
                    m.sequence,
                    n.wal_subject()
                ))
            })?;
            spans.last().map_or(0, |s| s.lsn)
        }
        None => 0,
    };
    Ok(last.max(floor.saturating_sub(1)))
}

/// What [`rebuild`] restored.
#[derive(Debug, Default)]
pub(crate) struct Rebuilt {
    pub(crate) checkpoint: Option<Lsn>,
    pub(crate) records: u64,
}

/// Rebuilds the empty WAL directory of `cfg` from the stream of
/// `instance`: the checkpoint (when it reaches the floor), then every record
/// from there. Fails when NATS cannot be reached: an empty directory with
/// an explicit id must not start from nothing when the stream holds data.
pub(crate) async fn rebuild(cfg: &Config, r: &Replication, instance: &str) -> Result<Rebuilt> {
    let n = Names::new(r, instance);
    // A cluster electing a new leader (a node just lost) answers again
    // within seconds: reading is retried that long. A damaged or gapped
    // stream is not: it is an error at once.
    let patience = Instant::now() + REBUILD_PATIENCE;
    let mut pause = BACKOFF_MIN;
    let read = loop {
        match read_replica(&n).await {
            Ok(read) => break read,
            Err(e @ Error::Replication { .. }) if Instant::now() + pause < patience => {
                tracing::warn!(url = %n.url, error = %e, retry_in = ?pause, "stream not readable yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BACKOFF_MAX);
            }
            Err(e) => return Err(e),
        }
    };
    let (ckpt, frames, records, messages, floor) = read;
    seed(
        &StdIo,
        cfg.dir(),
        ckpt.as_ref().map(|(_, b)| b.as_slice()),
        &frames,
    )?;
    let rebuilt = Rebuilt {
        checkpoint: ckpt.map(|(c, _)| c),
        records,
    };
    tracing::info!(instance, stream = %n.stream, floor, checkpoint = ?rebuilt.checkpoint,
        records, messages, "WAL rebuilt from the replica");
    Ok(rebuilt)
}

/// What [`read_replica`] found: the checkpoint (LSN and file bytes), the
/// frames after it, their count, the messages read, the floor.
type Read = (Option<(Lsn, Vec<u8>)>, Vec<u8>, u64, u64, Lsn);

async fn read_replica(n: &Names) -> Result<Read> {
    let instance = n.instance.as_str();
    let s = connect(n).await?;
    let floor = floor(n, &s.stream).await?;
    let checkpoint = match last_message(n, &s.stream, &n.ckpt_subject()).await? {
        None => None,
        Some(m) if m.payload.as_ref() == IN_OBJECT_STORE => Some(read_object(n, &s).await?),
        Some(m) => Some(m.payload.to_vec()),
    };
    let ckpt = match checkpoint {
        Some(bytes) => {
            let c = writebehind_wal::checkpoint::decode(&bytes).map_err(|reason| {
                Error::Wal(writebehind_wal::Error::ReplicaData {
                    reason: format!("checkpoint object of {instance}: {reason}"),
                })
            })?;
            // A checkpoint below the floor is older than a flush that
            // covered it: the records from the floor on say it all.
            (c.lsn + 1 >= floor).then_some((c.lsn, bytes))
        }
        None => None,
    };
    let start = match &ckpt {
        Some((c, _)) => c + 1,
        None => floor.max(1),
    };
    let subject = n.wal_subject();
    // By LSN, not by arrival: a message re-sent after a lost one lands
    // after later ones. A copy of an LSN already held is the same record.
    let mut by_lsn: std::collections::BTreeMap<Lsn, Vec<u8>> = Default::default();
    let mut seq = 1;
    let mut messages = 0;
    let mut records = 0;
    loop {
        let got = s
            .stream
            .raw_message_builder()
            .sequence(seq)
            .next_by_subject(subject.clone())
            .send()
            .await;
        let m = match got {
            Ok(m) => m,
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(n.error(format!("reading {subject} at {seq}: {e}"))),
        };
        seq = m.sequence + 1;
        messages += 1;
        let spans = parse_frames(&m.payload).map_err(|e| {
            tracing::error!(instance, sequence = m.sequence, error = %e, "replica message failed its checks");
            Error::Wal(e)
        })?;
        for sp in spans.into_iter().filter(|sp| sp.lsn >= start) {
            by_lsn
                .entry(sp.lsn)
                .or_insert_with(|| m.payload[sp.range].to_vec());
        }
    }
    // Continuity from the start: a missing LSN is an error, never skipped.
    let mut frames = Vec::new();
    for (expected, (lsn, frame)) in (start..).zip(by_lsn) {
        if lsn != expected {
            return Err(Error::Wal(writebehind_wal::Error::ReplicaGap {
                expected,
                found: lsn,
            }));
        }
        frames.extend_from_slice(&frame);
        records += 1;
    }
    Ok((ckpt, frames, records, messages, floor))
}

/// The checkpoint too large for a message, from the object store.
async fn read_object(n: &Names, s: &Session) -> Result<Vec<u8>> {
    let store =
        s.js.get_object_store(n.bucket())
            .await
            .map_err(|e| n.error(format!("object store {}: {e}", n.bucket())))?;
    let mut obj = store.get(&n.instance).await.map_err(|e| {
        n.error(format!(
            "checkpoint object {} in {}: {e}",
            n.instance,
            n.bucket()
        ))
    })?;
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
        }))
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
}

/// What the task keeps across reconnections.
struct Cursor {
    /// Next LSN to publish.
    next: Lsn,
    /// Published, not yet acknowledged: republished as is after a failure
    /// (same bytes, same message id: JetStream drops what it has).
    in_flight: VecDeque<InFlight>,
    /// LSN → stream sequence of the messages this process published.
    index: VecDeque<(Lsn, Lsn, u64)>,
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
        index: VecDeque::new(),
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
    let tail = tail(n, &s.stream).await?;
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
        publish(&s, rep, cur, m.first, m.last, m.payload).await?;
    }
    cur.next = cur.next.max(tail + 1);
    if let Some(sh) = weak.upgrade() {
        let local = sh.wal().last_lsn();
        if tail > local {
            tracing::warn!(instance = %n.instance, stream_lsn = tail, local_lsn = local,
                "the stream holds more of this instance than its local WAL");
        }
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
            cur.index.push_back((m.first, m.last, ack.sequence));
            cur.published = true;
            let last = m.last;
            cur.in_flight.pop_front();
            rep.acked(last);
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

/// Publishes one message (frames `first..=last`) and queues its ack.
async fn publish(
    s: &Session,
    rep: &Replicator,
    cur: &mut Cursor,
    first: Lsn,
    last: Lsn,
    payload: Bytes,
) -> Result<()> {
    let n = &rep.names;
    let id = format!("{}:{first}", n.instance);
    cur.in_flight.push_back(InFlight {
        first,
        last,
        payload: payload.clone(),
        ack: None,
    });
    let sent =
        s.js.send_publish(
            n.wal_subject(),
            jetstream::message::PublishMessage::build()
                .payload(payload)
                .message_id(id),
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
        }
        let payload = Bytes::copy_from_slice(&frames[start..end]);
        publish(s, rep, cur, spans[i].lsn, spans[j].lsn, payload).await?;
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
async fn put_object(s: &Session, rep: &Replicator, lsn: Lsn, bytes: &[u8]) -> Result<()> {
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
        .put(n.instance.as_str(), &mut &bytes[..])
        .await
        .map_err(|e| n.error(format!("storing checkpoint {lsn}: {e}")))?;
    Ok(())
}

/// Stores the checkpoint for `lsn` on `<prefix>.<instance>.ckpt` (only the
/// newest kept) — in the object store, with a marker message, when it is
/// larger than a message — then trims below it.
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
    let payload = if bytes.len() <= max {
        Bytes::from(bytes.clone())
    } else {
        put_object(s, rep, lsn, &bytes).await?;
        Bytes::from_static(IN_OBJECT_STORE)
    };
    publish_newest(
        s,
        rep,
        n.ckpt_subject(),
        payload,
        &format!("checkpoint {lsn}"),
    )
    .await?;
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
    payload: Bytes,
    what: &str,
) -> Result<()> {
    let n = &rep.names;
    let ack =
        s.js.publish(subject.clone(), payload)
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
/// process knows the sequence of.
async fn trim(s: &Session, rep: &Replicator, cur: &mut Cursor, floor: Lsn) -> Result<()> {
    let n = &rep.names;
    if floor <= cur.floor {
        return Ok(());
    }
    let payload = Bytes::from(floor.to_string());
    publish_newest(s, rep, n.trim_subject(), payload, &format!("floor {floor}")).await?;
    cur.floor = floor;
    // The first message still needed: the one holding `floor`, or the first after it.
    while cur.index.front().is_some_and(|m| m.1 < floor) {
        cur.index.pop_front();
    }
    let keep_from = match cur.index.front() {
        // The message holding the floor: everything before it goes.
        Some(m) if m.0 <= floor => m.2,
        // The floor is in what an earlier process published: left alone.
        Some(_) => return Ok(()),
        // Nothing acknowledged at or past the floor yet: everything
        // acknowledged goes, once this process knows it is all below.
        None => match cur.in_flight.front() {
            Some(_) => return Ok(()),
            None if !cur.published => return Ok(()),
            None => {
                s.stream
                    .get_info()
                    .await
                    .map_err(|e| n.error(format!("stream info: {e}")))?
                    .state
                    .last_sequence
                    + 1
            }
        },
    };
    s.stream
        .purge()
        .filter(n.wal_subject())
        .sequence(keep_from)
        .await
        .map_err(|e| n.error(format!("purging below LSN {floor}: {e}")))?;
    rep.purges.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(floor, keep_from, "stream trimmed");
    Ok(())
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
    let flushed = rep.trim_to.load(Ordering::Acquire);
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
    fn server_lists_are_checked() {
        assert_eq!(servers("nats://a:4222, nats://b:4223").unwrap().len(), 2);
        assert!(matches!(
            servers("nats://a:notaport"),
            Err(Error::Config(_))
        ));
    }
}
