//! The batched publisher: events queue in memory and are written in pipelined batches, bounded in
//! size, time, concurrency and memory, with nothing dropped silently.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::connection::Connection;
use crate::instruments::BatchMetrics;
use crate::publisher::RESPONSE_TIMEOUT;
use crate::{
    Backoff, Endpoint, Envelope, Error, Event, PublishOptions, Publisher, PublisherConfig, Result,
};

/// Which events share a queue, and so a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchingStrategy {
    /// One queue per event type (the seed library's `'exact'`).
    #[default]
    Exact,
    /// One queue per first `n` dot-separated segments of the type: with 1, `user.created` and
    /// `user.deleted` share the queue `user` (the seed library's `0` is 1 here, its `1` is 2; 0
    /// counts as 1).
    Prefix(usize),
}

impl BatchingStrategy {
    fn queue_of(self, event_type: &str) -> &str {
        match self {
            BatchingStrategy::Exact => event_type,
            BatchingStrategy::Prefix(segments) => {
                let end = event_type
                    .match_indices('.')
                    .nth(segments.saturating_sub(1))
                    .map_or(event_type.len(), |(index, _)| index);
                &event_type[..end]
            }
        }
    }
}

/// What `publish` does when the memory bound is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Wait until written events make room (backpressure).
    #[default]
    Wait,
    /// Return [`Error::Overloaded`] at once.
    Reject,
}

/// Limits and policies of a [`BatchedPublisher`].
#[derive(Debug, Clone)]
#[must_use]
pub struct BatchConfig {
    max_size: usize,
    max_wait: Duration,
    max_concurrent_batches: usize,
    strategy: BatchingStrategy,
    max_queued_messages: usize,
    max_queued_bytes: usize,
    overflow: Overflow,
    max_retries: u32,
    retry_backoff: Backoff,
}

impl Default for BatchConfig {
    /// Batches of up to 100 events or 100 ms, 5 at a time, one queue per type, at most 100,000
    /// events or 64 MiB held, waiting when full, 3 retries from 100 ms.
    fn default() -> Self {
        Self {
            max_size: 100,
            max_wait: Duration::from_millis(100),
            max_concurrent_batches: 5,
            strategy: BatchingStrategy::Exact,
            max_queued_messages: 100_000,
            max_queued_bytes: 64 << 20,
            overflow: Overflow::Wait,
            max_retries: 3,
            retry_backoff: Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

impl BatchConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// A queue is written once it holds this many events.
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size.max(1);
        self
    }

    /// A queue is written once its oldest event has waited this long.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// At most this many batches are being written at once; the others wait.
    pub fn max_concurrent_batches(mut self, batches: usize) -> Self {
        self.max_concurrent_batches = batches.max(1);
        self
    }

    /// Which events share a queue.
    pub fn strategy(mut self, strategy: BatchingStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// At most this many events held: queued, being written, or failed and kept.
    pub fn max_queued_messages(mut self, messages: usize) -> Self {
        self.max_queued_messages = messages.max(1);
        self
    }

    /// At most this many bytes of events held, as [`Envelope::memory_size`] counts them.
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes.max(1);
        self
    }

    /// What `publish` does when a bound is reached.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Retries of a batch whose write failed with a retryable error, before its events go to the
    /// failed list.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Delays between the retries of a batch.
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.retry_backoff = backoff;
        self
    }
}

/// A snapshot of what a [`BatchedPublisher`] holds and has done; cheap enough for every health
/// check (atomic counters, no lock held across an await).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Queues with events waiting.
    pub queue_count: usize,
    /// Events waiting in queues.
    pub queued_messages: usize,
    /// Bytes of events waiting in queues.
    pub queued_bytes: usize,
    /// Batches being written (at most `max_concurrent_batches`).
    pub in_flight_batches: usize,
    /// Events in the failed list.
    pub failed_messages: usize,
    /// Events held in all: queued, being written and failed; the memory bound applies to these.
    pub held_messages: usize,
    /// Bytes of the events held, and of the copies a write makes of them while it lasts (these
    /// are taken without waiting, so they may pass the bound while writes are under way).
    pub held_bytes: usize,
    /// Events written since the publisher was made.
    pub published_total: u64,
    /// Events that went to the failed list since the publisher was made.
    pub failed_total: u64,
}

