//! Metrics through the `metrics` facade, read back from a debugging recorder: what was published,
//! handled, failed, dead-lettered and batched, labelled by stream, group and event type.

mod support;

use std::time::Duration;

use events::{
    BatchConfig, BatchedPublisher, Consumer, Context, Event, HandlerError, StartFrom,
    dead_letter_stream, record_stream_stats, stream_stats,
};
use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde::{Deserialize, Serialize};
use support::{RedisServer, connection, publisher_to, unique, wait_until};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "task.created")]
struct TaskCreated {
    n: u64,
}

/// What a snapshot holds: each metric's key and value. Taking one resets counters and histograms.
type Snapshot = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// The value of the metric `name` whose labels include every one of `labels`.
fn value<'a>(
    snapshot: &'a Snapshot,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    snapshot.iter().find_map(|(key, _, _, value)| {
        let key = key.key();
        let matches = key.name() == name
            && labels.iter().all(|(label, wanted)| {
                key.labels()
                    .any(|l| l.key() == *label && l.value() == *wanted)
            });
        matches.then_some(value)
    })
}

fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(snapshot, name, labels) {
        Some(DebugValue::Counter(count)) => *count,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

#[tokio::test]
async fn publishing_handling_and_batching_are_counted_with_their_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let server = RedisServer::start();
    let stream = unique("metrics");
    let publisher = publisher_to(server.url(), &stream).await;
    let consumer = Consumer::builder(server.url())
        .stream(&stream)
        .group("g")
        .start_from(StartFrom::Beginning)
        .block(Duration::from_millis(100))
        .handle(|task: TaskCreated, _: Context| async move {
            if task.n == 2 {
                Err(HandlerError::permanent("two is not allowed"))
            } else {
                Ok(())
            }
        })
        .build()
        .await
        .unwrap();
    for n in 0..3 {
        publisher.publish(&TaskCreated { n }).await.unwrap();
    }
    let batched = BatchedPublisher::new(publisher.clone(), BatchConfig::new().max_size(1000));
    for n in 3..8 {
        batched.publish(&TaskCreated { n }).await.unwrap();
    }
    batched.close().await.unwrap();

    let running = consumer.clone();
    let run = tokio::spawn(async move { running.run_until(std::future::pending()).await });
    wait_until("all 8 settled", || {
        let status = consumer.status();
        status.processed + status.dead_lettered == 8
    })
    .await;
    run.abort();
    let snapshot = snapshotter.snapshot().into_vec();

    let task = [("stream", stream.as_str()), ("event_type", "task.created")];
    assert_eq!(counter(&snapshot, "events_published_total", &task), 8);
    let in_group = [
        ("stream", stream.as_str()),
        ("group", "g"),
        ("event_type", "task.created"),
    ];
    assert_eq!(counter(&snapshot, "events_handled_total", &in_group), 7);
    assert_eq!(counter(&snapshot, "events_failed_total", &in_group), 1);
    assert_eq!(
        counter(&snapshot, "events_dead_lettered_total", &in_group),
        1
    );
    match value(&snapshot, "events_handler_duration_seconds", &in_group) {
        Some(DebugValue::Histogram(durations)) => assert_eq!(durations.len(), 8),
        other => panic!("handler durations: {other:?}"),
    }
    match value(&snapshot, "events_batch_queued_messages", &[]) {
        Some(DebugValue::Gauge(queued)) => assert_eq!(queued.0, 0.0, "all written"),
        other => panic!("queued: {other:?}"),
    }
    match value(&snapshot, "events_batch_size", &[]) {
        Some(DebugValue::Histogram(sizes)) => {
            assert_eq!(sizes.iter().map(|size| size.0).sum::<f64>(), 5.0)
        }
        other => panic!("batch sizes: {other:?}"),
    }

    let stats = stream_stats(
        &mut connection(&server).await,
        &stream,
        &dead_letter_stream(&stream),
    )
    .await
    .unwrap();
    record_stream_stats(&stats);
    let snapshot = snapshotter.snapshot().into_vec();
    match value(
        &snapshot,
        "events_dead_letters",
        &[("stream", stream.as_str())],
    ) {
        Some(DebugValue::Gauge(dead)) => assert_eq!(dead.0, 1.0),
        other => panic!("dead letters: {other:?}"),
    }
    match value(
        &snapshot,
        "events_group_lag",
        &[("stream", stream.as_str()), ("group", "g")],
    ) {
        Some(DebugValue::Gauge(lag)) => assert_eq!(lag.0, 0.0),
        other => panic!("lag: {other:?}"),
    }
}
