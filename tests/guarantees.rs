//! The consumer's delivery guarantees, each tried where it is hardest to keep: backlogs deeper
//! than the concurrency with handlers slower than the claim time, Redis refusing writes, stalling
//! and dropping connections, acknowledgements and dead-letter writes that keep failing, entries
//! too big for a script, a stream replaced under a running consumer, keys whose order must hold
//! while partitions change hands, copies far behind their events amid ids out of order, consumers
//! joining, stopping and crashing amid copies, handlers
//! that block every thread of their runtime, pull consumers holding what they reserved past the
//! claim time (through a stall of Redis too) or whose caller stops polling `reserve`, connections
//! killed as often as consumers look for idle entries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::faults::{
    ConnectionKiller, accept_writes, allow, deny, lost_deliveries, refuse_writes, stall,
};
use crate::support::{
    RedisServer, Running, connection, pending, publisher_to, publisher_to_partitions, quick,
    quick_consumer, quick_partitioned_consumer, unique, wait_until,
};
use events::{
    Consumer, ConsumerBuilder, Context, DeadLetters, Event, HandlerError, Operation,
    PublishOptions, Publisher, dead_letter_stream,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "job.queued")]
struct Job {
    n: u64,
}

/// How often each job's handler started, by job number.
#[derive(Debug, Clone, Default)]
struct Runs(Arc<Mutex<BTreeMap<u64, u32>>>);

impl Runs {
    fn record(&self, n: u64) {
        *self.0.lock().unwrap().entry(n).or_default() += 1;
    }

    fn of(&self, n: u64) -> u32 {
        self.0.lock().unwrap().get(&n).copied().unwrap_or(0)
    }

    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Asserts that each job of `jobs` ran exactly once, and no other.
    fn assert_each_once(&self, jobs: std::ops::Range<u64>) {
        let runs = self.0.lock().unwrap();
        let wrong: Vec<(u64, u32)> = jobs
            .clone()
            .map(|n| (n, runs.get(&n).copied().unwrap_or(0)))
            .filter(|(_, count)| *count != 1)
            .collect();
        assert!(
            wrong.is_empty(),
            "jobs not run exactly once (job, runs): {wrong:?}"
        );
        assert_eq!(runs.len(), jobs.count(), "only these jobs ran");
    }
}

/// A handler that records its run, then works for `work`.
fn working(
    runs: &Runs,
    work: Duration,
) -> impl Fn(Job, Context) -> BoxFuture<'static, Result<(), HandlerError>> + Clone + use<> {
    let runs = runs.clone();
    move |job: Job, _: Context| {
        runs.record(job.n);
        async move {
            tokio::time::sleep(work).await;
            Ok(())
        }
        .boxed()
    }
}

/// A handler that records its run and fails job `poison` every time.
fn poisoned(
    runs: &Runs,
    poison: u64,
) -> impl Fn(Job, Context) -> BoxFuture<'static, Result<(), HandlerError>> + Clone + use<> {
    let runs = runs.clone();
    move |job: Job, _: Context| {
        runs.record(job.n);
        let result = if job.n == poison {
            Err(HandlerError::from("poison"))
        } else {
            Ok(())
        };
        futures::future::ready(result).boxed()
    }
}

async fn publish_jobs(publisher: &Publisher, jobs: std::ops::Range<u64>) {
    let jobs: Vec<Job> = jobs.map(|n| Job { n }).collect();
    for chunk in jobs.chunks(500) {
        publisher.publish_many(chunk).await.unwrap();
    }
}

/// Writes `job` to `stream` twice, as one event (same id, same body), the way a publisher that
/// retries after a lost reply does.
async fn publish_twice(server: &RedisServer, publisher: &Publisher, stream: &str, job: &Job) {
    let envelope = publisher.envelope(job, PublishOptions::new()).unwrap();
    let fields: Vec<(String, String)> = envelope
        .fields()
        .into_iter()
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let mut redis = connection(server).await;
    for _ in 0..2 {
        let _: String = redis.xadd(stream, "*", &fields).await.unwrap();
    }
}

async fn dead_letter_count(server: &RedisServer, stream: &str) -> usize {
    connection(server)
        .await
        .xlen(dead_letter_stream(stream))
        .await
        .unwrap()
}

fn sum(consumers: &[Consumer], counter: impl Fn(&events::Status) -> u64) -> u64 {
    consumers
        .iter()
        .map(|consumer| counter(&consumer.status()))
        .sum()
}

fn stalled(consumers: &[Consumer], operation: Operation) -> Option<events::Stall> {
    consumers
        .iter()
        .flat_map(|consumer| consumer.status().stalls)
        .find(|stall| stall.operation == operation)
}

/// `count` consumers of `stream` in `group`, named `c0`, `c1`, .., each handling a job in `work`,
/// tuned by `tune`; running, with what they ran.
async fn start_workers(
    server: &RedisServer,
    stream: &str,
    count: usize,
    work: Duration,
    tune: impl Fn(ConsumerBuilder) -> ConsumerBuilder,
) -> (Runs, Vec<Consumer>, Running) {
    let (runs, consumers) = build_workers(server, stream, count, work, tune).await;
    let running = Running::start(&consumers);
    (runs, consumers, running)
}

/// The consumers [`start_workers`] runs, built and not started yet, with what they will run.
async fn build_workers(
    server: &RedisServer,
    stream: &str,
    count: usize,
    work: Duration,
    tune: impl Fn(ConsumerBuilder) -> ConsumerBuilder,
) -> (Runs, Vec<Consumer>) {
    let runs = Runs::default();
    let consumers = build_all(count, |index| {
        tune(quick_consumer(server, stream, "workers"))
            .consumer_name(format!("c{index}"))
            .handle(working(&runs, work))
    })
    .await;
    (runs, consumers)
}

