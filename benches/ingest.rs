//! HTTP ingestion under load: 10,000 events posted to `events serve` by 20 concurrent clients,
//! one event per request and in batches of 100, next to the same events published in-process
//! through a batched publisher by 20 tasks (what the HTTP layer adds), in this run against the
//! same throwaway `redis-server`. Each row: events per second until every event is in its
//! stream (median, least and most of the rounds), and the requests' p50, p99 and slowest.
//!
//! `cargo bench -p redis-typed-events-cli --bench ingest` (`EVENTS_BENCH_ROUNDS` sets the
//! rounds, 3 by default).

mod spread;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::testing::RedisServer;
use events::{BatchConfig, BatchedPublisher, Publisher, PublisherConfig, Route, Router};
use serde_json::json;
use spread::Spread;

const EVENTS: usize = 10_000;
const CLIENTS: usize = 20;
const TOKEN: &str = "bench-token-0123456789";

/// `events serve` on a free port, killed when dropped.
struct Admin(Child, String);

impl Admin {
    fn start(url: &str, stream: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_events"))
            .args(["--url", url, "serve", "--bind", "127.0.0.1:0"])
            .args([
                "--route",
                &format!("load.*={stream}"),
                "--max-queued",
                "100000",
            ])
            .env("EVENTS_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run events serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line.trim().rsplit(' ').next().unwrap().to_owned();
        Self(child, base)
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Redis = redis::aio::MultiplexedConnection;

/// Waits until `stream` holds `count` entries.
async fn written(redis: &mut Redis, stream: &str, count: usize) {
    loop {
        let length: usize = redis::cmd("XLEN")
            .arg(stream)
            .query_async(redis)
            .await
            .unwrap();
        if length >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Each client's share of the events in requests of `per_request`, posted one after another;
/// every request's duration.
async fn post_all(base: &str, per_request: usize) -> Vec<Duration> {
    let per_client = EVENTS / CLIENTS;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let url = format!("{base}/events/load.tested");
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut took = Vec::new();
                for first in (0..per_client).step_by(per_request) {
                    let bodies: Vec<_> = (first..first + per_request)
                        .map(|n| json!({ "client": client, "n": n, "note": "a load test event" }))
                        .collect();
                    let body = if per_request == 1 {
                        bodies[0].clone()
                    } else {
                        json!(bodies)
                    };
                    let start = Instant::now();
                    let answer = http
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(answer.status(), 202, "{}", answer.text().await.unwrap());
                    took.push(start.elapsed());
                }
                took
            })
        })
        .collect();
    durations_of(clients).await
}

/// Every duration the tasks `timed` measured.
async fn durations_of(timed: Vec<tokio::task::JoinHandle<Vec<Duration>>>) -> Vec<Duration> {
    let mut took = Vec::new();
    for task in timed {
        took.extend(task.await.unwrap());
    }
    took
}

/// The same events through a batched publisher to `stream`, from 20 tasks: the time until
/// all are written, and each publish call's.
async fn publish_all(url: &str, stream: &str, redis: &mut Redis) -> (Duration, Vec<Duration>) {
    let router = Router::builder()
        .route(Route::to("load.*", stream))
        .build()
        .unwrap();
    let publisher = Publisher::connect(url, PublisherConfig::new("bench").router(router))
        .await
        .unwrap();
    let publisher = Arc::new(BatchedPublisher::new(publisher, BatchConfig::new()));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let publisher = Arc::clone(&publisher);
            tokio::spawn(async move {
                let mut took = Vec::new();
                for n in 0..EVENTS / CLIENTS {
                    let body = json!({ "client": client, "n": n, "note": "a load test event" });
                    let start = Instant::now();
                    publisher.publish_raw("load.tested", body).await.unwrap();
                    took.push(start.elapsed());
                }
                took
            })
        })
        .collect();
    let took = durations_of(tasks).await;
    written(redis, stream, EVENTS).await;
    (start.elapsed(), took)
}

/// The events posted to an `events serve` routing them to `stream`, `per_request` at a time:
/// the time until all are written, and each request's.
async fn ingest_all(
    url: &str,
    stream: &str,
    per_request: usize,
    redis: &mut Redis,
) -> (Duration, Vec<Duration>) {
    let admin = Admin::start(url, stream);
    let start = Instant::now();
    let took = post_all(&admin.1, per_request).await;
    written(redis, stream, EVENTS).await;
    (start.elapsed(), took)
}

/// What one way measured over the rounds.
#[derive(Default)]
struct Measured {
    rates: Vec<f64>,
    took: Vec<Duration>,
}

impl Measured {
    fn row(&mut self, name: &str, baseline: f64) {
        let rates = Spread::of(&self.rates);
        self.took.sort();
        let at = |share: f64| {
            self.took[((self.took.len() - 1) as f64 * share) as usize].as_secs_f64() * 1e3
        };
        println!(
            "{name:<44} {} {:>6.2}x   {:>6.2} {:>7.2} {:>7.2} ms",
            rates.show(8, 0),
            rates.median / baseline,
            at(0.5),
            at(0.99),
            at(1.0),
        );
    }
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("EVENTS_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let server = RedisServer::start();
    let mut redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    println!(
        "{EVENTS} events from {CLIENTS} concurrent clients, {rounds} rounds, Redis at {}",
        server.url()
    );
    println!(
        "{:<44} {:>24} {:>7}   {:>24}",
        "events/s until written", "median (least..most)", "ratio", "request p50, p99, max"
    );
    let names = [
        "in-process batched publisher (baseline)",
        "HTTP, one event per request",
        "HTTP, batches of 100",
    ];
    let mut measured: Vec<Measured> = names.iter().map(|_| Measured::default()).collect();
    for round in 0..rounds {
        for (index, measure) in measured.iter_mut().enumerate() {
            let stream = format!("ingest-{round}-{index}");
            let (elapsed, took) = match index {
                0 => publish_all(server.url(), &stream, &mut redis).await,
                1 => ingest_all(server.url(), &stream, 1, &mut redis).await,
                _ => ingest_all(server.url(), &stream, 100, &mut redis).await,
            };
            measure.rates.push(EVENTS as f64 / elapsed.as_secs_f64());
            measure.took.extend(took);
        }
    }
    let baseline = Spread::of(&measured[0].rates).median;
    for (name, measure) in names.iter().zip(&mut measured) {
        measure.row(name, baseline);
    }
}
