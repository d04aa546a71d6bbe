//! Metrics through the `metrics` facade: counters of published, handled, retried and
//! dead-lettered events, handler durations, batch sizes and queue depth, and stream gauges.
//!
//! Handles are registered once (per handler and stream when a consumer is built, per stream and
//! type on a publisher's first event of it), so that recording is an atomic operation on a
//! handle: nothing is allocated per event, and without a recorder the handles do nothing.
//! Install the recorder before building publishers and consumers. Without the `metrics` feature
//! the handles are empty and recording compiles to nothing.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

#[cfg(feature = "metrics")]
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
#[cfg(not(feature = "metrics"))]
use silent::{Counter, Gauge, Histogram, counter, gauge, histogram};

#[cfg(feature = "metrics")]
use crate::StreamStats;

/// Handles that record nothing, for builds without the `metrics` feature.
#[cfg(not(feature = "metrics"))]
mod silent {
    /// A counter that counts nothing.
    #[derive(Debug, Clone)]
    pub(crate) struct Counter;

    impl Counter {
        pub(crate) fn increment(&self, _: u64) {}
    }

    /// A gauge that holds nothing.
    #[derive(Debug, Clone)]
    pub(crate) struct Gauge;

    impl Gauge {
        pub(crate) fn set(&self, _: f64) {}
    }

    /// A histogram that keeps nothing.
    #[derive(Debug, Clone)]
    pub(crate) struct Histogram;

    impl Histogram {
        pub(crate) fn record(&self, _: f64) {}
    }

    /// A handle of type `$handle` that records nothing, its name and labels evaluated and
    /// dropped.
    macro_rules! nothing {
        ($handle:ident; $name:expr $(, $labels:expr)?) => {{
            let _ = ($name, $($labels)?);
            $handle
        }};
        ($handle:ident; $name:expr $(, $key:expr => $value:expr)+) => {{
            let _ = ($name, $(($key, $value)),+);
            $handle
        }};
    }
    macro_rules! counter {
        ($($arguments:tt)*) => {
            $crate::instruments::silent::nothing!(Counter; $($arguments)*)
        };
    }
    macro_rules! gauge {
        ($($arguments:tt)*) => {
            $crate::instruments::silent::nothing!(Gauge; $($arguments)*)
        };
    }
    macro_rules! histogram {
        ($($arguments:tt)*) => {
            $crate::instruments::silent::nothing!(Histogram; $($arguments)*)
        };
    }
    pub(crate) use {counter, gauge, histogram, nothing};
}

/// Metric handles of one handler on one stream of one group.
#[derive(Debug, Clone)]
pub(crate) struct HandlerMetrics {
    handled: Counter,
    failed: Counter,
    retried: Counter,
    limited: Counter,
    dead_lettered: Counter,
    duration: Histogram,
}

impl HandlerMetrics {
    /// Handles labelled with `stream`, `group` and `event_type` (the handler's type or pattern).
    pub(crate) fn new(stream: &str, group: &str, event_type: &str) -> Self {
        let labels = [
            ("stream", stream.to_owned()),
            ("group", group.to_owned()),
            ("event_type", event_type.to_owned()),
        ];
        Self {
            handled: counter!("events_handled_total", &labels),
            failed: counter!("events_failed_total", &labels),
            retried: counter!("events_retried_total", &labels),
            limited: counter!("events_limited_total", &labels),
            dead_lettered: counter!("events_dead_lettered_total", &labels),
            duration: histogram!("events_handler_duration_seconds", &labels),
        }
    }

    /// A handler run that took `duration` and succeeded or failed.
    pub(crate) fn ran(&self, duration: Duration, succeeded: bool) {
        self.duration.record(duration.as_secs_f64());
        if succeeded {
            &self.handled
        } else {
            &self.failed
        }
        .increment(1);
    }

    /// A failed attempt that will be tried again.
    pub(crate) fn retried(&self) {
        self.retried.increment(1);
    }

    /// An event that waited for its place under a rate limit.
    pub(crate) fn limited(&self) {
        self.limited.increment(1);
    }

    /// An entry moved to the dead-letter stream.
    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.increment(1);
    }
}

/// Counters by event type.
type ByType = HashMap<Box<str>, Counter>;

/// Counters of published events per stream and type, registered on first use.
#[derive(Debug, Default)]
pub(crate) struct PublishMetrics {
    published: RwLock<HashMap<Box<str>, ByType>>,
}

impl PublishMetrics {
    /// Counts `count` events of `event_type` written to `stream`.
    pub(crate) fn published(&self, stream: &str, event_type: &str, count: u64) {
        let known = self
            .published
            .read()
            .ok()
            .and_then(|streams| Some(streams.get(stream)?.get(event_type)?.clone()));
        let counter = known.unwrap_or_else(|| {
            let counter = counter!(
                "events_published_total",
                "stream" => stream.to_owned(),
                "event_type" => event_type.to_owned()
            );
            if let Ok(mut streams) = self.published.write() {
                streams
                    .entry(stream.into())
                    .or_default()
                    .insert(event_type.into(), counter.clone());
            }
            counter
        });
        counter.increment(count);
    }
}

/// Handles of a batched publisher.
#[derive(Debug, Clone)]
pub(crate) struct BatchMetrics {
    pub(crate) size: Histogram,
    pub(crate) queued: Gauge,
}

impl BatchMetrics {
    pub(crate) fn new() -> Self {
        Self {
            size: histogram!("events_batch_size"),
            queued: gauge!("events_batch_queued_messages"),
        }
    }
}

/// Sets gauges from a stream's stats: length, dead letters, and per group lag and pending
/// (`events_stream_length`, `events_dead_letters`, `events_group_lag`, `events_group_pending`).
/// A health check that reads stats can call it each time.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn record_stream_stats(stats: &StreamStats) {
    let stream = stats.stream.clone();
    gauge!("events_stream_length", "stream" => stream.clone()).set(stats.length as f64);
    gauge!("events_dead_letters", "stream" => stream.clone()).set(stats.dead_letters as f64);
    for group in &stats.groups {
        let labels = [("stream", stream.clone()), ("group", group.name.clone())];
        if let Some(lag) = group.lag {
            gauge!("events_group_lag", &labels).set(lag as f64);
        }
        gauge!("events_group_pending", &labels).set(group.pending as f64);
    }
}
