//! The streams pages: the dashboard of every stream shown, one stream with its groups and
//! entries, one entry whole; and the removal of a group's stale consumers.

use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Form;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use events::{
    Envelope, StreamEntry, StreamStats, dead_letter_stream, remove_stale_consumers_of, stream_stats,
};
use serde::Deserialize;

use super::auth::{Viewer, allow_change};
use super::html::{Page, query, text};
use super::paging::{PAGE, filtered_page};
use super::{Failed, Shared};

/// The most entries read looking for a page of those of one type.
const MOST_SCANNED: usize = 2_000;
/// Entries as `XREVRANGE` answers: ids and field-value pairs.
type Entries = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;
/// The stats of `stream`, or 404 when it does not exist.
async fn stats(admin: &Shared, stream: &str) -> Result<StreamStats, Failed> {
    let mut connection = admin.connection();
    let exists: bool = redis::cmd("EXISTS")
        .arg(stream)
        .query_async(&mut connection)
        .await?;
    if !exists {
        return Err(Failed::missing(format!("stream `{stream}` does not exist")));
    }
    Ok(stream_stats(&mut connection, stream, &dead_letter_stream(stream)).await?)
}

/// When entry `id` was added, from its id.
pub(crate) fn entry_time(id: &str) -> String {
    id.split('-')
        .next()
        .and_then(|millis| millis.parse::<u64>().ok())
        .map(|millis| {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(millis)).to_string()
        })
        .unwrap_or_else(|| "?".into())
}

fn time(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn kib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "?".into(),
        |bytes| format!("{:.1} KiB", bytes as f64 / 1024.0),
    )
}

/// The dashboard's filter.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Filter {
    #[serde(default)]
    pattern: String,
}

/// `GET /`: every stream shown, with its length, memory, first and last entries, groups, dead
/// letters and rate.
pub(crate) async fn dashboard(
    State(admin): State<Arc<Shared>>,
    viewer: Viewer,
    Query(filter): Query<Filter>,
) -> Result<Page, Failed> {
    let names = admin.list_streams(&filter.pattern).await?;
    let mut rows = String::new();
    for name in &names {
        // Listed just now: no need to ask whether it exists.
        let stats = stream_stats(&mut admin.connection(), name, &dead_letter_stream(name)).await?;
        let lag: u64 = stats.groups.iter().filter_map(|group| group.lag).sum();
        let pending: u64 = stats.groups.iter().map(|group| group.pending).sum();
        let stamp = |entry: &Option<events::EntryStamp>| {
            entry
                .as_ref()
                .map_or_else(|| "-".into(), |entry| time(entry.time))
        };
        let _ = write!(
            rows,
            "<tr><td><a href=\"/stream?{stream_link}\">{name}</a></td><td class=\"n\">{length}</td>\
             <td class=\"n\">{memory}</td><td>{first}</td><td>{last}</td><td class=\"n\">{groups}</td>\
             <td class=\"n\">{lag}</td><td class=\"n\">{pending}</td>\
             <td class=\"n\"><a href=\"/dead-letters?{link}\">{dead}</a></td><td>{chart}</td></tr>",
            stream_link = query(&[("name", name)]),
            link = query(&[("stream", name)]),
            name = text(name),
            length = stats.length,
            memory = kib(stats.memory_bytes),
            first = stamp(&stats.first_entry),
            last = stamp(&stats.last_entry),
            groups = stats.groups.len(),
            dead = stats.dead_letters,
            chart = admin.rates.chart(name, 160, 32),
        );
    }
    let body = format!(
        "<form method=\"get\" action=\"/\"><input name=\"pattern\" placeholder=\"pattern, e.g. orders*\" \
         value=\"{pattern}\"> <button>Filter</button></form>\
         <p class=\"muted\">{count} stream(s){capped}. Rates are sampled every {every} s while this admin runs.</p>\
         <table><tr><th>Stream</th><th>Length</th><th>Memory</th><th>First entry</th><th>Last entry</th>\
         <th>Groups</th><th>Lag</th><th>Pending</th><th>Dead letters</th><th>Events/s</th></tr>{rows}</table>",
        pattern = text(&filter.pattern),
        count = names.len(),
        capped = if names.len() == super::MOST_STREAMS {
            " (the first shown; narrow the pattern)"
        } else {
            ""
        },
        every = super::rates::EVERY.as_secs(),
    );
    Ok(Page::new("Streams", body, viewer.mode()))
}

