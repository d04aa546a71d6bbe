//! Connections to a single Redis or to a Redis Cluster, from one URL, that reconnect by
//! themselves. They are tuned so that an outage surfaces as a retryable error within about a
//! second instead of holding callers through long reconnection backoffs: the publisher, the
//! batched publisher and the consumer all retry on their own terms.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::error::is_authentication;
use crate::{Error, Result};

/// Prefix of a URL naming the seed nodes of a Redis Cluster:
/// `redis+cluster://host1:port1,host2:port2`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// A connection to one Redis or to a Redis Cluster; cheap to clone, clones share it.
#[derive(Clone)]
pub enum Connection {
    /// One server.
    Single(ConnectionManager),
    /// A cluster: commands go to the node owning their keys' slot, following redirections.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connection::Single(_) => "Connection::Single",
            Connection::Cluster(_) => "Connection::Cluster",
        })
    }
}

impl Connection {
    /// Connects to `url`: `redis://..` for one server, `redis+cluster://host:port,host:port` for
    /// a cluster; a reply is given up on after `response_timeout`.
    pub async fn open(url: &str, response_timeout: Duration) -> Result<Self> {
        connect(url, response_timeout).await
    }

    /// Whether it talks to a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster(_))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Connects to `url`: `redis://..` for one server, `redis+cluster://host:port,host:port` for a
/// cluster; a reply is given up on after `response_timeout`.
pub(crate) async fn connect(url: &str, response_timeout: Duration) -> Result<Connection> {
    if let Some(nodes) = url.strip_prefix(CLUSTER_SCHEME) {
        let nodes: Vec<String> = nodes
            .split(',')
            .map(|node| format!("redis://{}", node.trim()))
            .collect();
        let client = ClusterClient::builder(nodes)
            .response_timeout(response_timeout)
            .connection_timeout(Duration::from_secs(1))
            .build()
            .map_err(|source| Error::Connect { source })?;
        let connection = client.get_async_connection().await.map_err(connect_error)?;
        return check_access(Connection::Cluster(connection)).await;
    }
    let client = redis::Client::open(url).map_err(|source| Error::Connect { source })?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    let connection = ConnectionManager::new_with_config(client, config)
        .await
        .map_err(connect_error)?;
    check_access(Connection::Single(connection)).await
}

/// The error of a failed connection: [`Error::Authentication`] when the credentials were refused.
fn connect_error(source: redis::RedisError) -> Error {
    if !is_authentication(&source) {
        return Error::Connect { source };
    }
    let reason = if source.code() == Some("NOAUTH")
        || source.to_string().contains("unauthenticated")
    {
        "Redis requires authentication: put the password, and the user if not `default`, in the \
         URL (redis://user:password@host:port)"
    } else {
        "Redis refused the credentials: the user or password in the URL is wrong"
    };
    Error::Authentication {
        reason: reason.to_owned(),
        source,
    }
}

/// `connection`, once Redis has answered a `PING` on it: a server that needs a password the URL
/// does not give says so now, not at the first command.
async fn check_access(connection: Connection) -> Result<Connection> {
    let pong: redis::RedisResult<String> = redis::cmd("PING")
        .query_async(&mut connection.clone())
        .await;
    match pong {
        // A user without PING is authenticated all the same.
        Err(error) if error.code() == Some("NOPERM") => Ok(connection),
        Err(error) => Err(connect_error(error)),
        Ok(_) => Ok(connection),
    }
}
