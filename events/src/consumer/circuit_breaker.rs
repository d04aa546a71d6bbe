//! A circuit breaker for handlers: after a number of failures in a row it opens, and events are
//! deferred (run again later, no attempt counted, the handler not called) instead of hammering a
//! broken downstream; once the open time has passed one trial goes through, and its success
//! closes the breaker, its failure opens it again.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use tower::{Layer, Service};

use super::middleware::{BoxError, Call};
use super::{Failure, HandlerError};

/// A tower layer opening after `failures` failed attempts in a row of the handler it wraps (a
/// breaker each), deferring events for `open_for` (see [`HandlerError::defer`]), then letting one
/// trial through. Permanent failures (bad events, not a broken downstream) do not count.
#[derive(Debug, Clone, Copy)]
pub struct CircuitBreaker {
    failures: u32,
    open_for: Duration,
}

impl CircuitBreaker {
    /// Opens after `failures` failures in a row (at least 1), for `open_for` (more than zero).
    ///
    /// # Panics
    /// When `failures` is zero or `open_for` is zero: a breaker that cannot close or never opens.
    pub fn new(failures: u32, open_for: Duration) -> Self {
        assert!(
            failures > 0 && !open_for.is_zero(),
            "a circuit breaker opens after at least one failure, for more than zero time"
        );
        Self { failures, open_for }
    }
}

impl<S> Layer<S> for CircuitBreaker {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker {
            inner,
            settings: *self,
            state: Arc::default(),
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Default)]
struct State {
    /// Failures in a row.
    failures: u32,
    /// Open until then.
    open_until: Option<Instant>,
    /// A trial is running (the open time has passed).
    trial: bool,
}

/// The service of a [`CircuitBreaker`] around `S`.
#[derive(Debug, Clone)]
pub struct Breaker<S> {
    inner: S,
    settings: CircuitBreaker,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S> Breaker<S> {
    /// `None` when a call may go through; else how long to defer it.
    fn admit(&self) -> Option<Duration> {
        let mut state = lock(&self.state);
        let until = state.open_until?;
        let now = Instant::now();
        if now < until {
            return Some(until - now);
        }
        if state.trial {
            // One trial at a time: the others wait a tenth of the open time.
            return Some(self.settings.open_for / 10);
        }
        state.trial = true;
        None
    }
}

/// A call let through, until its outcome is recorded; one dropped unfinished (its consumer
/// stopping) ends a trial without deciding anything.
struct Admitted {
    state: Arc<Mutex<State>>,
    settings: CircuitBreaker,
}

impl Admitted {
    /// Records the call's outcome.
    fn record(self, failed: bool) {
        let mut state = lock(&self.state);
        if !failed {
            *state = State::default();
            return;
        }
        state.failures = state.failures.saturating_add(1);
        if state.failures >= self.settings.failures {
            state.open_until = Some(Instant::now() + self.settings.open_for);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        lock(&self.state).trial = false;
    }
}

impl<S> Service<Call> for Breaker<S>
where
    S: Service<Call, Response = ()>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        if let Some(wait) = self.admit() {
            let reason = format!(
                "circuit open after {} failures in a row; deferred {wait:?}",
                self.settings.failures
            );
            let deferred = Failure::Handler(HandlerError::defer(reason, wait));
            return Box::pin(async move { Err(Box::new(deferred) as BoxError) });
        }
        let admitted = Admitted {
            state: Arc::clone(&self.state),
            settings: self.settings,
        };
        let called = self.inner.call(call);
        Box::pin(async move {
            let outcome = called.await.map_err(Into::into);
            let failed = outcome.as_ref().is_err_and(|error: &BoxError| {
                error
                    .downcast_ref::<Failure>()
                    .is_none_or(Failure::is_retryable)
            });
            admitted.record(failed);
            outcome
        })
    }
}
