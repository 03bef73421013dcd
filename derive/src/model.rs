//! The checked model of one `#[derive(Record)]`: what the table looks like,
//! decided and validated before any code is generated.

use std::collections::HashMap;

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::{Data, DeriveInput, Fields, Ident, Type};

use crate::attr::{Container, Errors, FieldAttrs, Merge, Spanned};
use crate::case::RenameRule;
use crate::ty::{self, FieldType, Kind};

/// One struct mapped onto a table.
pub(crate) struct Model {
    pub(crate) krate: syn::Path,
    pub(crate) table: Option<String>,
    pub(crate) key: Vec<String>,
    pub(crate) version: Option<String>,
    pub(crate) update_only: bool,
    /// Every field, in declaration order (skipped ones included).
    pub(crate) fields: Vec<FieldModel>,
}

/// One field of the struct.
pub(crate) struct FieldModel {
    pub(crate) member: Ident,
    pub(crate) ty: Type,
    /// `None`: `#[writebehind(skip)]`, filled with `Default::default()`.
    pub(crate) column: Option<ColumnModel>,
}

/// The column a field maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ColumnModel {
    pub(crate) name: String,
    pub(crate) merge: Merge,
    pub(crate) ty: FieldType,
}

impl Model {
    /// The mapped columns, in order.
    pub(crate) fn columns(&self) -> impl Iterator<Item = (&FieldModel, &ColumnModel)> {
        self.fields
            .iter()
            .filter_map(|f| f.column.as_ref().map(|c| (f, c)))
    }
}

/// Parses and checks the whole input, reporting every mistake at once.
pub(crate) fn build(input: &DeriveInput) -> syn::Result<Model> {
    let mut errors = Errors::default();
    let container = Container::parse(&input.attrs, &mut errors);

    let named = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => Some(named),
            _ => {
                errors.push(syn::Error::new_spanned(
                    &input.ident,
                    "#[derive(Record)] needs a struct with named fields: each field is a column",
                ));
                None
            }
        },
        _ => {
            errors.push(syn::Error::new_spanned(
                &input.ident,
                "#[derive(Record)] maps a struct onto a table's columns; enums and unions \
                 have no columns",
            ));
            None
        }
    };

    let key = match &container.key {
        Some((columns, _)) => columns.clone(),
        None => {
            errors.push(syn::Error::new_spanned(
                &input.ident,
                "missing #[writebehind(key(..))]: name the table's key column(s), e.g. \
                 #[writebehind(key(id))] or #[writebehind(key(tenant, id))]; their values \
                 come from the cache's key",
            ));
            Vec::new()
        }
    };
    for name in key.iter().chain(&container.table).chain(&container.version) {
        check_ident(name, &mut errors);
    }
    let mut seen_key: HashMap<String, Span> = HashMap::new();
    for k in &key {
        if seen_key
            .insert(k.value.to_ascii_lowercase(), k.span)
            .is_some()
        {
            errors.push(syn::Error::new(
                k.span,
                format!("key column `{}` is named twice", k.value),
            ));
        }
    }
    if let Some(v) = &container.version {
        if seen_key.contains_key(&v.value.to_ascii_lowercase()) {
            errors.push(syn::Error::new(
                v.span,
                format!("the version column `{}` is also a key column", v.value),
            ));
        }
    }

    let rename = container
        .rename_all
        .map_or(RenameRule::None, |(rule, _)| rule);
    let mut fields = Vec::new();
    // Lowercased column name -> the field that took it (names differing only
    // in case collide in most databases).
    let mut taken: HashMap<String, String> = HashMap::new();
    // A field whose mistake is reported is not a column, but not a skip either.
    let mut any_field_error = false;
    for field in named.into_iter().flat_map(|n| &n.named) {
        let Some(member) = field.ident.clone() else {
            continue;
        };
        let attrs = FieldAttrs::parse(&field.attrs, &mut errors);
        let column = match field_column(&member, &field.ty, &attrs, rename, &mut errors) {
            Ok(column) => column,
            Err(Reported) => {
                any_field_error = true;
                None
            }
        };
        if let Some(col) = &column {
            let lower = col.name.to_ascii_lowercase();
            let field_name = member.unraw().to_string();
            let span = attrs
                .column
                .as_ref()
                .map_or_else(|| member.span(), |c| c.span);
            if seen_key.contains_key(&lower) {
                errors.push(syn::Error::new(
                    span,
                    format!(
                        "field `{field_name}` maps to the key column `{}`: a key column's \
                         value comes from the cache's key, not from the record; remove the \
                         field or mark it #[writebehind(skip)]",
                        col.name
                    ),
                ));
            } else if container
                .version
                .as_ref()
                .is_some_and(|v| v.value.eq_ignore_ascii_case(&col.name))
            {
                errors.push(syn::Error::new(
                    span,
                    format!(
                        "field `{field_name}` maps to the version column `{}`, which the cache \
                         maintains; remove the field or mark it #[writebehind(skip)]",
                        col.name
                    ),
                ));
            } else if let Some(other) = taken.insert(lower, field_name.clone()) {
                errors.push(syn::Error::new(
                    span,
                    format!(
                        "fields `{other}` and `{field_name}` both map to the column `{}`",
                        col.name
                    ),
                ));
            }
        }
        fields.push(FieldModel {
            member,
            ty: field.ty.clone(),
            column,
        });
    }
    if named.is_some() && !any_field_error && fields.iter().all(|f| f.column.is_none()) {
        errors.push(syn::Error::new_spanned(
            &input.ident,
            "a record needs at least one column: every field is skipped (or there is none)",
        ));
    }
    errors.finish()?;

    let krate = container
        .krate
        .unwrap_or_else(|| syn::parse_quote!(::writebehind));
    Ok(Model {
        krate,
        table: container.table.map(|t| t.value),
        key: key.into_iter().map(|k| k.value).collect(),
        version: container.version.map(|v| v.value),
        update_only: container.update_only.is_some(),
        fields,
    })
}

