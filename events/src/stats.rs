//! Stream and server statistics for health checks and operators: backlog, lag, pending work,
//! consumers, dead letters, memory.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;
use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::{Connection, Error, Result};

/// An entry's id and the time in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryStamp {
    /// The entry id, such as `1700000000000-0`.
    pub id: String,
    /// When it was added, from the id's milliseconds.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
}

/// One consumer of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerStats {
    /// Its name.
    pub name: String,
    /// Entries delivered to it and not acknowledged.
    pub pending: u64,
    /// Since it last read or claimed (milliseconds in JSON).
    #[serde(serialize_with = "millis")]
    pub idle: Duration,
}

/// One consumer group of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupStats {
    /// Its name.
    pub name: String,
    /// Entries not yet delivered to the group (Redis 7's `lag`; `None` when Redis cannot tell).
    pub lag: Option<u64>,
    /// Entries delivered and not acknowledged.
    pub pending: u64,
    /// How long the oldest pending entry has been idle (milliseconds in JSON).
    #[serde(serialize_with = "optional_millis")]
    pub oldest_pending_idle: Option<Duration>,
    /// The last entry delivered to the group.
    pub last_delivered_id: String,
    /// Its consumers.
    pub consumers: Vec<ConsumerStats>,
}

/// The state of a stream, its groups and its dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamStats {
    /// The stream.
    pub stream: String,
    /// Entries in it.
    pub length: u64,
    /// Its first entry.
    pub first_entry: Option<EntryStamp>,
    /// Its last entry.
    pub last_entry: Option<EntryStamp>,
    /// Its consumer groups.
    pub groups: Vec<GroupStats>,
    /// The dead-letter stream.
    pub dead_letter_stream: String,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
    /// Bytes the stream takes in Redis (`MEMORY USAGE`).
    pub memory_bytes: Option<u64>,
}

/// Facts about the server a health check needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerStats {
    /// Bytes in use.
    pub used_memory: u64,
    /// The memory limit, 0 for none.
    pub max_memory: u64,
    /// What Redis does at the limit (`maxmemory-policy`).
    pub eviction_policy: String,
    /// Set when the policy may evict streams (losing events) or idempotency marks (running repeats
    /// again): every policy but `noeviction`.
    pub warning: Option<String>,
}

fn millis<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_u128(duration.as_millis())
}

fn optional_millis<S: serde::Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => millis(duration, serializer),
        None => serializer.serialize_none(),
    }
}

fn rfc3339<S: serde::Serializer>(
    time: &SystemTime,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*time))
}

/// Reads the stats of `stream`, its groups and its dead-letter stream `dead_letter_stream`.
pub async fn stream_stats<C: ConnectionLike>(
    connection: &mut C,
    stream: &str,
    dead_letter_stream: &str,
) -> Result<StreamStats> {
    let info: HashMap<String, Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(connection)
        .await
        .map_err(Error::reading(stream))?;
    let groups_info: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(connection)
        .await
        .map_err(Error::reading(stream))?;
    let mut groups = Vec::with_capacity(groups_info.len());
    for group in groups_info {
        let name = text(&group, "name");
        let pending = number(&group, "pending").unwrap_or(0);
        let oldest: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(&name)
            .arg("-")
            .arg("+")
            .arg(1)
            .query_async(connection)
            .await
            .map_err(Error::reading(stream))?;
        let consumers = consumer_stats(connection, stream, &name).await?;
        groups.push(GroupStats {
            lag: number(&group, "lag"),
            pending,
            oldest_pending_idle: oldest
                .first()
                .map(|(_, _, idle, _)| Duration::from_millis(*idle)),
            last_delivered_id: text(&group, "last-delivered-id"),
            consumers,
            name,
        });
    }
    let dead_letters: u64 = redis::cmd("XLEN")
        .arg(dead_letter_stream)
        .query_async(connection)
        .await
        .map_err(Error::reading(stream))?;
    let memory_bytes: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(stream)
        .query_async(connection)
        .await
        .map_err(Error::reading(stream))?;
    Ok(StreamStats {
        stream: stream.to_owned(),
        length: number(&info, "length").unwrap_or(0),
        first_entry: info.get("first-entry").and_then(stamp),
        last_entry: info.get("last-entry").and_then(stamp),
        groups,
        dead_letter_stream: dead_letter_stream.to_owned(),
        dead_letters,
        memory_bytes,
    })
}

