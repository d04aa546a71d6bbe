//! An event's write: the arguments of its command, and the requests that carry a round trip's
//! commands, packed by hand for a connection of the publisher's own or as a redis-rs pipeline.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::direct_connection::DirectConnection;
use crate::envelope::{FieldWriter, HEADER_PREFIX, format_timestamp};
use crate::routing::Format;
use crate::{Destination, Envelope, Error, Result, keys, resp, typescript};

/// The most fields of a delayed event: its move into the stream (a script) passes them as
/// arguments, which Lua limits.
const MOST_DELAYED_FIELDS: usize = 3_000;

/// The write of one envelope, as its command's arguments: `XADD <stream> [trim] * <fields>` in
/// its destination's format or, for an event delayed past the time it is written, `ZADD` into the
/// stream's delayed set (see `lua/move_due.lua`).
pub(crate) struct Write<'a> {
    arguments: Vec<Cow<'a, str>>,
    /// Whether the event is delayed.
    pub(crate) delayed: bool,
}

impl<'a> Write<'a> {
    /// The write of `envelope` to `destination` at `now`.
    pub(crate) fn of(
        destination: &'a Destination<'_>,
        envelope: &'a Envelope,
        now: SystemTime,
    ) -> Result<Self> {
        if let Some(at) = envelope.deliver_at.filter(|at| *at > now) {
            let mut fields = Vec::new();
            push_entry_fields(destination, envelope, &mut fields)?;
            if fields.len() > 2 * MOST_DELAYED_FIELDS {
                return Err(Error::Config(format!(
                    "event `{}`: a delayed event takes at most {MOST_DELAYED_FIELDS} fields \
                     (headers included), and this one has {}",
                    envelope.event_type,
                    fields.len() / 2
                )));
            }
            let trim = destination
                .trim
                .map_or_else(Default::default, |trim| trim.delayed_arguments());
            let member: Vec<Cow<'_, str>> =
                trim.into_iter().map(Cow::Owned).chain(fields).collect();
            let member = serde_json::to_string(&member).expect("strings serialize");
            let due = at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let arguments = vec![
                "ZADD".into(),
                keys::delayed_events(&destination.stream).into(),
                u64::try_from(due).unwrap_or(u64::MAX).to_string().into(),
                member.into(),
            ];
            return Ok(Self {
                arguments,
                delayed: true,
            });
        }
        let trim = destination.trim.as_ref().map(|trim| trim.arguments(now));
        let mut arguments = Vec::with_capacity(6 + 2 * (11 + envelope.headers.len()));
        arguments.extend(["XADD".into(), destination.stream.as_ref().into()]);
        arguments.extend(trim.into_iter().flatten().map(Cow::Owned));
        arguments.push("*".into());
        push_entry_fields(destination, envelope, &mut arguments)?;
        Ok(Self {
            arguments,
            delayed: false,
        })
    }

    /// The write as a redis-rs command.
    pub(crate) fn command(&self) -> redis::Cmd {
        // Sized at once: a command grows its buffer by doubling as arguments come.
        let mut command = redis::Cmd::with_capacity(
            self.arguments.len(),
            self.arguments.iter().map(|argument| argument.len()).sum(),
        );
        for argument in &self.arguments {
            command.arg(argument.as_ref());
        }
        command
    }
}

/// Appends the entry's fields and values to `out`, one after the other, in the destination's
/// format.
fn push_entry_fields<'a>(
    destination: &Destination<'_>,
    envelope: &'a Envelope,
    out: &mut Vec<Cow<'a, str>>,
) -> Result<()> {
    match &destination.format {
        Format::Native => envelope.write_fields(out),
        Format::TypeScript { namespace } => {
            let data =
                typescript::encode(envelope, namespace).map_err(|source| Error::Serialize {
                    event_type: envelope.event_type.clone(),
                    source,
                })?;
            out.extend([typescript::DATA_FIELD.into(), data.into()]);
        }
    }
    Ok(())
}

/// A round trip's commands, as they go out.
pub(crate) enum Request<'a> {
    /// Packed as RESP, for `to`, a connection of the publisher's own.
    Packed {
        to: &'a DirectConnection,
        bytes: Vec<u8>,
        commands: usize,
        /// The last time packed, and its text.
        last_time: Option<(SystemTime, String)>,
    },
    /// A redis-rs pipeline, for any other connection.
    Pipeline(redis::Pipeline),
}

impl<'a> Request<'a> {
    /// An empty request: packed by hand for `direct` when there is one.
    pub(crate) fn new(direct: Option<&'a DirectConnection>) -> Self {
        match direct {
            Some(to) => Self::Packed {
                to,
                bytes: Vec::new(),
                commands: 0,
                last_time: None,
            },
            None => Self::Pipeline(redis::pipe()),
        }
    }

