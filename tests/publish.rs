//! The publisher against a real redis-server: what it writes is what a reader gets back.

use std::time::Duration;

use crate::support::{RedisServer, connection, unique};
use events::{
    Error, Event, PublishOptions, Publisher, PublisherConfig, Route, Router, Trim,
    ValidationReport, read_range,
};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "user.created", version = 2)]
struct UserCreated {
    #[event(non_empty)]
    user_id: String,
    #[event(email)]
    email: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "order.paid")]
struct OrderPaid {
    order_id: u64,
    #[event(range(min = 0.01))]
    amount: f64,
}

fn user(n: usize) -> UserCreated {
    UserCreated {
        user_id: format!("u{n}"),
        email: format!("user{n}@example.com"),
    }
}

/// A publisher whose streams all start with a prefix of this test's own.
async fn publisher(server: &RedisServer, prefix: &str) -> Publisher {
    let router = Router::builder()
        .route(Route::to("user.*", format!("{prefix}:users")))
        .route(Route::prefixed("order.**", format!("{prefix}:")))
        .build()
        .unwrap();
    Publisher::connect(
        server.url(),
        PublisherConfig::new("test-service").router(router),
    )
    .await
    .unwrap()
}

/// Every entry of `stream`, oldest first.
async fn entries(server: &RedisServer, stream: &str) -> Vec<events::StreamEntry> {
    read_range(&mut connection(server).await, stream, "-", "+", 10_000)
        .await
        .unwrap()
}

async fn stream_len(server: &RedisServer, stream: &str) -> usize {
    connection(server).await.xlen(stream).await.unwrap()
}

#[tokio::test]
async fn a_published_event_reads_back_intact() {
    let server = RedisServer::start();
    let prefix = unique("read-back");
    let publisher = publisher(&server, &prefix).await;

    let published = publisher.publish(&user(1)).await.unwrap();

    assert_eq!(published.stream, format!("{prefix}:users"));
    let entries = entries(&server, &published.stream).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, published.entry_id);
    let envelope = entries[0].decode().unwrap();
    assert_eq!(envelope.id, published.event_id);
    assert_eq!(envelope.event_type, "user.created");
    assert_eq!(envelope.version, 2);
    assert_eq!(envelope.origin, "test-service");
    assert_eq!(
        envelope.hash,
        events::hash_body("user.created", &envelope.body)
    );
    assert_eq!(envelope.decode_body::<UserCreated>().unwrap(), user(1));
    let age = std::time::SystemTime::now()
        .duration_since(envelope.timestamp)
        .unwrap();
    assert!(age < Duration::from_secs(60), "timestamp is {age:?} old");
}

#[tokio::test]
async fn metadata_and_headers_travel_with_the_event() {
    let server = RedisServer::start();
    let publisher = publisher(&server, &unique("metadata")).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let options = PublishOptions::new()
        .correlation_id("req-42")
        .causation_id("evt-41")
        .traceparent(traceparent)
        .header("tenant", "acme")
        .header("priority", "high");
    let published = publisher.publish_with(&user(2), options).await.unwrap();

    let entries = entries(&server, &published.stream).await;
    let field = |name: &str| {
        let (_, value) = entries[0]
            .fields
            .iter()
            .find(|(field, _)| field == name.as_bytes())
            .unwrap();
        String::from_utf8(value.clone()).unwrap()
    };
    assert_eq!(field("corr"), "req-42");
    assert_eq!(field("h.tenant"), "acme");
    let envelope = entries[0].decode().unwrap();
    assert_eq!(envelope.correlation_id.as_deref(), Some("req-42"));
    assert_eq!(envelope.causation_id.as_deref(), Some("evt-41"));
    assert_eq!(envelope.traceparent.as_deref(), Some(traceparent));
    assert_eq!(envelope.header("tenant"), Some("acme"));
    assert_eq!(envelope.header("priority"), Some("high"));
}

#[tokio::test]
async fn an_invalid_event_is_rejected_before_anything_is_written() {
    let server = RedisServer::start();
    let prefix = unique("invalid");
    let publisher = publisher(&server, &prefix).await;
    let bad = UserCreated {
        user_id: " ".into(),
        email: "not-an-email".into(),
    };

    let error = publisher.publish(&bad).await.unwrap_err();

    let Error::Validation { event_type, report } = &error else {
        panic!("expected a validation error, got {error}");
    };
    assert_eq!(event_type, "user.created");
    assert_eq!(report.len(), 2);
    assert!(report.get("user_id").is_some() && report.get("email").is_some());
    assert!(
        error
            .to_string()
            .starts_with("event `user.created` is invalid: 2 invalid fields"),
        "{error}"
    );
    assert!(!error.is_retryable());
    assert_eq!(stream_len(&server, &format!("{prefix}:users")).await, 0);
}

