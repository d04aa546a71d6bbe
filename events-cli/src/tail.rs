//! `events tail`: follow a stream's new entries, decoded.

use crate::say;
use std::time::Duration;

use events::Connection;
use events::{Envelope, StreamEntry, read_after};
use redis::Value;

use crate::Failure;

/// Prints the entries added to `stream` after `from` (`$`: from now on), until `count` are
/// printed or the process is stopped.
pub(crate) async fn run(
    connection: &mut Connection,
    stream: &str,
    from: &str,
    count: Option<usize>,
) -> Result<(), Failure> {
    let mut last = if from == "$" {
        last_id(connection, stream).await?
    } else {
        from.to_owned()
    };
    let mut printed = 0;
    while count.is_none_or(|count| printed < count) {
        for entry in read_after(connection, stream, &last, 100, Duration::from_secs(1)).await? {
            for line in describe(&entry) {
                say!("{line}");
            }
            last = entry.id;
            printed += 1;
            if count.is_some_and(|count| printed >= count) {
                break;
            }
        }
    }
    Ok(())
}

/// The id of the stream's last entry, `0-0` when it is empty or missing.
async fn last_id(connection: &mut Connection, stream: &str) -> Result<String, Failure> {
    let last: Vec<(String, Value)> = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(connection)
        .await?;
    Ok(last
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
}

/// One line per event of an entry (several for a batch the TypeScript batched publisher packed
/// into it): decoded, or why it cannot be.
pub(crate) fn describe(entry: &StreamEntry) -> Vec<String> {
    let events = match Envelope::decode_all(&entry.fields) {
        Ok(events) => events,
        Err(error) => return vec![format!("{} undecodable: {error}", entry.id)],
    };
    let packed = events.len() > 1;
    events
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            let at = if packed {
                format!("{}#{index}", entry.id)
            } else {
                entry.id.clone()
            };
            match event {
                Ok(envelope) => format!(
                    "{at} {} v{} from {} at {} {}",
                    envelope.event_type,
                    envelope.version,
                    envelope.origin,
                    humantime::format_rfc3339_millis(envelope.timestamp),
                    envelope.body
                ),
                Err(error) => format!("{at} undecodable: {error}"),
            }
        })
        .collect()
}
