//! Events per second through consumers (read, decode, typed handler, acknowledged in Redis: the
//! time until nothing is pending), next to a raw redis-rs `XREADGROUP` + `XACK` loop over the
//! same entries, all in this run against the same throwaway `redis-server` (or `REDIS_URL`): one
//! consumer with and without idempotency, and consumers of a stream partitioned 8 ways; the cost
//! of a middleware layer (tower's identity) and of a rate limit that never waits; one and three
//! consumers of the partitions whose handlers wait 2 ms for each event, 32 at a time each, as
//! handlers that call a database do (there the handlers are the limit, not the CPU). Rounds of
//! each alternate, every run reading its stream anew in a group of its own; each row gives the
//! median, least and most of the rounds, the Redis CPU each event cost (`INFO cpu`) and this
//! process's own CPU per event (the consumers', or the raw loop's).
//!
//! `cargo bench --bench consume` (`EVENTS_BENCH_EVENTS` sets the events, 200,000 by default,
//! `EVENTS_BENCH_ROUNDS` the rounds, 5, `EVENTS_BENCH_BATCH` the batch size, 500, and
//! `EVENTS_BENCH_ROWS` which rows to measure, such as `1,2` for a profile of those alone; the
//! baseline, row 0, always runs). With `EVENTS_BENCH_PIN` set, Redis runs on a CPU of its own and
//! the bench on the others, as when Redis has a host of its own.

use events::testing as redis_server;

mod backlog;
mod cpu;
mod order_placed;
mod pin;
mod rows;
mod spread;
mod timing;

use std::time::{Duration, Instant};

use cpu::{own_busy, redis_busy};
use events::{
    Consumer, ConsumerBuilder, HandlerOptions, RateLimit, Router, StartFrom, partition_streams,
};
use redis::Value;
use spread::Spread;
use timing::Handling;

const STREAM: &str = "bench:consume";
const PARTITIONED: &str = "bench:partitioned";
/// How long the waiting handlers wait for each event, as for a call to a database.
const HANDLER_WAIT: Duration = Duration::from_millis(2);
/// How many events each consumer with waiting handlers handles at a time.
const WAITING_AT_ONCE: usize = 32;

