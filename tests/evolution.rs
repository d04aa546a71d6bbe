//! Schema evolution against a real redis-server: handlers per version, older versions upcast to
//! the current struct, and a producer deploying a new version before its consumers (a rolling
//! deploy) losing nothing and dead-lettering nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{
    RedisServer, Running, pending, publisher_to, quick_consumer, unique, wait_until,
};
use events::{Backoff, Context, Event, HandlerError, NewerVersions, Publisher};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "member.joined")]
struct JoinedV1 {
    name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "member.joined", version = 2, previous = JoinedV1)]
struct Joined {
    first: String,
    last: String,
}

impl From<JoinedV1> for Joined {
    fn from(v1: JoinedV1) -> Self {
        let (first, last) = v1.name.split_once(' ').unwrap_or((&v1.name, ""));
        Self {
            first: first.into(),
            last: last.into(),
        }
    }
}

/// What handlers saw: (handler, first name, version of the entry).
type Seen = Arc<Mutex<Vec<(&'static str, String, u32)>>>;

fn v1(name: &str) -> JoinedV1 {
    JoinedV1 { name: name.into() }
}

fn v2(first: &str, last: &str) -> Joined {
    Joined {
        first: first.into(),
        last: last.into(),
    }
}

async fn publish(publisher: &Publisher, old: &[&str], new: &[(&str, &str)]) {
    for name in old {
        publisher.publish(&v1(name)).await.unwrap();
    }
    for (first, last) in new {
        publisher.publish(&v2(first, last)).await.unwrap();
    }
}

/// Runs the consumer `builder` makes until it has handled `events`, then stops it.
async fn handle_all(builder: events::ConsumerBuilder, events: u64) -> events::Consumer {
    let (consumer, running) = Running::build(builder).await;
    wait_until("every event is handled", || {
        consumer.status().processed == events
    })
    .await;
    running.close().await;
    consumer
}

fn sorted(seen: &Seen) -> Vec<(&'static str, String, u32)> {
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    seen
}

#[tokio::test]
async fn handlers_of_two_versions_each_get_their_own() {
    let server = RedisServer::start();
    let stream = unique("versions");
    let publisher = publisher_to(server.url(), &stream).await;
    publish(&publisher, &["Ada Lovelace"], &[("Grace", "Hopper")]).await;
    let seen: Seen = Arc::default();
    let builder = {
        let (one, two) = (Arc::clone(&seen), Arc::clone(&seen));
        quick_consumer(&server, &stream, "g")
            .handle(move |event: JoinedV1, context: Context| {
                one.lock()
                    .unwrap()
                    .push(("v1", event.name, context.envelope().version));
                async { Ok::<(), HandlerError>(()) }
            })
            .handle(move |event: Joined, context: Context| {
                two.lock()
                    .unwrap()
                    .push(("v2", event.first, context.envelope().version));
                async { Ok::<(), HandlerError>(()) }
            })
    };
    handle_all(builder, 2).await;
    assert_eq!(
        sorted(&seen),
        [
            ("v1", "Ada Lovelace".to_owned(), 1),
            ("v2", "Grace".to_owned(), 2)
        ]
    );
}

#[tokio::test]
async fn an_older_version_goes_to_the_current_handler_upcast() {
    let server = RedisServer::start();
    let stream = unique("upcast");
    let publisher = publisher_to(server.url(), &stream).await;
    publish(&publisher, &["Ada Lovelace"], &[("Grace", "Hopper")]).await;
    let seen: Seen = Arc::default();
    let builder = {
        let seen = Arc::clone(&seen);
        quick_consumer(&server, &stream, "g").handle(move |event: Joined, context: Context| {
            seen.lock().unwrap().push((
                "v2",
                format!("{} {}", event.first, event.last),
                context.envelope().version,
            ));
            async { Ok::<(), HandlerError>(()) }
        })
    };
    handle_all(builder, 2).await;
    assert_eq!(
        sorted(&seen),
        [
            ("v2", "Ada Lovelace".to_owned(), 1),
            ("v2", "Grace Hopper".to_owned(), 2)
        ]
    );
}

/// A consumer of `stream` knowing version 1 only, retrying newer versions for about 6 s.
fn old_consumer(server: &RedisServer, stream: &str, seen: &Seen) -> events::ConsumerBuilder {
    let seen = Arc::clone(seen);
    quick_consumer(server, stream, "g")
        .consumer_name("old")
        .max_attempts(20)
        .backoff(
            Backoff::exponential(Duration::from_millis(300), Duration::from_millis(300))
                .without_jitter(),
        )
        .handle(move |event: JoinedV1, context: Context| {
            seen.lock()
                .unwrap()
                .push(("old", event.name, context.envelope().version));
            async { Ok::<(), HandlerError>(()) }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_hands_newer_versions_to_the_new_consumer() {
    let server = RedisServer::start();
    let stream = unique("rolling");
    let publisher = publisher_to(server.url(), &stream).await;
    let seen: Seen = Arc::default();
    let (old, running) = Running::build(old_consumer(&server, &stream, &seen)).await;
    // The producer is deployed first: version 2 reaches the old consumer.
    publish(
        &publisher,
        &["Ada Lovelace"],
        &[
            ("Grace", "Hopper"),
            ("Edsger", "Dijkstra"),
            ("Barbara", "Liskov"),
        ],
    )
    .await;
    wait_until(
        "the old consumer handles version 1 and retries version 2",
        || {
            let status = old.status();
            status.processed == 1 && status.retried >= 3
        },
    )
    .await;
    assert_eq!(old.status().dead_lettered, 0);
    // Then the consumer: the old one stops (leaving what it could not handle pending), the new one
    // takes it over.
    running.close().await;
    assert_eq!(pending(&server, &stream, "g").await, 3);
    let builder = {
        let seen = Arc::clone(&seen);
        quick_consumer(&server, &stream, "g")
            .consumer_name("new")
            .handle(move |event: Joined, context: Context| {
                seen.lock()
                    .unwrap()
                    .push(("new", event.first, context.envelope().version));
                async { Ok::<(), HandlerError>(()) }
            })
    };
    let new = handle_all(builder, 3).await;
    assert_eq!(
        sorted(&seen),
        [
            ("new", "Barbara".to_owned(), 2),
            ("new", "Edsger".to_owned(), 2),
            ("new", "Grace".to_owned(), 2),
            ("old", "Ada Lovelace".to_owned(), 1),
        ]
    );
    assert_eq!(new.status().dead_lettered, 0);
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

#[tokio::test]
async fn newer_versions_are_dead_lettered_at_once_when_asked() {
    let server = RedisServer::start();
    let stream = unique("newer-dlq");
    let publisher = publisher_to(server.url(), &stream).await;
    publish(&publisher, &[], &[("Grace", "Hopper")]).await;
    let seen: Seen = Arc::default();
    let (consumer, running) = Running::build(
        old_consumer(&server, &stream, &seen).newer_versions(NewerVersions::DeadLetter),
    )
    .await;
    wait_until("the event is dead-lettered", || {
        consumer.status().dead_lettered == 1
    })
    .await;
    running.close().await;
    assert_eq!(consumer.status().retried, 0);
    let letters = events::DeadLetters::new(
        crate::support::connection(&server).await,
        &stream,
        events::dead_letter_stream(&stream),
    )
    .all()
    .await
    .unwrap();
    assert!(
        letters[0]
            .reason
            .contains("has version 2, newer than the version 1 this code knows"),
        "{letters:?}"
    );
}
