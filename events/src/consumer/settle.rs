//! Acknowledgements, batched per stream: whatever deliveries finish while one round trip is under
//! way goes in the next, one call that acknowledges the entries and marks their holds done. A
//! failed call is tried again, with what came meanwhile, until it works or the consumer stops;
//! until then each entry stays kept, with its backpressure permit and its key's turn, so no
//! handler runs twice for a lost acknowledgement. One stream's trouble never holds up another's.

use std::sync::Arc;
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
/// and its partition key's turn. Dropping it lets go of all three.
#[derive(Debug)]
pub(crate) struct Unsettled {
    pub(crate) kept: Kept,
    _permit: Option<OwnedSemaphorePermit>,
    /// Dropped when the entry is settled, letting the next event of its key start.
    _turn: Option<oneshot::Sender<()>>,
}

impl Unsettled {
    /// What `kept` holds on to until it is settled.
    pub(crate) fn new(
        kept: Kept,
        permit: Option<OwnedSemaphorePermit>,
        turn: Option<oneshot::Sender<()>>,
    ) -> Self {
        Self {
            kept,
            _permit: permit,
            _turn: turn,
        }
    }
}

/// A handled (or skipped) entry to acknowledge, with the event to mark done.
#[derive(Debug)]
pub(crate) struct Ack {
    pub(crate) unsettled: Unsettled,
    pub(crate) done: Option<Digest>,
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
    ) -> (Self, Vec<AbortOnDropHandle<()>>) {
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
                (queue, AbortOnDropHandle::new(tokio::spawn(task)))
            })
            .unzip();
        (Self { queues }, tasks)
    }

    /// Queues `ack` for the stream at `stream_index`. If the consumer has stopped, the entry stays
    /// pending for another consumer.
    pub(crate) fn send(&self, stream_index: usize, ack: Ack) {
        if let Err(unsent) = self.queues[stream_index].send(ack) {
            let kept = &unsent.0.unsettled.kept;
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
        let ids: Vec<String> = batch
            .iter()
            .map(|ack| ack.unsettled.kept.id().to_owned())
            .collect();
        let done: Vec<Digest> = batch.iter().filter_map(|ack| ack.done).collect();
        match group.settle(&stream, &ids, &done, marks).await {
            Ok(()) => {
                failures = 0;
                counters.recovered(Operation::Acknowledge, &stream);
                waiting.drain(..ids.len());
            }
            Err(error) if is_no_group(&error) || error.code() == Some("WRONGTYPE") => {
                tracing::warn!(%stream, entries = ids.len(), %error, "the group or its stream is gone, and its pending entries with it: nothing left to acknowledge");
                waiting.drain(..ids.len());
            }
            Err(error) => {
                failures += 1;
                counters.stalled(Operation::Acknowledge, &stream, &error);
                tokio::time::sleep(retry.delay(failures)).await;
            }
        }
    }
}
