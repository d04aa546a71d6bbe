//! Delayed events against a real redis-server: none handled before its time, each soon after it,
//! none lost to a Redis restart, and a hostile delayed set blocking nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::support::{
    RedisServer, Running, calls, connection, publisher_to, quick_consumer, unique,
};
use events::{BatchConfig, BatchedPublisher, Context, Event, HandlerError, PublishOptions};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "reminder.due")]
struct Reminder {
    n: u64,
}

/// When each reminder was handled.
type Handled = Arc<Mutex<Vec<(u64, SystemTime)>>>;

fn consumer(server: &RedisServer, stream: &str, handled: &Handled) -> events::ConsumerBuilder {
    let handled = Arc::clone(handled);
    quick_consumer(server, stream, "g").handle(move |reminder: Reminder, _: Context| {
        handled
            .lock()
            .unwrap()
            .push((reminder.n, SystemTime::now()));
        async { Ok::<(), HandlerError>(()) }
    })
}

async fn wait_for(handled: &Handled, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while handled.lock().unwrap().len() < count {
        assert!(Instant::now() < deadline, "{:?}", handled.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_events_are_handled_at_their_time_and_not_before() {
    let server = RedisServer::start();
    let stream = unique("delayed");
    let publisher = publisher_to(server.url(), &stream).await;
    let handled: Handled = Arc::default();
    let (_, running) = Running::build(consumer(&server, &stream, &handled)).await;
    let start = SystemTime::now();
    let mut due = Vec::new();
    // Twenty events due 200 ms to 2.1 s from now, published out of order, and one at once.
    for n in 0..20 {
        let delay = Duration::from_millis(200 + (n * 7 % 20) * 100);
        let published = publisher
            .publish_with(&Reminder { n }, PublishOptions::new().deliver_after(delay))
            .await
            .unwrap();
        assert_eq!(published.entry_id, "", "no entry before its time");
        due.push(start + delay);
    }
    publisher.publish(&Reminder { n: 99 }).await.unwrap();
    wait_for(&handled, 21, Duration::from_secs(10)).await;
    running.close().await;
    let handled = handled.lock().unwrap().clone();
    let mut lateness = Vec::new();
    for (n, at) in handled.into_iter().filter(|(n, _)| *n < 20) {
        let due = due[usize::try_from(n).unwrap()];
        let late = at
            .duration_since(due)
            .unwrap_or_else(|early| panic!("event {n} handled {:?} early", early.duration()));
        lateness.push(late);
    }
    lateness.sort();
    println!(
        "lateness: median {:?}, most {:?}",
        lateness[10], lateness[19]
    );
    assert!(lateness[10] < Duration::from_millis(100), "{lateness:?}");
    assert!(lateness[19] < Duration::from_millis(500), "{lateness:?}");
}

#[tokio::test]
async fn delayed_events_survive_a_redis_restart() {
    let mut server = RedisServer::own_durable();
    let stream = unique("delayed-restart");
    let publisher = publisher_to(server.url(), &stream).await;
    let batched = BatchedPublisher::new(publisher.clone(), BatchConfig::new());
    publisher
        .publish_with(
            &Reminder { n: 1 },
            PublishOptions::new().deliver_after(Duration::from_millis(1_500)),
        )
        .await
        .unwrap();
    batched
        .publish_with(
            &Reminder { n: 2 },
            PublishOptions::new().deliver_after(Duration::from_millis(1_500)),
        )
        .await
        .unwrap();
    batched.close().await.unwrap();
    let due = SystemTime::now() + Duration::from_millis(1_400);
    // Every process and Redis itself restart before the events are due.
    drop((publisher, batched));
    server.restart();
    let handled: Handled = Arc::default();
    let (_, running) = Running::build(consumer(&server, &stream, &handled)).await;
    wait_for(&handled, 2, Duration::from_secs(10)).await;
    running.close().await;
    for (n, at) in handled.lock().unwrap().iter() {
        assert!(*at >= due, "event {n} came early");
    }
}

#[tokio::test]
async fn zero_and_absurd_delays_are_refused_naming_the_event() {
    let server = RedisServer::start();
    let publisher = publisher_to(server.url(), &unique("delayed-bad")).await;
    for (options, said) in [
        (
            PublishOptions::new().deliver_after(Duration::ZERO),
            "a delay of zero",
        ),
        (
            PublishOptions::new().deliver_after(Duration::from_secs(400 * 24 * 3600)),
            "over the longest, a year",
        ),
        (
            PublishOptions::new()
                .deliver_after(Duration::from_secs(1))
                .header("many", "x")
                .header("more", "y"),
            "",
        ),
    ] {
        let result = publisher.publish_with(&Reminder { n: 1 }, options).await;
        if said.is_empty() {
            assert!(result.is_ok());
            continue;
        }
        let error = result.unwrap_err().to_string();
        assert!(
            error.contains("reminder.due") && error.contains(said),
            "{error}"
        );
    }
    let mut huge = PublishOptions::new().deliver_after(Duration::from_secs(1));
    for n in 0..3_000 {
        huge = huge.header(format!("h{n}"), "x");
    }
    let error = publisher
        .publish_with(&Reminder { n: 1 }, huge)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("at most 3000 fields"), "{error}");
    // A time that has passed is no delay: written at once.
    let published = publisher
        .publish_with(
            &Reminder { n: 2 },
            PublishOptions::new().deliver_at(SystemTime::now() - Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert!(!published.entry_id.is_empty());
}

#[tokio::test]
async fn members_that_are_not_delayed_events_are_set_aside_without_blocking_the_others() {
    let server = RedisServer::start();
    let stream = unique("delayed-hostile");
    let publisher = publisher_to(server.url(), &stream).await;
    let mut redis = connection(&server).await;
    let delayed = events::delayed_events(&stream);
    for garbage in [
        "not json",
        "[1,2,3]",
        "[\"\",\"\",\"\",\"id\"]",
        "{\"a\":1}",
    ] {
        let _: i64 = redis.zadd(&delayed, garbage, 0).await.unwrap();
    }
    publisher
        .publish_with(
            &Reminder { n: 7 },
            PublishOptions::new().deliver_after(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    let handled: Handled = Arc::default();
    let (_, running) = Running::build(consumer(&server, &stream, &handled)).await;
    wait_for(&handled, 1, Duration::from_secs(10)).await;
    running.close().await;
    let aside: Vec<String> = redis
        .zrange(events::unmovable_events(&stream), 0, -1)
        .await
        .unwrap();
    assert_eq!(aside.len(), 4, "{aside:?}");
    let left: i64 = redis.zcard(&delayed).await.unwrap();
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_events_wait_out_a_redis_that_refuses_them_and_arrive_once() {
    use crate::support::faults::{
        ConnectionKiller, accept_writes, allow, deny, refuse_writes, stall,
    };
    let server = RedisServer::start();
    let stream = unique("delayed-faults");
    let publisher = publisher_to(server.url(), &stream).await;
    for n in 0..10 {
        publisher
            .publish_with(
                &Reminder { n },
                PublishOptions::new().deliver_after(Duration::from_millis(300)),
            )
            .await
            .unwrap();
    }
    let handled: Handled = Arc::default();
    let (consumer, running) = Running::build(consumer(&server, &stream, &handled)).await;
    // The events fall due while Redis refuses the XADD: first for permissions, then for memory.
    deny(&server, "xadd").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stalled = consumer
        .status()
        .stalls
        .iter()
        .any(|stall| stall.operation == events::Operation::MoveDelayed);
    assert!(stalled, "{:?}", consumer.status().stalls);
    assert!(handled.lock().unwrap().is_empty());
    refuse_writes(&server).await;
    allow(&server, "xadd").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(handled.lock().unwrap().is_empty());
    // Then it takes writes again but stalls and drops every connection for a while.
    accept_writes(&server).await;
    let killer = ConnectionKiller::start(&server, Duration::from_millis(150)).await;
    let _stalled = stall(&server, Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(killer);
    wait_for(&handled, 10, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.close().await;
    let mut handled: Vec<u64> = handled.lock().unwrap().iter().map(|(n, _)| *n).collect();
    handled.sort_unstable();
    assert_eq!(handled, (0..10).collect::<Vec<_>>(), "each once");
    let aside: i64 = connection(&server)
        .await
        .zcard(events::unmovable_events(&stream))
        .await
        .unwrap();
    assert_eq!(aside, 0, "nothing set aside for a refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_runs_the_move_script_only_when_events_are_delayed() {
    // A server of the test's own: its command counts are this consumer's.
    let server = RedisServer::own();
    let stream = unique("delayed-looks");
    let handled: Handled = Arc::default();
    let (_, running) = Running::build(consumer(&server, &stream, &handled)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls(&server, "zcard").await < 5 {
        assert!(Instant::now() < deadline, "no look at the delayed set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The script's first command: it has not run while nothing was delayed.
    assert_eq!(calls(&server, "zrangebyscore").await, 0);
    let publisher = publisher_to(server.url(), &stream).await;
    publisher
        .publish_with(
            &Reminder { n: 1 },
            PublishOptions::new().deliver_after(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    wait_for(&handled, 1, Duration::from_secs(10)).await;
    running.close().await;
    assert!(calls(&server, "zrangebyscore").await > 0);
}
