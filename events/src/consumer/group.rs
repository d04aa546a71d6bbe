//! The Redis side of a consumer group: create it, read, reclaim, settle and dead-letter entries.
//! Push and pull consumers share it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionLike;
use redis::{Script, ScriptInvocation, Value};

use super::identity::{Digest, MarkSettings};
use super::part::{Holder, page_record};
use crate::connection::Connection;
use crate::resp::{into_array, into_string, into_u64, millis, parse_fields};
use crate::transfer::{Finish, add_and_finish};
use crate::{StreamEntry, keys};

/// The scripts that read or write idempotency marks: the marks' functions first. They run even
/// when Redis refuses writes for maxmemory: their writes are small bookkeeping.
macro_rules! with_marks {
    ($script:literal) => {
        concat!(
            "#!lua flags=allow-oom\n",
            include_str!("../lua/marks.lua"),
            include_str!("../lua/pages.lua"),
            include_str!($script)
        )
    };
}

static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(with_marks!("../lua/settle.lua")));
static BEGIN: LazyLock<Script> = LazyLock::new(|| Script::new(with_marks!("../lua/begin.lua")));
static KEEP: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/keep.lua")));
static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/claim.lua")));
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

/// What an idempotency hold says about an event before its handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// This entry holds the event from now: run the handler. No delivery of the entry ran it
    /// before (each takes the hold before it starts the handler).
    Taken,
    /// This entry held the event already (an earlier delivery or attempt of it): run the handler.
    Again,
    /// The event was handled already: acknowledge the entry without running the handler.
    Done,
    /// Another pending entry of the same event holds it: look again later.
    Busy,
    /// The event was dead-lettered: acknowledge this repeat of it without running the handler.
    Dead,
}

/// One entry of a group's pending list, as `XPENDING`'s extended form lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingEntry {
    pub(crate) id: String,
    /// The consumer it is pending on.
    pub(crate) consumer: String,
    /// How often it has been delivered.
    pub(crate) deliveries: u32,
}

/// What a claim took over.
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    /// The entries, each with its delivery count (this delivery included).
    pub(crate) entries: Vec<(StreamEntry, u32)>,
    /// Pending ids whose entries had been deleted; Redis dropped them from the pending list.
    pub(crate) cleaned: usize,
}

/// An idempotency hold asked for: the event's identity digest, the entry asking as its mark names
/// it (see [`holder`](super::part::holder)), and whether that entry replays a dead letter (which a
/// dead mark does not stop).
#[derive(Debug, Clone)]
pub(crate) struct HoldRequest {
    pub(crate) digest: Digest,
    pub(crate) holder: Holder,
    pub(crate) replay: bool,
}

/// The holds an entry took on its event, and how its move to the dead letters ends them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EventHolds {
    /// By its declared key (or the only one), and by its id when that was taken before the key
    /// was known.
    pub(crate) digests: [Option<Digest>; 2],
    /// Whether no handler saw the event (it could not be decoded for one): its holds are given
    /// up, so that a copy of it may still run, rather than marked dead.
    pub(crate) given_up: bool,
}

impl EventHolds {
    /// The holds `digests`, marked dead with the move.
    pub(crate) fn dead(digests: [Option<Digest>; 2]) -> Self {
        Self {
            digests,
            given_up: false,
        }
    }
}

