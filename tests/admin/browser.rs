//! The admin in a real browser (Debian's chromium through chromedriver): log in, open a stream
//! and an entry, filter the dead letters, replay one type through the confirmation, and find the
//! events back in their stream. Screenshots of each page go to `target/screenshots/`.

use redis::AsyncCommands;

use super::{Admin, TOKEN};
use crate::browser::{Browser, Locator};
use crate::support::{RedisServer, connection};

/// Clicks what `css` finds, waits for the page titled `title` and returns its main text.
async fn click(page: &Browser, css: &str, title: &str) -> String {
    page.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    arrive(page, title).await
}

/// Waits for the page titled `title`; its main text.
async fn arrive(page: &Browser, title: &str) -> String {
    let heading = format!("//main/h1[text()='{title}']");
    if let Err(error) = page.wait_for(Locator::XPath(&heading)).await {
        let source = page.source().await.unwrap_or_default();
        panic!("no page titled {title:?} ({error}): {source}");
    }
    page.find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_replays_dead_letters_in_a_browser() {
    let server = RedisServer::start();
    let (stream, ..) = crate::stream_with_dead_letters(&server).await;
    let admin = Admin::start(server.url(), true, &[]);
    let browser = Browser::start().await;
    let page = &browser;

    page.goto(&format!("{}/login", admin.base)).await.unwrap();
    page.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    let dashboard = click(page, "main button", "Streams").await;
    assert!(dashboard.contains(&stream), "{dashboard}");
    assert!(
        page.source().await.unwrap().contains("Log out"),
        "logged in"
    );
    browser.screenshot("admin-dashboard").await;

    let link = format!("main a[href='/stream?name={stream}']");
    let stream_page = click(page, &link, &stream).await;
    assert!(
        stream_page.contains("6 entries") && stream_page.contains("workers"),
        "{stream_page}"
    );
    browser.screenshot("admin-stream").await;

    let entry = page
        .find(Locator::Css("main table a[href^='/entry']"))
        .await
        .unwrap();
    let id = entry.text().await.unwrap();
    entry.click().await.unwrap();
    let shown = arrive(page, &format!("Entry {id}")).await;
    assert!(
        shown.contains("Fields as written") && shown.contains("audit.login"),
        "the newest entry: {shown}"
    );
    browser.screenshot("admin-entry").await;
    page.back().await.unwrap();
    arrive(page, &stream).await;

    let title = format!("Dead letters of {stream}");
    click(page, "main a[href^='/dead-letters']", &title).await;
    page.find(Locator::Css("input[name=type]"))
        .await
        .unwrap()
        .send_keys("task.created")
        .await
        .unwrap();
    page.find(Locator::Css("main form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The filtered page shows its filter in the box.
    let filtered = Locator::Css("input[name=type][value='task.created']");
    page.wait_for(filtered).await.unwrap();
    let letters = arrive(page, &title).await;
    assert_eq!(letters.matches("is broken").count(), 2, "{letters}");
    assert!(!letters.contains("audit.login"), "{letters}");
    browser.screenshot("admin-dead-letters").await;

    let confirm = click(
        page,
        "main a.action[href*='action=replay']",
        "Confirm: replay dead letters",
    )
    .await;
    assert!(confirm.contains("2 dead letter(s) of"), "{confirm}");
    browser.screenshot("admin-confirm").await;
    let done = click(page, "button.danger", "Done").await;
    assert!(done.contains("Replayed 2 dead letter(s)"), "{done}");
    browser.screenshot("admin-replayed").await;
    browser.close().await;

    let mut redis = connection(&server).await;
    let length: usize = redis.xlen(&stream).await.unwrap();
    let dead: usize = redis
        .xlen(events::dead_letter_stream(&stream))
        .await
        .unwrap();
    assert_eq!(
        (length, dead),
        (8, 1),
        "both tasks back in their stream, the other dead letter kept"
    );
}
