//! Support for the code that `#[derive(Event)]` and `#[derive(Validate)]` generate. Not a public API:
//! it may change in any release.

use std::cmp::Ordering::{Equal, Greater, Less};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Display;

pub use regex::Regex;
pub use serde_json;
pub use std::sync::LazyLock;

use crate::{Validate, ValidationReport};

/// The path of `field` inside `parent`.
pub fn path(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

/// The path of element `index` of `field` inside `parent`.
pub fn indexed(parent: &str, field: &str, index: usize) -> String {
    format!("{}[{index}]", path(parent, field))
}

/// Anything with a length: strings (in characters) and collections (in elements).
pub trait Measure {
    /// Its length.
    fn measure(&self) -> usize;
    /// Whether it is empty; for strings, empty or only white space.
    fn is_blank(&self) -> bool {
        self.measure() == 0
    }
}

impl Measure for str {
    fn measure(&self) -> usize {
        self.chars().count()
    }
    fn is_blank(&self) -> bool {
        self.trim().is_empty()
    }
}

impl Measure for String {
    fn measure(&self) -> usize {
        self.as_str().measure()
    }
    fn is_blank(&self) -> bool {
        self.as_str().is_blank()
    }
}

impl<T: Measure + ?Sized> Measure for &T {
    fn measure(&self) -> usize {
        (**self).measure()
    }
    fn is_blank(&self) -> bool {
        (**self).is_blank()
    }
}

impl<T: Measure + ?Sized> Measure for Box<T> {
    fn measure(&self) -> usize {
        (**self).measure()
    }
    fn is_blank(&self) -> bool {
        (**self).is_blank()
    }
}

macro_rules! measure_by_len {
    ($($ty:ty => [$($gen:tt)*]),* $(,)?) => {
        $(impl<$($gen)*> Measure for $ty {
            fn measure(&self) -> usize {
                self.len()
            }
        })*
    };
}

measure_by_len! {
    [T] => [T],
    Vec<T> => [T],
    VecDeque<T> => [T],
    HashSet<T, S> => [T, S],
    BTreeSet<T> => [T],
    HashMap<K, V, S> => [K, V, S],
    BTreeMap<K, V> => [K, V],
}

/// Checks `#[event(email)]`: one `@` between a non-empty local part and a dotted domain.
pub fn email<S: AsRef<str> + ?Sized>(value: &S) -> Option<String> {
    let value = value.as_ref();
    // In ASCII, white space and control characters are the bytes that are not graphic.
    let plain = if value.is_ascii() {
        value.bytes().all(|byte| byte.is_ascii_graphic())
    } else {
        !value.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    // Looked at byte by byte: `@`, `.` and `-` are ASCII, never part of another character.
    let bytes = value.as_bytes();
    let valid = value.len() <= 254
        && plain
        && match bytes.iter().position(|&byte| byte == b'@') {
            Some(at) => {
                let (local, domain) = (&bytes[..at], &bytes[at + 1..]);
                !local.is_empty()
                    && local.len() <= 64
                    && !domain.contains(&b'@')
                    && domain.contains(&b'.')
                    && domain.split(|&byte| byte == b'.').all(|label| {
                        !label.is_empty() && !label.starts_with(b"-") && !label.ends_with(b"-")
                    })
            }
            None => false,
        };
    (!valid).then(|| "must be a valid email address".to_owned())
}

/// Checks `#[event(url)]`: a scheme, `://` and a host, with no white space.
pub fn url<S: AsRef<str> + ?Sized>(value: &S) -> Option<String> {
    let value = value.as_ref();
    let valid = match value.split_once("://") {
        Some((scheme, rest)) => {
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                && !rest.is_empty()
                && !rest.starts_with(['/', '?', '#'])
                && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    };
    (!valid).then(|| "must be a valid URL".to_owned())
}

/// Checks `#[event(uuid)]`: a UUID in its hyphenated, simple, braced or URN form.
pub fn uuid<S: AsRef<str> + ?Sized>(value: &S) -> Option<String> {
    uuid::Uuid::try_parse(value.as_ref())
        .is_err()
        .then(|| "must be a valid UUID".to_owned())
}

/// Checks `#[event(length(min = .., max = ..))]`.
pub fn length<T: Measure + ?Sized>(
    value: &T,
    min: Option<usize>,
    max: Option<usize>,
) -> Option<String> {
    let len = value.measure();
    let fails = min.is_some_and(|min| len < min) || max.is_some_and(|max| len > max);
    fails.then(|| match (min, max) {
        (Some(min), Some(max)) if min == max => {
            format!("length must be exactly {min} (it is {len})")
        }
        (Some(min), Some(max)) => format!("length must be between {min} and {max} (it is {len})"),
        (Some(min), None) => format!("length must be at least {min} (it is {len})"),
        (None, _) => format!(
            "length must be at most {} (it is {len})",
            max.unwrap_or_default()
        ),
    })
}

/// Checks `#[event(range(min = .., max = ..))]`, both bounds inclusive.
pub fn range<T: PartialOrd + Display>(value: &T, min: Option<T>, max: Option<T>) -> Option<String> {
    // Incomparable values (NaN) are outside any bound.
    let below = min
        .as_ref()
        .is_some_and(|min| !matches!(value.partial_cmp(min), Some(Greater | Equal)));
    let above = max
        .as_ref()
        .is_some_and(|max| !matches!(value.partial_cmp(max), Some(Less | Equal)));
    (below || above).then(|| match (&min, &max) {
        (Some(min), Some(max)) => format!("must be between {min} and {max} (it is {value})"),
        (Some(min), None) => format!("must be at least {min} (it is {value})"),
        (None, Some(max)) => format!("must be at most {max} (it is {value})"),
        (None, None) => unreachable!("a range without bounds cannot fail"),
    })
}

/// Checks `#[event(non_empty)]`: a string with more than white space, a collection with elements.
pub fn non_empty<T: Measure + ?Sized>(value: &T) -> Option<String> {
    value.is_blank().then(|| "must not be empty".to_owned())
}

/// Checks `#[event(pattern = "..")]`: the regex must match somewhere in the value (anchor it with `^$`
/// to match the whole value).
pub fn pattern<S: AsRef<str> + ?Sized>(value: &S, regex: &Regex) -> Option<String> {
    (!regex.is_match(value.as_ref())).then(|| format!("must match the pattern {}", regex.as_str()))
}

/// Checks `#[event(custom = path)]`: the function's error, if any, is the message.
pub fn custom<T: ?Sized, E: Display>(
    value: &T,
    check: impl FnOnce(&T) -> Result<(), E>,
) -> Option<String> {
    check(value).err().map(|error| error.to_string())
}

/// Checks `#[event(nested)]`: the inner value reports its own fields under `path`.
pub fn nested<T: Validate + ?Sized>(value: &T, path: &str, report: &mut ValidationReport) {
    value.validate_into(path, report);
}

/// Appends one field of an idempotency or partition key: its JSON form, then a unit separator.
pub fn push_key_part<T: serde::Serialize + ?Sized>(key: &mut String, part: &T) {
    match serde_json::to_string(part) {
        Ok(json) => key.push_str(&json),
        Err(error) => key.push_str(&error.to_string()),
    }
    key.push('\u{1f}');
}

/// Whether two names are equal, at compile time: the derive checks that `previous` names the
/// same event type.
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut at = 0;
    while at < a.len() {
        if a[at] != b[at] {
            return false;
        }
        at += 1;
    }
    true
}

/// The type whose schema a derived [`JsonSchema`](crate::JsonSchema) asks for: its own when it
/// implements the trait ([`KnownSchema`]), else any JSON ([`UnknownSchema`]), picked by method
/// resolution on `(&SchemaOf::<T>(PhantomData)).schema()`.
#[derive(Debug)]
pub struct SchemaOf<T: ?Sized>(pub std::marker::PhantomData<T>);

/// A type with a schema of its own.
pub trait KnownSchema {
    /// Its schema.
    fn schema(&self) -> serde_json::Value;
}

impl<T: crate::JsonSchema + ?Sized> KnownSchema for SchemaOf<T> {
    fn schema(&self) -> serde_json::Value {
        T::json_schema()
    }
}

/// A type without one: any JSON.
pub trait UnknownSchema {
    /// Any JSON.
    fn schema(&self) -> serde_json::Value;
}

impl<T: ?Sized> UnknownSchema for &SchemaOf<T> {
    fn schema(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

/// A struct's schema as the derive builds it: properties in order, the required ones, flattened
/// structs merged in.
#[derive(Debug)]
pub struct ObjectSchema {
    properties: serde_json::Map<String, serde_json::Value>,
    required: Vec<String>,
    closed: bool,
}

impl ObjectSchema {
    /// An empty object; `closed` when it denies unknown fields.
    pub fn new(closed: bool) -> Self {
        Self {
            properties: serde_json::Map::new(),
            required: Vec::new(),
            closed,
        }
    }

    /// Adds property `name` with `schema`, null allowed when `optional`.
    pub fn property(
        &mut self,
        name: &str,
        schema: serde_json::Value,
        optional: bool,
        required: bool,
    ) {
        let schema = if optional {
            serde_json::json!({"anyOf": [schema, {"type": "null"}]})
        } else {
            schema
        };
        self.properties.insert(name.to_owned(), schema);
        if required {
            self.required.push(name.to_owned());
        }
    }

    /// Merges the properties of a flattened struct's `schema`.
    pub fn flatten(&mut self, schema: serde_json::Value) {
        if let serde_json::Value::Object(mut object) = schema {
            if let Some(serde_json::Value::Object(properties)) = object.remove("properties") {
                self.properties.extend(properties);
            }
            if let Some(serde_json::Value::Array(required)) = object.remove("required") {
                self.required.extend(
                    required
                        .into_iter()
                        .filter_map(|name| name.as_str().map(str::to_owned)),
                );
            }
        }
    }

    /// The schema.
    pub fn build(self) -> serde_json::Value {
        let mut schema = serde_json::json!({"type": "object", "properties": self.properties});
        if !self.required.is_empty() {
            schema["required"] = self.required.into();
        }
        if self.closed {
            schema["additionalProperties"] = false.into();
        }
        schema
    }
}

/// `length(min, max)` on `schema`: items of an array, properties of an object, else characters.
pub fn schema_length(schema: &mut serde_json::Value, min: Option<usize>, max: Option<usize>) {
    let (low, high) = match schema.get("type").and_then(serde_json::Value::as_str) {
        Some("array") => ("minItems", "maxItems"),
        Some("object") => ("minProperties", "maxProperties"),
        _ => ("minLength", "maxLength"),
    };
    if let Some(min) = min {
        schema[low] = min.into();
    }
    if let Some(max) = max {
        schema[high] = max.into();
    }
}

/// `non_empty` on `schema`: an element, a property, or a character that is not white space.
pub fn schema_non_empty(schema: &mut serde_json::Value) {
    match schema.get("type").and_then(serde_json::Value::as_str) {
        Some("array") => schema["minItems"] = 1.into(),
        Some("object") => schema["minProperties"] = 1.into(),
        _ => {
            schema["minLength"] = 1.into();
            schema["pattern"] = "\\S".into();
        }
    }
}

/// Sets `key` of `schema` to `value`, such as `format` or `minimum`.
pub fn schema_set(schema: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    schema[key] = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in ["a@b.co", "first.last+tag@example.co.uk", "josé@bücher.de"] {
            assert_eq!(email(ok), None, "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@",
            "@b.co",
            "a@b",
            "a b@c.de",
            "a@b@c.de",
            "a@.co",
            "a@b..co",
            "a@-b.co",
            "a@b-.co",
            "a@b.co\n",
            "a\u{a0}b@c.de",
            "a@b.c\u{2028}o",
        ] {
            assert_eq!(
                email(bad).as_deref(),
                Some("must be a valid email address"),
                "{bad}"
            );
        }
    }

    #[test]
    fn urls() {
        for ok in [
            "https://example.com",
            "http://localhost:8080/x?y=1",
            "s3+x://bucket",
        ] {
            assert_eq!(url(ok), None, "{ok}");
        }
        for bad in [
            "",
            "example.com",
            "https://",
            "https:///path",
            "1http://x",
            "http://a b",
        ] {
            assert!(url(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn uuids() {
        assert_eq!(uuid("67e55044-10b1-426f-9247-bb680e5fe0c8"), None);
        assert!(uuid("67e55044-10b1-426f-9247").is_some());
    }

    #[test]
    fn lengths_count_characters_and_elements() {
        assert_eq!(length("héllo", Some(5), Some(5)), None);
        assert_eq!(
            length("ab", Some(3), None).unwrap(),
            "length must be at least 3 (it is 2)"
        );
        assert_eq!(
            length(&vec![1, 2, 3], None, Some(2)).unwrap(),
            "length must be at most 2 (it is 3)"
        );
        assert_eq!(
            length("abcd", Some(1), Some(3)).unwrap(),
            "length must be between 1 and 3 (it is 4)"
        );
    }

    #[test]
    fn ranges_are_inclusive() {
        assert_eq!(range(&5, Some(1), Some(5)), None);
        assert_eq!(
            range(&0, Some(1), Some(5)).unwrap(),
            "must be between 1 and 5 (it is 0)"
        );
        assert_eq!(
            range(&f64::NAN, Some(0.0), None).unwrap(),
            "must be at least 0 (it is NaN)"
        );
    }

    #[test]
    fn non_empty_strings_need_more_than_white_space() {
        assert!(non_empty(" \t").is_some());
        assert!(non_empty(&Vec::<u8>::new()).is_some());
        assert_eq!(non_empty("x"), None);
    }

    #[test]
    fn paths() {
        assert_eq!(path("", "email"), "email");
        assert_eq!(indexed("order", "items", 2), "order.items[2]");
    }
}
