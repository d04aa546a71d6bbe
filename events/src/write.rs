//! An event's write: the arguments of its command, and the requests that carry a round trip's
//! commands, packed by hand for a connection of the publisher's own or as a redis-rs pipeline.
//! An event's `XADD` in the native format goes into a request straight from its envelope; delayed
//! events and other formats go through their arguments.

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
pub(crate) struct Request<'a> {
    kind: RequestKind<'a>,
    /// The text of the last time written, for the next event of the same millisecond.
    last_time: TimeText,
}

/// How a request's commands go out.
pub(crate) enum RequestKind<'a> {
    /// Packed as RESP, for `to`, a connection of the publisher's own.
    Packed {
        to: &'a DirectConnection,
        bytes: Vec<u8>,
        commands: usize,
    },
    /// A redis-rs pipeline, for any other connection.
    Pipeline(redis::Pipeline),
}

impl<'a> Request<'a> {
    /// An empty request: packed by hand for `direct` when there is one.
    pub(crate) fn new(direct: Option<&'a DirectConnection>) -> Self {
        let kind = match direct {
            Some(to) => RequestKind::Packed {
                to,
                bytes: Vec::new(),
                commands: 0,
            },
            None => RequestKind::Pipeline(redis::pipe()),
        };
        Self {
            kind,
            last_time: TimeText::default(),
        }
    }

    /// How its commands go out.
    pub(crate) fn into_kind(self) -> RequestKind<'a> {
        self.kind
    }

    /// Adds the write of `envelope` to `destination` at `now`; tells whether the event is
    /// delayed. The `XADD` of an event in the native format is taken straight from the envelope,
    /// without its arguments in between.
    pub(crate) fn add(
        &mut self,
        destination: &Destination<'_>,
        envelope: &Envelope,
        now: SystemTime,
    ) -> Result<bool> {
        let delayed = envelope.deliver_at.is_some_and(|at| at > now);
        if delayed || destination.format != Format::Native {
            let write = Write::of(destination, envelope, now)?;
            match &mut self.kind {
                RequestKind::Packed {
                    bytes, commands, ..
                } => {
                    resp::pack_command(&write.arguments, bytes);
                    *commands += 1;
                }
                RequestKind::Pipeline(pipeline) => {
                    pipeline.add_command(write.command());
                }
            }
            return Ok(write.delayed);
        }
        let trim = destination.trim.as_ref().map(|trim| trim.arguments(now));
        let start = XaddStart::of(destination, trim.as_ref());
        match &mut self.kind {
            RequestKind::Packed {
                bytes, commands, ..
            } => {
                pack_xadd(bytes, &mut self.last_time, &start, envelope);
                *commands += 1;
            }
            RequestKind::Pipeline(pipeline) => {
                pipeline.add_command(xadd_command(&mut self.last_time, &start, envelope));
            }
        }
        Ok(false)
    }
}

/// The arguments of an `XADD` before the entry's fields.
struct XaddStart<'s> {
    stream: &'s str,
    trim: &'s [String],
}

impl<'s> XaddStart<'s> {
    /// The start of an `XADD` to `destination`, trimmed with `trim` (its trimming arguments).
    fn of(destination: &'s Destination<'_>, trim: Option<&'s [String; 3]>) -> Self {
        Self {
            stream: &destination.stream,
            trim: trim.map_or(&[], |trim| &trim[..]),
        }
    }

    /// `XADD <stream> [trim] *`.
    fn arguments(&self) -> impl Iterator<Item = &str> {
        ["XADD", self.stream]
            .into_iter()
            .chain(self.trim.iter().map(String::as_str))
            .chain(["*"])
    }
}

/// Appends to `bytes` the `XADD` of `envelope` after `start`, packed as RESP straight from the
/// envelope.
fn pack_xadd(
    bytes: &mut Vec<u8>,
    last_time: &mut TimeText,
    start: &XaddStart<'_>,
    envelope: &Envelope,
) {
    let count = 3 + start.trim.len() + 2 * envelope.fields_size().fields;
    resp::push_header(bytes, b'*', count);
    for argument in start.arguments() {
        resp::push_bulk(bytes, argument.as_bytes());
    }
    envelope.write_fields(&mut PackedFields { bytes, last_time });
}

