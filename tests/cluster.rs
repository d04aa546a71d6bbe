//! The library on a local 3-node Redis Cluster: the same API as on one server.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use events::{
    BatchConfig, BatchedPublisher, Consumer, Context, Event, HandlerError, Publisher,
    PublisherConfig, Route, Router, StartFrom, dead_letter_stream, read_range,
};
use serde::{Deserialize, Serialize};
use support::{RedisCluster, unique, wait_until};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "task.created")]
struct TaskCreated {
    n: u64,
}

async fn cluster_connection(cluster: &RedisCluster) -> redis::cluster_async::ClusterConnection {
    let nodes: Vec<String> = cluster
        .url()
        .trim_start_matches("redis+cluster://")
        .split(',')
        .map(|node| format!("redis://{node}"))
        .collect();
    redis::cluster::ClusterClient::new(nodes)
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_dead_letters_and_duplicates_on_a_cluster() {
    let cluster = RedisCluster::start();
    let stream = unique("cluster");
    let publisher = Publisher::connect(
        &cluster.url(),
        PublisherConfig::new("test").router(Router::single(&stream)),
    )
    .await
    .unwrap();
    let seen: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let handler = {
        let seen = Arc::clone(&seen);
        move |task: TaskCreated, _: Context| {
            let seen = Arc::clone(&seen);
            async move {
                if task.n == 13 {
                    return Err(HandlerError::permanent("unlucky"));
                }
                *seen.lock().unwrap().entry(task.n).or_default() += 1;
                Ok(())
            }
        }
    };
    let mut consumers = Vec::new();
    for name in ["a", "b"] {
        let consumer = Consumer::builder(cluster.url())
            .stream(&stream)
            .group("workers")
            .consumer_name(name)
            .start_from(StartFrom::Beginning)
            .block(Duration::from_millis(100))
            .handle(handler.clone())
            .build()
            .await
            .unwrap();
        consumers.push(consumer);
    }
    let tasks: Vec<TaskCreated> = (0..300).map(|n| TaskCreated { n }).collect();
    publisher.publish_many(&tasks).await.unwrap();
    publisher.publish(&TaskCreated { n: 7 }).await.unwrap();
    let runs: Vec<_> = consumers
        .iter()
        .map(|consumer| {
            let consumer = consumer.clone();
            tokio::spawn(async move { consumer.run_until(std::future::pending()).await })
        })
        .collect();
    wait_until("every event is settled", || {
        let settled: u64 = consumers
            .iter()
            .map(|consumer| {
                let status = consumer.status();
                status.processed + status.dead_lettered + status.duplicates
            })
            .sum();
        settled == 301
    })
    .await;
    for run in runs {
        run.abort();
    }

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 299, "all but the poison event");
    assert!(
        seen.values().all(|count| *count == 1),
        "each once, the repeat of 7 included"
    );
    let mut connection = cluster_connection(&cluster).await;
    let letters = read_range(&mut connection, &dead_letter_stream(&stream), "-", "+", 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
}

#[tokio::test]
async fn the_batched_publisher_writes_streams_in_different_slots() {
    let cluster = RedisCluster::start();
    let prefix = unique("batched");
    let router = Router::builder()
        .route(Route::prefixed("**", format!("{prefix}:")))
        .build()
        .unwrap();
    let publisher = Publisher::connect(&cluster.url(), PublisherConfig::new("test").router(router))
        .await
        .unwrap();
    let batched = BatchedPublisher::new(publisher, BatchConfig::new().max_size(1000));
    for n in 0..100 {
        let event_type = format!("kind{}.happened", n % 10);
        batched
            .publish_raw(&event_type, serde_json::json!({ "n": n }))
            .await
            .unwrap();
    }
    batched.close().await.unwrap();

    let stats = batched.memory_stats();
    assert_eq!((stats.published_total, stats.failed_total), (100, 0));
    let mut connection = cluster_connection(&cluster).await;
    for kind in 0..10 {
        let stream = format!("{prefix}:kind{kind}.happened");
        let entries = read_range(&mut connection, &stream, "-", "+", 100)
            .await
            .unwrap();
        assert_eq!(entries.len(), 10, "{stream}");
    }
}
