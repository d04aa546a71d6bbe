//! `/health`, a JSON verdict with thresholds for load balancers and uptime checks, and
//! `/metrics`, the library's gauges of every stream shown plus the ingestion's counters, for
//! Prometheus.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use clap::Args;
use events::{dead_letter_stream, record_stream_stats, server_stats, stream_stats};
use serde_json::{Value, json};

use super::{Failed, Shared};

/// When `/health` answers 503.
#[derive(Debug, Clone, Args)]
pub(crate) struct Thresholds {
    /// Health fails when a group lags more entries than this behind its stream.
    #[arg(long, default_value_t = 10_000)]
    max_lag: u64,
    /// Health fails when a stream has more dead letters than this.
    #[arg(long, default_value_t = 100)]
    max_dead_letters: u64,
}

/// One check's result.
fn check(name: &str, ok: bool, details: Value) -> Value {
    let mut check = json!({ "check": name, "ok": ok });
    if let (Some(check), Value::Object(details)) = (check.as_object_mut(), details) {
        check.extend(details);
    }
    check
}

/// `GET /health`: 200 when Redis answers, no group lags past `--max-lag`, no stream has more
/// dead letters than `--max-dead-letters`, the eviction policy cannot evict streams or marks and
/// every ingested event was written; 503 otherwise. The body lists every check.
pub(crate) async fn health(State(admin): State<Arc<Shared>>) -> Response {
    let checks = match checks(&admin).await {
        Ok(checks) => checks,
        Err(Failed(_, error)) => vec![check("redis", false, json!({ "error": error }))],
    };
    let ok = checks.iter().all(|check| check["ok"] == true);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let verdict = if ok { "ok" } else { "failing" };
    (status, Json(json!({ "status": verdict, "checks": checks }))).into_response()
}

async fn checks(admin: &Shared) -> Result<Vec<Value>, Failed> {
    let mut connection = admin.connection();
    let server = server_stats(&mut connection).await?;
    let mut checks = vec![
        check(
            "redis",
            true,
            json!({ "used_memory": server.used_memory, "max_memory": server.max_memory }),
        ),
        check(
            "eviction_policy",
            server.warning.is_none(),
            json!({ "policy": server.eviction_policy, "warning": server.warning }),
        ),
    ];
    let thresholds = &admin.thresholds;
    for stream in admin.list_streams("").await? {
        let stats = stream_stats(&mut connection, &stream, &dead_letter_stream(&stream)).await?;
        for group in &stats.groups {
            let lag = group.lag.unwrap_or(0);
            checks.push(check(
                "lag",
                lag <= thresholds.max_lag,
                json!({ "stream": stream, "group": group.name, "lag": group.lag, "max": thresholds.max_lag }),
            ));
        }
        checks.push(check(
            "dead_letters",
            stats.dead_letters <= thresholds.max_dead_letters,
            json!({ "stream": stream, "dead_letters": stats.dead_letters, "max": thresholds.max_dead_letters }),
        ));
    }
    if let Some(ingestion) = admin.ingest.memory_stats() {
        checks.push(check(
            "ingestion",
            ingestion.failed_messages == 0,
            json!({ "unwritten": ingestion.failed_messages, "queued": ingestion.queued_messages }),
        ));
    }
    Ok(checks)
}

/// `GET /metrics`: the gauges of every stream shown (read now) and the counters of everything
/// this process did, in Prometheus's text format.
pub(crate) async fn metrics(State(admin): State<Arc<Shared>>) -> Result<Response, Failed> {
    let mut connection = admin.connection();
    for stream in admin.list_streams("").await? {
        record_stream_stats(
            &stream_stats(&mut connection, &stream, &dead_letter_stream(&stream)).await?,
        );
    }
    let text = admin.prometheus.render();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
