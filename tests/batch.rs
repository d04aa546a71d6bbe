//! The batched publisher against a real redis-server: flushed by size, time, flush() and close(),
//! bounded in concurrency and memory, losing nothing when Redis goes away or refuses writes, and
//! telling what it could not write.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::faults::{ConnectionKiller, accept_writes, refuse_writes, stall};
use crate::support::{
    Captured, RedisServer, clients, connection, publisher_to, unique, wait_until,
};
use events::{
    Backoff, BatchConfig, BatchedPublisher, BatchingStrategy, Envelope, Error, Event, Overflow,
    PublishOptions, PublisherConfig, Route, Router, Trim, read_range,
};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing_subscriber::fmt::format::FmtSpan;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "sensor.read")]
struct SensorRead {
    n: u64,
    #[event(range(min = -50.0, max = 150.0))]
    celsius: f64,
}

fn reading(n: u64) -> SensorRead {
    SensorRead { n, celsius: 21.5 }
}

async fn batched(server: &RedisServer, stream: &str, config: BatchConfig) -> BatchedPublisher {
    let publisher = publisher_to(server.url(), stream).await;
    BatchedPublisher::new(publisher, config)
}

/// A batched publisher to `stream` on connections of its own (`BatchedPublisher::connect`).
async fn connected_batched(
    server: &RedisServer,
    stream: &str,
    config: BatchConfig,
) -> BatchedPublisher {
    let publisher = PublisherConfig::new("test").router(Router::single(stream));
    BatchedPublisher::connect(server.url(), publisher, config)
        .await
        .unwrap()
}

async fn stream_len(server: &RedisServer, stream: &str) -> usize {
    connection(server).await.xlen(stream).await.unwrap_or(0)
}

/// The event id of each entry of `stream`, oldest first, read a page at a time.
async fn event_ids(server: &RedisServer, stream: &str) -> Vec<String> {
    let mut redis = connection(server).await;
    let (mut ids, mut after) = (Vec::new(), "-".to_owned());
    loop {
        let page = read_range(&mut redis, stream, &after, "+", 1_000)
            .await
            .unwrap();
        let Some(last) = page.last() else {
            return ids;
        };
        after = format!("({}", last.id);
        ids.extend(page.iter().map(|entry| entry.decode().unwrap().id));
    }
}

/// The event ids in `stream`, checking that none is there twice.
async fn distinct_ids(server: &RedisServer, stream: &str) -> BTreeSet<String> {
    let written = event_ids(server, stream).await;
    let ids: BTreeSet<String> = written.iter().cloned().collect();
    assert_eq!(ids.len(), written.len(), "an event was written twice");
    ids
}

/// Makes `stream` a string, so that Redis refuses every `XADD` to it with WRONGTYPE (a mistake
/// no retry fixes).
async fn refuse_writes_to(server: &RedisServer, stream: &str) {
    let _: () = connection(server)
        .await
        .set(stream, "not a stream")
        .await
        .unwrap();
}

/// Undoes [`refuse_writes_to`].
async fn accept_writes_to(server: &RedisServer, stream: &str) {
    let _: () = connection(server).await.del(stream).await.unwrap();
}

/// Publishes `count` readings from `first` on; returns their event ids.
async fn publish_readings(batched: &BatchedPublisher, first: u64, count: u64) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for n in first..first + count {
        ids.insert(batched.publish(&reading(n)).await.unwrap());
    }
    ids
}

/// Checks that `error` is a flush's or close's [`Error::Unwritten`]: `failed` of its events went to
/// the failed list, which holds `failed_list`.
fn assert_unwritten(error: &Error, failed: usize, failed_list: usize) {
    let said = match error {
        Error::Unwritten {
            failed,
            failed_list,
        } => Some((*failed, *failed_list)),
        _ => None,
    };
    assert_eq!(said, Some((failed, failed_list)), "{error}");
}

