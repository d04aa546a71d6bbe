//! What a consumer must be allowed to run in Redis: its own commands and those inside its scripts,
//! on the keys of its streams, dead-letter streams, delayed events, marks and partition leases.

use super::config::Settings;
use super::group::Group;
use crate::Result;
use crate::access::{Needed, check, needed};
use crate::connection::Connection;
use crate::keys::{
    delayed_events, lease_members, lease_owner, lease_reader, marks_prefix, unmovable_events,
};

/// Every command the consumer of `settings` runs, with the keys it runs them on.
fn commands(settings: &Settings) -> Vec<Needed> {
    let (group, consumer) = (settings.group.as_str(), settings.consumer.as_str());
    let mut all = vec![
        needed("to run its scripts", &["EVALSHA", "0", "0"]),
        needed("to load its scripts", &["SCRIPT", "LOAD", "return 0"]),
        needed("to move entries to the dead-letter stream", &["MULTI"]),
        needed("to move entries to the dead-letter stream", &["EXEC"]),
        needed("to date idempotency marks", &["TIME"]),
    ];
    for stream in &settings.streams {
        let dead_letters = settings.dead_letter_stream(stream);
        let marks = format!("{}:0:0", marks_prefix(stream, group));
        let reading: [(&str, &[&str]); 7] = [
            (
                "to create its group",
                &["XGROUP", "CREATE", stream, group, "$", "MKSTREAM"],
            ),
            (
                "to read new entries",
                &[
                    "XREADGROUP",
                    "GROUP",
                    group,
                    consumer,
                    "COUNT",
                    "1",
                    "STREAMS",
                    stream,
                    ">",
                ],
            ),
            ("to acknowledge entries", &["XACK", stream, group, "0-0"]),
            (
                "to keep and take over entries",
                &["XCLAIM", stream, group, consumer, "0", "0-0"],
            ),
            (
                "to find idle and pending entries",
                &["XPENDING", stream, group],
            ),
            ("to find where its group is", &["XINFO", "GROUPS", stream]),
            (
                "to create a vanished group again",
                &["XRANGE", stream, "-", "+"],
            ),
        ];
        let dead_lettering: [(&str, &[&str]); 4] = [
            (
                "to move entries to the dead-letter stream",
                &["XADD", &dead_letters, "*", "f", "v"],
            ),
            (
                "to move entries to the dead-letter stream",
                &["XDEL", &dead_letters, "0-0"],
            ),
            (
                "to move entries to the dead-letter stream",
                &["XREVRANGE", &dead_letters, "+", "-"],
            ),
            (
                "to move entries to the dead-letter stream",
                &["TYPE", &dead_letters],
            ),
        ];
        let marking: [(&str, &[&str]); 9] = [
            ("for idempotency marks", &["HGET", &marks, "f"]),
            ("for idempotency marks", &["HMGET", &marks, "f"]),
            ("for idempotency marks", &["HSET", &marks, "f", "v"]),
            ("for idempotency marks", &["HSETNX", &marks, "f", "v"]),
            ("for idempotency marks", &["HGETALL", &marks]),
            ("for idempotency marks", &["HDEL", &marks, "f"]),
            ("for idempotency marks", &["PEXPIREAT", &marks, "0"]),
            ("for idempotency marks", &["GET", &marks]),
            ("for idempotency marks", &["SET", &marks, "v", "PXAT", "1"]),
        ];
        let delayed = delayed_events(stream);
        let unmovable = unmovable_events(stream);
        let moving: [(&str, &[&str]); 5] = [
            (
                "to move delayed events into the stream",
                &["ZRANGEBYSCORE", &delayed, "0", "0"],
            ),
            (
                "to move delayed events into the stream",
                &["ZRANGE", &delayed, "0", "0"],
            ),
            (
                "to move delayed events into the stream",
                &["ZREM", &delayed, "m"],
            ),
            (
                "to move delayed events into the stream",
                &["XADD", stream, "*", "f", "v"],
            ),
            (
                "to move delayed events into the stream",
                &["ZADD", &unmovable, "0", "m"],
            ),
        ];
        for (purpose, words) in reading
            .into_iter()
            .chain(dead_lettering)
            .chain(marking)
            .chain(moving)
        {
            all.push(needed(purpose, words));
        }
    }
    for logical in &settings.partitioned {
        let lease = lease_owner(&logical.stream, group);
        let reader = lease_reader(&logical.stream, group);
        let members = lease_members(&logical.stream, group);
        let leasing: [(&str, &[&str]); 12] = [
            ("for partition leases", &["GET", &lease]),
            ("for partition leases", &["SET", &lease, "v"]),
            ("for partition leases", &["PEXPIRE", &lease, "1"]),
            ("for partition leases", &["DEL", &lease]),
            ("for partition leases", &["GET", &reader]),
            ("for partition leases", &["SET", &reader, "v"]),
            ("for partition leases", &["DEL", &reader]),
            ("for partition leases", &["ZADD", &members, "0", "m"]),
            (
                "for partition leases",
                &["ZREMRANGEBYSCORE", &members, "0", "0"],
            ),
            ("for partition leases", &["ZCARD", &members]),
            ("for partition leases", &["ZREM", &members, "m"]),
            ("for partition leases", &["PEXPIRE", &members, "1"]),
        ];
        for (purpose, words) in leasing {
            all.push(needed(purpose, words));
        }
    }
    all
}

/// Checks that the user of `group`'s connection may run every command the consumer of
/// `settings` needs; names the first it may not.
pub(crate) async fn check_access(group: &Group<Connection>, settings: &Settings) -> Result<()> {
    check(&group.connection, "consumer", &commands(settings), true).await
}
