//! Typed events over Redis Streams.
//!
//! Derive [`Event`] on a struct to give it a type name, a version and validation; publish it with a
//! [`Publisher`], whose [`Router`] picks the stream by glob patterns over the event type; consume it
//! in a consumer group with a [`Consumer`], which runs typed handlers with retries, idempotency,
//! dead letters and reclaim of crashed consumers' work. Entries travel as [`Envelope`]s, a flat wire
//! format that `redis-cli` shows readably.
//!
//! ```no_run
//! use events::{Event, Publisher, PublisherConfig, Route, Router};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Event)]
//! #[event(name = "user.created", version = 1)]
//! struct UserCreated {
//!     #[event(uuid)]
//!     user_id: String,
//!     #[event(email)]
//!     email: String,
//! }
//!
//! # async fn run() -> events::Result<()> {
//! let router = Router::builder().route(Route::to("user.*", "user-events")).build()?;
//! let publisher = Publisher::connect("redis://127.0.0.1:6379", PublisherConfig::new("users").router(router)).await?;
//! let event = UserCreated {
//!     user_id: "0b5a3c1e-8d4f-4a51-9d0e-6b7f1c2d3e4f".into(),
//!     email: "ada@example.com".into(),
//! };
//! let published = publisher.publish(&event).await?;
//! println!("{} is entry {} of {}", published.event_id, published.entry_id, published.stream);
//!
//! let consumer = events::Consumer::builder("redis://127.0.0.1:6379")
//!     .stream("user-events")
//!     .group("mailer")
//!     .handle(|user: UserCreated, ctx: events::Context| async move {
//!         println!("welcome {} (attempt {})", user.email, ctx.attempt());
//!         Ok(())
//!     })
//!     .build()
//!     .await?;
//! consumer.run_until(async { tokio::signal::ctrl_c().await.unwrap() }).await?;
//! # Ok(())
//! # }
//! ```

mod access;
mod batch;
mod connection;
mod consumer;
mod dead_letters;
mod endpoint;
mod entry;
mod envelope;
mod error;
mod event;
mod instruments;
mod keys;
mod publisher;
mod replicas;
mod resp;
mod routing;
mod sentinel;
mod stats;
mod trace;
mod transfer;
mod validation;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use batch::{
    BatchConfig, BatchedPublisher, BatchingStrategy, FailedMessage, MemoryStats, Overflow,
};
pub use connection::Connection;
pub use consumer::{
    Backoff, Consumer, ConsumerBuilder, Context, DEAD_LETTER_PREFIX, DeadLetter, Failure,
    HandlerError, HandlerOptions, Identity, Operation, PullConsumer, Reserved, Stall, StartFrom,
    Status, Unhandled, remove_stale_consumers_of,
};
pub use dead_letters::{DeadLetterEntry, DeadLetters, REPLAYED_FIELD};
pub use endpoint::{CLUSTER_SCHEME, Endpoint, SENTINEL_SCHEME, TLS_CLUSTER_SCHEME};
pub use entry::{StreamEntry, read_after, read_range};
pub use envelope::{DecodeError, Envelope, HEADER_PREFIX, hash_body};
pub use error::{Error, Result};
pub use event::{Event, check_event_type};
pub use instruments::record_stream_stats;
pub use keys::{dead_letter_stream, slot_prefix};
pub use publisher::{PublishOptions, Published, Publisher, PublisherConfig, RawValidator};
pub use routing::{
    Destination, Route, Router, RouterBuilder, Trim, partition_stream, partition_streams,
};
pub use stats::{
    ConsumerStats, EntryStamp, GroupStats, ServerStats, StreamStats, server_stats, stream_stats,
};
pub use trace::TraceContext;
pub use validation::{FieldError, Validate, ValidationReport};

#[cfg(feature = "derive")]
pub use events_derive::{Event, Validate};
