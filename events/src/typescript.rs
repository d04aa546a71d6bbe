//! The wire format of the TypeScript library this crate grew from (`@logistically/events` v2).
//!
//! Its publisher writes an entry of one field, `data`, holding
//! `{"pattern": .., "data": {"header": {"id", "type", "origin", "timestamp", "hash", "version"},
//! "body": ..}}`, the type prefixed with a namespace (by default the publishing service's name) and
//! the hash a SHA-256 of the body's JSON. Its batched publisher packs many events into one such
//! entry: `data.header` is `{"type": "<prefix>batch", "messageCount", "batchId", "timestamp"}` and
//! `data.body.messages` lists `{"eventType", "body", "originalId", "timestamp", "envelope"}`, each
//! `envelope` an event's `{"header", "body"}`. Both shapes are read here, and the single one is
//! written, so that TypeScript consumers read what Rust services publish.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::envelope::{
    check_received_type, format_timestamp, hash_body, invalid, parse_timestamp, parse_version,
    timestamp_from_millis,
};
use crate::{DecodeError, Envelope};

/// The one field of a TypeScript entry.
pub(crate) const DATA_FIELD: &str = "data";

/// What an entry holds: one event, or the events the TypeScript batched publisher packed into it.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "matched at once where it is made; boxing would cost an allocation per entry"
)]
pub(crate) enum Decoded {
    /// An entry of one event.
    One(Envelope),
    /// A batch packed into one entry, in order.
    Packed(Vec<PackedEvent>),
}

/// One event of a packed batch.
#[derive(Debug)]
pub(crate) struct PackedEvent {
    /// The event, or what is wrong with it.
    pub(crate) envelope: Result<Envelope, DecodeError>,
    /// The event as a single TypeScript entry's `data` field: what its dead letter holds.
    pub(crate) data: String,
}

/// Reads the `data` field of a TypeScript entry. Never panics: anything malformed is a
/// [`DecodeError`] naming the field; a malformed event of a packed batch fails on its own.
pub(crate) fn decode(data: &str) -> Result<Decoded, DecodeError> {
    let entry: Entry<'_> = serde_json::from_str(data)
        .map_err(|error| invalid("data", format!("not a TypeScript-library event: {error}")))?;
    let probe: BatchProbe = serde_json::from_str(entry.data.header.get())
        .map_err(|error| invalid("data.header", error.to_string()))?;
    if probe.batch_id.is_none() && probe.message_count.is_none() {
        return decode_event(entry.data).map(Decoded::One);
    }
    let batch: BatchBody<'_> = serde_json::from_str(entry.data.body.get()).map_err(|error| {
        invalid(
            "data.body",
            format!("not a batch of the TypeScript batched publisher: {error}"),
        )
    })?;
    if batch.messages.is_empty() {
        return Err(invalid("data.body.messages", "a batch of no events"));
    }
    Ok(Decoded::Packed(
        batch.messages.into_iter().map(decode_packed).collect(),
    ))
}

/// One message of a packed batch: its `envelope` is the event.
fn decode_packed(message: &RawValue) -> PackedEvent {
    let packed = match serde_json::from_str::<PackedMessage<'_>>(message.get()) {
        Ok(packed) => packed,
        Err(error) => {
            return PackedEvent {
                envelope: Err(invalid("data.body.messages[]", error.to_string())),
                data: single_data("", message),
            };
        }
    };
    let envelope = serde_json::from_str::<Data<'_>>(packed.envelope.get())
        .map_err(|error| invalid("data.body.messages[].envelope", error.to_string()))
        .and_then(decode_event);
    PackedEvent {
        envelope,
        data: single_data(packed.event_type.unwrap_or_default(), packed.envelope),
    }
}

/// A single TypeScript entry's `data` for an event's `{"header", "body"}`.
fn single_data(pattern: &str, envelope: &RawValue) -> String {
    serde_json::to_string(&Outgoing {
        pattern,
        data: envelope,
    })
    .expect("a string and JSON text serialize")
}

