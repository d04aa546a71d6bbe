//! The wire codec: one stream entry per event, as flat fields.
//!
//! An entry holds `id`, `type`, `v`, `origin`, `ts`, `hash` and `body`, and optionally `corr`,
//! `cause`, `traceparent` and `h.<name>` user headers. The decoder also reads the entries of the
//! TypeScript library this crate grew from: one field `data` holding
//! `{"pattern": .., "data": {"header": {..}, "body": ..}}`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::Event;
use crate::typescript::Decoded;

/// Prefix of the fields that carry user headers, such as `h.tenant`.
pub const HEADER_PREFIX: &str = "h.";

/// An event as it travels in a stream entry: its metadata and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique id of this event (a UUID for events published by this crate).
    pub id: String,
    /// Event type, such as `user.created`.
    pub event_type: String,
    /// Schema version of the body.
    pub version: u32,
    /// Name of the service that published it.
    pub origin: String,
    /// When it was published, to the millisecond.
    pub timestamp: SystemTime,
    /// Lowercase hex SHA-256 of the type, a NUL byte and the body: see [`hash_body`].
    pub hash: String,
    /// The body as JSON text.
    pub body: String,
    /// Id of the request or flow this event belongs to.
    pub correlation_id: Option<String>,
    /// Id of the event that caused this one.
    pub causation_id: Option<String>,
    /// W3C trace context of the span that published it.
    pub traceparent: Option<String>,
    /// The key that keeps events in order: the same key goes to the same partition, and a
    /// consumer handles events of one key one after another. Written as the field `key`.
    pub partition_key: Option<String>,
    /// User headers, written as `h.<name>` fields.
    pub headers: BTreeMap<String, String>,
    /// When set in the future, the event reaches its stream at that time, not before: a
    /// publisher keeps it meanwhile in a sorted set beside the stream, and consumers of the stream
    /// move it in when it is due. Not written in the entry.
    pub deliver_at: Option<SystemTime>,
}

/// What is wrong with a stream entry that is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A required field is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// The field's name.
        field: &'static str,
    },
    /// A field appears more than once.
    #[error("field `{field}` appears more than once")]
    DuplicateField {
        /// The field's name.
        field: String,
    },
    /// A field's value is not UTF-8 text.
    #[error("field `{field}` is not valid UTF-8")]
    NotUtf8 {
        /// The field's name.
        field: String,
    },
    /// A field's value is not what the format allows.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The field's name.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `hash` field does not match the type and body.
    #[error(
        "hash mismatch for event type `{event_type}`: the entry says {found}, its body hashes to {computed}"
    )]
    HashMismatch {
        /// The event's type.
        event_type: String,
        /// The hash in the entry.
        found: String,
        /// The hash of its type and body.
        computed: String,
    },
    /// The entry holds another event type than the one asked for.
    #[error("expected event type `{expected}`, found `{found}`")]
    TypeMismatch {
        /// The type asked for.
        expected: &'static str,
        /// The entry's type.
        found: String,
    },
    /// The entry's schema version is newer than the one this code knows.
    #[error(
        "event type `{event_type}` has version {found}, newer than the version {known} this code knows"
    )]
    UnknownVersion {
        /// The event's type.
        event_type: String,
        /// The entry's version.
        found: u32,
        /// The newest version this code knows.
        known: u32,
    },
    /// The body does not deserialize into the event's struct.
    #[error("body of event type `{event_type}` does not match its struct: {reason}")]
    Body {
        /// The event's type.
        event_type: String,
        /// The deserializer's message.
        reason: String,
    },
    /// The body deserializes but fails validation.
    #[error("event type `{event_type}` is invalid: {report}")]
    Invalid {
        /// The event's type.
        event_type: String,
        /// Every failing field.
        report: crate::ValidationReport,
    },
}

/// Lowercase hex SHA-256 of `event_type`, a NUL byte, and `body`.
pub fn hash_body(event_type: &str, body: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(event_type.as_bytes());
    hasher.update([0]);
    hasher.update(body.as_bytes());
    lowercase_hex(&hasher.finalize())
}

