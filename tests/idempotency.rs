//! Idempotency against a real server: repeats of the same event are caught within the window,
//! distinct events are never merged, marks stay compact, and what can evict them is said.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::faults::config_set;
use crate::support::{
    RedisServer, Running, connection, pending, publisher_to, quick_consumer, unique, wait_until,
};
use events::{
    Consumer, Context, Event, HandlerError, HandlerOptions, Identity, PublishOptions, Publisher,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "audit.login")]
struct Login {
    user: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "order.placed")]
struct OrderPlaced {
    #[event(idempotency_key)]
    order_id: String,
    total: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "order.paid")]
struct OrderPaid {
    #[event(idempotency_key)]
    order_id: String,
    total: u32,
}

/// Handler runs by a label of the event.
#[derive(Debug, Clone, Default)]
struct Runs(Arc<Mutex<BTreeMap<String, u32>>>);

impl Runs {
    fn record(&self, label: impl Into<String>) {
        *self.0.lock().unwrap().entry(label.into()).or_default() += 1;
    }

    fn of(&self, label: &str) -> u32 {
        self.0.lock().unwrap().get(label).copied().unwrap_or(0)
    }

    fn total(&self) -> u32 {
        self.0.lock().unwrap().values().sum()
    }
}

fn logins(
    runs: &Runs,
) -> impl Fn(Login, Context) -> futures::future::Ready<Result<(), HandlerError>> + Clone + use<> {
    let runs = runs.clone();
    move |login: Login, _: Context| {
        runs.record(login.user);
        futures::future::ready(Ok(()))
    }
}

/// Waits until `consumer` has settled `count` entries, handled or as repeats.
async fn settled(consumer: &Consumer, count: u64) {
    wait_until(&format!("{count} entries are settled"), || {
        let status = consumer.status();
        status.processed + status.duplicates == count
    })
    .await;
}

#[tokio::test]
async fn a_retried_publish_runs_once_and_equal_bodies_under_new_ids_both_run() {
    let server = RedisServer::start();
    let stream = unique("identity");
    let runs = Runs::default();
    let (consumer, running) =
        Running::build(quick_consumer(&server, &stream, "g").handle(logins(&runs))).await;
    let publisher = publisher_to(server.url(), &stream).await;
    let ada = Login { user: "ada".into() };
    // The same event written twice, as a publisher retrying after a lost reply does.
    let envelope = publisher.envelope(&ada, PublishOptions::new()).unwrap();
    publisher
        .publish_envelopes(vec![envelope.clone(), envelope])
        .await
        .unwrap();
    // Ada logs in again: another event with an equal body.
    publisher.publish(&ada).await.unwrap();
    publisher.publish(&ada).await.unwrap();
    settled(&consumer, 4).await;
    running.close().await;

    assert_eq!(runs.of("ada"), 3, "three logins, one of them written twice");
    assert_eq!(consumer.status().duplicates, 1);
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

#[tokio::test]
async fn copies_read_together_while_another_copy_runs_all_wait_for_it() {
    for identity in [Identity::EventId, Identity::Content] {
        copies_read_together_wait_for_the_one_running(identity).await;
    }
}

/// One copy of an event runs slowly while five more are read in one batch: none of them runs.
async fn copies_read_together_wait_for_the_one_running(identity: Identity) {
    let server = RedisServer::start();
    let stream = unique("copies");
    let runs = Runs::default();
    let (consumer, running) = Running::build(
        quick_consumer(&server, &stream, "g")
            .identity(identity)
            .handle({
                let runs = runs.clone();
                move |login: Login, _: Context| {
                    runs.record(login.user);
                    async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<(), HandlerError>(())
                    }
                }
            }),
    )
    .await;
    let publisher = publisher_to(server.url(), &stream).await;
    let envelope = publisher
        .envelope(&Login { user: "ada".into() }, PublishOptions::new())
        .unwrap();
    publisher
        .publish_envelopes(vec![envelope.clone()])
        .await
        .unwrap();
    wait_until("the first copy runs", || runs.of("ada") == 1).await;
    publisher
        .publish_envelopes(vec![envelope; 5])
        .await
        .unwrap();
    settled(&consumer, 6).await;
    running.close().await;
    assert_eq!(runs.of("ada"), 1, "{identity:?}");
    assert_eq!(consumer.status().duplicates, 5);
}

#[tokio::test]
async fn a_copy_read_while_its_event_runs_waits_for_it_whatever_its_hold_looks_like() {
    let now = millis_ago(Duration::ZERO);
    // A hold names its entry by a number: for marks kept by time, counted from the event's time
    // (here the entry comes after it, and an hour before it, as from a publisher whose clock runs
    // ahead); for the others, the entry's time and sequence side by side.
    for (identity, event_millis) in [
        (Identity::EventId, now - 5_000),
        (Identity::EventId, now + 3_600_000),
        (Identity::Content, now),
    ] {
        a_copy_waits_for_the_one_running(identity, event_millis).await;
    }
}

