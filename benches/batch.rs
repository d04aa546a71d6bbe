//! Events per second through `BatchedPublisher`, next to `redis-benchmark -P 64` sending `XADD`s of
//! the same fields and to a raw redis-rs loop of pipelined `XADD`s, all in this run against the same
//! throwaway `redis-server` (or `REDIS_URL`); and the publisher's peak memory next to its bound.
//!
//! `cargo bench --bench batch` (set `EVENTS_BENCH_EVENTS` to change the number of events).

use events::testing as redis_server;

mod order_placed;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use events::{BatchConfig, BatchedPublisher, PublishOptions, Publisher, PublisherConfig, Router};
use order_placed::OrderPlaced;

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

fn row(name: &str, events: usize, elapsed: Duration, baseline: f64) -> f64 {
    let rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "{name:<54} {rate:>10.0} events/s {:>6.2}x redis-benchmark",
        rate / baseline
    );
    rate
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

/// Publishes `events` orders through `batched` (in batches of 1,000) and closes it; prints its
/// rate and its peak memory next to its bound.
async fn publish_through(batched: BatchedPublisher, events: usize, name: &str, baseline: f64) {
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
    row(name, events, elapsed, baseline);
    let mib = |bytes: usize| bytes as f64 / (1 << 20) as f64;
    let growth = peak_resident.load(Ordering::Relaxed).saturating_sub(before);
    println!(
        "  memory: bound {:.1} MiB, peak held {:.1} MiB, peak resident growth {:.1} MiB ({:.0}% of the bound)",
        mib(MAX_QUEUED_BYTES),
        mib(peak_held.load(Ordering::Relaxed)),
        mib(growth),
        100.0 * growth as f64 / MAX_QUEUED_BYTES as f64
    );
}

#[tokio::main]
async fn main() {
    let events: usize = std::env::var("EVENTS_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
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
    println!("{events} events of 160-byte JSON bodies, Redis at {url}");

    let baseline = redis_benchmark(&url, "bench:redis-benchmark", events, &fields);
    println!(
        "{:<54} {baseline:>10.0} events/s {:>6.2}x redis-benchmark",
        "redis-benchmark -P 64 XADD (baseline)", 1.0
    );

    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let start = Instant::now();
    for _ in 0..events.div_ceil(1000) {
        let mut pipeline = redis::pipe();
        for _ in 0..1000 {
            pipeline
                .cmd("XADD")
                .arg("bench:raw")
                .arg("*")
                .arg(&fields)
                .ignore();
        }
        let () = pipeline.query_async(&mut raw).await.unwrap();
    }
    row(
        "raw redis-rs pipelines of 1,000 XADD",
        events.div_ceil(1000) * 1000,
        start.elapsed(),
        baseline,
    );

    let config = BatchConfig::new()
        .max_size(1000)
        .max_wait(Duration::from_millis(10))
        .max_concurrent_batches(4)
        .max_queued_bytes(MAX_QUEUED_BYTES)
        .max_queued_messages(usize::MAX >> 1);
    let one = BatchedPublisher::new(publisher, config.clone());
    publish_through(
        one,
        events,
        "BatchedPublisher::new (4 at once, one connection)",
        baseline,
    )
    .await;
    let each = BatchedPublisher::connect(url.as_str(), publisher_config("bench:connected"), config)
        .await
        .unwrap();
    publish_through(
        each,
        events,
        "BatchedPublisher::connect (4 at once, 4 connections)",
        baseline,
    )
    .await;
}
