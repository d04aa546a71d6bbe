//! Acknowledgements, batched per stream: whatever deliveries finish while one round trip is under
//! way goes in the next, one `XACK`. An entry's hold says its event was handled once the entry is
//! acknowledged, so nothing more is written; an entry holding a packed batch of events is
//! acknowledged once every one of them is settled, each marked done as it is (its entry may be
//! delivered again for the others). A failed call is tried again, with what came meanwhile, until
//! it works or the consumer stops, marking every handled event done first from then on: the
//! acknowledgement may never land, and a consumer taking the entry over must find the event
//! handled. Until then each entry stays kept, with its backpressure permit and its key's turn, so
//! no handler runs twice for a lost acknowledgement. One stream's trouble never holds up another's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use super::group::{Group, is_no_group};
use super::identity::{Digest, MarkSettings};
use super::keeper::Kept;
use super::status::{Counters, Operation};
use crate::Backoff;
use crate::connection::Connection;

/// Most entries settled in one round trip.
const MAX_BATCH: usize = 1_000;

/// What an entry holds on to until it is settled in Redis: its keeping, its backpressure permit
/// and its partition key's turn, shared by its events (one, or each event of a packed batch) until
/// the last lets go. Dropping it lets go of all three.
#[derive(Debug)]
pub(crate) struct Unsettled {
    pub(crate) kept: Kept,
    /// Its events not settled yet; the entry is acknowledged once none is left.
    events: AtomicUsize,
    /// Whether it holds a packed batch of events.
    packed: AtomicBool,
    _permit: Option<OwnedSemaphorePermit>,
    /// Dropped when the entry is settled, letting the next event of its key start.
    _turn: Option<oneshot::Sender<()>>,
}