/// The names of the streams matching `pattern` (Redis's glob: `*`, `?`, `[..]`; `*` for all),
/// on every master of a cluster, sorted.
pub async fn stream_names(connection: &Connection, pattern: &str) -> Result<Vec<String>> {
    let scan = |cursor: u64| {
        let mut command = redis::cmd("SCAN");
        command
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000)
            .arg("TYPE")
            .arg("stream");
        command
    };
    let replies = connection
        .scan_each_master(scan)
        .await
        .map_err(Error::reading("(streams)"))?;
    let mut names = Vec::new();
    for reply in replies {
        let (_, page): (u64, Vec<String>) = redis::from_redis_value(reply)
            .map_err(|error| Error::reading("(streams)")(error.into()))?;
        names.extend(page);
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Reads the consumers of `group` on `stream`.
pub(crate) async fn consumer_stats<C: ConnectionLike>(
    connection: &mut C,
    stream: &str,
    group: &str,
) -> Result<Vec<ConsumerStats>> {
    let consumers: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(connection)
        .await
        .map_err(Error::reading(stream))?;
    Ok(consumers
        .iter()
        .map(|consumer| ConsumerStats {
            name: text(consumer, "name"),
            pending: number(consumer, "pending").unwrap_or(0),
            idle: Duration::from_millis(number(consumer, "idle").unwrap_or(0)),
        })
        .collect())
}

/// Reads the server's memory use, limit and eviction policy.
pub async fn server_stats<C: ConnectionLike>(connection: &mut C) -> Result<ServerStats> {
    let reply: Value = redis::cmd("INFO")
        .arg("memory")
        .query_async(connection)
        .await
        .map_err(Error::reading("(server)"))?;
    // One server answers with its text; a cluster with a map of node to text: memory adds up
    // over the nodes, and one node that may evict streams is enough for the warning.
    let infos: Vec<String> = match reply {
        Value::Map(nodes) => nodes
            .into_iter()
            .filter_map(|(_, info)| redis::from_redis_value::<String>(info).ok())
            .collect(),
        reply => vec![
            redis::from_redis_value::<String>(reply)
                .map_err(|error| Error::reading("(server)")(redis::RedisError::from(error)))?,
        ],
    };
    let field = |info: &'_ str, name: &str| -> Option<String> {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(|value| value.trim().to_owned())
    };
    let sum = |name: &str| -> u64 {
        infos
            .iter()
            .filter_map(|info| field(info, name)?.parse::<u64>().ok())
            .sum()
    };
    let policies: Vec<String> = infos
        .iter()
        .filter_map(|info| field(info, "maxmemory_policy"))
        .collect();
    let warned = policies
        .iter()
        .find_map(|policy| Some((policy, eviction_warning(policy)?)));
    Ok(ServerStats {
        used_memory: sum("used_memory"),
        max_memory: sum("maxmemory"),
        eviction_policy: warned
            .as_ref()
            .map(|(policy, _)| *policy)
            .or(policies.first())
            .cloned()
            .unwrap_or_else(|| "unknown".into()),
        warning: warned.map(|(_, warning)| warning),
    })
}

/// What `policy` may evict, when it may evict anything: streams (events lost) or idempotency
/// marks (handled events run again). Only `noeviction` keeps both.
fn eviction_warning(policy: &str) -> Option<String> {
    match policy {
        "noeviction" => None,
        volatile if volatile.starts_with("volatile-") => Some(format!(
            "maxmemory-policy {volatile} may evict idempotency marks under memory pressure (they \
             expire), and repeats of events they marked then run again; use noeviction"
        )),
        other => Some(format!(
            "maxmemory-policy {other} may evict streams under memory pressure, losing events, and \
             idempotency marks, running repeats again; use noeviction"
        )),
    }
}

fn text(map: &HashMap<String, Value>, field: &str) -> String {
    map.get(field)
        .and_then(|value| redis::from_redis_value_ref::<String>(value).ok())
        .unwrap_or_default()
}

fn number(map: &HashMap<String, Value>, field: &str) -> Option<u64> {
    map.get(field)
        .and_then(|value| redis::from_redis_value_ref::<u64>(value).ok())
}

/// An `XINFO STREAM` entry (`[id, [fields..]]`) as its id and time.
fn stamp(entry: &Value) -> Option<EntryStamp> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let id: String = redis::from_redis_value_ref(parts.first()?).ok()?;
    let millis: u64 = id.split('-').next()?.parse().ok()?;
    Some(EntryStamp {
        time: UNIX_EPOCH + Duration::from_millis(millis),
        id,
    })
}
