//! The read loop of a running consumer: reads batches, takes over entries other consumers left,
//! starts deliveries.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::delivery::Delivery;
use super::group::is_no_group;
use super::partitions::Leases;
use super::reclaim::Reclaimer;
use super::settle::Unsettled;
use super::status::{Counters, Operation};
use super::turns::KeyTurns;
use super::{Backoff, Session};
use crate::StreamEntry;

/// What one read of the streams gives: per stream, its entries.
type ReadResult = redis::RedisResult<Vec<(String, Vec<StreamEntry>)>>;

/// A read sent on a reader connection and not yet delivered.
#[derive(Debug)]
struct Read {
    /// How many entries it asked for.
    count: usize,
    /// The streams it named.
    streams: Vec<String>,
    /// When it was sent.
    sent: Instant,
}

/// The read loop's state while a consumer runs.
pub(crate) struct Reading {
    session: Arc<Session>,
    /// One permit per entry read and not yet settled: the backpressure bound.
    unacked: Arc<Semaphore>,
    pub(crate) deliveries: JoinSet<()>,
    /// The last entry id read per stream (at first, the group's position), to create a vanished
    /// group again without skipping anything written since.
    last_seen: HashMap<Arc<str>, String>,
    /// Each stream's position among the consumer's streams.
    positions: HashMap<Arc<str>, usize>,
    key_turns: KeyTurns,
    /// Which stream the next read asks for, on a cluster where one read names one stream.
    next_stream: usize,
    /// Reads in a row that found nothing.
    empty_reads: usize,
    /// The partitions this consumer holds the leases of.
    leases: Leases,
    /// The names of all partition streams this consumer reads.
    partitions: HashSet<String>,
    reclaimer: Reclaimer,
    /// Whether the next reclaim first takes back what an earlier run of this consumer left
    /// pending on its name.
    take_back: bool,
}

impl Reading {
    /// The read loop of `session`, reading partitions as `leases` allow; `positions` are the
    /// group's positions in the streams when the consumer started; `take_back` when entries
    /// pending on the consumer's name are an earlier run's, to be taken back at once.
    pub(crate) fn new(
        session: Arc<Session>,
        leases: Leases,
        positions: HashMap<Arc<str>, String>,
        take_back: bool,
    ) -> Self {
        let settings = &session.inner.settings;
        Self {
            unacked: Arc::new(Semaphore::new(settings.max_unacked)),
            deliveries: JoinSet::new(),
            last_seen: positions,
            positions: session
                .streams
                .iter()
                .enumerate()
                .map(|(index, stream)| (Arc::clone(stream), index))
                .collect(),
            key_turns: KeyTurns::new(settings.max_unacked),
            next_stream: 0,
            empty_reads: 0,
            leases,
            partitions: settings
                .partitioned
                .iter()
                .flat_map(|logical| crate::partition_streams(&logical.stream, logical.partitions))
                .collect(),
            reclaimer: Reclaimer::default(),
            take_back,
            session,
        }
    }

