//! One entry from delivery to its end: handled and acknowledged, skipped, dead-lettered, or left
//! pending for another consumer. Retries wait here, so they never hold up other entries.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use futures::future::Either;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::dead_letter::dead_letter_fields;
use super::group::Hold;
use super::idempotency::Holds;
use super::status::{Counters, InFlight};
use super::{Context, DeadLetter, Failure, Inner, Unhandled};
use crate::instruments::HandlerMetrics;
use crate::{Envelope, StreamEntry, TraceContext, keys};

/// An entry to acknowledge, with the idempotency key to mark done and the backpressure permit to
/// release once it is.
#[derive(Debug)]
pub(crate) struct Settle {
    pub(crate) stream: Arc<str>,
    pub(crate) entry_id: String,
    pub(crate) done_key: Option<String>,
    pub(crate) _permit: Option<OwnedSemaphorePermit>,
}

/// One delivery of one entry, owned by its task.
pub(crate) struct Delivery {
    pub(crate) inner: Arc<Inner>,
    pub(crate) stream: Arc<str>,
    /// The stream's position among the consumer's streams, for its metric handles.
    pub(crate) stream_index: usize,
    pub(crate) entry: StreamEntry,
    pub(crate) attempt: u32,
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    pub(crate) settle: mpsc::UnboundedSender<Settle>,
    pub(crate) holds: Holds,
    pub(crate) shutdown: CancellationToken,
    /// Ends when the previous delivery of the same partition key is over.
    pub(crate) after: Option<oneshot::Receiver<()>>,
    /// Dropped when this delivery is over, letting the next one of its key start.
    pub(crate) _turn: Option<oneshot::Sender<()>>,
}

