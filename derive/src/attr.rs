//! `#[writebehind(...)]` attributes: parsed with their spans, every mistake a
//! `syn::Error` pointing at the offending tokens (never a panic).

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::punctuated::Punctuated;
use syn::{Attribute, LitStr, Token};

use crate::case::RenameRule;

/// Collects errors so that one compile shows every mistake, not only the first.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// A name with the span to blame when it is wrong.
#[derive(Clone, Debug)]
pub(crate) struct Spanned {
    pub(crate) value: String,
    pub(crate) span: Span,
}

/// The struct-level attributes.
#[derive(Default)]
pub(crate) struct Container {
    /// `table = "posts"`; absent: the table the builder names.
    pub(crate) table: Option<Spanned>,
    /// `key(id)`, `key(tenant, id)`: the key column names, in order.
    pub(crate) key: Option<(Vec<Spanned>, Span)>,
    /// `version = "version"`; absent: no version column (last writer wins).
    pub(crate) version: Option<Spanned>,
    /// `update_only`: the row must exist.
    pub(crate) update_only: Option<Span>,
    /// `rename_all = "..."`.
    pub(crate) rename_all: Option<(RenameRule, Span)>,
    /// `crate = "path"`: where `writebehind` is, for crates that re-export it.
    pub(crate) krate: Option<syn::Path>,
}

const CONTAINER_ATTRS: &str = "table, key(..), version, update_only, rename_all, crate";
const FIELD_ATTRS: &str = "column, counter, set, skip";

impl Container {
    pub(crate) fn parse(attrs: &[Attribute], errors: &mut Errors) -> Container {
        let mut c = Container::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("writebehind")) {
            let parsed = attr.parse_nested_meta(|meta| match c.one(&meta) {
                Ok(()) => Ok(()),
                Err(e) => {
                    errors.push(e);
                    skip_rest(&meta)
                }
            });
            if let Err(e) = parsed {
                errors.push(e);
            }
        }
        c
    }

    fn one(&mut self, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let path = &meta.path;
        if path.is_ident("table") {
            let lit = string(meta)?;
            set(&mut self.table, spanned(&lit), meta, "table")
        } else if path.is_ident("version") {
            let lit = string(meta)?;
            set(&mut self.version, spanned(&lit), meta, "version")
        } else if path.is_ident("rename_all") {
            let lit = string(meta)?;
            let rule = RenameRule::parse(&lit)?;
            set(&mut self.rename_all, (rule, lit.span()), meta, "rename_all")
        } else if path.is_ident("update_only") {
            flag(meta)?;
            set(&mut self.update_only, meta_span(meta), meta, "update_only")
        } else if path.is_ident("crate") {
            let lit = string(meta)?;
            let krate: syn::Path = lit.parse()?;
            set(&mut self.krate, krate, meta, "crate")
        } else if path.is_ident("key") {
            if !meta.input.peek(syn::token::Paren) {
                return Err(meta.error(
                    "expected the key column names in parentheses: `key(id)` or `key(tenant, id)`",
                ));
            }
            let content;
            syn::parenthesized!(content in meta.input);
            let names = Punctuated::<syn::Ident, Token![,]>::parse_terminated_with(
                &content,
                syn::Ident::parse_any,
            )
            .map_err(|e| {
                syn::Error::new(
                    e.span(),
                    "expected column names separated by commas, e.g. `key(tenant, id)`",
                )
            })?;
            let columns: Vec<Spanned> = names
                .iter()
                .map(|ident| Spanned {
                    value: ident.unraw().to_string(),
                    span: ident.span(),
                })
                .collect();
            if columns.is_empty() {
                return Err(meta.error("`key()` names no column: write `key(id)`"));
            }
            set(&mut self.key, (columns, meta_span(meta)), meta, "key")
        } else {
            let name = path_name(path);
            let hint = if FIELD_ATTRS.split(", ").any(|f| f == name) {
                format!("`{name}` is a field attribute: put it on a field")
            } else {
                format!("expected one of: {CONTAINER_ATTRS}")
            };
            Err(meta.error(format!(
                "unknown writebehind attribute `{name}` on a struct; {hint}"
            )))
        }
    }
}

/// How a field's repeated writes merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Merge {
    /// Last write wins.
    Set,
    /// The write is a delta: `c = c + Δ`.
    Counter,
}

