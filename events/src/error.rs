//! The crate's error type.

use crate::{DecodeError, ValidationReport};

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, each naming the event type, stream or pattern involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An event type name breaks the naming rule.
    #[error("invalid event type `{event_type}`: it {reason}")]
    InvalidEventType {
        /// The rejected name.
        event_type: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// An event failed validation; nothing was written.
    #[error("event `{event_type}` is invalid: {report}")]
    Validation {
        /// The event's type.
        event_type: String,
        /// Every failing field.
        #[source]
        report: ValidationReport,
    },

    /// An event's body could not be serialized to JSON.
    #[error("event `{event_type}` could not be serialized to JSON: {source}")]
    Serialize {
        /// The event's type.
        event_type: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },

    /// No route matches the event type and the router has no default stream.
    #[error("no route matches event type `{event_type}` and there is no default stream")]
    NoRoute {
        /// The unrouted event's type.
        event_type: String,
    },

    /// A route's glob pattern does not parse.
    #[error("invalid route pattern `{pattern}`: {reason}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// Why it does not parse.
        reason: String,
    },

    /// A route or option is configured in a way that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Redis refused the credentials, or requires some and none were given: no retry helps.
    #[error("{reason}")]
    Authentication {
        /// What to change.
        reason: String,
        /// The client's or the server's error.
        #[source]
        source: redis::RedisError,
    },

    /// Redis could not be reached.
    #[error("could not connect to Redis: {source}")]
    Connect {
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },

    /// Writing an event to its stream failed; the event may or may not have been written if the
    /// connection dropped while waiting for the reply.
    #[error("could not write event `{event_type}` to stream `{stream}`: {source}")]
    Write {
        /// The event's type.
        event_type: String,
        /// The stream it was routed to.
        stream: String,
        /// The client's or the server's error.
        #[source]
        source: redis::RedisError,
    },

    /// The batched publisher is closed and accepts no more events.
    #[error("the batched publisher is closed")]
    Closed,

    /// The batched publisher holds as many events as it may, and is set to refuse more.
    #[error(
        "the batched publisher is full ({messages} events, {bytes} bytes held); try again later"
    )]
    Overloaded {
        /// Events held.
        messages: usize,
        /// Bytes held.
        bytes: usize,
    },

    /// A flush (or the flush of a close) did not write every event: those its write gave up on
    /// are kept in the batched publisher's failed list, and held under its memory bound, until
    /// retried or drained.
    #[error(
        "{failed} events could not be written by this flush and {failed_list} are in the failed \
         list: list them with failed_messages(), write them again with retry_failed() or take \
         them out with drain_failed()"
    )]
    Unwritten {
        /// Events of the batches the flush waited for that went to the failed list.
        failed: usize,
        /// Events in the failed list when the flush returned, older failures included.
        failed_list: usize,
    },

    /// A consumer stopped before the acknowledgements (or dead-letter moves) of events it had
    /// handled landed, within its shutdown timeout: Redis took no write meanwhile. Their entries
    /// may stay pending, and a consumer taking them over would run them again.
    #[error(
        "acknowledgements of events handled from {} may not have landed before the shutdown \
         timeout: their entries may stay pending, and a consumer taking them over would run \
         them again",
        streams.join(", ")
    )]
    Unsettled {
        /// The streams of those events.
        streams: Vec<String>,
    },

    /// Reading a stream failed.
    #[error("could not read stream `{stream}`: {source}")]
    Read {
        /// The stream.
        stream: String,
        /// The client's or the server's error.
        #[source]
        source: redis::RedisError,
    },

    /// A stream entry is not a valid event.
    #[error("entry {entry_id} of stream `{stream}` is not a valid event: {source}")]
    Decode {
        /// The stream.
        stream: String,
        /// The entry's id in the stream.
        entry_id: String,
        /// What is wrong with it.
        #[source]
        source: DecodeError,
    },
}

impl Error {
    /// Turns a Redis error met while reading `stream` into [`Error::Read`].
    pub(crate) fn reading(stream: &str) -> impl FnOnce(redis::RedisError) -> Error + '_ {
        move |source| Error::Read {
            stream: stream.to_owned(),
            source,
        }
    }

    /// Whether trying the same operation again may succeed: connection and server-side transient
    /// failures are; invalid events, configuration and authentication are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { source }
            | Error::Write { source, .. }
            | Error::Read { source, .. } => {
                !is_authentication(source)
                    && !matches!(source.retry_method(), redis::RetryMethod::NoRetry)
            }
            _ => false,
        }
    }
}

/// Whether `error` says the credentials were refused or are missing.
pub(crate) fn is_authentication(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
        // Redis answers an unauthenticated client's long command with this, not NOAUTH.
        || error.to_string().contains("unauthenticated")
}