/// `bytes` in lowercase hex, written in one go (`hex::encode` collects it a char at a time).
pub(crate) fn lowercase_hex(bytes: &[u8]) -> String {
    let mut text = vec![0; 2 * bytes.len()];
    hex::encode_to_slice(bytes, &mut text).expect("twice as many hex digits as bytes");
    String::from_utf8(text).expect("hex digits are ASCII")
}

/// Where an entry's fields go as [`Envelope::write_fields`] writes them, each name with its value:
/// a list of arguments, or a command packed as RESP.
pub(crate) trait FieldWriter<'a> {
    /// A field whose value is text.
    fn text(&mut self, name: &'static str, value: &'a str);
    /// A field whose value is a number, written in decimal.
    fn number(&mut self, name: &'static str, value: u32);
    /// A field whose value is a time, written as [`format_timestamp`] writes it.
    fn time(&mut self, name: &'static str, value: SystemTime);
    /// A user header, written as the field `h.<name>`.
    fn header(&mut self, name: &'a str, value: &'a str);
}

/// Names and values one after the other, as an `XADD` takes them.
impl<'a> FieldWriter<'a> for Vec<Cow<'a, str>> {
    fn text(&mut self, name: &'static str, value: &'a str) {
        self.extend([name.into(), value.into()]);
    }

    fn number(&mut self, name: &'static str, value: u32) {
        self.extend([name.into(), value.to_string().into()]);
    }

    fn time(&mut self, name: &'static str, value: SystemTime) {
        self.extend([name.into(), format_timestamp(value).into()]);
    }

    fn header(&mut self, name: &'a str, value: &'a str) {
        self.extend([format!("{HEADER_PREFIX}{name}").into(), value.into()]);
    }
}

/// How many fields an entry has, and the bytes of their names and values (a number's at most).
#[derive(Debug, Default)]
pub(crate) struct FieldsSize {
    pub(crate) fields: usize,
    pub(crate) bytes: usize,
}

impl FieldWriter<'_> for FieldsSize {
    fn text(&mut self, name: &'static str, value: &str) {
        self.fields += 1;
        self.bytes += name.len() + value.len();
    }

    fn number(&mut self, name: &'static str, _: u32) {
        self.text(name, "4294967295");
    }

    fn time(&mut self, name: &'static str, _: SystemTime) {
        self.text(name, "2026-12-04T23:20:06.123Z");
    }

    fn header(&mut self, name: &str, value: &str) {
        self.fields += 1;
        self.bytes += HEADER_PREFIX.len() + name.len() + value.len();
    }
}

impl Envelope {
    /// A new envelope for a body of JSON text: a fresh UUID (v7, time-ordered), the current time
    /// (the id's, to the millisecond), and the body's hash.
    pub fn new(
        event_type: impl Into<String>,
        version: u32,
        origin: impl Into<String>,
        body: String,
    ) -> Self {
        let event_type = event_type.into();
        let id = uuid::Uuid::now_v7();
        // The event's time is its id's: one reading of the clock, to the millisecond, for both.
        let (seconds, nanos) = id
            .get_timestamp()
            .expect("a UUIDv7 holds its time")
            .to_unix();
        Self {
            id: id
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .to_owned(),
            hash: hash_body(&event_type, &body),
            event_type,
            version,
            origin: origin.into(),
            timestamp: UNIX_EPOCH + Duration::new(seconds, nanos),
            body,
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            partition_key: None,
            headers: BTreeMap::new(),
            deliver_at: None,
        }
    }

