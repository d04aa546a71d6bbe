//! Rate limits shared by every consumer of a group, against a real redis-server: three consumers
//! together hold the limit, keys have budgets of their own, waits are not attempts, and limits
//! that cannot work are build errors.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::{Context, Event, HandlerError, HandlerOptions, PublishOptions, RateLimit};
use serde::{Deserialize, Serialize};

use crate::support::{RedisServer, Running, publisher_to, quick_consumer, unique, wait_until};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "sms.send")]
struct Sms {
    n: u64,
}

/// When each event started, with its tenant and attempt.
type Started = Arc<Mutex<Vec<(Instant, String, u32)>>>;

fn limited_consumer(
    server: &RedisServer,
    stream: &str,
    limit: RateLimit,
    started: &Started,
) -> events::ConsumerBuilder {
    let started = Arc::clone(started);
    quick_consumer(server, stream, "g").handle_with(
        HandlerOptions::new().rate_limit(limit),
        move |_: Sms, context: Context| {
            let tenant = context.header("tenant").unwrap_or_default().to_owned();
            started
                .lock()
                .unwrap()
                .push((Instant::now(), tenant, context.attempt()));
            async { Ok::<(), HandlerError>(()) }
        },
    )
}

async fn publish(server: &RedisServer, stream: &str, tenant: &str, count: u64) {
    let publisher = publisher_to(server.url(), stream).await;
    for n in 0..count {
        publisher
            .publish_with(&Sms { n }, PublishOptions::new().header("tenant", tenant))
            .await
            .unwrap();
    }
}

/// Events per second from the first start to the last.
fn rate(starts: &[Instant]) -> f64 {
    let first = starts.iter().min().unwrap();
    let last = starts.iter().max().unwrap();
    (starts.len() - 1) as f64 / last.duration_since(*first).as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_together_hold_the_limit() {
    let server = RedisServer::start();
    let stream = unique("limited");
    let started: Started = Arc::default();
    let limit = || RateLimit::new(100, Duration::from_secs(1));
    let mut consumers = Vec::new();
    for _ in 0..3 {
        // Each holds at most 20 events: all three share the 300.
        let builder = limited_consumer(&server, &stream, limit(), &started)
            .batch_size(10)
            .max_unacked(20);
        consumers.push(builder.build().await.unwrap());
    }
    let running = Running::start(&consumers);
    publish(&server, &stream, "acme", 300).await;
    wait_until("every event is handled", || {
        started.lock().unwrap().len() == 300
    })
    .await;
    running.close().await;
    let started = started.lock().unwrap().clone();
    let measured = rate(&started.iter().map(|(at, ..)| *at).collect::<Vec<_>>());
    println!("measured {measured:.1} events/s against a limit of 100/s");
    assert!((90.0..=110.0).contains(&measured), "{measured}");
    // Waiting is neither a failure nor an attempt.
    assert!(started.iter().all(|(_, _, attempt)| *attempt == 1));
    let limited: u64 = consumers.iter().map(|c| c.status().limited).sum();
    let failed: u64 = consumers.iter().map(|c| c.status().failed).sum();
    assert!(limited > 200, "{limited}");
    assert_eq!(failed, 0);
    // Every consumer took part.
    assert!(consumers.iter().all(|c| c.status().processed > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_has_a_budget_of_its_own() {
    let server = RedisServer::start();
    let stream = unique("limited-keys");
    publish(&server, &stream, "big", 100).await;
    publish(&server, &stream, "small", 5).await;
    let started: Started = Arc::default();
    let limit = RateLimit::new(50, Duration::from_secs(1))
        .burst(5)
        .per(|context| context.header("tenant").map(str::to_owned));
    let builder = limited_consumer(&server, &stream, limit, &started);
    let (_, running) = Running::build(builder).await;
    let begun = Instant::now();
    wait_until("every event is handled", || {
        started.lock().unwrap().len() == 105
    })
    .await;
    running.close().await;
    let started = started.lock().unwrap().clone();
    // The small tenant's five go within its burst, not behind the big tenant's two seconds.
    let small: Vec<Instant> = started
        .iter()
        .filter(|(_, tenant, _)| tenant == "small")
        .map(|(at, ..)| *at)
        .collect();
    let latest = small.iter().max().unwrap().duration_since(begun);
    assert!(latest < Duration::from_millis(1_000), "{latest:?}");
    let big: Vec<Instant> = started
        .iter()
        .filter(|(_, tenant, _)| tenant == "big")
        .map(|(at, ..)| *at)
        .collect();
    let measured = rate(&big);
    assert!((45.0..=60.0).contains(&measured), "{measured}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_of_handled_events_take_no_place_under_the_limit() {
    let server = RedisServer::start();
    let stream = unique("limited-repeats");
    let started: Started = Arc::default();
    // Two events every 10 s: an event written three times (a publisher retrying) and another.
    let limit = RateLimit::new(2, Duration::from_secs(10)).burst(2);
    let builder = limited_consumer(&server, &stream, limit, &started);
    let (consumer, running) = Running::build(builder).await;
    let publisher = publisher_to(server.url(), &stream).await;
    let first = publisher
        .envelope(&Sms { n: 1 }, PublishOptions::new())
        .unwrap();
    let second = publisher
        .envelope(&Sms { n: 2 }, PublishOptions::new())
        .unwrap();
    publisher
        .publish_envelopes(vec![first.clone(), first.clone(), first, second])
        .await
        .unwrap();
    let begun = Instant::now();
    wait_until(
        "both events are handled and both repeats acknowledged",
        || {
            let status = consumer.status();
            status.processed == 2 && status.duplicates == 2
        },
    )
    .await;
    running.close().await;
    // A repeat waiting for a place would have held one of the four back for 10 s.
    let took = begun.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(started.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn limits_that_cannot_work_are_build_errors_naming_the_handler() {
    let server = RedisServer::start();
    let started: Started = Arc::default();
    for (limit, said) in [
        (
            RateLimit::new(0, Duration::from_secs(1)),
            "lets nothing through",
        ),
        (RateLimit::new(10, Duration::ZERO), "lets nothing through"),
        (
            RateLimit::new(10, Duration::from_secs(3 * 24 * 3600)),
            "over a day",
        ),
        (
            RateLimit::new(2_000_000, Duration::from_secs(1)),
            "over a million a second",
        ),
        (
            RateLimit::new(10, Duration::from_secs(1)).burst(11),
            "a burst of 11",
        ),
    ] {
        let error = limited_consumer(&server, "s", limit, &started)
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("the handler of `sms.send`") && error.contains(said),
            "{error}"
        );
    }
}
