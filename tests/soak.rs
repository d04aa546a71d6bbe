//! Soaks, not run by `cargo test` (they take minutes): run them with
//! `cargo test --release --test soak -- --ignored --nocapture`, or one by name.
//!
//! - A steady flow of events through a Redis restart, with the publisher in this process and the
//!   consumer in a child process (the worker example), so that each side's memory is read apart.
//!   Every event is handled once, and once the restart is behind them (it costs both sides a step
//!   of memory: events wait in buffers meanwhile), neither side's memory grows.
//!   `EVENTS_SOAK_SECONDS` sets its length (300 by default) and `EVENTS_SOAK_RATE` the events per
//!   second (2,000).
//! - Churn: slow handlers (50 to 500 ms, at random), fewer at a time than each consumer reads
//!   ahead, three consumers that keep leaving and being replaced, and Redis refusing writes for
//!   30 seconds in the middle. Every event is handled exactly once or, for the poison ones,
//!   dead-lettered exactly once; none both. `EVENTS_CHURN_SECONDS` sets its length (150 by
//!   default) and `EVENTS_CHURN_RATE` the events per second (40).

mod support;

use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use events::{
    Backoff, BatchConfig, BatchedPublisher, Consumer, Context, Event, HandlerError, Publisher,
    PublisherConfig, Route, Router, Trim,
};
use serde::{Deserialize, Serialize};
use support::RedisServer;
use support::example::{ExampleProcess, OrderPlaced};
use support::faults::{accept_writes, refuse_writes};

/// How often memory is read and printed.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// How long after the restart memory is left to settle before the samples that count.
const SETTLE: Duration = Duration::from_secs(20);

/// Most growth allowed from the first third's memory to the last third's, of either side, among
/// the samples that count.
const ALLOWED_GROWTH: f64 = 1.10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: five minutes; run with `cargo test --release --test soak -- --ignored --nocapture`"]
async fn steady_flow_through_a_restart_keeps_memory_flat_and_loses_nothing() {
    let seconds = setting("EVENTS_SOAK_SECONDS", 300);
    let rate = setting("EVENTS_SOAK_RATE", 2_000);
    assert!(seconds >= 90, "a soak runs for at least 90 seconds");
    let restart_at = Duration::from_secs(seconds / 5);
    let mut server = RedisServer::own_durable();
    let stream = support::unique("soak");
    let router = Router::builder()
        .route(Route::to("**", &stream).trim(Trim::max_len(200_000)))
        .build()
        .unwrap();
    let publisher = Publisher::connect(server.url(), PublisherConfig::new("soak").router(router))
        .await
        .unwrap();
    let batched = BatchedPublisher::new(
        publisher,
        BatchConfig::new()
            .max_size(200)
            .max_wait(Duration::from_millis(20))
            .max_retries(20)
            .retry_backoff(Backoff::exponential(
                Duration::from_millis(50),
                Duration::from_millis(500),
            )),
    );
    let mut worker = ExampleProcess::start(
        "worker",
        &[
            ("REDIS_URL", server.url()),
            ("EVENTS_STREAM", &stream),
            ("EVENTS_GROUP", "soak"),
        ],
    );

    // Which order numbers the worker handled, from its `handled o<n>` lines, as bits (so this
    // bookkeeping barely adds to the publisher's memory), how many it handled twice, and its last
    // status line.
    let (mut handled, mut handled_count, mut repeats) = (Vec::<u64>::new(), 0u64, 0u64);
    let mut last_status = None;
    let mut count_handled = |worker: &ExampleProcess| {
        for line in worker.take_lines() {
            if let Some(n) = line.strip_prefix("handled o") {
                let n: usize = n.parse().expect("order number");
                if handled.len() <= n / 64 {
                    handled.resize(n / 64 + 1, 0);
                }
                let (word, bit) = (&mut handled[n / 64], 1 << (n % 64));
                if *word & bit == 0 {
                    handled_count += 1;
                } else {
                    repeats += 1;
                }
                *word |= bit;
            } else if let Some(status) = line.strip_prefix("status ") {
                last_status = Some(status.to_owned());
            }
        }
        handled_count
    };

    println!("second  published    handled  publisher MiB  worker MiB  redis MiB");
    let started = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let mut published = 0u64;
    let mut next_sample = SAMPLE_EVERY;
    let mut restarted = false;
    // Resident KiB of the publisher and of the worker, from samples after the restart settled.
    let (mut publisher_kib, mut worker_kib) = (Vec::new(), Vec::new());
    let mut ticks = tokio::time::interval(tick);
    while started.elapsed() < Duration::from_secs(seconds) {
        ticks.tick().await;
        for _ in 0..per_tick {
            let order = OrderPlaced {
                order_id: format!("o{published}"),
                total: 12.5,
            };
            batched.publish(&order).await.unwrap();
            published += 1;
        }
        if !restarted && started.elapsed() >= restart_at {
            tokio::task::block_in_place(|| server.restart());
            println!("redis-server restarted");
            restarted = true;
        }
        if started.elapsed() >= next_sample {
            next_sample += SAMPLE_EVERY;
            worker.assert_running();
            let (own, worker_rss) = (
                events::testing::resident_kib("self"),
                events::testing::resident_kib(&worker.id().to_string()),
            );
            if started.elapsed() >= restart_at + SETTLE {
                publisher_kib.push(own);
                worker_kib.push(worker_rss);
            }
            println!(
                "{:>6} {:>10} {:>10} {:>14.1} {:>11.1} {:>10.1}",
                started.elapsed().as_secs(),
                published,
                count_handled(&worker),
                own as f64 / 1024.0,
                worker_rss as f64 / 1024.0,
                redis_used_memory(&server).await as f64 / 1_048_576.0,
            );
        }
    }
    batched.close().await.unwrap();
    assert!(
        batched.failed_messages().is_empty(),
        "every event is written"
    );
    println!("{:?}", batched.memory_stats());
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_handled(&worker) < published {
        assert!(Instant::now() < deadline, "the worker did not catch up");
        worker.assert_running();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.signal("TERM");
    assert!(worker.wait(), "the worker stops cleanly on SIGTERM");
    count_handled(&worker);
    let status = last_status.expect("the worker's last status");
    println!("worker status: {status}");

    assert!(restarted, "redis-server was restarted under load");
    assert_eq!(
        (handled_count, repeats),
        (published, 0),
        "each event handled once"
    );
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["processed"], published);
    assert_eq!(
        status["cleaned"], 0,
        "no entry was trimmed before it was handled"
    );
    assert_eq!(status["dead_lettered"], 0);
    for (side, memory) in [("publisher", publisher_kib), ("worker", worker_kib)] {
        let third = (memory.len() / 3).max(1);
        let mean = |values: &[u64]| values.iter().sum::<u64>() as f64 / values.len() as f64;
        let (first, last) = (
            mean(&memory[..third]),
            mean(&memory[memory.len() - third..]),
        );
        println!(
            "{side}: {:.1} MiB in the first third, {:.1} MiB in the last ({:.3}x)",
            first / 1024.0,
            last / 1024.0,
            last / first
        );
        assert!(
            last <= first * ALLOWED_GROWTH,
            "{side}'s memory grew from {first:.0} KiB to {last:.0} KiB"
        );
    }
}

