//! Idempotency holds: what keeps a handler from running twice for one event.
//!
//! The holds of a read batch's events are taken in one script call before their deliveries start;
//! a delivery that must ask again (its event's key learned late, another entry holding the event)
//! asks one task, which asks Redis for every hold asked for meanwhile, in one call per stream. A
//! hold is the event's mark naming the entry handling it. It passes with the entry to whichever
//! consumer owns it, so it never expires under a live consumer and a consumer taking over a
//! crashed one's entry takes its hold at once. Once the entry is acknowledged the same mark says
//! the event was handled, with nothing more written; a dead letter marks it dead (see
//! `lua/marks.lua`). Marks are kept for the idempotency window: about 30 bytes per event.

use std::borrow::Borrow;
use std::sync::Arc;

use super::batcher::{Answering, Batcher};
use super::group::{Group, Hold, HoldRequest};
use super::identity::{Digest, MarkSettings};
use super::part::{Part, holder};
use crate::connection::Connection;
use crate::{REPLAYED_FIELD, StreamEntry};

/// Whether `entry` is a dead letter replayed into its stream: a dead mark does not stop it.
fn is_replay(entry: &StreamEntry) -> bool {
    entry
        .fields
        .iter()
        .any(|(name, _)| name == REPLAYED_FIELD.as_bytes())
}

impl HoldRequest {
    /// The request of `entry` (`part` of it, for an event of a packed entry) for the hold on its
    /// event `digest`.
    pub(crate) fn of(entry: &StreamEntry, part: Option<&Part>, digest: Digest) -> Self {
        Self {
            digest,
            holder: holder(&entry.id, part, &digest),
            replay: is_replay(entry),
        }
    }
}

/// One delivery's request for its hold, on its stream.
#[derive(Debug)]
pub(crate) struct Asked {
    stream: Arc<str>,
    request: HoldRequest,
}

impl Borrow<HoldRequest> for Asked {
    fn borrow(&self) -> &HoldRequest {
        &self.request
    }
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
        self.group.begin(stream, requests, self.marks).await
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

    /// Takes the hold `request` asks for on `stream`.
    pub(crate) async fn take(
        &self,
        stream: &Arc<str>,
        request: HoldRequest,
    ) -> redis::RedisResult<Hold> {
        self.ask(Asked {
            stream: Arc::clone(stream),
            request,
        })
        .await
    }

    /// Takes the holds `requests` ask for on `stream` at once, in one call: for a batch of
    /// deliveries that would otherwise each ask and wait on their own.
    pub(crate) async fn take_all(
        &self,
        stream: &str,
        requests: &[HoldRequest],
    ) -> redis::RedisResult<Vec<Hold>> {
        let taking = self.answering();
        taking.group.begin(stream, requests, taking.marks).await
    }
}