async fn build_all(count: usize, builder: impl Fn(usize) -> ConsumerBuilder) -> Vec<Consumer> {
    let mut consumers = Vec::new();
    for index in 0..count {
        consumers.push(builder(index).build().await.unwrap());
    }
    consumers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_deeper_than_concurrency_with_handlers_slower_than_claim_idle_runs_each_event_once()
 {
    let server = RedisServer::start();
    let stream = unique("backlog");
    let publisher = publisher_to(server.url(), &stream).await;
    // 300 events, each written twice: a repeat waits behind the first, far longer than claim_idle.
    for n in 0..300 {
        publish_twice(&server, &publisher, &stream, &Job { n }).await;
    }
    // The consumers read the whole backlog at once and handle 2 events at a time each, 60 ms
    // each: entries wait up to 3 s for their turn, and claim_idle is 1 s.
    let (runs, consumers, running) =
        start_workers(&server, &stream, 3, Duration::from_millis(60), |consumer| {
            consumer.concurrency(2).max_attempts(2)
        })
        .await;
    wait_until("every repeat is acknowledged", || {
        sum(&consumers, |status| status.processed + status.duplicates) == 600
    })
    .await;
    running.close().await;

    runs.assert_each_once(0..300);
    assert_eq!(sum(&consumers, |status| status.duplicates), 300);
    assert_eq!(
        sum(&consumers, |status| status.reclaimed),
        0,
        "nothing taken from a live consumer"
    );
    assert_eq!(dead_letter_count(&server, &stream).await, 0);
    assert_eq!(pending(&server, &stream, "workers").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_far_behind_their_events_amid_ids_out_of_order_run_nothing_twice_across_consumers() {
    let server = RedisServer::start();
    let stream = unique("far-copies");
    let publisher = publisher_to(server.url(), &stream).await;
    // 2,000 events whose ids come in the order they were made, written in runs of 50 with every
    // other pair of runs swapped (as two publishers' batches interleave), and a copy of every
    // seventh written again 400 entries after it: copies land in batches of events whose ids lie
    // on either side of theirs, held by three consumers at once (see `Digest::id_order`).
    let envelopes: Vec<_> = (0..2_000)
        .map(|n| {
            publisher
                .envelope(&Job { n }, PublishOptions::new())
                .unwrap()
        })
        .collect();
    let mut written: Vec<events::Envelope> = Vec::new();
    for pair in envelopes.chunks(100) {
        let (first, second) = pair.split_at(50);
        written.extend(second.iter().chain(first).cloned());
    }
    let copies: Vec<(usize, events::Envelope)> = (0..written.len())
        .filter(|at| at % 7 == 0)
        .map(|at| (at + 400, written[at].clone()))
        .collect();
    for (at, copy) in copies.iter().rev() {
        written.insert((*at).min(written.len()), copy.clone());
    }
    for chunk in written.chunks(250) {
        publisher.publish_envelopes(chunk.to_vec()).await.unwrap();
    }
    let (runs, consumers, running) =
        start_workers(&server, &stream, 3, Duration::ZERO, |consumer| {
            consumer.batch_size(20).max_unacked(60)
        })
        .await;
    wait_until("every entry is settled", || {
        sum(&consumers, |status| status.processed + status.duplicates) == written.len() as u64
    })
    .await;
    running.close().await;

    runs.assert_each_once(0..2_000);
    assert_eq!(
        sum(&consumers, |status| status.duplicates),
        copies.len() as u64
    );
    assert!(
        consumers
            .iter()
            .all(|consumer| consumer.status().processed > 0),
        "all three consumers held batches"
    );
    assert_eq!(pending(&server, &stream, "workers").await, 0);
}

#[tokio::test]
async fn an_event_handled_ok_is_never_dead_lettered() {
    let server = RedisServer::start();
    let stream = unique("handled-not-dead");
    let publisher = publisher_to(server.url(), &stream).await;
    publish_jobs(&publisher, 0..30).await;
    let runs = Runs::default();
    // One attempt each, one at a time, 100 ms each: the last waits 3 s, three times claim_idle.
    let consumer = quick_consumer(&server, &stream, "one-shot")
        .concurrency(1)
        .max_attempts(1)
        .handle(working(&runs, Duration::from_millis(100)))
        .build()
        .await
        .unwrap();
    let running = Running::start(std::slice::from_ref(&consumer));
    wait_until("all 30 are handled", || consumer.status().processed == 30).await;
    running.close().await;

    runs.assert_each_once(0..30);
    assert_eq!(consumer.status().dead_lettered, 0);
    assert_eq!(dead_letter_count(&server, &stream).await, 0);
    assert_eq!(pending(&server, &stream, "one-shot").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_refuses_writes_events_are_handled_once_and_a_poison_event_waits_to_be_dead_lettered()
 {
    let server = RedisServer::own();
    let stream = unique("oom");
    let publisher = publisher_to(server.url(), &stream).await;
    publish_jobs(&publisher, 0..200).await;
    let runs = Runs::default();
    let (refusing, refused) = tokio::sync::watch::channel(false);
    let handler = {
        let runs = runs.clone();
        move |job: Job, _: Context| {
            runs.record(job.n);
            let mut refused = refused.clone();
            async move {
                if job.n == 150 {
                    // The poison event fails once Redis refuses writes: its move to the
                    // dead-letter stream is refused too.
                    let _ = refused.wait_for(|refused| *refused).await;
                    return Err(HandlerError::permanent("poison"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(())
            }
        }
    };
    let consumers = build_all(2, |index| {
        quick_consumer(&server, &stream, "oom")
            .consumer_name(format!("c{index}"))
            .concurrency(4)
            .handle(handler.clone())
    })
    .await;
    let running = Running::start(&consumers);
    wait_until("the poison event's handler runs", || runs.of(150) == 1).await;
    refuse_writes(&server).await;
    refusing.send_replace(true);
    let refused_at = Instant::now();
    wait_until("the dead-letter move stalls", || {
        stalled(&consumers, Operation::DeadLetter).is_some()
    })
    .await;
    let stall = stalled(&consumers, Operation::DeadLetter).unwrap();
    assert!(stall.error.contains("OOM"), "{stall:?}");
    // Refused writes do not stop handling: holds and done marks are small bookkeeping that Redis
    // takes even past maxmemory, so no handled event can run again.
    wait_until("the others are handled meanwhile", || {
        sum(&consumers, |status| status.processed) == 199
    })
    .await;
    // Three times claim_idle with writes refused: nothing is taken over, nothing runs again.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(refused_at.elapsed())).await;
    assert_eq!(sum(&consumers, |status| status.dead_lettered), 0);
    accept_writes(&server).await;
    wait_until("the poison event is dead-lettered", || {
        sum(&consumers, |status| status.dead_lettered) == 1
    })
    .await;
    wait_until("the stall is over", || {
        consumers
            .iter()
            .all(|consumer| consumer.status().stalls.is_empty())
    })
    .await;
    running.close().await;

    runs.assert_each_once(0..200);
    assert_eq!(sum(&consumers, |status| status.reclaimed), 0);
    assert_eq!(dead_letter_count(&server, &stream).await, 1);
    assert_eq!(pending(&server, &stream, "oom").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_acknowledgements_are_retried_until_they_land_and_no_handler_runs_again() {
    let server = RedisServer::own();
    let stream = unique("acks");
    let publisher = publisher_to(server.url(), &stream).await;
    let runs = Runs::default();
    let consumers = build_all(2, |index| {
        quick_consumer(&server, &stream, "acks")
            .consumer_name(format!("c{index}"))
            .handle(working(&runs, Duration::ZERO))
    })
    .await;
    let running = Running::start(&consumers);
    // Redis answers every XACK with NOPERM, also the one inside the acknowledging script.
    deny(&server, "xack").await;
    publish_jobs(&publisher, 0..60).await;
    wait_until("all 60 are handled", || runs.distinct() == 60).await;
    wait_until("acknowledging shows as a stall", || {
        stalled(&consumers, Operation::Acknowledge).is_some()
    })
    .await;
    let stall = stalled(&consumers, Operation::Acknowledge).unwrap();
    // Redis and Valkey word the refusal apart.
    assert!(
        stall.error.contains("can't run this command") || stall.error.contains("no permissions"),
        "{stall:?}"
    );
    // Three times claim_idle with the acknowledgements failing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pending(&server, &stream, "acks").await, 60);
    assert_eq!(sum(&consumers, |status| status.reclaimed), 0);
    allow(&server, "xack").await;
    wait_until("the acknowledgements land", || {
        consumers
            .iter()
            .all(|consumer| consumer.status().stalls.is_empty())
    })
    .await;
    assert_eq!(pending(&server, &stream, "acks").await, 0);

    // Acknowledgements failing until shutdown: the entries stay pending, and the consumer that
    // takes them over does not run them again.
    deny(&server, "xack").await;
    publish_jobs(&publisher, 60..80).await;
    wait_until("all 80 are handled", || runs.distinct() == 80).await;
    // A consumer that handled some of them says so as it stops.
    let stopped = running.stop().await;
    assert!(
        stopped.iter().any(Result::is_err)
            && stopped.iter().all(|stopped| match stopped {
                Err(events::Error::Unsettled { streams }) => *streams == [stream.clone()],
                other => other.is_ok(),
            }),
        "{stopped:?}"
    );
    assert_eq!(pending(&server, &stream, "acks").await, 20);
    allow(&server, "xack").await;
    let successor = quick_consumer(&server, &stream, "acks")
        .consumer_name("successor")
        .handle(working(&runs, Duration::ZERO))
        .build()
        .await
        .unwrap();
    let running = Running::start(std::slice::from_ref(&successor));
    wait_until("the successor acknowledges them as handled", || {
        successor.status().duplicates == 20
    })
    .await;
    running.close().await;

    runs.assert_each_once(0..80);
    assert_eq!(pending(&server, &stream, "acks").await, 0);
}

#[tokio::test]
async fn a_dead_letter_stream_that_refuses_writes_never_reruns_the_poison_handler() {
    let server = RedisServer::start();
    let stream = unique("dlq-refused");
    let publisher = publisher_to(server.url(), &stream).await;
    // The dead-letter key holds a string: every move there fails.
    let mut redis = connection(&server).await;
    let _: () = redis
        .set(dead_letter_stream(&stream), "not a stream")
        .await
        .unwrap();
    publish_jobs(&publisher, 0..10).await;
    let runs = Runs::default();
    let consumers = build_all(2, |index| {
        quick_consumer(&server, &stream, "poison")
            .consumer_name(format!("c{index}"))
            .max_attempts(3)
            .handle(poisoned(&runs, 7))
    })
    .await;
    let running = Running::start(&consumers);
    wait_until("the move stalls", || {
        stalled(&consumers, Operation::DeadLetter).is_some()
    })
    .await;
    assert!(
        stalled(&consumers, Operation::DeadLetter)
            .unwrap()
            .error
            .contains("not a stream")
    );
    // Three times claim_idle: the poison event is neither taken over nor run again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(runs.of(7), 3);
    assert_eq!(sum(&consumers, |status| status.reclaimed), 0);
    assert_eq!(sum(&consumers, |status| status.dead_lettered), 0);
    let _: () = redis.del(dead_letter_stream(&stream)).await.unwrap();
    wait_until("the poison event is dead-lettered", || {
        sum(&consumers, |status| status.dead_lettered) == 1
    })
    .await;
    running.close().await;

    assert_eq!(runs.of(7), 3, "max_attempts runs, no more");
    assert_eq!(dead_letter_count(&server, &stream).await, 1);
    assert_eq!(pending(&server, &stream, "poison").await, 0);
}

/// An entry of `count` fields that is no event: any producer with XADD can write one.
async fn write_huge_entry(server: &RedisServer, stream: &str, count: usize) -> String {
    let fields: Vec<(String, String)> = (0..count)
        .map(|index| (format!("f{index}"), format!("value {index}")))
        .collect();
    connection(server)
        .await
        .xadd(stream, "*", &fields)
        .await
        .unwrap()
}

#[tokio::test]
async fn entries_with_thousands_of_fields_are_dead_lettered_whole_and_replayed_whole() {
    let server = RedisServer::start();
    let stream = unique("huge");
    let publisher = publisher_to(server.url(), &stream).await;
    publish_jobs(&publisher, 0..5).await;
    write_huge_entry(&server, &stream, 5_000).await;
    publish_jobs(&publisher, 5..10).await;
    write_huge_entry(&server, &stream, 40_000).await;
    publish_jobs(&publisher, 10..15).await;
    let runs = Runs::default();
    let consumer = quick_consumer(&server, &stream, "huge")
        .handle(working(&runs, Duration::ZERO))
        .build()
        .await
        .unwrap();
    let running = Running::start(std::slice::from_ref(&consumer));
    wait_until("both are dead-lettered", || {
        consumer.status().dead_lettered == 2
    })
    .await;
    wait_until("the good ones are handled", || runs.distinct() == 15).await;
    running.close().await;
    runs.assert_each_once(0..15);

    let mut letters = DeadLetters::new(
        connection(&server).await,
        &stream,
        dead_letter_stream(&stream),
    );
    let all = letters.all().await.unwrap();
    let sizes: Vec<usize> = all.iter().map(|letter| letter.fields.len()).collect();
    assert_eq!(sizes, [5_000, 40_000], "each dead letter holds every field");
    assert!(all[0].reason.contains("undecodable"), "{}", all[0].reason);
    let replayed = letters.replay(&all[1]).await.unwrap().expect("replayed");
    let back = events::read_range(
        &mut connection(&server).await,
        &stream,
        &replayed,
        &replayed,
        1,
    )
    .await
    .unwrap();
    // Every field, and the replay count.
    assert_eq!(back[0].fields.len(), 40_001);
    assert_eq!(dead_letter_count(&server, &stream).await, 1);
}

#[tokio::test]
async fn in_pull_mode_a_huge_entry_is_dead_lettered_and_the_good_ones_behind_it_are_reserved() {
    let server = RedisServer::start();
    let stream = unique("huge-pull");
    let publisher = publisher_to(server.url(), &stream).await;
    write_huge_entry(&server, &stream, 10_000).await;
    publish_jobs(&publisher, 0..5).await;
    let mut pull = quick_consumer(&server, &stream, "pull")
        .build_pull()
        .await
        .unwrap();
    let reserved = pull.reserve(10).await.unwrap();
    assert_eq!(reserved.len(), 5, "the good entries behind it are reserved");
    pull.ack(&reserved).await.unwrap();
    wait_until("the huge entry is dead-lettered", || {
        pull.status().dead_lettered == 1
    })
    .await;
    pull.close().await.unwrap();
    assert_eq!(dead_letter_count(&server, &stream).await, 1);
    assert_eq!(pending(&server, &stream, "pull").await, 0);
}

#[tokio::test]
async fn a_stream_deleted_and_written_again_under_a_running_consumer_loses_no_entry() {
    let server = RedisServer::start();
    let (read, replaced) = (unique("read"), unique("replaced"));
    let runs = Runs::default();
    // New entries only: the replaced stream was never read when it goes.
    let consumer = quick_consumer(&server, &read, "g")
        .stream(&replaced)
        .start_from(events::StartFrom::New)
        .handle(working(&runs, Duration::ZERO))
        .build()
        .await
        .unwrap();
    let running = Running::start(std::slice::from_ref(&consumer));
    wait_until("the consumer runs", || consumer.status().running).await;
    publish_jobs(&publisher_to(server.url(), &read).await, 0..3).await;
    wait_until("the read stream's events are handled", || {
        runs.distinct() == 3
    })
    .await;

    let publisher = publisher_to(server.url(), &replaced).await;
    let mut transaction = redis::pipe();
    transaction.atomic().del(&replaced);
    for n in 3..8 {
        let envelope = publisher
            .envelope(&Job { n }, PublishOptions::new())
            .unwrap();
        let fields: Vec<(String, String)> = envelope
            .fields()
            .into_iter()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        transaction.xadd(&replaced, "*", &fields);
    }
    let _: () = transaction
        .query_async(&mut connection(&server).await)
        .await
        .unwrap();
    wait_until("the events written with the new stream are handled", || {
        runs.distinct() == 8
    })
    .await;
    running.close().await;
    runs.assert_each_once(0..8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_longer_than_claim_idle_takes_no_entry_from_a_live_consumer() {
    let server = RedisServer::own();
    let stream = unique("stall");
    let publisher = publisher_to(server.url(), &stream).await;
    publish_jobs(&publisher, 0..80).await;
    let (runs, consumers, running) =
        start_workers(&server, &stream, 2, Duration::from_millis(50), |consumer| {
            consumer.concurrency(2)
        })
        .await;
    wait_until("some are handled", || runs.distinct() >= 10).await;
    // Two and a half times claim_idle: when Redis is back, every entry looks idle.
    let stalled = stall(&server, Duration::from_millis(2_500));
    wait_until("all are handled", || {
        sum(&consumers, |status| status.processed) == 80
    })
    .await;
    drop(stalled);
    running.close().await;

    runs.assert_each_once(0..80);
    assert_eq!(sum(&consumers, |status| status.reclaimed), 0);
    assert_eq!(pending(&server, &stream, "workers").await, 0);
}

/// One worker of 300 jobs (20 ms each, 8 at once, stopping within `shutdown_timeout`), caught by
/// a stall of Redis once some are handled.
struct StalledAmidWork {
    server: RedisServer,
    stream: String,
    runs: Runs,
    consumers: Vec<Consumer>,
    running: Running,
    /// Ends the stall early when dropped.
    stalled: tokio_util::task::AbortOnDropHandle<()>,
    stalled_at: Instant,
}

impl StalledAmidWork {
    /// Returns a moment into a stall of `stall_length`: the handlers under way then finish
    /// during the stall, and their acknowledgements wait for Redis.
    async fn start(name: &str, shutdown_timeout: Duration, stall_length: Duration) -> Self {
        let server = RedisServer::own();
        let stream = unique(name);
        publish_jobs(&publisher_to(server.url(), &stream).await, 0..300).await;
        let (runs, consumers, running) =
            start_workers(&server, &stream, 1, Duration::from_millis(20), |consumer| {
                consumer.concurrency(8).shutdown_timeout(shutdown_timeout)
            })
            .await;
        wait_until("some are handled", || runs.distinct() >= 20).await;
        let stalled = stall(&server, stall_length);
        let stalled_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        Self {
            server,
            stream,
            runs,
            consumers,
            running,
            stalled,
            stalled_at,
        }
    }
}

/// A consumer told to stop while Redis stalls, for less than its shutdown timeout, waits for Redis:
/// it settles the events it ran and hands over the rest, and a consumer started after it runs each
/// of those once. Nothing runs twice, nothing stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_stopped_while_redis_stalls_settles_what_it_ran_and_nothing_runs_twice() {
    let stall_length = Duration::from_millis(1_500);
    let work = StalledAmidWork::start("stop-in-stall", Duration::from_secs(10), stall_length).await;
    let (server, stream, runs, stalled_at) =
        (&work.server, &work.stream, &work.runs, work.stalled_at);
    work.running.close().await;
    assert!(
        stalled_at.elapsed() >= stall_length,
        "the consumer returned in {:?}, before Redis answered again",
        stalled_at.elapsed()
    );
    drop(work.stalled);
    let ran_first = runs.distinct();
    assert!(ran_first < 300, "the first consumer stopped before the end");
    assert_eq!(work.consumers[0].status().processed, ran_first as u64);

    let after = build_all(1, |_| {
        quick_consumer(server, stream, "workers")
            .consumer_name("after")
            .handle(working(runs, Duration::ZERO))
    })
    .await;
    let running_after = Running::start(&after);
    wait_until("the rest are handled", || runs.distinct() == 300).await;
    running_after.close().await;
    runs.assert_each_once(0..300);
    assert_eq!(after[0].status().duplicates, 0);
    assert_eq!(pending(server, stream, "workers").await, 0);
}

/// Stopped while Redis stalls past the shutdown timeout, a consumer returns within that timeout
/// (and its second for acknowledgements), and it and a pull consumer say that acknowledgements of
/// events they handled may not have landed, naming the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_while_redis_stalls_past_the_shutdown_timeout_is_an_error_naming_the_stream() {
    let work = StalledAmidWork::start(
        "unsettled",
        Duration::from_millis(300),
        Duration::from_secs(3),
    )
    .await;
    let (server, stream) = (&work.server, &work.stream);
    let stopping = Instant::now();
    let stopped = work.running.stop().await;
    // The shutdown timeout and a second for acknowledgements, not the stall.
    assert!(
        stopping.elapsed() < Duration::from_millis(2_500),
        "stopping took {:?}",
        stopping.elapsed()
    );
    assert!(
        matches!(&stopped[..], [Err(events::Error::Unsettled { streams })] if *streams == [stream.to_owned()]),
        "{stopped:?}"
    );
    drop(work.stalled);

    let mut pull = quick_consumer(server, stream, "pulling")
        .shutdown_timeout(Duration::from_millis(300))
        .build_pull()
        .await
        .unwrap();
    let reserved = pull.reserve(10).await.unwrap();
    assert_eq!(reserved.len(), 10);
    let stalled = stall(server, Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The acknowledgements are queued at once; waiting for them to land is given up.
    let _ = tokio::time::timeout(Duration::from_millis(100), pull.ack(&reserved)).await;
    let closed = pull.close().await;
    assert!(
        matches!(&closed, Err(events::Error::Unsettled { streams }) if *streams == [stream.to_owned()]),
        "{closed:?}"
    );
    drop(stalled);
}

/// A pull consumer of two streams closing while a dead-letter move of one of them cannot land
/// says so, naming that stream and not the other, whose acknowledgement landed.
#[tokio::test]
async fn closing_with_a_dead_letter_move_under_way_names_only_its_stream() {
    let server = RedisServer::start();
    let (refusing, fine) = (unique("moves-refused"), unique("moves-fine"));
    // The dead-letter key holds a string: every move there fails.
    let _: () = connection(&server)
        .await
        .set(dead_letter_stream(&refusing), "not a stream")
        .await
        .unwrap();
    for stream in [&refusing, &fine] {
        publish_jobs(&publisher_to(server.url(), stream).await, 0..1).await;
    }
    let mut pull = quick_consumer(&server, &refusing, "pulling")
        .stream(&fine)
        .max_attempts(1)
        .shutdown_timeout(Duration::from_millis(300))
        .build_pull()
        .await
        .unwrap();
    let reserved = pull.reserve(10).await.unwrap();
    assert_eq!(reserved.len(), 2);
    let (to_fail, to_ack): (Vec<_>, Vec<_>) = reserved
        .into_iter()
        .partition(|reserved| reserved.stream == refusing);
    pull.ack(&to_ack).await.unwrap();
    pull.fail(&to_fail, "failed for good").await.unwrap();
    let closed = pull.close().await;
    assert!(
        matches!(&closed, Err(events::Error::Unsettled { streams }) if *streams == [refusing.clone()]),
        "{closed:?}"
    );
    assert_eq!(pending(&server, &fine, "pulling").await, 0);
    assert_eq!(pending(&server, &refusing, "pulling").await, 1);
}

/// Reads and claims whose replies were lost count deliveries in Redis without starting a handler:
/// they use up none of an event's attempts. Here the events' eighth deliveries are their first
/// attempts, and job 0, failing twice, still gets its third.
#[tokio::test]
async fn deliveries_whose_replies_were_lost_use_up_no_attempts() {
    let server = RedisServer::start();
    let stream = unique("lost-replies");
    publish_jobs(&publisher_to(server.url(), &stream).await, 0..3).await;
    lost_deliveries(&server, &stream, "workers", 7).await;
    let attempts: Arc<Mutex<BTreeMap<u64, Vec<u32>>>> = Arc::default();
    let handler = {
        let attempts = Arc::clone(&attempts);
        move |job: Job, context: Context| {
            let attempt = context.attempt();
            attempts
                .lock()
                .unwrap()
                .entry(job.n)
                .or_default()
                .push(attempt);
            let result = if job.n == 0 && attempt < 3 {
                Err(HandlerError::from("not yet"))
            } else {
                Ok(())
            };
            futures::future::ready(result)
        }
    };
    let consumer = quick_consumer(&server, &stream, "workers")
        .max_attempts(5)
        .handle(handler)
        .build()
        .await
        .unwrap();
    let running = Running::start(std::slice::from_ref(&consumer));
    wait_until("every job is handled", || consumer.status().processed == 3).await;
    running.close().await;
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(
        attempts,
        BTreeMap::from([(0, vec![1, 2, 3]), (1, vec![1]), (2, vec![1])])
    );
    assert_eq!(dead_letter_count(&server, &stream).await, 0);
    assert_eq!(pending(&server, &stream, "workers").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_every_200_ms_lose_and_repeat_nothing() {
    let server = RedisServer::own();
    let stream = unique("killed");
    let publisher = publisher_to(server.url(), &stream).await;
    publish_jobs(&publisher, 0..1000).await;
    // Built first: a connection killed while a consumer is built fails the build, as it should;
    // the kills come while they read and handle.
    let (runs, consumers) =
        build_workers(&server, &stream, 3, Duration::from_millis(10), |consumer| {
            consumer.concurrency(4).batch_size(20)
        })
        .await;
    let killer = ConnectionKiller::start(&server, Duration::from_millis(200)).await;
    let running = Running::start(&consumers);
    wait_until("all are handled", || runs.distinct() == 1000).await;
    let killed = killer.killed();
    drop(killer);
    // Entries whose read reply was lost are taken over once idle: wait until none is pending.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending(&server, &stream, "workers").await > 0 {
        assert!(Instant::now() < deadline, "entries stay pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.close().await;

    assert!(killed >= 10, "connections were killed: {killed}");
    runs.assert_each_once(0..1000);
    assert_eq!(sum(&consumers, |status| status.processed), 1000);
}

/// Which consumer started which job, in the order they started, and which jobs finished.
#[derive(Debug, Clone, Default)]
struct Starts {
    started: Arc<Mutex<Vec<(u64, usize)>>>,
    finished: Arc<Mutex<std::collections::BTreeSet<u64>>>,
}

impl Starts {
    /// A handler for consumer `index`: records the start, works for `work`, records the finish.
    fn handler(
        &self,
        index: usize,
        work: Duration,
    ) -> impl Fn(Job, Context) -> BoxFuture<'static, Result<(), HandlerError>> + Clone + use<> {
        let starts = self.clone();
        move |job: Job, _: Context| {
            starts.started.lock().unwrap().push((job.n, index));
            let finished = Arc::clone(&starts.finished);
            async move {
                tokio::time::sleep(work).await;
                finished.lock().unwrap().insert(job.n);
                Ok(())
            }
            .boxed()
        }
    }
}

/// How many entries of `stream` the group `group` has not read yet.
async fn lag(server: &RedisServer, stream: &str, group: &str) -> u64 {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(&mut connection(server).await)
        .await
        .unwrap();
    let info = groups
        .iter()
        .find(|info| info.get("name") == Some(&redis::Value::BulkString(group.into())))
        .expect("the group exists");
    redis::from_redis_value(info["lag"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_joining_stopping_and_crashing_amid_copies_rerun_only_what_a_crash_cut_off() {
    let server = RedisServer::own();
    let stream = unique("churn");
    let publisher = publisher_to(server.url(), &stream).await;
    // 300 jobs, each written twice (one event, two entries): 600 entries, 60 ms of work each.
    for n in 0..300 {
        publish_twice(&server, &publisher, &stream, &Job { n }).await;
    }
    let starts = Starts::default();
    let member = |index: usize| {
        quick_consumer(&server, &stream, "churn")
            .consumer_name(format!("c{index}"))
            .concurrency(4)
            .batch_size(10)
            .max_unacked(20)
            .handle(starts.handler(index, Duration::from_millis(60)))
    };
    // Two at a time; every 300 ms the older leaves, stopped (its handlers finishing within the
    // shutdown timeout) or crashed (its task dropped mid-work), and a new one joins.
    let mut members: std::collections::VecDeque<(usize, Running)> =
        std::collections::VecDeque::new();
    for index in 0..2 {
        members.push_back((index, Running::build(member(index)).await.1));
    }
    let mut crashed = std::collections::BTreeSet::new();
    for index in 2..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (leaving, running) = members.pop_front().unwrap();
        if index % 2 == 0 {
            running.crash().await;
            crashed.insert(leaving);
        } else {
            for stopped in running.stop().await {
                stopped.expect("a consumer stops without an error");
            }
        }
        members.push_back((index, Running::build(member(index)).await.1));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = starts.finished.lock().unwrap().len() == 300
            && lag(&server, &stream, "churn").await == 0
            && pending(&server, &stream, "churn").await == 0;
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "entries left unsettled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (_, running) in members {
        running.close().await;
    }

    assert!(!crashed.is_empty());
    // A job starts again only after a start cut off by a crash: never for its copy, never after
    // a consumer that stopped.
    let started = starts.started.lock().unwrap().clone();
    let mut by_job: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (n, index) in started {
        by_job.entry(n).or_default().push(index);
    }
    assert_eq!(by_job.len(), 300, "every job started");
    assert!(
        by_job.values().any(|by| by.len() > 1),
        "a crash cut starts off and other consumers ran those jobs again"
    );
    let wrong: Vec<(&u64, &Vec<usize>)> = by_job
        .iter()
        .filter(|(_, by)| {
            by[..by.len() - 1]
                .iter()
                .any(|index| !crashed.contains(index))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "jobs started again after a start no crash cut off (job, consumers): {wrong:?}"
    );
    assert_eq!(dead_letter_count(&server, &stream).await, 0);
}

#[tokio::test]
async fn a_keys_next_event_starts_only_after_the_previous_one_is_settled() {
    let server = RedisServer::own();
    let stream = unique("turns");
    let publisher = publisher_to_partitions(server.url(), &stream, 2).await;
    let runs = Runs::default();
    let consumer = quick(
        Consumer::builder(server.url())
            .partitioned_stream(&stream, 2)
            .group("turns"),
    )
    .partition_lease(Duration::from_millis(600))
    .handle(working(&runs, Duration::ZERO))
    .build()
    .await
    .unwrap();
    let running = Running::start(std::slice::from_ref(&consumer));
    wait_until("the consumer runs", || consumer.status().running).await;
    deny(&server, "xack").await;
    let key = |key: &str| PublishOptions::new().partition_key(key);
    publisher
        .publish_with(&Job { n: 1 }, key("a"))
        .await
        .unwrap();
    wait_until("the first of key a is handled", || runs.of(1) == 1).await;
    publisher
        .publish_with(&Job { n: 2 }, key("a"))
        .await
        .unwrap();
    // While the first one's acknowledgement fails, the second of its key waits.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        runs.of(2),
        0,
        "the next event of a key waits until the one before is settled"
    );
    allow(&server, "xack").await;
    wait_until("the second of key a is handled", || runs.of(2) == 1).await;
    running.close().await;
}

#[tokio::test]
async fn a_panicking_hook_harms_no_delivery() {
    let server = RedisServer::start();
    let stream = unique("hook-panic");
    let publisher = publisher_to(server.url(), &stream).await;
    publish_jobs(&publisher, 0..50).await;
    let runs = Runs::default();
    let calls = Arc::new(AtomicU32::new(0));
    let consumer = quick_consumer(&server, &stream, "hooks")
        .before({
            let calls = Arc::clone(&calls);
            move |_| {
                if calls.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                    panic!("a hook that panics");
                }
            }
        })
        .handle(working(&runs, Duration::from_millis(5)))
        .build()
        .await
        .unwrap();
    let running = Running::start(std::slice::from_ref(&consumer));
    wait_until("all are handled", || consumer.status().processed == 50).await;
    running.close().await;
    runs.assert_each_once(0..50);
    assert_eq!(calls.load(Ordering::Relaxed), 50);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "job.step")]
struct Step {
    key: String,
    seq: u64,
}

/// One handler run of a step: its key and sequence number, when it ran, and where.
type StepRun = (String, u64, Instant, Instant, &'static str);

/// A consumer starts reading a partition at once when nobody may still be reading it: on a new
/// group, and after its last holder stopped gracefully. Reads block for 5 s here: waiting one out,
/// as a consumer taking a partition from one that may still be reading it must, takes 5.1 s.
#[tokio::test]
async fn partitions_nobody_reads_are_read_at_once() {
    let server = RedisServer::start();
    let stream = unique("unread");
    let publisher = publisher_to_partitions(server.url(), &stream, 4).await;
    let runs = Runs::default();
    for (round, name) in ["first", "second"].into_iter().enumerate() {
        let consumer = quick_partitioned_consumer(&server, &stream, 4, "g")
            .consumer_name(name)
            .block(Duration::from_secs(5))
            .handle(working(&runs, Duration::ZERO))
            .build()
            .await
            .unwrap();
        let started = Instant::now();
        let running = Running::start(std::slice::from_ref(&consumer));
        let first = round as u64 * 20;
        publish_jobs(&publisher, first..first + 20).await;
        wait_until(&format!("the {name} consumer handles its jobs"), || {
            runs.distinct() == first as usize + 20
        })
        .await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "the {name} consumer took {took:?} to handle its jobs"
        );
        running.close().await;
    }
    runs.assert_each_once(0..40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_changes_hands_only_after_its_old_owner_finished_it() {
    let server = RedisServer::start();
    let stream = unique("handover");
    let publisher = publisher_to_partitions(server.url(), &stream, 4).await;
    // Steps `seqs` of 8 keys, a round of keys at a time with `pause` between rounds.
    let publish_steps = |seqs: std::ops::Range<u64>, pause: Duration| {
        let publisher = &publisher;
        async move {
            for seq in seqs {
                tokio::time::sleep(pause).await;
                for key in 0..8 {
                    let step = Step {
                        key: format!("k{key}"),
                        seq,
                    };
                    let options = PublishOptions::new().partition_key(step.key.clone());
                    publisher.publish_with(&step, options).await.unwrap();
                }
            }
        }
    };
    let steps: Arc<Mutex<Vec<StepRun>>> = Arc::default();
    let consumer = |name: &'static str| {
        let steps = Arc::clone(&steps);
        quick_partitioned_consumer(&server, &stream, 4, "handover")
            .consumer_name(name)
            .concurrency(8)
            .partition_lease(Duration::from_millis(600))
            .handle(move |step: Step, _: Context| {
                let steps = Arc::clone(&steps);
                async move {
                    let started = Instant::now();
                    // 15 steps of a key take 1.5 s one after another: longer than claim_idle.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    steps
                        .lock()
                        .unwrap()
                        .push((step.key, step.seq, started, Instant::now(), name));
                    Ok(())
                }
            })
            .build()
    };
    publish_steps(0..15, Duration::ZERO).await;
    let first = consumer("first").await.unwrap();
    let running_first = Running::start(std::slice::from_ref(&first));
    wait_until("the first consumer works", || {
        !steps.lock().unwrap().is_empty()
    })
    .await;
    // A second consumer joins while the first has every key's backlog in hand: half the
    // partitions move to it, and the events of their keys that come meanwhile go to it.
    let second = consumer("second").await.unwrap();
    let running_second = Running::start(std::slice::from_ref(&second));
    publish_steps(15..30, Duration::from_millis(150)).await;
    wait_until("all 240 are handled", || steps.lock().unwrap().len() == 240).await;
    running_first.close().await;
    running_second.close().await;

    let steps = steps.lock().unwrap();
    assert!(
        steps.iter().any(|(.., consumer)| *consumer == "second"),
        "partitions changed hands"
    );
    for key in 0..8 {
        let key = format!("k{key}");
        let mut of_key: Vec<&StepRun> = steps.iter().filter(|step| step.0 == key).collect();
        of_key.sort_by_key(|step| step.2);
        let order: Vec<u64> = of_key.iter().map(|step| step.1).collect();
        assert_eq!(
            order,
            (0..30).collect::<Vec<_>>(),
            "key {key} in order, each once"
        );
        for pair in of_key.windows(2) {
            assert!(
                pair[0].3 <= pair[1].2,
                "key {key}: step {} (on {}) started before step {} (on {}) ended",
                pair[1].1,
                pair[1].4,
                pair[0].1,
                pair[0].4
            );
        }
    }
}

/// Runs `consumer` on a runtime of its own, on a thread of its own, until `stop`: what blocks the
/// test's threads does not hold it up. Returns its status then.
fn run_apart(
    consumer: ConsumerBuilder,
    stop: tokio_util::sync::CancellationToken,
) -> std::thread::JoinHandle<events::Status> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (consumer, running) = Running::build(consumer).await;
            stop.cancelled().await;
            running.close().await;
            consumer.status()
        })
    })
}

/// A pull consumer whose caller stops polling `reserve` once its read is out (its threads busy
/// elsewhere, its process paused) for three times `claim_idle` hands out none of what that read
/// got: another consumer took it over meanwhile and ran it.
#[tokio::test]
async fn a_reserve_resumed_after_claim_idle_hands_out_nothing_another_consumer_took() {
    let server = RedisServer::start();
    let stream = unique("paused-reserve");
    let runs = Runs::default();
    let mut pull = quick_consumer(&server, &stream, "g")
        .consumer_name("paused")
        .block(Duration::from_secs(10))
        .build_pull()
        .await
        .unwrap();
    let other = quick_consumer(&server, &stream, "g")
        .consumer_name("other")
        .handle(working(&runs, Duration::ZERO))
        .build()
        .await
        .unwrap();
    let reserved = {
        let reserving = pull.reserve(10);
        tokio::pin!(reserving);
        // Its read waits in Redis for entries.
        tokio::select! {
            reserved = &mut reserving => panic!("nothing to reserve yet: {reserved:?}"),
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        publish_jobs(&publisher_to(server.url(), &stream).await, 0..3).await;
        let running = Running::start(std::slice::from_ref(&other));
        tokio::time::sleep(Duration::from_secs(3)).await;
        wait_until("the other consumer ran every job", || runs.distinct() == 3).await;
        let reserved = reserving.await.unwrap();
        running.close().await;
        reserved
    };
    for reserved in &reserved {
        runs.record(reserved.envelope.decode_body::<Job>().unwrap().n);
    }
    pull.ack(&reserved).await.unwrap();
    pull.close().await.unwrap();
    runs.assert_each_once(0..3);
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

/// The same in push mode: a consumer that crashed with entries in hand has them taken over while
/// every connection is killed every `claim_interval`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_consumer_s_deliveries_are_taken_over_while_connections_are_killed_as_often_as_looks()
 {
    let server = RedisServer::own();
    let stream = unique("push-taken-over-killed");
    publish_jobs(&publisher_to(server.url(), &stream).await, 0..5).await;
    let runs = Runs::default();
    let (crashed, crashing) = Running::build(
        quick_consumer(&server, &stream, "g")
            .consumer_name("crashed")
            .handle(working(&runs, Duration::from_secs(60))),
    )
    .await;
    wait_until("the crashing consumer has every job in hand", || {
        crashed.status().in_flight == 5
    })
    .await;
    crashing.crash().await;
    let killer = ConnectionKiller::start(&server, Duration::from_millis(200)).await;
    let (taking, running) = Running::build(
        quick_consumer(&server, &stream, "g")
            .consumer_name("taking")
            .handle(working(&runs, Duration::ZERO)),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while taking.status().processed < 5 {
        let processed = taking.status().processed;
        assert!(Instant::now() < deadline, "taken over: {processed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(killer);
    running.close().await;
    assert_eq!(taking.status().reclaimed, 5);
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

/// Pull consumers sharing a backlog deeper than they reserve at once, two holding what they
/// reserved for longer than `claim_idle` before settling it while the third settles at once and
/// reserves again (taking over whatever is idle past `claim_idle`), all failing every tenth job
/// once, while every connection is killed every 200 ms: each job is handed out once (a failed one
/// once more, as its second attempt), none is taken over while held, and nothing is left pending
/// or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_consumers_holding_past_claim_idle_under_killed_connections_hand_each_job_out_once() {
    const JOBS: u64 = 120;
    let server = RedisServer::own();
    let stream = unique("pull-killed");
    publish_jobs(&publisher_to(server.url(), &stream).await, 0..JOBS).await;
    // Each hand-out as (job, attempt), and the jobs acknowledged.
    let handed = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let mut pulls = Vec::new();
    for n in 0..3 {
        let pull = quick_consumer(&server, &stream, "pullers")
            .consumer_name(format!("puller-{n}"))
            .build_pull()
            .await
            .unwrap();
        pulls.push(pull);
    }
    let killer = ConnectionKiller::start(&server, Duration::from_millis(200)).await;
    let pulling = pulls.into_iter().enumerate().map(|(n, mut pull)| {
        let (handed, acked) = (Arc::clone(&handed), Arc::clone(&acked));
        let hold = if n == 0 { 50 } else { 3000 };
        tokio::spawn(async move {
            while acked.lock().unwrap().len() < JOBS as usize {
                // A read on a killed connection fails: the next call reads again.
                let Ok(reserved) = pull.reserve(10).await else {
                    continue;
                };
                let job =
                    |reserved: &events::Reserved| reserved.envelope.decode_body::<Job>().unwrap().n;
                for reserved in &reserved {
                    handed
                        .lock()
                        .unwrap()
                        .push((job(reserved), reserved.attempt));
                }
                tokio::time::sleep(Duration::from_millis(hold)).await;
                let (failing, done): (Vec<_>, Vec<_>) = reserved
                    .into_iter()
                    .partition(|reserved| job(reserved) % 10 == 0 && reserved.attempt == 1);
                pull.fail(&failing, "once").await.unwrap();
                pull.ack(&done).await.unwrap();
                acked.lock().unwrap().extend(done.iter().map(job));
            }
            pull.close().await
        })
    });
    for closed in futures::future::join_all(pulling).await {
        closed.unwrap().unwrap();
    }
    let killed = killer.killed();
    drop(killer);

    assert!(killed >= 10, "connections were killed: {killed}");
    let mut handed = handed.lock().unwrap().clone();
    handed.sort_unstable();
    let expected: Vec<(u64, u32)> = (0..JOBS)
        .flat_map(|n| {
            let again = (n % 10 == 0).then_some((n, 2));
            std::iter::once((n, 1)).chain(again)
        })
        .collect();
    assert_eq!(
        handed, expected,
        "each job handed out once, a failed one once more"
    );
    assert_eq!(pending(&server, &stream, "pullers").await, 0);
    assert_eq!(dead_letter_count(&server, &stream).await, 0);
}

/// A crashed pull consumer's entries are taken over while every connection is killed every
/// `claim_interval`: each look for idle entries is the first command on a connection killed since
/// its last, and is asked again on the new one rather than failing every time.
#[tokio::test]
async fn a_crashed_consumer_s_entries_are_taken_over_while_connections_are_killed_as_often_as_looks()
 {
    let server = RedisServer::own();
    let stream = unique("taken-over-killed");
    publish_jobs(&publisher_to(server.url(), &stream).await, 0..5).await;
    let mut crashed = quick_consumer(&server, &stream, "g")
        .consumer_name("crashed")
        .build_pull()
        .await
        .unwrap();
    assert_eq!(crashed.reserve(10).await.unwrap().len(), 5);
    drop(crashed);
    let mut taking = quick_consumer(&server, &stream, "g")
        .consumer_name("taking")
        .build_pull()
        .await
        .unwrap();
    let killer = ConnectionKiller::start(&server, Duration::from_millis(200)).await;
    let mut taken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while taken.len() < 5 {
        assert!(Instant::now() < deadline, "taken over: {}", taken.len());
        if let Ok(reserved) = taking.reserve(10).await {
            taking.ack(&reserved).await.unwrap();
            taken.extend(reserved);
        }
    }
    assert!(
        killer.killed() >= 5,
        "connections were killed: {}",
        killer.killed()
    );
    drop(killer);
    let reclaimed = taking.status().reclaimed;
    taking.close().await.unwrap();
    assert_eq!(reclaimed, 5);
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

/// Consumers of a partitioned stream keep their leases and handle every job once while every
/// connection is killed every 200 ms, a third of the lease; the publisher writes a batch again
/// when its write fails (some of it may have landed: those events are repeats).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_leases_hold_while_connections_are_killed_every_third_of_a_lease() {
    let server = RedisServer::own();
    let stream = unique("leases-killed");
    let publisher = publisher_to_partitions(server.url(), &stream, 4).await;
    let runs = Runs::default();
    let mut consumers = Vec::new();
    for name in ["one", "two"] {
        let consumer = quick_partitioned_consumer(&server, &stream, 4, "g")
            .consumer_name(name)
            .partition_lease(Duration::from_millis(600))
            .handle(working(&runs, Duration::ZERO))
            .build()
            .await
            .unwrap();
        consumers.push(consumer);
    }
    let running = Running::start(&consumers);
    let killer = ConnectionKiller::start(&server, Duration::from_millis(200)).await;
    for first in (0..400).step_by(20) {
        // Retried as a publisher retries after a lost reply: the same events, with their ids (a
        // write whose reply a kill cut off may have landed; its copy is then a repeat).
        let envelopes: Vec<_> = (first..first + 20)
            .map(|n| {
                publisher
                    .envelope(&Job { n }, PublishOptions::new())
                    .unwrap()
            })
            .collect();
        while publisher
            .publish_envelopes(envelopes.clone())
            .await
            .is_err()
        {}
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    while runs.distinct() < 400 {
        let handled = runs.distinct();
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "handled: {handled}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed = killer.killed();
    drop(killer);
    running.close().await;
    assert!(killed >= 5, "connections were killed: {killed}");
    runs.assert_each_once(0..400);
}

/// A pull consumer holding what it reserved through a stall of Redis three times `claim_idle`
/// long, beside another that reserves again all the while: every entry looks idle once Redis is
/// back, yet the holder's keep, queued meanwhile, lands before the other's second look. Each job
/// is handed out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_held_through_a_stall_past_claim_idle_are_not_taken_over() {
    let server = RedisServer::start();
    let stream = unique("pull-stalled");
    publish_jobs(&publisher_to(server.url(), &stream).await, 0..10).await;
    let pull = |name: &str| {
        quick_consumer(&server, &stream, "g")
            .consumer_name(name)
            .build_pull()
    };
    let (mut holder, mut other) = (pull("holder").await.unwrap(), pull("other").await.unwrap());
    let held = holder.reserve(10).await.unwrap();
    assert_eq!(held.len(), 10);
    let stalled = stall(&server, Duration::from_secs(3));
    // The other reserves again and again through the stall and for two seconds after it.
    let reserving = tokio::spawn(async move {
        let mut taken = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(reserved) = other.reserve(10).await {
                other.ack(&reserved).await.unwrap();
                taken.extend(reserved);
            }
        }
        other.close().await.unwrap();
        taken
    });
    let taken = reserving.await.unwrap();
    drop(stalled);
    holder.ack(&held).await.unwrap();
    holder.close().await.unwrap();
    let taken: Vec<&str> = taken.iter().map(|reserved| &*reserved.entry_id).collect();
    assert!(taken.is_empty(), "taken over while held: {taken:?}");
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

/// Handlers that block every thread of their consumer's runtime for three times `claim_idle`
/// (synchronous or CPU-bound work) hold up no keep: another consumer, on a runtime of its own,
/// takes none of the entries they work on, and each job runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_blocking_every_thread_longer_than_claim_idle_run_each_job_once() {
    let server = RedisServer::start();
    let stream = unique("blocking");
    publish_jobs(&publisher_to(server.url(), &stream).await, 0..8).await;
    let runs = Runs::default();
    let blocking = {
        let runs = runs.clone();
        move |job: Job, _: Context| {
            runs.record(job.n);
            std::thread::sleep(Duration::from_secs(3));
            futures::future::ready(Ok(())).boxed()
        }
    };
    // One entry per read: the deliveries run in tasks of their own, on both threads at once.
    let (blocked, running) = Running::build(
        quick_consumer(&server, &stream, "g")
            .consumer_name("blocked")
            .concurrency(4)
            .batch_size(1)
            .handle(blocking),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = quick_consumer(&server, &stream, "g")
        .consumer_name("other")
        .handle(working(&runs, Duration::ZERO));
    let stop_other = tokio_util::sync::CancellationToken::new();
    let other = run_apart(other, stop_other.clone());
    // Nothing asks Redis from this runtime while its threads are blocked.
    wait_until("every job ran and no handler runs", || {
        runs.distinct() == 8 && blocked.status().in_flight == 0
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending(&server, &stream, "g").await > 0 {
        assert!(Instant::now() < deadline, "entries stay pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_other.cancel();
    let other = other.join().unwrap();
    running.close().await;

    // Each once: the other consumer ran none of those the blocked one was working on (it may
    // take those read but not yet kept while every thread was blocked; the blocked one then
    // gives them up).
    runs.assert_each_once(0..8);
    assert_eq!(blocked.status().processed + other.processed, 8, "{other:?}");
    assert_eq!(dead_letter_count(&server, &stream).await, 0);
}