/// An event whose batch could not be written, kept until it is retried or drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedMessage {
    /// The event, as it will be written when retried (same id and hash).
    pub envelope: Envelope,
    /// The last error.
    pub error: String,
}

/// Events of one queue waiting to be written.
#[derive(Debug)]
struct Queue {
    envelopes: Vec<Envelope>,
    bytes: usize,
    oldest: Instant,
}

/// Events taken from a queue (or the failed list) to be written together.
#[derive(Debug)]
struct Batch {
    id: u64,
    queue: String,
    envelopes: Vec<Envelope>,
    /// Their memory, as held for them under the bound.
    bytes: usize,
}

/// Batches made and not yet finished, and the callers waiting for them.
#[derive(Debug, Default)]
struct Unfinished {
    /// Ids of the batches.
    batches: BTreeSet<u64>,
    /// One for each [`Shared::wait_for_batches`] under way; those of dropped callers are pruned.
    tallies: Vec<Weak<Tally>>,
}

/// What one [`Shared::wait_for_batches`] counts: events of the batches it waits for that went to the
/// failed list.
#[derive(Debug)]
struct Tally {
    /// It waits for the batches with a lower id.
    end: u64,
    /// Events of those batches that went to the failed list since it began.
    failed: AtomicUsize,
}

/// State shared by the publisher and its background task.
struct Shared<C> {
    publisher: Publisher<C>,
    /// Publishers writing through connections of their own, taken in turn by batches in flight:
    /// batches sharing one connection go out one after another, its replies parsed by one task.
    lanes: Vec<Publisher<C>>,
    next_lane: AtomicUsize,
    config: BatchConfig,
    queues: Mutex<HashMap<String, Queue>>,
    failed: Mutex<Vec<FailedMessage>>,
    unfinished: Mutex<Unfinished>,
    next_batch: AtomicU64,
    batches: mpsc::UnboundedSender<Batch>,
    writers: Semaphore,
    closed: AtomicBool,
    queued_messages: AtomicUsize,
    queued_bytes: AtomicUsize,
    held_messages: AtomicUsize,
    held_bytes: AtomicUsize,
    in_flight_batches: AtomicUsize,
    failed_messages: AtomicUsize,
    published_total: AtomicU64,
    failed_total: AtomicU64,
    /// Signalled when held events are released.
    room: Notify,
    /// Signalled when a batch finishes.
    finished: Notify,
    metrics: BatchMetrics,
}

/// Publishes events in pipelined batches: `publish` validates, encodes and queues at once, and a
/// background task writes each queue when it is full or old enough, on `flush()` and on
/// `close()`. Each event is its own stream entry, so consumers acknowledge, retry and
/// dead-letter them one by one.
pub struct BatchedPublisher<C = Connection> {
    shared: Arc<Shared<C>>,
    _worker: AbortOnDropHandle<()>,
}

impl<C> fmt::Debug for BatchedPublisher<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchedPublisher")
            .field("config", &self.shared.config)
            .field("stats", &self.shared.stats())
            .finish_non_exhaustive()
    }
}

/// Most connections [`BatchedPublisher::connect`] opens.
const MOST_CONNECTIONS: usize = 8;

