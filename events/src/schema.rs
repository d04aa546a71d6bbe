//! JSON Schema (draft 2020-12) of event bodies, so that other languages, gateways and the HTTP
//! ingestion can check what they send. `#[derive(Event)]` and `#[derive(Validate)]` implement
//! [`JsonSchema`] from the fields' types, their serde names and presence, and their validators as
//! constraints; the common standard types implement it here. A field of a type that does not
//! implement it (or of a type parameter) accepts any JSON.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::Event;

/// The JSON Schema of a type's JSON form.
pub trait JsonSchema {
    /// The schema, without `$schema`: it nests in other schemas.
    fn json_schema() -> Value;
}

/// The JSON Schema document of event `E`'s body: the struct's schema with `$schema`, a title, and
/// the event type and version as `x-event-type` and `x-event-version`.
pub fn event_schema<E: Event + JsonSchema>() -> Value {
    let mut schema = E::json_schema();
    if let Value::Object(object) = &mut schema {
        object.insert(
            "$schema".into(),
            "https://json-schema.org/draft/2020-12/schema".into(),
        );
        object.insert("title".into(), E::NAME.into());
        object.insert("x-event-type".into(), E::NAME.into());
        object.insert("x-event-version".into(), E::VERSION.into());
    }
    schema
}

macro_rules! integer {
    ($($ty:ty),*) => {$(
        impl JsonSchema for $ty {
            fn json_schema() -> Value {
                json!({"type": "integer", "minimum": <$ty>::MIN, "maximum": <$ty>::MAX})
            }
        }
    )*};
}

integer!(i8, i16, i32, u8, u16, u32);

macro_rules! fixed {
    ($($ty:ty => $schema:tt),*) => {$(
        impl JsonSchema for $ty {
            fn json_schema() -> Value {
                json!($schema)
            }
        }
    )*};
}

// Past 32 bits the bounds of integers are not exact in every JSON reader: only the sign is stated.
fixed!(
    i64 => {"type": "integer"},
    i128 => {"type": "integer"},
    isize => {"type": "integer"},
    u64 => {"type": "integer", "minimum": 0},
    u128 => {"type": "integer", "minimum": 0},
    usize => {"type": "integer", "minimum": 0},
    f32 => {"type": "number"},
    f64 => {"type": "number"},
    bool => {"type": "boolean"},
    String => {"type": "string"},
    str => {"type": "string"},
    char => {"type": "string", "minLength": 1, "maxLength": 1},
    Value => {},
    uuid::Uuid => {"type": "string", "format": "uuid"}
);

impl<T: JsonSchema> JsonSchema for Option<T> {
    fn json_schema() -> Value {
        json!({"anyOf": [T::json_schema(), {"type": "null"}]})
    }
}

impl<T: JsonSchema + ?Sized> JsonSchema for Box<T> {
    fn json_schema() -> Value {
        T::json_schema()
    }
}

impl<T: JsonSchema + ?Sized> JsonSchema for Arc<T> {
    fn json_schema() -> Value {
        T::json_schema()
    }
}

impl<T: JsonSchema + ?Sized> JsonSchema for &T {
    fn json_schema() -> Value {
        T::json_schema()
    }
}

fn array<T: JsonSchema>(unique: bool) -> Value {
    let mut schema = json!({"type": "array", "items": T::json_schema()});
    if unique {
        schema["uniqueItems"] = true.into();
    }
    schema
}

impl<T: JsonSchema> JsonSchema for Vec<T> {
    fn json_schema() -> Value {
        array::<T>(false)
    }
}

impl<T: JsonSchema> JsonSchema for [T] {
    fn json_schema() -> Value {
        array::<T>(false)
    }
}

impl<T: JsonSchema> JsonSchema for VecDeque<T> {
    fn json_schema() -> Value {
        array::<T>(false)
    }
}

impl<T: JsonSchema> JsonSchema for BTreeSet<T> {
    fn json_schema() -> Value {
        array::<T>(true)
    }
}

impl<T: JsonSchema, S> JsonSchema for HashSet<T, S> {
    fn json_schema() -> Value {
        array::<T>(true)
    }
}

impl<T: JsonSchema> JsonSchema for BTreeMap<String, T> {
    fn json_schema() -> Value {
        json!({"type": "object", "additionalProperties": T::json_schema()})
    }
}

impl<T: JsonSchema, S> JsonSchema for HashMap<String, T, S> {
    fn json_schema() -> Value {
        json!({"type": "object", "additionalProperties": T::json_schema()})
    }
}
