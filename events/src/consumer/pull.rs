//! Pull mode: the caller reserves events, handles them its own way, then acknowledges or fails
//! them. An entry holding a batch packed by the TypeScript batched publisher is reserved as one
//! event each, and acknowledged once all of them are settled. Entries go through the same steps as in push mode: kept on this consumer from the
//! moment they are read until they are settled, the idempotency hold taken before they are
//! handed out, dead-lettered the same way, acknowledgements and dead-letter moves retried until
//! they land.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::Failure;
use super::config::Settings;
use super::dead_letter::{Doomed, move_to_dead_letters};
use super::group::{EventHolds, Group, Hold, HoldRequest, is_no_group};
use super::identity::Digest;
use super::keeper::Keeper;
use super::part::{Attempts, Part};
use super::reclaim::Reclaimer;
use super::settle::{Acks, StreamTasks, Unsettled, ack_grace, settled, unfinished};
use super::status::{Counters, Operation, Status};
use crate::connection::Connection;
use crate::typescript::Decoded;
use crate::{Envelope, Error, Result, StreamEntry};

/// An entry reserved by [`PullConsumer::reserve`]: decoded, and pending on this consumer until it
/// is acknowledged or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// The stream it was read from.
    pub stream: String,
    /// Its id there.
    pub entry_id: String,
    /// The event's place in the entry, from 0, when the entry holds a batch packed by the
    /// TypeScript batched publisher; `None` for an entry of one event.
    pub part: Option<usize>,
    /// Which delivery this is, 1 for the first.
    pub attempt: u32,
    /// The event.
    pub envelope: Envelope,
}

/// An event read and not yet settled, as this consumer holds it.
#[derive(Debug)]
struct Holding {
    stream_index: usize,
    entry: Arc<StreamEntry>,
    /// Which event of a packed entry it is.
    part: Option<Part>,
    envelope: Envelope,
    /// Its event's identity, when idempotency is on.
    hold: Option<Digest>,
    unsettled: Arc<Unsettled>,
    attempts: Attempts,
}

/// An event reserved and handed out whole, with what this consumer holds of it: settled by
/// [`Held::ack`] or given back to [`PullConsumer::fail_held`]; dropping it leaves the event to be
/// delivered again after `claim_idle`.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) reserved: Reserved,
    holding: Holding,
}

impl Held {
    /// Acknowledges the event (marking it done); the receiver completes once that has landed.
    pub(super) fn ack(self, acks: &Acks) -> oneshot::Receiver<()> {
        self.holding.ack(acks)
    }
}

/// Where reserved events are found: stream, entry id, and place in a packed entry.
type Key = (String, String, Option<usize>);

/// A consumer whose caller drives each entry's lifecycle: [`reserve`](Self::reserve),
/// then [`ack`](Self::ack) or [`fail`](Self::fail). Failed entries come back from `reserve` after
/// their backoff, and go to the dead-letter stream after the last attempt; undecodable entries go
/// there at once and are never returned. Entries it holds are kept its own while it lives, so no
/// other consumer takes them over, however long the caller takes.
#[derive(Debug)]
pub struct PullConsumer {
    reader: Group<Connection>,
    commands: Group<Connection>,
    settings: Settings,
    streams: Vec<Arc<str>>,
    counters: Arc<Counters>,
    keeper: Keeper,
    reclaimer: Reclaimer,
    acks: Acks,
    /// Reserved events.
    reserved: HashMap<Key, Holding>,
    /// Failed entries waiting for their backoff.
    retries: Vec<(Instant, Holding)>,
    /// Entries whose event another entry is handling, to look at again.
    busy: Vec<Holding>,
    /// Dead-letter moves under way, each retried until it lands.
    moves: StreamTasks,
    /// The last entry id read per stream (at first, the group's position), to create a vanished
    /// group again without skipping anything.
    last_seen: HashMap<Arc<str>, String>,
    last_claim: Option<Instant>,
    acknowledging: StreamTasks,
    keeping: AbortOnDropHandle<()>,
    /// Moves due delayed events into the streams.
    moving: AbortOnDropHandle<()>,
    stop: CancellationToken,
}

/// An event on its way to the dead-letter stream, and why.
#[derive(Debug)]
struct Condemned {
    stream_index: usize,
    entry: Arc<StreamEntry>,
    part: Option<Part>,
    unsettled: Arc<Unsettled>,
    hold: Option<Digest>,
    event_type: Option<String>,
    reason: String,
    attempts: u32,
}

