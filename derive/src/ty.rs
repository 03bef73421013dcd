//! Field types: which Rust types a column can have, read from the type's path.
//!
//! A proc-macro sees tokens, not types, so a field's column type is decided
//! by the last segment of its path (`i64`, `String`, `uuid::Uuid`,
//! `time::OffsetDateTime`, `chrono::DateTime<Utc>`, `serde_json::Value`,
//! `Option<T>`). A type alias or a newtype is not recognised: the field is
//! refused here, at compile time, with the list of what is accepted. The
//! generated code then converts through `writebehind::__private::Field`, so a
//! path that only looks right (a `Uuid` of another crate) fails to compile
//! at the field's type rather than misbehaving at run time.

use syn::{GenericArgument, PathArguments, PathSegment, Type};

/// The column kind of a (non-`Option`) field type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// i8, i16, i32, i64, u8, u16, u32: BIGINT.
    Int,
    /// f32, f64: DOUBLE.
    Float,
    /// bool: BOOL.
    Bool,
    /// String: TEXT.
    Text,
    /// `Vec<u8>`: BYTES.
    Bytes,
    /// `uuid::Uuid`: UUID.
    Uuid,
    /// `time::OffsetDateTime`, `chrono::DateTime<Utc>`: TIMESTAMP.
    Timestamp,
    /// `serde_json::Value`: JSON.
    Json,
}

/// A field's column type: its kind and whether it is an `Option` (nullable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FieldType {
    pub(crate) kind: Kind,
    pub(crate) nullable: bool,
}

const SUPPORTED: &str = "i8, i16, i32, i64, u8, u16, u32, f32, f64, bool, String, Vec<u8>, \
                         uuid::Uuid, time::OffsetDateTime, chrono::DateTime<Utc>, \
                         serde_json::Value, or an Option of one of these";

/// The column type of `ty`, or an error spanned on it.
pub(crate) fn classify(ty: &Type) -> syn::Result<FieldType> {
    let ty = strip(ty);
    if let Some(inner) = single_arg(ty, "Option") {
        let inner = classify_plain(strip(inner)).map_err(|e| {
            if single_arg(strip(inner), "Option").is_some() {
                syn::Error::new_spanned(
                    inner,
                    "Option<Option<T>> cannot be told apart from one NULL; use Option<T>",
                )
            } else {
                e
            }
        })?;
        return Ok(FieldType {
            kind: inner,
            nullable: true,
        });
    }
    Ok(FieldType {
        kind: classify_plain(ty)?,
        nullable: false,
    })
}

fn classify_plain(ty: &Type) -> syn::Result<Kind> {
    let unsupported = || {
        syn::Error::new_spanned(
            ty,
            format!(
                "unsupported field type for a column; a column field must be {SUPPORTED} \
                 (mark the field #[writebehind(skip)] to keep it out of the table)"
            ),
        )
    };
    let Some(path) = plain_path(ty) else {
        return Err(unsupported());
    };
    let Some(last) = path.segments.last() else {
        return Err(unsupported());
    };
    let name = last.ident.to_string();
    let no_args = matches!(last.arguments, PathArguments::None);
    let kind = match name.as_str() {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" if no_args => Kind::Int,
        "u64" | "usize" | "isize" | "i128" | "u128" if no_args => {
            return Err(syn::Error::new_spanned(
                ty,
                format!(
                    "`{name}` does not fit a BIGINT column (a signed 64-bit integer) in every \
                     value; use i64 (or u32 and smaller)"
                ),
            ));
        }
        "f32" | "f64" if no_args => Kind::Float,
        "bool" if no_args => Kind::Bool,
        "String" if no_args => Kind::Text,
        "Uuid" if no_args => Kind::Uuid,
        "OffsetDateTime" if no_args => Kind::Timestamp,
        "Value" if no_args && is_serde_json(path) => Kind::Json,
        "Vec" => match single_arg(ty, "Vec").map(strip) {
            Some(Type::Path(p)) if p.qself.is_none() && p.path.is_ident("u8") => Kind::Bytes,
            _ => {
                return Err(syn::Error::new_spanned(
                    ty,
                    "a Vec column must be Vec<u8> (BYTES); other lists have no column type",
                ));
            }
        },
        "DateTime" => match single_arg(ty, "DateTime").map(strip) {
            Some(Type::Path(p))
                if p.qself.is_none() && p.path.segments.last().is_some_and(is_utc) =>
            {
                Kind::Timestamp
            }
            _ => {
                return Err(syn::Error::new_spanned(
                    ty,
                    "a chrono timestamp column must be DateTime<Utc> (TIMESTAMP, UTC)",
                ));
            }
        },
        _ => return Err(unsupported()),
    };
    Ok(kind)
}