    /// The entry's fields, in the order they are written.
    pub fn fields(&self) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
        let mut flat = Vec::with_capacity(2 * self.fields_size().fields);
        self.write_fields(&mut flat);
        let mut flat = flat.into_iter();
        std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
    }

    /// How many fields its entry has, and their bytes.
    pub(crate) fn fields_size(&self) -> FieldsSize {
        let mut size = FieldsSize::default();
        self.write_fields(&mut size);
        size
    }

    /// The optional fields that are set, by name.
    fn optional_fields(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [
            ("corr", &self.correlation_id),
            ("cause", &self.causation_id),
            ("traceparent", &self.traceparent),
            ("key", &self.partition_key),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.as_ref()?)))
    }

    /// Writes the entry's fields to `out`, in the order they are written.
    pub(crate) fn write_fields<'a>(&'a self, out: &mut impl FieldWriter<'a>) {
        out.text("id", &self.id);
        out.text("type", &self.event_type);
        out.number("v", self.version);
        out.text("origin", &self.origin);
        out.time("ts", self.timestamp);
        out.text("hash", &self.hash);
        out.text("body", &self.body);
        for (name, value) in self.optional_fields() {
            out.text(name, value);
        }
        for (name, value) in &self.headers {
            out.header(name, value);
        }
    }

    /// About the bytes it takes in memory: the struct, its text, and the allocator's own per
    /// allocation. The batched publisher bounds its memory with this.
    pub fn memory_size(&self) -> usize {
        /// What the allocator adds to each allocation, on average.
        const PER_ALLOCATION: usize = 16;
        let text = |value: &String| value.capacity() + PER_ALLOCATION;
        let optional = [
            &self.correlation_id,
            &self.causation_id,
            &self.traceparent,
            &self.partition_key,
        ]
        .into_iter()
        .flatten()
        .map(text)
        .sum::<usize>();
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| text(name) + text(value) + 2 * std::mem::size_of::<String>())
            .sum::<usize>();
        std::mem::size_of::<Self>()
            + [
                &self.id,
                &self.event_type,
                &self.origin,
                &self.hash,
                &self.body,
            ]
            .into_iter()
            .map(text)
            .sum::<usize>()
            + optional
            + headers
    }

    /// Reads an envelope from an entry's field-value pairs, in this crate's format or the
    /// TypeScript library's. Never panics: anything malformed is a [`DecodeError`] that says what
    /// is wrong. A batch the TypeScript batched publisher packed into one entry is an error here:
    /// read it with [`decode_all`](Self::decode_all).
    pub fn decode<K: AsRef<[u8]>, V: AsRef<[u8]>>(fields: &[(K, V)]) -> Result<Self, DecodeError> {
        match Self::decode_entry(fields)? {
            Decoded::One(envelope) => {
                envelope.check_body()?;
                Ok(envelope)
            }
            Decoded::Packed(events) => Err(invalid(
                crate::typescript::DATA_FIELD,
                format!(
                    "a batch of {} events packed by the TypeScript batched publisher: read it with `Envelope::decode_all`",
                    events.len()
                ),
            )),
        }
    }

    /// Reads every event an entry holds: one, or each event of a batch the TypeScript batched
    /// publisher packed into one entry, in order, each decoded on its own. The outer error is for
    /// an entry that holds no readable event at all.
    pub fn decode_all<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        fields: &[(K, V)],
    ) -> Result<Vec<Result<Self, DecodeError>>, DecodeError> {
        Ok(match Self::decode_entry(fields)? {
            Decoded::One(envelope) => vec![envelope.check_body().map(|()| envelope)],
            Decoded::Packed(events) => events.into_iter().map(|event| event.envelope).collect(),
        })
    }

    /// The events of an entry, as [`decode_all`](Self::decode_all) reads them but for the check
    /// that a flat entry's body is JSON, for readers that parse the body anyway and so check it
    /// then, at no extra cost.
    pub(crate) fn decode_entry<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        fields: &[(K, V)],
    ) -> Result<Decoded, DecodeError> {
        let mut flat = FlatFields::default();
        for (name, value) in fields {
            flat.insert(name.as_ref(), value.as_ref())?;
        }
        match (flat.event_type.is_some(), flat.typescript_data.take()) {
            (false, Some(data)) => crate::typescript::decode(data),
            _ => flat.into_envelope().map(Decoded::One),
        }
    }

    /// Checks that the body is JSON.
    pub(crate) fn check_body(&self) -> Result<(), DecodeError> {
        serde_json::from_str::<serde::de::IgnoredAny>(&self.body)
            .map(|_| ())
            .map_err(body_not_json)
    }

    /// The body as the event struct `E`: checks the type and version, deserializes (an older
    /// version as [`Event::from_version`] says), and validates.
    pub fn decode_body<E: Event>(&self) -> Result<E, DecodeError> {
        if self.event_type != E::NAME {
            return Err(DecodeError::TypeMismatch {
                expected: E::NAME,
                found: self.event_type.clone(),
            });
        }
        if self.version > E::VERSION {
            return Err(DecodeError::UnknownVersion {
                event_type: self.event_type.clone(),
                found: self.version,
                known: E::VERSION,
            });
        }
        let event =
            E::from_version(self.version, &self.body).map_err(|error| match error.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    body_not_json(error)
                }
                _ => DecodeError::Body {
                    event_type: self.event_type.clone(),
                    reason: error.to_string(),
                },
            })?;
        event.validate().map_err(|report| DecodeError::Invalid {
            event_type: self.event_type.clone(),
            report,
        })?;
        Ok(event)
    }

    /// The value of user header `name`, if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// The fields of a flat entry as they are read, borrowed from the entry, before checking that the