#[tokio::test]
async fn an_unrouted_event_is_an_error_naming_its_type() {
    let server = RedisServer::start();
    let router = Router::builder()
        .route(Route::to("user.*", unique("users")))
        .build()
        .unwrap();
    let publisher = Publisher::connect(server.url(), PublisherConfig::new("svc").router(router))
        .await
        .unwrap();

    let error = publisher
        .publish(&OrderPaid {
            order_id: 1,
            amount: 3.5,
        })
        .await
        .unwrap_err();

    assert!(
        matches!(&error, Error::NoRoute { event_type } if event_type == "order.paid"),
        "{error}"
    );
}

#[tokio::test]
async fn raw_events_are_checked_by_the_runtime_validator() {
    let server = RedisServer::start();
    let prefix = unique("raw");
    let router = Router::single(format!("{prefix}:all"));
    let validator = |event_type: &str, body: &serde_json::Value| {
        let mut report = ValidationReport::new();
        if event_type == "user.created" && body.get("userId").and_then(|id| id.as_str()).is_none() {
            report.push("userId", "is required");
        }
        report.into_result()
    };
    let config = PublisherConfig::new("svc")
        .router(router)
        .raw_validator(validator);
    let publisher = Publisher::connect(server.url(), config).await.unwrap();

    let rejected = publisher
        .publish_raw("user.created", serde_json::json!({"name": "John"}))
        .await
        .unwrap_err();
    assert_eq!(
        rejected.to_string(),
        "event `user.created` is invalid: invalid field userId: is required"
    );
    let bad_name = publisher
        .publish_raw("User Created", serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(bad_name, Error::InvalidEventType { .. }),
        "{bad_name}"
    );
    assert_eq!(stream_len(&server, &format!("{prefix}:all")).await, 0);

    let published = publisher
        .publish_raw_with(
            "user.created",
            serde_json::json!({"userId": "123", "name": "John"}),
            PublishOptions::new().version(3),
        )
        .await
        .unwrap();
    let entries = entries(&server, &published.stream).await;
    let envelope = entries[0].decode().unwrap();
    assert_eq!(envelope.version, 3);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&envelope.body).unwrap()["userId"],
        "123"
    );
}

#[tokio::test]
async fn publish_many_writes_all_in_order() {
    let server = RedisServer::start();
    let publisher = publisher(&server, &unique("many")).await;
    let users: Vec<UserCreated> = (0..500).map(user).collect();

    let published = publisher.publish_many(&users).await.unwrap();

    assert_eq!(published.len(), 500);
    let entries = entries(&server, &published[0].stream).await;
    let read: Vec<UserCreated> = entries
        .iter()
        .map(|entry| entry.decode().unwrap().decode_body().unwrap())
        .collect();
    assert_eq!(read, users);
    let entry_ids: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
    let published_ids: Vec<&str> = published.iter().map(|p| p.entry_id.as_str()).collect();
    assert_eq!(entry_ids, published_ids);
}

#[tokio::test]
async fn publish_many_validates_all_before_writing_any() {
    let server = RedisServer::start();
    let prefix = unique("many-invalid");
    let publisher = publisher(&server, &prefix).await;
    let mut users: Vec<UserCreated> = (0..10).map(user).collect();
    users[7].email = "broken".into();

    let error = publisher.publish_many(&users).await.unwrap_err();

    assert!(matches!(error, Error::Validation { .. }), "{error}");
    assert_eq!(stream_len(&server, &format!("{prefix}:users")).await, 0);
}

#[tokio::test]
async fn envelopes_of_mixed_types_go_to_their_own_streams_in_one_call() {
    let server = RedisServer::start();
    let prefix = unique("mixed");
    let publisher = publisher(&server, &prefix).await;
    let envelopes = vec![
        publisher.envelope(&user(1), PublishOptions::new()).unwrap(),
        publisher
            .envelope(
                &OrderPaid {
                    order_id: 9,
                    amount: 10.0,
                },
                PublishOptions::new(),
            )
            .unwrap(),
        publisher
            .raw_envelope(
                "order.refunded",
                &serde_json::json!({"orderId": 9}),
                PublishOptions::new(),
            )
            .unwrap(),
    ];

    let published = publisher.publish_envelopes(envelopes).await.unwrap();

    let streams: Vec<&str> = published.iter().map(|p| p.stream.as_str()).collect();
    let expected = [
        format!("{prefix}:users"),
        format!("{prefix}:order.paid"),
        format!("{prefix}:order.refunded"),
    ];
    assert_eq!(streams, expected);
    for stream in &expected {
        assert_eq!(stream_len(&server, stream).await, 1, "{stream}");
    }
}

#[tokio::test]
async fn routes_trim_their_streams() {
    let server = RedisServer::start();
    let stream = unique("trimmed");
    let router = Router::builder()
        .route(Route::to("user.*", &stream).trim(Trim::max_len(10).exact()))
        .build()
        .unwrap();
    let publisher = Publisher::connect(server.url(), PublisherConfig::new("svc").router(router))
        .await
        .unwrap();

    publisher
        .publish_many(&(0..50).map(user).collect::<Vec<_>>())
        .await
        .unwrap();
    publisher.publish(&user(50)).await.unwrap();

    assert_eq!(stream_len(&server, &stream).await, 10);
    let entries = entries(&server, &stream).await;
    let last: UserCreated = entries[9].decode().unwrap().decode_body().unwrap();
    assert_eq!(last, user(50));
}

