//! Acknowledgements, batched: whatever deliveries finish while one round trip is under way goes
//! in the next, one script call per stream that acknowledges and marks idempotency keys done.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use tokio::sync::mpsc;

use super::delivery::Settle;
use super::group::Group;

/// Most entries settled in one round trip.
const MAX_BATCH: usize = 1_000;

/// How often a failed acknowledgement is tried again before the entries are left pending (to be
/// delivered again: with idempotency on, their handlers do not run twice).
const ATTEMPTS: u32 = 20;

/// Settles what `receiver` brings until every sender is gone.
pub(crate) async fn acknowledge<C>(
    group: Group<C>,
    mut receiver: mpsc::UnboundedReceiver<Settle>,
    ttl: Duration,
) where
    C: ConnectionLike + Clone + Send + Sync,
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut by_stream: HashMap<Arc<str>, (Vec<String>, Vec<String>)> = HashMap::new();
        for settle in &mut batch {
            let (ids, keys) = by_stream.entry(Arc::clone(&settle.stream)).or_default();
            ids.push(std::mem::take(&mut settle.entry_id));
            keys.extend(settle.done_key.take());
        }
        for (stream, (ids, keys)) in by_stream {
            settle_with_retries(&group, &stream, &ids, &keys, ttl).await;
        }
        // Dropping the settled entries releases their backpressure permits.
        batch.clear();
    }
}

async fn settle_with_retries<C>(
    group: &Group<C>,
    stream: &str,
    ids: &[String],
    keys: &[String],
    ttl: Duration,
) where
    C: ConnectionLike + Clone + Send + Sync,
{
    for attempt in 1..=ATTEMPTS {
        match group.settle(stream, ids, keys, ttl).await {
            Ok(()) => return,
            Err(error) if attempt == ATTEMPTS => {
                tracing::error!(%stream, entries = ids.len(), %error, "could not acknowledge entries; they stay pending and will be delivered again");
            }
            Err(error) => {
                tracing::warn!(%stream, entries = ids.len(), %error, attempt, "acknowledging failed; trying again");
                tokio::time::sleep(Duration::from_millis(50) * attempt).await;
            }
        }
    }
}
