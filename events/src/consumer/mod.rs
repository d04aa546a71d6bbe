//! The consumer-group server: reads streams in a group and runs the registered handlers, with
//! bounded concurrency, retries, idempotency, dead letters and reclaim of crashed consumers' work.

mod access;
mod attempt;
mod backoff;
mod batcher;
mod builder;
mod circuit_breaker;
mod config;
mod dead_letter;
mod delayed;
mod delivery;
mod group;
mod handler;
mod idempotency;
mod identity;
mod keeper;
#[cfg(feature = "testing")]
mod local;
mod middleware;
mod names;
mod part;
mod partitions;
mod pull;
mod rate_limit;
mod reading;
mod reclaim;
mod settle;
mod stale;
mod status;
mod subscription;
mod turns;
mod type_names;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

pub use backoff::Backoff;
pub use builder::ConsumerBuilder;
pub use circuit_breaker::{Breaker, CircuitBreaker};
pub use config::{HandlerOptions, NewerVersions, Unhandled};
pub use dead_letter::{DEAD_LETTER_PREFIX, DeadLetter};
pub use group::StartFrom;
pub use handler::{Context, Failure, HandlerError};
pub use identity::Identity;
#[cfg(feature = "testing")]
pub use local::{LocalConsumer, Outcome};
pub use middleware::{BoxError, Call, HandlerLayer, RunHandler, Stack};
pub use pull::{PullConsumer, Reserved};
pub use rate_limit::RateLimit;
pub use stale::remove_stale_consumers_of;
pub use status::{Operation, Stall, Status};
pub use subscription::{Delivery, Subscription};

use crate::connection::Connection;
use crate::instruments::HandlerMetrics;
use config::{Hooks, Settings};
use group::Group;
use handler::Registry;
use idempotency::Holds;
use keeper::Keeper;
use names::NameInUse;
use partitions::Leases;
use rate_limit::Places;
use reading::Reading;
use settle::{Acks, ack_grace};
use status::{Counted, Counters};

use crate::{Result, ServerStats, server_stats};

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
    /// Where the consumer connects: the keeper makes a connection of its own there.
    endpoint: crate::Endpoint,
    counters: Arc<Counters>,
    concurrency: Semaphore,
    /// Metric handles for entries without a handler (undecodable or unhandled), per stream.
    unhandled_metrics: Vec<HandlerMetrics>,
}

