//! Counters of what a consumer has done, cheap to read from a health check.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A snapshot of a consumer's state and counters since it was built.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct Status {
    /// Whether `run` is reading.
    pub running: bool,
    /// The event types and patterns with handlers.
    pub handlers: Vec<String>,
    /// Deliveries being handled or waiting for a retry right now.
    pub in_flight: u64,
    /// Events handled successfully.
    pub processed: u64,
    /// Failed attempts scheduled for another try.
    pub retried: u64,
    /// Events acknowledged without a handler, having none for their type.
    pub skipped: u64,
    /// Repeats of events already handled, acknowledged without running the handler.
    pub duplicates: u64,
    /// Entries moved to a dead-letter stream.
    pub dead_lettered: u64,
    /// Failed attempts of any kind: handler errors, panics, timeouts, undecodable entries.
    pub failed: u64,
    /// Pending ids dropped because their entries had been trimmed or deleted.
    pub cleaned: u64,
    /// Entries reclaimed from consumers that stopped handling them.
    pub reclaimed: u64,
}

/// The live counters behind [`Status`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) running: AtomicBool,
    pub(crate) in_flight: AtomicU64,
    pub(crate) processed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) cleaned: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, handlers: Vec<String>) -> Status {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Status {
            running: self.running.load(Ordering::Relaxed),
            handlers,
            in_flight: read(&self.in_flight),
            processed: read(&self.processed),
            retried: read(&self.retried),
            skipped: read(&self.skipped),
            duplicates: read(&self.duplicates),
            dead_lettered: read(&self.dead_lettered),
            failed: read(&self.failed),
            cleaned: read(&self.cleaned),
            reclaimed: read(&self.reclaimed),
        }
    }
}

/// Counts one delivery in flight for as long as it lives.
#[derive(Debug)]
pub(crate) struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    pub(crate) fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
