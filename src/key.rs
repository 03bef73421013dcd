//! Keys: a canonical text (the WAL's and the cache's identity of a key)
//! and the key columns of the table (native SQL types, one or several).
//!
//! Two keys are one entry exactly when their texts are equal, so each
//! key type's text is canonical: one text per key, and distinct keys never
//! share a text. Composite keys (tuples) escape their components' texts and
//! join them with `'\u{1f}'` (the ASCII unit separator), so no component can
//! fake a separator.

use std::borrow::Cow;
use std::marker::PhantomData;

use writebehind_writer::{Column, KeyCodec, SqlType, SqlValue};

use crate::{Error, Result};

/// A key's canonical text, as stored in the WAL and in the cache.
///
/// Implemented for `str`, `String`, the integer types, `Vec<u8>` and `[u8]`
/// (lowercase hex), `uuid::Uuid` (feature `uuid`: lowercase, hyphenated) and
/// tuples of two or three keys. Two keys are the same entry exactly when
/// their text is equal.
pub trait KeyText {
    /// The canonical text of this key.
    fn key_text(&self) -> Cow<'_, str>;
}

/// A key type the cache can hold: its canonical text, and the key
/// column(s) of the table it maps to, in their native SQL types.
///
/// The built-in counter table keeps one TEXT column `key` whatever the key
/// type; a [`Record`](crate::Record) table binds the key in the types of
/// [`key_types`](Self::key_types), to the columns its
/// [`Mapping`](crate::Mapping) names.
///
/// | key type | key columns | text |
/// |---|---|---|
/// | `String` | one TEXT | itself |
/// | `i32`, `i64`, `u32`, `u64` | one BIGINT | decimal (`-7`) |
/// | `Vec<u8>` | one bytes column (BYTEA, BLOB, VARBINARY) | lowercase hex |
/// | `uuid::Uuid` (feature `uuid`) | one UUID (PostgreSQL), BINARY(16)/BLOB elsewhere | lowercase, hyphenated |
/// | `(A, B)`, `(A, B, C)` | `A`'s columns, then `B`'s (then `C`'s) | escaped texts joined by `'\u{1f}'` |
///
/// ```
/// use writebehind::{CacheKey, KeyText, SqlValue};
///
/// let key = (7i64, String::from("en"));
/// assert_eq!(key.to_key_row(), vec![SqlValue::Int(7), SqlValue::Text("en".into())]);
/// assert_eq!(<(i64, String)>::from_key_text(&key.key_text()).unwrap(), key);
/// ```
pub trait CacheKey: KeyText + Sized + Send + Sync + 'static {
    /// Parses the canonical text back into a key.
    fn from_key_text(text: &str) -> Result<Self>;
    /// SQL types of the key columns (one for a scalar key, several for a composite one).
    fn key_types() -> Vec<SqlType>;
    /// This key as one value per key column, in the order of [`key_types`](Self::key_types).
    fn to_key_row(&self) -> Vec<SqlValue>;
    /// A key from one value per key column.
    fn from_key_row(row: Vec<SqlValue>) -> std::result::Result<Self, String>;
}

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

/// Separates the components of a composite key's text.
const SEP: char = '\u{1f}';
/// Starts an escape in a component: `ESC '0'` is `ESC`, `ESC '1'` is `SEP`.
const ESC: char = '\u{1e}';

/// A component's text with `ESC` and `SEP` escaped, appended to `out`.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            ESC => out.push_str("\u{1e}0"),
            SEP => out.push_str("\u{1e}1"),
            c => out.push(c),
        }
    }
}

