//! Events per second through `Consumer` (read, decode, typed handler, acknowledge) with and without
//! idempotency, next to a raw redis-rs `XREADGROUP` + `XACK` loop over the same entries, all in this
//! run against the same throwaway `redis-server` (or `REDIS_URL`).
//!
//! `cargo bench --bench consume` (set `EVENTS_BENCH_EVENTS` to change the number of events).

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

mod backlog;
mod order_placed;
mod timing;

use std::time::{Duration, Instant};

use events::{Consumer, StartFrom};
use redis::Value;

const STREAM: &str = "bench:consume";

/// A stream entry as the raw loop reads it: its id and field-value pairs.
type Entry = (String, Vec<(Vec<u8>, Vec<u8>)>);

fn row(name: &str, events: u64, elapsed: Duration, baseline: f64) -> f64 {
    let rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "{name:<52} {rate:>10.0} events/s {:>7.2}x baseline",
        rate / baseline
    );
    rate
}

/// Reads every entry through a new group with XREADGROUP and acknowledges each batch with XACK.
async fn raw_loop(url: &str, group: &str, events: u64, batch: usize) -> Duration {
    let mut connection = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(group)
        .arg("0")
        .query_async(&mut connection)
        .await
        .unwrap();
    let start = Instant::now();
    let mut read = 0;
    while read < events {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg("c")
            .arg("COUNT")
            .arg(batch)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(">")
            .query_async(&mut connection)
            .await
            .unwrap();
        let reply: Vec<(String, Vec<Entry>)> = redis::from_redis_value(reply).unwrap();
        let ids: Vec<String> = reply
            .into_iter()
            .flat_map(|(_, entries)| entries)
            .map(|(id, _)| id)
            .collect();
        read += ids.len() as u64;
        let _: u64 = redis::cmd("XACK")
            .arg(STREAM)
            .arg(group)
            .arg(&ids)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    start.elapsed()
}

/// Runs a consumer in a new group until it has handled every entry.
async fn consumer(
    url: &str,
    group: &str,
    events: u64,
    batch: usize,
    idempotency: bool,
) -> Duration {
    let builder = Consumer::builder(url)
        .stream(STREAM)
        .group(group)
        .start_from(StartFrom::Beginning)
        .batch_size(batch)
        .max_unacked(batch * 8)
        .concurrency(batch)
        .block(Duration::from_millis(100))
        .idempotency(idempotency);
    let (consumer, elapsed) = timing::time_consumer(builder, events).await;
    assert_eq!(consumer.status().processed, events);
    let mut connection = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pending: (u64, Value, Value, Value) = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(group)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(pending.0, 0, "every handled event was acknowledged");
    elapsed
}

#[tokio::main]
async fn main() {
    let events: u64 = std::env::var("EVENTS_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let batch: usize = std::env::var("EVENTS_BENCH_BATCH")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let server = redis_server::RedisServer::start();
    let url = server.url().to_owned();
    // Distinct orders: distinct events for idempotency.
    backlog::write_orders(&url, STREAM, events).await;
    println!(
        "{events} events of 160-byte JSON bodies in one stream, batches of {batch}, Redis at {url}"
    );

    // Each measurement reads the whole stream in a new group; the fastest of three rounds counts,
    // the rounds interleaved so that a slow moment of the machine does not favour one side.
    let (mut raw, mut plain, mut idempotent) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for round in 0..3 {
        raw = raw.min(raw_loop(&url, &format!("raw-{round}"), events, batch).await);
        plain = plain.min(consumer(&url, &format!("plain-{round}"), events, batch, false).await);
        idempotent = idempotent
            .min(consumer(&url, &format!("idempotent-{round}"), events, batch, true).await);
    }
    let baseline = events as f64 / raw.as_secs_f64();
    row(
        "raw redis-rs XREADGROUP + XACK loop (baseline)",
        events,
        raw,
        baseline,
    );
    row(
        "Consumer, typed handler, idempotency off",
        events,
        plain,
        baseline,
    );
    row(
        "Consumer, typed handler, idempotency on",
        events,
        idempotent,
        baseline,
    );
}
