//! Handlers: typed handlers for derived events and pattern handlers over raw envelopes, erased to
//! one shape when they are registered.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use globset::GlobMatcher;

use super::middleware::{Stack, Wrap};
use super::rate_limit::Limiter;
use super::{HandlerOptions, Identity};
use crate::instruments::HandlerMetrics;
use crate::routing::{event_glob, glob_path};
use crate::{DecodeError, Envelope, Error, Event, Result};

/// Everything about a delivery besides the typed body: the raw envelope, where it was read from and
/// which attempt this is.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) stream: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) entry_id: Arc<str>,
    pub(crate) attempt: u32,
}

impl Context {
    /// The context of the first attempt at `envelope`, read from stream `test` by group `test`
    /// as entry `0-0`: for calling handlers in tests.
    pub fn new(envelope: Envelope) -> Self {
        Self {
            envelope: Arc::new(envelope),
            stream: Arc::from("test"),
            group: Arc::from("test"),
            entry_id: Arc::from("0-0"),
            attempt: 1,
        }
    }

    /// This context at attempt `attempt` instead.
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The event's id.
    pub fn event_id(&self) -> &str {
        &self.envelope.id
    }

    /// The event's type.
    pub fn event_type(&self) -> &str {
        &self.envelope.event_type
    }

    /// The stream it was read from.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The consumer group reading it.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Its entry id in the stream.
    pub fn entry_id(&self) -> &str {
        &self.entry_id
    }

    /// Which delivery this is: 1 for the first, more for retries and reclaims.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The service that published it.
    pub fn origin(&self) -> &str {
        &self.envelope.origin
    }

    /// When it was published.
    pub fn timestamp(&self) -> SystemTime {
        self.envelope.timestamp
    }

    /// A user header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.envelope.header(name)
    }

    /// The whole envelope: metadata, headers and the body as JSON text.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }
}

/// Why a handler failed. Any error converts into one with `?`; by default the event is retried.
///
/// It does not implement `std::error::Error` itself, so that every error type can convert into it.
pub struct HandlerError {
    source: Box<dyn StdError + Send + Sync>,
    permanent: bool,
    retry_after: Option<Duration>,
    /// Run again later without counting an attempt.
    deferred: bool,
}

impl HandlerError {
    /// A failure that retrying cannot fix: the event goes to the dead-letter stream at once.
    pub fn permanent(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            source: error.into(),
            permanent: true,
            retry_after: None,
            deferred: false,
        }
    }

    /// A failure to retry after `delay` rather than the consumer's backoff, such as a downstream's
    /// `Retry-After`; the attempt counts like any other.
    pub fn retry_after(error: impl Into<Box<dyn StdError + Send + Sync>>, delay: Duration) -> Self {
        Self {
            source: error.into(),
            permanent: false,
            retry_after: Some(delay),
            deferred: false,
        }
    }

    /// Not an attempt at all: run the event again after `delay`, without counting an attempt or a
    /// failure, however often, such as while a circuit breaker is open. Counted as deferred.
    pub fn defer(reason: impl Into<Box<dyn StdError + Send + Sync>>, delay: Duration) -> Self {
        Self {
            source: reason.into(),
            permanent: false,
            retry_after: Some(delay),
            deferred: true,
        }
    }

    /// Whether it was made by [`defer`](Self::defer).
    pub fn is_deferral(&self) -> bool {
        self.deferred
    }

    /// The delay asked for with [`retry_after`](Self::retry_after).
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the event goes to the dead-letter stream without further attempts.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl<E: Into<Box<dyn StdError + Send + Sync>>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self {
            source: error.into(),
            permanent: false,
            retry_after: None,
            deferred: false,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("source", &self.source)
            .field("permanent", &self.permanent)
            .field("retry_after", &self.retry_after)
            .field("deferred", &self.deferred)
            .finish()
    }
}

/// Why an attempt to handle an entry failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Failure {
    /// The entry is not a valid event, or its body is not the registered struct: never retried.
    Decode(DecodeError),
    /// The handler returned an error.
    Handler(HandlerError),
    /// The handler panicked.
    Panic(String),
    /// The handler ran past its timeout.
    Timeout(Duration),
    /// No handler is registered for the event's type, and the consumer dead-letters such events.
    Unhandled(String),
    /// The entry was delivered more often than the consumer's maximum number of attempts, for
    /// example because consumers holding it crashed.
    Exhausted(u32),
    /// The event's version is newer than every handler of its type knows: retried, so that a
    /// consumer that knows it (a newer deployment) can take it over, unless the consumer's
    /// [`NewerVersions`](crate::NewerVersions) says to dead-letter it.
    NewerVersion(DecodeError),
}

