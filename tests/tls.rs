//! TLS against a redis-server listening for it with certificates the test makes: a custom
//! certificate authority, client certificates (mutual TLS), and what a client gets wrong.

use std::time::{Duration, Instant};

use crate::support::RedisServer;
use crate::support::tls::TlsFiles;
use crate::support::{Running, pending, quick, unique, wait_until};
use events::{
    BatchConfig, BatchedPublisher, Consumer, Context, Endpoint, Event, HandlerError, Publisher,
    PublisherConfig, Router,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "secret.kept")]
struct Kept {
    n: u64,
}

/// Publishes 20 events through `endpoint` with a publisher and 20 with a batched one (its
/// batches on connections of its own), and consumes them through it; all must be handled.
/// Idle then, the consumer stops without waiting out its 20 s blocking read: its reads are on
/// connections of its own over TLS too, whose reads it can end.
async fn round_trip(server: &RedisServer, endpoint: Endpoint) {
    let stream = unique("tls");
    let publisher = Publisher::connect(
        endpoint.clone(),
        PublisherConfig::new("test").router(Router::single(&stream)),
    )
    .await
    .unwrap();
    for n in 0..20 {
        publisher.publish(&Kept { n }).await.unwrap();
    }
    let batched = BatchedPublisher::connect(
        endpoint.clone(),
        PublisherConfig::new("test").router(Router::single(&stream)),
        BatchConfig::new(),
    )
    .await
    .unwrap();
    for n in 20..40 {
        batched.publish(&Kept { n }).await.unwrap();
    }
    batched.close().await.unwrap();
    let (consumer, running) = Running::build(
        quick(Consumer::builder(endpoint).stream(&stream).group("g"))
            .block(Duration::from_secs(20))
            .handle(|_: Kept, _: Context| async { Ok::<(), HandlerError>(()) }),
    )
    .await;
    wait_until("all 40 are handled", || consumer.status().processed == 40).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    running.close().await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    assert_eq!(pending(server, &stream, "g").await, 0);
}

#[tokio::test]
async fn events_travel_over_tls_with_a_custom_authority_and_with_client_certificates() {
    let tls = TlsFiles::make();
    let server = tls.server(false);
    let endpoint = Endpoint::url(server.url()).root_certificate(TlsFiles::read(&tls.authority));
    round_trip(&server, endpoint).await;

    let mutual = tls.server(true);
    let endpoint = Endpoint::url(mutual.url())
        .root_certificate(TlsFiles::read(&tls.authority))
        .client_certificate(
            TlsFiles::read(&tls.client_certificate),
            TlsFiles::read(&tls.client_key),
        );
    round_trip(&mutual, endpoint).await;
}

#[tokio::test]
async fn tls_mistakes_each_give_a_clear_error() {
    let tls = TlsFiles::make();
    let server = tls.server(true);
    let connect = |endpoint: Endpoint| async move {
        Publisher::connect(endpoint, PublisherConfig::new("test"))
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    // The server's certificate does not come from the authority the client trusts.
    let wrong_authority =
        connect(Endpoint::url(server.url()).root_certificate(TlsFiles::read(&tls.other_authority)))
            .await;
    assert!(
        wrong_authority.contains("could not connect to Redis"),
        "{wrong_authority}"
    );
    assert!(
        wrong_authority.to_lowercase().contains("certificate"),
        "{wrong_authority}"
    );
    // The server asks for a client certificate and gets none.
    let no_client_certificate =
        connect(Endpoint::url(server.url()).root_certificate(TlsFiles::read(&tls.authority))).await;
    assert!(
        no_client_certificate.contains("could not connect to Redis"),
        "{no_client_certificate}"
    );
    // A plain client at the TLS port.
    let plain = connect(Endpoint::url(server.url().replace("rediss://", "redis://"))).await;
    assert!(plain.contains("use a rediss:// URL"), "{plain}");
}
