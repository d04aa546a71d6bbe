//! Delayed events reach their stream at their time: publishers keep them in a sorted set beside
//! the stream (`{stream}:delayed`, scored by due time), and every consumer of the stream moves
//! those due into it with one script call (`lua/move_due.lua`), each event added once however
//! many consumers call it. A consumer looks every 50 ms, or sooner when the next is due sooner,
//! and calls the script only when the set holds events; events survive restarts with the rest of
//! Redis's data until they are moved.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::group::Group;
use super::status::{Counters, Operation};
use crate::connection::Connection;
use crate::{Backoff, keys};

static MOVE_DUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/move_due.lua")));

/// How often a consumer looks for due events at most.
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// Most events moved in one call.
const MOST_MOVED: usize = 1_000;

/// Starts the task that moves due events into `streams` through `group`'s connection until
/// `stop`; a stream whose events Redis will not take shows as a stall in `counters`.
pub(crate) fn start(
    group: &Group<Connection>,
    streams: &[Arc<str>],
    counters: &Arc<Counters>,
    stop: &CancellationToken,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(move_due(
        group.connection.clone(),
        streams.to_vec(),
        Arc::clone(counters),
        stop.clone(),
    )))
}

async fn move_due(
    connection: Connection,
    streams: Vec<Arc<str>>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let retry = Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2));
    let mut failures = 0;
    loop {
        let mut wait = LOOK_EVERY;
        let mut failed = false;
        for stream in &streams {
            match move_due_of(&connection, stream).await {
                Ok((moved, next, aside)) => {
                    counters.recovered(Operation::MoveDelayed, stream);
                    if aside > 0 {
                        tracing::error!(%stream, aside, set = %keys::unmovable_events(stream), "delayed events that cannot be added to the stream were set aside");
                    }
                    if moved == MOST_MOVED {
                        wait = Duration::ZERO;
                    } else if let Some(next) = next {
                        wait = wait.min(until(next));
                    }
                }
                Err(error) => {
                    failed = true;
                    counters.stalled(Operation::MoveDelayed, stream, &error);
                }
            }
        }
        failures = if failed { failures + 1 } else { 0 };
        if failed {
            wait = retry.delay(failures);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Moves the due events of `stream` into it: how many it moved, the due time of the next one left,
/// and how many it set aside. Most looks find no delayed event at all, and a `ZCARD` of the set
/// costs Redis far less than a script call (about 1 µs against 18).
async fn move_due_of(
    connection: &Connection,
    stream: &str,
) -> redis::RedisResult<(usize, Option<u64>, usize)> {
    let delayed = keys::delayed_events(stream);
    let waiting: usize = redis::cmd("ZCARD")
        .arg(&delayed)
        .query_async(&mut connection.clone())
        .await?;
    if waiting == 0 {
        return Ok((0, None, 0));
    }
    MOVE_DUE
        .key(&delayed)
        .key(stream)
        .key(keys::unmovable_events(stream))
        .arg(MOST_MOVED)
        .invoke_async(&mut connection.clone())
        .await
}

/// How long until `millis` since the epoch.
fn until(millis: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_millis(millis).saturating_sub(now)
}
