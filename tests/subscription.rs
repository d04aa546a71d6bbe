//! Typed streams of events against a real redis-server: deliveries acknowledged and failed one by
//! one, undecodable and foreign entries handled by the consumer's rules, reading no further ahead
//! than the stream is consumed.

use std::time::Duration;

use futures::StreamExt;

use crate::support::faults::lost_deliveries;
use crate::support::{
    RedisServer, dead_letter_entries, nothing_pending, pending, publisher_to, quick_consumer,
    unique,
};
use events::{Event, Subscription};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "parcel.scanned")]
struct Scanned {
    #[event(length(min = 1))]
    parcel: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "parcel.lost")]
struct Lost {
    parcel: String,
}

async fn subscribe(server: &RedisServer, stream: &str, batch: usize) -> Subscription<Scanned> {
    subscribe_with_attempts(server, stream, batch, 2).await
}

/// [`subscribe`] with `max_attempts` attempts per event.
async fn subscribe_with_attempts(
    server: &RedisServer,
    stream: &str,
    batch: usize,
    max_attempts: u32,
) -> Subscription<Scanned> {
    quick_consumer(server, stream, "g")
        .batch_size(batch)
        .max_attempts(max_attempts)
        .build_pull()
        .await
        .unwrap()
        .subscribe::<Scanned>()
}

/// The next delivery, failing the test after 10 seconds.
async fn next(subscription: &mut Subscription<Scanned>) -> events::Delivery<Scanned> {
    tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the stream goes on")
        .expect("no read error")
}

/// Publishes parcels `p0`, `p1`, ... up to `count` to `stream`, in one round trip.
async fn publish_parcels(server: &RedisServer, stream: &str, count: usize) {
    let publisher = publisher_to(server.url(), stream).await;
    let parcels: Vec<Scanned> = (0..count).map(|n| scanned(&format!("p{n}"))).collect();
    publisher.publish_many(&parcels).await.unwrap();
}

fn scanned(parcel: &str) -> Scanned {
    Scanned {
        parcel: parcel.into(),
    }
}

