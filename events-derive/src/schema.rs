//! Generates the `JsonSchema` impl: each field's schema from its type (any JSON for a type without
//! one), named and required as serde reads it, with its validators as constraints.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;

use crate::emit::{local, number};
use crate::model::{Container, Field, RuleKind, generic_argument};
use crate::serde_attr;

/// The body of `fn json_schema`.
pub(crate) fn body(container: &Container) -> TokenStream {
    let object = local("object");
    let closed = container.serde.deny_unknown_fields;
    let fields = container
        .fields
        .iter()
        .filter(|field| !field.serde.skip)
        .map(|field| property(container, field, &object));
    quote! {
        let mut #object = ::events::__private::ObjectSchema::new(#closed);
        #(#fields)*
        #object.build()
    }
}

/// Adds `field` to `object`.
fn property(container: &Container, field: &Field, object: &proc_macro2::Ident) -> TokenStream {
    let ty = &field.ty;
    if field.serde.flatten {
        let schema = schema_of(ty);
        return quote!(#object.flatten(#schema););
    }
    let inner = generic_argument(ty, "Option").unwrap_or(ty);
    let rust_name = field.ident.unraw().to_string();
    let name = field.serde.rename.clone().unwrap_or_else(|| {
        container.serde.rename_all.as_deref().map_or_else(
            || rust_name.clone(),
            |rule| serde_attr::rename(&rust_name, rule),
        )
    });
    let optional = field.shape.optional;
    let required = !optional && !field.serde.optional && !container.serde.default;
    let schema = local("schema");
    let constraints = field.rules.iter().filter_map(|rule| {
        let set = |key: &str, value: TokenStream| {
            quote!(::events::__private::schema_set(&mut #schema, #key, ::events::__private::serde_json::json!(#value));)
        };
        Some(match &rule.kind {
            RuleKind::Email => set("format", quote!("email")),
            RuleKind::Url => set("format", quote!("uri")),
            RuleKind::Uuid => set("format", quote!("uuid")),
            RuleKind::Pattern(regex) => set("pattern", quote!(#regex)),
            RuleKind::NonEmpty => quote!(::events::__private::schema_non_empty(&mut #schema);),
            RuleKind::Length { min, max } => {
                let bound = |bound: &Option<usize>| match bound {
                    Some(bound) => quote!(::core::option::Option::Some(#bound)),
                    None => quote!(::core::option::Option::None),
                };
                let (min, max) = (bound(min), bound(max));
                quote!(::events::__private::schema_length(&mut #schema, #min, #max);)
            }
            RuleKind::Range { min, max } => {
                let mut set_bounds = TokenStream::new();
                if let Some(min) = min {
                    set_bounds.extend(set("minimum", number(min, false)));
                }
                if let Some(max) = max {
                    set_bounds.extend(set("maximum", number(max, false)));
                }
                set_bounds
            }
            RuleKind::Custom(_) | RuleKind::Nested => return None,
        })
    });
    let of_inner = schema_of(inner);
    quote! {
        {
            let mut #schema = #of_inner;
            #(#constraints)*
            #object.property(#name, #schema, #optional, #required);
        }
    }
}

/// The schema of `ty`: its own, or any JSON.
fn schema_of(ty: &syn::Type) -> TokenStream {
    quote! {
        {
            #[allow(unused_imports)]
            use ::events::__private::{KnownSchema as _, UnknownSchema as _};
            (&::events::__private::SchemaOf::<#ty>(::core::marker::PhantomData)).schema()
        }
    }
}
