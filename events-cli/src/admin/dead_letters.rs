//! The dead-letter pages: a stream's dead letters by type and reason, one shown whole, and
//! replay or purge of a selection behind a confirmation that says how many it applies to.

use std::fmt::Write;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use events::{Connection, DeadLetterEntry, DeadLetters, dead_letter_stream};
use serde::Deserialize;

use super::auth::{Viewer, allow_change};
use super::html::{Page, query, text};
use super::paging::{PAGE, filtered_page};
use super::streams::show_fields;
use super::{Failed, Shared};
use crate::selection::Selection;

/// The most dead letters read looking for a page of those chosen.
const MOST_SCANNED: usize = 5_000;

fn letters(admin: &Shared, stream: &str) -> DeadLetters<Connection> {
    DeadLetters::new(admin.connection(), stream, dead_letter_stream(stream))
}

/// A dead-letter list's request: the stream, filters and the page.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    stream: String,
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    after: String,
}

/// The selection of the letters a list shows: by its filters, or all.
fn filtered(event_type: &str, reason: &str) -> Selection {
    Selection {
        event_type: Some(event_type.to_owned()),
        reason: Some(reason.to_owned()),
        all: event_type.is_empty() && reason.is_empty(),
        ..Selection::default()
    }
}

/// The query of a selection, for a confirmation link.
fn selection_query<'a>(
    stream: &'a str,
    action: &'a str,
    selection: &'a Selection,
) -> Vec<(&'a str, &'a str)> {
    let mut pairs = vec![("stream", stream), ("action", action)];
    let optional = [
        ("id", &selection.id),
        ("type", &selection.event_type),
        ("reason", &selection.reason),
    ];
    pairs.extend(optional.into_iter().filter_map(|(name, value)| {
        Some((name, value.as_deref().filter(|value| !value.is_empty())?))
    }));
    if selection.all {
        pairs.push(("all", "true"));
    }
    pairs
}

/// Links to confirm a replay or a purge of `selection`, for an operator.
fn action_links(stream: &str, selection: &Selection, viewer: &Viewer) -> String {
    if !matches!(viewer, Viewer::Operator { .. }) {
        return String::new();
    }
    ["replay", "purge"]
        .iter()
        .map(|action| {
            format!(
                "<a class=\"action\" href=\"/dead-letters/confirm?{}\">{}…</a> ",
                query(&selection_query(stream, action, selection)),
                if *action == "replay" {
                    "Replay"
                } else {
                    "Purge"
                }
            )
        })
        .collect()
}

/// `GET /dead-letters?stream=`: a page of the stream's dead letters, by type and reason.
pub(crate) async fn list(
    State(admin): State<Arc<Shared>>,
    viewer: Viewer,
    Query(asked): Query<ListQuery>,
) -> Result<Page, Failed> {
    let stream = admin.shown(&asked.stream)?;
    let selection = filtered(&asked.event_type, &asked.reason);
    let read = |after: Option<String>| {
        let mut letters = letters(&admin, stream);
        let after = after.unwrap_or_else(|| match asked.after.as_str() {
            "" => "-".to_owned(),
            id => id.to_owned(),
        });
        async move { Ok(letters.list(&after, PAGE).await?) }
    };
    let chosen = filtered_page(
        read,
        |letter: &DeadLetterEntry| &letter.id,
        |letter| selection.matches(letter),
        MOST_SCANNED,
    )
    .await?;
    let mut body = format!(
        "<p>Dead letters of <a href=\"/stream?{link}\">{name}</a>, kept in <code>{dead}</code>.</p>\
         <form method=\"get\" action=\"/dead-letters\"><input type=\"hidden\" name=\"stream\" value=\"{name}\">\
         <input name=\"type\" placeholder=\"event type\" value=\"{event_type}\"> \
         <input name=\"reason\" placeholder=\"reason contains\" value=\"{reason}\"> <button>Filter</button></form>\
         <p>{actions}</p>",
        link = query(&[("name", stream)]),
        name = text(stream),
        dead = text(&dead_letter_stream(stream)),
        event_type = text(&asked.event_type),
        reason = text(&asked.reason),
        actions = action_links(stream, &selection, &viewer),
    );
    if chosen.items.is_empty() {
        body.push_str("<p class=\"muted\">No dead letters here.</p>");
    } else {
        body.push_str(
            "<table><tr><th>Dead letter</th><th>When</th><th>Type</th><th>Reason</th><th>Attempts</th>\
             <th>Group / consumer</th><th>Entry</th><th>Replayed</th></tr>",
        );
        for letter in &chosen.items {
            body.push_str(&letter_row(stream, letter));
        }
        body.push_str("</table>");
    }
    if let Some(next) = &chosen.next {
        let _ = write!(
            body,
            "<nav class=\"pages\"><a href=\"/dead-letters?{}\">Next page</a></nav>",
            query(&[
                ("stream", stream),
                ("type", &asked.event_type),
                ("reason", &asked.reason),
                ("after", next)
            ])
        );
    }
    Ok(Page::new(
        &format!("Dead letters of {stream}"),
        body,
        viewer.mode(),
    ))
}

