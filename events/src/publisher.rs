//! The publisher: validates, encodes, routes and writes events, one round trip per call.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionLike;
use serde_json::Value;

use tracing::Instrument;

use crate::connection::Connection;
use crate::direct_connection::DirectConnection;
use crate::instruments::PublishMetrics;
use crate::keys;
use crate::write::{Request, RequestKind, Write};
use crate::{
    Envelope, Error, Event, Result, Router, TraceContext, ValidationReport, check_event_type,
};

/// Validates untyped bodies published with [`Publisher::publish_raw`]; typed events validate
/// themselves. Any `Fn(&str, &Value) -> Result<(), ValidationReport>` is one.
pub trait RawValidator: Send + Sync + 'static {
    /// Checks `body` for an event of `event_type`, reporting every failing field.
    fn validate(&self, event_type: &str, body: &Value) -> Result<(), ValidationReport>;
}

impl<F> RawValidator for F
where
    F: Fn(&str, &Value) -> Result<(), ValidationReport> + Send + Sync + 'static,
{
    fn validate(&self, event_type: &str, body: &Value) -> Result<(), ValidationReport> {
        self(event_type, body)
    }
}

/// How a [`Publisher`] names, validates and routes what it writes.
#[derive(Clone)]
#[must_use]
pub struct PublisherConfig {
    origin: String,
    router: Router,
    raw_validator: Option<Arc<dyn RawValidator>>,
}

impl fmt::Debug for PublisherConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherConfig")
            .field("origin", &self.origin)
            .field("router", &self.router)
            .field("raw_validator", &self.raw_validator.is_some())
            .finish()
    }
}

impl PublisherConfig {
    /// Events are published as coming from service `origin`, each type to a stream named after it,
    /// until [`router`](Self::router) says otherwise.
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            router: Router::default(),
            raw_validator: None,
        }
    }

    /// Routes event types to streams.
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// Validates the bodies of untyped events before they are written.
    pub fn raw_validator(mut self, validator: impl RawValidator) -> Self {
        self.raw_validator = Some(Arc::new(validator));
        self
    }
}

/// Metadata for one publish: correlation and causation ids, trace context, user headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct PublishOptions {
    correlation_id: Option<String>,
    causation_id: Option<String>,
    traceparent: Option<String>,
    partition_key: Option<String>,
    version: Option<u32>,
    headers: BTreeMap<String, String>,
    deliver: Option<Deliver>,
}

/// When a delayed event is to reach its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deliver {
    At(SystemTime),
    After(Duration),
}

/// The longest delay: anything further is more likely a unit mistake than a plan.
const LONGEST_DELAY: Duration = Duration::from_secs(366 * 24 * 3600);

impl PublishOptions {
    /// No metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// The id of the request or flow the event belongs to.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// The id of the event that caused this one.
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// A W3C `traceparent` to continue a trace in the consumer.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The key that keeps events in order on a partitioned route (typed events may declare one
    /// with `#[event(partition_key)]`; this takes precedence).
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }

    /// The schema version of an untyped event (1 unless set); typed events carry their own.
    pub fn version(mut self, version: u32) -> Self {
        self.version = Some(version);
        self
    }

    /// A user header, written as the field `h.<name>`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Delivers the event at `time`, not before (at once when it has passed): see
    /// [`Envelope::deliver_at`]. At most a year ahead.
    pub fn deliver_at(mut self, time: SystemTime) -> Self {
        self.deliver = Some(Deliver::At(time));
        self
    }

    /// Delivers the event `delay` from now, not before: more than zero, at most a year.
    pub fn deliver_after(mut self, delay: Duration) -> Self {
        self.deliver = Some(Deliver::After(delay));
        self
    }

    fn apply(self, mut envelope: Envelope) -> Result<Envelope> {
        if self.headers.contains_key("") {
            return Err(Error::Config(format!(
                "event `{}` has a header with an empty name",
                envelope.event_type
            )));
        }
        envelope.correlation_id = self.correlation_id;
        envelope.causation_id = self.causation_id;
        // Published from a handler: continue the trace of the event being handled.
        envelope.traceparent = self
            .traceparent
            .or_else(|| TraceContext::current().map(|context| context.child().to_string()));
        envelope.headers = self.headers;
        if self.partition_key.is_some() {
            envelope.partition_key = self.partition_key;
        }
        envelope.deliver_at = self
            .deliver
            .map(|deliver| deliver.time(&envelope.event_type))
            .transpose()?;
        Ok(envelope)
    }
}

