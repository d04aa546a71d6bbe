//! Stream entries as they are read back, before and after decoding.

use std::time::Duration;

use redis::aio::ConnectionLike;

use crate::{DecodeError, Envelope, Error, Result};

/// An entry's field-value pairs.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One entry of a stream: its id and its raw fields, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry's id, such as `1700000000000-0`.
    pub id: String,
    /// The entry's field-value pairs as written.
    pub fields: Fields,
}

impl StreamEntry {
    /// Decodes the fields into an envelope, leaving the entry as it is.
    pub fn decode(&self) -> Result<Envelope, DecodeError> {
        Envelope::decode(&self.fields)
    }
}

/// Reads up to `count` entries of `stream` with ids from `start` to `end` (`XRANGE`; `-` and `+`
/// stand for the first and the last entry).
pub async fn read_range<C: ConnectionLike>(
    connection: &mut C,
    stream: &str,
    start: &str,
    end: &str,
    count: usize,
) -> Result<Vec<StreamEntry>> {
    let entries: Vec<(String, Fields)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(count)
        .query_async(connection)
        .await
        .map_err(Error::reading(stream))?;
    Ok(entries
        .into_iter()
        .map(|(id, fields)| StreamEntry { id, fields })
        .collect())
}

/// Reads up to `count` entries of `stream` added after entry id `after` (`XREAD`), waiting up to
/// `block` for the first; none when nothing came.
pub async fn read_after<C: ConnectionLike>(
    connection: &mut C,
    stream: &str,
    after: &str,
    count: usize,
    block: Duration,
) -> Result<Vec<StreamEntry>> {
    let reply: redis::Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX))
        .arg("STREAMS")
        .arg(stream)
        .arg(after)
        .query_async(connection)
        .await
        .map_err(Error::reading(stream))?;
    Ok(crate::resp::parse_read_reply(reply)
        .into_iter()
        .flat_map(|(_, entries)| entries)
        .collect())
}
