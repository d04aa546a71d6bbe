//! Per-event cost of `Publisher::publish` and `publish_many` next to a raw redis-rs `XADD` and a
//! raw pipeline of the same fields, measured in interleaved rounds of this run against the same
//! throwaway `redis-server` (or `REDIS_URL`): the median, least and most of the rounds, and of
//! each round's difference to its baseline.
//!
//! `cargo bench --bench publish` (`EVENTS_BENCH_EVENTS` the events per round, 20,000;
//! `EVENTS_BENCH_ROUNDS` the rounds, 5).

use events::testing as redis_server;

mod order_placed;
mod spread;

use std::hint::black_box;
use std::time::Instant;

use events::{PublishOptions, Publisher, PublisherConfig, Router};
use order_placed::OrderPlaced;
use redis::aio::ConnectionManager;
use spread::Spread;

/// Events per pipeline and per `publish_many`.
const BATCH: usize = 100;

/// The rows, each with the row it is compared with.
const ROWS: [(&str, Option<usize>); 5] = [
    ("encode only (validate, JSON, hash, id, ts)", None),
    ("raw redis-rs XADD, one at a time (baseline)", None),
    ("Publisher::publish, one at a time", Some(1)),
    ("raw redis-rs pipeline of 100 XADD (baseline)", None),
    ("Publisher::publish_many of 100", Some(3)),
];

/// Microseconds per event of `run`, which handles `events` events.
async fn per_event(events: usize, run: impl AsyncFnOnce()) -> f64 {
    let start = Instant::now();
    run().await;
    start.elapsed().as_secs_f64() * 1e6 / events as f64
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let events = setting("EVENTS_BENCH_EVENTS", 20_000);
    let rounds = setting("EVENTS_BENCH_ROUNDS", 5);
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
    let batch_events: Vec<OrderPlaced> = vec![event.clone(); BATCH];
    println!(
        "{events} events per round, {rounds} rounds, body {} bytes, Redis at {}",
        envelope.body.len(),
        server.url()
    );

    let mut micros: [Vec<f64>; ROWS.len()] = Default::default();
    for _ in 0..rounds {
        micros[0].push(
            per_event(events, async || {
                for _ in 0..events {
                    black_box(
                        publisher
                            .envelope(black_box(&event), PublishOptions::new())
                            .unwrap(),
                    );
                }
            })
            .await,
        );
        micros[1].push(
            per_event(events, async || {
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
            .await,
        );
        micros[2].push(
            per_event(events, async || {
                for _ in 0..events {
                    publisher.publish(&event).await.unwrap();
                }
            })
            .await,
        );
        micros[3].push(
            per_event(events, async || {
                for _ in 0..events / BATCH {
                    let mut pipeline = redis::pipe();
                    for _ in 0..BATCH {
                        pipeline.cmd("XADD").arg(stream).arg("*").arg(&fields);
                    }
                    let _: Vec<String> = pipeline.query_async(&mut raw).await.unwrap();
                }
            })
            .await,
        );
        micros[4].push(
            per_event(events, async || {
                for _ in 0..events / BATCH {
                    publisher.publish_many(&batch_events).await.unwrap();
                }
            })
            .await,
        );
        let () = redis::cmd("DEL")
            .arg(stream)
            .query_async(&mut raw)
            .await
            .unwrap();
    }

    println!(
        "{:<46} {:>21}   more than its baseline, per round",
        "µs per event", "median (least..most)"
    );
    for (row, (name, baseline)) in ROWS.iter().enumerate() {
        let versus = baseline.map_or_else(String::new, |baseline| {
            let more: Vec<f64> = micros[row]
                .iter()
                .zip(&micros[baseline])
                .map(|(this, base)| this - base)
                .collect();
            format!("{} µs", Spread::of(&more).show(7, 2))
        });
        println!(
            "{name:<46} {}   {versus}",
            Spread::of(&micros[row]).show(8, 2)
        );
    }
}
