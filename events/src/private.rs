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
    let valid = value.len() <= 254
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        && match value.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && local.len() <= 64
                    && !domain.contains('@')
                    && domain.contains('.')
                    && domain.split('.').all(|label| {
                        !label.is_empty() && !label.starts_with('-') && !label.ends_with('-')
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in ["a@b.co", "first.last+tag@example.co.uk"] {
            assert_eq!(email(ok), None, "{ok}");
        }
        for bad in [
            "", "a", "a@", "@b.co", "a@b", "a b@c.de", "a@b@c.de", "a@.co", "a@b..co", "a@-b.co",
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
