//! A backlog for the consumer benchmarks: distinct orders written ahead of the consumer.
// Each benchmark that includes this uses a part of it.
#![allow(dead_code)]

use events::{Publisher, PublisherConfig, Route, Router};

use crate::order_placed::OrderPlaced;

/// Writes `events` orders, numbered from 0, to `stream` of the Redis at `url`, a thousand per
/// round trip.
pub(crate) async fn write_orders(url: &str, stream: &str, events: u64) {
    let publisher = Publisher::connect(
        url,
        PublisherConfig::new("bench").router(Router::single(stream)),
    )
    .await
    .unwrap();
    let mut published = 0;
    while published < events {
        let chunk: Vec<OrderPlaced> = (published..events.min(published + 1000))
            .map(|n| OrderPlaced::sample(n as u32))
            .collect();
        publisher.publish_many(&chunk).await.unwrap();
        published += chunk.len() as u64;
    }
}

/// Writes `events` orders to the `partitions` partitions of `stream`, without keys (so spread
/// over the partitions by their ids), a thousand per round trip.
pub(crate) async fn write_partitioned_orders(
    url: &str,
    stream: &str,
    partitions: u32,
    events: u64,
) {
    let router = Router::builder()
        .route(Route::to("order.*", stream).partitions(partitions))
        .build()
        .unwrap();
    let publisher = Publisher::connect(url, PublisherConfig::new("bench").router(router))
        .await
        .unwrap();
    let mut published = 0;
    while published < events {
        let chunk: Vec<OrderPlaced> = (published..events.min(published + 1000))
            .map(|n| OrderPlaced::sample(n as u32))
            .collect();
        publisher.publish_many(&chunk).await.unwrap();
        published += chunk.len() as u64;
    }
}
