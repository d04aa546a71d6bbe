//! Stream entries as they are read back, before and after decoding.

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
        .map_err(|source| Error::Read {
            stream: stream.to_owned(),
            source,
        })?;
    Ok(entries
        .into_iter()
        .map(|(id, fields)| StreamEntry { id, fields })
        .collect())
}
