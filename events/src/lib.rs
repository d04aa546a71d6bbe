//! Typed events over Redis Streams.

mod envelope;
mod error;
mod event;
mod routing;
mod validation;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use envelope::{DecodeError, Envelope, HEADER_PREFIX, hash_body};
pub use error::{Error, Result};
pub use event::{Event, check_event_type};
pub use routing::{Destination, Route, Router, RouterBuilder, Trim};
pub use validation::{FieldError, Validate, ValidationReport};

#[cfg(feature = "derive")]
pub use events_derive::{Event, Validate};
