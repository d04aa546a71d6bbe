//! What a Redis user must be allowed: the README's least-privilege ACL lines work as written, and
//! a consumer whose user lacks a command fails to build, naming it.

use crate::support::{RedisServer, connection, pending, quick, unique, wait_until};
use events::{Consumer, Context, Event, HandlerError, Publisher, PublisherConfig, Router};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "access.tried")]
struct Tried {
    n: u64,
}

/// The rules of the README's `ACL SETUSER <role> ...` line, after the user's password.
fn readme_rules(role: &str) -> Vec<String> {
    let readme = include_str!("../README.md");
    let line = readme
        .lines()
        .find(|line| line.starts_with(&format!("ACL SETUSER {role} ")))
        .unwrap_or_else(|| panic!("the README has an ACL line for {role}"));
    line.split_whitespace()
        .skip(3)
        .filter(|rule| !rule.starts_with('>'))
        .map(str::to_owned)
        .collect()
}

/// Creates user `name` (password `pw`) with `rules` on `server`; returns a URL that logs in as it.
async fn user(server: &RedisServer, name: &str, rules: &[String]) -> String {
    let mut command = redis::cmd("ACL");
    command
        .arg("SETUSER")
        .arg(name)
        .arg("reset")
        .arg("on")
        .arg(">pw")
        .arg(rules);
    let _: () = command
        .query_async(&mut connection(server).await)
        .await
        .unwrap();
    server
        .url()
        .replace("redis://", &format!("redis://{name}:pw@"))
}

fn consumer(url: &str, stream: &str) -> events::ConsumerBuilder {
    quick(Consumer::builder(url).stream(stream).group("g"))
        .max_attempts(1)
        .handle(|tried: Tried, _: Context| async move {
            if tried.n == 3 {
                return Err(HandlerError::from("poison"));
            }
            Ok(())
        })
}

#[tokio::test]
async fn the_readme_s_least_privilege_users_publish_and_consume() {
    let server = RedisServer::own();
    let stream = unique("acl");
    let publishing = user(&server, "publisher", &readme_rules("publisher")).await;
    let consuming = user(&server, "consumer", &readme_rules("consumer")).await;
    let publisher = Publisher::connect(
        &publishing,
        PublisherConfig::new("test").router(Router::single(&stream)),
    )
    .await
    .unwrap();
    for n in 0..5 {
        publisher.publish(&Tried { n }).await.unwrap();
    }
    let consumer = consumer(&consuming, &stream).build().await.unwrap();
    let running = crate::support::Running::start(std::slice::from_ref(&consumer));
    wait_until("all are settled", || {
        let status = consumer.status();
        status.processed + status.dead_lettered == 5
    })
    .await;
    running.close().await;
    assert_eq!(consumer.status().processed, 4);
    assert!(consumer.status().stalls.is_empty());
    assert_eq!(pending(&server, &stream, "g").await, 0);
    // The operator's line serves the command-line tool's reads.
    let operating = user(&server, "operator", &readme_rules("operator")).await;
    let mut operator = redis::Client::open(operating)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    events::stream_stats(&mut operator, &stream, &events::dead_letter_stream(&stream))
        .await
        .unwrap();
}

/// Why a consumer of `stream` fails to build when its user has the README's rules but `missing`.
async fn refusal_without(server: &RedisServer, stream: &str, missing: &str) -> String {
    let mut rules = readme_rules("consumer");
    rules.retain(|rule| rule != missing);
    let url = user(
        server,
        &format!("without{}", missing.replace(['+', '|'], "-")),
        &rules,
    )
    .await;
    consumer(&url, stream)
        .build()
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn a_consumer_whose_user_lacks_a_command_fails_to_build_naming_it() {
    let server = RedisServer::own();
    let stream = unique("acl-missing");
    let error = refusal_without(&server, &stream, "+xclaim").await;
    assert!(
        error.contains(&format!("may not run `XCLAIM` on `{stream}`")) && error.contains("+xclaim"),
        "{error}"
    );
    let error = refusal_without(&server, &stream, "+hsetnx").await;
    assert!(error.contains("may not run `HSETNX`"), "{error}");
    let error = refusal_without(&server, &stream, "+evalsha").await;
    assert!(error.contains("EVALSHA"), "{error}");
}

#[tokio::test]
async fn a_publisher_whose_user_may_not_add_to_a_route_s_stream_fails_to_connect_naming_it() {
    let server = RedisServer::own();
    let (allowed, forbidden) = (unique("allowed"), unique("forbidden"));
    // May run scripts (so the check runs) and add to `allowed*` streams only.
    let rules: Vec<String> = ["+ping", "+xadd", "+evalsha", "+eval", "+script|load"]
        .iter()
        .map(|rule| (*rule).to_owned())
        .chain([format!("~{allowed}*")])
        .collect();
    let url = user(&server, "narrow", &rules).await;
    let router = |stream: &str| Router::single(stream);
    Publisher::connect(&url, PublisherConfig::new("test").router(router(&allowed)))
        .await
        .unwrap();
    let error = Publisher::connect(
        &url,
        PublisherConfig::new("test").router(router(&forbidden)),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains(&format!(
            "may not run `XADD` on `{forbidden}`, which a publisher needs"
        )),
        "{error}"
    );
}
