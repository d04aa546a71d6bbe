//! Fuzzes the wire decoder with any field map a stream entry can hold: raw bytes, entries built
//! from the format's own field names and values that are nearly right (times, versions, JSON
//! bodies, the seed library's `data`), and valid entries then changed, with the hash made to match
//! when asked, so that the fuzzer reaches past the first check into every branch.
//!
//! Checks: decoding never panics; an accepted entry encodes back to the same event; a typed decode
//! of the body (deserialize, then validate) never panics either.

#![no_main]

use std::time::UNIX_EPOCH;

use arbitrary::Arbitrary;
use events::{Envelope, Event, hash_body};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Arbitrary)]
enum Input {
    /// Any field map.
    Raw(Vec<(Vec<u8>, Vec<u8>)>),
    /// An entry made of the format's names and values.
    Built {
        fields: Vec<(Name, FieldValue)>,
        fix_hash: bool,
    },
    /// A valid entry, then changed.
    Changed {
        event: Box<Parts>,
        changes: Vec<Change>,
        fix_hash: bool,
    },
}

/// What a valid entry is made of.
#[derive(Debug, Arbitrary)]
struct Parts {
    typed: bool,
    event_type: String,
    version: u32,
    origin: String,
    millis: u64,
    body: FieldValue,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    traceparent: Option<String>,
    partition_key: Option<String>,
    headers: Vec<(String, String)>,
}

/// A change to an entry's fields.
#[derive(Debug, Arbitrary)]
enum Change {
    Remove(usize),
    Replace(usize, FieldValue),
    Rename(usize, Name),
    Add(Name, FieldValue),
}

/// A field name: one of the format's, a header, or another.
#[derive(Debug, Arbitrary)]
enum Name {
    Id,
    Type,
    Version,
    Origin,
    Timestamp,
    Hash,
    Body,
    Correlation,
    Causation,
    Traceparent,
    Key,
    SeedData,
    Header(String),
    Other(Vec<u8>),
}

/// A field value, nearly right more often than random bytes would be.
#[derive(Debug, Arbitrary)]
enum FieldValue {
    Bytes(Vec<u8>),
    Utf8(String),
    EventType,
    Number(i64),
    Time {
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
        fraction: Option<u32>,
        zone: Option<i8>,
    },
    Json(Json),
    Order(Order),
    Seed {
        header: Vec<(String, Json)>,
        body: Json,
    },
}

/// Any JSON value, kept shallow by the fuzzer's input size.
#[derive(Debug, Arbitrary)]
enum Json {
    Null,
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// A body of the typed event below, valid or not.
#[derive(Debug, Arbitrary, Serialize)]
struct Order {
    order_id: String,
    total: f64,
    email: Option<String>,
    lines: Vec<OrderLine>,
}

#[derive(Debug, Arbitrary, Serialize)]
struct OrderLine {
    sku: String,
    quantity: u32,
}

/// A typed event with validators of several kinds, for the body's decode.
#[derive(Debug, Deserialize, Serialize, Event)]
#[event(name = "order.placed", version = 2)]
struct OrderPlaced {
    #[event(non_empty, length(max = 40))]
    order_id: String,
    #[event(range(min = 0.0, max = 1_000_000.0))]
    total: f64,
    #[event(email)]
    email: Option<String>,
    #[event(nested)]
    lines: Vec<Line>,
}

#[derive(Debug, Deserialize, Serialize, events::Validate)]
struct Line {
    #[event(pattern = "^[A-Z]{3}-[0-9]+$")]
    sku: String,
    #[event(range(min = 1, max = 99))]
    quantity: u32,
}

fuzz_target!(|input: Input| {
    let fields = match input {
        Input::Raw(fields) => fields,
        Input::Built { fields, fix_hash } => {
            let mut fields: Vec<(Vec<u8>, Vec<u8>)> = fields
                .into_iter()
                .map(|(name, value)| (name.bytes(), value.bytes()))
                .collect();
            if fix_hash {
                set_right_hash(&mut fields);
            }
            fields
        }
        Input::Changed {
            event,
            changes,
            fix_hash,
        } => {
            let mut fields = event.fields();
            for change in changes {
                change.apply(&mut fields);
            }
            if fix_hash {
                set_right_hash(&mut fields);
            }
            fields
        }
    };
    let Ok(envelope) = Envelope::decode(&fields) else {
        return;
    };
    let _ = envelope.decode_body::<OrderPlaced>();

    // What was accepted encodes back to the same event (times to the millisecond).
    let encoded: Vec<(String, String)> = envelope
        .fields()
        .into_iter()
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let again = Envelope::decode(&encoded)
        .unwrap_or_else(|error| panic!("re-encoded {envelope:?} does not decode: {error}"));
    let millis = |envelope: &Envelope| {
        envelope
            .timestamp
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_millis())
            .ok()
    };
    assert_eq!(millis(&again), millis(&envelope));
    assert_eq!(
        Envelope {
            timestamp: envelope.timestamp,
            ..again
        },
        envelope
    );
});

