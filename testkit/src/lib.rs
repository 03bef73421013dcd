//! Test helpers for writebehind: a FUSE file system that loses, on command,
//! what a power cut would lose.
//!
//! # The model
//!
//! The file system keeps the whole tree in memory, twice over in effect: what
//! processes see (the "page cache") and what the disk holds (the "durable
//! image"). A write changes only the visible bytes and marks its 4 KiB pages
//! dirty; `fsync`/`fdatasync` of a file copies its dirty pages and its size to
//! the durable image. A create, mkdir, unlink, rmdir or rename changes the
//! visible directory entries and is appended to a log of pending directory
//! operations; `fsync` of a directory (opening it and calling `sync_all`) makes
//! every pending operation that touched that directory durable, both sides of a
//! rename at once, as a journal would. A file created, written and fsynced in a
//! directory that was never fsynced is therefore not on the "disk". A **cut**
//! ([`Mounted::cut`]) makes the visible state the durable one: with
//! [`Cut::DropUnsynced`] everything pending is gone; with [`Cut::Torn`] a seeded
//! random subset of each file's dirty pages (each with its latest content, so in
//! no particular order), the file size they reach, and a random prefix of the
//! directory log reached the disk first. Open handles become stale at a cut:
//! every later use of one fails with `EIO`. At mount the durable image is
//! loaded from a backing directory; at unmount (a clean shutdown, so everything
//! is synced first) it is written back there. The kernel caches nothing: every
//! open is `direct_io` and names and attributes have a zero time-to-live.
//!
//! Simplifications, on purpose: a page that was written twice since its last
//! fsync reaches the disk with its latest content or not at all (never an
//! intermediate one); modes are durable at once; no hard or symbolic links;
//! `flock`/`fcntl` locks are the kernel's own (local to this machine).
//!
//! The binary `writebehind-powercut` mounts one in the foreground for scripts,
//! controlled through a Unix socket (`cut`, `tear SEED`, `stats`, `unmount`).
//!
//! Mounting needs root (or `fusermount3` with `user_allow_other`), `/dev/fuse`
//! and `fusermount3` (Debian: `apt-get install fuse3`); [`check_environment`]
//! says which is missing.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

mod fuse;
mod image;
mod model;

pub use model::PAGE;

/// The crate's errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The machine cannot mount a FUSE file system; the message says what to install or do.
    #[error("cannot mount a FUSE file system here: {0}")]
    Environment(String),
    /// Reading or writing the backing directory failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The backing directory holds something the model cannot hold (a symlink, a device).
    #[error("{0}: only regular files and directories are supported")]
    Unsupported(PathBuf),
}

/// The crate's result.
pub type Result<T> = std::result::Result<T, Error>;

/// What a power cut does with what was not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Everything not fsynced is gone.
    DropUnsynced,
    /// A random part of what was not fsynced reached the disk first: a subset of
    /// each file's dirty pages and a prefix of the directory operations, drawn
    /// from `seed`.
    Torn {
        /// The seed of the draw (the same state and seed give the same cut).
        seed: u64,
    },
}

/// Figures of one cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutStats {
    /// Dirty pages that did not reach the disk.
    pub pages_dropped: u64,
    /// Their bytes (a page past the end of its file counts up to the end).
    pub bytes_dropped: u64,
    /// Dirty pages that did (torn cuts only).
    pub pages_kept: u64,
    /// Their bytes.
    pub bytes_kept: u64,
    /// Pending directory operations lost.
    pub dir_ops_dropped: u64,
    /// Pending directory operations that reached the disk (torn cuts only).
    pub dir_ops_kept: u64,
    /// Files and directories no durable name reaches any more.
    pub nodes_vanished: u64,
    /// Open handles the cut made stale.
    pub stale_handles: u64,
}

impl fmt::Display for CutStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pages_dropped={} bytes_dropped={} pages_kept={} bytes_kept={} dir_ops_dropped={} \
             dir_ops_kept={} nodes_vanished={} stale_handles={}",
            self.pages_dropped,
            self.bytes_dropped,
            self.pages_kept,
            self.bytes_kept,
            self.dir_ops_dropped,
            self.dir_ops_kept,
            self.nodes_vanished,
            self.stale_handles
        )
    }
}

