//! A finished flush, announced to the parts that act on it.
//!
//! The flush pipeline does not know who cares about a committed flush: the
//! parts subscribe when the cache is put together at open (the room
//! backpressured writes wait for, the compactor, the replica, the metrics)
//! and the pipeline announces each flush once, in commit order.

use std::time::Duration;

use parking_lot::RwLock;
use writebehind_core::Lsn;

/// One flush the database committed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Flushed {
    /// Everything up to this position is in the database.
    pub(crate) position: Lsn,
    /// Entries the flush wrote.
    pub(crate) items: usize,
    /// How long it took, attempts included.
    pub(crate) elapsed: Duration,
}

type Observer = Box<dyn Fn(&Flushed) + Send + Sync>;

/// The parts told of each finished flush.
#[derive(Default)]
pub(crate) struct FlushEvents {
    observers: RwLock<Vec<Observer>>,
}

impl FlushEvents {
    /// `observer` is told of every flush from now on; it must not block.
    pub(crate) fn subscribe(&self, observer: impl Fn(&Flushed) + Send + Sync + 'static) {
        self.observers.write().push(Box::new(observer));
    }

    /// Tells every observer, in the order they subscribed.
    pub(crate) fn announce(&self, flushed: &Flushed) {
        for observer in self.observers.read().iter() {
            observer(flushed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn every_observer_hears_every_flush_in_order() {
        let events = FlushEvents::default();
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let total = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        events.subscribe(move |f| s.lock().push(f.position));
        let t = total.clone();
        events.subscribe(move |f| {
            t.fetch_add(f.items as u64, Ordering::Relaxed);
        });
        for position in [3, 7] {
            events.announce(&Flushed {
                position,
                items: 2,
                elapsed: Duration::ZERO,
            });
        }
        assert_eq!(*seen.lock(), vec![3, 7]);
        assert_eq!(total.load(Ordering::Relaxed), 4);
    }
}
