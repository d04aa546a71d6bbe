//! Reads the derive input and its `#[event(..)]` attributes into the model.
//!
//! Mistakes become errors in `errors`, each pointing at what the user wrote, and parsing goes on so
//! that every mistake is reported at once.

use proc_macro2::{TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Error, Expr, ExprLit, Fields, Lit, Path, Token, UnOp};

use crate::model::{Container, Derive, Field, Number, Rule, RuleKind, Shape, Version};
use crate::serde_attr;

/// The keys a field attribute accepts.
const FIELD_KEYS: [&str; 11] = [
    "email",
    "url",
    "uuid",
    "length",
    "range",
    "non_empty",
    "pattern",
    "custom",
    "nested",
    "idempotency_key",
    "partition_key",
];

/// Reads `input` for `derive`, pushing every mistake found onto `errors`.
pub(crate) fn parse(input: &DeriveInput, derive: Derive, errors: &mut Vec<Error>) -> Container {
    let mut container = Container {
        derive,
        ident: input.ident.clone(),
        generics: input.generics.clone(),
        name: None,
        version: None,
        previous: None,
        serde: serde_attr::container(&input.attrs),
        fields: Vec::new(),
    };
    let mut keys = Keys::default();
    for attr in event_attrs(&input.attrs) {
        if derive == Derive::Validate {
            errors.push(Error::new_spanned(
                attr,
                "`#[derive(Validate)]` takes no struct attribute; `#[event(name = .., version = ..)]` \
                 belongs to `#[derive(Event)]`",
            ));
            continue;
        }
        let parsed =
            attr.parse_nested_meta(|meta| container_key(&mut container, &mut keys, &meta, errors));
        errors.extend(parsed.err());
    }

    let ident = &input.ident;
    let unsupported = |what: &str, keyword: &dyn ToTokens| {
        Error::new_spanned(
            quote!(#keyword #ident),
            format!(
                "`{}` supports only structs with named fields, not {what}",
                derive.as_str()
            ),
        )
    };
    match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => {
                container.fields = named
                    .named
                    .iter()
                    .filter_map(|field| Some(parse_field(field.ident.clone()?, field, errors)))
                    .collect();
            }
            Fields::Unnamed(_) => errors.push(unsupported("tuple structs", &data.struct_token)),
            Fields::Unit => errors.push(unsupported("unit structs", &data.struct_token)),
        },
        Data::Enum(data) => errors.push(unsupported("enums", &data.enum_token)),
        Data::Union(data) => errors.push(unsupported("unions", &data.union_token)),
    }
    container
}

/// The `#[event(..)]` attributes among `attrs`.
fn event_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|attr| attr.path().is_ident("event"))
}

/// Reads one key of a struct attribute: `name = ".."`, `version = N` or `previous = Struct`.
fn container_key(
    container: &mut Container,
    keys: &mut Keys,
    meta: &ParseNestedMeta,
    errors: &mut Vec<Error>,
) -> syn::Result<()> {
    let key = path_name(&meta.path);
    if key != "name" && key != "version" && key != "previous" {
        errors.push(Error::new_spanned(
            &meta.path,
            format!("unknown event attribute `{key}`; expected `name`, `version` or `previous`"),
        ));
        return skip_value(meta);
    }
    if let Err(error) = keys.first(&meta.path) {
        errors.push(error);
        return skip_value(meta);
    }
    if key == "previous" {
        container.previous = Some(meta.value()?.parse()?);
        return Ok(());
    }
    let value: Expr = meta.value()?.parse()?;
    match (key.as_str(), literal(&value)) {
        ("name", Some(Lit::Str(name))) => container.name = Some(name.clone()),
        ("name", _) => errors.push(Error::new_spanned(
            value,
            "expected a string literal, as in `name = \"user.created\"`",
        )),
        (_, Some(Lit::Int(int))) => match int.base10_parse::<u32>() {
            Ok(number) => {
                container.version = Some(Version {
                    value: number,
                    span: int.span(),
                });
            }
            Err(error) => errors.push(Error::new(
                int.span(),
                format!("`version` must fit in a u32: {error}"),
            )),
        },
        _ => errors.push(Error::new_spanned(
            value,
            "expected an integer literal, as in `version = 2`",
        )),
    }
    Ok(())
}

