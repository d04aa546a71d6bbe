//! A consumer's resident memory with a million entries behind it: sampled every 100,000 handled
//! events. Backpressure bounds what it holds (`max_unacked` entries), so its memory stays flat
//! however long the backlog; the first samples are printed next to the last.
//!
//! `cargo bench --bench footprint` (`EVENTS_BENCH_EVENTS` sets the backlog, 1,000,000 by default).

mod backlog;
mod order_placed;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use events::testing::{RedisServer, resident_kib};
use events::{Consumer, Context, HandlerError, Router, StartFrom};
use order_placed::OrderPlaced;

const STREAM: &str = "bench:footprint";

#[tokio::main]
async fn main() {
    let events: u64 = std::env::var("EVENTS_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let server = RedisServer::start();
    backlog::write_orders(server.url(), Router::single(STREAM), events).await;
    let handled = Arc::new(AtomicU64::new(0));
    let consumer = Consumer::builder(server.url())
        .stream(STREAM)
        .group("footprint")
        .start_from(StartFrom::Beginning)
        .block(Duration::from_millis(100))
        .handle({
            let handled = Arc::clone(&handled);
            move |order: OrderPlaced, _: Context| {
                std::hint::black_box(order);
                handled.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Ok::<(), HandlerError>(()))
            }
        })
        .build()
        .await
        .unwrap();
    let before = resident_kib("self");
    println!(
        "{events} entries behind one consumer (max_unacked 1,000); resident memory before: {:.1} MiB",
        before as f64 / 1024.0
    );
    let mut samples = Vec::new();
    let sampling = async {
        let step = (events / 10).max(1);
        let mut next = step;
        while next <= events {
            while handled.load(Ordering::Relaxed) < next {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples.push(resident_kib("self"));
            println!(
                "{next:>9} handled: {:>6.1} MiB",
                samples[samples.len() - 1] as f64 / 1024.0
            );
            next += step;
        }
    };
    consumer.run_until(sampling).await.unwrap();
    let third = (samples.len() / 3).max(1);
    let mean = |values: &[u64]| values.iter().sum::<u64>() as f64 / values.len() as f64 / 1024.0;
    let (first, last) = (
        mean(&samples[..third]),
        mean(&samples[samples.len() - third..]),
    );
    println!(
        "first third {first:.1} MiB, last third {last:.1} MiB ({:.3}x)",
        last / first
    );
}