impl Deliver {
    /// The time it stands for; a zero or absurd delay is an error naming the event type.
    fn time(self, event_type: &str) -> Result<SystemTime> {
        let now = SystemTime::now();
        let delay = match self {
            Deliver::At(time) => time.duration_since(now).unwrap_or_default(),
            Deliver::After(Duration::ZERO) => {
                return Err(Error::Config(format!(
                    "event `{event_type}`: a delay of zero; publish it without one"
                )));
            }
            Deliver::After(delay) => delay,
        };
        if delay > LONGEST_DELAY {
            return Err(Error::Config(format!(
                "event `{event_type}`: a delay of {delay:?} is over the longest, a year"
            )));
        }
        Ok(now + delay)
    }
}

/// Where a published event was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event's own id (the envelope's `id`).
    pub event_id: String,
    /// The stream it was routed to.
    pub stream: String,
    /// Its entry id in that stream, such as `1700000000000-0`; empty for a delayed event, whose
    /// entry is added when it is due.
    pub entry_id: String,
}

/// How long a publisher's connection waits for a reply before it counts the connection broken.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes events to Redis Streams: validates, encodes, routes and `XADD`s them.
///
/// Cheap to clone; clones share the connection, which reconnects by itself after a failure.
#[derive(Clone)]
pub struct Publisher<C = Connection> {
    connection: C,
    config: Arc<PublisherConfig>,
    metrics: Arc<PublishMetrics>,
    /// Whether to send one pipeline per cluster slot.
    per_slot: bool,
}

impl<C> fmt::Debug for Publisher<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Publisher<Connection> {
    /// Connects to the Redis at `endpoint` (or a URL, such as `redis://127.0.0.1:6379`) with a
    /// connection that reconnects by itself.
    pub async fn connect(
        endpoint: impl Into<crate::Endpoint>,
        config: PublisherConfig,
    ) -> Result<Self> {
        let connection = crate::connection::connect(&endpoint.into(), RESPONSE_TIMEOUT).await?;
        // The user must be allowed to add to every stream a route names outright.
        let adding: Vec<crate::access::Needed> = config
            .router
            .fixed_streams()
            .iter()
            .map(|stream| crate::access::needed("to publish", &["XADD", stream, "*", "f", "v"]))
            .collect();
        if !adding.is_empty() {
            crate::access::check(&connection, "publisher", &adding, false).await?;
        }
        let cluster = connection.is_cluster();
        let publisher = Self::new(connection, config);
        Ok(if cluster {
            publisher.per_slot_pipelines()
        } else {
            publisher
        })
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> Publisher<C> {
    /// A publisher over an existing connection.
    pub fn new(connection: C, config: PublisherConfig) -> Self {
        Self {
            connection,
            config: Arc::new(config),
            metrics: Arc::default(),
            per_slot: false,
        }
    }

    /// A publisher like this one (its settings, routes and metrics) that writes through
    /// `connection`: a batched publisher given several writes its batches side by side.
    pub fn with_connection(&self, connection: C) -> Self {
        Self {
            connection,
            config: Arc::clone(&self.config),
            metrics: Arc::clone(&self.metrics),
            per_slot: self.per_slot,
        }
    }

    /// Sends the writes of `publish_many` and of batches as one pipeline per Redis Cluster slot,
    /// as a cluster requires; [`Publisher::connect`] does so for `redis+cluster://` URLs.
    pub fn per_slot_pipelines(mut self) -> Self {
        self.per_slot = true;
        self
    }

    /// The router that picks each event's stream.
    pub fn router(&self) -> &Router {
        &self.config.router
    }

    /// Validates and encodes `event` without writing it.
    pub fn envelope<E: Event>(&self, event: &E, options: PublishOptions) -> Result<Envelope> {
        event.validate().map_err(|report| Error::Validation {
            event_type: E::NAME.to_owned(),
            report,
        })?;
        let body = serde_json::to_string(event).map_err(|source| Error::Serialize {
            event_type: E::NAME.to_owned(),
            source,
        })?;
        let mut envelope = Envelope::new(E::NAME, E::VERSION, &self.config.origin, body);
        envelope.partition_key = event.partition_key();
        options.apply(envelope)
    }

    /// Checks the type name, validates `body` with the configured [`RawValidator`], and encodes it,
    /// without writing it.
    pub fn raw_envelope(
        &self,
        event_type: &str,
        body: &Value,
        options: PublishOptions,
    ) -> Result<Envelope> {
        check_event_type(event_type).map_err(|reason| Error::InvalidEventType {
            event_type: event_type.to_owned(),
            reason,
        })?;
        if let Some(validator) = &self.config.raw_validator {
            validator
                .validate(event_type, body)
                .map_err(|report| Error::Validation {
                    event_type: event_type.to_owned(),
                    report,
                })?;
        }
        let version = options.version.unwrap_or(1);
        options.apply(Envelope::new(
            event_type,
            version,
            &self.config.origin,
            body.to_string(),
        ))
    }

    /// Validates, encodes, routes and writes one event.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Published> {
        self.publish_with(event, PublishOptions::new()).await
    }

    /// [`publish`](Self::publish) with correlation and causation ids, trace context or headers.
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        options: PublishOptions,
    ) -> Result<Published> {
        self.write_one(self.envelope(event, options)?).await
    }

