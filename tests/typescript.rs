//! Both ways with the TypeScript library (`@logistically/events` v2): entries it wrote (the
//! fixtures are verbatim output of its publisher and batched publisher) are read, a batch it
//! packed into one entry is one delivery per event, and what a route in its format writes is what
//! its consumer reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{
    RedisServer, Running, connection, dead_letter_entries, nothing_pending, pending,
    quick_consumer, unique, wait_until,
};
use events::{
    Backoff, Context, DeadLetters, Envelope, Event, HandlerError, PublishOptions, Publisher,
    PublisherConfig, Route, Router, read_range,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A single event, as the TypeScript publisher of `user-service` wrote it.
const SINGLE: &str = include_str!("fixtures/typescript/single.json");
/// Three events packed into one entry by the TypeScript batched publisher.
const PACKED: &str = include_str!("fixtures/typescript/packed.json");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "user.created")]
struct UserCreated {
    #[serde(rename = "userId")]
    user_id: String,
    name: String,
}

#[test]
fn the_typescript_librarys_own_entries_decode() {
    let single = Envelope::decode(&[("data", SINGLE.trim())]).unwrap();
    assert_eq!(single.event_type, "user-service.user.created");
    assert_eq!(single.origin, "user-service");
    assert_eq!(single.version, 1);
    assert_eq!(single.id, "3779d4b0-72c0-429f-b83b-1a610f32dcf2");
    assert_eq!(
        humantime::format_rfc3339_millis(single.timestamp).to_string(),
        "2026-12-02T14:10:44.021Z"
    );
    assert_eq!(single.body, r#"{"userId":"u1","name":"Ada"}"#);

    let packed: Vec<Envelope> = Envelope::decode_all(&[("data", PACKED.trim())])
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let names: Vec<&str> = packed.iter().map(|event| event.body.as_str()).collect();
    assert_eq!(
        names,
        [
            r#"{"userId":"b2-1","name":"BatchTwo1"}"#,
            r#"{"userId":"b2-2","name":"BatchTwo2"}"#,
            r#"{"userId":"b2-3","name":"BatchTwo3"}"#
        ]
    );
    assert!(
        packed
            .iter()
            .all(|event| event.event_type == "user-service.user.created" && event.version == 1)
    );
    // Reading a packed entry as one event says how to read it.
    let error = Envelope::decode(&[("data", PACKED.trim())]).unwrap_err();
    assert!(
        error.to_string().contains("a batch of 3 events packed"),
        "{error}"
    );
}

async fn add(server: &RedisServer, stream: &str, fields: &[(&str, &str)]) -> String {
    let mut command = redis::cmd("XADD");
    command.arg(stream).arg("*");
    for (name, value) in fields {
        command.arg(name).arg(value);
    }
    command
        .query_async(&mut connection(server).await)
        .await
        .unwrap()
}

/// A batch as the TypeScript batched publisher packs it, of events `{"n": ..}` with the given ids,
/// followed by `extra` messages as they are.
fn packed(ids_and_numbers: &[(&str, u64)], extra: &[serde_json::Value]) -> String {
    let mut messages: Vec<serde_json::Value> = ids_and_numbers
        .iter()
        .map(|(id, n)| {
            json!({
                "eventType": "task.run",
                "body": {"n": n},
                "originalId": id,
                "timestamp": "2026-12-02T10:00:00.000Z",
                "envelope": {
                    "header": {
                        "id": id, "type": "worker.task.run", "origin": "worker",
                        "timestamp": "2026-12-02T10:00:00.000Z", "hash": "h", "version": "1.0.0"
                    },
                    "body": {"n": n}
                }
            })
        })
        .collect();
    messages.extend(extra.iter().cloned());
    json!({
        "pattern": "defaultbatch",
        "data": {
            "header": {"type": "defaultbatch", "messageCount": messages.len(), "batchId": "b", "timestamp": "2026-12-02T10:00:00.000Z"},
            "body": {"messages": messages}
        }
    })
    .to_string()
}

/// The `n` of a `{"n": ..}` body.
fn number(context: &Context) -> u64 {
    serde_json::from_str::<serde_json::Value>(&context.envelope().body).unwrap()["n"]
        .as_u64()
        .unwrap()
}

/// What handlers saw: user ids, in order.
type Seen = Arc<Mutex<Vec<String>>>;

#[tokio::test]
async fn one_typed_handler_serves_a_stream_mixing_both_formats() {
    let server = RedisServer::start();
    let stream = unique("mixed");
    // Rust, in this crate's format and in the TypeScript library's.
    let native = Publisher::connect(
        server.url(),
        PublisherConfig::new("rust-service").router(Router::single(&stream)),
    )
    .await
    .unwrap();
    let typescript = Publisher::connect(
        server.url(),
        PublisherConfig::new("rust-service").router(
            Router::builder()
                .route(Route::to("**", &stream).typescript("user-service"))
                .build()
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    let user = |id: &str| UserCreated {
        user_id: id.into(),
        name: "Grace".into(),
    };
    native.publish(&user("r1")).await.unwrap();
    add(&server, &stream, &[("data", SINGLE.trim())]).await;
    typescript
        .publish_with(
            &user("r2"),
            PublishOptions::new()
                .correlation_id("req-7")
                .header("tenant", "acme"),
        )
        .await
        .unwrap();
    add(&server, &stream, &[("data", PACKED.trim())]).await;
    native.publish(&user("r3")).await.unwrap();

    let seen: Seen = Arc::default();
    let headers = Arc::new(Mutex::new(BTreeMap::new()));
    let consumer = {
        let seen = Arc::clone(&seen);
        let headers = Arc::clone(&headers);
        quick_consumer(&server, &stream, "g")
            .strip_namespace("user-service")
            .handle(move |event: UserCreated, context: Context| {
                seen.lock().unwrap().push(event.user_id.clone());
                if let Some(tenant) = context.header("tenant") {
                    headers.lock().unwrap().insert(
                        event.user_id,
                        (tenant.to_owned(), context.envelope().correlation_id.clone()),
                    );
                }
                async { Ok::<(), HandlerError>(()) }
            })
            .build()
            .await
            .unwrap()
    };
    let running = Running::start(std::slice::from_ref(&consumer));
    wait_until("every event of both formats is handled", || {
        seen.lock().unwrap().len() >= 7
    })
    .await;
    wait_until("every entry is acknowledged", || {
        consumer.status().processed == 7
    })
    .await;
    running.close().await;

    let mut handled = seen.lock().unwrap().clone();
    handled.sort();
    assert_eq!(handled, ["b2-1", "b2-2", "b2-3", "r1", "r2", "r3", "u1"]);
    assert_eq!(
        headers.lock().unwrap().get("r2"),
        Some(&("acme".to_owned(), Some("req-7".to_owned())))
    );
    assert_eq!(pending(&server, &stream, "g").await, 0);
    let status = consumer.status();
    assert_eq!((status.skipped, status.dead_lettered), (0, 0));
}

#[tokio::test]
async fn without_the_namespace_mapping_namespaced_types_are_not_handled_as_ours() {
    let server = RedisServer::start();
    let stream = unique("unmapped");
    add(&server, &stream, &[("data", SINGLE.trim())]).await;
    let seen: Seen = Arc::default();
    let consumer = {
        let seen = Arc::clone(&seen);
        quick_consumer(&server, &stream, "g")
            .handle(move |event: UserCreated, _: Context| {
                seen.lock().unwrap().push(event.user_id);
                async { Ok::<(), HandlerError>(()) }
            })
            .build()
            .await
            .unwrap()
    };
    let running = Running::start(std::slice::from_ref(&consumer));
    wait_until("the entry is skipped", || consumer.status().skipped == 1).await;
    running.close().await;
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn each_event_of_a_packed_entry_is_retried_and_dead_lettered_on_its_own() {
    let server = RedisServer::start();
    let stream = unique("packed");
    // n=1 succeeds, n=2 always fails, n=3 fails once; the fourth message is not an event.
    let entry_id = add(
        &server,
        &stream,
        &[(
            "data",
            &packed(
                &[("e1", 1), ("e2", 2), ("e3", 3)],
                &[json!({"eventType": "task.run", "body": {"n": 4}})],
            ),
        )],
    )
    .await;
    let runs: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let consumer = {
        let runs = Arc::clone(&runs);
        let broken = Arc::clone(&broken);
        quick_consumer(&server, &stream, "g")
            .strip_namespace("worker")
            .max_attempts(3)
            .backoff(
                Backoff::exponential(Duration::from_millis(300), Duration::from_millis(300))
                    .without_jitter(),
            )
            .handle_pattern("task.run", move |context: Context| {
                let n = number(&context);
                runs.lock().unwrap().push((n, context.attempt()));
                let fails = match n {
                    2 => broken.load(std::sync::atomic::Ordering::SeqCst),
                    3 => context.attempt() == 1,
                    _ => false,
                };
                async move {
                    if fails {
                        Err(HandlerError::from("downstream refused"))
                    } else {
                        Ok(())
                    }
                }
            })
            .build()
            .await
            .unwrap()
    };
    let running = Running::start(std::slice::from_ref(&consumer));
    wait_until("n=1 is handled", || runs.lock().unwrap().contains(&(1, 1))).await;
    // n=2 is still being retried: the entry is not acknowledged yet.
    assert_eq!(pending(&server, &stream, "g").await, 1);
    wait_until("n=2 and the broken message are dead-lettered", || {
        consumer.status().dead_lettered == 2
    })
    .await;
    wait_until("the entry is acknowledged", || {
        consumer.status().processed == 2
    })
    .await;
    nothing_pending(&server, &stream, "g", Duration::from_secs(30)).await;
    let mut ran = runs.lock().unwrap().clone();
    ran.sort_unstable();
    assert_eq!(ran, [(1, 1), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2)]);

    let mut dead_letters = DeadLetters::new(
        connection(&server).await,
        &stream,
        events::dead_letter_stream(&stream),
    );
    let mut letters = dead_letters.all().await.unwrap();
    letters.sort_by_key(|letter| letter.part);
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().all(|letter| letter.entry_id == entry_id));
    assert_eq!(
        (letters[0].part, letters[0].attempts),
        (Some(1), 3),
        "{letters:?}"
    );
    assert!(
        letters[0].reason.contains("downstream refused"),
        "{letters:?}"
    );
    // The dead letter holds that event alone, as a single TypeScript entry.
    let event = letters[0].envelope().unwrap();
    assert_eq!(
        (event.id.as_str(), event.body.as_str()),
        ("e2", r#"{"n":2}"#)
    );
    assert_eq!(letters[1].part, Some(3));
    assert!(
        letters[1].reason.contains("missing field `envelope`"),
        "{letters:?}"
    );

    // Replayed once the downstream is fixed, it runs again and only it.
    broken.store(false, std::sync::atomic::Ordering::SeqCst);
    dead_letters.replay(&letters[0]).await.unwrap().unwrap();
    wait_until("the replayed event is handled", || {
        runs.lock().unwrap().len() == 7
    })
    .await;
    running.close().await;
    assert_eq!(runs.lock().unwrap().last(), Some(&(2, 1)));
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_taking_over_a_crashed_ones_packed_entry_runs_only_the_unfinished_events() {
    let server = RedisServer::start();
    let stream = unique("takeover");
    let ids: Vec<(String, u64)> = (0..10).map(|n| (format!("t{n}"), n)).collect();
    let borrowed: Vec<(&str, u64)> = ids.iter().map(|(id, n)| (id.as_str(), *n)).collect();
    add(&server, &stream, &[("data", &packed(&borrowed, &[]))]).await;
    let runs: Arc<Mutex<Vec<(u64, &'static str)>>> = Arc::default();
    let consumer = |name: &'static str, stall_from: u64| {
        let runs = Arc::clone(&runs);
        quick_consumer(&server, &stream, "g")
            .consumer_name(name)
            .strip_namespace("worker")
            .handle_pattern("task.run", move |context: Context| {
                let n = number(&context);
                runs.lock().unwrap().push((n, name));
                async move {
                    if n >= stall_from {
                        // Still running when its consumer crashes.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Ok::<(), HandlerError>(())
                }
            })
    };
    let first = consumer("first", 5).build().await.unwrap();
    let crashing = tokio::spawn({
        let first = first.clone();
        async move { first.run(CancellationToken::new()).await }
    });
    wait_until("the first consumer has handled five events", || {
        first.status().processed == 5
    })
    .await;
    // Their marks are on their way; then the process dies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    crashing.abort();
    let _ = crashing.await;

    let second = consumer("second", u64::MAX).build().await.unwrap();
    let running = Running::start(std::slice::from_ref(&second));
    wait_until("the second consumer has run the five others", || {
        second.status().processed + second.status().duplicates >= 10
    })
    .await;
    nothing_pending(&server, &stream, "g", Duration::from_secs(30)).await;
    running.close().await;
    let runs = runs.lock().unwrap().clone();
    for n in 0..5 {
        assert_eq!(
            runs.iter().filter(|(run, _)| *run == n).count(),
            1,
            "event {n} ran once: {runs:?}"
        );
    }
    for n in 5..10 {
        assert!(runs.contains(&(n, "second")), "{n}: {runs:?}");
    }
    assert_eq!(second.status().duplicates, 5);
}

#[tokio::test]
async fn pull_mode_reserves_each_event_of_a_packed_entry() {
    let server = RedisServer::start();
    let stream = unique("pull-packed");
    add(
        &server,
        &stream,
        &[("data", &packed(&[("p1", 1), ("p2", 2), ("p3", 3)], &[]))],
    )
    .await;
    let mut consumer = quick_consumer(&server, &stream, "g")
        .strip_namespace("worker")
        .max_attempts(1)
        .build_pull()
        .await
        .unwrap();
    let reserved = consumer.reserve(10).await.unwrap();
    let parts: Vec<(Option<usize>, &str)> = reserved
        .iter()
        .map(|event| (event.part, event.envelope.event_type.as_str()))
        .collect();
    assert_eq!(
        parts,
        [
            (Some(0), "task.run"),
            (Some(1), "task.run"),
            (Some(2), "task.run")
        ]
    );
    consumer.ack(&reserved[..1]).await.unwrap();
    consumer
        .fail(&reserved[1..2], "no such task")
        .await
        .unwrap();
    assert_eq!(pending(&server, &stream, "g").await, 1);
    consumer.ack(&reserved[2..]).await.unwrap();
    // The dead-letter move runs in the background; the entry goes once all three are settled.
    nothing_pending(&server, &stream, "g", Duration::from_secs(30)).await;
    consumer.close().await.unwrap();
    let letters = dead_letter_entries(&server, &stream).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        Envelope::decode(&letters[0].fields).unwrap().id,
        "p2",
        "{letters:?}"
    );
}

#[tokio::test]
async fn routes_and_the_batched_publisher_write_the_typescript_format() {
    let server = RedisServer::start();
    let stream = unique("to-typescript");
    let router = Router::builder()
        .route(Route::to("user.*", &stream).typescript("user-service"))
        .build()
        .unwrap();
    let publisher = Publisher::connect(
        server.url(),
        PublisherConfig::new("rust-service").router(router),
    )
    .await
    .unwrap();
    let user = UserCreated {
        user_id: "u1".into(),
        name: "Ada".into(),
    };
    let published = publisher.publish(&user).await.unwrap();
    let batched = events::BatchedPublisher::new(publisher.clone(), events::BatchConfig::new());
    batched.publish(&user).await.unwrap();
    batched.close().await.unwrap();

    let entries = read_range(&mut connection(&server).await, &stream, "-", "+", 10)
        .await
        .unwrap();
    assert_eq!(entries.len(), 2);
    for entry in &entries {
        // One field, `data`, whose value the TypeScript consumer parses.
        assert_eq!(entry.fields.len(), 1, "{entry:?}");
        assert_eq!(entry.fields[0].0, b"data");
        let data: serde_json::Value = serde_json::from_slice(&entry.fields[0].1).unwrap();
        let header = &data["data"]["header"];
        assert_eq!(header["type"], "user-service.user.created");
        assert_eq!(header["origin"], "rust-service");
        assert_eq!(header["version"], "1.0.0");
        assert_eq!(data["data"]["body"], json!({"userId": "u1", "name": "Ada"}));
    }
    let first = entries[0].decode().unwrap();
    assert_eq!(first.id, published.event_id);
    assert_eq!(
        first.decode_body::<UserCreated>().unwrap_err().to_string(),
        "expected event type `user.created`, found `user-service.user.created`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_entry_of_thousands_of_events_with_repeats_runs_each_event_once() {
    let server = RedisServer::start();
    let stream = unique("big-batch");
    // 3,000 events: the first 1,000 are 500 pairs of repeats, side by side, so that both of a
    // pair ask for their hold at once.
    let ids: Vec<(String, u64)> = (0..3_000)
        .map(|i| if i < 1_000 { i / 2 } else { i - 500 })
        .map(|n| (format!("big-{n}"), n))
        .collect();
    let borrowed: Vec<(&str, u64)> = ids.iter().map(|(id, n)| (id.as_str(), *n)).collect();
    add(&server, &stream, &[("data", &packed(&borrowed, &[]))]).await;
    let runs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let consumer = {
        let runs = Arc::clone(&runs);
        quick_consumer(&server, &stream, "g")
            .strip_namespace("worker")
            .handle_pattern("task.run", move |context: Context| {
                let n = number(&context);
                runs.lock().unwrap().push(n);
                async { Ok::<(), HandlerError>(()) }
            })
            .build()
            .await
            .unwrap()
    };
    let running = Running::start(std::slice::from_ref(&consumer));
    wait_until("every event is handled or skipped as a repeat", || {
        let status = consumer.status();
        status.processed + status.duplicates >= 3_000
    })
    .await;
    nothing_pending(&server, &stream, "g", Duration::from_secs(30)).await;
    running.close().await;
    let mut runs = runs.lock().unwrap().clone();
    runs.sort_unstable();
    let ran = runs.len();
    runs.dedup();
    assert_eq!((ran, runs.len()), (2_500, 2_500), "each event ran once");
    let status = consumer.status();
    assert_eq!((status.processed, status.duplicates), (2_500, 500));
}
