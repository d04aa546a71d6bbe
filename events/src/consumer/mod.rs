//! The consumer-group server: reads streams in a group and runs the registered handlers, with
//! bounded concurrency, retries, idempotency, dead letters and reclaim of crashed consumers' work.

mod backoff;
mod builder;
mod config;
mod dead_letter;
mod delivery;
mod group;
mod handler;
mod idempotency;
mod partitions;
mod pull;
mod reading;
mod settle;
mod stale;
mod status;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

pub use backoff::Backoff;
pub use builder::ConsumerBuilder;
pub use config::{HandlerOptions, Unhandled};
pub use dead_letter::{DEAD_LETTER_PREFIX, DeadLetter};
pub use group::StartFrom;
pub use handler::{Context, Failure, HandlerError};
pub use pull::{PullConsumer, Reserved};
pub use stale::remove_stale_consumers_of;
pub use status::Status;

use crate::connection::Connection;
use crate::instruments::HandlerMetrics;
use config::{Hooks, Settings};
use group::Group;
pub(crate) use group::parse_read_reply;
use handler::Registry;
use reading::Reading;
use status::Counters;

use crate::Result;

/// Shared state of a consumer and its deliveries.
#[derive(Debug)]
pub(crate) struct Inner {
    settings: Settings,
    registry: Registry,
    hooks: Hooks,
    group_name: Arc<str>,
    /// Blocking reads only, so they never hold up the commands behind them; more than one, so
    /// that a read can be under way while the reply to the one before is parsed.
    readers: Vec<Group<Connection>>,
    /// Everything else: acknowledgements, scripts, claims.
    commands: Group<Connection>,
    counters: Counters,
    concurrency: Semaphore,
    /// Metric handles for entries without a handler (undecodable or unhandled), per stream.
    unhandled_metrics: Vec<HandlerMetrics>,
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

impl Consumer {
    /// Starts configuring a consumer of the Redis at `url`, such as `redis://127.0.0.1:6379`.
    pub fn builder(url: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder::new(url.into())
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

    /// Reads and handles entries until `shutdown` is cancelled. Then it stops reading, handles the
    /// entries it has read (running, or waiting for a free slot) within the shutdown timeout,
    /// acknowledges what was finished and returns; whatever is unfinished then, and retries
    /// waiting for their backoff, stay pending for another consumer to reclaim.
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
        // Owned by this future: dropping it (a consumer killed without shutdown) stops them too.
        let acknowledger = AbortOnDropHandle::new(tokio::spawn(settle::acknowledge(
            inner.commands.clone(),
            settle_receiver,
            settings.idempotency_ttl,
        )));
        let (holds, holds_task) = idempotency::Holds::serve(inner.commands.clone());
        // Partition leases are kept by a task of their own, so that a busy read loop never lets
        // them lapse; it gives them up when reading stops.
        let ownership = partitions::Ownership::default();
        let stop_leases = CancellationToken::new();
        let leases = AbortOnDropHandle::new(tokio::spawn(ownership.clone().keep(
            inner.commands.clone(),
            settings.partitioned.clone(),
            settings.partition_lease,
            partitions::Waits {
                drain: settings.block + Duration::from_millis(100),
                settle: settings.claim_idle,
            },
            stop_leases.clone(),
        )));
        let mut reading = Reading {
            holds,
            inner: Arc::clone(inner),
            unacked: Arc::new(Semaphore::new(settings.max_unacked)),
            deliveries: JoinSet::new(),
            settle: settle_sender,
            shutdown: shutdown.clone(),
            last_seen: HashMap::new(),
            key_turns: HashMap::new(),
            next_stream: 0,
            empty_reads: 0,
            ownership: ownership.clone(),
            partitions: settings
                .partitioned
                .iter()
                .flat_map(|logical| crate::partition_streams(&logical.stream, logical.partitions))
                .collect(),
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
        stop_leases.cancel();
        for task in [acknowledger, holds_task, leases] {
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
            removed.extend(stale::remove_stale_consumers(&inner.commands, stream, idle).await?);
        }
        Ok(removed)
    }
}
