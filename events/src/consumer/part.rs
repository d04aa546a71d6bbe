//! One event of an entry. Most entries hold one; a batch the TypeScript batched publisher packed
//! into one entry holds many, and each is handled, retried and dead-lettered on its own, the entry
//! acknowledged once all are settled (see `settle.rs`).

use std::borrow::Cow;

use super::group::Group;
use super::keeper::Kept;
use crate::connection::Connection;

/// Where an event of a packed entry sits in it.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    /// Its place in the batch, from 0.
    pub(crate) index: usize,
    /// The event as a single TypeScript entry's `data` field: what its dead letter holds.
    pub(crate) data: String,
}

/// Who holds an event's idempotency hold: the entry's id, followed by `#<index>` for an event of a
/// packed entry, so that two events of one entry never take each other's hold.
pub(crate) fn holder<'a>(entry_id: &'a str, part: Option<&Part>) -> Cow<'a, str> {
    match part {
        None => Cow::Borrowed(entry_id),
        Some(part) => Cow::Owned(format!("{entry_id}#{}", part.index)),
    }
}

/// Which attempt at an event this is. An entry's deliveries are counted in Redis (a consumer
/// taking it over counts on from there); the retries of an event of a packed entry are counted
/// here, on top of its entry's deliveries, so that one event's retries never use up another's.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    retries: u32,
}

impl Attempts {
    /// The attempt under way, 1 for the first.
    pub(crate) fn current(&self, kept: &Kept) -> u32 {
        kept.deliveries().saturating_add(self.retries)
    }

    /// Counts a retry of the event: in Redis for an entry of one event, here for a packed one.
    pub(crate) async fn count_retry(
        &mut self,
        kept: &Kept,
        group: &Group<Connection>,
        part: Option<&Part>,
    ) {
        match part {
            None => {
                kept.count_delivery(group).await;
            }
            Some(_) => self.retries = self.retries.saturating_add(1),
        }
    }
}