    /// Publishes an untyped JSON body under `event_type`, checked by the configured [`RawValidator`].
    pub async fn publish_raw(&self, event_type: &str, body: Value) -> Result<Published> {
        self.publish_raw_with(event_type, body, PublishOptions::new())
            .await
    }

    /// [`publish_raw`](Self::publish_raw) with metadata.
    pub async fn publish_raw_with(
        &self,
        event_type: &str,
        body: Value,
        options: PublishOptions,
    ) -> Result<Published> {
        self.write_one(self.raw_envelope(event_type, &body, options)?)
            .await
    }

    /// Publishes many events of one type in one round trip. All are validated before any is written.
    pub async fn publish_many<E: Event>(&self, events: &[E]) -> Result<Vec<Published>> {
        let envelopes = events
            .iter()
            .map(|event| self.envelope(event, PublishOptions::new()))
            .collect::<Result<Vec<_>>>()?;
        self.publish_envelopes(envelopes).await
    }

    /// Writes envelopes of any types, made with [`envelope`](Self::envelope) or
    /// [`raw_envelope`](Self::raw_envelope), in one round trip.
    ///
    /// The writes are pipelined, not a transaction: on an error some may have been written. Writing
    /// the same envelopes again is safe with idempotent consumers, since ids and hashes stay the same.
    pub async fn publish_envelopes(&self, envelopes: Vec<Envelope>) -> Result<Vec<Published>> {
        let written = self
            .write(&envelopes, |envelope, stream, entry_id| Published {
                event_id: envelope.id.clone(),
                stream: stream.to_owned(),
                entry_id,
            })
            .await?;
        written.into_iter().collect()
    }

