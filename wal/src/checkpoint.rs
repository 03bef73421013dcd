//! Checkpoint files: an opaque snapshot of the owner's state as of an LSN.
//!
//! Layout (little-endian): magic `WBWALCKP` (8) | version u32 | reserved u32 (0) | LSN u64 |
//! data length u64 | CRC32C u32 | reserved u32 (0) | data. The CRC covers bytes 8..32 (version,
//! reserved, LSN, length) followed by the data. Named `<lsn:020>.ckpt`; written as
//! `<name>.tmp`, fsynced, renamed, then the directory is fsynced.

use crate::{Error, Lsn, Result};

/// Magic number at the start of every checkpoint file.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"WBWALCKP";
/// Checkpoint format version written by this crate.
pub const CHECKPOINT_VERSION: u32 = 1;
/// Length of the checkpoint header.
pub const CHECKPOINT_HEADER_LEN: usize = 40;

/// A checkpoint loaded from disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The LSN the snapshot is as of: records up to and including it are covered by `data`.
    pub lsn: Lsn,
    /// The owner's opaque snapshot.
    pub data: Vec<u8>,
}

pub(crate) const SUFFIX: &str = ".ckpt";
pub(crate) const TMP_SUFFIX: &str = ".ckpt.tmp";

pub(crate) fn file_name(lsn: Lsn) -> String {
    format!("{lsn:020}{SUFFIX}")
}

pub(crate) fn parse_file_name(name: &str) -> Option<Lsn> {
    crate::parse_lsn_name(name, SUFFIX)
}

/// The bytes of a checkpoint file for `lsn` holding `data` (header, checksum, data).
pub fn encode(lsn: Lsn, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECKPOINT_HEADER_LEN + data.len());
    out.extend_from_slice(&CHECKPOINT_MAGIC);
    out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[8..32]), data);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Decodes a checkpoint file's bytes, or says which check failed. Never panics.
pub fn decode(bytes: &[u8]) -> std::result::Result<Checkpoint, &'static str> {
    let Some(h) = bytes.get(..CHECKPOINT_HEADER_LEN) else {
        return Err("checkpoint shorter than its header");
    };
    if h[0..8] != CHECKPOINT_MAGIC {
        return Err("bad checkpoint magic");
    }
    let u64_at = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&h[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let u32_at = |at: usize| {
        let mut a = [0u8; 4];
        a.copy_from_slice(&h[at..at + 4]);
        u32::from_le_bytes(a)
    };
    let data = &bytes[CHECKPOINT_HEADER_LEN..];
    if u64_at(24) != data.len() as u64 {
        return Err("checkpoint length does not match the file size");
    }
    if u32_at(32) != crc32c::crc32c_append(crc32c::crc32c(&h[8..32]), data) {
        return Err("checkpoint checksum mismatch");
    }
    if u32_at(8) != CHECKPOINT_VERSION || u32_at(12) != 0 || u32_at(36) != 0 {
        return Err("unsupported checkpoint version");
    }
    Ok(Checkpoint {
        lsn: u64_at(16),
        data: data.to_vec(),
    })
}

/// [`decode`] with the file's path in the error: the entry point the fuzz target uses.
pub fn decode_file(path: &std::path::Path, bytes: &[u8]) -> Result<Checkpoint> {
    decode(bytes).map_err(|reason| Error::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roundtrip_and_golden_header() {
        let b = encode(9, b"state");
        assert_eq!(
            &b[0..32],
            &[
                b'W', b'B', b'W', b'A', b'L', b'C', b'K', b'P', 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0,
                0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(
            decode(&b).unwrap(),
            Checkpoint {
                lsn: 9,
                data: b"state".to_vec()
            }
        );
    }

    #[test]
    fn every_truncation_and_bit_flip_is_rejected() {
        let b = encode(3, b"abcdef");
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut} accepted");
        }
        for bit in 0..b.len() * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&c).is_err(), "flip of bit {bit} accepted");
        }
    }
}
