//! The `events` command-line tool, run as a process against a real redis-server.

#[path = "admin/mod.rs"]
mod admin;
#[path = "support/browser.rs"]
mod browser;
mod support;

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use events::{
    Backoff, Consumer, Context, Event, HandlerError, StartFrom, Unhandled, dead_letter_stream,
};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use support::{RedisServer, connection, nothing_pending, publisher_to, unique, wait_until};

/// The tool, run to completion with `args` against `url`.
fn events(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_events"))
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run the events binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "task.created")]
struct TaskCreated {
    n: u64,
}

/// A consumer running in a task, stopped when dropped.
struct Running(tokio::task::JoinHandle<events::Result<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn run(consumer: &Consumer) -> Running {
    let consumer = consumer.clone();
    Running(tokio::spawn(async move {
        consumer.run_until(std::future::pending()).await
    }))
}

/// A stream with 5 tasks, of which 1 and 3 fail until `healthy` is set, and 1 event of a type
/// nobody handles; a consumer that dead-letters the failures and the unhandled event.
async fn stream_with_dead_letters(
    server: &RedisServer,
) -> (String, Consumer, Arc<AtomicBool>, Arc<Mutex<Vec<u64>>>) {
    let stream = unique("cli");
    let publisher = publisher_to(server.url(), &stream).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (healthy, handled) = (Arc::clone(&healthy), Arc::clone(&handled));
        move |task: TaskCreated, _: Context| {
            let ok = healthy.load(Ordering::SeqCst) || (task.n != 1 && task.n != 3);
            if ok {
                handled.lock().unwrap().push(task.n);
            }
            let result = if ok {
                Ok(())
            } else {
                Err(HandlerError::permanent(format!(
                    "task {} is broken",
                    task.n
                )))
            };
            std::future::ready(result)
        }
    };
    let consumer = Consumer::builder(server.url())
        .stream(&stream)
        .group("workers")
        .start_from(StartFrom::Beginning)
        .block(Duration::from_millis(100))
        .backoff(Backoff::exponential(
            Duration::from_millis(10),
            Duration::from_millis(20),
        ))
        .handler_timeout(Duration::from_millis(500))
        .claim_idle(Duration::from_secs(1))
        .unhandled(Unhandled::DeadLetter)
        .handle(handler)
        .build()
        .await
        .unwrap();
    for n in 0..5 {
        publisher.publish(&TaskCreated { n }).await.unwrap();
    }
    publisher
        .publish_raw("audit.login", serde_json::json!({"user": "ada"}))
        .await
        .unwrap();
    let running = run(&consumer);
    wait_until("3 handled and 3 dead-lettered", || {
        let status = consumer.status();
        status.processed == 3 && status.dead_lettered == 3
    })
    .await;
    // Handled events are acknowledged in batches, after their handlers return: stopped before
    // that, the consumer would leave them pending.
    nothing_pending(server, &stream, "workers", Duration::from_secs(10)).await;
    drop(running);
    (stream, consumer, healthy, handled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_moves_exactly_the_chosen_dead_letters_back_to_be_handled() {
    let server = RedisServer::start();
    let (stream, consumer, healthy, handled) = stream_with_dead_letters(&server).await;

    let listed = events(server.url(), &["dlq", "list", &stream]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let list = stdout(&listed);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert_eq!(list.matches("task.created").count(), 2, "{list}");
    assert!(list.contains("handler failed: task 1 is broken"), "{list}");

    healthy.store(true, Ordering::SeqCst);
    let replayed = events(
        server.url(),
        &["dlq", "replay", &stream, "--type", "task.created"],
    );
    assert!(replayed.status.success(), "{}", stderr(&replayed));
    assert_eq!(
        stdout(&replayed).trim(),
        format!("replayed 2 dead letter(s) to {stream}")
    );

    let running = run(&consumer);
    wait_until("the replayed tasks are handled", || {
        handled.lock().unwrap().len() == 5
    })
    .await;
    drop(running);
    let mut handled = handled.lock().unwrap().clone();
    handled.sort_unstable();
    assert_eq!(handled, [0, 1, 2, 3, 4]);
    let left: usize = connection(&server)
        .await
        .xlen(dead_letter_stream(&stream))
        .await
        .unwrap();
    assert_eq!(
        left, 1,
        "only the unhandled audit event stays dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_only_what_was_asked_and_only_when_confirmed() {
    let server = RedisServer::start();
    let (stream, ..) = stream_with_dead_letters(&server).await;
    let dlq_len = || async {
        connection(&server)
            .await
            .xlen::<_, usize>(dead_letter_stream(&stream))
            .await
            .unwrap()
    };

    let unconfirmed = events(
        server.url(),
        &["dlq", "purge", &stream, "--reason", "task 3"],
    );
    assert!(!unconfirmed.status.success());
    assert!(
        stderr(&unconfirmed).contains("pass --yes"),
        "{}",
        stderr(&unconfirmed)
    );
    assert_eq!(dlq_len().await, 3);

    let purged = events(
        server.url(),
        &["dlq", "purge", &stream, "--reason", "task 3", "--yes"],
    );
    assert!(purged.status.success(), "{}", stderr(&purged));
    assert_eq!(
        stdout(&purged).trim(),
        format!("purged 1 dead letter(s) of {stream}")
    );
    assert_eq!(dlq_len().await, 2);
    let list = stdout(&events(server.url(), &["dlq", "list", &stream]));
    assert!(
        !list.contains("task 3 is broken") && list.contains("task 1 is broken"),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_list_pages_stats_groups_and_tail() {
    let server = RedisServer::start();
    let (stream, ..) = stream_with_dead_letters(&server).await;

    let first = stdout(&events(
        server.url(),
        &["dlq", "list", &stream, "--count", "2"],
    ));
    let next = first
        .lines()
        .last()
        .unwrap()
        .strip_prefix("next page: --after ")
        .unwrap()
        .to_owned();
    let second = stdout(&events(
        server.url(),
        &["dlq", "list", &stream, "--count", "2", "--after", &next],
    ));
    assert_eq!(second.lines().count(), 1, "{second}");
    let all = stdout(&events(server.url(), &["dlq", "list", &stream]));
    let task_line = all
        .lines()
        .find(|line| line.contains("task.created"))
        .unwrap();
    let id = task_line.split_whitespace().next().unwrap();
    let shown = stdout(&events(server.url(), &["dlq", "show", &stream, id]));
    assert!(
        shown.contains("attempts      1") && shown.contains("  type         task.created"),
        "{shown}"
    );

    let json = events(server.url(), &["stats", &stream, "--json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let stats: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(stats["stream"]["length"], 6);
    assert_eq!(stats["stream"]["dead_letters"], 3);
    assert_eq!(stats["stream"]["groups"][0]["pending"], 0);
    assert_eq!(stats["server"]["eviction_policy"], "noeviction");
    let table = stdout(&events(server.url(), &["stats", &stream]));
    assert!(
        table.contains("group         workers  lag 0, pending 0"),
        "{table}"
    );

    let mut redis = connection(&server).await;
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&stream)
        .arg("workers")
        .arg("gone")
        .query_async(&mut redis)
        .await
        .unwrap();
    let groups = stdout(&events(
        server.url(),
        &["groups", &stream, "--remove-stale", "0"],
    ));
    assert!(
        groups.contains("removed consumer gone of group workers"),
        "{groups}"
    );

    let tail = events(
        server.url(),
        &["tail", &stream, "--from", "0", "--count", "2"],
    );
    let lines: Vec<String> = stdout(&tail).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains(r#"task.created v1 from test at "#) && lines[0].ends_with(r#"{"n":0}"#),
        "{lines:?}"
    );
}

#[tokio::test]
async fn mistakes_are_one_line_and_a_failure_exit() {
    let server = RedisServer::start();

    let unreachable = events("redis://127.0.0.1:1", &["stats", "anything"]);
    assert!(!unreachable.status.success());
    let message = stderr(&unreachable);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.starts_with("error: could not connect to Redis at redis://127.0.0.1:1"),
        "{message}"
    );

    let missing = events(server.url(), &["stats", &unique("nothing-here")]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("does not exist"),
        "{}",
        stderr(&missing)
    );

    let bad = events(server.url(), &["dlq", "replay", "s"]);
    assert!(!bad.status.success());
    let message = stderr(&bad);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.starts_with("error: "), "{message}");

    let no_such = events(server.url(), &["dlq", "show", "s", "1-0"]);
    assert_eq!(
        stderr(&no_such).trim(),
        "error: no dead letter 1-0 in {s}:dlq"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_works_on_a_cluster_too() {
    let cluster = support::RedisCluster::start();
    let stream = unique("cli-cluster");
    let publisher = publisher_to(&cluster.url(), &stream).await;
    for n in 0..3 {
        publisher.publish(&TaskCreated { n }).await.unwrap();
    }

    let stats = events(&cluster.url(), &["stats", &stream, "--json"]);
    assert!(stats.status.success(), "{}", stderr(&stats));
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["stream"]["length"], 3);
    let tail = events(
        &cluster.url(),
        &["tail", &stream, "--from", "0", "--count", "3"],
    );
    assert_eq!(stdout(&tail).lines().count(), 3, "{}", stderr(&tail));
}

#[tokio::test]
async fn control_characters_in_entries_are_shown_escaped_and_no_password_is_printed() {
    let server = RedisServer::start();
    let stream = unique("hostile");
    // An entry whose origin would retitle the operator's terminal window, and one whose type
    // would clear it (not an event: shown as undecodable).
    let hostile: [Vec<(&str, &str)>; 2] = [
        vec![
            ("id", "0b5a3c1e-8d4f-4a51-9d0e-6b7f1c2d3e4f"),
            ("type", "x.y"),
            ("v", "1"),
            ("origin", "o\u{1b}]0;PWNED\u{7}"),
            ("ts", "2026-01-01T00:00:00.000Z"),
            ("body", "{}"),
        ],
        vec![
            ("id", "0b5a3c1e-8d4f-4a51-9d0e-6b7f1c2d3e50"),
            ("type", "x\u{1b}[2J"),
            ("v", "1"),
            ("origin", "o"),
            ("ts", "2026-01-01T00:00:00.000Z"),
            ("body", "{}"),
        ],
    ];
    let mut redis = connection(&server).await;
    for fields in &hostile {
        let _: String = redis.xadd(&stream, "*", fields).await.unwrap();
    }
    let tail = events(
        server.url(),
        &["tail", &stream, "--from", "0", "--count", "2"],
    );
    let shown = stdout(&tail) + &stderr(&tail);
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    assert!(shown.contains("\\e]0;PWNED"), "{shown:?}");
    assert!(shown.contains("has control characters"), "{shown:?}");

    // A cluster URL whose every node carries a password: none is printed.
    let unreachable = events(
        "redis+cluster://ops:secret-a@127.0.0.1:1,ops:secret-b@127.0.0.1:2",
        &["stats", &stream],
    );
    let shown = stdout(&unreachable) + &stderr(&unreachable);
    assert!(!unreachable.status.success());
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("***@127.0.0.1:1,***@127.0.0.1:2"), "{shown}");

    // Nor does `--help` show the password of a REDIS_URL, for the tool or its web admin.
    for args in [&["--help"][..], &["serve", "--help"]] {
        let help = Command::new(env!("CARGO_BIN_EXE_events"))
            .args(args)
            .env("REDIS_URL", "redis://:secret-c@127.0.0.1:6379")
            .env("EVENTS_ADMIN_TOKEN", "secret-token-0123456789")
            .output()
            .unwrap();
        let shown = stdout(&help);
        assert!(help.status.success() && shown.contains("--url"), "{shown}");
        assert!(!shown.contains("secret"), "{args:?}: {shown}");
    }
}
