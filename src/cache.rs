//! The typed public handle: async writes, reads, flush barriers, close.
//! Each method states the contract and hands the work to the file that
//! owns it (write path, read path, pipeline, shutdown).

use std::marker::PhantomData;
use std::sync::Arc;

use writebehind_core::{Change, Key, Lsn};
use writebehind_wal::Durability;

use crate::config::Builder;
use crate::key::{CacheKey, KeyText};
use crate::recovery::RecoveryReport;
use crate::shared::Shared;
use crate::shutdown::Lifetime;
use crate::stats::Stats;
use crate::value::{CacheValue, Delta};
use crate::{read, write, Error, Result};

/// An embedded, persistent write-behind cache.
///
/// Writes land in memory and in the WAL and are acknowledged under the
/// chosen [`Durability`]; a background flusher writes the coalesced state to
/// the database. Clones share one cache. Call [`close`](Self::close) to flush
/// and see every error: dropping the last handle only stops the background
/// work (what was not flushed stays in the WAL for the next open).
///
/// Every wait is bounded: [`flush`](Self::flush), [`flushed`](Self::flushed)
/// and counter reads that wait for a flush return within
/// [`Builder::wait_timeout`] (30 s by default) with an error naming the
/// database's failure; the writes stay in the WAL and reach the database
/// when it can take them.
pub struct WriteBehind<K, V = i64> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) life: Arc<Lifetime>,
    pub(crate) _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for WriteBehind<K, V> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            life: self.life.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: CacheKey, V: CacheValue> WriteBehind<K, V> {
    /// Starts building a cache whose WAL lives in `dir`.
    pub fn builder(dir: impl Into<std::path::PathBuf>) -> Builder<K, V> {
        Builder::new(dir.into())
    }

    /// What recovery found when this cache was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        self.shared.recovery()
    }

    /// Counters and gauges of this cache.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    // ---- writes ----

    /// Sets `key` to `value`. Returns the write's LSN once the WAL has it
    /// under the cache's durability.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> writebehind::Result<()> {
    /// # let dir = tempfile::tempdir().expect("a temporary directory");
    /// # let cache = writebehind::WriteBehind::<String, i64>::builder(dir.path().join("wal"))
    /// #     .database(format!("sqlite://{}", dir.path().join("app.db").display()))
    /// #     .create_tables(true)
    /// #     .open()
    /// #     .await?;
    /// cache.put("stock:sku-1", &12).await?;
    /// assert_eq!(cache.get("stock:sku-1").await?, Some(12));
    /// cache.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put<Q: KeyText + ?Sized>(&self, key: &Q, value: &V) -> Result<Lsn> {
        let change = Change::Put(value.to_value()?);
        write::write_async(&self.shared, &key.key_text(), change, None).await
    }

    /// [`put`](Self::put) with this write's own durability.
    pub async fn put_with<Q: KeyText + ?Sized>(
        &self,
        key: &Q,
        value: &V,
        durability: Durability,
    ) -> Result<Lsn> {
        let change = Change::Put(value.to_value()?);
        write::write_async(&self.shared, &key.key_text(), change, Some(durability)).await
    }

    /// Removes `key`.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> writebehind::Result<()> {
    /// # let dir = tempfile::tempdir().expect("a temporary directory");
    /// # let cache = writebehind::WriteBehind::<String, i64>::builder(dir.path().join("wal"))
    /// #     .database(format!("sqlite://{}", dir.path().join("app.db").display()))
    /// #     .create_tables(true)
    /// #     .open()
    /// #     .await?;
    /// cache.put("session:9", &1).await?;
    /// cache.delete("session:9").await?;
    /// assert_eq!(cache.get("session:9").await?, None);
    /// cache.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete<Q: KeyText + ?Sized>(&self, key: &Q) -> Result<Lsn> {
        write::write_async(&self.shared, &key.key_text(), Change::Delete, None).await
    }

    /// [`delete`](Self::delete) with this write's own durability.
    pub async fn delete_with<Q: KeyText + ?Sized>(
        &self,
        key: &Q,
        durability: Durability,
    ) -> Result<Lsn> {
        write::write_async(
            &self.shared,
            &key.key_text(),
            Change::Delete,
            Some(durability),
        )
        .await
    }

    /// Atomically replaces the value of `key` with `f(old)`: `Some` puts,
    /// `None` deletes. `f` runs under the key's shard lock: keep it short.
    pub async fn update<Q, F>(&self, key: &Q, f: F) -> Result<Option<V>>
    where
        Q: KeyText + ?Sized,
        F: FnOnce(Option<V>) -> Option<V>,
    {
        write::update(&self.shared, &key.key_text(), f).await
    }

    // ---- reads ----

    /// The latest acknowledged value of `key`, loading it from the database
    /// on a miss (read-through) when a database is set.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> writebehind::Result<()> {
    /// # let dir = tempfile::tempdir().expect("a temporary directory");
    /// # let cache = writebehind::WriteBehind::<String, i64>::builder(dir.path().join("wal"))
    /// #     .database(format!("sqlite://{}", dir.path().join("app.db").display()))
    /// #     .create_tables(true)
    /// #     .open()
    /// #     .await?;
    /// assert_eq!(cache.get("never-written").await?, None);
    /// cache.add("page:home", 5).await?;
    /// assert_eq!(cache.get("page:home").await?, Some(5)); // this cache's own writes at once
    /// cache.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get<Q: KeyText + ?Sized>(&self, key: &Q) -> Result<Option<V>> {
        let value = read::get(&self.shared, &key.key_text()).await?;
        value.as_ref().map(V::from_value).transpose()
    }

    /// Loads these keys from the database into the clean cache, in batches.
    /// Keys that are dirty keep their cached state.
    pub async fn warm<Q: KeyText>(&self, keys: &[Q]) -> Result<usize> {
        let keys = keys
            .iter()
            .map(|k| Key::from(k.key_text().as_ref()))
            .collect();
        read::warm(&self.shared, keys).await
    }

    /// Drops the clean copy of `key` and cancels loads of it in progress,
    /// so the next [`get`](Self::get) reads the database: for rows changed
    /// behind the cache's back (write-around, a migration, an admin fix).
    /// A dirty entry (a write not yet flushed) keeps its write: it is this
    /// cache's own, and it will be flushed with its version check; only the
    /// row it was read over is forgotten, so a counter's pending delta is
    /// then read as the database's row plus that delta.
    /// With [`Builder::broadcast_invalidations`](crate::Builder::broadcast_invalidations)
    /// the other instances drop their copies too; an error then means the
    /// local copy is gone but the announcement failed. Returns whether a
    /// clean copy was dropped here.
    pub async fn invalidate<Q: KeyText + ?Sized>(&self, key: &Q) -> Result<bool> {
        let key = Key::from(key.key_text().as_ref());
        let n = read::invalidate_local_and_broadcast(&self.shared, &[key], &[]).await?;
        Ok(n > 0)
    }

    /// [`invalidate`](Self::invalidate) for every key whose text starts with
    /// `prefix` (`""`: every clean copy). Loads of other keys in progress
    /// are not cached either (their callers still get their rows). Returns
    /// how many clean copies were dropped here.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<usize> {
        read::invalidate_local_and_broadcast(&self.shared, &[], &[prefix]).await
    }

    // ---- flushing ----

    /// Writes a checkpoint of the dirty state now and truncates the WAL
    /// below it (compaction also runs on its own as the WAL grows).
    pub fn checkpoint(&self) -> Result<()> {
        self.shared.usable()?;
        self.shared.compactor().checkpoint()
    }

    /// Waits until every write acknowledged before this call is in the
    /// database, within the wait bound. Without a database, waits until
    /// the WAL is on disk.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> writebehind::Result<()> {
    /// # let dir = tempfile::tempdir().expect("a temporary directory");
    /// # let cache = writebehind::WriteBehind::<String, i64>::builder(dir.path().join("wal"))
    /// #     .database(format!("sqlite://{}", dir.path().join("app.db").display()))
    /// #     .create_tables(true)
    /// #     .open()
    /// #     .await?;
    /// cache.add("page:home", 1).await?;
    /// cache.flush().await?; // the add is in the database now
    /// assert_eq!(cache.stats().dirty_entries, 0);
    /// cache.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flush(&self) -> Result<()> {
        self.shared.usable()?;
        let target = self.shared.wal().last_lsn();
        match self.shared.pipeline() {
            None => self.shared.sync_wal("flush").map(drop),
            Some(p) => p.wait_flushed(target).await,
        }
    }

    /// Waits until the write at `lsn` (returned by a write) is in the
    /// database, within the wait bound: write-through for the writes that
    /// need it.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> writebehind::Result<()> {
    /// # let dir = tempfile::tempdir().expect("a temporary directory");
    /// # let cache = writebehind::WriteBehind::<String, i64>::builder(dir.path().join("wal"))
    /// #     .database(format!("sqlite://{}", dir.path().join("app.db").display()))
    /// #     .create_tables(true)
    /// #     .open()
    /// #     .await?;
    /// let lsn = cache.add("quota:alice", -1).await?;
    /// cache.flushed(lsn).await?; // write-through for this one write
    /// assert!(cache.stats().flushed_lsn >= lsn);
    /// cache.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flushed(&self, lsn: Lsn) -> Result<()> {
        self.shared.usable()?;
        match self.shared.pipeline() {
            None => Err(Error::Config(
                "no database is set: nothing is flushed".into(),
            )),
            Some(p) => p.wait_flushed(lsn).await,
        }
    }

    // ---- shutdown ----

    /// Stops the background work (awaiting each task), flushes what it can
    /// within the close timeout, writes a checkpoint, syncs the WAL, and
    /// returns every error met. What could not be flushed stays safe in the
    /// WAL for the next open.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> writebehind::Result<()> {
    /// # let dir = tempfile::tempdir().expect("a temporary directory");
    /// # let cache = writebehind::WriteBehind::<String, i64>::builder(dir.path().join("wal"))
    /// #     .database(format!("sqlite://{}", dir.path().join("app.db").display()))
    /// #     .create_tables(true)
    /// #     .open()
    /// #     .await?;
    /// cache.add("page:home", 1).await?;
    /// cache.close().await // flushed, checkpointed, synced; or every error that kept it from that
    /// # }
    /// ```
    pub async fn close(self) -> Result<()> {
        crate::shutdown::close(&self.shared, &self.life).await
    }
}