fn decode_event(data: Data<'_>) -> Result<Envelope, DecodeError> {
    let header: Header = serde_json::from_str(data.header.get())
        .map_err(|error| invalid("data.header", error.to_string()))?;
    for (name, value) in [
        ("type", &header.event_type),
        ("id", &header.id),
        ("origin", &header.origin),
    ] {
        if value.is_empty() {
            return Err(invalid("data", format!("`data.header.{name}` is empty")));
        }
    }
    check_received_type("data.header.type", &header.event_type)?;
    let timestamp = match header.timestamp {
        Scalar::Number(millis) => timestamp_from_millis("data.header.timestamp", millis)?,
        Scalar::Text(text) => parse_timestamp("data.header.timestamp", &text)?,
    };
    let version = match header.version {
        None => 1,
        Some(Scalar::Number(number)) => parse_version("data.header.version", &number.to_string())?,
        Some(Scalar::Text(text)) => parse_version("data.header.version", &text)?,
    };
    let body = data.body.get().to_owned();
    Ok(Envelope {
        id: header.id,
        hash: hash_body(&header.event_type, &body),
        event_type: header.event_type,
        version,
        origin: header.origin,
        timestamp,
        body,
        correlation_id: header.correlation_id,
        causation_id: header.causation_id,
        traceparent: header.traceparent,
        partition_key: header.partition_key,
        headers: header.headers.unwrap_or_default(),
        deliver_at: None,
    })
}

/// The `data` field a TypeScript consumer reads for `envelope`: the type prefixed with
/// `namespace` (unless it is empty), the version as `"<v>.0.0"`, the hash a SHA-256 of the body
/// alone, and this crate's other metadata as extra header fields, which the TypeScript library
/// passes on and this crate reads back.
pub(crate) fn encode(envelope: &Envelope, namespace: &str) -> Result<String, serde_json::Error> {
    let body: &RawValue = serde_json::from_str(&envelope.body)?;
    let event_type = if namespace.is_empty() {
        envelope.event_type.clone()
    } else {
        format!("{namespace}.{}", envelope.event_type)
    };
    let header = OutgoingHeader {
        id: &envelope.id,
        event_type: &event_type,
        origin: &envelope.origin,
        timestamp: format_timestamp(envelope.timestamp),
        hash: crate::envelope::lowercase_hex(&Sha256::digest(body.get().as_bytes())),
        version: format!("{}.0.0", envelope.version),
        correlation_id: envelope.correlation_id.as_deref(),
        causation_id: envelope.causation_id.as_deref(),
        traceparent: envelope.traceparent.as_deref(),
        partition_key: envelope.partition_key.as_deref(),
        headers: (!envelope.headers.is_empty()).then_some(&envelope.headers),
    };
    serde_json::to_string(&Outgoing {
        pattern: &envelope.event_type,
        data: OutgoingEvent { header, body },
    })
}

/// `{"pattern": .., "data": {"header": .., "body": ..}}`, as read.
#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    data: Data<'a>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow)]
    header: &'a RawValue,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// What tells a batch's header from an event's.
#[derive(Deserialize)]
struct BatchProbe {
    #[serde(rename = "batchId", default)]
    batch_id: Option<serde::de::IgnoredAny>,
    #[serde(rename = "messageCount", default)]
    message_count: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct PackedMessage<'a> {
    #[serde(rename = "eventType", default, borrow)]
    event_type: Option<&'a str>,
    #[serde(borrow)]
    envelope: &'a RawValue,
}

/// An event's header, with the fields this crate adds when it writes one.
#[derive(Deserialize)]
struct Header {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    origin: String,
    timestamp: Scalar,
    #[serde(default)]
    version: Option<Scalar>,
    #[serde(rename = "correlationId", default)]
    correlation_id: Option<String>,
    #[serde(rename = "causationId", default)]
    causation_id: Option<String>,
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(rename = "partitionKey", default)]
    partition_key: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
}

/// A header value written as a string or a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Number(u64),
    Text(String),
}

#[derive(Serialize)]
struct Outgoing<'a, D> {
    pattern: &'a str,
    data: D,
}

#[derive(Serialize)]
struct OutgoingEvent<'a> {
    header: OutgoingHeader<'a>,
    body: &'a RawValue,
}

