//! HTTP ingestion: `POST /events/{type}` with a JSON body (one event) or an array of bodies (a
//! batch), each checked against the type's JSON Schema when one is given, published through a
//! batched publisher. 202 with the event ids; 400 naming every invalid field; 404 for a type no
//! route takes; 413 past the size limits; 503 with `Retry-After` while the publisher is full.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use clap::Args;
use events::{
    BatchConfig, BatchedPublisher, Endpoint, MemoryStats, Overflow, Publisher, PublisherConfig,
    Route, check_event_type,
};
use serde_json::{Value, json};

use super::Shared;
use super::auth::allow_change;
use crate::Failure;

/// How ingestion is set up.
#[derive(Debug, Clone, Args)]
pub(crate) struct Options {
    /// Where ingested events go: `PATTERN=STREAM`, a glob over event types and a stream; the
    /// first that matches wins. Without one, ingestion is off.
    #[arg(long = "route", value_name = "PATTERN=STREAM")]
    routes: Vec<String>,
    /// The JSON Schema an event type's bodies must pass: `TYPE=FILE`.
    #[arg(long = "schema", value_name = "TYPE=FILE")]
    schemas: Vec<String>,
    /// An AsyncAPI document of a service (as `events::AsyncApi` writes it): each of its
    /// messages' payload schemas, and a route for each event type the service publishes, after
    /// those of `--route`.
    #[arg(long, value_name = "FILE")]
    asyncapi: Option<std::path::PathBuf>,
    /// The largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// The most events in one request.
    #[arg(long, default_value_t = 1_000)]
    max_batch: usize,
    /// The most ingested events held before they are written; past it requests get 503.
    #[arg(long, default_value_t = 10_000)]
    max_queued: usize,
    /// The origin written in ingested events.
    #[arg(long, default_value = "events-admin")]
    origin: String,
}

/// The publisher and schemas of ingestion, when it is on.
#[derive(Debug)]
pub(crate) struct Ingest {
    publisher: Option<Arc<BatchedPublisher>>,
    router: events::Router,
    schemas: HashMap<String, jsonschema::Validator>,
    max_body: usize,
    max_batch: usize,
    max_queued: usize,
}

/// `pair` split at its first `=`, or an error naming the option and what it should look like.
fn split<'a>(pair: &'a str, option: &str, shape: &str) -> Result<(&'a str, &'a str), Failure> {
    pair.split_once('=')
        .filter(|(left, right)| !left.is_empty() && !right.is_empty())
        .ok_or_else(|| format!("{option} `{pair}` should be {shape}").into())
}

/// `file` read as JSON, or an error naming `option` and the file.
fn read_json(option: &str, file: &std::path::Path) -> Result<Value, Failure> {
    let shown = file.display();
    let text = std::fs::read_to_string(file)
        .map_err(|error| format!("{option}: cannot read {shown}: {error}"))?;
    serde_json::from_str(&text)
        .map_err(|error| format!("{option}: {shown} is not JSON: {error}").into())
}

/// What an AsyncAPI document says: each message's event type and payload schema, and the
/// stream of each event type the service sends.
type Described = (Vec<(String, Value)>, Vec<(String, String)>);

fn describe(document: &Value) -> Described {
    let messages = &document["components"]["messages"];
    let schemas = messages
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, message)| {
            Some((
                message["name"].as_str()?.to_owned(),
                message["payload"].clone(),
            ))
        })
        .collect();
    let operations = document["operations"].as_object().into_iter().flatten();
    let routes = operations
        .filter(|(_, operation)| operation["action"] == "send")
        .flat_map(|(_, operation)| {
            let channel = operation["channel"]["$ref"]
                .as_str()
                .and_then(|path| document.pointer(path.strip_prefix('#')?));
            let stream = channel.and_then(|channel| channel["address"].as_str());
            let sent = operation["messages"].as_array().into_iter().flatten();
            sent.filter_map(move |message| {
                let id = message["$ref"].as_str()?.rsplit('/').next()?;
                Some((
                    messages[id]["name"].as_str()?.to_owned(),
                    stream?.to_owned(),
                ))
            })
        })
        .collect();
    (schemas, routes)
}

impl Ingest {
    /// Ingestion through a publisher to `url` when `options` has routes (its own or its
    /// AsyncAPI document's); schemas read now.
    pub(crate) async fn new(url: &str, options: Options) -> Result<Self, Failure> {
        let (mut described, mut routes) = (Vec::new(), Vec::new());
        for pair in &options.schemas {
            let (event_type, file) = split(pair, "--schema", "TYPE=FILE")?;
            described.push((event_type.to_owned(), read_json("--schema", file.as_ref())?));
        }
        for pair in &options.routes {
            let (pattern, stream) = split(pair, "--route", "PATTERN=STREAM")?;
            routes.push((pattern.to_owned(), stream.to_owned()));
        }
        if let Some(file) = &options.asyncapi {
            let (schemas, sent) = describe(&read_json("--asyncapi", file)?);
            described.extend(schemas);
            routes.extend(sent);
        }
        let mut schemas = HashMap::new();
        for (event_type, schema) in described {
            check_event_type(&event_type)
                .map_err(|why| format!("a schema's event type `{event_type}` {why}"))?;
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .map_err(|error| {
                    format!("the schema of `{event_type}` is not a valid JSON Schema: {error}")
                })?;
            // A --schema comes before the document's schema of the same type.
            schemas.entry(event_type).or_insert(validator);
        }
        let router = routes
            .iter()
            .fold(events::Router::builder(), |router, (pattern, stream)| {
                router.route(Route::to(pattern, stream))
            })
            .build()?;
        let publisher = if routes.is_empty() {
            None
        } else {
            let config = PublisherConfig::new(options.origin).router(router.clone());
            let publisher = Publisher::connect(Endpoint::url(url), config).await?;
            let batching = BatchConfig::new()
                .max_queued_messages(options.max_queued)
                .overflow(Overflow::Reject);
            Some(Arc::new(BatchedPublisher::new(publisher, batching)))
        };
        Ok(Self {
            publisher,
            router,
            schemas,
            max_body: options.max_body,
            max_batch: options.max_batch,
            max_queued: options.max_queued,
        })
    }

