//! Pull mode: the caller reserves entries, handles them its own way, then acknowledges or fails them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Failure;
use super::config::Settings;
use super::dead_letter::dead_letter_fields;
use super::group::Group;
use crate::connection::Connection;
use crate::{Envelope, Error, Result, StreamEntry, keys};

/// An entry reserved by [`PullConsumer::reserve`]: decoded, and pending on this consumer until it
/// is acknowledged or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// The stream it was read from.
    pub stream: String,
    /// Its id there.
    pub entry_id: String,
    /// Which delivery this is, 1 for the first.
    pub attempt: u32,
    /// The event.
    pub envelope: Envelope,
}

/// What this consumer knows of an entry it reserved.
#[derive(Debug)]
struct Held {
    stream: String,
    attempt: u32,
    done_key: Option<String>,
    entry: StreamEntry,
}

/// A consumer whose caller drives each entry's lifecycle: [`reserve`](Self::reserve),
/// then [`ack`](Self::ack) or [`fail`](Self::fail). Failed entries come back from `reserve` after
/// their backoff, and go to the dead-letter stream after the last attempt; undecodable entries go
/// there at once and are never returned.
#[derive(Debug)]
pub struct PullConsumer {
    group: Group<Connection>,
    settings: Settings,
    /// Reserved entries by stream and entry id.
    held: HashMap<(String, String), Held>,
    retries: Vec<(Instant, String, String, u32)>,
    last_claim: Option<Instant>,
}

impl PullConsumer {
    pub(crate) async fn start(group: Group<Connection>, settings: Settings) -> Result<Self> {
        group
            .ensure_all(&settings.streams, &settings.start_from)
            .await?;
        Ok(Self {
            group,
            settings,
            held: HashMap::new(),
            retries: Vec::new(),
            last_claim: None,
        })
    }

    /// Up to `n` entries: first failed ones whose backoff has passed, then entries idle too long
    /// on other consumers, then new ones, waiting up to the block time when there are none.
    pub async fn reserve(&mut self, n: usize) -> Result<Vec<Reserved>> {
        let mut reserved = Vec::new();
        self.take_due_retries(n, &mut reserved).await?;
        if self
            .last_claim
            .is_none_or(|at| at.elapsed() >= self.settings.claim_interval)
        {
            self.last_claim = Some(Instant::now());
            for stream in self.settings.streams.clone() {
                let room = n.saturating_sub(reserved.len());
                if room == 0 {
                    break;
                }
                let (_, entries, _) = self
                    .group
                    .claim_idle(&stream, self.settings.claim_idle, "0-0", room)
                    .await
                    .map_err(|source| Error::Read {
                        stream: stream.clone(),
                        source,
                    })?;
                for (entry, attempt) in entries {
                    self.admit(&stream, entry, attempt, &mut reserved).await?;
                }
            }
        }
        let room = n.saturating_sub(reserved.len());
        if room > 0 {
            // Wait for new entries only when there is nothing else to return.
            let block = reserved.is_empty().then_some(self.settings.block);
            let streams = self.settings.streams.clone();
            let read = self
                .group
                .read(&streams, room, block)
                .await
                .map_err(|source| Error::Read {
                    stream: streams.join(", "),
                    source,
                })?;
            for (stream, entries) in read {
                for entry in entries {
                    self.admit(&stream, entry, 1, &mut reserved).await?;
                }
            }
        }
        Ok(reserved)
    }

    /// Acknowledges handled entries (and marks them done for idempotency).
    pub async fn ack(&mut self, entries: &[Reserved]) -> Result<()> {
        let mut by_stream: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
        for reserved in entries {
            let Some(held) = self.release(reserved) else {
                continue;
            };
            let (ids, keys) = by_stream.entry(held.stream).or_default();
            ids.push(held.entry.id);
            keys.extend(held.done_key);
        }
        for (stream, (ids, keys)) in by_stream {
            self.group
                .settle(&stream, &ids, &keys, self.settings.idempotency_ttl)
                .await
                .map_err(|source| Error::Read { stream, source })?;
        }
        Ok(())
    }

