//! Configuring a consumer: streams, group, handlers, policies and hooks, checked before it connects.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::access::check_access;
use super::config::{Hooks, Settings};
use super::group::Group;
use super::handler::Registry;
use super::middleware::{HandlerLayer, Wrap, wrap};
use super::partitions::Partitioned;
use super::{
    Backoff, Consumer, Context, DeadLetter, Failure, HandlerError, HandlerOptions, Identity, Inner,
    NewerVersions, PullConsumer, StartFrom, Unhandled,
};
use crate::connection::Connection;
use crate::connection::{check_server_version, connect, connect_direct};
use crate::instruments::HandlerMetrics;
use crate::{Endpoint, Error, Event, Result, keys};
use tokio::sync::Semaphore;

/// Connections for blocking reads: two, so that a read is under way while the reply to the one
/// before is parsed.
const READERS: usize = 2;

/// Configures a [`Consumer`]: streams, group, handlers and policies.
#[must_use]
pub struct ConsumerBuilder {
    endpoint: Endpoint,
    settings: Settings,
    registry: Registry,
    hooks: Hooks,
    /// Middleware around every handler, the first outermost.
    layers: Vec<Wrap>,
    error: Option<Error>,
}

impl std::fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("settings", &self.settings)
            .field("handlers", &self.registry.names())
            .finish_non_exhaustive()
    }
}

