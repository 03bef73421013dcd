//! Invalidation: clean copies go; a dirty entry keeps its write, which is ours and will be
//! flushed, and forgets the row it was read over.

use writebehind_core::{Expected, Key};

use crate::shared::Shared;
use crate::stats::Count;
use crate::Result;

/// Drops the clean copy of `key` and cancels loads of it in progress; a
/// dirty entry keeps its write and forgets its base (a counter is then read
/// as the row plus its delta). Returns whether a clean copy was dropped.
pub(crate) fn drop_key(sh: &Shared, key: &Key) -> bool {
    // Loads first: a read between the two steps then finds either the old
    // copy (the call has not returned) or starts a load of its own.
    sh.loads().forget(key);
    sh.state().drop_clean(key)
}

/// [`drop_key`] for every key starting with `prefix`. Returns how many
/// clean copies were dropped.
pub(crate) fn drop_prefix(sh: &Shared, prefix: &str) -> usize {
    sh.loads().forget_prefix(prefix);
    sh.state().drop_clean_prefix(prefix)
}

/// Whether an invalidation is also announced to the other instances.
pub(crate) fn broadcasts(sh: &Shared) -> bool {
    sh.cfg().broadcast_invalidations() && sh.pipeline().is_some()
}

/// Drops local copies of `keys` and of every key under `prefixes`, then
/// (when set) announces it to the other instances. Returns how many clean
/// copies were dropped here. The local drop stands even when the
/// announcement fails (the error says so).
pub(crate) async fn invalidate_local_and_broadcast(
    sh: &Shared,
    keys: &[Key],
    prefixes: &[&str],
) -> Result<usize> {
    let dropped = invalidate_local(sh, keys, prefixes)?;
    if let Some(p) = sh.pipeline().filter(|_| broadcasts(sh)) {
        let sent = p.writer().notify_invalidated(keys, prefixes).await?;
        sh.counters()
            .add(Count::InvalidationBroadcasts, sent as u64);
    }
    Ok(dropped)
}

/// The local half of an invalidation.
pub(crate) fn invalidate_local(sh: &Shared, keys: &[Key], prefixes: &[&str]) -> Result<usize> {
    sh.usable()?;
    let mut dropped = 0;
    for key in keys {
        dropped += usize::from(drop_key(sh, key));
    }
    for prefix in prefixes {
        dropped += drop_prefix(sh, prefix);
    }
    Ok(dropped)
}

/// Another instance invalidated these keys and prefixes: drop our clean
/// copies (never a dirty entry: ours will be flushed and checked).
pub(crate) fn invalidated_elsewhere(sh: &Shared, keys: &[String], prefixes: &[String]) {
    let mut dropped = 0;
    for key in keys {
        dropped += u64::from(drop_key(sh, &Key::from(key.as_str())));
    }
    for prefix in prefixes {
        dropped += drop_prefix(sh, prefix) as u64;
    }
    sh.counters().add(Count::Invalidations, dropped);
    tracing::trace!(
        keys = keys.len(),
        prefixes = prefixes.len(),
        dropped,
        "dropped clean copies another instance invalidated"
    );
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
