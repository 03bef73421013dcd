//! Keeping the stream bounded: checkpoints stored (in a message, or in the
//! object store when larger), floors recorded per owner epoch, purges below
//! them; and the upkeep between messages and at shutdown.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Weak;

use async_nats::jetstream;
use bytes::Bytes;
use writebehind_wal::{Lsn, ReadBack, Wal};

use crate::owner;
use crate::replicator::Replicator;
use crate::session::Session;
use crate::task::{catch_up, confirm, next_ack, settle, Cursor, Stored};
use crate::{Error, Result, HEADER_ROOM, IN_OBJECT_STORE, WINDOW};

/// Stores the local checkpoint (which must reach `need - 1`) in the object
/// store, records the floor after it, and moves the cursor past it.
pub(crate) async fn publish_checkpoint(
    s: &Session,
    rep: &Replicator,
    wal: &Wal,
    cur: &mut Cursor,
    need: Lsn,
) -> Result<()> {
    let n = &rep.names;
    let cp = wal.load_checkpoint().map_err(Error::Wal)?;
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
    rep.advance_replicated(cp.lsn);
    Ok(())
}

/// A checkpoint larger than a message, into the object store.
pub(crate) async fn put_object(
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
pub(crate) async fn put_checkpoint(
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
pub(crate) async fn publish_newest(
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
pub(crate) async fn trim(
    s: &Session,
    rep: &Replicator,
    cur: &mut Cursor,
    floor: Lsn,
) -> Result<()> {
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
pub(crate) fn keep_from(
    index: &VecDeque<Stored>,
    floor: Lsn,
    all_below: Option<u64>,
) -> Option<u64> {
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
pub(crate) async fn maintain(
    s: &Session,
    rep: &Replicator,
    weak: &Weak<dyn ReadBack>,
    cur: &mut Cursor,
    max: usize,
) -> Result<()> {
    let Some(log) = weak.upgrade() else {
        return Ok(());
    };
    if rep.dropped.load(Ordering::Acquire) && cur.in_flight.len() < WINDOW {
        catch_up(s, rep, log.wal(), cur, max).await?;
    }
    let ckpt = rep.checkpoint_at.load(Ordering::Acquire);
    if ckpt > cur.checkpoint {
        match log.wal().load_checkpoint().map_err(Error::Wal)? {
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
        .min(log.wal().durable_lsn() + 1);
    if flushed > cur.floor && flushed <= rep.watermark.replicated() {
        // The checkpoint in the object store predates this flush: a
        // rebuild starts from the floor instead.
        trim(s, rep, cur, flushed).await?;
    }
    Ok(())
}

/// At shutdown: publish what is left and wait for the acks, within the bound.
pub(crate) async fn drain(
    s: &Session,
    rep: &Replicator,
    weak: &Weak<dyn ReadBack>,
    cur: &mut Cursor,
    max: usize,
) -> Result<()> {
    if let Some(log) = weak.upgrade() {
        catch_up(s, rep, log.wal(), cur, max).await?;
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
    use super::*;

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
}
