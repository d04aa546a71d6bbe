//! One entry from delivery to its end: handled and acknowledged, skipped, acknowledged as a
//! repeat, dead-lettered, or left pending for another consumer (at shutdown, or when another
//! consumer took it over). An entry holding a batch packed by the TypeScript batched publisher is
//! one delivery per event, run side by side, each to its own end; the entry is acknowledged once
//! all of them are settled. Every wait happens here (for its key's turn, a handler slot, a busy
//! idempotency hold, a retry's backoff), so it never holds up other entries, and the entry stays
//! kept throughout, so no reclaim takes it meanwhile.
//!
//! Each delivery's future stays under a kilobyte (see [`Delivery::run`]): the entry's envelope is
//! shared in an `Arc`, and the attempt and the rare paths (a retry, a rate limit's wait, a hold not
//! taken with the read batch, a busy hold's backoff, a dead letter) are boxed where awaited.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::oneshot;

use super::Identity;
use super::attempt;
use super::dead_letter::{Doomed, move_to_dead_letters};
use super::group::{EventHolds, Hold, HoldRequest};
use super::handler::Registration;
use super::identity::Digest;
use super::part::{Attempts, Part};
use super::rate_limit::Limiter;
use super::settle::Unsettled;
use super::status::{Counted, Counters, Operation};
use super::{Context, Failure, Session};
use crate::instruments::HandlerMetrics;
use crate::typescript::{Decoded, PackedEvent};
use crate::{Backoff, DecodeError, Envelope, StreamEntry};

/// One delivery of one entry, owned by its task.
pub(crate) struct Delivery {
    pub(crate) session: Arc<Session>,
    pub(crate) stream: Arc<str>,
    /// The stream's position among the consumer's streams.
    pub(crate) stream_index: usize,
    pub(crate) entry: StreamEntry,
    pub(crate) unsettled: Arc<Unsettled>,
    /// Ends when the previous delivery of the same partition key is settled.
    pub(crate) after: Option<oneshot::Receiver<()>>,
}

/// An event's hold as its read batch's call took it, before its delivery started.
type Ahead = Option<(Digest, Hold)>;

/// An entry's events as its delivery runs them: one, shared from the start with its handler's
/// context (so that no delivery's future carries an envelope), or a packed batch.
enum Events {
    /// An entry of one event.
    One(Arc<Envelope>),
    /// A batch the TypeScript batched publisher packed into one entry, in order.
    Packed(Vec<PackedEvent>),
}

/// What the hold on an event says.
enum Look {
    /// This entry holds it.
    Held(Digest),
    /// Look again: another pending entry of the event holds it (after a wait), or the entry's
    /// attempts were counted anew.
    Again,
    /// The event ends so: a repeat, or the consumer stopping.
    End(End),
}

/// How the delivery of an event ends.
enum End {
    /// Settle the event, marking it done if it holds its hold.
    Ack { done: Option<Digest> },
    /// Move the event to the dead-letter stream.
    DeadLetter {
        event_type: Option<String>,
        failure: Failure,
        /// How many attempts it had.
        attempts: u32,
        holds: EventHolds,
    },
    /// Leave it pending: the consumer is stopping, or another consumer has it.
    Abandon,
}

impl Delivery {
    /// Runs a read batch's deliveries, of one stream, side by side until each is settled or left
    /// pending. The holds of events identified without their bodies are taken first, in one
    /// call: each delivery starts with its answer rather than asking and waiting on its own.
    pub(crate) async fn run_batch(deliveries: Vec<Self>) {
        let decoded: Vec<_> = deliveries.iter().map(Self::decode).collect();
        let ahead = Self::holds_ahead(&deliveries, &decoded).await;
        let mut running: FuturesUnordered<_> = deliveries
            .into_iter()
            .zip(decoded)
            .zip(ahead)
            .map(|((delivery, decoded), ahead)| delivery.run(decoded, ahead))
            .collect();
        while running.next().await.is_some() {}
    }

    /// The entry's events, each with its type as this consumer knows it.
    fn decode(&self) -> Result<Events, DecodeError> {
        let names = &self.session.inner.settings.type_names;
        Ok(match Envelope::decode_entry(&self.entry.fields)? {
            Decoded::One(envelope) => Events::One(Arc::new(names.apply(envelope))),
            Decoded::Packed(events) => Events::Packed(
                events
                    .into_iter()
                    .map(|event| PackedEvent {
                        envelope: event.envelope.map(|envelope| names.apply(envelope)),
                        data: event.data,
                    })
                    .collect(),
            ),
        })
    }

