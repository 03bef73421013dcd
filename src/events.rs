//! Finished work, announced to the parts that act on it.
//!
//! The flush pipeline does not know who cares about a committed flush, nor
//! the compactor who cares about a checkpoint: the parts subscribe when the
//! cache is put together at open (the room backpressured writes wait for,
//! the compactor, the replica, the metrics) and each event is announced
//! once, in order.

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

/// A checkpoint was written (and the WAL below it truncated).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checkpointed;

type Observer<E> = Box<dyn Fn(&E) + Send + Sync>;

/// The parts told of each event of one kind.
pub(crate) struct Events<E> {
    observers: RwLock<Vec<Observer<E>>>,
}

/// The parts told of each finished flush.
pub(crate) type FlushEvents = Events<Flushed>;

impl<E> Default for Events<E> {
    fn default() -> Self {
        Events {
            observers: RwLock::new(Vec::new()),
        }
    }
}

impl<E> Events<E> {
    /// `observer` is told of every event from now on; it must not block.
    pub(crate) fn subscribe(&self, observer: impl Fn(&E) + Send + Sync + 'static) {
        self.observers.write().push(Box::new(observer));
    }

    /// Tells every observer, in the order they subscribed.
    pub(crate) fn announce(&self, event: &E) {
        for observer in self.observers.read().iter() {
            observer(event);
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