/// required ones are there. Only what the envelope keeps is copied.
#[derive(Default)]
struct FlatFields<'a> {
    id: Option<&'a str>,
    event_type: Option<&'a str>,
    version: Option<&'a str>,
    origin: Option<&'a str>,
    timestamp: Option<&'a str>,
    hash: Option<&'a str>,
    body: Option<&'a str>,
    correlation_id: Option<&'a str>,
    causation_id: Option<&'a str>,
    traceparent: Option<&'a str>,
    partition_key: Option<&'a str>,
    typescript_data: Option<&'a str>,
    headers: BTreeMap<&'a str, &'a str>,
}

impl<'a> FlatFields<'a> {
    fn insert(&mut self, name: &'a [u8], value: &'a [u8]) -> Result<(), DecodeError> {
        let slot = match name {
            b"id" => &mut self.id,
            b"type" => &mut self.event_type,
            b"v" => &mut self.version,
            b"origin" => &mut self.origin,
            b"ts" => &mut self.timestamp,
            b"hash" => &mut self.hash,
            b"body" => &mut self.body,
            b"corr" => &mut self.correlation_id,
            b"cause" => &mut self.causation_id,
            b"traceparent" => &mut self.traceparent,
            b"key" => &mut self.partition_key,
            b"data" => &mut self.typescript_data,
            _ => return self.insert_header(name, value),
        };
        let name = String::from_utf8_lossy(name);
        if slot.is_some() {
            return Err(DecodeError::DuplicateField {
                field: name.into_owned(),
            });
        }
        *slot = Some(text(&name, value)?);
        Ok(())
    }

    /// Keeps `h.<name>` fields as headers; any other unknown field is ignored, so that newer
    /// producers can add fields.
    fn insert_header(&mut self, name: &'a [u8], value: &'a [u8]) -> Result<(), DecodeError> {
        let Some(header) = name.strip_prefix(HEADER_PREFIX.as_bytes()) else {
            return Ok(());
        };
        let field = String::from_utf8_lossy(name);
        let header = text(&field, header)?;
        if header.is_empty() {
            return Err(DecodeError::InvalidField {
                field: field.into_owned(),
                reason: "a header needs a name after `h.`".into(),
            });
        }
        if self.headers.insert(header, text(&field, value)?).is_some() {
            return Err(DecodeError::DuplicateField {
                field: field.into_owned(),
            });
        }
        Ok(())
    }