/// A mistake already pushed to the errors.
struct Reported;

/// The column of one field, `None` when it is skipped, `Err` when it is
/// wrong (the error is in `errors`).
fn field_column(
    member: &Ident,
    ty: &Type,
    attrs: &FieldAttrs,
    rename: RenameRule,
    errors: &mut Errors,
) -> Result<Option<ColumnModel>, Reported> {
    if let Some(skip) = attrs.skip {
        if attrs.column.is_some() || attrs.merge.is_some() {
            errors.push(syn::Error::new(
                skip,
                "a skipped field is not a column: `skip` takes no `column`, `counter` or `set`",
            ));
            return Err(Reported);
        }
        return Ok(None);
    }
    let field_type = match ty::classify(ty) {
        Ok(t) => t,
        Err(e) => {
            errors.push(e);
            return Err(Reported);
        }
    };
    if field_type.kind == Kind::Json && !attrs.serde_with {
        errors.push(syn::Error::new_spanned(
            ty,
            "a serde_json::Value field needs #[serde(with = \"...\")] that writes it as text: the \
             cache keeps records in a binary log (bincode), which cannot read back a \
             serde_json::Value (it needs deserialize_any), so the record would be acknowledged \
             and then fail at its flush; e.g. serde_with's JsonString",
        ));
        return Err(Reported);
    }
    let merge = attrs.merge.map_or(Merge::Set, |(m, _)| m);
    if let Some((Merge::Counter, span)) = attrs.merge {
        if field_type.kind != Kind::Int {
            errors.push(syn::Error::new(
                span,
                "`counter` needs an integer field (i8..i64, u8..u32): the column is a \
                 BIGINT that each write adds to",
            ));
            return Err(Reported);
        }
        if field_type.nullable {
            errors.push(syn::Error::new(
                span,
                "a `counter` column is NOT NULL (a delta of 0 adds nothing): use the integer \
                 type without Option",
            ));
            return Err(Reported);
        }
    }
    let name = match &attrs.column {
        Some(c) => c.clone(),
        None => Spanned {
            value: rename.apply(&member.unraw().to_string()),
            span: member.span(),
        },
    };
    if !check_ident(&name, errors) {
        return Err(Reported);
    }
    Ok(Some(ColumnModel {
        name: name.value,
        merge,
        ty: field_type,
    }))
}