impl BatchedPublisher<Connection> {
    /// Connects a publisher to `endpoint` as [`Publisher::connect`] does, and batches what it
    /// writes within the limits of `config`, with a connection for each batch in flight (at
    /// most 8): on one, the batches in flight would go out one after another. To a single server
    /// a URL names (over TLS too) these are connections of its own, without redis-rs's
    /// multiplexing: each batch's `XADD`s are packed straight into one request and their entry
    /// ids read straight from the reply, for about a fifth less client CPU per event.
    pub async fn connect(
        endpoint: impl Into<Endpoint>,
        publisher: PublisherConfig,
        config: BatchConfig,
    ) -> Result<Self> {
        let endpoint = endpoint.into();
        let publisher = Publisher::connect(endpoint.clone(), publisher).await?;
        let lanes = config.max_concurrent_batches.min(MOST_CONNECTIONS);
        let mut lanes = futures::future::try_join_all(
            (0..lanes).map(|_| crate::connection::connect_direct(&endpoint, RESPONSE_TIMEOUT)),
        )
        .await?
        .into_iter();
        let first = lanes.next().expect("at least one batch in flight");
        Ok(Self::with_connections(
            publisher.with_connection(first),
            lanes,
            config,
        ))
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> BatchedPublisher<C> {
    /// Batches what `publisher` writes, within the limits of `config`, all through its
    /// connection.
    pub fn new(publisher: Publisher<C>, config: BatchConfig) -> Self {
        Self::with_connections(publisher, [], config)
    }

    /// Batches what `publisher` writes, within the limits of `config`, the batches in flight
    /// taking its connection and `more` in turn. Batches on one connection go out one after
    /// another; one connection per batch in flight writes them side by side.
    pub fn with_connections(
        publisher: Publisher<C>,
        more: impl IntoIterator<Item = C>,
        config: BatchConfig,
    ) -> Self {
        let (batches, receiver) = mpsc::unbounded_channel();
        let lanes = std::iter::once(publisher.clone())
            .chain(
                more.into_iter()
                    .map(|connection| publisher.with_connection(connection)),
            )
            .collect();
        let shared = Arc::new(Shared {
            publisher,
            lanes,
            next_lane: AtomicUsize::new(0),
            writers: Semaphore::new(config.max_concurrent_batches),
            config,
            queues: Mutex::new(HashMap::new()),
            failed: Mutex::new(Vec::new()),
            unfinished: Mutex::new(Unfinished::default()),
            next_batch: AtomicU64::new(0),
            batches,
            closed: AtomicBool::new(false),
            queued_messages: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            held_messages: AtomicUsize::new(0),
            held_bytes: AtomicUsize::new(0),
            in_flight_batches: AtomicUsize::new(0),
            failed_messages: AtomicUsize::new(0),
            published_total: AtomicU64::new(0),
            failed_total: AtomicU64::new(0),
            room: Notify::new(),
            finished: Notify::new(),
            metrics: BatchMetrics::new(),
        });
        let worker =
            AbortOnDropHandle::new(tokio::spawn(run_worker(Arc::clone(&shared), receiver)));
        Self {
            shared,
            _worker: worker,
        }
    }

    /// Validates and encodes `event` now (so a bad event fails its caller at once) and queues it;
    /// returns its event id. Waits or fails when the memory bound is reached, as configured.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<String> {
        self.publish_with(event, PublishOptions::new()).await
    }

    /// [`publish`](Self::publish) with correlation and causation ids, trace context or headers.
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        options: PublishOptions,
    ) -> Result<String> {
        self.enqueue(self.shared.publisher.envelope(event, options)?)
            .await
    }

    /// Queues an untyped event, checked by the publisher's raw validator.
    pub async fn publish_raw(&self, event_type: &str, body: Value) -> Result<String> {
        let envelope =
            self.shared
                .publisher
                .raw_envelope(event_type, &body, PublishOptions::new())?;
        self.enqueue(envelope).await
    }