    /// Reads and delivers until shutdown; returns when the shutdown timeout, counted from the
    /// shutdown, ends. Reads under way at shutdown are ended early, and given up once the
    /// shutdown timeout passes (entries Redis delivers to them then stay pending for others).
    pub(crate) async fn read_until_shutdown(&mut self) -> Instant {
        let session = Arc::clone(&self.session);
        let settings = &session.inner.settings;
        let shutdown = &session.shutdown;
        let readers = &session.inner.readers;
        let mut last_claim: Option<Instant> = None;
        let mut failures = 0u32;
        // Reads already sent, at most one per reader connection, so that Redis prepares the next
        // batches and their replies are parsed while earlier ones are delivered. Only while
        // entries keep coming: an idle consumer has one blocking read out. Replies are taken in
        // the order they come, whatever order the reads were sent in: Redis may serve a later
        // read first, and the earlier one then waits out its block.
        let mut out: Vec<Option<Read>> = (0..readers.len()).map(|_| None).collect();
        // While every handler is busy, a read waits until it can fetch this many: reading the
        // few entries each settled delivery makes room for would cost Redis a read per handful
        // of entries, and no handler is left without work by the wait.
        let fair_read = settings.batch_size.min(settings.max_unacked / 2).max(1);
        let mut replies: JoinSet<(usize, ReadResult)> = JoinSet::new();
        let mut busy = false;
        // Whether the reads under way were ended early, at shutdown.
        let mut unblocked = false;
        // When stopping must be over: the shutdown timeout from the shutdown on.
        let mut deadline: Option<Instant> = None;
        let from_now = || Instant::now() + settings.shutdown_timeout;
        loop {
            if deadline.is_none() && shutdown.is_cancelled() {
                deadline = Some(from_now());
            }
            while self.deliveries.try_join_next().is_some() {}
            let readable = self.readable();
            let claim_due = last_claim.is_none_or(|at| at.elapsed() >= settings.claim_interval);
            while !shutdown.is_cancelled() && !claim_due && !readable.is_empty() {
                let Some(free) = out.iter().position(Option::is_none) else {
                    break;
                };
                let requested: usize = out.iter().flatten().map(|read| read.count).sum();
                let room = self.unacked.available_permits().saturating_sub(requested);
                if room == 0
                    || (!busy && !replies.is_empty())
                    || (room < fair_read && self.handlers_busy())
                {
                    break;
                }
                let count = settings.batch_size.min(room);
                let Some(read) = self.start_read(&readable, &out, free, count, &mut replies) else {
                    break;
                };
                out[free] = Some(read);
            }
            if replies.is_empty() {
                if claim_due && !shutdown.is_cancelled() {
                    self.reclaim().await;
                    last_claim = Some(Instant::now());
                    continue;
                }
                if readable.is_empty() {
                    // Every partition is another consumer's, or not ready yet: look again soon.
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    continue;
                }
                // No room for a read, or, every handler busy, none for a fair one: wait until
                // there is, a handler has nothing to do, or shutdown.
                let handlers_busy = self.handlers_busy();
                let wanted = if handlers_busy { fair_read } else { 1 };
                let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    permits = Arc::clone(&self.unacked).acquire_many_owned(wanted) => drop(permits),
                    _idle = session.inner.concurrency.acquire(), if handlers_busy => {}
                }
                continue;
            }
            let joined = tokio::select! {
                joined = replies.join_next() => joined,
                () = shutdown.cancelled(), if !unblocked => {
                    unblocked = true;
                    let until = *deadline.get_or_insert_with(from_now);
                    let _ = tokio::time::timeout_at(until.into(), self.unblock_reads(&out)).await;
                    continue;
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()),
                    if deadline.is_some() =>
                {
                    // Redis has not answered them (stalled, or unreachable): whatever it delivers
                    // to them stays pending, handed over below or taken after `claim_idle`.
                    replies.abort_all();
                    break;
                }
            };
            let (read, sent) = match joined {
                Some(Ok((reader, read))) => {
                    let sent = out[reader]
                        .take()
                        .map_or_else(Instant::now, |read| read.sent);
                    (read, sent)
                }
                Some(Err(error)) => {
                    out.iter_mut().for_each(|read| *read = None);
                    replies.abort_all();
                    let error = redis::RedisError::from(std::io::Error::other(error));
                    (Err(error), Instant::now())
                }
                None => continue,
            };
            match read {
                Ok(streams) => {
                    failures = 0;
                    busy = streams.iter().any(|(_, entries)| !entries.is_empty());
                    self.empty_reads = if busy { 0 } else { self.empty_reads + 1 };
                    for (stream, entries) in streams {
                        session.inner.counters.recovered(Operation::Read, &stream);
                        let Some((stream, _)) = self.positions.get_key_value(stream.as_str())
                        else {
                            continue;
                        };
                        let stream = Arc::clone(stream);
                        if let Some(last) = entries.last() {
                            self.last_seen.insert(Arc::clone(&stream), last.id.clone());
                        }
                        self.deliver(&stream, entries.into_iter().map(|entry| (entry, 1)), sent)
                            .await;
                    }
                }
                Err(error) if is_no_group(&error) => {
                    tracing::warn!(%error, "the consumer group or its stream vanished; creating it again");
                    self.recreate_groups().await;
                }
                Err(error) => {
                    failures += 1;
                    busy = false;
                    for stream in &readable {
                        session
                            .inner
                            .counters
                            .stalled(Operation::Read, stream, &error);
                    }
                    let delay =
                        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5))
                            .delay(failures);
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        deadline.unwrap_or_else(from_now)
    }

    /// Ends the blocking reads under way early, so that stopping does not wait out `block`: Redis
    /// answers each as if its block had timed out, unless it answered already (then its entries
    /// are delivered as usual). Reads whose connection's id is not known are waited for.
    async fn unblock_reads(&self, out: &[Option<Read>]) {
        let inner = &self.session.inner;
        let under_way = out.iter().enumerate().filter(|(_, read)| read.is_some());
        for (index, _) in under_way {
            let Some(id) = inner.readers[index].connection.reader_id() else {
                continue;
            };
            let unblocking: redis::RedisResult<i64> = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .query_async(&mut inner.commands.connection.clone())
                .await;
            if let Err(error) = unblocking {
                tracing::debug!(%error, "could not end a blocking read early; waiting for it");
            }
        }
    }

    /// The streams this consumer reads now: all but the partitions it does not hold (or not yet).
    fn readable(&self) -> Vec<String> {
        let settings = &self.session.inner.settings;
        settings
            .streams
            .iter()
            .filter(|stream| self.leases.may_read(stream, &settings.partitioned))
            .cloned()
            .collect()
    }

    /// Whether every handler is busy: no delivery could start now.
    fn handlers_busy(&self) -> bool {
        self.session.inner.concurrency.available_permits() == 0
    }

