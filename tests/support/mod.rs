//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub(crate) mod example;
pub(crate) mod faults;
/// The library's test kit, under the name the helpers use.
pub(crate) use events::testing as redis_server;
pub(crate) mod sentinel;
pub(crate) mod tls;

use std::sync::atomic::{AtomicU64, Ordering};

#[allow(unused_imports)]
pub(crate) use events::testing::RedisCluster;
pub(crate) use events::testing::RedisServer;

/// A key prefix no other test in any process uses, so tests can share one server.
pub(crate) fn unique(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "{name}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A plain multiplexed connection to `server` (its plain listener), for reading back what the
/// library wrote. Its replies may take long: redis-rs's parser, unoptimised in tests, took more
/// than the default half second over a page of 1,000 entries with tests six at a time.
pub(crate) async fn connection(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(10)));
    redis::Client::open(server.plain_url())
        .expect("valid url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to the test server")
}

/// The lines of `CLIENT LIST` on `server`: its clients, the one asking among them.
pub(crate) async fn clients(server: &RedisServer) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut connection(server).await)
        .await
        .unwrap();
    list.lines().map(str::to_owned).collect()
}

/// The entries of `stream`'s dead-letter stream on `server`, oldest first.
pub(crate) async fn dead_letter_entries(
    server: &RedisServer,
    stream: &str,
) -> Vec<events::StreamEntry> {
    events::read_range(
        &mut connection(server).await,
        &events::dead_letter_stream(stream),
        "-",
        "+",
        10_000,
    )
    .await
    .expect("read the dead letters")
}

