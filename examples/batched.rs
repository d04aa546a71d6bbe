//! Publishes a burst of events through the batched publisher and prints its memory stats while the
//! batches drain, as a health check would see them.
//!
//! Run with `cargo run --example batched`. With `REDIS_URL` set it uses that Redis; otherwise it
//! starts a throwaway `redis-server`.

use events::testing as redis_server;

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::{
    BatchConfig, BatchedPublisher, BatchingStrategy, Event, PublisherConfig, Route, Router,
};
use serde::{Deserialize, Serialize};

/// A page was viewed.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "page.viewed")]
struct PageViewed {
    #[event(non_empty)]
    session: String,
    #[event(pattern = "^/")]
    path: String,
}

/// A button was clicked.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "page.clicked")]
struct PageClicked {
    #[event(non_empty)]
    session: String,
    #[event(length(min = 1, max = 64))]
    button: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let server = redis_server::RedisServer::start_or_exit();
    let router = Router::builder()
        .route(Route::prefixed("page.*", "example:"))
        .build()?;
    let config = BatchConfig::new()
        .max_size(500)
        .max_wait(Duration::from_millis(20))
        .max_concurrent_batches(4)
        .strategy(BatchingStrategy::Prefix(1))
        .max_queued_bytes(4 << 20);
    // A connection of its own for each batch in flight, their XADDs packed by the publisher.
    let publisher = PublisherConfig::new("web").router(router);
    let batched = Arc::new(BatchedPublisher::connect(server.url(), publisher, config).await?);

    let reporter = tokio::spawn({
        let batched = Arc::clone(&batched);
        async move {
            let start = Instant::now();
            loop {
                let stats = batched.memory_stats();
                println!(
                    "{:>5} ms  queued {:>6} ({:>7} bytes) in {} queue(s)  writing {} batch(es)  held {:>6}  published {:>6}  failed {}",
                    start.elapsed().as_millis(),
                    stats.queued_messages,
                    stats.queued_bytes,
                    stats.queue_count,
                    stats.in_flight_batches,
                    stats.held_messages,
                    stats.published_total,
                    stats.failed_messages,
                );
                if stats.published_total + stats.failed_total == 100_000 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    });

    for n in 0..50_000 {
        let session = format!("s{}", n % 997);
        batched
            .publish(&PageViewed {
                session: session.clone(),
                path: format!("/products/{}", n % 300),
            })
            .await?;
        batched
            .publish(&PageClicked {
                session,
                button: "add-to-cart".into(),
            })
            .await?;
    }
    println!("100,000 events accepted; closing");
    batched.close().await?;
    reporter.await?;
    let stats = batched.memory_stats();
    println!(
        "closed: {} published, {} failed",
        stats.published_total, stats.failed_total
    );
    Ok(())
}
