//! A worker as it runs in production: one process of a consumer group handling `order.placed`
//! events until SIGTERM or Ctrl-C, then finishing what it started and stopping. Start several and
//! they share the work; kill one and the others take over its entries after their `claim_idle`.
//!
//! Run it against a Redis of yours: `REDIS_URL=redis://127.0.0.1:6379 cargo run --example worker`.
//! Settings, from the environment:
//! - `REDIS_URL`: the server (default `redis://127.0.0.1:6379`); `redis+cluster://` for a cluster.
//! - `EVENTS_STREAM` (default `orders`), `EVENTS_GROUP` (default `fulfilment`).
//! - `EVENTS_CONSUMER`: this worker's name in the group (default: host name and process id).
//! - `WORK_MS`: how long handling one order takes, to watch work being shared (default 0).
//!
//! It prints `handled <order_id>` per order and `status <json>` every ten seconds and on stopping.

use std::error::Error;
use std::time::Duration;

use events::{Consumer, Context, Event, HandlerError, Status};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// An order was placed. Publishers declare the same type: the name and fields are the contract.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "order.placed")]
struct OrderPlaced {
    #[event(non_empty)]
    order_id: String,
    #[event(range(min = 0.0))]
    total: f64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_owned());
    let work = Duration::from_millis(setting("WORK_MS", "0").parse()?);
    let mut builder = Consumer::builder(setting("REDIS_URL", "redis://127.0.0.1:6379"))
        .stream(setting("EVENTS_STREAM", "orders"))
        .group(setting("EVENTS_GROUP", "fulfilment"))
        .start_from(events::StartFrom::Beginning)
        // A crashed worker's idempotency holds end a second after the handler timeout; others
        // take over its orders once they went unacknowledged for `claim_idle` (a minute).
        .handler_timeout(Duration::from_secs(5) + work)
        .handle(move |order: OrderPlaced, _: Context| async move {
            tokio::time::sleep(work).await;
            println!("handled {}", order.order_id);
            Ok::<(), HandlerError>(())
        });
    if let Ok(name) = std::env::var("EVENTS_CONSUMER") {
        builder = builder.consumer_name(name);
    }
    let consumer = builder.build().await?;
    println!("worker {} started", consumer.name());

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let (shutdown, consumer) = (shutdown.clone(), consumer.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            every.tick().await;
            let terminated = terminated();
            tokio::pin!(terminated);
            loop {
                tokio::select! {
                    () = &mut terminated => break,
                    _ = every.tick() => print_status(&consumer.status()),
                }
            }
            shutdown.cancel();
        }
    });
    consumer.run(shutdown).await?;
    print_status(&consumer.status());
    Ok(())
}

fn print_status(status: &Status) {
    match serde_json::to_string(status) {
        Ok(json) => println!("status {json}"),
        Err(error) => eprintln!("status unavailable: {error}"),
    }
}

/// Completes on Ctrl-C or, on Unix, SIGTERM (what `docker stop` and Kubernetes send).
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
