//! The write path, top to bottom:
//!
//! 1. refuse on a closed cache or a poisoned log;
//! 2. refuse a write when another owner took the instance id (fenced), and
//!    a key the database could not hold (before anything changes);
//! 3. wait for room (backpressure);
//! 4. under the key's shard lock: check the change (sizes, type,
//!    overflow), append it to the WAL (which assigns the LSN), apply it to
//!    memory with that LSN — so per key the WAL order is the apply order
//!    and replay rebuilds exactly this state;
//! 5. outside the lock: wait for the WAL ticket (the durability), count,
//!    and wake the flusher or the checkpointer past their thresholds.
//!
//! An error from steps 1–4 before the append changed nothing. An error
//! from the WAL is indeterminate and poisons the log (see [`Error`]).

use std::cell::RefCell;
use std::time::Instant;

use writebehind_core::{Change, Key, Lookup, Lsn, ShardGuard, Value};
use writebehind_wal::{Append, Durability};

use crate::log;
use crate::metrics::Op;
use crate::read::{add_to_base, Pending};
use crate::shared::Shared;
use crate::stats::Count;
use crate::value::CacheValue;
use crate::{Error, Result};

/// Steps 1–3 for `key`; returns it ready for the shard lock.
fn admit(sh: &Shared, text: &str) -> Result<Key> {
    sh.usable()?;
    if let Some(p) = sh.pipeline() {
        // A fenced cache flushes nothing: refuse before the WAL.
        p.check_owner()?;
        p.writer()
            .check_key(text)
            .map_err(|reason| Error::KeyRefused {
                key: text.chars().take(64).collect(),
                reason,
            })?;
    }
    Ok(Key::from(text))
}

/// A write from async code.
pub(crate) async fn write_async(
    sh: &Shared,
    text: &str,
    change: Change,
    durability: Option<Durability>,
) -> Result<Lsn> {
    let key = admit(sh, text)?;
    sh.room().wait_async(&key).await?;
    let op = Op::of(&change);
    let timed = timed(sh, durability);
    let ticket = append(sh, key, change, durability)?;
    let lsn = ticket.await.map_err(|e| sh.owned(e.into()))?;
    after_write(sh, op, timed);
    Ok(lsn)
}

/// A write from a plain thread.
pub(crate) fn write_blocking(
    sh: &Shared,
    text: &str,
    change: Change,
    durability: Option<Durability>,
) -> Result<Lsn> {
    let key = admit(sh, text)?;
    sh.room().wait_blocking(&key)?;
    let op = Op::of(&change);
    let timed = timed(sh, durability);
    let ticket = append(sh, key, change, durability)?;
    let lsn = ticket.wait().map_err(|e| sh.owned(e.into()))?;
    after_write(sh, op, timed);
    Ok(lsn)
}

/// Step 4 for one change.
fn append(sh: &Shared, key: Key, change: Change, durability: Option<Durability>) -> Result<Append> {
    let mut shard = sh.state().lock(&key);
    append_locked(sh, &mut shard, key, change, durability)
}

/// Under the key's shard lock: check, log (which assigns the LSN), apply.
fn append_locked(
    sh: &Shared,
    shard: &mut ShardGuard<'_>,
    key: Key,
    change: Change,
    durability: Option<Durability>,
) -> Result<Append> {
    let expected = shard.check_expected(&key, &change)?;
    let ticket = PAYLOAD.with_borrow_mut(|buf| {
        buf.clear();
        log::encode_op_into(buf, &key, &change, expected)?;
        let ticket = match durability {
            Some(d) => sh.wal().append_with(log::KIND, buf, d),
            None => sh.wal().append(log::KIND, buf),
        };
        // A rare huge value does not keep its buffer for the thread's life.
        if buf.capacity() > PAYLOAD_KEEP {
            *buf = Vec::new();
        }
        Ok::<_, Error>(ticket?)
    })?;
    shard.apply(key, change, expected, ticket.lsn());
    Ok(ticket)
}

