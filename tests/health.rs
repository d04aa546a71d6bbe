//! The health example's endpoints, served on a free port and asked over HTTP.

#[path = "../examples/health_app.rs"]
mod health_app;

use std::sync::Arc;
use std::time::Duration;

use crate::support::{RedisServer, publisher_to, unique, wait_until};
use events::{BatchConfig, BatchedPublisher, Consumer, Context, Event, HandlerError, StartFrom};
use health_app::{Health, Thresholds};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "sensor.beat")]
struct SensorBeat {
    n: u64,
}

/// `GET path` over a fresh connection: the status code and the body.
async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Serves the endpoints over `health` on a free port.
async fn serve(health: Health) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, health_app::router(Arc::new(health))).await });
    address
}

#[tokio::test]
async fn health_turns_unhealthy_past_the_dead_letter_threshold_and_metrics_are_served() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let server = RedisServer::start();
    let stream = unique("health");
    let publisher = publisher_to(server.url(), &stream).await;
    let publisher = Arc::new(BatchedPublisher::new(publisher, BatchConfig::new()));
    let consumer = Consumer::builder(server.url())
        .stream(&stream)
        .group("monitor")
        .start_from(StartFrom::Beginning)
        .block(Duration::from_millis(100))
        .handle(|beat: SensorBeat, _: Context| async move {
            if beat.n == 1 {
                Err(HandlerError::permanent("beat 1 is corrupt"))
            } else {
                Ok(())
            }
        })
        .build()
        .await
        .unwrap();
    for n in 0..3 {
        publisher.publish(&SensorBeat { n }).await.unwrap();
    }
    publisher.flush().await.unwrap();
    let running = consumer.clone();
    let run = tokio::spawn(async move { running.run_until(std::future::pending()).await });
    wait_until("all 3 settled", || {
        let status = consumer.status();
        status.processed + status.dead_lettered == 3
    })
    .await;
    let redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let health = |max_dead_letters| Health {
        redis: redis.clone(),
        stream: stream.clone(),
        group: "monitor".into(),
        publisher: Arc::clone(&publisher),
        consumer: consumer.clone(),
        prometheus: prometheus.clone(),
        thresholds: Thresholds {
            max_lag: 1_000,
            max_dead_letters,
        },
    };
    let strict = serve(health(0)).await;
    let lenient = serve(health(10)).await;

    let (status, body) = get(strict, "/health").await;
    assert_eq!(status, 503, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["status"], "unhealthy");
    assert_eq!(report["problems"][0], "1 dead letters (limit 0)");
    assert_eq!(report["redis"]["Ok"], "PONG");
    assert_eq!(report["consumer"]["processed"], 2);
    assert_eq!(report["consumer"]["dead_lettered"], 1);
    assert_eq!(report["publisher"]["published_total"], 3);
    assert_eq!(report["stream"]["Ok"]["length"], 3);
    assert_eq!(report["server"]["Ok"]["eviction_policy"], "noeviction");

    let (status, body) = get(lenient, "/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "healthy"
    );

    let (status, text) = get(lenient, "/metrics").await;
    assert_eq!(status, 200);
    let handled = format!(
        "events_handled_total{{stream=\"{stream}\",group=\"monitor\",event_type=\"sensor.beat\"}} 2"
    );
    assert!(text.contains(&handled), "{text}");
    assert!(
        text.contains(&format!("events_dead_letters{{stream=\"{stream}\"}} 1")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "events_published_total{{stream=\"{stream}\",event_type=\"sensor.beat\"}} 3"
        )),
        "{text}"
    );
    run.abort();
}
