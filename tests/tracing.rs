//! Traces across services: the W3C `traceparent` an event carries is continued by the handler and
//! by what it publishes, and spans name each publish and each handled event.
//!
//! One test only: tracing caches per call site whether anyone listens, so a test without the
//! capturing subscriber running alongside could hide the spans from this one.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use events::{
    Consumer, Context, Event, HandlerError, PublishOptions, Publisher, PublisherConfig, Route,
    Router, StartFrom, TraceContext, read_range,
};
use serde::{Deserialize, Serialize};
use support::{Captured, RedisServer, connection, unique, wait_until};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.placed")]
struct OrderPlaced {
    id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "invoice.created")]
struct InvoiceCreated {
    order: u64,
}

#[tokio::test]
async fn a_trace_crosses_from_publisher_to_handler_to_what_it_publishes() {
    let captured = Captured::default();
    let subscriber = captured.subscriber(tracing_subscriber::fmt::format::FmtSpan::CLOSE);
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = RedisServer::start();
    let (orders, invoices) = (unique("orders"), unique("invoices"));
    let router = Router::builder()
        .route(Route::to("order.*", &orders))
        .route(Route::to("invoice.*", &invoices))
        .build()
        .unwrap();
    let publisher = Publisher::connect(server.url(), PublisherConfig::new("shop").router(router))
        .await
        .unwrap();
    let seen_in_handler = Arc::new(Mutex::new(None));
    let handler = {
        let (publisher, seen) = (publisher.clone(), Arc::clone(&seen_in_handler));
        move |order: OrderPlaced, _: Context| {
            let (publisher, seen) = (publisher.clone(), Arc::clone(&seen));
            async move {
                *seen.lock().unwrap() = TraceContext::current();
                publisher
                    .publish(&InvoiceCreated { order: order.id })
                    .await?;
                Ok::<(), HandlerError>(())
            }
        }
    };
    let consumer = Consumer::builder(server.url())
        .stream(&orders)
        .group("billing")
        .start_from(StartFrom::Beginning)
        .block(Duration::from_millis(100))
        .handle(handler)
        .build()
        .await
        .unwrap();
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    publisher
        .publish_with(
            &OrderPlaced { id: 7 },
            PublishOptions::new().traceparent(incoming),
        )
        .await
        .unwrap();

    let running = consumer.clone();
    let run = tokio::spawn(async move { running.run_until(std::future::pending()).await });
    wait_until("the order is handled", || consumer.status().processed == 1).await;
    run.abort();

    let in_handler = seen_in_handler
        .lock()
        .unwrap()
        .expect("the handler ran in the event's trace");
    assert_eq!(in_handler.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        in_handler.to_string(),
        incoming,
        "the handler is a child span"
    );
    let entries = read_range(&mut connection(&server).await, &invoices, "-", "+", 10)
        .await
        .unwrap();
    let invoice = entries[0].decode().unwrap();
    let written = TraceContext::parse(invoice.traceparent.as_deref().unwrap()).unwrap();
    assert_eq!(written.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(written, in_handler, "the publish is a child of the handler");

    let log = captured.text();
    assert!(log.contains("events.handle"), "{log}");
    assert!(log.contains("event_type=order.placed"), "{log}");
    assert!(
        log.contains("trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\""),
        "{log}"
    );
    assert!(log.contains("outcome=\"handled\""), "{log}");
    assert!(
        log.contains("events.publish") && log.contains("event_type=invoice.created"),
        "{log}"
    );
}
