//! Keys: anything with a canonical text form (the SQL key column is text).

use std::borrow::Cow;

use crate::{Error, Result};

/// A key's canonical text, as stored in the WAL and in the key column.
///
/// Implemented for `str`, `String` and the integer types. Two keys are the
/// same entry exactly when their text is equal.
pub trait KeyText {
    /// The canonical text of this key.
    fn key_text(&self) -> Cow<'_, str>;
}

/// A key type the cache can hand back (for example when warming).
pub trait CacheKey: KeyText + Sized + Send + Sync + 'static {
    /// Parses the canonical text back into a key.
    fn from_key_text(text: &str) -> Result<Self>;
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

impl CacheKey for String {
    fn from_key_text(text: &str) -> Result<Self> {
        Ok(text.to_owned())
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
        }
    )*};
}
int_keys!(i32, i64, u32, u64);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
}