    async fn enqueue(&self, envelope: Envelope) -> Result<String> {
        let shared = &self.shared;
        shared.publisher.router().destination(&envelope)?;
        let bytes = envelope.memory_size();
        if bytes > shared.config.max_queued_bytes {
            return Err(Error::Config(format!(
                "event `{}` takes {bytes} bytes, more than max_queued_bytes ({})",
                envelope.event_type, shared.config.max_queued_bytes
            )));
        }
        self.hold(bytes).await?;
        let id = envelope.id.clone();
        let full = {
            let mut queues = lock(&shared.queues);
            // close() marks the publisher closed before its flush takes the queues: checked under
            // their lock, an event is either taken by that flush or refused, never queued after it.
            if shared.closed.load(Ordering::Acquire) {
                drop(queues);
                shared.release(1, bytes);
                return Err(Error::Closed);
            }
            let name = shared.config.strategy.queue_of(&envelope.event_type);
            // One look-up for most events: a queue is made by its first event after each batch.
            let queue = match queues.get_mut(name) {
                Some(queue) => queue,
                None => queues.entry(name.to_owned()).or_insert_with(|| Queue {
                    envelopes: Vec::with_capacity(shared.config.max_size.min(1024)),
                    bytes: 0,
                    oldest: Instant::now(),
                }),
            };
            let full =
                (queue.envelopes.len() + 1 >= shared.config.max_size).then(|| name.to_owned());
            queue.envelopes.push(envelope);
            queue.bytes += bytes;
            let queued = shared.queued_messages.fetch_add(1, Ordering::Relaxed) + 1;
            shared.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
            shared.metrics.queued.set(queued as f64);
            full.and_then(|name| queues.remove(&name).map(|full| shared.batch_of(name, full)))
        };
        if let Some(batch) = full {
            shared.send(batch);
        }
        Ok(id)
    }

    /// Takes room for one event of `bytes` under the memory bound, waiting or failing when full;
    /// fails with [`Error::Closed`] once the publisher is closed, also while waiting.
    async fn hold(&self, bytes: usize) -> Result<()> {
        let shared = &self.shared;
        // Most events find room at once, without waiting for it.
        let held = || {
            if shared.closed.load(Ordering::Acquire) {
                return Some(Err(Error::Closed));
            }
            shared.try_hold(bytes).then_some(Ok(()))
        };
        loop {
            if let Some(held) = held() {
                return held;
            }
            if let Overflow::Reject = shared.config.overflow {
                return Err(Error::Overloaded {
                    messages: shared.held_messages.load(Ordering::Relaxed),
                    bytes: shared.held_bytes.load(Ordering::Relaxed),
                });
            }
            let room = shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            // Room made, or the publisher closed, before the wait began is seen here.
            if let Some(held) = held() {
                return held;
            }
            room.await;
        }
    }

    /// Writes every queued event now; returns once all events queued before the call are written
    /// or in the failed list.
    ///
    /// # Errors
    ///
    /// `Ok` only when every event of the batches it waited for was written and the failed list is
    /// empty afterwards: nothing published before the call is left unwritten. Otherwise
    /// [`Error::Unwritten`], with how many of those events went to the failed list (`failed`) and
    /// how many events the list holds now (`failed_list`, earlier failures included);
    /// [`failed_messages`](Self::failed_messages), [`retry_failed`](Self::retry_failed) and
    /// [`drain_failed`](Self::drain_failed) get them back.
    pub async fn flush(&self) -> Result<()> {
        let shared = &self.shared;
        let queues: Vec<(String, Queue)> = lock(&shared.queues).drain().collect();
        for (name, queue) in queues {
            let batch = shared.batch_of(name, queue);
            shared.send(batch);
        }
        let failed = shared.wait_for_batches().await;
        let failed_list = lock(&shared.failed).len();
        if failed == 0 && failed_list == 0 {
            Ok(())
        } else {
            Err(Error::Unwritten {
                failed,
                failed_list,
            })
        }
    }

    /// Stops accepting events, writes everything queued and returns when it is written or failed.
    /// From the call on, `publish` fails with [`Error::Closed`], also a `publish` waiting for room.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush): `Ok` only when nothing is left unwritten, otherwise
    /// [`Error::Unwritten`] with the counts.
    pub async fn close(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.room.notify_waiters();
        self.flush().await
    }

    /// The events kept because their batch could not be written.
    pub fn failed_messages(&self) -> Vec<FailedMessage> {
        lock(&self.shared.failed).clone()
    }

    /// Takes the failed events out, releasing the memory they held.
    pub fn drain_failed(&self) -> Vec<FailedMessage> {
        let shared = &self.shared;
        let drained = std::mem::take(&mut *lock(&shared.failed));
        shared
            .failed_messages
            .fetch_sub(drained.len(), Ordering::Relaxed);
        shared.release(drained.len(), held_by(&drained));
        drained
    }

