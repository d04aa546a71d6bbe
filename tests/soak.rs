//! Soak: a steady flow of events for minutes, through a Redis restart, with the publisher in this
//! process and the consumer in a child process (the worker example), so that each side's memory is
//! read apart. Every event is handled once, and once the restart is behind them (it costs both
//! sides a step of memory: events wait in buffers meanwhile), neither side's memory grows.
//!
//! Not run by `cargo test`: it takes five minutes. Run it with
//! `cargo test --release --test soak -- --ignored --nocapture`; `EVENTS_SOAK_SECONDS` sets another
//! length and `EVENTS_SOAK_RATE` the events per second (2,000 by default).

mod support;

use std::time::{Duration, Instant};

use events::{
    Backoff, BatchConfig, BatchedPublisher, Publisher, PublisherConfig, Route, Router, Trim,
};
use support::RedisServer;
use support::example::{ExampleProcess, OrderPlaced};

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
            let (own, worker_rss) = (resident_kib("self"), resident_kib(&worker.id().to_string()));
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

/// Resident memory of process `pid` (or `self`) in KiB, from `/proc/<pid>/status`.
fn resident_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
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
