//! One owner per WAL directory: a `LOCK` file held for the cache's life.
//!
//! A cache dropped without `close` lets go of its directory only once its
//! background work has stopped, which on a tokio runtime happens at the
//! runtime's next turn. So an open that finds the lock held by a cache of
//! this same process that is closing or was dropped waits a little for it
//! instead of failing spuriously; a lock held by a live cache or another
//! process is refused at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use writebehind_wal::{ReadBack, Wal};

use crate::{Error, Result};

/// Directories locked by caches of this process, and whether their owner
/// is letting go (closed or dropped).
static HELD: LazyLock<Mutex<HashMap<PathBuf, Arc<AtomicBool>>>> = LazyLock::new(Default::default);

/// How long an open waits for a cache of this process to let go.
const WAIT_FOR_OWN: Duration = Duration::from_secs(10);

/// The held lock; dropping it releases the directory.
#[derive(Debug)]
pub(crate) struct DirLock {
    key: PathBuf,
    releasing: Arc<AtomicBool>,
    _file: std::fs::File,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        HELD.lock().remove(&self.key);
    }
}

impl DirLock {
    /// The owner is closing or was dropped: an open of the same directory
    /// may wait for it to let go.
    pub(crate) fn releasing(&self) {
        self.releasing.store(true, Ordering::Release);
    }

    /// Takes `dir`'s lock, creating the directory when missing.
    pub(crate) async fn acquire(dir: &Path) -> Result<DirLock> {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::NotADirectory {
                path: dir.to_owned(),
            });
        }
        let path = dir.join("LOCK");
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        writebehind_wal::fs::create_dir_all_private(dir).map_err(io)?;
        let key = dir.canonicalize().map_err(io)?;
        let file = writebehind_wal::fs::open_private_append(&path).map_err(io)?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => {
                    let releasing = Arc::new(AtomicBool::new(false));
                    HELD.lock().insert(key.clone(), releasing.clone());
                    return Ok(DirLock {
                        key,
                        releasing,
                        _file: file,
                    });
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let ours_letting_go = HELD
                        .lock()
                        .get(&key)
                        .is_some_and(|r| r.load(Ordering::Acquire));
                    if !ours_letting_go || started.elapsed() >= WAIT_FOR_OWN {
                        return Err(Error::Locked {
                            dir: dir.to_owned(),
                        });
                    }
                    // Our own process's previous cache is still stopping.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
        }
    }
}

/// The WAL with its directory's lock. Whoever still holds the log (the
/// flusher, the replica's task while it reads it back) holds the
/// directory; the log goes first (its committer writes what was queued),
/// then the lock.
pub(crate) struct LockedWal {
    wal: Wal,
    lock: Option<DirLock>,
}

impl LockedWal {
    /// `lock` is `None` on a test file system, which is private anyway.
    pub(crate) fn new(wal: Wal, lock: Option<DirLock>) -> LockedWal {
        LockedWal { wal, lock }
    }

    /// The owner is closing or was dropped (see [`DirLock::releasing`]).
    pub(crate) fn releasing(&self) {
        if let Some(lock) = &self.lock {
            lock.releasing();
        }
    }
}

impl std::ops::Deref for LockedWal {
    type Target = Wal;

    fn deref(&self) -> &Wal {
        &self.wal
    }
}

impl ReadBack for LockedWal {
    fn wal(&self) -> &Wal {
        &self.wal
    }
}
