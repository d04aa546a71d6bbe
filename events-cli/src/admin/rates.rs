//! Events per second of each stream shown, over the last minutes: a task samples each stream's
//! count of entries ever added (`XINFO STREAM`'s `entries-added`) every few seconds, and pages
//! draw the rates between samples as a small SVG chart.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::Value;

use super::Shared;

/// How often streams are sampled.
pub(crate) const EVERY: Duration = Duration::from_secs(5);
/// Samples kept per stream: five minutes of them.
const KEPT: usize = 61;

/// Each stream's samples: when, and how many entries it had ever been given.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    samples: Mutex<HashMap<String, VecDeque<(Instant, u64)>>>,
}

impl Rates {
    /// No samples yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Keeps the samples of `taken` (stream, entries added), dropping streams no longer there.
    fn record(&self, taken: Vec<(String, u64)>, at: Instant) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kept = HashMap::with_capacity(taken.len());
        for (stream, added) in taken {
            let mut series = samples.remove(&stream).unwrap_or_default();
            if series.len() == KEPT {
                series.pop_front();
            }
            series.push_back((at, added));
            kept.insert(stream, series);
        }
        *samples = kept;
    }

    /// The events per second of `stream` between consecutive samples, oldest first.
    pub(crate) fn per_second(&self, stream: &str) -> Vec<f64> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(series) = samples.get(stream) else {
            return Vec::new();
        };
        series
            .iter()
            .zip(series.iter().skip(1))
            .map(|((then, before), (now, after))| {
                after.saturating_sub(*before) as f64
                    / now.duration_since(*then).as_secs_f64().max(0.001)
            })
            .collect()
    }

    /// `stream`'s rates as an inline SVG chart `width` by `height` pixels, with the latest rate.
    pub(crate) fn chart(&self, stream: &str, width: u32, height: u32) -> String {
        let rates = self.per_second(stream);
        let Some(latest) = rates.last() else {
            return "<span class=\"muted\">sampling…</span>".into();
        };
        let most = rates.iter().copied().fold(0.0_f64, f64::max);
        let step = f64::from(width) / (KEPT - 2) as f64;
        let top = f64::from(height) - 2.0;
        let mut points = String::new();
        let start = (KEPT - 1 - rates.len()) as f64 * step;
        for (index, rate) in rates.iter().enumerate() {
            let y = if most > 0.0 {
                top - rate / most * (top - 2.0)
            } else {
                top
            };
            let _ = write!(points, "{:.1},{y:.1} ", start + index as f64 * step);
        }
        format!(
            "<svg class=\"rate\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\">\
             <title>events/s over the last minutes, at most {most:.1}</title>\
             <rect width=\"{width}\" height=\"{height}\" fill=\"#eef2f7\"/>\
             <polyline points=\"{points}\" fill=\"none\" stroke=\"#2563eb\" stroke-width=\"1.5\"/></svg> \
             <span class=\"n\">{latest:.1}/s</span>"
        )
    }
}

/// Samples the streams `admin` shows every [`EVERY`], for as long as the process runs.
pub(crate) fn sample(admin: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(EVERY);
        loop {
            ticks.tick().await;
            let Ok(streams) = admin.list_streams("").await else {
                continue;
            };
            let mut connection = admin.connection();
            let mut taken = Vec::with_capacity(streams.len());
            for stream in streams {
                let info: Result<HashMap<String, Value>, _> = redis::cmd("XINFO")
                    .arg("STREAM")
                    .arg(&stream)
                    .query_async(&mut connection)
                    .await;
                let added = info.ok().and_then(|info| {
                    redis::from_redis_value(info.get("entries-added")?.clone()).ok()
                });
                if let Some(added) = added {
                    taken.push((stream, added));
                }
            }
            admin.rates.record(taken, Instant::now());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_entries_added_between_samples() {
        let rates = Rates::new();
        let start = Instant::now();
        rates.record(vec![("a".into(), 100)], start);
        assert!(rates.chart("a", 100, 20).contains("sampling"));
        rates.record(vec![("a".into(), 150)], start + Duration::from_secs(5));
        rates.record(
            vec![("a".into(), 150), ("b".into(), 1)],
            start + Duration::from_secs(10),
        );
        assert_eq!(rates.per_second("a"), vec![10.0, 0.0]);
        assert!(rates.chart("a", 100, 20).contains("0.0/s"));
        rates.record(vec![("b".into(), 2)], start + Duration::from_secs(15));
        assert!(
            rates.per_second("a").is_empty(),
            "a stream gone is forgotten"
        );
    }
}