    /// Fails entries: each comes back from `reserve` after its backoff, or goes to the
    /// dead-letter stream with `reason` once its last attempt has failed.
    pub async fn fail(&mut self, entries: &[Reserved], reason: &str) -> Result<()> {
        for reserved in entries {
            let Some(held) = self.release(reserved) else {
                continue;
            };
            if held.attempt >= self.settings.max_attempts {
                let reason = format!("failed after {} attempts: {reason}", held.attempt);
                self.dead_letter(&held.stream, &held.entry, held.attempt, &reason)
                    .await?;
            } else {
                let due = Instant::now() + self.settings.backoff.delay(held.attempt);
                self.retries
                    .push((due, held.stream, held.entry.id, held.attempt));
            }
        }
        Ok(())
    }

    /// Stops holding a reserved entry; `None` if it is not held (acknowledged or failed already).
    fn release(&mut self, reserved: &Reserved) -> Option<Held> {
        self.held
            .remove(&(reserved.stream.clone(), reserved.entry_id.clone()))
    }

    /// Claims back failed entries whose backoff has passed.
    async fn take_due_retries(&mut self, n: usize, reserved: &mut Vec<Reserved>) -> Result<()> {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) =
            self.retries.drain(..).partition(|(at, ..)| *at <= now);
        self.retries = waiting;
        for (index, (at, stream, id, attempt)) in due.into_iter().enumerate() {
            if index >= n {
                self.retries.push((at, stream, id, attempt));
                continue;
            }
            let reclaimed = self
                .group
                .reclaim(&stream, &id, Duration::ZERO)
                .await
                .map_err(|source| Error::Read {
                    stream: stream.clone(),
                    source,
                })?;
            if let Some(entry) = reclaimed {
                self.admit(&stream, entry, attempt + 1, reserved).await?;
            }
        }
        Ok(())
    }

    /// Decodes an entry and holds it for the caller; dead-letters it when it is undecodable or out
    /// of attempts, and acknowledges it when idempotency says it was handled already.
    async fn admit(
        &mut self,
        stream: &str,
        entry: StreamEntry,
        attempt: u32,
        reserved: &mut Vec<Reserved>,
    ) -> Result<()> {
        let envelope = match entry.decode() {
            Ok(envelope) => envelope,
            Err(error) => {
                let reason = Failure::Decode(error).to_string();
                return self.dead_letter(stream, &entry, attempt, &reason).await;
            }
        };
        if attempt > self.settings.max_attempts {
            let reason = Failure::Exhausted(attempt - 1).to_string();
            return self.dead_letter(stream, &entry, attempt - 1, &reason).await;
        }
        let done_key = if self.settings.idempotent {
            let key = keys::idempotency_key(stream, &self.settings.group, &envelope.hash);
            let mark: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut self.group.connection.clone())
                .await
                .map_err(|source| Error::Read {
                    stream: stream.to_owned(),
                    source,
                })?;
            if mark.as_deref() == Some("done") {
                return self
                    .group
                    .settle(
                        stream,
                        std::slice::from_ref(&entry.id),
                        &[],
                        self.settings.idempotency_ttl,
                    )
                    .await
                    .map_err(|source| Error::Read {
                        stream: stream.to_owned(),
                        source,
                    });
            }
            Some(key)
        } else {
            None
        };
        reserved.push(Reserved {
            stream: stream.to_owned(),
            entry_id: entry.id.clone(),
            attempt,
            envelope,
        });
        let held = Held {
            stream: stream.to_owned(),
            attempt,
            done_key,
            entry,
        };
        self.held
            .insert((held.stream.clone(), held.entry.id.clone()), held);
        Ok(())
    }

    async fn dead_letter(
        &self,
        stream: &str,
        entry: &StreamEntry,
        attempts: u32,
        reason: &str,
    ) -> Result<()> {
        let settings = &self.settings;
        let fields = dead_letter_fields(
            stream,
            &settings.group,
            &settings.consumer,
            entry,
            reason,
            attempts,
        );
        self.group
            .dead_letter(
                stream,
                &settings.dead_letter_stream(stream),
                &entry.id,
                None,
                settings.dead_letter_max_len,
                &fields,
            )
            .await
            .map_err(|source| Error::Read {
                stream: stream.to_owned(),
                source,
            })?;
        Ok(())
    }
}