    fn into_envelope(self) -> Result<Envelope, DecodeError> {
        let event_type = required("type", self.event_type)?;
        check_received_type("type", event_type)?;
        let body = required("body", self.body)?;
        let computed = hash_body(event_type, body);
        if let Some(found) = self.hash
            && found != computed
        {
            return Err(DecodeError::HashMismatch {
                event_type: event_type.to_owned(),
                found: found.to_owned(),
                computed,
            });
        }
        let owned = |value: Option<&str>| value.map(str::to_owned);
        Ok(Envelope {
            id: required("id", self.id)?.to_owned(),
            version: parse_version("v", required("v", self.version)?)?,
            origin: required("origin", self.origin)?.to_owned(),
            timestamp: parse_timestamp("ts", required("ts", self.timestamp)?)?,
            hash: computed,
            body: body.to_owned(),
            event_type: event_type.to_owned(),
            correlation_id: owned(self.correlation_id),
            causation_id: owned(self.causation_id),
            traceparent: owned(self.traceparent),
            partition_key: owned(self.partition_key),
            headers: self
                .headers
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            deliver_at: None,
        })
    }
}

fn text<'a>(field: &str, value: &'a [u8]) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(value).map_err(|_| DecodeError::NotUtf8 {
        field: field.to_owned(),
    })
}

fn required<'a>(field: &'static str, value: Option<&'a str>) -> Result<&'a str, DecodeError> {
    match value {
        None => Err(DecodeError::MissingField { field }),
        Some("") => Err(invalid(field, "is empty")),
        Some(value) => Ok(value),
    }
}

/// Refuses an event type (read from `field`) with control characters, which no producer means
/// and which would reach logs, metrics labels and terminals as they are. Other types a consumer
/// does not know are its to skip or dead-letter, or to rename (`ConsumerBuilder::rename_type`).
pub(crate) fn check_received_type(field: &str, event_type: &str) -> Result<(), DecodeError> {
    if event_type.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("{event_type:?} has control characters"),
        ));
    }
    Ok(())
}

fn body_not_json(error: serde_json::Error) -> DecodeError {
    invalid("body", format!("not valid JSON: {error}"))
}

pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> DecodeError {
    DecodeError::InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// A schema version: a positive integer, or for the TypeScript library a version string whose major
/// part is the version (`"1.0.0"` is 1).
pub(crate) fn parse_version(field: &str, text: &str) -> Result<u32, DecodeError> {
    let major = text.split('.').next().unwrap_or_default();
    match major.parse::<u32>() {
        Ok(0) => Err(invalid(
            field,
            "version 0 does not exist (versions start at 1)",
        )),
        Ok(version) => Ok(version),
        Err(_) => Err(invalid(field, format!("`{text}` is not a version number"))),
    }
}

/// The last millisecond that RFC 3339 can write, in year 9999.
const LAST_MILLIS: u64 = 253_402_300_799_999;

/// `time` as RFC 3339 UTC to the millisecond, clamped to the years 1970 to 9999 that it can write.
pub(crate) fn format_timestamp(time: SystemTime) -> String {
    let last = UNIX_EPOCH + Duration::from_millis(LAST_MILLIS);
    // Sized at once: `to_string` would grow it three times.
    let mut text = String::with_capacity(24);
    write!(
        text,
        "{}",
        humantime::format_rfc3339_millis(time.clamp(UNIX_EPOCH, last))
    )
    .expect("a time from 1970 to 9999 formats");
    text
}

/// A time written as milliseconds since the Unix epoch, up to the end of year 9999.
pub(crate) fn timestamp_from_millis(field: &str, millis: u64) -> Result<SystemTime, DecodeError> {
    if millis > LAST_MILLIS {
        return Err(invalid(
            field,
            format!("{millis} ms since 1970 is after the year 9999"),
        ));
    }
    Ok(UNIX_EPOCH + Duration::from_millis(millis))
}

/// An RFC 3339 UTC time such as `2026-11-23T07:05:37.123Z`.
pub(crate) fn parse_timestamp(field: &str, text: &str) -> Result<SystemTime, DecodeError> {
    humantime::parse_rfc3339_weak(text).map_err(|error| {
        invalid(
            field,
            format!("`{text}` is not an RFC 3339 UTC time: {error}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        let mut envelope = Envelope::new("user.created", 2, "users", r#"{"id":7}"#.to_owned());
        envelope.correlation_id = Some("req-1".into());
        envelope.traceparent =
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        envelope.headers.insert("tenant".into(), "acme".into());
        envelope
    }

    fn owned(envelope: &Envelope) -> Vec<(String, String)> {
        envelope
            .fields()
            .into_iter()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect()
    }

    fn decode_pairs(pairs: &[(&str, &str)]) -> Result<Envelope, DecodeError> {
        Envelope::decode(pairs)
    }

    fn without(field: &str) -> Vec<(String, String)> {
        owned(&sample())
            .into_iter()
            .filter(|(name, _)| name != field)
            .collect()
    }

    fn with(field: &str, value: &str) -> Vec<(String, String)> {
        owned(&sample())
            .into_iter()
            .map(|(name, old)| {
                if name == field {
                    (name, value.to_owned())
                } else {
                    (name, old)
                }
            })
            .collect()
    }

    fn decode_owned(pairs: Vec<(String, String)>) -> Result<Envelope, DecodeError> {
        Envelope::decode(&pairs)
    }

    #[test]
    fn a_new_envelope_is_stamped_with_its_id_s_time_to_the_millisecond() {
        let before = SystemTime::now();
        let envelope = Envelope::new("user.created", 1, "test", "{}".into());
        let after = SystemTime::now();
        let id = uuid::Uuid::parse_str(&envelope.id).unwrap();
        let (seconds, nanos) = id.get_timestamp().unwrap().to_unix();
        assert_eq!(
            envelope.timestamp,
            UNIX_EPOCH + Duration::new(seconds, nanos)
        );
        assert_eq!(nanos % 1_000_000, 0);
        assert!(before - Duration::from_millis(1) <= envelope.timestamp);
        assert!(envelope.timestamp <= after);
        assert_eq!(envelope.id, id.to_string());
    }

    #[test]
    fn hash_is_sha256_of_type_nul_body() {
        // printf 'user.created\0{"id":7}' | sha256sum
        assert_eq!(
            hash_body("user.created", r#"{"id":7}"#),
            "129e4829324f280892437529cb5ba70b48ff71d97819149f830502451ca6537d"
        );
    }

    #[test]
    fn round_trips_every_field() {
        let envelope = sample();
        assert_eq!(decode_owned(owned(&envelope)), Ok(envelope));
    }

    #[test]
    fn writes_flat_readable_fields() {
        let fields = owned(&sample());
        let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "type",
                "v",
                "origin",
                "ts",
                "hash",
                "body",
                "corr",
                "traceparent",
                "h.tenant"
            ]
        );
        assert_eq!(fields[2].1, "2");
        assert!(
            fields[4].1.ends_with('Z') && fields[4].1.len() == "2026-11-23T07:05:37.123Z".len()
        );
    }

    #[test]
    fn each_required_field_is_named_when_missing() {
        for field in ["id", "type", "v", "origin", "ts", "body"] {
            assert_eq!(
                decode_owned(without(field)),
                Err(DecodeError::MissingField { field }),
                "{field}"
            );
        }
    }

    #[test]
    fn a_missing_hash_is_computed() {
        let decoded = decode_owned(without("hash")).unwrap();
        assert_eq!(decoded.hash, sample().hash);
    }

    #[test]
    fn a_wrong_hash_is_a_mismatch() {
        let error = decode_owned(with("hash", &"0".repeat(64))).unwrap_err();
        assert!(
            matches!(error, DecodeError::HashMismatch { ref event_type, .. } if event_type == "user.created")
        );
    }

    #[test]
    fn bad_json_body() {
        let error = decode_pairs(&[
            ("id", "1"),
            ("type", "a.b"),
            ("v", "1"),
            ("origin", "o"),
            ("ts", "2026-01-01T00:00:00.000Z"),
            ("body", "{not json"),
        ])
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("field `body` is invalid: not valid JSON"),
            "{error}"
        );
    }

    #[test]
    fn wrong_types_and_unknown_versions() {
        for (field, value, reason) in [
            ("v", "one", "`one` is not a version number"),
            ("v", "0", "version 0 does not exist (versions start at 1)"),
            ("v", "-1", "`-1` is not a version number"),
            ("ts", "yesterday", "`yesterday` is not an RFC 3339 UTC time"),
            ("id", "", "is empty"),
        ] {
            let error = decode_owned(with(field, value)).unwrap_err();
            let DecodeError::InvalidField {
                field: named,
                reason: said,
            } = &error
            else {
                panic!("{field}={value}: {error}");
            };
            assert_eq!(named, field);
            assert!(said.starts_with(reason), "{said}");
        }
    }

    #[test]
    fn non_utf8_values_and_header_names() {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = owned(&sample())
            .into_iter()
            .map(|(name, value)| (name.into_bytes(), value.into_bytes()))
            .collect();
        fields[1].1 = vec![0xff, 0xfe];
        assert_eq!(
            Envelope::decode(&fields),
            Err(DecodeError::NotUtf8 {
                field: "type".into()
            })
        );
        fields[1].1 = b"user.created".to_vec();
        fields.push((b"h.\xff".to_vec(), b"x".to_vec()));
        assert!(matches!(
            Envelope::decode(&fields),
            Err(DecodeError::NotUtf8 { .. })
        ));
    }

    #[test]
    fn duplicate_fields() {
        let mut fields = owned(&sample());
        fields.push(("type".into(), "other.type".into()));
        assert_eq!(
            decode_owned(fields),
            Err(DecodeError::DuplicateField {
                field: "type".into()
            })
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut fields = owned(&sample());
        let expected = decode_owned(fields.clone()).unwrap();
        fields.push(("future".into(), "x".into()));
        assert_eq!(decode_owned(fields), Ok(expected));
    }

    #[test]
    fn an_empty_entry_misses_its_type() {
        let none: [(&[u8], &[u8]); 0] = [];
        assert_eq!(
            Envelope::decode(&none),
            Err(DecodeError::MissingField { field: "type" })
        );
    }

    mod never_panics {
        use super::super::*;
        use proptest::prelude::*;

        fn field_name() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::sample::select(vec![
                    "id", "type", "v", "origin", "ts", "hash", "body", "data", "h.x", "h.", "corr"
                ])
                .prop_map(|name| name.as_bytes().to_vec()),
                prop::collection::vec(any::<u8>(), 0..8),
            ]
        }

        fn field_value() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..32),
                "[ -~]{0,40}".prop_map(String::into_bytes),
                Just(br#"{"data":{"header":{"id":"1","type":"a","origin":"o","timestamp":1},"body":{}}}"#.to_vec()),
                Just(b"2026-01-01T00:00:00Z".to_vec()),
                Just(b"1".to_vec()),
                Just(b"{}".to_vec()),
            ]
        }

        proptest! {
            #[test]
            fn on_arbitrary_field_maps(fields in prop::collection::vec((field_name(), field_value()), 0..12)) {
                // Decoding never panics; what it accepts in this crate's format encodes back to the
                // same event.
                if let Ok(envelope) = Envelope::decode(&fields)
                    && envelope.hash == hash_body(&envelope.event_type, &envelope.body)
                {
                    let fields: Vec<(String, String)> = envelope.fields()
                        .into_iter()
                        .map(|(name, value)| (name.into_owned(), value.into_owned()))
                        .collect();
                    let again = Envelope::decode(&fields).unwrap();
                    prop_assert_eq!(again.timestamp.duration_since(UNIX_EPOCH).unwrap().as_millis(),
                        envelope.timestamp.duration_since(UNIX_EPOCH).unwrap().as_millis());
                    prop_assert_eq!(Envelope { timestamp: envelope.timestamp, ..again }, envelope);
                }
            }
        }
    }
}
