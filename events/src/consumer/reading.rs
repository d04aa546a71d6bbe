//! The read loop of a running consumer: reads batches, reclaims idle entries, starts deliveries.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::delivery::{Delivery, Settle};
use super::group::is_no_group;
use super::idempotency::Holds;
use super::partitions::Ownership;
use super::status::Counters;
use super::{Backoff, Inner, StartFrom};
use crate::StreamEntry;

/// What one read of the streams gives: per stream, its entries.
type ReadResult = redis::RedisResult<Vec<(String, Vec<StreamEntry>)>>;

/// A read sent and not yet delivered.
pub(crate) struct Read {
    reply: AbortOnDropHandle<ReadResult>,
    /// How many entries it asked for.
    count: usize,
    /// The streams it named.
    streams: Vec<String>,
}

/// The read loop's state while a consumer runs.
pub(crate) struct Reading {
    pub(crate) inner: Arc<Inner>,
    /// One permit per entry read and not yet acknowledged: the backpressure bound.
    pub(crate) unacked: Arc<Semaphore>,
    pub(crate) deliveries: JoinSet<()>,
    pub(crate) settle: mpsc::UnboundedSender<Settle>,
    pub(crate) holds: Holds,
    pub(crate) shutdown: CancellationToken,
    /// The last entry id read per stream, to recreate a vanished group where it was.
    pub(crate) last_seen: HashMap<Arc<str>, String>,
    pub(crate) streams: Vec<Arc<str>>,
    /// Per stream and partition key, the end of the last delivery started for it: the next one
    /// of the key waits for it, so events of one key are handled one after another, in order.
    pub(crate) key_turns: HashMap<(usize, Vec<u8>), oneshot::Receiver<()>>,
    /// Which stream the next read asks for, on a cluster where one read names one stream.
    pub(crate) next_stream: usize,
    /// Reads in a row that found nothing.
    pub(crate) empty_reads: usize,
    /// The partitions this consumer holds the leases of.
    pub(crate) ownership: Ownership,
    /// The names of all partition streams this consumer reads.
    pub(crate) partitions: HashSet<String>,
}