/// A stream page's request: the stream, a type filter and the page (entries before an id).
#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    name: String,
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    before: String,
}

/// `GET /stream?name=`: a stream's stats, its groups and consumers, and its entries (newest
/// first, by type, paged).
pub(crate) async fn stream(
    State(admin): State<Arc<Shared>>,
    viewer: Viewer,
    Query(asked): Query<StreamQuery>,
) -> Result<Page, Failed> {
    let name = admin.shown(&asked.name)?;
    let stats = stats(&admin, name).await?;
    let mut body = format!(
        "<p>{length} entries, {memory}; <a href=\"/dead-letters?{link}\">{dead} dead letter(s)</a></p>{chart}",
        length = stats.length,
        memory = kib(stats.memory_bytes),
        link = query(&[("stream", name)]),
        dead = stats.dead_letters,
        chart = admin.rates.chart(name, 600, 80),
    );
    body.push_str(&groups(&stats, &viewer));
    body.push_str(&entries(&admin, name, &asked).await?);
    Ok(Page::new(name, body, viewer.mode()))
}

/// The groups of a stream with their consumers, and the removal form.
fn groups(stats: &StreamStats, viewer: &Viewer) -> String {
    let mut html = String::from("<h2>Groups</h2>");
    if stats.groups.is_empty() {
        html.push_str("<p class=\"muted\">No consumer groups.</p>");
        return html;
    }
    html.push_str(
        "<table><tr><th>Group</th><th>Lag</th><th>Pending</th><th>Oldest pending idle</th>\
         <th>Last delivered</th><th>Consumers (pending, idle)</th></tr>",
    );
    for group in &stats.groups {
        let consumers: String = group
            .consumers
            .iter()
            .map(|consumer| {
                format!(
                    "{} ({}, {:.1} s)<br>",
                    text(&consumer.name),
                    consumer.pending,
                    consumer.idle.as_secs_f64()
                )
            })
            .collect();
        let remove = viewer
            .form(
                "/consumers/remove",
                &[
                    ("stream", &stats.stream),
                    ("group", &group.name),
                    ("idle", "3600"),
                ],
                "Remove consumers idle 1 h+ with nothing pending",
            )
            .unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td>{name}</td><td class=\"n\">{lag}</td><td class=\"n\">{pending}</td><td class=\"n\">{oldest}</td>\
             <td>{last}</td><td>{consumers}{remove}</td></tr>",
            name = text(&group.name),
            lag = group.lag.map_or_else(|| "?".into(), |lag| lag.to_string()),
            pending = group.pending,
            oldest = group
                .oldest_pending_idle
                .map_or_else(|| "-".into(), |idle| format!("{:.1} s", idle.as_secs_f64())),
            last = text(&group.last_delivered_id),
        );
    }
    html.push_str("</table>");
    html
}

/// An entry and its event, or why it holds none.
type Decoded = (StreamEntry, Result<Envelope, String>);

