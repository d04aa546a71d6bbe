//! Metrics through the `metrics` facade: counters of published, handled, retried and
//! dead-lettered events, handler durations, batch sizes and queue depth, and stream gauges.
//!
//! Handles are registered once (per handler and stream when a consumer is built, per stream and
//! type on a publisher's first event of it), so that recording is an atomic operation on a
//! handle: nothing is allocated per event, and without a recorder the handles do nothing.
//! Install the recorder before building publishers and consumers.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use crate::StreamStats;

/// Metric handles of one handler on one stream of one group.
#[derive(Debug, Clone)]
pub(crate) struct HandlerMetrics {
    handled: Counter,
    failed: Counter,
    retried: Counter,
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
            handled: metrics::counter!("events_handled_total", &labels),
            failed: metrics::counter!("events_failed_total", &labels),
            retried: metrics::counter!("events_retried_total", &labels),
            dead_lettered: metrics::counter!("events_dead_lettered_total", &labels),
            duration: metrics::histogram!("events_handler_duration_seconds", &labels),
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
            let counter = metrics::counter!(
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
            size: metrics::histogram!("events_batch_size"),
            queued: metrics::gauge!("events_batch_queued_messages"),
        }
    }
}

/// Sets gauges from a stream's stats: length, dead letters, and per group lag and pending
/// (`events_stream_length`, `events_dead_letters`, `events_group_lag`, `events_group_pending`).
/// A health check that reads stats can call it each time.
pub fn record_stream_stats(stats: &StreamStats) {
    let stream = stats.stream.clone();
    metrics::gauge!("events_stream_length", "stream" => stream.clone()).set(stats.length as f64);
    metrics::gauge!("events_dead_letters", "stream" => stream.clone())
        .set(stats.dead_letters as f64);
    for group in &stats.groups {
        let labels = [("stream", stream.clone()), ("group", group.name.clone())];
        if let Some(lag) = group.lag {
            metrics::gauge!("events_group_lag", &labels).set(lag as f64);
        }
        metrics::gauge!("events_group_pending", &labels).set(group.pending as f64);
    }
}