/// A whole-number setting from the environment, or `default`.
fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name} must be a whole number"))
        })
        .unwrap_or(default)
}

/// Redis's `used_memory`, in bytes.
async fn redis_used_memory(server: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut support::connection(server).await)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("used_memory in INFO")
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "soak.job")]
struct Job {
    n: u64,
}

/// Every 97th job fails for good: it must end in the dead-letter stream, once, and never count as
/// handled.
fn is_poison(n: u64) -> bool {
    n % 97 == 96
}

/// A small random number generator (xorshift), seeded, so a run can be repeated.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: two and a half minutes; run with `cargo test --release --test soak -- --ignored --nocapture`"]
async fn churning_slow_consumers_through_refused_writes_handle_each_event_exactly_once() {
    let seconds = setting("EVENTS_CHURN_SECONDS", 150);
    let rate = setting("EVENTS_CHURN_RATE", 40);
    assert!(seconds >= 60, "a churn soak runs for at least 60 seconds");
    let refusing = Duration::from_secs(seconds / 5)..Duration::from_secs(seconds / 5 + 30);
    let server = RedisServer::own();
    let stream = support::unique("churn");
    let publisher = support::publisher_to(server.url(), &stream).await;
    // Job number to (handler runs that succeeded, runs in all).
    let runs: Arc<Mutex<BTreeMap<u64, (u32, u32)>>> = Arc::default();
    let seed = std::process::id().into();
    println!("seed {seed}");
    let handler = {
        let runs = Arc::clone(&runs);
        move |job: Job, _: Context| {
            let runs = Arc::clone(&runs);
            let work = Duration::from_millis(50 + Random(seed ^ job.n).below(451));
            async move {
                tokio::time::sleep(work).await;
                let poison = is_poison(job.n);
                let mut runs = runs.lock().unwrap();
                let counts = runs.entry(job.n).or_default();
                counts.1 += 1;
                if poison {
                    return Err(HandlerError::from("poison"));
                }
                counts.0 += 1;
                Ok(())
            }
        }
    };
    let consumer = |name: String| {
        support::quick_consumer(&server, &stream, "churn")
            .consumer_name(name)
            .concurrency(4)
            .max_unacked(100)
            .max_attempts(3)
            .handler_timeout(Duration::from_secs(1))
            .claim_idle(Duration::from_secs(5))
            .claim_interval(Duration::from_millis(500))
            .shutdown_timeout(Duration::from_secs(1))
            .handle(handler.clone())
            .build()
    };
    // Three slots, each running a consumer for 5 to 20 seconds, then another.
    let mut random = Random(seed);
    let mut slots: Vec<(Consumer, support::Running, Instant)> = Vec::new();
    let mut lives = 0;
    let mut counted = Counted::default();
    let started = Instant::now();
    let mut published = 0u64;
    let mut next_sample = SAMPLE_EVERY;
    let mut was_refusing = false;
    println!("second  published  handled  dead-lettered  pending  consumers  lives  stalls");
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    while started.elapsed() < Duration::from_secs(seconds) {
        ticks.tick().await;
        let now_refusing = refusing.contains(&started.elapsed());
        if now_refusing != was_refusing {
            if now_refusing {
                refuse_writes(&server).await;
            } else {
                accept_writes(&server).await;
            }
            println!(
                "redis-server {} writes",
                if now_refusing { "refuses" } else { "accepts" }
            );
            was_refusing = now_refusing;
        }
        if !now_refusing {
            for _ in 0..(rate / 10).max(1) {
                publisher.publish(&Job { n: published }).await.unwrap();
                published += 1;
            }
        }
        let mut index = 0;
        while index < slots.len() {
            if slots[index].2 <= Instant::now() {
                let (consumer, running, _) = slots.swap_remove(index);
                running.close().await;
                counted.add(&consumer);
            } else {
                index += 1;
            }
        }
        while slots.len() < 3 {
            lives += 1;
            let consumer = consumer(format!("life-{lives}")).await.unwrap();
            let running = support::Running::start(std::slice::from_ref(&consumer));
            let lasts = Duration::from_secs(5 + random.below(16));
            slots.push((consumer, running, Instant::now() + lasts));
        }
        if started.elapsed() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let stalls: Vec<String> = slots
                .iter()
                .flat_map(|(consumer, ..)| consumer.status().stalls)
                .map(|stall| format!("{:?}", stall.operation))
                .collect();
            let handled = handled(&runs.lock().unwrap());
            println!(
                "{:>6} {:>10} {:>8} {:>14} {:>8} {:>10} {:>6}  {}",
                started.elapsed().as_secs(),
                published,
                handled,
                dead_letters(&server, &stream).await.len(),
                support::pending(&server, &stream, "churn").await,
                slots.len(),
                lives,
                stalls.join(",")
            );
        }
    }
    // The last consumers stay until every event is settled.
    let deadline = Instant::now() + Duration::from_secs(120);
    while support::pending(&server, &stream, "churn").await > 0
        || handled_or_dead(&runs, &server, &stream).await < published
    {
        assert!(Instant::now() < deadline, "the consumers did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (consumer, running, _) in slots {
        running.close().await;
        counted.add(&consumer);
    }

    let runs = runs.lock().unwrap().clone();
    let dead = dead_letters(&server, &stream).await;
    let poison = (0..published).filter(|n| is_poison(*n)).count();
    println!(
        "{published} published, {} handled, {} dead-lettered ({poison} poison), {lives} consumer lives; \
         counters over all lives: {counted:?}",
        handled(&runs),
        dead.len(),
    );
    let mut dead_once = BTreeMap::new();
    for n in &dead {
        *dead_once.entry(*n).or_insert(0) += 1;
    }
    for n in 0..published {
        let (handled, ran) = runs.get(&n).copied().unwrap_or((0, 0));
        if is_poison(n) {
            assert_eq!(handled, 0, "poison job {n} never succeeds");
            assert_eq!(
                dead_once.get(&n),
                Some(&1),
                "poison job {n} is dead-lettered once"
            );
            assert!(
                ran <= 3,
                "poison job {n} ran {ran} times, more than max_attempts"
            );
        } else {
            assert_eq!((handled, ran), (1, 1), "job {n} ran exactly once");
            assert!(
                !dead_once.contains_key(&n),
                "job {n} was handled and dead-lettered"
            );
        }
    }
    assert_eq!(dead.len(), poison, "nothing else is dead-lettered");
}

