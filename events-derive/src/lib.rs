//! `#[derive(Event)]` and `#[derive(Validate)]` for the `events` crate.
//!
//! Each derive reads its input into a model (`attr`), checks it (`check`) and generates the impls
//! (`emit`). Every mistake is reported at once, each at the attribute that caused it, next to stub
//! impls that keep the rest of the user's crate compiling.

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

use crate::model::Derive;

mod attr;
mod check;
mod emit;
mod model;
mod schema;
mod serde_attr;

/// Derives `events::Event` and `events::Validate` for a struct with named fields.
///
/// On the struct, `#[event(name = "user.created", version = 2)]`: `name` is required and follows
/// `events::check_event_type`; `version` is 1 or more and defaults to 1. `previous = UserCreatedV1`
/// names the struct of an older version of the same event type: bodies of older versions are read
/// as it (and so on down its own `previous`) and converted with `From<UserCreatedV1>`, which the
/// struct implements; both are checked at compile time.
///
/// On fields, in one `#[event(..)]` or spread over several, checked in the order written:
///
/// - `email`, `url`, `uuid`: the string is a valid email address, URL or UUID.
/// - `length(min = 1, max = 64)`: the length of a string (in characters) or a collection; either
///   bound may be left out, not both.
/// - `range(min = -5, max = 2.5)`: a number within inclusive bounds; either bound may be left out,
///   not both. Integer bounds are written as floats on `f32` and `f64` fields.
/// - `non_empty`: a string with more than white space, a collection with elements.
/// - `pattern = "^[A-Z]{3}$"`: the regex, checked at compile time, matches the string.
/// - `custom = path::to_fn`: a `fn(&T) -> Result<(), E>` with `E: Display`, the error being the
///   message; `&T` may coerce, so a `String` field takes a `fn(&str)`.
/// - `nested`: the field implements `Validate`; its failures are reported under `field.inner`, or
///   `field[i].inner` for each element of a `Vec`.
/// - `idempotency_key`: the field is part of `Event::idempotency_key`, which combines the marked
///   fields in declaration order.
/// - `partition_key`: the field is part of `Event::partition_key`, which combines the marked fields
///   in declaration order; events with the same partition key are handled in order.
///
/// On an `Option<T>` field the validators apply to the value inside, and `None` passes. Failures are
/// reported with the Rust field names as paths.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input, Derive::Event).into()
}

/// Derives `events::Validate` for a struct with named fields, such as one nested in an event.
///
/// Takes the same field attributes as `#[derive(Event)]` except `idempotency_key` and
/// `partition_key`, and no struct attribute.
#[proc_macro_derive(Validate, attributes(event))]
pub fn derive_validate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input, Derive::Validate).into()
}

/// Parses, checks and emits; on mistakes, stub impls and every error.
fn expand(input: &DeriveInput, derive: Derive) -> proc_macro2::TokenStream {
    let mut errors = Vec::new();
    let container = attr::parse(input, derive, &mut errors);
    check::check(&container, &mut errors);
    let Some(error) = errors.into_iter().reduce(|mut all, error| {
        all.combine(error);
        all
    }) else {
        return emit::impls(&container);
    };
    let mut output = emit::stubs(&container);
    output.extend(error.to_compile_error());
    output
}
