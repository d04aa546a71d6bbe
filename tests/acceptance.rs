//! Acceptance scenarios in the spirit of Watermill's universal Pub/Sub tests, against a real
//! redis-server: each checks every message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::example::{ExampleProcess, OrderPlaced};
use crate::support::{
    RedisServer, Running, connection, pending, publish_retrying_with, publisher_to, quick_consumer,
    quick_consumer_at, unique, wait_until, wait_until_within,
};
use events::{
    Context, Event, HandlerError, PublishOptions, Publisher, PublisherConfig, Router,
    dead_letter_stream, read_range,
};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "item.added")]
struct ItemAdded {
    publisher: u64,
    n: u64,
    #[event(length(max = 64))]
    label: String,
}

impl ItemAdded {
    /// Item `n` of publisher `publisher`.
    fn new(publisher: u64, n: u64) -> Self {
        Self {
            publisher,
            n,
            label: format!("item {n} of {publisher}"),
        }
    }
}

/// What handlers saw: (publisher, n) to how often, and the tenant header and the whole item of
/// the last time.
type Seen = Arc<Mutex<BTreeMap<(u64, u64), (u32, Option<String>, ItemAdded)>>>;

/// Counts `item` as handled in `seen`, with its tenant header.
fn record(seen: &Seen, item: &ItemAdded, context: &Context) {
    let tenant = context.header("tenant").map(str::to_owned);
    let mut seen = seen.lock().unwrap();
    let entry = seen
        .entry((item.publisher, item.n))
        .or_insert((0, None, item.clone()));
    entry.0 += 1;
    entry.1 = tenant;
    entry.2 = item.clone();
}

