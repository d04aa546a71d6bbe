//! One event of an entry. Most entries hold one; a batch the TypeScript batched publisher packed
//! into one entry holds many, and each is handled, retried and dead-lettered on its own, the entry
//! acknowledged once all are settled (see `settle.rs`).

use super::group::Group;
use super::identity::Digest;
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

/// Entry sequences a packed holder has room for: five decimal digits.
const SEQUENCES: i64 = 100_000;

/// How an event's mark names the entry holding it (see [`holder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Holder {
    /// Packed into a number.
    Packed(i64),
    /// Written out: an id that does not fit a number, or an event of a packed entry.
    Written(String),
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Packed(number) => write!(f, "{number}"),
            Holder::Written(text) => f.write_str(text),
        }
    }
}

/// How the mark of the event `digest` names the entry `entry_id` holding it (`part` of it, for an
/// event of a packed entry): while the entry is pending it holds the event, and once acknowledged
/// it was handled (see `lua/marks.lua`). An entry of one event is packed into a number, so that the
/// mark stays small: its time counted from the event's, for an event kept by time (a few digits,
/// mostly), else its time and sequence side by side; the scripts unpack it (`marks_holder`).
/// Written out are ids that do not fit (a sequence of 100,000 or more, an entry 49 days from its
/// event's time) and events of packed entries, as `<id>#<index>` so that two events of one entry
/// never take each other's hold.
pub(crate) fn holder(entry_id: &str, part: Option<&Part>, digest: &Digest) -> Holder {
    match part {
        Some(part) => Holder::Written(format!("{entry_id}#{}", part.index)),
        None => packed(entry_id, digest)
            .map_or_else(|| Holder::Written(entry_id.to_owned()), Holder::Packed),
    }
}

/// `entry_id` packed into a number for the mark of `digest`, if it fits.
fn packed(entry_id: &str, digest: &Digest) -> Option<i64> {
    let (millis, sequence) = entry_id.split_once('-')?;
    let millis: i64 = millis.parse().ok()?;
    let sequence: i64 = sequence.parse().ok()?;
    if !(0..SEQUENCES).contains(&sequence) {
        return None;
    }
    let Some(event_millis) = digest.millis() else {
        // Time and sequence side by side, which the scripts split at the last five digits: an
        // entry of millisecond 0 would lose its leading zeros.
        return (millis > 0)
            .then(|| millis.checked_mul(SEQUENCES)?.checked_add(sequence))
            .flatten();
    };
    // Within 2^32 ms, so that the scripts unpack it exactly in Lua's doubles.
    let from_event = millis - i64::try_from(event_millis).ok()?;
    (from_event.unsigned_abs() < 1 << 32).then_some(from_event * SEQUENCES + sequence)
}

/// The bytes of a page record (see `lua/pages.lua`): the digest, turned, then the holder's number.
const RECORD: usize = 24;

/// What the packed holder numbers of page records are counted from, so that they are positive
/// and within a Lua number's exact range.
const RECORD_ZERO: i64 = 1 << 49;

/// The hold of the event `digest`, kept by time, by the entry its mark names `holder`, as a page
/// record: the digest's last eight bytes, which are mixed, then its first, the event's time (so
/// that a search of a page's records for one stops at few others); then the number `holder` packs
/// into (see [`holder`]), plus [`RECORD_ZERO`], in eight bytes, big-endian. `None` for a holder
/// written out.
pub(crate) fn page_record(digest: &Digest, holder: &Holder) -> Option<[u8; RECORD]> {
    let &Holder::Packed(number) = holder else {
        return None;
    };
    if !digest.is_timed() || number.unsigned_abs() >= RECORD_ZERO as u64 {
        return None;
    }
    let mut record = [0; RECORD];
    record[..8].copy_from_slice(&digest.bytes()[8..]);
    record[8..16].copy_from_slice(&digest.bytes()[..8]);
    record[16..].copy_from_slice(&(number + RECORD_ZERO).to_be_bytes());
    Some(record)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;
    use crate::consumer::identity::Identity;

    fn digest_of_id(id: &str) -> Digest {
        let mut envelope = Envelope::new("user.created", 1, "o", "{}".into());
        envelope.id = id.into();
        Digest::of(&envelope, None, Identity::EventId)
    }

    #[test]
    fn holders_are_packed_into_numbers_when_they_fit() {
        // A UUIDv7 of 1,700,000,000,000 ms.
        let timed = digest_of_id("018bcfe5-6800-7000-8000-000000000001");
        assert_eq!(timed.millis(), Some(1_700_000_000_000));
        assert_eq!(
            holder("1700000000250-3", None, &timed).to_string(),
            "25000003"
        );
        assert_eq!(
            holder("1699999999000-0", None, &timed).to_string(),
            "-100000000"
        );
        let far = format!("{}-1", 1_700_000_000_000_u64 + (1 << 32));
        assert_eq!(holder(&far, None, &timed).to_string(), far);
        assert_eq!(
            holder("1700000000250-100000", None, &timed).to_string(),
            "1700000000250-100000"
        );
        let untimed = digest_of_id("an-id-of-its-own");
        assert_eq!(untimed.millis(), None);
        assert_eq!(
            holder("1700000000250-3", None, &untimed).to_string(),
            "170000000025000003"
        );
        assert_eq!(holder("5-3", None, &untimed).to_string(), "500003");
        assert_eq!(holder("0-3", None, &untimed).to_string(), "0-3");
        assert_eq!(holder("not an id", None, &untimed).to_string(), "not an id");
        let part = Part {
            index: 2,
            data: String::new(),
        };
        assert_eq!(
            holder("1700000000250-3", Some(&part), &timed).to_string(),
            "1700000000250-3#2"
        );
    }

    #[test]
    fn holds_of_packed_holders_of_events_kept_by_time_are_page_records() {
        let timed = digest_of_id("018bcfe5-6800-7000-8000-000000000001");
        let record = page_record(&timed, &Holder::Packed(-100_000_000)).unwrap();
        assert_eq!(&record[..8], &timed.bytes()[8..]);
        assert_eq!(&record[8..16], &timed.bytes()[..8]);
        let number = u64::from_be_bytes(record[16..].try_into().unwrap());
        assert_eq!(number, (1 << 49) - 100_000_000);
        let written_out = holder("1700000000250-100000", None, &timed);
        assert_eq!(page_record(&timed, &written_out), None);
        assert_eq!(
            page_record(&timed, &Holder::Written("1700000000250-3#2".into())),
            None
        );
        let untimed = digest_of_id("an-id-of-its-own");
        assert_eq!(page_record(&untimed, &Holder::Packed(500_003)), None);
    }
}
