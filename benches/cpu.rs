//! CPU time used so far, in microseconds: Redis's, this process's and its finished children's.
// Each benchmark that includes this uses a part of it.
#![allow(dead_code)]

/// The CPU time Redis has used so far (`INFO cpu`: user and system). Command statistics would
/// count commands run by scripts twice, in the script and on their own.
pub(crate) async fn redis_busy(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(redis)
        .await
        .unwrap();
    let seconds: f64 = info
        .lines()
        .filter(|line| line.starts_with("used_cpu_user:") || line.starts_with("used_cpu_sys:"))
        .filter_map(|line| line.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum();
    (seconds * 1e6) as u64
}

/// The CPU time this process has used so far (user and system).
pub(crate) fn own_busy() -> u64 {
    stat_ticks(11)
}

/// The CPU time of this process's children waited for so far (user and system), such as a
/// `redis-benchmark` it ran.
pub(crate) fn children_busy() -> u64 {
    stat_ticks(13)
}

/// The user and system times at `user` and the next among the fields of `/proc/self/stat` after
/// the command name (which may hold spaces) and its closing parenthesis, from the state on (the
/// process's own are the 14th and 15th fields, the 12th and 13th here), in clock ticks of 10 ms.
fn stat_ticks(user: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<u64>().ok())
    };
    ticks(user)
        .zip(ticks(user + 1))
        .map_or(0, |(user, system)| (user + system) * 10_000)
}
