//! Connections to a single Redis, a Redis Cluster or the master Redis Sentinels name, from one
//! URL, that reconnect by themselves. They are tuned so that an outage surfaces as a retryable error within about a
//! second instead of holding callers through long reconnection backoffs: the publisher, the
//! batched publisher and the consumer all retry on their own terms.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
#[cfg(feature = "cluster")]
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::direct_connection::DirectConnection;
use crate::endpoint::{Client, Endpoint};
use crate::error::is_authentication;
use crate::replicas::Replicas;
use crate::resp::parse_read_reply;
use crate::sentinel::{OpenError, SentinelConnection};
use crate::{Error, Result, StreamEntry};

/// A connection to one Redis, to a Redis Cluster or to the master Redis Sentinels name; cheap to
/// clone, clones share it.
#[derive(Clone)]
pub struct Connection {
    link: Link,
    /// The replicas every command waits for, if the endpoint asks for them.
    replicas: Option<Replicas>,
}

/// What commands travel on.
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(ClusterConnection),
    Sentinel(SentinelConnection),
    /// A consumer's stream reads or a batched publisher's writes, on a connection of their own.
    Direct(DirectConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.link {
            Link::Single(_) => "single",
            #[cfg(feature = "cluster")]
            Link::Cluster(_) => "cluster",
            Link::Sentinel(_) => "sentinel",
            Link::Direct(_) => "direct",
        };
        f.debug_struct("Connection")
            .field("kind", &kind)
            .field("replicas", &self.replicas)
            .finish()
    }
}

impl Connection {
    /// Connects to `endpoint` (or a URL: see [`Endpoint`]); a reply is given up on after
    /// `response_timeout`.
    pub async fn open(endpoint: impl Into<Endpoint>, response_timeout: Duration) -> Result<Self> {
        connect(&endpoint.into(), response_timeout).await
    }

    /// A connection over `manager`, a redis-rs connection manager of the caller's own.
    pub fn single(manager: ConnectionManager) -> Self {
        Self::of(Link::Single(manager))
    }

    /// A connection over `connection`, a redis-rs cluster connection of the caller's own.
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster(connection: ClusterConnection) -> Self {
        Self::of(Link::Cluster(connection))
    }

    fn of(link: Link) -> Self {
        Self {
            link,
            replicas: None,
        }
    }

    /// Whether it talks to a cluster.
    pub fn is_cluster(&self) -> bool {
        #[cfg(feature = "cluster")]
        return matches!(self.link, Link::Cluster(_));
        #[cfg(not(feature = "cluster"))]
        false
    }

    /// Runs `command(cursor)` on every master of a cluster (on the one server otherwise), each
    /// until the cursor its replies give is `0` again, as `SCAN` wants; every reply.
    pub(crate) async fn scan_each_master(
        &self,
        command: impl Fn(u64) -> Cmd,
    ) -> redis::RedisResult<Vec<Value>> {
        let mut replies = Vec::new();
        for master in self.masters().await? {
            let mut cursor = 0;
            loop {
                let reply = self.on_master(command(cursor), master.as_ref()).await?;
                let (next, _): (u64, Value) = redis::from_redis_value(reply.clone())?;
                replies.push(reply);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(replies)
    }

    /// The address (host, port) of every master of a cluster; one `None` for another server.
    async fn masters(&self) -> redis::RedisResult<Vec<Option<(String, u16)>>> {
        #[cfg(feature = "cluster")]
        if let Link::Cluster(connection) = &self.link {
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut connection.clone())
                .await?;
            // `<id> <host>:<port>@<bus port>[,<hostname>] <flags> ...`, one line per node.
            return Ok(nodes
                .lines()
                .filter_map(|line| {
                    let mut fields = line.split_whitespace();
                    let address = fields.nth(1)?.split('@').next()?;
                    let flags = fields.next()?;
                    let master =
                        flags.split(',').any(|flag| flag == "master") && !flags.contains("fail");
                    let (host, port) = address.rsplit_once(':')?;
                    let port: u16 = port.parse().ok()?;
                    master.then(|| Some((host.to_owned(), port)))
                })
                .collect());
        }
        Ok(vec![None])
    }

    /// Sends `cmd` to the cluster master at `master`, or as any command without one.
    async fn on_master(
        &self,
        cmd: Cmd,
        master: Option<&(String, u16)>,
    ) -> redis::RedisResult<Value> {
        #[cfg(feature = "cluster")]
        if let (Link::Cluster(connection), Some((host, port))) = (&self.link, master) {
            use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
            let route = SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            };
            return connection
                .clone()
                .route_command(cmd, RoutingInfo::SingleNode(route))
                .await;
        }
        let _ = master;
        cmd.query_async(&mut self.link.clone()).await
    }