    /// Adds the write of `envelope` to `destination` at `now`; tells whether the event is
    /// delayed. A packed request takes the `XADD` of an event in the native format straight from
    /// the envelope, without its arguments in between.
    pub(crate) fn add(
        &mut self,
        destination: &Destination<'_>,
        envelope: &Envelope,
        now: SystemTime,
    ) -> Result<bool> {
        let delayed = envelope.deliver_at.is_some_and(|at| at > now);
        match self {
            Self::Packed {
                bytes,
                commands,
                last_time,
                ..
            } if !delayed && destination.format == Format::Native => {
                pack_xadd(bytes, last_time, destination, envelope, now);
                *commands += 1;
                Ok(false)
            }
            Self::Packed {
                bytes, commands, ..
            } => {
                let write = Write::of(destination, envelope, now)?;
                resp::pack_command(&write.arguments, bytes);
                *commands += 1;
                Ok(write.delayed)
            }
            Self::Pipeline(pipeline) => {
                let write = Write::of(destination, envelope, now)?;
                pipeline.add_command(write.command());
                Ok(write.delayed)
            }
        }
    }
}

/// Appends the `XADD` of `envelope` to `destination` at `now` to `bytes`, as RESP, straight from
/// the envelope: the same command as its [`Write`] packed. `last_time` is the last time packed
/// and its text, for the next event of the same millisecond.
fn pack_xadd(
    bytes: &mut Vec<u8>,
    last_time: &mut Option<(SystemTime, String)>,
    destination: &Destination<'_>,
    envelope: &Envelope,
    now: SystemTime,
) {
    let trim = destination.trim.as_ref().map(|trim| trim.arguments(now));
    let trim = trim.as_ref().map_or(&[][..], |trim| &trim[..]);
    resp::push_header(bytes, b'*', 3 + trim.len() + 2 * envelope.field_count());
    let command = ["XADD", destination.stream.as_ref()].into_iter();
    for argument in command.chain(trim.iter().map(String::as_str)).chain(["*"]) {
        resp::push_bulk(bytes, argument.as_bytes());
    }
    envelope.write_fields(&mut PackedFields { bytes, last_time });
}

/// An entry's fields packed as RESP bulk strings, name and value in turn.
struct PackedFields<'p> {
    bytes: &'p mut Vec<u8>,
    last_time: &'p mut Option<(SystemTime, String)>,
}

impl FieldWriter<'_> for PackedFields<'_> {
    fn text(&mut self, name: &'static str, value: &str) {
        resp::push_bulk(self.bytes, name.as_bytes());
        resp::push_bulk(self.bytes, value.as_bytes());
    }

    fn number(&mut self, name: &'static str, value: u32) {
        self.text(name, itoa::Buffer::new().format(value));
    }

    fn time(&mut self, name: &'static str, value: SystemTime) {
        // Events written together mostly share their millisecond, and so their text.
        let last = &mut *self.last_time;
        if !matches!(last, Some((time, _)) if *time == value) {
            *last = Some((value, format_timestamp(value)));
        }
        let text = last.as_ref().map_or("", |(_, text)| text.as_str());
        resp::push_bulk(self.bytes, name.as_bytes());
        resp::push_bulk(self.bytes, text.as_bytes());
    }

    fn header(&mut self, name: &str, value: &str) {
        resp::push_header(self.bytes, b'$', HEADER_PREFIX.len() + name.len());
        self.bytes.extend_from_slice(HEADER_PREFIX.as_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
        resp::push_bulk(self.bytes, value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Trim;

    /// Events of one millisecond and of the next, with and without optional fields and headers.
    fn envelopes() -> Vec<Envelope> {
        let plain = Envelope::new("order.placed", 2, "shop", r#"{"total":1.5}"#.into());
        let mut full = plain.clone();
        full.body = "{\"note\":\"é\\r\\n\u{1b}\"}".into();
        full.correlation_id = Some("corr-1".into());
        full.causation_id = Some(String::new());
        full.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        full.partition_key = Some("customer-7".into());
        full.headers = [
            ("tenant", "ünïcode"),
            ("empty", ""),
            ("x".repeat(300).as_str(), "v"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
        let mut later = plain.clone();
        later.timestamp += Duration::from_millis(1);
        vec![plain.clone(), full, plain, later]
    }

    #[test]
    fn an_xadd_packed_from_the_envelope_is_its_write_packed() {
        let now = SystemTime::now();
        let trims = [
            None,
            Some(Trim::max_len(1_000)),
            Some(Trim::max_age(Duration::from_secs(60)).exact()),
        ];
        for trim in trims {
            let destination = Destination {
                stream: "orders".into(),
                trim,
                format: Format::Native,
            };
            let (mut straight, mut through_arguments) = (Vec::new(), Vec::new());
            let mut last_time = None;
            for envelope in &envelopes() {
                pack_xadd(&mut straight, &mut last_time, &destination, envelope, now);
                let write = Write::of(&destination, envelope, now).unwrap();
                resp::pack_command(&write.arguments, &mut through_arguments);
            }
            assert_eq!(
                String::from_utf8_lossy(&straight),
                String::from_utf8_lossy(&through_arguments)
            );
        }
    }
}
