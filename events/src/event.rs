//! The `Event` trait and the rules for event type names.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Validate;

/// A domain event: a serializable struct with a type name, a schema version and validation.
///
/// Derive it with `#[derive(Event)]` and `#[event(name = "user.created", version = 1)]`; the name is
/// checked at compile time and field attributes generate [`Validate`].
pub trait Event: Validate + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The event type, lowercase dot-separated segments such as `user.created`.
    const NAME: &'static str;
    /// The schema version of the body, 1 or more.
    const VERSION: u32;

    /// The key that identifies a repeat of this event, taken from the fields marked
    /// `#[event(idempotency_key)]`, scoped by the event type; `None` means the consumer's
    /// [`Identity`](crate::Identity) identifies it (by default, the event id).
    fn idempotency_key(&self) -> Option<String> {
        None
    }

    /// The key that keeps events in order: events with the same key go to the same partition of a
    /// partitioned route and are handled one after another; taken from the fields marked
    /// `#[event(partition_key)]`.
    fn partition_key(&self) -> Option<String> {
        None
    }

    /// Reads a body written as `version` (at most [`VERSION`](Self::VERSION)) into this struct.
    /// By default every version is read as this one (fields added since need serde defaults).
    /// `#[event(previous = OlderStruct)]` reads older versions as the struct of the version before
    /// (itself reading its own older ones the same way) and converts them with
    /// `From<OlderStruct> for Self`: upcasting, chained from version to version.
    fn from_version(version: u32, body: &str) -> Result<Self, serde_json::Error> {
        let _ = version;
        serde_json::from_str(body)
    }
}

/// Checks that `name` is a valid event type: dot-separated segments of `[a-z0-9_-]`, none empty.
///
/// Returns what is wrong with it otherwise. `#[derive(Event)]` applies the same rule at compile time.
pub fn check_event_type(name: &str) -> Result<(), &'static str> {
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

#[cfg(test)]
mod tests {
    use super::check_event_type;

    #[test]
    fn accepts_lowercase_dotted_names() {
        for name in ["user", "user.created", "order_line.item-added.v2"] {
            assert_eq!(check_event_type(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        for name in [
            "",
            "User.created",
            "user..created",
            ".user",
            "user.",
            "user created",
            "usér",
        ] {
            assert!(check_event_type(name).is_err(), "{name}");
        }
    }
}
