//! The consumer-group server against a real redis-server: every event handled once, failures
//! retried or dead-lettered, crashed consumers' work reclaimed, shutdown clean.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{
    RedisServer, calls, clients, connection, dead_letter_entries, pending, publish_retrying,
    publisher_to, quick_consumer, quick_consumer_at, unique, wait_until,
};
use events::{
    Backoff, Consumer, ConsumerBuilder, Context, Event, HandlerError, PublishOptions, Publisher,
    StartFrom, Unhandled, read_range,
};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "task.created")]
struct TaskCreated {
    n: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "audit.login")]
struct Login {
    user: String,
}

/// What handlers saw: event number to the attempts that completed it.
type Seen = Arc<Mutex<BTreeMap<u64, Vec<u32>>>>;

fn seen() -> Seen {
    Arc::new(Mutex::new(BTreeMap::new()))
}

fn count(seen: &Seen) -> usize {
    seen.lock().unwrap().len()
}

fn record(seen: &Seen, n: u64, attempt: u32) {
    seen.lock().unwrap().entry(n).or_default().push(attempt);
}

/// A handler that records each event it completes.
fn recording(
    seen: &Seen,
) -> impl Fn(TaskCreated, Context) -> futures::future::Ready<Result<(), HandlerError>> + use<> {
    let seen = Arc::clone(seen);
    move |task: TaskCreated, context: Context| {
        record(&seen, task.n, context.attempt());
        futures::future::ready(Ok(()))
    }
}

/// A handler that waits `wait`, then records the event, as one awaiting a slow service would.
fn recording_after(
    seen: &Seen,
    wait: Duration,
) -> impl Fn(TaskCreated, Context) -> futures::future::BoxFuture<'static, Result<(), HandlerError>> + use<>
{
    let seen = Arc::clone(seen);
    move |task: TaskCreated, context: Context| {
        let seen = Arc::clone(&seen);
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            record(&seen, task.n, context.attempt());
            Ok(())
        })
    }
}

/// A handler that counts its starts in `started`, then never finishes.
fn stuck(
    started: &Arc<AtomicU32>,
) -> impl Fn(TaskCreated, Context) -> futures::future::Pending<Result<(), HandlerError>> + use<> {
    let started = Arc::clone(started);
    move |_: TaskCreated, _: Context| {
        started.fetch_add(1, Ordering::SeqCst);
        futures::future::pending()
    }
}

/// Runs a consumer in `group` whose handler records every event it completes.
async fn run_recording(
    server: &RedisServer,
    stream: &str,
    group: &str,
) -> (Seen, Consumer, Running) {
    let seen = seen();
    let consumer = quick_consumer(server, stream, group)
        .handle(recording(&seen))
        .build()
        .await
        .unwrap();
    let running = spawn(&consumer);
    (seen, consumer, running)
}

async fn publish_tasks(publisher: &Publisher, range: std::ops::Range<u64>) {
    let tasks: Vec<TaskCreated> = range.map(|n| TaskCreated { n }).collect();
    publisher.publish_many(&tasks).await.unwrap();
}

/// A consumer running in a task, and the token that stops it.
type Running = (
    CancellationToken,
    tokio::task::JoinHandle<events::Result<()>>,
);

/// Runs `consumer` in a task until the returned token is cancelled.
fn spawn(consumer: &Consumer) -> Running {
    let token = CancellationToken::new();
    let running = consumer.clone();
    let stop = token.clone();
    (token, tokio::spawn(async move { running.run(stop).await }))
}

async fn stop(running: Running) {
    running.0.cancel();
    running.1.await.unwrap().unwrap();
}