impl PullConsumer {
    pub(crate) async fn start(
        reader: Group<Connection>,
        commands: Group<Connection>,
        endpoint: &crate::Endpoint,
        settings: Settings,
    ) -> Result<Self> {
        let (streams, last_seen) = commands
            .open(&settings.streams, &settings.start_from)
            .await?;
        let counters = Arc::new(Counters::default());
        let keeper = Keeper::default();
        let stop = CancellationToken::new();
        let (acks, acknowledging) = Acks::serve(&commands, &streams, settings.marks(), &counters);
        let keeping = keeper.start(&commands, endpoint, settings.claim_idle, &counters, &stop);
        let moving = super::delayed::start(&commands, &streams, &counters, &stop);
        Ok(Self {
            reader,
            commands,
            settings,
            streams,
            counters,
            keeper,
            reclaimer: Reclaimer::default(),
            acks,
            reserved: HashMap::new(),
            retries: Vec::new(),
            busy: Vec::new(),
            moves: Vec::new(),
            last_seen,
            last_claim: None,
            acknowledging,
            keeping,
            moving,
            stop,
        })
    }

    /// What the consumer has done, and what it keeps failing to do in Redis right now.
    pub fn status(&self) -> Status {
        self.counters.snapshot(Vec::new())
    }

    /// Up to `n` entries: first failed ones whose backoff has passed, then entries left idle too
    /// long by other consumers, then new ones, waiting up to the block time when there are none.
    /// Entries that cannot be handled (undecodable, out of attempts) go to the dead-letter stream
    /// on the way, and repeats of events already handled are acknowledged: neither is returned.
    /// An entry is returned only while it is still this consumer's: when this call was left
    /// unpolled for half of `claim_idle` or more, it waits for the consumer's next keep of its
    /// entries in Redis, and returns none another consumer took meanwhile.
    pub async fn reserve(&mut self, n: usize) -> Result<Vec<Reserved>> {
        let held = self.reserve_held(n).await?;
        Ok(held
            .into_iter()
            .map(|Held { reserved, holding }| {
                let key = (
                    reserved.stream.clone(),
                    reserved.entry_id.clone(),
                    reserved.part,
                );
                self.reserved.insert(key, holding);
                reserved
            })
            .collect())
    }

    /// Up to `n` events as [`reserve`](Self::reserve) takes them, each handed out with what this
    /// consumer holds of it, for the caller to settle.
    pub(super) async fn reserve_held(&mut self, n: usize) -> Result<Vec<Held>> {
        self.moves.retain(|(task, _)| !task.is_finished());
        let mut candidates: Vec<Holding> = Vec::new();
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.retries = waiting;
        for (at, holding) in due {
            if candidates.len() >= n {
                self.retries.push((at, holding));
                continue;
            }
            let mut holding = holding;
            let kept = &holding.unsettled.kept;
            holding
                .attempts
                .count_retry(kept, &self.commands, holding.part.as_ref())
                .await;
            candidates.push(holding);
        }
        let room = n.saturating_sub(candidates.len());
        candidates.extend(self.busy.drain(..room.min(self.busy.len())));
        if self
            .last_claim
            .is_none_or(|at| at.elapsed() >= self.settings.claim_interval)
        {
            self.last_claim = Some(Instant::now());
            for index in 0..self.streams.len() {
                let room = n.saturating_sub(candidates.len());
                if room == 0 {
                    break;
                }
                let stream = Arc::clone(&self.streams[index]);
                let sent = Instant::now();
                let claimed = self
                    .reclaimer
                    .round(
                        &self.commands,
                        &stream,
                        self.settings.claim_idle,
                        room.max(self.settings.batch_size),
                        room,
                        &self.keeper,
                    )
                    .await;
                match claimed {
                    Ok(claimed) => {
                        self.counters.recovered(Operation::Claim, &stream);
                        Counters::add(&self.counters.cleaned, claimed.cleaned as u64);
                        Counters::add(&self.counters.reclaimed, claimed.entries.len() as u64);
                        for (entry, deliveries) in claimed.entries {
                            self.admit(index, entry, deliveries, sent, &mut candidates);
                        }
                    }
                    Err(error) => self.counters.stalled(Operation::Claim, &stream, &error),
                }
            }
        }
        let room = n.saturating_sub(candidates.len());
        if room > 0 {
            // Wait for new entries only when there is nothing else to return.
            let block = candidates.is_empty().then_some(self.settings.block);
            let sent = Instant::now();
            let read = self.reader.read(&self.settings.streams, room, block).await;
            let read = match read {
                Err(error) if is_no_group(&error) => {
                    for stream in &self.streams {
                        let last_seen = self.last_seen.get(stream).map(String::as_str);
                        self.commands
                            .recreate(stream, last_seen)
                            .await
                            .map_err(Error::reading(stream))?;
                    }
                    Vec::new()
                }
                // Events already taken (retries due, busy ones, entries claimed) are returned
                // rather than dropped with the error: dropped, each would wait out `claim_idle`
                // again, and under repeated failures never come back. The read is tried again
                // at the next call.
                Err(error) if !candidates.is_empty() => {
                    tracing::warn!(%error, "reading failed; the events already taken are returned");
                    Vec::new()
                }
                other => other.map_err(Error::reading(&self.settings.streams.join(", ")))?,
            };
            for (stream, entries) in read {
                let Some(index) = self.streams.iter().position(|name| **name == *stream) else {
                    continue;
                };
                if let Some(last) = entries.last() {
                    self.last_seen
                        .insert(Arc::clone(&self.streams[index]), last.id.clone());
                }
                for entry in entries {
                    self.admit(index, entry, 1, sent, &mut candidates);
                }
            }
        }
        self.hold_and_reserve(candidates).await
    }