fn letter_row(stream: &str, letter: &DeadLetterEntry) -> String {
    let entry = match letter.part {
        Some(part) => format!("{}#{part}", letter.entry_id),
        None => letter.entry_id.clone(),
    };
    format!(
        "<tr><td><a href=\"/dead-letter?{link}\"><code>{id}</code></a></td><td>{time}</td><td>{event_type}</td>\
         <td>{reason}</td><td class=\"n\">{attempts}</td><td>{group} / {consumer}</td><td><code>{entry}</code></td>\
         <td class=\"n\">{replayed}</td></tr>",
        link = query(&[("stream", stream), ("id", &letter.id)]),
        id = text(&letter.id),
        time = text(&letter.time),
        event_type = text(&letter.event_type().unwrap_or_else(|| "(no type)".into())),
        reason = text(&letter.reason),
        attempts = letter.attempts,
        group = text(&letter.group),
        consumer = text(&letter.consumer),
        entry = text(&entry),
        replayed = letter.replayed(),
    )
}

/// A dead letter's address.
#[derive(Debug, Deserialize)]
pub(crate) struct LetterQuery {
    stream: String,
    id: String,
}

/// `GET /dead-letter?stream=&id=`: one dead letter whole.
pub(crate) async fn show(
    State(admin): State<Arc<Shared>>,
    viewer: Viewer,
    Query(asked): Query<LetterQuery>,
) -> Result<Page, Failed> {
    let stream = admin.shown(&asked.stream)?;
    let letter = letters(&admin, stream)
        .get(&asked.id)
        .await?
        .ok_or_else(|| {
            Failed::missing(format!("no dead letter {} of stream `{stream}`", asked.id))
        })?;
    let one = Selection {
        id: Some(letter.id.clone()),
        ..Selection::default()
    };
    let body = format!(
        "<table><tr><th>Reason</th><td>{reason}</td></tr><tr><th>Attempts</th><td>{attempts}</td></tr>\
         <tr><th>Group / consumer</th><td>{group} / {consumer}</td></tr><tr><th>Dead-lettered</th><td>{time}</td></tr>\
         <tr><th>Entry</th><td><code>{entry}</code></td></tr><tr><th>Replayed</th><td>{replayed} time(s)</td></tr></table>\
         <p>{actions}</p>{fields}",
        reason = text(&letter.reason),
        attempts = letter.attempts,
        group = text(&letter.group),
        consumer = text(&letter.consumer),
        time = text(&letter.time),
        entry = text(&letter.entry_id),
        replayed = letter.replayed(),
        actions = action_links(stream, &one, &viewer),
        fields = show_fields(&letter.fields),
    );
    Ok(Page::new(
        &format!("Dead letter {}", letter.id),
        body,
        viewer.mode(),
    ))
}

/// What to do with a selection.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Action {
    /// Write the dead letters back to their stream.
    Replay,
    /// Delete them.
    Purge,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Purge => "purge",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Self::Replay => "Replayed",
            Self::Purge => "Purged",
        }
    }
}

/// A confirmation's request: the stream, the action and the selection.
#[derive(Debug, Deserialize)]
pub(crate) struct Asked {
    stream: String,
    action: Action,
    #[serde(flatten)]
    selection: Selection,
}

