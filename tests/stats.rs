//! Stream and server stats against known states of a real redis-server.

use crate::support::faults::config_set;
use crate::support::{RedisServer, connection, create_group, publisher_to, read_as, unique};
use events::{dead_letter_stream, server_stats, stream_stats};
use redis::AsyncCommands;

#[tokio::test]
async fn stats_report_length_lag_pending_consumers_and_dead_letters() {
    let server = RedisServer::start();
    let stream = unique("stats");
    let publisher = publisher_to(server.url(), &stream).await;
    let mut published = Vec::new();
    for n in 0..10 {
        published.push(
            publisher
                .publish_raw("task.created", serde_json::json!({ "n": n }))
                .await
                .unwrap(),
        );
    }
    create_group(&server, &stream, "workers").await;
    read_as(&server, &stream, "workers", "w1", 4).await;
    let mut redis = connection(&server).await;
    let dlq = dead_letter_stream(&stream);
    for _ in 0..2 {
        let _: String = redis
            .xadd(&dlq, "*", &[("dlq.reason", "test")])
            .await
            .unwrap();
    }

    let stats = stream_stats(&mut redis, &stream, &dlq).await.unwrap();

    assert_eq!(stats.length, 10);
    assert_eq!(
        stats.first_entry.as_ref().unwrap().id,
        published[0].entry_id
    );
    assert_eq!(stats.last_entry.as_ref().unwrap().id, published[9].entry_id);
    assert_eq!(stats.dead_letters, 2);
    assert!(stats.memory_bytes.unwrap() > 0);
    let group = &stats.groups[0];
    assert_eq!(
        (group.name.as_str(), group.pending, group.lag),
        ("workers", 4, Some(6))
    );
    assert_eq!(group.last_delivered_id, published[3].entry_id);
    assert!(group.oldest_pending_idle.is_some());
    assert_eq!(group.consumers.len(), 1);
    assert_eq!(
        (group.consumers[0].name.as_str(), group.consumers[0].pending),
        ("w1", 4)
    );
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["groups"][0]["pending"], 4);
    assert!(json["first_entry"]["time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn server_stats_warn_of_every_policy_that_can_evict_streams_or_idempotency_marks() {
    let server = RedisServer::own();
    let mut redis = connection(&server).await;

    let safe = server_stats(&mut redis).await.unwrap();
    assert_eq!(safe.eviction_policy, "noeviction");
    assert!(safe.used_memory > 0);
    assert_eq!(safe.warning, None);

    for policy in [
        "volatile-lru",
        "volatile-ttl",
        "allkeys-lru",
        "allkeys-random",
    ] {
        config_set(&server, "maxmemory-policy", policy).await;
        let stats = server_stats(&mut redis).await.unwrap();
        assert_eq!(stats.eviction_policy, policy);
        let warning = stats.warning.expect(policy);
        assert!(
            warning.contains(&format!("maxmemory-policy {policy} may evict")),
            "{warning}"
        );
        // Marks expire, so every policy but noeviction may evict them; streams only allkeys-*.
        assert!(warning.contains("idempotency marks"), "{warning}");
        assert_eq!(
            warning.contains("streams"),
            policy.starts_with("allkeys-"),
            "{warning}"
        );
    }
}

#[tokio::test]
async fn stats_of_a_missing_stream_name_it() {
    let server = RedisServer::start();
    let stream = unique("missing");
    let error = stream_stats(&mut connection(&server).await, &stream, "dlq")
        .await
        .unwrap_err();
    assert!(error.to_string().contains(&stream), "{error}");
}