/// Reads the attributes of the field named `ident`.
fn parse_field(ident: syn::Ident, field: &syn::Field, errors: &mut Vec<Error>) -> Field {
    let mut parsed = Field {
        ident,
        shape: Shape::of(&field.ty),
        ty: field.ty.clone(),
        serde: serde_attr::field(&field.attrs),
        rules: Vec::new(),
        idempotency_key: None,
        partition_key: None,
    };
    let mut keys = Keys::default();
    for attr in event_attrs(&field.attrs) {
        let result =
            attr.parse_nested_meta(|meta| field_key(&mut parsed, &mut keys, &meta, errors));
        errors.extend(result.err());
    }
    parsed
}

/// Reads one key of a field attribute: a validator, `idempotency_key` or `partition_key`.
fn field_key(
    field: &mut Field,
    keys: &mut Keys,
    meta: &ParseNestedMeta,
    errors: &mut Vec<Error>,
) -> syn::Result<()> {
    let path = &meta.path;
    let key = path_name(path);
    if !FIELD_KEYS.contains(&key.as_str()) {
        let known: Vec<String> = FIELD_KEYS.iter().map(|key| format!("`{key}`")).collect();
        errors.push(Error::new_spanned(
            path,
            format!(
                "unknown validator `{key}`; expected one of {}",
                known.join(", ")
            ),
        ));
        return skip_value(meta);
    }
    if let Err(error) = keys.first(path) {
        errors.push(error);
        return skip_value(meta);
    }
    let takes_value = matches!(key.as_str(), "length" | "range" | "pattern" | "custom");
    if !takes_value && !meta.input.is_empty() && !meta.input.peek(Token![,]) {
        errors.push(Error::new_spanned(path, format!("`{key}` takes no value")));
        return skip_value(meta);
    }
    let flag = |kind| Some((kind, path.to_token_stream()));
    let rule = match key.as_str() {
        "idempotency_key" => {
            field.idempotency_key = Some(path.span());
            None
        }
        "partition_key" => {
            field.partition_key = Some(path.span());
            None
        }
        "email" => flag(RuleKind::Email),
        "url" => flag(RuleKind::Url),
        "uuid" => flag(RuleKind::Uuid),
        "non_empty" => flag(RuleKind::NonEmpty),
        "nested" => flag(RuleKind::Nested),
        "length" | "range" => bounded_rule(&key, meta, errors)?,
        _ => valued_rule(&key, meta, errors)?,
    };
    field.rules.extend(rule.map(|(kind, source)| Rule {
        kind,
        span: path.span(),
        source,
    }));
    Ok(())
}