    /// Sends a read of up to `count` entries from the `readable` streams, on reader connection
    /// `index`, its reply to come through `replies`; none when every stream it could name is a
    /// partition already being read (two reads of one stream on two connections may be served in
    /// either order, which would put a key's events out of order).
    fn start_read(
        &mut self,
        readable: &[String],
        out: &[Option<Read>],
        index: usize,
        count: usize,
        replies: &mut JoinSet<(usize, ReadResult)>,
    ) -> Option<Read> {
        let inner = &self.session.inner;
        let busy = |stream: &String| {
            self.partitions.contains(stream)
                && out
                    .iter()
                    .flatten()
                    .any(|read| read.streams.contains(stream))
        };
        let candidates: Vec<String> = readable
            .iter()
            .filter(|stream| !busy(stream))
            .cloned()
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let reader = inner.readers[index].clone();
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
            readable
                .len()
                .div_ceil(inner.readers.len())
                .min(candidates.len())
        } else {
            candidates.len()
        };
        // A read naming only some of the streams does not wait on them while the others may have
        // entries: only once a whole round of reads found nothing.
        let reads_per_round = if rotating {
            candidates.len()
        } else {
            readable.len().div_ceil(share)
        };
        let partial = rotating || share < readable.len();
        let block =
            (!partial || self.empty_reads >= reads_per_round).then_some(inner.settings.block);
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
        let sent = Instant::now();
        replies.spawn(async move { (index, reader.read(&named, count, block).await) });
        Some(Read {
            count,
            streams,
            sent,
        })
    }

    /// Starts deliveries of `entries` of `stream` (each with its delivery count), each once it
    /// has a backpressure permit; each entry is kept from now until it is settled. They run
    /// concurrently in one task (cheaper than a task each), which takes their holds in one call
    /// first (see [`Delivery::run_batch`]).
    async fn deliver(
        &mut self,
        stream: &Arc<str>,
        entries: impl IntoIterator<Item = (StreamEntry, u32)>,
        sent: Instant,
    ) {
        let stream_index = self.positions.get(stream).copied().unwrap_or(0);
        let mut deliveries = Vec::new();
        for (entry, deliveries_so_far) in entries {
            let permit = Arc::clone(&self.unacked)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (after, turn) = match partition_key(&entry) {
                Some(key) => {
                    let (after, turn) = self.key_turns.queue(stream_index, key);
                    (after, Some(turn))
                }
                None => (None, None),
            };
            let kept = self
                .session
                .keeper
                .keep(stream, &entry.id, deliveries_so_far, sent.into());
            deliveries.push(Delivery {
                session: Arc::clone(&self.session),
                stream: Arc::clone(stream),
                stream_index,
                entry,
                unsettled: Unsettled::new(kept, Some(permit), turn),
                after,
            });
        }
        if !deliveries.is_empty() {
            self.deliveries.spawn(Delivery::run_batch(deliveries));
        }
    }

    /// Takes over entries idle past `claim_idle` on consumers that do not keep them (and, the
    /// first time when `take_back`, those left on this consumer's name by an earlier run), as far
    /// as backpressure allows, and delivers them again with their delivery counts.
    async fn reclaim(&mut self) {
        let session = Arc::clone(&self.session);
        let inner = &session.inner;
        let settings = &inner.settings;
        let take_back = std::mem::take(&mut self.take_back);
        for stream in &session.streams {
            if !self.leases.may_reclaim(stream, &settings.partitioned) {
                continue;
            }
            // As many as backpressure allows, so that a crashed consumer's backlog is taken
            // over in a few rounds; looked at in at least a batch's worth.
            let room = self.unacked.available_permits();
            let sent = Instant::now();
            let claimed = if take_back {
                inner.commands.take_back(stream, room).await
            } else {
                self.reclaimer
                    .round(
                        &inner.commands,
                        stream,
                        settings.claim_idle,
                        room.max(settings.batch_size),
                        room,
                        &session.keeper,
                    )
                    .await
            };
            match claimed {
                Ok(claimed) => {
                    inner.counters.recovered(Operation::Claim, stream);
                    Counters::add(&inner.counters.cleaned, claimed.cleaned as u64);
                    Counters::add(&inner.counters.reclaimed, claimed.entries.len() as u64);
                    self.deliver(stream, claimed.entries, sent).await;
                }
                Err(error) if is_no_group(&error) => self.recreate_groups().await,
                Err(error) => inner.counters.stalled(Operation::Claim, stream, &error),
            }
        }
    }

    /// Creates vanished groups again, so that nothing written since they vanished is skipped.
    async fn recreate_groups(&mut self) {
        let session = Arc::clone(&self.session);
        for stream in &session.streams {
            let last_seen = self.last_seen.get(stream).map(String::as_str);
            if let Err(error) = session.inner.commands.recreate(stream, last_seen).await {
                tracing::warn!(%stream, %error, "could not create the consumer group again");
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