    /// The holds of the events of `deliveries` (`decoded`) identified without their bodies, taken
    /// in one call; none where that call fails, and those deliveries ask on their own.
    async fn holds_ahead(
        deliveries: &[Self],
        decoded: &[Result<Events, DecodeError>],
    ) -> Vec<Ahead> {
        let mut ahead = vec![None; deliveries.len()];
        let Some(first) = deliveries.first() else {
            return ahead;
        };
        let asking: Vec<(usize, Digest)> = deliveries
            .iter()
            .zip(decoded)
            .enumerate()
            .filter_map(|(at, (delivery, decoded))| match decoded {
                Ok(Events::One(envelope)) => {
                    let inner = &delivery.session.inner;
                    let registration = inner
                        .registry
                        .find(&envelope.event_type, envelope.version)?;
                    let identity = delivery.early_identity(registration)?;
                    Some((at, Digest::of(envelope, None, identity)))
                }
                _ => None,
            })
            .collect();
        if asking.is_empty() {
            return ahead;
        }
        let requests: Vec<HoldRequest> = asking
            .iter()
            .map(|&(at, digest)| HoldRequest::of(&deliveries[at].entry, None, digest))
            .collect();
        if let Ok(holds) = first.session.holds.take_all(&first.stream, &requests).await {
            for ((at, digest), hold) in asking.into_iter().zip(holds) {
                ahead[at] = Some((digest, hold));
            }
        }
        ahead
    }

    /// How the events of `registration` are identified; `None` with idempotency off for it.
    fn identity(&self, registration: &Registration) -> Option<Identity> {
        let settings = &self.session.inner.settings;
        registration
            .idempotent
            .unwrap_or(settings.idempotent)
            .then(|| registration.identity.unwrap_or(settings.identity))
    }

    /// How the events of `registration` are identified when their holds are taken before their
    /// bodies are deserialized: when idempotency is on for it and its events declare no key.
    fn early_identity(&self, registration: &Registration) -> Option<Identity> {
        self.identity(registration)
            .filter(|_| !registration.keyed.load(Ordering::Relaxed))
    }

