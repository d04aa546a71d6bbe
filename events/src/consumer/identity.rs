//! What makes two entries one event, for idempotency: the [`Identity`] a consumer or handler
//! chooses, the [`Digest`] of an event's identity that its marks are keyed by, and where and for
//! how long those marks live ([`MarkSettings`]).

use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::Envelope;

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

/// A 16-byte digest of an event's identity: what idempotency marks and holds are keyed by. The
/// digest of an event id that is a UUIDv7 starts with the event's time, in milliseconds: its marks
/// are kept by time (see `lua/pages.lua`); the others' by when they were written (`lua/marks.lua`).
/// Scripts take digests in their order: those kept by when they were written first, then those
/// kept by time, in time order, so that each page's are side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Digest {
    /// Whether the first six bytes are the event's time.
    timed: bool,
    bytes: [u8; 16],
    /// Of a digest kept by time, the id's six bytes after its time, as they came (see
    /// [`Digest::id_order`]).
    sequence: [u8; 6],
}

impl Digest {
    /// The identity of the event in `envelope`: its declared key (scoped by its type) when it has
    /// one, else as `identity` says.
    pub(crate) fn of(envelope: &Envelope, declared: Option<&str>, identity: Identity) -> Self {
        if declared.is_none()
            && identity == Identity::EventId
            && let Some(id) = uuid::Uuid::try_parse(&envelope.id)
                .ok()
                .filter(|id| id.get_version_num() == 7)
        {
            return Self::of_time_ordered(id.into_bytes());
        }
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
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&hasher.finalize()[..16]);
        Self {
            timed: false,
            bytes,
            sequence: [0; 6],
        }
    }

    /// The digest of a UUIDv7 event id: its time (the first six bytes), then its other ten bytes
    /// mixed, so that each bit of the seventh (which splits busy pages) and of the last eight (by
    /// which a page's records are searched) depends on all of them, however the id's generator
    /// filled them (counters, fixed version and variant bits). The mix is one to one, so distinct
    /// ids never share a digest.
    fn of_time_ordered(id: [u8; 16]) -> Self {
        const BITS: u32 = 80;
        const MASK: u128 = (1 << BITS) - 1;
        let mut rest = id[6..]
            .iter()
            .fold(0_u128, |rest, &byte| rest << 8 | u128::from(byte));
        // Odd multipliers and shifts of half the width or more: each step is one to one.
        for multiplier in [0xd6e8_feb8_6659_fd93_3f5b_u128, 0xa076_1d64_78bd_642f_4c1b] {
            rest = rest.wrapping_mul(multiplier) & MASK;
            rest ^= rest >> (BITS / 2);
        }
        let mut bytes = [0; 16];
        bytes[..6].copy_from_slice(&id[..6]);
        bytes[6..].copy_from_slice(&rest.to_be_bytes()[6..]);
        let mut sequence = [0; 6];
        sequence.copy_from_slice(&id[6..12]);
        Self {
            timed: true,
            bytes,
            sequence,
        }
    }

    /// The digest's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Of a digest kept by time, the first twelve bytes of the event's id: its time, then where its
    /// generator put it among the ids of that millisecond. The ids of one generator that counts
    /// within a millisecond (as `Uuid::now_v7` does) come in this order, so a batch read from a
    /// backlog of one publisher lies apart from the events held before it, and the scripts need
    /// not look its events up among those (see `pages_none_held` in `lua/pages.lua`).
    pub(crate) fn id_order(&self) -> Option<[u8; 12]> {
        self.timed.then(|| {
            let mut order = [0; 12];
            order[..6].copy_from_slice(&self.bytes[..6]);
            order[6..].copy_from_slice(&self.sequence);
            order
        })
    }

    /// Whether its marks are kept by the event's time.
    pub(crate) fn is_timed(&self) -> bool {
        self.timed
    }

    /// The event's time, in milliseconds since the epoch, when its marks are kept by it.
    pub(crate) fn millis(&self) -> Option<u64> {
        self.timed.then(|| {
            self.bytes[..6]
                .iter()
                .fold(0, |millis, &byte| millis << 8 | u64::from(byte))
        })
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

/// The most marks per shard before a split, whatever the server allows: Redis scans a listpack
/// hash's fields on every operation, so a shard of twice 41 marks cost 3.5 µs of Redis CPU per
/// `HSETNX` and 100 µs per split where twice 32 cost 1-1.5 µs; the marks take about 28 bytes each
/// instead of 25 (`cargo bench --bench marks`).
const MOST_PER_SHARD: u64 = 32;

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
            load: ((twice * twice / 2.0) as u64).clamp(2, MOST_PER_SHARD),
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
    fn ids_of_one_millisecond_counted_up_get_distinct_digests_spread_over_the_seventh_byte() {
        // UUIDv7s of one millisecond whose generator counts up in the bits after the version.
        let digests: Vec<Digest> = (0..512_u32)
            .map(|count| {
                let id = format!("018bcfe5-6800-7{:03x}-8000-000000000000", count);
                Digest::of(&envelope(&id, "t.x", "{}"), None, Identity::EventId)
            })
            .collect();
        assert!(
            digests
                .iter()
                .all(|digest| digest.millis() == Some(1_700_000_000_000))
        );
        let distinct: std::collections::HashSet<&[u8]> =
            digests.iter().map(Digest::bytes).collect();
        assert_eq!(distinct.len(), 512);
        let mut halves = [0; 2];
        for digest in &digests {
            halves[usize::from(digest.bytes()[6] >> 7)] += 1;
        }
        assert!(halves.iter().all(|&half| half > 200), "{halves:?}");
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
    fn uuidv7_event_ids_give_digests_that_start_with_the_event_time() {
        let v7 = envelope("01a239c3-261f-72ec-abe6-7543b0d09100", "audit.login", "{}");
        let digest = Digest::of(&v7, None, Identity::EventId);
        assert!(digest.is_timed());
        assert_eq!(digest.bytes()[..6], [0x01, 0xa2, 0x39, 0xc3, 0x26, 0x1f]);
        let v4 = envelope("9b2f6a4e-8c1d-4f3a-9e7b-2d5c8a1f0e3b", "audit.login", "{}");
        assert!(!Digest::of(&v4, None, Identity::EventId).is_timed());
        assert!(!Digest::of(&v7, None, Identity::Content).is_timed());
        assert!(!Digest::of(&v7, Some("k"), Identity::EventId).is_timed());
    }

    #[test]
    fn ids_made_one_after_another_come_in_id_order() {
        let orders: Vec<[u8; 12]> = (0..1_000)
            .map(|_| {
                let id = uuid::Uuid::now_v7().to_string();
                let digest = Digest::of(&envelope(&id, "t.x", "{}"), None, Identity::EventId);
                digest.id_order().unwrap()
            })
            .collect();
        assert!(orders.windows(2).all(|pair| pair[0] < pair[1]));
        let v7 = envelope("01a239c3-261f-72ec-abe6-7543b0d09100", "t.x", "{}");
        let order = Digest::of(&v7, None, Identity::EventId).id_order().unwrap();
        assert_eq!(
            order,
            [
                1, 0xa2, 0x39, 0xc3, 0x26, 0x1f, 0x72, 0xec, 0xab, 0xe6, 0x75, 0x43
            ]
        );
        assert_eq!(Digest::of(&v7, None, Identity::Content).id_order(), None);
    }

    #[test]
    fn digests_order_untimed_first_then_timed_in_time_order() {
        let later = envelope("01a239c3-2620-72ec-abe6-7543b0d09100", "audit.login", "{}");
        let earlier = envelope("01a239c3-261f-7fff-bfff-ffffffffffff", "audit.login", "{}");
        let untimed = envelope("1", "audit.login", "{}");
        let digests = [&later, &untimed, &earlier]
            .map(|envelope| Digest::of(envelope, None, Identity::EventId));
        let mut sorted = digests;
        sorted.sort_unstable();
        assert_eq!(sorted, [digests[1], digests[2], digests[0]]);
    }

    #[test]
    fn shards_stay_under_the_listpack_limit() {
        let load = |limit| MarkSettings::new(Duration::from_secs(1), limit).load;
        assert_eq!(load(128), 32);
        assert_eq!(load(64), 17);
        assert_eq!(load(32), 6);
        assert_eq!(load(512), 32);
        assert_eq!(load(0), 2);
    }
}
