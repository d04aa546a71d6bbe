//! Names of the keys that belong to a stream: its dead-letter stream, delayed events and
//! idempotency marks.
//!
//! They share the stream's hash slot, so one Lua script may touch them together on Redis Cluster: a
//! stream named `orders` hashes on all of `orders`, and so do `{orders}:dlq` and
//! `{orders}:done:..`, whose hash tag is `orders`. A stream whose name already has a hash tag keeps
//! it: `{shop}:orders` gives `{shop}:orders:dlq`.

/// The stream's name with a hash tag that selects the same slot as the stream itself.
pub fn slot_prefix(stream: &str) -> String {
    if has_hash_tag(stream) {
        stream.to_owned()
    } else {
        format!("{{{stream}}}")
    }
}

/// Checks that keys in the slot of `stream` can be named: a name with a `}` needs a hash tag of its
/// own, since wrapping it in braces would change its slot.
pub(crate) fn check_stream_name(stream: &str) -> Result<(), String> {
    if stream.is_empty() {
        return Err("the stream name is empty".into());
    }
    if stream.contains('}') && !has_hash_tag(stream) {
        return Err(format!(
            "stream `{stream}` contains `}}` but no hash tag: name it with a `{{tag}}` of its own"
        ));
    }
    Ok(())
}

/// Whether Redis Cluster hashes `key` on a `{tag}` inside it rather than on the whole key.
fn has_hash_tag(key: &str) -> bool {
    key.find('{')
        .and_then(|open| key[open + 1..].find('}'))
        .is_some_and(|length| length > 0)
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of the key, or of its `{tag}`, modulo 16,384.
pub(crate) fn slot(key: &str) -> u16 {
    let hashed = match key
        .find('{')
        .and_then(|open| Some((open, key[open + 1..].find('}')?)))
    {
        Some((open, length)) if length > 0 => &key[open + 1..open + 1 + length],
        _ => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed.as_bytes()) % 16_384
}

/// The default dead-letter stream of `stream`.
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{}:dlq", slot_prefix(stream))
}

/// The sorted set holding `stream`'s delayed events until their time.
pub fn delayed_events(stream: &str) -> String {
    format!("{}:delayed", slot_prefix(stream))
}

/// The sorted set holding `stream`'s delayed events that could not be added to it when due (not
/// written by this crate, or too large), kept for an operator.
pub fn unmovable_events(stream: &str) -> String {
    format!("{}:delayed:unmovable", slot_prefix(stream))
}

/// The prefix of the keys holding `group`'s idempotency marks on `stream`: `<prefix>:<bucket>` and
/// `<prefix>:<bucket>:<shard>`.
pub(crate) fn marks_prefix(stream: &str, group: &str) -> String {
    format!("{}:marks:{group}", slot_prefix(stream))
}

/// The key naming which consumer of `group` holds the lease of the partition `stream`.
pub(crate) fn lease_owner(stream: &str, group: &str) -> String {
    format!("{}:owner:{group}", slot_prefix(stream))
}

/// The key naming which consumer of `group` last read the partition `stream`, kept while a read
/// of it may still be under way (see `lua/lease.lua`).
pub(crate) fn lease_reader(stream: &str, group: &str) -> String {
    format!("{}:reader:{group}", slot_prefix(stream))
}

/// The sorted set of `group`'s live consumers of the partitioned stream `stream`.
pub(crate) fn lease_members(stream: &str, group: &str) -> String {
    format!("{}:members:{group}", slot_prefix(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_stream_slot() {
        assert_eq!(dead_letter_stream("orders"), "{orders}:dlq");
        assert_eq!(dead_letter_stream("{shop}:orders"), "{shop}:orders:dlq");
        assert_eq!(marks_prefix("orders", "billing"), "{orders}:marks:billing");
    }

    #[test]
    fn a_streams_keys_share_its_slot() {
        for stream in ["orders", "{shop}:orders", "orders:p3"] {
            for key in [
                dead_letter_stream(stream),
                delayed_events(stream),
                unmovable_events(stream),
                marks_prefix(stream, "g"),
            ] {
                assert_eq!(slot(&key), slot(stream), "{key}");
            }
        }
    }

    #[test]
    fn slots_follow_redis_cluster() {
        // The values of the Redis Cluster specification (CRC16 of "123456789" is 0x31C3).
        assert_eq!(slot("foo"), 12_182);
        assert_eq!(slot("123456789"), 12_739);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("orders"), slot(&dead_letter_stream("orders")));
    }

    #[test]
    fn names_with_braces_need_a_hash_tag() {
        assert!(check_stream_name("{shop}:orders").is_ok());
        assert!(check_stream_name("a{}b").is_err());
        assert!(check_stream_name("a}{b").is_err());
        assert!(check_stream_name("").is_err());
        assert_eq!(slot_prefix("a{b"), "{a{b}");
    }
}
