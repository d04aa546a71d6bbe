//! Taking over entries that consumers left: an entry pending past `claim_idle` on a consumer that
//! does not keep it (it stopped, crashed, or gave it up) is taken only when two looks, a claim
//! interval apart, found it idle on the same consumer with the same delivery count, and then only
//! if it is idle still (`XCLAIM` checks again, atomically).
//!
//! A live consumer keeps its entries fresh (see the keeper). When Redis itself stalls (`DEBUG
//! SLEEP`, a slow fork, a restart from its append-only file), every entry looks idle once it is
//! back; but the live consumer's keep, queued meanwhile, lands before the second look. So a live
//! consumer's entries are never taken, however long Redis stalled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::group::{Claimed, Group};
use super::keeper::Keeper;
use crate::connection::Connection;

/// The entries seen idle at the last look, per stream: id to consumer and delivery count.
#[derive(Debug, Default)]
pub(crate) struct Reclaimer {
    suspects: HashMap<Arc<str>, HashMap<String, (String, u32)>>,
}

impl Reclaimer {
    /// Looks at up to `scan` entries of `stream` idle past `claim_idle` and claims, up to `room`,
    /// those the look before saw idle on the same consumer with the same delivery count, unless
    /// `keeper` keeps them.
    pub(crate) async fn round(
        &mut self,
        group: &Group<Connection>,
        stream: &Arc<str>,
        claim_idle: Duration,
        scan: usize,
        room: usize,
        keeper: &Keeper,
    ) -> redis::RedisResult<Claimed> {
        let idle = group.idle_entries(stream, claim_idle, scan).await?;
        let seen_before = self.suspects.remove(stream).unwrap_or_default();
        let mut suspects = HashMap::new();
        let mut confirmed = Vec::new();
        for entry in idle {
            if keeper.keeps(stream, &entry.id) {
                continue;
            }
            let owner = (entry.consumer, entry.deliveries);
            if confirmed.len() < room && seen_before.get(&entry.id) == Some(&owner) {
                confirmed.push(entry.id);
            } else {
                suspects.insert(entry.id, owner);
            }
        }
        self.suspects.insert(Arc::clone(stream), suspects);
        let ids: Vec<&str> = confirmed.iter().map(String::as_str).collect();
        group.claim(stream, &ids, claim_idle).await
    }
}