impl ConsumerBuilder {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            settings: Settings::new(),
            registry: Registry::default(),
            hooks: Hooks::default(),
            layers: Vec::new(),
            error: None,
        }
    }

    fn settings(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        change(&mut self.settings);
        self
    }

    /// Adds a stream to consume; call it once per stream.
    pub fn stream(self, stream: impl Into<String>) -> Self {
        let stream = stream.into();
        self.settings(|settings| settings.streams.push(stream))
    }

    /// Adds every partition of a stream a partitioned route writes (`<stream>:p0` ..): events of
    /// one partition key are then handled one after another, in order, whatever the concurrency.
    ///
    /// Each partition is read by one consumer of the group at a time, under a lease it renews
    /// (see [`partition_lease`](Self::partition_lease)); the group's consumers share the partitions.
    pub fn partitioned_stream(self, stream: &str, partitions: u32) -> Self {
        let streams = crate::partition_streams(stream, partitions);
        let logical = Partitioned {
            stream: stream.to_owned(),
            partitions: partitions.max(1),
        };
        self.settings(|settings| {
            settings.streams.extend(streams);
            settings.partitioned.push(logical);
        })
    }

    /// How long a consumer holds a partition without renewing its lease (default 10 s): after
    /// a crash, its partitions go to the others that much later.
    pub fn partition_lease(self, lease: Duration) -> Self {
        self.settings(|settings| settings.partition_lease = lease)
    }

    /// The consumer group (created if missing).
    pub fn group(self, group: impl Into<String>) -> Self {
        let group = group.into();
        self.settings(|settings| settings.group = group)
    }

    /// This consumer's name in the group; by default `<host>-<pid>`, stable for the process. It
    /// must be unique among live consumers: a run takes back at once what was left pending on its
    /// name by an earlier run, one that stopped or crashed.
    pub fn consumer_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.settings(|settings| settings.consumer = name)
    }

    /// Where a newly created group starts reading (default: new entries only).
    pub fn start_from(self, start: StartFrom) -> Self {
        self.settings(|settings| settings.start_from = start)
    }

    /// How many entries one read asks for (default 100). With idempotency on, a read's holds are
    /// taken in one script call whose cost is mostly per call: draining a backlog with 500 cost
    /// Redis a fifth to a third as much per event for idempotency as 100 (README, benchmarks).
    pub fn batch_size(self, batch_size: usize) -> Self {
        self.settings(|settings| settings.batch_size = batch_size)
    }

    /// How long one read waits for new entries (default 2 s); shutdown waits for it to return.
    pub fn block(self, block: Duration) -> Self {
        self.settings(|settings| settings.block = block)
    }

    /// How many handlers run at once (default 64).
    pub fn concurrency(self, concurrency: usize) -> Self {
        self.settings(|settings| settings.concurrency = concurrency)
    }

    /// How many entries may be read and not yet acknowledged, waiting or retrying included
    /// (default 1,000): the bound on the memory entries take.
    pub fn max_unacked(self, max_unacked: usize) -> Self {
        self.settings(|settings| settings.max_unacked = max_unacked)
    }

    /// Deliveries of an entry before it goes to the dead-letter stream (default 5).
    pub fn max_attempts(self, max_attempts: u32) -> Self {
        self.settings(|settings| settings.max_attempts = max_attempts)
    }

    /// Delays between attempts (default 200 ms doubling to 30 s, with jitter).
    pub fn backoff(self, backoff: Backoff) -> Self {
        self.settings(|settings| settings.backoff = backoff)
    }

    /// How long one attempt of a handler may take (default 30 s).
    pub fn handler_timeout(self, timeout: Duration) -> Self {
        self.settings(|settings| settings.handler_timeout = timeout)
    }

    /// How long an entry stays pending on another consumer before this one takes it over (default
    /// 60 s). Must be longer than the handler timeout and the longest backoff.
    pub fn claim_idle(self, idle: Duration) -> Self {
        self.settings(|settings| settings.claim_idle = idle)
    }

    /// How often to look for entries to take over (default 5 s).
    pub fn claim_interval(self, interval: Duration) -> Self {
        self.settings(|settings| settings.claim_interval = interval)
    }

    /// Whether events already handled are skipped when they come again (default on).
    pub fn idempotency(self, enabled: bool) -> Self {
        self.settings(|settings| settings.idempotent = enabled)
    }

    /// What identifies a repeat of an event whose type declares no idempotency key (default:
    /// its event id).
    pub fn identity(self, identity: Identity) -> Self {
        self.settings(|settings| settings.identity = identity)
    }

    /// How long an event is remembered as handled (default 24 h).
    pub fn idempotency_ttl(self, ttl: Duration) -> Self {
        self.settings(|settings| settings.idempotency_ttl = ttl)
    }

    /// What to do with events no handler is registered for (default: skip).
    pub fn unhandled(self, unhandled: Unhandled) -> Self {
        self.settings(|settings| settings.unhandled = unhandled)
    }

    /// What to do with events of a version newer than every handler of their type knows (default:
    /// retry them, so that a newer deployment can take them over; see [`NewerVersions`]).
    pub fn newer_versions(self, newer: NewerVersions) -> Self {
        self.settings(|settings| settings.newer_versions = newer)
    }

    /// Reads events whose type starts with `namespace` and a dot without them, so that
    /// `user-service.user.created`, as a TypeScript service named `user-service` publishes it, goes
    /// to the handler of `user.created`. Call it once per namespace.
    pub fn strip_namespace(mut self, namespace: &str) -> Self {
        if let Err(error) = self.settings.type_names.strip_namespace(namespace) {
            self.error.get_or_insert(error);
        }
        self
    }

    /// Reads events of type `from` as events of type `to`: for a type named otherwise by another
    /// service or an older version. Renames win over [`strip_namespace`](Self::strip_namespace).
    pub fn rename_type(mut self, from: &str, to: &str) -> Self {
        if let Err(error) = self.settings.type_names.rename(from, to) {
            self.error.get_or_insert(error);
        }
        self
    }

    /// One dead-letter stream for every stream; by default each stream `s` has its own, `{s}:dlq`,
    /// in the same Redis Cluster slot.
    pub fn dead_letter_stream(self, stream: impl Into<String>) -> Self {
        let stream = stream.into();
        self.settings(|settings| settings.dead_letter_stream = Some(stream))
    }

    /// Trims dead-letter streams to about `max_len` entries (default: no trimming).
    pub fn dead_letter_max_len(self, max_len: u64) -> Self {
        self.settings(|settings| settings.dead_letter_max_len = max_len)
    }

    /// How long shutdown may take, from the shutdown on (default 30 s): for reads under way,
    /// in-flight handlers and their acknowledgements (which get a second at least), also when
    /// Redis stalls. What is unfinished then stays pending for another consumer.
    pub fn shutdown_timeout(self, timeout: Duration) -> Self {
        self.settings(|settings| settings.shutdown_timeout = timeout)
    }

    /// Handles events of type `E`, deserialized and validated. Handlers of several versions of one
    /// event type may be registered (structs with the same name and other versions): an event
    /// goes to the handler of the oldest version at least as new as its own, older bodies read as
    /// [`Event::from_version`] says.
    ///
    /// # Panics
    /// When a handler for `E` (its type and version) is already registered, at the caller's line.
    #[track_caller]
    pub fn handle<E, F, Fut>(self, handler: F) -> Self
    where
        E: Event,
        F: Fn(E, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.handle_with(HandlerOptions::new(), handler)
    }

    /// [`handle`](Self::handle) with its own timeout or idempotency.
    ///
    /// # Panics
    /// When a handler for `E` (its type and version) is already registered, at the caller's line.
    #[track_caller]
    pub fn handle_with<E, F, Fut>(mut self, options: HandlerOptions, handler: F) -> Self
    where
        E: Event,
        F: Fn(E, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        // A limit that cannot work is an error of `build`; a second handler, a panic here.
        if let Some(limit) = &options.rate_limit
            && let Err(error) = limit.interval(E::NAME)
        {
            self.error.get_or_insert(error);
            return self;
        }
        if let Err(error) = self.registry.add_typed(handler, options) {
            panic!("{error}");
        }
        self
    }

    /// Handles every event whose type matches the glob `pattern` (`audit.*`), as a raw envelope
    /// in the [`Context`]. Typed handlers take precedence; patterns are tried in order.
    pub fn handle_pattern<F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.handle_pattern_with(pattern, HandlerOptions::new(), handler)
    }

    /// [`handle_pattern`](Self::handle_pattern) with its own timeout or idempotency.
    pub fn handle_pattern_with<F, Fut>(
        mut self,
        pattern: &str,
        options: HandlerOptions,
        handler: F,
    ) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        if let Err(error) = self.registry.add_pattern(pattern, handler, options) {
            self.error.get_or_insert(error);
        }
        self
    }

    /// Wraps every handler in a tower `layer`: middleware that sees each attempt's
    /// [`Call`](crate::Call) and outcome, such as [`CircuitBreaker`](crate::CircuitBreaker), a
    /// tower timeout or concurrency limit, or one of the caller's own. The first added is the
    /// outermost; a handler's own layers ([`HandlerOptions::layer`]) are inside these.
    pub fn layer(mut self, layer: impl HandlerLayer) -> Self {
        self.layers.push(wrap(layer));
        self
    }

    /// Runs before each handler call.
    pub fn before(mut self, hook: impl Fn(&Context) + Send + Sync + 'static) -> Self {
        self.hooks.before = Some(Arc::new(hook));
        self
    }

    /// Runs after each handler call, whatever its outcome.
    pub fn after(mut self, hook: impl Fn(&Context) + Send + Sync + 'static) -> Self {
        self.hooks.after = Some(Arc::new(hook));
        self
    }

    /// Runs when an attempt fails, before the retry or dead-letter decision is carried out.
    pub fn on_error(mut self, hook: impl Fn(&Context, &Failure) + Send + Sync + 'static) -> Self {
        self.hooks.on_error = Some(Arc::new(hook));
        self
    }

    /// Runs when an entry has been moved to a dead-letter stream.
    pub fn on_dead_letter(mut self, hook: impl Fn(&DeadLetter) + Send + Sync + 'static) -> Self {
        self.hooks.on_dead_letter = Some(Arc::new(hook));
        self
    }

    /// Checks the configuration and connects, for pull mode: the caller reserves entries and
    /// acknowledges or fails them; handlers and hooks are not used.
    pub async fn build_pull(self) -> Result<PullConsumer> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut settings = self.settings;
        settings.check()?;
        let reader =
            connect_direct(&self.endpoint, settings.block + Duration::from_secs(5)).await?;
        let commands = settings
            .connected(connect(&self.endpoint, Duration::from_secs(10)).await?)
            .await?;
        PullConsumer::start(
            settings.group_on(reader),
            commands,
            &self.endpoint,
            settings,
        )
        .await
    }

    /// The handlers, hooks and policies, run in-process on events given to them, without Redis:
    /// for testing handlers (see [`LocalConsumer`](crate::testing::LocalConsumer)). Streams and
    /// group may be left out.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn build_local(self) -> Result<super::LocalConsumer> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.registry.is_empty() {
            return Err(Error::Config("the consumer has no handlers".into()));
        }
        let mut registry = self.registry;
        registry.wrap_in(&self.layers);
        Ok(super::LocalConsumer::new(
            self.settings,
            registry,
            self.hooks,
        ))
    }

    /// Checks the configuration and connects.
    pub async fn build(self) -> Result<Consumer> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let settings = self.settings;
        settings.check()?;
        if let Some(timeout) = self.registry.longest_timeout()
            && timeout >= settings.claim_idle
        {
            return Err(Error::Config(format!(
                "a handler's timeout ({timeout:?}) must be shorter than claim_idle ({:?}), or entries still \
                 being handled would be taken over",
                settings.claim_idle
            )));
        }
        if self.registry.is_empty() {
            return Err(Error::Config("the consumer has no handlers".into()));
        }
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader =
                connect_direct(&self.endpoint, settings.block + Duration::from_secs(5)).await?;
            readers.push(settings.group_on(reader));
        }
        let mut settings = settings;
        let commands = settings
            .connected(connect(&self.endpoint, Duration::from_secs(10)).await?)
            .await?;
        let mut registry = self.registry;
        registry.wrap_in(&self.layers);
        registry.instrument(&settings.streams, &settings.group);
        let unhandled_metrics = settings
            .streams
            .iter()
            .map(|stream| HandlerMetrics::new(stream, &settings.group, "(none)"))
            .collect();
        let inner = Inner {
            unhandled_metrics,
            readers,
            commands,
            endpoint: self.endpoint,
            group_name: Arc::from(settings.group.as_str()),
            concurrency: Semaphore::new(settings.concurrency),
            registry,
            hooks: self.hooks,
            counters: Arc::default(),
            settings,
        };
        Ok(Consumer {
            inner: Arc::new(inner),
        })
    }
}

