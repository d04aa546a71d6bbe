//! Idempotency holds: what keeps a handler from running twice for one event.
//!
//! A delivery about to run its handler asks for its event's hold; one task asks Redis for every
//! hold asked for meanwhile, in one script call per stream. A hold is the event's mark naming the
//! entry handling it. It passes with the entry to whichever consumer owns it and frees itself once
//! that entry is no longer pending, so it never expires under a live consumer and a consumer taking
//! over a crashed one's entry takes its hold at once. It ends as a `done` or `dead` mark (see
//! `lua/marks.lua`), kept for the idempotency window: 16 bytes of digest and about as many of
//! overhead per event.

use std::sync::Arc;

use super::batcher::{Answering, Batcher};
use super::group::{Group, Hold, HoldRequest};
use super::identity::{Digest, MarkSettings};
use crate::connection::Connection;
use crate::{REPLAYED_FIELD, StreamEntry};

/// Whether `entry` is a dead letter replayed into its stream: a dead mark does not stop it.
pub(crate) fn is_replay(entry: &StreamEntry) -> bool {
    entry
        .fields
        .iter()
        .any(|(name, _)| name == REPLAYED_FIELD.as_bytes())
}

/// One delivery's request for its hold.
#[derive(Debug)]
pub(crate) struct Asked {
    stream: Arc<str>,
    digest: Digest,
    entry_id: String,
    replay: bool,
}

/// Takes holds through a group's connection, one script call per stream.
#[derive(Debug)]
pub(crate) struct Taking {
    group: Group<Connection>,
    marks: MarkSettings,
}

impl Answering for Taking {
    type Request = Asked;
    type Group = Arc<str>;
    type Answer = Hold;

    fn group(request: &Asked) -> Arc<str> {
        Arc::clone(&request.stream)
    }

    async fn answer(&self, stream: &Arc<str>, requests: &[Asked]) -> redis::RedisResult<Vec<Hold>> {
        let asked: Vec<HoldRequest<'_>> = requests
            .iter()
            .map(|request| HoldRequest {
                digest: request.digest,
                entry_id: &request.entry_id,
                replay: request.replay,
            })
            .collect();
        self.group.begin(stream, &asked, self.marks).await
    }
}

/// Where deliveries ask for idempotency holds.
pub(crate) type Holds = Batcher<Taking>;

impl Holds {
    /// Starts the task that takes holds through `group`, finding marks as `marks` says.
    pub(crate) fn start(
        group: Group<Connection>,
        marks: MarkSettings,
    ) -> (Self, tokio_util::task::AbortOnDropHandle<()>) {
        Self::serve(Taking { group, marks })
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
        self.ask(Asked {
            stream: Arc::clone(stream),
            digest,
            entry_id: entry_id.to_owned(),
            replay,
        })
        .await
    }

    /// Takes the holds `requests` ask for on `stream` at once, in one call: for a batch of
    /// deliveries that would otherwise each ask and wait on their own.
    pub(crate) async fn take_all(
        &self,
        stream: &str,
        requests: &[HoldRequest<'_>],
    ) -> redis::RedisResult<Vec<Hold>> {
        let taking = self.answering();
        taking.group.begin(stream, requests, taking.marks).await
    }
}
