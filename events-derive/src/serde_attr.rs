//! Reads the `#[serde(..)]` attributes that decide a struct's JSON form (names, which fields may
//! be missing or are never read), for its JSON Schema. Anything else in them is serde's business
//! and is skipped; mistakes in them are serde's to report.

use syn::meta::ParseNestedMeta;
use syn::{Attribute, LitStr, Token};

use crate::model::{SerdeContainer, SerdeField};

/// What `attrs` (a struct's) say.
pub(crate) fn container(attrs: &[Attribute]) -> SerdeContainer {
    let mut container = SerdeContainer::default();
    read(attrs, |meta| {
        if meta.path.is_ident("rename_all") {
            container.rename_all = name(meta)?;
        } else if meta.path.is_ident("deny_unknown_fields") {
            container.deny_unknown_fields = true;
        } else if meta.path.is_ident("default") {
            container.default = true;
            skip(meta)?;
        } else {
            skip(meta)?;
        }
        Ok(())
    });
    container
}

/// What `attrs` (a field's) say.
pub(crate) fn field(attrs: &[Attribute]) -> SerdeField {
    let mut field = SerdeField::default();
    read(attrs, |meta| {
        let key = meta.path.get_ident().map(ToString::to_string);
        match key.as_deref() {
            Some("rename") => field.rename = name(meta)?,
            Some("default" | "skip_serializing_if") => {
                field.optional = true;
                skip(meta)?;
            }
            Some("skip" | "skip_deserializing") => field.skip = true,
            Some("flatten") => field.flatten = true,
            _ => skip(meta)?,
        }
        Ok(())
    });
    field
}

/// `name` after serde's `rename_all` rule `rule`, for a field named `name` in Rust.
pub(crate) fn rename(name: &str, rule: &str) -> String {
    let words: Vec<&str> = name.split('_').filter(|word| !word.is_empty()).collect();
    let capitalized = |word: &&str| {
        let mut chars = word.chars();
        chars.next().map_or_else(String::new, |first| {
            first.to_uppercase().chain(chars).collect::<String>()
        })
    };
    match rule {
        "lowercase" => name.to_lowercase(),
        "UPPERCASE" => name.to_uppercase(),
        "PascalCase" => words.iter().map(capitalized).collect(),
        "camelCase" => {
            let pascal: String = words.iter().map(capitalized).collect();
            let mut chars = pascal.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_lowercase().chain(chars).collect()
            })
        }
        "SCREAMING_SNAKE_CASE" => name.to_uppercase(),
        "kebab-case" => name.replace('_', "-"),
        "SCREAMING-KEBAB-CASE" => name.replace('_', "-").to_uppercase(),
        _ => name.to_owned(),
    }
}

/// Runs `key` on every key of the `#[serde(..)]` attributes among `attrs`.
fn read(attrs: &[Attribute], mut key: impl FnMut(&ParseNestedMeta) -> syn::Result<()>) {
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("serde")) {
        // A mistake here is serde's to report, with its own derive.
        let _ = attr.parse_nested_meta(|meta| key(&meta));
    }
}

/// The name of `key = ".."`, or of `key(deserialize = "..")`: what is read.
fn name(meta: &ParseNestedMeta) -> syn::Result<Option<String>> {
    if meta.input.peek(Token![=]) {
        return Ok(Some(meta.value()?.parse::<LitStr>()?.value()));
    }
    let mut read = None;
    meta.parse_nested_meta(|inner| {
        if inner.path.is_ident("deserialize") {
            read = Some(inner.value()?.parse::<LitStr>()?.value());
        } else {
            skip(&inner)?;
        }
        Ok(())
    })?;
    Ok(read)
}

/// Skips a key's value, if it has one.
fn skip(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|inner| skip(&inner))?;
    }
    Ok(())
}
