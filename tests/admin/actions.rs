//! Changes through the admin: replay and purge of dead letters behind their confirmation,
//! removal of stale consumers; each refused without the token, the session or its CSRF token.

use std::sync::atomic::Ordering;

use redis::AsyncCommands;
use reqwest::StatusCode;

use super::{Admin, Session, TOKEN, hidden_value};
use crate::support::{RedisServer, connection, wait_until};

/// The form of a confirmation page, as a browser would post it.
fn confirmation_form(page: &str) -> Vec<(String, String)> {
    let form = page
        .split("action=\"/dead-letters/apply\">")
        .nth(1)
        .expect("a confirmation form")
        .split("</form>")
        .next()
        .unwrap();
    form.split("<input type=\"hidden\" name=\"")
        .skip(1)
        .map(|input| {
            let (name, rest) = input.split_once("\" value=\"").unwrap();
            (
                name.to_owned(),
                rest.split('"').next().unwrap().replace("&amp;", "&"),
            )
        })
        .collect()
}

async fn apply(
    admin: &Admin,
    form: &[(String, String)],
    session: Option<&Session>,
) -> super::Answer {
    let fields: Vec<(&str, &str)> = form
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    admin
        .post_form("/dead-letters/apply", &fields, session)
        .await
}

async fn dead_letters(server: &RedisServer, stream: &str) -> usize {
    connection(server)
        .await
        .xlen(events::dead_letter_stream(stream))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_confirmed_in_the_admin_is_handled_again() {
    let server = RedisServer::start();
    let (stream, consumer, healthy, handled) = crate::stream_with_dead_letters(&server).await;
    let admin = Admin::start(server.url(), true, &[]);
    let session = admin.login().await;

    let letters = admin
        .page(
            &format!("/dead-letters?stream={stream}&type=task.created"),
            Some(&session),
        )
        .await;
    assert!(
        letters.contains("Replay…") && letters.contains("Purge…"),
        "{letters}"
    );
    let confirm = admin
        .page(
            &format!("/dead-letters/confirm?stream={stream}&action=replay&type=task.created"),
            Some(&session),
        )
        .await;
    assert!(
        confirm.contains("2 dead letter(s) of <b>")
            && confirm.contains("Yes, replay 2 dead letter(s)"),
        "{confirm}"
    );
    let form = confirmation_form(&confirm);
    assert!(
        form.contains(&("expected".into(), "2".into()))
            && form.contains(&("type".into(), "task.created".into())),
        "{form:?}"
    );

    healthy.store(true, Ordering::SeqCst);
    let done = apply(&admin, &form, Some(&session)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(
        done.body.contains("Replayed 2 dead letter(s)"),
        "{}",
        done.body
    );
    assert_eq!(
        dead_letters(&server, &stream).await,
        1,
        "the audit.login dead letter stays"
    );
    let length: usize = connection(&server).await.xlen(&stream).await.unwrap();
    assert_eq!(length, 8, "both back in their stream");

    let _running = crate::run(&consumer);
    wait_until("the replayed tasks handled", || {
        handled.lock().unwrap().len() == 5
    })
    .await;
    let mut tasks = handled.lock().unwrap().clone();
    tasks.sort_unstable();
    assert_eq!(tasks, [0, 1, 2, 3, 4]);

    // The same confirmation again: the selection is empty now, so nothing is done.
    let again = apply(&admin, &form, Some(&session)).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert!(
        again
            .body
            .contains("holds 0 dead letter(s) now, 2 when you confirmed"),
        "{}",
        again.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_token_and_a_session_with_its_csrf_token() {
    let server = RedisServer::start();
    let (stream, ..) = crate::stream_with_dead_letters(&server).await;
    let purge_all = |csrf: &str| {
        vec![
            ("stream".to_owned(), stream.clone()),
            ("action".to_owned(), "purge".to_owned()),
            ("all".to_owned(), "true".to_owned()),
            ("expected".to_owned(), "3".to_owned()),
            ("csrf".to_owned(), csrf.to_owned()),
        ]
    };

    let read_only = Admin::start(server.url(), false, &[]);
    let refused = apply(&read_only, &purge_all(""), None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("read-only"), "{}", refused.body);
    drop(read_only);

    let short = std::process::Command::new(env!("CARGO_BIN_EXE_events"))
        .args([
            "--url",
            server.url(),
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--token",
            "short",
        ])
        .output()
        .unwrap();
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 16 characters"));

    let admin = Admin::start(server.url(), true, &[]);
    let wrong = admin
        .post_form("/login", &[("token", "test-token-0123456780")], None)
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(!wrong.headers.contains_key("set-cookie"));
    let guest = admin.page("/", None).await;
    assert!(guest.contains("Log in to make changes") && hidden_value(&guest, "csrf").is_none());
    let session = admin.login().await;

    let cases: [(&str, Option<&Session>, String); 3] = [
        ("no session", None, session.csrf.clone()),
        ("no CSRF token", Some(&session), String::new()),
        ("a wrong CSRF token", Some(&session), "0".repeat(64)),
    ];
    for (case, session, csrf) in cases {
        let answer = apply(&admin, &purge_all(&csrf), session).await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{case}: {}",
            answer.body
        );
    }
    let forged = reqwest::Client::new()
        .post(format!("{}/dead-letters/apply", admin.base))
        .header("cookie", &session.cookie)
        .header("origin", "http://evil.example")
        .form(&purge_all(&session.csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        StatusCode::FORBIDDEN,
        "a request from another site"
    );
    assert_eq!(
        dead_letters(&server, &stream).await,
        3,
        "nothing purged by refused requests"
    );

    let mismatch = purge_all(&session.csrf).into_iter().map(|(name, value)| {
        let value = if name == "expected" {
            "2".to_owned()
        } else {
            value
        };
        (name, value)
    });
    let stale = apply(&admin, &mismatch.collect::<Vec<_>>(), Some(&session)).await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);
    assert_eq!(dead_letters(&server, &stream).await, 3);

    let purged = apply(&admin, &purge_all(&session.csrf), Some(&session)).await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.body);
    assert!(
        purged.body.contains("Purged 3 dead letter(s)"),
        "{}",
        purged.body
    );
    assert_eq!(dead_letters(&server, &stream).await, 0);

    // Logging out clears the cookie; a program sends the token itself.
    let logout = admin
        .post_form("/logout", &[("csrf", &session.csrf)], Some(&session))
        .await;
    assert_eq!(logout.status, StatusCode::SEE_OTHER);
    assert!(
        logout.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let bearer = reqwest::Client::new()
        .post(format!("{}/consumers/remove", admin.base))
        .bearer_auth(TOKEN)
        .form(&[
            ("stream", stream.as_str()),
            ("group", "workers"),
            ("idle", "0"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    let removed = bearer.text().await.unwrap();
    assert!(
        removed.contains("Removed 1 consumer(s) of group workers"),
        "{removed}"
    );
    let consumers: redis::Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&stream)
        .arg("workers")
        .query_async(&mut connection(&server).await)
        .await
        .unwrap();
    assert_eq!(
        consumers,
        redis::Value::Array(vec![]),
        "the stale consumer is gone"
    );
}
