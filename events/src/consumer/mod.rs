//! The consumer-group server: reads streams in a group and runs the registered handlers, with
//! bounded concurrency, retries, idempotency, dead letters and reclaim of crashed consumers' work.

mod backoff;
mod config;
mod dead_letter;
mod delivery;
mod group;
mod handler;
mod idempotency;
mod pull;
mod settle;
mod status;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

pub use backoff::Backoff;
pub use config::{HandlerOptions, Unhandled};
pub use dead_letter::{DEAD_LETTER_PREFIX, DeadLetter};
pub use group::StartFrom;
pub use handler::{Context, Failure, HandlerError};
pub use pull::{PullConsumer, Reserved};
pub use status::Status;

use config::{Hooks, Settings};
use delivery::Delivery;
use group::{Group, is_no_group};
use handler::Registry;
use status::Counters;

use crate::{Error, Event, Result, StreamEntry, keys};

/// Shared state of a consumer and its deliveries.
#[derive(Debug)]
pub(crate) struct Inner {
    settings: Settings,
    registry: Registry,
    hooks: Hooks,
    group_name: Arc<str>,
    /// Blocking reads only, so they never hold up the commands behind them.
    reader: Group<ConnectionManager>,
    /// Everything else: acknowledgements, scripts, claims.
    commands: Group<ConnectionManager>,
    counters: Counters,
    concurrency: Semaphore,
}

/// A consumer in a Redis Streams consumer group, running registered handlers. Build it with
/// [`Consumer::builder`], then [`run`](Consumer::run) it until shutdown.
///
/// Cheap to clone: clones share the same consumer, so one can run while another reports
/// [`status`](Consumer::status).
#[derive(Debug, Clone)]
pub struct Consumer {
    inner: Arc<Inner>,
}

/// Configures a [`Consumer`]: streams, group, handlers and policies.
#[must_use]
pub struct ConsumerBuilder {
    url: String,
    settings: Settings,
    registry: Registry,
    hooks: Hooks,
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

impl Consumer {
    /// Starts configuring a consumer of the Redis at `url`, such as `redis://127.0.0.1:6379`.
    pub fn builder(url: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder {
            url: url.into(),
            settings: Settings::new(),
            registry: Registry::default(),
            hooks: Hooks::default(),
            error: None,
        }
    }

    /// What the consumer is doing and has done.
    pub fn status(&self) -> Status {
        self.inner.counters.snapshot(self.inner.registry.names())
    }

    /// This consumer's name in its group.
    pub fn name(&self) -> &str {
        &self.inner.settings.consumer
    }

    /// Runs until `shutdown` completes, then shuts down gracefully (see [`run`](Consumer::run)).
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let token = CancellationToken::new();
        let run = self.run(token.clone());
        tokio::pin!(run);
        tokio::select! {
            result = &mut run => return result,
            () = shutdown => token.cancel(),
        }
        run.await
    }

