//! Partition ownership: each partition of a logical stream is read by one consumer of the group
//! at a time, under a lease renewed by a task of its own, so that one key's events are never
//! handled by two consumers at once. Consumers balance the partitions between them (each holds
//! about its share of the live members), take over the partitions of consumers that stopped once
//! their leases lapse, and start reading a partition they took only when the consumer that had it
//! has nothing of it pending any more (or after `claim_idle`, when reclaim takes over).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Script, Value};

use super::group::Group;
use crate::connection::Connection;
use crate::keys::slot_prefix;
use crate::partition_streams;

static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/lease.lua")));
static MEMBERS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/members.lua")));

/// A logical stream read as partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Partitioned {
    pub(crate) stream: String,
    pub(crate) partitions: u32,
}

/// A partition this consumer holds the lease of.
#[derive(Debug, Clone, Copy)]
struct Held {
    since: Instant,
    /// When the lease was last renewed: reading stops once half the lease has passed without a
    /// renewal, well before another consumer could take it.
    renewed: Instant,
    /// How long the lease lasts.
    lease: Duration,
    /// Whether the consumer that had it is done with it, so reading may start.
    ready: bool,
}

/// The partitions this consumer holds; shared by the lease task and the read loop.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ownership {
    held: Arc<Mutex<BTreeMap<String, Held>>>,
}

impl Ownership {
    /// Whether this consumer may read `stream`: a partition only while it holds it and the
    /// consumer before has finished with it.
    pub(crate) fn may_read(&self, stream: &str, partitioned: &[Partitioned]) -> bool {
        let is_partition = partitioned.iter().any(|logical| {
            partition_streams(&logical.stream, logical.partitions)
                .iter()
                .any(|partition| partition == stream)
        });
        !is_partition
            || self
                .lock()
                .get(stream)
                .is_some_and(|held| held.ready && held.renewed.elapsed() < held.lease / 2)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Renews and balances the leases every third of their length until `stop`, then gives them
    /// up so that other consumers take over at once.
    pub(crate) async fn keep(
        self,
        group: Group<Connection>,
        partitioned: Vec<Partitioned>,
        lease: Duration,
        wait: Waits,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            for logical in &partitioned {
                if let Err(error) = self.balance(&group, logical, lease, wait).await {
                    tracing::warn!(stream = %logical.stream, %error, "could not balance partition leases");
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(lease / 3) => {}
            }
        }
        let held: Vec<String> = self.lock().keys().cloned().collect();
        for partition in held {
            let _ = lease_call(&group, &partition, lease, "release").await;
        }
        self.lock().clear();
    }

    /// Takes or gives up partitions of `logical` until this consumer holds its share, renewing
    /// those it keeps, and marks taken ones ready once their previous reader is done.
    async fn balance(
        &self,
        group: &Group<Connection>,
        logical: &Partitioned,
        lease: Duration,
        wait: Waits,
    ) -> redis::RedisResult<()> {
        let mut connection = group.connection.clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let members: u32 = MEMBERS
            .key(format!(
                "{}:members:{}",
                slot_prefix(&logical.stream),
                group.group
            ))
            .arg(&group.consumer)
            .arg(u64::try_from(now).unwrap_or(u64::MAX))
            .arg(millis(lease * 3))
            .invoke_async(&mut connection)
            .await?;
        let share = logical.partitions.div_ceil(members.max(1)) as usize;
        let partitions = partition_streams(&logical.stream, logical.partitions);
        // Start from a place of this consumer's own, so that consumers try different partitions.
        let start = group.consumer.bytes().map(usize::from).sum::<usize>() % partitions.len();
        let mut kept = 0;
        for offset in 0..partitions.len() {
            let partition = &partitions[(start + offset) % partitions.len()];
            let mine = self.lock().contains_key(partition);
            if !mine && kept >= share {
                continue;
            }
            let mode = if mine && kept >= share {
                "release"
            } else {
                "take"
            };
            let asked = Instant::now();
            if lease_call(group, partition, lease, mode).await? {
                kept += 1;
                let held = {
                    let mut held = self.lock();
                    let entry = held.entry(partition.clone()).or_insert(Held {
                        since: asked,
                        renewed: asked,
                        lease,
                        ready: false,
                    });
                    entry.renewed = asked;
                    *entry
                };
                if !held.ready && previous_reader_done(group, partition, held.since, wait).await? {
                    self.lock().insert(
                        partition.clone(),
                        Held {
                            ready: true,
                            ..held
                        },
                    );
                }
            } else {
                self.lock().remove(partition);
            }
        }
        Ok(())
    }
}

/// Takes, renews or releases the lease of `partition`; whether this consumer holds it after.
async fn lease_call(
    group: &Group<Connection>,
    partition: &str,
    lease: Duration,
    mode: &str,
) -> redis::RedisResult<bool> {
    let holds: i64 = LEASE
        .key(format!("{}:owner:{}", slot_prefix(partition), group.group))
        .arg(&group.consumer)
        .arg(millis(lease))
        .arg(mode)
        .invoke_async(&mut group.connection.clone())
        .await?;
    Ok(holds == 1)
}

/// How long a consumer waits before reading a partition it took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waits {
    /// At least this long, so a read the previous holder had sent has returned and its entries
    /// show as pending.
    pub(crate) drain: Duration,
    /// At most this long: then reclaim hands over what a stopped consumer left.
    pub(crate) settle: Duration,
}

/// Whether reading a partition taken at `since` may start: a read in flight elsewhere has had
/// time to return and no other consumer of the group has entries of it pending; or `settle` has
/// passed.
async fn previous_reader_done(
    group: &Group<Connection>,
    partition: &str,
    since: Instant,
    wait: Waits,
) -> redis::RedisResult<bool> {
    if since.elapsed() < wait.drain {
        return Ok(false);
    }
    if since.elapsed() >= wait.settle {
        return Ok(true);
    }
    let summary: Value = redis::cmd("XPENDING")
        .arg(partition)
        .arg(&group.group)
        .query_async(&mut group.connection.clone())
        .await?;
    let pending_by: HashMap<String, u64> = match summary {
        Value::Array(parts) => parts
            .into_iter()
            .nth(3)
            .and_then(|consumers| redis::from_redis_value::<Vec<(String, u64)>>(consumers).ok())
            .unwrap_or_default()
            .into_iter()
            .collect(),
        _ => HashMap::new(),
    };
    let others: u64 = pending_by
        .iter()
        .filter(|(consumer, _)| **consumer != group.consumer)
        .map(|(_, count)| count)
        .sum();
    Ok(others == 0)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
