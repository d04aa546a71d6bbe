//! The Redis side of a consumer group: create it, read, reclaim, settle and dead-letter entries.
//! Push and pull consumers share it.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionLike;
use redis::{Script, Value};

use crate::StreamEntry;

static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/settle.lua")));
static BEGIN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/begin.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/release.lua")));
static DEAD_LETTER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/dead_letter.lua")));
static REMOVE_CONSUMER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/remove_consumer.lua")));

/// Where a new group starts reading a stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Only entries added after the group is created (`$`).
    #[default]
    New,
    /// Every entry in the stream (`0`).
    Beginning,
    /// Entries after this entry id.
    Id(String),
    /// Entries added at or after this time.
    Time(SystemTime),
}

impl StartFrom {
    fn id(&self) -> String {
        match self {
            StartFrom::New => "$".into(),
            StartFrom::Beginning => "0".into(),
            StartFrom::Id(id) => id.clone(),
            StartFrom::Time(time) => {
                let millis = time
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                // The group delivers entries after this id: the last one of the millisecond before.
                match millis.checked_sub(1) {
                    Some(before) => format!("{before}-18446744073709551615"),
                    None => "0".into(),
                }
            }
        }
    }
}

/// What an idempotency key says about an event before its handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// This delivery holds the key: run the handler.
    Taken,
    /// The event was handled already: acknowledge it without running the handler.
    Done,
    /// Another delivery of the same event is being handled right now: try again later.
    Busy,
}

/// One consumer in one group, over one connection.
#[derive(Debug, Clone)]
pub(crate) struct Group<C> {
    pub(crate) connection: C,
    pub(crate) group: String,
    pub(crate) consumer: String,
}

/// Whether a Redis error says the group or its stream does not exist.
pub(crate) fn is_no_group(error: &redis::RedisError) -> bool {
    error.code() == Some("NOGROUP")
}

