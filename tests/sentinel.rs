//! Redis Sentinel: publishers and consumers reach the master the Sentinels name and follow it
//! through a failover; with writes confirmed by a replica and idempotency on, a failover in the
//! middle of traffic loses no event and runs none twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::sentinel::{MASTER_NAME, SentinelGroup};
use crate::support::{
    RedisServer, Running, connection, publish_retrying, quick, unique, wait_until,
};
use events::{
    BatchConfig, BatchedPublisher, Context, Endpoint, Event, HandlerError, Publisher,
    PublisherConfig, Router,
};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "sentinel.job")]
struct Job {
    n: u64,
}

/// Writes confirmed by one replica, given up on after half a second.
fn confirmed(url: &str) -> Endpoint {
    Endpoint::url(url).wait_for_replicas(1, Duration::from_millis(500))
}

async fn publisher(endpoint: Endpoint, stream: &str) -> Publisher {
    Publisher::connect(
        endpoint,
        PublisherConfig::new("sentinel-test").router(Router::single(stream)),
    )
    .await
    .expect("a publisher through the Sentinels")
}

/// How the master goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Failover {
    /// `SENTINEL FAILOVER`, the master alive throughout.
    Requested,
    /// The master is killed while its replica lags behind it.
    Crash,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_requested_failover_in_the_middle_of_traffic_loses_nothing_and_runs_nothing_twice() {
    traffic_through(Failover::Requested).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_crashing_ahead_of_its_replica_loses_nothing_and_runs_nothing_twice() {
    traffic_through(Failover::Crash).await;
}

/// Publishes 10,000 events, half one by one and half in batches, while two consumers handle
/// them and the master fails over; checks that each event ran exactly once.
async fn traffic_through(failover: Failover) {
    const EVENTS: u64 = 10_000;
    let mut group = SentinelGroup::start().await;
    let url = group.url();
    let stream = unique("sentinel-orders");
    let runs: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let runs = runs.clone();
        let consumer = quick(
            events::Consumer::builder(confirmed(&url))
                .stream(&stream)
                .group("workers"),
        )
        .handle(move |job: Job, _: Context| {
            let runs = runs.clone();
            async move {
                *runs.lock().unwrap().entry(job.n).or_default() += 1;
                Ok::<(), HandlerError>(())
            }
        })
        .build()
        .await
        .expect("a consumer through the Sentinels");
        consumers.push(consumer);
    }
    let running = Running::start(&consumers);

    let published = Arc::new(AtomicU64::new(0));
    let direct = publisher(confirmed(&url), &stream).await;
    let batched = BatchedPublisher::new(
        publisher(confirmed(&url), &stream).await,
        BatchConfig::new()
            .max_size(50)
            .max_wait(Duration::from_millis(5))
            .max_retries(100)
            .retry_backoff(events::Backoff::exponential(
                Duration::from_millis(50),
                Duration::from_millis(500),
            )),
    );
    let one_by_one = {
        let published = published.clone();
        tokio::spawn(async move {
            for n in 0..EVENTS / 2 {
                publish_retrying(&direct, &Job { n }).await;
                published.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let in_batches = {
        let published = published.clone();
        tokio::spawn(async move {
            for n in EVENTS / 2..EVENTS {
                batched.publish(&Job { n }).await.expect("queued");
                published.fetch_add(1, Ordering::Relaxed);
                if n % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            batched.close().await.expect("every batch written");
            assert!(batched.failed_messages().is_empty(), "no batch given up");
        })
    };

    let old_master = group.master_port().await;
    while published.load(Ordering::Relaxed) < EVENTS / 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let published_at_failover = published.load(Ordering::Relaxed);
    let started = Instant::now();
    match failover {
        Failover::Requested => group.fail_over().await,
        Failover::Crash => group.crash_master_ahead_of_replica().await,
    }
    while group.master_port().await == old_master {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the failover did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(group.master_port().await, group.replica.port());
    if failover == Failover::Crash {
        // The old master comes back, empty, and the Sentinels make it the new one's replica.
        group.master.resume();
    }
    println!(
        "{failover:?} failover after {published_at_failover} of {EVENTS} events published, done in {:?}",
        started.elapsed()
    );
    assert!(
        published_at_failover < EVENTS,
        "the failover came in the middle of the traffic"
    );
    one_by_one.await.expect("the publisher finished");
    in_batches.await.expect("the batched publisher finished");

    let deadline = Instant::now() + Duration::from_secs(60);
    while runs.lock().unwrap().len() < EVENTS as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Long enough for any entry left pending to be reclaimed and run again, if it were to be.
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.close().await;
    let runs = runs.lock().unwrap().clone();
    let missing: Vec<u64> = (0..EVENTS).filter(|n| !runs.contains_key(n)).collect();
    let twice: Vec<(u64, u32)> = runs
        .iter()
        .filter(|(_, count)| **count != 1)
        .map(|(n, count)| (*n, *count))
        .collect();
    if !missing.is_empty() || !twice.is_empty() {
        let whereabouts = whereabouts(&group.replica, &stream).await;
        let servers = format!(
            "old master: {}; new master: {}",
            replication(&group.master).await,
            replication(&group.replica).await
        );
        panic!(
            "{} events lost, such as {:?}; {} events run more than once, such as {:?}; \
             {whereabouts}; {servers}",
            missing.len(),
            &missing[..missing.len().min(10)],
            twice.len(),
            &twice[..twice.len().min(10)]
        );
    }
}

/// Where the stream's entries are on `master`, to tell how events went missing: its length, what
/// is pending on which consumer, and the dead letters' errors.
async fn whereabouts(master: &RedisServer, stream: &str) -> String {
    let mut redis = connection(master).await;
    let length: redis::RedisResult<u64> = redis.xlen(stream).await;
    let pending: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg("workers")
        .query_async(&mut redis)
        .await;
    let dead = events::read_range(&mut redis, &events::dead_letter_stream(stream), "-", "+", 5)
        .await
        .unwrap_or_default();
    let dead: Vec<String> = dead
        .iter()
        .map(|entry| {
            entry
                .fields
                .iter()
                .filter(|(name, _)| !name.starts_with(b"data"))
                .map(|(name, value)| {
                    format!(
                        "{}={}",
                        String::from_utf8_lossy(name),
                        String::from_utf8_lossy(value)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    format!("stream length {length:?}, pending {pending:?}, first dead letters {dead:?}")
}

/// What `server` says of its replication: its role, the full syncs it served, and the keys it
/// last loaded (a server that synced from another lost what it had).
async fn replication(server: &RedisServer) -> String {
    let mut redis = connection(server).await;
    let mut said = Vec::new();
    for section in ["replication", "stats", "persistence"] {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut redis)
            .await
            .unwrap_or_default();
        said.extend(
            info.lines()
                .filter(|line| {
                    [
                        "role:",
                        "connected_slaves:",
                        "master_port:",
                        "sync_full:",
                        "rdb_last_load_keys_loaded:",
                    ]
                    .iter()
                    .any(|name| line.starts_with(name))
                })
                .map(str::to_owned),
        );
    }
    said.join(" ")
}

#[tokio::test]
async fn a_sentinel_client_of_ones_own_reaches_the_master() {
    let group = SentinelGroup::start().await;
    let client = redis::sentinel::SentinelClientBuilder::new(
        group.sentinel_urls().iter().map(|url| {
            redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .unwrap()
                .addr()
                .clone()
        }),
        MASTER_NAME,
        redis::sentinel::SentinelServerType::Master,
    )
    .unwrap()
    .build()
    .unwrap();
    publishes_to_the_master(&group, Endpoint::sentinel(client)).await;
}

#[tokio::test]
async fn a_write_no_replica_confirms_fails_and_may_be_retried() {
    let server = RedisServer::start();
    let stream = unique("unconfirmed");
    let publisher = publisher(
        Endpoint::url(server.url()).wait_for_replicas(1, Duration::from_millis(50)),
        &stream,
    )
    .await;
    let error = publisher.publish(&Job { n: 1 }).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("0 of the 1 replicas") && text.contains(&stream),
        "the error says what was not confirmed, and where: {text}"
    );
}

#[tokio::test]
async fn a_consumer_whose_reads_no_replica_confirms_handles_nothing() {
    let master = RedisServer::start();
    let master_port = master.port().to_string();
    let mut replica = RedisServer::spawn_with(|_| {
        let args = ["--replicaof", "127.0.0.1", &master_port];
        (args.map(str::to_owned).to_vec(), None)
    })
    .unwrap();
    let redis = connection(&master).await;
    let replicas = || async {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut redis.clone())
            .await
            .unwrap();
        info.contains("connected_slaves:1")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !replicas().await {
        assert!(Instant::now() < deadline, "the replica did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stream = unique("unconfirmed-reads");
    let runs = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&runs);
    // Idempotency off: nothing but the read stands between an entry and its handler.
    let consumer = quick(
        events::Consumer::builder(
            Endpoint::url(master.url()).wait_for_replicas(1, Duration::from_millis(50)),
        )
        .stream(&stream)
        .group("workers"),
    )
    .idempotency(false)
    .handle(move |_: Job, _: Context| {
        counted.fetch_add(1, Ordering::Relaxed);
        async { Ok::<(), HandlerError>(()) }
    })
    .build()
    .await
    .unwrap();
    let running = Running::start(std::slice::from_ref(&consumer));
    wait_until("the consumer runs", || consumer.status().running).await;
    replica.stop();
    let plain = publisher(Endpoint::url(master.url()), &stream).await;
    plain.publish(&Job { n: 1 }).await.unwrap();
    wait_until("a read is refused for want of a replica", || {
        consumer
            .status()
            .stalls
            .iter()
            .any(|stall| stall.operation == events::Operation::Read)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.close().await;
    // A read Redis served but no replica holds may be lost to a failover, and the deliveries
    // it recorded with it: what it read is not handled.
    assert_eq!(runs.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn sentinels_that_ask_for_a_password_get_the_one_given_apart_from_the_url() {
    let group = SentinelGroup::start_with(Some("watchword")).await;
    let stream = unique("guarded-sentinels");
    let refused = Publisher::connect(
        Endpoint::url(group.url()),
        PublisherConfig::new("sentinel-test").router(Router::single(&stream)),
    )
    .await
    .unwrap_err();
    assert!(!refused.is_retryable(), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("Endpoint::sentinel_credentials"),
        "the error says where the Sentinels' password goes: {refused}"
    );
    publishes_to_the_master(
        &group,
        Endpoint::url(group.url()).sentinel_credentials(None, "watchword"),
    )
    .await;
}

/// Publishes one event through `endpoint` and checks that it is on the group's master.
async fn publishes_to_the_master(group: &SentinelGroup, endpoint: Endpoint) {
    let stream = unique("through-sentinels");
    publisher(endpoint, &stream)
        .await
        .publish(&Job { n: 1 })
        .await
        .expect("published through the Sentinels");
    let mut master = crate::support::connection(&group.master).await;
    let length: usize = master.xlen(&stream).await.unwrap();
    assert_eq!(length, 1, "the entry is on the master");
}
