//! `events serve`: a web admin for operators and HTTP ingestion of events.
//!
//! Server-rendered pages, no JavaScript: streams with their rates, groups and consumers, entries
//! and dead letters decoded, replay and purge behind a confirmation; `/metrics` for Prometheus,
//! `/health` with thresholds; `POST /events/{type}` publishing JSON bodies, checked against
//! their JSON Schema, through the batched publisher. Read-only unless started with a token.

mod auth;
mod dead_letters;
mod health;
mod html;
mod ingest;
mod paging;
mod rates;
mod streams;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use events::{Connection, stream_names};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::Failure;
use auth::Auth;
use health::Thresholds;
use ingest::Ingest;
use rates::Rates;

/// `events serve`'s options.
#[derive(Debug, Args)]
pub(crate) struct Serve {
    /// The address to listen on; only this machine can reach the default.
    #[arg(long, default_value = "127.0.0.1:7070")]
    bind: SocketAddr,
    /// The streams shown, a glob pattern over their names.
    #[arg(long, default_value = "*")]
    streams: String,
    /// The token that allows changes (replay, purge, consumer removal, ingestion); without one
    /// the admin is read-only. Prefer the environment variable: arguments show in `ps`.
    #[arg(long, env = "EVENTS_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    ingest: ingest::Options,
    #[command(flatten)]
    thresholds: Thresholds,
}

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct Shared {
    connection: Connection,
    streams: globset::GlobMatcher,
    auth: Option<Auth>,
    ingest: Ingest,
    rates: Rates,
    thresholds: Thresholds,
    prometheus: PrometheusHandle,
}

impl Shared {
    /// A connection for one request's commands (a handle on the shared one).
    fn connection(&self) -> Connection {
        self.connection.clone()
    }

    /// The streams shown whose names match `pattern` too (a glob; all when empty), sorted, on
    /// every master of a cluster; at most [`MOST_STREAMS`].
    async fn list_streams(&self, pattern: &str) -> Result<Vec<String>, Failed> {
        let wanted = if pattern.is_empty() {
            None
        } else {
            let glob = globset::Glob::new(pattern).map_err(|error| {
                Failed::bad(format!("`{pattern}` is not a glob pattern: {error}"))
            })?;
            Some(glob.compile_matcher())
        };
        let mut streams = stream_names(&self.connection, "*").await?;
        streams.retain(|name| {
            !name.ends_with(DEAD_LETTERS)
                && self.streams.is_match(name)
                && wanted.as_ref().is_none_or(|wanted| wanted.is_match(name))
        });
        streams.truncate(MOST_STREAMS);
        Ok(streams)
    }

    /// `stream` if it is shown, else 404.
    fn shown<'a>(&self, stream: &'a str) -> Result<&'a str, Failed> {
        if self.streams.is_match(stream) && !stream.is_empty() {
            Ok(stream)
        } else {
            Err(Failed::missing(format!(
                "stream `{stream}` is not shown here"
            )))
        }
    }
}

/// The most streams a page lists.
const MOST_STREAMS: usize = 200;
/// The suffix of dead-letter streams, which show beside their stream rather than on their own.
const DEAD_LETTERS: &str = ":dlq";

/// The shortest token accepted: a short one could be guessed.
const SHORTEST_TOKEN: usize = 16;

/// Serves the admin until the process is stopped (Ctrl-C), then writes what was ingested.
pub(crate) async fn run(url: &str, connection: Connection, serve: Serve) -> Result<(), Failure> {
    let streams = globset::Glob::new(&serve.streams)
        .map_err(|error| {
            format!(
                "--streams `{}` is not a glob pattern: {error}",
                serve.streams
            )
        })?
        .compile_matcher();
    let auth = match serve.token.as_deref() {
        Some(token) if token.chars().count() < SHORTEST_TOKEN => {
            return Err(
                format!("the token must be at least {SHORTEST_TOKEN} characters long").into(),
            );
        }
        token => token.map(Auth::new),
    };
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|error| format!("could not set up /metrics: {error}"))?;
    let ingest = Ingest::new(url, serve.ingest).await?;
    let rates = Rates::new();
    let admin = Arc::new(Shared {
        connection,
        streams,
        auth,
        ingest,
        rates,
        thresholds: serve.thresholds,
        prometheus,
    });
    let _sampling = rates::sample(Arc::clone(&admin));
    let _rewriting = admin.ingest.keep_writing();
    let listener = tokio::net::TcpListener::bind(serve.bind)
        .await
        .map_err(|error| format!("could not listen on {}: {error}", serve.bind))?;
    let address = listener.local_addr()?;
    println!("events admin listening on http://{address}");
    axum::serve(listener, router(Arc::clone(&admin)))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    admin.ingest.close().await
}

/// Every page and endpoint.
fn router(admin: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(streams::dashboard))
        .route("/stream", get(streams::stream))
        .route("/entry", get(streams::entry))
        .route("/consumers/remove", post(streams::remove_consumers))
        .route("/dead-letters", get(dead_letters::list))
        .route("/dead-letter", get(dead_letters::show))
        .route("/dead-letters/confirm", get(dead_letters::confirm))
        .route("/dead-letters/apply", post(dead_letters::apply))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .merge(ingest::routes(&admin.ingest))
        .layer(map_response(guarded))
        .with_state(admin)
}

/// `response` with headers that keep a browser safe whatever it shows: no script may run on
/// these pages (styles are inline), no other site may frame them, no type is sniffed.
async fn guarded(mut response: Response) -> Response {
    let policy = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
                  form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(policy),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A page's request that failed: its status and what went wrong, shown as text.
#[derive(Debug)]
pub(crate) struct Failed(StatusCode, String);

impl Failed {
    /// 404: `what` is not there.
    fn missing(what: String) -> Self {
        Self(StatusCode::NOT_FOUND, what)
    }

    /// 400: the request itself is wrong.
    fn bad(what: String) -> Self {
        Self(StatusCode::BAD_REQUEST, what)
    }

    /// 403: the change is not allowed, for this reason.
    fn forbidden(why: &str) -> Self {
        Self(StatusCode::FORBIDDEN, why.to_owned())
    }

    /// 409: what the request was based on has changed.
    fn conflict(what: String) -> Self {
        Self(StatusCode::CONFLICT, what)
    }
}

impl From<events::Error> for Failed {
    fn from(error: events::Error) -> Self {
        Self(StatusCode::BAD_GATEWAY, error.to_string())
    }
}

impl From<redis::RedisError> for Failed {
    fn from(error: redis::RedisError) -> Self {
        Self(StatusCode::BAD_GATEWAY, format!("Redis: {error}"))
    }
}

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        (self.0, crate::printable::printable(&self.1).into_owned()).into_response()
    }
}