/// Reads `length(..)` or `range(..)`, as named by `key`, with the tokens to blame; `None` when a bound
/// was wrong, which is then the mistake reported.
fn bounded_rule(
    key: &str,
    meta: &ParseNestedMeta,
    errors: &mut Vec<Error>,
) -> syn::Result<Option<(RuleKind, TokenStream)>> {
    let path = &meta.path;
    let args = meta.input.fork().parse::<TokenTree>().ok();
    let source = quote!(#path #args);
    let reported = errors.len();
    let kind = if key == "length" {
        let (min, max) = bounds(meta, errors, length_bound)?;
        RuleKind::Length { min, max }
    } else {
        let (min, max) = bounds(meta, errors, range_bound)?;
        RuleKind::Range { min, max }
    };
    Ok((errors.len() == reported).then_some((kind, source)))
}

/// Reads `pattern = ".."` or `custom = path`, as named by `key`, with the tokens to blame; `None`
/// when the value is wrong.
fn valued_rule(
    key: &str,
    meta: &ParseNestedMeta,
    errors: &mut Vec<Error>,
) -> syn::Result<Option<(RuleKind, TokenStream)>> {
    let path = &meta.path;
    let value: Expr = meta.value()?.parse()?;
    let source = quote!(#path #value);
    let kind = match (key, value) {
        (
            "pattern",
            Expr::Lit(ExprLit {
                lit: Lit::Str(regex),
                ..
            }),
        ) => RuleKind::Pattern(regex),
        ("pattern", other) => {
            errors.push(Error::new_spanned(
                other,
                "expected a string literal, as in `pattern = \"^[A-Z]{3}$\"`",
            ));
            return Ok(None);
        }
        (_, function @ Expr::Path(_)) => RuleKind::Custom(function),
        (_, other) => {
            errors.push(Error::new_spanned(
                other,
                "expected a path to a function, as in `custom = crate::checks::sku`",
            ));
            return Ok(None);
        }
    };
    Ok(Some((kind, source)))
}

/// Reads the `(min = .., max = ..)` of `length` or `range`, each bound read by `bound`; a missing or
/// empty list means no bounds, which the checks report.
fn bounds<T>(
    meta: &ParseNestedMeta,
    errors: &mut Vec<Error>,
    bound: fn(Expr) -> syn::Result<T>,
) -> syn::Result<(Option<T>, Option<T>)> {
    let (mut min, mut max) = (None, None);
    let empty = match meta.input.fork().parse() {
        Ok(TokenTree::Group(group)) => group.stream().is_empty(),
        _ => false,
    };
    if empty || !meta.input.peek(syn::token::Paren) {
        skip_value(meta)?;
        return Ok((min, max));
    }
    let mut keys = Keys::default();
    meta.parse_nested_meta(|inner| {
        let slot = if inner.path.is_ident("min") {
            &mut min
        } else if inner.path.is_ident("max") {
            &mut max
        } else {
            errors.push(Error::new_spanned(
                &inner.path,
                format!(
                    "unknown bound `{}`; expected `min` or `max`",
                    path_name(&inner.path)
                ),
            ));
            return skip_value(&inner);
        };
        if let Err(error) = keys.first(&inner.path) {
            errors.push(error);
            return skip_value(&inner);
        }
        match bound(inner.value()?.parse()?) {
            Ok(value) => *slot = Some(value),
            Err(error) => errors.push(error),
        }
        Ok(())
    })?;
    Ok((min, max))
}

/// A bound of `length`: an integer literal that fits a `usize`.
fn length_bound(value: Expr) -> syn::Result<usize> {
    match literal(&value) {
        Some(Lit::Int(int)) => int.base10_parse(),
        _ => Err(Error::new_spanned(
            value,
            "expected a non-negative integer literal, as in `min = 1`",
        )),
    }
}

/// A bound of `range`: an integer or float literal, maybe negated.
fn range_bound(value: Expr) -> syn::Result<Number> {
    let (negative, inner) = match &value {
        Expr::Unary(unary) if matches!(unary.op, UnOp::Neg(_)) => (true, &*unary.expr),
        _ => (false, &value),
    };
    match literal(inner) {
        Some(lit @ (Lit::Int(_) | Lit::Float(_))) => Ok(Number {
            negative,
            lit: lit.clone(),
        }),
        _ => Err(Error::new_spanned(
            value,
            "expected a number literal, as in `min = -5` or `max = 2.5`",
        )),
    }
}

/// The literal `value` is, if it is one.
fn literal(value: &Expr) -> Option<&Lit> {
    match value {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        _ => None,
    }
}

/// Skips what follows a key up to the next comma, so parsing can go on after a mistake.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    while !meta.input.is_empty() && !meta.input.peek(Token![,]) {
        meta.input.parse::<TokenTree>()?;
    }
    Ok(())
}

/// `path` as written, such as `email` or `a::b`.
fn path_name(path: &Path) -> String {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    segments.join("::")
}

/// The keys seen so far in one place, to report duplicates.
#[derive(Default)]
struct Keys(Vec<String>);

impl Keys {
    /// Records `path`; an error if it was seen before.
    fn first(&mut self, path: &Path) -> syn::Result<()> {
        let key = path_name(path);
        if self.0.contains(&key) {
            return Err(Error::new_spanned(path, format!("duplicate `{key}`")));
        }
        self.0.push(key);
        Ok(())
    }
}
