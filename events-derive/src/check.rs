//! Checks that what the attributes ask for makes sense: the event name, the version, the bounds and
//! the patterns.

use quote::ToTokens;
use syn::Error;

use crate::model::{Container, Derive, Number, Rule, RuleKind};

/// Pushes onto `errors` every mistake in `container` that parsing let through.
pub(crate) fn check(container: &Container, errors: &mut Vec<Error>) {
    if container.derive == Derive::Event {
        match &container.name {
            None => errors.push(Error::new_spanned(
                &container.ident,
                "missing event name: add `#[event(name = \"..\")]`, such as \
                 `#[event(name = \"user.created\")]`",
            )),
            Some(name) => {
                if let Err(problem) = check_event_type(&name.value()) {
                    errors.push(Error::new_spanned(
                        name,
                        format!("invalid event name {:?}: it {problem}", name.value()),
                    ));
                }
            }
        }
    }
    if let Some(version) = &container.version
        && version.value == 0
    {
        errors.push(Error::new(version.span, "`version` must be 1 or more"));
    }
    for field in &container.fields {
        if let Some(span) = field.idempotency_key
            && container.derive == Derive::Validate
        {
            errors.push(Error::new(
                span,
                "`idempotency_key` is only for `#[derive(Event)]`; a `#[derive(Validate)]` struct \
                 has no idempotency key",
            ));
        }
        if let Some(span) = field.partition_key
            && container.derive == Derive::Validate
        {
            errors.push(Error::new(
                span,
                "`partition_key` is only for `#[derive(Event)]`; a `#[derive(Validate)]` struct \
                 has no partition key",
            ));
        }
        for rule in &field.rules {
            errors.extend(check_rule(rule));
        }
    }
}

/// The mistake in one validator, if any.
fn check_rule(rule: &Rule) -> Option<Error> {
    let at = |message: String| Some(Error::new_spanned(&rule.source, message));
    match &rule.kind {
        RuleKind::Length {
            min: None,
            max: None,
        } => at("`length` needs a bound, as in `length(min = 1, max = 64)`".to_owned()),
        RuleKind::Range {
            min: None,
            max: None,
        } => at("`range` needs a bound, as in `range(min = 0, max = 100)`".to_owned()),
        RuleKind::Length {
            min: Some(min),
            max: Some(max),
        } if min > max => at(format!(
            "`length` has `min` ({min}) greater than `max` ({max})"
        )),
        RuleKind::Range {
            min: Some(min),
            max: Some(max),
        } if greater(min, max) => at(format!(
            "`range` has `min` ({}) greater than `max` ({})",
            written(min),
            written(max)
        )),
        RuleKind::Pattern(regex) => regex::Regex::new(&regex.value())
            .err()
            .map(|error| Error::new_spanned(regex, format!("invalid regex: {error}"))),
        _ => None,
    }
}

/// Whether `min` is greater than `max`, comparing integers exactly.
fn greater(min: &Number, max: &Number) -> bool {
    match (min.int(), max.int()) {
        (Some(min), Some(max)) => min > max,
        _ => matches!((min.float(), max.float()), (Some(min), Some(max)) if min > max),
    }
}

/// `number` as written, such as `-5` or `2.5`.
fn written(number: &Number) -> String {
    let sign = if number.negative { "-" } else { "" };
    format!("{sign}{}", number.lit.to_token_stream())
}

/// Checks that `name` is a valid event type: dot-separated segments of `[a-z0-9_-]`, none empty.
///
/// The same rule, and the same messages, as `events::check_event_type`.
fn check_event_type(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.split('.').any(str::is_empty) {
        return Err("has an empty segment (segments are separated by single dots)");
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if !name.chars().all(|c| c == '.' || allowed(c)) {
        return Err("may only contain lowercase letters, digits, '_', '-' and '.'");
    }
    Ok(())
}