/// Counters summed over consumers that have stopped.
#[derive(Debug, Default)]
struct Counted {
    processed: u64,
    duplicates: u64,
    reclaimed: u64,
    dead_lettered: u64,
}

impl Counted {
    fn add(&mut self, consumer: &Consumer) {
        let status = consumer.status();
        self.processed += status.processed;
        self.duplicates += status.duplicates;
        self.reclaimed += status.reclaimed;
        self.dead_lettered += status.dead_lettered;
    }
}

/// Jobs handled (at least once) or in the dead-letter stream.
async fn handled_or_dead(
    runs: &Mutex<BTreeMap<u64, (u32, u32)>>,
    server: &RedisServer,
    stream: &str,
) -> u64 {
    let handled = handled(&runs.lock().unwrap());
    (handled + dead_letters(server, stream).await.len()) as u64
}

/// Jobs handled successfully, at least once.
fn handled(runs: &BTreeMap<u64, (u32, u32)>) -> usize {
    runs.values().filter(|runs| runs.0 > 0).count()
}

/// The job numbers in the dead-letter stream of `stream`, one per dead letter.
async fn dead_letters(server: &RedisServer, stream: &str) -> Vec<u64> {
    let mut letters = events::DeadLetters::new(
        support::connection(server).await,
        stream,
        events::dead_letter_stream(stream),
    );
    letters
        .all()
        .await
        .unwrap()
        .iter()
        .filter_map(|letter| letter.envelope()?.decode_body::<Job>().ok())
        .map(|job| job.n)
        .collect()
}
