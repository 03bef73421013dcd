//! The records this crate writes to the WAL, and the checkpoint payload.
//!
//! Every record has WAL kind [`KIND`]; the payload is a [`LogPayload`] in the
//! codec's encoding. The golden-byte tests below fail if that encoding
//! changes: bump [`FORMAT`] and keep a reader for the old one when it must.

use serde::{Deserialize, Serialize};
use writebehind_core::{Change, Expected, Key, Lsn, Snapshot};
use writebehind_wal::codec;

use crate::{Error, Result};

/// WAL record kind of a [`LogPayload`].
pub(crate) const KIND: u8 = 1;
/// Format version of the checkpoint payload.
pub(crate) const FORMAT: u32 = 1;

/// One WAL record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LogPayload {
    /// A write, with the version it was derived from.
    Op {
        key: Key,
        change: Change,
        expected: Expected,
    },
    /// A flush cut was taken here: it covers every record before this one.
    /// Its position is this record's own LSN.
    FlushBegin,
    /// The cut taken at `position` is in the database.
    FlushEnd { position: Lsn },
}

/// Borrowed twin of [`LogPayload::Op`] for the write path (same encoding).
#[derive(Serialize)]
enum LogPayloadRef<'a> {
    Op {
        key: &'a str,
        change: &'a Change,
        expected: Expected,
    },
}

#[cfg(test)]
pub(crate) fn encode_op(key: &str, change: &Change, expected: Expected) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_op_into(&mut buf, key, change, expected)?;
    Ok(buf)
}

/// A write's record, appended to `buf` (the write path reuses one buffer per thread).
pub(crate) fn encode_op_into(
    buf: &mut Vec<u8>,
    key: &str,
    change: &Change,
    expected: Expected,
) -> Result<()> {
    codec::encode_into(
        buf,
        &LogPayloadRef::Op {
            key,
            change,
            expected,
        },
    )
    .map_err(|e| Error::Codec(e.to_string()))
}

pub(crate) fn encode(entry: &LogPayload) -> Result<Vec<u8>> {
    codec::encode(entry).map_err(|e| Error::Codec(e.to_string()))
}

pub(crate) fn decode(payload: &[u8]) -> std::result::Result<LogPayload, String> {
    codec::decode(payload).map_err(|e| e.to_string())
}

/// The checkpoint payload: the dirty state as of the checkpoint's LSN.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CheckpointData {
    pub(crate) format: u32,
    pub(crate) snapshot: Snapshot,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use writebehind_core::Value;

    use super::*;

    #[test]
    fn op_record_bytes_are_frozen() {
        let bytes = encode_op("k1", &Change::Add(5), Expected::Any).unwrap();
        assert_eq!(
            bytes,
            [
                0, 0, 0, 0, // variant Op
                2, 0, 0, 0, 0, 0, 0, 0, b'k', b'1', // key
                0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, // Change::Add(5)
                0, 0, 0, 0, // Expected::Any
            ]
        );
        let put = encode_op(
            "k",
            &Change::Put(Value::Bytes(Arc::from(&b"ab"[..]))),
            Expected::Version(7),
        )
        .unwrap();
        assert_eq!(
            put,
            [
                0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'k', // Op, key
                1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', // Put(Bytes)
                2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, // Version(7)
            ]
        );
    }

    #[test]
    fn delta_record_bytes_are_frozen() {
        // Delta records (issue 22) came as new variants at the end of
        // `Change` and `Value`: the records before them keep their bytes.
        let add = encode_op(
            "7",
            &Change::AddCols(Arc::from(&[1i64, -2][..])),
            Expected::Any,
        )
        .unwrap();
        assert_eq!(
            add,
            [
                0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'7', // Op, key
                3, 0, 0, 0, // Change::AddCols
                2, 0, 0, 0, 0, 0, 0, 0, // two columns
                1, 0, 0, 0, 0, 0, 0, 0, // 1
                254, 255, 255, 255, 255, 255, 255, 255, // -2
                0, 0, 0, 0, // Expected::Any
            ]
        );
        let put = encode_op(
            "7",
            &Change::Put(Value::Ints(Arc::from(&[5i64][..]))),
            Expected::Absent,
        )
        .unwrap();
        assert_eq!(
            put,
            [
                0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'7', // Op, key
                1, 0, 0, 0, 2, 0, 0, 0, // Put(Value::Ints)
                1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, // [5]
                1, 0, 0, 0, // Expected::Absent
            ]
        );
        for bytes in [add, put] {
            assert_eq!(encode(&decode(&bytes).unwrap()).unwrap(), bytes);
        }
    }

    #[test]
    fn records_written_before_delta_records_still_decode() {
        // Bytes as a WAL from before issue 22 holds them.
        let old_add = [
            0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'k', b'1', 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0,
        ];
        assert_eq!(
            decode(&old_add).unwrap(),
            LogPayload::Op {
                key: Arc::from("k1"),
                change: Change::Add(5),
                expected: Expected::Any,
            }
        );
        let old_put = [
            0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'k', 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0,
            0, b'a', b'b', 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(
            decode(&old_put).unwrap(),
            LogPayload::Op {
                key: Arc::from("k"),
                change: Change::Put(Value::Bytes(Arc::from(&b"ab"[..]))),
                expected: Expected::Version(7),
            }
        );
    }

    #[test]
    fn borrowed_and_owned_records_encode_alike() {
        let owned = LogPayload::Op {
            key: Arc::from("key"),
            change: Change::Delete,
            expected: Expected::Absent,
        };
        let borrowed = encode_op("key", &Change::Delete, Expected::Absent).unwrap();
        assert_eq!(encode(&owned).unwrap(), borrowed);
        assert_eq!(decode(&borrowed).unwrap(), owned);
    }

    #[test]
    fn markers_are_frozen() {
        assert_eq!(encode(&LogPayload::FlushBegin).unwrap(), [1, 0, 0, 0]);
        assert_eq!(
            encode(&LogPayload::FlushEnd { position: 9 }).unwrap(),
            [2, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(&[9, 9, 9, 9]).is_err());
        assert!(decode(&[0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 127]).is_err());
    }
}
