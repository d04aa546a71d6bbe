//! The internal model of a derive input: what the attributes asked for, with the spans to blame.

use proc_macro2::{Span, TokenStream};
use syn::{Expr, Generics, Ident, Lit, LitStr, Type};

/// Which derive is being expanded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Derive {
    /// `#[derive(Event)]`: `Event` and `Validate`.
    Event,
    /// `#[derive(Validate)]`: `Validate` only.
    Validate,
}

impl Derive {
    /// How the user wrote it, for error messages.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Derive::Event => "#[derive(Event)]",
            Derive::Validate => "#[derive(Validate)]",
        }
    }
}

/// The struct being derived on.
pub(crate) struct Container {
    /// Which derive this is.
    pub(crate) derive: Derive,
    /// The type's name.
    pub(crate) ident: Ident,
    /// The type's generics, copied onto the impls.
    pub(crate) generics: Generics,
    /// `name = ".."`, the event type.
    pub(crate) name: Option<LitStr>,
    /// `version = N`.
    pub(crate) version: Option<Version>,
    /// `previous = Struct`: the struct of the version before, which older bodies are read as.
    pub(crate) previous: Option<syn::Path>,
    /// What `#[serde(..)]` on the struct does to its JSON form.
    pub(crate) serde: SerdeContainer,
    /// The named fields, in declaration order; empty when the input is not such a struct.
    pub(crate) fields: Vec<Field>,
}

/// `version = N` as parsed.
pub(crate) struct Version {
    /// The number.
    pub(crate) value: u32,
    /// Where it was written.
    pub(crate) span: Span,
}

/// One named field and its rules.
pub(crate) struct Field {
    /// The field's name.
    pub(crate) ident: Ident,
    /// The shape of its type, as far as the syntax tells.
    pub(crate) shape: Shape,
    /// Its type, and the type inside when it is an `Option`.
    pub(crate) ty: Type,
    /// What `#[serde(..)]` on the field does to its JSON form.
    pub(crate) serde: SerdeField,
    /// The validators, in the order written.
    pub(crate) rules: Vec<Rule>,
    /// Where `idempotency_key` was written, if it was.
    pub(crate) idempotency_key: Option<Span>,
    /// Where `partition_key` was written, if it was.
    pub(crate) partition_key: Option<Span>,
}

/// The struct attributes of serde that shape its JSON form.
#[derive(Default)]
pub(crate) struct SerdeContainer {
    /// `rename_all = ".."`.
    pub(crate) rename_all: Option<String>,
    /// `deny_unknown_fields`.
    pub(crate) deny_unknown_fields: bool,
    /// `default`: every field may be missing.
    pub(crate) default: bool,
}

/// The field attributes of serde that shape its JSON form.
#[derive(Default)]
pub(crate) struct SerdeField {
    /// `rename = ".."` (or its `deserialize` name).
    pub(crate) rename: Option<String>,
    /// `default`, or `skip_serializing_if`: the field may be missing.
    pub(crate) optional: bool,
    /// `skip` or `skip_deserializing`: never read.
    pub(crate) skip: bool,
    /// `flatten`: its fields are the struct's.
    pub(crate) flatten: bool,
}

/// What the syntax of a field's type tells about it.
pub(crate) struct Shape {
    /// `Option<T>`: the rules apply to the value inside, when there is one.
    pub(crate) optional: bool,
    /// `Vec<T>` (inside the `Option`, if any): `nested` applies to each element.
    pub(crate) sequence: bool,
    /// `f32` or `f64` (inside the `Option`, if any): integer bounds of `range` become floats.
    pub(crate) float: bool,
}

impl Shape {
    /// Reads the shape of `ty`.
    pub(crate) fn of(ty: &Type) -> Self {
        let (optional, ty) = match generic_argument(ty, "Option") {
            Some(inner) => (true, inner),
            None => (false, ty),
        };
        let float = matches!(last_segment(ty), Some(segment)
            if segment.arguments.is_none() && (segment.ident == "f32" || segment.ident == "f64"));
        Self {
            optional,
            sequence: generic_argument(ty, "Vec").is_some(),
            float,
        }
    }
}

/// The last path segment of `ty`, looking through parentheses and invisible groups.
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        Type::Group(group) => last_segment(&group.elem),
        Type::Paren(paren) => last_segment(&paren.elem),
        _ => None,
    }
}

/// `T` when `ty` is `Wrapper<T>` (by the last path segment) with a single type argument.
pub(crate) fn generic_argument<'a>(ty: &'a Type, wrapper: &str) -> Option<&'a Type> {
    let segment = last_segment(ty).filter(|segment| segment.ident == wrapper)?;
    match &segment.arguments {
        syn::PathArguments::AngleBracketed(args) if args.args.len() == 1 => match &args.args[0] {
            syn::GenericArgument::Type(inner) => Some(inner),
            _ => None,
        },
        _ => None,
    }
}

/// One validator on a field.
pub(crate) struct Rule {
    /// What it checks.
    pub(crate) kind: RuleKind,
    /// Where its key was written, so errors in the generated check point at it.
    pub(crate) span: Span,
    /// The rule as written, for error spans.
    pub(crate) source: TokenStream,
}

/// What a validator checks.
pub(crate) enum RuleKind {
    /// `email`.
    Email,
    /// `url`.
    Url,
    /// `uuid`.
    Uuid,
    /// `non_empty`.
    NonEmpty,
    /// `nested`.
    Nested,
    /// `length(min = N, max = M)`.
    Length {
        /// The inclusive lower bound.
        min: Option<usize>,
        /// The inclusive upper bound.
        max: Option<usize>,
    },
    /// `range(min = X, max = Y)`.
    Range {
        /// The inclusive lower bound.
        min: Option<Number>,
        /// The inclusive upper bound.
        max: Option<Number>,
    },
    /// `pattern = "regex"`.
    Pattern(LitStr),
    /// `custom = path::to_fn`.
    Custom(Expr),
}

/// A bound of `range`: a number literal, maybe negated.
pub(crate) struct Number {
    /// Whether a `-` precedes the literal.
    pub(crate) negative: bool,
    /// An integer or float literal.
    pub(crate) lit: Lit,
}

impl Number {
    /// Its value if it is an integer that fits an `i128`.
    pub(crate) fn int(&self) -> Option<i128> {
        match &self.lit {
            Lit::Int(int) => int.base10_parse::<i128>().ok().map(|v| self.sign(v)),
            _ => None,
        }
    }

    /// Its value as a float.
    pub(crate) fn float(&self) -> Option<f64> {
        match &self.lit {
            Lit::Int(int) => int.base10_parse::<f64>().ok().map(|v| self.sign(v)),
            Lit::Float(float) => float.base10_parse::<f64>().ok().map(|v| self.sign(v)),
            _ => None,
        }
    }

    /// `value` with this number's sign.
    fn sign<T: std::ops::Neg<Output = T>>(&self, value: T) -> T {
        if self.negative { -value } else { value }
    }
}