/// Waits until `group` has nothing pending on `stream`, failing the test after `within`.
pub(crate) async fn nothing_pending(
    server: &RedisServer,
    stream: &str,
    group: &str,
    within: std::time::Duration,
) {
    let deadline = std::time::Instant::now() + within;
    while pending(server, stream, group).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "entries of {stream} still pending"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How many times the server has run `command` (lowercase, as `INFO commandstats` names it;
/// commands scripts run count too).
pub(crate) async fn calls(server: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection(server).await)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Polls `done` every 20 ms until it holds, failing the test with `what` after 30 seconds.
pub(crate) async fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_until_within(what, std::time::Duration::from_secs(30), done).await;
}

/// Polls `done` every 20 ms until it holds, failing the test with `what` after `within`.
pub(crate) async fn wait_until_within(
    what: &str,
    within: std::time::Duration,
    mut done: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A publisher writing every event to `stream` of the server (or cluster) at `url`.
pub(crate) async fn publisher_to(url: &str, stream: &str) -> events::Publisher {
    events::Publisher::connect(
        url,
        events::PublisherConfig::new("test").router(events::Router::single(stream)),
    )
    .await
    .expect("connect a publisher to the test server")
}

/// A publisher writing `job.*` events to the `partitions` partitions of `stream`, by their keys.
pub(crate) async fn publisher_to_partitions(
    url: &str,
    stream: &str,
    partitions: u32,
) -> events::Publisher {
    let router = events::Router::builder()
        .route(events::Route::to("job.*", stream).partitions(partitions))
        .build()
        .expect("a valid route");
    events::Publisher::connect(url, events::PublisherConfig::new("test").router(router))
        .await
        .expect("connect a publisher to the test server")
}

/// Creates `group` on `stream`, reading from its start.
pub(crate) async fn create_group(server: &RedisServer, stream: &str, group: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .query_async(&mut connection(server).await)
        .await
        .expect("XGROUP CREATE");
}

/// Reads up to `count` new entries of `stream` as `consumer` of `group` and leaves them pending
/// on it, as a consumer that crashed after reading them does.
pub(crate) async fn read_as(
    server: &RedisServer,
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut connection(server).await)
        .await
        .expect("XREADGROUP");
}

/// Entries of `stream` still pending in `group`.
pub(crate) async fn pending(server: &RedisServer, stream: &str, group: &str) -> usize {
    let summary: (usize, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(&mut connection(server).await)
        .await
        .expect("XPENDING");
    summary.0
}

/// Collects what a tracing subscriber writes, for tests that check logs and spans.
#[derive(Clone, Default)]
pub(crate) struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// A subscriber writing every event, without colours, to this; `span_events` says which
    /// span events it writes too.
    pub(crate) fn subscriber(
        &self,
        span_events: tracing_subscriber::fmt::format::FmtSpan,
    ) -> impl tracing::Subscriber + Send + Sync + use<> {
        let captured = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || captured.clone())
            .with_ansi(false)
            .with_span_events(span_events)
            .finish()
    }

    /// What was written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs every consumer in a task of its own until the task is aborted.
pub(crate) fn run_all(
    consumers: &[events::Consumer],
) -> Vec<tokio::task::JoinHandle<events::Result<()>>> {
    consumers
        .iter()
        .map(|consumer| {
            let consumer = consumer.clone();
            tokio::spawn(async move { consumer.run_until(std::future::pending()).await })
        })
        .collect()
}

/// Consumers running until [`Running::close`], which shuts them down gracefully: what they
/// handled is acknowledged by the time it returns.
#[derive(Debug)]
pub(crate) struct Running {
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<events::Result<()>>>,
}

impl Running {
    /// Builds one consumer and runs it in a task of its own.
    pub(crate) async fn build(builder: events::ConsumerBuilder) -> (events::Consumer, Self) {
        let consumer = builder.build().await.expect("the consumer builds");
        let running = Self::start(std::slice::from_ref(&consumer));
        (consumer, running)
    }

    /// Runs every consumer in a task of its own.
    pub(crate) fn start(consumers: &[events::Consumer]) -> Self {
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let tasks = consumers
            .iter()
            .map(|consumer| {
                let (consumer, mut stop) = (consumer.clone(), shutdown.subscribe());
                tokio::spawn(async move {
                    consumer
                        .run_until(async move {
                            let _ = stop.wait_for(|stop| *stop).await;
                        })
                        .await
                })
            })
            .collect();
        Self { shutdown, tasks }
    }

    /// Shuts them all down at once and waits until each has returned, failing on an error.
    pub(crate) async fn close(self) {
        for stopped in self.stop().await {
            stopped.expect("the consumer returns without an error");
        }
    }

    /// Drops them all mid-work, as a crash of their process would: their tasks are aborted.
    pub(crate) async fn crash(self) {
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }

    /// Shuts them all down at once; what each returned.
    pub(crate) async fn stop(self) -> Vec<events::Result<()>> {
        self.shutdown.send_replace(true);
        let mut stopped = Vec::new();
        for task in self.tasks {
            stopped.push(task.await.expect("the consumer's task"));
        }
        stopped
    }
}

/// A consumer of `stream` in `group` tuned for tests: from the beginning, short blocks, backoffs
/// and claim times.
pub(crate) fn quick_consumer(
    server: &RedisServer,
    stream: &str,
    group: &str,
) -> events::ConsumerBuilder {
    quick_consumer_at(server.url(), stream, group)
}

/// [`quick_consumer`] of the server at `url`.
pub(crate) fn quick_consumer_at(url: &str, stream: &str, group: &str) -> events::ConsumerBuilder {
    quick(events::Consumer::builder(url).stream(stream).group(group))
}

/// [`quick`] consumer of `stream` partitioned `partitions` ways on `server`, in `group`.
pub(crate) fn quick_partitioned_consumer(
    server: &RedisServer,
    stream: &str,
    partitions: u32,
    group: &str,
) -> events::ConsumerBuilder {
    quick(
        events::Consumer::builder(server.url())
            .partitioned_stream(stream, partitions)
            .group(group),
    )
}

/// `builder` tuned for tests: from the beginning, short blocks, backoffs and claim times.
pub(crate) fn quick(builder: events::ConsumerBuilder) -> events::ConsumerBuilder {
    use std::time::Duration;
    builder
        .start_from(events::StartFrom::Beginning)
        .block(Duration::from_millis(100))
        .backoff(events::Backoff::exponential(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ))
        .handler_timeout(Duration::from_millis(500))
        .claim_idle(Duration::from_millis(1000))
        .claim_interval(Duration::from_millis(200))
        .shutdown_timeout(Duration::from_secs(5))
}

/// Publishes `event`, trying again while the error is retryable (Redis restarting or moving a
/// slot), at most for 30 seconds. It retries as a publisher should: the same event, with the same
/// id, so that consumers tell a repeat written by a retry from a new event.
pub(crate) async fn publish_retrying<E: events::Event>(publisher: &events::Publisher, event: &E) {
    publish_retrying_with(publisher, event, events::PublishOptions::new()).await;
}

/// [`publish_retrying`] with options such as headers.
pub(crate) async fn publish_retrying_with<E: events::Event>(
    publisher: &events::Publisher,
    event: &E,
    options: events::PublishOptions,
) {
    let envelope = publisher
        .envelope(event, options)
        .expect("a valid test event");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match publisher.publish_envelopes(vec![envelope.clone()]).await {
            Ok(_) => return,
            Err(error) if error.is_retryable() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(error) => panic!("publishing failed: {error}"),
        }
    }
}
