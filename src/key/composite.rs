//! Composite keys (tuples): component texts escaped and joined by `'\u{1f}'`, each
//! component's columns in order.

use std::borrow::Cow;

use writebehind_writer::{SqlType, SqlValue};

use crate::{Error, Result};

use super::{CacheKey, KeyText};

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
