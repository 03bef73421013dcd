//! Reading segment files: the one place that decides what is a record, what is damage, and
//! whether damage is a torn tail.
//!
//! Rule: scanning stops being clean at the first offset that is not a valid frame with the
//! expected LSN. If a valid frame (checksum good, LSN not below the expected one) starts
//! anywhere after that offset, the damage is *inside* the log (corruption, or an LSN gap);
//! if none does, the damage runs to the end of the file, which in the last segment is a
//! *torn tail* (an interrupted write or zero-filled space) and anywhere else is corruption.
//! One exception: in a segment whose header carries [`crate::FLAG_PREALLOCATED`], an
//! all-zero run from a frame boundary to the end of the file is the preallocated space after
//! the last record, a clean end.

use crate::frame::{
    decode_segment_header, parse_frame, parse_frame_in, SegmentHeader, SEGMENT_HEADER_LEN,
};
use crate::{Frame, Lsn};

/// Why a byte range of a segment was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DamageReason {
    /// The bytes are not a valid frame (the text says which check failed).
    BadFrame(&'static str),
    /// A valid frame carries a higher LSN than expected: records are missing.
    Gap {
        /// The LSN that should have come next.
        expected: Lsn,
        /// The LSN found.
        found: Lsn,
    },
    /// A valid frame carries a lower LSN than expected (a duplicate or stale record).
    Regress {
        /// The LSN that should have come next.
        expected: Lsn,
        /// The LSN found.
        found: Lsn,
    },
}

impl std::fmt::Display for DamageReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DamageReason::BadFrame(s) => f.write_str(s),
            DamageReason::Gap { expected, found } => {
                write!(f, "LSN gap: expected {expected}, found {found}")
            }
            DamageReason::Regress { expected, found } => {
                write!(f, "LSN went backwards: expected {expected}, found {found}")
            }
        }
    }
}

/// A damaged byte range found while scanning a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the first byte not accepted.
    pub offset: u64,
    /// Length of the skipped range (0 for an LSN gap between two intact frames).
    pub len: u64,
    /// Why.
    pub reason: DamageReason,
    /// Offset of the next valid frame, or `None` if the damage runs to the end of the buffer.
    pub resync: Option<u64>,
}

/// One step of a segment scan.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    Frame {
        lsn: Lsn,
        kind: u8,
        payload: &'a [u8],
    },
    Damage(Damage),
}

/// Scan position within one segment's bytes (kept apart from the bytes so an owner of the
/// buffer can hold both).
#[derive(Debug, Clone)]
pub(crate) struct ScanState {
    pos: usize,
    expected: Lsn,
    done: bool,
    /// The segment is zero-filled ahead of its records.
    preallocated: bool,
    /// The scan ended at such a zero run.
    ended_on_zeros: bool,
}

impl ScanState {
    /// Starts after the segment header `h`.
    pub(crate) fn new(h: SegmentHeader) -> Self {
        ScanState {
            pos: SEGMENT_HEADER_LEN,
            expected: h.first,
            done: false,
            preallocated: h.preallocated,
            ended_on_zeros: false,
        }
    }

    /// Offset just past the last accepted frame (or skipped range).
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Where the data ends if the scan stopped at preallocated zeros (they are not damage).
    pub(crate) fn preallocated_from(&self) -> Option<usize> {
        self.ended_on_zeros.then_some(self.pos)
    }

    /// The next event, or `None` at the end of the buffer. After a damage with `resync: None`
    /// the scan is over; after one with `Some(offset)` it continues there.
    pub(crate) fn next_event<'a>(&mut self, buf: &'a [u8]) -> Option<Event<'a>> {
        if self.done || self.pos >= buf.len() {
            return None;
        }
        let pos = self.pos;
        match parse_frame(buf, pos) {
            Ok(f) if f.lsn == self.expected => {
                self.pos = f.end;
                self.expected += 1;
                Some(Event::Frame {
                    lsn: f.lsn,
                    kind: f.kind,
                    payload: f.payload,
                })
            }
            Ok(f) if f.lsn > self.expected => {
                // Report the gap, then accept this frame on the next call.
                let reason = DamageReason::Gap {
                    expected: self.expected,
                    found: f.lsn,
                };
                self.expected = f.lsn;
                Some(Event::Damage(Damage {
                    offset: pos as u64,
                    len: 0,
                    reason,
                    resync: Some(pos as u64),
                }))
            }
            Ok(f) => {
                let reason = DamageReason::Regress {
                    expected: self.expected,
                    found: f.lsn,
                };
                self.pos = f.end;
                Some(Event::Damage(Damage {
                    offset: pos as u64,
                    len: (f.end - pos) as u64,
                    reason,
                    resync: Some(f.end as u64),
                }))
            }
            Err(_) if self.preallocated && buf[pos..].iter().all(|&b| b == 0) => {
                self.done = true;
                self.ended_on_zeros = true;
                None
            }
            Err(why) => {
                let resync = find_frame(buf, pos + 1, self.expected);
                let end = resync.unwrap_or(buf.len());
                match resync {
                    Some(p) => self.pos = p,
                    None => {
                        self.pos = buf.len();
                        self.done = true;
                    }
                }
                Some(Event::Damage(Damage {
                    offset: pos as u64,
                    len: (end - pos) as u64,
                    reason: DamageReason::BadFrame(why),
                    resync: resync.map(|p| p as u64),
                }))
            }
        }
    }
}

/// LSNs further than this beyond the expected one are not taken for a real frame when
/// searching past damage (keeps the search from checksumming garbage).
const MAX_LSN_JUMP: Lsn = 1 << 32;

