//! On-disk framing: the segment header and the record frame. All integers little-endian.
//!
//! Segment header (32 bytes): magic `WBWALSEG` (8) | format version u32 | flags u32 |
//! first LSN u64 | CRC32C of the preceding 24 bytes u32 | reserved u32 (0).
//!
//! Flags: bit 0 ([`FLAG_PREALLOCATED`]) says the file is zero-filled ahead of its last record, so
//! an all-zero run from a frame boundary to the end of the file is where the data ends, not a
//! torn tail. Other bits are 0; readers ignore them.
//!
//! Frame frame (20-byte header + payload): payload length u32 | CRC32C u32 | LSN u64 |
//! kind u8 | frame version u8 | reserved u16 (0) | payload. The CRC covers the payload followed
//! by the header without its CRC field (length, LSN, kind, version, reserved), so a torn,
//! zero-filled or foreign byte run never passes.

use crate::Lsn;

/// Magic number at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WBWALSEG";
/// Segment format version written by this crate.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Length of a record frame header.
pub const FRAME_HEADER_LEN: usize = 20;
/// Frame frame version written by this crate.
pub const FRAME_VERSION: u8 = 1;
/// Segment flag: zeros after the last record are preallocated space.
pub const FLAG_PREALLOCATED: u32 = 1;
/// Largest payload `append` accepts (16 MiB).
pub const MAX_PAYLOAD_LEN: usize = 16 << 20;

pub(crate) fn encode_segment_header(first_lsn: Lsn, flags: u32) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&flags.to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) first: Lsn,
    /// [`FLAG_PREALLOCATED`] is set.
    pub(crate) preallocated: bool,
}