impl std::error::Error for Failure {}

impl Failure {
    /// Whether it only defers the event (see [`HandlerError::defer`]): not an attempt.
    pub fn is_deferral(&self) -> bool {
        matches!(self, Failure::Handler(error) if error.is_deferral())
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Failure::Decode(_) | Failure::Unhandled(_) | Failure::Exhausted(_) => false,
            Failure::Handler(error) => !error.is_permanent(),
            Failure::Panic(_) | Failure::Timeout(_) | Failure::NewerVersion(_) => true,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Decode(error) => write!(f, "undecodable: {error}"),
            Failure::Handler(error) => write!(f, "handler failed: {error}"),
            Failure::Panic(message) => write!(f, "handler panicked: {message}"),
            Failure::Timeout(limit) => write!(f, "handler timed out after {limit:?}"),
            Failure::Unhandled(reason) => f.write_str(reason),
            Failure::Exhausted(attempts) => write!(f, "gave up after {attempts} deliveries"),
            Failure::NewerVersion(error) => write!(f, "left for a consumer that knows it: {error}"),
        }
    }
}

/// A handler's run, boxed.
pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;

/// A delivery made ready for its handler, its body decoded once.
pub(crate) struct Prepared {
    /// The idempotency key the event declares with `#[event(idempotency_key)]`; `None` means
    /// the consumer's [`Identity`] identifies it.
    pub(crate) key: Option<String>,
    /// The handler's run over the decoded event.
    pub(crate) run: BoxFuture,
}

/// A handler with its event type erased: decodes the body for the handler, or fails with a
/// decode failure that no retry can fix.
pub(crate) type Prepare = Arc<dyn Fn(&Context) -> Result<Prepared, Failure> + Send + Sync>;

/// One registered handler and its own settings.
#[derive(Clone)]
pub(crate) struct Registration {
    pub(crate) prepare: Prepare,
    pub(crate) timeout: Option<Duration>,
    /// Whether repeats are skipped; `None` follows the consumer.
    pub(crate) idempotent: Option<bool>,
    /// What identifies a repeat; `None` follows the consumer.
    pub(crate) identity: Option<Identity>,
    /// Whether an event it handled declared an idempotency key: learned from the events, since a
    /// key is known only once the body is deserialized.
    pub(crate) keyed: Arc<AtomicBool>,
    /// Metric handles, one per stream of the consumer, in its order.
    pub(crate) metrics: Vec<HandlerMetrics>,
    /// The handler's own middleware, innermost.
    layers: Vec<Wrap>,
    /// Its middleware and the consumer's around it; `None` without any.
    pub(crate) stack: Option<Stack>,
    /// Its rate limit.
    pub(crate) limiter: Option<Limiter>,
}

impl Registration {
    /// The handler of `name` (a type or pattern); an error for a rate limit that cannot work.
    fn new(prepare: Prepare, options: HandlerOptions, name: &str) -> Result<Self> {
        Ok(Self {
            prepare,
            timeout: options.timeout,
            idempotent: options.idempotent,
            identity: options.identity,
            keyed: Arc::default(),
            metrics: Vec::new(),
            layers: options.layers,
            stack: None,
            limiter: options
                .rate_limit
                .map(|limit| Limiter::new(limit, name))
                .transpose()?,
        })
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("timeout", &self.timeout)
            .field("idempotent", &self.idempotent)
            .finish_non_exhaustive()
    }
}

/// A typed handler of one version of its event type, and where it was registered.
#[derive(Debug, Clone)]
struct Versioned {
    version: u32,
    registration: Registration,
    at: &'static Location<'static>,
}

/// Handlers by exact event type (one per version, in version order), then by glob pattern in
/// registration order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Registry {
    typed: HashMap<String, Vec<Versioned>>,
    patterns: Vec<(String, GlobMatcher, Registration)>,
}

