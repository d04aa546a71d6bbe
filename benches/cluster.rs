//! Publish and consume throughput on a local 3-node Redis Cluster next to a single redis-server,
//! both started by this run: one stream, and a stream partitioned 8 ways.
//!
//! `cargo bench --bench cluster` (set `EVENTS_BENCH_EVENTS` to change the number of events).

mod order_placed;
mod timing;

use std::time::{Duration, Instant};

use events::testing::{RedisCluster, RedisServer};
use events::{Consumer, Publisher, PublisherConfig, Route, Router, StartFrom};
use order_placed::OrderPlaced;

/// Publishes `events` orders in batches of 1,000 to `stream` (partitioned `partitions` ways when
/// more than one); events per second.
async fn publish(url: &str, stream: &str, partitions: u32, events: u64) -> f64 {
    let route = Route::to("order.*", stream);
    let route = if partitions > 1 {
        route.partitions(partitions)
    } else {
        route
    };
    let router = Router::builder().route(route).build().unwrap();
    let publisher = Publisher::connect(url, PublisherConfig::new("bench").router(router))
        .await
        .unwrap();
    let orders: Vec<OrderPlaced> = (0..1000).map(OrderPlaced::sample).collect();
    let start = Instant::now();
    for _ in 0..events / 1000 {
        publisher.publish_many(&orders).await.unwrap();
    }
    events as f64 / start.elapsed().as_secs_f64()
}

/// Consumes every event of `stream` (all its partitions) with one consumer; events per second.
async fn consume(url: &str, stream: &str, partitions: u32, events: u64) -> f64 {
    let builder = Consumer::builder(url);
    let builder = if partitions > 1 {
        builder
            .partitioned_stream(stream, partitions)
            .partition_lease(Duration::from_secs(2))
    } else {
        builder.stream(stream)
    };
    let builder = builder
        .group("bench")
        .start_from(StartFrom::Beginning)
        .batch_size(500)
        .max_unacked(4000)
        .concurrency(500)
        .block(Duration::from_millis(100))
        .idempotency(false);
    let streams = if partitions > 1 {
        events::partition_streams(stream, partitions)
    } else {
        vec![stream.to_owned()]
    };
    let elapsed = timing::time_until_acknowledged(
        vec![builder],
        &timing::Handling::default(),
        events,
        url,
        &streams,
        "bench",
    )
    .await;
    events as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let events: u64 = std::env::var("EVENTS_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let server = RedisServer::own();
    let cluster = RedisCluster::start();
    println!(
        "{events} events of 160-byte bodies; one redis-server and a 3-node cluster on this machine"
    );
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "", "one server", "3-node cluster", "ratio"
    );
    for partitions in [1, 8] {
        let stream = format!("bench:orders{partitions}");
        let single = publish(server.url(), &stream, partitions, events).await;
        let clustered = publish(&cluster.url(), &stream, partitions, events).await;
        let name = format!("publish_many of 1,000, {partitions} stream(s)");
        println!(
            "{name:<44} {single:>14.0} {clustered:>14.0} {:>7.2}x",
            clustered / single
        );
        let single = consume(server.url(), &stream, partitions, events).await;
        let clustered = consume(&cluster.url(), &stream, partitions, events).await;
        let name = format!("one consumer, {partitions} stream(s)");
        println!(
            "{name:<44} {single:>14.0} {clustered:>14.0} {:>7.2}x",
            clustered / single
        );
    }
}