    /// Handles the entry's events (`decoded`, the first's hold taken `ahead` when it has one)
    /// until each is settled or left pending.
    ///
    /// Not an `async fn`: one would keep its arguments twice in its future (as arguments and as
    /// locals), and a future of over about 1 KB costs each delivery's allocation a sweep of the
    /// allocator's small free chunks (glibc's `malloc_consolidate`).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn's future holds its arguments twice"
    )]
    fn run(
        mut self,
        decoded: Result<Events, DecodeError>,
        ahead: Ahead,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let _in_flight = Counted::new(&self.session.inner.counters.in_flight);
            if let Some(after) = self.after.take() {
                tokio::select! {
                    () = self.session.shutdown.cancelled() => return,
                    _ = after => {}
                }
            }
            // Typed handlers check the body while deserializing it; everything else checks it
            // later.
            match decoded {
                Ok(Events::One(envelope)) => {
                    let end = self.handle(envelope, None, ahead).await;
                    self.settle(end, None).await;
                }
                Ok(Events::Packed(events)) => {
                    self.unsettled.holds_events(events.len());
                    let this = &self;
                    let events = events
                        .into_iter()
                        .enumerate()
                        .map(|(index, event)| async move {
                            let part = Part {
                                index,
                                data: event.data,
                            };
                            let end = match event.envelope {
                                Ok(envelope) => {
                                    this.handle(Arc::new(envelope), Some(&part), None).await
                                }
                                Err(error) => this.failed_at_once(None, Failure::Decode(error)),
                            };
                            this.settle(end, Some(&part)).await;
                        });
                    futures::future::join_all(events).await;
                }
                Err(error) => {
                    let end = self.failed_at_once(None, Failure::Decode(error));
                    self.settle(end, None).await;
                }
            }
        }
    }

    /// Settles one event of the entry as `end` says.
    async fn settle(&self, end: End, part: Option<&Part>) {
        match end {
            End::Ack { done } => {
                self.session
                    .acks
                    .handled(self.stream_index, &self.unsettled, done, None);
            }
            End::DeadLetter {
                event_type,
                failure,
                attempts,
                holds,
            } => {
                Box::pin(self.dead_letter(event_type, &failure, attempts, holds, part)).await;
            }
            End::Abandon => {}
        }
    }

    /// Runs the handler of an event of the entry (`part` of it when it is packed) until an attempt
    /// succeeds, the event is to be dead-lettered, or it is left pending.
    async fn handle(&self, envelope: Arc<Envelope>, part: Option<&Part>, mut ahead: Ahead) -> End {
        let session = Arc::clone(&self.session);
        let inner = &session.inner;
        let Some(registration) = inner.registry.find(&envelope.event_type, envelope.version) else {
            return self.unhandled(&envelope);
        };
        let identity = self.identity(registration);
        let kept = &self.unsettled.kept;
        let mut attempts = Attempts::default();
        let mut busy_looks = 0;
        loop {
            let attempt = attempts.current(kept);
            let context = Context {
                envelope: Arc::clone(&envelope),
                stream: Arc::clone(&self.stream),
                group: Arc::clone(&inner.group_name),
                entry_id: Arc::from(self.entry.id.as_str()),
                attempt,
            };
            // An event whose handler's events declare no idempotency key is identified without
            // its body: its hold is taken before the body is deserialized, so that the handler
            // then runs on what was just decoded.
            let early = if let Some(early) = self.early_identity(registration) {
                // The first attempt takes the hold (and its digest) its read batch's call took.
                let (digest, ahead) = match ahead.take() {
                    Some((digest, hold)) => (digest, Some(hold)),
                    None => (Digest::of(&envelope, None, early), None),
                };
                match self.look(digest, part, &mut busy_looks, ahead).await {
                    Look::Held(digest) => Some(digest),
                    Look::Again => continue,
                    Look::End(end) => return end,
                }
            } else {
                None
            };
            let prepared = match attempt::prepare(registration, &context) {
                Ok(prepared) => prepared,
                // A version newer than the handler knows is left for a while to a consumer that
                // knows it, such as the next deployment of this one: stopping leaves it pending.
                Err(failure) => match inner.settings.retry_delay(&failure, attempt) {
                    Some(delay) => {
                        let retry = self.retry(
                            registration,
                            &context,
                            &failure,
                            delay,
                            &mut attempts,
                            part,
                        );
                        if !Box::pin(retry).await {
                            return End::Abandon;
                        }
                        continue;
                    }
                    None => {
                        let holds = EventHolds {
                            digests: [early, None],
                            given_up: true,
                        };
                        return self.failed(&context, failure, holds);
                    }
                },
            };
            let hold = match (early, prepared.key.as_deref(), identity) {
                (Some(digest), None, _) => Some(digest),
                // Taken now: a declared key identifies the event (learned now, if the hold was
                // taken early by the event's id: that hold ends with this one).
                (_, key, Some(identity)) => {
                    if key.is_some() {
                        registration.keyed.store(true, Ordering::Relaxed);
                    }
                    let digest = Digest::of(&envelope, key, identity);
                    match self.look(digest, part, &mut busy_looks, None).await {
                        Look::Held(digest) => Some(digest),
                        Look::Again => continue,
                        Look::End(end) => return end,
                    }
                }
                _ => None,
            };
            let holds = EventHolds::dead([hold, early.filter(|&early| Some(early) != hold)]);
            if let Some(limiter) = &registration.limiter
                && !Box::pin(self.wait_for_place(registration, limiter, &context)).await
            {
                return End::Abandon;
            }
            let slot = tokio::select! {
                () = session.shutdown.cancelled() => return End::Abandon,
                slot = inner.concurrency.acquire() => slot,
            };
            let still_ours = tokio::select! {
                () = session.shutdown.cancelled() => false,
                ours = kept.is_still_ours(inner.settings.claim_idle) => ours,
            };
            if !still_ours {
                return End::Abandon;
            }
            if attempt > inner.settings.max_attempts {
                return End::DeadLetter {
                    event_type: Some(envelope.event_type.clone()),
                    failure: Failure::Exhausted(attempt - 1),
                    attempts: attempt - 1,
                    holds,
                };
            }
            let outcome = Box::pin(attempt::run(
                registration,
                &inner.hooks,
                inner.settings.handler_timeout,
                &context,
                prepared.run,
                &registration.metrics[self.stream_index],
            ))
            .await;
            drop(slot);
            let failure = match outcome {
                Ok(()) => {
                    Counters::add(&inner.counters.processed, 1);
                    return End::Ack { done: hold };
                }
                Err(failure) => failure,
            };
            let Some(delay) = inner.settings.retry_delay(&failure, attempt) else {
                return self.failed(&context, failure, holds);
            };
            let retry = self.retry(registration, &context, &failure, delay, &mut attempts, part);
            if !Box::pin(retry).await {
                return End::Abandon;
            }
        }
    }

    /// Counts a failed attempt that is to be retried, waits `delay` and counts the retry; false
    /// if the consumer stops meanwhile, leaving the event pending.
    async fn retry(
        &self,
        registration: &Registration,
        context: &Context,
        failure: &Failure,
        delay: Duration,
        attempts: &mut Attempts,
        part: Option<&Part>,
    ) -> bool {
        let inner = &self.session.inner;
        if failure.is_deferral() {
            // Not an attempt: the same one runs again after the delay.
            Counters::add(&inner.counters.deferred, 1);
            return self.sleep(delay).await;
        }
        self.report_failure(context, failure);
        Counters::add(&inner.counters.retried, 1);
        registration.metrics[self.stream_index].retried();
        if !self.sleep(delay).await {
            return false;
        }
        attempts
            .count_retry(&self.unsettled.kept, &inner.commands, part)
            .await;
        true
    }

    /// Waits for the event's place under its handler's rate limit, asking again while Redis
    /// fails; false when the consumer stops meanwhile.
    async fn wait_for_place(
        &self,
        registration: &Registration,
        limiter: &Limiter,
        context: &Context,
    ) -> bool {
        let places = &self.session.places;
        let Some(wait) = self
            .until_answered(Operation::RateLimit, || places.take(limiter, context))
            .await
        else {
            return false;
        };
        if wait.is_zero() {
            return true;
        }
        Counters::add(&self.session.inner.counters.limited, 1);
        registration.metrics[self.stream_index].limited();
        self.sleep(wait).await
    }

    /// Takes the hold on the event `digest` (or takes the answer its read batch's call had
    /// `ahead`, unless busy: the holder may have finished since): held; or busy, another entry of
    /// the event being handled, so look again after a wait (longer at each of `busy_looks`); or the
    /// event's end (a repeat, or the consumer stopping).
    async fn look(
        &self,
        digest: Digest,
        part: Option<&Part>,
        busy_looks: &mut u32,
        ahead: Option<Hold>,
    ) -> Look {
        let inner = &self.session.inner;
        let hold = match ahead.filter(|&hold| hold != Hold::Busy) {
            Some(hold) => Some(hold),
            None => Box::pin(self.take_hold(digest, part)).await,
        };
        match hold {
            None => Look::End(End::Abandon),
            // Its attempts counted anew: look again, with the count.
            Some(hold)
                if self
                    .unsettled
                    .kept
                    .count_from_first_if_taken_anew(hold, part.is_some()) =>
            {
                Look::Again
            }
            Some(Hold::Taken | Hold::Again) => Look::Held(digest),
            Some(Hold::Done | Hold::Dead) => {
                Counters::add(&inner.counters.duplicates, 1);
                Look::End(End::Ack { done: None })
            }
            Some(Hold::Busy) => {
                *busy_looks += 1;
                if Box::pin(self.sleep(inner.settings.backoff.delay(*busy_looks))).await {
                    Look::Again
                } else {
                    Look::End(End::Abandon)
                }
            }
        }
    }

    /// Takes the hold on an event of the entry, trying again while Redis fails; `None` when the
    /// consumer stops meanwhile.
    async fn take_hold(&self, digest: Digest, part: Option<&Part>) -> Option<Hold> {
        let request = HoldRequest::of(&self.entry, part, digest);
        let holds = &self.session.holds;
        self.until_answered(Operation::Hold, || {
            holds.take(&self.stream, request.clone())
        })
        .await
    }

    /// Asks Redis with `ask` until it answers, backing off and reporting a stall of `operation`
    /// meanwhile; `None` when the consumer stops first.
    async fn until_answered<T, F>(
        &self,
        operation: Operation,
        mut ask: impl FnMut() -> F,
    ) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let counters = &self.session.inner.counters;
        let retry = Backoff::exponential(Duration::from_millis(20), Duration::from_secs(2));
        let mut failures = 0;
        loop {
            match ask().await {
                Ok(answer) => {
                    counters.recovered(operation, &self.stream);
                    return Some(answer);
                }
                Err(error) => {
                    failures += 1;
                    counters.stalled(operation, &self.stream, &error);
                    if !self.sleep(retry.delay(failures)).await {
                        return None;
                    }
                }
            }
        }
    }

    /// An event without a handler for its type: skipped (if its body is JSON) or dead-lettered.
    fn unhandled(&self, envelope: &Envelope) -> End {
        let inner = &self.session.inner;
        match attempt::unhandled(&inner.settings, envelope) {
            None => {
                Counters::add(&inner.counters.skipped, 1);
                End::Ack { done: None }
            }
            Some(failure) => self.failed_at_once(Some(envelope.event_type.clone()), failure),
        }
    }

    /// An event that no attempt can handle, before any handler saw it.
    fn failed_at_once(&self, event_type: Option<String>, failure: Failure) -> End {
        Counters::add(&self.session.inner.counters.failed, 1);
        End::DeadLetter {
            event_type,
            failure,
            attempts: self.unsettled.kept.deliveries(),
            holds: EventHolds::default(),
        }
    }

    /// An attempt that failed for the last time: the event goes to the dead-letter stream.
    fn failed(&self, context: &Context, failure: Failure, holds: EventHolds) -> End {
        self.report_failure(context, &failure);
        End::DeadLetter {
            event_type: Some(context.envelope.event_type.clone()),
            failure,
            attempts: context.attempt,
            holds,
        }
    }

    /// Counts a failed attempt and tells the `on_error` hook.
    fn report_failure(&self, context: &Context, failure: &Failure) {
        let inner = &self.session.inner;
        Counters::add(&inner.counters.failed, 1);
        attempt::run_hook(|| {
            if let Some(on_error) = &inner.hooks.on_error {
                on_error(context, failure);
            }
        });
        tracing::debug!(stream = %self.stream, entry_id = %self.entry.id, attempt = context.attempt, %failure, "attempt failed");
    }

    /// Moves an event of the entry (`part` of it when it is packed) to the dead-letter stream,
    /// marking its holds dead, and acknowledges the entry with it when it is the entry's last event
    /// unsettled; tells the metrics and the `on_dead_letter` hook once it is there.
    async fn dead_letter(
        &self,
        event_type: Option<String>,
        failure: &Failure,
        attempts: u32,
        holds: EventHolds,
        part: Option<&Part>,
    ) {
        let session = &self.session;
        let inner = &session.inner;
        let acknowledge = self.unsettled.is_last();
        let doomed = Doomed {
            stream: &self.stream,
            entry: &self.entry,
            part,
            acknowledge,
            event_type: event_type.clone(),
            reason: failure.to_string(),
            attempts,
            holds,
        };
        let moved =
            move_to_dead_letters(&inner.commands, &inner.settings, &inner.counters, doomed).await;
        if let Some(dead_letter) = moved {
            if !acknowledge {
                session
                    .acks
                    .settled_elsewhere(self.stream_index, &self.unsettled);
            }
            self.metrics(event_type.as_deref()).dead_lettered();
            attempt::run_hook(|| {
                if let Some(hook) = &inner.hooks.on_dead_letter {
                    hook(&dead_letter);
                }
            });
        }
    }

    /// Waits `delay`; false if the consumer shuts down meanwhile, leaving the entry pending.
    async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            () = self.session.shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// The metric handles for entries of `event_type` on this stream.
    fn metrics(&self, event_type: Option<&str>) -> &HandlerMetrics {
        let inner = &*self.session.inner;
        match event_type.and_then(|event_type| inner.registry.find(event_type, 0)) {
            Some(registration) => &registration.metrics[self.stream_index],
            None => &inner.unhandled_metrics[self.stream_index],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `run` returns, without making one.
    fn future_size<F, R>(_: &F) -> usize
    where
        F: FnOnce(Delivery, Result<Events, DecodeError>, Ahead) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// Each delivery's future is allocated in a task of its read batch (about 70 bytes more):
    /// glibc sweeps its small free chunks on every allocation of over 1,008 bytes.
    #[test]
    fn a_delivery_s_future_stays_small_enough_to_allocate_without_a_sweep() {
        let size = future_size(&Delivery::run);
        assert!(size <= 900, "a delivery's future takes {size} bytes");
    }
}
