//! The test kit's in-process consumer: a consumer's handlers run on events given to them, no
//! Redis, with the outcome the Redis consumers would reach.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use events::testing::Outcome;
use events::{
    Backoff, Consumer, ConsumerBuilder, Context, Envelope, Event, HandlerError, NewerVersions,
    Unhandled,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "invoice.issued", version = 2)]
struct Issued {
    #[event(length(min = 1))]
    number: String,
    cents: u64,
}

fn issued(number: &str, cents: u64) -> Issued {
    Issued {
        number: number.into(),
        cents,
    }
}

fn envelope(version: u32, body: &str) -> Envelope {
    Envelope::new("invoice.issued", version, "billing", body.into())
}

/// A consumer whose handler fails for invoices of 0 cents, permanently for 1, panics for 2,
/// hangs for 3 and asks for a later retry for 4; counts the runs.
fn consumer(runs: &Arc<AtomicU32>) -> ConsumerBuilder {
    let runs = Arc::clone(runs);
    Consumer::builder("redis://unused")
        .max_attempts(3)
        .backoff(
            Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1))
                .without_jitter(),
        )
        .handler_timeout(Duration::from_millis(50))
        .handle(move |invoice: Issued, _: Context| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move {
                match invoice.cents {
                    0 => Err(HandlerError::from("ledger unavailable")),
                    1 => Err(HandlerError::permanent("negative balance")),
                    2 => panic!("bug in the handler"),
                    3 => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok(())
                    }
                    4 => Err(HandlerError::retry_after(
                        "rate limited downstream",
                        Duration::from_secs(30),
                    )),
                    _ => Ok(()),
                }
            }
        })
}

#[tokio::test]
async fn handled_events_and_their_repeats() {
    let runs = Arc::default();
    let local = consumer(&runs).build_local().unwrap();
    assert_eq!(
        local.publish(&issued("A-1", 100)).await.unwrap(),
        Outcome::Handled
    );
    // Equal bodies, new event ids: both run.
    assert_eq!(
        local.publish(&issued("A-1", 100)).await.unwrap(),
        Outcome::Handled
    );
    // The same event again: a repeat.
    let event = envelope(2, r#"{"number":"A-2","cents":5}"#);
    assert_eq!(local.deliver(&event, 1).await, Outcome::Handled);
    assert_eq!(local.deliver(&event, 1).await, Outcome::Duplicate);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn failures_are_retried_with_their_backoff_then_dead_lettered() {
    let runs = Arc::default();
    let local = consumer(&runs).build_local().unwrap();
    let outcomes = local
        .deliver_until_settled(&envelope(2, r#"{"number":"B-1","cents":0}"#))
        .await;
    assert_eq!(
        outcomes,
        [
            Outcome::Retry {
                delay: Duration::from_millis(100),
                reason: "handler failed: ledger unavailable".into()
            },
            Outcome::Retry {
                delay: Duration::from_millis(200),
                reason: "handler failed: ledger unavailable".into()
            },
            Outcome::DeadLetter {
                reason: "handler failed: ledger unavailable".into()
            },
        ]
    );
    for (cents, reason) in [
        (1, "handler failed: negative balance"),
        (2, "handler panicked: bug in the handler"),
        (3, "handler timed out after 50ms"),
    ] {
        let body = format!(r#"{{"number":"B-{cents}","cents":{cents}}}"#);
        let outcomes = local.deliver_until_settled(&envelope(2, &body)).await;
        assert_eq!(
            outcomes.last(),
            Some(&Outcome::DeadLetter {
                reason: reason.into()
            }),
            "{outcomes:?}"
        );
        // A permanent failure is not retried; a panic and a timeout are.
        assert_eq!(
            outcomes.len(),
            if cents == 1 { 1 } else { 3 },
            "{outcomes:?}"
        );
    }
    // A handler may ask for its own delay.
    assert_eq!(
        local
            .deliver(&envelope(2, r#"{"number":"B-4","cents":4}"#), 1)
            .await,
        Outcome::Retry {
            delay: Duration::from_secs(30),
            reason: "handler failed: rate limited downstream".into()
        }
    );
    // A dead-lettered event's repeat is not run again either.
    let dead = envelope(2, r#"{"number":"B-9","cents":1}"#);
    local.deliver(&dead, 1).await;
    assert_eq!(local.deliver(&dead, 1).await, Outcome::Duplicate);
}

#[tokio::test]
async fn undecodable_unhandled_and_newer_events() {
    let runs = Arc::default();
    let local = consumer(&runs).build_local().unwrap();
    let Outcome::DeadLetter { reason } = local
        .deliver(&envelope(2, r#"{"number":"","cents":5}"#), 1)
        .await
    else {
        panic!("an invalid event is dead-lettered at once");
    };
    assert!(
        reason.contains("number: length must be at least 1"),
        "{reason}"
    );
    let other = Envelope::new("invoice.voided", 1, "billing", "{}".into());
    assert_eq!(local.deliver(&other, 1).await, Outcome::Skipped);
    // A version newer than the handler's is left for a newer consumer, retried.
    assert!(matches!(
        local.deliver(&envelope(3, r#"{"number":"C-1","cents":5}"#), 1).await,
        Outcome::Retry { reason, .. } if reason.contains("has version 3, newer than the version 2")
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 0);

    let strict = consumer(&runs)
        .unhandled(Unhandled::DeadLetter)
        .newer_versions(NewerVersions::DeadLetter)
        .build_local()
        .unwrap();
    assert_eq!(
        strict.deliver(&other, 1).await,
        Outcome::DeadLetter {
            reason: "no handler for event type `invoice.voided`".into()
        }
    );
    assert!(matches!(
        strict.deliver(&envelope(3, "{}"), 1).await,
        Outcome::DeadLetter { .. }
    ));
}

#[tokio::test]
async fn hooks_run_and_attempts_past_the_last_are_dead_lettered() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let runs = Arc::default();
    let local = {
        let seen = Arc::clone(&seen);
        consumer(&runs)
            .before(move |context: &Context| {
                seen.lock().unwrap().push(context.attempt());
            })
            .build_local()
            .unwrap()
    };
    let event = envelope(2, r#"{"number":"D-1","cents":7}"#);
    assert_eq!(local.deliver(&event, 2).await, Outcome::Handled);
    assert_eq!(
        local
            .deliver(&envelope(2, r#"{"number":"D-2","cents":7}"#), 4)
            .await,
        Outcome::DeadLetter {
            reason: "gave up after 3 deliveries".into()
        }
    );
    assert_eq!(*seen.lock().unwrap(), [2]);
}

/// A handler written as a function, called directly with a context made for the test.
async fn record_invoice(invoice: Issued, context: Context) -> Result<(), HandlerError> {
    if context.attempt() > 1 && invoice.cents > 1_000 {
        return Err(HandlerError::permanent("too large to retry"));
    }
    Ok(())
}

#[tokio::test]
async fn a_context_is_made_for_calling_a_handler_directly() {
    let context = Context::new(envelope(2, r#"{"number":"E-1","cents":5000}"#));
    assert_eq!(context.event_type(), "invoice.issued");
    assert!(
        record_invoice(issued("E-1", 5_000), context.clone())
            .await
            .is_ok()
    );
    let error = record_invoice(issued("E-1", 5_000), context.with_attempt(2))
        .await
        .unwrap_err();
    assert!(error.is_permanent());
}

#[test]
fn a_local_consumer_needs_a_handler() {
    let error = Consumer::builder("redis://unused")
        .build_local()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid configuration: the consumer has no handlers"
    );
}