#[tokio::test]
async fn typed_deliveries_in_order_with_foreign_and_broken_entries_settled_by_the_rules() {
    let server = RedisServer::start();
    let stream = unique("typed");
    let publisher = publisher_to(server.url(), &stream).await;
    for n in 0..20 {
        publisher.publish(&scanned(&format!("p{n}"))).await.unwrap();
        if n == 5 {
            publisher
                .publish(&Lost { parcel: "x".into() })
                .await
                .unwrap();
            // Written by a producer that does not validate.
            publisher
                .publish_raw("parcel.scanned", serde_json::json!({"parcel": ""}))
                .await
                .unwrap();
        }
    }
    let mut subscription = subscribe(&server, &stream, 4).await;
    let mut parcels = Vec::new();
    for _ in 0..20 {
        let delivery = next(&mut subscription).await;
        assert_eq!(delivery.attempt(), 1);
        assert_eq!(delivery.envelope().event_type, "parcel.scanned");
        parcels.push(delivery.event().parcel.clone());
        delivery.ack().await.unwrap();
    }
    subscription.close().await.unwrap();
    let expected: Vec<String> = (0..20).map(|n| format!("p{n}")).collect();
    assert_eq!(parcels, expected);
    assert_eq!(pending(&server, &stream, "g").await, 0);
    // The invalid one went to the dead letters; the other type was skipped.
    let letters = dead_letter_entries(&server, &stream).await;
    assert_eq!(letters.len(), 1);
    let reason = String::from_utf8_lossy(&letters[0].fields[0].1).into_owned();
    assert!(
        reason.contains("parcel: length must be at least 1"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_failed_delivery_comes_back_then_goes_to_the_dead_letters() {
    let server = RedisServer::start();
    let stream = unique("typed-fail");
    let publisher = publisher_to(server.url(), &stream).await;
    publisher.publish(&scanned("p1")).await.unwrap();
    let mut subscription = subscribe(&server, &stream, 4).await;
    let first = next(&mut subscription).await;
    assert_eq!(first.attempt(), 1);
    first.fail("scanner offline");
    let second = next(&mut subscription).await;
    assert_eq!((second.event(), second.attempt()), (&scanned("p1"), 2));
    second.fail("scanner offline");
    // Out of attempts: dead-lettered, nothing pending.
    nothing_pending(&server, &stream, "g", Duration::from_secs(10)).await;
    subscription.close().await.unwrap();
    let letters = dead_letter_entries(&server, &stream).await;
    let reason = String::from_utf8_lossy(&letters[0].fields[0].1).into_owned();
    assert_eq!(reason, "failed after 2 attempts: scanner offline");
}

/// Reads and claims whose replies were lost use up none of an event's attempts: its eighth
/// delivery is handed out as its first attempt, and a failure still leaves it its second.
#[tokio::test]
async fn deliveries_whose_replies_were_lost_use_up_no_attempts() {
    let server = RedisServer::start();
    let stream = unique("typed-lost-replies");
    publish_parcels(&server, &stream, 1).await;
    lost_deliveries(&server, &stream, "g", 7).await;
    let mut subscription = subscribe(&server, &stream, 4).await;
    let first = next(&mut subscription).await;
    assert_eq!(first.attempt(), 1);
    first.fail("scanner offline");
    let second = next(&mut subscription).await;
    assert_eq!((second.event(), second.attempt()), (&scanned("p0"), 2));
    second.ack().await.unwrap();
    subscription.close().await.unwrap();
    assert_eq!(pending(&server, &stream, "g").await, 0);
    assert!(dead_letter_entries(&server, &stream).await.is_empty());
}

#[tokio::test]
async fn it_reads_no_further_ahead_than_it_is_consumed() {
    let server = RedisServer::start();
    let stream = unique("typed-backpressure");
    publish_parcels(&server, &stream, 200).await;
    let mut subscription = subscribe(&server, &stream, 5).await;
    let first = next(&mut subscription).await;
    // Nobody consumes: reading stops once the buffer is full.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read = pending(&server, &stream, "g").await;
    assert!((2..=12).contains(&read), "{read} entries read ahead");
    first.ack().await.unwrap();
    let mut handled = 1;
    while handled < 200 {
        next(&mut subscription).await.ack().await.unwrap();
        handled += 1;
    }
    subscription.close().await.unwrap();
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

#[tokio::test]
async fn a_dropped_delivery_is_delivered_again_after_claim_idle() {
    let server = RedisServer::start();
    let stream = unique("typed-drop");
    let publisher = publisher_to(server.url(), &stream).await;
    publisher.publish(&scanned("p1")).await.unwrap();
    let mut subscription = subscribe(&server, &stream, 4).await;
    drop(next(&mut subscription).await);
    let again = next(&mut subscription).await;
    assert_eq!((again.event(), again.attempt()), (&scanned("p1"), 2));
    again.ack().await.unwrap();
    subscription.close().await.unwrap();
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

#[tokio::test]
async fn entries_taken_over_are_handed_out_while_reads_fail() {
    use crate::support::faults::deny;
    let server = RedisServer::start();
    let stream = unique("typed-claimed");
    publish_parcels(&server, &stream, 5).await;
    // A consumer that read them and crashed: they wait to be taken over.
    crate::support::create_group(&server, &stream, "g").await;
    crate::support::read_as(&server, &stream, "g", "crashed", 5).await;
    let mut subscription = subscribe(&server, &stream, 10).await;
    // Every read fails from now on; taking entries over still works.
    deny(&server, "xreadgroup").await;
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 5 && std::time::Instant::now() < deadline {
        let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_secs(1), subscription.next()).await
        else {
            continue;
        };
        seen.insert(delivery.event().parcel.clone());
        delivery.ack().await.unwrap();
    }
    subscription.close().await.unwrap();
    assert_eq!(seen.len(), 5, "handed out {seen:?}");
    assert_eq!(pending(&server, &stream, "g").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_rides_out_killed_connections_and_a_stall_losing_nothing() {
    use crate::support::faults::{ConnectionKiller, stall};
    let server = RedisServer::start();
    let stream = unique("typed-faults");
    publish_parcels(&server, &stream, 300).await;
    // A read or claim whose reply a killed connection lost counts a delivery in Redis but no
    // attempt: no handler started with it (its idempotency hold says so).
    let mut subscription = subscribe_with_attempts(&server, &stream, 10, 5).await;
    let killer = ConnectionKiller::start(&server, Duration::from_millis(200)).await;
    let _stalled = stall(&server, Duration::from_millis(500));
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < 300 {
        if std::time::Instant::now() >= deadline {
            let dead = dead_letter_entries(&server, &stream).await.len();
            let details: redis::Value = redis::cmd("XPENDING")
                .arg(&stream)
                .arg("g")
                .arg("-")
                .arg("+")
                .arg(20)
                .query_async(&mut crate::support::connection(&server).await)
                .await
                .unwrap();
            let missing: Vec<String> = (0..300)
                .map(|n| format!("p{n}"))
                .filter(|parcel| !seen.contains(parcel))
                .collect();
            panic!(
                "{} of 300 handled, {dead} dead-lettered; missing {missing:?}; pending {details:?}",
                seen.len()
            );
        }
        let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_secs(10), subscription.next()).await
        else {
            panic!("the stream ended");
        };
        // A read failed while connections were killed: the stream goes on.
        let Ok(delivery) = delivery else { continue };
        // Slow enough that reads, keeps and acknowledgements meet the faults.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let parcel = delivery.event().parcel.clone();
        if delivery.ack().await.is_ok() {
            seen.insert(parcel);
        }
    }
    drop(killer);
    subscription.close().await.unwrap();
    assert_eq!(seen.len(), 300);
    nothing_pending(&server, &stream, "g", Duration::from_secs(20)).await;
}