    /// Writes `envelopes` in one pipelined round trip and tells what became of each, as
    /// `written(envelope, stream, entry id)` makes of it. The outer error is for the round trip as a
    /// whole (then nothing is known to be written), the inner ones for single writes that Redis
    /// refused.
    pub(crate) async fn write<T>(
        &self,
        envelopes: &[Envelope],
        written: impl Fn(&Envelope, &str, String) -> T,
    ) -> Result<Vec<Result<T>>> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        let now = SystemTime::now();
        let destinations = envelopes
            .iter()
            .map(|envelope| self.config.router.destination(envelope))
            .collect::<Result<Vec<_>>>()?;
        let write_error = |envelope: &Envelope, stream: &str, source| Error::Write {
            event_type: envelope.event_type.clone(),
            stream: stream.to_owned(),
            source,
        };
        // A cluster refuses a pipeline whose keys are in different slots: one per slot there,
        // sent at once.
        let groups: Vec<Vec<usize>> = if self.per_slot {
            let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
            for (index, destination) in destinations.iter().enumerate() {
                by_slot
                    .entry(keys::slot(&destination.stream))
                    .or_default()
                    .push(index);
            }
            by_slot.into_values().collect()
        } else {
            vec![(0..envelopes.len()).collect()]
        };
        // Each event's command is made and added to its round trip's request at once, so that
        // no more than one copy of each waits for the reply.
        let mut delayed = vec![false; envelopes.len()];
        let mut requests = Vec::with_capacity(groups.len());
        let direct = self.direct();
        for indices in &groups {
            let mut request = Request::new(direct);
            for &index in indices {
                delayed[index] = request.add(&destinations[index], &envelopes[index], now)?;
            }
            requests.push(request);
        }
        let round_trips = requests.into_iter().map(|request| self.send(request));
        let span = tracing::info_span!(
            "events.publish_many",
            events = envelopes.len(),
            round_trips = groups.len()
        );
        let outcomes = futures::future::join_all(round_trips)
            .instrument(span)
            .await;
        let mut replies: Vec<Option<redis::RedisResult<String>>> =
            (0..envelopes.len()).map(|_| None).collect();
        for (indices, outcome) in groups.iter().zip(outcomes) {
            match outcome {
                Ok(group_replies) => {
                    for (&index, reply) in indices.iter().zip(group_replies) {
                        replies[index] = Some(reply);
                    }
                }
                Err(source) if groups.len() == 1 => {
                    return Err(write_error(&envelopes[0], &destinations[0].stream, source));
                }
                Err(source) => {
                    for &index in indices {
                        replies[index] = Some(Err(source.clone()));
                    }
                }
            }
        }
        let streams: Vec<&str> = destinations
            .iter()
            .map(|destination| destination.stream.as_ref())
            .collect();
        let replies = replies
            .into_iter()
            .map(|reply| reply.expect("every write has its reply"));
        let results: Vec<Result<T>> = replies
            .zip(envelopes.iter().zip(&streams))
            .zip(delayed)
            .map(|((reply, (envelope, stream)), delayed)| match reply {
                Ok(entry_id) => {
                    // A delayed event has no entry yet.
                    let entry_id = if delayed { String::new() } else { entry_id };
                    Ok(written(envelope, stream, entry_id))
                }
                Err(source) => Err(write_error(envelope, stream, source)),
            })
            .collect();
        // Counted once for each run of events of one type written to one stream.
        let counted: Vec<(&str, &str)> = results
            .iter()
            .zip(envelopes.iter().zip(&streams))
            .filter(|(result, _)| result.is_ok())
            .map(|(_, (envelope, stream))| (*stream, envelope.event_type.as_str()))
            .collect();
        for run in counted.chunk_by(|one, next| one == next) {
            let (stream, event_type) = run[0];
            self.metrics.published(stream, event_type, run.len() as u64);
        }
        Ok(results)
    }

    /// Sends `request` in one round trip: each of its commands' reply, the entry id or the
    /// error Redis gave.
    async fn send(
        &self,
        request: Request<'_>,
    ) -> redis::RedisResult<Vec<redis::RedisResult<String>>> {
        match request.into_kind() {
            RequestKind::Packed {
                to,
                bytes,
                commands,
                ..
            } => to.send(&bytes, commands).await,
            RequestKind::Pipeline(mut pipeline) => {
                pipeline
                    .ignore_errors()
                    .query_async(&mut self.connection.clone())
                    .await
            }
        }
    }

    /// The connection of its own this publisher writes on, if it has one: a batched publisher's
    /// to a single server (see [`BatchedPublisher::connect`](crate::BatchedPublisher::connect)).
    fn direct(&self) -> Option<&DirectConnection> {
        (&self.connection as &dyn Any)
            .downcast_ref::<Connection>()?
            .direct()
    }

    async fn write_one(&self, envelope: Envelope) -> Result<Published> {
        let destination = self.config.router.destination(&envelope)?;
        let (command, delayed) = {
            let write = Write::of(&destination, &envelope, SystemTime::now())?;
            (write.command(), write.delayed)
        };
        let stream = destination.stream.into_owned();
        let span = tracing::info_span!(
            "events.publish",
            event_type = %envelope.event_type,
            event_id = %envelope.id,
            stream = %stream,
            trace_id = envelope.traceparent.as_deref().and_then(TraceContext::parse).map(|trace| trace.trace_id()),
        );
        let written: redis::RedisResult<String> = command
            .query_async(&mut self.connection.clone())
            .instrument(span)
            .await;
        match written {
            Ok(entry_id) => {
                self.metrics.published(&stream, &envelope.event_type, 1);
                Ok(Published {
                    event_id: envelope.id,
                    stream,
                    entry_id: if delayed { String::new() } else { entry_id },
                })
            }
            Err(source) => Err(Error::Write {
                event_type: envelope.event_type,
                stream,
                source,
            }),
        }
    }
}
