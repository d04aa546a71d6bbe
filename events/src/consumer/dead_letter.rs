//! Dead letters: entries that cannot be handled, kept with why, for an operator to inspect or replay.

use std::time::SystemTime;

use crate::StreamEntry;

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

/// The dead-letter entry's fields: `dlq.reason`, `dlq.attempts`, `dlq.stream`, `dlq.entry_id`,
/// `dlq.group`, `dlq.consumer` and `dlq.ts`, then every field of the original entry as it was.
pub(crate) fn dead_letter_fields(
    stream: &str,
    group: &str,
    consumer: &str,
    entry: &StreamEntry,
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
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = metadata
        .into_iter()
        .map(|(name, value)| {
            (
                format!("{DEAD_LETTER_PREFIX}{name}").into_bytes(),
                value.into_bytes(),
            )
        })
        .collect();
    fields.extend(entry.fields.iter().cloned());
    fields
}
