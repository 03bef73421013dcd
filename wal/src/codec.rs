//! The one place values are turned into bytes: bincode 1.3.3 (pinned; its format is frozen)
//! with fixed-width little-endian integers, an explicit size limit, and no trailing bytes.
//!
//! Changing anything here changes the on-disk format: the golden-byte tests must fail first.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Result};

/// Largest encoding accepted by [`encode`] and [`decode`] (equals [`crate::MAX_PAYLOAD_LEN`]).
pub const MAX_ENCODED: u64 = crate::frame::MAX_PAYLOAD_LEN as u64;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_ENCODED)
        .reject_trailing_bytes()
}

/// Encodes `v`; fails with [`Error::Codec`] if it does not fit in [`MAX_ENCODED`] bytes.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    options()
        .serialize(v)
        .map_err(|source| Error::Codec { source })
}

/// Encodes `v` at the end of `buf`: the bytes [`encode`] returns, with no
/// allocation when `buf` has room (the write path reuses one buffer). On an
/// error `buf` is left as it was.
pub fn encode_into<T: Serialize>(buf: &mut Vec<u8>, v: &T) -> Result<()> {
    let start = buf.len();
    options().serialize_into(&mut *buf, v).map_err(|source| {
        buf.truncate(start);
        Error::Codec { source }
    })
}

/// Decodes `b`; fails with [`Error::Codec`] on malformed, oversized or trailing bytes.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    options()
        .deserialize(b)
        .map_err(|source| Error::Codec { source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Op {
        Put { key: String, value: Vec<u8> },
        Add(i64),
        Delete,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        id: u32,
        ops: Vec<Op>,
        note: Option<String>,
    }

    #[test]
    fn golden_bytes() {
        let r = Rec {
            id: 0x0102_0304,
            ops: vec![
                Op::Put {
                    key: "k".into(),
                    value: vec![0xAA],
                },
                Op::Add(-2),
                Op::Delete,
            ],
            note: None,
        };
        let b = encode(&r).unwrap();
        #[rustfmt::skip]
        let golden: Vec<u8> = vec![
            4, 3, 2, 1,                                   // id u32 LE
            3, 0, 0, 0, 0, 0, 0, 0,                       // ops len u64
            0, 0, 0, 0,                                   // variant Put u32
            1, 0, 0, 0, 0, 0, 0, 0, b'k',                 // key
            1, 0, 0, 0, 0, 0, 0, 0, 0xAA,                 // value
            1, 0, 0, 0, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, // Add(-2)
            2, 0, 0, 0,                                   // Delete
            0,                                            // note: None
        ];
        assert_eq!(b, golden);
        assert_eq!(decode::<Rec>(&golden).unwrap(), r);
    }

    #[test]
    fn encode_into_appends_the_same_bytes() {
        let r = (7u32, Some("k".to_owned()), vec![1i64, -2]);
        let mut buf = vec![0xEE];
        encode_into(&mut buf, &r).unwrap();
        assert_eq!(buf[0], 0xEE);
        assert_eq!(buf[1..], encode(&r).unwrap()[..]);
        let big = vec![0u8; MAX_ENCODED as usize];
        assert!(matches!(
            encode_into(&mut buf, &big),
            Err(Error::Codec { .. })
        ));
        assert_eq!(buf.len(), 1 + encode(&r).unwrap().len());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut b = encode(&7u32).unwrap();
        b.push(0);
        assert!(matches!(decode::<u32>(&b), Err(Error::Codec { .. })));
    }

    #[test]
    fn huge_length_prefix_is_rejected_without_allocating() {
        let b = u64::MAX.to_le_bytes();
        assert!(matches!(decode::<Vec<u8>>(&b), Err(Error::Codec { .. })));
    }

    #[test]
    fn oversized_value_does_not_encode() {
        let v = vec![0u8; MAX_ENCODED as usize];
        assert!(matches!(encode(&v), Err(Error::Codec { .. })));
    }
}
