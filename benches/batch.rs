//! Events per second through `BatchedPublisher`, next to `redis-benchmark -P 64` sending `XADD`s of
//! the same fields and to a raw redis-rs loop of pipelined `XADD`s, in interleaved rounds of this
//! run against the same throwaway `redis-server` (or `REDIS_URL`): the median, least and most of
//! the rounds' rates and of each round's ratio to `redis-benchmark`, and the CPU each event cost
//! Redis and the client (`redis-benchmark`, or this process: the publisher's memory sampler
//! included); and the publisher's peak memory over the rounds next to its bound.
//!
//! `cargo bench --bench batch` (`EVENTS_BENCH_EVENTS` the events per round, 200,000;
//! `EVENTS_BENCH_ROUNDS` the rounds, 5; `EVENTS_BENCH_ROWS` which rows to measure, such as `3` for
//! a profile of that one alone: the baseline, row 0, always runs; `EVENTS_BENCH_BATCH` the events
//! per batch and per raw pipeline, 1,000; `EVENTS_BENCH_AT_ONCE` the batches in flight, 4). With
//! `EVENTS_BENCH_PIN` set, Redis runs on a CPU of its own and the bench and `redis-benchmark` on
//! the others.

use events::testing as redis_server;

mod cpu;
mod order_placed;
mod pin;
mod rows;
mod spread;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cpu::{children_busy, own_busy, redis_busy};
use events::{BatchConfig, BatchedPublisher, PublishOptions, Publisher, PublisherConfig, Router};
use order_placed::OrderPlaced;
use spread::Spread;

/// Resident memory of this process now, from `/proc/self/status`, in bytes.
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// `redis-benchmark -P 64` sending `events` XADDs of `fields` to `stream`; its requests per second.
fn redis_benchmark(url: &str, stream: &str, events: usize, fields: &[(String, String)]) -> f64 {
    let port = url.rsplit(':').next().expect("port in url");
    let mut command = Command::new("redis-benchmark");
    command.args([
        "-h",
        "127.0.0.1",
        "-p",
        port,
        "-P",
        "64",
        "-q",
        "-n",
        &events.to_string(),
    ]);
    command.args(["XADD", stream, "*"]);
    for (name, value) in fields {
        command.arg(name).arg(value);
    }
    let output = command.output().expect("run redis-benchmark");
    let text = String::from_utf8_lossy(&output.stdout);
    let rate = text
        .split(" requests per second")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|rate| rate.parse::<f64>().ok());
    rate.unwrap_or_else(|| panic!("unexpected redis-benchmark output: {text}"))
}

/// The memory bound of the batched publishers measured.
const MAX_QUEUED_BYTES: usize = 32 << 20;

/// A publisher's settings, routing every event to `stream`.
fn publisher_config(stream: &str) -> PublisherConfig {
    PublisherConfig::new("bench").router(Router::single(stream))
}

/// What a batched publisher's round measured: events per second, and at its peak the bytes it
/// held and how far this process's resident memory grew.
struct Publishing {
    rate: f64,
    held: usize,
    growth: usize,
}

