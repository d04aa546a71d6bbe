//! Derives an event, publishes it, and reads it back.
//!
//! Run with `cargo run --example quickstart`. With `REDIS_URL` set it uses that Redis; otherwise it
//! starts a throwaway `redis-server` from `PATH` and stops it at the end.

use events::testing as redis_server;

use std::error::Error;

use events::{Event, PublishOptions, Publisher, PublisherConfig, Route, Router, read_range};
use serde::{Deserialize, Serialize};

/// A user signed up.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "user.created", version = 1)]
struct UserCreated {
    #[event(uuid)]
    user_id: String,
    #[event(length(min = 1, max = 100))]
    name: String,
    #[event(email)]
    email: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let server = redis_server::RedisServer::start_or_exit();
    println!("Redis at {}", server.url());

    // `user.*` events go to the stream `quickstart:users`; anything else is an error.
    let router = Router::builder()
        .route(Route::to("user.*", "quickstart:users"))
        .build()?;
    let publisher = Publisher::connect(
        server.url(),
        PublisherConfig::new("quickstart").router(router),
    )
    .await?;

    let event = UserCreated {
        user_id: "0b5a3c1e-8d4f-4a51-9d0e-6b7f1c2d3e4f".into(),
        name: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
    };
    let options = PublishOptions::new()
        .correlation_id("signup-7")
        .header("tenant", "acme");
    let published = publisher.publish_with(&event, options).await?;
    println!(
        "published {} {} to stream {} as entry {}",
        UserCreated::NAME,
        published.event_id,
        published.stream,
        published.entry_id
    );

    // An invalid event is refused before anything is written, with every failing field named.
    let invalid = UserCreated {
        user_id: "42".into(),
        name: String::new(),
        email: "ada-at-example.com".into(),
    };
    if let Err(error) = publisher.publish(&invalid).await {
        println!("refused: {error}");
    }

    // Read the entry back and decode it into the struct.
    let mut connection = redis::Client::open(server.url())?
        .get_multiplexed_async_connection()
        .await?;
    let entries = read_range(
        &mut connection,
        &published.stream,
        &published.entry_id,
        "+",
        1,
    )
    .await?;
    let envelope = entries[0].decode()?;
    let read: UserCreated = envelope.decode_body()?;
    println!(
        "read back {} v{} from {} (correlation {}, tenant {}): {read:?}",
        envelope.event_type,
        envelope.version,
        envelope.origin,
        envelope.correlation_id.as_deref().unwrap_or("-"),
        envelope.header("tenant").unwrap_or("-"),
    );
    Ok(())
}