    /// Writes the failed events again, in batches; returns how many were retried once their
    /// batches are written or failed again.
    pub async fn retry_failed(&self) -> Result<usize> {
        let shared = &self.shared;
        let failed = std::mem::take(&mut *lock(&shared.failed));
        shared
            .failed_messages
            .fetch_sub(failed.len(), Ordering::Relaxed);
        let count = failed.len();
        let mut envelopes = failed.into_iter().map(|failed| failed.envelope).peekable();
        while envelopes.peek().is_some() {
            let chunk: Vec<Envelope> = envelopes.by_ref().take(shared.config.max_size).collect();
            let id = shared.new_batch_id();
            shared.send(Batch {
                id,
                queue: "failed".into(),
                bytes: chunk.iter().map(Envelope::memory_size).sum(),
                envelopes: chunk,
            });
        }
        shared.wait_for_batches().await;
        Ok(count)
    }

    /// What the publisher holds and has done.
    pub fn memory_stats(&self) -> MemoryStats {
        self.shared.stats()
    }
}

impl<C> Drop for BatchedPublisher<C> {
    fn drop(&mut self) {
        let stats = self.shared.stats();
        let unwritten = stats.held_messages.saturating_sub(stats.failed_messages);
        if unwritten > 0 || stats.failed_messages > 0 {
            tracing::warn!(
                unwritten,
                failed = stats.failed_messages,
                "batched publisher dropped with events not written (unwritten: queued or being \
                 written, failed: in the failed list); call close() before dropping it, and \
                 retry_failed() or drain_failed() until the failed list is empty"
            );
        }
    }
}

impl<C> Shared<C> {
    /// The publisher the next write goes through, the lanes taken in turn.
    fn lane(&self) -> &Publisher<C> {
        let next = self.next_lane.fetch_add(1, Ordering::Relaxed);
        &self.lanes[next % self.lanes.len()]
    }

    fn stats(&self) -> MemoryStats {
        let read = |counter: &AtomicUsize| counter.load(Ordering::Relaxed);
        MemoryStats {
            queue_count: lock(&self.queues).len(),
            queued_messages: read(&self.queued_messages),
            queued_bytes: read(&self.queued_bytes),
            in_flight_batches: read(&self.in_flight_batches),
            failed_messages: read(&self.failed_messages),
            held_messages: read(&self.held_messages),
            held_bytes: read(&self.held_bytes),
            published_total: self.published_total.load(Ordering::Relaxed),
            failed_total: self.failed_total.load(Ordering::Relaxed),
        }
    }

    /// Takes room for one event of `bytes` if both bounds allow it.
    fn try_hold(&self, bytes: usize) -> bool {
        let messages = self.held_messages.fetch_add(1, Ordering::AcqRel) + 1;
        let held = self.held_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if messages <= self.config.max_queued_messages && held <= self.config.max_queued_bytes {
            return true;
        }
        self.held_messages.fetch_sub(1, Ordering::AcqRel);
        self.held_bytes.fetch_sub(bytes, Ordering::AcqRel);
        false
    }

    /// Releases room held by events (written or drained ones) or by a write's copies of them.
    fn release(&self, messages: usize, bytes: usize) {
        self.held_messages.fetch_sub(messages, Ordering::AcqRel);
        self.held_bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.room.notify_waiters();
    }

    fn new_batch_id(&self) -> u64 {
        let mut unfinished = lock(&self.unfinished);
        let id = self.next_batch.fetch_add(1, Ordering::AcqRel);
        unfinished.batches.insert(id);
        id
    }

    /// Marks batch `id` finished, `failed` of its events having gone to the failed list, and
    /// wakes the flushes waiting for it.
    fn finish(&self, id: u64, failed: usize) {
        let mut unfinished = lock(&self.unfinished);
        unfinished.batches.remove(&id);
        unfinished.tallies.retain(|tally| {
            let tally = tally.upgrade();
            if let Some(tally) = tally.as_ref().filter(|tally| id < tally.end) {
                tally.failed.fetch_add(failed, Ordering::Relaxed);
            }
            tally.is_some()
        });
        drop(unfinished);
        self.finished.notify_waiters();
    }

