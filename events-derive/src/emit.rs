//! Generates the `Event` and `Validate` impls from the checked model.
//!
//! The generated code names everything by absolute path and keeps its own variables hygienic
//! (`Span::mixed_site`), so user paths such as `custom = report` are never shadowed.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Lit, LitFloat};

use crate::model::{Container, Derive, Field, Number, Rule, RuleKind};

/// The impls for a container without mistakes.
pub(crate) fn impls(container: &Container) -> TokenStream {
    let schema = crate::schema::body(container);
    let body = container.fields.iter().map(field_checks).collect();
    let marked = |flag: fn(&Field) -> bool| -> Vec<&Ident> {
        container
            .fields
            .iter()
            .filter(|field| flag(field))
            .map(|field| &field.ident)
            .collect()
    };
    let mut keys = key_method(
        &marked(|field| field.idempotency_key.is_some()),
        "idempotency_key",
    );
    keys.extend(key_method(
        &marked(|field| field.partition_key.is_some()),
        "partition_key",
    ));
    generate(container, keys, body, schema)
}

/// Impls that compile whatever the mistakes, emitted next to the errors so that they do not cascade
/// into "trait not implemented" errors where the type is used.
pub(crate) fn stubs(container: &Container) -> TokenStream {
    let any = quote!(::events::__private::serde_json::json!({}));
    generate(container, TokenStream::new(), TokenStream::new(), any)
}

/// The `Validate` impl whose `validate_into` runs `body`, the `JsonSchema` impl whose
/// `json_schema` runs `schema`, and for `#[derive(Event)]` the `Event` impl with `keys` (the key
/// methods) as extra items.
fn generate(
    container: &Container,
    keys: TokenStream,
    body: TokenStream,
    schema: TokenStream,
) -> TokenStream {
    let ident = &container.ident;
    let (impl_generics, type_generics, where_clause) = container.generics.split_for_impl();
    let event = (container.derive == Derive::Event).then(|| {
        let name = container
            .name
            .as_ref()
            .map_or_else(|| "invalid".to_owned(), |name| name.value());
        let version = container
            .version
            .as_ref()
            .map_or(1, |version| version.value);
        let upcast = container.previous.as_ref().map(upcast);
        let checks = container
            .previous
            .as_ref()
            .map(|previous| previous_checks(previous, &name, version));
        quote! {
            #[automatically_derived]
            impl #impl_generics ::events::Event for #ident #type_generics #where_clause {
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;
                #keys
                #upcast
            }
            #checks
        }
    });
    let (path, report) = if body.is_empty() {
        (local("_path"), local("_report"))
    } else {
        (local("path"), local("report"))
    };
    quote! {
        #event
        #[automatically_derived]
        impl #impl_generics ::events::JsonSchema for #ident #type_generics #where_clause {
            fn json_schema() -> ::events::__private::serde_json::Value {
                #schema
            }
        }
        #[automatically_derived]
        impl #impl_generics ::events::Validate for #ident #type_generics #where_clause {
            fn validate_into(&self, #path: &str, #report: &mut ::events::ValidationReport) {
                #body
            }
        }
    }
}