    /// Acknowledges handled events and marks them done for idempotency; returns once that has
    /// landed in Redis, trying again while it fails (dropping the future leaves it to land later).
    pub async fn ack(&mut self, entries: &[Reserved]) -> Result<()> {
        let mut landed = Vec::new();
        for reserved in entries {
            let Some(holding) = self.take(reserved) else {
                continue;
            };
            landed.push(holding.ack(&self.acks));
        }
        for settled in landed {
            let _ = settled.await;
        }
        Ok(())
    }

    /// Fails entries: each comes back from `reserve` after its backoff, or goes to the
    /// dead-letter stream with `reason` once its last attempt has failed.
    pub async fn fail(&mut self, entries: &[Reserved], reason: &str) -> Result<()> {
        for reserved in entries {
            if let Some(holding) = self.take(reserved) {
                self.fail_holding(holding, reason);
            }
        }
        Ok(())
    }

    /// Fails an event handed out by [`reserve_held`](Self::reserve_held), as
    /// [`fail`](Self::fail) does.
    pub(super) fn fail_held(&mut self, held: Held, reason: &str) {
        self.fail_holding(held.holding, reason);
    }

    /// Dead-letters an event handed out by [`reserve_held`](Self::reserve_held) at once, for
    /// `reason`.
    pub(super) fn dead_letter_held(&mut self, held: Held, reason: String) {
        Counters::add(&self.counters.failed, 1);
        let attempts = held.reserved.attempt;
        self.dead_letter(held.holding.condemned(reason, attempts));
    }

    /// Acknowledges an event handed out by [`reserve_held`](Self::reserve_held) that its caller
    /// does not handle, counting it as skipped.
    pub(super) fn skip_held(&mut self, held: Held) {
        Counters::add(&self.counters.skipped, 1);
        drop(held.holding.ack(&self.acks));
    }

    /// Where acknowledgements go, for events handed out whole.
    pub(super) fn acks(&self) -> Acks {
        self.acks.clone()
    }

    /// The consumer's settings.
    pub(super) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A failed event comes back after its backoff, or goes to the dead letters after its last
    /// attempt.
    fn fail_holding(&mut self, holding: Holding, reason: &str) {
        Counters::add(&self.counters.failed, 1);
        let attempt = holding.attempts.current(&holding.unsettled.kept);
        if attempt >= self.settings.max_attempts {
            let reason = format!("failed after {attempt} attempts: {reason}");
            self.dead_letter(holding.condemned(reason, attempt));
        } else {
            Counters::add(&self.counters.retried, 1);
            let due = Instant::now() + self.settings.backoff.delay(attempt);
            self.retries.push((due, holding));
        }
    }