/// The `XADD` of `envelope` after `start`, as a redis-rs command made straight from the envelope.
fn xadd_command(
    last_time: &mut TimeText,
    start: &XaddStart<'_>,
    envelope: &Envelope,
) -> redis::Cmd {
    // Sized at once: a command grows its buffers by doubling as arguments come.
    let size = envelope.fields_size();
    let mut command = redis::Cmd::with_capacity(
        3 + start.trim.len() + 2 * size.fields,
        start.arguments().map(str::len).sum::<usize>() + size.bytes,
    );
    for argument in start.arguments() {
        command.arg(argument);
    }
    envelope.write_fields(&mut CommandFields {
        command: &mut command,
        last_time,
    });
    command
}

/// A time's text, kept for the next time of the same millisecond: events written together
/// mostly share theirs.
#[derive(Default)]
struct TimeText {
    last: Option<(SystemTime, String)>,
}

impl TimeText {
    /// The text of `time`, as [`format_timestamp`] writes it.
    fn of(&mut self, time: SystemTime) -> &str {
        if !matches!(&self.last, Some((last, _)) if *last == time) {
            self.last = Some((time, format_timestamp(time)));
        }
        self.last.as_ref().map_or("", |(_, text)| text.as_str())
    }
}

/// An entry's fields packed as RESP bulk strings, name and value in turn.
struct PackedFields<'p> {
    bytes: &'p mut Vec<u8>,
    last_time: &'p mut TimeText,
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
        resp::push_bulk(self.bytes, name.as_bytes());
        resp::push_bulk(self.bytes, self.last_time.of(value).as_bytes());
    }

    fn header(&mut self, name: &str, value: &str) {
        resp::push_header(self.bytes, b'$', HEADER_PREFIX.len() + name.len());
        self.bytes.extend_from_slice(HEADER_PREFIX.as_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
        resp::push_bulk(self.bytes, value.as_bytes());
    }
}

/// An entry's fields as arguments of a redis-rs command, name and value in turn.
struct CommandFields<'c> {
    command: &'c mut redis::Cmd,
    last_time: &'c mut TimeText,
}

impl FieldWriter<'_> for CommandFields<'_> {
    fn text(&mut self, name: &'static str, value: &str) {
        self.command.arg(name).arg(value);
    }

    fn number(&mut self, name: &'static str, value: u32) {
        self.text(name, itoa::Buffer::new().format(value));
    }

    fn time(&mut self, name: &'static str, value: SystemTime) {
        self.command.arg(name).arg(self.last_time.of(value));
    }

    fn header(&mut self, name: &str, value: &str) {
        self.command
            .arg(format!("{HEADER_PREFIX}{name}"))
            .arg(value);
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
    fn an_xadd_taken_from_the_envelope_is_its_write() {
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
            let trim = destination.trim.as_ref().map(|trim| trim.arguments(now));
            let start = XaddStart::of(&destination, trim.as_ref());
            let (mut packed, mut pipeline) = (Vec::new(), redis::pipe());
            let (mut packed_time, mut command_time) = (TimeText::default(), TimeText::default());
            let (mut arguments_packed, mut arguments_pipeline) = (Vec::new(), redis::pipe());
            for envelope in &envelopes() {
                pack_xadd(&mut packed, &mut packed_time, &start, envelope);
                pipeline.add_command(xadd_command(&mut command_time, &start, envelope));
                let write = Write::of(&destination, envelope, now).unwrap();
                resp::pack_command(&write.arguments, &mut arguments_packed);
                arguments_pipeline.add_command(write.command());
            }
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            assert_eq!(text(&packed), text(&arguments_packed));
            assert_eq!(
                text(&pipeline.get_packed_pipeline()),
                text(&arguments_pipeline.get_packed_pipeline())
            );
        }
    }
}
