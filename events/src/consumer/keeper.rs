//! Keeping the entries a consumer works on its own. An entry read and not yet settled (waiting for
//! a slot or its key's turn, running, waiting for a retry, or being acknowledged) is kept: the
//! keeper, on a thread of its own, resets its idle time well within `claim_idle`, so no reclaim,
//! this consumer's or a peer's, takes it over while the consumer lives, however long it waits and
//! whatever its handlers do to the consumer's threads. The same call records its delivery count.
//! An entry another consumer took anyway (this one was cut off from Redis, or paused, for longer
//! than `claim_idle`) is marked lost, and its delivery gives it up; a delivery starts a handler
//! only once it knows the entry is still its own (see `Kept::is_still_ours`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::group::{Group, Hold};
use super::status::{Counters, Operation};
use crate::connection::{Connection, connect};
use crate::{Backoff, Endpoint};

/// How long the keeper's own connection waits for a reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the keeper knows of one kept entry.
#[derive(Debug)]
struct State {
    deliveries: AtomicU32,
    lost: AtomicBool,
}

/// Kept entries by stream and id.
type Registry = HashMap<Arc<str>, HashMap<String, Arc<State>>>;

/// Entry ids with their delivery counts.
type Counted = Vec<(String, u32)>;

/// The entries a consumer keeps; cheap to clone, clones share them.
#[derive(Debug, Clone)]
pub(crate) struct Keeper {
    registry: Arc<Mutex<Registry>>,
    /// When the last round that kept every entry began, once one has.
    rounds: Arc<watch::Sender<Option<Instant>>>,
}

impl Default for Keeper {
    fn default() -> Self {
        Self {
            registry: Arc::default(),
            rounds: Arc::new(watch::Sender::new(None)),
        }
    }
}

/// One kept entry: kept until this is dropped.
#[derive(Debug)]
pub(crate) struct Kept {
    keeper: Keeper,
    stream: Arc<str>,
    id: String,
    state: Arc<State>,
    /// When the read or claim that delivered it was sent: it has been fresh in Redis since.
    since: Instant,
    /// When it was kept: the keeper's rounds that began before took no care of it.
    kept_at: Instant,
}

impl Keeper {
    /// Keeps entry `id` of `stream`, delivered `deliveries` times, until the returned guard drops.
    /// `since` is when the read or claim that delivered it was sent: Redis reset its idle time
    /// after that, however long its reply waited to be handled.
    pub(crate) fn keep(
        &self,
        stream: &Arc<str>,
        id: &str,
        deliveries: u32,
        since: Instant,
    ) -> Kept {
        let state = Arc::new(State {
            deliveries: AtomicU32::new(deliveries),
            lost: AtomicBool::new(false),
        });
        self.lock()
            .entry(Arc::clone(stream))
            .or_default()
            .insert(id.to_owned(), Arc::clone(&state));
        Kept {
            keeper: self.clone(),
            stream: Arc::clone(stream),
            id: id.to_owned(),
            state,
            since,
            kept_at: Instant::now(),
        }
    }

    /// Whether entry `id` of `stream` is kept.
    pub(crate) fn keeps(&self, stream: &str, id: &str) -> bool {
        self.lock()
            .get(stream)
            .is_some_and(|entries| entries.contains_key(id))
    }

