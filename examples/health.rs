//! A service with a health endpoint: `GET /health` returns Redis's answer to PING, the batched
//! publisher's memory stats, the consumer's status and the stream's stats as JSON, with 503 when
//! the group lags or dead letters pile up past their thresholds; `GET /metrics` serves the
//! library's metrics as Prometheus text.
//!
//! Run with `cargo run --example health`, then `curl localhost:3000/health`. `HEALTH_ADDR`,
//! `HEALTH_MAX_LAG` and `HEALTH_MAX_DEAD_LETTERS` change the address and thresholds; Ctrl-C stops it.

use events::testing as redis_server;

mod health_app;

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use events::{
    BatchConfig, BatchedPublisher, Consumer, Context, Event, Publisher, PublisherConfig, Router,
};
use health_app::{Health, Thresholds};
use serde::{Deserialize, Serialize};

/// A heartbeat of some sensor.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "sensor.beat")]
struct SensorBeat {
    n: u64,
}

const STREAM: &str = "example:health";

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt().with_target(false).init();
    // The recorder first: publishers and consumers register their metrics when they are built.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let server = redis_server::RedisServer::start_or_exit();
    let publisher = Publisher::connect(
        server.url(),
        PublisherConfig::new("sensors").router(Router::single(STREAM)),
    )
    .await?;
    let publisher = Arc::new(BatchedPublisher::new(publisher, BatchConfig::new()));
    let consumer = Consumer::builder(server.url())
        .stream(STREAM)
        .group("monitor")
        .handle(|_: SensorBeat, _: Context| async { Ok(()) })
        .build()
        .await?;
    let health = Arc::new(Health {
        redis: redis::Client::open(server.url())?
            .get_multiplexed_async_connection()
            .await?,
        stream: STREAM.into(),
        group: "monitor".into(),
        publisher: Arc::clone(&publisher),
        consumer: consumer.clone(),
        prometheus,
        thresholds: Thresholds {
            max_lag: setting("HEALTH_MAX_LAG", 1_000),
            max_dead_letters: setting("HEALTH_MAX_DEAD_LETTERS", 100),
        },
    });

    let address: String = setting("HEALTH_ADDR", "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("serving http://{address}/health and http://{address}/metrics; Ctrl-C stops");
    let beats = tokio::spawn({
        let publisher = Arc::clone(&publisher);
        async move {
            for n in 0.. {
                if publisher.publish(&SensorBeat { n }).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let consuming = tokio::spawn({
        let consumer = consumer.clone();
        async move {
            consumer
                .run_until(async { tokio::signal::ctrl_c().await.unwrap_or(()) })
                .await
        }
    });
    axum::serve(listener, health_app::router(health))
        .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap_or(()) })
        .await?;
    beats.abort();
    publisher.close().await?;
    consuming.await??;
    Ok(())
}