fn recording(
    seen: &Seen,
) -> impl Fn(ItemAdded, Context) -> std::future::Ready<Result<(), HandlerError>> + Clone + use<> {
    let seen = Arc::clone(seen);
    move |item: ItemAdded, context: Context| {
        record(&seen, &item, &context);
        std::future::ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_publishers_and_ten_consumers_handle_each_of_10000_events_once_with_headers_intact()
{
    let server = RedisServer::start();
    let stream = unique("fan");
    let seen: Seen = Arc::default();
    let mut consumers = Vec::new();
    for index in 0..10 {
        let consumer = quick_consumer(&server, &stream, "workers")
            .consumer_name(format!("c{index}"))
            .handle(recording(&seen))
            .build()
            .await
            .unwrap();
        consumers.push(consumer);
    }
    let running = Running::start(&consumers);
    let (_, publishing) = spawn_publishers(&server, &stream, 20, 500);
    close_once_all_handled(publishing, &seen, 10_000, running).await;

    assert_each_once_with_headers(&seen, 20, 500);
    assert_eq!(pending(&server, &stream, "workers").await, 0);
    let processed: u64 = consumers
        .iter()
        .map(|consumer| consumer.status().processed)
        .sum();
    assert_eq!(processed, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_malformed_entries_each_go_to_the_dead_letter_stream_and_counts_match() {
    let server = RedisServer::start();
    let stream = unique("junk");
    let seen: Seen = Arc::default();
    let (consumer, running) = start_recording(&server, &stream, &seen).await;
    let publisher = publisher_to(server.url(), &stream).await;
    let mut redis = connection(&server).await;

    // Good events between junk of every kind; the junk is written as other producers could.
    let mut junk = 0;
    let mut good = 0;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..40u64 {
        publisher.publish(&ItemAdded::new(0, round)).await.unwrap();
        good += 1;
        let fields: Vec<(Vec<u8>, Vec<u8>)> = match round % 5 {
            // A random field map.
            0 => (0..(random() % 6))
                .map(|_| {
                    let name = (0..(random() % 8)).map(|_| random() as u8).collect();
                    let value = (0..(random() % 32)).map(|_| random() as u8).collect();
                    (name, value)
                })
                .chain([(b"x".to_vec(), b"y".to_vec())])
                .collect(),
            // Invalid JSON in an otherwise complete entry.
            1 => entry_with_body(b"{\"publisher\": 0, \"n\":"),
            // Wrong types.
            2 => entry_with_body(br#"{"publisher": "zero", "n": -1, "label": 7}"#),
            // A huge body that fails validation (label too long).
            3 => entry_with_body(
                format!(
                    r#"{{"publisher":0,"n":1,"label":"{}"}}"#,
                    "x".repeat(200_000)
                )
                .as_bytes(),
            ),
            // Binary junk where text belongs.
            _ => vec![
                (b"type".to_vec(), vec![0xff, 0x00, 0xfe]),
                (b"body".to_vec(), vec![0x80; 64]),
            ],
        };
        let _: String = redis.xadd(&stream, "*", &fields).await.unwrap();
        junk += 1;
    }
    wait_until("every entry is settled", || {
        let status = consumer.status();
        status.processed + status.dead_lettered == good + junk
    })
    .await;
    running.close().await;

    let status = consumer.status();
    assert_eq!(
        (status.processed, status.dead_lettered, status.retried),
        (good, junk, 0)
    );
    assert_eq!(seen.lock().unwrap().len() as u64, good);
    let letters = read_range(&mut redis, &dead_letter_stream(&stream), "-", "+", 1000)
        .await
        .unwrap();
    assert_eq!(
        letters.len() as u64,
        junk,
        "each junk entry is dead-lettered once"
    );
    for letter in &letters {
        let reason = letter
            .fields
            .iter()
            .find(|(name, _)| name == b"dlq.reason")
            .map(|(_, value)| value.clone());
        assert!(
            reason.is_some_and(|reason| reason.starts_with(b"undecodable: ")),
            "a reason for {}",
            letter.id
        );
    }
    let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("g")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(pending.0, 0, "nothing left pending");
}

/// An entry with every field of the format and `body` as given.
fn entry_with_body(body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        ("id", b"0b5a3c1e-8d4f-4a51-9d0e-6b7f1c2d3e4f".as_slice()),
        ("type", b"item.added"),
        ("v", b"1"),
        ("origin", b"someone-else"),
        ("ts", b"2026-11-23T07:05:37.123Z"),
        ("body", body),
    ]
    .into_iter()
    .map(|(name, value)| (name.as_bytes().to_vec(), value.to_vec()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_streams_at_once_each_consumer_receives_exactly_its_own() {
    let server = RedisServer::start();
    let prefix = unique("many");
    let router = Router::builder()
        .route(events::Route::prefixed("**", format!("{prefix}:")))
        .build()
        .unwrap();
    let publisher = Publisher::connect(server.url(), PublisherConfig::new("many").router(router))
        .await
        .unwrap();
    let mut consumers = Vec::new();
    let mut seen_by_stream = Vec::new();
    for index in 0..20u64 {
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let handler = {
            let seen = Arc::clone(&seen);
            move |context: Context| {
                let body = context.envelope().body.clone();
                seen.lock()
                    .unwrap()
                    .push((context.stream().to_owned(), body));
                std::future::ready(Ok::<(), HandlerError>(()))
            }
        };
        let stream = format!("{prefix}:kind{index}.happened");
        let consumer = quick_consumer(&server, &stream, "readers")
            .handle_pattern("**", handler)
            .build()
            .await
            .unwrap();
        consumers.push(consumer);
        seen_by_stream.push((stream, seen));
    }
    let running = Running::start(&consumers);
    for n in 0..50u64 {
        let batch: Vec<_> = (0..20u64)
            .map(|index| {
                let body = serde_json::json!({ "stream": index, "n": n });
                publisher
                    .raw_envelope(
                        &format!("kind{index}.happened"),
                        &body,
                        PublishOptions::new(),
                    )
                    .unwrap()
            })
            .collect();
        publisher.publish_envelopes(batch).await.unwrap();
    }
    wait_until("every consumer has its 50", || {
        seen_by_stream
            .iter()
            .all(|(_, seen)| seen.lock().unwrap().len() >= 50)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.close().await;

    for (index, (stream, seen)) in seen_by_stream.iter().enumerate() {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 50, "{stream}");
        for (from, body) in seen.iter() {
            assert_eq!(from, stream);
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["stream"], index, "{stream} got another stream's event");
        }
    }
}

/// Publishes `count` items of `publisher_index`, each with its tenant header, trying again
/// through restarts; counts each published in `published`.
async fn publish_items(
    publisher: &Publisher,
    publisher_index: u64,
    count: u64,
    published: &AtomicU64,
) {
    for n in 0..count {
        let item = ItemAdded::new(publisher_index, n);
        let options = PublishOptions::new().header("tenant", format!("t{publisher_index}"));
        publish_retrying_with(publisher, &item, options).await;
        published.fetch_add(1, Ordering::Relaxed);
    }
}

/// Checks that `seen` holds each of `publishers` × `per_publisher` items once, intact, with its
/// header.
fn assert_each_once_with_headers(seen: &Seen, publishers: u64, per_publisher: u64) {
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, publishers * per_publisher);
    for publisher in 0..publishers {
        for n in 0..per_publisher {
            let (count, tenant, item) = seen
                .get(&(publisher, n))
                .unwrap_or_else(|| panic!("({publisher}, {n}) never handled"));
            assert_eq!(*count, 1, "({publisher}, {n}) handled {count} times");
            assert_eq!(
                item,
                &ItemAdded::new(publisher, n),
                "payload of ({publisher}, {n})"
            );
            assert_eq!(
                tenant.as_deref(),
                Some(format!("t{publisher}").as_str()),
                "header of ({publisher}, {n})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_that_keep_starting_and_closing_while_events_flow_lose_nothing() {
    let server = RedisServer::start();
    let stream = unique("churn");
    let seen: Seen = Arc::default();
    let published = Arc::new(AtomicU64::new(0));
    let publishing = tokio::spawn({
        let (url, stream, published) = (
            server.url().to_owned(),
            stream.clone(),
            Arc::clone(&published),
        );
        async move {
            let publisher = publisher_to(&url, &stream).await;
            for round in 0..100 {
                publish_items(&publisher, round, 30, &published).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    });

    // Three slots, each starting a new consumer, running it a while and closing it, until every
    // event is published; then one last consumer finishes what is left.
    let mut churning = Vec::new();
    for slot in 0..3u64 {
        let (server_url, stream, seen, publishing_done) = (
            server.url().to_owned(),
            stream.clone(),
            Arc::clone(&seen),
            Arc::clone(&published),
        );
        churning.push(tokio::spawn(async move {
            let mut lives = 0u64;
            while publishing_done.load(Ordering::Relaxed) < 3_000 {
                let consumer = quick_consumer_at(&server_url, &stream, "workers")
                    .consumer_name(format!("churn{slot}-{lives}"))
                    .handle(recording(&seen))
                    .build()
                    .await
                    .unwrap();
                let shutdown = CancellationToken::new();
                let run = tokio::spawn({
                    let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
                    async move { consumer.run(shutdown).await }
                });
                tokio::time::sleep(Duration::from_millis(100 + 70 * ((slot + lives) % 4))).await;
                shutdown.cancel();
                run.await.unwrap().unwrap();
                lives += 1;
            }
            lives
        }));
    }
    publishing.await.unwrap();
    let mut lives = 0;
    for slot in churning {
        lives += slot.await.unwrap();
    }
    assert!(lives >= 6, "consumers started and closed {lives} times");

    finish_recording(&server, &stream, "workers", &seen, (100, 30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_twice_under_10000_events_loses_nothing() {
    let mut server = RedisServer::own_durable();
    let stream = unique("restarts");
    let seen: Seen = Arc::default();
    let (consumer, running) = start_recording(&server, &stream, &seen).await;
    let (published, publishing) = spawn_publishers(&server, &stream, 4, 2_500);
    for at in [3_000, 6_000] {
        // Redis writes every event to disk before it answers (appendfsync always): with other
        // tests loading the disk, publishing slows down, which is not what this test is about.
        wait_until_within("enough are published", Duration::from_secs(120), || {
            published.load(Ordering::Relaxed) >= at
        })
        .await;
        let handled_before = seen.lock().unwrap().len();
        tokio::task::block_in_place(|| server.restart());
        assert!(
            handled_before > 0,
            "the restart comes while events are consumed"
        );
    }
    close_once_all_handled(publishing, &seen, 10_000, running).await;
    assert_eq!(consumer.status().processed, 10_000);
    assert_each_once_with_headers(&seen, 4, 2_500);
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_process_leaves_its_entries_to_another_after_claim_idle() {
    let server = RedisServer::start();
    let stream = unique("killed");
    let publisher = publisher_to(server.url(), &stream).await;
    let orders: Vec<OrderPlaced> = (0..500)
        .map(|n| OrderPlaced {
            order_id: format!("o{n}"),
            total: n as f64,
        })
        .collect();
    publisher.publish_many(&orders).await.unwrap();

    let mut worker = ExampleProcess::start(
        "worker",
        &[
            ("REDIS_URL", server.url()),
            ("EVENTS_STREAM", &stream),
            ("EVENTS_GROUP", "fulfilment"),
            ("EVENTS_CONSUMER", "doomed"),
            ("WORK_MS", "50"),
        ],
    );
    let mut by_worker = BTreeSet::new();
    let mut handled_by_worker = |worker: &ExampleProcess| {
        for line in worker.take_lines() {
            if let Some(order) = line.strip_prefix("handled ") {
                by_worker.insert(order.to_owned());
            }
        }
        by_worker.len()
    };
    wait_until("the worker handled 20 orders", || {
        worker.assert_running();
        handled_by_worker(&worker) >= 20
    })
    .await;
    worker.signal("KILL");
    assert!(!worker.wait(), "killed, not exited");
    handled_by_worker(&worker);
    let mut redis = connection(&server).await;
    let left: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("fulfilment")
        .arg("-")
        .arg("+")
        .arg(1_000)
        .arg("doomed")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!left.is_empty(), "the worker was killed mid-batch");
    assert!(
        by_worker.len() < 500,
        "the worker was killed before the end"
    );

    // Order id to the entry ids it was handled from, by the survivor.
    let by_survivor: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
    let survivor = quick_consumer(&server, &stream, "fulfilment")
        .consumer_name("survivor")
        .handle({
            let by_survivor = Arc::clone(&by_survivor);
            move |order: OrderPlaced, context: Context| {
                by_survivor
                    .lock()
                    .unwrap()
                    .entry(order.order_id)
                    .or_default()
                    .push(context.entry_id().to_owned());
                std::future::ready(Ok::<(), HandlerError>(()))
            }
        })
        .build()
        .await
        .unwrap();
    let running = Running::start(std::slice::from_ref(&survivor));
    let all_handled = || {
        let by_survivor = by_survivor.lock().unwrap();
        orders.iter().all(|order| {
            by_worker.contains(&order.order_id) || by_survivor.contains_key(&order.order_id)
        })
    };
    wait_until("every order is handled by one of them", all_handled).await;
    running.close().await;
    assert_eq!(pending(&server, &stream, "fulfilment").await, 0);

    let by_survivor = by_survivor.lock().unwrap();
    let left_ids: BTreeSet<&str> = left.iter().map(|(id, ..)| id.as_str()).collect();
    for (order, entries) in by_survivor.iter() {
        assert_eq!(entries.len(), 1, "{order} handled once by the survivor");
        assert!(
            !by_worker.contains(order) || left_ids.contains(entries[0].as_str()),
            "{order} was handled twice though its entry had been acknowledged"
        );
    }
    let taken_over = by_survivor
        .values()
        .filter(|entries| left_ids.contains(entries[0].as_str()))
        .count();
    assert_eq!(
        taken_over,
        left_ids.len(),
        "each entry the killed worker left pending is finished by the survivor"
    );
    assert_eq!(survivor.status().reclaimed, left_ids.len() as u64);
}

/// Starts a consumer of `stream` in group `g` recording into `seen`.
async fn start_recording(
    server: &RedisServer,
    stream: &str,
    seen: &Seen,
) -> (events::Consumer, Running) {
    let consumer = quick_consumer(server, stream, "g")
        .handle(recording(seen))
        .build()
        .await
        .unwrap();
    let running = Running::start(std::slice::from_ref(&consumer));
    (consumer, running)
}

/// Runs a last consumer of `group` recording into `seen` until it holds every item of `items`
/// (publishers, items each); checks each was handled once with its headers and nothing is pending.
async fn finish_recording(
    server: &RedisServer,
    stream: &str,
    group: &str,
    seen: &Seen,
    items: (u64, u64),
) -> events::Consumer {
    let last = quick_consumer(server, stream, group)
        .consumer_name("last")
        .handle(recording(seen))
        .build()
        .await
        .unwrap();
    run_until_seen(&last, seen, (items.0 * items.1) as usize).await;
    assert_each_once_with_headers(seen, items.0, items.1);
    assert_eq!(pending(server, stream, group).await, 0);
    last
}

/// Waits until `publishing` is over and `seen` holds `total` items, then closes `running`.
async fn close_once_all_handled(
    publishing: Vec<tokio::task::JoinHandle<()>>,
    seen: &Seen,
    total: usize,
    running: Running,
) {
    for task in publishing {
        task.await.unwrap();
    }
    wait_until(&format!("all {total} are handled"), || {
        seen.lock().unwrap().len() == total
    })
    .await;
    running.close().await;
}

/// Runs `consumer` until `seen` holds `total` items and nothing is in flight.
async fn run_until_seen(consumer: &events::Consumer, seen: &Seen, total: usize) {
    run_then_close_together(
        std::slice::from_ref(consumer),
        &format!("all {total} are handled"),
        || seen.lock().unwrap().len() == total,
    )
    .await;
}

/// Runs `consumers` until `done` holds, then closes them all at once and waits until each has
/// returned.
async fn run_then_close_together(
    consumers: &[events::Consumer],
    what: &str,
    done: impl FnMut() -> bool,
) {
    let running = Running::start(consumers);
    wait_until(what, done).await;
    running.close().await;
}

/// Publishes 10 × `per_publisher` items with headers, from ten publishers at once.
async fn publish_ten_publishers_items(server: &RedisServer, stream: &str, per_publisher: u64) {
    for task in spawn_publishers(server, stream, 10, per_publisher).1 {
        task.await.unwrap();
    }
}

/// Starts `publishers` tasks, each with a publisher of its own publishing `per_publisher` items
/// (see [`publish_items`]); gives the count of events published so far and the tasks.
fn spawn_publishers(
    server: &RedisServer,
    stream: &str,
    publishers: u64,
    per_publisher: u64,
) -> (Arc<AtomicU64>, Vec<tokio::task::JoinHandle<()>>) {
    let published = Arc::new(AtomicU64::new(0));
    let tasks = (0..publishers)
        .map(|publisher_index| {
            let (url, stream, published) = (
                server.url().to_owned(),
                stream.to_owned(),
                Arc::clone(&published),
            );
            tokio::spawn(async move {
                let publisher = publisher_to(&url, &stream).await;
                publish_items(&publisher, publisher_index, per_publisher, &published).await;
            })
        })
        .collect();
    (published, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_consumers_closing_at_once_leave_what_they_read_to_a_later_one() {
    let server = RedisServer::start();
    let stream = unique("closing");
    publish_ten_publishers_items(&server, &stream, 100).await;
    let seen: Seen = Arc::default();
    let slow = {
        let seen = Arc::clone(&seen);
        move |item: ItemAdded, context: Context| {
            let seen = Arc::clone(&seen);
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                record(&seen, &item, &context);
                Ok::<(), HandlerError>(())
            }
        }
    };
    let mut closing = Vec::new();
    for index in 0..10 {
        let consumer = quick_consumer(&server, &stream, "g")
            .consumer_name(format!("closing{index}"))
            .concurrency(4)
            .shutdown_timeout(Duration::from_millis(500))
            .handle(slow.clone())
            .build()
            .await
            .unwrap();
        closing.push(consumer);
    }
    run_then_close_together(&closing, "100 are handled", || {
        seen.lock().unwrap().len() >= 100
    })
    .await;
    let left = pending(&server, &stream, "g").await;
    assert!(left > 0, "the closed consumers left entries pending");
    let handled_before = seen.lock().unwrap().len();
    assert!(handled_before < 1_000, "they closed before the end");

    let later = finish_recording(&server, &stream, "g", &seen, (10, 100)).await;
    assert_eq!(
        later.status().reclaimed,
        left as u64,
        "every entry left pending was reclaimed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_that_fail_many_deliveries_then_close_leave_all_to_a_final_one() {
    let server = RedisServer::start();
    let stream = unique("failing");
    publish_ten_publishers_items(&server, &stream, 30).await;
    let failures = Arc::new(AtomicU64::new(0));
    let failing = {
        let failures = Arc::clone(&failures);
        move |_: ItemAdded, _: Context| {
            failures.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Err::<(), _>(HandlerError::from("not today")))
        }
    };
    let mut closing = Vec::new();
    for index in 0..5 {
        let consumer = quick_consumer(&server, &stream, "g")
            .consumer_name(format!("failing{index}"))
            .max_attempts(1_000)
            .handle(failing.clone())
            .build()
            .await
            .unwrap();
        closing.push(consumer);
    }
    run_then_close_together(&closing, "900 deliveries failed", || {
        failures.load(Ordering::Relaxed) >= 900
    })
    .await;
    let retried: u64 = closing
        .iter()
        .map(|consumer| consumer.status().retried)
        .sum();
    assert!(
        retried >= 900,
        "{retried} failed deliveries were scheduled again"
    );

    let seen: Seen = Arc::default();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let last = quick_consumer(&server, &stream, "g")
        .consumer_name("last")
        .max_attempts(1_000)
        .handle({
            let (seen, attempts) = (Arc::clone(&seen), Arc::clone(&attempts));
            move |item: ItemAdded, context: Context| {
                record(&seen, &item, &context);
                attempts.lock().unwrap().push(context.attempt());
                std::future::ready(Ok::<(), HandlerError>(()))
            }
        })
        .build()
        .await
        .unwrap();
    run_until_seen(&last, &seen, 300).await;
    assert_each_once_with_headers(&seen, 10, 30);
    assert!(
        attempts.lock().unwrap().iter().all(|attempt| *attempt >= 2),
        "every event had failed before the final consumer handled it"
    );
    assert_eq!(last.status().dead_lettered, 0);
    assert_eq!(pending(&server, &stream, "g").await, 0);
}
