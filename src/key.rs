//! Keys: a canonical text (the WAL's and the cache's identity of a key)
//! and the key columns of the table (native SQL types, one or several).
//!
//! Two keys are one entry exactly when their texts are equal, so each
//! key type's text is canonical: one text per key, and distinct keys never
//! share a text. Composite keys (tuples) escape their components' texts and
//! join them with `'\u{1f}'` (the ASCII unit separator), so no component can
//! fake a separator.
//!
//! Here: the two traits. By job: `scalar` (strings, integers, bytes, UUIDs), `composite`
//! (tuples: escaping and joining) and `codec` (the writer's key codec for a key type).

use std::borrow::Cow;

use writebehind_writer::{SqlType, SqlValue};

use crate::Result;

mod codec;
mod composite;
mod scalar;

pub(crate) use codec::TypedKey;

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;
    use writebehind_writer::KeyCodec;

    use super::*;
    use crate::Error;

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