    /// What the publisher holds, when ingestion is on.
    pub(crate) fn memory_stats(&self) -> Option<MemoryStats> {
        self.publisher
            .as_ref()
            .map(|publisher| publisher.memory_stats())
    }

    /// Writes the failed list again every few seconds, so an event accepted while Redis refused
    /// writes is written once it accepts them, for as long as the process runs.
    pub(crate) fn keep_writing(&self) -> Option<tokio::task::JoinHandle<()>> {
        let publisher = Arc::clone(self.publisher.as_ref()?);
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(2));
            loop {
                ticks.tick().await;
                if publisher.memory_stats().failed_messages > 0 {
                    let _ = publisher.retry_failed().await;
                }
            }
        }))
    }

    /// Writes every event accepted, at shutdown.
    pub(crate) async fn close(&self) -> Result<(), Failure> {
        if let Some(publisher) = &self.publisher {
            publisher.close().await?;
        }
        Ok(())
    }
}

/// The ingestion route, with its body limit.
pub(crate) fn routes(ingest: &Ingest) -> Router<Arc<Shared>> {
    Router::new()
        .route("/events/{event_type}", post(ingest_events))
        .layer(DefaultBodyLimit::max(ingest.max_body))
}

/// An answer: its status and a JSON body.
fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    answer(status, json!({ "error": message }))
}

/// `POST /events/{type}`.
async fn ingest_events(
    State(admin): State<Arc<Shared>>,
    Path(event_type): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(refusal) = allow_change(&admin, &headers, None) {
        return error(refusal.0, refusal.1);
    }
    let ingest = &admin.ingest;
    let Some(publisher) = &ingest.publisher else {
        return error(
            StatusCode::NOT_FOUND,
            "ingestion is off: start `events serve` with --route PATTERN=STREAM".into(),
        );
    };
    if let Err(why) = check_event_type(&event_type) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("event type `{event_type}` {why}"),
        );
    }
    if let Err(no_route) = ingest.router.resolve(&event_type) {
        return error(StatusCode::NOT_FOUND, no_route.to_string());
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                rejection.status(),
                format!("the body is larger than {} bytes", ingest.max_body),
            );
        }
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let (bodies, batch) = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(bodies)) => (bodies, true),
        Ok(body) => (vec![body], false),
        Err(error) => {
            return self::error(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {error}"),
            );
        }
    };
    if bodies.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the batch is empty".into());
    }
    if bodies.len() > ingest.max_batch {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} events in one request, more than {}",
                bodies.len(),
                ingest.max_batch
            ),
        );
    }
    let invalid = invalid_fields(ingest.schemas.get(&event_type), &bodies, batch);
    if !invalid.is_empty() {
        let message = format!(
            "{} invalid field(s) in `{event_type}` events",
            invalid.len()
        );
        return answer(
            StatusCode::BAD_REQUEST,
            json!({ "error": message, "invalid": invalid }),
        );
    }
    publish(publisher, ingest.max_queued, &event_type, bodies).await
}

/// Every field of `bodies` that `schema` refuses (or every body that is not an object), as
/// `{"event": index, "field": JSON pointer, "error": why}`; the index only in a batch.
fn invalid_fields(
    schema: Option<&jsonschema::Validator>,
    bodies: &[Value],
    batch: bool,
) -> Vec<Value> {
    let mut invalid = Vec::new();
    for (index, body) in bodies.iter().enumerate() {
        let mut refuse = |field: String, why: String| {
            let mut entry = json!({ "field": field, "error": why });
            if batch {
                entry["event"] = json!(index);
            }
            invalid.push(entry);
        };
        if !body.is_object() {
            refuse(
                String::new(),
                "an event's body must be a JSON object".into(),
            );
            continue;
        }
        for refusal in schema
            .into_iter()
            .flat_map(|schema| schema.iter_errors(body))
        {
            refuse(refusal.instance_path().to_string(), refusal.to_string());
        }
    }
    invalid
}

/// Queues `bodies` as events of `event_type`: 202 with their ids, or 503 when the publisher has
/// no room for all of them (then none is queued, unless room ran out between the check and the
/// queueing: the ids queued are in the answer).
async fn publish(
    publisher: &BatchedPublisher,
    max_queued: usize,
    event_type: &str,
    bodies: Vec<Value>,
) -> Response {
    let busy = |ids: &[String], why: String| {
        let body = json!({ "error": why, "accepted": ids });
        (
            [(header::RETRY_AFTER, "1")],
            answer(StatusCode::SERVICE_UNAVAILABLE, body),
        )
            .into_response()
    };
    let held = publisher.memory_stats().held_messages;
    if held + bodies.len() > max_queued {
        return busy(
            &[],
            format!("{held} events are waiting to be written; try again shortly"),
        );
    }
    let mut ids = Vec::with_capacity(bodies.len());
    for body in bodies {
        match publisher.publish_raw(event_type, body).await {
            Ok(id) => ids.push(id),
            Err(full @ events::Error::Overloaded { .. }) => return busy(&ids, full.to_string()),
            Err(other) => {
                let body = json!({ "error": other.to_string(), "accepted": ids });
                return answer(StatusCode::BAD_REQUEST, body);
            }
        }
    }
    answer(StatusCode::ACCEPTED, json!({ "ids": ids }))
}
