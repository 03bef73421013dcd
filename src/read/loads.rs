//! The loads in progress, one per key, that concurrent misses join, and
//! the pause of refreshes after failures. Held by every handle; the read
//! path (`load`) decides when a load starts, joins or ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::OnceCell;
use writebehind_core::{Key, LoadTicket, Value};

use crate::Error;

/// Result of one read-through load, shared by every caller waiting on it.
pub(super) type LoadResult = std::result::Result<Option<(Value, i64)>, Arc<Error>>;

/// One load, shared by every caller of its key.
pub(super) type Cell = Arc<OnceCell<LoadResult>>;

/// A load in progress and the moment it belongs to: its ticket (the key's
/// shard generation, which a cut that cleans the key or an invalidation
/// moves) and the cut generation (which taking or settling a cut moves). Only a
/// reader that finds both unchanged joins it: the row it brings may predate
/// a flush that committed since, and a reader arriving after that flush
/// must not see the row without the flushed change (a counter's delta
/// missed, or written back by `update` as a stale put).
struct Slot {
    cell: Cell,
    ticket: LoadTicket,
    cut_gen: u64,
}

/// First pause of refreshes after a failed one; it doubles per failure.
const REFRESH_PAUSE: Duration = Duration::from_millis(50);
/// Longest pause of refreshes.
const REFRESH_PAUSE_MAX: Duration = Duration::from_secs(5);

/// Loads in progress, one per key, and the pause of refreshes after
/// failures (a database that is down is not asked once per read).
#[derive(Default)]
pub(crate) struct Loads {
    map: Mutex<HashMap<Key, Slot>>,
    pause: Mutex<Pause>,
    /// Test seam: the next load of a key stops after its query returned.
    #[cfg(test)]
    hold: Mutex<Option<tests::Hold>>,
}

/// Refreshes start again at `until`; `failures` in a row so far.
#[derive(Default)]
struct Pause {
    until: Option<Instant>,
    failures: u32,
}

/// A new load of `key` in `map`, replacing any older one.
fn begin(map: &mut HashMap<Key, Slot>, key: &Key, ticket: &LoadTicket, cut_gen: u64) -> Cell {
    let cell = Cell::default();
    map.insert(
        key.clone(),
        Slot {
            cell: cell.clone(),
            ticket: ticket.clone(),
            cut_gen,
        },
    );
    cell
}

impl Loads {
    /// The load of `key` in progress, if it began at the same moment
    /// (`ticket`, `cut_gen`: see [`Slot`]) as now, or a new one (which
    /// replaces an older one in the map: its callers still get their row,
    /// later readers do not). Returns the load and its ticket, for
    /// [`insert_loaded`](writebehind_core::State::insert_loaded).
    pub(super) fn join(&self, key: &Key, ticket: LoadTicket, cut_gen: u64) -> (Cell, LoadTicket) {
        let mut map = self.map.lock();
        match map.get(key) {
            Some(slot) if slot.cut_gen == cut_gen && slot.ticket.same_generation(&ticket) => {
                (slot.cell.clone(), slot.ticket.clone())
            }
            _ => (begin(&mut map, key, &ticket, cut_gen), ticket),
        }
    }

    /// A new load of `key`, unless one that readers would join (begun at
    /// the same moment as now) is in progress.
    pub(super) fn start(
        &self,
        key: &Key,
        ticket: LoadTicket,
        cut_gen: u64,
    ) -> Option<(Cell, LoadTicket)> {
        let mut map = self.map.lock();
        if map
            .get(key)
            .is_some_and(|slot| slot.cut_gen == cut_gen && slot.ticket.same_generation(&ticket))
        {
            return None;
        }
        Some((begin(&mut map, key, &ticket, cut_gen), ticket))
    }

    /// The load behind `cell` is over: later reads start their own.
    pub(super) fn finish(&self, key: &Key, cell: &Cell) {
        let mut loads = self.map.lock();
        if loads.get(key).is_some_and(|s| Arc::ptr_eq(&s.cell, cell)) {
            loads.remove(key);
        }
    }

    /// Later reads of `key` start a load of their own rather than join one
    /// that began before an invalidation (whose callers still get its row).
    pub(super) fn forget(&self, key: &Key) {
        self.map.lock().remove(key);
    }

    /// [`forget`](Self::forget) for every key starting with `prefix`.
    pub(super) fn forget_prefix(&self, prefix: &str) {
        self.map.lock().retain(|key, _| !key.starts_with(prefix));
    }

    /// Whether refreshes are paused after failures.
    pub(super) fn refreshes_paused(&self) -> bool {
        self.pause.lock().until.is_some_and(|t| Instant::now() < t)
    }

    /// A refresh ended: a failure pauses refreshes (50 ms, doubling to
    /// 5 s), a success ends the pause.
    pub(super) fn refresh_ended(&self, ok: bool) {
        let mut p = self.pause.lock();
        if ok {
            *p = Pause::default();
            return;
        }
        let wait = REFRESH_PAUSE
            .saturating_mul(1 << p.failures.min(16))
            .min(REFRESH_PAUSE_MAX);
        p.failures = p.failures.saturating_add(1);
        p.until = Instant::now().checked_add(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// A load to stop after its query returned; see [`Loads::hold`].
    pub(super) struct Hold {
        key: Key,
        reached: oneshot::Sender<()>,
        resume: oneshot::Receiver<()>,
    }

    impl Loads {
        /// The next load of `key` stops after its query returned (its row
        /// is the database's as of then), says so on the first channel,
        /// and goes on when the second is sent to (or dropped).
        pub(crate) fn hold(&self, key: &str) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
            let (reached, reached_rx) = oneshot::channel();
            let (resume_tx, resume) = oneshot::channel();
            *self.hold.lock() = Some(Hold {
                key: Key::from(key),
                reached,
                resume,
            });
            (reached_rx, resume_tx)
        }

        /// Where a load stops when it is held.
        pub(crate) async fn held(&self, key: &Key) {
            let hold = {
                let mut hold = self.hold.lock();
                match hold.as_ref() {
                    Some(h) if h.key == *key => hold.take(),
                    _ => None,
                }
            };
            if let Some(h) = hold {
                let _ = h.reached.send(());
                let _ = h.resume.await;
            }
        }
    }

    #[test]
    fn failed_refreshes_pause_refreshes_doubling_and_a_success_ends_the_pause() {
        let loads = Loads::default();
        assert!(!loads.refreshes_paused());
        let pause = |loads: &Loads| {
            let until = loads.pause.lock().until.unwrap_or_else(Instant::now);
            until.saturating_duration_since(Instant::now())
        };
        loads.refresh_ended(false);
        assert!(loads.refreshes_paused());
        let first = pause(&loads);
        assert!(
            first <= REFRESH_PAUSE && first > REFRESH_PAUSE / 2,
            "{first:?}"
        );
        loads.refresh_ended(false);
        let second = pause(&loads);
        assert!(
            second > REFRESH_PAUSE && second <= REFRESH_PAUSE * 2,
            "{second:?}"
        );
        for _ in 0..40 {
            loads.refresh_ended(false);
        }
        let capped = pause(&loads);
        assert!(
            capped <= REFRESH_PAUSE_MAX && capped > REFRESH_PAUSE_MAX / 2,
            "{capped:?}"
        );
        loads.refresh_ended(true);
        assert!(!loads.refreshes_paused());
        assert_eq!(loads.pause.lock().failures, 0);
    }
}
