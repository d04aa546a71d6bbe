//! A backlog for the consumer benchmarks: distinct orders written ahead of the consumer.
// Each benchmark that includes this uses a part of it.
#![allow(dead_code)]

use events::{Publisher, PublisherConfig, Route, Router};

use crate::order_placed::OrderPlaced;

/// Writes `events` orders, numbered from 0, to the Redis at `url` where `router` sends them, a
/// thousand per round trip.
pub(crate) async fn write_orders(url: &str, router: Router, events: u64) {
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

/// Orders to the `partitions` partitions of `stream`, without keys: spread by their ids.
pub(crate) fn partitioned(stream: &str, partitions: u32) -> Router {
    Router::builder()
        .route(Route::to("order.*", stream).partitions(partitions))
        .build()
        .unwrap()
}