impl Reading {
    pub(crate) async fn read_until_shutdown(&mut self) {
        let settings = self.inner.settings.clone();
        let mut last_claim: Option<Instant> = None;
        let mut failures = 0u32;
        // Reads already sent, each on a connection of its own, so that Redis prepares the next
        // batches and their replies are parsed while earlier ones are delivered. Only while
        // entries keep coming: an idle consumer has one blocking read out.
        let mut reads: VecDeque<Read> = VecDeque::new();
        let mut busy = false;
        let mut turn = 0;
        loop {
            while self.deliveries.try_join_next().is_some() {}
            let readable = self.readable();
            let claim_due = last_claim.is_none_or(|at| at.elapsed() >= settings.claim_interval);
            while !self.shutdown.is_cancelled()
                && !claim_due
                && !readable.is_empty()
                && reads.len() < self.inner.readers.len()
            {
                let requested: usize = reads.iter().map(|read| read.count).sum();
                let room = self.unacked.available_permits().saturating_sub(requested);
                if room == 0 || (!busy && !reads.is_empty()) {
                    break;
                }
                let count = settings.batch_size.min(room);
                turn = (turn + 1) % self.inner.readers.len();
                let Some(read) = self.start_read(&readable, &reads, turn, count) else {
                    break;
                };
                reads.push_back(read);
            }
            let Some(Read { reply: read, .. }) = reads.pop_front() else {
                if claim_due && !self.shutdown.is_cancelled() {
                    self.reclaim().await;
                    last_claim = Some(Instant::now());
                    continue;
                }
                if readable.is_empty() {
                    // Every partition is another consumer's, or not ready yet: look again soon.
                    tokio::select! {
                        () = self.shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    continue;
                }
                // No room for a read: wait until a delivery is acknowledged, or shutdown.
                tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    permit = Arc::clone(&self.unacked).acquire_owned() => drop(permit),
                }
                continue;
            };
            let read = match read.await {
                Ok(read) => read,
                Err(error) => Err(redis::RedisError::from(std::io::Error::other(error))),
            };
            match read {
                Ok(streams) => {
                    failures = 0;
                    busy = streams.iter().any(|(_, entries)| !entries.is_empty());
                    self.empty_reads = if busy { 0 } else { self.empty_reads + 1 };
                    for (stream, entries) in streams {
                        let Some(stream) =
                            self.streams.iter().find(|name| ***name == *stream).cloned()
                        else {
                            continue;
                        };
                        if let Some(last) = entries.last() {
                            self.last_seen.insert(Arc::clone(&stream), last.id.clone());
                        }
                        self.deliver(&stream, entries.into_iter().map(|entry| (entry, 1)))
                            .await;
                    }
                }
                Err(error) if is_no_group(&error) => {
                    tracing::warn!(%error, "the consumer group or its stream vanished; recreating it");
                    self.recreate_groups().await;
                }
                Err(error) => {
                    failures += 1;
                    busy = false;
                    let delay =
                        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5))
                            .delay(failures);
                    tracing::warn!(%error, retry_in = ?delay, "reading the streams failed");
                    tokio::select! {
                        () = self.shutdown.cancelled() => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// The streams this consumer reads now: all but the partitions other consumers hold.
    fn readable(&self) -> Vec<String> {
        let settings = &self.inner.settings;
        settings
            .streams
            .iter()
            .filter(|stream| self.ownership.may_read(stream, &settings.partitioned))
            .cloned()
            .collect()
    }

    /// Sends a read of up to `count` entries from the `readable` streams, on reader connection
    /// `index`; none when every stream it could name is a partition already being read (two
    /// reads of one stream on two connections may be served in either order, which would put
    /// a key's events out of order).
    fn start_read(
        &mut self,
        readable: &[String],
        reads: &VecDeque<Read>,
        index: usize,
        count: usize,
    ) -> Option<Read> {
        let busy = |stream: &String| {
            self.partitions.contains(stream)
                && reads.iter().any(|read| read.streams.contains(stream))
        };
        let candidates: Vec<String> = readable
            .iter()
            .filter(|stream| !busy(stream))
            .cloned()
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let reader = self.inner.readers[index].clone();
        // On a cluster, streams live in different slots: each read names one of them in turn,
        // without waiting on an empty one while others may have entries, until a whole round
        // found none.
        let rotating = reader.connection.is_cluster() && candidates.len() > 1;
        // Partitions may not be in two reads at once: a read names its share of them, so that
        // the other reader has some to read meanwhile.
        let share = if candidates
            .iter()
            .any(|stream| self.partitions.contains(stream))
        {
            candidates.len().div_ceil(self.inner.readers.len())
        } else {
            candidates.len()
        };
        // A read naming only some of the streams does not wait on them while the others may have
        // entries: only once a whole round of reads found nothing.
        let reads_per_round = if rotating {
            candidates.len()
        } else {
            candidates.len().div_ceil(share)
        };
        let partial = rotating || share < candidates.len();
        let block =
            (!partial || self.empty_reads >= reads_per_round).then_some(self.inner.settings.block);
        let streams = if rotating {
            self.next_stream = (self.next_stream + 1) % candidates.len();
            vec![candidates[self.next_stream].clone()]
        } else {
            self.next_stream = (self.next_stream + share) % candidates.len();
            candidates
                .iter()
                .cycle()
                .skip(self.next_stream)
                .take(share)
                .cloned()
                .collect()
        };
        let named = streams.clone();
        let reply = AbortOnDropHandle::new(tokio::spawn(async move {
            reader.read(&named, count, block).await
        }));
        Some(Read {
            reply,
            count,
            streams,
        })
    }

    /// Starts deliveries of `entries` of `stream` (each with its attempt number), each once it has
    /// a backpressure permit. They run concurrently in one task: cheaper than a task each.
    async fn deliver(
        &mut self,
        stream: &Arc<str>,
        entries: impl IntoIterator<Item = (StreamEntry, u32)>,
    ) {
        let stream_index = self
            .streams
            .iter()
            .position(|name| name == stream)
            .unwrap_or(0);
        let mut deliveries = Vec::new();
        for (entry, attempt) in entries {
            let permit = Arc::clone(&self.unacked)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (after, turn) = match partition_key(&entry) {
                Some(key) => {
                    let (turn, this_ends) = oneshot::channel();
                    (
                        self.key_turns.insert((stream_index, key), this_ends),
                        Some(turn),
                    )
                }
                None => (None, None),
            };
            deliveries.push(
                Delivery {
                    after,
                    _turn: turn,
                    inner: Arc::clone(&self.inner),
                    stream: Arc::clone(stream),
                    stream_index,
                    entry,
                    attempt,
                    permit: Some(permit),
                    settle: self.settle.clone(),
                    holds: self.holds.clone(),
                    shutdown: self.shutdown.clone(),
                }
                .run(),
            );
        }
        if !deliveries.is_empty() {
            self.deliveries.spawn(async move {
                futures::future::join_all(deliveries).await;
            });
        }
    }

    /// Claims entries idle past `claim_idle` on any consumer of the group, as far as backpressure
    /// allows, and delivers them again as their next attempt.
    async fn reclaim(&mut self) {
        let settings = self.inner.settings.clone();
        let readable = self.readable();
        for stream in self.streams.clone() {
            if !readable.iter().any(|name| **name == *stream) {
                continue;
            }
            let mut cursor = "0-0".to_owned();
            loop {
                let room = self.unacked.available_permits().min(settings.batch_size);
                if room == 0 {
                    return;
                }
                let claimed = self
                    .inner
                    .commands
                    .claim_idle(&stream, settings.claim_idle, &cursor, room)
                    .await;
                let (next, entries, deleted) = match claimed {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        if is_no_group(&error) {
                            self.recreate_groups().await;
                        } else {
                            tracing::warn!(%stream, %error, "reclaiming idle entries failed");
                        }
                        break;
                    }
                };
                Counters::add(&self.inner.counters.cleaned, deleted as u64);
                Counters::add(&self.inner.counters.reclaimed, entries.len() as u64);
                self.deliver(&stream, entries).await;
                if next == "0-0" {
                    break;
                }
                cursor = next;
            }
        }
    }

    /// Creates missing groups again, after the last entry read from each stream so nothing is
    /// skipped and nothing read is delivered twice.
    async fn recreate_groups(&mut self) {
        for stream in &self.streams {
            let start = match self.last_seen.get(stream) {
                Some(id) => StartFrom::Id(id.clone()),
                None => self.inner.settings.start_from.clone(),
            };
            if let Err(error) = self.inner.commands.ensure(stream, &start).await {
                tracing::warn!(%stream, %error, "could not recreate the consumer group");
            }
        }
    }
}

/// The entry's partition key (its `key` field), without decoding the rest.
fn partition_key(entry: &StreamEntry) -> Option<Vec<u8>> {
    entry
        .fields
        .iter()
        .find(|(name, _)| name == b"key")
        .map(|(_, value)| value.clone())
}
