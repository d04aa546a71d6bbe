//! A service consuming events in a consumer group: two typed handlers, a pattern handler for audit
//! events, a handler that keeps failing until its event lands in the dead-letter stream, and
//! graceful shutdown on Ctrl-C.
//!
//! Run with `cargo run --example consumer`. It publishes a few events first so there is something
//! to consume, and stops by itself once they are all settled (a real service would run until
//! Ctrl-C). With `REDIS_URL` set it uses that Redis; otherwise it starts a throwaway `redis-server`.

use events::testing as redis_server;

use std::error::Error;
use std::time::Duration;

use events::{
    Backoff, Consumer, Context, Event, HandlerError, Publisher, PublisherConfig, Route, Router,
    read_range,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// A user signed up.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "user.created")]
struct UserCreated {
    #[event(non_empty)]
    user_id: String,
    #[event(email)]
    email: String,
}

/// An order was paid.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "order.paid")]
struct OrderPaid {
    #[event(non_empty)]
    order_id: String,
    #[event(range(min = 0.01))]
    amount: f64,
}

/// Where everything goes in this example.
const STREAM: &str = "example:events";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let server = redis_server::RedisServer::start_or_exit();
    let router = Router::builder().route(Route::to("**", STREAM)).build()?;
    let publisher =
        Publisher::connect(server.url(), PublisherConfig::new("shop").router(router)).await?;
    publisher
        .publish(&UserCreated {
            user_id: "u1".into(),
            email: "ada@example.com".into(),
        })
        .await?;
    for (order_id, amount) in [("o1", 25.0), ("o2", 5_000.0), ("o3", 12.5)] {
        publisher
            .publish(&OrderPaid {
                order_id: order_id.into(),
                amount,
            })
            .await?;
    }
    publisher
        .publish_raw(
            "audit.login",
            serde_json::json!({"user": "u1", "ip": "203.0.113.9"}),
        )
        .await?;
    println!("published 5 events to {STREAM}");

    let consumer = Consumer::builder(server.url())
        .stream(STREAM)
        .group("example-service")
        .start_from(events::StartFrom::Beginning)
        .max_attempts(3)
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(1),
        ))
        .handle(|user: UserCreated, _: Context| async move {
            println!("welcome email to {} ({})", user.email, user.user_id);
            Ok(())
        })
        .handle(|order: OrderPaid, context: Context| async move {
            if order.amount > 1_000.0 {
                println!(
                    "order {} attempt {}: the payment provider refuses it",
                    order.order_id,
                    context.attempt()
                );
                return Err(HandlerError::from(format!(
                    "amount {} is over the provider's limit",
                    order.amount
                )));
            }
            println!("order {} paid: {:.2}", order.order_id, order.amount);
            Ok(())
        })
        .handle_pattern("audit.*", |context: Context| async move {
            println!(
                "audit {}: {}",
                context.event_type(),
                context.envelope().body
            );
            Ok(())
        })
        .on_dead_letter(|letter| {
            println!(
                "dead letter: {} entry {} after {} attempts: {}",
                letter.stream, letter.entry_id, letter.attempts, letter.reason
            );
        })
        .build()
        .await?;

    // Stop on Ctrl-C, or once all five events are settled.
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn({
        let (shutdown, consumer) = (shutdown.clone(), consumer.clone());
        async move {
            loop {
                let status = consumer.status();
                if status.processed + status.dead_lettered == 5 {
                    break;
                }
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            shutdown.cancel();
        }
    });
    consumer.run(shutdown).await?;
    watcher.await?;

    let status = consumer.status();
    println!(
        "stopped: {} handled, {} retried, {} dead-lettered",
        status.processed, status.retried, status.dead_lettered
    );
    let mut connection = redis::Client::open(server.url())?
        .get_multiplexed_async_connection()
        .await?;
    let dead_letter_stream = events::dead_letter_stream(STREAM);
    for entry in read_range(&mut connection, &dead_letter_stream, "-", "+", 10).await? {
        let reason = entry
            .fields
            .iter()
            .find(|(name, _)| name == b"dlq.reason")
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default();
        println!("{dead_letter_stream} holds {}: {reason}", entry.id);
    }
    Ok(())
}