impl Unsettled {
    /// What `kept`, an entry of one event, holds on to until it is settled.
    pub(crate) fn new(
        kept: Kept,
        permit: Option<OwnedSemaphorePermit>,
        turn: Option<oneshot::Sender<()>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            kept,
            events: AtomicUsize::new(1),
            packed: AtomicBool::new(false),
            _permit: permit,
            _turn: turn,
        })
    }

    /// Says the entry holds a packed batch of `events` events, before any of them is settled.
    pub(crate) fn holds_events(&self, events: usize) {
        self.events.store(events, Ordering::Relaxed);
        self.packed.store(true, Ordering::Relaxed);
    }

    /// Whether every other event of the entry is settled: settling this one settles the entry.
    pub(crate) fn is_last(&self) -> bool {
        self.events.load(Ordering::Acquire) == 1
    }

    /// Counts one event settled (not the last, see [`is_last`](Self::is_last)); true when that
    /// leaves none, so the entry is to be acknowledged.
    fn settled_one(&self) -> bool {
        self.events.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

/// A handled (or skipped) event to settle: its mark, and its entry's acknowledgement once every
/// event of the entry is settled.
#[derive(Debug)]
pub(crate) struct Ack {
    pub(crate) entry: Arc<Unsettled>,
    /// Whether to acknowledge the entry: false while other events of it are unsettled.
    acknowledge: bool,
    pub(crate) done: Option<Digest>,
    /// Dropped once the acknowledgement (or mark) has landed.
    _landed: Option<oneshot::Sender<()>>,
}

/// Tasks that settle events, each with the stream of its events.
pub(crate) type StreamTasks = Vec<(AbortOnDropHandle<()>, Arc<str>)>;

/// Waits, up to `deadline`, for `tasks`; the streams of those unfinished by then.
pub(crate) async fn unfinished(
    tasks: &mut StreamTasks,
    deadline: tokio::time::Instant,
) -> Vec<String> {
    let _ = tokio::time::timeout_at(deadline, async {
        for (task, _) in tasks.iter_mut() {
            let _ = task.await;
        }
    })
    .await;
    tasks
        .iter()
        .filter(|(task, _)| !task.is_finished())
        .map(|(_, stream)| stream.to_string())
        .collect()
}

/// When acknowledgements still failing at a stop are given up: at `deadline`, the end of the
/// shutdown timeout, and a second from now at the earliest.
pub(crate) fn ack_grace(deadline: tokio::time::Instant) -> tokio::time::Instant {
    deadline.max(tokio::time::Instant::now() + Duration::from_secs(1))
}

/// `Ok` when no stream's events were left `unfinished`, else
/// [`Error::Unsettled`](crate::Error::Unsettled) naming each of those streams once.
pub(crate) fn settled(mut unfinished: Vec<String>) -> crate::Result<()> {
    if unfinished.is_empty() {
        return Ok(());
    }
    unfinished.sort();
    unfinished.dedup();
    Err(crate::Error::Unsettled {
        streams: unfinished,
    })
}

/// Where deliveries hand their acknowledgements over: one queue per stream, by the stream's
/// position among the consumer's streams.
#[derive(Debug, Clone)]
pub(crate) struct Acks {
    queues: Vec<mpsc::UnboundedSender<Ack>>,
}

impl Acks {
    /// Starts one acknowledging task per stream of `streams`, marking events as `marks` says.
    pub(crate) fn serve(
        group: &Group<Connection>,
        streams: &[Arc<str>],
        marks: MarkSettings,
        counters: &Arc<Counters>,
    ) -> (Self, StreamTasks) {
        let (queues, tasks) = streams
            .iter()
            .map(|stream| {
                let (queue, receiver) = mpsc::unbounded_channel();
                let task = acknowledge(
                    group.clone(),
                    Arc::clone(stream),
                    receiver,
                    marks,
                    Arc::clone(counters),
                );
                let task = AbortOnDropHandle::new(tokio::spawn(task));
                (queue, (task, Arc::clone(stream)))
            })
            .unzip();
        (Self { queues }, tasks)
    }

    /// Waits, up to `deadline`, until the acknowledging tasks `acknowledging` (see
    /// [`serve`](Self::serve)) have drained their queues, which they do once every `Acks` is
    /// dropped; [`Error::Unsettled`](crate::Error::Unsettled) naming the streams whose
    /// acknowledgements had not all landed by then. Those tasks are stopped.
    pub(crate) async fn landed(
        mut acknowledging: StreamTasks,
        deadline: tokio::time::Instant,
    ) -> crate::Result<()> {
        settled(unfinished(&mut acknowledging, deadline).await)
    }

    /// Settles a handled (or skipped) event of `entry`, of the stream at `stream_index`: marks it
    /// `done` (when it holds its hold), and acknowledges the entry with it when it is the entry's
    /// last event unsettled, or right behind it when the others settled meanwhile. `landed` is
    /// dropped once the event's part has landed.
    pub(crate) fn handled(
        &self,
        stream_index: usize,
        entry: &Arc<Unsettled>,
        done: Option<Digest>,
        landed: Option<oneshot::Sender<()>>,
    ) {
        let acknowledge = entry.is_last();
        self.send(
            stream_index,
            Ack {
                entry: Arc::clone(entry),
                acknowledge,
                done,
                _landed: landed,
            },
        );
        if !acknowledge {
            // Queued behind the mark: they land in order.
            self.settled_elsewhere(stream_index, entry);
        }
    }

    /// Counts an event of `entry` settled by other means (moved to the dead letters, its move
    /// landed); acknowledges the entry when that leaves none of its events.
    pub(crate) fn settled_elsewhere(&self, stream_index: usize, entry: &Arc<Unsettled>) {
        if entry.settled_one() {
            self.send(
                stream_index,
                Ack {
                    entry: Arc::clone(entry),
                    acknowledge: true,
                    done: None,
                    _landed: None,
                },
            );
        }
    }

    /// Queues `ack` for the stream at `stream_index`. If the consumer has stopped, the entry stays
    /// pending for another consumer.
    fn send(&self, stream_index: usize, ack: Ack) {
        if let Err(unsent) = self.queues[stream_index].send(ack) {
            let kept = &unsent.0.entry.kept;
            tracing::warn!(stream = %kept.stream(), entry_id = %kept.id(), "the consumer stopped before the entry was acknowledged; it stays pending");
        }
    }
}

/// Settles what `receiver` brings for `stream` until every sender is gone and nothing is left.
async fn acknowledge(
    group: Group<Connection>,
    stream: Arc<str>,
    mut receiver: mpsc::UnboundedReceiver<Ack>,
    marks: MarkSettings,
    counters: Arc<Counters>,
) {
    let retry = Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2));
    let mut waiting: Vec<Ack> = Vec::new();
    let mut failures = 0;
    loop {
        if waiting.is_empty() {
            if receiver.recv_many(&mut waiting, MAX_BATCH).await == 0 {
                return;
            }
        } else {
            while let Ok(ack) = receiver.try_recv() {
                waiting.push(ack);
            }
        }
        let batch = &waiting[..waiting.len().min(MAX_BATCH)];
        let settled = batch.len();
        let ids: Vec<String> = batch
            .iter()
            .filter(|ack| ack.acknowledge)
            .map(|ack| ack.entry.kept.id().to_owned())
            .collect();
        let done: Vec<Digest> = batch
            .iter()
            .filter(|ack| failures > 0 || ack.entry.packed.load(Ordering::Relaxed))
            .filter_map(|ack| ack.done)
            .collect();
        match group.settle(&stream, &ids, &done, marks).await {
            Ok(()) => {
                failures = 0;
                counters.recovered(Operation::Acknowledge, &stream);
                waiting.drain(..settled);
            }
            Err(error) if is_no_group(&error) || error.code() == Some("WRONGTYPE") => {
                tracing::warn!(%stream, entries = ids.len(), %error, "the group or its stream is gone, and its pending entries with it: nothing left to acknowledge");
                waiting.drain(..settled);
            }
            Err(error) => {
                failures += 1;
                counters.stalled(Operation::Acknowledge, &stream, &error);
                // The first retry, which marks the events done, goes at once: until it lands, a
                // crash would leave them pending and unmarked.
                if failures > 1 {
                    tokio::time::sleep(retry.delay(failures - 1)).await;
                }
            }
        }
    }
}