async fn dead_letters(server: &RedisServer, stream: &str) -> Vec<BTreeMap<String, String>> {
    dead_letter_entries(server, stream)
        .await
        .into_iter()
        .map(|entry| {
            entry
                .fields
                .into_iter()
                .map(|(name, value)| {
                    (
                        String::from_utf8_lossy(&name).into_owned(),
                        String::from_utf8_lossy(&value).into_owned(),
                    )
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_in_one_group_handle_each_of_1000_events_once() {
    let server = RedisServer::start();
    let stream = unique("three");
    let seen = seen();
    let mut consumers = Vec::new();
    for name in ["a", "b", "c"] {
        let consumer = quick_consumer(&server, &stream, "workers")
            .consumer_name(name)
            .batch_size(10)
            .handle(recording(&seen))
            .build()
            .await
            .unwrap();
        consumers.push(consumer);
    }
    let running: Vec<_> = consumers.iter().map(spawn).collect();

    publish_tasks(&publisher_to(server.url(), &stream).await, 0..1000).await;
    wait_until("all 1000 events are handled", || count(&seen) == 1000).await;
    for run in running {
        stop(run).await;
    }

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.values().all(|attempts| attempts == &[1]),
        "each event handled once, first time"
    );
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (0..1000).collect::<Vec<_>>()
    );
    let processed: Vec<u64> = consumers
        .iter()
        .map(|consumer| consumer.status().processed)
        .collect();
    assert_eq!(processed.iter().sum::<u64>(), 1000);
    assert!(
        processed.iter().filter(|&&n| n > 0).count() >= 2,
        "the work was shared: {processed:?}"
    );
    assert_eq!(pending(&server, &stream, "workers").await, 0);
}

#[tokio::test]
async fn a_consumer_reads_the_database_its_url_names_with_replies_of_any_size() {
    let server = RedisServer::start();
    let stream = unique("database");
    let url = format!("{}/3", server.url());
    // The stream of the same name in database 0 is not the consumer's.
    publish_tasks(&publisher_to(server.url(), &stream).await, 1000..1001).await;
    let publisher = publisher_to(&url, &stream).await;
    publish_tasks(&publisher, 0..100).await;
    // A body of 1.2 MB: its read's reply comes in many pieces.
    let user = "ada".repeat(400_000);
    publisher
        .publish(&Login { user: user.clone() })
        .await
        .unwrap();
    let seen = seen();
    let logins = Arc::new(Mutex::new(Vec::new()));
    let logged = Arc::clone(&logins);
    let consumer = quick_consumer_at(&url, &stream, "workers")
        .handle(recording(&seen))
        .handle(move |login: Login, _: Context| {
            logged.lock().unwrap().push(login.user);
            futures::future::ready(Ok(()))
        })
        .build()
        .await
        .unwrap();
    let running = spawn(&consumer);
    wait_until("the 100 tasks and the login are handled", || {
        count(&seen) == 100 && !logins.lock().unwrap().is_empty()
    })
    .await;
    stop(running).await;

    assert_eq!(
        seen.lock().unwrap().keys().copied().collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );
    assert!(*logins.lock().unwrap() == [user], "the login, whole");
    let mut database_0 = connection(&server).await;
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(&mut database_0)
        .await
        .unwrap();
    assert!(groups.is_empty(), "database 0's stream has no group");
}

#[tokio::test]
async fn a_consumer_holds_at_most_four_connections() {
    let server = RedisServer::start();
    let stream = unique("connections");
    let publisher = publisher_to(server.url(), &stream).await;
    let before = clients(&server).await.len();
    let (seen, consumer, running) = run_recording(&server, &stream, "workers").await;
    wait_until("the consumer runs", || consumer.status().running).await;
    publish_tasks(&publisher, 0..2_000).await;
    let mut most = 0;
    while count(&seen) < 2_000 {
        most = most.max(clients(&server).await.len() - before);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop(running).await;
    // Two reading connections (their own, once redis-rs has checked the login on one that is
    // then closed), the keeper's on its own thread, and one for everything else.
    assert!((3..=4).contains(&most), "{most} connections");
}

#[tokio::test]
async fn two_groups_each_get_every_event() {
    let server = RedisServer::start();
    let stream = unique("groups");
    let (billing, shipping) = (seen(), seen());
    let first = quick_consumer(&server, &stream, "billing")
        .handle(recording(&billing))
        .build()
        .await
        .unwrap();
    let second = quick_consumer(&server, &stream, "shipping")
        .handle(recording(&shipping))
        .build()
        .await
        .unwrap();
    let running = [spawn(&first), spawn(&second)];

    publish_tasks(&publisher_to(server.url(), &stream).await, 0..200).await;
    wait_until("both groups handled all", || {
        count(&billing) == 200 && count(&shipping) == 200
    })
    .await;
    for run in running {
        stop(run).await;
    }
    assert_eq!(first.status().processed, 200);
    assert_eq!(second.status().processed, 200);
}

#[tokio::test]
async fn a_failing_handler_is_retried_while_later_events_flow() {
    let server = RedisServer::start();
    let stream = unique("retry");
    let order = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicU32::new(0));
    let handler = {
        let (order, failures) = (Arc::clone(&order), Arc::clone(&failures));
        move |task: TaskCreated, context: Context| {
            let (order, failures) = (Arc::clone(&order), Arc::clone(&failures));
            async move {
                if task.n == 0 && context.attempt() < 3 {
                    failures.fetch_add(1, Ordering::SeqCst);
                    return Err(HandlerError::from(format!(
                        "flaky dependency, attempt {}",
                        context.attempt()
                    )));
                }
                order.lock().unwrap().push((task.n, context.attempt()));
                Ok(())
            }
        }
    };
    let consumer = quick_consumer(&server, &stream, "g")
        .backoff(
            Backoff::exponential(Duration::from_millis(150), Duration::from_millis(300))
                .without_jitter(),
        )
        .handle(handler)
        .build()
        .await
        .unwrap();
    let running = spawn(&consumer);

    publish_tasks(&publisher_to(server.url(), &stream).await, 0..21).await;
    wait_until("all 21 events are handled", || {
        order.lock().unwrap().len() == 21
    })
    .await;
    stop(running).await;

    let order = order.lock().unwrap().clone();
    assert_eq!(failures.load(Ordering::SeqCst), 2);
    let position = order.iter().position(|(n, _)| *n == 0).unwrap();
    assert_eq!(
        order[position],
        (0, 3),
        "event 0 succeeded on its third attempt"
    );
    assert_eq!(
        position, 20,
        "the other 20 events were handled while event 0 waited: {order:?}"
    );
    let status = consumer.status();
    assert_eq!(
        (
            status.processed,
            status.retried,
            status.failed,
            status.dead_lettered
        ),
        (21, 2, 2, 0)
    );
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

#[tokio::test]
async fn a_poison_event_ends_in_the_dead_letter_stream_after_max_attempts() {
    let server = RedisServer::start();
    let stream = unique("poison");
    let seen = seen();
    let handler = {
        let seen = Arc::clone(&seen);
        move |task: TaskCreated, context: Context| {
            let seen = Arc::clone(&seen);
            async move {
                if task.n == 7 {
                    return Err(HandlerError::from("cannot charge card 7"));
                }
                record(&seen, task.n, context.attempt());
                Ok(())
            }
        }
    };
    let dead = Arc::new(Mutex::new(Vec::new()));
    let consumer = quick_consumer(&server, &stream, "g")
        .max_attempts(3)
        .handle(handler)
        .on_dead_letter({
            let dead = Arc::clone(&dead);
            move |letter| dead.lock().unwrap().push(letter.clone())
        })
        .build()
        .await
        .unwrap();
    let running = spawn(&consumer);

    publish_tasks(&publisher_to(server.url(), &stream).await, 0..20).await;
    wait_until("19 handled and one dead-lettered", || {
        count(&seen) == 19 && consumer.status().dead_lettered == 1
    })
    .await;
    stop(running).await;

    let letters = dead_letters(&server, &stream).await;
    assert_eq!(letters.len(), 1, "only the poison event is dead-lettered");
    let letter = &letters[0];
    assert_eq!(letter["dlq.reason"], "handler failed: cannot charge card 7");
    assert_eq!(letter["dlq.attempts"], "3");
    assert_eq!(letter["dlq.stream"], stream);
    assert_eq!(letter["dlq.group"], "g");
    assert_eq!(letter["type"], "task.created");
    assert_eq!(letter["body"], r#"{"n":7}"#, "the original fields are kept");
    let hooked = dead.lock().unwrap().clone();
    assert_eq!(hooked.len(), 1);
    assert_eq!(hooked[0].entry_id, letter["dlq.entry_id"]);
    assert_eq!(hooked[0].event_type.as_deref(), Some("task.created"));
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

/// An entry's fields and values, as bytes.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The fields of a well-formed `task.created` entry for task `n`, with `replace` in place of the
/// field of its name (or added, when it has none).
fn task_fields(n: u64, replace: (&str, Vec<u8>)) -> Fields {
    let mut fields: Fields = [
        ("id", format!("0190a5f1-0000-7000-8000-{n:012}")),
        ("type", "task.created".to_owned()),
        ("v", "1".to_owned()),
        ("origin", "hand-written".to_owned()),
        ("ts", "2026-01-01T00:00:00.000Z".to_owned()),
        ("body", format!("{{\"n\":{n}}}")),
    ]
    .into_iter()
    .map(|(name, value)| (name.as_bytes().to_vec(), value.into_bytes()))
    .collect();
    match fields
        .iter_mut()
        .find(|(name, _)| name == replace.0.as_bytes())
    {
        Some(field) => field.1 = replace.1,
        None => fields.push((replace.0.as_bytes().to_vec(), replace.1)),
    }
    fields
}

#[tokio::test]
async fn hostile_entries_are_handled_or_dead_lettered_each_and_the_consumer_keeps_going() {
    let server = RedisServer::start();
    let stream = unique("hostile");
    let (seen, consumer, running) = run_recording(&server, &stream, "g").await;
    let publisher = publisher_to(server.url(), &stream).await;
    publish_tasks(&publisher, 0..5).await;
    let nested = format!("{{\"n\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let padded = format!("{{\"n\":102,\"pad\":\"{}\"}}", "x".repeat(8 << 20));
    let hostile: Vec<(&str, Fields)> = vec![
        (
            "control characters in the type",
            task_fields(100, ("type", b"task.created\x00\x1b[2J".to_vec())),
        ),
        (
            "a version past u32",
            task_fields(100, ("v", b"99999999999999999999999".to_vec())),
        ),
        (
            "a time that is no time",
            task_fields(100, ("ts", b"\x07yesterday".to_vec())),
        ),
        (
            "a body nested 100,000 deep",
            task_fields(100, ("body", nested.into_bytes())),
        ),
        (
            "an id of 100 KB",
            task_fields(101, ("id", vec![b'7'; 100_000])),
        ),
        (
            "a body of 8 MiB",
            task_fields(102, ("body", padded.into_bytes())),
        ),
        (
            "a field name with NUL",
            task_fields(103, ("x\x00y", b"z".to_vec())),
        ),
        ("the type twice", {
            let mut fields = task_fields(104, ("v", b"1".to_vec()));
            fields.push((b"type".to_vec(), b"audit.login".to_vec()));
            fields
        }),
    ];
    let mut redis = connection(&server).await;
    for (_, fields) in &hostile {
        let _: String = redis.xadd(&stream, "*", fields).await.unwrap();
    }
    publish_tasks(&publisher, 5..10).await;
    wait_until("13 handled and 5 dead-lettered", || {
        let status = consumer.status();
        status.processed == 13 && status.dead_lettered == 5
    })
    .await;
    stop(running).await;
    assert_eq!(
        consumer.status().skipped,
        0,
        "none taken for an unknown type"
    );

    // The ten good tasks and the three hostile ones that are well-formed events each ran once.
    let ran: Vec<(u64, Vec<u32>)> = seen.lock().unwrap().clone().into_iter().collect();
    let expected: Vec<(u64, Vec<u32>)> = (0..10).chain(101..104).map(|n| (n, vec![1])).collect();
    assert_eq!(ran, expected);
    // The others are dead letters, whole, each saying which field was wrong.
    let letters = dead_letter_entries(&server, &stream).await;
    assert_eq!(letters.len(), 5);
    for (what, reason) in [
        (
            0,
            "undecodable: field `type` is invalid: \"task.created\\0\\u{1b}[2J\" has control characters",
        ),
        (
            1,
            "undecodable: field `v` is invalid: `99999999999999999999999` is not a version number",
        ),
        (
            2,
            "undecodable: field `ts` is invalid: `\u{7}yesterday` is not an RFC 3339 UTC time",
        ),
        (
            3,
            "undecodable: body of event type `task.created` does not match its struct",
        ),
        (7, "undecodable: field `type` appears more than once"),
    ] {
        let (name, fields) = &hostile[what];
        let letter = letters
            .iter()
            .find(|letter| {
                letter.fields.iter().any(|(field, value)| {
                    field == b"dlq.reason" && value.starts_with(reason.as_bytes())
                })
            })
            .unwrap_or_else(|| panic!("{name}: no dead letter says {reason}"));
        for field in fields {
            assert!(letter.fields.contains(field), "{name}: {field:?} kept");
        }
    }
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

#[tokio::test]
async fn malformed_entries_go_to_the_dead_letter_stream_and_the_consumer_keeps_going() {
    let server = RedisServer::start();
    let stream = unique("malformed");
    let (seen, consumer, running) = run_recording(&server, &stream, "g").await;
    let publisher = publisher_to(server.url(), &stream).await;

    publish_tasks(&publisher, 0..5).await;
    let mut redis = connection(&server).await;
    let junk: Vec<Vec<(&str, &[u8])>> = vec![
        vec![("foo", b"bar")],
        vec![
            ("id", b"1"),
            ("type", b"task.created"),
            ("v", b"1"),
            ("origin", b"hand-written"),
            ("ts", b"2026-01-01T00:00:00.000Z"),
            ("body", b"{not json"),
        ],
        vec![("data", b"\xff\xfe binary")],
    ];
    for fields in &junk {
        let _: String = redis.xadd(&stream, "*", fields).await.unwrap();
    }
    let wrong_shape = publisher
        .raw_envelope(
            "task.created",
            &serde_json::json!({"n": "seven"}),
            PublishOptions::new(),
        )
        .unwrap();
    publisher
        .publish_envelopes(vec![wrong_shape])
        .await
        .unwrap();
    publish_tasks(&publisher, 5..10).await;

    wait_until("10 handled and 4 dead-lettered", || {
        count(&seen) == 10 && consumer.status().dead_lettered == 4
    })
    .await;
    stop(running).await;

    let reasons: Vec<String> = dead_letters(&server, &stream)
        .await
        .iter()
        .map(|l| l["dlq.reason"].clone())
        .collect();
    // Deliveries run concurrently, so the dead letters may come in any order.
    assert_eq!(reasons.len(), 4);
    for expected in [
        "undecodable: missing field `type`",
        "undecodable: field `body` is invalid: not valid JSON",
        "undecodable: field `data` is not valid UTF-8",
        "undecodable: body of event type `task.created` does not match its struct",
    ] {
        let matching = reasons
            .iter()
            .filter(|reason| reason.starts_with(expected))
            .count();
        assert_eq!(matching, 1, "{expected} in {reasons:?}");
    }
    assert_eq!(
        consumer.status().retried,
        0,
        "undecodable entries are not retried"
    );
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

/// A consumer of group `g` on `stream` whose claim time, an hour, is far longer than any test:
/// no entry of it is taken over by `claim_idle`.
fn patient(server: &RedisServer, stream: &str) -> events::ConsumerBuilder {
    quick_consumer(server, stream, "g")
        .claim_idle(Duration::from_secs(3600))
        .handler_timeout(Duration::from_secs(1800))
}

/// How the first consumer of [`leave_then_finish`] goes.
#[derive(Clone, Copy, PartialEq)]
enum Leaving {
    /// Dropped mid-handler, as a crash.
    Crash,
    /// Stopped, its shutdown timeout passing with the handlers unfinished.
    Stop,
}

/// Runs a consumer built from `first`, whose handler never finishes, until it started 10 events
/// of `stream`, and ends it as `leaving` says; then one built from `then` until it finished them
/// all, each as its second delivery, taken over from the first.
async fn leave_then_finish(
    server: &RedisServer,
    stream: &str,
    leaving: Leaving,
    first: events::ConsumerBuilder,
    then: events::ConsumerBuilder,
) {
    let started = Arc::new(AtomicU32::new(0));
    let leaver = first.handle(stuck(&started)).build().await.unwrap();
    let running = spawn(&leaver);
    publish_tasks(&publisher_to(server.url(), stream).await, 0..10).await;
    wait_until("the first consumer started all 10", || {
        started.load(Ordering::SeqCst) == 10
    })
    .await;
    if leaving == Leaving::Stop {
        stop(running).await;
    } else {
        running.1.abort();
        let _ = running.1.await;
    }
    drop(leaver);
    assert_eq!(
        pending(server, stream, "g").await,
        10,
        "the first consumer left its entries pending"
    );

    let seen = seen();
    let survivor = then.handle(recording(&seen)).build().await.unwrap();
    let running = spawn(&survivor);
    wait_until("the survivor finished all 10", || count(&seen) == 10).await;
    stop(running).await;
    assert!(
        seen.lock()
            .unwrap()
            .values()
            .all(|attempts| attempts == &[2]),
        "taken over as the second delivery"
    );
    assert_eq!(survivor.status().reclaimed, 10);
    assert_eq!(pending(server, stream, "g").await, 0);
}

#[tokio::test]
async fn entries_of_a_consumer_dropped_mid_handler_are_finished_by_another() {
    let server = RedisServer::start();
    let stream = unique("crash");
    let named = |name| quick_consumer(&server, &stream, "g").consumer_name(name);
    let (doomed, survivor) = (named("doomed"), named("survivor"));
    leave_then_finish(&server, &stream, Leaving::Crash, doomed, survivor).await;
}

#[tokio::test]
async fn a_consumer_restarted_under_its_name_takes_back_its_earlier_runs_entries_at_once() {
    let server = RedisServer::start();
    let stream = unique("restart");
    // Claim times far longer than the test: only taking back can finish the entries.
    let steady = || patient(&server, &stream).consumer_name("steady");
    leave_then_finish(&server, &stream, Leaving::Crash, steady(), steady()).await;
}

#[tokio::test]
async fn a_consumer_stopping_with_unfinished_entries_hands_them_to_the_others_at_once() {
    let server = RedisServer::start();
    let stream = unique("hand-over");
    // Claim times far longer than the test: only the hand-over lets another take them soon.
    let named = |name| {
        patient(&server, &stream)
            .consumer_name(name)
            .shutdown_timeout(Duration::from_millis(200))
    };
    let (leaving, staying) = (named("leaving"), named("staying"));
    leave_then_finish(&server, &stream, Leaving::Stop, leaving, staying).await;
}

#[tokio::test]
async fn a_consumer_started_under_the_name_of_a_running_one_takes_nothing_from_it() {
    let server = RedisServer::start();
    let stream = unique("twice");
    let started = Arc::new(AtomicU32::new(0));
    // Both named as every consumer of one process is by default.
    let steady = || patient(&server, &stream).handle(stuck(&started)).build();
    let first = steady().await.unwrap();
    let running = spawn(&first);
    publish_tasks(&publisher_to(server.url(), &stream).await, 0..10).await;
    wait_until("the first consumer started all 10", || {
        started.load(Ordering::SeqCst) == 10
    })
    .await;
    let second = steady().await.unwrap();
    let also_running = spawn(&second);
    // Many claim intervals: the second taking the first's entries would start them again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(started.load(Ordering::SeqCst), 10, "nothing started twice");
    assert_eq!(second.status().reclaimed, 0);
    running.1.abort();
    also_running.1.abort();
}

#[tokio::test]
async fn a_redis_restart_mid_stream_loses_nothing() {
    let mut server = RedisServer::own_durable();
    let stream = unique("restart");
    let (seen, _, running) = run_recording(&server, &stream, "g").await;
    let publisher = publisher_to(server.url(), &stream).await;
    publish_tasks(&publisher, 0..100).await;
    wait_until("the first 100 are handled", || count(&seen) == 100).await;

    server.restart();
    for n in 100..200 {
        publish_retrying(&publisher, &TaskCreated { n }).await;
    }
    wait_until("all 200 are handled", || count(&seen) == 200).await;
    stop(running).await;

    assert_eq!(
        seen.lock().unwrap().keys().copied().collect::<Vec<_>>(),
        (0..200).collect::<Vec<_>>()
    );
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

#[tokio::test]
async fn graceful_shutdown_acknowledges_exactly_what_was_handled() {
    let server = RedisServer::start();
    let stream = unique("shutdown");
    let handled = Arc::new(Mutex::new(BTreeSet::new()));
    let slow = {
        let handled = Arc::clone(&handled);
        move |_: TaskCreated, context: Context| {
            let handled = Arc::clone(&handled);
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                handled
                    .lock()
                    .unwrap()
                    .insert(context.entry_id().to_owned());
                Ok(())
            }
        }
    };
    let consumer = quick_consumer(&server, &stream, "g")
        .concurrency(4)
        .max_unacked(8)
        .batch_size(8)
        .handle(slow)
        .build()
        .await
        .unwrap();
    publish_tasks(&publisher_to(server.url(), &stream).await, 0..100).await;
    let running = spawn(&consumer);
    wait_until("some events are handled", || {
        handled.lock().unwrap().len() >= 10
    })
    .await;
    stop(running).await;

    let handled = handled.lock().unwrap().clone();
    assert!(handled.len() < 100, "shutdown came before the end");
    let entries = read_range(&mut connection(&server).await, &stream, "-", "+", 1000)
        .await
        .unwrap();
    let pending_ids: BTreeSet<String> = {
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("g")
            .arg("-")
            .arg("+")
            .arg(1000)
            .query_async(&mut connection(&server).await)
            .await
            .unwrap();
        pending.into_iter().map(|(id, ..)| id).collect()
    };
    let info: Vec<BTreeMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(&mut connection(&server).await)
        .await
        .unwrap();
    let last_delivered: String =
        redis::from_redis_value_ref(&info[0]["last-delivered-id"]).unwrap();
    let acked: BTreeSet<String> = entries
        .iter()
        .map(|entry| entry.id.clone())
        .filter(|id| entry_le(id, &last_delivered) && !pending_ids.contains(id))
        .collect();
    assert_eq!(
        acked, handled,
        "acknowledged entries are exactly the handled ones"
    );
    assert_eq!(consumer.status().in_flight, 0);
    assert!(!consumer.status().running);
}

/// An idle consumer's reads block for 20 s; it stops at once all the same, with nothing left
/// pending, however many times it is started and stopped.
#[tokio::test]
async fn an_idle_consumer_stops_without_waiting_out_its_blocking_read() {
    let server = RedisServer::start();
    let stream = unique("unblock");
    let seen = seen();
    let consumer = quick_consumer(&server, &stream, "g")
        .block(Duration::from_secs(20))
        .handle(recording(&seen))
        .build()
        .await
        .unwrap();
    let publisher = publisher_to(server.url(), &stream).await;
    for round in 0..3 {
        let running = spawn(&consumer);
        publish_tasks(&publisher, round * 10..round * 10 + 10).await;
        wait_until("the round's events are handled", || {
            count(&seen) as u64 == round * 10 + 10
        })
        .await;
        // Idle now: its reads wait for entries that do not come.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stopping = std::time::Instant::now();
        stop(running).await;
        let took = stopping.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "stopping took {took:?}, waiting out the 20 s block"
        );
    }
    assert_eq!(pending(&server, &stream, "g").await, 0);
    assert!(seen.lock().unwrap().values().all(|runs| runs.len() == 1));
    // Entries added after the stop are read by the next run, none was taken by a read ended
    // early.
    publish_tasks(&publisher, 30..40).await;
    let running = spawn(&consumer);
    wait_until("the last events are handled", || count(&seen) == 40).await;
    stop(running).await;
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

/// Whether stream entry id `a` is at or before `b`.
fn entry_le(a: &str, b: &str) -> bool {
    let parse = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    };
    parse(a) <= parse(b)
}

#[tokio::test]
async fn panics_and_timeouts_are_failures_with_reasons() {
    let server = RedisServer::start();
    let stream = unique("panic");
    let handler = |task: TaskCreated, _: Context| async move {
        if task.n == 1 {
            panic!("boom on {}", task.n);
        }
        if task.n == 2 {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        Ok(())
    };
    let consumer = quick_consumer(&server, &stream, "g")
        .max_attempts(2)
        .handle_with(
            events::HandlerOptions::new().timeout(Duration::from_millis(100)),
            handler,
        )
        .build()
        .await
        .unwrap();
    let running = spawn(&consumer);
    publish_tasks(&publisher_to(server.url(), &stream).await, 0..4).await;
    wait_until("two handled, two dead-lettered", || {
        let status = consumer.status();
        status.processed == 2 && status.dead_lettered == 2
    })
    .await;
    stop(running).await;

    let reasons: BTreeSet<String> = dead_letters(&server, &stream)
        .await
        .iter()
        .map(|l| l["dlq.reason"].clone())
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from([
            "handler panicked: boom on 1".to_owned(),
            "handler timed out after 100ms".to_owned()
        ])
    );
}

#[tokio::test]
async fn events_without_a_handler_are_skipped_or_dead_lettered_and_patterns_match() {
    let server = RedisServer::start();
    let stream = unique("unhandled");
    let publisher = publisher_to(server.url(), &stream).await;
    let logins = Arc::new(Mutex::new(Vec::new()));
    let pattern = {
        let logins = Arc::clone(&logins);
        move |context: Context| {
            logins.lock().unwrap().push((
                context.event_type().to_owned(),
                context.envelope().body.clone(),
            ));
            futures::future::ready(Ok::<(), HandlerError>(()))
        }
    };
    let seen = seen();
    let skipping = quick_consumer(&server, &stream, "skip")
        .handle(recording(&seen))
        .handle_pattern("audit.*", pattern)
        .build()
        .await
        .unwrap();
    let strict = quick_consumer(&server, &stream, "strict")
        .unhandled(Unhandled::DeadLetter)
        .handle(recording(&seen))
        .build()
        .await
        .unwrap();
    publisher
        .publish(&Login { user: "ada".into() })
        .await
        .unwrap();
    publisher
        .publish_raw("billing.charged", serde_json::json!({"amount": 5}))
        .await
        .unwrap();
    publisher.publish(&TaskCreated { n: 1 }).await.unwrap();
    let running = [spawn(&skipping), spawn(&strict)];

    wait_until("both groups settled all three", || {
        let (a, b) = (skipping.status(), strict.status());
        a.processed + a.skipped == 3 && b.processed + b.dead_lettered == 3
    })
    .await;
    for run in running {
        stop(run).await;
    }

    assert_eq!(
        *logins.lock().unwrap(),
        [("audit.login".to_owned(), r#"{"user":"ada"}"#.to_owned())]
    );
    assert_eq!(
        (skipping.status().processed, skipping.status().skipped),
        (2, 1)
    );
    assert_eq!(
        (strict.status().processed, strict.status().dead_lettered),
        (1, 2)
    );
    let reasons: BTreeSet<String> = dead_letters(&server, &stream)
        .await
        .iter()
        .map(|l| l["dlq.reason"].clone())
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from([
            "no handler for event type `audit.login`".to_owned(),
            "no handler for event type `billing.charged`".to_owned(),
        ])
    );
}

#[tokio::test]
#[should_panic(
    expected = "a handler for event type `task.created` version 1 is already registered"
)]
async fn registering_two_handlers_for_one_type_panics_at_the_caller() {
    let seen = seen();
    let _ = Consumer::builder("redis://127.0.0.1:1")
        .handle(recording(&seen))
        .handle(recording(&seen));
}

#[tokio::test]
async fn a_vanished_group_is_recreated_where_it_was() {
    let server = RedisServer::start();
    let stream = unique("nogroup");
    let (seen, _, running) = run_recording(&server, &stream, "g").await;
    let publisher = publisher_to(server.url(), &stream).await;
    publish_tasks(&publisher, 0..10).await;
    wait_until("the first 10 are handled", || count(&seen) == 10).await;

    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&stream)
        .arg("g")
        .query_async(&mut connection(&server).await)
        .await
        .unwrap();
    publish_tasks(&publisher, 10..20).await;
    wait_until("the next 10 are handled", || count(&seen) == 20).await;
    stop(running).await;

    assert!(
        seen.lock()
            .unwrap()
            .values()
            .all(|attempts| attempts.len() == 1),
        "nothing handled twice"
    );
}

#[tokio::test]
async fn trimmed_pending_entries_are_cleaned_not_looped_on() {
    let server = RedisServer::start();
    let stream = unique("trimmed");
    let publisher = publisher_to(server.url(), &stream).await;
    let mut redis = connection(&server).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut redis)
        .await
        .unwrap();
    publish_tasks(&publisher, 0..10).await;
    // A consumer that died read all ten; then the stream was trimmed under it.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("dead")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: u64 = redis::cmd("XTRIM")
        .arg(&stream)
        .arg("MAXLEN")
        .arg(4)
        .query_async(&mut redis)
        .await
        .unwrap();

    let (seen, consumer, running) = run_recording(&server, &stream, "g").await;
    wait_until("the 4 remaining are handled", || count(&seen) == 4).await;
    wait_until("the 6 trimmed ids are cleaned", || {
        consumer.status().cleaned == 6
    })
    .await;
    stop(running).await;

    assert_eq!(
        seen.lock().unwrap().keys().copied().collect::<Vec<_>>(),
        [6, 7, 8, 9]
    );
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

#[tokio::test]
async fn stale_consumers_are_removed_only_without_pending_entries() {
    let server = RedisServer::start();
    let stream = unique("stale");
    let mut redis = connection(&server).await;
    let (_, consumer, running) = run_recording(&server, &stream, "g").await;
    wait_until("the group exists", || consumer.status().running).await;
    stop(running).await;
    publish_tasks(&publisher_to(server.url(), &stream).await, 0..1).await;
    for name in ["idle-empty", "idle-busy"] {
        let _: i64 = redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(&stream)
            .arg("g")
            .arg(name)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("idle-busy")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let removed = consumer
        .remove_stale_consumers(Duration::from_millis(20))
        .await
        .unwrap();

    assert_eq!(removed, ["idle-empty"]);
    let left: Vec<BTreeMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&stream)
        .arg("g")
        .query_async(&mut redis)
        .await
        .unwrap();
    let names: BTreeSet<String> = left
        .iter()
        .map(|c| redis::from_redis_value_ref::<String>(&c["name"]).unwrap())
        .collect();
    assert!(
        names.contains("idle-busy"),
        "a consumer with pending entries stays"
    );
    assert!(!names.contains("idle-empty"));
}

#[tokio::test]
async fn hooks_see_every_delivery() {
    let server = RedisServer::start();
    let stream = unique("hooks");
    let log = Arc::new(Mutex::new(Vec::new()));
    let note = |tag: &'static str| {
        let log = Arc::clone(&log);
        move |context: &Context| {
            log.lock()
                .unwrap()
                .push(format!("{tag} {}", context.attempt()))
        }
    };
    let on_error = {
        let log = Arc::clone(&log);
        move |context: &Context, failure: &events::Failure| {
            log.lock()
                .unwrap()
                .push(format!("error {} {failure}", context.attempt()))
        }
    };
    let handler = |_: TaskCreated, context: Context| async move {
        if context.attempt() == 1 {
            Err(HandlerError::from("first try fails"))
        } else {
            Ok(())
        }
    };
    let consumer = quick_consumer(&server, &stream, "g")
        .before(note("before"))
        .after(note("after"))
        .on_error(on_error)
        .handle(handler)
        .build()
        .await
        .unwrap();
    let running = spawn(&consumer);
    publish_tasks(&publisher_to(server.url(), &stream).await, 0..1).await;
    wait_until("the event is handled", || consumer.status().processed == 1).await;
    stop(running).await;

    assert_eq!(
        *log.lock().unwrap(),
        [
            "before 1",
            "after 1",
            "error 1 handler failed: first try fails",
            "before 2",
            "after 2"
        ]
    );
}

#[tokio::test]
async fn pull_mode_reserves_acks_and_fails() {
    let server = RedisServer::start();
    let stream = unique("pull");
    let publisher = publisher_to(server.url(), &stream).await;
    publish_tasks(&publisher, 0..5).await;
    let _: String = connection(&server)
        .await
        .xadd(&stream, "*", &[("junk", "x")])
        .await
        .unwrap();
    let mut pull = quick_consumer(&server, &stream, "g")
        .max_attempts(2)
        .backoff(Backoff::exponential(
            Duration::from_millis(10),
            Duration::from_millis(10),
        ))
        .build_pull()
        .await
        .unwrap();

    let first = pull.reserve(10).await.unwrap();
    assert_eq!(
        first.len(),
        5,
        "the junk entry is dead-lettered, not returned"
    );
    let numbers: Vec<u64> = first
        .iter()
        .map(|r| r.envelope.decode_body::<TaskCreated>().unwrap().n)
        .collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4]);
    pull.ack(&first[..3]).await.unwrap();
    pull.fail(&first[3..], "downstream unavailable")
        .await
        .unwrap();
    assert_eq!(pending(&server, &stream, "g").await, 2);

    tokio::time::sleep(Duration::from_millis(20)).await;
    let retried = pull.reserve(10).await.unwrap();
    assert_eq!(
        retried.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [2, 2]
    );
    assert_eq!(retried[0].entry_id, first[3].entry_id);
    pull.ack(&retried[..1]).await.unwrap();
    pull.fail(&retried[1..], "still unavailable").await.unwrap();

    let letters = dead_letters(&server, &stream).await;
    assert_eq!(letters.len(), 2);
    assert!(letters[0]["dlq.reason"].starts_with("undecodable: missing field `type`"));
    assert_eq!(
        letters[1]["dlq.reason"],
        "failed after 2 attempts: still unavailable"
    );
    assert_eq!(pending(&server, &stream, "g").await, 0);
    assert!(pull.reserve(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn configuration_mistakes_are_named_before_connecting() {
    let seen = seen();
    let nowhere = "redis://127.0.0.1:1";
    let message =
        |builder: ConsumerBuilder| async move { builder.build().await.unwrap_err().to_string() };

    let no_stream = Consumer::builder(nowhere)
        .group("g")
        .handle(recording(&seen));
    assert!(
        message(no_stream)
            .await
            .contains("the consumer has no stream")
    );
    let no_group = Consumer::builder(nowhere)
        .stream("s")
        .handle(recording(&seen));
    assert!(
        message(no_group)
            .await
            .contains("the consumer has no group")
    );
    let no_handler = Consumer::builder(nowhere).stream("s").group("g");
    assert!(
        message(no_handler)
            .await
            .contains("the consumer has no handlers")
    );
    let bad_pattern = Consumer::builder(nowhere)
        .stream("s")
        .group("g")
        .handle_pattern("audit.[", |_: Context| async { Ok(()) });
    assert!(
        message(bad_pattern)
            .await
            .starts_with("invalid route pattern `audit.[`")
    );
    let slow_handler = Consumer::builder(nowhere)
        .stream("s")
        .group("g")
        .claim_idle(Duration::from_secs(60))
        .handle_with(
            events::HandlerOptions::new().timeout(Duration::from_secs(90)),
            recording(&seen),
        );
    assert!(
        message(slow_handler)
            .await
            .contains("must be shorter than claim_idle")
    );
    let short_claim = Consumer::builder(nowhere)
        .stream("s")
        .group("g")
        .claim_idle(Duration::from_secs(1))
        .handle(recording(&seen));
    assert!(
        message(short_claim)
            .await
            .contains("claim_idle (1s) must be longer than the handler timeout")
    );
    let no_window = Consumer::builder(nowhere)
        .stream("s")
        .group("g")
        .idempotency_ttl(Duration::from_micros(500))
        .handle(recording(&seen));
    assert!(message(no_window).await.starts_with(
        "invalid configuration: idempotency_ttl (500µs) must be at least a millisecond"
    ));
    let no_interval = Consumer::builder(nowhere)
        .stream("s")
        .group("g")
        .claim_interval(Duration::ZERO)
        .handle(recording(&seen));
    assert!(
        message(no_interval)
            .await
            .contains("claim_interval (0ns) must be at least a millisecond")
    );
    let dead_letters_read_again = Consumer::builder(nowhere)
        .stream("s")
        .stream("failures")
        .group("g")
        .dead_letter_stream("failures")
        .handle(recording(&seen));
    assert!(
        message(dead_letters_read_again)
            .await
            .contains("dead_letter_stream `failures` is also a stream the consumer reads")
    );
}

#[tokio::test]
async fn a_new_group_replays_from_an_entry_id_or_a_time() {
    let server = RedisServer::start();
    let stream = unique("replay");
    let publisher = publisher_to(server.url(), &stream).await;
    let mut published = Vec::new();
    for n in 0..10 {
        published.push(publisher.publish(&TaskCreated { n }).await.unwrap());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let entries = read_range(&mut connection(&server).await, &stream, "-", "+", 100)
        .await
        .unwrap();
    let sixth_time = entries[6].decode().unwrap().timestamp;

    let after_id = seen();
    let from_id = quick_consumer(&server, &stream, "from-id")
        .start_from(StartFrom::Id(published[4].entry_id.clone()))
        .handle(recording(&after_id))
        .build()
        .await
        .unwrap();
    let since_time = seen();
    let from_time = quick_consumer(&server, &stream, "from-time")
        .start_from(StartFrom::Time(sixth_time))
        .handle(recording(&since_time))
        .build()
        .await
        .unwrap();
    let running = [spawn(&from_id), spawn(&from_time)];
    wait_until("both groups caught up", || {
        count(&after_id) == 5 && count(&since_time) == 4
    })
    .await;
    for run in running {
        stop(run).await;
    }

    let keys = |seen: &Seen| seen.lock().unwrap().keys().copied().collect::<Vec<_>>();
    assert_eq!(
        keys(&after_id),
        [5, 6, 7, 8, 9],
        "entries after the given id"
    );
    assert_eq!(
        keys(&since_time),
        [6, 7, 8, 9],
        "entries at or after the given time"
    );
}

#[tokio::test]
async fn a_redis_restart_that_loses_the_group_is_survived() {
    let mut server = RedisServer::own();
    let stream = unique("amnesia");
    let (seen, _, running) = run_recording(&server, &stream, "g").await;
    let publisher = publisher_to(server.url(), &stream).await;
    publish_tasks(&publisher, 0..10).await;
    wait_until("the first 10 are handled", || count(&seen) == 10).await;

    // This server keeps nothing: the stream and the group are gone after the restart.
    server.restart();
    for n in 10..20 {
        publish_retrying(&publisher, &TaskCreated { n }).await;
    }
    wait_until("the 10 published after the restart are handled", || {
        count(&seen) == 20
    })
    .await;
    stop(running).await;
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

#[tokio::test]
async fn never_more_entries_unacknowledged_than_max_unacked() {
    let server = RedisServer::start();
    let stream = unique("backpressure");
    let seen = seen();
    let consumer = quick_consumer(&server, &stream, "g")
        .max_unacked(5)
        .batch_size(100)
        .concurrency(100)
        .handle(recording_after(&seen, Duration::from_millis(20)))
        .build()
        .await
        .unwrap();
    publish_tasks(&publisher_to(server.url(), &stream).await, 0..60).await;
    let running = spawn(&consumer);
    let mut most_pending = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count(&seen) < 60 {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: {} handled",
            count(&seen)
        );
        most_pending = most_pending.max(pending(&server, &stream, "g").await);
        assert!(consumer.status().in_flight <= 5);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop(running).await;

    assert!(
        most_pending <= 5,
        "at most 5 pending at once, saw {most_pending}"
    );
    assert!(most_pending >= 3, "the bound was used, saw {most_pending}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filled_stream_is_drained_without_waiting_out_a_blocking_read() {
    let server = RedisServer::start();
    let stream = unique("drain");
    let publisher = publisher_to(server.url(), &stream).await;
    publish_tasks(&publisher, 0..1_000).await;
    // Twelve drains at once, each by a consumer of a new group. A read served after a later one
    // finds nothing and blocks: its 20 s must not hold up the entries the other read brought.
    // Drains take a second or two here, more when other tests share the cores.
    let mut drains = Vec::new();
    for round in 0..12 {
        let seen = seen();
        let consumer = quick_consumer(&server, &stream, &format!("drain-{round}"))
            .block(Duration::from_secs(20))
            .handle(recording(&seen))
            .build()
            .await
            .unwrap();
        drains.push((seen, consumer));
    }
    let started = std::time::Instant::now();
    let running: Vec<Running> = drains.iter().map(|(_, consumer)| spawn(consumer)).collect();
    let mut took = Vec::new();
    while took.len() < drains.len() {
        for (seen, _) in &drains[took.len()..] {
            if count(seen) < 1_000 {
                break;
            }
            took.push(started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "drains stalled: {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Stopped at once: a graceful stop would wait out the blocking reads.
    for (_, task) in running {
        task.abort();
    }
    let slowest = took.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(10),
        "the slowest of 12 drains of 1,000 entries took {slowest:?}: {took:?}"
    );
}

#[tokio::test]
async fn events_arriving_one_by_one_are_handled_without_waiting_for_the_next() {
    let server = RedisServer::start();
    let stream = unique("trickle");
    let handled_at: Arc<Mutex<BTreeMap<u64, std::time::Instant>>> = Arc::default();
    let consumer = quick_consumer(&server, &stream, "g")
        .block(Duration::from_secs(5))
        .handle({
            let handled_at = Arc::clone(&handled_at);
            move |task: TaskCreated, _: Context| {
                handled_at
                    .lock()
                    .unwrap()
                    .insert(task.n, std::time::Instant::now());
                futures::future::ready(Ok::<(), HandlerError>(()))
            }
        })
        .build()
        .await
        .unwrap();
    let running = spawn(&consumer);
    wait_until("the consumer runs", || consumer.status().running).await;
    let publisher = publisher_to(server.url(), &stream).await;
    let mut published_at = BTreeMap::new();
    // Pauses of 20 to 150 ms between events: sometimes a read is out, sometimes two.
    for n in 0..40 {
        tokio::time::sleep(Duration::from_millis(20 + (n * 37) % 131)).await;
        published_at.insert(n, std::time::Instant::now());
        publisher.publish(&TaskCreated { n }).await.unwrap();
    }
    wait_until("all 40 are handled", || {
        handled_at.lock().unwrap().len() == 40
    })
    .await;
    stop(running).await;
    let handled_at = handled_at.lock().unwrap();
    let slowest = published_at
        .iter()
        .map(|(n, at)| handled_at[n].duration_since(*at))
        .max()
        .unwrap();
    assert!(
        slowest < Duration::from_millis(500),
        "an event waited {slowest:?} (a blocking read is 5 s)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn handlers_slower_than_the_reads_take_a_backlog_in_full_batches() {
    // A server of the test's own: its command counts are this consumer's.
    let server = RedisServer::own();
    let stream = unique("fair-reads");
    let publisher = publisher_to(server.url(), &stream).await;
    publish_tasks(&publisher, 0..2_000).await;
    let seen = seen();
    let consumer = quick_consumer(&server, &stream, "workers")
        .batch_size(100)
        .max_unacked(400)
        .concurrency(8)
        .handle(recording_after(&seen, Duration::from_millis(1)))
        .build()
        .await
        .unwrap();
    let before = calls(&server, "xreadgroup").await;
    let running = spawn(&consumer);
    wait_until("every task handled", || count(&seen) == 2_000).await;
    let reads = calls(&server, "xreadgroup").await - before;
    stop(running).await;
    // 2,000 entries are 20 reads of 100; a read for each few deliveries settled would be hundreds.
    assert!(reads <= 40, "{reads} reads for 2,000 entries");
    assert!(
        seen.lock()
            .unwrap()
            .values()
            .all(|attempts| attempts == &[1])
    );
    assert_eq!(pending(&server, &stream, "workers").await, 0);
}
