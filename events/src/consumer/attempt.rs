//! One attempt at an event, as every consumer runs it (the Redis consumers and the in-process one
//! of the test kit): its body decoded for its handler, the handler run in its span within its
//! timeout with panics caught and the hooks around it, and what to do with an event no handler
//! wants.

use std::panic::AssertUnwindSafe;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::Either;
use tracing::Instrument;

use super::config::{Hooks, Settings};
use super::handler::{BoxFuture, Prepared, Registration};
use super::middleware;
use super::{Context, Failure, Unhandled};
use crate::instruments::HandlerMetrics;
use crate::{Envelope, TraceContext};

/// Decodes the event for `registration`'s handler, catching a panic.
pub(crate) fn prepare(registration: &Registration, context: &Context) -> Result<Prepared, Failure> {
    std::panic::catch_unwind(AssertUnwindSafe(|| (registration.prepare)(context)))
        .unwrap_or_else(|panic| Err(Failure::Panic(panic_message(panic.as_ref()))))
}

/// Runs the handler's `run` in its span, within its timeout (its own, else `default_timeout`),
/// catching a panic; records `metrics` and runs the hooks around it.
pub(crate) async fn run(
    registration: &Registration,
    hooks: &Hooks,
    default_timeout: Duration,
    context: &Context,
    run: BoxFuture,
    metrics: &HandlerMetrics,
) -> Result<(), Failure> {
    run_hook(|| {
        if let Some(before) = &hooks.before {
            before(context);
        }
    });
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
        stream = %context.stream,
        entry_id = %context.entry_id,
        attempt = context.attempt,
        trace_id = trace.map(|trace| trace.trace_id()),
        outcome = tracing::field::Empty,
    );
    let run = match &registration.stack {
        Some(stack) => middleware::through(stack, context, run),
        None => run,
    };
    let run = run.instrument(span.clone());
    let run = match trace {
        Some(trace) => Either::Left(trace.scope(run)),
        None => Either::Right(run),
    };
    let started = Instant::now();
    let timeout = registration.timeout.unwrap_or(default_timeout);
    let mut run = std::pin::pin!(AssertUnwindSafe(run).catch_unwind());
    // A handler that finishes at once needs no timer: most do.
    let finished = match futures::poll!(run.as_mut()) {
        Poll::Ready(finished) => Ok(finished),
        Poll::Pending => tokio::time::timeout(timeout, run).await,
    };
    let outcome = match finished {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(Failure::Panic(panic_message(panic.as_ref()))),
        Err(_) => Err(Failure::Timeout(timeout)),
    };
    metrics.ran(started.elapsed(), outcome.is_ok());
    if !span.is_disabled() {
        let described = outcome
            .as_ref()
            .map_or_else(ToString::to_string, |()| "handled".to_owned());
        span.record("outcome", described);
    }
    run_hook(|| {
        if let Some(after) = &hooks.after {
            after(context);
        }
    });
    outcome
}

/// What an event without a handler for its type comes to: `None` to skip it (its body being
/// JSON), else the failure it is dead-lettered with.
pub(crate) fn unhandled(settings: &Settings, envelope: &Envelope) -> Option<Failure> {
    match settings.unhandled {
        Unhandled::Skip => envelope.check_body().err().map(Failure::Decode),
        Unhandled::DeadLetter => Some(Failure::Unhandled(format!(
            "no handler for event type `{}`",
            envelope.event_type
        ))),
    }
}

/// Runs a user's hook; a panic in it is logged, and harms no delivery.
pub(crate) fn run_hook(hook: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(hook)) {
        tracing::error!(
            panic = panic_message(panic.as_ref()),
            "a consumer hook panicked"
        );
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