    /// A batch of a queue's events, no longer counted as queued.
    fn batch_of(&self, queue: String, waiting: Queue) -> Batch {
        let taken = waiting.envelopes.len();
        let queued = self.queued_messages.fetch_sub(taken, Ordering::Relaxed) - taken;
        self.metrics.queued.set(queued as f64);
        self.queued_bytes
            .fetch_sub(waiting.bytes, Ordering::Relaxed);
        Batch {
            id: self.new_batch_id(),
            queue,
            envelopes: waiting.envelopes,
            bytes: waiting.bytes,
        }
    }

    fn send(&self, batch: Batch) {
        // The worker lives as long as the publisher, which owns this sender's receiver's task.
        let _ = self.batches.send(batch);
    }

    /// Waits until every batch made so far has finished; returns how many of their events went
    /// to the failed list meanwhile. The tally is registered under the lock batches are made and
    /// finished under, so it counts exactly the batches waited for.
    async fn wait_for_batches(&self) -> usize {
        let tally = {
            let mut unfinished = lock(&self.unfinished);
            let tally = Arc::new(Tally {
                end: self.next_batch.load(Ordering::Acquire),
                failed: AtomicUsize::new(0),
            });
            unfinished.tallies.retain(|tally| tally.strong_count() > 0);
            unfinished.tallies.push(Arc::downgrade(&tally));
            tally
        };
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if lock(&self.unfinished)
                .batches
                .first()
                .is_none_or(|first| *first >= tally.end)
            {
                return tally.failed.load(Ordering::Relaxed);
            }
            finished.await;
        }
    }

    /// Queues whose oldest event has waited `max_wait`, as batches.
    fn take_due(&self) -> Vec<Batch> {
        let mut queues = lock(&self.queues);
        let due: Vec<String> = queues
            .iter()
            .filter(|(_, queue)| queue.oldest.elapsed() >= self.config.max_wait)
            .map(|(name, _)| name.clone())
            .collect();
        due.into_iter()
            .filter_map(|name| queues.remove(&name).map(|queue| (name, queue)))
            .map(|(name, queue)| self.batch_of(name, queue))
            .collect()
    }
}

/// The memory failed events hold under the bound.
fn held_by(failed: &[FailedMessage]) -> usize {
    failed
        .iter()
        .map(|failed| failed.envelope.memory_size())
        .sum()
}

/// Locks `mutex`; a panic while it was held cannot leave the counters or lists half-changed, so
/// poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes batches as they come and queues as they come due, at most `max_concurrent_batches` at
/// a time.
async fn run_worker<C>(shared: Arc<Shared<C>>, mut batches: mpsc::UnboundedReceiver<Batch>)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let period =
        (shared.config.max_wait / 4).clamp(Duration::from_millis(1), Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writes = JoinSet::new();
    loop {
        tokio::select! {
            batch = batches.recv() => match batch {
                Some(batch) => {
                    writes.spawn(write_batch(Arc::clone(&shared), batch));
                }
                None => break,
            },
            _ = tick.tick() => {
                for batch in shared.take_due() {
                    writes.spawn(write_batch(Arc::clone(&shared), batch));
                }
            }
            Some(_) = writes.join_next(), if !writes.is_empty() => {}
        }
    }
    while writes.join_next().await.is_some() {}
}

/// A batch being written: counted in `in_flight_batches`, and the copies its write makes of the
/// events in `held_bytes`, until dropped, however the write ends.
struct InFlight<'a, C> {
    shared: &'a Shared<C>,
    copies: usize,
}

impl<'a, C> InFlight<'a, C> {
    fn start(shared: &'a Shared<C>, bytes: usize) -> Self {
        // Writing through redis-rs copies each event into a command (its argument bytes and an
        // index of them, about once the envelope's memory) and then into the pipeline's buffer
        // (about once more); a request packed by hand holds one copy, in a buffer grown by
        // doubling. Three times the envelopes' memory (`bytes`), more than either, is counted
        // while the write lasts, so that publishers wait for it as for queued events.
        let copies = 3 * bytes;
        shared.held_bytes.fetch_add(copies, Ordering::AcqRel);
        shared.in_flight_batches.fetch_add(1, Ordering::AcqRel);
        Self { shared, copies }
    }
}