impl<C: ConnectionLike + Clone + Send + Sync> Group<C> {
    /// Creates the group on `stream` (and the stream, if missing) unless it exists.
    pub(crate) async fn ensure(&self, stream: &str, start: &StartFrom) -> redis::RedisResult<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(&self.group)
            .arg(start.id())
            .arg("MKSTREAM")
            .query_async(&mut self.connection.clone())
            .await;
        match created {
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Creates the group on every one of `streams` that lacks it.
    pub(crate) async fn ensure_all(
        &self,
        streams: &[String],
        start: &StartFrom,
    ) -> crate::Result<()> {
        for stream in streams {
            self.ensure(stream, start)
                .await
                .map_err(|source| crate::Error::Read {
                    stream: stream.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// New entries for this consumer (`XREADGROUP .. >`), waiting up to `block` for some (not at
    /// all when `None`).
    pub(crate) async fn read(
        &self,
        streams: &[String],
        count: usize,
        block: Option<Duration>,
    ) -> redis::RedisResult<Vec<(String, Vec<StreamEntry>)>> {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            command
                .arg("BLOCK")
                .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1));
        }
        command.arg("STREAMS").arg(streams);
        for _ in streams {
            command.arg(">");
        }
        let reply: Value = command.query_async(&mut self.connection.clone()).await?;
        Ok(parse_read_reply(reply))
    }

    /// Claims entries of `stream` idle for at least `min_idle`, from any consumer (`XAUTOCLAIM`).
    /// Returns the cursor to continue from (`0-0` when the scan is complete), the claimed entries
    /// with their delivery counts, and how many pending ids pointed at deleted entries (Redis drops
    /// those from the pending list).
    pub(crate) async fn claim_idle(
        &self,
        stream: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> redis::RedisResult<(String, Vec<(StreamEntry, u32)>, usize)> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(millis(min_idle))
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.connection.clone())
            .await?;
        let mut parts = into_array(reply).into_iter();
        let next = parts
            .next()
            .and_then(into_string)
            .unwrap_or_else(|| "0-0".into());
        let entries = parts.next().map(parse_entries).unwrap_or_default();
        let deleted = parts.next().map(|ids| into_array(ids).len()).unwrap_or(0);
        let counts = self.delivery_counts(stream, &entries).await?;
        Ok((next, entries.into_iter().zip(counts).collect(), deleted))
    }

    /// How often each of `entries` has been delivered, from the group's pending list.
    async fn delivery_counts(
        &self,
        stream: &str,
        entries: &[StreamEntry],
    ) -> redis::RedisResult<Vec<u32>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipeline = redis::pipe();
        for entry in entries {
            pipeline
                .cmd("XPENDING")
                .arg(stream)
                .arg(&self.group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let replies: Vec<Vec<(String, String, u64, u32)>> =
            pipeline.query_async(&mut self.connection.clone()).await?;
        Ok(replies
            .into_iter()
            .map(|reply| reply.first().map_or(1, |(_, _, _, count)| *count))
            .collect())
    }

    /// Takes `id` back for another attempt if it has been idle at least `min_idle` (`XCLAIM`, which
    /// counts a delivery). `None` when it was deleted meanwhile (Redis then drops it from the pending
    /// list) or another consumer claimed it more recently.
    pub(crate) async fn reclaim(
        &self,
        stream: &str,
        id: &str,
        min_idle: Duration,
    ) -> redis::RedisResult<Option<StreamEntry>> {
        let reply: Value = redis::cmd("XCLAIM")
            .arg(stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(millis(min_idle))
            .arg(id)
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(parse_entries(reply).into_iter().next())
    }

    /// Keeps `id` pending on this consumer without counting a delivery, if it has been idle at
    /// least `min_idle` (`XCLAIM .. JUSTID`); false when it is gone or another consumer has it.
    pub(crate) async fn touch(
        &self,
        stream: &str,
        id: &str,
        min_idle: Duration,
    ) -> redis::RedisResult<bool> {
        let ids: Vec<String> = redis::cmd("XCLAIM")
            .arg(stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(millis(min_idle))
            .arg(id)
            .arg("JUSTID")
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(!ids.is_empty())
    }

    /// Acknowledges `ids` of `stream` and marks `done_keys` handled for `ttl`, atomically.
    pub(crate) async fn settle(
        &self,
        stream: &str,
        ids: &[String],
        done_keys: &[String],
        ttl: Duration,
    ) -> redis::RedisResult<()> {
        if done_keys.is_empty() {
            // Nothing to mark: a plain XACK costs Redis less than a script.
            let _: i64 = redis::cmd("XACK")
                .arg(stream)
                .arg(&self.group)
                .arg(ids)
                .query_async(&mut self.connection.clone())
                .await?;
            return Ok(());
        }
        let mut invocation = SETTLE.prepare_invoke();
        invocation
            .key(stream)
            .key(done_keys)
            .arg(&self.group)
            .arg(millis(ttl))
            .arg(ids);
        let _: i64 = invocation
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    /// Takes each idempotency key for its delivery's token, for at most `hold`; all keys in the
    /// slot of one stream.
    pub(crate) async fn begin(
        &self,
        holds: impl Iterator<Item = (&str, &str)>,
        hold: Duration,
    ) -> redis::RedisResult<Vec<Hold>> {
        let mut invocation = BEGIN.prepare_invoke();
        invocation.arg(millis(hold));
        for (key, token) in holds {
            invocation.key(key).arg(token);
        }
        let statuses: Vec<i64> = invocation
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(statuses
            .into_iter()
            .map(|status| match status {
                0 => Hold::Taken,
                1 => Hold::Done,
                _ => Hold::Busy,
            })
            .collect())
    }

    /// Lets go of idempotency key `key` if the delivery `token` holds it.
    pub(crate) async fn release(&self, key: &str, token: &str) -> redis::RedisResult<()> {
        let _: i64 = RELEASE
            .key(key)
            .arg(token)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    /// Adds `fields` to `dead_letter_stream`, acknowledges `id` and lets go of `hold` (an
    /// idempotency key and token), atomically. Returns the dead-letter entry's id.
    pub(crate) async fn dead_letter(
        &self,
        stream: &str,
        dead_letter_stream: &str,
        id: &str,
        hold: Option<(&str, &str)>,
        max_len: u64,
        fields: &[(Vec<u8>, Vec<u8>)],
    ) -> redis::RedisResult<String> {
        let mut invocation = DEAD_LETTER.prepare_invoke();
        invocation.key(stream).key(dead_letter_stream);
        if let Some((key, _)) = hold {
            invocation.key(key);
        }
        invocation
            .arg(&self.group)
            .arg(id)
            .arg(hold.map_or("", |(_, token)| token))
            .arg(max_len)
            .arg(fields);
        invocation.invoke_async(&mut self.connection.clone()).await
    }

    /// Removes `consumer` from the group if it has no pending entries; returns whether it did.
    pub(crate) async fn remove_consumer(
        &self,
        stream: &str,
        consumer: &str,
    ) -> redis::RedisResult<bool> {
        let removed: i64 = REMOVE_CONSUMER
            .key(stream)
            .arg(&self.group)
            .arg(consumer)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(removed == 1)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn into_array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs
            .into_iter()
            .flat_map(|(key, value)| [key, value])
            .collect(),
        _ => Vec::new(),
    }
}

fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(number) => Some(number.to_string().into_bytes()),
        _ => None,
    }
}

fn into_string(value: Value) -> Option<String> {
    into_bytes(value).and_then(|bytes| String::from_utf8(bytes).ok())
}

/// `XREADGROUP`'s reply: per stream, its entries; RESP2 arrays and RESP3 maps alike.
pub(crate) fn parse_read_reply(reply: Value) -> Vec<(String, Vec<StreamEntry>)> {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Map(pairs) => pairs,
        other => into_array(other)
            .into_iter()
            .filter_map(|stream| {
                let mut parts = into_array(stream).into_iter();
                Some((parts.next()?, parts.next()?))
            })
            .collect(),
    };
    streams
        .into_iter()
        .filter_map(|(name, entries)| Some((into_string(name)?, parse_entries(entries))))
        .collect()
}

/// A list of `[id, [field, value, ..]]` entries. Entries whose fields are nil (deleted while
/// pending) come back with no fields.
fn parse_entries(value: Value) -> Vec<StreamEntry> {
    into_array(value)
        .into_iter()
        .filter_map(|entry| {
            let mut parts = into_array(entry).into_iter();
            let id = into_string(parts.next()?)?;
            let mut flat = parts.next().map(into_array).unwrap_or_default().into_iter();
            let mut fields = Vec::with_capacity(flat.len() / 2);
            while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                fields.push((
                    into_bytes(name).unwrap_or_default(),
                    into_bytes(value).unwrap_or_default(),
                ));
            }
            Some(StreamEntry { id, fields })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn parses_resp2_read_replies() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("type"), bulk("a.b")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let parsed = parse_read_reply(reply);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, "s");
        assert_eq!(
            parsed[0].1[0].fields,
            vec![(b"type".to_vec(), b"a.b".to_vec())]
        );
        assert_eq!(
            parsed[0].1[1],
            StreamEntry {
                id: "2-0".into(),
                fields: Vec::new()
            }
        );
    }

    #[test]
    fn parses_resp3_read_replies_and_timeouts() {
        let reply = Value::Map(vec![(
            bulk("s"),
            Value::Array(vec![Value::Array(vec![bulk("1-0"), Value::Array(vec![])])]),
        )]);
        assert_eq!(parse_read_reply(reply)[0].1[0].id, "1-0");
        assert!(parse_read_reply(Value::Nil).is_empty());
    }

    #[test]
    fn start_positions() {
        assert_eq!(StartFrom::New.id(), "$");
        assert_eq!(StartFrom::Beginning.id(), "0");
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1000);
        assert_eq!(StartFrom::Time(time).id(), "999-18446744073709551615");
    }
}
