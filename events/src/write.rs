//! An event's write: the arguments of its command, and the requests that carry a round trip's
//! commands, packed by hand for a connection of the publisher's own or as a redis-rs pipeline.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::direct_connection::DirectConnection;
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
        Format::Native => envelope.push_fields(out),
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
            },
            None => Self::Pipeline(redis::pipe()),
        }
    }

    /// Adds `write`'s command.
    pub(crate) fn push(&mut self, write: &Write<'_>) {
        match self {
            Self::Packed {
                bytes, commands, ..
            } => {
                resp::pack_command(&write.arguments, bytes);
                *commands += 1;
            }
            Self::Pipeline(pipeline) => {
                pipeline.add_command(write.command());
            }
        }
    }
}