    /// Reads and handles entries until `shutdown` is cancelled. Then it stops reading, lets
    /// in-flight handlers finish within the shutdown timeout, acknowledges what they finished and
    /// returns; whatever is unfinished stays pending for another consumer to reclaim.
    ///
    /// Lost connections and Redis restarts are retried, not returned: it returns an error only
    /// when the group cannot be created at start.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let inner = &self.inner;
        let settings = &inner.settings;
        inner
            .commands
            .ensure_all(&settings.streams, &settings.start_from)
            .await?;
        inner
            .counters
            .running
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (settle_sender, settle_receiver) = mpsc::unbounded_channel();
        let acknowledger = tokio::spawn(settle::acknowledge(
            inner.commands.clone(),
            settle_receiver,
            settings.idempotency_ttl,
        ));
        let (holds, holds_task) = idempotency::Holds::serve(inner.commands.clone());
        let mut reading = Reading {
            holds,
            inner: Arc::clone(inner),
            unacked: Arc::new(Semaphore::new(settings.max_unacked)),
            deliveries: JoinSet::new(),
            settle: settle_sender,
            shutdown: shutdown.clone(),
            last_seen: HashMap::new(),
            streams: settings
                .streams
                .iter()
                .map(|stream| Arc::from(stream.as_str()))
                .collect(),
        };
        reading.read_until_shutdown().await;
        let Reading {
            mut deliveries,
            settle,
            holds,
            ..
        } = reading;
        // The acknowledger and the holds task end once the deliveries drop their senders too.
        drop((settle, holds));
        if tokio::time::timeout(settings.shutdown_timeout, async {
            while deliveries.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                unfinished = deliveries.len(),
                "shutdown timeout passed; unfinished entries stay pending for another consumer"
            );
            deliveries.shutdown().await;
        }
        for task in [acknowledger, holds_task] {
            if let Err(error) = task.await {
                tracing::error!(%error, "a consumer task failed");
            }
        }
        inner
            .counters
            .running
            .store(false, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Removes consumers of this group that have been idle for at least `idle` and have no pending
    /// entries, from every stream; returns their names. A consumer with pending entries is never
    /// removed, since that would drop its entries from the group.
    pub async fn remove_stale_consumers(&self, idle: Duration) -> Result<Vec<String>> {
        let inner = &self.inner;
        let mut removed = Vec::new();
        for stream in &inner.settings.streams {
            let read_error = |source| Error::Read {
                stream: stream.clone(),
                source,
            };
            let consumers: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(stream)
                .arg(&*inner.group_name)
                .query_async(&mut inner.commands.connection.clone())
                .await
                .map_err(read_error)?;
            for consumer in consumers {
                let number = |field: &str| {
                    consumer
                        .get(field)
                        .and_then(|value| redis::from_redis_value_ref::<u64>(value).ok())
                        .unwrap_or(0)
                };
                let Some(name) = consumer
                    .get("name")
                    .and_then(|value| redis::from_redis_value_ref::<String>(value).ok())
                else {
                    continue;
                };
                let idle_for = Duration::from_millis(number("idle"));
                if name == inner.settings.consumer || number("pending") > 0 || idle_for < idle {
                    continue;
                }
                if inner
                    .commands
                    .remove_consumer(stream, &name)
                    .await
                    .map_err(read_error)?
                {
                    removed.push(name);
                }
            }
        }
        Ok(removed)
    }
}

/// What one read of the streams gives: per stream, its entries.
type ReadResult = redis::RedisResult<Vec<(String, Vec<StreamEntry>)>>;

/// The read loop's state while a consumer runs.
struct Reading {
    inner: Arc<Inner>,
    /// One permit per entry read and not yet acknowledged: the backpressure bound.
    unacked: Arc<Semaphore>,
    deliveries: JoinSet<()>,
    settle: mpsc::UnboundedSender<delivery::Settle>,
    holds: idempotency::Holds,
    shutdown: CancellationToken,
    /// The last entry id read per stream, to recreate a vanished group where it was.
    last_seen: HashMap<Arc<str>, String>,
    streams: Vec<Arc<str>>,
}

impl Reading {
    async fn read_until_shutdown(&mut self) {
        let settings = self.inner.settings.clone();
        let mut last_claim: Option<Instant> = None;
        let mut failures = 0u32;
        // A read already sent, so Redis prepares the next batch while this one is delivered.
        let mut next_read: Option<AbortOnDropHandle<ReadResult>> = None;
        loop {
            while self.deliveries.try_join_next().is_some() {}
            let read = match next_read.take() {
                Some(read) => read,
                None => {
                    let first = tokio::select! {
                        () = self.shutdown.cancelled() => break,
                        permit = Arc::clone(&self.unacked).acquire_owned() => permit.expect("the semaphore is never closed"),
                    };
                    if last_claim.is_none_or(|at| at.elapsed() >= settings.claim_interval) {
                        drop(first);
                        self.reclaim().await;
                        last_claim = Some(Instant::now());
                        continue;
                    }
                    self.start_read(1 + self.unacked.available_permits())
                }
            };
            let read = match read.await {
                Ok(read) => read,
                Err(error) => Err(redis::RedisError::from(std::io::Error::other(error))),
            };
            let received: usize = read.as_ref().map_or(0, |streams| {
                streams.iter().map(|(_, entries)| entries.len()).sum()
            });
            let room = self.unacked.available_permits().saturating_sub(received);
            let claim_due = last_claim.is_some_and(|at| at.elapsed() >= settings.claim_interval);
            if received > 0 && room > 0 && !claim_due && !self.shutdown.is_cancelled() {
                next_read = Some(self.start_read(room));
            }
            match read {
                Ok(streams) => {
                    failures = 0;
                    for (stream, entries) in streams {
                        let Some(stream) =
                            self.streams.iter().find(|name| ***name == *stream).cloned()
                        else {
                            continue;
                        };
                        if let Some(last) = entries.last() {
                            self.last_seen.insert(Arc::clone(&stream), last.id.clone());
                        }
                        self.deliver(&stream, entries.into_iter().map(|entry| (entry, 1)))
                            .await;
                    }
                }
                Err(error) if is_no_group(&error) => {
                    tracing::warn!(%error, "the consumer group or its stream vanished; recreating it");
                    self.recreate_groups().await;
                }
                Err(error) => {
                    failures += 1;
                    let delay =
                        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5))
                            .delay(failures);
                    tracing::warn!(%error, retry_in = ?delay, "reading the streams failed");
                    tokio::select! {
                        () = self.shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Sends a read of up to `room` entries (at most a batch) from every stream.
    fn start_read(&self, room: usize) -> AbortOnDropHandle<ReadResult> {
        let reader = self.inner.reader.clone();
        let streams = self.inner.settings.streams.clone();
        let count = self.inner.settings.batch_size.min(room);
        let block = self.inner.settings.block;
        AbortOnDropHandle::new(tokio::spawn(async move {
            reader.read(&streams, count, block).await
        }))
    }

    /// Starts deliveries of `entries` of `stream` (each with its attempt number), each once it has
    /// a backpressure permit. They run concurrently in one task: cheaper than a task each.
    async fn deliver(
        &mut self,
        stream: &Arc<str>,
        entries: impl IntoIterator<Item = (StreamEntry, u32)>,
    ) {
        let mut deliveries = Vec::new();
        for (entry, attempt) in entries {
            let permit = Arc::clone(&self.unacked)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            deliveries.push(
                Delivery {
                    inner: Arc::clone(&self.inner),
                    stream: Arc::clone(stream),
                    entry,
                    attempt,
                    permit: Some(permit),
                    settle: self.settle.clone(),
                    holds: self.holds.clone(),
                    shutdown: self.shutdown.clone(),
                }
                .run(),
            );
        }
        if !deliveries.is_empty() {
            self.deliveries.spawn(async move {
                futures::future::join_all(deliveries).await;
            });
        }
    }

    /// Claims entries idle past `claim_idle` on any consumer of the group, as far as backpressure
    /// allows, and delivers them again as their next attempt.
    async fn reclaim(&mut self) {
        let settings = self.inner.settings.clone();
        for stream in self.streams.clone() {
            let mut cursor = "0-0".to_owned();
            loop {
                let room = self.unacked.available_permits().min(settings.batch_size);
                if room == 0 {
                    return;
                }
                let claimed = self
                    .inner
                    .commands
                    .claim_idle(&stream, settings.claim_idle, &cursor, room)
                    .await;
                let (next, entries, deleted) = match claimed {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        if is_no_group(&error) {
                            self.recreate_groups().await;
                        } else {
                            tracing::warn!(%stream, %error, "reclaiming idle entries failed");
                        }
                        break;
                    }
                };
                Counters::add(&self.inner.counters.cleaned, deleted as u64);
                Counters::add(&self.inner.counters.reclaimed, entries.len() as u64);
                self.deliver(&stream, entries).await;
                if next == "0-0" {
                    break;
                }
                cursor = next;
            }
        }
    }

    /// Creates missing groups again, after the last entry read from each stream so nothing is
    /// skipped and nothing read is delivered twice.
    async fn recreate_groups(&mut self) {
        for stream in &self.streams {
            let start = match self.last_seen.get(stream) {
                Some(id) => StartFrom::Id(id.clone()),
                None => self.inner.settings.start_from.clone(),
            };
            if let Err(error) = self.inner.commands.ensure(stream, &start).await {
                tracing::warn!(%stream, %error, "could not recreate the consumer group");
            }
        }
    }
}

impl ConsumerBuilder {
    fn settings(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        change(&mut self.settings);
        self
    }

    /// Adds a stream to consume; call it once per stream.
    pub fn stream(self, stream: impl Into<String>) -> Self {
        let stream = stream.into();
        self.settings(|settings| settings.streams.push(stream))
    }

    /// The consumer group (created if missing).
    pub fn group(self, group: impl Into<String>) -> Self {
        let group = group.into();
        self.settings(|settings| settings.group = group)
    }

    /// This consumer's name in the group; by default `<host>-<pid>`, stable for the process.
    pub fn consumer_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.settings(|settings| settings.consumer = name)
    }

    /// Where a newly created group starts reading (default: new entries only).
    pub fn start_from(self, start: StartFrom) -> Self {
        self.settings(|settings| settings.start_from = start)
    }

    /// How many entries one read asks for (default 100).
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

    /// How long an event is remembered as handled (default 24 h).
    pub fn idempotency_ttl(self, ttl: Duration) -> Self {
        self.settings(|settings| settings.idempotency_ttl = ttl)
    }

    /// What to do with events no handler is registered for (default: skip).
    pub fn unhandled(self, unhandled: Unhandled) -> Self {
        self.settings(|settings| settings.unhandled = unhandled)
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

    /// How long shutdown waits for in-flight handlers (default 30 s).
    pub fn shutdown_timeout(self, timeout: Duration) -> Self {
        self.settings(|settings| settings.shutdown_timeout = timeout)
    }

    /// Handles events of type `E`, deserialized and validated.
    ///
    /// # Panics
    /// When a handler for `E` is already registered, at the caller's line.
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
    /// When a handler for `E` is already registered, at the caller's line.
    #[track_caller]
    pub fn handle_with<E, F, Fut>(mut self, options: HandlerOptions, handler: F) -> Self
    where
        E: Event,
        F: Fn(E, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
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
        self.settings.check()?;
        let connection = connect(&self.url, self.settings.block + Duration::from_secs(5)).await?;
        PullConsumer::start(self.settings.group_on(connection), self.settings).await
    }

    /// Checks the configuration and connects.
    pub async fn build(self) -> Result<Consumer> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let settings = self.settings;
        settings.check()?;
        if self.registry.is_empty() {
            return Err(Error::Config("the consumer has no handlers".into()));
        }
        let reader = connect(&self.url, settings.block + Duration::from_secs(5)).await?;
        let commands = connect(&self.url, Duration::from_secs(10)).await?;
        let inner = Inner {
            reader: settings.group_on(reader),
            commands: settings.group_on(commands),
            group_name: Arc::from(settings.group.as_str()),
            concurrency: Semaphore::new(settings.concurrency),
            registry: self.registry,
            hooks: self.hooks,
            counters: Counters::default(),
            settings,
        };
        Ok(Consumer {
            inner: Arc::new(inner),
        })
    }
}

/// A connection to `url` that reconnects by itself and gives up on a reply after `response_timeout`.
async fn connect(url: &str, response_timeout: Duration) -> Result<ConnectionManager> {
    let client = redis::Client::open(url).map_err(|source| Error::Connect { source })?;
    let config = ConnectionManagerConfig::new().set_response_timeout(Some(response_timeout));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|source| Error::Connect { source })
}

impl Settings {
    /// This consumer of this group, over `connection`.
    fn group_on(&self, connection: ConnectionManager) -> Group<ConnectionManager> {
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
        Ok(())
    }
}
