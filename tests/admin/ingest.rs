//! HTTP ingestion: events posted one at a time and in batches reach their stream, checked
//! against their JSON Schema; every refusal has its status and says what was wrong.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Admin, TOKEN};
use crate::support::faults::{accept_writes, refuse_writes};
use crate::support::{RedisServer, connection, unique};

/// A schema file for `order.placed`: an id and a positive total.
fn schema_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}.json", unique("order-placed-schema")));
    let schema = json!({
        "type": "object",
        "required": ["order_id", "total"],
        "properties": {
            "order_id": { "type": "string", "minLength": 1 },
            "total": { "type": "number", "exclusiveMinimum": 0 },
            "email": { "type": "string", "format": "email" }
        }
    });
    std::fs::write(&path, schema.to_string()).unwrap();
    path
}

/// The events of `stream`, decoded: type and body.
async fn events_in(server: &RedisServer, stream: &str) -> Vec<(String, Value)> {
    let mut connection = connection(server).await;
    let entries = events::read_range(&mut connection, stream, "-", "+", 10_000)
        .await
        .unwrap();
    entries
        .into_iter()
        .map(|entry| {
            let envelope = entry.decode().unwrap();
            (
                envelope.event_type,
                serde_json::from_str(&envelope.body).unwrap(),
            )
        })
        .collect()
}

