//! Writes confirmed by replicas: each command or pipeline is sent with a `WAIT` behind it on the
//! same connection, and counts as done only when enough replicas hold everything written before
//! it. With Redis's asynchronous replication, this is what keeps an acknowledged write (a
//! published event, an acknowledgement, an idempotency mark) through a failover.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisError, RedisResult, Value};

/// How many replicas must hold a write, and how long to wait for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Replicas {
    count: usize,
    timeout: Duration,
}

impl Replicas {
    /// `count` replicas (at least one) within `timeout` (at least a millisecond).
    pub(crate) fn new(count: usize, timeout: Duration) -> Self {
        Self {
            count: count.max(1),
            timeout: timeout.max(Duration::from_millis(1)),
        }
    }

    fn wait(&self) -> Cmd {
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.count).arg(self.timeout.as_millis() as u64);
        wait
    }

    /// Sends `command` on `connection` followed by `WAIT`, and gives its reply once the replicas
    /// hold it.
    pub(crate) async fn command(
        &self,
        connection: &mut impl ConnectionLike,
        command: &Cmd,
    ) -> RedisResult<Value> {
        let mut pipeline = redis::pipe();
        pipeline
            .add_command(command.clone())
            .add_command(self.wait());
        let mut replies = connection.req_packed_commands(&pipeline, 0, 2).await?;
        self.confirmed(replies.pop())?;
        Ok(replies.pop().unwrap_or(Value::Nil))
    }

    /// Sends `pipeline` on `connection` followed by `WAIT` (a transaction spelled out as `MULTI`
    /// .. `EXEC`, since a `WAIT` inside it would not wait), and gives its `count` replies from
    /// `offset` once the replicas hold them.
    pub(crate) async fn pipeline(
        &self,
        connection: &mut impl ConnectionLike,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let mut waited = redis::pipe();
        if pipeline.is_transaction() {
            waited.add_command(redis::cmd("MULTI"));
        }
        for command in pipeline.cmd_iter() {
            waited.add_command(command.clone());
        }
        if pipeline.is_transaction() {
            waited.add_command(redis::cmd("EXEC"));
        }
        waited.add_command(self.wait());
        let mut replies = connection
            .req_packed_commands(&waited, offset, count + 1)
            .await?;
        self.confirmed(replies.pop())?;
        Ok(replies)
    }

    /// Whether the `WAIT` reply says enough replicas hold the writes; a retryable error if not.
    fn confirmed(&self, reply: Option<Value>) -> RedisResult<()> {
        let acknowledged = match reply {
            Some(Value::Int(acknowledged)) => acknowledged,
            Some(Value::ServerError(error)) => return Err(error.into()),
            _ => 0,
        };
        if acknowledged >= self.count as i64 {
            return Ok(());
        }
        Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "written, but {acknowledged} of the {} replicas asked for confirmed it within {:?}",
                self.count, self.timeout
            ),
        )))
    }
}
