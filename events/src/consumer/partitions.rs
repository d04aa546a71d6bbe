//! Partition leases: each partition of a logical stream is read by one consumer of the group at a
//! time, under a lease renewed by a task of its own, so that one key's events are never handled by
//! two consumers at once. Consumers balance the partitions between them (each holds about its
//! share of the live members). A consumer over its share stops reading a partition, finishes what
//! it has of it, then gives the lease up; a consumer that stopped loses its leases when they lapse.
//! A consumer starts reading a partition it took only once no other consumer has entries of it
//! pending (it takes over a stopped consumer's entries through reclaim), so a key's next event
//! never starts while the previous owner still works on an earlier one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Script, Value};

use super::group::{Group, again_if_dropped};
use super::keeper::Keeper;
use crate::connection::Connection;
use crate::keys::{lease_members, lease_owner, lease_reader};
use crate::partition_streams;
use crate::resp::millis;

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
struct Leased {
    since: Instant,
    /// When the lease was last renewed: reading stops once half the lease has passed without a
    /// renewal, well before another consumer could take it.
    renewed: Instant,
    /// How long the lease lasts.
    lease: Duration,
    /// Whether the consumer that had it is done with it, so reading may start.
    ready: bool,
    /// Whether this consumer is over its share and gives the partition up once it has finished
    /// what it read of it.
    draining: bool,
}

/// The partitions this consumer holds; shared by the lease task and the read loop.
#[derive(Debug, Clone, Default)]
pub(crate) struct Leases {
    leased: Arc<Mutex<BTreeMap<String, Leased>>>,
}

impl Leases {
    /// Whether this consumer may read new entries of `stream`: a partition only while it holds it
    /// and neither the consumer before is still at work on it nor this one is giving it up.
    pub(crate) fn may_read(&self, stream: &str, partitioned: &[Partitioned]) -> bool {
        !is_partition(stream, partitioned)
            || self.lock().get(stream).is_some_and(|leased| {
                leased.ready && !leased.draining && leased.renewed.elapsed() < leased.lease / 2
            })
    }

