//! Counters of what a consumer has done, and what it keeps failing to do in Redis right now;
//! cheap to read from a health check.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// A snapshot of a consumer's state and counters since it was built.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct Status {
    /// Whether `run` is reading.
    pub running: bool,
    /// The event types and patterns with handlers.
    pub handlers: Vec<String>,
    /// Entries read and not yet settled: waiting, being handled, waiting for a retry, or being
    /// acknowledged or dead-lettered.
    pub in_flight: u64,
    /// Events handled successfully.
    pub processed: u64,
    /// Failed attempts scheduled for another try.
    pub retried: u64,
    /// Events run again later without counting an attempt, by [`HandlerError::defer`](crate::HandlerError::defer).
    pub deferred: u64,
    /// Events that waited for their place under a handler's rate limit.
    pub limited: u64,
    /// Events acknowledged without a handler, having none for their type.
    pub skipped: u64,
    /// Repeats of events already handled (or dead-lettered), acknowledged without running the
    /// handler.
    pub duplicates: u64,
    /// Entries moved to a dead-letter stream.
    pub dead_lettered: u64,
    /// Failed attempts of any kind: handler errors, panics, timeouts, undecodable entries.
    pub failed: u64,
    /// Pending ids dropped because their entries had been trimmed or deleted.
    pub cleaned: u64,
    /// Entries reclaimed from consumers that stopped handling them.
    pub reclaimed: u64,
    /// What the consumer keeps failing to do in Redis right now, and retries until it works:
    /// empty when all is well.
    pub stalls: Vec<Stall>,
}

/// Something the consumer keeps failing to do in Redis. It retries until it works (or the
/// consumer shuts down), holding on to the entries concerned, so nothing is lost or run twice
/// meanwhile; an error-level log names the cause when it starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Stall {
    /// What fails.
    pub operation: Operation,
    /// The stream concerned.
    pub stream: String,
    /// The last error.
    pub error: String,
    /// Attempts that failed in a row.
    pub failures: u64,
    /// When the first of them failed.
    pub since: SystemTime,
}

/// A kind of work a consumer does in Redis, as a [`Stall`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Operation {
    /// Reading new entries.
    Read,
    /// Taking over entries left idle by other consumers.
    Claim,
    /// Keeping the entries it works on its own.
    Keep,
    /// Taking idempotency holds before handlers run.
    Hold,
    /// Acknowledging handled entries and marking them done.
    Acknowledge,
    /// Moving entries to the dead-letter stream.
    DeadLetter,
    /// Taking places under handlers' rate limits.
    RateLimit,
    /// Moving due delayed events into their streams.
    MoveDelayed,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Read => "reading new entries",
            Operation::Claim => "taking over idle entries",
            Operation::Keep => "keeping its entries",
            Operation::Hold => "taking idempotency holds",
            Operation::Acknowledge => "acknowledging handled entries",
            Operation::DeadLetter => "moving entries to the dead-letter stream",
            Operation::RateLimit => "taking places under rate limits",
            Operation::MoveDelayed => "moving due delayed events into the stream",
        })
    }
}

/// The live counters behind [`Status`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Runs of the consumer under way.
    pub(crate) runs: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) processed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) deferred: AtomicU64,
    pub(crate) limited: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) cleaned: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
    stalls: Mutex<BTreeMap<(Operation, String), Stall>>,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, handlers: Vec<String>) -> Status {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Status {
            running: self.runs.load(Ordering::Relaxed) > 0,
            handlers,
            in_flight: read(&self.in_flight),
            processed: read(&self.processed),
            retried: read(&self.retried),
            deferred: read(&self.deferred),
            limited: read(&self.limited),
            skipped: read(&self.skipped),
            duplicates: read(&self.duplicates),
            dead_lettered: read(&self.dead_lettered),
            failed: read(&self.failed),
            cleaned: read(&self.cleaned),
            reclaimed: read(&self.reclaimed),
            stalls: self.lock_stalls().values().cloned().collect(),
        }
    }

    fn lock_stalls(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Operation, String), Stall>> {
        self.stalls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a failed attempt at `operation` on `stream`; logs an error on the first failure in
    /// a row and on the 10th, 100th, ..., so a long stall is logged without flooding.
    pub(crate) fn stalled(&self, operation: Operation, stream: &str, error: &dyn fmt::Display) {
        let error = error.to_string();
        let mut stalls = self.lock_stalls();
        let stall = stalls
            .entry((operation, stream.to_owned()))
            .or_insert_with(|| Stall {
                operation,
                stream: stream.to_owned(),
                error: String::new(),
                failures: 0,
                since: SystemTime::now(),
            });
        stall.failures += 1;
        stall.error.clone_from(&error);
        let failures = stall.failures;
        if is_power_of_ten(failures) {
            tracing::error!(%stream, %error, failures, "{operation} fails; the consumer keeps the entries concerned and tries again until it works");
        }
    }

    /// Records that `operation` on `stream` works (again).
    pub(crate) fn recovered(&self, operation: Operation, stream: &str) {
        let mut stalls = self.lock_stalls();
        if stalls.is_empty() {
            return;
        }
        if let Some(stall) = stalls.remove(&(operation, stream.to_owned())) {
            let lasted = stall.since.elapsed().unwrap_or(Duration::ZERO);
            tracing::info!(%stream, failures = stall.failures, ?lasted, "{operation} works again");
        }
    }
}

/// Whether `n` is 1, 10, 100, ...
fn is_power_of_ten(mut n: u64) -> bool {
    while n >= 10 && n.is_multiple_of(10) {
        n /= 10;
    }
    n == 1
}

/// Counts one in its counter (a delivery in flight, a run under way) for as long as it lives.
#[derive(Debug)]
pub(crate) struct Counted<'a>(&'a AtomicU64);

impl<'a> Counted<'a> {
    pub(crate) fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_lasts_until_its_operation_works_again() {
        let counters = Counters::default();
        counters.stalled(Operation::Acknowledge, "s", &"OOM");
        counters.stalled(Operation::Acknowledge, "s", &"READONLY");
        counters.stalled(Operation::DeadLetter, "t", &"WRONGTYPE");
        let status = counters.snapshot(Vec::new());
        assert_eq!(status.stalls.len(), 2);
        assert_eq!(status.stalls[0].operation, Operation::Acknowledge);
        assert_eq!(status.stalls[0].failures, 2);
        assert_eq!(status.stalls[0].error, "READONLY");
        counters.recovered(Operation::Acknowledge, "s");
        let status = counters.snapshot(Vec::new());
        assert_eq!(status.stalls.len(), 1);
        assert_eq!(status.stalls[0].stream, "t");
    }

    #[test]
    fn powers_of_ten() {
        let logged: Vec<u64> = (0..=1000).filter(|n| is_power_of_ten(*n)).collect();
        assert_eq!(logged, [1, 10, 100, 1000]);
    }
}
