//! Operations on a stream's dead letters: list, inspect, replay into the stream, purge.

use redis::aio::ConnectionLike;

use crate::consumer::DEAD_LETTER_PREFIX;
use crate::transfer::{Finish, add_and_finish};
use crate::{Envelope, Error, Result, StreamEntry, read_range};

/// The field counting how often an entry was replayed from the dead-letter stream.
pub const REPLAYED_FIELD: &str = "dlq.replayed";

/// One entry of a dead-letter stream: why it is there and the original entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterEntry {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// Why it could not be handled.
    pub reason: String,
    /// Deliveries attempted.
    pub attempts: u32,
    /// The consumer group that gave up on it.
    pub group: String,
    /// The consumer that gave up on it.
    pub consumer: String,
    /// Its id in the original stream.
    pub entry_id: String,
    /// The event's place in its entry, from 0, when the entry held a batch packed by the
    /// TypeScript batched publisher; the dead letter then holds that event alone.
    pub part: Option<usize>,
    /// When it was dead-lettered, as written.
    pub time: String,
    /// The original entry's fields, as they were.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl DeadLetterEntry {
    fn from_entry(entry: StreamEntry) -> Self {
        let mut metadata = std::collections::HashMap::new();
        let mut fields = Vec::with_capacity(entry.fields.len());
        for (name, value) in entry.fields {
            match name.strip_prefix(DEAD_LETTER_PREFIX.as_bytes()) {
                Some(key) if key != b"replayed" && !metadata.contains_key(key) => {
                    metadata.insert(key.to_vec(), String::from_utf8_lossy(&value).into_owned());
                }
                _ => fields.push((name, value)),
            }
        }
        let mut take = |key: &str| metadata.remove(key.as_bytes()).unwrap_or_default();
        Self {
            id: entry.id,
            reason: take("reason"),
            attempts: take("attempts").parse().unwrap_or(0),
            group: take("group"),
            consumer: take("consumer"),
            entry_id: take("entry_id"),
            part: take("part").parse().ok(),
            time: take("ts"),
            fields,
        }
    }

    /// The original entry as an event, if it is one.
    pub fn envelope(&self) -> Option<Envelope> {
        Envelope::decode(&self.fields).ok()
    }

    /// The original entry's event type, if it has one (even when the rest does not decode).
    pub fn event_type(&self) -> Option<String> {
        self.envelope()
            .map(|envelope| envelope.event_type)
            .or_else(|| {
                self.fields
                    .iter()
                    .find(|(name, _)| name == b"type")
                    .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
            })
    }

    /// How often it was replayed before.
    pub fn replayed(&self) -> u32 {
        self.fields
            .iter()
            .find(|(name, _)| name == REPLAYED_FIELD.as_bytes())
            .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
            .unwrap_or(0)
    }
}

/// The dead letters of one stream, over a connection.
#[derive(Debug)]
pub struct DeadLetters<C> {
    connection: C,
    stream: String,
    dead_letter_stream: String,
}

impl<C: ConnectionLike + Send> DeadLetters<C> {
    /// The dead letters of `stream`, kept in `dead_letter_stream`.
    pub fn new(
        connection: C,
        stream: impl Into<String>,
        dead_letter_stream: impl Into<String>,
    ) -> Self {
        Self {
            connection,
            stream: stream.into(),
            dead_letter_stream: dead_letter_stream.into(),
        }
    }

    /// Up to `count` dead letters with ids after `after` (`-` for the first page).
    pub async fn list(&mut self, after: &str, count: usize) -> Result<Vec<DeadLetterEntry>> {
        let start = if after == "-" {
            "-".to_owned()
        } else {
            format!("({after}")
        };
        let entries = read_range(
            &mut self.connection,
            &self.dead_letter_stream,
            &start,
            "+",
            count,
        )
        .await?;
        Ok(entries
            .into_iter()
            .map(DeadLetterEntry::from_entry)
            .collect())
    }

    /// Every dead letter, oldest first, read in pages.
    pub async fn all(&mut self) -> Result<Vec<DeadLetterEntry>> {
        let mut all: Vec<DeadLetterEntry> = Vec::new();
        loop {
            let after = all
                .last()
                .map_or_else(|| "-".to_owned(), |last| last.id.clone());
            let page = self.list(&after, 500).await?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    /// The dead letter `id`, if it is there.
    pub async fn get(&mut self, id: &str) -> Result<Option<DeadLetterEntry>> {
        let entries = read_range(&mut self.connection, &self.dead_letter_stream, id, id, 1).await?;
        Ok(entries.into_iter().next().map(DeadLetterEntry::from_entry))
    }

    /// Writes the dead letter's original entry back to the stream (counting the replay) and
    /// deletes it from the dead-letter stream, atomically. Returns the new entry's id, or `None`
    /// when the dead letter is not there.
    pub async fn replay(&mut self, letter: &DeadLetterEntry) -> Result<Option<String>> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = letter
            .fields
            .iter()
            .filter(|(name, _)| name != REPLAYED_FIELD.as_bytes())
            .cloned()
            .collect();
        fields.push((
            REPLAYED_FIELD.as_bytes().to_vec(),
            (letter.replayed() + 1).to_string().into_bytes(),
        ));
        let finish = Finish {
            script: include_str!("lua/replay.lua"),
            keys: vec![&self.stream, &self.dead_letter_stream],
            args: vec![letter.id.clone().into_bytes()],
        };
        let (id, replayed) = add_and_finish(&mut self.connection, &self.stream, 0, &fields, finish)
            .await
            .map_err(|source| Error::Write {
                event_type: letter.event_type().unwrap_or_else(|| "(unknown)".into()),
                stream: self.stream.clone(),
                source,
            })?;
        Ok((replayed == 1).then_some(id))
    }

    /// Deletes the dead letters `ids`; returns how many were there.
    pub async fn purge(&mut self, ids: &[String]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        redis::cmd("XDEL")
            .arg(&self.dead_letter_stream)
            .arg(ids)
            .query_async(&mut self.connection)
            .await
            .map_err(|source| Error::Read {
                stream: self.dead_letter_stream.clone(),
                source,
            })
    }
}