    /// Whether this consumer may take over idle entries of `stream`: a partition only while it
    /// holds it, ready or not (so it takes over what a stopped consumer left of it).
    pub(crate) fn may_reclaim(&self, stream: &str, partitioned: &[Partitioned]) -> bool {
        !is_partition(stream, partitioned)
            || self.lock().get(stream).is_some_and(|leased| {
                !leased.draining && leased.renewed.elapsed() < leased.lease / 2
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Leased>> {
        self.leased
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Renews and balances the leases every third of their length until `stop` (when reading has
    /// ended), then gives them up and leaves the members, so that other consumers take over at
    /// once.
    pub(crate) async fn keep(
        self,
        group: Group<Connection>,
        partitioned: Vec<Partitioned>,
        lease: Duration,
        drain: Duration,
        keeper: Keeper,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            for logical in &partitioned {
                if let Err(error) = self.balance(&group, logical, lease, drain, &keeper).await {
                    tracing::warn!(stream = %logical.stream, %error, "could not balance partition leases");
                }
            }
            // A partition taken and not ready yet is looked at again soon: reading it starts as
            // soon as its previous reader is done, not a third of the lease later.
            let waiting = self.lock().values().any(|leased| !leased.ready);
            let next = if waiting {
                (drain / 2).min(lease / 3)
            } else {
                lease / 3
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(next) => {}
            }
        }
        let leased: Vec<String> = self.lock().keys().cloned().collect();
        for partition in leased {
            let _ = lease_call(&group, &partition, lease, drain, "stop").await;
        }
        // No longer a member: the others take its share at once, not once it seems dead.
        for logical in &partitioned {
            let _: redis::RedisResult<i64> = redis::cmd("ZREM")
                .arg(lease_members(&logical.stream, &group.group))
                .arg(&group.consumer)
                .query_async(&mut group.connection.clone())
                .await;
        }
        self.lock().clear();
    }

    /// Takes partitions of `logical` until this consumer holds its share, renewing those it keeps;
    /// drains and then gives up those over its share; marks taken ones ready once their previous
    /// reader is done (`drain` after taking them, at the earliest).
    async fn balance(
        &self,
        group: &Group<Connection>,
        logical: &Partitioned,
        lease: Duration,
        drain: Duration,
        keeper: &Keeper,
    ) -> redis::RedisResult<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        // The first command of a round: asked again at once when its connection dropped since the
        // last round (connections dropped as often as rounds come would keep every round from
        // happening, and every lease would lapse). Counting the consumer in twice does no harm.
        let members: u32 = again_if_dropped(|| async {
            MEMBERS
                .key(lease_members(&logical.stream, &group.group))
                .arg(&group.consumer)
                .arg(u64::try_from(now).unwrap_or(u64::MAX))
                .arg(millis(lease * 3))
                .invoke_async(&mut group.connection.clone())
                .await
        })
        .await?;
        let share = logical.partitions.div_ceil(members.max(1)) as usize;
        let partitions = partition_streams(&logical.stream, logical.partitions);
        // Start from a place of this consumer's own, so that consumers try different partitions.
        let start = group.consumer.bytes().map(usize::from).sum::<usize>() % partitions.len();
        let mut kept = 0;
        for offset in 0..partitions.len() {
            let partition = &partitions[(start + offset) % partitions.len()];
            let mine = self.lock().get(partition).copied();
            match mine {
                None if kept >= share => continue,
                Some(leased) if kept >= share || leased.draining => {
                    // Over its share: read no more of it, and give it up once nothing read of
                    // it is left unsettled.
                    if keeper.keeps_any_of(partition) {
                        if lease_call(group, partition, lease, drain, "take").await?
                            != Lease::Elsewhere
                        {
                            self.renewed(partition, Instant::now(), lease, true);
                        } else {
                            self.lock().remove(partition);
                        }
                    } else {
                        lease_call(group, partition, lease, drain, "give up").await?;
                        self.lock().remove(partition);
                    }
                    continue;
                }
                _ => {}
            }
            let asked = Instant::now();
            let taken = lease_call(group, partition, lease, drain, "take").await?;
            if taken == Lease::Elsewhere {
                self.lock().remove(partition);
                continue;
            }
            kept += 1;
            let leased = self.renewed(partition, asked, lease, false);
            // Nobody may still be reading it: no read of another consumer is to be waited out.
            let wait = if taken == Lease::Unread {
                Duration::ZERO
            } else {
                drain
            };
            if !leased.ready
                && previous_reader_done(group, partition, leased.since, wait).await?
                && let Some(leased) = self.lock().get_mut(partition)
            {
                leased.ready = true;
            }
        }
        Ok(())
    }

    /// Records a renewal of `partition`'s lease asked for at `asked`, taking it if new.
    fn renewed(&self, partition: &str, asked: Instant, lease: Duration, draining: bool) -> Leased {
        let mut leased = self.lock();
        let entry = leased.entry(partition.to_owned()).or_insert(Leased {
            since: asked,
            renewed: asked,
            lease,
            ready: false,
            draining,
        });
        entry.renewed = asked;
        entry.draining = draining;
        *entry
    }
}

/// Whether `stream` is a partition of one of `partitioned`.
fn is_partition(stream: &str, partitioned: &[Partitioned]) -> bool {
    partitioned.iter().any(|logical| {
        partition_streams(&logical.stream, logical.partitions)
            .iter()
            .any(|partition| partition == stream)
    })
}

/// Who holds a partition's lease after a lease call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    /// Another consumer, or nobody (given up).
    Elsewhere,
    /// This consumer.
    Held,
    /// This consumer, which has just taken it, and no other consumer can still be reading the
    /// partition: its last holder stopped reading before it let go, or let go longer than a read
    /// lasts ago, or there was none.
    Unread,
}

/// Takes, renews or gives up (`mode`, see `lua/lease.lua`) the lease of `partition` for `lease`,
/// a read lasting at most `drain`; who holds it after.
async fn lease_call(
    group: &Group<Connection>,
    partition: &str,
    lease: Duration,
    drain: Duration,
    mode: &str,
) -> redis::RedisResult<Lease> {
    let holds: i64 = LEASE
        .key(lease_owner(partition, &group.group))
        .key(lease_reader(partition, &group.group))
        .arg(&group.consumer)
        .arg(millis(lease))
        .arg(mode)
        .arg(millis(drain))
        .invoke_async(&mut group.connection.clone())
        .await?;
    Ok(match holds {
        1 => Lease::Held,
        2 => Lease::Unread,
        _ => Lease::Elsewhere,
    })
}

/// Whether reading a partition taken at `since` may start: `drain` has passed (so a read the
/// previous holder had sent has returned and its entries show as pending) and no other consumer
/// of the group has entries of it pending.
async fn previous_reader_done(
    group: &Group<Connection>,
    partition: &str,
    since: Instant,
    drain: Duration,
) -> redis::RedisResult<bool> {
    if since.elapsed() < drain {
        return Ok(false);
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