/// The first offset `>= from` holding a valid frame with LSN `>= min_lsn` (and plausibly close).
fn find_frame(buf: &[u8], from: usize, min_lsn: Lsn) -> Option<usize> {
    let lsns = min_lsn.max(1)..=min_lsn.saturating_add(MAX_LSN_JUMP);
    (from..buf.len()).find(|&p| parse_frame_in(buf, p, lsns.clone()).is_ok())
}

/// Whether a valid frame with an LSN from `min_lsn` on starts at or after `from`.
pub(crate) fn has_frame_after(buf: &[u8], from: usize, min_lsn: Lsn) -> bool {
    find_frame(buf, from, min_lsn).is_some()
}

/// What [`read_segment`] found in a segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentContents {
    /// First LSN from the header.
    pub first_lsn: Lsn,
    /// The records accepted, in order.
    pub records: Vec<Frame>,
    /// Every damaged range, in order. Without salvage, at most one (the scan stops there).
    pub damage: Vec<Damage>,
    /// Offset just past the last accepted record: where a torn tail would be cut.
    pub valid_len: u64,
}

/// Decodes a whole segment file from memory: the entry point recovery, replay and the fuzz
/// target share. Never panics; a bad header is an error, damaged frames are reported in
/// [`SegmentContents::damage`] (the scan stops at the first unless `salvage`).
pub fn read_segment(bytes: &[u8], salvage: bool) -> crate::Result<SegmentContents> {
    let header = decode_segment_header(bytes).map_err(|reason| crate::Error::Corrupt {
        segment: "<memory>".into(),
        offset: 0,
        reason: reason.to_owned(),
    })?;
    let mut st = ScanState::new(header);
    let mut out = SegmentContents {
        first_lsn: header.first,
        records: Vec::new(),
        damage: Vec::new(),
        valid_len: SEGMENT_HEADER_LEN as u64,
    };
    while let Some(ev) = st.next_event(bytes) {
        match ev {
            Event::Frame { lsn, kind, payload } => {
                out.records.push(Frame {
                    lsn,
                    kind,
                    payload: payload.to_vec(),
                });
                out.valid_len = st.pos() as u64;
            }
            Event::Damage(d) => {
                out.damage.push(d);
                if !salvage {
                    break;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::frame::{encode_frame, encode_segment_header, FLAG_PREALLOCATED};

    fn segment(first: Lsn, n: u64) -> Vec<u8> {
        segment_with(first, n, 0)
    }

    fn segment_with(first: Lsn, n: u64, flags: u32) -> Vec<u8> {
        let mut s = encode_segment_header(first, flags).to_vec();
        for l in first..first + n {
            s.extend(encode_frame(l, 1, &l.to_le_bytes()));
        }
        s
    }

    #[test]
    fn clean_segment_reads_every_record() {
        let s = segment(5, 3);
        let c = read_segment(&s, false).unwrap();
        assert_eq!(c.first_lsn, 5);
        assert_eq!(
            c.records.iter().map(|r| r.lsn).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        assert_eq!(c.damage, vec![]);
        assert_eq!(c.valid_len, s.len() as u64);
    }

    #[test]
    fn zero_fill_is_damage_to_the_end() {
        let mut s = segment(1, 2);
        let valid = s.len() as u64;
        s.extend([0u8; 100]);
        let c = read_segment(&s, false).unwrap();
        assert_eq!(c.records.len(), 2);
        assert_eq!(
            c.damage,
            vec![Damage {
                offset: valid,
                len: 100,
                reason: DamageReason::BadFrame("frame LSN is 0"),
                resync: None
            }]
        );
    }

    #[test]
    fn preallocated_zeros_end_a_flagged_segment_cleanly() {
        let mut s = segment_with(1, 2, FLAG_PREALLOCATED);
        let valid = s.len() as u64;
        s.extend([0u8; 100]);
        let c = read_segment(&s, false).unwrap();
        assert_eq!(c.records.len(), 2);
        assert_eq!(c.damage, vec![]);
        assert_eq!(c.valid_len, valid);
        // Anything but zeros after the records is still damage.
        s[valid as usize + 50] = 7;
        let c = read_segment(&s, false).unwrap();
        assert_eq!(c.records.len(), 2);
        assert_eq!(
            c.damage,
            vec![Damage {
                offset: valid,
                len: 100,
                reason: DamageReason::BadFrame("frame LSN is 0"),
                resync: None
            }]
        );
    }

    #[test]
    fn mid_segment_flip_resyncs_in_salvage() {
        let mut s = segment(1, 3);
        let second = SEGMENT_HEADER_LEN + 28;
        s[second + 22] ^= 0x10; // payload byte of record 2
        let strict = read_segment(&s, false).unwrap();
        assert_eq!(strict.records.len(), 1);
        assert_eq!(strict.damage.len(), 1);
        assert_eq!(strict.damage[0].offset, second as u64);
        assert_eq!(strict.damage[0].resync, Some(second as u64 + 28));
        let salv = read_segment(&s, true).unwrap();
        assert_eq!(
            salv.records.iter().map(|r| r.lsn).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(
            salv.damage
                .iter()
                .map(|d| d.reason.clone())
                .collect::<Vec<_>>(),
            vec![
                DamageReason::BadFrame("frame checksum mismatch"),
                DamageReason::Gap {
                    expected: 2,
                    found: 3
                }
            ]
        );
    }

    #[test]
    fn bad_header_is_typed_error() {
        let mut s = segment(1, 1);
        s[0] = b'X';
        let e = read_segment(&s, false).unwrap_err();
        assert!(
            matches!(e, crate::Error::Corrupt { offset: 0, ref reason, .. } if reason == "bad segment magic")
        );
    }
}
