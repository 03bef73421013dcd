//! Code generation: `impl writebehind::Record for T` from a checked [`Model`].
//!
//! The generated code names nothing but `writebehind::__private` (the root
//! crate's `derive_support` module): the trait, the column constructors, the
//! per-type conversions (`Field`) and the row reader. So the user's crate
//! needs no dependency of its own on `uuid`, `time`, `chrono` or
//! `serde_json` beyond the types it already uses, and the user's own names
//! (a `Result` alias, a `Vec` type) cannot capture what the derive writes.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::DeriveInput;

use crate::attr::Merge;
use crate::model::Model;

pub(crate) fn expand(input: &DeriveInput, model: &Model) -> TokenStream {
    let p = {
        let krate = &model.krate;
        quote!(#krate::__private)
    };
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();

    let columns = model.columns().map(|(f, c)| {
        let name = &c.name;
        let ty = &f.ty;
        match c.merge {
            Merge::Counter => quote_spanned!(ty.span()=> #p::counter_column::<#ty>(#name)),
            Merge::Set => quote_spanned!(ty.span()=> #p::column::<#ty>(#name)),
        }
    });
    let values = model.columns().map(|(f, _)| {
        let member = &f.member;
        let ty = &f.ty;
        quote_spanned!(ty.span()=> <#ty as #p::Field>::to_sql(&self.#member))
    });
    let names = model.columns().map(|(_, c)| &c.name);
    let inits = model.fields.iter().map(|f| {
        let member = &f.member;
        let ty = &f.ty;
        match &f.column {
            Some(_) => quote_spanned!(ty.span()=> #member: __row.take::<#ty>()?),
            None => quote_spanned!(ty.span()=> #member: <#ty as #p::Default>::default()),
        }
    });
    let table = match &model.table {
        Some(t) => quote!(#p::Option::Some(#t)),
        None => quote!(#p::Option::None),
    };
    let key = &model.key;
    let version = match &model.version {
        Some(v) => quote!(#p::Option::Some(#v)),
        None => quote!(#p::Option::None),
    };
    let update_only = model.update_only;

    quote! {
        #[automatically_derived]
        impl #impl_generics #p::Record for #ident #ty_generics #where_clause {
            fn columns() -> #p::Vec<#p::Column> {
                #p::Vec::from([#(#columns),*])
            }

            fn to_row(&self) -> #p::Vec<#p::SqlValue> {
                #p::Vec::from([#(#values),*])
            }

            fn from_row(
                row: #p::Vec<#p::SqlValue>,
            ) -> #p::Result<Self, #p::String> {
                let mut __row = #p::Row::new(row, &[#(#names),*])?;
                #p::Result::Ok(Self { #(#inits),* })
            }

            fn mapping() -> #p::Mapping {
                #p::mapping(#table, &[#(#key),*], #version, #update_only)
            }
        }
    }
}