#[tokio::test]
async fn a_failed_write_names_the_event_type_and_stream() {
    let server = RedisServer::start();
    let prefix = unique("wrongtype");
    let publisher = publisher(&server, &prefix).await;
    let stream = format!("{prefix}:users");
    let _: () = connection(&server)
        .await
        .set(&stream, "not a stream")
        .await
        .unwrap();

    let error = publisher.publish(&user(1)).await.unwrap_err();
    let many = publisher
        .publish_many(&[user(2), user(3)])
        .await
        .unwrap_err();

    for error in [error, many] {
        let Error::Write {
            event_type,
            stream: named,
            ..
        } = &error
        else {
            panic!("expected a write error, got {error}");
        };
        assert_eq!(
            (event_type.as_str(), named.as_str()),
            ("user.created", stream.as_str())
        );
        assert!(error.to_string().contains("WRONGTYPE"), "{error}");
        assert!(!error.is_retryable());
    }
}

#[tokio::test]
async fn the_publisher_reconnects_after_a_redis_restart() {
    let mut server = RedisServer::own();
    let prefix = unique("restart");
    let publisher = publisher(&server, &prefix).await;
    publisher.publish(&user(1)).await.unwrap();

    server.restart();

    // The first write after the restart may fail while the connection is re-established; it says so.
    let mut attempts = 0;
    let published = loop {
        attempts += 1;
        match publisher.publish(&user(2)).await {
            Ok(published) => break published,
            Err(error) if attempts < 50 && error.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("publish after restart failed: {error}"),
        }
    };
    let entries = entries(&server, &published.stream).await;
    assert_eq!(
        entries.len(),
        1,
        "the restarted server keeps nothing, so only the new event is there"
    );
    assert_eq!(
        entries[0]
            .decode()
            .unwrap()
            .decode_body::<UserCreated>()
            .unwrap(),
        user(2)
    );
}

#[tokio::test]
async fn authentication_mistakes_are_named_at_connect_and_never_retried() {
    let server = RedisServer::own();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query_async(&mut connection(&server).await)
        .await
        .unwrap();
    let with = |credentials: &str| {
        server
            .url()
            .replace("redis://", &format!("redis://{credentials}"))
    };
    let connect =
        |url: String| async move { Publisher::connect(&url, PublisherConfig::new("test")).await };

    let missing = connect(server.url().to_owned()).await.unwrap_err();
    assert!(!missing.is_retryable());
    assert!(
        missing
            .to_string()
            .starts_with("Redis requires authentication: put the password"),
        "{missing}"
    );
    let wrong = connect(with(":wrong@")).await.unwrap_err();
    assert!(!wrong.is_retryable());
    assert!(
        wrong.to_string().contains("refused the credentials"),
        "{wrong}"
    );
    let consumer = events::Consumer::builder(server.url())
        .stream("s")
        .group("g")
        .handle(|_: UserCreated, _: events::Context| async { Ok(()) })
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(consumer, Error::Authentication { .. }),
        "{consumer}"
    );
    connect(with(":s3cret@")).await.unwrap();
}

#[tokio::test]
async fn a_valkey_url_names_the_server_as_a_redis_url_does() {
    let server = RedisServer::start();
    let stream = unique("valkey-url");
    let url = server.url().replace("redis://", "valkey://");
    let publisher = Publisher::connect(
        &url,
        PublisherConfig::new("test").router(Router::single(&stream)),
    )
    .await
    .unwrap();
    publisher.publish(&user(1)).await.unwrap();
    let entries = read_range(&mut connection(&server).await, &stream, "-", "+", 10)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
}

#[tokio::test]
async fn publishers_and_consumers_run_on_a_redis_client_of_the_caller_s_own() {
    let server = RedisServer::start();
    let stream = unique("own-client");
    let own = events::Endpoint::client(redis::Client::open(server.url()).unwrap());
    let publisher = Publisher::connect(
        own.clone(),
        PublisherConfig::new("test").router(Router::single(&stream)),
    )
    .await
    .unwrap();
    publisher.publish(&user(1)).await.unwrap();
    let batched = events::BatchedPublisher::new(publisher, events::BatchConfig::new());
    batched.publish(&user(2)).await.unwrap();
    batched.close().await.unwrap();
    let mut pull = events::Consumer::builder(own)
        .stream(&stream)
        .group("g")
        .start_from(events::StartFrom::Beginning)
        .block(Duration::from_millis(100))
        .build_pull()
        .await
        .unwrap();
    let reserved = pull.reserve(10).await.unwrap();
    assert_eq!(reserved.len(), 2);
    pull.ack(&reserved).await.unwrap();
    pull.close().await.unwrap();
}
