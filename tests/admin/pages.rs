//! Every page of the admin against a real stream, its groups and dead letters; hostile entries
//! shown as text; what the `--streams` pattern hides stays hidden.

use redis::AsyncCommands;
use reqwest::StatusCode;

use super::{Admin, hidden_value};
use crate::support::{RedisServer, connection, unique};

/// Adds an entry with `fields` to `stream`; its id.
async fn add<N: redis::ToRedisArgs + Send + Sync, V: redis::ToRedisArgs + Send + Sync>(
    server: &RedisServer,
    stream: &str,
    fields: &[(N, V)],
) -> String {
    connection(server)
        .await
        .xadd(stream, "*", fields)
        .await
        .unwrap()
}

/// A well-formed envelope's fields with `event_type`, `origin` and `body`.
fn envelope(event_type: &str, origin: &str, body: &str) -> Vec<(String, String)> {
    [
        ("id", "0190f1b2-0000-7000-8000-000000000001"),
        ("type", event_type),
        ("v", "1"),
        ("origin", origin),
        ("ts", "2026-12-02T10:00:00.000Z"),
        ("hash", &events::hash_body(event_type, body)),
        ("body", body),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .to_vec()
}

/// The `n` of every order on the stream page at `path` and the pages its "Older entries" links
/// lead to, in the order shown.
async fn orders_paged_through(admin: &Admin, path: &str) -> Vec<u32> {
    let marker = "{&quot;n&quot;:";
    let mut seen = Vec::new();
    let mut path = path.to_owned();
    loop {
        let page = admin.page(&path, None).await;
        seen.extend(page.match_indices(marker).map(|(at, _)| {
            page[at + marker.len()..]
                .split('}')
                .next()
                .unwrap()
                .parse::<u32>()
                .unwrap()
        }));
        match page.split("<nav class=\"pages\"><a href=\"").nth(1) {
            Some(rest) => path = rest.split('"').next().unwrap().replace("&amp;", "&"),
            None => return seen,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_stream_its_groups_entries_and_dead_letters() {
    let server = RedisServer::start();
    let (stream, ..) = crate::stream_with_dead_letters(&server).await;
    let admin = Admin::start(server.url(), false, &[]);
    let name = [("name", stream.as_str())];

    let dashboard = admin.page("/", None).await;
    assert!(dashboard.contains(&format!(">{stream}</a>")), "{dashboard}");
    assert!(
        dashboard.contains(&format!("href=\"/dead-letters?stream={stream}\">3</a>")),
        "3 dead letters: {dashboard}"
    );
    assert!(
        !dashboard.contains(":dlq</a>"),
        "dead-letter streams show beside their stream: {dashboard}"
    );
    let filtered = admin.page("/?pattern=nothing-like-it*", None).await;
    assert!(
        filtered.contains("0 stream(s)") && !filtered.contains(&stream),
        "{filtered}"
    );

    let page = admin
        .page(
            &format!("/stream?{}", serde_urlencoded::to_string(name).unwrap()),
            None,
        )
        .await;
    assert!(page.contains("6 entries"), "{page}");
    assert!(page.contains("<td>workers</td>"), "the group: {page}");
    assert_eq!(
        page.matches("task.created").count(),
        5,
        "5 tasks listed: {page}"
    );
    assert!(
        page.contains("audit.login") && page.contains("{&quot;user&quot;:&quot;ada&quot;}"),
        "{page}"
    );
    assert!(
        !page.contains("<form class=\"inline\" method=\"post\""),
        "read-only pages have no change forms"
    );
    let typed = admin
        .page(&format!("/stream?name={stream}&type=audit.login"), None)
        .await;
    assert_eq!(typed.matches("task.created").count(), 0, "{typed}");
    assert_eq!(
        typed.matches("audit.login").count(),
        2,
        "the row and the filter box: {typed}"
    );

    let ids: Vec<(String, Vec<(String, String)>)> =
        connection(&server).await.xrange_all(&stream).await.unwrap();
    let (first, _) = &ids[0];
    let entry = admin
        .page(&format!("/entry?stream={stream}&id={first}"), None)
        .await;
    assert!(
        entry.contains(&format!("Entry {first}")) && entry.contains("&quot;n&quot;: 0"),
        "the body, pretty: {entry}"
    );
    assert!(
        entry.contains("<th>Origin</th>") && entry.contains("Fields as written"),
        "{entry}"
    );
    let missing = admin
        .get(&format!("/entry?stream={stream}&id=1-1"), None)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let letters = admin
        .page(&format!("/dead-letters?stream={stream}"), None)
        .await;
    assert!(
        letters.contains("handler failed: task 1 is broken")
            && letters.contains("task 3 is broken"),
        "{letters}"
    );
    assert!(letters.contains("audit.login"), "{letters}");
    let by_reason = admin
        .page(
            &format!("/dead-letters?stream={stream}&reason=task+3"),
            None,
        )
        .await;
    assert!(
        by_reason.contains("task 3 is broken") && !by_reason.contains("task 1 is broken"),
        "{by_reason}"
    );
    let letter_id = by_reason
        .split("/dead-letter?")
        .nth(1)
        .and_then(|rest| rest.split("id=").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let letter = admin
        .page(
            &format!("/dead-letter?stream={stream}&id={letter_id}"),
            None,
        )
        .await;
    assert!(
        letter.contains("task 3 is broken") && letter.contains("<th>Attempts</th><td>1</td>"),
        "{letter}"
    );
    assert!(
        letter.contains("&quot;n&quot;: 3"),
        "the event decoded: {letter}"
    );

    let confirm = admin
        .page(
            &format!("/dead-letters/confirm?stream={stream}&action=purge&type=task.created"),
            None,
        )
        .await;
    assert!(
        confirm.contains("2 dead letter(s) of <b>") && confirm.contains("deleted for good"),
        "{confirm}"
    );
    assert!(
        confirm.contains("Log in with the admin"),
        "no form for a read-only admin: {confirm}"
    );
    assert!(hidden_value(&confirm, "csrf").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_entries_show_as_text_and_no_script_can_run() {
    let server = RedisServer::start();
    let stream = unique("<script>alert('stream')</script>");
    let script = "<script>alert(1)</script>";
    let body = r#"{"html":"<script>alert(1)</script>","img":"<img src=x onerror=alert(2)>"}"#;
    let mut fields = envelope(
        "x.hostile",
        "<script>alert('origin')</script>\u{1b}]0;PWNED\u{7}",
        body,
    );
    fields.push(("h.<b>tenant</b>".into(), script.into()));
    let good = add(&server, &stream, &fields).await;
    let bad_type = add(
        &server,
        &stream,
        &envelope("<script>alert('type')</script>\u{1b}[2J", "o", "{}"),
    )
    .await;
    let raw = add(
        &server,
        &stream,
        &[(
            "<svg onload=alert(3)>",
            "\u{7}\u{1b}[31m<iframe src=//evil>",
        )],
    )
    .await;
    let dead = events::dead_letter_stream(&stream);
    let mut letter = envelope("x.hostile", "o", body);
    letter.extend(
        [
            ("dlq.reason", "<img src=x onerror=alert(4)>\u{7}"),
            ("dlq.attempts", "1"),
            ("dlq.group", "<b>g</b>"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned())),
    );
    let letter_id = add(&server, &dead, &letter).await;
    let admin = Admin::start(server.url(), false, &[]);

    let encoded =
        |id: &str| serde_urlencoded::to_string([("stream", stream.as_str()), ("id", id)]).unwrap();
    let pages = [
        format!(
            "/?{}",
            serde_urlencoded::to_string([("pattern", stream.as_str())]).unwrap()
        ),
        format!(
            "/stream?{}",
            serde_urlencoded::to_string([("name", stream.as_str())]).unwrap()
        ),
        format!("/entry?{}", encoded(&good)),
        format!("/entry?{}", encoded(&bad_type)),
        format!("/entry?{}", encoded(&raw)),
        format!(
            "/dead-letters?{}",
            serde_urlencoded::to_string([("stream", stream.as_str())]).unwrap()
        ),
        format!("/dead-letter?{}", encoded(&letter_id)),
        format!(
            "/dead-letters/confirm?{}&action=replay&all=true",
            serde_urlencoded::to_string([("stream", stream.as_str())]).unwrap()
        ),
    ];
    for path in &pages {
        let answer = admin.get(path, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        let page = &answer.body;
        for markup in ["<script", "<img", "<svg", "<iframe", "<b>tenant", "<b>g"] {
            assert!(
                !page.contains(markup),
                "{path} lets `{markup}` through: {page}"
            );
        }
        assert!(
            !page.contains(['\u{1b}', '\u{7}']),
            "{path} lets a control character through"
        );
        assert!(
            page.contains("&lt;script&gt;alert(")
                || page.contains("&lt;img")
                || page.contains("&lt;svg"),
            "{path}: {page}"
        );
        let policy = answer.headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("default-src 'none'") && !policy.contains("script-src"),
            "{policy}"
        );
    }
    let entry = admin.page(&format!("/entry?{}", encoded(&raw)), None).await;
    assert!(
        entry.contains("\\u{7}\\e[31m&lt;iframe"),
        "control characters shown escaped: {entry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_outside_the_pattern_and_entries_past_a_page_are_reached_as_they_should() {
    let server = RedisServer::start();
    let (shown, hidden) = (unique("shop:orders"), unique("secret"));
    for n in 0..60 {
        let body = format!("{{\"n\":{n}}}");
        let event_type = if n % 2 == 0 {
            "order.even"
        } else {
            "order.odd"
        };
        add(&server, &shown, &envelope(event_type, "shop", &body)).await;
    }
    add(&server, &hidden, &envelope("x.y", "o", "{}")).await;
    let admin = Admin::start(server.url(), false, &["--streams", "shop:*"]);

    let dashboard = admin.page("/", None).await;
    assert!(
        dashboard.contains(&shown) && !dashboard.contains(&hidden),
        "{dashboard}"
    );
    for path in [
        format!("/stream?name={hidden}"),
        format!("/dead-letters?stream={hidden}"),
    ] {
        let answer = admin.get(&path, None).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert!(answer.body.contains("is not shown here"), "{}", answer.body);
    }
    let missing = admin.get("/stream?name=shop:none", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("does not exist"), "{}", missing.body);

    // Newest first, 25 a page, the next page through the link.
    let seen = orders_paged_through(&admin, &format!("/stream?name={shown}&type=order.even")).await;
    let even: Vec<u32> = (0..60).rev().filter(|n| n % 2 == 0).collect();
    assert_eq!(seen, even, "every even order once, newest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_with_thousands_of_fields_and_huge_bodies_are_shown_whole_or_cut_short() {
    let server = RedisServer::start();
    let stream = unique("huge");
    let body = format!("{{\"blob\":\"{}\"}}", "x".repeat(2 << 20));
    let huge = add(&server, &stream, &envelope("x.huge", "o", &body)).await;
    let mut fields = envelope("x.wide", "o", "{}");
    fields.extend((0..5_000).map(|n| (format!("h.f{n}"), format!("value {n}"))));
    let wide = add(&server, &stream, &fields).await;
    let letters = events::dead_letter_stream(&stream);
    let mut letter = envelope("x.huge", "o", &body);
    letter.push(("dlq.reason".into(), "r".repeat(100_000)));
    add(&server, &letters, &letter).await;
    let admin = Admin::start(server.url(), false, &[]);

    let page = admin.page(&format!("/stream?name={stream}"), None).await;
    assert!(
        page.len() < 200_000,
        "the huge body is cut short in the list: {} bytes",
        page.len()
    );
    assert!(
        page.contains("{&quot;blob&quot;:&quot;xxx") && page.contains("…"),
        "a preview"
    );
    let dashboard = admin.page("/", None).await;
    assert!(dashboard.contains(&stream));
    let list = admin
        .page(&format!("/dead-letters?stream={stream}"), None)
        .await;
    assert!(list.contains("x.huge"));

    let whole = admin
        .page(&format!("/entry?stream={stream}&id={huge}"), None)
        .await;
    assert!(whole.len() > 2 << 20, "one entry is shown whole");
    let wide = admin
        .page(&format!("/entry?stream={stream}&id={wide}"), None)
        .await;
    assert!(
        wide.contains("<th>Headers</th>") && wide.contains("f4999: value 4999"),
        "every header"
    );
    assert_eq!(
        wide.matches("<tr><td><code>h.f").count(),
        5_000,
        "every field as written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_dashboard_lists_the_streams_of_every_master() {
    let cluster = crate::support::RedisCluster::start();
    let streams: Vec<String> = (0..12).map(|n| format!("shop-{n:02}")).collect();
    for stream in &streams {
        let publisher = crate::support::publisher_to(&cluster.url(), stream).await;
        publisher
            .publish(&crate::TaskCreated { n: 7 })
            .await
            .unwrap();
    }
    let admin = Admin::start(&cluster.url(), false, &[]);
    let dashboard = admin.page("/", None).await;
    assert!(dashboard.contains("12 stream(s)"), "{dashboard}");
    for stream in &streams {
        assert!(
            dashboard.contains(&format!(">{stream}</a>")),
            "{stream}: {dashboard}"
        );
    }
    let page = admin.page("/stream?name=shop-05", None).await;
    assert!(
        page.contains("1 entries") && page.contains("task.created"),
        "{page}"
    );
    let health = admin.get("/health", None).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_filled_in_the_middle_of_the_last_read_links_to_the_rest() {
    let server = RedisServer::start();
    let stream = unique("paged");
    // Newest first, a read of 25 finds 15 others and 10 wanted; the last read (20 entries, the
    // end of the stream) fills the page with 15 and leaves 5 for the next.
    for n in 0..45 {
        let event_type = if n < 30 {
            "order.wanted"
        } else {
            "order.other"
        };
        add(
            &server,
            &stream,
            &envelope(event_type, "shop", &format!("{{\"n\":{n}}}")),
        )
        .await;
    }
    let admin = Admin::start(server.url(), false, &[]);
    let seen =
        orders_paged_through(&admin, &format!("/stream?name={stream}&type=order.wanted")).await;
    assert_eq!(
        seen,
        (0..30).rev().collect::<Vec<_>>(),
        "every wanted entry once, newest first"
    );
}