    /// Runs `command`, an `XREADGROUP`: per stream, its entries.
    pub(crate) async fn read_streams(
        &self,
        command: &Cmd,
    ) -> redis::RedisResult<Vec<(String, Vec<StreamEntry>)>> {
        if let Link::Direct(reader) = &self.link {
            return reader.read(command).await;
        }
        let reply: Value = command.query_async(&mut self.clone()).await?;
        Ok(parse_read_reply(reply))
    }

    /// The server's id of the connection a stream read is under way on, for `CLIENT UNBLOCK`
    /// from another connection; known for a consumer's reads on a connection of their own.
    pub(crate) fn reader_id(&self) -> Option<u64> {
        match &self.link {
            Link::Direct(reader) => reader.client_id(),
            _ => None,
        }
    }

    /// The connection of its own it is, if it is one (then no replicas are waited for).
    pub(crate) fn direct(&self) -> Option<&DirectConnection> {
        match &self.link {
            Link::Direct(connection) if self.replicas.is_none() => Some(connection),
            _ => None,
        }
    }

    /// The same connection, its commands not waiting for replicas: for checks that only read.
    pub(crate) fn unconfirmed(&self) -> Self {
        Self::of(self.link.clone())
    }
}

impl Link {
    /// Tells a Sentinel connection that a write was not confirmed by replicas, with `error`: the
    /// replica may have been promoted while the server written to still takes writes.
    async fn unconfirmed(&self, error: Option<&redis::RedisError>) {
        if let (Link::Sentinel(connection), Some(error)) = (self, error) {
            connection.follow_after(error).await;
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(connection) => connection.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Link::Cluster(connection) => connection.req_packed_command(cmd),
            Link::Sentinel(connection) => connection.req_packed_command(cmd),
            Link::Direct(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "cluster")]
            Link::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
            Link::Sentinel(connection) => connection.req_packed_commands(pipeline, offset, count),
            Link::Direct(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(connection) => connection.get_db(),
            #[cfg(feature = "cluster")]
            Link::Cluster(connection) => connection.get_db(),
            Link::Sentinel(connection) => connection.get_db(),
            Link::Direct(connection) => connection.get_db(),
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self.replicas {
            None => self.link.req_packed_command(cmd),
            Some(replicas) => Box::pin(async move {
                let reply = replicas.command(&mut self.link, cmd).await;
                self.link.unconfirmed(reply.as_ref().err()).await;
                reply
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self.replicas {
            None => self.link.req_packed_commands(pipeline, offset, count),
            Some(replicas) => Box::pin(async move {
                let replies = replicas
                    .pipeline(&mut self.link, pipeline, offset, count)
                    .await;
                self.link.unconfirmed(replies.as_ref().err()).await;
                replies
            }),
        }
    }

    fn get_db(&self) -> i64 {
        self.link.get_db()
    }
}

/// The oldest Redis a consumer works with: its scripts declare flags (`#!lua flags=..`) and it
/// reads idle entries with `XPENDING .. IDLE`, both of Redis 7.0. Valkey reports the Redis version
/// it is compatible with (7.2.4 for Valkey 7.2 to 9).
pub(crate) const OLDEST_REDIS: (u64, u64) = (7, 0);

/// Checks that the server whose `INFO server` text is `info` is at least [`OLDEST_REDIS`]; says
/// which version it is otherwise.
pub(crate) fn check_version(info: &str) -> std::result::Result<(), String> {
    let Some(version) = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(str::trim)
    else {
        return Ok(());
    };
    let mut parts = version
        .split('.')
        .map(|part| part.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found >= OLDEST_REDIS {
        return Ok(());
    }
    Err(format!(
        "the server is Redis {version}; a consumer needs Redis {}.{} or later (or Valkey 7.2 or later)",
        OLDEST_REDIS.0, OLDEST_REDIS.1
    ))
}

/// Checks the version of the server `connection` talks to (every node's, on a cluster); a server
/// that does not let this user run `INFO` passes.
pub(crate) async fn check_server_version(connection: &Connection) -> Result<()> {
    let reply: redis::RedisResult<Value> = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut connection.unconfirmed())
        .await;
    let texts: Vec<String> = match reply {
        Ok(Value::Map(nodes)) => nodes
            .into_iter()
            .filter_map(|(_, info)| redis::from_redis_value::<String>(info).ok())
            .collect(),
        Ok(reply) => redis::from_redis_value::<String>(reply)
            .into_iter()
            .collect(),
        Err(_) => Vec::new(),
    };
    for text in texts {
        check_version(&text).map_err(Error::Config)?;
    }
    Ok(())
}

/// Connects to `endpoint`: one server, a cluster or the master Sentinels name; a reply is given
/// up on after `response_timeout`.
pub(crate) async fn connect(endpoint: &Endpoint, response_timeout: Duration) -> Result<Connection> {
    let dropped = |source: redis::RedisError| connect_error(dropped_at_handshake(source, endpoint));
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    let link = match endpoint.make_client(response_timeout)? {
        #[cfg(feature = "cluster")]
        Client::Cluster(client) => {
            Link::Cluster(client.get_async_connection().await.map_err(dropped)?)
        }
        Client::Single(client) => Link::Single(
            ConnectionManager::new_with_config(*client, config)
                .await
                .map_err(dropped)?,
        ),
        Client::Sentinel(sentinels) => Link::Sentinel(
            SentinelConnection::open(sentinels, config)
                .await
                .map_err(|error| match error {
                    OpenError::Master(source) => dropped(source),
                    OpenError::Sentinels(source) => sentinels_error(source),
                })?,
        ),
    };
    let connection = Connection {
        link,
        replicas: endpoint.replicas(),
    };
    if connection.replicas.is_some() && connection.is_cluster() {
        return Err(Error::Config(
            "waiting for replicas is not supported on a cluster yet".into(),
        ));
    }
    check_login(connection).await
}

/// Connects to `endpoint` as [`connect`] does, for a consumer's stream reads or a batched
/// publisher's writes: on one server a URL names (over TLS too), they take a connection of their
/// own (see `direct_connection`). A redis-rs client of the caller's own keeps them: it may bring
/// what a URL cannot say (a credentials provider, its own TLS). So do commands that wait for
/// replicas: a read records deliveries, and one that a failover loses must not be handled.
pub(crate) async fn connect_direct(
    endpoint: &Endpoint,
    response_timeout: Duration,
) -> Result<Connection> {
    // Connecting through redis-rs first gives its errors (credentials refused, a TLS port) as
    // every other connection does; its connection is then closed.
    let mut connection = connect(endpoint, response_timeout).await?;
    if !endpoint.is_url() || connection.replicas.is_some() {
        return Ok(connection);
    }
    if let Client::Single(client) = endpoint.make_client(response_timeout)?
        && let Some(direct) =
            DirectConnection::for_server(client.get_connection_info(), endpoint, response_timeout)
    {
        connection.link = Link::Direct(direct);
    }
    Ok(connection)
}

/// `error`, said plainly when a server dropped a plain client at once: most likely it listens for
/// TLS there.
fn dropped_at_handshake(error: redis::RedisError, endpoint: &Endpoint) -> redis::RedisError {
    if !error.is_connection_dropped() || endpoint.uses_tls() {
        return error;
    }
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "the server dropped the connection at once: if it listens for TLS there, use a rediss:// URL",
        error.to_string(),
    ))
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

/// The error of asking the Sentinels for the master: [`Error::Authentication`] when they want
/// credentials they were not given, or refused them.
fn sentinels_error(source: redis::RedisError) -> Error {
    if !is_authentication(&source) {
        return Error::Connect { source };
    }
    Error::Authentication {
        reason: "the Sentinels require a password, or refused the one given: give theirs with \
                 Endpoint::sentinel_credentials (the URL's credentials are the master's)"
            .to_owned(),
        source,
    }
}

/// `connection`, once Redis has answered a `PING` on it: a server that needs a password the URL
/// does not give says so now, not at the first command.
async fn check_login(connection: Connection) -> Result<Connection> {
    let pong: redis::RedisResult<String> = redis::cmd("PING")
        .query_async(&mut connection.unconfirmed())
        .await;
    match pong {
        // A user without PING is authenticated all the same.
        Err(error) if error.code() == Some("NOPERM") => Ok(connection),
        Err(error) => Err(connect_error(error)),
        Ok(_) => Ok(connection),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_redis_7_are_named() {
        assert!(check_version("# Server\r\nredis_version:7.0.15\r\n").is_ok());
        assert!(check_version("redis_version:7.2.4\r\nvalkey_version:9.1.2\r\n").is_ok());
        assert!(check_version("redis_version:8.4.0\r\n").is_ok());
        let old = check_version("redis_version:6.2.14\r\n").unwrap_err();
        assert_eq!(
            old,
            "the server is Redis 6.2.14; a consumer needs Redis 7.0 or later (or Valkey 7.2 or later)"
        );
        assert!(check_version("no version here").is_ok());
    }
}
