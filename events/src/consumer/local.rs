//! A consumer's handlers run in-process, without Redis, for tests: each event gets the attempt the
//! Redis consumers would give it (the same decoding, handler lookup, timeouts, panics, hooks,
//! retry policy and idempotency identity) and the outcome says what they would do with it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::config::{Hooks, Settings};
use super::handler::Registry;
use super::identity::Digest;
use super::{Context, Failure, attempt};
use crate::{Envelope, Event, Result};

/// What a consumer does with one delivery of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler succeeded: the entry would be acknowledged.
    Handled,
    /// The attempt failed and the event would be tried again after `delay`.
    Retry {
        /// The backoff before the next attempt.
        delay: Duration,
        /// Why the attempt failed.
        reason: String,
    },
    /// The event would go to the dead-letter stream.
    DeadLetter {
        /// The reason its dead letter would give.
        reason: String,
    },
    /// No handler wants its type: it would be acknowledged and counted as skipped.
    Skipped,
    /// A repeat of an event already handled (or dead-lettered) within this consumer's life: it
    /// would be acknowledged without running the handler.
    Duplicate,
}

/// The handlers of a [`ConsumerBuilder`](crate::ConsumerBuilder), run in-process on events
/// given to them, without Redis: built with
/// [`build_local`](crate::ConsumerBuilder::build_local).
#[derive(Debug)]
pub struct LocalConsumer {
    settings: Settings,
    registry: Registry,
    hooks: Hooks,
    /// The consumer's first stream, or `local`: what its contexts name.
    stream: Arc<str>,
    group: Arc<str>,
    /// The identities of events handled or dead-lettered so far.
    settled: Mutex<HashSet<Digest>>,
}

impl LocalConsumer {
    pub(crate) fn new(settings: Settings, mut registry: Registry, hooks: Hooks) -> Self {
        let stream = settings
            .streams
            .first()
            .cloned()
            .unwrap_or_else(|| "local".into());
        registry.instrument(std::slice::from_ref(&stream), &settings.group);
        Self {
            stream: Arc::from(stream),
            group: Arc::from(settings.group.as_str()),
            settings,
            registry,
            hooks,
            settled: Mutex::default(),
        }
    }

    /// Delivers `event` as a publisher of this service would write it (origin `test`), first
    /// attempt.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Outcome> {
        let body = serde_json::to_string(event).map_err(|source| crate::Error::Serialize {
            event_type: E::NAME.to_owned(),
            source,
        })?;
        Ok(self
            .deliver(&Envelope::new(E::NAME, E::VERSION, "test", body), 1)
            .await)
    }

    /// Runs attempt `attempt` (1 for the first) at `envelope` and says what the consumer would do
    /// next.
    pub async fn deliver(&self, envelope: &Envelope, attempt: u32) -> Outcome {
        let envelope = self.settings.type_names.apply(envelope.clone());
        let Some(registration) = self.registry.find(&envelope.event_type, envelope.version) else {
            return match attempt::unhandled(&self.settings, &envelope) {
                None => Outcome::Skipped,
                Some(failure) => dead_letter(&failure),
            };
        };
        let context = Context {
            stream: Arc::clone(&self.stream),
            group: Arc::clone(&self.group),
            entry_id: Arc::from("0-0"),
            attempt,
            envelope: Arc::new(envelope),
        };
        if attempt > self.settings.max_attempts {
            return dead_letter(&Failure::Exhausted(attempt - 1));
        }
        let prepared = match attempt::prepare(registration, &context) {
            Ok(prepared) => prepared,
            Err(failure) => return self.failed(&failure, attempt, None),
        };
        let idempotent = registration.idempotent.unwrap_or(self.settings.idempotent);
        let identity = registration.identity.unwrap_or(self.settings.identity);
        let digest =
            idempotent.then(|| Digest::of(&context.envelope, prepared.key.as_deref(), identity));
        if digest.is_some_and(|digest| self.settled().contains(&digest)) {
            return Outcome::Duplicate;
        }
        let ran = attempt::run(
            registration,
            &self.hooks,
            self.settings.handler_timeout,
            &context,
            prepared.run,
            &registration.metrics[0],
        )
        .await;
        match ran {
            Ok(()) => {
                self.settle(digest);
                Outcome::Handled
            }
            Err(failure) => self.failed(&failure, attempt, digest),
        }
    }

    /// Delivers `envelope` attempt after attempt, without waiting the backoffs, until it is
    /// settled; returns every outcome, the last being `Handled`, `DeadLetter`, `Skipped` or
    /// `Duplicate`.
    pub async fn deliver_until_settled(&self, envelope: &Envelope) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for attempt in 1.. {
            let outcome = self.deliver(envelope, attempt).await;
            let settled = !matches!(outcome, Outcome::Retry { .. });
            outcomes.push(outcome);
            if settled {
                break;
            }
        }
        outcomes
    }

    /// After a failed attempt: a retry after its backoff, or the dead letter.
    fn failed(&self, failure: &Failure, attempt: u32, digest: Option<Digest>) -> Outcome {
        match self.settings.retry_delay(failure, attempt) {
            Some(delay) => Outcome::Retry {
                delay,
                reason: failure.to_string(),
            },
            None => {
                self.settle(digest);
                dead_letter(failure)
            }
        }
    }

    fn settle(&self, digest: Option<Digest>) {
        if let Some(digest) = digest {
            self.settled().insert(digest);
        }
    }

    fn settled(&self) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
        self.settled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn dead_letter(failure: &Failure) -> Outcome {
    Outcome::DeadLetter {
        reason: failure.to_string(),
    }
}