impl<K: CacheKey, V: Delta> WriteBehind<K, V> {
    /// Adds `delta` to `key`: an `i64` to a counter, or a delta record (a
    /// [`Record`](crate::Record) whose columns are all counters) to each of
    /// its columns. Adds coalesce (their sum is flushed as `c = c + Δ`, per
    /// column, touching no other column) and never conflict. Returns the
    /// write's LSN once the WAL has it under the cache's durability.
    ///
    /// `add` of a record with a column that is not a counter is refused
    /// with [`Error::Config`] before anything is written.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> writebehind::Result<()> {
    /// # let dir = tempfile::tempdir().expect("a temporary directory");
    /// # let cache = writebehind::WriteBehind::<String, i64>::builder(dir.path().join("wal"))
    /// #     .database(format!("sqlite://{}", dir.path().join("app.db").display()))
    /// #     .create_tables(true)
    /// #     .open()
    /// #     .await?;
    /// let lsn = cache.add("page:home", 1).await?; // acknowledged once the WAL has it
    /// cache.add("page:home", 2).await?; // coalesces: one row update at the next flush
    /// assert_eq!(cache.get("page:home").await?, Some(3));
    /// assert!(cache.add("page:home", 1).await? > lsn);
    /// cache.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn add<Q: KeyText + ?Sized>(&self, key: &Q, delta: V) -> Result<Lsn> {
        let change = delta.to_change()?;
        write::write_async(&self.shared, &key.key_text(), change, None).await
    }

    /// [`add`](Self::add) with this write's own durability.
    pub async fn add_with<Q: KeyText + ?Sized>(
        &self,
        key: &Q,
        delta: V,
        durability: Durability,
    ) -> Result<Lsn> {
        let change = delta.to_change()?;
        write::write_async(&self.shared, &key.key_text(), change, Some(durability)).await
    }
}
