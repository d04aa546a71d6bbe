//! A Redis Sentinel deployment for tests: a master, a replica of it and three Sentinels watching
//! them, all started by the test on free ports and stopped when dropped.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::RedisServer;
use super::redis_server::{redis_command, server_binary};

/// The name the Sentinels know the master by.
pub(crate) const MASTER_NAME: &str = "events";

/// A master, its replica and three Sentinels.
#[derive(Debug)]
pub(crate) struct SentinelGroup {
    pub(crate) master: RedisServer,
    pub(crate) replica: RedisServer,
    sentinels: Vec<RedisServer>,
    /// The Sentinels' password, if they ask for one.
    password: Option<String>,
}

impl SentinelGroup {
    /// Starts the servers and waits until the replica is in sync and the Sentinels know it (a
    /// failover needs one).
    pub(crate) async fn start() -> Self {
        Self::start_with(None).await
    }

    /// [`start`](Self::start), the Sentinels asking clients (and each other) for `password`
    /// when there is one.
    pub(crate) async fn start_with(password: Option<&str>) -> Self {
        let guard = password
            .map(|password| format!("requirepass {password}\nsentinel sentinel-pass {password}\n"))
            .unwrap_or_default();
        let master = RedisServer::spawn_with(|_| {
            (vec!["--repl-diskless-sync-delay".into(), "0".into()], None)
        })
        .expect("start the master");
        let master_port = master.port().to_string();
        let replica = RedisServer::spawn_command(|port, dir| {
            let mut command = redis_command(port, dir);
            command.args(["--replicaof", "127.0.0.1", &master_port]);
            command.args(["--repl-diskless-sync-delay", "0"]);
            (command, None)
        })
        .expect("start the replica");
        let sentinels = (0..3)
            .map(|_| {
                RedisServer::spawn_command(|port, dir| {
                    let config = dir.join("sentinel.conf");
                    std::fs::write(
                        &config,
                        format!(
                            "port {port}\nbind 127.0.0.1\ndir {}\n\
                             sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                             sentinel failover-timeout {MASTER_NAME} 5000\n{guard}",
                            dir.display()
                        ),
                    )
                    .expect("write the Sentinel's configuration");
                    let mut command = Command::new(server_binary());
                    command
                        .arg(&config)
                        .arg("--sentinel")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    (command, None)
                })
                .expect("start a Sentinel")
            })
            .collect();
        let group = Self {
            master,
            replica,
            sentinels,
            password: password.map(str::to_owned),
        };
        group.wait_for_replica().await;
        group
    }

    /// The `redis+sentinel://` URL of the group.
    pub(crate) fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|sentinel| format!("127.0.0.1:{}", sentinel.port()))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", sentinels.join(","))
    }

    /// Addresses of the Sentinels, for a redis-rs Sentinel client of the test's own.
    pub(crate) fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|sentinel| sentinel.url().to_owned())
            .collect()
    }

    async fn ask(&self, command: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        let url = match &self.password {
            Some(password) => self.sentinels[0]
                .url()
                .replace("redis://", &format!("redis://:{password}@")),
            None => self.sentinels[0].url().to_owned(),
        };
        let client = redis::Client::open(url).expect("a Sentinel URL");
        let mut connection = client.get_multiplexed_async_connection().await?;
        command.query_async(&mut connection).await
    }

    /// The port of the master the Sentinels name now.
    pub(crate) async fn master_port(&self) -> u16 {
        let (_, port): (String, u16) = redis::from_redis_value(
            self.ask(
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(MASTER_NAME),
            )
            .await
            .expect("the Sentinel answers"),
        )
        .expect("a master address");
        port
    }

    async fn wait_for_replica(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut master = super::connection(&self.master).await;
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut master)
                .await
                .expect("the master answers");
            if info.contains("state=online") {
                break;
            }
            assert!(Instant::now() < deadline, "the replica never came in sync");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            let replicas = self
                .ask(redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME))
                .await;
            if let Ok(redis::Value::Array(replicas)) = replicas
                && !replicas.is_empty()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinels never saw the replica"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the master while its replica is behind it: the replica sleeps (`DEBUG SLEEP`) while
    /// the master takes 32 MiB of other writes, more than the sockets between them buffer, so
    /// that what is written next is acknowledged by the master and never reaches the replica.
    pub(crate) async fn crash_master_ahead_of_replica(&mut self) {
        let mut replica = super::connection(&self.replica).await;
        let sleeping = tokio::spawn(async move {
            let _: redis::RedisResult<()> = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(2)
                .query_async(&mut replica)
                .await;
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut master = super::connection(&self.master).await;
        let filler = vec![b'x'; 1 << 20];
        for n in 0..32 {
            let _: () = redis::cmd("SET")
                .arg(format!("filler-{n}"))
                .arg(&filler)
                .query_async(&mut master)
                .await
                .expect("the master takes the filler");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.master.stop();
        sleeping.await.expect("the replica woke up");
    }

    /// Makes the Sentinels fail the master over to the replica (`SENTINEL FAILOVER`).
    pub(crate) async fn fail_over(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .ask(redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER_NAME))
                .await
            {
                Ok(_) => return,
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "SENTINEL FAILOVER refused: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