impl<C> Drop for InFlight<'_, C> {
    fn drop(&mut self) {
        self.shared.in_flight_batches.fetch_sub(1, Ordering::AcqRel);
        self.shared.release(0, self.copies);
    }
}

/// Writes one batch, in its own span, once a writer's turn comes.
async fn write_batch<C>(shared: Arc<Shared<C>>, batch: Batch)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let _turn = shared.writers.acquire().await;
    let in_flight = InFlight::start(&shared, batch.bytes);
    let span = tracing::info_span!(
        "events.batch",
        queue = %batch.queue,
        size = batch.envelopes.len(),
        written = tracing::field::Empty,
        failed = tracing::field::Empty,
    );
    let failed = write_retrying(&shared, batch.envelopes, batch.bytes)
        .instrument(span)
        .await;
    // Released before the batch counts as finished: a flush returns with its memory free.
    drop(in_flight);
    shared.finish(batch.id, failed);
}

/// Writes `pending` (holding `bytes` of memory), retrying what failed for a retryable reason;
/// whatever is left goes to the failed list. Returns how many events went there.
async fn write_retrying<C>(shared: &Shared<C>, mut pending: Vec<Envelope>, bytes: usize) -> usize
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let mut failed: Vec<FailedMessage> = Vec::new();
    let mut written = 0usize;
    let mut last_error = String::new();
    for attempt in 0..=shared.config.max_retries {
        if attempt > 0 {
            tokio::time::sleep(shared.config.retry_backoff.delay(attempt)).await;
        }
        match shared.lane().write(&pending, |_, _, _| ()).await {
            Ok(results) => {
                let mut retry = Vec::new();
                for (envelope, result) in pending.into_iter().zip(results) {
                    match result {
                        Ok(_) => written += 1,
                        Err(error) if error.is_retryable() => {
                            last_error = error.to_string();
                            retry.push(envelope);
                        }
                        Err(error) => failed.push(FailedMessage {
                            envelope,
                            error: error.to_string(),
                        }),
                    }
                }
                pending = retry;
            }
            Err(error) if error.is_retryable() => last_error = error.to_string(),
            Err(error) => {
                last_error = error.to_string();
                break;
            }
        }
        if pending.is_empty() {
            break;
        }
        tracing::debug!(attempt, remaining = pending.len(), error = %last_error, "batch write failed");
    }
    failed.extend(pending.into_iter().map(|envelope| FailedMessage {
        envelope,
        error: last_error.clone(),
    }));
    shared.metrics.size.record(written as f64);
    let span = tracing::Span::current();
    span.record("written", written);
    span.record("failed", failed.len());
    if !failed.is_empty() {
        tracing::warn!(failed = failed.len(), error = %failed[0].error, "events kept in the failed list");
    }
    let count = failed.len();
    shared
        .published_total
        .fetch_add(written as u64, Ordering::Relaxed);
    shared
        .failed_total
        .fetch_add(count as u64, Ordering::Relaxed);
    shared.failed_messages.fetch_add(count, Ordering::Relaxed);
    // The failed events keep the memory they hold; the written ones release theirs.
    let kept_bytes = held_by(&failed);
    lock(&shared.failed).extend(failed);
    shared.release(written, bytes - kept_bytes);
    count
}

#[cfg(test)]
mod tests {
    use super::BatchingStrategy;

    #[test]
    fn queues_by_type_or_by_its_first_segments() {
        assert_eq!(
            BatchingStrategy::Exact.queue_of("user.profile.updated"),
            "user.profile.updated"
        );
        assert_eq!(
            BatchingStrategy::Prefix(1).queue_of("user.profile.updated"),
            "user"
        );
        assert_eq!(
            BatchingStrategy::Prefix(2).queue_of("user.profile.updated"),
            "user.profile"
        );
        assert_eq!(
            BatchingStrategy::Prefix(5).queue_of("user.created"),
            "user.created"
        );
        assert_eq!(BatchingStrategy::Prefix(0).queue_of("user.created"), "user");
    }
}
