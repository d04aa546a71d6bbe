//! Timing consumers in the benchmarks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use events::{Consumer, ConsumerBuilder, Context, HandlerError, HandlerOptions};
use futures::future::Either;
use redis::Value;

use crate::order_placed::OrderPlaced;

/// How the benches' handler handles an order: registered with `options`, and done at once or
/// after `wait`, as a handler that awaits a database or another service would be.
#[derive(Clone, Default)]
pub(crate) struct Handling {
    pub(crate) options: HandlerOptions,
    pub(crate) wait: Option<Duration>,
}

/// Runs the consumers `builders` make (of one group, handling orders as `handling` says) until
/// they have handled `events` and nothing is pending on `streams` in `group` any more: the time
/// until the last acknowledgement landed in Redis.
pub(crate) async fn time_until_acknowledged(
    builders: Vec<ConsumerBuilder>,
    handling: &Handling,
    events: u64,
    url: &str,
    streams: &[String],
    group: &str,
) -> Duration {
    let handled = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for builder in builders {
        consumers.push(counting(builder, handling.clone(), &handled).await);
    }
    let mut redis = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running: Vec<_> = consumers
        .iter()
        .map(|consumer| {
            let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
            tokio::spawn(async move { consumer.run(shutdown).await })
        })
        .collect();
    let start = Instant::now();
    while handled.load(Ordering::Relaxed) < events {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    loop {
        let mut pending = 0;
        for stream in streams {
            let summary: (u64, Value, Value, Value) = redis::cmd("XPENDING")
                .arg(stream)
                .arg(group)
                .query_async(&mut redis)
                .await
                .unwrap();
            pending += summary.0;
        }
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let elapsed = start.elapsed();
    shutdown.cancel();
    for run in running {
        run.await.unwrap().unwrap();
    }
    elapsed
}

/// Builds the consumer of `builder` with a handler (as `handling` says) that counts the orders
/// it handles.
async fn counting(
    builder: ConsumerBuilder,
    handling: Handling,
    handled: &Arc<AtomicU64>,
) -> Consumer {
    let counter = Arc::clone(handled);
    let wait = handling.wait;
    builder
        .handle_with(handling.options, move |order: OrderPlaced, _: Context| {
            std::hint::black_box(order);
            counter.fetch_add(1, Ordering::Relaxed);
            let done = std::future::ready(Ok::<(), HandlerError>(()));
            match wait {
                None => Either::Left(done),
                Some(wait) => Either::Right(async move {
                    tokio::time::sleep(wait).await;
                    done.await
                }),
            }
        })
        .build()
        .await
        .unwrap()
}
