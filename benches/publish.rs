//! Per-event cost of `Publisher::publish` next to a raw redis-rs `XADD` of the same fields, both
//! measured in this run against the same throwaway `redis-server` (or `REDIS_URL`).
//!
//! `cargo bench --bench publish` (set `EVENTS_BENCH_EVENTS` to change the number of events per round).

use events::testing as redis_server;

mod order_placed;

use std::hint::black_box;
use std::time::{Duration, Instant};

use events::{PublishOptions, Publisher, PublisherConfig, Router};
use order_placed::OrderPlaced;
use redis::aio::ConnectionManager;

/// Times `round` three times and keeps the fastest, per event.
async fn best_of_three(events: usize, mut round: impl AsyncFnMut()) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        round().await;
        best = best.min(start.elapsed() / u32::try_from(events).expect("events fit in u32"));
    }
    best
}

fn row(name: &str, per_event: Duration, baseline: Duration) {
    let nanos = per_event.as_nanos() as f64;
    let overhead = nanos - baseline.as_nanos() as f64;
    println!(
        "{name:<44} {:>9.2} µs/event {:>10.0} events/s {:>+9.2} µs vs baseline",
        nanos / 1000.0,
        1e9 / nanos,
        overhead / 1000.0
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let events: usize = std::env::var("EVENTS_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let server = redis_server::RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = ConnectionManager::new(client.clone()).await.unwrap();
    let stream = "bench:publish";
    let publisher = Publisher::new(
        ConnectionManager::new(client).await.unwrap(),
        PublisherConfig::new("bench").router(Router::single(stream)),
    );
    let event = OrderPlaced::sample(123);
    let envelope = publisher.envelope(&event, PublishOptions::new()).unwrap();
    assert_eq!(
        envelope.body.len(),
        160,
        "the benchmark's body is 160 bytes of JSON"
    );
    let fields: Vec<(String, String)> = envelope
        .fields()
        .into_iter()
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let batch = 100;
    println!(
        "{events} events per round, body {} bytes, Redis at {}",
        envelope.body.len(),
        server.url()
    );

    let encode = best_of_three(events, async || {
        for _ in 0..events {
            black_box(
                publisher
                    .envelope(black_box(&event), PublishOptions::new())
                    .unwrap(),
            );
        }
    })
    .await;
    row(
        "encode only (validate, JSON, hash, id, ts)",
        encode,
        Duration::ZERO,
    );

    let raw_xadd = best_of_three(events, async || {
        for _ in 0..events {
            let _: String = redis::cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg(&fields)
                .query_async(&mut raw)
                .await
                .unwrap();
        }
    })
    .await;
    let publish = best_of_three(events, async || {
        for _ in 0..events {
            publisher.publish(&event).await.unwrap();
        }
    })
    .await;
    row(
        "raw redis-rs XADD, one at a time (baseline)",
        raw_xadd,
        raw_xadd,
    );
    row("Publisher::publish, one at a time", publish, raw_xadd);

    let batch_events: Vec<OrderPlaced> = vec![event.clone(); batch];
    let raw_pipeline = best_of_three(events, async || {
        for _ in 0..events / batch {
            let mut pipeline = redis::pipe();
            for _ in 0..batch {
                pipeline.cmd("XADD").arg(stream).arg("*").arg(&fields);
            }
            let _: Vec<String> = pipeline.query_async(&mut raw).await.unwrap();
        }
    })
    .await;
    let publish_many = best_of_three(events, async || {
        for _ in 0..events / batch {
            publisher.publish_many(&batch_events).await.unwrap();
        }
    })
    .await;
    row(
        &format!("raw redis-rs pipeline of {batch} XADD (baseline)"),
        raw_pipeline,
        raw_pipeline,
    );
    row(
        &format!("Publisher::publish_many of {batch}"),
        publish_many,
        raw_pipeline,
    );
}
