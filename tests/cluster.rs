//! The library on a local 3-node Redis Cluster: the same API as on one server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::tls::TlsFiles;
use crate::support::{RedisCluster, publish_retrying, publisher_to, run_all, unique, wait_until};
use events::{
    BatchConfig, BatchedPublisher, Consumer, Context, Endpoint, Event, HandlerError, Publisher,
    PublisherConfig, Route, Router, StartFrom, dead_letter_stream, read_range,
};
use serde::{Deserialize, Serialize};

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
    let publisher = publisher_to(&cluster.url(), &stream).await;
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
    let tasks: Vec<TaskCreated> = (0..300)
        .filter(|n| *n != 7)
        .map(|n| TaskCreated { n })
        .collect();
    publisher.publish_many(&tasks).await.unwrap();
    // Task 7 written twice, as a retrying publisher does: one event, one run.
    let seven = publisher
        .envelope(&TaskCreated { n: 7 }, events::PublishOptions::new())
        .unwrap();
    publisher
        .publish_envelopes(vec![seven.clone(), seven])
        .await
        .unwrap();
    let runs = run_all(&consumers);
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "ledger.posted")]
struct Posted {
    #[event(partition_key)]
    account: u64,
    seq: u64,
}

/// Events of one account, in the order the handlers saw them.
type Ledger = Arc<Mutex<BTreeMap<u64, Vec<u64>>>>;

/// A handler that takes a little while, so that out-of-order handling would show.
fn recording(
    ledger: &Ledger,
) -> impl Fn(Posted, Context) -> std::pin::Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>
+ Clone
+ use<> {
    let ledger = Arc::clone(ledger);
    move |posted: Posted, _: Context| {
        let ledger = Arc::clone(&ledger);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_micros(100 * (posted.seq % 4))).await;
            ledger
                .lock()
                .unwrap()
                .entry(posted.account)
                .or_default()
                .push(posted.seq);
            Ok(())
        })
    }
}

/// Publishes `per_account` events for each of `accounts` accounts to a route partitioned by
/// account, interleaving the accounts.
async fn post(url: &str, stream: &str, partitions: u32, accounts: u64, per_account: u64) {
    let router = Router::builder()
        .route(Route::to("ledger.*", stream).partitions(partitions))
        .build()
        .unwrap();
    let publisher = Publisher::connect(url, PublisherConfig::new("bank").router(router))
        .await
        .unwrap();
    for seq in 0..per_account {
        let batch: Vec<_> = (0..accounts)
            .map(|account| {
                publisher
                    .envelope(&Posted { account, seq }, events::PublishOptions::new())
                    .unwrap()
            })
            .collect();
        publisher.publish_envelopes(batch).await.unwrap();
    }
}

