//! Acceptance scenarios in the spirit of Watermill's universal Pub/Sub tests, against a real
//! redis-server: each checks every message.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use events::{
    Context, Event, HandlerError, PublishOptions, Publisher, PublisherConfig, Router,
    dead_letter_stream, read_range,
};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use support::{RedisServer, connection, quick_consumer, run_all, unique, wait_until};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "item.added")]
struct ItemAdded {
    publisher: u64,
    n: u64,
    #[event(length(max = 64))]
    label: String,
}

/// What handlers saw: (publisher, n) to how often, and the headers of each.
type Seen = Arc<Mutex<BTreeMap<(u64, u64), (u32, Option<String>)>>>;

fn recording(
    seen: &Seen,
) -> impl Fn(ItemAdded, Context) -> std::future::Ready<Result<(), HandlerError>> + Clone + use<> {
    let seen = Arc::clone(seen);
    move |item: ItemAdded, context: Context| {
        let tenant = context.header("tenant").map(str::to_owned);
        let mut seen = seen.lock().unwrap();
        let entry = seen.entry((item.publisher, item.n)).or_insert((0, None));
        entry.0 += 1;
        entry.1 = tenant;
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
    let runs = run_all(&consumers);
    let mut publishing = Vec::new();
    for publisher_index in 0..20 {
        let (url, stream) = (server.url().to_owned(), stream.clone());
        publishing.push(tokio::spawn(async move {
            let publisher = Publisher::connect(
                &url,
                PublisherConfig::new("fan").router(Router::single(&stream)),
            )
            .await
            .unwrap();
            for n in 0..500 {
                let item = ItemAdded {
                    publisher: publisher_index,
                    n,
                    label: format!("item {n} of {publisher_index}"),
                };
                let options = PublishOptions::new().header("tenant", format!("t{publisher_index}"));
                publisher.publish_with(&item, options).await.unwrap();
            }
        }));
    }
    for task in publishing {
        task.await.unwrap();
    }
    wait_until("all 10,000 are handled", || {
        seen.lock().unwrap().len() == 10_000
    })
    .await;
    for run in runs {
        run.abort();
    }

    let seen = seen.lock().unwrap();
    for ((publisher, n), (count, tenant)) in seen.iter() {
        assert_eq!(*count, 1, "({publisher}, {n}) handled {count} times");
        assert_eq!(
            tenant.as_deref(),
            Some(format!("t{publisher}").as_str()),
            "header of ({publisher}, {n})"
        );
    }
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
    let consumer = quick_consumer(&server, &stream, "g")
        .handle(recording(&seen))
        .build()
        .await
        .unwrap();
    let runs = run_all(std::slice::from_ref(&consumer));
    let publisher = Publisher::connect(
        server.url(),
        PublisherConfig::new("junk").router(Router::single(&stream)),
    )
    .await
    .unwrap();
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
        publisher
            .publish(&ItemAdded {
                publisher: 0,
                n: round,
                label: "fine".into(),
            })
            .await
            .unwrap();
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
    for run in runs {
        run.abort();
    }

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
    let runs = run_all(&consumers);
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
    for run in runs {
        run.abort();
    }

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