impl Settings {
    /// Checks the settings against the server `connection` talks to, reads what they depend on
    /// from it, and returns this consumer of this group over it.
    async fn connected(&mut self, connection: Connection) -> Result<Group<Connection>> {
        self.check_connection(&connection)?;
        check_server_version(&connection).await?;
        let group = self.group_on(connection);
        check_access(&group, self).await?;
        self.listpack_entries = group.listpack_entries().await;
        Ok(group)
    }

    /// Checks the settings that depend on what `connection` talks to: on a cluster, a shared
    /// dead-letter stream must live in the slot of every stream, since a dead-letter move touches
    /// both in one transaction.
    fn check_connection(&self, connection: &Connection) -> Result<()> {
        let Some(dead_letters) = &self.dead_letter_stream else {
            return Ok(());
        };
        if !connection.is_cluster() {
            return Ok(());
        }
        match self
            .streams
            .iter()
            .find(|stream| keys::slot(stream) != keys::slot(dead_letters))
        {
            Some(stream) => Err(Error::Config(format!(
                "dead_letter_stream `{dead_letters}` is in another cluster slot than stream `{stream}`: give \
                 them one hash tag (`{{tag}}:{stream}`, `{{tag}}:dlq`), or leave dead_letter_stream unset \
                 for a dead-letter stream per stream"
            ))),
            None => Ok(()),
        }
    }