/// A page of the stream's entries, newest first, of one type when asked.
async fn entries(admin: &Shared, stream: &str, asked: &StreamQuery) -> Result<String, Failed> {
    let read = |before: Option<String>| {
        let mut connection = admin.connection();
        let end = match before
            .as_deref()
            .or(Some(asked.before.as_str()).filter(|id| !id.is_empty()))
        {
            Some(id) => format!("({id}"),
            None => "+".to_owned(),
        };
        async move {
            let page: Entries = redis::cmd("XREVRANGE")
                .arg(stream)
                .arg(end)
                .arg("-")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut connection)
                .await?;
            Ok(page
                .into_iter()
                .map(|(id, fields)| {
                    let entry = StreamEntry { id, fields };
                    let decoded = entry.decode().map_err(|error| error.to_string());
                    (entry, decoded)
                })
                .collect())
        }
    };
    let of_type = |(_, decoded): &Decoded| {
        asked.event_type.is_empty()
            || decoded
                .as_ref()
                .is_ok_and(|envelope| envelope.event_type == asked.event_type)
    };
    let shown = filtered_page(
        read,
        |(entry, _): &Decoded| &entry.id,
        of_type,
        MOST_SCANNED,
    )
    .await?;
    let mut html = format!(
        "<h2>Entries</h2><form method=\"get\" action=\"/stream\"><input type=\"hidden\" name=\"name\" value=\"{name}\">\
         <input name=\"type\" placeholder=\"event type\" value=\"{event_type}\"> <button>Filter</button></form>",
        name = text(stream),
        event_type = text(&asked.event_type),
    );
    if shown.items.is_empty() {
        html.push_str("<p class=\"muted\">No entries here.</p>");
    } else {
        html.push_str("<table><tr><th>Entry</th><th>Added</th><th>Type</th><th>Version</th><th>Origin</th><th>Body</th></tr>");
        for (entry, decoded) in &shown.items {
            html.push_str(&entry_row(stream, entry, decoded));
        }
        html.push_str("</table>");
    }
    if let Some(next) = &shown.next {
        let _ = write!(
            html,
            "<nav class=\"pages\"><a href=\"/stream?{}\">Older entries</a></nav>",
            query(&[
                ("name", stream),
                ("type", &asked.event_type),
                ("before", next)
            ])
        );
    }
    Ok(html)
}

/// One entry as a table row: its id linking to the whole entry, and its event decoded.
fn entry_row(stream: &str, entry: &StreamEntry, decoded: &Result<Envelope, String>) -> String {
    let link = format!(
        "<a href=\"/entry?{}\"><code>{}</code></a>",
        query(&[("stream", stream), ("id", &entry.id)]),
        text(&entry.id)
    );
    match decoded {
        Ok(envelope) => format!(
            "<tr><td>{link}</td><td>{added}</td><td>{event_type}</td><td class=\"n\">{version}</td>\
             <td>{origin}</td><td><code>{body}</code></td></tr>",
            added = entry_time(&entry.id),
            event_type = text(&envelope.event_type),
            version = envelope.version,
            origin = text(&envelope.origin),
            body = text(&preview(&envelope.body)),
        ),
        Err(error) => format!(
            "<tr><td>{link}</td><td>{added}</td><td colspan=\"4\" class=\"warn\">not an event: {error}</td></tr>",
            added = entry_time(&entry.id),
            error = text(error),
        ),
    }
}

/// The start of `body`, for a table cell.
fn preview(body: &str) -> String {
    const SHOWN: usize = 120;
    match body.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &body[..end]),
        None => body.to_owned(),
    }
}

/// An entry's address.
#[derive(Debug, Deserialize)]
pub(crate) struct EntryQuery {
    stream: String,
    id: String,
}

/// `GET /entry?stream=&id=`: one entry whole, its fields as written and its event(s) decoded.
pub(crate) async fn entry(
    State(admin): State<Arc<Shared>>,
    viewer: Viewer,
    Query(asked): Query<EntryQuery>,
) -> Result<Page, Failed> {
    let stream = admin.shown(&asked.stream)?;
    let entry = events::read_range(&mut admin.connection(), stream, &asked.id, &asked.id, 1)
        .await?
        .into_iter()
        .next()
        .filter(|entry| entry.id == asked.id)
        .ok_or_else(|| Failed::missing(format!("no entry {} in stream `{stream}`", asked.id)))?;
    let body = format!(
        "<p>Stream <a href=\"/stream?{link}\">{stream_name}</a>, added {added}</p>{shown}",
        link = query(&[("name", stream)]),
        stream_name = text(stream),
        added = entry_time(&entry.id),
        shown = show_fields(&entry.fields),
    );
    Ok(Page::new(
        &format!("Entry {}", entry.id),
        body,
        viewer.mode(),
    ))
}

