//! Idempotency: what identifies an event as a repeat of another, and the holds that keep its
//! handler from running twice.
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
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use super::group::{Group, Hold, HoldRequest};
use crate::connection::Connection;
use crate::{Envelope, REPLAYED_FIELD, StreamEntry};

/// Most holds taken in one script call.
const MAX_BATCH: usize = 1_000;

/// What identifies an event as a repeat of another, for events whose type declares no
/// `#[event(idempotency_key)]` (declared keys, scoped by the event type, always do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Identity {
    /// Its event id: publisher retries, `retry_failed`, re-sent batches and redeliveries keep it,
    /// and distinct events are never merged, whatever their bodies.
    #[default]
    EventId,
    /// Its type and body: two events of one type with equal bodies count as one, whatever their
    /// ids. For events whose bodies carry their own identity.
    Content,
}

/// A 16-byte digest of an event's identity: what idempotency marks and holds are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Digest([u8; 16]);

impl Digest {
    /// The identity of the event in `envelope`: its declared key (scoped by its type) when it has
    /// one, else as `identity` says.
    pub(crate) fn of(envelope: &Envelope, declared: Option<&str>, identity: Identity) -> Self {
        let mut hasher = Sha256::new();
        match (declared, identity) {
            (Some(key), _) => {
                hasher.update(b"key\0");
                hasher.update(envelope.event_type.as_bytes());
                hasher.update([0]);
                hasher.update(key.as_bytes());
            }
            (None, Identity::EventId) => {
                hasher.update(b"id\0");
                hasher.update(envelope.id.as_bytes());
            }
            (None, Identity::Content) => {
                hasher.update(b"content\0");
                hasher.update(envelope.event_type.as_bytes());
                hasher.update([0]);
                hasher.update(envelope.body.as_bytes());
            }
        }
        let mut digest = [0; 16];
        digest.copy_from_slice(&hasher.finalize()[..16]);
        Self(digest)
    }

    /// The digest's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Where and for how long one group's marks live: the window, and how many marks a shard holds
/// before it splits (a share of the server's `hash-max-listpack-entries`, so that every shard
/// stays listpack-encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MarkSettings {
    pub(crate) window: Duration,
    pub(crate) load: u64,
}

impl MarkSettings {
    /// Marks kept for `window`, on a server whose hashes stay compact up to `listpack_entries`.
    pub(crate) fn new(window: Duration, listpack_entries: u64) -> Self {
        // Shards not yet split in a round hold up to twice `load` marks on average: that, and five
        // standard deviations more, must stay within the listpack limit (x + 5 sqrt(x) <= limit),
        // or a shard turns into a hash table for good.
        let limit = listpack_entries as f64;
        let twice = ((25.0 + 4.0 * limit).sqrt() - 5.0) / 2.0;
        Self {
            window,
            load: ((twice * twice / 2.0) as u64).max(2),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &str, event_type: &str, body: &str) -> Envelope {
        let mut envelope = Envelope::new(event_type, 1, "test", body.to_owned());
        envelope.id = id.to_owned();
        envelope
    }

    #[test]
    fn events_are_told_apart_by_id_unless_asked_otherwise() {
        let first = envelope("1", "audit.login", r#"{"user":"ada"}"#);
        let again = envelope("1", "audit.login", r#"{"user":"ada"}"#);
        let other = envelope("2", "audit.login", r#"{"user":"ada"}"#);
        let by_id = |envelope: &Envelope| Digest::of(envelope, None, Identity::EventId);
        assert_eq!(by_id(&first), by_id(&again));
        assert_ne!(
            by_id(&first),
            by_id(&other),
            "equal bodies, distinct events"
        );
        let by_content = |envelope: &Envelope| Digest::of(envelope, None, Identity::Content);
        assert_eq!(by_content(&first), by_content(&other));
        let updated = envelope("2", "audit.logout", r#"{"user":"ada"}"#);
        assert_ne!(by_content(&first), by_content(&updated), "types differ");
    }

    #[test]
    fn declared_keys_are_scoped_by_the_event_type() {
        let placed = envelope("1", "order.placed", "{}");
        let paid = envelope("2", "order.paid", "{}");
        let key = |envelope: &Envelope| Digest::of(envelope, Some("o1"), Identity::EventId);
        assert_ne!(key(&placed), key(&paid));
        assert_eq!(key(&placed), key(&envelope("3", "order.placed", "{}")));
    }

    #[test]
    fn shards_stay_under_the_listpack_limit() {
        let load = |limit| MarkSettings::new(Duration::from_secs(1), limit).load;
        assert_eq!(load(128), 41);
        assert_eq!(load(32), 6);
        assert_eq!(load(512), 205);
        assert_eq!(load(0), 2);
    }
}
