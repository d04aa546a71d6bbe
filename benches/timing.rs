//! Timing a consumer in the benchmarks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use events::{Consumer, ConsumerBuilder, Context, HandlerError};

use crate::order_placed::OrderPlaced;

/// Adds to `builder` a handler that counts orders, runs the consumer until it has handled
/// `events`, and returns it with the time that took: until the last event is handled, not the
/// shutdown after it (which waits for the read in progress to return).
pub(crate) async fn time_consumer(builder: ConsumerBuilder, events: u64) -> (Consumer, Duration) {
    let handled = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&handled);
    let consumer = builder
        .handle(move |order: OrderPlaced, _: Context| {
            std::hint::black_box(order);
            counter.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok::<(), HandlerError>(()))
        })
        .build()
        .await
        .unwrap();
    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    let all_handled = async {
        while handled.load(Ordering::Relaxed) < events {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        elapsed = start.elapsed();
    };
    consumer.run_until(all_handled).await.unwrap();
    (consumer, elapsed)
}
