//! Where Redis and a benchmark run: `EVENTS_BENCH_PIN` set runs Redis on a CPU of its own and the
//! benchmark (and what it starts) on the others, as when Redis has a host of its own; otherwise
//! they share the cores.

/// Pins Redis and this process apart when `EVENTS_BENCH_PIN` is set; says where they run.
pub(crate) async fn cores(redis: &mut redis::aio::MultiplexedConnection) -> &'static str {
    if std::env::var_os("EVENTS_BENCH_PIN").is_some() {
        pin_apart(redis).await
    } else {
        "cores shared by Redis and the bench"
    }
}

/// Runs Redis on the first CPU and this process (every thread of it) on the others, as when Redis
/// has a host of its own: Redis's CPU then no longer comes out of the bench's. Needs `taskset`
/// (util-linux) and a Redis on this machine; what the process starts later runs where it does.
async fn pin_apart(redis: &mut redis::aio::MultiplexedConnection) -> &'static str {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(redis)
        .await
        .unwrap();
    let redis_pid = info
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .expect("INFO names Redis's process")
        .trim()
        .to_owned();
    let last = std::thread::available_parallelism().map_or(1, usize::from) - 1;
    assert!(last > 0, "EVENTS_BENCH_PIN needs two CPUs or more");
    let own_pid = std::process::id().to_string();
    for (cpus, pid) in [("0".to_owned(), redis_pid), (format!("1-{last}"), own_pid)] {
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &cpus, &pid])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("taskset runs");
        assert!(status.success(), "taskset pins {pid} to {cpus}");
    }
    "Redis on CPU 0, the bench on the others"
}
