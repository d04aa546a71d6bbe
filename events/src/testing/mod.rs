//! A kit for tests, examples and benchmarks of code built on this crate (the `testing` feature):
//! a consumer's handlers run in-process without Redis ([`LocalConsumer`], from
//! [`ConsumerBuilder::build_local`](crate::ConsumerBuilder::build_local)), a throwaway
//! `redis-server` or 3-node Redis Cluster started from `PATH` on free ports and stopped when
//! dropped, and the resident memory of a process for memory checks.
//!
//! ```no_run
//! let server = events::testing::RedisServer::start();
//! println!("a Redis for this test at {}", server.url());
//! ```

mod redis_cluster;
mod redis_server;

pub use crate::consumer::{LocalConsumer, Outcome};
pub use redis_cluster::RedisCluster;
pub use redis_server::{RedisServer, free_port, redis_command, server_binary};

/// Resident memory of process `pid` (or `self`) in KiB, from `/proc/<pid>/status` (Linux).
pub fn resident_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}