    /// Stops taking entries and waits, up to the shutdown timeout, until dead-letter moves under
    /// way have landed, then until acknowledgements have (given what is left of the timeout, and a
    /// second at least). Entries reserved and not acknowledged stay pending for another consumer
    /// to take over, as do those of moves given up.
    ///
    /// # Errors
    ///
    /// [`Error::Unsettled`] naming the streams whose acknowledgements or dead-letter moves had not
    /// landed by then (Redis taking no write meanwhile).
    pub async fn close(self) -> Result<()> {
        let Self {
            settings,
            mut moves,
            acks,
            mut acknowledging,
            keeping,
            moving,
            stop,
            ..
        } = self;
        let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
        let mut unsettled = unfinished(&mut moves, deadline).await;
        // The acknowledging tasks end once their queues are closed and drained: moves given up
        // hold them open no longer.
        drop(moves);
        drop(acks);
        let grace = ack_grace(deadline);
        unsettled.extend(unfinished(&mut acknowledging, grace).await);
        let settled = settled(unsettled);
        if let Err(error) = &settled {
            tracing::error!(%error, "closing");
        }
        stop.cancel();
        let _ = keeping.await;
        let _ = moving.await;
        settled
    }

    /// Stops holding a reserved event; `None` if it is not held (acknowledged or failed already).
    fn take(&mut self, reserved: &Reserved) -> Option<Holding> {
        self.reserved.remove(&(
            reserved.stream.clone(),
            reserved.entry_id.clone(),
            reserved.part,
        ))
    }

    /// Keeps an entry read or claimed by a request `sent` then, and decodes its events into
    /// `candidates`; one that cannot be decoded goes to the dead-letter stream instead.
    fn admit(
        &mut self,
        stream_index: usize,
        entry: StreamEntry,
        deliveries: u32,
        sent: Instant,
        candidates: &mut Vec<Holding>,
    ) {
        let stream = Arc::clone(&self.streams[stream_index]);
        let kept = self
            .keeper
            .keep(&stream, &entry.id, deliveries, sent.into());
        let unsettled = Unsettled::new(kept, None, None);
        let decoded = Envelope::decode_entry(&entry.fields);
        let entry = Arc::new(entry);
        let events = match decoded {
            Ok(Decoded::One(envelope)) => vec![(envelope.check_body().map(|()| envelope), None)],
            Ok(Decoded::Packed(events)) => {
                unsettled.holds_events(events.len());
                events
                    .into_iter()
                    .enumerate()
                    .map(|(index, event)| {
                        let part = Part {
                            index,
                            data: event.data,
                        };
                        (event.envelope, Some(part))
                    })
                    .collect()
            }
            Err(error) => vec![(Err(error), None)],
        };
        for (envelope, part) in events {
            match envelope {
                Ok(envelope) => candidates.push(Holding {
                    stream_index,
                    entry: Arc::clone(&entry),
                    part,
                    envelope: self.settings.type_names.apply(envelope),
                    hold: None,
                    unsettled: Arc::clone(&unsettled),
                    attempts: Attempts::default(),
                }),
                Err(error) => {
                    Counters::add(&self.counters.failed, 1);
                    self.dead_letter(Condemned {
                        stream_index,
                        entry: Arc::clone(&entry),
                        part,
                        unsettled: Arc::clone(&unsettled),
                        hold: None,
                        event_type: None,
                        reason: Failure::Decode(error).to_string(),
                        attempts: deliveries,
                    });
                }
            }
        }
    }

    /// Takes the idempotency holds of `candidates` and reserves those that hold theirs and are
    /// still this consumer's; acknowledges repeats, dead-letters entries out of attempts, puts
    /// aside those whose event another entry is handling, and gives up those another consumer
    /// took.
    async fn hold_and_reserve(&mut self, candidates: Vec<Holding>) -> Result<Vec<Held>> {
        let mut candidates = candidates;
        if self.settings.idempotent {
            let holds = self.take_holds(&candidates).await;
            let mut kept = Vec::with_capacity(candidates.len());
            for (mut holding, hold) in candidates.into_iter().zip(holds) {
                match hold {
                    Some((hold @ (Hold::Taken | Hold::Again), digest)) => {
                        let packed = holding.part.is_some();
                        holding
                            .unsettled
                            .kept
                            .count_from_first_if_taken_anew(hold, packed);
                        holding.hold = Some(digest);
                        kept.push(holding);
                    }
                    Some((Hold::Done | Hold::Dead, _)) => {
                        Counters::add(&self.counters.duplicates, 1);
                        self.acks
                            .handled(holding.stream_index, &holding.unsettled, None, None);
                    }
                    // Busy, or Redis failed: look again at the next reserve.
                    Some((Hold::Busy, _)) | None => self.busy.push(holding),
                }
            }
            candidates = kept;
        }
        let mut reserved = Vec::with_capacity(candidates.len());
        for holding in candidates {
            // Handed out only while still this consumer's: a caller that left this call unpolled
            // past `claim_idle` may find another consumer took its entries meanwhile.
            if !holding
                .unsettled
                .kept
                .is_still_ours(self.settings.claim_idle)
                .await
            {
                continue;
            }
            let attempt = holding.attempts.current(&holding.unsettled.kept);
            if attempt > self.settings.max_attempts {
                let reason = Failure::Exhausted(attempt - 1).to_string();
                self.dead_letter(holding.condemned(reason, attempt - 1));
                continue;
            }
            reserved.push(Held {
                reserved: Reserved {
                    stream: self.streams[holding.stream_index].to_string(),
                    entry_id: holding.entry.id.clone(),
                    part: holding.part.as_ref().map(|part| part.index),
                    attempt,
                    envelope: holding.envelope.clone(),
                },
                holding,
            });
        }
        Ok(reserved)
    }