/// A component's text from its escaped form (strict: a stray `ESC` is an error).
fn unescape(text: &str) -> Result<Cow<'_, str>> {
    if !text.contains(ESC) {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != ESC {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push(ESC),
            Some('1') => out.push(SEP),
            _ => {
                return Err(Error::Codec(format!(
                    "composite key component {text:?} has a bad escape"
                )))
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// A composite key's text: each component escaped, joined by `SEP`.
fn join(parts: &[&dyn KeyText]) -> String {
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(SEP);
        }
        escape_into(&mut out, &part.key_text());
    }
    out
}

/// A composite key's `N` component texts.
fn split<const N: usize>(text: &str) -> Result<[Cow<'_, str>; N]> {
    let parts: Vec<&str> = text.split(SEP).collect();
    if parts.len() != N {
        return Err(Error::Codec(format!(
            "composite key {text:?} has {} components, not {N}",
            parts.len()
        )));
    }
    let parts = parts
        .into_iter()
        .map(unescape)
        .collect::<Result<Vec<_>>>()?;
    parts
        .try_into()
        .map_err(|_| Error::Codec("composite key: component count".into()))
}

/// The next `n` values of a composite key's row.
fn take(row: &mut std::vec::IntoIter<SqlValue>, n: usize) -> Vec<SqlValue> {
    row.by_ref().take(n).collect()
}

macro_rules! tuple_keys {
    ($n:literal; $($t:ident $v:ident $i:tt),+) => {
        impl<$($t: KeyText),+> KeyText for ($($t,)+) {
            fn key_text(&self) -> Cow<'_, str> {
                Cow::Owned(join(&[$(&self.$i),+]))
            }
        }

        impl<$($t: CacheKey),+> CacheKey for ($($t,)+) {
            fn from_key_text(text: &str) -> Result<Self> {
                let [$($v),+] = split::<$n>(text)?;
                Ok(($($t::from_key_text(&$v)?,)+))
            }
            fn key_types() -> Vec<SqlType> {
                let mut types = Vec::new();
                $(types.extend($t::key_types());)+
                types
            }
            fn to_key_row(&self) -> Vec<SqlValue> {
                let mut row = Vec::new();
                $(row.extend(self.$i.to_key_row());)+
                row
            }
            fn from_key_row(row: Vec<SqlValue>) -> std::result::Result<Self, String> {
                let want = Self::key_types().len();
                if row.len() != want {
                    return Err(format!(
                        "a composite key has {want} columns, found {} values",
                        row.len()
                    ));
                }
                let mut row = row.into_iter();
                Ok(($($t::from_key_row(take(&mut row, $t::key_types().len()))?,)+))
            }
        }
    };
}
tuple_keys!(2; A a 0, B b 1);
tuple_keys!(3; A a 0, B b 1, C c 2);

/// The writer's [`KeyCodec`] for the key type `K`: the key text to `K`'s
/// native key columns (named by the mapping) and back.
///
/// Strict: a text that is not the canonical text of a `K` (`"042"` for an
/// integer key, uppercase hex) is refused, as is a value its column cannot
/// hold (a `u64` past `i64::MAX`), so one row is never two cache entries;
/// the write path asks this before a write reaches the WAL.
pub(crate) struct TypedKey<K> {
    columns: Vec<Column>,
    _key: PhantomData<fn() -> K>,
}

