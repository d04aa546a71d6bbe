//! A connection to the master that Redis Sentinels name, which follows a failover: when the server
//! it talks to is gone, has become a replica (`READONLY`) or unblocked its reads because its role
//! changed, it asks the Sentinels again and moves to the master they name.

use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::SentinelClient;
use redis::{Cmd, ConnectionAddr, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::Mutex;

/// How often the Sentinels are asked at most, while the master is unreachable.
const LOOKUP_INTERVAL: Duration = Duration::from_millis(100);

/// How long a lookup (Sentinels, then the master's `ROLE` and a connection) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection through the Sentinels could not be opened, and where.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Asking the Sentinels for the master failed.
    Sentinels(RedisError),
    /// Connecting to the master they named failed.
    Master(RedisError),
}

/// A connection to the current master of a Sentinel-monitored group; clones share it.
#[derive(Clone)]
pub(crate) struct SentinelConnection {
    shared: Arc<Shared>,
}

struct Shared {
    /// The connection to the master last found.
    current: SyncMutex<ConnectionManager>,
    lookup: Mutex<Lookup>,
}

/// What a lookup of the master needs and what the last one found.
struct Lookup {
    sentinels: Arc<Mutex<SentinelClient>>,
    config: ConnectionManagerConfig,
    master: ConnectionAddr,
    last: Instant,
}

impl SentinelConnection {
    /// Connects to the master `sentinels` name, with connections set up as `config` says.
    /// Fails with [`Error::Authentication`](crate::Error::Authentication) when the Sentinels
    /// want credentials they were not given.
    pub(crate) async fn open(
        sentinels: Arc<Mutex<SentinelClient>>,
        config: ConnectionManagerConfig,
    ) -> Result<Self, OpenError> {
        let client = sentinels
            .lock()
            .await
            .async_get_client()
            .await
            .map_err(OpenError::Sentinels)?;
        let master = client.get_connection_info().addr().clone();
        let current = ConnectionManager::new_with_config(client, config.clone())
            .await
            .map_err(OpenError::Master)?;
        Ok(Self {
            shared: Arc::new(Shared {
                current: SyncMutex::new(current),
                lookup: Mutex::new(Lookup {
                    sentinels,
                    config,
                    master,
                    last: Instant::now(),
                }),
            }),
        })
    }

    fn current(&self) -> ConnectionManager {
        self.shared
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Asks the Sentinels for the master after `error`, if it says the server may no longer be it,
    /// and moves there when it is another; one caller looks at a time, at most every
    /// [`LOOKUP_INTERVAL`].
    pub(crate) async fn follow_after(&self, error: &RedisError) {
        if !lost_master(error) {
            return;
        }
        let Ok(mut lookup) = self.shared.lookup.try_lock() else {
            return;
        };
        if lookup.last.elapsed() < LOOKUP_INTERVAL {
            return;
        }
        lookup.last = Instant::now();
        let config = lookup.config.clone();
        let sentinels = lookup.sentinels.clone();
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, async {
            let client = sentinels.lock().await.async_get_client().await?;
            let master = client.get_connection_info().addr().clone();
            if master == lookup.master {
                return Ok(None);
            }
            let connection = ConnectionManager::new_with_config(client, config).await?;
            Ok::<_, RedisError>(Some((master, connection)))
        })
        .await;
        match found {
            Ok(Ok(Some((master, connection)))) => {
                tracing::warn!(master = %master, "Sentinels name a new master; following it");
                *self
                    .shared
                    .current
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = connection;
                lookup.master = master;
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => tracing::debug!(%error, "no master found through the Sentinels yet"),
            Err(_) => tracing::debug!("the Sentinels did not name a master in time"),
        }
    }
}

/// Whether `error` suggests the server is no longer the master: it is unreachable, demoted
/// (`READONLY`), unblocked a read because its role changed, or lost its link to a master.
fn lost_master(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_timeout()
        || matches!(
            error.code(),
            Some("READONLY" | "UNBLOCKED" | "MASTERDOWN" | "LOADING")
        )
}

/// The error a reply value carries, if it is one.
fn server_error(value: &Value) -> Option<RedisError> {
    match value {
        Value::ServerError(error) => Some(error.clone().into()),
        _ => None,
    }
}

impl SentinelConnection {
    /// `reply`, once the error in it (`first_error` finds one in a reply that came), if any, has
    /// been followed.
    async fn followed<T>(
        &self,
        reply: RedisResult<T>,
        first_error: impl Fn(&T) -> Option<RedisError>,
    ) -> RedisResult<T> {
        let error = match &reply {
            Err(error) => Some(error.clone()),
            Ok(reply) => first_error(reply),
        };
        if let Some(error) = error {
            self.follow_after(&error).await;
        }
        reply
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let reply = self.current().req_packed_command(cmd).await;
            self.followed(reply, server_error).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let replies = self
                .current()
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.followed(replies, |values| values.iter().find_map(server_error))
                .await
        })
    }

    fn get_db(&self) -> i64 {
        self.current().get_db()
    }
}