/// One copy of an event of the time `event_millis` runs until released while another is read:
/// the other waits for it, seeing its hold's entry pending, and is a repeat once it is handled.
async fn a_copy_waits_for_the_one_running(identity: Identity, event_millis: u64) {
    let server = RedisServer::start();
    let stream = unique("waiting-copy");
    let runs = Runs::default();
    let release = Arc::new(tokio::sync::Notify::new());
    let (consumer, running) = Running::build(
        quick_consumer(&server, &stream, "g")
            .identity(identity)
            .handler_timeout(Duration::from_secs(10))
            .claim_idle(Duration::from_secs(20))
            .handle({
                let runs = runs.clone();
                let release = Arc::clone(&release);
                move |login: Login, _: Context| {
                    runs.record(login.user);
                    let release = Arc::clone(&release);
                    async move {
                        release.notified().await;
                        Ok::<(), HandlerError>(())
                    }
                }
            }),
    )
    .await;
    let publisher = publisher_to(server.url(), &stream).await;
    let mut envelope = publisher
        .envelope(&Login { user: "ada".into() }, PublishOptions::new())
        .unwrap();
    envelope.id = id_at(event_millis, 1);
    publisher
        .publish_envelopes(vec![envelope.clone()])
        .await
        .unwrap();
    wait_until("the first copy runs", || runs.of("ada") == 1).await;
    publisher.publish_envelopes(vec![envelope]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let case = format!("{identity:?}, event of {event_millis}");
    assert_eq!(consumer.status().duplicates, 0, "the copy waits: {case}");
    release.notify_one();
    settled(&consumer, 2).await;
    running.close().await;
    assert_eq!(runs.of("ada"), 1, "{case}");
    assert_eq!(consumer.status().duplicates, 1, "{case}");
}

#[tokio::test]
async fn an_event_deferred_on_its_first_delivery_runs_when_it_comes_round_again() {
    let server = RedisServer::start();
    let stream = unique("deferred-first");
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (consumer, running) = Running::build(quick_consumer(&server, &stream, "g").handle({
        let calls = Arc::clone(&calls);
        move |_: Login, _: Context| {
            // Deferred (no attempt counted, no delivery) the first time, handled the second.
            let first = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            async move {
                if first {
                    return Err(HandlerError::defer("not now", Duration::from_millis(50)));
                }
                Ok(())
            }
        }
    }))
    .await;
    let publisher = publisher_to(server.url(), &stream).await;
    publisher
        .publish(&Login { user: "ada".into() })
        .await
        .unwrap();
    settled(&consumer, 1).await;
    running.close().await;
    let status = consumer.status();
    assert_eq!((status.processed, status.duplicates), (1, 0));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn identity_by_content_merges_equal_bodies_when_asked() {
    let server = RedisServer::start();
    let stream = unique("content");
    let (logins_run, orders_run) = (Runs::default(), Runs::default());
    // The consumer identifies events by their content; one handler by event id all the same.
    let (consumer, running) = Running::build(
        quick_consumer(&server, &stream, "g")
            .identity(Identity::Content)
            .handle(logins(&logins_run))
            .handle_pattern_with(
                "audit.*",
                HandlerOptions::new().identity(Identity::EventId),
                {
                    let orders_run = orders_run.clone();
                    move |context: Context| {
                        orders_run.record(context.event_type().to_owned());
                        async { Ok(()) }
                    }
                },
            ),
    )
    .await;
    let publisher = publisher_to(server.url(), &stream).await;
    for _ in 0..3 {
        publisher
            .publish(&Login { user: "ada".into() })
            .await
            .unwrap();
        publisher
            .publish_raw("audit.logout", serde_json::json!({"user": "ada"}))
            .await
            .unwrap();
    }
    publisher
        .publish(&Login { user: "bob".into() })
        .await
        .unwrap();
    settled(&consumer, 7).await;
    running.close().await;

    assert_eq!(
        logins_run.of("ada"),
        1,
        "equal bodies are one event by content"
    );
    assert_eq!(logins_run.of("bob"), 1);
    assert_eq!(
        orders_run.of("audit.logout"),
        3,
        "by event id, three events"
    );
}

#[tokio::test]
async fn declared_keys_of_two_types_do_not_collide_and_identify_repeats_with_other_bodies() {
    let server = RedisServer::start();
    let stream = unique("declared");
    let runs = Runs::default();
    let (consumer, running) = Running::build(
        quick_consumer(&server, &stream, "g")
            .handle({
                let runs = runs.clone();
                move |order: OrderPlaced, _: Context| {
                    runs.record(format!("placed {} {}", order.order_id, order.total));
                    async { Ok(()) }
                }
            })
            .handle({
                let runs = runs.clone();
                move |order: OrderPaid, _: Context| {
                    runs.record(format!("paid {} {}", order.order_id, order.total));
                    async { Ok(()) }
                }
            }),
    )
    .await;
    let publisher = publisher_to(server.url(), &stream).await;
    let placed = |total| OrderPlaced {
        order_id: "o1".into(),
        total,
    };
    publisher.publish(&placed(10)).await.unwrap();
    // Of copies read at once, whichever asks first runs (see the test below): this one runs first.
    wait_until("the first report runs", || runs.of("placed o1 10") == 1).await;
    // The same order reported again with another body: the declared key says it is one event.
    publisher.publish(&placed(11)).await.unwrap();
    // Another type keyed by the same order id: another event.
    publisher
        .publish(&OrderPaid {
            order_id: "o1".into(),
            total: 10,
        })
        .await
        .unwrap();
    settled(&consumer, 3).await;
    running.close().await;

    assert_eq!(runs.of("placed o1 10"), 1);
    assert_eq!(runs.of("placed o1 11"), 0, "a repeat by its declared key");
    assert_eq!(
        runs.of("paid o1 10"),
        1,
        "the key is scoped by the event type"
    );
}

#[tokio::test]
async fn repeats_by_declared_key_read_together_before_any_was_handled_run_once() {
    let server = RedisServer::start();
    let stream = unique("declared-together");
    let publisher = publisher_to(server.url(), &stream).await;
    // Written before the consumer starts, so that they are read together: their holds by event id
    // come before any body told the consumer that the type declares a key. Each of 200 orders is
    // reported three times, the reports of different orders interleaved, so that the reports of
    // one order are read in different batches, which run side by side.
    let reports: Vec<OrderPlaced> = (0..3)
        .flat_map(|total| {
            (0..200).map(move |order| OrderPlaced {
                order_id: format!("o{order}"),
                total,
            })
        })
        .collect();
    publisher.publish_many(&reports).await.unwrap();
    let runs = Runs::default();
    let (consumer, running) = Running::build(quick_consumer(&server, &stream, "g").handle({
        let runs = runs.clone();
        move |order: OrderPlaced, _: Context| {
            runs.record(format!("{} {}", order.order_id, order.total));
            async { Ok(()) }
        }
    }))
    .await;
    settled(&consumer, 600).await;
    running.close().await;
    for order in 0..200 {
        let reports_run: u32 = (0..3)
            .map(|total| runs.of(&format!("o{order} {total}")))
            .sum();
        assert_eq!(reports_run, 1, "order o{order} runs once: {runs:?}");
    }
    assert_eq!(consumer.status().duplicates, 400);
}

/// Runs a consumer of group `g` on `stream` whose handler of `E` always fails, at most once an
/// event, until `count` events are dead-lettered.
async fn dead_letter_every<E: Event + serde::de::DeserializeOwned + Send + 'static>(
    server: &RedisServer,
    stream: &str,
    count: u64,
) {
    let (failing, running) =
        Running::build(quick_consumer(server, stream, "g").max_attempts(1).handle(
            |_: E, _: Context| async {
                Err::<(), _>(HandlerError::permanent("the service is down"))
            },
        ))
        .await;
    wait_until(&format!("{count} events are dead-lettered"), || {
        failing.status().dead_lettered == count
    })
    .await;
    running.close().await;
}

/// Replays the first dead letter of `stream`.
async fn replay_first_dead_letter(server: &RedisServer, stream: &str) {
    let mut letters = events::DeadLetters::new(
        connection(server).await,
        stream,
        events::dead_letter_stream(stream),
    );
    let letter = letters.all().await.unwrap().remove(0);
    letters.replay(&letter).await.unwrap().expect("replayed");
}

#[tokio::test]
async fn a_dead_lettered_event_of_a_keyed_type_runs_when_replayed_to_a_consumer_just_started() {
    let server = RedisServer::start();
    let stream = unique("keyed-replay");
    let publisher = publisher_to(server.url(), &stream).await;
    publisher
        .publish(&OrderPlaced {
            order_id: "o1".into(),
            total: 10,
        })
        .await
        .unwrap();
    // A consumer just started learns that the type declares a key from this very event, after
    // taking its hold by the event's id; both holds end dead with the failure.
    dead_letter_every::<OrderPlaced>(&server, &stream, 1).await;

    // Replayed to another consumer just started: it takes the hold by id again, then by key.
    let runs = Runs::default();
    let (consumer, running) = Running::build(quick_consumer(&server, &stream, "g").handle({
        let runs = runs.clone();
        move |order: OrderPlaced, _: Context| {
            runs.record(order.order_id);
            async { Ok(()) }
        }
    }))
    .await;
    replay_first_dead_letter(&server, &stream).await;
    settled(&consumer, 1).await;
    running.close().await;
    assert_eq!(runs.of("o1"), 1, "the replay runs");
    assert_eq!(consumer.status().duplicates, 0);
}

#[tokio::test]
async fn copies_of_a_dead_lettered_event_do_not_run_and_a_replay_does() {
    let server = RedisServer::start();
    let stream = unique("dead-copies");
    let publisher = publisher_to(server.url(), &stream).await;
    // Events kept by time, their holds written as page records: the dead mark written over the
    // first's hold decides for the copies behind it.
    let envelopes = logins_at(&publisher, &vec![millis_ago(Duration::ZERO); 40]);
    publisher
        .publish_envelopes(envelopes.clone())
        .await
        .unwrap();
    dead_letter_every::<Login>(&server, &stream, 40).await;

    let runs = Runs::default();
    let (consumer, running) =
        Running::build(quick_consumer(&server, &stream, "g").handle(logins(&runs))).await;
    publisher
        .publish_envelopes(envelopes.clone())
        .await
        .unwrap();
    settled(&consumer, 40).await;
    assert_eq!(
        runs.total(),
        0,
        "copies of dead-lettered events run: {runs:?}"
    );
    assert_eq!(consumer.status().duplicates, 40);

    replay_first_dead_letter(&server, &stream).await;
    settled(&consumer, 41).await;
    running.close().await;
    assert_eq!(runs.total(), 1, "the replay runs");
}

/// A report that declares a key only when it has a reference, as an `Event` implemented by hand
/// may.
#[derive(Debug, Clone, Serialize, Deserialize, events::Validate)]
struct Report {
    reference: Option<String>,
    n: u64,
}

impl Event for Report {
    const NAME: &'static str = "report.filed";
    const VERSION: u32 = 1;

    fn idempotency_key(&self) -> Option<String> {
        self.reference.clone()
    }
}

#[tokio::test]
async fn events_without_a_key_keep_their_holds_after_others_of_their_type_declared_one() {
    let server = RedisServer::start();
    let stream = unique("sometimes-keyed");
    let runs = Runs::default();
    let (consumer, running) = Running::build(quick_consumer(&server, &stream, "g").handle({
        let runs = runs.clone();
        move |report: Report, _: Context| {
            runs.record(report.n.to_string());
            async { Ok(()) }
        }
    }))
    .await;
    let publisher = publisher_to(server.url(), &stream).await;
    let keyed = Report {
        reference: Some("r1".into()),
        n: 0,
    };
    publisher.publish(&keyed).await.unwrap();
    settled(&consumer, 1).await;
    // Then one without a key, written twice as a publisher's retry does: its event id identifies it.
    let plain = Report {
        reference: None,
        n: 1,
    };
    let envelope = publisher.envelope(&plain, PublishOptions::new()).unwrap();
    publisher
        .publish_envelopes(vec![envelope.clone(), envelope])
        .await
        .unwrap();
    settled(&consumer, 3).await;
    running.close().await;
    assert_eq!(runs.of("1"), 1, "one event, written twice");
    assert_eq!(consumer.status().duplicates, 1);
}

#[tokio::test]
async fn a_repeat_inside_the_window_is_skipped_and_one_outside_it_runs() {
    repeats_in_and_after_the_window(Duration::ZERO).await;
}

#[tokio::test]
async fn marks_of_events_long_past_are_kept_a_window_from_their_handling() {
    repeats_in_and_after_the_window(Duration::from_secs(3_600)).await;
}

/// An event of `age` ago handled, then written again twice within the window and once after it.
async fn repeats_in_and_after_the_window(age: Duration) {
    let server = RedisServer::start();
    let window = Duration::from_secs(2);
    let (consumer, running, runs, publisher) = windowed(&server, &unique("window"), window).await;
    let envelopes = logins_at(&publisher, &[millis_ago(age)]);
    let write_again = || publisher.publish_envelopes(envelopes.clone());
    write_again().await.unwrap();
    settled(&consumer, 1).await;
    let handled_at = Instant::now();
    // Repeats are caught for at least the window...
    for after in [Duration::from_millis(300), Duration::from_millis(1_800)] {
        tokio::time::sleep(after.saturating_sub(handled_at.elapsed())).await;
        write_again().await.unwrap();
        settled(&consumer, 2 + u64::from(after > Duration::from_secs(1))).await;
    }
    assert_eq!(runs.of("u0"), 1);
    assert!(
        handled_at.elapsed() < window,
        "both repeats came within the window"
    );
    // ... and forgotten at most half the window after it.
    tokio::time::sleep(
        (window * 3 / 2 + Duration::from_millis(100)).saturating_sub(handled_at.elapsed()),
    )
    .await;
    write_again().await.unwrap();
    settled(&consumer, 4).await;
    running.close().await;
    assert_eq!(runs.of("u0"), 2, "a repeat after the window runs again");
    assert_eq!(consumer.status().duplicates, 2);
}

/// Logins handled by a consumer of group `g`, on a stream of their own, on a server whose hashes
/// stay compact up to 32 fields only, so that hashes of marks split again and again.
struct Splitting {
    server: RedisServer,
    stream: String,
    runs: Runs,
    consumer: Consumer,
    running: Running,
    publisher: Publisher,
}

impl Splitting {
    /// Events told apart by `identity`: by event id their marks are kept by time, by content by
    /// when they were written, in hashes that split.
    async fn start(name: &str, identity: Identity) -> Self {
        let server = RedisServer::own();
        config_set(&server, "hash-max-listpack-entries", "32").await;
        let stream = unique(name);
        let runs = Runs::default();
        let (consumer, running) = Running::build(
            quick_consumer(&server, &stream, "g")
                .identity(identity)
                .handle(logins(&runs)),
        )
        .await;
        let publisher = publisher_to(server.url(), &stream).await;
        Self {
            server,
            stream,
            runs,
            consumer,
            running,
            publisher,
        }
    }

    /// `count` logins of one millisecond a minute ago, the first published and settled alone:
    /// it cuts its minute's pages for a quiet rate, which the others then go far past.
    async fn after_a_quiet_start(&self, count: usize) -> Vec<events::Envelope> {
        let envelopes = logins_at(
            &self.publisher,
            &vec![millis_ago(Duration::from_secs(60)); count],
        );
        self.publisher
            .publish_envelopes(envelopes[..1].to_vec())
            .await
            .unwrap();
        settled(&self.consumer, 1).await;
        envelopes
    }
}

#[tokio::test]
async fn repeats_of_thousands_of_events_are_found_across_marks_split_meanwhile() {
    repeats_of_thousands_of_events_are_found(Identity::Content).await;
}

#[tokio::test]
async fn repeats_of_thousands_of_events_are_found_in_marks_kept_by_time() {
    repeats_of_thousands_of_events_are_found(Identity::EventId).await;
}

async fn repeats_of_thousands_of_events_are_found(identity: Identity) {
    let split = Splitting::start("split-repeats", identity).await;
    let publisher = &split.publisher;
    let envelopes: Vec<_> = (0..3_000)
        .map(|n| {
            let login = Login {
                user: format!("u{n}"),
            };
            publisher.envelope(&login, PublishOptions::new()).unwrap()
        })
        .collect();
    for chunk in envelopes.chunks(500) {
        publisher.publish_envelopes(chunk.to_vec()).await.unwrap();
    }
    settled(&split.consumer, 3_000).await;
    // Every event written again, the latest first and interleaved with new ones, so that the
    // repeats land in batches that also split hashes.
    let mut again: Vec<_> = envelopes.into_iter().rev().collect();
    for (n, at) in (0..again.len()).step_by(3).enumerate() {
        let login = Login {
            user: format!("new{n}"),
        };
        again.insert(
            at,
            publisher.envelope(&login, PublishOptions::new()).unwrap(),
        );
    }
    for chunk in again.chunks(500) {
        publisher.publish_envelopes(chunk.to_vec()).await.unwrap();
    }
    settled(&split.consumer, 7_000).await;
    split.running.close().await;
    assert_eq!(split.consumer.status().duplicates, 3_000);
    assert_eq!(split.runs.total(), 4_000);
    assert!(
        split
            .runs
            .0
            .lock()
            .unwrap()
            .values()
            .all(|count| *count == 1)
    );
    assert_eq!(pending(&split.server, &split.stream, "g").await, 0);
}

#[tokio::test]
async fn marks_stay_in_small_compact_hashes_however_many_events() {
    marks_stay_in_small_compact_hashes(Identity::Content).await;
}

#[tokio::test]
async fn marks_kept_by_time_stay_in_small_compact_hashes_however_many_events() {
    marks_stay_in_small_compact_hashes(Identity::EventId).await;
}

async fn marks_stay_in_small_compact_hashes(identity: Identity) {
    let split = Splitting::start("compact", identity).await;
    let publisher = &split.publisher;
    let logins: Vec<Login> = (0..5_000)
        .map(|n| Login {
            user: format!("u{n}"),
        })
        .collect();
    for chunk in logins.chunks(500) {
        publisher.publish_many(chunk).await.unwrap();
    }
    settled(&split.consumer, 5_000).await;
    split.running.close().await;
    assert_eq!(split.runs.total(), 5_000);

    let (marks, counted, shards) = compact_marks(&split.server, &split.stream, identity).await;
    assert_eq!(marks, 5_000, "one mark per event");
    assert_eq!(counted, 5_000);
    assert!(shards >= 5_000 / 32, "{shards} shards");
}

/// A consumer of logins that remembers events for `window`, on `stream` on `server`, with its
/// runs and a publisher to its stream.
async fn windowed(
    server: &RedisServer,
    stream: &str,
    window: Duration,
) -> (Consumer, Running, Runs, Publisher) {
    let runs = Runs::default();
    let (consumer, running) = Running::build(
        quick_consumer(server, stream, "g")
            .idempotency_ttl(window)
            .handle(logins(&runs)),
    )
    .await;
    let publisher = publisher_to(server.url(), stream).await;
    (consumer, running, runs, publisher)
}

/// The time `age` ago, in milliseconds since the epoch.
fn millis_ago(age: Duration) -> u64 {
    let then = SystemTime::now() - age;
    then.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// An event id (a UUIDv7) of the time `millis`, in milliseconds since the epoch, told apart by `n`.
fn id_at(millis: u64, n: u64) -> String {
    format!(
        "{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
        millis >> 16,
        millis & 0xffff,
        n & 0xfff,
        (n >> 12) & 0xfff,
        n
    )
}

/// Logins of users `u<n>`, one per time of `times`, with ids of those times.
fn logins_at(publisher: &Publisher, times: &[u64]) -> Vec<events::Envelope> {
    times
        .iter()
        .zip(0..)
        .map(|(&millis, n)| {
            let login = Login {
                user: format!("u{n}"),
            };
            let mut envelope = publisher.envelope(&login, PublishOptions::new()).unwrap();
            envelope.id = id_at(millis, n);
            envelope
        })
        .collect()
}

#[tokio::test]
async fn marks_kept_by_time_follow_each_minute_s_rate_and_catch_every_repeat() {
    let split = Splitting::start("minutes", Identity::EventId).await;
    let publisher = &split.publisher;
    let minute = 60_000;
    let start = (millis_ago(Duration::ZERO) / minute - 4) * minute;
    // A steady minute, an almost empty one, then a burst of 3 a millisecond in the next: each
    // minute's pages are cut for a rate the previous minute's does not tell.
    let times: Vec<u64> = (0..3_000)
        .map(|n| start + n * 20)
        .chain((0..20).map(|n| start + minute + n * 3_000))
        .chain((0..3_000).map(|n| start + 2 * minute + n / 3))
        .collect();
    let envelopes = logins_at(publisher, &times);
    for chunk in envelopes.chunks(500) {
        publisher.publish_envelopes(chunk.to_vec()).await.unwrap();
    }
    settled(&split.consumer, 6_020).await;
    let again: Vec<_> = envelopes.into_iter().rev().collect();
    for chunk in again.chunks(500) {
        publisher.publish_envelopes(chunk.to_vec()).await.unwrap();
    }
    settled(&split.consumer, 12_040).await;
    split.running.close().await;
    assert_eq!(split.consumer.status().duplicates, 6_020);
    assert_eq!(split.runs.total(), 6_020);
    let (marks, counted, _) = compact_marks(&split.server, &split.stream, Identity::EventId).await;
    assert_eq!((marks, counted), (6_020, 6_020));
}

#[tokio::test]
async fn a_burst_far_past_the_rate_its_pages_were_cut_for_overflows_and_every_repeat_is_found() {
    let split = Splitting::start("burst", Identity::EventId).await;
    let publisher = &split.publisher;
    // 2,000 come in the millisecond of an event that cut its minute's pages for a quiet rate.
    let envelopes = split.after_a_quiet_start(2_001).await;
    for chunk in envelopes[1..].chunks(500) {
        publisher.publish_envelopes(chunk.to_vec()).await.unwrap();
    }
    settled(&split.consumer, 2_001).await;
    for chunk in envelopes.chunks(500) {
        publisher.publish_envelopes(chunk.to_vec()).await.unwrap();
    }
    settled(&split.consumer, 4_002).await;
    split.running.close().await;
    assert_eq!(split.consumer.status().duplicates, 2_001);
    assert_eq!(split.runs.total(), 2_001);
    let (marks, counted, pages) =
        compact_marks(&split.server, &split.stream, Identity::EventId).await;
    assert_eq!((marks, counted), (2_001, 2_001));
    assert!(pages > 2_001 / 128, "{pages} pages");
}

#[tokio::test]
async fn a_copy_read_alone_finds_its_event_s_hold_in_an_overflow_page_of_the_hash() {
    let split = Splitting::start("overflow-copies", Identity::EventId).await;
    let publisher = &split.publisher;
    // 60 come in the millisecond of an event that cut its minute's pages for a quiet rate, each
    // twice side by side: a pair read in one batch holds its event in the page's hash rather than
    // in its records, and the hash fills and goes on in overflow pages.
    let envelopes = split.after_a_quiet_start(61).await;
    let pairs: Vec<_> = envelopes[1..]
        .iter()
        .flat_map(|envelope| [envelope.clone(), envelope.clone()])
        .collect();
    publisher.publish_envelopes(pairs).await.unwrap();
    settled(&split.consumer, 121).await;
    // A copy read alone is asked for as a record: its event's hold is looked for past the full
    // hash.
    for (copy, envelope) in envelopes[1..].iter().enumerate() {
        publisher
            .publish_envelopes(vec![envelope.clone()])
            .await
            .unwrap();
        settled(&split.consumer, 122 + copy as u64).await;
    }
    split.running.close().await;
    assert_eq!(split.runs.total(), 61, "{:?}", split.runs);
    assert_eq!(split.consumer.status().duplicates, 120);
}

#[tokio::test]
async fn marks_in_overflow_pages_are_found_for_the_window_of_their_own_writing() {
    let server = RedisServer::own();
    config_set(&server, "hash-max-listpack-entries", "32").await;
    let window = Duration::from_secs(4);
    let (consumer, running, runs, publisher) =
        windowed(&server, &unique("overflow-window"), window).await;
    // Events of one millisecond an hour ago: one alone cuts its pages for a quiet rate, 23 more
    // fill its page, and 5 written a while later go to the overflow page.
    let envelopes = logins_at(&publisher, &[millis_ago(Duration::from_secs(3_600)); 29]);
    for (events, handled) in [(0..1, 1), (1..24, 24)] {
        publisher
            .publish_envelopes(envelopes[events].to_vec())
            .await
            .unwrap();
        settled(&consumer, handled).await;
    }
    let filled_at = Instant::now();
    tokio::time::sleep(window * 3 / 5).await;
    let late = envelopes[24..].to_vec();
    publisher.publish_envelopes(late.clone()).await.unwrap();
    settled(&consumer, 29).await;
    // Past the window of the full page's own writes, within that of the overflow's.
    tokio::time::sleep((window + window / 4).saturating_sub(filled_at.elapsed())).await;
    publisher.publish_envelopes(late).await.unwrap();
    settled(&consumer, 34).await;
    running.close().await;
    assert_eq!(consumer.status().duplicates, 5);
    assert_eq!(runs.total(), 29);
}

#[tokio::test]
async fn repeats_are_found_whether_their_ids_lie_apart_from_those_held_before_or_not() {
    // A batch whose ids lie apart from every event its book holds is held without looking its
    // events up (see `Digest::id_order`): each phase here gives the scripts a reason to look.
    let server = RedisServer::start();
    let window = Duration::from_secs(3_600);
    let stream = unique("id-order");
    let (consumer, running, runs, publisher) = windowed(&server, &stream, window).await;
    let fresh = |user: String| {
        publisher
            .envelope(&Login { user }, PublishOptions::new())
            .unwrap()
    };
    // Five events of the time `age` ago, labelled by `label`.
    let aged = |label: &str, age: Duration| -> Vec<events::Envelope> {
        let millis = millis_ago(age);
        (0..5)
            .map(|n| {
                let mut envelope = fresh(format!("{label}{n}"));
                envelope.id = id_at(millis, n);
                envelope
            })
            .collect()
    };
    let write = |envelopes: Vec<events::Envelope>| publisher.publish_envelopes(envelopes);
    let held: Vec<_> = (0..300).map(|n| fresh(format!("a{n}"))).collect();
    for chunk in held.chunks(100) {
        write(chunk.to_vec()).await.unwrap();
    }
    settled(&consumer, 300).await;
    // The latest event held, alone: its id ends its book's range.
    write(vec![held[299].clone()]).await.unwrap();
    settled(&consumer, 301).await;
    // Copies among events newer than any held.
    let mut batch: Vec<_> = (0..50).map(|n| fresh(format!("b{n}"))).collect();
    batch.extend([held[100].clone(), held[200].clone()]);
    write(batch).await.unwrap();
    settled(&consumer, 353).await;
    // Groups of events older than those held, each older than the one before, one read each: more
    // ranges than a book keeps, so the soonest merge; then a copy of each group's first alone,
    // within or at the end of a range.
    let groups: Vec<_> = (0..6)
        .map(|k| aged(&format!("g{k}-"), Duration::from_secs(40 - 5 * k)))
        .collect();
    for (written, group) in groups.iter().enumerate() {
        write(group.clone()).await.unwrap();
        settled(&consumer, 358 + 5 * written as u64).await;
    }
    for (copied, group) in groups.iter().enumerate() {
        write(vec![group[0].clone()]).await.unwrap();
        settled(&consumer, 384 + copied as u64).await;
    }
    // Events older than every one held, then their copies with new ones.
    let older = aged("o", Duration::from_secs(50));
    write(older.clone()).await.unwrap();
    settled(&consumer, 394).await;
    let mut batch = older;
    batch.extend((0..10).map(|n| fresh(format!("c{n}"))));
    write(batch).await.unwrap();
    settled(&consumer, 409).await;
    // Books written before they kept their ranges: every event is looked up in them.
    let mut redis = connection(&server).await;
    let books = book_meta_keys(&server, &stream).await;
    for book in &books {
        let held: Vec<u8> = redis::cmd("HGET")
            .arg(book)
            .arg("held")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(
            !held.is_empty() && held.len().is_multiple_of(24) && held.len() <= 2 * 24,
            "{book} keeps the ranges of its records: {held:?}"
        );
        let _: () = redis::cmd("HDEL")
            .arg(book)
            .arg("held")
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let mut batch = held[..10].to_vec();
    batch.extend((0..10).map(|n| fresh(format!("d{n}"))));
    write(batch).await.unwrap();
    settled(&consumer, 429).await;
    running.close().await;
    assert_eq!(consumer.status().duplicates, 1 + 2 + 6 + 5 + 10);
    assert_eq!(runs.total(), 300 + 50 + 30 + 5 + 10 + 10);
    assert!(runs.0.lock().unwrap().values().all(|count| *count == 1));
    for book in &books {
        let held: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(book)
            .arg("held")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(held, None, "{book}: unknown ranges stay unknown");
    }
}

/// The meta hashes of the books of marks kept by time of group `g` on `stream`.
async fn book_meta_keys(server: &RedisServer, stream: &str) -> Vec<String> {
    let prefix = format!("{}:marks:g:p", events::slot_prefix(stream));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection(server).await)
        .await
        .unwrap();
    let books: Vec<String> = keys
        .into_iter()
        .filter(|key| {
            key[prefix.len()..]
                .bytes()
                .all(|byte| byte.is_ascii_digit())
        })
        .collect();
    assert!(!books.is_empty(), "marks kept by time on {stream}");
    books
}

/// Checks that every key of the marks of group `g` on `stream` is a listpack hash or a page's
/// records that expires, laid out as `identity` says, holding settled marks; returns the marks, the
/// marks its meta hashes count and the keys holding marks.
async fn compact_marks(server: &RedisServer, stream: &str, identity: Identity) -> (u64, u64, u64) {
    let mut redis = connection(server).await;
    let prefix = format!("{}:marks:g", events::slot_prefix(stream));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let (mut marks, mut counted, mut shards) = (0, 0, 0);
    // Each page's strings of records, by their place in its chain, with their records.
    let mut chains: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} expires");
        // Pages (`p<book>`) of events kept by time, buckets of the others.
        let by_time = key[prefix.len() + 1..].starts_with('p');
        assert_eq!(by_time, identity == Identity::EventId, "{key}");
        if let Some(page) = key.strip_suffix(":r") {
            // A page's records: 24 bytes each, a digest and its holder's number, at most 128 in
            // a string, which goes on in the page's overflow strings once full.
            let records: Vec<u8> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut redis)
                .await
                .unwrap();
            assert_eq!(records.len() % 24, 0, "{key}");
            assert!(
                records.len() <= 128 * 24,
                "{key} holds {} bytes",
                records.len()
            );
            let first = page.trim_end_matches('+');
            chains
                .entry(first.to_owned())
                .or_default()
                .push((page.len() - first.len(), records.len() / 24));
            marks += records.len() as u64 / 24;
            shards += 1;
            continue;
        }
        let fields: u64 = redis::cmd("HLEN")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(encoding, "listpack", "{key} holds {fields} fields");
        if key.matches(':').count() == prefix.matches(':').count() + 1 {
            // A bucket's or a book's meta hash.
            let count: u64 = redis::cmd("HGET")
                .arg(key)
                .arg("count")
                .query_async(&mut redis)
                .await
                .unwrap();
            counted += count;
        } else {
            shards += 1;
            // Every event is settled: each mark is the hold its entry took, which says the event
            // was handled now that the entry is acknowledged; an entry of one event is named by a
            // number (a few digits for events kept by time). (A shard a split emptied keeps an
            // empty field, which no digest matches.)
            let all: BTreeMap<Vec<u8>, String> = redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut redis)
                .await
                .unwrap();
            for (field, value) in all {
                match field.len() {
                    16 => assert!(value.parse::<i64>().is_ok(), "{key}: {value}"),
                    0 => assert_eq!(value, "", "{key}"),
                    other => panic!("{key} holds a field of {other} bytes"),
                }
                marks += u64::from(!field.is_empty());
            }
        }
    }
    for (page, mut chain) in chains {
        // Every string of a chain but its last is full, all alike; the last holds no more.
        chain.sort_unstable();
        let full = chain[0].1;
        assert!(
            chain
                .iter()
                .enumerate()
                .all(|(place, &(pluses, records))| pluses == place
                    && (records == full || (place == chain.len() - 1 && records <= full))),
            "{page}: {chain:?}"
        );
    }
    (marks, counted, shards)
}

#[tokio::test]
async fn repeats_read_in_pull_mode_are_acknowledged_without_being_reserved() {
    let server = RedisServer::start();
    let stream = unique("pull-identity");
    let publisher: Publisher = publisher_to(server.url(), &stream).await;
    let envelope = publisher
        .envelope(&Login { user: "ada".into() }, PublishOptions::new())
        .unwrap();
    publisher
        .publish_envelopes(vec![envelope.clone(), envelope])
        .await
        .unwrap();
    publisher
        .publish(&Login { user: "ada".into() })
        .await
        .unwrap();
    let mut pull = quick_consumer(&server, &stream, "pull")
        .build_pull()
        .await
        .unwrap();
    let first = pull.reserve(10).await.unwrap();
    // The repeat waits while the first of its event is reserved.
    assert_eq!(first.len(), 2, "two distinct events: {first:?}");
    pull.ack(&first).await.unwrap();
    let rest = pull.reserve(10).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(pull.status().duplicates, 1);
    pull.close().await.unwrap();
    assert_eq!(pending(&server, &stream, "pull").await, 0);
}