/// Publishes `events` orders through `batched` and closes it.
async fn publish_through(batched: BatchedPublisher, events: usize) -> Publishing {
    let batched = Arc::new(batched);
    let orders: Vec<OrderPlaced> = (0..1000).map(OrderPlaced::sample).collect();
    let before = resident_bytes();
    let (done, peak_held, peak_resident) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let sampler = tokio::spawn({
        let (batched, done, peak_held, peak_resident) = (
            Arc::clone(&batched),
            Arc::clone(&done),
            Arc::clone(&peak_held),
            Arc::clone(&peak_resident),
        );
        async move {
            while !done.load(Ordering::Relaxed) {
                peak_held.fetch_max(batched.memory_stats().held_bytes, Ordering::Relaxed);
                peak_resident.fetch_max(resident_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let start = Instant::now();
    for n in 0..events {
        batched.publish(&orders[n % orders.len()]).await.unwrap();
    }
    batched.close().await.unwrap();
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let stats = batched.memory_stats();
    assert_eq!(stats.published_total, events as u64, "every event written");
    Publishing {
        rate: events as f64 / elapsed.as_secs_f64(),
        held: peak_held.load(Ordering::Relaxed),
        growth: peak_resident.load(Ordering::Relaxed).saturating_sub(before),
    }
}

/// Events per second of `events` orders' fields written by raw redis-rs pipelines of `size`
/// `XADD`s through `redis`.
async fn raw_pipelines(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    events: usize,
    size: usize,
    fields: &[(String, String)],
) -> f64 {
    let start = Instant::now();
    for _ in 0..events.div_ceil(size) {
        let mut pipeline = redis::pipe();
        for _ in 0..size {
            pipeline
                .cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg(fields)
                .ignore();
        }
        let () = pipeline.query_async(redis).await.unwrap();
    }
    (events.div_ceil(size) * size) as f64 / start.elapsed().as_secs_f64()
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The rows, each printed with its rates and its ratios to the first, `redis-benchmark`: for
/// batches of `size` events, `at_once` of them in flight.
fn row_names(size: usize, at_once: usize) -> [String; 4] {
    [
        "redis-benchmark -P 64 XADD (baseline)".into(),
        format!("raw redis-rs pipelines of {size} XADD"),
        format!("BatchedPublisher::new ({size} x {at_once}, one connection)"),
        format!("BatchedPublisher::connect ({size} x {at_once}, {at_once} connections)"),
    ]
}

#[tokio::main]
async fn main() {
    let events = setting("EVENTS_BENCH_EVENTS", 200_000);
    let rounds = setting("EVENTS_BENCH_ROUNDS", 5);
    let size = setting("EVENTS_BENCH_BATCH", 1000);
    let at_once = setting("EVENTS_BENCH_AT_ONCE", 4);
    let names = row_names(size, at_once);
    let server = redis_server::RedisServer::start();
    let url = server.url().to_owned();
    let publisher = Publisher::connect(&url, publisher_config("bench:batched"))
        .await
        .unwrap();
    let sample = publisher
        .envelope(&OrderPlaced::sample(1), PublishOptions::new())
        .unwrap();
    assert_eq!(sample.body.len(), 160);
    let fields: Vec<(String, String)> = sample
        .fields()
        .into_iter()
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let mut redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let config = BatchConfig::new()
        .max_size(size)
        .max_wait(Duration::from_millis(10))
        .max_concurrent_batches(at_once)
        .max_queued_bytes(MAX_QUEUED_BYTES)
        .max_queued_messages(usize::MAX >> 1);
    let cores = pin::cores(&mut redis).await;
    println!(
        "{events} events of 160-byte JSON bodies per round, {rounds} rounds, Redis at {url}, {cores}"
    );

    let mut rates: [Vec<f64>; 4] = Default::default();
    // Each row's CPU per event, in microseconds: Redis's, and the client's (redis-benchmark's, or
    // this process's).
    let mut redis_micros: [Vec<f64>; 4] = Default::default();
    let mut client_micros: [Vec<f64>; 4] = Default::default();
    let (mut held, mut growth) = (0, 0);
    let rows = rows::chosen(names.len());
    for _ in 0..rounds {
        for &row in &rows {
            let (busy, own, children) = (redis_busy(&mut redis).await, own_busy(), children_busy());
            let rate = match row {
                0 => redis_benchmark(&url, "bench:redis-benchmark", events, &fields),
                1 => raw_pipelines(&mut redis, "bench:raw", events, size, &fields).await,
                _ => {
                    let batched = if row == 2 {
                        BatchedPublisher::new(publisher.clone(), config.clone())
                    } else {
                        BatchedPublisher::connect(
                            url.as_str(),
                            publisher_config("bench:batched"),
                            config.clone(),
                        )
                        .await
                        .unwrap()
                    };
                    let publishing = publish_through(batched, events).await;
                    held = held.max(publishing.held);
                    growth = growth.max(publishing.growth);
                    publishing.rate
                }
            };
            let client = if row == 0 {
                children_busy() - children
            } else {
                own_busy() - own
            };
            rates[row].push(rate);
            redis_micros[row].push((redis_busy(&mut redis).await - busy) as f64 / events as f64);
            client_micros[row].push(client as f64 / events as f64);
        }
        // Emptied for the next round: Redis holds no more than a round's entries.
        let () = redis::cmd("DEL")
            .arg(&["bench:redis-benchmark", "bench:raw", "bench:batched"])
            .query_async(&mut redis)
            .await
            .unwrap();
    }

    println!(
        "{:<54} {:>22}   x redis-benchmark, per round   CPU/event: Redis, client",
        "events/s", "median (least..most)"
    );
    for (row, name) in names
        .iter()
        .enumerate()
        .filter(|(row, _)| rows.contains(row))
    {
        let ratios: Vec<f64> = rates[row]
            .iter()
            .zip(&rates[0])
            .map(|(rate, baseline)| rate / baseline)
            .collect();
        println!(
            "{name:<54} {}   {}   {:>12.2} µs {:>6.2} µs",
            Spread::of(&rates[row]).show(9, 0),
            Spread::of(&ratios).show(5, 2),
            Spread::of(&redis_micros[row]).median,
            Spread::of(&client_micros[row]).median
        );
    }
    let mib = |bytes: usize| bytes as f64 / (1 << 20) as f64;
    println!(
        "batched publishers' memory at their peak over the rounds: bound {:.1} MiB, held {:.1} MiB, \
         resident growth {:.1} MiB ({:.0}% of the bound)",
        mib(MAX_QUEUED_BYTES),
        mib(held),
        mib(growth),
        100.0 * growth as f64 / MAX_QUEUED_BYTES as f64
    );
}