/// What a cut did to one file that had unsynced pages (and still has a name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCut {
    /// Its path below the mount point, after the cut.
    pub path: PathBuf,
    /// Dirty pages (index = offset / [`PAGE`]) that reached the disk with their latest content.
    pub kept_pages: Vec<u64>,
    /// Dirty pages that did not: their bytes are the last fsynced ones (zeros past
    /// the old end).
    pub dropped_pages: Vec<u64>,
    /// The file's size after the cut.
    pub len: u64,
}

/// The outcome of a cut.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Totals.
    pub stats: CutStats,
    /// Per file with unsynced pages, in no particular order.
    pub files: Vec<FileCut>,
}

/// Says what is missing to mount a FUSE file system here: root, `/dev/fuse`,
/// `fusermount3`.
pub fn check_environment() -> Result<()> {
    let mut missing = Vec::new();
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
        missing.push("root (mounting with allow_other)".to_owned());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse (load the fuse module; in a container pass --device /dev/fuse --cap-add SYS_ADMIN)".to_owned());
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()));
    if !on_path {
        missing.push("fusermount3 (apt-get install fuse3)".to_owned());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Environment(format!(
            "missing {}",
            missing.join("; ")
        )))
    }
}

/// The power-cut file system (see the crate docs for its model).
pub struct PowerCutFs;

impl PowerCutFs {
    /// Loads `backing` (created when absent) and mounts it at `mountpoint` (an
    /// existing empty directory). Unmounted when the [`Mounted`] is dropped.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Mounted> {
        check_environment()?;
        let model = Arc::new(Mutex::new(image::load(backing)?));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("powercut".into()),
            fuser::MountOption::Subtype("powercut".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        config.acl = fuser::SessionACL::All;
        config.n_threads = Some(2);
        let fs = fuse::PowerCutFs {
            model: model.clone(),
        };
        let session = fuser::spawn_mount(fs, mountpoint, &config).map_err(|source| Error::Io {
            what: "mounting at",
            path: mountpoint.to_owned(),
            source,
        })?;
        Ok(Mounted {
            model,
            notifier: session.notifier(),
            session: Some(session),
            backing: backing.to_owned(),
            mountpoint: mountpoint.to_owned(),
        })
    }
}

/// A mounted power-cut file system.
pub struct Mounted {
    model: Arc<Mutex<model::Model>>,
    session: Option<fuser::BackgroundSession>,
    notifier: fuser::Notifier,
    backing: PathBuf,
    mountpoint: PathBuf,
}

impl fmt::Debug for Mounted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mounted")
            .field("backing", &self.backing)
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

impl Mounted {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Handles (files and directories) open on it now.
    pub fn open_handles(&self) -> usize {
        self.model.lock().open_handles()
    }

    /// Cuts the power: afterwards the mount shows exactly the durable state.
    /// Meant for a moment when no process holds a file open here (kill the
    /// writer first); handles open across the cut fail with `EIO` from then on.
    pub fn cut(&self, how: Cut) -> CutReport {
        let (report, inos) = {
            let mut m = self.model.lock();
            let stale = m.open_handles() as u64;
            let inos = m.inodes();
            let mut report = m.cut(how);
            report.stats.stale_handles = stale;
            m.last_cut = Some(report.clone());
            (report, inos)
        };
        // The kernel was told a zero TTL and direct_io; drop whatever it may hold anyway.
        for ino in inos {
            let _ = self.notifier.inval_inode(fuser::INodeNo(ino), 0, 0);
        }
        report
    }

    /// The report of the last cut, if any.
    pub fn last_cut(&self) -> Option<CutReport> {
        self.model.lock().last_cut.clone()
    }

    /// Makes everything durable, as `sync(1)` would.
    pub fn sync(&self) {
        self.model.lock().sync_all();
    }

    /// Unmounts (a clean shutdown: everything is synced) and writes the durable
    /// image back to the backing directory.
    pub fn unmount(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let unmounted = session.umount_and_join().map_err(|source| Error::Io {
            what: "unmounting",
            path: self.mountpoint.clone(),
            source,
        });
        let mut m = self.model.lock();
        m.sync_all();
        image::save(&m, &self.backing)?;
        unmounted
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("writebehind-testkit: {e}");
        }
    }
}