impl Registry {
    /// Registers a typed handler for `E`; a second one for the same type and version fails naming
    /// both callers.
    #[track_caller]
    pub(crate) fn add_typed<E, F, Fut>(&mut self, handler: F, options: HandlerOptions) -> Result<()>
    where
        E: Event,
        F: Fn(E, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let caller = Location::caller();
        let versions = self.typed.entry(E::NAME.to_owned()).or_default();
        if let Some(first) = versions.iter().find(|known| known.version == E::VERSION) {
            return Err(Error::Config(format!(
                "a handler for event type `{}` version {} is already registered (at {}); the second is at {caller}",
                E::NAME,
                E::VERSION,
                first.at
            )));
        }
        let handler = Arc::new(handler);
        let prepare: Prepare = Arc::new(move |context: &Context| {
            let event = context
                .envelope
                .decode_body::<E>()
                .map_err(|error| match error {
                    DecodeError::UnknownVersion { .. } => Failure::NewerVersion(error),
                    error => Failure::Decode(error),
                })?;
            let key = event.idempotency_key();
            let (handler, context) = (Arc::clone(&handler), context.clone());
            let run =
                Box::pin(async move { handler(event, context).await.map_err(Failure::Handler) });
            Ok(Prepared { key, run })
        });
        let registration = Registration::new(prepare, options, E::NAME)?;
        versions.push(Versioned {
            version: E::VERSION,
            registration,
            at: caller,
        });
        versions.sort_by_key(|known| known.version);
        Ok(())
    }

    /// Registers a handler for every event type matching `pattern`.
    pub(crate) fn add_pattern<F, Fut>(
        &mut self,
        pattern: &str,
        handler: F,
        options: HandlerOptions,
    ) -> Result<()>
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        if self
            .patterns
            .iter()
            .any(|(existing, ..)| existing == pattern)
        {
            return Err(Error::Config(format!(
                "a handler for pattern `{pattern}` is already registered"
            )));
        }
        let matcher = event_glob(pattern)?.compile_matcher();
        let handler = Arc::new(handler);
        let prepare: Prepare = Arc::new(move |context: &Context| {
            context.envelope.check_body().map_err(Failure::Decode)?;
            let (handler, context) = (Arc::clone(&handler), context.clone());
            let run = Box::pin(async move { handler(context).await.map_err(Failure::Handler) });
            Ok(Prepared { key: None, run })
        });
        let registration = Registration::new(prepare, options, pattern)?;
        self.patterns
            .push((pattern.to_owned(), matcher, registration));
        Ok(())
    }

    /// The handler for version `version` of `event_type`: of its typed ones, the one of the oldest
    /// version at least as new (older bodies are read as its version), or the newest when the
    /// event is newer than all; else the first matching pattern.
    pub(crate) fn find(&self, event_type: &str, version: u32) -> Option<&Registration> {
        if let Some(versions) = self.typed.get(event_type) {
            return versions
                .iter()
                .find(|known| known.version >= version)
                .or(versions.last())
                .map(|known| &known.registration);
        }
        let path = glob_path(event_type);
        self.patterns
            .iter()
            .find(|(_, matcher, _)| matcher.is_match(&path))
            .map(|(_, _, registration)| registration)
    }

    /// The registered event types and patterns, for status reports.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.typed.keys().cloned().collect();
        names.sort();
        names.extend(self.patterns.iter().map(|(pattern, ..)| pattern.clone()));
        names
    }

    /// Every registration with the name it is known by.
    fn registrations_mut(&mut self) -> impl Iterator<Item = (&str, &mut Registration)> {
        let typed = self.typed.iter_mut().flat_map(|(name, versions)| {
            versions
                .iter_mut()
                .map(move |known| (name.as_str(), &mut known.registration))
        });
        let patterns = self
            .patterns
            .iter_mut()
            .map(|(pattern, _, registration)| (pattern.as_str(), registration));
        typed.chain(patterns)
    }

    /// Puts every handler inside its own middleware and then the consumer's `layers` (the first
    /// outermost).
    pub(crate) fn wrap_in(&mut self, layers: &[Wrap]) {
        for (_, registration) in self.registrations_mut() {
            registration.stack =
                super::middleware::stack(layers.iter().chain(&registration.layers));
        }
    }

    /// Registers every handler's metric handles for each of `streams`, in their order.
    pub(crate) fn instrument(&mut self, streams: &[String], group: &str) {
        for (name, registration) in self.registrations_mut() {
            registration.metrics = streams
                .iter()
                .map(|stream| HandlerMetrics::new(stream, group, name))
                .collect();
        }
    }

    /// The longest timeout a handler sets for itself.
    pub(crate) fn longest_timeout(&self) -> Option<Duration> {
        let typed = self
            .typed
            .values()
            .flatten()
            .map(|known| &known.registration);
        let patterns = self
            .patterns
            .iter()
            .map(|(_, _, registration)| registration);
        typed
            .chain(patterns)
            .filter_map(|registration| registration.timeout)
            .max()
    }

    /// Whether nothing is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.typed.is_empty() && self.patterns.is_empty()
    }
}
