//! Middleware around handlers: layers in the order added, tower's own layers as they are, a
//! circuit breaker opening and closing, and deferrals that cost no attempt.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use events::testing::Outcome;
use events::{
    BoxError, Call, CircuitBreaker, Consumer, ConsumerBuilder, Context, Envelope, Event,
    HandlerError, HandlerOptions,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tower::{Layer, Service};

use crate::support::{RedisServer, Running, publisher_to, quick_consumer, unique, wait_until};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "mail.sent")]
struct Sent {
    to: String,
}

fn sent() -> Envelope {
    Envelope::new(
        "mail.sent",
        1,
        "mailer",
        r#"{"to":"ada@example.com"}"#.into(),
    )
}

/// What the layers and the handler saw, in order.
type Trace = Arc<Mutex<Vec<String>>>;

/// A layer writing `name in` and `name out` around the call, with the event's type.
#[derive(Clone)]
struct Recording {
    name: &'static str,
    trace: Trace,
}

impl<S> Layer<S> for Recording {
    type Service = Recorded<S>;
    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct Recorded<S> {
    inner: S,
    layer: Recording,
}

impl<S> Service<Call> for Recorded<S>
where
    S: Service<Call, Response = (), Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<(), BoxError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let Recording { name, trace } = self.layer.clone();
        assert!(name != "panicking", "a bug in the middleware");
        trace
            .lock()
            .unwrap()
            .push(format!("{name} in {}", call.context().event_type()));
        let called = self.inner.call(call);
        Box::pin(async move {
            let outcome = called.await;
            trace
                .lock()
                .unwrap()
                .push(format!("{name} out {}", outcome.is_ok()));
            outcome
        })
    }
}

fn recording(name: &'static str, trace: &Trace) -> Recording {
    Recording {
        name,
        trace: Arc::clone(trace),
    }
}

#[tokio::test]
async fn layers_wrap_in_the_order_added_the_handlers_own_inside() {
    let trace: Trace = Arc::default();
    let handler_trace = Arc::clone(&trace);
    let local = Consumer::builder("redis://unused")
        .layer(recording("outer", &trace))
        .layer(recording("inner", &trace))
        .handle_with(
            HandlerOptions::new().layer(recording("own", &trace)),
            move |_: Sent, _: Context| {
                handler_trace.lock().unwrap().push("handler".into());
                async { Ok::<(), HandlerError>(()) }
            },
        )
        .build_local()
        .unwrap();
    assert_eq!(local.deliver(&sent(), 1).await, Outcome::Handled);
    assert_eq!(
        *trace.lock().unwrap(),
        [
            "outer in mail.sent",
            "inner in mail.sent",
            "own in mail.sent",
            "handler",
            "own out true",
            "inner out true",
            "outer out true"
        ]
    );
}

#[tokio::test]
async fn towers_own_layers_work_as_they_are_and_a_panicking_layer_is_caught() {
    let slow = Consumer::builder("redis://unused")
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(50)))
        .layer(tower::limit::ConcurrencyLimitLayer::new(2))
        .handle(|_: Sent, _: Context| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<(), HandlerError>(())
        })
        .build_local()
        .unwrap();
    let Outcome::Retry { reason, .. } = slow.deliver(&sent(), 1).await else {
        panic!("a timed-out attempt is retried");
    };
    assert_eq!(reason, "handler failed: request timed out");

    let trace: Trace = Arc::default();
    let panicking = Consumer::builder("redis://unused")
        .layer(recording("panicking", &trace))
        .handle(|_: Sent, _: Context| async { Ok::<(), HandlerError>(()) })
        .build_local()
        .unwrap();
    assert!(matches!(
        panicking.deliver(&sent(), 1).await,
        Outcome::Retry { reason, .. } if reason == "handler panicked: a bug in the middleware"
    ));
}