/// A stream entry as the raw loop reads it: its id and field-value pairs.
type Entry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// Reads every entry through a new group with XREADGROUP and acknowledges each batch with XACK.
async fn raw_loop(url: &str, group: &str, events: u64, batch: usize) -> Duration {
    let mut connection = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(group)
        .arg("0")
        .query_async(&mut connection)
        .await
        .unwrap();
    let start = Instant::now();
    let mut read = 0;
    while read < events {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg("c")
            .arg("COUNT")
            .arg(batch)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(">")
            .query_async(&mut connection)
            .await
            .unwrap();
        let reply: Vec<(String, Vec<Entry>)> = redis::from_redis_value(reply).unwrap();
        let ids: Vec<String> = reply
            .into_iter()
            .flat_map(|(_, entries)| entries)
            .map(|(id, _)| id)
            .collect();
        read += ids.len() as u64;
        let _: u64 = redis::cmd("XACK")
            .arg(STREAM)
            .arg(group)
            .arg(&ids)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    start.elapsed()
}

/// One consumer of `group`, tuned like the raw loop: batches of `batch`, as many at once.
fn consumer(url: &str, group: &str, batch: usize, idempotency: bool) -> ConsumerBuilder {
    Consumer::builder(url)
        .group(group)
        .start_from(StartFrom::Beginning)
        .batch_size(batch)
        .max_unacked(batch * 8)
        .concurrency(batch)
        .block(Duration::from_millis(100))
        .idempotency(idempotency)
}

/// What one configuration measured over the rounds: events per second and Redis µs per event.
#[derive(Default)]
struct Measured {
    rates: Vec<f64>,
    redis_micros: Vec<f64>,
    own_micros: Vec<f64>,
}

impl Measured {
    fn add(&mut self, events: u64, elapsed: Duration, redis_micros: u64, own_micros: u64) {
        self.rates.push(events as f64 / elapsed.as_secs_f64());
        self.redis_micros.push(redis_micros as f64 / events as f64);
        self.own_micros.push(own_micros as f64 / events as f64);
    }

    fn row(&self, name: &str, baseline: &Measured) {
        let rates = Spread::of(&self.rates);
        let base = Spread::of(&baseline.rates).median;
        let micros = Spread::of(&self.redis_micros).median;
        let base_micros = Spread::of(&baseline.redis_micros).median;
        let own = Spread::of(&self.own_micros).median;
        println!(
            "{name:<46} {}  {:>5.2}x  {micros:>6.2} µs {:>5.2}x  {own:>6.2} µs",
            rates.show(8, 0),
            rates.median / base,
            micros / base_micros
        );
    }
}

#[tokio::main]
async fn main() {
    let setting = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let events = setting("EVENTS_BENCH_EVENTS", 200_000);
    let rounds = setting("EVENTS_BENCH_ROUNDS", 5);
    let batch = setting("EVENTS_BENCH_BATCH", 500) as usize;
    let server = redis_server::RedisServer::start();
    let url = server.url().to_owned();
    // Distinct orders: distinct events for idempotency.
    backlog::write_orders(&url, Router::single(STREAM), events).await;
    backlog::write_orders(&url, backlog::partitioned(PARTITIONED, 8), events).await;
    let partitions = partition_streams(PARTITIONED, 8);
    let mut redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let cores = pin::cores(&mut redis).await;
    println!(
        "{events} events of 160-byte JSON bodies, batches of {batch}, {rounds} rounds, Redis at {url}, {cores}"
    );
    println!(
        "{:<46} {:>24}  {:>6}  {:>17}  {:>9}",
        "events/s, acknowledged in Redis",
        "median (least..most)",
        "ratio",
        "Redis CPU/event",
        "own CPU"
    );

    let names = [
        "raw redis-rs XREADGROUP + XACK loop (baseline)",
        "Consumer, idempotency off",
        "Consumer, idempotency on",
        "Consumer of 8 partitions, idempotency off",
        "3 consumers sharing 8 partitions",
        "Consumer, one middleware layer (identity)",
        "Consumer, a rate limit that never waits",
        "Consumer of 8 partitions, handlers waiting 2 ms",
        "3 consumers sharing 8 partitions, the same",
    ];
    let mut measured: Vec<Measured> = names.iter().map(|_| Measured::default()).collect();
    let rows = rows::chosen(names.len());
    for round in 0..rounds {
        for (index, measure) in measured.iter_mut().enumerate() {
            if !rows.contains(&index) {
                continue;
            }
            let group = format!("g{index}-{round}");
            let (busy, own) = (redis_busy(&mut redis).await, own_busy());
            let elapsed = match index {
                0 => raw_loop(&url, &group, events, batch).await,
                1 | 2 | 5 | 6 => {
                    let mut builder = consumer(&url, &group, batch, index == 2).stream(STREAM);
                    let mut handling = Handling::default();
                    if index == 5 {
                        builder = builder.layer(tower::layer::util::Identity::new());
                    }
                    if index == 6 {
                        // A million a second, all at once: the cost of asking, never a wait.
                        let limit = RateLimit::new(1_000_000, Duration::from_secs(1));
                        handling.options = HandlerOptions::new().rate_limit(limit.burst(1_000_000));
                    }
                    let streams = [STREAM.to_owned()];
                    timing::time_until_acknowledged(
                        vec![builder],
                        &handling,
                        events,
                        &url,
                        &streams,
                        &group,
                    )
                    .await
                }
                _ => {
                    let count = if index == 3 || index == 7 { 1 } else { 3 };
                    // Handlers bound by what they wait for, not by the CPU: each consumer
                    // handles WAITING_AT_ONCE at a time, as a pool of connections would allow.
                    let waiting = index >= 7;
                    let builders = (0..count)
                        .map(|n| {
                            let builder = consumer(&url, &group, batch, false)
                                .partitioned_stream(PARTITIONED, 8)
                                .partition_lease(Duration::from_secs(2))
                                .consumer_name(format!("c{n}"));
                            if waiting {
                                builder.concurrency(WAITING_AT_ONCE)
                            } else {
                                builder
                            }
                        })
                        .collect();
                    let handling = Handling {
                        wait: waiting.then_some(HANDLER_WAIT),
                        ..Handling::default()
                    };
                    timing::time_until_acknowledged(
                        builders,
                        &handling,
                        events,
                        &url,
                        &partitions,
                        &group,
                    )
                    .await
                }
            };
            let redis_micros = redis_busy(&mut redis).await - busy;
            measure.add(events, elapsed, redis_micros, own_busy() - own);
        }
    }
    for (name, measure) in names.iter().zip(&measured) {
        if !measure.rates.is_empty() {
            measure.row(name, &measured[0]);
        }
    }
    // Pairs that ran one after the other in each round, so that a machine slower for a while
    // slows both: idempotency's cost, and what three consumers make of what one does.
    for (label, one, other) in [
        ("idempotency on / off", 1, 2),
        ("3 consumers / 1, the CPU the limit", 3, 4),
        ("3 consumers / 1, handlers waiting", 7, 8),
    ] {
        let (one, other) = (&measured[one].rates, &measured[other].rates);
        if !one.is_empty() && !other.is_empty() {
            let ratios: Vec<f64> = other
                .iter()
                .zip(one)
                .map(|(other, one)| other / one)
                .collect();
            println!(
                "{label}, round by round: {} (ratios)",
                Spread::of(&ratios).show(0, 2)
            );
        }
    }
}