impl<K: CacheKey> TypedKey<K> {
    /// The codec for `K` in the columns `names` of `table`; their number
    /// must be `K`'s number of key columns.
    pub(crate) fn new(table: &str, names: &[String]) -> Result<Self> {
        let types = K::key_types();
        if names.len() != types.len() {
            return Err(Error::Config(format!(
                "table {table}: the mapping names {} key column(s) ({}), but the key type {} has {} ({})",
                names.len(),
                names.join(", "),
                std::any::type_name::<K>(),
                types.len(),
                types
                    .iter()
                    .map(|t| format!("{t:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let columns = names
            .iter()
            .zip(types)
            .map(|(name, ty)| Column::new(name, ty, false))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self {
            columns,
            _key: PhantomData,
        })
    }
}

impl<K: CacheKey> KeyCodec for TypedKey<K> {
    fn columns(&self) -> &[Column] {
        &self.columns
    }

    fn to_sql(&self, text: &str) -> std::result::Result<Vec<SqlValue>, String> {
        let key = K::from_key_text(text).map_err(|e| e.to_string())?;
        let canonical = key.key_text();
        if canonical != text {
            return Err(format!(
                "{text:?} is not the canonical text of a {} key (that is {canonical:?})",
                std::any::type_name::<K>()
            ));
        }
        let row = key.to_key_row();
        for (value, column) in row.iter().zip(&self.columns) {
            if !value.fits(column.ty) {
                return Err(format!(
                    "{value:?} does not fit the {:?} key column {}",
                    column.ty, column.name
                ));
            }
        }
        Ok(row)
    }

    fn from_sql(&self, row: Vec<SqlValue>) -> std::result::Result<String, String> {
        Ok(K::from_key_row(row)?.key_text().into_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn integer_keys_round_trip_through_text() {
        assert_eq!(42u64.key_text(), "42");
        assert_eq!(u64::from_key_text("42").unwrap(), 42);
        assert_eq!((-7i64).key_text(), "-7");
        assert!(matches!(u32::from_key_text("x"), Err(Error::Codec(_))));
    }

    #[test]
    fn string_keys_are_their_own_text() {
        assert_eq!("page:1".key_text(), "page:1");
        assert_eq!(String::from("a b").key_text(), "a b");
        assert_eq!(String::from_key_text("a b").unwrap(), "a b");
    }

    #[test]
    fn byte_keys_are_lowercase_hex_and_refuse_other_spellings() {
        assert_eq!(vec![0u8, 0xab, 0x10].key_text(), "00ab10");
        assert_eq!(b"\x01\xff"[..].key_text(), "01ff");
        assert_eq!(Vec::<u8>::from_key_text("00ab10").unwrap(), [0, 0xab, 0x10]);
        assert_eq!(Vec::<u8>::from_key_text("").unwrap(), Vec::<u8>::new());
        for bad in ["00AB", "0", "zz", "0g"] {
            assert!(
                matches!(Vec::<u8>::from_key_text(bad), Err(Error::Codec(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn composite_keys_escape_their_separator() {
        let k = (1i64, String::from("a\u{1f}b"));
        assert_eq!(k.key_text(), "1\u{1f}a\u{1e}1b");
        assert_eq!(<(i64, String)>::from_key_text(&k.key_text()).unwrap(), k);
        let k = (String::from("\u{1e}"), String::new(), 3u32);
        assert_eq!(k.key_text(), "\u{1e}0\u{1f}\u{1f}3");
        assert_eq!(
            <(String, String, u32)>::from_key_text(&k.key_text()).unwrap(),
            k
        );
        // Wrong arity and a stray escape are errors, not guesses.
        assert!(<(i64, String)>::from_key_text("1").is_err());
        assert!(<(i64, String)>::from_key_text("1\u{1f}a\u{1f}b").is_err());
        assert!(<(i64, String)>::from_key_text("1\u{1f}a\u{1e}").is_err());
        assert!(<(i64, String)>::from_key_text("1\u{1f}a\u{1e}x").is_err());
    }

    #[test]
    fn key_rows_carry_native_types() {
        assert_eq!(i64::key_types(), [SqlType::BigInt]);
        assert_eq!((-3i32).to_key_row(), [SqlValue::Int(-3)]);
        assert_eq!(
            u64::MAX.to_key_row(),
            [SqlValue::Text(u64::MAX.to_string())]
        );
        assert_eq!(u32::from_key_row(vec![SqlValue::Int(9)]).unwrap(), 9);
        assert!(u32::from_key_row(vec![SqlValue::Int(-1)]).is_err());
        assert!(i64::from_key_row(vec![SqlValue::Text("1".into())]).is_err());
        assert!(i64::from_key_row(vec![]).is_err());
        assert_eq!(String::key_types(), [SqlType::Text]);
        assert_eq!(Vec::<u8>::key_types(), [SqlType::Bytes]);
        assert_eq!(
            <(i64, String, Vec<u8>)>::key_types(),
            [SqlType::BigInt, SqlType::Text, SqlType::Bytes]
        );
        let k = (5i64, String::from("x"), vec![1u8]);
        let row = k.to_key_row();
        assert_eq!(
            row,
            [
                SqlValue::Int(5),
                SqlValue::Text("x".into()),
                SqlValue::Bytes(vec![1])
            ]
        );
        assert_eq!(<(i64, String, Vec<u8>)>::from_key_row(row).unwrap(), k);
        assert!(<(i64, String)>::from_key_row(vec![SqlValue::Int(1)]).is_err());
    }

    #[cfg(feature = "uuid")]
    #[test]
    fn uuid_keys_are_canonical_text_and_native_columns() {
        let id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(id.key_text(), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(uuid::Uuid::from_key_text(&id.key_text()).unwrap(), id);
        // Other spellings of the same UUID would be other cache entries.
        assert!(uuid::Uuid::from_key_text("01234567-89AB-CDEF-0123-456789ABCDEF").is_err());
        assert!(uuid::Uuid::from_key_text("0123456789abcdef0123456789abcdef").is_err());
        assert_eq!(uuid::Uuid::key_types(), [SqlType::Uuid]);
        assert_eq!(id.to_key_row(), [SqlValue::Uuid(id.into_bytes())]);
        for row in [
            SqlValue::Uuid(id.into_bytes()),
            SqlValue::Bytes(id.as_bytes().to_vec()),
            SqlValue::Text(id.to_string()),
        ] {
            assert_eq!(uuid::Uuid::from_key_row(vec![row]).unwrap(), id);
        }
    }

    #[test]
    fn the_key_codec_binds_native_columns_and_refuses_other_spellings() {
        let codec = TypedKey::<(i64, String)>::new("t", &["id".into(), "lang".into()]).unwrap();
        let cols: Vec<_> = codec
            .columns()
            .iter()
            .map(|c| (c.name.as_str().to_owned(), c.ty, c.nullable))
            .collect();
        assert_eq!(
            cols,
            [
                ("id".to_owned(), SqlType::BigInt, false),
                ("lang".to_owned(), SqlType::Text, false)
            ]
        );
        let text = (7i64, String::from("en")).key_text().into_owned();
        let row = codec.to_sql(&text).unwrap();
        assert_eq!(row, [SqlValue::Int(7), SqlValue::Text("en".into())]);
        assert_eq!(codec.from_sql(row).unwrap(), text);
        // "07" would be a second entry for the row of 7.
        assert!(codec.to_sql("07\u{1f}en").is_err());
        assert!(codec.to_sql("x").is_err());

        let ints = TypedKey::<u64>::new("t", &["id".into()]).unwrap();
        assert_eq!(ints.to_sql("42").unwrap(), [SqlValue::Int(42)]);
        assert!(ints.to_sql("+42").is_err());
        let too_big = ints.to_sql(&u64::MAX.to_string()).unwrap_err();
        assert!(too_big.contains("does not fit"), "{too_big}");
    }

    #[test]
    fn key_columns_must_match_the_key_type() {
        let err = TypedKey::<i64>::new("posts", &["id".into(), "lang".into()])
            .err()
            .unwrap();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("table posts") && m.contains("(id, lang)")),
            "{err}"
        );
        assert!(matches!(
            TypedKey::<i64>::new("posts", &["bad name".into()]),
            Err(Error::InvalidIdentifier { .. })
        ));
    }

    /// Text with the separator and the escape among ordinary characters.
    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('\u{1f}'),
                Just('\u{1e}'),
                Just('0'),
                Just('1'),
                Just('a'),
                any::<char>()
            ],
            0..8,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..6)
    }

    proptest! {
        #[test]
        fn text_round_trips(
            s in text(), b in bytes(), i in any::<i64>(), u in any::<u64>(), t in text()
        ) {
            prop_assert_eq!(String::from_key_text(&s.key_text()).unwrap(), s.clone());
            prop_assert_eq!(Vec::<u8>::from_key_text(&b.key_text()).unwrap(), b.clone());
            prop_assert_eq!(i64::from_key_text(&i.key_text()).unwrap(), i);
            prop_assert_eq!(u64::from_key_text(&u.key_text()).unwrap(), u);
            let pair = (s.clone(), t.clone());
            prop_assert_eq!(<(String, String)>::from_key_text(&pair.key_text()).unwrap(), pair);
            let triple = (i, s.clone(), b.clone());
            prop_assert_eq!(
                <(i64, String, Vec<u8>)>::from_key_text(&triple.key_text()).unwrap(),
                triple
            );
            let nested = ((s.clone(), t.clone()), b.clone());
            prop_assert_eq!(
                <((String, String), Vec<u8>)>::from_key_text(&nested.key_text()).unwrap(),
                nested
            );
        }

        #[test]
        fn distinct_keys_never_share_a_text(
            a in (text(), text(), text()), b in (text(), text(), text())
        ) {
            // Equal texts only for equal keys, at each arity and across
            // components that hold separators and escapes.
            prop_assert_eq!(a == b, a.key_text() == b.key_text());
            let (a2, b2) = ((a.0.clone(), a.1.clone()), (b.0.clone(), b.1.clone()));
            prop_assert_eq!(a2 == b2, a2.key_text() == b2.key_text());
            let (an, bn) = (((a.0.clone(), a.1.clone()), a.2.clone()), ((b.0.clone(), b.1.clone()), b.2.clone()));
            prop_assert_eq!(an == bn, an.key_text() == bn.key_text());
        }

        #[test]
        fn distinct_byte_and_mixed_keys_never_share_a_text(
            a in (bytes(), any::<i32>(), text()), b in (bytes(), any::<i32>(), text())
        ) {
            prop_assert_eq!(a.0 == b.0, a.0.key_text() == b.0.key_text());
            prop_assert_eq!(a == b, a.key_text() == b.key_text());
        }

        #[test]
        fn canonical_texts_alone_parse_back_to_themselves(s in text()) {
            // Whatever text parses as a composite key is that key's text:
            // no second spelling of one key.
            if let Ok(k) = <(String, String)>::from_key_text(&s) {
                prop_assert_eq!(k.key_text(), s.as_str());
            }
            if let Ok(k) = Vec::<u8>::from_key_text(&s) {
                prop_assert_eq!(k.key_text(), s.as_str());
            }
        }
    }
}