/// The field-level attributes.
#[derive(Default)]
pub(crate) struct FieldAttrs {
    /// `column = "like_count"`.
    pub(crate) column: Option<Spanned>,
    /// `counter` or `set`, with the span of the word.
    pub(crate) merge: Option<(Merge, Span)>,
    /// `skip`.
    pub(crate) skip: Option<Span>,
    /// The field has its own serde (de)serializer: `#[serde(with = "..")]`
    /// or `#[serde(deserialize_with = "..")]`.
    pub(crate) serde_with: bool,
}

impl FieldAttrs {
    pub(crate) fn parse(attrs: &[Attribute], errors: &mut Errors) -> FieldAttrs {
        let mut f = FieldAttrs {
            serde_with: has_serde_with(attrs),
            ..FieldAttrs::default()
        };
        for attr in attrs.iter().filter(|a| a.path().is_ident("writebehind")) {
            let parsed = attr.parse_nested_meta(|meta| match f.one(&meta) {
                Ok(()) => Ok(()),
                Err(e) => {
                    errors.push(e);
                    skip_rest(&meta)
                }
            });
            if let Err(e) = parsed {
                errors.push(e);
            }
        }
        f
    }

    fn one(&mut self, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let path = &meta.path;
        if path.is_ident("column") {
            let lit = string(meta)?;
            set(&mut self.column, spanned(&lit), meta, "column")
        } else if path.is_ident("counter") || path.is_ident("set") {
            flag(meta)?;
            let merge = if path.is_ident("counter") {
                Merge::Counter
            } else {
                Merge::Set
            };
            if self.merge.is_some() {
                return Err(meta.error("a field takes one of `counter` and `set`, once"));
            }
            self.merge = Some((merge, meta_span(meta)));
            Ok(())
        } else if path.is_ident("skip") {
            flag(meta)?;
            set(&mut self.skip, meta_span(meta), meta, "skip")
        } else {
            let name = path_name(path);
            let hint = if name == "rename" {
                "to name the column, write `column = \"...\"`".to_owned()
            } else if CONTAINER_ATTRS
                .split(", ")
                .any(|c| c.trim_end_matches("(..)") == name)
            {
                format!("`{name}` is a struct attribute: put it on the struct")
            } else {
                format!("expected one of: {FIELD_ATTRS}")
            };
            Err(meta.error(format!(
                "unknown writebehind attribute `{name}` on a field; {hint}"
            )))
        }
    }
}

/// Whether serde's own attributes give the field a (de)serializer of its
/// own. Malformed serde attributes are serde's to report: read as "no".
fn has_serde_with(attrs: &[Attribute]) -> bool {
    let mut found = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("with") || meta.path.is_ident("deserialize_with") {
                found = true;
            }
            skip_rest(&meta)
        });
    }
    found
}

/// After a mistake in one item, skips the rest of it (`= value`, `(..)`)
/// so that the items after it are still read and checked.
fn skip_rest(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    while !meta.input.is_empty() && !meta.input.peek(Token![,]) {
        meta.input.parse::<proc_macro2::TokenTree>()?;
    }
    Ok(())
}

fn string(meta: &ParseNestedMeta<'_>) -> syn::Result<LitStr> {
    let name = path_name(&meta.path);
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(format!("expected `{name} = \"...\"`")));
    }
    meta.value()?.parse::<LitStr>().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("expected `{name} = \"...\"` (a string literal)"),
        )
    })
}

fn flag(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.is_empty() || meta.input.peek(Token![,]) {
        Ok(())
    } else {
        let name = path_name(&meta.path);
        Err(meta.error(format!("`{name}` takes no value: write `{name}` alone")))
    }
}

fn set<T>(
    slot: &mut Option<T>,
    value: T,
    meta: &ParseNestedMeta<'_>,
    name: &str,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error(format!("duplicate writebehind attribute `{name}`")));
    }
    *slot = Some(value);
    Ok(())
}

fn spanned(lit: &LitStr) -> Spanned {
    Spanned {
        value: lit.value(),
        span: lit.span(),
    }
}

fn meta_span(meta: &ParseNestedMeta<'_>) -> Span {
    syn::spanned::Spanned::span(&meta.path)
}

fn path_name(path: &syn::Path) -> String {
    let segments: Vec<String> = path
        .segments
        .iter()
        .map(|s| s.ident.unraw().to_string())
        .collect();
    segments.join("::")
}
