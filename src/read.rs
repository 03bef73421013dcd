//! The read path: memory first, then the database (read-through) with
//! concurrent misses on one key collapsed into one query; counters whose
//! base is in the database are read as that row plus the pending delta,
//! never while a flush of them is unsettled. Also refresh-ahead (one
//! supervised background load per due key) and invalidation (clean copies
//! go; a dirty entry keeps its write, which is ours and will be flushed,
//! and forgets the row it was read over).
//!
//! Here: what a read answers. By job: `load` (read-through loads, refresh-ahead, warming),
//! `loads` (the loads in progress, which every handle shares: it imports nothing of
//! `Shared`) and `invalidation` (dropping copies, here and announced by other instances).

use std::sync::Arc;
use std::time::Instant;

use tokio::runtime::Handle;
use writebehind_core::{Key, Lookup, Value};

use crate::shared::Shared;
use crate::stats::Count;
use crate::{Error, Result};

mod invalidation;
mod load;
pub(crate) mod loads;

pub(crate) use invalidation::{
    broadcasts, invalidate, invalidate_local, invalidate_local_and_broadcast, invalidated_elsewhere,
};
use load::refresh;
pub(crate) use load::{load, warm};

/// Whether misses and unknown counter bases are read from the database.
pub(crate) fn reads_through(sh: &Shared) -> bool {
    sh.pipeline().is_some() && sh.cfg().read_through()
}

/// The latest acknowledged value of `key`.
pub(crate) async fn get(sh: &Arc<Shared>, text: &str) -> Result<Option<Value>> {
    sh.usable()?;
    let read = sh.state().read(text);
    if read.refresh {
        refresh(sh, Key::from(text), Handle::try_current().ok());
    }
    let value = match read.lookup {
        Lookup::Value(v) => Some(v),
        Lookup::Absent => None,
        Lookup::Delta(_) | Lookup::DeltaCols(_) => with_base(sh, &Key::from(text)).await?,
        Lookup::Miss => load(sh, &Key::from(text)).await?.map(|(v, _)| v),
    };
    sh.counters().add(Count::Reads, 1);
    Ok(value)
}

/// What memory alone says of `key`: `Ok(Some(..))` when that is the answer,
/// `Ok(None)` when the database must be asked.
///
/// A refresh-ahead load it asks for runs on `runtime` (none: not started).
pub(crate) fn get_from_memory(
    sh: &Arc<Shared>,
    text: &str,
    runtime: Option<Handle>,
) -> Result<Option<Option<Value>>> {
    sh.usable()?;
    let through = reads_through(sh);
    let read = sh.state().read(text);
    if read.refresh {
        refresh(sh, Key::from(text), runtime);
    }
    let answer = match read.lookup {
        Lookup::Value(v) => Some(Some(v)),
        Lookup::Absent => Some(None),
        // Without read-through the cache is the whole truth: no base, no row.
        Lookup::Delta(d) if !through => Some(Some(Value::Int(d))),
        Lookup::DeltaCols(d) if !through => Some(Some(Value::Ints(d))),
        Lookup::Miss if !through => Some(None),
        Lookup::Delta(_) | Lookup::DeltaCols(_) | Lookup::Miss => None,
    };
    if answer.is_some() {
        sh.counters().add(Count::Reads, 1);
    }
    Ok(answer)
}

/// A counter (or delta record) whose base is unknown: the database's
/// value (row) plus the pending delta(s). Two races would count a delta twice, so both restart the read:
/// the key is in the cut in flight (the database may or may not hold that
/// part yet: wait for the cut to settle, within the wait bound), or a cut
/// was taken while the row loaded (the row may already hold the delta).
pub(crate) async fn with_base(sh: &Shared, key: &Key) -> Result<Option<Value>> {
    let Some(p) = sh.pipeline() else {
        return Ok(match sh.state().get(key) {
            Lookup::Value(v) => Some(v),
            Lookup::Delta(d) => Some(Value::Int(d)),
            Lookup::DeltaCols(d) => Some(Value::Ints(d)),
            Lookup::Absent | Lookup::Miss => None,
        });
    };
    let mut status = p.subscribe();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + p.wait_timeout();
    loop {
        status.borrow_and_update();
        let cut_gen = p.cut_generation();
        let delta = match sh.state().get(key) {
            Lookup::Value(v) => return Ok(Some(v)),
            Lookup::Absent => return Ok(None),
            Lookup::Miss => return Ok(load(sh, key).await?.map(|(v, _)| v)),
            Lookup::Delta(d) => Pending::Add(d),
            Lookup::DeltaCols(d) => Pending::Cols(d),
        };
        if sh.state().is_in_flight(key) {
            p.wait_settled(&mut status, deadline, started, key).await?;
            continue;
        }
        let base = load(sh, key).await?;
        if p.cut_generation() != cut_gen {
            continue;
        }
        return add_to_base(key, base, &delta).map(Some);
    }
}

/// The adds pending over an unknown base.
#[derive(Clone, Debug)]
pub(crate) enum Pending {
    /// A counter's delta.
    Add(i64),
    /// A delta record's per-column deltas.
    Cols(Arc<[i64]>),
}

/// The loaded row's counter (or delta record) plus the pending delta(s);
/// no row counts as zeros.
pub(crate) fn add_to_base(
    key: &Key,
    base: Option<(Value, i64)>,
    pending: &Pending,
) -> Result<Value> {
    let overflow = || {
        Error::Codec(format!(
            "counter {key:?} overflows i64 with its pending delta"
        ))
    };
    let mismatch = |found: &str| {
        Error::Codec(format!(
            "key {key:?} holds {found} in the database but {} adds in the cache",
            match pending {
                Pending::Add(_) => "counter",
                Pending::Cols(_) => "delta-record",
            }
        ))
    };
    match (base, pending) {
        (None, Pending::Add(d)) => Ok(Value::Int(*d)),
        (None, Pending::Cols(d)) => Ok(Value::Ints(d.clone())),
        (Some((Value::Int(b), _)), Pending::Add(d)) => {
            b.checked_add(*d).map(Value::Int).ok_or_else(overflow)
        }
        (Some((Value::Ints(b), _)), Pending::Cols(d)) if b.len() == d.len() => b
            .iter()
            .zip(d.iter())
            .map(|(b, d)| b.checked_add(*d))
            .collect::<Option<Arc<[i64]>>>()
            .map(Value::Ints)
            .ok_or_else(overflow),
        (Some((Value::Ints(b), _)), Pending::Cols(d)) => Err(mismatch(&format!(
            "{} columns against {}",
            b.len(),
            d.len()
        ))),
        (Some((Value::Bytes(_), _)), _) => Err(mismatch("a record")),
        (Some((Value::Int(_), _)), _) => Err(mismatch("a counter")),
        (Some((Value::Ints(_), _)), _) => Err(mismatch("a delta record")),
    }
}
