//! The blocking twins, for plain threads. Writes and memory reads run on
//! the calling thread; what must wait on the database runs on the runtime
//! of a cache opened with [`Builder::open_blocking`](crate::Builder::open_blocking).

use writebehind_core::{Change, Key, Lsn};
use writebehind_wal::Durability;

use crate::cache::WriteBehind;
use crate::key::{CacheKey, KeyText};
use crate::value::{CacheValue, Delta};
use crate::{read, write, Result};

impl<K: CacheKey, V: CacheValue> WriteBehind<K, V> {
    /// Blocking [`put`](Self::put).
    pub fn put_blocking<Q: KeyText + ?Sized>(&self, key: &Q, value: &V) -> Result<Lsn> {
        let change = Change::Put(value.to_value()?);
        write::write_blocking(&self.shared, &key.key_text(), change, None)
    }

    /// Blocking [`delete`](Self::delete).
    pub fn delete_blocking<Q: KeyText + ?Sized>(&self, key: &Q) -> Result<Lsn> {
        write::write_blocking(&self.shared, &key.key_text(), Change::Delete, None)
    }

    /// Blocking [`get`](Self::get). A read that must load from the database
    /// needs the cache's own runtime (a cache opened with `open_blocking`).
    pub fn get_blocking<Q: KeyText + ?Sized>(&self, key: &Q) -> Result<Option<V>> {
        let text = key.key_text();
        // Only refresh-ahead spawns from here; skip the lock otherwise.
        let runtime = self
            .shared
            .cfg()
            .refresh_ahead()
            .then(|| self.life.runtime_handle("").ok())
            .flatten();
        if let Some(value) = read::get_from_memory(&self.shared, &text, runtime)? {
            return value.as_ref().map(V::from_value).transpose();
        }
        let handle = self.life.runtime_handle(
            "this read needs the database and the cache was opened with open().await: use get().await",
        )?;
        let this = self.clone();
        let text = text.into_owned();
        handle.block_on(async move { this.get(text.as_str()).await })
    }

    /// Blocking [`invalidate`](Self::invalidate). Broadcasting needs the
    /// cache's own runtime (a cache opened with `open_blocking`).
    pub fn invalidate_blocking<Q: KeyText + ?Sized>(&self, key: &Q) -> Result<bool> {
        if !read::broadcasts(&self.shared) {
            let key = Key::from(key.key_text().as_ref());
            return Ok(read::invalidate_local(&self.shared, &[key], &[])? > 0);
        }
        let handle = self.life.runtime_handle(
            "a broadcast invalidation needs a cache opened with open_blocking(); use invalidate().await",
        )?;
        let this = self.clone();
        let text = key.key_text().into_owned();
        handle.block_on(async move { this.invalidate(text.as_str()).await })
    }

    /// Blocking [`invalidate_prefix`](Self::invalidate_prefix).
    pub fn invalidate_prefix_blocking(&self, prefix: &str) -> Result<usize> {
        if !read::broadcasts(&self.shared) {
            return read::invalidate_local(&self.shared, &[], &[prefix]);
        }
        let handle = self.life.runtime_handle(
            "a broadcast invalidation needs a cache opened with open_blocking(); use invalidate_prefix().await",
        )?;
        let this = self.clone();
        let prefix = prefix.to_owned();
        handle.block_on(async move { this.invalidate_prefix(&prefix).await })
    }

    /// Blocking [`flush`](Self::flush).
    pub fn flush_blocking(&self) -> Result<()> {
        if self.shared.pipeline().is_none() {
            self.shared.usable()?;
            return self.shared.sync_wal("flush").map(drop);
        }
        let handle = self.life.runtime_handle(
            "flush_blocking() needs a cache opened with open_blocking(); use flush().await",
        )?;
        let this = self.clone();
        handle.block_on(async move { this.flush().await })
    }

    /// Blocking [`close`](Self::close).
    pub fn close_blocking(self) -> Result<()> {
        let handle = self.life.runtime_handle(
            "close_blocking() needs a cache opened with open_blocking(); use close().await",
        )?;
        handle.block_on(self.close())
    }
}

impl<K: CacheKey, V: Delta> WriteBehind<K, V> {
    /// Blocking [`add`](Self::add).
    pub fn add_blocking<Q: KeyText + ?Sized>(&self, key: &Q, delta: V) -> Result<Lsn> {
        let change = delta.to_change()?;
        write::write_blocking(&self.shared, &key.key_text(), change, None)
    }

    /// Blocking [`add_with`](Self::add_with).
    pub fn add_blocking_with<Q: KeyText + ?Sized>(
        &self,
        key: &Q,
        delta: V,
        durability: Durability,
    ) -> Result<Lsn> {
        let change = delta.to_change()?;
        write::write_blocking(&self.shared, &key.key_text(), change, Some(durability))
    }
}