/// Checks that `batched`'s failed list holds the events of `ids`, each refused with WRONGTYPE.
fn assert_refused(batched: &BatchedPublisher, ids: &BTreeSet<String>) {
    let failed = batched.failed_messages();
    let failed_ids: BTreeSet<String> = failed
        .iter()
        .map(|failed| failed.envelope.id.clone())
        .collect();
    assert_eq!(&failed_ids, ids);
    assert!(
        failed
            .iter()
            .all(|failed| failed.error.contains("WRONGTYPE")),
        "{failed:?}"
    );
}

/// What dropping `batched` logs.
fn logged_on_drop(batched: BatchedPublisher) -> String {
    let captured = Captured::default();
    let subscriber = captured.subscriber(FmtSpan::NONE);
    tracing::subscriber::with_default(subscriber, || drop(batched));
    captured.text()
}

/// Waits until `predicate` holds for the stream's length, polling.
async fn wait_for_len(
    server: &RedisServer,
    stream: &str,
    what: &str,
    predicate: impl Fn(usize) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if predicate(stream_len(server, stream).await) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_full_queue_is_written_and_the_rest_waits() {
    let server = RedisServer::start();
    let stream = unique("by-size");
    let config = BatchConfig::new()
        .max_size(10)
        .max_wait(Duration::from_secs(3600));
    let batched = batched(&server, &stream, config).await;

    for n in 0..25 {
        batched.publish(&reading(n)).await.unwrap();
    }
    wait_for_len(&server, &stream, "two full batches are written", |len| {
        len == 20
    })
    .await;

    let stats = batched.memory_stats();
    assert_eq!(
        (
            stats.queue_count,
            stats.queued_messages,
            stats.published_total
        ),
        (1, 5, 20)
    );
    assert_eq!(stats.held_messages, 5);
    batched.close().await.unwrap();
    assert_eq!(stream_len(&server, &stream).await, 25);
}

#[tokio::test]
async fn an_old_enough_queue_is_written() {
    let server = RedisServer::start();
    let stream = unique("by-time");
    let config = BatchConfig::new()
        .max_size(1000)
        .max_wait(Duration::from_millis(50));
    let batched = batched(&server, &stream, config).await;

    for n in 0..3 {
        batched.publish(&reading(n)).await.unwrap();
    }
    assert_eq!(
        stream_len(&server, &stream).await,
        0,
        "not yet: the queue is neither full nor old"
    );
    wait_for_len(&server, &stream, "max_wait passes", |len| len == 3).await;
    assert_eq!(batched.memory_stats().queued_messages, 0);
}

#[tokio::test]
async fn flush_returns_once_everything_queued_is_written() {
    let server = RedisServer::start();
    let stream = unique("flush");
    let config = BatchConfig::new()
        .max_size(1000)
        .max_wait(Duration::from_secs(3600))
        .strategy(BatchingStrategy::Prefix(1));
    let batched = batched(&server, &stream, config).await;
    for n in 0..7 {
        batched.publish(&reading(n)).await.unwrap();
    }
    batched
        .publish_raw("sensor.calibrated", serde_json::json!({"offset": 0.5}))
        .await
        .unwrap();
    assert_eq!(
        batched.memory_stats().queue_count,
        1,
        "one queue for every `sensor` event"
    );

    batched.flush().await.unwrap();

    assert_eq!(stream_len(&server, &stream).await, 8);
    let stats = batched.memory_stats();
    assert_eq!(
        (stats.queued_messages, stats.held_messages, stats.held_bytes),
        (0, 0, 0)
    );
    assert_eq!(stats.published_total, 8);
}

#[tokio::test]
async fn close_writes_what_is_queued_and_refuses_more() {
    let server = RedisServer::start();
    let stream = unique("close");
    let config = BatchConfig::new()
        .max_size(1000)
        .max_wait(Duration::from_secs(3600));
    let batched = batched(&server, &stream, config).await;
    for n in 0..12 {
        batched.publish(&reading(n)).await.unwrap();
    }

    batched.close().await.unwrap();

    assert_eq!(stream_len(&server, &stream).await, 12);
    assert!(matches!(
        batched.publish(&reading(99)).await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn invalid_events_fail_their_caller_at_once() {
    let server = RedisServer::start();
    let stream = unique("invalid");
    let batched = batched(&server, &stream, BatchConfig::new()).await;

    let error = batched
        .publish(&SensorRead {
            n: 1,
            celsius: 900.0,
        })
        .await
        .unwrap_err();

    assert!(
        error
            .to_string()
            .starts_with("event `sensor.read` is invalid: invalid field celsius"),
        "{error}"
    );
    assert_eq!(batched.memory_stats().held_messages, 0);
}

#[tokio::test]
async fn no_more_batches_in_flight_than_the_cap() {
    let server = RedisServer::start();
    let stream = unique("concurrency");
    let config = BatchConfig::new()
        .max_size(500)
        .max_wait(Duration::from_secs(3600))
        .max_concurrent_batches(2);
    let batched = std::sync::Arc::new(batched(&server, &stream, config).await);
    for n in 0..20_000 {
        batched.publish(&reading(n)).await.unwrap();
    }
    let flushing = tokio::spawn({
        let batched = std::sync::Arc::clone(&batched);
        async move { batched.flush().await }
    });
    let mut most = 0;
    while !flushing.is_finished() {
        let in_flight = batched.memory_stats().in_flight_batches;
        assert!(in_flight <= 2, "{in_flight} batches in flight");
        most = most.max(in_flight);
        tokio::task::yield_now().await;
    }
    flushing.await.unwrap().unwrap();

    assert_eq!(most, 2, "the cap was reached");
    assert_eq!(stream_len(&server, &stream).await, 20_000);
}

/// A line for each client Redis has connected now (`CLIENT LIST`).
#[tokio::test]
async fn a_connected_batched_publisher_writes_its_batches_side_by_side_and_loses_none_to_killed_connections()
 {
    let server = RedisServer::start();
    let stream = unique("lanes");
    let before = clients(&server).await.len();
    let config = BatchConfig::new()
        .max_size(200)
        .max_wait(Duration::from_secs(3600))
        .max_concurrent_batches(3)
        .max_retries(20)
        .retry_backoff(Backoff::exponential(
            Duration::from_millis(10),
            Duration::from_millis(100),
        ));
    let batched = connected_batched(&server, &stream, config).await;
    let mut ids = publish_readings(&batched, 0, 2_000).await;
    batched.flush().await.unwrap();
    let writing = clients(&server)
        .await
        .iter()
        .filter(|client| client.contains(" cmd=xadd "))
        .count();
    assert_eq!(writing, 3, "ten batches went out through three connections");
    // Its own three and the one that counts them: the connections that checked the server at
    // connect are closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while clients(&server).await.len() != before + 3 {
        assert!(
            Instant::now() < deadline,
            "connections left open: {:#?}",
            clients(&server).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let killer = ConnectionKiller::start(&server, Duration::from_millis(50)).await;
    ids.extend(publish_readings(&batched, 2_000, 18_000).await);
    // What failed while connections kept being killed is kept, and written once they are not.
    let flushed = batched.flush().await;
    let killed = killer.killed();
    drop(killer);
    for _ in 0..50 {
        if batched.memory_stats().failed_messages == 0 {
            break;
        }
        batched.retry_failed().await.ok();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    batched.close().await.unwrap();

    assert!(killed > 0, "no connection was killed");
    let written: BTreeSet<String> = event_ids(&server, &stream).await.into_iter().collect();
    // A batch whose reply a killed connection lost is written again: its events may be there
    // twice, under their one event id each, for consumers to skip.
    assert_eq!(
        written, ids,
        "every event written ({killed} connections killed, the flush under it: {flushed:?})"
    );
    assert_eq!(batched.memory_stats().published_total, 20_000);
}

/// A config whose writes keep retrying while Redis is away.
fn patient(messages: usize, overflow: Overflow) -> BatchConfig {
    BatchConfig::new()
        .max_size(5)
        .max_wait(Duration::from_millis(10))
        .max_queued_messages(messages)
        .overflow(overflow)
        .max_retries(1_000)
        .retry_backoff(Backoff::exponential(
            Duration::from_millis(20),
            Duration::from_millis(50),
        ))
}

#[tokio::test]
async fn publish_waits_while_the_memory_bound_is_reached_then_resumes() {
    let mut server = RedisServer::own();
    let stream = unique("backpressure");
    let batched = batched(&server, &stream, patient(10, Overflow::Wait)).await;
    server.stop();
    for n in 0..10 {
        batched.publish(&reading(n)).await.unwrap();
    }

    let event = reading(10);
    let eleventh = batched.publish(&event);
    tokio::pin!(eleventh);
    let waited = tokio::time::timeout(Duration::from_millis(300), &mut eleventh).await;
    assert!(
        waited.is_err(),
        "the eleventh event waits while ten are held"
    );
    assert_eq!(batched.memory_stats().held_messages, 10);

    server.resume();
    eleventh.await.unwrap();
    batched.close().await.unwrap();
    assert_eq!(distinct_ids(&server, &stream).await.len(), 11);
}

#[tokio::test]
async fn reject_mode_refuses_events_past_the_bound() {
    let mut server = RedisServer::own();
    let stream = unique("reject");
    let batched = batched(&server, &stream, patient(10, Overflow::Reject)).await;
    server.stop();
    for n in 0..10 {
        batched.publish(&reading(n)).await.unwrap();
    }

    let error = batched.publish(&reading(10)).await.unwrap_err();

    assert!(
        matches!(error, Error::Overloaded { messages: 10, .. }),
        "{error}"
    );
    server.resume();
    batched.close().await.unwrap();
    assert_eq!(stream_len(&server, &stream).await, 10);
}

#[tokio::test]
async fn events_that_failed_while_redis_was_down_are_written_once_after_retry_failed() {
    let mut server = RedisServer::own_durable();
    let stream = unique("outage");
    let config = BatchConfig::new()
        .max_size(50)
        .max_wait(Duration::from_millis(5))
        .max_retries(2)
        .retry_backoff(Backoff::exponential(
            Duration::from_millis(10),
            Duration::from_millis(20),
        ));
    let batched = batched(&server, &stream, config).await;

    for n in 0..500 {
        batched.publish(&reading(n)).await.unwrap();
    }
    batched.flush().await.unwrap();
    server.stop();
    for n in 500..1000 {
        batched.publish(&reading(n)).await.unwrap();
    }
    let error = batched.flush().await.unwrap_err();
    assert_unwritten(&error, 500, 500);

    let stats = batched.memory_stats();
    assert_eq!(
        (
            stats.published_total,
            stats.failed_messages,
            stats.failed_total
        ),
        (500, 500, 500)
    );
    assert_eq!(
        stats.held_messages, 500,
        "failed events are held, not dropped"
    );
    assert_eq!(batched.failed_messages().len(), 500);
    assert!(
        batched.failed_messages()[0]
            .error
            .starts_with("could not write event `sensor.read`")
    );

    server.resume();
    // Retried until Redis answers again: the connection may still be coming back.
    let mut retried = 0;
    for _ in 0..50 {
        retried += batched.retry_failed().await.unwrap();
        if batched.memory_stats().failed_messages == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(retried >= 500);

    let stats = batched.memory_stats();
    assert_eq!(
        (
            stats.published_total,
            stats.failed_messages,
            stats.held_messages
        ),
        (1000, 0, 0)
    );
    assert_eq!(
        distinct_ids(&server, &stream).await.len(),
        1000,
        "every event exactly once"
    );
}

#[tokio::test]
async fn drained_failed_events_release_their_memory() {
    let mut server = RedisServer::own();
    let stream = unique("drain");
    let config = BatchConfig::new().max_size(10).max_retries(0);
    let batched = batched(&server, &stream, config).await;
    server.stop();
    for n in 0..10 {
        batched.publish(&reading(n)).await.unwrap();
    }
    let error = batched.flush().await.unwrap_err();
    assert_unwritten(&error, 10, 10);

    let drained = batched.drain_failed();

    assert_eq!(drained.len(), 10);
    assert_eq!(
        drained[3].envelope.decode_body::<SensorRead>().unwrap(),
        reading(3)
    );
    let stats = batched.memory_stats();
    assert_eq!(
        (stats.failed_messages, stats.held_messages, stats.held_bytes),
        (0, 0, 0)
    );
    assert_eq!(stats.failed_total, 10);
    server.resume();
}

#[tokio::test]
async fn dropping_without_close_warns_how_many_events_were_left() {
    let server = RedisServer::start();
    let stream = unique("dropped");
    let config = BatchConfig::new()
        .max_size(1000)
        .max_wait(Duration::from_secs(3600));
    let batched = batched(&server, &stream, config).await;
    for n in 0..7 {
        batched.publish(&reading(n)).await.unwrap();
    }

    let log = logged_on_drop(batched);

    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("unwritten=7"), "{log}");
    assert!(log.contains("call close() before dropping it"), "{log}");
}

#[tokio::test]
async fn close_reports_events_it_could_not_write() {
    let server = RedisServer::start();
    let stream = unique("wrongtype");
    refuse_writes_to(&server, &stream).await;
    let config = BatchConfig::new()
        .max_size(1000)
        .max_wait(Duration::from_secs(3600));
    let batched = batched(&server, &stream, config).await;
    let published = publish_readings(&batched, 0, 5).await;

    let error = batched.close().await.unwrap_err();

    assert_unwritten(&error, 5, 5);
    assert!(
        error.to_string().starts_with(
            "5 events could not be written by this flush and 5 are in the failed list"
        ),
        "{error}"
    );
    assert_refused(&batched, &published);

    accept_writes_to(&server, &stream).await;
    assert_eq!(batched.retry_failed().await.unwrap(), 5);
    batched.close().await.unwrap();
    assert_eq!(distinct_ids(&server, &stream).await, published);
}

#[tokio::test]
async fn flush_reports_events_redis_refused_for_memory_until_they_are_retried() {
    // Through one redis-rs connection, and through connections of its own (its commands packed
    // by hand).
    for connected in [false, true] {
        let server = RedisServer::own();
        let stream = unique("oom");
        let config = BatchConfig::new()
            .max_size(1000)
            .max_wait(Duration::from_secs(3600))
            .max_retries(1)
            .retry_backoff(Backoff::exponential(
                Duration::from_millis(10),
                Duration::from_millis(10),
            ));
        let batched = if connected {
            connected_batched(&server, &stream, config).await
        } else {
            batched(&server, &stream, config).await
        };
        refuse_writes(&server).await;
        let published = publish_readings(&batched, 0, 4).await;

        let error = batched.flush().await.unwrap_err();

        assert_unwritten(&error, 4, 4);
        assert!(
            batched.failed_messages()[0].error.contains("OOM"),
            "{:?}",
            batched.failed_messages()
        );
        // A flush with nothing new still reports the failed list.
        let error = batched.flush().await.unwrap_err();
        assert_unwritten(&error, 0, 4);

        accept_writes(&server).await;
        assert_eq!(batched.retry_failed().await.unwrap(), 4);
        batched.flush().await.unwrap();
        assert_eq!(distinct_ids(&server, &stream).await, published);
        assert_eq!(batched.memory_stats().held_messages, 0);
    }
}

#[tokio::test]
async fn a_connected_batched_publisher_waits_out_stalls_shorter_and_longer_than_its_reply_timeout()
{
    let server = RedisServer::start();
    let stream = unique("stalled");
    let config = BatchConfig::new()
        .max_size(100)
        .max_wait(Duration::from_millis(5))
        .max_concurrent_batches(2);
    let batched = connected_batched(&server, &stream, config).await;
    let mut ids = publish_readings(&batched, 0, 500).await;
    batched.flush().await.unwrap();

    let stalled = Instant::now();
    let _stall = stall(&server, Duration::from_millis(1_500));
    tokio::time::sleep(Duration::from_millis(100)).await;
    ids.extend(publish_readings(&batched, 500, 500).await);
    batched.flush().await.unwrap();

    assert!(
        stalled.elapsed() >= Duration::from_millis(1_400),
        "the stall did not hold the writes back: {:?}",
        stalled.elapsed()
    );
    assert_eq!(distinct_ids(&server, &stream).await, ids);

    // Longer than a reply is waited for (5 s): the batches out are sent again on new
    // connections, and may be written twice once Redis wakes, under their one event id each.
    let _stall = stall(&server, Duration::from_millis(6_500));
    tokio::time::sleep(Duration::from_millis(100)).await;
    ids.extend(publish_readings(&batched, 1_000, 500).await);
    batched.flush().await.unwrap();
    let written: BTreeSet<String> = event_ids(&server, &stream).await.into_iter().collect();
    assert_eq!(written, ids);
    assert_eq!(batched.memory_stats().failed_total, 0);
    batched.close().await.unwrap();
}

#[tokio::test]
async fn a_publish_waiting_for_room_fails_when_close_runs() {
    let server = RedisServer::start();
    let stream = unique("close-while-waiting");
    refuse_writes_to(&server, &stream).await;
    let config = BatchConfig::new()
        .max_size(1)
        .max_queued_messages(1)
        .max_retries(0);
    let batched = batched(&server, &stream, config).await;
    let first = publish_readings(&batched, 0, 1).await;
    let error = batched.flush().await.unwrap_err();
    assert_unwritten(&error, 1, 1);
    // The failed event holds the only room, and nothing will release it.
    let event = reading(1);
    let waiting = batched.publish(&event);
    tokio::pin!(waiting);
    assert!(
        futures::poll!(&mut waiting).is_pending(),
        "the second event waits for room"
    );

    let (closed, waited) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(batched.close(), waiting)
    })
    .await
    .expect("close() wakes the waiting publish");

    assert!(matches!(waited, Err(Error::Closed)), "{waited:?}");
    assert!(
        matches!(
            closed,
            Err(Error::Unwritten {
                failed: 0,
                failed_list: 1
            })
        ),
        "{closed:?}"
    );
    assert_eq!(
        batched.memory_stats().held_messages,
        1,
        "only the failed event is held"
    );
    accept_writes_to(&server, &stream).await;
    assert_eq!(batched.retry_failed().await.unwrap(), 1);
    batched.close().await.unwrap();
    assert_eq!(distinct_ids(&server, &stream).await, first);
}

#[tokio::test]
async fn a_publish_given_room_by_close_fails_instead_of_being_lost() {
    let server = RedisServer::start();
    let stream = unique("room-from-close");
    let config = BatchConfig::new()
        .max_size(1000)
        .max_wait(Duration::from_secs(3600))
        .max_queued_messages(4);
    let batched = Arc::new(batched(&server, &stream, config).await);
    let mut publishers = tokio::task::JoinSet::new();
    for n in 0..8 {
        let batched = Arc::clone(&batched);
        publishers.spawn(async move { batched.publish(&reading(n)).await });
    }
    // Four are queued; the other four wait for the room that close() releases by writing them.
    wait_until("four events are held", || {
        batched.memory_stats().held_messages == 4
    })
    .await;

    batched.close().await.unwrap();

    let (mut accepted, mut refused) = (BTreeSet::new(), 0);
    while let Some(published) = publishers.join_next().await {
        match published.unwrap() {
            Ok(id) => {
                accepted.insert(id);
            }
            Err(Error::Closed) => refused += 1,
            Err(error) => panic!("publish failed: {error}"),
        }
    }
    assert_eq!(refused, 4);
    assert_eq!(distinct_ids(&server, &stream).await, accepted);
    assert_eq!(batched.memory_stats().held_messages, 0);
}

#[tokio::test]
async fn dropping_with_unwritten_or_failed_events_warns_with_both_counts() {
    let server = RedisServer::start();
    let config = BatchConfig::new()
        .max_size(1000)
        .max_wait(Duration::from_secs(3600));
    let (only_failed, both) = (unique("dropped-failed"), unique("dropped-both"));
    let mut logs = Vec::new();
    for (stream, unwritten) in [(&only_failed, 0), (&both, 4)] {
        refuse_writes_to(&server, stream).await;
        let batched = batched(&server, stream, config.clone()).await;
        publish_readings(&batched, 0, 3).await;
        batched.flush().await.unwrap_err();
        publish_readings(&batched, 3, unwritten).await;
        logs.push(logged_on_drop(batched));
    }

    for (log, counts) in logs
        .iter()
        .zip(["unwritten=0 failed=3", "unwritten=4 failed=3"])
    {
        assert!(log.contains("WARN"), "{log}");
        assert!(log.contains(counts), "{log}");
        assert!(log.contains("retry_failed() or drain_failed()"), "{log}");
    }
}

/// The entries of `stream` decoded, by event id.
async fn envelopes_in(
    server: &RedisServer,
    stream: &str,
) -> std::collections::BTreeMap<String, Envelope> {
    let entries = read_range(&mut connection(server).await, stream, "-", "+", 10_000)
        .await
        .unwrap();
    entries
        .iter()
        .map(|entry| {
            let envelope = entry.decode().unwrap();
            (envelope.id.clone(), envelope)
        })
        .collect()
}

#[tokio::test]
async fn a_connected_batched_publisher_writes_hostile_events_intact_and_keeps_what_redis_refuses() {
    // Its batches are packed by hand on connections of its own: every kind of write goes through
    // that path here, side by side with writes Redis refuses.
    let server = RedisServer::start();
    let (plain, refused, typescript) = (unique("packed"), unique("refused"), unique("packed-ts"));
    refuse_writes_to(&server, &refused).await;
    let router = Router::builder()
        .route(Route::to("sensor.*", &plain).trim(Trim::max_len(100_000)))
        .route(Route::to("refused.*", &refused))
        .route(Route::to("ts.*", &typescript).typescript("shop"))
        .build()
        .unwrap();
    let config = BatchConfig::new()
        .max_size(25)
        .max_wait(Duration::from_secs(3600))
        .max_concurrent_batches(2);
    let batched = BatchedPublisher::connect(
        server.url(),
        PublisherConfig::new("test").router(router),
        config,
    )
    .await
    .unwrap();

    let mut expected = publish_readings(&batched, 0, 40).await;
    let huge = format!("{}\u{0}\r\n\u{1b}é🦀", "x".repeat(2 << 20));
    expected.insert(
        batched
            .publish_raw("sensor.huge", json!({ "text": huge }))
            .await
            .unwrap(),
    );
    let headers = (0..3_000).fold(PublishOptions::new(), |options, n| {
        options.header(format!("h{n}"), format!("\r\n{n}\u{7}"))
    });
    let with_headers = batched
        .publish_with(&reading(1_000), headers)
        .await
        .unwrap();
    expected.insert(with_headers.clone());
    let mut refused_ids = BTreeSet::new();
    let mut typescript_ids = BTreeSet::new();
    for n in 0..10 {
        refused_ids.insert(
            batched
                .publish_raw("refused.thing", json!({ "n": n }))
                .await
                .unwrap(),
        );
        typescript_ids.insert(
            batched
                .publish_raw("ts.thing", json!({ "n": n }))
                .await
                .unwrap(),
        );
    }
    let later = batched
        .publish_with(
            &reading(99),
            PublishOptions::new().deliver_after(Duration::from_secs(3600)),
        )
        .await
        .unwrap();

    let error = batched.flush().await.unwrap_err();
    assert_unwritten(&error, 10, 10);
    assert_refused(&batched, &refused_ids);

    let written = envelopes_in(&server, &plain).await;
    assert_eq!(written.keys().cloned().collect::<BTreeSet<_>>(), expected);
    let huge_body: serde_json::Value = serde_json::from_str(
        &written
            .values()
            .find(|envelope| envelope.event_type == "sensor.huge")
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(huge_body["text"], huge);
    let headers = &written[&with_headers].headers;
    assert_eq!(headers.len(), 3_000);
    assert_eq!(headers["h2999"], "\r\n2999\u{7}");
    assert_eq!(
        envelopes_in(&server, &typescript)
            .await
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>(),
        typescript_ids
    );
    let delayed: Vec<String> = connection(&server)
        .await
        .zrange(events::delayed_events(&plain), 0, -1)
        .await
        .unwrap();
    assert_eq!(delayed.len(), 1);
    assert!(delayed[0].contains(&later), "{delayed:?}");
    batched.drain_failed();
    batched.close().await.unwrap();
}
