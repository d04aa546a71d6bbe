//! Redis memory per idempotency mark: a consumer handles a million events with idempotency on,
//! and the growth of `used_memory` (and the `MEMORY USAGE` of the marks' keys) is divided by the
//! events; next to it, in the same run and server, the layout marks had before, one string key per
//! event (`SET {stream}:done:<group>:<64 hex> done PX <window>`), written for as many events.
//!
//! `cargo bench --bench marks` (set `EVENTS_BENCH_EVENTS` to change the number of events).

use events::testing as redis_server;

mod backlog;
mod order_placed;
mod timing;

use std::time::Duration;

use events::{Consumer, Router, StartFrom};
use redis::aio::MultiplexedConnection;

const STREAM: &str = "bench:marks";

async fn used_memory(redis: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(redis)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap()
}

/// The summed `MEMORY USAGE` of the keys matching `pattern`, and how many there are.
async fn keys_memory(redis: &mut MultiplexedConnection, pattern: &str) -> (u64, u64) {
    let (mut cursor, mut bytes, mut keys) = (0u64, 0u64, 0u64);
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(redis)
            .await
            .unwrap();
        for key in found {
            let usage: u64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&key)
                .arg("SAMPLES")
                .arg(0)
                .query_async(redis)
                .await
                .unwrap();
            bytes += usage;
            keys += 1;
        }
        if next == 0 {
            return (bytes, keys);
        }
        cursor = next;
    }
}

/// Writes `events` marks the way they were written before: a string key each, with a TTL.
async fn one_key_per_mark(redis: &mut MultiplexedConnection, events: u64, window: Duration) {
    for chunk in (0..events).collect::<Vec<_>>().chunks(10_000) {
        let mut pipeline = redis::pipe();
        for n in chunk {
            let hash = events::hash_body("order.placed", &n.to_string());
            pipeline
                .cmd("SET")
                .arg(format!("{{{STREAM}}}:done:old:{hash}"))
                .arg("done")
                .arg("PX")
                .arg(window.as_millis() as u64)
                .ignore();
        }
        let _: () = pipeline.query_async(redis).await.unwrap();
    }
}

#[tokio::main]
async fn main() {
    let events: u64 = std::env::var("EVENTS_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let window = Duration::from_secs(24 * 3600);
    let server = redis_server::RedisServer::start();
    let url = server.url().to_owned();
    let mut redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    backlog::write_orders(&url, Router::single(STREAM), events).await;
    println!("{events} events handled with idempotency on (window 24 h), Redis at {url}");

    let before = used_memory(&mut redis).await;
    let builder = Consumer::builder(&url)
        .stream(STREAM)
        .group("new")
        .start_from(StartFrom::Beginning)
        .batch_size(500)
        .max_unacked(4000)
        .concurrency(500)
        .block(Duration::from_millis(100))
        .idempotency_ttl(window);
    let streams = [STREAM.to_owned()];
    let elapsed = timing::time_until_acknowledged(
        vec![builder],
        &timing::Handling::default(),
        events,
        &url,
        &streams,
        "new",
    )
    .await;
    let ours = used_memory(&mut redis).await.saturating_sub(before);
    let (ours_keys_bytes, ours_keys) =
        keys_memory(&mut redis, &format!("{{{STREAM}}}:marks:new:*")).await;

    let before = used_memory(&mut redis).await;
    one_key_per_mark(&mut redis, events, window).await;
    let old = used_memory(&mut redis).await.saturating_sub(before);
    let (old_keys_bytes, old_keys) =
        keys_memory(&mut redis, &format!("{{{STREAM}}}:done:old:*")).await;

    let per = |bytes: u64| bytes as f64 / events as f64;
    println!(
        "{:<56} {:>14} {:>16} {:>8}",
        "layout", "used_memory/ev", "MEMORY USAGE/ev", "keys"
    );
    println!(
        "{:<56} {:>12.1} B {:>14.1} B {:>8}",
        "one string key per mark (before; baseline)",
        per(old),
        per(old_keys_bytes),
        old_keys
    );
    println!(
        "{:<56} {:>12.1} B {:>14.1} B {:>8}",
        "pages of records by event time (now)",
        per(ours),
        per(ours_keys_bytes),
        ours_keys
    );
    println!(
        "now/before: {:.3}x; consumed in {:.2} s ({:.0} events/s)",
        per(ours) / per(old),
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    // A mark lives for the window and a quarter more on average (its bucket, half the window
    // long, half-used).
    println!("Redis memory held by marks at 1,000 events/s:");
    for (name, window) in [("1 h", 3_600.0), ("24 h", 86_400.0), ("7 d", 604_800.0)] {
        let held = |per_mark: f64| per_mark * 1_000.0 * window * 1.25 / 1_048_576.0;
        println!(
            "  window {name:>4}: {:>9.0} MiB now, {:>9.0} MiB before",
            held(per(ours)),
            held(per(old))
        );
    }
}