fn assert_in_order(ledger: &Ledger, accounts: u64, per_account: u64) {
    let ledger = ledger.lock().unwrap();
    assert_eq!(ledger.len() as u64, accounts);
    for (account, seqs) in ledger.iter() {
        assert_eq!(
            *seqs,
            (0..per_account).collect::<Vec<_>>(),
            "account {account}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_stream_keeps_each_key_in_order_with_concurrent_handlers() {
    let cluster = RedisCluster::start();
    let stream = unique("ledger");
    post(&cluster.url(), &stream, 4, 50, 40).await;
    let ledger: Ledger = Arc::default();
    let consumer = Consumer::builder(cluster.url())
        .partitioned_stream(&stream, 4)
        .group("accounting")
        .start_from(StartFrom::Beginning)
        .block(Duration::from_millis(100))
        .concurrency(32)
        .handle(recording(&ledger))
        .build()
        .await
        .unwrap();
    let running = consumer.clone();
    let run = tokio::spawn(async move { running.run_until(std::future::pending()).await });
    wait_until("all 2,000 are handled", || {
        consumer.status().processed == 2_000
    })
    .await;
    run.abort();
    assert_in_order(&ledger, 50, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_share_the_partitions_and_keep_10000_events_of_100_keys_in_order() {
    let cluster = RedisCluster::start();
    let stream = unique("ledger");
    let ledger: Ledger = Arc::default();
    let mut consumers = Vec::new();
    for name in ["a", "b", "c"] {
        let consumer = Consumer::builder(cluster.url())
            .partitioned_stream(&stream, 4)
            .group("accounting")
            .consumer_name(name)
            .start_from(StartFrom::Beginning)
            .block(Duration::from_millis(100))
            .partition_lease(Duration::from_millis(600))
            .concurrency(16)
            .handle(recording(&ledger))
            .build()
            .await
            .unwrap();
        consumers.push(consumer);
    }
    let runs = run_all(&consumers);
    // Let the leases settle: each partition held by exactly one consumer, none by more.
    let mut connection = cluster_connection(&cluster).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut holders = Vec::new();
        for partition in events::partition_streams(&stream, 4) {
            let key = format!("{}:owner:accounting", events::slot_prefix(&partition));
            let holder: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .unwrap();
            holders.push(holder);
        }
        let distinct: std::collections::BTreeSet<_> = holders.iter().flatten().collect();
        if holders.iter().all(Option::is_some) && distinct.len() >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leases did not settle: {holders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    post(&cluster.url(), &stream, 4, 100, 100).await;
    wait_until("all 10,000 are handled", || {
        consumers
            .iter()
            .map(|consumer| consumer.status().processed)
            .sum::<u64>()
            == 10_000
    })
    .await;
    for run in runs {
        run.abort();
    }

    assert_in_order(&ledger, 100, 100);
    let busy = consumers
        .iter()
        .filter(|consumer| consumer.status().processed > 0)
        .count();
    assert!(busy >= 2, "the partitions were shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_stream_s_slot_during_consumption_loses_nothing() {
    let cluster = RedisCluster::start();
    let stream = unique("migrating");
    let seen: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let handler = {
        let seen = Arc::clone(&seen);
        move |task: TaskCreated, _: Context| {
            *seen.lock().unwrap().entry(task.n).or_default() += 1;
            std::future::ready(Ok::<(), HandlerError>(()))
        }
    };
    let consumer = Consumer::builder(cluster.url())
        .stream(&stream)
        .group("workers")
        .start_from(StartFrom::Beginning)
        .block(Duration::from_millis(100))
        .handler_timeout(Duration::from_millis(500))
        .claim_idle(Duration::from_millis(1500))
        .claim_interval(Duration::from_millis(300))
        .backoff(events::Backoff::exponential(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ))
        .handle(handler)
        .build()
        .await
        .unwrap();
    let runs = run_all(std::slice::from_ref(&consumer));
    let publisher = publisher_to(&cluster.url(), &stream).await;
    let publishing = tokio::spawn(async move {
        for n in 0..2_000 {
            publish_retrying(&publisher, &TaskCreated { n }).await;
        }
    });
    wait_until("some events are handled", || {
        seen.lock().unwrap().len() >= 300
    })
    .await;

    let migrating = tokio::task::spawn_blocking({
        let stream = stream.clone();
        move || {
            cluster.migrate_slot_of(&stream);
            cluster
        }
    });
    let cluster = migrating.await.unwrap();
    publishing.await.unwrap();
    wait_until("all 2,000 are handled", || {
        seen.lock().unwrap().len() == 2_000
    })
    .await;
    for run in runs {
        run.abort();
    }

    let seen = seen.lock().unwrap().clone();
    assert!(seen.values().all(|count| *count == 1), "each handled once");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_of_a_dropped_consumer_is_reclaimed_and_lost_connections_come_back() {
    let cluster = RedisCluster::start();
    let stream = unique("reclaim");
    let publisher = publisher_to(&cluster.url(), &stream).await;
    let consumer = |name: &str| {
        Consumer::builder(cluster.url())
            .stream(&stream)
            .group("workers")
            .consumer_name(name)
            .start_from(StartFrom::Beginning)
            .block(Duration::from_millis(100))
            .handler_timeout(Duration::from_millis(500))
            .claim_idle(Duration::from_millis(1000))
            .claim_interval(Duration::from_millis(200))
            .backoff(events::Backoff::exponential(
                Duration::from_millis(20),
                Duration::from_millis(200),
            ))
    };
    let stuck = consumer("doomed")
        .handle(|_: TaskCreated, _: Context| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<(), HandlerError>(())
        })
        .build()
        .await
        .unwrap();
    let doomed = run_all(std::slice::from_ref(&stuck));
    let tasks: Vec<TaskCreated> = (0..10).map(|n| TaskCreated { n }).collect();
    publisher.publish_many(&tasks).await.unwrap();
    wait_until("the doomed consumer holds all 10", || {
        stuck.status().in_flight == 10
    })
    .await;
    for run in doomed {
        run.abort();
    }

    let seen: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let survivor = consumer("survivor")
        .handle({
            let seen = Arc::clone(&seen);
            move |task: TaskCreated, _: Context| {
                *seen.lock().unwrap().entry(task.n).or_default() += 1;
                std::future::ready(Ok::<(), HandlerError>(()))
            }
        })
        .build()
        .await
        .unwrap();
    let runs = run_all(std::slice::from_ref(&survivor));
    wait_until("the survivor finished the 10", || {
        seen.lock().unwrap().len() == 10
    })
    .await;

    // Every client connection of every node is closed: the consumer and the publisher reconnect.
    cluster.drop_client_connections();
    let more: Vec<TaskCreated> = (10..20).map(|n| TaskCreated { n }).collect();
    let mut published = false;
    for _ in 0..50 {
        if publisher.publish_many(&more).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published, "the publisher came back");
    wait_until("the 10 published after the blip are handled", || {
        seen.lock().unwrap().len() == 20
    })
    .await;
    for run in runs {
        run.abort();
    }
    assert_eq!(survivor.status().reclaimed, 10);
    assert!(seen.lock().unwrap().values().all(|count| *count == 1));
}

#[tokio::test]
async fn a_shared_dead_letter_stream_must_share_each_stream_s_slot() {
    let cluster = RedisCluster::start();
    let consumer = |stream: &str, dead_letters: &str| {
        Consumer::builder(cluster.url())
            .stream(stream)
            .group("workers")
            .dead_letter_stream(dead_letters)
            .handle(|_: TaskCreated, _: Context| async { Ok(()) })
            .build()
    };
    let error = consumer("orders", "failures")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "dead_letter_stream `failures` is in another cluster slot than stream `orders`"
        ),
        "{error}"
    );
    consumer("{shop}:orders", "{shop}:failures").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_on_one_node_of_a_cluster_url_reach_every_node() {
    let cluster = RedisCluster::start();
    let nodes: Vec<String> = cluster
        .url()
        .trim_start_matches(events::CLUSTER_SCHEME)
        .split(',')
        .map(str::to_owned)
        .collect();
    for node in &nodes {
        let port = node.rsplit(':').next().unwrap();
        let set = std::process::Command::new("redis-cli")
            .args(["-p", port, "CONFIG", "SET", "requirepass", "s3cret"])
            .output()
            .unwrap();
        assert!(set.status.success());
    }
    // The password given once, on the first node.
    let url = format!("{}:s3cret@{}", events::CLUSTER_SCHEME, nodes.join(","));
    let streams = streams_on_every_node(&format!("redis://:s3cret@{}", nodes[0]));
    every_node_handles_events(Endpoint::url(&url), &streams).await;
    // Without it, every node refuses.
    let refused = Publisher::connect(
        format!("{}{}", events::CLUSTER_SCHEME, nodes.join(",")),
        PublisherConfig::new("test"),
    )
    .await
    .unwrap_err();
    assert!(!refused.is_retryable(), "{refused}");
}

/// Twelve stream names, four in the slots of each master (`redis-cli --cluster create` gives
/// three masters 0-5460, 5461-10922 and 10923-16383), as the node at `node_url` computes them.
fn streams_on_every_node(node_url: &str) -> Vec<String> {
    let mut node = redis::Client::open(node_url).unwrap();
    let mut by_node: [Vec<String>; 3] = Default::default();
    while by_node.iter().any(|streams| streams.len() < 4) {
        let stream = unique("cluster-nodes");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&stream)
            .query(&mut node)
            .unwrap();
        let owner = &mut by_node[usize::from(slot / 5461).min(2)];
        if owner.len() < 4 {
            owner.push(stream);
        }
    }
    by_node.concat()
}

/// Publishes 5 events to each of `streams` through `endpoint`, and consumes all of them
/// through it.
async fn every_node_handles_events(endpoint: Endpoint, streams: &[String]) {
    for stream in streams {
        let publisher = Publisher::connect(
            endpoint.clone(),
            PublisherConfig::new("test").router(Router::single(stream)),
        )
        .await
        .unwrap();
        let tasks: Vec<TaskCreated> = (0..5).map(|n| TaskCreated { n }).collect();
        publisher.publish_many(&tasks).await.unwrap();
    }
    let consumer = streams
        .iter()
        .fold(Consumer::builder(endpoint), |builder, stream| {
            builder.stream(stream)
        })
        .group("g")
        .start_from(StartFrom::Beginning)
        .block(Duration::from_millis(100))
        .handle(|_: TaskCreated, _: Context| async { Ok(()) })
        .build()
        .await
        .unwrap();
    let runs = run_all(std::slice::from_ref(&consumer));
    let all = streams.len() as u64 * 5;
    wait_until("all are handled", || consumer.status().processed == all).await;
    for run in runs {
        run.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_travel_over_tls_to_every_node_of_a_cluster() {
    let tls = TlsFiles::make();
    let cluster = tls.cluster();
    let authority = std::fs::read(&tls.authority).unwrap();
    let plain_node = cluster.url().replace(events::CLUSTER_SCHEME, "redis://");
    let streams = streams_on_every_node(plain_node.split(',').next().unwrap());
    every_node_handles_events(
        Endpoint::url(cluster.tls_url()).root_certificate(authority),
        &streams,
    )
    .await;
    // An authority the nodes' certificates do not come from is refused.
    let other = std::fs::read(&tls.other_authority).unwrap();
    let refused = Publisher::connect(
        Endpoint::url(cluster.tls_url()).root_certificate(other),
        PublisherConfig::new("test"),
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().to_lowercase().contains("certificate"),
        "a wrong authority is named as a certificate problem: {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_events_reach_streams_on_every_node_at_their_time() {
    let cluster = RedisCluster::start();
    let node = cluster.url().replace(events::CLUSTER_SCHEME, "redis://");
    let node = node.split(',').next().unwrap().to_owned();
    let streams = streams_on_every_node(&node);
    let due = std::time::SystemTime::now() + Duration::from_millis(500);
    for stream in &streams {
        let publisher = publisher_to(&cluster.url(), stream).await;
        publisher
            .publish_with(
                &TaskCreated { n: 1 },
                events::PublishOptions::new().deliver_at(due),
            )
            .await
            .unwrap();
    }
    let handled: Arc<Mutex<Vec<std::time::SystemTime>>> = Arc::default();
    let consumer = {
        let handled = Arc::clone(&handled);
        streams
            .iter()
            .fold(Consumer::builder(cluster.url()), |builder, stream| {
                builder.stream(stream)
            })
            .group("g")
            .start_from(StartFrom::Beginning)
            .block(Duration::from_millis(100))
            .handle(move |_: TaskCreated, _: Context| {
                handled.lock().unwrap().push(std::time::SystemTime::now());
                async { Ok::<(), HandlerError>(()) }
            })
            .build()
            .await
            .unwrap()
    };
    let runs = run_all(std::slice::from_ref(&consumer));
    wait_until("every delayed event is handled", || {
        handled.lock().unwrap().len() == streams.len()
    })
    .await;
    for run in runs {
        run.abort();
    }
    assert!(handled.lock().unwrap().iter().all(|at| *at >= due));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_names_are_found_on_every_master() {
    let cluster = RedisCluster::start();
    let mut redis = cluster_connection(&cluster).await;
    let streams: Vec<String> = (0..30).map(|n| format!("names-{n:02}")).collect();
    for stream in &streams {
        let _: String = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("f")
            .arg("v")
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("SET")
        .arg("names-not-a-stream")
        .arg("x")
        .query_async(&mut redis)
        .await
        .unwrap();
    // Three masters share the 16,384 slots in thirds: some streams live on each.
    let mut thirds = std::collections::BTreeSet::new();
    for stream in &streams {
        let slot: u64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(stream)
            .query_async(&mut redis)
            .await
            .unwrap();
        thirds.insert(slot * 3 / 16_384);
    }
    assert_eq!(thirds.len(), 3, "the streams are on every master");

    let connection = events::Connection::open(cluster.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let found = events::stream_names(&connection, "names-*").await.unwrap();
    assert_eq!(found, streams, "all 30, sorted, and no other key");
    let some = events::stream_names(&connection, "names-1?").await.unwrap();
    assert_eq!(some, streams[10..20]);
}
