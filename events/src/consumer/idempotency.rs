//! Idempotency holds: what keeps a handler from running twice for one event.
//!
//! A delivery about to run its handler asks for its event's hold; one task asks Redis for every
//! hold asked for meanwhile, in one script call per stream. A hold is the event's mark naming the
//! entry handling it. It passes with the entry to whichever consumer owns it and frees itself once
//! that entry is no longer pending, so it never expires under a live consumer and a consumer taking
//! over a crashed one's entry takes its hold at once. It ends as a `done` or `dead` mark (see
//! `lua/marks.lua`), kept for the idempotency window: 16 bytes of digest and about as many of
//! overhead per event.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use super::group::{Group, Hold, HoldRequest};
use super::identity::{Digest, MarkSettings};
use crate::connection::Connection;
use crate::{REPLAYED_FIELD, StreamEntry};

/// Most holds taken in one script call.
const MAX_BATCH: usize = 1_000;

/// Whether `entry` is a dead letter replayed into its stream: a dead mark does not stop it.
pub(crate) fn is_replay(entry: &StreamEntry) -> bool {
    entry
        .fields
        .iter()
        .any(|(name, _)| name == REPLAYED_FIELD.as_bytes())
}

/// One delivery's request for its hold.
#[derive(Debug)]
struct Request {
    stream: Arc<str>,
    digest: Digest,
    entry_id: String,
    replay: bool,
    reply: oneshot::Sender<redis::RedisResult<Hold>>,
}

/// Where deliveries ask for idempotency holds. The serving task ends when every clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Holds {
    requests: mpsc::UnboundedSender<Request>,
}

impl Holds {
    /// Starts the task that takes holds through `group`, finding marks as `marks` says.
    pub(crate) fn serve(
        group: Group<Connection>,
        marks: MarkSettings,
    ) -> (Self, AbortOnDropHandle<()>) {
        let (requests, receiver) = mpsc::unbounded_channel();
        (
            Self { requests },
            AbortOnDropHandle::new(tokio::spawn(take_batches(group, receiver, marks))),
        )
    }

    /// Takes the hold on the event `digest` of `stream` for entry `entry_id` (a replayed dead
    /// letter when `replay`).
    pub(crate) async fn take(
        &self,
        stream: &Arc<str>,
        digest: Digest,
        entry_id: &str,
        replay: bool,
    ) -> redis::RedisResult<Hold> {
        let stopped =
            || redis::RedisError::from((redis::ErrorKind::Client, "the consumer is stopping"));
        let (reply, answer) = oneshot::channel();
        let request = Request {
            stream: Arc::clone(stream),
            digest,
            entry_id: entry_id.to_owned(),
            replay,
            reply,
        };
        if self.requests.send(request).is_err() {
            return Err(stopped());
        }
        // The serving task answers every request it takes; it ends only after every sender.
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn take_batches(
    group: Group<Connection>,
    mut receiver: mpsc::UnboundedReceiver<Request>,
    marks: MarkSettings,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut by_stream: HashMap<Arc<str>, Vec<Request>> = HashMap::new();
        for request in batch.drain(..) {
            by_stream
                .entry(Arc::clone(&request.stream))
                .or_default()
                .push(request);
        }
        for (stream, requests) in by_stream {
            let asked: Vec<HoldRequest<'_>> = requests
                .iter()
                .map(|request| HoldRequest {
                    digest: request.digest,
                    entry_id: &request.entry_id,
                    replay: request.replay,
                })
                .collect();
            let results: Vec<redis::RedisResult<Hold>> =
                match group.begin(&stream, &asked, marks).await {
                    Ok(holds) => holds.into_iter().map(Ok).collect(),
                    Err(error) => vec![Err(error); requests.len()],
                };
            for (request, result) in requests.into_iter().zip(results) {
                let _ = request.reply.send(result);
            }
        }
    }
}