/// An entry to move to a dead-letter stream.
#[derive(Debug)]
pub(crate) struct DeadLetterMove<'a> {
    pub(crate) stream: &'a str,
    pub(crate) dead_letter_stream: &'a str,
    pub(crate) entry_id: &'a str,
    /// Whether to acknowledge the entry too: false while other events of a packed entry are
    /// unsettled.
    pub(crate) acknowledge: bool,
    /// The holds the entry took on its event: marked dead with the move.
    pub(crate) holds: EventHolds,
    pub(crate) marks: MarkSettings,
    /// Trim the dead-letter stream to about this many entries; 0 for no trimming.
    pub(crate) max_len: u64,
    pub(crate) fields: &'a [(Vec<u8>, Vec<u8>)],
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
            // Redis refusing writes (maxmemory) refuses even a group that exists already: a
            // consumer can still start then.
            Err(error) if matches!(self.position(stream).await, Ok(Some(_))) => {
                tracing::debug!(%stream, %error, "the group exists; creating it was refused");
                Ok(())
            }
            other => other,
        }
    }

    /// Creates the group on every one of `streams` that lacks it; returns the streams, and where
    /// the group is in each (see [`position`](Self::position)), for a consumer to start from.
    pub(crate) async fn open(
        &self,
        streams: &[String],
        start: &StartFrom,
    ) -> crate::Result<(Vec<Arc<str>>, HashMap<Arc<str>, String>)> {
        let mut opened = Vec::with_capacity(streams.len());
        let mut positions = HashMap::new();
        for stream in streams {
            self.ensure(stream, start)
                .await
                .map_err(crate::Error::reading(stream))?;
            let stream: Arc<str> = Arc::from(stream.as_str());
            if let Ok(Some(position)) = self.position(&stream).await {
                positions.insert(Arc::clone(&stream), position);
            }
            opened.push(stream);
        }
        Ok((opened, positions))
    }

    /// The id of the last entry the group delivered from `stream`, if the group exists.
    pub(crate) async fn position(&self, stream: &str) -> redis::RedisResult<Option<String>> {
        let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(groups
            .into_iter()
            .find(|info| {
                info.get("name")
                    .cloned()
                    .and_then(into_string)
                    .is_some_and(|name| name == self.group)
            })
            .and_then(|mut info| into_string(info.remove("last-delivered-id")?)))
    }

    /// Creates the group on `stream` again after it vanished, so that no entry written since is
    /// skipped: after `last_seen` if the stream still holds that entry (the group alone was
    /// removed), else from the stream's start (the stream itself was deleted and created again).
    pub(crate) async fn recreate(
        &self,
        stream: &str,
        last_seen: Option<&str>,
    ) -> redis::RedisResult<()> {
        let start = match last_seen {
            Some(id) => {
                let same: Vec<Value> = redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(id)
                    .arg(id)
                    .query_async(&mut self.connection.clone())
                    .await?;
                if same.is_empty() {
                    StartFrom::Beginning
                } else {
                    StartFrom::Id(id.to_owned())
                }
            }
            None => StartFrom::Beginning,
        };
        self.ensure(stream, &start).await
    }

    /// Up to `count` entries of `stream` pending for at least `min_idle`, on any consumer, oldest
    /// first (`XPENDING .. IDLE`).
    pub(crate) async fn idle_entries(
        &self,
        stream: &str,
        min_idle: Duration,
        count: usize,
    ) -> redis::RedisResult<Vec<PendingEntry>> {
        let mut command = redis::cmd("XPENDING");
        command
            .arg(stream)
            .arg(&self.group)
            .arg("IDLE")
            .arg(millis(min_idle))
            .arg("-")
            .arg("+")
            .arg(count);
        // It only reads: asked again at once on a dropped connection, rather than a claim
        // interval later (connections dropped as often would keep every look from happening).
        let reply: Vec<(String, String, u64, u32)> =
            again_if_dropped(|| async { command.query_async(&mut self.connection.clone()).await })
                .await?;
        Ok(reply
            .into_iter()
            .map(|(id, consumer, _, deliveries)| PendingEntry {
                id,
                consumer,
                deliveries,
            })
            .collect())
    }

    /// Takes back up to `count` entries of `stream` pending on this consumer's name, whatever
    /// their idle time (`XPENDING .. <consumer>`, then `XCLAIM`, which counts a delivery): an
    /// earlier run of this consumer left them.
    pub(crate) async fn take_back(
        &self,
        stream: &str,
        count: usize,
    ) -> redis::RedisResult<Claimed> {
        let pending = self.own_pending(stream, count).await?;
        let ids: Vec<&str> = pending.iter().map(|(id, _)| id.as_str()).collect();
        self.claim(stream, &ids, Duration::ZERO).await
    }

    /// Takes `ids` of `stream` over from other consumers, each only if it is still idle for at
    /// least `min_idle` (`XCLAIM`, which counts a delivery).
    pub(crate) async fn claim(
        &self,
        stream: &str,
        ids: &[&str],
        min_idle: Duration,
    ) -> redis::RedisResult<Claimed> {
        if ids.is_empty() {
            return Ok(Claimed::default());
        }
        let reply: Value = CLAIM
            .key(stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(millis(min_idle))
            .arg(ids)
            .invoke_async(&mut self.connection.clone())
            .await?;
        let mut parts = into_array(reply).into_iter();
        let entries = parts
            .next()
            .map(into_array)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|claimed| {
                let mut parts = into_array(claimed).into_iter();
                let id = into_string(parts.next()?)?;
                let deliveries = into_u64(parts.next()?)?;
                let fields = parse_fields(parts.next()?);
                Some((
                    StreamEntry { id, fields },
                    u32::try_from(deliveries).unwrap_or(u32::MAX),
                ))
            })
            .collect();
        let cleaned = parts.next().and_then(into_u64).unwrap_or(0);
        Ok(Claimed {
            entries,
            cleaned: usize::try_from(cleaned).unwrap_or(usize::MAX),
        })
    }

    /// Keeps `entries` of `stream` (ids with their delivery counts) pending on this consumer:
    /// resets their idle time and records their counts. Returns the ids no longer pending on it.
    pub(crate) async fn keep(
        &self,
        stream: &str,
        entries: &[(String, u32)],
    ) -> redis::RedisResult<Vec<String>> {
        self.keep_idle(stream, entries, Duration::ZERO).await
    }

    /// Hands over what is still pending on this consumer's name in `stream` (up to `count`
    /// entries), as it stops: marks it idle for `claim_idle`, so that the group's other consumers
    /// take it at their next looks rather than `claim_idle` later.
    pub(crate) async fn hand_over(
        &self,
        stream: &str,
        count: usize,
        claim_idle: Duration,
    ) -> redis::RedisResult<()> {
        let entries = self.own_pending(stream, count).await?;
        self.keep_idle(stream, &entries, claim_idle).await?;
        Ok(())
    }

    /// Up to `count` entries of `stream` pending on this consumer's name, with their delivery
    /// counts (`XPENDING .. <consumer>`).
    async fn own_pending(
        &self,
        stream: &str,
        count: usize,
    ) -> redis::RedisResult<Vec<(String, u32)>> {
        let pending: Vec<(String, String, u64, u32)> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(&self.group)
            .arg("-")
            .arg("+")
            .arg(count)
            .arg(&self.consumer)
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(pending
            .into_iter()
            .map(|(id, _, _, deliveries)| (id, deliveries))
            .collect())
    }

    /// Keeps `entries` as [`keep`](Self::keep) does, with their idle time set to `idle`.
    async fn keep_idle(
        &self,
        stream: &str,
        entries: &[(String, u32)],
        idle: Duration,
    ) -> redis::RedisResult<Vec<String>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = KEEP.prepare_invoke();
        invocation
            .key(stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(millis(idle));
        for (id, deliveries) in entries {
            invocation.arg(id).arg(deliveries);
        }
        invocation.invoke_async(&mut self.connection.clone()).await
    }

    /// Acknowledges `ids` of `stream` and marks the events `done` handled, atomically (either may
    /// be empty: events of a packed entry are marked before the entry is acknowledged).
    pub(crate) async fn settle(
        &self,
        stream: &str,
        ids: &[String],
        done: &[Digest],
        marks: MarkSettings,
    ) -> redis::RedisResult<()> {
        if done.is_empty() {
            if ids.is_empty() {
                return Ok(());
            }
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
        invocation.key(stream);
        self.marks_args(&mut invocation, stream, marks);
        // The script takes the digests in their order (see `Digest`), those kept by time with
        // their mark.
        let mut done = done.to_vec();
        done.sort_unstable();
        let written = done.iter().take_while(|digest| !digest.is_timed()).count();
        invocation.arg(ids.len()).arg(ids).arg(written);
        for digest in &done[..written] {
            invocation.arg(digest.bytes());
        }
        for digest in &done[written..] {
            invocation.arg(digest.bytes()).arg("d");
        }
        let _: i64 = invocation
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    /// The arguments every marks script starts with: the group, where its marks are, the window
    /// and the shard load.
    fn marks_args(&self, invocation: &mut ScriptInvocation<'_>, stream: &str, marks: MarkSettings) {
        invocation
            .arg(&self.group)
            .arg(keys::marks_prefix(stream, &self.group))
            .arg(millis(marks.window))
            .arg(marks.load);
    }

    /// Takes each entry's idempotency hold, all in the slot of `stream`.
    pub(crate) async fn begin<R: Borrow<HoldRequest>>(
        &self,
        stream: &str,
        requests: &[R],
        marks: MarkSettings,
    ) -> redis::RedisResult<Vec<Hold>> {
        // The script takes the requests in the order of their digests (see `Digest`), and names
        // those that do not take their hold by their position in that order. Of two requests for
        // one event the first asked comes first, and holds it.
        let mut sorted: Vec<(Digest, usize)> = requests
            .iter()
            .enumerate()
            .map(|(at, request)| (request.borrow().digest, at))
            .collect();
        sorted.sort_unstable();
        // Then in three runs: those kept by when they were written; those kept by time as
        // arguments of their own (each digest with its holder); and, as one argument of page
        // records, those kept by time whose holders pack into a record and whose events are asked
        // for once here, most of them, which the script writes with no work per event.
        let (mut written, mut paired, mut recorded) = (Vec::new(), Vec::new(), Vec::new());
        let mut records = Vec::new();
        for (k, &(digest, at)) in sorted.iter().enumerate() {
            let once = (k == 0 || sorted[k - 1].0 != digest)
                && sorted.get(k + 1).is_none_or(|next| next.0 != digest);
            let record = once
                .then(|| page_record(&digest, &requests[at].borrow().holder))
                .flatten();
            if !digest.is_timed() {
                written.push((digest, at));
            } else if let Some(record) = record {
                records.extend_from_slice(&record);
                recorded.push(at);
            } else {
                paired.push((digest, at));
            }
        }
        let order: Vec<usize> = written
            .iter()
            .chain(&paired)
            .map(|&(_, at)| at)
            .chain(recorded)
            .collect();
        let replays: String = order
            .iter()
            .map(|&at| {
                if requests[at].borrow().replay {
                    '1'
                } else {
                    '0'
                }
            })
            .collect();
        let mut invocation = BEGIN.prepare_invoke();
        invocation.key(stream);
        self.marks_args(&mut invocation, stream, marks);
        invocation.arg(written.len()).arg(paired.len()).arg(replays);
        for &(digest, _) in &written {
            invocation.arg(digest.bytes());
        }
        for &(_, at) in &written {
            invocation.arg(requests[at].borrow().holder.to_string());
        }
        for &(digest, at) in &paired {
            invocation
                .arg(digest.bytes())
                .arg(requests[at].borrow().holder.to_string());
        }
        // The soonest and the latest of the records' id orders, which spare most look-ups.
        let orders = order[written.len() + paired.len()..]
            .iter()
            .filter_map(|&at| requests[at].borrow().digest.id_order());
        let range: Vec<u8> = orders
            .clone()
            .min()
            .zip(orders.max())
            .map(|(soonest, latest)| [soonest, latest].concat())
            .unwrap_or_default();
        invocation.arg(range).arg(records);
        // The script names the entries that do not take a new hold.
        let exceptions: Vec<(usize, i64)> = invocation
            .invoke_async(&mut self.connection.clone())
            .await?;
        let mut holds = vec![Hold::Taken; requests.len()];
        for (position, status) in exceptions {
            let Some(&at) = position.checked_sub(1).and_then(|index| order.get(index)) else {
                continue;
            };
            holds[at] = match status {
                1 => Hold::Done,
                3 => Hold::Dead,
                4 => Hold::Again,
                _ => Hold::Busy,
            };
        }
        Ok(holds)
    }

    /// Adds the dead-letter entry, acknowledges the entry (when asked to) and marks its event dead,
    /// in one transaction; returns the dead-letter entry's id, or `None` (and nothing written) when the
    /// entry is no longer pending on this consumer.
    pub(crate) async fn dead_letter(
        &self,
        moving: &DeadLetterMove<'_>,
    ) -> redis::RedisResult<Option<String>> {
        let keys = vec![moving.stream, moving.dead_letter_stream];
        let mut args = vec![
            self.group.clone().into_bytes(),
            self.consumer.clone().into_bytes(),
            moving.entry_id.as_bytes().to_vec(),
            keys::marks_prefix(moving.stream, &self.group).into_bytes(),
            millis(moving.marks.window).to_string().into_bytes(),
            moving.marks.load.to_string().into_bytes(),
            if moving.acknowledge { b"1" } else { b"0" }.to_vec(),
        ];
        if moving.holds.digests.iter().any(Option::is_some) {
            args.push(if moving.holds.given_up { b"f" } else { b"x" }.to_vec());
        }
        for digest in moving.holds.digests.iter().flatten() {
            args.push(digest.bytes().to_vec());
            args.push(if digest.is_timed() { b"1" } else { b"0" }.to_vec());
        }
        let finish = Finish {
            script: with_marks!("../lua/dead_letter.lua"),
            keys,
            args,
        };
        let (id, moved) = add_and_finish(
            &mut self.connection.clone(),
            moving.dead_letter_stream,
            moving.max_len,
            moving.fields,
            finish,
        )
        .await?;
        Ok((moved == 1).then_some(id))
    }

    /// How many fields a hash keeps in its compact encoding on this server
    /// (`hash-max-listpack-entries`); Redis's default when the server does not say.
    pub(crate) async fn listpack_entries(&self) -> u64 {
        let reply: redis::RedisResult<HashMap<String, u64>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("hash-max-listpack-entries")
            .query_async(&mut self.connection.clone())
            .await;
        reply
            .ok()
            .and_then(|config| config.into_values().next())
            .unwrap_or(128)
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

impl Group<Connection> {
    /// Up to `count` new entries for this consumer (`XREADGROUP .. >`) from the first `count` of
    /// `streams` at most, waiting up to `block` for some (not at all when `None`). Redis applies
    /// `COUNT` to each stream: the count is shared out.
    pub(crate) async fn read(
        &self,
        streams: &[String],
        count: usize,
        block: Option<Duration>,
    ) -> redis::RedisResult<Vec<(String, Vec<StreamEntry>)>> {
        let streams = &streams[..streams.len().min(count.max(1))];
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg((count / streams.len().max(1)).max(1));
        if let Some(block) = block {
            command.arg("BLOCK").arg(millis(block).max(1));
        }
        command.arg("STREAMS").arg(streams);
        for _ in streams {
            command.arg(">");
        }
        self.connection.read_streams(&command).await
    }
}

/// Runs `ask`, and once more when it failed for its connection having dropped since its last
/// use (the first command on a connection dropped while idle fails, and the connection is made
/// anew): for commands that may run twice, asked periodically, which connections dropped as
/// often would otherwise fail every time.
pub(crate) async fn again_if_dropped<T, F>(mut ask: impl FnMut() -> F) -> redis::RedisResult<T>
where
    F: std::future::Future<Output = redis::RedisResult<T>>,
{
    match ask().await {
        Err(error) if error.is_connection_dropped() => ask().await,
        reply => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions() {
        assert_eq!(StartFrom::New.id(), "$");
        assert_eq!(StartFrom::Beginning.id(), "0");
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1000);
        assert_eq!(StartFrom::Time(time).id(), "999-18446744073709551615");
    }
}