/// Decodes a segment header, or says why it is invalid.
pub(crate) fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, &'static str> {
    let Some(h) = bytes.get(..SEGMENT_HEADER_LEN) else {
        return Err("segment shorter than its header");
    };
    if h[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic");
    }
    if u32_at(h, 24) != crc32c::crc32c(&h[0..24]) {
        return Err("segment header checksum mismatch");
    }
    if u32_at(h, 8) != FORMAT_VERSION {
        return Err("unsupported segment format version");
    }
    let lsn = u64_at(h, 16);
    if lsn == 0 {
        return Err("segment header first LSN is 0");
    }
    Ok(SegmentHeader {
        first: lsn,
        preallocated: u32_at(h, 12) & FLAG_PREALLOCATED != 0,
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A frame with its payload CRC precomputed, waiting for its LSN (so the expensive part of
/// the checksum runs outside the append lock).
pub(crate) struct PendingFrame {
    pub(crate) buf: Vec<u8>,
    payload_crc: u32,
}

impl PendingFrame {
    pub(crate) fn new(kind: u8, payload: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&[0u8; 12]);
        buf.push(kind);
        buf.push(FRAME_VERSION);
        buf.extend_from_slice(&[0u8; 2]);
        buf.extend_from_slice(payload);
        PendingFrame {
            buf,
            payload_crc: crc32c::crc32c(payload),
        }
    }

    /// Stamps the LSN and the CRC; the frame is then ready to write.
    pub(crate) fn seal(&mut self, lsn: Lsn) {
        self.buf[8..16].copy_from_slice(&lsn.to_le_bytes());
        let crc = header_crc(self.payload_crc, &self.buf[..FRAME_HEADER_LEN]);
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

fn header_crc(payload_crc: u32, header: &[u8]) -> u32 {
    // The header minus its CRC field, made contiguous: one checksum call instead of two.
    let mut h = [0u8; FRAME_HEADER_LEN - 4];
    h[..4].copy_from_slice(&header[0..4]);
    h[4..].copy_from_slice(&header[8..FRAME_HEADER_LEN]);
    crc32c::crc32c_append(payload_crc, &h)
}

/// Encodes one complete frame (tests and replica catch-up; the hot path uses
/// [`PendingFrame`]).
pub(crate) fn encode_frame(lsn: Lsn, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = PendingFrame::new(kind, payload);
    f.seal(lsn);
    f.buf
}

/// A frame parsed from a buffer.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub(crate) lsn: Lsn,
    pub(crate) kind: u8,
    pub(crate) payload: &'a [u8],
    /// Offset just past this frame.
    pub(crate) end: usize,
}

/// Parses the frame at `pos`, or says why there is no valid frame there.
pub(crate) fn parse_frame(buf: &[u8], pos: usize) -> Result<Frame<'_>, &'static str> {
    parse_frame_in(buf, pos, 1..=Lsn::MAX)
}

/// [`parse_frame`], rejecting LSNs outside `lsns` before paying for the checksum.
pub(crate) fn parse_frame_in(
    buf: &[u8],
    pos: usize,
    lsns: std::ops::RangeInclusive<Lsn>,
) -> Result<Frame<'_>, &'static str> {
    let Some(h) = buf.get(pos..pos.saturating_add(FRAME_HEADER_LEN)) else {
        return Err("incomplete frame header");
    };
    let len = u32_at(h, 0) as usize;
    if len > MAX_PAYLOAD_LEN {
        return Err("frame length exceeds the maximum payload");
    }
    let end = pos + FRAME_HEADER_LEN + len;
    let Some(payload) = buf.get(pos + FRAME_HEADER_LEN..end) else {
        return Err("frame extends past the end of the segment");
    };
    let lsn = u64_at(h, 8);
    if lsn == 0 {
        // Cheap reject for zero-filled space before computing a checksum.
        return Err("frame LSN is 0");
    }
    if !lsns.contains(&lsn) {
        return Err("frame LSN out of range");
    }
    if u32_at(h, 4) != header_crc(crc32c::crc32c(payload), h) {
        return Err("frame checksum mismatch");
    }
    if h[17] != FRAME_VERSION || h[18] != 0 || h[19] != 0 {
        return Err("unsupported frame version");
    }
    Ok(Frame {
        lsn,
        kind: h[16],
        payload,
        end,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn checksum_is_crc32c() {
        // The standard CRC-32C check value: the on-disk format depends on this polynomial.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn frame_golden_bytes() {
        let f = encode_frame(7, 3, b"hi");
        let crc = u32_at(&f, 4);
        assert_eq!(
            f,
            [
                &[2u8, 0, 0, 0][..],
                &crc.to_le_bytes()[..],
                &[7, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0, b'h', b'i'][..]
            ]
            .concat()
        );
        assert_eq!(crc, 0xf6b4_e8dd, "CRC definition changed: {crc:#x}");
        let p = parse_frame(&f, 0).unwrap();
        assert_eq!((p.lsn, p.kind, p.payload, p.end), (7, 3, &b"hi"[..], 22));
    }

    #[test]
    fn segment_header_golden_bytes() {
        let h = encode_segment_header(42, 0);
        assert_eq!(&h[0..8], b"WBWALSEG");
        assert_eq!(
            &h[8..24],
            &[1, 0, 0, 0, 0, 0, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            u32_at(&h, 24),
            0x56b8_eeaf,
            "header CRC changed: {:#x}",
            u32_at(&h, 24)
        );
        assert_eq!(
            decode_segment_header(&h),
            Ok(SegmentHeader {
                first: 42,
                preallocated: false
            })
        );
        let z = encode_segment_header(42, FLAG_PREALLOCATED);
        assert_eq!(&z[12..16], &[1, 0, 0, 0]);
        assert_eq!(
            decode_segment_header(&z),
            Ok(SegmentHeader {
                first: 42,
                preallocated: true
            })
        );
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let f = encode_frame(9, 1, b"payload bytes");
        for bit in 0..f.len() * 8 {
            let mut g = f.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            assert!(parse_frame(&g, 0).is_err(), "bit {bit} flip went unnoticed");
        }
    }

    #[test]
    fn zeros_are_not_a_frame() {
        assert_eq!(parse_frame(&[0u8; 64], 0).err(), Some("frame LSN is 0"));
        assert_eq!(
            parse_frame(&[0u8; 5], 0).err(),
            Some("incomplete frame header")
        );
    }
}