/// A consumer whose handler fails while `broken`, behind a breaker opening after 3 failures for
/// `open_for`; counts the handler's calls.
fn behind_a_breaker(
    builder: ConsumerBuilder,
    open_for: Duration,
    broken: &Arc<AtomicBool>,
    calls: &Arc<AtomicU32>,
) -> ConsumerBuilder {
    let (broken, calls) = (Arc::clone(broken), Arc::clone(calls));
    builder
        .layer(CircuitBreaker::new(3, open_for))
        .handle(move |_: Sent, _: Context| {
            calls.fetch_add(1, Ordering::SeqCst);
            let broken = broken.load(Ordering::SeqCst);
            async move {
                if broken {
                    Err(HandlerError::from("smtp down"))
                } else {
                    Ok(())
                }
            }
        })
}

#[tokio::test]
async fn a_circuit_breaker_opens_defers_and_closes_again() {
    let (broken, calls) = (Arc::new(AtomicBool::new(true)), Arc::default());
    let local = behind_a_breaker(
        Consumer::builder("redis://unused"),
        Duration::from_millis(200),
        &broken,
        &calls,
    )
    .build_local()
    .unwrap();
    for _ in 0..3 {
        assert!(matches!(
            local.deliver(&sent(), 1).await,
            Outcome::Retry { reason, .. } if reason == "handler failed: smtp down"
        ));
    }
    // Open: deferred without calling the handler.
    let Outcome::Retry { delay, reason } = local.deliver(&sent(), 1).await else {
        panic!("deferred");
    };
    assert!(reason.contains("circuit open after 3 failures"), "{reason}");
    assert!(
        delay <= Duration::from_millis(200) && delay > Duration::ZERO,
        "{delay:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // The downstream recovers; after the open time one trial goes through and closes it.
    broken.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(210)).await;
    assert_eq!(local.deliver(&sent(), 1).await, Outcome::Handled);
    assert_eq!(local.deliver(&sent(), 1).await, Outcome::Handled);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn deferrals_of_an_open_breaker_cost_no_attempt() {
    let server = RedisServer::start();
    let stream = unique("breaker");
    let publisher = publisher_to(server.url(), &stream).await;
    let (broken, calls) = (Arc::new(AtomicBool::new(true)), Arc::default());
    // Two attempts at most: the deferrals in between must not use the second up.
    let builder = behind_a_breaker(
        quick_consumer(&server, &stream, "g").max_attempts(2),
        Duration::from_secs(1),
        &broken,
        &calls,
    );
    let (consumer, running) = Running::build(builder).await;
    for n in 0..3 {
        publisher
            .publish(&Sent {
                to: format!("user{n}@example.com"),
            })
            .await
            .unwrap();
    }
    wait_until("the breaker is open and deferring", || {
        consumer.status().deferred >= 3
    })
    .await;
    broken.store(false, Ordering::SeqCst);
    wait_until("every event is handled", || {
        consumer.status().processed == 3
    })
    .await;
    running.close().await;
    let status = consumer.status();
    assert_eq!(status.dead_lettered, 0);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "three failures, then three successes"
    );
}

#[tokio::test]
async fn layers_run_around_the_handlers_of_a_redis_consumer() {
    let server = RedisServer::start();
    let stream = unique("layers");
    let publisher = publisher_to(server.url(), &stream).await;
    let trace: Trace = Arc::default();
    let handler_trace = Arc::clone(&trace);
    // The first attempt at the slow mail runs past tower's timeout; its retry is quick.
    let builder = quick_consumer(&server, &stream, "g")
        .layer(recording("outer", &trace))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(
            100,
        )))
        .layer(tower::limit::ConcurrencyLimitLayer::new(1))
        .handle(move |mail: Sent, context: Context| {
            handler_trace.lock().unwrap().push(format!(
                "handler {} {}",
                mail.to,
                context.attempt()
            ));
            async move {
                if mail.to == "slow" && context.attempt() == 1 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Ok::<(), HandlerError>(())
            }
        });
    let (consumer, running) = Running::build(builder).await;
    publisher
        .publish(&Sent { to: "slow".into() })
        .await
        .unwrap();
    wait_until("the slow mail is handled on its retry", || {
        consumer.status().processed == 1
    })
    .await;
    running.close().await;
    assert_eq!(consumer.status().retried, 1);
    assert_eq!(
        *trace.lock().unwrap(),
        [
            "outer in mail.sent",
            "handler slow 1",
            "outer out false",
            "outer in mail.sent",
            "handler slow 2",
            "outer out true"
        ]
    );
}