/// The rule of `writebehind_writer::Ident` (a plain SQL identifier:
/// `[A-Za-z_][A-Za-z0-9_]{0,62}`), checked at compile time so that the
/// generated `columns()` cannot fail at run time.
fn check_ident(name: &Spanned, errors: &mut Errors) -> bool {
    let s = name.value.as_str();
    let reason = match s.chars().next() {
        None => Some("it is empty"),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            Some("it must start with an ASCII letter or underscore")
        }
        Some(_) if s.len() > 63 => Some("it is longer than 63 characters"),
        Some(_) if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Some("only ASCII letters, digits and underscores are allowed")
        }
        Some(_) => None,
    };
    match reason {
        Some(reason) => {
            errors.push(syn::Error::new(
                name.span,
                format!("`{s}` is not a plain SQL identifier: {reason}"),
            ));
            false
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::{build, ColumnModel, Model};
    use crate::attr::Merge;
    use crate::ty::{FieldType, Kind};

    fn model(src: &str) -> Result<Model, String> {
        let input: syn::DeriveInput = syn::parse_str(src).map_err(|e| e.to_string())?;
        build(&input).map_err(|e| {
            e.into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    fn columns(m: &Model) -> Vec<ColumnModel> {
        m.columns().map(|(_, c)| c.clone()).collect()
    }

    fn col(name: &str, merge: Merge, kind: Kind, nullable: bool) -> ColumnModel {
        ColumnModel {
            name: name.into(),
            merge,
            ty: FieldType { kind, nullable },
        }
    }

    #[test]
    fn the_contracts_post_example() {
        let m = model(
            r#"
            #[writebehind(table = "posts", key(id), rename_all = "snake_case", version = "version", update_only)]
            struct Post {
                title: String,
                #[writebehind(counter)] views: i64,
                #[writebehind(column = "like_count", counter)] likes: i64,
                #[writebehind(skip)] cached_at: Option<u64>,
                note: Option<String>,
            }"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.table.as_deref(), Some("posts"));
        assert_eq!(m.key, ["id"]);
        assert_eq!(m.version.as_deref(), Some("version"));
        assert!(m.update_only);
        assert_eq!(
            columns(&m),
            [
                col("title", Merge::Set, Kind::Text, false),
                col("views", Merge::Counter, Kind::Int, false),
                col("like_count", Merge::Counter, Kind::Int, false),
                col("note", Merge::Set, Kind::Text, true),
            ]
        );
        assert_eq!(m.fields.len(), 5);
        assert!(m.fields[3].column.is_none());
    }

    #[test]
    fn defaults_no_table_no_version_upsert() {
        let m = model("#[writebehind(key(tenant, r#type))] struct T { n: i32 }")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.table, None);
        assert_eq!(m.key, ["tenant", "type"]);
        assert_eq!(m.version, None);
        assert!(!m.update_only);
        assert_eq!(columns(&m), [col("n", Merge::Set, Kind::Int, false)]);
    }

    #[test]
    fn rename_all_renames_but_column_wins() {
        let m = model(
            r#"#[writebehind(key(id), rename_all = "camelCase")]
            struct T { like_count: i64, #[writebehind(column = "view_total")] view_count: i64 }"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = columns(&m).into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["likeCount", "view_total"]);
    }

    fn error(src: &str) -> String {
        match model(src) {
            Ok(_) => panic!("accepted: {src}"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let e = error(
            r#"#[writebehind(tabel = "x")]
            struct T { #[writebehind(counter)] name: String, id: Foo }"#,
        );
        assert!(e.contains("unknown writebehind attribute `tabel`"), "{e}");
        assert!(e.contains("missing #[writebehind(key(..))]"), "{e}");
        assert!(e.contains("`counter` needs an integer field"), "{e}");
        assert!(!e.contains("at least one column"), "{e}");
        assert!(e.contains("unsupported field type"), "{e}");
    }

    #[test]
    fn a_mistake_does_not_hide_the_items_after_it() {
        let e = error(
            r#"#[writebehind(tabel = "x", key(id), rename_all = "nope", version = "v-1")]
            struct T { #[writebehind(countr(x), column = "a b")] n: i64 }"#,
        );
        assert!(!e.contains("missing #[writebehind(key"), "{e}");
        assert!(e.contains("unknown rename_all rule"), "{e}");
        assert!(e.contains("`v-1` is not a plain SQL identifier"), "{e}");
        assert!(e.contains("unknown writebehind attribute `countr`"), "{e}");
        assert!(e.contains("`a b` is not a plain SQL identifier"), "{e}");
    }

    #[test]
    fn a_json_field_with_its_own_serde_is_a_json_column() {
        let m = model(
            r#"#[writebehind(key(id))]
            struct T {
                #[serde(with = "json_text")] a: serde_json::Value,
                #[serde(default, deserialize_with = "de", serialize_with = "se")] b: Option<Value>,
            }"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let kinds: Vec<(Kind, bool)> = columns(&m)
            .iter()
            .map(|c| (c.ty.kind, c.ty.nullable))
            .collect();
        assert_eq!(kinds, [(Kind::Json, false), (Kind::Json, true)]);
    }

    #[test]
    fn refusals() {
        let cases = [
            (
                "#[writebehind(key(id))] struct T { id: i64, n: i64 }",
                "maps to the key column `id`",
            ),
            (
                r#"#[writebehind(key(id), version = "v")] struct T { v: i64 }"#,
                "maps to the version column",
            ),
            (
                r#"#[writebehind(key(id))] struct T { a: i64, #[writebehind(column = "A")] b: i64 }"#,
                "both map to the column",
            ),
            (
                r#"#[writebehind(key(id))] struct T { #[writebehind(column = "a-b")] b: i64 }"#,
                "not a plain SQL identifier",
            ),
            (
                r#"#[writebehind(table = "my table", key(id))] struct T { b: i64 }"#,
                "not a plain SQL identifier",
            ),
            (
                "#[writebehind(key(id, id))] struct T { b: i64 }",
                "named twice",
            ),
            (
                "#[writebehind(key())] struct T { b: i64 }",
                "names no column",
            ),
            (
                "#[writebehind(key = \"id\")] struct T { b: i64 }",
                "in parentheses",
            ),
            (
                "#[writebehind(key(id))] struct T { #[writebehind(skip)] b: i64 }",
                "at least one column",
            ),
            (
                "#[writebehind(key(id))] struct T { #[writebehind(skip, counter)] b: i64 }",
                "skipped field is not a column",
            ),
            (
                "#[writebehind(key(id))] struct T { #[writebehind(counter, set)] b: i64 }",
                "one of `counter` and `set`",
            ),
            (
                "#[writebehind(key(id))] struct T { #[writebehind(counter)] b: Option<i64> }",
                "NOT NULL",
            ),
            (
                "#[writebehind(key(id))] struct T { #[writebehind(rename = \"x\")] b: i64 }",
                "column = ",
            ),
            (
                "#[writebehind(key(id))] struct T { #[writebehind(table = \"x\")] b: i64 }",
                "struct attribute",
            ),
            (
                "#[writebehind(key(id), counter)] struct T { b: i64 }",
                "field attribute",
            ),
            (
                "#[writebehind(key(id), update_only = true)] struct T { b: i64 }",
                "takes no value",
            ),
            (
                "#[writebehind(key(id), key(id))] struct T { b: i64 }",
                "duplicate writebehind attribute `key`",
            ),
            ("#[writebehind(key(id))] struct T(i64);", "named fields"),
            ("#[writebehind(key(id))] enum T { A }", "enums and unions"),
            (
                r#"#[writebehind(key(id), rename_all = "kebab-case")] struct T { b: i64 }"#,
                "not plain SQL identifiers",
            ),
        ];
        for (src, want) in cases {
            let e = error(src);
            assert!(e.contains(want), "{src}: {e}");
        }
    }
}
