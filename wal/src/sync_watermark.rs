//! The sync watermark: how far the active (last) segment is known to be fsynced.
//!
//! Only the last segment can have an unsynced end (rotation fsyncs the old one first). Its
//! unsynced bytes may reach the disk in any order and subset after a power cut: a group written
//! over preallocated zeros can leave a zero hole followed by intact frames, or a half-written
//! frame followed by intact ones. Recovery tells that torn region from damage to synced data
//! (a loud error) by this watermark: in the last segment, the first damaged byte at or past
//! it ends the log (a torn tail, even with intact frames after it); damage before it is
//! corruption.
//!
//! File `sync.watermark` in the log directory, 40 bytes, little-endian: magic `WBWALSYN` |
//! version u32 (1) | reserved u32 (0) | first LSN of the segment it describes u64 | synced
//! offset u64 | CRC32C of bytes 0..32 u32 | reserved u32 (0). Rewritten in place
//! ([`crate::io::IoFile::write_at`]) after every successful fsync of the active segment,
//! without an fsync of its own; it is fsynced at open, at a clean close, and by the syncer
//! thread at most about once a second while it changes. A stale value is lower than the truth,
//! which only widens the region read as a possible torn tail: records that were fsynced are
//! intact and contiguous before any hole, so they are kept either way.
//!
//! Which value applies to the last segment: the offset when the file names that segment; the
//! segment header's end when it names an older one (the watermark of the new segment was not
//! written back yet: everything in it may be torn); none when the file is missing, invalid or
//! names a newer segment — then today's rule holds (damage with an intact frame after it is
//! corruption, damage running to the end is a torn tail), as for logs written before the
//! watermark existed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::{Io, IoFile};
use crate::{Error, Lsn, Result};

/// File name of the watermark in the log directory.
pub const FILE_NAME: &str = "sync.watermark";
/// Magic number at the start of the watermark file.
pub const WATERMARK_MAGIC: [u8; 8] = *b"WBWALSYN";
const VERSION: u32 = 1;
const LEN: usize = 40;

/// Encodes the watermark for segment `first`, synced up to byte `offset`.
pub(crate) fn encode(first: Lsn, offset: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0..8].copy_from_slice(&WATERMARK_MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&first.to_le_bytes());
    b[24..32].copy_from_slice(&offset.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

/// `(segment first LSN, synced offset)`, or which check failed. Never panics.
pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<(Lsn, u64), &'static str> {
    let Some(b) = bytes.get(..LEN).filter(|_| bytes.len() == LEN) else {
        return Err("watermark file has the wrong length");
    };
    if b[0..8] != WATERMARK_MAGIC {
        return Err("bad watermark magic");
    }
    let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let u64_at = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    };
    if u32_at(32) != crc32c::crc32c(&b[0..32]) {
        return Err("watermark checksum mismatch");
    }
    if u32_at(8) != VERSION || u32_at(12) != 0 || u32_at(36) != 0 {
        return Err("unsupported watermark version");
    }
    Ok((u64_at(16), u64_at(24)))
}

/// Reads the watermark of `dir`, if there is a valid one (an invalid one is logged).
pub(crate) fn read(io: &dyn Io, dir: &Path, names: &[String]) -> Result<Option<(Lsn, u64)>> {
    if !names.iter().any(|n| n == FILE_NAME) {
        return Ok(None);
    }
    let path = dir.join(FILE_NAME);
    let bytes = io.read(&path).map_err(|e| Error::io("read", &path, e))?;
    match decode(&bytes) {
        Ok(w) => Ok(Some(w)),
        Err(reason) => {
            tracing::warn!(path = %path.display(), reason,
                "invalid WAL sync watermark ignored; the last segment is read by the old rule");
            Ok(None)
        }
    }
}

/// The open watermark file.
#[derive(Debug, Clone)]
pub(crate) struct WatermarkFile {
    pub(crate) file: Arc<dyn IoFile>,
    pub(crate) path: PathBuf,
}

/// Writes the watermark `(first, offset)` at open, durably (file and directory). `Ok(None)`
/// when the file system cannot rewrite a file in place: the log then keeps no watermark.
pub(crate) fn create(
    io: &dyn Io,
    dir: &Path,
    first: Lsn,
    offset: u64,
) -> Result<Option<WatermarkFile>> {
    let path = dir.join(FILE_NAME);
    let file = io
        .create(&path)
        .map_err(|e| Error::io("create", &path, e))?;
    match file.write_at(&encode(first, offset), 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            drop(file);
            io.remove(&path)
                .map_err(|e| Error::io("remove", &path, e))?;
            io.sync_dir(dir)
                .map_err(|e| Error::io("fsync dir", dir, e))?;
            return Ok(None);
        }
        Err(e) => return Err(Error::io("write", &path, e)),
    }
    file.sync_data().map_err(|e| Error::io("fsync", &path, e))?;
    io.sync_dir(dir)
        .map_err(|e| Error::io("fsync dir", dir, e))?;
    Ok(Some(WatermarkFile { file, path }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roundtrip_and_every_bit_flip_is_rejected() {
        let b = encode(7, 4096);
        assert_eq!(decode(&b), Ok((7, 4096)));
        for bit in 0..LEN * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&c).is_err(), "flip of bit {bit} accepted");
        }
        assert!(decode(&b[..39]).is_err());
        assert!(decode(&[0u8; 40]).is_err());
    }
}