thread_local! {
    /// This thread's record bytes: the WAL copies them into the frame, so
    /// one buffer serves every write instead of one allocation each.
    static PAYLOAD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Largest record buffer a thread keeps between writes.
const PAYLOAD_KEEP: usize = 64 << 10;

/// Atomically replaces the value of `key` with `f(old)`: `Some` puts,
/// `None` deletes. Loads first (outside the lock) so `f` sees the
/// database's row; `f` runs under the shard lock.
pub(crate) async fn update<V: CacheValue, F>(sh: &Shared, text: &str, f: F) -> Result<Option<V>>
where
    F: FnOnce(Option<V>) -> Option<V>,
{
    let key = admit(sh, text)?;
    let mut f = f;
    loop {
        let cut_gen = sh.pipeline().map_or(0, |p| p.cut_generation());
        let loaded = match sh.state().get(&key) {
            Lookup::Miss => crate::read::load(sh, &key).await?,
            Lookup::Delta(_) | Lookup::DeltaCols(_) => {
                if sh.state().is_in_flight(&key) {
                    // A counter in flight settles first.
                    crate::read::with_base(sh, &key).await?;
                    continue;
                }
                crate::read::load(sh, &key).await?
            }
            _ => None,
        };
        sh.room().wait_async(&key).await?;
        let timed = timed(sh, None);
        match update_locked(sh, &key, loaded, cut_gen, f)? {
            Updated::Retry(back) => f = back,
            Updated::Done(ticket, new) => {
                ticket.await?;
                let op = if new.is_some() { Op::Put } else { Op::Delete };
                after_write(sh, op, timed);
                return Ok(new);
            }
        }
    }
}

/// What `update_locked` did.
enum Updated<V, F> {
    /// A flush moved deltas since the row was loaded: load again.
    Retry(F),
    /// Written: the WAL ticket and the new value.
    Done(Append, Option<V>),
}

fn update_locked<V: CacheValue, F>(
    sh: &Shared,
    key: &Key,
    loaded: Option<(Value, i64)>,
    cut_gen: u64,
    f: F,
) -> Result<Updated<V, F>>
where
    F: FnOnce(Option<V>) -> Option<V>,
{
    let mut shard = sh.state().lock(key);
    let pending = match shard.get(key) {
        Lookup::Value(v) => Ok(Some(v)),
        Lookup::Absent => Ok(None),
        Lookup::Delta(d) => Err(Pending::Add(d)),
        Lookup::DeltaCols(d) => Err(Pending::Cols(d)),
        Lookup::Miss => Ok(loaded.clone().map(|(v, _)| v)),
    };
    let current = match pending {
        Ok(value) => value,
        Err(pending) => {
            // A cut since the load may have put this delta in the loaded
            // row (cuts need every shard lock, so none runs now).
            if sh.pipeline().map_or(0, |p| p.cut_generation()) != cut_gen {
                return Ok(Updated::Retry(f));
            }
            Some(add_to_base(key, loaded, &pending)?)
        }
    };
    let old = current.as_ref().map(V::from_value).transpose()?;
    let new = f(old);
    let change = match &new {
        Some(v) => Change::Put(v.to_value()?),
        None => Change::Delete,
    };
    let ticket = append_locked(sh, &mut shard, key.clone(), change, None)?;
    Ok(Updated::Done(ticket, new))
}

/// A start time when this write waits for an fsync (its wait is then
/// measured); `None` otherwise, so other writes pay nothing.
#[inline]
fn timed(sh: &Shared, durability: Option<Durability>) -> Option<Instant> {
    matches!(
        durability.unwrap_or(sh.cfg().durability()),
        Durability::Fsync
    )
    .then(Instant::now)
}

/// Step 5: count the write and wake the flusher or the checkpointer when a
/// threshold is passed. Atomics, and the WAL size only every 256 writes.
fn after_write(sh: &Shared, op: Op, timed: Option<Instant>) {
    if let Some(started) = timed {
        sh.metrics()
            .fsync_waited(started.elapsed(), "write", sh.cfg().dir());
    }
    let c = sh.counters();
    let before = c.add(Count::Writes, 1);
    c.add(
        match op {
            Op::Add => Count::Adds,
            Op::Put => Count::Puts,
            Op::Delete => Count::Deletes,
        },
        1,
    );
    if let Some(p) = sh.pipeline() {
        sh.unflushed().wrote(sh.opened_at());
        let cfg = sh.cfg();
        if sh.state().dirty_entries() >= cfg.flush_dirty_entries()
            || sh.state().dirty_bytes() >= cfg.flush_dirty_bytes()
        {
            p.wake();
        }
    }
    if before.is_multiple_of(256) {
        sh.compactor().refresh();
    }
}