impl Delivery {
    /// Handles the entry until it is settled or left pending.
    pub(crate) async fn run(mut self) {
        let inner = Arc::clone(&self.inner);
        let _in_flight = InFlight::new(&inner.counters.in_flight);
        if let Some(after) = self.after.take() {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = after => {}
            }
        }
        loop {
            let goes_on = match self.attempt().await {
                Next::Done => false,
                Next::RetryAfter(delay) => self.sleep(delay).await && self.take_back(delay).await,
                Next::WaitFor(delay) => self.sleep(delay).await && self.keep(delay).await,
            };
            if !goes_on {
                return;
            }
        }
    }

    /// Waits `delay`; false if the consumer shuts down meanwhile, leaving the entry pending.
    async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// One attempt: decode, check idempotency, run the handler, settle or plan the next step.
    async fn attempt(&mut self) -> Next {
        let inner = Arc::clone(&self.inner);
        let settings = &inner.settings;
        // Typed handlers check the body while deserializing it; everything else checks it here.
        let envelope = match Envelope::decode_leaving_body(&self.entry.fields) {
            Ok(envelope) => envelope,
            Err(error) => return self.dead_letter(None, &Failure::Decode(error)).await,
        };
        let Some(registration) = inner.registry.find(&envelope.event_type) else {
            return match settings.unhandled {
                Unhandled::Skip => match envelope.check_body() {
                    Ok(()) => {
                        Counters::add(&inner.counters.skipped, 1);
                        self.settle(None)
                    }
                    Err(error) => {
                        self.dead_letter(Some(envelope.event_type), &Failure::Decode(error))
                            .await
                    }
                },
                Unhandled::DeadLetter => {
                    let reason = format!("no handler for event type `{}`", envelope.event_type);
                    self.dead_letter(Some(envelope.event_type), &Failure::Unhandled(reason))
                        .await
                }
            };
        };
        let context = Context {
            envelope: Arc::new(envelope),
            stream: Arc::clone(&self.stream),
            group: Arc::clone(&inner.group_name),
            entry_id: Arc::from(self.entry.id.as_str()),
            attempt: self.attempt,
        };
        if self.attempt > settings.max_attempts {
            let failure = Failure::Exhausted(self.attempt - 1);
            return self
                .dead_letter(Some(context.envelope.event_type.clone()), &failure)
                .await;
        }
        let prepared =
            std::panic::catch_unwind(AssertUnwindSafe(|| (registration.prepare)(&context)))
                .unwrap_or_else(|panic| Err(Failure::Panic(panic_message(panic.as_ref()))));
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(failure) => return self.fail(&context, failure, None).await,
        };
        let hold = match self.hold(&context, registration, prepared.key).await {
            Ok(Some(HoldState::Taken(key, token))) => Some((key, token)),
            Ok(Some(HoldState::Done)) => {
                Counters::add(&inner.counters.duplicates, 1);
                return self.settle(None);
            }
            Ok(Some(HoldState::Busy)) => return Next::WaitFor(settings.backoff.delay(1)),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(stream = %self.stream, entry_id = %self.entry.id, %error, "could not check idempotency; the entry stays pending");
                return Next::Done;
            }
        };

        if let Some(before) = &inner.hooks.before {
            before(&context);
        }
        // The handler runs in a span of its own, continuing the trace the event carries.
        let trace = context
            .envelope
            .traceparent
            .as_deref()
            .and_then(TraceContext::parse)
            .map(|parent| parent.child());
        let span = tracing::info_span!(
            "events.handle",
            event_type = %context.envelope.event_type,
            event_id = %context.envelope.id,
            stream = %self.stream,
            entry_id = %self.entry.id,
            attempt = self.attempt,
            trace_id = trace.map(|trace| trace.trace_id()),
            outcome = tracing::field::Empty,
        );
        let run = prepared.run.instrument(span.clone());
        let run = match trace {
            Some(trace) => Either::Left(trace.scope(run)),
            None => Either::Right(run),
        };
        let started = std::time::Instant::now();
        let outcome = {
            let _slot = inner.concurrency.acquire().await;
            let timeout = registration.timeout.unwrap_or(settings.handler_timeout);
            let mut run = std::pin::pin!(AssertUnwindSafe(run).catch_unwind());
            // A handler that finishes at once needs no timer: most do.
            let finished = match futures::poll!(run.as_mut()) {
                Poll::Ready(finished) => Ok(finished),
                Poll::Pending => tokio::time::timeout(timeout, run).await,
            };
            match finished {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => Err(Failure::Panic(panic_message(panic.as_ref()))),
                Err(_) => Err(Failure::Timeout(timeout)),
            }
        };
        registration.metrics[self.stream_index].ran(started.elapsed(), outcome.is_ok());
        if !span.is_disabled() {
            let described = outcome
                .as_ref()
                .map_or_else(ToString::to_string, |()| "handled".to_owned());
            span.record("outcome", described);
        }
        if let Some(after) = &inner.hooks.after {
            after(&context);
        }

        match outcome {
            Ok(()) => {
                Counters::add(&inner.counters.processed, 1);
                self.settle(hold.map(|(key, _)| key))
            }
            Err(failure) => self.fail(&context, failure, hold).await,
        }
    }

    /// Counts a failed attempt, then plans a retry or moves the entry to the dead-letter stream.
    async fn fail(
        &mut self,
        context: &Context,
        failure: Failure,
        hold: Option<(String, String)>,
    ) -> Next {
        let inner = Arc::clone(&self.inner);
        let settings = &inner.settings;
        Counters::add(&inner.counters.failed, 1);
        if let Some(on_error) = &inner.hooks.on_error {
            on_error(context, &failure);
        }
        tracing::debug!(stream = %self.stream, entry_id = %self.entry.id, attempt = self.attempt, %failure, "attempt failed");
        if failure.is_retryable() && self.attempt < settings.max_attempts {
            if let Some((key, token)) = &hold
                && let Err(error) = inner.commands.release(key, token).await
            {
                tracing::warn!(%error, "could not release an idempotency hold; it expires by itself");
            }
            Counters::add(&inner.counters.retried, 1);
            self.metrics(Some(&context.envelope.event_type)).retried();
            Next::RetryAfter(settings.backoff.delay(self.attempt))
        } else {
            let event_type = Some(context.envelope.event_type.clone());
            self.dead_letter_holding(event_type, &failure, hold).await
        }
    }

    /// Takes the event's idempotency key, when idempotency applies to its handler.
    async fn hold(
        &self,
        context: &Context,
        registration: &super::handler::Registration,
        declared: Option<String>,
    ) -> redis::RedisResult<Option<HoldState>> {
        let inner = &self.inner;
        if !registration.idempotent.unwrap_or(inner.settings.idempotent) {
            return Ok(None);
        }
        let id = declared.as_deref().unwrap_or(&context.envelope.hash);
        let key = keys::idempotency_key(&self.stream, &inner.group_name, id);
        let token = format!("{}:{}", inner.settings.consumer, self.entry.id);
        let hold_for = registration
            .timeout
            .unwrap_or(inner.settings.handler_timeout)
            + Duration::from_secs(1);
        let (hold, key, token) = self.holds.take(&self.stream, key, token, hold_for).await;
        Ok(Some(match hold? {
            Hold::Taken => HoldState::Taken(key, token),
            Hold::Done => HoldState::Done,
            Hold::Busy => HoldState::Busy,
        }))
    }

    /// Queues the entry for acknowledgement, passing on its id and its backpressure permit: the
    /// delivery is over.
    fn settle(&mut self, done_key: Option<String>) -> Next {
        let settle = Settle {
            stream: Arc::clone(&self.stream),
            entry_id: std::mem::take(&mut self.entry.id),
            done_key,
            _permit: self.permit.take(),
        };
        if let Err(unsent) = self.settle.send(settle) {
            let Settle {
                stream, entry_id, ..
            } = unsent.0;
            tracing::warn!(%stream, %entry_id, "consumer stopped before the entry was acknowledged; it stays pending");
        }
        Next::Done
    }

    async fn dead_letter(&mut self, event_type: Option<String>, failure: &Failure) -> Next {
        self.dead_letter_holding(event_type, failure, None).await
    }

    /// Moves the entry to the dead-letter stream, acknowledging it in the same step.
    async fn dead_letter_holding(
        &mut self,
        event_type: Option<String>,
        failure: &Failure,
        hold: Option<(String, String)>,
    ) -> Next {
        let inner = Arc::clone(&self.inner);
        let settings = &inner.settings;
        let reason = failure.to_string();
        let dead_letter_stream = settings.dead_letter_stream(&self.stream);
        let attempts = match failure {
            Failure::Exhausted(attempts) => *attempts,
            _ => self.attempt,
        };
        let fields = dead_letter_fields(
            &self.stream,
            &inner.group_name,
            &settings.consumer,
            &self.entry,
            &reason,
            attempts,
        );
        let hold = hold
            .as_ref()
            .map(|(key, token)| (key.as_str(), token.as_str()));
        match inner
            .commands
            .dead_letter(
                &self.stream,
                &dead_letter_stream,
                &self.entry.id,
                hold,
                settings.dead_letter_max_len,
                &fields,
            )
            .await
        {
            Ok(dead_letter_id) => {
                Counters::add(&inner.counters.dead_lettered, 1);
                self.metrics(event_type.as_deref()).dead_lettered();
                tracing::warn!(stream = %self.stream, entry_id = %self.entry.id, %dead_letter_stream, %reason, "moved to the dead-letter stream");
                if let Some(hook) = &inner.hooks.on_dead_letter {
                    hook(&DeadLetter {
                        stream: self.stream.to_string(),
                        entry_id: self.entry.id.clone(),
                        event_type,
                        dead_letter_stream,
                        dead_letter_id,
                        reason,
                        attempts,
                    });
                }
            }
            Err(error) => {
                tracing::warn!(stream = %self.stream, entry_id = %self.entry.id, %error, "could not dead-letter the entry; it stays pending and will be reclaimed");
            }
        }
        Next::Done
    }

    /// Keeps the entry pending on this consumer while it waits, without counting a delivery; false
    /// when it is gone or another consumer has it.
    async fn keep(&self, idle: Duration) -> bool {
        match self
            .inner
            .commands
            .touch(&self.stream, &self.entry.id, idle)
            .await
        {
            Ok(kept) => kept,
            Err(error) => {
                tracing::warn!(stream = %self.stream, entry_id = %self.entry.id, %error, "could not keep the entry while it waits; it stays pending and will be reclaimed");
                false
            }
        }
    }

    /// The metric handles for entries of `event_type` on this stream.
    fn metrics(&self, event_type: Option<&str>) -> &HandlerMetrics {
        let inner = &*self.inner;
        match event_type.and_then(|event_type| inner.registry.find(event_type)) {
            Some(registration) => &registration.metrics[self.stream_index],
            None => &inner.unhandled_metrics[self.stream_index],
        }
    }

    /// Claims the entry back for the next attempt; false when it is gone or another consumer has it.
    async fn take_back(&mut self, idle: Duration) -> bool {
        match self
            .inner
            .commands
            .reclaim(&self.stream, &self.entry.id, idle)
            .await
        {
            Ok(Some(entry)) => {
                self.entry = entry;
                self.attempt += 1;
                true
            }
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(stream = %self.stream, entry_id = %self.entry.id, %error, "could not claim the entry for a retry; it stays pending and will be reclaimed");
                false
            }
        }
    }
}

/// What a delivery does after an attempt.
enum Next {
    /// Settled, dead-lettered or left pending: the delivery is over.
    Done,
    /// Claim the entry back after the delay and try again.
    RetryAfter(Duration),
    /// Another delivery of the same event is in progress: look again after the delay.
    WaitFor(Duration),
}

/// The state of an event's idempotency key for this delivery.
enum HoldState {
    Taken(String, String),
    Done,
    Busy,
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