    /// This consumer of this group, over `connection`.
    fn group_on(&self, connection: Connection) -> Group<Connection> {
        Group {
            connection,
            group: self.group.clone(),
            consumer: self.consumer.clone(),
        }
    }

    /// Checks the settings for values that cannot work, naming the setting.
    fn check(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Config(message));
        if self.streams.is_empty() {
            return fail("the consumer has no stream: add one with `.stream(..)`".into());
        }
        for stream in &self.streams {
            keys::check_stream_name(stream).map_err(Error::Config)?;
        }
        if self.group.is_empty() {
            return fail("the consumer has no group: set one with `.group(..)`".into());
        }
        if self.consumer.is_empty() {
            return fail("the consumer name is empty".into());
        }
        if self.batch_size == 0
            || self.concurrency == 0
            || self.max_unacked == 0
            || self.max_attempts == 0
        {
            return fail(
                "batch_size, concurrency, max_unacked and max_attempts must each be at least 1"
                    .into(),
            );
        }
        let longest_backoff = self.backoff.max();
        if self.claim_idle <= self.handler_timeout || self.claim_idle <= longest_backoff {
            return fail(format!(
                "claim_idle ({:?}) must be longer than the handler timeout ({:?}) and the longest backoff ({:?}), \
                 or entries still being handled would be taken over",
                self.claim_idle, self.handler_timeout, longest_backoff
            ));
        }
        if self.idempotency_ttl < Duration::from_millis(1) {
            return fail(format!(
                "idempotency_ttl ({:?}) must be at least a millisecond: it is how long a handled event is \
                 remembered, so that repeats of it are skipped",
                self.idempotency_ttl
            ));
        }
        let zero = [
            ("handler_timeout", self.handler_timeout),
            ("claim_idle", self.claim_idle),
            ("claim_interval", self.claim_interval),
            ("block", self.block),
            ("partition_lease", self.partition_lease),
        ];
        for (setting, value) in zero {
            if value < Duration::from_millis(1) {
                return fail(format!(
                    "{setting} ({value:?}) must be at least a millisecond"
                ));
            }
        }
        if let Some(dead_letters) = &self.dead_letter_stream
            && self.streams.contains(dead_letters)
        {
            return fail(format!(
                "dead_letter_stream `{dead_letters}` is also a stream the consumer reads: its dead \
                 letters would be delivered again"
            ));
        }
        Ok(())
    }
}
