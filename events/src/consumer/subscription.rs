//! A typed stream of events: [`PullConsumer::subscribe`] turns a pull consumer into a
//! `futures::Stream` of [`Delivery`]s of one event type, each acknowledged or failed on its own.
//! A task reserves events only as fast as the stream is consumed (at most its buffer ahead), and
//! applies the pull consumer's rules: undecodable events are dead-lettered, events of other types
//! are skipped (or dead-lettered, as the consumer's `unhandled` says), newer versions are left
//! for a consumer that knows them.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::pull::{Held, PullConsumer};
use super::settle::Acks;
use super::{Failure, attempt};
use crate::{Backoff, DecodeError, Envelope, Event, Result};

/// One event of a [`Subscription`]: acknowledge it once handled, or fail it. Dropped without
/// either, it is delivered again once `claim_idle` has passed.
#[derive(Debug)]
pub struct Delivery<E> {
    event: E,
    held: Held,
    acks: Acks,
    fails: mpsc::UnboundedSender<(Held, String)>,
}

impl<E> Delivery<E> {
    /// The event.
    pub fn event(&self) -> &E {
        &self.event
    }

    /// Its envelope: id, type, version, origin, headers and the body as JSON text.
    pub fn envelope(&self) -> &Envelope {
        &self.held.reserved.envelope
    }

    /// Which delivery this is, 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.held.reserved.attempt
    }

    /// The stream it was read from.
    pub fn stream(&self) -> &str {
        &self.held.reserved.stream
    }

    /// Its entry id there.
    pub fn entry_id(&self) -> &str {
        &self.held.reserved.entry_id
    }

    /// Acknowledges the event and marks it done for idempotency; returns once that has landed in
    /// Redis.
    pub async fn ack(self) -> Result<()> {
        let _ = self.held.ack(&self.acks).await;
        Ok(())
    }

    /// Fails the event: it comes back from the subscription after its backoff, or goes to the
    /// dead-letter stream with `reason` after its last attempt.
    pub fn fail(self, reason: impl Into<String>) {
        // When the subscription is gone, the event is dropped with it: delivered again later.
        let _ = self.fails.send((self.held, reason.into()));
    }
}

/// A `futures::Stream` of the events of type `E` that a pull consumer reads, from
/// [`PullConsumer::subscribe`]. An item is an error when reading failed (Redis unreachable); the
/// stream goes on after it. Dropping it stops reading; [`close`](Self::close) also waits for
/// acknowledgements and dead-letter moves under way.
#[derive(Debug)]
pub struct Subscription<E> {
    deliveries: mpsc::Receiver<Result<Delivery<E>>>,
    stop: CancellationToken,
    driver: AbortOnDropHandle<Result<()>>,
}

impl<E> Subscription<E> {
    /// Stops reading and closes the pull consumer (see [`PullConsumer::close`]); deliveries not
    /// yet settled stay pending for another consumer.
    pub async fn close(self) -> Result<()> {
        self.stop.cancel();
        drop(self.deliveries);
        self.driver.await.unwrap_or(Ok(()))
    }
}

impl<E> Stream for Subscription<E> {
    type Item = Result<Delivery<E>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.deliveries.poll_recv(cx)
    }
}

impl PullConsumer {
    /// A typed stream of the events of type `E` this consumer reads, at most a batch
    /// (`batch_size`) read ahead of the stream's consumption. Events of other types are skipped
    /// (or dead-lettered, as `unhandled` says), undecodable ones dead-lettered, newer versions
    /// failed for a newer consumer (or dead-lettered, as `newer_versions` says). Must be called
    /// within a Tokio runtime.
    pub fn subscribe<E: Event>(self) -> Subscription<E> {
        let (sender, deliveries) = mpsc::channel(self.settings().batch_size);
        let stop = CancellationToken::new();
        let driver = AbortOnDropHandle::new(tokio::spawn(drive(self, sender, stop.clone())));
        Subscription {
            deliveries,
            stop,
            driver,
        }
    }
}

/// Reserves events as the subscription makes room for them, until it stops or is dropped; then
/// closes the consumer.
async fn drive<E: Event>(
    mut consumer: PullConsumer,
    out: mpsc::Sender<Result<Delivery<E>>>,
    stop: CancellationToken,
) -> Result<()> {
    let acks = consumer.acks();
    let (fails, mut failed) = mpsc::unbounded_channel::<(Held, String)>();
    let retry = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5));
    let mut errors = 0;
    'reading: loop {
        while let Ok((held, reason)) = failed.try_recv() {
            consumer.fail_held(held, &reason);
        }
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            Some((held, reason)) = failed.recv() => {
                consumer.fail_held(held, &reason);
                continue;
            }
            permit = out.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let room = out.capacity() + 1;
        let reserved = tokio::select! {
            () = stop.cancelled() => break,
            reserved = consumer.reserve_held(room) => reserved,
        };
        let held = match reserved {
            Ok(held) => held,
            Err(error) => {
                errors += 1;
                permit.send(Err(error));
                tokio::time::sleep(retry.delay(errors)).await;
                continue;
            }
        };
        errors = 0;
        let mut permit = Some(permit);
        for held in held {
            let event = match held.reserved.envelope.decode_body::<E>() {
                Ok(event) => event,
                Err(error) => {
                    settle_untyped(&mut consumer, held, error);
                    continue;
                }
            };
            let delivery = Ok(Delivery {
                event,
                held,
                acks: acks.clone(),
                fails: fails.clone(),
            });
            match permit.take() {
                Some(permit) => permit.send(delivery),
                None => {
                    if out.send(delivery).await.is_err() {
                        break 'reading;
                    }
                }
            }
        }
    }
    // The acknowledging tasks end once every handle on them is gone.
    drop((acks, fails, failed));
    consumer.close().await
}

/// Settles an event that is not a valid `E` (decoding it failed with `error`) as the consumer's
/// rules say.
fn settle_untyped(consumer: &mut PullConsumer, held: Held, error: DecodeError) {
    let failure = match error {
        DecodeError::TypeMismatch { .. } => {
            match attempt::unhandled(consumer.settings(), &held.reserved.envelope) {
                None => return consumer.skip_held(held),
                Some(failure) => failure,
            }
        }
        error @ DecodeError::UnknownVersion { .. } => Failure::NewerVersion(error),
        error => Failure::Decode(error),
    };
    match consumer
        .settings()
        .retry_delay(&failure, held.reserved.attempt)
    {
        Some(_) => consumer.fail_held(held, &failure.to_string()),
        None => consumer.dead_letter_held(held, failure.to_string()),
    }
}