/// `fn from_version` reading older versions as `previous` and converting them with `From`.
fn upcast(previous: &syn::Path) -> TokenStream {
    let version = local("version");
    let body = local("body");
    quote_spanned! {previous.span()=>
        fn from_version(
            #version: u32,
            #body: &str,
        ) -> ::core::result::Result<Self, ::events::__private::serde_json::Error> {
            if #version < <Self as ::events::Event>::VERSION {
                <#previous as ::events::Event>::from_version(#version, #body)
                    .map(<Self as ::core::convert::From<#previous>>::from)
            } else {
                ::events::__private::serde_json::from_str(#body)
            }
        }
    }
}

/// Compile-time checks that `previous` is an older version (than `version`) of the event type
/// `name`: a constant item, which `cargo check` evaluates too (one inside a function is only
/// evaluated when the function is compiled).
fn previous_checks(previous: &syn::Path, name: &str, version: u32) -> TokenStream {
    let not_older = format!("`previous` must name an older version of `{name}`");
    let other_name = format!("`previous` must name a struct of the event type `{name}`");
    quote_spanned! {previous.span()=>
        const _: () = {
            ::core::assert!(<#previous as ::events::Event>::VERSION < #version, #not_older);
            ::core::assert!(
                ::events::__private::same_name(<#previous as ::events::Event>::NAME, #name),
                #other_name
            );
        };
    }
}

/// `fn <method>`, such as `fn idempotency_key` or `fn partition_key`, combining `parts` (the marked
/// fields, in declaration order); nothing (the trait's `None`) when no field is marked.
fn key_method(parts: &[&Ident], method: &str) -> TokenStream {
    if parts.is_empty() {
        return TokenStream::new();
    }
    let method = Ident::new(method, Span::call_site());
    let key = local("key");
    quote! {
        fn #method(&self) -> ::core::option::Option<::std::string::String> {
            let mut #key = ::std::string::String::new();
            #(::events::__private::push_key_part(&mut #key, &self.#parts);)*
            ::core::option::Option::Some(#key)
        }
    }
}

/// The checks of one field: on its value, or on the value inside when it is an `Option`.
fn field_checks(field: &Field) -> TokenStream {
    if field.rules.is_empty() {
        return TokenStream::new();
    }
    let ident = &field.ident;
    let value = local("value");
    let checks = field
        .rules
        .iter()
        .map(|rule| rule_check(field, rule, &value));
    if field.shape.optional {
        quote! {
            if let ::core::option::Option::Some(#value) = &self.#ident {
                #(#checks)*
            }
        }
    } else {
        quote! {
            {
                let #value = &self.#ident;
                #(#checks)*
            }
        }
    }
}

/// One validator applied to `value`, a reference to the field's value.
fn rule_check(field: &Field, rule: &Rule, value: &Ident) -> TokenStream {
    let (path, report, message) = (local("path"), local("report"), local("message"));
    let name = field.ident.unraw().to_string();
    let span = rule.span;
    let fails = |check: TokenStream| {
        quote! {
            if let ::core::option::Option::Some(#message) = #check {
                #report.push(::events::__private::path(#path, #name), #message);
            }
        }
    };
    match &rule.kind {
        RuleKind::Email => fails(quote_spanned!(span=> ::events::__private::email(#value))),
        RuleKind::Url => fails(quote_spanned!(span=> ::events::__private::url(#value))),
        RuleKind::Uuid => fails(quote_spanned!(span=> ::events::__private::uuid(#value))),
        RuleKind::NonEmpty => fails(quote_spanned!(span=> ::events::__private::non_empty(#value))),
        RuleKind::Length { min, max } => {
            let (min, max) = (
                option(min.map(|min| quote!(#min))),
                option(max.map(|max| quote!(#max))),
            );
            fails(quote_spanned!(span=> ::events::__private::length(#value, #min, #max)))
        }
        RuleKind::Range { min, max } => {
            let bound = |bound: &Number| number(bound, field.shape.float);
            let (min, max) = (
                option(min.as_ref().map(bound)),
                option(max.as_ref().map(bound)),
            );
            fails(quote_spanned!(span=> ::events::__private::range(#value, #min, #max)))
        }
        RuleKind::Pattern(regex) => {
            let check =
                fails(quote_spanned!(span=> ::events::__private::pattern(#value, &PATTERN)));
            quote! {
                {
                    static PATTERN: ::events::__private::LazyLock<::events::__private::Regex> =
                        ::events::__private::LazyLock::new(|| {
                            ::events::__private::Regex::new(#regex)
                                .expect("the pattern was checked by the derive")
                        });
                    #check
                }
            }
        }
        RuleKind::Custom(function) => {
            // A closure rather than the bare path, so that `&String` coerces to `&str` and the like.
            let argument = local("argument");
            let function = quote!(|#argument| #function(#argument));
            fails(quote_spanned!(span=> ::events::__private::custom(#value, #function)))
        }
        RuleKind::Nested if field.shape.sequence => {
            let (index, item) = (local("index"), local("item"));
            quote_spanned! {span=>
                for (#index, #item) in #value.iter().enumerate() {
                    ::events::__private::nested(
                        #item,
                        &::events::__private::indexed(#path, #name, #index),
                        #report,
                    );
                }
            }
        }
        RuleKind::Nested => quote_spanned! {span=>
            ::events::__private::nested(#value, &::events::__private::path(#path, #name), #report);
        },
    }
}

/// `Some(bound)` or `None`.
fn option(bound: Option<TokenStream>) -> TokenStream {
    match bound {
        Some(bound) => quote!(::core::option::Option::Some(#bound)),
        None => quote!(::core::option::Option::None),
    }
}

/// A bound of `range`; an unsuffixed integer becomes a float when the field is a float.
pub(crate) fn number(number: &Number, float: bool) -> TokenStream {
    let lit = match &number.lit {
        Lit::Int(int) if float && int.suffix().is_empty() => Lit::Float(LitFloat::new(
            &format!("{}.0", int.base10_digits()),
            int.span(),
        )),
        lit => lit.clone(),
    };
    if number.negative {
        quote!(-#lit)
    } else {
        quote!(#lit)
    }
}

/// A variable of the generated code, invisible to the user's tokens.
pub(crate) fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}
