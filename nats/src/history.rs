//! What the stream holds of an instance, read back at open: the floor, the
//! newest checkpoint, every frame that counts, and the take-over that claims
//! the instance before reading it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::Stream;
use tokio::io::AsyncReadExt;
use writebehind_wal::replica::parse_frames;
use writebehind_wal::{Lsn, RebuildSource};

use crate::names::Names;
use crate::owner::{self, Claim, Owners};
use crate::session::{connect, last_message, next_on, Session};
use crate::{Error, Result, BACKOFF_MAX, BACKOFF_MIN, IN_OBJECT_STORE};

/// The floor: the highest any owner recorded (each a flush position the
/// database holds); records below it may be gone.
pub(crate) async fn floor(n: &Names, stream: &Stream, owners: &Owners) -> Result<Lsn> {
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
    frames: BTreeMap<Lsn, Vec<u8>>,
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
    pub(crate) fn rebuild_from(&self) -> Lsn {
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
    pub(crate) fn frames_from(&self, start: Lsn) -> writebehind_wal::Result<(Vec<u8>, u64)> {
        let mut frames = Vec::new();
        let mut records = 0;
        for (expected, (lsn, frame)) in (start..).zip(self.frames.range(start..)) {
            if *lsn != expected {
                return Err(writebehind_wal::Error::ReplicaGap {
                    expected,
                    found: *lsn,
                });
            }
            frames.extend_from_slice(frame);
            records += 1;
        }
        Ok((frames, records))
    }
}

/// Reads the instance's history from the stream.
pub(crate) async fn history(n: &Names, s: &Session, owners: &Owners) -> Result<History> {
    let instance = n.instance.as_str();
    let floor = floor(n, &s.stream, owners).await?;
    let checkpoint = newest_checkpoint(n, s, owners).await?;
    let subject = n.wal_subject();
    // By LSN, not by arrival: a message re-sent after a lost one lands
    // after later ones. A copy of an LSN already held is the same record.
    let mut frames: BTreeMap<Lsn, Vec<u8>> = BTreeMap::new();
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
pub(crate) async fn stream_end(n: &Names, s: &Session, owners: &Owners) -> Result<Lsn> {
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
pub(crate) async fn take_over(n: &Names, at_least: u64, patience: Duration) -> Result<TakeOver> {
    let instance = n.instance.as_str();
    // A cluster electing a new leader (a node just lost) answers again
    // within seconds: that is retried. A damaged or gapped stream is not.
    let until = Instant::now() + patience;
    let mut pause = BACKOFF_MIN;
    loop {
        let attempt = async {
            let s = connect(n).await?;
            let claim = owner::claim(n, &s.js, &s.stream, at_least, Lsn::MAX).await?;
            let owners = owner::owners(n, &s.stream).await?;
            let history = history(n, &s, &owners).await?;
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

impl RebuildSource for History {
    fn last_lsn(&self) -> Lsn {
        self.last()
    }

    fn rebuild_start(&self) -> (Option<&[u8]>, Lsn) {
        (self.rebuild_checkpoint(), self.rebuild_from())
    }

    fn frames_from(&self, start: Lsn) -> writebehind_wal::Result<(Vec<u8>, u64)> {
        History::frames_from(self, start)
    }
}
