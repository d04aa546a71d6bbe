//! Removing consumers that stopped: only those with nothing pending, since `XGROUP DELCONSUMER`
//! would drop their pending entries from the group.

use std::time::Duration;

use redis::aio::ConnectionLike;

use super::group::Group;
use crate::stats::consumer_stats;
use crate::{Error, Result};

/// Removes the consumers of `group`'s group on `stream` idle for at least `idle` with nothing
/// pending, except `group`'s own consumer; returns their names.
pub(crate) async fn remove_stale_consumers<C: ConnectionLike + Clone + Send + Sync>(
    group: &Group<C>,
    stream: &str,
    idle: Duration,
) -> Result<Vec<String>> {
    let consumers = consumer_stats(&mut group.connection.clone(), stream, &group.group).await?;
    let mut removed = Vec::new();
    for consumer in consumers {
        if consumer.name == group.consumer || consumer.pending > 0 || consumer.idle < idle {
            continue;
        }
        // The script checks again that nothing is pending, in case it read meanwhile.
        let gone = group
            .remove_consumer(stream, &consumer.name)
            .await
            .map_err(|source| Error::Read {
                stream: stream.to_owned(),
                source,
            })?;
        if gone {
            removed.push(consumer.name);
        }
    }
    Ok(removed)
}

/// Removes the consumers of `group` on `stream` idle for at least `idle` with nothing pending;
/// returns their names. A consumer with pending entries is never removed.
pub async fn remove_stale_consumers_of<C: ConnectionLike + Clone + Send + Sync>(
    connection: C,
    stream: &str,
    group: &str,
    idle: Duration,
) -> Result<Vec<String>> {
    let group = Group {
        connection,
        group: group.to_owned(),
        consumer: String::new(),
    };
    remove_stale_consumers(&group, stream, idle).await
}