fn is_utc(seg: &PathSegment) -> bool {
    seg.ident == "Utc" && matches!(seg.arguments, PathArguments::None)
}

/// `Value` alone or `serde_json::Value`: "Value" is too common a name to take
/// from any other path.
fn is_serde_json(path: &syn::Path) -> bool {
    let n = path.segments.len();
    n == 1 || (n == 2 && path.segments[0].ident == "serde_json")
}

/// Looks through invisible groups and parentheses (`(T)`, or a type passed
/// through a `macro_rules!`).
fn strip(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => strip(&g.elem),
        Type::Paren(p) => strip(&p.elem),
        other => other,
    }
}

fn plain_path(ty: &Type) -> Option<&syn::Path> {
    match ty {
        Type::Path(p) if p.qself.is_none() => Some(&p.path),
        _ => None,
    }
}

/// `T` when `ty` is `<name><T>` (any path ending in `name` with one type argument).
fn single_arg<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let last = plain_path(ty)?.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter();
    match (types.next(), types.next()) {
        (Some(GenericArgument::Type(t)), None) => Some(t),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{classify, FieldType, Kind};

    fn class(src: &str) -> Result<FieldType, String> {
        let ty: syn::Type = syn::parse_str(src).map_err(|e| e.to_string())?;
        classify(&ty).map_err(|e| e.to_string())
    }

    fn kind(src: &str) -> Option<(Kind, bool)> {
        class(src).ok().map(|t| (t.kind, t.nullable))
    }

    #[test]
    fn the_contracts_types_map_to_their_columns() {
        for int in [
            "i8",
            "i16",
            "i32",
            "i64",
            "u8",
            "u16",
            "u32",
            "std::primitive::i64",
        ] {
            assert_eq!(kind(int), Some((Kind::Int, false)), "{int}");
        }
        let cases = [
            ("f32", Kind::Float),
            ("f64", Kind::Float),
            ("bool", Kind::Bool),
            ("String", Kind::Text),
            ("std::string::String", Kind::Text),
            ("Vec<u8>", Kind::Bytes),
            ("uuid::Uuid", Kind::Uuid),
            ("Uuid", Kind::Uuid),
            ("time::OffsetDateTime", Kind::Timestamp),
            ("chrono::DateTime<chrono::Utc>", Kind::Timestamp),
            ("DateTime<Utc>", Kind::Timestamp),
            ("serde_json::Value", Kind::Json),
            ("Value", Kind::Json),
        ];
        for (src, k) in cases {
            assert_eq!(kind(src), Some((k, false)), "{src}");
        }
    }

    #[test]
    fn option_is_nullable() {
        assert_eq!(kind("Option<String>"), Some((Kind::Text, true)));
        assert_eq!(
            kind("std::option::Option<uuid::Uuid>"),
            Some((Kind::Uuid, true))
        );
        let nested = class("Option<Option<i64>>").err();
        assert!(nested.is_some_and(|m| m.contains("Option<Option<T>>")));
    }

    #[test]
    fn other_types_are_refused_with_the_list() {
        for src in [
            "Vec<String>",
            "HashMap<String, i64>",
            "&'static str",
            "(i64, i64)",
            "[u8; 16]",
            "Box<str>",
            "MyId",
            "DateTime<FixedOffset>",
            "writebehind::Value",
            "Option<MyId>",
        ] {
            assert!(class(src).is_err(), "{src} was accepted");
        }
        let unknown = class("MyId").err();
        assert!(unknown.is_some_and(|m| m.contains("a column field must be i8")));
        let wide = class("u64").err();
        assert!(wide.is_some_and(|m| m.contains("does not fit a BIGINT")));
    }
}
