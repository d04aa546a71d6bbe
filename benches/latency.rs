//! End-to-end latency, from the publish call to the start of the handler, at a steady rate,
//! next to a raw redis-rs `XADD` + `XREADGROUP BLOCK` loop measured in the same run against the
//! same throwaway `redis-server` (or `REDIS_URL`). Rounds of the two alternate; each row gives
//! the median, and the least and the most, of the rounds' percentiles.
//!
//! `cargo bench --bench latency` (`EVENTS_BENCH_SECONDS` sets the length of a round, 2 s by
//! default, and `EVENTS_BENCH_ROUNDS` the rounds per rate, 5).

use events::testing as redis_server;

mod spread;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::{Consumer, Context, Event, HandlerError, Publisher, PublisherConfig, Router};
use redis::Value;
use serde::{Deserialize, Serialize};
use spread::Spread;

/// An event carrying when it was sent, in nanoseconds since the run's start.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "bench.ping")]
struct Ping {
    sent: u64,
}

/// Latencies seen in one round, in microseconds.
type Samples = Arc<Mutex<Vec<u64>>>;

/// An `XREADGROUP` reply of entries with one field, the send time: per stream, its entries.
type Reply = Option<Vec<(String, Vec<(String, Vec<(String, u64)>)>)>>;

/// The 50th, 99th, 99.9th percentiles and the maximum of `samples`, in microseconds.
fn percentiles(samples: &[u64]) -> [u64; 4] {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    [at(0.5), at(0.99), at(0.999), *sorted.last().unwrap()]
}

/// Sends `rate` events per second for `seconds`, in ticks of a millisecond, with `send`.
async fn send_at<F, Fut>(rate: u64, seconds: u64, send: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let per_tick = (rate / 1000).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 * per_tick as u64 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let ticks = rate * seconds / per_tick as u64;
    for _ in 0..ticks {
        tick.tick().await;
        futures::future::join_all((0..per_tick).map(|_| send())).await;
    }
}

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A raw loop: XADD from one connection, XREADGROUP BLOCK + XACK on another.
async fn raw_round(url: &str, stream: &str, rate: u64, seconds: u64, start: Instant) -> Vec<u64> {
    let samples = Samples::default();
    let mut reader = connect(url).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("raw")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut reader)
        .await
        .unwrap();
    let expected = (rate * seconds) as usize;
    let reading = tokio::spawn({
        let (samples, stream) = (Arc::clone(&samples), stream.to_owned());
        async move {
            while samples.lock().unwrap().len() < expected {
                let reply: Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("raw")
                    .arg("c")
                    .arg("COUNT")
                    .arg(100)
                    .arg("BLOCK")
                    .arg(2000)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut reader)
                    .await
                    .unwrap();
                let reply: Reply = redis::from_redis_value(reply).unwrap();
                let now = start.elapsed().as_nanos() as u64;
                let mut ids = Vec::new();
                for (_, entries) in reply.unwrap_or_default() {
                    for (id, fields) in entries {
                        samples.lock().unwrap().push((now - fields[0].1) / 1000);
                        ids.push(id);
                    }
                }
                if !ids.is_empty() {
                    let _: u64 = redis::cmd("XACK")
                        .arg(&stream)
                        .arg("raw")
                        .arg(&ids)
                        .query_async(&mut reader)
                        .await
                        .unwrap();
                }
            }
        }
    });
    let writer = connect(url).await;
    send_at(rate, seconds, || {
        let mut writer = writer.clone();
        async move {
            let sent = start.elapsed().as_nanos() as u64;
            let _: String = redis::cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("sent")
                .arg(sent)
                .query_async(&mut writer)
                .await
                .unwrap();
        }
    })
    .await;
    reading.await.unwrap();
    std::mem::take(&mut *samples.lock().unwrap())
}

/// The library: `Publisher::publish` on one side, a `Consumer` with its default read settings on
/// the other; the latency is taken when the handler starts.
async fn library_round(
    url: &str,
    stream: &str,
    rate: u64,
    seconds: u64,
    start: Instant,
) -> Vec<u64> {
    let samples = Samples::default();
    let consumer = Consumer::builder(url)
        .stream(stream)
        .group("library")
        .idempotency(false)
        .handle({
            let samples = Arc::clone(&samples);
            move |ping: Ping, _: Context| {
                let now = start.elapsed().as_nanos() as u64;
                samples.lock().unwrap().push((now - ping.sent) / 1000);
                std::future::ready(Ok::<(), HandlerError>(()))
            }
        })
        .build()
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    while !consumer.status().running {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let publisher = Publisher::connect(
        url,
        PublisherConfig::new("bench").router(Router::single(stream)),
    )
    .await
    .unwrap();
    send_at(rate, seconds, || {
        let publisher = &publisher;
        async move {
            let sent = start.elapsed().as_nanos() as u64;
            publisher.publish(&Ping { sent }).await.unwrap();
        }
    })
    .await;
    let expected = (rate * seconds) as usize;
    while samples.lock().unwrap().len() < expected {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    std::mem::take(&mut *samples.lock().unwrap())
}

/// Prints the median, least and most of each percentile over `rounds`.
fn row(name: &str, rounds: &[[u64; 4]]) {
    let mut cells = Vec::new();
    for column in 0..4 {
        let values: Vec<f64> = rounds.iter().map(|round| round[column] as f64).collect();
        cells.push(Spread::of(&values).show(6, 0));
    }
    println!("{name:<34} {}", cells.join("  "));
}

#[tokio::main]
async fn main() {
    let setting = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let seconds = setting("EVENTS_BENCH_SECONDS", 2);
    let rounds = setting("EVENTS_BENCH_ROUNDS", 5);
    let server = redis_server::RedisServer::start();
    let url = server.url().to_owned();
    let start = Instant::now();
    println!(
        "publish call to handler start, µs: median (least..most) of {rounds} rounds of {seconds} s, Redis at {url}"
    );
    println!(
        "{:<34} {:>16}  {:>16}  {:>16}  {:>16}",
        "", "p50", "p99", "p99.9", "max"
    );
    for rate in [1_000, 10_000] {
        let (mut raw, mut library) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let stream = format!("bench:latency:{rate}:{round}");
            raw.push(percentiles(
                &raw_round(&url, &format!("{stream}:raw"), rate, seconds, start).await,
            ));
            library.push(percentiles(
                &library_round(&url, &format!("{stream}:lib"), rate, seconds, start).await,
            ));
        }
        row(&format!("raw XADD + XREADGROUP, {rate}/s"), &raw);
        row(&format!("Publisher + Consumer, {rate}/s"), &library);
    }
}