async fn wait_for_events(server: &RedisServer, stream: &str, count: usize) -> Vec<(String, Value)> {
    for _ in 0..200 {
        let events = events_in(server, stream).await;
        if events.len() >= count {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{count} events never reached {stream}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_events_reach_their_stream_and_invalid_ones_name_every_field() {
    let server = RedisServer::start();
    let stream = unique("orders");
    let schema = schema_file();
    let route = format!("order.*={stream}");
    let schema_arg = format!("order.placed={}", schema.display());
    let admin = Admin::start(
        server.url(),
        true,
        &[
            "--route",
            &route,
            "--schema",
            &schema_arg,
            "--max-body",
            "2000",
            "--max-batch",
            "10",
        ],
    );
    let admin = &admin;
    let post = |event_type: &str, body: Value| {
        let path = format!("/events/{event_type}");
        async move { admin.post_json(&path, &body, Some(TOKEN)).await }
    };

    let one = post("order.placed", json!({"order_id": "o1", "total": 5})).await;
    assert_eq!(one.status, StatusCode::ACCEPTED, "{}", one.body);
    let ids: Value = serde_json::from_str(&one.body).unwrap();
    assert_eq!(ids["ids"].as_array().unwrap().len(), 1);
    let batch = post(
        "order.placed",
        json!([{"order_id": "o2", "total": 1.5}, {"order_id": "o3", "total": 2}]),
    )
    .await;
    assert_eq!(batch.status, StatusCode::ACCEPTED, "{}", batch.body);
    let untyped = post("order.noted", json!({"anything": [1, 2]})).await;
    assert_eq!(
        untyped.status,
        StatusCode::ACCEPTED,
        "a type without a schema is only checked to be an object"
    );

    let bad = post(
        "order.placed",
        json!([{"order_id": "o4", "total": 1}, {"order_id": "", "total": -1, "email": "nope"}, 7]),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    let bad: Value = serde_json::from_str(&bad.body).unwrap();
    let mut fields: Vec<(u64, &str)> = bad["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|invalid| {
            (
                invalid["event"].as_u64().unwrap(),
                invalid["field"].as_str().unwrap(),
            )
        })
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [(1, "/email"), (1, "/order_id"), (1, "/total"), (2, "")],
        "{bad}"
    );
    assert!(
        bad["error"].as_str().unwrap().contains("`order.placed`"),
        "{bad}"
    );
    let missing = post("order.placed", json!({"total": 1})).await;
    let missing: Value = serde_json::from_str(&missing.body).unwrap();
    assert!(
        missing["invalid"][0]["error"]
            .as_str()
            .unwrap()
            .contains("order_id"),
        "{missing}"
    );
    assert!(
        missing["invalid"][0].get("event").is_none(),
        "no index for one event: {missing}"
    );

    let refusals = [
        (
            "user.created",
            json!({}),
            StatusCode::NOT_FOUND,
            "no route matches event type `user.created`",
        ),
        (
            "Order.Placed",
            json!({}),
            StatusCode::BAD_REQUEST,
            "event type `Order.Placed` may only contain",
        ),
        (
            "order.placed",
            json!([]),
            StatusCode::BAD_REQUEST,
            "the batch is empty",
        ),
        (
            "order.noted",
            json!(vec![json!({}); 11]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "11 events in one request, more than 10",
        ),
        (
            "order.noted",
            json!({"pad": "x".repeat(2_000)}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 2000 bytes",
        ),
    ];
    for (event_type, body, status, message) in refusals {
        let answer = post(event_type, body).await;
        assert_eq!(answer.status, status, "{event_type}: {}", answer.body);
        assert!(
            answer.body.contains(message),
            "{event_type}: {}",
            answer.body
        );
    }
    let not_json = reqwest::Client::new()
        .post(format!("{}/events/order.noted", admin.base))
        .bearer_auth(TOKEN)
        .body("{\"a\":")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    assert!(
        not_json
            .text()
            .await
            .unwrap()
            .contains("the body is not JSON")
    );
    let anonymous = admin
        .post_json("/events/order.noted", &json!({}), None)
        .await;
    assert_eq!(anonymous.status, StatusCode::FORBIDDEN);
    let wrong = admin
        .post_json(
            "/events/order.noted",
            &json!({}),
            Some("test-token-0123456780"),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);

    let events = wait_for_events(&server, &stream, 4).await;
    let bodies: Vec<(&str, &Value)> = events
        .iter()
        .map(|(event_type, body)| (event_type.as_str(), body))
        .collect();
    assert_eq!(
        bodies.len(),
        4,
        "only the accepted events were written: {bodies:?}"
    );
    for expected in [
        ("order.placed", json!({"order_id": "o1", "total": 5})),
        ("order.placed", json!({"order_id": "o2", "total": 1.5})),
        ("order.placed", json!({"order_id": "o3", "total": 2})),
        ("order.noted", json!({"anything": [1, 2]})),
    ] {
        assert!(
            bodies.contains(&(expected.0, &expected.1)),
            "{expected:?} in {bodies:?}"
        );
    }
    std::fs::remove_file(schema).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_publisher_answers_503_and_writes_what_it_accepted_once_redis_recovers() {
    let server = RedisServer::start();
    let stream = unique("ingest");
    let route = format!("job.*={stream}");
    let admin = Admin::start(
        server.url(),
        true,
        &["--route", &route, "--max-queued", "5"],
    );
    refuse_writes(&server).await;
    let mut accepted = 0;
    let mut busy = None;
    for n in 0..20 {
        let answer = admin
            .post_json("/events/job.queued", &json!({ "n": n }), Some(TOKEN))
            .await;
        match answer.status {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                busy = Some(answer);
                break;
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    let busy = busy.expect("the publisher fills up while Redis refuses writes");
    assert_eq!(accepted, 5, "as many accepted as --max-queued");
    assert_eq!(busy.headers["retry-after"], "1");
    assert!(busy.body.contains("waiting to be written"), "{}", busy.body);
    let batch = admin
        .post_json(
            "/events/job.queued",
            &json!([{ "n": 100 }, { "n": 101 }]),
            Some(TOKEN),
        )
        .await;
    assert_eq!(
        batch.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a batch is refused whole: {}",
        batch.body
    );
    let health = admin.get("/health", None).await;
    assert!(
        health.body.contains("\"check\":\"ingestion\""),
        "{}",
        health.body
    );

    accept_writes(&server).await;
    let events = wait_for_events(&server, &stream, 5).await;
    let mut numbers: Vec<u64> = events
        .iter()
        .map(|(_, body)| body["n"].as_u64().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        [0, 1, 2, 3, 4],
        "every accepted event written once, nothing else"
    );
    let after = admin
        .post_json("/events/job.queued", &json!({ "n": 5 }), Some(TOKEN))
        .await;
    assert_eq!(
        after.status,
        StatusCode::ACCEPTED,
        "room again: {}",
        after.body
    );
}

/// An event a service describes in its AsyncAPI document.
#[derive(Debug, serde::Serialize, serde::Deserialize, events::Event)]
#[event(name = "parcel.shipped")]
struct ParcelShipped {
    #[event(length(min = 1))]
    parcel_id: String,
    #[event(email)]
    recipient: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_asyncapi_document_gives_the_routes_and_schemas() {
    let server = RedisServer::start();
    let stream = unique("parcels");
    let router = events::Router::builder()
        .route(events::Route::to("parcel.*", &stream))
        .build()
        .unwrap();
    let document = events::AsyncApi::new("shipping", "1.0.0", router)
        .publishes::<ParcelShipped>()
        .unwrap()
        .document();
    let file = std::env::temp_dir().join(format!("{}.json", unique("asyncapi")));
    std::fs::write(&file, document.to_string()).unwrap();
    let admin = Admin::start(server.url(), true, &["--asyncapi", file.to_str().unwrap()]);

    let good = json!({"parcel_id": "p1", "recipient": "ada@example.com"});
    let accepted = admin
        .post_json("/events/parcel.shipped", &good, Some(TOKEN))
        .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    let bad = json!({"parcel_id": "", "recipient": "nobody"});
    let refused = admin
        .post_json("/events/parcel.shipped", &bad, Some(TOKEN))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    let refused: Value = serde_json::from_str(&refused.body).unwrap();
    let mut fields: Vec<&str> = refused["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|invalid| invalid["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["/parcel_id", "/recipient"], "{refused}");
    let other = admin
        .post_json("/events/parcel.lost", &good, Some(TOKEN))
        .await;
    assert_eq!(
        other.status,
        StatusCode::NOT_FOUND,
        "only the types the service publishes are routed"
    );

    let events = wait_for_events(&server, &stream, 1).await;
    assert_eq!(events, [("parcel.shipped".to_owned(), good)]);
    std::fs::remove_file(file).unwrap();
}

#[test]
fn bad_options_stop_the_admin_at_start_naming_them() {
    let server = RedisServer::start();
    let not_json = std::env::temp_dir().join(format!("{}.json", unique("not-json")));
    std::fs::write(&not_json, "{").unwrap();
    let not_schema = std::env::temp_dir().join(format!("{}.json", unique("not-schema")));
    std::fs::write(&not_schema, r#"{"type": 7}"#).unwrap();
    let not_json_arg = format!("order.placed={}", not_json.display());
    let not_schema_arg = format!("order.placed={}", not_schema.display());
    let bad_type_arg = format!("Order={}", not_schema.display());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_arg = taken.local_addr().unwrap().to_string();
    let taken_message = format!("could not listen on {taken_arg}");
    let cases = [
        (
            vec!["--route", "orders"],
            "--route `orders` should be PATTERN=STREAM",
        ),
        (
            vec!["--route", "order.*="],
            "--route `order.*=` should be PATTERN=STREAM",
        ),
        (
            vec!["--schema", "order.placed=/no/such/file.json"],
            "cannot read /no/such/file.json",
        ),
        (vec!["--schema", &not_json_arg], "is not JSON"),
        (
            vec!["--schema", &not_schema_arg],
            "the schema of `order.placed` is not a valid JSON Schema",
        ),
        (
            vec!["--schema", &bad_type_arg],
            "event type `Order` may only contain",
        ),
        (
            vec!["--streams", "[a"],
            "--streams `[a` is not a glob pattern",
        ),
        (vec!["--bind", &taken_arg], &taken_message),
    ];
    for (args, message) in cases {
        let mut admin = std::process::Command::new(env!("CARGO_BIN_EXE_events"))
            .args(["--url", server.url(), "serve"])
            .args(&args)
            .env_remove("EVENTS_ADMIN_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // An admin that starts anyway would serve until killed: give it a few seconds.
        let started = std::time::Instant::now();
        while admin.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                admin.kill().unwrap();
                panic!("{args:?} started");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = admin.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    std::fs::remove_file(not_json).unwrap();
    std::fs::remove_file(not_schema).unwrap();
}
