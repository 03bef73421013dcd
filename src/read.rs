//! The read path: memory first, then the database (read-through) with
//! concurrent misses on one key collapsed into one query; counters whose
//! base is in the database are read as that row plus the pending delta,
//! never while a flush of them is unsettled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::OnceCell;
use writebehind_core::{Expected, Key, Lookup, Value};

use crate::shared::Shared;
use crate::stats::Count;
use crate::{Error, Result};

/// Result of one read-through load, shared by every caller waiting on it.
type LoadResult = std::result::Result<Option<(Value, i64)>, Arc<Error>>;

/// Loads in progress, one per key.
#[derive(Default)]
pub(crate) struct Loads(Mutex<HashMap<Key, Arc<OnceCell<LoadResult>>>>);

/// Whether misses and unknown counter bases are read from the database.
pub(crate) fn reads_through(sh: &Shared) -> bool {
    sh.pipeline().is_some() && sh.cfg().read_through()
}

/// The latest acknowledged value of `key`.
pub(crate) async fn get(sh: &Shared, text: &str) -> Result<Option<Value>> {
    sh.usable()?;
    let value = match sh.state().get(text) {
        Lookup::Value(v) => Some(v),
        Lookup::Absent => None,
        Lookup::Delta(_) => with_base(sh, &Key::from(text)).await?,
        Lookup::Miss => load(sh, &Key::from(text)).await?.map(|(v, _)| v),
    };
    sh.counters().add(Count::Reads, 1);
    Ok(value)
}

/// What memory alone says of `key`: `Ok(Some(..))` when that is the answer,
/// `Ok(None)` when the database must be asked.
pub(crate) fn get_from_memory(sh: &Shared, text: &str) -> Result<Option<Option<Value>>> {
    sh.usable()?;
    let through = reads_through(sh);
    let answer = match sh.state().get(text) {
        Lookup::Value(v) => Some(Some(v)),
        Lookup::Absent => Some(None),
        // Without read-through the cache is the whole truth: no base, no row.
        Lookup::Delta(d) if !through => Some(Some(Value::Int(d))),
        Lookup::Miss if !through => Some(None),
        Lookup::Delta(_) | Lookup::Miss => None,
    };
    if answer.is_some() {
        sh.counters().add(Count::Reads, 1);
    }
    Ok(answer)
}

/// A counter whose base is unknown: the database's value plus the pending
/// delta. Two races would count a delta twice, so both restart the read:
/// the key is in the cut in flight (the database may or may not hold that
/// part yet: wait for the cut to settle, within the wait bound), or a cut
/// was taken while the row loaded (the row may already hold the delta).
pub(crate) async fn with_base(sh: &Shared, key: &Key) -> Result<Option<Value>> {
    let Some(p) = sh.pipeline() else {
        return Ok(match sh.state().get(key) {
            Lookup::Value(v) => Some(v),
            Lookup::Delta(d) => Some(Value::Int(d)),
            Lookup::Absent | Lookup::Miss => None,
        });
    };
    let mut status = p.subscribe();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + p.wait_timeout();
    loop {
        status.borrow_and_update();
        let epoch = p.epoch();
        let delta = match sh.state().get(key) {
            Lookup::Value(v) => return Ok(Some(v)),
            Lookup::Absent => return Ok(None),
            Lookup::Miss => return Ok(load(sh, key).await?.map(|(v, _)| v)),
            Lookup::Delta(d) => d,
        };
        if sh.state().is_in_flight(key) {
            p.wait_settled(&mut status, deadline, started, key).await?;
            continue;
        }
        let base = load(sh, key).await?;
        if p.epoch() != epoch {
            continue;
        }
        return add_to_base(key, base, delta).map(Some);
    }
}

/// The loaded row's counter plus a pending delta.
pub(crate) fn add_to_base(key: &Key, base: Option<(Value, i64)>, delta: i64) -> Result<Value> {
    let sum = match base {
        None => Some(delta),
        Some((Value::Int(b), _)) => b.checked_add(delta),
        Some((Value::Bytes(_), _)) => {
            return Err(Error::Codec(format!(
                "key {key:?} holds a record in the database but counter adds in the cache"
            )))
        }
    };
    sum.map(Value::Int).ok_or_else(|| {
        Error::Codec(format!(
            "counter {key:?} overflows i64 with its pending delta"
        ))
    })
}

/// Read-through with concurrent misses on one key collapsed into one
/// query. The row goes to the clean cache unless the key was written while
/// it loaded.
pub(crate) async fn load(sh: &Shared, key: &Key) -> Result<Option<(Value, i64)>> {
    let Some(writer) = sh
        .pipeline()
        .filter(|_| sh.cfg().read_through())
        .map(|p| p.writer())
    else {
        return Ok(None);
    };
    // A key the database cannot hold has no row there.
    if writer.check_key(key).is_err() {
        return Ok(None);
    }
    let loads = &sh.loads().0;
    let cell = loads
        .lock()
        .entry(key.clone())
        .or_insert_with(|| Arc::new(OnceCell::new()))
        .clone();
    let result = cell
        .get_or_init(|| async {
            let ticket = sh.state().load_ticket(key);
            sh.counters().add(Count::Loads, 1);
            match writer.load(std::slice::from_ref(key)).await {
                Ok(mut rows) => {
                    let row = rows.pop().and_then(|(_, row)| row);
                    sh.state().insert_loaded(ticket, row.clone());
                    Ok(row)
                }
                Err(e) => Err(Arc::new(Error::from(e))),
            }
        })
        .await
        .clone();
    {
        let mut loads = loads.lock();
        if loads.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            loads.remove(key);
        }
    }
    result.map_err(|source| Error::Load {
        key: key.to_string(),
        source,
    })
}

/// Loads these keys into the clean cache, in batches; dirty keys keep
/// their state. Returns how many were loaded.
pub(crate) async fn warm(sh: &Shared, keys: Vec<Key>) -> Result<usize> {
    sh.usable()?;
    let Some(p) = sh.pipeline() else {
        return Err(Error::Config(
            "no database is set: nothing to warm from".into(),
        ));
    };
    let mut loaded = 0;
    for chunk in keys.chunks(1_000) {
        let tickets: Vec<_> = chunk.iter().map(|k| sh.state().load_ticket(k)).collect();
        let rows = p.writer().load(chunk).await?;
        for ((_, row), ticket) in rows.into_iter().zip(tickets) {
            if sh.state().insert_loaded(ticket, row) {
                loaded += 1;
            }
        }
    }
    Ok(loaded)
}

/// Another instance flushed these keys: drop our copies, unless ours
/// already has the version it wrote (a late announcement must not make us
/// forget the version our next put is checked against).
pub(crate) fn invalidate(sh: &Shared, keys: &[(String, Option<i64>)]) {
    let mut dropped = 0;
    for (key, version) in keys {
        let key = Key::from(key.as_str());
        let current = match sh.state().lock(&key).expected(&key) {
            Expected::Version(v) => Some(v),
            _ => None,
        };
        if matches!((current, version), (Some(c), Some(v)) if c >= *v) {
            continue;
        }
        sh.state().invalidate(&key);
        dropped += 1;
    }
    sh.counters().add(Count::Invalidations, dropped);
    tracing::trace!(
        announced = keys.len(),
        dropped,
        "dropped copies of keys another instance flushed"
    );
}
