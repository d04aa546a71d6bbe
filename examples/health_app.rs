//! The HTTP side of the health example: `/health` as JSON with a status code a load balancer
//! understands, `/metrics` as Prometheus text. Shared by `examples/health.rs` and its test.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use events::{
    BatchedPublisher, Consumer, dead_letter_stream, record_stream_stats, server_stats, stream_stats,
};
use metrics_exporter_prometheus::PrometheusHandle;
use redis::aio::MultiplexedConnection;
use serde_json::json;

/// Past these, the service reports itself unhealthy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    /// Most entries the group may be behind.
    pub(crate) max_lag: u64,
    /// Most entries the dead-letter stream may hold.
    pub(crate) max_dead_letters: u64,
}

/// What the endpoints look at.
pub(crate) struct Health {
    pub(crate) redis: MultiplexedConnection,
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) publisher: Arc<BatchedPublisher>,
    pub(crate) consumer: Consumer,
    pub(crate) prometheus: PrometheusHandle,
    pub(crate) thresholds: Thresholds,
}

/// The routes: `GET /health` and `GET /metrics`.
pub(crate) fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/health", get(health_report))
        .route("/metrics", get(prometheus_text))
        .with_state(health)
}

async fn health_report(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let mut redis = health.redis.clone();
    let mut problems = Vec::new();
    let ping: Result<String, _> = redis::cmd("PING").query_async(&mut redis).await;
    let stream = stream_stats(
        &mut redis,
        &health.stream,
        &dead_letter_stream(&health.stream),
    )
    .await;
    let server = server_stats(&mut redis).await;
    if let Err(error) = &ping {
        problems.push(format!("redis: {error}"));
    }
    match &stream {
        Ok(stats) => {
            record_stream_stats(stats);
            let group = stats.groups.iter().find(|group| group.name == health.group);
            if let Some(lag) = group.and_then(|group| group.lag)
                && lag > health.thresholds.max_lag
            {
                problems.push(format!(
                    "group {} is {lag} entries behind (limit {})",
                    health.group, health.thresholds.max_lag
                ));
            }
            if stats.dead_letters > health.thresholds.max_dead_letters {
                problems.push(format!(
                    "{} dead letters (limit {})",
                    stats.dead_letters, health.thresholds.max_dead_letters
                ));
            }
        }
        Err(error) => problems.push(format!("stream: {error}")),
    }
    if let Ok(Some(warning)) = server.as_ref().map(|server| server.warning.clone()) {
        problems.push(warning);
    }
    let body = json!({
        "status": if problems.is_empty() { "healthy" } else { "unhealthy" },
        "problems": problems,
        "redis": ping.map_err(|error| error.to_string()),
        "publisher": health.publisher.memory_stats(),
        "consumer": health.consumer.status(),
        "stream": stream.map_err(|error| error.to_string()),
        "server": server.map_err(|error| error.to_string()),
    });
    let code = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn prometheus_text(State(health): State<Arc<Health>>) -> String {
    let mut redis = health.redis.clone();
    if let Ok(stats) = stream_stats(
        &mut redis,
        &health.stream,
        &dead_letter_stream(&health.stream),
    )
    .await
    {
        record_stream_stats(&stats);
    }
    health.prometheus.render()
}
