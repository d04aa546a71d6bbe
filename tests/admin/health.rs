//! `/health` passes and fails by its thresholds, naming the check; `/metrics` has the gauges
//! of every stream shown.

use reqwest::StatusCode;
use serde_json::Value;

use super::Admin;
use crate::support::faults::config_set;
use crate::support::{RedisServer, publisher_to};

/// The failing checks of a health answer, by name.
fn failing(body: &str) -> Vec<Value> {
    let health: Value = serde_json::from_str(body).unwrap();
    health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|check| check["ok"] == false)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_past_each_threshold_and_metrics_show_every_stream() {
    let server = RedisServer::start();
    let (stream, ..) = crate::stream_with_dead_letters(&server).await;
    let admin = Admin::start(
        server.url(),
        false,
        &["--max-lag", "2", "--max-dead-letters", "3"],
    );
    let healthy = admin.get("/health", None).await;
    assert_eq!(healthy.status, StatusCode::OK, "{}", healthy.body);
    assert!(
        healthy.body.contains("\"status\":\"ok\""),
        "{}",
        healthy.body
    );

    let publisher = publisher_to(server.url(), &stream).await;
    for n in 10..13 {
        publisher.publish(&crate::TaskCreated { n }).await.unwrap();
    }
    let lagging = admin.get("/health", None).await;
    assert_eq!(
        lagging.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        lagging.body
    );
    let failed = failing(&lagging.body);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (
            failed[0]["check"].as_str(),
            failed[0]["group"].as_str(),
            failed[0]["lag"].as_u64()
        ),
        (Some("lag"), Some("workers"), Some(3))
    );
    assert_eq!(failed[0]["stream"], stream.as_str());

    let strict = Admin::start(server.url(), false, &["--max-dead-letters", "2"]);
    let letters = strict.get("/health", None).await;
    let failed = failing(&letters.body);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (
            failed[0]["check"].as_str(),
            failed[0]["dead_letters"].as_u64()
        ),
        (Some("dead_letters"), Some(3))
    );

    config_set(&server, "maxmemory-policy", "volatile-lru").await;
    let evicting = strict.get("/health", None).await;
    let failed = failing(&evicting.body);
    let policy = failed
        .iter()
        .find(|check| check["check"] == "eviction_policy")
        .expect("the policy fails");
    assert_eq!(policy["policy"], "volatile-lru");
    assert!(
        policy["warning"].as_str().unwrap().contains("volatile-lru"),
        "{policy}"
    );

    let metrics = admin.get("/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    for line in [
        format!("events_stream_length{{stream=\"{stream}\"}} 9"),
        format!("events_dead_letters{{stream=\"{stream}\"}} 3"),
        format!("events_group_lag{{stream=\"{stream}\",group=\"workers\"}} 3"),
    ] {
        assert!(metrics.body.contains(&line), "{line} in {}", metrics.body);
    }

    drop(server);
    let down = admin.get("/health", None).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    let failed = failing(&down.body);
    assert_eq!(failed[0]["check"], "redis", "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_shows_the_redis_password_even_when_redis_refuses_it() {
    let server = RedisServer::start();
    let (stream, ..) = crate::stream_with_dead_letters(&server).await;
    let password = "pw-9f8e7d6c5b4a";
    crate::support::faults::config_set(&server, "requirepass", password).await;
    let url = server
        .url()
        .replacen("redis://", &format!("redis://:{password}@"), 1);
    let admin = Admin::start(&url, false, &[]);
    let paths = [
        "/".to_owned(),
        format!("/stream?name={stream}"),
        format!("/dead-letters?stream={stream}"),
        "/health".to_owned(),
        "/metrics".to_owned(),
    ];
    for path in &paths {
        let answer = admin.get(path, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        assert!(!answer.body.contains(password), "{path} shows the password");
    }

    // Redis now wants another password: the admin's reconnections fail, and say so without it.
    let mut redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("another-password")
        .query_async(&mut redis)
        .await
        .unwrap();
    crate::support::faults::kill_clients(&mut redis).await;
    let mut refused = None;
    for _ in 0..50 {
        let answer = admin.get("/health", None).await;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(answer);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let refused = refused.expect("health fails once Redis refuses the password");
    assert!(!refused.body.contains(password), "{}", refused.body);
    for path in &paths[..3] {
        let answer = admin.get(path, None).await;
        assert_ne!(answer.status, StatusCode::OK, "{path}");
        assert!(!answer.body.contains(password), "{path}: {}", answer.body);
    }
}
