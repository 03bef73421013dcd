//! The simulated disk behind [`super::FaultyIo`]: file contents as written and as durable,
//! directory entries as named and as durable, the pending faults, and what a crash keeps.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use super::{CrashMode, PAGE};

pub(super) const EIO: i32 = 5;
pub(super) const ENOSPC: i32 = 28;

#[derive(Debug, Default)]
pub(super) struct Inode {
    pub(super) data: Vec<u8>,
    pub(super) durable: Vec<u8>,
    /// The byte range changed since the last fsync (`None`: nothing to write back). A failed
    /// fsync clears it too: like Linux, the dirty pages are dropped and the next fsync
    /// reports success without writing them.
    pub(super) dirty_from: Option<(usize, usize)>,
}

impl Inode {
    pub(super) fn dirty(&mut self, from: usize, to: usize) {
        self.dirty_from = Some(
            self.dirty_from
                .map_or((from, to), |(f, t)| (f.min(from), t.max(to))),
        );
    }

    /// Writes `buf` at `at` (zeros fill any gap past the end).
    pub(super) fn put(&mut self, at: usize, buf: &[u8]) {
        let end = at + buf.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[at..end].copy_from_slice(buf);
        self.dirty(at, end);
    }
}

#[derive(Debug, Default)]
pub(super) struct Fs {
    pub(super) names: BTreeMap<PathBuf, u64>,
    pub(super) durable_names: BTreeMap<PathBuf, u64>,
    pub(super) inodes: HashMap<u64, Inode>,
    pub(super) next_ino: u64,
    pub(super) generation: u64,
    pub(super) fail_sync_in: Option<u64>,
    pub(super) short_writes: bool,
    pub(super) space_left: Option<u64>,
    pub(super) syncs: u64,
    pub(super) failed_syncs: u64,
    pub(super) sync_latency: Option<std::time::Duration>,
    pub(super) rng: u64,
    /// Files do not support [`IoFile::zero_extend`] (segments are not preallocated).
    pub(super) no_zero_extend: bool,
}

impl Fs {
    fn rand(&mut self) -> u64 {
        // xorshift64*: deterministic per seed, good enough for picking crash points.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn rand_upto(&mut self, max: usize) -> usize {
        if max == 0 {
            0
        } else {
            (self.rand() % (max as u64 + 1)) as usize
        }
    }

    /// Consumes one fsync slot; `Err` if this one is scheduled to fail.
    pub(super) fn take_sync(&mut self) -> io::Result<()> {
        self.syncs += 1;
        match self.fail_sync_in {
            Some(0) => {
                self.fail_sync_in = None;
                self.failed_syncs += 1;
                Err(io::Error::from_raw_os_error(EIO))
            }
            Some(n) => {
                self.fail_sync_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// What the disk holds after a crash: `durable` plus whatever part of the unsynced bytes
    /// of `data` (those that differ from `durable`, from the first difference on) `mode` keeps.
    fn after_crash(&mut self, data: Vec<u8>, durable: Vec<u8>, mode: CrashMode) -> Vec<u8> {
        let from = data
            .iter()
            .zip(&durable)
            .position(|(a, b)| a != b)
            .unwrap_or(data.len().min(durable.len()));
        if from >= data.len() {
            // Nothing new (a truncation that was not synced is lost too).
            return durable;
        }
        let mut out = durable;
        let tail = &data[from..];
        let overlay = |out: &mut Vec<u8>, at: usize, bytes: &[u8]| {
            if out.len() < at + bytes.len() {
                out.resize(at + bytes.len(), 0);
            }
            out[at..at + bytes.len()].copy_from_slice(bytes);
        };
        match mode {
            CrashMode::LoseUnsynced => {}
            CrashMode::KeepPrefix | CrashMode::GarbleTail | CrashMode::ZeroFillTail => {
                let keep = self.rand_upto(tail.len());
                overlay(&mut out, from, &tail[..keep]);
                if mode == CrashMode::GarbleTail && keep > 0 {
                    let n = (1 + self.rand_upto(15)).min(keep);
                    for b in &mut out[from + keep - n..from + keep] {
                        *b = self.rand() as u8;
                    }
                }
                if mode == CrashMode::ZeroFillTail && out.len() < data.len() {
                    out.resize(data.len(), 0);
                }
            }
            CrashMode::TornPages => {
                let mut at = from;
                while at < data.len() {
                    let end = ((at / PAGE + 1) * PAGE).min(data.len());
                    if self.rand() & 1 == 1 {
                        overlay(&mut out, at, &data[at..end]);
                    }
                    at = end;
                }
                if self.rand() & 1 == 1 && out.len() < data.len() {
                    out.resize(data.len(), 0);
                }
            }
        }
        out
    }

    pub(super) fn ino(&self, path: &Path) -> io::Result<u64> {
        self.names
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display())))
    }

    pub(super) fn new_inode(&mut self) -> u64 {
        self.next_ino += 1;
        self.inodes.insert(self.next_ino, Inode::default());
        self.next_ino
    }

    /// A power loss (see [`super::FaultyIo::crash`]).
    pub(super) fn crash(&mut self, mode: CrashMode) {
        self.generation += 1;
        self.names = self.durable_names.clone();
        let live: Vec<u64> = self.names.values().copied().collect();
        self.inodes.retain(|ino, _| live.contains(ino));
        let mut inos: Vec<u64> = self.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(inode) = self.inodes.remove(&ino) else {
                continue;
            };
            let durable = self.after_crash(inode.data, inode.durable, mode);
            self.inodes.insert(
                ino,
                Inode {
                    data: durable.clone(),
                    durable,
                    dirty_from: None,
                },
            );
        }
    }
}