    /// Whether any entry of `stream` is kept.
    pub(crate) fn keeps_any_of(&self, stream: &str) -> bool {
        self.lock()
            .get(stream)
            .is_some_and(|entries| !entries.is_empty())
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every kept entry with its delivery count, per stream.
    fn snapshot(&self) -> Vec<(Arc<str>, Counted)> {
        self.lock()
            .iter()
            .filter(|(_, entries)| !entries.is_empty())
            .map(|(stream, entries)| {
                let entries = entries
                    .iter()
                    .map(|(id, state)| (id.clone(), state.deliveries.load(Ordering::Relaxed)))
                    .collect();
                (Arc::clone(stream), entries)
            })
            .collect()
    }

    fn mark_lost(&self, stream: &str, ids: &[String]) {
        let registry = self.lock();
        let Some(entries) = registry.get(stream) else {
            return;
        };
        for id in ids {
            if let Some(state) = entries.get(id) {
                state.lost.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Starts keeping the kept entries every quarter of `claim_idle` until `stop`, well before
    /// another consumer would take them: on a thread of its own, with a runtime and a connection to
    /// `endpoint` of its own, so that handlers blocking every thread of the consumer's runtime
    /// (synchronous or CPU-bound work) hold up no keep, and no other consumer takes over the entries
    /// they work on. Through `group`, on the consumer's runtime, when that thread cannot start or
    /// connect. The returned handle ends once keeping has; dropping it stops keeping.
    pub(crate) fn start(
        &self,
        group: &Group<Connection>,
        endpoint: &Endpoint,
        claim_idle: Duration,
        counters: &Arc<Counters>,
        stop: &CancellationToken,
    ) -> AbortOnDropHandle<()> {
        let interval = claim_idle / 4;
        let (own_thread, kept_there) = self.start_thread(group, endpoint, interval, counters, stop);
        let (keeper, group, counters, stop) = (
            self.clone(),
            group.clone(),
            Arc::clone(counters),
            stop.clone(),
        );
        AbortOnDropHandle::new(tokio::spawn(async move {
            // Dropped (the consumer's run dropped without a shutdown), this stops the thread too.
            let _stop_with_this = stop.clone().drop_guard();
            match (kept_there.await, own_thread) {
                (Ok(()), Some(thread)) => {
                    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                }
                _ if !stop.is_cancelled() => keeper.run(group, interval, counters, stop).await,
                _ => {}
            }
        }))
    }

    /// Starts the keeper's thread: it connects to `endpoint` as `group`'s consumer, says so
    /// through the receiver returned, and keeps every `interval` until `stop`. The receiver fails
    /// when the thread could not start or connect.
    fn start_thread(
        &self,
        group: &Group<Connection>,
        endpoint: &Endpoint,
        interval: Duration,
        counters: &Arc<Counters>,
        stop: &CancellationToken,
    ) -> (Option<std::thread::JoinHandle<()>>, oneshot::Receiver<()>) {
        let (connected, kept_there) = oneshot::channel();
        let (keeper, counters, stop) = (self.clone(), Arc::clone(counters), stop.clone());
        let (endpoint, group, consumer) = (
            endpoint.clone(),
            group.group.clone(),
            group.consumer.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("events-keeper".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async move {
                    let connection = tokio::select! {
                        () = stop.cancelled() => return,
                        connection = connect(&endpoint, RESPONSE_TIMEOUT) => connection,
                    };
                    match connection {
                        Ok(connection) => {
                            let _ = connected.send(());
                            let group = Group { connection, group, consumer };
                            keeper.run(group, interval, counters, stop).await;
                        }
                        Err(error) => tracing::warn!(%error, "the keeper could not connect on a thread of its own; it keeps entries on the consumer's runtime"),
                    }
                });
            });
        if let Err(error) = &thread {
            tracing::warn!(%error, "the keeper could not start a thread of its own; it keeps entries on the consumer's runtime");
        }
        (thread.ok(), kept_there)
    }

    /// Keeps every kept entry every `interval` until `stop`; a failed round is tried again sooner,
    /// and reported as a stall until it succeeds.
    async fn run(
        self,
        group: Group<Connection>,
        interval: Duration,
        counters: Arc<Counters>,
        stop: CancellationToken,
    ) {
        let retry = Backoff::exponential(Duration::from_millis(20), interval).without_jitter();
        let mut failures = 0;
        loop {
            let began = Instant::now();
            let mut failed = false;
            for (stream, entries) in self.snapshot() {
                match group.keep(&stream, &entries).await {
                    Ok(lost) => {
                        counters.recovered(Operation::Keep, &stream);
                        if !lost.is_empty() {
                            tracing::warn!(%stream, lost = lost.len(), "entries this consumer worked on were taken over by another consumer; it gives them up");
                            self.mark_lost(&stream, &lost);
                        }
                    }
                    Err(error) => {
                        failed = true;
                        counters.stalled(Operation::Keep, &stream, &error);
                    }
                }
            }
            if !failed {
                self.rounds.send_replace(Some(began));
            }
            failures = if failed { failures + 1 } else { 0 };
            let wait = if failed {
                retry.delay(failures)
            } else {
                interval
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

impl Kept {
    /// Whether another consumer took the entry over.
    pub(crate) fn is_lost(&self) -> bool {
        self.state.lost.load(Ordering::Relaxed)
    }

    /// Whether the entry is still this consumer's to handle. At once when it was read, claimed or
    /// kept within half of `claim_idle`: no other consumer takes an entry idle for less than
    /// `claim_idle`. Else (the consumer's threads were all busy, blocked by handlers, or the process
    /// was paused, so the keeper fell behind) after the keeper's next round, which finds out
    /// whether another consumer took it meanwhile: the caller gives up waiting when it stops.
    pub(crate) async fn is_still_ours(&self, claim_idle: Duration) -> bool {
        let now = Instant::now();
        // A round vouches for the entries it looked at: those kept when it began.
        let fresh_since = match *self.keeper.rounds.borrow() {
            Some(began) if began >= self.kept_at => began.max(self.since),
            _ => self.since,
        };
        if now.duration_since(fresh_since) >= claim_idle / 2 {
            // The keeper's sender lives as long as this entry: the wait ends with a round.
            // Boxed: a rare wait, whose future would make every delivery's larger.
            let mut rounds = self.keeper.rounds.subscribe();
            let _ =
                Box::pin(rounds.wait_for(|began| began.is_some_and(|began| began >= now))).await;
        }
        !self.is_lost()
    }

    /// How often the entry has been delivered, this delivery included.
    pub(crate) fn deliveries(&self) -> u32 {
        self.state.deliveries.load(Ordering::Relaxed)
    }

    /// The stream it belongs to.
    pub(crate) fn stream(&self) -> &Arc<str> {
        &self.stream
    }

    /// Its id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Counts this delivery as the entry's first when the hold on its event (`packed` when the
    /// event is one of a packed entry) was taken anew while the entry was delivered before: each
    /// delivery takes the hold before it starts a handler, and the hold stays with the entry, so
    /// the earlier ones never started one (read or claimed, their replies lost to a dropped
    /// connection or an unconfirmed write) and use up no attempts. An event of a packed entry
    /// counts with its others, which may have run. The keeper records it in Redis. Returns
    /// whether it counted anew.
    pub(crate) fn count_from_first_if_taken_anew(&self, hold: Hold, packed: bool) -> bool {
        let anew = hold == Hold::Taken && !packed && self.deliveries() > 1;
        if anew {
            self.state.deliveries.store(1, Ordering::Relaxed);
        }
        anew
    }

    /// Counts one more delivery, and records it in Redis at once, so a consumer that takes the
    /// entry over after a crash counts it too (the keeper records it later if this fails).
    pub(crate) async fn count_delivery(&self, group: &Group<Connection>) -> u32 {
        let deliveries = self.state.deliveries.fetch_add(1, Ordering::Relaxed) + 1;
        match group
            .keep(&self.stream, &[(self.id.clone(), deliveries)])
            .await
        {
            Ok(lost) if !lost.is_empty() => self.state.lost.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(stream = %self.stream, entry_id = %self.id, %error, "could not record a delivery yet; the keeper will");
            }
        }
        deliveries
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let mut registry = self.keeper.lock();
        if let Some(entries) = registry.get_mut(&self.stream)
            && entries
                .get(&self.id)
                .is_some_and(|state| Arc::ptr_eq(state, &self.state))
        {
            entries.remove(&self.id);
        }
    }
}