/// The dead letters `asked` chooses, or 400 naming what is wrong with the choice.
async fn chosen(
    admin: &Shared,
    stream: &str,
    selection: &Selection,
) -> Result<Vec<DeadLetterEntry>, Failed> {
    if selection.is_empty() {
        return Err(Failed::bad(
            "choose dead letters by id, type or reason, or all".into(),
        ));
    }
    selection
        .select(&mut letters(admin, stream))
        .await
        .map_err(Failed::bad)
}

/// `GET /dead-letters/confirm`: how many dead letters an action applies to, and the form that
/// applies it.
pub(crate) async fn confirm(
    State(admin): State<Arc<Shared>>,
    viewer: Viewer,
    Query(asked): Query<Asked>,
) -> Result<Page, Failed> {
    let stream = admin.shown(&asked.stream)?;
    let chosen = chosen(&admin, stream, &asked.selection).await?;
    let verb = asked.action.verb();
    let count = chosen.len().to_string();
    let mut fields = selection_query(stream, verb, &asked.selection);
    fields.push(("expected", &count));
    let listed: String = chosen
        .iter()
        .take(20)
        .map(|letter| {
            format!(
                "<li><code>{}</code> {}</li>",
                text(&letter.id),
                text(&letter.reason)
            )
        })
        .collect();
    let more = if chosen.len() > 20 {
        format!("<li>and {} more</li>", chosen.len() - 20)
    } else {
        String::new()
    };
    let button = format!("Yes, {verb} {count} dead letter(s)");
    let form = viewer
        .form("/dead-letters/apply", &fields, &button)
        .unwrap_or_else(|| {
            "<p class=\"notice\">Log in with the admin's token to do this.</p>".into()
        });
    let what = match asked.action {
        Action::Replay => "written back to their stream and removed from the dead letters",
        Action::Purge => "deleted for good",
    };
    let body = format!(
        "<p class=\"notice\">{count} dead letter(s) of <b>{name}</b> ({described}) will be {what}.</p>\
         <ul>{listed}{more}</ul><p>{form} <a href=\"/dead-letters?{back}\">Cancel</a></p>",
        name = text(stream),
        described = text(&asked.selection.describe()),
        back = query(&[("stream", stream)]),
    );
    Ok(Page::new(
        &format!("Confirm: {verb} dead letters"),
        body,
        viewer.mode(),
    ))
}

/// A confirmed action: the confirmation's request, the count it showed and the CSRF token.
#[derive(Debug, Deserialize)]
pub(crate) struct Confirmed {
    #[serde(flatten)]
    asked: Asked,
    expected: usize,
    #[serde(default)]
    csrf: String,
}

/// `POST /dead-letters/apply`: replays or purges the selection, provided it still holds as many
/// dead letters as the confirmation showed.
pub(crate) async fn apply(
    State(admin): State<Arc<Shared>>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(confirmed): Form<Confirmed>,
) -> Result<Page, Failed> {
    allow_change(&admin, &headers, Some(&confirmed.csrf))?;
    let asked = &confirmed.asked;
    let stream = admin.shown(&asked.stream)?;
    let chosen = chosen(&admin, stream, &asked.selection).await?;
    if chosen.len() != confirmed.expected {
        return Err(Failed::conflict(format!(
            "the selection holds {} dead letter(s) now, {} when you confirmed: nothing was done; confirm again",
            chosen.len(),
            confirmed.expected
        )));
    }
    let mut letters = letters(&admin, stream);
    let done = match asked.action {
        Action::Replay => {
            let mut replayed = 0;
            for letter in &chosen {
                if letters.replay(letter).await?.is_some() {
                    replayed += 1;
                }
            }
            replayed
        }
        Action::Purge => {
            let ids: Vec<String> = chosen.into_iter().map(|letter| letter.id).collect();
            letters.purge(&ids).await?
        }
    };
    let body = format!(
        "<p class=\"ok\">{verb} {done} dead letter(s) of {name}.</p>\
         <p><a href=\"/dead-letters?{back}\">Dead letters</a> · <a href=\"/stream?{stream_link}\">Stream</a></p>",
        verb = asked.action.done(),
        name = text(stream),
        back = query(&[("stream", stream)]),
        stream_link = query(&[("name", stream)]),
    );
    Ok(Page::new("Done", body, viewer.mode()))
}
