#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod access;
mod asyncapi;
mod batch;
mod connection;
mod consumer;
mod dead_letters;
mod direct_connection;
mod endpoint;
mod entry;
mod envelope;
mod error;
mod event;
mod instruments;
mod keys;
mod publisher;
mod read_frame;
#[cfg(feature = "tls")]
mod reader_tls;
mod replicas;
mod resp;
mod routing;
mod schema;
mod sentinel;
mod stats;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod trace;
mod transfer;
mod typescript;
mod validation;
mod write;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use asyncapi::AsyncApi;
pub use batch::{
    BatchConfig, BatchedPublisher, BatchingStrategy, FailedMessage, MemoryStats, Overflow,
};
pub use connection::Connection;
pub use consumer::{
    Backoff, BoxError, Breaker, Call, CircuitBreaker, Consumer, ConsumerBuilder, Context,
    DEAD_LETTER_PREFIX, DeadLetter, Delivery, Failure, HandlerError, HandlerLayer, HandlerOptions,
    Identity, NewerVersions, Operation, PullConsumer, RateLimit, Reserved, RunHandler, Stack,
    Stall, StartFrom, Status, Subscription, Unhandled, remove_stale_consumers_of,
};
pub use dead_letters::{DeadLetterEntry, DeadLetters, REPLAYED_FIELD};
pub use endpoint::{CLUSTER_SCHEME, Endpoint, SENTINEL_SCHEME, TLS_CLUSTER_SCHEME};
pub use entry::{StreamEntry, read_after, read_range};
pub use envelope::{DecodeError, Envelope, HEADER_PREFIX, hash_body};
pub use error::{Error, Result};
pub use event::{Event, check_event_type};
#[cfg(feature = "metrics")]
pub use instruments::record_stream_stats;
pub use keys::{dead_letter_stream, delayed_events, slot_prefix, unmovable_events};
pub use publisher::{PublishOptions, Published, Publisher, PublisherConfig, RawValidator};
pub use routing::{
    Destination, Format, Route, Router, RouterBuilder, Trim, partition_stream, partition_streams,
};
pub use schema::{JsonSchema, event_schema};
pub use stats::{
    ConsumerStats, EntryStamp, GroupStats, ServerStats, StreamStats, server_stats, stream_names,
    stream_stats,
};
pub use trace::TraceContext;
pub use validation::{FieldError, Validate, ValidationReport};

#[cfg(feature = "derive")]
pub use events_derive::{Event, Validate};