/// An entry's events decoded (each of a packed entry), then its fields as written.
pub(crate) fn show_fields(fields: &[(Vec<u8>, Vec<u8>)]) -> String {
    let mut html = String::new();
    match Envelope::decode_all(fields) {
        Ok(envelopes) => {
            for (index, envelope) in envelopes.iter().enumerate() {
                match envelope {
                    Ok(envelope) => html.push_str(&show_envelope(envelope)),
                    Err(error) => {
                        let why = error.to_string();
                        let _ = write!(
                            html,
                            "<p class=\"warn\">Event {index} is not valid: {}</p>",
                            text(&why)
                        );
                    }
                }
            }
        }
        Err(error) => {
            let _ = write!(
                html,
                "<p class=\"warn\">Not an event: {}</p>",
                text(&error.to_string())
            );
        }
    }
    html.push_str("<h2>Fields as written</h2><table><tr><th>Field</th><th>Value</th></tr>");
    for (name, value) in fields {
        let _ = write!(
            html,
            "<tr><td><code>{}</code></td><td><code>{}</code></td></tr>",
            text(&String::from_utf8_lossy(name)),
            text(&String::from_utf8_lossy(value))
        );
    }
    html.push_str("</table>");
    html
}

fn show_envelope(envelope: &Envelope) -> String {
    let pretty = serde_json::from_str::<serde_json::Value>(&envelope.body)
        .and_then(|body| serde_json::to_string_pretty(&body))
        .unwrap_or_else(|_| envelope.body.clone());
    let mut rows = vec![
        ("Type", envelope.event_type.clone()),
        ("Version", envelope.version.to_string()),
        ("Event id", envelope.id.clone()),
        ("Origin", envelope.origin.clone()),
        ("Published", time(envelope.timestamp)),
    ];
    let optional = [
        ("Correlation id", &envelope.correlation_id),
        ("Causation id", &envelope.causation_id),
        ("Partition key", &envelope.partition_key),
        ("Trace", &envelope.traceparent),
    ];
    rows.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some((name, value.clone()?))),
    );
    let headers = envelope
        .headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}"))
        .collect::<Vec<_>>()
        .join("\n");
    if !headers.is_empty() {
        rows.push(("Headers", headers));
    }
    let table: String = rows
        .iter()
        .map(|(name, value)| format!("<tr><th>{name}</th><td>{}</td></tr>", text(value)))
        .collect();
    format!(
        "<h2>Event</h2><table>{table}</table><pre>{}</pre>",
        text_block(&pretty)
    )
}

/// A block of text shown as is, lines kept (other control characters still escaped).
fn text_block(block: &str) -> String {
    block
        .lines()
        .map(|line| text(line).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The stale-consumer removal form.
#[derive(Debug, Deserialize)]
pub(crate) struct Removal {
    stream: String,
    group: String,
    /// Seconds a consumer must have been idle.
    idle: u64,
    #[serde(default)]
    csrf: String,
}

/// `POST /consumers/remove`: removes the group's consumers idle `idle` seconds or more with
/// nothing pending.
pub(crate) async fn remove_consumers(
    State(admin): State<Arc<Shared>>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(removal): Form<Removal>,
) -> Result<Page, Failed> {
    allow_change(&admin, &headers, Some(&removal.csrf))?;
    let stream = admin.shown(&removal.stream)?;
    let idle = Duration::from_secs(removal.idle);
    let removed =
        remove_stale_consumers_of(admin.connection(), stream, &removal.group, idle).await?;
    let list: String = removed
        .iter()
        .map(|name| format!("<li>{}</li>", text(name)))
        .collect();
    let body = format!(
        "<p>Removed {count} consumer(s) of group {group} idle {idle} s or more with nothing pending.</p><ul>{list}</ul>\
         <p><a href=\"/stream?{link}\">Back to {stream_name}</a></p>",
        count = removed.len(),
        group = text(&removal.group),
        idle = removal.idle,
        link = query(&[("name", stream)]),
        stream_name = text(stream),
    );
    Ok(Page::new("Consumers removed", body, viewer.mode()))
}