/// What the tasks of one run of a consumer share.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) inner: Arc<Inner>,
    /// The streams read, in the consumer's order.
    pub(crate) streams: Vec<Arc<str>>,
    pub(crate) acks: Acks,
    pub(crate) holds: Holds,
    /// Where events ask for their places under rate limits.
    pub(crate) places: Places,
    pub(crate) keeper: Keeper,
    pub(crate) shutdown: CancellationToken,
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
    /// Starts configuring a consumer of the Redis at `endpoint` (or a URL, such as
    /// `redis://127.0.0.1:6379`).
    pub fn builder(endpoint: impl Into<crate::Endpoint>) -> ConsumerBuilder {
        ConsumerBuilder::new(endpoint.into())
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
    /// entries it has read (running, or waiting for a free slot) and settles them in Redis, all
    /// within the shutdown timeout (and a second more for acknowledgements, at least), and
    /// returns; whatever is unfinished then, and retries waiting for their backoff, stay pending
    /// for another consumer to take over.
    ///
    /// Lost connections and Redis restarts are retried, not returned: it returns an error only
    /// when the group cannot be created at start for a reason retrying does not cure, or
    /// [`Error::Unsettled`](crate::Error::Unsettled) when acknowledgements of events it handled
    /// had not landed by the end of the shutdown timeout (Redis taking no write meanwhile).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let inner = &self.inner;
        let settings = &inner.settings;
        let commands = &inner.commands;
        let mut attempt = 0;
        let (streams, positions) = loop {
            match commands.open(&settings.streams, &settings.start_from).await {
                Ok(opened) => break opened,
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, "could not open the group yet; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(settings.backoff.delay(attempt)) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                    attempt = attempt.saturating_add(1);
                }
                Err(error) => return Err(error),
            }
        };
        if let Ok(ServerStats {
            warning: Some(warning),
            ..
        }) = server_stats(&mut commands.connection.clone()).await
        {
            tracing::warn!("{warning}");
        }
        let _run = Counted::new(&inner.counters.runs);
        // Entries still pending on this consumer's name are an earlier run's, unless another run
        // uses the name: this run takes them back at once instead of after `claim_idle`.
        let (name, take_back) = NameInUse::start(&settings.group, &settings.consumer);
        // Tasks owned by this future: dropping it (a consumer killed without shutdown) stops
        // them too.
        let keeper = Keeper::default();
        let (acks, acknowledging) =
            Acks::serve(commands, &streams, settings.marks(), &inner.counters);
        let (holds, holding) = Holds::start(commands.clone(), settings.marks());
        let (places, placing) = Places::serve(commands.connection.clone(), &settings.group);
        let stop_tasks = CancellationToken::new();
        let keeping = keeper.start(
            commands,
            &inner.endpoint,
            settings.claim_idle,
            &inner.counters,
            &stop_tasks,
        );
        let moving = delayed::start(commands, &streams, &inner.counters, &stop_tasks);
        // Partition leases are kept by a task of their own, so that a busy read loop never lets
        // them lapse; it gives them up when reading stops.
        let leases = Leases::default();
        let leasing = AbortOnDropHandle::new(tokio::spawn(leases.clone().keep(
            commands.clone(),
            settings.partitioned.clone(),
            settings.partition_lease,
            settings.block + Duration::from_millis(100),
            keeper.clone(),
            stop_tasks.clone(),
        )));
        let session = Arc::new(Session {
            inner: Arc::clone(inner),
            streams,
            acks,
            holds,
            places,
            keeper,
            shutdown,
        });
        let mut reading = Reading::new(session, leases, positions, take_back);
        let deadline = reading.read_until_shutdown().await;
        let deliveries = std::mem::take(&mut reading.deliveries);
        // The acknowledging and holding tasks end once every delivery has let go of the session.
        drop(reading);
        finish_deliveries(deliveries, deadline).await;
        // Acknowledgements still failing get what is left of the shutdown timeout, and a second at
        // least; their entries are kept until they land.
        let grace = ack_grace(deadline.into());
        let settled = Acks::landed(acknowledging, grace).await;
        if let Err(error) = &settled {
            tracing::error!(%error, "stopping");
        }
        stop_tasks.cancel();
        let tasks = [keeping, holding, placing, leasing, moving];
        if tokio::time::timeout_at(grace, self.end(tasks, &name))
            .await
            .is_err()
        {
            tracing::warn!(
                "Redis did not answer before the shutdown timeout; entries left pending go to \
                 other consumers after claim_idle"
            );
        }
        settled
    }

    /// Waits for the consumer's `tasks`, told to stop, then hands what stays pending on its name
    /// (unfinished, or read as it stopped) to the others at their next looks, unless another run
    /// uses the name.
    async fn end(&self, tasks: [AbortOnDropHandle<()>; 5], name: &NameInUse) {
        for task in tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a consumer task failed");
            }
        }
        if !name.is_alone() {
            return;
        }
        let settings = &self.inner.settings;
        let most = settings.max_unacked + self.inner.readers.len() * settings.batch_size;
        let commands = &self.inner.commands;
        for stream in &settings.streams {
            if let Err(error) = commands.hand_over(stream, most, settings.claim_idle).await {
                tracing::warn!(%stream, %error, "could not hand over the entries left pending; other consumers take them after claim_idle");
            }
        }
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

/// Waits until `deliveries` have ended, up to `deadline`; those unfinished then are stopped, and
/// their entries stay pending for another consumer.
async fn finish_deliveries(mut deliveries: tokio::task::JoinSet<()>, deadline: Instant) {
    let finished = tokio::time::timeout_at(deadline.into(), async {
        while deliveries.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            unfinished = deliveries.len(),
            "shutdown timeout passed; unfinished entries stay pending for another consumer"
        );
        deliveries.shutdown().await;
    }
}
