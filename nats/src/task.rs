//! The publishing task: one connection's worth of publishing at a time,
//! reconnecting with backoff; groups from the queue, or read back from the
//! local WAL where the queue dropped them, in LSN order, at most
//! [`WINDOW`] messages in flight, counted as replicated only after the
//! ownership check.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use writebehind_wal::replica::parse_frames;
use writebehind_wal::{Group, Lsn, ReadBack, Wal};

use crate::history::stream_end;
use crate::owner::{self, Claim};
use crate::replicator::Replicator;
use crate::session::{connect, Session};
use crate::trim::{drain, maintain, publish_checkpoint, put_checkpoint};
use crate::{Error, Result, BACKOFF_MAX, BACKOFF_MIN, HEADER_ROOM, WINDOW};

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
pub(crate) struct InFlight {
    pub(crate) first: Lsn,
    pub(crate) last: Lsn,
    pub(crate) payload: Bytes,
    pub(crate) ack: Option<AckFuture>,
    /// Sent again after a lost connection: it may be stored below
    /// messages acknowledged since.
    pub(crate) retried: bool,
}

/// A message JetStream stored: its LSNs and stream sequence.
pub(crate) type Stored = (Lsn, Lsn, u64);

/// What the task keeps across reconnections.
pub(crate) struct Cursor {
    /// Next LSN to publish.
    pub(crate) next: Lsn,
    /// Published, not yet acknowledged: republished as is after a failure
    /// (same bytes, same message id: JetStream drops what it has).
    pub(crate) in_flight: VecDeque<InFlight>,
    /// Stored, and not yet checked against the owner subject: not yet
    /// acknowledged to anyone.
    pub(crate) unconfirmed: VecDeque<Stored>,
    /// LSN → stream sequence of the messages this process published
    /// (confirmed while it owned the instance).
    pub(crate) index: VecDeque<Stored>,
    /// Highest stream sequence in what was confirmed.
    pub(crate) last_seq: u64,
    /// This owner's claim, once the first session has it.
    pub(crate) claim: Option<Claim>,
    /// Floor already recorded.
    pub(crate) floor: Lsn,
    /// Checkpoint already published.
    pub(crate) checkpoint: Lsn,
    /// This process had a message acknowledged: every older message of
    /// this instance is below the ones in `index`.
    pub(crate) published: bool,
}

pub(crate) async fn run(
    rep: &Arc<Replicator>,
    weak: &Weak<dyn ReadBack>,
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
        let before = rep.watermark.replicated();
        let err = match session(rep, weak, &mut rx, &mut shutdown, &mut cur).await {
            Ok(()) => return,
            Err(e) if rep.fenced_by().is_some() => {
                // A newer owner has the instance: nothing to retry.
                rep.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(url = %rep.names.url, error = %e, "replication stopped: fenced");
                return;
            }
            Err(e) => e,
        };
        if rep.watermark.replicated() > before {
            pause = BACKOFF_MIN;
        }
        rep.failures.fetch_add(1, Ordering::Relaxed);
        rep.watermark.fail(crate::describe(&err));
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
pub(crate) async fn session(
    rep: &Arc<Replicator>,
    weak: &Weak<dyn ReadBack>,
    rx: &mut mpsc::Receiver<Group>,
    shutdown: &mut watch::Receiver<bool>,
    cur: &mut Cursor,
) -> Result<()> {
    let n = &rep.names;
    let s = connect(n).await?;
    let max = (s.client.server_info().max_payload)
        .saturating_sub(HEADER_ROOM)
        .max(1024);
    let held = rep.claim();
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
    let end = stream_end(n, &s, &owners).await?;
    let local = weak.upgrade().map(|log| log.wal().last_lsn());
    // The stream's acknowledgement never counts for a record the local
    // WAL does not hold (open reconciled them; this is a guard).
    let end = match local {
        Some(local) if end > local => {
            tracing::error!(instance = %n.instance, stream_lsn = end, local_lsn = local,
                "the stream holds more of this instance than its local WAL; acknowledging only what the WAL holds");
            local
        }
        _ => end,
    };
    // Every unacknowledged message goes again as it was (same bytes, same
    // id: JetStream drops the copies it has). Not only those past the
    // stream's end: one lost with a dead connection can sit below one the
    // client re-sent on its own after reconnecting. A rebuild reads by LSN.
    let retry: Vec<_> = cur.in_flight.drain(..).collect();
    match retry.first() {
        None => {
            rep.advance_replicated(end);
            cur.next = end + 1;
        }
        Some(m) => cur.next = m.first,
    }
    for m in retry {
        publish(&s, rep, cur, m.first, m.last, m.payload, true).await?;
    }
    cur.next = cur.next.max(end + 1);
    if let Some(log) = weak.upgrade() {
        catch_up(&s, rep, log.wal(), cur, max).await?;
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

pub(crate) type PubAckResult = std::result::Result<jetstream::publish::PublishAck, String>;

pub(crate) async fn next_ack(q: &mut VecDeque<InFlight>) -> PubAckResult {
    let Some(front) = q.front_mut() else {
        return Err("nothing in flight".into());
    };
    let Some(ack) = front.ack.as_mut() else {
        return Err("message was not sent".into());
    };
    ack.await.map_err(|e| e.to_string())
}

pub(crate) fn settle(rep: &Replicator, cur: &mut Cursor, acked: PubAckResult) -> Result<()> {
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
pub(crate) async fn confirm(
    s: &Session,
    rep: &Replicator,
    cur: &mut Cursor,
    always: bool,
) -> Result<()> {
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
        rep.advance_replicated(last);
    }
    Ok(())
}

/// Publishes one message (frames `first..=last`) and queues its ack.
pub(crate) async fn publish(
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
pub(crate) async fn publish_frames(
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
pub(crate) async fn take_group(
    s: &Session,
    rep: &Replicator,
    weak: &Weak<dyn ReadBack>,
    cur: &mut Cursor,
    g: Group,
    max: usize,
) -> Result<()> {
    if g.last < cur.next {
        return Ok(());
    }
    if g.first > cur.next {
        let Some(log) = weak.upgrade() else {
            return Ok(());
        };
        catch_up_to(s, rep, log.wal(), cur, max, Some(g.first)).await?;
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
pub(crate) async fn catch_up(
    s: &Session,
    rep: &Replicator,
    wal: &Wal,
    cur: &mut Cursor,
    max: usize,
) -> Result<()> {
    rep.dropped.store(false, Ordering::Release);
    catch_up_to(s, rep, wal, cur, max, None).await
}

/// Publishes the local WAL's records from `cur.next` up to `until`
/// (exclusive; `None`: all). Where a local checkpoint already cut them,
/// the checkpoint goes to the object store first and publishing goes on
/// after it.
pub(crate) async fn catch_up_to(
    s: &Session,
    rep: &Replicator,
    wal: &Wal,
    cur: &mut Cursor,
    max: usize,
    until: Option<Lsn>,
) -> Result<()> {
    let end = until.unwrap_or(Lsn::MAX);
    if cur.next >= end || cur.next > wal.last_lsn() {
        return Ok(());
    }
    let mut batch: Vec<writebehind_wal::Frame> = Vec::new();
    let mut bytes = 0;
    let mut first_seen = false;
    for r in wal.replay(cur.next).map_err(Error::Wal)? {
        let r = r.map_err(Error::Wal)?;
        if !first_seen {
            first_seen = true;
            if r.lsn > cur.next {
                // Compacted away locally: the checkpoint stands for it.
                publish_checkpoint(s, rep, wal, cur, r.lsn).await?;
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
                rep.advance_replicated(cp.lsn);
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
