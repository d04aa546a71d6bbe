//! Dead letters: events that cannot be handled, kept with why, for an operator to inspect or
//! replay. Push and pull consumers move entries there the same way: retried until the move lands
//! (or the consumer stops), the entry kept meanwhile, so a poison event is never run again for a
//! failed write, and moved at most once.

use std::time::{Duration, SystemTime};

use super::config::Settings;
use super::group::{DeadLetterMove, EventHolds, Group};
use super::part::Part;
use super::status::{Counters, Operation};
use crate::connection::Connection;
use crate::typescript;
use crate::{Backoff, StreamEntry};

/// Prefix of the fields a dead-letter entry adds to the original entry's fields.
pub const DEAD_LETTER_PREFIX: &str = "dlq.";

/// An entry that was moved to a dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The stream it was read from.
    pub stream: String,
    /// Its id there.
    pub entry_id: String,
    /// The event's place in the entry, from 0, when the entry held a batch packed by the
    /// TypeScript batched publisher: each of its events is dead-lettered on its own.
    pub part: Option<usize>,
    /// Its event type, when the entry had one.
    pub event_type: Option<String>,
    /// The dead-letter stream it was moved to.
    pub dead_letter_stream: String,
    /// Its id in the dead-letter stream.
    pub dead_letter_id: String,
    /// Why it could not be handled.
    pub reason: String,
    /// How many deliveries were attempted.
    pub attempts: u32,
}

/// An event to move to the dead-letter stream, and why.
#[derive(Debug)]
pub(crate) struct Doomed<'a> {
    pub(crate) stream: &'a str,
    pub(crate) entry: &'a StreamEntry,
    /// Which event of a packed entry it is; `None` for the entry's only event.
    pub(crate) part: Option<&'a Part>,
    /// Whether to acknowledge the entry with the move: false while other events of it are
    /// unsettled.
    pub(crate) acknowledge: bool,
    pub(crate) event_type: Option<String>,
    pub(crate) reason: String,
    pub(crate) attempts: u32,
    /// The holds the entry took on its event, ended with the move.
    pub(crate) holds: EventHolds,
}

/// Moves `doomed` to its dead-letter stream, trying again until the move lands; `None` when the
/// entry turned out to be another consumer's (nothing is written then).
pub(crate) async fn move_to_dead_letters(
    group: &Group<Connection>,
    settings: &Settings,
    counters: &Counters,
    doomed: Doomed<'_>,
) -> Option<DeadLetter> {
    let dead_letter_stream = settings.dead_letter_stream(doomed.stream);
    let fields = dead_letter_fields(
        doomed.stream,
        &settings.group,
        &settings.consumer,
        (doomed.entry, doomed.part),
        &doomed.reason,
        doomed.attempts,
    );
    let moving = DeadLetterMove {
        stream: doomed.stream,
        dead_letter_stream: &dead_letter_stream,
        entry_id: &doomed.entry.id,
        acknowledge: doomed.acknowledge,
        holds: doomed.holds,
        marks: settings.marks(),
        max_len: settings.dead_letter_max_len,
        fields: &fields,
    };
    let retry = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5));
    let mut failures = 0;
    let moved = loop {
        match group.dead_letter(&moving).await {
            Ok(moved) => break moved,
            Err(error) => {
                failures += 1;
                counters.stalled(Operation::DeadLetter, doomed.stream, &error);
                tokio::time::sleep(retry.delay(failures)).await;
            }
        }
    };
    counters.recovered(Operation::DeadLetter, doomed.stream);
    let Some(dead_letter_id) = moved else {
        tracing::warn!(stream = %doomed.stream, entry_id = %doomed.entry.id, "another consumer took the entry over before it could be dead-lettered; left to it");
        return None;
    };
    Counters::add(&counters.dead_lettered, 1);
    tracing::warn!(stream = %doomed.stream, entry_id = %doomed.entry.id, %dead_letter_stream, reason = %doomed.reason, "moved to the dead-letter stream");
    Some(DeadLetter {
        stream: doomed.stream.to_owned(),
        entry_id: doomed.entry.id.clone(),
        part: doomed.part.map(|part| part.index),
        event_type: doomed.event_type,
        dead_letter_stream,
        dead_letter_id,
        reason: doomed.reason,
        attempts: doomed.attempts,
    })
}

/// The dead-letter entry's fields: `dlq.reason`, `dlq.attempts`, `dlq.stream`, `dlq.entry_id`,
/// `dlq.group`, `dlq.consumer` and `dlq.ts`, then every field of the original entry as it was; for
/// an event of a packed entry, `dlq.part` (its place in the batch) and the event alone as a single
/// TypeScript entry, which a replay writes back as such.
pub(crate) fn dead_letter_fields(
    stream: &str,
    group: &str,
    consumer: &str,
    (entry, part): (&StreamEntry, Option<&Part>),
    reason: &str,
    attempts: u32,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let metadata = [
        ("reason", reason.to_owned()),
        ("attempts", attempts.to_string()),
        ("stream", stream.to_owned()),
        ("entry_id", entry.id.clone()),
        ("group", group.to_owned()),
        ("consumer", consumer.to_owned()),
        ("ts", now),
    ];
    let part_index = part.map(|part| ("part", part.index.to_string()));
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = metadata
        .into_iter()
        .chain(part_index)
        .map(|(name, value)| {
            (
                format!("{DEAD_LETTER_PREFIX}{name}").into_bytes(),
                value.into_bytes(),
            )
        })
        .collect();
    match part {
        Some(part) => fields.push((
            typescript::DATA_FIELD.as_bytes().to_vec(),
            part.data.clone().into_bytes(),
        )),
        None => fields.extend(entry.fields.iter().cloned()),
    }
    fields
}
