//! Faults a test inflicts on a redis-server: refusing writes for memory, stalling, killing every
//! client connection, refusing a command to the library's user, deliveries whose replies were
//! lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::task::AbortOnDropHandle;

use super::{RedisServer, connection};

/// `CONFIG SET <parameter> <value>`.
pub(crate) async fn config_set(server: &RedisServer, parameter: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(parameter)
        .arg(value)
        .query_async(&mut connection(server).await)
        .await
        .unwrap();
}

/// Delivers every entry of `stream` to a consumer `ghost` of `group` (made at the stream's start)
/// `times` times, one read and then claims, as reads and claims whose replies a dropped connection
/// or an unconfirmed write lost would: deliveries counted, no handler started.
pub(crate) async fn lost_deliveries(server: &RedisServer, stream: &str, group: &str, times: u32) {
    let mut redis = connection(server).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .query_async(&mut redis)
        .await
        .unwrap();
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("ghost")
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();
    let ids: Vec<String> = read.keys[0]
        .ids
        .iter()
        .map(|entry| entry.id.clone())
        .collect();
    for _ in 1..times {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(stream)
            .arg(group)
            .arg("ghost")
            .arg(0)
            .arg(&ids)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
}

/// Past its memory limit and told to evict nothing, Redis refuses every write that needs memory
/// (`OOM command not allowed`), until [`accept_writes`].
pub(crate) async fn refuse_writes(server: &RedisServer) {
    config_set(server, "maxmemory-policy", "noeviction").await;
    config_set(server, "maxmemory", "1").await;
}

/// Lifts [`refuse_writes`].
pub(crate) async fn accept_writes(server: &RedisServer) {
    config_set(server, "maxmemory", "0").await;
}

/// Stalls the server for `duration` (`DEBUG SLEEP`): it answers nothing meanwhile, then serves
/// what queued up. Returns at once; the stall ends by itself.
pub(crate) fn stall(server: &RedisServer, duration: Duration) -> AbortOnDropHandle<()> {
    let url = server.url().to_owned();
    let handle = tokio::spawn(async move {
        let mut redis = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new().set_response_timeout(None),
            )
            .await
            .unwrap();
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(duration.as_secs_f64())
            .query_async(&mut redis)
            .await
            .unwrap();
    });
    AbortOnDropHandle::new(handle)
}

/// Kills every other client's connection every `period` until dropped.
#[derive(Debug)]
pub(crate) struct ConnectionKiller {
    killed: Arc<AtomicU64>,
    _task: AbortOnDropHandle<()>,
}

/// Kills every client connection but `redis`'s own (`CLIENT KILL TYPE normal SKIPME yes`);
/// how many it killed (none when the command failed).
pub(crate) async fn kill_clients(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(redis)
        .await
        .unwrap_or(0)
}

impl ConnectionKiller {
    pub(crate) async fn start(server: &RedisServer, period: Duration) -> Self {
        let killed = Arc::new(AtomicU64::new(0));
        let mut redis = connection(server).await;
        let counted = Arc::clone(&killed);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                counted.fetch_add(kill_clients(&mut redis).await, Ordering::Relaxed);
            }
        });
        Self {
            killed,
            _task: AbortOnDropHandle::new(task),
        }
    }

    /// Connections killed so far.
    pub(crate) fn killed(&self) -> u64 {
        self.killed.load(Ordering::Relaxed)
    }
}

/// Takes `command` (such as `xack`) from the default user, the one the library connects as,
/// until [`allow`]: Redis answers it `NOPERM`, also inside scripts.
pub(crate) async fn deny(server: &RedisServer, command: &str) {
    acl_setuser(server, &format!("-{command}")).await;
}

/// Gives `command` back to the default user.
pub(crate) async fn allow(server: &RedisServer, command: &str) {
    acl_setuser(server, &format!("+{command}")).await;
}

async fn acl_setuser(server: &RedisServer, rule: &str) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg(rule)
        .query_async(&mut connection(server).await)
        .await
        .unwrap();
}