#[derive(Serialize)]
struct OutgoingHeader<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    origin: &'a str,
    timestamp: String,
    hash: String,
    version: String,
    #[serde(rename = "correlationId", skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(rename = "causationId", skip_serializing_if = "Option::is_none")]
    causation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(rename = "partitionKey", skip_serializing_if = "Option::is_none")]
    partition_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<&'a BTreeMap<String, String>>,
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn one(data: &str) -> Result<Envelope, DecodeError> {
        match decode(data)? {
            Decoded::One(envelope) => Ok(envelope),
            Decoded::Packed(_) => panic!("packed: {data}"),
        }
    }

    fn packed(data: &str) -> Vec<PackedEvent> {
        match decode(data).unwrap() {
            Decoded::Packed(events) => events,
            Decoded::One(envelope) => panic!("one: {envelope:?}"),
        }
    }

    const SINGLE: &str = r#"{"pattern":"user.created","data":{"header":{"id":"9b2c","type":"user-service.user.created","origin":"user-service","timestamp":"2024-05-01T10:00:00.123Z","hash":"abc","version":"1.0.0"},"body":{"userId":"123","name":"John"}}}"#;

    #[test]
    fn reads_a_single_event() {
        let envelope = one(SINGLE).unwrap();
        assert_eq!(envelope.id, "9b2c");
        assert_eq!(envelope.event_type, "user-service.user.created");
        assert_eq!(envelope.origin, "user-service");
        assert_eq!(envelope.version, 1);
        assert_eq!(envelope.body, r#"{"userId":"123","name":"John"}"#);
        assert_eq!(
            envelope.hash,
            hash_body(&envelope.event_type, &envelope.body)
        );
        assert_eq!(
            format_timestamp(envelope.timestamp),
            "2024-05-01T10:00:00.123Z"
        );
    }

    #[test]
    fn numeric_timestamps_and_versions() {
        let data = r#"{"pattern":"x","data":{"header":{"id":"1","type":"a.b","origin":"o","timestamp":1714557600123,"version":3},"body":[1,2]}}"#;
        let envelope = one(data).unwrap();
        assert_eq!(envelope.version, 3);
        assert_eq!(
            envelope.timestamp,
            UNIX_EPOCH + Duration::from_millis(1_714_557_600_123)
        );
    }

    #[test]
    fn malformed_entries_say_what_is_wrong() {
        for (data, expected) in [
            ("not json", "not a TypeScript-library event"),
            (
                r#"{"data":{"header":{"id":"1","origin":"o","timestamp":1},"body":{}}}"#,
                "missing field `type`",
            ),
            (
                r#"{"data":{"header":{"id":"1","type":"a","origin":"o","timestamp":1}}}"#,
                "missing field `body`",
            ),
            (
                r#"{"data":{"header":{"id":"1","type":"a","timestamp":1},"body":{}}}"#,
                "missing field `origin`",
            ),
            (
                r#"{"data":{"header":{"id":1,"type":"a","origin":"o","timestamp":1},"body":{}}}"#,
                "invalid type",
            ),
            (
                r#"{"data":{"header":{"id":"1","type":"","origin":"o","timestamp":1},"body":{}}}"#,
                "`data.header.type` is empty",
            ),
            (
                r#"{"data":{"header":{"id":"1","type":"a\u001b[2J","origin":"o","timestamp":1},"body":{}}}"#,
                r#"field `data.header.type` is invalid: "a\u{1b}[2J" has control characters"#,
            ),
            (
                r#"{"data":{"header":{"id":"1","type":"a","origin":"","timestamp":1},"body":{}}}"#,
                "`data.header.origin` is empty",
            ),
            (
                r#"{"data":{"header":{"id":"1","type":"a","origin":"o","timestamp":"soon"},"body":{}}}"#,
                "`soon` is not an RFC 3339",
            ),
            (
                r#"{"data":{"header":{"id":"1","type":"a","origin":"o","timestamp":1e30},"body":{}}}"#,
                "data did not match any variant",
            ),
            (
                r#"{"data":{"header":{"id":"1","type":"a","origin":"o","timestamp":253402300800000},"body":{}}}"#,
                "after the year 9999",
            ),
            (
                r#"{"data":{"header":{"id":"1","type":"a","origin":"o","timestamp":1,"version":"x"},"body":{}}}"#,
                "not a version number",
            ),
            (
                r#"{"data":{"header":"h","body":{}}}"#,
                "field `data.header` is invalid",
            ),
            (
                r#"{"data":{"header":{"batchId":"b","messageCount":0},"body":{"messages":[]}}}"#,
                "a batch of no events",
            ),
            (
                r#"{"data":{"header":{"batchId":"b"},"body":{"events":[]}}}"#,
                "not a batch of the TypeScript batched publisher",
            ),
        ] {
            let error = one(data).unwrap_err().to_string();
            assert!(error.contains(expected), "{data}: {error}");
        }
    }

    #[test]
    fn a_packed_batch_is_one_event_per_message_each_decoded_on_its_own() {
        let data = r#"{"pattern":"defaultbatch","data":{"header":{"type":"defaultbatch","messageCount":3,"batchId":"f00d","timestamp":"2026-12-02T10:00:00.000Z"},"body":{"messages":[
            {"eventType":"user.created","body":{"n":1},"originalId":"a","timestamp":"2026-12-02T10:00:00.000Z","envelope":{"header":{"id":"a","type":"users.user.created","origin":"users","timestamp":"2026-12-02T10:00:00.000Z","hash":"h","version":"1.0.0"},"body":{"n":1}}},
            {"eventType":"user.created","envelope":{"header":{"id":"b","type":"users.user.created","origin":"users"},"body":{"n":2}}},
            {"eventType":"user.created"}
        ]}}}"#;
        let events = packed(data);
        assert_eq!(events.len(), 3);
        let first = events[0].envelope.as_ref().unwrap();
        assert_eq!(
            (
                first.id.as_str(),
                first.event_type.as_str(),
                first.body.as_str()
            ),
            ("a", "users.user.created", r#"{"n":1}"#)
        );
        // Each event's dead letter is a single TypeScript entry of it.
        assert_eq!(one(&events[0].data).unwrap(), *first);
        let second = events[1].envelope.as_ref().unwrap_err().to_string();
        assert!(second.contains("missing field `timestamp`"), "{second}");
        assert!(events[1].data.contains(r#""body":{"n":2}"#));
        let third = events[2].envelope.as_ref().unwrap_err().to_string();
        assert!(third.contains("missing field `envelope`"), "{third}");
        assert!(events[2].data.contains("user.created"));
    }

    fn sample() -> Envelope {
        let mut envelope = Envelope::new(
            "user.created",
            2,
            "users",
            r#"{"name":"Ada","tags":["a"]}"#.to_owned(),
        );
        envelope.correlation_id = Some("req-1".into());
        envelope.causation_id = Some("cause-1".into());
        envelope.traceparent =
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        envelope.partition_key = Some("ada".into());
        envelope.headers.insert("tenant".into(), "acme".into());
        envelope
    }

    #[test]
    fn writes_what_the_typescript_consumer_reads() {
        let envelope = sample();
        let data = encode(&envelope, "user-service").unwrap();
        let value: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(value["pattern"], "user.created");
        let header = &value["data"]["header"];
        assert_eq!(header["id"], envelope.id.as_str());
        assert_eq!(header["type"], "user-service.user.created");
        assert_eq!(header["origin"], "users");
        assert_eq!(header["version"], "2.0.0");
        assert_eq!(header["timestamp"], format_timestamp(envelope.timestamp));
        // printf '{"name":"Ada","tags":["a"]}' | sha256sum
        assert_eq!(
            header["hash"],
            "7debe74969165540ad20dfdf8e17751c5d585a9fdefab20ae45ad1c535f3af6b"
        );
        assert_eq!(value["data"]["body"]["tags"][0], "a");
        // The TypeScript consumer checks these are strings.
        for name in ["id", "type", "origin", "timestamp", "hash", "version"] {
            assert!(header[name].is_string(), "{name}");
        }
    }

    #[test]
    fn what_it_writes_reads_back_whole() {
        let envelope = sample();
        let decoded = one(&encode(&envelope, "").unwrap()).unwrap();
        assert_eq!(decoded, envelope);
        let namespaced = one(&encode(&envelope, "user-service").unwrap()).unwrap();
        assert_eq!(namespaced.event_type, "user-service.user.created");
        assert_eq!(namespaced.body, envelope.body);
    }

    #[test]
    fn a_body_that_is_not_json_is_not_written() {
        let mut envelope = sample();
        envelope.body = "{not json".into();
        assert!(encode(&envelope, "").is_err());
    }
}
