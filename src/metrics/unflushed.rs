//! The age of the oldest unflushed write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Tracks the age of the oldest unflushed write with two timestamps (ms
/// since open, plus one; 0 is none): the first write since the last cut,
/// and the first write of the cut in flight.
#[derive(Default)]
pub(crate) struct Unflushed {
    pending: AtomicU64,
    in_cut: AtomicU64,
}

impl Unflushed {
    /// After a write: remembers its time if it is the first since the last cut.
    /// One atomic load on the common path.
    #[inline]
    pub(crate) fn wrote(&self, opened_at: Instant) {
        if self.pending.load(Ordering::Relaxed) == 0 {
            let now = opened_at.elapsed().as_millis() as u64 + 1;
            let _ = self
                .pending
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Something recovered at open is unflushed: its age counts from the open.
    pub(crate) fn recovered(&self) {
        self.pending.store(1, Ordering::Relaxed);
    }

    /// A new cut took every dirty entry (called under every shard lock).
    pub(crate) fn cut_taken(&self) {
        let first = self.pending.swap(0, Ordering::Relaxed);
        self.in_cut.store(first, Ordering::Relaxed);
    }

    /// The cut in flight is in the database.
    pub(crate) fn cut_done(&self) {
        self.in_cut.store(0, Ordering::Relaxed);
    }

    /// The age of the oldest write not yet flushed.
    pub(crate) fn age(&self, opened_at: Instant) -> Duration {
        let oldest = [&self.in_cut, &self.pending]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|&t| t != 0)
            .min();
        match oldest {
            Some(t) => opened_at
                .elapsed()
                .saturating_sub(Duration::from_millis(t - 1)),
            None => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_follows_the_oldest_unflushed_write() {
        let opened_at = Instant::now() - Duration::from_secs(10);
        let u = Unflushed::default();
        assert_eq!(u.age(opened_at), Duration::ZERO);
        u.wrote(opened_at);
        u.cut_taken();
        let after_cut = u.age(opened_at);
        assert!(after_cut < Duration::from_millis(500), "{after_cut:?}");
        u.recovered(); // pending since the cache opened: 10 s old
        assert!(u.age(opened_at) >= Duration::from_secs(10));
        u.cut_done();
        assert!(u.age(opened_at) >= Duration::from_secs(10));
        u.cut_taken();
        u.cut_done();
        assert_eq!(u.age(opened_at), Duration::ZERO);
    }
}