    /// The holds on the events of `candidates`, with their identities, one script call per
    /// stream; `None` for those whose call failed.
    async fn take_holds(&self, candidates: &[Holding]) -> Vec<Option<(Hold, Digest)>> {
        let mut holds = vec![None; candidates.len()];
        for (index, stream) in self.streams.iter().enumerate() {
            let of_stream: Vec<usize> = (0..candidates.len())
                .filter(|at| candidates[*at].stream_index == index)
                .collect();
            if of_stream.is_empty() {
                continue;
            }
            let requests: Vec<HoldRequest> = of_stream
                .iter()
                .map(|&at| {
                    let holding = &candidates[at];
                    let digest = Digest::of(&holding.envelope, None, self.settings.identity);
                    HoldRequest::of(&holding.entry, holding.part.as_ref(), digest)
                })
                .collect();
            match self
                .commands
                .begin(stream, &requests, self.settings.marks())
                .await
            {
                Ok(taken) => {
                    self.counters.recovered(Operation::Hold, stream);
                    for ((at, hold), request) in of_stream.into_iter().zip(taken).zip(&requests) {
                        holds[at] = Some((hold, request.digest));
                    }
                }
                Err(error) => self.counters.stalled(Operation::Hold, stream, &error),
            }
        }
        holds
    }

    /// Moves `condemned` to the dead-letter stream in the background, retried until it lands;
    /// acknowledges its entry with it when it is the entry's last event unsettled.
    fn dead_letter(&mut self, condemned: Condemned) {
        let commands = self.commands.clone();
        let settings = self.settings.clone();
        let counters = Arc::clone(&self.counters);
        let acks = self.acks.clone();
        let stream = Arc::clone(&self.streams[condemned.stream_index]);
        let stream_of_move = Arc::clone(&stream);
        let moving = tokio::spawn(async move {
            let acknowledge = condemned.unsettled.is_last();
            let doomed = Doomed {
                stream: &stream,
                entry: &condemned.entry,
                part: condemned.part.as_ref(),
                acknowledge,
                event_type: condemned.event_type,
                reason: condemned.reason,
                attempts: condemned.attempts,
                holds: EventHolds::dead([condemned.hold, None]),
            };
            let moved = move_to_dead_letters(&commands, &settings, &counters, doomed).await;
            if moved.is_some() && !acknowledge {
                acks.settled_elsewhere(condemned.stream_index, &condemned.unsettled);
            }
            // Kept until the move has landed.
            drop(condemned.unsettled);
        });
        self.moves
            .push((AbortOnDropHandle::new(moving), stream_of_move));
    }
}

impl Holding {
    /// Acknowledges the event (marking it done); the receiver completes once that has landed.
    fn ack(self, acks: &Acks) -> oneshot::Receiver<()> {
        let (sender, landed) = oneshot::channel();
        acks.handled(self.stream_index, &self.unsettled, self.hold, Some(sender));
        landed
    }

    /// This event, on its way to the dead-letter stream for `reason` after `attempts`.
    fn condemned(self, reason: String, attempts: u32) -> Condemned {
        Condemned {
            stream_index: self.stream_index,
            event_type: Some(self.envelope.event_type),
            entry: self.entry,
            part: self.part,
            unsettled: self.unsettled,
            hold: self.hold,
            reason,
            attempts,
        }
    }
}
