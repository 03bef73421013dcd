//! The scalar keys: strings, integers, bytes (lowercase hex) and UUIDs.

use std::borrow::Cow;

use writebehind_writer::{SqlType, SqlValue};

use crate::{Error, Result};

use super::{CacheKey, KeyText};

impl KeyText for str {
    fn key_text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl KeyText for String {
    fn key_text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl<T: KeyText + ?Sized> KeyText for &T {
    fn key_text(&self) -> Cow<'_, str> {
        (**self).key_text()
    }
}

/// The one value of a scalar key's row.
fn single(row: Vec<SqlValue>, what: &str) -> std::result::Result<SqlValue, String> {
    let n = row.len();
    let mut values = row.into_iter();
    match (values.next(), values.next()) {
        (Some(v), None) => Ok(v),
        _ => Err(format!("a {what} key has one column, found {n} values")),
    }
}

impl CacheKey for String {
    fn from_key_text(text: &str) -> Result<Self> {
        Ok(text.to_owned())
    }
    fn key_types() -> Vec<SqlType> {
        vec![SqlType::Text]
    }
    fn to_key_row(&self) -> Vec<SqlValue> {
        vec![SqlValue::Text(self.clone())]
    }
    fn from_key_row(row: Vec<SqlValue>) -> std::result::Result<Self, String> {
        match single(row, "text")? {
            SqlValue::Text(s) => Ok(s),
            other => Err(format!("a text key column holds {other:?}")),
        }
    }
}

macro_rules! int_keys {
    ($($t:ty),*) => {$(
        impl KeyText for $t {
            fn key_text(&self) -> Cow<'_, str> {
                Cow::Owned(self.to_string())
            }
        }
        impl CacheKey for $t {
            fn from_key_text(text: &str) -> Result<Self> {
                text.parse()
                    .map_err(|e| Error::Codec(format!("key {text:?} is not a {}: {e}", stringify!($t))))
            }
            fn key_types() -> Vec<SqlType> {
                vec![SqlType::BigInt]
            }
            /// A value past `i64::MAX` (only a `u64` can be one) has no
            /// BIGINT: it comes out as its decimal text, which the key
            /// check refuses before the write reaches the WAL.
            fn to_key_row(&self) -> Vec<SqlValue> {
                #[allow(irrefutable_let_patterns, clippy::useless_conversion)]
                let value = match i64::try_from(*self) {
                    Ok(n) => SqlValue::Int(n),
                    Err(_) => SqlValue::Text(self.to_string()),
                };
                vec![value]
            }
            fn from_key_row(row: Vec<SqlValue>) -> std::result::Result<Self, String> {
                match single(row, stringify!($t))? {
                    SqlValue::Int(n) => <$t>::try_from(n)
                        .map_err(|_| format!("key column value {n} is not a {}", stringify!($t))),
                    other => Err(format!("an integer key column holds {other:?}")),
                }
            }
        }
    )*};
}
int_keys!(i32, i64, u32, u64);

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Bytes from lowercase hex (the canonical form only: uppercase is refused,
/// so one key has one text).
fn unhex(text: &str) -> Result<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(Error::Codec(format!(
            "key {text:?} is not lowercase hex: odd length"
        )));
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| Error::Codec(format!("key {text:?} is not lowercase hex")))
}

impl KeyText for [u8] {
    fn key_text(&self) -> Cow<'_, str> {
        Cow::Owned(hex(self))
    }
}

impl KeyText for Vec<u8> {
    fn key_text(&self) -> Cow<'_, str> {
        Cow::Owned(hex(self))
    }
}

impl CacheKey for Vec<u8> {
    fn from_key_text(text: &str) -> Result<Self> {
        unhex(text)
    }
    fn key_types() -> Vec<SqlType> {
        vec![SqlType::Bytes]
    }
    fn to_key_row(&self) -> Vec<SqlValue> {
        vec![SqlValue::Bytes(self.clone())]
    }
    fn from_key_row(row: Vec<SqlValue>) -> std::result::Result<Self, String> {
        match single(row, "bytes")? {
            SqlValue::Bytes(b) => Ok(b),
            other => Err(format!("a bytes key column holds {other:?}")),
        }
    }
}

#[cfg(feature = "uuid")]
impl KeyText for uuid::Uuid {
    fn key_text(&self) -> Cow<'_, str> {
        Cow::Owned(self.hyphenated().to_string())
    }
}

#[cfg(feature = "uuid")]
impl CacheKey for uuid::Uuid {
    /// Only the canonical form (lowercase, hyphenated) is accepted.
    fn from_key_text(text: &str) -> Result<Self> {
        let parsed = uuid::Uuid::try_parse(text)
            .map_err(|e| Error::Codec(format!("key {text:?} is not a UUID: {e}")))?;
        if parsed.hyphenated().to_string() != text {
            return Err(Error::Codec(format!(
                "key {text:?} is not a UUID's canonical text (lowercase, hyphenated)"
            )));
        }
        Ok(parsed)
    }
    fn key_types() -> Vec<SqlType> {
        vec![SqlType::Uuid]
    }
    fn to_key_row(&self) -> Vec<SqlValue> {
        vec![SqlValue::Uuid(self.into_bytes())]
    }
    /// Takes a UUID, 16 bytes, or a UUID's text (some backends read a UUID
    /// column back as one of those).
    fn from_key_row(row: Vec<SqlValue>) -> std::result::Result<Self, String> {
        match single(row, "UUID")? {
            SqlValue::Uuid(b) => Ok(uuid::Uuid::from_bytes(b)),
            SqlValue::Bytes(b) => uuid::Uuid::from_slice(&b).map_err(|e| e.to_string()),
            SqlValue::Text(s) => uuid::Uuid::try_parse(&s).map_err(|e| e.to_string()),
            other => Err(format!("a UUID key column holds {other:?}")),
        }
    }
}