impl Parts {
    /// The fields of the envelope these parts make.
    fn fields(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let event_type = if self.typed {
            OrderPlaced::NAME.to_owned()
        } else {
            self.event_type
        };
        let body = String::from_utf8_lossy(&self.body.bytes()).into_owned();
        let mut envelope = Envelope::new(event_type, self.version.max(1), self.origin, body);
        envelope.timestamp = UNIX_EPOCH + std::time::Duration::from_millis(self.millis);
        envelope.correlation_id = self.correlation_id;
        envelope.causation_id = self.causation_id;
        envelope.traceparent = self.traceparent;
        envelope.partition_key = self.partition_key;
        envelope.headers = self.headers.into_iter().collect();
        envelope
            .fields()
            .into_iter()
            .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
            .collect()
    }
}

impl Change {
    fn apply(self, fields: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        let count = fields.len().max(1);
        match self {
            Self::Remove(index) if !fields.is_empty() => {
                fields.remove(index % count);
            }
            Self::Replace(index, value) if !fields.is_empty() => {
                fields[index % count].1 = value.bytes();
            }
            Self::Rename(index, name) if !fields.is_empty() => {
                fields[index % count].0 = name.bytes();
            }
            Self::Add(name, value) => fields.push((name.bytes(), value.bytes())),
            _ => {}
        }
    }
}

impl Name {
    fn bytes(self) -> Vec<u8> {
        let name = match self {
            Self::Id => "id",
            Self::Type => "type",
            Self::Version => "v",
            Self::Origin => "origin",
            Self::Timestamp => "ts",
            Self::Hash => "hash",
            Self::Body => "body",
            Self::Correlation => "corr",
            Self::Causation => "cause",
            Self::Traceparent => "traceparent",
            Self::Key => "key",
            Self::SeedData => "data",
            Self::Header(name) => return format!("h.{name}").into_bytes(),
            Self::Other(name) => return name,
        };
        name.as_bytes().to_vec()
    }
}

impl FieldValue {
    fn bytes(self) -> Vec<u8> {
        match self {
            Self::Bytes(bytes) => bytes,
            Self::Utf8(text) => text.into_bytes(),
            Self::EventType => OrderPlaced::NAME.as_bytes().to_vec(),
            Self::Number(number) => number.to_string().into_bytes(),
            Self::Time {
                year,
                month,
                day,
                hour,
                minute,
                second,
                fraction,
                zone,
            } => {
                let fraction = fraction
                    .map(|digits| format!(".{digits}"))
                    .unwrap_or_default();
                let zone = match zone {
                    None => "Z".to_owned(),
                    Some(hours) => format!("{hours:+03}:00"),
                };
                format!(
                    "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}{zone}"
                )
                .into_bytes()
            }
            Self::Json(json) => json.value().to_string().into_bytes(),
            Self::Order(order) => serde_json::to_vec(&order).unwrap_or_default(),
            Self::Seed { header, body } => {
                let header: Map<String, Value> = header
                    .into_iter()
                    .map(|(name, value)| (name, value.value()))
                    .collect();
                let data = serde_json::json!({
                    "pattern": "order.*",
                    "data": { "header": header, "body": body.value() },
                });
                data.to_string().into_bytes()
            }
        }
    }
}

impl Json {
    fn value(self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Bool(value) => Value::Bool(value),
            Self::Integer(value) => value.into(),
            Self::Float(value) => value.into(),
            Self::String(value) => value.into(),
            Self::Array(values) => values.into_iter().map(Self::value).collect(),
            Self::Object(members) => Value::Object(
                members
                    .into_iter()
                    .map(|(name, value)| (name, value.value()))
                    .collect(),
            ),
        }
    }
}

/// Sets `hash` to the hash of the entry's first `type` and `body`, when both are text.
fn set_right_hash(fields: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    let value = |name: &[u8]| {
        fields
            .iter()
            .find(|(field, _)| field == name)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    };
    let (Some(event_type), Some(body)) = (value(b"type"), value(b"body")) else {
        return;
    };
    let hash = hash_body(event_type, body).into_bytes();
    fields.retain(|(name, _)| name != b"hash");
    fields.push((b"hash".to_vec(), hash));
}
